//! `wsx serve --exec PROGRAM [ARGS]...`: one program per WebSocket connection (websocketd's
//! model), on every path but `/room/{name}` and `/hub`, which stay the rooms.
//!
//! - **Output**: each line the program prints on stdout is a text message, without its `\n`
//!   (and a `\r` before it). A line may have at most [`MAX_LINE`] bytes (1 MiB): a longer one
//!   closes the connection with 1011 "program printed a line over 1 MiB" (not 1009, which
//!   says the peer sent too big a message), and one that is not UTF-8 with 1011 (use
//!   `--exec-binary` for bytes). A bad line closes with its own code and reason even when the
//!   program exits right after it. With `--exec-binary`, each read of stdout (at most 64 KiB) is a
//!   binary message.
//! - **Input**: each data message goes to the program's stdin followed by `\n`, whatever its type
//!   (a text message with newlines in it reaches the program as several lines). With
//!   `--exec-binary`, a message's bytes go as they are, without a newline.
//! - **stderr**: one log event per line (`stderr`, with the peer and the pid), lines cut at
//!   [`MAX_STDERR_LINE`] bytes.
//! - **The end**: when the program exits, what it printed is sent, then the connection closes
//!   with 1000 (exit status 0) or 1011 "program exited with status N" / "program killed by
//!   signal N". When the client leaves (its close, or the connection's loss) the program gets
//!   EOF on stdin, SIGTERM `--exec-grace` seconds later if it is still running, and SIGKILL
//!   [`KILL_AFTER`] after that; the signals go to its process group (it runs in a group of its
//!   own), and whatever is left in the group when it exits is killed (on Linux before the
//!   program is reaped, so that its group id cannot be another's yet; a program reaped by
//!   someone else is never signalled). Output that something escaped from the group (`setsid`)
//!   still prints is read until `--exec-grace` after the program's exit, not longer (`--exec-grace`
//!   is at most 86400). At server shutdown the
//!   connection closes with 1001 and the program gets EOF and SIGTERM at once, SIGKILL a second
//!   later.
//! - **Backpressure**: stdout is not read while the connection's output is at its high-water
//!   mark (1 MiB), and the connection is not read while a message is being written to stdin, so
//!   a program that prints faster than the client reads is slowed, and so is a client that sends
//!   faster than the program reads. Nothing is queued beyond the connection's own bounds, one
//!   message on its way to stdin, one line (or read) on its way out, and the pipes. A program
//!   that, with a message waiting, takes no byte of its stdin for `--write-timeout` (30 s, and
//!   30 s too when `--write-timeout` is 0: the connection is not read meanwhile) is
//!   treated like a client that reads nothing: the connection closes with 1011 "program takes no
//!   input" (the connection is not read meanwhile, so neither are the client's pongs). Messages
//!   that arrive after the program closed its stdin are dropped.
//! - **Environment**: a clean one (CGI/1.1 and websocketd's names): `PATH`, `HOME`, `LANG`,
//!   `LC_ALL`, `LC_CTYPE`, `TZ`, `LD_LIBRARY_PATH` and `TMPDIR` when the server has them, plus
//!   `GATEWAY_INTERFACE=CGI/1.1`, `SERVER_SOFTWARE`, `SERVER_NAME` and `SERVER_PORT` (from the
//!   `Host` header, over HTTP/2 from `:authority`, else the listening port), `SERVER_PROTOCOL`
//!   (`HTTP/1.1`, or `HTTP/2.0` for an extended CONNECT), `REQUEST_METHOD` (`GET`, or `CONNECT`
//!   over HTTP/2), `HTTP_HOST` over HTTP/2 too (from `:authority`),
//!   `REQUEST_URI` (path and query as sent), `SCRIPT_NAME=/` and `PATH_INFO` (the decoded path)
//!   as websocketd sets them for a single program, `QUERY_STRING`, `REMOTE_ADDR`, `REMOTE_PORT`,
//!   `HTTPS=on` with TLS, `WEBSOCKET_PROTOCOL` (the selected subprotocol, empty for none), and
//!   every request header as `HTTP_NAME` (upper case, `-` as `_`, repeated headers joined with
//!   `, `), except `Proxy` (httpoxy: `HTTP_PROXY` would be taken for a proxy setting) and
//!   headers whose names have anything but letters, digits and `-` (`X_Real_IP` would pass for
//!   `X-Real-IP`; Apache 2.4 leaves them out of CGI's environment too; logged at debug level).
//! - **Limit**: at most `--exec-max` programs at once; over it, handshakes get 503 with
//!   `Retry-After`.
//!
//! If `wsx serve` itself is killed with SIGKILL, its programs get EOF on stdin (and SIGPIPE on
//! stdout) but no signal: a program that ignores both outlives it.

use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use clap::Args;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use wsx::limit::{ConnectionLimit, ConnectionPermit};
use wsx::{CloseCode, CloseFrame, Message, Rejection, Utf8Bytes, WebSocket, WsWriter};

use super::{By, Io, Outcome, Shutdown};

/// The longest line of stdout a program may print in line mode (a longer one closes with 1011).
pub const MAX_LINE: usize = 1 << 20;
/// The longest line of stderr logged as is; the rest of a longer line is dropped.
pub const MAX_STDERR_LINE: usize = 4096;
/// The most a read of stdout takes in `--exec-binary` mode: one binary message.
const BINARY_READ: usize = 64 << 10;
/// How long after SIGTERM a program that has not exited gets SIGKILL.
pub const KILL_AFTER: Duration = Duration::from_secs(5);
/// At shutdown, how long after SIGTERM a program gets SIGKILL (within the server's 2 s).
const SHUTDOWN_KILL_AFTER: Duration = Duration::from_secs(1);
/// How long a message may wait for the program to take any of it when `--write-timeout` is 0
/// (as [`super::forward::TCP_WRITE_TIMEOUT`]): without a bound, a program that never reads would
/// hold its connection, unread, and its `--exec-max` place, for ever.
pub const STDIN_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest `--exec-grace`, in seconds (a day).
pub const MAX_GRACE: u64 = 86_400;
/// "No child process": the program was reaped by someone else.
#[cfg(unix)]
const ECHILD: Option<i32> = Some(nix::errno::Errno::ECHILD as i32);
#[cfg(not(unix))]
const ECHILD: Option<i32> = None;
/// The server's variables a program inherits (when the server has them).
const PASSED_ENV: [&str; 8] = ["PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "LD_LIBRARY_PATH", "TMPDIR"];

/// The options of `--exec`.
#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Run this program for each WebSocket connection, on every path but /room/NAME and /hub
    /// (still the rooms): its stdout lines are sent as text messages, each message received goes
    /// to its stdin with a newline. No shell: write `sh -c '…'` for one. Must come last: every
    /// word after it is the program's.
    ///
    /// Examples:
    ///   wsx serve --exec sh -c 'while read l; do echo "got $l"; done'
    ///   wsx serve --addr 0.0.0.0:8080 --exec-grace 2 --exec ./count.sh 10
    ///   wsx serve --exec-binary --exec cat
    ///
    /// A line over 1 MiB closes the connection with 1011, so does a line that is not UTF-8
    /// (use --exec-binary for bytes). A text message with newlines in it reaches the program as
    /// several lines. When the program exits, the connection closes after its output with 1000
    /// (status 0) or 1011 "program exited with status N". When the client leaves, the program
    /// gets EOF on stdin, SIGTERM after --exec-grace, SIGKILL 5 s later (to its process group).
    /// A program that takes none of its stdin for --write-timeout (30 s when 0) while a message
    /// waits: 1011.
    /// Its stderr goes to the log, one line per event. Its environment is clean but for PATH,
    /// HOME, LANG, LC_ALL, LC_CTYPE, TZ, LD_LIBRARY_PATH and TMPDIR, plus CGI variables:
    /// REMOTE_ADDR, REMOTE_PORT, REQUEST_URI, SCRIPT_NAME (/), PATH_INFO, QUERY_STRING,
    /// SERVER_NAME, SERVER_PORT, SERVER_PROTOCOL, HTTPS (on, with TLS), WEBSOCKET_PROTOCOL and
    /// the request headers as HTTP_NAME (but for names with other than letters, digits, -).
    #[arg(
        long = "exec",
        verbatim_doc_comment,
        value_name = "PROGRAM [ARGS]",
        num_args = 1..,
        allow_hyphen_values = true,
        conflicts_with_all = ["echo", "forward"]
    )]
    pub exec: Vec<OsString>,
    /// With --exec: binary messages both ways: each read of stdout (at most 64 KiB) is a binary
    /// message, and each message's bytes go to stdin as they are, without a newline.
    #[arg(long, requires = "exec")]
    pub exec_binary: bool,
    /// With --exec: seconds a program may take to exit after its client left (it gets EOF on
    /// stdin at once) before it gets SIGTERM; SIGKILL follows 5 s later. Also how long output is
    /// read after the program exited (from what it left running outside its group). 0 to 86400.
    #[arg(
        long,
        default_value_t = 5,
        value_name = "SECONDS",
        requires = "exec",
        value_parser = clap::value_parser!(u64).range(0..=MAX_GRACE)
    )]
    pub exec_grace: u64,
    /// With --exec: the most programs running at once; over it, handshakes are refused with 503
    /// and Retry-After (0: no limit).
    #[arg(long, default_value_t = 64, value_name = "N", requires = "exec")]
    pub exec_max: usize,
}

/// The `--exec` setup, shared by every connection.
pub struct Exec {
    program: PathBuf,
    args: Vec<OsString>,
    binary: bool,
    grace: Duration,
    limit: Option<ConnectionLimit>,
    /// The variables passed from the server's environment.
    inherited: Vec<(OsString, OsString)>,
    /// The port the server listens on (`SERVER_PORT` when `Host` names none).
    port: u16,
    https: bool,
    /// How long a message may wait for the program to take any of it.
    stdin_timeout: Duration,
}

/// The variables of one connection's program.
pub type Env = Vec<(OsString, OsString)>;

impl Exec {
    /// The setup of `args`, or `None` without `--exec`. Fails when the program cannot be found.
    pub(super) fn new(
        args: &ExecArgs,
        port: u16,
        https: bool,
        stdin_timeout: Option<Duration>,
    ) -> anyhow::Result<Option<Self>> {
        let Some((program, rest)) = args.exec.split_first() else { return Ok(None) };
        let path = std::env::var_os("PATH");
        let program = find_program(Path::new(program), path.as_deref()).ok_or_else(|| {
            anyhow::anyhow!(
                "--exec {}: no such executable program{}",
                Path::new(program).display(),
                if Path::new(program).components().count() > 1 { "" } else { " in PATH" }
            )
        })?;
        let words: Vec<String> = args.exec.iter().map(|w| shell_quote(&w.to_string_lossy())).collect();
        tracing::info!(program = %program.display(), "--exec: every connection runs {}", words.join(" "));
        let inherited =
            PASSED_ENV.iter().filter_map(|name| std::env::var_os(name).map(|v| (OsString::from(name), v))).collect();
        Ok(Some(Self {
            program,
            args: rest.to_vec(),
            binary: args.exec_binary,
            grace: Duration::from_secs(args.exec_grace),
            limit: (args.exec_max > 0).then(|| ConnectionLimit::new(args.exec_max)),
            inherited,
            port,
            https,
            stdin_timeout: stdin_timeout.unwrap_or(STDIN_WRITE_TIMEOUT),
        }))
    }

    /// A place for one more program under `--exec-max`, or the 503 to answer with.
    pub(super) fn try_acquire(&self) -> Result<Option<ConnectionPermit>, Rejection> {
        let Some(limit) = &self.limit else { return Ok(None) };
        match limit.try_acquire() {
            Some(permit) => Ok(Some(permit)),
            None => {
                let mut rejection = limit.rejection(Duration::from_secs(1));
                rejection.body = format!(
                    "server busy: {} programs running (--exec-max), the most it runs; try again in 1 s\n",
                    limit.max()
                );
                Err(rejection)
            }
        }
    }

    /// The CGI-style variables of an accepted request (see the module doc).
    pub(super) fn env(&self, request: &::http::Request<()>, peer: SocketAddr, protocol: Option<&str>) -> Env {
        let mut env: Env = Vec::with_capacity(24 + request.headers().len());
        let mut set = |name: &str, value: &[u8]| env.push((OsString::from(name), os_string(value)));
        let uri = request.uri();
        // Over HTTP/2 the name (and port) come from `:authority` (there is no `Host`).
        let authority = uri.authority().map(|a| a.as_str().as_bytes());
        let host = request.headers().get(::http::header::HOST).map(|h| h.as_bytes()).or(authority);
        let (name, port) = split_host(host.unwrap_or_default());
        let port = port.map_or_else(|| self.port.to_string(), str::to_owned);
        set("GATEWAY_INTERFACE", b"CGI/1.1");
        set("SERVER_SOFTWARE", concat!("wsx/", env!("CARGO_PKG_VERSION")).as_bytes());
        set("SERVER_NAME", name);
        set("SERVER_PORT", port.as_bytes());
        set("SERVER_PROTOCOL", format!("{:?}", request.version()).as_bytes());
        set("REQUEST_METHOD", request.method().as_str().as_bytes());
        let target = uri.path_and_query().map_or("/", |p| p.as_str());
        set("REQUEST_URI", target.as_bytes());
        set("SCRIPT_NAME", b"/");
        let path = uri.path();
        let decoded = super::http::percent_decode(path).filter(|p| !p.contains(&0));
        set("PATH_INFO", decoded.as_deref().unwrap_or(path.as_bytes()));
        set("QUERY_STRING", uri.query().unwrap_or_default().as_bytes());
        set("REMOTE_ADDR", peer.ip().to_string().as_bytes());
        set("REMOTE_PORT", peer.port().to_string().as_bytes());
        if self.https {
            set("HTTPS", b"on");
        }
        set("WEBSOCKET_PROTOCOL", protocol.unwrap_or_default().as_bytes());
        for name in request.headers().keys() {
            if name == "proxy" {
                continue;
            }
            // `X_Real_IP` would become HTTP_X_REAL_IP as `X-Real-IP` does, and could stand in for
            // a proxy's header: names with anything but letters, digits and `-` are left out
            // (Apache 2.4 does the same for CGI).
            if !name.as_str().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                tracing::debug!(%peer, header = name.as_str(), "header left out of the environment: not only letters, digits and -");
                continue;
            }
            let mut value = Vec::new();
            for (i, v) in request.headers().get_all(name).iter().enumerate() {
                if i > 0 {
                    value.extend_from_slice(b", ");
                }
                value.extend_from_slice(v.as_bytes());
            }
            let var = format!("HTTP_{}", name.as_str().to_ascii_uppercase().replace('-', "_"));
            set(&var, &value);
        }
        if !request.headers().contains_key(::http::header::HOST) {
            if let Some(authority) = authority {
                // As a CGI program expects it: `:authority` is HTTP/2's `Host`.
                set("HTTP_HOST", authority);
            }
        }
        env
    }

    /// Runs the program for one connection until both have ended; returns how the connection
    /// ended, for the log.
    pub(super) async fn run<S: Io>(
        &self,
        ws: WebSocket<S>,
        env: Env,
        peer: SocketAddr,
        mut shutdown: Shutdown,
    ) -> Outcome {
        let mut out = Outcome::default();
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .env_clear()
            .envs(self.inherited.iter().cloned())
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[cfg(unix)]
        command.process_group(0);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                tracing::warn!(%peer, program = %self.program.display(), error = %e, "cannot start the program");
                let mut ws = ws;
                out.code = Some(CloseCode::INTERNAL_ERROR.0);
                out.by = Some(By::Server);
                out.error = Some(format!("cannot start the program: {e}").into());
                let _ = ws.close(CloseCode::INTERNAL_ERROR, "cannot start the program").await;
                return out;
            }
        };
        let pid = child.id().unwrap_or_default();
        // Kills the group if this future is dropped before the program was reaped (the server's
        // shutdown grace ran out): nothing is left running.
        let mut group = Group { pid, reaped: false };
        tracing::info!(%peer, pid, "program started");
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            unreachable!("all three are piped");
        };

        let (mut reader, writer) = ws.split();
        let (stop_tx, stop_rx) = watch::channel(false);
        // When the program exited (set once).
        let (exited_tx, exited_rx) = watch::channel(None::<Instant>);
        let (fault_tx, mut fault_rx) = oneshot::channel::<CloseFrame>();

        // Client → program. Ends when the connection has ended; drops stdin (EOF) as soon as the
        // client leaves, the program stops reading, or `stop` is set.
        let binary = self.binary;
        let stdin_timeout = self.stdin_timeout;
        let inbound = async move {
            let mut stdin = Some(stdin);
            let mut stop = stop_rx;
            let mut ended: (Option<Option<CloseFrame>>, Option<wsx::Error>, bool) = (None, None, false);
            loop {
                let msg = tokio::select! {
                    msg = reader.recv() => msg,
                    _ = stop.wait_for(|s| *s), if stdin.is_some() => {
                        stdin = None;
                        continue;
                    }
                };
                let Some(msg) = msg else { break };
                match msg {
                    Ok(Message::Close(frame)) => {
                        ended.0 = Some(frame);
                        stdin = None;
                    }
                    Ok(msg @ (Message::Text(_) | Message::Binary(_))) => {
                        let Some(pipe) = stdin.as_mut() else { continue };
                        let write = write_message(pipe, msg.payload(), !binary, stdin_timeout);
                        tokio::select! {
                            written = write => match written {
                                Ok(()) => {}
                                Err(Stdin::Stalled) => {
                                    // Dropped on return: EOF.
                                    ended.2 = true;
                                    return ended;
                                }
                                // The program closed its stdin (or exited): later messages are
                                // dropped.
                                Err(Stdin::Closed) => stdin = None,
                            },
                            _ = stop.wait_for(|s| *s) => stdin = None,
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        ended.1.get_or_insert(e);
                        stdin = None;
                    }
                }
            }
            ended
        };

        // Program → client. Ends at EOF of stdout, or `grace` after the program exited (an
        // absolute deadline, however much is still printed): something that escaped its group
        // holds stdout open.
        let mut sender = writer.clone();
        let grace = self.grace;
        let outbound = async move {
            let mut stdout = BufReader::with_capacity(BINARY_READ, stdout);
            let mut exited = exited_rx;
            let mut fault = Some(fault_tx);
            let mut line = BytesMut::new();
            // Once the connection cannot take more (closed, or a bad line), output is read and
            // dropped, so the program is never stuck on a full pipe.
            let mut sending = true;
            let mut eof = false;
            let too_long = || {
                // (Not 1009: that is a message too big received from the peer.)
                CloseFrame::new(CloseCode::INTERNAL_ERROR, "program printed a line over 1 MiB")
            };
            let gone = grace_after_exit(&mut exited, grace);
            tokio::pin!(gone);
            while !eof {
                let chunk: &[u8] = tokio::select! {
                    biased;
                    chunk = stdout.fill_buf() => match chunk {
                        Ok(chunk) if !chunk.is_empty() => chunk,
                        _ => {
                            eof = true;
                            &[]
                        }
                    },
                    // (Polled once more at most: the loop ends once it is ready.)
                    () = &mut gone => {
                        eof = true;
                        &[]
                    }
                };
                if !sending {
                    let n = chunk.len();
                    stdout.consume(n);
                    continue;
                }
                let message = if binary {
                    if eof {
                        break;
                    }
                    let data = Bytes::copy_from_slice(chunk);
                    stdout.consume(data.len());
                    Message::Binary(data)
                } else {
                    let newline = chunk.iter().position(|&b| b == b'\n');
                    let take = newline.map_or(chunk.len(), |i| i + 1);
                    line.extend_from_slice(&chunk[..newline.unwrap_or(chunk.len())]);
                    stdout.consume(take);
                    // (+ 1: the line's `\r`, if it has one, is not part of the message.)
                    if line.len() > MAX_LINE + 1 {
                        sending = false;
                        if let Some(f) = fault.take() {
                            let _ = f.send(too_long());
                        }
                        continue;
                    }
                    // A line is complete at its newline, or at the end of stdout.
                    if newline.is_none() && (!eof || line.is_empty()) {
                        continue;
                    }
                    let mut text = line.split().freeze();
                    if text.last() == Some(&b'\r') {
                        text.truncate(text.len() - 1);
                    }
                    let checked = if text.len() > MAX_LINE {
                        Err(too_long())
                    } else {
                        Utf8Bytes::try_from_bytes(text).map_err(|_| {
                            let reason = "program printed a line that is not UTF-8 (see --exec-binary)";
                            CloseFrame::new(CloseCode::INTERNAL_ERROR, reason)
                        })
                    };
                    match checked {
                        Ok(text) => Message::Text(text),
                        Err(frame) => {
                            sending = false;
                            if let Some(f) = fault.take() {
                                let _ = f.send(frame);
                            }
                            continue;
                        }
                    }
                };
                // Waits while the connection's output is at its high-water mark: the program is
                // not read meanwhile.
                if sender.feed(message).await.is_err() {
                    sending = false;
                    continue;
                }
                // Written when nothing more has been read: one write per read of stdout.
                if stdout.buffer().is_empty() && sender.flush().await.is_err() {
                    sending = false;
                }
            }
            let _ = sender.flush().await;
            tracing::debug!(%peer, pid, "stdout ended");
        };

        // stderr → the log. Ends at EOF of stderr, or `grace` after the program exited (the same
        // absolute deadline as stdout's).
        let mut exited_err = exited_tx.subscribe();
        let errlog = async move {
            let mut stderr = BufReader::new(stderr);
            let mut line = Vec::new();
            let mut cut = false;
            let gone = grace_after_exit(&mut exited_err, grace);
            tokio::pin!(gone);
            loop {
                let chunk = tokio::select! {
                    biased;
                    chunk = stderr.fill_buf() => match chunk {
                        Ok([]) | Err(_) => break,
                        Ok(chunk) => chunk,
                    },
                    () = &mut gone => break,
                };
                let newline = chunk.iter().position(|&b| b == b'\n');
                let part = &chunk[..newline.unwrap_or(chunk.len())];
                let room = MAX_STDERR_LINE.saturating_sub(line.len());
                cut |= part.len() > room;
                line.extend_from_slice(&part[..part.len().min(room)]);
                let take = newline.map_or(chunk.len(), |i| i + 1);
                stderr.consume(take);
                if newline.is_some() {
                    log_stderr(peer, pid, &line, cut);
                    line.clear();
                    cut = false;
                }
            }
            if !line.is_empty() {
                log_stderr(peer, pid, &line, cut);
            }
        };

        tokio::pin!(inbound, outbound, errlog);
        let mut inbound_done = false;
        let mut outbound_done = false;
        let mut errlog_done = false;
        let mut status: Option<ExitStatus> = None;
        // The next signal to send and when.
        let mut kill: Option<(Instant, Signal)> = None;
        let mut closing: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> = None;
        let mut close_started = false;
        let mut fault_live = true;
        let mut down = false;
        let stop = |stop_tx: &watch::Sender<bool>| {
            let _ = stop_tx.send(true);
        };

        while !(inbound_done && outbound_done && errlog_done && status.is_some() && closing.is_none()) {
            let next_kill = kill.map(|(at, _)| at);
            tokio::select! {
                ended = &mut inbound, if !inbound_done => {
                    inbound_done = true;
                    let (close, error, stalled) = ended;
                    if let Some(frame) = close {
                        out.peer_closed(frame);
                    }
                    if let Some(e) = error {
                        out.failed(e);
                    }
                    if stalled && !close_started {
                        close_started = true;
                        let reason = "program takes no input";
                        closing = Some(start_close(&writer, &mut out, CloseFrame::new(CloseCode::INTERNAL_ERROR, reason)));
                    }
                    // The client has left (or we closed): the program has EOF; signals follow.
                    if status.is_none() && kill.is_none() {
                        kill = Some((later(self.grace), Signal::Term));
                    }
                }
                () = &mut outbound, if !outbound_done => outbound_done = true,
                () = &mut errlog, if !errlog_done => errlog_done = true,
                // Whatever the program left running in its group (which may hold stdout open) is
                // killed by `wait_and_kill_group`, before the program is reaped where it can.
                waited = wait_and_kill_group(&mut child, pid), if status.is_none() => {
                    let exit = match waited {
                        Ok(s) => {
                            group.reaped = true;
                            s
                        }
                        Err(e) => {
                            tracing::warn!(%peer, pid, error = %e, "cannot wait for the program");
                            if ECHILD.is_some() && e.raw_os_error() == ECHILD {
                                // Reaped by someone else: its pid, and group id, may be another's
                                // by now; never signal them.
                                group.reaped = true;
                            } else {
                                // Not reaped for sure: kill_on_drop and the runtime's orphan
                                // reaper take it.
                                let _ = child.start_kill();
                            }
                            status = Some(ExitStatus::default());
                            let _ = exited_tx.send(Some(Instant::now()));
                            continue;
                        }
                    };
                    status = Some(exit);
                    kill = None;
                    let _ = exited_tx.send(Some(Instant::now()));
                    tracing::info!(%peer, pid, status = %describe(exit), "program exited");
                }
                // (An error: the output side ended without a fault.)
                frame = &mut fault_rx, if fault_live && !close_started => {
                    fault_live = false;
                    if let Ok(frame) = frame {
                        close_started = true;
                        tracing::info!(%peer, pid, reason = frame.reason.as_str(), "closing: bad output");
                        closing = Some(start_close(&writer, &mut out, frame));
                        stop(&stop_tx);
                        if status.is_none() && kill.is_none() {
                            kill = Some((later(self.grace), Signal::Term));
                        }
                    }
                }
                () = async { closing.as_mut().expect("guarded").await }, if closing.is_some() => closing = None,
                () = shutdown.down(), if !down => {
                    down = true;
                    stop(&stop_tx);
                    if !close_started {
                        close_started = true;
                        closing = Some(start_close(&writer, &mut out, super::going_away()));
                    }
                    if status.is_none() {
                        signal_group(pid, Signal::Term);
                        kill = Some((later(SHUTDOWN_KILL_AFTER), Signal::Kill));
                    }
                }
                () = tokio::time::sleep_until(next_kill.unwrap_or_else(Instant::now)), if next_kill.is_some() && status.is_none() => {
                    let Some((_, signal)) = kill.take() else { continue };
                    tracing::info!(%peer, pid, signal = signal.name(), "program still running after its connection ended: signalled");
                    signal_group(pid, signal);
                    if signal == Signal::Term {
                        kill = Some((later(KILL_AFTER), Signal::Kill));
                    }
                }
            }
            // The program has exited and everything it printed is queued: close with its status.
            if status.is_some() && outbound_done && !close_started {
                close_started = true;
                stop(&stop_tx);
                // A bad last line is sent on `fault_rx` before the output side ends: its fault
                // is the close's reason, whatever the exit status.
                let fault = if fault_live { fault_rx.try_recv().ok() } else { None };
                fault_live = false;
                let frame = match (fault, status) {
                    (Some(frame), _) => {
                        tracing::info!(%peer, pid, reason = frame.reason.as_str(), "closing: bad output");
                        frame
                    }
                    (None, Some(s)) if s.success() => CloseFrame::new(CloseCode::NORMAL, ""),
                    (None, Some(s)) => CloseFrame::new(CloseCode::INTERNAL_ERROR, format!("program {}", describe(s))),
                    (None, None) => unreachable!("checked"),
                };
                closing = Some(start_close(&writer, &mut out, frame));
            }
        }
        drop(group);
        out
    }
}

/// `d` from now (a far deadline if that overflows).
fn later(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d).unwrap_or_else(|| now + Duration::from_secs(MAX_GRACE))
}

/// Ready `grace` after the program's exit, as seen on `exited` (an absolute deadline: polling it
/// again later does not move it).
async fn grace_after_exit(exited: &mut watch::Receiver<Option<Instant>>, grace: Duration) {
    let at = match exited.wait_for(Option::is_some).await {
        Ok(at) => at.unwrap_or_else(Instant::now),
        // (The sender is gone: the connection is ending anyway.)
        Err(_) => Instant::now(),
    };
    let deadline = at.checked_add(grace).unwrap_or_else(|| later(Duration::from_secs(MAX_GRACE)));
    tokio::time::sleep_until(deadline).await;
}

/// Waits for the program to exit, kills what is left in its process group, and reaps it.
///
/// On Linux the group is killed before the program (its leader) is reaped: `waitid` with
/// `WNOWAIT` tells that it exited and leaves it a zombie, whose pid (the group's id) cannot be
/// reused, so `killpg` cannot reach another's group. A SIGCHLD (or, at the latest, a second)
/// wakes the check. Elsewhere the group is killed just after the reaping, as close to it as
/// tokio allows.
async fn wait_and_kill_group(child: &mut tokio::process::Child, pid: u32) -> std::io::Result<ExitStatus> {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
        use tokio::signal::unix::{signal, SignalKind};
        let raw = i32::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
        // Registered before the first look, so that no exit goes unseen.
        let mut sigchld = signal(SignalKind::child()).ok();
        loop {
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            match waitid(Id::Pid(nix::unistd::Pid::from_raw(raw)), flags) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(_) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(std::io::Error::from(e)),
            }
            let tick = tokio::time::sleep(Duration::from_secs(1));
            match sigchld.as_mut() {
                Some(s) => {
                    tokio::select! {
                        _ = s.recv() => {}
                        () = tick => {}
                    }
                }
                None => tick.await,
            }
        }
        // Exited, not reaped: the group id is still the program's.
        signal_group(pid, Signal::Kill);
        child.wait().await
    }
    #[cfg(not(target_os = "linux"))]
    {
        let waited = child.wait().await;
        if waited.is_ok() {
            signal_group(pid, Signal::Kill);
        }
        waited
    }
}

/// Queues the close frame (after everything queued before it) and writes it, as a future the
/// caller polls beside its other work.
fn start_close<S: Io>(
    writer: &WsWriter<S>,
    out: &mut Outcome,
    frame: CloseFrame,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    out.closing = true;
    if out.code.is_none() {
        out.code = Some(frame.code.0);
        out.by = Some(By::Server);
    }
    let mut writer = writer.clone();
    Box::pin(async move {
        let _ = writer.close(frame.code, frame.reason.as_str()).await;
    })
}

/// Why a message did not reach the program.
enum Stdin {
    /// It closed its stdin (or exited).
    Closed,
    /// It took no byte of the message for the stall timeout.
    Stalled,
}

/// Writes one message to the program's stdin, with a newline in line mode. Each write (at most a
/// pipe's worth) must make progress within `stall`.
async fn write_message(pipe: &mut ChildStdin, payload: &[u8], newline: bool, stall: Duration) -> Result<(), Stdin> {
    let newline: &[u8] = if newline { b"\n" } else { b"" };
    for part in [payload, newline] {
        crate::bridge::write_all(pipe, part, stall).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::TimedOut => Stdin::Stalled,
            _ => Stdin::Closed,
        })?;
    }
    Ok(())
}

fn log_stderr(peer: SocketAddr, pid: u32, line: &[u8], cut: bool) {
    let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line));
    tracing::info!(%peer, pid, cut, "stderr: {line}");
}

/// "exited with status 3", "killed by signal 9".
fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt as _;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "exited".to_owned(),
    }
}

/// The signals sent to a program's group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Term,
    Kill,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Term => "SIGTERM",
            Signal::Kill => "SIGKILL",
        }
    }
}

/// Sends `signal` to the process group `pid` leads (no error when it is empty).
fn signal_group(pid: u32, signal: Signal) {
    #[cfg(unix)]
    {
        use nix::sys::signal::{killpg, Signal as S};
        let Ok(pid) = i32::try_from(pid) else { return };
        if pid <= 1 {
            return;
        }
        let s = match signal {
            Signal::Term => S::SIGTERM,
            Signal::Kill => S::SIGKILL,
        };
        let _ = killpg(nix::unistd::Pid::from_raw(pid), s);
    }
    #[cfg(not(unix))]
    let _ = (pid, signal);
}

/// A program's process group, killed when dropped before the program was reaped (while it is
/// not reaped its pid, the group's id, cannot be reused).
struct Group {
    pid: u32,
    reaped: bool,
}

impl Drop for Group {
    fn drop(&mut self) {
        if !self.reaped {
            signal_group(self.pid, Signal::Kill);
        }
    }
}

/// Bytes as a variable's value (on Unix any bytes but NUL; elsewhere, lossy UTF-8).
fn os_string(value: &[u8]) -> OsString {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt as _;
        OsStr::from_bytes(value).to_owned()
    }
    #[cfg(not(unix))]
    OsString::from(String::from_utf8_lossy(value).into_owned())
}

/// A word as a POSIX shell would need it written, for the log.
fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// `name[:port]` of a `Host` value (`[v6]:port` too).
fn split_host(host: &[u8]) -> (&[u8], Option<&str>) {
    let port_at = if host.starts_with(b"[") {
        host.iter().position(|&b| b == b']').map(|i| i + 1).filter(|&i| host.get(i) == Some(&b':'))
    } else {
        host.iter().rposition(|&b| b == b':')
    };
    match port_at {
        Some(i) => (&host[..i], std::str::from_utf8(&host[i + 1..]).ok().filter(|p| p.parse::<u16>().is_ok())),
        None => (host, None),
    }
}

/// The program to run: `program` itself when it names a path, else the first executable file of
/// that name in `path`.
fn find_program(program: &Path, path: Option<&OsStr>) -> Option<PathBuf> {
    let executable = |p: &Path| -> bool {
        let Ok(meta) = p.metadata() else { return false };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            meta.is_file() && meta.permissions().mode() & 0o111 != 0
        }
        #[cfg(not(unix))]
        meta.is_file()
    };
    if program.components().count() > 1 || program.is_absolute() {
        return executable(program).then(|| program.to_owned());
    }
    std::env::split_paths(path?).map(|dir| dir.join(program)).find(|p| executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(split_host(b"example.com:8080"), (&b"example.com"[..], Some("8080")));
        assert_eq!(split_host(b"example.com"), (&b"example.com"[..], None));
        assert_eq!(split_host(b"[::1]:9"), (&b"[::1]"[..], Some("9")));
        assert_eq!(split_host(b"[::1]"), (&b"[::1]"[..], None));
    }

    #[test]
    fn programs() {
        let path = std::env::var_os("PATH");
        assert!(find_program(Path::new("sh"), path.as_deref()).is_some());
        assert!(find_program(Path::new("no-such-program-wsx"), path.as_deref()).is_none());
        assert!(find_program(Path::new("/no/such/program"), path.as_deref()).is_none());
    }
}
