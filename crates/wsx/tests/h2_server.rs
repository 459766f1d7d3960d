//! `wsx::h2::server`: WebSockets accepted on a server that runs the `h2` crate itself (no
//! hyper), spoken to by `wsx::h2`'s client and by a raw `h2` client for the refusals.
#![cfg(feature = "http2")]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use wsx::h2::server::Http2Upgrade;
use wsx::h2::Http2Config;
use wsx::proto::handshake::ClientRequestConfig;
use wsx::{Accept, CloseCode, Message, WebSocketConfig};

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut).await.unwrap_or_else(|_| panic!("{what}: not within 10 s"))
}

/// A raw h2 server on a loopback port: every extended CONNECT is accepted (selecting `chat`
/// when offered) and echoed; other requests get the refusal `Http2Upgrade::new` sends.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut h2 = h2::server::Builder::new().enable_connect_protocol().handshake(tcp).await.unwrap();
                while let Some(Ok((request, respond))) = h2.accept().await {
                    tokio::spawn(async move {
                        let Ok(upgrade) = Http2Upgrade::new(request, respond) else { return };
                        let protocol = upgrade.request().protocols.iter().find(|p| *p == "chat").cloned();
                        let accept = Accept { protocol, ..Accept::default() };
                        let mut ws = upgrade.accept(accept, &WebSocketConfig::default()).expect("accept");
                        while let Some(Ok(msg)) = ws.recv().await {
                            if msg.is_data() && ws.feed(msg).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            });
        }
    });
    addr
}

/// Text, 1 MiB of binary and a close with a code, on two WebSockets of one connection; the
/// subprotocol the server selected.
#[tokio::test]
async fn echo_on_a_raw_h2_server() {
    let addr = echo_server().await;
    let h2 = within("h2", wsx::h2::connect(&format!("ws://{addr}/"), &Http2Config::default())).await.unwrap();
    let offer = ClientRequestConfig { protocols: vec!["chat".into()], ..ClientRequestConfig::default() };
    let url = format!("ws://{addr}/echo");
    let (mut a, response) = within("open a", h2.open(&url, offer, &WebSocketConfig::default())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(a.protocol(), Some("chat"));
    let (mut b, _) =
        within("open b", h2.open(&url, ClientRequestConfig::default(), &WebSocketConfig::default())).await.unwrap();
    assert_eq!(b.protocol(), None);
    a.send_text("a").await.unwrap();
    b.send_text("b").await.unwrap();
    assert_eq!(within("a", a.recv()).await.unwrap().unwrap(), Message::text("a"));
    assert_eq!(within("b", b.recv()).await.unwrap().unwrap(), Message::text("b"));
    let big = Bytes::from((0..(1u32 << 20)).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    a.send_binary(big.clone()).await.unwrap();
    match within("1 MiB", a.recv()).await.unwrap().unwrap() {
        Message::Binary(data) => assert!(data == big, "1 MiB echo differs"),
        other => panic!("{other:?}"),
    }
    let reply = within("close", a.close(CloseCode::from(4001), "done")).await.expect("clean close");
    assert_eq!(reply.map(|f| u16::from(f.code)), Some(4001));
    // b is unaffected by a's end.
    b.send_text("still here").await.unwrap();
    assert_eq!(within("b again", b.recv()).await.unwrap().unwrap(), Message::text("still here"));
}

/// Requests that are not a valid extended CONNECT get their refusal from `Http2Upgrade::new`.
#[tokio::test]
async fn refusals_are_answered() {
    let addr = echo_server().await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.unwrap();
    let request = |method: Method, protocol: Option<&str>, version: Option<&str>| {
        let mut r = Request::builder().method(method).uri(format!("http://{addr}/echo"));
        if let Some(v) = version {
            r = r.header("sec-websocket-version", v);
        }
        let mut r = r.body(()).unwrap();
        if let Some(p) = protocol {
            r.extensions_mut().insert(h2::ext::Protocol::from(p));
        }
        r
    };
    let cases = [
        (request(Method::GET, None, Some("13")), StatusCode::METHOD_NOT_ALLOWED),
        (request(Method::CONNECT, None, Some("13")), StatusCode::BAD_REQUEST),
        (request(Method::CONNECT, Some("connect-udp"), Some("13")), StatusCode::NOT_IMPLEMENTED),
        (request(Method::CONNECT, Some("websocket"), None), StatusCode::BAD_REQUEST),
        (request(Method::CONNECT, Some("websocket"), Some("8")), StatusCode::BAD_REQUEST),
    ];
    for (request, status) in cases {
        let what = format!("{} {:?}", request.method(), request.extensions().get::<h2::ext::Protocol>());
        let (response, _stream) = send.send_request(request, false).unwrap();
        let response = within(&what, response).await.unwrap();
        assert_eq!(response.status(), status, "{what}");
        let mut body = response.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = within("body", body.data()).await {
            text.extend_from_slice(&chunk.unwrap());
        }
        assert!(!text.is_empty(), "{what}: the refusal says why");
    }
}
