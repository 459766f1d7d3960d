//! # wsx-proto: the sans-I/O WebSocket core
//!
//! Everything a WebSocket peer (RFC 6455) can do to us is decided here, with no I/O at all:
//!
//! ```text
//!   bytes from the socket ─► Connection::read_event ─► Message events ─► application
//!   application ─► Connection::send / close ─► Connection::output() ─► bytes to the socket
//!   clock ─► Connection::handle_timeout(now)      Connection::poll_timeout() ─► next deadline
//! ```
//!
//! The crate opens no socket, depends on no async runtime, reads no clock and owns no RNG: time
//! comes in as an [`Instant`](std::time::Instant) argument, and a client's masking keys from a
//! [`MaskKeySource`] the driver supplies. The `wsx` crate is the tokio driver over it; any other
//! runtime can drive it the same way.
//!
//! - [`frame`]: the frame header codec, opcodes and close codes;
//! - [`mask`]: XOR masking, many bytes a step;
//! - [`utf8`]: incremental UTF-8 validation that fails at the first bad byte;
//! - [`handshake`]: the HTTP/1.1 Upgrade handshake for both roles;
//! - [`deflate`]: permessage-deflate (RFC 7692) negotiation and per-message compression;
//! - [`Connection`]: the state machine for either role after the handshake;
//! - [`prepared`]: [`PreparedMessage`], a message encoded and compressed once for many connections.
//! - [`stream`]: receiving a large message as a stream of chunks ([`Connection::read_chunk`]);
//! - [`MessageRef`]: a small message lent from the read buffer, not copied out of it
//!   ([`Connection::read_ref`]), for callers that only look at it.
//!
//! # Quick start: a client and a server in memory
//!
//! ```
//! use std::time::Instant;
//! use bytes::{Buf, BytesMut};
//! use wsx_proto::{Config, Connection, Message};
//!
//! let now = Instant::now();
//! let mut client = Connection::client(Config::default(), now, || [1, 2, 3, 4]);
//! let mut server = Connection::server(Config::default(), now);
//!
//! client.send(Message::text("hello")).unwrap();
//! // "Transport": move the client's output into the server's read buffer.
//! let mut wire = BytesMut::new();
//! let out = client.output();
//! wire.extend_from_slice(&out.copy_to_bytes(out.remaining()));
//! let event = server.read_event(&mut wire, now).unwrap();
//! assert_eq!(event, Some(Message::text("hello")));
//! ```
#![deny(missing_docs)]
// `unsafe` lives in two places only, each allowing it for itself: `mask` (SIMD, and the
// masking copy into a buffer's spare capacity) and `Utf8Bytes::as_str` (no second UTF-8 check).
#![deny(unsafe_code)]

pub mod connection;
pub mod deflate;
pub mod error;
pub mod frame;
pub mod handshake;
mod headers;
pub mod mask;
pub mod message;
pub mod outbuf;
pub mod prepared;
mod stamp;
pub mod stream;
pub mod utf8;

pub use connection::{Config, ConfigError, Connection, MaskKeySource, Role, State};
pub use error::{Error, LimitError, ProtocolError, TimeoutError, UsageError};
pub use frame::{CloseCode, FrameHeader, OpCode};
pub use message::{CloseFrame, Message, MessageRef, Utf8Bytes};
pub use outbuf::OutBuf;
pub use prepared::PreparedMessage;
pub use stamp::Stamp;
pub use stream::{Chunk, StreamEvent};
