//! The webhook HTTP client: signed POSTs, no redirects, timeouts, and an SSRF guard that
//! checks every resolved address (the connection goes only to checked addresses).

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use flotilla_shared::{
    config::WebhooksConfig,
    webhook::{is_private_ip, WebhookSecret, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP},
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
}

/// One successful delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// The receiver's 2xx status.
    pub status: u16,
}

/// Resolves with the system resolver, then refuses private addresses unless allowed.
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow_private || !is_private_ip(a.ip()))
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
            .connect_timeout(Duration::from_secs(cfg.connect_timeout_s))
            .timeout(Duration::from_secs(cfg.timeout_s))
            .user_agent(concat!("flotilla-webhooks/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(std::sync::Arc::new(GuardedResolver {
                allow_private: cfg.allow_private,
            }))
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
        let permanent = |m: String| DeliveryError {
            status: None,
            message: m,
            retry_after: None,
            permanent: true,
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| permanent(format!("bad URL: {e}")))?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.cfg.allow_http => {}
            s => return Err(permanent(format!("scheme {s} not allowed"))),
        }
        if let Some(host) = parsed.host_str() {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = bare.parse::<IpAddr>() {
                if !self.cfg.allow_private && is_private_ip(ip) {
                    return Err(permanent(format!("{ip} is a private address (SSRF guard)")));
                }
            }
        }
        Ok(parsed)
    }

    /// Resolves a host name up front so that a name resolving only to private addresses is a
    /// permanent failure (the connection itself still goes through the guarded resolver).
    async fn check_resolution(&self, url: &reqwest::Url) -> Result<(), DeliveryError> {
        let Some(host) = url.host_str() else {
            return Ok(());
        };
        if self.cfg.allow_private || host.starts_with('[') || host.parse::<IpAddr>().is_ok() {
            return Ok(());
        }
        let port = url.port_or_known_default().unwrap_or(443);
        let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((host, port)).await {
            Ok(a) => a.collect(),
            // DNS trouble may pass: transient.
            Err(e) => {
                return Err(DeliveryError {
                    status: None,
                    message: format!("cannot resolve {host}: {e}"),
                    retry_after: None,
                    permanent: false,
                })
            }
        };
        if !addrs.is_empty() && addrs.iter().all(|a| is_private_ip(a.ip())) {
            return Err(DeliveryError {
                status: None,
                message: format!("{host} resolves only to private addresses (SSRF guard)"),
                retry_after: None,
                permanent: true,
            });
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
        secret: &WebhookSecret,
        traceparent: Option<&str>,
    ) -> Result<Delivered, DeliveryError> {
        let parsed = self.check_url(url)?;
        self.check_resolution(&parsed).await?;
        let ts = chrono::Utc::now().timestamp();
        let mut req = self
            .http
            .post(parsed)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(HEADER_ID, event_id)
            .header(HEADER_TIMESTAMP, ts.to_string())
            .header(HEADER_SIGNATURE, secret.sign(event_id, ts, body))
            .body(body.to_vec());
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp);
        }
        let resp = req.send().await.map_err(|e| DeliveryError {
            status: None,
            message: if e.is_timeout() {
                "timed out".to_string()
            } else if e.is_connect() {
                format!("connect failed: {}", root_cause(&e))
            } else {
                format!("request failed: {}", root_cause(&e))
            },
            retry_after: None,
            permanent: false,
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
            .send("https://169.254.169.254/x", "evt", b"{}", &secret, None)
            .await
            .unwrap_err();
        assert!(err.permanent, "{err:?}");
        let err = client
            .send("http://example.com/x", "evt", b"{}", &secret, None)
            .await
            .unwrap_err();
        assert!(err.permanent && err.message.contains("scheme"), "{err:?}");
    }
}
