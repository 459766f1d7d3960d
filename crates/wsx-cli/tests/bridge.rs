//! The TCP bridges end to end: `wsx serve --forward tcp:…` and `wsx connect --listen tcp:…`,
//! the real binary, chained:
//!
//! ```text
//!  test's TCP client ─► wsx connect --listen ─ WebSocket ─► wsx serve --forward ─► test's TCP server
//! ```

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use wsx::{CloseCode, Message};

mod common;

use common::Server;

const MIB: usize = 1 << 20;

/// A seeded PRNG (splitmix64): the same bytes on both ends without keeping them.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// The byte stream of seed `seed`, produced and checked in pieces of any size.
struct Stream {
    rng: Rng,
    /// Bytes of the last word not handed out yet.
    spare: Vec<u8>,
    pos: u64,
}

impl Stream {
    fn new(seed: u64) -> Self {
        Self { rng: Rng(seed), spare: Vec::new(), pos: 0 }
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() {
            if self.spare.is_empty() {
                if buf.len() - i >= 8 * 1024 {
                    // Fast path: whole words straight into the buffer.
                    let n = (buf.len() - i) / 8 * 8;
                    self.rng.fill(&mut buf[i..i + n]);
                    i += n;
                    continue;
                }
                self.spare = self.rng.next().to_le_bytes().to_vec();
            }
            let n = self.spare.len().min(buf.len() - i);
            buf[i..i + n].copy_from_slice(&self.spare[..n]);
            self.spare.drain(..n);
            i += n;
        }
        self.pos += buf.len() as u64;
    }

    /// Panics at the first byte of `got` that differs from the stream.
    fn check(&mut self, got: &[u8]) {
        let mut want = vec![0; got.len()];
        let at = self.pos;
        self.fill(&mut want);
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            panic!("byte {} differs: got {:#04x}, want {:#04x}", at + i as u64, got[i], want[i]);
        }
    }
}

/// A TCP server on 127.0.0.1:0 running `handle` for each connection in a thread of its own.
fn tcp_server(handle: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = Arc::new(handle);
    thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { return };
            let handle = handle.clone();
            thread::spawn(move || handle(tcp));
        }
    });
    addr
}

/// A TCP echo server: writes back what it reads, until EOF.
fn echo_server() -> SocketAddr {
    tcp_server(|mut tcp| {
        let mut buf = vec![0; 64 * 1024];
        loop {
            match tcp.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tcp.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tcp.shutdown(Shutdown::Write);
    })
}

/// `wsx serve --forward tcp:TARGET` and `wsx connect --listen tcp:127.0.0.1:0` to it: returns
/// both (`.addr` of the second is where test clients connect).
fn chain(target: SocketAddr, serve_args: &[&str], connect_args: &[&str]) -> (Server, Server) {
    let forward = format!("tcp:{target}");
    let mut args = vec!["--forward", &forward];
    args.extend_from_slice(serve_args);
    let serve = Server::start(&args);
    let url = serve.url("/");
    let mut args = vec!["connect", "--listen", "tcp:127.0.0.1:0"];
    args.extend_from_slice(connect_args);
    args.push(&url);
    let listen = common::start_wsx(&args);
    (serve, listen)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    tcp
}

/// Reads exactly `len` bytes of the stream `seed`, checking them; then `Ok(())`.
fn read_checked(tcp: &mut TcpStream, seed: u64, len: usize) {
    let mut stream = Stream::new(seed);
    let mut buf = vec![0; 256 * 1024];
    let mut got = 0;
    while got < len {
        let want = buf.len().min(len - got);
        let n = match tcp.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) => panic!("read failed after {got} of {len} bytes: {e}"),
        };
        assert!(n > 0, "end of stream after {got} of {len} bytes");
        stream.check(&buf[..n]);
        got += n;
    }
}

/// 100 MiB of random bytes go through both bridges to an echo server and come back intact.
#[test]
fn chained_bridges_carry_100_mib_both_ways() {
    const LEN: usize = 100 * MIB;
    // Without compression: random bytes do not compress, and a debug build deflates slowly
    // (the other tests run with it).
    let (serve, listen) = chain(echo_server(), &[], &["--no-deflate"]);
    let mut tcp = connect(listen.addr);
    let mut writer = tcp.try_clone().unwrap();
    let started = Instant::now();
    let sender = thread::spawn(move || {
        let mut stream = Stream::new(7);
        let mut buf = vec![0; 100_000];
        let mut sent = 0;
        while sent < LEN {
            // Pieces of changing sizes, so that message and read boundaries fall anywhere.
            let n = (1 + (sent / 7919) % buf.len()).min(LEN - sent);
            stream.fill(&mut buf[..n]);
            writer.write_all(&buf[..n]).expect("the bridge takes the bytes");
            sent += n;
        }
    });
    read_checked(&mut tcp, 7, LEN);
    sender.join().unwrap();
    eprintln!("100 MiB there and back in {:?}", started.elapsed());
    // Our end of stream: the bridges end, each logging its bytes.
    tcp.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    assert_eq!(tcp.read_to_end(&mut rest).unwrap(), 0, "nothing more after the echo");
    let line = listen.expect_log(&["bridge ended", "to_tcp=104857600", "from_tcp=104857600"]);
    assert!(line.contains("code=1000"), "{line}");
    let line = serve.expect_log(&["forward ended", "to_target=104857600", "from_target=104857600"]);
    assert!(line.contains("code=1000") && line.contains("ended_by=\"websocket\""), "{line}");
}

/// A file served by Python's http.server through both bridges: the body arrives intact, and
/// the server's end of stream ends the client's connection.
#[test]
fn http_get_through_both_bridges() {
    let dir = std::env::temp_dir().join(format!("wsx-bridge-http-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut body = vec![0; 3 * MIB + 12345];
    Rng(99).fill(&mut body);
    std::fs::write(dir.join("blob.bin"), &body).unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let python = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("this test needs python3 (for http.server) on PATH: {e}"));
    let python = Kill(python);
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(target).is_err() {
        assert!(Instant::now() < end, "python3 -m http.server did not listen on {target} within 10 s");
        thread::sleep(Duration::from_millis(50));
    }
    let (_serve, listen) = chain(target, &[], &[]);
    let mut tcp = connect(listen.addr);
    tcp.write_all(b"GET /blob.bin HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).expect("the answer, then the end of stream");
    let head_end = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP head") + 4;
    let head = String::from_utf8_lossy(&answer[..head_end]);
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
    assert!(
        answer[head_end..] == body[..],
        "the body differs ({} bytes, want {})",
        answer.len() - head_end,
        body.len()
    );
    drop(python);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Kills the child when dropped.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The target sends N bytes and closes: the client gets all N, then the end of stream; the
/// WebSocket between was closed with 1000 by the forwarding side.
#[test]
fn target_eof_reaches_the_client_after_all_bytes() {
    const LEN: usize = 5 * MIB + 321;
    let target = tcp_server(|mut tcp| {
        let mut stream = Stream::new(3);
        let mut buf = vec![0; 50_000];
        let mut sent = 0;
        while sent < LEN {
            let n = buf.len().min(LEN - sent);
            stream.fill(&mut buf[..n]);
            if tcp.write_all(&buf[..n]).is_err() {
                return;
            }
            sent += n;
        }
        // Closed at once: everything sent must still arrive before the end.
    });
    let (serve, listen) = chain(target, &[], &[]);
    let mut tcp = connect(listen.addr);
    read_checked(&mut tcp, 3, LEN);
    let mut rest = [0; 16];
    assert_eq!(tcp.read(&mut rest).expect("the end of stream, not a timeout"), 0, "the end of stream after N bytes");
    // Closed after the end of stream (the bridge waits for it, up to 5 s, before it ends).
    drop(tcp);
    let line = serve.expect_log(&["forward ended", &format!("from_target={LEN}")]);
    assert!(line.contains("ended_by=\"tcp\"") && line.contains("code=1000"), "{line}");
    let line = listen.expect_log(&["bridge ended", &format!("to_tcp={LEN}")]);
    assert!(line.contains("ended_by=\"websocket\"") && line.contains("code=1000"), "{line}");
}

/// Writes the stream of one seed to a socket, in pieces of 64 KiB.
struct Writer {
    stream: Stream,
    buf: Vec<u8>,
    /// The part of `buf` not written yet.
    pending: std::ops::Range<usize>,
    /// Bytes written so far.
    sent: usize,
}

impl Writer {
    fn new(seed: u64) -> Self {
        Self { stream: Stream::new(seed), buf: vec![0; 64 * 1024], pending: 0..0, sent: 0 }
    }

    /// Writes until a write makes no progress for `stall` (returns `true`), or until `max`
    /// bytes are written in all (`false`).
    fn until_stalled(&mut self, tcp: &mut TcpStream, stall: Duration, max: usize) -> bool {
        tcp.set_write_timeout(Some(stall)).unwrap();
        while self.sent < max {
            if self.pending.is_empty() {
                self.stream.fill(&mut self.buf);
                self.pending = 0..self.buf.len();
            }
            match tcp.write(&self.buf[self.pending.clone()]) {
                Ok(n) => {
                    self.sent += n;
                    self.pending.start += n;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return true,
                Err(e) => panic!("write failed after {} bytes: {e}", self.sent),
            }
        }
        false
    }

    /// Writes `more` bytes more, each write within 30 s.
    fn write_more(&mut self, tcp: &mut TcpStream, more: usize) {
        let max = self.sent + more;
        assert!(!self.until_stalled(tcp, Duration::from_secs(30), max), "stalled for 30 s after {} bytes", self.sent);
    }
}

/// The largest a TCP socket buffer may grow to by autotuning: the third value of
/// `/proc/sys/net/ipv4/NAME` (`tcp_rmem`, `tcp_wmem`); `default` where there is no such file.
fn tcp_buffer_max(name: &str, default: usize) -> usize {
    let path = format!("/proc/sys/net/ipv4/{name}");
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .split_whitespace()
            .nth(2)
            .and_then(|max| max.parse().ok())
            .unwrap_or_else(|| panic!("{path}: expected three numbers (min, default, max), got {text:?}")),
        Err(_) => default,
    }
}

/// The bound on what the chain may hold for a side that stopped reading: the socket buffers
/// of its three TCP connections (each at most `tcp_rmem`'s and `tcp_wmem`'s max, read from
/// this machine) and, per bridge, the pump's chunk each way and the WebSocket's buffers (its
/// write buffer's high-water mark, 1 MiB, and a message beyond it; the reader's 64 KiB): 4 MiB
/// is generous. Without backpressure the sender would get its whole [`max_sent`] through.
fn held() -> usize {
    let per_connection = tcp_buffer_max("tcp_rmem", 6 * MIB) + tcp_buffer_max("tcp_wmem", 4 * MIB);
    3 * per_connection + 2 * 4 * MIB
}

/// What a sender may write without a stall before the test gives up: well beyond [`held`].
fn max_sent() -> usize {
    (256 * MIB).max(2 * held())
}

/// Asserts that a sender stalled within [`held`], with the bound's sources in the message.
fn assert_held(stalled_at: usize, who: &str) {
    let held = held();
    assert!(
        stalled_at < held,
        "{stalled_at} bytes taken while {who} read nothing: more than the chain can hold ({held}: 3 TCP \
         connections of tcp_rmem max {} + tcp_wmem max {} bytes, and 4 MiB per bridge)",
        tcp_buffer_max("tcp_rmem", 6 * MIB),
        tcp_buffer_max("tcp_wmem", 4 * MIB)
    );
}
/// What is sent after the stall, once the other side reads again.
const AFTER: usize = 8 * MIB;

/// A target that stops reading stalls the client's writes (bounded by [`held`]); when it reads
/// again everything arrives intact, and more after it.
#[test]
fn backpressure_from_a_target_that_stops_reading() {
    let reading = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let (r, n) = (reading.clone(), received.clone());
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let target = tcp_server(move |mut tcp| {
        while !r.load(Ordering::Acquire) {
            thread::sleep(Duration::from_millis(10));
        }
        let mut stream = Stream::new(11);
        let mut buf = vec![0; 64 * 1024];
        loop {
            match tcp.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    stream.check(&buf[..k]);
                    n.fetch_add(k as u64, Ordering::Release);
                }
            }
        }
        let _ = done_tx.send(());
    });
    let (serve, listen) = chain(target, &[], &[]);
    let mut tcp = connect(listen.addr);
    let mut writer = Writer::new(11);
    let max = max_sent();
    assert!(writer.until_stalled(&mut tcp, Duration::from_secs(2), max), "{max} bytes taken without a stall");
    let stalled_at = writer.sent;
    eprintln!("the client's writes stalled after {:.1} MiB", stalled_at as f64 / MIB as f64);
    assert_held(stalled_at, "the target");
    reading.store(true, Ordering::Release);
    writer.write_more(&mut tcp, AFTER);
    tcp.shutdown(Shutdown::Write).unwrap();
    let logs = || format!("{}\n{}", serve.log.lock().unwrap().join("\n"), listen.log.lock().unwrap().join("\n"));
    done_rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the target sees no end of stream\n{}", logs()));
    assert!(writer.sent >= stalled_at + AFTER);
    assert_eq!(received.load(Ordering::Acquire), writer.sent as u64, "{}", logs());
}

/// A client that stops reading stalls the target's writes (bounded by [`held`]); when it reads
/// again everything arrives intact, and more after it, then the end of stream.
#[test]
fn backpressure_from_a_client_that_stops_reading() {
    let (sent_tx, sent_rx) = std::sync::mpsc::channel();
    let target = tcp_server(move |mut tcp| {
        let mut writer = Writer::new(13);
        let stalled = writer.until_stalled(&mut tcp, Duration::from_secs(2), max_sent());
        let _ = sent_tx.send((stalled, writer.sent));
        writer.write_more(&mut tcp, AFTER);
        let _ = sent_tx.send((true, writer.sent));
        // Closed here: the client reads the end of stream after the last byte.
    });
    let (_serve, listen) = chain(target, &[], &[]);
    let mut tcp = connect(listen.addr);
    let (stalled, stalled_at) = sent_rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the target's writes did not stall within 120 s: do the bridges buffer without bound?");
    assert!(stalled, "{} bytes taken without a stall", max_sent());
    eprintln!("the target's writes stalled after {:.1} MiB", stalled_at as f64 / MIB as f64);
    assert_held(stalled_at, "the client");
    let mut stream = Stream::new(13);
    let mut buf = vec![0; 256 * 1024];
    let mut got = 0;
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                stream.check(&buf[..n]);
                got += n;
            }
            Err(e) => panic!("read failed after {got} bytes: {e}"),
        }
    }
    let (_, total) = sent_rx.recv_timeout(Duration::from_secs(10)).expect("the target wrote everything");
    assert!(total >= stalled_at + AFTER);
    assert_eq!(got, total, "every byte the target wrote, then the end of stream");
}

/// An upgrade request, raw: the status line and the body of the answer.
fn upgrade(addr: SocketAddr) -> (u16, String) {
    let mut tcp = connect(addr);
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let request = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    tcp.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf).expect("an answer");
        assert!(n > 0, "closed before the answer: {:?}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
    if status != 101 {
        let _ = tcp.read_to_end(&mut answer);
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// A target that refuses connections: the upgrade is refused with 502 and the cause; the
/// server keeps serving; `wsx connect --listen` closes the TCP connection whose WebSocket
/// could not open.
#[test]
fn target_down_is_a_502_and_the_server_stays_up() {
    // A port nobody listens on.
    let down = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (serve, listen) = chain(down, &[], &[]);
    for _ in 0..2 {
        let (status, body) = upgrade(serve.addr);
        assert_eq!(status, 502, "{body}");
        assert!(body.starts_with("cannot connect to the forward target: "), "{body}");
        assert!(body.contains("refused"), "{body}");
    }
    serve.expect_log(&["cannot connect to the forward target", &down.to_string()]);
    serve.expect_log(&["refused", "status=502"]);
    // Plain HTTP is unchanged: the demo page.
    let mut tcp = connect(serve.addr);
    tcp.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut page = Vec::new();
    tcp.read_to_end(&mut page).unwrap();
    assert!(
        page.starts_with(b"HTTP/1.1 200") || page.starts_with(b"HTTP/1.0 200"),
        "{:?}",
        &page[..page.len().min(200)]
    );
    // Through the listening side: the client's connection is closed at once, and logged.
    let mut tcp = connect(listen.addr);
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = Vec::new();
    assert_eq!(tcp.read_to_end(&mut rest).expect("closed, not a timeout"), 0);
    listen.expect_log(&["cannot open the WebSocket", "502"]);
    // Once the target is up, the same server forwards.
    let _target = TcpListener::bind(down).expect("rebind the target's port");
    assert_eq!(upgrade(serve.addr).0, 101);
}

/// Text messages to `--forward` are passed on as their bytes; the client's close ends the TCP
/// connection (the target reads its end of stream).
#[tokio::test]
async fn text_messages_are_passed_on_as_bytes() {
    let (got_tx, got_rx) = std::sync::mpsc::channel();
    let target = tcp_server(move |mut tcp| {
        let mut all = Vec::new();
        let _ = tcp.write_all(b"hi from tcp");
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let end = tcp.read_to_end(&mut all).map(|_| ());
        let _ = got_tx.send((all, end.map_err(|e| e.to_string())));
    });
    let serve = Server::start(&["--forward", &format!("tcp:{target}")]);
    let (mut ws, _) = wsx::connect(&serve.url("/any/path")).await.expect("the upgrade is accepted");
    let first = tokio::time::timeout(Duration::from_secs(10), ws.recv()).await.expect("a message").unwrap().unwrap();
    assert_eq!(first, Message::binary(&b"hi from tcp"[..]));
    ws.send_text("héllo\n").await.unwrap();
    ws.send_binary(&b"\x00\xff"[..]).await.unwrap();
    let peer = tokio::time::timeout(Duration::from_secs(10), ws.close(CloseCode::NORMAL, "bye")).await;
    assert_eq!(peer.expect("closed in time").unwrap().map(|f| f.code), Some(CloseCode::NORMAL));
    let (all, end) =
        tokio::task::spawn_blocking(move || got_rx.recv_timeout(Duration::from_secs(20))).await.unwrap().unwrap();
    assert_eq!(end, Ok(()), "the target reads the end of stream");
    let mut want = "héllo\n".as_bytes().to_vec();
    want.extend_from_slice(b"\x00\xff");
    assert_eq!(all, want, "the text's UTF-8 bytes, then the binary message's");
    serve.expect_log(&["forward ended", "to_target=9", "from_target=11", "ended_by=\"websocket\""]);
}

/// `--max-bridges 1`: a second TCP connection is closed at once while the first bridge runs;
/// SIGTERM closes the running bridge's WebSocket with 1001 and exits 0.
#[cfg(unix)]
#[test]
fn listen_limits_bridges_and_shuts_down_on_sigterm() {
    let (serve, mut listen) = chain(echo_server(), &[], &["--max-bridges", "1"]);
    let mut first = connect(listen.addr);
    first.write_all(b"ping").unwrap();
    let mut echoed = [0; 4];
    first.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"ping");
    let mut second = connect(listen.addr);
    second.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    // Closed at once (a reset is fine too: it was never read from).
    let closed = second.read_to_end(&mut rest);
    assert!(closed.is_ok() || closed.as_ref().is_err_and(|e| e.kind() == ErrorKind::ConnectionReset), "{closed:?}");
    assert!(rest.is_empty());
    listen.expect_log(&["too many bridges", "max_bridges=1"]);
    // The first bridge still works.
    first.write_all(b"pong").unwrap();
    first.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"pong");
    listen.signal("TERM");
    assert!(listen.wait(Duration::from_secs(5)).success(), "exit status 0 after SIGTERM");
    let line = serve.expect_log(&["forward ended", "to_target=8", "from_target=8"]);
    assert!(line.contains("code=1001") && line.contains("ended_by=\"websocket\""), "{line}");
    assert_eq!(first.read_to_end(&mut rest).expect("the end of stream"), 0, "the TCP client is closed too");
}

/// A peer that talks all the time: writes 100 bytes every millisecond from a thread of its own
/// until a write fails or `stop` is set.
fn chatter(tcp: &TcpStream, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    let mut tcp = tcp.try_clone().unwrap();
    thread::spawn(move || {
        while !stop.load(Ordering::Acquire) {
            if tcp.write_all(&[b'x'; 100]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(1));
        }
    })
}

/// Reads the stream `seed` slowly (a 64 KiB read every 5 ms) until the end of stream or an
/// error: the bytes read, and how it ended.
fn read_slowly(tcp: &mut TcpStream, seed: u64) -> (usize, Result<(), String>) {
    let mut stream = Stream::new(seed);
    let mut buf = vec![0; 64 * 1024];
    let mut got = 0;
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => return (got, Ok(())),
            Ok(n) => {
                stream.check(&buf[..n]);
                got += n;
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return (got, Err(e.to_string())),
        }
    }
}

/// The WebSocket side ends (the client's end of stream) while the target still talks and reads
/// slowly: every byte the client sent reaches the target, then the end of stream, not a reset
/// (the bridge reads the target's last words before it closes the socket).
#[test]
fn forward_delivers_everything_to_a_target_that_keeps_talking() {
    const LEN: usize = 8 * MIB;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let target = tcp_server(move |mut tcp| {
        let stop = Arc::new(AtomicBool::new(false));
        let talker = chatter(&tcp, stop.clone());
        let end = read_slowly(&mut tcp, 17);
        stop.store(true, Ordering::Release);
        let _ = talker.join();
        let _ = done_tx.send(end);
    });
    let (serve, listen) = chain(target, &[], &["--no-deflate"]);
    let mut tcp = connect(listen.addr);
    let mut reader = tcp.try_clone().unwrap();
    // What comes back is read and dropped.
    let sink = thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()).map_err(|e| e.to_string()));
    let mut writer = Writer::new(17);
    writer.write_more(&mut tcp, LEN);
    tcp.shutdown(Shutdown::Write).unwrap();
    let logs = || format!("{}\n{}", serve.log.lock().unwrap().join("\n"), listen.log.lock().unwrap().join("\n"));
    let (got, end) = done_rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("no end\n{}", logs()));
    assert_eq!((got, end), (LEN, Ok(())), "all bytes, then the end of stream\n{}", logs());
    serve.expect_log(&["forward ended", &format!("to_target={LEN}")]);
    assert!(sink.join().unwrap().is_ok(), "the client's connection ends cleanly too");
}

/// The WebSocket side ends (the target's end of stream, through the chain) while the TCP client
/// still talks and reads slowly: every byte the target sent reaches the client, then the end
/// of stream, not a reset.
#[test]
fn listen_delivers_everything_to_a_client_that_keeps_talking() {
    const LEN: usize = 8 * MIB;
    let target = tcp_server(move |mut tcp| {
        let mut reader = tcp.try_clone().unwrap();
        let sink = thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        let mut writer = Writer::new(19);
        writer.write_more(&mut tcp, LEN);
        let _ = tcp.shutdown(Shutdown::Write);
        let _ = sink.join();
    });
    let (serve, listen) = chain(target, &[], &["--no-deflate"]);
    let mut tcp = connect(listen.addr);
    let stop = Arc::new(AtomicBool::new(false));
    let talker = chatter(&tcp, stop.clone());
    let end = read_slowly(&mut tcp, 19);
    stop.store(true, Ordering::Release);
    let _ = talker.join();
    // Closed: the bridge, reading our chatter meanwhile, sees the end of stream and ends.
    drop(tcp);
    let logs = || format!("{}\n{}", serve.log.lock().unwrap().join("\n"), listen.log.lock().unwrap().join("\n"));
    assert_eq!(end, (LEN, Ok(())), "all bytes, then the end of stream\n{}", logs());
    listen.expect_log(&["bridge ended", &format!("to_tcp={LEN}")]);
}

/// A target that never answers (its accept queue is full, so its host drops our SYNs): the
/// upgrade is refused with 502 well within `wsx connect`'s default handshake timeout (10 s), so
/// that a wsx client learns the 502 instead of timing out.
#[cfg(target_os = "linux")]
#[test]
fn unanswering_target_is_a_502_before_the_client_times_out() {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    listener.listen(0).unwrap();
    let target = listener.local_addr().unwrap().as_socket().unwrap();
    // Connections nobody accepts fill the queue (backlog 0: one or two); the rest hang.
    let mut fill = Vec::new();
    for _ in 0..3 {
        let tcp = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let _ = tcp.connect(&target.into());
        fill.push(tcp);
    }
    thread::sleep(Duration::from_millis(500));
    let serve = Server::start(&["--forward", &format!("tcp:{target}")]);
    let started = Instant::now();
    let (status, body) = upgrade(serve.addr);
    let took = started.elapsed();
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("no connection within 5 s"), "{body}");
    assert!(took < Duration::from_secs(8), "the 502 after {took:?}: a wsx client's handshake timeout is 10 s");
    drop(fill);
}

/// The bridged TCP sockets (`--forward`'s to the target, `--listen`'s accepted one) have TCP
/// keepalive on, so that a peer that vanished is noticed while the bridge idles (`ss -o`
/// shows the keepalive timer).
#[cfg(target_os = "linux")]
#[test]
fn bridged_tcp_sockets_have_keepalive() {
    let target = echo_server();
    let (_serve, listen) = chain(target, &[], &[]);
    let mut tcp = connect(listen.addr);
    tcp.write_all(b"ping").unwrap();
    let mut echoed = [0; 4];
    tcp.read_exact(&mut echoed).unwrap();
    let ss = |filter: String| {
        let out = Command::new("ss")
            .args(["-tnoH", "state", "established", &filter])
            .output()
            .unwrap_or_else(|e| panic!("this test needs ss (iproute2) on PATH: {e}"));
        assert!(out.status.success(), "ss {filter}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(!text.trim().is_empty(), "ss finds no socket with {filter}");
        text
    };
    let to_target = ss(format!("dport = :{}", target.port()));
    assert!(to_target.contains("timer:(keepalive"), "--forward's socket to the target: {to_target}");
    let accepted = ss(format!("sport = :{}", listen.addr.port()));
    assert!(accepted.contains("timer:(keepalive"), "--listen's accepted socket: {accepted}");
}

/// With `--write-timeout 0` (no bound for WebSocket clients) a target that stops reading still
/// cannot hold its bridge for ever: after 30 s without progress the bridge ends with 1011.
#[test]
fn target_writes_are_bounded_without_write_timeout() {
    let target = tcp_server(|tcp| {
        // Reads nothing, for longer than the bound.
        thread::sleep(Duration::from_secs(60));
        drop(tcp);
    });
    let (serve, listen) = chain(target, &["--write-timeout", "0"], &["--no-deflate"]);
    let mut tcp = connect(listen.addr);
    let mut writer = Writer::new(23);
    assert!(writer.until_stalled(&mut tcp, Duration::from_secs(2), max_sent()), "no stall");
    let stalled = Instant::now();
    let end = stalled + Duration::from_secs(45);
    let line = loop {
        let found = serve.log.lock().unwrap().iter().find(|l| l.contains("forward ended")).cloned();
        if let Some(line) = found {
            break line;
        }
        assert!(
            Instant::now() < end,
            "the bridge still runs 45 s after the stall:\n{}",
            serve.log.lock().unwrap().join("\n")
        );
        thread::sleep(Duration::from_millis(100));
    };
    assert!(line.contains("code=1011") && line.contains("no progress within 30 s"), "{line}");
    assert!(stalled.elapsed() >= Duration::from_secs(15), "ended {:?} after the stall: {line}", stalled.elapsed());
}

/// A real `redis-server` behind both bridges: pipelined commands, a 1 MiB value set and read
/// back, and the answers in order (RESP as redis-cli speaks it).
#[test]
fn redis_through_both_bridges() {
    let redis = common::Redis::start(false);
    let target: SocketAddr = format!("127.0.0.1:{}", redis.port).parse().unwrap();
    let (serve, listen) = chain(target, &[], &[]);
    let mut tcp = connect(listen.addr);
    let mut value = vec![0u8; MIB];
    Stream::new(11).fill(&mut value);
    let command = |args: &[&[u8]]| {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        out
    };
    let mut request = command(&[b"PING"]);
    request.extend(command(&[b"SET", b"through-bridges", &value]));
    request.extend(command(&[b"GET", b"through-bridges"]));
    request.extend(command(&[b"INCRBY", b"counter", b"41"]));
    request.extend(command(&[b"INCR", b"counter"]));
    tcp.write_all(&request).unwrap();
    let mut expected = b"+PONG\r\n+OK\r\n".to_vec();
    expected.extend_from_slice(format!("${}\r\n", value.len()).as_bytes());
    expected.extend_from_slice(&value);
    expected.extend_from_slice(b"\r\n:41\r\n:42\r\n");
    let mut got = vec![0u8; expected.len()];
    tcp.read_exact(&mut got).expect("every answer through the bridges");
    assert!(
        got == expected,
        "the answers differ from redis-server's (first difference at byte {:?})",
        got.iter().zip(&expected).position(|(a, b)| a != b)
    );
    // QUIT: Redis answers and closes; the end of stream comes back through both bridges.
    tcp.write_all(&command(&[b"QUIT"])).unwrap();
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"+OK\r\n");
    // Closed on our side too, so the listen bridge need not linger for our last bytes.
    drop(tcp);
    serve.expect_log(&["forward ended", "code=1000"]);
    listen.expect_log(&["bridge ended"]);
}
