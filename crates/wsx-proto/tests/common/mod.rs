//! Shared in-memory harness for the connection tests: a client and a server `Connection` joined
//! by a simulated transport, with a hand-advanced clock, plus helpers to build raw frames and to
//! parse what a connection wrote on the wire.

// Each integration test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use wsx_proto::deflate::DeflateParams;
use wsx_proto::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use wsx_proto::mask::apply_mask;
use wsx_proto::{Config, Connection, Error, Message};

/// A tiny deterministic PRNG (xorshift64*), so chunking is reproducible without extra crates.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `1..=max` (`max >= 1`).
    pub fn chunk_len(&mut self, max: usize) -> usize {
        1 + (self.next_u64() % max as u64) as usize
    }
}

/// A mask-key source for clients: a counter, so every frame gets a different key.
pub fn counting_keys() -> impl FnMut() -> [u8; 4] + Send + 'static {
    let mut n: u32 = 0x1234_5678;
    move || {
        n = n.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        n.to_be_bytes()
    }
}

/// One endpoint of a [`Pair`]: the connection, what it has received but not parsed, what it
/// reported, and every byte it ever wrote.
pub struct Side {
    pub conn: Connection,
    /// The read buffer the connection parses from.
    pub inbuf: BytesMut,
    /// Events returned by `read_event`, in order.
    pub events: Vec<Message>,
    /// Errors returned by `read_event` and `handle_timeout`, in order.
    pub errors: Vec<Error>,
    /// Every byte this side wrote to the transport, in order.
    pub wire: Vec<u8>,
}

impl Side {
    fn new(conn: Connection) -> Self {
        Self { conn, inbuf: BytesMut::new(), events: Vec::new(), errors: Vec::new(), wire: Vec::new() }
    }

    /// Calls `read_event` until it returns `Ok(None)` or an error, recording what it returns.
    pub fn process(&mut self, now: Instant) {
        loop {
            match self.conn.read_event(&mut self.inbuf, now) {
                Ok(Some(ev)) => self.events.push(ev),
                Ok(None) => return,
                Err(e) => {
                    self.errors.push(e);
                    return;
                }
            }
        }
    }

    /// Takes everything pending in the connection's output, reading it through `bytes::Buf`.
    pub fn take_output(&mut self) -> Vec<u8> {
        let out = drain(&mut self.conn);
        self.wire.extend_from_slice(&out);
        out
    }

    /// The frames this side wrote so far (parsed from [`Self::wire`], unmasked).
    pub fn frames_sent(&self) -> Vec<WireFrame> {
        parse_frames(&self.wire)
    }

    /// The close frames this side wrote so far.
    pub fn closes_sent(&self) -> Vec<WireFrame> {
        self.frames_sent().into_iter().filter(|f| f.header.opcode == OpCode::Close).collect()
    }

    /// Takes the recorded events.
    pub fn take_events(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.events)
    }
}

/// A client and a server connected in memory, with simulated time.
pub struct Pair {
    pub now: Instant,
    pub client: Side,
    pub server: Side,
    /// When set, bytes are delivered in random chunks of at most this many bytes, with the
    /// receiver parsing after every chunk.
    pub max_chunk: Option<usize>,
    pub rng: Rng,
}

impl Default for Pair {
    fn default() -> Self {
        Self::new(Config::default(), Config::default())
    }
}

impl Pair {
    pub fn new(client_config: Config, server_config: Config) -> Self {
        let now = Instant::now();
        Self {
            now,
            client: Side::new(Connection::client(client_config, now, counting_keys())),
            server: Side::new(Connection::server(server_config, now)),
            max_chunk: None,
            rng: Rng::new(0x5eed),
        }
    }

    /// Delivers in random chunks of `1..=max_chunk` bytes.
    pub fn chunked(mut self, max_chunk: usize, seed: u64) -> Self {
        self.max_chunk = Some(max_chunk);
        self.rng = Rng::new(seed);
        self
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// Moves the client's pending output to the server and lets the server parse it. Returns
    /// whether any byte moved.
    pub fn deliver_to_server(&mut self) -> bool {
        Self::deliver(&mut self.client, &mut self.server, self.now, self.max_chunk, &mut self.rng)
    }

    /// Moves the server's pending output to the client and lets the client parse it.
    pub fn deliver_to_client(&mut self) -> bool {
        Self::deliver(&mut self.server, &mut self.client, self.now, self.max_chunk, &mut self.rng)
    }

    fn deliver(from: &mut Side, to: &mut Side, now: Instant, max_chunk: Option<usize>, rng: &mut Rng) -> bool {
        let bytes = from.take_output();
        if bytes.is_empty() {
            return false;
        }
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = match max_chunk {
                Some(max) => rng.chunk_len(max).min(rest.len()),
                None => rest.len(),
            };
            to.inbuf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            to.process(now);
        }
        true
    }

    /// Delivers in both directions until neither side has anything left to write.
    pub fn drive(&mut self) {
        for _ in 0..1000 {
            let a = self.deliver_to_server();
            let b = self.deliver_to_client();
            if !a && !b {
                return;
            }
        }
        panic!("drive did not settle");
    }

    /// Runs both sides' timers at the current time, recording the errors.
    pub fn handle_timeouts(&mut self) {
        for side in [&mut self.client, &mut self.server] {
            if let Err(e) = side.conn.handle_timeout(self.now) {
                side.errors.push(e);
            }
        }
    }
}

/// Everything pending in `conn`'s output, read through `bytes::Buf`.
pub fn drain(conn: &mut Connection) -> Vec<u8> {
    let out = conn.output();
    let mut v = Vec::with_capacity(out.remaining());
    while out.has_remaining() {
        let chunk = out.chunk();
        let n = chunk.len();
        v.extend_from_slice(chunk);
        out.advance(n);
    }
    v
}

/// A frame as parsed from the wire, payload unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireFrame {
    pub header: FrameHeader,
    pub payload: Vec<u8>,
}

impl WireFrame {
    /// The status code of a close frame, if it has one.
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.header.opcode, OpCode::Close);
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Parses a complete sequence of frames; panics on a parse error or trailing partial frame.
pub fn parse_frames(mut bytes: &[u8]) -> Vec<WireFrame> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let (header, n) = FrameHeader::parse(bytes)
            .expect("connection wrote an unparsable header")
            .expect("connection wrote a truncated header");
        let len = usize::try_from(header.payload_len).unwrap();
        assert!(bytes.len() >= n + len, "connection wrote a truncated payload");
        let mut payload = bytes[n..n + len].to_vec();
        if let Some(key) = header.mask {
            apply_mask(&mut payload, key, 0);
        }
        frames.push(WireFrame { header, payload });
        bytes = &bytes[n + len..];
    }
    frames
}

/// The close frames in `bytes`.
pub fn close_frames(bytes: &[u8]) -> Vec<WireFrame> {
    parse_frames(bytes).into_iter().filter(|f| f.header.opcode == OpCode::Close).collect()
}

/// The status code of the single close frame in `bytes`; panics unless there is exactly one.
pub fn single_close_code(bytes: &[u8]) -> Option<u16> {
    let closes = close_frames(bytes);
    assert_eq!(closes.len(), 1, "expected exactly one close frame, got {closes:?}");
    closes[0].close_code()
}

/// Encodes one frame with an arbitrary header; the payload is masked if the header has a key.
pub fn encode_frame(header: FrameHeader, payload: &[u8]) -> Vec<u8> {
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut head);
    let mut v = head[..n].to_vec();
    let start = v.len();
    v.extend_from_slice(payload);
    if let Some(key) = header.mask {
        apply_mask(&mut v[start..], key, 0);
    }
    v
}

/// A masked frame, as a client sends it.
pub fn client_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut h = FrameHeader::new(opcode, payload.len() as u64, Some([0x37, 0xfa, 0x21, 0x3d]));
    h.fin = fin;
    encode_frame(h, payload)
}

/// An unmasked frame, as a server sends it.
pub fn server_frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut h = FrameHeader::new(opcode, payload.len() as u64, None);
    h.fin = fin;
    encode_frame(h, payload)
}

/// A close frame payload: code and reason.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// Feeds `bytes` in one go to a fresh read loop on `conn`: the events up to `Ok(None)` and the
/// error, if any.
pub fn feed_all(conn: &mut Connection, bytes: &[u8], now: Instant) -> (Vec<Message>, Option<Error>) {
    let mut buf = BytesMut::from(bytes);
    let mut events = Vec::new();
    loop {
        match conn.read_event(&mut buf, now) {
            Ok(Some(ev)) => events.push(ev),
            Ok(None) => return (events, None),
            Err(e) => return (events, Some(e)),
        }
    }
}

/// Negotiated permessage-deflate parameters: no-context-takeover flags and window bits.
pub fn params(snct: bool, cnct: bool, sbits: u8, cbits: u8) -> DeflateParams {
    DeflateParams {
        server_no_context_takeover: snct,
        client_no_context_takeover: cnct,
        server_max_window_bits: sbits,
        client_max_window_bits: cbits,
    }
}
