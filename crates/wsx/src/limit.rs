//! Bounds on what clients may take from a server: how many connections it holds at once
//! ([`ConnectionLimit`]), and how many one client address may hold and how fast it may open
//! them ([`PerIpLimit`]).
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

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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

/// Per-client-address limits (see [`PerIpLimit`]); each is off when `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerIpConfig {
    /// The most connections one client address may hold at once.
    pub max_connections: Option<usize>,
    /// How many handshakes one client address may start per second, on average: a token
    /// bucket that holds `handshake_burst` tokens and refills at this rate.
    pub handshake_rate: Option<u32>,
    /// How many handshakes one client address may start at once before the rate applies.
    /// Ignored without `handshake_rate`; 0 means the same as the rate.
    pub handshake_burst: u32,
}

/// Limits per client address: concurrent connections and handshake rate. Off by default in
/// servers; cheap to clone (clones share the counts).
///
/// Addresses are grouped as an attacker gets them: an IPv4 address on its own (an IPv4-mapped
/// IPv6 address counts as its IPv4 address), an IPv6 address by its /64 prefix, which one host
/// usually has whole. Behind a reverse proxy every client has the proxy's address: limit there.
///
/// Memory is bounded by what clients hold: an address is tracked while it has connections open
/// or a handshake bucket that has not refilled; the others are swept whenever the table has
/// doubled since the last sweep.
///
/// ```
/// use std::net::IpAddr;
/// use std::time::Instant;
/// use wsx::limit::{PerIpConfig, PerIpLimit};
///
/// let limit = PerIpLimit::new(PerIpConfig { max_connections: Some(1), ..Default::default() });
/// let ip: IpAddr = "203.0.113.7".parse().unwrap();
/// let permit = limit.check(ip, Instant::now()).expect("the first connection");
/// let refusal = limit.check(ip, Instant::now()).unwrap_err();
/// assert_eq!(refusal.rejection().status, http::StatusCode::TOO_MANY_REQUESTS);
/// drop(permit);
/// assert!(limit.check(ip, Instant::now()).is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct PerIpLimit {
    inner: Arc<PerIpInner>,
}

#[derive(Debug)]
struct PerIpInner {
    config: PerIpConfig,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    clients: HashMap<ClientKey, Client>,
    /// The table's size after the last sweep: the next sweep comes when it has doubled.
    swept_at: usize,
}

#[derive(Debug)]
struct Client {
    open: usize,
    /// Handshake tokens left, as of `refilled`.
    tokens: f64,
    refilled: Instant,
}

/// Why a client address was refused: see [`PerIpLimit::check`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PerIpRefusal {
    /// The address already holds the most connections it may.
    #[error("{open} connections open from this address, the most it may hold")]
    TooManyConnections {
        /// Connections the address holds.
        open: usize,
    },
    /// The address started handshakes faster than its rate.
    #[error("too many handshakes from this address: at most {rate} per second")]
    TooFast {
        /// The rate it may start them at, per second.
        rate: u32,
        /// When it may try again.
        retry_after: Duration,
    },
}

impl PerIpRefusal {
    /// The HTTP answer: `429 Too Many Requests`, `Retry-After` in whole seconds (at least 1),
    /// and a body that says why.
    pub fn rejection(&self) -> Rejection {
        let seconds = match self {
            Self::TooManyConnections { .. } => 1,
            Self::TooFast { retry_after, .. } => retry_after.as_secs_f64().ceil().max(1.0) as u64,
        };
        let body = format!("{self}; try again in {seconds} s\n");
        let mut rejection = Rejection::new(StatusCode::TOO_MANY_REQUESTS, body);
        rejection.headers.push((RETRY_AFTER, HeaderValue::from(seconds)));
        rejection
    }
}

/// One connection's place under a [`PerIpLimit`]; dropping it frees the place.
#[derive(Debug)]
pub struct PerIpPermit {
    inner: Arc<PerIpInner>,
    /// `None` when connections are not counted.
    key: Option<ClientKey>,
}

/// The key an address is counted under: an IPv4 address alone (an IPv4-mapped IPv6 one as
/// IPv4), an IPv6 address by its /64. The table's key and the permit's: 10 bytes where an
/// `IpAddr` takes 17 (the permit is then 24 bytes, not 32, in every connection's state).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKey {
    V4([u8; 4]),
    /// The /64's four leading segments.
    V6([u16; 4]),
}

impl ClientKey {
    /// The key `ip` is counted under.
    fn new(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4.octets()),
                None => {
                    let s = v6.segments();
                    Self::V6([s[0], s[1], s[2], s[3]])
                }
            },
        }
    }

    /// The address the key stands for (a /64 as its first address), for `Debug`.
    fn ip(self) -> IpAddr {
        match self {
            Self::V4(octets) => IpAddr::from(octets),
            Self::V6([a, b, c, d]) => IpAddr::V6(std::net::Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0)),
        }
    }
}

/// As the address it stands for (a permit's `Debug` shows `key: Some(2001:db8:1:2::)`).
impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.ip().fmt(f)
    }
}

impl Drop for PerIpPermit {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut table = self.inner.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = table.clients.get_mut(&key) {
            client.open = client.open.saturating_sub(1);
        }
    }
}

impl PerIpLimit {
    /// Limits as `config` says (each `None` is off).
    pub fn new(config: PerIpConfig) -> Self {
        Self { inner: Arc::new(PerIpInner { config, table: Mutex::new(Table::default()) }) }
    }

    /// The configuration.
    pub fn config(&self) -> PerIpConfig {
        self.inner.config
    }

    fn burst(&self) -> f64 {
        let c = &self.inner.config;
        f64::from(if c.handshake_burst == 0 { c.handshake_rate.unwrap_or(1) } else { c.handshake_burst }.max(1))
    }

    /// A handshake from `ip` at `now`: takes one of its handshake tokens and a place for its
    /// connection (hold the permit for the connection's life), or says why not. A refused
    /// handshake takes nothing.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<PerIpPermit, PerIpRefusal> {
        let config = self.inner.config;
        if config.max_connections.is_none() && config.handshake_rate.is_none() {
            return Ok(PerIpPermit { inner: self.inner.clone(), key: None });
        }
        let key = ClientKey::new(ip);
        let burst = self.burst();
        let mut table = self.inner.table.lock().unwrap_or_else(PoisonError::into_inner);
        if table.clients.len() >= 1024 && table.clients.len() >= 2 * table.swept_at {
            self.sweep(&mut table, now);
        }
        let client = table.clients.entry(key).or_insert(Client { open: 0, tokens: burst, refilled: now });
        if let Some(max) = config.max_connections {
            if client.open >= max {
                return Err(PerIpRefusal::TooManyConnections { open: client.open });
            }
        }
        if let Some(rate) = config.handshake_rate {
            let rate_f = f64::from(rate.max(1));
            let elapsed = now.saturating_duration_since(client.refilled).as_secs_f64();
            client.tokens = (client.tokens + elapsed * rate_f).min(burst);
            client.refilled = now;
            if client.tokens < 1.0 {
                let retry_after = Duration::from_secs_f64((1.0 - client.tokens) / rate_f);
                return Err(PerIpRefusal::TooFast { rate, retry_after });
            }
            client.tokens -= 1.0;
        }
        let counted = config.max_connections.is_some();
        if counted {
            client.open += 1;
        }
        Ok(PerIpPermit { inner: self.inner.clone(), key: counted.then_some(key) })
    }

    /// Forgets the addresses that hold nothing: no connection open, and a bucket that has
    /// refilled (or no rate at all).
    fn sweep(&self, table: &mut Table, now: Instant) {
        let burst = self.burst();
        let rate = self.inner.config.handshake_rate.map(|r| f64::from(r.max(1)));
        table.clients.retain(|_, c| {
            let refilled = match rate {
                None => true,
                Some(rate) => c.tokens + now.saturating_duration_since(c.refilled).as_secs_f64() * rate >= burst,
            };
            c.open > 0 || !refilled
        });
        table.swept_at = table.clients.len().max(1024);
    }

    /// Client addresses tracked now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.inner.table.lock().unwrap_or_else(PoisonError::into_inner).clients.len()
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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connections_per_address_are_bounded_and_freed() {
        let limit = PerIpLimit::new(PerIpConfig { max_connections: Some(2), ..Default::default() });
        let now = Instant::now();
        let a = limit.check(ip("192.0.2.1"), now).unwrap();
        let _b = limit.check(ip("192.0.2.1"), now).unwrap();
        let refusal = limit.check(ip("192.0.2.1"), now).unwrap_err();
        assert_eq!(refusal, PerIpRefusal::TooManyConnections { open: 2 });
        let r = refusal.rejection();
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers, vec![(RETRY_AFTER, HeaderValue::from(1u64))]);
        assert!(r.body.contains("2 connections open"), "{}", r.body);
        // Another address is not affected; the same one as IPv4-mapped IPv6 is the same client.
        let _c = limit.check(ip("192.0.2.2"), now).unwrap();
        assert!(limit.check(ip("::ffff:192.0.2.1"), now).is_err());
        drop(a);
        assert!(limit.check(ip("::ffff:192.0.2.1"), now).is_ok());
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_prefix() {
        let limit = PerIpLimit::new(PerIpConfig { max_connections: Some(1), ..Default::default() });
        let now = Instant::now();
        let _a = limit.check(ip("2001:db8:1:2::1"), now).unwrap();
        assert!(limit.check(ip("2001:db8:1:2:ffff::9"), now).is_err(), "same /64");
        assert!(limit.check(ip("2001:db8:1:3::1"), now).is_ok(), "another /64");
    }

    /// The permit keeps its address's key in a compact form: dropping it must find the same
    /// entry again, for every kind of address.
    #[test]
    fn a_dropped_permit_gives_its_place_back_for_every_kind_of_address() {
        let limit = PerIpLimit::new(PerIpConfig { max_connections: Some(1), ..Default::default() });
        let now = Instant::now();
        for addr in ["192.0.2.7", "2001:db8:1:2::1", "::ffff:192.0.2.8", "::1"] {
            let held = limit.check(ip(addr), now).unwrap();
            assert!(limit.check(ip(addr), now).is_err(), "{addr}: not counted");
            drop(held);
            assert!(limit.check(ip(addr), now).is_ok(), "{addr}: its place was not given back");
        }
        // Every connection holds one: three pointers' worth on a 64-bit target.
        if cfg!(target_pointer_width = "64") {
            assert_eq!(std::mem::size_of::<PerIpPermit>(), 24);
        }
        let permit = limit.check(ip("2001:db8:1:2::1"), now).unwrap();
        assert!(format!("{permit:?}").contains("key: Some(2001:db8:1:2::)"), "{permit:?}");
    }

    #[test]
    fn the_handshake_rate_is_a_token_bucket() {
        let config = PerIpConfig { handshake_rate: Some(2), handshake_burst: 3, ..Default::default() };
        let limit = PerIpLimit::new(config);
        let t0 = Instant::now();
        let client = ip("198.51.100.5");
        for _ in 0..3 {
            limit.check(client, t0).expect("within the burst");
        }
        let refusal = limit.check(client, t0).unwrap_err();
        let PerIpRefusal::TooFast { rate: 2, retry_after } = refusal else { panic!("{refusal:?}") };
        assert_eq!(retry_after, Duration::from_millis(500));
        assert_eq!(refusal.rejection().headers, vec![(RETRY_AFTER, HeaderValue::from(1u64))]);
        // Refusals take nothing; half a second later one token is back, and only one.
        assert!(limit.check(client, t0 + Duration::from_millis(499)).is_err());
        assert!(limit.check(client, t0 + Duration::from_millis(500)).is_ok());
        assert!(limit.check(client, t0 + Duration::from_millis(500)).is_err());
        // Others have their own bucket; rate-only limits keep no connection count.
        assert!(limit.check(ip("198.51.100.6"), t0).is_ok());
    }

    #[test]
    fn addresses_that_hold_nothing_are_forgotten() {
        let config = PerIpConfig { max_connections: Some(4), handshake_rate: Some(10), handshake_burst: 1 };
        let limit = PerIpLimit::new(config);
        let t0 = Instant::now();
        let held: Vec<_> = (0..100u32).map(|i| limit.check(IpAddr::from(i.to_be_bytes()), t0).unwrap()).collect();
        for i in 0..5000u32 {
            drop(limit.check(IpAddr::from((1_000_000 + i).to_be_bytes()), t0).unwrap());
        }
        // A second later their buckets have refilled: once the table has doubled, a sweep
        // forgets the 5,000, keeping the 100 that hold a connection (and the newer ones, whose
        // buckets are still empty).
        assert_eq!(limit.tracked(), 5100, "no sweep forgets what was used just now");
        let later = t0 + Duration::from_secs(1);
        for i in 0..4000u32 {
            drop(limit.check(IpAddr::from((2_000_000 + i).to_be_bytes()), later).unwrap());
        }
        assert!(limit.tracked() <= 4100, "tracked {}", limit.tracked());
        assert!(held.iter().all(|p| p.key.is_some()));
        drop(held);
    }
}
