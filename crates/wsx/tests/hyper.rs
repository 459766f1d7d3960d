//! `wsx::hyper` under hyper's own HTTP/1 server: the connection runs on the TCP socket when the
//! stream can be taken back out of hyper, on hyper's `Upgraded` otherwise (another stream
//! type), and both read the bytes hyper had already read and write vectored.
#![cfg(feature = "hyper")]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use wsx::hyper::{rejection_response, Upgrade, UpgradedStream};
use wsx::{Accept, Error, Message, WebSocketConfig};

/// A stream type hyper's downcast cannot know, forwarding everything (vectored writes
/// included) to a `TcpStream`: wsx's own client stream.
use wsx::MaybeTlsStream as Opaque;

#[derive(Debug)]
enum Event {
    Opened { tcp: bool, vectored: bool },
    Failed(Error),
}

#[derive(Clone, Copy)]
enum Setup {
    /// `TokioIo<TcpStream>` with upgrades: the stream comes back out.
    Tcp,
    /// `TokioIo<Opaque>` with upgrades: the connection runs on `Upgraded`.
    Opaque,
    /// `TokioIo<TcpStream>` without `with_upgrades`: hyper never hands the connection over.
    NoUpgrades,
}

async fn service(
    mut request: Request<Incoming>,
    events: mpsc::UnboundedSender<Event>,
) -> Result<Response<String>, Infallible> {
    let upgrade = match Upgrade::new(&mut request) {
        Ok(upgrade) => upgrade,
        Err(rejection) => return Ok(rejection_response(&rejection)),
    };
    let protocol = upgrade.request().protocols.iter().find(|p| *p == "echo.v1").cloned();
    let mut config = WebSocketConfig::default();
    config.proto.handshake_timeout = Duration::from_millis(300);
    let (response, upgrading) = match upgrade.accept(Accept { protocol, ..Accept::default() }, &config) {
        Ok(accepted) => accepted,
        Err(rejection) => return Ok(rejection_response(&rejection)),
    };
    tokio::spawn(async move {
        let mut ws = match upgrading.await {
            Ok(ws) => ws,
            Err(e) => {
                let _ = events.send(Event::Failed(e));
                return;
            }
        };
        let stream = ws.get_ref();
        let tcp = matches!(stream, UpgradedStream::Tcp(_));
        let _ = events.send(Event::Opened { tcp, vectored: stream.is_write_vectored() });
        while let Some(Ok(msg)) = ws.recv().await {
            if msg.is_data() && ws.feed(msg).await.is_err() {
                break;
            }
        }
    });
    Ok(response.map(|()| String::new()))
}

async fn start(setup: Setup) -> (SocketAddr, mpsc::UnboundedReceiver<Event>) {
    let (listener, addr) = listen().await;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.expect("accept");
            let tx = tx.clone();
            let svc = service_fn(move |request| service(request, tx.clone()));
            let http = hyper::server::conn::http1::Builder::new();
            tokio::spawn(async move {
                let _ = match setup {
                    Setup::Tcp => http.serve_connection(TokioIo::new(tcp), svc).with_upgrades().await,
                    Setup::Opaque => http.serve_connection(TokioIo::new(Opaque::Plain(tcp)), svc).with_upgrades().await,
                    Setup::NoUpgrades => http.serve_connection(TokioIo::new(tcp), svc).await,
                };
            });
        }
    });
    (addr, rx)
}

async fn next_event(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    within(Duration::from_secs(10), "server event", rx.recv()).await.expect("the server is running")
}

/// Echo of text, a large binary message and frames sent with the request, on either stream.
async fn echo_checks(setup: Setup, expect_tcp: bool) {
    let (addr, mut events) = start(setup).await;
    let url = format!("ws://{addr}/");
    let (mut ws, _) = wsx::ClientBuilder::new(&url).protocol("echo.v1").connect().await.expect("upgrade");
    assert_eq!(ws.protocol(), Some("echo.v1"));
    match next_event(&mut events).await {
        Event::Opened { tcp, vectored } => {
            assert_eq!(tcp, expect_tcp, "which stream");
            assert!(vectored, "vectored writes reach the socket");
        }
        other => panic!("unexpected {other:?}"),
    }
    ws.send_text("hello").await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::Text("hello".into()));
    let big = Bytes::from(pattern(3 << 20, 9));
    ws.send_binary(big.clone()).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::Binary(big));

    // Frames in the same write as the request: hyper reads them with the head.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut wire = upgrade_request().into_bytes();
    wire.extend(masked_frame(OP_TEXT, true, b"early", [1, 2, 3, 4]));
    wire.extend(masked_frame(OP_BINARY, true, &pattern(5000, 3), [9, 8, 7, 6]));
    s.write_all(&wire).await.unwrap();
    let mut buf = BytesMut::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = buf.split_to(end + 4);
            assert!(head.starts_with(b"HTTP/1.1 101 "), "{:?}", String::from_utf8_lossy(&head));
            break;
        }
        let n = within(Duration::from_secs(5), "101", tokio::io::AsyncReadExt::read_buf(&mut s, &mut buf)).await;
        assert!(n.unwrap() > 0, "closed before the head");
    }
    let f = within(Duration::from_secs(5), "first echo", read_frame(&mut s, &mut buf)).await.expect("an echo");
    assert_eq!((f.opcode, f.payload.as_slice()), (OP_TEXT, &b"early"[..]));
    let f = within(Duration::from_secs(5), "second echo", read_frame(&mut s, &mut buf)).await.expect("an echo");
    assert_eq!((f.opcode, f.payload), (OP_BINARY, pattern(5000, 3)));
}

#[tokio::test]
async fn runs_on_the_tcp_socket_under_hypers_http1_server() {
    deadline(echo_checks(Setup::Tcp, true)).await;
}

/// Another stream type (as TLS would be): the connection stays on hyper's `Upgraded`, and
/// works the same.
#[tokio::test]
async fn falls_back_to_the_upgraded_stream() {
    deadline(echo_checks(Setup::Opaque, false)).await;
}

/// Served without `with_upgrades`, the connection is never handed over: the upgrade fails
/// with hyper's reason as an I/O error, at once, rather than waiting for the handshake timeout.
#[tokio::test]
async fn a_connection_never_handed_over_fails_in_time() {
    deadline(async {
        let (addr, mut events) = start(Setup::NoUpgrades).await;
        let started = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(upgrade_request().as_bytes()).await.unwrap();
        match next_event(&mut events).await {
            Event::Failed(e) => {
                assert!(matches!(e, Error::Io(_)), "{e}");
                assert!(started.elapsed() < Duration::from_millis(300), "took {:?}", started.elapsed());
            }
            other => panic!("unexpected {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn a_bad_request_gets_the_rejection_as_a_response() {
    deadline(async {
        let (addr, _events) = start(Setup::Tcp).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let raw = upgrade_request().replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 99");
        s.write_all(raw.as_bytes()).await.unwrap();
        let mut head = BytesMut::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n =
                within(Duration::from_secs(5), "answer", tokio::io::AsyncReadExt::read_buf(&mut s, &mut head)).await;
            assert!(n.unwrap() > 0);
        }
        let text = String::from_utf8_lossy(&head).to_string();
        assert!(text.starts_with("HTTP/1.1 426 "), "{text}");
        assert!(text.to_ascii_lowercase().contains("sec-websocket-version: 13"), "{text}");

        let rejection = wsx::Rejection::new(StatusCode::FORBIDDEN, "nope");
        let response = rejection_response(&rejection);
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()["content-type"], "text/plain; charset=utf-8");
        assert_eq!(response.body(), "nope");
    })
    .await;
}
