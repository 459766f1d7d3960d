//! `wsx::browser::BrowserWebSocket` against real servers on 127.0.0.1: wsx servers (echo, closing,
//! refusing, choosing a subprotocol, compressing) and hand-written ones (a silent one, one that
//! drops TCP, one that breaks the protocol), checking states, attributes, errors and events
//! against what the WHATWG `WebSocket` does.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use wsx::browser::{
    BrowserConfig, BrowserWebSocket, CloseEvent, DomError, Event, MessageData, ReadyState, SyntaxError,
};
use wsx::{Accept, Bytes, CloseCode, CloseFrame, Message, Rejection, ServerConfig, WebSocket};

const WAIT: Duration = Duration::from_secs(10);

async fn next(ws: &mut BrowserWebSocket) -> Event {
    match tokio::time::timeout(WAIT, ws.next_event()).await {
        Ok(Some(ev)) => ev,
        Ok(None) => panic!("the event stream ended"),
        Err(_) => panic!("no event within {WAIT:?}"),
    }
}

/// Takes the `open` event. (The state may already be past OPEN: it changes when things happen,
/// events are taken later.)
async fn expect_open(ws: &mut BrowserWebSocket) {
    assert_eq!(next(ws).await, Event::Open);
}

async fn expect_text(ws: &mut BrowserWebSocket, text: &str) {
    match next(ws).await {
        Event::Message(m) => assert_eq!(m.data.as_text(), Some(text)),
        other => panic!("expected the message {text:?}, got {other:?}"),
    }
}

async fn expect_close(ws: &mut BrowserWebSocket, was_clean: bool, code: u16, reason: &str) {
    assert_eq!(next(ws).await, Event::Close(CloseEvent { was_clean, code, reason: reason.into() }));
    assert_eq!(ws.ready_state(), ReadyState::Closed);
    assert_eq!(tokio::time::timeout(WAIT, ws.next_event()).await.expect("end of events"), None);
}

/// The standard's sequence for a failed connection: `error`, then `close` with 1006, not clean.
async fn expect_failure(ws: &mut BrowserWebSocket) -> String {
    let message = match next(ws).await {
        Event::Error(e) => e.message,
        other => panic!("expected an error event, got {other:?}"),
    };
    expect_close(ws, false, 1006, "").await;
    message
}

/// Waits until `cond` holds, polling.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    (listener, addr)
}

fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/test")
}

/// The control frames one server connection received (pings, pongs, the close), once it ended.
type Log = mpsc::UnboundedReceiver<Vec<Message>>;

/// A wsx server accepting any number of connections with `config`, selecting the subprotocol
/// `choose` picks, and running `serve` on each. Each connection's `serve` result goes to the log.
async fn server<F, Fut>(config: ServerConfig, choose: fn(&[String]) -> Option<String>, serve: F) -> (SocketAddr, Log)
where
    F: Fn(WebSocket<TcpStream>) -> Fut + Send + Sync + Copy + 'static,
    Fut: Future<Output = Vec<Message>> + Send,
{
    let (listener, addr) = listen().await;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (config, tx) = (config.clone(), tx.clone());
            tokio::spawn(async move {
                let accepted = wsx::accept_with(tcp, &config, |_, up| {
                    Ok(Accept { protocol: choose(&up.protocols), ..Accept::default() })
                })
                .await;
                if let Ok(ws) = accepted {
                    let _ = tx.send(serve(ws).await);
                }
            });
        }
    });
    (addr, rx)
}

/// Echoes data messages; returns the control frames received.
async fn echo(mut ws: WebSocket<TcpStream>) -> Vec<Message> {
    let mut controls = Vec::new();
    while let Some(m) = ws.recv().await {
        match m {
            Ok(m) if m.is_data() => {
                let _ = ws.send(m).await;
            }
            Ok(m) => controls.push(m),
            Err(_) => {}
        }
    }
    controls
}

fn no_protocol(_: &[String]) -> Option<String> {
    None
}

async fn echo_server() -> (SocketAddr, Log) {
    server(ServerConfig::default(), no_protocol, echo).await
}

async fn next_log(log: &mut Log) -> Vec<Message> {
    tokio::time::timeout(WAIT, log.recv()).await.expect("server done in time").expect("a server log")
}

/// A TCP server that accepts and then says nothing: the handshake never completes.
async fn silent_server() -> SocketAddr {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    addr
}

/// Completes the opening handshake by hand (no extension, no subprotocol) and gives the raw TCP
/// stream to `f`.
async fn raw_server<F, Fut>(f: F) -> SocketAddr
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let incoming = wsx::Incoming::read(tcp, &Default::default()).await.expect("request head");
        let key = incoming.request().headers()["sec-websocket-key"].to_str().expect("key").to_owned();
        let (mut tcp, _, _) = incoming.into_parts();
        let accept = wsx::proto::handshake::accept_key(key.as_bytes());
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.expect("write 101");
        f(tcp).await;
    });
    addr
}

/// Reads one (masked) client frame: opcode and unmasked payload. `None` at EOF.
async fn read_client_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await.ok()?;
    assert_ne!(head[1] & 0x80, 0, "client frames are masked");
    let len = match head[1] & 0x7F {
        126 => u64::from(s.read_u16().await.ok()?),
        127 => s.read_u64().await.ok()?,
        n => u64::from(n),
    };
    let mut key = [0u8; 4];
    s.read_exact(&mut key).await.ok()?;
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload).await.ok()?;
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
    Some((head[0] & 0x0F, payload))
}

fn close_of(controls: &[Message]) -> Option<Option<CloseFrame>> {
    controls.iter().find_map(|m| match m {
        Message::Close(f) => Some(f.clone()),
        _ => None,
    })
}

// ------------------------------------------------------------------------------------------------
// The constructor

#[test]
fn constructor_throws_syntax_errors_at_once() {
    // No runtime is needed to throw: the arguments are checked before anything is spawned.
    let cases: [(&str, &[&str], SyntaxError); 9] = [
        ("ftp://127.0.0.1/", &[], SyntaxError::UnsupportedScheme("ftp".into())),
        ("file:///etc/passwd", &[], SyntaxError::UnsupportedScheme("file".into())),
        ("ws://127.0.0.1/#frag", &[], SyntaxError::Fragment("ws://127.0.0.1/#frag".into())),
        ("ws://127.0.0.1/#", &[], SyntaxError::Fragment("ws://127.0.0.1/#".into())),
        ("/relative/path", &[], SyntaxError::InvalidUrl("/relative/path".into())),
        ("ws://127.0.0.1:65536/", &[], SyntaxError::InvalidUrl("ws://127.0.0.1:65536/".into())),
        ("ws://127.0.0.1/", &["chat", "chat"], SyntaxError::DuplicateProtocol("chat".into())),
        ("ws://127.0.0.1/", &["chat", "a b"], SyntaxError::InvalidProtocol("a b".into())),
        ("ws://127.0.0.1/", &[""], SyntaxError::InvalidProtocol("".into())),
    ];
    for (url, protocols, expected) in cases {
        let err = BrowserWebSocket::new(url, protocols).expect_err(url);
        assert_eq!(err, expected, "{url} {protocols:?}");
        let dom = DomError::from(err);
        assert_eq!(dom.name(), "SyntaxError");
        assert!(dom.to_string().starts_with("SyntaxError: "), "{dom}");
    }
    let err = BrowserWebSocket::new("gopher://h/", &[]).unwrap_err();
    assert_eq!(err.to_string(), "the URL's scheme must be 'ws', 'wss', 'http' or 'https'; 'gopher' is not allowed");
}

#[tokio::test]
async fn url_is_the_serialized_url() {
    let (_listener, addr) = listen().await;
    let port = addr.port();
    let cases = [
        (format!("WS://LocalHost:{port}/a/./b/../c?x y"), format!("ws://localhost:{port}/a/c?x%20y")),
        (format!("http://127.0.0.1:{port}"), format!("ws://127.0.0.1:{port}/")),
        ("https://127.0.0.1:443/p".to_owned(), "wss://127.0.0.1/p".to_owned()),
        ("ws://127.0.0.1:80/é".to_owned(), "ws://127.0.0.1/%C3%A9".to_owned()),
    ];
    for (input, expected) in cases {
        let ws = BrowserWebSocket::new(&input, &[]).expect(&input);
        assert_eq!(ws.url(), expected);
        assert_eq!(ws.ready_state(), ReadyState::Connecting);
    }
}

#[tokio::test]
async fn http_scheme_connects_as_ws() {
    let (addr, _log) = echo_server().await;
    let mut ws = BrowserWebSocket::new(&format!("http://{addr}/x"), &[]).unwrap();
    assert_eq!(ws.url(), format!("ws://{addr}/x"));
    expect_open(&mut ws).await;
    ws.close(None, None).unwrap();
    expect_close(&mut ws, true, 1005, "").await;
}

#[test]
fn ready_state_values_are_the_standards() {
    assert_eq!(ReadyState::Connecting as u16, 0);
    assert_eq!(ReadyState::Open as u16, 1);
    assert_eq!(ReadyState::Closing as u16, 2);
    assert_eq!(ReadyState::Closed as u16, 3);
}

// ------------------------------------------------------------------------------------------------
// A whole life: states, attributes, messages

#[tokio::test]
async fn states_over_a_whole_connection() {
    let (addr, mut log) = echo_server().await;
    let mut ws = BrowserWebSocket::new(&url(addr), &[]).unwrap();
    assert_eq!(ws.ready_state(), ReadyState::Connecting);
    assert_eq!(ws.url(), url(addr));
    assert_eq!((ws.protocol(), ws.extensions(), ws.buffered_amount()), ("", "", 0));

    // send() while CONNECTING throws InvalidStateError and queues nothing.
    let err = ws.send("too early").unwrap_err();
    assert_eq!(err, DomError::InvalidState);
    assert_eq!(err.name(), "InvalidStateError");
    assert_eq!(ws.buffered_amount(), 0);

    expect_open(&mut ws).await;
    assert_eq!(ws.ready_state(), ReadyState::Open);
    assert_eq!(ws.protocol(), "");
    assert_eq!(ws.extensions(), "", "this server does not compress");

    ws.send("hello").unwrap();
    ws.send(vec![0u8, 1, 2, 255]).unwrap();
    ws.send(String::from("wörld")).unwrap();
    ws.send(&b"\x00bin"[..]).unwrap();
    expect_text(&mut ws, "hello").await;
    assert_eq!(next(&mut ws).await, Event::Message(wsx::browser::MessageEvent { data: vec![0u8, 1, 2, 255].into() }));
    expect_text(&mut ws, "wörld").await;
    match next(&mut ws).await {
        Event::Message(m) => assert_eq!(m.data.as_binary(), Some(&Bytes::from_static(b"\x00bin"))),
        other => panic!("{other:?}"),
    }

    ws.close(Some(1000), None).unwrap();
    assert_eq!(ws.ready_state(), ReadyState::Closing, "close() moves to CLOSING at once");
    expect_close(&mut ws, true, 1000, "").await;
    assert_eq!(close_of(&next_log(&mut log).await), Some(Some(CloseFrame::new(CloseCode::NORMAL, ""))));
}

#[tokio::test]
async fn protocol_is_the_one_the_server_selected() {
    fn second(offered: &[String]) -> Option<String> {
        offered.iter().find(|p| *p == "chat.v2").cloned()
    }
    let (addr, _log) = server(ServerConfig::default(), second, echo).await;
    let mut ws = BrowserWebSocket::new(&url(addr), &["chat.v1", "chat.v2"]).unwrap();
    assert_eq!(ws.protocol(), "", "empty until open");
    expect_open(&mut ws).await;
    assert_eq!(ws.protocol(), "chat.v2");
    ws.close(None, None).unwrap();
    expect_close(&mut ws, true, 1005, "").await;
}

#[tokio::test]
async fn offered_protocols_none_selected_fails_the_connection() {
    // The standard's handshake: protocols offered and none in the answer → fail.
    let (addr, _log) = echo_server().await;
    let mut ws = BrowserWebSocket::new(&url(addr), &["chat.v1"]).unwrap();
    let message = expect_failure(&mut ws).await;
    assert!(message.contains("subprotocol"), "{message}");
    assert_eq!(ws.protocol(), "");
}

#[tokio::test]
async fn extensions_show_permessage_deflate() {
    let mut config = ServerConfig::default();
    config.websocket.deflate = Some(wsx::proto::deflate::DeflateConfig::default());
    let (addr, _log) = server(config, no_protocol, echo).await;
    let mut ws = BrowserWebSocket::new(&url(addr), &[]).unwrap();
    assert_eq!(ws.extensions(), "");
    expect_open(&mut ws).await;
    assert!(ws.extensions().starts_with("permessage-deflate"), "{:?}", ws.extensions());
    // bufferedAmount counts application bytes, not the compressed frame.
    let text = "a".repeat(10_000);
    ws.send(text.as_str()).unwrap();
    assert_eq!(ws.buffered_amount(), 10_000);
    expect_text(&mut ws, &text).await;
    until("written", || ws.buffered_amount() == 0).await;
    ws.close(Some(1000), Some("done")).unwrap();
    expect_close(&mut ws, true, 1000, "done").await;
}

#[tokio::test]
async fn pings_are_invisible() {
    async fn pinger(mut ws: WebSocket<TcpStream>) -> Vec<Message> {
        ws.send(Message::Ping(Bytes::from_static(b"are you there"))).await.unwrap();
        ws.send_text("after the ping").await.unwrap();
        echo(ws).await
    }
    let (addr, mut log) = server(ServerConfig::default(), no_protocol, pinger).await;
    let mut ws = BrowserWebSocket::new(&url(addr), &[]).unwrap();
    expect_open(&mut ws).await;
    expect_text(&mut ws, "after the ping").await;
    ws.close(Some(1000), None).unwrap();
    expect_close(&mut ws, true, 1000, "").await;
    let controls = next_log(&mut log).await;
    assert_eq!(controls[0], Message::Pong(Bytes::from_static(b"are you there")), "{controls:?}");
}

#[tokio::test]
async fn events_as_a_stream() {
    let (addr, _log) = echo_server().await;
    let mut ws = BrowserWebSocket::new(&url(addr), &[]).unwrap();
    let mut events = ws.events();
    assert_eq!(ws.next_event().await, None, "the stream was taken");
    assert_eq!(events.next().await, Some(Event::Open));
    ws.send("via the stream").unwrap();
    match events.next().await {
        Some(Event::Message(m)) => assert_eq!(m.data, MessageData::from("via the stream")),
        other => panic!("{other:?}"),
    }
    ws.close(Some(3000), Some("stream")).unwrap();
    let rest: Vec<Event> = tokio::time::timeout(WAIT, events.collect()).await.unwrap();
    assert_eq!(rest, [Event::Close(CloseEvent { was_clean: true, code: 3000, reason: "stream".into() })]);
}

// ------------------------------------------------------------------------------------------------
// bufferedAmount

#[tokio::test]
async fn buffered_amount_grows_on_send_and_drops_to_zero_once_written() {
    let (addr, _log) = echo_server().await;
    let mut ws = BrowserWebSocket::new(&url(addr), &[]).unwrap();
    expect_open(&mut ws).await;
    let big = vec![7u8; 1 << 20];
    ws.send(big.clone()).unwrap();
    ws.send("héllo").unwrap();
    // Application bytes: 1 MiB plus "héllo" in UTF-8 (6 bytes), no framing. On this
    // single-threaded runtime the writer task has not run yet.
    assert_eq!(ws.buffered_amount(), (1 << 20) + 6);
    until("everything written", || ws.buffered_amount() == 0).await;
    match next(&mut ws).await {
        Event::Message(m) => assert_eq!(m.data, MessageData::Binary(big.into())),
        other => panic!("{other:?}"),
    }
    expect_text(&mut ws, "héllo").await;
    ws.close(None, None).unwrap();
    expect_close(&mut ws, true, 1005, "").await;
}

#[tokio::test]
async fn send_after_close_does_not_throw_but_grows_buffered_amount() {
    let (addr, mut log) = echo_server().await;
    let mut ws = BrowserWebSocket::new(&url(addr), &[]).unwrap();
    expect_open(&mut ws).await;
    ws.close(Some(1000), None).unwrap();
    assert_eq!(ws.ready_state(), ReadyState::Closing);
    ws.send("abc").unwrap();
    assert_eq!(ws.buffered_amount(), 3);
    expect_close(&mut ws, true, 1000, "").await;
    ws.send(vec![0u8; 10]).unwrap();
    assert_eq!(ws.buffered_amount(), 13);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ws.buffered_amount(), 13, "never sent, never reset");
    let controls = next_log(&mut log).await;
    assert_eq!(controls.len(), 1, "the server saw only the close: {controls:?}");
}

// ------------------------------------------------------------------------------------------------
// close()

#[tokio::test]
async fn close_validates_code_and_reason_first() {
    let (addr, mut log) = echo_server().await;
    let mut ws = BrowserWebSocket::new(&url(addr), &[]).unwrap();
    expect_open(&mut ws).await;
    for code in [0, 999, 1001, 1002, 1005, 1006, 1011, 1015, 2999, 5000, 65535] {
        let err = ws.close(Some(code), None).unwrap_err();
        assert_eq!(err, DomError::InvalidAccess(code));
        assert_eq!(err.name(), "InvalidAccessError");
        assert!(err.to_string().contains(&code.to_string()), "{err}");
    }
    let long_ascii = "x".repeat(124);
    let long_utf8 = "é".repeat(62); // 62 characters, 124 bytes
    for reason in [&long_ascii, &long_utf8] {
        let err = ws.close(Some(1000), Some(reason)).unwrap_err();
        assert_eq!(err, DomError::Syntax(SyntaxError::ReasonTooLong(124)));
        assert_eq!(err.name(), "SyntaxError");
    }
    // The code is checked before the reason.
    assert_eq!(ws.close(Some(1001), Some(&long_ascii)), Err(DomError::InvalidAccess(1001)));
    assert_eq!(ws.ready_state(), ReadyState::Open, "a refused close() changes nothing");
    ws.send("still open").unwrap();
    expect_text(&mut ws, "still open").await;

    // 123 bytes is the limit; 4999 the highest code.
    let reason = format!("{}x", "é".repeat(61));
    assert_eq!(reason.len(), 123);
    ws.close(Some(4999), Some(&reason)).unwrap();
    expect_close(&mut ws, true, 4999, &reason).await;
    assert_eq!(close_of(&next_log(&mut log).await), Some(Some(CloseFrame::new(CloseCode(4999), reason.as_str()))));

    // Arguments are checked in every state; after that, close() on a closed socket does nothing.
    assert_eq!(ws.close(Some(1), None), Err(DomError::InvalidAccess(1)));
    ws.close(Some(1000), None).unwrap();
    ws.close(None, None).unwrap();
    assert_eq!(ws.ready_state(), ReadyState::Closed);
}

#[tokio::test]
async fn client_close_reports_the_code_the_server_sent_back() {
    let (addr, mut log) = echo_server().await;
    let mut ws = BrowserWebSocket::new(&url(addr), &[]).unwrap();
    expect_open(&mut ws).await;
    ws.close(Some(4000), Some("bye")).unwrap();
    // The close event carries the server's close frame: wsx echoes the code and the reason.
    expect_close(&mut ws, true, 4000, "bye").await;
    assert_eq!(close_of(&next_log(&mut log).await), Some(Some(CloseFrame::new(CloseCode(4000), "bye"))));
}

#[tokio::test]
async fn close_without_arguments_sends_no_body() {
    let (addr, mut log) = echo_server().await;
    let mut ws = BrowserWebSocket::new(&url(addr), &[]).unwrap();
    expect_open(&mut ws).await;
    ws.close(None, None).unwrap();
    // The server echoed a close without code: 1005.
    expect_close(&mut ws, true, 1005, "").await;
    assert_eq!(close_of(&next_log(&mut log).await), Some(None));
}

#[tokio::test]
async fn close_with_a_reason_and_no_code_sends_1000() {
    let (addr, mut log) = echo_server().await;
    let mut ws = BrowserWebSocket::new(&url(addr), &[]).unwrap();
    expect_open(&mut ws).await;
    ws.close(None, Some("why")).unwrap();
    expect_close(&mut ws, true, 1000, "why").await;
    assert_eq!(close_of(&next_log(&mut log).await), Some(Some(CloseFrame::new(CloseCode::NORMAL, "why"))));
}

#[tokio::test]
async fn messages_not_taken_before_close_are_dropped() {
    async fn chatty(mut ws: WebSocket<TcpStream>) -> Vec<Message> {
        ws.send_text("one").await.unwrap();
        ws.send_text("two").await.unwrap();
        echo(ws).await
    }
    let (addr, _log) = server(ServerConfig::default(), no_protocol, chatty).await;
    let mut ws = BrowserWebSocket::new(&url(addr), &[]).unwrap();
    expect_open(&mut ws).await;
    // Let both messages arrive and queue up, then close before taking them: like message tasks
    // that run after close() set CLOSING, they are dropped.
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws.close(Some(1000), None).unwrap();
    expect_close(&mut ws, true, 1000, "").await;
}

#[tokio::test]
async fn close_while_connecting_fails_the_connection() {
    let addr = silent_server().await;
    let mut ws = BrowserWebSocket::new(&url(addr), &[]).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ws.ready_state(), ReadyState::Connecting);
    ws.close(Some(1000), Some("never mind")).unwrap();
    assert_eq!(ws.ready_state(), ReadyState::Closing);
    ws.close(None, None).unwrap(); // CLOSING: nothing
    let message = expect_failure(&mut ws).await;
    assert!(message.contains("before it was established"), "{message}");
    ws.send("late").unwrap();
    assert_eq!(ws.buffered_amount(), 4);
}

#[tokio::test]
async fn dropping_an_open_socket_closes_without_status_code() {
    let (addr, mut log) = echo_server().await;
    let mut ws = BrowserWebSocket::new(&url(addr), &[]).unwrap();
    let mut events = ws.events();
    assert_eq!(events.next_event().await, Some(Event::Open));
    drop(ws);
    assert_eq!(close_of(&next_log(&mut log).await), Some(None));
    let rest: Vec<Event> = tokio::time::timeout(WAIT, events.collect()).await.unwrap();
    assert_eq!(rest, [Event::Close(CloseEvent { was_clean: true, code: 1005, reason: String::new() })]);
}

// ------------------------------------------------------------------------------------------------
// The server closes

#[tokio::test]
async fn server_close_with_code_and_reason() {
    async fn closer(mut ws: WebSocket<TcpStream>) -> Vec<Message> {
        ws.send_text("last words").await.unwrap();
        let _ = ws.close(CloseCode(4001), "server bye").await;
        Vec::new()
    }
    let (addr, _log) = server(ServerConfig::default(), no_protocol, closer).await;
    let mut ws = BrowserWebSocket::new(&url(addr), &[]).unwrap();
    expect_open(&mut ws).await;
    // A message before the server's close is delivered; the server's code and reason reported.
    expect_text(&mut ws, "last words").await;
    expect_close(&mut ws, true, 4001, "server bye").await;
    // close() on the closed socket does nothing; send() counts.
    ws.close(Some(1000), None).unwrap();
    ws.send("x").unwrap();
    assert_eq!(ws.buffered_amount(), 1);
}

#[tokio::test]
async fn server_close_without_code_reports_1005() {
    async fn closer(mut ws: WebSocket<TcpStream>) -> Vec<Message> {
        let _ = ws.close_with(None).await;
        Vec::new()
    }
    let (addr, _log) = server(ServerConfig::default(), no_protocol, closer).await;
    let mut ws = BrowserWebSocket::new(&url(addr), &[]).unwrap();
    expect_open(&mut ws).await;
    expect_close(&mut ws, true, 1005, "").await;
}

#[tokio::test]
async fn server_dropping_tcp_without_close_is_1006_without_error() {
    let addr = raw_server(|tcp| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(tcp);
    })
    .await;
    let mut ws = BrowserWebSocket::new(&url(addr), &[]).unwrap();
    expect_open(&mut ws).await;
    // No error event: the connection closed, it was not failed.
    expect_close(&mut ws, false, 1006, "").await;
}

#[tokio::test]
async fn server_protocol_error_fails_the_connection() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let addr = raw_server(move |mut tcp| async move {
        // A text frame with RSV2 set: no extension defines it.
        tcp.write_all(&[0x80 | 0x20 | 0x1, 0x00]).await.unwrap();
        let mut frames = Vec::new();
        while let Some(f) = read_client_frame(&mut tcp).await {
            frames.push(f);
        }
        let _ = tx.send(frames);
    })
    .await;
    let mut ws = BrowserWebSocket::new(&url(addr), &[]).unwrap();
    expect_open(&mut ws).await;
    let message = expect_failure(&mut ws).await;
    assert!(message.contains("reserved bits"), "{message}");
    // The client named the fault in its close frame (1002) before closing the connection.
    let frames = tokio::time::timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].0, 0x8);
    assert_eq!(frames[0].1[..2], 1002u16.to_be_bytes());
}

#[tokio::test]
async fn invalid_utf8_from_server_fails_the_connection() {
    let addr = raw_server(|mut tcp| async move {
        tcp.write_all(&[0x81, 0x02, 0xC3, 0x28]).await.unwrap();
        while read_client_frame(&mut tcp).await.is_some() {}
    })
    .await;
    let mut ws = BrowserWebSocket::new(&url(addr), &[]).unwrap();
    expect_open(&mut ws).await;
    let message = expect_failure(&mut ws).await;
    assert!(message.contains("UTF-8"), "{message}");
}

// ------------------------------------------------------------------------------------------------
// Connections that never open

#[tokio::test]
async fn refused_handshake_is_error_then_close_1006() {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = wsx::accept_with(tcp, &ServerConfig::default(), |_, _| {
            Err(Rejection::new(http::StatusCode::FORBIDDEN, "no entry"))
        })
        .await;
    });
    let mut ws = BrowserWebSocket::new(&url(addr), &[]).unwrap();
    let message = expect_failure(&mut ws).await;
    assert!(message.contains("403"), "{message}");
    assert_eq!((ws.protocol(), ws.extensions()), ("", ""));
    assert_eq!(ws.send("x"), Ok(()), "CLOSED, not CONNECTING: no throw");
}

#[tokio::test]
async fn connection_refused_is_error_then_close_1006() {
    let (listener, addr) = listen().await;
    drop(listener);
    let mut ws = BrowserWebSocket::new(&url(addr), &[]).unwrap();
    assert_eq!(ws.ready_state(), ReadyState::Connecting);
    expect_failure(&mut ws).await;
}

#[tokio::test]
async fn wss_to_a_plain_server_fails_naming_tls() {
    // A plain WebSocket server: the TLS handshake meets an HTTP answer.
    let (addr, _log) = echo_server().await;
    let wss = format!("wss://{addr}/");
    let mut ws = BrowserWebSocket::new(&wss, &[]).unwrap();
    assert_eq!(ws.url(), wss);
    let message = expect_failure(&mut ws).await;
    assert!(message.contains("TLS"), "{message}");
}

#[tokio::test]
async fn dropping_a_connecting_socket_fails_the_connection() {
    let addr = silent_server().await;
    let mut ws = BrowserWebSocket::new(&url(addr), &[]).unwrap();
    let events = ws.events();
    drop(ws);
    let all: Vec<Event> = tokio::time::timeout(WAIT, events.collect()).await.unwrap();
    assert!(matches!(all[0], Event::Error(_)), "{all:?}");
    assert_eq!(all[1..], [Event::Close(CloseEvent { was_clean: false, code: 1006, reason: String::new() })]);
}

#[test]
fn handles_can_be_shared_between_tasks() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<BrowserWebSocket>();
    send_sync::<wsx::browser::Events>();
    send_sync::<DomError>();
}

// ------------------------------------------------------------------------------------------------
// A peer that sends faster than the application takes events

/// Everything a loopback connection can hold besides the event queue: the server's output
/// queue (its 1 MiB high-water mark) and both sockets' buffers (Linux grows a receive buffer up
/// to `tcp_rmem`'s maximum, 32 MiB on some machines, but only while the application reads).
const IN_FLIGHT: usize = 24 << 20;

/// Starts a wsx server that sends `count` binary messages of `size` bytes (the first 8 bytes
/// are the message's index) as fast as the client takes them, counting in `sent` those whose
/// bytes were handed to the socket, then closes with 1000.
async fn flood_server(count: usize, size: usize, sent: Arc<AtomicUsize>) -> SocketAddr {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else { return };
        let Ok(mut ws) = wsx::accept(tcp).await else { return };
        for i in 0..count {
            let mut data = vec![0u8; size];
            data[..8].copy_from_slice(&(i as u64).to_be_bytes());
            if ws.send(Message::Binary(data.into())).await.is_err() {
                return;
            }
            sent.store(i + 1, Ordering::Release);
        }
        let _ = ws.close(CloseCode::NORMAL, "done").await;
    });
    addr
}

/// Waits until `sent` has not moved for 300 ms, checking meanwhile that the queue never passes
/// its bounds; returns the count it stopped at.
async fn until_stalled(ws: &BrowserWebSocket, sent: &AtomicUsize, config: &BrowserConfig) -> usize {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = usize::MAX;
    loop {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert!(ws.queued_events() <= config.max_queued_events, "{} events queued", ws.queued_events());
            assert!(ws.queued_bytes() <= config.max_queued_bytes, "{} bytes queued", ws.queued_bytes());
        }
        let now = sent.load(Ordering::Acquire);
        if now == last {
            return now;
        }
        last = now;
        assert!(tokio::time::Instant::now() < deadline, "the server never stalled ({now} messages sent)");
    }
}

/// Takes `count` message events, checking that they come in order, then the server's close.
async fn take_all_in_order(ws: &mut BrowserWebSocket, count: usize, size: usize) {
    for i in 0..count {
        match next(ws).await {
            Event::Message(m) => {
                let data = m.data.as_binary().expect("binary");
                assert_eq!(data.len(), size);
                assert_eq!(u64::from_be_bytes(data[..8].try_into().unwrap()), i as u64, "out of order");
            }
            other => panic!("expected message {i}, got {other:?}"),
        }
    }
    expect_close(ws, true, 1000, "done").await;
    assert_eq!((ws.queued_events(), ws.queued_bytes()), (0, 0));
}

#[tokio::test]
async fn a_full_queue_in_bytes_stops_reading_until_events_are_taken() {
    const COUNT: usize = 2048;
    const SIZE: usize = 32 << 10; // 64 MiB in all
    let sent = Arc::new(AtomicUsize::new(0));
    let addr = flood_server(COUNT, SIZE, sent.clone()).await;
    let mut config = BrowserConfig::default();
    config.max_queued_bytes = 256 << 10;
    let mut ws = BrowserWebSocket::with_config(&url(addr), &[], config.clone()).unwrap();
    expect_open(&mut ws).await;

    let stalled = until_stalled(&ws, &sent, &config).await;
    assert!(stalled * SIZE < IN_FLIGHT, "the server wrote {stalled} messages while nobody took events");
    // The queue is exactly full: 8 messages of 32 KiB make the 256 KiB, the 9th waits.
    assert_eq!((ws.queued_events(), ws.queued_bytes()), (8, 256 << 10));
    assert_eq!(ws.ready_state(), ReadyState::Open);

    take_all_in_order(&mut ws, COUNT, SIZE).await;
    assert_eq!(sent.load(Ordering::Acquire), COUNT);
}

#[tokio::test]
async fn a_full_queue_in_events_stops_reading_until_events_are_taken() {
    const COUNT: usize = 48 << 10;
    const SIZE: usize = 1 << 10; // 48 MiB in all
    let sent = Arc::new(AtomicUsize::new(0));
    let addr = flood_server(COUNT, SIZE, sent.clone()).await;
    let mut config = BrowserConfig::default();
    config.max_queued_events = 16;
    let mut ws = BrowserWebSocket::with_config(&url(addr), &[], config.clone()).unwrap();
    expect_open(&mut ws).await;

    let stalled = until_stalled(&ws, &sent, &config).await;
    assert!(stalled * SIZE < IN_FLIGHT, "the server wrote {stalled} messages while nobody took events");
    assert_eq!((ws.queued_events(), ws.queued_bytes()), (16, 16 << 10));

    take_all_in_order(&mut ws, COUNT, SIZE).await;
    assert_eq!(sent.load(Ordering::Acquire), COUNT);
}

#[tokio::test]
async fn a_message_over_the_byte_bound_still_gets_through_alone() {
    let sent = Arc::new(AtomicUsize::new(0));
    let addr = flood_server(3, 64 << 10, sent.clone()).await;
    let mut config = BrowserConfig::default();
    config.max_queued_bytes = 16 << 10;
    let mut ws = BrowserWebSocket::with_config(&url(addr), &[], config).unwrap();
    expect_open(&mut ws).await;
    until("one large message queued", || ws.queued_events() == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!((ws.queued_events(), ws.queued_bytes()), (1, 64 << 10), "one message over the bound, alone");
    take_all_in_order(&mut ws, 3, 64 << 10).await;
}
