//! CPU time per process, from `/proc/<pid>/stat` (`utime + stime`, all threads), to say where
//! the CPU of a measurement went: the load generator, the producer, the workers, RabbitMQ,
//! Redis. The broker and Redis are found as the processes listening on the configured ports.

use std::collections::BTreeMap;

/// Linux reports `utime`/`stime` in `USER_HZ` ticks, 100 per second on every mainstream
/// architecture (`getconf CLK_TCK`).
const TICKS_PER_S: f64 = 100.0;

/// User + system CPU of `pid` in ticks, all threads; `None` once it is gone.
pub fn ticks_of(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is the 3rd field overall, utime
    // the 14th and stime the 15th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The pid of the process listening on TCP `port` (IPv4 or IPv6), if this user can see it.
pub fn listener_pid(port: u16) -> Option<u32> {
    let want = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, rem_address, st (0A = LISTEN), ..., inode (10th)
            if f.len() > 9 && f[1].ends_with(&want) && f[3] == "0A" {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let procs = std::fs::read_dir("/proc").ok()?;
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// Processes grouped by role (`bench`, `producer`, `workers`, `rabbitmq`, `redis`).
pub type Roles = Vec<(&'static str, Vec<u32>)>;

/// CPU ticks per role at one instant.
#[derive(Debug, Clone)]
pub struct Sample(BTreeMap<&'static str, u64>);

impl Sample {
    /// Reads every process of `roles` now (a vanished process counts 0).
    pub fn take(roles: &Roles) -> Self {
        Self(
            roles
                .iter()
                .map(|(role, pids)| (*role, pids.iter().filter_map(|&p| ticks_of(p)).sum()))
                .collect(),
        )
    }

    /// CPU µs per unit of work per role between `self` and a later `after`, plus `total`.
    pub fn per_unit_us(&self, after: &Sample, units: usize) -> BTreeMap<String, f64> {
        let per = |ticks: u64| ticks as f64 / TICKS_PER_S * 1e6 / units.max(1) as f64;
        let mut out = BTreeMap::new();
        let mut total = 0;
        for (role, &end) in &after.0 {
            let used = end.saturating_sub(self.0.get(role).copied().unwrap_or(0));
            total += used;
            out.insert((*role).to_owned(), per(used));
        }
        out.insert("total".into(), per(total));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(ticks_of(std::process::id()).is_some());
        let roles: Roles = vec![("bench", vec![std::process::id()])];
        let a = Sample::take(&roles);
        let b = Sample::take(&roles);
        let per = a.per_unit_us(&b, 10);
        assert!(per["bench"] >= 0.0);
        assert_eq!(per["bench"], per["total"]);
    }
}
