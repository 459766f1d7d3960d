//! [`wsx::browser::BrowserWebSocket`] (the WHATWG `WebSocket` interface in Rust) against the real
//! `wsx serve` binary: every point of the browser model, end to end.
//!
//! Each test runs its own `wsx serve` on a free port of 127.0.0.1 and kills it when done. Every
//! wait has a deadline, so that no test can hang.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::time::timeout;
use wsx::browser::{BrowserWebSocket, CloseEvent, DomError, Event, MessageData, ReadyState, SyntaxError};
use wsx::Bytes;

const WSX: &str = env!("CARGO_BIN_EXE_wsx");

/// The longest any single event may take to arrive.
const EVENT_WAIT: Duration = Duration::from_secs(5);

// ------------------------------------------------------------------------------------------------
// The server

/// A running `wsx serve`, killed when dropped (also when a test panics).
struct Serve {
    child: Child,
    port: u16,
}

impl Serve {
    /// Starts `wsx serve --addr 127.0.0.1:PORT` (plus `extra`) on a free port and waits until it
    /// accepts connections. If the port was taken in between, tries another one.
    fn start(extra: &[&str]) -> Self {
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new(WSX)
                .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
                .args(extra)
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("run wsx serve");
            let mut server = Self { child, port };
            if server.wait_until_accepting() {
                return server;
            }
            // It exited (the port was taken meanwhile): `server` is dropped, try another port.
        }
        panic!("wsx serve did not start on any of 5 free ports");
    }

    /// True once the port accepts; false if the server exited first.
    fn wait_until_accepting(&mut self) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.child.try_wait().expect("wsx serve's status").is_some() {
                return false;
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return true;
            }
            assert!(Instant::now() < deadline, "wsx serve did not accept on port {} within 10 s", self.port);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    /// Sends SIGTERM to the server.
    fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -TERM {}: {status}", self.child.id());
    }

    /// Waits (without blocking the runtime) up to `within` for the server to exit.
    async fn exited(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wsx serve's status") {
                return status;
            }
            assert!(Instant::now() < deadline, "wsx serve did not exit within {within:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago: bind 127.0.0.1:0, read the port, release it.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

// ------------------------------------------------------------------------------------------------
// Helpers

/// The next event, within [`EVENT_WAIT`].
async fn next(ws: &mut BrowserWebSocket) -> Event {
    match timeout(EVENT_WAIT, ws.next_event()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("{}: the event stream ended", ws.url()),
        Err(_) => panic!("{}: no event within {EVENT_WAIT:?} (state {:?})", ws.url(), ws.ready_state()),
    }
}

/// `new WebSocket(url, protocols)`: checks that it starts in CONNECTING and opens, and returns it
/// OPEN.
async fn open(url: &str, protocols: &[&str]) -> BrowserWebSocket {
    let mut ws = BrowserWebSocket::new(url, protocols).expect("a valid URL and protocols");
    assert_eq!(ws.ready_state(), ReadyState::Connecting, "{url}: not CONNECTING right after new");
    match next(&mut ws).await {
        Event::Open => {}
        other => panic!("{url}: expected Open, got {other:?}"),
    }
    assert_eq!(ws.ready_state(), ReadyState::Open, "{url}: not OPEN after the Open event");
    ws
}

/// The next event, which must be a message.
async fn message(ws: &mut BrowserWebSocket) -> MessageData {
    match next(ws).await {
        Event::Message(m) => m.data,
        other => panic!("{}: expected a Message, got {other:?}", ws.url()),
    }
}

/// The next event, which must be the Close event; then checks that it was the last one and that
/// the state is CLOSED.
async fn closed(ws: &mut BrowserWebSocket) -> CloseEvent {
    let close = match next(ws).await {
        Event::Close(c) => c,
        other => panic!("{}: expected Close, got {other:?}", ws.url()),
    };
    assert_eq!(ws.ready_state(), ReadyState::Closed, "{}: not CLOSED after the Close event", ws.url());
    let after = timeout(EVENT_WAIT, ws.next_event()).await.expect("the stream ends after Close");
    assert_eq!(after, None, "{}: an event after Close", ws.url());
    close
}

fn clean(code: u16, reason: &str) -> CloseEvent {
    CloseEvent { was_clean: true, code, reason: reason.to_owned() }
}

// ------------------------------------------------------------------------------------------------
// The tests

/// `new` returns in CONNECTING (nothing negotiated yet), then `open` fires and the state is OPEN.
#[tokio::test]
async fn starts_connecting_then_opens_in_the_background() {
    let server = Serve::start(&[]);
    let mut ws = BrowserWebSocket::new(&server.url("/echo"), &[]).unwrap();
    // The current-thread runtime has not run the connecting task yet: CONNECTING for sure.
    assert_eq!(ws.ready_state(), ReadyState::Connecting);
    assert_eq!(ws.ready_state() as u16, 0);
    assert_eq!((ws.protocol(), ws.extensions(), ws.buffered_amount()), ("", "", 0));
    assert_eq!(next(&mut ws).await, Event::Open);
    assert_eq!(ws.ready_state(), ReadyState::Open);
    assert_eq!(ws.ready_state() as u16, 1);
    ws.close(None, None).unwrap();
    assert_eq!(ws.ready_state(), ReadyState::Closing);
    assert_eq!(ws.ready_state() as u16, 2);
    // A close frame without a body: the server's answer has no code either (1005).
    assert_eq!(closed(&mut ws).await, clean(1005, ""));
    assert_eq!(ws.ready_state() as u16, 3);
}

/// `url` is the parsed URL, serialized; that is what is requested (the server routes it to
/// /echo).
#[tokio::test]
async fn url_is_serialized() {
    let server = Serve::start(&[]);
    let input = format!("HTTP://127.0.0.1:{}/a/../echo?x y", server.port);
    let mut ws = open(&input, &[]).await;
    assert_eq!(ws.url(), format!("ws://127.0.0.1:{}/echo?x%20y", server.port));
    ws.send("routed to /echo").unwrap();
    assert_eq!(message(&mut ws).await.as_text(), Some("routed to /echo"));
    ws.close(Some(1000), None).unwrap();
    assert_eq!(closed(&mut ws).await, clean(1000, ""));
}

/// `protocol`: what the server selected, "" when nothing was offered; a connection where the
/// server selected none of the offered subprotocols fails.
#[tokio::test]
async fn protocol_is_the_selected_subprotocol() {
    let server = Serve::start(&[]);
    let url = server.url("/echo");

    let mut chat = BrowserWebSocket::new(&url, &["chat.v1"]).unwrap();
    assert_eq!(chat.protocol(), "", "empty until open");
    assert_eq!(next(&mut chat).await, Event::Open);
    assert_eq!(chat.protocol(), "chat.v1");

    let none = open(&url, &[]).await;
    assert_eq!(none.protocol(), "");

    // The server selects, in its own order of preference (chat.v1, echo.v1), one the page offered.
    let first = open(&url, &["x.unknown", "echo.v1", "chat.v1"]).await;
    assert_eq!(first.protocol(), "chat.v1");
    let echo = open(&url, &["x.unknown", "echo.v1"]).await;
    assert_eq!(echo.protocol(), "echo.v1");

    // Offered, none selected: the connection fails, as the standard's handshake steps say.
    let mut unknown = BrowserWebSocket::new(&url, &["x.unknown"]).unwrap();
    assert!(matches!(next(&mut unknown).await, Event::Error(_)));
    assert_eq!(closed(&mut unknown).await, CloseEvent { was_clean: false, code: 1006, reason: String::new() });
    assert_eq!(unknown.protocol(), "");

    chat.close(Some(1000), None).unwrap();
    assert_eq!(closed(&mut chat).await, clean(1000, ""));
}

/// `extensions`: permessage-deflate, without context takeover, with the default server; "" with
/// `--no-deflate`. Messages go through either way.
#[tokio::test]
async fn extensions_follow_the_servers_answer() {
    let compressible = "wsx serve compresses this line. ".repeat(1000);
    for (args, deflate) in [(&[][..], true), (&["--no-deflate"][..], false)] {
        let server = Serve::start(args);
        let mut ws = BrowserWebSocket::new(&server.url("/echo"), &[]).unwrap();
        assert_eq!(ws.extensions(), "", "empty until open");
        assert_eq!(next(&mut ws).await, Event::Open);
        let extensions = ws.extensions().to_owned();
        if deflate {
            assert!(extensions.contains("permessage-deflate"), "{args:?}: {extensions:?}");
            assert!(extensions.contains("server_no_context_takeover"), "{args:?}: {extensions:?}");
            assert!(extensions.contains("client_no_context_takeover"), "{args:?}: {extensions:?}");
        } else {
            assert_eq!(extensions, "", "{args:?}");
        }
        for _ in 0..3 {
            ws.send(compressible.as_str()).unwrap();
            assert_eq!(message(&mut ws).await.as_text(), Some(compressible.as_str()), "{args:?}");
        }
        ws.close(Some(1000), None).unwrap();
        assert_eq!(closed(&mut ws).await, clean(1000, ""), "{args:?}");
    }
}

/// `bufferedAmount` counts what `send` queued until it is written, then returns to 0.
#[tokio::test]
async fn buffered_amount_grows_on_send_and_returns_to_zero() {
    let server = Serve::start(&[]);
    let mut ws = open(&server.url("/echo"), &[]).await;
    assert_eq!(ws.buffered_amount(), 0);
    let binary: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let text = "ünïcödé 🦀".repeat(100);
    ws.send(binary.clone()).unwrap();
    // The writer task has not run yet (current-thread runtime, no await since): all counted.
    assert_eq!(ws.buffered_amount(), binary.len());
    ws.send(text.as_str()).unwrap();
    assert_eq!(ws.buffered_amount(), binary.len() + text.len(), "text counts in UTF-8 bytes");

    let deadline = Instant::now() + EVENT_WAIT;
    while ws.buffered_amount() != 0 {
        assert!(Instant::now() < deadline, "bufferedAmount still {} after {EVENT_WAIT:?}", ws.buffered_amount());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(message(&mut ws).await, MessageData::Binary(Bytes::from(binary)));
    assert_eq!(message(&mut ws).await.as_text(), Some(text.as_str()));
    assert_eq!(ws.buffered_amount(), 0);
    ws.close(Some(1000), None).unwrap();
    assert_eq!(closed(&mut ws).await, clean(1000, ""));
}

/// `send` in CONNECTING throws `InvalidStateError` and queues nothing.
#[tokio::test]
async fn send_while_connecting_is_an_invalid_state_error() {
    let server = Serve::start(&[]);
    let mut ws = BrowserWebSocket::new(&server.url("/echo"), &[]).unwrap();
    assert_eq!(ws.ready_state(), ReadyState::Connecting);
    let err = ws.send("too early").unwrap_err();
    assert_eq!(err, DomError::InvalidState);
    assert_eq!(err.name(), "InvalidStateError");
    assert_eq!(ws.send(vec![1u8, 2, 3]), Err(DomError::InvalidState));
    assert_eq!(ws.buffered_amount(), 0, "nothing counted");
    assert_eq!(next(&mut ws).await, Event::Open);
    // Nothing was queued: the first message back is the first one sent once OPEN.
    ws.send("on time").unwrap();
    assert_eq!(message(&mut ws).await.as_text(), Some("on time"));
    ws.close(Some(1000), None).unwrap();
    assert_eq!(closed(&mut ws).await, clean(1000, ""));
}

/// /echo sends every text and binary message back; each arrives as a Message event, in order.
#[tokio::test]
async fn echoed_messages_arrive_as_message_events() {
    let server = Serve::start(&[]);
    let mut ws = open(&server.url("/echo"), &["echo.v1"]).await;
    let text = "héllo wörld — 你好 🦀🌍👋🏽 ✓";
    let binary: Vec<u8> = (0..=255).collect();
    ws.send(text).unwrap();
    ws.send(binary.as_slice()).unwrap();
    ws.send(String::new()).unwrap();
    ws.send(Vec::<u8>::new()).unwrap();
    ws.send(Bytes::from_static(b"\x00\xff not UTF-8 \xc3")).unwrap();

    let got = message(&mut ws).await;
    assert_eq!(got, MessageData::Text(text.into()));
    assert_eq!(got.len(), text.len());
    assert_eq!(message(&mut ws).await, MessageData::Binary(Bytes::from(binary)));
    assert_eq!(message(&mut ws).await, MessageData::Text("".into()));
    assert_eq!(message(&mut ws).await, MessageData::Binary(Bytes::new()));
    assert_eq!(message(&mut ws).await.as_binary().map(|b| &b[..]), Some(&b"\x00\xff not UTF-8 \xc3"[..]));
    ws.close(Some(1000), None).unwrap();
    assert_eq!(closed(&mut ws).await, clean(1000, ""));
}

/// Two sockets in the same room see each other's messages (and their own).
#[tokio::test]
async fn two_sockets_in_a_room_see_each_others_messages() {
    let server = Serve::start(&[]);
    let url = server.url("/room/x");
    // A member has joined once its own message came back through the room.
    let mut a = open(&url, &["chat.v1"]).await;
    a.send("a joined").unwrap();
    assert_eq!(message(&mut a).await.as_text(), Some("a joined"));
    let mut b = open(&url, &["chat.v1"]).await;
    b.send("b joined").unwrap();
    assert_eq!(message(&mut b).await.as_text(), Some("b joined"));
    assert_eq!(message(&mut a).await.as_text(), Some("b joined"));

    a.send("from a: ça va ? 🙂").unwrap();
    for ws in [&mut a, &mut b] {
        assert_eq!(message(ws).await.as_text(), Some("from a: ça va ? 🙂"));
    }
    b.send(vec![0xb0u8, 0x0b]).unwrap();
    for ws in [&mut a, &mut b] {
        assert_eq!(message(ws).await, MessageData::Binary(Bytes::from_static(&[0xb0, 0x0b])));
    }
    for mut ws in [a, b] {
        ws.close(Some(1000), None).unwrap();
        assert_eq!(closed(&mut ws).await, clean(1000, ""));
    }
}

/// `close(code, reason)`: the code must be 1000 or 3000–4999 (`InvalidAccessError`), the reason
/// at most 123 UTF-8 bytes (`SyntaxError`), checked in any state; valid codes close the socket
/// and the server echoes them.
#[tokio::test]
async fn close_validates_code_and_reason() {
    let server = Serve::start(&[]);
    let url = server.url("/echo");

    // Checked while CONNECTING too, without failing the connection.
    let mut ws = BrowserWebSocket::new(&url, &[]).unwrap();
    assert_eq!(ws.close(Some(999), None), Err(DomError::InvalidAccess(999)));
    assert_eq!(ws.ready_state(), ReadyState::Connecting);
    assert_eq!(next(&mut ws).await, Event::Open);

    for code in [0, 999, 1001, 1005, 1006, 1015, 2999, 5000, u16::MAX] {
        let err = ws.close(Some(code), None).unwrap_err();
        assert_eq!(err, DomError::InvalidAccess(code));
        assert_eq!(err.name(), "InvalidAccessError");
    }
    let long_ascii = "x".repeat(124);
    let long_utf8 = "é".repeat(62); // 62 characters, 124 bytes
    for reason in [&long_ascii, &long_utf8] {
        let err = ws.close(Some(1000), Some(reason)).unwrap_err();
        assert_eq!(err, DomError::Syntax(SyntaxError::ReasonTooLong(124)));
        assert_eq!(err.name(), "SyntaxError");
        // The reason is checked without a code too.
        assert_eq!(ws.close(None, Some(reason)), Err(DomError::Syntax(SyntaxError::ReasonTooLong(124))));
    }
    // The code is checked before the reason.
    assert_eq!(ws.close(Some(1001), Some(&long_ascii)), Err(DomError::InvalidAccess(1001)));
    assert_eq!(ws.ready_state(), ReadyState::Open, "a refused close() changes nothing");
    ws.send("still open").unwrap();
    assert_eq!(message(&mut ws).await.as_text(), Some("still open"));

    // 1000, 3000 and 4999 are accepted (a 123-byte reason too); the server echoes the code and
    // the reason.
    let max_reason = format!("{}x", "é".repeat(61));
    assert_eq!(max_reason.len(), 123);
    ws.close(Some(1000), Some(&max_reason)).unwrap();
    assert_eq!(ws.ready_state(), ReadyState::Closing);
    assert_eq!(closed(&mut ws).await, clean(1000, &max_reason));
    // Still checked once CLOSED, and otherwise nothing happens.
    assert_eq!(ws.close(Some(1001), None), Err(DomError::InvalidAccess(1001)));
    assert_eq!(ws.close(Some(1000), None), Ok(()));
    for code in [3000, 4999] {
        let mut ws = open(&url, &[]).await;
        ws.close(Some(code), Some("ok")).unwrap();
        assert_eq!(ws.ready_state(), ReadyState::Closing);
        assert_eq!(closed(&mut ws).await, clean(code, "ok"), "close({code})");
    }
}

/// `close(4000, "bye")`: a clean close; the event carries the server's echo (4000, "bye").
#[tokio::test]
async fn client_close_is_clean_with_the_echoed_code() {
    let server = Serve::start(&[]);
    let mut ws = open(&server.url("/echo"), &["chat.v1"]).await;
    ws.close(Some(4000), Some("bye")).unwrap();
    assert_eq!(ws.ready_state(), ReadyState::Closing);
    // Sent after close(): not sent, no error, counted for ever.
    ws.send("late").unwrap();
    assert_eq!(ws.buffered_amount(), 4);
    let close = closed(&mut ws).await;
    assert!(close.was_clean, "{close:?}");
    assert_eq!(close.code, 4000, "{close:?}");
    assert_eq!(close.reason, "bye", "the server echoes the code and the reason");
    assert_eq!(ws.buffered_amount(), 4);
}

/// The server closes (/close?code=4001&reason=server%20bye&after=50): a clean close with its
/// code and reason.
#[tokio::test]
async fn server_close_is_clean_with_its_code_and_reason() {
    let server = Serve::start(&[]);
    let mut ws = open(&server.url("/close?code=4001&reason=server%20bye&after=50"), &[]).await;
    assert_eq!(closed(&mut ws).await, clean(4001, "server bye"));
}

/// An upgrade to a path without a WebSocket endpoint gets a 404: `error`, then `close` with 1006,
/// not clean.
#[tokio::test]
async fn refused_upgrade_fires_error_then_close_1006() {
    let server = Serve::start(&[]);
    let mut ws = BrowserWebSocket::new(&server.url("/nope"), &[]).unwrap();
    assert_eq!(ws.ready_state(), ReadyState::Connecting);
    match next(&mut ws).await {
        Event::Error(e) => assert!(e.message.contains("404"), "the error should name the 404: {:?}", e.message),
        other => panic!("expected Error, got {other:?}"),
    }
    assert_eq!(closed(&mut ws).await, CloseEvent { was_clean: false, code: 1006, reason: String::new() });
    assert_eq!((ws.protocol(), ws.extensions()), ("", ""));
}

/// SIGTERM: the server closes every connection with 1001, cleanly, then exits 0.
#[cfg(unix)]
#[tokio::test]
async fn sigterm_closes_every_socket_with_1001() {
    let mut server = Serve::start(&[]);
    let mut echo = open(&server.url("/echo"), &["chat.v1"]).await;
    let mut room = open(&server.url("/room/x"), &["chat.v1"]).await;
    // The room member has joined (its message came back) and the echo socket is served.
    room.send("here").unwrap();
    assert_eq!(message(&mut room).await.as_text(), Some("here"));
    echo.send("here").unwrap();
    assert_eq!(message(&mut echo).await.as_text(), Some("here"));

    server.terminate();
    for ws in [&mut echo, &mut room] {
        let close = closed(ws).await;
        assert_eq!((close.code, close.was_clean), (1001, true), "{}: {close:?}", ws.url());
    }
    let status = server.exited(Duration::from_secs(5)).await;
    assert!(status.success(), "wsx serve exited with {status}");
}
