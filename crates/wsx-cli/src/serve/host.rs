//! Which `Host` header values the server answers (protection against DNS rebinding).
//!
//! A page on `http://attacker.example:8080` whose name the attacker then points at 127.0.0.1
//! talks to this server as the *same origin* in the browser's eyes: its requests carry
//! `Host: attacker.example:8080` and `Origin: http://attacker.example:8080`, which agree, so the
//! Origin check alone lets it in (rooms, `/echo`, `--static` files). The server therefore
//! answers only requests whose `Host` names it, on plain HTTP and upgrades alike:
//!
//! - an IP address (`127.0.0.1`, `[::1]`, the bound address, any other literal): a browser sends
//!   one only when it connected to that address itself, so no name was rebound;
//! - `localhost`;
//! - a name given with `--host NAME` (repeatable), e.g. the name of the machine on the LAN;
//! - with `--allow-any-host`, anything (behind a reverse proxy that checks names itself).
//!
//! The port, when present, is not compared: rebinding is about names. Names compare
//! case-insensitively, with a trailing dot ignored. Anything else is answered with
//! `421 Misdirected Request` and a body naming the option that allows it. A request without
//! `Host` is a `400 Bad Request` for HTTP/1.1 (RFC 9112 §3.2), as is one with several `Host`
//! headers; an HTTP/1.0 request may omit it (no browser does, so nothing was rebound). Over
//! HTTP/2 the name is the request's `:authority` (RFC 9113 §8.3.1), checked the same way; a
//! `Host` header, when an HTTP/2 client sends one too, is checked as well.

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, StatusCode, Version};
use wsx::Rejection;

/// The host names the server answers to besides IP addresses and `localhost`.
#[derive(Debug, Clone, Default)]
pub struct HostPolicy {
    any: bool,
    /// Lowercase, without a trailing dot.
    names: Vec<String>,
}

impl HostPolicy {
    /// A policy admitting IP addresses, `localhost` and `names` (`--host` values: a host name,
    /// without scheme or port); with `any`, every `Host`. Fails on a value that is not a name.
    pub fn new<S: AsRef<str>>(names: &[S], any: bool) -> Result<Self, String> {
        let mut policy = Self { any, names: Vec::new() };
        for name in names {
            let name = name.as_ref().trim();
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !valid {
                return Err(format!("--host {name:?} is not a host name like myhost.lan (no scheme, no port)"));
            }
            policy.names.push(normalize_name(name));
        }
        Ok(policy)
    }

    /// Checks a request's `Host` header(s): `Ok` when the server answers to it, else the
    /// refusal to send (400 for a missing, repeated or malformed `Host`, 421 for another name).
    pub fn check(&self, version: Version, headers: &HeaderMap) -> Result<(), Rejection> {
        self.check_request(version, headers, None)
    }

    /// [`check`](Self::check) with the request's `:authority` (an HTTP/2 request's target,
    /// `uri.authority()`), which must name this server too, and stands for `Host` when there is
    /// none.
    pub fn check_request(
        &self,
        version: Version,
        headers: &HeaderMap,
        authority: Option<&http::uri::Authority>,
    ) -> Result<(), Rejection> {
        if let Some(authority) = authority {
            self.check_value(&HeaderValue::from_str(authority.as_str()).map_err(|_| malformed())?)?;
            if !headers.contains_key(http::header::HOST) {
                return Ok(());
            }
        }
        let mut values = headers.get_all(http::header::HOST).iter();
        let (value, more) = (values.next(), values.next().is_some());
        if more {
            return Err(Rejection::new(StatusCode::BAD_REQUEST, "more than one Host header\n"));
        }
        let Some(value) = value else {
            if version < Version::HTTP_11 {
                return Ok(());
            }
            return Err(Rejection::new(StatusCode::BAD_REQUEST, "missing Host header\n"));
        };
        self.check_value(value)
    }

    /// Checks one `Host` value.
    fn check_value(&self, value: &HeaderValue) -> Result<(), Rejection> {
        if self.any {
            return Ok(());
        }
        let Some(host) = value.to_str().ok().and_then(host_of) else { return Err(malformed()) };
        if self.allows(host) {
            return Ok(());
        }
        let name = normalize_name(host);
        Err(Rejection::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this server does not answer to the name {name:?} (start wsx serve with --host {name} to allow it, \
                 or --allow-any-host behind a proxy that checks names)\n"
            ),
        ))
    }

    /// Whether the host part of a `Host` header (a name, an IPv4 address, a bracketed IPv6
    /// address) is one the server answers to.
    fn allows(&self, host: &str) -> bool {
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if bare.parse::<IpAddr>().is_ok() {
            return true;
        }
        let name = normalize_name(host);
        name == "localhost" || self.names.contains(&name)
    }
}

fn malformed() -> Rejection {
    Rejection::new(StatusCode::BAD_REQUEST, "malformed Host header\n")
}

/// The host part of a `Host` value (`name`, `1.2.3.4` or `[v6]`, then an optional `:port`),
/// `None` when it is not one.
fn host_of(value: &str) -> Option<&str> {
    let value = value.trim();
    let (host, port) = if value.starts_with('[') {
        let end = value.find(']')?;
        let (host, rest) = value.split_at(end + 1);
        (host, if rest.is_empty() { None } else { Some(rest.strip_prefix(':')?) })
    } else {
        match value.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (value, None),
        }
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok());
    let host_ok = !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'[' | b']' | b':'));
    (port_ok && host_ok).then_some(host)
}

fn normalize_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(p: &HostPolicy, hosts: &[&str]) -> Result<(), StatusCode> {
        let mut headers = HeaderMap::new();
        for h in hosts {
            headers.append(http::header::HOST, h.parse().unwrap());
        }
        p.check(Version::HTTP_11, &headers).map_err(|r| r.status)
    }

    /// Over HTTP/2 the `:authority` names the server: checked alone, or with a `Host` (both
    /// must pass).
    #[test]
    fn http2_authority() {
        let p = HostPolicy::new(&["myhost.lan"], false).unwrap();
        let check2 = |authority: &str, host: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(h) = host {
                headers.insert(http::header::HOST, h.parse().unwrap());
            }
            let authority: http::uri::Authority = authority.parse().unwrap();
            p.check_request(Version::HTTP_2, &headers, Some(&authority)).map_err(|r| r.status)
        };
        assert_eq!(check2("localhost:8443", None), Ok(()));
        assert_eq!(check2("myhost.lan", None), Ok(()));
        assert_eq!(check2("evil.example:8443", None), Err(StatusCode::MISDIRECTED_REQUEST));
        assert_eq!(check2("localhost", Some("evil.example")), Err(StatusCode::MISDIRECTED_REQUEST));
        assert_eq!(check2("evil.example", Some("localhost")), Err(StatusCode::MISDIRECTED_REQUEST));
        assert_eq!(check2("127.0.0.1", Some("127.0.0.1")), Ok(()));
        // No `:authority` and no `Host`: refused as over HTTP/1.1.
        assert_eq!(
            p.check_request(Version::HTTP_2, &HeaderMap::new(), None).map_err(|r| r.status),
            Err(StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn ip_addresses_localhost_and_listed_names() {
        let p = HostPolicy::new(&["MyHost.lan"], false).unwrap();
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "[::1]:8080",
            "[::1]",
            "192.168.1.20:80",
            "localhost:8080",
            "LOCALHOST",
            "localhost.",
            "myhost.lan:8080",
            "MYHOST.LAN.",
        ] {
            assert_eq!(check(&p, &[ok]), Ok(()), "{ok}");
        }
        for misdirected in
            ["attacker.example:8080", "attacker.example", "localhost.attacker.example", "127.0.0.1.nip.io"]
        {
            assert_eq!(check(&p, &[misdirected]), Err(StatusCode::MISDIRECTED_REQUEST), "{misdirected}");
        }
        for bad in ["", "a b", "user@127.0.0.1", "127.0.0.1:x", "127.0.0.1:", "127.0.0.1/x", "[::1", "[::1]x", "a:1:2"]
        {
            assert_eq!(check(&p, &[bad]), Err(StatusCode::BAD_REQUEST), "{bad:?}");
        }
        assert_eq!(check(&p, &[]), Err(StatusCode::BAD_REQUEST), "missing");
        assert_eq!(check(&p, &["127.0.0.1", "127.0.0.1"]), Err(StatusCode::BAD_REQUEST), "repeated");
        assert_eq!(p.check(Version::HTTP_10, &HeaderMap::new()).map_err(|r| r.status), Ok(()), "HTTP/1.0");
        let body = {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::HOST, "Attacker.Example:8080".parse().unwrap());
            p.check(Version::HTTP_11, &headers).unwrap_err().body
        };
        assert!(body.contains("\"attacker.example\"") && body.contains("--host attacker.example"), "{body}");
    }

    #[test]
    fn any_host_and_bad_names() {
        let p = HostPolicy::new::<&str>(&[], true).unwrap();
        assert_eq!(check(&p, &["attacker.example:8080"]), Ok(()));
        assert_eq!(check(&p, &[]), Err(StatusCode::BAD_REQUEST), "still required");
        for bad in ["http://x", "x:8080", "", "a/b"] {
            assert!(HostPolicy::new(&[bad], false).is_err(), "{bad}");
        }
    }
}
