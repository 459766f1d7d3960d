//! Client proxies: HTTP `CONNECT` and SOCKS5 tunnels, and the choice of a proxy from the
//! environment as curl makes it.
//!
//! [`ClientBuilder::connect`](crate::ClientBuilder::connect) opens its TCP connection here. The
//! result is a plain [`TcpStream`]: either to the server, or to a proxy that has already agreed to
//! relay every byte to the server. Anything layered on top (TLS for `wss://`, with the server's
//! name for SNI and certificate checks; then the WebSocket handshake) runs end to end through the
//! tunnel, and the proxy sees only encrypted bytes for `wss://`.
//!
//! # Which proxy
//!
//! In order, the first that applies:
//!
//! 1. [`ClientBuilder::no_proxy`](crate::ClientBuilder::no_proxy): connect directly.
//! 2. [`ClientBuilder::proxy`](crate::ClientBuilder::proxy): this proxy; the environment is not
//!    read at all. Hosts listed with
//!    [`ClientBuilder::proxy_bypass`](crate::ClientBuilder::proxy_bypass) are still reached
//!    directly.
//! 3. The environment (the default), much as curl reads it; see [`proxy_from_env`]:
//!    - for `ws://`: `ws_proxy`, `WS_PROXY`, `https_proxy`, `HTTPS_PROXY`, `http_proxy`,
//!      `all_proxy`, `ALL_PROXY` (`https_proxy` before `http_proxy`: a WebSocket connection is a
//!      tunnel whatever its scheme, and the proxy a machine sets for HTTPS is the one that allows
//!      CONNECT; curl itself skips `https_proxy` for `ws://`);
//!    - for `wss://`: `wss_proxy`, `WSS_PROXY`, `https_proxy`, `HTTPS_PROXY`, `all_proxy`,
//!      `ALL_PROXY`;
//!    - the first one set to a non-empty value wins, lower case before upper case. Upper-case
//!      `HTTP_PROXY` is never read: in a CGI program it can be set by a request's `Proxy:` header
//!      (the "httpoxy" problem), so curl ignores it, and so does wsx;
//!    - hosts matching `no_proxy` (or, if that is unset or empty, `NO_PROXY`) are reached directly,
//!      with the rules of [`no_proxy_matches`]. A list given to
//!      [`ClientBuilder::proxy_bypass`](crate::ClientBuilder::proxy_bypass) replaces it.
//!
//! # Proxy URLs
//!
//! | URL | proxy | who resolves the server's name |
//! | --- | --- | --- |
//! | `http://[user:password@]host[:port]` (or without `http://`) | HTTP `CONNECT` tunnel | the proxy |
//! | `socks5://[user:password@]host[:port]` | SOCKS5 | wsx, locally (like curl) |
//! | `socks5h://[user:password@]host[:port]` | SOCKS5 | the proxy |
//!
//! The port defaults to 1080, as in curl: write it out. The user name and password are
//! percent-decoded (`%40` for `@`, `%3A` for `:`). An `http://` proxy gets them as
//! `Proxy-Authorization: Basic`; a SOCKS5 proxy with the user name/password method of RFC 1929
//! (each 1 to 255 bytes). `https://` proxies (TLS to the proxy itself) and SOCKS4 are not
//! supported: connecting fails with an error that says so.
//!
//! With `socks5://` the server's name is resolved on this machine and the proxy gets an address,
//! as curl does; with `socks5h://` the proxy gets the name and resolves it, which is what you want
//! when the name is only known on the proxy's side or DNS should not leave your machine.
//!
//! # Errors, deadlines and limits
//!
//! A failure is an [`Error::Proxy`] holding a [`ProxyError`]: the proxy's URL
//! without its password, the environment variable it came from, and what went wrong
//! ([`ProxyFailure`]): the status line of a refused `CONNECT` (407 with a hint about
//! credentials, 403, 5xx…), the meaning of a SOCKS5 reply, an authentication failure, a timeout
//! naming the step that waited. The password is never printed, by `Display` or `Debug`.
//!
//! Connecting to the proxy and setting up the tunnel share the client's handshake timeout
//! ([`Config::handshake_timeout`](wsx_proto::Config::handshake_timeout)) with the WebSocket
//! handshake that follows. The proxy's answer to `CONNECT` is bounded by the same
//! [`HandshakeLimits`] as the server's handshake response (bytes and header lines), and it is
//! read without taking a byte past its end: the bytes after it belong to the tunnel. (The head
//! reader peeks at the socket and then consumes exactly the head.)
//!
//! # Why not a crate for `CONNECT`
//!
//! SOCKS5 is [`tokio-socks`](https://docs.rs/tokio-socks): it reads exactly the reply's bytes,
//! knows the reply codes and does RFC 1929 authentication. For `CONNECT`, hyper-util's tunnel
//! connector would bring hyper's I/O traits and a tower service for about forty lines of work,
//! reads the answer with one fixed 8 KiB buffer that may swallow the tunnel's first bytes, does
//! not take our head limits, and reports a refusal without its status line. The `CONNECT`
//! exchange here is a request of three lines and the head reader described above, parsed by
//! `httparse` like every other head in wsx.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_socks::tcp::Socks5Stream;
use tokio_socks::TargetAddr;
use wsx_proto::handshake::HandshakeLimits;

use crate::{Error, ErrorKind};

/// The proxy port when a proxy URL has none (curl's default, for every kind of proxy).
pub const DEFAULT_PROXY_PORT: u16 = 1080;

/// The variables that name a proxy for `ws://`, in the order they are tried.
const WS_VARIABLES: &[&str] =
    &["ws_proxy", "WS_PROXY", "https_proxy", "HTTPS_PROXY", "http_proxy", "all_proxy", "ALL_PROXY"];
/// The variables that name a proxy for `wss://`, in the order they are tried.
const WSS_VARIABLES: &[&str] = &["wss_proxy", "WSS_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"];
/// The variables that list the hosts to reach directly.
const NO_PROXY_VARIABLES: &[&str] = &["no_proxy", "NO_PROXY"];

/// Longest reason phrase of a refusal kept for the error message.
const MAX_REASON_CHARS: usize = 200;

// ---------------------------------------------------------------------------
// The choice of a proxy
// ---------------------------------------------------------------------------

/// A proxy named by the environment, as found by [`proxy_from_env`].
///
/// `Debug` shows the URL without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvProxy {
    /// The variable the URL was read from, e.g. `https_proxy`.
    pub variable: &'static str,
    /// The proxy's URL as the variable holds it (it may contain a password).
    pub url: String,
}

impl fmt::Debug for EnvProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvProxy").field("variable", &self.variable).field("url", &redact(&self.url)).finish()
    }
}

/// The proxy the environment names for a connection to `scheme://host:port` (`scheme` is `ws` or
/// `wss`), or `None` for a direct connection. `env` looks a variable up (for the process's
/// environment: `|name| std::env::var(name).ok()`); a variable set to the empty string counts as
/// unset, as in curl.
///
/// The order: for `ws`, `ws_proxy`, `WS_PROXY`, `https_proxy`, `HTTPS_PROXY`, `http_proxy`
/// (never `HTTP_PROXY`), `all_proxy`, `ALL_PROXY`; for `wss`, `wss_proxy`, `WSS_PROXY`, `https_proxy`, `HTTPS_PROXY`,
/// `all_proxy`, `ALL_PROXY`. Before that, a host matching `no_proxy` (else `NO_PROXY`) gets no
/// proxy; see [`no_proxy_matches`]. Other schemes get `None`.
///
/// ```
/// use wsx::proxy::proxy_from_env;
///
/// let env = |name: &str| match name {
///     "https_proxy" => Some("http://proxy.corp:3128".to_owned()),
///     "no_proxy" => Some("localhost,.internal".to_owned()),
///     _ => None,
/// };
/// let proxy = proxy_from_env("wss", "example.com", 443, env).unwrap();
/// assert_eq!((proxy.variable, proxy.url.as_str()), ("https_proxy", "http://proxy.corp:3128"));
/// assert_eq!(proxy_from_env("wss", "db.internal", 443, env), None);
/// // `https_proxy` serves ws:// too (`http_proxy` only ws://).
/// assert_eq!(proxy_from_env("ws", "example.com", 80, env).unwrap().variable, "https_proxy");
/// ```
pub fn proxy_from_env(scheme: &str, host: &str, port: u16, env: impl Fn(&str) -> Option<String>) -> Option<EnvProxy> {
    if let Some((_, list)) = first_set(&env, NO_PROXY_VARIABLES) {
        if no_proxy_matches(&list, host, port) {
            return None;
        }
    }
    env_proxy_url(scheme, &env)
}

/// The proxy variable for `scheme`, ignoring `no_proxy`.
fn env_proxy_url(scheme: &str, env: &impl Fn(&str) -> Option<String>) -> Option<EnvProxy> {
    let names = if scheme.eq_ignore_ascii_case("ws") {
        WS_VARIABLES
    } else if scheme.eq_ignore_ascii_case("wss") {
        WSS_VARIABLES
    } else {
        return None;
    };
    first_set(env, names).map(|(variable, url)| EnvProxy { variable, url })
}

/// The first of `names` set to something other than blanks, with its value.
fn first_set(env: &impl Fn(&str) -> Option<String>, names: &[&'static str]) -> Option<(&'static str, String)> {
    names.iter().find_map(|&name| env(name).filter(|v| !v.trim().is_empty()).map(|v| (name, v)))
}

/// Whether `host` (a name, an IPv4 address, or an IPv6 address with or without brackets) on
/// `port` is in `list`, a `no_proxy` value, and so should be reached without a proxy.
///
/// The rules are curl's, plus ports:
/// - entries are separated by commas (blanks around them are ignored);
/// - `*` matches every host;
/// - a name matches itself and its subdomains, ignoring case and a trailing dot: `example.com` and
///   `.example.com` both match `example.com` and `www.example.com`, not `notexample.com`
///   (`*.example.com` is read as `.example.com`);
/// - an IP address matches that address, and `address/bits` (CIDR) the addresses in that range;
///   IPv6 addresses are written with or without brackets (`::1`, `[::1]`, `fd00::/8`); a name
///   never matches an address, nor an address a name: no name is resolved;
/// - an entry may end with `:port` (`[::1]:8080` for IPv6); it then matches only that port.
///   curl ignores such entries; the other rules match whatever the port.
///
/// Entries that cannot be read (a bad port, a bad address) match nothing.
///
/// ```
/// use wsx::proxy::no_proxy_matches;
///
/// let list = "localhost, .corp.example, 10.0.0.0/8, ::1, api.example.com:8443";
/// assert!(no_proxy_matches(list, "git.corp.example", 443));
/// assert!(no_proxy_matches(list, "10.1.2.3", 80));
/// assert!(no_proxy_matches(list, "[::1]", 9001));
/// assert!(no_proxy_matches(list, "api.example.com", 8443));
/// assert!(!no_proxy_matches(list, "api.example.com", 443));
/// assert!(!no_proxy_matches(list, "notcorp.example", 443));
/// assert!(no_proxy_matches("*", "anything", 1));
/// ```
pub fn no_proxy_matches(list: &str, host: &str, port: u16) -> bool {
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let ip = host.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    let name = host.strip_suffix('.').unwrap_or(host);
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if entry == "*" {
            return true;
        }
        let Some((pattern, entry_port)) = split_entry_port(entry) else { continue };
        if entry_port.is_some_and(|p| p != port) {
            continue;
        }
        let matched = match ip {
            Some(ip) => ip_matches(pattern, ip),
            None => name_matches(pattern, name),
        };
        if matched {
            return true;
        }
    }
    false
}

/// Splits `entry` into its host pattern and its port, if it has one; `None` when the port (or
/// the brackets) cannot be read.
fn split_entry_port(entry: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = entry.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        return match after {
            "" => Some((inside, None)),
            _ => Some((inside, Some(after.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match entry.split_once(':') {
        // One colon: a name or IPv4 pattern and a port. More: an IPv6 address.
        Some((pattern, port)) if !port.contains(':') => Some((pattern, Some(port.parse().ok()?))),
        _ => Some((entry, None)),
    }
}

/// `pattern` is an address or `address/bits`.
fn ip_matches(pattern: &str, ip: IpAddr) -> bool {
    let (address, bits) = match pattern.split_once('/') {
        Some((address, bits)) => match bits.parse::<u8>() {
            Ok(bits) => (address, Some(bits)),
            Err(_) => return false,
        },
        None => (pattern, None),
    };
    let Ok(network) = address.parse::<IpAddr>() else { return false };
    match (network.to_canonical(), ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_matches(u32::from(net).into(), u32::from(ip).into(), 32, bits),
        (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_matches(u128::from(net), u128::from(ip), 128, bits),
        _ => false,
    }
}

/// The first `bits` (default: all `width`) of two addresses of `width` bits agree.
fn prefix_matches(network: u128, ip: u128, width: u8, bits: Option<u8>) -> bool {
    let bits = bits.unwrap_or(width);
    if bits > width {
        return false;
    }
    if bits == 0 {
        return true;
    }
    let shift = u32::from(width - bits);
    (network >> shift) == (ip >> shift)
}

/// `pattern` (`example.com`, `.example.com`, `*.example.com`) matches `name` or a subdomain.
fn name_matches(pattern: &str, name: &str) -> bool {
    let pattern = pattern.strip_suffix('.').unwrap_or(pattern);
    let pattern = pattern.strip_prefix("*.").or_else(|| pattern.strip_prefix('.')).unwrap_or(pattern);
    if pattern.is_empty() || name.len() < pattern.len() {
        return false;
    }
    let (head, tail) = name.split_at(name.len() - pattern.len());
    tail.eq_ignore_ascii_case(pattern) && (head.is_empty() || head.ends_with('.'))
}

// ---------------------------------------------------------------------------
// The builder's setting
// ---------------------------------------------------------------------------

/// What [`ClientBuilder`](crate::ClientBuilder) was told about proxies.
#[derive(Clone, Default)]
pub(crate) struct ProxyConfig {
    mode: Mode,
    /// Replaces the environment's `no_proxy`.
    bypass: Option<String>,
}

#[derive(Clone, Default)]
enum Mode {
    /// Read the environment when connecting.
    #[default]
    Environment,
    /// Never a proxy.
    Direct,
    /// This proxy URL (checked when connecting).
    Explicit(String),
}

impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match &self.mode {
            Mode::Environment => "environment".to_owned(),
            Mode::Direct => "none".to_owned(),
            Mode::Explicit(url) => redact(url),
        };
        f.debug_struct("ProxyConfig").field("proxy", &mode).field("bypass", &self.bypass).finish()
    }
}

impl ProxyConfig {
    pub(crate) fn set_proxy(&mut self, url: String) {
        self.mode = Mode::Explicit(url);
    }

    pub(crate) fn set_direct(&mut self) {
        self.mode = Mode::Direct;
    }

    pub(crate) fn set_bypass(&mut self, list: String) {
        self.bypass = Some(list);
    }

    /// The proxy for `scheme://host:port`: its URL and the variable it came from.
    fn choose(
        &self,
        scheme: &str,
        host: &str,
        port: u16,
        env: impl Fn(&str) -> Option<String>,
    ) -> Option<(String, Option<&'static str>)> {
        let bypassed = |list: &str| no_proxy_matches(list, host, port);
        match &self.mode {
            Mode::Direct => None,
            Mode::Explicit(url) => match &self.bypass {
                Some(list) if bypassed(list) => None,
                _ => Some((url.clone(), None)),
            },
            Mode::Environment => {
                let list = self.bypass.clone().or_else(|| first_set(&env, NO_PROXY_VARIABLES).map(|(_, v)| v));
                if list.is_some_and(|list| bypassed(&list)) {
                    return None;
                }
                env_proxy_url(scheme, &env).map(|p| (p.url, Some(p.variable)))
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Connecting through a proxy failed: which proxy, and what went wrong.
///
/// Its message reads `proxy http://alice@127.0.0.1:3128 (from https_proxy): answered HTTP/1.1
/// 407 Proxy Authentication Required (…)`. The proxy's password appears nowhere, not in `Debug`
/// either.
#[derive(Debug, thiserror::Error)]
#[error("proxy {proxy}{}: {failure}", from_variable(.variable))]
pub struct ProxyError {
    proxy: String,
    variable: Option<&'static str>,
    failure: ProxyFailure,
}

fn from_variable(variable: &Option<&'static str>) -> String {
    variable.map(|v| format!(" (from {v})")).unwrap_or_default()
}

impl ProxyError {
    fn new(proxy: String, variable: Option<&'static str>, failure: ProxyFailure) -> Self {
        Self { proxy, variable, failure }
    }

    /// The proxy's URL without its password, e.g. `socks5h://bob@127.0.0.1:1080`.
    pub fn proxy(&self) -> &str {
        &self.proxy
    }

    /// The environment variable the proxy was read from, or `None` for one given to
    /// [`ClientBuilder::proxy`](crate::ClientBuilder::proxy).
    pub fn variable(&self) -> Option<&'static str> {
        self.variable
    }

    /// What went wrong.
    pub fn failure(&self) -> &ProxyFailure {
        &self.failure
    }

    /// Who or what is to blame (see [`Error::kind`]).
    pub fn kind(&self) -> ErrorKind {
        match &self.failure {
            ProxyFailure::InvalidUrl(_) => ErrorKind::Usage,
            ProxyFailure::Connect(_) | ProxyFailure::Resolve(_) | ProxyFailure::Io(_) => ErrorKind::Io,
            ProxyFailure::Refused { .. }
            | ProxyFailure::SocksRefused { .. }
            | ProxyFailure::SocksAuth(_)
            | ProxyFailure::Malformed(_) => ErrorKind::Peer,
            ProxyFailure::HeadTooLarge { .. } | ProxyFailure::TooManyHeaders { .. } => ErrorKind::Limit,
            ProxyFailure::Timeout { .. } => ErrorKind::Timeout,
        }
    }
}

impl From<ProxyError> for Error {
    fn from(e: ProxyError) -> Self {
        Error::Proxy(Box::new(e))
    }
}

/// What went wrong with a proxy (see [`ProxyError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyFailure {
    /// The proxy URL cannot be used: its syntax, an unsupported scheme (`https://`, `socks4://`),
    /// or credentials SOCKS5 cannot carry. Nothing was sent.
    #[error("invalid proxy URL: {0}")]
    InvalidUrl(String),
    /// The TCP connection to the proxy failed (refused, unreachable, its name unknown).
    #[error("cannot connect to the proxy: {0}")]
    Connect(#[source] io::Error),
    /// `socks5://` resolves the server's name on this machine, and that failed (`socks5h://`
    /// would let the proxy resolve it).
    #[error("cannot resolve the server's name locally for socks5:// (socks5h:// lets the proxy resolve it): {0}")]
    Resolve(#[source] io::Error),
    /// The HTTP proxy refused the `CONNECT` tunnel with a status other than 2xx.
    #[error("answered {status_line}{hint}")]
    Refused {
        /// The status code, e.g. 407.
        status: u16,
        /// The status line as received, e.g. `HTTP/1.1 407 Proxy Authentication Required`
        /// (control characters escaped, the reason shortened).
        status_line: String,
        /// What the status usually means here, starting with `; `, or empty.
        hint: &'static str,
    },
    /// The SOCKS5 proxy refused the connection to the server with this reply code (RFC 1928).
    #[error("SOCKS5 reply {reply}: {meaning}")]
    SocksRefused {
        /// The reply code: 1 general failure, 2 not allowed by the rules, 3 network unreachable,
        /// 4 host unreachable, 5 connection refused, 6 TTL expired, 7 command not supported, 8
        /// address type not supported; 0 if the proxy sent a code outside that range.
        reply: u8,
        /// The code's meaning.
        meaning: &'static str,
    },
    /// SOCKS5 authentication failed: the proxy refused the user name and password, wants
    /// credentials the URL does not have, or accepts no method we offered.
    #[error("SOCKS5 authentication: {0}")]
    SocksAuth(String),
    /// The proxy's answer broke its protocol, or it closed the connection before answering.
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// The proxy's answer to `CONNECT` did not end within
    /// [`HandshakeLimits::max_head_bytes`].
    #[error("its answer to CONNECT is larger than the limit of {limit} bytes")]
    HeadTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The proxy's answer to `CONNECT` has more than [`HandshakeLimits::max_headers`] header
    /// lines.
    #[error("its answer to CONNECT has more than the limit of {limit} header lines")]
    TooManyHeaders {
        /// The limit, in header lines.
        limit: usize,
    },
    /// The handshake timeout passed while connecting to the proxy or waiting for its answer.
    #[error("{during}: nothing within the handshake timeout of {timeout:?}")]
    Timeout {
        /// The handshake timeout.
        timeout: Duration,
        /// The step that was waiting, e.g. `waiting for the answer to CONNECT`.
        during: &'static str,
    },
    /// Reading from or writing to the proxy failed.
    #[error("I/O error: {0}")]
    Io(#[source] io::Error),
}

// ---------------------------------------------------------------------------
// Proxy URLs
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Http,
    Socks5 {
        /// `socks5h://`: the proxy resolves the server's name.
        remote_dns: bool,
    },
}

/// A proxy URL, read.
#[derive(Clone, PartialEq, Eq)]
struct ProxyUrl {
    kind: Kind,
    /// Without brackets for IPv6.
    host: String,
    port: u16,
    /// Percent-decoded.
    user: Option<String>,
    /// Percent-decoded.
    password: Option<String>,
    /// `scheme://[user@]host:port`, for messages.
    shown: String,
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

fn parse_proxy_url(raw: &str) -> Result<ProxyUrl, ProxyFailure> {
    let invalid = |why: &str| ProxyFailure::InvalidUrl(why.to_owned());
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(invalid("empty"));
    }
    let full = if raw.contains("://") { raw.to_owned() } else { format!("http://{raw}") };
    let url = url::Url::parse(&full).map_err(|e| ProxyFailure::InvalidUrl(e.to_string()))?;
    let kind = match url.scheme() {
        "http" => Kind::Http,
        "socks5" => Kind::Socks5 { remote_dns: false },
        "socks5h" => Kind::Socks5 { remote_dns: true },
        "https" => {
            return Err(invalid(
                "https:// proxies (TLS to the proxy) are not supported; use http:// (TLS to the \
                 server still runs end to end inside the tunnel)",
            ))
        }
        "socks4" | "socks4a" => return Err(invalid("SOCKS4 is not supported; use socks5:// or socks5h://")),
        other => {
            return Err(ProxyFailure::InvalidUrl(format!(
                "unsupported scheme {other}://; use http://, socks5:// or socks5h://"
            )))
        }
    };
    let host = match url.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_owned(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        _ => return Err(invalid("no host")),
    };
    let port = match url.port() {
        Some(port) => port,
        // `url` drops a port that is the scheme's default (80 for http://): look for it.
        None if kind == Kind::Http && has_explicit_port_80(&full) => 80,
        None => DEFAULT_PROXY_PORT,
    };
    if port == 0 {
        return Err(invalid("port 0"));
    }
    let decode = |s: &str, what: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| ProxyFailure::InvalidUrl(format!("the {what} is not UTF-8 once percent-decoded")))
    };
    let user = match url.username() {
        "" => None,
        u => Some(decode(u, "user name")?),
    };
    let password = url.password().map(|p| decode(p, "password")).transpose()?;
    let scheme = url.scheme();
    let shown_host = if host.contains(':') { format!("[{host}]") } else { host.clone() };
    let shown_user = match url.username() {
        "" if password.is_some() => "@".to_owned(),
        "" => String::new(),
        u => format!("{u}@"),
    };
    let shown = format!("{scheme}://{shown_user}{shown_host}:{port}");
    Ok(ProxyUrl { kind, host, port, user, password, shown })
}

/// Whether the authority of `url` (which has a scheme) ends with the port 80, written out.
fn has_explicit_port_80(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let after_host = host_port.rsplit_once(']').map_or(host_port, |(_, after)| after);
    after_host.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>() == Ok(80))
}

/// A proxy URL for messages when it could not be read: any user information is replaced by
/// `***`, control characters are escaped, and it is cut short.
fn redact(raw: &str) -> String {
    if let Ok(url) = parse_proxy_url(raw) {
        return url.shown;
    }
    let raw = raw.trim();
    let (scheme, rest) = raw.split_once("://").map_or(("", raw), |(s, r)| (s, r));
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_owned(),
    };
    let shown = if scheme.is_empty() { format!("{authority}{tail}") } else { format!("{scheme}://{authority}{tail}") };
    let mut out: String = shown.chars().take(200).flat_map(char::escape_default).collect();
    if shown.chars().count() > 200 {
        out.push('…');
    }
    out
}

// ---------------------------------------------------------------------------
// Connecting
// ---------------------------------------------------------------------------

/// Opens the TCP connection for `scheme://host:port` (`host` without brackets): directly, or
/// through the proxy `config` and the environment choose. Proxy steps fail with
/// [`Error::Proxy`], naming the step, once `deadline` passes (`timeout` is for the message).
pub(crate) async fn connect(
    config: &ProxyConfig,
    scheme: &str,
    host: &str,
    port: u16,
    limits: &HandshakeLimits,
    deadline: Instant,
    timeout: Duration,
) -> Result<TcpStream, Error> {
    let Some((url, variable)) = config.choose(scheme, host, port, |name| std::env::var(name).ok()) else {
        let stream = TcpStream::connect((host, port)).await?;
        stream.set_nodelay(true)?;
        return Ok(stream);
    };
    let proxy = parse_proxy_url(&url).map_err(|f| ProxyError::new(redact(&url), variable, f))?;
    tracing::debug!(proxy = %proxy.shown, variable, "connecting through a proxy");
    let steps = Steps { deadline, timeout };
    tunnel(&proxy, host, port, limits, steps)
        .await
        .map_err(|f| ProxyError::new(proxy.shown.clone(), variable, f).into())
}

/// Runs each step of the tunnel's setup against the one deadline.
#[derive(Clone, Copy)]
struct Steps {
    deadline: Instant,
    timeout: Duration,
}

impl Steps {
    async fn run<T>(
        self,
        during: &'static str,
        step: impl Future<Output = Result<T, ProxyFailure>>,
    ) -> Result<T, ProxyFailure> {
        match tokio::time::timeout_at(self.deadline, step).await {
            Ok(result) => result,
            Err(_) => Err(ProxyFailure::Timeout { timeout: self.timeout, during }),
        }
    }
}

async fn tunnel(
    proxy: &ProxyUrl,
    host: &str,
    port: u16,
    limits: &HandshakeLimits,
    steps: Steps,
) -> Result<TcpStream, ProxyFailure> {
    let target = match proxy.kind {
        Kind::Socks5 { remote_dns } => {
            Some(steps.run("resolving the server's name", socks_target(host, port, remote_dns)).await?)
        }
        Kind::Http => None,
    };
    let connecting = async {
        let stream = TcpStream::connect((proxy.host.as_str(), proxy.port)).await.map_err(ProxyFailure::Connect)?;
        stream.set_nodelay(true).map_err(ProxyFailure::Io)?;
        Ok(stream)
    };
    let mut stream = steps.run("connecting to the proxy", connecting).await?;
    match target {
        None => {
            steps
                .run("waiting for the answer to CONNECT", http_connect(&mut stream, proxy, host, port, limits))
                .await?;
            Ok(stream)
        }
        Some(target) => steps.run("waiting for the SOCKS5 handshake", socks5_connect(stream, proxy, target)).await,
    }
}

// ---------------------------------------------------------------------------
// HTTP CONNECT
// ---------------------------------------------------------------------------

/// Asks for a tunnel to `host:port` and reads the answer, exactly up to its end.
async fn http_connect(
    stream: &mut TcpStream,
    proxy: &ProxyUrl,
    host: &str,
    port: u16,
    limits: &HandshakeLimits,
) -> Result<(), ProxyFailure> {
    stream.write_all(connect_request(proxy, host, port).as_bytes()).await.map_err(ProxyFailure::Io)?;
    let head = read_response_head(stream, limits).await?;
    check_connect_response(&head, limits, proxy.user.is_some())
}

/// `CONNECT host:port`, with `Proxy-Authorization: Basic` when the URL has a user name.
fn connect_request(proxy: &ProxyUrl, host: &str, port: u16) -> String {
    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(user) = &proxy.user {
        let credentials = format!("{user}:{}", proxy.password.as_deref().unwrap_or(""));
        request.push_str("Proxy-Authorization: Basic ");
        request.push_str(&STANDARD.encode(credentials));
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request
}

/// Reads an HTTP response head of at most `limits.max_head_bytes`, and not one byte more: it
/// peeks at what has arrived, then consumes exactly what belongs to the head. The bytes after
/// the head stay in the socket for whoever reads next (the tunnel's first bytes).
async fn read_response_head(stream: &mut TcpStream, limits: &HandshakeLimits) -> Result<Vec<u8>, ProxyFailure> {
    let mut head = Vec::new();
    loop {
        let room = limits.max_head_bytes.saturating_sub(head.len());
        if room == 0 {
            return Err(ProxyFailure::HeadTooLarge { limit: limits.max_head_bytes });
        }
        let start = head.len();
        head.resize(start + room.min(4096), 0);
        let n = stream.peek(&mut head[start..]).await.map_err(ProxyFailure::Io)?;
        head.truncate(start + n);
        if n == 0 {
            let what = if start == 0 {
                "closed the connection without answering"
            } else {
                "closed the connection in the middle of its answer"
            };
            return Err(ProxyFailure::Malformed(what.to_owned()));
        }
        let end = head_end(&head, start);
        let take = end.unwrap_or(head.len()) - start;
        // These bytes were just peeked: reading them does not wait.
        stream.read_exact(&mut head[start..start + take]).await.map_err(ProxyFailure::Io)?;
        if let Some(end) = end {
            head.truncate(end);
            return Ok(head);
        }
    }
}

/// Where the head in `buf` ends (after its empty line, `\r\n` or a bare `\n`), looking only at
/// bytes from `new` on (and the two before, for an end split across reads).
fn head_end(buf: &[u8], new: usize) -> Option<usize> {
    let from = new.saturating_sub(2);
    (from..buf.len()).find_map(|i| {
        if buf[i] != b'\n' {
            return None;
        }
        match (buf.get(i + 1), buf.get(i + 2)) {
            (Some(b'\n'), _) => Some(i + 2),
            (Some(b'\r'), Some(b'\n')) => Some(i + 3),
            _ => None,
        }
    })
}

/// Accepts a 2xx answer to `CONNECT`; anything else is a [`ProxyFailure`].
fn check_connect_response(head: &[u8], limits: &HandshakeLimits, sent_credentials: bool) -> Result<(), ProxyFailure> {
    let mut storage = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut response = httparse::Response::new(&mut storage);
    match response.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(ProxyFailure::Malformed("incomplete HTTP head".to_owned())),
        Err(httparse::Error::TooManyHeaders) => return Err(ProxyFailure::TooManyHeaders { limit: limits.max_headers }),
        Err(e) => return Err(ProxyFailure::Malformed(format!("not an HTTP response: {e}"))),
    }
    let status = response.code.ok_or_else(|| ProxyFailure::Malformed("no status code".to_owned()))?;
    if (200..300).contains(&status) {
        return Ok(());
    }
    let reason = response.reason.unwrap_or("");
    let mut reason_shown: String = reason.chars().take(MAX_REASON_CHARS).flat_map(char::escape_default).collect();
    if reason.chars().count() > MAX_REASON_CHARS {
        reason_shown.push('…');
    }
    let version = response.version.unwrap_or(1);
    let status_line = format!("HTTP/1.{version} {status} {reason_shown}").trim_end().to_owned();
    let hint = match status {
        // 401 is not what RFC 9110 has proxies send, but tinyproxy answers wrong credentials so.
        401 | 407 => {
            let schemes: Vec<String> = response
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("proxy-authenticate"))
                .filter_map(|h| std::str::from_utf8(h.value).ok())
                .filter_map(|v| v.split_whitespace().next().map(|s| s.to_ascii_lowercase()))
                .collect();
            if !schemes.is_empty() && !schemes.iter().any(|s| s == "basic") {
                "; it asks for an authentication scheme other than Basic, the only one wsx speaks"
            } else if sent_credentials {
                "; it refused the user name and password of the proxy URL"
            } else {
                "; it wants a user name and password: put them in the proxy URL, http://user:password@host:port"
            }
        }
        403 => "; the proxy does not allow a tunnel to this host and port",
        500..=599 => "; the proxy could not reach the server, or failed",
        _ => "",
    };
    Err(ProxyFailure::Refused { status, status_line, hint })
}

// ---------------------------------------------------------------------------
// SOCKS5
// ---------------------------------------------------------------------------

/// The address the SOCKS5 proxy gets: the name for `socks5h://`, else an address resolved here.
async fn socks_target(host: &str, port: u16, remote_dns: bool) -> Result<TargetAddr<'static>, ProxyFailure> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(TargetAddr::Ip(SocketAddr::new(ip, port)));
    }
    if remote_dns {
        if host.len() > 255 {
            return Err(ProxyFailure::InvalidUrl("SOCKS5 carries names of at most 255 bytes".to_owned()));
        }
        return Ok(TargetAddr::Domain(host.to_owned().into(), port));
    }
    let mut addresses = tokio::net::lookup_host((host, port)).await.map_err(ProxyFailure::Resolve)?;
    let address =
        addresses.next().ok_or_else(|| ProxyFailure::Resolve(io::Error::new(io::ErrorKind::NotFound, "no address")))?;
    Ok(TargetAddr::Ip(address))
}

async fn socks5_connect(
    stream: TcpStream,
    proxy: &ProxyUrl,
    target: TargetAddr<'static>,
) -> Result<TcpStream, ProxyFailure> {
    let connected = match &proxy.user {
        Some(user) => {
            let password = proxy.password.as_deref().unwrap_or("");
            Socks5Stream::connect_with_password_and_socket(stream, target, user, password).await
        }
        None => Socks5Stream::connect_with_socket(stream, target).await,
    };
    connected.map(Socks5Stream::into_inner).map_err(|e| socks_failure(e, proxy.user.is_some()))
}

fn socks_failure(e: tokio_socks::Error, sent_credentials: bool) -> ProxyFailure {
    use tokio_socks::Error as E;
    let refused = |reply, meaning| ProxyFailure::SocksRefused { reply, meaning };
    let auth = |s: &str| ProxyFailure::SocksAuth(s.to_owned());
    match e {
        E::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            ProxyFailure::Malformed("closed the connection in the middle of the SOCKS5 handshake".to_owned())
        }
        E::Io(e) => ProxyFailure::Io(e),
        E::GeneralSocksServerFailure => refused(1, "general SOCKS server failure"),
        E::ConnectionNotAllowedByRuleset => refused(2, "connection not allowed by the proxy's rules"),
        E::NetworkUnreachable => refused(3, "network unreachable"),
        E::HostUnreachable => refused(4, "host unreachable"),
        E::ConnectionRefused => refused(5, "connection refused by the server"),
        E::TtlExpired => refused(6, "TTL expired"),
        E::CommandNotSupported => refused(7, "command not supported"),
        E::AddressTypeNotSupported => refused(8, "address type not supported"),
        // tokio-socks reports a reply code above 8 as an unknown authentication method.
        E::UnknownAuthMethod => refused(0, "unknown reply or authentication method"),
        E::PasswordAuthFailure(status) => {
            ProxyFailure::SocksAuth(format!("the proxy refused the user name and password (status {status})"))
        }
        E::NoAcceptableAuthMethods if sent_credentials => {
            auth("the proxy accepts neither user name/password nor no authentication")
        }
        E::NoAcceptableAuthMethods => auth(
            "the proxy accepts no connection without authentication: put a user name and password in the \
             proxy URL, socks5h://user:password@host:port",
        ),
        E::AuthorizationRequired => auth("the proxy asks for a user name and password, and the proxy URL has none"),
        E::InvalidAuthValues(why) => ProxyFailure::InvalidUrl(format!("SOCKS5 credentials: {why}")),
        E::InvalidTargetAddress(why) => ProxyFailure::InvalidUrl(format!("SOCKS5 target: {why}")),
        other => ProxyFailure::Malformed(format!("SOCKS5: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    }

    fn chosen(scheme: &str, vars: &'static [(&'static str, &'static str)]) -> Option<(&'static str, String)> {
        proxy_from_env(scheme, "example.com", 443, env_of(vars)).map(|p| (p.variable, p.url))
    }

    #[test]
    fn ws_reads_ws_proxy_then_https_proxy_then_http_proxy_then_all_proxy() {
        let all = &[
            ("ws_proxy", "a"),
            ("WS_PROXY", "b"),
            ("https_proxy", "c"),
            ("HTTPS_PROXY", "d"),
            ("http_proxy", "e"),
            ("HTTP_PROXY", "f"),
            ("all_proxy", "g"),
            ("ALL_PROXY", "h"),
        ];
        assert_eq!(chosen("ws", all), Some(("ws_proxy", "a".into())));
        assert_eq!(chosen("ws", &all[1..]), Some(("WS_PROXY", "b".into())));
        assert_eq!(chosen("ws", &all[2..]), Some(("https_proxy", "c".into())));
        assert_eq!(chosen("ws", &all[3..]), Some(("HTTPS_PROXY", "d".into())));
        assert_eq!(chosen("ws", &all[4..]), Some(("http_proxy", "e".into())));
        // HTTP_PROXY is never read.
        assert_eq!(chosen("ws", &all[5..]), Some(("all_proxy", "g".into())));
        assert_eq!(chosen("ws", &all[7..]), Some(("ALL_PROXY", "h".into())));
        assert_eq!(chosen("ws", &[("HTTP_PROXY", "f")]), None);
        // http_proxy is for ws:// only.
        assert_eq!(chosen("wss", &[("http_proxy", "e")]), None);
    }

    #[test]
    fn wss_reads_wss_proxy_then_https_proxy_then_all_proxy() {
        let all = &[
            ("wss_proxy", "a"),
            ("WSS_PROXY", "b"),
            ("https_proxy", "c"),
            ("HTTPS_PROXY", "d"),
            ("http_proxy", "e"),
            ("all_proxy", "f"),
            ("ALL_PROXY", "g"),
        ];
        assert_eq!(chosen("wss", all), Some(("wss_proxy", "a".into())));
        assert_eq!(chosen("wss", &all[1..]), Some(("WSS_PROXY", "b".into())));
        assert_eq!(chosen("wss", &all[2..]), Some(("https_proxy", "c".into())));
        assert_eq!(chosen("wss", &all[3..]), Some(("HTTPS_PROXY", "d".into())));
        // http_proxy is for ws:// only.
        assert_eq!(chosen("WSS", &all[4..]), Some(("all_proxy", "f".into())));
        assert_eq!(chosen("wss", &all[6..]), Some(("ALL_PROXY", "g".into())));
        assert_eq!(chosen("wss", &[]), None);
        assert_eq!(chosen("http", all), None, "only ws and wss");
    }

    #[test]
    fn empty_variables_count_as_unset() {
        assert_eq!(chosen("ws", &[("ws_proxy", ""), ("all_proxy", "f")]), Some(("all_proxy", "f".into())));
        assert_eq!(chosen("wss", &[("https_proxy", "  "), ("HTTPS_PROXY", "d")]), Some(("HTTPS_PROXY", "d".into())));
    }

    #[test]
    fn no_proxy_lower_case_wins_and_bypasses() {
        let vars = &[("all_proxy", "p"), ("no_proxy", "other.org"), ("NO_PROXY", "example.com")];
        assert_eq!(chosen("ws", vars), Some(("all_proxy", "p".into())), "NO_PROXY is not read when no_proxy is set");
        let vars = &[("all_proxy", "p"), ("no_proxy", ""), ("NO_PROXY", "example.com")];
        assert_eq!(chosen("ws", vars), None, "an empty no_proxy counts as unset");
        let vars = &[("all_proxy", "p"), ("no_proxy", "*")];
        assert_eq!(chosen("wss", vars), None);
    }

    #[test]
    fn no_proxy_names() {
        for list in ["example.com", ".example.com", "*.example.com", "EXAMPLE.com.", "x, example.com ,y"] {
            assert!(no_proxy_matches(list, "example.com", 80), "{list}");
            assert!(no_proxy_matches(list, "www.Example.COM", 80), "{list}");
            assert!(no_proxy_matches(list, "a.b.example.com.", 80), "{list}");
            assert!(!no_proxy_matches(list, "notexample.com", 80), "{list}");
            assert!(!no_proxy_matches(list, "example.com.org", 80), "{list}");
            assert!(!no_proxy_matches(list, "com", 80), "{list}");
        }
        assert!(!no_proxy_matches("", "example.com", 80));
        assert!(!no_proxy_matches(" , ,", "example.com", 80));
        assert!(!no_proxy_matches(".", "example.com", 80));
        assert!(no_proxy_matches("*", "example.com", 80));
        assert!(no_proxy_matches("a.org,*", "10.0.0.1", 80));
        assert!(!no_proxy_matches("*.", "example.com", 80));
    }

    #[test]
    fn no_proxy_addresses_and_ranges() {
        let list = "192.168.0.0/16, 10.1.2.3, fd00::/8, ::1, [2001:db8::1]";
        assert!(no_proxy_matches(list, "192.168.7.9", 80));
        assert!(!no_proxy_matches(list, "192.169.0.1", 80));
        assert!(no_proxy_matches(list, "10.1.2.3", 80));
        assert!(!no_proxy_matches(list, "10.1.2.4", 80));
        assert!(no_proxy_matches(list, "[fd12::34]", 80));
        assert!(no_proxy_matches(list, "fd12::34", 80));
        assert!(!no_proxy_matches(list, "fe80::1", 80));
        assert!(no_proxy_matches(list, "[::1]", 80));
        assert!(no_proxy_matches(list, "2001:db8::1", 80));
        // An IPv4-mapped IPv6 address is its IPv4 address.
        assert!(no_proxy_matches(list, "::ffff:192.168.1.1", 80));
        // No name resolution: names and addresses never match each other.
        assert!(!no_proxy_matches("localhost", "127.0.0.1", 80));
        assert!(!no_proxy_matches("127.0.0.1", "localhost", 80));
        // /0 matches the whole family; a bad prefix length matches nothing.
        assert!(no_proxy_matches("0.0.0.0/0", "8.8.8.8", 80));
        assert!(!no_proxy_matches("0.0.0.0/0", "::2", 80));
        assert!(!no_proxy_matches("10.0.0.0/33, 10.0.0.0/x, 10.0.0.0/", "10.0.0.1", 80));
        assert!(no_proxy_matches("10.0.0.0/8", "10.255.0.1", 80));
        assert!(!no_proxy_matches("10.0.0.0/8", "11.0.0.1", 80));
    }

    #[test]
    fn no_proxy_ports() {
        let list = "example.com:8443, 10.0.0.0/8:80, [::1]:9001, bad.org:http, [::2]x";
        assert!(no_proxy_matches(list, "www.example.com", 8443));
        assert!(!no_proxy_matches(list, "www.example.com", 443));
        assert!(no_proxy_matches(list, "10.2.3.4", 80));
        assert!(!no_proxy_matches(list, "10.2.3.4", 81));
        assert!(no_proxy_matches(list, "::1", 9001));
        assert!(!no_proxy_matches(list, "::1", 9002));
        assert!(!no_proxy_matches(list, "bad.org", 80), "an unreadable port matches nothing");
        assert!(!no_proxy_matches(list, "::2", 80));
    }

    #[test]
    fn explicit_proxy_ignores_the_environment_except_its_bypass_list() {
        let env = env_of(&[("ws_proxy", "http://env:1"), ("no_proxy", "example.com")]);
        let mut config = ProxyConfig::default();
        assert_eq!(config.choose("ws", "example.com", 80, &env), None, "environment: no_proxy applies");
        assert_eq!(config.choose("ws", "other.org", 80, &env), Some(("http://env:1".into(), Some("ws_proxy"))));
        config.set_bypass("other.org".into());
        assert_eq!(config.choose("ws", "other.org", 80, &env), None, "the bypass list replaces no_proxy");
        assert_eq!(
            config.choose("ws", "example.com", 80, &env),
            Some(("http://env:1".into(), Some("ws_proxy"))),
            "and no_proxy is not read"
        );
        config.set_proxy("socks5h://mine:2".into());
        assert_eq!(config.choose("ws", "other.org", 80, &env), None);
        assert_eq!(config.choose("ws", "example.com", 80, &env), Some(("socks5h://mine:2".into(), None)));
        config.set_direct();
        assert_eq!(config.choose("ws", "example.com", 80, &env), None);
    }

    #[test]
    fn proxy_urls() {
        let url = parse_proxy_url("http://alice:p%40ss%3Aword@proxy.example:3128/").unwrap();
        assert_eq!(url.kind, Kind::Http);
        assert_eq!((url.host.as_str(), url.port), ("proxy.example", 3128));
        assert_eq!(url.user.as_deref(), Some("alice"));
        assert_eq!(url.password.as_deref(), Some("p@ss:word"));
        assert_eq!(url.shown, "http://alice@proxy.example:3128");

        let url = parse_proxy_url("127.0.0.1:8888").unwrap();
        assert_eq!((url.kind, url.host.as_str(), url.port), (Kind::Http, "127.0.0.1", 8888));
        assert_eq!(url.shown, "http://127.0.0.1:8888");

        // curl's default port, for every kind; an explicit :80 stays.
        assert_eq!(parse_proxy_url("http://proxy").unwrap().port, 1080);
        assert_eq!(parse_proxy_url("proxy").unwrap().port, 1080);
        assert_eq!(parse_proxy_url("http://proxy:80").unwrap().port, 80);
        assert_eq!(parse_proxy_url("http://u:p@[::1]:80/x").unwrap().port, 80);
        assert_eq!(parse_proxy_url("socks5://proxy").unwrap().port, 1080);

        let url = parse_proxy_url("socks5h://bob:se%3Acr%40t@[::1]:1081").unwrap();
        assert_eq!(url.kind, Kind::Socks5 { remote_dns: true });
        assert_eq!((url.host.as_str(), url.port), ("::1", 1081));
        assert_eq!(url.password.as_deref(), Some("se:cr@t"));
        assert_eq!(url.shown, "socks5h://bob@[::1]:1081");
        assert_eq!(parse_proxy_url("SOCKS5://h:1").unwrap().kind, Kind::Socks5 { remote_dns: false });
        assert_eq!(parse_proxy_url("socks5://:pw@h:1").unwrap().shown, "socks5://@h:1");
    }

    #[test]
    fn invalid_proxy_urls_say_why() {
        for (url, why) in [
            ("", "empty"),
            ("https://proxy:443", "https:// proxies"),
            ("socks4://proxy:1080", "SOCKS4"),
            ("ftp://proxy:21", "unsupported scheme ftp://"),
            ("http://proxy:99999", "invalid port"),
            ("http://proxy:0", "port 0"),
            ("http://[::1", "invalid IPv6"),
            ("socks5://", "no host"),
            ("http://u:%FF@proxy:1", "password is not UTF-8"),
        ] {
            match parse_proxy_url(url) {
                Err(ProxyFailure::InvalidUrl(message)) => assert!(message.contains(why), "{url}: {message}"),
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact("http://alice:secret@proxy:3128"), "http://alice@proxy:3128");
        assert_eq!(redact("https://alice:secret@proxy:3128/x"), "https://***@proxy:3128/x");
        assert_eq!(redact("alice:secret@proxy:99999"), "***@proxy:99999");
        assert_eq!(redact("ftp://a:b@c@d/\x1b[31m"), "ftp://***@d/\\u{1b}[31m");
        let mut config = ProxyConfig::default();
        config.set_proxy("socks5://bob:hunter2@h:1".into());
        let shown = format!("{config:?}");
        assert!(shown.contains("socks5://bob@h:1") && !shown.contains("hunter2"), "{shown}");
        let env = EnvProxy { variable: "all_proxy", url: "http://u:hunter2@h:1".into() };
        assert!(!format!("{env:?}").contains("hunter2"));
        let error =
            ProxyError::new(redact("http://u:hunter2@h"), Some("all_proxy"), ProxyFailure::Malformed("x".into()));
        assert_eq!(error.to_string(), "proxy http://u@h:1080 (from all_proxy): malformed answer: x");
    }

    #[test]
    fn connect_request_carries_basic_credentials() {
        let proxy = parse_proxy_url("http://alice:p%40ss@proxy:3128").unwrap();
        assert_eq!(
            connect_request(&proxy, "example.com", 443),
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\
             Proxy-Authorization: Basic YWxpY2U6cEBzcw==\r\n\r\n"
        );
        let proxy = parse_proxy_url("http://proxy:3128").unwrap();
        assert_eq!(connect_request(&proxy, "::1", 80), "CONNECT [::1]:80 HTTP/1.1\r\nHost: [::1]:80\r\n\r\n");
    }

    #[test]
    fn connect_answers() {
        let limits = HandshakeLimits::default();
        let check = |head: &str, creds| check_connect_response(head.as_bytes(), &limits, creds);
        assert!(check("HTTP/1.1 200 Connection established\r\n\r\n", false).is_ok());
        assert!(check("HTTP/1.0 204 OK\nProxy-agent: x\n\n", false).is_ok());
        let refused = |head: &str, creds| match check(head, creds) {
            Err(e @ ProxyFailure::Refused { .. }) => e.to_string(),
            other => panic!("{other:?}"),
        };
        let basic = "HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\n\r\n";
        assert_eq!(
            refused(basic, false),
            "answered HTTP/1.0 407 Proxy Authentication Required; it wants a user name and password: put them \
             in the proxy URL, http://user:password@host:port"
        );
        assert!(refused(basic, true).ends_with("; it refused the user name and password of the proxy URL"));
        let tinyproxy_wrong_password = "HTTP/1.0 401 Unauthorized\r\n\r\n";
        assert!(refused(tinyproxy_wrong_password, true)
            .ends_with("; it refused the user name and password of the proxy URL"));
        let ntlm = "HTTP/1.1 407 Auth\r\nProxy-Authenticate: NTLM\r\n\r\n";
        assert!(refused(ntlm, true).contains("other than Basic"));
        assert!(refused("HTTP/1.1 403 Access violation\r\n\r\n", false)
            .contains("403 Access violation; the proxy does not allow"));
        assert!(refused("HTTP/1.1 502 Bad Gateway\r\n\r\n", false).contains("could not reach"));
        assert_eq!(refused("HTTP/1.1 301 \r\n\r\n", false), "answered HTTP/1.1 301");
        let long = format!("HTTP/1.1 400 {}\r\n\r\n", "x".repeat(1000));
        assert!(refused(&long, false).len() < 300);
        assert!(matches!(check("SSH-2.0-OpenSSH\r\n\r\n", false), Err(ProxyFailure::Malformed(_))));
        let limits = HandshakeLimits { max_headers: 2, ..HandshakeLimits::default() };
        let many = "HTTP/1.1 200 OK\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n";
        assert!(matches!(
            check_connect_response(many.as_bytes(), &limits, false),
            Err(ProxyFailure::TooManyHeaders { limit: 2 })
        ));
    }

    #[test]
    fn head_end_finds_the_empty_line_across_reads() {
        let head = b"HTTP/1.1 200 OK\r\nA: b\r\n\r\ntunnel";
        assert_eq!(head_end(head, 0), Some(head.len() - 6));
        for split in 0..head.len() - 6 {
            assert_eq!(head_end(head, split), Some(head.len() - 6), "split at {split}");
        }
        assert_eq!(head_end(b"HTTP/1.1 200 OK\n\nx", 0), Some(17));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n", 0), None);
    }

    /// Awaits `fut` for at most 10 s: a test that would hang fails instead.
    async fn within<F: Future>(fut: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), fut).await.expect("the test hung")
    }

    /// A socket pair on loopback: (our end, the proxy's end).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (theirs, _) = listener.accept().await.unwrap();
        (ours, theirs)
    }

    #[tokio::test]
    async fn the_head_reader_leaves_the_tunnel_bytes_in_the_socket() {
        let (mut ours, mut theirs) = pair().await;
        let limits = HandshakeLimits::default();
        // The head in pieces, the last one together with the tunnel's first bytes.
        let writer = tokio::spawn(async move {
            for piece in [&b"HTTP/1.1 200 Connection est"[..], b"ablished\r\nProxy-agent: x\r", b"\n\r\nfirst bytes"] {
                theirs.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            theirs
        });
        let head = within(read_response_head(&mut ours, &limits)).await.unwrap();
        assert_eq!(head, b"HTTP/1.1 200 Connection established\r\nProxy-agent: x\r\n\r\n");
        let _theirs = within(writer).await.unwrap();
        let mut rest = [0; 11];
        within(ours.read_exact(&mut rest)).await.expect("the tunnel's first bytes are still there");
        assert_eq!(&rest, b"first bytes");
    }

    #[tokio::test]
    async fn the_head_reader_stops_at_the_limit() {
        let (mut ours, mut theirs) = pair().await;
        let limits = HandshakeLimits { max_head_bytes: 1000, ..HandshakeLimits::default() };
        let writer = tokio::spawn(async move {
            theirs.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
            // More header than the limit, never ending; the write stops when the reader is gone.
            let line = format!("X-Filler: {}\r\n", "a".repeat(100));
            while theirs.write_all(line.as_bytes()).await.is_ok() {}
        });
        let result = within(read_response_head(&mut ours, &limits)).await;
        assert!(matches!(result, Err(ProxyFailure::HeadTooLarge { limit: 1000 })), "{result:?}");
        drop(ours);
        within(writer).await.unwrap();
    }

    #[tokio::test]
    async fn the_head_reader_reports_a_close() {
        let (mut ours, theirs) = pair().await;
        drop(theirs);
        let result = within(read_response_head(&mut ours, &HandshakeLimits::default())).await;
        assert!(matches!(&result, Err(ProxyFailure::Malformed(m)) if m.contains("without answering")), "{result:?}");
    }

    #[tokio::test]
    async fn socks5_resolves_locally_and_socks5h_leaves_the_name_to_the_proxy() {
        let local = socks_target("localhost", 80, false).await.unwrap();
        assert!(matches!(local, TargetAddr::Ip(a) if a.ip().is_loopback() && a.port() == 80), "{local:?}");
        let remote = socks_target("localhost", 80, true).await.unwrap();
        assert!(matches!(&remote, TargetAddr::Domain(name, 80) if name == "localhost"), "{remote:?}");
        let ip = socks_target("::1", 81, true).await.unwrap();
        assert!(matches!(ip, TargetAddr::Ip(a) if a == "[::1]:81".parse().unwrap()));
        let long = "a".repeat(256);
        assert!(matches!(socks_target(&long, 80, true).await, Err(ProxyFailure::InvalidUrl(_))));
    }
}
