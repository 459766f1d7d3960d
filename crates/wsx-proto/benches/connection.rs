//! Benchmarks of the whole data path through a server [`Connection`]: masked client frames in,
//! messages out (`read_event`), and messages in, frames out (`send` + draining `output()`); and a
//! client's masked sending.
//!
//! Run with `cargo bench -p wsx-proto --bench connection` (add `-- --quick` for a fast pass).
//! Throughput is counted in wire bytes (headers included). See `docs/benchmarks-codepaths.md`.

use std::hint::black_box;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use wsx_proto::{Config, Connection, Message, OutBuf};

mod common;
use common::{json_text, random_bytes, size_label, Rng};

/// (number of messages, payload size of each): about 20 KB, 100 KB and 640 KB per iteration.
const CASES: [(usize, usize); 3] = [(1000, 20), (100, 1 << 10), (10, 64 << 10)];

/// `count` distinct messages of `size` bytes: ASCII JSON text, or random binary.
fn messages(count: usize, size: usize, text: bool) -> Vec<Message> {
    (0..count as u64)
        .map(|i| if text { Message::text(json_text(size, i)) } else { Message::binary(random_bytes(size, i)) })
        .collect()
}

/// Writes out everything pending, as a driver would (here: only advancing over it).
fn drain(out: &mut OutBuf) -> usize {
    let mut n = 0;
    while out.has_remaining() {
        let chunk = black_box(out.chunk()).len();
        n += chunk;
        out.advance(chunk);
    }
    n
}

/// The bytes a client sends for `msgs`: one masked frame each, with varied keys.
fn client_wire(msgs: &[Message], now: Instant) -> Vec<u8> {
    let mut rng = Rng::new(9);
    let keys = move || {
        let k = rng.next_u64().to_le_bytes();
        [k[0], k[1], k[2], k[3]]
    };
    let mut client = Connection::client(Config::default(), now, keys);
    let mut wire = Vec::new();
    for m in msgs {
        client.send(m.clone()).expect("client send");
        let out = client.output();
        while out.has_remaining() {
            let chunk = out.chunk();
            wire.extend_from_slice(chunk);
            let n = chunk.len();
            out.advance(n);
        }
    }
    wire
}

fn kind(text: bool) -> &'static str {
    if text {
        "text"
    } else {
        "binary"
    }
}

fn receive(c: &mut Criterion) {
    let now = Instant::now();
    let mut group = c.benchmark_group("receive");
    for (count, size) in CASES {
        for text in [true, false] {
            let msgs = messages(count, size, text);
            let wire = client_wire(&msgs, now);
            let param = format!("{count}x{}", size_label(size));

            // The connection stays open (only data frames), so one serves every iteration.
            let mut server = Connection::server(Config::default(), now);
            let mut buf = BytesMut::from(&wire[..]);
            let mut received = Vec::new();
            while let Some(m) = server.read_event(&mut buf, now).expect("read_event") {
                received.push(m);
            }
            assert_eq!(received, msgs, "{param}: the server must read back what the client sent");
            assert!(buf.is_empty() && server.pending_output() == 0);

            group.throughput(Throughput::Bytes(wire.len() as u64));
            group.bench_function(BenchmarkId::new(kind(text), param), |b| {
                b.iter_batched(
                    || BytesMut::from(&wire[..]),
                    |mut buf| {
                        while let Some(m) = server.read_event(&mut buf, now).expect("read_event") {
                            black_box(m);
                        }
                        // Freed outside the measurement.
                        buf
                    },
                    BatchSize::LargeInput,
                );
            });
        }
    }
    group.finish();
}

fn send(c: &mut Criterion) {
    let now = Instant::now();
    let mut group = c.benchmark_group("send");
    for (count, size) in CASES {
        for text in [true, false] {
            let msgs = messages(count, size, text);
            let id = BenchmarkId::new(kind(text), format!("{count}x{}", size_label(size)));

            // One long-lived connection, as in a server that keeps sending: its output buffer's
            // allocation is reused from one iteration to the next.
            let mut server = Connection::server(Config::default(), now);
            for m in &msgs {
                server.send(m.clone()).expect("send");
            }
            let wire_len = drain(server.output());

            group.throughput(Throughput::Bytes(wire_len as u64));
            group.bench_function(id, |b| {
                b.iter(|| {
                    // Cloning a message is a reference count increment.
                    for m in &msgs {
                        server.send(m.clone()).expect("send");
                    }
                    drain(server.output())
                });
            });
        }
    }
    group.finish();
}

/// A client's sending: every payload masked as it is queued (`send`, and `send_binary_parts`
/// with a header and a body, as a load generator frames its messages).
fn send_client(c: &mut Criterion) {
    let now = Instant::now();
    let mut group = c.benchmark_group("send_client");
    for (count, size) in CASES {
        let msgs = messages(count, size, false);
        let mut rng = Rng::new(3);
        let keys = move || {
            let k = rng.next_u64().to_le_bytes();
            [k[0], k[1], k[2], k[3]]
        };
        let mut client = Connection::client(Config::default(), now, keys);
        for m in &msgs {
            client.send(m.clone()).expect("send");
        }
        let wire_len = drain(client.output());
        group.throughput(Throughput::Bytes(wire_len as u64));
        group.bench_function(BenchmarkId::new("send", format!("{count}x{}", size_label(size))), |b| {
            b.iter(|| {
                for m in &msgs {
                    client.send(m.clone()).expect("send");
                }
                drain(client.output())
            });
        });
        let body = random_bytes(size.saturating_sub(20), 1);
        group.bench_function(BenchmarkId::new("parts", format!("{count}x{}", size_label(size))), |b| {
            b.iter(|| {
                for i in 0..count as u64 {
                    let mut head = [0u8; 16];
                    head[..8].copy_from_slice(&i.to_le_bytes());
                    head[8..].copy_from_slice(&(!i).to_le_bytes());
                    client.send_binary_parts(&[&head, &[0; 4], &body]).expect("send");
                }
                drain(client.output())
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = receive, send, send_client
}
criterion_main!(benches);
