//! WebSockets over HTTP/2 (RFC 8441): `wsx::hyper` under hyper's HTTP/2 server with the
//! extended CONNECT protocol enabled, spoken to by a raw `h2` client (the refusals, the bytes
//! on the stream, END_STREAM and RST_STREAM) and by `wsx::h2`'s client.
#![cfg(feature = "http2")]

#[path = "common/certs.rs"]
mod certs;
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
use wsx::h2::{Http2Config, Http2Connection, Http2Error};
use wsx::hyper::{rejection_response, Upgrade};
use wsx::proto::deflate::DeflateConfig;
use wsx::proto::handshake::ClientRequestConfig;
use wsx::{Accept, CloseCode, CloseFrame, Error, HandshakeError, Message, Rejection, WebSocketConfig};

/// The first connection on `listener`, as a raw `h2` server that advertises the extended
/// CONNECT: for tests that play a server wsx::hyper would never be.
async fn raw_h2_server(listener: &tokio::net::TcpListener) -> h2::server::Connection<TcpStream, Bytes> {
    let (tcp, _) = listener.accept().await.expect("accept");
    h2::server::Builder::new().enable_connect_protocol().handshake::<_, Bytes>(tcp).await.expect("h2")
}

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
    if request.uri().path() == "/refuse" {
        return Ok(rejection_response(&Rejection::new(StatusCode::FORBIDDEN, "not you")));
    }
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

/// The test server's receive window per stream.
const SERVER_STREAM_WINDOW: u32 = 1 << 20;
/// The most the test server's h2 buffers for sending per stream (hyper's default, made explicit
/// for the slow-reader test's arithmetic).
const SERVER_SEND_BUFFER: usize = 400 * 1024;

/// The HTTP/2 server builder the tests use: the extended CONNECT protocol as `setup` says, and
/// a connection window of 8 MiB over a stream window of 1 MiB (hyper's default for both is
/// 1 MiB: one stream that is not read would then hold the whole connection's window).
fn h2_builder(setup: ServerSetup) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .initial_stream_window_size(SERVER_STREAM_WINDOW)
        .initial_connection_window_size(8 << 20)
        .max_send_buf_size(SERVER_SEND_BUFFER);
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

/// The same server over TLS, offering ALPN `alpn`; returns the CA's PEM to trust.
async fn start_tls(alpn: &[&[u8]]) -> (SocketAddr, String, mpsc::UnboundedReceiver<Event>) {
    let ca = certs::TestCa::new("h2 test CA");
    let leaf = ca.server(&["localhost"]);
    let tls = wsx::tls::ServerTls::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes())
        .expect("server TLS")
        .alpn_protocols(alpn.iter().map(|a| a.to_vec()).collect());
    let acceptor = tls.acceptor().expect("acceptor");
    let (listener, addr) = listen().await;
    let (tx, rx) = mpsc::unbounded_channel();
    let setup = ServerSetup::default();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, events) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(tls) = wsx::tls::accept(&acceptor, tcp).await else { return };
                let service = service_fn(move |request| service(request, setup, events.clone()));
                let _ = h2_builder(setup).serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    (addr, ca.pem(), rx)
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

// ---------------------------------------------------------------------------------------------
// wsx's own client: wsx::h2.
// ---------------------------------------------------------------------------------------------

fn ws_config() -> WebSocketConfig {
    let mut config = WebSocketConfig::default();
    config.proto.handshake_timeout = Duration::from_secs(5);
    config.proto.max_message_size = 4 << 20;
    config.proto.max_frame_size = 4 << 20;
    config
}

async fn h2c(addr: SocketAddr) -> Http2Connection {
    wsx::h2::connect(&format!("ws://{addr}/"), &Http2Config::default()).await.expect("h2 connection")
}

/// Text, binary and a 1 MiB binary message echoed over an h2c stream; a close with a code and
/// reason seen by both sides, and the stream ended cleanly (the client's `close` returns the
/// server's echo only when the stream ended with END_STREAM, not a reset).
#[tokio::test]
async fn client_echo_text_binary_one_mib_and_close() {
    deadline(async {
        let (addr, mut events) = start(ServerSetup::default()).await;
        let h2 = h2c(addr).await;
        assert!(h2.is_connect_protocol_enabled());
        let (mut ws, response) =
            h2.open(&format!("ws://{addr}/echo"), ClientRequestConfig::default(), &ws_config()).await.expect("open");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(matches!(next_event(&mut events).await, Event::Opened { protocol: None, extensions: None }));

        ws.send_text("hello over h2").await.expect("send text");
        assert_eq!(ws.recv().await.expect("echo").expect("text"), Message::text("hello over h2"));
        ws.send_binary(Bytes::from_static(&[0, 1, 2, 255])).await.expect("send binary");
        assert_eq!(
            ws.recv().await.expect("echo").expect("binary"),
            Message::binary(Bytes::from_static(&[0, 1, 2, 255]))
        );
        let big = Bytes::from(pattern(1 << 20, 7));
        ws.send_binary(big.clone()).await.expect("send 1 MiB");
        match ws.recv().await.expect("echo").expect("1 MiB") {
            Message::Binary(data) => assert!(data == big, "1 MiB echo differs"),
            other => panic!("{other:?}"),
        }

        let peer = ws.close(CloseCode::from(4000), "done").await.expect("clean close");
        let peer = peer.expect("close frame with a code");
        assert_eq!((u16::from(peer.code), peer.reason.as_str()), (4000, "done"));
        match next_event(&mut events).await {
            Event::Ended { close: Some(Some(frame)), error: None } => {
                assert_eq!((u16::from(frame.code), frame.reason.as_str()), (4000, "done"));
            }
            other => panic!("server saw {other:?}"),
        }
    })
    .await;
}

/// A subprotocol and permessage-deflate negotiated over h2, on both sides.
#[tokio::test]
async fn client_negotiates_subprotocol_and_deflate() {
    deadline(async {
        let (addr, mut events) = start(ServerSetup { deflate: true, ..ServerSetup::default() }).await;
        let h2 = h2c(addr).await;
        let mut config = ws_config();
        config.deflate = Some(DeflateConfig::default());
        let request = ClientRequestConfig { protocols: vec!["chat".into(), "echo.v1".into()], ..Default::default() };
        let (mut ws, response) = h2.open(&format!("ws://{addr}/echo"), request, &config).await.expect("open");
        assert_eq!(ws.protocol(), Some("echo.v1"));
        assert!(ws.extensions().is_some_and(|e| e.starts_with("permessage-deflate")), "{:?}", ws.extensions());
        assert_eq!(response.headers()["sec-websocket-protocol"], "echo.v1");
        match next_event(&mut events).await {
            Event::Opened { protocol, extensions } => {
                assert_eq!(protocol.as_deref(), Some("echo.v1"));
                assert!(extensions.is_some_and(|e| e.starts_with("permessage-deflate")));
            }
            other => panic!("server saw {other:?}"),
        }
        let text = "compress me ".repeat(2000);
        ws.send_text(text.as_str()).await.expect("send");
        assert_eq!(ws.recv().await.expect("echo").expect("text"), Message::text(text));
        ws.close(CloseCode::NORMAL, "").await.expect("close");
    })
    .await;
}

/// A server that did not advertise SETTINGS_ENABLE_CONNECT_PROTOCOL: the typed error, before
/// any request is sent.
#[tokio::test]
async fn client_refuses_a_server_without_the_connect_protocol() {
    deadline(async {
        let (addr, _events) = start(ServerSetup { connect_protocol: false, ..ServerSetup::default() }).await;
        match wsx::h2::connect(&format!("ws://{addr}/"), &Http2Config::default()).await {
            Err(Error::Handshake(HandshakeError::ConnectProtocolDisabled)) => {}
            other => panic!("expected ConnectProtocolDisabled, got {other:?}"),
        }
    })
    .await;
}

/// A refusal by the application reaches the client as the status and body it sent.
#[tokio::test]
async fn client_reports_a_refusal_with_its_status_and_body() {
    deadline(async {
        let (addr, _events) = start(ServerSetup::default()).await;
        let h2 = h2c(addr).await;
        match h2.open(&format!("ws://{addr}/refuse"), ClientRequestConfig::default(), &ws_config()).await {
            Err(Error::Handshake(HandshakeError::UnexpectedStatus { status, body, .. })) => {
                assert_eq!(status, StatusCode::FORBIDDEN);
                assert_eq!(&body[..], b"not you");
            }
            other => panic!("expected a 403, got {:?}", other.map(|_| ())),
        }
        // The connection is still good for the next WebSocket.
        let (mut ws, _) =
            h2.open(&format!("ws://{addr}/echo"), ClientRequestConfig::default(), &ws_config()).await.expect("open");
        ws.send_text("still here").await.expect("send");
        assert_eq!(ws.recv().await.expect("echo").expect("text"), Message::text("still here"));
    })
    .await;
}

/// A server (the raw h2 crate) that accepts the WebSocket and then resets its stream: the
/// client's `recv` reports an abnormal closure (1006) within a deadline.
#[tokio::test]
async fn rst_stream_from_the_server_is_an_abnormal_closure() {
    deadline(async {
        let (listener, addr) = listen().await;
        tokio::spawn(async move {
            let mut conn = raw_h2_server(&listener).await;
            let (request, mut respond) = conn.accept().await.expect("a request").expect("request");
            assert_eq!(request.method(), Method::CONNECT);
            assert_eq!(request.extensions().get::<h2::ext::Protocol>().map(|p| p.as_str()), Some("websocket"));
            let mut stream = respond.send_response(Response::new(()), false).expect("200");
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                stream.send_reset(h2::Reason::CANCEL);
            });
            while let Some(Ok(_)) = conn.accept().await {}
        });
        let h2 = h2c(addr).await;
        let (mut ws, _) =
            h2.open(&format!("ws://{addr}/echo"), ClientRequestConfig::default(), &ws_config()).await.expect("open");
        match within(Duration::from_secs(2), "the reset", ws.recv()).await {
            Some(Err(e)) => assert_eq!(e.close_code().map(u16::from), Some(1006), "{e}"),
            other => panic!("expected an abnormal closure, got {other:?}"),
        }
    })
    .await;
}

/// 24 WebSockets on one h2 connection, each echoing 100 messages, all done while a 25th has
/// twice what every buffer and window on its path can hold in flight, and nobody reads it: per-stream flow control holds that one stream (its
/// writer blocks, nothing is buffered without bound) and lets the others through. The slow
/// reader then reads everything, intact and in order.
#[tokio::test]
async fn many_websockets_on_one_connection_and_a_slow_reader() {
    deadline(async {
        const STREAMS: usize = 24;
        const MESSAGES: usize = 100;
        const SLOW_SIZE: usize = 64 * 1024;
        // What the slow stream's path holds while nobody reads, at most: the client's WebSocket
        // output up to its high-water mark and h2's send buffer, the server's stream window,
        // its WebSocket's read buffer (a read budget's worth) and output up to its mark,
        // hyper's send buffer, our stream window; and a message over each mark, one being
        // assembled, one in a read buffer. Twice that goes out, so the writer must block.
        let h2_config = Http2Config::default();
        let server_config = WebSocketConfig::default();
        let can_hold = ws_config().proto.write_buffer_high_water
            + h2_config.max_send_buffer
            + SERVER_STREAM_WINDOW as usize
            + (1 << 20)
            + server_config.proto.write_buffer_high_water
            + SERVER_SEND_BUFFER
            + h2_config.stream_window as usize
            + 4 * SLOW_SIZE;
        let slow_messages = (2 * can_hold).div_ceil(SLOW_SIZE);
        let (addr, _events) = start(ServerSetup::default()).await;
        let h2 = h2c(addr).await;
        let url = format!("ws://{addr}/echo");

        let (slow, _) = h2.open(&url, ClientRequestConfig::default(), &ws_config()).await.expect("open slow");
        let (mut slow_reader, mut slow_writer) = slow.split();
        let slow_sender = tokio::spawn(async move {
            for i in 0..slow_messages {
                slow_writer.send(Message::binary(pattern(SLOW_SIZE, i as u64))).await.expect("slow send");
            }
            slow_writer
        });

        let started = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for n in 0..STREAMS {
            let (h2, url) = (h2.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let (mut ws, _) = h2.open(&url, ClientRequestConfig::default(), &ws_config()).await.expect("open");
                let stream_id = ws.get_ref().stream_id();
                for i in 0..MESSAGES {
                    let text = format!("stream {n} message {i}");
                    ws.send_text(text.as_str()).await.expect("send");
                    assert_eq!(ws.recv().await.expect("echo").expect("text"), Message::text(text));
                }
                ws.close(CloseCode::NORMAL, "").await.expect("close");
                stream_id
            }));
        }
        let mut stream_ids = std::collections::BTreeSet::new();
        for task in tasks {
            stream_ids.insert(within(Duration::from_secs(15), "the fast WebSockets", task).await.expect("fast task"));
        }
        // Streams of the one connection: distinct client-initiated (odd) ids.
        assert_eq!(stream_ids.len(), STREAMS);
        assert!(stream_ids.iter().all(|id| id % 2 == 1), "{stream_ids:?}");
        let elapsed = started.elapsed();
        assert!(
            !slow_sender.is_finished(),
            "{} bytes went out to a reader that reads nothing: unbounded buffering",
            slow_messages * SLOW_SIZE
        );

        let mut got = 0;
        while got < slow_messages {
            match slow_reader.recv().await.expect("slow echo").expect("binary") {
                Message::Binary(data) => {
                    assert!(data == pattern(SLOW_SIZE, got as u64), "slow echo {got} differs");
                    got += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        let writer = within(Duration::from_secs(5), "the slow writer", slow_sender).await.expect("slow sender");
        let mut ws = slow_reader.reunite(writer).expect("reunite");
        ws.close(CloseCode::NORMAL, "").await.expect("close slow");
        eprintln!("{STREAMS} × {MESSAGES} echoes in {elapsed:?} beside a stalled stream");
    })
    .await;
}

/// TLS with ALPN h2, certificates made by rcgen: echo and close; a TLS server that only
/// offers http/1.1 is the typed ALPN error.
#[tokio::test]
async fn client_over_tls_with_alpn_h2() {
    deadline(async {
        let (addr, ca, mut events) = start_tls(&[b"h2", b"http/1.1"]).await;
        let tls = wsx::tls::ClientTls::new().only_added_roots().add_ca_pem(ca.as_bytes()).expect("CA");
        let url = format!("wss://localhost:{}/echo", addr.port());
        let h2 = wsx::h2::connect_tls(&url, &tls, &Http2Config::default()).await.expect("h2 over TLS");
        let (mut ws, _) = h2.open(&url, ClientRequestConfig::default(), &ws_config()).await.expect("open");
        assert!(matches!(next_event(&mut events).await, Event::Opened { .. }));
        ws.send_text("over TLS").await.expect("send");
        assert_eq!(ws.recv().await.expect("echo").expect("text"), Message::text("over TLS"));
        ws.close(CloseCode::NORMAL, "bye").await.expect("close");
        // A ws:// URL on a connection over TLS is a mistake, not a plain WebSocket.
        let plain = format!("ws://localhost:{}/echo", addr.port());
        match h2.open(&plain, ClientRequestConfig::default(), &ws_config()).await {
            Err(Error::InvalidUrl(why)) => assert!(why.contains("wss://"), "{why}"),
            other => panic!("expected InvalidUrl, got {:?}", other.map(|_| ())),
        }

        // A server without ALPN: the typed error. (A server offering only http/1.1 refuses the
        // TLS handshake itself, with the no_application_protocol alert.)
        let (addr, ca, _events) = start_tls(&[]).await;
        let tls = wsx::tls::ClientTls::new().only_added_roots().add_ca_pem(ca.as_bytes()).expect("CA");
        let url = format!("wss://localhost:{}/echo", addr.port());
        match wsx::h2::connect_tls(&url, &tls, &Http2Config::default()).await {
            Err(Error::Http2(Http2Error::NotNegotiated(None))) => {}
            other => panic!("expected NotNegotiated, got {other:?}"),
        }
        let (addr, ca, _events) = start_tls(&[b"http/1.1"]).await;
        let tls = wsx::tls::ClientTls::new().only_added_roots().add_ca_pem(ca.as_bytes()).expect("CA");
        let url = format!("wss://localhost:{}/echo", addr.port());
        match wsx::h2::connect_tls(&url, &tls, &Http2Config::default()).await {
            Err(Error::Tls(e)) => assert!(e.to_string().contains("NoApplicationProtocol"), "{e}"),
            other => panic!("expected the TLS alert, got {other:?}"),
        }
    })
    .await;
}

/// A raw h2 server closes the WebSocket (close frame, then END_STREAM): the client sees the
/// code and reason, answers with its close frame, and ends its side of the stream with
/// END_STREAM (not RST_STREAM).
#[tokio::test]
async fn client_ends_its_stream_with_end_stream_after_the_close_handshake() {
    deadline(async {
        let (listener, addr) = listen().await;
        let server = tokio::spawn(async move {
            let mut conn = raw_h2_server(&listener).await;
            let (request, mut respond) = conn.accept().await.expect("a request").expect("request");
            tokio::spawn(async move { while let Some(Ok(_)) = conn.accept().await {} });
            let mut body = request.into_body();
            let mut stream = respond.send_response(Response::new(()), false).expect("200");
            let mut close = vec![0x88, 6];
            close.extend_from_slice(&close_payload(4002, "away"));
            stream.send_data(Bytes::from(close), false).expect("close frame");
            let mut received = Vec::new();
            let mut ended = false;
            let end = loop {
                match body.data().await {
                    Some(Ok(chunk)) => {
                        let _ = body.flow_control().release_capacity(chunk.len());
                        received.extend_from_slice(&chunk);
                        if !ended && received.len() >= 2 + 4 + usize::from(received[1] & 0x7f) {
                            // The whole masked close echo is in: end our side, as a server does.
                            ended = true;
                            stream.send_data(Bytes::new(), true).expect("END_STREAM");
                        }
                    }
                    Some(Err(e)) => break Err(e),
                    None => break Ok(()),
                }
            };
            (received, end)
        });
        let h2 = h2c(addr).await;
        let (mut ws, _) =
            h2.open(&format!("ws://{addr}/echo"), ClientRequestConfig::default(), &ws_config()).await.expect("open");
        match ws.recv().await {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!((u16::from(frame.code), frame.reason.as_str()), (4002, "away"));
            }
            other => panic!("expected the close frame, got {other:?}"),
        }
        while let Some(event) = ws.recv().await {
            event.expect("a clean end");
        }
        let (received, end) = within(Duration::from_secs(5), "the server's view", server).await.expect("server");
        assert_eq!(received.first(), Some(&0x88), "the client's close echo");
        end.expect("END_STREAM, not RST_STREAM");
    })
    .await;
}

/// The axum extractor on a route served by `axum::serve` (HTTP/1.1 and HTTP/2 on one port,
/// the connect protocol advertised by axum): a route that accepts CONNECT (`any`) takes the
/// WebSocket over h2 and, as before, over HTTP/1.1; a `get` route answers h2's CONNECT with 405.
#[tokio::test]
async fn axum_extractor_on_an_h2_route() {
    use axum::routing::{any, get};
    use wsx::axum::WebSocketUpgrade;

    async fn echo(upgrade: WebSocketUpgrade) -> axum::response::Response {
        upgrade.protocols(["echo.v1"]).on_upgrade(|mut ws| async move {
            while let Some(Ok(msg)) = ws.recv().await {
                if msg.is_data() && ws.feed(msg).await.is_err() {
                    break;
                }
            }
        })
    }

    deadline(async {
        let app = axum::Router::new().route("/ws", any(echo)).route("/get-only", get(echo));
        let (listener, addr) = listen().await;
        tokio::spawn(async move { axum::serve(listener, app).await });

        let h2 = h2c(addr).await;
        let request = ClientRequestConfig { protocols: vec!["echo.v1".into()], ..Default::default() };
        let (mut ws, response) =
            h2.open(&format!("ws://{addr}/ws"), request, &ws_config()).await.expect("open over h2");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(ws.protocol(), Some("echo.v1"));
        ws.send_text("axum over h2").await.expect("send");
        assert_eq!(ws.recv().await.expect("echo").expect("text"), Message::text("axum over h2"));
        ws.close(CloseCode::NORMAL, "").await.expect("close");

        match h2.open(&format!("ws://{addr}/get-only"), ClientRequestConfig::default(), &ws_config()).await {
            Err(Error::Handshake(HandshakeError::UnexpectedStatus { status, .. })) => {
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
            }
            other => panic!("expected 405, got {:?}", other.map(|_| ())),
        }

        let (mut ws, _) = wsx::connect(&format!("ws://{addr}/ws")).await.expect("HTTP/1.1 upgrade");
        ws.send_text("axum over HTTP/1.1").await.expect("send");
        assert_eq!(ws.recv().await.expect("echo").expect("text"), Message::text("axum over HTTP/1.1"));
        ws.close(CloseCode::NORMAL, "").await.expect("close");
    })
    .await;
}

/// `check_origin` with the default policy (the server's own origin only) on an axum route:
/// a same-origin page is admitted over HTTP/1.1 (the `Host` header) and over HTTP/2 (no
/// `Host`: the `:authority`); a foreign origin over HTTP/2 is still 403.
#[tokio::test]
async fn axum_check_origin_same_origin_over_http1_and_h2() {
    use axum::routing::any;
    use wsx::axum::WebSocketUpgrade;
    use wsx::origin::OriginPolicy;

    async fn echo(upgrade: WebSocketUpgrade) -> axum::response::Response {
        let policy = OriginPolicy::new::<&str>(&[]).expect("policy");
        if let Err(rejection) = upgrade.check_origin(&policy) {
            return upgrade.reject(rejection);
        }
        upgrade.on_upgrade(|mut ws| async move {
            while let Some(Ok(msg)) = ws.recv().await {
                if msg.is_data() && ws.feed(msg).await.is_err() {
                    break;
                }
            }
        })
    }

    deadline(async {
        let app = axum::Router::new().route("/ws", any(echo));
        let (listener, addr) = listen().await;
        tokio::spawn(async move { axum::serve(listener, app).await });
        let origin = format!("http://{addr}");

        let (mut ws, _) = wsx::ClientBuilder::new(format!("ws://{addr}/ws"))
            .origin(origin.clone())
            .connect()
            .await
            .expect("same origin over HTTP/1.1");
        ws.close(CloseCode::NORMAL, "").await.expect("close");

        let h2 = h2c(addr).await;
        let request = ClientRequestConfig { origin: Some(origin.clone()), ..Default::default() };
        let (mut ws, _) =
            h2.open(&format!("ws://{addr}/ws"), request, &ws_config()).await.expect("same origin over h2");
        ws.send_text("same origin").await.expect("send");
        assert_eq!(ws.recv().await.expect("echo").expect("text"), Message::text("same origin"));
        ws.close(CloseCode::NORMAL, "").await.expect("close");

        let request = ClientRequestConfig { origin: Some("http://evil.example".into()), ..Default::default() };
        match h2.open(&format!("ws://{addr}/ws"), request, &ws_config()).await {
            Err(Error::Handshake(HandshakeError::UnexpectedStatus { status, .. })) => {
                assert_eq!(status, StatusCode::FORBIDDEN);
            }
            other => panic!("expected 403, got {:?}", other.map(|_| ())),
        }
    })
    .await;
}

/// A raw h2 server answering the CONNECT with `200` and `head` (its extra headers), ending the
/// stream there when `end_stream`, then sending a text frame "hi" unless it ended.
async fn raw_200_server(head: &'static [(&'static str, &'static str)], end_stream: bool) -> SocketAddr {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        let mut conn = raw_h2_server(&listener).await;
        let (_request, mut respond) = conn.accept().await.expect("a request").expect("request");
        tokio::spawn(async move { while let Some(Ok(_)) = conn.accept().await {} });
        let mut response = Response::builder().status(200);
        for (name, value) in head {
            response = response.header(*name, *value);
        }
        let mut stream = respond.send_response(response.body(()).expect("response"), end_stream).expect("200");
        if !end_stream {
            let _ = stream.send_data(Bytes::from_static(b"\x81\x02hi"), false);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    addr
}

/// A `200` with `content-length` would have h2 reset the stream at the first WebSocket frame
/// (it enforces the length, RFC 9110 §9.3.6 notwithstanding): `open` refuses it, with a
/// message that says why. So is a `200` that already ended the stream.
#[tokio::test]
async fn client_refuses_a_200_with_content_length_or_end_stream() {
    deadline(async {
        for (head, end_stream, says) in
            [(&[("content-length", "0")][..], false, "content-length"), (&[][..], true, "END_STREAM")]
        {
            let addr = raw_200_server(head, end_stream).await;
            let h2 = h2c(addr).await;
            match h2.open(&format!("ws://{addr}/echo"), ClientRequestConfig::default(), &ws_config()).await {
                Err(Error::Handshake(e @ HandshakeError::UnusableConnectResponse(_))) => {
                    assert!(e.to_string().contains(says), "{e}");
                }
                Err(other) => panic!("{says}: expected UnusableConnectResponse, got {other:?}"),
                Ok((mut ws, _)) => {
                    let first = within(Duration::from_secs(3), "the first message", ws.recv()).await;
                    panic!("{says}: the 200 was accepted, then the first recv gave {first:?}");
                }
            }
        }
    })
    .await;
}

/// A `content-length` among the extra headers is not sent: the server's h2 would enforce it
/// and reset our stream once the WebSocket's frames exceeded it.
#[tokio::test]
async fn client_does_not_send_a_user_content_length() {
    deadline(async {
        let (addr, mut events) = start(ServerSetup::default()).await;
        let h2 = h2c(addr).await;
        let mut request = ClientRequestConfig::default();
        request.headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from_static("0"));
        let (mut ws, _) = h2.open(&format!("ws://{addr}/echo"), request, &ws_config()).await.expect("open");
        assert!(matches!(next_event(&mut events).await, Event::Opened { .. }));
        ws.send_text("more than zero bytes").await.expect("send");
        assert_eq!(ws.recv().await.expect("echo").expect("text"), Message::text("more than zero bytes"));
        ws.close(CloseCode::NORMAL, "").await.expect("close");
    })
    .await;
}

/// An HTTP/2 server spoken by hand, frame by frame, that breaks the rules h2 enforces: it
/// answers the CONNECT with `200`, then sends a DATA frame of `overrun` bytes on the stream,
/// more than the stream's window the client advertised. The client's h2 resets the stream
/// itself (FLOW_CONTROL_ERROR).
async fn window_overrunning_server(overrun: usize) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).expect("small frame").to_be_bytes();
        let mut out = vec![len[1], len[2], len[3], kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.expect("accept");
        let mut preface = [0u8; 24];
        tcp.read_exact(&mut preface).await.expect("preface");
        // SETTINGS_ENABLE_CONNECT_PROTOCOL (0x8) = 1.
        tcp.write_all(&frame(0x4, 0, 0, &[0, 0x8, 0, 0, 0, 1])).await.expect("settings");
        loop {
            let mut head = [0u8; 9];
            if tcp.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            if tcp.read_exact(&mut payload).await.is_err() {
                return;
            }
            match kind {
                0x4 if flags & 1 == 0 => tcp.write_all(&frame(0x4, 1, 0, &[])).await.expect("settings ack"),
                0x6 if flags & 1 == 0 => tcp.write_all(&frame(0x6, 1, 0, &payload)).await.expect("pong"),
                0x1 => {
                    // HEADERS, END_HEADERS: `:status 200` (HPACK static index 8).
                    tcp.write_all(&frame(0x1, 0x4, stream, &[0x88])).await.expect("200");
                    // Let the client's `open` return before the stream is reset.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    tcp.write_all(&frame(0x0, 0, stream, &vec![0x81; overrun])).await.expect("DATA");
                }
                _ => {}
            }
        }
    });
    addr
}

/// A reset our own h2 makes (the server overran the stream's window) is not blamed on the
/// peer's RST_STREAM: the message says our HTTP/2 layer reset the stream, and it is still an
/// abnormal closure (1006).
#[tokio::test]
async fn a_reset_by_our_own_h2_is_worded_as_ours() {
    deadline(async {
        const WINDOW: u32 = 1024;
        let addr = window_overrunning_server(2 * WINDOW as usize).await;
        let mut config = Http2Config::default();
        config.stream_window = WINDOW;
        let h2 = wsx::h2::connect(&format!("ws://{addr}/"), &config).await.expect("h2");
        let (mut ws, _) =
            h2.open(&format!("ws://{addr}/echo"), ClientRequestConfig::default(), &ws_config()).await.expect("open");
        match within(Duration::from_secs(5), "the reset", ws.recv()).await {
            Some(Err(e @ Error::Io(_))) => {
                let text = e.to_string();
                assert!(text.contains("our HTTP/2 layer reset the stream"), "{text}");
                assert!(text.contains("peer broke HTTP/2's rules"), "{text}");
                assert!(!text.contains("the peer reset"), "{text}");
                assert_eq!(e.close_code(), Some(CloseCode::ABNORMAL));
            }
            other => panic!("expected the local reset, got {other:?}"),
        }
    })
    .await;
}

/// Settings h2 cannot take (a window above 2^31 − 1: h2 asserts on the connection window and
/// would send an invalid SETTINGS value for the stream window; a send buffer above u32::MAX)
/// are `Error::Config` before anything is sent, from `connect` and `handshake` alike, not a
/// panic inside them.
#[tokio::test]
async fn http2_config_out_of_range_is_a_config_error() {
    deadline(async {
        let (addr, _events) = start(ServerSetup::default()).await;
        let mut cases = Vec::new();
        for window in [u32::MAX, wsx::h2::MAX_WINDOW + 1, 0] {
            let mut config = Http2Config::default();
            config.connection_window = window;
            cases.push(("connection_window", config));
            let mut config = Http2Config::default();
            config.stream_window = window;
            cases.push(("stream_window", config));
        }
        let mut config = Http2Config::default();
        config.max_send_buffer = usize::MAX;
        cases.push(("max_send_buffer", config));
        let mut config = Http2Config::default();
        config.handshake_timeout = Duration::ZERO;
        cases.push(("handshake_timeout", config));
        for (field, config) in cases {
            assert!(config.validate().is_err(), "{field}");
            let url = format!("ws://{addr}/");
            let (connect_config, handshake_config) = (config.clone(), config.clone());
            let connected = tokio::spawn(async move { wsx::h2::connect(&url, &connect_config).await.map(|_| ()) });
            match within(Duration::from_secs(5), "connect", connected).await {
                Ok(Err(Error::Config(e))) => assert!(e.to_string().contains(field), "{field}: {e}"),
                Ok(other) => panic!("{field}: connect gave {other:?}"),
                Err(panic) => panic!("{field}: connect panicked: {panic}"),
            }
            let tcp = TcpStream::connect(addr).await.expect("tcp");
            let handshake =
                tokio::spawn(async move { Http2Connection::handshake(tcp, &handshake_config).await.map(|_| ()) });
            match within(Duration::from_secs(5), "handshake", handshake).await {
                Ok(Err(Error::Config(_))) => {}
                Ok(other) => panic!("{field}: handshake gave {other:?}"),
                Err(panic) => panic!("{field}: handshake panicked: {panic}"),
            }
        }
        let mut config = Http2Config::default();
        config.stream_window = wsx::h2::MAX_WINDOW;
        config.connection_window = wsx::h2::MAX_WINDOW;
        config.validate().expect("the largest windows are valid");
        let h2 = wsx::h2::connect(&format!("ws://{addr}/"), &config).await.expect("the largest windows");
        let (mut ws, _) =
            h2.open(&format!("ws://{addr}/echo"), ClientRequestConfig::default(), &ws_config()).await.expect("open");
        ws.close(CloseCode::NORMAL, "").await.expect("close");
    })
    .await;
}

/// A `wss://` URL on an h2c connection (plain TCP) is `Error::InvalidUrl`, not a WebSocket
/// over cleartext the URL said would be encrypted.
#[tokio::test]
async fn open_refuses_a_scheme_that_does_not_match_the_connection() {
    deadline(async {
        let (addr, _events) = start(ServerSetup::default()).await;
        let h2 = h2c(addr).await;
        match h2.open(&format!("wss://{addr}/echo"), ClientRequestConfig::default(), &ws_config()).await {
            Err(Error::InvalidUrl(why)) => assert!(why.contains("ws://"), "{why}"),
            other => panic!("expected InvalidUrl, got {:?}", other.map(|_| ())),
        }
        let (mut ws, _) =
            h2.open(&format!("ws://{addr}/echo"), ClientRequestConfig::default(), &ws_config()).await.expect("ws://");
        ws.close(CloseCode::NORMAL, "").await.expect("close");
    })
    .await;
}

/// Every wait in the client has a deadline: a server that never answers the CONNECT ends
/// `open` at the WebSocket's handshake timeout, and a TCP peer that never sends its SETTINGS
/// ends `connect` at the HTTP/2 handshake timeout.
#[tokio::test]
async fn open_and_connect_end_at_their_handshake_timeouts() {
    deadline(async {
        let (listener, addr) = listen().await;
        tokio::spawn(async move {
            let mut conn = raw_h2_server(&listener).await;
            let mut held = Vec::new();
            while let Some(Ok(request)) = conn.accept().await {
                held.push(request);
            }
        });
        let h2 = h2c(addr).await;
        let mut config = ws_config();
        config.proto.handshake_timeout = Duration::from_millis(500);
        let url = format!("ws://{addr}/echo");
        let opened = h2.open(&url, ClientRequestConfig::default(), &config);
        match within(Duration::from_secs(5), "open", opened).await {
            Err(Error::HandshakeTimeout(t)) => assert_eq!(t, Duration::from_millis(500)),
            other => panic!("expected the handshake timeout, got {:?}", other.map(|_| ())),
        }

        let (listener, addr) = listen().await;
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            tokio::time::sleep(Duration::from_secs(20)).await;
            drop(tcp);
        });
        let mut config = Http2Config::default();
        config.handshake_timeout = Duration::from_millis(500);
        let url = format!("ws://{addr}/");
        let connected = wsx::h2::connect(&url, &config);
        match within(Duration::from_secs(5), "connect", connected).await {
            Err(Error::HandshakeTimeout(_)) => {}
            other => panic!("expected the handshake timeout, got {:?}", other.map(|_| ())),
        }
    })
    .await;
}

/// A WebSocket dropped without closing resets its stream: the server sees the client's
/// RST_STREAM CANCEL.
#[tokio::test]
async fn dropping_the_websocket_resets_its_stream() {
    deadline(async {
        let (listener, addr) = listen().await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut conn = raw_h2_server(&listener).await;
            let (request, mut respond) = conn.accept().await.expect("a request").expect("request");
            tokio::spawn(async move { while let Some(Ok(_)) = conn.accept().await {} });
            let _stream = respond.send_response(Response::new(()), false).expect("200");
            let mut body = request.into_body();
            let _ = tx.send(body.data().await.map(|r| r.map(|_| ())));
        });
        let h2 = h2c(addr).await;
        let (ws, _) =
            h2.open(&format!("ws://{addr}/echo"), ClientRequestConfig::default(), &ws_config()).await.expect("open");
        drop(ws);
        match within(Duration::from_secs(5), "the server's view", rx).await.expect("server") {
            Some(Err(e)) => {
                assert!(e.is_reset() && e.is_remote(), "{e:?}");
                assert_eq!(e.reason(), Some(h2::Reason::CANCEL));
            }
            other => panic!("expected RST_STREAM CANCEL, got {other:?}"),
        }
    })
    .await;
}
