//! `wsx connect --reconnect`, `--preamble`, `--max-messages`/`--oneshot` and `-i`, end to end:
//! the real binary against `wsx serve` (killed and restarted on its port) and small raw TCP
//! servers that refuse the handshake.

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, WSX};

/// A running `wsx connect` whose stdin stays open until [`Client::close_stdin`], with its
/// stdout and stderr lines collected as they come.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn collect(from: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

impl Client {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(WSX)
            .arg("connect")
            .args(args)
            .env("NO_COLOR", "1")
            .env("WSX_HISTORY", "")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run wsx connect");
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Self { stdin: child.stdin.take(), child, stdout, stderr }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    fn dump(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout().join("\n"), self.stderr().join("\n"))
    }

    /// Waits until `done` holds for the (stdout, stderr) lines so far.
    fn wait_for(&self, what: &str, within: Duration, done: impl Fn(&[String], &[String]) -> bool) {
        let end = Instant::now() + within;
        while !done(&self.stdout(), &self.stderr()) {
            assert!(Instant::now() < end, "no {what} within {within:?}:\n{}", self.dump());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let end = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the collector threads take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            assert!(Instant::now() < end, "wsx connect did not exit within {within:?}:\n{}", self.dump());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn count(lines: &[String], line: &str) -> usize {
    lines.iter().filter(|l| *l == line).count()
}

/// The reconnect reports on stderr: (attempt, delay in seconds) of each.
fn reconnects(stderr: &[String]) -> Vec<(u32, f64)> {
    stderr
        .iter()
        .filter_map(|l| {
            let rest = l.strip_prefix("wsx: reconnecting in ")?;
            let (delay, rest) = rest.split_once(" s (attempt ")?;
            let attempt = rest.split(|c: char| !c.is_ascii_digit()).next()?;
            Some((attempt.parse().ok()?, delay.parse().ok()?))
        })
        .collect()
}

/// A loopback port nothing listens on.
fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// The server is killed (no close frame: 1006) and restarted on the same port: wsx reconnects
/// with waits within the backoff's bounds, sends the preamble (text, then the file, in the
/// order given) again, then the line typed while it was disconnected, and stdin goes on.
#[test]
fn reconnects_to_a_restarted_server_and_resends_the_preamble() {
    let dir = std::env::temp_dir().join(format!("wsx-preamble-{}", std::process::id()));
    std::fs::write(&dir, "from the file").unwrap();
    let mut server = Server::start(&["--echo"]);
    let addr = server.addr;
    let file = dir.to_str().unwrap();
    let mut client = Client::start(&[
        "--reconnect",
        "--reconnect-delay",
        "0.2",
        "--reconnect-max-delay",
        "0.8",
        "--preamble",
        "hello",
        "--preamble-file",
        file,
        "--preamble",
        "third",
        &server.url("/echo"),
    ]);
    let preamble = ["hello", "from the file", "third"];
    client.wait_for("echoed preamble", Duration::from_secs(10), |out, _| out == preamble);
    client.send("one");
    client.wait_for("echo of one", Duration::from_secs(10), |out, _| out.last().is_some_and(|l| l == "one"));

    server.child.kill().unwrap();
    server.child.wait().unwrap();
    client.wait_for("a reconnect attempt", Duration::from_secs(10), |_, err| reconnects(err).len() >= 2);
    // Typed while disconnected: kept, and sent after the next connection's preamble.
    client.send("while down");
    std::thread::sleep(Duration::from_millis(300));
    let _server = Server::start_at(addr, &["--echo"]);
    client.wait_for("echo of the queued line", Duration::from_secs(15), |out, _| {
        out.last().is_some_and(|l| l == "while down")
    });
    client.send("two");
    client.wait_for("echo of two", Duration::from_secs(10), |out, _| out.last().is_some_and(|l| l == "two"));
    client.close_stdin();
    let status = client.wait_exit(Duration::from_secs(10));
    let _ = std::fs::remove_file(&dir);
    assert!(status.success(), "{status:?}\n{}", client.dump());

    let out = client.stdout();
    let expected: Vec<&str> =
        [&preamble[..], &["one"], &preamble[..], &["while down", "two"]].concat().into_iter().collect();
    assert_eq!(out, expected, "{}", client.dump());
    let err = client.stderr();
    let attempts = reconnects(&err);
    // Each wait is within 0..min(0.8, 0.2 * 2^(n-1)); the counter counts up while refused.
    for (i, (attempt, delay)) in attempts.iter().enumerate() {
        assert_eq!(*attempt as usize, i + 1, "{}", client.dump());
        let ceiling = (0.2 * 2f64.powi(*attempt as i32 - 1)).min(0.8);
        assert!(*delay <= ceiling + 0.005, "attempt {attempt} waited {delay} s > {ceiling}:\n{}", client.dump());
    }
    assert!(err.iter().any(|l| l.contains("(attempt 1): closed: 1006")), "{}", client.dump());
    assert!(err.iter().any(|l| l.contains("cannot connect to") && l.contains("reconnecting")), "{}", client.dump());
    // The reconnection is reported (the first connection is not, without -v).
    assert_eq!(err.iter().filter(|l| l.starts_with(&format!("connected to ws://{addr}/echo"))).count(), 1);
}

/// A close with 1000 by the server ends wsx (exit 0) even with --reconnect and stdin open.
#[test]
fn a_normal_close_by_the_server_ends() {
    let server = Server::start(&[]);
    let mut client =
        Client::start(&["--reconnect", "--reconnect-delay", "0.1", &server.url("/close?code=1000&after=200")]);
    let status = client.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}\n{}", client.dump());
    assert!(reconnects(&client.stderr()).is_empty(), "{}", client.dump());
    assert!(client.stderr().iter().any(|l| l == "closed: 1000 normal"), "{}", client.dump());
}

/// With --reconnect-always, a close with 1000 reconnects too.
#[test]
fn reconnect_always_reconnects_after_a_normal_close() {
    let server = Server::start(&[]);
    let mut client = Client::start(&[
        "--reconnect-always",
        "--reconnect-delay",
        "0.1",
        "--max-retries",
        "1",
        &server.url("/close?code=1000&after=100"),
    ]);
    let status = client.wait_exit(Duration::from_secs(10));
    assert_eq!(reconnects(&client.stderr()).len(), 1, "{}", client.dump());
    // It gave up after a connection that closed cleanly: the exit status is that close's.
    assert!(status.success(), "{status:?}\n{}", client.dump());
}

/// 1012 (service restart) reconnects, the preamble goes out on every connection, and
/// --max-retries gives up with a message and a non-zero exit status.
#[test]
fn service_restart_reconnects_until_max_retries() {
    let server = Server::start(&[]);
    let mut client = Client::start(&[
        "--reconnect",
        "--reconnect-delay",
        "0.1",
        "--max-retries",
        "2",
        "--preamble",
        "sub",
        &server.url("/close?code=1012&after=300"),
    ]);
    let status = client.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(2), "{}", client.dump());
    let err = client.stderr();
    assert_eq!(reconnects(&err).iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2], "{}", client.dump());
    assert!(err.iter().any(|l| l.contains("(attempt 1 of 2): closed: 1012 service restart")), "{}", client.dump());
    assert!(
        err.iter().any(|l| l == "wsx: giving up after 2 reconnect attempts: closed: 1012 service restart"),
        "{}",
        client.dump()
    );
    assert_eq!(count(&client.stdout(), "sub"), 3, "the preamble, echoed once per connection:\n{}", client.dump());
}

/// Nothing listens: each refused attempt is reported, and --max-retries gives up with exit 1.
#[test]
fn max_retries_gives_up_when_nothing_listens() {
    let addr = closed_port();
    let started = Instant::now();
    let mut client =
        Client::start(&["--reconnect", "--reconnect-delay", "0.1", "--max-retries", "3", &format!("ws://{addr}/")]);
    let status = client.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(1), "{}", client.dump());
    let err = client.stderr();
    let attempts = reconnects(&err);
    assert_eq!(attempts.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2, 3], "{}", client.dump());
    // 0.1 + 0.2 + 0.4 s at most, plus three refused connections.
    assert!(started.elapsed() < Duration::from_secs(10));
    let last = err.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with(&format!("wsx: giving up after 3 reconnect attempts: cannot connect to ws://{addr}/")),
        "{}",
        client.dump()
    );
}

/// Without --reconnect, a refused connection is one attempt.
#[test]
fn without_reconnect_one_attempt() {
    let mut client = Client::start(&[&format!("ws://{}/", closed_port())]);
    assert_eq!(client.wait_exit(Duration::from_secs(10)).code(), Some(1));
    assert!(reconnects(&client.stderr()).is_empty(), "{}", client.dump());
}

/// A raw TCP server that answers every connection with `response` and counts connections.
fn refusing_server(response: Vec<u8>) -> (SocketAddr, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(Mutex::new(0));
    let counter = connections.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(mut tcp) = tcp else { return };
            *counter.lock().unwrap() += 1;
            let response = response.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && tcp.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                // A peer that stops reading is fine: the client reads only so much.
                let _ = tcp.write_all(&response);
            });
        }
    });
    (addr, connections)
}

/// A 4xx refusal is not retried: it will not get better.
#[test]
fn a_4xx_refusal_is_not_retried() {
    let (addr, connections) = refusing_server(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nno\n".to_vec());
    let mut client = Client::start(&["--reconnect", "--reconnect-delay", "0.1", &format!("ws://{addr}/")]);
    assert_eq!(client.wait_exit(Duration::from_secs(10)).code(), Some(1), "{}", client.dump());
    assert!(reconnects(&client.stderr()).is_empty(), "{}", client.dump());
    assert_eq!(*connections.lock().unwrap(), 1);
}

/// A 503 refusal is retried.
#[test]
fn a_503_refusal_is_retried() {
    let (addr, connections) =
        refusing_server(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\n\r\nbusy\n".to_vec());
    let mut client =
        Client::start(&["--reconnect", "--reconnect-delay", "0.1", "--max-retries", "2", &format!("ws://{addr}/")]);
    assert_eq!(client.wait_exit(Duration::from_secs(10)).code(), Some(1), "{}", client.dump());
    assert_eq!(reconnects(&client.stderr()).len(), 2, "{}", client.dump());
    assert_eq!(*connections.lock().unwrap(), 3);
}

/// --oneshot: the first message received, then a clean close and exit 0, though stdin is open.
#[test]
fn oneshot_exits_after_the_first_message() {
    let server = Server::start(&["--echo"]);
    let mut client = Client::start(&["--oneshot", &server.url("/echo")]);
    client.send("first");
    client.send("second");
    let status = client.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}\n{}", client.dump());
    assert_eq!(client.stdout(), ["first"], "{}", client.dump());
    assert!(client.stderr().iter().any(|l| l == "closed: 1000 normal"), "{}", client.dump());
}

/// --max-messages N: exactly N messages printed; the end of stdin does not close before them.
#[test]
fn max_messages_waits_for_n_messages() {
    let server = Server::start(&[]);
    let url = server.url("/echo");
    let mut client =
        Client::start(&["--max-messages", "2", "--preamble", "p1", "--preamble", "p2", "--preamble", "p3", &url]);
    client.close_stdin();
    let status = client.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}\n{}", client.dump());
    assert_eq!(client.stdout(), ["p1", "p2"], "{}", client.dump());
}

/// -i on success: the 101 response's status line and headers, on stderr.
#[test]
fn include_shows_the_accepting_response() {
    let server = Server::start(&["--echo"]);
    let mut client = Client::start(&["-i", "--oneshot", "--preamble", "x", &server.url("/echo")]);
    assert!(client.wait_exit(Duration::from_secs(10)).success(), "{}", client.dump());
    let err = client.stderr();
    assert!(err.iter().any(|l| l == "HTTP/1.1 101 Switching Protocols"), "{}", client.dump());
    assert!(err.iter().any(|l| l.eq_ignore_ascii_case("upgrade: websocket")), "{}", client.dump());
    assert_eq!(client.stdout(), ["x"]);
}

/// -i on a refusal: status, headers and body (control characters escaped), exit 1.
#[test]
fn include_shows_a_refusal_with_its_body() {
    let (addr, _) = refusing_server(
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3\r\nContent-Length: 26\r\n\r\nbusy \x1b[31mred\nsecond line\n".to_vec(),
    );
    let mut client = Client::start(&["-i", &format!("ws://{addr}/")]);
    assert_eq!(client.wait_exit(Duration::from_secs(10)).code(), Some(1), "{}", client.dump());
    let err = client.stderr();
    let at =
        err.iter().position(|l| l == "HTTP 503 Service Unavailable").unwrap_or_else(|| panic!("{}", client.dump()));
    assert_eq!(
        err[at + 1..at + 6],
        ["retry-after: 3", "content-length: 26", "", "busy \\x1b[31mred", "second line"],
        "{}",
        client.dump()
    );
    assert!(client.stdout().is_empty());
}

/// A refusal body larger than the bound is cut at 64 KiB, and the rest is not read.
#[test]
fn include_cuts_a_large_refusal_body() {
    let mut response = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4194304\r\n\r\n".to_vec();
    response.extend(std::iter::repeat_n(b'y', 4 << 20));
    let (addr, _) = refusing_server(response);
    let started = Instant::now();
    let mut client = Client::start(&["-i", &format!("ws://{addr}/")]);
    assert_eq!(client.wait_exit(Duration::from_secs(10)).code(), Some(1), "{}", client.dump());
    assert!(started.elapsed() < Duration::from_secs(8));
    let err = client.stderr();
    let body = err.iter().find(|l| l.starts_with("yyy")).unwrap_or_else(|| panic!("no body:\n{}", err.join("\n")));
    assert_eq!(body.len(), 64 * 1024);
    assert!(err.iter().any(|l| l == "[body cut at 65536 bytes]"), "{}", err.join("\n"));
}

/// A connection that stayed open at least --reconnect-max-delay resets the attempt counter:
/// with --max-retries 1, a server that restarts every second is followed for ever.
#[test]
fn a_connection_that_stayed_up_resets_the_counter() {
    let server = Server::start(&[]);
    let mut client = Client::start(&[
        "--reconnect",
        "--reconnect-delay",
        "0.1",
        "--reconnect-max-delay",
        "0.4",
        "--max-retries",
        "1",
        "--preamble",
        "p",
        &server.url("/close?code=1012&after=800"),
    ]);
    client.wait_for("three connections", Duration::from_secs(15), |out, _| count(out, "p") >= 3);
    client.close_stdin();
    let status = client.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}\n{}", client.dump());
    let attempts = reconnects(&client.stderr());
    assert!(attempts.len() >= 2 && attempts.iter().all(|(n, _)| *n == 1), "{}", client.dump());
}
