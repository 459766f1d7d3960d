//! `wsx connect --http2` against an HTTP/2 server (hyper's, with the extended CONNECT protocol
//! enabled or not, over TLS offering ALPN h2 and http/1.1): `-v` and `--jsonl` say which
//! protocol carried the WebSocket, and a fallback to HTTP/1.1 is said. And end to end against
//! `wsx serve` over HTTP/2, whose log says how the WebSocket arrived.

#[path = "../../wsx/tests/common/certs.rs"]
mod certs;
mod common;

#[path = "../../wsx/tests/common/h2_echo.rs"]
mod h2_echo;

use h2_echo::{echo, h2_service};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

const WSX: &str = env!("CARGO_BIN_EXE_wsx");

/// A TLS echo server on 127.0.0.1 with a certificate for `localhost`, offering ALPN h2 and
/// http/1.1 (h2 with the extended CONNECT protocol when `connect_protocol`), on a thread of its
/// own: its port, the CA's PEM file, and a channel of the ALPN protocol of each connection.
fn server(connect_protocol: bool) -> (u16, tempfile_path::Path, mpsc::Receiver<String>) {
    let ca = certs::TestCa::new("wsx connect --http2 test CA");
    let leaf = ca.server(&["localhost"]);
    let tls = wsx::tls::ServerTls::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes())
        .expect("server TLS")
        .alpn_protocols(vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    let acceptor = tls.acceptor().expect("acceptor");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let Ok(tls) = wsx::tls::accept(&acceptor, tcp).await else { return };
                    let alpn = tls.get_ref().1.alpn_protocol().map(|a| String::from_utf8_lossy(a).into_owned());
                    let _ = tx.send(alpn.clone().unwrap_or_default());
                    if alpn.as_deref() == Some("h2") {
                        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                        if connect_protocol {
                            builder.enable_connect_protocol();
                        }
                        let _ = builder.serve_connection(TokioIo::new(tls), service_fn(h2_service)).await;
                    } else if let Ok(ws) = wsx::accept(tls).await {
                        echo(ws).await;
                    }
                });
            }
        });
    });
    let path = tempfile_path::Path::new("ca.pem", ca.pem().as_bytes());
    (port, path, rx)
}

/// A file in the temporary directory, removed on drop.
mod tempfile_path {
    pub struct Path(pub std::path::PathBuf);

    impl Path {
        pub fn new(name: &str, contents: &[u8]) -> Self {
            static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("wsx-connect-http2-{}-{n}-{name}", std::process::id()));
            std::fs::write(&path, contents).expect("write the temporary file");
            Self(path)
        }
    }

    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `wsx connect ARGS` with `stdin` as its input, within 30 s.
fn wsx(args: &[&str], stdin: &[u8]) -> Run {
    let mut child = Command::new(WSX)
        .arg("connect")
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wsx");
    child.stdin.take().expect("stdin").write_all(stdin).expect("write stdin");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = rx.recv_timeout(Duration::from_secs(30)).expect("wsx connect within 30 s").expect("wait");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn open_event(stdout: &str) -> Value {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["type"] == "open")
        .unwrap_or_else(|| panic!("no open event in {stdout}"))
}

#[test]
fn http2_carries_the_websocket_and_says_so() {
    let (port, ca, alpns) = server(true);
    let url = format!("wss://localhost:{port}/echo");
    let ca = ca.0.to_str().expect("path").to_owned();
    let run = wsx(&["--http2", "--no-proxy", "-v", "--cacert", &ca, &url], b"hello over h2\n");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "hello over h2\n");
    assert!(run.stderr.contains("HTTP/2.0 200 OK"), "{}", run.stderr);
    assert!(run.stderr.contains("connected over HTTP/2 (extended CONNECT, stream 1)"), "{}", run.stderr);
    assert_eq!(alpns.recv_timeout(Duration::from_secs(5)).expect("a connection"), "h2");
    assert!(alpns.try_recv().is_err(), "a second connection");

    let run = wsx(&["--http2", "--no-proxy", "--jsonl", "-v", "--cacert", &ca, &url], b"json\n");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let open = open_event(&run.stdout);
    assert_eq!(open["http"], "2", "{open}");
    assert_eq!(open["stream"], 1, "{open}");
    assert_eq!(open["status"], 200, "{open}");

    // Without --http2: HTTP/1.1, and the same fields say so.
    let run = wsx(&["--no-proxy", "--jsonl", "-v", "--cacert", &ca, &url], b"json\n");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let open = open_event(&run.stdout);
    assert_eq!(open["http"], "1.1", "{open}");
    assert_eq!(open["stream"], Value::Null, "{open}");
    assert!(run.stderr.contains("connected over HTTP/1.1"), "{}", run.stderr);
}

#[test]
fn http2_falls_back_to_http1_and_says_so() {
    let (port, ca, alpns) = server(false);
    let url = format!("wss://localhost:{port}/echo");
    let ca = ca.0.to_str().expect("path").to_owned();
    let run = wsx(&["--http2", "--no-proxy", "-v", "--jsonl", "--cacert", &ca, &url], b"after the fallback\n");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("connected over HTTP/1.1 (fallback:"), "{}", run.stderr);
    let open = open_event(&run.stdout);
    assert_eq!(open["http"], "1.1", "{open}");
    assert_eq!(open["status"], 101, "{open}");
    let first = alpns.recv_timeout(Duration::from_secs(5)).expect("a connection");
    let second = alpns.recv_timeout(Duration::from_secs(5)).expect("a second connection");
    assert_eq!((first.as_str(), second.as_str()), ("h2", "http/1.1"));

    // --http2-only: no fallback, exit status 1 with the reason.
    let run = wsx(&["--http2-only", "--no-proxy", "--cacert", &ca, &url], b"");
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("SETTINGS_ENABLE_CONNECT_PROTOCOL"), "{}", run.stderr);
}

/// `wsx connect --http2` against `wsx serve --tls-self-signed` (h2 on its TLS port): the
/// WebSocket is stream 1 for the client and `http="2"` for the server, and closes with 1000;
/// with `wsx serve --no-http2` the same command connects over HTTP/1.1 on the same connection.
#[test]
fn http2_against_wsx_serve() {
    let server = common::Server::start(&["--tls-self-signed"]);
    let url = format!("wss://{}/echo", server.addr);
    let run = wsx(&["--http2", "--no-proxy", "-k", "-v", &url], b"to wsx serve over h2\n");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "to wsx serve over h2\n");
    assert!(run.stderr.contains("connected over HTTP/2 (extended CONNECT, stream 1)"), "{}", run.stderr);
    server.expect_log(&["open", "path=\"/echo\"", "http=\"2\""]);
    server.expect_log(&["closed", "code=1000"]);

    let server = common::Server::start(&["--tls-self-signed", "--no-http2"]);
    let url = format!("wss://{}/echo", server.addr);
    let run = wsx(&["--http2", "--no-proxy", "-k", "-v", &url], b"over HTTP/1.1\n");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("connected over HTTP/1.1 (the server did not choose HTTP/2)"), "{}", run.stderr);
    server.expect_log(&["open", "path=\"/echo\"", "http=\"1.1\""]);
}
