//! XOR masking of frame payloads (RFC 6455 §5.3).
//!
//! Every frame sent by a client carries a 4-byte masking key, and each payload
//! byte `i` is XORed with `key[i % 4]`. Masking and unmasking are the same
//! operation, so [`apply_mask`] does both.
//!
//! A payload does not always arrive (or get produced) in one piece: a frame can
//! be unmasked as its bytes come in from the socket, or masked in several
//! buffers. The `offset` argument is the position of the first byte of the
//! given slice within the whole frame payload, so that each piece continues
//! with the right key byte: byte `i` of the slice is XORed with
//! `key[(offset + i) % 4]`.
//!
//! [`apply_mask`] is the fast version: it works on 8 bytes at a time with
//! plain integer operations, and on x86_64 CPUs with AVX2 (detected at run
//! time) on 32 bytes at a time. [`apply_mask_bytewise`] is the simple
//! reference version, used as the test oracle and as a benchmark baseline.
//!
//! This module uses `unsafe` for the AVX2 intrinsics and for the masking copy's writes into a
//! buffer's spare capacity ([`extend_masked_frame`]), behind the safe API; the only other
//! `unsafe` in the crate is `Utf8Bytes::as_str`.
#![allow(unsafe_code)]

/// Minimum length at which the AVX2 path is worth its setup cost.
#[cfg(target_arch = "x86_64")]
const AVX2_MIN_LEN: usize = 64;

/// Masks or unmasks `buf` in place with `key`.
///
/// `offset` is the position of `buf[0]` within the frame payload, so a payload
/// can be (un)masked in several pieces: byte `i` of `buf` is XORed with
/// `key[(offset + i) % 4]`. Use `offset = 0` for a whole payload.
///
/// Applying the same mask twice restores the original bytes.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    // From here on the key is rotated so that `buf[0]` uses `key[0]`.
    let key = rotate_key(key, offset);
    // Short payloads (most messages) are masked in line, longer ones out of line.
    #[cfg(target_arch = "x86_64")]
    if buf.len() >= AVX2_MIN_LEN {
        mask_long(buf, key);
        return;
    }
    mask_words(buf, key);
}

/// [`apply_mask`] for payloads of at least [`AVX2_MIN_LEN`] bytes.
#[cfg(target_arch = "x86_64")]
#[inline(never)]
fn mask_long(buf: &mut [u8], key: [u8; 4]) {
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 support was just checked at run time (the macro caches
        // the CPUID result, so this is a cheap load after the first call).
        unsafe { avx2::mask(buf, key) };
        return;
    }

    mask_words(buf, key);
}

/// Appends a whole masked frame to `out`: `head` (its encoded header, the first `head_len`
/// bytes), then `parts` one after another as one payload of `len` bytes masked with `key`.
///
/// Each payload byte is read, XORed and written once, rather than copied and then masked in
/// place (a second pass over the output): a client must mask every byte it sends, so its
/// payloads are copied anyway. One reservation and one length update per frame.
///
/// # Panics
///
/// If `parts` hold fewer than `len` bytes (bytes beyond `len` are left out), or if the frame's
/// length overflows `usize`.
pub fn extend_masked_frame<'a>(
    out: &mut bytes::BytesMut,
    head: &[u8; crate::frame::MAX_HEADER_LEN],
    head_len: usize,
    parts: impl IntoIterator<Item = &'a [u8]>,
    len: usize,
    key: [u8; 4],
) {
    let head_len = head_len.min(head.len());
    let Some(end) = head_len.checked_add(len) else {
        panic!("a frame of {len} payload bytes does not fit in memory");
    };
    out.reserve(end.max(head.len()));
    let spare = out.spare_capacity_mut();
    assert!(spare.len() >= end.max(head.len()));
    let base = spare.as_mut_ptr().cast::<u8>();
    // The whole 14-byte array (two word moves, not a copy of variable length): the bytes after
    // `head_len` are overwritten by the payload or left in the spare capacity.
    // SAFETY: `base` has room for `head.len()` bytes (asserted) and does not overlap `head`.
    unsafe { base.copy_from_nonoverlapping(head.as_ptr(), head.len()) };
    let mut at = head_len;
    for part in parts {
        if part.is_empty() {
            continue;
        }
        // Bounded by the length declared, whatever the parts turn out to be.
        let part = &part[..part.len().min(end - at)];
        // SAFETY: `base + at` has room for `part.len()` bytes (just bounded) and does not
        // overlap `part` (a shared borrow, while `out` is borrowed exclusively).
        unsafe { mask_copy(base.add(at), part, rotate_key(key, at - head_len)) };
        at += part.len();
    }
    // SAFETY: the first `at` bytes of the spare capacity were all written above.
    unsafe { out.set_len(out.len() + at) };
    // After the write: a frame whose parts fell short of `len` must not go out as if whole
    // (its header promises `len` bytes). Callers compute `len` from the same parts.
    assert_eq!(at, end, "the parts of a frame were shorter than its declared length");
}

/// Writes `src` XOR `key` (already rotated for `src[0]`) to `dst`: 32 bytes at a time with
/// AVX2 when the CPU has it and the input is long enough, else 8.
///
/// # Safety
///
/// `dst` must be valid for writes of `src.len()` bytes and must not overlap `src`.
#[inline]
unsafe fn mask_copy(dst: *mut u8, src: &[u8], key: [u8; 4]) {
    #[cfg(target_arch = "x86_64")]
    if src.len() >= AVX2_MIN_LEN && std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 support was just checked (the macro caches the CPUID result); the rest
        // is the caller's promise.
        unsafe { avx2::mask_copy(dst, src, key) };
        return;
    }
    // SAFETY: the caller's promise.
    unsafe { mask_copy_words(dst, src, key) };
}

/// Writes `src` XOR `key` (already rotated for `src[0]`) to `dst`, 8 bytes at a time.
///
/// # Safety
///
/// `dst` must be valid for writes of `src.len()` bytes and must not overlap `src`.
#[inline]
unsafe fn mask_copy_words(dst: *mut u8, src: &[u8], key: [u8; 4]) {
    let narrow = u32::from_ne_bytes(key);
    let wide = u64::from(narrow) | (u64::from(narrow) << 32);
    let (words, rest) = src.as_chunks::<8>();
    let mut at = dst;
    for word in words {
        // SAFETY: `at` stays within the `src.len()` bytes the caller vouches for (one word per
        // word of `src`); unaligned writes need no alignment.
        unsafe {
            at.cast::<[u8; 8]>().write_unaligned((u64::from_ne_bytes(*word) ^ wide).to_ne_bytes());
            at = at.add(8);
        }
    }
    // Words are multiples of 4 bytes: the tail starts at key phase 0, with at most one 4-byte
    // step, then at most 3 single bytes.
    let (halves, rest) = rest.as_chunks::<4>();
    if let Some(half) = halves.first() {
        // SAFETY: as above: the next 4 bytes of `dst`.
        unsafe {
            at.cast::<[u8; 4]>().write_unaligned((u32::from_ne_bytes(*half) ^ narrow).to_ne_bytes());
            at = at.add(4);
        }
    }
    for (i, byte) in rest.iter().enumerate() {
        // SAFETY: as above: the last `rest.len()` bytes of `dst`.
        unsafe { at.add(i).write(byte ^ key[i & 3]) };
    }
}

/// Whether `masked`, unmasked with `key`, equals `plain`, without writing the unmasked bytes
/// anywhere: one pass that reads each byte of both once (a copy, an unmasking and a comparison
/// would be three). `offset` is `masked[0]`'s position within its frame's payload, as for
/// [`apply_mask`]. Slices of different lengths are never equal.
///
/// A client that gets its own frames back (from a byte echo, say) can check them this way.
///
/// ```
/// use wsx_proto::mask::{apply_mask, masked_eq};
/// let key = [1, 2, 3, 4];
/// let mut wire = *b"hello, world";
/// apply_mask(&mut wire, key, 0);
/// assert!(masked_eq(&wire, b"hello, world", key, 0));
/// assert!(masked_eq(&wire[5..], b", world", key, 5));
/// assert!(!masked_eq(&wire, b"hello, World", key, 0));
/// ```
pub fn masked_eq(masked: &[u8], plain: &[u8], key: [u8; 4], offset: usize) -> bool {
    if masked.len() != plain.len() {
        return false;
    }
    let key = rotate_key(key, offset);
    #[cfg(target_arch = "x86_64")]
    if masked.len() >= AVX2_MIN_LEN && std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 support was just checked (the macro caches the CPUID result).
        return unsafe { avx2::masked_eq(masked, plain, key) };
    }
    masked_eq_words(masked, plain, key)
}

/// [`masked_eq`] 8 bytes at a time, for slices of one length; `key` already rotated so that
/// `masked[0]` uses `key[0]`.
#[inline]
fn masked_eq_words(masked: &[u8], plain: &[u8], key: [u8; 4]) -> bool {
    let narrow = u32::from_ne_bytes(key);
    let wide = u64::from(narrow) | (u64::from(narrow) << 32);
    let len = masked.len().min(plain.len());
    // Differences are gathered, not branched on: a mismatch is the rare case. Indexes rather
    // than zipped chunk iterators: those compiled to a long preamble for a few bytes.
    let mut diff = 0u64;
    let mut at = 0;
    while let (Some(m), Some(p)) = (masked[at..].first_chunk::<8>(), plain[at..].first_chunk::<8>()) {
        diff |= u64::from_ne_bytes(*m) ^ wide ^ u64::from_ne_bytes(*p);
        at += 8;
    }
    // `at` is a multiple of 4: the rest starts at key phase 0.
    while at < len {
        diff |= u64::from(masked[at] ^ key[at & 3] ^ plain[at]);
        at += 1;
    }
    diff == 0
}

/// Masks or unmasks `buf` in place with `key`, one byte at a time.
///
/// Same contract as [`apply_mask`] (byte `i` is XORed with
/// `key[(offset + i) % 4]`), but written in the most obvious way. It is kept
/// as the reference implementation for tests and benchmarks.
pub fn apply_mask_bytewise(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= key[(offset.wrapping_add(i)) % 4];
    }
}

/// Returns the key rotated so that index 0 is the key byte for payload
/// position `offset`.
#[inline]
fn rotate_key(key: [u8; 4], offset: usize) -> [u8; 4] {
    // Little-endian: byte `r` moves to the front when the word turns right by `8 r` bits.
    let r = (offset % 4) as u32;
    u32::from_le_bytes(key).rotate_right(8 * r).to_le_bytes()
}

/// Portable path: XORs 8 bytes at a time with a 64-bit key. `key` must
/// already be rotated so that `buf[0]` uses `key[0]`.
#[inline]
fn mask_words(buf: &mut [u8], key: [u8; 4]) {
    // The key twice over, built as integers (a byte at a time costs more than the masking of
    // a short payload).
    let narrow = u32::from_ne_bytes(key);
    let wide = u64::from(narrow) | (u64::from(narrow) << 32);
    let (words, rest) = buf.as_chunks_mut::<8>();
    for word in words {
        *word = (u64::from_ne_bytes(*word) ^ wide).to_ne_bytes();
    }
    // Every word is a multiple of 4 bytes, so the tail starts at key phase 0: at most one
    // 4-byte word, then at most 3 single bytes.
    let (halves, rest) = rest.as_chunks_mut::<4>();
    if let Some(half) = halves.first_mut() {
        *half = (u32::from_ne_bytes(*half) ^ narrow).to_ne_bytes();
    }
    mask_bytes(rest, key);
}

/// Simple loop for short inputs and tails. `key` must already be rotated so
/// that `buf[0]` uses `key[0]`.
#[inline]
fn mask_bytes(buf: &mut [u8], key: [u8; 4]) {
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte ^= key[i & 3];
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use core::arch::x86_64::{
        __m256i, _mm256_loadu_si256, _mm256_or_si256, _mm256_set1_epi32, _mm256_setzero_si256, _mm256_storeu_si256,
        _mm256_testz_si256, _mm256_xor_si256,
    };

    /// AVX2 path: XORs 32 bytes at a time. `key` must already be rotated so
    /// that `buf[0]` uses `key[0]`.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn mask(buf: &mut [u8], key: [u8; 4]) {
        // The key in each 32-bit lane: x86 is little-endian, so each lane's bytes in memory are
        // `key` in order.
        let key_vec = _mm256_set1_epi32(i32::from_le_bytes(key));

        let mut chunks = buf.chunks_exact_mut(32);
        for chunk in &mut chunks {
            let ptr = chunk.as_mut_ptr().cast::<__m256i>();
            // SAFETY: `chunk` is exactly 32 bytes, valid for reads and writes
            // and not aliased (we hold `&mut`); the unaligned `loadu`/`storeu`
            // have no alignment requirement; AVX2 is available (see above).
            unsafe { _mm256_storeu_si256(ptr, _mm256_xor_si256(_mm256_loadu_si256(ptr), key_vec)) };
        }
        // Chunks are multiples of 4 bytes, so the key phase is unchanged.
        super::mask_words(chunks.into_remainder(), key);
    }

    /// [`super::masked_eq`] 32 bytes at a time; `key` already rotated, the slices of one length.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn masked_eq(masked: &[u8], plain: &[u8], key: [u8; 4]) -> bool {
        let key_vec = _mm256_set1_epi32(i32::from_le_bytes(key));
        let len = masked.len().min(plain.len());
        let (m, p) = (masked.as_ptr(), plain.as_ptr());
        // Two chunks a step, into two sums: indexes, not zipped iterators, which compiled to
        // twice the instructions per chunk.
        let (mut diff_a, mut diff_b) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        let mut at = 0;
        while at + 64 <= len {
            // SAFETY: bytes `at..at + 64` of both slices are in bounds (the loop's condition);
            // `loadu` needs no alignment.
            unsafe {
                let m_a = _mm256_loadu_si256(m.add(at).cast::<__m256i>());
                let m_b = _mm256_loadu_si256(m.add(at + 32).cast::<__m256i>());
                let p_a = _mm256_loadu_si256(p.add(at).cast::<__m256i>());
                let p_b = _mm256_loadu_si256(p.add(at + 32).cast::<__m256i>());
                diff_a = _mm256_or_si256(diff_a, _mm256_xor_si256(_mm256_xor_si256(m_a, key_vec), p_a));
                diff_b = _mm256_or_si256(diff_b, _mm256_xor_si256(_mm256_xor_si256(m_b, key_vec), p_b));
            }
            at += 64;
        }
        if at + 32 <= len {
            // SAFETY: as above, for bytes `at..at + 32`.
            unsafe {
                let m_a = _mm256_loadu_si256(m.add(at).cast::<__m256i>());
                let p_a = _mm256_loadu_si256(p.add(at).cast::<__m256i>());
                diff_a = _mm256_or_si256(diff_a, _mm256_xor_si256(_mm256_xor_si256(m_a, key_vec), p_a));
            }
            at += 32;
        }
        let diff = _mm256_or_si256(diff_a, diff_b);
        // `at` is a multiple of 32, so of 4: the key phase is unchanged.
        _mm256_testz_si256(diff, diff) == 1 && super::masked_eq_words(&masked[at..], &plain[at..], key)
    }

    /// [`mask`] from `src` into `dst`: 32 bytes at a time, each read and written once.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2; `dst` must be valid for writes of `src.len()` bytes and must
    /// not overlap `src`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn mask_copy(dst: *mut u8, src: &[u8], key: [u8; 4]) {
        let key_vec = _mm256_set1_epi32(i32::from_le_bytes(key));
        let (chunks, rest) = src.as_chunks::<32>();
        let mut at = dst;
        for chunk in chunks {
            // SAFETY: `chunk` is 32 readable bytes; `at` is within the bytes the caller vouches
            // for (one chunk per chunk of `src`); `loadu`/`storeu` need no alignment.
            unsafe {
                let v = _mm256_xor_si256(_mm256_loadu_si256(chunk.as_ptr().cast::<__m256i>()), key_vec);
                _mm256_storeu_si256(at.cast::<__m256i>(), v);
                at = at.add(32);
            }
        }
        // Whole chunks are multiples of 4 bytes: the key phase is unchanged.
        // SAFETY: the rest of `dst`, as long as `rest`.
        unsafe { super::mask_copy_words(at, rest, key) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc_hello_vector() {
        // RFC 6455 §5.7: a single-frame masked text message containing "Hello".
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut payload, key, 0);
        assert_eq!(&payload, b"Hello");

        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask_bytewise(&mut payload, key, 0);
        assert_eq!(&payload, b"Hello");
    }

    #[test]
    fn rfc_hello_vector_in_pieces() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        let (a, b) = payload.split_at_mut(3);
        apply_mask(a, key, 0);
        apply_mask(b, key, 3);
        assert_eq!(&payload, b"Hello");
    }

    #[test]
    fn every_length_and_offset_matches_oracle() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for start in 0..4 {
            for len in 0..(data.len() - start) {
                for offset in 0..8 {
                    let mut fast = data[start..start + len].to_vec();
                    let mut slow = fast.clone();
                    apply_mask(&mut fast, key, offset);
                    apply_mask_bytewise(&mut slow, key, offset);
                    assert_eq!(fast, slow, "start {start} len {len} offset {offset}");
                }
            }
        }
    }

    #[test]
    fn masked_copies_match_the_oracle_at_every_length_and_alignment() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        let head = [0u8; crate::frame::MAX_HEADER_LEN];
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for start in 0..4 {
            for len in [0, 1, 3, 4, 7, 8, 9, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 296] {
                for split in 0..8.min(len + 1) {
                    // The second part starts at payload offset `split`: every key phase.
                    let src = &data[start..start + len];
                    let mut out = bytes::BytesMut::from(&b"head"[..]);
                    extend_masked_frame(&mut out, &head, 0, [&src[..split], &src[split..]], len, key);
                    let mut want = src.to_vec();
                    apply_mask_bytewise(&mut want, key, 0);
                    assert_eq!(&out[..4], b"head", "len {len} split {split}");
                    assert_eq!(&out[4..], &want[..], "start {start} len {len} split {split}");
                }
            }
        }
    }

    #[test]
    fn masked_frames_are_the_header_then_the_parts_masked_as_one_payload() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let data: Vec<u8> = (0..300u32).map(|i| (i * 13 + 5) as u8).collect();
        for head_len in [2, 6, 8, 14] {
            for split in [0, 1, 3, 5, 64, 100] {
                for len in [0, 4, 7, 40, 99, 200, 299] {
                    let split = split.min(len);
                    let head: [u8; crate::frame::MAX_HEADER_LEN] = std::array::from_fn(|i| 0xa0 + i as u8);
                    let mut out = bytes::BytesMut::from(&b"xy"[..]);
                    let parts = [&data[..split], &data[split..len]];
                    extend_masked_frame(&mut out, &head, head_len, parts, len, key);
                    let mut want = b"xy".to_vec();
                    want.extend_from_slice(&head[..head_len]);
                    let mut payload = data[..len].to_vec();
                    apply_mask_bytewise(&mut payload, key, 0);
                    want.extend_from_slice(&payload);
                    assert_eq!(&out[..], &want[..], "head {head_len} split {split} len {len}");
                }
            }
        }
    }

    #[test]
    fn a_masked_frame_never_writes_past_its_declared_length() {
        // Parts longer than the length given are cut there (a frame whose header says 10 bytes
        // carries 10), never written past the room reserved for it.
        let mut out = bytes::BytesMut::new();
        let head = [0u8; crate::frame::MAX_HEADER_LEN];
        let long = vec![7u8; 1000];
        extend_masked_frame(&mut out, &head, 2, [&long[..], &long[..]], 10, [0; 4]);
        assert_eq!(out.len(), 12);
        assert_eq!(&out[2..], &[7u8; 10][..]);
    }

    #[test]
    #[should_panic(expected = "does not fit in memory")]
    fn a_frame_length_that_overflows_is_refused() {
        let mut out = bytes::BytesMut::new();
        let big = vec![0u8; 1 << 16];
        extend_masked_frame(&mut out, &[0; crate::frame::MAX_HEADER_LEN], 14, [&big[..]], usize::MAX - 1, [1; 4]);
    }

    #[test]
    #[should_panic(expected = "shorter than its declared length")]
    fn parts_short_of_the_declared_length_are_refused() {
        let mut out = bytes::BytesMut::new();
        extend_masked_frame(&mut out, &[0; crate::frame::MAX_HEADER_LEN], 2, [&b"abc"[..]], 10, [1; 4]);
    }

    #[test]
    fn large_buffer_at_odd_alignment() {
        let key = [0x12, 0x34, 0x56, 0x78];
        let len = (1 << 20) + 3;
        let data: Vec<u8> = (0..len + 3).map(|i| (i * 31 + i / 256) as u8).collect();
        for start in 1..=3 {
            for offset in [0, 1, 2, 3, 5] {
                let mut fast = data.clone();
                let mut slow = data.clone();
                apply_mask(&mut fast[start..start + len], key, offset);
                apply_mask_bytewise(&mut slow[start..start + len], key, offset);
                assert!(fast == slow, "start {start} offset {offset}");
                // Bytes outside the slice are untouched.
                assert_eq!(fast[..start], data[..start]);
                assert_eq!(fast[start + len..], data[start + len..]);
            }
        }
    }

    #[test]
    fn portable_path_matches_oracle() {
        // `apply_mask` may take the AVX2 path; check the portable one directly.
        let key = [0xa5, 0x5a, 0x0f, 0xf0];
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 13 + 1) as u8).collect();
        for start in 0..4 {
            for len in [0, 1, 7, 8, 9, 31, 32, 33, 64, 100, 995] {
                for offset in 0..4 {
                    let mut fast = data[start..start + len].to_vec();
                    let mut slow = fast.clone();
                    mask_words(&mut fast, rotate_key(key, offset));
                    apply_mask_bytewise(&mut slow, key, offset);
                    assert_eq!(fast, slow, "start {start} len {len} offset {offset}");
                }
            }
        }
    }

    #[test]
    fn huge_offset_does_not_overflow() {
        let key = [1, 2, 3, 4];
        let mut fast = vec![0u8; 100];
        let mut slow = fast.clone();
        apply_mask(&mut fast, key, usize::MAX);
        apply_mask_bytewise(&mut slow, key, usize::MAX);
        assert_eq!(fast, slow);
        assert_eq!(slow[0], key[usize::MAX % 4]);
    }

    #[test]
    fn masked_eq_finds_every_changed_byte_at_every_length_and_offset() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        let plain: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0, 1, 3, 4, 5, 8, 31, 32, 33, 63, 64, 65, 96, 127, 128, 129, 300] {
            for offset in 0..4 {
                let plain = &plain[..len];
                let mut masked = plain.to_vec();
                apply_mask_bytewise(&mut masked, key, offset);
                assert!(masked_eq(&masked, plain, key, offset), "len {len} offset {offset}");
                if len > 0 {
                    assert!(!masked_eq(&masked, plain, key, offset + 1), "len {len} offset {offset}: wrong phase");
                    assert!(!masked_eq(&masked[1..], plain, key, offset), "len {len}: shorter");
                    // A piece from further in continues the key's phase.
                    assert!(masked_eq(&masked[1..], &plain[1..], key, offset + 1), "len {len} offset {offset}: tail");
                }
                for at in 0..len {
                    for bit in [0x01, 0x80] {
                        masked[at] ^= bit;
                        assert!(!masked_eq(&masked, plain, key, offset), "len {len} offset {offset} byte {at}");
                        masked[at] ^= bit;
                    }
                }
            }
        }
    }

    proptest! {
        #[test]
        fn fast_matches_oracle(
            data in proptest::collection::vec(any::<u8>(), 0..2000),
            key in any::<[u8; 4]>(),
        ) {
            for offset in 0..8 {
                let mut fast = data.clone();
                let mut slow = data.clone();
                apply_mask(&mut fast, key, offset);
                apply_mask_bytewise(&mut slow, key, offset);
                prop_assert_eq!(&fast, &slow, "offset {}", offset);
            }
        }

        #[test]
        fn masked_eq_matches_unmasking_then_comparing(
            data in proptest::collection::vec(any::<u8>(), 1..2000),
            key in any::<[u8; 4]>(),
            offset in 0usize..8,
            flip in any::<prop::sample::Index>(),
            bit in 0u32..8,
        ) {
            let mut unmasked = data.clone();
            apply_mask_bytewise(&mut unmasked, key, offset);
            prop_assert!(masked_eq(&data, &unmasked, key, offset));
            // The same length, one bit off anywhere.
            let mut other = unmasked.clone();
            other[flip.index(data.len())] ^= 1 << bit;
            prop_assert!(!masked_eq(&data, &other, key, offset));
        }

        #[test]
        fn masking_twice_is_identity(
            data in proptest::collection::vec(any::<u8>(), 0..2000),
            key in any::<[u8; 4]>(),
            offset in 0usize..8,
        ) {
            let mut buf = data.clone();
            apply_mask(&mut buf, key, offset);
            apply_mask(&mut buf, key, offset);
            prop_assert_eq!(buf, data);
        }

        #[test]
        fn masking_in_pieces_matches_whole(
            data in proptest::collection::vec(any::<u8>(), 0..2000),
            key in any::<[u8; 4]>(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut whole = data.clone();
            apply_mask(&mut whole, key, 0);

            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
            points.push(0);
            points.push(data.len());
            points.sort_unstable();
            let mut pieces = data.clone();
            for w in points.windows(2) {
                apply_mask(&mut pieces[w[0]..w[1]], key, w[0]);
            }
            prop_assert_eq!(pieces, whole);
        }
    }
}
