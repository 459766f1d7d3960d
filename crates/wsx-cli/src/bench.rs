//! `wsx bench`: a WebSocket load generator that measures latency honestly.
//!
//! `wsx bench echo URL` drives an echo server in closed loop (`--depth` messages in flight per
//! connection: the next one leaves when an echo returns) or open loop (`--rate` messages per
//! second on a fixed schedule, each timed from its *scheduled* send, so a server's stall is
//! charged to every message it delayed: no coordinated omission). See `docs/bench.md`.
//!
//! Shape: `--threads` OS threads, each with a current-thread tokio runtime and its share of the
//! connections (one task each). A task records into its thread's [`Stats`]; the main thread
//! merges them once a second for the status line and at the end for the report. Every echo is
//! checked ([`payload`]); the payload carries its sequence number and scheduled time, so the
//! generator keeps no per-message state and its memory does not grow with the rate.

mod payload;
mod report;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use tokio::sync::watch;
use wsx::proto::deflate::DeflateConfig;
use wsx::tls::ClientTls;
use wsx::{ClientBuilder, CloseCode, Message, WebSocketConfig};

use self::payload::Payloads;
use self::report::{fmt_count, fmt_duration, FailIf, Report, Stats};
use crate::connect::format::{parse_secs, parse_size};

const AFTER_HELP: &str = "\
Modes:
  echo   Send messages to an echo server and time each echo (checked byte for byte).

Closed loop (default): each connection keeps --depth messages in flight; the next leaves when an
echo returns. It measures the most the server can echo, but when the server stalls the
generator stalls with it and sends nothing meanwhile, so a stall delays only the few messages
in flight: it shows in max, hardly in p99 (coordinated omission).

Open loop (--rate N): N messages per second in total leave on a fixed schedule, spread evenly
over the connections, whatever the server does. Each latency runs from the *scheduled* send time,
so time the server makes a user wait is counted for every message it delays: a 200 ms stall
every second shows as a p99 near 200 ms. The generator's own lag (actual − scheduled send) is
reported; when it is large, the generator, not the server, is behind.

Examples:
  wsx bench echo ws://127.0.0.1:8080/echo
      Closed loop, 64 connections × 16 in flight × 20-byte binary messages, 10 s.
  wsx bench echo --conns 1 --depth 1 --size 1k --duration 5 ws://127.0.0.1:8080/echo
      The round trip of one message at a time.
  wsx bench echo --rate 50000 --conns 100 --fail-if 'p99>20ms' ws://host/echo
      Open loop: 50k msgs/s; exit status 1 if p99 is above 20 ms.
  wsx bench echo --text --deflate --size 4k --json out.json wss://host/echo --cacert ca.pem
      JSON-like text compressed with permessage-deflate over TLS; every figure to out.json.

Exit status: 0 when the run had no error and met every --fail-if; 1 otherwise (any error,
including an echo mismatch, fails unless an 'errors' condition of --fail-if sets the threshold).";

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
    Echo(EchoArgs),
}

/// Options of `wsx bench echo`.
#[derive(Args, Debug, Clone)]
pub struct EchoArgs {
    /// The echo server's URL, `ws://host:port/path` or `wss://…`.
    url: String,
    /// Connections, opened before the clock starts.
    #[arg(short = 'c', long, default_value_t = 64)]
    conns: usize,
    /// Message size in bytes (k, M: powers of 1024); at least 20 (binary) or 40 (text): the
    /// sequence number, send time and checksum each message carries. Default: that minimum.
    #[arg(short = 's', long, value_parser = parse_size)]
    size: Option<usize>,
    /// Closed loop: messages in flight per connection.
    #[arg(short = 'd', long, default_value_t = 16, conflicts_with = "rate")]
    depth: usize,
    /// Open loop: messages per second in total, on a fixed schedule spread over the connections.
    #[arg(short = 'r', long)]
    rate: Option<f64>,
    /// How long to measure (after the warm-up), e.g. 10, 1.5, 500ms.
    #[arg(long, value_parser = parse_secs, default_value = "10")]
    duration: Duration,
    /// Traffic before the measurement starts, not counted (0 for none).
    #[arg(long, value_parser = parse_secs_or_zero, default_value = "1")]
    warmup: Duration,
    /// Generator threads, each a current-thread runtime with its share of the connections.
    #[arg(short = 't', long, default_value_t = 1)]
    threads: usize,
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
    /// An echo outstanding this long is a timeout; it also bounds the wait for the last echoes
    /// after the run and each connection's opening handshake.
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
    /// Testing the generator itself: block each generator thread this long once a second (a
    /// stand-in for a GC pause or a descheduled thread), to check that open loop charges the
    /// delay to the messages it held up.
    #[arg(long, hide = true, value_parser = parse_secs)]
    test_hiccup: Option<Duration>,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.mode {
        Mode::Echo(echo) => {
            // The generator runs on its own threads; wait for them off the caller's runtime.
            tokio::task::spawn_blocking(move || run_echo(echo)).await.context("the benchmark thread failed")?
        }
    }
}

/// What every connection task needs to know.
struct Plan {
    builder: ClientBuilder,
    payloads: Payloads,
    depth: usize,
    /// Open loop: the schedule.
    schedule: Option<Schedule>,
    warmup: Duration,
    duration: Duration,
    timeout: Duration,
    hiccup: Option<Duration>,
}

/// When each message of an open-loop run is due: message `k` of connection `i` is the
/// `(k × conns + i)`-th of the whole run, and the run sends one every `1 / rate` seconds, so the
/// connections take turns and the total rate is even (no burst at each connection's tick).
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    rate: f64,
    conns: u64,
}

impl Schedule {
    pub fn new(rate: f64, conns: usize) -> Self {
        Self { rate, conns: conns as u64 }
    }

    /// Nanoseconds after the start when message `k` of connection `conn` is due.
    pub fn at(&self, conn: usize, k: u64) -> u64 {
        let slot = k as f64 * self.conns as f64 + conn as f64;
        (slot * 1e9 / self.rate) as u64
    }
}

fn builder(args: &EchoArgs) -> anyhow::Result<ClientBuilder> {
    let url = crate::connect::normalize_url(&args.url);
    let size = args.size.unwrap_or(payload::header_len(args.text));
    let mut b = ClientBuilder::new(url);
    for (name, value) in crate::connect::parse_headers(&args.headers)? {
        b = b.header(&name, &value);
    }
    for p in &args.subprotocols {
        b = b.protocol(p);
    }
    // Set here, not with `ClientBuilder::handshake_timeout`: `config()` replaces the whole config.
    let mut config = WebSocketConfig::default();
    config.proto.handshake_timeout = args.timeout;
    config.proto.close_timeout = Duration::from_secs(2).min(args.timeout);
    config.proto.write_timeout = Some(args.timeout);
    // The library stops reading while more than the high-water mark waits to be written; with
    // a server that does the same, both would wait for the write timeout. So the mark is set
    // above anything the generator queues: closed loop queues at most --depth messages, and
    // open loop stops queueing at OPEN_LOOP_QUEUE (the late messages' lag is then reported).
    config.proto.write_buffer_high_water =
        (args.depth.saturating_mul(size).saturating_mul(2)).max(OPEN_LOOP_QUEUE * 4).saturating_add(size);
    if args.deflate {
        config.deflate = Some(DeflateConfig::default());
    }
    let mut tls = ClientTls::new();
    if let Some(ca) = &args.cacert {
        tls = tls.add_ca_pem_file(ca).context("--cacert")?;
    }
    if args.insecure {
        tls = tls.danger_accept_invalid_certs();
    }
    Ok(b.config(config).tls(tls))
}

/// Open loop: while this many bytes wait to be written, due messages wait in the generator
/// (their latency still runs from their scheduled time), and it keeps reading echoes.
/// Queued messages are written by `recv` as it waits for echoes.
const OPEN_LOOP_QUEUE: usize = 1 << 20;

fn run_echo(mut args: EchoArgs) -> anyhow::Result<ExitCode> {
    let size = *args.size.get_or_insert(payload::header_len(args.text));
    if args.conns == 0 || args.threads == 0 || args.depth == 0 {
        bail!("--conns, --threads and --depth must be at least 1");
    }
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be a positive number of messages per second");
        }
    }
    if args.duration.is_zero() {
        bail!("--duration must be above 0");
    }
    let url = crate::connect::normalize_url(&args.url);
    if args.insecure && url.starts_with("wss://") {
        eprintln!("wsx: warning: --insecure: the server's certificate is not verified");
    }
    let threads = args.threads.min(args.conns);
    let plan = Arc::new(Plan {
        builder: builder(&args)?,
        payloads: Payloads::new(size, args.text).map_err(anyhow::Error::msg)?,
        depth: args.depth,
        schedule: args.rate.map(|r| Schedule::new(r, args.conns)),
        warmup: args.warmup,
        duration: args.duration,
        timeout: args.timeout,
        hiccup: args.test_hiccup,
    });

    // Start the threads; each connects its share, says so, and waits for the common start.
    let (start_tx, start_rx) = watch::channel::<Option<Instant>>(None);
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let mut shared = Vec::new();
    let mut handles = Vec::new();
    for t in 0..threads {
        let ids: Vec<usize> = (t..args.conns).step_by(threads).collect();
        let stats = Arc::new(Mutex::new(Stats::default()));
        shared.push(stats.clone());
        let (plan, start_rx, ready_tx) = (plan.clone(), start_rx.clone(), ready_tx.clone());
        let handle = std::thread::Builder::new()
            .name(format!("wsx-bench-{t}"))
            .spawn(move || worker(plan, ids, stats, start_rx, ready_tx))
            .context("cannot start a generator thread")?;
        handles.push(handle);
    }
    drop(ready_tx);
    // Connecting is bounded by the handshake timeout of each connection.
    for _ in 0..threads {
        if ready_rx.recv().is_err() {
            break;
        }
    }
    let start = Instant::now() + Duration::from_millis(5);
    let _ = start_tx.send(Some(start));
    let window_start = start + args.warmup;
    let end = window_start + args.duration;

    // Nothing to measure without a connection: report the connect errors at once.
    let any_open = shared.iter().any(|t| lock(t).connected > 0);
    let end = if any_open { end } else { start };
    let live = any_open && (args.status || std::io::stderr().is_terminal());
    let cpu_at = |at: Instant| -> Option<f64> {
        sleep_until(at);
        cpu_seconds()
    };
    let mut cpu_before = None;
    let mut last_seen = 0;
    let mut tick = start;
    let mut cpu_window_started = false;
    while tick < end {
        tick = (tick + Duration::from_secs(1)).min(end);
        if !cpu_window_started && window_start <= tick {
            cpu_before = cpu_at(window_start);
            cpu_window_started = true;
        }
        sleep_until(tick);
        if live {
            let mut s = Stats::default();
            for t in &shared {
                s.merge(&lock(t));
            }
            let rate = s.echoes_seen - last_seen;
            last_seen = s.echoes_seen;
            let p99 = s.percentile(99.0).map_or_else(|| "-".into(), fmt_duration);
            let phase = if tick <= window_start { " (warm-up)" } else { "" };
            eprint!(
                "\r\x1b[K{:>5.1} s{phase}: {} msgs/s, p99 {p99}, errors {}",
                tick.saturating_duration_since(start).as_secs_f64(),
                fmt_count(rate as f64),
                s.error_count()
            );
        }
    }
    let cpu_after = cpu_seconds();
    if live {
        eprintln!();
    }
    for h in handles {
        if h.join().is_err() {
            bail!("a generator thread panicked");
        }
    }
    let mut stats = Stats::default();
    for t in &shared {
        stats.merge(&lock(t));
    }
    let cpu_share =
        cpu_before.zip(cpu_after).map(|(b, a)| (a - b) / (args.duration.as_secs_f64() * threads as f64).max(1e-9));
    let report = Report {
        url,
        mode: "echo",
        conns: args.conns,
        threads,
        size,
        depth: args.rate.is_none().then_some(args.depth),
        rate: args.rate,
        text: args.text,
        deflate: args.deflate,
        warmup: args.warmup,
        duration: args.duration,
        stats,
        cpu_share,
    };
    print!("{}", report.summary());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report.json())?;
        std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mut failed = Vec::new();
    if !args.fail_if.iter().any(FailIf::is_errors) && report.stats.error_count() > 0 {
        failed.push(format!("{} errors", report.stats.error_count()));
    }
    if report.stats.connected == 0 {
        failed.push("no connection could be opened".into());
    }
    for cond in &args.fail_if {
        if cond.violated(&report) {
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux configuration that matters.
    Some((utime + stime) / 100.0)
}

/// One generator thread: a current-thread runtime running its connections.
fn worker(
    plan: Arc<Plan>,
    ids: Vec<usize>,
    stats: Arc<Mutex<Stats>>,
    mut start_rx: watch::Receiver<Option<Instant>>,
    ready: mpsc::Sender<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            lock(&stats).error(format!("runtime: {e}"), 1);
            let _ = ready.send(());
            return;
        }
    };
    rt.block_on(async move {
        let mut connecting = tokio::task::JoinSet::new();
        for id in ids {
            let builder = plan.builder.clone();
            connecting.spawn(async move { (id, builder.connect().await) });
        }
        let mut open = Vec::new();
        while let Some(joined) = connecting.join_next().await {
            let Ok((id, result)) = joined else { continue };
            match result {
                Ok((ws, _)) => {
                    let deflated = ws.extensions().is_some_and(|x| x.contains("permessage-deflate"));
                    let mut s = lock(&stats);
                    s.connected += 1;
                    s.deflated += u64::from(deflated);
                    drop(s);
                    open.push((id, ws));
                }
                Err(e) => lock(&stats).error(connect_error_kind(&e), 1),
            }
        }
        let _ = ready.send(());
        let start = loop {
            if let Some(at) = *start_rx.borrow_and_update() {
                break at;
            }
            if start_rx.changed().await.is_err() {
                return;
            }
        };
        let mut running = tokio::task::JoinSet::new();
        if let Some(hiccup) = plan.hiccup {
            let end = start + plan.warmup + plan.duration;
            tokio::spawn(async move {
                let mut at = start;
                while at < end {
                    tokio::time::sleep_until(at.into()).await;
                    // Blocks the whole thread on purpose.
                    std::thread::sleep(hiccup);
                    at += Duration::from_secs(1);
                }
            });
        }
        for (id, ws) in open {
            let (plan, stats) = (plan.clone(), stats.clone());
            // The hard deadline: the run, the wait for the last echoes, the closing handshake.
            let hard = start + plan.warmup + plan.duration + plan.timeout + Duration::from_secs(3);
            running.spawn(async move {
                let conn = drive(ws, id, &plan, start, &stats);
                if tokio::time::timeout_at(hard.into(), conn).await.is_err() {
                    lock(&stats).error("timeout", 1);
                }
            });
        }
        while running.join_next().await.is_some() {}
    });
}

fn connect_error_kind(e: &wsx::Error) -> String {
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

fn run_error_kind(e: &wsx::Error) -> String {
    match e {
        wsx::Error::Proto(wsx::proto::Error::Timeout(_)) => "timeout".into(),
        e => match e.close_code() {
            Some(code) => format!("close {}", code.0),
            None => format!("{:?}", e.kind()).to_lowercase(),
        },
    }
}

/// A connection's samples, handed to its thread's [`Stats`] in batches (a few per second, and
/// when dropped, also when the connection's future is cancelled) rather than one lock per echo.
struct Local<'a> {
    stats: &'a Mutex<Stats>,
    latency: Vec<u64>,
    lag: Vec<u64>,
    echoes: u64,
    flushed_at: Instant,
}

impl<'a> Local<'a> {
    const BATCH: usize = 512;
    const EVERY: Duration = Duration::from_millis(100);

    fn new(stats: &'a Mutex<Stats>) -> Self {
        let v = || Vec::with_capacity(Self::BATCH);
        Self { stats, latency: v(), lag: v(), echoes: 0, flushed_at: Instant::now() }
    }

    fn maybe_flush(&mut self, now: Instant) {
        if self.latency.len() >= Self::BATCH || self.lag.len() >= Self::BATCH || now >= self.flushed_at + Self::EVERY {
            self.flush();
            self.flushed_at = now;
        }
    }

    fn flush(&mut self) {
        let mut s = lock(self.stats);
        s.echoes_seen += std::mem::take(&mut self.echoes);
        s.msgs += self.latency.len() as u64;
        for ns in self.latency.drain(..) {
            s.record_latency(ns);
        }
        for ns in self.lag.drain(..) {
            s.record_lag(ns);
        }
    }
}

impl Drop for Local<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// One connection's run: sends on its schedule (open loop) or as echoes return (closed loop),
/// checks and times every echo, then waits for the echoes still due and closes.
async fn drive(
    mut ws: wsx::WebSocket<wsx::MaybeTlsStream>,
    id: usize,
    plan: &Plan,
    start: Instant,
    stats: &Mutex<Stats>,
) {
    let payloads = &plan.payloads;
    let window = (plan.warmup.as_nanos() as u64, (plan.warmup + plan.duration).as_nanos() as u64);
    let in_window = |sched: u64| sched >= window.0 && sched < window.1;
    let end = start + plan.warmup + plan.duration;
    let since_start = |at: Instant| at.saturating_duration_since(start).as_nanos() as u64;
    let message = |seq: u64, sched: u64| {
        let data = payloads.make(seq, sched);
        if payloads.text() {
            // The filler and the hex header are ASCII.
            Message::Text(wsx::Utf8Bytes::try_from(data).unwrap_or_else(|_| wsx::Utf8Bytes::from("")))
        } else {
            Message::Binary(data)
        }
    };

    let mut local = Local::new(stats);
    let mut next_seq = 0u64;
    let mut expected = 0u64;
    let mut last_progress = Instant::now();
    let mut sending = true;
    // Open loop: due messages held back because the output queue is full.
    let mut held_back = false;
    let mut drain_until: Option<Instant> = None;

    tokio::time::sleep_until(start.into()).await;
    if plan.schedule.is_none() {
        for _ in 0..plan.depth {
            let now = since_start(Instant::now());
            if let Err(e) = ws.feed(message(next_seq, now)).await {
                lock(stats).error(run_error_kind(&e), 1);
                return;
            }
            next_seq += 1;
        }
        last_progress = Instant::now();
    }
    loop {
        let now = Instant::now();
        // Closed loop stops at the end; open loop once every message scheduled before it left.
        let sent_all = match &plan.schedule {
            Some(s) => start + Duration::from_nanos(s.at(id, next_seq)) >= end,
            None => now >= end,
        };
        if sending && sent_all {
            sending = false;
            drain_until = Some(now + plan.timeout);
        }
        let outstanding = next_seq - expected;
        if !sending && outstanding == 0 {
            break;
        }
        let next_send = match (&plan.schedule, sending) {
            // Held back: look again soon, reading meanwhile.
            (Some(_), true) if held_back => Some(now + Duration::from_millis(1)),
            (Some(s), true) => Some(start + Duration::from_nanos(s.at(id, next_seq))),
            _ => None,
        };
        let stall_at = (outstanding > 0).then(|| last_progress + plan.timeout);
        let closed_end = (sending && plan.schedule.is_none()).then_some(end);
        let wake = [next_send, closed_end, stall_at, drain_until].into_iter().flatten().min();
        let wake = wake.unwrap_or(now + plan.timeout);
        tokio::select! {
            biased;
            event = ws.recv() => {
                let msg = match event {
                    None => {
                        lock(stats).error("close 1006", 1);
                        return;
                    }
                    Some(Err(e)) => {
                        lock(stats).error(run_error_kind(&e), 1);
                        return;
                    }
                    Some(Ok(msg)) => msg,
                };
                let (text, data) = match msg {
                    Message::Text(t) => (true, t.into_bytes()),
                    Message::Binary(b) => (false, b),
                    Message::Close(frame) => {
                        let code = frame.map_or(1005, |f| f.code.0);
                        lock(stats).error(format!("close {code}"), 1);
                        return;
                    }
                    _ => continue,
                };
                let at = Instant::now();
                last_progress = at;
                local.echoes += 1;
                match payloads.check(text, &data) {
                    Ok((seq, sched)) if seq == expected => {
                        expected += 1;
                        if in_window(sched) {
                            local.latency.push(since_start(at).saturating_sub(sched));
                        }
                    }
                    Ok((seq, _)) => {
                        // Lost, duplicated or reordered.
                        lock(stats).error("echo out of order", 1);
                        expected = expected.max(seq.saturating_add(1)).min(next_seq);
                    }
                    Err(_) => {
                        lock(stats).error("echo mismatch", 1);
                        expected += 1;
                    }
                }
                local.maybe_flush(at);
                if sending && plan.schedule.is_none() && next_seq - expected < plan.depth as u64 {
                    // Closed loop: the next message leaves now; `recv` flushes it when it waits.
                    if let Err(e) = ws.feed(message(next_seq, since_start(Instant::now()))).await {
                        lock(stats).error(run_error_kind(&e), 1);
                        return;
                    }
                    next_seq += 1;
                }
            }
            () = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                if let (Some(s), true) = (&plan.schedule, sending) {
                    // Open loop: everything due leaves now, stamped with its scheduled time.
                    let was_idle = next_seq == expected;
                    let mut sent = 0;
                    held_back = false;
                    while sent < 1024 {
                        if ws.buffered_amount() >= OPEN_LOOP_QUEUE {
                            held_back = true;
                            break;
                        }
                        let sched = s.at(id, next_seq);
                        if start + Duration::from_nanos(sched) > now || start + Duration::from_nanos(sched) >= end {
                            break;
                        }
                        if let Err(e) = ws.feed(message(next_seq, sched)).await {
                            lock(stats).error(run_error_kind(&e), 1);
                            return;
                        }
                        if in_window(sched) {
                            local.lag.push(since_start(Instant::now()).saturating_sub(sched));
                        }
                        next_seq += 1;
                        sent += 1;
                    }
                    local.maybe_flush(now);
                    if was_idle && sent > 0 {
                        last_progress = now;
                    }
                    // No flush here: it would stop reading until the server takes every byte.
                    // `recv`, polled next, writes the queue while it waits for echoes.
                }
                let outstanding = next_seq - expected;
                let stalled = outstanding > 0 && now >= last_progress + plan.timeout;
                let drained = drain_until.is_some_and(|d| now >= d);
                if stalled || drained {
                    lock(stats).error("timeout", outstanding);
                    break;
                }
            }
        }
    }
    // Close politely, within the close timeout; the result no longer matters.
    let _ = tokio::time::timeout(plan.timeout, ws.close(CloseCode::NORMAL, "")).await;
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
}
