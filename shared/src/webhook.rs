//! Standard Webhooks signing and verification (<https://www.standardwebhooks.com/>).
//!
//! Headers: `webhook-id`, `webhook-timestamp` (Unix seconds), `webhook-signature` =
//! space-separated `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>` entries, where the
//! key is the base64-decoded part of a `whsec_<base64>` secret.

use std::{fmt, net::IpAddr};

use base64::{engine::general_purpose::STANDARD as B64, Engine as _};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header carrying the event id, the same on every attempt.
pub const HEADER_ID: &str = "webhook-id";
/// Header carrying the signing time, Unix seconds.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying one or more `v1,<base64>` signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// Default tolerance between `webhook-timestamp` and the receiver's clock, seconds.
pub const DEFAULT_TOLERANCE_S: i64 = 300;

type HmacSha256 = Hmac<Sha256>;

/// A signing secret. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    key: Vec<u8>,
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// Why a secret or a delivery did not check out. Messages never contain the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The secret is not `whsec_<base64>` (or plain base64) of at least 16 bytes.
    #[error("secret is not whsec_<base64> of at least 16 bytes")]
    BadSecret,
    /// A required header is absent.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not an integer.
    #[error("webhook-timestamp is not a Unix time in seconds")]
    BadTimestamp,
    /// The timestamp is further than the tolerance from now.
    #[error("webhook-timestamp is {0} s away from now, outside the tolerance")]
    StaleTimestamp(i64),
    /// No `v1` signature matches.
    #[error("no signature matches")]
    NoMatch,
}

impl WebhookSecret {
    /// Parses `whsec_<base64>`; a bare base64 key is accepted too, as the reference libraries do.
    ///
    /// # Errors
    /// [`VerifyError::BadSecret`] when the base64 is invalid or the key is shorter than 16 bytes.
    pub fn parse(secret: &str) -> Result<Self, VerifyError> {
        let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
        let key = B64.decode(b64).map_err(|_| VerifyError::BadSecret)?;
        if key.len() < 16 {
            return Err(VerifyError::BadSecret);
        }
        Ok(Self { key })
    }

    /// Makes a fresh random secret (24 bytes) in `whsec_` form.
    pub fn generate() -> String {
        let bytes: [u8; 24] = rand::random();
        format!("whsec_{}", B64.encode(bytes))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
        let mut mac = match HmacSha256::new_from_slice(&self.key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `v1,<base64>` signature of `body` sent as message `id` at `timestamp` (Unix s).
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", B64.encode(tag))
    }

    /// Checks a delivery: some `v1` entry of `signature_header` matches (constant-time), and
    /// `timestamp` is within `tolerance_s` of `now` (Unix s).
    ///
    /// # Errors
    /// [`VerifyError`] saying which check failed.
    pub fn verify(
        &self,
        id: &str,
        timestamp: &str,
        signature_header: &str,
        body: &[u8],
        now: i64,
        tolerance_s: i64,
    ) -> Result<(), VerifyError> {
        let ts: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| VerifyError::BadTimestamp)?;
        let skew = now - ts;
        if skew.abs() > tolerance_s {
            return Err(VerifyError::StaleTimestamp(skew));
        }
        for entry in signature_header.split_whitespace() {
            let Some(sig) = entry.strip_prefix("v1,") else {
                continue;
            };
            let Ok(bytes) = B64.decode(sig) else {
                continue;
            };
            if self.mac(id, ts, body).verify_slice(&bytes).is_ok() {
                return Ok(());
            }
        }
        Err(VerifyError::NoMatch)
    }
}

/// The address a URL names literally, if it does (bracketed IPv6 included). The WHATWG URL
/// parser has already turned decimal, hex, octal and short IPv4 forms (`2130706433`,
/// `0x7f000001`, `0177.0.0.1`, `127.1`) into the address they name.
pub fn literal_ip(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        url::Host::Domain(_) => None,
    }
}

/// Checks a webhook URL's form against `cfg`: `https` (or `http` when allowed), no
/// credentials, a host, and — unless the config permits it — no private address literal
/// (in any IPv4 notation) and no `localhost` name. Resolution-time checks are the
/// dispatcher's.
///
/// # Errors
/// A message naming what is refused (the URL's own text is not repeated).
pub fn check_url(url: &str, cfg: &crate::config::WebhooksConfig) -> Result<url::Url, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
    match parsed.scheme() {
        "https" => {}
        "http" if cfg.allow_http => {}
        "http" => return Err("http is not allowed here; use https".into()),
        other => return Err(format!("scheme {other:?} is not allowed")),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("credentials in the URL are not allowed".into());
    }
    let host = parsed.host_str().ok_or("no host")?;
    let refused = match literal_ip(&parsed) {
        Some(ip) => !cfg.permits(ip),
        None => {
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            !cfg.allow_private
                && (name == "localhost" || name.ends_with(".localhost") || name.starts_with("ip6-"))
        }
    };
    if refused {
        return Err("private, loopback and link-local hosts are not allowed (SSRF guard)".into());
    }
    Ok(parsed)
}

/// Whether a webhook must not be sent to `ip`: loopback, private (RFC 1918), link-local
/// (including the 169.254.169.254 metadata address), CGNAT (100.64/10), benchmarking
/// (198.18/15), documentation and IETF ranges, reserved 240/4, unspecified, multicast,
/// broadcast; IPv6 unique-local (fc00::/7, including fd00:ec2::254), link-local, documentation
/// (2001:db8::/32), and IPv6 forms that embed an IPv4 address (IPv4-mapped, IPv4-compatible,
/// NAT64 64:ff9b::/96, 6to4 2002::/16), judged by that address.
pub fn is_private_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || (o[0] == 192 && o[1] == 0 && (o[2] == 0 || o[2] == 2))
                || (o[0] == 198 && o[1] == 51 && o[2] == 100)
                || (o[0] == 203 && o[1] == 0 && o[2] == 113)
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                IpAddr::V4(std::net::Ipv4Addr::new(
                    (hi >> 8) as u8,
                    hi as u8,
                    (lo >> 8) as u8,
                    lo as u8,
                ))
            };
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private_ip(IpAddr::V4(v4));
            }
            // IPv4-compatible ::a.b.c.d (deprecated, still routed by some stacks)
            if s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
                return is_private_ip(embedded(s[6], s[7]));
            }
            // NAT64 64:ff9b::/96 and the local-use 64:ff9b:1::/48
            if s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0; 4] || s[2] == 1) {
                return is_private_ip(embedded(s[6], s[7]));
            }
            // 6to4 2002:AABB:CCDD::/48
            if s[0] == 0x2002 {
                return is_private_ip(embedded(s[1], s[2]));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WebhooksConfig;

    #[test]
    fn every_notation_of_a_private_address_is_refused() {
        let cfg = WebhooksConfig {
            allow_http: true,
            ..WebhooksConfig::default()
        };
        for url in [
            "http://127.0.0.1/h",
            "http://2130706433/h",
            "http://0x7f000001/h",
            "http://0x7f.0.0.1/h",
            "http://0177.0.0.1/h",
            "http://127.1/h",
            "http://127.0.1/h",
            "http://0/h",
            "http://10.1.2.3/h",
            "http://167772161/h",
            "http://169.254.169.254/latest/meta-data",
            "http://2852039166/latest",
            "http://100.64.0.1/h",
            "http://[::1]/h",
            "http://[::]/h",
            "http://[::ffff:127.0.0.1]/h",
            "http://[::ffff:7f00:1]/h",
            "http://[::127.0.0.1]/h",
            "http://[64:ff9b::a9fe:a9fe]/h",
            "http://[64:ff9b:1::a00:1]/h",
            "http://[2002:7f00:1::]/h",
            "http://[fd00:ec2::254]/h",
            "http://[fe80::1]/h",
            "http://224.0.0.1/h",
            "http://localhost/h",
            "http://app.localhost./h",
        ] {
            let err = check_url(url, &cfg).expect_err(url);
            assert!(err.contains("SSRF"), "{url}: {err}");
        }
        assert!(check_url("http://93.184.215.14/h", &cfg).is_ok());
        assert!(check_url("https://example.com/h", &cfg).is_ok());
        assert!(check_url("https://user:pw@example.com/h", &cfg).is_err());
        assert!(check_url("ftp://example.com/h", &cfg).is_err());
        let https_only = WebhooksConfig::default();
        assert!(check_url("http://example.com/h", &https_only).is_err());
    }

    #[test]
    fn the_allow_list_admits_exactly_its_blocks() {
        let cfg = WebhooksConfig {
            allow_http: true,
            allow_addresses: vec!["127.0.0.1/32".parse().unwrap()],
            ..WebhooksConfig::default()
        };
        assert!(check_url("http://127.0.0.1:9/h", &cfg).is_ok());
        assert!(check_url("http://2130706433:9/h", &cfg).is_ok());
        assert!(check_url("http://127.0.0.2/h", &cfg).is_err());
        assert!(check_url("http://10.0.0.1/h", &cfg).is_err());
        assert!(check_url("http://localhost/h", &cfg).is_err());
    }

    // Published test vector of the Standard Webhooks reference libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_the_published_test_vector() {
        let s = WebhookSecret::parse(SECRET).unwrap();
        assert_eq!(s.sign(ID, TS, BODY), EXPECTED);
    }

    #[test]
    fn verifies_with_rotation_and_tolerance() {
        let s = WebhookSecret::parse(SECRET).unwrap();
        let header = format!("v1,bm9wZQ== {EXPECTED}");
        s.verify(ID, &TS.to_string(), &header, BODY, TS + 10, 300)
            .unwrap();
        assert_eq!(
            s.verify(ID, &TS.to_string(), &header, BODY, TS + 301, 300),
            Err(VerifyError::StaleTimestamp(301))
        );
        assert_eq!(
            s.verify(ID, &TS.to_string(), EXPECTED, b"{}", TS, 300),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            s.verify(ID, "soon", EXPECTED, BODY, TS, 300),
            Err(VerifyError::BadTimestamp)
        );
    }

    #[test]
    fn private_addresses_in_every_form() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "169.254.169.254",
            "100.64.0.1",
            "198.18.0.1",
            "0.0.0.0",
            "240.0.0.1",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::",
            "2001:db8::1",
        ] {
            assert!(is_private_ip(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.215.14",
            "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
            "64:ff9b::5db8:d70e",
        ] {
            assert!(!is_private_ip(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn secrets_are_checked_and_redacted() {
        assert_eq!(
            WebhookSecret::parse("whsec_!!"),
            Err(VerifyError::BadSecret)
        );
        assert_eq!(
            WebhookSecret::parse("whsec_YWJj"),
            Err(VerifyError::BadSecret)
        );
        let generated = WebhookSecret::generate();
        let s = WebhookSecret::parse(&generated).unwrap();
        assert!(!format!("{s:?}").contains(&generated[6..]));
    }
}
