//! Masking keys and handshake keys from the operating system's CSPRNG (RFC 6455 §10.3: keys the
//! peer cannot predict), drawn in blocks to spare a system call per frame.
//!
//! The block belongs to the thread, not to the connection: a client connection holds no
//! random bytes of its own while idle, and one `getrandom` call serves 1,024 masking keys of
//! whichever connections the thread runs. Every key is still fresh OS randomness, used once:
//! a process forked from this one (which gets a copy of the block) draws a new block first.
#![allow(unsafe_code)]

use std::cell::RefCell;

/// Bytes drawn from the OS at a time, per thread.
const BLOCK: usize = 4096;

struct Pool {
    buf: [u8; BLOCK],
    pos: usize,
    /// The fork generation the block was drawn in.
    generation: u64,
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { buf: [0; BLOCK], pos: BLOCK, generation: 0 }) };
}

/// How many times this process's ancestors forked on the way to it (0 in the first process):
/// counted by a `pthread_atfork` child handler, so that a block copied into a child is never
/// used there.
#[cfg(unix)]
fn fork_generation() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static GENERATION: AtomicU64 = AtomicU64::new(0);
    static REGISTER: std::sync::Once = std::sync::Once::new();
    extern "C" fn forked() {
        GENERATION.fetch_add(1, Ordering::Relaxed);
    }
    REGISTER.call_once(|| {
        // SAFETY: registers a handler that only increments an atomic (async-signal-safe, as a
        // handler run in a forked child must be); the other two handlers are absent.
        let registered = unsafe { libc::pthread_atfork(None, None, Some(forked)) };
        if registered != 0 {
            // Without the handler a forked child could repeat keys: refuse to go on.
            panic!("pthread_atfork failed ({registered}): cannot protect masking keys across fork");
        }
    });
    GENERATION.load(Ordering::Relaxed)
}

#[cfg(not(unix))]
fn fork_generation() -> u64 {
    0
}

/// `N` (at most [`BLOCK`]) random bytes from this thread's block. The length is a constant,
/// so taking a masking key is a 4-byte load, not a copy of unknown length.
#[inline]
fn take<const N: usize>() -> [u8; N] {
    const { assert!(N <= BLOCK) };
    let generation = fork_generation();
    POOL.with_borrow_mut(|pool| {
        if pool.pos + N > BLOCK || pool.generation != generation {
            pool.refill(generation);
        }
        let mut out = [0; N];
        out.copy_from_slice(&pool.buf[pool.pos..pool.pos + N]);
        pool.pos += N;
        out
    })
}

impl Pool {
    /// A fresh block from the OS, drawn in fork generation `generation`.
    #[cold]
    fn refill(&mut self, generation: u64) {
        if let Err(e) = getrandom::fill(&mut self.buf) {
            // No secure randomness means we cannot mask safely: refuse to go on. The block is
            // left marked stale, so a caught panic cannot let its old bytes be used.
            panic!("the operating system's random number generator failed: {e}");
        }
        self.generation = generation;
        self.pos = 0;
    }
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
    #[inline]
    fn next_key(&mut self) -> [u8; 4] {
        take()
    }
}

/// 16 random bytes for a Sec-WebSocket-Key.
pub(crate) fn handshake_key() -> [u8; 16] {
    take()
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

    /// A child forked after keys were drawn does not draw the parent's next ones.
    #[cfg(unix)]
    #[test]
    fn a_forked_child_does_not_repeat_the_parents_keys() {
        let mut source = OsRandom::new();
        let _ = source.next_key();
        let mut fds = [0i32; 2];
        // SAFETY: a pipe for the child's one key; the child only draws it, writes it and exits.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let key = OsRandom::new().next_key();
            unsafe {
                libc::write(fds[1], key.as_ptr().cast(), 4);
                libc::_exit(0);
            }
        }
        let mine = source.next_key();
        let mut theirs = [0u8; 4];
        assert_eq!(unsafe { libc::read(fds[0], theirs.as_mut_ptr().cast(), 4) }, 4);
        unsafe {
            libc::waitpid(pid, std::ptr::null_mut(), 0);
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        assert_ne!(mine, theirs, "the parent and its forked child drew the same masking key");
    }
}
