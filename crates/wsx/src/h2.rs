//! The client side of WebSockets over HTTP/2 (RFC 8441; feature `http2`): several WebSockets
//! on one HTTP/2 connection, each on a stream of its own.
//!
//! 1. [`Http2Connection::handshake`] starts HTTP/2 on a connected stream (or [`connect`] /
//!    `connect_tls` open one: TCP, then TLS with ALPN `h2` for `wss://`), waits for the
//!    server's SETTINGS and fails with [`HandshakeError::ConnectProtocolDisabled`] when it did
//!    not advertise `SETTINGS_ENABLE_CONNECT_PROTOCOL` (such a server takes WebSockets over
//!    HTTP/1.1 only: use [`ClientBuilder`](crate::ClientBuilder)).
//! 2. [`Http2Connection::open`] sends an extended `CONNECT` (`:protocol websocket`,
//!    `sec-websocket-version: 13`, the offered subprotocols and extensions; no key) on a new
//!    stream, checks the server's `200` and what it selected with the same code as the
//!    HTTP/1.1 handshake ([`ConnectHandshake`]), and returns a [`WebSocket`] over the stream
//!    ([`Http2Stream`]): the same [`wsx_proto::Connection`], frames and masking as over TCP.
//!    The handle is cheap to clone; each clone opens WebSockets on the same connection.
//!
//! ```no_run
//! # async fn run() -> Result<(), wsx::Error> {
//! use wsx::h2::{connect, Http2Config};
//! use wsx::proto::handshake::ClientRequestConfig;
//!
//! let h2 = connect("ws://127.0.0.1:8080/", &Http2Config::default()).await?;
//! let config = wsx::WebSocketConfig::default();
//! let (mut chat, _) = h2.open("ws://127.0.0.1:8080/chat", ClientRequestConfig::default(), &config).await?;
//! let (mut feed, _) = h2.open("ws://127.0.0.1:8080/feed", ClientRequestConfig::default(), &config).await?;
//! chat.send_text("hello").await?;
//! if let Some(msg) = feed.recv().await {
//!     println!("{:?}", msg?);
//! }
//! chat.close(wsx::CloseCode::NORMAL, "done").await?;
//! # Ok(()) }
//! ```
//!
//! # Flow control and buffers
//!
//! HTTP/2's flow control is the backpressure, per stream: a WebSocket whose application stops
//! reading stops releasing its stream's receive window, so the server stops sending on that
//! stream only, while the others go on. What each side may buffer is bounded:
//!
//! * receiving: at most the stream window per WebSocket ([`Http2Config::stream_window`],
//!   default 256 KiB), and at most the connection window for all of them
//!   ([`Http2Config::connection_window`], default 4 MiB: sixteen streams' worth, so that a
//!   few WebSockets nobody reads do not stall the rest). Capacity is released as the
//!   WebSocket reads the bytes into its own read buffer.
//! * sending: a write waits for the stream's send window (the server's stream window) and
//!   hands h2 at most [`Http2Config::max_send_buffer`] (default 256 KiB) per stream; the
//!   WebSocket's own output above that waits at its high-water mark as over TCP.
//!
//! Every wait has a deadline: [`Http2Config::handshake_timeout`] bounds the HTTP/2 handshake
//! (the server's SETTINGS included), and the [`WebSocketConfig`]'s handshake timeout bounds
//! [`Http2Connection::open`] (a free stream slot, the `CONNECT` and its answer).
//!
//! # Ends
//!
//! Closing the WebSocket (the close handshake, then the transport's shutdown) ends our side
//! of the stream with END_STREAM. A WebSocket dropped without that resets its stream
//! (RST_STREAM CANCEL). A stream the server resets, or that our HTTP/2 layer resets because
//! the server broke HTTP/2's rules (it overran the stream's window, say), ends the WebSocket
//! abnormally: `recv` returns [`Error::Io`] (an `io::ErrorKind::ConnectionReset` naming the
//! reason and which side reset the stream) or [`Error::AbnormalClosure`], both close code 1006.
//!
//! The server side, on the `h2` crate directly, is [`server`]; on hyper, [`wsx::hyper`](crate::hyper).
//!
//! # From `ClientBuilder`
//!
//! [`ClientBuilder::http2`](crate::ClientBuilder::http2) makes `connect()` try HTTP/2 first
//! ([`Http2Mode`]), through the builder's proxy if it has one, and fall back to HTTP/1.1 as
//! [`Http2Fallback`] says; the response's extensions carry an [`Http2Outcome`] saying which
//! protocol carried the WebSocket. [`connect`] and `connect_tls` here connect directly (no
//! proxy); use `ClientBuilder` for one WebSocket through a proxy.

pub mod server;

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{Response, Uri};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use wsx_proto::deflate::PerMessageDeflate;
use wsx_proto::handshake::{
    ClientRequestConfig, ConnectHandshake, HandshakeError, CONNECT_PROTOCOL, MAX_ERROR_BODY_BYTES,
};
use wsx_proto::Connection;

use crate::io::now;
use crate::rng::OsRandom;
use crate::{Error, WebSocket, WebSocketConfig};

/// Settings of an HTTP/2 connection that carries WebSockets: flow-control windows, the send
/// buffer, the handshake timeout (see the [module docs](self#flow-control-and-buffers)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Http2Config {
    /// Our receive window per stream (SETTINGS_INITIAL_WINDOW_SIZE), in bytes: the most a
    /// WebSocket's server may send before the application reads. Default 256 KiB; from 1 to
    /// [`MAX_WINDOW`] (2^31 − 1, HTTP/2's largest window). Larger windows carry more per round
    /// trip on long paths, at the cost of as much memory per WebSocket that is not read.
    pub stream_window: u32,
    /// Our receive window for the whole connection, in bytes: the most all streams together
    /// may have unread. Default 4 MiB; from 1 to [`MAX_WINDOW`]. Keep it several stream
    /// windows large, or one WebSocket that is not read stalls every other one on the
    /// connection.
    pub connection_window: u32,
    /// The most h2 buffers for sending per stream, in bytes. Default 256 KiB; from 1 to
    /// `u32::MAX`.
    pub max_send_buffer: usize,
    /// How long the HTTP/2 handshake may take, the server's SETTINGS included (and the TCP and
    /// TLS handshakes in [`connect`] and `connect_tls`). Default 10 s; above 0.
    /// [`ClientBuilder`](crate::ClientBuilder) does not use it: its own handshake timeout
    /// bounds its whole `connect`.
    pub handshake_timeout: Duration,
}

/// The largest HTTP/2 flow-control window, 2^31 − 1 bytes (RFC 9113 §6.9.1): the most
/// [`Http2Config::stream_window`] and [`Http2Config::connection_window`] may be.
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Whether [`ClientBuilder::connect`](crate::ClientBuilder::connect) uses HTTP/2 (set with
/// [`ClientBuilder::http2`](crate::ClientBuilder::http2)).
///
/// | mode | `wss://` | `ws://` |
/// | --- | --- | --- |
/// | `Off` (default) | ALPN `http/1.1`, HTTP/1.1 | HTTP/1.1 |
/// | `Prefer` | ALPN `h2,http/1.1`: the server's choice (see below) | HTTP/1.1 (no h2c: a cleartext server would not expect HTTP/2 unasked) |
/// | `Only` | ALPN `h2`; no protocol chosen is [`Http2Error::NotNegotiated`] (a server with ALPN but not `h2` refuses the TLS handshake: `Error::Tls`) | HTTP/2 with prior knowledge (h2c) |
///
/// With `Prefer`, when the server chooses `h2` the client waits for its SETTINGS (within
/// the builder's handshake timeout): if they enable the extended CONNECT protocol
/// (`SETTINGS_ENABLE_CONNECT_PROTOCOL`, RFC 8441), the WebSocket is a stream of that
/// connection; if not, [`Http2Fallback`] decides (a new HTTP/1.1 connection by default). When
/// the server chooses `http/1.1`, or no protocol, the WebSocket is an HTTP/1.1 upgrade on
/// that same TLS connection. With `Only`, a server without the setting is
/// [`HandshakeError::ConnectProtocolDisabled`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Http2Mode {
    /// HTTP/1.1 only.
    #[default]
    Off,
    /// HTTP/2 for `wss://` when the server offers it by ALPN and accepts WebSockets on it;
    /// HTTP/1.1 otherwise, and always for `ws://`.
    Prefer,
    /// HTTP/2 only: ALPN `h2` for `wss://`, prior knowledge (h2c) for `ws://`. Never falls back.
    Only,
}

/// What [`Http2Mode::Prefer`] does when the server chose `h2` by ALPN but did not enable the
/// extended CONNECT protocol (set with
/// [`ClientBuilder::http2_fallback`](crate::ClientBuilder::http2_fallback)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Http2Fallback {
    /// Close that connection and open a new one (TCP, through the proxy if any, and TLS with
    /// ALPN `http/1.1` only) for an HTTP/1.1 upgrade. The default: a browser does the same.
    #[default]
    Http1,
    /// Fail with [`HandshakeError::ConnectProtocolDisabled`] (one connection, no second try).
    Fail,
}

/// Which protocol carried a WebSocket that
/// [`ClientBuilder::connect`](crate::ClientBuilder::connect) opened with an [`Http2Mode`]
/// other than `Off`: in the extensions of the response it returns
/// (`response.extensions().get::<Http2Outcome>()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Http2Outcome {
    /// HTTP/2: the WebSocket is the extended CONNECT stream with this id
    /// (`MaybeTlsStream::Http2`; the response's version is `HTTP/2.0`).
    Http2 {
        /// The HTTP/2 stream's id.
        stream_id: u32,
    },
    /// HTTP/1.1 on the same connection: the server chose `http/1.1` by ALPN (or no protocol),
    /// or the URL is `ws://` with [`Http2Mode::Prefer`].
    Http1,
    /// HTTP/1.1 on a second connection: the server chose `h2` but did not enable the extended
    /// CONNECT protocol ([`Http2Fallback::Http1`]).
    Http1Fallback,
}

impl Http2Config {
    /// Checks that the settings can be used: windows from 1 to [`MAX_WINDOW`], a send buffer
    /// from 1 to `u32::MAX`, a handshake timeout above 0. [`connect`], `connect_tls` and
    /// [`Http2Connection::handshake`] call it first ([`Error::Config`]; nothing is sent).
    pub fn validate(&self) -> Result<(), wsx_proto::ConfigError> {
        let checks: [(bool, &'static str); 4] = [
            ((1..=MAX_WINDOW).contains(&self.stream_window), "Http2Config::stream_window must be from 1 to 2^31 - 1"),
            (
                (1..=MAX_WINDOW).contains(&self.connection_window),
                "Http2Config::connection_window must be from 1 to 2^31 - 1",
            ),
            (
                self.max_send_buffer > 0 && u32::try_from(self.max_send_buffer).is_ok(),
                "Http2Config::max_send_buffer must be from 1 to u32::MAX",
            ),
            (!self.handshake_timeout.is_zero(), "Http2Config::handshake_timeout must be above 0"),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, why)) => Err(wsx_proto::ConfigError(why)),
            None => Ok(()),
        }
    }
}

impl Default for Http2Config {
    fn default() -> Self {
        Self {
            stream_window: 256 * 1024,
            connection_window: 4 * 1024 * 1024,
            max_send_buffer: 256 * 1024,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// What went wrong with HTTP/2 itself, under the WebSocket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Http2Error {
    /// The TLS server did not choose `h2` by ALPN: it speaks HTTP/1.1 only there (use
    /// [`ClientBuilder`](crate::ClientBuilder)). A server that does ALPN but not `h2` (rustls,
    /// for one) refuses the TLS handshake itself: [`Error::Tls`] with the
    /// `no_application_protocol` alert.
    #[error("the server did not choose h2 by ALPN (it chose {})", .0.as_deref().unwrap_or("nothing"))]
    NotNegotiated(Option<String>),
    /// The HTTP/2 connection or the WebSocket's stream failed: a protocol error, a GOAWAY, a
    /// reset before the WebSocket opened, or the transport under it.
    #[error("HTTP/2: {0}")]
    Protocol(#[from] h2::Error),
}

/// A handle on an HTTP/2 connection that opens WebSockets on it (see the [module
/// docs](self)). Clones share the connection; it closes when the last clone and the last
/// WebSocket on it are gone.
#[derive(Debug, Clone)]
pub struct Http2Connection {
    send: SendRequest<Bytes>,
    /// Whether the connection is over TLS, when we made it (`connect`, `connect_tls`): `open`
    /// then takes `wss://` URLs only, or `ws://` only. `None` after `handshake` on a stream
    /// the caller made.
    secure: Option<bool>,
    /// The TCP peer's address, when we made the connection (through a proxy: the proxy's).
    peer_addr: Option<SocketAddr>,
}

/// Opens an HTTP/2 connection to the server of `url` for WebSockets: `ws://` over TCP with
/// prior knowledge (h2c; the server must speak HTTP/2 without being asked), `wss://` over TLS
/// (the default `wsx::tls::ClientTls`; TLS needs a crypto provider feature, `ring` or
/// `aws-lc-rs`, else `wss://` is a TLS error) with ALPN `h2`. The connection is direct
/// (no proxy). Then [`Http2Connection::handshake`].
///
/// **Cancel safety**: cancelling drops the half-open connection.
pub async fn connect(url: &str, config: &Http2Config) -> Result<Http2Connection, Error> {
    config.validate()?;
    #[cfg(feature = "tls")]
    return connect_tls(url, &crate::tls::ClientTls::new(), config).await;
    #[cfg(not(feature = "tls"))]
    {
        let target = Target::parse(url)?;
        if target.secure {
            return Err(crate::TlsError::NotBuiltIn.into());
        }
        within(config.handshake_timeout, async {
            let tcp = target.tcp().await?;
            let peer = tcp.peer_addr().ok();
            Ok(Http2Connection::start(tcp, config, Some(false)).await?.with_peer_addr(peer))
        })
        .await
    }
}

/// [`connect`] with the certificates and roots of `tls` for `wss://`. ALPN offers `h2` only
/// (instead of the `http/1.1` of `tls`), and a server that chooses anything else is
/// [`Http2Error::NotNegotiated`].
///
/// **Cancel safety**: cancelling drops the half-open connection.
#[cfg(feature = "tls")]
pub async fn connect_tls(
    url: &str,
    tls: &crate::tls::ClientTls,
    config: &Http2Config,
) -> Result<Http2Connection, Error> {
    config.validate()?;
    let target = Target::parse(url)?;
    let rustls_config = if target.secure {
        let tls = tls.clone();
        let built = tokio::task::spawn_blocking(move || tls.config()).await.map_err(io::Error::other)??;
        let mut rustls_config = (*built).clone();
        rustls_config.alpn_protocols = vec![crate::tls::ALPN_H2.to_vec()];
        Some(std::sync::Arc::new(rustls_config))
    } else {
        None
    };
    within(config.handshake_timeout, async {
        let tcp = target.tcp().await?;
        let peer = tcp.peer_addr().ok();
        let connection = match rustls_config {
            None => Http2Connection::start(tcp, config, Some(false)).await,
            Some(rustls_config) => {
                let stream = crate::tls::connect(rustls_config, &target.host, tcp).await?;
                let alpn = stream.get_ref().1.alpn_protocol();
                if alpn != Some(crate::tls::ALPN_H2) {
                    let chosen = alpn.map(|a| String::from_utf8_lossy(a).into_owned());
                    return Err(Error::Http2(Http2Error::NotNegotiated(chosen)));
                }
                Http2Connection::start(stream, config, Some(true)).await
            }
        };
        Ok(connection?.with_peer_addr(peer))
    })
    .await
}

/// The host and port of a `ws://` or `wss://` URL.
struct Target {
    secure: bool,
    host: String,
    port: u16,
}

impl Target {
    fn parse(url: &str) -> Result<Self, Error> {
        let uri: Uri = url.parse().map_err(|e| Error::InvalidUrl(format!("{url}: {e}")))?;
        let secure = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => return Err(Error::InvalidUrl(format!("{url}: the scheme must be ws:// or wss://"))),
        };
        let host = uri.host().ok_or_else(|| Error::InvalidUrl(format!("no host in {url}")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        Ok(Self { secure, host, port })
    }

    async fn tcp(&self) -> Result<TcpStream, Error> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }
}

/// `fut`, or [`Error::HandshakeTimeout`] after `timeout`.
async fn within<T>(timeout: Duration, fut: impl std::future::Future<Output = Result<T, Error>>) -> Result<T, Error> {
    tokio::time::timeout(timeout, fut).await.map_err(|_| Error::HandshakeTimeout(timeout))?
}

fn h2_error(e: h2::Error) -> Error {
    Error::Http2(Http2Error::Protocol(e))
}

impl Http2Connection {
    /// Starts HTTP/2 (client preface, our SETTINGS) on `io`, a connected stream that speaks
    /// HTTP/2 (TLS that chose `h2` by ALPN, or TCP to a server that expects HTTP/2), and waits
    /// for the server's SETTINGS (a PING round trip: the server sends its SETTINGS first). The
    /// connection is driven by a task of its own from then on. Fails with
    /// [`HandshakeError::ConnectProtocolDisabled`] when the server did not advertise
    /// `SETTINGS_ENABLE_CONNECT_PROTOCOL`, [`Error::Http2`] when HTTP/2 failed,
    /// [`Error::HandshakeTimeout`] after [`Http2Config::handshake_timeout`], and
    /// [`Error::Config`] for settings [`Http2Config::validate`] refuses.
    ///
    /// **Cancel safety**: cancelling drops the connection.
    pub async fn handshake<S>(io: S, config: &Http2Config) -> Result<Self, Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        config.validate()?;
        within(config.handshake_timeout, Self::start(io, config, None)).await
    }

    /// [`handshake`](Self::handshake) without the timeout (the caller's bounds it), for a
    /// connection we made: `secure` says whether it is over TLS.
    pub(crate) async fn start<S>(io: S, config: &Http2Config, secure: Option<bool>) -> Result<Self, Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Ok(Self::start_owned(io, config, secure).await?.0)
    }

    /// [`start`](Self::start), and the connection's task, which ends once the connection is
    /// closed and everything queued is written (for a WebSocket that is the connection's only
    /// user: [`Http2Stream::own_connection`]).
    pub(crate) async fn start_owned<S>(
        io: S,
        config: &Http2Config,
        secure: Option<bool>,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, mut connection) = h2::client::Builder::new()
            .initial_window_size(config.stream_window)
            .initial_connection_window_size(config.connection_window)
            .max_send_buffer_size(config.max_send_buffer)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(h2_error)?;
        let ping = connection.ping_pong();
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP/2 connection ended");
            }
        });
        // The server's SETTINGS is the first frame it sends, so once our PING is answered
        // the settings have been applied (h2 applies them before it reads the next frame).
        if let Some(mut ping) = ping {
            ping.ping(h2::Ping::opaque()).await.map_err(h2_error)?;
        }
        let send = send.ready().await.map_err(h2_error)?;
        if !send.is_extended_connect_protocol_enabled() {
            return Err(HandshakeError::ConnectProtocolDisabled.into());
        }
        Ok((Self { send, secure, peer_addr: None }, task))
    }

    /// Records the TCP peer's address, for [`Http2Stream::peer_addr`].
    pub(crate) fn with_peer_addr(mut self, peer_addr: Option<SocketAddr>) -> Self {
        self.peer_addr = peer_addr;
        self
    }

    /// Whether the server has advertised `SETTINGS_ENABLE_CONNECT_PROTOCOL` (it has, for a
    /// handle that [`handshake`](Self::handshake) returned).
    pub fn is_connect_protocol_enabled(&self) -> bool {
        self.send.is_extended_connect_protocol_enabled()
    }

    /// Opens a WebSocket to `url` (`ws://` or `wss://`, matching how the connection was made:
    /// after [`connect`] or `connect_tls`, the other scheme is [`Error::InvalidUrl`]; its
    /// authority and path go in the request) on a new stream, offering the subprotocols,
    /// extensions, `Origin` and extra headers of `request` (and permessage-deflate when
    /// `config.deflate` is set), with the limits and timers of `config`. Returns the
    /// [`WebSocket`] and the server's `200` response head.
    ///
    /// Waits for a free stream when the server's SETTINGS_MAX_CONCURRENT_STREAMS are in use;
    /// the whole call is bounded by `config`'s handshake timeout ([`Error::HandshakeTimeout`]).
    /// Errors: [`HandshakeError::UnexpectedStatus`] for a refusal (any status but 200; the
    /// body's first [`MAX_ERROR_BODY_BYTES`] kept), the other [`HandshakeError`]s for an
    /// answer that does not match the offer or cannot carry a WebSocket
    /// ([`HandshakeError::UnusableConnectResponse`]: a `200` with a `content-length`, or one that
    /// ended the stream; the stream is then reset),
    /// [`HandshakeError::ConnectProtocolDisabled`], [`Error::Http2`] when the connection is
    /// gone.
    ///
    /// **Cancel safety**: cancelling resets the stream (nothing else on the connection is
    /// affected).
    pub async fn open(
        &self,
        url: &str,
        request: ClientRequestConfig,
        config: &WebSocketConfig,
    ) -> Result<(WebSocket<Http2Stream>, Response<()>), Error> {
        self.open_as(url, request, config, |stream| stream).await
    }

    /// [`open`](Self::open), with the stream wrapped by `wrap` (into a `MaybeTlsStream`, for
    /// `ClientBuilder`).
    pub(crate) async fn open_as<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        url: &str,
        request: ClientRequestConfig,
        config: &WebSocketConfig,
        wrap: impl FnOnce(Http2Stream) -> T,
    ) -> Result<(WebSocket<T>, Response<()>), Error> {
        config.proto.validate()?;
        let uri: Uri = url.parse().map_err(|e| Error::InvalidUrl(format!("{url}: {e}")))?;
        let wants_tls = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("wss") => Some(true),
            Some(s) if s.eq_ignore_ascii_case("ws") => Some(false),
            _ => None, // ConnectHandshake::new refuses it.
        };
        match (self.secure, wants_tls) {
            (Some(true), Some(false)) => {
                return Err(Error::InvalidUrl(format!(
                    "{url}: this HTTP/2 connection is over TLS, so its WebSockets are wss:// URLs"
                )))
            }
            (Some(false), Some(true)) => {
                return Err(Error::InvalidUrl(format!(
                    "{url}: this HTTP/2 connection is not over TLS, so its WebSockets are ws:// URLs"
                )))
            }
            _ => {}
        }
        let mut request = request;
        if let Some(deflate) = &config.deflate {
            request.extensions.push(deflate.client_offer());
        }
        let handshake = ConnectHandshake::new(&uri, request)?;
        let timeout = config.proto.handshake_timeout;
        within(timeout, self.open_stream(handshake, config, wrap)).await
    }

    async fn open_stream<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        handshake: ConnectHandshake,
        config: &WebSocketConfig,
        wrap: impl FnOnce(Http2Stream) -> T,
    ) -> Result<(WebSocket<T>, Response<()>), Error> {
        let mut send = self.send.clone().ready().await.map_err(h2_error)?;
        if !send.is_extended_connect_protocol_enabled() {
            return Err(HandshakeError::ConnectProtocolDisabled.into());
        }
        let mut request = handshake.request().clone();
        request.extensions_mut().insert(h2::ext::Protocol::from_static(CONNECT_PROTOCOL));
        let (response, mut send_stream) = send.send_request(request, false).map_err(h2_error)?;
        let (parts, mut body) = response.await.map_err(h2_error)?.into_parts();
        let checked = handshake
            .check_response(Response::from_parts(parts, ()))
            .and_then(|outcome| handshake.check_end_stream(body.is_end_stream()).map(|()| outcome));
        let outcome = match checked {
            Ok(outcome) => outcome,
            Err(HandshakeError::UnexpectedStatus { status, headers, .. }) => {
                let body = read_error_body(&mut body).await;
                return Err(HandshakeError::UnexpectedStatus { status, headers, body }.into());
            }
            Err(e) => {
                send_stream.send_reset(h2::Reason::CANCEL);
                return Err(e.into());
            }
        };
        let mut conn = Connection::client_shared(config.shared_proto(), now(), OsRandom::new());
        if let Some(deflate) = &config.deflate {
            let answer = outcome.extensions.as_deref().unwrap_or("");
            match deflate.client_accept(answer) {
                Ok(Some(params)) => conn.set_deflate(PerMessageDeflate::new(
                    &params,
                    false,
                    deflate.level,
                    deflate.compression_threshold,
                )),
                Ok(None) => {}
                Err(e) => {
                    send_stream.send_reset(h2::Reason::CANCEL);
                    return Err(HandshakeError::UnexpectedExtension(e.to_string()).into());
                }
            }
        }
        let mut stream = Http2Stream::new(send_stream, body);
        stream.secure = self.secure;
        stream.peer_addr = self.peer_addr;
        let ws = WebSocket::from_parts(wrap(stream), conn, BytesMut::new(), outcome.protocol, outcome.extensions);
        let mut response = outcome.response;
        *response.version_mut() = http::Version::HTTP_2;
        Ok((ws, response))
    }
}

/// The body of a refusal, up to [`MAX_ERROR_BODY_BYTES`], for at most a second (it is only
/// there to say why).
async fn read_error_body(body: &mut RecvStream) -> Bytes {
    let mut out = BytesMut::new();
    let read = async {
        while out.len() < MAX_ERROR_BODY_BYTES {
            match body.data().await {
                Some(Ok(chunk)) => {
                    let _ = body.flow_control().release_capacity(chunk.len());
                    let take = chunk.len().min(MAX_ERROR_BODY_BYTES - out.len());
                    out.extend_from_slice(&chunk[..take]);
                }
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), read).await;
    out.freeze()
}

/// The most send capacity one write asks h2 for (h2 grants at most the peer's window and
/// [`Http2Config::max_send_buffer`] anyway).
const MAX_WRITE_RESERVE: usize = 1 << 20;

/// One WebSocket's HTTP/2 stream as a byte stream, for [`WebSocket`]: reads take DATA frames
/// and release their flow-control capacity as they are read; a write waits for send capacity
/// (the peer's window, and at most [`Http2Config::max_send_buffer`] buffered in h2) and copies
/// as much of its bytes as that capacity allows; shutdown sends END_STREAM. Dropping it before
/// the shutdown resets the stream (RST_STREAM CANCEL).
///
/// A stream that [`ClientBuilder`](crate::ClientBuilder) opened is its connection's only user:
/// its shutdown also closes the connection (GOAWAY) and returns once that is written, which
/// waits for the peer to take the bytes (the WebSocket bounds it by its close timeout; bound it
/// yourself when you shut the stream down directly).
#[derive(Debug)]
pub struct Http2Stream {
    /// `None` once a stream that owns its connection has shut down (see `own_connection`).
    send: Option<SendStream<Bytes>>,
    recv: Option<RecvStream>,
    id: u32,
    /// A DATA frame's bytes not read yet.
    pending: Bytes,
    /// END_STREAM has been sent.
    ended: bool,
    /// Whether the connection is over TLS, when we made it.
    secure: Option<bool>,
    /// The connection's TCP peer, when we made it.
    peer_addr: Option<SocketAddr>,
    /// The connection's task, when this stream is the connection's only user: the shutdown
    /// then closes the connection and waits for this task, so that END_STREAM and GOAWAY are
    /// written before the shutdown returns (a program that exits right after `close` would
    /// otherwise end the TCP connection with them unsent).
    connection_task: Option<tokio::task::JoinHandle<()>>,
}

impl Http2Stream {
    fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        let id = send.stream_id().into();
        Self {
            send: Some(send),
            recv: Some(recv),
            id,
            pending: Bytes::new(),
            ended: false,
            secure: None,
            peer_addr: None,
            connection_task: None,
        }
    }

    /// Makes this stream the owner of its connection, whose task is `task` (see
    /// `connection_task`).
    pub(crate) fn own_connection(&mut self, task: tokio::task::JoinHandle<()>) {
        self.connection_task = Some(task);
    }

    /// The HTTP/2 stream's id (odd: the client opened it).
    pub fn stream_id(&self) -> u32 {
        self.id
    }

    /// Whether the HTTP/2 connection is over TLS: `Some` when wsx made the connection
    /// ([`connect`], `connect_tls`, [`ClientBuilder`](crate::ClientBuilder)), `None` after
    /// [`Http2Connection::handshake`] on a stream of the caller's.
    pub fn is_tls(&self) -> Option<bool> {
        self.secure
    }

    /// The address of the HTTP/2 connection's TCP peer (through a proxy, the proxy's), when
    /// wsx made the connection; `None` after [`Http2Connection::handshake`]. The TCP stream
    /// itself belongs to the connection's task, shared by all its streams.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }
}

/// An h2 error on a stream as an I/O error: a reset or GOAWAY is `ConnectionReset` (a
/// WebSocket ended abnormally, 1006), worded by who made it: the peer (a RST_STREAM or GOAWAY
/// it sent), or our own HTTP/2 layer (h2 reset the stream because the peer's frames broke
/// HTTP/2's rules, e.g. overran the stream's window). The transport's own errors stay
/// themselves.
fn stream_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"));
    }
    match e.reason() {
        Some(reason) if e.is_remote() && e.is_go_away() => io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("the peer closed the HTTP/2 connection (GOAWAY, {reason})"),
        ),
        Some(reason) if e.is_remote() => {
            io::Error::new(io::ErrorKind::ConnectionReset, format!("the peer reset the HTTP/2 stream ({reason})"))
        }
        Some(reason) if e.is_go_away() => io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("our HTTP/2 layer closed the connection (GOAWAY, {reason}){}", blame(&e)),
        ),
        Some(reason) if e.is_reset() => io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("our HTTP/2 layer reset the stream ({reason}){}", blame(&e)),
        ),
        _ => io::Error::other(e),
    }
}

/// Why h2 itself reset a stream or closed the connection, when it did so on its own (not at
/// our request).
fn blame(e: &h2::Error) -> &'static str {
    if e.is_library() {
        ": the peer broke HTTP/2's rules"
    } else {
        ""
    }
}

/// The stream was reset with `reason`, as `SendStream::poll_reset` reports it: by the peer's
/// RST_STREAM, or by our HTTP/2 layer (h2 does not say which).
fn reset(reason: h2::Reason) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, format!("the HTTP/2 stream was reset ({reason})"))
}

impl AsyncRead for Http2Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(recv) = this.recv.as_mut() else {
            return Poll::Ready(Ok(())); // shut down, after the end of the peer's side
        };
        while this.pending.is_empty() {
            match ready!(recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => this.pending = data,
                Some(Err(e)) => return Poll::Ready(Err(stream_error(e))),
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        // The window opens again as the WebSocket takes the bytes: a stream nobody reads keeps
        // its window shut, and the server stops sending on it.
        let _ = recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Http2Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let send = match this.send.as_mut() {
            Some(send) if !this.ended => send,
            _ => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        };
        // Ask for room for this write (on top of what h2 still buffers), then wait for some.
        send.reserve_capacity(buf.len().min(MAX_WRITE_RESERVE));
        while send.capacity() == 0 {
            match ready!(send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(stream_error(e))),
                None => {
                    // The stream can no longer send: reset by the peer, or the connection is gone.
                    return Poll::Ready(Err(match send.poll_reset(cx) {
                        Poll::Ready(Ok(reason)) => reset(reason),
                        Poll::Ready(Err(e)) => stream_error(e),
                        Poll::Pending => {
                            io::Error::new(io::ErrorKind::BrokenPipe, "the HTTP/2 stream can no longer send")
                        }
                    }));
                }
            }
        }
        let n = send.capacity().min(buf.len());
        send.send_data(Bytes::copy_from_slice(&buf[..n]), false).map_err(stream_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // What `poll_write` accepted is h2's to send (the connection task writes it out).
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.ended {
            this.ended = true;
            if let Some(send) = this.send.as_mut() {
                // The release of any capacity still reserved, and END_STREAM.
                send.reserve_capacity(0);
                send.send_data(Bytes::new(), true).map_err(stream_error)?;
            }
        }
        if let Some(task) = this.connection_task.as_mut() {
            // The connection's only user lets go of it: h2 then sends GOAWAY, writes what is
            // queued (END_STREAM included) and ends the task. The caller bounds the wait (the
            // WebSocket's close timeout).
            this.send = None;
            this.recv = None;
            let _ = ready!(Pin::new(task).poll(cx));
            this.connection_task = None;
        }
        Poll::Ready(Ok(()))
    }
}
