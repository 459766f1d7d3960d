//! Client proxies against real proxy servers on loopback (tinyproxy for HTTP CONNECT, microsocks
//! for SOCKS5; both must be installed: the tests fail, saying so, without them), and against
//! hand-written misbehaving proxies (silent, endless answer).
//!
//! Each test proves which way the connection went: through the proxy, the client's TCP peer is
//! the proxy's port; directly, it is the server's. The wss:// tests also check that TLS ran end
//! to end inside the tunnel, with the target's name (not the proxy's) as SNI.

#[cfg(feature = "tls")]
#[path = "common/certs.rs"]
mod certs;
mod common;
#[path = "common/proxies.rs"]
mod proxies;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsx::proxy::{ProxyError, ProxyFailure};
use wsx::{ClientBuilder, ErrorKind, MaybeTlsStream, Message, ServerConfig, WebSocket};

use common::{deadline, echo_loop, listen, spawn_server, url};
use proxies::{free_port, ProxyServer};

/// Starts an echo server for one connection.
async fn echo_server() -> SocketAddr {
    spawn_server(ServerConfig::default(), echo_loop).await.0
}

/// Sends a text message and expects it back.
async fn round_trip(ws: &mut WebSocket<MaybeTlsStream>) {
    ws.send_text("through the tunnel").await.expect("send");
    match ws.recv().await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "through the tunnel"),
        other => panic!("expected the echo, got {other:?}"),
    }
}

/// The port of the client's TCP peer: the proxy's when tunnelled, the server's when direct.
fn peer_port(ws: &WebSocket<MaybeTlsStream>) -> u16 {
    ws.get_ref().peer_addr().expect("peer_addr").port()
}

/// Connects to `target` through `proxy` (a URL) and returns the error, which must be a proxy error.
async fn proxy_error(builder: ClientBuilder) -> (ErrorKind, String, Box<ProxyError>) {
    match deadline(builder.connect()).await {
        Ok(_) => panic!("connected, but the proxy should have failed"),
        Err(e) => {
            let kind = e.kind();
            let message = e.to_string();
            match e {
                wsx::Error::Proxy(p) => (kind, message, p),
                other => panic!("expected a proxy error, got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn ws_through_http_connect() {
    let server = echo_server().await;
    let proxy = ProxyServer::tinyproxy(&[server.port()], None);
    let (mut ws, _) = deadline(ClientBuilder::new(url(server)).proxy(proxy.url("http", None)).connect())
        .await
        .unwrap_or_else(|e| panic!("{e}; tinyproxy's log:\n{}", proxy.log()));
    assert_eq!(peer_port(&ws), proxy.port, "the connection did not go through the proxy");
    round_trip(&mut ws).await;
    assert!(proxy.log().contains("CONNECT"), "tinyproxy saw no CONNECT:\n{}", proxy.log());
}

#[tokio::test]
async fn ws_through_http_connect_with_basic_auth() {
    let server = echo_server().await;
    let proxy = ProxyServer::tinyproxy(&[server.port()], Some(("alice", "s3-cr.et")));
    // The password percent-encoded in part: it must be decoded before it is sent.
    let via = proxy.url("http", Some("alice:s3%2Dcr.et"));
    let (mut ws, _) = deadline(ClientBuilder::new(url(server)).proxy(via).connect())
        .await
        .unwrap_or_else(|e| panic!("{e}; tinyproxy's log:\n{}", proxy.log()));
    assert_eq!(peer_port(&ws), proxy.port);
    round_trip(&mut ws).await;
}

#[tokio::test]
async fn http_proxy_407_without_or_with_wrong_credentials() {
    let server = echo_server().await;
    let proxy = ProxyServer::tinyproxy(&[server.port()], Some(("alice", "s3-cr.et")));

    let (kind, message, error) = proxy_error(ClientBuilder::new(url(server)).proxy(proxy.url("http", None))).await;
    assert_eq!(kind, ErrorKind::Peer);
    assert!(matches!(error.failure(), ProxyFailure::Refused { status: 407, .. }), "{error:?}");
    assert_eq!(error.proxy(), proxy.url("http", None));
    assert!(message.contains(&format!("proxy http://127.0.0.1:{}: answered HTTP/1.0 407", proxy.port)), "{message}");
    assert!(message.contains("it wants a user name and password"), "{message}");

    let wrong = proxy.url("http", Some("alice:hunter2"));
    let (kind, message, error) = proxy_error(ClientBuilder::new(url(server)).proxy(wrong)).await;
    assert_eq!(kind, ErrorKind::Peer);
    // tinyproxy answers wrong credentials with 401 (RFC 9110 would have 407).
    assert!(matches!(error.failure(), ProxyFailure::Refused { status: 401 | 407, .. }), "{error:?}");
    assert!(message.contains(&format!("proxy http://alice@127.0.0.1:{}: answered", proxy.port)), "{message}");
    assert!(message.contains("refused the user name and password"), "{message}");
    assert!(!message.contains("hunter2") && !format!("{error:?}").contains("hunter2"), "password shown: {message}");
}

#[tokio::test]
async fn http_proxy_403_for_a_port_it_does_not_allow_and_500_for_a_closed_one() {
    let server = echo_server().await;
    let closed = free_port();
    let proxy = ProxyServer::tinyproxy(&[closed], None);
    let (kind, message, error) = proxy_error(ClientBuilder::new(url(server)).proxy(proxy.url("http", None))).await;
    assert_eq!(kind, ErrorKind::Peer);
    assert!(matches!(error.failure(), ProxyFailure::Refused { status: 403, .. }), "{error:?}");
    assert!(message.contains("403 Access violation; the proxy does not allow a tunnel"), "{message}");

    let target = format!("ws://127.0.0.1:{closed}/");
    let (kind, message, error) = proxy_error(ClientBuilder::new(target).proxy(proxy.url("http", None))).await;
    assert_eq!(kind, ErrorKind::Peer);
    assert!(matches!(error.failure(), ProxyFailure::Refused { status: 500, .. }), "{error:?}");
    assert!(message.contains("could not reach the server"), "{message}");
}

#[tokio::test]
async fn ws_through_socks5_and_socks5h() {
    let proxy = ProxyServer::microsocks(None);
    for scheme in ["socks5", "socks5h"] {
        // A name, resolved here (socks5) or by the proxy (socks5h), to where the server listens.
        let (listener, _) = listen_on_localhost().await;
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            echo_loop(wsx::accept(tcp).await.expect("server handshake")).await
        });
        let target = format!("ws://localhost:{port}/");
        let (mut ws, _) = deadline(ClientBuilder::new(target).proxy(proxy.url(scheme, None)).connect())
            .await
            .unwrap_or_else(|e| panic!("{scheme}: {e}; microsocks's log:\n{}", proxy.log()));
        assert_eq!(peer_port(&ws), proxy.port, "{scheme}");
        round_trip(&mut ws).await;
        ws.close(wsx::CloseCode::NORMAL, "").await.unwrap();
        while ws.recv().await.is_some() {}
        assert_eq!(server.await.unwrap().echoed, 1, "{scheme}");
    }
}

/// A listener on the first address `localhost` resolves to.
async fn listen_on_localhost() -> (tokio::net::TcpListener, SocketAddr) {
    let address = tokio::net::lookup_host(("localhost", 0)).await.unwrap().next().expect("localhost resolves");
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

#[tokio::test]
async fn ws_through_socks5_with_user_and_password() {
    let server = echo_server().await;
    let proxy = ProxyServer::microsocks(Some(("bob", "se:cr@t")));
    let via = proxy.url("socks5h", Some("bob:se%3Acr%40t"));
    let (mut ws, _) = deadline(ClientBuilder::new(url(server)).proxy(via).connect())
        .await
        .unwrap_or_else(|e| panic!("{e}; microsocks's log:\n{}", proxy.log()));
    assert_eq!(peer_port(&ws), proxy.port);
    round_trip(&mut ws).await;
}

#[tokio::test]
async fn socks5_authentication_failures() {
    let server = echo_server().await;
    let proxy = ProxyServer::microsocks(Some(("bob", "se:cr@t")));

    let wrong = proxy.url("socks5", Some("bob:hunter2"));
    let (kind, message, error) = proxy_error(ClientBuilder::new(url(server)).proxy(wrong)).await;
    assert_eq!(kind, ErrorKind::Peer);
    assert!(matches!(error.failure(), ProxyFailure::SocksAuth(_)), "{error:?}");
    assert!(
        message.contains(&format!("proxy socks5://bob@127.0.0.1:{}: SOCKS5 authentication", proxy.port)),
        "{message}"
    );
    assert!(message.contains("refused the user name and password"), "{message}");
    assert!(!message.contains("hunter2") && !format!("{error:?}").contains("hunter2"));

    let (kind, message, error) = proxy_error(ClientBuilder::new(url(server)).proxy(proxy.url("socks5", None))).await;
    assert_eq!(kind, ErrorKind::Peer);
    assert!(matches!(error.failure(), ProxyFailure::SocksAuth(_)), "{error:?}");
    assert!(message.contains("accepts no connection without authentication"), "{message}");
}

#[tokio::test]
async fn socks5_connection_refused_by_the_server() {
    let proxy = ProxyServer::microsocks(None);
    let target = format!("ws://127.0.0.1:{}/", free_port());
    let (kind, message, error) = proxy_error(ClientBuilder::new(target).proxy(proxy.url("socks5h", None))).await;
    assert_eq!(kind, ErrorKind::Peer);
    assert!(matches!(error.failure(), ProxyFailure::SocksRefused { reply: 5, .. }), "{error:?}");
    assert!(message.ends_with("SOCKS5 reply 5: connection refused by the server"), "{message}");
}

#[tokio::test]
async fn bypass_list_connects_directly() {
    // Nothing listens at the proxy's address: going through it would fail.
    let dead_proxy = format!("http://127.0.0.1:{}", free_port());

    let server = echo_server().await;
    let builder = ClientBuilder::new(url(server)).proxy(&dead_proxy).proxy_bypass("example.com, 127.0.0.0/8");
    let (mut ws, _) = deadline(builder.connect()).await.expect("a bypassed host connects directly");
    assert_eq!(peer_port(&ws), server.port());
    round_trip(&mut ws).await;

    let server = echo_server().await;
    let builder =
        ClientBuilder::new(url(server)).proxy(&dead_proxy).proxy_bypass(format!("127.0.0.1:{}", server.port()));
    let (ws, _) = deadline(builder.connect()).await.expect("an entry with the server's port bypasses");
    assert_eq!(peer_port(&ws), server.port());

    // A host not in the list goes to the proxy, which is not there.
    let server = echo_server().await;
    for bypass in ["example.com, 10.0.0.0/8", "127.0.0.1:1", ""] {
        let builder = ClientBuilder::new(url(server)).proxy(&dead_proxy).proxy_bypass(bypass);
        let (kind, message, error) = proxy_error(builder).await;
        assert_eq!(kind, ErrorKind::Io, "{bypass:?}");
        assert!(matches!(error.failure(), ProxyFailure::Connect(_)), "{error:?}");
        assert!(message.starts_with(&format!("proxy {dead_proxy}: cannot connect to the proxy")), "{message}");
    }

    // no_proxy() forgets the proxy altogether.
    let (ws, _) = deadline(ClientBuilder::new(url(server)).proxy(&dead_proxy).no_proxy().connect()).await.unwrap();
    assert_eq!(peer_port(&ws), server.port());
}

/// A proxy that accepts connections, reads, and never answers.
async fn silent_proxy() -> SocketAddr {
    let (listener, addr) = listen().await;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut sink = [0; 1024];
                while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_silent_proxy_times_out_within_the_handshake_timeout() {
    let proxy = silent_proxy().await;
    let timeout = Duration::from_millis(400);
    for (scheme, during) in
        [("http", "waiting for the answer to CONNECT"), ("socks5h", "waiting for the SOCKS5 handshake")]
    {
        let builder =
            ClientBuilder::new("ws://127.0.0.1:9/").proxy(format!("{scheme}://{proxy}")).handshake_timeout(timeout);
        let started = Instant::now();
        let (kind, message, error) = proxy_error(builder).await;
        let took = started.elapsed();
        assert_eq!(kind, ErrorKind::Timeout, "{scheme}");
        assert!(
            matches!(error.failure(), ProxyFailure::Timeout { during: d, timeout: t } if *d == during && *t == timeout),
            "{error:?}"
        );
        assert!(
            message.contains(&format!("proxy {scheme}://{proxy}: {during}: nothing within the handshake timeout")),
            "{message}"
        );
        assert!(took >= timeout && took < timeout + Duration::from_secs(2), "{scheme}: took {took:?}");
    }
}

#[tokio::test]
async fn a_huge_answer_to_connect_is_cut_at_the_head_limit() {
    let (listener, proxy) = listen().await;
    let written = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut request = [0; 1024];
        let _ = tcp.read(&mut request).await;
        let mut written = 0usize;
        if tcp.write_all(b"HTTP/1.1 200 Connection established\r\n").await.is_err() {
            return written;
        }
        let line = format!("X-Filler: {}\r\n", "a".repeat(1000));
        // Endless headers, until the client hangs up (or 64 MiB, as a backstop).
        while written < 64 << 20 && tcp.write_all(line.as_bytes()).await.is_ok() {
            written += line.len();
        }
        written
    });
    let limits = wsx::HandshakeLimits { max_head_bytes: 8 * 1024, ..Default::default() };
    let builder = ClientBuilder::new("ws://127.0.0.1:9/").proxy(format!("http://{proxy}")).handshake_limits(limits);
    let (kind, message, error) = proxy_error(builder).await;
    assert_eq!(kind, ErrorKind::Limit);
    assert!(matches!(error.failure(), ProxyFailure::HeadTooLarge { limit: 8192 }), "{error:?}");
    assert!(message.ends_with("its answer to CONNECT is larger than the limit of 8192 bytes"), "{message}");
    // The client hung up instead of reading on.
    let written = deadline(written).await.unwrap();
    assert!(written < 64 << 20, "the client kept reading");
}

#[tokio::test]
async fn invalid_or_unreachable_proxies_name_themselves() {
    let (kind, message, error) =
        proxy_error(ClientBuilder::new("ws://127.0.0.1:9/").proxy("socks4://carol:hunter2@127.0.0.1:1080")).await;
    assert_eq!(kind, ErrorKind::Usage);
    assert!(matches!(error.failure(), ProxyFailure::InvalidUrl(_)), "{error:?}");
    assert_eq!(
        message,
        "proxy socks4://***@127.0.0.1:1080: invalid proxy URL: SOCKS4 is not supported; use socks5:// or socks5h://"
    );

    let (kind, message, _) =
        proxy_error(ClientBuilder::new("ws://127.0.0.1:9/").proxy("http://carol:hunter2@[::1")).await;
    assert_eq!(kind, ErrorKind::Usage);
    assert!(message.starts_with("proxy http://***@[::1: invalid proxy URL"), "{message}");
}

// ------------------------------------------------------------------ wss:// inside the tunnels

/// A wss echo server for one connection, on the address `localhost` resolves to, with a
/// certificate for `localhost` signed by `ca`. Its task ends with the SNI name the client sent.
#[cfg(feature = "tls")]
async fn wss_echo_server_on_localhost(ca: &certs::TestCa) -> (u16, tokio::task::JoinHandle<Option<String>>) {
    let leaf = ca.server(&["localhost"]);
    let tls = wsx::tls::ServerTls::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).expect("server TLS");
    let acceptor = tls.acceptor().expect("acceptor");
    let (listener, addr) = listen_on_localhost().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let tls = wsx::tls::accept(&acceptor, tcp).await.expect("server TLS handshake");
        let sni = tls.get_ref().1.server_name().map(str::to_owned);
        let mut ws = wsx::accept(tls).await.expect("server WebSocket handshake");
        while let Some(Ok(msg)) = ws.recv().await {
            if msg.is_data() && ws.send(msg).await.is_err() {
                break;
            }
        }
        sni
    });
    (addr.port(), server)
}

/// A wss echo server for one connection: its port and its task (see
/// [`wss_echo_server_on_localhost`]).
#[cfg(feature = "tls")]
type WssServer = (u16, tokio::task::JoinHandle<Option<String>>);

/// Connects to `server` (`wss://localhost:port/`) through `proxy` at `via`, trusting `ca` only;
/// checks the tunnel, the echo and the SNI name the server saw.
#[cfg(feature = "tls")]
async fn wss_round_trip(ca: &certs::TestCa, (port, server): WssServer, proxy: &ProxyServer, via: String) {
    let tls = wsx::tls::ClientTls::new().only_added_roots().add_ca_pem(ca.pem().as_bytes()).expect("CA");
    let builder = ClientBuilder::new(format!("wss://localhost:{port}/")).tls(tls).proxy(&via);
    let (mut ws, _) =
        deadline(builder.connect()).await.unwrap_or_else(|e| panic!("{via}: {e}; the proxy's log:\n{}", proxy.log()));
    assert!(ws.get_ref().is_tls(), "{via}");
    assert_eq!(peer_port(&ws), proxy.port, "{via}: the connection did not go through the proxy");
    round_trip(&mut ws).await;
    ws.close(wsx::CloseCode::NORMAL, "").await.expect("close");
    while ws.recv().await.is_some() {}
    let sni = deadline(server).await.expect("server task");
    assert_eq!(sni.as_deref(), Some("localhost"), "{via}: SNI must be the server's name");
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn wss_through_http_connect_with_and_without_basic_auth() {
    let ca = certs::TestCa::new("wsx proxy test CA");
    let server = wss_echo_server_on_localhost(&ca).await;
    let proxy = ProxyServer::tinyproxy(&[server.0], None);
    wss_round_trip(&ca, server, &proxy, proxy.url("http", None)).await;

    let server = wss_echo_server_on_localhost(&ca).await;
    let proxy = ProxyServer::tinyproxy(&[server.0], Some(("alice", "s3-cr.et")));
    wss_round_trip(&ca, server, &proxy, proxy.url("http", Some("alice:s3-cr.et"))).await;
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn wss_through_socks5_and_socks5h_with_and_without_credentials() {
    let ca = certs::TestCa::new("wsx proxy test CA");
    let open = ProxyServer::microsocks(None);
    let locked = ProxyServer::microsocks(Some(("bob", "se:cr@t")));
    for scheme in ["socks5", "socks5h"] {
        wss_round_trip(&ca, wss_echo_server_on_localhost(&ca).await, &open, open.url(scheme, None)).await;
        let via = locked.url(scheme, Some("bob:se%3Acr%40t"));
        wss_round_trip(&ca, wss_echo_server_on_localhost(&ca).await, &locked, via).await;
    }
}
