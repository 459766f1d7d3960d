//! `--reconnect`: which endings are worth another connection, and how long to wait before it.
//!
//! The wait is exponential backoff with full jitter: before attempt `n` (1, 2, …) wsx waits a
//! random time in `0..min(max, base · 2^(n-1))`. The first wait is thus random in `0..base`, as
//! RFC 6455 §7.2.3 suggests (5 s by default), so that clients dropped together by a restarting
//! server do not all come back at once. The attempt counter restarts at 1 after a connection
//! that stayed open at least the longest wait (`--reconnect-max-delay`): by then whatever went
//! wrong has passed.

use std::hash::{BuildHasher as _, Hasher as _};
use std::time::Duration;

use wsx::{CloseCode, ErrorKind};

/// The backoff settings of `--reconnect-delay`, `--reconnect-max-delay` and `--max-retries`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The spread of the first wait (0 to this).
    pub base: Duration,
    /// The largest spread of any wait.
    pub max: Duration,
    /// Attempts in a row before giving up (`None`: never give up).
    pub max_retries: Option<u32>,
}

impl Backoff {
    /// The upper bound of the wait before attempt `attempt` (1-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1).min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// A random wait before attempt `attempt`: uniform in `0..=ceiling(attempt)`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.ceiling(attempt).mul_f64(random_fraction())
    }
}

/// A random number in `0..1`, from the standard library's randomly seeded hasher (jitter needs
/// spread, not secrecy).
fn random_fraction() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(std::process::id().into());
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether a failed connection attempt is worth another one: the server may come back (refused
/// or dropped TCP connection, timeout, DNS failure, 5xx, 429 Too Many Requests, 408). Other 4xx
/// refusals (authentication, a wrong path, a forbidden Origin), TLS failures, a proxy's refusal
/// and invalid options will not get better by retrying.
pub fn connect_error_is_transient(e: &wsx::Error) -> bool {
    match e {
        wsx::Error::Handshake(wsx::HandshakeError::UnexpectedStatus { status, .. }) => {
            status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408
        }
        e => matches!(e.kind(), ErrorKind::Io | ErrorKind::Timeout),
    }
}

/// Whether a close by the server is worth another connection: 1001 going away, 1011 internal
/// error, 1012 service restart, 1013 try again later (and 1006, an end without a close frame,
/// which never arrives as a close frame). With `always`, every close by the server.
pub fn close_is_transient(code: Option<CloseCode>, always: bool) -> bool {
    always || matches!(code.map(|c| c.0), Some(1001 | 1006 | 1011 | 1012 | 1013))
}

/// Whether a connection that failed (rather than closed) is worth another one: an end without a
/// closing handshake (dropped transport, no pong, no answer to a write) is; a protocol error or
/// an exceeded limit of the server's messages would happen again.
pub fn failure_is_transient(e: &wsx::Error) -> bool {
    matches!(e.kind(), ErrorKind::Io | ErrorKind::Timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let b = Backoff { base: Duration::from_millis(500), max: Duration::from_secs(3), max_retries: None };
        let ceilings: Vec<_> = (1..=6).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [500, 1000, 2000, 3000, 3000, 3000]);
        assert_eq!(b.ceiling(1000), Duration::from_secs(3), "no overflow");
        for n in 1..50 {
            assert!(b.delay(n) <= b.ceiling(n));
        }
    }

    #[test]
    fn jitter_spreads() {
        let b = Backoff { base: Duration::from_secs(5), max: Duration::from_secs(60), max_retries: None };
        let delays: Vec<_> = (0..64).map(|_| b.delay(1)).collect();
        assert!(delays.iter().any(|d| *d < Duration::from_millis(2500)), "{delays:?}");
        assert!(delays.iter().any(|d| *d > Duration::from_millis(2500)), "{delays:?}");
    }

    #[test]
    fn what_is_retried() {
        let status = |s: u16| {
            wsx::Error::Handshake(wsx::HandshakeError::UnexpectedStatus {
                status: http::StatusCode::from_u16(s).unwrap(),
                headers: Box::default(),
                body: bytes::Bytes::new(),
            })
        };
        assert!(connect_error_is_transient(&status(503)));
        assert!(connect_error_is_transient(&status(429)));
        assert!(!connect_error_is_transient(&status(403)));
        assert!(!connect_error_is_transient(&status(404)));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(connect_error_is_transient(&wsx::Error::from(refused)));
        assert!(connect_error_is_transient(&wsx::Error::HandshakeTimeout(Duration::from_secs(1))));
        assert!(!connect_error_is_transient(&wsx::Error::InvalidUrl("x".into())));
        assert!(close_is_transient(Some(CloseCode(1012)), false));
        assert!(close_is_transient(Some(CloseCode(1001)), false));
        assert!(!close_is_transient(Some(CloseCode(1000)), false));
        assert!(!close_is_transient(None, false));
        assert!(!close_is_transient(Some(CloseCode(4000)), false));
        assert!(close_is_transient(Some(CloseCode(1000)), true));
        assert!(failure_is_transient(&wsx::Error::AbnormalClosure));
        let protocol = wsx::Error::Proto(wsx::proto::ProtocolError::ReservedOpcode(3).into());
        assert!(!failure_is_transient(&protocol));
    }
}
