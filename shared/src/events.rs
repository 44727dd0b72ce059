//! Job events: the webhook payload, published (confirmed) to `<ns>.events` for the
//! dispatcher. Shared by the worker (job starts and ends), the producer (cancel of a waiting
//! job, replays) and the dead-letter consumer.
//!
//! A fresh event carries no destination: the dispatcher sends it to the job's own
//! `webhook.url` and to every tenant endpoint that takes its type. A replay may name one
//! destination ([`HEADER_ENDPOINT`]).

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use serde_json::Value;

use crate::{
    amqp::{headers, json_properties, PublishError, Publisher},
    config::{TenantIndex, WebhooksConfig},
    endpoints::EndpointCache,
    job::{event_id, EventPayload, EventType},
    names::{
        HEADER_ENDPOINT, HEADER_EVENT_ID, HEADER_EVENT_TYPE, HEADER_JOB_ID, HEADER_TENANT,
        HEADER_WEBHOOK_URL,
    },
    store::{with_retries, Store, StoredJob},
};

/// Publishes job events; cheap to clone.
#[derive(Clone)]
pub struct Events {
    store: Store,
    max_payload_bytes: usize,
    public_api_url: String,
    cache: Arc<EndpointCache>,
}

impl Events {
    /// Events of `store`'s namespace, with `cfg`'s payload cap and link base, resolving tenant
    /// endpoints through `tenants` and the Redis registry.
    pub fn new(store: Store, tenants: TenantIndex, cfg: &WebhooksConfig) -> Self {
        Self {
            store,
            max_payload_bytes: cfg.max_payload_bytes,
            public_api_url: cfg.public_api_url.trim_end_matches('/').to_owned(),
            cache: Arc::new(EndpointCache::new(
                tenants,
                Duration::from_millis(cfg.endpoint_cache_ms),
            )),
        }
    }

    /// The endpoint cache (the dispatcher resolves destinations through it).
    pub fn endpoints(&self) -> &EndpointCache {
        &self.cache
    }

    /// Whether anyone takes `event` of `stored`: its own webhook or a tenant endpoint.
    pub async fn wanted(&self, stored: &StoredJob, event: EventType) -> bool {
        stored.webhook.as_ref().is_some_and(|w| w.wants(event))
            || self
                .cache
                .tenant_wants(&self.store, &stored.tenant, event)
                .await
    }

    /// The webhook body of `event` of `stored`: `{type, timestamp, data}`, where `data` is the
    /// job resource. Over the payload cap, `data.input` and `data.output` are `null`,
    /// `data.truncated` is `true`, and `links.job` gives the URL to fetch the whole job.
    pub fn payload(&self, stored: &StoredJob, event: EventType) -> Vec<u8> {
        let mut payload = EventPayload {
            event_type: event,
            timestamp: if event.is_terminal() {
                stored.job.completed_at.unwrap_or_else(Utc::now)
            } else {
                stored.job.started_at.unwrap_or_else(Utc::now)
            },
            data: stored.job.clone(),
        };
        // The job's own webhook outcome is not part of the event it reports.
        payload.data.webhook_status = None;
        let body = serde_json::to_vec(&payload).unwrap_or_default();
        if body.len() <= self.max_payload_bytes {
            return body;
        }
        payload.data.input = Value::Null;
        payload.data.output = None;
        let mut value = serde_json::to_value(&payload).unwrap_or_default();
        if let Some(data) = value.get_mut("data").and_then(Value::as_object_mut) {
            data.insert("truncated".into(), Value::Bool(true));
        }
        if let Some(obj) = value.as_object_mut() {
            let link = format!("{}/v1/jobs/{}", self.public_api_url, stored.job.id);
            obj.insert("links".into(), serde_json::json!({ "job": link }));
        }
        serde_json::to_vec(&value).unwrap_or_default()
    }

    /// Publishes `event` of `stored` (confirmed), for every subscriber or only for
    /// `destination`. The body is the exact webhook payload; headers carry the event id
    /// (`webhook-id`), type, tenant, job id and the job's webhook URL.
    ///
    /// # Errors
    /// The publish error.
    pub async fn publish(
        &self,
        publisher: &Publisher,
        stored: &StoredJob,
        event: EventType,
        destination: Option<&str>,
    ) -> Result<(), PublishError> {
        let body = self.payload(stored, event);
        let id = event_id(&stored.job.id, event);
        let mut pairs = vec![
            (HEADER_EVENT_ID, id.as_str()),
            (HEADER_EVENT_TYPE, event.as_str()),
            (HEADER_TENANT, stored.tenant.as_str()),
            (HEADER_JOB_ID, stored.job.id.as_str()),
        ];
        if let Some(hook) = stored.webhook.as_ref().filter(|w| w.wants(event)) {
            pairs.push((HEADER_WEBHOOK_URL, hook.url.as_str()));
        }
        if let Some(d) = destination {
            pairs.push((HEADER_ENDPOINT, d));
        }
        if let Some(tp) = &stored.traceparent {
            pairs.push((crate::trace::TRACEPARENT, tp.as_str()));
        }
        let props = json_properties(&id, headers(pairs, []));
        let names = self.store.names();
        publisher
            .publish(&names.events_exchange(), "", &body, props)
            .await
    }

    /// Publishes the terminal event of job `id` unless the job is not terminal, nobody takes
    /// the event, or it is already durable; then records it as published.
    ///
    /// # Errors
    /// A message when Redis or the broker failed (the caller keeps the job message to try
    /// again).
    pub async fn ensure_terminal(&self, publisher: &Publisher, id: &str) -> Result<(), String> {
        let stored = with_retries(|| self.store.get(id))
            .await
            .map_err(|e| e.to_string())?;
        match stored {
            Some(stored) => self.ensure_of(publisher, &stored, true).await,
            None => Ok(()),
        }
    }

    /// As [`Self::ensure_terminal`], for a record the caller already holds (the finish script
    /// returns it), saving a round trip. `mark = false` skips recording the event as
    /// published (the caller acks the job message right after, so only a crash in between
    /// sends the event twice, with the same `webhook-id`).
    ///
    /// # Errors
    /// As [`Self::ensure_terminal`].
    pub async fn ensure_of(
        &self,
        publisher: &Publisher,
        stored: &StoredJob,
        mark: bool,
    ) -> Result<(), String> {
        let Some(event) = EventType::for_status(stored.job.status) else {
            return Ok(());
        };
        if stored.event_published || !self.wanted(stored, event).await {
            return Ok(());
        }
        self.publish(publisher, stored, event, None)
            .await
            .map_err(|e| e.to_string())?;
        if !mark {
            return Ok(());
        }
        let id = stored.job.id.as_str();
        if let Err(err) = with_retries(|| self.store.mark_event_published(id)).await {
            // The event is durable; a redelivery would publish it again with the same
            // webhook-id.
            tracing::warn!(%err, job_id = id, "could not record the event as published");
        }
        Ok(())
    }
}
