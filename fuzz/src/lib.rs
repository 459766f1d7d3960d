//! Shared pieces of the wsx-proto fuzz targets: reading structure out of the fuzzer's bytes,
//! building frames, establishing a connection through the real opening handshake, and checking
//! what a connection writes on the wire.
//!
//! Everything here uses only wsx-proto's public API: the targets reach the crate the way a peer
//! and a driver do.

use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use wsx_proto::deflate::{DeflateConfig, DeflateParams, PerMessageDeflate};
use wsx_proto::frame::{CloseCode, FrameHeader, OpCode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use wsx_proto::handshake::{
    accept_response, check_request, write_response, ClientHandshake, ClientRequestConfig, HandshakeLimits,
    RequestReader,
};
use wsx_proto::mask::apply_mask;
use wsx_proto::{Config, Connection, Role};

/// Reads structure from the front of the fuzzer's input; past its end every read gives zeros
/// (so a short input is still a valid, if dull, test case).
#[derive(Debug, Clone)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Wraps the fuzzer's bytes.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// The next byte, or 0 at the end.
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// The next two bytes, big-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    /// The next `n` bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A slice whose length is given by the next byte.
    pub fn short_slice(&mut self) -> &'a [u8] {
        let n = self.byte() as usize;
        self.take(n)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(usize::MAX)
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// The length of a chunk of input from the low six bits of `code`: 1 to 61 bytes, or 256, 1024
/// or 4096 bytes for the three largest values (so that whole frames, and many frames, also
/// arrive in one read).
pub fn chunk_len(code: u8) -> usize {
    match code & 0x3f {
        0x3f => 4096,
        0x3e => 1024,
        0x3d => 256,
        n => n as usize + 1,
    }
}

/// Encodes one frame: the header with `opcode`, FIN, RSV1 and an optional mask key, then the
/// payload (masked with the key).
pub fn encode_frame(opcode: OpCode, fin: bool, rsv1: bool, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut header = FrameHeader::new(opcode, payload.len() as u64, mask);
    header.fin = fin;
    header.rsv1 = rsv1;
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = header.encode(&mut head);
    let mut out = head[..n].to_vec();
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key, 0);
    }
    out
}

/// One frame as it was on the wire, unmasked.
#[derive(Debug, Clone)]
pub struct WireFrame {
    /// The parsed header.
    pub header: FrameHeader,
    /// The payload, unmasked.
    pub payload: Vec<u8>,
}

/// Splits bytes a connection wrote into frames; panics if they are not whole, valid frames.
pub fn parse_frames(mut wire: &[u8]) -> Vec<WireFrame> {
    let mut frames = Vec::new();
    while !wire.is_empty() {
        let (header, n) = match FrameHeader::parse(wire) {
            Ok(Some(parsed)) => parsed,
            other => panic!("the connection wrote an invalid or partial frame header: {other:?} in {wire:02x?}"),
        };
        let len = usize::try_from(header.payload_len).expect("payload length fits in memory");
        assert!(wire.len() - n >= len, "the connection wrote a partial frame: {header:?}");
        let mut payload = wire[n..n + len].to_vec();
        if let Some(key) = header.mask {
            apply_mask(&mut payload, key, 0);
        }
        frames.push(WireFrame { header, payload });
        wire = &wire[n + len..];
    }
    frames
}

/// Checks a close frame's payload as the peer must see it: empty, or a code that may appear on
/// the wire followed by at most 123 bytes of UTF-8. Returns the code.
pub fn check_close_payload(payload: &[u8]) -> Option<u16> {
    assert!(payload.len() != 1, "a close frame with a one-byte payload");
    if payload.is_empty() {
        return None;
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    assert!(CloseCode(code).is_valid_on_wire(), "close code {code} may not be sent");
    assert!(is_valid_on_wire_oracle(code), "close code {code} may not be sent (RFC 6455 §7.4)");
    let reason = &payload[2..];
    assert!(reason.len() <= 123, "close reason of {} bytes", reason.len());
    assert!(std::str::from_utf8(reason).is_ok(), "close reason is not UTF-8: {reason:02x?}");
    Some(code)
}

/// RFC 6455 §7.4 and the IANA registry, written independently of wsx-proto: 1000–1003 and
/// 1007–1014 are registered codes an endpoint may send; 3000–4999 are for libraries and
/// applications; 1004 (reserved), 1005, 1006 and 1015 (reporting only) and everything else may
/// not appear in a close frame.
pub fn is_valid_on_wire_oracle(code: u16) -> bool {
    (1000..=1003).contains(&code) || (1007..=1014).contains(&code) || (3000..=4999).contains(&code)
}

/// Follows everything one connection writes and checks it frame by frame: masked exactly when
/// the writer is a client, no RSV2/RSV3, RSV1 only on the first frame of a data message and only
/// with permessage-deflate, control frames whole and short, at most one close frame with a valid
/// payload, and nothing but pongs after it.
#[derive(Debug)]
pub struct OutputChecker {
    role: Role,
    deflate: bool,
    buf: Vec<u8>,
    close_seen: bool,
    close_code: Option<u16>,
    in_fragmented: bool,
    /// Every frame checked so far.
    pub frames: Vec<WireFrame>,
}

impl OutputChecker {
    /// A checker for what a connection of `role` writes.
    pub fn new(role: Role, deflate: bool) -> Self {
        Self {
            role,
            deflate,
            buf: Vec::new(),
            close_seen: false,
            close_code: None,
            in_fragmented: false,
            frames: Vec::new(),
        }
    }

    /// Whether a close frame was written.
    pub fn close_seen(&self) -> bool {
        self.close_seen
    }

    /// The code of the close frame written, if it had one.
    pub fn close_code(&self) -> Option<u16> {
        self.close_code
    }

    /// Takes up to `max` bytes of the connection's output and checks every frame they complete.
    /// Returns the bytes taken.
    pub fn drain(&mut self, conn: &mut Connection, max: usize) -> Vec<u8> {
        let out = conn.output();
        let n = out.remaining().min(max);
        let bytes = out.copy_to_bytes(n).to_vec();
        self.buf.extend_from_slice(&bytes);
        self.check_complete();
        bytes
    }

    fn check_complete(&mut self) {
        loop {
            let (header, n) = match FrameHeader::parse(&self.buf) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return,
                Err(e) => panic!("the connection wrote an invalid frame header ({e}): {:02x?}", self.buf),
            };
            let len = usize::try_from(header.payload_len).expect("payload length fits in memory");
            if self.buf.len() - n < len {
                return;
            }
            let mut payload = self.buf[n..n + len].to_vec();
            if let Some(key) = header.mask {
                apply_mask(&mut payload, key, 0);
            }
            self.buf.drain(..n + len);
            self.check_frame(&header, &payload);
            self.frames.push(WireFrame { header, payload });
        }
    }

    fn check_frame(&mut self, h: &FrameHeader, payload: &[u8]) {
        assert_eq!(h.mask.is_some(), self.role == Role::Client, "masking of our own frame: {h:?}");
        assert!(!h.rsv2 && !h.rsv3, "we set RSV2/RSV3: {h:?}");
        if h.opcode.is_control() {
            assert!(h.fin, "we fragmented a control frame: {h:?}");
            assert!(payload.len() <= MAX_CONTROL_PAYLOAD, "control frame of {} bytes", payload.len());
            assert!(!h.rsv1, "RSV1 on a control frame: {h:?}");
        } else {
            assert!(!self.close_seen, "a data frame after our close frame: {h:?}");
            let first = !self.in_fragmented;
            assert_eq!(h.opcode == OpCode::Continuation, !first, "continuation out of place: {h:?}");
            assert!(!h.rsv1 || (self.deflate && first), "RSV1 where it may not be: {h:?}");
            self.in_fragmented = !h.fin;
        }
        match h.opcode {
            OpCode::Close => {
                assert!(!self.close_seen, "a second close frame");
                self.close_seen = true;
                self.close_code = check_close_payload(payload);
            }
            OpCode::Ping => assert!(!self.close_seen, "a ping after our close frame"),
            _ => {}
        }
    }

    /// At the end: whatever was drained ends on a frame boundary.
    pub fn finish(&self) {
        assert!(self.buf.is_empty(), "the connection's output ends inside a frame: {:02x?}", self.buf);
    }
}

/// How the fuzzer configures a connection: small limits, so that they are hit.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `Config::max_frame_size`.
    pub frame: usize,
    /// `Config::max_message_size`.
    pub message: usize,
    /// `Config::max_inflated_message_size`.
    pub inflated: usize,
    /// `Config::max_fragments`.
    pub fragments: usize,
    /// `Config::write_buffer_high_water`.
    pub high_water: usize,
}

impl Limits {
    /// One of four presets: the inflate budget below, equal to and above the message size.
    pub fn preset(n: u8) -> Self {
        match n % 4 {
            0 => Limits { frame: 256, message: 1024, inflated: 600, fragments: 8, high_water: 256 },
            1 => Limits { frame: 1024, message: 1024, inflated: 4096, fragments: 4, high_water: 1 },
            2 => Limits { frame: 64, message: 4096, inflated: 4096, fragments: 100, high_water: 4096 },
            _ => Limits { frame: 4096, message: 8192, inflated: 2048, fragments: 16, high_water: 64 },
        }
    }

    /// A connection config with these limits, a keepalive and an idle timeout.
    pub fn config(&self) -> Config {
        let mut c = Config::default();
        c.max_frame_size = self.frame;
        c.max_message_size = self.message;
        c.max_inflated_message_size = self.inflated;
        c.max_fragments = self.fragments;
        c.write_buffer_high_water = self.high_water;
        c.keepalive_interval = Some(Duration::from_secs(10));
        c.keepalive_timeout = Duration::from_secs(5);
        c.idle_timeout = Some(Duration::from_secs(60));
        c.close_timeout = Duration::from_secs(3);
        c.handshake = HandshakeLimits { max_head_bytes: 2048, max_headers: 16 };
        c.validate().expect("fuzz limits are a valid config");
        c
    }

    /// The largest data message this config lets through, compressed or not.
    pub fn largest_message(&self, compressed: bool) -> usize {
        if compressed {
            self.message.min(self.inflated)
        } else {
            self.message
        }
    }
}

/// The permessage-deflate settings of both ends, from two bytes of input.
#[derive(Debug, Clone)]
pub struct DeflateSetup {
    /// The client's configuration, when it offers permessage-deflate.
    pub client: Option<DeflateConfig>,
    /// The server's configuration, when it accepts permessage-deflate.
    pub server: Option<DeflateConfig>,
}

impl DeflateSetup {
    /// Bits 0–1 of `flags`: the client offers, the server accepts; bits 2–5 the context
    /// takeover choices of each side; `bits` the window sizes (8 + 3 bits each side).
    pub fn from_bytes(flags: u8, bits: u8) -> Self {
        let config = |snct: bool, cnct: bool, sbits: u8, cbits: u8, level: u8| {
            let mut c = DeflateConfig::default();
            c.server_no_context_takeover = snct;
            c.client_no_context_takeover = cnct;
            c.server_max_window_bits = 8 + (sbits & 7);
            c.client_max_window_bits = 8 + (cbits & 7);
            c.level = u32::from(level);
            c
        };
        let client = (flags & 1 != 0).then(|| config(flags & 4 != 0, flags & 8 != 0, bits, bits >> 3, 1));
        let server = (flags & 2 != 0).then(|| config(flags & 16 != 0, flags & 32 != 0, bits >> 6, bits >> 2, 6));
        Self { client, server }
    }
}

/// The key material of the client in [`establish`] (fixed: the fuzzer gains nothing from it).
pub const CLIENT_KEY_RANDOM: [u8; 16] = *b"wsx-fuzz-key-16b";

/// Two connections joined by the real opening handshake: `ours` (the role under test) and
/// `peer` (the other end, which reads what `ours` writes).
pub struct Established {
    /// The connection under test.
    pub ours: Connection,
    /// The other end, used to check that what `ours` writes is a valid stream for its role.
    pub peer: Connection,
    /// What was agreed, if permessage-deflate was.
    pub params: Option<DeflateParams>,
    /// Bytes that arrived with the handshake head and follow it (the first WebSocket bytes).
    pub leftover: BytesMut,
}

/// Runs the opening handshake between a client and a server, with `early` (the first bytes of
/// the WebSocket stream) arriving in the same read as the head that `role` receives, and checks
/// that both ends agree on permessage-deflate and that the head consumed exactly its own bytes.
pub fn establish(role: Role, limits: &Limits, deflate: &DeflateSetup, early: &[u8], now: Instant) -> Established {
    let config = limits.config();
    let hs_limits = config.handshake;
    let mut request_config = ClientRequestConfig::default();
    if let Some(c) = &deflate.client {
        request_config.extensions.push(c.client_offer());
    }
    let uri: http::Uri = "ws://fuzz.invalid/chat".parse().expect("valid URI");
    let mut client = ClientHandshake::new(&uri, request_config, CLIENT_KEY_RANDOM).expect("valid request");

    // Server side: read and check the request.
    let mut to_server = BytesMut::new();
    client.write_request(&mut to_server);
    if role == Role::Server {
        to_server.extend_from_slice(early);
    }
    let request = RequestReader::new()
        .read(&mut to_server, &hs_limits)
        .expect("our own request parses")
        .expect("our own request is complete");
    let upgrade = check_request(&request).expect("our own request is a valid upgrade");
    let negotiated = deflate.server.as_ref().and_then(|s| s.server_negotiate(&upgrade.extensions));
    let response = accept_response(&upgrade, None, negotiated.as_ref().map(|(_, r)| r.as_str()), &Default::default());

    // Client side: read and check the response.
    let mut to_client = BytesMut::new();
    write_response(&response, &mut to_client);
    if role == Role::Client {
        to_client.extend_from_slice(early);
    }
    let outcome = client
        .receive(&mut to_client, &hs_limits)
        .expect("our own response is valid")
        .expect("our own response is complete");
    let client_params = match (&deflate.client, outcome.extensions.as_deref()) {
        (Some(c), ext) => c.client_accept(ext.unwrap_or("")).expect("our own answer is acceptable"),
        (None, ext) => {
            assert!(ext.is_none(), "extensions in the answer to a request without any: {ext:?}");
            None
        }
    };
    let server_params = negotiated.map(|(p, _)| p);
    assert_eq!(server_params, client_params, "client and server disagree on permessage-deflate");
    if let Some(p) = &server_params {
        for bits in [p.server_max_window_bits, p.client_max_window_bits] {
            assert!((8..=15).contains(&bits), "window of {bits} bits agreed");
        }
    }

    let leftover = if role == Role::Server { to_server } else { to_client };
    assert_eq!(&leftover[..], early, "the handshake consumed more or less than its head");

    let keys = mask_keys();
    let (mut ours, mut peer) = match role {
        Role::Server => (Connection::server(config, now), Connection::client(Config::default(), now, keys)),
        Role::Client => (Connection::client(config, now, keys), Connection::server(Config::default(), now)),
    };
    if let Some(p) = &server_params {
        let level = 1;
        ours.set_deflate(PerMessageDeflate::new(p, role == Role::Server, level, 0));
        peer.set_deflate(PerMessageDeflate::new(p, role == Role::Client, level, 0));
    }
    Established { ours, peer, params: server_params, leftover }
}

/// A deterministic mask-key source (a client's keys do not matter to what is tested here).
pub fn mask_keys() -> impl FnMut() -> [u8; 4] + Send + 'static {
    let mut n: u32 = 0x9e37_79b9;
    move || {
        n = n.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        n.to_be_bytes()
    }
}

/// A data message as it was on the wire, seen by [`Shadow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireMessage {
    /// Text (else binary).
    pub text: bool,
    /// RSV1 on its first frame: compressed with permessage-deflate.
    pub compressed: bool,
    /// How many frames it had.
    pub frames: usize,
    /// Its largest frame's payload length.
    pub largest_frame: u64,
    /// Its payload length summed over its frames (compressed bytes, for a compressed message).
    pub wire_len: u64,
}

/// An independent, minimal reading of the bytes the peer sent: which data messages they hold,
/// in order, and how each was framed. It follows only the frame boundaries; the connection's
/// events are then checked against it (a message handed out must be one the peer completed,
/// with its type, and within the limits as framed).
#[derive(Debug, Default)]
pub struct Shadow {
    buf: Vec<u8>,
    current: Option<WireMessage>,
    /// The messages completed so far and not yet matched to an event.
    pub done: std::collections::VecDeque<WireMessage>,
    /// The stream broke a rule that leaves the message order undefined (the connection must
    /// fail there): nothing after that point is recorded.
    pub broken: bool,
}

impl Shadow {
    /// Follows the next bytes of the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.broken {
            return;
        }
        self.buf.extend_from_slice(bytes);
        loop {
            let (header, n) = match FrameHeader::parse(&self.buf) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return,
                Err(_) => {
                    self.broken = true;
                    return;
                }
            };
            let Some(end) = usize::try_from(header.payload_len).ok().and_then(|len| len.checked_add(n)) else {
                self.broken = true;
                return;
            };
            if self.buf.len() < end {
                return;
            }
            self.buf.drain(..end);
            if header.opcode.is_control() {
                if header.opcode == OpCode::Close {
                    self.broken = true;
                    return;
                }
                continue;
            }
            let message = match (header.opcode, self.current.take()) {
                (OpCode::Continuation, Some(m)) => m,
                (OpCode::Text | OpCode::Binary, None) => WireMessage {
                    text: header.opcode == OpCode::Text,
                    compressed: header.rsv1,
                    frames: 0,
                    largest_frame: 0,
                    wire_len: 0,
                },
                _ => {
                    self.broken = true;
                    return;
                }
            };
            let message = WireMessage {
                frames: message.frames + 1,
                largest_frame: message.largest_frame.max(header.payload_len),
                wire_len: message.wire_len + header.payload_len,
                ..message
            };
            if header.fin {
                self.done.push_back(message);
            } else {
                self.current = Some(message);
            }
        }
    }
}
