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
//! - **Errors**: a failing byte side closes the WebSocket with 1011 and the error as reason; a
//!   failing WebSocket (an abnormal end, a protocol error, a timeout) closes the byte stream.
//!   A write to the byte side that makes no progress for [`Options::write_timeout`] is a
//!   failure too.
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
use wsx::{CloseCode, Message, StreamEvent, WebSocket, WsReader, WsWriter};

/// The most bytes read from the byte side at once: one binary message.
pub const CHUNK: usize = 64 * 1024;

/// Settings of one bridge.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How long a write to the byte side may make no progress before the bridge fails (1011);
    /// `None`: no bound.
    pub write_timeout: Option<Duration>,
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
/// `shutdown` completing closes the WebSocket with 1001.
pub async fn run<S, B>(ws: WebSocket<S>, bytes: B, shutdown: impl Future<Output = ()>, options: Options) -> Report
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let shared = Shared { end: Mutex::default(), to_bytes: AtomicU64::new(0), to_ws: AtomicU64::new(0) };
    let (reader, writer) = ws.split();
    let (byte_reader, byte_writer) = tokio::io::split(bytes);
    {
        let mut up = pin!(up(byte_reader, writer.clone(), &shared, options));
        let mut down = pin!(down(reader, byte_writer, writer.clone(), &shared, options));
        let mut shutdown = pin!(shutdown);
        let mut up_done = false;
        let mut shut = false;
        // Down runs until the WebSocket is over (its reader returns `None`, after the closing
        // handshake or a failure, within the library's close timeout); up stops at the byte
        // side's end, or when the WebSocket no longer takes data, or at shutdown; it is dropped
        // when down is done (its read of the byte side is cancel-safe).
        loop {
            tokio::select! {
                () = &mut down => break,
                () = &mut up, if !up_done && !shut => up_done = true,
                () = &mut shutdown, if !shut => {
                    shut = true;
                    if writer.clone().close(CloseCode::GOING_AWAY, options.shutdown_reason).await.is_ok() {
                        shared.record(Side::Shutdown, Some(CloseCode::GOING_AWAY.0), None);
                    }
                }
            }
        }
    }
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
async fn up<R, S>(mut bytes: R, mut ws: WsWriter<S>, shared: &Shared, options: Options)
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
                if ws.close(CloseCode::INTERNAL_ERROR, close_reason(&error)).await.is_ok() {
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
/// is over, then shuts the byte side's write side down.
async fn down<S, W>(mut ws: WsReader<S>, mut bytes: W, mut writer: WsWriter<S>, shared: &Shared, options: Options)
where
    S: AsyncRead + AsyncWrite + Unpin,
    W: AsyncWrite + Unpin,
{
    // Whether the byte side still takes writes.
    let mut writing = true;
    while let Some(event) = ws.recv_chunk().await {
        match event {
            Ok(StreamEvent::Chunk(chunk)) => {
                if !writing || chunk.data.is_empty() {
                    continue;
                }
                match write_all(&mut bytes, &chunk.data, options.write_timeout).await {
                    Ok(()) => {
                        shared.to_bytes.fetch_add(chunk.data.len() as u64, Ordering::Relaxed);
                    }
                    Err(error) => {
                        writing = false;
                        let error = format!("tcp write failed: {error}");
                        // Goes on receiving (and dropping) until the peer answers.
                        if writer.close(CloseCode::INTERNAL_ERROR, close_reason(&error)).await.is_ok() {
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
                    shut_down(&mut bytes, options.write_timeout).await;
                }
            }
            Ok(StreamEvent::Control(_)) => {}
            Err(e) => shared.record(Side::WebSocket, e.close_code().map(|c| c.0), Some(e.to_string())),
        }
    }
    if writing {
        shut_down(&mut bytes, options.write_timeout).await;
    }
}

/// Writes all of `data`; each write must make progress within `timeout`.
async fn write_all<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut data: &[u8],
    timeout: Option<Duration>,
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
async fn shut_down<W: AsyncWrite + Unpin>(w: &mut W, timeout: Option<Duration>) {
    let _ = with_timeout(timeout, w.shutdown()).await;
}

async fn with_timeout<T>(timeout: Option<Duration>, f: impl Future<Output = T>) -> std::io::Result<T> {
    match timeout {
        None => Ok(f.await),
        Some(t) => tokio::time::timeout(t, f).await.map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no progress within {} s", t.as_secs_f64()))
        }),
    }
}

/// `text` cut to a close reason's 123 bytes, at a character boundary.
fn close_reason(text: &str) -> &str {
    let mut end = text.len().min(123);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit() {
        assert_eq!(close_reason("short"), "short");
        let long = "é".repeat(100);
        let cut = close_reason(&long);
        assert!(cut.len() <= 123 && long.starts_with(cut) && cut.len() == 122);
    }
}
