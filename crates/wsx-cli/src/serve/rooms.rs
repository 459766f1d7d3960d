//! Broadcast rooms: the bus that carries every message sent to a room to all its members.
//!
//! The server talks to a [`Bus`] only: [`join`](Bus::join) a room (the returned
//! [`Subscription`] yields the room's messages; dropping it leaves) and
//! [`publish`](Bus::publish) to a room. [`LocalBus`] is the in-process implementation: a map
//! of rooms, each a list of its members' [`Inbox`]es, a room removed when its last member
//! leaves. Publishing puts the message in every member's inbox as one [`PreparedMessage`]: its
//! bytes shared, and its frame (compressed, when the members' permessage-deflate parameters let
//! them share one) encoded once for the whole room rather than once per member.
//!
//! A bus spanning several server processes (Redis pub/sub, say) fits behind the same trait: it
//! keeps a `LocalBus`-like map for the members of this process, relays what is published here to
//! the other nodes, and pushes what the other nodes relay into the local inboxes.
//!
//! # Slow members
//!
//! Publishing never waits. Each member's inbox holds what its connection has not taken yet, up
//! to [`QueueLimits`]: a number of messages and a number of bytes (the bytes bound is what
//! keeps memory in check, since one message may be large). A member that falls further behind
//! (its connection cannot take the messages as fast as the room produces them) has its inbox
//! emptied at once, which frees what it held, and its [`Subscription::recv`] reports
//! [`Received::Lagged`]. The server then closes that member's connection with 1008 (policy
//! violation): in a chat, silently skipping messages would be worse than a visible disconnect.
//! The other members are never slowed down by it.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use wsx::PreparedMessage;

/// Carries room traffic. Implementations must deliver each room's messages to every member in
/// one order (the order of [`publish`](Self::publish) calls as the bus saw them).
pub trait Bus: Send + Sync + 'static {
    /// Joins `room`, creating it if it has no member. The subscription receives every message
    /// published to the room from now on (its own member's included), until it is dropped.
    fn join(&self, room: &str) -> Subscription;

    /// Publishes a message to every member of `room`. Never waits for members; a room without
    /// members drops it.
    fn publish(&self, room: &str, message: PreparedMessage);
}

/// How much a member's inbox may hold before the member counts as lagging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// The most messages queued.
    pub messages: usize,
    /// The most payload bytes queued. A single message larger than this still fits in an empty
    /// inbox, so the bound is the larger of this and one message.
    pub bytes: usize,
}

/// What [`Subscription::recv`] yields.
#[derive(Debug)]
pub enum Received {
    /// The next message of the room.
    Message(PreparedMessage),
    /// This member fell behind past this limit; its queued messages were dropped and it gets
    /// nothing more (every later `recv` says so again).
    Lagged(Lag),
}

/// The limit a lagging member passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lag {
    /// More than this many messages were waiting.
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

/// One member's queue of room messages not yet taken by its connection.
#[derive(Debug)]
pub struct Inbox {
    state: Mutex<InboxState>,
    /// Woken on every push (a stored permit covers a push between a check and the wait).
    ready: Notify,
    limits: QueueLimits,
}

#[derive(Debug, Default)]
struct InboxState {
    queue: VecDeque<PreparedMessage>,
    /// Payload bytes in `queue`.
    bytes: usize,
    lagged: Option<Lag>,
}

impl Inbox {
    /// An empty inbox bounded by `limits`.
    pub fn new(limits: QueueLimits) -> Self {
        Self { state: Mutex::default(), ready: Notify::new(), limits }
    }

    /// Queues a message for this member, or, when that would pass a limit, marks the member as
    /// lagging and drops what it holds. Never waits.
    pub fn push(&self, message: PreparedMessage) {
        let mut state = lock(&self.state);
        if state.lagged.is_some() {
            return;
        }
        let len = message.len();
        let lag = if state.queue.is_empty() {
            None
        } else if state.queue.len() >= self.limits.messages {
            Some(Lag::Messages(self.limits.messages))
        } else if state.bytes + len > self.limits.bytes {
            Some(Lag::Bytes(self.limits.bytes))
        } else {
            None
        };
        match lag {
            Some(lag) => {
                state.lagged = Some(lag);
                state.queue = VecDeque::new();
                state.bytes = 0;
            }
            None => {
                state.queue.push_back(message);
                state.bytes += len;
            }
        }
        drop(state);
        self.ready.notify_one();
    }

    /// Payload bytes queued.
    #[cfg(test)]
    fn queued_bytes(&self) -> usize {
        lock(&self.state).bytes
    }
}

/// A member's place in a room: yields the room's messages; dropping it leaves the room.
pub struct Subscription {
    inbox: Arc<Inbox>,
    /// Whatever the bus needs to notice the member leaving.
    _membership: Box<dyn Send + Sync>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    /// A subscription reading `inbox`; `membership` is dropped when the member leaves.
    pub fn new(inbox: Arc<Inbox>, membership: Box<dyn Send + Sync>) -> Self {
        Self { inbox, _membership: membership }
    }

    /// The next message of the room, waiting for one.
    ///
    /// **Cancel safety**: cancel-safe (a message is taken from the inbox only when returned).
    pub async fn recv(&mut self) -> Received {
        loop {
            {
                let mut state = lock(&self.inbox.state);
                if let Some(message) = state.queue.pop_front() {
                    state.bytes -= message.len();
                    return Received::Message(message);
                }
                if let Some(lag) = state.lagged {
                    return Received::Lagged(lag);
                }
            }
            self.inbox.ready.notified().await;
        }
    }
}

/// The in-process bus: a map of rooms, each the inboxes of its members.
#[derive(Debug, Clone)]
pub struct LocalBus {
    rooms: Arc<Mutex<HashMap<String, Room>>>,
    limits: QueueLimits,
}

#[derive(Debug, Default)]
struct Room {
    members: Vec<Arc<Inbox>>,
}

impl LocalBus {
    /// A bus whose members' inboxes are bounded by `limits` (at least one message).
    pub fn new(limits: QueueLimits) -> Self {
        let limits = QueueLimits { messages: limits.messages.max(1), bytes: limits.bytes };
        Self { rooms: Arc::default(), limits }
    }

    /// How many rooms have members.
    #[cfg(test)]
    pub fn room_count(&self) -> usize {
        lock(&self.rooms).len()
    }

    /// How many members `room` has.
    #[cfg(test)]
    pub fn members(&self, room: &str) -> usize {
        lock(&self.rooms).get(room).map_or(0, |r| r.members.len())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Leaves the room when dropped; the last member to leave removes it.
struct Membership {
    rooms: Arc<Mutex<HashMap<String, Room>>>,
    room: String,
    inbox: Arc<Inbox>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut rooms = lock(&self.rooms);
        if let Some(room) = rooms.get_mut(&self.room) {
            room.members.retain(|m| !Arc::ptr_eq(m, &self.inbox));
            if room.members.is_empty() {
                rooms.remove(&self.room);
                tracing::debug!(room = %self.room, "room removed");
            }
        }
    }
}

impl Bus for LocalBus {
    fn join(&self, room: &str) -> Subscription {
        let inbox = Arc::new(Inbox::new(self.limits));
        let mut rooms = lock(&self.rooms);
        let entry = rooms.entry(room.to_owned()).or_insert_with(|| {
            tracing::debug!(room, "room created");
            Room::default()
        });
        entry.members.push(inbox.clone());
        let membership = Membership { rooms: self.rooms.clone(), room: room.to_owned(), inbox: inbox.clone() };
        Subscription::new(inbox, Box::new(membership))
    }

    fn publish(&self, room: &str, message: PreparedMessage) {
        if let Some(r) = lock(&self.rooms).get(room) {
            for member in &r.members {
                member.push(message.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsx::Message;

    fn text(s: &str) -> PreparedMessage {
        PreparedMessage::text(s.to_owned())
    }

    async fn next_prepared(sub: &mut Subscription) -> PreparedMessage {
        match sub.recv().await {
            Received::Message(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    async fn next(sub: &mut Subscription) -> Message {
        next_prepared(sub).await.to_message()
    }

    #[tokio::test]
    async fn every_member_gets_every_message_in_order() {
        let bus = LocalBus::new(QueueLimits { messages: 16, bytes: 1 << 20 });
        let mut a = bus.join("lobby");
        let mut b = bus.join("lobby");
        let mut other = bus.join("other");
        bus.publish("lobby", text("1"));
        bus.publish("lobby", PreparedMessage::binary(vec![2u8]));
        bus.publish("other", text("elsewhere"));
        for sub in [&mut a, &mut b] {
            assert_eq!(next(sub).await, Message::text("1"));
            assert_eq!(next(sub).await, Message::binary(vec![2u8]));
        }
        assert_eq!(next(&mut other).await, Message::text("elsewhere"));
    }

    #[tokio::test]
    async fn rooms_are_removed_when_their_last_member_leaves() {
        let bus = LocalBus::new(QueueLimits { messages: 4, bytes: 1 << 20 });
        let a = bus.join("r");
        let b = bus.join("r");
        assert_eq!((bus.room_count(), bus.members("r")), (1, 2));
        drop(a);
        assert_eq!((bus.room_count(), bus.members("r")), (1, 1));
        drop(b);
        assert_eq!(bus.room_count(), 0);
        // Publishing to a room without members is dropped, and joining again starts afresh.
        bus.publish("r", text("lost"));
        let mut c = bus.join("r");
        bus.publish("r", text("kept"));
        assert_eq!(next(&mut c).await, Message::text("kept"));
    }

    #[tokio::test]
    async fn a_slow_member_lags_without_holding_up_the_others() {
        let bus = LocalBus::new(QueueLimits { messages: 4, bytes: 1 << 20 });
        let mut slow = bus.join("r");
        let mut fast = bus.join("r");
        for i in 0..10 {
            bus.publish("r", text(&i.to_string()));
            assert_eq!(next(&mut fast).await, Message::text(i.to_string()));
        }
        // Its inbox was emptied when the fifth message did not fit; it gets nothing more.
        for _ in 0..2 {
            match slow.recv().await {
                Received::Lagged(lag) => assert_eq!(lag, Lag::Messages(4)),
                other => panic!("expected a lag, got {other:?}"),
            }
        }
        assert_eq!(slow.inbox.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn an_inbox_is_bounded_in_bytes() {
        let bus = LocalBus::new(QueueLimits { messages: 1000, bytes: 10_000 });
        let mut slow = bus.join("r");
        let mut fast = bus.join("r");
        let big = PreparedMessage::binary(vec![0u8; 4000]);
        for queued in [4000, 8000, 0] {
            bus.publish("r", big.clone());
            assert_eq!(next(&mut fast).await, big.to_message());
            // The third one would pass 10,000 bytes: the slow member's inbox is emptied.
            assert_eq!(slow.inbox.queued_bytes(), queued);
        }
        match slow.recv().await {
            Received::Lagged(lag) => assert_eq!(lag.to_string(), "more than 10000 bytes queued"),
            other => panic!("expected a lag, got {other:?}"),
        }
        // One message larger than the bound still reaches a member whose inbox is empty.
        let huge = PreparedMessage::binary(vec![0u8; 20_000]);
        bus.publish("r", huge.clone());
        assert_eq!(next(&mut fast).await, huge.to_message());
    }

    #[tokio::test]
    async fn recv_waits_for_a_message() {
        let bus = LocalBus::new(QueueLimits { messages: 4, bytes: 100 });
        let mut sub = bus.join("r");
        let waiting = tokio::spawn(async move { next(&mut sub).await });
        tokio::task::yield_now().await;
        bus.publish("r", text("later"));
        assert_eq!(waiting.await.unwrap(), Message::text("later"));
    }

    #[tokio::test]
    async fn every_member_gets_the_one_prepared_message() {
        let bus = LocalBus::new(QueueLimits { messages: 4, bytes: 1 << 20 });
        let mut a = bus.join("r");
        let mut b = bus.join("r");
        let published = text("encoded once");
        bus.publish("r", published.clone());
        // The same prepared message (so the same cached encodings), not copies of the payload.
        let (got_a, got_b) = (next_prepared(&mut a).await, next_prepared(&mut b).await);
        assert!(got_a.ptr_eq(&published) && got_b.ptr_eq(&published));
    }
}
