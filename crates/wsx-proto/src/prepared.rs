//! [`PreparedMessage`]: a data message encoded (and compressed) once, sent on many connections.
//!
//! Broadcasting one message to many connections with [`Connection::send`](crate::Connection::send)
//! frames it, and compresses it when permessage-deflate is on, once per connection. A
//! `PreparedMessage` does that work once per *kind* of connection and shares the resulting bytes:
//!
//! | connection                                              | what it sends                          |
//! |---------------------------------------------------------|----------------------------------------|
//! | server, no permessage-deflate (or message under the threshold) | the one uncompressed frame, shared |
//! | server, permessage-deflate, `server_no_context_takeover` | the one compressed frame for its (level, window), shared |
//! | server, permessage-deflate with context takeover        | compresses with its own context, as `send` does |
//! | client (frames are masked)                              | the shared payload (compressed as above), copied and masked with its own key |
//!
//! *Shared* means the bytes are the same [`Bytes`]: a frame of at least
//! [`OutBuf::ZERO_COPY_THRESHOLD`](crate::OutBuf::ZERO_COPY_THRESHOLD) bytes is queued as a
//! reference-counted chunk (no copy at all); a smaller one is copied next to the connection's
//! other pending frames, which is cheaper than a separate chunk for a few hundred bytes.
//!
//! Compressed bytes can be shared only between connections that reset their compression context
//! after every message (RFC 7692 §7.1.1: with context takeover a message may refer back to the
//! previous ones, which differ per connection) and compress with the same level and window: a
//! window no larger than what the peer allowed (`*_max_window_bits`). Each (level, window) met
//! is compressed once, on first use, and kept for the life of the message. The output is the same
//! bytes as [`send`](crate::Connection::send) writes for the same message on that connection.

use std::sync::{Arc, Mutex, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};

use crate::deflate::{compress_fresh, SharedKey};
use crate::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use crate::message::{Message, Utf8Bytes};

/// A text or binary message prepared for sending on many connections: framed and compressed
/// once, the bytes shared. Cheap to clone (an [`Arc`] inside); encodings are made lazily, on the
/// first connection that needs each, and cached. See the [module docs](self) for what is shared.
///
/// ```
/// use std::time::Instant;
/// use wsx_proto::{Config, Connection, PreparedMessage};
///
/// let now = Instant::now();
/// let mut members: Vec<Connection> = (0..3).map(|_| Connection::server(Config::default(), now)).collect();
/// let news = PreparedMessage::text("the same bytes for everyone");
/// for conn in &mut members {
///     conn.send_prepared(&news).unwrap();
/// }
/// assert!(members.iter().all(|c| c.pending_output() == 2 + news.len()));
/// ```
#[derive(Clone)]
pub struct PreparedMessage {
    inner: Arc<Inner>,
}

struct Inner {
    opcode: OpCode,
    payload: Bytes,
    /// The unmasked, uncompressed frame (header and payload), made on first use.
    plain: OnceLock<Bytes>,
    /// Compressed frames, one per (level, window) met, each made once on first use. A list:
    /// in practice every connection of a server has the same parameters, so it has one entry.
    compressed: Mutex<Vec<(SharedKey, Slot)>>,
}

/// Where one compressed encoding is made once: `None` inside when compression failed.
type Slot = Arc<OnceLock<Option<Encoded>>>;

/// A compressed encoding: the unmasked frame, RSV1 set.
struct Encoded {
    frame: Bytes,
    /// Where the payload starts in `frame`.
    head_len: usize,
}

impl Encoded {
    /// The (compressed) payload, sharing the frame's bytes.
    fn payload(&self) -> Bytes {
        self.frame.slice(self.head_len..)
    }
}

/// One encoding of a prepared message: a server sends `frame` as it is; a client frames and
/// masks `payload` itself, with `rsv1` as given.
pub(crate) struct Encoding {
    pub(crate) frame: Bytes,
    pub(crate) payload: Bytes,
    pub(crate) rsv1: bool,
}

impl std::fmt::Debug for PreparedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedMessage")
            .field("opcode", &self.inner.opcode)
            .field("len", &self.inner.payload.len())
            .finish_non_exhaustive()
    }
}

impl PreparedMessage {
    fn new(opcode: OpCode, payload: Bytes) -> Self {
        Self { inner: Arc::new(Inner { opcode, payload, plain: OnceLock::new(), compressed: Mutex::new(Vec::new()) }) }
    }

    /// A text message.
    pub fn text(text: impl Into<Utf8Bytes>) -> Self {
        Self::new(OpCode::Text, text.into().into_bytes())
    }

    /// A binary message.
    pub fn binary(data: impl Into<Bytes>) -> Self {
        Self::new(OpCode::Binary, data.into())
    }

    /// Whether it is a text message.
    pub fn is_text(&self) -> bool {
        self.inner.opcode == OpCode::Text
    }

    /// The payload (uncompressed).
    pub fn payload(&self) -> &Bytes {
        &self.inner.payload
    }

    /// The payload's length in bytes (uncompressed).
    pub fn len(&self) -> usize {
        self.inner.payload.len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.inner.payload.is_empty()
    }

    /// Whether `self` and `other` are handles to the same prepared message (clones of one
    /// another), which share their encodings.
    pub fn ptr_eq(&self, other: &PreparedMessage) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The message as a [`Message`], sharing the payload.
    pub fn to_message(&self) -> Message {
        match self.inner.opcode {
            // Built from a `Utf8Bytes` by `text` or `TryFrom<Message>`.
            OpCode::Text => Message::Text(Utf8Bytes::from_bytes_unchecked(self.inner.payload.clone())),
            _ => Message::Binary(self.inner.payload.clone()),
        }
    }

    pub(crate) fn opcode(&self) -> OpCode {
        self.inner.opcode
    }

    /// The uncompressed encoding.
    pub(crate) fn plain(&self) -> Encoding {
        let frame = self.inner.plain.get_or_init(|| encode(self.inner.opcode, false, &self.inner.payload)).clone();
        Encoding { frame, payload: self.inner.payload.clone(), rsv1: false }
    }

    /// The encoding compressed with `key`, compressing on first use; `None` when compression
    /// failed (send it uncompressed).
    pub(crate) fn compressed(&self, key: SharedKey) -> Option<Encoding> {
        let slot = {
            let mut list = self.inner.compressed.lock().unwrap_or_else(|p| p.into_inner());
            match list.iter().find(|(k, _)| *k == key) {
                Some((_, slot)) => slot.clone(),
                None => {
                    let slot = Arc::new(OnceLock::new());
                    list.push((key, slot.clone()));
                    slot
                }
            }
        };
        // Compressed outside the list's lock: only connections wanting this key wait for it.
        let encoded = slot.get_or_init(|| {
            let data = compress_fresh(key, &self.inner.payload)?;
            let frame = encode(self.inner.opcode, true, &data);
            Some(Encoded { head_len: frame.len() - data.len(), frame })
        });
        let encoded = encoded.as_ref()?;
        Some(Encoding { frame: encoded.frame.clone(), payload: encoded.payload(), rsv1: true })
    }
}

/// An unmasked frame: FIN, `opcode`, RSV1 as given, `payload`.
fn encode(opcode: OpCode, rsv1: bool, payload: &[u8]) -> Bytes {
    let mut header = FrameHeader::new(opcode, payload.len() as u64, None);
    header.rsv1 = rsv1;
    let mut head = [0u8; MAX_HEADER_LEN];
    let head_len = header.encode(&mut head);
    let mut frame = BytesMut::with_capacity(head_len + payload.len());
    frame.put_slice(&head[..head_len]);
    frame.put_slice(payload);
    frame.freeze()
}

impl TryFrom<Message> for PreparedMessage {
    /// A control message (ping, pong, close) cannot be prepared; it is given back.
    type Error = Message;

    /// Prepares a text or binary message.
    fn try_from(message: Message) -> Result<Self, Message> {
        match message {
            Message::Text(t) => Ok(Self::text(t)),
            Message::Binary(b) => Ok(Self::binary(b)),
            other => Err(other),
        }
    }
}
