//! Real proxy servers for the proxy tests, started on 127.0.0.1 and stopped on drop: Debian's
//! `tinyproxy` (HTTP CONNECT, optionally with Basic authentication) and `microsocks` (SOCKS5,
//! optionally with a user name and password).
//!
//! A missing binary fails the test with the command that installs it: these tests never skip.
//! `scripts/test` installs both when run as root.
//!
//! Shared by `crates/wsx/tests/proxy.rs` and `crates/wsx-cli/tests/connect.rs` (by path).
#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a proxy may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running proxy server.
pub struct ProxyServer {
    child: Child,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    name: &'static str,
}

impl ProxyServer {
    /// tinyproxy, allowing CONNECT to `connect_ports` only, from 127.0.0.1 only; with
    /// `BasicAuth user password` when `auth` is given (tinyproxy takes letters, digits and `-._`).
    pub fn tinyproxy(connect_ports: &[u16], auth: Option<(&str, &str)>) -> Self {
        let binary = require("tinyproxy", "tinyproxy");
        Self::start("tinyproxy", |dir, port| {
            let mut config =
                format!("Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 32\nLogLevel Info\nAllow 127.0.0.1\n");
            for p in connect_ports {
                config.push_str(&format!("ConnectPort {p}\n"));
            }
            if let Some((user, password)) = auth {
                config.push_str(&format!("BasicAuth {user} {password}\n"));
            }
            let path = dir.join("tinyproxy.conf");
            std::fs::write(&path, config).expect("write tinyproxy.conf");
            let mut command = Command::new(&binary);
            command.arg("-d").arg("-c").arg(path);
            command
        })
    }

    /// microsocks, with `-u user -P password` when `auth` is given.
    pub fn microsocks(auth: Option<(&str, &str)>) -> Self {
        let binary = require("microsocks", "microsocks");
        Self::start("microsocks", |_, port| {
            let mut command = Command::new(&binary);
            command.args(["-i", "127.0.0.1", "-p", &port.to_string()]);
            if let Some((user, password)) = auth {
                command.args(["-u", user, "-P", password]);
            }
            command
        })
    }

    /// Starts the command `make` builds for a free port, and waits until it listens. A port
    /// taken in between makes the server exit: then it tries another port.
    fn start(name: &'static str, make: impl Fn(&Path, u16) -> Command) -> Self {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("wsx-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the proxy's directory");
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let log = std::fs::File::create(dir.join("log")).expect("create the proxy's log");
            let child = make(&dir, port)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone the log file"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
            let mut server = ProxyServer { child, port, dir: dir.clone(), name };
            if server.wait_listening() {
                return server;
            }
            last_log = server.log();
        }
        panic!("{name} did not start listening within {START_TIMEOUT:?}; its log:\n{last_log}");
    }

    /// Whether it listens before [`START_TIMEOUT`] (false if it exited).
    fn wait_listening(&mut self) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if self.child.try_wait().expect("poll the proxy").is_some() {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// `scheme://[userinfo@]127.0.0.1:port` (`userinfo` as it goes into the URL).
    pub fn url(&self, scheme: &str, userinfo: Option<&str>) -> String {
        match userinfo {
            Some(u) => format!("{scheme}://{u}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// What the server wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Whether the server is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().map(|status| status.is_none()).unwrap_or(false)
    }
}

impl Drop for ProxyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The path of `binary`, or a failed test saying how to install it.
pub fn require(binary: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(binary))
        .find(|path| path.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "`{binary}` is not installed, and the proxy tests need it: run `apt-get install {package}` \
             (scripts/test does it when run as root)"
        )
    })
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}
