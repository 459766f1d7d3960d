//! The event loops of `wsx serve`: one single-threaded tokio runtime per thread (`--threads`,
//! by default one per core the process may run on), each serving its share of the connections
//! from start to end.
//!
//! A connection never moves between threads, so its task, its socket's readiness and its
//! timers stay on one core, and no work-stealing scheduler stands between a socket becoming
//! ready and its task running: under load, a multi-thread runtime pinned to one core gave a
//! p99 more than ten times a current-thread runtime's on the same traffic (issue 14,
//! `docs/benchmarks.md`). The library itself stays runtime-agnostic; this is the program's
//! choice.
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
use tokio::sync::{watch, Notify};

/// The loops, and the count of the connections they serve.
pub(crate) struct Loops {
    /// The handles of the loops on threads of their own (the accepting thread is not here).
    others: Vec<tokio::runtime::Handle>,
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

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().task.poll(cx)
    }
}

impl Loops {
    /// `threads` loops in all: the caller's thread, and `threads - 1` new ones.
    pub(crate) fn start(threads: usize) -> std::io::Result<Self> {
        let (stop, stopped) = watch::channel(false);
        let mut others = Vec::new();
        for i in 1..threads.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            others.push(runtime.handle().clone());
            let mut stopped = stopped.clone();
            std::thread::Builder::new().name(format!("wsx-loop-{i}")).spawn(move || {
                // Runs the tasks spawned onto this loop until told to stop; dropping the
                // runtime then drops the connections left.
                runtime.block_on(async move {
                    let _ = stopped.wait_for(|&stop| stop).await;
                });
            })?;
        }
        Ok(Self { others, stop, next: 0, live: Arc::default() })
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
    /// Stops the other loops: their threads drop whatever connections they still hold.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
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
}
