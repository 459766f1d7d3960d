//! Messages as the application sees them, and the close frame's contents.

use bytes::Bytes;

use crate::frame::CloseCode;

/// Bytes that are guaranteed to be valid UTF-8: the payload of a text message, kept as a
/// [`Bytes`] so that it can be a zero-copy slice of the read buffer.
///
/// The invariant (the bytes are valid UTF-8) is established once, when the value is built:
/// [`try_from_bytes`](Self::try_from_bytes) validates, the `From<String>`, `From<&str>` and
/// [`from_static`](Self::from_static) conversions start from a `str`, and the connection builds
/// text messages from bytes its incremental validator has accepted. Nothing hands out the
/// bytes mutably, so [`as_str`](Self::as_str) does not check them again.
#[derive(Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// Wraps bytes after checking that they are UTF-8.
    pub fn try_from_bytes(bytes: Bytes) -> Result<Self, crate::utf8::InvalidUtf8> {
        crate::utf8::validate(&bytes)?;
        Ok(Self(bytes))
    }

    /// Wraps a static string without copying.
    pub const fn from_static(s: &'static str) -> Self {
        Self(Bytes::from_static(s.as_bytes()))
    }

    /// Wraps bytes already known to be UTF-8.
    ///
    /// Crate-private on purpose: [`as_str`](Self::as_str) trusts the invariant without checking,
    /// so every caller must have validated exactly these bytes (the connection's incremental
    /// validator fed with every byte of the message, then `finish`ed). Debug builds check again.
    pub(crate) fn from_bytes_unchecked(bytes: Bytes) -> Self {
        debug_assert!(std::str::from_utf8(&bytes).is_ok(), "Utf8Bytes::from_bytes_unchecked: invalid UTF-8");
        Self(bytes)
    }

    /// The text, without copying and without validating again: the bytes were validated when
    /// this value was built.
    // The one place outside `mask` where this crate uses `unsafe`.
    #[allow(unsafe_code)]
    pub fn as_str(&self) -> &str {
        // SAFETY: `self.0` is valid UTF-8. Every constructor establishes that (see the type's
        // doc: validated, taken from a `str`, or validated by the crate before
        // `from_bytes_unchecked`), and `Bytes` is immutable, so it still holds.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Unwraps the underlying bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Deref for Utf8Bytes {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for Utf8Bytes {
    fn from(s: String) -> Self {
        Self(Bytes::from(s))
    }
}

impl From<&str> for Utf8Bytes {
    fn from(s: &str) -> Self {
        Self(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl TryFrom<Bytes> for Utf8Bytes {
    type Error = crate::utf8::InvalidUtf8;
    fn try_from(bytes: Bytes) -> Result<Self, Self::Error> {
        Self::try_from_bytes(bytes)
    }
}

impl PartialEq<str> for Utf8Bytes {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Utf8Bytes {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The status code and reason of a close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code.
    pub code: CloseCode,
    /// The reason: UTF-8, at most 123 bytes.
    pub reason: Utf8Bytes,
}

impl CloseFrame {
    /// The most bytes a close reason may have: a control frame's 125 less the code
    /// (RFC 6455 §5.5).
    pub const MAX_REASON: usize = 123;

    /// A close frame with a code and a reason.
    pub fn new(code: CloseCode, reason: impl Into<Utf8Bytes>) -> Self {
        Self { code, reason: reason.into() }
    }

    /// `reason` cut to [`MAX_REASON`](Self::MAX_REASON) bytes at a character boundary, for a
    /// reason made from text of any length (an error message, say), which a close would
    /// otherwise refuse whole.
    ///
    /// ```
    /// use wsx_proto::CloseFrame;
    /// let long = "é".repeat(100); // 200 bytes
    /// assert_eq!(CloseFrame::fit_reason(&long).len(), 122);
    /// assert_eq!(CloseFrame::fit_reason("short"), "short");
    /// ```
    pub fn fit_reason(reason: &str) -> &str {
        let mut end = reason.len().min(Self::MAX_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        &reason[..end]
    }
}

/// A WebSocket message, received or to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message (valid UTF-8).
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping. The connection answers received pings by itself.
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// A close frame; `None` when it carried no status code (reported as 1005).
    Close(Option<CloseFrame>),
}

impl Message {
    /// A text message.
    pub fn text(text: impl Into<Utf8Bytes>) -> Self {
        Self::Text(text.into())
    }

    /// A binary message.
    pub fn binary(data: impl Into<Bytes>) -> Self {
        Self::Binary(data.into())
    }

    /// Whether this is a text or binary message (not a control frame).
    pub fn is_data(&self) -> bool {
        matches!(self, Self::Text(_) | Self::Binary(_))
    }

    /// The payload bytes (for a close, the empty slice).
    pub fn payload(&self) -> &[u8] {
        match self {
            Self::Text(t) => t.as_bytes(),
            Self::Binary(b) | Self::Ping(b) | Self::Pong(b) => b,
            Self::Close(_) => &[],
        }
    }
}

/// An event from [`Connection::read_ref`](crate::Connection::read_ref): a whole data message
/// lent from the read buffer, or any other event, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageRef<'a> {
    /// A whole text message (valid UTF-8), still in the read buffer.
    Text(&'a str),
    /// A whole binary message, still in the read buffer.
    Binary(&'a [u8]),
    /// Any other event, as [`read_event`](crate::Connection::read_event) returns it.
    Owned(Message),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn close_reasons_fit() {
        assert_eq!(CloseFrame::fit_reason("short"), "short");
        let long = "é".repeat(100);
        let cut = CloseFrame::fit_reason(&long);
        assert!(cut.len() <= 123 && long.starts_with(cut) && cut.len() == 122);
    }

    #[test]
    fn every_constructor_gives_the_text_back() {
        let owned = String::from("grüße ✓");
        assert_eq!(Utf8Bytes::from(owned.clone()).as_str(), owned);
        assert_eq!(Utf8Bytes::from("grüße ✓").as_str(), "grüße ✓");
        assert_eq!(Utf8Bytes::from_static("grüße ✓").as_str(), "grüße ✓");
        assert_eq!(Utf8Bytes::default().as_str(), "");
        let bytes = Bytes::from_static("grüße ✓".as_bytes());
        assert_eq!(Utf8Bytes::try_from_bytes(bytes.clone()).unwrap().as_str(), "grüße ✓");
        assert_eq!(Utf8Bytes::try_from(bytes).unwrap().as_str(), "grüße ✓");
        // Cut inside `ü`, and a lone continuation byte: refused, never wrapped.
        assert!(Utf8Bytes::try_from_bytes(Bytes::from_static(&"grüße".as_bytes()[..3])).is_err());
        assert!(Utf8Bytes::try_from_bytes(Bytes::from_static(b"\x80")).is_err());
        assert!(Utf8Bytes::try_from_bytes(Bytes::from_static(b"\xed\xa0\x80")).is_err(), "a surrogate");
    }

    proptest! {
        /// `try_from_bytes` accepts exactly what the standard library calls UTF-8, so `as_str`'s
        /// unchecked conversion only ever sees valid UTF-8.
        #[test]
        fn try_from_bytes_accepts_exactly_utf8(bytes in proptest::collection::vec(any::<u8>(), 0..64),
                                                text in "\\PC{0,16}") {
            for candidate in [bytes, text.into_bytes()] {
                let std = std::str::from_utf8(&candidate).map(str::to_owned);
                match Utf8Bytes::try_from_bytes(Bytes::from(candidate.clone())) {
                    Ok(u) => prop_assert_eq!(Ok(u.as_str().to_owned()), std),
                    Err(_) => prop_assert!(std.is_err(), "valid UTF-8 refused: {:?}", candidate),
                }
            }
        }
    }
}
