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
//!   most [`MAX_SEND_BUFFER`] of output per stream. A plain answer (or refusal) of which the
//!   client takes nothing for `--http-timeout` (60 s) drops the connection (the connection's
//!   loop keeps the deadlines, which each piece taken moves on: hyper waits for window without
//!   polling the body, so a body cannot time itself out).
//!   Keepalive pings (`--ping-interval`, `--ping-timeout`) find a vanished client. A
//!   connection on which nothing is open is closed (GOAWAY) after [`IDLE_TIMEOUT`], or after
//!   the handshake timeout when it has not sent its first request; its streams then have
//!   10 s to end.
//! - **Shutdown**: GOAWAY, every WebSocket closed with 1001 (as over HTTP/1.1); the connection
//!   ends when its streams have (within 10 s; the server's own 2 s grace comes first).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;

use http_body::{Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming as RequestBody;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use wsx::hyper::{is_websocket_request, rejection_response, Upgrade};
use wsx::{Accept, Rejection};

use super::{admit, http, server_route, websocket, Admitted, Io, Opened, Server, Shutdown};

/// The most streams (requests and WebSockets) a client may have open at once on a connection.
pub const MAX_STREAMS: u32 = 1024;
/// Each stream's receive window: the most a WebSocket's client can have sent that its endpoint
/// has not read yet.
pub const STREAM_WINDOW: u32 = 256 * 1024;
/// The connection's receive window: many streams' worth, so that streams whose readers are
/// slow do not stall the others.
pub const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// How long a connection with nothing open stays open.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Output hyper buffers per stream beyond what the client's window lets out (hyper's default
/// is 400 KiB; a WebSocket has its own 1 MiB high-water mark on top).
pub const MAX_SEND_BUFFER: usize = 64 * 1024;

/// Numbers the HTTP/2 connections, for the log.
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// What the requests of a connection tell its loop.
enum Event {
    /// A plain answer (or a refusal) with this number is being sent, and must make progress by
    /// this deadline (sent again, with a later one, as the client takes it).
    Answering(u64, tokio::time::Instant),
    /// That answer has been sent, or given up (its body dropped).
    Answered(u64),
    /// An accepted WebSocket, to run once hyper has sent its `200`.
    WebSocket(Pin<Box<dyn std::future::Future<Output = ()> + Send>>),
}

/// How long a connection that said GOAWAY may take to end its streams (hyper waits for them):
/// a client that keeps a window closed cannot hold it open.
const GOAWAY_GRACE: Duration = Duration::from_secs(10);

/// Serves an HTTP/2 connection over TLS until the client ends it, it is idle, or the server
/// shuts down (then: GOAWAY, and the WebSockets are closed with 1001). A plain answer of which
/// the client takes nothing for `--http-timeout` ends the connection: hyper has no way to
/// reset one stream from here, and it would otherwise hold that stream (and its file) for
/// ever.
pub(super) async fn connection<S: Io>(server: Arc<Server>, stream: S, peer: SocketAddr, mut shutdown: Shutdown) {
    let id = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%peer, conn = id, "HTTP/2 connection");
    // Unbounded, but bounded in practice: each event belongs to a stream hyper admitted (at
    // most MAX_STREAMS at once), and the loop drains it on every turn.
    let (events, mut inbox) = mpsc::unbounded_channel();
    let answers = Arc::new(AtomicU64::new(0));
    let service = {
        let server = server.clone();
        let shutdown = shutdown.clone();
        hyper::service::service_fn(move |request| {
            let (server, shutdown) = (server.clone(), shutdown.clone());
            let tracker = Tracker { events: events.clone(), next: answers.clone(), within: server.http_timeout };
            async move { Ok::<_, Infallible>(answer(server, request, peer, id, tracker, shutdown).await) }
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
        .max_send_buf_size(MAX_SEND_BUFFER)
        .max_header_list_size(u32::try_from(proto.handshake.max_head_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(proto.keepalive_interval)
        .keep_alive_timeout(proto.keepalive_timeout);
    // Boxed, so that it can be dropped before the WebSockets are waited for: dropping it fails
    // every stream at once (h2 does I/O only while the connection is polled).
    let mut conn = Box::pin(builder.serve_connection(TokioIo::new(stream), service));

    let mut websockets = JoinSet::new();
    // The answers being sent, by number, with their deadlines (moved on as they progress).
    let mut answering: HashMap<u64, tokio::time::Instant> = HashMap::new();
    let mut served_any = false;
    let idle = tokio::time::sleep(proto.handshake_timeout);
    tokio::pin!(idle);
    let overdue = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(overdue);
    let mut overdue_at: Option<tokio::time::Instant> = None;
    let mut going_away: Option<tokio::time::Instant> = None;
    loop {
        let open = !answering.is_empty() || !websockets.is_empty();
        // The next deadline: the oldest answer's, or the end of the GOAWAY grace.
        // At most MAX_STREAMS entries: a scan per turn is cheap next to the turn's own work.
        let next = answering.values().min().copied().into_iter().chain(going_away).min();
        if next != overdue_at {
            overdue_at = next;
            if let Some(at) = next {
                overdue.as_mut().reset(at);
            }
        }
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, conn = id, error = %e, "HTTP/2 connection ended");
                }
                break;
            }
            Some(event) = inbox.recv() => {
                match event {
                    Event::Answering(n, deadline) => {
                        answering.insert(n, deadline);
                    }
                    Event::Answered(n) => {
                        answering.remove(&n);
                    }
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
            () = &mut overdue, if overdue_at.is_some() => {
                let why = if answering.is_empty() { "streams not ended after GOAWAY" } else { "an answer not taken in time" };
                tracing::info!(%peer, conn = id, why, streams = answering.len() + websockets.len(), "dropping the HTTP/2 connection");
                break;
            }
            () = &mut idle, if !open && going_away.is_none() => {
                let why = if served_any { "idle" } else { "no request within the handshake timeout" };
                tracing::debug!(%peer, conn = id, why, "closing the HTTP/2 connection");
                going_away = Some(tokio::time::Instant::now() + GOAWAY_GRACE);
                conn.as_mut().graceful_shutdown();
            }
            () = shutdown.down(), if going_away.is_none() => {
                going_away = Some(tokio::time::Instant::now() + GOAWAY_GRACE);
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    // The connection is gone (ended, or dropped here): its WebSockets' streams fail, and their
    // tasks end.
    drop(conn);
    while websockets.join_next().await.is_some() {}
}

/// Numbers the answers of a connection and tells its loop when each starts and ends.
struct Tracker {
    events: mpsc::UnboundedSender<Event>,
    next: Arc<AtomicU64>,
    within: Duration,
}

impl Tracker {
    /// `response` with its body tracked: the loop holds the connection to `--http-timeout` for
    /// it.
    fn track(&self, response: http::Response) -> http::Response {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let _ = self.events.send(Event::Answering(n, tokio::time::Instant::now() + self.within));
        let events = self.events.clone();
        let within = self.within;
        response.map(|body| Tracked { body, n, events, within }.boxed_unsync())
    }
}

/// Answers one request of the connection: plain HTTP, a refusal, or a WebSocket's `200` (the
/// WebSocket itself goes to the connection's loop).
async fn answer(
    server: Arc<Server>,
    request: hyper::Request<RequestBody>,
    peer: SocketAddr,
    id: u64,
    tracker: Tracker,
    shutdown: Shutdown,
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
        return tracker.track(response);
    }

    let refuse = |rejection: Rejection| {
        let status = rejection.status.as_u16();
        let reason = rejection.body.trim().to_owned();
        tracing::info!(%peer, path, status, reason, http = "2", conn = id, "refused");
        tracker.track(http::with_nosniff(rejection_response(&rejection).map(|body| http::full(Bytes::from(body)))))
    };
    if let Err(rejection) = host_check {
        return refuse(rejection);
    }
    let upgrade = match Upgrade::from_head(&mut parts) {
        Ok(upgrade) => upgrade,
        Err(rejection) => return refuse(rejection),
    };
    // An oversized head is refused before admission spends anything on it (a per-IP token, a
    // connection to the --forward target).
    if let Err(rejection) = upgrade.check_head(&server.config.websocket.proto.handshake) {
        return refuse(rejection);
    }
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
    // Numbered from 1.
    let opened = Opened {
        route,
        path: path.into_boxed_str(),
        permits,
        peer,
        started: started.into(),
        http2: std::num::NonZeroU64::new(id),
    };
    let run = async move {
        match upgrading.await {
            Ok(ws) => websocket(server, ws, opened, shutdown).await,
            Err(e) => tracing::info!(%peer, path = opened.path, error = %e, http = "2", conn = id, "handshake failed"),
        }
    };
    let _ = tracker.events.send(Event::WebSocket(Box::pin(run)));
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

/// A plain answer's body that tells the connection's loop when it is done (sent, or dropped
/// by hyper).
struct Tracked {
    body: http::Body,
    n: u64,
    events: mpsc::UnboundedSender<Event>,
    /// Each piece the client takes moves the deadline this far on: a download that keeps
    /// moving is not cut (hyper polls the body only when the client's window has room).
    within: Duration,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let _ = self.events.send(Event::Answered(self.n));
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            // Before this answer's `Answered` (same sender, in order): never revives it.
            let _ = self.events.send(Event::Answering(self.n, tokio::time::Instant::now() + self.within));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
