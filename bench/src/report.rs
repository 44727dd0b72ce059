//! The report: every round's raw figures, medians and spreads, ratios to the ceiling taken
//! within each round, the machine, and the targets; as JSON and as a Markdown table.

use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::Context as _;
use serde::Serialize;
use serde_json::{json, Value};

use crate::{
    ceiling::CeilingRun,
    fleet::Memory,
    runs::{DrainRun, FleetRun, HttpRun, LatencyRun, SentimentRun},
    stats::Spread,
};

/// Everything one round measured.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// 1-based.
    pub round: usize,
    /// The raw broker + Redis loop.
    pub ceiling: CeilingRun,
    /// `POST /v1/jobs` with no worker running.
    pub http: HttpRun,
    /// One worker emptying the queue the HTTP measurement filled.
    pub drain_1w: DrainRun,
    /// `sim`, 1 worker, webhooks off.
    pub sim_1w_off: FleetRun,
    /// `sim`, 1 worker, webhooks on.
    pub sim_1w_on: FleetRun,
    /// Open-loop latency, 1 worker.
    pub latency_1w: LatencyRun,
    /// `sim`, 2 workers, webhooks off.
    pub sim_2w_off: FleetRun,
    /// `sim`, 2 workers, webhooks on.
    pub sim_2w_on: FleetRun,
    /// Builtin `sentiment`, 2 workers.
    pub sentiment_2w: SentimentRun,
    /// A fresh worker with nothing to do, after `/readyz`.
    pub worker_idle: Memory,
    /// The producer at the end of the round.
    pub producer_peak: Memory,
    /// The two workers at the end of the round.
    pub worker_peaks: Vec<Memory>,
    /// This process (load generator and webhook receiver) at the end of the round.
    pub bench_peak: Memory,
    /// CPU µs per message, request, job or text of each measurement, per process role
    /// (`bench`, `producer`, `workers`, `rabbitmq`, `redis`, `total`).
    pub cpu_us: BTreeMap<String, BTreeMap<String, f64>>,
}

/// Where a figure should be, from issue 8.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// Ratio to the ceiling at least this.
    RatioAtLeast(f64),
    /// Value at least this.
    AtLeast(f64),
    /// Value at most this.
    AtMost(f64),
}

impl Target {
    fn describe(self, unit: &str) -> String {
        match self {
            Self::RatioAtLeast(r) => format!("≥ {:.0}% of ceiling", r * 100.0),
            Self::AtLeast(v) => format!("≥ {} {unit}", fmt_num(v)),
            Self::AtMost(v) => format!("≤ {} {unit}", fmt_num(v)),
        }
    }

    fn met(self, value: f64, ratio: Option<f64>) -> bool {
        match self {
            Self::RatioAtLeast(r) => ratio.is_some_and(|x| x >= r),
            Self::AtLeast(v) => value >= v,
            Self::AtMost(v) => value <= v,
        }
    }
}

/// One line of the table.
struct Metric {
    key: &'static str,
    label: String,
    unit: &'static str,
    get: fn(&Round) -> Option<f64>,
    ratio: bool,
    target: Option<Target>,
}

/// `/proc` reports KiB; the table shows MB (10^6 bytes), the unit of the target.
fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

/// The table's lines, in order.
fn metrics(c: &Config) -> Vec<Metric> {
    let m = |key, label: String, unit, get, ratio, target| Metric {
        key,
        label,
        unit,
        get,
        ratio,
        target,
    };
    vec![
        m(
            "ceiling",
            format!(
                "ceiling: raw lapin, {} confirms in flight, manual acks (prefetch {}), 1 Redis SET per message ({} msgs)",
                c.ceiling_in_flight, c.ceiling_prefetch, c.ceiling_messages
            ),
            "msg/s",
            |r| Some(r.ceiling.per_s),
            true,
            None,
        ),
        m(
            "sim_1w_off",
            format!(
                "Flotilla sim, 1 worker (--concurrency {}, its prefetch), webhooks off ({} jobs; client batches of {}, {} in flight)",
                c.worker_concurrency, c.jobs, c.submit_batch, c.submit_concurrency
            ),
            "jobs/s",
            |r| Some(r.sim_1w_off.per_s),
            true,
            Some(Target::RatioAtLeast(0.70)),
        ),
        m(
            "sim_1w_on",
            "Flotilla sim, 1 worker, webhooks on: last terminal record".into(),
            "jobs/s",
            |r| Some(r.sim_1w_on.per_s),
            true,
            None,
        ),
        m(
            "sim_1w_on_webhooks",
            "Flotilla sim, 1 worker, webhooks on: last verified webhook (one receiver, per_endpoint_concurrency 64)".into(),
            "jobs/s",
            |r| r.sim_1w_on.webhook_per_s,
            true,
            Some(Target::RatioAtLeast(0.40)),
        ),
        m(
            "sim_2w_off",
            "Flotilla sim, 2 workers, webhooks off".into(),
            "jobs/s",
            |r| Some(r.sim_2w_off.per_s),
            true,
            None,
        ),
        m(
            "sim_2w_on",
            "Flotilla sim, 2 workers, webhooks on: last terminal record".into(),
            "jobs/s",
            |r| Some(r.sim_2w_on.per_s),
            true,
            None,
        ),
        m(
            "sim_2w_on_webhooks",
            "Flotilla sim, 2 workers, webhooks on: last verified webhook".into(),
            "jobs/s",
            |r| r.sim_2w_on.webhook_per_s,
            true,
            None,
        ),
        m(
            "drain_1w",
            format!(
                "1 worker emptying a pre-filled queue ({} jobs; first claim → last terminal)",
                c.http_jobs
            ),
            "jobs/s",
            |r| Some(r.drain_1w.per_s),
            true,
            None,
        ),
        m(
            "http",
            format!(
                "HTTP API submit, API key + Idempotency-Key, {} concurrent, no worker ({} jobs)",
                c.http_concurrency, c.http_jobs
            ),
            "req/s",
            |r| Some(r.http.per_s),
            true,
            Some(Target::AtLeast(5000.0)),
        ),
        m(
            "latency_p50",
            format!(
                "latency submit → terminal p50, open loop at {:.0}% of 1-worker max, 1 worker",
                c.latency_load * 100.0
            ),
            "ms",
            |r| Some(r.latency_1w.p50_ms),
            false,
            None,
        ),
        m(
            "latency_p95",
            "latency p95".into(),
            "ms",
            |r| Some(r.latency_1w.p95_ms),
            false,
            None,
        ),
        m(
            "latency_p99",
            "latency p99".into(),
            "ms",
            |r| Some(r.latency_1w.p99_ms),
            false,
            Some(Target::AtMost(25.0)),
        ),
        m(
            "latency_offered",
            "latency: offered load".into(),
            "jobs/s",
            |r| Some(r.latency_1w.offered_per_s),
            false,
            None,
        ),
        m(
            "sentiment_2w",
            format!(
                "builtin sentiment (VADER), 2 workers, bundled UCI sentences ({} texts)",
                c.sentiment_texts
            ),
            "texts/s",
            |r| Some(r.sentiment_2w.per_s),
            true,
            None,
        ),
        m(
            "sentiment_accuracy",
            "sentiment accuracy (sanity check; README: 82.7%)".into(),
            "%",
            |r| Some(r.sentiment_2w.accuracy * 100.0),
            false,
            None,
        ),
        m(
            "worker_idle_rss",
            "worker idle RSS (after /readyz, before any job; built-in models load on first use)".into(),
            "MB",
            |r| Some(mb(r.worker_idle.rss_kib)),
            false,
            Some(Target::AtMost(25.0)),
        ),
        m(
            "worker_peak_rss",
            "worker peak RSS (VmHWM, largest of the 2 workers)".into(),
            "MB",
            |r| r.worker_peaks.iter().map(|m| mb(m.hwm_kib)).reduce(f64::max),
            false,
            None,
        ),
        m(
            "producer_peak_rss",
            "producer peak RSS (VmHWM)".into(),
            "MB",
            |r| Some(mb(r.producer_peak.hwm_kib)),
            false,
            None,
        ),
        m(
            "bench_peak_rss",
            "flotilla-bench peak RSS (load generator + webhook receiver)".into(),
            "MB",
            |r| Some(mb(r.bench_peak.hwm_kib)),
            false,
            None,
        ),
    ]
}

/// The knobs a run used (shown with the report).
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Rounds.
    pub rounds: usize,
    /// Ceiling messages per round.
    pub ceiling_messages: usize,
    /// Ceiling publishes awaiting confirms at once.
    pub ceiling_in_flight: usize,
    /// Ceiling consumer prefetch.
    pub ceiling_prefetch: u16,
    /// Jobs per `sim` fleet run.
    pub jobs: usize,
    /// Client requests in flight during the throughput runs.
    pub submit_concurrency: usize,
    /// Jobs per client request during the throughput runs.
    pub submit_batch: usize,
    /// HTTP measurement requests.
    pub http_jobs: usize,
    /// HTTP measurement concurrency.
    pub http_concurrency: usize,
    /// Latency measurement length, s.
    pub latency_secs: f64,
    /// Latency load as a share of the 1-worker maximum.
    pub latency_load: f64,
    /// Sentiment texts.
    pub sentiment_texts: usize,
    /// Worker `--concurrency`.
    pub worker_concurrency: u16,
    /// Namespace used.
    pub namespace: String,
}

/// The machine the run was on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// `model name` from `/proc/cpuinfo`.
    pub cpu: String,
    /// Cores available to this process.
    pub cores: usize,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: String,
    /// `rustc --version`.
    pub rustc: String,
    /// `release` or `debug` (of this binary and, with `make bench`, of the fleet's).
    pub profile: String,
    /// Redis `redis_version`.
    pub redis: String,
    /// The `rabbitmq-server` package version, when dpkg knows it.
    pub rabbitmq: String,
    /// UTC time of the run's start.
    pub date: String,
}

impl Machine {
    /// Gathers what it can; unknown parts read `unknown`.
    pub async fn gather(redis: &redis::aio::ConnectionManager) -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let rustc = command_line(
            &std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()),
            &["--version"],
        );
        let rabbitmq = command_line("dpkg-query", &["-W", "-f=${Version}", "rabbitmq-server"]);
        let mut conn = redis.clone();
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        let redis = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            kernel,
            rustc,
            profile: if cfg!(debug_assertions) {
                "debug".into()
            } else {
                "release".into()
            },
            redis,
            rabbitmq,
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        }
    }
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Thousands separators for rates, one decimal for small values.
fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 {
        let s = format!("{:.0}", v);
        let (sign, digits) = s.split_at(usize::from(s.starts_with('-')));
        let mut out = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(ch);
        }
        format!("{sign}{out}")
    } else {
        format!("{v:.1}")
    }
}

/// Summary of one metric over the rounds.
struct Line {
    spread: Option<Spread>,
    ratio: Option<Spread>,
    met: Option<bool>,
}

fn summarize(m: &Metric, rounds: &[Round]) -> Line {
    let values: Vec<f64> = rounds.iter().filter_map(m.get).collect();
    let ratios: Vec<f64> = rounds
        .iter()
        .filter_map(|r| (m.get)(r).map(|v| v / r.ceiling.per_s.max(1e-9)))
        .collect();
    let spread = Spread::of(&values);
    let ratio = if m.ratio { Spread::of(&ratios) } else { None };
    let met = match (m.target, spread) {
        (Some(t), Some(s)) => Some(t.met(s.median, ratio.map(|r| r.median))),
        _ => None,
    };
    Line { spread, ratio, met }
}

/// Columns of the CPU table: measurement key and header.
const CPU_COLUMNS: [(&str, &str); 8] = [
    ("ceiling", "ceiling (per msg)"),
    ("http", "HTTP submit"),
    ("drain_1w", "1 worker, pre-filled"),
    ("sim_1w_off", "sim 1w off"),
    ("sim_1w_on", "sim 1w on"),
    ("sim_2w_off", "sim 2w off"),
    ("sim_2w_on", "sim 2w on"),
    ("sentiment_2w", "sentiment 2w"),
];

/// Rows of the CPU table.
const CPU_ROLES: [&str; 6] = ["bench", "producer", "workers", "rabbitmq", "redis", "total"];

/// Median over the rounds of the CPU µs per unit that `role` spent in `measurement`.
fn cpu_median(rounds: &[Round], measurement: &str, role: &str) -> Option<f64> {
    let v: Vec<f64> = rounds
        .iter()
        .filter_map(|r| r.cpu_us.get(measurement)?.get(role).copied())
        .collect();
    Spread::of(&v).map(|s| s.median)
}

/// The report as JSON: config, machine, summary per metric, and every round.
pub fn to_json(config: &Config, machine: &Machine, rounds: &[Round]) -> Value {
    let mut summary = serde_json::Map::new();
    for m in metrics(config) {
        let line = summarize(&m, rounds);
        summary.insert(
            m.key.into(),
            json!({
                "label": m.label,
                "unit": m.unit,
                "median": line.spread.map(|s| s.median),
                "min": line.spread.map(|s| s.min),
                "max": line.spread.map(|s| s.max),
                "ratio_to_ceiling": line.ratio,
                "target": m.target.map(|t| t.describe(m.unit)),
                "target_met": line.met,
            }),
        );
    }
    let mut cpu = serde_json::Map::new();
    for (key, _) in CPU_COLUMNS {
        let per_role: serde_json::Map<String, Value> = CPU_ROLES
            .iter()
            .filter_map(|role| Some(((*role).to_owned(), json!(cpu_median(rounds, key, role)?))))
            .collect();
        cpu.insert(key.into(), Value::Object(per_role));
    }
    json!({
        "config": config,
        "machine": machine,
        "summary": summary,
        "cpu_us_per_unit_median": cpu,
        "rounds": rounds,
    })
}

/// The report as Markdown: the machine, then one table line per metric.
pub fn to_markdown(config: &Config, machine: &Machine, rounds: &[Round]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "| CPU | cores | kernel | rustc | profile | RabbitMQ | Redis | date |\n|---|---|---|---|---|---|---|---|\n| {} | {} | {} | {} | {} | {} | {} | {} |\n\n",
        machine.cpu,
        machine.cores,
        machine.kernel,
        machine.rustc,
        machine.profile,
        machine.rabbitmq,
        machine.redis,
        machine.date
    ));
    s.push_str(&format!(
        "{} rounds, interleaved; median (min–max); ratio = figure / ceiling of the same round, median (min–max) over rounds.\n\n",
        rounds.len()
    ));
    s.push_str("| measurement | median | spread | vs ceiling | target |\n|---|---|---|---|---|\n");
    for m in metrics(config) {
        let line = summarize(&m, rounds);
        let Some(sp) = line.spread else { continue };
        let ratio = line
            .ratio
            .map(|r| {
                format!(
                    "{:.0}% ({:.0}–{:.0}%)",
                    r.median * 100.0,
                    r.min * 100.0,
                    r.max * 100.0
                )
            })
            .unwrap_or_default();
        let target = match (m.target, line.met) {
            (Some(t), Some(met)) => {
                format!("{} {}", t.describe(m.unit), if met { "✓" } else { "✗" })
            }
            _ => String::new(),
        };
        s.push_str(&format!(
            "| {} | {} {} | {}–{} | {} | {} |\n",
            m.label,
            fmt_num(sp.median),
            m.unit,
            fmt_num(sp.min),
            fmt_num(sp.max),
            ratio,
            target
        ));
    }
    s.push_str(
        "\nCPU per message, request, job or text, µs (user + system, all threads; median over rounds):\n\n| process |",
    );
    for (_, header) in CPU_COLUMNS {
        s.push_str(&format!(" {header} |"));
    }
    s.push_str("\n|---|");
    s.push_str(&"---|".repeat(CPU_COLUMNS.len()));
    s.push('\n');
    for role in CPU_ROLES {
        s.push_str(&format!("| {role} |"));
        for (key, _) in CPU_COLUMNS {
            match cpu_median(rounds, key, role) {
                Some(v) => s.push_str(&format!(" {v:.0} |")),
                None => s.push_str(" |"),
            }
        }
        s.push('\n');
    }
    s
}

/// Writes `report.json` and `report.md` into `dir`.
///
/// # Errors
/// The directory or a file cannot be written.
pub fn write(dir: &Path, json: &Value, markdown: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let j = dir.join("report.json");
    std::fs::write(&j, serde_json::to_string_pretty(json)?)
        .with_context(|| format!("writing {}", j.display()))?;
    let m = dir.join("report.md");
    std::fs::write(&m, markdown).with_context(|| format!("writing {}", m.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_readable() {
        assert_eq!(fmt_num(15234.4), "15,234");
        assert_eq!(fmt_num(1234567.0), "1,234,567");
        assert_eq!(fmt_num(512.0), "512");
        assert_eq!(fmt_num(12.34), "12.3");
    }
}
