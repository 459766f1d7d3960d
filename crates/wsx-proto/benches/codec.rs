//! Benchmarks of the per-byte building blocks: the frame header codec, XOR masking and UTF-8
//! validation.
//!
//! Run with `cargo bench -p wsx-proto --bench codec` (add `-- --quick` for a fast pass, or a
//! filter such as `-- mask/`). See `docs/benchmarks-codepaths.md`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wsx_proto::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use wsx_proto::mask::{apply_mask, apply_mask_bytewise, masked_eq};
use wsx_proto::utf8::{self, Utf8Validator};

mod common;
use common::{json_text, mixed_text, random_bytes, size_label, Rng};

/// Headers per iteration of the header benchmarks (one header alone is a few nanoseconds).
const HEADERS: usize = 256;

/// The three length forms of RFC 6455 §5.2, by the range their payload lengths are drawn from.
const LENGTH_FORMS: [(&str, u64, u64); 3] = [("len7", 0, 125), ("len16", 126, 0xFFFF), ("len64", 0x1_0000, 1 << 40)];

/// `HEADERS` headers of one length form, with varied opcodes, FIN bits, lengths and keys.
fn headers(min: u64, max: u64, masked: bool, seed: u64) -> Vec<FrameHeader> {
    let mut rng = Rng::new(seed);
    (0..HEADERS)
        .map(|i| {
            let opcode = [OpCode::Text, OpCode::Binary, OpCode::Continuation][i % 3];
            let len = min + rng.next_u64() % (max - min + 1);
            let mask = masked.then(|| {
                let k = rng.next_u64().to_le_bytes();
                [k[0], k[1], k[2], k[3]]
            });
            let mut h = FrameHeader::new(opcode, len, mask);
            h.fin = i % 4 != 0;
            h
        })
        .collect()
}

fn frame_header(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame_header");
    for (form, min, max) in LENGTH_FORMS {
        for masked in [false, true] {
            let hs = headers(min, max, masked, 1);
            let header_len = hs[0].encoded_len();
            let name = format!("{form}_{}{header_len}B", if masked { "masked_" } else { "" });

            // The headers back to back, as `parse` sees them (payloads left out).
            let mut wire = Vec::with_capacity(HEADERS * MAX_HEADER_LEN);
            for h in &hs {
                let mut out = [0u8; MAX_HEADER_LEN];
                let n = h.encode(&mut out);
                wire.extend_from_slice(&out[..n]);
            }
            group.throughput(Throughput::Bytes(wire.len() as u64));

            group.bench_function(BenchmarkId::new("parse", &name), |b| {
                b.iter(|| {
                    let mut buf = black_box(&wire[..]);
                    let mut total = 0u64;
                    while let Some((h, n)) = FrameHeader::parse(buf).expect("valid header") {
                        total = total.wrapping_add(h.payload_len);
                        buf = &buf[n..];
                    }
                    total
                });
            });

            let mut out = vec![[0u8; MAX_HEADER_LEN]; HEADERS];
            group.bench_function(BenchmarkId::new("encode", &name), |b| {
                b.iter(|| {
                    let mut total = 0;
                    for (h, slot) in hs.iter().zip(out.iter_mut()) {
                        total += black_box(h).encode(slot);
                    }
                    black_box(&out);
                    total
                });
            });
        }
    }
    group.finish();
}

const MASK_SIZES: [usize; 7] = [1, 16, 125, 1 << 10, 4 << 10, 64 << 10, 1 << 20];
const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn mask(c: &mut Criterion) {
    let mut group = c.benchmark_group("mask");
    for size in MASK_SIZES {
        let label = size_label(size);
        group.throughput(Throughput::Bytes(size as u64));

        let mut buf = random_bytes(size, 2);
        group.bench_function(BenchmarkId::new("apply_mask", &label), |b| {
            b.iter(|| apply_mask(black_box(&mut buf), black_box(KEY), 0));
        });

        let src = random_bytes(size, 3);
        let mut dst = vec![0u8; size];
        group.bench_function(BenchmarkId::new("memcpy", &label), |b| {
            b.iter(|| black_box(&mut dst[..]).copy_from_slice(black_box(&src)));
        });

        // Checking a masked copy against the plain bytes: in one pass, against unmasking into
        // a scratch buffer and comparing.
        let plain = random_bytes(size, 5);
        let mut masked = plain.clone();
        apply_mask(&mut masked, KEY, 0);
        group.bench_function(BenchmarkId::new("masked_eq", &label), |b| {
            b.iter(|| masked_eq(black_box(&masked), black_box(&plain), black_box(KEY), 0));
        });
        let mut scratch = vec![0u8; size];
        group.bench_function(BenchmarkId::new("unmask_then_eq", &label), |b| {
            b.iter(|| {
                scratch.copy_from_slice(black_box(&masked));
                apply_mask(&mut scratch, black_box(KEY), 0);
                scratch == black_box(&plain)[..]
            });
        });

        if size == 64 << 10 {
            // A payload after a 6-, 8- or 14-byte header never starts on an 8-byte boundary:
            // the same length one byte into the allocation, continuing at payload offset 3.
            let mut shifted = random_bytes(size + 1, 4);
            group.bench_function(BenchmarkId::new("apply_mask_unaligned", &label), |b| {
                b.iter(|| apply_mask(black_box(&mut shifted[1..]), black_box(KEY), 3));
            });

            group.bench_function(BenchmarkId::new("apply_mask_bytewise", &label), |b| {
                b.iter(|| apply_mask_bytewise(black_box(&mut buf), black_box(KEY), 0));
            });
        }
    }
    group.finish();
}

const UTF8_SIZES: [usize; 3] = [1 << 10, 64 << 10, 1 << 20];

/// A plausible TCP segment's worth of payload: pieces of this size split code points.
const PIECE: usize = 1460;

fn utf8_validation(c: &mut Criterion) {
    for (kind, make) in [("ascii", json_text as fn(usize, u64) -> String), ("mixed", mixed_text)] {
        let mut group = c.benchmark_group(format!("utf8_{kind}"));
        for size in UTF8_SIZES {
            let label = size_label(size);
            let text = make(size, 5);
            let bytes = text.as_bytes();
            assert_eq!(bytes.len(), size);
            group.throughput(Throughput::Bytes(size as u64));

            group.bench_function(BenchmarkId::new("std_from_utf8", &label), |b| {
                b.iter(|| std::str::from_utf8(black_box(bytes)).is_ok());
            });
            group.bench_function(BenchmarkId::new("validate", &label), |b| {
                b.iter(|| utf8::validate(black_box(bytes)).is_ok());
            });
            group.bench_function(BenchmarkId::new("feed", &label), |b| {
                b.iter(|| {
                    let mut v = Utf8Validator::new();
                    v.feed(black_box(bytes)).expect("valid UTF-8");
                    v.finish().is_ok()
                });
            });
            if size > PIECE {
                group.bench_function(BenchmarkId::new("feed_1460B_pieces", &label), |b| {
                    b.iter(|| {
                        let mut v = Utf8Validator::new();
                        for piece in black_box(bytes).chunks(PIECE) {
                            v.feed(piece).expect("valid UTF-8");
                        }
                        v.finish().is_ok()
                    });
                });
            }
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = frame_header, mask, utf8_validation
}
criterion_main!(benches);
