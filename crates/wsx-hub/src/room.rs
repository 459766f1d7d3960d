//! What a room carries and where it goes on this node: [`RoomMessage`], [`Event`], each
//! connection's bounded [`Inbox`], and the [`Registry`] of the rooms this node has members in.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;
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
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
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
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
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
    /// Changes when the room's history may have been lost: a Redis restart (unless declared
    /// durable, [`HubConfig::broker_durable`](crate::HubConfig::broker_durable)), or the room
    /// forgotten (in-process: idle, its history expired; in Redis: its keys expired). Offsets
    /// from another epoch mean nothing.
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
            Self::Join(who) | Self::Leave(who) => 128 + who.id.len() + who.name.as_ref().map_or(0, String::len),
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

/// What an inbox hands its member: an event with its room and the stay it was queued for, or
/// the lag that cut the member off.
pub(crate) type Entry = Result<(Arc<str>, u64, Event), Lag>;

/// One connection's queue of room events not yet taken, bounded by [`QueueLimits`]. Pushing
/// never waits: a connection that falls behind is marked as lagging and its queue emptied.
///
/// An inbox has one receiver, the connection it queues for: the task that waits on it is woken
/// by the next push (a second task waiting at the same time would take the first one's place,
/// and the first would not be woken).
#[derive(Debug)]
pub struct Inbox {
    state: Mutex<InboxState>,
    limits: QueueLimits,
}

#[derive(Debug, Default)]
struct InboxState {
    /// Room, stay (which join of the room the event was queued for), event.
    queue: VecDeque<(Arc<str>, u64, Event)>,
    bytes: usize,
    lagged: Option<Lag>,
    /// The receiver waiting for the next push. (A waker in the state, under the lock the push
    /// takes anyway, rather than a `Notify`: its waiting future, kept by every idle member's
    /// session, took 64 B, and the `Notify` itself 32.)
    receiver: Option<Waker>,
}

impl InboxState {
    /// The next event with its stay, or the lag.
    fn take(&mut self) -> Option<Entry> {
        if let Some((room, stay, event)) = self.queue.pop_front() {
            self.bytes -= event.weight();
            return Some(Ok((room, stay, event)));
        }
        self.lagged.map(Err)
    }
}

impl Inbox {
    /// An empty inbox bounded by `limits`.
    pub fn new(limits: QueueLimits) -> Self {
        let limits = QueueLimits { messages: limits.messages.max(1), bytes: limits.bytes };
        Self { state: Mutex::default(), limits }
    }

    /// Queues an event, or marks the inbox as lagging when that would pass a limit. Returns
    /// `true` when this push made it lag.
    pub fn push(&self, room: Arc<str>, event: Event) -> bool {
        self.push_for(room, 0, event)
    }

    /// [`push`](Self::push) for one stay of the member in the room.
    pub(crate) fn push_for(&self, room: Arc<str>, stay: u64, event: Event) -> bool {
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
                state.queue.push_back((room, stay, event));
                state.bytes += len;
            }
        }
        let receiver = state.receiver.take();
        drop(state);
        if let Some(receiver) = receiver {
            receiver.wake();
        }
        lagged
    }

    /// Bytes queued.
    pub fn queued_bytes(&self) -> usize {
        lock(&self.state).bytes
    }

    /// The next event, waiting for one (see [`Inbox`]: one receiver). Cancel-safe.
    pub fn recv(&self) -> impl Future<Output = Received> + '_ {
        std::future::poll_fn(|cx| self.poll_recv_entry(cx).map(received))
    }

    /// The next event, if one is queued.
    pub fn try_recv(&self) -> Option<Received> {
        self.try_recv_entry().map(received)
    }

    /// The next event with the stay it was queued for, or the lag.
    pub(crate) fn try_recv_entry(&self) -> Option<Entry> {
        lock(&self.state).take()
    }

    /// The next event with its stay, or the lag; else `cx`'s task is woken by the next push.
    /// Cancel-safe: nothing is taken unless it is returned.
    pub(crate) fn poll_recv_entry(&self, cx: &mut Context<'_>) -> Poll<Entry> {
        let mut state = lock(&self.state);
        if let Some(entry) = state.take() {
            return Poll::Ready(entry);
        }
        let old = match &mut state.receiver {
            Some(waker) if waker.will_wake(cx.waker()) => None,
            slot => slot.replace(cx.waker().clone()),
        };
        // Another task's waker, dropped once the lock is released (as a push wakes).
        drop(state);
        drop(old);
        Poll::Pending
    }
}

/// An entry as the public API gives it: the room and the event, or the lag.
fn received(entry: Entry) -> Received {
    entry.map_or_else(Received::Lagged, |(room, _, event)| Received::Event(room, event))
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A member of a room on this node, as the registry sees it.
#[derive(Debug, Clone)]
struct Seat {
    inbox: Arc<Inbox>,
    /// Which of the member's stays in the room this is (its events are tagged with it).
    stay: u64,
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
    #[cfg(test)]
    pub(crate) fn add(
        &self,
        room: &str,
        inbox: &Arc<Inbox>,
        presence_events: bool,
    ) -> (Arc<str>, Arc<tokio::sync::OnceCell<()>>) {
        self.add_stay(room, inbox, 0, presence_events)
    }

    /// [`add`](Self::add) for one stay of the member (the events queued for it carry it).
    pub(crate) fn add_stay(
        &self,
        room: &str,
        inbox: &Arc<Inbox>,
        stay: u64,
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
        entry.seats.push(Seat { inbox: inbox.clone(), stay, presence_events });
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
            if seat.inbox.push_for(name.clone(), seat.stay, event.clone()) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn text(room: &str, offset: u64, body: &str) -> RoomMessage {
        RoomMessage::new(room.into(), offset, "e".into(), Payload::Text(body.to_owned().into()))
    }

    fn sized(offset: u64, n: usize) -> Event {
        Event::Message(RoomMessage::new("r".into(), offset, "e".into(), Payload::Binary(Bytes::from(vec![0u8; n]))))
    }

    /// The offset of a received message (panics on anything else).
    fn offset_of(received: Option<Received>) -> u64 {
        match received {
            Some(Received::Event(_, Event::Message(m))) => m.offset(),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// A push wakes the receiver waiting on the inbox, also when an earlier wait was given up
    /// (a `select!` that took another branch) and the wait is now another task's; a lag is
    /// received as events are.
    #[tokio::test(flavor = "current_thread")]
    async fn a_push_wakes_the_receiver_waiting_now() {
        let inbox = Arc::new(Inbox::new(QueueLimits { messages: 2, bytes: usize::MAX }));
        let gave_up = tokio::time::timeout(Duration::from_millis(20), inbox.recv()).await;
        assert!(gave_up.is_err(), "an empty inbox gave {gave_up:?}");
        for offset in 1..=2 {
            let waiter = tokio::spawn({
                let inbox = inbox.clone();
                async move { inbox.recv().await }
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(!waiter.is_finished(), "the wait ended before the push");
            inbox.push("r".into(), sized(offset, 10));
            let received = tokio::time::timeout(Duration::from_secs(5), waiter).await;
            assert_eq!(offset_of(Some(received.expect("not woken by the push").unwrap())), offset);
        }
        for offset in 3..=5 {
            inbox.push("r".into(), sized(offset, 10));
        }
        let lagged = tokio::time::timeout(Duration::from_secs(5), inbox.recv()).await.expect("the lag");
        assert!(matches!(lagged, Received::Lagged(Lag::Messages(2))), "{lagged:?}");
    }

    /// Every member keeps an inbox: in its `Arc`, 112 B (jemalloc's 112-byte class) on a 64-bit
    /// target; 128 B while it held a `Notify`.
    #[test]
    fn an_inbox_stays_small() {
        if cfg!(target_pointer_width = "64") {
            assert!(std::mem::size_of::<Inbox>() <= 96, "{} B", std::mem::size_of::<Inbox>());
        }
    }

    #[test]
    fn an_inbox_past_its_message_count_lags_and_stays_lagged() {
        let inbox = Inbox::new(QueueLimits { messages: 3, bytes: usize::MAX });
        for offset in 1..=3 {
            assert!(!inbox.push("r".into(), sized(offset, 10)), "push {offset} made it lag");
        }
        assert!(inbox.push("r".into(), sized(4, 10)), "the 4th queued event did not make it lag");
        // Its queue was emptied: nothing of what was queued comes out, only the lag, for good.
        assert_eq!(inbox.queued_bytes(), 0);
        for _ in 0..3 {
            assert!(matches!(inbox.try_recv(), Some(Received::Lagged(Lag::Messages(3)))));
        }
        // Later pushes are dropped and do not count as a new lag.
        assert!(!inbox.push("r".into(), sized(5, 10)));
        assert!(matches!(inbox.try_recv(), Some(Received::Lagged(Lag::Messages(3)))));
        assert_eq!(inbox.queued_bytes(), 0);
    }

    #[test]
    fn an_inbox_past_its_byte_limit_lags() {
        let inbox = Inbox::new(QueueLimits { messages: 1000, bytes: 1000 });
        // 400 bytes of payload weigh 464: two fit (928), a third does not.
        assert!(!inbox.push("r".into(), sized(1, 400)));
        assert!(!inbox.push("r".into(), sized(2, 400)));
        assert_eq!(inbox.queued_bytes(), 2 * (400 + 64));
        assert!(inbox.push("r".into(), sized(3, 400)));
        assert_eq!(inbox.queued_bytes(), 0);
        assert!(matches!(inbox.try_recv(), Some(Received::Lagged(Lag::Bytes(1000)))));
        assert!(matches!(inbox.try_recv(), Some(Received::Lagged(Lag::Bytes(1000)))));
    }

    #[test]
    fn a_message_bigger_than_the_byte_limit_fits_an_empty_inbox_only() {
        let inbox = Inbox::new(QueueLimits { messages: 1000, bytes: 100 });
        assert!(!inbox.push("r".into(), sized(1, 10_000)), "a big message in an empty inbox lagged");
        assert_eq!(inbox.queued_bytes(), 10_000 + 64);
        assert_eq!(offset_of(inbox.try_recv()), 1);
        assert_eq!(inbox.queued_bytes(), 0);
        assert!(inbox.try_recv().is_none());
        // Empty again: the next big one fits too; anything behind it does not.
        assert!(!inbox.push("r".into(), sized(2, 10_000)));
        assert!(inbox.push("r".into(), sized(3, 1)));
        assert!(matches!(inbox.try_recv(), Some(Received::Lagged(Lag::Bytes(100)))));
    }

    #[test]
    fn taking_events_frees_their_room_in_the_inbox() {
        // A reader that keeps up never lags, however much passes through.
        let inbox = Inbox::new(QueueLimits { messages: 2, bytes: 1000 });
        for offset in 1..=1000 {
            assert!(!inbox.push("r".into(), sized(offset, 400)));
            assert!(!inbox.push("r".into(), Event::Join(MemberInfo { id: "m".into(), name: None })));
            assert_eq!(offset_of(inbox.try_recv()), offset);
            assert!(matches!(inbox.try_recv(), Some(Received::Event(_, Event::Join(_)))));
            assert_eq!(inbox.queued_bytes(), 0);
        }
        assert!(inbox.try_recv().is_none());
    }

    #[test]
    fn try_recv_yields_events_in_push_order_with_their_room() {
        let inbox = Inbox::new(QueueLimits::default());
        assert!(inbox.try_recv().is_none());
        inbox.push("a".into(), Event::Message(text("a", 1, "x")));
        inbox.push("b".into(), Event::Interrupted);
        inbox.push("a".into(), Event::Message(text("a", 2, "y")));
        match inbox.try_recv() {
            Some(Received::Event(room, Event::Message(m))) => assert_eq!((&*room, m.offset()), ("a", 1)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(inbox.try_recv(), Some(Received::Event(room, Event::Interrupted)) if &*room == "b"));
        assert_eq!(offset_of(inbox.try_recv()), 2);
        assert!(inbox.try_recv().is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn recv_waits_for_a_push() {
        let inbox = Arc::new(Inbox::new(QueueLimits::default()));
        let waiting = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.recv().await }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "recv returned from an empty inbox");
        inbox.push("r".into(), Event::Message(text("r", 7, "late")));
        let received = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("recv was not woken by the push")
            .unwrap();
        assert_eq!(offset_of(Some(received)), 7);
        // A lag wakes a waiting receiver too.
        let small = Arc::new(Inbox::new(QueueLimits { messages: 1, bytes: usize::MAX }));
        small.push("r".into(), sized(1, 1));
        assert_eq!(offset_of(small.try_recv()), 1);
        let waiting = tokio::spawn({
            let small = small.clone();
            async move { small.recv().await }
        });
        tokio::task::yield_now().await;
        small.push("r".into(), sized(2, 1));
        small.push("r".into(), sized(3, 1));
        // Both pushes ran before the woken receiver did (one thread): it finds the lag.
        let received = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.unwrap().unwrap();
        assert!(matches!(received, Received::Lagged(Lag::Messages(1))), "{received:?}");
    }

    #[test]
    fn frames_are_encoded_once_and_shared_by_clones() {
        let m = text("r", 3, "hi");
        let copy = m.clone();
        assert!(m.raw_frame().ptr_eq(copy.raw_frame()), "the raw frame was encoded twice");
        assert!(m.hub_frame().ptr_eq(copy.hub_frame()), "the hub frame was encoded twice");
        assert!(m.raw_frame().ptr_eq(m.raw_frame()));
        assert!(!m.raw_frame().ptr_eq(m.hub_frame()));
        assert!(m.raw_frame().is_text());
        assert_eq!(&m.raw_frame().payload()[..], b"hi");
        let event: serde_json::Value = serde_json::from_slice(m.hub_frame().payload()).unwrap();
        assert_eq!(event, serde_json::json!({"type": "message", "room": "r", "offset": 3, "epoch": "e", "text": "hi"}));
    }

    #[test]
    fn raw_frames_carry_the_payload_as_published() {
        let json = RoomMessage::new("r".into(), 1, "e".into(), Payload::Json(r#"{"a":1}"#.into()));
        assert!(json.raw_frame().is_text());
        assert_eq!(&json.raw_frame().payload()[..], br#"{"a":1}"#);
        let binary = RoomMessage::new("r".into(), 2, "e".into(), Payload::Binary(Bytes::from_static(&[0, 255])));
        assert!(!binary.raw_frame().is_text());
        assert_eq!(&binary.raw_frame().payload()[..], &[0, 255]);
        assert!(binary.hub_frame().is_text());
    }

    #[test]
    fn payload_kinds_round_trip_and_bad_ones_are_refused() {
        for p in
            [Payload::Text("t".into()), Payload::Json("[1]".into()), Payload::Binary(Bytes::from_static(&[0xff, 0]))]
        {
            assert_eq!(Payload::from_kind(p.kind(), p.bytes().clone()), Some(p));
        }
        assert_eq!(Payload::from_kind(b't', Bytes::from_static(&[0xff])), None, "invalid UTF-8 as text");
        assert_eq!(Payload::from_kind(b'j', Bytes::from_static(&[0xc0])), None, "invalid UTF-8 as JSON");
        assert_eq!(Payload::from_kind(b'x', Bytes::from_static(b"a")), None, "unknown kind");
    }

    #[test]
    fn the_registry_delivers_presence_events_only_to_members_that_asked() {
        let registry = Registry::default();
        let watcher = Arc::new(Inbox::new(QueueLimits::default()));
        let quiet = Arc::new(Inbox::new(QueueLimits::default()));
        registry.add("r", &watcher, true);
        registry.add("r", &quiet, false);
        let who = MemberInfo { id: "n.1".into(), name: Some("ann".into()) };
        registry.deliver("r", Event::Join(who.clone()));
        registry.deliver("r", Event::Leave(who.clone()));
        registry.deliver("r", Event::Message(text("r", 1, "m")));
        assert!(matches!(watcher.try_recv(), Some(Received::Event(_, Event::Join(m))) if m == who));
        assert!(matches!(watcher.try_recv(), Some(Received::Event(_, Event::Leave(m))) if m == who));
        assert_eq!(offset_of(watcher.try_recv()), 1);
        assert_eq!(offset_of(quiet.try_recv()), 1, "the quiet member got a presence event or no message");
        assert!(quiet.try_recv().is_none());
    }

    #[test]
    fn the_registry_forgets_a_room_with_its_last_member() {
        let registry = Registry::default();
        let (a, b) = (Arc::new(Inbox::new(QueueLimits::default())), Arc::new(Inbox::new(QueueLimits::default())));
        let (name_a, ready_a) = registry.add("r", &a, false);
        let (name_b, ready_b) = registry.add("r", &b, false);
        // One stored name and one readiness cell per room.
        assert!(Arc::ptr_eq(&name_a, &name_b));
        assert!(Arc::ptr_eq(&ready_a, &ready_b));
        assert_eq!(registry.members("r"), 2);
        assert!(!registry.remove("r", &a), "removing one of two members removed the room");
        assert!(registry.has_room("r"));
        assert_eq!(registry.members("r"), 1);
        // The right seat went: b still receives, a does not.
        registry.deliver("r", Event::Message(text("r", 1, "m")));
        assert!(a.try_recv().is_none());
        assert_eq!(offset_of(b.try_recv()), 1);
        assert!(registry.remove("r", &b));
        assert!(!registry.has_room("r"));
        assert!(registry.rooms().is_empty());
        assert!(!registry.remove("r", &b), "removing from a room that is gone");
        // Back again: a new room, not ready until its engine says so.
        let (_, ready) = registry.add("r", &a, false);
        assert!(!Arc::ptr_eq(&ready, &ready_a));
        assert!(ready.get().is_none());
    }

    #[test]
    fn the_registry_counts_each_lagging_member_once() {
        let registry = Registry::default();
        let slow = Arc::new(Inbox::new(QueueLimits { messages: 2, bytes: usize::MAX }));
        let fast = Arc::new(Inbox::new(QueueLimits { messages: 2, bytes: usize::MAX }));
        registry.add("r", &slow, false);
        registry.add("r", &fast, false);
        for offset in 1..=10 {
            registry.deliver("r", Event::Message(text("r", offset, "m")));
            assert_eq!(offset_of(fast.try_recv()), offset);
        }
        assert_eq!(registry.lagged(), 1);
        assert!(matches!(slow.try_recv(), Some(Received::Lagged(Lag::Messages(2)))));
        // Other rooms' traffic does not reach it.
        registry.deliver("other", Event::Message(text("other", 1, "m")));
        assert!(fast.try_recv().is_none());
    }
}
