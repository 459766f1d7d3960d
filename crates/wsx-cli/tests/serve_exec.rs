//! `wsx serve --exec`: a program per WebSocket connection, end to end: the real binary, real
//! programs (`sh`, `cat`, `seq`, `sleep`), the wsx client.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use wsx::{ClientBuilder, CloseCode, CloseFrame, MaybeTlsStream, Message, WebSocket};

mod common;

use common::Server;

type Ws = WebSocket<MaybeTlsStream>;

/// The next message, whatever it is (a close too), within 10 s.
async fn next(ws: &mut Ws) -> Option<Message> {
    match tokio::time::timeout(Duration::from_secs(10), ws.recv()).await {
        Ok(Some(Ok(msg))) => Some(msg),
        Ok(Some(Err(e))) => panic!("receive failed: {e}"),
        Ok(None) => None,
        Err(_) => panic!("nothing received within 10 s"),
    }
}

/// Every data message until the server's close; returns them and the close frame.
async fn until_close(ws: &mut Ws) -> (Vec<Message>, Option<CloseFrame>) {
    let mut got = Vec::new();
    loop {
        match next(ws).await {
            Some(Message::Close(frame)) => {
                // The connection winds down after the close (our echo went out).
                while ws.recv().await.is_some() {}
                return (got, frame);
            }
            Some(msg) if msg.is_data() => got.push(msg),
            Some(_) => {}
            None => panic!("connection ended without a close frame after {got:?}"),
        }
    }
}

fn texts(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| match m {
            Message::Text(t) => t.as_str().to_owned(),
            other => panic!("not a text message: {other:?}"),
        })
        .collect()
}

/// A fresh path for a pid file.
fn pid_file(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("wsx-exec-{}-{name}-{n}.pid", std::process::id()))
}

/// The pid the program wrote, within 5 s.
async fn read_pid(file: &PathBuf) -> u32 {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(text) = std::fs::read_to_string(file) {
            if let Ok(pid) = text.trim().parse() {
                return pid;
            }
        }
        assert!(Instant::now() < end, "the program wrote no pid to {}", file.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `pid` is a running process (`kill -0`; a zombie, on Linux, counts as gone).
fn running(pid: u32) -> bool {
    let alive = Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run kill (needed to check on the programs)")
        .success();
    if !alive {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// Waits up to `within` for `pid` to be gone; returns how long it took.
async fn gone_within(pid: u32, within: Duration) -> Duration {
    let start = Instant::now();
    while running(pid) {
        assert!(start.elapsed() < within, "program {pid} still running after {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// A WebSocket upgrade sent by hand; returns the status, the head and the body.
fn raw_upgrade(addr: SocketAddr) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

#[tokio::test]
async fn echoing_program_answers_each_message_on_every_path() {
    let server = Server::start(&["--exec", "sh", "-c", "while read l; do echo \"got $l\"; done"]);
    for path in ["/", "/any/path?x=1"] {
        let (mut ws, _) = wsx::connect(&server.url(path)).await.unwrap();
        ws.send_text("hello").await.unwrap();
        assert_eq!(next(&mut ws).await, Some(Message::text("got hello")));
        ws.send_text("wörld ✓").await.unwrap();
        assert_eq!(next(&mut ws).await, Some(Message::text("got wörld ✓")));
        // A text message with newlines reaches the program as several lines.
        ws.send_text("a\nb").await.unwrap();
        assert_eq!(next(&mut ws).await, Some(Message::text("got a")));
        assert_eq!(next(&mut ws).await, Some(Message::text("got b")));
        // Our close: the program gets EOF and ends; our code is echoed.
        let answer = ws.close(CloseCode(4000), "bye").await.unwrap().unwrap();
        assert_eq!(answer.code, CloseCode(4000));
    }
    server.expect_log(&["program exited", "exited with status 0"]);
    server.expect_log(&["closed", "code=4000", "by=\"client\""]);
    // Plain HTTP is unchanged: the demo page.
    let addr = server.addr;
    let page = tokio::task::spawn_blocking(move || {
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tcp.write_all(format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
}

#[tokio::test]
async fn program_that_exits_0_closes_with_1000_after_all_its_output() {
    // 20,000 lines, the last without a newline, a \r\n line, then exit: every line arrives, in
    // order, then 1000.
    let script = "seq 1 20000; printf 'crlf\\r\\nlast'";
    let server = Server::start(&["--exec", "sh", "-c", script]);
    let (mut ws, _) = wsx::connect(&server.url("/")).await.unwrap();
    let (got, frame) = until_close(&mut ws).await;
    let got = texts(&got);
    let mut want: Vec<String> = (1..=20000).map(|n| n.to_string()).collect();
    want.push("crlf".to_owned());
    want.push("last".to_owned());
    assert_eq!(got.len(), want.len());
    assert!(got == want, "lines out of order or changed");
    assert_eq!(frame.map(|f| f.code), Some(CloseCode::NORMAL));
    server.expect_log(&["closed", "code=1000", "by=\"server\""]);

    // A program that prints and exits at once, many times: the order in which its exit and the
    // end of its output are seen varies; each connection still closes with 1000 after both
    // lines (within until_close's 10 s).
    let server = Server::start(&["--exec", "sh", "-c", "echo a; echo b"]);
    for _ in 0..20 {
        let (mut ws, _) = wsx::connect(&server.url("/")).await.unwrap();
        let (got, frame) = until_close(&mut ws).await;
        assert_eq!(texts(&got), ["a", "b"]);
        assert_eq!(frame.map(|f| f.code), Some(CloseCode::NORMAL));
    }
}

#[tokio::test]
async fn program_that_exits_non_zero_closes_with_1011_naming_the_status() {
    let server = Server::start(&["--exec", "sh", "-c", "echo bye; exit 3"]);
    let (mut ws, _) = wsx::connect(&server.url("/")).await.unwrap();
    let (got, frame) = until_close(&mut ws).await;
    assert_eq!(texts(&got), ["bye"]);
    let frame = frame.expect("a close frame with a code");
    assert_eq!((frame.code, frame.reason.as_str()), (CloseCode(1011), "program exited with status 3"));

    // Killed by a signal: named too.
    let server = Server::start(&["--exec", "sh", "-c", "kill -9 $$"]);
    let (mut ws, _) = wsx::connect(&server.url("/")).await.unwrap();
    let (_, frame) = until_close(&mut ws).await;
    let frame = frame.expect("a close frame with a code");
    assert_eq!((frame.code, frame.reason.as_str()), (CloseCode(1011), "program killed by signal 9"));
}

#[tokio::test]
async fn bad_output_closes_1011() {
    // (`read`: the program ends when the close takes its stdin away, nothing is left running.)
    let server = Server::start(&["--exec", "sh", "-c", "echo fine; printf 'bad \\377\\n'; read x"]);
    let (mut ws, _) = wsx::connect(&server.url("/")).await.unwrap();
    let (got, frame) = until_close(&mut ws).await;
    assert_eq!(texts(&got), ["fine"]);
    let frame = frame.expect("a close frame");
    assert_eq!(frame.code, CloseCode(1011));
    assert!(frame.reason.as_str().contains("not UTF-8"), "{}", frame.reason.as_str());

    // A line over 1 MiB: 1011 too (1009 would say the client sent too big a message).
    let script = "head -c 1100000 /dev/zero | tr '\\0' a; echo; read x";
    let server = Server::start(&["--exec", "sh", "-c", script]);
    let (mut ws, _) = wsx::connect(&server.url("/")).await.unwrap();
    let (got, frame) = until_close(&mut ws).await;
    assert!(got.is_empty());
    let frame = frame.expect("a close frame");
    assert_eq!((frame.code, frame.reason.as_str()), (CloseCode(1011), "program printed a line over 1 MiB"));
}

#[tokio::test]
async fn a_bad_last_line_closes_with_its_fault_even_when_the_program_exits_at_once() {
    // The exit and the fault race: every run must still close with the fault's 1011, not 1000.
    let server = Server::start(&["--exec", "sh", "-c", "printf 'ok\\nbad \\377\\n'; exit 0"]);
    for run in 0..20 {
        let (mut ws, _) = wsx::connect(&server.url("/")).await.unwrap();
        let (got, frame) = until_close(&mut ws).await;
        assert_eq!(texts(&got), ["ok"], "run {run}");
        let frame = frame.expect("a close frame");
        assert_eq!(frame.code, CloseCode(1011), "run {run}: {}", frame.reason.as_str());
        assert!(frame.reason.as_str().contains("not UTF-8"), "run {run}: {}", frame.reason.as_str());
    }
    // A line over 1 MiB as the last words: the same.
    let script = "head -c 1100000 /dev/zero | tr '\\0' a; echo; exit 0";
    let server = Server::start(&["--exec", "sh", "-c", script]);
    for run in 0..5 {
        let (mut ws, _) = wsx::connect(&server.url("/")).await.unwrap();
        let (_, frame) = until_close(&mut ws).await;
        assert_eq!(frame.map(|f| f.code), Some(CloseCode(1011)), "run {run}");
    }
}

#[tokio::test]
async fn program_gets_the_cgi_environment() {
    let script = "env; echo END";
    let server = Server::start_with_env(&["--exec", "sh", "-c", script], &[("WSX_TEST_SECRET", "not for programs")]);
    let url = server.url("/some/p%C3%A4th?a=1&b=two%20words");
    let (mut ws, _) = ClientBuilder::new(url)
        .protocol("chat.v1")
        .header("X-Test-Header", "hello there")
        .header("Proxy", "http://evil.example/")
        .header("Cookie", "session=1234")
        // The same variable's name but for `_`: left out, so it cannot pass for the real one.
        .header("X-Real-IP", "10.0.0.1")
        .header("X_Real_IP", "6.6.6.6")
        .header("Foo.Bar", "dotted")
        .connect()
        .await
        .unwrap();
    let local_port = match ws.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp.local_addr().unwrap().port(),
        #[allow(unreachable_patterns)]
        _ => unreachable!("plain TCP"),
    };
    let (got, frame) = until_close(&mut ws).await;
    assert_eq!(frame.map(|f| f.code), Some(CloseCode::NORMAL));
    let lines = texts(&got);
    assert_eq!(lines.last().map(String::as_str), Some("END"));
    let var = |name: &str| -> Option<String> {
        lines.iter().find_map(|l| l.strip_prefix(&format!("{name}=")).map(str::to_owned))
    };
    let port = server.addr.port().to_string();
    let local_port = local_port.to_string();
    for (name, want) in [
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", local_port.as_str()),
        ("REQUEST_METHOD", "GET"),
        ("REQUEST_URI", "/some/p%C3%A4th?a=1&b=two%20words"),
        ("SCRIPT_NAME", "/"),
        ("PATH_INFO", "/some/päth"),
        ("QUERY_STRING", "a=1&b=two%20words"),
        ("SERVER_NAME", "127.0.0.1"),
        ("SERVER_PORT", port.as_str()),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("WEBSOCKET_PROTOCOL", "chat.v1"),
        ("HTTP_X_TEST_HEADER", "hello there"),
        ("HTTP_COOKIE", "session=1234"),
        ("HTTP_UPGRADE", "websocket"),
        ("HTTP_X_REAL_IP", "10.0.0.1"),
    ] {
        assert_eq!(var(name).as_deref(), Some(want), "{name} in:\n{}", lines.join("\n"));
    }
    assert!(var("HTTP_SEC_WEBSOCKET_KEY").is_some());
    assert!(!lines.iter().any(|l| l.contains("6.6.6.6") || l.contains("dotted")), "{}", lines.join("\n"));
    assert!(var("PATH").is_some(), "PATH is passed on");
    // Not TLS; the server's other variables and the httpoxy header are not passed on.
    for name in ["HTTPS", "WSX_TEST_SECRET", "HTTP_PROXY", "RUST_LOG"] {
        assert_eq!(var(name), None, "{name} must not be set");
    }
}

#[tokio::test]
async fn binary_mode_passes_bytes_both_ways() {
    let server = Server::start(&["--exec-binary", "--exec", "cat"]);
    let (mut ws, _) = wsx::connect(&server.url("/")).await.unwrap();
    let bytes: Vec<u8> = (0..=255u8).chain([b'\n', b'\r', 0, 0xff]).collect();
    ws.send_binary(bytes.clone()).await.unwrap();
    // Text messages' bytes too, without a newline.
    ws.send_text("tëxt").await.unwrap();
    let mut want = bytes.clone();
    want.extend_from_slice("tëxt".as_bytes());
    let mut got = Vec::new();
    while got.len() < want.len() {
        match next(&mut ws).await {
            Some(Message::Binary(b)) => got.extend_from_slice(&b),
            other => panic!("expected binary messages, got {other:?}"),
        }
    }
    assert_eq!(got, want);
    // 1 MiB through cat: every byte back, as binary messages of at most 64 KiB.
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    ws.send_binary(big.clone()).await.unwrap();
    let mut got = Vec::new();
    while got.len() < big.len() {
        match next(&mut ws).await {
            Some(Message::Binary(b)) => {
                assert!(b.len() <= 64 << 10, "a message of {} bytes", b.len());
                got.extend_from_slice(&b);
            }
            other => panic!("expected binary messages, got {other:?}"),
        }
    }
    assert!(got == big, "the bytes came back changed");
    let answer = ws.close(CloseCode::NORMAL, "").await.unwrap();
    assert_eq!(answer.map(|f| f.code), Some(CloseCode::NORMAL));
}

#[tokio::test]
async fn a_vanished_client_ends_its_program_within_the_grace() {
    let file = pid_file("vanish");
    let script = format!("echo $$ > '{}'; exec sleep 1000", file.display());
    let server = Server::start(&["--exec-grace", "3", "--exec", "sh", "-c", &script]);
    let (ws, _) = wsx::connect(&server.url("/")).await.unwrap();
    let pid = read_pid(&file).await;
    assert!(running(pid));
    // Gone without a close frame: the TCP connection just ends.
    drop(ws);
    // The program ignores its stdin's EOF: it gets SIGTERM after the 3 s grace, not before (a
    // check 1 s in leaves a loaded machine 2 s of slack).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(running(pid), "SIGTERM came before the grace");
    let took = gone_within(pid, Duration::from_secs(6)).await;
    eprintln!("program gone {took:?} after the grace's first second");
    server.expect_log(&["still running", "signal=\"SIGTERM\""]);
    server.expect_log(&["program exited", "killed by signal 15"]);
    let _ = std::fs::remove_file(&file);
}

#[tokio::test]
async fn a_program_that_ignores_sigterm_is_killed() {
    let file = pid_file("stubborn");
    let script = format!("trap '' TERM; echo $$ > '{}'; exec sleep 1000", file.display());
    let server = Server::start(&["--exec-grace", "1", "--exec", "sh", "-c", &script]);
    let (mut ws, _) = wsx::connect(&server.url("/")).await.unwrap();
    let pid = read_pid(&file).await;
    let _ = ws.close(CloseCode::NORMAL, "").await;
    server.expect_log(&["still running", "signal=\"SIGTERM\""]);
    // SIGTERM is ignored: still there 2 s later, then SIGKILL (5 s after SIGTERM).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(running(pid), "the program should have ignored SIGTERM");
    gone_within(pid, Duration::from_secs(6)).await;
    server.expect_log(&["still running", "signal=\"SIGKILL\""]);
    server.expect_log(&["program exited", "killed by signal 9"]);
    let _ = std::fs::remove_file(&file);
}

#[tokio::test]
async fn exec_max_refuses_with_503() {
    let server = Server::start(&["--exec-max", "1", "--exec", "cat"]);
    let (mut first, _) = wsx::connect(&server.url("/")).await.unwrap();
    first.send_text("one").await.unwrap();
    assert_eq!(next(&mut first).await, Some(Message::text("one")));
    let addr = server.addr;
    let (status, head, body) = tokio::task::spawn_blocking(move || raw_upgrade(addr)).await.unwrap();
    assert_eq!(status, 503, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
    assert!(body.contains("--exec-max"), "{body}");
    server.expect_log(&["refused", "status=503"]);
    // The first program ends with its connection: there is room again.
    let _ = first.close(CloseCode::NORMAL, "").await;
    let end = Instant::now() + Duration::from_secs(5);
    let mut second = loop {
        match wsx::connect(&server.url("/")).await {
            Ok((ws, _)) => break ws,
            Err(e) => assert!(Instant::now() < end, "still refused: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    second.send_text("two").await.unwrap();
    assert_eq!(next(&mut second).await, Some(Message::text("two")));
}

#[tokio::test]
async fn stderr_goes_to_the_log() {
    let script = "echo 'something went wrong' >&2; echo ok; read x";
    let server = Server::start(&["--exec", "sh", "-c", script]);
    let (mut ws, _) = wsx::connect(&server.url("/")).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::text("ok")));
    let line = server.expect_log(&["stderr: something went wrong", "pid="]);
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
    let _ = ws.close(CloseCode::NORMAL, "").await;
}

#[tokio::test]
async fn a_program_that_never_reads_stalls_a_flooding_client() {
    let file = pid_file("deaf");
    let script = format!("echo $$ > '{}'; exec sleep 1000", file.display());
    let server = Server::start(&["--exec-grace", "1", "--write-timeout", "4", "--exec", "sh", "-c", &script]);
    let (mut ws, _) = wsx::connect(&server.url("/")).await.unwrap();
    let pid = read_pid(&file).await;
    let chunk = bytes::Bytes::from(vec![7u8; 64 << 10]);
    let mut sent = 0usize;
    let stalled = loop {
        match tokio::time::timeout(Duration::from_secs(1), ws.send_binary(chunk.clone())).await {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(e)) => panic!("send failed after {sent} bytes: {e}"),
            Err(_) => break true,
        }
        if sent > 256 << 20 {
            break false;
        }
    };
    assert!(stalled, "256 MiB were taken from a client whose program reads nothing");
    eprintln!("the client's sends stalled after {} KiB", sent >> 10);
    // Socket buffers, a pipe and a message: a few MiB, not more.
    assert!(sent < 64 << 20, "{sent} bytes taken before the stall");
    // A program that takes none of a message for --write-timeout: 1011, and it is ended.
    let frame = loop {
        match next(&mut ws).await {
            Some(Message::Close(frame)) => break frame,
            Some(_) => {}
            None => panic!("no close frame"),
        }
    };
    let frame = frame.expect("a close frame with a code");
    assert_eq!((frame.code, frame.reason.as_str()), (CloseCode(1011), "program takes no input"));
    drop(ws);
    gone_within(pid, Duration::from_secs(5)).await;
    let _ = std::fs::remove_file(&file);
}

#[tokio::test]
async fn sigterm_to_the_server_leaves_no_program_running() {
    let files = [pid_file("down-a"), pid_file("down-b")];
    // One program that ends on SIGTERM, one that ignores it (it is killed).
    let script =
        "if [ -e \"$0.a\" ]; then trap '' TERM; echo $$ > \"$0.b\"; else echo $$ > \"$0.a\"; fi; exec sleep 1000";
    let base = pid_file("down");
    let server_args = ["--exec", "sh", "-c", script, base.to_str().unwrap()];
    let mut server = Server::start(&server_args);
    let a_file = PathBuf::from(format!("{}.a", base.display()));
    let b_file = PathBuf::from(format!("{}.b", base.display()));
    let mut clients = Vec::new();
    let (ws, _) = wsx::connect(&server.url("/")).await.unwrap();
    clients.push(ws);
    let a = read_pid(&a_file).await;
    let (ws, _) = wsx::connect(&server.url("/")).await.unwrap();
    clients.push(ws);
    let b = read_pid(&b_file).await;
    assert!(running(a) && running(b));
    // The clients read (and answer the server's close).
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                loop {
                    match ws.recv().await {
                        Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => panic!("{e}"),
                        None => return None,
                    }
                }
            })
        })
        .collect();
    server.signal("TERM");
    let status = server.wait(Duration::from_secs(5));
    assert!(status.success(), "{status}");
    for reader in readers {
        let code = tokio::time::timeout(Duration::from_secs(5), reader).await.unwrap().unwrap();
        assert_eq!(code, Some(CloseCode::GOING_AWAY));
    }
    // Nothing left running once wsx has exited.
    for pid in [a, b] {
        assert!(!running(pid), "program {pid} outlived wsx serve");
    }
    for f in files.iter().chain([&a_file, &b_file]) {
        let _ = std::fs::remove_file(f);
    }
}

/// Mistakes are errors at start, with a message that says what to fix.
#[test]
fn bad_exec_command_lines_are_refused_at_start() {
    // Each must fail at once; one still running after 5 s started serving: killed, and the test
    // fails.
    let run = |args: &[&str]| {
        let mut child = Command::new(common::WSX)
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(args)
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run wsx serve");
        let end = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                panic!("wsx serve {args:?} started serving instead of refusing the command line");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!status.success(), "{args:?} exited 0");
        let mut err = String::new();
        let _ = child.stderr.take().expect("piped").read_to_string(&mut err);
        err
    };
    let err = run(&["--echo", "--exec", "cat"]);
    assert!(err.contains("'--echo' cannot be used with '--exec"), "{err}");
    let err = run(&["--forward", "tcp:127.0.0.1:9", "--exec", "cat"]);
    assert!(err.contains("cannot be used with"), "{err}");
    let err = run(&["--exec", "no-such-program-for-wsx"]);
    assert!(err.contains("--exec no-such-program-for-wsx: no such executable program in PATH"), "{err}");
    let err = run(&["--exec", "/no/such/dir/program"]);
    assert!(err.contains("no such executable program"), "{err}");
    let err = run(&["--exec-binary"]);
    assert!(err.contains("--exec"), "{err}");
    // A grace that would overflow the clock (it panicked a connection's task).
    let err = run(&["--exec-grace", "18446744073709551615", "--exec", "cat"]);
    assert!(err.contains("--exec-grace") && err.contains("86400"), "{err}");
    let err = run(&["--exec-grace", "86401", "--exec", "cat"]);
    assert!(err.contains("--exec-grace"), "{err}");
}

/// Over TLS the program sees HTTPS=on, and the messages pass as over TCP.
#[tokio::test]
async fn over_tls_the_program_sees_https_on() {
    let server =
        Server::start(&["--tls-self-signed", "--exec", "sh", "-c", "echo \"https=$HTTPS\"; read l; echo \"got $l\""]);
    let tls = wsx::tls::ClientTls::new().danger_accept_invalid_certs();
    let url = format!("wss://127.0.0.1:{}/", server.addr.port());
    let (mut ws, _) = ClientBuilder::new(url).tls(tls).connect().await.unwrap();
    assert_eq!(next(&mut ws).await, Some(Message::text("https=on")));
    ws.send_text("secret").await.unwrap();
    let (got, frame) = until_close(&mut ws).await;
    assert_eq!(texts(&got), ["got secret"]);
    assert_eq!(frame.map(|f| f.code), Some(CloseCode::NORMAL));
}

/// Floods `ws` with binary messages until a send takes over a second; returns the bytes sent.
async fn flood_until_stalled(ws: &mut Ws) -> usize {
    let chunk = bytes::Bytes::from(vec![7u8; 64 << 10]);
    let mut sent = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_secs(1), ws.send_binary(chunk.clone())).await {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(e)) => panic!("send failed after {sent} bytes: {e}"),
            Err(_) => return sent,
        }
        assert!(sent < 256 << 20, "256 MiB were taken from a client whose program reads nothing");
    }
}

/// With --write-timeout 0, a program that reads nothing is still given up on (after 30 s): the
/// connection closes and its --exec-max place is free again.
#[tokio::test]
async fn with_write_timeout_0_a_program_that_never_reads_still_ends_its_connection() {
    let file = pid_file("deaf0");
    let script = format!("echo $$ > '{}'; exec sleep 1000", file.display());
    let server =
        Server::start(&["--exec-grace", "1", "--write-timeout", "0", "--exec-max", "1", "--exec", "sh", "-c", &script]);
    // Our own writes, stuck behind the stall, must not give up first (30 s by default).
    let mut proto = wsx::proto::Config::default();
    proto.write_timeout = Some(Duration::from_secs(120));
    let (mut ws, _) = ClientBuilder::new(server.url("/")).proto_config(proto).connect().await.unwrap();
    let pid = read_pid(&file).await;
    let sent = flood_until_stalled(&mut ws).await;
    eprintln!("the client's sends stalled after {} KiB", sent >> 10);
    let end = Instant::now() + Duration::from_secs(45);
    let frame = loop {
        match tokio::time::timeout_at(end.into(), ws.recv()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => {}
            Ok(other) => panic!("no close frame: {other:?}"),
            Err(_) => panic!("no close 45 s after the program stopped reading (--write-timeout 0)"),
        }
    };
    let frame = frame.expect("a close frame with a code");
    assert_eq!((frame.code, frame.reason.as_str()), (CloseCode(1011), "program takes no input"));
    drop(ws);
    gone_within(pid, Duration::from_secs(5)).await;
    // Room again under --exec-max; this second program ends too (SIGTERM after the grace).
    let _ = std::fs::remove_file(&file);
    let (mut second, _) = wsx::connect(&server.url("/")).await.expect("room under --exec-max again");
    let pid = read_pid(&file).await;
    let _ = second.close(CloseCode::NORMAL, "").await;
    gone_within(pid, Duration::from_secs(5)).await;
    let _ = std::fs::remove_file(&file);
}

/// Kills, when dropped, the process groups whose leaders' pids are in a file (one a line).
struct KillGroups(PathBuf);

impl Drop for KillGroups {
    fn drop(&mut self) {
        for pid in std::fs::read_to_string(&self.0).unwrap_or_default().lines() {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", pid.trim())]).status();
        }
        // The file and its companions (`FILE.PID`).
        let name = self.0.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if let (Some(dir), false) = (self.0.parent(), name.is_empty()) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().starts_with(&name) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// A program that leaves something printing outside its process group (setsid) and exits: the
/// output is read until --exec-grace after the exit, then the connection ends (it did not while
/// the output went on) and its --exec-max place is free.
#[tokio::test]
async fn output_from_an_escaped_process_is_read_only_until_the_grace_after_the_exit() {
    let file = pid_file("escaped");
    let _cleanup = KillGroups(file.clone());
    // The escaped process writes its pid to FILE and FILE.PARENT, which the program waits for
    // (else its exit could kill the group before setsid).
    let script =
        "setsid sh -c 'echo $$ >> \"$0\"; echo $$ > \"$0.$PPID\"; while :; do echo tick; sleep 0.1; done' \"$0\" & \
                  while ! [ -e \"$0.$$\" ]; do sleep 0.05; done; echo started; exit 0";
    let file_arg = file.to_str().expect("a UTF-8 temporary path");
    let server = Server::start(&["--exec-grace", "1", "--exec-max", "1", "--exec", "sh", "-c", script, file_arg]);

    // The client closes: the connection ends by the grace, and there is room for another.
    let (mut ws, _) = wsx::connect(&server.url("/")).await.unwrap();
    loop {
        match next(&mut ws).await {
            Some(Message::Text(t)) if t.as_str() == "started" => break,
            Some(_) => {}
            None => panic!("connection ended before \"started\""),
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(CloseCode::NORMAL, "")).await;
    let end = Instant::now() + Duration::from_secs(6);
    let mut second = loop {
        match wsx::connect(&server.url("/")).await {
            Ok((ws, _)) => break ws,
            Err(e) => assert!(Instant::now() < end, "still refused 6 s after the client closed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The client stays: the server closes 1 s (the grace) after the exit, with 1000, although
    // the ticks go on.
    let start = Instant::now();
    let frame = loop {
        assert!(start.elapsed() < Duration::from_secs(6), "no close 6 s after the program exited");
        match next(&mut second).await {
            Some(Message::Close(frame)) => break frame,
            Some(_) => {}
            None => panic!("connection ended without a close frame"),
        }
    };
    assert_eq!(frame.map(|f| f.code), Some(CloseCode::NORMAL));
    let pids = std::fs::read_to_string(&file).unwrap_or_default();
    assert_eq!(pids.lines().count(), 2, "two escaped processes: {pids:?}");
}

/// Under --exec, /room/NAME and /hub stay the rooms; every other path runs the program.
#[tokio::test]
async fn rooms_work_beside_the_program() {
    let server = Server::start(&["--exec", "sh", "-c", "while read l; do echo \"got $l\"; done"]);
    let (mut a, _) = wsx::connect(&server.url("/room/x")).await.unwrap();
    let (mut b, _) = wsx::connect(&server.url("/room/x")).await.unwrap();
    // Each member gets its own message too: once it has, it is in the room.
    a.send_text("a is here").await.unwrap();
    assert_eq!(next(&mut a).await, Some(Message::text("a is here")));
    b.send_text("b is here").await.unwrap();
    loop {
        match next(&mut b).await {
            Some(Message::Text(t)) if t.as_str() == "b is here" => break,
            Some(Message::Text(t)) if t.as_str() == "a is here" => {}
            other => panic!("the room member got {other:?}"),
        }
    }
    b.send_text("hello room").await.unwrap();
    loop {
        match next(&mut a).await {
            Some(Message::Text(t)) if t.as_str() == "hello room" => break,
            Some(Message::Text(t)) if t.as_str() == "b is here" => {}
            other => panic!("the room member got {other:?}"),
        }
    }
    let (mut program, _) = wsx::connect(&server.url("/anything")).await.unwrap();
    program.send_text("hi").await.unwrap();
    assert_eq!(next(&mut program).await, Some(Message::text("got hi")));
    for ws in [&mut a, &mut b, &mut program] {
        let _ = ws.close(CloseCode::NORMAL, "").await;
    }
}

/// What a program leaves running in its group is killed when it exits (on Linux before the
/// program is reaped): a background `sleep` that holds stdout open does not hold the connection.
#[tokio::test]
async fn what_a_program_leaves_in_its_group_is_killed_at_its_exit() {
    let file = pid_file("left");
    let script = format!("sleep 1000 & echo $! > '{}'; echo bye; exit 0", file.display());
    // A long grace: were the sleep not killed, its stdout would hold the connection 60 s.
    let server = Server::start(&["--exec-grace", "60", "--exec", "sh", "-c", &script]);
    let (mut ws, _) = wsx::connect(&server.url("/")).await.unwrap();
    let (got, frame) = until_close(&mut ws).await;
    assert_eq!(texts(&got), ["bye"]);
    assert_eq!(frame.map(|f| f.code), Some(CloseCode::NORMAL));
    let pid = read_pid(&file).await;
    gone_within(pid, Duration::from_secs(5)).await;
    let _ = std::fs::remove_file(&file);
}
