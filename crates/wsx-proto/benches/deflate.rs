//! Benchmarks of permessage-deflate (RFC 7692): `PerMessageDeflate::compress` of whole messages,
//! and `decompress_chunk` + `finish_message` of the same messages compressed by a peer.
//!
//! Run with `cargo bench -p wsx-proto --bench deflate` (add `-- --quick` for a fast pass).
//! Throughput is counted in uncompressed bytes. See `docs/benchmarks-codepaths.md`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wsx_proto::deflate::{DeflateParams, PerMessageDeflate};

mod common;
use common::{json_text, prose_text, random_bytes};

/// The inflate budget, as `Config::max_message_size` sets it by default.
const BUDGET: usize = 64 << 20;

/// A set of distinct messages of one kind, sent one after another on one connection.
struct Input {
    name: &'static str,
    messages: Vec<Vec<u8>>,
}

fn inputs() -> Vec<Input> {
    // With context takeover a message may refer back into the previous 32 KiB, so the messages
    // differ (a repeated message would compress to almost nothing).
    vec![
        Input { name: "json_1KiB", messages: (0..64).map(|i| json_text(1 << 10, i).into_bytes()).collect() },
        Input { name: "text_64KiB", messages: (0..8).map(|i| prose_text(64 << 10, i).into_bytes()).collect() },
        Input { name: "random_64KiB", messages: (0..8).map(|i| random_bytes(64 << 10, i)).collect() },
    ]
}

/// (label, parameters, levels): the RFC's defaults (context takeover both ways, 32 KiB windows)
/// at levels 1 and 6, and no context takeover either way (as `wsx serve` negotiates by default)
/// at level 1.
fn modes() -> Vec<(&'static str, DeflateParams, Vec<u32>)> {
    let no_takeover =
        DeflateParams { server_no_context_takeover: true, client_no_context_takeover: true, ..Default::default() };
    vec![("takeover", DeflateParams::default(), vec![1, 6]), ("no_takeover", no_takeover, vec![1])]
}

fn inflate(pmd: &mut PerMessageDeflate, compressed: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    pmd.decompress_chunk(compressed, &mut out, BUDGET).expect("decompress_chunk");
    pmd.finish_message(&mut out, BUDGET).expect("finish_message");
    out
}

fn compress(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate_compress");
    for input in inputs() {
        group.throughput(Throughput::Bytes(input.messages[0].len() as u64));
        for (mode, params, levels) in modes() {
            for level in levels {
                let id = BenchmarkId::new(format!("{mode}_level{level}"), input.name);
                let mut server = PerMessageDeflate::new(&params, true, level, 0);
                let mut next = 0;
                group.bench_function(id, |b| {
                    b.iter(|| {
                        let m = &input.messages[next % input.messages.len()];
                        next += 1;
                        server.compress(black_box(m)).expect("compressed")
                    });
                });
            }
        }
    }
    group.finish();
}

fn decompress(c: &mut Criterion) {
    let mut group = c.benchmark_group("deflate_decompress");
    for input in inputs() {
        group.throughput(Throughput::Bytes(input.messages[0].len() as u64));
        for (mode, params, levels) in modes() {
            for level in levels {
                // The client's messages, compressed in order on one stream.
                let mut client = PerMessageDeflate::new(&params, false, level, 0);
                let stream: Vec<Vec<u8>> =
                    input.messages.iter().map(|m| client.compress(m).expect("compressed").to_vec()).collect();
                let mut check = PerMessageDeflate::new(&params, true, level, 0);
                for (m, z) in input.messages.iter().zip(&stream) {
                    assert_eq!(&inflate(&mut check, z)[..], &m[..]);
                }
                let (raw, packed) =
                    (input.messages.len() * input.messages[0].len(), stream.iter().map(Vec::len).sum::<usize>());
                eprintln!(
                    "{} {mode} level {level}: {raw} B -> {packed} B ({:.3})",
                    input.name,
                    packed as f64 / raw as f64
                );

                // The stream can only be inflated in order from its start: each pass over it takes
                // a new inflater, primed (outside the measurement) with the first message.
                let id = BenchmarkId::new(format!("{mode}_level{level}"), input.name);
                group.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        let mut measured = Duration::ZERO;
                        let mut done = 0;
                        while done < iters {
                            let mut server = PerMessageDeflate::new(&params, true, level, 0);
                            drop(inflate(&mut server, &stream[0]));
                            let n = (iters - done).min(stream.len() as u64 - 1) as usize;
                            let start = Instant::now();
                            for z in &stream[1..=n] {
                                // A new message buffer each time, as the connection does.
                                black_box(inflate(&mut server, black_box(z)));
                            }
                            measured += start.elapsed();
                            done += n as u64;
                        }
                        measured
                    });
                });
            }
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = compress, decompress
}
criterion_main!(benches);
