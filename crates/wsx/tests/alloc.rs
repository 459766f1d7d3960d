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
    // Those of 64 KiB and more: read buffers for large messages.
    static LARGE: Cell<usize> = const { Cell::new(0) };
}

fn count(size: usize) {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
    if size >= 64 * 1024 {
        let _ = LARGE.try_with(|c| c.set(c.get() + 1));
    }
}

fn allocations_so_far() -> usize {
    ALLOCATIONS.with(Cell::get)
}

fn large_allocations_so_far() -> usize {
    LARGE.with(Cell::get)
}

// SAFETY: defers to the system allocator; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
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

/// A masked binary frame of `len` bytes (64 KiB and up: the 64-bit length form).
fn masked_binary(len: usize, seed: u8) -> Vec<u8> {
    let key = [0x11, 0x22, 0x33, 0x44];
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(len as u64).to_be_bytes());
    frame.extend_from_slice(&key);
    frame.extend((0..len).map(|i| (i as u8).wrapping_add(seed) ^ key[i % 4]));
    frame
}

/// The pipelined shape of `scripts/bench-servers`' 64 KiB row: a peer writes batches of
/// messages in one write and keeps two batches in flight, so that the server reads more while
/// earlier echoes (slices of its read buffer) may still wait to be written. Its read buffers are
/// recycled: after the warm-up, (almost) no allocation.
#[tokio::test(flavor = "current_thread")]
async fn pipelined_large_messages_reuse_their_read_buffers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SIZE: usize = 64 * 1024;
    const BATCH: usize = 4;
    const ROUNDS: usize = 120;
    const MEASURED: usize = 60;
    // Small socket buffers: the server's writes of a batch end part way, so it reads on while
    // echoes (slices of its read buffer) still wait to be written.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(SIZE as u32).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(8).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = wsx::accept(tcp).await.unwrap();
        // `wsx serve --echo`'s loop: replies queued, a batch leaves in one write.
        while let Some(Ok(msg)) = ws.recv().await {
            if msg.is_data() {
                ws.feed(msg).await.unwrap();
            }
        }
    });
    let (ws, _) = ClientBuilder::new(format!("ws://{addr}/")).connect().await.unwrap();
    let (mut tcp, _, leftover) = ws.into_parts();
    assert!(leftover.is_empty());
    let batches: Vec<Vec<u8>> =
        (0..2u8).map(|b| (0..BATCH as u8).flat_map(|i| masked_binary(SIZE, b * 16 + i)).collect()).collect();
    // A server frame of 64 KiB: a 10-byte header, the payload unmasked.
    let echo_len = BATCH * (10 + SIZE);
    let mut echo = vec![0u8; echo_len];
    tcp.write_all(&batches[0]).await.unwrap();
    let (mut counted, mut large) = (0, 0);
    for round in 0..ROUNDS {
        let (start, start_large) = (allocations_so_far(), large_allocations_so_far());
        // The next batch goes out before this one's echoes are read: two in flight.
        tcp.write_all(&batches[(round + 1) % 2]).await.unwrap();
        tcp.read_exact(&mut echo).await.unwrap();
        for i in 0..BATCH {
            let frame = &echo[i * (10 + SIZE)..(i + 1) * (10 + SIZE)];
            let seed = (round % 2) as u8 * 16 + i as u8;
            assert_eq!(frame[..2], [0x82, 127], "round {round}, echo {i}");
            assert_eq!(frame[10..14], [seed, seed.wrapping_add(1), seed.wrapping_add(2), seed.wrapping_add(3)]);
            assert_eq!(frame[10 + SIZE - 1], ((SIZE - 1) as u8).wrapping_add(seed));
        }
        if round >= ROUNDS - MEASURED {
            counted += allocations_so_far() - start;
            large += large_allocations_so_far() - start_large;
        }
    }
    tcp.read_exact(&mut echo).await.unwrap();
    drop(tcp);
    server.await.unwrap();
    // None when the echoes of one buffer have left before the next fills (the usual case). On
    // a loaded machine some reads find both buffers still held and allocate, correctly: six
    // copies of this test on two cores made up to 94 allocations (47 of them of 64 KiB and
    // more). Without the spare it is three a round (a buffer of 64 KiB and more each): 168-180.
    assert!(
        counted < 2 * MEASURED,
        "{counted} allocations ({large} of 64 KiB and more) for {} pipelined messages of 64 KiB",
        MEASURED * BATCH
    );
}

/// A connection that mostly sends, the way a room's subscriber does: its loop waits on both the
/// peer and a source of messages to push, so each wake polls a read that finds nothing. Queued
/// output keeps it busy: its read buffer is kept, not released and allocated again per wake.
#[tokio::test(flavor = "current_thread")]
async fn a_connection_that_pushes_messages_allocates_nothing() {
    use std::sync::Arc;
    const BATCH: usize = 4;
    const ROUNDS: usize = 1000;
    const MEASURED: usize = 500;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let push = Arc::new(tokio::sync::Notify::new());
    let server_push = push.clone();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = wsx::accept(tcp).await.unwrap();
        let payload = Bytes::from_static(b"news from the room");
        loop {
            tokio::select! {
                msg = ws.recv() => match msg {
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => panic!("{e}"),
                },
                _ = server_push.notified() => {
                    for _ in 0..BATCH {
                        ws.feed(Message::Binary(payload.clone())).await.unwrap();
                    }
                    ws.flush().await.unwrap();
                }
            }
        }
    });
    let (mut ws, _) = ClientBuilder::new(format!("ws://{addr}/")).connect().await.unwrap();
    let mut counted = 0;
    for round in 0..ROUNDS {
        let start = allocations_so_far();
        push.notify_one();
        for _ in 0..BATCH {
            match ws.recv().await {
                Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], b"news from the room"),
                other => panic!("unexpected {other:?}"),
            }
        }
        if round >= ROUNDS - MEASURED {
            counted += allocations_so_far() - start;
        }
    }
    ws.close(wsx::CloseCode::NORMAL, "").await.unwrap();
    server.await.unwrap();
    assert_eq!(counted, 0, "{counted} allocations for {MEASURED} batches of {BATCH} pushed messages");
}
