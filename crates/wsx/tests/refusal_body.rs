//! A refused handshake keeps the refusal's headers and body (bounded): the body is read after
//! the head, up to its Content-Length or the end of the connection, at most
//! `MAX_ERROR_BODY_BYTES`, and never waited for long.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use wsx::proto::handshake::MAX_ERROR_BODY_BYTES;
use wsx::{ClientBuilder, Error, HandshakeError};

/// Answers one connection: reads the request head, writes `head`, then `body` in pieces of
/// `piece` bytes with a pause between them; then holds the connection open for a while.
async fn refuse_once(head: String, body: Vec<u8>, piece: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut byte = [0u8; 1];
        while !request.ends_with(b"\r\n\r\n") && tcp.read(&mut byte).await.is_ok_and(|n| n == 1) {
            request.push(byte[0]);
        }
        tcp.write_all(head.as_bytes()).await.unwrap();
        for chunk in body.chunks(piece) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            // The client stops reading at its bound: a failed write ends this.
            if tcp.write_all(chunk).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    format!("ws://{addr}/")
}

async fn refusal(url: &str) -> (http::StatusCode, http::HeaderMap, bytes::Bytes) {
    match ClientBuilder::new(url).handshake_timeout(Duration::from_secs(8)).connect().await {
        Err(Error::Handshake(HandshakeError::UnexpectedStatus { status, headers, body })) => (status, *headers, body),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn the_whole_body_arrives_after_the_head() {
    let body: Vec<u8> = (0..20_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let head = format!("HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: {}\r\n\r\n", body.len());
    let url = refuse_once(head, body.clone(), 4096).await;
    let (status, headers, got) = refusal(&url).await;
    assert_eq!(status, 503);
    assert_eq!(headers.get("retry-after").map(|v| v.as_bytes()), Some(&b"7"[..]));
    assert_eq!(got.len(), body.len());
    assert_eq!(&got[..], &body[..]);
}

#[tokio::test]
async fn a_larger_body_is_cut_at_the_bound() {
    let body = vec![b'x'; 4 * MAX_ERROR_BODY_BYTES];
    let head = format!("HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\n\r\n", body.len());
    let url = refuse_once(head, body, 40_000).await;
    let (status, _, got) = refusal(&url).await;
    assert_eq!(status, 500);
    assert_eq!(got.len(), MAX_ERROR_BODY_BYTES);
}

/// Without Content-Length the body ends with the connection; a server that keeps it open
/// costs at most a second, and the refusal (not a timeout) is reported with what arrived.
#[tokio::test]
async fn an_open_ended_body_is_not_waited_for_long() {
    let url = refuse_once("HTTP/1.1 502 Bad Gateway\r\n\r\n".into(), b"upstream down".to_vec(), 5).await;
    let started = Instant::now();
    let (status, _, got) = refusal(&url).await;
    assert_eq!(status, 502);
    assert_eq!(&got[..], b"upstream down");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}
