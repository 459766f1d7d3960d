//! Protocol violations by the peer: each fails the connection with the right close code on the
//! wire, as early as the offending byte allows, and the connection then ignores further input.

mod common;

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use common::{client_frame, drain, encode_frame, feed_all, server_frame, single_close_code};
use wsx_proto::frame::{FrameHeader, OpCode};
use wsx_proto::{Config, Connection, Error, Message, ProtocolError, State};

const KEY: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

/// Feeds `wire` to a fresh server: the events before the error, the error, and the close code
/// the server wrote (asserting it wrote exactly one close frame).
fn server_fails(wire: &[u8]) -> (Vec<Message>, ProtocolError, Option<u16>) {
    let now = Instant::now();
    let mut server = Connection::server(Config::default(), now);
    let (events, err) = feed_all(&mut server, wire, now);
    let err = match err {
        Some(Error::Protocol(e)) => e,
        other => panic!("expected a protocol error, got {other:?} after {events:?}"),
    };
    assert_eq!(server.state(), State::Closed);
    let code = single_close_code(&drain(&mut server));
    (events, err, code)
}

#[test]
fn reserved_bits() {
    for bits in [0x40u8, 0x20, 0x10, 0x70] {
        let mut wire = client_frame(OpCode::Text, true, b"hi");
        wire[0] |= bits;
        let (events, err, code) = server_fails(&wire);
        assert!(events.is_empty());
        assert_eq!((err, code), (ProtocolError::ReservedBits, Some(1002)), "bits {bits:#x}");
    }
    // Also on a control frame.
    let mut wire = client_frame(OpCode::Ping, true, b"");
    wire[0] |= 0x40;
    assert_eq!(server_fails(&wire).1, ProtocolError::ReservedBits);
}

#[test]
fn unmasked_client_frame() {
    for op in [OpCode::Text, OpCode::Binary, OpCode::Ping, OpCode::Close] {
        let (events, err, code) = server_fails(&server_frame(op, true, b""));
        assert!(events.is_empty());
        assert_eq!((err, code), (ProtocolError::UnmaskedFrame, Some(1002)), "{op:?}");
    }
}

#[test]
fn masked_server_frame() {
    let now = Instant::now();
    let mut client = Connection::client(Config::default(), now, || [4, 3, 2, 1]);
    let (events, err) = feed_all(&mut client, &client_frame(OpCode::Binary, true, b"abc"), now);
    assert!(events.is_empty());
    assert_eq!(err, Some(Error::Protocol(ProtocolError::MaskedFrame)));
    assert_eq!(client.state(), State::Closed);
    let out = common::parse_frames(&drain(&mut client));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].close_code(), Some(1002));
    assert!(out[0].header.mask.is_some(), "the client's own close must be masked");
}

#[test]
fn control_frame_too_long() {
    for op in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
        // The header alone is enough.
        let header = encode_frame(FrameHeader::new(op, 126, Some(KEY)), &[]);
        let (events, err, code) = server_fails(&header);
        assert!(events.is_empty());
        assert_eq!((err, code), (ProtocolError::ControlFrameTooLong, Some(1002)), "{op:?}");
    }
    // 125 is fine.
    let now = Instant::now();
    let mut server = Connection::server(Config::default(), now);
    let (events, err) = feed_all(&mut server, &client_frame(OpCode::Ping, true, &[1u8; 125]), now);
    assert_eq!((events, err), (vec![Message::Ping(Bytes::from(vec![1u8; 125]))], None));
}

#[test]
fn fragmented_control_frame() {
    for op in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
        let (events, err, code) = server_fails(&client_frame(op, false, b"x\x03"));
        assert!(events.is_empty());
        assert_eq!((err, code), (ProtocolError::FragmentedControlFrame, Some(1002)), "{op:?}");
    }
}

#[test]
fn continuation_without_start() {
    let (events, err, code) = server_fails(&client_frame(OpCode::Continuation, true, b"x"));
    assert!(events.is_empty());
    assert_eq!((err, code), (ProtocolError::UnexpectedContinuation, Some(1002)));
    // Also right after a complete message.
    let mut wire = client_frame(OpCode::Text, false, b"a");
    wire.extend(client_frame(OpCode::Continuation, true, b"b"));
    wire.extend(client_frame(OpCode::Continuation, true, b"c"));
    let (events, err, code) = server_fails(&wire);
    assert_eq!(events, [Message::text("ab")]);
    assert_eq!((err, code), (ProtocolError::UnexpectedContinuation, Some(1002)));
}

#[test]
fn new_data_frame_during_fragmented_message() {
    for (first, second) in
        [(OpCode::Text, OpCode::Text), (OpCode::Text, OpCode::Binary), (OpCode::Binary, OpCode::Text)]
    {
        let mut wire = client_frame(first, false, b"part");
        wire.extend(client_frame(OpCode::Ping, true, b"ok"));
        wire.extend(client_frame(second, true, b"new"));
        let (events, err, code) = server_fails(&wire);
        assert_eq!(events, [Message::Ping(Bytes::from_static(b"ok"))]);
        assert_eq!((err, code), (ProtocolError::ExpectedContinuation, Some(1002)), "{first:?} {second:?}");
    }
}

#[test]
fn reserved_opcodes() {
    for op in [0x3u8, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        // Only the first two bytes have arrived.
        let (events, err, code) = server_fails(&[0x80 | op, 0x80]);
        assert!(events.is_empty());
        assert_eq!((err, code), (ProtocolError::ReservedOpcode(op), Some(1002)), "{op:#x}");
    }
}

#[test]
fn length_with_most_significant_bit_set() {
    let mut wire = vec![0x82, 0xFF];
    wire.extend_from_slice(&(1u64 << 63).to_be_bytes());
    wire.extend_from_slice(&KEY);
    let (_, err, code) = server_fails(&wire);
    assert_eq!((err, code), (ProtocolError::InvalidLength, Some(1002)));
}

#[test]
fn invalid_utf8_in_text() {
    let cases: [&[&[u8]]; 7] = [
        &[b"\xff"],
        &[b"abc\xc0\xafdef"],                  // overlong
        &[b"\xed\xa0\x80"],                    // surrogate
        &[b"\xf4\x90\x80\x80"],                // above U+10FFFF
        &[b"ok\xe2\x82"],                      // truncated at the end of the message
        &[b"ok\xe2", b"\x82"],                 // truncated at the end, across fragments
        &[b"caf\xc3", b"\xa9 ok", b"\x80 no"], // invalid in the last fragment only
    ];
    for fragments in cases {
        let mut wire = Vec::new();
        for (i, f) in fragments.iter().enumerate() {
            let op = if i == 0 { OpCode::Text } else { OpCode::Continuation };
            wire.extend(client_frame(op, i + 1 == fragments.len(), f));
        }
        let (events, err, code) = server_fails(&wire);
        assert!(events.is_empty());
        assert_eq!((err, code), (ProtocolError::InvalidUtf8, Some(1007)), "{fragments:?}");
    }
    // Binary messages are not validated.
    let now = Instant::now();
    let mut server = Connection::server(Config::default(), now);
    let (events, err) = feed_all(&mut server, &client_frame(OpCode::Binary, true, b"\xff\xfe"), now);
    assert_eq!((events, err), (vec![Message::binary(Bytes::from_static(b"\xff\xfe"))], None));
}

#[test]
fn control_payloads_between_text_fragments_are_not_part_of_the_text() {
    let now = Instant::now();
    let mut server = Connection::server(Config::default(), now);
    // "€" = E2 82 AC split across fragments, with a ping carrying invalid UTF-8 in between.
    let mut wire = client_frame(OpCode::Text, false, b"\xe2\x82");
    wire.extend(client_frame(OpCode::Ping, true, b"\xff"));
    wire.extend(client_frame(OpCode::Continuation, true, b"\xac"));
    let (events, err) = feed_all(&mut server, &wire, now);
    assert_eq!(err, None);
    assert_eq!(events, [Message::Ping(Bytes::from_static(b"\xff")), Message::text("€")]);
}

#[test]
fn invalid_utf8_in_the_first_fragment_fails_before_the_rest_arrives() {
    let now = Instant::now();
    let mut server = Connection::server(Config::default(), now);
    // Only the first fragment (fin clear) has arrived: the message can never become valid.
    let (events, err) = feed_all(&mut server, &client_frame(OpCode::Text, false, b"ab\xffcd"), now);
    assert!(events.is_empty());
    assert_eq!(err, Some(Error::Protocol(ProtocolError::InvalidUtf8)));
    assert_eq!(single_close_code(&drain(&mut server)), Some(1007));
}

#[test]
fn invalid_utf8_in_a_partly_arrived_frame_fails_at_once() {
    let now = Instant::now();
    let mut payload = b"hello \xc3\x28".to_vec();
    payload.resize(1000, b'z');
    let wire = client_frame(OpCode::Text, true, &payload);
    let header_len = wire.len() - payload.len();

    // First a valid prefix that ends inside a character: no error yet.
    let mut server = Connection::server(Config::default(), now);
    let mut buf = BytesMut::from(&wire[..header_len + 7]);
    assert_eq!(server.read_event(&mut buf, now), Ok(None));
    assert_eq!(server.state(), State::Open);
    // Then the byte that cannot continue it, with 990 bytes still to come.
    buf.extend_from_slice(&wire[header_len + 7..header_len + 8]);
    assert_eq!(server.read_event(&mut buf, now), Err(Error::Protocol(ProtocolError::InvalidUtf8)));
    assert_eq!(server.state(), State::Closed);
    assert_eq!(single_close_code(&drain(&mut server)), Some(1007));

    // The same in one go with the bad byte in the first partial read.
    let mut server = Connection::server(Config::default(), now);
    let (_, err) = feed_all(&mut server, &wire[..header_len + 10], now);
    assert_eq!(err, Some(Error::Protocol(ProtocolError::InvalidUtf8)));
}

#[test]
fn after_failure_input_is_discarded() {
    let now = Instant::now();
    let mut server = Connection::server(Config::default(), now);
    let (_, err) = feed_all(&mut server, &server_frame(OpCode::Text, true, b"unmasked"), now);
    assert_eq!(err, Some(Error::Protocol(ProtocolError::UnmaskedFrame)));
    let close = drain(&mut server);
    assert_eq!(single_close_code(&close), Some(1002));
    // Valid frames, a ping and even another violation: all ignored.
    let mut more = client_frame(OpCode::Text, true, b"valid");
    more.extend(client_frame(OpCode::Ping, true, b"p"));
    more.extend(client_frame(OpCode::Close, true, &1000u16.to_be_bytes()));
    more.extend([0x83, 0x80]);
    let mut buf = BytesMut::from(&more[..]);
    for _ in 0..3 {
        assert_eq!(server.read_event(&mut buf, now), Ok(None));
        assert!(buf.is_empty(), "input was not discarded");
        buf.extend_from_slice(b"garbage");
    }
    assert_eq!(server.pending_output(), 0, "a closed connection wrote more");
    assert_eq!(server.state(), State::Closed);
    assert_eq!(server.close_received(), None);
}

#[test]
fn after_the_peers_close_input_is_discarded() {
    let now = Instant::now();
    let mut server = Connection::server(Config::default(), now);
    let mut wire = client_frame(OpCode::Close, true, &1000u16.to_be_bytes());
    wire.extend(client_frame(OpCode::Text, true, b"after close"));
    let mut buf = BytesMut::from(&wire[..]);
    assert!(matches!(server.read_event(&mut buf, now), Ok(Some(Message::Close(Some(_))))));
    assert_eq!(server.read_event(&mut buf, now), Ok(None));
    assert!(buf.is_empty());
    assert_eq!(single_close_code(&drain(&mut server)), Some(1000));
}

#[test]
fn the_failure_close_reason_names_the_fault() {
    let mut wire = client_frame(OpCode::Text, true, b"x");
    wire[0] |= 0x20;
    let now = Instant::now();
    let mut server = Connection::server(Config::default(), now);
    let _ = feed_all(&mut server, &wire, now);
    let out = drain(&mut server);
    let close = &common::close_frames(&out)[0];
    let reason = std::str::from_utf8(&close.payload[2..]).unwrap();
    assert!(reason.contains("reserved bits"), "{reason:?}");
}
