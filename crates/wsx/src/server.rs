//! The server role: [`accept`], [`accept_with`], and [`Incoming`] for full control over the
//! request (plain HTTP answers, routing, refusals).

use bytes::BytesMut;
use http::{HeaderMap, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use wsx_proto::deflate::PerMessageDeflate;
use wsx_proto::handshake::{self, HandshakeError, HandshakeLimits, Rejection, UpgradeRequest};
use wsx_proto::Connection;

use crate::io::now;
use crate::{Error, WebSocket, WebSocketConfig};

/// Server settings. Every limit and timer, the handshake's included (head size, header count,
/// handshake timeout), lives in [`wsx_proto::Config`] at `websocket.proto`.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Limits and timers of each connection and of its opening handshake, and compression.
    pub websocket: WebSocketConfig,
    /// Keep the accepted request (path, query, headers) on the connection, for
    /// [`WebSocket::request`]. Default off: the headers cost about 1.5 KB per connection for its
    /// whole life (an idle wsx connection costs under 3 KB without them); the accept callback
    /// sees the request either way.
    pub keep_request: bool,
}

/// What the application decided about an upgrade request.
#[derive(Debug, Clone, Default)]
pub struct Accept {
    /// The subprotocol to select; it must be one the client offered (else the handshake is
    /// refused with 500, since answering with another would break the client).
    pub protocol: Option<String>,
    /// Extra response headers.
    pub headers: HeaderMap,
}

/// Accepts a WebSocket connection on `stream` with default settings, refusing bad requests with
/// the right HTTP status (400, 426, 431).
///
/// ```no_run
/// # async fn run() -> Result<(), wsx::Error> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
/// loop {
///     let (tcp, _) = listener.accept().await?;
///     tokio::spawn(async move {
///         let mut ws = wsx::accept(tcp).await?;
///         while let Some(msg) = ws.recv().await {
///             let msg = msg?;
///             if msg.is_data() {
///                 ws.feed(msg).await?; // batched: leaves when `recv` waits for input
///             }
///         }
///         Ok::<_, wsx::Error>(())
///     });
/// }
/// # }
/// ```
///
/// **Cancel safety**: cancelling drops the half-open connection.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(stream: S) -> Result<WebSocket<S>, Error> {
    accept_with(stream, &ServerConfig::default(), |_, _| Ok(Accept::default())).await
}

/// Accepts a connection after `decide` has seen the request (path, headers, `Origin`) and the
/// parsed upgrade (offered subprotocols): it returns an [`Accept`] or a [`Rejection`] (for
/// example 403 for a refused Origin), which is sent as the HTTP answer. With
/// [`ServerConfig::keep_request`] the request stays on the connection: [`WebSocket::request`].
///
/// **Cancel safety**: cancelling drops the half-open connection.
pub async fn accept_with<S, F>(stream: S, config: &ServerConfig, decide: F) -> Result<WebSocket<S>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Request<()>, &UpgradeRequest) -> Result<Accept, Rejection>,
{
    accept_with_async(stream, config, |request, upgrade| std::future::ready(decide(request, upgrade))).await
}

/// As [`accept_with`], with an asynchronous decision (a token checked against a database, a
/// session looked up in a store). `decide` sees the request and returns a future that must not
/// borrow it: copy out what the check needs first. The handshake timeout bounds the whole
/// handshake, the decision included.
///
/// ```no_run
/// # async fn lookup(_: Option<http::HeaderValue>) -> bool { true }
/// # async fn run(tcp: tokio::net::TcpStream) -> Result<(), wsx::Error> {
/// let config = wsx::ServerConfig::default();
/// let ws = wsx::accept_with_async(tcp, &config, |request, _| {
///     let token = request.headers().get("authorization").cloned();
///     async move {
///         if lookup(token).await {
///             Ok(wsx::Accept::default())
///         } else {
///             Err(wsx::Rejection::new(http::StatusCode::UNAUTHORIZED, "unknown token"))
///         }
///     }
/// })
/// .await?;
/// # Ok(()) }
/// ```
///
/// **Cancel safety**: cancelling drops the half-open connection.
pub async fn accept_with_async<S, F, Fut>(stream: S, config: &ServerConfig, decide: F) -> Result<WebSocket<S>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&Request<()>, &UpgradeRequest) -> Fut,
    Fut: std::future::Future<Output = Result<Accept, Rejection>>,
{
    // The handshake's state, its timer included, lives in its own allocation, freed once the
    // connection is open: a task that awaits `accept_with` and then serves the connection keeps
    // only a pointer's worth of it for its whole life (idle connections are that much cheaper).
    let timeout = config.websocket.proto.handshake_timeout;
    let handshake = async move {
        let incoming = Incoming::read(stream, &config.websocket.proto.handshake).await?;
        let upgrade = match handshake::check_request(incoming.request()) {
            Ok(u) => u,
            Err(rejection) => return Err(incoming.reject(rejection).await),
        };
        match decide(incoming.request(), &upgrade).await {
            Ok(accept) if config.keep_request => {
                let request = incoming.request().clone();
                Ok(incoming.accept(&upgrade, accept, &config.websocket).await?.with_request(request))
            }
            Ok(accept) => incoming.accept(&upgrade, accept, &config.websocket).await,
            Err(rejection) => Err(incoming.reject(rejection).await),
        }
    };
    Box::pin(
        async move { tokio::time::timeout(timeout, handshake).await.map_err(|_| Error::HandshakeTimeout(timeout))? },
    )
    .await
}

/// A request head read from a stream, before we decide how to answer it.
#[derive(Debug)]
pub struct Incoming<S> {
    stream: S,
    request: Request<()>,
    leftover: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Incoming<S> {
    /// Reads one HTTP request head from `stream`. A head over the limits or malformed is answered
    /// (431 or 400, with a short body) and reported as [`Error::Handshake`]; a stream that closes
    /// first is [`Error::Handshake`] too. Apply your own timeout.
    ///
    /// **Cancel safety**: not cancel-safe (bytes read so far are lost).
    pub async fn read(mut stream: S, limits: &HandshakeLimits) -> Result<Self, Error> {
        let mut buf = BytesMut::with_capacity(1024);
        let mut reader = handshake::RequestReader::new();
        match read_head(&mut stream, &mut buf, |buf| reader.read(buf, limits)).await? {
            Ok(request) => Ok(Self { stream, request, leftover: buf }),
            Err(e) => {
                if let Some(rejection) = e.to_rejection() {
                    let _ = write_rejection(&mut stream, &rejection).await;
                }
                Err(e.into())
            }
        }
    }

    /// The request (method, target, headers).
    pub fn request(&self) -> &Request<()> {
        &self.request
    }

    /// Whether the request asks for a WebSocket upgrade (has `Upgrade: websocket`).
    pub fn is_upgrade(&self) -> bool {
        handshake::is_upgrade_request(&self.request)
    }

    /// Completes the upgrade: writes the 101 response and returns the open connection. A
    /// configuration that fails [`Config::validate`](wsx_proto::Config::validate) is answered
    /// with 500 and reported as [`Error::Config`].
    ///
    /// **Cancel safety**: cancelling drops the half-open connection.
    pub async fn accept(
        mut self,
        upgrade: &UpgradeRequest,
        accept: Accept,
        config: &WebSocketConfig,
    ) -> Result<WebSocket<S>, Error> {
        let answer = match answer(upgrade, accept, config) {
            Ok(answer) => answer,
            Err(refusal) => {
                // The error says why; the refusal is a courtesy to the client.
                let _ = write_rejection(&mut self.stream, &refusal.rejection).await;
                return Err(refusal.error);
            }
        };
        let mut out = BytesMut::with_capacity(256);
        handshake::write_response(&answer.response, &mut out);
        self.stream.write_all(&out).await?;
        self.stream.flush().await?;
        Ok(WebSocket::from_parts(self.stream, answer.conn, self.leftover, answer.protocol, answer.extensions))
    }

    /// Answers with `rejection` and closes the stream; returns the error to report.
    ///
    /// **Cancel safety**: cancelling may cut the answer short.
    pub async fn reject(mut self, rejection: Rejection) -> Error {
        if let Err(e) = write_rejection(&mut self.stream, &rejection).await {
            return e.into();
        }
        Error::Handshake(HandshakeError::Rejected(Box::new(rejection)))
    }

    /// The stream and any bytes read past the head, to answer a plain HTTP request yourself.
    pub fn into_parts(self) -> (S, Request<()>, BytesMut) {
        (self.stream, self.request, self.leftover)
    }
}

/// The server's side of an upgrade it accepts: the `101 Switching Protocols` response and the
/// connection set up to match it.
pub(crate) struct Answer {
    pub(crate) response: Response<()>,
    pub(crate) conn: Connection,
    pub(crate) protocol: Option<String>,
    pub(crate) extensions: Option<String>,
}

/// Why an upgrade the application accepted cannot be answered with 101: the HTTP answer to send
/// instead, and the error to report.
pub(crate) struct Refusal {
    pub(crate) rejection: Rejection,
    pub(crate) error: Error,
}

/// Turns a checked request, the application's decision and the configuration into the server's
/// answer: validates the configuration, checks that the chosen subprotocol was offered,
/// negotiates permessage-deflate and builds the 101 response, all with `wsx-proto`. The one
/// place that does this, for [`Incoming::accept`] and the hyper adapter alike, so both answer a
/// request the same way.
pub(crate) fn answer(upgrade: &UpgradeRequest, accept: Accept, config: &WebSocketConfig) -> Result<Answer, Refusal> {
    if let Err(e) = config.proto.validate() {
        let rejection = Rejection::new(StatusCode::INTERNAL_SERVER_ERROR, "server misconfigured");
        return Err(Refusal { rejection, error: e.into() });
    }
    if let Some(p) = &accept.protocol {
        if !upgrade.protocols.iter().any(|o| o == p) {
            let rejection = Rejection::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server selected a subprotocol the client did not offer",
            );
            let error = HandshakeError::Rejected(Box::new(rejection.clone())).into();
            return Err(Refusal { rejection, error });
        }
    }
    let mut conn = Connection::server_shared(config.shared_proto(), now());
    let mut extensions = None;
    if let Some(deflate) = &config.deflate {
        if let Some((params, answer)) = deflate.server_negotiate(&upgrade.extensions) {
            conn.set_deflate(PerMessageDeflate::new(&params, true, deflate.level, deflate.compression_threshold));
            extensions = Some(answer);
        }
    }
    let response =
        handshake::accept_response(upgrade, accept.protocol.as_deref(), extensions.as_deref(), &accept.headers);
    Ok(Answer { response, conn, protocol: accept.protocol, extensions })
}

/// Reads from `stream` into `buf` until `parse` finds a whole HTTP head at its front (the one
/// read loop of both roles: `parse` is a [`handshake::RequestReader`] or a
/// [`handshake::ClientHandshake`]). `parse` is tried before the first read, for bytes already
/// in `buf`.
///
/// The outer error is an I/O error or the stream ending before the head did; the inner one is
/// the parser refusing the head (the server answers that with an HTTP status).
pub(crate) async fn read_head<S, T>(
    stream: &mut S,
    buf: &mut BytesMut,
    mut parse: impl FnMut(&mut BytesMut) -> Result<Option<T>, HandshakeError>,
) -> Result<Result<T, HandshakeError>, Error>
where
    S: AsyncRead + Unpin,
{
    loop {
        match parse(buf) {
            Ok(Some(head)) => return Ok(Ok(head)),
            Ok(None) => {}
            Err(e) => return Ok(Err(e)),
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(HandshakeError::Malformed("connection closed before the HTTP head ended".into()).into());
        }
    }
}

async fn write_rejection<S: AsyncWrite + Unpin>(stream: &mut S, rejection: &Rejection) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    rejection.write_to(&mut out);
    stream.write_all(&out).await?;
    stream.flush().await?;
    stream.shutdown().await
}
