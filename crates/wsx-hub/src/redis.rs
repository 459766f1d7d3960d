//! The Redis engine: rooms shared by every node connected to one Redis server.
//!
//! # In Redis
//!
//! | key / channel               | what                                                        |
//! |-----------------------------|-------------------------------------------------------------|
//! | `wsx:{ROOM}:meta` (hash)    | `epoch` (random, made when missing) and `offset` (the last one assigned) |
//! | `wsx:{ROOM}:log` (stream)   | the history: entry id `0-OFFSET`, fields `e` (the envelope) and `t` (Redis time, ms); trimmed to the history size |
//! | `wsx:{ROOM}:presence` (zset)| members (their JSON), scored by when they expire unless refreshed |
//! | `wsx:instance` (hash)       | `run_id` of the Redis that last wrote, and `gen`, the generation every epoch ends with |
//! | `wsx:DB:room:ROOM` (channel)| every envelope of the room (pub/sub channels are shared by all databases: DB keeps hubs on different databases apart) |
//! | `wsx:DB:probe:NODE` (channel)| the node's probe, published to itself                       |
//!
//! An envelope is `KIND OFFSET EPOCH NODE\nPAYLOAD`: kind `t` (text), `j` (JSON), `b` (binary),
//! `+` or `-` (a member joined or left: offset 0, epoch `-`, the member's JSON as payload).
//! Publishing is one Lua call that assigns the offset, appends to the stream with `MAXLEN` and
//! publishes, so the order of offsets is the order every subscriber receives.
//!
//! A room's epoch is its `epoch` field, a dash, and the generation. Every publish and history
//! read compares the Redis `run_id` with the one recorded: a restart since the last write bumps
//! the generation (unless [`HubConfig::broker_durable`]), because a Redis back from a snapshot
//! or an `everysec` append-only file may hold less than it acknowledged, and offsets it hands
//! out again would otherwise look like messages clients already have.
//!
//! # On this node
//!
//! - A subscriber task owns the pub/sub connection (a `ConnectionManager` on RESP3 that
//!   resubscribes by itself after a reconnection) and applies subscribe and unsubscribe
//!   requests in the order they were made.
//! - A dispatcher task receives every push, in order, and delivers into the registry. It keeps
//!   each room's last delivered (epoch, offset): a jump fills the gap from the stream first; a
//!   lost connection makes every room `interrupted`, and its resubscription repairs each room
//!   from the stream and reports `resumed` (`recovered: false` when the stream no longer holds
//!   what was missed, or the epoch changed).
//! - A probe publishes to the node's own channel every second; when three in a row do not come
//!   back while publishing works, the pub/sub connection is replaced (a subscription that looks
//!   connected but delivers nothing).
//! - A presence task refreshes this node's members' expiry and sweeps expired members (publishing
//!   their `leave`) every third of the presence TTL.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Script, Value};
use tokio::sync::{mpsc, oneshot};

use crate::room::lock;
use crate::{
    random_hex, BoxFuture, Engine, Event, History, HubConfig, HubError, MemberInfo, Payload, Position, Registry,
    RoomMessage,
};

/// Pushes waiting for the dispatcher, at most, and their bytes; more mark every room for repair.
const PUSH_QUEUE: usize = 65_536;
const PUSH_BYTES: usize = 64 << 20;
/// How often the probe goes out.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Probes lost in a row before the pub/sub connection is replaced.
const PROBES_LOST: u64 = 3;

/// Which generation of the data this Redis holds (prepended to PUBLISH and HISTORY): when the
/// Redis instance (its `run_id`) differs from the one recorded in `KEYS[3]`, Redis restarted
/// since the last write; unless its persistence is declared durable (`ARGV[DURABLE]` = 1) what it
/// came back with may be older than what was acknowledged, so the generation, part of every
/// room's epoch, changes: clients then get `recovered: false` rather than a silent gap.
const GENERATION: &str = r"
local function generation(durable)
  local rid = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
  local stored = redis.call('HGET', KEYS[3], 'run_id')
  if stored ~= rid then
    if stored and durable ~= '1' then
      redis.call('HINCRBY', KEYS[3], 'gen', 1)
    end
    redis.call('HSET', KEYS[3], 'run_id', rid)
  end
  return redis.call('HGET', KEYS[3], 'gen') or '0'
end
";

/// KEYS: meta, log, instance. ARGV: channel, kind, node, payload, history size, history TTL
/// (ms), a new epoch, meta TTL (ms), durable.
const PUBLISH: &str = r"
local gen = generation(ARGV[9])
local base = redis.call('HGET', KEYS[1], 'epoch')
if not base then
  -- A new epoch: a log left from a lost meta (evicted, say) belongs to no epoch.
  base = ARGV[7]
  redis.call('HSET', KEYS[1], 'epoch', base)
  redis.call('DEL', KEYS[2])
end
local epoch = base .. '-' .. gen
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local env = ARGV[2] .. ' ' .. offset .. ' ' .. epoch .. ' ' .. ARGV[3] .. '\n' .. ARGV[4]
local t = redis.call('TIME')
local ms = t[1] * 1000 + math.floor(t[2] / 1000)
if tonumber(ARGV[5]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[5], '0-' .. offset, 'e', env, 't', ms)
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
redis.call('PEXPIRE', KEYS[1], ARGV[8])
redis.call('PUBLISH', ARGV[1], env)
return {offset, epoch}
";

/// KEYS: meta, log, instance. ARGV: since (or `none`, or `latest`: the newest entries, newest
/// first), a new epoch, meta TTL (ms), most entries, durable.
const HISTORY: &str = r"
local gen = generation(ARGV[5])
local base = redis.call('HGET', KEYS[1], 'epoch')
if not base then
  base = ARGV[2]
  redis.call('HSET', KEYS[1], 'epoch', base, 'offset', 0)
  redis.call('DEL', KEYS[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local entries = {}
if ARGV[1] == 'latest' then
  entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[4])
elseif ARGV[1] ~= 'none' then
  entries = redis.call('XRANGE', KEYS[2], '(0-' .. ARGV[1], '+', 'COUNT', ARGV[4])
end
return {base .. '-' .. gen, offset, now, entries}
";

const JOIN: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
";

const LEAVE: &str = r"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return 1
";

/// Refreshes this node's members (ARGV[4..], re-adding any the broker lost) and the room's
/// meta (so that a quiet room with members keeps its epoch), then removes the expired members,
/// publishing a leave for each; returns the members left. KEYS: presence, meta. ARGV: presence
/// TTL (ms), channel, meta TTL (ms, 0: leave it), members.
const REFRESH: &str = r"
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ttl = tonumber(ARGV[1])
for i = 4, #ARGV do
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
end
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
for _, m in ipairs(dead) do
  redis.call('ZREM', KEYS[1], m)
  redis.call('PUBLISH', ARGV[2], '- 0 - sweep\n' .. m)
end
if #ARGV > 3 then
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
end
if tonumber(ARGV[3]) > 0 then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return redis.call('ZRANGE', KEYS[1], 0, -1)
";

fn meta_key(room: &str) -> String {
    format!("wsx:{{{room}}}:meta")
}
fn log_key(room: &str) -> String {
    format!("wsx:{{{room}}}:log")
}
fn presence_key(room: &str) -> String {
    format!("wsx:{{{room}}}:presence")
}
/// The key that records which Redis instance (its `run_id`) last wrote, and the generation that
/// every epoch carries (bumped when Redis restarted without declared durable persistence).
const INSTANCE_KEY: &str = "wsx:instance";

fn broker(e: impl std::fmt::Display) -> HubError {
    HubError::Broker(e.to_string())
}

pub(crate) struct RedisEngine {
    shared: Arc<Shared>,
    /// To the dispatcher (for [`Engine::joined`]).
    push: mpsc::Sender<Input>,
}

struct Shared {
    node: String,
    /// `wsx:DB:room:` — Redis pub/sub channels are shared by every database of a server, so
    /// the database is part of every channel name: hubs on different databases stay apart.
    channel_prefix: String,
    /// This node's probe channel.
    probe_channel: String,
    /// Redis keeps every acknowledged write across a restart (`HubConfig::broker_durable`).
    durable: bool,
    registry: Arc<Registry>,
    cmd: ConnectionManager,
    control: mpsc::Sender<Control>,
    scripts: Scripts,
    history_size: usize,
    history_ttl_ms: u64,
    meta_ttl_ms: u64,
    presence_ttl_ms: u64,
    timeout: Duration,
    /// This node's members' presence entries (their JSON), by room.
    present: Mutex<HashMap<Arc<str>, HashSet<String>>>,
    /// The last probe sent, and the last one that came back.
    probe_sent: AtomicU64,
    /// What the pushes use (the queue to the dispatcher, its byte count, the probe).
    side: PushSide,
}

struct Scripts {
    publish: Script,
    history: Script,
    join: Script,
    leave: Script,
    refresh: Script,
}

enum Control {
    Subscribe(String, oneshot::Sender<Result<(), HubError>>),
    Unsubscribe(String),
    /// Replace the pub/sub connection (it stopped delivering).
    Reconnect,
}

/// What the dispatcher receives.
enum Input {
    Push(PushInfo),
    /// The pub/sub connection was replaced: every room may have missed messages.
    Reset,
    /// A member joined a room at this position.
    Joined(Arc<str>, Position),
    /// The last member of a room on this node left.
    Left(Arc<str>),
}

impl RedisEngine {
    pub(crate) async fn connect(
        url: &str,
        registry: Arc<Registry>,
        config: &HubConfig,
        node: String,
    ) -> Result<Self, HubError> {
        let info = url.into_connection_info().map_err(|e| HubError::Broker(format!("bad Redis URL {url:?}: {e}")))?;
        let settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
        let db = settings.db();
        let client = Client::open(info.set_redis_settings(settings)).map_err(broker)?;
        let timeout = config.broker_timeout;
        // One plain attempt first, so that a refused or failed connection is reported as such
        // (the managers below retry, and would only time out).
        tokio::time::timeout(timeout, client.get_multiplexed_async_connection())
            .await
            .map_err(|_| HubError::Broker(format!("no connection to {url} within {timeout:?}")))?
            .map_err(|e| HubError::Broker(format!("cannot connect to {url}: {e}")))?;
        let cmd =
            tokio::time::timeout(timeout, ConnectionManager::new_with_config(client.clone(), manager_config(timeout)))
                .await
                .map_err(|_| HubError::Broker(format!("no connection to {url} within {timeout:?}")))?
                .map_err(|e| HubError::Broker(format!("cannot connect to {url}: {e}")))?;
        let (push_tx, push_rx) = mpsc::channel(PUSH_QUEUE);
        let side = PushSide {
            queue: push_tx.clone(),
            queued: Arc::default(),
            overflow: Arc::default(),
            probe_channel: format!("wsx:{db}:probe:{node}"),
            probe_seen: Arc::default(),
        };
        let (control_tx, control_rx) = mpsc::channel(1024);
        let ms = |d: Duration| d.as_millis().max(1) as u64;
        let shared = Arc::new(Shared {
            node: node.clone(),
            channel_prefix: format!("wsx:{db}:room:"),
            probe_channel: side.probe_channel.clone(),
            durable: config.broker_durable,
            registry,
            cmd,
            control: control_tx,
            scripts: Scripts {
                publish: Script::new(&format!("{GENERATION}{PUBLISH}")),
                history: Script::new(&format!("{GENERATION}{HISTORY}")),
                join: Script::new(JOIN),
                leave: Script::new(LEAVE),
                refresh: Script::new(REFRESH),
            },
            history_size: config.history_size,
            history_ttl_ms: ms(config.history_ttl),
            meta_ttl_ms: ms(config.history_ttl * 2).max(86_400_000),
            presence_ttl_ms: ms(config.presence_ttl),
            timeout,
            present: Mutex::default(),
            probe_sent: AtomicU64::new(0),
            side: side.clone(),
        });
        let sub = Subscriber::connect(&client, side.clone(), timeout).await?;
        tokio::spawn(subscriber(Arc::downgrade(&shared), client, sub, control_rx));
        tokio::spawn(dispatcher(Arc::downgrade(&shared), push_rx, side.overflow.clone()));
        tokio::spawn(probe(Arc::downgrade(&shared)));
        tokio::spawn(presence_refresh(Arc::downgrade(&shared), config.presence_ttl / 3));
        tracing::info!(node, url, "room broker: Redis");
        Ok(Self { shared, push: push_tx })
    }
}

fn manager_config(timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1))
        // While Redis is away, keep trying (once a second at most): the pub/sub connection has
        // no other way back than its own reconnection, and every call has its own deadline.
        .set_number_of_retries(1_000_000)
}

/// Where the pub/sub connection's pushes go: called on the connection's task, so it never waits.
#[derive(Clone)]
struct PushSide {
    queue: mpsc::Sender<Input>,
    /// Bytes of the messages in `queue`.
    queued: Arc<AtomicUsize>,
    /// Pushes were dropped (the queue was full): every room needs a repair.
    overflow: Arc<AtomicBool>,
    probe_channel: String,
    /// The last probe that came back (recorded here, so that a dispatcher busy delivering does
    /// not look like a dead subscription).
    probe_seen: Arc<AtomicU64>,
}

impl PushSide {
    fn push(&self, info: PushInfo) {
        let mut size = 0;
        if info.kind == PushKind::Message {
            if let (Some(chan), Some(payload)) =
                (info.data.first().and_then(bytes_of), info.data.get(1).and_then(bytes_of))
            {
                if chan == self.probe_channel.as_bytes() {
                    if let Some(n) = std::str::from_utf8(&payload).ok().and_then(|p| p.parse().ok()) {
                        self.probe_seen.fetch_max(n, Ordering::AcqRel);
                    }
                    return;
                }
                size = payload.len();
            }
        }
        // Bounded in pushes and bytes: past either, the push is dropped and every room is
        // repaired from the history instead.
        if self.queued.load(Ordering::Acquire) + size > PUSH_BYTES {
            self.overflow.store(true, Ordering::Release);
            return;
        }
        self.queued.fetch_add(size, Ordering::AcqRel);
        if self.queue.try_send(Input::Push(info)).is_err() {
            self.queued.fetch_sub(size, Ordering::AcqRel);
            self.overflow.store(true, Ordering::Release);
        }
    }
}

/// The pub/sub connection.
struct Subscriber {
    manager: ConnectionManager,
}

impl Subscriber {
    async fn connect(client: &Client, side: PushSide, timeout: Duration) -> Result<Self, HubError> {
        let probe_channel = side.probe_channel.clone();
        let sender = move |info: PushInfo| -> Result<(), ()> {
            side.push(info);
            Ok(())
        };
        let config = manager_config(timeout).set_push_sender(sender).set_automatic_resubscription();
        let mut manager = tokio::time::timeout(timeout, ConnectionManager::new_with_config(client.clone(), config))
            .await
            .map_err(|_| HubError::Broker(format!("no pub/sub connection within {timeout:?}")))?
            .map_err(broker)?;
        tokio::time::timeout(timeout, manager.subscribe(&probe_channel))
            .await
            .map_err(|_| HubError::Broker("no answer to SUBSCRIBE".into()))?
            .map_err(broker)?;
        Ok(Self { manager })
    }
}

/// Applies subscription changes in order; replaces the pub/sub connection when asked.
async fn subscriber(shared: Weak<Shared>, client: Client, mut sub: Subscriber, mut control: mpsc::Receiver<Control>) {
    while let Some(request) = control.recv().await {
        let Some(s) = shared.upgrade() else { return };
        match request {
            Control::Subscribe(room, reply) => {
                let result = tokio::time::timeout(s.timeout, sub.manager.subscribe(s.channel(&room))).await;
                let result = match result {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(broker(e)),
                    Err(_) => Err(HubError::Broker("no answer to SUBSCRIBE".into())),
                };
                let _ = reply.send(result);
            }
            Control::Unsubscribe(room) => {
                // A member may have come back meanwhile (its subscribe is queued after this).
                if !s.registry.has_room(&room) {
                    let _ = tokio::time::timeout(s.timeout, sub.manager.unsubscribe(s.channel(&room))).await;
                }
            }
            Control::Reconnect => {
                tracing::warn!("room broker: the subscription stopped delivering; reconnecting it");
                let _ = s.side.queue.send(Input::Reset).await;
                match Subscriber::connect(&client, s.side.clone(), s.timeout).await {
                    Ok(mut fresh) => {
                        for room in s.registry.rooms() {
                            let _ = tokio::time::timeout(s.timeout, fresh.manager.subscribe(s.channel(&room))).await;
                        }
                        sub = fresh;
                    }
                    Err(e) => tracing::warn!(error = %e, "room broker: cannot reconnect the subscription yet"),
                }
            }
        }
    }
}

/// What the dispatcher knows of one room.
#[derive(Debug, Default)]
struct Track {
    /// The epoch and offset of the last message delivered on this node.
    epoch: Option<Arc<str>>,
    last: u64,
    /// The broker connection was lost since; a repair is due once `resubscribed`.
    interrupted: bool,
    /// The room's subscription was confirmed again since the connection was lost.
    resubscribed: bool,
    /// A message was delivered (until then, `epoch` and `last` come from members' joins).
    delivered: bool,
}

/// Delivers every push into the registry, in order, repairing gaps from the history.
async fn dispatcher(shared: Weak<Shared>, mut input: mpsc::Receiver<Input>, overflow: Arc<AtomicBool>) {
    let mut tracks: HashMap<Arc<str>, Track> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let next = tokio::select! {
            next = input.recv() => next,
            _ = tick.tick() => {
                let Some(s) = shared.upgrade() else { return };
                tracks.retain(|room, _| s.registry.has_room(room));
                // Repairs that failed (the command connection was not back yet) are retried.
                let due: Vec<Arc<str>> =
                    tracks.iter().filter(|(_, t)| t.interrupted && t.resubscribed).map(|(r, _)| r.clone()).collect();
                for room in due {
                    repair(&s, &room, tracks.entry(room.clone()).or_default(), None).await;
                }
                continue;
            }
        };
        let Some(next) = next else { return };
        let Some(s) = shared.upgrade() else { return };
        if overflow.swap(false, Ordering::AcqRel) {
            tracing::warn!("room broker: pushes came faster than they could be delivered; repairing every room");
            for room in s.registry.rooms() {
                repair(&s, &room, tracks.entry(room.clone()).or_default(), None).await;
            }
        }
        match next {
            Input::Reset => interrupt(&s, &mut tracks),
            Input::Left(room) => {
                // A member that joins later starts a new track (from its own position).
                if !s.registry.has_room(&room) {
                    tracks.remove(&room);
                }
            }
            Input::Joined(room, position) => {
                let track = tracks.entry(room).or_default();
                match &track.epoch {
                    None => (track.epoch, track.last) = (Some(position.epoch), position.offset),
                    Some(epoch) if !track.delivered && *epoch == position.epoch => {
                        track.last = track.last.min(position.offset);
                    }
                    Some(_) => {}
                }
            }
            Input::Push(push) => match push.kind {
                PushKind::Disconnection => interrupt(&s, &mut tracks),
                PushKind::Subscribe => {
                    let Some(room) = push.data.first().and_then(bytes_of).and_then(|c| s.room_of(&c)) else { continue };
                    if let Some(track) = tracks.get_mut(&*room).filter(|t| t.interrupted) {
                        track.resubscribed = true;
                        repair(&s, &room, track, None).await;
                    }
                }
                PushKind::Message => {
                    let (Some(chan), Some(payload)) =
                        (push.data.first().and_then(bytes_of), push.data.get(1).and_then(bytes_of))
                    else {
                        continue;
                    };
                    let Some(room) = s.room_of(&chan) else { continue };
                    s.side.queued.fetch_sub(payload.len(), Ordering::AcqRel);
                    if !s.registry.has_room(&room) {
                        continue;
                    }
                    match parse_envelope(&room, Bytes::from(payload)) {
                        Some(Envelope::Message(m)) => {
                            let track = tracks.entry(room.clone()).or_default();
                            deliver(&s, &room, track, m).await;
                        }
                        Some(Envelope::Presence(joined, member)) => {
                            s.registry.deliver(&room, if joined { Event::Join(member) } else { Event::Leave(member) });
                        }
                        None => tracing::warn!(room = %room, "room broker: unreadable envelope dropped"),
                    }
                }
                _ => {}
            },
        }
    }
}

/// The connection to the broker was lost: every room may miss messages until it is
/// resubscribed and repaired.
fn interrupt(s: &Shared, tracks: &mut HashMap<Arc<str>, Track>) {
    for room in s.registry.rooms() {
        let track = tracks.entry(room.clone()).or_default();
        track.resubscribed = false;
        if !track.interrupted {
            track.interrupted = true;
            s.registry.deliver(&room, Event::Interrupted);
        }
    }
}

/// Delivers a live message in order: a duplicate is dropped, a gap (or another epoch) is dealt
/// with by [`repair`] first.
async fn deliver(s: &Shared, room: &Arc<str>, track: &mut Track, m: RoomMessage) {
    let in_order = match &track.epoch {
        Some(epoch) if *epoch == *m.epoch() => {
            if m.offset() <= track.last {
                return;
            }
            m.offset() == track.last + 1
        }
        Some(_) => false,
        None => true,
    };
    if !in_order || track.interrupted {
        // A gap, another epoch, or live traffic before the repair after an outage ran: repair
        // up to just before this message, so nothing is skipped.
        repair(s, room, track, Some(m.offset().saturating_sub(1))).await;
        if track.interrupted {
            // The history could not be read: deliver nothing out of order meanwhile. The next
            // repair (on the tick) delivers this message from the history.
            return;
        }
        if track.epoch.as_ref() == Some(m.epoch()) && m.offset() <= track.last {
            return;
        }
    }
    track.epoch = Some(m.epoch().clone());
    track.last = m.offset();
    track.delivered = true;
    s.registry.deliver(room, Event::Message(m));
}

/// Delivers, from the history, what this node missed of `room` (up to offset `until`, or all);
/// reports `resumed` when the room was interrupted or the gap could not be filled. In another
/// epoch (the broker lost the room, or came back older than it was), what this node delivered
/// cannot be continued: members are told `recovered: false` and get the new epoch's messages
/// that its history holds.
async fn repair(s: &Shared, room: &Arc<str>, track: &mut Track, until: Option<u64>) {
    let read = |since| tokio::time::timeout(s.timeout, s.history(room, Some(since)));
    let failed = |track: &mut Track, e: String| {
        tracing::debug!(room = %room, error = %e, "room broker: repair failed; will retry");
        track.interrupted = true;
        track.resubscribed = true;
    };
    let mut history = match read(track.last).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return failed(track, e.to_string()),
        Err(_) => return failed(track, "no answer".into()),
    };
    // Behind what was delivered in the same epoch: the broker came back with less than it had
    // acknowledged. What was delivered past its offset is not in its history: another epoch.
    let went_back = history.position.offset < track.last;
    let new_epoch = track.epoch.as_ref().is_some_and(|e| went_back || *e != history.position.epoch);
    if new_epoch {
        history = match read(0).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => return failed(track, e.to_string()),
            Err(_) => return failed(track, "no answer".into()),
        };
    }
    let target = until.unwrap_or(history.position.offset).min(history.position.offset);
    let messages: Vec<RoomMessage> = history.messages.into_iter().filter(|m| m.offset() <= target).collect();
    let epoch = history.position.epoch.clone();
    if new_epoch {
        // The new epoch from the first message its history still holds.
        let start = messages.first().map_or(target, |m| m.offset().saturating_sub(1));
        let position = Position { offset: start, epoch: epoch.clone() };
        s.registry.deliver(room, Event::Resumed { recovered: false, missed: 0, position });
        track.epoch = Some(epoch.clone());
        track.last = start;
    } else if track.epoch.is_none() {
        // Nothing delivered or joined from yet: the room goes on from here.
        track.epoch = Some(epoch.clone());
        track.last = target;
    }
    let mut missed = 0;
    let mut recovered = !new_epoch;
    let from = track.last;
    for m in messages.into_iter().filter(|m| m.offset() > from) {
        if m.offset() != track.last + 1 {
            break;
        }
        track.last = m.offset();
        track.delivered = true;
        missed += 1;
        s.registry.deliver(room, Event::Message(m));
    }
    if track.last < target {
        // The history no longer reaches back far enough: what is missing is lost.
        recovered = false;
        track.last = target;
    }
    if !new_epoch && (track.interrupted || !recovered) {
        let position = Position { offset: track.last, epoch };
        s.registry.deliver(room, Event::Resumed { recovered, missed, position });
    }
    track.interrupted = false;
}

fn bytes_of(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

enum Envelope {
    Message(RoomMessage),
    Presence(bool, MemberInfo),
}

/// Reads `KIND OFFSET EPOCH NODE\nPAYLOAD`.
fn parse_envelope(room: &Arc<str>, env: Bytes) -> Option<Envelope> {
    let nl = env.iter().position(|&b| b == b'\n')?;
    let head = std::str::from_utf8(&env[..nl]).ok()?;
    let payload = env.slice(nl + 1..);
    let mut fields = head.split(' ');
    let kind = fields.next()?;
    let offset: u64 = fields.next()?.parse().ok()?;
    let epoch = fields.next()?;
    match kind {
        "+" | "-" => {
            let member: MemberInfo = serde_json::from_slice(&payload).ok()?;
            Some(Envelope::Presence(kind == "+", member))
        }
        _ => {
            // Offsets start at 1: an offset 0 is not one of ours.
            if offset == 0 {
                return None;
            }
            let kind = *kind.as_bytes().first()?;
            let payload = Payload::from_kind(kind, payload)?;
            Some(Envelope::Message(RoomMessage::new(room.clone(), offset, epoch.into(), payload)))
        }
    }
}

fn int_of(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => std::str::from_utf8(&bytes_of(other)?).ok()?.parse().ok(),
    }
}

impl Shared {
    /// The pub/sub channel of a room.
    fn channel(&self, room: &str) -> String {
        format!("{}{room}", self.channel_prefix)
    }

    /// The room of a channel name.
    fn room_of(&self, chan: &[u8]) -> Option<Arc<str>> {
        std::str::from_utf8(chan).ok()?.strip_prefix(self.channel_prefix.as_str()).map(Arc::from)
    }

    /// The history after `since` (`None`: only the position).
    async fn history(&self, room: &Arc<str>, since: Option<u64>) -> Result<History, HubError> {
        self.read_history(room, since.map_or_else(|| "none".to_owned(), |n| n.to_string()), self.history_size).await
    }

    /// The history script: `since` is an offset, `none` or `latest` (the newest `count`).
    async fn read_history(&self, room: &Arc<str>, since_arg: String, count: usize) -> Result<History, HubError> {
        let latest = since_arg == "latest";
        let mut conn = self.cmd.clone();
        let value: Value = self
            .scripts
            .history
            .key(meta_key(room))
            .key(log_key(room))
            .key(INSTANCE_KEY)
            .arg(since_arg)
            .arg(random_hex(8))
            .arg(self.meta_ttl_ms)
            .arg(count.max(1))
            .arg(if self.durable { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await
            .map_err(broker)?;
        let bad = || HubError::Broker("unexpected answer to the history script".into());
        let Value::Array(parts) = value else { return Err(bad()) };
        let [epoch, offset, now, entries] = parts.as_slice() else { return Err(bad()) };
        let epoch: Arc<str> = String::from_utf8(bytes_of(epoch).ok_or_else(bad)?).map_err(|_| bad())?.into();
        let offset = int_of(offset).ok_or_else(bad)?;
        let now = int_of(now).ok_or_else(bad)?;
        let mut messages = Vec::new();
        if let Value::Array(entries) = entries {
            for entry in entries {
                let Value::Array(pair) = entry else { return Err(bad()) };
                let Some(Value::Array(fields)) = pair.get(1) else { return Err(bad()) };
                let mut env = None;
                let mut at = 0;
                for kv in fields.chunks(2) {
                    match (kv.first().and_then(bytes_of).as_deref(), kv.get(1)) {
                        (Some(b"e"), Some(v)) => env = bytes_of(v),
                        (Some(b"t"), Some(v)) => at = int_of(v).unwrap_or(0),
                        _ => {}
                    }
                }
                // Older than the history's age: as if trimmed.
                if now.saturating_sub(at) > self.history_ttl_ms {
                    continue;
                }
                match env.and_then(|e| parse_envelope(room, Bytes::from(e))) {
                    Some(Envelope::Message(m)) if **m.epoch() == *epoch => messages.push(m),
                    _ => {}
                }
            }
        }
        if latest {
            messages.reverse();
        }
        Ok(History { position: Position { offset, epoch }, messages })
    }
}

impl Engine for RedisEngine {
    fn subscribe<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<(), HubError>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            self.shared
                .control
                .send(Control::Subscribe(room.to_owned(), tx))
                .await
                .map_err(|_| HubError::Broker("the subscriber task ended".into()))?;
            rx.await.map_err(|_| HubError::Broker("the subscriber task ended".into()))?
        })
    }

    fn unsubscribe(&self, room: &str) {
        // A full queue only leaves the node subscribed to a room without members here: its
        // messages are then dropped on arrival, and the next subscribe is harmless.
        let _ = self.shared.control.try_send(Control::Unsubscribe(room.to_owned()));
        // Its track goes: a member joining later starts from its own position. When the queue
        // is full the track stays until the next tick prunes it.
        let _ = self.push.try_send(Input::Left(room.into()));
    }

    fn publish<'a>(&'a self, room: &'a str, payload: Payload) -> BoxFuture<'a, Result<Position, HubError>> {
        Box::pin(async move {
            let s = &self.shared;
            let mut conn = s.cmd.clone();
            let kind = [payload.kind()];
            let value: Value = s
                .scripts
                .publish
                .key(meta_key(room))
                .key(log_key(room))
                .key(INSTANCE_KEY)
                .arg(s.channel(room))
                .arg(&kind[..])
                .arg(&s.node)
                .arg(payload.bytes().as_ref())
                .arg(s.history_size)
                .arg(s.history_ttl_ms)
                .arg(random_hex(8))
                .arg(s.meta_ttl_ms)
                .arg(if s.durable { "1" } else { "0" })
                .invoke_async(&mut conn)
                .await
                .map_err(broker)?;
            let bad = || HubError::Broker("unexpected answer to the publish script".into());
            let Value::Array(parts) = value else { return Err(bad()) };
            let offset = parts.first().and_then(int_of).ok_or_else(bad)?;
            let epoch = parts.get(1).and_then(bytes_of).and_then(|e| String::from_utf8(e).ok()).ok_or_else(bad)?;
            Ok(Position { offset, epoch: epoch.into() })
        })
    }

    fn history<'a>(&'a self, room: &'a str, since: u64) -> BoxFuture<'a, Result<History, HubError>> {
        Box::pin(async move {
            let since = (since != u64::MAX).then_some(since);
            self.shared.history(&Arc::from(room), since).await
        })
    }

    fn join_presence<'a>(&'a self, room: &'a str, member: &'a MemberInfo) -> BoxFuture<'a, Result<(), HubError>> {
        Box::pin(async move {
            let s = &self.shared;
            let json = serde_json::to_string(member).map_err(broker)?;
            let env = format!("+ 0 - {}\n{json}", s.node);
            let mut conn = s.cmd.clone();
            let _: Value = s
                .scripts
                .join
                .key(presence_key(room))
                .arg(&json)
                .arg(s.presence_ttl_ms)
                .arg(s.channel(room))
                .arg(env)
                .invoke_async(&mut conn)
                .await
                .map_err(broker)?;
            lock(&s.present).entry(Arc::from(room)).or_default().insert(json);
            Ok(())
        })
    }

    fn leave_presence(&self, room: &str, member: MemberInfo) {
        let s = self.shared.clone();
        let Ok(json) = serde_json::to_string(&member) else { return };
        {
            let mut present = lock(&s.present);
            if let Some(set) = present.get_mut(room) {
                set.remove(&json);
                if set.is_empty() {
                    present.remove(room);
                }
            }
        }
        let room = room.to_owned();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        // Best effort: when it fails, the entry expires with the presence TTL.
        runtime.spawn(async move {
            let env = format!("- 0 - {}\n{json}", s.node);
            let mut conn = s.cmd.clone();
            let mut call = s.scripts.leave.key(presence_key(&room));
            call.arg(&json).arg(s.channel(&room)).arg(env);
            let _ = tokio::time::timeout(s.timeout, call.invoke_async::<Value>(&mut conn)).await;
        });
    }

    fn latest<'a>(&'a self, room: &'a str, n: usize) -> BoxFuture<'a, Result<History, HubError>> {
        Box::pin(async move {
            let n = n.min(self.shared.history_size);
            if n == 0 {
                return self.shared.history(&Arc::from(room), None).await;
            }
            self.shared.read_history(&Arc::from(room), "latest".to_owned(), n).await
        })
    }

    fn joined(&self, room: &str, position: &Position) {
        // A full queue means the dispatcher repairs every room anyway.
        let _ = self.push.try_send(Input::Joined(room.into(), position.clone()));
    }

    fn presence<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Vec<MemberInfo>, HubError>> {
        Box::pin(async move {
            let s = &self.shared;
            let mut conn = s.cmd.clone();
            let value: Value = s
                .scripts
                .refresh
                .key(presence_key(room))
                .key(meta_key(room))
                .arg(s.presence_ttl_ms)
                .arg(s.channel(room))
                .arg(0)
                .invoke_async(&mut conn)
                .await
                .map_err(broker)?;
            let Value::Array(members) = value else {
                return Err(HubError::Broker("unexpected presence answer".into()));
            };
            Ok(members.iter().filter_map(bytes_of).filter_map(|m| serde_json::from_slice(&m).ok()).collect())
        })
    }
}

/// Publishes the probe every second; asks for a new pub/sub connection when probes stop
/// coming back while publishing works.
async fn probe(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    let mut lost = 0;
    loop {
        tick.tick().await;
        let Some(s) = shared.upgrade() else { return };
        let sent = s.probe_sent.load(Ordering::Acquire);
        let seen = s.side.probe_seen.load(Ordering::Acquire);
        if sent > 0 && seen < sent {
            lost += 1;
        } else {
            lost = 0;
        }
        let n = sent + 1;
        let mut conn = s.cmd.clone();
        let published = tokio::time::timeout(
            s.timeout,
            redis::cmd("PUBLISH").arg(&s.probe_channel).arg(n).query_async::<i64>(&mut conn),
        )
        .await;
        match published {
            Ok(Ok(_)) => s.probe_sent.store(n, Ordering::Release),
            // Redis is away: the pub/sub connection's own reconnection handles it.
            _ => lost = 0,
        }
        if lost >= PROBES_LOST {
            lost = 0;
            s.side.probe_seen.store(s.probe_sent.load(Ordering::Acquire), Ordering::Release);
            let _ = s.control.try_send(Control::Reconnect);
        }
    }
}

/// Keeps this node's members in presence (and its rooms' meta alive), and sweeps the expired
/// members of its rooms. Every room's refresh goes out at once (pipelined on the one
/// connection), within one deadline.
async fn presence_refresh(shared: Weak<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    loop {
        tick.tick().await;
        let Some(s) = shared.upgrade() else { return };
        let mut rooms: HashMap<Arc<str>, Vec<String>> =
            lock(&s.present).iter().map(|(r, m)| (r.clone(), m.iter().cloned().collect())).collect();
        for room in s.registry.rooms() {
            rooms.entry(room).or_default();
        }
        let mut calls = tokio::task::JoinSet::new();
        for (room, members) in rooms {
            let s = s.clone();
            calls.spawn(async move {
                let mut conn = s.cmd.clone();
                let mut call = s.scripts.refresh.key(presence_key(&room));
                call.key(meta_key(&room)).arg(s.presence_ttl_ms).arg(s.channel(&room)).arg(s.meta_ttl_ms);
                for m in &members {
                    call.arg(m);
                }
                let result = call.invoke_async::<Value>(&mut conn).await;
                (room, result)
            });
        }
        drop(s);
        let all = async {
            while let Some(done) = calls.join_next().await {
                if let Ok((room, Err(e))) = done {
                    tracing::debug!(room = %room, error = %e, "presence refresh failed");
                }
            }
        };
        if tokio::time::timeout(every.max(Duration::from_millis(100)), all).await.is_err() {
            tracing::debug!("presence refresh not done within its period");
            calls.abort_all();
        }
    }
}
