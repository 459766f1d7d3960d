//! The server's answers to hand-written HTTP requests: refusals with the right status, headers
//! and body; a refusal decided by the application as the client sees it; plain HTTP through
//! `Incoming`.

mod common;

use common::*;
use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wsx::{Accept, Error, HandshakeError, HandshakeLimits, Incoming, Rejection, ServerConfig};

/// Sends `request` to a server running `wsx::accept`, returns the HTTP answer and the server's
/// error.
async fn refused(request: &[u8]) -> (HttpResponse, Error) {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match wsx::accept(tcp).await {
            Ok(_) => panic!("the server accepted a bad request"),
            Err(e) => e,
        }
    });
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let resp = read_http_response(&mut s).await;
    (resp, server.await.unwrap())
}

fn rejected_status(e: &Error) -> StatusCode {
    match e {
        Error::Handshake(HandshakeError::Rejected(r)) => r.status,
        Error::Handshake(e) => e.to_rejection().map(|r| r.status).unwrap_or_else(|| panic!("no rejection for {e:?}")),
        other => panic!("expected a handshake error, got {other:?}"),
    }
}

const GOOD_HEADERS: &str = "Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";

#[tokio::test]
async fn wrong_version_is_426_with_supported_version() {
    deadline(async {
        let req = format!(
            "GET /chat HTTP/1.1\r\n{GOOD_HEADERS}Sec-WebSocket-Key: {SAMPLE_KEY}\r\nSec-WebSocket-Version: 8\r\n\r\n"
        );
        let (resp, err) = refused(req.as_bytes()).await;
        assert_eq!(resp.status_line, "HTTP/1.1 426 Upgrade Required");
        assert!(resp.headers.iter().any(|h| h == "Sec-WebSocket-Version: 13"), "headers: {:?}", resp.headers);
        assert_eq!(resp.header("connection"), Some("close"));
        let body = String::from_utf8(resp.body).unwrap();
        assert!(body.contains("Sec-WebSocket-Version"), "body: {body:?}");
        assert_eq!(rejected_status(&err), StatusCode::UPGRADE_REQUIRED);
    })
    .await
}

#[tokio::test]
async fn missing_key_is_400() {
    deadline(async {
        let req = format!("GET /chat HTTP/1.1\r\n{GOOD_HEADERS}Sec-WebSocket-Version: 13\r\n\r\n");
        let (resp, err) = refused(req.as_bytes()).await;
        assert_eq!(resp.status_line, "HTTP/1.1 400 Bad Request");
        assert_eq!(String::from_utf8(resp.body).unwrap(), "missing Sec-WebSocket-Key header");
        assert_eq!(rejected_status(&err), StatusCode::BAD_REQUEST);
    })
    .await
}

#[tokio::test]
async fn post_is_405() {
    deadline(async {
        let req = format!(
            "POST /chat HTTP/1.1\r\n{GOOD_HEADERS}Sec-WebSocket-Key: {SAMPLE_KEY}\r\nSec-WebSocket-Version: 13\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let (resp, err) = refused(req.as_bytes()).await;
        assert_eq!(resp.status_line, "HTTP/1.1 405 Method Not Allowed");
        assert_eq!(resp.header("allow"), Some("GET"));
        assert!(!resp.body.is_empty());
        assert_eq!(rejected_status(&err), StatusCode::METHOD_NOT_ALLOWED);
    })
    .await
}

#[tokio::test]
async fn oversized_head_is_431() {
    deadline(async {
        let req = format!(
            "GET /chat HTTP/1.1\r\n{GOOD_HEADERS}Sec-WebSocket-Key: {SAMPLE_KEY}\r\nSec-WebSocket-Version: 13\r\n\
             X-Padding: {}\r\n\r\n",
            "p".repeat(20 * 1024)
        );
        let (resp, err) = refused(req.as_bytes()).await;
        assert_eq!(resp.status_line, "HTTP/1.1 431 Request Header Fields Too Large");
        assert!(!resp.body.is_empty());
        assert!(matches!(err, Error::Handshake(HandshakeError::HeadTooLarge { limit: 16384 })), "{err:?}");
    })
    .await
}

#[tokio::test]
async fn callback_refusal_reaches_our_client_as_unexpected_status() {
    deadline(async {
        let (listener, addr) = listen().await;
        let server = tokio::spawn(async move {
            let mut results = Vec::new();
            for _ in 0..2 {
                let (tcp, _) = listener.accept().await.unwrap();
                let r = wsx::accept_with(tcp, &ServerConfig::default(), |req, upgrade| {
                    assert_eq!(req.uri().path(), "/test");
                    if upgrade.origin.as_deref() != Some("https://good.example") {
                        return Err(Rejection::new(StatusCode::FORBIDDEN, "origin not allowed"));
                    }
                    let protocol = upgrade.protocols.iter().find(|p| *p == "chat.v2").cloned();
                    Ok(Accept { protocol, ..Accept::default() })
                })
                .await;
                results.push(r.map(|ws| ws.protocol().map(str::to_owned)));
            }
            results
        });

        let refused = wsx::ClientBuilder::new(url(addr)).origin("https://evil.example").connect().await;
        match refused {
            Err(Error::Handshake(HandshakeError::UnexpectedStatus { status, body, .. })) => {
                assert_eq!(status, StatusCode::FORBIDDEN);
                assert_eq!(&body[..], b"origin not allowed");
            }
            other => panic!("expected UnexpectedStatus 403, got {:?}", other.map(|_| ())),
        }

        // The same callback lets a good origin in and picks the offered subprotocol.
        let (ws, response) = wsx::ClientBuilder::new(url(addr))
            .origin("https://good.example")
            .protocol("chat.v1")
            .protocol("chat.v2")
            .connect()
            .await
            .unwrap();
        assert_eq!(ws.protocol(), Some("chat.v2"));
        assert_eq!(response.headers().get("sec-websocket-protocol").unwrap(), "chat.v2");

        let results = server.await.unwrap();
        assert!(matches!(&results[0], Err(Error::Handshake(HandshakeError::Rejected(r))) if r.status == 403));
        assert_eq!(results[1].as_ref().unwrap().as_deref(), Some("chat.v2"));
    })
    .await
}

#[tokio::test]
async fn plain_get_through_incoming() {
    deadline(async {
        let (listener, addr) = listen().await;
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let (tcp, _) = listener.accept().await.unwrap();
                let incoming = Incoming::read(tcp, &HandshakeLimits::default()).await.unwrap();
                seen.push((incoming.request().uri().path().to_owned(), incoming.is_upgrade()));
                if incoming.is_upgrade() {
                    drop(incoming);
                    continue;
                }
                let (mut tcp, request, leftover) = incoming.into_parts();
                assert_eq!(request.method(), http::Method::GET);
                assert!(leftover.is_empty());
                tcp.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello plain")
                    .await
                    .unwrap();
                tcp.shutdown().await.unwrap();
            }
            seen
        });

        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n").await.unwrap();
        let resp = read_http_response(&mut s).await;
        assert_eq!(resp.status_line, "HTTP/1.1 200 OK");
        assert_eq!(resp.body, b"hello plain");

        // An upgrade request, for contrast: is_upgrade() is true.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(upgrade_request().as_bytes()).await.unwrap();
        let _ = read_http_response_or_eof(&mut s).await;

        let seen = server.await.unwrap();
        assert_eq!(seen, vec![("/index.html".to_owned(), false), ("/raw".to_owned(), true)]);
    })
    .await
}

/// Reads until EOF, ignoring what arrives.
async fn read_http_response_or_eof(s: &mut TcpStream) -> usize {
    use tokio::io::AsyncReadExt;
    let mut sink = Vec::new();
    s.read_to_end(&mut sink).await.unwrap_or(0)
}
