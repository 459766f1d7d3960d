//! The server's API around the handshake: an asynchronous accept decision, the accepted request
//! kept on the connection, and limits validated once before a connection starts.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use tokio::io::AsyncWriteExt;
use wsx::{Accept, ClientBuilder, Error, ErrorKind, Rejection, ServerConfig, WebSocketConfig};

/// The decision may await (an auth lookup); the request it saw stays on the connection.
#[tokio::test]
async fn an_async_decision_accepts_or_refuses_and_the_request_is_kept() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut config = ServerConfig::default();
            config.keep_request = true;
            let result = wsx::accept_with_async(tcp, &config, |request, _| {
                let token = request.headers().get("authorization").cloned();
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await; // the lookup
                    match token {
                        Some(t) if t == "Bearer good" => Ok(Accept::default()),
                        _ => Err(Rejection::new(StatusCode::UNAUTHORIZED, "unknown token")),
                    }
                }
            })
            .await;
            outcomes.push(result.map(|mut ws| {
                let request = ws.take_request().expect("the accepted request");
                assert!(ws.request().is_none(), "taken");
                request.uri().path_and_query().map(|p| p.to_string())
            }));
        }
        outcomes
    });
    let (ws, _) = deadline(
        ClientBuilder::new(format!("ws://{addr}/chat?room=1")).header("Authorization", "Bearer good").connect(),
    )
    .await
    .expect("accepted");
    drop(ws);
    let err = deadline(ClientBuilder::new(format!("ws://{addr}/chat")).header("Authorization", "Bearer bad").connect())
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("401"), "{err}");
    let outcomes = deadline(server).await.unwrap();
    assert_eq!(outcomes[0].as_ref().expect("first accepted").as_deref(), Some("/chat?room=1"));
    assert!(outcomes[1].is_err());
}

/// Without `keep_request`, the connection does not hold the request's headers.
#[tokio::test]
async fn the_request_is_not_kept_unless_asked() {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        wsx::accept(tcp).await.map(|ws| ws.request().is_none())
    });
    let _client = deadline(ClientBuilder::new(format!("ws://{addr}/")).connect()).await.expect("accepted");
    assert!(deadline(server).await.unwrap().expect("server"), "the request was kept");
}

/// The handshake timeout bounds the decision too.
#[tokio::test]
async fn a_decision_that_never_ends_times_out() {
    let (listener, addr) = listen().await;
    let mut config = ServerConfig::default();
    config.websocket.proto.handshake_timeout = Duration::from_millis(200);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        wsx::accept_with_async(tcp, &config, |_, _| std::future::pending()).await
    });
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(upgrade_request().as_bytes()).await.unwrap();
    let err = within(Duration::from_secs(5), "the timeout", server).await.unwrap().expect_err("timed out");
    assert!(matches!(err, Error::HandshakeTimeout(_)), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Timeout);
}

/// Contradictory limits are refused once, before anything is sent: by the client at connect,
/// by the server with a 500.
#[tokio::test]
async fn contradictory_limits_are_refused_before_the_connection_starts() {
    let mut bad = WebSocketConfig::default();
    bad.proto.max_message_size = 1024; // smaller than the default 16 MiB frame limit
    assert!(bad.proto.validate().is_err());
    let err = ClientBuilder::new("ws://127.0.0.1:9/").config(bad.clone()).connect().await.expect_err("invalid");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Usage);
    assert!(err.to_string().contains("max_frame_size"), "{err}");

    let mut config = ServerConfig::default();
    config.websocket = bad;
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        wsx::accept_with(tcp, &config, |_, _| Ok(Accept::default())).await
    });
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(upgrade_request().as_bytes()).await.unwrap();
    let response = deadline(read_http_response(&mut tcp)).await;
    assert!(response.status_line.starts_with("HTTP/1.1 500 "), "{}", response.status_line);
    let err = deadline(server).await.unwrap().expect_err("misconfigured");
    assert!(matches!(err, Error::Config(_)), "{err:?}");

    let mut ok = WebSocketConfig::default();
    ok.proto.max_message_size = 1024;
    ok.proto.max_frame_size = 1024;
    assert!(ok.proto.validate().is_ok());
    for zero in [
        |c: &mut wsx::proto::Config| c.write_buffer_high_water = 0,
        |c: &mut wsx::proto::Config| c.close_timeout = Duration::ZERO,
        |c: &mut wsx::proto::Config| c.write_timeout = Some(Duration::ZERO),
        |c: &mut wsx::proto::Config| c.handshake_timeout = Duration::ZERO,
        |c: &mut wsx::proto::Config| c.handshake.max_headers = 0,
        |c: &mut wsx::proto::Config| c.slow_reader_timeout = Some(Duration::ZERO),
        // Beyond a year a deadline could overflow `Instant`: refused up front.
        |c: &mut wsx::proto::Config| c.write_timeout = Some(Duration::from_secs(u64::MAX)),
        |c: &mut wsx::proto::Config| c.keepalive_timeout = Duration::from_secs(400 * 24 * 3600),
    ] {
        let mut c = wsx::proto::Config::default();
        zero(&mut c);
        assert!(c.validate().is_err());
    }
}
