//! Steady state allocates nothing per message: a counting global allocator watches an echo
//! server and a client exchange messages over loopback TCP.
//!
//! Each test runs both ends on one current-thread runtime, and the allocator counts per thread,
//! so what the test harness or another test does on other threads is not counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use wsx::{ClientBuilder, Message};

struct Counting;

thread_local! {
    // A const-initialised `Cell<usize>` needs no allocation and no destructor, so the allocator
    // may use it.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

fn allocations_so_far() -> usize {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: defers to the system allocator; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `rounds` batches of `batch` messages of `size` bytes through an echo server and returns
/// the allocations counted during the last `measured` rounds.
async fn allocations(size: usize, batch: usize, rounds: usize, measured: usize) -> usize {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut ws = wsx::accept(tcp).await.unwrap();
        // The echo loop the README shows.
        while let Some(msg) = ws.recv().await {
            let msg = msg.unwrap();
            if msg.is_data() {
                ws.send(msg).await.unwrap();
            }
        }
    });
    let (mut ws, _) = ClientBuilder::new(format!("ws://{addr}/")).connect().await.unwrap();
    let payload = Bytes::from(vec![0x5a; size]);
    let mut counted = 0;
    for round in 0..rounds {
        let start = allocations_so_far();
        for _ in 0..batch {
            ws.send(Message::Binary(payload.clone())).await.unwrap();
        }
        for _ in 0..batch {
            match ws.recv().await {
                Some(Ok(Message::Binary(b))) => assert_eq!(b.len(), size),
                other => panic!("unexpected {other:?}"),
            }
        }
        if round >= rounds - measured {
            counted += allocations_so_far() - start;
        }
    }
    ws.close(wsx::CloseCode::NORMAL, "").await.unwrap();
    server.await.unwrap();
    counted
}

#[tokio::test(flavor = "current_thread")]
async fn small_messages_one_at_a_time_allocate_nothing() {
    let n = allocations(20, 1, 3000, 2000).await;
    assert_eq!(n, 0, "{n} allocations for 2000 messages of 20 B echoed one at a time");
}

#[tokio::test(flavor = "current_thread")]
async fn batches_of_small_messages_allocate_nothing() {
    let n = allocations(1024, 16, 400, 200).await;
    assert_eq!(n, 0, "{n} allocations for 200 batches of 16 messages of 1 KiB");
}

#[tokio::test(flavor = "current_thread")]
async fn large_messages_allocate_less_than_one_per_message() {
    // A 64 KiB message is handed out as a slice of the read buffer; while the application holds
    // it, the next read may need a fresh buffer, so allow well under one allocation a message.
    let n = allocations(64 * 1024, 4, 200, 100).await;
    assert!(n < 100 * 4 / 2, "{n} allocations for 400 messages of 64 KiB");
}
