//! `wsx bench pubsub`: publishers and subscribers on rooms where every message goes to every
//! member (`wsx serve`'s `/room/NAME`): deliveries per second, publish-to-receive latency, and
//! every delivery checked for loss, duplication and order.
//!
//! Publishers send on one open-loop schedule (`--rate` messages per second in total, spread
//! over every publisher), so a slow room is charged to every message it delays. Each message
//! carries its publisher's number and sequence in the sequence field of the echo payload
//! ([`super::payload`]): `publisher << 40 | k`, with its scheduled send time and checksum. A
//! subscriber expects each publisher's messages in sequence: a jump forward is that many
//! messages lost, a step back a duplicate or a reordering. At the end subscribers wait (up to
//! `--timeout`) for everything the publishers sent; what never arrived is lost too. A raw room
//! does not say when a member has joined: a subscriber whose first message from a publisher was
//! published during the warm-up starts from it (it joined then); in the window, every jump
//! counts.
//!
//! With `--hub` the URL is a hub endpoint (`wsx serve`'s `/hub`) and every connection speaks
//! the hub subprotocol `wsx.hub.v1`: subscribers `subscribe` to the room (`--room`, numbered
//! with `--rooms`) and count as connected once `subscribed`; publishers send `publish` requests
//! (the payload as `text`, or base64 in `binary`) and drop the `published` answers;
//! subscribers check the payload of each `message` event. A hub `error` or `interrupted` is
//! counted as an error of that name.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use base64::Engine as _;
use clap::Args;
use wsx::proto::deflate::DeflateConfig;
use wsx::{ClientBuilder, CloseCode, MaybeTlsStream, Message, WebSocket, WebSocketConfig};

use super::payload::Payloads;
use super::report::{fmt_count, Report, Stats};
use super::{
    connect_error_kind, end_kind, lock, run_error_kind, run_threads, Common, PayloadArgs, Schedule, Thread, Timeline,
};

/// Bits of the sequence field that number a publisher's messages.
const SEQ_BITS: u32 = 40;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;

/// Options of `wsx bench pubsub`.
#[derive(Args, Debug, Clone)]
pub struct PubsubArgs {
    /// The room's URL (`ws://host:port/room/NAME`); with --rooms N, the rooms are NAME-0 …
    /// NAME-(N-1).
    url: String,
    /// Rooms, each with its own publishers and subscribers.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Publishers per room.
    #[arg(short = 'p', long, default_value_t = 1)]
    publishers: usize,
    /// Subscribers per room (members that only receive).
    #[arg(short = 'S', long, default_value_t = 10)]
    subscribers: usize,
    /// Messages published per second in total (all rooms), on a fixed schedule.
    #[arg(short = 'r', long, default_value_t = 1000.0)]
    rate: f64,
    /// Speak the hub subprotocol (wsx.hub.v1) to URL (e.g. ws://host:port/hub) instead of
    /// joining a raw room by URL.
    #[arg(long)]
    hub: bool,
    /// With --hub: the room's name (NAME-0 … NAME-(N-1) with --rooms N).
    #[arg(long, default_value = "bench", value_name = "NAME")]
    room: String,
    /// Another node of the same cluster (repeatable), its URL written like URL's: subscribers
    /// are spread over URL and these in turn; publishers use URL.
    #[arg(long = "node", value_name = "URL")]
    nodes: Vec<String>,
    #[command(flatten)]
    payload: PayloadArgs,
    #[command(flatten)]
    common: Common,
}

/// What a connection does in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Publisher number `id` (of all rooms') in `room`.
    Publisher { room: usize, id: usize },
    /// A subscriber of `room`.
    Subscriber { room: usize },
}

/// The connections of the run, in order: for each room, its publishers then its subscribers.
fn roles(rooms: usize, publishers: usize, subscribers: usize) -> Vec<Role> {
    let mut out = Vec::with_capacity(rooms * (publishers + subscribers));
    for room in 0..rooms {
        out.extend((0..publishers).map(|p| Role::Publisher { room, id: room * publishers + p }));
        out.extend((0..subscribers).map(|_| Role::Subscriber { room }));
    }
    out
}

/// The URL of room `room` of `rooms`.
fn room_url(url: &str, room: usize, rooms: usize) -> String {
    if rooms == 1 {
        return url.to_owned();
    }
    match url.find(['?', '#']) {
        Some(at) => format!("{}-{room}{}", &url[..at], &url[at..]),
        None => format!("{url}-{room}"),
    }
}

/// What every task shares.
struct Plan {
    /// For each room, a builder per node (URL first, then every --node).
    builders: Vec<Vec<ClientBuilder>>,
    /// With `--hub`: each room's name.
    hub_rooms: Option<Vec<String>>,
    payloads: Payloads,
    schedule: Schedule,
    publishers: usize,
    warmup: Duration,
    duration: Duration,
    timeout: Duration,
    common: Common,
    roles: Vec<Role>,
    /// Messages each publisher has sent so far (its next sequence number).
    sent: Vec<AtomicU64>,
    /// Publishers that have stopped sending (done, or failed).
    done: AtomicUsize,
}

/// Open loop: while this many bytes wait to be written, due messages wait in the publisher.
const QUEUE: usize = 1 << 20;

/// Runs `wsx bench pubsub`.
pub fn run(args: PubsubArgs) -> anyhow::Result<std::process::ExitCode> {
    let size = args.payload.size();
    let url = crate::connect::normalize_url(&args.url);
    args.common.check(&url)?;
    if args.rooms == 0 || args.publishers == 0 || args.subscribers == 0 {
        bail!("--rooms, --publishers and --subscribers must be at least 1");
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number of messages per second");
    }
    let mut config = WebSocketConfig::default();
    // Above what a publisher queues, so that it never waits on the mark (see bench echo).
    config.proto.write_buffer_high_water = QUEUE * 4 + size;
    if args.payload.deflate {
        config.deflate = Some(DeflateConfig::default());
    }
    let urls: Vec<String> =
        std::iter::once(url.clone()).chain(args.nodes.iter().map(|n| crate::connect::normalize_url(n))).collect();
    for node in &urls[1..] {
        args.common.check(node)?;
    }
    let builder = |url: &str, r: usize| match args.hub {
        true => Ok(args.common.builder(url, config.clone())?.protocol(wsx_hub::protocol::PROTOCOL)),
        false => args.common.builder(&room_url(url, r, args.rooms), config.clone()),
    };
    let builders = (0..args.rooms)
        .map(|r| urls.iter().map(|u| builder(u, r)).collect::<anyhow::Result<Vec<_>>>())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let hub_rooms = args.hub.then(|| (0..args.rooms).map(|r| room_name(&args.room, r, args.rooms)).collect());
    let roles = roles(args.rooms, args.publishers, args.subscribers);
    let total_publishers = args.rooms * args.publishers;
    let threads = args.common.threads.min(roles.len());
    let plan = Arc::new(Plan {
        builders,
        hub_rooms,
        payloads: args.payload.payloads()?,
        schedule: Schedule::new(args.rate, total_publishers),
        publishers: args.publishers,
        warmup: args.common.warmup,
        duration: args.common.duration,
        timeout: args.common.timeout,
        common: args.common.clone(),
        sent: (0..total_publishers).map(|_| AtomicU64::new(0)).collect(),
        done: AtomicUsize::new(0),
        roles,
    });
    let timeline = Timeline::Window { warmup: args.common.warmup, duration: args.common.duration, preopened: true };
    let conns = plan.roles.len();
    let run_plan = plan.clone();
    let finished = run_threads(&args.common, threads, "deliveries", timeline, move |t| worker(run_plan.clone(), t))?;

    let published = finished.stats.counts.get("published").copied().unwrap_or(0);
    let expected = published * args.subscribers as u64;
    let window = args.common.duration.as_secs_f64();
    let mut extra_json = serde_json::Map::new();
    extra_json.insert("rooms".into(), serde_json::json!(args.rooms));
    extra_json.insert("nodes".into(), serde_json::json!(args.nodes.len() + 1));
    extra_json.insert("publishers".into(), serde_json::json!(args.publishers));
    extra_json.insert("subscribers".into(), serde_json::json!(args.subscribers));
    extra_json.insert("published".into(), serde_json::json!(published));
    extra_json.insert("published_per_s".into(), serde_json::json!(published as f64 / window));
    extra_json.insert("deliveries_expected".into(), serde_json::json!(expected));
    let extra_lines = vec![format!(
        "published    {published} ({}/s), each to {} subscribers: {expected} deliveries expected, {} made",
        fmt_count(published as f64 / window),
        args.subscribers,
        finished.stats.msgs
    )];
    let report = Report {
        url,
        mode: "pubsub",
        unit: "deliveries",
        rate_key: "deliveries_per_s",
        shape: format!(
            "{} room(s) × ({} publishers + {} subscribers) = {conns} conns ({} connected){}, {} msgs/s published, {}",
            args.rooms,
            args.publishers,
            args.subscribers,
            finished.stats.connected,
            if args.nodes.is_empty() { String::new() } else { format!(" on {} nodes", args.nodes.len() + 1) },
            fmt_count(args.rate),
            args.payload.describe(),
        ),
        latency_label: "scheduled publish to receipt by a subscriber".into(),
        conns,
        threads,
        size,
        depth: None,
        rate: Some(args.rate),
        text: args.payload.text,
        deflate: args.payload.deflate,
        warmup: args.common.warmup,
        duration: args.common.duration,
        stats: finished.stats,
        cpu_share: finished.cpu_share,
        server: finished.server,
        extra_lines,
        extra_json,
    };
    super::finish(&report, &args.common)
}

/// One generator thread: opens its share of the connections, then runs them.
async fn worker(plan: Arc<Plan>, mut thread: Thread) {
    let stats = thread.stats.clone();
    let opened = Instant::now();
    let mut connecting = tokio::task::JoinSet::new();
    for (i, role) in plan.roles.iter().enumerate().skip(thread.index).step_by(thread.threads) {
        let (room, node) = match *role {
            Role::Publisher { room, .. } => (room, 0),
            Role::Subscriber { room } => (room, i % plan.builders[room].len()),
        };
        let builder = plan.builders[room][node].clone();
        let (role, at) = (*role, opened + plan.common.connect_delay(i));
        let (hub_room, timeout) = (plan.hub_rooms.as_ref().map(|r| r[room].clone()), plan.timeout);
        connecting.spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let connected = match builder.connect().await {
                Ok((ws, _)) => match hub_room {
                    Some(name) => hub_hello(ws, &name, matches!(role, Role::Subscriber { .. }), timeout).await,
                    None => Ok(ws),
                },
                Err(e) => Err(connect_error_kind(&e)),
            };
            (role, connected)
        });
    }
    let mut open = Vec::new();
    while let Some(joined) = connecting.join_next().await {
        let Ok((role, result)) = joined else { continue };
        match result {
            Ok(ws) => {
                let mut s = lock(&stats);
                s.connected += 1;
                s.deflated += u64::from(ws.extensions().is_some_and(|x| x.contains("permessage-deflate")));
                drop(s);
                open.push((role, ws));
            }
            Err(kind) => {
                lock(&stats).connect_error(kind);
                if let Role::Publisher { .. } = role {
                    // Never connected: subscribers do not wait for it.
                    plan.done.fetch_add(1, Ordering::Release);
                }
            }
        }
    }
    let Some(start) = thread.start().await else { return };
    let mut running = tokio::task::JoinSet::new();
    for (role, ws) in open {
        let (plan, stats) = (plan.clone(), stats.clone());
        // The hard deadline: the run, the wait for the last deliveries, the closing handshake.
        let hard = start + plan.warmup + plan.duration + plan.timeout * 2 + Duration::from_secs(3);
        running.spawn(async move {
            let conn = async {
                match role {
                    Role::Publisher { id, .. } => publish(ws, id, &plan, start, &stats).await,
                    Role::Subscriber { room } => subscribe(ws, room, &plan, start, &stats).await,
                }
            };
            if tokio::time::timeout_at(hard.into(), conn).await.is_err() {
                lock(&stats).error("timeout", 1);
            }
            lock(&stats).closed += 1;
        });
    }
    while running.join_next().await.is_some() {}
}

/// A publisher: sends its share of the schedule (reading, and dropping, what the room sends it
/// meanwhile), then closes.
async fn publish(mut ws: WebSocket<MaybeTlsStream>, id: usize, plan: &Plan, start: Instant, stats: &Mutex<Stats>) {
    // Once this publisher stops sending (done, failed, or its task cancelled at the hard
    // deadline), subscribers stop waiting for more of its messages than it sent.
    let done = Done(&plan.done);
    let window = (plan.warmup.as_nanos() as u64, (plan.warmup + plan.duration).as_nanos() as u64);
    let end = start + plan.warmup + plan.duration;
    let mut k = 0u64;
    let mut published = 0u64;
    let mut held_back = false;
    loop {
        let sched = plan.schedule.at(id, k);
        if start + Duration::from_nanos(sched) >= end {
            break;
        }
        let wake =
            if held_back { Instant::now() + Duration::from_millis(1) } else { start + Duration::from_nanos(sched) };
        tokio::select! {
            biased;
            event = ws.recv() => if let Err(kind) = end_kind(event) {
                lock(stats).error(kind, 1);
                return;
            },
            () = tokio::time::sleep_until(wake.into()) => {
                let now = Instant::now();
                held_back = false;
                let mut lags = Vec::new();
                for _ in 0..1024 {
                    if ws.buffered_amount() >= QUEUE {
                        held_back = true;
                        break;
                    }
                    let sched = plan.schedule.at(id, k);
                    let due = start + Duration::from_nanos(sched);
                    if due > now || due >= end {
                        break;
                    }
                    let data = plan.payloads.make(((id as u64) << SEQ_BITS) | k, sched);
                    let msg = match &plan.hub_rooms {
                        Some(rooms) => hub_publish(&rooms[id / plan.publishers], plan.payloads.text(), &data),
                        None => plan.payloads.message(data),
                    };
                    if let Err(e) = ws.feed(msg).await {
                        let mut s = lock(stats);
                        s.error(run_error_kind(&e), 1);
                        // What this batch already sent was published.
                        s.count("published", published);
                        return;
                    }
                    k += 1;
                    plan.sent[id].store(k, Ordering::Release);
                    if sched >= window.0 && sched < window.1 {
                        published += 1;
                        lags.push(now.saturating_duration_since(due).as_nanos() as u64);
                    }
                }
                if !lags.is_empty() {
                    let mut s = lock(stats);
                    s.count("published", std::mem::take(&mut published));
                    for ns in lags {
                        s.record_lag(ns);
                    }
                }
            }
        }
    }
    drop(done);
    // Closing writes what is queued first; the room's traffic to this member is dropped.
    let _ = tokio::time::timeout(plan.timeout, ws.close(CloseCode::NORMAL, "")).await;
}

/// Counts a publisher as done when dropped (also on an early return or a cancellation).
struct Done<'a>(&'a AtomicUsize);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        // Release: a subscriber that sees the count also sees the publisher's final `sent`.
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// A subscriber: checks and times every delivery until the publishers of its room are done and
/// everything they sent has arrived (or `--timeout` after the end).
async fn subscribe(mut ws: WebSocket<MaybeTlsStream>, room: usize, plan: &Plan, start: Instant, stats: &Mutex<Stats>) {
    let window = (plan.warmup.as_nanos() as u64, (plan.warmup + plan.duration).as_nanos() as u64);
    let end = start + plan.warmup + plan.duration;
    let first = room * plan.publishers;
    let mut expected = vec![0u64; plan.publishers];
    // Whether anything of each publisher arrived yet: a raw room has no join acknowledgement,
    // so a subscriber whose first message was published during the warm-up joined then; it
    // starts from that message rather than counting the earlier ones as lost.
    let mut started = vec![plan.hub_rooms.is_some(); plan.publishers];
    let mut latencies = Vec::with_capacity(512);
    let mut flushed_at = Instant::now();
    let mut seen = 0u64;
    let flush = |latencies: &mut Vec<u64>, seen: &mut u64| {
        let mut s = lock(stats);
        s.seen += std::mem::take(seen);
        s.msgs += latencies.len() as u64;
        for ns in latencies.drain(..) {
            s.record_latency(ns);
        }
    };
    let all_in = |expected: &[u64]| {
        plan.done.load(Ordering::Acquire) == plan.sent.len()
            && expected.iter().enumerate().all(|(j, &e)| e >= plan.sent[first + j].load(Ordering::Acquire))
    };
    loop {
        let now = Instant::now();
        if now >= end && all_in(&expected) {
            break;
        }
        if now >= end + plan.timeout {
            let missing: u64 = expected
                .iter()
                .enumerate()
                .map(|(j, &e)| plan.sent[first + j].load(Ordering::Acquire).saturating_sub(e))
                .sum();
            lock(stats).error("lost", missing);
            break;
        }
        let wake = if now < end { end } else { now + Duration::from_millis(5) };
        tokio::select! {
            biased;
            event = ws.recv() => {
                let (text, data) = match end_kind(event) {
                    Ok(Message::Text(t)) if plan.hub_rooms.is_some() => match hub_event(t.as_str()) {
                        HubEvent::Payload(text, data) => (text, data),
                        HubEvent::Other => continue,
                        HubEvent::Error(kind) => {
                            lock(stats).error(kind, 1);
                            continue;
                        }
                    },
                    Ok(Message::Text(t)) => (true, t.into_bytes()),
                    Ok(Message::Binary(b)) => (false, b),
                    Ok(_) => continue,
                    Err(kind) => {
                        lock(stats).error(kind, 1);
                        break;
                    }
                };
                let at = Instant::now();
                seen += 1;
                match plan.payloads.check(text, &data) {
                    Ok((seq, sched)) => {
                        let (publisher, k) = ((seq >> SEQ_BITS) as usize, seq & SEQ_MASK);
                        match publisher.checked_sub(first).filter(|&j| j < plan.publishers) {
                            None => lock(stats).error("message from another room", 1),
                            Some(j) => {
                                if !started[j] && sched < window.0 {
                                    expected[j] = k;
                                }
                                started[j] = true;
                                if k < expected[j] {
                                    lock(stats).error("duplicate or out of order", 1);
                                } else {
                                    if k > expected[j] {
                                        lock(stats).error("lost", k - expected[j]);
                                    }
                                    expected[j] = k + 1;
                                    if sched >= window.0 && sched < window.1 {
                                        let since_start = at.saturating_duration_since(start).as_nanos() as u64;
                                        latencies.push(since_start.saturating_sub(sched));
                                    }
                                }
                            }
                        }
                    }
                    Err(_) => lock(stats).error("corrupt message", 1),
                }
                if latencies.len() >= 512 || at >= flushed_at + Duration::from_millis(100) {
                    flush(&mut latencies, &mut seen);
                    flushed_at = at;
                }
            }
            () = tokio::time::sleep_until(wake.into()) => {}
        }
    }
    flush(&mut latencies, &mut seen);
    let _ = tokio::time::timeout(plan.timeout, ws.close(CloseCode::NORMAL, "")).await;
}

/// The name of room `room` of `rooms` in hub mode.
fn room_name(name: &str, room: usize, rooms: usize) -> String {
    if rooms == 1 {
        name.to_owned()
    } else {
        format!("{name}-{room}")
    }
}

/// Opens a hub session: reads `welcome`; a subscriber subscribes and waits for `subscribed`.
async fn hub_hello(
    mut ws: WebSocket<MaybeTlsStream>,
    room: &str,
    subscriber: bool,
    timeout: Duration,
) -> Result<WebSocket<MaybeTlsStream>, String> {
    let next = async |ws: &mut WebSocket<MaybeTlsStream>| -> Result<serde_json::Value, String> {
        match tokio::time::timeout(timeout, ws.recv()).await {
            Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str(t.as_str()).map_err(|_| "hub: not JSON".to_owned()),
            Ok(Some(Ok(other))) => {
                Err(format!("hub: unexpected {}", if other.is_data() { "binary" } else { "control" }))
            }
            Ok(Some(Err(e))) => Err(run_error_kind(&e).to_owned()),
            Ok(None) => Err("hub: closed".to_owned()),
            Err(_) => Err("hub: no answer".to_owned()),
        }
    };
    if ws.protocol() != Some(wsx_hub::protocol::PROTOCOL) {
        return Err("hub: subprotocol not selected".to_owned());
    }
    let welcome = next(&mut ws).await?;
    if welcome["type"] != "welcome" {
        return Err("hub: no welcome".to_owned());
    }
    if subscriber {
        let request = serde_json::json!({"type": "subscribe", "room": room});
        ws.send_text(request.to_string()).await.map_err(|e| run_error_kind(&e).to_owned())?;
        let answer = next(&mut ws).await?;
        if answer["type"] != "subscribed" {
            return Err(format!("hub: subscribe answered {}", answer["code"].as_str().unwrap_or("?")));
        }
    }
    Ok(ws)
}

/// A `publish` request carrying `data`: as `text`, or in base64 as `binary`.
fn hub_publish(room: &str, text: bool, data: &[u8]) -> Message {
    let body = if text {
        let t = std::str::from_utf8(data).unwrap_or_default();
        serde_json::json!({"type": "publish", "room": room, "text": t})
    } else {
        let b = base64::engine::general_purpose::STANDARD.encode(data);
        serde_json::json!({"type": "publish", "room": room, "binary": b})
    };
    Message::text(body.to_string())
}

/// What a subscriber makes of a hub message.
#[derive(Debug, PartialEq)]
enum HubEvent {
    /// A room message's payload (text or not, its bytes).
    Payload(bool, bytes::Bytes),
    /// An answer or event to skip.
    Other,
    /// An error to count, by kind.
    Error(&'static str),
}

fn hub_event(text: &str) -> HubEvent {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else { return HubEvent::Error("hub: not JSON") };
    match v["type"].as_str() {
        Some("message") => {
            if let Some(t) = v["text"].as_str() {
                HubEvent::Payload(true, bytes::Bytes::copy_from_slice(t.as_bytes()))
            } else if let Some(b) = v["binary"].as_str() {
                match base64::engine::general_purpose::STANDARD.decode(b) {
                    Ok(b) => HubEvent::Payload(false, b.into()),
                    Err(_) => HubEvent::Error("corrupt message"),
                }
            } else {
                HubEvent::Error("corrupt message")
            }
        }
        Some("error") => HubEvent::Error("hub error"),
        Some("interrupted") => HubEvent::Error("hub interrupted"),
        Some("resumed") if v["recovered"] == false => HubEvent::Error("hub resumed, not recovered"),
        _ => HubEvent::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_messages_carry_the_payload_both_ways() {
        let p = Payloads::new(64, true).unwrap();
        let data = p.make(5, 7);
        let Message::Text(req) = hub_publish("r", true, &data) else { panic!() };
        let req: serde_json::Value = serde_json::from_str(req.as_str()).unwrap();
        let event = serde_json::json!({"type": "message", "room": "r", "offset": 1, "epoch": "e", "text": req["text"]});
        assert_eq!(hub_event(&event.to_string()), HubEvent::Payload(true, data.clone()));
        let Message::Text(req) = hub_publish("r", false, &[0, 255]) else { panic!() };
        let req: serde_json::Value = serde_json::from_str(req.as_str()).unwrap();
        let event = serde_json::json!({"type": "message", "binary": req["binary"]});
        assert_eq!(hub_event(&event.to_string()), HubEvent::Payload(false, bytes::Bytes::from_static(&[0, 255])));
        assert_eq!(hub_event(r#"{"type":"published","offset":3}"#), HubEvent::Other);
        assert_eq!(hub_event(r#"{"type":"error","code":"x"}"#), HubEvent::Error("hub error"));
        assert_eq!(hub_event(r#"{"type":"message","binary":"**"}"#), HubEvent::Error("corrupt message"));
        assert_eq!(hub_event("nope"), HubEvent::Error("hub: not JSON"));
    }

    #[test]
    fn rooms_get_their_publishers_then_subscribers() {
        let r = roles(2, 2, 3);
        assert_eq!(r.len(), 10);
        assert_eq!(r[0], Role::Publisher { room: 0, id: 0 });
        assert_eq!(r[1], Role::Publisher { room: 0, id: 1 });
        assert_eq!(r[2], Role::Subscriber { room: 0 });
        assert_eq!(r[5], Role::Publisher { room: 1, id: 2 });
        assert_eq!(r[9], Role::Subscriber { room: 1 });
    }

    #[test]
    fn room_urls_are_numbered_only_when_there_are_several() {
        assert_eq!(room_url("ws://h/room/a", 0, 1), "ws://h/room/a");
        assert_eq!(room_url("ws://h/room/a", 3, 4), "ws://h/room/a-3");
        assert_eq!(room_url("ws://h/room/a?x=1", 1, 2), "ws://h/room/a-1?x=1");
    }

    #[test]
    fn the_sequence_field_holds_publisher_and_number() {
        let p = Payloads::new(64, false).unwrap();
        let seq = (7u64 << SEQ_BITS) | 123_456;
        let (got, sched) = p.check(false, &p.make(seq, 99)).unwrap();
        assert_eq!((got >> SEQ_BITS, got & SEQ_MASK, sched), (7, 123_456, 99));
    }
}
