//! # wsx: WebSocket client and server for tokio
//!
//! A thin driver over the sans-I/O core [`wsx_proto`]: it owns the socket, the buffers and the
//! timers, and leaves every protocol decision to [`wsx_proto::Connection`].
//!
//! ```text
//!  TcpStream ─► read buffer ─► Connection::read_event ─► WebSocket::recv ─► your code
//!  your code ─► WebSocket::send ─► Connection (encode) ─► output buffer ─► one write
//! ```
//!
//! # Quick start
//!
//! A client:
//!
//! ```no_run
//! # async fn run() -> Result<(), wsx::Error> {
//! let (mut ws, _) = wsx::connect("ws://127.0.0.1:9001/").await?;
//! ws.send_text("hello").await?;
//! while let Some(msg) = ws.recv().await {
//!     println!("got {:?}", msg?);
//! }
//! # Ok(()) }
//! ```
//!
//! An echo server: see [`accept`].
//!
//! The client connects through the proxy the environment names (`ws_proxy`, `https_proxy`,
//! `no_proxy`… read as curl reads them), or the one given to [`ClientBuilder::proxy`]: HTTP
//! `CONNECT` or SOCKS5. See [`proxy`].
//!
//! Payloads are handed out as [`bytes::Bytes`] slices of the read buffer (no copy for messages
//! in one frame); replies produced while a batch of received messages is handled leave in one
//! write; pings and the closing handshake are answered for you.
#![deny(missing_docs)]

#[cfg(feature = "axum")]
pub mod axum;
pub mod browser;
mod client;
pub mod deadlines;
mod error;
#[cfg(feature = "http2")]
pub mod h2;
#[cfg(feature = "hyper")]
pub mod hyper;
mod io;
pub mod limit;
pub mod origin;
pub mod proxy;
mod rng;
mod server;
mod split;
mod stream;
#[cfg(feature = "tls")]
pub mod tls;
mod tls_error;
mod websocket;

pub use client::{connect, ClientBuilder};
pub use error::{Error, ErrorKind};
pub use io::poll_write_out;
pub use server::{accept, accept_with, accept_with_async, Accept, Incoming, ServerConfig};
pub use split::{ReuniteError, WsReader, WsWriter};
pub use stream::MaybeTlsStream;
pub use tls_error::TlsError;
pub use websocket::{WebSocket, WebSocketConfig};

pub use bytes::Bytes;
/// The sans-I/O protocol core this crate drives.
pub use wsx_proto as proto;
pub use wsx_proto::handshake::{HandshakeError, HandshakeLimits, Rejection, UpgradeRequest};
/// What [`WebSocket::recv_chunk`] hands out: pieces of data messages and control messages.
pub use wsx_proto::{Chunk, StreamEvent};
pub use wsx_proto::{CloseCode, CloseFrame, Message, PreparedMessage, State, Utf8Bytes};

/// The examples of the project's README, compiled as doc tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
