//! `wsx connect` end to end: the real binary against small in-process servers on loopback.
//!
//! Each test starts a server on 127.0.0.1:0 (its own thread and runtime) whose handler does
//! one scripted thing per connection, runs `wsx connect` with some stdin, and checks stdout,
//! stderr and the exit status. The interactive mode is driven through tmux, which must be
//! installed (those tests fail, saying so, without it).

use std::future::Future;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use wsx::{Accept, CloseCode, Message, Rejection, ServerConfig};

mod common;
#[path = "../../wsx/tests/common/proxies.rs"]
mod proxies;

use proxies::ProxyServer;

const WSX: &str = env!("CARGO_BIN_EXE_wsx");

/// The variables wsx reads a proxy from: removed for every run, so that a proxy in the
/// environment of whoever runs the tests does not change them.
const PROXY_VARIABLES: &[&str] = &[
    "ws_proxy",
    "WS_PROXY",
    "wss_proxy",
    "WSS_PROXY",
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// Starts a server whose `handler` runs for every accepted TCP connection.
fn server<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                tokio::spawn(handler(tcp));
            }
        });
    });
    addr
}

/// An echo server (permessage-deflate on, like `wsx serve`).
fn echo_server() -> SocketAddr {
    server(|tcp| async move {
        let mut config = ServerConfig::default();
        config.websocket.deflate = Some(wsx::proto::deflate::DeflateConfig::default());
        let Ok(mut ws) = wsx::accept_with(tcp, &config, |_, _| Ok(Accept::default())).await else { return };
        while let Some(Ok(msg)) = ws.recv().await {
            if msg.is_data() && ws.send(msg).await.is_err() {
                break;
            }
        }
    })
}

fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/")
}

struct Run {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// How stdin behaves.
enum Stdin<'a> {
    /// These bytes, then end of input.
    Bytes(&'a [u8]),
    /// These bytes, then stays open for this long before it ends.
    Open(&'a [u8], Duration),
}

/// Runs `wsx connect ARGS` (no terminal anywhere), killing it after 20 s.
fn wsx(args: &[&str], stdin: Stdin<'_>, env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(WSX);
    cmd.arg("connect").args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.env_remove("WSX_FORCE_TTY").env("WSX_HISTORY", "").env("NO_COLOR", "1");
    for name in PROXY_VARIABLES {
        cmd.env_remove(name);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run wsx");
    let mut input = child.stdin.take().unwrap();
    let (bytes, hold) = match stdin {
        Stdin::Bytes(b) => (b.to_vec(), Duration::ZERO),
        Stdin::Open(b, d) => (b.to_vec(), d),
    };
    let (exited, wait_exit) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let _ = input.write_all(&bytes);
        let _ = input.flush();
        // Keeps stdin open for `hold`, or until wsx exits.
        let _ = wait_exit.recv_timeout(hold);
        drop(input);
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let what = format!("wsx connect {args:?}");
    let status = common::wait_child(&mut child, Duration::from_secs(20), &what, Duration::from_millis(10), || {});
    drop(exited);
    let stdout = out_reader.join().unwrap();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned();
    Run { code: status.code(), stdout, stderr }
}

#[test]
fn pipe_mode_sends_each_line_as_a_text_message() {
    let (tx, rx) = mpsc::channel();
    let addr = server(move |tcp| {
        let tx = tx.clone();
        async move {
            let mut ws = wsx::accept(tcp).await.unwrap();
            while let Some(Ok(msg)) = ws.recv().await {
                if msg.is_data() {
                    tx.send(msg.clone()).unwrap();
                    ws.send(msg).await.unwrap();
                }
            }
        }
    });
    let run = wsx(&[&url(addr)], Stdin::Bytes("hello\nwörld\r\n\nlast".as_bytes()), &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.out(), "hello\nwörld\n\nlast\n");
    assert!(run.stderr.contains("closed: 1000 normal"), "{}", run.stderr);
    let got: Vec<Message> = rx.try_iter().collect();
    assert_eq!(got, ["hello", "wörld", "", "last"].map(Message::text).to_vec());
}

#[test]
fn lines_that_are_not_utf8_are_skipped_with_a_warning() {
    let addr = echo_server();
    let run = wsx(&[&url(addr)], Stdin::Bytes(b"ok\n\xff\xfe\nafter\n"), &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.out(), "ok\nafter\n");
    assert!(run.stderr.contains("stdin line 2 is not valid UTF-8"), "{}", run.stderr);
}

#[test]
fn binary_mode_round_trips_bytes_in_chunks_of_at_most_64k() {
    let (tx, rx) = mpsc::channel();
    let addr = server(move |tcp| {
        let tx = tx.clone();
        async move {
            let mut ws = wsx::accept(tcp).await.unwrap();
            while let Some(Ok(msg)) = ws.recv().await {
                if msg.is_data() {
                    tx.send((matches!(msg, Message::Binary(_)), msg.payload().len())).unwrap();
                    ws.send(msg).await.unwrap();
                }
            }
        }
    });
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let run = wsx(&["--binary", &url(addr)], Stdin::Bytes(&data), &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout == data, "stdout differs from stdin ({} bytes vs {})", run.stdout.len(), data.len());
    let messages: Vec<(bool, usize)> = rx.try_iter().collect();
    assert!(messages.iter().all(|&(binary, len)| binary && len > 0 && len <= 64 * 1024), "{messages:?}");
    assert_eq!(messages.iter().map(|m| m.1).sum::<usize>(), data.len());
}

/// Pipe mode with more than the socket buffers hold: 16 MiB of stdin to a server that reads
/// slowly and pings every 2 ms (so the connection's reader writes pongs while its writer is
/// blocked: the shape that used to hang a split connection). Everything comes back, in order.
#[test]
fn binary_pipe_of_megabytes_to_a_slow_pinging_server() {
    let addr = server(|tcp| async move {
        let mut ws = wsx::accept(tcp).await.unwrap();
        let mut ping = tokio::time::interval(Duration::from_millis(2));
        loop {
            tokio::select! {
                msg = ws.recv() => match msg {
                    Some(Ok(msg)) if msg.is_data() => {
                        tokio::time::sleep(Duration::from_millis(1)).await; // a slow reader
                        if ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                },
                _ = ping.tick() => {
                    if ws.state() == wsx::State::Open && ws.send(Message::Ping(wsx::Bytes::from_static(b"p"))).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    let data: Vec<u8> = (0..16u32 << 20).map(|i| (i * 13 + i / 4093) as u8).collect();
    let run = wsx(&["--binary", &url(addr)], Stdin::Bytes(&data), &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout == data, "stdout differs from stdin ({} bytes vs {})", run.stdout.len(), data.len());
}

#[test]
fn server_close_with_another_code_exits_2_and_prints_code_and_reason() {
    let addr = server(|tcp| async move {
        let mut ws = wsx::accept(tcp).await.unwrap();
        let _ = ws.recv().await;
        let _ = ws.close(CloseCode(4000), "session expired").await;
    });
    // stdin stays open: the server's close alone ends the session.
    let run = wsx(&[&url(addr)], Stdin::Open(b"hi\n", Duration::from_secs(30)), &[]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("closed: 4000 \"session expired\""), "{}", run.stderr);
}

#[test]
fn server_close_with_1000_exits_0_while_stdin_is_open() {
    let addr = server(|tcp| async move {
        let mut ws = wsx::accept(tcp).await.unwrap();
        ws.send_text("welcome").await.unwrap();
        let _ = ws.close(CloseCode::NORMAL, "").await;
    });
    let started = Instant::now();
    let run = wsx(&[&url(addr)], Stdin::Open(b"", Duration::from_secs(30)), &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.out(), "welcome\n");
    assert!(run.stderr.contains("closed: 1000 normal"), "{}", run.stderr);
    assert!(started.elapsed() < Duration::from_secs(10), "waited for stdin");
}

#[test]
fn connection_refused_exits_1() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let run = wsx(&[&format!("ws://127.0.0.1:{port}/")], Stdin::Bytes(b""), &[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("cannot connect"), "{}", run.stderr);
}

#[test]
fn refused_handshake_exits_1_with_the_status() {
    let addr = server(|tcp| async move {
        let config = ServerConfig::default();
        let _ = wsx::accept_with(tcp, &config, |_, _| {
            Err(Rejection::new(http::StatusCode::FORBIDDEN, "origin not allowed\x1b[2J"))
        })
        .await;
    });
    let run = wsx(&[&url(addr)], Stdin::Bytes(b""), &[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("403"), "{}", run.stderr);
    assert!(!run.stderr.contains('\x1b'), "raw escape in {:?}", run.stderr);
}

/// How many tunnels tinyproxy has opened so far, from its log.
fn tunnels(proxy: &ProxyServer) -> usize {
    proxy.log().matches("): CONNECT ").count()
}

#[test]
fn proxy_option_environment_and_no_proxy() {
    let addr = echo_server();
    let proxy = ProxyServer::tinyproxy(&[addr.port()], Some(("alice", "s3-cr.et")));

    // --proxy with the credentials: the echo comes back through the tunnel.
    let run = wsx(&["--proxy", &proxy.url("http", Some("alice:s3-cr.et")), &url(addr)], Stdin::Bytes(b"hello\n"), &[]);
    assert_eq!(run.code, Some(0), "{}\ntinyproxy's log:\n{}", run.stderr, proxy.log());
    assert_eq!(run.out(), "hello\n");
    assert_eq!(tunnels(&proxy), 1, "{}", proxy.log());

    // The same proxy from the environment, without credentials: refused, and said so.
    let from_env = [("ws_proxy", proxy.url("http", None))];
    let env: Vec<(&str, &str)> = from_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = wsx(&[&url(addr)], Stdin::Bytes(b"hello\n"), &env);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let expected = format!("proxy http://127.0.0.1:{} (from ws_proxy): answered HTTP/1.0 407", proxy.port);
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    assert!(run.out().is_empty());

    // --no-proxy ignores the environment: directly to the server.
    let run = wsx(&["--no-proxy", &url(addr)], Stdin::Bytes(b"hello\n"), &env);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.out(), "hello\n");
    assert_eq!(tunnels(&proxy), 2, "only the refused attempt reached the proxy:\n{}", proxy.log());

    // A wrong password is refused, and never printed.
    let run = wsx(&["-x", &proxy.url("http", Some("alice:hunter2")), &url(addr)], Stdin::Bytes(b""), &[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains(&format!("proxy http://alice@127.0.0.1:{}: answered", proxy.port)), "{}", run.stderr);
    assert!(!run.stderr.contains("hunter2"), "{}", run.stderr);

    // Both options at once is a usage error.
    let run = wsx(&["--no-proxy", "--proxy", "http://127.0.0.1:1", &url(addr)], Stdin::Bytes(b""), &[]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
}

#[test]
fn socks5_proxy_option() {
    let addr = echo_server();
    let proxy = ProxyServer::microsocks(Some(("bob", "se:cr@t")));
    let via = proxy.url("socks5h", Some("bob:se%3Acr%40t"));
    let run = wsx(&["--proxy", &via, &url(addr)], Stdin::Bytes(b"one\ntwo\n"), &[]);
    assert_eq!(run.code, Some(0), "{}\nmicrosocks's log:\n{}", run.stderr, proxy.log());
    assert_eq!(run.out(), "one\ntwo\n");
    // The proxy really was in the way: a refused login fails the connection.
    let run = wsx(&["--proxy", &proxy.url("socks5h", Some("bob:wrong")), &url(addr)], Stdin::Bytes(b""), &[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("SOCKS5 authentication"), "{}", run.stderr);
}

#[test]
fn invalid_options_exit_1() {
    let addr = echo_server();
    let run = wsx(&["-H", "no colon here", &url(addr)], Stdin::Bytes(b""), &[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("not `Name: value`"), "{}", run.stderr);
    let run = wsx(&["wss://127.0.0.1:1/"], Stdin::Bytes(b""), &[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
}

#[test]
fn dropped_connection_exits_2_as_abnormal_closure() {
    let addr = server(|tcp| async move {
        let mut ws = wsx::accept(tcp).await.unwrap();
        let _ = ws.recv().await;
        drop(ws); // TCP closes without a close frame
    });
    let run = wsx(&[&url(addr)], Stdin::Open(b"hi\n", Duration::from_secs(30)), &[]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("closed: 1006"), "{}", run.stderr);
}

#[test]
fn unanswered_close_exits_2_after_the_close_timeout() {
    let addr = server(|tcp| async move {
        let ws = wsx::accept(tcp).await.unwrap();
        // Never reads again: our close frame goes unanswered.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(ws);
    });
    let started = Instant::now();
    let run = wsx(&[&url(addr)], Stdin::Bytes(b""), &[]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("did not answer our close"), "{}", run.stderr);
    assert!(started.elapsed() < Duration::from_secs(9));
}

const HOSTILE: &str = "title\x1b]0;pwned\x07 clear\x1b[2J\rover\u{9b}31m";

fn hostile_server() -> SocketAddr {
    server(|tcp| async move {
        let mut ws = wsx::accept(tcp).await.unwrap();
        ws.send_text(HOSTILE).await.unwrap();
        ws.send_binary(&b"\x1b[5m!"[..]).await.unwrap();
        let _ = ws.close(CloseCode(4001), "bye\x1b[0m").await;
    })
}

#[test]
fn control_characters_are_escaped_on_a_terminal() {
    let addr = hostile_server();
    let run = wsx(&[&url(addr)], Stdin::Open(b"", Duration::from_secs(30)), &[("WSX_FORCE_TTY", "1")]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    let out = run.out();
    assert!(!out.contains('\x1b') && !out.contains('\r') && !out.contains('\u{9b}'), "raw control in {out:?}");
    assert!(out.contains("title\\x1b]0;pwned\\x07 clear\\x1b[2J\\rover\\u{9b}31m\n"), "{out:?}");
    assert!(out.contains("binary, 5 bytes: 1b 5b 35 6d 21  |.[5m!|\n"), "{out:?}");
    // Close reasons are escaped wherever they go.
    assert!(run.stderr.contains("closed: 4001 \"bye\\x1b[0m\""), "{}", run.stderr);
}

#[test]
fn output_to_a_pipe_is_unchanged() {
    let addr = hostile_server();
    let run = wsx(&[&url(addr)], Stdin::Open(b"", Duration::from_secs(30)), &[]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert_eq!(run.stdout, [HOSTILE.as_bytes(), b"\n", b"\x1b[5m!"].concat());
}

#[test]
fn headers_subprotocols_and_origin_reach_the_server() {
    let (tx, rx) = mpsc::channel();
    let addr = server(move |tcp| {
        let tx = tx.clone();
        async move {
            let mut config = ServerConfig::default();
            config.websocket.deflate = Some(wsx::proto::deflate::DeflateConfig::default());
            let mut ws = wsx::accept_with(tcp, &config, |req, upgrade| {
                let header = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
                tx.send((
                    header("x-token"),
                    header("authorization"),
                    upgrade.origin.clone(),
                    upgrade.protocols.clone(),
                    upgrade.extensions.join(","),
                ))
                .unwrap();
                let protocol = upgrade.protocols.iter().find(|p| *p == "v2.chat").cloned();
                Ok(Accept { protocol, ..Accept::default() })
            })
            .await
            .unwrap();
            let _ = ws.close(CloseCode::NORMAL, "").await;
        }
    });
    let run = wsx(
        &[
            "-v",
            "-H",
            "X-Token: abc:123",
            "-H",
            "Authorization:Bearer t0k",
            "--subprotocol",
            "v1.chat",
            "--subprotocol",
            "v2.chat",
            "--origin",
            "https://example.test",
            &url(addr),
        ],
        Stdin::Open(b"", Duration::from_secs(30)),
        &[],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let (token, auth, origin, protocols, extensions) = rx.recv().unwrap();
    assert_eq!(token.as_deref(), Some("abc:123"));
    assert_eq!(auth.as_deref(), Some("Bearer t0k"));
    assert_eq!(origin.as_deref(), Some("https://example.test"));
    assert_eq!(protocols, ["v1.chat", "v2.chat"]);
    assert!(extensions.starts_with("permessage-deflate"), "deflate offered by default: {extensions:?}");
    assert!(run.stderr.contains("HTTP/1.1 101 Switching Protocols"), "{}", run.stderr);
    assert!(run.stderr.contains("connected to ws://") && run.stderr.contains("subprotocol v2.chat"), "{}", run.stderr);

    let run = wsx(&["--no-deflate", &url(addr)], Stdin::Open(b"", Duration::from_secs(30)), &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let (.., extensions) = rx.recv().unwrap();
    assert_eq!(extensions, "");
}

#[test]
fn json_messages_are_pretty_printed() {
    let addr = server(|tcp| async move {
        let mut ws = wsx::accept(tcp).await.unwrap();
        ws.send_text(r#"{"id":7,"tags":["a","b"],"big":12345678901234567890,"empty":{}}"#).await.unwrap();
        ws.send_text("not json {").await.unwrap();
        let _ = ws.close(CloseCode::NORMAL, "").await;
    });
    let run = wsx(&["--json", &url(addr)], Stdin::Open(b"", Duration::from_secs(30)), &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let expected = "{\n  \"id\": 7,\n  \"tags\": [\n    \"a\",\n    \"b\"\n  ],\n  \"big\": 12345678901234567890,\n  \
                    \"empty\": {}\n}\nnot json {\n";
    assert_eq!(run.out(), expected);
}

fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b.iter().enumerate().all(|(i, c)| match i {
            2 | 5 => *c == b':',
            8 => *c == b'.',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn timestamps_prefix_messages_and_events() {
    let addr = echo_server();
    let run = wsx(&["-t", &url(addr)], Stdin::Bytes(b"one\ntwo\n"), &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let out = run.out();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    for (line, text) in lines.iter().zip(["one", "two"]) {
        let (ts, rest) = line.split_once(' ').unwrap();
        assert!(is_timestamp(ts) && rest == text, "{line:?}");
    }
    let closed = run.stderr.lines().find(|l| l.contains("closed:")).unwrap();
    assert!(is_timestamp(&closed[..12]), "{closed:?}");
}

#[test]
fn keepalive_pings_are_sent_and_shown() {
    let addr = echo_server();
    let run = wsx(
        &["--ping-interval", "100ms", "--show-ping", &url(addr)],
        Stdin::Open(b"", Duration::from_millis(700)),
        &[],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("> ping 1\n"), "{}", run.stderr);
    assert!(run.stderr.contains("< pong 1 ("), "{}", run.stderr);
    assert!(run.stderr.contains("> ping 3\n"), "{}", run.stderr);
}

#[test]
fn pings_from_the_server_are_answered_and_shown() {
    let addr = server(|tcp| async move {
        let mut ws = wsx::accept(tcp).await.unwrap();
        ws.send(Message::Ping("are you there?".into())).await.unwrap();
        while let Some(Ok(msg)) = ws.recv().await {
            if let Message::Pong(p) = msg {
                ws.send_text(format!("pong: {}", String::from_utf8_lossy(&p))).await.unwrap();
                let _ = ws.close(CloseCode::NORMAL, "").await;
                break;
            }
        }
    });
    let run = wsx(&["--show-ping", &url(addr)], Stdin::Open(b"", Duration::from_secs(30)), &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.out(), "pong: are you there?\n");
    assert!(run.stderr.contains("< ping are you there?"), "{}", run.stderr);
}

#[test]
fn unanswered_pings_fail_the_connection() {
    let addr = server(|tcp| async move {
        let ws = wsx::accept(tcp).await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await; // reads nothing, answers nothing
        drop(ws);
    });
    let run = wsx(
        &["--ping-interval", "100ms", "--ping-timeout", "300ms", &url(addr)],
        Stdin::Open(b"", Duration::from_secs(30)),
        &[],
    );
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("closed: 1006 abnormal closure: no answer to a ping within 0.3 s"), "{}", run.stderr);
}

/// A TCP server that completes the opening handshake by hand, then never sends another byte
/// (what reaches it is read and ignored): a dead peer behind a live TCP connection.
fn dead_after_handshake_server() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    server(|mut tcp| async move {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let key = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key")))
            .map(|(_, v)| v.trim().to_owned())
            .expect("a Sec-WebSocket-Key");
        let accept = wsx::proto::handshake::accept_key(key.as_bytes());
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        tcp.write_all(response.as_bytes()).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            if n == 0 {
                return;
            }
        }
    })
}

#[test]
fn ping_interval_detects_a_dead_peer() {
    let addr = dead_after_handshake_server();
    let (interval, timeout) = (Duration::from_millis(200), Duration::from_millis(500));
    let started = Instant::now();
    let run = wsx(
        &["--ping-interval", "200ms", "--ping-timeout", "500ms", "--show-ping", &url(addr)],
        Stdin::Open(b"", Duration::from_secs(30)),
        &[],
    );
    let took = started.elapsed();
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("> ping 1\n"), "{}", run.stderr);
    assert!(run.stderr.contains("closed: 1006 abnormal closure: no answer to a ping within 0.5 s"), "{}", run.stderr);
    assert!(took >= interval + timeout, "gave up after {took:?}, before the ping could time out");
    assert!(took < interval + timeout + Duration::from_secs(3), "took {took:?}");
}

#[test]
fn no_close_keeps_listening_after_stdin_ends() {
    let addr = server(|tcp| async move {
        let mut ws = wsx::accept(tcp).await.unwrap();
        let Some(Ok(Message::Text(_))) = ws.recv().await else { return };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = ws.send_text("update").await;
        let _ = ws.close(CloseCode::NORMAL, "done").await;
    });
    let run = wsx(&["-n", &url(addr)], Stdin::Bytes(b"subscribe\n"), &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.out(), "update\n");
    assert!(run.stderr.contains("closed: 1000 normal \"done\""), "{}", run.stderr);
}

#[test]
fn oversized_messages_fail_with_1009() {
    let addr = server(|tcp| async move {
        let mut ws = wsx::accept(tcp).await.unwrap();
        let _ = ws.send_text("x".repeat(2000)).await;
        while let Some(Ok(_)) = ws.recv().await {}
    });
    let run = wsx(&["--max-message-size", "1k", &url(addr)], Stdin::Open(b"", Duration::from_secs(30)), &[]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("closed: 1009 message too big (sent by wsx)"), "{}", run.stderr);
}

#[test]
fn help_shows_examples_modes_and_exit_status() {
    let out = Command::new(WSX).args(["connect", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "Examples:",
        "printf 'hello\\nworld\\n' | wsx connect",
        "Exit status:",
        "Interactive mode",
        "\\x1b",
        "--proxy <URL>",
        "--no-proxy",
        "socks5h://",
        "wss_proxy, WSS_PROXY, https_proxy, HTTPS_PROXY",
    ] {
        assert!(help.contains(needle), "{needle:?} missing from --help");
    }
    let out = Command::new(WSX).args(["connect", "-h"]).output().unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().contains("Examples:"));
}

// ------------------------------------------------------------------ interactive mode via tmux

struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `command` in a detached tmux session. Panics, saying what to install, when tmux
    /// is missing: a test that passes without running would hide a broken interactive mode
    /// (`scripts/test` installs tmux).
    fn start(command: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let socket = format!("wsx-test-{}-{n}", std::process::id());
        let status = Command::new("tmux")
            .args(["-L", &socket, "-f", "/dev/null", "new-session", "-d", "-x", "120", "-y", "40", command])
            .env_remove("TMUX")
            .status();
        match status {
            Ok(s) if s.success() => Self { socket },
            Ok(s) => panic!("tmux new-session failed ({s}): the interactive tests need a working tmux"),
            Err(e) => panic!(
                "cannot run tmux ({e}): the interactive tests of wsx connect need it \
                 (apt-get install tmux; scripts/test installs it)"
            ),
        }
    }

    fn keys(&self, keys: &[&str]) {
        let status = Command::new("tmux").args(["-L", &self.socket, "send-keys"]).args(keys).status().unwrap();
        assert!(status.success());
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux").args(["-L", &self.socket, "capture-pane", "-p"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen contains `needle`.
    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let screen = self.screen();
            if screen.contains(needle) {
                return screen;
            }
            assert!(Instant::now() < deadline, "{needle:?} never appeared on the screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).status();
    }
}

fn interactive_command(addr: SocketAddr, history: &std::path::Path, after: &str) -> String {
    format!(
        "env NO_COLOR=1 WSX_HISTORY={} {WSX} connect {}; echo \"rc=$?\"; {after}; sleep 30",
        history.display(),
        url(addr)
    )
}

#[test]
fn interactive_session_in_a_terminal() {
    let addr = echo_server();
    let dir = std::env::temp_dir().join(format!("wsx-connect-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let history = dir.join("history");
    let _ = std::fs::remove_file(&history);
    let tmux = Tmux::start(&interactive_command(addr, &history, "true"));
    tmux.wait_for("/help lists the commands");
    tmux.keys(&["hello there", "Enter"]);
    tmux.wait_for("< hello there");
    tmux.keys(&["/ping abc", "Enter"]);
    tmux.wait_for("< pong abc (");
    tmux.keys(&["/binary 00 68 69", "Enter"]);
    tmux.wait_for("< binary, 3 bytes: 00 68 69  |.hi|");
    tmux.keys(&["//slash", "Enter"]);
    tmux.wait_for("< /slash");
    tmux.keys(&["/nope", "Enter"]);
    tmux.wait_for("unknown command /nope");
    // History: Up brings back the last line.
    tmux.keys(&["Up"]);
    tmux.wait_for("> /nope");
    tmux.keys(&["C-u", "/cl"]);
    tmux.wait_for("/close [code [reason]]"); // the hint
    tmux.keys(&["Tab"]);
    tmux.keys(&["4001 see you", "Enter"]);
    let screen = tmux.wait_for("rc=");
    assert!(screen.contains("closed: 4001"), "{screen}");
    assert!(screen.contains("rc=0"), "{screen}");
    let saved = std::fs::read_to_string(&history).unwrap();
    assert!(saved.contains("hello there") && saved.contains("/close 4001 see you"), "{saved}");
}

#[test]
fn interactive_session_ends_cleanly_when_the_server_closes_mid_line() {
    let addr = server(|tcp| async move {
        let mut ws = wsx::accept(tcp).await.unwrap();
        let _ = ws.recv().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = ws.close(CloseCode(4002), "kicked").await;
    });
    let dir = std::env::temp_dir().join(format!("wsx-connect-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let history = dir.join("history-2");
    let check = "stty -a | tr ' ' '\\n' | grep -x -e icanon -e -icanon -e echo -e -echo | tr '\\n' ' '";
    let tmux = Tmux::start(&interactive_command(addr, &history, check));
    tmux.wait_for("/help lists the commands");
    tmux.keys(&["go", "Enter"]);
    tmux.keys(&["half typed"]);
    let screen = tmux.wait_for("rc=");
    assert!(screen.contains("closed: 4002 \"kicked\""), "{screen}");
    assert!(screen.contains("rc=2"), "{screen}");
    // The terminal is back in canonical mode with echo, and the half-typed line is gone.
    let screen = tmux.wait_for("icanon echo");
    assert!(!screen.contains("half typed"), "{screen}");
}

#[test]
fn connect_timeout_bounds_a_server_that_never_answers_the_handshake() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts TCP and holds it, never answering the upgrade.
    let _held = std::thread::spawn(move || {
        listener.accept().map(|(tcp, _)| {
            std::thread::sleep(Duration::from_secs(8));
            drop(tcp);
        })
    });
    let started = Instant::now();
    let run = wsx(&["--connect-timeout", "1", &url(addr)], Stdin::Bytes(b""), &[]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("timed out after 1s"), "{}", run.stderr);
    assert!(started.elapsed() < Duration::from_secs(5), "--connect-timeout 1 took {:?}", started.elapsed());
}

#[test]
fn interactive_session_survives_a_reconnect() {
    // The first connection is closed with 1012 (service restart); the next ones echo.
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let addr = server(move |tcp| {
        let n = connections.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            let Ok(mut ws) = wsx::accept(tcp).await else { return };
            if n == 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = ws.close(CloseCode(1012), "").await;
                while ws.recv().await.is_some() {}
                return;
            }
            while let Some(Ok(msg)) = ws.recv().await {
                if msg.is_data() && ws.send(msg).await.is_err() {
                    break;
                }
            }
        }
    });
    let command = format!(
        "env NO_COLOR=1 WSX_HISTORY= {WSX} connect --reconnect --reconnect-delay 0.1 {}; echo \"rc=$?\"; sleep 30",
        url(addr)
    );
    let tmux = Tmux::start(&command);
    tmux.wait_for("/help lists the commands");
    tmux.wait_for("(attempt 1): closed: 1012 service restart");
    // The prompt works on the new connection.
    tmux.keys(&["after the restart", "Enter"]);
    tmux.wait_for("< after the restart");
    tmux.keys(&["C-d"]);
    let screen = tmux.wait_for("rc=");
    assert!(screen.contains("rc=0"), "{screen}");
}

/// A directory of its own under the temporary directory (emptied first).
fn fresh_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wsx-connect-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `/hex` sends bytes, `/binary FILE` a file's contents (a missing file and one over the 64 MiB
/// limit are refused, saying why; hex that names no file is still sent, with a note), and
/// `--hex` shows what comes back as hex dumps above the prompt.
#[test]
fn interactive_hex_and_binary_file_commands() {
    let addr = echo_server();
    let dir = fresh_dir("binary");
    let file = dir.join("payload.bin");
    std::fs::write(&file, b"\x00\x01file contents\xff").unwrap();
    let big = dir.join("big.bin");
    std::fs::File::create(&big).unwrap().set_len((64 << 20) + 1).unwrap(); // sparse
    let command = format!("env NO_COLOR=1 WSX_HISTORY= {WSX} connect --hex {}; echo \"rc=$?\"; sleep 30", url(addr));
    let tmux = Tmux::start(&command);
    tmux.wait_for("/help lists the commands");
    tmux.keys(&["/hex 00 68 69", "Enter"]);
    tmux.wait_for("< binary, 3 bytes:");
    tmux.wait_for("  00000000  00 68 69                                          |.hi|");
    tmux.keys(&[&format!("/binary {}", file.display()), "Enter"]);
    tmux.wait_for("< binary, 16 bytes:");
    tmux.wait_for("  00000000  00 01 66 69 6c 65 20 63  6f 6e 74 65 6e 74 73 ff  |..file contents.|");
    tmux.keys(&[&format!("/binary {}", dir.join("missing.bin").display()), "Enter"]);
    tmux.wait_for("/binary: no such file: ");
    tmux.keys(&[&format!("/binary {}", big.display()), "Enter"]);
    tmux.wait_for("big.bin has 67108865 bytes, more than the 64 MiB that /binary sends");
    tmux.keys(&["/binary 0a0b", "Enter"]);
    tmux.wait_for("sent it as 2 bytes of hex (use /hex for bytes, /binary for files)");
    tmux.wait_for("  00000000  0a 0b                                             |..|");
    // Tab completes the file name after /binary.
    tmux.keys(&[&format!("/binary {}/payl", dir.display()), "Tab"]);
    tmux.wait_for(&format!("> /binary {}/payload.bin", dir.display()));
    tmux.keys(&["C-u", "/help", "Enter"]);
    tmux.wait_for("/binary <file>");
    tmux.keys(&["C-d"]);
    let screen = tmux.wait_for("rc=");
    assert!(screen.contains("rc=0"), "{screen}");
    // Exactly one message per command that sends: /hex, /binary FILE, /binary hex.
    assert_eq!(screen.matches("< binary, ").count(), 3, "{screen}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs an interactive session against `addr` with `$XDG_DATA_HOME` = `data` (and no
/// `$WSX_HISTORY`), types `line`, and closes.
fn session_with_history(addr: SocketAddr, data: &std::path::Path, extra: &str, line: &str) {
    let command = format!(
        "env -u WSX_HISTORY NO_COLOR=1 XDG_DATA_HOME={} {WSX} connect {extra} {}; echo \"rc=$?\"; sleep 30",
        data.display(),
        url(addr)
    );
    let tmux = Tmux::start(&command);
    tmux.wait_for("/help lists the commands");
    tmux.keys(&[line, "Enter"]);
    tmux.wait_for(&format!("< {line}"));
    tmux.keys(&["C-d"]);
    let screen = tmux.wait_for("rc=");
    assert!(screen.contains("rc=0"), "{screen}");
}

/// The history is one file per server (scheme, host, port) under `$XDG_DATA_HOME/wsx/history`,
/// readable by the user only; `--no-history` reads and writes none.
#[cfg(unix)]
#[test]
fn interactive_history_is_kept_per_server() {
    use std::os::unix::fs::PermissionsExt as _;
    let (a, b) = (echo_server(), echo_server());
    let data = fresh_dir("xdg");
    session_with_history(a, &data, "", "typed on server a");
    session_with_history(b, &data, "", "typed on server b");
    let dir = data.join("wsx/history");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    let mut names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    let mut expected = vec![format!("ws_127.0.0.1_{}", a.port()), format!("ws_127.0.0.1_{}", b.port())];
    expected.sort();
    assert_eq!(names, expected);
    for (addr, line) in [(a, "typed on server a"), (b, "typed on server b")] {
        let file = dir.join(format!("ws_127.0.0.1_{}", addr.port()));
        assert_eq!(mode(&file), 0o600, "{}", file.display());
        let saved = std::fs::read_to_string(&file).unwrap();
        assert!(saved.contains(line), "{saved}");
        assert!(!saved.contains(if addr == a { "server b" } else { "server a" }), "{saved}");
    }

    // --no-history: nothing is created, nothing read (Up brings nothing back).
    let none = fresh_dir("xdg-none");
    session_with_history(a, &none, "--no-history", "not kept");
    assert!(!none.join("wsx").exists(), "--no-history created {}", none.join("wsx").display());
    let command =
        format!("env -u WSX_HISTORY NO_COLOR=1 XDG_DATA_HOME={} {WSX} connect --no-history {}", data.display(), url(a));
    let tmux = Tmux::start(&format!("{command}; echo \"rc=$?\"; sleep 30"));
    tmux.wait_for("/help lists the commands");
    // Up, then a line: once the line is echoed, Up was handled before it (keys are in order),
    // and with a history it would have put server a's line in front of it.
    tmux.keys(&["Up"]);
    tmux.keys(&["zzmarker", "Enter"]);
    let screen = tmux.wait_for("< zzmarker");
    assert!(!screen.contains("typed on server a"), "{screen}");
    tmux.keys(&["C-d"]);
    tmux.wait_for("rc=0");
    // Nor is the line written to the history file that exists for this server.
    let saved = std::fs::read_to_string(dir.join(format!("ws_127.0.0.1_{}", a.port()))).unwrap();
    assert!(!saved.contains("zzmarker"), "{saved}");
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&none);
}
