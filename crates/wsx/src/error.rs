//! The error type of the tokio layer.

use wsx_proto::handshake::HandshakeError;

/// Everything that can go wrong on a WebSocket connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The protocol core refused something: the peer broke the protocol or a limit (a close frame
    /// naming the fault was sent), we misused the API, or a timer ran out.
    #[error(transparent)]
    Proto(#[from] wsx_proto::Error),
    /// The opening handshake failed or was refused.
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// The opening handshake did not complete within the handshake timeout.
    #[error("handshake timed out after {0:?}")]
    HandshakeTimeout(std::time::Duration),
    /// The peer closed the TCP connection without a closing handshake (close code 1006).
    #[error("connection closed abnormally: the peer closed the transport without a close frame")]
    AbnormalClosure,
    /// The connection is closed; nothing more can be sent or received.
    #[error("the connection is closed")]
    Closed,
    /// The URL could not be used.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// Reading, writing or connecting failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The close code this error stands for, as the browser would report it: the code we sent
    /// when we failed the connection, or 1006 when the connection died without a close frame.
    pub fn close_code(&self) -> Option<wsx_proto::CloseCode> {
        match self {
            Self::Proto(e) => e.close_code(),
            Self::AbnormalClosure | Self::Io(_) => Some(wsx_proto::CloseCode::ABNORMAL),
            _ => None,
        }
    }
}
