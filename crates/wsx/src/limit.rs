//! A bound on how many connections a server holds at once.
//!
//! A server takes a [`ConnectionPermit`] from its [`ConnectionLimit`] before it accepts a
//! WebSocket, and holds it for the connection's life; when none is left it refuses the
//! handshake with [`ConnectionLimit::rejection`]: `503 Service Unavailable` with `Retry-After`,
//! which browsers and well-behaved clients read as "come back later". Connections already open
//! are never touched.
//!
//! ```
//! use std::time::Duration;
//! use wsx::limit::ConnectionLimit;
//!
//! let limit = ConnectionLimit::new(2);
//! let a = limit.try_acquire().expect("room for one");
//! let _b = limit.try_acquire().expect("room for two");
//! assert!(limit.try_acquire().is_none());
//! let refusal = limit.rejection(Duration::from_secs(5));
//! assert_eq!(refusal.status, http::StatusCode::SERVICE_UNAVAILABLE);
//! drop(a); // a connection ends: there is room again
//! assert!(limit.try_acquire().is_some());
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::RETRY_AFTER;
use http::{HeaderValue, StatusCode};
use wsx_proto::handshake::Rejection;

/// At most `max` connections at once. Cheap to clone: clones share the count.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max: usize,
    open: AtomicUsize,
}

/// One connection's place under a [`ConnectionLimit`]; dropping it frees the place.
#[derive(Debug)]
pub struct ConnectionPermit {
    inner: Arc<Inner>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.inner.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionLimit {
    /// A limit of `max` connections at once.
    pub fn new(max: usize) -> Self {
        Self { inner: Arc::new(Inner { max, open: AtomicUsize::new(0) }) }
    }

    /// A place for one more connection, or `None` when `max` are open.
    pub fn try_acquire(&self) -> Option<ConnectionPermit> {
        let inner = &self.inner;
        inner
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| (open < inner.max).then_some(open + 1))
            .ok()
            .map(|_| ConnectionPermit { inner: inner.clone() })
    }

    /// Connections open now (permits not yet dropped).
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.inner.max
    }

    /// The refusal for a handshake over the limit: `503 Service Unavailable`, `Retry-After` in
    /// whole seconds (at least 1), and a body that says why.
    pub fn rejection(&self, retry_after: Duration) -> Rejection {
        let seconds = retry_after.as_secs().max(1);
        let body =
            format!("server full: {} connections open, the most it takes; try again in {seconds} s\n", self.max());
        let mut rejection = Rejection::new(StatusCode::SERVICE_UNAVAILABLE, body);
        rejection.headers.push((RETRY_AFTER, HeaderValue::from(seconds)));
        rejection
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_counted_across_clones_and_threads() {
        let limit = ConnectionLimit::new(100);
        let permits: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let limit = limit.clone();
                    s.spawn(move || (0..50).filter_map(|_| limit.try_acquire()).collect::<Vec<_>>())
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        // 400 tries, 100 places: exactly 100 granted.
        assert_eq!((permits.len(), limit.open()), (100, 100));
        drop(permits);
        assert_eq!(limit.open(), 0);
    }

    #[test]
    fn the_rejection_says_when_to_come_back() {
        let r = ConnectionLimit::new(3).rejection(Duration::from_millis(10));
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers, vec![(RETRY_AFTER, HeaderValue::from(1u64))]);
        assert!(r.body.contains("3 connections"), "{}", r.body);
    }
}
