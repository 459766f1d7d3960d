//! `wsx serve` over HTTP/2 (ALPN `h2` on its TLS port): the page, static files and WebSockets
//! (extended CONNECT, RFC 8441) on one connection, the refusals, `--no-http2`, many WebSockets
//! with a slow reader among them, and shutdown. The real binary, driven by the `h2` crate for
//! raw requests and by `wsx::h2` for WebSockets.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Server;
use http::{Method, Request, StatusCode};
use tokio::net::TcpStream;
use wsx::h2::{Http2Config, Http2Connection};
use wsx::proto::handshake::ClientRequestConfig;
use wsx::tls::ClientTls;
use wsx::{CloseCode, Message, WebSocketConfig};

/// Fails the test instead of hanging when `fut` takes longer than `secs`.
async fn within<T>(secs: u64, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut).await.unwrap_or_else(|_| panic!("{what}: not within {secs} s"))
}

/// A TLS connection to `addr` offering these ALPN protocols (the server's certificate is
/// self-signed: not verified), and the protocol the server chose.
async fn tls(addr: SocketAddr, alpn: &[&[u8]]) -> (tokio_rustls::client::TlsStream<TcpStream>, Option<Vec<u8>>) {
    let built = ClientTls::new().danger_accept_invalid_certs().build().expect("client TLS");
    let mut config = (*built).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let stream = wsx::tls::connect(Arc::new(config), "localhost", tcp).await.expect("TLS handshake");
    let chosen = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    (stream, chosen)
}

/// A raw h2 connection (ALPN h2) once the server's SETTINGS are in.
async fn raw_h2(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let (stream, alpn) = tls(addr, &[b"h2"]).await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "the server did not choose h2");
    let (send, mut conn) = h2::client::handshake(stream).await.expect("h2 handshake");
    let mut ping = conn.ping_pong().expect("ping_pong");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    within(5, "PING answered", ping.ping(h2::Ping::opaque())).await.expect("pong");
    send.ready().await.expect("ready")
}

/// The status, headers and body of one request on a raw h2 connection.
async fn raw_request(
    send: &mut h2::client::SendRequest<Bytes>,
    request: Request<()>,
) -> (http::response::Parts, Bytes) {
    let (response, _stream) = send.send_request(request, true).expect("send_request");
    let response = within(5, "response", response).await.expect("response");
    let (parts, mut body) = response.into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = within(5, "body", body.data()).await {
        let chunk = chunk.expect("body");
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    (parts, Bytes::from(data))
}

/// An extended CONNECT for `path` with `:protocol` `protocol` (none: a plain CONNECT) and these
/// headers.
fn connect(addr: SocketAddr, path: &str, protocol: Option<&str>, headers: &[(&str, &str)]) -> Request<()> {
    let mut request = Request::builder().method(Method::CONNECT).uri(format!("https://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request.body(()).expect("request");
    if let Some(p) = protocol {
        request.extensions_mut().insert(h2::ext::Protocol::from(p));
    }
    request
}

fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut request = Request::builder().uri(format!("https://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(()).expect("request")
}

/// A `wsx::h2` connection for WebSockets, over TLS with ALPN h2.
async fn ws_h2(addr: SocketAddr) -> Http2Connection {
    let (stream, _) = tls(addr, &[b"h2"]).await;
    within(5, "h2 connection", Http2Connection::handshake(stream, &Http2Config::default())).await.expect("h2")
}

async fn open(h2: &Http2Connection, addr: SocketAddr, path: &str) -> wsx::WebSocket<wsx::h2::Http2Stream> {
    let url = format!("wss://{addr}{path}");
    let (ws, response) = within(5, "open", h2.open(&url, ClientRequestConfig::default(), &WebSocketConfig::default()))
        .await
        .expect("extended CONNECT accepted");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    ws
}

/// The number after `conn=` in a log line.
fn conn_of(line: &str) -> String {
    line.split("conn=").nth(1).and_then(|s| s.split_whitespace().next()).expect("conn= in the line").to_owned()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wsx-h2-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The page, a static file (whole, a range, a conditional GET) and WebSockets on one h2
/// connection; the log puts every one of them on the same connection number, over HTTP/2.
#[tokio::test]
async fn page_files_and_websockets_on_one_connection() {
    let site = TempDir::new("site");
    let content: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(site.0.join("data.bin"), &content).unwrap();
    std::fs::write(site.0.join(".secret"), b"no").unwrap();
    let server = Server::start(&["--tls-self-signed", "--static", site.0.to_str().unwrap()]);
    let addr = server.addr;

    let offer: [&[u8]; 2] = [b"h2", b"http/1.1"];
    let (stream, alpn) = tls(addr, &offer).await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "h2 is the server's first choice");
    let (mut send, mut conn) = h2::client::handshake(stream).await.expect("h2 handshake");
    let mut ping = conn.ping_pong().expect("ping_pong");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    within(5, "PING", ping.ping(h2::Ping::opaque())).await.expect("pong");

    let (page, body) = raw_request(&mut send, get(addr, "/", &[])).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("<html"), "the demo page");
    let (whole, body) = raw_request(&mut send, get(addr, "/data.bin", &[])).await;
    assert_eq!((whole.status, &body[..]), (StatusCode::OK, &content[..]));
    let modified = whole.headers.get("last-modified").expect("last-modified").to_str().unwrap().to_owned();
    let (range, body) = raw_request(&mut send, get(addr, "/data.bin", &[("range", "bytes=100-199")])).await;
    assert_eq!((range.status, &body[..]), (StatusCode::PARTIAL_CONTENT, &content[100..200]));
    let (unchanged, _) = raw_request(&mut send, get(addr, "/data.bin", &[("if-modified-since", &modified)])).await;
    assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);
    assert_eq!(raw_request(&mut send, get(addr, "/.secret", &[])).await.0.status, StatusCode::NOT_FOUND);
    assert_eq!(raw_request(&mut send, get(addr, "/../etc/passwd", &[])).await.0.status, StatusCode::BAD_REQUEST);
    // A plain GET to a WebSocket endpoint: 426, without the `Upgrade` header HTTP/2 forbids.
    let (plain, _) = raw_request(&mut send, get(addr, "/echo", &[])).await;
    assert_eq!(plain.status, StatusCode::UPGRADE_REQUIRED);
    assert!(plain.headers.get("upgrade").is_none());

    let page_line = server.expect_log(&["http", "path=\"/\"", "status=200", "http=\"2\""]);
    let page_conn = conn_of(&page_line);
    for path in ["\"/data.bin\"", "\"/echo\""] {
        let line = server.expect_log(&["http", path, "http=\"2\""]);
        assert_eq!(conn_of(&line), page_conn, "{line}");
    }

    // WebSockets on one connection of wsx's client: text, 1 MiB of binary, a room, a close.
    let h2 = ws_h2(addr).await;
    let mut echo = open(&h2, addr, "/echo").await;
    let mut a = open(&h2, addr, "/room/h2test").await;
    let mut b = open(&h2, addr, "/room/h2test").await;
    echo.send_text("over h2").await.unwrap();
    assert_eq!(within(5, "echo", echo.recv()).await.unwrap().unwrap(), Message::text("over h2"));
    let big = Bytes::from((0..(1u32 << 20)).map(|i| (i % 253) as u8).collect::<Vec<u8>>());
    echo.send_binary(big.clone()).await.unwrap();
    match within(10, "1 MiB echo", echo.recv()).await.unwrap().unwrap() {
        Message::Binary(data) => assert!(data == big, "the 1 MiB echo differs"),
        other => panic!("{other:?}"),
    }
    // Both members joined before the message (the room answers its members only).
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.send_text("to the room").await.unwrap();
    assert_eq!(within(5, "room", b.recv()).await.unwrap().unwrap(), Message::text("to the room"));
    let reply = within(5, "close", echo.close(CloseCode::from(4000), "bye")).await.expect("clean close");
    assert_eq!(reply.map(|f| (u16::from(f.code), f.reason.to_string())), Some((4000, "bye".to_owned())));

    let opens: Vec<String> = server
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(" open ") && l.contains("http=\"2\""))
        .cloned()
        .collect();
    assert_eq!(opens.len(), 3, "three WebSockets opened over HTTP/2: {opens:?}");
    let ws_conn = conn_of(&opens[0]);
    assert!(opens.iter().all(|l| conn_of(l) == ws_conn), "one connection: {opens:?}");
    assert_ne!(ws_conn, page_conn, "the client's own connection, not the raw one");
    server.expect_log(&["closed", "path=\"/echo\"", "code=4000", "by=\"client\""]);
}

/// Every refusal of an extended CONNECT on `wsx serve`, with its status.
#[tokio::test]
async fn refusals_over_h2() {
    let server = Server::start(&["--tls-self-signed", "--max-connections", "1"]);
    let addr = server.addr;
    let mut send = raw_h2(addr).await;
    let v13 = [("sec-websocket-version", "13")];
    let cases: Vec<(&str, Request<()>, StatusCode)> = vec![
        ("no :protocol", connect(addr, "/echo", None, &v13), StatusCode::BAD_REQUEST),
        ("another :protocol", connect(addr, "/echo", Some("connect-udp"), &v13), StatusCode::NOT_IMPLEMENTED),
        ("no version", connect(addr, "/echo", Some("websocket"), &[]), StatusCode::BAD_REQUEST),
        (
            "version 8",
            connect(addr, "/echo", Some("websocket"), &[("sec-websocket-version", "8")]),
            StatusCode::BAD_REQUEST,
        ),
        ("no endpoint", connect(addr, "/nowhere", Some("websocket"), &v13), StatusCode::NOT_FOUND),
        (
            "a foreign page",
            connect(addr, "/echo", Some("websocket"), &[v13[0], ("origin", "https://evil.example")]),
            StatusCode::FORBIDDEN,
        ),
        ("bad /close code", connect(addr, "/close?code=1005", Some("websocket"), &v13), StatusCode::BAD_REQUEST),
    ];
    for (what, request, status) in cases {
        let (parts, body) = raw_request(&mut send, request).await;
        assert_eq!(parts.status, status, "{what}: {}", String::from_utf8_lossy(&body));
        assert!(!body.is_empty(), "{what}: the refusal says why");
    }
    // A rebound name in `:authority` (DNS rebinding): 421, as `Host` over HTTP/1.1.
    let mut rebound = connect(addr, "/echo", Some("websocket"), &v13);
    *rebound.uri_mut() = format!("https://evil.example:{}/echo", addr.port()).parse().unwrap();
    let (parts, body) = raw_request(&mut send, rebound).await;
    assert_eq!(parts.status, StatusCode::MISDIRECTED_REQUEST, "{}", String::from_utf8_lossy(&body));
    // A version refusal names the version the server speaks.
    let (parts, _) = raw_request(&mut send, connect(addr, "/echo", Some("websocket"), &[])).await;
    assert_eq!(parts.headers.get("sec-websocket-version").map(|v| v.as_bytes()), Some(&b"13"[..]));

    // --max-connections 1: the second WebSocket gets 503 with Retry-After.
    let h2 = ws_h2(addr).await;
    let _first = open(&h2, addr, "/echo").await;
    let (parts, _) = raw_request(&mut send, connect(addr, "/echo", Some("websocket"), &v13)).await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(parts.headers.contains_key("retry-after"));
    server.expect_log(&["refused", "status=503", "http=\"2\""]);
}

/// A CONNECT with more header fields than the handshake allows gets 431 before admission: at
/// `--max-connections` it is still 431 (admission would say 503), so it spent no place, token
/// or backend connection.
#[tokio::test]
async fn an_oversized_head_is_refused_before_admission() {
    let server = Server::start(&["--tls-self-signed", "--max-connections", "1"]);
    let addr = server.addr;
    let mut send = raw_h2(addr).await;
    let names: Vec<String> = (0..70).map(|i| format!("x-h{i:02}")).collect();
    let mut headers = vec![("sec-websocket-version", "13")];
    headers.extend(names.iter().map(|n| (n.as_str(), "v")));
    let h2 = ws_h2(addr).await;
    let _only = open(&h2, addr, "/echo").await;
    let (parts, body) = raw_request(&mut send, connect(addr, "/echo", Some("websocket"), &headers)).await;
    assert_eq!(parts.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "{}", String::from_utf8_lossy(&body));
    // Within the limit, the same request meets admission: the one place is taken.
    let (parts, _) = raw_request(&mut send, connect(addr, "/echo", Some("websocket"), &headers[..60])).await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    server.expect_log(&["refused", "status=431", "http=\"2\""]);
}

/// `--no-http2`: the port offers http/1.1 only, and a WebSocket over it still works.
#[tokio::test]
async fn no_http2_offers_http1_only() {
    let server = Server::start(&["--tls-self-signed", "--no-http2"]);
    let offer: [&[u8]; 2] = [b"h2", b"http/1.1"];
    let (_, alpn) = tls(server.addr, &offer).await;
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    let url = format!("wss://localhost:{}/echo", server.addr.port());
    let insecure = ClientTls::new().danger_accept_invalid_certs();
    let (mut ws, response) = wsx::ClientBuilder::new(url).tls(insecure).connect().await.expect("HTTP/1.1 WebSocket");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send_text("h1").await.unwrap();
    assert_eq!(within(5, "echo", ws.recv()).await.unwrap().unwrap(), Message::text("h1"));
    server.expect_log(&["open", "path=\"/echo\"", "http=\"1.1\""]);
    // Without --no-http2 the same client offer gets h2.
    let server = Server::start(&["--tls-self-signed"]);
    let offer: [&[u8]; 2] = [b"h2", b"http/1.1"];
    assert_eq!(tls(server.addr, &offer).await.1.as_deref(), Some(&b"h2"[..]));
}

/// The server's peak resident memory (VmHWM), in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmHWM value")
}

/// 100 WebSockets on one h2 connection, each echoing 1,000 messages of 1 KiB (16 in flight),
/// while a 101st sends without reading its echoes: the 100 finish, the slow one is held back by
/// flow control (it cannot push more than a bounded amount), and the server's peak memory stays
/// bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_websockets_on_one_connection_and_a_slow_reader() {
    let server = Server::start(&["--tls-self-signed"]);
    let addr = server.addr;
    let before = peak_kib(server.child.id());
    let h2 = Arc::new(ws_h2(addr).await);

    // The slow reader: sends 64 KiB messages and never reads.
    let mut slow = open(&h2, addr, "/echo").await;
    let pushed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let slow_task = {
        let pushed = pushed.clone();
        tokio::spawn(async move {
            let chunk = Bytes::from(vec![7u8; 64 * 1024]);
            loop {
                if slow.send_binary(chunk.clone()).await.is_err() {
                    break;
                }
                pushed.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
            }
        })
    };

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..100u32 {
        let h2 = h2.clone();
        tasks.spawn(async move {
            let mut ws = open(&h2, addr, "/echo").await;
            let payload = Bytes::from(vec![(n % 256) as u8; 1024]);
            for _ in 0..1000 / 16 + 1 {
                for _ in 0..16 {
                    ws.send_binary(payload.clone()).await.expect("send");
                }
                for _ in 0..16 {
                    match ws.recv().await.expect("echo").expect("message") {
                        Message::Binary(data) => assert!(data == payload, "echo of stream {n} differs"),
                        other => panic!("{other:?}"),
                    }
                }
            }
            ws.close(CloseCode::NORMAL, "").await.expect("close");
        });
    }
    within(120, "100 WebSockets × 1,008 echoes beside a slow reader", async {
        while let Some(done) = tasks.join_next().await {
            done.expect("a WebSocket failed");
        }
    })
    .await;
    let took = started.elapsed();
    let held = pushed.load(std::sync::atomic::Ordering::Relaxed);
    // What the slow reader could push: the server reads until its output to that client (the
    // echoes nobody reads) fills the client's stream window, hyper's send buffer and the
    // WebSocket's high-water mark, then stops reading; then the server's stream window and our
    // own send buffer fill. A few MiB, never the 16 MiB a free-flowing stream moves in seconds.
    assert!(held < 6 << 20, "the slow reader pushed {held} bytes: not held back");
    assert!(!slow_task.is_finished(), "the slow reader's stream was not kept");
    let peak = peak_kib(server.child.id());
    eprintln!(
        "100 × 1,008 echoes of 1 KiB on one h2 connection in {took:?}; the slow reader pushed {} KiB; \
         server peak RSS {} KiB (at start {before} KiB)",
        held / 1024,
        peak
    );
    assert!(peak < before + 32 * 1024, "server peak RSS {peak} KiB (at start {before} KiB)");
    slow_task.abort();
}

/// SIGTERM: WebSockets over h2 are closed with 1001, and the server exits 0.
#[tokio::test]
async fn sigterm_closes_h2_websockets_with_1001() {
    let mut server = Server::start(&["--tls-self-signed"]);
    let addr = server.addr;
    let h2 = ws_h2(addr).await;
    let mut a = open(&h2, addr, "/echo").await;
    let mut b = open(&h2, addr, "/room/bye").await;
    server.signal("TERM");
    for ws in [&mut a, &mut b] {
        match within(5, "close", ws.recv()).await {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1001),
            other => panic!("expected 1001, got {other:?}"),
        }
    }
    drop((a, b));
    let status = tokio::task::spawn_blocking(move || server.wait(Duration::from_secs(5))).await.unwrap();
    assert!(status.success(), "{status:?}");
}

/// The open file descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// A client that keeps its window closed cannot hold answers (and their files) for ever: plain
/// answers and a refusal it does not take within `--http-timeout` drop its connection, and the
/// files are closed.
#[tokio::test]
async fn answers_a_client_does_not_take_drop_the_connection() {
    let site = TempDir::new("stall");
    std::fs::write(site.0.join("big.bin"), vec![1u8; 1 << 20]).unwrap();
    let server = Server::start(&["--tls-self-signed", "--static", site.0.to_str().unwrap(), "--http-timeout", "2"]);
    let (addr, pid) = (server.addr, server.child.id());
    let before = fds(pid);
    let (stream, _) = tls(addr, &[b"h2"]).await;
    let (send, conn) = h2::client::Builder::new().initial_window_size(0).handshake::<_, Bytes>(stream).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let mut bodies = Vec::new();
    for _ in 0..20 {
        let (response, _) = send.send_request(get(addr, "/big.bin", &[]), true).unwrap();
        send = send.ready().await.unwrap();
        bodies.push(within(5, "head", response).await.unwrap());
    }
    // A refusal too (no sec-websocket-version: 400), its body also held back.
    let (refused, _) = send.send_request(connect(addr, "/echo", Some("websocket"), &[]), false).unwrap();
    assert_eq!(within(5, "refusal", refused).await.unwrap().status(), StatusCode::BAD_REQUEST);
    assert!(fds(pid) >= before + 20, "the 20 files are open while their answers wait");
    let started = Instant::now();
    let _ = within(10, "the connection dropped", conn).await;
    assert!(started.elapsed() >= Duration::from_millis(1500), "dropped early: {:?}", started.elapsed());
    server.expect_log(&["dropping the HTTP/2 connection", "an answer not taken in time"]);
    let end = Instant::now() + Duration::from_secs(3);
    while fds(pid) > before && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(fds(pid) <= before, "files left open: {} > {before}", fds(pid));
}

/// When the server drops a connection (an answer not taken in time), the connection really
/// closes, even with a quiet WebSocket on it and no keepalive pings to end that one.
#[tokio::test]
async fn a_dropped_connection_closes_with_its_websockets() {
    let server = Server::start(&["--tls-self-signed", "--http-timeout", "1", "--ping-interval", "0"]);
    let addr = server.addr;
    let (stream, _) = tls(addr, &[b"h2"]).await;
    let (send, conn) = h2::client::Builder::new().initial_window_size(0).handshake::<_, Bytes>(stream).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let v13 = [("sec-websocket-version", "13")];
    let (ws, _ws_stream) = send.send_request(connect(addr, "/echo", Some("websocket"), &v13), false).unwrap();
    assert_eq!(within(5, "the WebSocket's 200", ws).await.unwrap().status(), StatusCode::OK);
    send = send.ready().await.unwrap();
    // The page's answer waits behind the closed window.
    let (page, _) = send.send_request(get(addr, "/", &[]), true).unwrap();
    let _page = within(5, "page head", page).await.unwrap();
    server.expect_log(&["dropping the HTTP/2 connection"]);
    let _ = within(5, "the server closes the TCP connection it dropped", conn).await;
    server.expect_log(&["closed", "path=\"/echo\""]);
}

/// A download that keeps moving is not cut at `--http-timeout`: each piece the client takes
/// moves the deadline on. 1 MiB through a 64 KiB window read every 150 ms takes about 2.4 s,
/// more than twice the 1 s timeout.
#[tokio::test]
async fn a_slow_but_steady_download_is_not_cut() {
    let site = TempDir::new("steady");
    let content: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 241) as u8).collect();
    std::fs::write(site.0.join("big.bin"), &content).unwrap();
    let server = Server::start(&["--tls-self-signed", "--static", site.0.to_str().unwrap(), "--http-timeout", "1"]);
    let addr = server.addr;
    let (stream, _) = tls(addr, &[b"h2"]).await;
    let (send, conn) =
        h2::client::Builder::new().initial_window_size(64 * 1024).handshake::<_, Bytes>(stream).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let (response, _) = send.send_request(get(addr, "/big.bin", &[]), true).unwrap();
    let mut body = within(5, "head", response).await.unwrap().into_body();
    let started = Instant::now();
    let mut got = Vec::new();
    while let Some(chunk) = within(5, "a chunk", body.data()).await {
        let chunk = chunk.expect("the download was not cut");
        tokio::time::sleep(Duration::from_millis(150 * chunk.len() as u64 / (64 * 1024))).await;
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    assert!(got == content, "{} bytes of {}", got.len(), content.len());
    assert!(started.elapsed() > Duration::from_secs(2), "not slow enough to test: {:?}", started.elapsed());
}

/// A client that vanishes (its TCP connection gone, no close frames, no GOAWAY): every
/// WebSocket it had on the connection ends on the server, as an abnormal closure.
#[tokio::test]
async fn a_vanished_client_ends_its_websockets() {
    let server = Server::start(&["--tls-self-signed"]);
    let addr = server.addr;
    let (stream, _) = tls(addr, &[b"h2"]).await;
    let (send, conn) = h2::client::handshake(stream).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let v13 = [("sec-websocket-version", "13")];
    let mut streams = Vec::new();
    for path in ["/echo?a", "/room/gone"] {
        let (response, stream) = send.send_request(connect(addr, path, Some("websocket"), &v13), false).unwrap();
        assert_eq!(within(5, "200", response).await.unwrap().status(), StatusCode::OK);
        streams.push(stream);
        send = send.ready().await.unwrap();
    }
    server.expect_log(&[" open ", "path=\"/room/gone\""]);
    // Gone: the task driving the connection (and with it the socket) is dropped.
    conn.abort();
    let _ = conn.await;
    drop((send, streams));
    for path in ["path=\"/echo?a\"", "path=\"/room/gone\""] {
        let line = server.expect_log(&["closed", path]);
        assert!(line.contains("code=1006"), "{line}");
    }
}
