//! Webhook endpoints of a tenant, their enabled state, and the index of failed deliveries.
//!
//! An event of a job goes to the job's own `webhook.url` (destination [`JOB_DESTINATION`]) and
//! to every tenant endpoint whose filter takes the event type. Tenant endpoints come from the
//! config file (`[[tenants.endpoints]]`) and from the API (`/v1/webhook-endpoints`, ids
//! `ep_<uuid>`). Their state lives in the Redis hash [`Names::endpoints_key`]:
//!
//! | field | value |
//! |---|---|
//! | `<id>` | an API endpoint's JSON, secrets included (config endpoints live in the file) |
//! | `<id>:disabled` | a [`Disabled`] record for any endpoint, a job URL (`url_<sha256 prefix>`) too |
//!
//! Failed deliveries (attempts ran out, 410, disabled endpoint) are indexed per tenant in the
//! sorted set [`Names::failed_deliveries_key`] (score = Unix ms), so that "replay every failed
//! event since T" needs no scan.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{
    config::{Tenant, TenantIndex},
    job::EventType,
    store::{rfc3339, Store, StoreResult},
    webhook::WebhookSecret,
};

/// Destination name of a job's own `webhook.url`.
pub const JOB_DESTINATION: &str = "job";

/// Where an endpoint was declared.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    /// Made through `/v1/webhook-endpoints`.
    Api,
    /// Declared in `[[tenants.endpoints]]`.
    Config,
    /// A job's own `webhook.url` (listed only while disabled).
    JobUrl,
}

/// One signing secret of an API endpoint.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredSecret {
    /// `whsec_<base64>`.
    pub secret: String,
    /// When a rotated-out secret stops signing; `None` for the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredSecret")
            .field("secret", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why and when an endpoint stopped receiving events.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Disabled {
    /// E.g. `receiver answered 410 Gone`, `disabled through the API`.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The URL at that time (job URLs have no other record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A webhook destination of a tenant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Endpoint {
    /// `ep_<uuid>` (API), the config id, or `url_<hex>` (a job URL).
    pub id: String,
    /// Where it was declared.
    pub kind: EndpointKind,
    /// Receiver URL.
    pub url: String,
    /// Event types it takes; `None`: the terminal ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<EventType>>,
    /// Free text from its creator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Signing secrets of an API endpoint, current first; empty: the tenant's secret signs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<StoredSecret>,
    /// When it was made through the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    /// Set while it is disabled (kept in its own hash field, not in this JSON).
    #[serde(skip)]
    pub disabled: Option<Disabled>,
}

impl Endpoint {
    /// Whether it takes events of type `event`.
    pub fn wants(&self, event: EventType) -> bool {
        match &self.events {
            Some(list) => list.contains(&event),
            None => event.is_terminal(),
        }
    }

    /// The JSON the API shows: everything but the secrets.
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "kind": self.kind,
            "url": self.url,
            "events": self.events,
            "description": self.description,
            "created_at": self.created_at.map(rfc3339),
            "enabled": self.disabled.is_none(),
            "disabled": self.disabled,
        })
    }

    /// The secrets that sign a delivery at `now`: its own unexpired ones, else `tenant`'s
    /// current and previous secrets. Empty when there is none.
    pub fn signing_secrets(
        &self,
        tenant: Option<&Tenant>,
        now: DateTime<Utc>,
    ) -> Vec<WebhookSecret> {
        let own: Vec<WebhookSecret> = self
            .secrets
            .iter()
            .filter(|s| s.expires_at.is_none_or(|t| t > now))
            .filter_map(|s| WebhookSecret::parse(&s.secret).ok())
            .collect();
        if !own.is_empty() || !self.secrets.is_empty() {
            return own;
        }
        let Some(t) = tenant else {
            return Vec::new();
        };
        if self.kind == EndpointKind::Config {
            if let Some(s) = t
                .endpoints
                .iter()
                .find(|c| c.id == self.id)
                .and_then(|c| c.secret.clone())
            {
                return vec![s];
            }
        }
        t.webhook_secret
            .iter()
            .chain(t.previous_secret.iter())
            .cloned()
            .collect()
    }
}

/// The id under which a job URL's disabled state is kept: `url_` + 20 hex digits of its
/// SHA-256.
pub fn job_url_id(url: &str) -> String {
    let digest = crate::sha256_hex(url.as_bytes());
    format!("url_{}", &digest[..20])
}

/// The endpoint standing for a job's own `webhook.url`.
pub fn job_url_endpoint(url: &str) -> Endpoint {
    Endpoint {
        id: job_url_id(url),
        kind: EndpointKind::JobUrl,
        url: url.to_owned(),
        events: None,
        description: None,
        secrets: Vec::new(),
        created_at: None,
        disabled: None,
    }
}

fn disabled_field(id: &str) -> String {
    format!("{id}:disabled")
}

/// Every endpoint of `tenant`: config ones, API ones, and disabled job URLs, each with its
/// disabled state; config first, then by id.
///
/// # Errors
/// [`crate::store::StoreError`] from Redis.
pub async fn list(
    store: &Store,
    tenants: &TenantIndex,
    tenant: &str,
) -> StoreResult<Vec<Endpoint>> {
    let mut c = store.connection();
    let raw: HashMap<String, String> = c.hgetall(store.names().endpoints_key(tenant)).await?;
    let mut disabled: HashMap<&str, Disabled> = HashMap::new();
    let mut api = Vec::new();
    for (field, value) in &raw {
        if let Some(id) = field.strip_suffix(":disabled") {
            if let Ok(d) = serde_json::from_str::<Disabled>(value) {
                disabled.insert(id, d);
            }
        } else if let Ok(e) = serde_json::from_str::<Endpoint>(value) {
            api.push(e);
        } else {
            tracing::warn!(%tenant, endpoint = %field, "unreadable endpoint record skipped");
        }
    }
    api.sort_by(|a, b| a.id.cmp(&b.id));
    let mut out: Vec<Endpoint> = tenants
        .get(tenant)
        .map(|t| {
            t.endpoints
                .iter()
                .map(|c| Endpoint {
                    id: c.id.clone(),
                    kind: EndpointKind::Config,
                    url: c.url.clone(),
                    events: c.events.clone(),
                    description: None,
                    secrets: Vec::new(),
                    created_at: None,
                    disabled: None,
                })
                .collect()
        })
        .unwrap_or_default();
    out.extend(api);
    for e in &mut out {
        e.disabled = disabled.remove(e.id.as_str());
    }
    let mut job_urls: Vec<Endpoint> = disabled
        .into_iter()
        .filter(|(id, _)| id.starts_with("url_"))
        .map(|(id, d)| Endpoint {
            id: id.to_owned(),
            url: d.url.clone().unwrap_or_default(),
            disabled: Some(d),
            ..job_url_endpoint("")
        })
        .collect();
    job_urls.sort_by(|a, b| a.id.cmp(&b.id));
    out.extend(job_urls);
    Ok(out)
}

/// Writes an API endpoint's record (create, rotate).
///
/// # Errors
/// [`crate::store::StoreError`] from Redis.
pub async fn save(store: &Store, tenant: &str, endpoint: &Endpoint) -> StoreResult<()> {
    let mut c = store.connection();
    let json = serde_json::to_string(endpoint).unwrap_or_default();
    let _: i64 = c
        .hset(store.names().endpoints_key(tenant), &endpoint.id, json)
        .await?;
    Ok(())
}

/// Deletes an API endpoint and its disabled state. Returns whether it existed.
///
/// # Errors
/// [`crate::store::StoreError`] from Redis.
pub async fn delete(store: &Store, tenant: &str, id: &str) -> StoreResult<bool> {
    let mut c = store.connection();
    let n: i64 = c
        .hdel(
            store.names().endpoints_key(tenant),
            &[id.to_owned(), disabled_field(id)],
        )
        .await?;
    Ok(n > 0)
}

/// Marks endpoint `id` disabled with `reason` (`url` is kept for job URLs).
///
/// # Errors
/// [`crate::store::StoreError`] from Redis.
pub async fn disable(
    store: &Store,
    tenant: &str,
    id: &str,
    url: &str,
    reason: &str,
) -> StoreResult<()> {
    let record = Disabled {
        reason: reason.to_owned(),
        at: Utc::now(),
        url: Some(url.to_owned()),
    };
    let mut c = store.connection();
    let _: i64 = c
        .hset(
            store.names().endpoints_key(tenant),
            disabled_field(id),
            serde_json::to_string(&record).unwrap_or_default(),
        )
        .await?;
    Ok(())
}

/// Clears endpoint `id`'s disabled state. Returns whether it was disabled.
///
/// # Errors
/// [`crate::store::StoreError`] from Redis.
pub async fn enable(store: &Store, tenant: &str, id: &str) -> StoreResult<bool> {
    let mut c = store.connection();
    let n: i64 = c
        .hdel(store.names().endpoints_key(tenant), disabled_field(id))
        .await?;
    Ok(n > 0)
}

/// One delivery that ended without a 2xx: which event of which job, to which destination.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct FailedDelivery {
    /// Job id.
    pub job_id: String,
    /// Event type.
    pub event: EventType,
    /// [`JOB_DESTINATION`] or an endpoint id.
    pub endpoint: String,
}

/// Indexes a failed delivery of `tenant` at `at_ms`, dropping entries older than `keep`.
///
/// # Errors
/// [`crate::store::StoreError`] from Redis.
pub async fn record_failed(
    store: &Store,
    tenant: &str,
    failed: &FailedDelivery,
    at_ms: i64,
    keep: Duration,
) -> StoreResult<()> {
    let key = store.names().failed_deliveries_key(tenant);
    let member = serde_json::to_string(failed).unwrap_or_default();
    let keep_ms = keep.as_millis() as i64;
    let mut c = store.connection();
    let _: () = redis::pipe()
        .zadd(&key, member, at_ms)
        .ignore()
        .zrembyscore(&key, "-inf", at_ms - keep_ms)
        .ignore()
        .pexpire(&key, keep_ms)
        .ignore()
        .query_async(&mut c)
        .await?;
    Ok(())
}

/// Failed deliveries of `tenant` at or after `since_ms`, oldest first, at most `limit`.
///
/// # Errors
/// [`crate::store::StoreError`] from Redis.
pub async fn failed_since(
    store: &Store,
    tenant: &str,
    since_ms: i64,
    limit: usize,
) -> StoreResult<Vec<(FailedDelivery, i64)>> {
    let mut c = store.connection();
    let raw: Vec<(String, f64)> = redis::cmd("ZRANGE")
        .arg(store.names().failed_deliveries_key(tenant))
        .arg(since_ms)
        .arg("+inf")
        .arg("BYSCORE")
        .arg("LIMIT")
        .arg(0)
        .arg(limit)
        .arg("WITHSCORES")
        .query_async(&mut c)
        .await?;
    Ok(raw
        .into_iter()
        .filter_map(|(m, score)| serde_json::from_str(&m).ok().map(|f| (f, score as i64)))
        .collect())
}

/// Removes one entry from the failed index (it was replayed).
///
/// # Errors
/// [`crate::store::StoreError`] from Redis.
pub async fn clear_failed(store: &Store, tenant: &str, failed: &FailedDelivery) -> StoreResult<()> {
    let mut c = store.connection();
    let _: i64 = c
        .zrem(
            store.names().failed_deliveries_key(tenant),
            serde_json::to_string(failed).unwrap_or_default(),
        )
        .await?;
    Ok(())
}

/// A cached endpoint list and when it was read.
type Cached = (Instant, Arc<Vec<Endpoint>>);

/// A per-process cache of each tenant's endpoint list, refreshed after `ttl` (one `HGETALL`
/// per tenant per `ttl`), so that deciding whether a job's event has subscribers costs no
/// Redis round trip on the hot path. Changes made elsewhere show after at most `ttl`.
pub struct EndpointCache {
    ttl: Duration,
    tenants: TenantIndex,
    entries: Mutex<HashMap<String, Cached>>,
}

impl EndpointCache {
    /// A cache over `tenants`' config endpoints and the Redis registry.
    pub fn new(tenants: TenantIndex, ttl: Duration) -> Self {
        Self {
            ttl,
            tenants,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The tenants index the cache resolves config endpoints and secrets from.
    pub fn tenants(&self) -> &TenantIndex {
        &self.tenants
    }

    /// `tenant`'s endpoints, at most `ttl` old.
    ///
    /// # Errors
    /// [`crate::store::StoreError`] from Redis when the entry is stale and cannot be read.
    pub async fn get(&self, store: &Store, tenant: &str) -> StoreResult<Arc<Vec<Endpoint>>> {
        if let Some(hit) = self.fresh(tenant) {
            return Ok(hit);
        }
        let list = Arc::new(list(store, &self.tenants, tenant).await?);
        if let Ok(mut map) = self.entries.lock() {
            map.insert(tenant.to_owned(), (Instant::now(), list.clone()));
        }
        Ok(list)
    }

    fn fresh(&self, tenant: &str) -> Option<Arc<Vec<Endpoint>>> {
        let map = self.entries.lock().ok()?;
        let (at, list) = map.get(tenant)?;
        (at.elapsed() < self.ttl).then(|| list.clone())
    }

    /// Forgets `tenant`'s entry (after this process changed it).
    pub fn invalidate(&self, tenant: &str) {
        if let Ok(mut map) = self.entries.lock() {
            map.remove(tenant);
        }
    }

    /// Whether any tenant endpoint takes `event`, enabled or not: a disabled endpoint's events
    /// are recorded as failed deliveries, so that `replay --since` sends them once it is
    /// enabled again. When Redis does not answer, endpoints are assumed to exist, so no event
    /// is lost.
    pub async fn tenant_wants(&self, store: &Store, tenant: &str, event: EventType) -> bool {
        match self.get(store, tenant).await {
            Ok(list) => list
                .iter()
                .any(|e| e.kind != EndpointKind::JobUrl && e.wants(event)),
            Err(err) => {
                tracing::warn!(%err, %tenant, "cannot read the endpoint registry; publishing the event");
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_url_ids_are_stable_and_short() {
        let a = job_url_id("https://example.com/hook");
        assert_eq!(a, job_url_id("https://example.com/hook"));
        assert_ne!(a, job_url_id("https://example.com/hook2"));
        assert_eq!(a.len(), 24);
        assert!(a.starts_with("url_"));
    }

    #[test]
    fn rotated_secrets_sign_until_they_expire() {
        let now = Utc::now();
        let new = WebhookSecret::generate();
        let old = WebhookSecret::generate();
        let mut e = job_url_endpoint("https://example.com/h");
        e.kind = EndpointKind::Api;
        e.secrets = vec![
            StoredSecret {
                secret: new.clone(),
                expires_at: None,
            },
            StoredSecret {
                secret: old.clone(),
                expires_at: Some(now + chrono::Duration::hours(1)),
            },
        ];
        assert_eq!(e.signing_secrets(None, now).len(), 2);
        let later = now + chrono::Duration::hours(2);
        let only = e.signing_secrets(None, later);
        assert_eq!(only, vec![WebhookSecret::parse(&new).unwrap()]);
        assert!(format!("{:?}", e.secrets).contains("redacted"));
        assert!(!format!("{:?}", e.secrets).contains(&new));
    }
}
