//! `wsx bench`: a WebSocket load generator that measures latency honestly.
//!
//! Modes: [`echo`] (closed or open loop against an echo server), [`connect`] (handshakes per
//! second with TCP, TLS and upgrade times; or a ramp to N idle connections with the server's
//! memory per connection) and [`pubsub`] (publishers and subscribers on rooms: deliveries per
//! second, publish-to-receive latency, loss and reordering). See `docs/bench.md`.
//!
//! Shape, shared by every mode ([`run_threads`]): `--threads` OS threads, each with a
//! current-thread tokio runtime and its share of the connections (one task each). A task
//! records into its thread's [`Stats`]; the main thread merges them for the live status line
//! and at the end for the report, and measures the generator's own CPU (and the server's, with
//! `--server-pid`) over the measurement window. The payload carries its sequence number and
//! scheduled time ([`payload`]), so the generator keeps no per-message state and its memory
//! does not grow with the rate.

mod compare;
mod connect;
mod echo;
mod payload;
mod pubsub;
mod raw;
mod report;
mod wire;

use std::future::Future;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use tokio::sync::watch;
use wsx::tls::ClientTls;
use wsx::{ClientBuilder, WebSocketConfig};

use self::report::{fmt_count, fmt_duration, FailIf, Report, ServerUsage, Stats};
use crate::connect::format::parse_secs;

const AFTER_HELP: &str = "\
Modes:
  echo      Send messages to an echo server and time each echo (checked byte for byte).
  connect   Handshakes per second (TCP, TLS and upgrade timed apart), or --ramp N connections
            held idle, with the server's memory per connection (--server-pid).
  pubsub    Publishers and subscribers on rooms (wsx serve's /room/NAME): deliveries per second,
            publish-to-receive latency, loss and reordering.
  compare   Two --json reports side by side: each figure, its change, better or worse.

Closed loop (echo's default): each connection keeps --depth messages in flight; the next leaves
when an echo returns. It measures the most the server can echo, but when the server stalls the
generator stalls with it and sends nothing meanwhile, so a stall delays only the few messages
in flight: it shows in max, hardly in p99 (coordinated omission).

Open loop (--rate N): N messages (or handshakes) per second in total leave on a fixed schedule,
whatever the server does. Each latency runs from the *scheduled* send time, so time the server
makes a user wait is counted for every message it delays: a 200 ms stall every second shows as
a p99 near 200 ms. The generator's own lag (actual − scheduled send) is reported; when it is
large, the generator, not the server, is behind.

Examples:
  wsx bench echo ws://127.0.0.1:8080/echo
      Closed loop, 64 connections × 16 in flight × 20-byte binary messages, 10 s.
  wsx bench echo --conns 1 --depth 1 --size 1k --duration 5 ws://127.0.0.1:8080/echo
      The round trip of one message at a time.
  wsx bench echo --rate 50000 --conns 100 --fail-if 'p99>20ms' ws://host/echo
      Open loop: 50k msgs/s; exit status 1 if p99 is above 20 ms.
  wsx bench echo --text --deflate --size 4k --json out.json wss://host/echo --cacert ca.pem
      JSON-like text compressed with permessage-deflate over TLS; every figure to out.json.
  wsx bench connect --conns 32 wss://host/echo --cacert ca.pem
      Handshakes per second, 32 at a time, with TCP connect, TLS and upgrade times.
  wsx bench connect --ramp 10000 --rate 2000 --server-pid $(pidof wsx) ws://127.0.0.1:8080/echo
      Open 10,000 connections at 2,000 a second, hold them idle, report server memory per conn.
  wsx bench pubsub --publishers 2 --subscribers 50 --rate 1000 ws://127.0.0.1:8080/room/bench
      2 publishers send 1,000 msgs/s in total to a room of 50 subscribers (50k deliveries/s).
  wsx bench compare --fail-if-worse 10 before.json after.json
      Each figure of two --json reports side by side; exit status 1 if one got 10% worse.

Exit status: 0 when the run had no error and met every --fail-if; 1 otherwise (any error,
including an echo mismatch or a lost message, fails unless an 'errors' condition of --fail-if
sets the threshold).";

/// `wsx bench` and its modes.
#[derive(Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct BenchArgs {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Echo benchmark: throughput and latency of an echo server, closed or open loop.
    #[command(after_help = AFTER_HELP)]
    Echo(echo::EchoArgs),
    /// Handshake benchmark: handshakes per second with TCP, TLS and upgrade times; or a ramp to
    /// N idle connections with the server's memory per connection.
    #[command(after_help = AFTER_HELP)]
    Connect(connect::ConnectArgs),
    /// Room benchmark: publishers and subscribers, deliveries per second, publish-to-receive
    /// latency, loss and reordering.
    #[command(after_help = AFTER_HELP)]
    Pubsub(pubsub::PubsubArgs),
    /// Compare two reports written with --json: each figure, its change, better or worse.
    #[command(after_help = compare::AFTER_HELP)]
    Compare(compare::CompareArgs),
}

/// What the echo and pubsub modes send.
#[derive(Args, Debug, Clone)]
pub struct PayloadArgs {
    /// Message size in bytes (k, M: powers of 1024); at least 20 (binary) or 40 (text): the
    /// sequence number, send time and checksum each message carries. Default: that minimum.
    #[arg(short = 's', long, value_parser = crate::connect::format::parse_size)]
    size: Option<usize>,
    /// Text messages (JSON-like ASCII) instead of binary ones.
    #[arg(long, conflicts_with = "binary")]
    text: bool,
    /// Binary messages (the default).
    #[arg(long)]
    binary: bool,
    /// Offer permessage-deflate (off by default). The payload is JSON-like text, which compresses
    /// about as real JSON does.
    #[arg(long)]
    deflate: bool,
}

impl PayloadArgs {
    /// The message size: as given, or the header's length.
    fn size(&self) -> usize {
        self.size.unwrap_or(payload::header_len(self.text))
    }

    /// The messages of the run.
    fn payloads(&self) -> anyhow::Result<payload::Payloads> {
        payload::Payloads::new(self.size(), self.text).map_err(anyhow::Error::msg)
    }

    /// How the summary names the messages: `20 B binary`, `1024 B text deflate`.
    fn describe(&self) -> String {
        format!(
            "{} B {}{}",
            self.size(),
            if self.text { "text" } else { "binary" },
            if self.deflate { " deflate" } else { "" }
        )
    }
}

/// Options every mode shares.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// How long to measure (after the warm-up), e.g. 10, 1.5, 500ms.
    #[arg(long, value_parser = parse_secs, default_value = "10")]
    duration: Duration,
    /// Traffic before the measurement starts, not counted (0 for none).
    #[arg(long, value_parser = parse_secs_or_zero, default_value = "1")]
    warmup: Duration,
    /// Generator threads, each a current-thread runtime with its share of the connections.
    #[arg(short = 't', long, default_value_t = 1)]
    threads: usize,
    /// Open the connections gradually: this many per second (default: all at once). Opening
    /// is over before the clock starts.
    #[arg(long, value_name = "N")]
    connect_rate: Option<f64>,
    /// A message (or handshake) outstanding this long is a timeout; it also bounds the wait for
    /// the last ones after the run and each connection's opening handshake.
    #[arg(long, value_parser = parse_secs, default_value = "5")]
    timeout: Duration,
    /// Add a request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Offer a subprotocol (repeatable).
    #[arg(long = "subprotocol", value_name = "NAME")]
    subprotocols: Vec<String>,
    /// wss://: also trust the CA certificates in this PEM file.
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// wss://: do not verify the server's certificate (development only).
    #[arg(short = 'k', long)]
    insecure: bool,
    /// WebSockets over HTTP/2 (RFC 8441 extended CONNECT): `wss://` with ALPN h2, `ws://` as
    /// h2c; a server that does not take them fails the connection (no fallback to HTTP/1.1).
    /// Each WebSocket has its own HTTP/2 connection, unless `bench echo
    /// --streams-per-connection` shares them.
    #[arg(long)]
    http2: bool,
    /// The server's process id (same machine): report its CPU time per message (or handshake)
    /// and its memory (resident set) from /proc. Several, comma separated (the nodes of a
    /// cluster, their broker): their sums.
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Write every figure and the latency histogram to this file as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Exit with status 1 when a condition holds: p50/p90/p99/p99.9/max>DURATION, rate<N,
    /// errors>N (repeatable, or comma separated), e.g. 'p99>20ms,rate<10000'.
    #[arg(long, value_name = "COND", value_delimiter = ',')]
    fail_if: Vec<FailIf>,
    /// Print the live status line even when stderr is not a terminal.
    #[arg(long, hide = true)]
    status: bool,
}

impl Common {
    /// Checks the settings every mode shares (and warns, once, that `--insecure` verifies
    /// nothing on a `wss://` URL).
    fn check(&self, url: &str) -> anyhow::Result<()> {
        if self.insecure && url.starts_with("wss://") {
            eprintln!("wsx: warning: --insecure: the server's certificate is not verified");
        }
        if self.threads == 0 {
            bail!("--threads must be at least 1");
        }
        if self.duration.is_zero() {
            bail!("--duration must be above 0");
        }
        if let Some(rate) = self.connect_rate {
            if !(rate.is_finite() && rate > 0.0) {
                bail!("--connect-rate must be a positive number of connections per second");
            }
        }
        Ok(())
    }

    /// The TLS settings of `--cacert` and `--insecure`.
    fn tls(&self) -> anyhow::Result<ClientTls> {
        let mut tls = ClientTls::new();
        if let Some(ca) = &self.cacert {
            tls = tls.add_ca_pem_file(ca).context("--cacert")?;
        }
        if self.insecure {
            tls = tls.danger_accept_invalid_certs();
        }
        Ok(tls)
    }

    /// A client for `url` with the headers, subprotocols, TLS settings and timeouts given;
    /// `config` is the mode's connection settings (buffers, permessage-deflate).
    fn builder(&self, url: &str, config: WebSocketConfig) -> anyhow::Result<ClientBuilder> {
        let mut b = ClientBuilder::new(url);
        for (name, value) in crate::connect::parse_headers(&self.headers)? {
            b = b.header(&name, &value);
        }
        for p in &self.subprotocols {
            b = b.protocol(p);
        }
        if self.http2 {
            b = b.http2(wsx::h2::Http2Mode::Only);
        }
        Ok(b.config(self.timeouts(config)).tls(self.tls()?))
    }

    /// `config` with the run's `--timeout` as its handshake and write timeouts (and a close
    /// timeout of at most 2 s): for every connection, whoever opens it.
    fn timeouts(&self, mut config: WebSocketConfig) -> WebSocketConfig {
        config.proto.handshake_timeout = self.timeout;
        config.proto.close_timeout = Duration::from_secs(2).min(self.timeout);
        config.proto.write_timeout = Some(self.timeout);
        config
    }

    /// The request settings of `builder` for a WebSocket opened on a shared HTTP/2 connection
    /// (`bench echo --streams-per-connection`): the headers and subprotocols given.
    fn request_config(&self) -> anyhow::Result<wsx::proto::handshake::ClientRequestConfig> {
        let mut request = wsx::proto::handshake::ClientRequestConfig::default();
        for (name, value) in crate::connect::parse_headers(&self.headers)? {
            let name = http::HeaderName::from_bytes(name.as_bytes()).context("--header")?;
            let value = http::HeaderValue::from_str(&value).context("--header")?;
            request.headers.append(name, value);
        }
        request.protocols = self.subprotocols.clone();
        Ok(request)
    }

    /// When connection `id` (of all the run's, counted from 0) should start opening, after the
    /// threads start.
    fn connect_delay(&self, id: usize) -> Duration {
        match self.connect_rate {
            Some(rate) => Duration::from_secs_f64(id as f64 / rate),
            None => Duration::ZERO,
        }
    }
}

/// Runs `wsx bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    // The generator runs on its own threads; wait for them off the caller's runtime.
    let job = move || match args.mode {
        Mode::Echo(a) => echo::run(a),
        Mode::Connect(a) => connect::run(a),
        Mode::Pubsub(a) => pubsub::run(a),
        Mode::Compare(a) => compare::run(a),
    };
    tokio::task::spawn_blocking(job).await.context("the benchmark thread failed")?
}

/// What one generator thread gets: its index, its counters, and the run's start.
pub struct Thread {
    /// This thread's index, `0..threads`.
    pub index: usize,
    /// How many threads the run has.
    pub threads: usize,
    /// Where this thread's connections record.
    pub stats: Arc<Mutex<Stats>>,
    start_rx: watch::Receiver<Option<Instant>>,
    ready: Option<mpsc::Sender<()>>,
    hold_rx: watch::Receiver<Option<Instant>>,
    timeline: Timeline,
}

impl Thread {
    /// Says that this thread has opened its connections (the run starts when every thread has).
    pub fn ready(&mut self) {
        if let Some(tx) = self.ready.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for the common start instant (`None` if the run was abandoned).
    pub async fn start(&mut self) -> Option<Instant> {
        self.ready();
        loop {
            if let Some(at) = *self.start_rx.borrow_and_update() {
                return Some(at);
            }
            self.start_rx.changed().await.ok()?;
        }
    }

    /// A receiver of the instant a ramp's hold ends (set by the main thread once every
    /// connection is open; see [`Timeline::Ramp`]).
    pub fn hold_end(&self) -> watch::Receiver<Option<Instant>> {
        self.hold_rx.clone()
    }

    /// The warm-up and the measurement window (zero for a ramp).
    pub fn window(&self) -> (Duration, Duration) {
        match self.timeline {
            Timeline::Window { warmup, duration, .. } => (warmup, duration),
            Timeline::Ramp { .. } => (Duration::ZERO, Duration::ZERO),
        }
    }

    /// A ramp's hold (zero otherwise).
    pub fn hold_max(&self) -> Duration {
        match self.timeline {
            Timeline::Ramp { hold, .. } => hold,
            Timeline::Window { .. } => Duration::ZERO,
        }
    }
}

/// How the main thread times a run.
#[derive(Debug, Clone, Copy)]
pub enum Timeline {
    /// Warm-up, then a measurement window of fixed length; the threads end by themselves soon
    /// after it (each bounded by its own deadline). `preopened`: the threads open their
    /// connections before they say they are ready (so a run without any is over at once).
    Window { warmup: Duration, duration: Duration, preopened: bool },
    /// Connections open until `target` of them have opened or failed (`Stats::connected` plus
    /// connect errors), then are held for `hold`; the threads end after that. The measurement
    /// window is the whole run.
    Ramp { target: u64, hold: Duration, deadline: Duration },
}

/// What the main thread measured besides the threads' counters.
pub struct Finished {
    /// Every thread's counters, merged.
    pub stats: Stats,
    /// The generator's CPU time in the window, as a share of its threads' capacity.
    pub cpu_share: Option<f64>,
    /// The server's CPU and memory, with `--server-pid`.
    pub server: Option<ServerUsage>,
    /// The measurement window's length (for a ramp: the whole run).
    pub window: Duration,
    /// A ramp: seconds from the start until every connection had opened or failed.
    pub ramp_s: Option<f64>,
}

/// Starts `threads` generator threads running `body`, waits until each has said it is ready
/// (or ended), gives them a common start, shows the live status line, times the window, and
/// returns the merged counters once every thread has ended.
pub fn run_threads<F, Fut>(
    common: &Common,
    threads: usize,
    unit: &str,
    timeline: Timeline,
    body: F,
) -> anyhow::Result<Finished>
where
    F: Fn(Thread) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()>,
{
    let body = Arc::new(body);
    let (start_tx, start_rx) = watch::channel::<Option<Instant>>(None);
    let (hold_tx, hold_rx) = watch::channel::<Option<Instant>>(None);
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let mut shared = Vec::new();
    let mut handles = Vec::new();
    for index in 0..threads {
        let stats = Arc::new(Mutex::new(Stats::default()));
        shared.push(stats.clone());
        let thread = Thread {
            index,
            threads,
            stats: stats.clone(),
            start_rx: start_rx.clone(),
            ready: Some(ready_tx.clone()),
            hold_rx: hold_rx.clone(),
            timeline,
        };
        let body = body.clone();
        let handle = std::thread::Builder::new()
            .name(format!("wsx-bench-{index}"))
            .spawn(move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(body(thread)),
                Err(e) => lock(&stats).error(format!("runtime: {e}"), 1),
            })
            .context("cannot start a generator thread")?;
        handles.push(handle);
    }
    drop(ready_tx);
    // Each thread's connecting is bounded by its handshake timeout (and --connect-rate).
    for _ in 0..threads {
        if ready_rx.recv().is_err() {
            break;
        }
    }
    let merged = |shared: &[Arc<Mutex<Stats>>]| {
        let mut s = Stats::default();
        for t in shared {
            s.merge(&lock(t));
        }
        s
    };
    let server_at = |pids: &[u32]| ServerUsage::sample_all(pids);
    let server_before_start = server_at(&common.server_pid);
    let start = Instant::now() + Duration::from_millis(5);
    let _ = start_tx.send(Some(start));
    let (window_start, mut end) = match timeline {
        Timeline::Window { warmup, duration, .. } => (start + warmup, Some(start + warmup + duration)),
        Timeline::Ramp { .. } => (start, None),
    };
    // Nothing to measure without a connection: report the connect errors at once.
    let ramp = matches!(timeline, Timeline::Ramp { .. });
    let preopened = matches!(timeline, Timeline::Window { preopened: true, .. });
    if preopened && !shared.iter().any(|t| lock(t).connected > 0) {
        end = Some(start);
    }
    let live = end != Some(start) && (common.status || std::io::stderr().is_terminal());

    let mut cpu_before = None;
    let mut server_before = None;
    let mut window_started = false;
    let mut last_seen = 0;
    let mut next_status = start + Duration::from_secs(1);
    let mut ramp_done_at: Option<Instant> = None;
    let mut ramp_usage = None;
    let poll = Duration::from_millis(if ramp { 100 } else { 1000 });
    let mut tick = start;
    loop {
        tick = match end {
            Some(end) => (tick + poll).min(end),
            None => tick + poll,
        };
        if !window_started && window_start <= tick {
            sleep_until(window_start);
            cpu_before = cpu_seconds();
            server_before = server_at(&common.server_pid);
            window_started = true;
        }
        sleep_until(tick);
        let now = Instant::now();
        if let Timeline::Ramp { target, hold, deadline } = timeline {
            let s = merged(&shared);
            let settled = s.connected + s.connect_errors() >= target;
            if ramp_done_at.is_none() && (settled || now >= start + deadline) {
                ramp_done_at = Some(now);
                let _ = hold_tx.send(Some(now + hold));
                // Connections open now: those that ended while the ramp went on do not count.
                ramp_usage = Some((s.connected.saturating_sub(s.closed), server_at(&common.server_pid)));
                if live {
                    eprintln!(
                        "\r\x1b[K{:>5.1} s: {} connections open, holding them {:.1} s",
                        now.saturating_duration_since(start).as_secs_f64(),
                        s.connected,
                        hold.as_secs_f64()
                    );
                }
            }
            if handles.iter().all(|h| h.is_finished()) {
                break;
            }
        }
        if live && now >= next_status {
            next_status += Duration::from_secs(1);
            let s = merged(&shared);
            let rate = s.seen - last_seen;
            last_seen = s.seen;
            let p99 = s.percentile(99.0).map_or_else(|| "-".into(), fmt_duration);
            let phase = if tick <= window_start { " (warm-up)" } else { "" };
            eprint!(
                "\r\x1b[K{:>5.1} s{phase}: {} {unit}/s, p99 {p99}, {} open, errors {}",
                tick.saturating_duration_since(start).as_secs_f64(),
                fmt_count(rate as f64),
                s.connected.saturating_sub(s.closed),
                s.error_count()
            );
        }
        if end.is_some_and(|end| tick >= end) {
            break;
        }
    }
    let window_end = Instant::now();
    let cpu_after = cpu_seconds();
    let server_after = server_at(&common.server_pid);
    if live {
        eprintln!();
    }
    for h in handles {
        if h.join().is_err() {
            bail!("a generator thread panicked");
        }
    }
    let stats = merged(&shared);
    let window = window_end.saturating_duration_since(window_start);
    let cpu_share = cpu_before.zip(cpu_after).map(|(b, a)| (a - b) / (window.as_secs_f64() * threads as f64).max(1e-9));
    let server = server_before.zip(server_after).map(|(before, after)| {
        let mut usage = after.since(&before, window);
        usage.rss_before_start = server_before_start.map(|s| s.rss_bytes);
        if let Some((open, Some(at_ramp))) = ramp_usage {
            usage.ramp = Some((open, at_ramp.rss_bytes));
        }
        usage
    });
    // The ramp's length: to the last handshake's end (the main loop only looks every 100 ms).
    let ramp_s =
        ramp_done_at.map(|at| stats.last_open.unwrap_or(at).min(at).saturating_duration_since(start).as_secs_f64());
    Ok(Finished { stats, cpu_share, server, window, ramp_s })
}

/// Prints the report, writes `--json`, and decides the exit status.
pub fn finish(report: &Report, common: &Common) -> anyhow::Result<ExitCode> {
    print!("{}", report.summary());
    if let Some(path) = &common.json {
        let text = serde_json::to_string_pretty(&report.json())?;
        std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mut failed = Vec::new();
    if !common.fail_if.iter().any(FailIf::is_errors) && report.stats.error_count() > 0 {
        failed.push(format!("{} errors", report.stats.error_count()));
    }
    if report.stats.connected == 0 {
        failed.push("no connection could be opened".into());
    }
    for cond in &common.fail_if {
        if cond.violated(report) {
            failed.push(format!("--fail-if {cond}"));
        }
    }
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("wsx: bench failed: {}", failed.join(", "));
        Ok(ExitCode::from(1))
    }
}

/// As `parse_secs`, and `0` for none.
fn parse_secs_or_zero(s: &str) -> Result<Duration, String> {
    if s.trim().parse::<f64>() == Ok(0.0) {
        return Ok(Duration::ZERO);
    }
    parse_secs(s)
}

/// Locks a counter; a thread that panicked while holding it left counts that are still usable.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        std::thread::sleep(at - now);
    }
}

/// CPU seconds (user + system) this process has used, from `/proc/self/stat`.
fn cpu_seconds() -> Option<f64> {
    report::proc_cpu_seconds("/proc/self/stat")
}

/// The error kind a failed opening handshake counts as.
pub fn connect_error_kind(e: &wsx::Error) -> String {
    match e {
        wsx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => "connect refused".into(),
        wsx::Error::Handshake(wsx::HandshakeError::UnexpectedStatus { status, .. }) => {
            format!("handshake status {}", status.as_u16())
        }
        wsx::Error::HandshakeTimeout(_) => "connect timeout".into(),
        wsx::Error::Tls(_) => "tls".into(),
        e => format!("connect: {:?}", e.kind()).to_lowercase(),
    }
}

/// The error kind of a close frame from the server: `close 1000`, `close 1005` without a code.
pub fn close_kind(frame: Option<wsx::CloseFrame>) -> String {
    format!("close {}", frame.map_or(1005, |f| f.code.0))
}

/// What `recv` returned: a message to handle, or the error kind of the connection's end (the
/// server's close by its code, an error, or the stream's end without a close: 1006).
pub fn end_kind(event: Option<Result<wsx::Message, wsx::Error>>) -> Result<wsx::Message, String> {
    match event {
        Some(Ok(wsx::Message::Close(frame))) => Err(close_kind(frame)),
        Some(Ok(msg)) => Ok(msg),
        Some(Err(e)) => Err(run_error_kind(&e)),
        None => Err("close 1006".into()),
    }
}

/// The error kind a failure on an open connection counts as.
pub fn run_error_kind(e: &wsx::Error) -> String {
    match e {
        wsx::Error::Proto(wsx::proto::Error::Timeout(_)) => "timeout".into(),
        e => match e.close_code() {
            Some(code) => format!("close {}", code.0),
            None => format!("{:?}", e.kind()).to_lowercase(),
        },
    }
}

/// When each message of an open-loop run is due: message `k` of sender `i` is the
/// `(k × senders + i)`-th of the whole run, and the run sends one every `1 / rate` seconds, so
/// the senders take turns and the total rate is even (no burst at each sender's tick).
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    rate: f64,
    senders: u64,
}

impl Schedule {
    /// `rate` in total, spread over `senders`.
    pub fn new(rate: f64, senders: usize) -> Self {
        Self { rate, senders: senders as u64 }
    }

    /// Nanoseconds after the start when message `k` of sender `sender` is due.
    pub fn at(&self, sender: usize, k: u64) -> u64 {
        let slot = k as f64 * self.senders as f64 + sender as f64;
        (slot * 1e9 / self.rate) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_spreads_messages_evenly() {
        // 1000 msgs/s over 4 connections: one message every 1 ms, the connections taking turns.
        let s = Schedule::new(1000.0, 4);
        assert_eq!(s.at(0, 0), 0);
        assert_eq!(s.at(1, 0), 1_000_000);
        assert_eq!(s.at(3, 0), 3_000_000);
        assert_eq!(s.at(0, 1), 4_000_000);
        assert_eq!(s.at(2, 250), (250 * 4 + 2) * 1_000_000);
        // Over one second, exactly `rate` messages are due, whatever the connection count.
        for conns in [1, 3, 7, 64] {
            let s = Schedule::new(1000.0, conns);
            let due: u64 = (0..conns).map(|c| (0..).take_while(|&k| s.at(c, k) < 1_000_000_000).count() as u64).sum();
            assert_eq!(due, 1000, "{conns} conns");
        }
        // Fractional rates and no drift over long runs.
        let s = Schedule::new(0.5, 1);
        assert_eq!(s.at(0, 3), 6_000_000_000);
        let s = Schedule::new(200_000.0, 64);
        assert_eq!(s.at(0, 31_250), 10_000_000_000);
    }

    #[test]
    fn connect_rate_spaces_the_openings() {
        let mut c = Common {
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            threads: 1,
            connect_rate: None,
            timeout: Duration::from_secs(1),
            headers: Vec::new(),
            subprotocols: Vec::new(),
            cacert: None,
            insecure: false,
            http2: false,
            server_pid: Vec::new(),
            json: None,
            fail_if: Vec::new(),
            status: false,
        };
        assert_eq!(c.connect_delay(500), Duration::ZERO);
        c.connect_rate = Some(100.0);
        assert_eq!(c.connect_delay(0), Duration::ZERO);
        assert_eq!(c.connect_delay(50), Duration::from_millis(500));
        assert_eq!(c.connect_delay(250), Duration::from_millis(2500));
        c.connect_rate = Some(0.0);
        assert!(c.check("ws://h/").is_err());
    }
}
