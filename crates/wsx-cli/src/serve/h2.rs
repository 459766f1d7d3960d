//! HTTP/2 on `wsx serve`'s TLS port: a connection whose client chose ALPN `h2` is served by
//! hyper's HTTP/2 server, with `SETTINGS_ENABLE_CONNECT_PROTOCOL` (RFC 8441).
//!
//! - **Plain HTTP** (the demo page, `--static` files, the errors) is answered by
//!   [`super::http::respond`], the same answer as over HTTP/1.1, on the request's stream; the
//!   connection stays open for the next request (a browser loads the page and then opens its
//!   WebSocket on the same connection).
//! - **WebSockets** arrive as extended CONNECT requests (`:protocol websocket`) on the same
//!   routes, are checked by [`wsx::hyper::Upgrade`] (405 for another method on a WebSocket route,
//!   400 without `:protocol` or with a bad `sec-websocket-version`, 501 for another `:protocol`)
//!   and then by the same rules as an HTTP/1.1 upgrade ([`super::admit`]: `Host`/`:authority`,
//!   `Origin`, route, limits). An accepted one answers `200` and runs on its stream with the same
//!   engine and endpoints as over HTTP/1.1; its `open` log line says `http="2"` and the number of
//!   the connection (`conn`), as do the `http` lines of the plain requests on that connection.
//! - **Bounds**: at most [`MAX_STREAMS`] streams at once; each stream's receive window is
//!   [`STREAM_WINDOW`] and the connection's [`CONNECTION_WINDOW`], so one WebSocket whose
//!   application stops reading holds its own window and not the other streams'; hyper buffers at
//!   most 400 KiB of output per stream. A plain answer must be sent within 60 s. Keepalive pings
//!   (`--ping-interval`, `--ping-timeout`) find a vanished client. A connection on which nothing
//!   is open is closed (GOAWAY) after [`IDLE_TIMEOUT`], or after the handshake timeout when it
//!   has not sent its first request.
//! - **Shutdown**: GOAWAY, every WebSocket closed with 1001 (as over HTTP/1.1); the connection
//!   ends when its streams have.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use std::future::Future as _;

use http_body::{Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming as RequestBody;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use wsx::hyper::{is_websocket_request, rejection_response, Upgrade};
use wsx::{Accept, Rejection};

use super::{admit, http, server_route, websocket, Admitted, Io, Opened, Server, HTTP_TIMEOUT};

/// The most streams (requests and WebSockets) a client may have open at once on a connection.
pub const MAX_STREAMS: u32 = 256;
/// Each stream's receive window: the most a WebSocket's client can have sent that its endpoint
/// has not read yet.
pub const STREAM_WINDOW: u32 = 256 * 1024;
/// The connection's receive window: many streams' worth, so that streams whose readers are
/// slow do not stall the others.
pub const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// How long a connection with nothing open stays open.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Numbers the HTTP/2 connections, for the log.
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// What the requests of a connection tell its loop.
enum Event {
    /// A plain request arrived (its answer is being sent until [`Event::Answered`]).
    Request,
    /// A plain answer has been sent, or given up.
    Answered,
    /// An accepted WebSocket, to run once hyper has sent its `200`.
    WebSocket(Pin<Box<dyn std::future::Future<Output = ()> + Send>>),
}

/// Serves an HTTP/2 connection over TLS until the client ends it, it is idle, or the server
/// shuts down (then: GOAWAY, and the WebSockets are closed with 1001).
pub(super) async fn connection<S: Io>(
    server: Arc<Server>,
    stream: S,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let id = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%peer, conn = id, "HTTP/2 connection");
    let (events, mut inbox) = mpsc::unbounded_channel();
    let service = {
        let server = server.clone();
        let shutdown = shutdown.clone();
        hyper::service::service_fn(move |request| {
            let (server, events, shutdown) = (server.clone(), events.clone(), shutdown.clone());
            async move { Ok::<_, Infallible>(answer(server, request, peer, id, events, shutdown).await) }
        })
    };
    let proto = &server.config.websocket.proto;
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .enable_connect_protocol()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(u32::try_from(proto.handshake.max_head_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(proto.keepalive_interval)
        .keep_alive_timeout(proto.keepalive_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);

    let mut websockets = JoinSet::new();
    let mut answering = 0usize;
    let mut served_any = false;
    let idle = tokio::time::sleep(proto.handshake_timeout);
    tokio::pin!(idle);
    let mut going_away = false;
    loop {
        let open = answering > 0 || !websockets.is_empty();
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, conn = id, error = %e, "HTTP/2 connection ended");
                }
                break;
            }
            Some(event) = inbox.recv() => {
                match event {
                    Event::Request => answering += 1,
                    Event::Answered => answering = answering.saturating_sub(1),
                    Event::WebSocket(run) => {
                        websockets.spawn(run);
                    }
                }
                served_any = true;
                idle.as_mut().reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
            }
            Some(_) = websockets.join_next(), if !websockets.is_empty() => {
                idle.as_mut().reset(tokio::time::Instant::now() + IDLE_TIMEOUT);
            }
            () = &mut idle, if !open && !going_away => {
                let why = if served_any { "idle" } else { "no request within the handshake timeout" };
                tracing::debug!(%peer, conn = id, why, "closing the HTTP/2 connection");
                going_away = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = shutdown.changed(), if !going_away => {
                going_away = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    // The connection is gone: its WebSockets' streams fail, and their tasks end.
    while websockets.join_next().await.is_some() {}
}

/// Answers one request of the connection: plain HTTP, a refusal, or a WebSocket's `200` (the
/// WebSocket itself goes to the connection's loop).
async fn answer(
    server: Arc<Server>,
    request: hyper::Request<RequestBody>,
    peer: SocketAddr,
    id: u64,
    events: mpsc::UnboundedSender<Event>,
    shutdown: watch::Receiver<bool>,
) -> http::Response {
    let started = Instant::now();
    let (mut parts, _body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or_else(|| parts.uri.to_string(), |p| p.as_str().to_owned());
    let route = server_route(&server, &parts.uri);
    let host_check = server.hosts.check_request(parts.version, &parts.headers, parts.uri.authority());

    if !is_websocket_request(&parts) {
        let request = head_only(&parts);
        let response = match host_check {
            Ok(()) => http::respond(&server.site, &request, !matches!(route, Ok(None))).await,
            Err(rejection) => http::text(rejection.status, rejection.body),
        };
        let status = response.status().as_u16();
        let method = request.method();
        tracing::info!(%peer, %method, path, status, http = "2", conn = id, "http");
        let _ = events.send(Event::Request);
        return response.map(|body| Deadline::new(body, HTTP_TIMEOUT, events).boxed_unsync());
    }

    let refuse = |rejection: Rejection| {
        let status = rejection.status.as_u16();
        let reason = rejection.body.trim().to_owned();
        tracing::info!(%peer, path, status, reason, http = "2", conn = id, "refused");
        rejection_response(&rejection).map(|body| http::full(Bytes::from(body)))
    };
    if let Err(rejection) = host_check {
        return refuse(rejection);
    }
    let upgrade = match Upgrade::from_head(&mut parts) {
        Ok(upgrade) => upgrade,
        Err(rejection) => return refuse(rejection),
    };
    let request = head_only(&parts);
    let Admitted { route, protocol, permits } = match admit(&server, &request, upgrade.request(), route, peer).await {
        Ok(admitted) => admitted,
        Err(rejection) => return refuse(rejection),
    };
    let accept = Accept { protocol, headers: ::http::HeaderMap::new() };
    let (response, upgrading) = match upgrade.accept(accept, server.websocket_config(&route)) {
        Ok(accepted) => accepted,
        Err(rejection) => return refuse(rejection),
    };
    let opened = Opened { route, path, permits, peer, started, http2: Some(id) };
    let run = async move {
        match upgrading.await {
            Ok(ws) => websocket(server, ws, opened, shutdown).await,
            Err(e) => tracing::info!(%peer, path = opened.path, error = %e, http = "2", conn = id, "handshake failed"),
        }
    };
    let _ = events.send(Event::WebSocket(Box::pin(run)));
    response.map(|()| http::full(Bytes::new()))
}

/// The request's head without its extensions (hyper's upgrade handle stays out of it).
fn head_only(parts: &::http::request::Parts) -> ::http::Request<()> {
    let mut request = ::http::Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request
}

/// A plain answer's body with a deadline: a client that does not take it (keeps its stream's
/// window closed) within the time gets the stream reset instead of holding it for ever. Tells
/// the connection's loop when the answer is done.
struct Deadline {
    body: http::Body,
    timer: Pin<Box<tokio::time::Sleep>>,
    events: mpsc::UnboundedSender<Event>,
}

impl Deadline {
    fn new(body: http::Body, within: Duration, events: mpsc::UnboundedSender<Event>) -> Self {
        Self { body, timer: Box::pin(tokio::time::sleep(within)), events }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        let _ = self.events.send(Event::Answered);
    }
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took too long to read the answer",
            ))));
        }
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
