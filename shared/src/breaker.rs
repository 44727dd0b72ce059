//! Circuit breakers of route backends, shared by the fleet through Redis.
//!
//! closed → open when, over a rolling window of `window_s`, at least `min_requests` calls
//! ended and the failed share reached `failure_rate`; after `cooldown_s` one caller in the
//! fleet probes (half-open): success closes it, failure opens it again. The state lives in
//! one Redis hash per backend (`lua/breaker.lua`), so every worker opens together; when Redis
//! does not answer, each process falls back to a [`LocalBreaker`] with the same rules.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::store::{Store, StoreResult};

/// `[breaker]`: the rules of every backend's circuit breaker.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Rolling window the failure rate is measured over, seconds.
    pub window_s: u64,
    /// Calls that must have ended in the window before the breaker may open.
    pub min_requests: u64,
    /// Share of failed calls (transient errors and timeouts) that opens it, in (0, 1].
    pub failure_rate: f64,
    /// How long it stays open before one probe call, seconds (also the probe's lease).
    pub cooldown_s: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window_s: 30,
            min_requests: 10,
            failure_rate: 0.5,
            cooldown_s: 15,
        }
    }
}

impl BreakerConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// A message naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.window_s == 0 || self.min_requests == 0 || self.cooldown_s == 0 {
            return Err("breaker: window_s, min_requests and cooldown_s at least 1".into());
        }
        if !(self.failure_rate > 0.0 && self.failure_rate <= 1.0) {
            return Err("breaker.failure_rate: above 0 and at most 1".into());
        }
        Ok(())
    }

    fn bucket_ms(&self) -> i64 {
        // Ten buckets per window, at least 100 ms each.
        ((self.window_s * 1000 / 10) as i64).max(100)
    }
}

/// State of one breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// One probe call is allowed.
    HalfOpen,
    /// Calls are refused until the cool-down ends.
    Open,
}

impl BreakerState {
    /// Name in `GET /v1/models` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half_open",
            Self::Open => "open",
        }
    }

    /// Value of `flotilla_breaker_state` (0 closed, 1 half-open, 2 open).
    pub fn gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "open" => Self::Open,
            "half_open" => Self::HalfOpen,
            _ => Self::Closed,
        }
    }
}

/// What to tell a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerOp {
    /// May a call go now?
    Allow,
    /// A call succeeded (or failed permanently: the backend answered).
    Ok,
    /// A call failed transiently or timed out.
    Fail,
}

impl BreakerOp {
    fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Ok => "ok",
            Self::Fail => "fail",
        }
    }
}

/// Redis key of `backend`'s breaker.
pub fn key(store: &Store, backend: &str) -> String {
    format!("{}:breaker:{{{backend}}}", store.names().namespace())
}

/// Applies `op` to `backend`'s fleet-wide breaker at `now_ms`; returns the state after it
/// and, for [`BreakerOp::Allow`], whether the call may go.
///
/// # Errors
/// Redis errors (the caller falls back to a [`LocalBreaker`]).
pub async fn apply(
    store: &Store,
    cfg: &BreakerConfig,
    backend: &str,
    op: BreakerOp,
    now_ms: i64,
) -> StoreResult<(BreakerState, bool)> {
    let script = redis::Script::new(include_str!("lua/breaker.lua"));
    let mut c = store.connection();
    let (state, allowed): (String, i64) = script
        .key(key(store, backend))
        .arg(op.as_str())
        .arg(now_ms)
        .arg(cfg.window_s * 1000)
        .arg(cfg.bucket_ms())
        .arg(cfg.min_requests)
        .arg(cfg.failure_rate)
        .arg(cfg.cooldown_s * 1000)
        .invoke_async(&mut c)
        .await?;
    Ok((BreakerState::parse(&state), allowed == 1))
}

/// Reads `backend`'s fleet-wide state without changing it (an open breaker past its
/// cool-down reads as half-open: the next call probes).
///
/// # Errors
/// Redis errors.
pub async fn read(store: &Store, backend: &str, now_ms: i64) -> StoreResult<BreakerState> {
    let mut c = store.connection();
    let (state, until): (Option<String>, Option<i64>) = redis::cmd("HMGET")
        .arg(key(store, backend))
        .arg("state")
        .arg("until")
        .query_async(&mut c)
        .await?;
    let state = BreakerState::parse(state.as_deref().unwrap_or("closed"));
    Ok(match state {
        BreakerState::Open if until.unwrap_or(0) <= now_ms => BreakerState::HalfOpen,
        s => s,
    })
}

/// One process's breaker for one backend, used while Redis is unreachable; the same rules
/// as `lua/breaker.lua`.
#[derive(Debug, Clone)]
pub struct LocalBreaker {
    state: BreakerState,
    until_ms: i64,
    /// bucket → (successes, failures)
    buckets: BTreeMap<i64, (u64, u64)>,
}

impl Default for LocalBreaker {
    fn default() -> Self {
        Self {
            state: BreakerState::Closed,
            until_ms: 0,
            buckets: BTreeMap::new(),
        }
    }
}

impl LocalBreaker {
    /// Applies `op` at `now_ms`, as [`apply`] does in Redis.
    pub fn apply(
        &mut self,
        cfg: &BreakerConfig,
        op: BreakerOp,
        now_ms: i64,
    ) -> (BreakerState, bool) {
        let cooldown = (cfg.cooldown_s * 1000) as i64;
        let open = |me: &mut Self| {
            *me = Self {
                state: BreakerState::Open,
                until_ms: now_ms + cooldown,
                buckets: BTreeMap::new(),
            };
            (BreakerState::Open, false)
        };
        if op == BreakerOp::Allow {
            if self.state == BreakerState::Closed {
                return (BreakerState::Closed, true);
            }
            if now_ms < self.until_ms {
                return (self.state, false);
            }
            self.state = BreakerState::HalfOpen;
            self.until_ms = now_ms + cooldown;
            return (BreakerState::HalfOpen, true);
        }
        if self.state != BreakerState::Closed {
            if op == BreakerOp::Ok {
                *self = Self::default();
                return (BreakerState::Closed, true);
            }
            if self.state == BreakerState::HalfOpen {
                return open(self);
            }
            return (BreakerState::Open, false);
        }
        let bucket_ms = cfg.bucket_ms();
        let bucket = now_ms.div_euclid(bucket_ms);
        let entry = self.buckets.entry(bucket).or_default();
        if op == BreakerOp::Ok {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
        let oldest = bucket - (cfg.window_s * 1000) as i64 / bucket_ms + 1;
        self.buckets = self.buckets.split_off(&oldest);
        let (oks, fails) = self
            .buckets
            .values()
            .fold((0, 0), |(a, b), (s, f)| (a + s, b + f));
        let total = oks + fails;
        if op == BreakerOp::Fail
            && total >= cfg.min_requests
            && fails as f64 >= cfg.failure_rate * total as f64
        {
            return open(self);
        }
        (BreakerState::Closed, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 4 calls in 10 s, half of them failed, open for 5 s.
    fn rules() -> BreakerConfig {
        BreakerConfig {
            window_s: 10,
            min_requests: 4,
            failure_rate: 0.5,
            cooldown_s: 5,
        }
    }

    #[test]
    fn opens_on_the_failure_rate_probes_after_the_cooldown_and_closes_on_success() {
        let cfg = rules();
        let mut b = LocalBreaker::default();
        // Below the minimum volume nothing opens, however bad.
        for t in 0..3 {
            assert_eq!(
                b.apply(&cfg, BreakerOp::Fail, t),
                (BreakerState::Closed, true)
            );
        }
        // The fourth call reaches the volume: 4 of 4 failed.
        assert_eq!(
            b.apply(&cfg, BreakerOp::Fail, 10),
            (BreakerState::Open, false)
        );
        assert_eq!(
            b.apply(&cfg, BreakerOp::Allow, 4_000),
            (BreakerState::Open, false)
        );
        // Cool-down over: one probe, others wait while it runs.
        assert_eq!(
            b.apply(&cfg, BreakerOp::Allow, 5_010),
            (BreakerState::HalfOpen, true)
        );
        assert_eq!(
            b.apply(&cfg, BreakerOp::Allow, 5_020),
            (BreakerState::HalfOpen, false)
        );
        // A failed probe opens it again; a successful one closes it.
        assert_eq!(
            b.apply(&cfg, BreakerOp::Fail, 5_030),
            (BreakerState::Open, false)
        );
        assert_eq!(
            b.apply(&cfg, BreakerOp::Allow, 10_030),
            (BreakerState::HalfOpen, true)
        );
        assert_eq!(
            b.apply(&cfg, BreakerOp::Ok, 10_040),
            (BreakerState::Closed, true)
        );
        assert_eq!(
            b.apply(&cfg, BreakerOp::Allow, 10_050),
            (BreakerState::Closed, true)
        );
    }

    #[test]
    fn old_failures_leave_the_window() {
        let cfg = rules();
        let mut b = LocalBreaker::default();
        for t in 0..3 {
            b.apply(&cfg, BreakerOp::Fail, t);
        }
        // 20 s later those three are gone: one failure among four successes stays closed.
        for t in 0..4 {
            b.apply(&cfg, BreakerOp::Ok, 20_000 + t);
        }
        assert_eq!(
            b.apply(&cfg, BreakerOp::Fail, 20_010),
            (BreakerState::Closed, true)
        );
        assert!(BreakerConfig::default().validate().is_ok());
        assert!(BreakerConfig {
            failure_rate: 0.0,
            ..cfg
        }
        .validate()
        .is_err());
    }
}
