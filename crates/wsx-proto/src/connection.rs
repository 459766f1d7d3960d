//! The connection state machine (RFC 6455 §5–§7), for either role, after the opening handshake.
//!
//! Bytes in, events out; messages in, bytes out; time in, timeouts out. The connection never
//! touches a socket, a clock or an RNG: the driver passes `now` to the calls that need it, and a
//! client connection draws its mask keys from the [`MaskKeySource`] it was given.
//!
//! # States
//!
//! ```text
//!            close() sends Close              peer's Close arrives
//!   Open ───────────────────────► Closing ─────────────────────────► Closed
//!    │                                     close timeout ──────────► Closed
//!    │ peer's Close arrives: echo it, ─────────────────────────────► Closed
//!    │ protocol error / limit: send Close(1002/1007/1009) ─────────► Closed
//!    └ keepalive or idle timeout ──────────────────────────────────► Closed
//! ```
//!
//! | state     | may send data | reads frames | what the driver does                            |
//! |-----------|---------------|--------------|-------------------------------------------------|
//! | `Open`    | yes           | yes          | reads, writes                                   |
//! | `Closing` | no            | yes          | reads until the peer's Close, writes pending    |
//! | `Closed`  | no            | no (dropped) | flushes pending output, then closes TCP: a server at once; a client after the server closes TCP or the close timeout |
//!
//! # Receiving
//!
//! The driver reads from its transport into a [`BytesMut`] and calls
//! [`Connection::read_event`] with it. The connection consumes exactly the bytes of the frames it
//! parsed. A payload is unmasked in place and handed out as a zero-copy [`Bytes`] slice of that
//! buffer; only the frames of a fragmented message are copied, into one message buffer. A partial
//! frame is unmasked and (for text) UTF-8-checked as it arrives, so an invalid text message fails
//! at its first bad byte and a frame is never buffered beyond what arrived.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use crate::deflate::{DeflateError, PerMessageDeflate};
use crate::error::{Error, LimitError, ProtocolError, TimeoutError, UsageError};
use crate::frame::{CloseCode, FrameHeader, OpCode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use crate::mask::{apply_mask, extend_masked_frame};
use crate::message::{CloseFrame, Message, MessageRef, Utf8Bytes};
use crate::outbuf::OutBuf;
use crate::prepared::PreparedMessage;
use crate::stamp::Stamp;
use crate::stream::{Chunk, StreamEvent};
use crate::utf8::Utf8Validator;

/// Which end of the connection we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// We opened the connection: our frames are masked, the peer's must not be.
    Client,
    /// We accepted the connection: the peer's frames must be masked, ours are not.
    Server,
}

/// The connection's state, named as the browser's `readyState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// The opening handshake is in progress (used by drivers; a [`Connection`] starts `Open`).
    Connecting,
    /// Messages flow both ways.
    Open,
    /// We sent a close frame and wait for the peer's.
    Closing,
    /// The closing handshake is over, or the connection failed. Nothing more is read or sent
    /// beyond what is already pending.
    Closed,
}

/// Limits and timers: every limit of a connection, its opening handshake included, in one place.
/// Every field has a safe default (see each field for the trade-off); [`Config::validate`]
/// checks that they fit together.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// The largest frame payload accepted. Default 16 MiB. A frame declaring more is refused with
    /// 1009 as soon as its header arrives; the driver's read buffer can grow to this size.
    pub max_frame_size: usize,
    /// The largest message accepted, summed over its fragments. Default 64 MiB. A message growing
    /// past it is refused with 1009 before its bytes are buffered.
    pub max_message_size: usize,
    /// The largest size a compressed (permessage-deflate) message may inflate to. Default 4 MiB.
    /// The budget for a compressed message is the smaller of this and `max_message_size`; a
    /// message inflating past it is refused with 1009 before more is allocated.
    ///
    /// Separate from `max_message_size` because DEFLATE expands up to about 1032:1: with
    /// 64 MiB as the budget, 64 KiB on the wire could become 64 MiB of memory and of inflating
    /// work, per message. At 4 MiB, a peer gets at most about 4 MiB of memory and CPU out of
    /// every ~4 KiB it sends; larger compressed messages need a larger value here (raise it
    /// toward `max_message_size` when peers legitimately compress big documents, lower it when
    /// many connections must share little memory). Uncompressed messages are not affected.
    pub max_inflated_message_size: usize,
    /// The most frames one message may have. Default 131,072 (a 4 MiB message in 64-byte frames
    /// takes 65,536). Bounds the CPU a peer can make us spend on tiny frames.
    pub max_fragments: usize,
    /// Send a ping after this long without receiving anything. Default `None` (off).
    pub keepalive_interval: Option<Duration>,
    /// After a keepalive ping, how long to wait for any frame before failing. Default 20 s. A
    /// ping queued behind output the peer has not taken yet gets this long again each time it
    /// would run out while still queued: the peer is not taken for dead while it could not have
    /// answered (the write and slow-reader timeouts bound how long that lasts).
    pub keepalive_timeout: Duration,
    /// Close with 1001 after this long without receiving anything. Default `None` (off).
    pub idle_timeout: Option<Duration>,
    /// After sending a close frame, how long to wait for the peer's before giving up. Default 5 s.
    pub close_timeout: Duration,
    /// The write-buffer high-water mark: while at least this many bytes are pending output, a
    /// driver makes senders wait, and automatic pongs are merged: pings handled while over the
    /// mark share one pong, for the newest (RFC 6455 §5.5.3), held until the output is below
    /// the mark, so a peer that does not read cannot make us queue replies without bound however
    /// long we read. Default 1 MiB: more buffers more per connection, less writes in smaller
    /// pieces.
    pub write_buffer_high_water: usize,
    /// How long pending output may make no progress before the driver gives the connection up
    /// ([`TimeoutError::Write`]): the deadline of every write, including the close echo. The
    /// clock restarts whenever bytes are written, so a slow but live peer is not cut off.
    /// Default 30 s; `None` waits forever (not advised for servers).
    pub write_timeout: Option<Duration>,
    /// The slow-reader bound, for drivers: once pending output reaches the
    /// [high-water mark](Self::write_buffer_high_water), the peer must take a mark's worth of it
    /// (or all of it) within this time, and again for each further mark's worth while the
    /// output stays at the mark; otherwise the driver gives the connection up
    /// ([`TimeoutError::SlowReader`]). That sets the slowest rate a peer may read at while we
    /// have output for it: the mark divided by this time (1 MiB / 60 s ≈ 17 KiB/s). The write
    /// timeout catches a peer that reads nothing; this catches one that reads just enough to
    /// keep it from firing (a trickle that pins a connection's buffer and its sender for ever).
    /// Default `None` (off); `wsx serve` sets 60 s. The window runs in wall time: an
    /// application that leaves output at the mark unflushed (a cancelled `send`, a long pause
    /// between flushes) for longer than this lets the window run out, and the next flush that
    /// cannot finish gives the connection up.
    pub slow_reader_timeout: Option<Duration>,
    /// Bounds on the HTTP head of the opening handshake (the request a server reads, the
    /// response a client reads). Default 16 KiB, 64 header lines; a server answers 431 beyond.
    pub handshake: crate::handshake::HandshakeLimits,
    /// How long the opening handshake may take, for drivers: a server's read of the request
    /// (and its decision), a client's TCP connect plus the exchange. Default 10 s.
    pub handshake_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_frame_size: 16 << 20,
            max_message_size: 64 << 20,
            max_inflated_message_size: 4 << 20,
            max_fragments: 1 << 17,
            keepalive_interval: None,
            keepalive_timeout: Duration::from_secs(20),
            idle_timeout: None,
            close_timeout: Duration::from_secs(5),
            write_buffer_high_water: 1 << 20,
            write_timeout: Some(Duration::from_secs(30)),
            slow_reader_timeout: None,
            handshake: crate::handshake::HandshakeLimits::default(),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// A [`Config`] whose limits contradict each other or cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub &'static str);

impl Config {
    /// Checks that the limits make sense together: every size and count above zero, a frame no
    /// larger than a message, timeouts above zero. Drivers call it once, before a connection
    /// starts (the `wsx` crate does so in `connect` and `accept`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        // A year: far beyond any useful timeout, and far from overflowing `Instant + Duration`.
        const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);
        let timeouts = [self.close_timeout, self.keepalive_timeout, self.handshake_timeout];
        let optional = [self.keepalive_interval, self.idle_timeout, self.write_timeout, self.slow_reader_timeout];
        let checks: [(bool, &'static str); 13] = [
            (self.max_frame_size > 0, "max_frame_size must be above 0"),
            (self.max_message_size > 0, "max_message_size must be above 0"),
            (self.max_frame_size <= self.max_message_size, "max_frame_size must not exceed max_message_size"),
            (self.max_inflated_message_size > 0, "max_inflated_message_size must be above 0"),
            (self.max_fragments > 0, "max_fragments must be above 0"),
            (self.write_buffer_high_water > 0, "write_buffer_high_water must be above 0"),
            (!self.close_timeout.is_zero(), "close_timeout must be above 0"),
            (!self.keepalive_timeout.is_zero(), "keepalive_timeout must be above 0"),
            (!self.handshake_timeout.is_zero(), "handshake_timeout must be above 0"),
            (self.handshake.max_head_bytes > 0, "handshake.max_head_bytes must be above 0"),
            (self.handshake.max_headers > 0, "handshake.max_headers must be above 0"),
            (
                optional.iter().flatten().all(|d| !d.is_zero()),
                "keepalive_interval, idle_timeout, write_timeout and slow_reader_timeout must be above 0 when set",
            ),
            (
                timeouts.iter().chain(optional.iter().flatten()).all(|d| *d <= LONGEST),
                "timeouts and intervals must not exceed a year",
            ),
        ];
        match checks.iter().find(|(ok, _)| !ok) {
            Some((_, why)) => Err(ConfigError(why)),
            None => Ok(()),
        }
    }
}

/// Where a client connection gets the 4-byte masking key of each frame it sends. RFC 6455
/// §10.3 requires keys that the peer cannot predict: use a cryptographically secure RNG.
pub trait MaskKeySource: Send {
    /// The next masking key.
    fn next_key(&mut self) -> [u8; 4];
}

impl<F: FnMut() -> [u8; 4] + Send> MaskKeySource for F {
    fn next_key(&mut self) -> [u8; 4] {
        self()
    }
}

/// What a frame in progress needs of its header: 6 bytes, where a [`FrameHeader`] takes 24 with
/// the declared length (nothing reads it once `PartialFrame::len`, the payload still due, is
/// set) and the reserved bits (already checked). Every connection's state has room for a frame
/// in progress.
#[derive(Debug, Clone, Copy)]
struct Head {
    opcode: OpCode,
    fin: bool,
    /// The masking key, all zeros for an unmasked frame: masking with zeros changes nothing, so
    /// a zero key is skipped like no key. (Not an `Option`: its tag would make a frame in
    /// progress 32 bytes rather than 24.)
    mask: [u8; 4],
}

/// The frame whose header has been parsed and whose payload is still arriving.
#[derive(Debug)]
struct PartialFrame {
    header: Head,
    len: usize,
    /// Payload bytes at the front of the read buffer that are already unmasked and validated.
    done: usize,
    /// Whether this frame's payload is text to validate as it arrives.
    text: bool,
    /// Whether this frame belongs to a compressed message (inflated as it arrives).
    compressed: bool,
}

impl PartialFrame {
    /// The first `n` done payload bytes were removed from the read buffer (handed out as a chunk,
    /// or inflated): the rest of the payload starts `n` bytes further into the frame.
    fn advance(&mut self, n: usize) {
        self.done -= n;
        self.len -= n;
        // The mask key applies from the new start of the payload.
        self.header.mask.rotate_left(n % 4);
    }
}

/// A fragmented message being assembled.
#[derive(Debug)]
struct PartialMessage {
    text: bool,
    /// The message so far: payload bytes, or inflated bytes for a compressed message.
    data: BytesMut,
    fragments: usize,
    /// Compressed (RSV1 on its first frame, permessage-deflate negotiated).
    compressed: bool,
    /// For compressed text: how much of `data` the UTF-8 validator has seen.
    validated: usize,
    /// Bytes of this message already handed out as chunks by [`Connection::read_chunk`] (so the
    /// message's size is `streamed + data.len()` plus the frame in progress).
    streamed: usize,
    /// Whether `read_chunk` is handing this message out (then `data` holds only what is held
    /// back: a split character, or inflated bytes not yet handed out).
    streaming: bool,
    /// Whether a chunk of this message was handed out.
    started: bool,
}

impl PartialMessage {
    fn new(text: bool, compressed: bool, fragments: usize) -> Self {
        Self {
            text,
            data: BytesMut::new(),
            fragments,
            compressed,
            validated: 0,
            streamed: 0,
            streaming: false,
            started: false,
        }
    }
}

/// A compressed message streamed by [`Connection::read_chunk`] is inflated from this many input
/// bytes at a time, and a chunk is handed out once it holds [`STREAM_INFLATED_CHUNK`] bytes: so
/// a chunk stays under 64 KiB + 256 B × 1032 (DEFLATE's largest ratio) ≈ 322 KiB whatever
/// arrived, and near 64 KiB for ordinary data.
const STREAM_INFLATE_STEP: usize = 256;
const STREAM_INFLATED_CHUNK: usize = 64 * 1024;

/// The WebSocket connection state machine for one role. See the [module docs](self).
pub struct Connection {
    role: Role,
    /// Shared: many connections made with the same settings can hold one copy (see the
    /// constructors), which matters when an idle connection is counted in bytes.
    config: Arc<Config>,
    state: State,
    out: OutBuf,
    /// A client's source of masking keys. Boxed twice: a thin pointer (8 bytes, not a trait
    /// object's 16) in every connection, servers included.
    mask_keys: Option<Box<Box<dyn MaskKeySource>>>,
    frame: Option<PartialFrame>,
    /// Boxed, as `close_received`: a pointer while absent keeps an idle connection small. A
    /// fragmented or compressed message under way pays one small allocation for it (beside the
    /// inflating or reassembly it needs anyway).
    message: Option<Box<PartialMessage>>,
    utf8: Utf8Validator,
    /// permessage-deflate state, when negotiated.
    deflate: Option<Box<PerMessageDeflate>>,
    /// A fragmented message we are sending: `Some(is_text)`.
    sending_fragmented: bool,
    close_sent: bool,
    close_received: Option<Box<Option<CloseFrame>>>,
    last_received: Instant,
    /// The deadlines set now and then are [`Stamp`]s: 8 bytes each where an `Option<Instant>`
    /// takes 16, in every connection.
    ping_deadline: Option<Stamp>,
    /// Where our last keepalive ping ends in the output stream ([`OutBuf::written`] counts):
    /// until that much has been written, the peer cannot have answered it.
    ping_end: u64,
    close_deadline: Option<Stamp>,
    pings_sent: u64,
    /// The pong owed for the newest ping, held back while output is over the high-water mark
    /// (older unanswered pings need none); written at the next [`Connection::output`].
    /// (Boxed: rare, and a pointer while absent.)
    held_pong: Option<Box<Bytes>>,
    /// Bytes at the front of the caller's read buffer that [`Connection::read_ref`] has lent
    /// out and not yet removed (removed at the next read, one `advance` for a run of them).
    lent: usize,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("role", &self.role)
            .field("state", &self.state)
            .field("pending_output", &self.out.len())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A server-side connection, open, as of `now`.
    pub fn server(config: Config, now: Instant) -> Self {
        Self::new(Role::Server, Arc::new(config), now, None)
    }

    /// A server-side connection with settings that many connections share: a server with many
    /// idle connections saves a copy of the [`Config`] in each.
    pub fn server_shared(config: Arc<Config>, now: Instant) -> Self {
        Self::new(Role::Server, config, now, None)
    }

    /// A client-side connection, open, as of `now`, masking with keys from `mask_keys`.
    pub fn client(config: Config, now: Instant, mask_keys: impl MaskKeySource + 'static) -> Self {
        Self::new(Role::Client, Arc::new(config), now, Some(Box::new(Box::new(mask_keys))))
    }

    /// A client-side connection with shared settings, as [`Connection::server_shared`].
    pub fn client_shared(config: Arc<Config>, now: Instant, mask_keys: impl MaskKeySource + 'static) -> Self {
        Self::new(Role::Client, config, now, Some(Box::new(Box::new(mask_keys))))
    }

    fn new(role: Role, config: Arc<Config>, now: Instant, mask_keys: Option<Box<Box<dyn MaskKeySource>>>) -> Self {
        Self {
            role,
            config,
            state: State::Open,
            out: OutBuf::default(),
            mask_keys,
            frame: None,
            message: None,
            utf8: Utf8Validator::new(),
            deflate: None,
            sending_fragmented: false,
            close_sent: false,
            close_received: None,
            last_received: now,
            ping_deadline: None,
            ping_end: 0,
            close_deadline: None,
            pings_sent: 0,
            held_pong: None,
            lent: 0,
        }
    }

    /// Turns on permessage-deflate (RFC 7692) with the parameters agreed in the handshake: from
    /// now on RSV1 marks compressed messages both ways. Call before any frame is exchanged.
    pub fn set_deflate(&mut self, deflate: PerMessageDeflate) {
        self.deflate = Some(Box::new(deflate));
    }

    /// Whether permessage-deflate is in use.
    pub fn is_deflate(&self) -> bool {
        self.deflate.is_some()
    }

    /// Our role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether we have sent a close frame (queued it, at least).
    pub fn close_sent(&self) -> bool {
        self.close_sent
    }

    /// The peer's close frame, once it arrived: `Some(None)` for a close without a status code.
    pub fn close_received(&self) -> Option<&Option<CloseFrame>> {
        self.close_received.as_deref()
    }

    /// Whether both close frames were exchanged: the closing handshake completed cleanly.
    pub fn is_closed_cleanly(&self) -> bool {
        self.close_sent && self.close_received.is_some()
    }

    /// Payload bytes of the frame being read that have not arrived yet: 0 between frames and
    /// while a header is incomplete.
    ///
    /// [`read_event`](Self::read_event) keeps a frame's payload at the front of the read buffer
    /// until all of it is there, so a driver can make room for the rest in one step instead of
    /// growing the buffer read by read (and copying what it holds at each step).
    /// [`read_chunk`](Self::read_chunk) hands the payload out as it arrives and needs no such
    /// room. The figure comes from the header, which has passed [`Config::max_frame_size`], but
    /// it is still the peer's word: a peer can declare a large frame and send nothing more, so a
    /// driver should bound what it sets aside by what has actually arrived.
    pub fn frame_bytes_due(&self) -> usize {
        self.frame.as_ref().map_or(0, |f| f.len - f.done)
    }

    /// Bytes to write to the transport. Write them with `Buf` methods; they are consumed as they
    /// are advanced over.
    pub fn output(&mut self) -> &mut OutBuf {
        // A pong held while the output was at the mark waits until it is below it again: a ping
        // flood from a peer that does not read costs one pong, however long the driver reads.
        if self.out.len() < self.config.write_buffer_high_water {
            self.release_held_pong();
        }
        &mut self.out
    }

    /// Bytes produced and not yet written (the browser's `bufferedAmount` counts these).
    pub fn pending_output(&self) -> usize {
        let held = self.held_pong.as_ref().map_or(0, |p| p.len() + if self.mask_keys.is_some() { 6 } else { 2 });
        self.out.len() + held
    }

    /// Whether pending output is at or over [`Config::write_buffer_high_water`]: a driver then
    /// makes senders wait until the transport takes some of it.
    pub fn is_output_full(&self) -> bool {
        // Never full when empty, whatever the mark (a mark of 0 must not hold senders forever).
        let pending = self.pending_output();
        pending > 0 && pending >= self.config.write_buffer_high_water
    }

    /// The transport is gone (end of stream, an I/O error, a write timeout): the connection is
    /// closed without a closing handshake and its pending output is dropped, since nothing more
    /// can be written. Does nothing once closed with nothing pending.
    pub fn abort(&mut self) {
        self.state = State::Closed;
        self.out = OutBuf::default();
        self.held_pong = None;
        self.frame = None;
        self.message = None;
        self.ping_deadline = None;
        self.close_deadline = None;
        self.lent = 0;
    }

    fn release_held_pong(&mut self) {
        if let Some(payload) = self.held_pong.take() {
            self.write_frame(OpCode::Pong, true, *payload);
        }
    }

    // ---------------------------------------------------------------- receiving

    /// Parses frames from the front of `buf` until one completes an event, and returns it.
    ///
    /// Returns `Ok(None)` when `buf` holds no complete event (read more and call again). The
    /// parsed bytes are removed from `buf`; bytes of a frame that has only partly arrived are
    /// unmasked in place and left at its front. Pings are answered automatically (the pong is
    /// queued in [`output`](Self::output)) and are also returned. A peer's close frame is
    /// returned as [`Message::Close`] after its echo is queued.
    ///
    /// On a protocol violation or an exceeded limit, a close frame with the matching code is
    /// queued, the state becomes [`State::Closed`] and the error is returned; once closed, this
    /// discards whatever it is given and returns `Ok(None)`.
    ///
    /// A message that [`read_chunk`](Self::read_chunk) has started handing out must be finished
    /// with `read_chunk`: until then this returns a [`UsageError`] and changes nothing.
    pub fn read_event(&mut self, buf: &mut BytesMut, now: Instant) -> Result<Option<Message>, Error> {
        self.read_owned(buf, now, true)
    }

    /// [`read_event`](Self::read_event); `try_whole` false skips the whole-frame step, for
    /// [`read_ref`](Self::read_ref), which has just found that it does not apply.
    fn read_owned(&mut self, buf: &mut BytesMut, now: Instant, try_whole: bool) -> Result<Option<Message>, Error> {
        self.settle_lent(buf);
        if self.state == State::Closed {
            buf.clear();
            return Ok(None);
        }
        if self.message.as_ref().is_some_and(|m| m.streaming) {
            return Err(UsageError::Fragmentation("read_event called while read_chunk is streaming a message").into());
        }
        let result = self.read_event_inner(buf, now, try_whole);
        self.fail_on_error(buf, result)
    }

    /// A fault while reading fails the connection: the rest of the input is dropped and the
    /// close frame naming the fault is queued.
    fn fail_on_error<T>(&mut self, buf: &mut BytesMut, result: Result<T, Error>) -> Result<T, Error> {
        if let Err(err) = &result {
            buf.clear();
            self.fail(err);
        }
        result
    }

    /// Parses the next frame's header from `buf` when no frame is in progress; false when the
    /// header has not fully arrived.
    fn start_frame(&mut self, buf: &mut BytesMut, now: Instant) -> Result<bool, Error> {
        if self.frame.is_none() {
            let Some((header, header_len)) = FrameHeader::parse(buf)? else {
                return Ok(false);
            };
            self.note_received(now);
            let frame = self.check_header(header)?;
            buf.advance(header_len);
            self.frame = Some(frame);
        }
        Ok(true)
    }

    fn read_event_inner(
        &mut self,
        buf: &mut BytesMut,
        now: Instant,
        try_whole: bool,
    ) -> Result<Option<Message>, Error> {
        if let Some((text, header_len, len)) = try_whole.then(|| self.whole_small_frame(buf, now)).flatten() {
            if text && crate::utf8::validate(&buf[header_len..header_len + len]).is_err() {
                return Err(ProtocolError::InvalidUtf8.into());
            }
            buf.advance(header_len);
            let payload = buf.split_to(len).freeze();
            return Ok(Some(if text {
                Message::Text(Utf8Bytes::from_bytes_unchecked(payload))
            } else {
                Message::Binary(payload)
            }));
        }
        loop {
            if !self.start_frame(buf, now)? {
                return Ok(None);
            }
            let Some(frame) = self.frame.as_ref() else {
                return Ok(None);
            };
            let available = buf.len().min(frame.len);
            if available > frame.done {
                self.note_received(now);
                self.take_arrived(buf, available)?;
            }
            let Some(frame) = self.frame.as_ref() else {
                return Ok(None);
            };
            if frame.done < frame.len {
                return Ok(None);
            }
            let header = frame.header;
            let len = frame.len;
            let compressed = frame.compressed;
            self.frame = None;
            let payload = buf.split_to(len).freeze();
            let event = if compressed {
                self.complete_compressed_frame(header)?
            } else {
                self.complete_frame(header, payload)?
            };
            if let Some(event) = event {
                return Ok(Some(event));
            }
        }
    }

    /// Removes from the front of `buf` what [`read_ref`](Self::read_ref) lent out last.
    #[inline]
    fn settle_lent(&mut self, buf: &mut BytesMut) {
        if self.lent > 0 {
            buf.advance(self.lent.min(buf.len()));
            self.lent = 0;
        }
    }

    /// The common case in one step: a final, uncompressed text or binary frame under 64 KiB,
    /// wholly at the front of `buf`, with no message in progress. Returns whether it is text,
    /// the header's length and the payload's, the payload unmasked in place (its UTF-8 is the
    /// caller's to check). `None` sends everything else (other frames, partial ones, anything
    /// over a limit or against the rules) the general way, which checks and reports it; the
    /// result is the same either way, only quicker here.
    #[inline]
    fn whole_small_frame(&mut self, buf: &mut [u8], now: Instant) -> Option<(bool, usize, usize)> {
        if self.frame.is_some() || self.message.is_some() || self.state == State::Closed {
            return None;
        }
        let [b0, b1, ..] = *buf else {
            return None;
        };
        // FIN set, RSV1-3 clear, text (0x1) or binary (0x2).
        let text = match b0 {
            0x81 => true,
            0x82 => false,
            _ => return None,
        };
        let masked = b1 & 0x80 != 0;
        if masked != (self.role == Role::Server) {
            return None;
        }
        let (len, mut header_len) = match b1 & 0x7F {
            127 => return None,
            126 => {
                let b = buf.get(2..4)?;
                (usize::from(u16::from_be_bytes([b[0], b[1]])), 4)
            }
            n => (usize::from(n), 2),
        };
        let key = if masked {
            let k = buf.get(header_len..header_len + 4)?;
            header_len += 4;
            Some([k[0], k[1], k[2], k[3]])
        } else {
            None
        };
        if len > self.config.max_frame_size || len > self.config.max_message_size || buf.len() - header_len < len {
            return None;
        }
        self.note_received(now);
        if let Some(key) = key {
            apply_mask(&mut buf[header_len..header_len + len], key, 0);
        }
        Some((text, header_len, len))
    }

    /// [`read_event`](Self::read_event) without taking ownership where it can: a text or
    /// binary message sent in one final, uncompressed frame of under 64 KiB, whose whole frame
    /// is in `buf` when the call starts, is lent straight out of `buf`, unmasked and checked
    /// ([`MessageRef::Text`] / [`MessageRef::Binary`]), with no [`Bytes`] made for it. Every
    /// other event comes as [`MessageRef::Owned`], as `read_event` returns it: control frames,
    /// fragmented or compressed messages, larger frames, and a frame that arrived over several
    /// reads. The same checks, limits and replies either way.
    ///
    /// A lent message's bytes stay at the front of `buf` until the next read call on this
    /// connection (`read_ref`, `read_event` or `read_chunk`) removes them, a run of them at
    /// once. Between calls, only append to `buf` (read into it), and pass the same buffer:
    /// before moving the connection to another buffer (or taking `buf` apart), call `read_ref`
    /// until it returns `Ok(None)`, or `read_event` once, which removes what was lent.
    ///
    /// On an error the connection is failed as by `read_event`, except that `buf` cannot be
    /// cleared while borrowed: what is left in it is discarded by the next read call, which
    /// finds the connection closed.
    ///
    /// ```
    /// use std::time::Instant;
    /// use bytes::{Buf, BytesMut};
    /// use wsx_proto::{Config, Connection, Message, MessageRef};
    ///
    /// let now = Instant::now();
    /// let mut client = Connection::client(Config::default(), now, || [1, 2, 3, 4]);
    /// let mut server = Connection::server(Config::default(), now);
    /// client.send(Message::text("hello")).unwrap();
    /// client.send(Message::binary(&b"\x01\x02"[..])).unwrap();
    /// let out = client.output();
    /// let mut buf = BytesMut::from(&out.copy_to_bytes(out.remaining())[..]);
    ///
    /// assert_eq!(server.read_ref(&mut buf, now).unwrap(), Some(MessageRef::Text("hello")));
    /// assert_eq!(server.read_ref(&mut buf, now).unwrap(), Some(MessageRef::Binary(&[1, 2])));
    /// assert_eq!(server.read_ref(&mut buf, now).unwrap(), None);
    /// assert!(buf.is_empty());
    /// ```
    pub fn read_ref<'b>(&mut self, buf: &'b mut BytesMut, now: Instant) -> Result<Option<MessageRef<'b>>, Error> {
        let lent = self.lent.min(buf.len());
        let Some((text, header_len, len)) = self.whole_small_frame(&mut buf[lent..], now) else {
            // After the lent bytes are removed, `buf` starts where that attempt looked.
            return Ok(self.read_owned(buf, now, false)?.map(MessageRef::Owned));
        };
        let start = lent + header_len;
        self.lent = start + len;
        let buf: &'b BytesMut = buf;
        let payload = &buf[start..start + len];
        if !text {
            return Ok(Some(MessageRef::Binary(payload)));
        }
        match simdutf8::basic::from_utf8(payload) {
            Ok(text) => Ok(Some(MessageRef::Text(text))),
            Err(_) => {
                // `buf` cannot be cleared through a shared borrow: what is left is dropped at
                // the next read, which finds the connection closed.
                self.lent = 0;
                let err = ProtocolError::InvalidUtf8.into();
                self.fail(&err);
                Err(err)
            }
        }
    }

    /// Parses frames from the front of `buf` and returns the next piece of a data message as it
    /// arrives, or a control message: the streaming counterpart of
    /// [`read_event`](Self::read_event), for messages too large to assemble. See [`crate::stream`].
    ///
    /// Returns `Ok(None)` when nothing more can be handed out from `buf` (read more and call
    /// again). An uncompressed chunk is the already-unmasked, already-validated bytes of the
    /// frame in progress, split off the front of `buf` without a copy, so no chunk is larger than
    /// what `buf` held; a compressed message is inflated a little at a time into chunks of about
    /// 64 KiB. A text chunk never ends inside a character: up to 3 bytes are held back until the
    /// character's end arrives (copied only when a character straddles two frames).
    ///
    /// Pings are answered, the peer's close is echoed, faults fail the connection and limits
    /// apply to the whole message, all as with `read_event`. The two may be used on one
    /// connection, message by message: `read_chunk` can take over a message that `read_event`
    /// started, but not the reverse (a [`UsageError`] until the message is finished).
    ///
    /// ```
    /// use std::time::Instant;
    /// use bytes::{Buf, BytesMut};
    /// use wsx_proto::{Config, Connection, Message, StreamEvent};
    ///
    /// let now = Instant::now();
    /// let mut client = Connection::client(Config::default(), now, || [1, 2, 3, 4]);
    /// let mut server = Connection::server(Config::default(), now);
    /// client.send(Message::binary(vec![7u8; 100_000])).unwrap();
    /// let out = client.output();
    /// let wire = out.copy_to_bytes(out.remaining());
    ///
    /// // The bytes arrive 16 KiB at a time; each read yields a chunk.
    /// let (mut buf, mut received, mut chunks) = (BytesMut::new(), Vec::new(), 0);
    /// for piece in wire.chunks(16 * 1024) {
    ///     buf.extend_from_slice(piece);
    ///     while let Some(event) = server.read_chunk(&mut buf, now).unwrap() {
    ///         let StreamEvent::Chunk(chunk) = event else { unreachable!("no control frames sent") };
    ///         assert!(chunk.data.len() <= 16 * 1024);
    ///         received.extend_from_slice(&chunk.data);
    ///         chunks += 1;
    ///         if chunk.fin {
    ///             assert_eq!(received, vec![7u8; 100_000]);
    ///         }
    ///     }
    /// }
    /// assert!(chunks > 1);
    /// ```
    pub fn read_chunk(&mut self, buf: &mut BytesMut, now: Instant) -> Result<Option<StreamEvent>, Error> {
        self.settle_lent(buf);
        if self.state == State::Closed {
            buf.clear();
            return Ok(None);
        }
        let result = self.read_chunk_inner(buf, now);
        self.fail_on_error(buf, result)
    }

    fn read_chunk_inner(&mut self, buf: &mut BytesMut, now: Instant) -> Result<Option<StreamEvent>, Error> {
        loop {
            if !self.start_frame(buf, now)? {
                return Ok(None);
            }
            let Some(frame) = self.frame.as_ref() else {
                return Ok(None);
            };
            let (header, done, len, compressed, text) =
                (frame.header, frame.done, frame.len, frame.compressed, frame.text);
            let available = buf.len().min(len);
            if header.opcode.is_control() {
                if available > done {
                    self.note_received(now);
                    self.take_arrived(buf, available)?;
                }
                if available < len {
                    return Ok(None);
                }
                self.frame = None;
                let payload = buf.split_to(len).freeze();
                if let Some(event) = self.complete_frame(header, payload)? {
                    return Ok(Some(StreamEvent::Control(event)));
                }
                continue;
            }
            // A data frame: its message may have been started by `read_event` (or, for a first
            // frame, not be recorded yet).
            let m = self.message.get_or_insert_with(|| Box::new(PartialMessage::new(text, false, 0)));
            m.streaming = true;
            if available > done {
                self.note_received(now);
                if compressed {
                    // A little input at a time, so that a chunk stays small however well the
                    // data compresses.
                    let mut upto = done;
                    while upto < available
                        && self.message.as_ref().is_some_and(|m| m.data.len() < STREAM_INFLATED_CHUNK)
                    {
                        upto = (upto + STREAM_INFLATE_STEP).min(available);
                        self.take_arrived(buf, upto)?;
                    }
                } else {
                    self.take_arrived(buf, available)?;
                }
            }
            if let Some(chunk) = self.next_chunk(buf)? {
                return Ok(Some(StreamEvent::Chunk(chunk)));
            }
            if self.frame.is_some() {
                return Ok(None);
            }
        }
    }

    /// Hands out what the data frame in progress has made ready, if anything: for an
    /// uncompressed frame, the done bytes at the front of `buf` (after any bytes held back from
    /// the previous frame); for a compressed one, the inflated bytes. Text keeps back the start of
    /// a character that is not complete yet. Ends the frame (and the message, on FIN) when all
    /// its bytes are done.
    fn next_chunk(&mut self, buf: &mut BytesMut) -> Result<Option<Chunk>, Error> {
        let (Some(frame), Some(m)) = (self.frame.as_mut(), self.message.as_mut()) else {
            return Ok(None);
        };
        let complete = frame.done == frame.len;
        let fin = complete && frame.header.fin;
        if complete {
            m.fragments += 1;
        }
        if fin && m.compressed {
            let (Some(pmd), limit) = (self.deflate.as_mut(), inflate_budget(&self.config).saturating_sub(m.streamed))
            else {
                return Err(ProtocolError::ReservedBits.into());
            };
            pmd.finish_message(&mut m.data, limit).map_err(|e| deflate_error(e, &self.config))?;
            if m.text {
                self.utf8.feed(&m.data[m.validated..]).map_err(|_| ProtocolError::InvalidUtf8)?;
                m.validated = m.data.len();
            }
        }
        if fin && m.text {
            self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        let keep = if m.text && !fin { self.utf8.incomplete_len() } else { 0 };
        let data = if m.compressed {
            // The input inflated so far is no longer needed: drop it from the read buffer.
            let consumed = frame.done;
            buf.advance(consumed);
            frame.advance(consumed);
            let emit = m.data.len() - keep.min(m.data.len());
            if emit == 0 && !fin {
                None
            } else {
                let chunk = m.data.split_to(emit).freeze();
                // Start the next chunk in a buffer of its own (the held-back bytes are at most 3).
                m.data = BytesMut::from(&m.data[..]);
                m.validated = m.data.len();
                Some(chunk)
            }
        } else {
            // The held-back bytes are the last `keep` of `m.data` followed by the done bytes.
            let from_buf = if complete { frame.done } else { frame.done - keep.min(frame.done) };
            let emit = (m.data.len() + frame.done).saturating_sub(keep);
            if emit == 0 && !fin {
                if complete {
                    m.data.extend_from_slice(&buf.split_to(from_buf));
                }
                None
            } else {
                let mut taken = buf.split_to(from_buf);
                frame.advance(from_buf);
                Some(if m.data.is_empty() {
                    let rest = taken.split_off(emit);
                    m.data.extend_from_slice(&rest);
                    taken.freeze()
                } else {
                    m.data.extend_from_slice(&taken);
                    let chunk = m.data.split_to(emit).freeze();
                    m.data = BytesMut::from(&m.data[..]);
                    chunk
                })
            }
        };
        if complete {
            self.frame = None;
        }
        let Some(data) = data else {
            return Ok(None);
        };
        let chunk = Chunk { text: m.text, first: !m.started, fin, data };
        m.started = true;
        m.streamed += chunk.data.len();
        if fin {
            self.message = None;
        }
        Ok(Some(chunk))
    }

    /// Unmasks the current frame's payload bytes from `done` up to `upto` at the front of `buf`,
    /// validates them (text) or inflates them into the message buffer under the message's
    /// remaining budget (compressed; inflated text is validated as it appears), and marks them
    /// done. Shared by `read_event` and `read_chunk`.
    #[inline]
    fn take_arrived(&mut self, buf: &mut [u8], upto: usize) -> Result<(), Error> {
        let Some(frame) = self.frame.as_mut() else {
            return Ok(());
        };
        let new = &mut buf[frame.done..upto];
        if frame.header.mask != [0; 4] {
            apply_mask(new, frame.header.mask, frame.done);
        }
        if frame.compressed {
            let (Some(m), Some(pmd)) = (self.message.as_mut(), self.deflate.as_mut()) else {
                return Err(ProtocolError::ReservedBits.into());
            };
            let limit = inflate_budget(&self.config).saturating_sub(m.streamed);
            pmd.decompress_chunk(new, &mut m.data, limit).map_err(|e| deflate_error(e, &self.config))?;
            if frame.text {
                self.utf8.feed(&m.data[m.validated..]).map_err(|_| ProtocolError::InvalidUtf8)?;
                m.validated = m.data.len();
            }
        } else if frame.text {
            self.utf8.feed(new).map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        frame.done = upto;
        Ok(())
    }

    fn note_received(&mut self, now: Instant) {
        self.last_received = now;
        self.ping_deadline = None;
    }

    /// Applies every rule that can be checked from a header alone, and the limits.
    fn check_header(&mut self, h: FrameHeader) -> Result<PartialFrame, Error> {
        // RSV1 may only mark the first frame of a message as compressed, and only once
        // permessage-deflate is negotiated; RSV2 and RSV3 are never ours.
        if h.rsv2
            || h.rsv3
            || (h.rsv1 && (self.deflate.is_none() || !matches!(h.opcode, OpCode::Text | OpCode::Binary)))
        {
            return Err(ProtocolError::ReservedBits.into());
        }
        match (self.role, h.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame.into()),
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame.into()),
            _ => {}
        }
        let mut text = false;
        let mut compressed = false;
        if h.opcode.is_control() {
            if !h.fin {
                return Err(ProtocolError::FragmentedControlFrame.into());
            }
            if h.payload_len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(ProtocolError::ControlFrameTooLong.into());
            }
        } else {
            if h.payload_len > self.config.max_frame_size as u64 {
                return Err(
                    LimitError::FrameTooLarge { declared: h.payload_len, limit: self.config.max_frame_size }.into()
                );
            }
            let so_far = match (&self.message, h.opcode) {
                (None, OpCode::Continuation) => return Err(ProtocolError::UnexpectedContinuation.into()),
                (Some(_), OpCode::Text | OpCode::Binary) => return Err(ProtocolError::ExpectedContinuation.into()),
                (Some(m), _) => {
                    if m.fragments >= self.config.max_fragments {
                        return Err(LimitError::TooManyFragments { limit: self.config.max_fragments }.into());
                    }
                    text = m.text;
                    compressed = m.compressed;
                    (m.streamed + m.data.len()) as u64
                }
                (None, op) => {
                    text = op == OpCode::Text;
                    compressed = h.rsv1;
                    0
                }
            };
            // A compressed message is bounded by its inflated size, as it inflates.
            if !compressed && so_far + h.payload_len > self.config.max_message_size as u64 {
                return Err(LimitError::MessageTooLarge { limit: self.config.max_message_size }.into());
            }
            if compressed && self.message.is_none() {
                self.message = Some(Box::new(PartialMessage::new(text, true, 0)));
            }
        }
        // Both limits above are usize, so the length fits.
        let len = usize::try_from(h.payload_len)
            .map_err(|_| LimitError::FrameTooLarge { declared: h.payload_len, limit: self.config.max_frame_size })?;
        Ok(PartialFrame {
            header: Head { opcode: h.opcode, fin: h.fin, mask: h.mask.unwrap_or_default() },
            len,
            done: 0,
            text,
            compressed,
        })
    }

    fn complete_frame(&mut self, h: Head, payload: Bytes) -> Result<Option<Message>, Error> {
        match h.opcode {
            OpCode::Ping => {
                // §5.5.2: a pong is owed unless the peer's close was received (then we are Closed).
                // While output is over the mark, only the newest ping keeps its pong (§5.5.3), so
                // a ping flood from a peer that does not read costs at most one pong.
                if self.state != State::Closed {
                    if self.held_pong.is_some() || self.is_output_full() {
                        self.held_pong = Some(Box::new(payload.clone()));
                    } else {
                        self.write_frame(OpCode::Pong, true, payload.clone());
                    }
                }
                Ok(Some(Message::Ping(payload)))
            }
            OpCode::Pong => Ok(Some(Message::Pong(payload))),
            OpCode::Close => self.receive_close(payload).map(Some),
            OpCode::Text | OpCode::Binary if h.fin => {
                if h.opcode == OpCode::Text {
                    self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
                    Ok(Some(Message::Text(Utf8Bytes::from_bytes_unchecked(payload))))
                } else {
                    Ok(Some(Message::Binary(payload)))
                }
            }
            OpCode::Text | OpCode::Binary => {
                let mut m = Box::new(PartialMessage::new(h.opcode == OpCode::Text, false, 1));
                m.data.extend_from_slice(&payload);
                self.message = Some(m);
                Ok(None)
            }
            OpCode::Continuation => {
                let Some(m) = self.message.as_mut() else {
                    return Err(ProtocolError::UnexpectedContinuation.into());
                };
                m.data.extend_from_slice(&payload);
                m.fragments += 1;
                if !h.fin {
                    return Ok(None);
                }
                let Some(m) = self.message.take() else {
                    return Err(ProtocolError::UnexpectedContinuation.into());
                };
                let data = m.data.freeze();
                if m.text {
                    self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
                    Ok(Some(Message::Text(Utf8Bytes::from_bytes_unchecked(data))))
                } else {
                    Ok(Some(Message::Binary(data)))
                }
            }
        }
    }

    /// A frame of a compressed message is complete (its bytes were inflated as they arrived).
    fn complete_compressed_frame(&mut self, h: Head) -> Result<Option<Message>, Error> {
        let Some(m) = self.message.as_mut() else {
            return Err(ProtocolError::UnexpectedContinuation.into());
        };
        m.fragments += 1;
        if !h.fin {
            return Ok(None);
        }
        let (Some(mut m), Some(pmd)) = (self.message.take(), self.deflate.as_mut()) else {
            return Err(ProtocolError::ReservedBits.into());
        };
        let limit = inflate_budget(&self.config).saturating_sub(m.streamed);
        pmd.finish_message(&mut m.data, limit).map_err(|e| deflate_error(e, &self.config))?;
        if m.text {
            self.utf8.feed(&m.data[m.validated..]).map_err(|_| ProtocolError::InvalidUtf8)?;
            self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Some(Message::Text(Utf8Bytes::from_bytes_unchecked(m.data.freeze()))))
        } else {
            Ok(Some(Message::Binary(m.data.freeze())))
        }
    }

    fn receive_close(&mut self, payload: Bytes) -> Result<Message, Error> {
        let frame = match payload.len() {
            0 => None,
            1 => return Err(ProtocolError::InvalidClosePayload.into()),
            _ => {
                let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
                if !code.is_valid_on_wire() {
                    return Err(ProtocolError::InvalidCloseCode(code.0).into());
                }
                let reason = Utf8Bytes::try_from_bytes(payload.slice(2..)).map_err(|_| ProtocolError::InvalidUtf8)?;
                Some(CloseFrame { code, reason })
            }
        };
        if !self.close_sent {
            // Echo the peer's code and reason, as browsers do: the peer's close event then shows
            // the reason it gave (a control frame's payload keeps the reason within 123 bytes).
            match &frame {
                Some(f) => self.write_close(Some(f.code), f.reason.as_str()),
                None => self.write_close(None, ""),
            }
        }
        self.close_received = Some(Box::new(frame.clone()));
        self.state = State::Closed;
        self.close_deadline = None;
        self.frame = None;
        self.message = None;
        Ok(Message::Close(frame))
    }

    /// Fails the connection: queue a close frame naming the fault (unless one was sent), close.
    fn fail(&mut self, err: &Error) {
        if let Some(code) = err.close_code() {
            if !self.close_sent {
                let reason = err.to_string();
                self.write_close(Some(code), CloseFrame::fit_reason(&reason));
            }
        }
        self.state = State::Closed;
        self.frame = None;
        self.message = None;
        self.ping_deadline = None;
        self.close_deadline = None;
    }

    // ---------------------------------------------------------------- sending

    /// Queues a message. Text and binary messages go out as one frame; pings and pongs carry at
    /// most 125 bytes; [`Message::Close`] is the same as [`close`](Self::close) without a clock
    /// (the close timeout then starts at the next [`handle_timeout`](Self::handle_timeout)).
    ///
    /// Errors with [`UsageError`] (and changes nothing) when the state forbids it.
    pub fn send(&mut self, message: Message) -> Result<(), Error> {
        match message {
            Message::Close(frame) => return self.send_close(frame, None),
            _ if self.state != State::Open => return Err(UsageError::NotOpen(self.state).into()),
            Message::Text(t) => {
                self.check_not_fragmenting()?;
                self.write_message(OpCode::Text, t.into_bytes());
            }
            Message::Binary(b) => {
                self.check_not_fragmenting()?;
                self.write_message(OpCode::Binary, b);
            }
            Message::Ping(p) => {
                check_control(&p)?;
                self.write_frame(OpCode::Ping, true, p);
            }
            Message::Pong(p) => {
                check_control(&p)?;
                self.write_frame(OpCode::Pong, true, p);
            }
        }
        Ok(())
    }

    /// Queues a message prepared for many connections: the same bytes [`send`](Self::send)
    /// would write for it, but framed and compressed once for every connection that can share
    /// them (see [`PreparedMessage`] for which can). Same state rules and errors as `send`.
    ///
    /// ```
    /// use std::time::Instant;
    /// use wsx_proto::{Config, Connection, Message, PreparedMessage};
    ///
    /// let now = Instant::now();
    /// let mut a = Connection::server(Config::default(), now);
    /// let mut b = Connection::server(Config::default(), now);
    /// let hello = PreparedMessage::text("hello");
    /// a.send_prepared(&hello).unwrap();
    /// b.send(Message::text("hello")).unwrap();
    /// assert_eq!(a.pending_output(), b.pending_output());
    /// ```
    pub fn send_prepared(&mut self, message: &PreparedMessage) -> Result<(), Error> {
        if self.state != State::Open {
            return Err(UsageError::NotOpen(self.state).into());
        }
        self.check_not_fragmenting()?;
        let opcode = message.opcode();
        let encoding = match self.deflate.as_deref() {
            Some(d) if !d.skips(message.len()) => match d.shared_key() {
                Some(key) => message
                    .compressed(key)
                    .filter(|e| d.accepts_shared(message.len(), e.payload.len()))
                    .unwrap_or_else(|| message.plain()),
                None => {
                    // Context takeover: this message depends on what this connection sent
                    // before, so it is compressed here, as `send` does.
                    self.write_message(opcode, message.payload().clone());
                    return Ok(());
                }
            },
            _ => message.plain(),
        };
        if self.mask_keys.is_some() {
            self.write_frame_rsv1(opcode, true, encoding.rsv1, encoding.payload);
        } else {
            self.out.push_shared(&encoding.frame);
        }
        Ok(())
    }

    /// Queues a message as [`send`](Self::send) does, but a text or binary message goes out
    /// uncompressed (RSV1 clear) even when permessage-deflate is in use: for data that is
    /// already compressed (images, archives) or too small to gain, where compressing would only
    /// cost time. RFC 7692 lets a sender leave any message uncompressed. Without
    /// permessage-deflate, and for control messages, it is the same as `send`.
    ///
    /// ```
    /// use std::time::Instant;
    /// use wsx_proto::{Config, Connection, Message};
    ///
    /// let mut conn = Connection::server(Config::default(), Instant::now());
    /// conn.send_uncompressed(Message::binary(vec![0xff; 8])).unwrap();
    /// assert_eq!(conn.pending_output(), 2 + 8);
    /// ```
    pub fn send_uncompressed(&mut self, message: Message) -> Result<(), Error> {
        let (opcode, payload) = match message {
            Message::Text(t) => (OpCode::Text, t.into_bytes()),
            Message::Binary(b) => (OpCode::Binary, b),
            other => return self.send(other),
        };
        if self.state != State::Open {
            return Err(UsageError::NotOpen(self.state).into());
        }
        self.check_not_fragmenting()?;
        self.write_frame(opcode, true, payload);
        Ok(())
    }

    /// Queues a binary message whose payload is `parts` one after the other, copied from the
    /// borrowed slices into the output (masked, or compressed when permessage-deflate is on and
    /// worth it): the same bytes [`send`](Self::send) writes for
    /// `Message::Binary(parts.concat())`, without building that `Bytes`. For a message assembled
    /// from pieces kept elsewhere (a header and a body, say); a large server message held in
    /// `Bytes` is cheaper through `send`, which queues it without a copy. Same state rules and
    /// errors as `send`.
    ///
    /// ```
    /// use std::time::Instant;
    /// use wsx_proto::{Config, Connection, Message};
    ///
    /// let now = Instant::now();
    /// let mut a = Connection::server(Config::default(), now);
    /// let mut b = Connection::server(Config::default(), now);
    /// a.send_binary_parts(&[b"head:", b"body"]).unwrap();
    /// b.send(Message::binary(&b"head:body"[..])).unwrap();
    /// assert_eq!(a.pending_output(), b.pending_output());
    /// ```
    pub fn send_binary_parts(&mut self, parts: &[&[u8]]) -> Result<(), Error> {
        self.send_parts(OpCode::Binary, parts.iter().copied())
    }

    /// [`send_binary_parts`](Self::send_binary_parts) for a text message: `parts` one after
    /// the other (each valid UTF-8, so the whole is).
    pub fn send_text_parts(&mut self, parts: &[&str]) -> Result<(), Error> {
        self.send_parts(OpCode::Text, parts.iter().map(|p| p.as_bytes()))
    }

    fn send_parts<'a, I>(&mut self, opcode: OpCode, parts: I) -> Result<(), Error>
    where
        I: Iterator<Item = &'a [u8]> + Clone,
    {
        if self.state != State::Open {
            return Err(UsageError::NotOpen(self.state).into());
        }
        self.check_not_fragmenting()?;
        let len: usize = parts.clone().map(<[u8]>::len).sum();
        if self.deflate.is_some() {
            // The compressor takes one slice: join them (compression allocates anyway).
            let mut joined = BytesMut::with_capacity(len);
            parts.for_each(|p| joined.extend_from_slice(p));
            self.write_message(opcode, joined.freeze());
            return Ok(());
        }
        let mask = self.mask_keys.as_mut().map(|k| k.next_key());
        let header = FrameHeader::new(opcode, len as u64, mask);
        let mut head = [0u8; MAX_HEADER_LEN];
        let head_len = header.encode(&mut head);
        let tail = self.out.tail_mut();
        match mask {
            Some(key) => extend_masked_frame(tail, &head, head_len, parts, len, key),
            None => {
                tail.reserve(head_len + len);
                tail.extend_from_slice(&head[..head_len]);
                parts.for_each(|p| tail.extend_from_slice(p));
            }
        }
        self.out.commit(head_len + len);
        Ok(())
    }

    fn check_not_fragmenting(&self) -> Result<(), Error> {
        if self.sending_fragmented {
            return Err(UsageError::Fragmentation("a fragmented message is in progress").into());
        }
        Ok(())
    }

    /// Queues one frame of a fragmented message: the first call gives `text` (whether the
    /// message is text), later ones continue it; `fin` ends it. Control messages may be sent
    /// between fragments with [`send`](Self::send). The caller is responsible for the text being
    /// valid UTF-8 once whole. Fragmented messages go out uncompressed even when
    /// permessage-deflate is in use (RFC 7692 lets a sender leave any message uncompressed); send
    /// a whole message with [`send`](Self::send) to have it compressed.
    pub fn send_fragment(&mut self, text: bool, payload: Bytes, fin: bool) -> Result<(), Error> {
        if self.state != State::Open {
            return Err(UsageError::NotOpen(self.state).into());
        }
        let opcode = match (self.sending_fragmented, text) {
            (true, _) => OpCode::Continuation,
            (false, true) => OpCode::Text,
            (false, false) => OpCode::Binary,
        };
        self.write_frame(opcode, fin, payload);
        self.sending_fragmented = !fin;
        Ok(())
    }

    /// Starts the closing handshake: queues a close frame and moves to [`State::Closing`]; the
    /// peer then has [`Config::close_timeout`] from `now` to answer.
    ///
    /// `None` sends a close frame without a status code. A code must be
    /// [valid on the wire](CloseCode::is_valid_on_wire) and the reason at most 123 bytes.
    pub fn close(&mut self, frame: Option<CloseFrame>, now: Instant) -> Result<(), Error> {
        self.send_close(frame, Some(now))
    }

    fn send_close(&mut self, frame: Option<CloseFrame>, now: Option<Instant>) -> Result<(), Error> {
        if self.close_sent {
            return Err(UsageError::AlreadyClosing.into());
        }
        if self.state != State::Open {
            return Err(UsageError::NotOpen(self.state).into());
        }
        if let Some(f) = &frame {
            if !f.code.is_valid_on_wire() {
                return Err(UsageError::InvalidCloseCode(f.code.0).into());
            }
            if f.reason.len() > 123 {
                return Err(UsageError::CloseReasonTooLong.into());
            }
        }
        match &frame {
            Some(f) => self.write_close(Some(f.code), f.reason.as_str()),
            None => self.write_close(None, ""),
        }
        self.state = State::Closing;
        self.close_deadline = now.map(|now| Stamp::new(now + self.config.close_timeout));
        Ok(())
    }

    fn write_close(&mut self, code: Option<CloseCode>, reason: &str) {
        // A held pong answers a ping that came before this close: it goes first. (Pings that
        // come after our close are still answered, RFC 6455 §5.5.2: pongs are control frames.)
        self.release_held_pong();
        let mut payload = BytesMut::with_capacity(2 + reason.len());
        if let Some(code) = code {
            payload.extend_from_slice(&code.0.to_be_bytes());
            payload.extend_from_slice(reason.as_bytes());
        }
        self.write_frame(OpCode::Close, true, payload.freeze());
        self.close_sent = true;
    }

    /// Encodes a whole data message as one frame, compressed when permessage-deflate is on and
    /// the compressor finds it worth it.
    fn write_message(&mut self, opcode: OpCode, payload: Bytes) {
        if let Some(compressed) = self.deflate.as_mut().and_then(|d| d.compress(&payload)) {
            self.write_frame_rsv1(opcode, true, true, compressed);
        } else {
            self.write_frame(opcode, true, payload);
        }
    }

    fn write_frame(&mut self, opcode: OpCode, fin: bool, payload: Bytes) {
        self.write_frame_rsv1(opcode, fin, false, payload);
    }

    /// Encodes one frame into the output: small payloads (and every client payload, which must
    /// be masked) are copied next to their header; large server payloads are queued as-is.
    fn write_frame_rsv1(&mut self, opcode: OpCode, fin: bool, rsv1: bool, payload: Bytes) {
        let mask = self.mask_keys.as_mut().map(|k| k.next_key());
        let mut header = FrameHeader::new(opcode, payload.len() as u64, mask);
        header.fin = fin;
        header.rsv1 = rsv1;
        let mut head = [0u8; MAX_HEADER_LEN];
        let head_len = header.encode(&mut head);
        let tail = self.out.tail_mut();
        match mask {
            Some(key) => extend_masked_frame(tail, &head, head_len, [&payload[..]], payload.len(), key),
            None if payload.len() >= OutBuf::ZERO_COPY_THRESHOLD => {
                self.out.push_frame(&head[..head_len], payload);
                return;
            }
            None => {
                tail.extend_from_slice(&head[..head_len]);
                tail.extend_from_slice(&payload);
            }
        }
        self.out.commit(head_len + payload.len());
    }

    // ---------------------------------------------------------------- time

    /// The next instant at which [`handle_timeout`](Self::handle_timeout) has work to do, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let keepalive = match (self.ping_deadline, self.config.keepalive_interval) {
            (Some(deadline), _) => Some(deadline.get()),
            (None, Some(interval)) if self.state == State::Open => Some(self.last_received + interval),
            _ => None,
        };
        let idle = self.config.idle_timeout.map(|t| self.last_received + t);
        // A close sent without a clock (`send(Message::Close(..))`) has no deadline yet: ask to be
        // called at once, and `handle_timeout` starts the close timeout from its `now`.
        let close = match self.close_deadline.map(Stamp::get) {
            None if self.close_sent => Some(self.last_received),
            deadline => deadline,
        };
        [keepalive, idle, close].into_iter().flatten().min()
    }

    /// Runs the timers that are due at `now`: sends a keepalive ping, fails a connection whose
    /// keepalive went unanswered or that stayed idle, gives up on a close handshake the peer
    /// never finished. Returns the [`TimeoutError`] that closed the connection, if one did.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), Error> {
        if self.state == State::Closed {
            return Ok(());
        }
        if self.close_sent && self.close_deadline.is_none() {
            self.close_deadline = Some(Stamp::new(now + self.config.close_timeout));
        }
        let err = if self.close_deadline.is_some_and(|d| now >= d.get()) {
            Some(TimeoutError::Close)
        } else if self.config.idle_timeout.is_some_and(|t| now >= self.last_received + t) {
            Some(TimeoutError::Idle)
        } else if self.ping_deadline.is_some_and(|d| now >= d.get()) {
            if self.out.written() < self.ping_end {
                // Our ping still waits behind output the peer has not taken: it cannot have been
                // answered. Its timeout runs again from now (a peer that takes nothing meets the
                // write and slow-reader timeouts instead), so a peer that reads a backlog slowly
                // but steadily is not taken for dead.
                self.ping_deadline = Some(Stamp::new(now + self.config.keepalive_timeout));
                None
            } else {
                Some(TimeoutError::Keepalive)
            }
        } else {
            None
        };
        if let Some(err) = err {
            let err = Error::Timeout(err);
            self.fail(&err);
            return Err(err);
        }
        if let Some(interval) = self.config.keepalive_interval {
            if self.state == State::Open && self.ping_deadline.is_none() && now >= self.last_received + interval {
                self.pings_sent += 1;
                let payload = Bytes::copy_from_slice(&self.pings_sent.to_be_bytes());
                self.write_frame(OpCode::Ping, true, payload);
                self.ping_end = self.out.written() + self.out.len() as u64;
                self.ping_deadline = Some(Stamp::new(now + self.config.keepalive_timeout));
            }
        }
        Ok(())
    }
}

/// How large a compressed message may inflate: the smaller of the two message limits.
fn inflate_budget(config: &Config) -> usize {
    config.max_message_size.min(config.max_inflated_message_size)
}

/// Maps an inflate failure: past the budget is our limit (1009), named after whichever limit was
/// the budget; corrupt data is invalid payload.
fn deflate_error(err: DeflateError, config: &Config) -> Error {
    match err {
        DeflateError::TooLarge { .. } if config.max_inflated_message_size < config.max_message_size => {
            LimitError::InflatedMessageTooLarge { limit: config.max_inflated_message_size }.into()
        }
        DeflateError::TooLarge { .. } => LimitError::MessageTooLarge { limit: config.max_message_size }.into(),
        _ => ProtocolError::InvalidCompressedData.into(),
    }
}

fn check_control(payload: &[u8]) -> Result<(), Error> {
    if payload.len() > MAX_CONTROL_PAYLOAD {
        return Err(UsageError::ControlFrameTooLong.into());
    }
    Ok(())
}
