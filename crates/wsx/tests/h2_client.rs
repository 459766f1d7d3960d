//! `ClientBuilder::http2`: HTTP/2 chosen by ALPN, the fallbacks to HTTP/1.1, the SETTINGS
//! deadline, h2c with prior knowledge, and HTTP/2 inside a proxy's tunnel.
//!
//! The TLS server here records the ALPN protocol of every connection it accepts, so each test
//! can say how many connections the client made and what each one spoke: `h2` goes to hyper's
//! HTTP/2 server (the extended CONNECT protocol enabled or not), anything else to `wsx::accept`
//! over HTTP/1.1. Both echo.
#![cfg(all(feature = "http2", feature = "tls"))]

#[path = "common/certs.rs"]
mod certs;
mod common;
#[path = "common/proxies.rs"]
mod proxies;

#[path = "common/h2_echo.rs"]
mod h2_echo;

use h2_echo::{echo, h2_service};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{deadline, within};
use http::{Response, Version};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;
use wsx::h2::{Http2Fallback, Http2Mode, Http2Outcome};
use wsx::{ClientBuilder, CloseCode, Error, HandshakeError, MaybeTlsStream, Message, WebSocket};

/// What the server saw of one TLS connection.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// A TLS connection was accepted, with this ALPN protocol (`""` for none).
    Connection(String),
    /// That connection ended (hyper's HTTP/2 server returned).
    H2ConnectionEnded,
}

#[derive(Clone, Copy)]
struct Setup {
    /// The ALPN protocols the server offers.
    alpn: &'static [&'static [u8]],
    /// HTTP/2: advertise SETTINGS_ENABLE_CONNECT_PROTOCOL.
    connect_protocol: bool,
    /// HTTP/2: after TLS, never answer (no SETTINGS at all).
    silent: bool,
}

const BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];

impl Default for Setup {
    fn default() -> Self {
        Self { alpn: BOTH, connect_protocol: true, silent: false }
    }
}

/// A TLS server on the first address `localhost` resolves to, with a certificate for
/// `localhost` signed by a CA of its own: its port, the client TLS settings that trust it, and
/// what it saw.
async fn start(setup: Setup) -> (u16, wsx::tls::ClientTls, mpsc::UnboundedReceiver<Seen>) {
    let ca = certs::TestCa::new("h2 client test CA");
    let leaf = ca.server(&["localhost"]);
    let tls = wsx::tls::ServerTls::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes())
        .expect("server TLS")
        .alpn_protocols(setup.alpn.iter().map(|a| a.to_vec()).collect());
    let acceptor = tls.acceptor().expect("acceptor");
    let address = tokio::net::lookup_host(("localhost", 0)).await.expect("lookup").next().expect("localhost");
    let listener = tokio::net::TcpListener::bind(address).await.expect("bind");
    let port = listener.local_addr().expect("local_addr").port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, seen) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(tls) = wsx::tls::accept(&acceptor, tcp).await else { return };
                let alpn = tls.get_ref().1.alpn_protocol().map(|a| String::from_utf8_lossy(a).into_owned());
                let _ = seen.send(Seen::Connection(alpn.clone().unwrap_or_default()));
                if alpn.as_deref() != Some("h2") {
                    if let Ok(ws) = wsx::accept(tls).await {
                        echo(ws).await;
                    }
                    return;
                }
                if setup.silent {
                    // Read the client's preface and frames, answer nothing, hold the connection.
                    let mut tls = tls;
                    let mut sink = Vec::new();
                    let _ = tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut sink).await;
                    return;
                }
                let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                if setup.connect_protocol {
                    builder.enable_connect_protocol();
                }
                let _ = builder.serve_connection(TokioIo::new(tls), service_fn(h2_service)).await;
                let _ = seen.send(Seen::H2ConnectionEnded);
            });
        }
    });
    let client_tls = wsx::tls::ClientTls::new().only_added_roots().add_ca_pem(ca.pem().as_bytes()).expect("CA");
    (port, client_tls, rx)
}

async fn next(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    within(Duration::from_secs(10), "the server's record", seen.recv()).await.expect("server alive")
}

/// Nothing more arrives within a moment (no further connection).
async fn nothing_more(seen: &mut mpsc::UnboundedReceiver<Seen>) {
    if let Ok(Some(s)) = tokio::time::timeout(Duration::from_millis(300), seen.recv()).await {
        panic!("unexpected: {s:?}");
    }
}

async fn round_trip(ws: &mut WebSocket<MaybeTlsStream>, text: &str) {
    ws.send_text(text).await.expect("send");
    match within(Duration::from_secs(10), "echo", ws.recv()).await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), text),
        other => panic!("expected the echo of {text:?}, got {other:?}"),
    }
}

fn builder(port: u16, tls: &wsx::tls::ClientTls) -> ClientBuilder {
    ClientBuilder::new(format!("wss://localhost:{port}/echo")).tls(tls.clone()).no_proxy().http2(Http2Mode::Prefer)
}

/// ALPN chose h2 and the server enabled the extended CONNECT: the WebSocket is stream 1 of
/// that one connection, the response says HTTP/2, the connection's task outlives `connect`
/// (the handle is gone by then), and dropping the WebSocket ends the connection.
#[tokio::test]
async fn prefer_uses_h2_when_the_server_enables_the_connect_protocol() {
    deadline(async {
        let (port, tls, mut seen) = start(Setup::default()).await;
        let (mut ws, response) = builder(port, &tls).connect().await.expect("connect");
        assert_eq!(next(&mut seen).await, Seen::Connection("h2".into()));
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(response.extensions().get::<Http2Outcome>(), Some(&Http2Outcome::Http2 { stream_id: 1 }));
        assert!(ws.get_ref().is_http2() && ws.get_ref().is_tls());
        assert_eq!(ws.get_ref().http2_stream().map(|s| s.stream_id()), Some(1));
        assert!(ws.get_ref().tcp().is_none() && ws.get_ref().tls_session().is_none());
        assert_eq!(ws.get_ref().peer_addr().expect("peer_addr").port(), port);
        // The connection's task keeps running with only the WebSocket left holding it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        round_trip(&mut ws, "over h2").await;
        ws.send_binary(vec![7u8; 300_000]).await.expect("send");
        match ws.recv().await {
            Some(Ok(Message::Binary(b))) => assert_eq!(b.len(), 300_000),
            other => panic!("expected the binary echo, got {other:?}"),
        }
        drop(ws);
        assert_eq!(next(&mut seen).await, Seen::H2ConnectionEnded);
        nothing_more(&mut seen).await;
    })
    .await;
}

/// ALPN chose h2 but the server did not enable the extended CONNECT: a second TLS connection,
/// offering http/1.1 only, carries the WebSocket; with `Http2Fallback::Fail`, the typed error
/// and no second connection.
#[tokio::test]
async fn h2_without_the_connect_protocol_falls_back_to_a_new_http1_connection() {
    deadline(async {
        let (port, tls, mut seen) = start(Setup { connect_protocol: false, ..Setup::default() }).await;
        let (mut ws, response) = builder(port, &tls).connect().await.expect("connect");
        // Two connections, h2 then http/1.1; the first, abandoned, closed by the client (its
        // end may be seen before or after the second connection).
        let mut events = vec![next(&mut seen).await, next(&mut seen).await, next(&mut seen).await];
        let ended = events.iter().position(|e| *e == Seen::H2ConnectionEnded).expect("the h2 connection ended");
        events.remove(ended);
        assert_eq!(events, [Seen::Connection("h2".into()), Seen::Connection("http/1.1".into())]);
        assert_eq!(response.version(), Version::HTTP_11);
        assert_eq!(response.extensions().get::<Http2Outcome>(), Some(&Http2Outcome::Http1Fallback));
        assert!(!ws.get_ref().is_http2() && ws.get_ref().is_tls());
        let alpn = ws.get_ref().tls_session().and_then(|s| s.alpn_protocol()).map(<[u8]>::to_vec);
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        round_trip(&mut ws, "over the second connection").await;
        ws.close(CloseCode::NORMAL, "").await.expect("close");

        let started = Instant::now();
        match builder(port, &tls).http2_fallback(Http2Fallback::Fail).connect().await {
            Err(Error::Handshake(HandshakeError::ConnectProtocolDisabled)) => {}
            other => panic!("expected ConnectProtocolDisabled, got {:?}", other.map(|_| ())),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(next(&mut seen).await, Seen::Connection("h2".into()));
        assert_eq!(next(&mut seen).await, Seen::H2ConnectionEnded);
        nothing_more(&mut seen).await;

        // `Only` never falls back either.
        match builder(port, &tls).http2(Http2Mode::Only).connect().await {
            Err(Error::Handshake(HandshakeError::ConnectProtocolDisabled)) => {}
            other => panic!("expected ConnectProtocolDisabled, got {:?}", other.map(|_| ())),
        }
    })
    .await;
}

/// A server that chooses http/1.1 by ALPN, or offers no ALPN at all: HTTP/1.1 on that same
/// connection, one connection only. `Only` refuses it with the typed ALPN error.
#[tokio::test]
async fn an_http1_server_is_spoken_to_on_the_same_connection() {
    deadline(async {
        const HTTP1: &[&[u8]] = &[b"http/1.1"];
        for (alpn, expected) in [(HTTP1, "http/1.1"), (&[][..], "")] {
            let (port, tls, mut seen) = start(Setup { alpn, ..Setup::default() }).await;
            let (mut ws, response) = builder(port, &tls).connect().await.expect("connect");
            assert_eq!(next(&mut seen).await, Seen::Connection(expected.into()));
            assert_eq!(response.version(), Version::HTTP_11);
            assert_eq!(response.extensions().get::<Http2Outcome>(), Some(&Http2Outcome::Http1));
            assert!(!ws.get_ref().is_http2());
            round_trip(&mut ws, "over HTTP/1.1").await;
            ws.close(CloseCode::NORMAL, "").await.expect("close");
            nothing_more(&mut seen).await;
        }
        let (port, tls, _seen) = start(Setup { alpn: &[], ..Setup::default() }).await;
        match builder(port, &tls).http2(Http2Mode::Only).connect().await {
            Err(Error::Http2(wsx::h2::Http2Error::NotNegotiated(None))) => {}
            other => panic!("expected NotNegotiated, got {:?}", other.map(|_| ())),
        }
    })
    .await;
}

/// A server that chooses h2 and then never sends its SETTINGS: `connect` fails at the
/// builder's handshake timeout, not later.
#[tokio::test]
async fn a_server_that_never_sends_settings_fails_at_the_handshake_timeout() {
    deadline(async {
        let (port, tls, mut seen) = start(Setup { silent: true, ..Setup::default() }).await;
        let timeout = Duration::from_millis(600);
        let started = Instant::now();
        match builder(port, &tls).handshake_timeout(timeout).connect().await {
            Err(Error::HandshakeTimeout(t)) => assert_eq!(t, timeout),
            other => panic!("expected the handshake timeout, got {:?}", other.map(|_| ())),
        }
        let elapsed = started.elapsed();
        assert!(elapsed >= timeout && elapsed < timeout + Duration::from_secs(2), "{elapsed:?}");
        assert_eq!(next(&mut seen).await, Seen::Connection("h2".into()));
    })
    .await;
}

/// `ws://` with `Prefer` is HTTP/1.1 (no h2c unasked); with `Only` it is h2c with prior
/// knowledge.
#[tokio::test]
async fn ws_urls_use_h2c_only_when_asked() {
    deadline(async {
        // An HTTP/1.1 server: Prefer works, Only fails (the server does not speak HTTP/2).
        let (addr, _) = common::spawn_server(wsx::ServerConfig::default(), echo).await;
        let (mut ws, response) = ClientBuilder::new(format!("ws://{addr}/"))
            .no_proxy()
            .http2(Http2Mode::Prefer)
            .connect()
            .await
            .expect("connect");
        assert_eq!(response.extensions().get::<Http2Outcome>(), Some(&Http2Outcome::Http1));
        assert!(!ws.get_ref().is_http2() && !ws.get_ref().is_tls());
        round_trip(&mut ws, "plain").await;

        // An h2c server: Only opens the WebSocket on stream 1.
        let (listener, addr) = common::listen().await;
        tokio::spawn(async move {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder.enable_connect_protocol();
            let _ = builder.serve_connection(TokioIo::new(tcp), service_fn(h2_service)).await;
        });
        let (mut ws, response) = ClientBuilder::new(format!("ws://{addr}/"))
            .no_proxy()
            .http2(Http2Mode::Only)
            .connect()
            .await
            .expect("connect h2c");
        assert_eq!(response.version(), Version::HTTP_2);
        assert!(ws.get_ref().is_http2() && !ws.get_ref().is_tls());
        round_trip(&mut ws, "h2c").await;
        ws.close(CloseCode::NORMAL, "").await.expect("close");
    })
    .await;
}

/// Through an HTTP CONNECT proxy (tinyproxy): the tunnel first, then TLS with ALPN h2 inside
/// it, then the WebSocket on an HTTP/2 stream. The client's TCP peer is the proxy.
#[tokio::test]
async fn h2_through_an_http_connect_proxy() {
    deadline(async {
        let (port, tls, mut seen) = start(Setup::default()).await;
        let proxy = proxies::ProxyServer::tinyproxy(&[port], None);
        let via = proxy.url("http", None);
        let (mut ws, response) = builder(port, &tls)
            .proxy(&via)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{e}; the proxy's log:\n{}", proxy.log()));
        assert_eq!(next(&mut seen).await, Seen::Connection("h2".into()));
        assert_eq!(response.version(), Version::HTTP_2);
        assert!(ws.get_ref().is_http2());
        let peer: SocketAddr = ws.get_ref().peer_addr().expect("peer_addr");
        assert_eq!(peer.port(), proxy.port, "the connection did not go through the proxy");
        round_trip(&mut ws, "through the tunnel, over h2").await;
        ws.close(CloseCode::NORMAL, "").await.expect("close");
    })
    .await;
}

/// A WebSocket from `ClientBuilder` is its HTTP/2 connection's only user: once `close` returns,
/// END_STREAM (and the connection's end) has been written, even if the program stops right
/// after. The client runs on a runtime of its own that is dropped as soon as `close` returns;
/// a raw h2 server (h2c) echoes the close frame, ends its side, and must then see END_STREAM,
/// not a reset or a connection cut short.
#[tokio::test]
async fn close_writes_end_stream_before_it_returns() {
    deadline(async {
        let (listener, addr) = common::listen().await;
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut conn = h2::server::Builder::new()
                .enable_connect_protocol()
                .handshake::<_, bytes::Bytes>(tcp)
                .await
                .expect("h2");
            let (request, mut respond) = conn.accept().await.expect("a request").expect("request");
            // Drive the connection; its end (the client's GOAWAY and EOF) is the task's result.
            let driver = tokio::spawn(async move { while let Some(Ok(_)) = conn.accept().await {} });
            let mut body = request.into_body();
            let mut stream = respond.send_response(Response::new(()), false).expect("200");
            let mut buf = bytes::BytesMut::new();
            let mut echoed = false;
            let end = loop {
                match body.data().await {
                    Some(Ok(chunk)) => {
                        let _ = body.flow_control().release_capacity(chunk.len());
                        buf.extend_from_slice(&chunk);
                        // The client's masked close frame, whole: echo its code, end our side.
                        let want = 2 + 4 + usize::from(buf.get(1).map_or(0x7f, |b| b & 0x7f));
                        if !echoed && buf.len() >= want {
                            echoed = true;
                            assert_eq!(buf[0], 0x88, "a close frame");
                            let mut close = vec![0x88, 2];
                            close.extend_from_slice(&4001u16.to_be_bytes());
                            stream.send_data(bytes::Bytes::from(close), true).expect("close echo and END_STREAM");
                        }
                    }
                    Some(Err(e)) => break Err(e),
                    None => break Ok(()),
                }
            };
            let _ = driver.await;
            end
        });
        let url = format!("ws://{addr}/");
        let client = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                let (mut ws, _) =
                    ClientBuilder::new(url).no_proxy().http2(Http2Mode::Only).connect().await.expect("connect");
                let echo = ws.close(CloseCode(4001), "bye").await.expect("close");
                assert_eq!(echo.map(|f| u16::from(f.code)), Some(4001));
            });
            // The runtime, and any task of the connection's left in it, is dropped here.
        });
        tokio::task::spawn_blocking(move || client.join()).await.expect("join").expect("client thread");
        let end = within(Duration::from_secs(5), "the server's view", server).await.expect("server");
        end.expect("END_STREAM from the client, not a reset or a cut connection");
    })
    .await;
}

/// Dropping a `ClientBuilder` WebSocket over HTTP/2 without its close handshake resets its
/// stream (RST_STREAM CANCEL), as for `Http2Connection::open`, and the connection then ends.
#[tokio::test]
async fn dropping_the_websocket_resets_its_stream_and_ends_the_connection() {
    deadline(async {
        let (listener, addr) = common::listen().await;
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut conn = h2::server::Builder::new()
                .enable_connect_protocol()
                .handshake::<_, bytes::Bytes>(tcp)
                .await
                .expect("h2");
            let (request, mut respond) = conn.accept().await.expect("a request").expect("request");
            let driver = tokio::spawn(async move { while let Some(Ok(_)) = conn.accept().await {} });
            let _stream = respond.send_response(Response::new(()), false).expect("200");
            let mut body = request.into_body();
            let end = loop {
                match body.data().await {
                    Some(Ok(chunk)) => {
                        let _ = body.flow_control().release_capacity(chunk.len());
                    }
                    Some(Err(e)) => break Some(e),
                    None => break None,
                }
            };
            within(Duration::from_secs(5), "the connection's end", driver).await.expect("driver");
            end
        });
        let (ws, _) = ClientBuilder::new(format!("ws://{addr}/"))
            .no_proxy()
            .http2(Http2Mode::Only)
            .connect()
            .await
            .expect("connect");
        drop(ws);
        let end = within(Duration::from_secs(5), "the server's view", server).await.expect("server");
        let reason = end.and_then(|e| e.reason());
        assert_eq!(reason, Some(h2::Reason::CANCEL), "expected RST_STREAM CANCEL");
    })
    .await;
}
