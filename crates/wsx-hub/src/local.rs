//! The in-process engine: each room's offset counter, history and presence in a map, delivered
//! straight into the registry.

use std::collections::{HashMap, VecDeque};
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
    presence: Vec<MemberInfo>,
    /// Last publish or read.
    touched: Instant,
}

impl LocalEngine {
    pub(crate) fn new(registry: Arc<Registry>, config: &HubConfig) -> Self {
        Self { registry, state: Mutex::default(), history_size: config.history_size, history_ttl: config.history_ttl }
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
            presence: Vec::new(),
            touched: now,
        });
        entry.touched = now;
        let ttl = self.history_ttl;
        while entry.history.front().is_some_and(|(at, _)| now.duration_since(*at) > ttl) {
            entry.history.pop_front();
        }
        (name, entry)
    }

    /// Forgets rooms without members here whose history has expired, and the oldest idle ones
    /// beyond [`MAX_IDLE_ROOMS`].
    fn sweep(&self, state: &mut State, now: Instant) {
        let ttl = self.history_ttl;
        state.rooms.retain(|name, r| {
            !(r.presence.is_empty() && self.registry.members(name) == 0 && now.duration_since(r.touched) > ttl)
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
                state.rooms.remove(name);
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
            if r.history.len() >= self.history_size {
                r.history.pop_front();
            }
            r.history.push_back((now, message.clone()));
        }
        let position = Position { offset: r.offset, epoch: r.epoch.clone() };
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
            r.presence.retain(|m| m.id != member.id);
            self.registry.deliver(room, Event::Leave(member));
        }
    }

    fn presence<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Vec<MemberInfo>, HubError>> {
        let members = lock(&self.state).rooms.get(room).map(|r| r.presence.clone()).unwrap_or_default();
        Box::pin(async move { Ok(members) })
    }
}
