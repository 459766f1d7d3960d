//! Which browser pages may open a WebSocket to the server (the `Origin` check).
//!
//! A browser sends the page's origin with every WebSocket handshake; other clients usually send
//! none. The rule:
//!
//! - no `Origin` header: allowed (command-line tools, other servers, the Autobahn suite);
//! - same origin: allowed when the Origin is `http://HOST[:PORT]` and HOST:PORT equals the
//!   request's `Host` header (ports default to 80; host names compare case-insensitively), i.e.
//!   the page was loaded from this server;
//! - listed: allowed when it equals one of the `--origin` values (scheme, host and port compared,
//!   default ports filled in; `--origin null` admits the `null` origin of `file:` pages and
//!   sandboxed frames, `--origin '*'` admits every origin);
//! - anything else is refused with `403 Forbidden` and a body naming the origin.

use http::uri::Authority;
use http::{StatusCode, Uri};
use wsx::Rejection;

/// The allowed origins besides the server's own.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    any: bool,
    allow_null: bool,
    /// Normalized `scheme://host:port`.
    allowed: Vec<String>,
}

impl OriginPolicy {
    /// A policy admitting the server's own origin and the given ones (`--origin` values: a URL,
    /// `null` or `*`). Fails on a value that is not an origin.
    pub fn new<S: AsRef<str>>(extra: &[S]) -> Result<Self, String> {
        let mut policy = Self::default();
        for value in extra {
            match value.as_ref().trim() {
                "*" => policy.any = true,
                "null" => policy.allow_null = true,
                v => {
                    let normalized = normalize(v)
                        .ok_or_else(|| format!("--origin {v:?} is not an origin like http://localhost:3000"))?;
                    policy.allowed.push(normalized);
                }
            }
        }
        Ok(policy)
    }

    /// Checks a handshake's `Origin` against its `Host`.
    pub fn check(&self, origin: Option<&str>, host: Option<&str>) -> Result<(), Rejection> {
        let Some(origin) = origin.map(str::trim) else { return Ok(()) };
        if self.any || (origin == "null" && self.allow_null) {
            return Ok(());
        }
        if let Some(normalized) = normalize(origin) {
            if self.allowed.contains(&normalized) || host.is_some_and(|h| same_origin(&normalized, h)) {
                return Ok(());
            }
        }
        Err(Rejection::new(
            StatusCode::FORBIDDEN,
            format!(
                "origin {origin:?} may not open a WebSocket here: only pages served by this server may \
                 (start wsx serve with --origin {origin} to allow it)\n"
            ),
        ))
    }
}

/// Whether a normalized origin is `http://` + the Host header's authority.
fn same_origin(normalized: &str, host: &str) -> bool {
    let Some(rest) = normalized.strip_prefix("http://") else { return false };
    match host.trim().parse::<Authority>() {
        Ok(a) if a.as_str().len() == host.trim().len() => rest == authority_key(&a, 80),
        _ => false,
    }
}

fn authority_key(a: &Authority, default_port: u16) -> String {
    format!("{}:{}", a.host().to_ascii_lowercase(), a.port_u16().unwrap_or(default_port))
}

/// `scheme://host:port` with lowercase scheme and host and the default port filled in, for an
/// `http`/`https`/`ws`/`wss` origin or URL (a path is ignored); `None` for anything else.
fn normalize(origin: &str) -> Option<String> {
    let uri: Uri = origin.parse().ok()?;
    let scheme = uri.scheme()?;
    let authority = uri.authority()?;
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return None;
    }
    let scheme_name = scheme.as_str().to_ascii_lowercase();
    let default_port = match scheme_name.as_str() {
        "http" | "ws" => 80,
        "https" | "wss" => 443,
        _ => return None,
    };
    Some(format!("{scheme_name}://{}", authority_key(authority, default_port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(p: &OriginPolicy, origin: &str, host: &str) -> bool {
        p.check(Some(origin), Some(host)).is_ok()
    }

    #[test]
    fn same_origin_only_by_default() {
        let p = OriginPolicy::new::<&str>(&[]).unwrap();
        assert!(p.check(None, Some("127.0.0.1:8080")).is_ok(), "no Origin: not a browser");
        assert!(allowed(&p, "http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(allowed(&p, "http://LOCALHOST:8080", "localhost:8080"));
        assert!(allowed(&p, "http://example.com", "example.com:80"));
        assert!(allowed(&p, "http://example.com:80", "example.com"));
        assert!(allowed(&p, "http://[::1]:8080", "[::1]:8080"));
        assert!(!allowed(&p, "http://127.0.0.1:8081", "127.0.0.1:8080"), "another port");
        assert!(!allowed(&p, "http://localhost:8080", "127.0.0.1:8080"), "another host name");
        assert!(!allowed(&p, "https://127.0.0.1:8080", "127.0.0.1:8080"), "another scheme");
        assert!(!allowed(&p, "null", "127.0.0.1:8080"));
        assert!(!allowed(&p, "garbage", "127.0.0.1:8080"));
        assert!(p.check(Some("http://127.0.0.1:8080"), None).is_err(), "no Host to compare with");
        let r = p.check(Some("http://evil.example"), Some("127.0.0.1:8080")).unwrap_err();
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(r.body.contains("http://evil.example"));
    }

    #[test]
    fn listed_origins() {
        let p = OriginPolicy::new(&["http://localhost:3000/", "https://app.example", "null"]).unwrap();
        assert!(allowed(&p, "http://localhost:3000", "127.0.0.1:8080"));
        assert!(allowed(&p, "https://app.example:443", "127.0.0.1:8080"));
        assert!(allowed(&p, "null", "127.0.0.1:8080"));
        assert!(!allowed(&p, "http://app.example", "127.0.0.1:8080"));
        assert!(allowed(&OriginPolicy::new(&["*"]).unwrap(), "http://anything", "x"));
        assert!(OriginPolicy::new(&["localhost:3000"]).is_err());
        assert!(OriginPolicy::new(&["ftp://x"]).is_err());
    }
}
