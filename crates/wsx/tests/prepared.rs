//! `send_prepared`/`feed_prepared` and `send_uncompressed`/`feed_uncompressed` on `WebSocket`
//! and `WsWriter`: what reaches the peer, frame by frame (RSV1 on the wire), over an in-memory
//! stream, with a compressing server (no context takeover) and a sans-I/O client reading.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use wsx::proto::deflate::{DeflateParams, PerMessageDeflate};
use wsx::proto::{Config, Connection, FrameHeader};
use wsx::{Message, PreparedMessage, WebSocket};

fn params() -> DeflateParams {
    DeflateParams {
        server_no_context_takeover: true,
        client_no_context_takeover: true,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    }
}

fn compressible(len: usize) -> String {
    let words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"];
    let mut s = String::new();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    while s.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(words[(x % words.len() as u64) as usize]);
        s.push(' ');
    }
    s
}

/// The frames in `wire`, as (RSV1, whole frame bytes); `None` until `count` whole frames are there.
fn frames(wire: &[u8], count: usize) -> Option<Vec<(bool, Vec<u8>)>> {
    let mut rest = wire;
    let mut out = Vec::new();
    while out.len() < count {
        let (header, n) = FrameHeader::parse(rest).expect("valid header")?;
        let end = n + usize::try_from(header.payload_len).ok()?;
        if rest.len() < end {
            return None;
        }
        out.push((header.rsv1, rest[..end].to_vec()));
        rest = &rest[end..];
    }
    Some(out)
}

#[tokio::test]
async fn prepared_and_uncompressed_messages_on_the_whole_socket_and_the_writer() {
    let (ours, mut theirs) = tokio::io::duplex(1 << 20);
    let mut conn = Connection::server(Config::default(), Instant::now());
    conn.set_deflate(PerMessageDeflate::new(&params(), true, 1, 0));
    let mut ws = WebSocket::from_parts(ours, conn, BytesMut::new(), None, None);

    let text = compressible(20_000);
    let prepared = PreparedMessage::text(text.clone());
    ws.send_prepared(&prepared).await.unwrap();
    ws.feed_prepared(&prepared).await.unwrap();
    ws.flush().await.unwrap();
    ws.send_uncompressed(Message::text(text.clone())).await.unwrap();
    ws.feed_uncompressed(Message::text(text.clone())).await.unwrap();
    ws.send(Message::text(text.clone())).await.unwrap();
    let (_reader, mut writer) = ws.split();
    writer.send_prepared(&prepared).await.unwrap();
    writer.feed_prepared(&prepared).await.unwrap();
    writer.send_uncompressed(Message::binary(vec![5u8; 3000])).await.unwrap();
    writer.feed_uncompressed(Message::text(text.clone())).await.unwrap();
    writer.flush().await.unwrap();

    let mut wire = Vec::new();
    let got = loop {
        if let Some(f) = frames(&wire, 9) {
            break f;
        }
        let mut chunk = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), theirs.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "stream ended after {} bytes", wire.len());
        wire.extend_from_slice(&chunk[..n]);
    };
    let rsv1: Vec<bool> = got.iter().map(|(r, _)| *r).collect();
    assert_eq!(rsv1, [true, true, false, false, true, true, true, false, false]);
    // Every prepared frame is the same bytes, and so is `send`'s (no context takeover).
    for i in [1, 4, 5, 6] {
        assert_eq!(got[i].1, got[0].1, "frame {i}");
    }
    assert!(got[0].1.len() < text.len() / 2);

    let mut peer = Connection::client(Config::default(), Instant::now(), || [1, 2, 3, 4]);
    peer.set_deflate(PerMessageDeflate::new(&params(), false, 1, 0));
    let mut buf = BytesMut::from(&wire[..]);
    let mut events = Vec::new();
    while let Some(ev) = peer.read_event(&mut buf, Instant::now()).unwrap() {
        events.push(ev);
    }
    let t = Message::text(text);
    let mut expected = vec![t.clone(); 9];
    expected[7] = Message::binary(vec![5u8; 3000]);
    assert_eq!(events, expected);
}

#[tokio::test]
async fn prepared_messages_fail_on_a_closed_connection() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    drop(theirs);
    let conn = Connection::server(Config::default(), Instant::now());
    let mut ws = WebSocket::from_parts(ours, conn, BytesMut::new(), None, None);
    // The peer is gone: reading ends the connection.
    while ws.recv().await.is_some() {}
    let prepared = PreparedMessage::binary(vec![1u8; 10]);
    assert!(matches!(ws.send_prepared(&prepared).await, Err(wsx::Error::Closed)));
    assert!(matches!(ws.send_uncompressed(Message::text("x")).await, Err(wsx::Error::Closed)));
}
