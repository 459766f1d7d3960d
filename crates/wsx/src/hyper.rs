//! WebSockets on a hyper 1.x server (feature `hyper`): upgrade a request hyper received to a
//! wsx [`WebSocket`].
//!
//! The request goes through the same checks as with [`accept`](crate::accept) (the same code:
//! [`wsx_proto::handshake::check_request`]), and the answer is built by the same function as
//! [`Incoming::accept`](crate::Incoming::accept)'s: configuration validated, the chosen
//! subprotocol checked against the offer, permessage-deflate negotiated, the same 101 response.
//! Limits, timers and compression come from the same [`WebSocketConfig`].
//!
//! 1. [`Upgrade::new`] checks the request and takes hyper's upgrade handle out of it; a request
//!    that is not a valid upgrade gets the [`Rejection`] that `accept` would send (400, 405,
//!    426), which [`rejection_response`] turns into a response.
//! 2. [`Upgrade::accept`] decides the subprotocol and extra headers and returns the
//!    `101 Switching Protocols` response for the service to return, and an [`Upgrading`].
//! 3. Awaiting the [`Upgrading`] (in a task of its own: hyper hands the connection over only
//!    once the service has returned the response) gives the [`WebSocket`]. The configuration's
//!    handshake timeout bounds the time from [`Upgrade::new`] to then.
//!
//! ```no_run
//! use std::convert::Infallible;
//!
//! use http::{Request, Response};
//! use hyper::body::Incoming;
//! use wsx::hyper::{rejection_response, Upgrade};
//!
//! async fn service(mut request: Request<Incoming>) -> Result<Response<String>, Infallible> {
//!     let upgrade = match Upgrade::new(&mut request) {
//!         Ok(upgrade) => upgrade,
//!         Err(rejection) => return Ok(rejection_response(&rejection)),
//!     };
//!     let config = wsx::WebSocketConfig::default();
//!     match upgrade.accept(wsx::Accept::default(), &config) {
//!         Ok((response, upgrading)) => {
//!             tokio::spawn(async move {
//!                 let Ok(mut ws) = upgrading.await else { return };
//!                 while let Some(Ok(msg)) = ws.recv().await {
//!                     if msg.is_data() && ws.feed(msg).await.is_err() {
//!                         break;
//!                     }
//!                 }
//!             });
//!             Ok(response.map(|()| String::new()))
//!         }
//!         Err(rejection) => Ok(rejection_response(&rejection)),
//!     }
//! }
//! ```
//!
//! Serve it with `hyper::server::conn::http1::Builder::new().serve_connection(io,
//! service_fn(service)).with_upgrades()`: without `with_upgrades` hyper never hands the
//! connection over, and the [`Upgrading`] fails when the handshake timeout passes.
//!
//! # HTTP/2 (feature `http2`)
//!
//! Browsers open a WebSocket over an HTTP/2 connection they already have to the same origin
//! (RFC 8441) when the server advertised `SETTINGS_ENABLE_CONNECT_PROTOCOL`: the request is an
//! extended `CONNECT` (`:method CONNECT`, `:protocol websocket`, no `Sec-WebSocket-Key`, no
//! `Upgrade`). The same service handles it: [`Upgrade::new`] checks an HTTP/2 request with
//! [`wsx_proto::handshake::check_connect_request`] (its refusals: 405 for another method, 400
//! for a `CONNECT` without `:protocol`, 501 for another `:protocol`, 400 with
//! `sec-websocket-version: 13` for a missing or other version), [`Upgrade::accept`] answers
//! `200` instead of `101` (with the selected subprotocol and extensions, no
//! `Sec-WebSocket-Accept`), and the [`Upgrading`] gives a [`WebSocket`] over the HTTP/2 stream
//! ([`UpgradedStream::Upgraded`]): the same frames, masking and limits as over TCP. Closing the
//! WebSocket ends the stream with END_STREAM; a stream the client resets (RST_STREAM) ends the
//! connection abnormally (close code 1006, [`Error::AbnormalClosure`] or [`Error::Io`]).
//!
//! The server must advertise the setting, or browsers never send the request:
//!
//! ```no_run
//! # use std::convert::Infallible;
//! # use http::{Request, Response};
//! # async fn service(request: Request<hyper::body::Incoming>) -> Result<Response<String>, Infallible> {
//! #     unimplemented!()
//! # }
//! use hyper::service::service_fn;
//! use hyper_util::rt::{TokioExecutor, TokioIo};
//!
//! # async fn run() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
//! loop {
//!     let (tcp, _) = listener.accept().await?;
//!     // Over TLS, serve the rustls stream instead, with ALPN `h2` (and `http/1.1`).
//!     tokio::spawn(async move {
//!         let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
//!         // Stream window 1 MiB (hyper's default), connection window 8 MiB: with hyper's
//!         // default of 1 MiB for both, one WebSocket whose application stops reading holds
//!         // the whole connection's window, and every other stream on it stalls.
//!         builder.enable_connect_protocol().initial_connection_window_size(8 << 20);
//!         let _ = builder.serve_connection(TokioIo::new(tcp), service_fn(service)).await;
//!     });
//! }
//! # }
//! ```
//!
//! hyper-util's `auto` server (HTTP/1.1 and HTTP/2 on one port) has the same switch:
//! `builder.http2().enable_connect_protocol()`, with `serve_connection_with_upgrades`;
//! `axum::serve` turns it on itself.
//!
//! # The stream
//!
//! hyper hands over an [`Upgraded`]: the connection's stream behind a boxed trait object, with
//! the bytes hyper read past the request in front of it. When the stream under it is a
//! `TcpStream` (hyper's HTTP/1 server or hyper-util's `auto` server, which `axum::serve` runs,
//! over `TokioIo<TcpStream>`), wsx takes the `TcpStream` back out and puts those bytes at the
//! front of its own read buffer, so the connection runs on the socket itself
//! ([`UpgradedStream::Tcp`]). Any other stream (TLS, a Unix socket, a test's in-memory pipe)
//! stays an [`UpgradedStream::Upgraded`], which works the same at the cost of a call through
//! hyper's trait object per read and write (`docs/benchmarks.md` has the measurement).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use ::hyper::upgrade::{OnUpgrade, Upgraded};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{request, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Timeout};
use wsx_proto::handshake::{self, HandshakeError, Rejection, UpgradeRequest};
use wsx_proto::Connection;

use crate::server::{answer, Answer};
use crate::{Accept, Error, WebSocket, WebSocketConfig};

/// The stream of an upgraded connection: the TCP socket itself when hyper's stream could be
/// taken back out of its [`Upgraded`], else the [`Upgraded`] (see the [module docs](self)).
/// Reads and writes, vectored writes included, go straight to the variant's stream.
#[derive(Debug)]
#[non_exhaustive]
pub enum UpgradedStream {
    /// The connection's TCP socket.
    Tcp(TcpStream),
    /// hyper's upgraded stream, for any other transport (TLS, for one).
    Upgraded(TokioIo<Upgraded>),
}

impl UpgradedStream {
    /// Takes the stream out of hyper's [`Upgraded`], and the bytes hyper had read past the
    /// request (the client's first frames), which must be read before anything else. The
    /// `TcpStream` comes out when hyper served it as a `TokioIo<TcpStream>`, directly or through
    /// hyper-util's `auto` server; otherwise the `Upgraded` is kept whole, with those bytes
    /// still inside (and the returned bytes are empty).
    pub fn from_upgraded(upgraded: Upgraded) -> (Self, Bytes) {
        let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => return (Self::Tcp(parts.io.into_inner()), parts.read_buf),
            Err(upgraded) => upgraded,
        };
        match hyper_util::server::conn::auto::upgrade::downcast::<TokioIo<TcpStream>>(upgraded) {
            Ok(parts) => (Self::Tcp(parts.io.into_inner()), parts.read_buf),
            Err(upgraded) => (Self::Upgraded(TokioIo::new(upgraded)), Bytes::new()),
        }
    }
}

impl AsyncRead for UpgradedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Upgraded(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpgradedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Upgraded(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Upgraded(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(s) => s.is_write_vectored(),
            Self::Upgraded(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Upgraded(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Upgraded(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A checked upgrade request, with hyper's handle on its connection: the first step (see the
/// [module docs](self)).
#[derive(Debug)]
pub struct Upgrade {
    upgrade: UpgradeRequest,
    on_upgrade: OnUpgrade,
    started: Instant,
    /// The request head's size as it was on the wire (method, target, headers; hyper does not
    /// keep the raw head) and its header count, held to the configuration's
    /// [`HandshakeLimits`](wsx_proto::handshake::HandshakeLimits) in `accept`, as `wsx::accept`
    /// holds the head it reads.
    head_bytes: usize,
    header_count: usize,
}

/// Whether a request arrived over HTTP/2, and so must be an extended CONNECT (RFC 8441) to open
/// a WebSocket. Without the `http2` feature hyper cannot serve HTTP/2, and every request is
/// checked as an HTTP/1.1 upgrade.
fn is_http2(version: http::Version) -> bool {
    cfg!(feature = "http2") && version >= http::Version::HTTP_2
}

/// The value of the request's `:protocol` pseudo-header, which hyper keeps as the
/// `hyper::ext::Protocol` extension.
#[cfg(feature = "http2")]
fn connect_protocol(extensions: &http::Extensions) -> Option<&str> {
    extensions.get::<::hyper::ext::Protocol>().map(::hyper::ext::Protocol::as_str)
}

#[cfg(not(feature = "http2"))]
fn connect_protocol(_: &http::Extensions) -> Option<&str> {
    None
}

/// Whether a request head asks for a WebSocket, as opposed to plain HTTP: an HTTP/1.1 request
/// with `Upgrade: websocket`, or (feature `http2`) an HTTP/2 `CONNECT`. [`Upgrade::new`] then
/// says whether it is a valid one.
pub fn is_websocket_request(head: &request::Parts) -> bool {
    if is_http2(head.version) {
        head.method == http::Method::CONNECT
    } else {
        handshake::is_upgrade_headers(&head.headers)
    }
}

/// The size a request head had on the wire, give or take the whitespace hyper dropped.
fn head_size(method: &http::Method, uri: &http::Uri, headers: &http::HeaderMap) -> usize {
    let line = method.as_str().len() + 1 + uri.to_string().len() + " HTTP/1.1\r\n".len();
    let fields: usize = headers.iter().map(|(name, value)| name.as_str().len() + 2 + value.len() + 2).sum();
    line + fields + 2
}

impl Upgrade {
    /// Checks `request` as [`accept`](crate::accept) does and takes hyper's upgrade handle
    /// (`hyper::upgrade::OnUpgrade`) out of its extensions. `Err` is the answer to send instead:
    /// what `accept` would send for that request (400, 405, 426 with their bodies), or
    /// `500 Internal Server Error` when the request carries no upgrade handle (it did not come
    /// from a hyper server). The handshake timeout counts from here.
    ///
    /// With the `http2` feature, a request that came over HTTP/2 must be an extended `CONNECT`
    /// (RFC 8441) instead, checked by [`wsx_proto::handshake::check_connect_request`] with the
    /// `:protocol` hyper keeps in its `hyper::ext::Protocol` extension (see the [module
    /// docs](self#http2-feature-http2) for its refusals).
    pub fn new<B>(request: &mut Request<B>) -> Result<Self, Rejection> {
        let upgrade = if is_http2(request.version()) {
            handshake::check_connect_request(request, connect_protocol(request.extensions()))?
        } else {
            handshake::check_request(request)?
        };
        let size = (head_size(request.method(), request.uri(), request.headers()), request.headers().len());
        Self::with_handle(upgrade, request.extensions_mut().remove::<OnUpgrade>(), size)
    }

    /// [`new`](Self::new) for a request head split from its body (what an axum extractor sees).
    pub fn from_head(head: &mut request::Parts) -> Result<Self, Rejection> {
        let upgrade = if is_http2(head.version) {
            handshake::check_connect_head(head, connect_protocol(&head.extensions))?
        } else {
            handshake::check_request_head(head)?
        };
        let size = (head_size(&head.method, &head.uri, &head.headers), head.headers.len());
        Self::with_handle(upgrade, head.extensions.remove::<OnUpgrade>(), size)
    }

    fn with_handle(
        upgrade: UpgradeRequest,
        on_upgrade: Option<OnUpgrade>,
        (head_bytes, header_count): (usize, usize),
    ) -> Result<Self, Rejection> {
        let Some(on_upgrade) = on_upgrade else {
            return Err(Rejection::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "this server cannot upgrade the connection (the request carries no hyper upgrade handle)",
            ));
        };
        Ok(Self { upgrade, on_upgrade, started: Instant::now(), head_bytes, header_count })
    }

    /// What the client asked for: offered subprotocols (in its order of preference), extension
    /// offers, `Origin`.
    pub fn request(&self) -> &UpgradeRequest {
        &self.upgrade
    }

    /// The `431` that [`accept`](Self::accept) would answer for a head over `limits` (too many
    /// header fields, or too many bytes), without accepting anything: a server that spends
    /// something on admission (a rate-limit token, a connection to a backend) checks this
    /// first, so that an oversized request costs it nothing.
    pub fn check_head(&self, limits: &handshake::HandshakeLimits) -> Result<(), Rejection> {
        let too_large = if self.header_count > limits.max_headers {
            Some(HandshakeError::TooManyHeaders { limit: limits.max_headers })
        } else if self.head_bytes > limits.max_head_bytes {
            Some(HandshakeError::HeadTooLarge { limit: limits.max_head_bytes })
        } else {
            None
        };
        match too_large.and_then(|e| e.to_rejection()) {
            Some(rejection) => Err(rejection),
            None => Ok(()),
        }
    }

    /// Accepts the upgrade with the subprotocol and extra headers of `accept` and the limits,
    /// timers and compression of `config`: returns the `101 Switching Protocols` response (for
    /// an HTTP/2 extended `CONNECT`, `200 OK`), which the service must return, and the [`Upgrading`] that becomes the connection once
    /// hyper has sent it. `Err` is the answer to send instead, as
    /// [`Incoming::accept`](crate::Incoming::accept) would: `431` for a head over the limits of
    /// `config.proto.handshake` (hyper's own limits apply first, while it reads the head), `500`
    /// for a configuration that fails
    /// [`Config::validate`](wsx_proto::Config::validate) (logged at `error` level with the
    /// reason) or for a subprotocol the client did not offer.
    pub fn accept(self, accept: Accept, config: &WebSocketConfig) -> Result<(Response<()>, Upgrading), Rejection> {
        self.check_head(&config.proto.handshake)?;
        let Answer { response, conn, protocol, extensions } =
            answer(&self.upgrade, accept, config).map_err(|refusal| {
                if let Error::Config(e) = &refusal.error {
                    tracing::error!(error = %e, "WebSocket upgrade refused: invalid configuration");
                }
                refusal.rejection
            })?;
        let timeout = config.proto.handshake_timeout;
        let deadline = self.started.checked_add(timeout).unwrap_or_else(far_future);
        let upgrading = Upgrading {
            on_upgrade: Box::pin(tokio::time::timeout_at(deadline, self.on_upgrade)),
            timeout,
            open: Some((conn, protocol, extensions)),
        };
        Ok((response, upgrading))
    }
}

/// About 30 years from now: a deadline for a timeout too large to add to `Instant::now()`.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// An accepted upgrade waiting for hyper to hand the connection (or the HTTP/2 stream) over: a future of the
/// [`WebSocket`]. Fails with [`Error::HandshakeTimeout`] when the configuration's handshake
/// timeout passes first (counted from [`Upgrade::new`]: a client that stops reading before the
/// 101 response has gone out cannot hold the task), and with [`Error::Io`] when hyper could
/// not upgrade (the connection closed, or it was served without `with_upgrades`).
///
/// **Cancel safety**: dropping it drops the connection.
#[must_use = "the connection is handed over only to a polled Upgrading"]
pub struct Upgrading {
    on_upgrade: Pin<Box<Timeout<OnUpgrade>>>,
    timeout: Duration,
    open: Option<(Connection, Option<String>, Option<String>)>,
}

impl std::fmt::Debug for Upgrading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrading").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl std::future::Future for Upgrading {
    type Output = Result<WebSocket<UpgradedStream>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let upgraded = match std::task::ready!(self.on_upgrade.as_mut().poll(cx)) {
            Ok(Ok(upgraded)) => upgraded,
            Ok(Err(e)) => return Poll::Ready(Err(Error::Io(io::Error::other(e)))),
            Err(_) => return Poll::Ready(Err(Error::HandshakeTimeout(self.timeout))),
        };
        let Some((conn, protocol, extensions)) = self.open.take() else {
            return Poll::Ready(Err(Error::Closed));
        };
        let (stream, leftover) = UpgradedStream::from_upgraded(upgraded);
        let leftover = if leftover.is_empty() { BytesMut::new() } else { BytesMut::from(leftover) };
        Poll::Ready(Ok(WebSocket::from_parts(stream, conn, leftover, protocol, extensions)))
    }
}

/// The HTTP response for a [`Rejection`]: its status and extra headers, a
/// `Content-Type: text/plain; charset=utf-8` unless it sets one, and its body (the same answer
/// [`accept`](crate::accept) writes, less the `Connection: close`, which is hyper's to decide).
pub fn rejection_response(rejection: &Rejection) -> Response<String> {
    let mut response = Response::new(rejection.body.clone());
    *response.status_mut() = rejection.status;
    let headers = response.headers_mut();
    for (name, value) in &rejection.headers {
        if name == header::CONTENT_LENGTH || name == header::CONNECTION || name == header::TRANSFER_ENCODING {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    }
    response
}
