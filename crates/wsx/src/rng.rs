//! Masking keys and handshake keys from the operating system's CSPRNG (RFC 6455 §10.3: keys the
//! peer cannot predict), drawn in blocks to spare a system call per frame.
//!
//! The block belongs to the thread, not to the connection: a client connection holds no
//! random bytes of its own while idle, and one `getrandom` call serves 1,024 masking keys of
//! whichever connections the thread runs. Every key is still fresh OS randomness, used once.

use std::cell::RefCell;

/// Bytes drawn from the OS at a time, per thread.
const BLOCK: usize = 4096;

struct Pool {
    buf: [u8; BLOCK],
    pos: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { buf: [0; BLOCK], pos: BLOCK }) };
}

/// Fills `out` (at most [`BLOCK`] bytes) with random bytes from this thread's block.
fn fill(out: &mut [u8]) {
    POOL.with_borrow_mut(|pool| {
        if pool.pos + out.len() > BLOCK {
            if let Err(e) = getrandom::fill(&mut pool.buf) {
                // No secure randomness means we cannot mask safely: refuse to go on.
                panic!("the operating system's random number generator failed: {e}");
            }
            pool.pos = 0;
        }
        out.copy_from_slice(&pool.buf[pool.pos..pool.pos + out.len()]);
        pool.pos += out.len();
    });
}

/// A client connection's source of masking keys: the calling thread's block of OS randomness
/// (zero-sized: nothing per connection).
pub(crate) struct OsRandom;

impl OsRandom {
    pub(crate) fn new() -> Self {
        Self
    }
}

impl wsx_proto::MaskKeySource for OsRandom {
    fn next_key(&mut self) -> [u8; 4] {
        let mut k = [0; 4];
        fill(&mut k);
        k
    }
}

/// 16 random bytes for a Sec-WebSocket-Key.
pub(crate) fn handshake_key() -> [u8; 16] {
    let mut k = [0; 16];
    fill(&mut k);
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsx_proto::MaskKeySource as _;

    /// Keys differ from each other, across a refill of the block, and are not all zero (the
    /// block starts empty and is filled before the first key).
    #[test]
    fn keys_are_fresh_across_refills() {
        let mut source = OsRandom::new();
        let keys: Vec<[u8; 4]> = (0..3 * BLOCK / 4).map(|_| source.next_key()).collect();
        let distinct: std::collections::HashSet<_> = keys.iter().collect();
        // 3,072 random 32-bit keys: a repeat is possible but rare (p ≈ 0.001).
        assert!(distinct.len() >= keys.len() - 2, "{} distinct of {}", distinct.len(), keys.len());
        assert!(keys.iter().any(|k| *k != [0; 4]));
        assert_ne!(handshake_key(), handshake_key());
    }
}
