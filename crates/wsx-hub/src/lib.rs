//! Rooms for wsx: publish/subscribe over WebSockets, on one node or across many.
//!
//! A [`Hub`] carries messages published to a room to every member of that room, in one order
//! that every member sees, with each room's recent history kept so that a member that comes
//! back after a disconnection gets exactly what it missed. It has two engines behind one trait
//! ([`Engine`]):
//!
//! - **in-process** ([`Hub::local`]): rooms live in this process;
//! - **Redis** ([`Hub::redis`], feature `redis`): several nodes (`wsx serve` processes, or your
//!   own servers) share rooms through one Redis server. Every message goes through Redis, also
//!   for members on the publisher's node, so every member of a room sees one order.
//!
//! Connections take part as members: [`Hub::member`] gives a [`Member`], whose
//! [`join`](Member::join) enters a room (recovering what it missed since a [`Position`]) and
//! whose [`recv`](Member::recv) yields the events of all its rooms from one bounded inbox.
//! [`session`] serves a whole WebSocket connection: a raw room member (`/room/NAME` in `wsx
//! serve`: every message to every member) or a client of the hub subprotocol `wsx.hub.v1`
//! ([`protocol`]: several rooms per connection, publish acknowledgements, recovery, presence).
//!
//! # Quick start
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), wsx_hub::HubError> {
//! use wsx_hub::{Event, Hub, HubConfig, JoinOptions, Payload, Received};
//!
//! let hub = Hub::local(HubConfig::default());
//! let mut alice = hub.member();
//! alice.join("lobby", JoinOptions::default()).await?;
//! let at = hub.publish("lobby", Payload::Text("hello".into())).await?;
//! assert_eq!(at.offset, 1);
//! match alice.recv().await {
//!     Received::Event(room, Event::Message(m)) => assert_eq!((&*room, m.offset()), ("lobby", 1)),
//!     other => panic!("{other:?}"),
//! }
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! - One order per room: every member receives a room's messages in the order of their offsets
//!   (1, 2, 3… within an epoch), with no duplicate.
//! - Live delivery is at most once; a gap is never silent. A node that sees an offset jump (or
//!   loses its broker connection) fills the gap from the room's history before delivering
//!   further; when the history no longer covers it, members get
//!   [`Event::Resumed`] with `recovered: false`.
//! - A member that falls behind (its inbox passes [`QueueLimits`]) is cut off
//!   ([`Received::Lagged`]) and never slows the others.
//! - [`Member::join`] with a [`Position`] yields exactly the messages after it, or says that it
//!   cannot (`recovered: false`) rather than giving a partial catch-up.

#![warn(missing_docs)]

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod local;
pub mod protocol;
#[cfg(feature = "redis")]
mod redis;
mod room;
pub mod session;

pub use room::{Event, Inbox, Lag, MemberInfo, Payload, Position, QueueLimits, Received, Registry, RoomMessage};

/// A boxed, sendable future: what [`Engine`] methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How a hub behaves. The defaults suit a chat or a dashboard.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// How much each connection's inbox may hold before it is cut off.
    pub queue: QueueLimits,
    /// Messages each room's history keeps (the last N).
    pub history_size: usize,
    /// How long a message stays in the history (and an idle room's history is kept).
    pub history_ttl: Duration,
    /// How long a member stays in presence after its node stops refreshing it (a dead node's
    /// members disappear within this, plus one refresh period).
    pub presence_ttl: Duration,
    /// The deadline of every call to the broker.
    pub broker_timeout: Duration,
    /// The most rooms one connection may be in.
    pub max_rooms_per_member: usize,
    /// This node's id in member ids and in the envelope of what it publishes (random when
    /// `None`).
    pub node_id: Option<String>,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            queue: QueueLimits::default(),
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            presence_ttl: Duration::from_secs(15),
            broker_timeout: Duration::from_secs(2),
            max_rooms_per_member: 64,
            node_id: None,
        }
    }
}

/// Why a hub operation failed. [`code`](Self::code) is the error code of the hub protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// The room name is empty, longer than 128 bytes, or has a control character or a `/`.
    #[error("bad room name: {0:?} (1 to 128 bytes, no control characters, no '/')")]
    BadRoom(String),
    /// The member is in this room already.
    #[error("already in room {0:?}")]
    AlreadyJoined(String),
    /// The member is not in this room.
    #[error("not in room {0:?}")]
    NotJoined(String),
    /// The member is in the most rooms it may be in.
    #[error("in {0} rooms already, the most one connection may join")]
    TooManyRooms(usize),
    /// The broker did not answer, or answered with an error.
    #[error("room broker unavailable: {0}")]
    Broker(String),
}

impl HubError {
    /// The error's code in the hub protocol (`bad_room`, `already_subscribed`,
    /// `not_subscribed`, `too_many_rooms`, `broker_unavailable`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRoom(_) => "bad_room",
            Self::AlreadyJoined(_) => "already_subscribed",
            Self::NotJoined(_) => "not_subscribed",
            Self::TooManyRooms(_) => "too_many_rooms",
            Self::Broker(_) => "broker_unavailable",
        }
    }
}

/// What a room's history holds after an offset.
#[derive(Debug, Clone)]
pub struct History {
    /// Where the room stands now.
    pub position: Position,
    /// The messages after the offset asked for that the history still holds, oldest first.
    pub messages: Vec<RoomMessage>,
}

/// Carries room traffic between the nodes of a hub; [`Hub`] holds one. An engine delivers what
/// reaches this node into the [`Registry`] it was built with, each room's messages in offset
/// order.
pub trait Engine: Send + Sync + 'static {
    /// Starts delivering `room`'s traffic to this node; resolves once it flows (anything
    /// published after that reaches this node).
    fn subscribe<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<(), HubError>>;
    /// Stops delivering `room` to this node (its last member here left). Never waits.
    fn unsubscribe(&self, room: &str);
    /// Appends a message to the room's history, assigning its offset, and delivers it to
    /// every member on every node.
    fn publish<'a>(&'a self, room: &'a str, payload: Payload) -> BoxFuture<'a, Result<Position, HubError>>;
    /// The messages after offset `since` that the history holds, and the room's position.
    fn history<'a>(&'a self, room: &'a str, since: u64) -> BoxFuture<'a, Result<History, HubError>>;
    /// Adds a member to the room's presence and tells the room (a join event).
    fn join_presence<'a>(&'a self, room: &'a str, member: &'a MemberInfo) -> BoxFuture<'a, Result<(), HubError>>;
    /// Removes a member from the room's presence and tells the room. Never waits.
    fn leave_presence(&self, room: &str, member: MemberInfo);
    /// Who is in the room, on every node.
    fn presence<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Vec<MemberInfo>, HubError>>;
    /// A member joined `room` at `position` (it receives the messages after it): an engine
    /// that has not delivered anything of the room yet counts gaps from there.
    fn joined(&self, _room: &str, _position: &Position) {}
}

/// Rooms, their members on this node, and the engine that connects them to the other nodes.
/// Cheap to clone (an [`Arc`] inside).
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    registry: Arc<Registry>,
    engine: Box<dyn Engine>,
    config: HubConfig,
    node: Arc<str>,
    next_member: AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("node", &self.inner.node).finish_non_exhaustive()
    }
}

/// A random id of `n` bytes, in hex.
pub(crate) fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    // The OS generator does not fail on the platforms tokio runs on; a fixed id would still
    // work (ids only need to differ between nodes and epochs).
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Hub {
    /// A hub whose rooms live in this process.
    pub fn local(config: HubConfig) -> Self {
        let registry = Arc::new(Registry::default());
        let engine = local::LocalEngine::new(registry.clone(), &config);
        Self::with_engine(config, registry, Box::new(engine))
    }

    /// A hub whose rooms are shared, through the Redis server at `url`
    /// (`redis://HOST:PORT[/DB]`), with every other node connected to it. Fails when the URL
    /// is bad or Redis cannot be reached within the broker timeout.
    #[cfg(feature = "redis")]
    pub async fn redis(url: &str, config: HubConfig) -> Result<Self, HubError> {
        let registry = Arc::new(Registry::default());
        let node = config.node_id.clone().unwrap_or_else(|| random_hex(6));
        let engine = redis::RedisEngine::connect(url, registry.clone(), &config, node.clone()).await?;
        let config = HubConfig { node_id: Some(node), ..config };
        Ok(Self::with_engine(config, registry, Box::new(engine)))
    }

    /// A hub over any engine; `registry` must be the one the engine delivers into.
    pub fn with_engine(config: HubConfig, registry: Arc<Registry>, engine: Box<dyn Engine>) -> Self {
        let node: Arc<str> = config.node_id.clone().unwrap_or_else(|| random_hex(6)).into();
        Self { inner: Arc::new(HubInner { registry, engine, config, node, next_member: AtomicU64::new(1) }) }
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node
    }

    /// The hub's settings.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// The rooms with members on this node.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// A new member (one per connection), in no room yet.
    pub fn member(&self) -> Member {
        let n = self.inner.next_member.fetch_add(1, Ordering::Relaxed);
        Member {
            hub: self.clone(),
            inbox: Arc::new(Inbox::new(self.inner.config.queue)),
            id: format!("{}.{n}", self.inner.node),
            rooms: HashMap::new(),
        }
    }

    /// Publishes to `room`: every member of it, on every node, receives the message (members
    /// that joined since are not sent it). Returns the message's position.
    pub async fn publish(&self, room: &str, payload: Payload) -> Result<Position, HubError> {
        check_room(room)?;
        self.deadline(self.inner.engine.publish(room, payload)).await
    }

    /// The messages of `room` after `since`, if its history still holds all of them.
    pub async fn recover(&self, room: &str, since: &Position) -> Result<Recovery, HubError> {
        check_room(room)?;
        let history = self.deadline(self.inner.engine.history(room, since.offset)).await?;
        Ok(Recovery::judge(since, history))
    }

    /// Who is in `room`, on every node.
    pub async fn presence(&self, room: &str) -> Result<Vec<MemberInfo>, HubError> {
        check_room(room)?;
        self.deadline(self.inner.engine.presence(room)).await
    }

    async fn deadline<T>(&self, f: impl Future<Output = Result<T, HubError>>) -> Result<T, HubError> {
        let timeout = self.inner.config.broker_timeout;
        tokio::time::timeout(timeout, f)
            .await
            .unwrap_or_else(|_| Err(HubError::Broker(format!("no answer within {timeout:?}"))))
    }
}

/// Whether a room's history covered a member's gap.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// All the messages after the member's position were found (they are in `messages`).
    /// When `false`, `messages` is empty: a partial catch-up is never given.
    pub recovered: bool,
    /// The messages missed, oldest first.
    pub messages: Vec<RoomMessage>,
    /// Where the room stands now.
    pub position: Position,
}

impl Recovery {
    fn judge(since: &Position, history: History) -> Self {
        let History { position, mut messages } = history;
        let covered = position.epoch == since.epoch
            && since.offset <= position.offset
            && messages.len() as u64 == position.offset - since.offset
            && messages.iter().zip(since.offset + 1..).all(|(m, want)| m.offset() == want);
        if !covered {
            messages.clear();
        }
        Self { recovered: covered, messages, position }
    }
}

/// Checks a room name: 1 to 128 bytes, no control character, no `/`.
pub fn check_room(room: &str) -> Result<(), HubError> {
    if room.is_empty() || room.len() > 128 || room.contains('/') || room.chars().any(char::is_control) {
        return Err(HubError::BadRoom(room.chars().take(140).collect()));
    }
    Ok(())
}

/// How a member joins a room.
#[derive(Debug, Clone, Default)]
pub struct JoinOptions {
    /// The name presence shows for this member.
    pub name: Option<String>,
    /// Receive join and leave events of the room.
    pub presence_events: bool,
    /// Recover what was published after this position (the last message the client saw).
    pub since: Option<Position>,
    /// Without `since`: also return up to this many of the latest messages the history holds
    /// (a newcomer's view of the conversation so far).
    pub history: usize,
}

/// What [`Member::join`] found.
#[derive(Debug, Clone)]
pub struct Joined {
    /// Where the room stood when the member joined: the member receives every message after
    /// it (after the `recovered` ones).
    pub position: Position,
    /// With [`JoinOptions::since`]: whether every message after it was recovered.
    pub recovered: Option<bool>,
    /// The messages recovered (or, with [`JoinOptions::history`], the latest ones), oldest
    /// first, to send before anything [`Member::recv`] yields.
    pub messages: Vec<RoomMessage>,
}

/// One connection's membership in rooms: a bounded inbox for all its rooms, and a seat in each.
/// Dropping it leaves every room.
pub struct Member {
    hub: Hub,
    inbox: Arc<Inbox>,
    id: String,
    rooms: HashMap<Arc<str>, Seat>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member").field("id", &self.id).field("rooms", &self.rooms.len()).finish()
    }
}

/// A member's place in one room: leaves it when dropped.
struct Seat {
    hub: Hub,
    room: Arc<str>,
    inbox: Arc<Inbox>,
    info: MemberInfo,
    /// Whether the presence entry was made (and must be removed).
    in_presence: bool,
    /// The epoch and offset of the last message given to the member: older ones (already
    /// recovered, or published before it joined) are skipped.
    epoch: Arc<str>,
    through: u64,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let hub = &self.hub.inner;
        if hub.registry.remove(&self.room, &self.inbox) {
            hub.engine.unsubscribe(&self.room);
        }
        if self.in_presence {
            hub.engine.leave_presence(&self.room, self.info.clone());
        }
    }
}

impl Member {
    /// This member's id (unique across nodes).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The rooms this member is in.
    pub fn rooms(&self) -> impl Iterator<Item = &str> {
        self.rooms.keys().map(|r| &**r)
    }

    /// Whether this member is in `room`.
    pub fn is_in(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// Joins `room`: from now on [`recv`](Self::recv) yields its messages after the returned
    /// position. With [`JoinOptions::since`], the messages published after that position are
    /// returned too, if the room's history still holds all of them.
    pub async fn join(&mut self, room: &str, options: JoinOptions) -> Result<Joined, HubError> {
        check_room(room)?;
        if self.rooms.contains_key(room) {
            return Err(HubError::AlreadyJoined(room.to_owned()));
        }
        let max = self.hub.inner.config.max_rooms_per_member;
        if self.rooms.len() >= max {
            return Err(HubError::TooManyRooms(max));
        }
        let hub = self.hub.clone();
        let inner = &hub.inner;
        let (name, ready) = inner.registry.add(room, &self.inbox, options.presence_events);
        let info = MemberInfo { id: self.id.clone(), name: options.name.clone() };
        // From here on, dropping the seat undoes the join (also when a step below fails).
        let mut seat = Seat {
            hub: hub.clone(),
            room: name.clone(),
            inbox: self.inbox.clone(),
            info: info.clone(),
            in_presence: false,
            epoch: Arc::from(""),
            through: 0,
        };
        hub.deadline(async { ready.get_or_try_init(|| inner.engine.subscribe(room)).await.map(|_| ()) }).await?;
        hub.deadline(inner.engine.join_presence(room, &info)).await?;
        seat.in_presence = true;
        let since = match (&options.since, options.history) {
            (Some(p), _) => p.offset,
            (None, 0) => u64::MAX,
            (None, _) => 0,
        };
        let history = hub.deadline(inner.engine.history(room, since)).await?;
        let joined = match &options.since {
            Some(since) => {
                let recovery = Recovery::judge(since, history);
                Joined { position: recovery.position, recovered: Some(recovery.recovered), messages: recovery.messages }
            }
            None => {
                let mut messages = history.messages;
                messages.drain(..messages.len().saturating_sub(options.history));
                Joined { position: history.position, recovered: None, messages }
            }
        };
        inner.engine.joined(room, &joined.position);
        seat.epoch = joined.position.epoch.clone();
        seat.through = joined.position.offset;
        self.rooms.insert(name, seat);
        Ok(joined)
    }

    /// Leaves `room`; `false` when the member was not in it.
    pub fn leave(&mut self, room: &str) -> bool {
        self.rooms.remove(room).is_some()
    }

    /// The next event of this member's rooms, waiting for one. Messages already given (by a
    /// recovery) or published before the member joined are skipped. Cancel-safe.
    pub async fn recv(&mut self) -> Received {
        loop {
            let received = self.inbox.recv().await;
            if let Some(received) = self.admit(received) {
                return received;
            }
        }
    }

    /// The next event, if one is queued (as [`recv`](Self::recv), without waiting).
    pub fn try_recv(&mut self) -> Option<Received> {
        loop {
            let received = self.inbox.try_recv()?;
            if let Some(received) = self.admit(received) {
                return Some(received);
            }
        }
    }

    /// `None` for an event this member must not see: of a room it left, or a message it has.
    fn admit(&mut self, received: Received) -> Option<Received> {
        let (room, event) = match received {
            Received::Event(room, event) => (room, event),
            lagged @ Received::Lagged(_) => return Some(lagged),
        };
        let seat = self.rooms.get_mut(&room)?;
        match &event {
            Event::Message(m) => {
                if *m.epoch() == seat.epoch && m.offset() <= seat.through {
                    return None;
                }
                seat.epoch = m.epoch().clone();
                seat.through = m.offset();
            }
            // Without recovery the messages up to `position` are lost: the next one comes after
            // it (in a new epoch, when the history was lost).
            Event::Resumed { position, .. } if position.epoch != seat.epoch || position.offset > seat.through => {
                seat.epoch = position.epoch.clone();
                seat.through = position.offset;
            }
            _ => {}
        }
        Some(Received::Event(room, event))
    }

    /// Bytes waiting in this member's inbox.
    pub fn queued_bytes(&self) -> usize {
        self.inbox.queued_bytes()
    }
}
