//! The content-addressed result cache of model routes (`DESIGN.md` "Models").
//!
//! Key: SHA-256 of the route name, its first backend's type and model (a new upstream model is
//! a new key space), and the canonical JSON ([`crate::job::canonical_json`]) of the input and
//! of the params without `cache`. Only deterministic requests use it ([`deterministic`]).
//! Single-flight: the first job of a key takes a lock (`SET NX PX`) and calls the backend; the
//! others wait for its answer instead of calling too, so N identical concurrent jobs make one
//! backend call.

use std::time::Duration;

use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    job::canonical_json,
    routes::{BackendType, RouteConfig},
    store::{Store, StoreResult},
};

/// `[cache]`: the result cache of model routes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Whether routes use the cache at all.
    pub enabled: bool,
    /// How long an answer stays cached, seconds.
    pub ttl_s: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_s: 24 * 3600,
        }
    }
}

/// A cached answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CachedAnswer {
    /// The model output.
    pub output: Value,
    /// Backend that produced it.
    pub served_by: String,
}

/// Whether a request to `route` with `params` may be answered from the cache: `cache: true`
/// always (`cache: false` never); otherwise a route of built-in backends only, or
/// `temperature: 0`, or a fixed `seed`.
pub fn deterministic(route: &RouteConfig, params: &Value) -> bool {
    if let Some(flag) = params.get("cache").and_then(Value::as_bool) {
        return flag;
    }
    route
        .backends
        .iter()
        .all(|b| b.kind == BackendType::Builtin)
        || params.get("temperature").and_then(Value::as_f64) == Some(0.0)
        || params.get("seed").is_some_and(|s| !s.is_null())
}

/// The cache key of a request (see the module docs).
pub fn key(
    store: &Store,
    name: &str,
    route: &RouteConfig,
    input: &Value,
    params: &Value,
) -> String {
    let first = route
        .backends
        .first()
        .map(|b| {
            format!(
                "{}:{}",
                b.kind.as_str(),
                b.model.as_deref().unwrap_or_default()
            )
        })
        .unwrap_or_default();
    let mut params = params.clone();
    if let Some(p) = params.as_object_mut() {
        p.remove("cache");
    }
    let material = format!(
        "{name}\n{first}\n{}\n{}",
        canonical_json(input),
        canonical_json(&params)
    );
    format!(
        "{}:cache:{}",
        store.names().namespace(),
        crate::sha256_hex(material.as_bytes())
    )
}

/// The cached answer under `key`, if any (an unreadable entry counts as none).
///
/// # Errors
/// Redis errors.
pub async fn get(store: &Store, key: &str) -> StoreResult<Option<CachedAnswer>> {
    let mut c = store.connection();
    let text: Option<String> = c.get(key).await?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

/// Takes the single-flight lock of `key` for `hold`; `true` when this caller got it.
///
/// # Errors
/// Redis errors.
pub async fn lock(store: &Store, key: &str, hold: Duration) -> StoreResult<bool> {
    let mut c = store.connection();
    let got: Option<String> = redis::cmd("SET")
        .arg(format!("{key}:lock"))
        .arg("1")
        .arg("NX")
        .arg("PX")
        .arg(hold.as_millis().max(1) as u64)
        .query_async(&mut c)
        .await?;
    Ok(got.is_some())
}

/// Stores `answer` under `key` for `ttl` (when given) and releases the lock.
///
/// # Errors
/// Redis errors.
pub async fn release(
    store: &Store,
    key: &str,
    answer: Option<&CachedAnswer>,
    ttl: Duration,
) -> StoreResult<()> {
    let mut c = store.connection();
    let mut pipe = redis::pipe();
    pipe.atomic();
    if let Some(a) = answer {
        let text = serde_json::to_string(a).unwrap_or_default();
        pipe.cmd("SET")
            .arg(key)
            .arg(text)
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .ignore();
    }
    pipe.cmd("DEL").arg(format!("{key}:lock")).ignore();
    pipe.query_async::<()>(&mut c).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(kinds: &[&str]) -> RouteConfig {
        let backends: Vec<String> = kinds
            .iter()
            .map(|k| match *k {
                "openai" => {
                    "[[backends]]\ntype = \"openai\"\nbase_url = \"http://h/v1\"\nmodel = \"m\"\n"
                        .to_string()
                }
                _ => "[[backends]]\ntype = \"builtin\"\nmodel = \"sentiment\"\n".to_string(),
            })
            .collect();
        toml::from_str(&backends.join("")).expect("route")
    }

    #[test]
    fn only_deterministic_requests_are_cached() {
        let llm = route(&["openai", "builtin"]);
        assert!(!deterministic(&llm, &json!({})));
        assert!(!deterministic(&llm, &json!({"temperature": 0.7})));
        assert!(deterministic(&llm, &json!({"temperature": 0})));
        assert!(deterministic(&llm, &json!({"temperature": 0.7, "seed": 3})));
        assert!(deterministic(&llm, &json!({"cache": true})));
        assert!(!deterministic(
            &llm,
            &json!({"temperature": 0, "cache": false})
        ));
        assert!(deterministic(&route(&["builtin"]), &Value::Null));
    }
}
