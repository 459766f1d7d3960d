//! Rooms for wsx: publish/subscribe over WebSockets, on one node or across many.
//!
//! A [`Hub`] carries messages published to a room to every member of that room, in one order
//! that every member sees, with each room's recent history kept so that a member that comes
//! back after a disconnection gets exactly what it missed. It has two engines behind one trait
//! ([`Engine`]):
//!
//! - **in-process** ([`Hub::local`]): rooms live in this process;
//! - **Redis** (`Hub::redis`, feature `redis`): several nodes (`wsx serve` processes, or your
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

use room::Entry;
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
    /// The most payload bytes one room's history keeps (in-process engine; the oldest messages
    /// go first, the newest always stays). Redis bounds its histories by `history_size` only:
    /// give it a `maxmemory`.
    pub history_bytes: usize,
    /// The most payload bytes all histories keep together (in-process engine): past it, the
    /// histories of rooms without members go first (least recently used first).
    pub history_total_bytes: usize,
    /// How long a member stays in presence after its node stops refreshing it (a dead node's
    /// members disappear within this, plus one refresh period).
    pub presence_ttl: Duration,
    /// The deadline of every call to the broker.
    pub broker_timeout: Duration,
    /// The broker keeps every write it acknowledged across a restart (Redis with `appendonly
    /// yes` and `appendfsync always`): histories then survive a Redis restart. Otherwise (the
    /// default: snapshots or `appendfsync everysec` may come back older than what was
    /// acknowledged) a Redis restart starts a new epoch in every room, and clients that come
    /// back are told `recovered: false` instead of being given a history that may have a hole.
    pub broker_durable: bool,
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
            history_bytes: 1 << 20,
            history_total_bytes: 256 << 20,
            presence_ttl: Duration::from_secs(15),
            broker_timeout: Duration::from_secs(2),
            broker_durable: false,
            max_rooms_per_member: 64,
            node_id: None,
        }
    }
}

/// Why a hub operation failed. [`code`](Self::code) is the error code of the hub protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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
    /// A presence name longer than [`MAX_NAME`] bytes.
    #[error("name longer than {MAX_NAME} bytes")]
    NameTooLong,
}

/// The longest presence name, in bytes.
pub const MAX_NAME: usize = 64;

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
            Self::NameTooLong => "bad_request",
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
    /// The latest `n` messages the history holds (at most), and the room's position.
    fn latest<'a>(&'a self, room: &'a str, n: usize) -> BoxFuture<'a, Result<History, HubError>> {
        Box::pin(async move {
            let mut history = self.history(room, 0).await?;
            history.messages.drain(..history.messages.len().saturating_sub(n));
            Ok(history)
        })
    }
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
    pub fn with_engine(mut config: HubConfig, registry: Arc<Registry>, engine: Box<dyn Engine>) -> Self {
        let node: Arc<str> = config.node_id.get_or_insert_with(|| random_hex(6)).as_str().into();
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
            rooms: Vec::new(),
            stays: 0,
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
    /// A seat per room, in the order joined (so by stay number). A vector grown one seat at a
    /// time, not a map: most members are in one room or a few (at most
    /// [`HubConfig::max_rooms_per_member`]), and a map's smallest table held 550 B for one seat
    /// (measured with massif), where one seat is 120 B.
    rooms: Vec<Seat>,
    /// Joins so far: each seat's number, which the events queued for it carry, so that what
    /// was queued for an earlier stay in a room is not delivered after a rejoin.
    stays: u64,
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
    /// Which join of this member this seat is.
    stay: u64,
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
        self.rooms.iter().map(|seat| &*seat.room)
    }

    /// Whether this member is in `room`.
    pub fn is_in(&self, room: &str) -> bool {
        self.seat(room).is_some()
    }

    /// The index of this member's seat in `room`.
    fn seat(&self, room: &str) -> Option<usize> {
        self.rooms.iter().position(|seat| *seat.room == *room)
    }

    /// Joins `room`: from now on [`recv`](Self::recv) yields its messages after the returned
    /// position. With [`JoinOptions::since`], the messages published after that position are
    /// returned too, if the room's history still holds all of them.
    ///
    /// Bounded by the broker timeout as a whole. Dropping the future (or a failure) undoes
    /// whatever part of the join was done.
    pub async fn join(&mut self, room: &str, options: JoinOptions) -> Result<Joined, HubError> {
        check_room(room)?;
        if options.name.as_ref().is_some_and(|n| n.len() > MAX_NAME) {
            return Err(HubError::NameTooLong);
        }
        if self.is_in(room) {
            return Err(HubError::AlreadyJoined(room.to_owned()));
        }
        let max = self.hub.inner.config.max_rooms_per_member;
        if self.rooms.len() >= max {
            return Err(HubError::TooManyRooms(max));
        }
        let hub = self.hub.clone();
        let inner = &hub.inner;
        self.stays += 1;
        let stay = self.stays;
        let (name, ready) = inner.registry.add_stay(room, &self.inbox, stay, options.presence_events);
        let info = MemberInfo { id: self.id.clone(), name: options.name.clone() };
        // From here on, dropping the seat undoes the join (also when a step below fails).
        let mut seat = Seat {
            hub: hub.clone(),
            room: name,
            inbox: self.inbox.clone(),
            info: info.clone(),
            stay,
            in_presence: false,
            epoch: Arc::from(""),
            through: 0,
        };
        // One deadline for the whole join (subscription, presence, history).
        let steps = async {
            ready.get_or_try_init(|| inner.engine.subscribe(room)).await?;
            // Set first: a join cut short by the deadline still removes what it may have made.
            seat.in_presence = true;
            inner.engine.join_presence(room, &info).await?;
            match (&options.since, options.history) {
                (Some(p), _) => inner.engine.history(room, p.offset).await,
                (None, 0) => inner.engine.history(room, u64::MAX).await,
                (None, n) => inner.engine.latest(room, n).await,
            }
        };
        let history = hub.deadline(steps).await?;
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
        // Exactly: a first push would make room for four seats.
        self.rooms.reserve_exact(1);
        self.rooms.push(seat);
        Ok(joined)
    }

    /// Leaves `room`; `false` when the member was not in it.
    pub fn leave(&mut self, room: &str) -> bool {
        // Dropping the seat leaves the room. (`remove`, not `swap_remove`: the seats stay in
        // stay order, which `admit` searches by.)
        self.seat(room).map(|i| self.rooms.remove(i)).is_some()
    }

    /// The next event of this member's rooms, waiting for one. Messages already given (by a
    /// recovery) or published before the member joined are skipped. Cancel-safe.
    ///
    /// Its future is a reference to the member: what a session waiting on it keeps.
    pub fn recv(&mut self) -> impl std::future::Future<Output = Received> + '_ {
        std::future::poll_fn(|cx| self.poll_recv(cx))
    }

    /// [`recv`](Self::recv) as a poll function: the next event, or `cx`'s task woken when one
    /// may have come. Only the waker of the latest poll that returned `Pending` is woken.
    pub fn poll_recv(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Received> {
        loop {
            let entry = std::task::ready!(self.inbox.poll_recv_entry(cx));
            if let Some(received) = self.admit(entry) {
                return std::task::Poll::Ready(received);
            }
        }
    }

    /// The next event, if one is queued (as [`recv`](Self::recv), without waiting).
    pub fn try_recv(&mut self) -> Option<Received> {
        loop {
            let entry = self.inbox.try_recv_entry()?;
            if let Some(received) = self.admit(entry) {
                return Some(received);
            }
        }
    }

    /// `None` for an event this member must not see: of a room it left (or of an earlier stay
    /// in it), or a message it has.
    fn admit(&mut self, entry: Entry) -> Option<Received> {
        let (room, stay, event) = match entry {
            Ok(entry) => entry,
            Err(lag) => return Some(Received::Lagged(lag)),
        };
        // Each join has its own stay number, and the seats are in stay order: the seat of an
        // earlier stay in the room is gone, and so must its events be.
        let i = self.rooms.binary_search_by_key(&stay, |seat| seat.stay).ok()?;
        let seat = &mut self.rooms[i];
        debug_assert_eq!(seat.room, room, "an event queued for one stay came from another room");
        match &event {
            Event::Message(m) => {
                if *m.epoch() == seat.epoch && m.offset() <= seat.through {
                    return None;
                }
                seat.epoch = m.epoch().clone();
                seat.through = m.offset();
            }
            // Without recovery the messages up to `position` are lost: the next one comes after
            // it, even when the room went back (its broker restored an older state).
            Event::Resumed { recovered: false, position, .. } => {
                seat.epoch = position.epoch.clone();
                seat.through = position.offset;
            }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    use bytes::Bytes;

    use super::*;

    fn text(s: &str) -> Payload {
        Payload::Text(s.to_owned().into())
    }

    fn local(config: HubConfig) -> Hub {
        Hub::local(HubConfig { node_id: Some("n".into()), ..config })
    }

    fn with_history(history_size: usize) -> Hub {
        local(HubConfig { history_size, ..HubConfig::default() })
    }

    fn offsets(messages: &[RoomMessage]) -> Vec<u64> {
        messages.iter().map(RoomMessage::offset).collect()
    }

    /// Everything queued for `member` now.
    fn drain(member: &mut Member) -> Vec<Received> {
        std::iter::from_fn(|| member.try_recv()).collect()
    }

    /// The (room, offset, text) of every message queued for `member` now; panics on other events.
    fn messages(member: &mut Member) -> Vec<(String, u64, String)> {
        drain(member)
            .into_iter()
            .map(|r| match r {
                Received::Event(room, Event::Message(m)) => {
                    let Payload::Text(t) = m.payload() else { panic!("{m:?}") };
                    assert_eq!(m.room(), &room);
                    (room.to_string(), m.offset(), t.as_str().to_owned())
                }
                other => panic!("expected a message, got {other:?}"),
            })
            .collect()
    }

    /// The presence events queued for `member` now, as `+ID` and `-ID`; panics on other events.
    fn presence_events(member: &mut Member) -> Vec<String> {
        drain(member)
            .into_iter()
            .map(|r| match r {
                Received::Event(_, Event::Join(m)) => format!("+{}", m.id),
                Received::Event(_, Event::Leave(m)) => format!("-{}", m.id),
                other => panic!("expected a presence event, got {other:?}"),
            })
            .collect()
    }

    fn since(offset: u64, epoch: &Arc<str>) -> JoinOptions {
        JoinOptions { since: Some(Position { offset, epoch: epoch.clone() }), ..JoinOptions::default() }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_member_gets_every_message_of_its_rooms_in_offset_order() {
        let hub = with_history(100);
        let mut ones: Vec<Member> = (0..2).map(|_| hub.member()).collect();
        for m in &mut ones {
            m.join("a", JoinOptions::default()).await.unwrap();
        }
        let mut both = hub.member();
        both.join("a", JoinOptions::default()).await.unwrap();
        both.join("b", JoinOptions::default()).await.unwrap();
        let mut elsewhere = hub.member();
        elsewhere.join("c", JoinOptions::default()).await.unwrap();
        // Two publishers at once on "a", a third on "b".
        let tasks: Vec<_> = [("a", 0, 300), ("a", 1, 300), ("b", 2, 100)]
            .into_iter()
            .map(|(room, p, n)| {
                let hub = hub.clone();
                tokio::spawn(async move {
                    for i in 0..n {
                        hub.publish(room, text(&format!("p{p}-{i}"))).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let seen_a: Vec<Vec<String>> = ones
            .iter_mut()
            .chain([&mut both])
            .map(|m| {
                let got = messages(m);
                let a: Vec<_> = got.iter().filter(|(r, ..)| r == "a").collect();
                assert_eq!(a.iter().map(|(_, o, _)| *o).collect::<Vec<_>>(), (1..=600).collect::<Vec<_>>());
                a.iter().map(|(_, _, t)| t.clone()).collect()
            })
            .collect();
        assert!(seen_a.iter().all(|s| *s == seen_a[0]), "members of one room saw different orders");
        for p in 0..2 {
            let mine: Vec<usize> = seen_a[0]
                .iter()
                .filter_map(|t| t.strip_prefix(&format!("p{p}-")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(mine, (0..300).collect::<Vec<_>>(), "publisher {p}'s messages out of its order");
        }
        assert!(messages(&mut ones[0]).is_empty() && messages(&mut ones[1]).is_empty());
        assert!(messages(&mut elsewhere).is_empty(), "another room's messages leaked");
        // The member of two rooms got b's messages as well (its a's were checked above).
        hub.publish("b", text("last")).await.unwrap();
        assert_eq!(messages(&mut both), [("b".to_owned(), 101, "last".to_owned())]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_message_published_before_joining_is_not_delivered() {
        let hub = with_history(100);
        hub.publish("r", text("early 1")).await.unwrap();
        hub.publish("r", text("early 2")).await.unwrap();
        let mut m = hub.member();
        let joined = m.join("r", JoinOptions::default()).await.unwrap();
        assert_eq!(joined.position.offset, 2);
        assert_eq!(joined.recovered, None);
        assert!(joined.messages.is_empty());
        assert!(m.try_recv().is_none(), "a message from before the join was delivered");
        hub.publish("r", text("live")).await.unwrap();
        match m.recv().await {
            Received::Event(room, Event::Message(msg)) => {
                assert_eq!((&*room, msg.offset(), msg.epoch()), ("r", 3, &joined.position.epoch))
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn seats_take_only_their_room_and_stay_in_join_order() {
        let hub = with_history(100);
        let mut m = hub.member();
        for room in ["a", "b", "c"] {
            m.join(room, JoinOptions::default()).await.unwrap();
        }
        assert_eq!(m.rooms.capacity(), 3, "room for more seats than joined");
        assert!(m.leave("a"));
        assert_eq!(m.rooms().collect::<Vec<_>>(), ["b", "c"]);
        // Events still find their seats (by stay number) after the leave moved one.
        for room in ["c", "a", "b"] {
            hub.publish(room, text(room)).await.unwrap();
        }
        let got: Vec<(String, Payload)> = drain(&mut m)
            .into_iter()
            .map(|r| match r {
                Received::Event(room, Event::Message(msg)) => (room.to_string(), msg.payload().clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, [("c".to_owned(), text("c")), ("b".to_owned(), text("b"))]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_room_leaves_the_registry_with_its_last_member() {
        let hub = with_history(100);
        let (mut a, mut b) = (hub.member(), hub.member());
        a.join("r", JoinOptions::default()).await.unwrap();
        b.join("r", JoinOptions::default()).await.unwrap();
        a.join("s", JoinOptions::default()).await.unwrap();
        assert_eq!(hub.registry().members("r"), 2);
        let mut rooms: Vec<&str> = a.rooms().collect();
        rooms.sort_unstable();
        assert_eq!(rooms, ["r", "s"]);

        // Queued before leaving, never delivered after.
        hub.publish("r", text("unread")).await.unwrap();
        assert!(a.leave("r"));
        assert!(!a.leave("r"), "left a room twice");
        assert!(!a.is_in("r") && a.is_in("s"));
        assert!(a.try_recv().is_none(), "a message of a room left was delivered");
        assert_eq!(hub.registry().members("r"), 1);
        assert!(hub.registry().has_room("r"));

        drop(b);
        assert!(!hub.registry().has_room("r"), "the room outlived its last member (dropped)");
        assert!(hub.registry().has_room("s"));
        assert!(a.leave("s"));
        assert!(hub.registry().rooms().is_empty(), "the room outlived its last member (left)");
        assert!(hub.presence("r").await.unwrap().is_empty() && hub.presence("s").await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_member_back_in_a_room_gets_no_message_of_its_earlier_stay() {
        let hub = with_history(100);
        let mut m = hub.member();
        m.join("r", JoinOptions::default()).await.unwrap();
        hub.publish("r", text("1")).await.unwrap();
        hub.publish("r", text("2")).await.unwrap();
        assert!(m.leave("r"));
        hub.publish("r", text("3")).await.unwrap();
        let joined = m.join("r", JoinOptions::default()).await.unwrap();
        assert_eq!(joined.position.offset, 3);
        hub.publish("r", text("4")).await.unwrap();
        assert_eq!(messages(&mut m), [("r".to_owned(), 4, "4".to_owned())]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn presence_events_go_only_to_members_that_asked() {
        let hub = with_history(100);
        let mut watcher = hub.member();
        let watching = JoinOptions { name: Some("wat".into()), presence_events: true, ..JoinOptions::default() };
        watcher.join("r", watching).await.unwrap();
        let mut quiet = hub.member();
        quiet.join("r", JoinOptions { name: Some("qui".into()), ..JoinOptions::default() }).await.unwrap();
        let mut other_room = hub.member();
        other_room.join("s", JoinOptions { presence_events: true, ..JoinOptions::default() }).await.unwrap();
        let mut nameless = hub.member();
        nameless.join("r", JoinOptions::default()).await.unwrap();

        let (w, q, n) = (watcher.id().to_owned(), quiet.id().to_owned(), nameless.id().to_owned());
        assert_eq!(
            hub.presence("r").await.unwrap(),
            [
                MemberInfo { id: w.clone(), name: Some("wat".into()) },
                MemberInfo { id: q.clone(), name: Some("qui".into()) },
                MemberInfo { id: n.clone(), name: None },
            ]
        );
        drop(quiet);
        assert!(nameless.leave("r"));
        assert_eq!(hub.presence("r").await.unwrap(), [MemberInfo { id: w.clone(), name: Some("wat".into()) }]);
        // The watcher sees its own join too, then everyone else's comings and goings.
        assert_eq!(
            presence_events(&mut watcher),
            [format!("+{w}"), format!("+{q}"), format!("+{n}"), format!("-{q}"), format!("-{n}")]
        );
        assert_eq!(presence_events(&mut other_room), [format!("+{}", other_room.id())], "room r's presence leaked");
        assert!(nameless.try_recv().is_none());
    }

    /// A member that leaves a room with presence events still queued and comes back without
    /// asking for them is given them: `admit` filters messages by offset, but lets every other
    /// event of a room the member is in (again) through, whichever stay it was queued for.
    #[tokio::test(flavor = "current_thread")]

    async fn presence_events_of_an_earlier_stay_are_not_delivered_after_a_rejoin() {
        let hub = with_history(100);
        let mut m = hub.member();
        m.join("r", JoinOptions { presence_events: true, ..JoinOptions::default() }).await.unwrap();
        let mut other = hub.member();
        other.join("r", JoinOptions::default()).await.unwrap();
        // Its own join and the other's are queued, unread, when it leaves.
        assert!(m.leave("r"));
        m.join("r", JoinOptions::default()).await.unwrap();
        let got = drain(&mut m);
        assert!(got.is_empty(), "a member that did not ask for presence events got {got:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_member_lags_without_holding_up_the_others() {
        let hub = local(HubConfig { queue: QueueLimits { messages: 8, bytes: 1 << 20 }, ..HubConfig::default() });
        let (mut slow, mut fast) = (hub.member(), hub.member());
        slow.join("r", JoinOptions::default()).await.unwrap();
        fast.join("r", JoinOptions::default()).await.unwrap();
        for i in 1..=100 {
            let at = hub.publish("r", text(&i.to_string())).await.unwrap();
            assert_eq!(at.offset, i);
            assert_eq!(messages(&mut fast), [("r".to_owned(), i, i.to_string())]);
        }
        assert_eq!(hub.registry().lagged(), 1);
        assert_eq!(slow.queued_bytes(), 0, "the lagging member's queue was kept");
        for _ in 0..3 {
            assert!(matches!(slow.recv().await, Received::Lagged(Lag::Messages(8))));
        }
        // Its room goes on for the others.
        hub.publish("r", text("101")).await.unwrap();
        assert_eq!(messages(&mut fast).len(), 1);
        assert_eq!(hub.registry().lagged(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn joining_since_a_position_recovers_exactly_what_followed_it() {
        let hub = with_history(10);
        let mut first = hub.member();
        let epoch = first.join("r", JoinOptions::default()).await.unwrap().position.epoch;
        for i in 1..=5 {
            hub.publish("r", text(&i.to_string())).await.unwrap();
        }
        let mut back = hub.member();
        let joined = back.join("r", since(2, &epoch)).await.unwrap();
        assert_eq!(joined.recovered, Some(true));
        assert_eq!(offsets(&joined.messages), [3, 4, 5]);
        assert_eq!(joined.position, Position { offset: 5, epoch: epoch.clone() });
        assert!(back.try_recv().is_none());
        hub.publish("r", text("6")).await.unwrap();
        assert_eq!(messages(&mut back), [("r".to_owned(), 6, "6".to_owned())]);
        // Nothing missed: recovered, with nothing to give.
        let mut current = hub.member();
        let joined = current.join("r", since(6, &epoch)).await.unwrap();
        assert_eq!((joined.recovered, joined.messages.len()), (Some(true), 0));
        // Hub::recover judges the same way.
        let r = hub.recover("r", &Position { offset: 4, epoch: epoch.clone() }).await.unwrap();
        assert!(r.recovered);
        assert_eq!(offsets(&r.messages), [5, 6]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_newcomer_can_ask_for_the_latest_messages() {
        let hub = with_history(4);
        for i in 1..=6 {
            hub.publish("r", text(&i.to_string())).await.unwrap();
        }
        let mut m = hub.member();
        let joined = m.join("r", JoinOptions { history: 2, ..JoinOptions::default() }).await.unwrap();
        assert_eq!((joined.recovered, offsets(&joined.messages)), (None, vec![5, 6]));
        assert_eq!(joined.position.offset, 6);
        // More than the history holds: what it holds.
        let mut n = hub.member();
        let joined = n.join("r", JoinOptions { history: 50, ..JoinOptions::default() }).await.unwrap();
        assert_eq!(offsets(&joined.messages), [3, 4, 5, 6]);
        // With `since`, recovery decides and `history` is not used.
        let mut o = hub.member();
        let options = JoinOptions { history: 50, ..since(5, &joined.position.epoch) };
        let joined = o.join("r", options).await.unwrap();
        assert_eq!((joined.recovered, offsets(&joined.messages)), (Some(true), vec![6]));
        // What was given is not given again; what follows is.
        hub.publish("r", text("7")).await.unwrap();
        for member in [&mut m, &mut n, &mut o] {
            assert_eq!(messages(member), [("r".to_owned(), 7, "7".to_owned())]);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_position_the_history_cannot_serve_recovers_nothing() {
        let hub = with_history(3);
        let mut first = hub.member();
        let epoch = first.join("r", JoinOptions::default()).await.unwrap().position.epoch;
        for i in 1..=5 {
            hub.publish("r", text(&i.to_string())).await.unwrap();
        }
        let cases: [(&str, Position); 4] = [
            ("older than the history", Position { offset: 1, epoch: epoch.clone() }),
            ("from the start, history trimmed", Position { offset: 0, epoch: epoch.clone() }),
            ("another epoch", Position { offset: 4, epoch: "elsewhere".into() }),
            ("ahead of the room", Position { offset: 9, epoch: epoch.clone() }),
        ];
        for (why, position) in cases {
            let now = hub.recover("r", &position).await.unwrap().position;
            let mut m = hub.member();
            let joined = m.join("r", JoinOptions { since: Some(position), ..JoinOptions::default() }).await.unwrap();
            assert_eq!(joined.recovered, Some(false), "{why}");
            assert!(joined.messages.is_empty(), "{why}: a partial catch-up");
            assert_eq!(joined.position, now, "{why}");
            // It goes on from the room's position.
            hub.publish("r", text("live")).await.unwrap();
            let got = messages(&mut m);
            assert_eq!(got.len(), 1, "{why}: {got:?}");
            m.leave("r");
            let _ = messages(&mut first);
        }
        // Just inside the history: recovered.
        let mut m = hub.member();
        let at = hub.recover("r", &Position { offset: 0, epoch: epoch.clone() }).await.unwrap().position;
        let joined = m.join("r", since(at.offset - 3, &epoch)).await.unwrap();
        assert_eq!(joined.recovered, Some(true));
        assert_eq!(offsets(&joined.messages), [at.offset - 2, at.offset - 1, at.offset]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn expired_history_does_not_count_for_recovery() {
        let hub = local(HubConfig { history_ttl: Duration::from_millis(150), ..HubConfig::default() });
        let epoch = hub.publish("r", text("1")).await.unwrap().epoch;
        hub.publish("r", text("2")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        hub.publish("r", text("3")).await.unwrap();
        let mut m = hub.member();
        let joined = m.join("r", since(1, &epoch)).await.unwrap();
        assert_eq!((joined.recovered, joined.messages.len()), (Some(false), 0), "message 2 expired");
        let mut n = hub.member();
        let joined = n.join("r", since(2, &epoch)).await.unwrap();
        assert_eq!(joined.recovered, Some(true), "message 3 has not expired");
        assert_eq!(offsets(&joined.messages), [3]);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!hub.recover("r", &Position { offset: 2, epoch: epoch.clone() }).await.unwrap().recovered);
        assert!(hub.recover("r", &Position { offset: 3, epoch }).await.unwrap().recovered);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_member_gets_each_message_once_and_the_frames_are_shared() {
        let hub = with_history(10);
        let (mut a, mut b) = (hub.member(), hub.member());
        a.join("r", JoinOptions::default()).await.unwrap();
        b.join("r", JoinOptions::default()).await.unwrap();
        hub.publish("r", Payload::Binary(Bytes::from_static(b"\x00\x01"))).await.unwrap();
        let (Received::Event(_, Event::Message(ma)), Received::Event(_, Event::Message(mb))) =
            (a.recv().await, b.recv().await)
        else {
            panic!("no message")
        };
        assert!(ma.raw_frame().ptr_eq(mb.raw_frame()), "the raw frame was encoded per member");
        assert!(ma.hub_frame().ptr_eq(mb.hub_frame()), "the hub frame was encoded per member");
        // The same message is given by the history to a member that recovers it.
        let mut c = hub.member();
        let joined = c.join("s", JoinOptions::default()).await.unwrap();
        drop(joined);
        let recovered = hub.recover("r", &Position { offset: 0, epoch: ma.epoch().clone() }).await.unwrap();
        assert!(recovered.messages[0].hub_frame().ptr_eq(ma.hub_frame()));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_message_the_member_has_is_not_given_again() {
        // However it comes back (a repair, a duplicate from the broker), a message at or before
        // the last one given is dropped; a `resumed` without recovery moves the mark forward.
        let hub = with_history(10);
        let mut m = hub.member();
        let joined = m.join("r", JoinOptions::default()).await.unwrap();
        let epoch = joined.position.epoch.clone();
        let message = |offset| RoomMessage::new("r".into(), offset, epoch.clone(), text(&offset.to_string()));
        let registry = hub.registry();
        registry.deliver("r", Event::Message(message(1)));
        registry.deliver("r", Event::Message(message(1)));
        registry.deliver("r", Event::Message(message(2)));
        let resumed = Position { offset: 5, epoch: epoch.clone() };
        registry.deliver("r", Event::Resumed { recovered: false, missed: 0, position: resumed });
        registry.deliver("r", Event::Message(message(4)));
        registry.deliver("r", Event::Message(message(6)));
        let got: Vec<String> = drain(&mut m)
            .into_iter()
            .map(|r| match r {
                Received::Event(_, Event::Message(m)) => m.offset().to_string(),
                Received::Event(_, Event::Resumed { position, .. }) => format!("resumed@{}", position.offset),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, ["1", "2", "resumed@5", "6"]);
    }

    #[test]
    fn room_names() {
        for good in ["a", "lobby", "with space", "café ☕", &"x".repeat(128), &"é".repeat(64)] {
            assert_eq!(check_room(good), Ok(()), "{good:?}");
        }
        for bad in
            ["", "a/b", "/", "tab\there", "nl\n", "nul\0", "del\u{7f}", "c1\u{85}", &"x".repeat(129), &"é".repeat(65)]
        {
            assert!(matches!(check_room(bad), Err(HubError::BadRoom(_))), "{bad:?}");
        }
        // The name in the error is cut, not the whole of a huge one.
        let Err(HubError::BadRoom(shown)) = check_room(&"y".repeat(10_000)) else { panic!() };
        assert_eq!(shown.len(), 140);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn every_entry_point_checks_the_room_name() {
        let hub = with_history(10);
        let mut m = hub.member();
        let bad = || Position { offset: 0, epoch: "e".into() };
        assert!(matches!(m.join("a/b", JoinOptions::default()).await, Err(HubError::BadRoom(_))));
        assert!(matches!(hub.publish("", text("x")).await, Err(HubError::BadRoom(_))));
        assert!(matches!(hub.recover("a\nb", &bad()).await, Err(HubError::BadRoom(_))));
        assert!(matches!(hub.presence("/").await, Err(HubError::BadRoom(_))));
        assert!(hub.registry().rooms().is_empty());
    }

    #[test]
    fn error_codes() {
        let cases = [
            (HubError::BadRoom("x".into()), "bad_room"),
            (HubError::AlreadyJoined("x".into()), "already_subscribed"),
            (HubError::NotJoined("x".into()), "not_subscribed"),
            (HubError::TooManyRooms(3), "too_many_rooms"),
            (HubError::Broker("down".into()), "broker_unavailable"),
        ];
        for (e, code) in cases {
            assert_eq!(e.code(), code, "{e}");
        }
        assert!(HubError::TooManyRooms(3).to_string().contains('3'));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_refused_join_leaves_nothing_behind() {
        let hub = local(HubConfig { max_rooms_per_member: 1, ..HubConfig::default() });
        let mut watcher = hub.member();
        watcher.join("b", JoinOptions { presence_events: true, ..JoinOptions::default() }).await.unwrap();
        let _ = drain(&mut watcher);
        let mut m = hub.member();
        m.join("a", JoinOptions::default()).await.unwrap();
        assert_eq!(m.join("b", JoinOptions::default()).await.unwrap_err(), HubError::TooManyRooms(1));
        assert_eq!(m.join("a", JoinOptions::default()).await.unwrap_err(), HubError::AlreadyJoined("a".into()));
        let mut rooms = hub.registry().rooms();
        rooms.sort_unstable();
        assert_eq!(rooms, [Arc::from("a"), Arc::from("b")]);
        assert_eq!((hub.registry().members("a"), hub.registry().members("b")), (1, 1));
        assert_eq!(m.rooms().collect::<Vec<_>>(), ["a"]);
        assert_eq!(hub.presence("a").await.unwrap().len(), 1, "a refused join entered presence");
        assert_eq!(hub.presence("b").await.unwrap().len(), 1);
        assert!(drain(&mut watcher).is_empty(), "a refused join was announced");
        hub.publish("b", text("not for m")).await.unwrap();
        assert!(m.try_recv().is_none());
        // Once it leaves, the same join succeeds.
        assert!(m.leave("a"));
        m.join("b", JoinOptions::default()).await.unwrap();
        assert_eq!(hub.registry().members("b"), 2);
    }

    /// The in-process engine, with failures and concurrent publishers to inject.
    struct Rigged {
        inner: local::LocalEngine,
        rig: Arc<Rig>,
    }

    #[derive(Default)]
    struct Rig {
        fail_subscribe: AtomicBool,
        fail_presence: AtomicBool,
        fail_history: AtomicBool,
        /// Calls that never answer.
        hang_history: AtomicBool,
        hang_publish: AtomicBool,
        /// Messages published to the room during the next history read (as another connection
        /// would, while a member joins).
        sneak_in: AtomicUsize,
        unsubscribes: AtomicUsize,
        leaves: AtomicUsize,
    }

    fn down() -> HubError {
        HubError::Broker("rigged".into())
    }

    impl Engine for Rigged {
        fn subscribe<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<(), HubError>> {
            if self.rig.fail_subscribe.load(Ordering::Relaxed) {
                return Box::pin(async { Err(down()) });
            }
            self.inner.subscribe(room)
        }
        fn unsubscribe(&self, room: &str) {
            self.rig.unsubscribes.fetch_add(1, Ordering::Relaxed);
            self.inner.unsubscribe(room)
        }
        fn publish<'a>(&'a self, room: &'a str, payload: Payload) -> BoxFuture<'a, Result<Position, HubError>> {
            if self.rig.hang_publish.load(Ordering::Relaxed) {
                return Box::pin(std::future::pending());
            }
            self.inner.publish(room, payload)
        }
        fn history<'a>(&'a self, room: &'a str, since: u64) -> BoxFuture<'a, Result<History, HubError>> {
            Box::pin(async move {
                if self.rig.fail_history.load(Ordering::Relaxed) {
                    return Err(down());
                }
                if self.rig.hang_history.load(Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
                for i in 0..self.rig.sneak_in.swap(0, Ordering::Relaxed) {
                    self.inner.publish(room, text(&format!("sneaked {i}"))).await?;
                }
                self.inner.history(room, since).await
            })
        }
        fn join_presence<'a>(&'a self, room: &'a str, member: &'a MemberInfo) -> BoxFuture<'a, Result<(), HubError>> {
            if self.rig.fail_presence.load(Ordering::Relaxed) {
                return Box::pin(async { Err(down()) });
            }
            self.inner.join_presence(room, member)
        }
        fn leave_presence(&self, room: &str, member: MemberInfo) {
            self.rig.leaves.fetch_add(1, Ordering::Relaxed);
            self.inner.leave_presence(room, member)
        }
        fn presence<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Vec<MemberInfo>, HubError>> {
            self.inner.presence(room)
        }
    }

    fn rigged(config: HubConfig) -> (Hub, Arc<Rig>) {
        let config = HubConfig { node_id: Some("n".into()), ..config };
        let registry = Arc::new(Registry::default());
        let rig = Arc::new(Rig::default());
        let engine = Rigged { inner: local::LocalEngine::new(registry.clone(), &config), rig: rig.clone() };
        (Hub::with_engine(config, registry, Box::new(engine)), rig)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_join_failing_half_way_is_undone() {
        let (hub, rig) = rigged(HubConfig::default());
        let mut watcher = hub.member();
        watcher.join("w", JoinOptions { presence_events: true, ..JoinOptions::default() }).await.unwrap();
        let _ = drain(&mut watcher);
        // The room has a member already (so it is subscribed: a join does not subscribe again).
        let steps: [(&str, &AtomicBool); 2] = [("presence", &rig.fail_presence), ("history", &rig.fail_history)];
        for (step, flag) in steps {
            let (unsubscribes, leaves) = (rig.unsubscribes.load(Ordering::Relaxed), rig.leaves.load(Ordering::Relaxed));
            flag.store(true, Ordering::Relaxed);
            let mut m = hub.member();
            let options = JoinOptions { name: Some("m".into()), ..JoinOptions::default() };
            assert_eq!(m.join("w", options).await.unwrap_err(), down(), "{step}");
            flag.store(false, Ordering::Relaxed);
            assert!(!m.is_in("w"), "{step}");
            assert_eq!(hub.registry().members("w"), 1, "{step}: a seat was left behind");
            assert_eq!(hub.presence("w").await.unwrap().len(), 1, "{step}: a presence entry was left behind");
            // The watcher's seat was not the one removed.
            hub.publish("w", text(step)).await.unwrap();
            let got = drain(&mut watcher);
            let texts: Vec<String> = got
                .iter()
                .map(|r| match r {
                    Received::Event(_, Event::Message(msg)) => msg.offset().to_string(),
                    Received::Event(_, Event::Join(_)) => "+".into(),
                    Received::Event(_, Event::Leave(_)) => "-".into(),
                    other => panic!("{other:?}"),
                })
                .collect();
            // Only a failure after the presence entry was made announces a join (and its leave).
            let announced = if step == "history" { vec!["+", "-"] } else { vec![] };
            assert_eq!(texts[..texts.len() - 1], announced[..], "{step}");
            // A presence entry that may have been made (the call failed or ran out of time after
            // the broker applied it) is removed: a leave for every step from presence on.
            let removed = usize::from(step != "subscribe");
            assert_eq!(rig.leaves.load(Ordering::Relaxed) - leaves, removed, "{step}");
            // Not the room's last member: the engine keeps delivering it.
            assert_eq!(rig.unsubscribes.load(Ordering::Relaxed), unsubscribes, "{step}");
            // The same member can join afterwards.
            m.join("w", JoinOptions::default()).await.unwrap();
            drop(m);
            let _ = drain(&mut watcher);
        }
        // In a room this node has no other member in, a failure at any step forgets the room
        // here and drops its subscription.
        let steps: [(&str, &AtomicBool); 3] =
            [("subscribe", &rig.fail_subscribe), ("presence", &rig.fail_presence), ("history", &rig.fail_history)];
        for (step, flag) in steps {
            let unsubscribes = rig.unsubscribes.load(Ordering::Relaxed);
            flag.store(true, Ordering::Relaxed);
            let mut m = hub.member();
            assert_eq!(m.join("alone", JoinOptions::default()).await.unwrap_err(), down(), "{step}");
            flag.store(false, Ordering::Relaxed);
            assert!(!hub.registry().has_room("alone"), "{step}");
            assert!(hub.presence("alone").await.unwrap().is_empty(), "{step}");
            assert_eq!(rig.unsubscribes.load(Ordering::Relaxed), unsubscribes + 1, "{step}");
            // The next join subscribes afresh.
            m.join("alone", JoinOptions::default()).await.unwrap();
            assert_eq!(hub.registry().members("alone"), 1, "{step}");
            drop(m);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_broker_that_does_not_answer_fails_the_call_within_the_timeout() {
        // The hub's own deadline must end the call, long before this one.
        async fn bounded<T>(f: impl Future<Output = T>) -> T {
            tokio::time::timeout(Duration::from_secs(2), f).await.expect("no deadline")
        }
        let (hub, rig) = rigged(HubConfig { broker_timeout: Duration::from_millis(50), ..HubConfig::default() });
        rig.hang_history.store(true, Ordering::Relaxed);
        let mut m = hub.member();
        let e = bounded(m.join("r", JoinOptions::default())).await.unwrap_err();
        assert_eq!(e.code(), "broker_unavailable");
        assert!(e.to_string().contains("no answer within"), "{e}");
        assert!(!hub.registry().has_room("r"));
        assert!(hub.presence("r").await.unwrap().is_empty());
        rig.hang_publish.store(true, Ordering::Relaxed);
        let e = bounded(hub.publish("r", text("x"))).await.unwrap_err();
        assert_eq!(e.code(), "broker_unavailable");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn messages_published_while_a_member_joins_come_once() {
        let (hub, rig) = rigged(HubConfig::default());
        let epoch = hub.publish("r", text("1")).await.unwrap().epoch;
        hub.publish("r", text("2")).await.unwrap();
        // With recovery: 3 and 4 are published during the join, after the member's seat was
        // made, so they are both in its inbox and in the history it recovers from.
        rig.sneak_in.store(2, Ordering::Relaxed);
        let mut m = hub.member();
        let joined = m.join("r", since(1, &epoch)).await.unwrap();
        assert_eq!(joined.recovered, Some(true));
        assert_eq!(offsets(&joined.messages), [2, 3, 4]);
        hub.publish("r", text("5")).await.unwrap();
        assert_eq!(messages(&mut m), [("r".to_owned(), 5, "5".to_owned())], "a recovered message came twice");
        // Without: they are part of the room before the join's position.
        rig.sneak_in.store(2, Ordering::Relaxed);
        let mut n = hub.member();
        let joined = n.join("r", JoinOptions::default()).await.unwrap();
        assert_eq!(joined.position.offset, 7);
        hub.publish("r", text("8")).await.unwrap();
        assert_eq!(messages(&mut n), [("r".to_owned(), 8, "8".to_owned())]);
        assert_eq!(offsets_of_texts(messages(&mut m)), [6, 7, 8]);
    }

    fn offsets_of_texts(got: Vec<(String, u64, String)>) -> Vec<u64> {
        got.into_iter().map(|(_, o, _)| o).collect()
    }

    /// A `redis-server` of its own on a free loopback port, saving only when told (`SAVE`);
    /// killed when dropped.
    #[cfg(feature = "redis")]
    struct TestRedis {
        child: Option<std::process::Child>,
        port: u16,
        dir: std::path::PathBuf,
    }

    #[cfg(feature = "redis")]
    impl TestRedis {
        fn start() -> Self {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let dir = std::env::temp_dir().join(format!("wsx-hub-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut redis = Self { child: None, port, dir };
            redis.restart();
            redis
        }

        fn url(&self, db: u8) -> String {
            format!("redis://127.0.0.1:{}/{db}", self.port)
        }

        /// Starts it (again) on the same port, with what it last saved.
        fn restart(&mut self) {
            let child = std::process::Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&self.dir)
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server (apt-get install redis-server)");
            self.child = Some(child);
            let end = std::time::Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                assert!(std::time::Instant::now() < end, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        /// Kills it with SIGKILL.
        fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    #[cfg(feature = "redis")]
    impl Drop for TestRedis {
        fn drop(&mut self) {
            self.kill();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// `Hub::redis` takes `redis://HOST:PORT[/DB]`, and the keys of a room are per database,
    /// but Redis pub/sub channels are not (a PUBLISH is heard by subscribers on every database):
    /// two hubs on two databases of one server deliver each other's messages for rooms of the
    /// same name (after a `resumed` without recovery, as the other hub's epoch looks like a lost
    /// history).
    #[cfg(feature = "redis")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]

    async fn hubs_on_two_databases_of_one_redis_do_not_share_rooms() {
        let redis = TestRedis::start();
        let one = Hub::redis(&redis.url(1), HubConfig::default()).await.unwrap();
        let two = Hub::redis(&redis.url(2), HubConfig::default()).await.unwrap();
        let mut member = two.member();
        member.join("lobby", JoinOptions::default()).await.unwrap();
        let mut witness = one.member();
        witness.join("lobby", JoinOptions::default()).await.unwrap();
        one.publish("lobby", text("for database 1 only")).await.unwrap();
        // It reached database 1's member; it must not reach database 2's.
        let seen = tokio::time::timeout(Duration::from_secs(5), witness.recv()).await.expect("no delivery on one");
        assert!(matches!(seen, Received::Event(_, Event::Message(_))), "{seen:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let leaked = drain(&mut member);
        assert!(leaked.is_empty(), "database 2's member got {leaked:?}");
    }

    /// Redis restarted from a snapshot older than its last writes (RDB, or an append-only
    /// file with `appendfsync everysec`) keeps the room's epoch but goes back to an older
    /// offset. The next publishes get offsets this node has delivered already, so its
    /// dispatcher drops them as duplicates: acknowledged messages that no member receives, and
    /// no `resumed` without recovery to say so (the repair after the reconnection found
    /// nothing missing, and reported `recovered: true`).
    #[cfg(feature = "redis")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]

    async fn a_broker_back_from_an_older_snapshot_does_not_silence_the_room() {
        let mut redis = TestRedis::start();
        let hub = Hub::redis(&redis.url(0), HubConfig::default()).await.unwrap();
        let mut m = hub.member();
        m.join("r", JoinOptions::default()).await.unwrap();
        async fn next(m: &mut Member) -> Received {
            tokio::time::timeout(Duration::from_secs(5), m.recv()).await.expect("nothing delivered")
        }
        for i in 1..=5 {
            hub.publish("r", text(&i.to_string())).await.unwrap();
            if i == 2 {
                let client = ::redis::Client::open(redis.url(0)).unwrap();
                let mut conn = client.get_multiplexed_async_connection().await.unwrap();
                let () = ::redis::cmd("SAVE").query_async(&mut conn).await.unwrap();
            }
            assert!(matches!(next(&mut m).await, Received::Event(_, Event::Message(msg)) if msg.offset() == i));
        }
        redis.kill();
        redis.restart();
        let end = std::time::Instant::now() + Duration::from_secs(20);
        let after = loop {
            match hub.publish("r", text("after the restart")).await {
                Ok(at) => break at,
                Err(_) => assert!(std::time::Instant::now() < end, "publishing did not resume"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // The member must get it, or be told that messages were lost.
        let end = std::time::Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        while std::time::Instant::now() < end {
            let Ok(received) = tokio::time::timeout(Duration::from_millis(500), m.recv()).await else { continue };
            match &received {
                Received::Event(_, Event::Message(msg)) if msg.payload() == &text("after the restart") => return,
                Received::Event(_, Event::Resumed { recovered: false, .. }) => return,
                _ => seen.push(received),
            }
        }
        panic!("published at {after:?}, never delivered nor reported lost; the member saw {seen:?}");
    }

    #[test]
    fn member_ids_name_the_node_and_differ() {
        let hub = local(HubConfig::default());
        let (a, b) = (hub.member(), hub.member());
        assert_eq!(hub.node_id(), "n");
        assert!(a.id().starts_with("n.") && b.id().starts_with("n."), "{} {}", a.id(), b.id());
        assert_ne!(a.id(), b.id());
        let random = Hub::local(HubConfig::default());
        assert_ne!(random.node_id(), Hub::local(HubConfig::default()).node_id(), "two nodes got one id");
        assert_eq!(random.node_id().len(), 12);
    }
}
