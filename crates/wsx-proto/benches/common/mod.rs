//! Helpers shared by the benchmark files: the Criterion configuration and deterministic inputs.
//!
//! Each bench file includes this module with `mod common;` and uses only part of it.
#![allow(dead_code)]

use std::time::Duration;

use criterion::Criterion;

/// Short measurements: the benchmarks run on a small machine shared with other builds.
pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

/// A small deterministic generator (xorshift64*), so that every run measures the same bytes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// `len` bytes of incompressible noise.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

/// Pads (with spaces) or cuts `s` to exactly `len` bytes, cutting on a character boundary.
fn exact_len(mut s: String, len: usize) -> String {
    let mut end = len.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    while s.len() < len {
        s.push(' ');
    }
    s
}

const NAMES: &[&str] = &["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"];
const EVENTS: &[&str] = &["trade", "quote", "order.new", "order.cancel", "heartbeat", "position", "fill"];
const SYMBOLS: &[&str] = &["BTC-USD", "ETH-USD", "SOL-USD", "EUR-USD", "AAPL", "MSFT", "NVDA"];

/// ASCII JSON records (the typical WebSocket text payload), exactly `len` bytes.
pub fn json_text(len: usize, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut s = String::with_capacity(len + 256);
    let mut id = 1_000_000 + rng.below(1_000_000);
    while s.len() < len {
        id += 1 + rng.below(7);
        s.push_str(&format!(
            "{{\"id\":{id},\"type\":\"{}\",\"user\":\"{}\",\"symbol\":\"{}\",\"price\":{}.{:02},\"qty\":{},\"ts\":{}}}\n",
            EVENTS[rng.below(EVENTS.len())],
            NAMES[rng.below(NAMES.len())],
            SYMBOLS[rng.below(SYMBOLS.len())],
            rng.below(100_000),
            rng.below(100),
            rng.below(5_000),
            1_700_000_000_000u64 + rng.next_u64() % 10_000_000,
        ));
    }
    exact_len(s, len)
}

const WORDS: &str = "the of and a to in is frame message server client payload mask close connection protocol \
    handshake extension window buffer that with for as on data length opcode text binary ping pong bytes which \
    when must not be sent";

/// ASCII prose made of common words, exactly `len` bytes.
pub fn prose_text(len: usize, seed: u64) -> String {
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let mut rng = Rng::new(seed);
    let mut s = String::with_capacity(len + 32);
    while s.len() < len {
        s.push_str(words[rng.below(words.len())]);
        s.push_str(match rng.below(12) {
            0 => ". ",
            1 => ", ",
            _ => " ",
        });
    }
    exact_len(s, len)
}

const MIXED: &[&str] = &[
    "hello world ",
    "héllo wörld ",
    "κόσμε ",
    "привет мир ",
    "日本語のテキスト ",
    "中文文本 ",
    "한국어 ",
    "emoji 😀🎉🚀 ",
    "∑ ∫ ≈ ≠ ",
    "plain ascii words between ",
];

/// Text mixing ASCII with 2-, 3- and 4-byte UTF-8 sequences, exactly `len` bytes.
pub fn mixed_text(len: usize, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut s = String::with_capacity(len + 32);
    while s.len() < len {
        s.push_str(MIXED[rng.below(MIXED.len())]);
    }
    exact_len(s, len)
}

/// "1B", "125B", "1KiB", "64KiB", "1MiB".
pub fn size_label(len: usize) -> String {
    if len >= 1 << 20 && len.is_multiple_of(1 << 20) {
        format!("{}MiB", len >> 20)
    } else if len >= 1 << 10 && len.is_multiple_of(1 << 10) {
        format!("{}KiB", len >> 10)
    } else {
        format!("{len}B")
    }
}
