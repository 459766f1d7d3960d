//! Broadcast rooms: the bus that carries every message sent to a room to all its members.
//!
//! The server talks to a [`Bus`] only: [`join`](Bus::join) a room (the returned
//! [`Subscription`] yields the room's messages; dropping it leaves) and
//! [`publish`](Bus::publish) to a room. [`LocalBus`] is the in-process implementation: one
//! bounded `tokio::sync::broadcast` channel per room, in a map, a room removed when its last
//! member leaves.
//!
//! A bus spanning several server processes (Redis pub/sub, say) fits behind the same trait: it
//! keeps a `LocalBus`-like map for the members of this process, relays what is published here to
//! the other nodes, and publishes what the other nodes relay into the local channels.
//!
//! # Slow members
//!
//! Publishing never waits. Each room's channel holds the last `capacity` messages; a member
//! that falls further behind than that (its connection cannot take them as fast as the room
//! produces them) misses messages, which its [`Subscription::recv`] reports as
//! [`Received::Lagged`]. The server then closes that member's connection with 1008 (policy
//! violation): in a chat, silently skipping messages would be worse than a visible disconnect.
//! The other members are never slowed down by it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;
use wsx::Message;

/// Carries room traffic. Implementations must deliver each room's messages to every member in
/// one order (the order of [`publish`](Self::publish) calls as the bus saw them).
pub trait Bus: Send + Sync + 'static {
    /// Joins `room`, creating it if it has no member. The subscription receives every message
    /// published to the room from now on (its own member's included), until it is dropped.
    fn join(&self, room: &str) -> Subscription;

    /// Publishes a text or binary message to every member of `room`. Never waits for members;
    /// a room without members drops it.
    fn publish(&self, room: &str, message: Message);
}

/// What [`Subscription::recv`] yields.
#[derive(Debug)]
pub enum Received {
    /// The next message of the room.
    Message(Message),
    /// This member fell behind and missed this many messages.
    Lagged(u64),
    /// The bus closed the room (it will not deliver anything more).
    Closed,
}

/// A member's place in a room: yields the room's messages; dropping it leaves the room.
pub struct Subscription {
    rx: broadcast::Receiver<Message>,
    /// Whatever the bus needs to notice the member leaving (dropped after `rx`).
    _membership: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    /// A subscription over a broadcast receiver; `membership` is dropped when the member leaves.
    pub fn new(rx: broadcast::Receiver<Message>, membership: Box<dyn Send + Sync>) -> Self {
        Self { rx, _membership: membership }
    }

    /// The next message of the room.
    ///
    /// **Cancel safety**: cancel-safe (as `broadcast::Receiver::recv`).
    pub async fn recv(&mut self) -> Received {
        match self.rx.recv().await {
            Ok(m) => Received::Message(m),
            Err(broadcast::error::RecvError::Lagged(n)) => Received::Lagged(n),
            Err(broadcast::error::RecvError::Closed) => Received::Closed,
        }
    }
}

/// The in-process bus: one bounded broadcast channel per room.
#[derive(Debug, Clone)]
pub struct LocalBus {
    rooms: Arc<Mutex<HashMap<String, Room>>>,
    capacity: usize,
}

#[derive(Debug)]
struct Room {
    tx: broadcast::Sender<Message>,
    members: usize,
}

impl LocalBus {
    /// A bus whose rooms each queue at most `capacity` messages for their slowest member.
    pub fn new(capacity: usize) -> Self {
        Self { rooms: Arc::default(), capacity: capacity.max(1) }
    }

    /// How many rooms have members.
    #[cfg(test)]
    pub fn room_count(&self) -> usize {
        lock(&self.rooms).len()
    }

    /// How many members `room` has.
    #[cfg(test)]
    pub fn members(&self, room: &str) -> usize {
        lock(&self.rooms).get(room).map_or(0, |r| r.members)
    }
}

fn lock(rooms: &Mutex<HashMap<String, Room>>) -> MutexGuard<'_, HashMap<String, Room>> {
    // The map stays consistent at every await-free step, so a poisoned lock is still usable.
    rooms.lock().unwrap_or_else(|p| p.into_inner())
}

/// Leaves the room when dropped; the last member to leave removes it.
struct Membership {
    rooms: Arc<Mutex<HashMap<String, Room>>>,
    room: String,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut rooms = lock(&self.rooms);
        if let Some(room) = rooms.get_mut(&self.room) {
            room.members -= 1;
            if room.members == 0 {
                rooms.remove(&self.room);
                tracing::debug!(room = %self.room, "room removed");
            }
        }
    }
}

impl Bus for LocalBus {
    fn join(&self, room: &str) -> Subscription {
        let mut rooms = lock(&self.rooms);
        let entry = rooms.entry(room.to_owned()).or_insert_with(|| {
            tracing::debug!(room, "room created");
            Room { tx: broadcast::channel(self.capacity).0, members: 0 }
        });
        entry.members += 1;
        let rx = entry.tx.subscribe();
        Subscription::new(rx, Box::new(Membership { rooms: self.rooms.clone(), room: room.to_owned() }))
    }

    fn publish(&self, room: &str, message: Message) {
        if let Some(r) = lock(&self.rooms).get(room) {
            // Fails only when no receiver is left, i.e. the room is being removed.
            let _ = r.tx.send(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Message {
        Message::text(s)
    }

    async fn next(sub: &mut Subscription) -> Message {
        match sub.recv().await {
            Received::Message(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn every_member_gets_every_message_in_order() {
        let bus = LocalBus::new(16);
        let mut a = bus.join("lobby");
        let mut b = bus.join("lobby");
        let mut other = bus.join("other");
        bus.publish("lobby", text("1"));
        bus.publish("lobby", Message::binary(vec![2u8]));
        bus.publish("other", text("elsewhere"));
        for sub in [&mut a, &mut b] {
            assert_eq!(next(sub).await, text("1"));
            assert_eq!(next(sub).await, Message::binary(vec![2u8]));
        }
        assert_eq!(next(&mut other).await, text("elsewhere"));
    }

    #[tokio::test]
    async fn rooms_are_removed_when_their_last_member_leaves() {
        let bus = LocalBus::new(4);
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
        assert_eq!(next(&mut c).await, text("kept"));
    }

    #[tokio::test]
    async fn a_slow_member_lags_without_holding_up_the_others() {
        let bus = LocalBus::new(4);
        let mut slow = bus.join("r");
        let mut fast = bus.join("r");
        for i in 0..10 {
            bus.publish("r", text(&i.to_string()));
            assert_eq!(next(&mut fast).await, text(&i.to_string()));
        }
        match slow.recv().await {
            Received::Lagged(n) => assert_eq!(n, 6),
            other => panic!("expected a lag, got {other:?}"),
        }
        // After the lag report it goes on with the oldest message still queued.
        assert_eq!(next(&mut slow).await, text("6"));
    }
}
