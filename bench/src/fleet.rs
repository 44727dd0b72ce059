//! The fleet under test: one namespace, a generated config file, the real producer and worker
//! binaries as child processes (as `tests/src/lib.rs` starts them), their memory from
//! `/proc/<pid>/status`, and the teardown that deletes every queue and key of the namespace.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use flotilla_producer::Client;
use flotilla_shared::{
    config::{api_key_hash, FileConfig},
    names::Names,
    store::{Store, StoreTtls},
    topology::Topology,
    webhook::WebhookSecret,
};
use lapin::options::QueueDeleteOptions;

/// Connection settings and paths of one benchmark run.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// Broker URL for the processes and the ceiling loop.
    pub amqp_url: String,
    /// Redis URL for the processes and the harness.
    pub redis_url: String,
    /// Directory holding `flotilla-producer` and `flotilla-worker`.
    pub bin_dir: PathBuf,
    /// Scratch directory: config file and process logs.
    pub dir: PathBuf,
    /// The namespace of every queue and key.
    pub namespace: String,
    /// Worker `--concurrency` (= consumer prefetch).
    pub worker_concurrency: u16,
    /// How long a process may take to answer `/readyz` (a worker preloads its models first).
    pub ready_timeout: Duration,
}

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Memory {
    /// `VmRSS`: resident now, KiB.
    pub rss_kib: u64,
    /// `VmHWM`: peak resident since start, KiB.
    pub hwm_kib: u64,
}

/// Reads `VmRSS` and `VmHWM` of `pid` (`None` once the process is gone).
pub fn memory_of(pid: u32) -> Option<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// A spawned Flotilla process; killed if still running when dropped.
pub struct Proc {
    /// `producer`, `worker-1`...
    pub name: String,
    /// Its API or admin address.
    pub addr: SocketAddr,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its memory now, if it runs.
    pub fn memory(&self) -> Option<Memory> {
        memory_of(self.pid())
    }

    /// SIGTERM, then waits up to `grace` for it to exit (SIGKILL after that). Returns its
    /// peak memory, read just before the signal.
    pub async fn stop(mut self, grace: Duration) -> Option<Memory> {
        let peak = self.memory();
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return peak;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        peak
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A free loopback port (bound then released).
fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// One namespace's fleet: config, store handle, and the processes running now.
pub struct Fleet {
    /// Settings it was made with.
    pub settings: FleetSettings,
    /// Names of the namespace.
    pub names: Names,
    /// The parsed config file the processes read.
    pub config: FileConfig,
    /// Path of that file.
    pub config_path: PathBuf,
    /// The API key of the benchmark tenant.
    pub api_key: String,
    /// Its webhook secret (`whsec_…`).
    pub webhook_secret: WebhookSecret,
    /// Redis store in the namespace.
    pub store: Store,
    spawned: usize,
}

impl Fleet {
    /// Writes the config, connects to Redis and declares the topology.
    ///
    /// # Errors
    /// An invalid namespace, an unwritable scratch directory, or an unreachable broker or Redis.
    pub async fn new(settings: FleetSettings) -> anyhow::Result<Self> {
        let names = Names::new(&settings.namespace)?;
        std::fs::create_dir_all(&settings.dir)
            .with_context(|| format!("creating {}", settings.dir.display()))?;
        let api_key = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let secret_text = WebhookSecret::generate();
        let webhook_secret = WebhookSecret::parse(&secret_text)
            .map_err(|e| anyhow::anyhow!("generated webhook secret: {e}"))?;
        let toml = render_config(&api_key, &secret_text);
        let config_path = settings.dir.join("flotilla.toml");
        std::fs::write(&config_path, toml)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let config = FileConfig::load(&config_path)?;
        let ttls = StoreTtls {
            result: Duration::from_secs(config.jobs.result_ttl_s),
            idempotency: Duration::from_secs(config.jobs.idempotency_ttl_s),
        };
        let store = Store::connect(&settings.redis_url, names.clone(), ttls).await?;
        store.ping().await.with_context(|| {
            format!("Redis at {} (make services starts it)", settings.redis_url)
        })?;
        let fleet = Self {
            settings,
            names,
            config,
            config_path,
            api_key,
            webhook_secret,
            store,
            spawned: 0,
        };
        let conn = fleet.amqp("flotilla-bench-setup").await?;
        let channel = conn.create_channel().await?;
        fleet.topology().declare(&channel).await?;
        let _ = conn.close(200, "declared".into()).await;
        Ok(fleet)
    }

    fn topology(&self) -> Topology {
        Topology::of(&self.names, &self.config)
    }

    /// A new broker connection named `name`.
    ///
    /// # Errors
    /// The broker is unreachable.
    pub async fn amqp(&self, name: &str) -> anyhow::Result<lapin::Connection> {
        flotilla_shared::amqp::connect(&self.settings.amqp_url, name)
            .await
            .with_context(|| "RabbitMQ at the AMQP URL (make services starts it)".to_string())
    }

    fn binary(&self, name: &str) -> anyhow::Result<PathBuf> {
        let p = self.settings.bin_dir.join(name);
        if !p.exists() {
            bail!(
                "{} not found: build the workspace first (`cargo build --release --workspace`, which `make bench` runs)",
                p.display()
            );
        }
        Ok(p)
    }

    fn spawn(&mut self, binary: &str, name: &str, args: &[String]) -> anyhow::Result<Proc> {
        let addr = free_addr()?;
        let log = self.settings.dir.join(format!("{name}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut args = args.to_vec();
        args.push(
            if binary == "flotilla-producer" {
                "--listen"
            } else {
                "--admin-addr"
            }
            .into(),
        );
        args.push(addr.to_string());
        let child = Command::new(self.binary(binary)?)
            .args(&args)
            .env("FLOTILLA_CONFIG", &self.config_path)
            .env("FLOTILLA_NAMESPACE", self.names.namespace())
            .env("FLOTILLA_AMQP_URL", &self.settings.amqp_url)
            .env("FLOTILLA_REDIS_URL", &self.settings.redis_url)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        self.spawned += 1;
        Ok(Proc {
            name: name.to_owned(),
            addr,
            log,
            child,
        })
    }

    /// Starts the producer (its log is `<name>.log`) and waits until `/readyz` answers 200.
    ///
    /// # Errors
    /// It cannot start or does not become ready.
    pub async fn start_producer(&mut self, name: &str) -> anyhow::Result<Proc> {
        let p = self.spawn("flotilla-producer", name, &[])?;
        wait_ready(&p, self.settings.ready_timeout).await?;
        Ok(p)
    }

    /// Starts a worker (all roles, the configured concurrency; its log is `<name>.log`) and
    /// waits until `/readyz` answers 200.
    ///
    /// # Errors
    /// It cannot start or does not become ready.
    pub async fn start_worker(&mut self, name: &str) -> anyhow::Result<Proc> {
        let args = [
            "--concurrency".to_string(),
            self.settings.worker_concurrency.to_string(),
            "--worker-id".into(),
            format!("{name}-{}", self.spawned),
            "--grace-s".into(),
            "5".into(),
        ];
        let p = self.spawn("flotilla-worker", name, &args)?;
        wait_ready(&p, self.settings.ready_timeout).await?;
        Ok(p)
    }

    /// A client of `producer` with the benchmark tenant's key.
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn client(&self, producer: &Proc) -> anyhow::Result<Client> {
        Ok(Client::new(
            &format!("http://{}", producer.addr),
            &self.api_key,
        )?)
    }

    /// Deletes every Redis key, queue and exchange of the namespace, and the extra queues
    /// named in `extra_queues`.
    ///
    /// # Errors
    /// Redis or the broker refused; what could be deleted is deleted.
    pub async fn delete_everything(&self, extra_queues: &[String]) -> anyhow::Result<()> {
        let keys = self.store.delete_namespace().await;
        let conn = self.amqp("flotilla-bench-cleanup").await?;
        let channel = conn.create_channel().await?;
        let topo = self.topology().delete(&channel).await;
        for q in extra_queues {
            let _ = channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = conn.close(200, "cleanup".into()).await;
        keys?;
        topo?;
        Ok(())
    }
}

async fn wait_ready(p: &Proc, timeout: Duration) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let url = format!("http://{}/readyz", p.addr);
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if matches!(http.get(&url).send().await, Ok(r) if r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!(
        "{} not ready within {timeout:?}; log {}:\n{}",
        p.name,
        p.log.display(),
        p.log_tail()
    )
}

/// The benchmark's config: library defaults, plus one tenant with a webhook secret, plain
/// HTTP to loopback receivers allowed, 64 deliveries in flight per endpoint (one receiver
/// takes every event), and the `sim` model enabled (zero latency).
fn render_config(api_key: &str, secret: &str) -> String {
    format!(
        r#"# Written by flotilla-bench; defaults except what the benchmark needs.
[webhooks]
allow_private = true
allow_http = true
# One local receiver takes every event of the run: let a dispatcher keep 64 requests in flight
# to it (the default of 8 shares a dispatcher fairly between many tenants' endpoints).
per_endpoint_concurrency = 64

[models.sim]
enabled = true
latency_ms = 0

[[tenants]]
name = "bench"
api_key_sha256 = ["{key}"]
webhook_secret = "{secret}"
"#,
        key = api_key_hash(api_key),
    )
}

/// The directory of the running executable (`target/release` for `make bench`).
///
/// # Errors
/// The executable's path is unknown.
pub fn exe_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("path of the running executable")?;
    exe.parent()
        .map(Path::to_path_buf)
        .context("the executable has no parent directory")
}
