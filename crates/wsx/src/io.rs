//! The poll loops shared by [`WebSocket`](crate::WebSocket) and its split halves: read into the
//! buffer, run the connection, write its output, arm its timer. All protocol decisions are made
//! by [`wsx_proto::Connection`]; this module only moves bytes and time.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Sleep;
use wsx_proto::{Connection, Message, Role, State};

use crate::Error;

/// The room a read gets adapts to the traffic, between these bounds: an idle connection keeps
/// a small buffer, a busy one reads up to 64 KiB at a time (the size doubles whenever a read
/// fills it). Large frames grow the buffer as their bytes arrive, never from the declared length.
const MIN_READ: usize = 256;
const MAX_READ: usize = 64 * 1024;
/// An empty read buffer larger than this is released rather than kept while idle.
const KEEP_IDLE_BUFFER: usize = 64 * 1024;

/// The transport seen by the poll loops: the whole stream, or the two halves of a split one.
pub(crate) trait Transport {
    /// Reads into the spare capacity of `buf` (the caller reserved it).
    fn poll_read_some(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>>;
    fn poll_write_out(&mut self, cx: &mut Context<'_>, out: &mut wsx_proto::OutBuf) -> Poll<io::Result<usize>>;
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

pub(crate) fn poll_read_some<R: AsyncRead + Unpin>(
    r: &mut R,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    tokio_util::io::poll_read_buf(Pin::new(r), cx, buf)
}

/// Writes some of `out`: a vectored write when the transport supports it (so large payloads
/// queued as their own chunks leave without a copy), otherwise the first chunk.
pub(crate) fn poll_write_out<W: AsyncWrite + Unpin>(
    w: &mut W,
    cx: &mut Context<'_>,
    out: &mut wsx_proto::OutBuf,
) -> Poll<io::Result<usize>> {
    let n = std::task::ready!(tokio_util::io::poll_write_buf(Pin::new(w), cx, out))?;
    if n == 0 {
        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
    }
    Poll::Ready(Ok(n))
}

/// An unsplit stream.
pub(crate) struct Whole<'a, S>(pub &'a mut S);

impl<S: AsyncRead + AsyncWrite + Unpin> Transport for Whole<'_, S> {
    fn poll_read_some(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        poll_read_some(self.0, cx, buf)
    }
    fn poll_write_out(&mut self, cx: &mut Context<'_>, out: &mut wsx_proto::OutBuf) -> Poll<io::Result<usize>> {
        poll_write_out(self.0, cx, out)
    }
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// Writes all pending output and flushes the transport.
pub(crate) fn poll_flush_all(
    cx: &mut Context<'_>,
    conn: &mut Connection,
    io: &mut impl Transport,
) -> Poll<io::Result<()>> {
    while !conn.output().is_empty() {
        std::task::ready!(io.poll_write_out(cx, conn.output()))?;
    }
    io.poll_flush(cx)
}

/// Read-side state: the read buffer and everything `recv` must remember between polls (which is
/// what makes `recv` cancel-safe).
#[derive(Default)]
pub(crate) struct ReadState {
    pub(crate) buf: BytesMut,
    /// An event to hand out once our pending output (the close echo) has been written.
    stash: Option<Message>,
    /// The timer armed for the connection's next deadline.
    timer: Option<Pin<Box<Sleep>>>,
    /// When a closed connection stops waiting for the peer to close the transport.
    close_wait_until: Option<Instant>,
    done: bool,
    /// The last `read_event` found no complete event: `buf` holds only part of a frame, whose
    /// header the connection may already have consumed (so `buf` need not start with a header).
    partial: bool,
    /// How much room the next read gets: doubles when a read fills it, halves when reads stay
    /// small.
    read_size: usize,
}

impl ReadState {
    pub(crate) fn with_buffer(buf: BytesMut) -> Self {
        Self { buf, read_size: MIN_READ, ..Self::default() }
    }

    /// Makes room for the next read, sized by recent reads.
    fn prepare_read(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > KEEP_IDLE_BUFFER {
            // A large message has gone through; don't keep its buffer while idle.
            self.buf = BytesMut::new();
        }
        let want = self.read_size.max(MIN_READ);
        if self.buf.capacity() - self.buf.len() < want / 2 {
            self.buf.reserve(want);
        }
    }

    /// Adapts the read size to a read of `n` bytes into `room` bytes of space.
    fn after_read(&mut self, n: usize, room: usize) {
        if n >= room {
            self.read_size = (self.read_size * 2).min(MAX_READ);
        } else if n < self.read_size / 4 {
            self.read_size = (self.read_size / 2).max(MIN_READ);
        }
    }

    /// Whether the read buffer already holds a whole frame, so the next `recv` needs no read.
    pub(crate) fn has_buffered_frame(&self) -> bool {
        if self.partial {
            return false;
        }
        match wsx_proto::FrameHeader::parse(&self.buf) {
            Ok(Some((h, n))) => (self.buf.len() - n) as u64 >= h.payload_len,
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Arms the timer for `deadline`; returns true if it has already fired.
    fn poll_deadline(&mut self, cx: &mut Context<'_>, deadline: Instant) -> bool {
        let deadline = tokio::time::Instant::from_std(deadline);
        let timer = match &mut self.timer {
            Some(t) => {
                if t.deadline() != deadline {
                    t.as_mut().reset(deadline);
                }
                t
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        timer.as_mut().poll(cx).is_ready()
    }
}

pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Queues a message on the connection: a close starts the closing handshake (and its timeout)
/// now; anything else is encoded into the output.
pub(crate) fn queue(conn: &mut Connection, message: Message) -> Result<(), wsx_proto::Error> {
    match message {
        Message::Close(frame) => conn.close(frame, now()),
        m => conn.send(m),
    }
}

/// Receives the next message. See [`WebSocket::recv`](crate::WebSocket::recv).
pub(crate) fn poll_recv(
    cx: &mut Context<'_>,
    conn: &mut Connection,
    io: &mut impl Transport,
    st: &mut ReadState,
) -> Poll<Option<Result<Message, Error>>> {
    loop {
        if st.done {
            return Poll::Ready(None);
        }
        if let Some(ev) = st.stash.take() {
            // Hand out the peer's close only once our echo is on its way.
            match poll_flush_all(cx, conn, io) {
                Poll::Pending => {
                    st.stash = Some(ev);
                    return Poll::Pending;
                }
                Poll::Ready(_) => return Poll::Ready(Some(Ok(ev))),
            }
        }
        if conn.state() == State::Closed {
            return poll_wind_down(cx, conn, io, st).map(|()| None);
        }
        let now = now();
        let event = conn.read_event(&mut st.buf, now);
        st.partial = matches!(event, Ok(None));
        match event {
            Ok(Some(ev @ Message::Close(_))) => {
                st.stash = Some(ev);
                continue;
            }
            Ok(Some(ev)) => {
                // Corking: what is pending (replies the application queued while handling this
                // batch, pongs) leaves in one write once the batch is handled: with the
                // application's next `send`, or before the next read. Only a ping that ends the
                // batch flushes here, so that its pong does not wait for the application.
                if matches!(ev, Message::Ping(_)) && !conn.output().is_empty() && !st.has_buffered_frame() {
                    let _ = poll_flush_all(cx, conn, io);
                }
                return Poll::Ready(Some(Ok(ev)));
            }
            Ok(None) => {}
            Err(e) => {
                // The close frame naming the fault is queued; try to send it, then report.
                let _ = poll_flush_all(cx, conn, io);
                return Poll::Ready(Some(Err(e.into())));
            }
        }
        if let Some(deadline) = conn.poll_timeout() {
            if deadline <= now {
                if let Err(e) = conn.handle_timeout(now) {
                    let _ = poll_flush_all(cx, conn, io);
                    return Poll::Ready(Some(Err(e.into())));
                }
                continue;
            }
        }
        // Everything produced while handling the last read leaves now, in one write.
        if let Poll::Ready(Err(e)) = poll_flush_all(cx, conn, io) {
            st.done = true;
            return Poll::Ready(Some(Err(e.into())));
        }
        st.prepare_read();
        let room = st.buf.capacity() - st.buf.len();
        match io.poll_read_some(cx, &mut st.buf) {
            Poll::Ready(Ok(0)) => {
                st.done = true;
                return Poll::Ready(Some(Err(Error::AbnormalClosure)));
            }
            Poll::Ready(Ok(n)) => {
                st.after_read(n, room);
                continue;
            }
            Poll::Ready(Err(e)) => {
                st.done = true;
                return Poll::Ready(Some(Err(e.into())));
            }
            Poll::Pending => {
                if let Some(deadline) = conn.poll_timeout() {
                    if st.poll_deadline(cx, deadline) {
                        continue;
                    }
                }
                return Poll::Pending;
            }
        }
    }
}

/// Ends a closed connection's transport: write what is pending, then close TCP. The server
/// closes first (RFC 6455 §7.1.1); a client that completed the closing handshake waits for the
/// server to do so, up to the close timeout.
fn poll_wind_down(
    cx: &mut Context<'_>,
    conn: &mut Connection,
    io: &mut impl Transport,
    st: &mut ReadState,
) -> Poll<()> {
    let until = *st.close_wait_until.get_or_insert_with(|| now() + conn.config().close_timeout);
    let expired = st.poll_deadline(cx, until);
    if !expired && poll_flush_all(cx, conn, io).is_pending() {
        return Poll::Pending;
    }
    if conn.role() == Role::Client && conn.is_closed_cleanly() && !expired {
        loop {
            st.buf.clear();
            st.prepare_read();
            match io.poll_read_some(cx, &mut st.buf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => break,
                Poll::Ready(Ok(_)) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
    if !expired && io.poll_shutdown(cx).is_pending() {
        return Poll::Pending;
    }
    st.done = true;
    st.buf = BytesMut::new();
    st.timer = None;
    Poll::Ready(())
}
