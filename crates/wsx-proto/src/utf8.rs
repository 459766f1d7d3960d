//! Incremental UTF-8 validation for text messages.
//!
//! The payload of a text message must be valid UTF-8 (RFC 6455 §8.1), but a
//! message can arrive in many fragments, and each frame in many reads. A
//! conforming endpoint should fail the connection as soon as it sees a byte
//! that makes the message invalid (Autobahn cases 6.4.*), not only when the
//! message is complete.
//!
//! [`Utf8Validator`] validates the pieces as they come: it carries the (at most
//! three) bytes of a code point split across pieces, and reports an error from
//! the first [`Utf8Validator::feed`] call whose bytes cannot continue into valid
//! UTF-8. [`validate`] checks a whole buffer at once.
//!
//! Both use [`simdutf8`], so each piece costs one SIMD validation pass plus a
//! constant amount of work for the code point at its start and end.

/// Error: the bytes are not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid UTF-8 in text message")]
pub struct InvalidUtf8;

/// Value of `pending_len` once an error has been seen (errors are sticky
/// until [`Utf8Validator::finish`] or [`Utf8Validator::reset`]).
const POISONED: u8 = u8::MAX;

/// Validates a text message fed in arbitrary pieces (fragments, partial
/// frames).
///
/// Call [`feed`](Self::feed) with each piece in order, then
/// [`finish`](Self::finish) at the end of the message. After `feed` has
/// returned an error, later `feed` calls keep returning it until the validator
/// is reset (by `finish` or [`reset`](Self::reset)).
#[derive(Debug, Clone, Default)]
pub struct Utf8Validator {
    /// Leading bytes of a code point that is not complete yet.
    pending: [u8; 3],
    /// Number of meaningful bytes in `pending` (0..=3), or [`POISONED`].
    pending_len: u8,
}

impl Utf8Validator {
    /// Creates a validator at the start of a message.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates the next piece of the message.
    ///
    /// Returns `Err` as soon as the bytes seen so far (in this and earlier
    /// pieces of the message) cannot be the prefix of any valid UTF-8 string,
    /// that is, from the call whose piece contains the offending byte. A code
    /// point split between pieces is fine.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), InvalidUtf8> {
        let rest = match self.pending_len {
            0 => chunk,
            POISONED => return Err(InvalidUtf8),
            _ => match self.complete_pending(chunk) {
                Ok(rest) => rest,
                Err(e) => {
                    self.pending_len = POISONED;
                    return Err(e);
                }
            },
        };
        if rest.is_empty() {
            return Ok(());
        }
        self.feed_boundary_aligned(rest).inspect_err(|_| {
            self.pending_len = POISONED;
        })
    }

    /// End of message: returns `Err` if an incomplete code point is pending
    /// (or an error was seen). Resets the validator for the next message
    /// either way.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let result = if self.pending_len == 0 { Ok(()) } else { Err(InvalidUtf8) };
        self.reset();
        result
    }

    /// Forgets any pending state (partial code point or error), as at the
    /// start of a new message.
    pub fn reset(&mut self) {
        self.pending_len = 0;
    }

    /// True when no partial code point is pending, i.e. the bytes fed so far
    /// are complete, valid UTF-8.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.pending_len == 0
    }

    /// How many bytes at the end of what was fed are the start of a character that is not
    /// complete yet (0 to 3; 0 after an error). Everything fed before them is complete, valid
    /// UTF-8, which is how a text message can be handed out in chunks that are each valid.
    #[must_use]
    pub fn incomplete_len(&self) -> usize {
        match self.pending_len {
            POISONED => 0,
            n => usize::from(n),
        }
    }

    /// Feeds the first bytes of `chunk` to the pending partial code point.
    /// Returns the rest of `chunk`, which then starts at a code point
    /// boundary (or is empty, with the code point still pending).
    fn complete_pending<'a>(&mut self, chunk: &'a [u8]) -> Result<&'a [u8], InvalidUtf8> {
        let have = usize::from(self.pending_len);
        let need = sequence_len(self.pending[0]).saturating_sub(have);
        let take = need.min(chunk.len());

        let mut seq = [0u8; 4];
        seq[..have].copy_from_slice(&self.pending[..have]);
        seq[have..have + take].copy_from_slice(&chunk[..take]);
        let seq = &seq[..have + take];

        match simdutf8::compat::from_utf8(seq) {
            Ok(_) => {
                self.pending_len = 0;
                Ok(&chunk[take..])
            }
            // Still a viable prefix: the chunk ran out before the code point
            // ended (so `take == chunk.len()` and `seq` is at most 3 bytes).
            Err(e) if e.error_len().is_none() && seq.len() <= self.pending.len() => {
                self.pending[..seq.len()].copy_from_slice(seq);
                // Cannot truncate: at most 3.
                self.pending_len = seq.len() as u8;
                Ok(&[])
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// Validates `bytes`, which starts at a code point boundary, and stores
    /// a trailing incomplete code point, if any, in `pending`.
    fn feed_boundary_aligned(&mut self, bytes: &[u8]) -> Result<(), InvalidUtf8> {
        // Split off the last (up to 3) bytes that may be an incomplete code
        // point: they start at the last non-continuation byte, if that byte is
        // among the last 3. If the bytes are a viable UTF-8 prefix, then
        // `body` ends at a code point boundary, so it must be valid on its
        // own; and if `body` is invalid, the bytes are not viable either (an
        // incomplete sequence at its end is cut short by a non-continuation
        // byte). So the bulk can use the fast, yes/no `basic` validator.
        let split =
            bytes.iter().enumerate().rev().take(3).find(|&(_, &b)| !is_continuation(b)).map_or(bytes.len(), |(i, _)| i);
        let (body, tail) = bytes.split_at(split);

        if simdutf8::basic::from_utf8(body).is_err() {
            return Err(InvalidUtf8);
        }
        match simdutf8::compat::from_utf8(tail) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let partial = &tail[e.valid_up_to()..];
                // `tail` is at most 3 bytes.
                self.pending[..partial.len()].copy_from_slice(partial);
                self.pending_len = partial.len() as u8;
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }
}

/// Validates a whole buffer at once (fast path for unfragmented text frames).
pub fn validate(bytes: &[u8]) -> Result<(), InvalidUtf8> {
    match simdutf8::basic::from_utf8(bytes) {
        Ok(_) => Ok(()),
        Err(_) => Err(InvalidUtf8),
    }
}

/// True for UTF-8 continuation bytes (`10xxxxxx`).
#[inline]
fn is_continuation(byte: u8) -> bool {
    byte & 0xC0 == 0x80
}

/// Length of the UTF-8 sequence started by a lead byte (1 for anything that
/// is not a multi-byte lead byte; only lead bytes are ever pending).
#[inline]
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KOSME: &[u8] = "κόσμε".as_bytes();

    /// Feeds `bytes` cut at `cuts` (sorted positions, duplicates allowed so
    /// that empty chunks occur). Returns the index of the first failing feed
    /// (or `None`), and the result of `finish`.
    fn feed_split(bytes: &[u8], cuts: &[usize]) -> (Option<usize>, Result<(), InvalidUtf8>) {
        let mut v = Utf8Validator::new();
        let mut first_err = None;
        let mut start = 0;
        for (i, &end) in cuts.iter().chain(std::iter::once(&bytes.len())).enumerate() {
            if v.feed(&bytes[start..end]).is_err() && first_err.is_none() {
                first_err = Some(i);
            }
            start = end;
        }
        let fin = v.finish();
        assert!(v.is_complete());
        (first_err, fin)
    }

    /// Smallest `k` such that `bytes[..k]` is not the prefix of any valid
    /// UTF-8 string.
    fn first_non_viable(bytes: &[u8]) -> Option<usize> {
        (1..=bytes.len()).find(|&k| matches!(std::str::from_utf8(&bytes[..k]), Err(e) if e.error_len().is_some()))
    }

    /// Index of the chunk (as produced by `feed_split`) containing byte `idx`.
    fn chunk_of(cuts: &[usize], idx: usize) -> usize {
        cuts.iter().filter(|&&c| c <= idx).count()
    }

    fn check(bytes: &[u8], cuts: &[usize]) {
        let std_ok = std::str::from_utf8(bytes).is_ok();
        let (first_err, fin) = feed_split(bytes, cuts);
        assert_eq!(fin.is_ok(), std_ok, "bytes {bytes:02x?} cuts {cuts:?}");
        assert_eq!(validate(bytes).is_ok(), std_ok, "bytes {bytes:02x?}");
        let expected = first_non_viable(bytes).map(|k0| chunk_of(cuts, k0 - 1));
        assert_eq!(first_err, expected, "bytes {bytes:02x?} cuts {cuts:?}");
    }

    #[test]
    fn kosme_valid_at_every_split() {
        for a in 0..=KOSME.len() {
            for b in a..=KOSME.len() {
                let (err, fin) = feed_split(KOSME, &[a, b]);
                assert_eq!(err, None);
                assert_eq!(fin, Ok(()));
            }
        }
        assert_eq!(validate(KOSME), Ok(()));
    }

    #[test]
    fn autobahn_surrogate_fails_on_chunk_with_second_byte() {
        let bytes = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited";
        let bad = 12; // the 0xa0 after 0xed
        assert_eq!(bytes[bad - 1..=bad], [0xed, 0xa0]);
        assert_eq!(validate(bytes), Err(InvalidUtf8));
        for a in 0..=bytes.len() {
            let (err, fin) = feed_split(bytes, &[a]);
            assert_eq!(err, Some(usize::from(a <= bad)), "split at {a}");
            assert_eq!(fin, Err(InvalidUtf8));
            for b in a..=bytes.len() {
                check(bytes, &[a, b]);
            }
        }
    }

    #[test]
    fn autobahn_6_4_cases() {
        let cases: [&[u8]; 4] = [
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80edited",
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4",
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90",
        ];
        for bytes in cases {
            for a in 0..=bytes.len() {
                for b in a..=bytes.len() {
                    check(bytes, &[a, b]);
                }
            }
        }
    }

    #[test]
    fn errors_are_sticky_until_reset() {
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"\xff"), Err(InvalidUtf8));
        assert!(!v.is_complete());
        assert_eq!(v.feed(b"abc"), Err(InvalidUtf8));
        v.reset();
        assert!(v.is_complete());
        assert_eq!(v.feed(b"abc"), Ok(()));
        assert_eq!(v.finish(), Ok(()));
    }

    #[test]
    fn finish_resets_after_incomplete() {
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(b"a\xe2\x82"), Ok(()));
        assert!(!v.is_complete());
        assert_eq!(v.finish(), Err(InvalidUtf8));
        assert!(v.is_complete());
        // The next message starts fresh: a lone continuation byte is invalid.
        assert_eq!(v.feed(b"\xac"), Err(InvalidUtf8));
        v.reset();
        assert_eq!(v.feed("€".as_bytes()), Ok(()));
        assert_eq!(v.finish(), Ok(()));
    }

    #[test]
    fn large_chunks_with_split_code_points() {
        let text = "héllo wörld ∑ 😀 ".repeat(1000);
        let bytes = text.as_bytes();
        for cut in [1, 63, 64, 65, 1000, 4097, bytes.len() - 1] {
            check(bytes, &[cut]);
            check(bytes, &[cut / 2, cut]);
        }
        let mut bad = bytes.to_vec();
        bad[5000] = 0xff;
        check(&bad, &[4000]);
        check(&bad, &[5000]);
        check(&bad, &[5001]);
    }

    fn segment() -> impl Strategy<Value = Vec<u8>> {
        const TRICKY: &[&[u8]] = &[
            b"\xed\xa0\x80",         // high surrogate
            b"\xed\xbf\xbf",         // low surrogate
            b"\xed\x9f\xbf",         // U+D7FF, valid
            b"\xf4\x90\x80\x80",     // > U+10FFFF
            b"\xf4\x8f\xbf\xbf",     // U+10FFFF, valid
            b"\xf5\x80\x80\x80",     // invalid lead
            b"\xc0\x80",             // overlong NUL
            b"\xc1\xbf",             // overlong
            b"\xe0\x80\x80",         // overlong
            b"\xe0\x9f\xbf",         // overlong
            b"\xf0\x80\x80\x80",     // overlong
            b"\xf0\x8f\xbf\xbf",     // overlong
            b"\x80",                 // lone continuation
            b"\xbf",                 // lone continuation
            b"\xc2",                 // truncated
            b"\xe2\x82",             // truncated
            b"\xf0\x9f\x98",         // truncated
            b"\xf8\x88\x80\x80\x80", // 5-byte form
            b"\xfe",
            b"\xff",
            b"\xef\xbf\xbf", // U+FFFF, valid
        ];
        const VALID: &[&str] = &["κόσμε", "😀", "\u{80}", "\u{7ff}", "\u{800}", "\u{10000}", "€"];
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..8),
            proptest::collection::vec(any::<char>(), 0..10)
                .prop_map(|cs| cs.into_iter().collect::<String>().into_bytes()),
            proptest::sample::select(TRICKY).prop_map(<[u8]>::to_vec),
            proptest::sample::select(VALID).prop_map(|s| s.as_bytes().to_vec()),
            (0usize..100).prop_map(|n| b"ascii".repeat(n)),
        ]
    }

    fn message() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(segment(), 0..12).prop_map(|segs| segs.concat())
    }

    fn message_and_cuts() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
        (message(), proptest::collection::vec(any::<prop::sample::Index>(), 0..8)).prop_map(|(bytes, idx)| {
            let mut cuts: Vec<usize> = idx.iter().map(|i| i.index(bytes.len() + 1)).collect();
            cuts.sort_unstable();
            (bytes, cuts)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn split_feed_matches_std_and_fails_fast((bytes, cuts) in message_and_cuts()) {
            check(&bytes, &cuts);
        }

        #[test]
        fn byte_at_a_time_matches_std(bytes in message()) {
            let cuts: Vec<usize> = (0..bytes.len()).collect();
            check(&bytes, &cuts);
        }

        #[test]
        fn valid_strings_accepted_at_any_split(
            s in ".{0,40}",
            idx in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let bytes = s.as_bytes();
            let mut cuts: Vec<usize> = idx.iter().map(|i| i.index(bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let (err, fin) = feed_split(bytes, &cuts);
            prop_assert_eq!(err, None);
            prop_assert_eq!(fin, Ok(()));
        }
    }
}
