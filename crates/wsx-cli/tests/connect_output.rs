//! `wsx connect` output for scripts and eyes, end to end: `--jsonl` (every line parsed, the
//! fields of every event type checked), `--hex` dumps, and stdin that arrives before the
//! connection opens. The real binary against `wsx serve` and small in-process servers.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Server, WSX};
use serde_json::Value;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// What `wsx connect` has written on stdout so far.
type Stdout = Arc<Mutex<Vec<u8>>>;

/// Runs `wsx connect ARGS` with `stdin` (then end of input); `during` runs while it does (e.g.
/// to start the server late), with its stdout so far. Killed, failing the test, after 20 s.
fn run_with(args: &[&str], stdin: &[u8], during: impl FnOnce(&Stdout)) -> Run {
    let mut child = Command::new(WSX)
        .arg("connect")
        .args(args)
        .env("NO_COLOR", "1")
        .env("WSX_HISTORY", "")
        .env_remove("WSX_FORCE_TTY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wsx connect");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let so_far = Stdout::default();
    let out = std::thread::spawn({
        let so_far = so_far.clone();
        move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = out.read(&mut buf) {
                so_far.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    during(&so_far);
    let what = format!("wsx connect {args:?}");
    let status = common::wait_child(&mut child, Duration::from_secs(20), &what, Duration::from_millis(10), || {});
    Run {
        code: status.code(),
        stdout: {
            out.join().unwrap();
            let bytes = std::mem::take(&mut *so_far.lock().unwrap());
            String::from_utf8(bytes).expect("stdout is UTF-8")
        },
        stderr: String::from_utf8_lossy(&err.join().unwrap()).into_owned(),
    }
}

fn wsx(args: &[&str], stdin: &[u8]) -> Run {
    run_with(args, stdin, |_| {})
}

/// A file of its own in the temporary directory, removed when dropped.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, contents: &[u8]) -> Self {
        let path = std::env::temp_dir().join(format!("wsx-output-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ------------------------------------------------------------------ --jsonl

/// Checks one JSON line against the schema of `--jsonl` (connect/jsonl.rs); returns it parsed.
fn check_event(line: &str) -> Value {
    let event: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
    let obj = event.as_object().unwrap_or_else(|| panic!("not an object: {line}"));
    let ts = obj.get("ts").and_then(Value::as_str).unwrap_or_else(|| panic!("no ts: {line}"));
    // RFC 3339, UTC, milliseconds: 2026-11-30T13:52:10.123Z
    assert!(ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "ts {ts:?} in {line}");
    chrono::DateTime::parse_from_rfc3339(ts).unwrap_or_else(|e| panic!("ts {ts:?} ({e}) in {line}"));
    let string = |name: &str| {
        obj.get(name).and_then(Value::as_str).unwrap_or_else(|| panic!("{name} is not a string in {line}"))
    };
    let number = |name: &str| {
        obj.get(name).and_then(Value::as_f64).unwrap_or_else(|| panic!("{name} is not a number in {line}"))
    };
    let boolean =
        |name: &str| obj.get(name).and_then(Value::as_bool).unwrap_or_else(|| panic!("{name} is not a bool in {line}"));
    let string_or_null = |name: &str| {
        let v = obj.get(name).unwrap_or_else(|| panic!("no {name} in {line}"));
        assert!(v.is_string() || v.is_null(), "{name} is neither a string nor null in {line}");
    };
    let number_or_null = |name: &str| {
        let v = obj.get(name).unwrap_or_else(|| panic!("no {name} in {line}"));
        assert!(v.is_number() || v.is_null(), "{name} is neither a number nor null in {line}");
    };
    let base64 = |name: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(string(name))
            .unwrap_or_else(|e| panic!("{name} is not base64 ({e}) in {line}"))
    };
    match string("type") {
        "open" => {
            assert!(string("url").starts_with("ws://"), "{line}");
            string_or_null("protocol");
            string_or_null("extensions");
            let http = string("http");
            assert!(http == "1.1" || http == "2", "{line}");
            number_or_null("stream");
            assert_eq!(http == "2", obj.get("stream").is_some_and(Value::is_number), "{line}");
            if let Some(status) = obj.get("status") {
                assert_eq!(status.as_u64(), Some(if http == "2" { 200 } else { 101 }), "{line}");
                assert!(obj.get("headers").is_some_and(Value::is_object), "{line}");
            }
        }
        "text" => {
            string("data");
        }
        "binary" => assert_eq!(base64("data").len() as f64, number("length"), "{line}"),
        t @ ("ping" | "pong") => {
            assert!(matches!(string("direction"), "sent" | "received"), "{line}");
            let data = base64("data");
            match obj.get("text") {
                Some(Value::String(text)) => assert_eq!(text.as_bytes(), data, "{line}"),
                Some(Value::Null) => assert!(std::str::from_utf8(&data).is_err(), "{line}"),
                _ => panic!("text is neither a string nor null in {line}"),
            }
            boolean("keepalive");
            if t == "pong" {
                number_or_null("rtt");
            }
        }
        "close" => {
            let code = number("code");
            assert!((1000.0..5000.0).contains(&code), "{line}");
            string("reason");
            boolean("wasClean");
            let by = obj.get("closedBy").unwrap_or_else(|| panic!("no closedBy in {line}"));
            assert!(by.is_null() || matches!(by.as_str(), Some("client" | "server")), "{line}");
        }
        "error" => {
            string("message");
            let kind = string("kind");
            assert!(matches!(kind, "peer" | "limit" | "usage" | "timeout" | "io" | "tls" | "input"), "{line}");
        }
        "reconnect" => {
            assert!(number("attempt") >= 1.0, "{line}");
            number_or_null("maxRetries");
            assert!(number("delay") >= 0.0, "{line}");
            string("reason");
        }
        other => panic!("unknown type {other:?} in {line}"),
    }
    event
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

/// A session with every kind of event: the server (`wsx serve`'s `/close`) echoes a text and a
/// binary preamble, wsx pings it, it closes with 4000 "bye", wsx reconnects once (`--max-retries
/// 1`) and the same happens again; a stdin line that is not UTF-8 is an `error`. Every stdout
/// line is JSON with the fields of its type.
#[test]
fn jsonl_writes_every_event_as_one_json_object_per_line() {
    let server = Server::start(&[]);
    let binary = TempFile::new("jsonl.bin", b"\x00\x01\xff binary");
    let url = server.url("/close?code=4000&reason=bye&after=600");
    let run = wsx(
        &[
            "--jsonl",
            "-i",
            "--show-ping",
            "--ping-interval",
            "100ms",
            "--preamble",
            "hello",
            "--preamble-file",
            binary.path(),
            "--reconnect-always",
            "--reconnect-delay",
            "0.1",
            "--max-retries",
            "1",
            "-n",
            &url,
        ],
        b"\xff\xfe\n",
    );
    assert_eq!(run.code, Some(2), "4000 is not a clean close:\n{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.ends_with('\n'), "{}", run.stdout);
    let events: Vec<Value> = run.stdout.lines().map(check_event).collect();
    // The `input` error comes when stdin is read, which may be before the `open` is written.
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).filter(|t| *t != "error").collect();

    assert_eq!(types.first(), Some(&"open"), "{types:?}");
    let opens = of_type(&events, "open");
    assert_eq!(opens.len(), 2, "{types:?}");
    assert_eq!(opens[0]["url"], url.as_str());
    assert_eq!(opens[0]["status"], 101, "-i adds the status");
    assert_eq!(opens[0]["headers"]["upgrade"], "websocket");

    let texts = of_type(&events, "text");
    assert_eq!(texts.iter().map(|e| e["data"].as_str().unwrap()).collect::<Vec<_>>(), ["hello", "hello"]);
    let binaries = of_type(&events, "binary");
    assert_eq!(binaries.len(), 2, "{types:?}");
    for b in &binaries {
        assert_eq!(b["data"], "AAH/IGJpbmFyeQ==");
        assert_eq!(b["length"], 10);
    }

    let pings = of_type(&events, "ping");
    assert!(pings.iter().any(|p| p["direction"] == "sent" && p["keepalive"] == true), "{}", run.stdout);
    let pongs = of_type(&events, "pong");
    assert!(
        pongs.iter().any(|p| p["direction"] == "received" && p["keepalive"] == true && p["rtt"].is_number()),
        "{}",
        run.stdout
    );

    let closes = of_type(&events, "close");
    assert_eq!(closes.len(), 2, "{types:?}");
    for close in &closes {
        assert_eq!(close["code"], 4000);
        assert_eq!(close["reason"], "bye");
        assert_eq!(close["wasClean"], true);
        assert_eq!(close["closedBy"], "server");
    }

    let reconnects = of_type(&events, "reconnect");
    assert_eq!(reconnects.len(), 1, "{types:?}");
    assert_eq!(reconnects[0]["attempt"], 1);
    assert_eq!(reconnects[0]["maxRetries"], 1);
    assert!(reconnects[0]["delay"].as_f64().unwrap() <= 100.0, "{}", reconnects[0]);
    assert_eq!(reconnects[0]["reason"], "closed: 4000 \"bye\"");

    let errors = of_type(&events, "error");
    assert_eq!(errors.len(), 1, "{types:?}");
    assert_eq!(errors[0]["kind"], "input");
    assert!(errors[0]["message"].as_str().unwrap().contains("not valid UTF-8"), "{}", errors[0]);

    // In order: the first connection ends before the reconnect, which comes before the second.
    let position = |t: &str, n: usize| types.iter().enumerate().filter(|(_, x)| **x == t).nth(n).unwrap().0;
    assert!(position("close", 0) < position("reconnect", 0) && position("reconnect", 0) < position("open", 1));
    assert!(position("open", 1) < position("close", 1) && position("close", 1) == types.len() - 1, "{types:?}");
    // The human-readable lines are on stderr, not stdout.
    assert!(run.stderr.contains("closed: 4000 \"bye\""), "{}", run.stderr);

    // Every field written is documented in the long help.
    let help = Command::new(WSX).args(["connect", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let schema = &help[help.find("JSON lines (--jsonl):").expect("a JSON lines section in --help")..];
    for event in &events {
        for field in event.as_object().unwrap().keys() {
            assert!(schema.contains(field.as_str()), "field {field:?} of {event} is not in --help:\n{schema}");
        }
        let kind = event["type"].as_str().unwrap();
        // Each type opens a line of the table ("    open       …", "    ping, pong …").
        let listed = schema.lines().any(|l| {
            l.strip_prefix("    ").is_some_and(|l| {
                let names = l.get(..11).unwrap_or(l); // the column of type names
                !l.starts_with(' ') && names.split(", ").any(|name| name.trim() == kind)
            })
        });
        assert!(listed, "type {kind:?} is not in --help:\n{schema}");
    }
}

/// A refused connection and a refused handshake are `error` events (the latter with its
/// status); the exit status is that of the plain mode.
#[test]
fn jsonl_reports_failures_to_connect_as_errors() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let run = wsx(&["--jsonl", &format!("ws://127.0.0.1:{port}/")], b"");
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let events: Vec<Value> = run.stdout.lines().map(check_event).collect();
    assert_eq!(events.len(), 1, "{}", run.stdout);
    assert_eq!(events[0]["type"], "error");
    assert_eq!(events[0]["kind"], "io");
    assert!(events[0]["message"].as_str().unwrap().starts_with("cannot connect to ws://127.0.0.1:"), "{}", events[0]);

    // With --reconnect, each failed attempt is an error, and each wait a reconnect.
    let refused = format!("ws://127.0.0.1:{port}/");
    let run = wsx(&["--jsonl", "--reconnect", "--reconnect-delay", "0.05", "--max-retries", "2", &refused], b"");
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let events: Vec<Value> = run.stdout.lines().map(check_event).collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["error", "reconnect", "error", "reconnect", "error"], "{}", run.stdout);
    assert_eq!((&events[3]["attempt"], &events[3]["maxRetries"]), (&2.into(), &2.into()));
    assert!(events[3]["reason"].as_str().unwrap().starts_with("cannot connect to "), "{}", events[3]);

    let server = Server::start(&[]);
    let run = run_with(&["--jsonl", &server.url("/no/such/endpoint")], b"", |_| {});
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let events: Vec<Value> = run.stdout.lines().map(check_event).collect();
    assert_eq!(events.len(), 1, "{}", run.stdout);
    assert_eq!(
        (&events[0]["type"], &events[0]["kind"], &events[0]["status"]),
        (&"error".into(), &"peer".into(), &404.into())
    );
}

/// Connection-ending failures come as an `error` then a `close` with 1006 and no `closedBy`.
#[test]
fn jsonl_reports_a_dropped_connection_as_error_then_close() {
    let mut server = Server::start(&["--echo"]);
    let addr = server.addr;
    let run = run_with(&["--jsonl", "-n", &format!("ws://{addr}/")], b"before the drop\n", |stdout| {
        // Killed once the echo is in: open and text come before the drop however loaded the
        // machine is.
        let deadline = Instant::now() + Duration::from_secs(15);
        while !String::from_utf8_lossy(&stdout.lock().unwrap()).contains(r#""type":"text""#) {
            assert!(Instant::now() < deadline, "no echo within 15 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = server.child.kill();
    });
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    let events: Vec<Value> = run.stdout.lines().map(check_event).collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["open", "text", "error", "close"], "{}", run.stdout);
    assert_eq!(events[2]["kind"], "io");
    assert_eq!((&events[3]["code"], &events[3]["wasClean"]), (&1006.into(), &false.into()));
    assert!(events[3]["closedBy"].is_null(), "{}", events[3]);
}

// ------------------------------------------------------------------ --hex

/// `--hex` in plain mode: a binary message as a header and `hexdump -C` lines, exactly; text
/// messages stay lines.
#[test]
fn hex_dumps_binary_messages() {
    let server = Server::start(&["--echo"]);
    let mut data = b"hello world\n\x00\x01\x02\x03\xff\xfe\xfd\xfc".to_vec();
    data.extend([0u8; 32]);
    data.extend(b"\x1b[2J");
    let file = TempFile::new("hex.bin", &data);
    let args = ["--hex", "--max-messages", "2", "--preamble", "text", "--preamble-file", file.path()];
    let url = server.url("/");
    let run = wsx(&[&args[..], &[url.as_str()]].concat(), b"");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let expected = "\
text
binary, 56 bytes:
00000000  68 65 6c 6c 6f 20 77 6f  72 6c 64 0a 00 01 02 03  |hello world.....|
00000010  ff fe fd fc 00 00 00 00  00 00 00 00 00 00 00 00  |................|
00000020  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|
00000030  00 00 00 00 1b 5b 32 4a                           |.....[2J|
";
    assert_eq!(run.stdout, expected);

    // Lines repeating the one before are one '*', as in hexdump -C. (Not UTF-8, so the
    // preamble file is sent as a binary message.)
    let ones = TempFile::new("ones.bin", &[0xff; 64]);
    let run = wsx(&["--hex", "--oneshot", "--preamble-file", ones.path(), &url], b"");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let expected = "\
binary, 64 bytes:
00000000  ff ff ff ff ff ff ff ff  ff ff ff ff ff ff ff ff  |................|
*
";
    assert_eq!(run.stdout, expected);
}

// ------------------------------------------------------------------ stdin before the open

/// A loopback address nothing listens on (yet).
fn closed_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Stdin written and closed while wsx is still trying to connect (`--reconnect` against a
/// server that starts a second later) is all sent once the connection opens, in order.
#[test]
fn stdin_before_the_first_connection_is_queued_through_reconnect_attempts() {
    let addr = closed_addr();
    let mut server = None;
    let run = run_with(
        &["--reconnect", "--reconnect-delay", "0.2", "--reconnect-max-delay", "0.2", &format!("ws://{addr}/")],
        b"a\nb\nc\n",
        |_| {
            std::thread::sleep(Duration::from_secs(1));
            server = Some(Server::start_at(addr, &["--echo"]));
        },
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("wsx: reconnecting in"), "the server was not up yet: {}", run.stderr);
    assert_eq!(run.stdout, "a\nb\nc\n", "{}", run.stderr);
}

/// A server on a thread of its own for one WebSocket connection: it starts accepting after
/// `delay`, then `serve`s the connection.
fn serve_one<F: std::future::Future<Output = ()>>(
    delay: Duration,
    serve: impl FnOnce(wsx::WebSocket<tokio::net::TcpStream>) -> F + Send + 'static,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let (tcp, _) = listener.accept().await.unwrap();
            serve(wsx::accept(tcp).await.unwrap()).await;
        });
    });
    addr
}

/// The same against a server that takes a second to accept the TCP connection and answer the
/// handshake (no --reconnect): the lines wait, none is lost.
#[test]
fn stdin_before_a_slow_handshake_is_queued() {
    let addr = serve_one(Duration::from_secs(1), |mut ws| async move {
        while let Some(Ok(msg)) = ws.recv().await {
            if msg.is_data() && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let run = wsx(&[&format!("ws://{addr}/")], b"first\nsecond\n");
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(started.elapsed() >= Duration::from_secs(1), "the server was not slow");
    assert_eq!(run.stdout, "first\nsecond\n", "{}", run.stderr);
}

/// Ctrl-C twice (SIGINT) while the server does not answer our close still ends the JSON lines
/// with a `close` event: 1006, not clean, closed by the client; exit status 130.
#[cfg(unix)]
#[test]
fn jsonl_writes_a_close_event_when_interrupted() {
    let addr = serve_one(Duration::ZERO, |mut ws| async move {
        // One echo, then silence: the client's close is never answered.
        if let Some(Ok(msg)) = ws.recv().await {
            let _ = ws.send(msg).await;
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let mut child = Command::new(WSX)
        .args(["connect", "--jsonl", "-n", &format!("ws://{addr}/")])
        .env("NO_COLOR", "1")
        .env("WSX_HISTORY", "")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run wsx connect");
    child.stdin.take().unwrap().write_all(b"hi\n").unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !lines.iter().any(|l: &String| l.contains(r#""type":"text""#)) {
        let left = deadline.saturating_duration_since(Instant::now());
        lines.push(rx.recv_timeout(left).expect("no echo within 15 s"));
    }
    let pid = child.id() as libc::pid_t;
    // The first SIGINT starts the closing handshake; the second gives up waiting for the answer.
    // Sent every 300 ms until wsx exits, as signals that arrive together may count as one.
    let sigint = || unsafe {
        libc::kill(pid, libc::SIGINT);
    };
    let what = "wsx connect, sent SIGINT every 300 ms,";
    let status = common::wait_child(&mut child, Duration::from_secs(15), what, Duration::from_millis(300), sigint);
    lines.extend(rx.iter());
    assert_eq!(status.code(), Some(130), "{lines:?}");
    let events: Vec<Value> = lines.iter().map(|l| check_event(l)).collect();
    let last = events.last().unwrap();
    assert_eq!(last["type"], "close", "{lines:?}");
    assert_eq!((&last["code"], &last["wasClean"], &last["closedBy"]), (&1006.into(), &false.into(), &"client".into()));
}
