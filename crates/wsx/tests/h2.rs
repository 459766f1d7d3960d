//! WebSockets over HTTP/2 (RFC 8441): `wsx::hyper` under hyper's HTTP/2 server with the
//! extended CONNECT protocol enabled, spoken to by a raw `h2` client (the refusals, the bytes
//! on the stream, END_STREAM and RST_STREAM) and by `wsx::h2`'s client.
#![cfg(feature = "http2")]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use wsx::hyper::{rejection_response, Upgrade};
use wsx::proto::deflate::DeflateConfig;
use wsx::{Accept, CloseFrame, Error, WebSocketConfig};

/// What the server's side of a WebSocket saw.
#[derive(Debug)]
enum Event {
    Opened {
        protocol: Option<String>,
        extensions: Option<String>,
    },
    /// The echo loop ended: the peer's close frame (if one came) and the first error.
    Ended {
        close: Option<Option<CloseFrame>>,
        error: Option<Error>,
    },
}

#[derive(Clone, Copy)]
struct ServerSetup {
    /// Advertise SETTINGS_ENABLE_CONNECT_PROTOCOL.
    connect_protocol: bool,
    /// Accept permessage-deflate.
    deflate: bool,
}

impl Default for ServerSetup {
    fn default() -> Self {
        Self { connect_protocol: true, deflate: false }
    }
}

async fn service(
    mut request: Request<Incoming>,
    setup: ServerSetup,
    events: mpsc::UnboundedSender<Event>,
) -> Result<Response<String>, Infallible> {
    let upgrade = match Upgrade::new(&mut request) {
        Ok(upgrade) => upgrade,
        Err(rejection) => return Ok(rejection_response(&rejection)),
    };
    let protocol = upgrade.request().protocols.iter().find(|p| *p == "echo.v1").cloned();
    let mut config = WebSocketConfig::default();
    config.proto.handshake_timeout = Duration::from_secs(5);
    config.proto.max_message_size = 4 << 20;
    config.proto.max_frame_size = 4 << 20;
    if setup.deflate {
        config.deflate = Some(DeflateConfig::default());
    }
    let (response, upgrading) = match upgrade.accept(Accept { protocol, ..Accept::default() }, &config) {
        Ok(accepted) => accepted,
        Err(rejection) => return Ok(rejection_response(&rejection)),
    };
    tokio::spawn(async move {
        let mut ws = match upgrading.await {
            Ok(ws) => ws,
            Err(e) => {
                let _ = events.send(Event::Ended { close: None, error: Some(e) });
                return;
            }
        };
        let protocol = ws.protocol().map(str::to_owned);
        let extensions = ws.extensions().map(str::to_owned);
        let _ = events.send(Event::Opened { protocol, extensions });
        let mut error = None;
        while let Some(msg) = ws.recv().await {
            match msg {
                Ok(msg) if msg.is_data() => {
                    if let Err(e) = ws.feed(msg).await {
                        error.get_or_insert(e);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        let close = ws.connection().close_received().cloned();
        let _ = events.send(Event::Ended { close, error });
    });
    Ok(response.map(|()| String::new()))
}

/// The HTTP/2 server builder the tests use: the extended CONNECT protocol as `setup` says, and
/// a connection window of 8 MiB over a stream window of 1 MiB (hyper's default for both is
/// 1 MiB: one stream that is not read would then hold the whole connection's window).
fn h2_builder(setup: ServerSetup) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.initial_stream_window_size(1 << 20).initial_connection_window_size(8 << 20);
    if setup.connect_protocol {
        builder.enable_connect_protocol();
    }
    builder
}

/// An h2c (prior knowledge) server on loopback running [`service`] on every connection.
async fn start(setup: ServerSetup) -> (SocketAddr, mpsc::UnboundedReceiver<Event>) {
    let (listener, addr) = listen().await;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let _ = tcp.set_nodelay(true);
            let events = tx.clone();
            let service = service_fn(move |request| service(request, setup, events.clone()));
            tokio::spawn(async move {
                let _ = h2_builder(setup).serve_connection(TokioIo::new(tcp), service).await;
            });
        }
    });
    (addr, rx)
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    within(Duration::from_secs(10), "server event", events.recv()).await.expect("server task alive")
}

// ---------------------------------------------------------------------------------------------
// A raw h2 client: the requests wsx's own client would never send, and the stream's frames.
// ---------------------------------------------------------------------------------------------

/// An h2 connection to `addr` once the server's SETTINGS have arrived (a PING answered after
/// them), so that whether it enabled the extended CONNECT protocol is known.
async fn raw_h2(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (send, mut conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let mut ping = conn.ping_pong().expect("ping_pong");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    within(Duration::from_secs(5), "PING answered", ping.ping(h2::Ping::opaque())).await.expect("pong");
    send.ready().await.expect("ready")
}

/// An extended CONNECT request for `/echo` (`:protocol` when `protocol` is `Some`).
fn connect_request(addr: SocketAddr, protocol: Option<&str>, headers: &[(&str, &str)]) -> Request<()> {
    let mut request = Request::builder().method(Method::CONNECT).uri(format!("http://{addr}/echo"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request.body(()).expect("request");
    if let Some(p) = protocol {
        request.extensions_mut().insert(h2::ext::Protocol::from(p));
    }
    request
}

/// Sends `request` and returns the response head and body stream, and the request's send stream.
async fn raw_send(
    send: &mut h2::client::SendRequest<Bytes>,
    request: Request<()>,
) -> (Response<h2::RecvStream>, h2::SendStream<Bytes>) {
    let (response, stream) = send.send_request(request, false).expect("send_request");
    let response = within(Duration::from_secs(5), "response", response).await.expect("response");
    (response, stream)
}

async fn read_body(body: &mut h2::RecvStream) -> String {
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    String::from_utf8(text).expect("utf-8 body")
}

/// Reads the next whole WebSocket frame off an h2 stream; `None` at END_STREAM.
async fn raw_frame(body: &mut h2::RecvStream, buf: &mut BytesMut) -> Option<RawFrame> {
    loop {
        if let Some(frame) = parse_frame(buf) {
            return Some(frame);
        }
        match body.data().await {
            None => {
                assert!(buf.is_empty(), "the stream ended inside a frame");
                return None;
            }
            Some(chunk) => {
                let chunk = chunk.expect("DATA, not RST_STREAM");
                let _ = body.flow_control().release_capacity(chunk.len());
                buf.extend_from_slice(&chunk);
            }
        }
    }
}

/// The refusals, each with its documented status: another `:protocol` (501), no `:protocol`
/// (400), a missing or wrong `sec-websocket-version` (400 naming 13), and the 405 for a method
/// other than CONNECT.
#[tokio::test]
async fn refusals_have_the_documented_status() {
    deadline(async {
        let (addr, _events) = start(ServerSetup::default()).await;
        let mut send = raw_h2(addr).await;
        let version = [("sec-websocket-version", "13")];

        let (mut response, _s) = raw_send(&mut send, connect_request(addr, Some("connect-udp"), &version)).await;
        assert_eq!(response.status(), StatusCode::NOT_IMPLEMENTED);
        assert!(read_body(response.body_mut()).await.contains("connect-udp"));

        let (mut response, _s) = raw_send(&mut send, connect_request(addr, None, &version)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(read_body(response.body_mut()).await.contains(":protocol"));

        for headers in [&[][..], &[("sec-websocket-version", "8")][..]] {
            let (mut response, _s) = raw_send(&mut send, connect_request(addr, Some("websocket"), headers)).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{headers:?}");
            assert_eq!(response.headers()["sec-websocket-version"], "13");
            assert!(read_body(response.body_mut()).await.contains("Sec-WebSocket-Version"));
        }

        let get = Request::get(format!("http://{addr}/echo")).header("sec-websocket-version", "13").body(()).unwrap();
        let (response, _s) = send.send_request(get, true).expect("send GET");
        let response = response.await.expect("response");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()["allow"], "CONNECT");
    })
    .await;
}

/// The 200 (not 101) with the selected subprotocol and no `sec-websocket-accept`; WebSocket
/// frames on the stream as on TCP (masked from the client, unmasked from the server); the close
/// handshake ends the server's side of the stream with END_STREAM, not RST_STREAM, and the
/// server saw the close code and reason.
#[tokio::test]
async fn raw_extended_connect_echo_and_close_end_the_stream() {
    deadline(async {
        let (addr, mut events) = start(ServerSetup::default()).await;
        let mut send = raw_h2(addr).await;
        let headers = [("sec-websocket-version", "13"), ("sec-websocket-protocol", "chat, echo.v1")];
        let (response, mut stream) = raw_send(&mut send, connect_request(addr, Some("websocket"), &headers)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["sec-websocket-protocol"], "echo.v1");
        for absent in ["sec-websocket-accept", "upgrade", "connection", "content-length"] {
            assert!(!response.headers().contains_key(absent), "{absent} in the 200");
        }
        assert!(matches!(next_event(&mut events).await, Event::Opened { protocol: Some(p), extensions: None } if p == "echo.v1"));
        let mut body = response.into_body();
        let mut buf = BytesMut::new();

        stream.send_data(masked_frame(OP_TEXT, true, b"over h2", [1, 2, 3, 4]).into(), false).expect("send");
        let echo = raw_frame(&mut body, &mut buf).await.expect("echo");
        assert_eq!((echo.opcode, echo.payload.as_slice()), (OP_TEXT, &b"over h2"[..]));

        let close = masked_frame(OP_CLOSE, true, &close_payload(4001, "bye"), [9, 9, 9, 9]);
        stream.send_data(close.into(), false).expect("send close");
        let echo = raw_frame(&mut body, &mut buf).await.expect("close echo");
        assert_eq!(echo.opcode, OP_CLOSE);
        assert_eq!(echo.payload, close_payload(4001, "bye"));
        assert!(raw_frame(&mut body, &mut buf).await.is_none(), "END_STREAM after the close echo");
        assert!(body.is_end_stream());
        match next_event(&mut events).await {
            Event::Ended { close: Some(Some(frame)), error: None } => {
                assert_eq!(u16::from(frame.code), 4001);
                assert_eq!(frame.reason.as_str(), "bye");
            }
            other => panic!("server saw {other:?}"),
        }
    })
    .await;
}

/// A client that resets its stream (RST_STREAM CANCEL) without a close frame is an abnormal
/// closure on the server (1006), reported promptly.
#[tokio::test]
async fn rst_stream_from_the_client_is_an_abnormal_closure() {
    deadline(async {
        let (addr, mut events) = start(ServerSetup::default()).await;
        let mut send = raw_h2(addr).await;
        let headers = [("sec-websocket-version", "13")];
        let (response, mut stream) = raw_send(&mut send, connect_request(addr, Some("websocket"), &headers)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(matches!(next_event(&mut events).await, Event::Opened { .. }));
        stream.send_reset(h2::Reason::CANCEL);
        match within(Duration::from_secs(2), "abnormal closure", events.recv()).await {
            Some(Event::Ended { close: None, error: Some(e) }) => {
                assert_eq!(e.close_code().map(u16::from), Some(1006), "{e}");
            }
            other => panic!("server saw {other:?}"),
        }
    })
    .await;
}

/// Without `enable_connect_protocol` the server does not advertise the setting, and an h2
/// client may not send `:protocol` at all (h2 refuses to).
#[tokio::test]
async fn a_server_without_the_setting_does_not_advertise_it() {
    deadline(async {
        let (addr, _events) = start(ServerSetup { connect_protocol: false, ..ServerSetup::default() }).await;
        let send = raw_h2(addr).await;
        assert!(!send.is_extended_connect_protocol_enabled());
        let (addr, _events) = start(ServerSetup::default()).await;
        assert!(raw_h2(addr).await.is_extended_connect_protocol_enabled());
    })
    .await;
}
