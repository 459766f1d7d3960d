//! `WebSocket::into_parts`: the parts of an open connection keep working when a caller drives
//! the protocol core itself.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncReadExt as _;
use wsx::{ClientBuilder, Message};

#[tokio::test]
async fn the_parts_carry_on_where_the_websocket_stopped() {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let mut ws = wsx::accept(server_io).await.unwrap();
        // Sent right behind the handshake's answer: it may arrive with it, in the client's
        // leftover bytes, or after.
        ws.send(Message::text("first")).await.unwrap();
        ws.send(Message::binary(vec![7u8; 300])).await.unwrap();
        // The client's message, sent through its parts.
        let got = ws.recv().await.unwrap().unwrap();
        assert_eq!(got, Message::text("from the parts"));
        ws
    });
    let (ws, _) = ClientBuilder::new("ws://example.test/").connect_on(client_io).await.unwrap();
    let (mut stream, mut conn, mut buf): (_, _, BytesMut) = ws.into_parts();
    let mut got = Vec::new();
    while got.len() < 2 {
        match conn.read_event(&mut buf, Instant::now()).unwrap() {
            Some(msg) => got.push(msg),
            None => {
                // Bounded: bytes lost in the hand-over would otherwise leave this waiting.
                let read = tokio::time::timeout(Duration::from_secs(5), stream.read_buf(&mut buf));
                let n = read.await.expect("both messages within 5 s").unwrap();
                assert!(n > 0, "the stream ended before both messages arrived");
            }
        }
    }
    assert_eq!(got[0], Message::text("first"));
    assert_eq!(got[1], Message::binary(vec![7u8; 300]));
    // Sending through the core: masked, framed, and understood by the server.
    conn.send(Message::text("from the parts")).unwrap();
    let out = conn.output();
    tokio::io::AsyncWriteExt::write_all_buf(&mut stream, out).await.unwrap();
    let _server_ws = server.await.unwrap();
}
