//! The in-process engine: each room's offset counter, history and presence in a map, delivered
//! straight into the registry.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::room::lock;
use crate::{
    random_hex, BoxFuture, Engine, Event, History, HubConfig, HubError, MemberInfo, Payload, Position, Registry,
    RoomMessage,
};

/// Rooms without members whose history is kept, at most (the oldest are forgotten first).
const MAX_IDLE_ROOMS: usize = 100_000;
/// Operations between two sweeps of expired rooms.
const SWEEP_EVERY: u64 = 4096;

pub(crate) struct LocalEngine {
    registry: Arc<Registry>,
    state: Mutex<State>,
    history_size: usize,
    history_ttl: Duration,
    history_bytes: usize,
    history_total_bytes: usize,
    /// Payload bytes in every room's history (changed under the state lock).
    total: AtomicUsize,
}

#[derive(Default)]
struct State {
    rooms: HashMap<Arc<str>, RoomState>,
    ops: u64,
}

struct RoomState {
    epoch: Arc<str>,
    offset: u64,
    history: VecDeque<(Instant, RoomMessage)>,
    /// Payload bytes in `history`.
    bytes: usize,
    presence: Vec<MemberInfo>,
    /// Last publish or read.
    touched: Instant,
}

impl LocalEngine {
    pub(crate) fn new(registry: Arc<Registry>, config: &HubConfig) -> Self {
        Self {
            registry,
            state: Mutex::default(),
            history_size: config.history_size,
            history_ttl: config.history_ttl,
            history_bytes: config.history_bytes,
            history_total_bytes: config.history_total_bytes,
            total: AtomicUsize::new(0),
        }
    }

    /// Drops a room's oldest history entry.
    fn pop_oldest(&self, r: &mut RoomState) {
        if let Some((_, m)) = r.history.pop_front() {
            let len = m.payload().bytes().len();
            r.bytes -= len;
            self.total.fetch_sub(len, Ordering::Relaxed);
        }
    }

    /// Drops a room's whole history.
    fn clear(&self, r: &mut RoomState) {
        self.total.fetch_sub(r.bytes, Ordering::Relaxed);
        r.history.clear();
        r.bytes = 0;
    }

    /// Keeps the histories within the total budget: the histories of rooms without members go
    /// first (least recently used first), then the oldest messages of `room`.
    fn keep_total(&self, state: &mut State, room: &str) {
        if self.total.load(Ordering::Relaxed) <= self.history_total_bytes {
            return;
        }
        let mut idle: Vec<(Instant, Arc<str>)> = state
            .rooms
            .iter()
            .filter(|(name, r)| r.bytes > 0 && &***name != room && self.registry.members(name) == 0)
            .map(|(name, r)| (r.touched, name.clone()))
            .collect();
        idle.sort();
        for (_, name) in idle {
            if self.total.load(Ordering::Relaxed) <= self.history_total_bytes {
                return;
            }
            if let Some(r) = state.rooms.get_mut(&name) {
                self.clear(r);
            }
        }
        if let Some(r) = state.rooms.get_mut(room) {
            while r.history.len() > 1 && self.total.load(Ordering::Relaxed) > self.history_total_bytes {
                self.pop_oldest(r);
            }
        }
    }

    /// The room's state, created (with a new epoch) when it has none; sweeps now and then.
    fn room<'a>(&self, state: &'a mut State, room: &str, now: Instant) -> (Arc<str>, &'a mut RoomState) {
        state.ops += 1;
        if state.ops.is_multiple_of(SWEEP_EVERY) {
            self.sweep(state, now);
        }
        let name = match state.rooms.get_key_value(room) {
            Some((k, _)) => k.clone(),
            None => Arc::from(room),
        };
        let entry = state.rooms.entry(name.clone()).or_insert_with(|| RoomState {
            epoch: random_hex(8).into(),
            offset: 0,
            history: VecDeque::new(),
            bytes: 0,
            presence: Vec::new(),
            touched: now,
        });
        entry.touched = now;
        let ttl = self.history_ttl;
        while entry.history.front().is_some_and(|(at, _)| now.duration_since(*at) > ttl) {
            self.pop_oldest(entry);
        }
        (name, entry)
    }

    /// Forgets rooms without members here whose history has expired, and the oldest idle ones
    /// beyond [`MAX_IDLE_ROOMS`].
    fn sweep(&self, state: &mut State, now: Instant) {
        let ttl = self.history_ttl;
        state.rooms.retain(|name, r| {
            let forget =
                r.presence.is_empty() && self.registry.members(name) == 0 && now.duration_since(r.touched) > ttl;
            if forget {
                self.total.fetch_sub(r.bytes, Ordering::Relaxed);
            }
            !forget
        });
        let idle: Vec<(Instant, Arc<str>)> = state
            .rooms
            .iter()
            .filter(|(name, r)| r.presence.is_empty() && self.registry.members(name) == 0)
            .map(|(name, r)| (r.touched, name.clone()))
            .collect();
        if idle.len() > MAX_IDLE_ROOMS {
            let mut idle = idle;
            idle.sort();
            for (_, name) in &idle[..idle.len() - MAX_IDLE_ROOMS] {
                if let Some(r) = state.rooms.remove(name) {
                    self.total.fetch_sub(r.bytes, Ordering::Relaxed);
                }
            }
        }
    }
}

impl Engine for LocalEngine {
    fn subscribe<'a>(&'a self, _room: &'a str) -> BoxFuture<'a, Result<(), HubError>> {
        Box::pin(async { Ok(()) })
    }

    fn unsubscribe(&self, _room: &str) {}

    fn publish<'a>(&'a self, room: &'a str, payload: Payload) -> BoxFuture<'a, Result<Position, HubError>> {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let (name, r) = self.room(&mut state, room, now);
        r.offset += 1;
        let message = RoomMessage::new(name, r.offset, r.epoch.clone(), payload);
        if self.history_size > 0 {
            let len = message.payload().bytes().len();
            r.history.push_back((now, message.clone()));
            r.bytes += len;
            self.total.fetch_add(len, Ordering::Relaxed);
            while r.history.len() > self.history_size || (r.bytes > self.history_bytes && r.history.len() > 1) {
                self.pop_oldest(r);
            }
        }
        let position = Position { offset: r.offset, epoch: r.epoch.clone() };
        self.keep_total(&mut state, room);
        // Delivered under the lock, so concurrent publishers' messages reach every member in
        // offset order.
        self.registry.deliver(room, Event::Message(message));
        drop(state);
        Box::pin(async move { Ok(position) })
    }

    fn history<'a>(&'a self, room: &'a str, since: u64) -> BoxFuture<'a, Result<History, HubError>> {
        let mut state = lock(&self.state);
        let (_, r) = self.room(&mut state, room, Instant::now());
        let messages = r.history.iter().filter(|(_, m)| m.offset() > since).map(|(_, m)| m.clone()).collect();
        let history = History { position: Position { offset: r.offset, epoch: r.epoch.clone() }, messages };
        drop(state);
        Box::pin(async move { Ok(history) })
    }

    fn join_presence<'a>(&'a self, room: &'a str, member: &'a MemberInfo) -> BoxFuture<'a, Result<(), HubError>> {
        let mut state = lock(&self.state);
        let (_, r) = self.room(&mut state, room, Instant::now());
        r.presence.push(member.clone());
        self.registry.deliver(room, Event::Join(member.clone()));
        drop(state);
        Box::pin(async { Ok(()) })
    }

    fn leave_presence(&self, room: &str, member: MemberInfo) {
        let mut state = lock(&self.state);
        if let Some(r) = state.rooms.get_mut(room) {
            let before = r.presence.len();
            r.presence.retain(|m| m.id != member.id);
            if r.presence.len() < before {
                self.registry.deliver(room, Event::Leave(member));
            }
        }
    }

    fn presence<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Vec<MemberInfo>, HubError>> {
        let members = lock(&self.state).rooms.get(room).map(|r| r.presence.clone()).unwrap_or_default();
        Box::pin(async move { Ok(members) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Inbox, QueueLimits, Received};

    fn engine(history_size: usize, history_ttl: Duration) -> (Arc<Registry>, LocalEngine) {
        let registry = Arc::new(Registry::default());
        let config = HubConfig { history_size, history_ttl, ..HubConfig::default() };
        (registry.clone(), LocalEngine::new(registry, &config))
    }

    fn text(s: &str) -> Payload {
        Payload::Text(s.to_owned().into())
    }

    fn offsets(messages: &[RoomMessage]) -> Vec<u64> {
        messages.iter().map(RoomMessage::offset).collect()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn each_room_counts_its_own_offsets_in_its_own_epoch() {
        let (_, e) = engine(100, Duration::from_secs(60));
        let a1 = e.publish("a", text("1")).await.unwrap();
        let a2 = e.publish("a", text("2")).await.unwrap();
        let b1 = e.publish("b", text("1")).await.unwrap();
        assert_eq!((a1.offset, a2.offset, b1.offset), (1, 2, 1));
        assert_eq!(a1.epoch, a2.epoch);
        assert_ne!(a1.epoch, b1.epoch, "two rooms share an epoch");
        // A room never published to stands at 0, in an epoch of its own.
        let c = e.history("c", 0).await.unwrap();
        assert_eq!(c.position.offset, 0);
        assert!(c.messages.is_empty());
        assert_eq!(e.history("c", 0).await.unwrap().position, c.position, "reading changed the epoch");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn history_gives_what_follows_an_offset_and_keeps_the_last_n() {
        let (_, e) = engine(3, Duration::from_secs(60));
        for i in 1..=5 {
            e.publish("r", text(&i.to_string())).await.unwrap();
        }
        let h = e.history("r", 0).await.unwrap();
        assert_eq!(h.position.offset, 5);
        assert_eq!(offsets(&h.messages), [3, 4, 5], "not the last 3");
        assert!(matches!(h.messages[0].payload(), Payload::Text(t) if t.as_str() == "3"));
        assert_eq!(offsets(&e.history("r", 3).await.unwrap().messages), [4, 5]);
        assert!(e.history("r", 5).await.unwrap().messages.is_empty());
        assert!(e.history("r", u64::MAX).await.unwrap().messages.is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn without_history_the_offsets_still_advance() {
        let (_, e) = engine(0, Duration::from_secs(60));
        e.publish("r", text("x")).await.unwrap();
        e.publish("r", text("y")).await.unwrap();
        let h = e.history("r", 0).await.unwrap();
        assert_eq!(h.position.offset, 2);
        assert!(h.messages.is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn messages_older_than_the_ttl_leave_the_history() {
        let (_, e) = engine(100, Duration::from_millis(150));
        let first = e.publish("r", text("old")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        e.publish("r", text("new")).await.unwrap();
        let h = e.history("r", 0).await.unwrap();
        assert_eq!(offsets(&h.messages), [2], "an expired message is still in the history");
        // The room goes on in the same epoch: only the messages expired.
        assert_eq!(h.position, Position { offset: 2, epoch: first.epoch });
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(e.history("r", 0).await.unwrap().messages.is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_room_without_members_is_forgotten_by_a_sweep_and_starts_a_new_epoch() {
        let (registry, e) = engine(100, Duration::from_millis(20));
        let idle = e.publish("idle", text("x")).await.unwrap();
        let kept = e.publish("kept", text("x")).await.unwrap();
        let inbox = Arc::new(Inbox::new(QueueLimits::default()));
        registry.add("kept", &inbox, false);
        tokio::time::sleep(Duration::from_millis(50)).await;
        for _ in 0..SWEEP_EVERY {
            e.history("busy", 0).await.unwrap();
        }
        let again = e.publish("idle", text("y")).await.unwrap();
        assert_eq!(again.offset, 1, "the idle room was not forgotten");
        assert_ne!(again.epoch, idle.epoch, "a forgotten room came back in its old epoch");
        let next = e.publish("kept", text("y")).await.unwrap();
        assert_eq!(next, Position { offset: 2, epoch: kept.epoch }, "a room with a member was forgotten");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn presence_lists_members_and_tells_the_room() {
        let (registry, e) = engine(100, Duration::from_secs(60));
        let inbox = Arc::new(Inbox::new(QueueLimits::default()));
        registry.add("r", &inbox, true);
        let ann = MemberInfo { id: "n.1".into(), name: Some("ann".into()) };
        let bob = MemberInfo { id: "n.2".into(), name: None };
        e.join_presence("r", &ann).await.unwrap();
        e.join_presence("r", &bob).await.unwrap();
        assert_eq!(e.presence("r").await.unwrap(), [ann.clone(), bob.clone()]);
        e.leave_presence("r", ann.clone());
        assert_eq!(e.presence("r").await.unwrap(), std::slice::from_ref(&bob));
        assert!(e.presence("nowhere").await.unwrap().is_empty());
        e.leave_presence("nowhere", bob.clone());
        let events: Vec<String> = std::iter::from_fn(|| inbox.try_recv())
            .map(|r| match r {
                Received::Event(_, Event::Join(m)) => format!("+{}", m.id),
                Received::Event(_, Event::Leave(m)) => format!("-{}", m.id),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(events, ["+n.1", "+n.2", "-n.1"]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn publishing_delivers_to_the_rooms_members_on_this_node() {
        let (registry, e) = engine(100, Duration::from_secs(60));
        let (a, b) = (Arc::new(Inbox::new(QueueLimits::default())), Arc::new(Inbox::new(QueueLimits::default())));
        registry.add("a", &a, false);
        registry.add("b", &b, false);
        e.publish("a", text("for a")).await.unwrap();
        e.publish("nobody", text("lost")).await.unwrap();
        match a.try_recv() {
            Some(Received::Event(room, Event::Message(m))) => {
                assert_eq!((&*room, &**m.room(), m.offset()), ("a", "a", 1));
            }
            other => panic!("{other:?}"),
        }
        assert!(a.try_recv().is_none());
        assert!(b.try_recv().is_none(), "another room's message leaked");
    }
}
