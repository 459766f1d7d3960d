//! [`MaybeTlsStream`]: the transport of a client connection: TCP, TLS over TCP, or (feature
//! `http2`) a stream of an HTTP/2 connection.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The stream under a client's [`WebSocket`](crate::WebSocket): plain TCP for `ws://`, TLS for
/// `wss://` (the TCP stream may be a tunnel through a proxy), or an HTTP/2 stream when
/// [`ClientBuilder::http2`](crate::ClientBuilder::http2) is on and the server accepted the
/// WebSocket over HTTP/2. Reads and writes go straight to the variant; vectored writes stay
/// vectored.
#[derive(Debug)]
#[non_exhaustive]
pub enum MaybeTlsStream {
    /// `ws://`: the TCP stream itself.
    Plain(TcpStream),
    /// `wss://`: rustls over TCP (boxed: a TLS session is a few KB, a plain connection should
    /// not pay for it).
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// An extended CONNECT stream (RFC 8441) of an HTTP/2 connection, over TLS for `wss://`
    /// (or h2c with [`Http2Mode::Only`](crate::h2::Http2Mode::Only) for `ws://`). The TCP and
    /// TLS streams belong to the connection's task, which lives as long as this stream.
    #[cfg(feature = "http2")]
    Http2(Box<crate::h2::Http2Stream>),
}

impl MaybeTlsStream {
    /// The TCP stream underneath (for its addresses and socket options); `None` over HTTP/2,
    /// whose TCP connection belongs to the connection's task (see
    /// [`peer_addr`](Self::peer_addr)).
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Self::Plain(tcp) => Some(tcp),
            #[cfg(feature = "tls")]
            Self::Tls(tls) => Some(tls.get_ref().0),
            #[cfg(feature = "http2")]
            Self::Http2(_) => None,
        }
    }

    /// The address of the TCP peer: the server's, or the proxy's when the connection goes
    /// through one. Over HTTP/2, the address recorded when the connection was made.
    pub fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            #[cfg(feature = "http2")]
            Self::Http2(h2) => h2.peer_addr().ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "the HTTP/2 connection's peer address is not known")
            }),
            other => match other.tcp() {
                Some(tcp) => tcp.peer_addr(),
                None => Err(std::io::ErrorKind::NotConnected.into()),
            },
        }
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        match self {
            Self::Plain(_) => false,
            #[cfg(feature = "tls")]
            Self::Tls(_) => true,
            #[cfg(feature = "http2")]
            Self::Http2(h2) => h2.is_tls() == Some(true),
        }
    }

    /// The TLS session (negotiated version, cipher suite, ALPN, the server's certificates), for
    /// `wss://` over HTTP/1.1; `None` over HTTP/2 (the session belongs to the connection's
    /// task).
    #[cfg(feature = "tls")]
    pub fn tls_session(&self) -> Option<&rustls::ClientConnection> {
        match self {
            Self::Tls(tls) => Some(tls.get_ref().1),
            _ => None,
        }
    }

    /// The HTTP/2 stream carrying the WebSocket (its id, its connection's peer), when it is one.
    #[cfg(feature = "http2")]
    pub fn http2_stream(&self) -> Option<&crate::h2::Http2Stream> {
        match self {
            Self::Http2(h2) => Some(h2),
            _ => None,
        }
    }

    /// Whether the WebSocket is carried by an HTTP/2 stream (always `false` without the
    /// feature `http2`).
    pub fn is_http2(&self) -> bool {
        #[cfg(feature = "http2")]
        return matches!(self, Self::Http2(_));
        #[cfg(not(feature = "http2"))]
        false
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            MaybeTlsStream::Plain($s) => $e,
            #[cfg(feature = "tls")]
            MaybeTlsStream::Tls($s) => $e,
            #[cfg(feature = "http2")]
            MaybeTlsStream::Http2($s) => $e,
        }
    };
}

impl AsyncRead for MaybeTlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for MaybeTlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            Self::Tls(s) => s.is_write_vectored(),
            #[cfg(feature = "http2")]
            Self::Http2(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}
