//! The byte bridge of `wsx serve --forward` and `wsx connect --listen`: one WebSocket and one
//! byte stream (a TCP connection), bytes both ways, binary messages on the WebSocket side.
//!
//! ```text
//!  byte side ─► read ≤ 64 KiB ─► send(Binary) ─► WebSocket      (up: waits for each send)
//!  byte side ◄─ write chunk  ◄─ recv_chunk   ◄─ WebSocket       (down: one chunk at a time)
//! ```
//!
//! - **Backpressure**: each direction holds at most one chunk. Up reads the next chunk only
//!   when the WebSocket has taken the previous one (`send` returns once the bytes are written
//!   to the socket); down asks the WebSocket for the next chunk only when the byte side has
//!   taken the previous one. [`WsReader::recv_chunk`] hands out pieces of messages as they
//!   arrive (at most one read, 64 KiB), so a peer's large message is never assembled. A slow
//!   side therefore fills the socket buffers of the fast side and stops it.
//! - **Text messages** are passed on as their UTF-8 bytes, like binary ones.
//! - **End of the byte stream** (EOF) → after everything read before it was sent, the closing
//!   handshake with 1000; data the WebSocket peer still sends before it answers is still written
//!   to the byte side, whose write side is then shut down.
//! - **The WebSocket peer's close** → the byte side's write side is shut down (FIN) and, as
//!   WebSocket has no half-close (our close answer follows at once), the byte stream is closed
//!   both ways: what it sends later has nowhere to go (websockify does the same).
//! - **No half-close**: WebSocket cannot say "no more data this way, but go on the other way",
//!   so a byte-side EOF ends the whole bridge. A TCP client that sends a request, shuts its
//!   write side down and waits for the answer (`nc -N`, some RPC clients) loses the answer;
//!   such clients must keep their write side open until they have read everything.
//! - **Graceful end**: once the WebSocket is over and the byte side's write side is shut down,
//!   the bridge goes on reading (and dropping) what the byte side still sends, until its end
//!   of stream, an error, or [`LINGER`]; only then is the stream dropped. Dropping a TCP socket
//!   with unread input makes the kernel send RST and discard what is still queued for the
//!   peer: bytes already counted in [`Report::to_bytes`] would never arrive.
//! - **Errors**: a failing byte side closes the WebSocket with 1011 and the error as reason; a
//!   failing WebSocket (an abnormal end, a protocol error, a timeout) closes the byte stream.
//!   A write to the byte side that makes no progress for [`Options::write_timeout`] is a
//!   failure too (always bounded: a byte-side peer that stops reading cannot hold the bridge).
//! - **Vanished TCP peers**: [`tcp_keepalive`] turns TCP keepalive on for the bridged sockets
//!   (first probe after 60 s idle, then every 10 s), so a peer whose host is gone is noticed
//!   even when no data flows.
//! - **Shutdown** (the caller's future): the WebSocket is closed with 1001.
//!
//! Pings, keepalive, the close timeout and the WebSocket's write deadlines stay the library's.
//! Both directions run in the caller's task (no spawn); the [`Report`] says how it ended.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{BufMut as _, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use wsx::{CloseCode, CloseFrame, Message, StreamEvent, WebSocket, WsReader, WsWriter};

/// The most bytes read from the byte side at once: one binary message.
pub const CHUNK: usize = 64 * 1024;

/// How long the end of a bridge reads and drops the byte side's input, waiting for its end of
/// stream, before the stream is dropped (the library's close timeout).
pub const LINGER: Duration = Duration::from_secs(5);

/// TCP keepalive on a bridged socket: the first probe after this much idle time.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// TCP keepalive: the time between probes (the kernel's count of probes applies, 9 on Linux).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Turns TCP keepalive on for a bridged socket ([`KEEPALIVE_IDLE`], [`KEEPALIVE_INTERVAL`]), so
/// that a peer which vanished without a FIN or RST is noticed while the bridge idles; a failure
/// is logged and otherwise ignored.
pub fn tcp_keepalive(tcp: &tokio::net::TcpStream) {
    let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE);
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos", target_os = "windows"))]
    let keepalive = keepalive.with_interval(KEEPALIVE_INTERVAL);
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "macos", target_os = "windows")))]
    let _ = KEEPALIVE_INTERVAL;
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot turn TCP keepalive on");
    }
}

/// Settings of one bridge.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How long a write to the byte side may make no progress before the bridge fails (1011).
    pub write_timeout: Duration,
    /// The reason of our close when the byte side ended (code 1000).
    pub eof_reason: &'static str,
    /// The reason of our close when the caller's shutdown fired (code 1001).
    pub shutdown_reason: &'static str,
}

/// Which side ended the bridge first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The WebSocket peer: its close frame, or its connection failing.
    WebSocket,
    /// The byte side: its end of stream, or an error on it.
    Bytes,
    /// The caller's shutdown.
    Shutdown,
}

impl Side {
    /// A word for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::WebSocket => "websocket",
            Side::Bytes => "tcp",
            Side::Shutdown => "shutdown",
        }
    }
}

/// How a bridge went, for its log line.
#[derive(Debug)]
pub struct Report {
    /// Bytes written to the byte side (received on the WebSocket).
    pub to_bytes: u64,
    /// Bytes read from the byte side (sent on the WebSocket).
    pub to_ws: u64,
    /// How long the bridge ran.
    pub duration: Duration,
    /// The side that ended it first.
    pub ended_by: Option<Side>,
    /// The WebSocket's close code: of the first close frame (ours or the peer's), or of the
    /// failure (1006: no closing handshake).
    pub code: Option<u16>,
    /// The first error, on either side.
    pub error: Option<String>,
}

/// What both directions record; the first of each wins.
#[derive(Default)]
struct End {
    by: Option<Side>,
    code: Option<u16>,
    error: Option<String>,
}

struct Shared {
    end: Mutex<End>,
    to_bytes: AtomicU64,
    to_ws: AtomicU64,
}

impl Shared {
    fn record(&self, by: Side, code: Option<u16>, error: Option<String>) {
        let mut end = self.end.lock().unwrap_or_else(|p| p.into_inner());
        if end.by.is_none() {
            end.by = Some(by);
        }
        if end.code.is_none() {
            end.code = code;
        }
        if end.error.is_none() {
            end.error = error;
        }
    }
}

/// Bridges `ws` and `bytes` until both are done (see the module docs); returns the report.
/// `shutdown` completing closes the WebSocket with 1001. Returns at most [`LINGER`] after the
/// WebSocket is over.
pub async fn run<S, B>(ws: WebSocket<S>, bytes: B, shutdown: impl Future<Output = ()>, options: Options) -> Report
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let shared = Shared { end: Mutex::default(), to_bytes: AtomicU64::new(0), to_ws: AtomicU64::new(0) };
    let (reader, writer) = ws.split();
    let (mut byte_reader, mut byte_writer) = tokio::io::split(bytes);
    let linger = {
        let mut up = pin!(up(&mut byte_reader, writer.clone(), &shared, options));
        let mut down = pin!(down(reader, &mut byte_writer, writer.clone(), &shared, options));
        let mut shutdown = pin!(shutdown);
        let mut up_done = false;
        let mut shut = false;
        // Down runs until the WebSocket is over (its reader returns `None`, after the closing
        // handshake or a failure, within the library's close timeout); up stops at the byte
        // side's end, or when the WebSocket no longer takes data, or at shutdown; it is dropped
        // when down is done (its read of the byte side is cancel-safe).
        loop {
            tokio::select! {
                finished = &mut down => break finished,
                () = &mut up, if !up_done && !shut => up_done = true,
                () = &mut shutdown, if !shut => {
                    shut = true;
                    if writer.clone().close(CloseCode::GOING_AWAY, options.shutdown_reason).await.is_ok() {
                        shared.record(Side::Shutdown, Some(CloseCode::GOING_AWAY.0), None);
                    }
                }
            }
        }
    };
    // Up is dropped: its reader is ours again.
    if linger {
        drain(&mut byte_reader).await;
    }
    drop((byte_reader, byte_writer));
    let end = shared.end.into_inner().unwrap_or_else(|p| p.into_inner());
    Report {
        to_bytes: shared.to_bytes.into_inner(),
        to_ws: shared.to_ws.into_inner(),
        duration: started.elapsed(),
        ended_by: end.by,
        code: end.code,
        error: end.error,
    }
}

/// Byte side → WebSocket: one chunk read, one binary message sent, then the next read.
async fn up<R, S>(bytes: &mut R, mut ws: WsWriter<S>, shared: &Shared, options: Options)
where
    R: AsyncRead + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::new();
    loop {
        buf.reserve(CHUNK);
        // Cancel-safe: dropped at the end of the bridge while waiting here, nothing is lost that
        // could still go anywhere.
        match bytes.read_buf(&mut (&mut buf).limit(CHUNK)).await {
            Ok(0) => {
                // Everything read before the end was sent (each send waits for its write).
                if ws.close(CloseCode::NORMAL, options.eof_reason).await.is_ok() {
                    shared.record(Side::Bytes, Some(CloseCode::NORMAL.0), None);
                }
                return;
            }
            Ok(n) => {
                let chunk = buf.split().freeze();
                // Waits while the WebSocket's output is at its high-water mark, then until the
                // bytes are written: nothing more is read meanwhile.
                if ws.send(Message::Binary(chunk)).await.is_err() {
                    // The WebSocket is closing or failed: down sees why and ends the bridge.
                    return;
                }
                shared.to_ws.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                let error = format!("tcp read failed: {e}");
                if ws.close(CloseCode::INTERNAL_ERROR, CloseFrame::fit_reason(&error)).await.is_ok() {
                    shared.record(Side::Bytes, Some(CloseCode::INTERNAL_ERROR.0), Some(error));
                } else {
                    shared.record(Side::Bytes, None, Some(error));
                }
                return;
            }
        }
    }
}

/// WebSocket → byte side: one chunk received, written, then the next; runs until the WebSocket
/// is over, then shuts the byte side's write side down. `true` when every chunk was written and
/// the write side shut down (the end may linger), `false` after a failed write.
async fn down<S, W>(
    mut ws: WsReader<S>,
    bytes: &mut W,
    mut writer: WsWriter<S>,
    shared: &Shared,
    options: Options,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
    W: AsyncWrite + Unpin,
{
    // Whether the byte side still takes writes, and whether one failed.
    let mut writing = true;
    let mut failed = false;
    while let Some(event) = ws.recv_chunk().await {
        match event {
            Ok(StreamEvent::Chunk(chunk)) => {
                if !writing || chunk.data.is_empty() {
                    continue;
                }
                match write_all(bytes, &chunk.data, options.write_timeout).await {
                    Ok(()) => {
                        shared.to_bytes.fetch_add(chunk.data.len() as u64, Ordering::Relaxed);
                    }
                    Err(error) => {
                        writing = false;
                        failed = true;
                        let error = format!("tcp write failed: {error}");
                        // Goes on receiving (and dropping) until the peer answers.
                        if writer.close(CloseCode::INTERNAL_ERROR, CloseFrame::fit_reason(&error)).await.is_ok() {
                            shared.record(Side::Bytes, Some(CloseCode::INTERNAL_ERROR.0), Some(error));
                        } else {
                            shared.record(Side::Bytes, None, Some(error));
                        }
                    }
                }
            }
            Ok(StreamEvent::Control(Message::Close(frame))) => {
                let code = frame.map_or(CloseCode::NO_STATUS.0, |f| f.code.0);
                shared.record(Side::WebSocket, Some(code), None);
                if writing {
                    writing = false;
                    shut_down(bytes, options.write_timeout).await;
                }
            }
            Ok(StreamEvent::Control(_)) => {}
            Err(e) => shared.record(Side::WebSocket, e.close_code().map(|c| c.0), Some(e.to_string())),
        }
    }
    if writing {
        shut_down(bytes, options.write_timeout).await;
    }
    !failed
}

/// Reads and drops the byte side's input until its end of stream or an error, at most
/// [`LINGER`] (see "Graceful end" in the module docs).
async fn drain<R: AsyncRead + Unpin>(bytes: &mut R) {
    let mut buf = vec![0; CHUNK];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = bytes.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Writes all of `data`; each write must make progress within `timeout` (else a `TimedOut`
/// error). `wsx serve --exec` writes to its programs' stdin with it too.
pub(crate) async fn write_all<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut data: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    while !data.is_empty() {
        let n = with_timeout(timeout, w.write(data)).await??;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
    }
    with_timeout(timeout, w.flush()).await?
}

/// Shuts the write side down (FIN for TCP), within `timeout`; errors do not matter any more.
async fn shut_down<W: AsyncWrite + Unpin>(w: &mut W, timeout: Duration) {
    let _ = with_timeout(timeout, w.shutdown()).await;
}

async fn with_timeout<T>(timeout: Duration, f: impl Future<Output = T>) -> std::io::Result<T> {
    tokio::time::timeout(timeout, f).await.map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no progress within {} s", timeout.as_secs_f64()))
    })
}
