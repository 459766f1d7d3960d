//! `Connection::read_chunk`: data messages handed out as chunks as they arrive, never assembled,
//! under the same limits as whole messages, with control frames surfacing between chunks.

mod common;

use std::time::Instant;

use bytes::BytesMut;
use common::{client_frame, drain, parse_frames, single_close_code, Rng};
use wsx_proto::deflate::{DeflateParams, PerMessageDeflate};
use wsx_proto::frame::{FrameHeader, OpCode};
use wsx_proto::{Chunk, Config, Connection, Error, LimitError, Message, ProtocolError, State, StreamEvent, UsageError};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn with(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::default();
    f(&mut c);
    c
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// Text with 1-, 2-, 3- and 4-byte characters.
fn multibyte_text(chars: usize) -> String {
    ['a', 'é', 'ж', '€', '語', '😀', ' ', '𝄞'].iter().cycle().take(chars).collect()
}

/// A masked frame, optionally with RSV1 (compressed).
fn frame(opcode: OpCode, fin: bool, rsv1: bool, payload: &[u8]) -> Vec<u8> {
    let mut h = FrameHeader::new(opcode, payload.len() as u64, Some(KEY));
    h.fin = fin;
    h.rsv1 = rsv1;
    common::encode_frame(h, payload)
}

/// What a read loop saw: every event in order and the error that ended it, if any.
#[derive(Default, Debug)]
struct Seen {
    events: Vec<StreamEvent>,
    error: Option<Error>,
    /// For each chunk: the size of the read after which it was handed out.
    read_sizes: Vec<usize>,
}

impl Seen {
    fn chunks(&self) -> Vec<&Chunk> {
        self.events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Chunk(c) => Some(c),
                StreamEvent::Control(_) => None,
            })
            .collect()
    }

    fn data(&self) -> Vec<u8> {
        self.chunks().iter().flat_map(|c| c.data.iter().copied()).collect()
    }
}

/// Feeds `wire` to `conn` in reads of `1..=max_read` bytes (random, from `seed`), calling
/// `read_chunk` after every read until it has nothing more; stops at the first error.
fn stream(conn: &mut Connection, wire: &[u8], max_read: usize, seed: u64) -> Seen {
    let now = Instant::now();
    let mut rng = Rng::new(seed);
    let mut buf = BytesMut::new();
    let mut seen = Seen::default();
    let mut rest = wire;
    while !rest.is_empty() {
        let n = rng.chunk_len(max_read).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match conn.read_chunk(&mut buf, now) {
                Ok(Some(ev)) => {
                    if matches!(ev, StreamEvent::Chunk(_)) {
                        seen.read_sizes.push(n);
                    }
                    seen.events.push(ev);
                }
                Ok(None) => break,
                Err(e) => {
                    seen.error = Some(e);
                    return seen;
                }
            }
        }
    }
    seen
}

/// Asserts the flags of one message's chunks: first on the first only, fin on the last only.
fn assert_one_message(chunks: &[&Chunk], text: bool) {
    assert!(!chunks.is_empty());
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.text, text, "chunk {i}");
        assert_eq!(c.first, i == 0, "chunk {i} first");
        assert_eq!(c.fin, i == chunks.len() - 1, "chunk {i} fin");
    }
}

#[test]
fn binary_message_in_one_frame_arrives_in_chunks_no_larger_than_the_reads() {
    let payload = pseudo_random(10 << 20, 1);
    let wire = client_frame(OpCode::Binary, true, &payload);
    let mut server = Connection::server(Config::default(), Instant::now());
    let seen = stream(&mut server, &wire, 64 * 1024, 7);
    assert_eq!(seen.error, None);
    let chunks = seen.chunks();
    assert!(chunks.len() > 100, "{} chunks", chunks.len());
    assert_one_message(&chunks, false);
    for (c, read) in chunks.iter().zip(&seen.read_sizes) {
        assert!(c.data.len() <= *read, "a chunk of {} bytes after a read of {read}", c.data.len());
    }
    assert!(seen.data() == payload, "the chunks do not concatenate to the message");
    assert_eq!(server.state(), State::Open);
    assert!(drain(&mut server).is_empty());
}

#[test]
fn fragmented_text_chunks_are_each_valid_utf8() {
    let text = multibyte_text(3000);
    let bytes = text.as_bytes();
    for seed in 1..=20u64 {
        // Frames cut at random byte positions (most of them inside a character).
        let mut rng = Rng::new(seed);
        let mut wire = Vec::new();
        let mut start = 0;
        let mut frames = 0;
        while start < bytes.len() {
            let end = (start + rng.chunk_len(50)).min(bytes.len());
            let opcode = if start == 0 { OpCode::Text } else { OpCode::Continuation };
            wire.extend(frame(opcode, end == bytes.len(), false, &bytes[start..end]));
            start = end;
            frames += 1;
        }
        assert!(frames > 100);
        let mut server = Connection::server(Config::default(), Instant::now());
        let max_read = if seed % 2 == 0 { 7 } else { 300 };
        let seen = stream(&mut server, &wire, max_read, seed);
        assert_eq!(seen.error, None, "seed {seed}");
        let chunks = seen.chunks();
        assert_one_message(&chunks, true);
        for c in &chunks {
            assert!(std::str::from_utf8(&c.data).is_ok(), "seed {seed}: chunk {:?} is not UTF-8", c.data);
            assert!(c.as_str().is_some());
        }
        assert_eq!(seen.data(), bytes, "seed {seed}");
    }
}

#[test]
fn invalid_utf8_fails_with_1007_as_soon_as_it_arrives() {
    // A text message declared as 10,000 bytes whose byte 150 is invalid: it fails when byte 150
    // arrives, long before the frame is complete.
    let mut payload = "é".repeat(5000).into_bytes();
    let cut = 150;
    payload[cut] = 0xff;
    let wire = frame(OpCode::Text, true, false, &payload);
    let mut server = Connection::server(Config::default(), Instant::now());
    let now = Instant::now();
    // 8 header bytes, then the payload up to and including the bad byte.
    let mut buf = BytesMut::from(&wire[..8 + cut + 1]);
    let mut before = Vec::new();
    let err = loop {
        match server.read_chunk(&mut buf, now) {
            Ok(Some(StreamEvent::Chunk(c))) => before.extend_from_slice(&c.data),
            Ok(other) => panic!("expected the error, got {other:?}"),
            Err(e) => break e,
        }
    };
    assert_eq!(err, Error::Protocol(ProtocolError::InvalidUtf8));
    assert!(before.len() <= cut, "only valid bytes before the fault were handed out");
    assert_eq!(server.state(), State::Closed);
    assert_eq!(single_close_code(&drain(&mut server)), Some(1007));
}

#[test]
fn message_over_max_message_size_fails_with_1009() {
    let config = with(|c| {
        c.max_frame_size = 600;
        c.max_message_size = 1000;
    });
    let mut wire = frame(OpCode::Binary, false, false, &[1; 600]);
    wire.extend(frame(OpCode::Continuation, true, false, &[2; 600]));
    let mut server = Connection::server(config, Instant::now());
    let seen = stream(&mut server, &wire, 100, 3);
    assert_eq!(seen.error, Some(Error::Limit(LimitError::MessageTooLarge { limit: 1000 })));
    // The first frame went out as chunks; the second was refused from its header.
    assert_eq!(seen.data(), vec![1; 600]);
    assert_eq!(single_close_code(&drain(&mut server)), Some(1009));
}

#[test]
fn too_many_fragments_fail_with_1009() {
    let config = with(|c| c.max_fragments = 3);
    let mut wire = frame(OpCode::Text, false, false, b"a");
    for _ in 0..3 {
        wire.extend(frame(OpCode::Continuation, false, false, b"b"));
    }
    let mut server = Connection::server(config, Instant::now());
    let seen = stream(&mut server, &wire, 1000, 3);
    assert_eq!(seen.error, Some(Error::Limit(LimitError::TooManyFragments { limit: 3 })));
    assert_eq!(seen.data(), b"abb");
}

#[test]
fn ping_between_fragments_is_answered_and_surfaced() {
    let mut wire = frame(OpCode::Text, false, false, b"hel");
    wire.extend(frame(OpCode::Ping, true, false, b"p"));
    wire.extend(frame(OpCode::Continuation, true, false, b"lo"));
    let mut server = Connection::server(Config::default(), Instant::now());
    let seen = stream(&mut server, &wire, 1000, 1);
    assert_eq!(seen.error, None);
    let texts: Vec<String> = seen
        .events
        .iter()
        .map(|e| match e {
            StreamEvent::Chunk(c) => {
                format!("{}{}{}", if c.first { "[" } else { "" }, c.as_str().unwrap(), if c.fin { "]" } else { "" })
            }
            StreamEvent::Control(m) => format!("{m:?}"),
        })
        .collect();
    assert_eq!(texts, ["[hel", &format!("{:?}", Message::Ping("p".into())), "lo]"]);
    let out = parse_frames(&drain(&mut server));
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].header.opcode, &out[0].payload[..]), (OpCode::Pong, &b"p"[..]));
}

#[test]
fn read_chunk_takes_over_from_read_event_but_not_the_reverse() {
    let mut wire = frame(OpCode::Text, false, false, "ab€".as_bytes());
    let second = frame(OpCode::Continuation, true, false, b"cd");
    let now = Instant::now();
    let mut server = Connection::server(Config::default(), now);
    // read_event assembles the first frame; read_chunk hands the message out from there.
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(server.read_event(&mut buf, now), Ok(None));
    buf.extend_from_slice(&second);
    let Some(StreamEvent::Chunk(c)) = server.read_chunk(&mut buf, now).unwrap() else { panic!() };
    assert!(c.first && c.fin);
    assert_eq!(c.as_str(), Some("ab€cd"));
    // A message that read_chunk started cannot be finished by read_event.
    wire = frame(OpCode::Binary, false, false, b"xy");
    let mut buf = BytesMut::from(&wire[..]);
    assert!(matches!(server.read_chunk(&mut buf, now), Ok(Some(StreamEvent::Chunk(_)))));
    buf.extend_from_slice(&frame(OpCode::Continuation, true, false, b"z"));
    assert!(matches!(server.read_event(&mut buf, now), Err(Error::Usage(UsageError::Fragmentation(_)))));
    assert_eq!(server.state(), State::Open);
    let Some(StreamEvent::Chunk(c)) = server.read_chunk(&mut buf, now).unwrap() else { panic!() };
    assert_eq!((&c.data[..], c.first, c.fin), (&b"z"[..], false, true));
}

// ------------------------------------------------------------------ compressed messages

fn params() -> DeflateParams {
    DeflateParams {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    }
}

fn deflate_server(config: Config) -> Connection {
    let mut conn = Connection::server(config, Instant::now());
    conn.set_deflate(PerMessageDeflate::new(&params(), true, 1, 0));
    conn
}

/// `text` compressed as a client would, in two frames (the first with RSV1).
fn compressed_wire(text: &[u8]) -> Vec<u8> {
    let mut compressor = PerMessageDeflate::new(&params(), false, 6, 0);
    let compressed = compressor.compress(text).expect("compressible");
    let half = compressed.len() / 2;
    let mut wire = frame(OpCode::Text, false, true, &compressed[..half]);
    wire.extend(frame(OpCode::Continuation, true, false, &compressed[half..]));
    wire
}

#[test]
fn compressed_message_is_streamed_as_small_inflated_chunks() {
    let text = multibyte_text(1 << 20); // about 2.6 MB, compresses very well
    let config = with(|c| c.max_inflated_message_size = 8 << 20);
    let wire = compressed_wire(text.as_bytes());
    let mut server = deflate_server(config);
    // All of it in one read: the inflated chunks stay small anyway.
    let seen = stream(&mut server, &wire, wire.len(), 1);
    assert_eq!(seen.error, None);
    let chunks = seen.chunks();
    assert!(chunks.len() > 10, "{} chunks", chunks.len());
    assert_one_message(&chunks, true);
    let largest = chunks.iter().map(|c| c.data.len()).max().unwrap();
    assert!(largest <= 128 * 1024, "a chunk of {largest} bytes");
    assert!(chunks.iter().all(|c| c.as_str().is_some()));
    assert!(seen.data() == text.as_bytes());
    // And with small reads, across the frame boundary.
    let mut server = deflate_server(with(|c| c.max_inflated_message_size = 8 << 20));
    let seen = stream(&mut server, &wire, 100, 5);
    assert_eq!(seen.error, None);
    assert!(seen.chunks().iter().all(|c| c.as_str().is_some()));
    assert!(seen.data() == text.as_bytes());
}

#[test]
fn compressed_message_is_capped_by_max_inflated_message_size() {
    let text = multibyte_text(1 << 20);
    let limit = 1 << 20;
    let wire = compressed_wire(text.as_bytes());
    let mut server = deflate_server(with(|c| c.max_inflated_message_size = limit));
    let seen = stream(&mut server, &wire, 4096, 2);
    assert_eq!(seen.error, Some(Error::Limit(LimitError::InflatedMessageTooLarge { limit })));
    let handed_out = seen.data().len();
    assert!(handed_out > limit / 2 && handed_out <= limit, "{handed_out} bytes handed out");
    assert_eq!(single_close_code(&drain(&mut server)), Some(1009));
}
