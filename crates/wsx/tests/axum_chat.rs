//! The `axum_chat` example, run: its page, its room (broadcast, bounded queues, a slow member
//! dropped while the others go on) and its echo endpoint, through wsx clients.
#![cfg(feature = "axum")]

mod common;

#[path = "../examples/axum_chat.rs"]
#[allow(dead_code)]
mod axum_chat;

use std::sync::Arc;
use std::time::Duration;

use axum_chat::{App, Room, MAX_MESSAGE, QUEUE};
use bytes::BytesMut;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use wsx::origin::OriginPolicy;
use wsx::{ClientBuilder, Message, PreparedMessage, WebSocket};

async fn start() -> (std::net::SocketAddr, Arc<App>) {
    let app = App::new(OriginPolicy::default());
    let router = axum_chat::app(app.clone());
    let (listener, addr) = listen().await;
    tokio::spawn(async move { axum::serve(listener, router).await.expect("axum::serve") });
    (addr, app)
}

async fn join(addr: std::net::SocketAddr) -> WebSocket<wsx::MaybeTlsStream> {
    let (ws, _) = ClientBuilder::new(format!("ws://{addr}/chat")).protocol("chat.v1").connect().await.expect("join");
    assert_eq!(ws.protocol(), Some("chat.v1"));
    ws
}

/// The next text message that is not a join/leave notice.
async fn next_line(ws: &mut WebSocket<wsx::MaybeTlsStream>) -> String {
    loop {
        let msg = within(Duration::from_secs(10), "a room message", ws.recv()).await;
        match msg.expect("open").expect("no error") {
            Message::Text(t) if !t.starts_with("* ") => return t.to_string(),
            Message::Text(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn serves_the_page_the_room_and_echo() {
    deadline(async {
        let (addr, app) = start().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let page = read_http_response(&mut s).await;
        assert!(page.status_line.starts_with("HTTP/1.1 200"), "{page:?}");
        assert!(String::from_utf8_lossy(&page.body).contains("new WebSocket("));

        let mut a = join(addr).await;
        let mut b = join(addr).await;
        within(Duration::from_secs(5), "both joined", async {
            while app.room().len() < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        a.send_text("hello room").await.unwrap();
        let (to_a, to_b) = (next_line(&mut a).await, next_line(&mut b).await);
        assert!(to_b.ends_with(": hello room"), "{to_b}");
        assert_eq!(to_a, to_b, "the sender gets the room's message too");

        // A page from elsewhere may not join; the echo endpoint echoes.
        let refused = ClientBuilder::new(format!("ws://{addr}/chat")).origin("http://evil.example").connect().await;
        assert!(refused.expect_err("refused").to_string().contains("403"));
        let (mut echo, _) = wsx::connect(&format!("ws://{addr}/echo")).await.unwrap();
        echo.send_binary(vec![1, 2, 3]).await.unwrap();
        assert_eq!(echo.recv().await.unwrap().unwrap(), Message::Binary(vec![1, 2, 3].into()));
    })
    .await;
}

/// A member that never reads is dropped from the room once its queue is full and is closed
/// with 1008; the others keep getting every message meanwhile.
#[tokio::test]
async fn a_slow_member_is_dropped_and_the_room_goes_on() {
    deadline(async {
        let (addr, app) = start().await;
        let mut fast = join(addr).await;
        // The slow member: a small receive buffer, and it reads nothing after the handshake.
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut slow = socket.connect(addr).await.unwrap();
        let request = upgrade_request().replace("GET /raw", "GET /chat");
        slow.write_all(request.as_bytes()).await.unwrap();
        within(Duration::from_secs(5), "both joined", async {
            while app.room().len() < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;

        let line = "x".repeat(MAX_MESSAGE - 100);
        let mut sent = 0;
        while app.room().len() == 2 {
            assert!(sent < 20_000, "the slow member was never dropped");
            fast.send_text(line.clone()).await.unwrap();
            sent += 1;
            assert!(next_line(&mut fast).await.ends_with(&line), "the fast member keeps up");
        }
        // The room goes on without it.
        fast.send_text("still here").await.unwrap();
        assert!(next_line(&mut fast).await.ends_with(": still here"));

        // Draining the slow member's socket (the 101, then frames) ends with a 1008 close.
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        within(Duration::from_secs(10), "the slow member's end", async {
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                assert!(slow.read_buf(&mut buf).await.unwrap() > 0, "closed before the 101 ended");
            }
            let end = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("found") + 4;
            assert!(buf.split_to(end).starts_with(b"HTTP/1.1 101 "));
            loop {
                while let Some(f) = parse_frame(&mut buf) {
                    frames.push(f);
                }
                if frames.last().is_some_and(|f| f.opcode == OP_CLOSE) {
                    break;
                }
                assert!(slow.read_buf(&mut buf).await.unwrap_or(0) > 0, "ended without a close frame");
            }
        })
        .await;
        let close = frames.last().expect("a close frame");
        assert_eq!(&close.payload[..2], &1008u16.to_be_bytes());
        assert!(frames.len() > QUEUE, "it got what it held before the close");
    })
    .await;
}

/// The room's queues in memory: publishing never waits, and a member is dropped once it holds
/// QUEUE messages, after which its queue ends.
#[tokio::test]
async fn a_room_queue_is_bounded() {
    let room = Room::default();
    let (_, mut slow) = room.join();
    let (_, mut fast) = room.join();
    for i in 0..=QUEUE {
        room.publish(PreparedMessage::text(format!("m{i}")));
        assert!(fast.recv().await.is_some());
    }
    assert_eq!(room.len(), 1, "the slow member was dropped at QUEUE + 1");
    let mut held = 0;
    while slow.recv().await.is_some() {
        held += 1;
    }
    assert_eq!(held, QUEUE, "it held QUEUE messages, then its queue ended");
}
