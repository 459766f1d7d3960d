//! The event loops of `wsx serve`: one single-threaded tokio runtime per thread (`--threads`,
//! by default one per core the process may run on), each serving its share of the connections
//! from start to end.
//!
//! A connection never moves between threads, so its task, its socket's readiness and its
//! timers stay on one core, and no work-stealing scheduler stands between a socket becoming
//! ready and its task running: at 500 connections × 16 KiB on one core, the p99 fell from
//! 68 ms on tokio's multi-thread runtime to 12.7 ms on these loops
//! (`docs/performance-notes.md`). The library itself stays runtime-agnostic; this is the
//! program's choice.
//!
//! The thread that accepts (the caller's, itself a single-threaded runtime: see `main.rs`) is
//! the first loop; each other loop is a thread of its own. Accepted sockets are dealt round
//! robin: the first loop's stay where they were accepted, the others' are handed over as
//! standard sockets and registered with their loop's reactor there.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::net::TcpStream;

/// How long a stopping loop waits for its blocking tasks (a file being read for `--static`).
const STOP_GRACE: std::time::Duration = std::time::Duration::from_millis(500);
use tokio::sync::{watch, Notify};

/// The loops, and the count of the connections they serve.
pub(crate) struct Loops {
    /// The handles of the loops on threads of their own (the accepting thread is not here).
    others: Vec<tokio::runtime::Handle>,
    /// Their threads, joined when the loops stop.
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Set to stop the other loops' threads.
    stop: watch::Sender<bool>,
    /// Where the next connection goes: 0 is the accepting thread, `i` is `others[i - 1]`.
    next: usize,
    live: Arc<Live>,
}

/// The connections being served: counted, so that shutdown can wait for them to end.
#[derive(Default)]
struct Live {
    count: AtomicUsize,
    /// Notified when the count drops to zero.
    none: Notify,
}

/// A connection's place in [`Live`], given back when its task ends (or is dropped).
struct Place(Arc<Live>);

impl Drop for Place {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none.notify_waiters();
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection's task: its future, polled in place, and its place in the count. (An
    /// `async` block awaiting the future would hold it twice: as the block's capture and as
    /// the awaited value; an idle connection's memory is mostly its task.)
    struct Counted<F> {
        #[pin]
        task: F,
        // Dropped after the task: the count falls once the connection's state is gone.
        place: Place,
    }
}

impl<F: Future<Output = ()>> Future for Counted<F> {
    type Output = ();

    /// A connection that panics ends there, with a warning in the log (tokio would end the
    /// task all the same, but only the panic hook's line on stderr would tell).
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let task = self.project().task;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(not a string)");
                tracing::warn!(panic = what, "connection task failed");
                Poll::Ready(())
            }
        }
    }
}

impl Loops {
    /// `threads` loops in all: the caller's thread, and `threads - 1` new ones.
    pub(crate) fn start(threads: usize) -> std::io::Result<Self> {
        let (stop, stopped) = watch::channel(false);
        let (mut others, mut joins) = (Vec::new(), Vec::new());
        for i in 1..threads.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            others.push(runtime.handle().clone());
            let mut stopped = stopped.clone();
            joins.push(std::thread::Builder::new().name(format!("wsx-loop-{i}")).spawn(move || {
                // Runs the tasks spawned onto this loop until told to stop, then drops the
                // connections left (their drop-time cleanup runs: an --exec program's process
                // group is killed), waiting at most this long for blocking tasks.
                runtime.block_on(async move {
                    tokio::select! {
                        _ = stopped.wait_for(|&stop| stop) => {}
                        () = wsx::deadlines::drive() => {}
                    }
                });
                runtime.shutdown_timeout(STOP_GRACE);
            })?);
        }
        Ok(Self { others, threads: joins, stop, next: 0, live: Arc::default() })
    }

    /// How many loops there are.
    pub(crate) fn len(&self) -> usize {
        self.others.len() + 1
    }

    /// How many connections are being served.
    pub(crate) fn live(&self) -> usize {
        self.live.count.load(Ordering::Acquire)
    }

    /// Serves `tcp` with `serve` on the next loop. A socket that cannot be handed over (to
    /// another loop's reactor) is dropped with a warning: the client sees its connection closed.
    pub(crate) fn spawn<F, Fut>(&mut self, tcp: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let slot = self.next;
        self.next = (self.next + 1) % self.len();
        let task = if slot == 0 {
            serve(tcp)
        } else {
            let handle = &self.others[slot - 1];
            // Taken off this thread's reactor and registered with the loop's: its readiness
            // then wakes that loop's thread.
            let std = match tcp.into_std() {
                Ok(std) => std,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot hand a connection to its event loop");
                    return;
                }
            };
            let _in_loop = handle.enter();
            match TcpStream::from_std(std) {
                Ok(tcp) => serve(tcp),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot register a connection with its event loop");
                    return;
                }
            }
        };
        self.live.count.fetch_add(1, Ordering::AcqRel);
        let task = Counted { task, place: Place(self.live.clone()) };
        match slot {
            0 => drop(tokio::spawn(task)),
            _ => drop(self.others[slot - 1].spawn(task)),
        }
    }

    /// Waits until no connection is left.
    pub(crate) async fn drained(&self) {
        loop {
            let none = self.live.none.notified();
            tokio::pin!(none);
            none.as_mut().enable();
            if self.live() == 0 {
                return;
            }
            none.await;
        }
    }
}

impl Drop for Loops {
    /// Stops the other loops and waits for their threads, which drop whatever connections they
    /// still hold (each within [`STOP_GRACE`] of blocking work), so that the process does not
    /// exit before those connections' cleanup has run.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Every loop serves connections, each on its own thread, and `drained` waits for the last.
    #[tokio::test]
    async fn connections_are_dealt_to_every_loop_and_counted() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut loops = Loops::start(3).unwrap();
        assert_eq!(loops.len(), 3);
        let (names, mut names_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut clients = Vec::new();
        for _ in 0..6 {
            clients.push(TcpStream::connect(addr).await.unwrap());
            let (tcp, _) = listener.accept().await.unwrap();
            let names = names.clone();
            loops.spawn(tcp, move |mut tcp| async move {
                let name = std::thread::current().name().unwrap_or_default().to_owned();
                let _ = names.send(name);
                // Echo one byte, then end: the socket must work on the loop it was given to.
                let mut byte = [0u8; 1];
                if tcp.read_exact(&mut byte).await.is_ok() {
                    let _ = tcp.write_all(&byte).await;
                }
            });
        }
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(tokio::time::timeout(Duration::from_secs(5), names_rx.recv()).await.unwrap().unwrap());
        }
        for name in ["wsx-loop-1", "wsx-loop-2"] {
            assert_eq!(seen.iter().filter(|n| *n == name).count(), 2, "{seen:?}");
        }
        assert_eq!(seen.iter().filter(|n| !n.starts_with("wsx-loop-")).count(), 2, "{seen:?}");
        assert_eq!(loops.live(), 6);
        // Still serving: drained must wait.
        assert!(tokio::time::timeout(Duration::from_millis(100), loops.drained()).await.is_err());
        for (i, client) in clients.iter_mut().enumerate() {
            client.write_all(&[i as u8]).await.unwrap();
            let mut back = [0u8; 1];
            tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut back)).await.unwrap().unwrap();
            assert_eq!(back[0], i as u8);
        }
        tokio::time::timeout(Duration::from_secs(5), loops.drained()).await.unwrap();
        assert_eq!(loops.live(), 0);
    }

    /// Each loop's thread drives a deadline table of its own (the accepting thread's is driven
    /// by `serve::run`, as here by the test): a connection's keepalive deadline is an entry in
    /// the table of the loop that serves it, given back when the connection ends.
    #[tokio::test]
    async fn every_loop_keeps_its_connections_deadlines_in_its_own_table() {
        let mut table = std::pin::pin!(wsx::deadlines::drive());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut loops = Loops::start(2).unwrap();
        let (seen, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut clients = Vec::new();
        for _ in 0..2 {
            clients.push(TcpStream::connect(addr).await.unwrap());
            let (tcp, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            loops.spawn(tcp, move |tcp| async move {
                let mut config = wsx::proto::Config::default();
                config.keepalive_interval = Some(Duration::from_secs(60));
                let conn = wsx::proto::Connection::server(config, std::time::Instant::now());
                let mut ws = wsx::WebSocket::from_parts(tcp, conn, bytes::BytesMut::new(), None, None);
                // Nothing arrives: the read waits, its keepalive deadline armed.
                let waited = tokio::time::timeout(Duration::from_millis(50), ws.recv()).await;
                let during = wsx::deadlines::entries();
                drop(ws);
                let name = std::thread::current().name().unwrap_or_default().to_owned();
                let _ = seen.send((name, waited.is_err(), during, wsx::deadlines::entries()));
            });
        }
        let reports = async {
            let mut reports = Vec::new();
            for _ in 0..2 {
                reports.push(seen_rx.recv().await.unwrap());
            }
            reports
        };
        let reports = tokio::select! {
            () = &mut table => panic!("the test thread's table was replaced"),
            reports = tokio::time::timeout(Duration::from_secs(5), reports) => reports.unwrap(),
        };
        assert_eq!(reports.iter().filter(|r| r.0 == "wsx-loop-1").count(), 1, "{reports:?}");
        for (name, waited, during, after) in reports {
            assert!(waited, "{name}: the read did not wait");
            assert_eq!(during, 1, "{name}: the connection's deadline was not in its loop's table");
            assert_eq!(after, 0, "{name}: the entry was not given back");
        }
    }

    /// A connection that panics still gives back its place; dropping the loops drops the
    /// connections they still hold before the drop returns (their cleanup runs before the
    /// process may exit).
    #[tokio::test]
    async fn panics_are_counted_out_and_stopping_drops_what_is_left() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut loops = Loops::start(2).unwrap();
        let mut clients = Vec::new();
        for _ in 0..2 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        // The first goes to this thread's loop and panics.
        let (tcp, _) = listener.accept().await.unwrap();
        loops.spawn(tcp, |_tcp| async { panic!("a connection task panics") });
        // The second goes to loop 1 and waits for ever, holding `held`.
        let (held, mut dropped) = tokio::sync::oneshot::channel::<()>();
        let (tcp, _) = listener.accept().await.unwrap();
        loops.spawn(tcp, move |_tcp| async move {
            let _held = held;
            std::future::pending::<()>().await
        });
        tokio::task::yield_now().await;
        tokio::time::timeout(Duration::from_secs(5), async {
            while loops.live() > 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the panicked connection was not counted out");
        assert!(matches!(dropped.try_recv(), Err(tokio::sync::oneshot::error::TryRecvError::Empty)));
        drop(loops);
        assert!(
            matches!(dropped.try_recv(), Err(tokio::sync::oneshot::error::TryRecvError::Closed)),
            "the connection left on loop 1 was still alive after the loops were dropped"
        );
    }
}
