//! The client role: [`connect`] and [`ClientBuilder`].

use std::time::Duration;

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, Response, Uri};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use wsx_proto::deflate::PerMessageDeflate;
use wsx_proto::handshake::{ClientHandshake, ClientRequestConfig, HandshakeError, HandshakeLimits};
use wsx_proto::Connection;

use crate::io::now;
use crate::proxy::{self, ProxyConfig};
use crate::rng::{handshake_key, OsRandom};
use crate::server::read_head;
use crate::{Error, MaybeTlsStream, WebSocket, WebSocketConfig};

/// How a `wss://` connection sets up TLS.
#[cfg(feature = "tls")]
#[derive(Debug, Clone, Default)]
enum TlsSetting {
    /// [`ClientTls::new()`](crate::tls::ClientTls::new), built once per process.
    #[default]
    Default,
    /// A [`ClientTls`](crate::tls::ClientTls) of the application's.
    Custom(crate::tls::ClientTls),
    /// A whole rustls configuration of the application's.
    Config(std::sync::Arc<rustls::ClientConfig>),
}

/// Connects to a `ws://` or `wss://` URL with default settings (for `wss://`: the system's
/// trusted roots, see `wsx::tls`, which a TLS feature brings).
///
/// ```no_run
/// # async fn run() -> Result<(), wsx::Error> {
/// let (mut ws, _response) = wsx::connect("ws://127.0.0.1:9001/echo").await?;
/// ws.send_text("hello").await?;
/// if let Some(reply) = ws.recv().await {
///     println!("{:?}", reply?);
/// }
/// ws.close(wsx::CloseCode::NORMAL, "bye").await?;
/// # Ok(()) }
/// ```
///
/// **Cancel safety**: cancelling drops the half-open connection.
pub async fn connect(url: &str) -> Result<(WebSocket<MaybeTlsStream>, Response<()>), Error> {
    ClientBuilder::new(url).connect().await
}

/// Configures and opens a client connection.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    request: ClientRequestConfig,
    config: WebSocketConfig,
    /// The first header given to [`header`](Self::header) that could not be used: name and why.
    invalid_header: Option<(String, &'static str)>,
    proxy: ProxyConfig,
    #[cfg(feature = "tls")]
    tls: TlsSetting,
}

impl ClientBuilder {
    /// A builder for `url` (`ws://host[:port]/path?query` or `wss://…`).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            request: ClientRequestConfig::default(),
            config: WebSocketConfig::default(),
            invalid_header: None,
            proxy: ProxyConfig::default(),
            #[cfg(feature = "tls")]
            tls: TlsSetting::Default,
        }
    }

    /// TLS settings for `wss://`: trust roots, extra CAs, a client certificate (see
    /// [`ClientTls`](crate::tls::ClientTls)). Default: `ClientTls::new()`, the system's roots.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::tls::ClientTls) -> Self {
        self.tls = TlsSetting::Custom(tls);
        self
    }

    /// A whole rustls client configuration for `wss://`, used as it is (set its
    /// `alpn_protocols` to `http/1.1`, or leave them empty, for servers that also speak HTTP/2).
    #[cfg(feature = "tls")]
    pub fn tls_config(mut self, config: std::sync::Arc<rustls::ClientConfig>) -> Self {
        self.tls = TlsSetting::Config(config);
        self
    }

    /// Adds a header to the upgrade request.
    ///
    /// An invalid name or value (for example a value containing a line break) makes
    /// [`connect`](Self::connect) and [`connect_on`](Self::connect_on) fail with
    /// [`HandshakeError::InvalidHeader`] naming the first such header, before anything is sent.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            (Ok(n), Ok(v)) => {
                self.request.headers.append(n, v);
            }
            (Err(_), _) => self.note_invalid_header(name, "not a valid header name"),
            (_, Err(_)) => self.note_invalid_header(name, "the value contains a character not allowed in a header"),
        }
        self
    }

    fn note_invalid_header(&mut self, name: &str, reason: &'static str) {
        if self.invalid_header.is_none() {
            self.invalid_header = Some((name.to_owned(), reason));
        }
    }

    /// The error for the first invalid header given to [`header`](Self::header), if any.
    fn check_headers(&self) -> Result<(), Error> {
        match &self.invalid_header {
            Some((name, reason)) => Err(HandshakeError::InvalidHeader { name: name.clone(), reason }.into()),
            None => Ok(()),
        }
    }

    /// Replaces all extra headers (including any invalid one given to [`header`](Self::header)).
    pub fn headers(mut self, headers: HeaderMap) -> Self {
        self.request.headers = headers;
        self.invalid_header = None;
        self
    }

    /// Sends an `Origin` header.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.request.origin = Some(origin.into());
        self
    }

    /// Offers a subprotocol (call again for more, in order of preference).
    pub fn protocol(mut self, protocol: impl Into<String>) -> Self {
        self.request.protocols.push(protocol.into());
        self
    }

    /// Sets the limits and timers of the connection. It replaces the whole configuration,
    /// including what [`proto_config`](Self::proto_config),
    /// [`handshake_limits`](Self::handshake_limits) and
    /// [`handshake_timeout`](Self::handshake_timeout) set before: call those after this.
    pub fn config(mut self, config: WebSocketConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the protocol core's limits and timers (a shortcut into [`WebSocketConfig::proto`]).
    pub fn proto_config(mut self, proto: wsx_proto::Config) -> Self {
        self.config.proto = proto;
        self
    }

    /// Bounds on the server's response head (a shortcut into
    /// [`Config::handshake`](wsx_proto::Config::handshake)). Default: 16 KiB, 64 headers.
    pub fn handshake_limits(mut self, limits: HandshakeLimits) -> Self {
        self.config.proto.handshake = limits;
        self
    }

    /// How long TCP connect plus the opening handshake may take (a shortcut into
    /// [`Config::handshake_timeout`](wsx_proto::Config::handshake_timeout)). Default 10 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.proto.handshake_timeout = timeout;
        self
    }

    /// Connects through the proxy at `url` instead of the one the environment names (if any):
    /// `http://[user:password@]host:port` (HTTP `CONNECT`), `socks5://…` (SOCKS5, the server's
    /// name resolved here) or `socks5h://…` (SOCKS5, resolved by the proxy). Without a scheme,
    /// `http://`; without a port, 1080. The environment is not read, except that hosts given to
    /// [`proxy_bypass`](Self::proxy_bypass) are still reached directly. See [`crate::proxy`].
    ///
    /// The URL is checked by [`connect`](Self::connect), which fails with [`Error::Proxy`]
    /// ([`ProxyFailure::InvalidUrl`](proxy::ProxyFailure::InvalidUrl)) naming it (without its
    /// password) if it cannot be used.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), wsx::Error> {
    /// let (ws, _) = wsx::ClientBuilder::new("ws://example.com/feed")
    ///     .proxy("http://alice:s3cret@proxy.corp:3128")
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn proxy(mut self, url: impl Into<String>) -> Self {
        self.proxy.set_proxy(url.into());
        self
    }

    /// Connects directly, whatever the environment's proxy variables say (and forgets a proxy
    /// given to [`proxy`](Self::proxy)).
    pub fn no_proxy(mut self) -> Self {
        self.proxy.set_direct();
        self
    }

    /// Hosts to reach without a proxy, in `no_proxy` syntax (see
    /// [`no_proxy_matches`](proxy::no_proxy_matches)), e.g. `"localhost,.corp.example,10.0.0.0/8"`.
    /// Applies to the proxy given to [`proxy`](Self::proxy), and replaces the environment's
    /// `no_proxy` for a proxy the environment names; `""` bypasses nothing, like curl's
    /// `--noproxy ""`.
    pub fn proxy_bypass(mut self, list: impl Into<String>) -> Self {
        self.proxy.set_bypass(list.into());
        self
    }

    /// Opens the TCP connection (directly, or through a proxy: see [`proxy`](Self::proxy) and
    /// [`crate::proxy`]), runs the TLS handshake for `wss://` (end to end, through a proxy's
    /// tunnel), and runs the opening handshake, all within the handshake timeout (the proxy's
    /// part included).
    ///
    /// Fails without connecting if a header given to [`header`](Self::header) was invalid, or
    /// [`Error::Config`] if the limits contradict each other, or [`Error::Tls`] if the TLS
    /// settings cannot be used (a key that does not match its certificate, no trusted roots).
    ///
    /// **Cancel safety**: cancelling drops the half-open connection.
    pub async fn connect(self) -> Result<(WebSocket<MaybeTlsStream>, Response<()>), Error> {
        self.check_headers()?;
        self.config.proto.validate()?;
        let uri = parse_url(&self.url)?;
        let secure = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => return Err(Error::InvalidUrl(format!("{}: the scheme must be ws:// or wss://", self.url))),
        };
        let host = uri.host().ok_or_else(|| Error::InvalidUrl(format!("no host in {}", self.url)))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        #[cfg(feature = "tls")]
        let tls = if secure { Some(self.rustls_config().await?) } else { None };
        #[cfg(not(feature = "tls"))]
        if secure {
            return Err(crate::TlsError::NotBuiltIn.into());
        }
        let timeout = self.config.proto.handshake_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let fut = async move {
            let limits = &self.config.proto.handshake;
            let scheme = if secure { "wss" } else { "ws" };
            let tcp = proxy::connect(&self.proxy, scheme, &host, port, limits, deadline, timeout).await?;
            #[cfg(feature = "tls")]
            let stream = match tls {
                Some(config) => MaybeTlsStream::Tls(Box::new(crate::tls::connect(config, &host, tcp).await?)),
                None => MaybeTlsStream::Plain(tcp),
            };
            #[cfg(not(feature = "tls"))]
            let stream = MaybeTlsStream::Plain(tcp);
            self.handshake_on(stream, &uri).await
        };
        tokio::time::timeout_at(deadline, fut).await.map_err(|_| Error::HandshakeTimeout(timeout))?
    }

    /// The rustls configuration for a `wss://` connection.
    #[cfg(feature = "tls")]
    async fn rustls_config(&self) -> Result<std::sync::Arc<rustls::ClientConfig>, Error> {
        let setting = match &self.tls {
            TlsSetting::Config(config) => return Ok(config.clone()),
            other => other.clone(),
        };
        // Built once (per process for the default, per `ClientTls` and its clones otherwise);
        // the first build reads the system's certificate store: file I/O, off the async threads.
        let build = move || match setting {
            TlsSetting::Custom(tls) => tls.config(),
            _ => crate::tls::ClientTls::default_config(),
        };
        Ok(tokio::task::spawn_blocking(build).await.map_err(std::io::Error::other)??)
    }

    /// Runs the opening handshake for `url` over a stream that is already connected (a TLS
    /// stream, a proxy tunnel, an in-memory pipe). The handshake timeout applies. Fails without
    /// writing anything if a header given to [`header`](Self::header) was invalid.
    ///
    /// **Cancel safety**: cancelling leaves the stream mid-handshake; drop it.
    pub async fn connect_on<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        stream: S,
    ) -> Result<(WebSocket<S>, Response<()>), Error> {
        self.check_headers()?;
        self.config.proto.validate()?;
        let uri = parse_url(&self.url)?;
        let timeout = self.config.proto.handshake_timeout;
        tokio::time::timeout(timeout, self.handshake_on(stream, &uri))
            .await
            .map_err(|_| Error::HandshakeTimeout(timeout))?
    }

    async fn handshake_on<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        mut stream: S,
        uri: &Uri,
    ) -> Result<(WebSocket<S>, Response<()>), Error> {
        let mut request = self.request;
        if let Some(deflate) = &self.config.deflate {
            request.extensions.push(deflate.client_offer());
        }
        let mut hs = ClientHandshake::new(uri, request, handshake_key())?;
        let mut buf = BytesMut::with_capacity(512);
        hs.write_request(&mut buf);
        stream.write_all(&buf).await?;
        stream.flush().await?;
        buf.clear();
        let limits = self.config.proto.handshake;
        let outcome = match read_head(&mut stream, &mut buf, |buf| hs.receive(buf, &limits)).await? {
            Ok(outcome) => outcome,
            Err(HandshakeError::UnexpectedStatus { status, headers, body }) => {
                let body = read_error_body(&mut stream, &headers, body).await;
                return Err(HandshakeError::UnexpectedStatus { status, headers, body }.into());
            }
            Err(e) => return Err(e.into()),
        };
        let mut conn = Connection::client(self.config.proto.clone(), now(), OsRandom::new());
        if let Some(deflate) = &self.config.deflate {
            let answer = outcome.extensions.as_deref().unwrap_or("");
            if let Some(params) =
                deflate.client_accept(answer).map_err(|e| HandshakeError::UnexpectedExtension(e.to_string()))?
            {
                conn.set_deflate(PerMessageDeflate::new(&params, false, deflate.level, deflate.compression_threshold));
            }
        }
        let ws = WebSocket::from_parts(stream, conn, buf, outcome.protocol, outcome.extensions);
        Ok((ws, outcome.response))
    }
}

/// How long a refused client waits for the rest of the refusal's body.
const ERROR_BODY_WAIT: Duration = Duration::from_secs(1);

/// Reads the rest of a refusal's body after what arrived with its head (`first`): up to its
/// `Content-Length` (without one, until the server closes), at most
/// [`MAX_ERROR_BODY_BYTES`](wsx_proto::handshake::MAX_ERROR_BODY_BYTES), for at most
/// [`ERROR_BODY_WAIT`]. Best effort: whatever arrived is kept, a read error ends it. A chunked
/// body is left as it arrived with the head (its chunk framing included).
async fn read_error_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    headers: &HeaderMap,
    first: bytes::Bytes,
) -> bytes::Bytes {
    use tokio::io::AsyncReadExt as _;
    use wsx_proto::handshake::MAX_ERROR_BODY_BYTES;
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return first;
    }
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let want =
        declared.map_or(MAX_ERROR_BODY_BYTES, |d| usize::try_from(d).unwrap_or(usize::MAX).min(MAX_ERROR_BODY_BYTES));
    if first.len() >= want {
        return first;
    }
    let mut body = BytesMut::from(&first[..]);
    let _ = tokio::time::timeout(ERROR_BODY_WAIT, async {
        while body.len() < want {
            let room = (want - body.len()) as u64;
            match (&mut *stream).take(room).read_buf(&mut body).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    body.freeze()
}

fn parse_url(url: &str) -> Result<Uri, Error> {
    url.parse::<Uri>().map_err(|e| Error::InvalidUrl(format!("{url}: {e}")))
}
