//! The WebSocket opening handshake (RFC 6455 §1.3, §4), without any I/O.
//!
//! Both roles work on byte buffers: the caller moves bytes between the
//! network and a [`BytesMut`], and this module parses, validates and
//! serializes HTTP/1.1 heads. Nothing here reads a clock or a random source;
//! the client key's randomness is supplied by the caller.
//!
//! # Client role
//!
//! 1. [`ClientHandshake::new`] builds the `GET` upgrade request for a `ws://`
//!    or `wss://` URI from 16 caller-supplied random bytes.
//! 2. [`ClientHandshake::write_request`] serializes it; send those bytes.
//! 3. Feed everything read from the server to [`ClientHandshake::receive`]
//!    until it returns `Ok(Some(outcome))`. It consumes exactly the response
//!    head; any bytes after it (early WebSocket frames) stay in the buffer.
//!
//! # Server role
//!
//! 1. Feed received bytes to [`read_request`] until it returns a request
//!    (on [`HandshakeError::HeadTooLarge`], [`HandshakeError::TooManyHeaders`]
//!    or [`HandshakeError::Malformed`], send
//!    [`HandshakeError::to_rejection`] and close).
//! 2. [`check_request`] validates it against §4.2.1 and yields an
//!    [`UpgradeRequest`], or a [`Rejection`] to send back
//!    ([`Rejection::write_to`]) before closing.
//! 3. [`accept_response`] builds the `101 Switching Protocols` response and
//!    [`write_response`] serializes it.
//!
//! Over HTTP/2 (RFC 8441) the HTTP library parses the request; [`check_connect_request`]
//! checks an extended `CONNECT` in place of step 2 (the `:protocol` value passed in), sharing
//! the parsing of `Origin`, subprotocols and extension offers with [`check_request`], and
//! [`accept_response`] then builds a `200` without `Sec-WebSocket-Accept`.
//!
//! # Example
//!
//! ```rust
//! use bytes::BytesMut;
//! use wsx_proto::handshake::{
//!     accept_response, check_request, read_request, write_response, ClientHandshake,
//!     ClientRequestConfig, HandshakeLimits,
//! };
//!
//! let limits = HandshakeLimits::default();
//!
//! // Client: build and send the request.
//! let uri: http::Uri = "ws://example.com/chat".parse().unwrap();
//! let config = ClientRequestConfig {
//!     protocols: vec!["chat".to_owned()],
//!     ..Default::default()
//! };
//! let mut client = ClientHandshake::new(&uri, config, [7; 16]).unwrap();
//! let mut to_server = BytesMut::new();
//! client.write_request(&mut to_server);
//!
//! // Server: read, check and answer the request.
//! let request = read_request(&mut to_server, &limits).unwrap().expect("complete head");
//! let mut to_client = BytesMut::new();
//! match check_request(&request) {
//!     Ok(upgrade) => {
//!         let protocol = upgrade.protocols.iter().find(|p| *p == "chat").map(String::as_str);
//!         let response = accept_response(&upgrade, protocol, None, &http::HeaderMap::new());
//!         write_response(&response, &mut to_client);
//!     }
//!     Err(rejection) => rejection.write_to(&mut to_client),
//! }
//!
//! // Client: validate the response.
//! let outcome = client.receive(&mut to_client, &limits).unwrap().expect("complete head");
//! assert_eq!(outcome.protocol.as_deref(), Some("chat"));
//! assert!(to_client.is_empty());
//! ```

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use sha1::{Digest as _, Sha1};

use crate::headers::{has_token, is_token, quoted_list, token_list};

/// The GUID RFC 6455 §1.3 appends to `Sec-WebSocket-Key` before hashing.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The only protocol version this implementation speaks (RFC 6455 §4.1).
pub const WEBSOCKET_VERSION: &str = "13";

/// At most this many bytes of a non-101 response body are kept in
/// [`HandshakeError::UnexpectedStatus`] (64 KiB): enough for an error page, while a peer that
/// sends more cannot make a refused client buffer it.
pub const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// Computes the `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key`:
/// base64(SHA-1(key + [`GUID`])).
///
/// `key` is the header value as sent (not base64-decoded).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID.as_bytes());
    STANDARD.encode(sha.finalize())
}

/// Builds a `Sec-WebSocket-Key` value (base64 of 16 bytes) from 16 random
/// bytes supplied by the caller; this crate owns no random number generator.
///
/// The bytes must come from a good random source (RFC 6455 §4.1 asks for a
/// fresh, randomly selected nonce per connection).
pub fn generate_key(random: [u8; 16]) -> String {
    STANDARD.encode(random)
}

/// Bounds on an HTTP head received from the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Largest accepted head (request or status line, header lines and the
    /// terminating empty line), in bytes. Default: 16 KiB.
    pub max_head_bytes: usize,
    /// Largest accepted number of header lines. Default: 64.
    pub max_headers: usize,
}

impl Default for HandshakeLimits {
    /// 16 KiB of head and 64 header lines.
    fn default() -> Self {
        HandshakeLimits { max_head_bytes: 16 * 1024, max_headers: 64 }
    }
}

/// Everything that can go wrong during the opening handshake.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer's HTTP head is not valid HTTP/1.x.
    #[error("malformed HTTP head: {0}")]
    Malformed(String),
    /// The peer's HTTP head did not end within `limit` bytes.
    #[error("HTTP head is larger than the limit of {limit} bytes")]
    HeadTooLarge {
        /// The configured [`HandshakeLimits::max_head_bytes`].
        limit: usize,
    },
    /// The peer's HTTP head has more than `limit` header lines.
    #[error("HTTP head has more than the limit of {limit} header lines")]
    TooManyHeaders {
        /// The configured [`HandshakeLimits::max_headers`].
        limit: usize,
    },
    /// Client: the server answered with a status other than
    /// `101 Switching Protocols` (over HTTP/2, `200 OK`), i.e. it refused the upgrade.
    #[error("server answered {status} instead of accepting the WebSocket (101, or 200 over HTTP/2){}", body_snippet(.body))]
    UnexpectedStatus {
        /// The status the server sent.
        status: StatusCode,
        /// The response's headers (boxed, to keep the error small).
        headers: Box<HeaderMap>,
        /// Whatever part of the response body had already been received,
        /// at most [`MAX_ERROR_BODY_BYTES`] (and at most `Content-Length`).
        body: Bytes,
    },
    /// Client: the HTTP/2 server did not advertise `SETTINGS_ENABLE_CONNECT_PROTOCOL`
    /// (RFC 8441 §3), so it cannot take a WebSocket on this connection; use HTTP/1.1.
    #[error("the HTTP/2 server does not accept WebSockets: it did not send SETTINGS_ENABLE_CONNECT_PROTOCOL")]
    ConnectProtocolDisabled,
    /// Client: the HTTP/2 server's `200` to the extended `CONNECT` cannot carry a WebSocket:
    /// it has a `content-length` (RFC 9110 §9.3.6 tells a client to ignore it, but HTTP/2
    /// libraries, h2 among them, enforce it and would reset the stream at the first WebSocket
    /// frame), or it already ended the stream (END_STREAM). The stream is reset.
    #[error("the HTTP/2 server's 200 to the extended CONNECT cannot carry a WebSocket: {0}")]
    UnusableConnectResponse(&'static str),
    /// Client: the 101 response lacks `Upgrade: websocket`.
    #[error("server response lacks the header `Upgrade: websocket`")]
    MissingUpgrade,
    /// Client: the 101 response lacks `Connection: Upgrade`.
    #[error("server response lacks the header `Connection: Upgrade`")]
    MissingConnectionUpgrade,
    /// Client: `Sec-WebSocket-Accept` is missing or does not match the key we
    /// sent (the server, or something in between, does not speak RFC 6455).
    #[error("server's Sec-WebSocket-Accept is missing or does not match our Sec-WebSocket-Key")]
    BadAccept,
    /// Client: the server selected a subprotocol we did not offer (or
    /// several). A server selecting *no* subprotocol is allowed and is not an
    /// error.
    #[error("server selected subprotocol {0:?}, which we did not offer")]
    UnexpectedProtocol(String),
    /// Client: the server selected an extension we did not offer.
    #[error("server selected extension {0:?}, which we did not offer")]
    UnexpectedExtension(String),
    /// Client: the URI is not a usable `ws://` or `wss://` URI.
    #[error("invalid WebSocket URI: {0}")]
    InvalidUri(String),
    /// Client: the [`ClientRequestConfig`] cannot be sent (e.g. a subprotocol
    /// name that is not an HTTP token, or an origin with control characters).
    #[error("invalid handshake configuration: {0}")]
    InvalidConfig(String),
    /// Client: an extra request header the application asked for is not a
    /// valid HTTP header (a name that is not a token, or a value with a line
    /// break or another control character). The connection is not attempted,
    /// rather than sent without the header (e.g. unauthenticated). The value
    /// is not included, as it may be a secret.
    #[error("invalid request header {name:?}: {reason}")]
    InvalidHeader {
        /// The header's name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Server: the request is not an acceptable upgrade request; the
    /// [`Rejection`] is the response to send. Boxed to keep
    /// `HandshakeError` (and every `Result` carrying it) small; build it with
    /// `rejection.into()`.
    #[error("rejected the upgrade request with {}: {}", .0.status, .0.body)]
    Rejected(Box<Rejection>),
}

impl From<Rejection> for HandshakeError {
    fn from(rejection: Rejection) -> Self {
        HandshakeError::Rejected(Box::new(rejection))
    }
}

impl HandshakeError {
    /// The response a server should send for an error from [`read_request`]
    /// (or a [`HandshakeError::Rejected`]) before closing the connection:
    ///
    /// * `HeadTooLarge`, `TooManyHeaders` → `431 Request Header Fields Too Large`
    /// * `Malformed` → `400 Bad Request`
    /// * `Rejected(r)` → `r`
    ///
    /// `None` for client-side errors.
    pub fn to_rejection(&self) -> Option<Rejection> {
        match self {
            HandshakeError::HeadTooLarge { limit } => Some(Rejection::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("request head is larger than {limit} bytes"),
            )),
            HandshakeError::TooManyHeaders { limit } => Some(Rejection::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("request has more than {limit} header lines"),
            )),
            HandshakeError::Malformed(msg) => {
                Some(Rejection::new(StatusCode::BAD_REQUEST, format!("malformed HTTP request: {msg}")))
            }
            HandshakeError::Rejected(rejection) => Some(Rejection::clone(rejection)),
            _ => None,
        }
    }
}

/// Shows the start of an error body for [`HandshakeError::UnexpectedStatus`].
fn body_snippet(body: &Bytes) -> String {
    const SHOWN: usize = 200;
    if body.is_empty() {
        return String::new();
    }
    let text = String::from_utf8_lossy(body);
    let mut shown: String = text.chars().take(SHOWN).collect();
    if text.chars().nth(SHOWN).is_some() {
        shown.push('…');
    }
    format!(": {shown:?}")
}

/// A refusal the server sends instead of `101 Switching Protocols`: a status,
/// extra headers and a short plain-text body.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// The response status (4xx or 5xx).
    pub status: StatusCode,
    /// Extra response headers (e.g. `Sec-WebSocket-Version: 13` on a 426).
    /// `Content-Length`, `Connection` and `Transfer-Encoding` here are
    /// ignored by [`Rejection::write_to`]; a `Content-Type` replaces the
    /// default one. A list rather than a `HeaderMap`, to keep the type small: it travels as the
    /// error of a `Result` in every accept callback.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// A short text saying what was wrong, sent as the body.
    pub body: String,
}

impl Rejection {
    /// A rejection with the given status and body and no extra headers.
    pub fn new(status: StatusCode, body: impl Into<String>) -> Self {
        Rejection { status, headers: Vec::new(), body: body.into() }
    }

    /// The first extra header called `name`, if any.
    pub fn header(&self, name: impl AsRef<str>) -> Option<&HeaderValue> {
        let name = name.as_ref();
        self.headers.iter().find(|(n, _)| n.as_str().eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// Adds an extra header (builder style).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Serializes the rejection as a complete HTTP/1.1 response: status
    /// line, `Content-Type: text/plain; charset=utf-8` (unless the extra
    /// headers set one), `Content-Length`, `Connection: close`, the extra
    /// headers, then the body. Appends to `out`.
    pub fn write_to(&self, out: &mut BytesMut) {
        out.reserve(128 + self.body.len());
        write_status_line(self.status, out);
        if !self.headers.iter().any(|(name, _)| name == header::CONTENT_TYPE) {
            write_header_line(&header::CONTENT_TYPE, b"text/plain; charset=utf-8", out);
        }
        write_header_line(&header::CONTENT_LENGTH, self.body.len().to_string().as_bytes(), out);
        write_header_line(&header::CONNECTION, b"close", out);
        for (name, value) in &self.headers {
            if name == header::CONTENT_LENGTH || name == header::CONNECTION || name == header::TRANSFER_ENCODING {
                continue;
            }
            write_header_line(name, value.as_bytes(), out);
        }
        out.put_slice(b"\r\n");
        out.put_slice(self.body.as_bytes());
    }
}

// ---------------------------------------------------------------------------
// Client role
// ---------------------------------------------------------------------------

/// What a client asks for beyond the mandatory handshake headers.
#[derive(Debug, Clone, Default)]
pub struct ClientRequestConfig {
    /// Value of the `Origin` header, if any (browsers always send one).
    pub origin: Option<String>,
    /// Subprotocols to offer in `Sec-WebSocket-Protocol`, most preferred
    /// first. Each must be a non-empty HTTP token, without duplicates.
    pub protocols: Vec<String>,
    /// Extension offers for `Sec-WebSocket-Extensions`, each a full offer
    /// string such as `permessage-deflate; client_max_window_bits`.
    pub extensions: Vec<String>,
    /// Extra request headers (cookies, authorization, …). Headers the
    /// handshake controls (`Upgrade`, `Connection`, `Sec-WebSocket-*`) are
    /// ignored; a `Host` or `Origin` here replaces the computed/configured
    /// one.
    pub headers: HeaderMap,
}

/// State of a client's opening handshake: the request to send and what the
/// response must contain.
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    request: Request<()>,
    expected_accept: String,
    offer: Offer,
    /// How far the response head has been examined, across calls to `receive`.
    scan: HeadScan,
}

/// The result of a successful client handshake.
#[derive(Debug)]
pub struct ClientOutcome {
    /// The server's `101 Switching Protocols` response head.
    pub response: Response<()>,
    /// The subprotocol the server selected (one we offered), if any.
    pub protocol: Option<String>,
    /// The server's `Sec-WebSocket-Extensions` value (lines joined with
    /// `", "`), if it sent a non-empty one. Every extension in it was offered.
    pub extensions: Option<String>,
}

impl ClientHandshake {
    /// Builds the upgrade request for a `ws://` or `wss://` URI.
    ///
    /// The request is `GET <path?query> HTTP/1.1` with `Host` (with the port
    /// only when it is not the scheme's default 80/443), `Upgrade: websocket`,
    /// `Connection: Upgrade`, `Sec-WebSocket-Key` (from `key_random`, which
    /// must be fresh random bytes), `Sec-WebSocket-Version: 13`, then
    /// `Origin`, `Sec-WebSocket-Protocol` and `Sec-WebSocket-Extensions` when
    /// configured, then the extra headers (see [`ClientRequestConfig::headers`]).
    ///
    /// Errors: [`HandshakeError::InvalidUri`] for another scheme or a missing
    /// host; [`HandshakeError::InvalidConfig`] for values that cannot be sent.
    pub fn new(uri: &Uri, config: ClientRequestConfig, key_random: [u8; 16]) -> Result<Self, HandshakeError> {
        let WebSocketTarget { host: host_value, target, .. } = WebSocketTarget::parse(uri)?;
        let host_value = HeaderValue::from_str(&host_value)
            .map_err(|_| HandshakeError::InvalidUri("host is not a valid header value".into()))?;

        let key = generate_key(key_random);
        let expected_accept = accept_key(key.as_bytes());

        let mut headers = HeaderMap::new();
        let extra_host = config.headers.get(header::HOST).cloned();
        headers.insert(header::HOST, extra_host.unwrap_or(host_value));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::SEC_WEBSOCKET_KEY, header_value(&key)?);
        let offer = offer_headers(&config, &mut headers)?;

        let mut request = Request::new(());
        *request.method_mut() = Method::GET;
        *request.uri_mut() = target;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;

        Ok(ClientHandshake { request, expected_accept, offer, scan: HeadScan::default() })
    }

    /// The request that [`write_request`](Self::write_request) serializes.
    /// Its URI is the request target (path and query), not the full
    /// `ws://` URI.
    pub fn request(&self) -> &Request<()> {
        &self.request
    }

    /// The `Sec-WebSocket-Accept` value the server must answer with.
    pub fn expected_accept(&self) -> &str {
        &self.expected_accept
    }

    /// Appends the serialized request head (request line, headers, empty
    /// line) to `out`.
    pub fn write_request(&self, out: &mut BytesMut) {
        let target = self.request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        out.reserve(64 + target.len() + 64 * self.request.headers().len());
        out.put_slice(b"GET ");
        out.put_slice(target.as_bytes());
        out.put_slice(b" HTTP/1.1\r\n");
        write_headers(self.request.headers(), out);
        out.put_slice(b"\r\n");
    }

    /// Feeds bytes received from the server.
    ///
    /// Returns `Ok(None)` while the response head is incomplete (leaving
    /// `buf` untouched; call again with more bytes appended). Once the head
    /// is complete and valid, exactly its bytes are removed from the front of
    /// `buf`: anything after it (WebSocket frames the server sent right away)
    /// stays in `buf`. On error `buf` is left as it was; the connection must
    /// be failed.
    ///
    /// Checks, in RFC 6455 §4.1 order: status `101` (else
    /// [`HandshakeError::UnexpectedStatus`] with whatever body already
    /// arrived), `Upgrade: websocket`, `Connection` containing `upgrade`,
    /// `Sec-WebSocket-Accept`, that every extension in
    /// `Sec-WebSocket-Extensions` was offered, and that
    /// `Sec-WebSocket-Protocol` is absent or one subprotocol we offered.
    /// The limits are enforced even while the head is incomplete.
    ///
    /// After success, do not call this again: later bytes are WebSocket
    /// frames, not HTTP.
    ///
    /// Between calls that return `Ok(None)`, only append to `buf`: each byte
    /// is examined a bounded number of times however the head is split
    /// (the end of the head is searched for in the new bytes only, and the
    /// HTTP parser runs when it is found, or when the buffer has doubled since
    /// it last ran).
    pub fn receive(
        &mut self,
        buf: &mut BytesMut,
        limits: &HandshakeLimits,
    ) -> Result<Option<ClientOutcome>, HandshakeError> {
        let result = self.receive_head(buf, limits);
        if !matches!(result, Ok(None)) {
            self.scan.reset();
        }
        result
    }

    fn receive_head(
        &mut self,
        buf: &mut BytesMut,
        limits: &HandshakeLimits,
    ) -> Result<Option<ClientOutcome>, HandshakeError> {
        let window = head_window(buf, limits);
        if !self.scan.ready(window, buf.len(), limits) {
            return Ok(None);
        }
        let mut storage = vec![httparse::EMPTY_HEADER; limits.max_headers];
        let mut parsed = httparse::Response::new(&mut storage);
        let status = parsed.parse(window);
        let head_len = match check_parse_status(status, buf.len(), limits)? {
            Some(n) => n,
            None => {
                self.scan.parsed_incomplete(window.len());
                return Ok(None);
            }
        };
        let status = parsed
            .code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or_else(|| HandshakeError::Malformed("invalid status code".to_owned()))?;
        let version = to_version(parsed.version);
        let headers = to_header_map(parsed.headers, limits)?;

        if status != StatusCode::SWITCHING_PROTOCOLS {
            let available = &buf[head_len..];
            let declared = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let mut take = available.len().min(MAX_ERROR_BODY_BYTES);
            if let Some(declared) = declared {
                take = take.min(usize::try_from(declared).unwrap_or(usize::MAX));
            }
            let body = Bytes::copy_from_slice(&available[..take]);
            return Err(HandshakeError::UnexpectedStatus { status, headers: Box::new(headers), body });
        }

        let upgrade_ok =
            single_str(&headers, &header::UPGRADE).is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
        if !upgrade_ok {
            return Err(HandshakeError::MissingUpgrade);
        }
        if !has_token(&headers, &header::CONNECTION, "upgrade") {
            return Err(HandshakeError::MissingConnectionUpgrade);
        }
        let accept_ok =
            single_str(&headers, &header::SEC_WEBSOCKET_ACCEPT).is_some_and(|v| v.trim() == self.expected_accept);
        if !accept_ok {
            return Err(HandshakeError::BadAccept);
        }
        let extensions = self.offer.check_extensions(&headers)?;
        let protocol = self.offer.check_protocol(&headers)?;

        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        buf.advance(head_len);
        Ok(Some(ClientOutcome { response, protocol, extensions }))
    }
}

/// What a client offered (subprotocols, extension names), which the server's answer is checked
/// against: one copy for the HTTP/1.1 upgrade and the HTTP/2 extended CONNECT.
#[derive(Debug, Clone, Default)]
struct Offer {
    protocols: Vec<String>,
    extension_names: Vec<String>,
}

impl Offer {
    /// Every extension the server lists must be one we offered.
    fn check_extensions(&self, headers: &HeaderMap) -> Result<Option<String>, HandshakeError> {
        let mut values = Vec::new();
        for value in headers.get_all(header::SEC_WEBSOCKET_EXTENSIONS) {
            let text = value.to_str().map_err(|_| HandshakeError::UnexpectedExtension(lossy(value)))?;
            for element in quoted_list(text) {
                let name = element.split(';').next().unwrap_or("").trim();
                if !self.extension_names.iter().any(|offered| offered.eq_ignore_ascii_case(name)) {
                    return Err(HandshakeError::UnexpectedExtension(name.to_owned()));
                }
            }
            let text = text.trim();
            if !text.is_empty() {
                values.push(text);
            }
        }
        Ok(if values.is_empty() { None } else { Some(values.join(", ")) })
    }

    /// The server may select no subprotocol, or exactly one we offered.
    fn check_protocol(&self, headers: &HeaderMap) -> Result<Option<String>, HandshakeError> {
        let mut selected: Option<&str> = None;
        for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
            let text = value.to_str().map_err(|_| HandshakeError::UnexpectedProtocol(lossy(value)))?;
            for item in token_list(text) {
                if selected.is_some() {
                    return Err(HandshakeError::UnexpectedProtocol(combined(headers, &header::SEC_WEBSOCKET_PROTOCOL)));
                }
                selected = Some(item);
            }
        }
        match selected {
            None => Ok(None),
            Some(p) if self.protocols.iter().any(|offered| offered == p) => Ok(Some(p.to_owned())),
            Some(p) => Err(HandshakeError::UnexpectedProtocol(p.to_owned())),
        }
    }
}

/// The parts of a `ws://` or `wss://` URI a request is made of.
struct WebSocketTarget {
    /// `wss`.
    secure: bool,
    /// The host, with the port when it is not the scheme's default (80, 443): `Host` or
    /// `:authority`.
    host: String,
    /// Path and query (`/` for an empty path).
    target: Uri,
}

impl WebSocketTarget {
    fn parse(uri: &Uri) -> Result<Self, HandshakeError> {
        let (secure, default_port) = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("ws") => (false, 80),
            Some(s) if s.eq_ignore_ascii_case("wss") => (true, 443),
            Some(s) => {
                return Err(HandshakeError::InvalidUri(format!("unsupported scheme {s:?} (expected ws or wss)")))
            }
            None => return Err(HandshakeError::InvalidUri("missing scheme (expected ws:// or wss://)".to_owned())),
        };
        let host = match uri.host() {
            Some(h) if !h.is_empty() => h,
            _ => return Err(HandshakeError::InvalidUri("missing host".to_owned())),
        };
        let host = match uri.port_u16() {
            Some(port) if port != default_port => format!("{host}:{port}"),
            _ => host.to_owned(),
        };
        let path = if uri.path().is_empty() { "/" } else { uri.path() };
        let target = match uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        let target =
            Uri::try_from(target).map_err(|e| HandshakeError::InvalidUri(format!("invalid path or query: {e}")))?;
        Ok(Self { secure, host, target })
    }
}

/// The client's side of a WebSocket opened over HTTP/2 (RFC 8441): the extended `CONNECT`
/// request to send on a new stream, and the checks of the server's answer. The HTTP/2 library
/// carries the request; the caller must add the `:protocol` pseudo-header
/// ([`CONNECT_PROTOCOL`], which HTTP/2 libraries take apart from the headers: `h2::ext::Protocol`
/// in the request's extensions), and send it only once the server's SETTINGS enabled the
/// extended CONNECT protocol (else [`HandshakeError::ConnectProtocolDisabled`]).
///
/// ```rust
/// use wsx_proto::handshake::{ClientRequestConfig, ConnectHandshake};
///
/// let uri: http::Uri = "wss://example.com/chat".parse().unwrap();
/// let config = ClientRequestConfig { protocols: vec!["chat".to_owned()], ..Default::default() };
/// let handshake = ConnectHandshake::new(&uri, config).unwrap();
/// assert_eq!(handshake.request().method(), http::Method::CONNECT);
/// assert_eq!(handshake.request().uri(), "https://example.com/chat");
///
/// let response = http::Response::builder()
///     .status(200)
///     .header("sec-websocket-protocol", "chat")
///     .body(())
///     .unwrap();
/// let outcome = handshake.check_response(response).unwrap();
/// assert_eq!(outcome.protocol.as_deref(), Some("chat"));
/// ```
#[derive(Debug, Clone)]
pub struct ConnectHandshake {
    request: Request<()>,
    offer: Offer,
}

impl ConnectHandshake {
    /// Builds the extended `CONNECT` request for a `ws://` or `wss://` URI: its URI is the
    /// target with the scheme HTTP/2 uses (`http` for `ws`, `https` for `wss`; the library
    /// sends it as `:scheme`, `:authority`, `:path`), its headers `sec-websocket-version: 13`,
    /// then `origin`, `sec-websocket-protocol` and `sec-websocket-extensions` when configured,
    /// then the extra headers of [`ClientRequestConfig::headers`], less `Host` (the authority
    /// says it), the headers the handshake controls, the connection-specific headers
    /// HTTP/2 forbids (`Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `TE`), and
    /// `Content-Length` (the stream carries WebSocket frames without end, and the server's
    /// HTTP/2 library would reset it once the frames exceeded a length). No
    /// `Sec-WebSocket-Key`.
    ///
    /// Errors: [`HandshakeError::InvalidUri`] and [`HandshakeError::InvalidConfig`], as
    /// [`ClientHandshake::new`].
    pub fn new(uri: &Uri, config: ClientRequestConfig) -> Result<Self, HandshakeError> {
        let WebSocketTarget { secure, host, target } = WebSocketTarget::parse(uri)?;
        let path_and_query = target.path_and_query().map_or("/", |pq| pq.as_str());
        let scheme = if secure { "https" } else { "http" };
        let uri = Uri::builder()
            .scheme(scheme)
            .authority(host.as_str())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| HandshakeError::InvalidUri(format!("invalid authority or path: {e}")))?;
        let mut headers = HeaderMap::new();
        let offer = offer_headers(&config, &mut headers)?;
        for name in ["keep-alive", "proxy-connection", "transfer-encoding", "te", "content-length"] {
            headers.remove(name);
        }
        let mut request = Request::new(());
        *request.method_mut() = Method::CONNECT;
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_2;
        *request.headers_mut() = headers;
        Ok(Self { request, offer })
    }

    /// The request to send (add `:protocol websocket`, see the [type docs](Self)).
    pub fn request(&self) -> &Request<()> {
        &self.request
    }

    /// Checks the server's answer (RFC 8441 §5): status `200` (any other, 2xx included, is
    /// [`HandshakeError::UnexpectedStatus`], with an empty body for the caller to fill in),
    /// then, with the code of the HTTP/1.1 handshake, that every extension in
    /// `sec-websocket-extensions` was offered and that `sec-websocket-protocol` is absent or one
    /// subprotocol we offered. The stream's DATA frames then carry WebSocket frames.
    ///
    /// A `200` with a `content-length` is [`HandshakeError::UnusableConnectResponse`]: RFC 9110
    /// §9.3.6 tells a client to ignore it, but HTTP/2 libraries enforce it on the stream and
    /// would reset it at the first WebSocket frame. So is a `200` that ended the stream
    /// (END_STREAM): the caller knows, and checks it with [`check_end_stream`](Self::check_end_stream).
    pub fn check_response(&self, response: Response<()>) -> Result<ClientOutcome, HandshakeError> {
        if response.status() != StatusCode::OK {
            let (parts, ()) = response.into_parts();
            return Err(HandshakeError::UnexpectedStatus {
                status: parts.status,
                headers: Box::new(parts.headers),
                body: Bytes::new(),
            });
        }
        if response.headers().contains_key(header::CONTENT_LENGTH) {
            return Err(HandshakeError::UnusableConnectResponse(
                "it has a content-length, which the HTTP/2 library would enforce on the WebSocket's \
                 frames (RFC 9110 §9.3.6: a 2xx to CONNECT has no content)",
            ));
        }
        let extensions = self.offer.check_extensions(response.headers())?;
        let protocol = self.offer.check_protocol(response.headers())?;
        Ok(ClientOutcome { response, protocol, extensions })
    }

    /// Refuses a `200` whose HEADERS frame ended the stream (`end_stream`: END_STREAM was
    /// set): the server has nothing more to send, so no WebSocket.
    pub fn check_end_stream(&self, end_stream: bool) -> Result<(), HandshakeError> {
        if end_stream {
            return Err(HandshakeError::UnusableConnectResponse(
                "it ended the stream (END_STREAM), leaving nothing to carry the server's frames",
            ));
        }
        Ok(())
    }
}

/// Validates what `config` offers and adds the headers both forms of the request share to
/// `headers`: `Sec-WebSocket-Version`, then `Origin`, `Sec-WebSocket-Protocol` and
/// `Sec-WebSocket-Extensions` when configured, then the extra headers (without `Host` and the
/// ones the handshake controls).
fn offer_headers(config: &ClientRequestConfig, headers: &mut HeaderMap) -> Result<Offer, HandshakeError> {
    for (i, p) in config.protocols.iter().enumerate() {
        if !is_token(p) {
            return Err(HandshakeError::InvalidConfig(format!("subprotocol {p:?} is not a valid HTTP token")));
        }
        if config.protocols[..i].contains(p) {
            return Err(HandshakeError::InvalidConfig(format!("subprotocol {p:?} is offered twice")));
        }
    }
    let mut extension_names = Vec::with_capacity(config.extensions.len());
    for offer in &config.extensions {
        let name = offer.split(';').next().unwrap_or("").trim();
        if !is_token(name) || HeaderValue::from_str(offer).is_err() {
            return Err(HandshakeError::InvalidConfig(format!(
                "extension offer {offer:?} is not a valid Sec-WebSocket-Extensions value"
            )));
        }
        extension_names.push(name.to_owned());
    }
    headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static(WEBSOCKET_VERSION));
    let origin_from_extra = config.headers.contains_key(header::ORIGIN);
    if let (Some(origin), false) = (&config.origin, origin_from_extra) {
        let value = HeaderValue::from_str(origin)
            .map_err(|_| HandshakeError::InvalidConfig(format!("origin {origin:?} is not a valid header value")))?;
        headers.insert(header::ORIGIN, value);
    }
    if !config.protocols.is_empty() {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, header_value(&config.protocols.join(", "))?);
    }
    if !config.extensions.is_empty() {
        headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, header_value(&config.extensions.join(", "))?);
    }
    for (name, value) in &config.headers {
        if name == header::HOST || is_reserved_handshake_header(name) {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    Ok(Offer { protocols: config.protocols.clone(), extension_names })
}

// ---------------------------------------------------------------------------
// Server role
// ---------------------------------------------------------------------------

/// Feeds bytes received from a client.
///
/// Returns `Ok(None)` while the request head is incomplete (leaving `buf`
/// untouched). Once it is complete, removes exactly the head's bytes from the
/// front of `buf` and returns the request (method, URI, version, headers).
///
/// Errors: [`HandshakeError::HeadTooLarge`] or
/// [`HandshakeError::TooManyHeaders`] (answer 431), and
/// [`HandshakeError::Malformed`] (answer 400); see
/// [`HandshakeError::to_rejection`]. The limits are enforced even while the
/// head is incomplete. On error `buf` is left as it was.
///
/// This examines `buf` from its start on every call; when calling it again
/// as more bytes arrive, use a [`RequestReader`], which remembers how far it
/// got.
pub fn read_request(buf: &mut BytesMut, limits: &HandshakeLimits) -> Result<Option<Request<()>>, HandshakeError> {
    RequestReader::new().read(buf, limits)
}

/// Reads a request head that arrives in pieces (the server role's first
/// step), examining each byte a bounded number of times however the head is
/// split: the end of the head is searched for in the new bytes only, and the
/// HTTP parser runs when it is found, or when the buffer has doubled since
/// it last ran (so a stream that is not HTTP is still refused early).
#[derive(Debug, Clone, Default)]
pub struct RequestReader {
    scan: HeadScan,
}

impl RequestReader {
    /// A reader for one request head.
    pub fn new() -> Self {
        Self::default()
    }

    /// Like [`read_request`]: `Ok(None)` while the head is incomplete
    /// (`buf` untouched), then the request with exactly its head's bytes
    /// removed from `buf`. Between calls that return `Ok(None)`, only append
    /// to `buf`. After a request or an error, the reader starts afresh.
    pub fn read(
        &mut self,
        buf: &mut BytesMut,
        limits: &HandshakeLimits,
    ) -> Result<Option<Request<()>>, HandshakeError> {
        let result = self.read_head(buf, limits);
        if !matches!(result, Ok(None)) {
            self.scan.reset();
        }
        result
    }

    fn read_head(
        &mut self,
        buf: &mut BytesMut,
        limits: &HandshakeLimits,
    ) -> Result<Option<Request<()>>, HandshakeError> {
        let window = head_window(buf, limits);
        if !self.scan.ready(window, buf.len(), limits) {
            return Ok(None);
        }
        // Left uninitialised: the parser writes the headers it finds (64 of 32 bytes each by
        // default, written per handshake otherwise).
        let mut storage = Vec::with_capacity(limits.max_headers);
        let mut parsed = httparse::Request::new(&mut []);
        let status = parsed.parse_with_uninit_headers(window, &mut storage.spare_capacity_mut()[..limits.max_headers]);
        let head_len = match check_parse_status(status, buf.len(), limits)? {
            Some(n) => n,
            None => {
                self.scan.parsed_incomplete(window.len());
                return Ok(None);
            }
        };
        let method = parsed
            .method
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .ok_or_else(|| HandshakeError::Malformed("invalid method".to_owned()))?;
        let uri = parsed
            .path
            .and_then(|p| Uri::try_from(p).ok())
            .ok_or_else(|| HandshakeError::Malformed("invalid request target".to_owned()))?;
        let version = to_version(parsed.version);
        let headers = to_header_map(parsed.headers, limits)?;

        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = version;
        *request.headers_mut() = headers;
        buf.advance(head_len);
        Ok(Some(request))
    }
}

/// What a valid upgrade request asks for, as [`check_request`] and [`check_connect_request`]
/// found it (they are the only way to make one: new fields, like
/// [`extended_connect`](Self::extended_connect), are not breaking changes).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UpgradeRequest {
    /// The `Sec-WebSocket-Key` value (validated: base64 of 16 bytes); empty for an extended
    /// `CONNECT` ([`extended_connect`](Self::extended_connect)), which has no key.
    pub key: String,
    /// Whether the request is an HTTP/2 extended `CONNECT` (RFC 8441, checked by
    /// [`check_connect_request`]) rather than an HTTP/1.1 `GET` with `Upgrade`: its answer is
    /// `200` without `Sec-WebSocket-Accept` instead of `101` (see [`accept_response`]).
    pub extended_connect: bool,
    /// Offered subprotocols in the client's order of preference, from all
    /// `Sec-WebSocket-Protocol` lines.
    pub protocols: Vec<String>,
    /// The raw `Sec-WebSocket-Extensions` values, one per header line.
    pub extensions: Vec<String>,
    /// The `Origin` value, if sent.
    pub origin: Option<String>,
}

/// Whether a request asks for a WebSocket upgrade (`Upgrade` lists `websocket`), as opposed to a
/// plain HTTP request to be answered as such. [`check_request`] then says whether it is valid.
pub fn is_upgrade_request<B>(req: &Request<B>) -> bool {
    is_upgrade_headers(req.headers())
}

/// [`is_upgrade_request`] on a request's headers alone (`Upgrade` lists `websocket`).
pub fn is_upgrade_headers(headers: &HeaderMap) -> bool {
    has_token(headers, &header::UPGRADE, "websocket")
}

/// Checks a request against RFC 6455 §4.2.1.
///
/// Returns the [`Rejection`] to send (then close the connection) when:
///
/// * the method is not `GET` → `405 Method Not Allowed` with `Allow: GET`;
/// * the version is below HTTP/1.1, the request target is not a path (or an
///   absolute URI with a path), `Host` is missing or repeated, `Upgrade`
///   does not contain `websocket`, `Connection` does not contain `upgrade`,
///   `Sec-WebSocket-Key` is missing, repeated or not base64 of 16 bytes, or
///   `Origin` / `Sec-WebSocket-Protocol` / `Sec-WebSocket-Extensions` are
///   not valid → `400 Bad Request`;
/// * `Sec-WebSocket-Version` is missing or not `13` →
///   `426 Upgrade Required` with `Sec-WebSocket-Version: 13` (§4.4).
///
/// The body says what was wrong, e.g. `missing Sec-WebSocket-Key header`.
///
/// The body type does not matter (an upgrade request has none): a request
/// an HTTP server library parsed (hyper's `Request<Incoming>`) is checked
/// as it is; [`check_request_head`] checks a head split from its body.
// The `Rejection` error is the response itself, built once per connection.
pub fn check_request<B>(req: &Request<B>) -> Result<UpgradeRequest, Rejection> {
    check_head(req.method(), req.version(), req.uri(), req.headers())
}

/// [`check_request`] for a request head split from its body
/// (`http::request::Parts`, what an axum extractor sees).
pub fn check_request_head(head: &http::request::Parts) -> Result<UpgradeRequest, Rejection> {
    check_head(&head.method, head.version, &head.uri, &head.headers)
}

fn check_head(method: &Method, version: Version, uri: &Uri, headers: &HeaderMap) -> Result<UpgradeRequest, Rejection> {
    let bad = |msg: &str| Rejection::new(StatusCode::BAD_REQUEST, msg);
    if method != Method::GET {
        return Err(Rejection::new(StatusCode::METHOD_NOT_ALLOWED, "a WebSocket upgrade must use the GET method")
            .with_header(header::ALLOW, HeaderValue::from_static("GET")));
    }
    if version < Version::HTTP_11 {
        return Err(bad("a WebSocket upgrade requires HTTP/1.1 or later"));
    }
    if !uri.path().starts_with('/') {
        return Err(bad("invalid request target"));
    }
    match headers.get_all(header::HOST).iter().count() {
        0 => return Err(bad("missing Host header")),
        1 => {}
        _ => return Err(bad("multiple Host headers")),
    }
    if !has_token(headers, &header::UPGRADE, "websocket") {
        return Err(bad("missing or invalid Upgrade header (expected `Upgrade: websocket`)"));
    }
    if !has_token(headers, &header::CONNECTION, "upgrade") {
        return Err(bad("missing or invalid Connection header (expected `Connection: Upgrade`)"));
    }

    check_websocket_version(headers, StatusCode::UPGRADE_REQUIRED)?;

    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (None, _) => return Err(bad("missing Sec-WebSocket-Key header")),
        (Some(k), None) => k,
        _ => return Err(bad("multiple Sec-WebSocket-Key headers")),
    };
    let key = key
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| is_valid_key(k))
        .ok_or_else(|| bad("invalid Sec-WebSocket-Key header (must be base64 of 16 bytes)"))?;

    let (origin, protocols, extensions) = offers(headers)?;
    Ok(UpgradeRequest { key: key.to_owned(), extended_connect: false, protocols, extensions, origin })
}

/// `Sec-WebSocket-Version` must be there once, and be `13` (RFC 6455 §4.4): else `status` with
/// `Sec-WebSocket-Version: 13`, the version we speak.
fn check_websocket_version(headers: &HeaderMap, status: StatusCode) -> Result<(), Rejection> {
    let version_rejection = |msg: &str| {
        Rejection::new(status, msg)
            .with_header(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static(WEBSOCKET_VERSION))
    };
    let mut versions = headers.get_all(header::SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (None, _) => Err(version_rejection("missing Sec-WebSocket-Version header")),
        (Some(v), None) if v.as_bytes().trim_ascii() == WEBSOCKET_VERSION.as_bytes() => Ok(()),
        _ => Err(version_rejection("unsupported Sec-WebSocket-Version (only 13 is supported)")),
    }
}

/// What both forms of the request offer: `Origin`, subprotocols (in the client's order),
/// extension offers (one raw value per header line).
type Offers = (Option<String>, Vec<String>, Vec<String>);

/// Parses the headers both forms of the request share (`Origin`, `Sec-WebSocket-Protocol`,
/// `Sec-WebSocket-Extensions`): the one copy of this for HTTP/1.1 and HTTP/2.
fn offers(headers: &HeaderMap) -> Result<Offers, Rejection> {
    let bad = |msg: &str| Rejection::new(StatusCode::BAD_REQUEST, msg);
    let mut origins = headers.get_all(header::ORIGIN).iter();
    let origin = match (origins.next(), origins.next()) {
        (None, _) => None,
        (Some(o), None) => Some(o.to_str().map_err(|_| bad("invalid Origin header"))?.to_owned()),
        _ => return Err(bad("multiple Origin headers")),
    };

    let mut protocols = Vec::new();
    for value in headers.get_all(header::SEC_WEBSOCKET_PROTOCOL) {
        let text = value.to_str().map_err(|_| bad("invalid Sec-WebSocket-Protocol header"))?;
        for item in token_list(text) {
            if !is_token(item) {
                return Err(bad("invalid Sec-WebSocket-Protocol header"));
            }
            protocols.push(item.to_owned());
        }
    }

    let mut extensions = Vec::new();
    for value in headers.get_all(header::SEC_WEBSOCKET_EXTENSIONS) {
        let text = value.to_str().map_err(|_| bad("invalid Sec-WebSocket-Extensions header"))?;
        extensions.push(text.trim().to_owned());
    }
    Ok((origin, protocols, extensions))
}

/// The value of RFC 8441's `:protocol` pseudo-header that asks for a WebSocket.
pub const CONNECT_PROTOCOL: &str = "websocket";

/// Checks an HTTP/2 extended `CONNECT` request (RFC 8441 §4–5, RFC 9113 §8.5) that asks for a
/// WebSocket; `protocol` is the value of its `:protocol` pseudo-header, which the HTTP/2 library
/// keeps outside the headers (hyper: the `hyper::ext::Protocol` request extension), `None` when
/// the request had none.
///
/// The request has no `Sec-WebSocket-Key`, `Upgrade` or `Connection` (a `Sec-WebSocket-Key`
/// is ignored; HTTP/2 itself forbids the other two). `Origin`, `Sec-WebSocket-Protocol` and
/// `Sec-WebSocket-Extensions` are read exactly as [`check_request`] reads them. The
/// [`UpgradeRequest`] has [`extended_connect`](UpgradeRequest::extended_connect) set and no key;
/// [`accept_response`] then answers `200`.
///
/// Returns the [`Rejection`] to answer with when:
///
/// * the method is not `CONNECT` → `405 Method Not Allowed` with `Allow: CONNECT` (over HTTP/2
///   a WebSocket is opened with extended `CONNECT` only; a `GET` is a plain request);
/// * the method is `CONNECT` without `:protocol` (a request for a TCP tunnel, RFC 9113 §8.5) →
///   `400 Bad Request`;
/// * `:protocol` is not `websocket` (e.g. `connect-udp`) → `501 Not Implemented`: the request is
///   well-formed, but this endpoint does not implement that protocol;
/// * the version is not HTTP/2 or later, or the path is not absolute → `400 Bad Request`;
/// * `Sec-WebSocket-Version` is missing or not `13` → `400 Bad Request` with
///   `Sec-WebSocket-Version: 13` (HTTP/1.1 answers this with 426, whose required `Upgrade`
///   header HTTP/2 forbids);
/// * `Origin`, `Sec-WebSocket-Protocol` or `Sec-WebSocket-Extensions` are not valid → `400`.
pub fn check_connect_request<B>(req: &Request<B>, protocol: Option<&str>) -> Result<UpgradeRequest, Rejection> {
    check_connect(req.method(), req.version(), req.uri(), req.headers(), protocol)
}

/// [`check_connect_request`] for a request head split from its body (`http::request::Parts`,
/// what an axum extractor sees).
pub fn check_connect_head(head: &http::request::Parts, protocol: Option<&str>) -> Result<UpgradeRequest, Rejection> {
    check_connect(&head.method, head.version, &head.uri, &head.headers, protocol)
}

fn check_connect(
    method: &Method,
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
    protocol: Option<&str>,
) -> Result<UpgradeRequest, Rejection> {
    let bad = |msg: &str| Rejection::new(StatusCode::BAD_REQUEST, msg);
    if method != Method::CONNECT {
        return Err(Rejection::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "a WebSocket over HTTP/2 must use extended CONNECT (:method CONNECT, :protocol websocket)",
        )
        .with_header(header::ALLOW, HeaderValue::from_static("CONNECT")));
    }
    let protocol = match protocol {
        None => return Err(bad("CONNECT without :protocol asks for a tunnel; a WebSocket needs :protocol websocket")),
        Some(p) => p,
    };
    if !protocol.eq_ignore_ascii_case(CONNECT_PROTOCOL) {
        let shown: String = protocol.chars().take(64).collect();
        return Err(Rejection::new(
            StatusCode::NOT_IMPLEMENTED,
            format!("this endpoint speaks :protocol websocket, not {shown:?}"),
        ));
    }
    if version < Version::HTTP_2 {
        return Err(bad("an extended CONNECT requires HTTP/2 or later"));
    }
    if !uri.path().starts_with('/') {
        return Err(bad("invalid :path"));
    }
    check_websocket_version(headers, StatusCode::BAD_REQUEST)?;
    let (origin, protocols, extensions) = offers(headers)?;
    Ok(UpgradeRequest { key: String::new(), extended_connect: true, protocols, extensions, origin })
}

/// Builds the response that accepts a checked request: `101 Switching Protocols` for an
/// HTTP/1.1 upgrade, `200 OK` for an HTTP/2 extended `CONNECT`
/// ([`UpgradeRequest::extended_connect`]; RFC 8441 §5, and Chromium refuses any other 2xx).
///
/// Headers: for the 101, `Upgrade: websocket`, `Connection: Upgrade` and
/// `Sec-WebSocket-Accept` (the 200 has none of them); then `Sec-WebSocket-Protocol` if
/// `protocol` is `Some` (the caller guarantees it is one of [`UpgradeRequest::protocols`]),
/// `Sec-WebSocket-Extensions` if `extensions` is `Some`, then `extra`.
/// Values that are not valid header values are omitted (cannot happen for
/// protocols taken from the request); headers in `extra` that the handshake
/// controls (`Upgrade`, `Connection`, `Sec-WebSocket-*`) are ignored.
pub fn accept_response(
    upgrade: &UpgradeRequest,
    protocol: Option<&str>,
    extensions: Option<&str>,
    extra: &HeaderMap,
) -> Response<()> {
    let mut headers = HeaderMap::new();
    if !upgrade.extended_connect {
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(v) = HeaderValue::from_str(&accept_key(upgrade.key.as_bytes())) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
    }
    if let Some(Ok(v)) = protocol.map(HeaderValue::from_str) {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
    if let Some(Ok(v)) = extensions.map(HeaderValue::from_str) {
        headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, v);
    }
    for (name, value) in extra {
        if !is_reserved_handshake_header(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let mut response = Response::new(());
    if upgrade.extended_connect {
        *response.status_mut() = StatusCode::OK;
        *response.version_mut() = Version::HTTP_2;
    } else {
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *response.version_mut() = Version::HTTP_11;
    }
    *response.headers_mut() = headers;
    response
}

/// Appends a response head (`HTTP/1.1` status line, headers, empty line) to
/// `out`. No body is written.
pub fn write_response(resp: &Response<()>, out: &mut BytesMut) {
    out.reserve(64 + 64 * resp.headers().len());
    write_status_line(resp.status(), out);
    write_headers(resp.headers(), out);
    out.put_slice(b"\r\n");
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The part of `buf` the parser may look at: at most `max_head_bytes`.
fn head_window<'a>(buf: &'a BytesMut, limits: &HandshakeLimits) -> &'a [u8] {
    &buf[..buf.len().min(limits.max_head_bytes)]
}

/// What is known about a head that is arriving in pieces, so that each call
/// examines only what is new instead of parsing again from byte 0 (which
/// costs O(n²) for a head trickled one byte at a time).
#[derive(Debug, Clone, Default)]
struct HeadScan {
    /// How many bytes of the window have been searched for the end of the head.
    searched: usize,
    /// Whether the end of the head (an empty line) is in the window.
    end_seen: bool,
    /// The window's length when the parser last found the head incomplete.
    parsed_at: usize,
    /// Bytes examined in this value's life (searched, plus handed to the
    /// parser); kept across [`reset`](Self::reset).
    #[cfg(test)]
    work: usize,
}

impl HeadScan {
    /// Searches the bytes added to `window` since the last call for the end
    /// of the head, and says whether the parser should run now: the end is
    /// there, the window is full (the limit decides), or it has at least
    /// doubled since the parser last ran (which keeps refusing garbage early
    /// while bounding the parser's total work by about twice the head).
    fn ready(&mut self, window: &[u8], buffered: usize, limits: &HandshakeLimits) -> bool {
        if window.len() < self.searched {
            // Not the buffer we saw (the caller did not only append): start over.
            self.reset();
        }
        if buffered == 0 {
            // Nothing to parse yet (the server's first try, before its first read).
            return false;
        }
        let new = &window[self.searched..];
        self.count(new.len());
        if !self.end_seen {
            // An empty line ends the head: a `\n` right after `\n` or `\n\r`, looked up from
            // each new `\n` (the bytes before it may be from an earlier call: the caller only
            // appends). `memchr` finds them a vector at a time.
            self.end_seen = memchr::memchr_iter(b'\n', new).any(|i| {
                let before = &window[..self.searched + i];
                before.ends_with(b"\n") || before.ends_with(b"\n\r")
            });
        }
        self.searched = window.len();
        let full = buffered > 0 && buffered >= limits.max_head_bytes;
        let ready = self.end_seen || full || self.parsed_at == 0 || window.len() >= 2 * self.parsed_at;
        if ready {
            self.count(window.len());
        }
        ready
    }

    /// Forgets the head (after it was read, or refused).
    fn reset(&mut self) {
        self.searched = 0;
        self.end_seen = false;
        self.parsed_at = 0;
    }

    /// The parser ran on `len` bytes and needs more.
    fn parsed_incomplete(&mut self, len: usize) {
        self.parsed_at = len.max(1);
        // The empty line seen was not the end (blank lines before the request line, which the
        // parser skips): search on from here, or every later call would parse the whole head.
        self.end_seen = false;
    }

    #[cfg(test)]
    fn count(&mut self, n: usize) {
        self.work += n;
    }

    #[cfg(not(test))]
    fn count(&mut self, _n: usize) {}
}

/// Maps an httparse result to the head length (`None` = need more bytes),
/// enforcing the limits.
fn check_parse_status(
    status: httparse::Result<usize>,
    buffered: usize,
    limits: &HandshakeLimits,
) -> Result<Option<usize>, HandshakeError> {
    match status {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) => {
            // The parser saw min(buffered, limit) bytes without finding the
            // end of the head, so the head needs more than `limit` bytes.
            if buffered > 0 && buffered >= limits.max_head_bytes {
                Err(HandshakeError::HeadTooLarge { limit: limits.max_head_bytes })
            } else {
                Ok(None)
            }
        }
        Err(httparse::Error::TooManyHeaders) => Err(HandshakeError::TooManyHeaders { limit: limits.max_headers }),
        Err(e) => Err(HandshakeError::Malformed(e.to_string())),
    }
}

fn to_version(v: Option<u8>) -> Version {
    match v {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    }
}

/// Converts parsed headers; the count is bounded by `max_headers`, and the
/// `try_` methods keep a huge configured limit from hitting `HeaderMap`'s
/// hard cap (32768 entries) with a panic.
fn to_header_map(parsed: &[httparse::Header<'_>], limits: &HandshakeLimits) -> Result<HeaderMap, HandshakeError> {
    let too_many = |_| HandshakeError::TooManyHeaders { limit: limits.max_headers };
    let mut map = HeaderMap::try_with_capacity(parsed.len()).map_err(too_many)?;
    for h in parsed {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| HandshakeError::Malformed("invalid header name".to_owned()))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| HandshakeError::Malformed("invalid header value".to_owned()))?;
        map.try_append(name, value).map_err(too_many)?;
    }
    Ok(map)
}

fn header_value(s: &str) -> Result<HeaderValue, HandshakeError> {
    HeaderValue::from_str(s).map_err(|_| HandshakeError::InvalidConfig(format!("{s:?} is not a valid header value")))
}

/// Headers whose values the handshake itself determines.
fn is_reserved_handshake_header(name: &HeaderName) -> bool {
    name == header::UPGRADE || name == header::CONNECTION || name.as_str().starts_with("sec-websocket-")
}

/// The value of a header that must appear exactly once, if it is visible
/// ASCII.
fn single_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => v.to_str().ok(),
        _ => None,
    }
}

/// All lines of a header joined with `", "`, lossily decoded.
fn combined(headers: &HeaderMap, name: &HeaderName) -> String {
    headers.get_all(name).iter().map(lossy).collect::<Vec<_>>().join(", ")
}

fn lossy(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

/// A `Sec-WebSocket-Key` must be base64 (with padding) of exactly 16 bytes.
fn is_valid_key(key: &str) -> bool {
    let mut decoded = [0u8; 18];
    key.len() == 24 && STANDARD.decode_slice(key.as_bytes(), &mut decoded).is_ok_and(|n| n == 16)
}

fn write_status_line(status: StatusCode, out: &mut BytesMut) {
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
}

fn write_headers(headers: &HeaderMap, out: &mut BytesMut) {
    for (name, value) in headers {
        write_header_line(name, value.as_bytes(), out);
    }
}

/// Writes `Name: value\r\n` with the name in its conventional spelling
/// (header names are case-insensitive, but some peers are picky).
fn write_header_line(name: &HeaderName, value: &[u8], out: &mut BytesMut) {
    let special = match name.as_str() {
        "sec-websocket-key" => Some("Sec-WebSocket-Key"),
        "sec-websocket-accept" => Some("Sec-WebSocket-Accept"),
        "sec-websocket-version" => Some("Sec-WebSocket-Version"),
        "sec-websocket-protocol" => Some("Sec-WebSocket-Protocol"),
        "sec-websocket-extensions" => Some("Sec-WebSocket-Extensions"),
        _ => None,
    };
    match special {
        Some(s) => out.put_slice(s.as_bytes()),
        None => {
            let mut at_start = true;
            for b in name.as_str().bytes() {
                out.put_u8(if at_start { b.to_ascii_uppercase() } else { b });
                at_start = b == b'-';
            }
        }
    }
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    /// RFC 6455 §1.3 (the brief quoted a mistyped value).
    const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn limits() -> HandshakeLimits {
        HandshakeLimits::default()
    }

    fn client(uri: &str, config: ClientRequestConfig) -> ClientHandshake {
        ClientHandshake::new(&uri.parse().unwrap(), config, *b"the sample nonce").unwrap()
    }

    fn head_text(buf: &BytesMut) -> String {
        String::from_utf8(buf.to_vec()).unwrap()
    }

    fn parse_request(raw: &str) -> Request<()> {
        let mut buf = BytesMut::from(raw.as_bytes());
        let req = read_request(&mut buf, &limits()).unwrap().unwrap();
        assert!(buf.is_empty());
        req
    }

    fn valid_request_lines() -> Vec<String> {
        vec![
            "GET /chat HTTP/1.1".into(),
            "Host: server.example.com".into(),
            "Upgrade: websocket".into(),
            "Connection: Upgrade".into(),
            format!("Sec-WebSocket-Key: {RFC_KEY}"),
            "Sec-WebSocket-Version: 13".into(),
        ]
    }

    fn raw(lines: &[String]) -> String {
        let mut s = lines.join("\r\n");
        s.push_str("\r\n\r\n");
        s
    }

    /// A valid request with the line starting with `prefix` replaced (or
    /// removed when `replacement` is None).
    fn request_with(prefix: &str, replacement: Option<&str>) -> Request<()> {
        let mut lines = valid_request_lines();
        let i = lines.iter().position(|l| l.starts_with(prefix)).unwrap();
        match replacement {
            Some(r) => lines[i] = r.to_owned(),
            None => {
                lines.remove(i);
            }
        }
        parse_request(&raw(&lines))
    }

    /// A 101 response for the RFC sample key with extra lines.
    fn response_101(extra: &[&str]) -> BytesMut {
        let mut s = String::from("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n");
        s.push_str(&format!("Sec-WebSocket-Accept: {RFC_ACCEPT}\r\n"));
        for l in extra {
            s.push_str(l);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        BytesMut::from(s.as_bytes())
    }

    #[test]
    fn rfc_sample_vector() {
        assert_eq!(accept_key(RFC_KEY.as_bytes()), RFC_ACCEPT);
        assert_eq!(generate_key(*b"the sample nonce"), RFC_KEY);
        let c = client("ws://example.com/", ClientRequestConfig::default());
        assert_eq!(c.expected_accept(), RFC_ACCEPT);
    }

    #[test]
    fn client_request_path_query_and_host() {
        let c = client("ws://example.com/chat?x=1", ClientRequestConfig::default());
        let req = c.request();
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri(), "/chat?x=1");
        assert_eq!(req.headers()["host"], "example.com");
        assert_eq!(req.headers()["upgrade"], "websocket");
        assert_eq!(req.headers()["connection"], "Upgrade");
        assert_eq!(req.headers()["sec-websocket-key"], RFC_KEY);
        assert_eq!(req.headers()["sec-websocket-version"], "13");
        assert!(!req.headers().contains_key("origin"));
        assert!(!req.headers().contains_key("sec-websocket-protocol"));
        assert!(!req.headers().contains_key("sec-websocket-extensions"));

        let mut out = BytesMut::from(&b"prefix"[..]);
        c.write_request(&mut out);
        let text = head_text(&out);
        assert!(text.starts_with("prefixGET /chat?x=1 HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("\r\nHost: example.com\r\n"));
        assert!(text.contains("\r\nUpgrade: websocket\r\n"));
        assert!(text.contains("\r\nConnection: Upgrade\r\n"));
        assert!(text.contains(&format!("\r\nSec-WebSocket-Key: {RFC_KEY}\r\n")));
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(text.ends_with("\r\n\r\n"));

        let c = client("ws://h:9001/", ClientRequestConfig::default());
        assert_eq!(c.request().uri(), "/");
        assert_eq!(c.request().headers()["host"], "h:9001");
    }

    #[test]
    fn client_host_port_forms() {
        let host = |uri: &str| {
            client(uri, ClientRequestConfig::default()).request().headers()["host"].to_str().unwrap().to_owned()
        };
        assert_eq!(host("ws://example.com:80/"), "example.com");
        assert_eq!(host("wss://example.com:443/"), "example.com");
        assert_eq!(host("wss://example.com/"), "example.com");
        assert_eq!(host("wss://example.com:80/"), "example.com:80");
        assert_eq!(host("ws://example.com:443/"), "example.com:443");
        assert_eq!(host("ws://[::1]:9001/"), "[::1]:9001");
        assert_eq!(host("ws://user:pw@example.com/"), "example.com");
        let c = client("ws://example.com?a=b", ClientRequestConfig::default());
        assert_eq!(c.request().uri(), "/?a=b");
    }

    #[test]
    fn client_rejects_bad_uris_and_config() {
        let new = |uri: &str, config| ClientHandshake::new(&uri.parse::<Uri>().unwrap(), config, [0; 16]).map(|_| ());
        let d = ClientRequestConfig::default;
        assert!(matches!(new("http://example.com/", d()), Err(HandshakeError::InvalidUri(_))));
        assert!(matches!(new("/chat", d()), Err(HandshakeError::InvalidUri(_))));
        let bad_protocol = ClientRequestConfig { protocols: vec!["a b".into()], ..d() };
        assert!(matches!(new("ws://h/", bad_protocol), Err(HandshakeError::InvalidConfig(_))));
        let duplicate = ClientRequestConfig { protocols: vec!["a".into(), "a".into()], ..d() };
        assert!(matches!(new("ws://h/", duplicate), Err(HandshakeError::InvalidConfig(_))));
        let bad_origin = ClientRequestConfig { origin: Some("http://x\r\nEvil: 1".into()), ..d() };
        assert!(matches!(new("ws://h/", bad_origin), Err(HandshakeError::InvalidConfig(_))));
    }

    #[test]
    fn client_optional_and_extra_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("x-token", HeaderValue::from_static("abc"));
        headers.insert(header::HOST, HeaderValue::from_static("override.example"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        headers.insert("sec-websocket-key", HeaderValue::from_static("nope"));
        let config = ClientRequestConfig {
            origin: Some("http://example.com".into()),
            protocols: vec!["v2.chat".into(), "chat".into()],
            extensions: vec!["permessage-deflate; client_max_window_bits".into()],
            headers,
        };
        let c = client("ws://example.com/", config);
        let h = c.request().headers();
        assert_eq!(h["host"], "override.example");
        assert_eq!(h["origin"], "http://example.com");
        assert_eq!(h["sec-websocket-protocol"], "v2.chat, chat");
        assert_eq!(h["sec-websocket-extensions"], "permessage-deflate; client_max_window_bits");
        assert_eq!(h["x-token"], "abc");
        assert_eq!(h.get_all("upgrade").iter().count(), 1);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["sec-websocket-key"], RFC_KEY);
        let mut out = BytesMut::new();
        c.write_request(&mut out);
        let text = head_text(&out);
        assert!(text.contains("\r\nSec-WebSocket-Protocol: v2.chat, chat\r\n"));
        assert!(text.contains("\r\nX-Token: abc\r\n"));
    }

    #[test]
    fn full_round_trip() {
        let config = ClientRequestConfig {
            origin: Some("http://example.com".into()),
            protocols: vec!["superchat".into(), "chat".into()],
            ..Default::default()
        };
        let mut c = ClientHandshake::new(&"ws://example.com/chat".parse().unwrap(), config, [42; 16]).unwrap();
        let mut wire = BytesMut::new();
        c.write_request(&mut wire);
        wire.extend_from_slice(b"\x81\x85rest");

        let req = read_request(&mut wire, &limits()).unwrap().unwrap();
        assert_eq!(&wire[..], b"\x81\x85rest");
        assert_eq!(req.uri(), "/chat");
        assert_eq!(req.version(), Version::HTTP_11);
        let upgrade = check_request(&req).unwrap();
        assert_eq!(upgrade.protocols, ["superchat", "chat"]);
        assert_eq!(upgrade.origin.as_deref(), Some("http://example.com"));
        assert!(upgrade.extensions.is_empty());
        assert_eq!(upgrade.key, generate_key([42; 16]));

        let mut extra = HeaderMap::new();
        extra.insert("x-server", HeaderValue::from_static("wsx"));
        extra.insert(header::CONNECTION, HeaderValue::from_static("close"));
        let resp = accept_response(&upgrade, Some("chat"), None, &extra);
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(resp.headers()["connection"], "Upgrade");
        let mut out = BytesMut::new();
        write_response(&resp, &mut out);
        let text = head_text(&out);
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{text}");
        assert!(text.contains(&format!("\r\nSec-WebSocket-Accept: {}\r\n", c.expected_accept())));
        assert!(text.contains("\r\nSec-WebSocket-Protocol: chat\r\n"));
        assert!(text.contains("\r\nX-Server: wsx\r\n"));

        let outcome = c.receive(&mut out, &limits()).unwrap().unwrap();
        assert!(out.is_empty());
        assert_eq!(outcome.protocol.as_deref(), Some("chat"));
        assert_eq!(outcome.extensions, None);
        assert_eq!(outcome.response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(outcome.response.headers()["x-server"], "wsx");
    }

    #[test]
    fn rfc_sample_response_bytes() {
        let req = parse_request(&raw(&valid_request_lines()));
        let upgrade = check_request(&req).unwrap();
        let mut out = BytesMut::new();
        write_response(&accept_response(&upgrade, None, None, &HeaderMap::new()), &mut out);
        assert_eq!(
            head_text(&out),
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {RFC_ACCEPT}\r\n\r\n"
            )
        );
    }

    #[test]
    fn response_one_byte_at_a_time_keeps_trailing_frames() {
        let mut c = client("ws://example.com/", ClientRequestConfig::default());
        let mut all = response_101(&[]);
        let head_len = all.len();
        all.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
        let mut buf = BytesMut::new();
        for (i, &b) in all.iter().enumerate() {
            buf.put_u8(b);
            let r = c.receive(&mut buf, &limits()).unwrap();
            if i + 1 < head_len {
                assert!(r.is_none(), "complete too early at {i}");
                assert_eq!(buf.len(), i + 1, "buffer must stay untouched");
            } else {
                let outcome = r.expect("complete at end of head");
                assert_eq!(outcome.protocol, None);
                assert!(buf.is_empty());
                buf.extend_from_slice(&all[i + 1..]);
                break;
            }
        }
        assert_eq!(&buf[..], &[0x81, 0x02, b'h', b'i']);

        // Everything in one go: the frame bytes stay behind.
        let mut c = client("ws://example.com/", ClientRequestConfig::default());
        let mut buf = all.clone();
        c.receive(&mut buf, &limits()).unwrap().unwrap();
        assert_eq!(&buf[..], &[0x81, 0x02, b'h', b'i']);
    }

    #[test]
    fn request_incomplete_then_complete() {
        let text = raw(&valid_request_lines());
        let mut buf = BytesMut::new();
        for (i, &b) in text.as_bytes().iter().enumerate() {
            buf.put_u8(b);
            let r = read_request(&mut buf, &limits()).unwrap();
            if i + 1 < text.len() {
                assert!(r.is_none());
                assert_eq!(buf.len(), i + 1);
            } else {
                assert!(r.is_some());
                assert!(buf.is_empty());
            }
        }
    }

    /// A request with a body type, and a head split from its body, are checked as the request.
    #[test]
    fn check_request_head_agrees_with_check_request() {
        let cases = [
            request_with("Host", Some("Host: server.example.com")),
            request_with("Sec-WebSocket-Version", Some("Sec-WebSocket-Version: 8")),
            request_with("Sec-WebSocket-Key", None),
            request_with("GET", Some("POST /chat HTTP/1.1")),
        ];
        for req in cases {
            let expected = check_request(&req).map(|u| u.key).map_err(|r| (r.status, r.body));
            let with_body = req.clone().map(|()| "a body type");
            assert_eq!(check_request(&with_body).map(|u| u.key).map_err(|r| (r.status, r.body)), expected);
            let (head, _) = req.into_parts();
            assert_eq!(check_request_head(&head).map(|u| u.key).map_err(|r| (r.status, r.body)), expected);
        }
    }

    #[test]
    fn refuses_wrong_version_with_426() {
        let req = request_with("Sec-WebSocket-Version", Some("Sec-WebSocket-Version: 8"));
        let r = check_request(&req).unwrap_err();
        assert_eq!(r.status, StatusCode::UPGRADE_REQUIRED);
        assert_eq!(r.header("sec-websocket-version").unwrap(), "13");
        let mut out = BytesMut::new();
        r.write_to(&mut out);
        let text = head_text(&out);
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{text}");
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"));

        let req = request_with("Sec-WebSocket-Version", None);
        let r = check_request(&req).unwrap_err();
        assert_eq!(r.status, StatusCode::UPGRADE_REQUIRED);
        assert_eq!(r.header("sec-websocket-version").unwrap(), "13");
    }

    #[test]
    fn refuses_missing_or_bad_key_with_400() {
        let r = check_request(&request_with("Sec-WebSocket-Key", None)).unwrap_err();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.body, "missing Sec-WebSocket-Key header");
        for bad in [
            "Sec-WebSocket-Key: short",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZWVl",
            "Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!==",
        ] {
            let r = check_request(&request_with("Sec-WebSocket-Key", Some(bad))).unwrap_err();
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    /// An HTTP/2 extended CONNECT as hyper hands it over (the `:protocol` value apart).
    fn connect_request(lines: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::new(());
        *req.method_mut() = Method::CONNECT;
        *req.version_mut() = Version::HTTP_2;
        *req.uri_mut() = "https://server.example.com/chat".parse().unwrap();
        for (name, value) in lines {
            req.headers_mut().append(HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        req
    }

    const CONNECT_OK: &[(&str, &str)] = &[("sec-websocket-version", "13")];

    #[test]
    fn extended_connect_is_accepted_with_a_200_and_no_accept_key() {
        let req = connect_request(&[
            ("sec-websocket-version", "13"),
            ("sec-websocket-protocol", "chat, superchat"),
            ("sec-websocket-extensions", "permessage-deflate; client_max_window_bits"),
            ("origin", "https://server.example.com"),
        ]);
        let upgrade = check_connect_request(&req, Some("websocket")).unwrap();
        assert!(upgrade.extended_connect);
        assert!(upgrade.key.is_empty());
        assert_eq!(upgrade.protocols, ["chat", "superchat"]);
        assert_eq!(upgrade.extensions, ["permessage-deflate; client_max_window_bits"]);
        assert_eq!(upgrade.origin.as_deref(), Some("https://server.example.com"));
        let (head, ()) = req.into_parts();
        assert_eq!(check_connect_head(&head, Some("websocket")).unwrap().protocols, ["chat", "superchat"]);

        let mut extra = HeaderMap::new();
        extra.insert("x-served-by", HeaderValue::from_static("wsx"));
        extra.insert(header::CONNECTION, HeaderValue::from_static("close"));
        let response = accept_response(&upgrade, Some("chat"), Some("permessage-deflate"), &extra);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), Version::HTTP_2);
        let headers = response.headers();
        assert_eq!(headers[header::SEC_WEBSOCKET_PROTOCOL], "chat");
        assert_eq!(headers[header::SEC_WEBSOCKET_EXTENSIONS], "permessage-deflate");
        assert_eq!(headers["x-served-by"], "wsx");
        for absent in [header::SEC_WEBSOCKET_ACCEPT, header::UPGRADE, header::CONNECTION] {
            assert!(!headers.contains_key(&absent), "{absent}");
        }
        // A key sent anyway is ignored, not refused.
        let with_key = connect_request(&[("sec-websocket-version", "13"), ("sec-websocket-key", RFC_KEY)]);
        assert!(check_connect_request(&with_key, Some("websocket")).unwrap().key.is_empty());
    }

    #[test]
    fn extended_connect_refusals() {
        // Not CONNECT: 405 naming the method that works.
        let mut get = connect_request(CONNECT_OK);
        *get.method_mut() = Method::GET;
        let r = check_connect_request(&get, Some("websocket")).unwrap_err();
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.header("allow").unwrap(), "CONNECT");
        // CONNECT without :protocol: a tunnel request.
        let r = check_connect_request(&connect_request(CONNECT_OK), None).unwrap_err();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert!(r.body.contains(":protocol"), "{}", r.body);
        // Another protocol: 501, naming it.
        let r = check_connect_request(&connect_request(CONNECT_OK), Some("connect-udp")).unwrap_err();
        assert_eq!(r.status, StatusCode::NOT_IMPLEMENTED);
        assert!(r.body.contains("connect-udp"), "{}", r.body);
        // Sec-WebSocket-Version missing, wrong or repeated: 400 with the version we speak.
        for lines in [
            &[][..],
            &[("sec-websocket-version", "8")][..],
            &[("sec-websocket-version", "13"), ("sec-websocket-version", "13")][..],
        ] {
            let r = check_connect_request(&connect_request(lines), Some("websocket")).unwrap_err();
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{lines:?}");
            assert_eq!(r.header("sec-websocket-version").unwrap(), "13", "{lines:?}");
        }
        // HTTP/1.1 cannot carry an extended CONNECT; a path must be absolute.
        let mut h1 = connect_request(CONNECT_OK);
        *h1.version_mut() = Version::HTTP_11;
        assert_eq!(check_connect_request(&h1, Some("websocket")).unwrap_err().status, StatusCode::BAD_REQUEST);
        let mut no_path = connect_request(CONNECT_OK);
        *no_path.uri_mut() = "server.example.com:443".parse().unwrap();
        assert_eq!(check_connect_request(&no_path, Some("websocket")).unwrap_err().status, StatusCode::BAD_REQUEST);
        // The offers are parsed by the same code as HTTP/1.1's: the same refusals.
        for lines in [
            &[("sec-websocket-version", "13"), ("sec-websocket-protocol", "a b")][..],
            &[("sec-websocket-version", "13"), ("origin", "https://a"), ("origin", "https://b")][..],
        ] {
            let r = check_connect_request(&connect_request(lines), Some("websocket")).unwrap_err();
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{lines:?}");
        }
    }

    #[test]
    fn connect_handshake_request_and_response_checks() {
        let mut config = ClientRequestConfig {
            protocols: vec!["chat".into(), "echo".into()],
            extensions: vec!["permessage-deflate; client_max_window_bits".into()],
            origin: Some("https://example.com".into()),
            ..Default::default()
        };
        for (name, value) in
            [("host", "evil"), ("keep-alive", "5"), ("te", "gzip"), ("content-length", "0"), ("x-token", "t")]
        {
            config.headers.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        let hs = ConnectHandshake::new(&"ws://example.com:8080/chat?room=1".parse().unwrap(), config).unwrap();
        let request = hs.request();
        assert_eq!(request.method(), Method::CONNECT);
        assert_eq!(request.version(), Version::HTTP_2);
        assert_eq!(request.uri(), "http://example.com:8080/chat?room=1");
        let headers = request.headers();
        assert_eq!(headers[header::SEC_WEBSOCKET_VERSION], "13");
        assert_eq!(headers[header::SEC_WEBSOCKET_PROTOCOL], "chat, echo");
        assert_eq!(headers[header::ORIGIN], "https://example.com");
        assert_eq!(headers["x-token"], "t");
        for absent in ["host", "keep-alive", "te", "content-length", "sec-websocket-key", "upgrade", "connection"] {
            assert!(!headers.contains_key(absent), "{absent}");
        }
        let wss = ConnectHandshake::new(&"wss://example.com/".parse().unwrap(), Default::default()).unwrap();
        assert_eq!(wss.request().uri(), "https://example.com/");

        let response = |status: u16, lines: &[(&str, &str)]| {
            let mut r = Response::builder().status(status);
            for (n, v) in lines {
                r = r.header(*n, *v);
            }
            r.body(()).unwrap()
        };
        let ok = hs
            .check_response(response(
                200,
                &[("sec-websocket-protocol", "echo"), ("sec-websocket-extensions", "permessage-deflate")],
            ))
            .unwrap();
        assert_eq!(ok.protocol.as_deref(), Some("echo"));
        assert_eq!(ok.extensions.as_deref(), Some("permessage-deflate"));
        assert!(hs.check_response(response(200, &[])).unwrap().protocol.is_none());
        for status in [101, 201, 204, 400, 501] {
            match hs.check_response(response(status, &[])) {
                Err(HandshakeError::UnexpectedStatus { status: s, .. }) => assert_eq!(s.as_u16(), status),
                other => panic!("{status}: {other:?}"),
            }
        }
        assert!(matches!(
            hs.check_response(response(200, &[("sec-websocket-protocol", "other")])),
            Err(HandshakeError::UnexpectedProtocol(p)) if p == "other"
        ));
        assert!(matches!(
            hs.check_response(response(200, &[("sec-websocket-protocol", "chat, echo")])),
            Err(HandshakeError::UnexpectedProtocol(_))
        ));
        assert!(matches!(
            hs.check_response(response(200, &[("sec-websocket-extensions", "x-webkit-deflate-frame")])),
            Err(HandshakeError::UnexpectedExtension(e)) if e == "x-webkit-deflate-frame"
        ));
        // A content-length on the 200 would be enforced by the HTTP/2 library on the frames.
        for length in ["0", "10"] {
            match hs.check_response(response(200, &[("content-length", length)])) {
                Err(e @ HandshakeError::UnusableConnectResponse(_)) => {
                    assert!(e.to_string().contains("content-length"), "{e}");
                }
                other => panic!("content-length {length}: {other:?}"),
            }
        }
        assert!(hs.check_end_stream(false).is_ok());
        assert!(matches!(hs.check_end_stream(true), Err(HandshakeError::UnusableConnectResponse(_))));
        assert!(matches!(
            ConnectHandshake::new(&"http://example.com/".parse().unwrap(), Default::default()),
            Err(HandshakeError::InvalidUri(_))
        ));
    }

    #[test]
    fn refuses_post_with_405() {
        let r = check_request(&request_with("GET", Some("POST /chat HTTP/1.1"))).unwrap_err();
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.header("allow").unwrap(), "GET");
    }

    #[test]
    fn refuses_bad_connection_upgrade_host_http10_with_400() {
        for (prefix, replacement) in [
            ("Connection", Some("Connection: keep-alive")),
            ("Connection", None),
            ("Upgrade", Some("Upgrade: h2c")),
            ("Upgrade", None),
            ("Host", None),
            ("GET", Some("GET /chat HTTP/1.0")),
            ("GET", Some("GET * HTTP/1.1")),
        ] {
            let r = check_request(&request_with(prefix, replacement)).unwrap_err();
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{prefix} {replacement:?}");
            assert!(!r.body.is_empty());
        }
    }

    #[test]
    fn accepts_comma_lists_and_case_variants() {
        let mut lines = valid_request_lines();
        lines[2] = "upgrade: WebSocket".into();
        lines[3] = "connection: keep-alive, UPGRADE".into();
        lines.push("Sec-WebSocket-Protocol: a, b".into());
        lines.push("Sec-WebSocket-Protocol: c".into());
        lines.push("Sec-WebSocket-Extensions: foo; x=\"1,2\"".into());
        lines.push("Sec-WebSocket-Extensions: bar".into());
        let upgrade = check_request(&parse_request(&raw(&lines))).unwrap();
        assert_eq!(upgrade.protocols, ["a", "b", "c"]);
        assert_eq!(upgrade.extensions, ["foo; x=\"1,2\"", "bar"]);

        // Connection split across lines.
        let mut lines = valid_request_lines();
        lines[3] = "Connection: keep-alive".into();
        lines.push("Connection: Upgrade".into());
        assert!(check_request(&parse_request(&raw(&lines))).is_ok());
    }

    #[test]
    fn non_ascii_header_values_are_handled() {
        let mut text = raw(&valid_request_lines()).into_bytes();
        let tail = text.split_off(text.len() - 2);
        text.extend_from_slice(b"Origin: http://\xff\xfe.example\r\n");
        text.extend_from_slice(&tail);
        let mut buf = BytesMut::from(&text[..]);
        let req = read_request(&mut buf, &limits()).unwrap().unwrap();
        let r = check_request(&req).unwrap_err();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);

        let mut c = client("ws://example.com/", ClientRequestConfig::default());
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
               Sec-WebSocket-Accept: \xff\r\n\r\n"[..],
        );
        assert!(matches!(c.receive(&mut buf, &limits()), Err(HandshakeError::BadAccept)));
    }

    #[test]
    fn head_too_large_gives_431() {
        let mut lines = valid_request_lines();
        lines.push(format!("X-Big: {}", "a".repeat(20_000)));
        let text = raw(&lines);
        // Complete but too large.
        let mut buf = BytesMut::from(text.as_bytes());
        let err = read_request(&mut buf, &limits()).unwrap_err();
        assert!(matches!(err, HandshakeError::HeadTooLarge { limit: 16384 }));
        assert_eq!(buf.len(), text.len());
        let r = err.to_rejection().unwrap();
        assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        // Still incomplete when the limit is reached.
        let mut buf = BytesMut::from(&text.as_bytes()[..16384]);
        assert!(matches!(read_request(&mut buf, &limits()), Err(HandshakeError::HeadTooLarge { .. })));
        let mut buf = BytesMut::from(&text.as_bytes()[..16383]);
        assert!(read_request(&mut buf, &limits()).unwrap().is_none());

        // A head of exactly the limit is fine.
        let exact = raw(&valid_request_lines());
        let small = HandshakeLimits { max_head_bytes: exact.len(), ..limits() };
        let mut buf = BytesMut::from(exact.as_bytes());
        assert!(read_request(&mut buf, &small).unwrap().is_some());
        let tiny = HandshakeLimits { max_head_bytes: exact.len() - 1, ..limits() };
        let mut buf = BytesMut::from(exact.as_bytes());
        assert!(matches!(read_request(&mut buf, &tiny), Err(HandshakeError::HeadTooLarge { .. })));

        // Client side too.
        let mut c = client("ws://example.com/", ClientRequestConfig::default());
        let mut buf = BytesMut::from(&b"HTTP/1.1 101 Switching Protocols\r\n"[..]);
        buf.extend_from_slice(format!("X-Big: {}", "a".repeat(20_000)).as_bytes());
        assert!(matches!(c.receive(&mut buf, &limits()), Err(HandshakeError::HeadTooLarge { limit: 16384 })));
    }

    #[test]
    fn too_many_headers_gives_431() {
        let mut lines = valid_request_lines();
        for i in 0..70 {
            lines.push(format!("X-H{i}: v"));
        }
        let text = raw(&lines);
        let mut buf = BytesMut::from(text.as_bytes());
        let err = read_request(&mut buf, &limits()).unwrap_err();
        assert!(matches!(err, HandshakeError::TooManyHeaders { limit: 64 }));
        let r = err.to_rejection().unwrap();
        assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let mut out = BytesMut::new();
        r.write_to(&mut out);
        assert!(head_text(&out).starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));

        // Detected before the head is complete.
        let mut buf = BytesMut::from(&text.as_bytes()[..text.len() - 4]);
        assert!(matches!(read_request(&mut buf, &limits()), Err(HandshakeError::TooManyHeaders { .. })));

        let mut c = client("ws://example.com/", ClientRequestConfig::default());
        let many: Vec<String> = (0..70).map(|i| format!("X-H{i}: v")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let mut buf = response_101(&many);
        assert!(matches!(c.receive(&mut buf, &limits()), Err(HandshakeError::TooManyHeaders { limit: 64 })));
    }

    /// A head of nearly `max_head_bytes` with `max_headers` header lines.
    fn maximal_head(first_line: &str, limits: &HandshakeLimits, required: &[String]) -> Vec<u8> {
        let mut text = format!("{first_line}\r\n");
        for l in required {
            text.push_str(l);
            text.push_str("\r\n");
        }
        let fillers = limits.max_headers - required.len();
        let room = limits.max_head_bytes - text.len() - 2;
        let per_line = room / fillers;
        for i in 0..fillers {
            let name = format!("X-Fill-{i:03}: ");
            text.push_str(&name);
            text.push_str(&"v".repeat(per_line - name.len() - 2));
            text.push_str("\r\n");
        }
        text.push_str("\r\n");
        assert!(text.len() <= limits.max_head_bytes && text.len() > limits.max_head_bytes - fillers);
        text.into_bytes()
    }

    #[test]
    fn a_head_trickled_byte_by_byte_is_examined_in_linear_work() {
        let limits = limits();
        // Server role: a request head of nearly 16 KiB, one byte per call.
        let lines = valid_request_lines();
        let head = maximal_head(&lines[0], &limits, &lines[1..]);
        let mut reader = RequestReader::new();
        let mut buf = BytesMut::new();
        let mut request = None;
        for (i, &b) in head.iter().enumerate() {
            buf.put_u8(b);
            if let Some(r) = reader.read(&mut buf, &limits).unwrap() {
                assert_eq!(i, head.len() - 1, "complete before the last byte");
                request = Some(r);
            }
        }
        let request = request.expect("the head completes");
        assert!(check_request(&request).is_ok());
        assert!(buf.is_empty());
        // Re-parsing from byte 0 on every call costs about n²/2 (133 M bytes here); the
        // incremental scan searches each byte once and parses about 3n bytes in all (heads of
        // 1, 2, 4, … bytes, then the whole head once its end is there).
        let work = reader.scan.work;
        assert!(work <= 4 * head.len(), "examined {work} bytes for a head of {}", head.len());

        // Client role: the same for a response head.
        let mut c = client("ws://example.com/", ClientRequestConfig::default());
        let required = [
            "Upgrade: websocket".to_owned(),
            "Connection: Upgrade".to_owned(),
            format!("Sec-WebSocket-Accept: {RFC_ACCEPT}"),
        ];
        let head = maximal_head("HTTP/1.1 101 Switching Protocols", &limits, &required);
        let mut buf = BytesMut::new();
        let mut done = false;
        for &b in &head {
            buf.put_u8(b);
            done = c.receive(&mut buf, &limits).unwrap().is_some();
        }
        assert!(done && buf.is_empty());
        let work = c.scan.work;
        assert!(work <= 4 * head.len(), "examined {work} bytes for a head of {}", head.len());
    }

    /// The end of a head (CRLF or bare LF lines) is found wherever the reads cut it, and not
    /// before: the empty line is looked up from each `\n`, partly in bytes of an earlier call.
    #[test]
    fn the_end_of_a_head_is_found_across_any_cut() {
        let limits = limits();
        let crlf = "GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let lf = crlf.replace("\r\n", "\n");
        let mixed = format!("{}\n\r\n", crlf.trim_end_matches("\r\n"));
        for head in [crlf.to_owned(), lf, mixed] {
            let head = head.as_bytes();
            for cut in 0..head.len() {
                let mut reader = RequestReader::new();
                let mut buf = BytesMut::from(&head[..cut]);
                assert!(reader.read(&mut buf, &limits).unwrap().is_none(), "complete at {cut} of {head:?}");
                buf.extend_from_slice(&head[cut..]);
                let request =
                    reader.read(&mut buf, &limits).unwrap().unwrap_or_else(|| panic!("{head:?} cut at {cut}"));
                assert!(check_request(&request).is_ok() && buf.is_empty());
            }
        }
    }

    /// Blank lines before the request line look like the end of a head, but the parser skips
    /// them: the rest, trickled in, is still examined in linear work, and the head completes.
    #[test]
    fn blank_lines_before_a_trickled_head_do_not_make_it_quadratic() {
        let limits = limits();
        let lines = valid_request_lines();
        let mut head = b"\r\n\r\n".to_vec();
        head.extend(maximal_head(&lines[0], &limits, &lines[1..]).into_iter().take(limits.max_head_bytes - 4));
        // The cut-off head ends with its empty line again.
        head.truncate(head.len() - 200);
        head.extend_from_slice(b"\r\n\r\n");
        let mut reader = RequestReader::new();
        let mut buf = BytesMut::new();
        let mut done = false;
        for &b in &head {
            buf.put_u8(b);
            match reader.read(&mut buf, &limits) {
                Ok(Some(_)) => done = true,
                Ok(None) => {}
                // A filler line cut in the middle is still a valid header line; an error ends it.
                Err(e) => panic!("{e}"),
            }
        }
        assert!(done, "the head never completed");
        let work = reader.scan.work;
        assert!(work <= 4 * head.len(), "examined {work} bytes for a head of {}", head.len());
    }

    /// A zero head limit refuses any byte (rather than waiting for more forever).
    #[test]
    fn a_zero_head_limit_refuses_the_first_byte() {
        let limits = HandshakeLimits { max_head_bytes: 0, max_headers: 64 };
        let mut buf = BytesMut::from(&b"G"[..]);
        assert!(matches!(RequestReader::new().read(&mut buf, &limits), Err(HandshakeError::HeadTooLarge { .. })));
        assert!(RequestReader::new().read(&mut BytesMut::new(), &limits).unwrap().is_none());
    }

    #[test]
    fn huge_configured_limits_do_not_panic() {
        let huge = HandshakeLimits { max_head_bytes: 1 << 20, max_headers: 40_000 };
        let mut text = String::from("GET / HTTP/1.1\r\n");
        for _ in 0..33_000 {
            text.push_str("a:\r\n");
        }
        text.push_str("\r\n");
        let mut buf = BytesMut::from(text.as_bytes());
        assert!(matches!(read_request(&mut buf, &huge), Err(HandshakeError::TooManyHeaders { limit: 40_000 })));
    }

    #[test]
    fn malformed_request_gives_400() {
        let mut buf = BytesMut::from(&b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..]);
        let err = read_request(&mut buf, &limits()).unwrap_err();
        assert!(matches!(err, HandshakeError::Malformed(_)));
        assert_eq!(err.to_rejection().unwrap().status, StatusCode::BAD_REQUEST);
        assert!(HandshakeError::BadAccept.to_rejection().is_none());
    }

    #[test]
    fn rejection_serialization() {
        let mut r = Rejection::new(StatusCode::FORBIDDEN, "origin not allowed");
        r.headers.push((HeaderName::from_static("x-reason"), HeaderValue::from_static("origin")));
        r.headers.push((header::CONTENT_LENGTH, HeaderValue::from_static("999")));
        let mut out = BytesMut::new();
        r.write_to(&mut out);
        assert_eq!(
            head_text(&out),
            "HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 18\r\nConnection: close\r\nX-Reason: origin\r\n\r\n\
             origin not allowed"
        );
        let err = HandshakeError::from(r);
        assert!(err.to_string().contains("403"));
    }

    #[test]
    fn client_rejects_bad_accept() {
        let mut c = client("ws://example.com/", ClientRequestConfig::default());
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
               Connection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"[..],
        );
        let len = buf.len();
        assert!(matches!(c.receive(&mut buf, &limits()), Err(HandshakeError::BadAccept)));
        assert_eq!(buf.len(), len);
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
               Connection: Upgrade\r\n\r\n"[..],
        );
        assert!(matches!(c.receive(&mut buf, &limits()), Err(HandshakeError::BadAccept)));
    }

    #[test]
    fn client_rejects_non_101_and_keeps_body() {
        let mut c = client("ws://example.com/", ClientRequestConfig::default());
        let mut buf = BytesMut::from(&b"HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\n\r\nforbiddenEXTRA"[..]);
        match c.receive(&mut buf, &limits()) {
            Err(e @ HandshakeError::UnexpectedStatus { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("403"), "{msg}");
                assert!(msg.contains("forbidden"), "{msg}");
                let HandshakeError::UnexpectedStatus { status, headers, body } = e else { unreachable!() };
                assert_eq!(status, StatusCode::FORBIDDEN);
                assert_eq!(headers.get(header::CONTENT_LENGTH).map(|v| v.as_bytes()), Some(&b"9"[..]));
                assert_eq!(&body[..], b"forbidden");
            }
            other => panic!("unexpected {other:?}"),
        }
        // Body only partly arrived; no Content-Length; large body capped.
        let mut buf = BytesMut::from(&b"HTTP/1.1 404 Not Found\r\n\r\nno"[..]);
        match c.receive(&mut buf, &limits()) {
            Err(HandshakeError::UnexpectedStatus { status, body, .. }) => {
                assert_eq!(status, StatusCode::NOT_FOUND);
                assert_eq!(&body[..], b"no");
            }
            other => panic!("unexpected {other:?}"),
        }
        let mut buf = BytesMut::from(&b"HTTP/1.1 500 Internal Server Error\r\n\r\n"[..]);
        buf.extend_from_slice(&vec![b'x'; MAX_ERROR_BODY_BYTES + 1000]);
        match c.receive(&mut buf, &limits()) {
            Err(HandshakeError::UnexpectedStatus { body, .. }) => {
                assert_eq!(body.len(), MAX_ERROR_BODY_BYTES);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn client_protocol_selection() {
        let config = ClientRequestConfig { protocols: vec!["chat".into(), "superchat".into()], ..Default::default() };
        let mut c = client("ws://example.com/", config);
        // No protocol selected is allowed.
        let out = c.receive(&mut response_101(&[]), &limits()).unwrap().unwrap();
        assert_eq!(out.protocol, None);
        let out = c.receive(&mut response_101(&["Sec-WebSocket-Protocol: superchat"]), &limits()).unwrap().unwrap();
        assert_eq!(out.protocol.as_deref(), Some("superchat"));
        // Not offered.
        match c.receive(&mut response_101(&["Sec-WebSocket-Protocol: other"]), &limits()) {
            Err(HandshakeError::UnexpectedProtocol(p)) => assert_eq!(p, "other"),
            other => panic!("unexpected {other:?}"),
        }
        // More than one.
        assert!(matches!(
            c.receive(&mut response_101(&["Sec-WebSocket-Protocol: chat, superchat"]), &limits()),
            Err(HandshakeError::UnexpectedProtocol(_))
        ));
        assert!(matches!(
            c.receive(&mut response_101(&["Sec-WebSocket-Protocol: chat", "Sec-WebSocket-Protocol: chat"]), &limits()),
            Err(HandshakeError::UnexpectedProtocol(_))
        ));
        // Nothing offered, something selected.
        let mut c = client("ws://example.com/", ClientRequestConfig::default());
        assert!(matches!(
            c.receive(&mut response_101(&["Sec-WebSocket-Protocol: chat"]), &limits()),
            Err(HandshakeError::UnexpectedProtocol(_))
        ));
    }

    #[test]
    fn client_extension_selection() {
        let mut c = client("ws://example.com/", ClientRequestConfig::default());
        match c.receive(&mut response_101(&["Sec-WebSocket-Extensions: permessage-deflate"]), &limits()) {
            Err(HandshakeError::UnexpectedExtension(e)) => assert_eq!(e, "permessage-deflate"),
            other => panic!("unexpected {other:?}"),
        }
        let config = ClientRequestConfig {
            extensions: vec!["permessage-deflate; client_max_window_bits".into()],
            ..Default::default()
        };
        let mut c = client("ws://example.com/", config);
        let out = c
            .receive(
                &mut response_101(&["Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover"]),
                &limits(),
            )
            .unwrap()
            .unwrap();
        assert_eq!(out.extensions.as_deref(), Some("permessage-deflate; server_no_context_takeover"));
        assert!(matches!(
            c.receive(
                &mut response_101(&["Sec-WebSocket-Extensions: permessage-deflate, x-other; a=\"b,c\""]),
                &limits()
            ),
            Err(HandshakeError::UnexpectedExtension(e)) if e == "x-other"
        ));
    }

    #[test]
    fn client_rejects_missing_upgrade_and_connection() {
        let mut c = client("ws://example.com/", ClientRequestConfig::default());
        let accept = format!("Sec-WebSocket-Accept: {RFC_ACCEPT}\r\n");
        let resp =
            |lines: &str| BytesMut::from(format!("HTTP/1.1 101 Switching Protocols\r\n{lines}{accept}\r\n").as_bytes());
        assert!(matches!(
            c.receive(&mut resp("Connection: Upgrade\r\n"), &limits()),
            Err(HandshakeError::MissingUpgrade)
        ));
        assert!(matches!(
            c.receive(&mut resp("Upgrade: h2c\r\nConnection: Upgrade\r\n"), &limits()),
            Err(HandshakeError::MissingUpgrade)
        ));
        assert!(matches!(
            c.receive(&mut resp("Upgrade: websocket\r\n"), &limits()),
            Err(HandshakeError::MissingConnectionUpgrade)
        ));
        assert!(matches!(
            c.receive(&mut resp("Upgrade: websocket\r\nConnection: keep-alive\r\n"), &limits()),
            Err(HandshakeError::MissingConnectionUpgrade)
        ));
        let out = c.receive(&mut resp("UPGRADE: WebSocket\r\nconnection: keep-alive, upgrade\r\n"), &limits()).unwrap();
        assert!(out.is_some());
    }

    #[test]
    fn client_malformed_response() {
        let mut c = client("ws://example.com/", ClientRequestConfig::default());
        let mut buf = BytesMut::from(&b"SSH-2.0-OpenSSH_9.6\r\n"[..]);
        assert!(matches!(c.receive(&mut buf, &limits()), Err(HandshakeError::Malformed(_))));
        let mut buf = BytesMut::new();
        assert!(c.receive(&mut buf, &limits()).unwrap().is_none());
    }

    proptest! {
        #[test]
        fn read_request_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048),
                                     max_head in 0usize..4096, max_headers in 0usize..80) {
            let l = HandshakeLimits { max_head_bytes: max_head, max_headers };
            let mut buf = BytesMut::from(&bytes[..]);
            if let Ok(Some(req)) = read_request(&mut buf, &l) {
                let _ = check_request(&req);
            }
            prop_assert!(buf.len() <= bytes.len());
        }

        #[test]
        fn read_request_never_panics_on_near_valid(lines in proptest::collection::vec(
            "[A-Za-z-]{1,24}: [ -~\\t\\x80-\\xff]{0,40}", 0..12)) {
            let mut text = String::from("GET /chat HTTP/1.1\r\n");
            for l in &lines {
                text.push_str(l);
                text.push_str("\r\n");
            }
            text.push_str("\r\n");
            let mut buf = BytesMut::from(text.as_bytes());
            if let Ok(Some(req)) = read_request(&mut buf, &HandshakeLimits::default()) {
                if let Ok(up) = check_request(&req) {
                    let resp = accept_response(&up, up.protocols.first().map(String::as_str),
                        up.extensions.first().map(String::as_str), &HeaderMap::new());
                    let mut out = BytesMut::new();
                    write_response(&resp, &mut out);
                }
            }
        }

        #[test]
        fn client_receive_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048),
                                       max_head in 0usize..4096, max_headers in 0usize..80) {
            let l = HandshakeLimits { max_head_bytes: max_head, max_headers };
            let config = ClientRequestConfig {
                protocols: vec!["chat".into()],
                extensions: vec!["permessage-deflate".into()],
                ..Default::default()
            };
            let mut c = client("ws://example.com/", config);
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = c.receive(&mut buf, &l);
            let mut prefixed = response_101(&[]);
            prefixed.truncate(prefixed.len() - 2);
            prefixed.extend_from_slice(&bytes);
            let _ = c.receive(&mut prefixed, &l);
        }
    }
}
