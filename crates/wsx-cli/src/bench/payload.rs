//! What `wsx bench echo` sends, and how it checks what comes back.
//!
//! Every message starts with a header: its sequence number on the connection, the time it was
//! scheduled to leave (nanoseconds after the run's start), and a checksum of those two. The rest
//! is filler: JSON-like text (so that permessage-deflate compresses it as it would real traffic,
//! not like zeros), one of a few variants chosen by the sequence number. An echo is accepted when
//! its type and length are right, its checksum matches and its filler is byte for byte the
//! variant sent; the sequence number then says whether it came back in order, and the timestamp
//! gives its latency without any per-message state in the generator.
//!
//! Binary messages carry the header as 20 raw bytes; text messages as 40 hex digits (valid UTF-8).

use bytes::{BufMut as _, Bytes, BytesMut};

/// Header length of a binary message: sequence (8, little-endian), schedule (8), checksum (4).
pub const BINARY_HEADER: usize = 20;
/// Header length of a text message: the same three numbers as 16 + 16 + 8 hex digits.
pub const TEXT_HEADER: usize = 40;

/// At most this many filler variants, and at most this many bytes of them in all.
const MAX_VARIANTS: usize = 16;
const MAX_VARIANT_BYTES: usize = 4 << 20;

/// The messages of a run: their type, size and filler variants.
#[derive(Debug)]
pub struct Payloads {
    text: bool,
    size: usize,
    /// JSON-like ASCII, so valid text too.
    fillers: Vec<String>,
}

/// Why an echo was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// Text for binary or the other way round.
    Type,
    /// Not the size sent.
    Length,
    /// The header's checksum does not match its numbers (or is not hex).
    Header,
    /// The filler differs from what was sent; the header (valid) says which message it was.
    Body { seq: u64 },
}

impl Payloads {
    /// Messages of `size` bytes (at least the header's length), text or binary.
    pub fn new(size: usize, text: bool) -> Result<Self, String> {
        let header = header_len(text);
        if size < header {
            return Err(format!(
                "--size {size} is too small: each {} message carries a {header}-byte header (sequence, send time, checksum)",
                if text { "text" } else { "binary" }
            ));
        }
        let body = size - header;
        let fit = (MAX_VARIANT_BYTES / body.max(1)).clamp(1, MAX_VARIANTS);
        // The largest power of two that fits (see `filler`).
        let variants = 1 << fit.ilog2();
        let fillers =
            (0..variants).map(|v| String::from_utf8_lossy(&json_filler(body, v as u64)).into_owned()).collect();
        Ok(Self { text, size, fillers })
    }

    /// The message with this sequence number and scheduled time.
    pub fn make(&self, seq: u64, sched_ns: u64) -> Bytes {
        let (head, len) = self.header(seq, sched_ns);
        let mut out = BytesMut::with_capacity(self.size);
        out.put_slice(&head[..len]);
        out.put_slice(self.filler(seq).as_bytes());
        out.freeze()
    }

    /// Queues the message with this sequence number and scheduled time on `conn`, framed (and
    /// masked) straight from its header and its filler: no message is built, nothing is
    /// allocated (the same bytes as sending [`make`](Self::make)'s message).
    #[inline]
    pub fn send(&self, conn: &mut wsx::proto::Connection, seq: u64, sched_ns: u64) -> Result<(), wsx::proto::Error> {
        let filler = self.filler(seq);
        if self.text {
            let (head, len) = self.header(seq, sched_ns);
            // Hex digits: ASCII.
            let head = std::str::from_utf8(&head[..len]).unwrap_or_default();
            conn.send_text_parts(&[head, filler])
        } else {
            conn.send_binary_parts(&[&binary_header(seq, sched_ns), filler.as_bytes()])
        }
    }

    /// The header: sequence, schedule and checksum, as 20 raw bytes or 40 hex digits.
    fn header(&self, seq: u64, sched_ns: u64) -> ([u8; TEXT_HEADER], usize) {
        let mut head = [0u8; TEXT_HEADER];
        let sum = checksum(seq, sched_ns);
        if self.text {
            put_hex(&mut head[..16], seq);
            put_hex(&mut head[16..32], sched_ns);
            put_hex(&mut head[32..40], u64::from(sum));
            (head, TEXT_HEADER)
        } else {
            head[..BINARY_HEADER].copy_from_slice(&binary_header(seq, sched_ns));
            (head, BINARY_HEADER)
        }
    }

    /// A message of the run's type carrying `data` (from [`make`](Self::make): text data is
    /// ASCII).
    pub fn message(&self, data: Bytes) -> wsx::Message {
        if self.text {
            wsx::Message::Text(wsx::Utf8Bytes::try_from(data).unwrap_or_else(|_| wsx::Utf8Bytes::from("")))
        } else {
            wsx::Message::Binary(data)
        }
    }

    /// Whether the payloads are text.
    pub fn text(&self) -> bool {
        self.text
    }

    /// Checks an echo; returns its sequence number and scheduled time.
    #[inline]
    pub fn check(&self, text: bool, data: &[u8]) -> Result<(u64, u64), Mismatch> {
        self.check_shape(text, data)?;
        let (head, body) = data.split_at(header_len(self.text));
        let (seq, sched) = self.read_header(head)?;
        // Not compared when there is no filler (a message of the header's size): slice equality
        // calls `memcmp` even for 0 bytes, and an empty filler's pointer is a dangling one
        // (address 1). On this project's benchmark machine such a call to glibc's AVX-512
        // `memcmp` takes 92 ns instead of 2 (most likely a masked load from that unmapped page,
        // completed by a slow fault-suppression assist): 17 % of the generator's time at 20-byte
        // messages (`perf record -e cpu-clock`), where a compare of any real length costs 1 %.
        let filler = self.filler(seq).as_bytes();
        if !filler.is_empty() && body != filler {
            return Err(Mismatch::Body { seq });
        }
        Ok((seq, sched))
    }

    /// [`check`](Self::check) for an echo still masked with `key`, as a byte echo returns a
    /// client's frames (`--raw`): the header is unmasked into a copy, the filler compared as it
    /// is, masked ([`masked_eq`](wsx::proto::mask::masked_eq)): one pass over the payload, not an
    /// unmasking pass and a comparison.
    #[inline]
    pub fn check_masked(&self, text: bool, data: &[u8], key: [u8; 4]) -> Result<(u64, u64), Mismatch> {
        self.check_shape(text, data)?;
        let len = header_len(self.text);
        let (masked_head, body) = data.split_at(len);
        let mut head = [0u8; TEXT_HEADER];
        head[..len].copy_from_slice(masked_head);
        wsx::proto::mask::apply_mask(&mut head[..len], key, 0);
        let (seq, sched) = self.read_header(&head[..len])?;
        if !wsx::proto::mask::masked_eq(body, self.filler(seq).as_bytes(), key, len) {
            return Err(Mismatch::Body { seq });
        }
        Ok((seq, sched))
    }

    /// An echo's type and length.
    #[inline]
    fn check_shape(&self, text: bool, data: &[u8]) -> Result<(), Mismatch> {
        if text != self.text {
            return Err(Mismatch::Type);
        }
        if data.len() != self.size {
            return Err(Mismatch::Length);
        }
        Ok(())
    }

    /// The sequence number and scheduled time in an echo's (unmasked) header, if its checksum
    /// holds.
    #[inline]
    fn read_header(&self, head: &[u8]) -> Result<(u64, u64), Mismatch> {
        let (seq, sched, sum) = if self.text {
            let hex = |b: &[u8]| std::str::from_utf8(b).ok().and_then(|s| u64::from_str_radix(s, 16).ok());
            match (hex(&head[..16]), hex(&head[16..32]), hex(&head[32..40])) {
                (Some(a), Some(b), Some(c)) => (a, b, c as u32),
                _ => return Err(Mismatch::Header),
            }
        } else {
            // `head` is exactly BINARY_HEADER (20) bytes: fixed-size reads, no copies.
            let Some((seq, rest)) = head.split_first_chunk::<8>() else {
                return Err(Mismatch::Header);
            };
            let Some((sched, rest)) = rest.split_first_chunk::<8>() else {
                return Err(Mismatch::Header);
            };
            let Some((sum, _)) = rest.split_first_chunk::<4>() else {
                return Err(Mismatch::Header);
            };
            (u64::from_le_bytes(*seq), u64::from_le_bytes(*sched), u32::from_le_bytes(*sum))
        };
        if checksum(seq, sched) != sum {
            return Err(Mismatch::Header);
        }
        Ok((seq, sched))
    }

    fn filler(&self, seq: u64) -> &str {
        &self.fillers[self.variant(seq)]
    }

    fn variant(&self, seq: u64) -> usize {
        // A power of two: a mask, not a division, per message.
        (seq & (self.fillers.len() as u64 - 1)) as usize
    }
}

/// A binary message's header: sequence, schedule and their checksum, little-endian.
#[inline]
fn binary_header(seq: u64, sched_ns: u64) -> [u8; BINARY_HEADER] {
    let mut head = [0u8; BINARY_HEADER];
    head[..8].copy_from_slice(&seq.to_le_bytes());
    head[8..16].copy_from_slice(&sched_ns.to_le_bytes());
    head[16..].copy_from_slice(&checksum(seq, sched_ns).to_le_bytes());
    head
}

/// `value` as lower-case hex digits filling `out` (16 digits for a whole u64).
fn put_hex(out: &mut [u8], value: u64) {
    let digits = out.len();
    for (i, byte) in out.iter_mut().enumerate() {
        let shift = 4 * (digits - 1 - i);
        *byte = b"0123456789abcdef"[((value >> shift) & 0xf) as usize];
    }
}

pub fn header_len(text: bool) -> usize {
    if text {
        TEXT_HEADER
    } else {
        BINARY_HEADER
    }
}

/// A 32-bit mix of the two numbers (multiplications by odd constants, then the high half):
/// any change to either shows, and it costs a few cycles per message rather than a loop.
fn checksum(seq: u64, sched_ns: u64) -> u32 {
    let x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ sched_ns.wrapping_mul(0xc2b2_ae3d_27d4_eb4f).rotate_left(31);
    let x = (x ^ (x >> 29)).wrapping_mul(0x1656_67b1_9e37_79f9);
    (x >> 32) as u32
}

/// `len` bytes of JSON-looking ASCII: records with names, numbers and flags that vary (a small
/// LCG seeded by `variant`), so that deflate finds the repetition real JSON has, and no more.
pub fn json_filler(len: usize, variant: u64) -> Vec<u8> {
    const NAMES: [&str; 8] = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"];
    const EVENTS: [&str; 4] = ["trade", "quote", "update", "heartbeat"];
    let mut state = variant.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
    let mut next = move || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        state >> 33
    };
    let mut out = String::with_capacity(len + 160);
    while out.len() < len {
        let r = next();
        out.push_str(&format!(
            "{{\"id\":{},\"user\":\"{}\",\"event\":\"{}\",\"price\":{}.{:02},\"qty\":{},\"ok\":{}}},",
            r % 1_000_000,
            NAMES[(r % 8) as usize],
            EVENTS[(r / 8 % 4) as usize],
            r % 5000,
            r % 100,
            r % 97,
            r % 2 == 0
        ));
    }
    out.truncate(len);
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_catches_every_corruption() {
        for text in [false, true] {
            let p = Payloads::new(300, text).unwrap();
            let m = p.make(42, 1_234_567);
            assert_eq!(m.len(), 300);
            if text {
                assert!(m.starts_with(b"000000000000002a000000000012d687"), "{m:?}");
            }
            assert_eq!(p.check(text, &m), Ok((42, 1_234_567)));
            if text {
                assert!(std::str::from_utf8(&m).is_ok());
            }
            assert_eq!(p.check(!text, &m), Err(Mismatch::Type));
            assert_eq!(p.check(text, &m[..299]), Err(Mismatch::Length));
            // Any single changed byte is caught, in the header or the body.
            for i in 0..m.len() {
                let mut bad = m.to_vec();
                bad[i] ^= 0x01;
                assert!(p.check(text, &bad).is_err(), "byte {i} (text {text})");
            }
            // Another message's filler is refused too.
            let other = p.make(43, 1_234_567);
            assert_ne!(other[header_len(text)..], m[header_len(text)..]);
        }
    }

    #[test]
    fn a_masked_echo_is_checked_like_the_unmasked_one() {
        let key = [0x5a, 0x0f, 0xf0, 0xa5];
        for text in [false, true] {
            for size in [header_len(text), header_len(text) + 3, 300, 1024] {
                let p = Payloads::new(size, text).unwrap();
                let m = p.make(42, 1_234_567);
                let mut masked = m.to_vec();
                wsx::proto::mask::apply_mask(&mut masked, key, 0);
                assert_eq!(p.check_masked(text, &masked, key), Ok((42, 1_234_567)), "size {size}");
                assert_eq!(p.check_masked(!text, &masked, key), Err(Mismatch::Type));
                assert_eq!(p.check_masked(text, &masked[..size - 1], key), Err(Mismatch::Length));
                assert!(p.check_masked(text, &masked, [0x5a, 0x0f, 0xf0, 0xa4]).is_err(), "another key");
                for i in 0..size {
                    let mut bad = masked.clone();
                    bad[i] ^= 0x80;
                    let got = p.check_masked(text, &bad, key);
                    assert_eq!(
                        got,
                        p.check(text, &{
                            let mut plain = m.to_vec();
                            plain[i] ^= 0x80;
                            plain
                        })
                    );
                    assert!(got.is_err(), "byte {i} (text {text}, size {size})");
                }
            }
        }
    }

    #[test]
    fn the_checksum_changes_with_any_bit_of_either_number() {
        for i in 0..2000u64 {
            let (seq, sched) = (i * 7919, i.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 3);
            let sum = checksum(seq, sched);
            for bit in 0..64 {
                assert_ne!(checksum(seq ^ (1 << bit), sched), sum, "seq {seq} bit {bit}");
                assert_ne!(checksum(seq, sched ^ (1 << bit)), sum, "sched {sched} bit {bit}");
            }
        }
    }

    /// `send` queues the very bytes of sending `make`'s message, for both types (and for a
    /// client, masked with the same keys).
    #[test]
    fn send_frames_what_make_builds() {
        for text in [false, true] {
            let p = Payloads::new(300, text).unwrap();
            let keys = || {
                let mut n = 0u8;
                move || {
                    n = n.wrapping_add(1);
                    [n, 2, 3, 4]
                }
            };
            let now = std::time::Instant::now();
            let config = wsx::proto::Config::default();
            let mut a = wsx::proto::Connection::client(config.clone(), now, keys());
            let mut b = wsx::proto::Connection::client(config, now, keys());
            for seq in [5, 6, 5 + p.fillers.len() as u64] {
                p.send(&mut a, seq, seq * 10).unwrap();
                b.send(p.message(p.make(seq, seq * 10))).unwrap();
            }
            let drain = |c: &mut wsx::proto::Connection| {
                let out = c.output();
                let mut v = Vec::new();
                while bytes::Buf::has_remaining(out) {
                    let chunk = bytes::Buf::chunk(out).to_vec();
                    bytes::Buf::advance(out, chunk.len());
                    v.extend(chunk);
                }
                v
            };
            assert_eq!(drain(&mut a), drain(&mut b), "text {text}");
        }
    }

    #[test]
    fn refuses_sizes_below_the_header() {
        assert!(Payloads::new(19, false).is_err());
        assert!(Payloads::new(20, false).is_ok());
        assert!(Payloads::new(39, true).is_err());
        let p = Payloads::new(20, false).unwrap();
        assert_eq!(p.check(false, &p.make(7, 9)), Ok((7, 9)));
    }

    #[test]
    fn filler_compresses_like_json_not_like_zeros() {
        use std::io::Write as _;
        let data = json_filler(64 * 1024, 3);
        assert!(std::str::from_utf8(&data).is_ok());
        assert!(data.is_ascii() && data.starts_with(b"{\"id\":"));
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&data).unwrap();
        let ratio = z.finish().unwrap().len() as f64 / data.len() as f64;
        // Zeros would compress ~1000:1; this must stay in JSON's range (roughly 3–8:1).
        assert!((0.08..0.5).contains(&ratio), "compressed to {ratio:.3} of its size");
    }
}
