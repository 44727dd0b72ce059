//! Per-backend rate limits shared by the fleet: GCRA in Redis (`lua/ratelimit.lua`).
//!
//! Requests per minute (`rpm`): calls are spaced `60 / rpm` seconds apart, with `burst` calls
//! allowed back to back. Tokens per minute (`tpm`): a call may start while the tokens already
//! spent fit in the last minute's allowance; its `usage` tokens are charged after it ends (they
//! are known only then).

use crate::store::{Store, StoreResult};

/// Limits of one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests per minute, if limited.
    pub rpm: Option<u64>,
    /// Tokens (input + output) per minute, if limited.
    pub tpm: Option<u64>,
    /// Calls allowed back to back under `rpm` (at least 1).
    pub burst: u64,
}

const MINUTE_MS: f64 = 60_000.0;

fn key(store: &Store, backend: &str, what: &str) -> String {
    format!(
        "{}:ratelimit:{{{backend}}}:{what}",
        store.names().namespace()
    )
}

async fn gcra(
    store: &Store,
    key: String,
    interval_ms: f64,
    tolerance_ms: f64,
    units: u64,
    op: &str,
    now_ms: i64,
) -> StoreResult<u64> {
    let script = redis::Script::new(include_str!("lua/ratelimit.lua"));
    let mut c = store.connection();
    let wait: i64 = script
        .key(key)
        .arg(now_ms)
        .arg(interval_ms)
        .arg(tolerance_ms)
        .arg(units)
        .arg(op)
        .invoke_async(&mut c)
        .await?;
    Ok(wait.max(0) as u64)
}

/// Takes one call from `backend`'s limits; returns 0 when it may go now, else how long to
/// wait, ms (nothing is taken then).
///
/// # Errors
/// Redis errors.
pub async fn take(store: &Store, backend: &str, limits: Limits, now_ms: i64) -> StoreResult<u64> {
    if let Some(tpm) = limits.tpm.filter(|n| *n > 0) {
        let t = MINUTE_MS / tpm as f64;
        let wait = gcra(
            store,
            key(store, backend, "tpm"),
            t,
            MINUTE_MS,
            0,
            "take",
            now_ms,
        )
        .await?;
        if wait > 0 {
            return Ok(wait);
        }
    }
    if let Some(rpm) = limits.rpm.filter(|n| *n > 0) {
        let t = MINUTE_MS / rpm as f64;
        let tolerance = t * (limits.burst.max(1) - 1) as f64;
        return gcra(
            store,
            key(store, backend, "rpm"),
            t,
            tolerance,
            1,
            "take",
            now_ms,
        )
        .await;
    }
    Ok(0)
}

/// Charges `tokens` spent by a call to `backend`'s `tpm` limit.
///
/// # Errors
/// Redis errors.
pub async fn charge(
    store: &Store,
    backend: &str,
    limits: Limits,
    tokens: u64,
    now_ms: i64,
) -> StoreResult<()> {
    if let Some(tpm) = limits.tpm.filter(|n| *n > 0) {
        let t = MINUTE_MS / tpm as f64;
        gcra(
            store,
            key(store, backend, "tpm"),
            t,
            MINUTE_MS,
            tokens,
            "charge",
            now_ms,
        )
        .await?;
    }
    Ok(())
}
