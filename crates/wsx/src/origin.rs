//! Which browser pages may open a WebSocket to a server: the `Origin` check.
//!
//! A browser sends the origin of the page (`scheme://host[:port]`) with every WebSocket
//! handshake, and lets any page connect anywhere: the server is the one that must refuse pages
//! it does not trust, or any web site a user visits can talk to it with the user's cookies
//! (cross-site WebSocket hijacking). Other clients (command-line tools, other servers) usually
//! send no `Origin`. [`OriginPolicy`] decides:
//!
//! - no `Origin` header: allowed (not a browser, so no page to distrust);
//! - same origin: allowed when the Origin is the server's own, `http://HOST[:PORT]` for a
//!   plain connection or `https://HOST[:PORT]` for one over TLS ([`Scheme`]), where HOST:PORT
//!   equals the request's `Host` header, or over HTTP/2 (which has no `Host`) its `:authority`
//!   (ports default to 80 and 443; host names compare case-insensitively): the page was loaded
//!   from this server;
//! - listed: allowed when it equals one of the origins given to [`OriginPolicy::new`] (scheme,
//!   host and port compared, default ports filled in); `null` admits the `null` origin of
//!   `file:` pages and sandboxed frames, `*` admits every origin;
//! - anything else is refused with `403 Forbidden` and a body naming the origin.
//!
//! ```
//! use wsx::origin::{OriginPolicy, Scheme};
//!
//! let policy = OriginPolicy::new(&["http://localhost:3000"]).expect("valid origins");
//! // A page served by this server (plain HTTP), one from the listed origin, and a stranger.
//! assert!(policy.check(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080"), Scheme::Http).is_ok());
//! assert!(policy.check(Some("http://localhost:3000"), Some("127.0.0.1:8080"), Scheme::Http).is_ok());
//! let refused = policy.check(Some("https://evil.example"), Some("127.0.0.1:8080"), Scheme::Http);
//! assert_eq!(refused.unwrap_err().status, http::StatusCode::FORBIDDEN);
//! // Over TLS the server's own origin is https://.
//! assert!(policy.check(Some("https://example.com"), Some("example.com"), Scheme::Https).is_ok());
//! ```

use http::uri::Authority;
use http::{header, HeaderMap, StatusCode, Uri};
use wsx_proto::handshake::Rejection;

/// The scheme the server's own pages are loaded with, which decides what "same origin" means:
/// `http` for a server reached over plain TCP, `https` for one reached over TLS (also when TLS
/// ends at a reverse proxy in front of it: what counts is the URL the browser loaded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `http://`, default port 80 (a `ws://` server).
    #[default]
    Http,
    /// `https://`, default port 443 (a `wss://` server).
    Https,
}

impl Scheme {
    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    /// 80 or 443.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

/// Which origins may open a WebSocket: the server's own, and the ones it was given. The
/// default admits the server's own origin only. See the [module docs](self) for the rules.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    any: bool,
    allow_null: bool,
    /// Normalized `scheme://host:port`.
    allowed: Vec<String>,
}

/// A value given to [`OriginPolicy::new`] that is not an origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an origin like http://localhost:3000")]
pub struct InvalidOrigin(pub String);

impl OriginPolicy {
    /// A policy admitting the server's own origin and the given ones: each an `http`, `https`,
    /// `ws` or `wss` URL (a path is ignored), `null`, or `*` (every origin). Fails on a value
    /// that is not an origin.
    pub fn new<S: AsRef<str>>(extra: &[S]) -> Result<Self, InvalidOrigin> {
        let mut policy = Self::default();
        for value in extra {
            match value.as_ref().trim() {
                "*" => policy.any = true,
                "null" => policy.allow_null = true,
                v => policy.allowed.push(normalize(v).ok_or_else(|| InvalidOrigin(v.to_owned()))?),
            }
        }
        Ok(policy)
    }

    /// Checks a handshake's `Origin` value against its `Host` value, for a server whose pages
    /// are loaded with `scheme`. `Err` is the `403 Forbidden` answer to send.
    pub fn check(&self, origin: Option<&str>, host: Option<&str>, scheme: Scheme) -> Result<(), Rejection> {
        let Some(origin) = origin.map(str::trim) else { return Ok(()) };
        if self.any || (origin == "null" && self.allow_null) {
            return Ok(());
        }
        if let Some(normalized) = normalize(origin) {
            if self.allowed.contains(&normalized) || host.is_some_and(|h| same_origin(&normalized, h, scheme)) {
                return Ok(());
            }
        }
        Err(refusal(origin))
    }

    /// [`check`](Self::check) on the `Origin` and `Host` headers of a request (a `Request`'s
    /// `headers()`, or the `headers` of its head). An `Origin` that is not text is refused.
    ///
    /// Headers only: an HTTP/2 request (a WebSocket over HTTP/2, RFC 8441) has no `Host`
    /// header, its authority is in the URI (`:authority`), so a same-origin page is refused
    /// here. Use [`check_request`](Self::check_request) or [`check_parts`](Self::check_parts),
    /// which look at both.
    pub fn check_headers(&self, headers: &HeaderMap, scheme: Scheme) -> Result<(), Rejection> {
        self.check_head(None, headers, scheme)
    }

    /// [`check`](Self::check) on a request's `Origin` header and its server authority: the
    /// `Host` header, or without one (HTTP/2) the URI's authority (`:authority`). Works for
    /// WebSockets over HTTP/1.1 and HTTP/2 alike. An `Origin` that is not text is refused.
    pub fn check_request<B>(&self, request: &http::Request<B>, scheme: Scheme) -> Result<(), Rejection> {
        self.check_head(Some(request.uri()), request.headers(), scheme)
    }

    /// [`check_request`](Self::check_request) on a request's head.
    pub fn check_parts(&self, parts: &http::request::Parts, scheme: Scheme) -> Result<(), Rejection> {
        self.check_head(Some(&parts.uri), &parts.headers, scheme)
    }

    fn check_head(&self, uri: Option<&Uri>, headers: &HeaderMap, scheme: Scheme) -> Result<(), Rejection> {
        let origin = match headers.get(header::ORIGIN).map(|v| v.to_str()) {
            None => None,
            Some(Ok(origin)) => Some(origin),
            Some(Err(_)) => return Err(refusal("(not text)")),
        };
        let host = match headers.get(header::HOST) {
            Some(h) => h.to_str().ok(),
            None => uri.and_then(request_authority),
        };
        self.check(origin, host, scheme)
    }
}

/// The authority of a request's URI as a `Host` value (HTTP/2's `:authority`; no userinfo),
/// for a request without a `Host` header.
pub(crate) fn request_authority(uri: &Uri) -> Option<&str> {
    let authority = uri.authority()?.as_str();
    Some(authority.rsplit_once('@').map_or(authority, |(_, host)| host))
}

fn refusal(origin: &str) -> Rejection {
    Rejection::new(StatusCode::FORBIDDEN, format!("origin {origin:?} may not open a WebSocket here\n"))
}

/// Whether a normalized origin is `scheme://` + the Host header's authority.
fn same_origin(normalized: &str, host: &str, scheme: Scheme) -> bool {
    let Some(rest) = normalized.strip_prefix(scheme.as_str()).and_then(|r| r.strip_prefix("://")) else {
        return false;
    };
    match host.trim().parse::<Authority>() {
        Ok(a) if a.as_str().len() == host.trim().len() => rest == authority_key(&a, scheme.default_port()),
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
        p.check(Some(origin), Some(host), Scheme::Http).is_ok()
    }

    fn allowed_tls(p: &OriginPolicy, origin: &str, host: &str) -> bool {
        p.check(Some(origin), Some(host), Scheme::Https).is_ok()
    }

    #[test]
    fn same_origin_only_by_default() {
        let p = OriginPolicy::new::<&str>(&[]).unwrap();
        assert!(p.check(None, Some("127.0.0.1:8080"), Scheme::Http).is_ok(), "no Origin: not a browser");
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
        assert!(p.check(Some("http://127.0.0.1:8080"), None, Scheme::Http).is_err(), "no Host to compare with");
        let r = p.check(Some("http://evil.example"), Some("127.0.0.1:8080"), Scheme::Http).unwrap_err();
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(r.body.contains("http://evil.example"));
        assert_eq!(OriginPolicy::default().allowed, p.allowed);
    }

    /// Over TLS the server's own pages are https://HOST, with 443 as the default port; an
    /// http:// page of the same host is another origin.
    #[test]
    fn same_origin_over_tls_is_https() {
        let p = OriginPolicy::default();
        assert!(allowed_tls(&p, "https://example.com", "example.com"));
        assert!(allowed_tls(&p, "https://example.com:443", "example.com"));
        assert!(allowed_tls(&p, "https://example.com", "EXAMPLE.com:443"));
        assert!(allowed_tls(&p, "https://127.0.0.1:8443", "127.0.0.1:8443"));
        assert!(!allowed_tls(&p, "http://127.0.0.1:8443", "127.0.0.1:8443"), "http page, TLS server");
        assert!(!allowed_tls(&p, "https://example.com", "example.com:80"), "443 is the default, not 80");
        assert!(!allowed_tls(&p, "https://example.com:8443", "example.com"));
        assert!(!allowed(&p, "https://example.com", "example.com"), "plain server: http only");
        // A listed origin is allowed whatever the server's scheme.
        let p = OriginPolicy::new(&["http://localhost:3000"]).unwrap();
        assert!(allowed_tls(&p, "http://localhost:3000", "example.com"));
    }

    #[test]
    fn listed_origins() {
        let p = OriginPolicy::new(&["http://localhost:3000/", "https://app.example", "null"]).unwrap();
        assert!(allowed(&p, "http://localhost:3000", "127.0.0.1:8080"));
        assert!(allowed(&p, "https://app.example:443", "127.0.0.1:8080"));
        assert!(allowed(&p, "null", "127.0.0.1:8080"));
        assert!(!allowed(&p, "http://app.example", "127.0.0.1:8080"));
        assert!(allowed(&OriginPolicy::new(&["*"]).unwrap(), "http://anything", "x"));
        assert_eq!(OriginPolicy::new(&["localhost:3000"]).unwrap_err(), InvalidOrigin("localhost:3000".into()));
        assert!(OriginPolicy::new(&["ftp://x"]).is_err());
        assert_eq!(
            InvalidOrigin("x".into()).to_string(),
            "\"x\" is not an origin like http://localhost:3000",
            "wsx serve prefixes it with --origin"
        );
    }

    #[test]
    fn headers_of_a_request() {
        let p = OriginPolicy::default();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:8080".parse().unwrap());
        assert!(p.check_headers(&headers, Scheme::Http).is_ok(), "no Origin");
        headers.insert(header::ORIGIN, "http://127.0.0.1:8080".parse().unwrap());
        assert!(p.check_headers(&headers, Scheme::Http).is_ok());
        assert!(p.check_headers(&headers, Scheme::Https).is_err());
        headers.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert_eq!(p.check_headers(&headers, Scheme::Http).unwrap_err().status, StatusCode::FORBIDDEN);
        headers.insert(header::ORIGIN, http::HeaderValue::from_bytes(b"http://\xff").unwrap());
        assert_eq!(p.check_headers(&headers, Scheme::Http).unwrap_err().status, StatusCode::FORBIDDEN);
    }

    /// HTTP/2 has no `Host` header: the server's authority is the URI's (`:authority`).
    #[test]
    fn authority_of_an_http2_request() {
        let p = OriginPolicy::default();
        let h2 = |origin: &str, uri: &str| {
            http::Request::builder()
                .method(http::Method::CONNECT)
                .version(http::Version::HTTP_2)
                .uri(uri)
                .header(header::ORIGIN, origin)
                .body(())
                .unwrap()
        };
        let same = h2("http://127.0.0.1:8080", "http://127.0.0.1:8080/ws");
        assert!(p.check_request(&same, Scheme::Http).is_ok(), "same origin over h2");
        assert!(p.check_parts(&same.into_parts().0, Scheme::Http).is_ok());
        assert!(p.check_request(&h2("http://127.0.0.1:8080", "http://u@127.0.0.1:8080/ws"), Scheme::Http).is_ok());
        let foreign = h2("http://evil.example", "http://127.0.0.1:8080/ws");
        assert_eq!(p.check_request(&foreign, Scheme::Http).unwrap_err().status, StatusCode::FORBIDDEN);
        assert!(p.check_request(&h2("http://127.0.0.1:8080", "/ws"), Scheme::Http).is_err(), "no authority");
        // A Host header, when there is one, is what counts.
        let mut with_host = h2("http://127.0.0.1:8080", "http://127.0.0.1:8080/ws");
        with_host.headers_mut().insert(header::HOST, "example.com".parse().unwrap());
        assert!(p.check_request(&with_host, Scheme::Http).is_err());
        // check_headers sees no Host, as before.
        assert!(p
            .check_headers(h2("http://127.0.0.1:8080", "http://127.0.0.1:8080/ws").headers(), Scheme::Http)
            .is_err());
    }
}
