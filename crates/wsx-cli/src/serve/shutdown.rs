//! The server's shutdown signal, as its connections wait for it.
//!
//! Every connection waits for it for its whole life, idle ones included, so what a connection
//! holds for it is part of the idle connection's memory: here a pointer and a key, 16 bytes.
//! Its waker sits in one table (a slab, about 24 bytes an entry) instead: a `watch` receiver's
//! `changed()` future, which the connection's task held before, is 120 bytes of waiter kept in
//! the task, enough to make it a 128-byte line longer.
//!
//! A connection registers its task's waker the first time it waits, and updates it when its
//! task's waker changes; shutdown wakes them all at once. Both happen under one lock, which a
//! connection takes when it starts waiting (after a batch of messages in `echo`: the same
//! lock per batch the `watch` receiver took), and when it ends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use slab::Slab;

/// No key in the table: not waiting yet.
const UNREGISTERED: usize = usize::MAX;

/// The signal: raised once, by [`Trigger::shut_down`].
#[derive(Default)]
struct Signal {
    /// Read without the lock by every wait; written under it.
    down: AtomicBool,
    waiters: Mutex<Waiters>,
}

#[derive(Default)]
struct Waiters {
    /// Set under the lock, with the table emptied at the same time: a key is only valid while
    /// this is false.
    down: bool,
    wakers: Slab<Waker>,
}

impl Signal {
    fn lock(&self) -> MutexGuard<'_, Waiters> {
        // Nothing in this module panics under the lock; a poisoned lock still holds valid state.
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Raises the signal (held by the accept loop).
pub(crate) struct Trigger(Arc<Signal>);

impl Trigger {
    /// A new signal, not raised, and its first waiting end.
    pub(crate) fn new() -> (Self, Shutdown) {
        let signal = Arc::new(Signal::default());
        (Self(signal.clone()), Shutdown { signal, key: UNREGISTERED })
    }

    /// Raises the signal: every connection waiting for it is woken, and every later wait ends
    /// at once.
    pub(crate) fn shut_down(&self) {
        let wakers = {
            let mut waiters = self.0.lock();
            waiters.down = true;
            self.0.down.store(true, Ordering::Release);
            std::mem::take(&mut waiters.wakers)
        };
        for (_, waker) in wakers {
            waker.wake();
        }
    }

    /// How many connections are waiting (registered) now.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.0.lock().wakers.len()
    }
}

/// Dropping the trigger raises the signal too (as dropping a `watch` sender ended its
/// receivers' waits): connections never wait for a signal nobody can raise.
impl Drop for Trigger {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// One connection's wait for the signal. Cloning gives a new wait, not yet registered.
pub(crate) struct Shutdown {
    signal: Arc<Signal>,
    /// Its waker's key in the table, or [`UNREGISTERED`].
    key: usize,
}

impl Clone for Shutdown {
    fn clone(&self) -> Self {
        Self { signal: self.signal.clone(), key: UNREGISTERED }
    }
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown").field("down", &self.is_down()).finish_non_exhaustive()
    }
}

impl Shutdown {
    /// Whether the signal was raised.
    pub(crate) fn is_down(&self) -> bool {
        self.signal.down.load(Ordering::Acquire)
    }

    /// Ready once the signal is raised; until then the task polling it is woken when it is.
    pub(crate) fn poll_down(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_down() {
            return Poll::Ready(());
        }
        let mut waiters = self.signal.lock();
        if waiters.down {
            return Poll::Ready(());
        }
        let _old = match waiters.wakers.get_mut(self.key) {
            Some(waker) if waker.will_wake(cx.waker()) => None,
            // The old waker is dropped once the lock is released.
            Some(waker) => Some(std::mem::replace(waker, cx.waker().clone())),
            None => {
                self.key = waiters.wakers.insert(cx.waker().clone());
                None
            }
        };
        drop(waiters);
        Poll::Pending
    }

    /// Waits for the signal.
    pub(crate) async fn down(&mut self) {
        std::future::poll_fn(|cx| self.poll_down(cx)).await;
    }
}

/// The wait as a future of its own, for sessions that take any shutdown future (the hub's, the
/// forward bridge): 16 bytes and `Unpin`, where an `async` block over [`Shutdown::down`] took
/// more, and was stored twice by a session that pins it (an `async fn` keeps its arguments'
/// places beside its locals): a room member's session future grew past jemalloc's 1,024-byte
/// size class with it.
impl std::future::Future for Shutdown {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().poll_down(cx)
    }
}

impl Drop for Shutdown {
    fn drop(&mut self) {
        if self.key == UNREGISTERED {
            return;
        }
        let mut waiters = self.signal.lock();
        // Once the signal is raised the table was emptied, and its keys mean nothing.
        let removed = if waiters.down { None } else { waiters.wakers.try_remove(self.key) };
        drop(waiters);
        drop(removed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The point of the type: a connection's share stays a pointer and a key.
    #[test]
    fn a_wait_is_two_words() {
        assert_eq!(std::mem::size_of::<Shutdown>(), 2 * std::mem::size_of::<usize>());
    }

    #[tokio::test]
    async fn every_waiting_connection_is_woken_and_later_waits_end_at_once() {
        let (trigger, first) = Trigger::new();
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let mut wait = first.clone();
                tokio::spawn(async move { wait.down().await })
            })
            .collect();
        // Let every task register.
        for _ in 0..100 {
            if trigger.waiting() == 50 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(trigger.waiting(), 50);
        assert!(!first.is_down());
        trigger.shut_down();
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(5), task).await.expect("a wait was not woken").unwrap();
        }
        assert!(first.is_down());
        let mut late = first.clone();
        tokio::time::timeout(Duration::from_secs(1), late.down()).await.expect("a later wait did not end");
        assert_eq!(trigger.waiting(), 0);
    }

    /// Dropping the trigger (the accept loop ended without a signal) ends every wait.
    #[tokio::test]
    async fn dropping_the_trigger_ends_the_waits() {
        let (trigger, mut wait) = Trigger::new();
        assert!(wait.poll_down(&mut Context::from_waker(std::task::Waker::noop())).is_pending());
        drop(trigger);
        assert!(wait.is_down());
        tokio::time::timeout(Duration::from_secs(1), wait.down()).await.expect("the wait did not end");
    }

    /// A connection that ends gives its entry back, so the table holds only the living.
    #[tokio::test]
    async fn a_wait_that_ends_leaves_the_table() {
        let (trigger, first) = Trigger::new();
        let mut waits: Vec<Shutdown> = (0..10).map(|_| first.clone()).collect();
        for wait in &mut waits {
            let waker = std::task::Waker::noop();
            assert!(wait.poll_down(&mut Context::from_waker(waker)).is_pending());
            // Polled again with the same waker: no second entry.
            assert!(wait.poll_down(&mut Context::from_waker(waker)).is_pending());
        }
        assert_eq!(trigger.waiting(), 10);
        waits.truncate(3);
        assert_eq!(trigger.waiting(), 3);
        trigger.shut_down();
        // Dropped after the table was emptied: nothing to remove, nothing removed by mistake.
        drop(waits);
        assert_eq!(trigger.waiting(), 0);
    }

    /// A task's waker that changes (the wait moved to another task) is the one woken.
    #[tokio::test]
    async fn the_latest_waker_is_woken() {
        let (trigger, mut wait) = Trigger::new();
        assert!(wait.poll_down(&mut Context::from_waker(std::task::Waker::noop())).is_pending());
        let task = tokio::spawn(async move { wait.down().await });
        // Its task polls it (and registers its own waker), and stays waiting.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!task.is_finished());
        trigger.shut_down();
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("the new task was not woken").unwrap();
    }
}
