//! WebSockets on axum 0.8 routes (feature `axum`): the [`WebSocketUpgrade`] extractor.
//!
//! ```no_run
//! use axum::response::Response;
//! use axum::routing::any;
//! use axum::Router;
//! use wsx::axum::WebSocketUpgrade;
//!
//! async fn echo(upgrade: WebSocketUpgrade) -> Response {
//!     upgrade.protocols(["echo.v1"]).max_message_size(1 << 20).on_upgrade(|mut ws| async move {
//!         while let Some(Ok(msg)) = ws.recv().await {
//!             // Replies to a batch of messages leave in one write (see `WebSocket::feed`).
//!             if msg.is_data() && ws.feed(msg).await.is_err() {
//!                 break;
//!             }
//!         }
//!     })
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! // `any`, not `get`: over HTTP/2 a WebSocket arrives as a CONNECT (see below).
//! let app = Router::new().route("/echo", any(echo));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! The extractor checks the request as [`accept`](crate::accept) does (the same code): one
//! that is not a valid upgrade is refused with the same status and body (400, 405, 426), as
//! the extractor's rejection, [`UpgradeRejection`]. `on_upgrade` answers with the same 101
//! response as `accept` (through [`crate::hyper`]), waits (bounded by the handshake timeout)
//! for axum to hand the connection over, and runs the callback on the [`WebSocket`] in a task
//! of its own. Refusing after extraction: [`WebSocketUpgrade::reject`], or return an
//! [`UpgradeRejection`] (a handler returning `Result<Response, UpgradeRejection>` can use `?`
//! on a [`Rejection`], as from [`WebSocketUpgrade::check_origin`]).
//!
//! axum must serve the connection with upgrades enabled, as `axum::serve` does: the request
//! then carries hyper's upgrade handle in its extensions. The connection runs on the TCP socket
//! itself when axum serves plain TCP (see [`UpgradedStream`]).
//!
//! # HTTP/2
//!
//! With the `http2` feature (and axum's own `http2` feature, for `axum::serve` to speak
//! HTTP/2), the extractor also accepts a WebSocket opened by an HTTP/2 extended `CONNECT`
//! (RFC 8441; see [`crate::hyper`]): the handler answers `200` instead of `101`, and the
//! callback gets the same [`WebSocket`] over the HTTP/2 stream. `axum::serve` advertises
//! `SETTINGS_ENABLE_CONNECT_PROTOCOL` itself. The route must accept the `CONNECT` method, which
//! `get` does not: route with `any(handler)`, or `get(handler).connect(handler)`
//! (`on(MethodFilter::GET.or(MethodFilter::CONNECT), handler)`). A route that does not accept
//! `CONNECT` answers an HTTP/2 WebSocket with axum's 405. `axum::serve` keeps hyper's flow-control
//! windows (1 MiB per stream and per connection), so one WebSocket whose application stops
//! reading can stall the other streams of its connection; `docs/http2.md` shows how to serve
//! with a larger connection window.

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::HeaderMap;
use wsx_proto::deflate::DeflateConfig;
use wsx_proto::handshake::{Rejection, UpgradeRequest};

use crate::hyper::{rejection_response, Upgrade, UpgradedStream};
use crate::origin::{OriginPolicy, Scheme};
use crate::{Accept, Error, WebSocket, WebSocketConfig};

/// An axum extractor for a WebSocket upgrade request: configure it, then answer with
/// [`on_upgrade`](Self::on_upgrade) (or [`reject`](Self::reject)). See the [module
/// docs](self).
///
/// Extracting it fails with an [`UpgradeRejection`] carrying what [`accept`](crate::accept)
/// would have answered. `Option<WebSocketUpgrade>` is `None` for a request without
/// `Upgrade: websocket`, for a route that also serves plain HTTP.
pub struct WebSocketUpgrade {
    upgrade: Upgrade,
    host: Option<HeaderValue>,
    scheme: Scheme,
    config: WebSocketConfig,
    protocol: Option<String>,
    headers: HeaderMap,
    on_failed: Option<Box<dyn FnOnce(Error) + Send>>,
}

impl std::fmt::Debug for WebSocketUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketUpgrade")
            .field("request", self.upgrade.request())
            .field("scheme", &self.scheme)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = UpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let upgrade = Upgrade::from_head(parts)?;
        let uri_scheme = match parts.uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") || s.eq_ignore_ascii_case("wss") => Scheme::Https,
            _ => Scheme::Http,
        };
        Ok(Self {
            upgrade,
            // Over HTTP/2 there is no Host header: the authority is the URI's (`:authority`).
            host: parts
                .headers
                .get(header::HOST)
                .cloned()
                .or_else(|| crate::origin::request_authority(&parts.uri).and_then(|a| HeaderValue::from_str(a).ok())),
            scheme: parts.extensions.get::<Scheme>().copied().unwrap_or(uri_scheme),
            config: WebSocketConfig::default(),
            protocol: None,
            headers: HeaderMap::new(),
            on_failed: None,
        })
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for WebSocketUpgrade {
    type Rejection = UpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Option<Self>, Self::Rejection> {
        if !crate::hyper::is_websocket_request(parts) {
            return Ok(None);
        }
        <Self as FromRequestParts<S>>::from_request_parts(parts, state).await.map(Some)
    }
}

impl WebSocketUpgrade {
    /// Selects the first of `protocols` (the server's order of preference) that the client
    /// offered; with none offered, no subprotocol is selected (the client then decides whether
    /// to go on without one).
    pub fn protocols<I>(mut self, protocols: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let offered = &self.upgrade.request().protocols;
        self.protocol =
            protocols.into_iter().find(|p| offered.iter().any(|o| o == p.as_ref())).map(|p| p.as_ref().to_owned());
        self
    }

    /// The subprotocol that [`protocols`](Self::protocols) selected.
    pub fn selected_protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// What the client asked for: offered subprotocols (in its order of preference), extension
    /// offers, `Origin`.
    pub fn request(&self) -> &UpgradeRequest {
        self.upgrade.request()
    }

    /// The limits, timers and compression of the connection (default:
    /// [`WebSocketConfig::default`], as [`accept`](crate::accept) uses).
    pub fn config(mut self, config: WebSocketConfig) -> Self {
        self.config = config;
        self
    }

    /// The largest message accepted, in bytes ([`wsx_proto::Config::max_message_size`]); the
    /// largest frame is lowered to it when it was larger.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.config.proto.max_message_size = bytes;
        self.config.proto.max_frame_size = self.config.proto.max_frame_size.min(bytes);
        self
    }

    /// The largest frame accepted, in bytes ([`wsx_proto::Config::max_frame_size`]); it may
    /// not exceed the largest message (else the upgrade is answered with 500).
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.config.proto.max_frame_size = bytes;
        self
    }

    /// Accepts permessage-deflate when the client offers it, with these settings
    /// ([`WebSocketConfig::deflate`]; default off).
    pub fn deflate(mut self, deflate: DeflateConfig) -> Self {
        self.config.deflate = Some(deflate);
        self
    }

    /// Adds a header to the 101 response (headers of the handshake itself, `Upgrade`,
    /// `Connection`, `Sec-WebSocket-*`, are left out).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// The scheme the page that opens this WebSocket would have if it came from this server,
    /// which [`check_origin`](Self::check_origin) compares the `Origin` with: a [`Scheme`] in
    /// the request's extensions when there is one (behind TLS, add one for every request with
    /// `Router::layer(axum::Extension(Scheme::Https))`), else `Https` for a request target
    /// with an `https`/`wss` scheme, else `Http`.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// Checks the request's `Origin` against `policy` (see [`crate::origin`]), with
    /// [`scheme`](Self::scheme) for same-origin, and the request's `Host` header (over HTTP/2,
    /// which has none, its `:authority`) as the server's host. `Err` is the `403 Forbidden` to answer with:
    /// `upgrade.reject(rejection)`, or `?` in a handler returning `Result<Response,
    /// UpgradeRejection>`.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    ///
    /// use axum::extract::State;
    /// use axum::response::Response;
    /// use wsx::axum::{UpgradeRejection, WebSocketUpgrade};
    /// use wsx::origin::OriginPolicy;
    ///
    /// async fn chat(
    ///     State(origins): State<Arc<OriginPolicy>>,
    ///     upgrade: WebSocketUpgrade,
    /// ) -> Result<Response, UpgradeRejection> {
    ///     upgrade.check_origin(&origins)?;
    ///     Ok(upgrade.on_upgrade(|ws| async move { drop(ws) }))
    /// }
    /// ```
    pub fn check_origin(&self, policy: &OriginPolicy) -> Result<(), Rejection> {
        let host = self.host.as_ref().and_then(|h| h.to_str().ok());
        policy.check(self.upgrade.request().origin.as_deref(), host, self.scheme)
    }

    /// Called with the error when the connection is not handed over (the client left, or the
    /// handshake timeout passed first), instead of logging it at `debug` level.
    pub fn on_failed_upgrade(mut self, callback: impl FnOnce(Error) + Send + 'static) -> Self {
        self.on_failed = Some(Box::new(callback));
        self
    }

    /// Accepts the upgrade: returns the 101 response for the handler to return, and runs
    /// `callback` on the open [`WebSocket`] in a new task once axum has handed the connection
    /// over (within the handshake timeout, counted from the extraction; see
    /// [`on_failed_upgrade`](Self::on_failed_upgrade) for when it does not happen). A
    /// configuration that fails [`Config::validate`](wsx_proto::Config::validate) is answered
    /// with 500 (and logged), as [`Incoming::accept`](crate::Incoming::accept) does.
    pub fn on_upgrade<F, Fut>(self, callback: F) -> Response
    where
        F: FnOnce(WebSocket<UpgradedStream>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let accept = Accept { protocol: self.protocol, headers: self.headers };
        let (response, upgrading) = match self.upgrade.accept(accept, &self.config) {
            Ok(accepted) => accepted,
            Err(rejection) => return UpgradeRejection(rejection).into_response(),
        };
        let on_failed = self.on_failed;
        tokio::spawn(async move {
            match upgrading.await {
                Ok(ws) => callback(ws).await,
                Err(e) => match on_failed {
                    Some(on_failed) => on_failed(e),
                    None => tracing::debug!(error = %e, "WebSocket upgrade failed"),
                },
            }
        });
        response.map(|()| axum::body::Body::empty())
    }

    /// Refuses the upgrade with `rejection` (a status, headers and a short body).
    pub fn reject(self, rejection: Rejection) -> Response {
        UpgradeRejection(rejection).into_response()
    }
}

/// A refused WebSocket upgrade, as an axum response: the rejection's status, headers and
/// body. The [`WebSocketUpgrade`] extractor fails with it for a request that is not a valid
/// upgrade; build one from any [`Rejection`] to refuse with it.
#[derive(Debug, Clone)]
pub struct UpgradeRejection(pub Rejection);

impl UpgradeRejection {
    /// The status, headers and body.
    pub fn rejection(&self) -> &Rejection {
        &self.0
    }
}

impl From<Rejection> for UpgradeRejection {
    fn from(rejection: Rejection) -> Self {
        Self(rejection)
    }
}

impl std::fmt::Display for UpgradeRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebSocket upgrade refused with {}: {}", self.0.status, self.0.body.trim_end())
    }
}

impl std::error::Error for UpgradeRejection {}

impl IntoResponse for UpgradeRejection {
    fn into_response(self) -> Response {
        rejection_response(&self.0).map(axum::body::Body::from)
    }
}
