//! `wsx bench connect`: handshakes per second, with the TCP connect, the TLS handshake and the
//! WebSocket upgrade timed apart; or `--ramp N`: N connections opened and held idle, with the
//! server's memory per connection.
//!
//! Each handshake resolves nothing (the address is looked up once), connects TCP, runs TLS
//! (`wss://`; full handshakes unless `--tls-resume`), then the upgrade with the same client the
//! other modes use ([`wsx::ClientBuilder::connect_on`]), and closes with the closing handshake.
//! Proxies are not used: they would be what is measured.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use wsx::proto::deflate::DeflateConfig;
use wsx::{ClientBuilder, CloseCode, MaybeTlsStream, WebSocket, WebSocketConfig};

use super::report::{fmt_count, Report, Stats};
use super::{connect_error_kind, end_kind, lock, run_error_kind, run_threads, Common, Schedule, Thread, Timeline};
use crate::connect::format::parse_secs;

/// Options of `wsx bench connect`.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// The server's URL, `ws://host:port/path` or `wss://…`.
    url: String,
    /// Handshakes in flight. Closed loop: this many run back to back, each starting when one
    /// ends. With --rate or --ramp: the most in flight at once (a handshake due while all are
    /// busy waits, and the wait counts in its time).
    #[arg(short = 'c', long, default_value_t = 16)]
    conns: usize,
    /// Open loop: handshakes per second in total, on a fixed schedule, each timed from its
    /// scheduled start. With --ramp: how fast the connections open.
    #[arg(short = 'r', long)]
    rate: Option<f64>,
    /// Open this many connections and hold them idle (see --hold), then close them; with
    /// --server-pid, report the server's memory per connection.
    #[arg(long, value_name = "N")]
    ramp: Option<u64>,
    /// With --ramp: how long to hold the connections once they are all open (default: --duration).
    #[arg(long, value_parser = parse_secs)]
    hold: Option<Duration>,
    /// Let TLS resume sessions. Off by default: each handshake is a full one, as for a new user.
    #[arg(long)]
    tls_resume: bool,
    /// Offer permessage-deflate.
    #[arg(long)]
    deflate: bool,
    #[command(flatten)]
    common: Common,
}

/// Where and how each handshake goes.
struct Target {
    addr: SocketAddr,
    host: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    builder: ClientBuilder,
    timeout: Duration,
}

/// The times of one handshake's parts, in nanoseconds.
struct Times {
    tcp: u64,
    tls: Option<u64>,
    upgrade: u64,
}

impl Target {
    fn new(args: &ConnectArgs, url: &str) -> anyhow::Result<Self> {
        let uri: http::Uri = url.parse().with_context(|| format!("{url} is not a URL"))?;
        let secure = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => bail!("{url}: the scheme must be ws:// or wss://"),
        };
        let host = uri.host().with_context(|| format!("no host in {url}"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        let tls = if secure {
            let config = args.common.tls()?.build().context("TLS settings")?;
            let mut config = (*config).clone();
            if !args.tls_resume {
                config.resumption = rustls::client::Resumption::disabled();
            }
            Some(Arc::new(config))
        } else {
            None
        };
        let mut config = WebSocketConfig::default();
        if args.deflate {
            config.deflate = Some(DeflateConfig::default());
        }
        let builder = args.common.builder(url, config)?;
        Ok(Self { addr, host, tls, builder, timeout: args.common.timeout })
    }

    /// One opening handshake, its parts timed; on failure, the error's kind.
    async fn handshake(&self) -> Result<(WebSocket<MaybeTlsStream>, Times), String> {
        let work = async {
            let t0 = Instant::now();
            let tcp = match TcpStream::connect(self.addr).await {
                Ok(tcp) => tcp,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Err("connect refused".into()),
                Err(e) => return Err(format!("tcp: {}", e.kind()).to_lowercase()),
            };
            let _ = tcp.set_nodelay(true);
            let t1 = Instant::now();
            let (stream, t2) = match &self.tls {
                Some(config) => {
                    let tls = wsx::tls::connect(config.clone(), &self.host, tcp).await.map_err(|_| "tls".to_owned())?;
                    (MaybeTlsStream::Tls(Box::new(tls)), Some(Instant::now()))
                }
                None => (MaybeTlsStream::Plain(tcp), None),
            };
            let (ws, _) = self.builder.clone().connect_on(stream).await.map_err(|e| connect_error_kind(&e))?;
            let t3 = Instant::now();
            let ns = |a: Instant, b: Instant| b.saturating_duration_since(a).as_nanos() as u64;
            let times = Times { tcp: ns(t0, t1), tls: t2.map(|t2| ns(t1, t2)), upgrade: ns(t2.unwrap_or(t1), t3) };
            Ok((ws, times))
        };
        tokio::time::timeout(self.timeout, work).await.unwrap_or_else(|_| Err("connect timeout".into()))
    }
}

/// Records a completed handshake: its latency (from `from`), its parts, and the connection.
fn record(stats: &Mutex<Stats>, from: Instant, times: &Times, counted: bool, deflated: bool) {
    let mut s = lock(stats);
    s.seen += 1;
    s.connected += 1;
    s.last_open = Some(Instant::now());
    s.deflated += u64::from(deflated);
    if counted {
        s.msgs += 1;
        s.record_latency(Instant::now().saturating_duration_since(from).as_nanos() as u64);
        s.record_phase("tcp", times.tcp);
        if let Some(tls) = times.tls {
            s.record_phase("tls", tls);
        }
        s.record_phase("upgrade", times.upgrade);
    }
}

/// Closes a connection with the closing handshake, within the timeout; a failure is counted.
async fn close(mut ws: WebSocket<MaybeTlsStream>, timeout: Duration, stats: &Mutex<Stats>) {
    match tokio::time::timeout(timeout, ws.close(CloseCode::NORMAL, "")).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => lock(stats).error(format!("closing: {}", run_error_kind(&e)), 1),
        Err(_) => lock(stats).error("closing: timeout", 1),
    }
    lock(stats).closed += 1;
}

fn deflated(ws: &WebSocket<MaybeTlsStream>) -> bool {
    ws.extensions().is_some_and(|x| x.contains("permessage-deflate"))
}

/// Runs `wsx bench connect`.
pub fn run(args: ConnectArgs) -> anyhow::Result<std::process::ExitCode> {
    let url = crate::connect::normalize_url(&args.url);
    args.common.check(&url)?;
    if args.conns == 0 {
        bail!("--conns must be at least 1");
    }
    if args.common.connect_rate.is_some() {
        bail!("--connect-rate does not apply to bench connect: use --rate");
    }
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be a positive number of handshakes per second");
        }
    }
    if args.ramp == Some(0) {
        bail!("--ramp must be at least 1");
    }
    if args.hold.is_some() && args.ramp.is_none() {
        bail!("--hold goes with --ramp");
    }
    let target = Arc::new(Target::new(&args, &url)?);
    let common = args.common.clone();
    let threads = common.threads.min(args.conns);
    // Each thread gets its share of the handshakes in flight: together exactly --conns.
    let conns = args.conns;
    let share = move |t: usize| conns / threads + usize::from(t < conns % threads);
    let (timeline, hold) = match args.ramp {
        Some(n) => {
            let hold = args.hold.unwrap_or(common.duration);
            // Opening is bounded: every handshake by the timeout, `conns` at a time.
            let worst = common.timeout.saturating_mul(u32::try_from(n.div_ceil(args.conns as u64)).unwrap_or(u32::MAX));
            let paced = args.rate.map_or(Duration::ZERO, |r| Duration::from_secs_f64(n as f64 / r));
            let deadline = worst.max(paced + common.timeout) + Duration::from_secs(1);
            (Timeline::Ramp { target: n, hold, deadline }, Some((n, hold, deadline)))
        }
        None => (Timeline::Window { warmup: common.warmup, duration: common.duration, preopened: false }, None),
    };
    let (rate, ramp) = (args.rate, args.ramp);
    let secure = target.tls.is_some();
    let finished = run_threads(&common, threads, "handshakes", timeline, move |t| {
        let target = target.clone();
        async move {
            match hold {
                Some((n, _, deadline)) => {
                    let per_thread = share(t.index);
                    ramp_worker(target, t, n, rate, per_thread, deadline).await
                }
                None => {
                    let per_thread = share(t.index);
                    window_worker(target, t, rate, per_thread).await
                }
            }
        }
    })?;

    let held = finished.stats.counts.get("held").copied().unwrap_or(0);
    let mut extra_lines = Vec::new();
    let mut extra_json = serde_json::Map::new();
    let (shape, duration) = match (ramp, hold) {
        (Some(n), Some((_, hold, _))) => {
            let ramp_s = finished.ramp_s.unwrap_or(finished.window.as_secs_f64());
            extra_lines.push(format!(
                "ramp: {} of {n} connections opened in {ramp_s:.2} s; {held} held for {:.1} s",
                finished.stats.connected,
                hold.as_secs_f64()
            ));
            extra_json.insert("ramp".into(), serde_json::json!(n));
            extra_json.insert("ramp_s".into(), serde_json::json!(ramp_s));
            extra_json.insert("held".into(), serde_json::json!(held));
            extra_json.insert("hold_s".into(), serde_json::json!(hold.as_secs_f64()));
            let pace = rate.map_or_else(|| format!("{} in flight", args.conns), |r| format!("{}/s", fmt_count(r)));
            (
                format!("ramp to {n} connections ({pace}), held {:.1} s", hold.as_secs_f64()),
                Duration::from_secs_f64(ramp_s),
            )
        }
        _ => {
            let shape = match rate {
                Some(r) => {
                    format!("open loop, {} handshakes/s scheduled, at most {} in flight", fmt_count(r), args.conns)
                }
                None => format!("closed loop, {} in flight", args.conns),
            };
            (shape, common.duration)
        }
    };
    let tls = if secure {
        if args.tls_resume {
            ", TLS resumption allowed"
        } else {
            ", full TLS handshakes"
        }
    } else {
        ""
    };
    let report = Report {
        url,
        mode: "connect",
        unit: "handshakes",
        rate_key: "handshakes_per_s",
        shape: format!("{shape}{tls}{}", if args.deflate { ", deflate offered" } else { "" }),
        latency_label: match (rate, ramp) {
            (Some(_), None) => "scheduled start to upgrade done",
            _ => "TCP connect to upgrade done",
        }
        .into(),
        conns: ramp.map_or(args.conns, |n| n as usize),
        threads,
        size: 0,
        depth: None,
        rate: if ramp.is_some() { None } else { rate },
        text: false,
        deflate: args.deflate,
        warmup: if ramp.is_some() { Duration::ZERO } else { common.warmup },
        duration,
        stats: finished.stats,
        cpu_share: finished.cpu_share,
        server: finished.server,
        extra_lines,
        extra_json,
    };
    super::finish(&report, &common)
}

/// Closed loop (`per_thread` handshakes back to back) or open loop (`rate` in total, at most
/// `per_thread` in flight on this thread), for the warm-up and the window.
async fn window_worker(target: Arc<Target>, mut thread: Thread, rate: Option<f64>, per_thread: usize) {
    thread.ready();
    let Some(start) = thread.start().await else { return };
    let stats = thread.stats.clone();
    let (warmup, duration) = thread.window();
    let window_start = start + warmup;
    let end = window_start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    match rate {
        None => {
            for _ in 0..per_thread {
                let (target, stats) = (target.clone(), stats.clone());
                tasks.spawn(async move {
                    tokio::time::sleep_until(start.into()).await;
                    while Instant::now() < end {
                        let t0 = Instant::now();
                        match target.handshake().await {
                            Ok((ws, times)) => {
                                record(&stats, t0, &times, t0 >= window_start, deflated(&ws));
                                close(ws, target.timeout, &stats).await;
                            }
                            Err(kind) => {
                                lock(&stats).connect_error(kind);
                                // Do not spin on a refusing server.
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    }
                });
            }
        }
        Some(rate) => {
            let schedule = Schedule::new(rate, thread.threads);
            let slots = Arc::new(Semaphore::new(per_thread));
            for k in 0.. {
                let due = start + Duration::from_nanos(schedule.at(thread.index, k));
                if due >= end {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                let Ok(permit) = slots.clone().acquire_owned().await else { break };
                let counted = due >= window_start;
                if counted {
                    lock(&stats).record_lag(Instant::now().saturating_duration_since(due).as_nanos() as u64);
                }
                let (target, stats) = (target.clone(), stats.clone());
                tasks.spawn(async move {
                    match target.handshake().await {
                        Ok((ws, times)) => {
                            record(&stats, due, &times, counted, deflated(&ws));
                            close(ws, target.timeout, &stats).await;
                        }
                        Err(kind) => lock(&stats).connect_error(kind),
                    }
                    drop(permit);
                });
                // Finished tasks are reaped as we go, so the set stays small.
                while tasks.try_join_next().is_some() {}
            }
        }
    }
    // Every task ends: a handshake and a close are each bounded by the timeout.
    while tasks.join_next().await.is_some() {}
}

/// `--ramp`: this thread's share of `n` connections, opened at `rate` per second in total (or
/// as fast as `per_thread` in flight allow), then held until the main thread's hold ends.
async fn ramp_worker(
    target: Arc<Target>,
    mut thread: Thread,
    n: u64,
    rate: Option<f64>,
    per_thread: usize,
    deadline: Duration,
) {
    thread.ready();
    let Some(start) = thread.start().await else { return };
    let stats = thread.stats.clone();
    let hold = thread.hold_end();
    let hard = start + deadline + thread.hold_max() + target.timeout * 2 + Duration::from_secs(3);
    let slots = Arc::new(Semaphore::new(per_thread));
    let mut tasks = tokio::task::JoinSet::new();
    for id in (thread.index as u64..n).step_by(thread.threads) {
        if let Some(rate) = rate {
            tokio::time::sleep_until((start + Duration::from_secs_f64(id as f64 / rate)).into()).await;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else { break };
        let (target, stats, mut hold) = (target.clone(), stats.clone(), hold.clone());
        tasks.spawn(async move {
            let conn = async {
                let t0 = Instant::now();
                let (mut ws, times) = match target.handshake().await {
                    Ok(done) => done,
                    Err(kind) => {
                        lock(&stats).connect_error(kind);
                        return;
                    }
                };
                record(&stats, t0, &times, true, deflated(&ws));
                drop(permit);
                // Wait for the hold's end, answering pings; a connection that ends before is
                // counted by how it ended.
                let until = loop {
                    if let Some(at) = *hold.borrow_and_update() {
                        break at;
                    }
                    tokio::select! {
                        changed = hold.changed() => if changed.is_err() { return },
                        event = ws.recv() => if ended(event, &stats) { return },
                    }
                };
                loop {
                    tokio::select! {
                        () = tokio::time::sleep_until(until.into()) => break,
                        event = ws.recv() => if ended(event, &stats) { return },
                    }
                }
                lock(&stats).count("held", 1);
                close(ws, target.timeout, &stats).await;
            };
            if tokio::time::timeout_at(hard.into(), conn).await.is_err() {
                lock(&stats).error("timeout", 1);
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// Whether a held connection's event ends it (counted as an error: an idle connection should
/// not end while held).
fn ended(event: Option<Result<wsx::Message, wsx::Error>>, stats: &Mutex<Stats>) -> bool {
    let Err(kind) = end_kind(event) else { return false };
    let mut s = lock(stats);
    s.error(format!("{kind} while held"), 1);
    s.closed += 1;
    true
}
