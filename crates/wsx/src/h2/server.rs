//! The server side on the `h2` crate directly: for a server that runs `h2::server` itself
//! rather than hyper (see [`wsx::hyper`](crate::hyper) for hyper, and the axum extractor).
//!
//! The server builds its `h2::server::Connection` with `enable_connect_protocol()` (so that its
//! SETTINGS advertise `SETTINGS_ENABLE_CONNECT_PROTOCOL`), and hands each request it accepts to
//! [`Http2Upgrade::new`]: a valid extended CONNECT comes back to be accepted or refused; any other
//! request has been answered already with its refusal (405, 400 or 501; see the
//! [HTTP/2 docs](crate::hyper#http2-feature-http2)).
//!
//! ```no_run
//! # async fn run(tcp: tokio::net::TcpStream) -> Result<(), Box<dyn std::error::Error>> {
//! use wsx::h2::server::Http2Upgrade;
//!
//! let mut h2 = h2::server::Builder::new().enable_connect_protocol().handshake(tcp).await?;
//! while let Some(request) = h2.accept().await {
//!     let (request, respond) = request?;
//!     tokio::spawn(async move {
//!         let Ok(upgrade) = Http2Upgrade::new(request, respond) else { return };
//!         let config = wsx::WebSocketConfig::default();
//!         let Ok(mut ws) = upgrade.accept(wsx::Accept::default(), &config) else { return };
//!         while let Some(Ok(msg)) = ws.recv().await {
//!             if msg.is_data() && ws.feed(msg).await.is_err() {
//!                 break;
//!             }
//!         }
//!     });
//! }
//! # Ok(()) }
//! ```
//!
//! The stream is an [`Http2Stream`], as on the client: reads release flow-control capacity as
//! the WebSocket reads, writes wait for send capacity; the close handshake ends the stream with
//! END_STREAM, a dropped WebSocket resets it.

use bytes::{Bytes, BytesMut};
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Request, Response};
use tokio::time::Instant;
use wsx_proto::handshake::{check_connect_request, Rejection, UpgradeRequest};

use super::{h2_error, Http2Stream};
use crate::server::{answer, Answer};
use crate::{Accept, Error, WebSocket, WebSocketConfig};

/// A checked extended CONNECT request, waiting for the server's decision.
#[derive(Debug)]
pub struct Http2Upgrade {
    upgrade: UpgradeRequest,
    body: RecvStream,
    respond: SendResponse<Bytes>,
    started: Instant,
}

impl Http2Upgrade {
    /// Checks a request `h2::server::Connection::accept` returned: an extended CONNECT with
    /// `:protocol websocket` and `sec-websocket-version: 13` comes back as an `Http2Upgrade`;
    /// anything else is answered with its refusal (its status, headers and a short text body)
    /// and returned as [`Error::Handshake`] (or the h2 error that prevented the answer).
    pub fn new(request: Request<RecvStream>, mut respond: SendResponse<Bytes>) -> Result<Self, Error> {
        let protocol = request.extensions().get::<h2::ext::Protocol>().map(h2::ext::Protocol::as_str);
        match check_connect_request(&request, protocol) {
            Ok(upgrade) => Ok(Self { upgrade, body: request.into_body(), respond, started: Instant::now() }),
            Err(rejection) => {
                send_rejection(&mut respond, &rejection)?;
                Err(wsx_proto::handshake::HandshakeError::Rejected(Box::new(rejection)).into())
            }
        }
    }

    /// What the client asked for: offered subprotocols, extension offers, `Origin`, and the
    /// request's target.
    pub fn request(&self) -> &UpgradeRequest {
        &self.upgrade
    }

    /// When the request arrived: the handshake timeout counts from here, for a server that
    /// takes time to decide.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Accepts with the subprotocol and headers of `accept` and the settings of `config`: sends
    /// the `200` (the selected subprotocol and extensions) and returns the [`WebSocket`] over the
    /// stream. Refused instead (answered with `500`, returned as an error) when `config` is not
    /// valid or `accept` selects a subprotocol the client did not offer.
    pub fn accept(mut self, accept: Accept, config: &WebSocketConfig) -> Result<WebSocket<Http2Stream>, Error> {
        let Answer { response, conn, protocol, extensions } = match answer(&self.upgrade, accept, config) {
            Ok(answer) => answer,
            Err(refusal) => {
                let _ = send_rejection(&mut self.respond, &refusal.rejection);
                return Err(refusal.error);
            }
        };
        let send = self.respond.send_response(response, false).map_err(h2_error)?;
        let stream = Http2Stream::new(send, self.body);
        Ok(WebSocket::from_parts(stream, conn, BytesMut::new(), protocol, extensions))
    }

    /// Refuses with `rejection` (its status, headers and body).
    pub fn reject(mut self, rejection: &Rejection) -> Result<(), Error> {
        send_rejection(&mut self.respond, rejection)
    }
}

/// Sends a refusal: its head (as [`rejection_response`](crate::hyper::rejection_response)
/// builds it for hyper), then its body with END_STREAM (a few hundred bytes at most, which h2
/// queues whatever the window).
fn send_rejection(respond: &mut SendResponse<Bytes>, rejection: &Rejection) -> Result<(), Error> {
    let (head, body) = crate::hyper::rejection_response(rejection).into_parts();
    let empty = body.is_empty();
    let mut send = respond.send_response(Response::from_parts(head, ()), empty).map_err(h2_error)?;
    if !empty {
        send.send_data(Bytes::from(body), true).map_err(h2_error)?;
    }
    Ok(())
}
