//! `recv_chunk`: a message far larger than what the connection may hold at once arrives as a
//! stream of small chunks, over a real loopback socket.

mod common;

use common::*;
use wsx::proto::Config;
use wsx::{ClientBuilder, Message, ServerConfig, StreamEvent, WebSocketConfig};

const SIZE: usize = 32 << 20;
/// The largest chunk allowed: one poll's read budget plus one read.
const MAX_CHUNK: usize = (1 << 20) + (64 << 10);

fn byte_at(i: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

fn large_limits() -> Config {
    let mut proto = Config::default();
    proto.max_frame_size = SIZE;
    proto.max_message_size = SIZE;
    proto
}

#[tokio::test]
async fn a_32_mib_message_arrives_in_small_chunks() {
    deadline(async {
        let mut websocket = WebSocketConfig::default();
        websocket.proto = large_limits();
        let mut config = ServerConfig::default();
        config.websocket = websocket;
        let (addr, server) = spawn_server(config, |mut ws| async move {
            // The 32 MiB message, unassembled: check each chunk where it lands.
            let (mut received, mut chunks, mut peak) = (0usize, 0usize, 0usize);
            loop {
                let Some(StreamEvent::Chunk(c)) = ws.recv_chunk().await.transpose().unwrap() else {
                    panic!("expected a chunk");
                };
                assert!(!c.text);
                assert_eq!(c.first, received == 0);
                assert!(c.data.iter().enumerate().all(|(i, &b)| b == byte_at(received + i)), "wrong bytes");
                received += c.data.len();
                chunks += 1;
                peak = peak.max(c.data.len());
                if c.fin {
                    break;
                }
            }
            // Then, after the split, a fragmented text message with a ping between fragments.
            let (mut reader, mut writer) = ws.split();
            let mut events = Vec::new();
            while let Some(ev) = reader.recv_chunk().await {
                let ev = ev.unwrap();
                let end = matches!(&ev, StreamEvent::Chunk(c) if c.fin);
                events.push(ev);
                if end {
                    break;
                }
            }
            // The pong is corked with whatever the application sends next; send it now.
            writer.flush().await.unwrap();
            (received, chunks, peak, events)
        })
        .await;

        let (mut client, _) = ClientBuilder::new(url(addr)).proto_config(large_limits()).connect().await.unwrap();
        let payload: Vec<u8> = (0..SIZE).map(byte_at).collect();
        client.send_binary(payload).await.unwrap();
        client.send_fragment(true, "grüß ".into(), false).await.unwrap();
        client.send(Message::Ping("p".into())).await.unwrap();
        client.send_fragment(true, "dich".into(), true).await.unwrap();

        let (received, chunks, peak, events) = server.await.unwrap();
        assert_eq!(received, SIZE);
        assert!(chunks >= SIZE / MAX_CHUNK, "{chunks} chunks");
        assert!(peak <= MAX_CHUNK, "a chunk of {peak} bytes");
        let pieces: Vec<String> = events
            .iter()
            .map(|e| match e {
                StreamEvent::Chunk(c) => c.as_str().unwrap().to_owned(),
                StreamEvent::Control(m) => format!("{m:?}"),
            })
            .collect();
        let text: String = pieces.iter().filter(|p| !p.starts_with("Ping")).cloned().collect();
        assert_eq!(text, "grüß dich");
        assert!(pieces.iter().any(|p| p.starts_with("Ping")), "{pieces:?}");
        // The ping was answered by the reader.
        assert_eq!(client.recv().await.unwrap().unwrap(), Message::Pong("p".into()));
    })
    .await;
}
