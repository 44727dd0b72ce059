//! Broker and Redis instances a test owns, so that faults (restarts, outages, silent network
//! loss) never disturb tests running beside it (`SCENARIOS.md` preamble).
//!
//! - [`OwnRedis`]: a `redis-server` child on a free port, AOF with `appendfsync always` (what
//!   production configs use where results must survive a restart); kill and restart it.
//! - [`OwnRabbit`]: a second RabbitMQ node (own node name, port and data dir); `stop_app` and
//!   `start_app` restart the broker without touching the machine's node.
//! - [`BlackholeProxy`]: a TCP proxy that can drop all traffic without closing connections
//!   (no FIN), like a silently failed network path.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{eventually, free_addr};

fn sbin(cmd: &str) -> String {
    for dir in ["/usr/sbin", "/usr/lib/rabbitmq/bin", "/usr/local/sbin"] {
        let p = Path::new(dir).join(cmd);
        if p.exists() {
            return p.display().to_string();
        }
    }
    cmd.to_owned()
}

/// A `redis-server` owned by one test.
pub struct OwnRedis {
    /// Its port.
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnRedis {
    /// Starts one in `dir` on a free port and waits until it answers.
    pub async fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("redis dir");
        let mut r = Self {
            port: free_addr().port(),
            dir: dir.to_owned(),
            child: None,
        };
        r.launch().await;
        r
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                &self.dir.display().to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        let url = self.url();
        let up = eventually(Duration::from_secs(20), || async {
            match redis::Client::open(url.as_str()) {
                Ok(c) => c.get_multiplexed_async_connection().await.is_ok(),
                Err(_) => false,
            }
        })
        .await;
        assert!(up, "own redis-server did not start on {}", self.port);
    }

    /// SIGKILLs it (everything acknowledged is in the AOF).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same data.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A RabbitMQ node owned by one test.
pub struct OwnRabbit {
    /// AMQP port.
    pub port: u16,
    /// Erlang node name.
    pub node: String,
    dir: PathBuf,
}

impl OwnRabbit {
    /// Starts a node with data in `dir` and waits until it serves AMQP (about 10 s).
    pub async fn start(dir: &Path) -> Self {
        let port = free_addr().port();
        let dist = free_addr().port();
        let node = format!("flotilla-{port}@localhost");
        std::fs::create_dir_all(dir.join("mnesia")).expect("dir");
        std::fs::create_dir_all(dir.join("log")).expect("dir");
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\nloopback_users = none\n"),
        )
        .expect("conf");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("plugins");
        // As root the server script runs as the rabbitmq user: let it write there.
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq", &dir.display().to_string()])
            .status();
        let status = Command::new(sbin("rabbitmq-server"))
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("rabbitmq-server");
        assert!(status.success(), "rabbitmq-server -detached failed");
        let r = Self {
            port,
            node,
            dir: dir.to_owned(),
        };
        assert!(
            r.wait_up(Duration::from_secs(60)).await,
            "own RabbitMQ node did not start"
        );
        r
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f?heartbeat=<s>`.
    pub fn url(&self, heartbeat_s: u16) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f?heartbeat={heartbeat_s}",
            self.port
        )
    }

    /// Waits until AMQP connections succeed.
    pub async fn wait_up(&self, timeout: Duration) -> bool {
        let url = self.url(10);
        eventually(timeout, || async {
            match flotilla_shared::amqp::connect(&url, "probe").await {
                Ok(c) => {
                    let _ = c.close(200, "probe".into()).await;
                    true
                }
                Err(_) => false,
            }
        })
        .await
    }

    fn ctl(&self, args: &[&str]) -> bool {
        Command::new(sbin("rabbitmqctl"))
            .args(["-q", "-n", &self.node])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Stops the broker application (connections drop; the node stays).
    pub fn stop_app(&self) {
        assert!(self.ctl(&["stop_app"]), "rabbitmqctl stop_app");
    }

    /// Starts it again and waits until it serves AMQP.
    pub async fn start_app(&self) {
        assert!(self.ctl(&["start_app"]), "rabbitmqctl start_app");
        assert!(self.wait_up(Duration::from_secs(60)).await, "broker back");
    }
}

impl Drop for OwnRabbit {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP proxy to `target` that can silently drop traffic.
pub struct BlackholeProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    dropping: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl BlackholeProxy {
    /// Starts forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let dropping = Arc::new(AtomicBool::new(false));
        let flag = dropping.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let flag = flag.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let f1 = flag.clone();
                    let up = async move { pump(&mut ri, &mut wo, &f1).await };
                    let down = async move { pump(&mut ro, &mut wi, &flag).await };
                    tokio::join!(up, down);
                });
            }
        });
        Self {
            addr,
            dropping,
            task,
        }
    }

    /// Drops (true) or forwards (false) all traffic, without closing anything.
    pub fn set_dropping(&self, on: bool) {
        self.dropping.store(on, Ordering::SeqCst);
    }
}

async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    dropping: &AtomicBool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if dropping.load(Ordering::SeqCst) {
                    continue; // swallowed: the peer never hears of it
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

impl Drop for BlackholeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
