//! Size limits of the server: a message over max_frame_size or max_message_size is refused with
//! close code 1009, seen by both ends.

mod common;

use common::*;
use tokio::sync::oneshot;
use wsx::proto::{Config, LimitError};
use wsx::{CloseCode, Message, ServerConfig, WebSocketConfig};

fn small_limits(max_frame_size: usize, max_message_size: usize) -> ServerConfig {
    let mut proto = Config::default();
    proto.max_frame_size = max_frame_size;
    proto.max_message_size = max_message_size;
    let mut websocket = WebSocketConfig::default();
    websocket.proto = proto;
    let mut config = ServerConfig::default();
    config.websocket = websocket;
    config
}

/// A server that echoes until `recv` fails, winds the connection down, then keeps the socket
/// open until `release` fires (so the client reads everything before the socket goes away).
async fn spawn_limited_server(
    config: ServerConfig,
    release: oneshot::Receiver<()>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<(usize, wsx::Error)>) {
    spawn_server(config, |mut ws| async move {
        let mut echoed = 0;
        let err = loop {
            match ws.recv().await {
                Some(Ok(m)) if m.is_data() => {
                    echoed += 1;
                    ws.send(m).await.unwrap();
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break e,
                None => panic!("connection ended without an error"),
            }
        };
        // After an error, recv winds down and then returns None.
        while let Some(m) = ws.recv().await {
            assert!(!matches!(m, Ok(ref m) if m.is_data()), "data after the failure: {m:?}");
        }
        let _ = release.await;
        (echoed, err)
    })
    .await
}

/// The client's view: the server's close frame with 1009, then the end.
async fn expect_close_1009(ws: &mut wsx::WebSocket<wsx::MaybeTlsStream>) {
    match ws.recv().await {
        Some(Ok(Message::Close(Some(f)))) => {
            assert_eq!(f.code, CloseCode::MESSAGE_TOO_BIG);
            assert!(f.reason.len() <= 123);
        }
        other => panic!("expected Close(1009), got {other:?}"),
    }
    assert!(ws.recv().await.is_none());
}

#[tokio::test]
async fn frame_over_max_frame_size_gets_1009() {
    deadline(async {
        let (release, released) = oneshot::channel();
        let (addr, server) = spawn_limited_server(small_limits(1024, 1 << 20), released).await;
        let (mut ws, _) = wsx::connect(&url(addr)).await.unwrap();

        // At the limit: accepted and echoed.
        let at_limit = pattern(1024, 7);
        ws.send_binary(at_limit.clone()).await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::binary(at_limit));

        // One frame over it.
        ws.send_binary(pattern(2000, 8)).await.unwrap();
        expect_close_1009(&mut ws).await;
        let _ = release.send(());

        let (echoed, err) = server.await.unwrap();
        assert_eq!(echoed, 1);
        assert_eq!(err.close_code(), Some(CloseCode::MESSAGE_TOO_BIG));
        assert!(
            matches!(
                err,
                wsx::Error::Proto(wsx::proto::Error::Limit(LimitError::FrameTooLarge { declared: 2000, limit: 1024 }))
            ),
            "{err:?}"
        );
    })
    .await
}

#[tokio::test]
async fn fragmented_message_over_max_message_size_gets_1009() {
    deadline(async {
        let (release, released) = oneshot::channel();
        let (addr, server) = spawn_limited_server(small_limits(1024, 4096), released).await;
        let (mut ws, _) = wsx::connect(&url(addr)).await.unwrap();

        // 4 × 1024 = exactly max_message_size, in frames of max_frame_size: accepted.
        let data = pattern(4096, 9);
        for (i, chunk) in data.chunks(1024).enumerate() {
            ws.send_fragment(false, wsx::Bytes::copy_from_slice(chunk), i == 3).await.unwrap();
        }
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::binary(data));

        // Five frames of 1000 bytes: each frame is fine, the message is not.
        for i in 0..5 {
            ws.send_fragment(true, wsx::Bytes::from(vec![b'a'; 1000]), i == 4).await.unwrap();
        }
        expect_close_1009(&mut ws).await;
        let _ = release.send(());

        let (echoed, err) = server.await.unwrap();
        assert_eq!(echoed, 1);
        assert_eq!(err.close_code(), Some(CloseCode::MESSAGE_TOO_BIG));
        assert!(
            matches!(err, wsx::Error::Proto(wsx::proto::Error::Limit(LimitError::MessageTooLarge { limit: 4096 }))),
            "{err:?}"
        );
    })
    .await
}

#[tokio::test]
async fn client_limit_refuses_big_server_message() {
    // The same rule on the client side: our client with a small limit refuses the server's frame.
    deadline(async {
        let (addr, server) = spawn_server(ServerConfig::default(), |mut ws| async move {
            ws.send_binary(vec![1u8; 5000]).await.unwrap();
            let mut got = Vec::new();
            while let Some(m) = ws.recv().await {
                got.push(m.map_err(|e| e.to_string()));
            }
            got
        })
        .await;
        let mut proto = Config::default();
        proto.max_frame_size = 4096;
        let (mut ws, _) = wsx::ClientBuilder::new(url(addr)).proto_config(proto).connect().await.unwrap();
        let err = ws.recv().await.unwrap().unwrap_err();
        assert_eq!(err.close_code(), Some(CloseCode::MESSAGE_TOO_BIG));
        while ws.recv().await.is_some() {}

        let got = server.await.unwrap();
        match got.first() {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::MESSAGE_TOO_BIG),
            other => panic!("server expected Close(1009), got {other:?}"),
        }
    })
    .await
}
