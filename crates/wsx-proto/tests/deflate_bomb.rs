//! Compression bombs: a small compressed message that inflates to far more than
//! `max_message_size` must fail with 1009 without the receiver ever holding much more than the
//! limit in memory.
//!
//! This is its own test binary because it installs a counting global allocator. The counters are
//! process-wide, so every test here takes [`LOCK`] and measures only while no other test runs.
//!
//! How memory is counted: `alloc` and `alloc_zeroed` add the block's size, `dealloc` subtracts
//! it, and `realloc` adds or subtracts the size difference (the allocator may resize in place, and
//! glibc resizes large blocks with `mremap`, without a second copy). `PEAK` is the highest total
//! seen, and what the assertions bound. `PEAK_IF_MOVED` is also reported: the peak if every
//! `realloc` had to allocate the new block before freeing the old one.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use bytes::BytesMut;
use common::{counting_keys, drain, parse_frames, single_close_code};
use wsx_proto::deflate::{DeflateParams, PerMessageDeflate};
use wsx_proto::frame::OpCode;
use wsx_proto::{Config, Connection, Error, LimitError, Message, State};

// ------------------------------------------------------------------ the counting allocator

struct Counting;

/// Bytes currently allocated.
static CURRENT: AtomicUsize = AtomicUsize::new(0);
/// The most bytes allocated at once since the last [`peak_during`] started.
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// The same, counting each `realloc` as holding the old and the new block at once.
static PEAK_IF_MOVED: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = CURRENT.fetch_add(n, Ordering::SeqCst) + n;
    PEAK.fetch_max(now, Ordering::SeqCst);
    PEAK_IF_MOVED.fetch_max(now, Ordering::SeqCst);
}

fn shrank(n: usize) {
    CURRENT.fetch_sub(n, Ordering::SeqCst);
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counters are only
// bookkeeping and never affect the pointers returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as our caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as our caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        PEAK_IF_MOVED.fetch_max(CURRENT.load(Ordering::SeqCst) + new_size, Ordering::SeqCst);
        // SAFETY: same contract as our caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Serialises the tests of this binary, so that one test's allocations never show up in
/// another's measurement.
static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Peaks above the baseline, in bytes.
#[derive(Debug, Clone, Copy)]
struct Peak {
    /// Counting `realloc` as its size change: what the assertions bound.
    bytes: usize,
    /// Counting `realloc` as old and new block at once: reported only.
    if_moved: usize,
}

/// Runs `f` and returns its result with the peak number of bytes allocated above what was
/// allocated when it started (memory `f` returns counts too).
fn peak_during<R>(f: impl FnOnce() -> R) -> (R, Peak) {
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    PEAK_IF_MOVED.store(base, Ordering::SeqCst);
    let r = f();
    let peak =
        Peak { bytes: PEAK.load(Ordering::SeqCst) - base, if_moved: PEAK_IF_MOVED.load(Ordering::SeqCst) - base };
    (r, peak)
}

// ------------------------------------------------------------------ the tests

/// The server's limit.
const LIMIT: usize = 1 << 20;

/// What the server may allocate beyond the message buffer's `limit + 1` bytes while inflating:
/// the inflater's state (47,552 bytes with zlib-rs, see the `deflate` module docs), the 1009 close
/// frame and small bookkeeping. Measured: a peak of 1,096,193 bytes, `limit + 1 + 47,616`, both for
/// the bomb (however it is chunked) and for a message of exactly the limit. A quarter of the limit
/// leaves room for a larger inflater, and still catches a buffer grown by copying (the old buffer
/// alive next to the new: up to twice the limit) or growing past the limit.
const SLACK: usize = 256 << 10;

/// The size of the bomb: 64 MiB of zeros.
const BOMB: usize = 64 << 20;

fn deflate_server(limit: usize) -> Connection {
    let mut config = Config::default();
    config.max_message_size = limit;
    let mut server = Connection::server(config, Instant::now());
    server.set_deflate(PerMessageDeflate::new(&DeflateParams::default(), true, 1, 0));
    server
}

/// What a client with permessage-deflate (level 9) writes to send `payload` as one message.
fn client_wire(payload: Vec<u8>) -> Vec<u8> {
    let mut client = Connection::client(Config::default(), Instant::now(), counting_keys());
    client.set_deflate(PerMessageDeflate::new(&DeflateParams::default(), false, 9, 0));
    client.send(Message::binary(payload)).unwrap();
    drain(&mut client)
}

/// The bomb as the client sends it (built once: compressing 64 MiB takes a while in debug).
fn bomb_wire() -> &'static [u8] {
    static WIRE: OnceLock<Vec<u8>> = OnceLock::new();
    WIRE.get_or_init(|| {
        let wire = client_wire(vec![0u8; BOMB]);
        let frames = parse_frames(&wire);
        assert_eq!(frames.len(), 1);
        let f = &frames[0];
        assert!(f.header.rsv1 && f.header.fin && f.header.opcode == OpCode::Binary);
        // DEFLATE cannot do better than about 1:1032; 64 MiB of zeros take about 65 KB.
        let len = f.payload.len();
        assert!((4 << 10..100 << 10).contains(&len), "compressed bomb is {len} bytes");
        eprintln!("bomb: {BOMB} bytes compressed to {len}");
        wire
    })
}

fn check_peak(peak: Peak, what: &str) {
    eprintln!(
        "{what}: peak {} bytes above baseline (limit + {}); {} if every realloc moved",
        peak.bytes,
        peak.bytes as i64 - LIMIT as i64,
        peak.if_moved
    );
    assert!(peak.bytes < LIMIT + SLACK, "{what}: peak {} bytes while inflating, bound {}", peak.bytes, LIMIT + SLACK);
}

fn assert_too_large(server: &mut Connection, err: Option<Error>, peak: Peak, what: &str) {
    assert_eq!(err, Some(Error::Limit(LimitError::MessageTooLarge { limit: LIMIT })), "{what}");
    assert_eq!(server.state(), State::Closed);
    assert_eq!(single_close_code(&drain(server)), Some(1009), "{what}");
    check_peak(peak, what);
}

#[test]
fn bomb_in_one_read() {
    let wire = bomb_wire();
    let _guard = lock();
    let mut server = deflate_server(LIMIT);
    let mut buf = BytesMut::from(wire);
    let (result, peak) = peak_during(|| server.read_event(&mut buf, Instant::now()));
    assert_too_large(&mut server, result.err(), peak, "bomb in one read");
    // Nothing more is read.
    buf.extend_from_slice(wire);
    assert_eq!(server.read_event(&mut buf, Instant::now()), Ok(None));
    assert!(drain(&mut server).is_empty());
}

#[test]
fn bomb_in_small_reads() {
    let wire = bomb_wire();
    let _guard = lock();
    for chunk in [4096, 1000, 77] {
        let mut server = deflate_server(LIMIT);
        // Room for the whole frame up front, so that the read buffer's own growth is not counted.
        let mut buf = BytesMut::with_capacity(wire.len());
        let (err, peak) = peak_during(|| {
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                match server.read_event(&mut buf, Instant::now()) {
                    Ok(None) => {}
                    Ok(Some(ev)) => panic!("unexpected event {:?}", ev.payload().len()),
                    Err(e) => return Some(e),
                }
            }
            None
        });
        assert_too_large(&mut server, err, peak, &format!("bomb in reads of {chunk} bytes"));
    }
}

#[test]
fn message_of_exactly_the_limit_inflates() {
    let _guard = lock();
    // Zeros: maximal expansion, like the bomb, but exactly as large as allowed.
    for (what, payload) in [("zeros", vec![0u8; LIMIT]), ("text", text(LIMIT))] {
        let wire = client_wire(payload.clone());
        let mut server = deflate_server(LIMIT);
        let mut buf = BytesMut::from(&wire[..]);
        let (result, peak) = peak_during(|| server.read_event(&mut buf, Instant::now()));
        let Ok(Some(Message::Binary(got))) = result else { panic!("{what}: {:?}", result.map(|_| ())) };
        assert!(got[..] == payload[..], "{what}: {} bytes, differs", got.len());
        check_peak(peak, &format!("{what}, exactly the limit"));
        assert_eq!(server.state(), State::Open);
        drop(got);

        // One byte more is refused.
        let mut bigger = payload;
        bigger.push(0);
        let wire = client_wire(bigger);
        let mut server = deflate_server(LIMIT);
        let mut buf = BytesMut::from(&wire[..]);
        let (result, peak) = peak_during(|| server.read_event(&mut buf, Instant::now()));
        assert_too_large(&mut server, result.err(), peak, &format!("{what}, one byte over the limit"));
    }
}

/// Compressible text of exactly `len` bytes.
fn text(len: usize) -> Vec<u8> {
    let mut rng = common::Rng::new(99);
    let mut v = Vec::with_capacity(len + 16);
    while v.len() < len {
        v.extend_from_slice(format!("item {} ", rng.next_u64() % 1000).as_bytes());
    }
    v.truncate(len);
    v
}
