//! The error type of the tokio layer.

use wsx_proto::handshake::HandshakeError;

use crate::tls_error::TlsError;

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
    /// The connection is closed (by a closing handshake, a failure, or the transport ending);
    /// nothing more can be sent. Returned by `send` and `feed` after that.
    #[error("the connection is closed")]
    Closed,
    /// The configuration's limits contradict each other (see
    /// [`Config::validate`](wsx_proto::Config::validate)); nothing was sent.
    #[error(transparent)]
    Config(#[from] wsx_proto::ConfigError),
    /// The URL could not be used.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// TLS failed: a certificate was refused, the peer refused ours or the handshake, or a
    /// certificate or key file cannot be used. I/O errors that carry a rustls error arrive
    /// here, sorted, rather than as [`Error::Io`].
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// Connecting through a proxy failed: the proxy's URL (without its password), where it came
    /// from, and what it answered. Boxed, to keep `Error` small.
    #[error(transparent)]
    Proxy(Box<crate::proxy::ProxyError>),
    /// HTTP/2 under a WebSocket failed (feature `http2`, [`crate::h2`]): the server did not
    /// choose `h2`, or the connection or the stream failed before the WebSocket opened.
    #[cfg(feature = "http2")]
    #[error(transparent)]
    Http2(#[from] crate::h2::Http2Error),
    /// Reading, writing or connecting failed.
    #[error("I/O error: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        #[cfg(feature = "tls")]
        if let Some(tls) = crate::tls::from_io(&e) {
            return Self::Tls(tls);
        }
        Self::Io(e)
    }
}

/// Who or what is to blame for an [`Error`], for deciding what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The peer broke the protocol or the handshake rules (a close frame naming the fault was
    /// sent where one could be), or refused the handshake; or a proxy refused the tunnel.
    Peer,
    /// The peer exceeded one of our limits (message or frame size, handshake head size, the size of
    /// a proxy's answer…).
    Limit,
    /// We asked for something the connection's state or the RFC forbids (sending after close,
    /// an invalid close code, a bad URL or header): fix the calling code.
    Usage,
    /// A deadline passed: handshake, keepalive, idle, close, or a write that made no progress.
    Timeout,
    /// The transport failed or ended without a closing handshake.
    Io,
    /// TLS failed: a certificate (ours or the peer's) was not accepted, the TLS handshake
    /// failed, or a certificate or key file is unusable.
    Tls,
}

impl Error {
    /// Who or what is to blame. API misuse is [`ErrorKind::Usage`], never a peer's fault.
    pub fn kind(&self) -> ErrorKind {
        use wsx_proto::Error as P;
        match self {
            Self::Proto(P::Protocol(_)) => ErrorKind::Peer,
            Self::Proto(P::Limit(_)) => ErrorKind::Limit,
            Self::Proto(P::Timeout(_)) | Self::HandshakeTimeout(_) => ErrorKind::Timeout,
            Self::Proto(_) | Self::Closed | Self::InvalidUrl(_) | Self::Config(_) => ErrorKind::Usage,
            Self::Handshake(h) => match h {
                HandshakeError::HeadTooLarge { .. } | HandshakeError::TooManyHeaders { .. } => ErrorKind::Limit,
                HandshakeError::InvalidUri(_) | HandshakeError::InvalidConfig(_) => ErrorKind::Usage,
                _ => ErrorKind::Peer,
            },
            Self::Proxy(p) => p.kind(),
            Self::AbnormalClosure | Self::Io(_) => ErrorKind::Io,
            Self::Tls(_) => ErrorKind::Tls,
            #[cfg(feature = "http2")]
            Self::Http2(crate::h2::Http2Error::Protocol(e)) if e.is_io() => ErrorKind::Io,
            #[cfg(feature = "http2")]
            Self::Http2(_) => ErrorKind::Peer,
        }
    }

    /// The close code this error stands for, as the browser would report it: the code we sent
    /// when we failed the connection, or 1006 when the connection died without a close frame.
    pub fn close_code(&self) -> Option<wsx_proto::CloseCode> {
        match self {
            // The peer went silent (keepalive), never answered our close frame (close), or took
            // too little of our output (write, slow reader): the connection ended without a
            // closing handshake, as a browser reports it.
            Self::Proto(wsx_proto::Error::Timeout(
                wsx_proto::error::TimeoutError::Keepalive
                | wsx_proto::error::TimeoutError::Close
                | wsx_proto::error::TimeoutError::Write
                | wsx_proto::error::TimeoutError::SlowReader,
            )) => Some(wsx_proto::CloseCode::ABNORMAL),
            Self::Proto(e) => e.close_code(),
            Self::AbnormalClosure | Self::Io(_) | Self::Tls(_) => Some(wsx_proto::CloseCode::ABNORMAL),
            #[cfg(feature = "http2")]
            Self::Http2(_) => Some(wsx_proto::CloseCode::ABNORMAL),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsx_proto::error::TimeoutError;
    use wsx_proto::CloseCode;

    /// A connection given up on a timer without a closing handshake reports 1006, as a browser
    /// would; the idle timeout sends 1001 itself. (`wsx serve` logged no code at all for a
    /// client that vanished until the keepalive timeout: found by scripts/soak.)
    #[test]
    fn timeouts_map_to_the_code_a_browser_reports() {
        let code = |t| Error::Proto(wsx_proto::Error::Timeout(t)).close_code();
        assert_eq!(code(TimeoutError::Keepalive), Some(CloseCode::ABNORMAL));
        assert_eq!(code(TimeoutError::Close), Some(CloseCode::ABNORMAL));
        assert_eq!(code(TimeoutError::Write), Some(CloseCode::ABNORMAL));
        assert_eq!(code(TimeoutError::Idle), Some(CloseCode::GOING_AWAY));
        assert_eq!(Error::AbnormalClosure.close_code(), Some(CloseCode::ABNORMAL));
    }
}
