//! Helpers shared by the loopback integration tests: servers on 127.0.0.1:0, a hand-written raw
//! WebSocket client (handshake, masked frame encoder, unmasked frame parser) and HTTP parsing.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use wsx::{Message, ServerConfig, WebSocket};

/// Upper bound for any single test; a hang fails instead of blocking the suite.
pub const TEST_DEADLINE: Duration = Duration::from_secs(30);

/// Runs `fut`, panicking if it takes longer than [`TEST_DEADLINE`].
pub async fn deadline<F: Future>(fut: F) -> F::Output {
    match tokio::time::timeout(TEST_DEADLINE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("test did not finish within {TEST_DEADLINE:?}"),
    }
}

/// Awaits `fut` for at most `d`, panicking with `what` otherwise.
pub async fn within<F: Future>(d: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(d, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: nothing within {d:?}"),
    }
}

pub async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local_addr");
    (listener, addr)
}

pub fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/test")
}

/// Accepts one TCP connection, upgrades it with `config` and hands the WebSocket to `f`.
// `accept_with` takes a callback returning `Result<Accept, Rejection>`; the lint flags every such closure.
pub async fn spawn_server<F, Fut, T>(config: ServerConfig, f: F) -> (SocketAddr, JoinHandle<T>)
where
    F: FnOnce(WebSocket<TcpStream>) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send,
    T: Send + 'static,
{
    let (listener, addr) = listen().await;
    let handle = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        tcp.set_nodelay(true).expect("nodelay");
        let ws = wsx::accept_with(tcp, &config, |_, _| Ok(wsx::Accept::default())).await.expect("server handshake");
        f(ws).await
    });
    (addr, handle)
}

/// What an echo server saw.
#[derive(Debug, Default)]
pub struct EchoLog {
    /// Data messages echoed.
    pub echoed: usize,
    /// Control messages received (pings, pongs, the close), in order.
    pub controls: Vec<Message>,
    /// Errors from `recv` or `send`.
    pub errors: Vec<wsx::Error>,
}

/// The canonical echo loop: echo data messages until `recv` returns `None`.
pub async fn echo_loop(mut ws: WebSocket<TcpStream>) -> EchoLog {
    let mut log = EchoLog::default();
    while let Some(m) = ws.recv().await {
        match m {
            Ok(m) if m.is_data() => {
                log.echoed += 1;
                if let Err(e) = ws.send(m).await {
                    log.errors.push(e);
                }
            }
            Ok(m) => log.controls.push(m),
            Err(e) => log.errors.push(e),
        }
    }
    log
}

pub async fn spawn_echo_server(config: ServerConfig) -> (SocketAddr, JoinHandle<EchoLog>) {
    spawn_server(config, echo_loop).await
}

/// Deterministic pseudo-random bytes (xorshift), so that a shifted or corrupted byte is caught.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------
// A raw client: the RFC 6455 §1.3 sample key, frames encoded by hand.

pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

pub fn upgrade_request() -> String {
    format!(
        "GET /raw HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {SAMPLE_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Connects, sends the upgrade request, checks the 101 answer. Returns the stream and any bytes
/// read past the response head.
pub async fn raw_handshake(addr: SocketAddr) -> (TcpStream, BytesMut) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.write_all(upgrade_request().as_bytes()).await.expect("write request");
    let mut buf = BytesMut::new();
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = buf.split_to(end + 4);
            let head = std::str::from_utf8(&head).expect("ASCII head");
            assert!(head.starts_with("HTTP/1.1 101 "), "expected 101, got {head:?}");
            assert!(
                head.lines().any(|l| l == format!("Sec-WebSocket-Accept: {SAMPLE_ACCEPT}")),
                "missing or wrong accept key in {head:?}"
            );
            return (s, buf);
        }
        let n = s.read_buf(&mut buf).await.expect("read response");
        assert!(n > 0, "server closed during the handshake");
    }
}

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Encodes one masked (client) frame.
pub fn masked_frame(opcode: u8, fin: bool, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | opcode);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// A frame as the raw client received it (server frames are never masked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// Takes one whole frame off the front of `buf`, if there is one.
pub fn parse_frame(buf: &mut BytesMut) -> Option<RawFrame> {
    if buf.len() < 2 {
        return None;
    }
    let (b0, b1) = (buf[0], buf[1]);
    assert_eq!(b1 & 0x80, 0, "a server frame must not be masked");
    assert_eq!(b0 & 0x70, 0, "RSV bits set on a server frame");
    let (len, head) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            let mut be = [0u8; 8];
            be.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(be) as usize, 10)
        }
        n => (n as usize, 2),
    };
    if buf.len() < head + len {
        return None;
    }
    buf.advance(head);
    let payload = buf.split_to(len).to_vec();
    Some(RawFrame { fin: b0 & 0x80 != 0, opcode: b0 & 0x0F, payload })
}

/// Reads the next frame; `None` at EOF (or a reset) on a frame boundary. Panics on EOF mid-frame.
pub async fn read_frame(s: &mut TcpStream, buf: &mut BytesMut) -> Option<RawFrame> {
    loop {
        if let Some(f) = parse_frame(buf) {
            return Some(f);
        }
        match s.read_buf(buf).await {
            Ok(0) | Err(_) => {
                assert!(buf.is_empty(), "stream ended inside a frame ({} bytes left)", buf.len());
                return None;
            }
            Ok(_) => {}
        }
    }
}

/// Reads frames until EOF.
pub async fn read_frames_to_eof(s: &mut TcpStream, buf: &mut BytesMut) -> Vec<RawFrame> {
    let mut frames = Vec::new();
    while let Some(f) = read_frame(s, buf).await {
        frames.push(f);
    }
    frames
}

// ------------------------------------------------------------------------------------------------
// HTTP answers to hand-written requests.

#[derive(Debug)]
pub struct HttpResponse {
    pub status_line: String,
    /// Header lines as sent (`Name: value`).
    pub headers: Vec<String>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads until the server closes the connection (a reset after the data counts as the end) and
/// splits the answer into status line, header lines and body (checked against Content-Length).
pub async fn read_http_response(s: &mut TcpStream) -> HttpResponse {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
        }
    }
    let end =
        find(&raw, b"\r\n\r\n").unwrap_or_else(|| panic!("no complete head in {:?}", String::from_utf8_lossy(&raw)));
    let head = std::str::from_utf8(&raw[..end]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default().to_owned();
    let headers: Vec<String> = lines.map(str::to_owned).collect();
    let body = raw[end + 4..].to_vec();
    let resp = HttpResponse { status_line, headers, body };
    if let Some(cl) = resp.header("content-length") {
        assert_eq!(cl.parse::<usize>().expect("numeric Content-Length"), resp.body.len(), "body length");
    }
    resp
}
