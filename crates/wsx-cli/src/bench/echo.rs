//! `wsx bench echo`: closed or open loop against an echo server, every echo checked.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use wsx::proto::deflate::DeflateConfig;
use wsx::proto::MessageRef;
use wsx::{ClientBuilder, MaybeTlsStream, Message, WebSocketConfig};

use super::payload::{Mismatch, Payloads};
use super::report::{Report, Stats};
use super::wire::{Echo, Io, Wire};
use super::{
    close_kind, connect_error_kind, lock, run_error_kind, run_threads, Common, PayloadArgs, Schedule, Thread, Timeline,
};

/// Options of `wsx bench echo`.
#[derive(Args, Debug, Clone)]
pub struct EchoArgs {
    /// The echo server's URL, `ws://host:port/path` or `wss://…`.
    url: String,
    /// Connections, opened before the clock starts.
    #[arg(short = 'c', long, default_value_t = 64)]
    conns: usize,
    /// Closed loop: messages in flight per connection.
    #[arg(short = 'd', long, default_value_t = 16, conflicts_with = "rate")]
    depth: usize,
    /// Open loop: messages per second in total, on a fixed schedule spread over the connections.
    #[arg(short = 'r', long)]
    rate: Option<f64>,
    /// With --http2: WebSockets per HTTP/2 connection, each its own stream (e.g. --conns 1000
    /// --streams-per-connection 1000: one connection per generator thread carries them all).
    /// Default 1: a connection each. A server allows some number of streams per connection
    /// (SETTINGS_MAX_CONCURRENT_STREAMS: wsx serve 1,024, hyper 200 by default); WebSockets
    /// beyond it wait for a free stream and fail at --timeout.
    #[arg(long, default_value_t = 1, requires = "http2", value_name = "N")]
    streams_per_connection: usize,
    #[command(flatten)]
    payload: PayloadArgs,
    #[command(flatten)]
    common: Common,
    /// The ceiling: drive a plain TCP byte echo (no handshake; our masked frames come back as
    /// they were sent and are unmasked on the way in). For `scripts/bench-servers`.
    #[arg(long, hide = true, conflicts_with = "http2")]
    raw: bool,
    /// Testing the generator itself: block each generator thread this long once a second (a
    /// stand-in for a GC pause or a descheduled thread), to check that open loop charges the
    /// delay to the messages it held up.
    #[arg(long, hide = true, value_parser = super::parse_secs)]
    test_hiccup: Option<Duration>,
}

/// Connection settings for echo traffic of `size`-byte messages.
fn config(args: &EchoArgs, size: usize) -> WebSocketConfig {
    let mut config = WebSocketConfig::default();
    // Senders wait while more than the high-water mark waits to be written (and the library
    // stops reading if the server pings meanwhile). So the mark is set above anything the
    // generator queues: closed loop queues at most --depth messages, and
    // open loop stops queueing at OPEN_LOOP_QUEUE (the late messages' lag is then reported).
    config.proto.write_buffer_high_water =
        (args.depth.saturating_mul(size).saturating_mul(2)).max(OPEN_LOOP_QUEUE * 4).saturating_add(size);
    if args.payload.deflate {
        config.deflate = Some(DeflateConfig::default());
    }
    config
}

/// Runs `wsx bench echo`.
pub fn run(args: EchoArgs) -> anyhow::Result<std::process::ExitCode> {
    let size = args.payload.size();
    let url = crate::connect::normalize_url(&args.url);
    args.common.check(&url)?;
    if args.conns == 0 || args.depth == 0 {
        bail!("--conns and --depth must be at least 1");
    }
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be a positive number of messages per second");
        }
    }
    if args.streams_per_connection == 0 {
        bail!("--streams-per-connection must be at least 1");
    }
    let threads = args.common.threads.min(args.conns);
    let shared_h2 = match args.streams_per_connection {
        1 => None,
        per_connection => Some(SharedH2 {
            url: url.clone(),
            tls: args.common.tls()?,
            request: args.common.request_config()?,
            per_connection,
            timeout: args.common.timeout,
        }),
    };
    let raw = match args.raw {
        false => None,
        true => {
            let Some(addr) = url.strip_prefix("ws://").map(|rest| rest.trim_end_matches('/')) else {
                bail!("--raw takes ws://HOST:PORT/");
            };
            Some((addr.to_owned(), config(&args, size)))
        }
    };
    let plan = Arc::new(Plan {
        builder: args.common.builder(&url, config(&args, size))?,
        config: args.common.timeouts(config(&args, size)),
        shared_h2,
        raw,
        payloads: args.payload.payloads()?,
        depth: args.depth,
        schedule: args.rate.map(|r| Schedule::new(r, args.conns)),
        warmup: args.common.warmup,
        duration: args.common.duration,
        timeout: args.common.timeout,
        hiccup: args.test_hiccup,
        conns: args.conns,
        common: args.common.clone(),
    });
    let timeline = Timeline::Window { warmup: args.common.warmup, duration: args.common.duration, preopened: true };
    let finished = run_threads(&args.common, threads, "msgs", timeline, move |t| worker(plan.clone(), t))?;
    let loop_shape = match args.rate {
        Some(rate) => format!("open loop, {} msgs/s scheduled", super::report::fmt_count(rate)),
        None => format!("closed loop, depth {}", args.depth),
    };
    let report = Report {
        url,
        mode: "echo",
        unit: "messages",
        rate_key: "msgs_per_s",
        shape: format!(
            "{loop_shape}; {} conns ({} connected), {}",
            args.conns,
            finished.stats.connected,
            args.payload.describe(),
        ),
        latency_label: if args.rate.is_some() { "from scheduled send" } else { "from actual send" }.into(),
        conns: args.conns,
        threads,
        size,
        depth: args.rate.is_none().then_some(args.depth),
        rate: args.rate,
        text: args.payload.text,
        deflate: args.payload.deflate,
        warmup: args.common.warmup,
        duration: args.common.duration,
        stats: finished.stats,
        cpu_share: finished.cpu_share,
        server: finished.server,
        extra_lines: Vec::new(),
        extra_json: serde_json::Map::new(),
    };
    super::finish(&report, &args.common)
}

/// `--streams-per-connection`: WebSockets opened as streams of shared HTTP/2 connections.
struct SharedH2 {
    url: String,
    tls: wsx::tls::ClientTls,
    request: wsx::proto::handshake::ClientRequestConfig,
    per_connection: usize,
    timeout: Duration,
}

impl SharedH2 {
    /// A new HTTP/2 connection to the server, its SETTINGS in, within the timeout.
    async fn connect(&self) -> Result<wsx::h2::Http2Connection, wsx::Error> {
        let mut config = wsx::h2::Http2Config::default();
        config.handshake_timeout = self.timeout;
        if self.url.starts_with("wss://") {
            wsx::h2::connect_tls(&self.url, &self.tls, &config).await
        } else {
            wsx::h2::connect(&self.url, &config).await
        }
    }

    /// A WebSocket on `h2`, as the `MaybeTlsStream` the rest of the generator drives.
    async fn open(
        &self,
        h2: &wsx::h2::Http2Connection,
        config: &WebSocketConfig,
    ) -> Result<Wire<MaybeTlsStream>, wsx::Error> {
        let (ws, _) = h2.open(&self.url, self.request.clone(), config).await?;
        let protocol = ws.protocol().map(str::to_owned);
        let extensions = ws.extensions().map(str::to_owned);
        let (stream, conn, leftover) = ws.into_parts();
        let ws =
            wsx::WebSocket::from_parts(MaybeTlsStream::Http2(Box::new(stream)), conn, leftover, protocol, extensions);
        Ok(Wire::new(ws))
    }
}

/// What every connection task needs to know.
struct Plan {
    builder: ClientBuilder,
    /// The connection settings (for WebSockets on shared HTTP/2 connections).
    config: WebSocketConfig,
    shared_h2: Option<SharedH2>,
    /// `--raw`: the byte echo's address, and the connection settings.
    raw: Option<(String, WebSocketConfig)>,
    payloads: Payloads,
    depth: usize,
    /// Open loop: the schedule.
    schedule: Option<Schedule>,
    warmup: Duration,
    duration: Duration,
    timeout: Duration,
    hiccup: Option<Duration>,
    /// Connections in all.
    conns: usize,
    /// For `--connect-rate`.
    common: Common,
}

/// Open loop: while this many bytes wait to be written, due messages wait in the generator
/// (their latency still runs from their scheduled time), and it keeps reading echoes.
/// Queued messages are written by `recv` as it waits for echoes.
const OPEN_LOOP_QUEUE: usize = 1 << 20;

/// One generator thread: opens its share of the connections (every `threads`-th, from its
/// index), then runs them.
async fn worker(plan: Arc<Plan>, mut thread: Thread) {
    let stats = thread.stats.clone();
    let opened = Instant::now();
    let mut connecting = tokio::task::JoinSet::new();
    // --streams-per-connection: this thread's WebSockets share HTTP/2 connections, made by the
    // first of each group to need one (a failed one fails its whole group).
    let mine = (thread.index..plan.conns).step_by(thread.threads).count();
    let group_count = plan.shared_h2.as_ref().map_or(0, |h2| mine.div_ceil(h2.per_connection));
    // A group's failure is kept as its kind (refused, TLS, timeout, …), counted for every member.
    let groups: Arc<Vec<tokio::sync::OnceCell<Result<wsx::h2::Http2Connection, String>>>> =
        Arc::new((0..group_count).map(|_| tokio::sync::OnceCell::new()).collect());
    for (position, id) in (thread.index..plan.conns).step_by(thread.threads).enumerate() {
        let plan = plan.clone();
        let groups = groups.clone();
        let at = opened + plan.common.connect_delay(id);
        connecting.spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let conn = match (&plan.raw, &plan.shared_h2) {
                (None, Some(shared)) => {
                    let group = &groups[position / shared.per_connection];
                    match group
                        .get_or_init(|| async { shared.connect().await.map_err(|e| connect_error_kind(&e)) })
                        .await
                    {
                        Ok(h2) => shared.open(h2, &plan.config).await.map_err(|e| connect_error_kind(&e)),
                        Err(kind) => Err(kind.clone()),
                    }
                }
                (None, None) => plan
                    .builder
                    .clone()
                    .connect()
                    .await
                    .map(|(ws, _)| Wire::new(ws))
                    .map_err(|e| connect_error_kind(&e)),
                (Some((addr, config)), _) => {
                    let connecting = super::raw::connect(addr, config);
                    match tokio::time::timeout(plan.timeout, connecting).await {
                        Ok(Ok(wire)) => Ok(wire),
                        Ok(Err(e)) => Err(connect_error_kind(&wsx::Error::Io(e))),
                        Err(_) => Err(connect_error_kind(&wsx::Error::HandshakeTimeout(plan.timeout))),
                    }
                }
            };
            (id, conn)
        });
    }
    let mut open = Vec::new();
    while let Some(joined) = connecting.join_next().await {
        let Ok((id, result)) = joined else { continue };
        match result {
            Ok(conn) => {
                let deflated = conn.is_deflate();
                let mut s = lock(&stats);
                s.connected += 1;
                s.deflated += u64::from(deflated);
                drop(s);
                open.push((id, conn));
            }
            Err(kind) => lock(&stats).connect_error(kind),
        }
    }
    let Some(start) = thread.start().await else { return };
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
    for (id, conn) in open {
        let (plan, stats) = (plan.clone(), stats.clone());
        // The hard deadline: the run, the wait for the last echoes, the closing handshake.
        let hard = start + plan.warmup + plan.duration + plan.timeout + Duration::from_secs(3);
        running.spawn(async move {
            // Bounded by `hard` (checked by its own timer, not a wrapper polled per read).
            drive(conn, id, &plan, start, hard, &stats).await;
            lock(&stats).closed += 1;
        });
    }
    while running.join_next().await.is_some() {}
}

/// A connection's samples, handed to its thread's [`Stats`] in batches (a few per second, and
/// when dropped, also when the connection's future is cancelled) rather than one lock per echo.
///
/// Latencies are kept as runs of equal values: the echoes of one read share its clock reading,
/// and in closed loop the messages one read released share their send time, so a read's worth
/// of samples is usually one run, recorded into the histogram once with its count.
struct Local<'a> {
    stats: &'a Mutex<Stats>,
    /// (latency, how many echoes had it), in arrival order.
    latency: Vec<(u64, u64)>,
    lag: Vec<u64>,
    echoes: u64,
    flushed_at: Instant,
}

impl<'a> Local<'a> {
    const BATCH: usize = 512;
    const EVERY: Duration = Duration::from_millis(100);

    fn new(stats: &'a Mutex<Stats>) -> Self {
        Self {
            stats,
            latency: Vec::with_capacity(Self::BATCH),
            lag: Vec::with_capacity(Self::BATCH),
            echoes: 0,
            flushed_at: Instant::now(),
        }
    }

    /// One echo's latency.
    fn latency(&mut self, ns: u64) {
        match self.latency.last_mut() {
            Some((value, count)) if *value == ns => *count += 1,
            _ => self.latency.push((ns, 1)),
        }
    }

    fn maybe_flush(&mut self, now: Instant) {
        if self.latency.len() >= Self::BATCH || self.lag.len() >= Self::BATCH || now >= self.flushed_at + Self::EVERY {
            self.flush();
            self.flushed_at = now;
        }
    }

    fn flush(&mut self) {
        let mut s = lock(self.stats);
        s.seen += std::mem::take(&mut self.echoes);
        for (ns, n) in self.latency.drain(..) {
            s.msgs += n;
            s.record_latency_n(ns, n);
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
///
/// One timer serves the connection: it is set to the next moment something is due (an
/// open-loop send, the end of the run, a stall check) and re-armed only when it fires, never
/// per message. Every echo of a read is timed with that read's clock reading, and the
/// closed-loop messages it releases leave together in the next write.
async fn drive(
    mut wire: Wire<MaybeTlsStream>,
    id: usize,
    plan: &Plan,
    start: Instant,
    hard: Instant,
    stats: &Mutex<Stats>,
) {
    let payloads = &plan.payloads;
    let window = (plan.warmup.as_nanos() as u64, (plan.warmup + plan.duration).as_nanos() as u64);
    let in_window = |sched: u64| sched >= window.0 && sched < window.1;
    let end = start + plan.warmup + plan.duration;
    let since_start = |at: Instant| at.saturating_duration_since(start).as_nanos() as u64;
    let fail = |kind: String| lock(stats).error(kind, 1);
    let proto_kind = |e: wsx::proto::Error| run_error_kind(&wsx::Error::from(e));

    let mut local = Local::new(stats);
    let mut next_seq = 0u64;
    let mut expected = 0u64;
    let mut sending = true;
    // Open loop: due messages held back because the output queue is full.
    let mut held_back = false;
    let mut drain_until: Option<Instant> = None;

    tokio::time::sleep_until(start.into()).await;
    let mut last_progress = Instant::now();
    if plan.schedule.is_none() {
        let now = since_start(last_progress);
        for _ in 0..plan.depth {
            if let Err(e) = wire.send_payload(payloads, next_seq, now) {
                fail(proto_kind(e));
                return;
            }
            next_seq += 1;
        }
    }
    let first_wake = match &plan.schedule {
        Some(s) => start + Duration::from_nanos(s.at(id, 0)),
        None => end.min(last_progress + plan.timeout),
    };
    let timer = tokio::time::sleep_until(first_wake.into());
    tokio::pin!(timer);
    let mut clean_end = true;
    loop {
        tokio::select! {
            // The timer first: a server that keeps the socket readable (a flood) must not keep
            // the end, the stall check and the hard deadline from being looked at. Polling it
            // costs a comparison per read, not per message.
            biased;
            () = &mut timer => {
                let now = Instant::now();
                match (&plan.schedule, sending) {
                    (Some(s), true) => {
                        // Open loop: everything due leaves now, stamped with its scheduled time.
                        let was_idle = next_seq == expected;
                        let mut sent = 0;
                        held_back = false;
                        let now_ns = since_start(now);
                        while sent < 1024 {
                            if wire.pending() >= OPEN_LOOP_QUEUE {
                                held_back = true;
                                break;
                            }
                            let sched = s.at(id, next_seq);
                            if start + Duration::from_nanos(sched) > now || start + Duration::from_nanos(sched) >= end {
                                break;
                            }
                            if let Err(e) = wire.send_payload(payloads, next_seq, sched) {
                                fail(proto_kind(e));
                                return;
                            }
                            if in_window(sched) {
                                local.lag.push(now_ns.saturating_sub(sched));
                            }
                            next_seq += 1;
                            sent += 1;
                        }
                        if was_idle && sent > 0 {
                            last_progress = now;
                        }
                        if start + Duration::from_nanos(s.at(id, next_seq)) >= end {
                            sending = false;
                            drain_until = Some(now + plan.timeout);
                        }
                        local.maybe_flush(now);
                    }
                    (None, true) if now >= end => {
                        sending = false;
                        drain_until = Some(now + plan.timeout);
                    }
                    _ => {}
                }
                let outstanding = next_seq.saturating_sub(expected);
                let stalled = outstanding > 0 && now >= last_progress + plan.timeout;
                let drained = drain_until.is_some_and(|d| now >= d);
                if stalled || drained || now >= hard {
                    lock(stats).error("timeout", outstanding.max(1));
                    break;
                }
                // The next moment something is due.
                let next_send = match (&plan.schedule, sending) {
                    (Some(_), true) if held_back => Some(now + Duration::from_millis(1)),
                    (Some(s), true) => Some(start + Duration::from_nanos(s.at(id, next_seq))),
                    _ => None,
                };
                let closed_end = (sending && plan.schedule.is_none()).then_some(end);
                let stall_at = (outstanding > 0).then(|| last_progress + plan.timeout);
                let wake = [next_send, closed_end, stall_at, drain_until, Some(hard)].into_iter().flatten().min();
                timer.as_mut().reset(wake.unwrap_or(now + plan.timeout).into());
            }
            io = wire.io() => {
                match io {
                    Ok(Io::Read) => {}
                    Ok(Io::Eof) => {
                        fail("close 1006".into());
                        return;
                    }
                    Err(e) => {
                        fail(format!("{:?}", e.kind()).to_lowercase());
                        return;
                    }
                }
                let at = Instant::now();
                let at_ns = since_start(at);
                let mut got = 0;
                loop {
                    // The check's verdict is all that outlives the lent message.
                    let checked = match wire.next(at) {
                        Ok(Some(Echo::Masked { text, data, key })) => payloads.check_masked(text, data, key),
                        Ok(Some(Echo::Message(MessageRef::Text(t)))) => payloads.check(true, t.as_bytes()),
                        Ok(Some(Echo::Message(MessageRef::Binary(b)))) => payloads.check(false, b),
                        Ok(Some(Echo::Message(MessageRef::Owned(Message::Text(t))))) => {
                            payloads.check(true, t.as_bytes())
                        }
                        Ok(Some(Echo::Message(MessageRef::Owned(Message::Binary(b))))) => payloads.check(false, &b),
                        Ok(Some(Echo::Message(MessageRef::Owned(Message::Close(frame))))) => {
                            fail(close_kind(frame));
                            clean_end = false;
                            break;
                        }
                        Ok(Some(_)) => continue,
                        Ok(None) => break,
                        Err(e) => {
                            fail(proto_kind(e));
                            clean_end = false;
                            break;
                        }
                    };
                    got += 1;
                    if next_seq == expected {
                        // Nothing is in flight: the server sent something we did not (a
                        // greeting, another client's traffic).
                        fail("unexpected message".into());
                        continue;
                    }
                    match checked {
                        Ok((seq, sched)) if seq == expected => {
                            expected += 1;
                            if in_window(sched) {
                                local.latency(at_ns.saturating_sub(sched));
                            }
                        }
                        Ok((seq, _)) => {
                            // Lost, duplicated or reordered.
                            fail("echo out of order".into());
                            expected = expected.max(seq.saturating_add(1)).min(next_seq);
                        }
                        Err(Mismatch::Body { seq }) => {
                            // Our message (its header is intact), its body changed.
                            fail("echo mismatch".into());
                            expected = expected.max(seq.saturating_add(1)).min(next_seq);
                        }
                        Err(_) => {
                            // Not one of ours (another type, size or header): what we sent is
                            // still awaited (and timed out if it never comes).
                            fail("unexpected message".into());
                        }
                    }
                    if sending && plan.schedule.is_none() && next_seq.saturating_sub(expected) < plan.depth as u64 {
                        // Closed loop: the next message leaves with this read's replies.
                        if let Err(e) = wire.send_payload(payloads, next_seq, at_ns) {
                            fail(proto_kind(e));
                            return;
                        }
                        next_seq += 1;
                    }
                }
                if !clean_end {
                    break;
                }
                if got > 0 {
                    last_progress = at;
                    local.echoes += got;
                    local.maybe_flush(at);
                }
            }
        }
        if !sending && next_seq == expected {
            break;
        }
    }
    drop(local);
    // Close politely, within the close timeout; the result no longer matters.
    wire.close((Instant::now() + plan.timeout).min(hard + plan.timeout)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equal latencies in a row are kept as one run and recorded with their count: every sample
    /// reaches the histogram, in the right bucket, however they were grouped.
    #[test]
    fn latency_runs_record_every_sample() {
        let stats = Mutex::new(Stats::default());
        let mut local = Local::new(&stats);
        for ns in [5_000, 5_000, 5_000, 7_000, 5_000, 1_000_000] {
            local.latency(ns);
        }
        assert_eq!(local.latency, vec![(5_000, 3), (7_000, 1), (5_000, 1), (1_000_000, 1)]);
        drop(local);
        let s = lock(&stats);
        assert_eq!(s.msgs, 6);
        assert_eq!(s.latency.len(), 6);
        assert_eq!(s.latency.count_between(4_990, 5_010), 4);
        assert_eq!(s.latency.count_between(6_990, 7_010), 1);
        assert_eq!(s.latency.max(), s.latency.highest_equivalent(1_000_000));
    }
}
