//! [`WebSocket`]: an open connection over any `AsyncRead + AsyncWrite` stream.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use wsx_proto::{CloseCode, CloseFrame, Connection, Message, State, Utf8Bytes};

use crate::io::{now, poll_flush_all, poll_recv, queue, ReadState, Whole};
use crate::split::{self, WsReader, WsWriter};
use crate::Error;

/// Options of the tokio layer on top of the protocol core's [`wsx_proto::Config`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WebSocketConfig {
    /// Limits and timers of the protocol core (frame and message sizes, keepalive, idle and close
    /// timeouts).
    pub proto: wsx_proto::Config,
    /// When this many bytes are waiting to be written, `send` waits for the socket to drain
    /// before queueing more (backpressure). Default 1 MiB: more buffers more, less writes smaller.
    pub write_buffer_high_water: usize,
    /// permessage-deflate (RFC 7692): offered by a client, accepted by a server when the client
    /// offers it. Default `None` (off). A compressed connection costs about 47 KB of inflate
    /// state and up to 380 KB of deflate state (window 15), allocated at its first compressed
    /// message; see [`wsx_proto::deflate`].
    pub deflate: Option<wsx_proto::deflate::DeflateConfig>,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self { proto: wsx_proto::Config::default(), write_buffer_high_water: 1 << 20, deflate: None }
    }
}

/// An open WebSocket connection over a stream `S` (a `TcpStream`, a TLS stream, an in-memory
/// duplex…), in either role.
///
/// - [`recv`](Self::recv) returns the next message; pings are answered and the peer's close is
///   echoed without your help.
/// - [`send`](Self::send) queues a message and writes it; when more received messages are
///   already buffered, the write is deferred to the next `recv`, so that an echo loop answers a
///   batch of messages with one write (corking), while a lone message leaves at once.
/// - [`close`](Self::close) runs the closing handshake.
/// - it is a [`Stream`](futures_core::Stream) of messages and a [`Sink`](futures_sink::Sink) of
///   messages, and [`split`](Self::split)s into a reader and a writer for two tasks.
///
/// ```no_run
/// # async fn echo(mut ws: wsx::WebSocket<tokio::net::TcpStream>) -> Result<(), wsx::Error> {
/// while let Some(msg) = ws.recv().await {
///     let msg = msg?;
///     if msg.is_data() {
///         ws.send(msg).await?;
///     }
/// }
/// # Ok(()) }
/// ```
pub struct WebSocket<S> {
    stream: S,
    conn: Connection,
    read: ReadState,
    high_water: usize,
    protocol: Option<String>,
    extensions: Option<String>,
}

impl<S> std::fmt::Debug for WebSocket<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket").field("conn", &self.conn).field("protocol", &self.protocol).finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// Wraps a stream whose opening handshake is already done. `leftover` holds bytes read past
    /// the handshake (the first frames), `protocol` the negotiated subprotocol and `extensions`
    /// the agreed `Sec-WebSocket-Extensions` value (already set up on `conn`).
    pub fn from_parts(
        stream: S,
        conn: Connection,
        leftover: BytesMut,
        config: &WebSocketConfig,
        protocol: Option<String>,
        extensions: Option<String>,
    ) -> Self {
        // An empty leftover would only pin the handshake's buffer; reads size their own.
        let leftover = if leftover.is_empty() { BytesMut::new() } else { leftover };
        Self {
            stream,
            conn,
            read: ReadState::with_buffer(leftover),
            high_water: config.write_buffer_high_water,
            protocol,
            extensions,
        }
    }

    /// Receives the next message: text, binary, ping, pong, or the peer's close. After the close
    /// (or an error) the transport is closed properly and `None` follows.
    ///
    /// Errors: [`Error::Proto`] when the peer broke the protocol or a limit (we have sent the
    /// close frame naming the fault), [`Error::AbnormalClosure`] when the TCP connection ended
    /// without a close frame, [`Error::Io`]. Keep calling `recv` after an error to let the
    /// connection wind down; it then returns `None`.
    ///
    /// Timers (keepalive, idle, close timeout) run while `recv` is being awaited.
    ///
    /// **Cancel safety**: cancel-safe. All progress lives in the `WebSocket`, so using `recv` in
    /// `tokio::select!` loses no message.
    pub async fn recv(&mut self) -> Option<Result<Message, Error>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        poll_recv(cx, &mut self.conn, &mut Whole(&mut self.stream), &mut self.read)
    }

    /// Sends a message (text, binary, ping, pong; a close starts the closing handshake without
    /// waiting for it). Waits while more than the write-buffer high-water mark is pending.
    ///
    /// **Cancel safety**: not cancel-safe. If cancelled after the message was queued, it is still
    /// written by the next `send`, `flush` or `recv`; if cancelled before, it is dropped.
    pub async fn send(&mut self, message: Message) -> Result<(), Error> {
        if self.conn.pending_output() >= self.high_water {
            self.flush().await?;
        }
        self.queue(message)?;
        if !self.read.has_buffered_frame() {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends a text message. Same as `send(Message::Text(..))`.
    ///
    /// **Cancel safety**: as [`send`](Self::send).
    pub async fn send_text(&mut self, text: impl Into<Utf8Bytes>) -> Result<(), Error> {
        self.send(Message::Text(text.into())).await
    }

    /// Sends a binary message. Same as `send(Message::Binary(..))`.
    ///
    /// **Cancel safety**: as [`send`](Self::send).
    pub async fn send_binary(&mut self, data: impl Into<bytes::Bytes>) -> Result<(), Error> {
        self.send(Message::Binary(data.into())).await
    }

    /// Sends one frame of a fragmented message (see [`Connection::send_fragment`]).
    ///
    /// **Cancel safety**: as [`send`](Self::send).
    pub async fn send_fragment(&mut self, text: bool, payload: bytes::Bytes, fin: bool) -> Result<(), Error> {
        if self.conn.pending_output() >= self.high_water {
            self.flush().await?;
        }
        self.conn.send_fragment(text, payload, fin)?;
        self.flush().await
    }

    fn queue(&mut self, message: Message) -> Result<(), Error> {
        Ok(queue(&mut self.conn, message)?)
    }

    /// Writes everything queued and flushes the stream.
    ///
    /// **Cancel safety**: cancel-safe; what was not written stays queued.
    pub async fn flush(&mut self) -> Result<(), Error> {
        poll_fn(|cx| poll_flush_all(cx, &mut self.conn, &mut Whole(&mut self.stream))).await?;
        Ok(())
    }

    /// Runs the closing handshake: sends a close frame with `code` and `reason`, then reads
    /// (discarding data messages) until the peer's close arrives or the close timeout passes, and
    /// closes the transport. A code must be 1000–1003, 1007–1014 or 3000–4999 and the reason
    /// at most 123 bytes, else [`Error::Proto`] with a usage error and nothing is sent.
    ///
    /// Returns the peer's close frame (`None` when it carried no code, or never came).
    ///
    /// **Cancel safety**: not cancel-safe for the handshake as a whole; the close frame, once
    /// queued, is still sent by later calls.
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<Option<CloseFrame>, Error> {
        self.close_with(Some(CloseFrame::new(code, reason))).await
    }

    /// As [`close`](Self::close), with an optional frame (`None`: a close frame without code).
    ///
    /// **Cancel safety**: as [`close`](Self::close).
    pub async fn close_with(&mut self, frame: Option<CloseFrame>) -> Result<Option<CloseFrame>, Error> {
        if self.conn.state() == State::Open {
            self.conn.close(frame, now())?;
        }
        let mut peer = None;
        while let Some(ev) = self.recv().await {
            match ev {
                Ok(Message::Close(f)) => peer = f,
                Ok(_) => {}
                Err(e @ Error::Proto(wsx_proto::Error::Timeout(_))) => return Err(e),
                Err(_) => {}
            }
        }
        Ok(peer)
    }

    /// The connection's state (the browser's readyState).
    pub fn state(&self) -> State {
        self.conn.state()
    }

    /// The subprotocol agreed in the handshake.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// The extensions agreed in the handshake (the browser's `extensions`), e.g.
    /// `permessage-deflate; client_max_window_bits=15`.
    pub fn extensions(&self) -> Option<&str> {
        self.extensions.as_deref()
    }

    /// Bytes queued and not yet written (the browser's `bufferedAmount`).
    pub fn buffered_amount(&self) -> usize {
        self.conn.pending_output()
    }

    /// The protocol core, for inspection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// Splits into a reader and a writer that can live in two tasks. The reader still answers
    /// pings and the peer's close by itself.
    pub fn split(self) -> (WsReader<S>, WsWriter<S>)
    where
        S: Send + 'static,
    {
        split::split(self.stream, self.conn, self.read, self.high_water, self.protocol)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> futures_core::Stream for WebSocket<S> {
    type Item = Result<Message, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_recv(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> futures_sink::Sink<Message> for WebSocket<S> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        if this.conn.pending_output() >= this.high_water {
            std::task::ready!(poll_flush_all(cx, &mut this.conn, &mut Whole(&mut this.stream)))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Error> {
        self.get_mut().queue(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        poll_flush_all(cx, &mut this.conn, &mut Whole(&mut this.stream)).map_err(Error::from)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let this = self.get_mut();
        if this.conn.state() == State::Open {
            this.conn.close(Some(CloseFrame::new(CloseCode::NORMAL, "")), now())?;
        }
        poll_flush_all(cx, &mut this.conn, &mut Whole(&mut this.stream)).map_err(Error::from)
    }
}
