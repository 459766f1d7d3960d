//! [`WebSocket`]: an open connection over any `AsyncRead + AsyncWrite` stream.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use wsx_proto::{CloseCode, CloseFrame, Connection, Message, PreparedMessage, State, StreamEvent, Utf8Bytes};

use crate::io::Core;
use crate::split::{self, WsReader, WsWriter};
use crate::Error;

/// Options of the tokio layer on top of the protocol core's [`wsx_proto::Config`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct WebSocketConfig {
    /// Limits and timers of the protocol core: frame and message sizes, the write-buffer
    /// high-water mark, and the keepalive, idle, close and write timeouts.
    pub proto: wsx_proto::Config,
    /// permessage-deflate (RFC 7692): offered by a client, accepted by a server when the client
    /// offers it. Default `None` (off). A compressed connection costs about 47 KB of inflate
    /// state and up to 380 KB of deflate state (window 15), allocated at its first compressed
    /// message; see [`wsx_proto::deflate`].
    pub deflate: Option<wsx_proto::deflate::DeflateConfig>,
}

impl WebSocketConfig {
    /// The protocol settings as one `Arc` shared by the connections this thread makes with equal
    /// settings: a server's idle connections each hold a pointer instead of a copy (about
    /// 170 bytes each). One entry per thread: a thread alternating between two configurations
    /// makes a copy per connection, as before, and stays correct.
    pub(crate) fn shared_proto(&self) -> std::sync::Arc<wsx_proto::Config> {
        thread_local! {
            static LAST: std::cell::RefCell<Option<std::sync::Arc<wsx_proto::Config>>> =
                const { std::cell::RefCell::new(None) };
        }
        // A thread whose thread-locals are being torn down gets a copy of its own.
        LAST.try_with(|last| {
            let mut last = last.borrow_mut();
            match &*last {
                Some(shared) if **shared == self.proto => shared.clone(),
                _ => last.insert(std::sync::Arc::new(self.proto.clone())).clone(),
            }
        })
        .unwrap_or_else(|_| std::sync::Arc::new(self.proto.clone()))
    }
}

/// An open WebSocket connection over a stream `S` (a `TcpStream`, a TLS stream, an in-memory
/// duplex…), in either role.
///
/// - [`recv`](Self::recv) returns the next message; pings are answered and the peer's close is
///   echoed without your help.
/// - [`send`](Self::send) queues a message and writes it: when it returns `Ok`, the bytes were
///   handed to the stream (and the stream flushed).
/// - [`feed`](Self::feed) only queues: the bytes leave with the next `send` or `flush`, or when
///   `recv` has handled what was already read and must wait for more. An echo loop that feeds
///   its replies answers a whole batch of received messages with one write.
/// - [`close`](Self::close) runs the closing handshake.
/// - it is a [`Stream`](futures_core::Stream) of messages and a [`Sink`](futures_sink::Sink) of
///   messages, and [`split`](Self::split)s into a reader and a writer for two tasks.
///
/// ```no_run
/// # async fn echo(mut ws: wsx::WebSocket<tokio::net::TcpStream>) -> Result<(), wsx::Error> {
/// while let Some(msg) = ws.recv().await {
///     let msg = msg?;
///     if msg.is_data() {
///         // Replies leave together once `recv` has handled every message already read.
///         ws.feed(msg).await?;
///     }
/// }
/// # Ok(()) }
/// ```
///
/// # Backpressure and deadlines
///
/// While at least [`write_buffer_high_water`](wsx_proto::Config::write_buffer_high_water) bytes
/// wait to be written, `send` and `feed` wait; `recv` reads on (pings are answered, but while
/// the output is at the mark only the newest keeps its pong, held until the output is below
/// it), so two peers that both send big messages at once both progress. A write that makes no
/// progress for the [`write_timeout`](wsx_proto::Config::write_timeout) fails the connection with
/// [`TimeoutError::Write`](wsx_proto::error::TimeoutError::Write); with a
/// [`slow_reader_timeout`](wsx_proto::Config::slow_reader_timeout), so does a peer that, with
/// output at the mark, takes less than a mark's worth of it within that time
/// ([`TimeoutError::SlowReader`](wsx_proto::error::TimeoutError::SlowReader)).
pub struct WebSocket<S> {
    core: Core<S>,
    /// The subprotocol and extensions agreed and the request kept, boxed together and only when
    /// there are any: most connections have none of them, and an idle connection's size is a
    /// benchmark figure.
    agreed: Option<Box<Agreed>>,
}

/// What the opening handshake agreed besides the WebSocket itself, and the request a server
/// kept.
/// (The strings as `Box<str>`: with the request's pointer the box stays in 40 bytes.)
#[derive(Default)]
struct Agreed {
    protocol: Option<Box<str>>,
    extensions: Option<Box<str>>,
    /// The upgrade request a server accepted (boxed again: a connection with a subprotocol but
    /// no kept request pays a pointer for it, not a request's size).
    request: Option<Box<http::Request<()>>>,
}

impl Agreed {
    /// `None` when nothing was agreed (no allocation).
    fn boxed(protocol: Option<String>, extensions: Option<String>) -> Option<Box<Self>> {
        (protocol.is_some() || extensions.is_some()).then(|| {
            Box::new(Self {
                protocol: protocol.map(String::into),
                extensions: extensions.map(String::into),
                request: None,
            })
        })
    }

    /// The subprotocol and the extensions, taken back out.
    fn unbox(agreed: Option<Box<Self>>) -> (Option<String>, Option<String>) {
        agreed.map_or((None, None), |a| (a.protocol.map(String::from), a.extensions.map(String::from)))
    }
}

impl<S> std::fmt::Debug for WebSocket<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket")
            .field("conn", &self.core.conn)
            .field("protocol", &self.agreed.as_ref().and_then(|a| a.protocol.as_deref()))
            .finish_non_exhaustive()
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
        protocol: Option<String>,
        extensions: Option<String>,
    ) -> Self {
        Self { core: Core::new(stream, conn, leftover), agreed: Agreed::boxed(protocol, extensions) }
    }

    /// Takes the connection apart: the stream, the protocol state machine, and the bytes read
    /// from the stream but not parsed yet ([`from_parts`](Self::from_parts) puts such parts
    /// together; the subprotocol and extensions are not returned: read them first). For
    /// drivers that run the sans-I/O core themselves after the handshake (the `wsx bench`
    /// generator does, to answer a read's worth of echoes with one write and no future per
    /// message).
    ///
    /// The caller takes over what this driver did:
    /// - output the connection has produced and not written yet stays in
    ///   [`Connection::output`](wsx_proto::Connection::output), and a stream that buffers
    ///   (TLS) may hold written bytes until it is flushed;
    /// - timers: poll [`Connection::poll_timeout`](wsx_proto::Connection::poll_timeout);
    /// - a peer's close that was read but not yet returned by [`recv`](Self::recv) shows in
    ///   [`Connection::close_received`](wsx_proto::Connection::close_received).
    ///
    /// Take apart a healthy connection: a write error (the stream's write side is broken,
    /// reading goes on) and a write-stall deadline in progress are this driver's records and
    /// are not in the parts; a connection given up for a write timeout comes back `Closed`.
    pub fn into_parts(self) -> (S, Connection, BytesMut) {
        self.core.into_parts()
    }

    /// Receives the next message: text, binary, ping, pong, or the peer's close. After the close
    /// (or an error) the transport is closed properly and `None` follows.
    ///
    /// Errors: [`Error::Proto`] when the peer broke the protocol or a limit (we have sent the
    /// close frame naming the fault), [`Error::AbnormalClosure`] when the TCP connection ended
    /// without a close frame, [`Error::Io`]. Keep calling `recv` after an error to let the
    /// connection wind down; it then returns `None`.
    ///
    /// Timers (keepalive, idle, close timeout) are armed while `recv` is awaited; a due timer
    /// also runs in `send`/`flush`. `recv` reads on while output is over the high-water mark
    /// (what the peer can make us owe it meanwhile is bounded: one pong, one close echo).
    /// After the transport ends, [`state`](Self::state) is [`State::Closed`].
    ///
    /// **Cancel safety**: cancel-safe. All progress lives in the `WebSocket`, so using `recv` in
    /// `tokio::select!` loses no message.
    pub async fn recv(&mut self) -> Option<Result<Message, Error>> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        self.core.poll_recv(cx, None)
    }

    /// Receives the next piece of a data message as it arrives, without assembling the message,
    /// or a control message: for messages too large to hold whole (Python websockets'
    /// `recv_streaming`). See [`wsx_proto::stream`] for the chunks' guarantees.
    ///
    /// Returns [`StreamEvent::Chunk`] for the pieces of text and binary messages, in order (the
    /// first with `first`, the last with `fin`; a text chunk is valid UTF-8 on its own), and
    /// [`StreamEvent::Control`] for pings (already answered), pongs and the peer's close (already
    /// echoed), between chunks when the peer sends them between fragments. An uncompressed chunk
    /// is at most one read buffer's worth (a few hundred KiB); a compressed message's chunks are
    /// about 64 KiB. The limits apply to the whole message as with [`recv`](Self::recv) (raise
    /// [`max_message_size`](wsx_proto::Config::max_message_size) to stream larger messages); the
    /// connection holds about one read buffer meanwhile.
    ///
    /// Errors, timers, backpressure and the end of the connection are as with `recv`, and the
    /// two may be mixed message by message. A message that `recv_chunk` started must be finished
    /// with `recv_chunk` (`recv` then fails with a usage error and changes nothing).
    ///
    /// **Cancel safety**: cancel-safe, as `recv`: no chunk is lost.
    ///
    /// ```no_run
    /// use tokio::io::{AsyncWrite, AsyncWriteExt};
    /// use wsx::StreamEvent;
    ///
    /// # async fn save(
    /// #     mut ws: wsx::WebSocket<tokio::net::TcpStream>,
    /// #     mut file: impl AsyncWrite + Unpin,
    /// # ) -> Result<(), Box<dyn std::error::Error>> {
    /// // Write each message to a file as it arrives, whatever its size.
    /// while let Some(event) = ws.recv_chunk().await {
    ///     match event? {
    ///         StreamEvent::Chunk(chunk) => {
    ///             file.write_all(&chunk.data).await?;
    ///             if chunk.fin {
    ///                 file.flush().await?;
    ///             }
    ///         }
    ///         StreamEvent::Control(control) => println!("control: {control:?}"),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn recv_chunk(&mut self) -> Option<Result<StreamEvent, Error>> {
        poll_fn(|cx| self.core.poll_recv_chunk(cx, None)).await
    }

    /// Sends a message (text, binary, ping, pong; a close starts the closing handshake without
    /// waiting for it) and writes it: `Ok` means every queued byte was handed to the stream and
    /// the stream was flushed. Waits first while pending output is over the high-water mark.
    ///
    /// Errors: [`Error::Closed`] once the connection is closed; a usage error
    /// ([`Error::Proto`]) for what the state forbids (data after our close); the write timeout or
    /// an I/O error, after which the connection is closed.
    ///
    /// **Cancel safety**: not cancel-safe. If cancelled after the message was queued, it is still
    /// written by the next `send`, `flush` or `recv`; if cancelled before, it is dropped.
    pub async fn send(&mut self, message: Message) -> Result<(), Error> {
        self.feed(message).await?;
        self.flush().await
    }

    /// Queues a message without writing it (batching): its bytes leave with the next
    /// [`send`](Self::send) or [`flush`](Self::flush), or when [`recv`](Self::recv) has handled
    /// everything already read and must wait for the peer. Waits first while pending output is
    /// over the high-water mark. Dropping the `WebSocket` loses what was fed and not flushed.
    ///
    /// **Cancel safety**: cancel-safe; if cancelled, the message was not queued.
    // Not an `async fn`: its future would hold the message twice (as the argument and as a
    // local), and an echo loop's idle state is the size of its largest future.
    #[allow(clippy::manual_async_fn, reason = "an async fn would store the message twice")]
    pub fn feed(&mut self, message: Message) -> impl Future<Output = Result<(), Error>> + '_ {
        async move {
            poll_fn(|cx| self.core.poll_ready(cx)).await?;
            self.core.queue(message)
        }
    }

    /// Sends a message prepared for many connections (see [`PreparedMessage`]): the same bytes
    /// as `send` of that message, but framed and compressed once for every connection that can
    /// share them, which is what a broadcast wants. Waits, writes and fails as
    /// [`send`](Self::send) does.
    ///
    /// ```no_run
    /// # async fn broadcast(members: &mut [wsx::WebSocket<tokio::net::TcpStream>]) -> Result<(), wsx::Error> {
    /// let news = wsx::PreparedMessage::text("one encoding for everyone");
    /// for ws in members {
    ///     ws.send_prepared(&news).await?;
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// **Cancel safety**: as [`send`](Self::send).
    pub async fn send_prepared(&mut self, message: &PreparedMessage) -> Result<(), Error> {
        self.feed_prepared(message).await?;
        self.flush().await
    }

    /// Queues a prepared message without writing it, as [`feed`](Self::feed) does.
    ///
    /// **Cancel safety**: cancel-safe; if cancelled, the message was not queued.
    pub async fn feed_prepared(&mut self, message: &PreparedMessage) -> Result<(), Error> {
        poll_fn(|cx| self.core.poll_ready(cx)).await?;
        self.core.queue_prepared(message)
    }

    /// Sends a message as [`send`](Self::send) does, but a text or binary message goes out
    /// uncompressed even when permessage-deflate is in use (see
    /// [`Connection::send_uncompressed`]): for data that is already compressed, such as images.
    ///
    /// **Cancel safety**: as [`send`](Self::send).
    pub async fn send_uncompressed(&mut self, message: Message) -> Result<(), Error> {
        self.feed_uncompressed(message).await?;
        self.flush().await
    }

    /// Queues a message without writing it, as [`feed`](Self::feed) does, a text or binary one
    /// uncompressed (see [`send_uncompressed`](Self::send_uncompressed)).
    ///
    /// **Cancel safety**: cancel-safe; if cancelled, the message was not queued.
    pub async fn feed_uncompressed(&mut self, message: Message) -> Result<(), Error> {
        poll_fn(|cx| self.core.poll_ready(cx)).await?;
        self.core.queue_uncompressed(message)
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

    /// Sends one frame of a fragmented message (see [`Connection::send_fragment`]) and writes it.
    ///
    /// **Cancel safety**: as [`send`](Self::send).
    pub async fn send_fragment(&mut self, text: bool, payload: bytes::Bytes, fin: bool) -> Result<(), Error> {
        poll_fn(|cx| self.core.poll_ready(cx)).await?;
        if self.core.conn.state() == State::Closed {
            return Err(Error::Closed);
        }
        self.core.conn.send_fragment(text, payload, fin)?;
        self.flush().await
    }

    /// Writes everything queued and flushes the stream.
    ///
    /// **Cancel safety**: cancel-safe; what was not written stays queued.
    pub async fn flush(&mut self) -> Result<(), Error> {
        poll_fn(|cx| self.core.poll_flush(cx)).await
    }

    /// Runs the closing handshake: sends a close frame with `code` and `reason`, then reads
    /// (discarding data messages) until the peer's close arrives or the close timeout passes, and
    /// closes the transport. A code must be 1000–1003, 1007–1014 or 3000–4999 and the reason
    /// at most 123 bytes, else [`Error::Proto`] with a usage error and nothing is sent.
    ///
    /// Returns the peer's close frame (`None` when it carried no code). Errors: the close timeout
    /// when the peer never answered, [`Error::AbnormalClosure`] or an I/O error when the
    /// transport ended first, the error that failed the connection (a protocol error by the
    /// peer), [`Error::Closed`] when the connection had already ended without a close from the
    /// peer.
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
        if self.core.conn.state() == State::Open {
            self.core.queue(Message::Close(frame))?;
        }
        let mut first_error = None;
        while let Some(ev) = self.recv().await {
            if let Err(e) = ev {
                first_error.get_or_insert(e);
            }
        }
        match (first_error, self.core.conn.close_received()) {
            (Some(e), _) => Err(e),
            (None, Some(peer)) => Ok(peer.clone()),
            (None, None) => Err(Error::Closed),
        }
    }

    /// The connection's state (the browser's readyState).
    pub fn state(&self) -> State {
        self.core.conn.state()
    }

    /// The subprotocol agreed in the handshake.
    pub fn protocol(&self) -> Option<&str> {
        self.agreed.as_ref()?.protocol.as_deref()
    }

    /// The extensions agreed in the handshake (the browser's `extensions`), e.g.
    /// `permessage-deflate; client_max_window_bits=15`.
    pub fn extensions(&self) -> Option<&str> {
        self.agreed.as_ref()?.extensions.as_deref()
    }

    /// Bytes queued and not yet written (the browser's `bufferedAmount`).
    pub fn buffered_amount(&self) -> usize {
        self.core.conn.pending_output()
    }

    /// The protocol core, for inspection.
    pub fn connection(&self) -> &Connection {
        &self.core.conn
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.core.stream
    }

    /// Splits into a reader and a writer that can live in two tasks. The reader still answers
    /// pings and the peer's close by itself; [`WsReader::reunite`] puts them back together.
    pub fn split(self) -> (WsReader<S>, WsWriter<S>) {
        let (protocol, extensions) = Agreed::unbox(self.agreed);
        split::split(self.core, protocol, extensions)
    }
}

impl<S> WebSocket<S> {
    pub(crate) fn from_core(core: Core<S>, protocol: Option<String>, extensions: Option<String>) -> Self {
        Self { core, agreed: Agreed::boxed(protocol, extensions) }
    }

    /// Keeps the upgrade request a server accepted, for [`request`](Self::request).
    pub fn with_request(mut self, request: http::Request<()>) -> Self {
        self.agreed.get_or_insert_with(Box::default).request = Some(Box::new(request));
        self
    }

    /// The upgrade request a server accepted (path, query, headers), when it was kept:
    /// [`ServerConfig::keep_request`](crate::ServerConfig::keep_request) with
    /// [`accept_with`](crate::accept_with) or [`accept_with_async`](crate::accept_with_async), or
    /// [`with_request`](Self::with_request) after [`Incoming::accept`](crate::Incoming::accept).
    /// The peer's address is the stream's: `ws.get_ref().peer_addr()` for a `TcpStream`.
    pub fn request(&self) -> Option<&http::Request<()>> {
        self.agreed.as_ref()?.request.as_deref()
    }

    /// Takes the accepted request out (its headers are then freed: a server holding many idle
    /// connections saves that memory). Take it before [`split`](Self::split) to keep it.
    pub fn take_request(&mut self) -> Option<http::Request<()>> {
        let agreed = self.agreed.as_mut()?;
        let request = agreed.request.take().map(|r| *r);
        if agreed.protocol.is_none() && agreed.extensions.is_none() {
            // Nothing else was kept: the box goes too.
            self.agreed = None;
        }
        request
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
        self.get_mut().core.poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Error> {
        self.get_mut().core.queue(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().core.poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let core = &mut self.get_mut().core;
        if core.conn.state() == State::Open {
            core.queue(Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, ""))))?;
        }
        core.poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The subprotocol, the extensions and a kept request share one box: taking the request
    /// leaves the others, and the box goes once nothing is left in it.
    #[tokio::test]
    async fn the_agreed_subprotocol_outlives_the_taken_request() {
        let conn = || Connection::server(Default::default(), std::time::Instant::now());
        let request = || http::Request::builder().uri("/chat?x=1").body(()).unwrap();
        let (stream, _peer) = tokio::io::duplex(64);
        let ws = WebSocket::from_parts(stream, conn(), Default::default(), Some("chat.v1".into()), None);
        let mut ws = ws.with_request(request());
        assert_eq!(ws.request().map(|r| r.uri().path()), Some("/chat"));
        assert_eq!(ws.take_request().map(|r| r.uri().to_string()).as_deref(), Some("/chat?x=1"));
        assert!(ws.request().is_none());
        assert_eq!(ws.protocol(), Some("chat.v1"));
        assert!(ws.agreed.is_some());

        let (stream, _peer) = tokio::io::duplex(64);
        let mut ws = WebSocket::from_parts(stream, conn(), Default::default(), None, None).with_request(request());
        assert!(ws.take_request().is_some());
        assert!(ws.agreed.is_none(), "an empty box was kept");
        assert_eq!(ws.protocol(), None);
        // Within jemalloc's 48-byte class, as the two strings alone were (on a 64-bit target).
        if cfg!(target_pointer_width = "64") {
            assert_eq!(std::mem::size_of::<Agreed>(), 40);
        }
    }
}
