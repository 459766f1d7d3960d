//! `send_binary_parts` / `send_text_parts`: the same bytes as `send` of the joined message, for
//! clients (masked with the same keys), servers, and with permessage-deflate; the same refusals.

mod common;

use std::time::Instant;

use common::{counting_keys, drain, Pair};
use wsx_proto::deflate::{DeflateConfig, PerMessageDeflate};
use wsx_proto::{Config, Connection, Error, Message, UsageError};

fn client() -> Connection {
    Connection::client(Config::default(), Instant::now(), counting_keys())
}

#[test]
fn same_bytes_as_send_for_clients_and_servers() {
    let parts: [&[u8]; 3] = [b"header:", &[0u8, 1, 2, 255], &[7u8; 300]];
    let joined = parts.concat();
    for make in [client as fn() -> Connection, || Connection::server(Config::default(), Instant::now())] {
        let (mut a, mut b) = (make(), make());
        a.send_binary_parts(&parts).unwrap();
        b.send(Message::binary(joined.clone())).unwrap();
        a.send_text_parts(&["héllo, ", "wörld ", "✓"]).unwrap();
        b.send(Message::text("héllo, wörld ✓")).unwrap();
        a.send_binary_parts(&[]).unwrap();
        b.send(Message::binary(Vec::new())).unwrap();
        // 70,000 bytes: the 64-bit length form.
        let big = vec![9u8; 70_000];
        a.send_binary_parts(&[&big[..1], &big[1..]]).unwrap();
        b.send(Message::binary(big.clone())).unwrap();
        assert_eq!(drain(&mut a), drain(&mut b));
    }
}

#[test]
fn compressed_when_deflate_is_on_and_read_back_whole() {
    let config = DeflateConfig::default();
    let offer = config.client_offer();
    let (params, response) = config.server_negotiate(std::slice::from_ref(&offer)).expect("negotiated");
    assert_eq!(config.client_accept(&response).unwrap(), Some(params));
    let mut p = Pair::default();
    p.client.conn.set_deflate(PerMessageDeflate::new(&params, false, config.level, config.compression_threshold));
    p.server.conn.set_deflate(PerMessageDeflate::new(&params, true, config.level, config.compression_threshold));
    let json = "{\"id\":1,\"text\":\"hello\"} ".repeat(100);
    p.client.conn.send_text_parts(&["[", &json, "]"]).unwrap();
    p.drive();
    let frames = p.client.frames_sent();
    assert!(frames[0].header.rsv1, "compressed");
    assert!(frames[0].payload.len() < json.len() / 4, "{} bytes", frames[0].payload.len());
    assert_eq!(p.server.take_events(), [Message::text(format!("[{json}]"))]);
}

#[test]
fn same_refusals_as_send() {
    let mut c = client();
    c.send_fragment(false, bytes::Bytes::from_static(b"a"), false).unwrap();
    assert!(matches!(c.send_binary_parts(&[b"x"]), Err(Error::Usage(UsageError::Fragmentation(_)))));
    let mut closed = client();
    closed.send(Message::Close(None)).unwrap();
    assert!(matches!(closed.send_text_parts(&["x"]), Err(Error::Usage(UsageError::NotOpen(_)))));
}
