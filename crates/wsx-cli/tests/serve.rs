//! `wsx serve` end to end: the real binary on 127.0.0.1:0, driven by raw HTTP over TCP and by
//! the wsx client.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wsx::{ClientBuilder, CloseCode, Message};

mod common;

use common::Server;
const SECRET: &str = "TOP SECRET, never served";

/// A raw HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` as is and reads the answer: the head, then (unless it is a 101) everything
/// up to the server's close, which must come within 5 s.
fn raw(addr: SocketAddr, request: &[u8]) -> Answer {
    raw_on(TcpStream::connect(addr).unwrap(), request)
}

/// [`raw`] on a connection already made.
fn raw_on(mut tcp: TcpStream, request: &[u8]) -> Answer {
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(request).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tcp.read(&mut chunk).expect("the server answers (no hang)");
        assert!(n > 0, "connection closed before the answer's head: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = buf[head_end..].to_vec();
    if status != 101 {
        tcp.read_to_end(&mut body).expect("the server closes the connection after its answer");
    }
    Answer { status, head, body }
}

fn get(addr: SocketAddr, method: &str, path: &str) -> Answer {
    raw(addr, format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
}

/// A WebSocket upgrade request with extra header lines.
fn upgrade(addr: SocketAddr, path: &str, extra: &str) -> Answer {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    raw(addr, request.as_bytes())
}

#[test]
fn plain_http_requests_get_plain_answers() {
    let server = Server::start(&[]);
    let a = server.addr;

    let page = get(a, "GET", "/");
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(page.header("connection"), Some("close"));
    assert!(page.text().contains("<title>wsx demo</title>") && page.text().contains("new WebSocket("));

    let head = get(a, "HEAD", "/");
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(head.header("content-length"), Some(page.body.len().to_string().as_str()));

    assert_eq!(get(a, "GET", "/no/such/thing").status, 404);
    assert_eq!(get(a, "POST", "/no/such/thing").status, 404);
    let post = get(a, "POST", "/");
    assert_eq!((post.status, post.header("allow")), (405, Some("GET, HEAD")));
    assert_eq!(get(a, "DELETE", "/").status, 405);

    let ws_endpoint = get(a, "GET", "/echo");
    assert_eq!((ws_endpoint.status, ws_endpoint.header("upgrade")), (426, Some("websocket")));
    assert_eq!(get(a, "GET", "/room/lobby").status, 426);
    let post = get(a, "POST", "/echo");
    assert_eq!((post.status, post.header("allow")), (405, Some("GET")));
    // Without --static, `..` is just a path that does not exist.
    assert_eq!(get(a, "GET", "/../etc/passwd").status, 404);

    server.expect_log(&["http", "method=POST", "path=\"/\"", "status=405"]);
}

#[test]
fn a_body_or_keep_alive_is_answered_then_closed() {
    let server = Server::start(&[]);
    let a = server.addr;
    // keep-alive asked: answered with Connection: close, and closed (raw() reads to the end).
    let kept = raw(a, format!("GET / HTTP/1.1\r\nHost: {a}\r\nConnection: keep-alive\r\n\r\n").as_bytes());
    assert_eq!((kept.status, kept.header("connection")), (200, Some("close")));
    // A body we never read: the answer still arrives whole, then the close.
    let body = vec![b'x'; 300_000];
    let mut request = format!(
        "POST /upload HTTP/1.1\r\nHost: {a}\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let answer = raw(a, &request);
    assert_eq!((answer.status, answer.text().as_str()), (404, "not found\n"));
    // HTTP/1.0, and a request that is not HTTP at all.
    assert_eq!(raw(a, b"GET / HTTP/1.0\r\n\r\n").status, 200);
    assert_eq!(raw(a, b"\x16\x03\x01 not http\r\n\r\n").status, 400);
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("wsx-serve-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(path: &Path, contents: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, contents).unwrap();
}

#[test]
fn static_files() {
    let tmp = TempDir::new("static");
    let site = tmp.0.join("site");
    write(&site.join("index.html"), b"<h1>my site</h1>");
    write(&site.join("app.js"), b"console.log(1)");
    write(&site.join("style.CSS"), b"body{}");
    write(&site.join("data.bin"), &[0, 1, 2, 255]);
    write(&site.join("sub dir/index.html"), b"sub index");
    write(&site.join("sub dir/héllo.txt"), "héllo".as_bytes());
    write(&site.join("empty/nothing.txt"), b"");
    write(&site.join("evil.example/index.html"), b"a directory named like a host");
    write(&site.join(".env"), SECRET.as_bytes());
    write(&tmp.0.join("secret.txt"), SECRET.as_bytes());
    write(&tmp.0.join("outside/secret.txt"), SECRET.as_bytes());
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(tmp.0.join("secret.txt"), site.join("link.txt")).unwrap();
        std::os::unix::fs::symlink(tmp.0.join("outside"), site.join("linkdir")).unwrap();
        std::os::unix::fs::symlink(site.join("app.js"), site.join("alias.js")).unwrap();
    }
    let server = Server::start(&["--static", site.to_str().unwrap()]);
    let a = server.addr;
    let ok = |path: &str, ty: &str, body: &[u8]| {
        let r = get(a, "GET", path);
        assert_eq!((r.status, r.header("content-type"), r.body.as_slice()), (200, Some(ty), body), "{path}");
    };
    ok("/", "text/html; charset=utf-8", b"<h1>my site</h1>");
    ok("/index.html", "text/html; charset=utf-8", b"<h1>my site</h1>");
    ok("/app.js", "text/javascript; charset=utf-8", b"console.log(1)");
    ok("/style.CSS", "text/css; charset=utf-8", b"body{}");
    ok("/data.bin", "application/octet-stream", &[0, 1, 2, 255]);
    ok("/sub%20dir/", "text/html; charset=utf-8", b"sub index");
    ok("/sub%20dir/h%C3%A9llo.txt?x=1", "text/plain; charset=utf-8", "héllo".as_bytes());
    ok("/empty/nothing.txt", "text/plain; charset=utf-8", b"");
    #[cfg(unix)]
    ok("/alias.js", "text/javascript; charset=utf-8", b"console.log(1)");

    let redirect = get(a, "GET", "/sub%20dir?q=1");
    assert_eq!((redirect.status, redirect.header("location")), (301, Some("/sub%20dir/?q=1")));
    // `//evil.example/` would be a protocol-relative URL: the browser would go to that host.
    for path in ["//evil.example", "///evil.example", "//evil.example?q=1"] {
        let redirect = get(a, "GET", path);
        let location = redirect.header("location").unwrap_or_default();
        assert_eq!(redirect.status, 301, "{path}");
        assert!(location.starts_with("/evil.example/"), "{path}: Location {location:?}");
    }
    assert_eq!(get(a, "GET", "/empty/").status, 404, "no listing of a directory without index.html");
    assert_eq!(get(a, "GET", "/missing.txt").status, 404);
    let head = get(a, "HEAD", "/app.js");
    assert_eq!((head.status, head.header("content-length"), head.body.len()), (200, Some("14"), 0));
    assert_eq!(get(a, "PUT", "/app.js").status, 405);

    // Traversal: refused whichever way it is spelled, and the secret never comes out.
    for path in [
        "/../secret.txt",
        "/sub%20dir/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/sub%20dir/%2e%2e/%2e%2e/secret.txt",
        "/..%5csecret.txt",
        "/./index.html",
        "/%00",
        "/%zz",
    ] {
        let r = get(a, "GET", path);
        assert_eq!(r.status, 400, "{path}");
        assert!(!r.text().contains(SECRET), "{path}");
    }
    let mut escapes = vec!["/.env", "//secret.txt"];
    if cfg!(unix) {
        escapes.extend(["/link.txt", "/linkdir/secret.txt", "/linkdir/"]);
    }
    for path in escapes {
        let r = get(a, "GET", path);
        assert_eq!(r.status, 404, "{path}");
        assert!(!r.text().contains(SECRET), "{path}");
    }
    // WebSocket endpoints still work next to the files.
    assert_eq!(upgrade(a, "/echo", "").status, 101);
}

/// A plain GET and an upgrade of `path` with this `Host` line (none when `None`), each with an
/// Origin that agrees with it, as a rebound page in a browser would send.
fn with_host(addr: SocketAddr, path: &str, host: Option<&str>) -> (Answer, Answer) {
    let host_line = host.map_or_else(String::new, |h| format!("Host: {h}\r\nOrigin: http://{h}\r\n"));
    let plain = raw(addr, format!("GET {path} HTTP/1.1\r\n{host_line}\r\n").as_bytes());
    let upgrade = raw(
        addr,
        format!(
            "GET {path} HTTP/1.1\r\n{host_line}Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    );
    (plain, upgrade)
}

#[test]
fn only_known_host_names_are_answered() {
    let tmp = TempDir::new("hosts");
    write(&tmp.0.join("site/secret.txt"), SECRET.as_bytes());
    let server = Server::start(&["--static", tmp.0.join("site").to_str().unwrap(), "--host", "MyHost.lan"]);
    let a = server.addr;
    let port = a.port();

    // DNS rebinding: a page on attacker.example, now resolving to 127.0.0.1. Its Origin agrees
    // with its Host, so only the Host check stands between it and the server.
    for host in [format!("attacker.example:{port}"), "attacker.example".to_owned(), format!("localhost.evil:{port}")] {
        for path in ["/secret.txt", "/echo", "/room/lobby", "/"] {
            let (plain, upgrade) = with_host(a, path, Some(&host));
            for (kind, answer) in [("GET", &plain), ("upgrade", &upgrade)] {
                assert_eq!(answer.status, 421, "{kind} {path} with Host {host}: {}", answer.text());
                assert!(answer.text().contains("--host "), "{kind}: {}", answer.text());
                assert!(!answer.text().contains(SECRET));
            }
        }
    }
    server.expect_log(&["refused", "path=\"/echo\"", "status=421"]);
    server.expect_log(&["http", "path=\"/secret.txt\"", "status=421"]);

    // Loopback names and addresses, the bound address and --host names, with or without port.
    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_owned(),
        format!("localhost:{port}"),
        "LOCALHOST".to_owned(),
        format!("[::1]:{port}"),
        a.to_string(),
        format!("myhost.lan:{port}"),
        "MYHOST.LAN".to_owned(),
    ] {
        let (plain, upgrade) = with_host(a, "/secret.txt", Some(&host));
        assert_eq!((plain.status, plain.text().as_str()), (200, SECRET), "GET with Host {host}");
        let (_, upgrade_echo) = with_host(a, "/echo", Some(&host));
        assert_eq!(upgrade_echo.status, 101, "upgrade with Host {host}: {}", upgrade_echo.text());
        // An upgrade to a path that has no WebSocket: past the Host check, refused for its path.
        assert_eq!(upgrade.status, 404, "{host}");
    }

    // No Host at all: HTTP/1.1 requires one.
    let (plain, upgrade) = with_host(a, "/secret.txt", None);
    assert_eq!((plain.status, upgrade.status), (400, 400));
    assert!(plain.text().contains("Host"), "{}", plain.text());
    // Two Host headers: which one would the browser have meant?
    let two = raw(a, format!("GET /secret.txt HTTP/1.1\r\nHost: {a}\r\nHost: attacker.example\r\n\r\n").as_bytes());
    assert_eq!(two.status, 400);

    // --allow-any-host: for a deployment behind a proxy that checks the name.
    let any = Server::start(&["--allow-any-host"]);
    let (plain, upgrade) = with_host(any.addr, "/echo", Some("attacker.example"));
    assert_eq!((plain.status, upgrade.status), (426, 101));
}

#[test]
fn origins_are_checked_on_upgrades() {
    let server = Server::start(&["--origin", "http://localhost:3000"]);
    let a = server.addr;
    assert_eq!(upgrade(a, "/echo", "").status, 101, "no Origin: not a browser, allowed");
    assert_eq!(upgrade(a, "/echo", &format!("Origin: http://{a}\r\n")).status, 101, "same origin");
    assert_eq!(upgrade(a, "/echo", "Origin: http://localhost:3000\r\n").status, 101, "--origin");

    for origin in ["http://evil.example", "http://127.0.0.1:1", "https://localhost:3000", "null"] {
        let refused = upgrade(a, "/echo", &format!("Origin: {origin}\r\n"));
        assert_eq!(refused.status, 403, "{origin}");
        assert!(refused.text().contains(&format!("origin \"{origin}\"")), "{origin}: {}", refused.text());
        assert!(refused.text().contains("--origin"));
    }
    server.expect_log(&["refused", "path=\"/echo\"", "status=403", "evil.example"]);

    // Other refusals: an unknown endpoint, bad /close parameters, a bad upgrade.
    assert_eq!(upgrade(a, "/nope", "").status, 404);
    assert_eq!(upgrade(a, "/room/", "").status, 404);
    assert_eq!(upgrade(a, "/close?code=1005", "").status, 400);
    let bad = raw(
        a,
        format!("GET /echo HTTP/1.1\r\nHost: {a}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n").as_bytes(),
    );
    assert_eq!(bad.status, 426, "no Sec-WebSocket-Version");
}

async fn next_data(ws: &mut wsx::WebSocket<wsx::MaybeTlsStream>) -> Message {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.recv()).await.expect("a message in time") {
            Some(Ok(m)) if m.is_data() => return m,
            Some(Ok(Message::Close(f))) => panic!("closed: {f:?}"),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}

/// Receives until the peer's close frame; returns it.
async fn close_frame(ws: &mut wsx::WebSocket<wsx::MaybeTlsStream>) -> Option<wsx::CloseFrame> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.recv()).await.expect("the close in time") {
            Some(Ok(Message::Close(f))) => return f,
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn echo_subprotocols_and_closes() {
    let server = Server::start(&[]);
    let (mut ws, _) =
        ClientBuilder::new(server.url("/echo")).protocol("x.unknown").protocol("echo.v1").connect().await.unwrap();
    assert_eq!(ws.protocol(), Some("echo.v1"));
    ws.send_text("héllo 🦀").await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("héllo 🦀"));
    ws.send_binary(vec![0u8, 1, 2]).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::binary(vec![0u8, 1, 2]));
    // The server answers our close with our code and reason.
    let answer = ws.close(CloseCode(4000), "bye").await.unwrap().unwrap();
    assert_eq!((answer.code, answer.reason.as_str()), (CloseCode(4000), "bye"));
    server.expect_log(&["closed", "path=\"/echo\"", "code=4000", "by=\"client\"", "ms="]);

    let (mut ws, _) = wsx::connect(&server.url("/echo")).await.unwrap();
    assert_eq!(ws.protocol(), None);
    drop(ws.close(CloseCode::NORMAL, "").await);

    // /close: the server closes with the code and reason asked for.
    let url = server.url("/close?code=4001&reason=server+says+%E2%9C%93&after=100");
    let (mut ws, _) = ClientBuilder::new(url).protocol("chat.v1").connect().await.unwrap();
    assert_eq!(ws.protocol(), Some("chat.v1"));
    ws.send_text("still echoing").await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("still echoing"));
    let frame = close_frame(&mut ws).await.unwrap();
    assert_eq!((frame.code, frame.reason.as_str()), (CloseCode(4001), "server says ✓"));
    assert!(ws.recv().await.is_none());
    server.expect_log(&["closed", "path=\"/close?code=4001", "code=4001", "by=\"server\""]);
}

#[tokio::test]
async fn echo_mode_echoes_on_every_path() {
    let server = Server::start(&["--echo", "--conformance"]);
    for path in ["/", "/room/x", "/any/path?at=all"] {
        let (mut ws, _) = wsx::connect(&server.url(path)).await.unwrap();
        ws.send_text(path).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text(path));
        drop(ws.close(CloseCode::NORMAL, "").await);
    }
    // Plain HTTP is still answered.
    let a = server.addr;
    assert_eq!(tokio::task::spawn_blocking(move || get(a, "GET", "/").status).await.unwrap(), 200);
    assert_eq!(tokio::task::spawn_blocking(move || get(a, "GET", "/x").status).await.unwrap(), 426);
}

#[tokio::test]
async fn rooms_broadcast_to_every_member() {
    let server = Server::start(&[]);
    let (mut a, _) = wsx::connect(&server.url("/room/lobby")).await.unwrap();
    let (mut b, _) = wsx::connect(&server.url("/room/lobby")).await.unwrap();
    let (mut other, _) = wsx::connect(&server.url("/room/other")).await.unwrap();
    // A member has joined once its own message comes back through the room (the server joins
    // after the handshake, so a message sent before that would miss it): `a` first, then `b`.
    a.send_text("a here").await.unwrap();
    assert_eq!(next_data(&mut a).await, Message::text("a here"));
    b.send_text("b here").await.unwrap();
    // `b` sees `a`'s greeting only if it joined before it was published.
    let mut first = next_data(&mut b).await;
    if first == Message::text("a here") {
        first = next_data(&mut b).await;
    }
    assert_eq!(first, Message::text("b here"));
    assert_eq!(next_data(&mut a).await, Message::text("b here"));

    a.send_text("from a").await.unwrap();
    b.send_binary(vec![7u8; 3]).await.unwrap();
    for ws in [&mut a, &mut b] {
        let mut got = vec![next_data(ws).await, next_data(ws).await];
        got.sort_by_key(|m| matches!(m, Message::Binary(_)));
        assert_eq!(got, vec![Message::text("from a"), Message::binary(vec![7u8; 3])]);
    }
    other.send_text("elsewhere").await.unwrap();
    assert_eq!(next_data(&mut other).await, Message::text("elsewhere"));

    // Members leave; the room goes on for the others.
    drop(b.close(CloseCode::NORMAL, "").await);
    a.send_text("after b left").await.unwrap();
    assert_eq!(next_data(&mut a).await, Message::text("after b left"));
    server.expect_log(&["closed", "path=\"/room/lobby\"", "code=1000"]);
}

/// Room members that negotiate permessage-deflate: the room's prepared messages (compressed
/// once and shared without context takeover, `wsx serve`'s default; compressed per member with
/// it) reach every member intact, many in a row.
#[tokio::test]
async fn rooms_broadcast_compressed_messages() {
    for args in [&[][..], &["--deflate-context-takeover"][..]] {
        let server = Server::start(args);
        let mut config = wsx::WebSocketConfig::default();
        config.deflate = Some(wsx::proto::deflate::DeflateConfig::default());
        let join = || ClientBuilder::new(server.url("/room/z")).config(config.clone()).connect();
        // Each member's own message coming back proves it joined; `a` joined before `b`'s.
        let (mut a, _) = join().await.unwrap();
        a.send_text("a joined").await.unwrap();
        assert_eq!(next_data(&mut a).await, Message::text("a joined"));
        let (mut b, _) = join().await.unwrap();
        b.send_text("b joined").await.unwrap();
        assert_eq!(next_data(&mut b).await, Message::text("b joined"));
        assert_eq!(next_data(&mut a).await, Message::text("b joined"));
        for ws in [&a, &b] {
            assert!(ws.extensions().is_some_and(|e| e.starts_with("permessage-deflate")), "{args:?}");
        }
        let long = "the same words again and again, ".repeat(400);
        for i in 0..5 {
            let sent = [Message::text(format!("{i} {long}")), Message::binary(vec![i as u8; 5000])];
            for m in &sent {
                a.send(m.clone()).await.unwrap();
            }
            for ws in [&mut a, &mut b] {
                assert_eq!(next_data(ws).await, sent[0], "{args:?}, round {i}");
                assert_eq!(next_data(ws).await, sent[1], "{args:?}, round {i}");
            }
        }
        drop(a.close(CloseCode::NORMAL, "").await);
        drop(b.close(CloseCode::NORMAL, "").await);
    }
}

/// A member joins `/room/busy` and does not read while another publishes 600 messages of 64 KiB
/// (far more than the socket buffers hold); then it reads. Returns how many messages it got
/// before the server's close frame, and that frame.
async fn slow_room_member(args: &[&str]) -> (usize, wsx::CloseFrame) {
    let server = Server::start(args);
    let (mut slow, _) = wsx::connect(&server.url("/room/busy")).await.unwrap();
    let (mut fast, _) = wsx::connect(&server.url("/room/busy")).await.unwrap();
    fast.send_text("hello").await.unwrap();
    assert_eq!(next_data(&mut fast).await, Message::text("hello"));
    // The slow member's connection fills up, the room moves on (the fast member gets
    // everything, each message before it sends the next).
    let payload = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
    let started = Instant::now();
    for _ in 0..600 {
        fast.send_binary(payload.clone()).await.unwrap();
        assert_eq!(next_data(&mut fast).await, Message::Binary(payload.clone()));
    }
    assert!(started.elapsed() < Duration::from_secs(20), "the fast member was held up");
    // Now the slow member reads: what was queued for it, then the close.
    let mut received = 0;
    let frame = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.recv()).await.expect("the slow member is closed") {
            Some(Ok(Message::Close(f))) => break f.unwrap(),
            Some(Ok(m)) if m.is_data() => received += 1,
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    server.expect_log(&["closed", "path=\"/room/busy\"", "code=1008", "by=\"server\""]);
    // The fast member is still fine.
    fast.send_text("still here").await.unwrap();
    assert_eq!(next_data(&mut fast).await, Message::text("still here"));
    (received, frame)
}

#[tokio::test]
async fn a_slow_room_member_is_closed_with_1008_without_slowing_the_others() {
    let (received, frame) = slow_room_member(&["--room-queue", "4", "--no-deflate"]).await;
    assert_eq!(frame.code, CloseCode::POLICY_VIOLATION);
    assert_eq!(frame.reason.as_str(), "too slow: more than 4 messages queued");
    assert!(received < 600, "it missed some: got {received}");
}

#[tokio::test]
async fn a_room_member_queue_is_bounded_in_bytes() {
    // The message count alone would let 100,000 messages of 64 KiB (6 GiB) pile up.
    let args = ["--room-queue", "100000", "--room-queue-bytes", "1048576", "--no-deflate"];
    let (received, frame) = slow_room_member(&args).await;
    assert_eq!(frame.code, CloseCode::POLICY_VIOLATION);
    assert_eq!(frame.reason.as_str(), "too slow: more than 1048576 bytes queued");
    assert!(received < 600, "it missed some: got {received}");
}

#[tokio::test]
async fn room_messages_have_their_own_size_limit() {
    let server = Server::start(&[]);
    // /echo keeps the general limit (64 MiB).
    let two_mib = bytes::Bytes::from(vec![b'x'; 2 << 20]);
    let (mut echo, _) = wsx::connect(&server.url("/echo")).await.unwrap();
    echo.send_binary(two_mib.clone()).await.unwrap();
    assert_eq!(next_data(&mut echo).await, Message::Binary(two_mib.clone()));
    // A room takes 1 MiB (--room-max-message's default) …
    let (mut member, _) = wsx::connect(&server.url("/room/big")).await.unwrap();
    let one_mib = bytes::Bytes::from(vec![b'y'; 1 << 20]);
    member.send_binary(one_mib.clone()).await.unwrap();
    assert_eq!(next_data(&mut member).await, Message::Binary(one_mib));
    // … and closes the connection of a member that sends more with 1009.
    let _ = member.send_binary(two_mib).await;
    let frame = close_frame(&mut member).await.unwrap();
    assert_eq!(frame.code, CloseCode::MESSAGE_TOO_BIG, "{frame:?}");
    server.expect_log(&["closed", "path=\"/room/big\"", "code=1009"]);

    // --room-max-message sets it.
    let server = Server::start(&["--room-max-message", "1000"]);
    let (mut member, _) = wsx::connect(&server.url("/room/small")).await.unwrap();
    member.send_text("x".repeat(1000)).await.unwrap();
    assert_eq!(next_data(&mut member).await, Message::text("x".repeat(1000)));
    let _ = member.send_text("x".repeat(1001)).await;
    assert_eq!(close_frame(&mut member).await.unwrap().code, CloseCode::MESSAGE_TOO_BIG);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_and_sigint_close_every_connection_with_1001_then_exit_0() {
    for signal in ["TERM", "INT"] {
        let mut server = Server::start(&[]);
        let (mut echo, _) = wsx::connect(&server.url("/echo")).await.unwrap();
        let (mut room, _) = wsx::connect(&server.url("/room/r")).await.unwrap();
        room.send_text("joined").await.unwrap();
        assert_eq!(next_data(&mut room).await, Message::text("joined"));
        let started = Instant::now();
        server.signal(signal);
        for ws in [&mut echo, &mut room] {
            let frame = close_frame(ws).await.unwrap();
            assert_eq!((frame.code, frame.reason.as_str()), (CloseCode::GOING_AWAY, "server shutting down"));
            assert!(ws.recv().await.is_none());
        }
        let status = tokio::task::block_in_place(|| server.wait(Duration::from_secs(3)));
        assert!(status.success(), "SIG{signal}: {status:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
        server.expect_log(&["shutting down", &format!("signal=\"SIG{signal}\""), "connections=2"]);
        server.expect_log(&["closed", "path=\"/room/r\"", "code=1001", "by=\"server\""]);
    }
}

/// A client that is sending when the server shuts down: the messages that were on their way
/// when the server closed are discarded (not an error that drops the connection before the
/// closing handshake), and the client gets 1001 and completes the handshake.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_while_a_client_is_sending_completes_the_closing_handshake() {
    let server = Server::start(&[]);
    let (mut ws, _) = wsx::connect(&server.url("/echo")).await.unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let (mut sent, mut signalled) = (0u32, false);
    let frame = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // Bursts, so that messages are always on their way to the server.
                    for _ in 0..100 {
                        if ws.feed(Message::text(format!("m{sent}"))).await.is_err() {
                            break;
                        }
                        sent += 1;
                    }
                    let _ = ws.flush().await;
                    if sent >= 5_000 && !signalled {
                        server.signal("TERM");
                        signalled = true;
                    }
                }
                msg = ws.recv() => match msg {
                    Some(Ok(Message::Close(frame))) => break frame,
                    Some(Ok(_)) => {}
                    other => panic!("{other:?} after {sent} messages"),
                },
            }
        }
    })
    .await
    .expect("the server's close within 10 s");
    let frame = frame.expect("a close frame with a code");
    assert_eq!((frame.code, frame.reason.as_str()), (CloseCode::GOING_AWAY, "server shutting down"));
    assert!(tokio::time::timeout(Duration::from_secs(5), ws.recv()).await.expect("the end in time").is_none());
    let line = server.expect_log(&["closed", "path=\"/echo\"", "code=1001", "by=\"server\""]);
    assert!(!line.contains("error"), "the closing handshake was cut short: {line}");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_does_not_wait_for_a_peer_that_never_answers() {
    let mut server = Server::start(&[]);
    // A client that completes the handshake and then never reads nor answers the close.
    let _tcp = upgraded_echo(server.addr);
    server.expect_log(&["open", "path=\"/echo\""]);
    let started = Instant::now();
    server.signal("TERM");
    let status = tokio::task::block_in_place(|| server.wait(Duration::from_secs(4)));
    assert!(status.success());
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1900) && waited < Duration::from_secs(3), "{waited:?}");
    server.expect_log(&["grace period over", "connections=1"]);
}

/// A raw TCP connection upgraded on /echo, the 101 answer's first bytes read (the rest is left
/// unread, as a client that never reads would).
fn upgraded_echo(a: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(a).unwrap();
    let request = format!(
        "GET /echo HTTP/1.1\r\nHost: {a}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).unwrap();
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    tcp
}

/// The resident memory of a process, from /proc (Linux).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// A client that floods pings on /echo and never reads: once the server's pongs reach the
/// high-water mark it owes only one more (for the newest ping), so its memory stays flat however
/// many it reads (before, the server queued a pong per ping and grew by gigabytes).
#[cfg(target_os = "linux")]
#[test]
fn a_ping_flood_from_a_client_that_never_reads_keeps_the_server_small() {
    let server = Server::start(&[]);
    let mut tcp = upgraded_echo(server.addr);
    let before = rss_bytes(server.child.id());
    // Masked pings with 125-byte payloads, 1000 to a write.
    let mut ping = vec![0x89, 0x80 | 125, 1, 2, 3, 4];
    ping.extend((0..125u8).map(|i| i ^ [1, 2, 3, 4][usize::from(i) % 4]));
    let batch: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 1000).collect();
    tcp.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut written = 0usize;
    // 64 MiB of pings (half a million), or 8 s of them.
    while written < 64 << 20 && started.elapsed() < Duration::from_secs(8) {
        match tcp.write(&batch) {
            Ok(n) => written += n,
            Err(e) => panic!("write after {written} bytes: {e}"),
        }
    }
    let grown = rss_bytes(server.child.id()).saturating_sub(before);
    assert!(written >= 16 << 20, "the server took only {written} bytes of pings in 8 s");
    assert!(grown < 16 << 20, "wsx serve grew by {grown} bytes while {written} bytes of pings were sent");
}

/// A client that sends messages on /echo and never reads: once the echoes fill the server's
/// output, the server stops reading (the client's writes stall rather than the server's memory
/// growing), and the write timeout then drops the connection.
#[cfg(target_os = "linux")]
#[test]
fn an_echo_client_that_never_reads_is_stalled_then_dropped_by_the_write_timeout() {
    let server = Server::start(&["--write-timeout", "1", "--ping-interval", "0", "--slow-reader-timeout", "0"]);
    let mut tcp = upgraded_echo(server.addr);
    let before = rss_bytes(server.child.id());
    // Binary messages of 16 KiB, masked with a zero key, 64 to a write.
    let mut message = vec![0x82, 0x80 | 126, 0x40, 0x00, 0, 0, 0, 0];
    message.resize(message.len() + (16 << 10), 7);
    let batch = message.repeat(64);
    tcp.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    let started = Instant::now();
    let mut written = 0usize;
    // Until the writes stall (timed out) or the server drops the connection; 256 MiB at most.
    let stopped = loop {
        match tcp.write(&batch) {
            Ok(n) if written < 256 << 20 => written += n,
            Ok(_) => break None,
            Err(e) => break Some(e),
        }
    };
    let grown = rss_bytes(server.child.id()).saturating_sub(before);
    assert!(
        stopped.is_some(),
        "the server took {written} bytes of echoes it could not send, in {:?}",
        started.elapsed()
    );
    // The socket buffers both ways, the 1 MiB high-water mark and a read budget: a few MiB.
    assert!(written < 32 << 20, "the server read {written} bytes before it stopped");
    assert!(grown < 16 << 20, "wsx serve grew by {grown} bytes while a client sent {written} bytes and never read");
    let line = server.expect_log(&["closed", "path=\"/echo\"", "code=1006", "peer stopped reading"]);
    assert!(started.elapsed() < Duration::from_secs(10), "dropped after {:?}: {line}", started.elapsed());
}

/// `--subprotocol` sets what the server may select, in its own order of preference: a page that
/// offers `['superchat', 'chat']` gets `chat` when the server prefers it, and one that offers
/// nothing the server knows gets no subprotocol (not a failed connection).
#[tokio::test]
async fn the_server_selects_subprotocols_in_its_own_order() {
    let server = Server::start(&["--subprotocol", "chat", "--subprotocol", "superchat"]);
    let (ws, _) =
        ClientBuilder::new(server.url("/echo")).protocol("superchat").protocol("chat").connect().await.unwrap();
    assert_eq!(ws.protocol(), Some("chat"));
    let (ws, _) = ClientBuilder::new(server.url("/echo")).protocol("superchat").connect().await.unwrap();
    assert_eq!(ws.protocol(), Some("superchat"));
    // The default list is replaced, not extended.
    let (ws, _) = ClientBuilder::new(server.url("/echo")).protocol("chat.v1").connect().await.unwrap();
    assert_eq!(ws.protocol(), None);
    // Without --subprotocol: chat.v1 before echo.v1, whatever the client's order.
    let default = Server::start(&[]);
    let (ws, _) =
        ClientBuilder::new(default.url("/echo")).protocol("echo.v1").protocol("chat.v1").connect().await.unwrap();
    assert_eq!(ws.protocol(), Some("chat.v1"));
}

/// Over `--max-connections`, a handshake gets 503 with Retry-After and a body; the connections
/// already open go on, and a place freed is taken again.
#[tokio::test]
async fn max_connections_refuses_with_503_and_retry_after() {
    let server = Server::start(&["--max-connections", "2"]);
    let (mut a, _) = wsx::connect(&server.url("/echo")).await.unwrap();
    let (mut b, _) = wsx::connect(&server.url("/echo")).await.unwrap();
    let addr = server.addr;
    let refused = tokio::task::spawn_blocking(move || upgrade(addr, "/echo", "")).await.unwrap();
    assert_eq!(refused.status, 503, "{}", refused.head);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(refused.text().contains("server full: 2 connections"), "{}", refused.text());
    server.expect_log(&["refused", "status=503"]);
    for ws in [&mut a, &mut b] {
        ws.send_text("still here").await.unwrap();
        assert_eq!(next_data(ws).await, Message::text("still here"));
    }
    drop(a.close(CloseCode::NORMAL, "").await);
    server.expect_log(&["closed", "code=1000"]);
    let (mut c, _) = wsx::connect(&server.url("/echo")).await.expect("the freed place is taken again");
    c.send_text("in").await.unwrap();
    assert_eq!(next_data(&mut c).await, Message::text("in"));
    // Plain HTTP is not counted.
    assert_eq!(tokio::task::spawn_blocking(move || get(addr, "GET", "/")).await.unwrap().status, 200);
}

/// Out of file descriptors, the accept loop waits instead of spinning, says so once, and
/// accepts again when connections end.
#[cfg(unix)]
#[tokio::test]
async fn the_accept_loop_survives_running_out_of_file_descriptors() {
    let server = Server::start_with_nofile(48, &[]);
    let cpu = |pid: u32| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
        (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
    };
    // Idle TCP connections (no request yet) until the server cannot accept more.
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(std::net::TcpStream::connect(server.addr).unwrap());
    }
    server.expect_log(&["accept failed", "until connections end"]);
    let before = cpu(server.child.id());
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu(server.child.id()) - before;
    assert!(spent < 0.3, "the accept loop spun: {spent} s of CPU in 1 s");
    let episodes = server.log.lock().unwrap().iter().filter(|l| l.contains("accept failed")).count();
    assert_eq!(episodes, 1, "logged once per episode");
    drop(held);
    // The connections it had accepted end (the handshake timeout at the latest); then it
    // accepts again.
    let (mut ws, _) = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(Ok(ok)) = tokio::time::timeout(Duration::from_secs(2), wsx::connect(&server.url("/echo"))).await {
                return ok;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("accepting again within 20 s");
    ws.send_text("back").await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("back"));
    server.expect_log(&["accepting connections again"]);
}

/// The slow-reader bound: a client that echoes itself 32 MiB and then reads 1 KiB every 50 ms
/// (enough that the write timeout never fires) is dropped once it takes less than the 1 MiB mark
/// within `--slow-reader-timeout`; with the bound off, the same client is still connected.
#[test]
fn a_client_that_reads_a_trickle_is_dropped_by_the_slow_reader_timeout() {
    let bounded = Server::start(&["--slow-reader-timeout", "1", "--ping-interval", "0"]);
    let unbounded = Server::start(&["--slow-reader-timeout", "0", "--ping-interval", "0"]);
    // Taken before the uploads: the bounded server's window may start as its echo begins.
    let started = Instant::now();
    let trickle = |addr: SocketAddr| {
        let mut tcp = upgraded_echo(addr);
        // One 32 MiB binary message in two 16 MiB frames (the largest a frame may be), masked
        // with a zero key (allowed: the mask bit is what counts). More than loopback's socket
        // buffers can absorb, so most of the echo stays in the server's output.
        let payload = vec![7u8; 16 << 20];
        for first_byte in [0x02, 0x80] {
            let mut head = vec![first_byte, 0x80 | 127];
            head.extend_from_slice(&(payload.len() as u64).to_be_bytes());
            head.extend_from_slice(&[0, 0, 0, 0]);
            tcp.write_all(&head).unwrap();
            tcp.write_all(&payload).unwrap();
        }
        tcp.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(6) {
                if let Ok(0) = tcp.read(&mut buf) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let readers = [trickle(bounded.addr), trickle(unbounded.addr)];
    let line = bounded.expect_log(&["closed", "path=\"/echo\"", "code=1006", "reads too slowly"]);
    assert!(started.elapsed() >= Duration::from_millis(900), "dropped after {:?}: {line}", started.elapsed());
    std::thread::sleep(Duration::from_secs(1));
    let unbounded_log = unbounded.log.lock().unwrap().join("\n");
    assert!(!unbounded_log.contains("closed"), "without the bound the client stays connected:\n{unbounded_log}");
    drop(readers);
}

/// A WebSocket to `server` on /echo from the local address `from` (any of 127.0.0.0/8).
async fn connect_from(server: &Server, from: &str) -> wsx::WebSocket<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    ClientBuilder::new(server.url("/echo")).connect_on(tcp).await.expect("handshake").0
}

/// The raw answer to an upgrade on /echo from the local address `from`.
async fn upgrade_from(server: &Server, from: &str) -> Answer {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap().into_std().unwrap();
    tcp.set_nonblocking(false).unwrap();
    let request = format!(
        "GET /echo HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    tokio::task::spawn_blocking(move || raw_on(tcp, request.as_bytes())).await.unwrap()
}

/// `--max-connections-per-ip`: one address's handshakes over it get 429 with Retry-After and a
/// body; other addresses and the connections already open are untouched; a place freed is taken
/// again.
#[tokio::test]
async fn max_connections_per_ip_refuses_with_429() {
    let server = Server::start(&["--max-connections-per-ip", "2"]);
    let mut a = connect_from(&server, "127.0.0.1").await;
    let mut b = connect_from(&server, "127.0.0.1").await;
    let refused = upgrade_from(&server, "127.0.0.1").await;
    assert_eq!(refused.status, 429, "{}", refused.head);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(refused.text().contains("2 connections open from this address"), "{}", refused.text());
    server.expect_log(&["refused", "status=429"]);
    let mut other = connect_from(&server, "127.0.0.2").await;
    for ws in [&mut a, &mut b, &mut other] {
        ws.send_text("still here").await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("still here"));
    }
    drop(a.close(CloseCode::NORMAL, "").await);
    server.expect_log(&["closed", "code=1000"]);
    let mut c = connect_from(&server, "127.0.0.1").await;
    c.send_text("in").await.unwrap();
    assert_eq!(c.recv().await.unwrap().unwrap(), Message::text("in"));
}

/// `--handshake-rate-per-ip`: a burst of as many handshakes as the rate, then 429 with
/// Retry-After until the bucket refills; other addresses have their own.
#[tokio::test]
async fn handshake_rate_per_ip_refuses_with_429() {
    let server = Server::start(&["--handshake-rate-per-ip", "2"]);
    let started = Instant::now();
    for _ in 0..2 {
        drop(connect_from(&server, "127.0.0.1").await);
    }
    let refused = upgrade_from(&server, "127.0.0.1").await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "too slow a machine for this test: {:?}",
        started.elapsed()
    );
    assert_eq!(refused.status, 429, "{}", refused.head);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(refused.text().contains("at most 2 per second"), "{}", refused.text());
    drop(connect_from(&server, "127.0.0.3").await);
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(connect_from(&server, "127.0.0.1").await);
}

/// Every answer carries `X-Content-Type-Options: nosniff`, the refusals of the Host check too;
/// a 304 has no `Content-Length` (RFC 9110 §8.6); a Range gets its 206.
#[test]
fn answer_headers_nosniff_304_and_ranges() {
    let tmp = TempDir::new("headers");
    write(&tmp.0.join("site/a.txt"), b"0123456789abcdef");
    let server = Server::start(&["--static", tmp.0.join("site").to_str().unwrap()]);
    let a = server.addr;
    let misdirected = raw(a, b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n");
    assert_eq!(misdirected.status, 421);
    let no_host = raw(a, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(no_host.status, 400);
    for answer in [&misdirected, &no_host, &get(a, "GET", "/"), &get(a, "GET", "/nope"), &get(a, "GET", "/a.txt")] {
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"), "{}", answer.head);
    }
    let whole = get(a, "GET", "/a.txt");
    let modified = whole.header("last-modified").expect("last-modified").to_owned();
    let request = format!("GET /a.txt HTTP/1.1\r\nHost: {a}\r\nIf-Modified-Since: {modified}\r\n\r\n");
    let unchanged = raw(a, request.as_bytes());
    assert_eq!(unchanged.status, 304, "{}", unchanged.head);
    assert_eq!(unchanged.header("content-length"), None, "{}", unchanged.head);
    assert!(unchanged.body.is_empty());
    let request = format!("GET /a.txt HTTP/1.1\r\nHost: {a}\r\nRange: bytes=2-5\r\n\r\n");
    let range = raw(a, request.as_bytes());
    assert_eq!((range.status, range.text().as_str()), (206, "2345"), "{}", range.head);
    assert_eq!(range.header("content-range"), Some("bytes 2-5/16"));
}

/// A file that grows while it is sent: the answer holds exactly the length its head promised
/// (the framing stays right).
#[test]
fn a_file_changing_while_sent_keeps_the_framing() {
    let tmp = TempDir::new("growing");
    let file = tmp.0.join("site/log.txt");
    write(&file, &vec![b'a'; 8 << 20]);
    let server = Server::start(&["--static", tmp.0.join("site").to_str().unwrap()]);
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(format!("GET /log.txt HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(head.contains("content-length: 8388608"), "{head}");
    // The head is out; the file grows by 1 MiB before the rest is read.
    std::fs::OpenOptions::new().append(true).open(&file).unwrap().write_all(&vec![b'b'; 1 << 20]).unwrap();
    let head_end = head.find("\r\n\r\n").unwrap() + 4;
    let mut body = buf[head_end..n].to_vec();
    tcp.read_to_end(&mut body).unwrap();
    assert_eq!(body.len(), 8 << 20, "the body is the promised 8 MiB");
    assert!(body.iter().all(|&b| b == b'a'));
}

/// A file that shrinks while it is sent: the answer ends short (the connection closes before
/// the promised length) and the log says why.
#[test]
fn a_file_shrinking_while_sent_ends_short() {
    let tmp = TempDir::new("shrinking");
    let file = tmp.0.join("site/big.bin");
    write(&file, &vec![7u8; 64 << 20]);
    let server = Server::start(&["--static", tmp.0.join("site").to_str().unwrap()]);
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(format!("GET /big.bin HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("content-length: 67108864"));
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(1 << 20).unwrap();
    let mut body = Vec::new();
    let _ = tcp.read_to_end(&mut body);
    assert!(body.len() < 64 << 20, "{} bytes", body.len());
    server.expect_log(&["http", "path=\"/big.bin\"", "shrank"]);
}

/// A log written into a pipe (a file, a log collector) is plain text, without the terminal's
/// colour codes, even when `NO_COLOR` does not ask for that (set but empty: colours allowed).
#[test]
fn a_log_into_a_pipe_has_no_colour_codes() {
    let server = Server::start_with_env(&[], &[("NO_COLOR", "")]);
    let line = server.expect_log(&["listening"]);
    assert!(!line.contains('\x1b'), "escape codes in a log written to a pipe: {line:?}");
    assert!(line.contains("INFO"), "not a log line: {line:?}");
}

/// Keepalive on every event loop, end to end: a client that never answers the server's pings
/// is dropped once the ping interval and the ping timeout have passed (not before), on either
/// loop, while one that answers stays and is still served. (That each loop keeps these
/// deadlines in a table of its own, `wsx::deadlines`, is checked in `serve::loops`' tests.)
#[tokio::test]
async fn keepalive_drops_silent_clients_on_every_loop_and_keeps_the_others() {
    let server = Server::start(&["--threads", "2", "--ping-interval", "1", "--ping-timeout", "1"]);
    // Connections are dealt to the loops in turn: the first two (silent) land on different
    // loops, and so do the next two (answering).
    let silent: Vec<_> = (0..2)
        .map(|_| {
            let mut tcp = upgraded_echo(server.addr);
            let start = Instant::now();
            std::thread::spawn(move || {
                tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
                let mut seen = Vec::new();
                let mut chunk = [0u8; 256];
                loop {
                    match tcp.read(&mut chunk) {
                        Ok(0) => return (seen, start.elapsed()),
                        Ok(n) => seen.extend_from_slice(&chunk[..n]),
                        Err(e) => panic!("no end of the silent connection after {:?}: {e}", start.elapsed()),
                    }
                }
            })
        })
        .collect();
    let mut answering = Vec::new();
    for _ in 0..2 {
        let (ws, _) = wsx::connect(&server.url("/echo")).await.unwrap();
        answering.push(ws);
    }
    // Read (and so answer the pings) for 3.5 s: past the interval and timeout twice over.
    let [first, second] = &mut answering[..] else { unreachable!() };
    let (a, b) = tokio::join!(
        read_pings_for(first, Duration::from_millis(3_500)),
        read_pings_for(second, Duration::from_millis(3_500))
    );
    for pings in [a, b] {
        assert!(pings >= 2, "only {pings} keepalive pings in 3.5 s at one a second");
    }
    for ws in &mut answering {
        ws.send_text("still here").await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.recv().await {
                    Some(Ok(Message::Ping(_))) => continue,
                    other => return other,
                }
            }
        });
        assert_eq!(echo.await.unwrap().unwrap().unwrap(), Message::text("still here"));
    }
    for reader in silent {
        let (seen, after) = reader.join().unwrap();
        // The rest of the 101's head, then at least a ping (unmasked, FIN: 0x89) before the end.
        let frames = seen.windows(4).position(|w| w == b"\r\n\r\n").map(|i| &seen[i + 4..]);
        assert_eq!(frames.and_then(|f| f.first()), Some(&0x89), "the silent client got {seen:?}");
        assert!(after >= Duration::from_millis(1_900), "a silent client was dropped after {after:?}");
        assert!(after <= Duration::from_secs(8), "a silent client was dropped only after {after:?}");
    }
}

/// Reads for `d`, expecting only pings (answered as they are read); returns how many came.
async fn read_pings_for(ws: &mut wsx::WebSocket<wsx::MaybeTlsStream>, d: Duration) -> usize {
    let mut pings = 0;
    let until = tokio::time::Instant::now() + d;
    while let Ok(m) = tokio::time::timeout_at(until, ws.recv()).await {
        match m {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("an answering client got {other:?}"),
        }
    }
    pings
}
