//! A peer that stops reading must never pin or grow a connection. Every test here runs over an
//! in-memory `tokio::io::duplex` pipe with a small buffer, so that writes really block: the
//! split halves' wakeups, read backpressure against a ping flood, the write deadline, the
//! deadline of the close echo, and what the API reports once the transport is gone.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use wsx::proto::{Config, TimeoutError};
use wsx::{ClientBuilder, CloseCode, Error, ErrorKind, Message, ServerConfig, State, WebSocket, WebSocketConfig};

fn server_config(f: impl FnOnce(&mut Config)) -> ServerConfig {
    let mut config = ServerConfig::default();
    f(&mut config.websocket.proto);
    config
}

/// A wsx server over one end of a duplex pipe of `capacity` bytes; the other end, after the
/// handshake, is returned raw (the test speaks frames on it by hand).
async fn server_and_raw_peer(capacity: usize, config: ServerConfig) -> (WebSocket<DuplexStream>, DuplexStream) {
    let (ours, mut peer) = tokio::io::duplex(capacity);
    let server = tokio::spawn(async move {
        wsx::accept_with(ours, &config, |_, _| Ok(wsx::Accept::default())).await.expect("server handshake")
    });
    peer.write_all(upgrade_request().as_bytes()).await.expect("write request");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        peer.read_exact(&mut byte).await.expect("read response");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "), "{}", String::from_utf8_lossy(&head));
    (deadline(server).await.expect("server task"), peer)
}

/// Reads one frame off the raw end of a pipe.
async fn read_raw_frame(peer: &mut DuplexStream) -> RawFrame {
    let mut buf = BytesMut::new();
    loop {
        if let Some(f) = parse_frame(&mut buf) {
            return f;
        }
        assert!(peer.read_buf(&mut buf).await.expect("read") > 0, "end of stream before a frame");
    }
}

/// A wsx server and a wsx client over a duplex pipe of `capacity` bytes.
async fn server_and_client(
    capacity: usize,
    config: ServerConfig,
) -> (WebSocket<DuplexStream>, WebSocket<DuplexStream>) {
    let (a, b) = tokio::io::duplex(capacity);
    let server = tokio::spawn(async move {
        wsx::accept_with(a, &config, |_, _| Ok(wsx::Accept::default())).await.expect("server handshake")
    });
    let (client, _) = ClientBuilder::new("ws://127.0.0.1/").connect_on(b).await.expect("client handshake");
    (deadline(server).await.expect("server task"), client)
}

/// Defect 1: a split writer sending megabytes through a 4 KiB pipe to a slow peer that pings
/// every 2 ms, while the reader answers the pings. The reader's pong flushes used to steal the
/// writer's write wakeup, and `send` never returned.
#[tokio::test]
async fn split_writer_finishes_while_the_reader_answers_pings() {
    const MESSAGES: usize = 128;
    const SIZE: usize = 16 * 1024;
    let (server, mut client) = server_and_client(4096, ServerConfig::default()).await;
    let (mut reader, mut writer) = server.split();
    let pings = Arc::new(AtomicUsize::new(0));
    let seen = pings.clone();
    let reader_task = tokio::spawn(async move {
        while let Some(msg) = reader.recv().await {
            if let Ok(Message::Ping(_)) = msg {
                seen.fetch_add(1, Ordering::Relaxed);
            }
        }
        reader
    });
    let writer_task = tokio::spawn(async move {
        for i in 0..MESSAGES {
            writer.send(Message::Binary(Bytes::from(vec![i as u8; SIZE]))).await.expect("send");
        }
        writer.close(CloseCode::NORMAL, "done").await.expect("close");
        writer
    });
    let peer = async {
        let mut ping = tokio::time::interval(Duration::from_millis(2));
        let mut received = 0;
        loop {
            tokio::select! {
                msg = client.recv() => match msg {
                    Some(Ok(Message::Binary(b))) => {
                        assert_eq!(b.len(), SIZE);
                        assert_eq!(b[0], received as u8, "messages in order");
                        received += 1;
                        // A slow reader.
                        tokio::time::sleep(Duration::from_micros(300)).await;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => panic!("client: {e}"),
                    None => break,
                },
                _ = ping.tick() => {
                    if client.state() == State::Open {
                        client.send(Message::Ping(Bytes::from_static(b"p"))).await.expect("ping");
                    }
                }
            }
        }
        received
    };
    let received = within(Duration::from_secs(20), "the slow peer", peer).await;
    assert_eq!(received, MESSAGES);
    let writer = within(Duration::from_secs(5), "the writer", writer_task).await.expect("writer task");
    let reader = within(Duration::from_secs(5), "the reader", reader_task).await.expect("reader task");
    assert!(pings.load(Ordering::Relaxed) > 0, "the reader answered no ping: the test did not test");
    let ws = reader.reunite(writer).expect("reunite");
    assert_eq!(ws.state(), State::Closed);
}

/// Defect 1, second shape: the peer sends its close while the split writer is blocked on a full
/// pipe and never reads again. The reader must hand out the close and end, and the writer's
/// `send` must return, both within the close timeout (the reader's close-echo flush used to
/// steal the writer's wakeup, or wait forever).
#[tokio::test]
async fn peer_close_while_the_split_writer_is_blocked() {
    let config = server_config(|c| {
        c.close_timeout = Duration::from_millis(300);
        c.write_timeout = None;
    });
    let (server, mut peer) = server_and_raw_peer(4096, config).await;
    let (mut reader, mut writer) = server.split();
    let writer_task = tokio::spawn(async move {
        loop {
            if let Err(e) = writer.send(Message::Binary(Bytes::from(vec![7u8; 16 * 1024]))).await {
                return e;
            }
        }
    });
    // Let the writer fill the pipe and block.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!writer_task.is_finished());
    peer.write_all(&masked_frame(OP_CLOSE, true, &close_payload(1000, "bye"), [1, 2, 3, 4])).await.unwrap();
    let started = Instant::now();
    let first = within(Duration::from_secs(5), "the peer's close", reader.recv()).await;
    assert!(matches!(first, Some(Ok(Message::Close(Some(ref f)))) if f.code == CloseCode::NORMAL), "{first:?}");
    assert!(within(Duration::from_secs(5), "the end", reader.recv()).await.is_none());
    let err = within(Duration::from_secs(5), "the blocked writer", writer_task).await.expect("writer task");
    assert!(matches!(err, Error::Closed), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert_eq!(reader.state(), State::Closed);
}

/// Defect 2: a peer floods pings and never reads. Once the server's output is at the
/// high-water mark, only the newest ping keeps its pong, held until the output drains: the
/// server reads the whole flood and its pending output stays at the mark plus one pong.
#[tokio::test]
async fn ping_flood_from_a_peer_that_never_reads_stays_bounded() {
    const HIGH_WATER: usize = 64 * 1024;
    let config = server_config(|c| {
        c.write_buffer_high_water = HIGH_WATER;
        c.write_timeout = None;
    });
    let (mut server, mut peer) = server_and_raw_peer(16 * 1024, config).await;
    let max_pending = Arc::new(AtomicUsize::new(0));
    let max = max_pending.clone();
    let server_task = tokio::spawn(async move {
        while let Some(msg) = server.recv().await {
            max.fetch_max(server.buffered_amount(), Ordering::Relaxed);
            if msg.is_err() {
                break;
            }
        }
    });
    let ping = masked_frame(OP_PING, true, &[0x55; 125], [9, 9, 9, 9]);
    let batch: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 500).collect();
    let mut written = 0usize;
    let flood = async {
        // 8 MiB of pings, or until the server stops taking them for a while.
        while written < 8 << 20 {
            match tokio::time::timeout(Duration::from_millis(500), peer.write_all(&batch)).await {
                Ok(Ok(())) => written += batch.len(),
                Ok(Err(e)) => panic!("peer write: {e}"),
                Err(_) => break,
            }
        }
    };
    within(Duration::from_secs(20), "the flood", flood).await;
    let max = max_pending.load(Ordering::Relaxed);
    // Past the mark, the pings of a read share one pong: without merging, a 16 KiB read of pings
    // would add 16 KiB of pongs over the mark.
    assert!(max <= HIGH_WATER + 1024, "pending output grew to {max} bytes (mark {HIGH_WATER})");
    assert!(written >= 8 << 20, "the server stopped reading after {written} bytes of pings");
    assert!(max >= HIGH_WATER, "the output never reached the mark ({max} bytes)");
    server_task.abort();
}

/// Defect 3: a `send` blocked on a peer that never reads has a deadline. The connection is then
/// closed, and the error says a timeout (blame: timeout; close code 1006: no frame went out).
#[tokio::test]
async fn a_send_to_a_peer_that_never_reads_times_out() {
    let config = server_config(|c| c.write_timeout = Some(Duration::from_millis(300)));
    let (mut server, _peer) = server_and_raw_peer(4096, config).await;
    let started = Instant::now();
    let err = within(Duration::from_secs(10), "the blocked send", async {
        loop {
            if let Err(e) = server.send(Message::Binary(Bytes::from(vec![1u8; 16 * 1024]))).await {
                return e;
            }
        }
    })
    .await;
    assert!(matches!(err, Error::Proto(wsx::proto::Error::Timeout(TimeoutError::Write))), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(err.close_code(), Some(CloseCode::ABNORMAL));
    assert!(started.elapsed() >= Duration::from_millis(280), "gave up after {:?}", started.elapsed());
    assert_eq!(server.state(), State::Closed);
    let again = server.send_text("more").await.expect_err("closed");
    assert!(matches!(again, Error::Closed), "{again:?}");
    // `recv` reports why the connection ended, once, then ends.
    let ev = within(Duration::from_secs(5), "recv after the failure", server.recv()).await;
    assert!(matches!(ev, Some(Err(Error::Proto(wsx::proto::Error::Timeout(TimeoutError::Write))))), "{ev:?}");
    assert!(within(Duration::from_secs(5), "recv at the end", server.recv()).await.is_none());
}

/// Defect 3: after the peer's close, the echo flush has a deadline (the close timeout) even with
/// no write timeout, when the peer never reads again and our output is full.
#[tokio::test]
async fn the_close_echo_to_a_peer_that_never_reads_has_a_deadline() {
    let config = server_config(|c| {
        c.close_timeout = Duration::from_millis(300);
        c.write_timeout = None;
    });
    let (mut server, mut peer) = server_and_raw_peer(4096, config).await;
    // Queue more than the pipe holds, without waiting for it to be written.
    for _ in 0..4 {
        server.feed(Message::Binary(Bytes::from(vec![3u8; 64 * 1024]))).await.expect("feed");
    }
    peer.write_all(&masked_frame(OP_CLOSE, true, &close_payload(1001, ""), [1, 2, 3, 4])).await.unwrap();
    let started = Instant::now();
    let first = within(Duration::from_secs(5), "the peer's close", server.recv()).await;
    assert!(matches!(first, Some(Ok(Message::Close(_)))), "{first:?}");
    assert!(within(Duration::from_secs(5), "the end", server.recv()).await.is_none());
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert_eq!(server.state(), State::Closed);
}

/// Defect 8: after the transport ends, `state()` is Closed, `send` is `Error::Closed` (a usage
/// error), and `close` reports how the connection ended instead of `Ok(None)`.
#[tokio::test]
async fn the_api_after_the_transport_is_gone() {
    let (mut server, peer) = server_and_raw_peer(4096, ServerConfig::default()).await;
    drop(peer);
    let ev = within(Duration::from_secs(5), "end of stream", server.recv()).await;
    assert!(matches!(ev, Some(Err(Error::AbnormalClosure))), "{ev:?}");
    assert_eq!(server.state(), State::Closed);
    let err = server.send_text("late").await.expect_err("closed");
    assert!(matches!(err, Error::Closed), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Usage);

    // The peer vanishes after our close: `close` says so.
    let (mut server, peer) = server_and_raw_peer(4096, ServerConfig::default()).await;
    let closing = tokio::spawn(async move { server.close(CloseCode::NORMAL, "bye").await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(peer);
    let result = within(Duration::from_secs(5), "close", closing).await.expect("task");
    assert!(matches!(result, Err(Error::AbnormalClosure)), "{result:?}");
}

/// Usage errors are the caller's, never the peer's.
#[tokio::test]
async fn usage_errors_are_blamed_on_the_caller() {
    let (mut server, _peer) = server_and_raw_peer(4096, ServerConfig::default()).await;
    let err = server.close(CloseCode(1005), "").await.expect_err("1005 may not be sent");
    assert_eq!(err.kind(), ErrorKind::Usage);
    let err = server.send(Message::Ping(Bytes::from(vec![0u8; 126]))).await.expect_err("too long");
    assert_eq!(err.kind(), ErrorKind::Usage);
}

/// The halves report the negotiated extensions; `reunite` refuses a writer of another
/// connection, and a cloned writer sends on the same connection.
#[tokio::test]
async fn halves_extensions_clone_and_reunite() {
    let mut config = ServerConfig::default();
    config.websocket = WebSocketConfig::default();
    let (a, _pa) = server_and_raw_peer(4096, config.clone()).await;
    let (b, mut pb) = server_and_raw_peer(4096, config).await;
    let (ra, wa) = a.split();
    let (rb, wb) = b.split();
    assert_eq!(ra.extensions(), None);
    let wb2 = wb.clone();
    let Err(wsx::ReuniteError(ra, wb)) = ra.reunite(wb) else { panic!("reunited halves of two connections") };
    let Err(wsx::ReuniteError(rb, wb2)) = rb.reunite(wb2) else { panic!("reunited with a clone alive") };
    let mut wb2 = wb2;
    wb2.send(Message::Text("from a clone".into())).await.expect("send");
    let frame = within(Duration::from_secs(5), "the frame", read_raw_frame(&mut pb)).await;
    assert_eq!(&frame.payload[..], b"from a clone");
    drop(wb2);
    rb.reunite(wb).expect("the last writer reunites");
    ra.reunite(wa).expect("own halves reunite");
}

/// A stream that counts the bytes read through it.
struct CountingReads {
    inner: DuplexStream,
    read: Arc<AtomicUsize>,
}

impl tokio::io::AsyncRead for CountingReads {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read.fetch_add(buf.filled().len() - before, Ordering::Relaxed);
        poll
    }
}

impl tokio::io::AsyncWrite for CountingReads {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One poll of a split reader's `recv` reads at most about 1 MiB, even with a whole 8 MiB frame
/// waiting: a large message is read (and inflated) over several polls, so the reader does not
/// hold the connection's lock (which the writer needs) for the whole message.
#[tokio::test]
async fn one_poll_of_recv_reads_a_bounded_amount() {
    use std::future::Future;
    const SIZE: usize = 8 << 20;
    let (ours, mut peer) = tokio::io::duplex(SIZE + 64);
    let read = Arc::new(AtomicUsize::new(0));
    let stream = CountingReads { inner: ours, read: read.clone() };
    let conn = wsx::proto::Connection::server(Config::default(), Instant::now());
    let (mut reader, _writer) = WebSocket::from_parts(stream, conn, BytesMut::new(), None, None).split();
    peer.write_all(&masked_frame(OP_BINARY, true, &vec![0u8; SIZE], [1, 2, 3, 4])).await.unwrap();
    let mut polls = 0;
    let message = {
        let mut recv = std::pin::pin!(reader.recv());
        loop {
            let before = read.load(Ordering::Relaxed);
            let waker = std::task::Waker::noop();
            let poll = recv.as_mut().poll(&mut std::task::Context::from_waker(waker));
            let in_this_poll = read.load(Ordering::Relaxed) - before;
            // The budget, and the read that crosses it (at most 256 KiB).
            assert!(in_this_poll <= (1 << 20) + (256 << 10), "one poll read {in_this_poll} bytes");
            polls += 1;
            if let std::task::Poll::Ready(m) = poll {
                break m;
            }
            assert!(polls < 100, "no progress");
        }
    };
    assert!(matches!(message, Some(Ok(Message::Binary(ref b))) if b.len() == SIZE));
    assert!(polls >= 8, "{polls} polls for 8 MiB");
}

/// A split writer over a stream that buffers writes itself (as TLS streams do): `poll_write`
/// takes everything and only `poll_flush` waits. The writer must still be woken when the peer
/// starts reading (it used to wait in no waiting set, forever).
#[tokio::test]
async fn split_writer_over_a_buffering_stream_is_woken() {
    let (ours, mut peer) = tokio::io::duplex(4096);
    let buffered = tokio::io::BufWriter::with_capacity(8192, ours);
    let conn = wsx::proto::Connection::server(Config::default(), Instant::now());
    let ws = WebSocket::from_parts(buffered, conn, BytesMut::new(), None, None);
    let (mut reader, mut writer) = ws.split();
    let reader_task = tokio::spawn(async move { while reader.recv().await.is_some() {} });
    let writer_task = tokio::spawn(async move {
        for _ in 0..64 {
            writer.send(Message::Binary(Bytes::from(vec![5u8; 16 * 1024]))).await.expect("send");
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut total = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    within(Duration::from_secs(10), "the writer's 64 messages", async {
        while total < 64 * (16 * 1024 + 4) {
            let n = peer.read(&mut buf).await.expect("read");
            assert!(n > 0);
            total += n;
        }
    })
    .await;
    within(Duration::from_secs(5), "the writer", writer_task).await.expect("writer");
    reader_task.abort();
}

/// What a split writer feeds (no flush) still leaves: the reader, woken, writes it.
#[tokio::test]
async fn what_a_split_writer_feeds_leaves_without_a_flush() {
    let (server, mut peer) = server_and_raw_peer(64 * 1024, ServerConfig::default()).await;
    let (mut reader, mut writer) = server.split();
    let reader_task = tokio::spawn(async move { while reader.recv().await.is_some() {} });
    tokio::time::sleep(Duration::from_millis(50)).await; // the reader waits for input
    writer.feed(Message::Text("fed".into())).await.expect("feed");
    let frame = within(Duration::from_secs(5), "the fed message", read_raw_frame(&mut peer)).await;
    assert_eq!(&frame.payload[..], b"fed");
    reader_task.abort();
}

/// A high-water mark of 0 (refused by `Config::validate`, but reachable through `from_parts`)
/// must not stop reading forever: empty output is never full.
#[tokio::test]
async fn a_zero_high_water_mark_does_not_stop_reading() {
    let (ours, mut peer) = tokio::io::duplex(4096);
    let mut config = Config::default();
    config.write_buffer_high_water = 0;
    let conn = wsx::proto::Connection::server(config, Instant::now());
    let mut ws = WebSocket::from_parts(ours, conn, BytesMut::new(), None, None);
    peer.write_all(&masked_frame(OP_TEXT, true, b"hi", [1, 2, 3, 4])).await.unwrap();
    let msg = within(Duration::from_secs(5), "the message", ws.recv()).await;
    assert!(matches!(msg, Some(Ok(Message::Text(ref t))) if t.as_str() == "hi"), "{msg:?}");
}

/// A peer that reads a trickle: 512 bytes every 20 ms, enough that the write timeout never
/// fires. Returns the task (it ends with the stream).
fn trickle_reader(mut peer: DuplexStream) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut taken = 0;
        let mut buf = [0u8; 512];
        loop {
            match peer.read(&mut buf).await {
                Ok(0) | Err(_) => return taken,
                Ok(n) => taken += n,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// Feeds 16 KiB messages (a batching sender, as a room's fan-out is: `feed` waits only while the
/// output is at the mark, so it stays there) until one fails or `until` passes;
/// returns the error (if any) and the most output that was ever pending after a feed.
async fn send_until(server: &mut WebSocket<DuplexStream>, until: Duration) -> (Option<Error>, usize) {
    let started = Instant::now();
    let mut max_pending = 0;
    while started.elapsed() < until {
        if let Err(e) = server.feed(Message::Binary(Bytes::from(vec![3u8; 16 * 1024]))).await {
            return (Some(e), max_pending);
        }
        max_pending = max_pending.max(server.buffered_amount());
    }
    (None, max_pending)
}

/// The slow-reader bound: a peer that reads just enough to keep the write timeout from firing
/// (25 KB/s) takes less than the 64 KiB mark within the 1 s slow-reader timeout: it is given up,
/// and meanwhile the output stays bounded by the mark plus one message.
#[tokio::test]
async fn a_trickle_reader_is_cut_off_by_the_slow_reader_timeout() {
    const HIGH_WATER: usize = 64 * 1024;
    let config = server_config(|c| {
        c.write_buffer_high_water = HIGH_WATER;
        c.write_timeout = Some(Duration::from_millis(500));
        c.slow_reader_timeout = Some(Duration::from_secs(1));
    });
    let (mut server, peer) = server_and_raw_peer(4096, config).await;
    let reader = trickle_reader(peer);
    let started = Instant::now();
    let (err, max_pending) = within(Duration::from_secs(10), "the slow reader's cut-off", async {
        send_until(&mut server, Duration::from_secs(10)).await
    })
    .await;
    let took = started.elapsed();
    let err = err.expect("the trickle reader was never cut off");
    assert!(matches!(err, Error::Proto(wsx::proto::Error::Timeout(TimeoutError::SlowReader))), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(err.close_code(), Some(CloseCode::ABNORMAL));
    // The window starts once the output reaches the mark, a little after the first feed.
    assert!(took >= Duration::from_millis(950), "cut off after {took:?}, before the timeout");
    assert!(took < Duration::from_secs(4), "cut off after {took:?}");
    assert!(max_pending <= HIGH_WATER + 16 * 1024 + 16, "pending output grew to {max_pending} bytes");
    assert_eq!(server.state(), State::Closed);
    // `recv` reports why, once; the transport is dropped, so the peer's reads end.
    let ev = within(Duration::from_secs(5), "recv after the cut-off", server.recv()).await;
    assert!(matches!(ev, Some(Err(Error::Proto(wsx::proto::Error::Timeout(TimeoutError::SlowReader))))), "{ev:?}");
    drop(server);
    let taken = within(Duration::from_secs(5), "the reader's end", reader).await.expect("reader task");
    assert!(taken > 0, "the peer read something");
}

/// Without the bound, the same trickle holds the sender: the write timeout alone never fires
/// (which is why the slow-reader timeout exists).
#[tokio::test]
async fn without_the_bound_a_trickle_reader_is_never_cut_off() {
    let config = server_config(|c| {
        c.write_buffer_high_water = 64 * 1024;
        c.write_timeout = Some(Duration::from_millis(500));
        c.slow_reader_timeout = None;
    });
    let (mut server, peer) = server_and_raw_peer(4096, config).await;
    let _reader = trickle_reader(peer);
    let (err, _) = send_until(&mut server, Duration::from_secs(2)).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(server.state(), State::Open);
}

/// A peer that keeps up is never cut off, though a sender that never pauses keeps the output at
/// the mark: it takes a mark's worth well within each window.
#[tokio::test]
async fn a_reader_that_keeps_up_is_never_cut_off() {
    let config = server_config(|c| {
        c.write_buffer_high_water = 32 * 1024;
        // Long enough that a loaded machine's pauses do not matter, short against the run.
        c.slow_reader_timeout = Some(Duration::from_millis(500));
    });
    let (mut server, mut peer) = server_and_raw_peer(4096, config).await;
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut taken = 0usize;
        while let Ok(n @ 1..) = peer.read(&mut buf).await {
            taken += n;
        }
        taken
    });
    let (err, max_pending) = send_until(&mut server, Duration::from_secs(2)).await;
    assert!(err.is_none(), "{err:?}");
    assert!(max_pending >= 32 * 1024, "the output never reached the mark ({max_pending} bytes)");
    drop(server);
    let taken = within(Duration::from_secs(5), "the reader's end", reader).await.expect("reader task");
    assert!(taken > 1 << 20, "only {taken} bytes went through");
}
