//! wss:// in both roles: the happy paths (echo, compression, large messages, mutual TLS, the
//! browser interface) and each failure with the error that names it.
#![cfg(feature = "tls")]

#[path = "common/certs.rs"]
mod certs;

use std::net::SocketAddr;
use std::time::Duration;

use certs::TestCa;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use wsx::proto::deflate::DeflateConfig;
use wsx::tls::{ClientTls, ServerTls};
use wsx::{ClientBuilder, Error, ErrorKind, Message, TlsError, WebSocketConfig};

const WAIT: Duration = Duration::from_secs(10);

/// What the server side of each connection ended with: `Ok` after an echo session, or the
/// error of the TLS or WebSocket handshake.
type ServerLog = mpsc::UnboundedReceiver<Result<(), Error>>;

/// A wss echo server on 127.0.0.1 with `tls`; every connection's outcome goes to the log.
async fn tls_echo_server(tls: ServerTls) -> (SocketAddr, ServerLog) {
    let acceptor = tls.acceptor().expect("acceptor");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let outcome = async {
                    let tls = tokio::time::timeout(WAIT, wsx::tls::accept(&acceptor, tcp))
                        .await
                        .map_err(|_| Error::HandshakeTimeout(WAIT))??;
                    let mut config = wsx::ServerConfig::default();
                    config.websocket.deflate = Some(DeflateConfig::default());
                    let mut ws = wsx::accept_with(tls, &config, |_, _| Ok(wsx::Accept::default())).await?;
                    while let Some(msg) = ws.recv().await {
                        let msg = msg?;
                        if msg.is_data() {
                            ws.feed(msg).await?;
                        }
                    }
                    Ok(())
                }
                .await;
                let _ = tx.send(outcome);
            });
        }
    });
    (addr, rx)
}

fn client_tls(ca: &TestCa) -> ClientTls {
    ClientTls::new().only_added_roots().add_ca_pem(ca.pem().as_bytes()).expect("CA pem")
}

async fn connect(url: &str, tls: ClientTls) -> Result<wsx::WebSocket<wsx::MaybeTlsStream>, Error> {
    // Direct, whatever proxy the environment names.
    let builder = ClientBuilder::new(url).tls(tls).handshake_timeout(WAIT).no_proxy();
    builder.connect().await.map(|(ws, _)| ws)
}

async fn next_server_outcome(log: &mut ServerLog) -> Result<(), Error> {
    tokio::time::timeout(WAIT, log.recv()).await.expect("server outcome in time").expect("server alive")
}

fn tls_error(e: Error) -> TlsError {
    match e {
        Error::Tls(t) => t,
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

#[tokio::test]
async fn wss_echo_text_binary_and_a_large_message() {
    let ca = TestCa::new("wsx test CA");
    let leaf = ca.server(&["localhost", "127.0.0.1"]);
    let (addr, mut log) =
        tls_echo_server(ServerTls::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap()).await;
    for host in ["localhost", "127.0.0.1"] {
        let mut ws = connect(&format!("wss://{host}:{}/echo", addr.port()), client_tls(&ca)).await.unwrap();
        let session = ws.get_ref().tls_session().expect("a TLS session");
        assert_eq!(session.alpn_protocol(), Some(&b"http/1.1"[..]));
        ws.send_text("héllo over TLS").await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("héllo over TLS"));
        // Large enough for vectored writes of separate payload chunks, and several TLS records.
        let big: Vec<u8> = (0..(3 << 20)).map(|i| (i * 7 % 251) as u8).collect();
        ws.send_binary(big.clone()).await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::binary(big));
        ws.close(wsx::CloseCode::NORMAL, "done").await.unwrap();
        next_server_outcome(&mut log).await.unwrap();
    }
}

#[tokio::test]
async fn wss_with_permessage_deflate() {
    let ca = TestCa::new("wsx test CA");
    let leaf = ca.server(&["localhost"]);
    let (addr, _log) =
        tls_echo_server(ServerTls::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap()).await;
    let mut config = WebSocketConfig::default();
    config.deflate = Some(DeflateConfig::default());
    let (mut ws, _) = ClientBuilder::new(format!("wss://localhost:{}/", addr.port()))
        .tls(client_tls(&ca))
        .config(config)
        .connect()
        .await
        .unwrap();
    assert!(ws.extensions().is_some_and(|e| e.starts_with("permessage-deflate")), "{:?}", ws.extensions());
    let json = r#"{"user":"ada","text":"hello hello hello hello"}"#.repeat(100);
    ws.send_text(json.clone()).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text(json));
}

#[tokio::test]
async fn unknown_issuer_is_named() {
    let ca = TestCa::new("wsx test CA");
    let other = TestCa::new("some other CA");
    let leaf = ca.server(&["localhost"]);
    let (addr, mut log) =
        tls_echo_server(ServerTls::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap()).await;
    let e = connect(&format!("wss://localhost:{}/", addr.port()), client_tls(&other)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tls);
    assert_eq!(tls_error(e), TlsError::UnknownIssuer);
    // The server hears about it as an alert from the client.
    let server = tls_error(next_server_outcome(&mut log).await.unwrap_err());
    assert_eq!(server, TlsError::AlertReceived { alert: "UnknownCA".into() });
}

#[tokio::test]
async fn wrong_host_name_is_named_with_the_certificates_names() {
    let ca = TestCa::new("wsx test CA");
    let leaf = ca.server(&["localhost"]);
    let (addr, _log) =
        tls_echo_server(ServerTls::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap()).await;
    let e = connect(&format!("wss://127.0.0.1:{}/", addr.port()), client_tls(&ca)).await.unwrap_err();
    match tls_error(e) {
        TlsError::NameMismatch { expected, presented } => {
            assert_eq!(expected, "127.0.0.1");
            assert_eq!(presented, ["localhost"]);
        }
        other => panic!("expected a name mismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn expired_certificate_is_named_with_its_dates() {
    let ca = TestCa::new("wsx test CA");
    let leaf = ca.expired_server(&["localhost"]);
    let (addr, _log) =
        tls_echo_server(ServerTls::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap()).await;
    let e = connect(&format!("wss://localhost:{}/", addr.port()), client_tls(&ca)).await.unwrap_err();
    let t = tls_error(e);
    assert!(matches!(&t, TlsError::Expired { detail: Some(d) } if d.contains("not valid after 2021-01-01")), "{t:?}");
    assert!(t.to_string().contains("expired"), "{t}");
}

#[tokio::test]
async fn client_certificate_required_missing_then_present() {
    let ca = TestCa::new("wsx test CA");
    let leaf = ca.server(&["localhost"]);
    let client = ca.client("alice");
    let server_tls = ServerTls::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes())
        .unwrap()
        .require_client_cert(ca.pem().as_bytes())
        .unwrap();
    let (addr, mut log) = tls_echo_server(server_tls).await;
    let url = format!("wss://localhost:{}/", addr.port());

    // Without a certificate: TLS 1.3 lets the client finish first, so the server's alert
    // arrives while the client waits for the 101; it must still be reported as TLS.
    let e = connect(&url, client_tls(&ca)).await.unwrap_err();
    let t = tls_error(e);
    assert_eq!(t, TlsError::AlertReceived { alert: "CertificateRequired".into() });
    assert!(t.to_string().contains("requires a client certificate"), "{t}");
    assert_eq!(tls_error(next_server_outcome(&mut log).await.unwrap_err()), TlsError::NoClientCertificate);

    // With one.
    let tls = client_tls(&ca).client_auth_pem(client.cert_pem.as_bytes(), client.key_pem.as_bytes()).unwrap();
    let mut ws = connect(&url, tls).await.unwrap();
    ws.send_text("it's me").await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("it's me"));
}

#[tokio::test]
async fn plain_client_on_the_tls_port_gets_a_400_that_says_so() {
    let ca = TestCa::new("wsx test CA");
    let leaf = ca.server(&["localhost"]);
    let (addr, mut log) =
        tls_echo_server(ServerTls::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap()).await;
    let started = std::time::Instant::now();
    let e = ClientBuilder::new(format!("ws://{addr}/")).handshake_timeout(WAIT).connect().await.unwrap_err();
    assert!(started.elapsed() < WAIT, "answered at once, not by a timeout");
    match e {
        Error::Handshake(wsx::HandshakeError::UnexpectedStatus { status, body, .. }) => {
            assert_eq!(status, 400);
            assert!(String::from_utf8_lossy(&body).contains("speaks TLS"), "{body:?}");
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    assert_eq!(tls_error(next_server_outcome(&mut log).await.unwrap_err()), TlsError::NotTls);
}

#[tokio::test]
async fn tls_client_on_a_plain_port_fails_fast_naming_tls() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = wsx::accept(tcp).await;
            });
        }
    });
    let ca = TestCa::new("wsx test CA");
    let started = std::time::Instant::now();
    let e = connect(&format!("wss://{addr}/"), client_tls(&ca)).await.unwrap_err();
    assert!(started.elapsed() < WAIT, "failed at once, not by a timeout");
    assert!(matches!(e, Error::Tls(TlsError::NotTls)), "{e:?}");
    assert!(e.to_string().contains("does not speak TLS"), "{e}");
}

#[tokio::test]
async fn a_ca_certificate_used_as_the_servers_is_named() {
    // What `openssl req -x509` makes by default: a self-signed certificate with CA:TRUE.
    let ca = TestCa::new("wsx test CA");
    let leaf = ca.self_signed_ca_server(&["localhost"]);
    let (addr, _log) =
        tls_echo_server(ServerTls::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap()).await;
    let tls = ClientTls::new().only_added_roots().add_ca_pem(leaf.cert_pem.as_bytes()).unwrap();
    let e = connect(&format!("wss://localhost:{}/", addr.port()), tls).await.unwrap_err();
    assert_eq!(tls_error(e), TlsError::CaUsedAsEndEntity);
}

#[tokio::test]
async fn a_peer_that_drops_tcp_without_close_notify_is_an_abnormal_closure() {
    let ca = TestCa::new("wsx test CA");
    let leaf = ca.server(&["localhost"]);
    let acceptor = ServerTls::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap().acceptor().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = wsx::tls::accept(&acceptor, tcp).await.unwrap();
        let limits = wsx::HandshakeLimits::default();
        let (mut tls, request, _) = wsx::Incoming::read(tls, &limits).await.unwrap().into_parts();
        let key = request.headers()["sec-websocket-key"].as_bytes();
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            wsx::proto::handshake::accept_key(key)
        );
        tls.write_all(answer.as_bytes()).await.unwrap();
        tls.write_all(b"\x81\x09then gone").await.unwrap();
        tls.flush().await.unwrap();
        // Close TCP under the TLS session: no close frame, no close_notify.
        let (tcp, _) = tls.into_inner();
        drop(tcp);
    });
    let mut ws = connect(&format!("wss://localhost:{port}/"), client_tls(&ca)).await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("then gone"));
    let end = tokio::time::timeout(WAIT, ws.recv()).await.expect("the end in time");
    assert!(matches!(end, Some(Err(Error::AbnormalClosure))), "{end:?}");
}

#[tokio::test]
async fn a_silent_tls_server_is_bounded_by_the_handshake_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp); // accepts TCP, never answers the ClientHello
        }
    });
    let ca = TestCa::new("wsx test CA");
    let timeout = Duration::from_millis(300);
    let e = ClientBuilder::new(format!("wss://localhost:{}/", addr.port()))
        .tls(client_tls(&ca))
        .handshake_timeout(timeout)
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::HandshakeTimeout(t) if t == timeout), "{e:?}");
}

#[test]
fn pem_problems_are_named() {
    let ca = TestCa::new("wsx test CA");
    let leaf = ca.server(&["localhost"]);
    let other = ca.server(&["localhost"]);
    let e = ServerTls::from_pem(leaf.cert_pem.as_bytes(), other.key_pem.as_bytes()).unwrap_err();
    assert_eq!(e, TlsError::KeyMismatch);
    let e = ServerTls::from_pem(leaf.key_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap_err();
    assert!(matches!(e, TlsError::NoCertificate { .. }), "{e:?}");
    let e = ServerTls::from_pem(leaf.cert_pem.as_bytes(), leaf.cert_pem.as_bytes()).unwrap_err();
    assert!(matches!(e, TlsError::NoPrivateKey { .. }), "{e:?}");
    let e = ClientTls::new().client_auth_pem(leaf.cert_pem.as_bytes(), other.key_pem.as_bytes()).unwrap_err();
    assert_eq!(e, TlsError::KeyMismatch);

    let dir = std::env::temp_dir().join(format!("wsx-tls-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let e = ServerTls::from_pem_files(&empty, &empty).unwrap_err();
    assert_eq!(e.to_string(), format!("no certificate found in {}", empty.display()));
    let missing = dir.join("missing.pem");
    let e = ClientTls::new().add_ca_pem_file(&missing).unwrap_err();
    assert!(e.to_string().contains("missing.pem"), "{e}");
    assert!(e.is_local());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn only_added_roots_without_any_is_a_clear_error() {
    let e = ClientTls::new().only_added_roots().build().unwrap_err();
    assert!(matches!(e, TlsError::NoRootCertificates(_)), "{e:?}");
}

#[tokio::test]
async fn insecure_accepts_an_untrusted_certificate() {
    let ca = TestCa::new("wsx test CA");
    let leaf = ca.expired_server(&["elsewhere.example"]);
    let (addr, _log) =
        tls_echo_server(ServerTls::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap()).await;
    let tls = ClientTls::new().danger_accept_invalid_certs();
    assert!(tls.is_insecure());
    let mut ws = connect(&format!("wss://127.0.0.1:{}/", addr.port()), tls).await.unwrap();
    ws.send_text("anyone may read this").await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("anyone may read this"));
}

#[tokio::test]
async fn browser_interface_over_wss() {
    use wsx::browser::{BrowserConfig, BrowserWebSocket, Event};
    let ca = TestCa::new("wsx test CA");
    let leaf = ca.server(&["localhost"]);
    let (addr, _log) =
        tls_echo_server(ServerTls::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap()).await;
    let mut config = BrowserConfig::default();
    config.tls = Some(client_tls(&ca));
    let mut ws = BrowserWebSocket::with_config(&format!("https://localhost:{}/", addr.port()), &[], config).unwrap();
    let open = tokio::time::timeout(WAIT, ws.next_event()).await.expect("event in time");
    assert!(matches!(open, Some(Event::Open)), "{open:?}");
    ws.send("over wss").unwrap();
    match tokio::time::timeout(WAIT, ws.next_event()).await.expect("event in time") {
        Some(Event::Message(m)) => assert_eq!(m.data, wsx::browser::MessageData::Text("over wss".into())),
        other => panic!("expected the echo, got {other:?}"),
    }
}

#[tokio::test]
async fn accepting_tls_leaves_no_large_state_in_the_callers_future() {
    // A server task that awaits `tls::accept` and then serves the connection keeps the
    // future's largest state for the connection's whole life: the handshake's state (a rustls
    // connection mid-handshake, the plain-HTTP answer's buffers) must live in its own
    // allocation, or every idle connection pays for it.
    let ca = TestCa::new("wsx test CA");
    let leaf = ca.server(&["localhost"]);
    let acceptor = ServerTls::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap().acceptor().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let accepting = wsx::tls::accept(&acceptor, tcp);
    let size = std::mem::size_of_val(&accepting);
    assert!(size <= 128, "tls::accept's future is {size} bytes");
}
