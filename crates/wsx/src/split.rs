//! A [`WebSocket`](crate::WebSocket) split into a reader and a writer for two (or more) tasks.
//!
//! Both halves share the one [`Core`] (stream, protocol core, buffers, deadlines) behind a mutex
//! that is held only for the duration of one poll, never across an `.await`. The reader writes
//! the replies the protocol obliges it to (pongs, the close echo) through the same output queue
//! as the writer, so they go out even while the writer task is idle.
//!
//! # Who is woken when the socket can take more
//!
//! A stream keeps one write waker: whichever task polled it last. So the halves never hand it
//! their own waker. Every write-side poll (writes, flushes, the write deadline) gets a proxy
//! waker instead, and a task that must wait for output to drain (a blocked `send` or `flush`,
//! a reader paused by backpressure or writing the close echo) adds its waker to the waiting set.
//! The proxy wakes every task in the set; so does any half whose poll wrote bytes. A generation
//! counter closes the gap between a poll and the registration that follows it.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use tokio::io::{AsyncRead, AsyncWrite};
use wsx_proto::{CloseCode, CloseFrame, Message, PreparedMessage, State};

use crate::io::Core;
use crate::{Error, WebSocket};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the connection half-updated in a way that
    // matters more than the panic itself; keep going with the data.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The tasks waiting for the output queue to drain (or the transport to fail).
#[derive(Default)]
struct WriteWaiters {
    /// Bumped by every wake, so that a task can tell a wake it would have missed.
    generation: AtomicU64,
    wakers: Mutex<Vec<Waker>>,
}

impl WriteWaiters {
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Adds `waker` to the set, or wakes it at once if a wake happened since `seen`.
    fn wait(&self, seen: u64, waker: &Waker) {
        let mut wakers = lock(&self.wakers);
        if self.generation.load(Ordering::Acquire) != seen {
            drop(wakers);
            waker.wake_by_ref();
        } else if !wakers.iter().any(|w| w.will_wake(waker)) {
            wakers.push(waker.clone());
        }
    }

    fn wake_all(&self) {
        let wakers = {
            let mut wakers = lock(&self.wakers);
            self.generation.fetch_add(1, Ordering::AcqRel);
            std::mem::take(&mut *wakers)
        };
        for w in wakers {
            w.wake();
        }
    }
}

impl Wake for WriteWaiters {
    fn wake(self: Arc<Self>) {
        self.wake_all();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_all();
    }
}

struct Inner<S> {
    core: Core<S>,
    /// The reader's task while it waits: woken when a writer changes what the reader must watch
    /// for (a close we sent starts the close timeout, which the reader runs; a failed write).
    reader_waker: Option<Waker>,
}

struct Shared<S> {
    inner: Mutex<Inner<S>>,
    waiters: Arc<WriteWaiters>,
    /// The only waker the stream's write side and the write deadline ever see.
    proxy: Waker,
    protocol: Option<String>,
    extensions: Option<String>,
}

impl<S> Shared<S> {
    /// Runs one poll of the core with the proxy as the write waker, then does the waking it
    /// calls for: the waiting set after progress, the reader after the connection closed, and
    /// registers `cx` to wait when the poll is pending with output still queued.
    fn poll_with<T>(
        &self,
        cx: &mut Context<'_>,
        is_reader: bool,
        f: impl FnOnce(&mut Core<S>, &mut Context<'_>, &Waker) -> Poll<T>,
    ) -> Poll<T> {
        let seen = self.waiters.generation();
        let mut inner = lock(&self.inner);
        let before = inner.core.conn.pending_output();
        let was_closed = inner.core.conn.state() == State::Closed;
        let was_blocked = inner.core.is_write_blocked();
        let poll = f(&mut inner.core, cx, &self.proxy);
        let after = inner.core.conn.pending_output();
        let closed = inner.core.conn.state() == State::Closed;
        let blocked = inner.core.is_write_blocked();
        let reader = if is_reader {
            if poll.is_pending() {
                match &mut inner.reader_waker {
                    Some(w) => w.clone_from(cx.waker()),
                    None => inner.reader_waker = Some(cx.waker().clone()),
                }
            }
            None
        } else if closed && !was_closed {
            inner.reader_waker.take()
        } else {
            None
        };
        drop(inner);
        if let Some(w) = reader {
            w.wake();
        }
        // Pending while the stream's write side holds the proxy (bytes queued, or a stream that
        // buffers them itself still flushing): wait with the others for the proxy's wake.
        if poll.is_pending() && (blocked || after > 0) {
            self.waiters.wait(seen, cx.waker());
        }
        if after < before || (was_blocked && !blocked) || (closed && !was_closed) {
            self.waiters.wake_all();
        }
        poll
    }

    fn wake_reader(&self) {
        let w = lock(&self.inner).reader_waker.take();
        if let Some(w) = w {
            w.wake();
        }
    }
}

/// The receiving half of a split [`WebSocket`](crate::WebSocket).
pub struct WsReader<S> {
    shared: Arc<Shared<S>>,
}

/// The sending half of a split [`WebSocket`](crate::WebSocket): a cheap handle, cloneable, so
/// several tasks can send on one connection (each message is queued whole, in the order the
/// calls took the lock).
pub struct WsWriter<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for WsWriter<S> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

impl<S> std::fmt::Debug for WsReader<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsReader").field("protocol", &self.shared.protocol).finish_non_exhaustive()
    }
}

impl<S> std::fmt::Debug for WsWriter<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsWriter").field("protocol", &self.shared.protocol).finish_non_exhaustive()
    }
}

/// [`WsReader::reunite`] was given a writer of another connection, or other writer clones are
/// still alive; both halves come back unchanged.
pub struct ReuniteError<S>(pub WsReader<S>, pub WsWriter<S>);

impl<S> std::fmt::Debug for ReuniteError<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReuniteError(..)")
    }
}

impl<S> std::fmt::Display for ReuniteError<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the halves are not the only two of one connection")
    }
}

impl<S> std::error::Error for ReuniteError<S> {}

pub(crate) fn split<S>(
    core: Core<S>,
    protocol: Option<String>,
    extensions: Option<String>,
) -> (WsReader<S>, WsWriter<S>) {
    let waiters = Arc::new(WriteWaiters::default());
    let proxy = Waker::from(waiters.clone());
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner { core, reader_waker: None }),
        waiters,
        proxy,
        protocol,
        extensions,
    });
    (WsReader { shared: shared.clone() }, WsWriter { shared })
}

impl<S> WsReader<S> {
    /// Puts the halves back together. Fails (giving both back) when `writer` belongs to another
    /// connection or other clones of it are alive.
    pub fn reunite(self, writer: WsWriter<S>) -> Result<WebSocket<S>, ReuniteError<S>> {
        if !Arc::ptr_eq(&self.shared, &writer.shared) || Arc::strong_count(&self.shared) != 2 {
            return Err(ReuniteError(self, writer));
        }
        drop(writer);
        match Arc::try_unwrap(self.shared) {
            Ok(shared) => {
                let inner = shared.inner.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
                Ok(WebSocket::from_core(inner.core, shared.protocol, shared.extensions))
            }
            // Counted above while we held both; no other handle can appear.
            Err(_) => unreachable!("reunite: a third handle appeared"),
        }
    }

    /// The subprotocol agreed in the handshake.
    pub fn protocol(&self) -> Option<&str> {
        self.shared.protocol.as_deref()
    }

    /// The extensions agreed in the handshake.
    pub fn extensions(&self) -> Option<&str> {
        self.shared.extensions.as_deref()
    }

    /// The connection's state.
    pub fn state(&self) -> State {
        lock(&self.shared.inner).core.conn.state()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsReader<S> {
    /// Receives the next message, as [`WebSocket::recv`](crate::WebSocket::recv).
    ///
    /// **Cancel safety**: cancel-safe.
    pub async fn recv(&mut self) -> Option<Result<Message, Error>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        self.shared.poll_with(cx, true, |core, cx, proxy| core.poll_recv(cx, Some(proxy)))
    }

    /// Receives the next chunk of a data message, or a control message, as
    /// [`WebSocket::recv_chunk`](crate::WebSocket::recv_chunk).
    ///
    /// **Cancel safety**: cancel-safe.
    pub async fn recv_chunk(&mut self) -> Option<Result<wsx_proto::StreamEvent, Error>> {
        poll_fn(|cx| self.shared.poll_with(cx, true, |core, cx, proxy| core.poll_recv_chunk(cx, Some(proxy)))).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> futures_core::Stream for WsReader<S> {
    type Item = Result<Message, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx)
    }
}

impl<S> WsWriter<S> {
    /// The connection's state.
    pub fn state(&self) -> State {
        lock(&self.shared.inner).core.conn.state()
    }

    /// Bytes queued and not yet written.
    pub fn buffered_amount(&self) -> usize {
        lock(&self.shared.inner).core.conn.pending_output()
    }

    /// The subprotocol agreed in the handshake.
    pub fn protocol(&self) -> Option<&str> {
        self.shared.protocol.as_deref()
    }

    /// The extensions agreed in the handshake.
    pub fn extensions(&self) -> Option<&str> {
        self.shared.extensions.as_deref()
    }

    /// Queues through `f`, then wakes the reader when it must act: a close we started (the
    /// reader runs the close timeout), or, when no flush follows (`feed`, `Sink::start_send`),
    /// output that was empty and is now pending, so that the bytes leave (within their write
    /// deadline) even if no writer flushes.
    fn queue_with(&self, flush_follows: bool, f: impl FnOnce(&mut Core<S>) -> Result<(), Error>) -> Result<(), Error> {
        let (was_empty, closing) = {
            let mut inner = lock(&self.shared.inner);
            let was_empty = inner.core.conn.pending_output() == 0;
            let was_open = inner.core.conn.state() == State::Open;
            f(&mut inner.core)?;
            (was_empty, was_open && inner.core.conn.state() == State::Closing)
        };
        if closing || (!flush_follows && was_empty) {
            self.shared.wake_reader();
        }
        Ok(())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsWriter<S> {
    /// Sends a message and writes it, as [`WebSocket::send`](crate::WebSocket::send): `Ok` means
    /// its bytes were handed to the stream. A close message starts the closing handshake; the
    /// reader then sees the peer's close.
    ///
    /// **Cancel safety**: not cancel-safe; a queued message is still written by later calls.
    pub async fn send(&mut self, message: Message) -> Result<(), Error> {
        poll_fn(|cx| self.poll_ready_inner(cx)).await?;
        self.queue_with(true, |core| core.queue(message))?;
        self.flush().await
    }

    /// Queues a message without writing it, as [`WebSocket::feed`](crate::WebSocket::feed); it
    /// leaves with the next `send` or `flush` of any handle, or the reader's next write.
    ///
    /// **Cancel safety**: cancel-safe; if cancelled, the message was not queued.
    pub async fn feed(&mut self, message: Message) -> Result<(), Error> {
        poll_fn(|cx| self.poll_ready_inner(cx)).await?;
        self.queue_with(false, |core| core.queue(message))
    }

    /// Writes everything queued and flushes the stream.
    ///
    /// **Cancel safety**: cancel-safe.
    pub async fn flush(&mut self) -> Result<(), Error> {
        poll_fn(|cx| self.poll_flush_inner(cx)).await
    }

    /// Sends a prepared message and writes it, as
    /// [`WebSocket::send_prepared`](crate::WebSocket::send_prepared).
    ///
    /// **Cancel safety**: not cancel-safe; a queued message is still written by later calls.
    pub async fn send_prepared(&mut self, message: &PreparedMessage) -> Result<(), Error> {
        poll_fn(|cx| self.poll_ready_inner(cx)).await?;
        self.queue_with(true, |core| core.queue_prepared(message))?;
        self.flush().await
    }

    /// Queues a prepared message without writing it, as [`feed`](Self::feed) does.
    ///
    /// **Cancel safety**: cancel-safe; if cancelled, the message was not queued.
    pub async fn feed_prepared(&mut self, message: &PreparedMessage) -> Result<(), Error> {
        poll_fn(|cx| self.poll_ready_inner(cx)).await?;
        self.queue_with(false, |core| core.queue_prepared(message))
    }

    /// Sends a message and writes it, a text or binary one uncompressed, as
    /// [`WebSocket::send_uncompressed`](crate::WebSocket::send_uncompressed).
    ///
    /// **Cancel safety**: not cancel-safe; a queued message is still written by later calls.
    pub async fn send_uncompressed(&mut self, message: Message) -> Result<(), Error> {
        poll_fn(|cx| self.poll_ready_inner(cx)).await?;
        self.queue_with(true, |core| core.queue_uncompressed(message))?;
        self.flush().await
    }

    /// Queues a message without writing it, a text or binary one uncompressed, as
    /// [`WebSocket::feed_uncompressed`](crate::WebSocket::feed_uncompressed).
    ///
    /// **Cancel safety**: cancel-safe; if cancelled, the message was not queued.
    pub async fn feed_uncompressed(&mut self, message: Message) -> Result<(), Error> {
        poll_fn(|cx| self.poll_ready_inner(cx)).await?;
        self.queue_with(false, |core| core.queue_uncompressed(message))
    }

    /// Sends a close frame and writes it; the reader receives the peer's close and then `None`.
    ///
    /// **Cancel safety**: not cancel-safe; once queued, the close frame is still sent.
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        self.send(Message::Close(Some(CloseFrame::new(code, reason)))).await
    }

    fn poll_ready_inner(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.shared.poll_with(cx, false, |core, _, proxy| core.poll_ready(&mut Context::from_waker(proxy)))
    }

    fn poll_flush_inner(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.shared.poll_with(cx, false, |core, _, proxy| core.poll_flush(&mut Context::from_waker(proxy)))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> futures_sink::Sink<Message> for WsWriter<S> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.poll_ready_inner(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Error> {
        self.queue_with(false, |core| core.queue(item))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.poll_flush_inner(cx)
    }

    /// Starts the closing handshake (code 1000) if it has not started, and writes it.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // Checked under the same lock as the queueing: another clone may be closing too.
        self.queue_with(true, |core| match core.conn.state() {
            State::Open => core.queue(Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, "")))),
            _ => Ok(()),
        })?;
        self.poll_flush_inner(cx)
    }
}
