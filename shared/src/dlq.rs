//! Dead-letter entries: every message that reaches `<ns>.dlq` is recorded in the Redis stream
//! `<ns>:dlq` by the worker's `dlq` role, for `flotilla dlq list | show | replay | purge` and
//! the admin API. The entry keeps the message body, so a replay republishes it unchanged
//! (same job id, same idempotency key).

use std::collections::HashMap;

use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError, StoreResult};

/// Longest the stream grows (approximate trim); older entries fall off.
pub const MAX_ENTRIES: usize = 100_000;

/// One dead letter.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DlqEntry {
    /// Stream entry id (`<ms>-<seq>`), assigned by Redis.
    #[serde(default)]
    pub entry_id: String,
    /// Why: `invalid_json`, `invalid_utf8`, `schema_invalid`, `too_deep`, `unknown_job`,
    /// `poison` (worker), or the broker's `delivery_limit`, `rejected`, `expired`.
    pub reason: String,
    /// Detail for an operator.
    pub detail: String,
    /// Queue the message came from.
    pub source_queue: String,
    /// Job id, when the message carried one.
    pub job_id: Option<String>,
    /// Tenant, when known.
    pub tenant: Option<String>,
    /// Model, when known.
    pub model: Option<String>,
    /// When it was recorded.
    pub at: DateTime<Utc>,
    /// Message body, base64.
    pub body_b64: String,
}

/// Filters of a listing; `None` matches everything.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DlqFilter {
    /// Only this reason.
    pub reason: Option<String>,
    /// Only this model.
    pub model: Option<String>,
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Only entries recorded at or after this instant.
    pub since: Option<DateTime<Utc>>,
}

impl DlqFilter {
    /// Whether `e` passes.
    pub fn matches(&self, e: &DlqEntry) -> bool {
        self.reason.as_ref().is_none_or(|r| *r == e.reason)
            && self
                .model
                .as_ref()
                .is_none_or(|m| Some(m) == e.model.as_ref())
            && self
                .tenant
                .as_ref()
                .is_none_or(|t| Some(t) == e.tenant.as_ref())
            && self.since.is_none_or(|s| e.at >= s)
    }
}

impl DlqEntry {
    /// The message body.
    pub fn body(&self) -> Vec<u8> {
        B64.decode(&self.body_b64).unwrap_or_default()
    }

    /// An entry for `body`.
    pub fn new(reason: &str, detail: &str, source_queue: &str, body: &[u8]) -> Self {
        Self {
            entry_id: String::new(),
            reason: reason.to_owned(),
            detail: detail.to_owned(),
            source_queue: source_queue.to_owned(),
            job_id: None,
            tenant: None,
            model: None,
            at: Utc::now(),
            body_b64: B64.encode(body),
        }
    }
}

fn corrupt(detail: String) -> StoreError {
    StoreError::Corrupt {
        key: "dlq".into(),
        detail,
    }
}

impl Store {
    /// Appends a dead letter; returns its entry id.
    ///
    /// # Errors
    /// [`StoreError`] from Redis.
    pub async fn dlq_add(&self, entry: &DlqEntry) -> StoreResult<String> {
        let json = serde_json::to_string(entry).map_err(|e| corrupt(e.to_string()))?;
        let mut c = self.connection();
        let id: String = redis::cmd("XADD")
            .arg(self.names().dlq_stream())
            .arg("MAXLEN")
            .arg("~")
            .arg(MAX_ENTRIES)
            .arg("*")
            .arg("entry")
            .arg(json)
            .query_async(&mut c)
            .await?;
        Ok(id)
    }

    /// Entries matching `filter`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// [`StoreError`] from Redis.
    pub async fn dlq_list(&self, filter: &DlqFilter, limit: usize) -> StoreResult<Vec<DlqEntry>> {
        let start = filter
            .since
            .map(|s| format!("{}-0", s.timestamp_millis().max(0)))
            .unwrap_or_else(|| "-".into());
        let mut c = self.connection();
        let raw: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(self.names().dlq_stream())
            .arg(start)
            .arg("+")
            .query_async(&mut c)
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|(id, fields)| parse(id, &fields))
            .filter(|e| filter.matches(e))
            .take(limit)
            .collect())
    }

    /// One entry.
    ///
    /// # Errors
    /// [`StoreError`] from Redis.
    pub async fn dlq_get(&self, entry_id: &str) -> StoreResult<Option<DlqEntry>> {
        let mut c = self.connection();
        let raw: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(self.names().dlq_stream())
            .arg(entry_id)
            .arg(entry_id)
            .query_async(&mut c)
            .await?;
        Ok(raw.into_iter().find_map(|(id, f)| parse(id, &f)))
    }

    /// Deletes one entry; whether it existed.
    ///
    /// # Errors
    /// [`StoreError`] from Redis.
    pub async fn dlq_delete(&self, entry_id: &str) -> StoreResult<bool> {
        let mut c = self.connection();
        let n: i64 = redis::cmd("XDEL")
            .arg(self.names().dlq_stream())
            .arg(entry_id)
            .query_async(&mut c)
            .await?;
        Ok(n == 1)
    }
}

fn parse(id: String, fields: &HashMap<String, String>) -> Option<DlqEntry> {
    let mut e: DlqEntry = serde_json::from_str(fields.get("entry")?).ok()?;
    e.entry_id = id;
    Some(e)
}
