//! [`Stamp`]: an instant in 8 bytes, for the deadlines a connection keeps for its whole life.

use std::num::NonZeroU64;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// An instant in 8 bytes, and `Option<Stamp>` in 8 too, where an [`Instant`] and an
/// `Option<Instant>` take 16 on Linux. A connection keeps several deadlines that are set only
/// now and then (the close timeout, a pending ping's, a stalled write's); an idle server holds
/// one connection per client, so they are kept as stamps and turned back into instants when
/// they are used.
///
/// A stamp counts nanoseconds from an origin set once per process, at the first stamp made: a
/// day before that moment where the clock allows, so that instants read shortly before it keep
/// their place. An instant before the origin is taken as the origin; the round trip is exact
/// for every other instant within 584 years of it.
///
/// ```
/// use std::time::{Duration, Instant};
/// use wsx_proto::Stamp;
///
/// let deadline = Instant::now() + Duration::from_secs(30);
/// let stamp = Stamp::new(deadline);
/// assert_eq!(stamp.get(), deadline);
/// assert_eq!(std::mem::size_of::<Option<Stamp>>(), 8);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp(NonZeroU64);

/// The instant stamps count from.
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(24 * 60 * 60)).unwrap_or(now)
    })
}

impl Stamp {
    /// The stamp of `at`.
    pub fn new(at: Instant) -> Self {
        // One nanosecond is added so that the origin itself is not zero; `get` takes it off.
        let nanos = at.saturating_duration_since(origin()).as_nanos().saturating_add(1);
        Self(NonZeroU64::new(u64::try_from(nanos).unwrap_or(u64::MAX)).unwrap_or(NonZeroU64::MIN))
    }

    /// The instant this stamp stands for.
    pub fn get(self) -> Instant {
        origin() + Duration::from_nanos(self.0.get() - 1)
    }
}

impl From<Instant> for Stamp {
    fn from(at: Instant) -> Self {
        Self::new(at)
    }
}

impl From<Stamp> for Instant {
    fn from(stamp: Stamp) -> Self {
        stamp.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instant_comes_back_exactly_and_in_order() {
        let now = Instant::now();
        for offset in [0, 1, 999, 1_000_000_007, 86_400_000_000_000] {
            let at = now + Duration::from_nanos(offset);
            assert_eq!(Stamp::new(at).get(), at, "{offset} ns after now");
        }
        assert!(Stamp::new(now) < Stamp::new(now + Duration::from_nanos(1)));
        assert_eq!(std::mem::size_of::<Option<Stamp>>(), 8);
    }

    #[test]
    fn an_instant_before_the_origin_is_the_origin() {
        let origin = origin();
        if let Some(before) = origin.checked_sub(Duration::from_secs(1)) {
            assert_eq!(Stamp::new(before).get(), origin);
        }
        assert_eq!(Stamp::new(origin).get(), origin);
    }
}
