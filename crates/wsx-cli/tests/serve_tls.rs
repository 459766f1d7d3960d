//! `wsx serve` over TLS and `wsx connect wss://`: the real binaries, certificates made for the
//! test, and each failure with its message.

#[path = "../../wsx/tests/common/certs.rs"]
mod certs;
mod common;
#[path = "../../wsx/tests/common/proxies.rs"]
mod proxies;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use certs::{Leaf, TestCa};
use common::{Server, WSX};
use sha2::{Digest, Sha256};
use wsx::tls::ClientTls;
use wsx::{ClientBuilder, Message};

/// A temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wsx-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_leaf(dir: &TempDir, leaf: &Leaf, name: &str) -> (PathBuf, PathBuf) {
    (dir.write(&format!("{name}.pem"), &leaf.cert_pem), dir.write(&format!("{name}-key.pem"), &leaf.key_pem))
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `wsx connect ARGS` with `stdin` piped in; at most 15 s.
fn wsx_connect(args: &[&str], stdin: &str) -> Output {
    wsx_connect_env(args, stdin, &[])
}

/// As [`wsx_connect`], with extra environment variables.
fn wsx_connect_env(args: &[&str], stdin: &str, env: &[(&str, &Path)]) -> Output {
    let mut child = Command::new(WSX)
        .arg("connect")
        .args(args)
        // A proxy in the environment of whoever runs the tests must not change them.
        .env("no_proxy", "*")
        .env("NO_PROXY", "*")
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < end, "wsx connect did not end within 15 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn https_and_wss_with_a_certificate_from_files() {
    let dir = TempDir::new("serve-tls");
    let ca = TestCa::new("wsx test CA");
    let ca_file = dir.write("ca.pem", &ca.pem());
    let (cert, key) = write_leaf(&dir, &ca.server(&["localhost", "127.0.0.1"]), "server");
    let server = Server::start(&["--tls-cert", path(&cert), "--tls-key", path(&key)]);
    server.expect_log(&["listening on https://"]);
    let port = server.addr.port();

    // The library client, trusting the test CA only.
    let tls = ClientTls::new().only_added_roots().add_ca_pem(ca.pem().as_bytes()).unwrap();
    let (mut ws, _) = ClientBuilder::new(format!("wss://localhost:{port}/echo")).tls(tls).connect().await.unwrap();
    ws.send_text("over wss").await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("over wss"));
    ws.close(wsx::CloseCode::NORMAL, "").await.unwrap();

    // wsx connect with --cacert.
    let out = wsx_connect(&["--cacert", path(&ca_file), &format!("wss://localhost:{port}/echo")], "hello\n");
    assert_eq!(text(&out.stdout), "hello\n", "stderr: {}", text(&out.stderr));
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Without it the system's store does not know the test CA.
    let out = wsx_connect(&[&format!("wss://localhost:{port}/echo")], "hello\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown issuer"), "{}", text(&out.stderr));
    server.expect_log(&["TLS handshake failed", "UnknownCA"]);

    // A system-like store that holds it (what a public CA is on a normal machine): no option
    // needed.
    let out = wsx_connect_env(&[&format!("wss://localhost:{port}/echo")], "store\n", &[("SSL_CERT_FILE", &ca_file)]);
    assert_eq!(text(&out.stdout), "store\n", "stderr: {}", text(&out.stderr));
    assert!(out.status.success());

    // Plain HTTP (and ws://) to the TLS port: a 400 that says what to do.
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("This port speaks TLS: use https:// or wss://"), "{answer}");
    let out = wsx_connect(&[&format!("ws://localhost:{port}/echo")], "hello\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("speaks TLS"), "{}", text(&out.stderr));
}

#[tokio::test]
async fn self_signed_certificate_is_printed_with_its_fingerprint() {
    let server = Server::start(&["--tls-self-signed"]);
    let line = server.expect_log(&["SHA-256 fingerprint:"]);
    let printed = line.split("fingerprint:").nth(1).unwrap().trim().to_owned();
    server.expect_log(&["SPKI pin:"]);
    let port = server.addr.port();

    let tls = ClientTls::new().danger_accept_invalid_certs();
    let (mut ws, _) = ClientBuilder::new(format!("wss://127.0.0.1:{port}/echo")).tls(tls).connect().await.unwrap();
    let session = ws.get_ref().tls_session().unwrap();
    let served = session.peer_certificates().unwrap()[0].as_ref().to_vec();
    let fingerprint = Sha256::digest(&served).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
    assert_eq!(printed, fingerprint, "the printed fingerprint is the served certificate's");
    ws.send_text("dev").await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("dev"));

    // wsx connect refuses it, and accepts it with -k after a warning.
    let url = format!("wss://localhost:{port}/echo");
    let out = wsx_connect(&[&url], "x\n");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let out = wsx_connect(&["-k", &url], "x\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "x\n");
    assert!(text(&out.stderr).contains("warning: --insecure"), "{}", text(&out.stderr));
}

#[test]
fn unusable_certificate_files_are_named() {
    let dir = TempDir::new("serve-tls-files");
    let ca = TestCa::new("wsx test CA");
    let (cert, _) = write_leaf(&dir, &ca.server(&["localhost"]), "a");
    let (_, other_key) = write_leaf(&dir, &ca.server(&["localhost"]), "b");
    let empty = dir.write("empty.pem", "");
    let serve = |cert: &Path, key: &Path| {
        Command::new(WSX)
            .args(["serve", "--addr", "127.0.0.1:0", "--tls-cert", path(cert), "--tls-key", path(key)])
            .output()
            .unwrap()
    };
    let out = serve(&cert, &other_key);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("the private key does not match the certificate"), "{}", text(&out.stderr));
    let out = serve(&empty, &other_key);
    assert!(
        text(&out.stderr).contains(&format!("no certificate found in {}", empty.display())),
        "{}",
        text(&out.stderr)
    );
    let out = serve(&cert, &empty);
    assert!(text(&out.stderr).contains("no private key found in"), "{}", text(&out.stderr));
    let out = Command::new(WSX).args(["serve", "--tls-cert", path(&cert)]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "clap refuses --tls-cert without --tls-key");
}

#[test]
fn client_certificates_with_tls_client_ca() {
    let dir = TempDir::new("serve-mtls");
    let ca = TestCa::new("wsx test CA");
    let ca_file = dir.write("ca.pem", &ca.pem());
    let (cert, key) = write_leaf(&dir, &ca.server(&["localhost"]), "server");
    let (client_cert, client_key) = write_leaf(&dir, &ca.client("alice"), "alice");
    let server =
        Server::start(&["--tls-cert", path(&cert), "--tls-key", path(&key), "--tls-client-ca", path(&ca_file)]);
    let url = format!("wss://localhost:{}/echo", server.addr.port());

    let out = wsx_connect(&["--cacert", path(&ca_file), &url], "hi\n");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("requires a client certificate"), "{}", text(&out.stderr));
    server.expect_log(&["TLS handshake failed", "presented no certificate"]);

    let out = wsx_connect(
        &["--cacert", path(&ca_file), "--cert", path(&client_cert), "--key", path(&client_key), &url],
        "hi\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hi\n");
}

#[test]
fn a_silent_client_on_the_tls_port_is_dropped_after_the_handshake_timeout() {
    let server = Server::start(&["--tls-self-signed"]);
    let addr: SocketAddr = server.addr;
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    // Nothing sent: the server gives up after its handshake timeout (10 s) and closes.
    let n = tcp.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() < Duration::from_secs(15), "closed after {:?}", started.elapsed());
    server.expect_log(&["TLS handshake not done within"]);
}

#[test]
fn wsx_connect_wss_through_http_and_socks5_proxies() {
    let dir = TempDir::new("serve-tls-proxies");
    let ca = TestCa::new("wsx test CA");
    let ca_file = dir.write("ca.pem", &ca.pem());
    let (cert, key) = write_leaf(&dir, &ca.server(&["localhost"]), "server");
    let server = Server::start(&["--tls-cert", path(&cert), "--tls-key", path(&key)]);
    server.expect_log(&["listening on https://"]);
    let port = server.addr.port();
    let target = format!("wss://localhost:{port}/echo");
    let http = proxies::ProxyServer::tinyproxy(&[port], Some(("alice", "s3-cr.et")));
    let socks = proxies::ProxyServer::microsocks(Some(("bob", "se:cr@t")));

    // TLS end to end through each tunnel: the certificate is checked for localhost, the
    // target's name, not the proxy's address.
    for via in [http.url("http", Some("alice:s3-cr.et")), socks.url("socks5h", Some("bob:se%3Acr%40t"))] {
        let out = wsx_connect(&["--proxy", &via, "--cacert", path(&ca_file), &target], "hello\n");
        assert_eq!(text(&out.stdout), "hello\n", "{via}: {}", text(&out.stderr));
        assert!(out.status.success(), "{via}: {}", text(&out.stderr));
    }
    assert_eq!(http.log().matches("): CONNECT ").count(), 1, "tinyproxy's log:\n{}", http.log());

    // The SOCKS5 proxy was in the way: a wrong password fails, naming it without the password.
    let via = socks.url("socks5h", Some("bob:hunter2"));
    let out = wsx_connect(&["--proxy", &via, "--cacert", path(&ca_file), &target], "");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("proxy socks5h://bob@127.0.0.1:{}: SOCKS5 authentication", socks.port)),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[tokio::test]
async fn over_tls_the_servers_own_origin_is_https() {
    let dir = TempDir::new("serve-tls-origin");
    let ca = TestCa::new("wsx test CA");
    let (cert, key) = write_leaf(&dir, &ca.server(&["localhost"]), "server");
    let server = Server::start(&["--tls-cert", path(&cert), "--tls-key", path(&key)]);
    let port = server.addr.port();
    let connect = |origin: String| {
        let tls = ClientTls::new().only_added_roots().add_ca_pem(ca.pem().as_bytes()).unwrap();
        ClientBuilder::new(format!("wss://localhost:{port}/echo")).tls(tls).origin(origin).connect()
    };
    connect(format!("https://localhost:{port}")).await.expect("a page served by this server may connect");
    match connect(format!("http://localhost:{port}")).await {
        Err(wsx::Error::Handshake(wsx::HandshakeError::UnexpectedStatus { status, .. })) => assert_eq!(status, 403),
        other => panic!("an http:// page is another origin for a TLS server: {:?}", other.map(|_| ())),
    }
}
