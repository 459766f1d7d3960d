//! [`BrowserWebSocket`]: a client that behaves like the browser's `WebSocket`.
//!
//! For people who know the WHATWG `WebSocket` interface (the one in every browser, described by
//! the WHATWG WebSockets Standard, formerly part of the HTML Standard, and on MDN): the same
//! object, the same states, the same errors and the same events, in Rust. It runs on the same
//! [`ClientBuilder`] and [`WebSocket`](crate::WebSocket) as the rest of this crate; only the
//! surface differs.
//!
//! ```no_run
//! use wsx::browser::{BrowserWebSocket, Event, MessageData};
//!
//! # async fn run() -> Result<(), wsx::browser::DomError> {
//! // `new WebSocket(url, protocols)`: returns at once, in CONNECTING, and opens in the background.
//! let mut ws = BrowserWebSocket::new("ws://127.0.0.1:9001/chat", &["chat.v1"])?;
//! while let Some(event) = ws.next_event().await {
//!     match event {
//!         Event::Open => ws.send("hello")?, // `onopen`
//!         Event::Message(m) => {
//!             // `onmessage`
//!             if let MessageData::Text(text) = &m.data {
//!                 println!("got {text}");
//!             }
//!             ws.close(Some(1000), Some("done"))?;
//!         }
//!         Event::Error(e) => eprintln!("error: {}", e.message), // `onerror`
//!         Event::Close(c) => println!("closed: {} {:?} clean={}", c.code, c.reason, c.was_clean),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Mapping to the standard
//!
//! | Standard | Here | Notes |
//! |---|---|---|
//! | `new WebSocket(url, protocols)` | [`BrowserWebSocket::new`]`(url, &protocols)` | Returns in [`ReadyState::Connecting`]; a tokio task runs the opening handshake (so it must be called inside a tokio runtime). `permessage-deflate` is offered, as browsers do. |
//! | constructor `SyntaxError` | `Err(`[`SyntaxError`]`)` | The same cases, reported at once: a URL that does not parse (relative URLs too: there is no base URL), a scheme other than `ws`, `wss`, `http`, `https` (`http`/`https` become `ws`/`wss`, as the current standard does), a fragment (even an empty one), a subprotocol offered twice or that is not an HTTP token. |
//! | `url` | [`url`](BrowserWebSocket::url) | The parsed URL, serialized: lowercase scheme and host, default port dropped, `/` for an empty path, `.`/`..` segments resolved, non-ASCII and unsafe characters percent-encoded. |
//! | `readyState`, `CONNECTING`…`CLOSED` | [`ready_state`](BrowserWebSocket::ready_state), [`ReadyState`] | `ReadyState::Open as u16 == 1`, etc. CLOSING also when the server's close frame arrives or the connection fails. There is no event loop: a state changes when it happens, so it may be ahead of the event you are about to take (`Open` when the `Open` event is still queued). |
//! | `bufferedAmount` | [`buffered_amount`](BrowserWebSocket::buffered_amount) | Bytes of application data (UTF-8 text, binary) passed to `send` and not yet written to the socket; framing and compression are not counted. Live, not a snapshot per task. Data passed to `send` in CLOSING or CLOSED is counted and never sent, so the value never returns to 0 after the connection closed. |
//! | `extensions` | [`extensions`](BrowserWebSocket::extensions) | `""` until open; then the server's `Sec-WebSocket-Extensions` answer, e.g. `permessage-deflate` with its parameters. |
//! | `protocol` | [`protocol`](BrowserWebSocket::protocol) | `""` until open; then the subprotocol the server selected. If subprotocols were offered and the server selected none, the connection fails (as the standard's handshake steps require). |
//! | `send(data)` | [`send`](BrowserWebSocket::send)`(data)` | A string (`&str`, `String`, [`Utf8Bytes`]) is a text message; `ArrayBuffer`, views and `Blob` correspond to binary data (`Bytes`, `Vec<u8>`, `&[u8]`). Never blocks and never waits: it queues. In CONNECTING: `InvalidStateError`. In CLOSING or CLOSED: nothing is sent, no error, `bufferedAmount` grows. |
//! | buffer full → "flag as full" and close | — | What `send` queues is not bounded here (as in browsers, which buffer far more than they admit): nothing is ever dropped or closed for it, and `send` never waits. Everything queued and not yet written counts in `buffered_amount`: the application must watch it (as the standard's own example does) to pace sending, or memory grows with a peer that does not read. A peer that takes nothing at all fails the connection after the [write timeout](wsx_proto::Config::write_timeout) (30 s). |
//! | `close(code, reason)` | [`close`](BrowserWebSocket::close)`(Option<u16>, Option<&str>)` | The standard's steps: a code other than 1000 or 3000–4999 → `InvalidAccessError`; a reason over 123 UTF-8 bytes → `SyntaxError` (both checked first, in any state). Then: CLOSING or CLOSED → nothing; CONNECTING → the connection fails (`Error`, then `Close` with 1006, not clean) and the state is CLOSING; OPEN → the closing handshake starts after the messages already sent, state CLOSING. No code and no reason: a close frame without a body; a reason without a code: code 1000. |
//! | `binaryType` (`"blob"`, `"arraybuffer"`) | — | Irrelevant in Rust: binary data is always [`Bytes`] (zero-copy, in memory), text always [`Utf8Bytes`]. |
//! | `onopen` / `open` | [`Event::Open`] | |
//! | `onmessage` / `MessageEvent` | [`Event::Message`]`(`[`MessageEvent`]`)` | `data` is [`MessageData::Text`] or [`MessageData::Binary`]. `origin` is the origin of [`url`](BrowserWebSocket::url) for every message; `lastEventId`, `source` and `ports` are always empty for WebSocket and left out. As in the standard, a message whose event is taken after `close()` was called (readyState no longer OPEN) is dropped. |
//! | `onerror` / `error` | [`Event::Error`]`(`[`ErrorEvent`]`)` | Fired right before `Close` when the connection was *failed*: the handshake failed or was refused (no server, refused port, HTTP status other than 101, bad answer, no subprotocol selected, no answer within 10 s, `close()` while connecting, a TLS failure such as an untrusted certificate), or the server broke the protocol or a limit. Not fired when the server just drops the TCP connection. The browser's error event says nothing about the cause (so that pages cannot probe a network); here [`ErrorEvent::message`] describes it, for logs. |
//! | `onclose` / `CloseEvent` | [`Event::Close`]`(`[`CloseEvent`]`)` | Always the last event. `code` and `reason` are those of the close frame *received* from the server (RFC 6455 §7.1.5–7.1.6): after `close(4000, "bye")` they are what the server echoed (a wsx server echoes both: `4000`, `"bye"`; one that echoes only the code gives `4000`, `""`). 1005 when the server's close frame had no code; 1006 (and `reason` `""`) when no close frame was received: handshake failure, failure, TCP closed without a close frame, no answer to our close frame within 5 s. `was_clean` is true when both close frames were exchanged (and nothing failed). |
//! | `DOMException` (`name`, `message`) | [`DomError`] ([`name`](DomError::name), `Display`) | `InvalidStateError`, `InvalidAccessError`, `SyntaxError`. |
//! | ping and pong frames | — | Not exposed, as in the standard: pings are answered by the connection. |
//! | garbage collection of an open socket | `Drop` | Dropping the [`BrowserWebSocket`] while OPEN starts the closing handshake with no status code (what the standard asks when an open socket is collected); while CONNECTING, fails the connection. The connection then winds down in the background; an [`Events`] stream taken earlier still receives the last events. |
//!
//! Events are queued in the order the standard fires them and taken with
//! [`next_event`](BrowserWebSocket::next_event), or as a [`Stream`](futures_core::Stream) from
//! [`events`](BrowserWebSocket::events), so that sending and receiving can happen in different
//! places.
//!
//! # Memory: the event queue is bounded
//!
//! A browser runs its event loop whether or not the page is listening; here the application
//! takes events when it wants, so the queue between the connection and the application is
//! bounded by [`BrowserConfig`]: at most [`max_queued_events`](BrowserConfig::max_queued_events)
//! events (default 1024) and [`max_queued_bytes`](BrowserConfig::max_queued_bytes) bytes of
//! message data (default 16 MiB; a single larger message is let in alone, when the queue holds
//! no other message). When it is full the connection stops reading from the socket until the
//! application takes events, so TCP flow control makes a fast peer wait instead of making this
//! process grow. Nothing is dropped. While reading is paused, pings are not answered either: take
//! events regularly, or a peer's keepalive may give up on the connection.
//! [`queued_events`](BrowserWebSocket::queued_events) and
//! [`queued_bytes`](BrowserWebSocket::queued_bytes) show how full the queue is. [`BrowserWebSocket`] is `Send + Sync`: share it (e.g. in an `Arc`) to send from several
//! tasks.
//!
//! What a browser does and this type does not: it sends no `Origin`, cookies or other headers of
//! a document, follows no HSTS, and resolves no relative URL (there is no base URL); URLs are
//! parsed by the WHATWG URL parser of the `url` crate. For headers, timeouts, limits or a
//! stream of your own, use [`ClientBuilder`] and [`WebSocket`](crate::WebSocket) directly.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};
use wsx_proto::deflate::DeflateConfig;
use wsx_proto::{CloseCode, CloseFrame, Message, Utf8Bytes};

use crate::{ClientBuilder, Error, WebSocketConfig, WsWriter};

/// The longest close reason, in UTF-8 bytes (125 bytes of control frame payload minus the code).
const MAX_REASON_BYTES: usize = 123;

/// The error event's text when `close()` (or a drop) ends a connection still being established.
const NOT_ESTABLISHED: &str = "the connection was closed before it was established";

// ------------------------------------------------------------------------------------------------
// States, events, errors

/// The state of a [`BrowserWebSocket`] (the standard's `readyState`). `as u16` gives the
/// standard's numeric value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum ReadyState {
    /// `CONNECTING` (0): the opening handshake is in progress.
    Connecting = 0,
    /// `OPEN` (1): messages flow both ways.
    Open = 1,
    /// `CLOSING` (2): the closing handshake is in progress, or `close()` was called.
    Closing = 2,
    /// `CLOSED` (3): the connection is closed or could not be opened.
    Closed = 3,
}

impl ReadyState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Connecting,
            1 => Self::Open,
            2 => Self::Closing,
            _ => Self::Closed,
        }
    }
}

/// What [`BrowserWebSocket::next_event`] and [`Events`] deliver: the standard's four events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `open`: the connection is established; [`protocol`](BrowserWebSocket::protocol) and
    /// [`extensions`](BrowserWebSocket::extensions) are set.
    Open,
    /// `message`: a whole text or binary message arrived.
    Message(MessageEvent),
    /// `error`: the connection failed; a [`Close`](Self::Close) follows.
    Error(ErrorEvent),
    /// `close`: the connection is closed. Always the last event.
    Close(CloseEvent),
}

/// The `message` event (the standard's `MessageEvent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageEvent {
    /// The message (`event.data`).
    pub data: MessageData,
}

/// The data of a message, received or to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageData {
    /// A text message (a `DOMString` in the browser).
    Text(Utf8Bytes),
    /// A binary message (a `Blob` or `ArrayBuffer` in the browser, whatever `binaryType` says).
    Binary(Bytes),
}

impl MessageData {
    /// The length in bytes (UTF-8 bytes for text): what `send` adds to `bufferedAmount`.
    pub fn len(&self) -> usize {
        match self {
            Self::Text(t) => t.len(),
            Self::Binary(b) => b.len(),
        }
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The text, for a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Self::Text(t) => Some(t.as_str()),
            Self::Binary(_) => None,
        }
    }

    /// The bytes, for a binary message.
    pub fn as_binary(&self) -> Option<&Bytes> {
        match self {
            Self::Text(_) => None,
            Self::Binary(b) => Some(b),
        }
    }

    fn into_message(self) -> Message {
        match self {
            Self::Text(t) => Message::Text(t),
            Self::Binary(b) => Message::Binary(b),
        }
    }
}

impl From<&str> for MessageData {
    fn from(s: &str) -> Self {
        Self::Text(s.into())
    }
}

impl From<String> for MessageData {
    fn from(s: String) -> Self {
        Self::Text(s.into())
    }
}

impl From<Utf8Bytes> for MessageData {
    fn from(s: Utf8Bytes) -> Self {
        Self::Text(s)
    }
}

impl From<Bytes> for MessageData {
    fn from(b: Bytes) -> Self {
        Self::Binary(b)
    }
}

impl From<Vec<u8>> for MessageData {
    fn from(b: Vec<u8>) -> Self {
        Self::Binary(b.into())
    }
}

impl From<&[u8]> for MessageData {
    fn from(b: &[u8]) -> Self {
        Self::Binary(Bytes::copy_from_slice(b))
    }
}

/// The `error` event. The browser's carries no detail; this one says what went wrong, for logs
/// (do not match on the text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorEvent {
    /// What failed.
    pub message: String,
}

/// The `close` event (the standard's `CloseEvent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseEvent {
    /// `wasClean`: both close frames were exchanged before the TCP connection closed.
    pub was_clean: bool,
    /// `code`: the status code of the close frame received from the server; 1005 if it had none;
    /// 1006 if none was received.
    pub code: u16,
    /// `reason`: the reason in the close frame received from the server, else empty.
    pub reason: String,
}

/// The constructor's `SyntaxError` cases (and `close`'s, see [`ReasonTooLong`](Self::ReasonTooLong)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SyntaxError {
    /// The URL could not be parsed (relative URLs included: there is no base URL).
    #[error("the URL {0:?} is invalid")]
    InvalidUrl(String),
    /// The URL's scheme is not `ws`, `wss`, `http` or `https`.
    #[error("the URL's scheme must be 'ws', 'wss', 'http' or 'https'; '{0}' is not allowed")]
    UnsupportedScheme(String),
    /// The URL has a fragment (`#…`).
    #[error("the URL {0:?} contains a fragment identifier; fragments are not allowed in WebSocket URLs")]
    Fragment(String),
    /// A subprotocol was offered twice.
    #[error("the subprotocol {0:?} is duplicated")]
    DuplicateProtocol(String),
    /// A subprotocol is not an HTTP token (empty, or with spaces, separators or non-ASCII).
    #[error("the subprotocol {0:?} is invalid")]
    InvalidProtocol(String),
    /// `close`: the reason is longer than 123 bytes in UTF-8.
    #[error("the close reason must not be longer than 123 UTF-8 bytes ({0} given)")]
    ReasonTooLong(usize),
}

/// The `DOMException`s the standard's `WebSocket` throws.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DomError {
    /// `InvalidStateError`: `send` while CONNECTING.
    #[error("InvalidStateError: cannot send: the WebSocket is still in the CONNECTING state")]
    InvalidState,
    /// `InvalidAccessError`: `close` with a code that is neither 1000 nor in 3000–4999.
    #[error("InvalidAccessError: the close code must be either 1000, or between 3000 and 4999; {0} is neither")]
    InvalidAccess(u16),
    /// `SyntaxError`: a bad URL or subprotocol in the constructor, or a close reason too long.
    #[error("SyntaxError: {0}")]
    Syntax(#[from] SyntaxError),
}

impl DomError {
    /// The `DOMException` name: `"InvalidStateError"`, `"InvalidAccessError"` or `"SyntaxError"`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::InvalidState => "InvalidStateError",
            Self::InvalidAccess(_) => "InvalidAccessError",
            Self::Syntax(_) => "SyntaxError",
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The socket

/// State shared by the handle, the event stream and the background tasks.
struct Shared {
    url: String,
    ready_state: AtomicU8,
    buffered: AtomicUsize,
    protocol: OnceLock<String>,
    extensions: OnceLock<String>,
    /// `close()` moved the state to CLOSING: message events not yet taken are dropped.
    close_called: AtomicBool,
    /// The bounds of the event queue.
    config: BrowserConfig,
    /// Bytes of message data the event queue may still take, as permits (at most `u32::MAX`).
    event_bytes: Semaphore,
    /// Events queued and not yet taken.
    queued_events: AtomicUsize,
    /// Bytes of message data in the queued events.
    queued_bytes: AtomicUsize,
}

impl Shared {
    fn state(&self) -> ReadyState {
        ReadyState::from_u8(self.ready_state.load(Ordering::Acquire))
    }

    fn set_state(&self, state: ReadyState) {
        self.ready_state.store(state as u8, Ordering::Release);
    }

    /// Moves from `from` to `to`; false if the state was not `from`.
    fn transition(&self, from: ReadyState, to: ReadyState) -> bool {
        self.ready_state.compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// The permits a message of `len` bytes holds in `event_bytes`: its length, capped by the
    /// budget, so that a message larger than the budget still gets in once the queue is empty.
    fn permits_for(&self, len: usize) -> u32 {
        len.min(self.config.max_queued_bytes).min(u32::MAX as usize) as u32
    }

    /// The application took `event` from the queue: frees its slot and its bytes.
    fn taken(&self, event: &Event) {
        self.queued_events.fetch_sub(1, Ordering::AcqRel);
        if let Event::Message(m) = event {
            self.queued_bytes.fetch_sub(m.data.len(), Ordering::AcqRel);
            self.event_bytes.add_permits(self.permits_for(m.data.len()) as usize);
        }
    }
}

/// Options of a [`BrowserWebSocket`] that the standard leaves to the browser: how much the event
/// queue holds before the connection stops reading (see the [module docs](self#memory-the-event-queue-is-bounded)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BrowserConfig {
    /// The most events queued and not yet taken. Default 1024; at least 1. Bounds the queue
    /// when messages are small (each event costs about 100 bytes besides its data).
    pub max_queued_events: usize,
    /// The most bytes of message data (UTF-8 text, binary) in queued events. Default 16 MiB.
    /// A message larger than this is queued when no other message is; its size is bounded by the
    /// connection's `max_message_size` (64 MiB). More smooths bursts from a fast peer; less
    /// bounds memory per connection tighter.
    pub max_queued_bytes: usize,
    /// TLS settings for `wss://` (trust roots, extra CAs, a client certificate). Default: the
    /// system's roots, as a browser uses its own store.
    #[cfg(feature = "tls")]
    pub tls: Option<crate::tls::ClientTls>,
}

impl Default for BrowserConfig {
    fn default() -> Self {
        Self {
            max_queued_events: 1024,
            max_queued_bytes: 16 << 20,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

/// What the handle asks of the background task.
enum Command {
    /// A data message and its length for `bufferedAmount`.
    Send(Message, usize),
    /// Start the closing handshake with this frame (`None`: no body).
    Close(Option<CloseFrame>),
    /// `close()` while CONNECTING: fail the connection.
    Abort,
}

/// A WebSocket client with the browser's interface. See the [module docs](self) for the mapping
/// to the standard, item by item.
pub struct BrowserWebSocket {
    shared: Arc<Shared>,
    /// Unbounded, as `send` never waits: what it holds is counted in `bufferedAmount`.
    commands: mpsc::UnboundedSender<Command>,
    events: Events,
}

impl fmt::Debug for BrowserWebSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrowserWebSocket")
            .field("url", &self.shared.url)
            .field("ready_state", &self.ready_state())
            .field("buffered_amount", &self.buffered_amount())
            .finish_non_exhaustive()
    }
}

impl BrowserWebSocket {
    /// `new WebSocket(url, protocols)`: checks `url` and `protocols` (errors as the standard's
    /// `SyntaxError`), then returns a socket in [`ReadyState::Connecting`] while a tokio task
    /// opens the connection, offering `protocols` (in this order) and permessage-deflate. Its
    /// outcome arrives as [`Event::Open`], or [`Event::Error`] then [`Event::Close`].
    ///
    /// `url`: `ws://`, `wss://`, `http://` or `https://` (the last two stand for the first two),
    /// without fragment. `wss://` verifies the server with the system's roots unless
    /// `BrowserConfig::tls` (with a TLS feature) says otherwise.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime (as `tokio::spawn` does), once the arguments are valid.
    pub fn new(url: &str, protocols: &[&str]) -> Result<Self, SyntaxError> {
        Self::with_config(url, protocols, BrowserConfig::default())
    }

    /// As [`new`](Self::new), with the bounds of the event queue in `config`.
    ///
    /// # Panics
    ///
    /// As [`new`](Self::new).
    pub fn with_config(url: &str, protocols: &[&str], config: BrowserConfig) -> Result<Self, SyntaxError> {
        let url = parse_url(url)?;
        for (i, p) in protocols.iter().enumerate() {
            if !is_token(p) {
                return Err(SyntaxError::InvalidProtocol((*p).to_owned()));
            }
            if protocols[..i].contains(p) {
                return Err(SyntaxError::DuplicateProtocol((*p).to_owned()));
            }
        }
        let shared = Arc::new(Shared {
            url,
            ready_state: AtomicU8::new(ReadyState::Connecting as u8),
            buffered: AtomicUsize::new(0),
            protocol: OnceLock::new(),
            extensions: OnceLock::new(),
            close_called: AtomicBool::new(false),
            event_bytes: Semaphore::new(config.max_queued_bytes.min(u32::MAX as usize)),
            queued_events: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            config,
        });
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (event_tx, event_rx) = mpsc::channel(shared.config.max_queued_events.max(1));
        let protocols = protocols.iter().map(|p| (*p).to_owned()).collect();
        let event_tx = EventSender { tx: event_tx, shared: shared.clone() };
        tokio::spawn(run(shared.clone(), protocols, command_rx, event_tx));
        let events = Events { rx: Some(event_rx), shared: shared.clone() };
        Ok(Self { shared, commands, events })
    }

    /// `url`: the URL, parsed and serialized (see the [module docs](self)).
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// `readyState`.
    pub fn ready_state(&self) -> ReadyState {
        self.shared.state()
    }

    /// `bufferedAmount`: bytes of application data passed to [`send`](Self::send) and not yet
    /// written to the socket (never decreasing again once the connection is closed).
    ///
    /// `send` never waits, so this is the only bound on what it queues: watch it, and stop
    /// sending while it is high (a peer that reads slowly, or not at all, makes it grow).
    pub fn buffered_amount(&self) -> usize {
        self.shared.buffered.load(Ordering::Acquire)
    }

    /// Events received and not yet taken (not in the standard: the receiving side's
    /// `bufferedAmount`). At most [`BrowserConfig::max_queued_events`]; at that bound the
    /// connection stops reading.
    pub fn queued_events(&self) -> usize {
        self.shared.queued_events.load(Ordering::Acquire)
    }

    /// Bytes of message data in the events not yet taken (not in the standard). At most
    /// [`BrowserConfig::max_queued_bytes`], or one larger message alone.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Acquire)
    }

    /// `protocol`: the subprotocol the server selected; empty before OPEN or if none.
    pub fn protocol(&self) -> &str {
        self.shared.protocol.get().map_or("", String::as_str)
    }

    /// `extensions`: the extensions the server accepted (its `Sec-WebSocket-Extensions` answer);
    /// empty before OPEN or if none.
    pub fn extensions(&self) -> &str {
        self.shared.extensions.get().map_or("", String::as_str)
    }

    /// `send(data)`: queues a text (`&str`, `String`, [`Utf8Bytes`]) or binary (`Bytes`,
    /// `Vec<u8>`, `&[u8]`) message and returns at once; a background task writes it.
    ///
    /// - CONNECTING: [`DomError::InvalidState`], nothing queued or counted.
    /// - OPEN: queued; [`buffered_amount`](Self::buffered_amount) grows by its length until it is
    ///   written.
    /// - CLOSING, CLOSED: not sent, yet `buffered_amount` grows by its length (as the standard
    ///   says), and `Ok`.
    pub fn send(&self, data: impl Into<MessageData>) -> Result<(), DomError> {
        let state = self.ready_state();
        if state == ReadyState::Connecting {
            return Err(DomError::InvalidState);
        }
        let data = data.into();
        let len = data.len();
        self.shared.buffered.fetch_add(len, Ordering::AcqRel);
        if state == ReadyState::Open {
            // If the task is gone the connection is closed: the bytes stay counted, unsent.
            let _ = self.commands.send(Command::Send(data.into_message(), len));
        }
        Ok(())
    }

    /// `close(code, reason)`, following the standard's steps:
    ///
    /// 1. `code` present and neither 1000 nor 3000–4999: [`DomError::InvalidAccess`].
    /// 2. `reason` longer than 123 UTF-8 bytes: [`DomError::Syntax`] ([`SyntaxError::ReasonTooLong`]).
    /// 3. CLOSING or CLOSED: nothing. CONNECTING: fail the connection ([`Event::Error`], then
    ///    [`Event::Close`] with 1006, not clean), state CLOSING. OPEN: start the closing handshake
    ///    once the messages already sent are written, state CLOSING. The close frame has no body
    ///    without code and reason; a reason without a code is sent with 1000.
    ///
    /// Message events not yet taken when this moves the state to CLOSING are dropped, as in the
    /// standard (a message event only fires while OPEN).
    pub fn close(&self, code: Option<u16>, reason: Option<&str>) -> Result<(), DomError> {
        if let Some(code) = code {
            if code != 1000 && !(3000..=4999).contains(&code) {
                return Err(DomError::InvalidAccess(code));
            }
        }
        let reason = reason.unwrap_or("");
        if reason.len() > MAX_REASON_BYTES {
            return Err(SyntaxError::ReasonTooLong(reason.len()).into());
        }
        loop {
            match self.ready_state() {
                ReadyState::Closing | ReadyState::Closed => return Ok(()),
                ReadyState::Connecting => {
                    if self.shared.transition(ReadyState::Connecting, ReadyState::Closing) {
                        self.shared.close_called.store(true, Ordering::Release);
                        let _ = self.commands.send(Command::Abort);
                        return Ok(());
                    }
                }
                ReadyState::Open => {
                    if self.shared.transition(ReadyState::Open, ReadyState::Closing) {
                        self.shared.close_called.store(true, Ordering::Release);
                        let frame = match (code, reason.is_empty()) {
                            (None, true) => None,
                            (None, false) => Some(CloseFrame::new(CloseCode::NORMAL, reason)),
                            (Some(code), _) => Some(CloseFrame::new(CloseCode(code), reason)),
                        };
                        let _ = self.commands.send(Command::Close(frame));
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The next event (`None` after [`Event::Close`]), unless [`events`](Self::events) took the
    /// stream.
    ///
    /// **Cancel safety**: cancel-safe.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.next_event().await
    }

    /// Takes the event stream, to receive in one place while sending from another. There is one
    /// stream per socket: later calls (and [`next_event`](Self::next_event)) find it ended.
    pub fn events(&mut self) -> Events {
        Events { rx: self.events.rx.take(), shared: self.shared.clone() }
    }
}

/// The events of a [`BrowserWebSocket`], in order; ends after [`Event::Close`]. A
/// [`Stream`](futures_core::Stream).
pub struct Events {
    rx: Option<mpsc::Receiver<Event>>,
    shared: Arc<Shared>,
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events").field("url", &self.shared.url).finish_non_exhaustive()
    }
}

impl Events {
    /// The next event; `None` after [`Event::Close`].
    ///
    /// **Cancel safety**: cancel-safe.
    pub async fn next_event(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            let event = std::task::ready!(rx.poll_recv(cx));
            if let Some(ev) = &event {
                self.shared.taken(ev);
            }
            match event {
                // The standard's message task returns early unless readyState is OPEN; the
                // connection's own moves to CLOSING come after the messages it received, so only
                // `close()` can make a queued message late.
                Some(Event::Message(_)) if self.shared.close_called.load(Ordering::Acquire) => continue,
                Some(ev) => return Poll::Ready(Some(ev)),
                None => {
                    self.rx = None;
                    return Poll::Ready(None);
                }
            }
        }
    }
}

impl futures_core::Stream for Events {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.get_mut().poll_event(cx)
    }
}

impl futures_core::FusedStream for Events {
    fn is_terminated(&self) -> bool {
        self.rx.is_none()
    }
}

// ------------------------------------------------------------------------------------------------
// The background task

/// The task's end of the bounded event queue.
struct EventSender {
    tx: mpsc::Sender<Event>,
    shared: Arc<Shared>,
}

impl EventSender {
    /// Queues `event`, waiting while the queue is full (in events, or in bytes for a message):
    /// the task reads nothing meanwhile, so a peer sending faster than the application takes
    /// events is held back by TCP flow control. Returns at once when the application dropped
    /// the queue's receiving end.
    async fn send(&self, event: Event) {
        let permits = match &event {
            // Taken after `close()`, it would be dropped: don't wait to queue it.
            Event::Message(_) if self.shared.close_called.load(Ordering::Acquire) => return,
            Event::Message(m) => self.shared.permits_for(m.data.len()),
            _ => 0,
        };
        let slot = tokio::select! {
            slot = self.reserve(permits) => slot,
            () = self.tx.closed() => None,
        };
        let Some(slot) = slot else { return };
        self.shared.queued_events.fetch_add(1, Ordering::AcqRel);
        if let Event::Message(m) = &event {
            self.shared.queued_bytes.fetch_add(m.data.len(), Ordering::AcqRel);
        }
        slot.send(event);
    }

    /// Waits for `permits` bytes of room, then for a slot.
    async fn reserve(&self, permits: u32) -> Option<mpsc::Permit<'_, Event>> {
        // The semaphore is never closed; the bytes return when the event is taken.
        self.shared.event_bytes.acquire_many(permits).await.ok()?.forget();
        match self.tx.reserve().await {
            Ok(slot) => Some(slot),
            Err(_) => {
                self.shared.event_bytes.add_permits(permits as usize);
                None
            }
        }
    }
}

/// Ends a connection that never opened: the standard's "fail the WebSocket connection" before
/// it was established.
async fn fail_before_open(shared: &Shared, events: &EventSender, message: String) {
    tracing::debug!(url = %shared.url, %message, "WebSocket connection failed");
    shared.set_state(ReadyState::Closed);
    events.send(Event::Error(ErrorEvent { message })).await;
    let close = CloseEvent { was_clean: false, code: CloseCode::ABNORMAL.0, reason: String::new() };
    events.send(Event::Close(close)).await;
}

/// Opens the connection, then reads it (this task) and writes it (a second task).
async fn run(
    shared: Arc<Shared>,
    protocols: Vec<String>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: EventSender,
) {
    let config = WebSocketConfig { deflate: Some(DeflateConfig::default()), ..WebSocketConfig::default() };
    let mut builder = ClientBuilder::new(shared.url.clone()).config(config);
    #[cfg(feature = "tls")]
    if let Some(tls) = &shared.config.tls {
        builder = builder.tls(tls.clone());
    }
    for p in &protocols {
        builder = builder.protocol(p.clone());
    }
    // While CONNECTING, `send` queues nothing: a command here is `close()` (Abort) or, when the
    // channel ends, every handle dropped. Either fails the connection.
    let outcome = tokio::select! {
        outcome = builder.connect() => Some(outcome),
        _ = commands.recv() => None,
    };
    let ws = match outcome {
        None => return fail_before_open(&shared, &events, NOT_ESTABLISHED.into()).await,
        Some(Err(e)) => return fail_before_open(&shared, &events, e.to_string()).await,
        Some(Ok((ws, _response))) => ws,
    };
    if !protocols.is_empty() && ws.protocol().is_none() {
        let message = "the server selected none of the offered subprotocols".into();
        return fail_before_open(&shared, &events, message).await;
    }
    let _ = shared.protocol.set(ws.protocol().unwrap_or("").to_owned());
    let _ = shared.extensions.set(ws.extensions().unwrap_or("").to_owned());
    if !shared.transition(ReadyState::Connecting, ReadyState::Open) {
        // `close()` won the race against the end of the handshake.
        return fail_before_open(&shared, &events, NOT_ESTABLISHED.into()).await;
    }
    events.send(Event::Open).await;

    let (mut reader, writer) = ws.split();
    let writer = tokio::spawn(write_loop(writer, commands, shared.clone()));

    let mut close_received: Option<Option<CloseFrame>> = None;
    let mut failure: Option<String> = None;
    while let Some(item) = reader.recv().await {
        match item {
            Ok(Message::Text(t)) => {
                events.send(Event::Message(MessageEvent { data: MessageData::Text(t) })).await;
            }
            Ok(Message::Binary(b)) => {
                events.send(Event::Message(MessageEvent { data: MessageData::Binary(b) })).await;
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            Ok(Message::Close(frame)) => {
                // The server started (or answered) the closing handshake.
                shared.transition(ReadyState::Open, ReadyState::Closing);
                close_received = Some(frame);
            }
            Err(e) => {
                shared.transition(ReadyState::Open, ReadyState::Closing);
                tracing::debug!(url = %shared.url, error = %e, "WebSocket connection ended");
                // The server broke the protocol or a limit: we failed the connection. A transport
                // that just ended, or a close handshake that timed out, is not a failure.
                if matches!(e, Error::Proto(wsx_proto::Error::Protocol(_) | wsx_proto::Error::Limit(_))) {
                    failure = Some(e.to_string());
                }
            }
        }
    }
    writer.abort();
    shared.set_state(ReadyState::Closed);
    let close = match (&failure, close_received) {
        (None, Some(frame)) => CloseEvent {
            was_clean: true,
            code: frame.as_ref().map_or(CloseCode::NO_STATUS.0, |f| f.code.0),
            reason: frame.map(|f| f.reason.as_str().to_owned()).unwrap_or_default(),
        },
        _ => CloseEvent { was_clean: false, code: CloseCode::ABNORMAL.0, reason: String::new() },
    };
    if let Some(message) = failure {
        events.send(Event::Error(ErrorEvent { message })).await;
    }
    events.send(Event::Close(close)).await;
}

/// Writes what the handle queues, in order, and keeps `bufferedAmount` up to date.
async fn write_loop(
    mut writer: WsWriter<crate::MaybeTlsStream>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    shared: Arc<Shared>,
) {
    loop {
        let Some(command) = commands.recv().await else {
            // Every handle is gone: like an open WebSocket being garbage-collected, start the
            // closing handshake without a status code.
            if shared.transition(ReadyState::Open, ReadyState::Closing) {
                let _ = writer.send(Message::Close(None)).await;
            }
            return;
        };
        let (message, len) = match command {
            Command::Send(message, len) => (message, len),
            Command::Close(frame) => (Message::Close(frame), 0),
            Command::Abort => continue,
        };
        match writer.send(message).await {
            Ok(()) => {
                shared.buffered.fetch_sub(len, Ordering::AcqRel);
            }
            // The connection is closing or closed (the server closed first): nothing was sent,
            // and the bytes stay counted, as for a send after close.
            Err(Error::Proto(wsx_proto::Error::Usage(_))) => {}
            // The transport failed; the reader sees it and ends the connection.
            Err(_) => return,
        }
    }
}

// ------------------------------------------------------------------------------------------------
// URL and subprotocol checks

/// RFC 7230 `token` (what a `Sec-WebSocket-Protocol` element must be).
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses and serializes a URL with the WHATWG URL parser (the `url` crate, as browsers do),
/// then applies the WebSocket constructor's rules: `http`/`https` become `ws`/`wss`, any other
/// scheme is refused, and a fragment is a `SyntaxError`.
fn parse_url(input: &str) -> Result<String, SyntaxError> {
    let invalid = || SyntaxError::InvalidUrl(input.to_owned());
    let mut url = url::Url::parse(input).map_err(|_| invalid())?;
    let scheme = match url.scheme() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => return Err(SyntaxError::UnsupportedScheme(other.to_owned())),
    };
    // Switching between special schemes is always allowed; it drops a port that is the new
    // scheme's default.
    url.set_scheme(scheme).map_err(|()| invalid())?;
    if url.fragment().is_some() {
        return Err(SyntaxError::Fragment(input.to_owned()));
    }
    if url.host().is_none() {
        return Err(invalid());
    }
    let out = String::from(url);
    // The result must also be a URI that the handshake accepts.
    out.parse::<http::Uri>().map_err(|_| invalid())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_serialized_like_the_url_standard() {
        let cases = [
            ("ws://example.com", "ws://example.com/"),
            ("  WS://Example.COM:80/a/./b/../c?x y#", ""),
            ("WS://Example.COM:80/a/./b/../c?x y", "ws://example.com/a/c?x%20y"),
            ("http://127.0.0.1:9000", "ws://127.0.0.1:9000/"),
            ("https://h:443/p", "wss://h/p"),
            ("wss://h:80/p", "wss://h:80/p"),
            ("ws://h:/p", "ws://h/p"),
            ("ws://[0:0::1]:80/", "ws://[::1]/"),
            ("ws://h/é?é", "ws://h/%C3%A9?%C3%A9"),
            ("ws://h?q", "ws://h/?q"),
            ("ws://h/a/..", "ws://h/"),
            ("ws://h/a/b/.", "ws://h/a/b/"),
            ("ws://u:p@h/", "ws://u:p@h/"),
            ("ws:\\\\h\\p", "ws://h/p"),
        ];
        for (input, expected) in cases {
            match parse_url(input) {
                Ok(url) => assert_eq!(url, expected, "{input:?}"),
                Err(e) => assert!(expected.is_empty(), "{input:?}: {e}"),
            }
        }
    }

    #[test]
    fn bad_urls() {
        for input in [
            "",
            "/relative",
            "example.com",
            "ws://",
            "ws://h:99999/",
            "ws://h:8x/",
            "ws://a b/",
            "ws://[zz]/",
            "1ws://h/",
        ] {
            assert_eq!(parse_url(input), Err(SyntaxError::InvalidUrl(input.into())), "{input:?}");
        }
        assert_eq!(parse_url("ftp://h/"), Err(SyntaxError::UnsupportedScheme("ftp".into())));
        assert_eq!(parse_url("mailto:x@y"), Err(SyntaxError::UnsupportedScheme("mailto".into())));
        assert_eq!(parse_url("ws://h/#"), Err(SyntaxError::Fragment("ws://h/#".into())));
    }

    #[test]
    fn tokens() {
        assert!(is_token("chat.v1") && is_token("a!#$%&'*+-.^_`|~z"));
        for bad in ["", "a b", "a,b", "a/b", "é", "a\"b", "(x)"] {
            assert!(!is_token(bad), "{bad:?}");
        }
    }
}
