//! One table of deadlines per thread, in place of a timer per connection.
//!
//! An open connection always waits for some deadline: its next keepalive ping, the pong it
//! waits for, its idle timeout, the end of its closing handshake. On tokio's timers each
//! connection keeps a `Sleep` of its own for that (112 bytes on the heap). A server that runs
//! one single-threaded event loop per core can [`drive`] a table on each loop's thread instead:
//! every connection polled on that thread keeps its read side's deadline as a 24-byte entry in
//! the table, and one timer per thread wakes the connections whose deadlines have passed.
//! Connections polled on a thread without a table use tokio's timers, as before.
//!
//! A deadline in the table never fires early. It may fire late, by at most the table's sweep
//! interval: the driver looks through the table at most once per interval, which grows with
//! the number of entries (1 µs per entry, from 1 ms to 100 ms), so that up to 100,000 entries
//! it looks at no more than about a million entries a second (beyond that, ten sweeps a
//! second).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // On each event loop's thread (a current-thread runtime), beside its work:
//! let table = wsx::deadlines::drive();
//! tokio::select! {
//!     () = table => {}
//!     () = async { /* accept and serve connections on this thread */ } => {}
//! }
//! # }
//! ```
//!
//! A connection keeps its entry for as long as it is polled on the thread whose table holds
//! it. One first polled on one thread and then moved to another, or whose table was replaced
//! or dropped, uses a tokio timer of its own from then on; when it is moved, its entry stays in
//! the first thread's table (24 bytes, not reused) until that table is dropped. Serve each
//! connection on one thread, as a thread-per-core server does anyway.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::marker::PhantomData;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::time::Sleep;
use wsx_proto::Stamp;

use crate::io::now;

/// The shortest and longest interval between two sweeps of a table.
const MIN_SWEEP: Duration = Duration::from_millis(1);
const MAX_SWEEP: Duration = Duration::from_millis(100);
/// A table is compacted at a sweep when fewer than a quarter of its entries are in use and it
/// has more than this many.
const COMPACT_FROM: usize = 1024;

thread_local! {
    static TABLE: RefCell<Option<Table>> = const { RefCell::new(None) };
}

/// One connection's deadline.
#[derive(Default)]
struct Entry {
    /// `None` when the entry is free.
    deadline: Option<Stamp>,
    /// The task to wake at the deadline: `None` once woken (the entry has fired) or free.
    waker: Option<Waker>,
}

/// The deadlines of the connections polled on one thread.
struct Table {
    id: NonZeroU32,
    entries: Vec<Entry>,
    /// Free entries, to be used before the table grows: the lowest first, so that new entries
    /// go to the start and the end of the table empties as its connections end (a sweep then
    /// gives it back; one long-lived entry near the end keeps the table that long).
    free: BinaryHeap<Reverse<u32>>,
    in_use: usize,
    /// The earliest deadline of an armed entry, or earlier: the driver's next sweep.
    next: Option<Stamp>,
    /// The driver, woken when an entry is armed before `next`.
    driver: Option<Waker>,
}

impl Table {
    /// An entry armed for `deadline` may be due before the driver's next sweep: returns the
    /// driver's waker if it must be woken (once the table is no longer borrowed) to sleep less.
    #[must_use]
    fn armed(&mut self, deadline: Stamp) -> Option<Waker> {
        if self.next.is_none_or(|next| deadline < next) {
            self.next = Some(deadline);
            return self.driver.clone();
        }
        None
    }

    /// Takes the wakers of the entries due at `now` into `due`; sets `next` to the earliest
    /// deadline left.
    fn sweep(&mut self, now: Stamp, due: &mut Vec<Waker>) {
        let mut next = None::<Stamp>;
        for entry in &mut self.entries {
            let (Some(deadline), Some(_)) = (entry.deadline, &entry.waker) else { continue };
            if deadline <= now {
                due.extend(entry.waker.take());
            } else if next.is_none_or(|n| deadline < n) {
                next = Some(deadline);
            }
        }
        self.next = next;
        if self.entries.len() > COMPACT_FROM && self.in_use < self.entries.len() / 4 {
            // Free entries past the last one in use go; the free list is made again.
            let keep = self.entries.iter().rposition(|e| e.deadline.is_some()).map_or(0, |last| last + 1);
            self.entries.truncate(keep);
            self.entries.shrink_to(keep.max(COMPACT_FROM));
            let free = (0..keep as u32).filter(|&i| self.entries[i as usize].deadline.is_none());
            self.free = free.map(Reverse).collect();
        }
    }
}

/// The table was borrowed: only possible if a waker's clone called back into this module
/// (wakers are woken and dropped only once the table is released).
struct Busy;

/// Runs `f` on this thread's table if it is the table `id` (any table for `None`): `Ok(None)`
/// when this thread has no such table (or is ending).
fn try_with_table<R>(id: Option<NonZeroU32>, f: impl FnOnce(&mut Table) -> R) -> Result<Option<R>, Busy> {
    TABLE
        .try_with(|table| {
            let Ok(mut table) = table.try_borrow_mut() else { return Err(Busy) };
            Ok(table.as_mut().filter(|t| id.is_none_or(|id| t.id == id)).map(f))
        })
        .unwrap_or(Ok(None))
}

/// [`try_with_table`], a busy table taken as none.
fn with_table<R>(id: Option<NonZeroU32>, f: impl FnOnce(&mut Table) -> R) -> Option<R> {
    let result = try_with_table(id, f);
    debug_assert!(result.is_ok(), "the deadline table was borrowed twice");
    result.unwrap_or(None)
}

/// The interval between sweeps for a table of `entries` entries: 1 µs per entry, within
/// [`MIN_SWEEP`] and [`MAX_SWEEP`].
fn sweep_interval(entries: usize) -> Duration {
    Duration::from_micros(entries as u64).clamp(MIN_SWEEP, MAX_SWEEP)
}

/// Puts a deadline table on this thread, and returns the future that wakes its connections on
/// time. Poll it on this thread, beside the thread's other work, for as long as connections are
/// served there: on a current-thread runtime, in the future given to `block_on` (it is not
/// `Send`, so it cannot be spawned onto another thread).
///
/// The future never completes while its table is this thread's. Dropping it takes the table
/// away, and wakes every connection that has an entry in it, so that each moves to a tokio timer
/// of its own. Calling `drive` again on the same thread replaces the table the same way; the
/// earlier future then completes.
pub fn drive() -> Driver {
    static IDS: AtomicU32 = AtomicU32::new(1);
    let id = NonZeroU32::new(IDS.fetch_add(1, Ordering::Relaxed)).unwrap_or(NonZeroU32::MIN);
    let table = Table { id, entries: Vec::new(), free: BinaryHeap::new(), in_use: 0, next: None, driver: None };
    let old = TABLE.with(|t| t.borrow_mut().replace(table));
    wake_all(old);
    Driver { id, sleep: None, swept: None, due: Vec::new(), _thread: PhantomData }
}

/// How many connections keep a deadline in this thread's table (0 when the thread has none).
pub fn entries() -> usize {
    with_table(None, |t| t.in_use).unwrap_or(0)
}

/// Wakes every connection with an entry in a table taken away, so that it takes a timer of
/// its own, and the table's driver, so that it ends.
fn wake_all(table: Option<Table>) {
    let Some(table) = table else { return };
    for entry in table.entries {
        if let Some(waker) = entry.waker {
            waker.wake();
        }
    }
    if let Some(driver) = table.driver {
        driver.wake();
    }
}

/// The future [`drive`] returns: wakes the connections whose deadlines have passed.
#[must_use = "a table's deadlines fire only while its driver is polled"]
pub struct Driver {
    id: NonZeroU32,
    /// The timer for the next sweep, made at the first.
    sleep: Option<Pin<Box<Sleep>>>,
    /// When the last sweep was.
    swept: Option<Instant>,
    /// The wakers taken at a sweep, woken once the table is no longer borrowed (a task woken
    /// may be dropped, and with it a connection that gives its entry back).
    due: Vec<Waker>,
    /// Not `Send`: the table is this thread's.
    _thread: PhantomData<*const ()>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("table", &self.id).finish_non_exhaustive()
    }
}

impl Future for Driver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            let now = now();
            let (due, swept) = (&mut this.due, &mut this.swept);
            let found = try_with_table(Some(this.id), |table| {
                let mut replaced = None;
                if !table.driver.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    replaced = table.driver.replace(cx.waker().clone());
                }
                let interval_over = swept.is_none_or(|at| now >= at + sweep_interval(table.entries.len()));
                if interval_over && table.next.is_some_and(|next| next.get() <= now) {
                    table.sweep(Stamp::new(now), due);
                    *swept = Some(now);
                }
                (table.next, table.entries.len(), replaced)
            });
            let (next, size) = match found {
                Ok(Some((next, size, replaced))) => {
                    drop(replaced);
                    (next, size)
                }
                // Replaced by another table, or the thread is ending.
                Ok(None) => return Poll::Ready(()),
                Err(Busy) => {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            };
            for waker in this.due.drain(..) {
                waker.wake();
            }
            if this.due.capacity() > COMPACT_FROM {
                // A sweep that found many due keeps no room for as many.
                this.due = Vec::new();
            }
            let Some(next) = next else {
                // Nothing armed: an entry armed later wakes this future.
                return Poll::Pending;
            };
            let mut at = next.get();
            if let Some(swept) = this.swept {
                at = at.max(swept + sweep_interval(size));
            }
            let at = tokio::time::Instant::from_std(at);
            let sleep = match &mut this.sleep {
                Some(sleep) => {
                    if sleep.deadline() != at {
                        sleep.as_mut().reset(at);
                    }
                    sleep
                }
                None => this.sleep.insert(Box::pin(tokio::time::sleep_until(at))),
            };
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let id = self.id;
        let table = TABLE
            .try_with(|t| {
                let mut t = t.try_borrow_mut().ok()?;
                if t.as_ref()?.id == id {
                    t.take()
                } else {
                    None
                }
            })
            .ok()
            .flatten();
        wake_all(table);
    }
}

/// A connection's entry in its thread's table.
#[derive(Debug)]
pub(crate) struct Slot {
    table: NonZeroU32,
    index: u32,
}

/// What [`Slot::arm`] found.
pub(crate) enum Armed {
    /// The deadline has passed.
    Expired,
    /// An entry, armed.
    Slot(Slot),
    /// This thread has no table.
    NoTable,
}

impl Slot {
    /// Takes an entry in this thread's table for `deadline`, to wake `cx`'s task.
    pub(crate) fn arm(cx: &mut Context<'_>, deadline: Instant) -> Armed {
        let armed = with_table(None, |table| {
            if deadline <= now() {
                return (Armed::Expired, None);
            }
            let stamp = Stamp::new(deadline);
            let entry = Entry { deadline: Some(stamp), waker: Some(cx.waker().clone()) };
            let index = match table.free.pop() {
                Some(Reverse(index)) => {
                    table.entries[index as usize] = entry;
                    index
                }
                None => {
                    let Ok(index) = u32::try_from(table.entries.len()) else { return (Armed::NoTable, None) };
                    table.entries.push(entry);
                    index
                }
            };
            table.in_use += 1;
            (Armed::Slot(Slot { table: table.id, index }), table.armed(stamp))
        });
        let Some((armed, driver)) = armed else { return Armed::NoTable };
        if let Some(driver) = driver {
            driver.wake();
        }
        armed
    }

    /// Whether `deadline` has passed; arms the entry for it, to wake `cx`'s task, if not. As
    /// with a tokio timer moved lazily, an entry armed for an earlier deadline stays armed for
    /// it, and is moved to the deadline of the moment when it fires. `None` when this thread's
    /// table is not the slot's (the slot is then of no use here).
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Option<bool> {
        let index = self.index as usize;
        let (expired, replaced, driver) = with_table(Some(self.table), |table| {
            let stamp = Stamp::new(deadline);
            let entry = &mut table.entries[index];
            match &mut entry.waker {
                Some(waker) => {
                    let mut replaced = None;
                    if !waker.will_wake(cx.waker()) {
                        replaced = Some(std::mem::replace(waker, cx.waker().clone()));
                    }
                    if entry.deadline.is_some_and(|armed| stamp >= armed) {
                        return (false, replaced, None);
                    }
                    if deadline <= now() {
                        return (true, replaced, None);
                    }
                    entry.deadline = Some(stamp);
                    (false, replaced, table.armed(stamp))
                }
                None => {
                    // Fired: for this deadline, or for an earlier one since moved.
                    if deadline <= now() {
                        return (true, None, None);
                    }
                    entry.deadline = Some(stamp);
                    entry.waker = Some(cx.waker().clone());
                    (false, None, table.armed(stamp))
                }
            }
        })?;
        drop(replaced);
        if let Some(driver) = driver {
            driver.wake();
        }
        Some(expired)
    }
}

impl Drop for Slot {
    /// Gives the entry back (when this thread's table is the slot's; see the module's docs).
    fn drop(&mut self) {
        let index = self.index;
        let waker = with_table(Some(self.table), |table| {
            let entry = std::mem::take(&mut table.entries[index as usize]);
            table.free.push(Reverse(index));
            table.in_use -= 1;
            entry.waker
        });
        drop(waker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    /// A waker that counts its wakes.
    struct Count(AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), Waker::from(count))
    }

    /// Polls the driver once.
    fn turn(driver: &mut Driver) {
        let waker = Waker::noop();
        assert!(Pin::new(driver).poll(&mut Context::from_waker(waker)).is_pending());
    }

    /// An entry fires once its deadline has passed, never before; its slot gives it back.
    #[tokio::test(start_paused = true)]
    async fn an_entry_fires_at_its_deadline_and_is_given_back() {
        let mut driver = drive();
        let (count, waker) = counter();
        let mut cx = Context::from_waker(&waker);
        let deadline = now() + Duration::from_secs(5);
        let Armed::Slot(mut slot) = Slot::arm(&mut cx, deadline) else { panic!("no entry taken") };
        assert_eq!(entries(), 1);
        turn(&mut driver);
        tokio::time::sleep(Duration::from_millis(4_990)).await;
        turn(&mut driver);
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "woken before the deadline");
        assert_eq!(slot.poll(&mut cx, deadline), Some(false));
        tokio::time::sleep(Duration::from_millis(10)).await;
        turn(&mut driver);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "not woken at the deadline");
        assert_eq!(slot.poll(&mut cx, deadline), Some(true));
        drop(slot);
        assert_eq!(entries(), 0);
        // The entry is used again before the table grows.
        let Armed::Slot(slot) = Slot::arm(&mut cx, now() + Duration::from_secs(1)) else { panic!() };
        assert_eq!(slot.index, 0);
        assert!(matches!(Slot::arm(&mut cx, now()), Armed::Expired));
    }

    /// A deadline moved later fires at the earlier one first, then at its own; one moved earlier
    /// fires at the earlier one.
    #[tokio::test(start_paused = true)]
    async fn a_moved_deadline_fires_when_it_is_due() {
        let mut driver = drive();
        let (count, waker) = counter();
        let mut cx = Context::from_waker(&waker);
        let start = now();
        let Armed::Slot(mut slot) = Slot::arm(&mut cx, start + Duration::from_secs(2)) else { panic!() };
        // Later: the entry stays armed for 2 s.
        assert_eq!(slot.poll(&mut cx, start + Duration::from_secs(4)), Some(false));
        turn(&mut driver);
        tokio::time::sleep(Duration::from_secs(2)).await;
        turn(&mut driver);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        // Fired early for 4 s: armed again for it.
        assert_eq!(slot.poll(&mut cx, start + Duration::from_secs(4)), Some(false));
        turn(&mut driver);
        tokio::time::sleep(Duration::from_millis(1_900)).await;
        turn(&mut driver);
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        // Earlier than armed: moved.
        assert_eq!(slot.poll(&mut cx, start + Duration::from_millis(3_950)), Some(false));
        tokio::time::sleep(Duration::from_millis(60)).await;
        turn(&mut driver);
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert_eq!(slot.poll(&mut cx, start + Duration::from_millis(3_950)), Some(true));
    }

    /// Without a table, or in another thread's, a slot is of no use; dropping the driver wakes
    /// every entry's task, and a second table replaces the first.
    #[tokio::test(start_paused = true)]
    async fn without_its_table_a_slot_is_of_no_use_and_its_task_is_woken() {
        let (count, waker) = counter();
        let mut cx = Context::from_waker(&waker);
        let deadline = now() + Duration::from_secs(60);
        assert!(matches!(Slot::arm(&mut cx, deadline), Armed::NoTable));
        let driver = drive();
        let Armed::Slot(mut slot) = Slot::arm(&mut cx, deadline) else { panic!() };
        let (table, index) = (slot.table, slot.index);
        std::thread::spawn(move || {
            let _table = drive();
            // The other thread's table does not know the slot; its drop there gives nothing back.
            let mut other = Slot { table, index };
            assert_eq!(other.poll(&mut Context::from_waker(Waker::noop()), deadline), None);
            drop(other);
        })
        .join()
        .unwrap();
        assert_eq!(entries(), 1);
        drop(driver);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the table's tasks were not woken when it went");
        assert_eq!(slot.poll(&mut cx, deadline), None);
        assert_eq!(entries(), 0);
        let mut first = drive();
        let (driver_count, driver_waker) = counter();
        assert!(Pin::new(&mut first).poll(&mut Context::from_waker(&driver_waker)).is_pending());
        let Armed::Slot(_slot) = Slot::arm(&mut cx, deadline) else { panic!() };
        let _second = drive();
        assert_eq!(count.0.load(Ordering::SeqCst), 2, "the replaced table's tasks were not woken");
        assert!(driver_count.0.load(Ordering::SeqCst) >= 1, "the replaced table's driver was not woken");
        let ready = Pin::new(&mut first).poll(&mut Context::from_waker(Waker::noop()));
        assert!(ready.is_ready(), "the replaced table's driver did not end");
    }

    /// Waits for `deadline` on a slot of this thread's table, as a connection does.
    struct WaitFor {
        deadline: Instant,
        slot: Option<Slot>,
    }

    impl Future for WaitFor {
        type Output = ();

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let deadline = self.deadline;
            let expired = match &mut self.slot {
                Some(slot) => slot.poll(cx, deadline).expect("the table went away"),
                None => match Slot::arm(cx, deadline) {
                    Armed::Expired => true,
                    Armed::Slot(slot) => {
                        self.slot = Some(slot);
                        false
                    }
                    Armed::NoTable => panic!("no table on this thread"),
                },
            };
            if expired {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    /// The driver in a task of its own, woken only by its own timer and by entries armed before
    /// its next sweep: a waiter in another task is woken at its deadline, also when it arms an
    /// entry earlier than the one the driver sleeps for.
    #[tokio::test(start_paused = true)]
    async fn a_driver_in_a_task_of_its_own_wakes_waiters_on_time() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                tokio::task::spawn_local(drive());
                let start = now();
                let late = tokio::task::spawn_local(async move {
                    WaitFor { deadline: start + Duration::from_secs(10), slot: None }.await;
                    now() - start
                });
                // The driver now sleeps until 10 s; an entry for 1 s must wake it to sleep less.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let early = WaitFor { deadline: start + Duration::from_secs(1), slot: None };
                tokio::time::timeout(Duration::from_secs(60), early).await.expect("the early waiter was never woken");
                let woke = now() - start;
                assert!(woke >= Duration::from_secs(1), "woken early, after {woke:?}");
                assert!(woke <= Duration::from_millis(1_010), "woken late, after {woke:?}");
                let late = tokio::time::timeout(Duration::from_secs(60), late).await.expect("never woken").unwrap();
                assert!(late >= Duration::from_secs(10) && late <= Duration::from_millis(10_010), "{late:?}");
            })
            .await;
    }

    /// Free entries are used again lowest first.
    #[tokio::test(start_paused = true)]
    async fn the_lowest_free_entry_is_used_first() {
        let _driver = drive();
        let mut cx = Context::from_waker(Waker::noop());
        let deadline = now() + Duration::from_secs(60);
        let mut arm = || match Slot::arm(&mut cx, deadline) {
            Armed::Slot(slot) => slot,
            _ => panic!("no entry"),
        };
        let mut slots: Vec<Option<Slot>> = (0..3).map(|_| Some(arm())).collect();
        slots[2] = None;
        slots[0] = None;
        let first = arm();
        let second = arm();
        assert_eq!((first.index, second.index), (0, 2));
    }

    /// Many entries due at once are swept together, and a table mostly given back shrinks.
    #[tokio::test(start_paused = true)]
    async fn a_sweep_wakes_every_entry_due_and_compacts_the_table() {
        let mut driver = drive();
        let (count, waker) = counter();
        let mut cx = Context::from_waker(&waker);
        let start = now();
        let mut slots: Vec<Slot> = (0..5_000u64)
            .map(|i| match Slot::arm(&mut cx, start + Duration::from_millis(1_000 + i % 7)) {
                Armed::Slot(slot) => slot,
                _ => panic!("no entry"),
            })
            .collect();
        turn(&mut driver);
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        turn(&mut driver);
        assert_eq!(count.0.load(Ordering::SeqCst), 5_000);
        slots.truncate(10);
        assert_eq!(entries(), 10);
        for slot in &mut slots {
            assert_eq!(slot.poll(&mut cx, start + Duration::from_secs(2)), Some(false));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        turn(&mut driver);
        assert_eq!(count.0.load(Ordering::SeqCst), 5_010);
        let size = with_table(None, |t| t.entries.capacity()).unwrap();
        assert!(size <= COMPACT_FROM, "the table kept room for {size} entries");
    }
}
