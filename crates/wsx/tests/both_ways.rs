//! Two peers that each send more than the write-buffer high-water mark at the same time must not
//! wait on each other: each keeps reading while its output is only its own messages.

use std::time::Duration;

use tokio::io::DuplexStream;
use wsx::proto::Config;
use wsx::{ClientBuilder, Message, ServerConfig, WebSocket};

/// Each end of a 64 KiB pipe sends a 4 MiB message (four times the default 1 MiB mark) while its
/// reader waits for the other's. Before the fix, both readers stopped reading while their own
/// output was over the mark, neither message moved, and the write timeout (here 2 s) ended the
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_messages_both_ways_at_once_do_not_deadlock() {
    let mut config = Config::default();
    config.write_timeout = Some(Duration::from_secs(2));
    assert!(config.write_buffer_high_water < 4 << 20);
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let mut server_config = ServerConfig::default();
    server_config.websocket.proto = config.clone();
    let server = tokio::spawn(async move {
        wsx::accept_with(server_io, &server_config, |_, _| Ok(wsx::Accept::default())).await.expect("server handshake")
    });
    let (client, _) =
        ClientBuilder::new("ws://localhost/").proto_config(config).connect_on(client_io).await.expect("handshake");
    let server = server.await.unwrap();

    let run = |ws: WebSocket<DuplexStream>, fill: u8, expect: u8| async move {
        let (mut reader, mut writer) = ws.split();
        let send = tokio::spawn(async move { writer.send(Message::binary(vec![fill; 4 << 20])).await });
        let got = reader.recv().await;
        match got {
            Some(Ok(Message::Binary(b))) => assert!(b.len() == 4 << 20 && b.iter().all(|&x| x == expect)),
            other => panic!("expected the peer's 4 MiB, got {other:?}"),
        }
        send.await.unwrap().expect("send");
    };
    let both = async { tokio::try_join!(tokio::spawn(run(client, 1, 2)), tokio::spawn(run(server, 2, 1))) };
    tokio::time::timeout(Duration::from_secs(10), both).await.expect("both messages within 10 s").unwrap();
}
