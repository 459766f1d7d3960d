//! The generator's connection driver: the protocol core ([`wsx::proto::Connection`]) run over
//! the stream directly, after the library's client has done the handshake.
//!
//! A generator does the same thing for every read: take a read's worth of frames, check each,
//! queue the next messages, write them in one go. The library's `WebSocket` serves an
//! application one message per `recv` future, with its timers re-armed on each; here one clock
//! reading and one pass over the buffer serve the whole read, and writing never waits for
//! reading or the other way round (a generator must keep reading echoes while its own output
//! is blocked, or it and a server that does the same would wait on each other). Framing,
//! masking, UTF-8 checks, permessage-deflate, pings and the close handshake stay the core's
//! (but see [`Wire::next`] for `--raw`, where our own frames come back from a byte echo).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use wsx::proto::{CloseCode, CloseFrame, Connection, FrameHeader, MessageRef, OpCode, State};
use wsx::WebSocket;

/// Bytes asked of the stream per read: the size starts at the least, doubles (up to the most)
/// while reads fill the room they are given, and halves while they bring much less, so that a
/// large frame arrives in few reads into a buffer that grows by doubling, not 64 KiB at a time
/// (each growth copies what has arrived).
const MIN_READ: usize = 64 * 1024;
const MAX_READ: usize = 4 << 20;

/// Read buffers a generator thread keeps for its connections at most (see [`SPARE_READS`]).
const MAX_SPARE_READS: usize = 4;

thread_local! {
    /// The generator thread's read buffers, lent to a connection while it reads and handles what
    /// it read, and given back once all of it was handled: the kernel copies every read into the
    /// same few cache-warm KiB, not into one buffer per connection (64 connections' buffers do
    /// not stay in cache). Only a connection left holding part of a frame keeps a buffer until
    /// the rest arrives; then more than one is in use, and up to [`MAX_SPARE_READS`] are kept
    /// for reuse rather than freed and allocated again (large ones would be faulted in anew).
    static SPARE_READS: std::cell::RefCell<Vec<BytesMut>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One connection, driven by the generator.
pub struct Wire<S> {
    stream: S,
    conn: Connection,
    /// `--raw`: a byte echo returns our frames masked, as a client sends them; a server-role
    /// core reads them (it requires the mask a client-role core would refuse). Replies the
    /// decoder queues (pongs, close echoes) are never sent: a byte echo would echo them.
    decoder: Option<Connection>,
    /// `--raw`: whole data frames of ours are still taken apart here (see [`Wire::next`]);
    /// false for good once anything else arrived, which the decoder then reads.
    raw_frames: bool,
    /// `--raw`: bytes at the front of `buf` lent by the last [`Wire::next`], removed by the next
    /// call (or read).
    lent: usize,
    buf: BytesMut,
    /// Bytes to ask of the next read (see [`MIN_READ`]).
    read_size: usize,
    /// Bytes were written since the stream was last flushed: a TLS stream may hold the last
    /// records until it is (plain TCP holds nothing, and its flush costs nothing).
    unflushed: bool,
    eof: bool,
}

/// A message [`Wire::next`] lends.
#[derive(Debug)]
pub enum Echo<'a> {
    /// As the core reads it (unmasked, validated).
    Message(MessageRef<'a>),
    /// `--raw`: one of our own whole data frames back from a byte echo, its payload still
    /// masked with `key`.
    Masked {
        /// A text frame.
        text: bool,
        /// The payload, masked.
        data: &'a [u8],
        /// Its masking key.
        key: [u8; 4],
    },
}

/// Where a whole data frame lies in a buffer, and its key (see [`whole_data_frame`]).
struct DataFrame {
    text: bool,
    start: usize,
    end: usize,
    key: [u8; 4],
}

/// The frame at the start of `buf` if it is a whole masked data frame as a client sends it:
/// final, no RSV bits, a payload of at most `limit` bytes. `Some(None)` while more of such a
/// frame is to come (its declared length is within `limit`, so waiting is bounded); `None` for
/// any other frame (or a malformed header), which is left for a full core to judge.
fn whole_data_frame(buf: &[u8], limit: usize) -> Option<Option<DataFrame>> {
    let (head, start) = match FrameHeader::parse(buf) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Some(None),
        Err(_) => return None,
    };
    let text = match head.opcode {
        OpCode::Text => true,
        OpCode::Binary => false,
        _ => return None,
    };
    let (true, false, false, false, Some(key)) = (head.fin, head.rsv1, head.rsv2, head.rsv3, head.mask) else {
        return None;
    };
    let len = usize::try_from(head.payload_len).ok().filter(|&len| len <= limit)?;
    let end = start.checked_add(len)?;
    if buf.len() < end {
        return Some(None);
    }
    Some(Some(DataFrame { text, start, end, key }))
}

/// What [`Wire::io`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// New bytes were read.
    Read,
    /// The peer ended the stream.
    Eof,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    /// Takes over a connection the library's client has opened.
    pub fn new(ws: WebSocket<S>) -> Self {
        let (stream, conn, buf) = ws.into_parts();
        Self {
            stream,
            conn,
            decoder: None,
            raw_frames: false,
            lent: 0,
            buf,
            read_size: MIN_READ,
            unflushed: false,
            eof: false,
        }
    }

    /// A client over a byte echo (`--raw`): no handshake; `conn` masks what it sends, and a
    /// server-role core with the same settings reads it back.
    pub fn raw(stream: S, conn: Connection) -> Self {
        let decoder = Connection::server(conn.config().clone(), Instant::now());
        Self {
            stream,
            conn,
            decoder: Some(decoder),
            raw_frames: true,
            lent: 0,
            buf: BytesMut::new(),
            read_size: MIN_READ,
            unflushed: false,
            eof: false,
        }
    }

    /// Queues the run's message `seq`, scheduled at `sched_ns`, framed straight from its header
    /// and filler ([`Payloads::send`](super::payload::Payloads::send)).
    pub fn send_payload(
        &mut self,
        payloads: &super::payload::Payloads,
        seq: u64,
        sched_ns: u64,
    ) -> Result<(), wsx::proto::Error> {
        payloads.send(&mut self.conn, seq, sched_ns)
    }

    /// Whether permessage-deflate was negotiated.
    pub fn is_deflate(&self) -> bool {
        self.conn.is_deflate()
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.conn.pending_output()
    }

    /// The next complete message in what has been read (pings are answered by the core),
    /// `None` when more bytes are needed. A message in one frame is lent from the read buffer
    /// ([`Connection::read_ref`]): the generator checks each echo where it landed.
    ///
    /// `--raw`: the byte echo returns our frames as they left, masked. A whole data frame (final,
    /// no RSV bits, masked, within the limits) is lent as it is, with its key, for
    /// [`Payloads::check_masked`](super::payload::Payloads::check_masked) to check in one pass:
    /// unmasking it first would be a second. A text frame's UTF-8 is not validated on its own:
    /// only a byte-exact copy of what we sent (valid UTF-8) passes the check, and anything else
    /// is counted as a mismatch (the connection goes on) rather than failing it with 1007. The
    /// header is the core's to parse ([`FrameHeader::parse`]). From the first frame that is
    /// anything else on, the decoder reads everything, with every rule and limit of a
    /// server-role core.
    pub fn next(&mut self, now: Instant) -> Result<Option<Echo<'_>>, wsx::proto::Error> {
        let Some(decoder) = &mut self.decoder else {
            return Ok(self.conn.read_ref(&mut self.buf, now)?.map(Echo::Message));
        };
        if self.raw_frames {
            self.buf.advance(std::mem::take(&mut self.lent));
            let limit = decoder.config().max_frame_size.min(decoder.config().max_message_size);
            match whole_data_frame(&self.buf, limit) {
                Some(Some(frame)) => {
                    self.lent = frame.end;
                    let data = &self.buf[frame.start..frame.end];
                    return Ok(Some(Echo::Masked { text: frame.text, data, key: frame.key }));
                }
                Some(None) => return Ok(None),
                None => self.raw_frames = false,
            }
        }
        Ok(decoder.read_ref(&mut self.buf, now)?.map(Echo::Message))
    }

    /// Writes what it can of the queued output, and waits until a read brings new bytes or the
    /// stream ends. Cancel-safe: all progress lives in `self`.
    pub async fn io(&mut self) -> io::Result<Io> {
        poll_fn(|cx| {
            let Self { stream, conn, buf, eof, read_size, unflushed, lent, .. } = self;
            // What `next` lent is handled by now.
            buf.advance(std::mem::take(lent));
            let out = conn.output();
            while out.has_remaining() {
                match wsx::poll_write_out(&mut *stream, cx, out) {
                    Poll::Ready(Ok(_)) => *unflushed = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
            if !out.has_remaining() && *unflushed {
                match Pin::new(&mut *stream).poll_flush(cx) {
                    Poll::Ready(Ok(())) => *unflushed = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    // Registered: the stream wakes us when it can take more.
                    Poll::Pending => {}
                }
            }
            if *eof {
                return Poll::Ready(Ok(Io::Eof));
            }
            if buf.is_empty() {
                if buf.capacity() == 0 {
                    if let Some(spare) = SPARE_READS.with_borrow_mut(Vec::pop) {
                        *buf = spare;
                    }
                }
                if buf.capacity() > 2 * MAX_READ {
                    // A large message has gone through: do not keep its buffer.
                    *buf = BytesMut::new();
                } else {
                    // Everything read has been handled: the next read lands at the start of
                    // the allocation (moving nothing), so that the thread keeps reusing the same
                    // few KiB rather than walking through the whole buffer.
                    let _ = buf.try_reclaim(buf.capacity() + 1);
                }
            }
            if buf.capacity() - buf.len() < *read_size / 2 {
                buf.reserve(*read_size);
            }
            let room = buf.capacity() - buf.len();
            match tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, buf) {
                Poll::Ready(Ok(0)) => {
                    *eof = true;
                    Poll::Ready(Ok(Io::Eof))
                }
                Poll::Ready(Ok(n)) => {
                    if n >= room {
                        *read_size = (*read_size * 2).min(MAX_READ);
                    } else if n < *read_size / 4 {
                        *read_size = (*read_size / 2).max(MIN_READ);
                    }
                    Poll::Ready(Ok(Io::Read))
                }
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    *eof = true;
                    Poll::Ready(Ok(Io::Eof))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => {
                    if buf.is_empty() && buf.capacity() > 0 {
                        let spare = std::mem::take(buf);
                        SPARE_READS.with_borrow_mut(|spares| {
                            if spares.len() < MAX_SPARE_READS {
                                spares.push(spare);
                            }
                        });
                    }
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Ends the connection: the closing handshake (send 1000, read until the peer's close and
    /// the end of the stream), each wait bounded by `deadline`. A byte echo (`--raw`) just has
    /// the stream shut down.
    pub async fn close(&mut self, deadline: Instant) {
        let work = async {
            if self.decoder.is_none() && self.conn.state() == State::Open {
                let _ = self.conn.close(Some(CloseFrame::new(CloseCode::NORMAL, "")), Instant::now());
            }
            if self.decoder.is_none() {
                // Read (and drop) what is still in flight until the peer's close or the end.
                loop {
                    loop {
                        match self.next(Instant::now()) {
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(_) => return,
                        }
                    }
                    if self.conn.state() == State::Closed && self.pending() == 0 {
                        break;
                    }
                    match self.io().await {
                        Ok(Io::Read) => {}
                        Ok(Io::Eof) | Err(_) => return,
                    }
                }
            }
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.stream).await;
        };
        let _ = tokio::time::timeout_at(deadline.into(), work).await;
    }
}

#[cfg(test)]
mod tests {
    use super::super::payload::Payloads;
    use super::*;
    use std::future::Future as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

    fn raw_wire(stream: DuplexStream) -> Wire<DuplexStream> {
        let mut key = 0x1234_5678u32;
        let keys = move || {
            key = key.rotate_left(7) ^ 0x9e37_79b9;
            key.to_le_bytes()
        };
        Wire::raw(stream, Connection::client(wsx::proto::Config::default(), Instant::now(), keys))
    }

    /// Polls `wire.io()` once: `None` when it would wait.
    async fn io_now(wire: &mut Wire<DuplexStream>) -> Option<io::Result<Io>> {
        let mut io = std::pin::pin!(wire.io());
        poll_fn(|cx| {
            Poll::Ready(match io.as_mut().poll(cx) {
                Poll::Ready(r) => Some(r),
                Poll::Pending => None,
            })
        })
        .await
    }

    /// The allocation of the spare read buffer the thread lends next (null when it has none).
    fn shared_read() -> *const u8 {
        SPARE_READS.with_borrow(|spares| spares.last().map_or(std::ptr::null(), |b| b.as_ptr()))
    }

    /// Sends message `seq` on `wire` and has `peer` echo the frame's bytes back: `at_once` of
    /// them, or all.
    async fn echo(
        wire: &mut Wire<DuplexStream>,
        peer: &mut DuplexStream,
        payloads: &Payloads,
        seq: u64,
        at_once: Option<usize>,
    ) {
        wire.send_payload(payloads, seq, 7).unwrap();
        let len = wire.pending();
        assert!(io_now(wire).await.is_none(), "nothing to read yet");
        assert_eq!(wire.pending(), 0, "the frame was written");
        let mut frame = vec![0; len];
        peer.read_exact(&mut frame).await.unwrap();
        peer.write_all(&frame[..at_once.unwrap_or(len)]).await.unwrap();
    }

    /// A client core's frames for `messages`, as bytes (masked).
    fn client_frames(messages: Vec<wsx::proto::Message>) -> Vec<u8> {
        let mut client = Connection::client(wsx::proto::Config::default(), Instant::now(), || [9, 8, 7, 6]);
        for m in messages {
            client.send(m).unwrap();
        }
        let out = client.output();
        out.copy_to_bytes(out.remaining()).to_vec()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_byte_echo_s_frames_other_than_whole_data_frames_go_to_a_full_core_for_good() {
        use wsx::proto::Message;
        let (wire, mut peer) = tokio::io::duplex(1 << 16);
        let mut wire = raw_wire(wire);
        let frames = client_frames(vec![
            Message::binary(&b"first"[..]),
            Message::Ping(bytes::Bytes::from_static(b"p")),
            Message::binary(&b"after"[..]),
        ]);
        peer.write_all(&frames).await.unwrap();
        assert_eq!(io_now(&mut wire).await.unwrap().unwrap(), Io::Read);
        let now = Instant::now();
        match wire.next(now).unwrap() {
            Some(Echo::Masked { text: false, data, key: [9, 8, 7, 6] }) => {
                assert!(wsx::proto::mask::masked_eq(data, b"first", [9, 8, 7, 6], 0));
            }
            other => panic!("{other:?}"),
        }
        let ping = wire.next(now).unwrap();
        assert!(matches!(ping, Some(Echo::Message(MessageRef::Owned(Message::Ping(p)))) if &p[..] == b"p"));
        // From there on, the core reads (and unmasks) data frames too.
        assert!(matches!(wire.next(now).unwrap(), Some(Echo::Message(MessageRef::Binary(b"after")))));
        assert!(wire.next(now).unwrap().is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_byte_echo_s_frame_over_the_limit_is_refused_before_its_payload() {
        let (wire, mut peer) = tokio::io::duplex(1 << 16);
        let mut wire = raw_wire(wire);
        let limit = wsx::proto::Config::default().max_frame_size as u64;
        // A masked binary frame's header declaring one byte over the limit, and no payload.
        let mut head = [0u8; wsx::proto::frame::MAX_HEADER_LEN];
        let n = FrameHeader::new(OpCode::Binary, limit + 1, Some([1, 2, 3, 4])).encode(&mut head);
        peer.write_all(&head[..n]).await.unwrap();
        assert_eq!(io_now(&mut wire).await.unwrap().unwrap(), Io::Read);
        let err = wire.next(Instant::now()).unwrap_err();
        assert!(matches!(err, wsx::proto::Error::Limit(_)), "{err:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connections_on_one_thread_read_into_one_buffer_and_keep_only_a_partial_frame() {
        let payloads = Payloads::new(1024, false).unwrap();
        let (a, mut a_peer) = tokio::io::duplex(1 << 16);
        let (b, mut b_peer) = tokio::io::duplex(1 << 16);
        let (mut a, mut b) = (raw_wire(a), raw_wire(b));
        assert!(shared_read().is_null());

        echo(&mut a, &mut a_peer, &payloads, 1, None).await;
        assert_eq!(io_now(&mut a).await.unwrap().unwrap(), Io::Read);
        let read_into = a.buf.as_ptr();
        let Some(Echo::Masked { text: false, data, key }) = a.next(Instant::now()).unwrap() else { panic!("no echo") };
        assert_eq!(payloads.check_masked(false, data, key), Ok((1, 7)));
        assert!(a.next(Instant::now()).unwrap().is_none());
        // All of it handled: waiting for more gives the buffer back to the thread.
        assert!(io_now(&mut a).await.is_none());
        assert_eq!(a.buf.capacity(), 0, "an idle connection holds no read buffer");
        assert_eq!(shared_read(), read_into);

        // The next connection to read lands in the same allocation.
        echo(&mut b, &mut b_peer, &payloads, 2, None).await;
        assert_eq!(io_now(&mut b).await.unwrap().unwrap(), Io::Read);
        assert_eq!(b.buf.as_ptr(), read_into);
        assert!(shared_read().is_null(), "lent to one connection at a time");
        let Some(Echo::Masked { text: false, data, key }) = b.next(Instant::now()).unwrap() else { panic!("no echo") };
        assert_eq!(payloads.check_masked(false, data, key), Ok((2, 7)));
        assert!(b.next(Instant::now()).unwrap().is_none());
        assert!(io_now(&mut b).await.is_none());
        assert_eq!(shared_read(), read_into);

        // Part of a frame stays with its connection (and the buffer with it) until the rest comes.
        echo(&mut a, &mut a_peer, &payloads, 3, Some(100)).await;
        assert_eq!(io_now(&mut a).await.unwrap().unwrap(), Io::Read);
        assert!(a.next(Instant::now()).unwrap().is_none());
        assert!(io_now(&mut a).await.is_none());
        // (The whole partial frame, header and all, stays in the buffer.)
        assert!(!a.buf.is_empty());
        assert!(shared_read().is_null());
        // Meanwhile another connection reads into a buffer of its own.
        echo(&mut b, &mut b_peer, &payloads, 4, None).await;
        assert_eq!(io_now(&mut b).await.unwrap().unwrap(), Io::Read);
        assert_ne!(b.buf.as_ptr(), a.buf.as_ptr());
        assert!(b.next(Instant::now()).unwrap().is_some());
        assert!(io_now(&mut b).await.is_none());
    }
}
