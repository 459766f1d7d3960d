//! Zero-copy paths: a large received payload is a slice of the read buffer, and a large payload
//! a server sends is queued as the caller's own `Bytes`.

mod common;

use std::io::IoSlice;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use common::{client_frame, parse_frames, Rng};
use wsx_proto::frame::OpCode;
use wsx_proto::{Config, Connection, Message, OutBuf};

fn within(ptr: *const u8, len: usize, start: *const u8, cap: usize) -> bool {
    let (p, s) = (ptr as usize, start as usize);
    p >= s && p + len <= s + cap
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn large_received_binary_is_a_slice_of_the_read_buffer() {
    let now = Instant::now();
    let payload = pattern(200_000);
    let wire = client_frame(OpCode::Binary, true, &payload);
    let mut server = Connection::server(Config::default(), now);
    let mut buf = BytesMut::with_capacity(wire.len());
    let (start, cap) = (buf.as_ptr(), buf.capacity());
    buf.extend_from_slice(&wire);
    assert_eq!(buf.as_ptr(), start, "the test buffer reallocated");
    let Ok(Some(Message::Binary(data))) = server.read_event(&mut buf, now) else {
        panic!("expected a binary message");
    };
    assert_eq!(&data[..], &payload[..]);
    assert!(within(data.as_ptr(), data.len(), start, cap), "payload was copied out of the read buffer");
}

#[test]
fn large_received_text_arriving_in_chunks_is_a_slice_of_the_read_buffer() {
    let now = Instant::now();
    let text = "zero-copy ✓ ünïcödé 🎉 ".repeat(5000);
    let wire = client_frame(OpCode::Text, true, text.as_bytes());
    let mut server = Connection::server(Config::default(), now);
    let mut buf = BytesMut::with_capacity(wire.len());
    let (start, cap) = (buf.as_ptr(), buf.capacity());
    let mut rng = Rng::new(99);
    let mut rest = &wire[..];
    let mut events = Vec::new();
    while !rest.is_empty() {
        let n = rng.chunk_len(4000).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        if let Some(ev) = server.read_event(&mut buf, now).unwrap() {
            events.push(ev);
        }
    }
    let [Message::Text(t)] = events.as_slice() else { panic!("expected one text message, got {events:?}") };
    assert_eq!(t.as_str(), text);
    assert!(within(t.as_bytes().as_ptr(), t.len(), start, cap), "text was copied out of the read buffer");
}

#[test]
fn large_server_payload_is_queued_without_copy() {
    let now = Instant::now();
    let mut server = Connection::server(Config::default(), now);
    let payload = Bytes::from(pattern(50_000));
    server.send(Message::text("small first")).unwrap();
    server.send(Message::Binary(payload.clone())).unwrap();
    server.send(Message::text("small after")).unwrap();
    let out = server.output();
    let mut slices = [IoSlice::new(&[]); 8];
    let n = out.chunks_vectored(&mut slices);
    let hit = slices[..n].iter().find(|s| s.as_ptr() == payload.as_ptr());
    let hit = hit.expect("no output slice points at the caller's Bytes");
    assert_eq!(hit.len(), payload.len());
    // The slices, in order, are the three frames.
    let all: Vec<u8> = slices[..n].iter().flat_map(|s| s.iter().copied()).collect();
    assert_eq!(all.len(), out.remaining());
    let frames = parse_frames(&all);
    let payloads: Vec<&[u8]> = frames.iter().map(|f| &f.payload[..]).collect();
    assert_eq!(payloads, [&b"small first"[..], &payload[..], &b"small after"[..]]);
}

#[test]
fn small_server_payloads_are_coalesced_into_one_chunk() {
    let now = Instant::now();
    let mut server = Connection::server(Config::default(), now);
    let small = Bytes::from(pattern(OutBuf::ZERO_COPY_THRESHOLD - 1));
    server.send(Message::Binary(small.clone())).unwrap();
    server.send(Message::Ping(Bytes::from_static(b"p"))).unwrap();
    let out = server.output();
    let mut slices = [IoSlice::new(&[]); 4];
    assert_eq!(out.chunks_vectored(&mut slices), 1);
    assert_eq!(slices[0].len(), out.remaining());
}

#[test]
fn client_payload_is_masked_in_a_copy_leaving_the_callers_bytes_intact() {
    let now = Instant::now();
    let mut client = Connection::client(Config::default(), now, || [0xde, 0xad, 0xbe, 0xef]);
    let original = pattern(50_000);
    let payload = Bytes::from(original.clone());
    client.send(Message::Binary(payload.clone())).unwrap();
    assert_eq!(&payload[..], &original[..], "masking modified the caller's payload");
    let out = client.output();
    let mut slices = [IoSlice::new(&[]); 4];
    let n = out.chunks_vectored(&mut slices);
    assert!(slices[..n].iter().all(|s| s.as_ptr() != payload.as_ptr()));
    let wire = common::drain(&mut client);
    let frames = parse_frames(&wire);
    assert_eq!(frames.len(), 1);
    assert!(frames[0].header.mask.is_some());
    assert_eq!(frames[0].payload, original);
}

#[test]
fn output_survives_partial_writes() {
    // A transport that writes a few bytes at a time, across the chunk boundaries.
    let now = Instant::now();
    let mut server = Connection::server(Config::default(), now);
    let big = Bytes::from(pattern(10_000));
    server.send(Message::text("a")).unwrap();
    server.send(Message::Binary(big.clone())).unwrap();
    server.send(Message::text("b")).unwrap();
    server.send(Message::Binary(big.clone())).unwrap();
    let total = server.pending_output();
    let mut rng = Rng::new(5);
    let mut written = Vec::new();
    let out = server.output();
    while out.has_remaining() {
        let n = rng.chunk_len(3000).min(out.chunk().len());
        written.extend_from_slice(&out.chunk()[..n]);
        out.advance(n);
    }
    assert_eq!(written.len(), total);
    assert_eq!(server.pending_output(), 0);
    let frames = parse_frames(&written);
    let payloads: Vec<&[u8]> = frames.iter().map(|f| &f.payload[..]).collect();
    assert_eq!(payloads, [&b"a"[..], &big[..], &b"b"[..], &big[..]]);
    // New output after a full drain starts clean.
    server.send(Message::text("c")).unwrap();
    assert_eq!(common::drain(&mut server), [0x81, 0x01, b'c']);
}

/// `frame_bytes_due` tells a driver how much of the frame being read is still to come, so it
/// can make room for it in one step: nothing between frames or before a header is whole, the
/// declared length less what arrived while a frame is under way.
#[test]
fn frame_bytes_due_counts_down_as_the_payload_arrives() {
    let now = Instant::now();
    let payload = pattern(100_000);
    let wire = client_frame(OpCode::Binary, true, &payload);
    let header_len = wire.len() - payload.len();
    let mut server = Connection::server(Config::default(), now);
    assert_eq!(server.frame_bytes_due(), 0);
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&wire[..header_len - 1]);
    assert!(matches!(server.read_event(&mut buf, now), Ok(None)));
    assert_eq!(server.frame_bytes_due(), 0, "a header not yet whole declares nothing");
    let mut sent = header_len - 1;
    for step in [1, 30_000, 50_000] {
        buf.extend_from_slice(&wire[sent..sent + step]);
        sent += step;
        assert!(matches!(server.read_event(&mut buf, now), Ok(None)));
        assert_eq!(server.frame_bytes_due(), wire.len() - sent);
    }
    buf.extend_from_slice(&wire[sent..]);
    let Ok(Some(Message::Binary(data))) = server.read_event(&mut buf, now) else {
        panic!("expected a binary message");
    };
    assert_eq!(&data[..], &payload[..]);
    assert_eq!(server.frame_bytes_due(), 0, "nothing is due between frames");
}

/// A frame the connection gave up on (here: invalid UTF-8 in a text frame's first bytes) leaves
/// nothing due: a driver must not keep room for the rest of it.
#[test]
fn frame_bytes_due_is_zero_once_a_frame_fails() {
    let now = Instant::now();
    let mut payload = pattern(100_000);
    payload[..4].copy_from_slice(&[0xff; 4]);
    let wire = client_frame(OpCode::Text, true, &payload);
    let header_len = wire.len() - payload.len();
    let mut server = Connection::server(Config::default(), now);
    let mut buf = BytesMut::from(&wire[..header_len]);
    assert!(matches!(server.read_event(&mut buf, now), Ok(None)));
    assert_eq!(server.frame_bytes_due(), payload.len());
    buf.extend_from_slice(&wire[header_len..header_len + 10]);
    assert!(server.read_event(&mut buf, now).is_err(), "invalid UTF-8 was accepted");
    assert_eq!(server.frame_bytes_due(), 0);
}
