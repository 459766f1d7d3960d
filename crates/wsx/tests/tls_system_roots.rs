//! `wsx::connect("wss://…")` with no TLS settings trusts the system's store. The store here is a
//! temporary one named by `SSL_CERT_FILE` (as OpenSSL and rustls-native-certs read it), holding
//! only a CA made for the test: its own process, since the store is read once per process.
#![cfg(feature = "native-roots")]

#[path = "common/certs.rs"]
mod certs;

use certs::TestCa;
use tokio::net::TcpListener;
use wsx::tls::ServerTls;
use wsx::{Message, TlsError};

#[tokio::test]
async fn plain_connect_trusts_the_system_store() {
    let ca = TestCa::new("wsx system-like CA");
    let dir = std::env::temp_dir().join(format!("wsx-system-roots-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bundle = dir.join("ca-bundle.pem");
    std::fs::write(&bundle, ca.pem()).unwrap();
    // Before anything reads the store; this test is alone in its process.
    std::env::set_var("SSL_CERT_FILE", &bundle);
    std::env::remove_var("SSL_CERT_DIR");

    let leaf = ca.server(&["localhost"]);
    let acceptor = ServerTls::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap().acceptor().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = wsx::tls::accept(&acceptor, tcp).await else { return };
                let Ok(mut ws) = wsx::accept(tls).await else { return };
                while let Some(Ok(msg)) = ws.recv().await {
                    if msg.is_data() && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });

    let (mut ws, response) = wsx::connect(&format!("wss://localhost:{port}/")).await.unwrap();
    assert_eq!(response.status(), 101);
    ws.send_text("trusted by the system").await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("trusted by the system"));

    // A certificate from a CA the store does not hold is still refused.
    let stranger = TestCa::new("not in the store").server(&["localhost"]);
    let acceptor =
        ServerTls::from_pem(stranger.cert_pem.as_bytes(), stranger.key_pem.as_bytes()).unwrap().acceptor().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        if let Ok((tcp, _)) = listener.accept().await {
            let _ = wsx::tls::accept(&acceptor, tcp).await;
        }
    });
    match wsx::connect(&format!("wss://localhost:{port}/")).await {
        Err(wsx::Error::Tls(TlsError::UnknownIssuer)) => {}
        other => panic!("expected an unknown issuer, got {:?}", other.map(|_| ())),
    }
    let _ = std::fs::remove_dir_all(&dir);
}
