//! What the `wsx serve` tests share: the server under test, as a child process.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The `wsx` binary under test.
pub const WSX: &str = env!("CARGO_BIN_EXE_wsx");

/// A running `wsx serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(args: &[&str]) -> Self {
        let mut cmd = Command::new(WSX);
        cmd.args(["serve", "--addr", "127.0.0.1:0"]).args(args);
        Self::spawn(cmd)
    }

    /// `wsx serve` with these variables added to its environment.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(WSX);
        cmd.args(["serve", "--addr", "127.0.0.1:0"]).args(args).envs(env.iter().copied());
        Self::spawn(cmd)
    }

    /// `wsx serve` on a given address (e.g. the one of a server that was killed, to restart it).
    pub fn start_at(addr: SocketAddr, args: &[&str]) -> Self {
        let mut cmd = Command::new(WSX);
        cmd.arg("serve").arg("--addr").arg(addr.to_string()).args(args);
        Self::spawn(cmd)
    }

    /// `wsx serve` with at most `nofile` file descriptors (`ulimit -n`, through `sh`).
    #[cfg(unix)]
    pub fn start_with_nofile(nofile: u32, args: &[&str]) -> Self {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" serve --addr 127.0.0.1:0 \"$@\""))
            .arg(WSX)
            .args(args);
        Self::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> Self {
        // Plain log lines whatever the log is written to, unless the test chose otherwise.
        if !cmd.get_envs().any(|(name, _)| name == "NO_COLOR") {
            cmd.env("NO_COLOR", "1");
        }
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run wsx serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.split("addr=").nth(1).and_then(|a| a.split_whitespace().next()) {
                    if line.contains("listening") {
                        let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                    }
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| {
            panic!(
                "wsx serve did not start listening (no `listening … addr=` line); its log:\n{}",
                log.lock().unwrap().join("\n")
            )
        });
        Self { child, addr, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Waits up to 3 s for a log line containing every one of `parts`.
    pub fn expect_log(&self, parts: &[&str]) -> String {
        let end = Instant::now() + Duration::from_secs(3);
        loop {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| parts.iter().all(|p| l.contains(p))) {
                return l.clone();
            }
            assert!(Instant::now() < end, "no log line with {parts:?} in:\n{}", self.log.lock().unwrap().join("\n"));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[cfg(unix)]
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success());
    }

    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        wait_child(&mut self.child, within, "wsx serve", Duration::from_millis(10), || {})
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `wsx bench MODE ARGS… URL --json FILE`; returns the output and the parsed report.
pub fn bench_json(mode: &str, url: &str, args: &[&str]) -> (std::process::Output, serde_json::Value) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let json = std::env::temp_dir().join(format!(
        "wsx-bench-test-{}-{}.json",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let started = Instant::now();
    let out = Command::new(WSX)
        .args(["bench", mode])
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg(url)
        .env("NO_COLOR", "1")
        .output()
        .expect("run wsx bench");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|_| {
        panic!(
            "no JSON written; stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let _ = std::fs::remove_file(&json);
    eprintln!("wsx bench {mode} {args:?} took {:?}:\n{}", started.elapsed(), String::from_utf8_lossy(&out.stdout));
    (out, serde_json::from_str(&text).expect("valid JSON"))
}

/// A `redis-server` of its own on a loopback port, killed when dropped. Fails the test with a
/// clear message when `redis-server` is not installed (`scripts/test` installs it).
pub struct Redis {
    pub child: Option<Child>,
    pub port: u16,
    /// Where it keeps its append-only file, with persistence on.
    pub dir: std::path::PathBuf,
    pub persistent: bool,
}

impl Redis {
    /// Starts one; with `persistent`, every write is in the append-only file before Redis
    /// answers (`appendfsync always`), so a restart keeps whatever was acknowledged.
    pub fn start(persistent: bool) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("wsx-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Self { child: None, port, dir, persistent };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts it (again) on the same port and directory.
    pub fn restart(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.persistent {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot run redis-server ({e}): the hub tests need it (scripts/test installs it: apt-get install redis-server)")
        });
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read as _, Write as _};
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let mut buf = [0u8; 64];
                if s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| buf[..n].starts_with(b"+PONG")) {
                    return;
                }
            }
            assert!(Instant::now() < end, "redis-server did not answer on port {} within 10 s", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it with SIGKILL (no chance to save anything).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `wsx ARGS…` (e.g. `connect --listen tcp:127.0.0.1:0 URL`), started and watched like
/// `wsx serve`: `addr` is the one of its first log line saying `listening` with `addr=`.
pub fn start_wsx(args: &[&str]) -> Server {
    let mut cmd = Command::new(WSX);
    cmd.args(args);
    Server::spawn(cmd)
}

/// Waits for `child` to exit, calling `each` every `every` meanwhile (e.g. to signal it); kills
/// it and fails the test (naming it `what`) when it runs longer than `within`.
pub fn wait_child(
    child: &mut Child,
    within: Duration,
    what: &str,
    every: Duration,
    mut each: impl FnMut(),
) -> ExitStatus {
    let end = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("the child's status") {
            return status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {within:?}");
        }
        each();
        std::thread::sleep(every);
    }
}
