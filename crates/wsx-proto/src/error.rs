//! Errors, sorted by who is to blame: the peer ([`ProtocolError`], [`LimitError`]), the caller
//! ([`UsageError`]), or the clock ([`TimeoutError`]).

use crate::frame::CloseCode;

/// Every error the connection state machine reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer broke RFC 6455. The connection has queued a close frame with
    /// [`ProtocolError::close_code`] and is now closed.
    #[error("protocol error by peer: {0}")]
    Protocol(#[from] ProtocolError),
    /// The peer exceeded one of our configured limits. The connection has queued a close frame
    /// with code 1009 (message too big) and is now closed.
    #[error("limit exceeded by peer: {0}")]
    Limit(#[from] LimitError),
    /// The caller asked for something the connection's state or the RFC forbids; nothing was
    /// sent and the connection is unchanged.
    #[error("API misuse: {0}")]
    Usage(#[from] UsageError),
    /// A timer ran out; the connection is now closed.
    #[error("timeout: {0}")]
    Timeout(#[from] TimeoutError),
}

impl Error {
    /// The close code this error puts on the wire, if it made us close the connection.
    pub fn close_code(&self) -> Option<CloseCode> {
        match self {
            Self::Protocol(e) => Some(e.close_code()),
            Self::Limit(_) => Some(CloseCode::MESSAGE_TOO_BIG),
            Self::Timeout(TimeoutError::Idle) => Some(CloseCode::GOING_AWAY),
            Self::Usage(_) | Self::Timeout(_) => None,
        }
    }
}

/// A violation of RFC 6455 by the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame used a reserved opcode (0x3–0x7, 0xB–0xF).
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A 64-bit payload length had its most significant bit set.
    #[error("64-bit payload length with the most significant bit set")]
    InvalidLength,
    /// RSV1, RSV2 or RSV3 was set but no negotiated extension defines it.
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    /// A client sent an unmasked frame (§5.1).
    #[error("client frame is not masked")]
    UnmaskedFrame,
    /// A server sent a masked frame (§5.1).
    #[error("server frame is masked")]
    MaskedFrame,
    /// A control frame carried more than 125 bytes (§5.5).
    #[error("control frame longer than 125 bytes")]
    ControlFrameTooLong,
    /// A control frame had FIN clear (§5.5).
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    /// A continuation frame arrived with no message in progress (§5.4).
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    /// A new text or binary frame arrived while a fragmented message was in progress (§5.4).
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    /// A text message or a close reason was not valid UTF-8 (§8.1).
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// A compressed message could not be inflated (RFC 7692 §6.2).
    #[error("invalid compressed data")]
    InvalidCompressedData,
    /// A close frame's payload was one byte long (§5.5.1).
    #[error("close frame with a one-byte payload")]
    InvalidClosePayload,
    /// A close frame carried a code that may not appear on the wire (§7.4).
    #[error("close code {0} may not be sent")]
    InvalidCloseCode(u16),
}

impl ProtocolError {
    /// The close code that names this fault: 1007 for invalid UTF-8, 1002 otherwise.
    pub fn close_code(self) -> CloseCode {
        match self {
            Self::InvalidUtf8 | Self::InvalidCompressedData => CloseCode::INVALID_PAYLOAD,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

/// A configured limit that the peer exceeded. Answered with close code 1009.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// A frame declared a payload longer than [`Config::max_frame_size`](crate::Config::max_frame_size).
    #[error("frame of {declared} bytes exceeds max_frame_size ({limit})")]
    FrameTooLarge {
        /// The declared payload length.
        declared: u64,
        /// The configured limit.
        limit: usize,
    },
    /// A message grew past [`Config::max_message_size`](crate::Config::max_message_size).
    #[error("message exceeds max_message_size ({limit} bytes)")]
    MessageTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// A compressed message inflated past
    /// [`Config::max_inflated_message_size`](crate::Config::max_inflated_message_size) (when it is
    /// the smaller of the two message limits).
    #[error("compressed message inflates past max_inflated_message_size ({limit} bytes)")]
    InflatedMessageTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// A message had more fragments than [`Config::max_fragments`](crate::Config::max_fragments).
    #[error("message exceeds max_fragments ({limit})")]
    TooManyFragments {
        /// The configured limit.
        limit: usize,
    },
}

/// A request the connection refused because of its state or the RFC's rules on what we send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// Data or control frames can only be sent while the connection is open.
    #[error("the connection is not open (state {0:?})")]
    NotOpen(crate::State),
    /// A close was already sent; a second one is never sent.
    #[error("a close frame was already sent")]
    AlreadyClosing,
    /// Control frame payloads are limited to 125 bytes.
    #[error("control frame payload longer than 125 bytes")]
    ControlFrameTooLong,
    /// The close code may not be sent on the wire (see [`CloseCode::is_valid_on_wire`]).
    #[error("close code {0} may not be sent")]
    InvalidCloseCode(u16),
    /// A close reason is limited to 123 bytes (125 minus the code).
    #[error("close reason longer than 123 bytes")]
    CloseReasonTooLong,
    /// A fragment continued a message that was never started, or started a second one.
    #[error("fragment sequence error: {0}")]
    Fragmentation(&'static str),
}

/// A timer that ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimeoutError {
    /// No pong (or any other frame) arrived within the keepalive timeout after a ping.
    #[error("no answer to keepalive ping")]
    Keepalive,
    /// Nothing arrived for the idle timeout.
    #[error("connection idle for too long")]
    Idle,
    /// The peer did not answer our close frame within the close timeout.
    #[error("peer did not complete the close handshake")]
    Close,
    /// Pending output made no progress for the write timeout: the peer stopped reading. The
    /// transport is given up without a close frame (none could be written).
    #[error("peer stopped reading: no write progress within the write timeout")]
    Write,
    /// With output at the high-water mark, the peer took less than a mark's worth of it within
    /// the slow-reader timeout: it reads too slowly to keep up. The transport is given up
    /// without a close frame (it would queue behind everything the peer has not taken).
    #[error("peer reads too slowly: less than the high-water mark taken within the slow-reader timeout")]
    SlowReader,
}
