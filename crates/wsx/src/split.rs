//! A [`WebSocket`](crate::WebSocket) split into a reader and a writer for two tasks.
//!
//! The connection state machine is shared behind a mutex that is held only for the duration of
//! one poll (never across an `.await`). The reader writes the replies the protocol obliges it to
//! (pongs, the close echo) through the shared writer half, so they go out even while the writer
//! task is idle.

use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use wsx_proto::{CloseCode, CloseFrame, Connection, Message, State};

use crate::io::{poll_flush_all, poll_read_some, poll_recv, poll_write_out, queue, ReadState, Transport};
use crate::Error;

struct Shared<S> {
    conn: Connection,
    writer: WriteHalf<S>,
    /// The reader's task while it waits: woken when the writer changes what the reader must
    /// watch for (a close we sent starts the close timeout, which only the reader runs).
    reader_waker: Option<Waker>,
}

type SharedRef<S> = Arc<Mutex<Shared<S>>>;

fn lock<S>(shared: &SharedRef<S>) -> MutexGuard<'_, Shared<S>> {
    // A panic while holding the lock cannot leave the connection half-updated in a way that
    // matters more than the panic itself; keep going with the data.
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The receiving half of a split [`WebSocket`](crate::WebSocket).
pub struct WsReader<S> {
    reader: ReadHalf<S>,
    shared: SharedRef<S>,
    read: ReadState,
}

/// The sending half of a split [`WebSocket`](crate::WebSocket).
pub struct WsWriter<S> {
    shared: SharedRef<S>,
    high_water: usize,
    protocol: Option<String>,
}

impl<S> std::fmt::Debug for WsReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsReader").finish_non_exhaustive()
    }
}

impl<S> std::fmt::Debug for WsWriter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsWriter").field("protocol", &self.protocol).finish_non_exhaustive()
    }
}

pub(crate) fn split<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    conn: Connection,
    read: ReadState,
    high_water: usize,
    protocol: Option<String>,
) -> (WsReader<S>, WsWriter<S>) {
    let (reader, writer) = tokio::io::split(stream);
    let shared = Arc::new(Mutex::new(Shared { conn, writer, reader_waker: None }));
    (WsReader { reader, shared: shared.clone(), read }, WsWriter { shared, high_water, protocol })
}

struct Halves<'a, S> {
    reader: &'a mut ReadHalf<S>,
    writer: &'a mut WriteHalf<S>,
}

impl<S: AsyncRead + AsyncWrite> Transport for Halves<'_, S> {
    fn poll_read_some(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<std::io::Result<usize>> {
        poll_read_some(self.reader, cx, buf)
    }
    fn poll_write_out(&mut self, cx: &mut Context<'_>, out: &mut wsx_proto::OutBuf) -> Poll<std::io::Result<usize>> {
        poll_write_out(self.writer, cx, out)
    }
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.writer).poll_flush(cx)
    }
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.writer).poll_shutdown(cx)
    }
}

struct WriterOnly<'a, S>(&'a mut WriteHalf<S>);

impl<S: AsyncRead + AsyncWrite> Transport for WriterOnly<'_, S> {
    fn poll_read_some(&mut self, _: &mut Context<'_>, _: &mut BytesMut) -> Poll<std::io::Result<usize>> {
        Poll::Pending
    }
    fn poll_write_out(&mut self, cx: &mut Context<'_>, out: &mut wsx_proto::OutBuf) -> Poll<std::io::Result<usize>> {
        poll_write_out(self.0, cx, out)
    }
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_flush(cx)
    }
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite> WsReader<S> {
    /// Receives the next message, as [`WebSocket::recv`](crate::WebSocket::recv).
    ///
    /// **Cancel safety**: cancel-safe.
    pub async fn recv(&mut self) -> Option<Result<Message, Error>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        let mut guard = lock(&self.shared);
        let shared = &mut *guard;
        let mut io = Halves { reader: &mut self.reader, writer: &mut shared.writer };
        let poll = poll_recv(cx, &mut shared.conn, &mut io, &mut self.read);
        if poll.is_pending() {
            match &mut shared.reader_waker {
                Some(w) => w.clone_from(cx.waker()),
                None => shared.reader_waker = Some(cx.waker().clone()),
            }
        }
        poll
    }
}

impl<S: AsyncRead + AsyncWrite> futures_core::Stream for WsReader<S> {
    type Item = Result<Message, Error>;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx)
    }
}

impl<S: AsyncRead + AsyncWrite> WsWriter<S> {
    /// Sends a message and writes it out, as [`WebSocket::send`](crate::WebSocket::send) (a
    /// close message starts the closing handshake; the reader then sees the peer's close).
    ///
    /// **Cancel safety**: not cancel-safe; a queued message is still written by later calls.
    pub async fn send(&mut self, message: Message) -> Result<(), Error> {
        if lock(&self.shared).conn.pending_output() >= self.high_water {
            self.flush().await?;
        }
        {
            let mut g = lock(&self.shared);
            let closing = matches!(message, Message::Close(_));
            queue(&mut g.conn, message)?;
            if closing {
                // The reader runs the close timeout: let it re-arm its timer.
                if let Some(w) = g.reader_waker.take() {
                    w.wake();
                }
            }
        }
        self.flush().await
    }

    /// Writes everything queued.
    ///
    /// **Cancel safety**: cancel-safe.
    pub async fn flush(&mut self) -> Result<(), Error> {
        poll_fn(|cx| {
            let mut guard = lock(&self.shared);
            let shared = &mut *guard;
            poll_flush_all(cx, &mut shared.conn, &mut WriterOnly(&mut shared.writer))
        })
        .await?;
        Ok(())
    }

    /// Sends a close frame and writes it; the reader receives the peer's close and then `None`.
    ///
    /// **Cancel safety**: not cancel-safe; once queued, the close frame is still sent.
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        self.send(Message::Close(Some(CloseFrame::new(code, reason)))).await
    }

    /// The connection's state.
    pub fn state(&self) -> State {
        lock(&self.shared).conn.state()
    }

    /// Bytes queued and not yet written.
    pub fn buffered_amount(&self) -> usize {
        lock(&self.shared).conn.pending_output()
    }

    /// The subprotocol agreed in the handshake.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }
}
