//! Prepared messages (`PreparedMessage`, `Connection::send_prepared`) and per-message
//! "do not compress" (`Connection::send_uncompressed`): the bytes on the wire are those `send`
//! writes; encodings are shared between connections that can share them (same `Bytes`), and a
//! connection with context takeover compresses by itself and stays decodable.

mod common;

use std::time::Instant;

use bytes::{Buf, Bytes};
use common::{counting_keys, drain, feed_all, params, parse_frames};
use wsx_proto::deflate::{DeflateParams, PerMessageDeflate};
use wsx_proto::frame::OpCode;
use wsx_proto::{Config, Connection, Error, Message, PreparedMessage, UsageError};

fn server() -> Connection {
    Connection::server(Config::default(), Instant::now())
}

fn client() -> Connection {
    Connection::client(Config::default(), Instant::now(), counting_keys())
}

fn with_deflate(mut conn: Connection, p: &DeflateParams, level: u32, threshold: usize) -> Connection {
    let is_server = conn.role() == wsx_proto::Role::Server;
    conn.set_deflate(PerMessageDeflate::new(p, is_server, level, threshold));
    conn
}

/// Text that compresses well but not to nothing: about 100 KiB of words in a varying order.
fn compressible(len: usize) -> String {
    let words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"];
    let mut s = String::with_capacity(len + 16);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while s.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(words[(x % words.len() as u64) as usize]);
        s.push_str(if x.is_multiple_of(7) { ".\n" } else { " " });
    }
    s
}

fn messages() -> Vec<Message> {
    vec![
        Message::text(""),
        Message::text("hello"),
        Message::binary(vec![7u8; 200]),
        Message::text(compressible(5000)),
        Message::binary(vec![1u8; 70_000]),
    ]
}

/// Where the front chunk of `conn`'s output lives: equal for two connections exactly when they
/// queued the same `Bytes`.
fn front_ptr(conn: &mut Connection) -> *const u8 {
    conn.output().chunk().as_ptr()
}

// ------------------------------------------------------------------ uncompressed

#[test]
fn uncompressed_bytes_are_those_of_send_for_both_roles() {
    for message in messages() {
        let prepared = PreparedMessage::try_from(message.clone()).expect("a data message");
        assert_eq!(prepared.to_message(), message);
        // Server: unmasked, so the bytes do not depend on the connection.
        let (mut by_send, mut by_prepared) = (server(), server());
        by_send.send(message.clone()).unwrap();
        by_prepared.send_prepared(&prepared).unwrap();
        assert_eq!(drain(&mut by_prepared), drain(&mut by_send), "server, {} bytes", prepared.len());
        // Client: each connection masks with its own keys; with the same key sequence, the
        // same bytes.
        let (mut by_send, mut by_prepared) = (client(), client());
        by_send.send(message.clone()).unwrap();
        by_prepared.send_prepared(&prepared).unwrap();
        let wire = drain(&mut by_prepared);
        assert_eq!(wire, drain(&mut by_send), "client, {} bytes", prepared.len());
        let (events, err) = feed_all(&mut server(), &wire, Instant::now());
        assert_eq!((events, err.is_none()), (vec![message], true));
    }
}

#[test]
fn a_large_uncompressed_frame_is_one_shared_chunk() {
    let prepared = PreparedMessage::binary(vec![3u8; 70_000]);
    let (mut a, mut b) = (server(), server());
    a.send_prepared(&prepared).unwrap();
    b.send_prepared(&prepared.clone()).unwrap();
    // The whole frame (header included) is the first chunk of both outputs, the same memory.
    assert_eq!(a.output().chunk().len(), 10 + 70_000);
    assert_eq!(front_ptr(&mut a), front_ptr(&mut b));
    assert_eq!(drain(&mut a), drain(&mut b));
}

#[test]
fn control_messages_cannot_be_prepared() {
    let ping = Message::Ping(Bytes::from_static(b"x"));
    assert_eq!(PreparedMessage::try_from(ping.clone()).unwrap_err(), ping);
}

#[test]
fn send_prepared_follows_the_rules_of_send() {
    let prepared = PreparedMessage::text("late");
    let mut conn = server();
    conn.send_fragment(true, Bytes::from_static(b"part"), false).unwrap();
    assert!(matches!(conn.send_prepared(&prepared), Err(Error::Usage(UsageError::Fragmentation(_)))));
    conn.send_fragment(true, Bytes::from_static(b" two"), true).unwrap();
    conn.send_prepared(&prepared).unwrap();
    conn.close(None, Instant::now()).unwrap();
    let before = conn.pending_output();
    assert!(matches!(conn.send_prepared(&prepared), Err(Error::Usage(UsageError::NotOpen(_)))));
    assert_eq!(conn.pending_output(), before, "a refused message queues nothing");
}

// ------------------------------------------------------------------ compressed, no context takeover

#[test]
fn no_context_takeover_compresses_once_and_shares_the_frame() {
    let p = params(true, true, 15, 15);
    let text = compressible(100_000);
    let prepared = PreparedMessage::text(text.clone());
    let mut a = with_deflate(server(), &p, 1, 0);
    let mut b = with_deflate(server(), &p, 1, 0);
    a.send_prepared(&prepared).unwrap();
    b.send_prepared(&prepared).unwrap();
    // One compressed frame, the same memory for both: compressed once.
    assert_eq!(front_ptr(&mut a), front_ptr(&mut b));
    let wire = drain(&mut a);
    assert_eq!(wire, drain(&mut b));
    let frames = parse_frames(&wire);
    assert_eq!(frames.len(), 1);
    assert!(frames[0].header.rsv1, "compressed");
    assert!(wire.len() < text.len() / 2, "{} bytes for {}", wire.len(), text.len());
    // The same bytes `send` writes, and the peer reads the message back.
    let mut by_send = with_deflate(server(), &p, 1, 0);
    by_send.send(Message::text(text.clone())).unwrap();
    assert_eq!(drain(&mut by_send), wire);
    let mut peer = with_deflate(client(), &p, 1, 0);
    let (events, err) = feed_all(&mut peer, &wire, Instant::now());
    assert!(err.is_none(), "{err:?}");
    assert_eq!(events, vec![Message::text(text)]);
}

#[test]
fn small_compressed_messages_are_the_bytes_of_send_for_both_roles() {
    let p = params(true, true, 15, 15);
    for message in messages() {
        let prepared = PreparedMessage::try_from(message.clone()).unwrap();
        for is_server in [true, false] {
            let fresh = || with_deflate(if is_server { server() } else { client() }, &p, 1, 0);
            let (mut by_send, mut by_prepared) = (fresh(), fresh());
            // Several times: each message is compressed with a fresh context on both paths.
            let mut wire = Vec::new();
            for _ in 0..3 {
                by_send.send(message.clone()).unwrap();
                by_prepared.send_prepared(&prepared).unwrap();
                let bytes = drain(&mut by_prepared);
                assert_eq!(bytes, drain(&mut by_send), "server {is_server}, {} bytes", prepared.len());
                wire.extend_from_slice(&bytes);
            }
            assert!(parse_frames(&wire).iter().all(|f| f.header.rsv1));
            let mut peer = with_deflate(if is_server { client() } else { server() }, &p, 1, 0);
            let (events, err) = feed_all(&mut peer, &wire, Instant::now());
            assert!(err.is_none(), "{err:?}");
            assert_eq!(events, vec![message.clone(); 3]);
        }
    }
}

#[test]
fn each_window_and_level_gets_its_own_compression() {
    let text = compressible(100_000);
    let prepared = PreparedMessage::text(text.clone());
    let (p15, p9) = (params(true, false, 15, 15), params(true, false, 9, 15));
    let mut a = with_deflate(server(), &p15, 1, 0);
    let mut b = with_deflate(server(), &p9, 1, 0);
    let mut c = with_deflate(server(), &p15, 6, 0);
    let mut d = with_deflate(server(), &p9, 1, 0);
    for conn in [&mut a, &mut b, &mut c, &mut d] {
        conn.send_prepared(&prepared).unwrap();
    }
    let (pa, pb, pc, pd) = (front_ptr(&mut a), front_ptr(&mut b), front_ptr(&mut c), front_ptr(&mut d));
    assert_ne!(pa, pb, "a 512-byte window is not a 32 KiB one");
    assert_ne!(pa, pc, "level 6 is not level 1");
    assert_eq!(pb, pd, "same window and level: shared");
    for (conn, p) in [(&mut a, &p15), (&mut b, &p9), (&mut c, &p15)] {
        let mut peer = with_deflate(client(), p, 1, 0);
        let (events, err) = feed_all(&mut peer, &drain(conn), Instant::now());
        assert!(err.is_none(), "{err:?}");
        assert_eq!(events, vec![Message::text(text.clone())]);
    }
}

#[test]
fn the_threshold_applies_to_prepared_messages() {
    let p = params(true, true, 15, 15);
    // Under the threshold (however well it would compress): not compressed. Over it but
    // incompressible: not compressed either.
    let mut conn = with_deflate(server(), &p, 1, 64);
    conn.send_prepared(&PreparedMessage::text("a".repeat(63))).unwrap();
    let mut rng = common::Rng::new(7);
    let noise: Vec<u8> = (0..1000).map(|_| rng.next_u64() as u8).collect();
    conn.send_prepared(&PreparedMessage::binary(noise)).unwrap();
    conn.send_prepared(&PreparedMessage::text(compressible(1000))).unwrap();
    let rsv1: Vec<bool> = parse_frames(&drain(&mut conn)).iter().map(|f| f.header.rsv1).collect();
    assert_eq!(rsv1, [false, false, true]);
}

// ------------------------------------------------------------------ context takeover

#[test]
fn context_takeover_compresses_per_connection_and_stays_decodable() {
    let p = params(false, false, 15, 15);
    let text = compressible(3000);
    let prepared = PreparedMessage::text(text.clone());
    for is_server in [true, false] {
        let fresh = || with_deflate(if is_server { server() } else { client() }, &p, 1, 0);
        let (mut by_send, mut mixed) = (fresh(), fresh());
        let mut peer = with_deflate(if is_server { client() } else { server() }, &p, 1, 0);
        let mut sizes = Vec::new();
        // Prepared messages and ordinary ones interleaved: the receiver's window holds every
        // message, so the sender's context must too.
        for i in 0..4 {
            let other = Message::text(format!("{i}: {}", &text[..500]));
            by_send.send(Message::text(text.clone())).unwrap();
            by_send.send(other.clone()).unwrap();
            mixed.send_prepared(&prepared).unwrap();
            mixed.send(other.clone()).unwrap();
            let wire = drain(&mut mixed);
            assert_eq!(wire, drain(&mut by_send), "server {is_server}, round {i}");
            let frames = parse_frames(&wire);
            assert!(frames[0].header.rsv1);
            sizes.push(frames[0].payload.len());
            let (events, err) = feed_all(&mut peer, &wire, Instant::now());
            assert!(err.is_none(), "server {is_server}, round {i}: {err:?}");
            assert_eq!(events, vec![Message::text(text.clone()), other]);
        }
        // With context takeover, a repeated message refers back to the first: smaller than the
        // first (a shared fresh-context frame would be the same size every time).
        assert!(sizes[1..].iter().all(|&n| n < sizes[0]), "{sizes:?}");
    }
}

// ------------------------------------------------------------------ send_uncompressed

#[test]
fn send_uncompressed_clears_rsv1_on_that_message_only() {
    let p = params(false, false, 15, 15);
    let text = compressible(2000);
    for is_server in [true, false] {
        let mut conn = with_deflate(if is_server { server() } else { client() }, &p, 1, 0);
        conn.send(Message::text(text.clone())).unwrap();
        conn.send_uncompressed(Message::text(text.clone())).unwrap();
        conn.send_uncompressed(Message::binary(vec![9u8; 300])).unwrap();
        conn.send(Message::text(text.clone())).unwrap();
        conn.send_uncompressed(Message::Ping(Bytes::from_static(b"p"))).unwrap();
        let wire = drain(&mut conn);
        let frames = parse_frames(&wire);
        let rsv1: Vec<bool> = frames.iter().map(|f| f.header.rsv1).collect();
        assert_eq!(rsv1, [true, false, false, true, false], "server {is_server}");
        assert_eq!(frames[1].payload, text.as_bytes(), "sent as it is");
        assert_eq!(frames[4].header.opcode, OpCode::Ping);
        let mut peer = with_deflate(if is_server { client() } else { server() }, &p, 1, 0);
        let (events, err) = feed_all(&mut peer, &wire, Instant::now());
        assert!(err.is_none(), "{err:?}");
        assert_eq!(events.len(), 5);
        assert_eq!(events[3], Message::text(text.clone()));
    }
}

#[test]
fn send_uncompressed_follows_the_rules_of_send() {
    let mut conn = server();
    conn.close(None, Instant::now()).unwrap();
    let err = conn.send_uncompressed(Message::text("late")).unwrap_err();
    assert!(matches!(err, Error::Usage(UsageError::NotOpen(_))));
}
