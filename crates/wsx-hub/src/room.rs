//! What a room carries and where it goes on this node: [`RoomMessage`], [`Event`], each
//! connection's bounded [`Inbox`], and the [`Registry`] of the rooms this node has members in.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::Notify;
use wsx::{PreparedMessage, Utf8Bytes};

/// The payload of a room message, as its publisher sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A text message (a raw member's text frame, or a hub `publish` with `"text"`).
    Text(Utf8Bytes),
    /// A JSON value (a hub `publish` with `"data"`), kept as its JSON text.
    Json(Utf8Bytes),
    /// A binary message (a raw member's binary frame, or a hub `publish` with `"binary"`).
    Binary(Bytes),
}

impl Payload {
    /// The one-letter kind used on the wire between nodes (`t`, `j`, `b`).
    pub(crate) fn kind(&self) -> u8 {
        match self {
            Self::Text(_) => b't',
            Self::Json(_) => b'j',
            Self::Binary(_) => b'b',
        }
    }

    /// The payload's bytes.
    pub fn bytes(&self) -> &Bytes {
        match self {
            Self::Text(t) | Self::Json(t) => t.as_bytes(),
            Self::Binary(b) => b,
        }
    }

    /// Rebuilds a payload from its kind letter and bytes; `None` when they do not fit.
    pub(crate) fn from_kind(kind: u8, bytes: Bytes) -> Option<Self> {
        match kind {
            b't' => Utf8Bytes::try_from_bytes(bytes).ok().map(Self::Text),
            b'j' => Utf8Bytes::try_from_bytes(bytes).ok().map(Self::Json),
            b'b' => Some(Self::Binary(bytes)),
            _ => None,
        }
    }
}

/// Where a room's history stands: an epoch (which incarnation of the history) and an offset
/// (how many messages the room has had in it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Position {
    /// The offset of the room's latest message (1 for the first; 0 when it has had none).
    pub offset: u64,
    /// Changes when the room's history is lost (a broker restart without persistence, or the
    /// history expiring): offsets from another epoch mean nothing.
    pub epoch: Arc<str>,
}

/// One message published to a room, with its place in the room's order. Cheap to clone; the
/// frames sent to members are encoded once per message and shared by every member.
#[derive(Clone)]
pub struct RoomMessage {
    inner: Arc<MessageInner>,
}

struct MessageInner {
    room: Arc<str>,
    offset: u64,
    epoch: Arc<str>,
    payload: Payload,
    /// The frame for raw members: the payload as a text or binary message.
    raw: OnceLock<PreparedMessage>,
    /// The frame for hub members: the `message` event.
    hub: OnceLock<PreparedMessage>,
}

impl fmt::Debug for RoomMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoomMessage")
            .field("room", &self.inner.room)
            .field("offset", &self.inner.offset)
            .field("epoch", &self.inner.epoch)
            .field("payload", &self.inner.payload)
            .finish()
    }
}

impl RoomMessage {
    /// A message of `room` at `offset` in `epoch`.
    pub fn new(room: Arc<str>, offset: u64, epoch: Arc<str>, payload: Payload) -> Self {
        let inner = MessageInner { room, offset, epoch, payload, raw: OnceLock::new(), hub: OnceLock::new() };
        Self { inner: Arc::new(inner) }
    }

    /// The room.
    pub fn room(&self) -> &Arc<str> {
        &self.inner.room
    }

    /// Its offset in the room (1, 2, 3… within an epoch).
    pub fn offset(&self) -> u64 {
        self.inner.offset
    }

    /// The epoch of the room's history it belongs to.
    pub fn epoch(&self) -> &Arc<str> {
        &self.inner.epoch
    }

    /// What was published.
    pub fn payload(&self) -> &Payload {
        &self.inner.payload
    }

    /// The frame a raw (`/room/NAME`) member receives: the payload as a text message (a JSON
    /// value as its JSON text) or a binary message. Encoded once, shared by every member.
    pub fn raw_frame(&self) -> &PreparedMessage {
        self.inner.raw.get_or_init(|| match &self.inner.payload {
            Payload::Text(t) | Payload::Json(t) => PreparedMessage::text(t.clone()),
            Payload::Binary(b) => PreparedMessage::binary(b.clone()),
        })
    }

    /// The frame a hub (`wsx.hub.v1`) member receives: the `message` event. Encoded once,
    /// shared by every member.
    pub fn hub_frame(&self) -> &PreparedMessage {
        self.inner.hub.get_or_init(|| PreparedMessage::text(crate::protocol::message_event(self)))
    }

    /// Bytes this message is counted as in an inbox.
    fn weight(&self) -> usize {
        self.inner.payload.bytes().len() + 64
    }

    /// The payload in the form of the hub protocol: `("text", "…")`, `("data", value)` or
    /// `("binary", "base64…")`.
    pub(crate) fn hub_field(&self) -> (&'static str, serde_json::Value) {
        match &self.inner.payload {
            Payload::Text(t) => ("text", serde_json::Value::String(t.as_str().to_owned())),
            Payload::Json(j) => ("data", serde_json::from_str(j.as_str()).unwrap_or(serde_json::Value::Null)),
            Payload::Binary(b) => {
                ("binary", serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(b)))
            }
        }
    }
}

/// A member as presence shows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub struct MemberInfo {
    /// The connection's id, unique across nodes (the node id, a dot, a counter).
    pub id: String,
    /// The name the client chose, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
}

/// What a member's inbox delivers about one room.
#[derive(Debug, Clone)]
pub enum Event {
    /// The next message of the room.
    Message(RoomMessage),
    /// Someone joined the room (only for members that asked for presence events).
    Join(MemberInfo),
    /// Someone left the room, or vanished with its node (only for members that asked).
    Leave(MemberInfo),
    /// The connection to the broker was lost: messages published meanwhile may be missing
    /// until [`Event::Resumed`].
    Interrupted,
    /// The broker is back. With `recovered`, every message missed meanwhile (`missed` of them)
    /// was delivered before this event; without, some are lost for good.
    Resumed {
        /// Whether the missed messages were all delivered.
        recovered: bool,
        /// How many missed messages were delivered.
        missed: u64,
        /// Where the room stands now.
        position: Position,
    },
}

impl Event {
    fn weight(&self) -> usize {
        match self {
            Self::Message(m) => m.weight(),
            _ => 128,
        }
    }
}

/// How much a connection's inbox may hold before it counts as lagging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// The most events queued.
    pub messages: usize,
    /// The most bytes queued (payloads plus a small fixed cost per event). A single message
    /// larger than this still fits in an empty inbox, so the bound is the larger of this and
    /// one message.
    pub bytes: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self { messages: 1024, bytes: 1 << 20 }
    }
}

/// The limit a lagging member passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lag {
    /// More than this many events were waiting.
    Messages(usize),
    /// More than this many bytes were waiting.
    Bytes(usize),
}

impl fmt::Display for Lag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Messages(n) => write!(f, "more than {n} messages queued"),
            Self::Bytes(n) => write!(f, "more than {n} bytes queued"),
        }
    }
}

/// What [`Member::recv`](crate::Member::recv) yields.
#[derive(Debug, Clone)]
pub enum Received {
    /// An event of one of the member's rooms.
    Event(Arc<str>, Event),
    /// The connection fell behind past this limit: its queued events were dropped and it gets
    /// nothing more. Close it (`wsx serve` closes with 1008).
    Lagged(Lag),
}

/// One connection's queue of room events not yet taken, bounded by [`QueueLimits`]. Pushing
/// never waits: a connection that falls behind is marked as lagging and its queue emptied.
#[derive(Debug)]
pub struct Inbox {
    state: Mutex<InboxState>,
    ready: Notify,
    limits: QueueLimits,
}

#[derive(Debug, Default)]
struct InboxState {
    queue: VecDeque<(Arc<str>, Event)>,
    bytes: usize,
    lagged: Option<Lag>,
}

impl Inbox {
    /// An empty inbox bounded by `limits`.
    pub fn new(limits: QueueLimits) -> Self {
        let limits = QueueLimits { messages: limits.messages.max(1), bytes: limits.bytes };
        Self { state: Mutex::default(), ready: Notify::new(), limits }
    }

    /// Queues an event, or marks the inbox as lagging when that would pass a limit. Returns
    /// `true` when this push made it lag.
    pub fn push(&self, room: Arc<str>, event: Event) -> bool {
        let mut state = lock(&self.state);
        if state.lagged.is_some() {
            return false;
        }
        let len = event.weight();
        let lag = if state.queue.is_empty() {
            None
        } else if state.queue.len() >= self.limits.messages {
            Some(Lag::Messages(self.limits.messages))
        } else if state.bytes + len > self.limits.bytes {
            Some(Lag::Bytes(self.limits.bytes))
        } else {
            None
        };
        let lagged = lag.is_some();
        match lag {
            Some(lag) => {
                state.lagged = Some(lag);
                state.queue = VecDeque::new();
                state.bytes = 0;
            }
            None => {
                state.queue.push_back((room, event));
                state.bytes += len;
            }
        }
        drop(state);
        self.ready.notify_one();
        lagged
    }

    /// Bytes queued.
    pub fn queued_bytes(&self) -> usize {
        lock(&self.state).bytes
    }

    /// The next event, waiting for one. Cancel-safe.
    pub async fn recv(&self) -> Received {
        loop {
            if let Some(received) = self.try_recv() {
                return received;
            }
            self.ready.notified().await;
        }
    }

    /// The next event, if one is queued.
    pub fn try_recv(&self) -> Option<Received> {
        let mut state = lock(&self.state);
        if let Some((room, event)) = state.queue.pop_front() {
            state.bytes -= event.weight();
            return Some(Received::Event(room, event));
        }
        state.lagged.map(Received::Lagged)
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A member of a room on this node, as the registry sees it.
#[derive(Debug, Clone)]
struct Seat {
    inbox: Arc<Inbox>,
    /// Wants join and leave events.
    presence_events: bool,
}

/// A room with members on this node.
#[derive(Debug)]
struct LocalRoom {
    seats: Vec<Seat>,
    /// Set once the engine delivers this room's messages to this node (a Redis subscription
    /// confirmed); joiners wait for it.
    ready: Arc<tokio::sync::OnceCell<()>>,
}

/// The rooms this node has members in, and each room's members' inboxes. Engines deliver into
/// it; [`Hub`](crate::Hub) adds and removes members.
#[derive(Debug, Default)]
pub struct Registry {
    rooms: Mutex<HashMap<Arc<str>, LocalRoom>>,
    lagged: AtomicU64,
}

impl Registry {
    /// Adds a member; returns the room's name as stored and the cell that is set once the
    /// room is ready (the first joiner's engine subscription sets it; the others wait on it).
    pub(crate) fn add(
        &self,
        room: &str,
        inbox: &Arc<Inbox>,
        presence_events: bool,
    ) -> (Arc<str>, Arc<tokio::sync::OnceCell<()>>) {
        let mut rooms = lock(&self.rooms);
        let name: Arc<str> = match rooms.get_key_value(room) {
            Some((k, _)) => k.clone(),
            None => Arc::from(room),
        };
        let entry = rooms.entry(name.clone()).or_insert_with(|| {
            tracing::debug!(room, "room created on this node");
            LocalRoom { seats: Vec::new(), ready: Arc::default() }
        });
        entry.seats.push(Seat { inbox: inbox.clone(), presence_events });
        (name, entry.ready.clone())
    }

    /// Removes a member; returns `true` when it was the room's last on this node (the room is
    /// then gone).
    pub(crate) fn remove(&self, room: &str, inbox: &Arc<Inbox>) -> bool {
        let mut rooms = lock(&self.rooms);
        let Some(entry) = rooms.get_mut(room) else { return false };
        if let Some(i) = entry.seats.iter().position(|s| Arc::ptr_eq(&s.inbox, inbox)) {
            entry.seats.swap_remove(i);
        }
        if entry.seats.is_empty() {
            rooms.remove(room);
            tracing::debug!(room, "room removed from this node");
            return true;
        }
        false
    }

    /// Delivers an event to every member of `room` on this node (join and leave events only to
    /// those that asked). Never waits.
    pub fn deliver(&self, room: &str, event: Event) {
        let rooms = lock(&self.rooms);
        let Some((name, entry)) = rooms.get_key_value(room) else { return };
        let presence = matches!(event, Event::Join(_) | Event::Leave(_));
        for seat in &entry.seats {
            if presence && !seat.presence_events {
                continue;
            }
            if seat.inbox.push(name.clone(), event.clone()) {
                self.lagged.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Whether this node has members in `room`.
    pub fn has_room(&self, room: &str) -> bool {
        lock(&self.rooms).contains_key(room)
    }

    /// The rooms this node has members in.
    pub fn rooms(&self) -> Vec<Arc<str>> {
        lock(&self.rooms).keys().cloned().collect()
    }

    /// How many members `room` has on this node.
    pub fn members(&self, room: &str) -> usize {
        lock(&self.rooms).get(room).map_or(0, |r| r.seats.len())
    }

    /// How many connections fell behind and were cut off since the start.
    pub fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }
}
