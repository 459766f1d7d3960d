//! The engine shared by [`WebSocket`](crate::WebSocket) and its split halves: one [`Core`] owns
//! the stream, the protocol core, the read buffer and every deadline. It reads into the buffer,
//! runs the connection, writes its output and arms its timers. All protocol decisions are made
//! by [`wsx_proto::Connection`]; this module only moves bytes and time.
//!
//! # The write side
//!
//! The core is the one owner of the stream's write side: the application's messages and the
//! connection's own replies (pongs, the close echo, the close naming a fault) all go through the
//! connection's one output queue, and every write goes through [`Core::poll_flush`]. Write-side
//! polls take the waker to hand to the stream separately from the task's own context: an unsplit
//! `WebSocket` passes its task's waker, the split halves pass a proxy that wakes every task
//! waiting on output (see `split.rs`), so two tasks never race for one socket's write readiness.
//!
//! # Backpressure and deadlines
//!
//! - While pending output is at or over the high-water mark
//!   ([`Config::write_buffer_high_water`](wsx_proto::Config::write_buffer_high_water)), senders
//!   wait. `recv` reads on: a peer that does not read can make us owe it at most one pong (the
//!   connection holds the newest ping's pong until the output is below the mark) and one close
//!   echo, so two peers each sending more than the mark at once never wait on each other.
//! - A write that makes no progress for the write timeout fails the connection
//!   ([`TimeoutError::Write`](wsx_proto::error::TimeoutError::Write)); this bounds `send`,
//!   `flush`, the close echo and the wind-down.
//! - Once output reaches the mark, the peer must take a mark's worth of it (or all of it)
//!   within the slow-reader timeout, window after window while it stays there, or the
//!   connection fails
//!   ([`TimeoutError::SlowReader`](wsx_proto::error::TimeoutError::SlowReader)): a peer that
//!   reads a trickle makes progress, so only this bounds it.
//! - The connection's timers (keepalive, idle, close) are armed by `recv` and also run, when due,
//!   by every flush, so a task that only sends still has them enforced.
//! - Once closed, the transport gets the close timeout to wind down, however the flush goes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Sleep;
use wsx_proto::error::TimeoutError;
use wsx_proto::{Connection, Message, PreparedMessage, Role, Stamp, State, StreamEvent};

use crate::{deadlines, Error};

/// The room a read gets adapts to the traffic, between these bounds: an idle connection keeps
/// a small buffer, a busy one reads about 256 KiB at a time (the size doubles whenever a read
/// fills it), so that a pipelined batch of large messages takes one read and leaves in one
/// write. A large frame grows the buffer toward its declared length, in proportion to the bytes
/// of it that have arrived (see [`FRAME_AHEAD`]).
const MIN_READ: usize = 256;
const MAX_READ: usize = 256 * 1024;
/// Read buffers are kept between reads while the connection is busy, so that steady traffic
/// allocates nothing; one that grew larger than this for a large frame is released as soon as a
/// read finds it empty and nothing more to read, or replaced by one of ordinary size once what
/// it holds is shorter than a read (and is not the start of a frame that needs more). All are
/// released once the connection is idle (see `ReadState::waiting`), and large ones when the
/// reads become small again.
const KEEP_BUSY_BUFFER: usize = 2 * MAX_READ;
/// A frame larger than the largest read ([`MAX_READ`]) gets room for all the rest of it in one
/// step once that rest is at most this many times what has arrived of it; until then its
/// buffer grows as ordinary reads need (and smaller frames always do). One step copies the
/// bytes that arrived before it once (a fifth of the frame, give or take a read) instead of
/// everything at each doubling, and the room ends where the frame ends (the next frame starts
/// in the next read).
///
/// The bound, against a peer that declares a large frame and then stalls: until a fifth of the
/// frame has arrived, the room is what ordinary reads would have (at most about twice what
/// arrived, plus a read); from then on, the frame's declared length, which is at most five
/// times what arrived and never more than `max_frame_size`. Memory held is thus proportional to
/// the bytes the peer actually sent (doubling held up to two times); a stalled peer is ended by
/// the keepalive or idle timeout, when configured.
const FRAME_AHEAD: usize = 4;
/// Reads of at least this much recycle their buffers (see `ReadState::prepare_read`).
const RECYCLE_FROM: usize = 64 * 1024;
/// Bytes arrived: the next read that finds nothing is the end of a batch, not idleness.
const ARRIVED: u8 = 1;
/// The application queued output, or output that waited for room left: the next two reads that
/// find nothing are not idleness either. Two, because a loop that waits on the peer and on a
/// source of messages to send (a room's subscriber in a `select!`) may poll its read before
/// it sends, in every wake: that read sees nothing new since the one after the last send.
const SENDING: u8 = 2;
/// About the most one poll of a split reader's `recv` reads before it yields (waking itself; the
/// last read may take up to [`MAX_READ`] more): a large message arriving fast is read and
/// inflated over several polls, so the writer, which waits for the same lock, gets its turn.
/// An unsplit `WebSocket` holds no lock and reads on (tokio's cooperative budget still makes
/// its task yield): yielding there only made the allocator hand out fresh pages for every large
/// message (measured: 10x the page faults and half the throughput on 1 MiB echoes).
const READ_BUDGET: usize = 1 << 20;

/// What a receive loop hands out: whole messages ([`Core::poll_recv`]) or chunks and control
/// messages ([`Core::poll_recv_chunk`]). The loop is the same; only the connection's read function
/// and how a close or a ping is recognized differ.
pub(crate) trait RecvEvent: Sized {
    /// Parses the next event out of `buf` (`Connection::read_event` or `read_chunk`).
    fn read(conn: &mut Connection, buf: &mut BytesMut, now: Instant) -> Result<Option<Self>, wsx_proto::Error>;
    /// The peer's close, taken out (it is stashed until its echo is written), or the event back.
    fn into_close(self) -> Result<Message, Self>;
    /// Wraps a stashed close again.
    fn from_close(close: Message) -> Self;
    /// Whether this is a ping (its pong is flushed when it ends a batch).
    fn is_ping(&self) -> bool;
    /// Whether this is a ping or a pong (not a sign of an exchange under way: see
    /// `ReadState::only_control_arrived`).
    fn is_ping_or_pong(&self) -> bool;
    /// Bytes the read buffer must still take before the frame being read is whole (see
    /// [`Connection::frame_bytes_due`]); 0 where frames are handed out as they arrive.
    fn frame_bytes_due(conn: &Connection) -> usize;
}

impl RecvEvent for Message {
    #[inline]
    fn read(conn: &mut Connection, buf: &mut BytesMut, now: Instant) -> Result<Option<Self>, wsx_proto::Error> {
        conn.read_event(buf, now)
    }
    fn into_close(self) -> Result<Message, Self> {
        match self {
            Message::Close(_) => Ok(self),
            other => Err(other),
        }
    }
    fn from_close(close: Message) -> Self {
        close
    }
    fn is_ping(&self) -> bool {
        matches!(self, Message::Ping(_))
    }
    fn is_ping_or_pong(&self) -> bool {
        matches!(self, Message::Ping(_) | Message::Pong(_))
    }
    fn frame_bytes_due(conn: &Connection) -> usize {
        conn.frame_bytes_due()
    }
}

impl RecvEvent for StreamEvent {
    #[inline]
    fn read(conn: &mut Connection, buf: &mut BytesMut, now: Instant) -> Result<Option<Self>, wsx_proto::Error> {
        conn.read_chunk(buf, now)
    }
    fn into_close(self) -> Result<Message, Self> {
        match self {
            StreamEvent::Control(close @ Message::Close(_)) => Ok(close),
            other => Err(other),
        }
    }
    fn from_close(close: Message) -> Self {
        StreamEvent::Control(close)
    }
    fn is_ping(&self) -> bool {
        matches!(self, StreamEvent::Control(Message::Ping(_)))
    }
    fn is_ping_or_pong(&self) -> bool {
        matches!(self, StreamEvent::Control(Message::Ping(_) | Message::Pong(_)))
    }
    fn frame_bytes_due(_: &Connection) -> usize {
        0
    }
}

/// Writes some of a protocol core's pending output to `w`, the way
/// [`WebSocket`](crate::WebSocket) writes: for a driver that runs a [`wsx_proto::Connection`]
/// over a tokio stream itself.
///
/// A plain write when the output is one piece (the usual case: small frames are encoded back
/// to back), else a vectored write when the transport supports it (so large payloads queued as
/// their own chunks leave without a copy), otherwise the first chunk. On a socket a plain write
/// is `send(2)`, which costs the kernel less than `writev(2)` with one buffer.
///
/// Returns the bytes written: 0 only when there was nothing to write; a stream that takes
/// nothing of a non-empty output is [`io::ErrorKind::WriteZero`]. Call it again while the
/// [`OutBuf`](wsx_proto::OutBuf) has bytes left. It does not flush: a stream that buffers
/// (TLS) needs `poll_flush` once the output is written.
pub fn poll_write_out<W: AsyncWrite + Unpin>(
    w: &mut W,
    cx: &mut Context<'_>,
    out: &mut wsx_proto::OutBuf,
) -> Poll<io::Result<usize>> {
    if out.is_empty() {
        return Poll::Ready(Ok(0));
    }
    let n = if out.chunk().len() == out.remaining() {
        let n = std::task::ready!(Pin::new(w).poll_write(cx, out.chunk()))?;
        out.advance(n);
        n
    } else {
        std::task::ready!(tokio_util::io::poll_write_buf(Pin::new(w), cx, out))?
    };
    if n == 0 {
        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
    }
    Poll::Ready(Ok(n))
}

/// A deadline armed on a tokio timer, re-armed in place.
///
/// Re-armed lazily: a deadline that moves later (the keepalive's, pushed back by every frame
/// received) leaves the timer where it is, and when it fires early it is moved to the deadline
/// of the moment. Moving a tokio timer takes the timer wheel's lock; a busy connection would
/// otherwise do it after every read.
#[derive(Default)]
struct Timer(Option<Pin<Box<Sleep>>>);

impl Timer {
    /// Arms the timer for `deadline` (or leaves it armed earlier); returns true if `deadline`
    /// has passed.
    fn poll(&mut self, cx: &mut Context<'_>, deadline: Instant) -> bool {
        let deadline = tokio::time::Instant::from_std(deadline);
        let timer = match &mut self.0 {
            Some(t) => {
                if t.deadline() > deadline {
                    t.as_mut().reset(deadline);
                }
                t
            }
            None => self.0.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        if timer.deadline() == deadline || tokio::time::Instant::now() >= deadline {
            return true;
        }
        // Fired for an earlier deadline that has since moved: wait for this one.
        timer.as_mut().reset(deadline);
        timer.as_mut().poll(cx).is_ready()
    }
}

/// The read side's timer: an entry in this thread's deadline table when one is driven here
/// (see [`crate::deadlines`]: 24 bytes in the table, where a tokio timer takes 112 on the heap),
/// else a tokio timer.
#[derive(Default)]
enum ReadTimer {
    #[default]
    Off,
    Table(deadlines::Slot),
    Tokio(Timer),
}

impl ReadTimer {
    /// Arms the timer for `deadline`; returns true if it has passed (see [`Timer::poll`]).
    fn poll(&mut self, cx: &mut Context<'_>, deadline: Instant) -> bool {
        match self {
            ReadTimer::Tokio(timer) => return timer.poll(cx, deadline),
            ReadTimer::Table(slot) => {
                if let Some(expired) = slot.poll(cx, deadline) {
                    return expired;
                }
                // The table is gone (its driver was dropped), or the connection moved to
                // another thread: a tokio timer from now on.
            }
            ReadTimer::Off => match deadlines::Slot::arm(cx, deadline) {
                deadlines::Armed::Expired => return true,
                deadlines::Armed::Slot(slot) => {
                    *self = ReadTimer::Table(slot);
                    return false;
                }
                deadlines::Armed::NoTable => {}
            },
        }
        let mut timer = Timer::default();
        let expired = timer.poll(cx, deadline);
        *self = ReadTimer::Tokio(timer);
        expired
    }
}

/// What the read side keeps once the connection is closing.
#[derive(Default)]
struct Closing {
    /// The peer's close, to hand out once our pending output (the close echo) has been written.
    stash: Option<Message>,
    /// When a closed connection stops waiting for its output and for the peer to close the
    /// transport.
    until: Option<Stamp>,
}

/// Read-side state: the read buffer and everything `recv` must remember between polls (which is
/// what makes `recv` cancel-safe).
#[derive(Default)]
struct ReadState {
    buf: BytesMut,
    /// What only a closing connection keeps. Boxed: made once, at the close, and a pointer
    /// until then keeps an idle connection small.
    closing: Option<Box<Closing>>,
    /// The timer armed for the connection's next deadline, or the wind-down's.
    timer: ReadTimer,
    done: bool,
    /// The buffer before this one, whose messages may still be waiting to be written: reused
    /// once they are gone (see [`ReadState::prepare_read`]). Boxed: a pointer while absent, and
    /// the box is reused while the connection stays busy.
    spare: Option<Box<BytesMut>>,
    /// The last `read_event` found no complete event: `buf` holds only part of a frame, whose
    /// header the connection may already have consumed (so `buf` need not start with a header).
    partial: bool,
    /// How much room the next read gets: doubles when a read fills it, halves when reads stay
    /// small. (A `u32` beside the flags: an idle connection's size is a benchmark figure.)
    read_size: u32,
    /// How many more reads that find nothing count as busy rather than idle (see
    /// [`ReadState::waiting`]): [`ARRIVED`] once bytes arrive, [`SENDING`] once the application
    /// queues output or output the stream had no room for leaves.
    fresh: u8,
    /// `buf` grew past [`KEEP_BUSY_BUFFER`] for a large frame: given back once it is empty at a
    /// read that finds nothing, or moved to a buffer of ordinary size once it holds less than a
    /// read and is not in the middle of a frame that needs more. (An empty buffer's capacity
    /// shows only the room left after the messages split off it, not the allocation they share.)
    large: bool,
    /// When the bytes in `buf` were read: the clock reading its events are handled with (they
    /// arrived together), taken once per read rather than once per event. Cleared when `buf`
    /// has no whole event left, so timers are checked against a fresh reading.
    read_at: Option<Instant>,
}

impl ReadState {
    /// The closing state, made on first use.
    fn closing(&mut self) -> &mut Closing {
        self.closing.get_or_insert_with(Box::default)
    }

    /// Makes room for the next read, sized by recent reads.
    ///
    /// Messages leave as slices of the read buffer (no copy), so a buffer whose messages still
    /// wait to be written cannot be reused in place, and making room means a new allocation. At
    /// 256 KiB a read, that allocation per read made the allocator hand pages back to the kernel
    /// and fault them in again, one fault per 4 KiB read. So the buffer a read leaves behind is
    /// kept as a spare, and the next buffer is the spare once nothing else holds it: a busy
    /// connection alternates between two allocations.
    ///
    /// `due` is what the frame being read still needs (see [`Connection::frame_bytes_due`]): a
    /// frame larger than the largest read gets room for its rest in one step once
    /// [`FRAME_AHEAD`] allows.
    fn prepare_read(&mut self, due: usize) {
        let want = (self.read_size as usize).max(MIN_READ);
        let len = self.buf.len();
        if want <= RECYCLE_FROM / 4 {
            // Small reads (well under the recycling threshold, so a dip or two of the read size
            // does not count): a burst of large ones is over. They need no spare, nor its buffer.
            self.spare = None;
            if len == 0 && self.buf.capacity() > 2 * RECYCLE_FROM {
                self.buf = BytesMut::new();
            }
        }
        if len + due > MAX_READ && due.div_ceil(FRAME_AHEAD) <= len && self.buf.capacity() - len < due {
            // In place when nothing else holds the buffer and it has the room once what was
            // handed out before the frame is reclaimed; else a buffer of exactly that room (not
            // `reserve`, which may round up to twice the old capacity) with the frame's bytes
            // copied over.
            if !self.buf.try_reclaim(due) {
                let mut grown = BytesMut::with_capacity(len + due);
                grown.extend_from_slice(&self.buf);
                self.buf = grown;
            }
            self.large |= self.buf.capacity() > KEEP_BUSY_BUFFER;
            if self.large {
                self.spare = None;
            }
            return;
        }
        if self.large && len + due < want {
            // The buffer grew past `KEEP_BUSY_BUFFER` for a large frame and now holds less than
            // a read (nor is it in the middle of a frame that needs more): move what it holds to
            // one of ordinary size rather than reclaim the large one for every read.
            let mut ordinary = BytesMut::with_capacity(len + want);
            ordinary.extend_from_slice(&self.buf);
            self.buf = ordinary;
            self.large = false;
        }
        if len == 0 {
            // Everything read has been handled. When nothing else holds the buffer any more, the
            // next read lands at the start of its allocation, not after the bytes handed out
            // before: a busy connection keeps reusing the same memory, still in cache, instead
            // of walking through the whole buffer one read at a time (across many connections,
            // the kernel's copy then writes to memory no cache holds). Asking for one byte more
            // than the room left makes `try_reclaim` go back to the start; it moves nothing and
            // never allocates, and fails while messages still hold part of the buffer.
            let _ = self.buf.try_reclaim(self.buf.capacity() + 1);
        }
        let room = self.buf.capacity() - len;
        if room >= want / 2 {
            return;
        }
        if self.buf.try_reclaim(want) {
            return;
        }
        if want < RECYCLE_FROM || len >= want {
            // Small reads are cheap to allocate; a frame larger than a read grows its buffer (by
            // doubling, in place when nothing else holds it), without a spare beside it.
            self.buf.reserve(want);
            self.large |= self.buf.capacity() > KEEP_BUSY_BUFFER;
            if self.large {
                self.spare = None;
            }
            return;
        }
        if self.buf.try_reclaim(want / 2) {
            // Nothing else holds it, and half a read fits after what it holds.
            return;
        }
        // Still shared with messages not yet written: the spare if it is free again, else a new
        // buffer. Either way the unread bytes (the beginning of a frame, shorter than a read)
        // move over, and the old buffer becomes the spare.
        let mut spare = self.spare.take().unwrap_or_default();
        if !spare.try_reclaim(len + want / 2) {
            *spare = BytesMut::with_capacity(len + want);
        }
        spare.extend_from_slice(&self.buf);
        std::mem::swap(&mut self.buf, &mut spare);
        spare.clear();
        self.spare = Some(spare);
    }

    /// A read found nothing to read. If nothing arrived since the last such read, and the
    /// application queued nothing and no output that had waited for room left since the one
    /// before (see [`SENDING`]), the connection is idle (woken by a timer, say to send a
    /// keepalive ping, or waiting for its first message after the handshake): its buffers are
    /// given back while it waits. A connection in the middle of an exchange keeps them, so
    /// steady traffic allocates nothing, unless a large frame made them larger than
    /// [`KEEP_BUSY_BUFFER`].
    fn waiting(&mut self) {
        let idle = self.fresh == 0;
        if idle || self.large {
            if self.buf.is_empty() {
                self.buf = BytesMut::new();
                self.large = false;
            }
            self.spare = None;
        }
        self.fresh = self.fresh.saturating_sub(1);
    }

    /// What arrived since the last read that found nothing was a ping or a pong, now handled,
    /// and the buffer holds nothing more: that is no exchange under way. (The pong to our
    /// keepalive ping arrives once per interval; counted as activity, it made every idle
    /// connection keep a buffer from one pong to the next ping.) Output the application queued
    /// since the last read that found nothing still counts ([`SENDING`]).
    fn only_control_arrived(&mut self) {
        if self.fresh == ARRIVED {
            self.fresh = 0;
        }
    }

    /// Adapts the read size to a read of `n` bytes into `room` bytes of space.
    fn after_read(&mut self, n: usize, room: usize) {
        self.fresh = self.fresh.max(ARRIVED);
        if n >= room {
            self.read_size = (self.read_size * 2).min(MAX_READ as u32);
        } else if n < self.read_size as usize / 4 {
            self.read_size = (self.read_size / 2).max(MIN_READ as u32);
        }
    }
}

/// Write-side state: the deadline of a write that makes no progress, and of a backpressure
/// episode that lasts too long.
#[derive(Default)]
struct WriteState {
    timer: Timer,
    /// Set when a write could not make progress: the write fails at this instant unless bytes
    /// are written first.
    deadline: Option<Stamp>,
    /// When pending output was seen at or over the high-water mark: the start of the window in
    /// which the peer must take a mark's worth of it (the slow-reader timeout). Cleared once
    /// the output is all written, or below the mark when a window ends.
    full_since: Option<Stamp>,
    /// Bytes written since `full_since` (saturating; the mark is compared at most with
    /// `u32::MAX`). Deadlines are [`Stamp`]s and this a `u32`: every connection keeps them.
    taken_since_full: u32,
    /// Why the transport was given up (a write error or timeout), kept for the task that did not
    /// see it happen (the reader of a split connection).
    failure: Option<Box<Error>>,
    /// Output was dropped when the transport was given up: later flushes fail with
    /// [`Error::Closed`] rather than report success.
    lost: bool,
    /// The last write-side poll (write, flush or shutdown) was pending: the stream will wake the
    /// write waker it was given. Even with nothing left in our output (a TLS stream or a
    /// `BufWriter` holding the bytes), someone is waiting on the stream.
    blocked: bool,
    /// A write failed (the peer reset or closed the connection): nothing more is written or
    /// queued, but reading goes on, since the peer's close frame (and its reason) may still be
    /// waiting to be read.
    broken: bool,
}

/// One connection: stream, protocol core, buffers and deadlines. See the [module docs](self).
pub(crate) struct Core<S> {
    pub(crate) stream: S,
    pub(crate) conn: Connection,
    read: ReadState,
    write: WriteState,
}

/// The clock deadlines are read against: tokio's, so that tests can pause it.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// A copy of an error to report a second time (to the other half of a split connection).
fn replay(e: &Error) -> Error {
    match e {
        Error::Proto(p) => Error::Proto(p.clone()),
        Error::Io(io) => Error::Io(io::Error::new(io.kind(), io.to_string())),
        Error::AbnormalClosure => Error::AbnormalClosure,
        Error::Tls(t) => Error::Tls(t.clone()),
        _ => Error::Closed,
    }
}

impl<S> Core<S> {
    /// A core over `stream` whose handshake is done; `leftover` holds bytes read past it.
    pub(crate) fn new(stream: S, conn: Connection, leftover: BytesMut) -> Self {
        // An empty leftover would only pin the handshake's buffer; reads size their own.
        let buf = if leftover.is_empty() { BytesMut::new() } else { leftover };
        Self {
            stream,
            conn,
            read: ReadState { buf, read_size: MIN_READ as u32, ..ReadState::default() },
            write: WriteState::default(),
        }
    }

    /// The stream, the connection and the bytes read but not parsed (see `WebSocket::into_parts`).
    pub(crate) fn into_parts(self) -> (S, Connection, BytesMut) {
        (self.stream, self.conn, self.read.buf)
    }

    /// Whether a task is waiting on the stream's write side (see `WriteState::blocked`).
    pub(crate) fn is_write_blocked(&self) -> bool {
        self.write.blocked
    }

    /// Whether the read buffer already holds a whole frame, so the next `recv` needs no read.
    pub(crate) fn has_buffered_frame(&self) -> bool {
        if self.read.partial {
            return false;
        }
        match wsx_proto::FrameHeader::parse(&self.read.buf) {
            Ok(Some((h, n))) => (self.read.buf.len() - n) as u64 >= h.payload_len,
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Queues a message on the connection: a close starts the closing handshake (and its
    /// timeout) now; anything else is encoded into the output. Sending on a closed connection is
    /// [`Error::Closed`].
    pub(crate) fn queue(&mut self, message: Message) -> Result<(), Error> {
        if self.conn.state() == State::Closed || self.write.broken {
            return Err(Error::Closed);
        }
        match message {
            Message::Close(frame) => self.conn.close(frame, now())?,
            m => self.conn.send(m)?,
        }
        // Sending is activity: a connection that mostly sends keeps its buffers (`waiting`).
        self.read.fresh = SENDING;
        Ok(())
    }

    /// Queues a prepared message (see [`Connection::send_prepared`]). Sending on a closed
    /// connection is [`Error::Closed`].
    pub(crate) fn queue_prepared(&mut self, message: &PreparedMessage) -> Result<(), Error> {
        if self.conn.state() == State::Closed || self.write.broken {
            return Err(Error::Closed);
        }
        self.conn.send_prepared(message)?;
        self.read.fresh = SENDING;
        Ok(())
    }

    /// Queues a message as [`queue`](Self::queue) does, a text or binary one uncompressed (see
    /// [`Connection::send_uncompressed`]).
    pub(crate) fn queue_uncompressed(&mut self, message: Message) -> Result<(), Error> {
        if !message.is_data() {
            return self.queue(message);
        }
        if self.conn.state() == State::Closed || self.write.broken {
            return Err(Error::Closed);
        }
        self.conn.send_uncompressed(message)?;
        self.read.fresh = SENDING;
        Ok(())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Core<S> {
    /// Gives the transport up: the connection is closed without (more of) a handshake and what
    /// is pending is dropped.
    fn give_up(&mut self) {
        self.write.lost |= self.conn.pending_output() > 0;
        self.conn.abort();
        self.write.deadline = None;
        self.write.full_since = None;
    }

    /// After a write failure. The write timeout gives the transport up (the peer stopped
    /// reading), keeping the error for the other half. A write error only ends writing: `recv`
    /// reads on, to deliver what the peer sent before it went (its close frame, most often)
    /// and then the end of the stream.
    fn fail_write(&mut self, err: Error) -> Error {
        if matches!(err, Error::Io(_) | Error::Tls(_)) {
            self.write.broken = true;
            self.write.deadline = None;
        } else {
            self.give_up();
            self.write.failure = Some(Box::new(replay(&err)));
        }
        err
    }

    /// Writes all pending output and flushes the stream, registering `wcx` for write readiness
    /// and the write deadline. Runs the connection's timers if one is due.
    pub(crate) fn poll_flush(&mut self, wcx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.write.lost || self.write.broken {
            return Poll::Ready(Err(Error::Closed));
        }
        if let Some(deadline) = self.conn.poll_timeout() {
            let now = now();
            if deadline <= now {
                // A timeout that fails the connection queues its close frame: written below, and
                // reported by `recv`.
                if let Err(e) = self.conn.handle_timeout(now) {
                    self.write.failure = Some(Box::new(e.into()));
                }
            }
        }
        let slow_reader_timeout = self.conn.config().slow_reader_timeout;
        if slow_reader_timeout.is_some() && self.write.full_since.is_none() && self.conn.is_output_full() {
            self.write.full_since = Some(Stamp::new(now()));
            self.write.taken_since_full = 0;
        }
        // A write resumed after the stream was full: the connection is busy sending, not idle
        // (a keepalive ping written at once is not activity; see `ReadState::waiting`).
        let resumed = self.write.blocked;
        loop {
            let progress = if self.conn.output().is_empty() {
                Pin::new(&mut self.stream).poll_flush(wcx).map_ok(|()| 0)
            } else {
                poll_write_out(&mut self.stream, wcx, self.conn.output())
            };
            self.write.blocked = progress.is_pending();
            match progress {
                Poll::Ready(Ok(0)) => {
                    self.write.deadline = None;
                    self.write.full_since = None;
                    // A flush the stream had held (TLS, a `BufWriter`) completed.
                    if resumed {
                        self.read.fresh = SENDING;
                    }
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(n)) => {
                    self.write.deadline = None;
                    if resumed {
                        self.read.fresh = SENDING;
                    }
                    if self.write.full_since.is_some() {
                        let n = u32::try_from(n).unwrap_or(u32::MAX);
                        self.write.taken_since_full = self.write.taken_since_full.saturating_add(n);
                        let mark = self.conn.config().write_buffer_high_water.min(u32::MAX as usize);
                        if self.write.taken_since_full as usize >= mark {
                            // The peer took a mark's worth in time: a new window starts if the
                            // output is still at the mark, else the episode is over.
                            self.write.full_since = self.conn.is_output_full().then(|| Stamp::new(now()));
                            self.write.taken_since_full = 0;
                        }
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(self.fail_write(e.into()))),
                Poll::Pending => {
                    let stalled = self.conn.config().write_timeout.map(|timeout| {
                        // Armed once per stall: bytes written since disarm it (above).
                        self.write.deadline.get_or_insert_with(|| Stamp::new(now() + timeout)).get()
                    });
                    let slow = slow_reader_timeout.zip(self.write.full_since).map(|(t, since)| since.get() + t);
                    let Some(deadline) = [stalled, slow].into_iter().flatten().min() else {
                        return Poll::Pending;
                    };
                    if self.write.timer.poll(wcx, deadline) {
                        let timeout =
                            if slow == Some(deadline) { TimeoutError::SlowReader } else { TimeoutError::Write };
                        let err = Error::Proto(timeout.into());
                        return Poll::Ready(Err(self.fail_write(err)));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// When pending output is over the high-water mark, writes all of it (and flushes) before
    /// letting the caller queue more; otherwise ready at once.
    pub(crate) fn poll_ready(&mut self, wcx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.conn.is_output_full() {
            std::task::ready!(self.poll_flush(wcx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Receives the next message. See [`WebSocket::recv`](crate::WebSocket::recv). `wcx` is the
    /// context for write readiness and the write deadline; `None` uses `cx`.
    pub(crate) fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        write_waker: Option<&Waker>,
    ) -> Poll<Option<Result<Message, Error>>> {
        self.poll_recv_event(cx, write_waker)
    }

    /// Receives the next chunk of a data message or control message. See
    /// [`WebSocket::recv_chunk`](crate::WebSocket::recv_chunk); `write_waker` as in `poll_recv`.
    pub(crate) fn poll_recv_chunk(
        &mut self,
        cx: &mut Context<'_>,
        write_waker: Option<&Waker>,
    ) -> Poll<Option<Result<StreamEvent, Error>>> {
        self.poll_recv_event(cx, write_waker)
    }

    /// The receive loop of `poll_recv` and `poll_recv_chunk`: flushes, timers, backpressure, the
    /// read budget, the close echo and the wind-down, around the connection's read function.
    fn poll_recv_event<E: RecvEvent>(
        &mut self,
        cx: &mut Context<'_>,
        write_waker: Option<&Waker>,
    ) -> Poll<Option<Result<E, Error>>> {
        macro_rules! flush {
            () => {
                match write_waker {
                    Some(w) => self.poll_flush(&mut Context::from_waker(w)),
                    None => self.poll_flush(cx),
                }
            };
        }
        let mut read_this_poll = 0;
        // Only a split reader (the one given a separate write waker) shares a lock.
        let budget = if write_waker.is_some() { READ_BUDGET } else { usize::MAX };
        loop {
            if self.read.done {
                return Poll::Ready(None);
            }
            if let Some(ev) = self.read.closing.as_mut().and_then(|c| c.stash.take()) {
                // Hand out the peer's close once our echo is on its way, or once the wind-down
                // deadline has passed (a peer that sends a close and stops reading).
                let until = self.close_wait_until();
                if flush!().is_pending() && !self.read.timer.poll(cx, until) {
                    self.read.closing().stash = Some(ev);
                    return Poll::Pending;
                }
                return Poll::Ready(Some(Ok(E::from_close(ev))));
            }
            if self.conn.state() == State::Closed {
                if let Some(err) = self.write.failure.take() {
                    return Poll::Ready(Some(Err(*err)));
                }
                return self.poll_wind_down(cx, write_waker).map(|()| None);
            }
            let read_at = *self.read.read_at.get_or_insert_with(now);
            let event = E::read(&mut self.conn, &mut self.read.buf, read_at);
            self.read.partial = matches!(event, Ok(None));
            if self.read.partial {
                self.read.read_at = None;
            }
            match event.map(|ev| ev.map(E::into_close)) {
                Ok(Some(Ok(close))) => {
                    self.read.closing().stash = Some(close);
                    continue;
                }
                Ok(Some(Err(ev))) => {
                    // Corking: what is pending (replies the application fed while handling this
                    // batch, pongs) leaves in one write once the batch is handled: with the next
                    // `send` or `flush`, or before the next read. Only a ping that ends the batch
                    // flushes here, so that its pong does not wait for the application.
                    if ev.is_ping() && self.conn.pending_output() > 0 && !self.has_buffered_frame() {
                        let _ = flush!();
                    }
                    if ev.is_ping_or_pong() && self.read.buf.is_empty() {
                        self.read.only_control_arrived();
                    }
                    return Poll::Ready(Some(Ok(ev)));
                }
                Ok(None) => {}
                Err(e) => {
                    // The close frame naming the fault is queued; try to send it, then report.
                    let _ = flush!();
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            if let Some(deadline) = self.conn.poll_timeout() {
                let now = now();
                if deadline <= now {
                    if let Err(e) = self.conn.handle_timeout(now) {
                        let _ = flush!();
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    continue;
                }
            }
            // Everything produced while handling the last read leaves now, in one write. A
            // broken write side does not stop reading (see `fail_write`).
            if let Poll::Ready(Err(e)) = flush!() {
                if !self.write.broken {
                    self.write.failure = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if self.conn.state() == State::Closed {
                // A timer that came due during the flush closed the connection: report it.
                continue;
            }
            // Reading goes on whatever our output holds: what the peer can make us owe it while it
            // does not read is bounded in the connection (one pong while the output is at the
            // mark, one close echo), and a data message reaches the application, whose `send`
            // waits at the mark. Stopping here made two peers that each send more than the mark
            // at once (or ping each other meanwhile) wait on each other until the write timeout.
            if read_this_poll >= budget {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            // Only a read that found no whole event gets here: `buf` holds at most the beginning
            // of a frame, whose rest is what the connection says is due.
            self.read.prepare_read(E::frame_bytes_due(&self.conn));
            let room = self.read.buf.capacity() - self.read.buf.len();
            // Never less than a whole ordinary read: cutting a read short to the byte would split a
            // large frame's last bytes into another poll, and its buffer into another allocation.
            let limit = (budget - read_this_poll).max(MAX_READ);
            let mut limited = bytes::BufMut::limit(&mut self.read.buf, limit);
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut limited) {
                // TLS reports a peer that closed TCP without `close_notify` as UnexpectedEof:
                // the same end as an end of stream over plain TCP (the WebSocket framing tells a
                // truncated message on its own).
                Poll::Ready(Ok(0)) => {
                    self.end_transport();
                    return Poll::Ready(Some(Err(Error::AbnormalClosure)));
                }
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.end_transport();
                    return Poll::Ready(Some(Err(Error::AbnormalClosure)));
                }
                Poll::Ready(Ok(n)) => {
                    self.read.after_read(n, room);
                    read_this_poll += n;
                    continue;
                }
                Poll::Ready(Err(e)) => {
                    self.end_transport();
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Pending => {
                    if let Some(deadline) = self.conn.poll_timeout() {
                        if self.read.timer.poll(cx, deadline) {
                            continue;
                        }
                    }
                    self.read.waiting();
                    return Poll::Pending;
                }
            }
        }
    }

    /// The transport ended under us (end of stream or a read error): nothing more to do with it.
    fn end_transport(&mut self) {
        self.give_up();
        self.read.done = true;
        self.read.buf = BytesMut::new();
        self.read.spare = None;
        self.read.timer = ReadTimer::Off;
    }

    /// When a closed connection gives up on its transport: the close timeout after it closed.
    fn close_wait_until(&mut self) -> Instant {
        let timeout = self.conn.config().close_timeout;
        self.read.closing().until.get_or_insert_with(|| Stamp::new(now() + timeout)).get()
    }

    /// Ends a closed connection's transport: write what is pending, then close TCP. The server
    /// closes first (RFC 6455 §7.1.1); a client that completed the closing handshake waits for
    /// the server to do so. All of it within the close timeout.
    fn poll_wind_down(&mut self, cx: &mut Context<'_>, write_waker: Option<&Waker>) -> Poll<()> {
        let until = self.close_wait_until();
        let expired = self.read.timer.poll(cx, until);
        if !expired {
            let flushed = match write_waker {
                Some(w) => self.poll_flush(&mut Context::from_waker(w)),
                None => self.poll_flush(cx),
            };
            if flushed.is_pending() {
                return Poll::Pending;
            }
        }
        if self.conn.role() == Role::Client && self.conn.is_closed_cleanly() && !expired {
            // Discard what the server still sends until it closes TCP, a budget per poll.
            let mut discarded = 0;
            loop {
                if discarded >= READ_BUDGET {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                self.read.buf.clear();
                self.read.prepare_read(0);
                match tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.read.buf) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => break,
                    Poll::Ready(Ok(n)) => discarded += n,
                    Poll::Pending => return Poll::Pending,
                }
            }
        }
        if !expired {
            let shut = match write_waker {
                Some(w) => Pin::new(&mut self.stream).poll_shutdown(&mut Context::from_waker(w)),
                None => Pin::new(&mut self.stream).poll_shutdown(cx),
            };
            self.write.blocked = shut.is_pending();
            if shut.is_pending() {
                return Poll::Pending;
            }
        }
        if expired {
            self.give_up();
        }
        self.read.done = true;
        self.read.buf = BytesMut::new();
        self.read.spare = None;
        self.read.timer = ReadTimer::Off;
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// A client frame: masked binary `payload` (short).
    fn masked(payload: &[u8]) -> Vec<u8> {
        let key = [1, 2, 3, 4];
        let mut frame = vec![0x82, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        frame
    }

    /// One poll of `recv`, whatever it gives.
    async fn recv<S: AsyncRead + AsyncWrite + Unpin>(core: &mut Core<S>) -> Poll<Option<Result<Message, Error>>> {
        std::future::poll_fn(|cx| Poll::Ready(core.poll_recv(cx, None))).await
    }

    /// The next message, polling `recv` (a large one takes several polls); fails rather than
    /// spin if none comes.
    async fn next_message<S: AsyncRead + AsyncWrite + Unpin>(core: &mut Core<S>) -> Message {
        for _ in 0..1000 {
            match recv(core).await {
                Poll::Ready(Some(Ok(m))) => return m,
                Poll::Pending => {}
                other => panic!("{other:?}"),
            }
        }
        panic!("no message after 1000 polls");
    }

    /// The peer sends `payload`; one poll of `recv` must return it.
    async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
        core: &mut Core<S>,
        peer: &mut tokio::io::DuplexStream,
        payload: &[u8],
    ) {
        peer.write_all(&masked(payload)).await.unwrap();
        match recv(core).await {
            Poll::Ready(Some(Ok(Message::Binary(b)))) => assert_eq!(&b[..], payload),
            other => panic!("{other:?}"),
        }
    }

    /// An idle connection holds no read buffer; one in the middle of an exchange keeps it, so
    /// that steady traffic allocates nothing (tests/alloc.rs counts that).
    #[tokio::test]
    async fn the_read_buffer_is_given_back_only_when_idle() {
        let (ours, mut peer) = tokio::io::duplex(4096);
        let mut core = Core::new(ours, Connection::server(wsx_proto::Config::default(), now()), BytesMut::new());

        // Waiting for the first message: nothing held.
        assert!(recv(&mut core).await.is_pending());
        assert_eq!(core.read.buf.capacity(), 0);

        // A message arrives: it is read, and the next read, which finds nothing, keeps the buffer.
        round_trip(&mut core, &mut peer, b"hello").await;
        assert!(recv(&mut core).await.is_pending());
        assert!(core.read.buf.capacity() > 0, "a busy connection's buffer was released");

        // Woken again with nothing new (a timer, say): now it is idle, and the buffer goes.
        assert!(recv(&mut core).await.is_pending());
        assert_eq!(core.read.buf.capacity(), 0);

        // And it reads on as before.
        round_trip(&mut core, &mut peer, b"again").await;
        assert!(recv(&mut core).await.is_pending());

        // A connection that mostly sends (a room's subscriber) is busy too: queued output keeps
        // the buffer through the read after it, and through the next wake's read, which a
        // `select!` may poll before it sends again.
        for _ in 0..3 {
            core.queue(Message::Binary(bytes::Bytes::from_static(b"news"))).unwrap();
            for _ in 0..2 {
                assert!(recv(&mut core).await.is_pending());
                assert!(core.read.buf.capacity() > 0, "a sending connection's buffer was released");
            }
        }
        // Until it stops sending.
        assert!(recv(&mut core).await.is_pending());
        assert_eq!(core.read.buf.capacity(), 0);
    }

    /// Once a message has been handled and dropped, the next read lands at the start of the
    /// same buffer: a busy connection reuses the memory it just used (in cache) rather than
    /// walking through its whole buffer a read at a time. Messages are slices of the read
    /// buffer, so where each payload sits shows where its read landed.
    #[tokio::test]
    async fn reads_land_at_the_start_of_the_buffer_once_everything_is_handled() {
        let (ours, mut peer) = tokio::io::duplex(4096);
        let mut core = Core::new(ours, Connection::server(wsx_proto::Config::default(), now()), BytesMut::new());
        let mut landed = Vec::new();
        for _ in 0..8 {
            peer.write_all(&masked(b"steady traffic")).await.unwrap();
            match recv(&mut core).await {
                Poll::Ready(Some(Ok(Message::Binary(b)))) => landed.push(b.as_ptr() as usize),
                other => panic!("{other:?}"),
            }
        }
        assert!(landed.windows(2).all(|w| w[0] == w[1]), "reads walked through the buffer: {landed:x?}");

        // While a message is still held, its bytes are not overwritten: the next read lands after them.
        peer.write_all(&masked(b"kept")).await.unwrap();
        let Poll::Ready(Some(Ok(Message::Binary(kept)))) = recv(&mut core).await else { panic!("no message") };
        peer.write_all(&masked(b"next")).await.unwrap();
        let Poll::Ready(Some(Ok(Message::Binary(next)))) = recv(&mut core).await else { panic!("no message") };
        assert_eq!((&kept[..], &next[..]), (&b"kept"[..], &b"next"[..]));
        assert_ne!(kept.as_ptr(), next.as_ptr());
    }

    /// A buffer grown for a large frame is not kept for the next message, busy or not.
    #[tokio::test]
    async fn a_buffer_grown_for_a_large_frame_is_given_back_once_empty() {
        const SIZE: usize = 1 << 20;
        let (ours, mut peer) = tokio::io::duplex(SIZE + 64);
        let mut core = Core::new(ours, Connection::server(wsx_proto::Config::default(), now()), BytesMut::new());
        peer.write_all(&masked_long(&vec![0; SIZE])).await.unwrap();
        let message: Option<Result<Message, Error>> = Some(Ok(next_message(&mut core).await));
        assert!(matches!(message, Some(Ok(Message::Binary(ref b))) if b.len() == SIZE));
        assert!(core.read.large);
        drop(message);
        // The next read, right after the message: busy, but the large buffer is not kept; one
        // of ordinary size takes its place.
        assert!(recv(&mut core).await.is_pending());
        assert!(!core.read.large);
        assert!(core.read.buf.capacity() <= MAX_READ, "kept a {} B buffer", core.read.buf.capacity());
        round_trip(&mut core, &mut peer, b"small again").await;
    }

    /// A frame larger than a read gets room for the rest of it in one step once its header and
    /// a read's worth have arrived, instead of growing (and copying what it holds) read by read:
    /// its bytes then arrive in place, and the message is a slice of that one buffer.
    #[tokio::test]
    async fn a_large_frame_gets_room_for_its_rest_in_one_step() {
        const SIZE: usize = 1 << 20;
        let (ours, mut peer) = tokio::io::duplex(SIZE + 64);
        let mut core = Core::new(ours, Connection::server(wsx_proto::Config::default(), now()), BytesMut::new());
        core.read.read_size = MAX_READ as u32;
        let payload: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
        let frame = masked_long(&payload);
        let first = MAX_READ;
        peer.write_all(&frame[..first]).await.unwrap();
        assert!(recv(&mut core).await.is_pending());
        assert!(core.read.buf.capacity() >= SIZE, "room for {} B of a {SIZE} B frame", core.read.buf.capacity());
        let start = core.read.buf.as_ptr() as usize;
        for piece in frame[first..].chunks(100 * 1024) {
            peer.write_all(piece).await.unwrap();
            if core.read.buf.len() + piece.len() < SIZE {
                assert!(recv(&mut core).await.is_pending());
                assert_eq!(core.read.buf.as_ptr() as usize, start, "the buffer moved while the frame arrived");
            }
        }
        match next_message(&mut core).await {
            Message::Binary(b) => {
                assert!(b[..] == payload[..], "the payload arrived changed");
                assert_eq!(b.as_ptr() as usize, start, "the message is not the buffer its bytes arrived in");
            }
            other => panic!("{other:?}"),
        }
    }

    /// The room set aside for a frame follows what has arrived of it, not its declared length. A
    /// peer that declares a 4 MiB frame and stalls holds what ordinary reads hold (at most about
    /// twice what it sent, plus a read) until a fifth of the frame is here; then the frame's own
    /// length, never more than five times what it sent. (Literal ratios: raising `FRAME_AHEAD`
    /// must fail here, since it loosens the documented bound.)
    #[tokio::test]
    async fn a_declared_frame_gets_room_only_as_its_bytes_arrive() {
        const DECLARED: usize = 4 << 20;
        let (ours, mut peer) = tokio::io::duplex(DECLARED);
        let mut core = Core::new(ours, Connection::server(wsx_proto::Config::default(), now()), BytesMut::new());
        core.read.read_size = MAX_READ as u32;
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(DECLARED as u64).to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        peer.write_all(&header).await.unwrap();
        let mut arrived = 0;
        let mut send = async |core: &mut Core<_>, n: usize, arrived: &mut usize| {
            peer.write_all(&vec![0; n]).await.unwrap();
            *arrived += n;
            while core.read.buf.len() < *arrived {
                assert!(recv(core).await.is_pending());
            }
            assert!(recv(core).await.is_pending());
            core.read.buf.capacity()
        };
        // A little: a read's worth of room, not the declared length.
        let cap = send(&mut core, 1000, &mut arrived).await;
        assert_eq!(core.conn.frame_bytes_due(), DECLARED - 1000);
        assert!(cap <= MAX_READ + 1000, "{cap} B set aside for 1000 B");
        // Just under a fifth of the frame: still the ordinary growth.
        let cap = send(&mut core, DECLARED / 5 - 1000 - 4096, &mut arrived).await;
        assert!(cap <= 2 * arrived + MAX_READ, "{cap} B set aside for {arrived} B");
        assert!(cap < DECLARED, "the whole frame was set aside at {arrived} B of {DECLARED}");
        // Past a fifth: the whole frame, exactly, and no more than five times what arrived.
        let cap = send(&mut core, 8192, &mut arrived).await;
        assert_eq!(cap, DECLARED, "{arrived} B of {DECLARED} arrived");
        assert!(cap <= 5 * arrived);
    }

    /// A masked binary frame of `payload` (any length).
    fn masked_long(payload: &[u8]) -> Vec<u8> {
        let key = [9, 8, 7, 6];
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        frame
    }

    /// Reads into a new buffer while the messages of the last one are still held, with a frame
    /// cut off at its end (its header already consumed): every byte arrives, in order.
    #[tokio::test]
    async fn a_frame_cut_off_by_a_read_moves_whole_into_the_next_buffer() {
        let (ours, mut peer) = tokio::io::duplex(1 << 21);
        let mut core = Core::new(ours, Connection::server(wsx_proto::Config::default(), now()), BytesMut::new());
        core.read.read_size = MAX_READ as u32;
        let payloads: Vec<Vec<u8>> = (0..6u8)
            .map(|m| (0..64 * 1024 + 7).map(|i| (i as u8).wrapping_mul(31).wrapping_add(m)).collect())
            .collect();
        for p in &payloads {
            peer.write_all(&masked_long(p)).await.unwrap();
        }
        let mut held = Vec::new();
        while held.len() < payloads.len() {
            match next_message(&mut core).await {
                Message::Binary(b) => held.push(b),
                other => panic!("{other:?}"),
            }
        }
        for (i, (got, sent)) in held.iter().zip(&payloads).enumerate() {
            assert!(got[..] == sent[..], "message {i} differs");
        }
        // The buffer the cut-off frame left: the spare, holding the first messages' allocation.
        assert!(core.read.spare.as_ref().is_some_and(|b| b.capacity() > 0), "the reads never needed a second buffer");
    }

    /// A keepalive ping written at once is not activity: a connection woken only to ping is
    /// idle, and gives its buffer back.
    #[tokio::test]
    async fn a_keepalive_ping_does_not_keep_a_connection_busy() {
        let (ours, mut peer) = tokio::io::duplex(4096);
        let mut config = wsx_proto::Config::default();
        // Long enough that a stalled test thread does not see the ping due early.
        config.keepalive_interval = Some(Duration::from_millis(500));
        let mut core = Core::new(ours, Connection::server(config, now()), BytesMut::new());
        round_trip(&mut core, &mut peer, b"hello").await;
        assert!(recv(&mut core).await.is_pending());
        assert!(core.read.buf.capacity() > 0);
        tokio::time::sleep(Duration::from_millis(700)).await;
        let written = core.conn.output().written();
        assert!(recv(&mut core).await.is_pending());
        assert!(core.conn.output().written() > written, "no ping was written");
        assert_eq!(core.read.buf.capacity(), 0, "kept its buffer after a wake that only pinged");
    }

    /// A buffer grown for a large frame, with the next frame's beginning behind it (so it is
    /// never empty at a pause): that beginning moves to a buffer of ordinary size, intact.
    #[tokio::test]
    async fn a_large_buffer_is_left_with_the_next_frame_intact() {
        let (ours, mut peer) = tokio::io::duplex(1 << 22);
        let mut core = Core::new(ours, Connection::server(wsx_proto::Config::default(), now()), BytesMut::new());
        let big: Vec<u8> = (0..(1usize << 20)).map(|i| (i % 251) as u8).collect();
        let next: Vec<u8> = (0..100_000usize).map(|i| (i % 241) as u8).collect();
        let next_frame = masked_long(&next);
        let mut wire = masked_long(&big);
        wire.extend_from_slice(&next_frame[..50_000]);
        peer.write_all(&wire).await.unwrap();
        let Message::Binary(first) = next_message(&mut core).await else { panic!("not binary") };
        assert!(first[..] == big[..], "the large frame was damaged");
        assert!(recv(&mut core).await.is_pending());
        assert!(!core.read.large, "still holding the large buffer");
        assert!(core.read.buf.capacity() <= 50_000 + MAX_READ, "kept a {} B buffer", core.read.buf.capacity());
        peer.write_all(&next_frame[50_000..]).await.unwrap();
        let Message::Binary(second) = next_message(&mut core).await else { panic!("not binary") };
        assert!(second[..] == next[..], "the frame behind the large one was damaged");
    }

    /// After large messages, small ones: the large buffers are not kept for them.
    #[tokio::test]
    async fn buffers_shrink_back_when_large_messages_stop() {
        let (ours, mut peer) = tokio::io::duplex(1 << 21);
        let mut core = Core::new(ours, Connection::server(wsx_proto::Config::default(), now()), BytesMut::new());
        core.read.read_size = MAX_READ as u32;
        for _ in 0..8 {
            peer.write_all(&masked_long(&[5; 64 * 1024])).await.unwrap();
        }
        let mut held = Vec::new();
        while held.len() < 8 {
            held.push(next_message(&mut core).await);
        }
        drop(held);
        for i in 0..40u8 {
            round_trip(&mut core, &mut peer, &[i; 11]).await;
        }
        assert!(core.read.spare.is_none(), "small traffic kept the spare");
        assert!(core.read.buf.capacity() <= 64 * 1024, "small traffic kept a {} B buffer", core.read.buf.capacity());
    }

    /// The pong answering our keepalive ping is no exchange: the read that follows it, finding
    /// nothing, gives the buffers back (the pong used to keep them until the next ping).
    #[tokio::test]
    async fn a_keepalive_pong_does_not_keep_a_connection_busy() {
        let (ours, mut peer) = tokio::io::duplex(4096);
        let mut core = Core::new(ours, Connection::server(wsx_proto::Config::default(), now()), BytesMut::new());
        round_trip(&mut core, &mut peer, b"hello").await;
        assert!(recv(&mut core).await.is_pending());
        assert!(recv(&mut core).await.is_pending());
        assert_eq!(core.read.buf.capacity(), 0, "idle after two empty reads");
        // A pong alone, then nothing: idle again at once.
        let mut pong = masked(b"keepalive");
        pong[0] = 0x8A;
        peer.write_all(&pong).await.unwrap();
        match recv(&mut core).await {
            Poll::Ready(Some(Ok(Message::Pong(p)))) => assert_eq!(&p[..], b"keepalive"),
            other => panic!("{other:?}"),
        }
        assert!(recv(&mut core).await.is_pending());
        assert_eq!(core.read.buf.capacity(), 0, "kept its buffer after a pong");
        // A pong with a message behind it in the same read is part of an exchange.
        let mut both = pong.clone();
        both.extend_from_slice(&masked(b"data"));
        peer.write_all(&both).await.unwrap();
        assert!(matches!(recv(&mut core).await, Poll::Ready(Some(Ok(Message::Pong(_))))));
        assert!(matches!(recv(&mut core).await, Poll::Ready(Some(Ok(Message::Binary(_))))));
        assert!(recv(&mut core).await.is_pending());
        assert!(core.read.buf.capacity() > 0, "a message arrived: the buffer stays for the next");
    }

    /// Output leaving is activity too: a connection woken to write more of a reply, with nothing
    /// new to read, keeps its buffer; one woken twice with nothing to read or write is idle.
    #[tokio::test]
    async fn a_connection_whose_output_is_leaving_is_not_idle() {
        use tokio::io::AsyncReadExt;
        let (ours, mut peer) = tokio::io::duplex(64);
        let mut core = Core::new(ours, Connection::server(wsx_proto::Config::default(), now()), BytesMut::new());
        round_trip(&mut core, &mut peer, b"hello").await;
        // A reply larger than the pipe: each poll writes what the peer has made room for.
        core.queue(Message::Binary(bytes::Bytes::from(vec![7u8; 200]))).unwrap();
        assert!(recv(&mut core).await.is_pending());
        let mut sink = [0u8; 64];
        let mut taken = 0;
        while !core.conn.output().is_empty() {
            taken += peer.read(&mut sink).await.unwrap();
            assert!(recv(&mut core).await.is_pending());
            assert!(core.read.buf.capacity() > 0, "released while its output was leaving ({taken} B taken)");
        }
        while taken < 204 {
            taken += peer.read(&mut sink).await.unwrap();
        }
        // The last write resumed: the next wake's read still counts as busy (see `SENDING`);
        // the one after, with nothing to read or write, is idle.
        assert!(recv(&mut core).await.is_pending());
        assert!(core.read.buf.capacity() > 0);
        assert!(recv(&mut core).await.is_pending());
        assert_eq!(core.read.buf.capacity(), 0);
    }

    /// Records how it was written to: plain writes and vectored writes (with their buffers).
    #[derive(Default)]
    struct Writes {
        plain: usize,
        vectored: Vec<usize>,
        bytes: Vec<u8>,
    }

    impl AsyncWrite for Writes {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.plain += 1;
            self.bytes.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.vectored.push(bufs.len());
            let mut n = 0;
            for b in bufs {
                self.bytes.extend_from_slice(b);
                n += b.len();
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Output in one piece goes out in a plain write (`send(2)` on a socket); output in several
    /// (a large payload queued without a copy) in a vectored one, and nothing is lost either way.
    #[tokio::test]
    async fn one_piece_is_a_plain_write_and_several_a_vectored_one() {
        let mut conn = Connection::server(wsx_proto::Config::default(), now());
        let mut w = Writes::default();
        // Nothing to write: no write at all, and no error.
        let n = std::future::poll_fn(|cx| poll_write_out(&mut w, cx, conn.output())).await.unwrap();
        assert_eq!((n, w.plain, w.vectored.len()), (0, 0, 0));

        conn.send(Message::binary(&b"small"[..])).unwrap();
        conn.send(Message::text("frames")).unwrap();
        let n = std::future::poll_fn(|cx| poll_write_out(&mut w, cx, conn.output())).await.unwrap();
        assert_eq!((w.plain, w.vectored.len()), (1, 0));
        assert_eq!(n, 7 + 8);
        assert!(conn.output().is_empty());

        let big = vec![7u8; 64 * 1024];
        conn.send(Message::binary(big.clone())).unwrap();
        let mut sent = 0;
        while !conn.output().is_empty() {
            sent += std::future::poll_fn(|cx| poll_write_out(&mut w, cx, conn.output())).await.unwrap();
        }
        assert_eq!(w.plain, 1, "a header and a separate payload were written one by one");
        assert!(w.vectored.first().is_some_and(|&bufs| bufs >= 2), "{:?}", w.vectored);
        assert_eq!(sent, 10 + big.len());
        assert_eq!(&w.bytes[w.bytes.len() - big.len()..], &big[..]);
    }
}
