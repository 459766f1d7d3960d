//! Receiving data messages as a stream of chunks, without assembling them:
//! [`Connection::read_chunk`](crate::Connection::read_chunk) returns [`StreamEvent`]s.
//!
//! A message is handed out as a sequence of [`Chunk`]s, the first with [`Chunk::first`] set and
//! the last with [`Chunk::fin`] set (a message in one chunk has both). The chunks of one message
//! are never interleaved with those of another; control frames (ping, pong, close) arriving
//! between the frames of a fragmented message surface as [`StreamEvent::Control`] between its
//! chunks, and are handled exactly as by [`read_event`](crate::Connection::read_event): pings
//! are answered, the peer's close is echoed.
//!
//! The same limits apply as to assembled messages: `max_message_size`, `max_fragments` and (for
//! compressed messages) `max_inflated_message_size` bound the whole message, summed over its
//! chunks; `max_frame_size` bounds each frame. What the connection holds meanwhile is bounded by
//! the read buffer: an uncompressed chunk is a zero-copy slice of the bytes that arrived (never
//! more than the driver read), a compressed message is inflated a little at a time into chunks
//! of about 64 KiB (at most about 322 KiB, for data compressed at DEFLATE's largest ratio).

use bytes::Bytes;

use crate::message::Message;

/// A piece of a data message, in order. See the [module docs](self).
///
/// The chunks of a text message are each valid UTF-8 on their own: a character split across
/// frames or reads is held back (at most 3 bytes) until its end arrives. The message as a whole
/// is validated as it arrives, so invalid UTF-8 fails the connection (close code 1007) at the
/// first bad byte, possibly after earlier chunks of the message were handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Chunk {
    /// Whether the message is text (else binary). The same for every chunk of a message.
    pub text: bool,
    /// Whether this is the first chunk of its message.
    pub first: bool,
    /// Whether this is the last chunk of its message. The last chunk may be empty.
    pub fin: bool,
    /// The payload bytes (inflated, for a compressed message).
    pub data: Bytes,
}

impl Chunk {
    /// The chunk of a text message as a string slice; `None` for binary.
    ///
    /// ```
    /// # use std::time::Instant;
    /// # use bytes::{Buf, BytesMut};
    /// use wsx_proto::{Config, Connection, Message, StreamEvent};
    ///
    /// # let now = Instant::now();
    /// let mut client = Connection::client(Config::default(), now, || [1, 2, 3, 4]);
    /// let mut server = Connection::server(Config::default(), now);
    /// client.send(Message::text("héllo")).unwrap();
    /// let out = client.output();
    /// let mut wire = BytesMut::from(&out.copy_to_bytes(out.remaining())[..]);
    /// let Some(StreamEvent::Chunk(chunk)) = server.read_chunk(&mut wire, now).unwrap() else {
    ///     panic!("expected a chunk");
    /// };
    /// assert_eq!(chunk.as_str(), Some("héllo"));
    /// ```
    pub fn as_str(&self) -> Option<&str> {
        if !self.text {
            return None;
        }
        // Validated by the connection (a chunk never splits a character); checked again here so
        // that no `unsafe` is needed: one fast pass over bytes that are already in cache.
        std::str::from_utf8(&self.data).ok()
    }
}

/// What [`Connection::read_chunk`](crate::Connection::read_chunk) returns.
/// Exhaustive on purpose: a data piece or a control message is all a connection can hand out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// The next piece of a text or binary message.
    Chunk(Chunk),
    /// A control message: [`Message::Ping`] (already answered), [`Message::Pong`], or the peer's
    /// [`Message::Close`] (already echoed; nothing follows it). Never text or binary.
    Control(Message),
}
