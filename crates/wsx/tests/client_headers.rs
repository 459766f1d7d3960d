//! `ClientBuilder::header` with a header that cannot be sent: the connection is refused up front
//! with an error naming the header, and not a byte goes out (rather than connecting without the
//! header, e.g. unauthenticated).

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsx::{ClientBuilder, Error, HandshakeError};

/// The header name in an `InvalidHeader` error.
fn invalid_header_name(err: &Error) -> &str {
    match err {
        Error::Handshake(HandshakeError::InvalidHeader { name, .. }) => name,
        other => panic!("expected HandshakeError::InvalidHeader, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_header_fails_connect_on_and_sends_nothing() {
    deadline(async {
        let (client_io, mut server_io) = tokio::io::duplex(64 << 10);
        let err = ClientBuilder::new("ws://example.com/")
            .header("X-Fine", "ok")
            .header("Authorization", "Bearer secret\r\nX-Injected: 1")
            .header("Bad Name", "v")
            .connect_on(client_io)
            .await
            .expect_err("an invalid header must fail the connect");
        // The first invalid header is named, its (possibly secret) value is not shown.
        assert_eq!(invalid_header_name(&err), "Authorization");
        let text = err.to_string();
        assert!(text.contains("Authorization"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        // `client_io` was dropped without writing: the peer reads end-of-stream and nothing else.
        let mut sent = Vec::new();
        server_io.read_to_end(&mut sent).await.unwrap();
        assert!(sent.is_empty(), "sent {:?}", String::from_utf8_lossy(&sent));

        let (client_io, _server_io) = tokio::io::duplex(64 << 10);
        let err = ClientBuilder::new("ws://example.com/").header("Bad\nName", "v").connect_on(client_io).await;
        assert_eq!(invalid_header_name(&err.expect_err("invalid name")), "Bad\nName");
    })
    .await
}

#[tokio::test]
async fn invalid_header_fails_connect_before_connecting() {
    deadline(async {
        let (listener, addr) = listen().await;
        let err = ClientBuilder::new(url(addr))
            .header("Authorization", "Bearer x\n")
            .connect()
            .await
            .expect_err("an invalid header must fail the connect");
        assert_eq!(invalid_header_name(&err), "Authorization");
        // No TCP connection was even opened.
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "the client connected");
    })
    .await
}

#[tokio::test]
async fn valid_headers_are_sent() {
    deadline(async {
        // The same builder calls with valid values do send the header (so the tests above fail
        // for the right reason).
        let (client_io, mut server_io) = tokio::io::duplex(64 << 10);
        let server = tokio::spawn(async move {
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                if server_io.read(&mut byte).await.unwrap() == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            // Refuse, so the client finishes.
            server_io.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n").await.unwrap();
            String::from_utf8(head).unwrap()
        });
        let err = ClientBuilder::new("ws://example.com/")
            .header("Authorization", "Bearer ok")
            .connect_on(client_io)
            .await
            .expect_err("refused");
        assert!(matches!(err, Error::Handshake(HandshakeError::UnexpectedStatus { .. })), "{err:?}");
        let head = server.await.unwrap();
        assert!(head.contains("\r\nAuthorization: Bearer ok\r\n"), "{head}");
    })
    .await
}
