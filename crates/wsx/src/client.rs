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

/// The rustls configuration of a `wss://` connection (uninhabited without TLS, where `wss://`
/// fails before connecting).
#[cfg(feature = "tls")]
type RustlsConfig = std::sync::Arc<rustls::ClientConfig>;
#[cfg(not(feature = "tls"))]
type RustlsConfig = std::convert::Infallible;

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
    #[cfg(feature = "http2")]
    http2: Http2Settings,
}

/// What [`ClientBuilder::http2`] and its siblings set.
#[cfg(feature = "http2")]
#[derive(Debug, Clone, Default)]
struct Http2Settings {
    mode: crate::h2::Http2Mode,
    fallback: crate::h2::Http2Fallback,
    config: crate::h2::Http2Config,
}

/// Where `connect` goes, for a second connection (the HTTP/1.1 fallback).
#[cfg_attr(not(feature = "http2"), allow(dead_code))]
struct Target {
    host: String,
    port: u16,
    scheme: &'static str,
    deadline: tokio::time::Instant,
    timeout: Duration,
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
            #[cfg(feature = "http2")]
            http2: Http2Settings::default(),
        }
    }

    /// Whether to carry the WebSocket over HTTP/2 (RFC 8441; feature `http2`). Default
    /// [`Http2Mode::Off`](crate::h2::Http2Mode::Off): HTTP/1.1 only.
    ///
    /// With [`Http2Mode::Prefer`](crate::h2::Http2Mode::Prefer), a `wss://` connection offers
    /// ALPN `h2,http/1.1` (through the proxy's tunnel too: TLS runs end to end), waits for the
    /// server's SETTINGS within the handshake timeout, and opens the WebSocket as an extended
    /// CONNECT stream when the server enabled it; it continues as HTTP/1.1 on the same
    /// connection when the server chose `http/1.1` (or no protocol), and opens a new HTTP/1.1
    /// connection when the server chose `h2` without enabling WebSockets on it (see
    /// [`http2_fallback`](Self::http2_fallback)). `ws://` stays HTTP/1.1 unless the mode is
    /// [`Http2Mode::Only`](crate::h2::Http2Mode::Only) (h2c with prior knowledge).
    ///
    /// Over HTTP/2 the WebSocket's stream is [`MaybeTlsStream::Http2`] and the response's
    /// version is `HTTP/2.0`; the response's extensions say which way it went
    /// ([`Http2Outcome`](crate::h2::Http2Outcome)). The HTTP/2 connection carries this one
    /// WebSocket and ends with it (for several WebSockets on one connection, see
    /// [`crate::h2`]).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), wsx::Error> {
    /// use wsx::h2::{Http2Mode, Http2Outcome};
    ///
    /// let (ws, response) = wsx::ClientBuilder::new("wss://example.com/feed")
    ///     .http2(Http2Mode::Prefer)
    ///     .connect()
    ///     .await?;
    /// match response.extensions().get::<Http2Outcome>() {
    ///     Some(Http2Outcome::Http2 { stream_id }) => println!("HTTP/2, stream {stream_id}"),
    ///     _ => println!("HTTP/1.1"),
    /// }
    /// assert_eq!(ws.get_ref().is_http2(), response.version() == http::Version::HTTP_2);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "http2")]
    pub fn http2(mut self, mode: crate::h2::Http2Mode) -> Self {
        self.http2.mode = mode;
        self
    }

    /// What [`Http2Mode::Prefer`](crate::h2::Http2Mode::Prefer) does when the server chose
    /// `h2` by ALPN but did not advertise `SETTINGS_ENABLE_CONNECT_PROTOCOL`: open a new
    /// HTTP/1.1 connection ([`Http2Fallback::Http1`](crate::h2::Http2Fallback::Http1), the
    /// default) or fail with [`HandshakeError::ConnectProtocolDisabled`]
    /// ([`Http2Fallback::Fail`](crate::h2::Http2Fallback::Fail)).
    #[cfg(feature = "http2")]
    pub fn http2_fallback(mut self, fallback: crate::h2::Http2Fallback) -> Self {
        self.http2.fallback = fallback;
        self
    }

    /// The HTTP/2 connection's windows and send buffer (see
    /// [`Http2Config`](crate::h2::Http2Config); its `handshake_timeout` is not used here: the
    /// builder's [`handshake_timeout`](Self::handshake_timeout) bounds the whole `connect`).
    /// Checked by `connect` ([`Error::Config`]) when HTTP/2 is on.
    #[cfg(feature = "http2")]
    pub fn http2_config(mut self, config: crate::h2::Http2Config) -> Self {
        self.http2.config = config;
        self
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
        #[cfg(feature = "http2")]
        if self.http2.mode != crate::h2::Http2Mode::Off {
            self.http2.config.validate()?;
        }
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
        let tls: Option<RustlsConfig> = if secure { Some(self.rustls_config().await?) } else { None };
        #[cfg(not(feature = "tls"))]
        let tls: Option<RustlsConfig> = if secure { return Err(crate::TlsError::NotBuiltIn.into()) } else { None };
        let timeout = self.config.proto.handshake_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let scheme = if secure { "wss" } else { "ws" };
        let target = Target { host, port, scheme, deadline, timeout };
        let fut = async move {
            let tcp = self.tcp(&target).await?;
            #[cfg(feature = "http2")]
            if self.http2.mode != crate::h2::Http2Mode::Off {
                return self.connect_http2(tcp, tls, &target, &uri).await;
            }
            let stream = match tls {
                #[cfg(feature = "tls")]
                Some(config) => MaybeTlsStream::Tls(Box::new(crate::tls::connect(config, &target.host, tcp).await?)),
                #[cfg(not(feature = "tls"))]
                Some(never) => match never {},
                None => MaybeTlsStream::Plain(tcp),
            };
            self.handshake_on(stream, &uri).await
        };
        tokio::time::timeout_at(deadline, fut).await.map_err(|_| Error::HandshakeTimeout(timeout))?
    }

    /// The TCP connection to `target`, directly or through the proxy.
    async fn tcp(&self, target: &Target) -> Result<tokio::net::TcpStream, Error> {
        let limits = &self.config.proto.handshake;
        proxy::connect(&self.proxy, target.scheme, &target.host, target.port, limits, target.deadline, target.timeout)
            .await
    }

    /// `connect` with an [`Http2Mode`](crate::h2::Http2Mode) other than `Off`, once `tcp` is
    /// connected (see [`http2`](Self::http2) for the rules).
    #[cfg(feature = "http2")]
    async fn connect_http2(
        self,
        tcp: tokio::net::TcpStream,
        tls: Option<RustlsConfig>,
        target: &Target,
        uri: &Uri,
    ) -> Result<(WebSocket<MaybeTlsStream>, Response<()>), Error> {
        use crate::h2::{Http2Connection, Http2Mode, Http2Outcome};
        let peer = tcp.peer_addr().ok();
        let only = self.http2.mode == Http2Mode::Only;
        let Some(tls) = tls else {
            if !only {
                return with_outcome(self.handshake_on(MaybeTlsStream::Plain(tcp), uri).await, Http2Outcome::Http1);
            }
            let h2 = Http2Connection::start_owned(tcp, &self.http2.config, Some(false)).await?;
            return self.open_http2(h2, peer).await;
        };
        #[cfg(not(feature = "tls"))]
        {
            let _ = target; // only the TLS fallback reconnects
            match tls {}
        }
        #[cfg(feature = "tls")]
        {
            use crate::tls::{ALPN_H2, ALPN_HTTP1};
            let offer = if only { vec![ALPN_H2.to_vec()] } else { vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()] };
            let stream = crate::tls::connect(with_alpn(&tls, offer), &target.host, tcp).await?;
            let alpn = stream.get_ref().1.alpn_protocol();
            if alpn != Some(ALPN_H2) {
                if only {
                    let chosen = alpn.map(|a| String::from_utf8_lossy(a).into_owned());
                    return Err(crate::h2::Http2Error::NotNegotiated(chosen).into());
                }
                tracing::debug!("the server chose HTTP/1.1 by ALPN");
                let stream = MaybeTlsStream::Tls(Box::new(stream));
                return with_outcome(self.handshake_on(stream, uri).await, Http2Outcome::Http1);
            }
            match Http2Connection::start_owned(stream, &self.http2.config, Some(true)).await {
                Ok(h2) => self.open_http2(h2, peer).await,
                Err(Error::Handshake(HandshakeError::ConnectProtocolDisabled))
                    if !only && self.http2.fallback == crate::h2::Http2Fallback::Http1 =>
                {
                    tracing::debug!(
                        "the server chose h2 without SETTINGS_ENABLE_CONNECT_PROTOCOL: a new HTTP/1.1 connection"
                    );
                    let tcp = self.tcp(target).await?;
                    let stream =
                        crate::tls::connect(with_alpn(&tls, vec![ALPN_HTTP1.to_vec()]), &target.host, tcp).await?;
                    let stream = MaybeTlsStream::Tls(Box::new(stream));
                    with_outcome(self.handshake_on(stream, uri).await, Http2Outcome::Http1Fallback)
                }
                Err(e) => Err(e),
            }
        }
    }

    /// Opens the WebSocket on `h2`, which carries it alone.
    #[cfg(feature = "http2")]
    async fn open_http2(
        self,
        (h2, task): (crate::h2::Http2Connection, tokio::task::JoinHandle<()>),
        peer: Option<std::net::SocketAddr>,
    ) -> Result<(WebSocket<MaybeTlsStream>, Response<()>), Error> {
        let h2 = h2.with_peer_addr(peer);
        let wrap = move |mut stream: crate::h2::Http2Stream| {
            // This WebSocket is the connection's only user: closing it closes the connection.
            stream.own_connection(task);
            MaybeTlsStream::Http2(Box::new(stream))
        };
        let (ws, mut response) = h2.open_as(&self.url, self.request, &self.config, wrap).await?;
        if let Some(stream) = ws.get_ref().http2_stream() {
            let outcome = crate::h2::Http2Outcome::Http2 { stream_id: stream.stream_id() };
            response.extensions_mut().insert(outcome);
        }
        Ok((ws, response))
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
        let mut conn = Connection::client_shared(self.config.shared_proto(), now(), OsRandom::new());
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

/// `result`'s response with `outcome` in its extensions.
#[cfg(feature = "http2")]
fn with_outcome(
    result: Result<(WebSocket<MaybeTlsStream>, Response<()>), Error>,
    outcome: crate::h2::Http2Outcome,
) -> Result<(WebSocket<MaybeTlsStream>, Response<()>), Error> {
    result.map(|(ws, mut response)| {
        response.extensions_mut().insert(outcome);
        (ws, response)
    })
}

/// A copy of `config` offering the ALPN protocols `alpn`.
#[cfg(all(feature = "http2", feature = "tls"))]
fn with_alpn(config: &RustlsConfig, alpn: Vec<Vec<u8>>) -> RustlsConfig {
    let mut config = (**config).clone();
    config.alpn_protocols = alpn;
    std::sync::Arc::new(config)
}

fn parse_url(url: &str) -> Result<Uri, Error> {
    url.parse::<Uri>().map_err(|e| Error::InvalidUrl(format!("{url}: {e}")))
}
