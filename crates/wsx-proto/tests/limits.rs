//! Configured limits: frame size, message size and fragment count, each answered with 1009 as
//! soon as the offending header arrives, without buffering what the peer only announced.

mod common;

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use common::{client_frame, drain, encode_frame, feed_all, server_frame, single_close_code};
use wsx_proto::frame::{FrameHeader, OpCode};
use wsx_proto::{Config, Connection, Error, LimitError, Message, State};

const KEY: [u8; 4] = [0xA1, 0xB2, 0xC3, 0xD4];

fn limited(max_frame: usize, max_message: usize, max_fragments: usize) -> Config {
    let mut c = Config::default();
    c.max_frame_size = max_frame;
    c.max_message_size = max_message;
    c.max_fragments = max_fragments;
    c
}

/// The encoded header alone of a masked client frame declaring `len` payload bytes.
fn header_only(opcode: OpCode, fin: bool, len: u64) -> Vec<u8> {
    let mut h = FrameHeader::new(opcode, len, Some(KEY));
    h.fin = fin;
    encode_frame(h, &[])
}

#[test]
fn huge_declared_frame_fails_at_the_header_without_allocating() {
    let now = Instant::now();
    let mut server = Connection::server(Config::default(), now);
    let header = header_only(OpCode::Binary, true, 1 << 40);
    assert_eq!(header.len(), 14);
    let mut buf = BytesMut::with_capacity(64);
    buf.extend_from_slice(&header);
    let capacity = buf.capacity();
    let err = server.read_event(&mut buf, now).unwrap_err();
    assert_eq!(err, Error::Limit(LimitError::FrameTooLarge { declared: 1 << 40, limit: 16 << 20 }));
    assert_eq!(err.close_code().map(|c| c.0), Some(1009));
    // Nothing was reserved for the announced payload.
    assert!(buf.capacity() <= capacity, "read buffer grew from {capacity} to {}", buf.capacity());
    assert!(buf.is_empty());
    assert_eq!(server.state(), State::Closed);
    assert_eq!(single_close_code(&drain(&mut server)), Some(1009));
}

#[test]
fn frame_size_limit_is_exact_and_checked_before_the_payload() {
    let now = Instant::now();
    // Exactly at the limit: accepted.
    let mut server = Connection::server(limited(1000, 1 << 20, 16), now);
    let payload = vec![7u8; 1000];
    let (events, err) = feed_all(&mut server, &client_frame(OpCode::Binary, true, &payload), now);
    assert_eq!(err, None);
    assert_eq!(events, [Message::binary(payload)]);

    // One byte over: refused from the header alone, with none of the payload present.
    let mut server = Connection::server(limited(1000, 1 << 20, 16), now);
    let (events, err) = feed_all(&mut server, &header_only(OpCode::Text, true, 1001), now);
    assert!(events.is_empty());
    assert_eq!(err, Some(Error::Limit(LimitError::FrameTooLarge { declared: 1001, limit: 1000 })));
    assert_eq!(single_close_code(&drain(&mut server)), Some(1009));
}

#[test]
fn an_allowed_large_frame_is_not_preallocated() {
    let now = Instant::now();
    let mut server = Connection::server(Config::default(), now);
    let mut buf = BytesMut::with_capacity(256);
    buf.extend_from_slice(&header_only(OpCode::Binary, true, 10 << 20));
    buf.extend_from_slice(&[0u8; 100]);
    let capacity = buf.capacity();
    assert_eq!(server.read_event(&mut buf, now), Ok(None));
    assert!(buf.capacity() <= capacity, "read buffer grew from {capacity} to {}", buf.capacity());
    // The header was consumed, the partial payload is kept.
    assert_eq!(buf.len(), 100);
    assert_eq!(server.state(), State::Open);
}

#[test]
fn message_size_limit_across_fragments() {
    let now = Instant::now();
    let config = limited(600, 1000, 16);
    // 500 + 400 + 100 = 1000: accepted.
    let mut wire = client_frame(OpCode::Binary, false, &[1u8; 500]);
    wire.extend(client_frame(OpCode::Continuation, false, &[2u8; 400]));
    wire.extend(client_frame(OpCode::Continuation, true, &[3u8; 100]));
    let mut server = Connection::server(config.clone(), now);
    let (events, err) = feed_all(&mut server, &wire, now);
    assert_eq!(err, None);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].payload().len(), 1000);

    // 500 + 400, then a header announcing 101 more: refused before those bytes arrive.
    let mut server = Connection::server(config.clone(), now);
    let mut wire = client_frame(OpCode::Text, false, &[b'a'; 500]);
    wire.extend(client_frame(OpCode::Continuation, false, &[b'b'; 400]));
    wire.extend(header_only(OpCode::Continuation, true, 101));
    let (events, err) = feed_all(&mut server, &wire, now);
    assert!(events.is_empty());
    assert_eq!(err, Some(Error::Limit(LimitError::MessageTooLarge { limit: 1000 })));
    assert_eq!(server.state(), State::Closed);
    assert_eq!(single_close_code(&drain(&mut server)), Some(1009));

    // An unfragmented message larger than max_message_size but within max_frame_size.
    let mut server = Connection::server(limited(600, 300, 16), now);
    let (_, err) = feed_all(&mut server, &header_only(OpCode::Binary, true, 301), now);
    assert_eq!(err, Some(Error::Limit(LimitError::MessageTooLarge { limit: 300 })));
    assert_eq!(single_close_code(&drain(&mut server)), Some(1009));
}

#[test]
fn fragment_count_limit() {
    let now = Instant::now();
    let build = |n: usize| {
        let mut wire = Vec::new();
        for i in 0..n {
            let op = if i == 0 { OpCode::Text } else { OpCode::Continuation };
            wire.extend(client_frame(op, i + 1 == n, b"ab"));
            // Control frames between fragments do not count.
            wire.extend(client_frame(OpCode::Ping, true, b""));
        }
        wire
    };
    let mut server = Connection::server(limited(1 << 20, 1 << 20, 4), now);
    let (events, err) = feed_all(&mut server, &build(4), now);
    assert_eq!(err, None);
    assert_eq!(events.iter().filter(|m| m.is_data()).collect::<Vec<_>>(), [&Message::text("abababab")]);

    let mut server = Connection::server(limited(1 << 20, 1 << 20, 4), now);
    let (events, err) = feed_all(&mut server, &build(5), now);
    assert_eq!(err, Some(Error::Limit(LimitError::TooManyFragments { limit: 4 })));
    assert!(events.iter().all(|m| !m.is_data()));
    assert_eq!(server.state(), State::Closed);
    let out = common::parse_frames(&drain(&mut server));
    // Four pongs, then the close.
    assert_eq!(out.len(), 5);
    assert_eq!(out[4].close_code(), Some(1009));

    // A limit of one allows unfragmented messages only.
    let mut server = Connection::server(limited(1 << 20, 1 << 20, 1), now);
    let (events, err) = feed_all(&mut server, &client_frame(OpCode::Binary, true, b"whole"), now);
    assert_eq!((events, err), (vec![Message::binary(Bytes::from_static(b"whole"))], None));
    let (_, err) = feed_all(&mut server, &build(2), now);
    assert_eq!(err, Some(Error::Limit(LimitError::TooManyFragments { limit: 1 })));
}

#[test]
fn client_enforces_limits_too() {
    let now = Instant::now();
    let mut client = Connection::client(limited(10, 100, 4), now, || [5, 6, 7, 8]);
    let (events, err) = feed_all(&mut client, &server_frame(OpCode::Binary, true, &[0u8; 11]), now);
    assert!(events.is_empty());
    assert_eq!(err, Some(Error::Limit(LimitError::FrameTooLarge { declared: 11, limit: 10 })));
    let out = common::parse_frames(&drain(&mut client));
    assert_eq!(out.len(), 1);
    assert!(out[0].header.mask.is_some());
    assert_eq!(out[0].close_code(), Some(1009));
}

#[test]
fn limit_close_frame_is_a_valid_control_frame_the_peer_accepts() {
    // The reason carries the error text, with the longest numbers it can have.
    let now = Instant::now();
    let mut server = Connection::server(limited(1 << 62, usize::MAX, 16), now);
    let (_, err) = feed_all(&mut server, &header_only(OpCode::Binary, true, u64::MAX >> 1), now);
    assert_eq!(err, Some(Error::Limit(LimitError::FrameTooLarge { declared: u64::MAX >> 1, limit: 1 << 62 })));
    let wire = drain(&mut server);
    let out = common::parse_frames(&wire);
    assert_eq!(out.len(), 1);
    assert!(out[0].payload.len() <= 125);
    let mut client = Connection::client(Config::default(), now, || [1, 1, 1, 1]);
    let (events, err) = feed_all(&mut client, &wire, now);
    assert_eq!(err, None);
    match events.as_slice() {
        [Message::Close(Some(f))] => {
            assert_eq!(f.code.0, 1009);
            assert!(f.reason.contains("max_frame_size"), "{:?}", f.reason);
        }
        other => panic!("unexpected events {other:?}"),
    }
}
