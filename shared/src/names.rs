//! Every exchange, queue and Redis key name, derived from one namespace.
//!
//! `DESIGN.md` "RabbitMQ topology" and "Redis keys": the default namespace `flotilla` gives
//! `flotilla.jobs`, `flotilla.jobs.default`, `flotilla:job:{<id>}`...; another namespace replaces
//! that prefix everywhere, so several fleets (and parallel tests) share one broker and one Redis.

/// Header carrying the attempt count on job messages (AMQP long-long-int).
pub const HEADER_ATTEMPT: &str = "x-flotilla-attempt";
/// Header naming why a message was dead-lettered by a worker (`invalid_json`, ...).
pub const HEADER_DLQ_REASON: &str = "x-flotilla-reason";
/// Header with a human-readable detail of the dead-letter reason.
pub const HEADER_DLQ_DETAIL: &str = "x-flotilla-detail";
/// Header naming the queue a dead-lettered message came from.
pub const HEADER_DLQ_SOURCE: &str = "x-flotilla-source-queue";
/// Header with the event id (`webhook-id`) on event messages.
pub const HEADER_EVENT_ID: &str = "x-flotilla-event-id";
/// Header with the tenant on event messages.
pub const HEADER_TENANT: &str = "x-flotilla-tenant";
/// Header with the receiver URL on event messages.
pub const HEADER_WEBHOOK_URL: &str = "x-flotilla-webhook-url";
/// Header with the job id on event messages.
pub const HEADER_JOB_ID: &str = "x-flotilla-job-id";
/// Header with the event type (`job.succeeded`...) on event messages.
pub const HEADER_EVENT_TYPE: &str = "x-flotilla-event-type";
/// Header naming the one endpoint an event message is for (`job` = the job's own
/// `webhook.url`, else an endpoint id); absent on a fresh event, which goes to every
/// subscribed endpoint.
pub const HEADER_ENDPOINT: &str = "x-flotilla-endpoint";
/// Header with the earliest instant (Unix ms) an event's next attempt may be made.
pub const HEADER_NOT_BEFORE: &str = "x-flotilla-not-before-ms";

/// Whether `s` is 1–64 characters of `a-z0-9-_`: the form of namespaces, tenant names and
/// webhook endpoint ids (safe in queue names, Redis keys and URL paths).
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Names under one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    ns: String,
}

/// A namespace that cannot be used as a name prefix.
#[derive(Debug, thiserror::Error)]
#[error("invalid namespace {0:?}: use 1-64 characters from a-z, 0-9, '-' and '_'")]
pub struct InvalidNamespace(pub String);

impl Names {
    /// Names under `namespace`.
    ///
    /// # Errors
    /// [`InvalidNamespace`] unless it is 1–64 characters of `a-z0-9-_`.
    pub fn new(namespace: &str) -> Result<Self, InvalidNamespace> {
        if is_name(namespace) {
            Ok(Self {
                ns: namespace.to_owned(),
            })
        } else {
            Err(InvalidNamespace(namespace.to_owned()))
        }
    }

    /// The namespace itself.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// Direct exchange for jobs; routing key = pool.
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.ns)
    }

    /// Quorum queue of one pool.
    pub fn jobs_queue(&self, pool: &str) -> String {
        format!("{}.jobs.{pool}", self.ns)
    }

    /// Delay tier of `delay_s` seconds for jobs (fanout exchange and queue share the name).
    pub fn retry_tier(&self, delay_s: u64) -> String {
        format!("{}.retry.{delay_s}s", self.ns)
    }

    /// Dead-letter exchange (fanout).
    pub fn dlx(&self) -> String {
        format!("{}.dlx", self.ns)
    }

    /// Dead-letter queue (quorum), bound to [`Self::dlx`].
    pub fn dlq(&self) -> String {
        format!("{}.dlq", self.ns)
    }

    /// Queue of completion events for the webhook dispatcher.
    pub fn events_queue(&self) -> String {
        format!("{}.events", self.ns)
    }

    /// Fanout exchange in front of [`Self::events_queue`] (same name; event delay tiers
    /// dead-letter into it).
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.ns)
    }

    /// Delay tier of `delay_s` seconds for events (fanout exchange and queue share the name).
    pub fn events_tier(&self, delay_s: u64) -> String {
        format!("{}.events.retry.{delay_s}s", self.ns)
    }

    /// Redis hash of a tenant's webhook endpoints: field `<id>` = endpoint JSON, field
    /// `<id>:disabled` = why and when it was disabled.
    pub fn endpoints_key(&self, tenant: &str) -> String {
        format!("{}:endpoints:{tenant}", self.ns)
    }

    /// Redis sorted set of a tenant's failed deliveries (score = Unix ms), for replay.
    pub fn failed_deliveries_key(&self, tenant: &str) -> String {
        format!("{}:webhooks-failed:{tenant}", self.ns)
    }

    /// Redis hash of one job; the `{id}` hash tag keeps a job's keys in one cluster slot.
    pub fn job_key(&self, id: &str) -> String {
        format!("{}:job:{{{id}}}", self.ns)
    }

    /// Redis list of webhook delivery attempts of one job.
    pub fn deliveries_key(&self, id: &str) -> String {
        format!("{}:job:{{{id}}}:deliveries", self.ns)
    }

    /// Redis string mapping a tenant's idempotency key to `"<job id> <body sha256>"`.
    ///
    /// The caller's key is hashed, so any header value makes a safe, bounded key name.
    pub fn idempotency_key(&self, tenant: &str, key: &str) -> String {
        let digest = crate::sha256_hex(key.as_bytes());
        format!("{}:idem:{tenant}:{digest}", self.ns)
    }

    /// Redis stream of dead-letter entries (inspection and replay).
    pub fn dlq_stream(&self) -> String {
        format!("{}:dlq", self.ns)
    }

    /// Pattern matching every Redis key of the namespace (for cleanup).
    pub fn redis_pattern(&self) -> String {
        format!("{}:*", self.ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_match_the_design() {
        let n = Names::new("flotilla").unwrap();
        assert_eq!(n.jobs_exchange(), "flotilla.jobs");
        assert_eq!(n.jobs_queue("default"), "flotilla.jobs.default");
        assert_eq!(n.retry_tier(5), "flotilla.retry.5s");
        assert_eq!(n.dlq(), "flotilla.dlq");
        assert_eq!(n.job_key("abc"), "flotilla:job:{abc}");
        assert_eq!(n.deliveries_key("abc"), "flotilla:job:{abc}:deliveries");
    }

    #[test]
    fn rejects_unsafe_namespaces() {
        assert!(Names::new("").is_err());
        assert!(Names::new("a.b").is_err());
        assert!(Names::new("A").is_err());
        assert!(Names::new("t-1_x").is_ok());
    }
}
