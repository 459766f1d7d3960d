//! Client and server talking through the in-memory harness: messages both ways, masking on the
//! wire, automatic pongs, fragmented sending, chunked delivery.

mod common;

use bytes::Bytes;
use common::{client_frame, feed_all, Pair};
use wsx_proto::frame::OpCode;
use wsx_proto::{Connection, Error, Message, State, UsageError};

#[test]
fn messages_flow_both_ways() {
    let mut p = Pair::default();
    p.client.conn.send(Message::text("héllo, wörld ✓")).unwrap();
    p.client.conn.send(Message::binary(vec![0u8, 1, 2, 255])).unwrap();
    p.server.conn.send(Message::text("")).unwrap();
    p.server.conn.send(Message::binary(Bytes::from_static(b"\x00\xff"))).unwrap();
    p.drive();
    assert_eq!(p.server.take_events(), [Message::text("héllo, wörld ✓"), Message::binary(vec![0u8, 1, 2, 255])]);
    assert_eq!(p.client.take_events(), [Message::text(""), Message::binary(Bytes::from_static(b"\x00\xff"))]);
    assert!(p.client.errors.is_empty() && p.server.errors.is_empty());
    assert_eq!(p.client.conn.state(), State::Open);
    assert_eq!(p.server.conn.state(), State::Open);
}

#[test]
fn client_frames_are_masked_and_server_frames_are_not() {
    let mut p = Pair::default();
    for _ in 0..3 {
        p.client.conn.send(Message::text("abc")).unwrap();
        p.server.conn.send(Message::text("abc")).unwrap();
    }
    p.drive();
    let client_frames = p.client.frames_sent();
    assert_eq!(client_frames.len(), 3);
    for f in &client_frames {
        assert!(f.header.mask.is_some(), "client frame not masked: {f:?}");
        assert_eq!(f.payload, b"abc");
    }
    // Each frame draws a fresh key from the key source.
    assert_ne!(client_frames[0].header.mask, client_frames[1].header.mask);
    // The masked bytes on the wire are not the plaintext.
    assert!(!p.client.wire.windows(3).any(|w| w == b"abc"));
    let server_frames = p.server.frames_sent();
    assert_eq!(server_frames.len(), 3);
    for f in &server_frames {
        assert_eq!(f.header.mask, None);
        assert_eq!(f.payload, b"abc");
    }
}

#[test]
fn pings_are_answered_with_the_same_payload() {
    let mut p = Pair::default();
    p.client.conn.send(Message::Ping(Bytes::from_static(b"are you there"))).unwrap();
    p.drive();
    assert_eq!(p.server.take_events(), [Message::Ping(Bytes::from_static(b"are you there"))]);
    let pongs: Vec<_> = p.server.frames_sent().into_iter().filter(|f| f.header.opcode == OpCode::Pong).collect();
    assert_eq!(pongs.len(), 1);
    assert_eq!(pongs[0].payload, b"are you there");
    assert_eq!(p.client.take_events(), [Message::Pong(Bytes::from_static(b"are you there"))]);
    // The other direction: the client answers too (masked).
    p.server.conn.send(Message::Ping(Bytes::from_static(b"x"))).unwrap();
    p.drive();
    assert_eq!(p.client.take_events(), [Message::Ping(Bytes::from_static(b"x"))]);
    assert_eq!(p.server.take_events(), [Message::Pong(Bytes::from_static(b"x"))]);
    let client_pong = p.client.frames_sent().into_iter().find(|f| f.header.opcode == OpCode::Pong).unwrap();
    assert!(client_pong.header.mask.is_some());
}

#[test]
fn unsolicited_pong_is_reported_and_not_answered() {
    let mut p = Pair::default();
    p.client.conn.send(Message::Pong(Bytes::from_static(b"heartbeat"))).unwrap();
    p.drive();
    assert_eq!(p.server.take_events(), [Message::Pong(Bytes::from_static(b"heartbeat"))]);
    assert!(p.server.wire.is_empty());
}

#[test]
fn chunked_delivery_one_byte_at_a_time() {
    let mut p = Pair::default().chunked(1, 7);
    let big: Vec<u8> = (0..70_000u32).map(|i| (i * 7) as u8).collect();
    p.client.conn.send(Message::text("ünïcödé ✓ 🎉")).unwrap();
    p.client.conn.send(Message::binary(big.clone())).unwrap();
    p.client.conn.send(Message::Ping(Bytes::from_static(b"p"))).unwrap();
    p.server.conn.send(Message::binary(big.clone())).unwrap();
    p.drive();
    assert_eq!(
        p.server.take_events(),
        [Message::text("ünïcödé ✓ 🎉"), Message::binary(big.clone()), Message::Ping(Bytes::from_static(b"p"))]
    );
    assert_eq!(p.client.take_events(), [Message::binary(big), Message::Pong(Bytes::from_static(b"p"))]);
}

#[test]
fn fragmented_sending_with_interleaved_control_frames() {
    let mut p = Pair::default().chunked(5, 3);
    p.client.conn.send_fragment(true, Bytes::from_static("añ".as_bytes()), false).unwrap();
    // A data message may not start while a fragmented one is in progress.
    let err = p.client.conn.send(Message::text("no")).unwrap_err();
    assert!(matches!(err, Error::Usage(UsageError::Fragmentation(_))), "{err:?}");
    let err = p.client.conn.send(Message::binary(vec![1u8])).unwrap_err();
    assert!(matches!(err, Error::Usage(UsageError::Fragmentation(_))), "{err:?}");
    p.client.conn.send(Message::Ping(Bytes::from_static(b"mid"))).unwrap();
    // Split a multibyte character across fragments: "€" is E2 82 AC.
    p.client.conn.send_fragment(true, Bytes::from_static(b"b\xE2\x82"), false).unwrap();
    p.client.conn.send_fragment(true, Bytes::from_static(b"\xAC"), true).unwrap();
    p.client.conn.send(Message::text("after")).unwrap();
    p.drive();
    assert_eq!(
        p.server.take_events(),
        [Message::Ping(Bytes::from_static(b"mid")), Message::text("añb€"), Message::text("after")]
    );
    let ops: Vec<(OpCode, bool)> = p.client.frames_sent().iter().map(|f| (f.header.opcode, f.header.fin)).collect();
    assert_eq!(
        ops,
        [
            (OpCode::Text, false),
            (OpCode::Ping, true),
            (OpCode::Continuation, false),
            (OpCode::Continuation, true),
            (OpCode::Text, true),
        ]
    );
}

#[test]
fn send_refuses_oversized_control_frames() {
    let mut p = Pair::default();
    let err = p.client.conn.send(Message::Ping(Bytes::from(vec![0u8; 126]))).unwrap_err();
    assert_eq!(err, Error::Usage(UsageError::ControlFrameTooLong));
    let err = p.server.conn.send(Message::Pong(Bytes::from(vec![0u8; 126]))).unwrap_err();
    assert_eq!(err, Error::Usage(UsageError::ControlFrameTooLong));
    assert_eq!(p.client.conn.pending_output(), 0);
    assert_eq!(p.server.conn.pending_output(), 0);
    // 125 bytes is fine.
    p.client.conn.send(Message::Ping(Bytes::from(vec![9u8; 125]))).unwrap();
    p.drive();
    assert_eq!(p.server.take_events(), [Message::Ping(Bytes::from(vec![9u8; 125]))]);
}

#[test]
fn rfc_5_7_examples_are_understood() {
    let now = std::time::Instant::now();
    // A client receives the unmasked "Hello" examples, unfragmented and fragmented.
    let mut client = Connection::client(Default::default(), now, || [0, 0, 0, 0]);
    let wire = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
    let (events, err) = feed_all(&mut client, &wire, now);
    assert_eq!(err, None);
    assert_eq!(events, [Message::text("Hello"), Message::text("Hello")]);
    // A server receives the masked "Hello" and the masked ping.
    let mut server = Connection::server(Default::default(), now);
    let wire = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
    let (events, err) = feed_all(&mut server, &wire, now);
    assert_eq!(err, None);
    assert_eq!(events, [Message::text("Hello")]);
    let (events, err) = feed_all(&mut server, &client_frame(OpCode::Ping, true, b"Hello"), now);
    assert_eq!(err, None);
    assert_eq!(events, [Message::Ping(Bytes::from_static(b"Hello"))]);
    // The pong is the unmasked RFC example.
    assert_eq!(common::drain(&mut server), [0x8a, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
}

/// A frame masked with the all-zero key (its bytes as sent) is read as any masked frame is,
/// whole or a byte at a time, next to one with another key; an unmasked frame from a client is
/// still refused. (A frame in progress keeps its key as four bytes, zero for none.)
#[test]
fn a_zero_masking_key_is_a_mask_like_any_other() {
    use wsx_proto::frame::FrameHeader;
    let zero = common::encode_frame(FrameHeader::new(OpCode::Text, 5, Some([0; 4])), b"zeros");
    assert_eq!(&zero[2..6], &[0; 4], "the key on the wire");
    assert_eq!(&zero[6..], b"zeros", "a zero key leaves the payload as it is");
    let keyed = client_frame(OpCode::Binary, true, b"keyed payload");
    let wire = [zero.clone(), keyed.clone(), zero].concat();
    let expected = [Message::text("zeros"), Message::binary(&b"keyed payload"[..]), Message::text("zeros")];
    let now = std::time::Instant::now();
    let mut whole = Connection::server(Default::default(), now);
    assert_eq!(feed_all(&mut whole, &wire, now), (expected.to_vec(), None));
    let mut bytewise = Connection::server(Default::default(), now);
    let mut buf = bytes::BytesMut::new();
    let mut events = Vec::new();
    for byte in &wire {
        buf.extend_from_slice(&[*byte]);
        while let Some(event) = bytewise.read_event(&mut buf, now).unwrap() {
            events.push(event);
        }
    }
    assert_eq!(events, expected);
    let unmasked = common::server_frame(OpCode::Text, true, b"plain");
    let (events, error) = feed_all(&mut Connection::server(Default::default(), now), &unmasked, now);
    assert!(events.is_empty() && error.is_some(), "an unmasked client frame was taken: {events:?}");
}
