//! The webhook HTTP client: signed POSTs, no redirects, timeouts, and an SSRF guard that
//! checks every resolved address (the connection goes only to checked addresses).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use flotilla_shared::{
    config::WebhooksConfig,
    webhook::{literal_ip, WebhookSecret, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP},
};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why one delivery attempt failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    /// HTTP status, when the receiver answered.
    pub status: Option<u16>,
    /// What happened (no secrets, no bodies).
    pub message: String,
    /// The receiver's `Retry-After`, if any.
    pub retry_after: Option<Duration>,
    /// Retrying cannot help (410 Gone, a refused address, a bad URL).
    pub permanent: bool,
    /// The receiver is overloaded: a 429 or a timeout (the next attempt waits at least the
    /// throttle floor).
    pub throttled: bool,
}

impl DeliveryError {
    /// A permanent refusal made before any request (a disabled endpoint, no secret).
    pub fn refused(message: &str) -> Self {
        Self::permanent(message.to_owned())
    }

    fn permanent(message: String) -> Self {
        Self {
            status: None,
            message,
            retry_after: None,
            permanent: true,
            throttled: false,
        }
    }

    fn transient(message: String) -> Self {
        Self {
            permanent: false,
            ..Self::permanent(message)
        }
    }
}

/// One successful delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// The receiver's 2xx status.
    pub status: u16,
}

/// Resolves with the system resolver, then drops every address the config does not permit
/// (`WebhooksConfig::permits`), so the connection goes only to checked addresses.
struct GuardedResolver {
    cfg: WebhooksConfig,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let cfg = self.cfg.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| cfg.permits(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host}: no public address (SSRF guard)").into());
            }
            let it: Addrs = Box::new(addrs.into_iter());
            Ok(it)
        })
    }
}

/// Sends signed webhook requests.
#[derive(Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    cfg: WebhooksConfig,
}

impl WebhookClient {
    /// A client with `cfg`'s timeouts and guard.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (TLS set-up).
    pub fn new(cfg: &WebhooksConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // HTTP(S)_PROXY from the environment would carry the request past the guard.
            .no_proxy()
            .connect_timeout(Duration::from_secs(cfg.connect_timeout_s))
            .timeout(Duration::from_secs(cfg.timeout_s))
            .user_agent(concat!("flotilla-webhooks/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(std::sync::Arc::new(GuardedResolver { cfg: cfg.clone() }))
            .build()?;
        Ok(Self {
            http,
            cfg: cfg.clone(),
        })
    }

    /// The settings in use.
    pub fn config(&self) -> &WebhooksConfig {
        &self.cfg
    }

    fn check_url(&self, url: &str) -> Result<reqwest::Url, DeliveryError> {
        flotilla_shared::webhook::check_url(url, &self.cfg).map_err(DeliveryError::permanent)
    }

    /// Resolves a host name up front so that a name resolving only to refused addresses is a
    /// permanent failure (the connection itself still goes through the guarded resolver).
    async fn check_resolution(&self, url: &reqwest::Url) -> Result<(), DeliveryError> {
        let (Some(host), None) = (url.host_str(), literal_ip(url)) else {
            return Ok(());
        };
        if self.cfg.allow_private {
            return Ok(());
        }
        let port = url.port_or_known_default().unwrap_or(443);
        let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((host, port)).await {
            Ok(a) => a.collect(),
            // DNS trouble may pass: transient.
            Err(e) => {
                return Err(DeliveryError::transient(format!(
                    "cannot resolve {host}: {e}"
                )))
            }
        };
        if !addrs.is_empty() && !addrs.iter().any(|a| self.cfg.permits(a.ip())) {
            return Err(DeliveryError::permanent(format!(
                "{host} resolves only to private addresses (SSRF guard)"
            )));
        }
        Ok(())
    }

    /// POSTs `body` as event `event_id`, signed with `secret` at the current time.
    ///
    /// # Errors
    /// [`DeliveryError`] unless the receiver answered 2xx; 3xx counts as failure (redirects are
    /// not followed); 410 is permanent.
    pub async fn send(
        &self,
        url: &str,
        event_id: &str,
        body: &[u8],
        secrets: &[WebhookSecret],
        traceparent: Option<&str>,
    ) -> Result<Delivered, DeliveryError> {
        let parsed = self.check_url(url)?;
        self.check_resolution(&parsed).await?;
        let ts = chrono::Utc::now().timestamp();
        // During a rotation every live secret signs: receivers holding either one verify.
        let signature = secrets
            .iter()
            .map(|s| s.sign(event_id, ts, body))
            .collect::<Vec<_>>()
            .join(" ");
        let mut req = self
            .http
            .post(parsed)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(HEADER_ID, event_id)
            .header(HEADER_TIMESTAMP, ts.to_string())
            .header(HEADER_SIGNATURE, signature)
            .body(body.to_vec());
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp);
        }
        let resp = req.send().await.map_err(|e| DeliveryError {
            throttled: e.is_timeout(),
            ..DeliveryError::transient(if e.is_timeout() {
                "timed out".to_string()
            } else if e.is_connect() {
                format!("connect failed: {}", root_cause(&e))
            } else {
                format!("request failed: {}", root_cause(&e))
            })
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(Delivered {
                status: status.as_u16(),
            });
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        Err(DeliveryError {
            status: Some(status.as_u16()),
            message: format!("receiver answered {status}"),
            retry_after,
            permanent: status == reqwest::StatusCode::GONE,
            throttled: status == reqwest::StatusCode::TOO_MANY_REQUESTS,
        })
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Parses `Retry-After`: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let delta = when.timestamp() - chrono::Utc::now().timestamp();
    Some(Duration::from_secs(delta.max(0) as u64))
}

/// Milliseconds since `t`.
pub fn elapsed_ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[tokio::test]
    async fn refuses_private_literals_unless_allowed() {
        let secret = WebhookSecret::parse(&WebhookSecret::generate()).unwrap();
        let cfg = WebhooksConfig::default();
        let client = WebhookClient::new(&cfg).unwrap();
        let err = client
            .send(
                "https://169.254.169.254/x",
                "evt",
                b"{}",
                std::slice::from_ref(&secret),
                None,
            )
            .await
            .unwrap_err();
        assert!(err.permanent, "{err:?}");
        let err = client
            .send(
                "http://example.com/x",
                "evt",
                b"{}",
                std::slice::from_ref(&secret),
                None,
            )
            .await
            .unwrap_err();
        assert!(err.permanent && err.message.contains("https"), "{err:?}");
    }
}
