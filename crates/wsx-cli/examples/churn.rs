//! The soak and churn client of `scripts/soak` (docs/reliability.md).
//!
//! Holds `--held` connections open (opened at `--open-rate` a second, each sending a message now
//! and then and checking what comes back), and meanwhile opens `--rate` short-lived connections
//! a second for `--duration` seconds. Each short-lived one exchanges a few messages, checks them,
//! and ends in one of four ways, in rotation:
//!
//! | kind        | how it ends                                                          | what is checked |
//! |-------------|----------------------------------------------------------------------|-----------------|
//! | `clean`     | closing handshake with 1000                                          | the server echoes 1000 |
//! | `rst`       | `SO_LINGER` 0, then the socket is dropped: an RST, no FIN            | — |
//! | `half`      | `shutdown(SHUT_WR)` (a FIN, no close frame), then reads until EOF    | the server closes its side within `--half-close-deadline` |
//! | `vanish`    | stops reading and writing, keeps the socket open                     | the server ends it (FIN or RST) within `--vanish-deadline` |
//!
//! A vanished socket is kept until the server has ended it (its keepalive ping goes unanswered:
//! `--ping-interval` of `wsx serve` plus the 20 s keepalive timeout), then closed; one the
//! server has not ended by `--vanish-deadline` is an error. (Keeping them all to the end of the
//! run would take 75,000 descriptors in ten minutes.)
//!
//! Modes: `echo` (`/echo`: every message must come back, in order) and `rooms` (`/room/soak-N`
//! for N below `--rooms`: held members are spread over the rooms and the first `--publishers`
//! of each room publish every `--publish-interval` seconds; every member checks that each
//! publisher's sequence numbers arrive without a gap and that every message is of its own
//! room; a churning member waits for a publisher's message, sends its own and waits for them to
//! come back).
//!
//! When the churn is over and every short-lived connection has ended (vanished ones reaped),
//! prints `drained` on stdout. Then, with `--await-shutdown SECS`, waits that long for the server
//! to close every held connection (`scripts/soak` sends SIGTERM to the server) and counts the
//! close codes; without it, closes them itself with 1000. Finally prints a JSON report on stdout
//! (and a summary on stderr) and exits 1 if anything unexpected happened: a failed connection, a
//! wrong or missing message, a held connection lost, a server that did not end a half-closed or
//! vanished connection, a shutdown code other than 1001.
//!
//! `cargo run --release -p wsx-cli --example churn -- --url ws://127.0.0.1:8080 --mode echo`

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;
use wsx::{ClientBuilder, CloseCode, Message, WebSocket};

#[derive(Parser, Debug)]
#[command(about = "Soak and churn client for wsx serve (docs/reliability.md)")]
struct Args {
    /// The server, without a path: ws://HOST:PORT.
    #[arg(long)]
    url: String,
    #[arg(long, value_enum, default_value = "echo")]
    mode: Mode,
    /// Connections held open for the whole run.
    #[arg(long, default_value_t = 10_000)]
    held: usize,
    /// Held connections opened per second.
    #[arg(long, default_value_t = 2_000)]
    open_rate: u64,
    /// Short-lived connections opened per second.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Seconds of churn.
    #[arg(long, default_value_t = 600.0)]
    duration: f64,
    /// Messages each short-lived connection sends (and checks).
    #[arg(long, default_value_t = 3)]
    messages: u32,
    /// Seconds between two messages of a held connection (echo mode).
    #[arg(long, default_value_t = 20.0)]
    held_interval: f64,
    /// Rooms (rooms mode).
    #[arg(long, default_value_t = 1000)]
    rooms: usize,
    /// Held members of each room that publish (rooms mode).
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Seconds between two messages of a publisher.
    #[arg(long, default_value_t = 1.0)]
    publish_interval: f64,
    /// Seconds the server has to end a vanished connection.
    #[arg(long, default_value_t = 40.0)]
    vanish_deadline: f64,
    /// Seconds the server has to close its side of a half-closed connection.
    #[arg(long, default_value_t = 10.0)]
    half_close_deadline: f64,
    /// Seconds a short-lived connection has for its handshake and exchange.
    #[arg(long, default_value_t = 10.0)]
    exchange_timeout: f64,
    /// Short-lived connections in progress at most (beyond, new ones are skipped and counted).
    #[arg(long, default_value_t = 4_000)]
    max_inflight: u64,
    /// After the churn, wait this long for the server to close every held connection (with
    /// 1001) instead of closing them ourselves.
    #[arg(long)]
    await_shutdown: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Echo,
    Rooms,
}

/// Where the run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Held connections send and check messages.
    Run,
    /// Held connections stop sending and wait for the server's close.
    AwaitShutdown,
    /// Held connections close with 1000.
    Close,
}

#[derive(Default)]
struct Stats {
    held_opened: AtomicU64,
    held_lost: AtomicU64,
    churn_started: AtomicU64,
    churn_opened: AtomicU64,
    churn_skipped: AtomicU64,
    clean: AtomicU64,
    rst: AtomicU64,
    half: AtomicU64,
    vanish: AtomicU64,
    vanish_reaped: AtomicU64,
    vanish_reap_ms_max: AtomicU64,
    vanish_reap_ms_sum: AtomicU64,
    echo_checked: AtomicU64,
    room_checked: AtomicU64,
    sent: AtomicU64,
    errors: Mutex<BTreeMap<String, (u64, String)>>,
    shutdown_codes: Mutex<BTreeMap<String, u64>>,
}

static STATS: std::sync::LazyLock<Stats> = std::sync::LazyLock::new(Stats::default);

fn add(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// Counts an unexpected failure under `kind`, keeping its first message.
fn error(kind: &str, detail: impl std::fmt::Display) {
    let mut errors = STATS.errors.lock().unwrap();
    let e = errors.entry(kind.to_owned()).or_insert_with(|| (0, detail.to_string()));
    e.0 += 1;
}

/// A small deterministic generator for jitter.
fn jitter(seed: u64, max: Duration) -> Duration {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    max.mul_f64((x % 10_000) as f64 / 10_000.0)
}

struct Ctx {
    args: Args,
    addr: SocketAddr,
    phase: watch::Receiver<Phase>,
    /// Vanished sockets and when they went silent, until the server ends them.
    graveyard: Mutex<Vec<(std::net::TcpStream, Instant)>>,
    inflight: AtomicU64,
}

impl Ctx {
    fn path(&self, id: u64) -> String {
        match self.args.mode {
            Mode::Echo => format!("{}/echo", self.args.url),
            Mode::Rooms => format!("{}/room/soak-{}", self.args.url, id % self.args.rooms as u64),
        }
    }

    async fn open(&self, id: u64) -> Result<WebSocket<TcpStream>, String> {
        let tcp = TcpStream::connect(self.addr).await.map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (ws, _) = ClientBuilder::new(self.path(id)).connect_on(tcp).await.map_err(|e| format!("handshake: {e}"))?;
        Ok(ws)
    }
}

/// Checks a room message: `p ROOM PUBLISHER SEQ` or `c ROOM ID K`. Returns the publisher and
/// sequence number of a publisher's message.
fn parse_room(text: &str, room: u64) -> Result<Option<(usize, u64)>, String> {
    let mut it = text.split(' ');
    let (kind, r, a, b) = (it.next(), it.next(), it.next(), it.next());
    let num = |s: Option<&str>| s.and_then(|s| s.parse::<u64>().ok());
    if num(r) != Some(room) {
        return Err(format!("message of another room in soak-{room}: {text:?}"));
    }
    match (kind, num(a), num(b)) {
        (Some("p"), Some(p), Some(seq)) => Ok(Some((p as usize, seq))),
        (Some("c"), Some(_), Some(_)) => Ok(None),
        _ => Err(format!("unexpected message {text:?}")),
    }
}

/// Per-publisher sequence check of one member.
struct Sequences(Vec<Option<u64>>);

impl Sequences {
    fn check(&mut self, p: usize, seq: u64) -> Result<(), String> {
        let Some(last) = self.0.get_mut(p) else { return Err(format!("unknown publisher {p}")) };
        if let Some(l) = *last {
            if seq != l + 1 {
                return Err(format!("publisher {p}: seq {seq} after {l}"));
            }
        }
        *last = Some(seq);
        add(&STATS.room_checked);
        Ok(())
    }
}

async fn held(ctx: &'static Ctx, id: u64) {
    let mut ws = match ctx.open(id).await {
        Ok(ws) => ws,
        Err(e) => return error("held: open", e),
    };
    add(&STATS.held_opened);
    let mut phase = ctx.phase.clone();
    let room = id % ctx.args.rooms as u64;
    let publisher = match ctx.args.mode {
        Mode::Rooms => Some(id / ctx.args.rooms as u64).filter(|p| *p < ctx.args.publishers as u64),
        Mode::Echo => None,
    };
    let interval = Duration::from_secs_f64(match ctx.args.mode {
        Mode::Echo => ctx.args.held_interval,
        Mode::Rooms => ctx.args.publish_interval,
    });
    let sends = ctx.args.mode == Mode::Echo || publisher.is_some();
    let mut next = tokio::time::Instant::now() + jitter(id, interval);
    let mut seq = 0u64;
    let mut outstanding = std::collections::VecDeque::new();
    let mut seqs = Sequences(vec![None; ctx.args.publishers]);
    let mut closing = false;
    loop {
        let now_phase = *phase.borrow();
        if now_phase == Phase::Close && !closing {
            match ws.close(CloseCode::NORMAL, "").await {
                Ok(_) => {}
                Err(e) => error("held: close", e),
            }
            return;
        }
        let sending = sends && now_phase == Phase::Run;
        let msg = tokio::select! {
            msg = ws.recv() => msg,
            () = tokio::time::sleep_until(next), if sending => {
                next += interval;
                let text = match publisher {
                    Some(p) => format!("p {room} {p} {seq}"),
                    None => format!("h{id}.{seq}"),
                };
                seq += 1;
                if ctx.args.mode == Mode::Echo {
                    outstanding.push_back(text.clone());
                }
                add(&STATS.sent);
                if let Err(e) = ws.send_text(text).await {
                    error("held: send", e);
                }
                continue;
            }
            _ = phase.changed() => continue,
        };
        match msg {
            Some(Ok(Message::Text(t))) => {
                let r = match ctx.args.mode {
                    Mode::Echo => match outstanding.pop_front() {
                        Some(want) if want == t.as_str() => {
                            add(&STATS.echo_checked);
                            Ok(())
                        }
                        want => Err(format!("echo {:?}, expected {want:?}", t.as_str())),
                    },
                    Mode::Rooms => match parse_room(t.as_str(), room) {
                        Ok(Some((p, s))) => seqs.check(p, s),
                        Ok(None) => {
                            add(&STATS.room_checked);
                            Ok(())
                        }
                        Err(e) => Err(e),
                    },
                };
                if let Err(e) = r {
                    error("held: wrong message", e);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map_or(1005, |f| f.code.0);
                if *phase.borrow() == Phase::AwaitShutdown {
                    *STATS.shutdown_codes.lock().unwrap().entry(code.to_string()).or_default() += 1;
                } else {
                    error("held: closed by the server", format!("code {code}"));
                    add(&STATS.held_lost);
                }
                // recv goes on until the closing handshake is over.
                closing = true;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                if !closing {
                    if *phase.borrow() == Phase::AwaitShutdown {
                        *STATS.shutdown_codes.lock().unwrap().entry(format!("error: {e}")).or_default() += 1;
                    } else {
                        add(&STATS.held_lost);
                        error("held: failed", e);
                    }
                    closing = true;
                }
            }
            None => {
                if !closing {
                    add(&STATS.held_lost);
                    error("held: ended without a close frame", "");
                }
                return;
            }
        }
    }
}

/// One short-lived connection: open, exchange, end in the way `id` selects.
async fn churn(ctx: &'static Ctx, id: u64) {
    add(&STATS.churn_started);
    let exchange = async {
        let mut ws = ctx.open(id).await?;
        add(&STATS.churn_opened);
        let room = id % ctx.args.rooms as u64;
        if ctx.args.mode == Mode::Rooms {
            // A member of a busy room: wait for a publisher's message first.
            loop {
                match ws.recv().await {
                    Some(Ok(Message::Text(t))) => match parse_room(t.as_str(), room)? {
                        Some(_) => {
                            add(&STATS.room_checked);
                            break;
                        }
                        None => add(&STATS.room_checked),
                    },
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    other => return Err(format!("waiting for a publisher: {other:?}")),
                }
            }
        }
        for k in 0..ctx.args.messages {
            let text = match ctx.args.mode {
                Mode::Echo => format!("c{id}.{k}"),
                Mode::Rooms => format!("c {room} {id} {k}"),
            };
            add(&STATS.sent);
            ws.send_text(text.clone()).await.map_err(|e| format!("send: {e}"))?;
            loop {
                match ws.recv().await {
                    Some(Ok(Message::Text(t))) if t.as_str() == text => {
                        add(if ctx.args.mode == Mode::Echo { &STATS.echo_checked } else { &STATS.room_checked });
                        break;
                    }
                    Some(Ok(Message::Text(t))) if ctx.args.mode == Mode::Rooms => {
                        // Someone else's message in the room: of this room, in order.
                        parse_room(t.as_str(), room)?;
                        add(&STATS.room_checked);
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    other => return Err(format!("waiting for {text:?}: {other:?}")),
                }
            }
        }
        Ok::<_, String>(ws)
    };
    let ws = match tokio::time::timeout(Duration::from_secs_f64(ctx.args.exchange_timeout), exchange).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return error(&format!("churn: {}", e.split(':').next().unwrap_or("")), e),
        Err(_) => return error("churn: exchange timed out", id),
    };
    match id % 4 {
        0 => {
            let mut ws = ws;
            match tokio::time::timeout(Duration::from_secs(10), ws.close(CloseCode::NORMAL, "")).await {
                Ok(Ok(Some(f))) if f.code == CloseCode::NORMAL => add(&STATS.clean),
                Ok(other) => error("clean: server's close", format!("{other:?}")),
                Err(_) => error("clean: close timed out", id),
            }
        }
        1 => {
            if let Err(e) = ws.get_ref().set_zero_linger() {
                error("rst: SO_LINGER", e);
            }
            drop(ws);
            add(&STATS.rst);
        }
        2 => {
            let (mut tcp, _, _) = ws.into_parts();
            if let Err(e) = tcp.shutdown().await {
                return error("half: shutdown", e);
            }
            let mut buf = [0u8; 4096];
            let deadline = Duration::from_secs_f64(ctx.args.half_close_deadline);
            let drained = tokio::time::timeout(deadline, async {
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) => return Ok(()),
                        Ok(_) => {}
                        Err(e) => return Err(e),
                    }
                }
            })
            .await;
            match drained {
                Ok(Ok(())) => add(&STATS.half),
                Ok(Err(e)) => error("half: read", e),
                Err(_) => error("half: server did not close its side", format!("{deadline:?}")),
            }
        }
        _ => {
            let (tcp, _, _) = ws.into_parts();
            match tcp.into_std() {
                Ok(tcp) => {
                    add(&STATS.vanish);
                    ctx.graveyard.lock().unwrap().push((tcp, Instant::now()));
                }
                Err(e) => error("vanish: into_std", e),
            }
        }
    }
}

/// Checks the vanished sockets twice a second: one the server has ended (FIN or RST: POLLRDHUP,
/// POLLHUP or POLLERR) is closed and counted; one past the deadline is an error.
async fn reaper(ctx: &'static Ctx) {
    let deadline = Duration::from_secs_f64(ctx.args.vanish_deadline);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut graves = ctx.graveyard.lock().unwrap();
        if graves.is_empty() {
            continue;
        }
        let mut fds: Vec<libc::pollfd> = graves
            .iter()
            .map(|(s, _)| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 })
            .collect();
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structures for the whole call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
        if n < 0 {
            error("vanish: poll", std::io::Error::last_os_error());
            continue;
        }
        let now = Instant::now();
        let mut i = 0;
        graves.retain(|(_, since)| {
            let ended = fds[i].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0;
            i += 1;
            let waited = now - *since;
            if ended {
                add(&STATS.vanish_reaped);
                let ms = waited.as_millis() as u64;
                STATS.vanish_reap_ms_sum.fetch_add(ms, Relaxed);
                STATS.vanish_reap_ms_max.fetch_max(ms, Relaxed);
                false
            } else if waited > deadline {
                error("vanish: server did not end the connection", format!("{deadline:?}"));
                false
            } else {
                true
            }
        });
    }
}

fn raise_nofile() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain system calls on a valid, exclusively borrowed struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    raise_nofile();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(run(args))
}

async fn run(args: Args) -> std::process::ExitCode {
    let hostport = args.url.trim_start_matches("ws://").trim_end_matches('/');
    let addr: SocketAddr = match hostport.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("churn: --url must be ws://IP:PORT: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let (phase_tx, phase) = watch::channel(Phase::Run);
    let ctx: &'static Ctx =
        Box::leak(Box::new(Ctx { args, addr, phase, graveyard: Mutex::new(Vec::new()), inflight: AtomicU64::new(0) }));
    let args = &ctx.args;
    let started = Instant::now();
    tokio::spawn(reaper(ctx));

    // The held connections, at --open-rate.
    let mut held_tasks = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.open_rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for id in 0..args.held as u64 {
        tick.tick().await;
        held_tasks.spawn(held(ctx, id));
    }
    // Until each has its answer.
    let open_deadline = Instant::now() + Duration::from_secs(30);
    while STATS.held_opened.load(Relaxed) + errors_of("held: open") < args.held as u64 && Instant::now() < open_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held_open_s = started.elapsed().as_secs_f64();
    println!("held {} {:.1}", STATS.held_opened.load(Relaxed), held_open_s);

    // The churn, at --rate, for --duration.
    let churn_start = Instant::now();
    let churn_end = churn_start + Duration::from_secs_f64(args.duration);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut id = args.held as u64;
    let mut churn_tasks = JoinSet::new();
    while Instant::now() < churn_end {
        tick.tick().await;
        while churn_tasks.try_join_next().is_some() {}
        if ctx.inflight.load(Relaxed) >= args.max_inflight {
            add(&STATS.churn_skipped);
            continue;
        }
        ctx.inflight.fetch_add(1, Relaxed);
        let this = id;
        churn_tasks.spawn(async move {
            churn(ctx, this).await;
            ctx.inflight.fetch_sub(1, Relaxed);
        });
        id += 1;
    }
    let churn_s = churn_start.elapsed().as_secs_f64();
    while churn_tasks.join_next().await.is_some() {}
    while !ctx.graveyard.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain_s = churn_start.elapsed().as_secs_f64() - churn_s;
    println!("drained {drain_s:.1}");

    // The end of the held connections.
    let expected_shutdown = args.await_shutdown.is_some();
    let _ = phase_tx.send(if expected_shutdown { Phase::AwaitShutdown } else { Phase::Close });
    let wait = Duration::from_secs_f64(args.await_shutdown.unwrap_or(15.0));
    let ended = tokio::time::timeout(wait, async { while held_tasks.join_next().await.is_some() {} }).await;
    let held_left = held_tasks.len();
    if ended.is_err() {
        error(
            if expected_shutdown { "shutdown: held connections not closed by the server" } else { "held: close" },
            format!("{held_left} left after {wait:?}"),
        );
    }
    held_tasks.abort_all();

    let load = |c: &AtomicU64| c.load(Relaxed);
    let reaped = load(&STATS.vanish_reaped);
    let errors = STATS.errors.lock().unwrap().clone();
    let codes = STATS.shutdown_codes.lock().unwrap().clone();
    let mut bad = !errors.is_empty();
    if expected_shutdown {
        let ok = codes.get("1001").copied().unwrap_or(0);
        if ok != load(&STATS.held_opened) - load(&STATS.held_lost) || codes.len() != 1 {
            bad = true;
        }
    }
    let report = serde_json::json!({
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "held": args.held,
        "held_opened": load(&STATS.held_opened),
        "held_open_s": held_open_s,
        "held_lost": load(&STATS.held_lost),
        "churn_s": churn_s,
        "drain_s": drain_s,
        "churn_started": load(&STATS.churn_started),
        "churn_opened": load(&STATS.churn_opened),
        "churn_skipped": load(&STATS.churn_skipped),
        "clean": load(&STATS.clean),
        "rst": load(&STATS.rst),
        "half": load(&STATS.half),
        "vanish": load(&STATS.vanish),
        "vanish_reaped": reaped,
        "vanish_reap_ms_avg": load(&STATS.vanish_reap_ms_sum).checked_div(reaped).unwrap_or(0),
        "vanish_reap_ms_max": load(&STATS.vanish_reap_ms_max),
        "sent": load(&STATS.sent),
        "echo_checked": load(&STATS.echo_checked),
        "room_checked": load(&STATS.room_checked),
        "shutdown_codes": codes,
        "held_left": held_left,
        "errors": errors.iter().map(|(k, (n, first))| (k.clone(), serde_json::json!({"count": n, "first": first}))).collect::<serde_json::Map<_, _>>(),
        "ok": !bad,
    });
    println!("{report}");
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    if bad {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

fn errors_of(kind: &str) -> u64 {
    STATS.errors.lock().unwrap().get(kind).map_or(0, |e| e.0)
}
