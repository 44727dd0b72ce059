//! Request validation beyond the JSON schema: model, input shape, metadata, limits, webhook URL.

use chrono::Utc;
use flotilla_shared::{
    catalog::{self, ModelName},
    config::FileConfig,
    job::JobRequest,
};

use super::ApiError;

/// Largest `metadata` object, bytes of JSON.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Longest `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Checks a parsed request; the message names the offending field.
pub fn request(req: &JobRequest, cfg: &FileConfig, has_secret: bool) -> Result<(), ApiError> {
    let params = req.params.clone().unwrap_or(serde_json::Value::Null);
    if let Some(route) = cfg.routes.get(&req.model) {
        flotilla_shared::routes::validate(route, &req.input, &params).map_err(ApiError::invalid)?;
    } else {
        let model = ModelName::parse(&req.model)
            .filter(|m| *m != ModelName::Sim || cfg.models.sim.enabled)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "model: unknown model {:?}; GET /v1/models lists them",
                    req.model
                ))
            })?;
        catalog::validate(model, &req.input, &params).map_err(ApiError::invalid)?;
        if model == ModelName::Sim
            && params.get("crash").and_then(|v| v.as_bool()) == Some(true)
            && !cfg.models.sim.allow_crash
        {
            return Err(ApiError::invalid(
                "params.crash: not allowed (models.sim.allow_crash is off)",
            ));
        }
    }
    if let Some(meta) = &req.metadata {
        if !meta.is_object() {
            return Err(ApiError::invalid("metadata: expected an object"));
        }
        if meta.to_string().len() > MAX_METADATA_BYTES {
            return Err(ApiError::invalid(format!(
                "metadata: more than {MAX_METADATA_BYTES} bytes"
            )));
        }
    }
    if let Some(t) = req.timeout_s {
        if t == 0 || t > cfg.jobs.max_timeout_s {
            return Err(ApiError::invalid(format!(
                "timeout_s: between 1 and {}",
                cfg.jobs.max_timeout_s
            )));
        }
    }
    if let Some(d) = req.deadline {
        if d <= Utc::now() {
            return Err(ApiError::invalid("deadline: already passed"));
        }
    }
    if let Some(w) = &req.webhook {
        webhook_url(&w.url, cfg)?;
        if !has_secret {
            return Err(ApiError::invalid(
                "webhook: this tenant has no webhook secret configured",
            ));
        }
    }
    Ok(())
}

/// Checks a webhook URL's form and, unless the config permits it, that it does not name a
/// private host literally, in any notation (`flotilla_shared::webhook::check_url`).
/// Resolution-time checks are the dispatcher's.
pub fn webhook_url(url: &str, cfg: &FileConfig) -> Result<(), ApiError> {
    flotilla_shared::webhook::check_url(url, &cfg.webhooks)
        .map(|_| ())
        .map_err(|why| ApiError::invalid(format!("webhook.url: {why}")))
}

/// Checks an `Idempotency-Key` header value: 1–255 visible ASCII characters.
pub fn idempotency_key(value: &str) -> Result<(), ApiError> {
    if value.is_empty()
        || value.len() > MAX_IDEMPOTENCY_KEY_LEN
        || !value.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            format!("Idempotency-Key: 1-{MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_hosts_are_refused_unless_allowed() {
        let mut cfg = FileConfig::default();
        assert!(webhook_url("https://127.0.0.1/h", &cfg).is_err());
        assert!(webhook_url("https://[::1]/h", &cfg).is_err());
        assert!(webhook_url("https://10.1.2.3/h", &cfg).is_err());
        assert!(webhook_url("https://169.254.169.254/latest", &cfg).is_err());
        assert!(webhook_url("https://localhost/h", &cfg).is_err());
        assert!(webhook_url("http://example.com/h", &cfg).is_err());
        assert!(webhook_url("https://example.com/h", &cfg).is_ok());
        cfg.webhooks.allow_private = true;
        cfg.webhooks.allow_http = true;
        assert!(webhook_url("http://127.0.0.1:9/h", &cfg).is_ok());
        assert!(webhook_url("ftp://example.com/h", &cfg).is_err());
    }

    #[test]
    fn idempotency_keys_are_bounded() {
        assert!(idempotency_key("order-17").is_ok());
        assert!(idempotency_key("").is_err());
        assert!(idempotency_key("has space").is_err());
        assert!(idempotency_key(&"k".repeat(256)).is_err());
    }
}
