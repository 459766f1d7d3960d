//! The axum extractor over real sockets, served by `axum::serve`: echo, subprotocols,
//! permessage-deflate, the stream the connection runs on, refusals with the same answers as
//! `wsx::accept`, the Origin check, and deadlines against clients that stall or vanish.
#![cfg(feature = "axum")]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::{Bytes, BytesMut};
use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use wsx::axum::{UpgradeRejection, WebSocketUpgrade};
use wsx::hyper::UpgradedStream;
use wsx::origin::{OriginPolicy, Scheme};
use wsx::proto::deflate::DeflateConfig;
use wsx::{ClientBuilder, Error, Message, WebSocket, WebSocketConfig};

/// What the server side reports to the test.
#[derive(Debug)]
enum Event {
    /// A connection opened; whether it runs on the TCP socket itself.
    Opened { tcp: bool },
    /// An echo loop ended, with the error that ended it, if any.
    EchoEnded(Option<Error>),
    /// A sender stopped: its error, and how long after its first send.
    SendFailed(Error, Duration),
    /// The upgrade never completed.
    UpgradeFailed(Error),
}

type Events = mpsc::UnboundedSender<Event>;

async fn echo(mut ws: WebSocket<UpgradedStream>, events: Events) {
    let _ = events.send(Event::Opened { tcp: matches!(ws.get_ref(), UpgradedStream::Tcp(_)) });
    let mut error = None;
    while let Some(msg) = ws.recv().await {
        match msg {
            Ok(msg) if msg.is_data() => {
                if let Err(e) = ws.feed(msg).await {
                    error = Some(e);
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    let _ = events.send(Event::EchoEnded(error));
}

async fn echo_route(State(events): State<Events>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.protocols(["chat.v1", "echo.v1"]).deflate(DeflateConfig::default()).on_upgrade(move |ws| echo(ws, events))
}

async fn origin_route(State(events): State<Events>, upgrade: WebSocketUpgrade) -> Result<Response, UpgradeRejection> {
    upgrade.check_origin(&OriginPolicy::new(&["http://allowed.example"]).expect("valid origins"))?;
    Ok(upgrade.on_upgrade(move |ws| echo(ws, events)))
}

/// Plain HTTP and WebSocket on one route.
async fn maybe_route(State(events): State<Events>, upgrade: Option<WebSocketUpgrade>) -> Response {
    match upgrade {
        Some(upgrade) => upgrade.on_upgrade(move |ws| echo(ws, events)),
        None => Response::new("plain HTTP here\n".into()),
    }
}

/// Sends 64 KiB messages to a client that never reads, with a short write timeout.
async fn flood_route(State(events): State<Events>, upgrade: WebSocketUpgrade) -> Response {
    let mut config = WebSocketConfig::default();
    config.proto.write_timeout = Some(Duration::from_millis(300));
    upgrade.config(config).on_upgrade(move |mut ws| async move {
        let started = Instant::now();
        let payload = Bytes::from(vec![7u8; 64 << 10]);
        loop {
            if let Err(e) = ws.send_binary(payload.clone()).await {
                let _ = events.send(Event::SendFailed(e, started.elapsed()));
                return;
            }
        }
    })
}

/// A handler that answers only after the handshake timeout has passed.
async fn slow_route(State(events): State<Events>, upgrade: WebSocketUpgrade) -> Response {
    let mut config = WebSocketConfig::default();
    config.proto.handshake_timeout = Duration::from_millis(200);
    let failed = events.clone();
    let response = upgrade
        .config(config)
        .on_failed_upgrade(move |e| {
            let _ = failed.send(Event::UpgradeFailed(e));
        })
        .on_upgrade(move |ws| echo(ws, events));
    tokio::time::sleep(Duration::from_millis(600)).await;
    response
}

/// Scheme from an extension layer (a server behind TLS).
async fn tls_origin_route(
    State(events): State<Events>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, UpgradeRejection> {
    assert_eq!(upgrade.scheme(), Scheme::Https);
    upgrade.check_origin(&OriginPolicy::default())?;
    Ok(upgrade.on_upgrade(move |ws| echo(ws, events)))
}

async fn refuse_route(upgrade: WebSocketUpgrade) -> Response {
    upgrade.reject(wsx::Rejection::new(StatusCode::UNAUTHORIZED, "no token\n"))
}

async fn bad_config_route(upgrade: WebSocketUpgrade) -> Response {
    upgrade.max_frame_size(0).on_upgrade(|_| async {})
}

async fn start() -> (SocketAddr, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let tls = Router::new().route("/tls-origin", get(tls_origin_route)).layer(axum::Extension(Scheme::Https));
    let app = Router::new()
        .route("/echo", get(echo_route))
        .route("/origin", get(origin_route))
        .route("/maybe", get(maybe_route))
        .route("/flood", get(flood_route))
        .route("/slow", get(slow_route))
        .route("/refuse", get(refuse_route))
        .route("/bad-config", get(bad_config_route))
        .merge(tls)
        .with_state(tx);
    let (listener, addr) = listen().await;
    tokio::spawn(async move { axum::serve(listener, app).await.expect("axum::serve") });
    (addr, rx)
}

async fn next_event(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    within(Duration::from_secs(10), "server event", rx.recv()).await.expect("the server is running")
}

#[tokio::test]
async fn echoes_text_and_binary_on_the_tcp_socket() {
    deadline(async {
        let (addr, mut events) = start().await;
        let (mut ws, response) = wsx::connect(&format!("ws://{addr}/echo")).await.expect("upgrade");
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert!(matches!(next_event(&mut events).await, Event::Opened { tcp: true }), "downcast to the TcpStream");
        ws.send_text("hello").await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::Text("hello".into()));
        let big = Bytes::from(pattern(3 << 20, 1));
        ws.send_binary(big.clone()).await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::Binary(big));
        ws.close(wsx::CloseCode::NORMAL, "bye").await.unwrap();
        assert!(matches!(next_event(&mut events).await, Event::EchoEnded(None)));
    })
    .await;
}

/// The server's first choice among the client's offer; none when nothing matches.
#[tokio::test]
async fn selects_the_servers_preferred_subprotocol() {
    deadline(async {
        let (addr, _events) = start().await;
        let url = format!("ws://{addr}/echo");
        let offer = ClientBuilder::new(&url).protocol("x.v9").protocol("echo.v1").protocol("chat.v1");
        let (ws, response) = offer.connect().await.expect("upgrade");
        assert_eq!(ws.protocol(), Some("chat.v1"));
        assert_eq!(response.headers()["sec-websocket-protocol"], "chat.v1");
        let (ws, _) = ClientBuilder::new(&url).protocol("echo.v1").connect().await.expect("upgrade");
        assert_eq!(ws.protocol(), Some("echo.v1"));
        let (ws, response) = ClientBuilder::new(&url).protocol("x.v9").connect().await.expect("upgrade");
        assert_eq!(ws.protocol(), None);
        assert!(response.headers().get("sec-websocket-protocol").is_none());
    })
    .await;
}

#[tokio::test]
async fn negotiates_permessage_deflate() {
    deadline(async {
        let (addr, _events) = start().await;
        let mut config = WebSocketConfig::default();
        config.deflate = Some(DeflateConfig::default());
        let (mut ws, _) = ClientBuilder::new(format!("ws://{addr}/echo")).config(config).connect().await.unwrap();
        let agreed = ws.extensions().expect("an extension agreed").to_owned();
        assert!(agreed.starts_with("permessage-deflate"), "{agreed}");
        let text = "compressible ".repeat(10_000);
        ws.send_text(text.clone()).await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::Text(text.into()));
        // Without an offer, nothing is agreed.
        let (ws, _) = wsx::connect(&format!("ws://{addr}/echo")).await.unwrap();
        assert_eq!(ws.extensions(), None);
    })
    .await;
}

/// Frames the client sends right behind its request, in the same write, are read first.
#[tokio::test]
async fn frames_sent_with_the_request_are_not_lost() {
    deadline(async {
        let (addr, _events) = start().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut wire = upgrade_request().replace("GET /raw", "GET /echo").into_bytes();
        wire.extend(masked_frame(OP_TEXT, true, b"early", [1, 2, 3, 4]));
        wire.extend(masked_frame(OP_BINARY, true, &pattern(300, 2), [5, 6, 7, 8]));
        s.write_all(&wire).await.unwrap();
        let (head, mut buf) = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        let f = read_frame(&mut s, &mut buf).await.expect("first echo");
        assert_eq!((f.opcode, f.payload.as_slice()), (OP_TEXT, &b"early"[..]));
        let f = read_frame(&mut s, &mut buf).await.expect("second echo");
        assert_eq!((f.opcode, f.payload), (OP_BINARY, pattern(300, 2)));
    })
    .await;
}

/// Every malformed upgrade gets what `wsx::accept` answers: status, headers that matter, body.
#[tokio::test]
async fn refusals_match_wsx_accept() {
    deadline(async {
        let (addr, _events) = start().await;
        let request = upgrade_request().replace("GET /raw", "GET /echo");
        let cases = [
            ("not an upgrade", "GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_owned(), 400),
            ("bad version", request.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"), 426),
            ("no version", request.replace("Sec-WebSocket-Version: 13\r\n", ""), 426),
            ("no key", request.replace(&format!("Sec-WebSocket-Key: {SAMPLE_KEY}\r\n"), ""), 400),
            ("bad key", request.replace(SAMPLE_KEY, "c2hvcnQ="), 400),
            ("no Connection: Upgrade", request.replace("Connection: Upgrade", "Connection: keep-alive"), 400),
            // Over the handshake limits (64 headers, 16 KiB of head): hyper takes these, wsx's
            // limits still apply.
            (
                "80 headers",
                request.replace(
                    "\r\n\r\n",
                    &format!("\r\n{}\r\n", (0..80).map(|i| format!("X-{i}: v\r\n")).collect::<String>()),
                ),
                431,
            ),
            (
                "a 20 KiB header",
                request.replace("\r\n\r\n", &format!("\r\nX-Big: {}\r\n\r\n", "b".repeat(20 << 10))),
                431,
            ),
        ];
        for (what, raw, status) in cases {
            let via_axum = http_exchange(addr, &raw).await;
            let via_accept = accept_answer(&raw).await;
            assert_eq!(via_axum.status, status, "{what}: {via_axum:?}");
            assert_eq!(via_axum.status, via_accept.status, "{what}");
            assert_eq!(via_axum.body, via_accept.body, "{what}");
            assert!(!via_axum.body.is_empty(), "{what}: a body says what was wrong");
            assert_eq!(via_axum.header("sec-websocket-version"), via_accept.header("sec-websocket-version"), "{what}");
            assert_eq!(via_axum.header("content-type"), Some("text/plain; charset=utf-8"), "{what}");
        }
        // A POST is refused by the router (no POST route), as axum does for any route.
        let post = http_exchange(addr, &request.replace("GET /echo", "POST /echo")).await;
        assert_eq!(post.status, 405);
    })
    .await;
}

#[tokio::test]
async fn origin_policy_refuses_with_403() {
    deadline(async {
        let (addr, _events) = start().await;
        let url = format!("ws://{addr}/origin");
        let refused = http_exchange(addr, &origin_request("/origin", "http://evil.example")).await;
        assert_eq!(refused.status, 403);
        assert!(String::from_utf8_lossy(&refused.body).contains("http://evil.example"), "{refused:?}");
        let err = ClientBuilder::new(&url).origin("http://evil.example").connect().await.expect_err("refused");
        assert!(err.to_string().contains("403"), "{err}");
        // Listed, same origin, and no Origin at all (not a browser).
        ClientBuilder::new(&url).origin("http://allowed.example").connect().await.expect("listed");
        ClientBuilder::new(&url).origin(format!("http://{addr}")).connect().await.expect("same origin");
        ClientBuilder::new(&url).connect().await.expect("no Origin");
        // Same origin is http:// on a plain server: the https page of the same host is another.
        let https = http_exchange(addr, &origin_request("/origin", &format!("https://{addr}"))).await;
        assert_eq!(https.status, 403);
    })
    .await;
}

/// Behind TLS (a `Scheme::Https` extension), the server's own origin is https://HOST.
#[tokio::test]
async fn same_origin_follows_the_scheme_extension() {
    deadline(async {
        let (addr, _events) = start().await;
        let url = format!("ws://{addr}/tls-origin");
        ClientBuilder::new(&url).origin(format!("https://{addr}")).connect().await.expect("https page");
        let http = http_exchange(addr, &origin_request("/tls-origin", &format!("http://{addr}"))).await;
        assert_eq!(http.status, 403, "an http page is another origin for a TLS server");
    })
    .await;
}

#[tokio::test]
async fn optional_extractor_serves_plain_http_and_websockets() {
    deadline(async {
        let (addr, _events) = start().await;
        let plain = http_exchange(addr, "GET /maybe HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!((plain.status, plain.body.as_slice()), (200, &b"plain HTTP here\n"[..]));
        let (mut ws, _) = wsx::connect(&format!("ws://{addr}/maybe")).await.unwrap();
        ws.send_text("both").await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::Text("both".into()));
        // An upgrade request that is invalid is still refused, not served as plain HTTP.
        let raw = upgrade_request().replace("GET /raw", "GET /maybe").replace("Version: 13", "Version: 7");
        assert_eq!(http_exchange(addr, &raw).await.status, 426);
    })
    .await;
}

#[tokio::test]
async fn reject_and_bad_configuration_answer_with_their_status() {
    deadline(async {
        let (addr, mut events) = start().await;
        let raw = upgrade_request().replace("GET /raw", "GET /refuse");
        let refused = http_exchange(addr, &raw).await;
        assert_eq!((refused.status, refused.body.as_slice()), (401, &b"no token\n"[..]));
        let raw = upgrade_request().replace("GET /raw", "GET /bad-config");
        let refused = http_exchange(addr, &raw).await;
        assert_eq!((refused.status, refused.body.as_slice()), (500, &b"server misconfigured"[..]));
        assert!(events.try_recv().is_err(), "no connection was opened");
    })
    .await;
}

/// A client that upgrades and never reads: the server's sends fail after the write timeout
/// instead of waiting forever.
#[tokio::test]
async fn a_client_that_stops_reading_meets_the_write_timeout() {
    deadline(async {
        let (addr, mut events) = start().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(upgrade_request().replace("GET /raw", "GET /flood").as_bytes()).await.unwrap();
        // The client reads nothing more: not even the 101.
        match next_event(&mut events).await {
            Event::SendFailed(e, after) => {
                assert_eq!(e.kind(), wsx::ErrorKind::Timeout, "{e}");
                assert!(after < Duration::from_secs(5), "took {after:?}");
            }
            other => panic!("unexpected {other:?}"),
        }
        drop(s);
    })
    .await;
}

/// A client that vanishes right after its request: the connection's task ends.
#[tokio::test]
async fn a_client_that_vanishes_ends_the_connection_task() {
    deadline(async {
        let (addr, mut events) = start().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(upgrade_request().replace("GET /raw", "GET /echo").as_bytes()).await.unwrap();
        let (head, _) = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(matches!(next_event(&mut events).await, Event::Opened { tcp: true }));
        drop(s);
        match next_event(&mut events).await {
            Event::EchoEnded(Some(e)) => assert_eq!(e.kind(), wsx::ErrorKind::Io, "{e}"),
            other => panic!("unexpected {other:?}"),
        }
    })
    .await;
}

/// The handshake timeout bounds the wait for the connection, counted from the extraction: a
/// handler that answers too late gets no connection, and the failure is reported.
#[tokio::test]
async fn the_handshake_timeout_bounds_the_upgrade() {
    deadline(async {
        let (addr, mut events) = start().await;
        let started = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(upgrade_request().replace("GET /raw", "GET /slow").as_bytes()).await.unwrap();
        match next_event(&mut events).await {
            Event::UpgradeFailed(e) => {
                assert!(matches!(e, Error::HandshakeTimeout(t) if t == Duration::from_millis(200)), "{e}");
                let after = started.elapsed();
                assert!(after < Duration::from_millis(600), "failed after {after:?}, before the handler answered");
            }
            other => panic!("unexpected {other:?}"),
        }
        // The client gets the 101 and then the end of the connection.
        let mut rest = Vec::new();
        let _ = within(Duration::from_secs(5), "the connection ends", s.read_to_end(&mut rest)).await;
        assert!(String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 101 "));
    })
    .await;
}

// ------------------------------------------------------------------------------------------------

fn origin_request(path: &str, origin: &str) -> String {
    upgrade_request()
        .replace("GET /raw", &format!("GET {path}"))
        .replace("\r\n\r\n", &format!("\r\nOrigin: {origin}\r\n\r\n"))
}

/// A response read off a keep-alive connection (by its Content-Length).
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Reads a response head; returns it and the bytes read past it.
async fn read_head(s: &mut TcpStream) -> (String, BytesMut) {
    let mut buf = BytesMut::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = buf.split_to(end + 4);
            return (String::from_utf8(head.to_vec()).expect("ASCII head"), buf);
        }
        let n = within(Duration::from_secs(5), "response head", s.read_buf(&mut buf)).await.expect("read");
        assert!(n > 0, "connection closed before the head ended: {:?}", String::from_utf8_lossy(&buf));
    }
}

fn parse_answer(head: &str, body: Vec<u8>) -> Answer {
    let mut lines = head.trim_end().split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status line");
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned())).collect();
    Answer { status, headers, body }
}

/// Sends `raw` and reads one response, its body by Content-Length.
async fn http_exchange(addr: SocketAddr, raw: &str) -> Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let (head, mut body) = read_head(&mut s).await;
    let mut answer = parse_answer(&head, Vec::new());
    let len: usize = answer.header("content-length").map_or(0, |v| v.parse().expect("numeric Content-Length"));
    while body.len() < len {
        let n = within(Duration::from_secs(5), "response body", s.read_buf(&mut body)).await.expect("read");
        assert!(n > 0, "connection closed inside the body");
    }
    answer.body = body.to_vec();
    answer
}

/// What `wsx::accept` answers to `raw`.
async fn accept_answer(raw: &str) -> Answer {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = wsx::accept(tcp).await;
    });
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let response = read_http_response(&mut s).await;
    server.await.unwrap();
    let head = std::iter::once(response.status_line.clone()).chain(response.headers.clone()).collect::<Vec<_>>();
    parse_answer(&head.join("\r\n"), response.body)
}
