//! Our client against our server over loopback TCP: echo of every kind of data message, pings,
//! both closing handshakes, the Stream/Sink interface, and split halves in two tasks.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use wsx::{CloseCode, CloseFrame, Message, ServerConfig, WebSocket};

/// The next message that is not a ping or pong.
async fn next_non_control<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(ws: &mut WebSocket<S>) -> Message {
    loop {
        match ws.recv().await {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(m)) => return m,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn text_binary_and_empty_messages_echo() {
    deadline(async {
        let (addr, server) = spawn_echo_server(ServerConfig::default()).await;
        let (mut ws, response) = wsx::connect(&url(addr)).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(ws.state(), wsx::State::Open);

        let messages = [
            Message::text("hello"),
            Message::text("héllo wörld — ½ ∑ ✓ 日本語 🦀🎉👩‍👩‍👧"),
            Message::text(""),
            Message::binary(Vec::new()),
            Message::binary(vec![0u8, 1, 2, 0x80, 0xFE, 0xFF]),
            Message::binary(pattern(125, 1)),
            Message::binary(pattern(126, 2)),
            Message::binary(pattern(65_535, 3)),
            Message::binary(pattern(65_536, 4)),
        ];
        for m in &messages {
            ws.send(m.clone()).await.unwrap();
            let got = next_non_control(&mut ws).await;
            assert_eq!(got, *m);
        }
        // Several in flight at once come back in order.
        for m in &messages {
            ws.send(m.clone()).await.unwrap();
        }
        for m in &messages {
            assert_eq!(next_non_control(&mut ws).await, *m);
        }

        let peer = ws.close(CloseCode::NORMAL, "").await.unwrap();
        assert_eq!(peer.map(|f| f.code), Some(CloseCode::NORMAL));
        assert!(ws.recv().await.is_none());
        let log = server.await.unwrap();
        assert_eq!(log.echoed, 2 * messages.len());
        assert!(log.errors.is_empty(), "server errors: {:?}", log.errors);
    })
    .await
}

#[tokio::test]
async fn large_messages_echo_byte_for_byte() {
    deadline(async {
        let (addr, server) = spawn_echo_server(ServerConfig::default()).await;
        let (mut ws, _) = wsx::connect(&url(addr)).await.unwrap();

        // 1 MiB of multi-byte UTF-8 (characters straddle every read boundary).
        let unit = "aé✓🦀";
        let mut text = unit.repeat((1 << 20) / unit.len());
        while text.len() < 1 << 20 {
            text.push('x');
        }
        assert_eq!(text.len(), 1 << 20);
        ws.send_text(text.clone()).await.unwrap();
        match next_non_control(&mut ws).await {
            Message::Text(t) => assert!(t.as_str() == text, "1 MiB text corrupted"),
            other => panic!("expected text, got a {:?}", std::mem::discriminant(&other)),
        }

        // 1 MiB and 16 MiB (exactly the default max_frame_size) of binary.
        for (len, seed) in [(1 << 20, 10), (16 << 20, 11)] {
            let data = pattern(len, seed);
            ws.send_binary(data.clone()).await.unwrap();
            match next_non_control(&mut ws).await {
                Message::Binary(b) => {
                    assert_eq!(b.len(), len);
                    assert!(b[..] == data[..], "{len}-byte binary message corrupted");
                }
                other => panic!("expected binary, got a {:?}", std::mem::discriminant(&other)),
            }
        }

        ws.close(CloseCode::NORMAL, "").await.unwrap();
        let log = server.await.unwrap();
        assert_eq!(log.echoed, 3);
        assert!(log.errors.is_empty(), "server errors: {:?}", log.errors);
    })
    .await
}

#[tokio::test]
async fn ping_gets_pong_and_client_close_is_echoed() {
    deadline(async {
        let (addr, server) = spawn_echo_server(ServerConfig::default()).await;
        let (mut ws, _) = wsx::connect(&url(addr)).await.unwrap();

        ws.send(Message::Ping(wsx::Bytes::from_static(b"are you there?"))).await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::Pong(wsx::Bytes::from_static(b"are you there?")));
        ws.send(Message::Ping(wsx::Bytes::new())).await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::Pong(wsx::Bytes::new()));

        let echoed = ws.close(CloseCode(4000), "bye").await.unwrap();
        // The server echoes the code (RFC 6455 §5.5.1), without a reason.
        assert_eq!(echoed.map(|f| f.code), Some(CloseCode(4000)));
        assert_eq!(ws.state(), wsx::State::Closed);
        assert!(ws.connection().is_closed_cleanly());
        assert!(ws.recv().await.is_none());

        // The server's recv saw both pings, then our close with code and reason, then None
        // (echo_loop returns only after recv returned None).
        let log = server.await.unwrap();
        assert!(log.errors.is_empty(), "server errors: {:?}", log.errors);
        assert_eq!(
            log.controls,
            vec![
                Message::Ping(wsx::Bytes::from_static(b"are you there?")),
                Message::Ping(wsx::Bytes::new()),
                Message::Close(Some(CloseFrame::new(CloseCode(4000), "bye"))),
            ]
        );
    })
    .await
}

#[tokio::test]
async fn server_initiated_close_is_seen_by_client() {
    deadline(async {
        let (addr, server) = spawn_server(ServerConfig::default(), |mut ws| async move {
            let first = ws.recv().await.unwrap().unwrap();
            assert_eq!(first, Message::text("close me"));
            let echoed = ws.close(CloseCode(4001), "server says bye").await;
            (echoed.unwrap(), ws.state())
        })
        .await;
        let (mut ws, _) = wsx::connect(&url(addr)).await.unwrap();
        ws.send_text("close me").await.unwrap();
        let got = ws.recv().await.unwrap().unwrap();
        assert_eq!(got, Message::Close(Some(CloseFrame::new(CloseCode(4001), "server says bye"))));
        assert!(ws.recv().await.is_none(), "None must follow the close");
        assert_eq!(ws.state(), wsx::State::Closed);
        assert!(ws.connection().is_closed_cleanly());

        let (echoed, state) = server.await.unwrap();
        assert_eq!(echoed.map(|f| f.code), Some(CloseCode(4001)));
        assert_eq!(state, wsx::State::Closed);
    })
    .await
}

#[tokio::test]
async fn stream_and_sink_interfaces() {
    deadline(async {
        let (addr, server) = spawn_echo_server(ServerConfig::default()).await;
        let (mut ws, _) = wsx::connect(&url(addr)).await.unwrap();

        SinkExt::send(&mut ws, Message::text("via sink")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("via sink"));

        // feed queues without flushing; flush writes all of them.
        for i in 0..5u8 {
            ws.feed(Message::binary(vec![i; usize::from(i) * 100])).await.unwrap();
        }
        SinkExt::flush(&mut ws).await.unwrap();
        for i in 0..5u8 {
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(vec![i; usize::from(i) * 100]));
        }

        let mut items = futures_util::stream::iter((0..20).map(|i| Ok(Message::text(format!("item {i}")))));
        ws.send_all(&mut items).await.unwrap();
        let got: Vec<Message> = (&mut ws).take(20).map(Result::unwrap).collect().await;
        let want: Vec<Message> = (0..20).map(|i| Message::text(format!("item {i}"))).collect();
        assert_eq!(got, want);

        // Sink::close starts the closing handshake with 1000; the stream yields the echo, then ends.
        SinkExt::close(&mut ws).await.unwrap();
        assert_eq!(ws.state(), wsx::State::Closing);
        match ws.next().await {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::NORMAL),
            other => panic!("expected the close echo, got {other:?}"),
        }
        assert!(ws.next().await.is_none());

        let log = server.await.unwrap();
        assert_eq!(log.echoed, 26);
        assert!(log.errors.is_empty(), "server errors: {:?}", log.errors);
    })
    .await
}

#[tokio::test]
async fn split_halves_in_two_tasks() {
    deadline(async {
        // Echo server that, on "ping-me", sends three pings and reports the pongs it gets back.
        let (addr, server) = spawn_server(ServerConfig::default(), |mut ws| async move {
            let mut pongs = Vec::new();
            let mut close = None;
            while let Some(m) = ws.recv().await {
                match m.unwrap() {
                    Message::Text(t) if t == "ping-me" => {
                        for k in 0..3u8 {
                            ws.send(Message::Ping(vec![b'k', b'0' + k].into())).await.unwrap();
                        }
                    }
                    Message::Pong(p) => {
                        pongs.push(p);
                        if pongs.len() == 3 {
                            ws.send_text("got 3 pongs").await.unwrap();
                        }
                    }
                    Message::Close(f) => close = Some(f),
                    m if m.is_data() => ws.send(m).await.unwrap(),
                    _ => {}
                }
            }
            (pongs, close)
        })
        .await;
        let (ws, _) = wsx::connect(&url(addr)).await.unwrap();
        let (mut reader, mut writer) = ws.split();

        const N: usize = 1000;
        let msg = |i: usize| {
            if i.is_multiple_of(3) {
                Message::binary(pattern((i * 37) % 5000, i as u64))
            } else {
                Message::text(format!("message {i} {}", "z".repeat(i % 200)))
            }
        };
        let writer_task = tokio::spawn(async move {
            for i in 0..N {
                writer.send(msg(i)).await.unwrap();
            }
            writer
        });
        for i in 0..N {
            let got = reader.recv().await.unwrap().unwrap();
            assert!(got == msg(i), "echo {i} differs");
        }
        let mut writer = writer_task.await.unwrap();

        // Only the reader runs now: it must answer the server's pings by itself.
        writer.send(Message::text("ping-me")).await.unwrap();
        let mut pings = Vec::new();
        loop {
            match reader.recv().await.unwrap().unwrap() {
                Message::Ping(p) => pings.push(p),
                Message::Text(t) => {
                    assert_eq!(t, "got 3 pongs");
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(pings, vec![&b"k0"[..], &b"k1"[..], &b"k2"[..]]);

        writer.close(CloseCode(4000), "split bye").await.unwrap();
        assert_eq!(writer.state(), wsx::State::Closing);
        match reader.recv().await {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode(4000)),
            other => panic!("expected the close echo, got {other:?}"),
        }
        assert!(reader.recv().await.is_none());
        assert_eq!(writer.state(), wsx::State::Closed);

        let (pongs, close) = server.await.unwrap();
        assert_eq!(pongs, vec![&b"k0"[..], &b"k1"[..], &b"k2"[..]]);
        assert_eq!(close, Some(Some(CloseFrame::new(CloseCode(4000), "split bye"))));
    })
    .await
}
