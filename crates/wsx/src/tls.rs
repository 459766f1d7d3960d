//! TLS for `wss://` clients and for servers, on rustls (features `ring` (default) or
//! `aws-lc-rs`).
//!
//! # No footguns
//!
//! - **An explicit crypto provider.** Every rustls configuration wsx builds names its provider
//!   (`builder_with_provider`): `ring` by default, `aws-lc-rs` when that feature is on (it wins
//!   when both are). Nothing here depends on a process-wide default `CryptoProvider`, so no code
//!   path panics because none was installed, and installing one elsewhere changes nothing here.
//! - **Trust roots.** By default a client trusts the operating system's root certificates, read
//!   with [`rustls-native-certs`](https://docs.rs/rustls-native-certs) (feature `native-roots`,
//!   on by default) once per process. We chose it over `rustls-platform-verifier` because it
//!   gives one `RootCertStore` that extra CAs join, verification that is
//!   the same webpki code on every platform, and it honours `SSL_CERT_FILE` / `SSL_CERT_DIR`
//!   like OpenSSL does (useful for containers and tests); the price is no OS-specific policy
//!   (enterprise roots in the macOS keychain or Windows' store are still read, but revocation
//!   and constraints set by the OS are not applied). The `webpki-roots` feature compiles in
//!   Mozilla's roots instead (`ClientTls::webpki_roots`; the default when `native-roots` is
//!   off).
//! - **ALPN** `http/1.1` on both sides, so a server that also speaks HTTP/2 answers with 1.1.
//! - **Errors a user can act on**: [`TlsError`] names an unknown issuer, a name mismatch, an
//!   expired certificate, the peer's alert, a PEM file without a certificate or key, a key that
//!   does not match its certificate.
//!
//! # A client
//!
//! `wsx::connect("wss://…")` just works with the system's roots. To trust a private CA, or to
//! present a client certificate:
//!
//! ```no_run
//! # async fn run() -> Result<(), wsx::Error> {
//! use wsx::tls::ClientTls;
//! let tls = ClientTls::new()
//!     .add_ca_pem_file("ca.pem")?
//!     .client_auth_pem_files("client.pem", "client-key.pem")?;
//! let (ws, _) = wsx::ClientBuilder::new("wss://internal.example:8443/feed").tls(tls).connect().await?;
//! # Ok(()) }
//! ```
//!
//! # A server
//!
//! ```no_run
//! # async fn run() -> Result<(), wsx::Error> {
//! let acceptor = wsx::tls::ServerTls::from_pem_files("cert.pem", "key.pem")?.acceptor()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
//! loop {
//!     let (tcp, _) = listener.accept().await?;
//!     let acceptor = acceptor.clone();
//!     tokio::spawn(async move {
//!         // Bound the TLS handshake as the WebSocket handshake is bounded.
//!         let tls = tokio::time::timeout(std::time::Duration::from_secs(10), wsx::tls::accept(&acceptor, tcp))
//!             .await
//!             .map_err(|_| wsx::Error::HandshakeTimeout(std::time::Duration::from_secs(10)))??;
//!         let mut ws = wsx::accept(tls).await?;
//!         while let Some(msg) = ws.recv().await {
//!             let msg = msg?;
//!             if msg.is_data() {
//!                 ws.feed(msg).await?;
//!             }
//!         }
//!         Ok::<_, wsx::Error>(())
//!     });
//! }
//! # }
//! ```

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

pub use crate::tls_error::TlsError;
use crate::Error;
/// The rustls crate wsx is built on, for [`ClientBuilder::tls_config`](crate::ClientBuilder::tls_config)
/// and [`ServerTls::build`].
pub use rustls;
pub use tokio_rustls::{TlsAcceptor, TlsConnector};

#[cfg(not(any(feature = "ring", feature = "aws-lc-rs")))]
compile_error!("wsx's `tls` feature needs a crypto provider: enable the `ring` or the `aws-lc-rs` feature");

/// The crypto provider of every configuration wsx builds: `aws-lc-rs` when that feature is on,
/// else `ring`.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            #[cfg(feature = "aws-lc-rs")]
            let provider = rustls::crypto::aws_lc_rs::default_provider();
            #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
            let provider = rustls::crypto::ring::default_provider();
            Arc::new(provider)
        })
        .clone()
}

pub(crate) const ALPN_HTTP1: &[u8] = b"http/1.1";
/// The ALPN name of HTTP/2 over TLS (RFC 9113 §3.2).
#[cfg(feature = "http2")]
pub(crate) const ALPN_H2: &[u8] = b"h2";

/// Where a client's trusted roots come from, before the CAs added with [`ClientTls::add_ca_pem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Roots {
    /// The operating system's store (`rustls-native-certs`).
    #[cfg(feature = "native-roots")]
    System,
    /// Mozilla's roots, compiled in (`webpki-roots`).
    #[cfg(feature = "webpki-roots")]
    WebPki,
    /// Only the added CAs.
    None,
}

impl Default for Roots {
    fn default() -> Self {
        #[cfg(feature = "native-roots")]
        return Roots::System;
        #[cfg(all(feature = "webpki-roots", not(feature = "native-roots")))]
        return Roots::WebPki;
        #[cfg(not(any(feature = "native-roots", feature = "webpki-roots")))]
        return Roots::None;
    }
}

/// How a client verifies servers and what it presents: trust roots, extra CAs, a client
/// certificate. Build one and give it to [`ClientBuilder::tls`](crate::ClientBuilder::tls), or
/// pass a whole [`rustls::ClientConfig`] with
/// [`ClientBuilder::tls_config`](crate::ClientBuilder::tls_config).
pub struct ClientTls {
    roots: Roots,
    extra_roots: Vec<CertificateDer<'static>>,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    insecure: bool,
    /// The configuration built from the settings above, shared by clones, so that connections
    /// made with one `ClientTls` share one root store and one session cache. Reset by every
    /// setter.
    built: Arc<OnceLock<Result<Arc<rustls::ClientConfig>, TlsError>>>,
}

impl Clone for ClientTls {
    fn clone(&self) -> Self {
        Self {
            roots: self.roots,
            extra_roots: self.extra_roots.clone(),
            client_auth: self.client_auth.as_ref().map(|(certs, key)| (certs.clone(), key.clone_key())),
            insecure: self.insecure,
            built: self.built.clone(),
        }
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("roots", &self.roots)
            .field("extra_roots", &self.extra_roots.len())
            .field("client_auth", &self.client_auth.is_some())
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl Default for ClientTls {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientTls {
    /// The defaults: the system's roots (or Mozilla's with only the `webpki-roots` feature), no
    /// client certificate.
    pub fn new() -> Self {
        Self {
            roots: Roots::default(),
            extra_roots: Vec::new(),
            client_auth: None,
            insecure: false,
            built: Arc::default(),
        }
    }

    /// Trust Mozilla's root certificates, compiled in, instead of the system's.
    #[cfg(feature = "webpki-roots")]
    pub fn webpki_roots(mut self) -> Self {
        self.built = Arc::default();
        self.roots = Roots::WebPki;
        self
    }

    /// Trust only the CAs added with [`add_ca_pem`](Self::add_ca_pem), not the system's.
    pub fn only_added_roots(mut self) -> Self {
        self.built = Arc::default();
        self.roots = Roots::None;
        self
    }

    /// Also trusts the CA certificates in `pem` (one or more `CERTIFICATE` blocks).
    pub fn add_ca_pem(mut self, pem: &[u8]) -> Result<Self, TlsError> {
        self.built = Arc::default();
        self.extra_roots.extend(certificates(pem, None)?);
        Ok(self)
    }

    /// Also trusts the CA certificates in the PEM file at `path`.
    pub fn add_ca_pem_file(self, path: impl AsRef<Path>) -> Result<Self, TlsError> {
        let path = path.as_ref();
        let pem = read_file(path)?;
        let certs = certificates(&pem, Some(path))?;
        let mut this = self;
        this.built = Arc::default();
        this.extra_roots.extend(certs);
        Ok(this)
    }

    /// Presents this certificate chain (leaf first) and private key to servers that ask for one
    /// (mutual TLS). Fails if the key does not match the certificate.
    pub fn client_auth_pem(mut self, cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let certs = certificates(cert_pem, None)?;
        let key = private_key(key_pem, None)?;
        check_key_matches(&certs, &key)?;
        self.built = Arc::default();
        self.client_auth = Some((certs, key));
        Ok(self)
    }

    /// As [`client_auth_pem`](Self::client_auth_pem), from files.
    pub fn client_auth_pem_files(mut self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, TlsError> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let certs = certificates(&read_file(cert)?, Some(cert))?;
        let key = private_key(&read_file(key)?, Some(key))?;
        check_key_matches(&certs, &key)?;
        self.built = Arc::default();
        self.client_auth = Some((certs, key));
        Ok(self)
    }

    /// **Do not verify the server's certificate** (name, issuer, dates): anyone on the path can
    /// read and change the traffic. For development against self-signed servers only (`wsx
    /// connect --insecure`). Signatures in the handshake are still checked.
    pub fn danger_accept_invalid_certs(mut self) -> Self {
        self.built = Arc::default();
        self.insecure = true;
        self
    }

    /// Whether [`danger_accept_invalid_certs`](Self::danger_accept_invalid_certs) is on.
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// The rustls configuration: the crate's crypto provider, safe protocol versions, ALPN
    /// `http/1.1` (what [`ClientBuilder`](crate::ClientBuilder) speaks; `wsx::h2::connect_tls`,
    /// feature `http2`, offers `h2` instead on its own copy).
    pub fn build(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = if self.insecure {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
        } else {
            let mut store = match self.roots {
                #[cfg(feature = "native-roots")]
                Roots::System => match system_roots() {
                    Ok(store) => store.clone(),
                    Err(_) if !self.extra_roots.is_empty() => RootCertStore::empty(),
                    Err(why) => return Err(TlsError::NoRootCertificates(why.clone())),
                },
                #[cfg(feature = "webpki-roots")]
                Roots::WebPki => RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() },
                Roots::None => RootCertStore::empty(),
            };
            for ca in &self.extra_roots {
                store.add(ca.clone()).map_err(|e| TlsError::Pem {
                    source_name: "an added CA certificate".into(),
                    error: e.to_string(),
                })?;
            }
            if store.is_empty() {
                return Err(TlsError::NoRootCertificates("no CA certificate was given".into()));
            }
            builder.with_root_certificates(store)
        };
        let mut config = match &self.client_auth {
            Some((certs, key)) => {
                builder.with_client_auth_cert(certs.clone(), key.clone_key()).map_err(config_error)?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        Ok(Arc::new(config))
    }

    /// [`build`](Self::build), once for this `ClientTls` and its clones.
    pub(crate) fn config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        self.built.get_or_init(|| self.build()).clone()
    }

    /// The configuration of `ClientTls::new()`, built once per process (reading the system's
    /// store takes milliseconds).
    pub(crate) fn default_config() -> Result<Arc<rustls::ClientConfig>, TlsError> {
        static DEFAULT: OnceLock<Result<Arc<rustls::ClientConfig>, TlsError>> = OnceLock::new();
        DEFAULT.get_or_init(|| ClientTls::new().build()).clone()
    }
}

/// The system's root certificates, read once per process; `Err` says why there are none.
#[cfg(feature = "native-roots")]
fn system_roots() -> &'static Result<RootCertStore, String> {
    static ROOTS: OnceLock<Result<RootCertStore, String>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        let mut store = RootCertStore::empty();
        let (added, _ignored) = store.add_parsable_certificates(found.certs);
        if added > 0 {
            Ok(store)
        } else if let Some(e) = found.errors.first() {
            Err(format!("the system's certificate store could not be read ({e})"))
        } else {
            Err("the system's certificate store is empty".into())
        }
    })
}

/// Server TLS settings: a certificate chain and its key, optional client-certificate
/// verification, ALPN. [`acceptor`](Self::acceptor) gives the
/// [`TlsAcceptor`] to run [`accept`] (or `acceptor.accept`) with.
pub struct ServerTls {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: Option<(RootCertStore, bool)>,
    alpn: Vec<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("certs", &self.certs.len())
            .field("client_auth", &self.client_roots.as_ref().map(|(_, required)| required))
            .field("alpn", &self.alpn)
            .finish()
    }
}

impl ServerTls {
    /// From a PEM certificate chain (leaf first) and its PEM private key (PKCS#8, PKCS#1 or
    /// SEC1). Fails if either holds nothing usable or the key does not match the certificate.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        Self::new(certificates(cert_pem, None)?, private_key(key_pem, None)?)
    }

    /// As [`from_pem`](Self::from_pem), from files.
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, TlsError> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        Self::new(certificates(&read_file(cert)?, Some(cert))?, private_key(&read_file(key)?, Some(key))?)
    }

    /// From DER certificates and key (for certificates made in the program, e.g. with `rcgen`).
    pub fn from_der(certs: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Self, TlsError> {
        Self::new(certs, key)
    }

    fn new(certs: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Self, TlsError> {
        check_key_matches(&certs, &key)?;
        Ok(Self { certs, key, client_roots: None, alpn: vec![ALPN_HTTP1.to_vec()] })
    }

    /// Requires every client to present a certificate issued by one of the CAs in `ca_pem`;
    /// a client without one fails the handshake ([`TlsError::NoClientCertificate`] here, the
    /// alert `CertificateRequired` on the client).
    pub fn require_client_cert(mut self, ca_pem: &[u8]) -> Result<Self, TlsError> {
        self.client_roots = Some((root_store(ca_pem)?, true));
        Ok(self)
    }

    /// Asks clients for a certificate issued by one of the CAs in `ca_pem` and verifies one if
    /// presented, but also admits clients without one.
    pub fn request_client_cert(mut self, ca_pem: &[u8]) -> Result<Self, TlsError> {
        self.client_roots = Some((root_store(ca_pem)?, false));
        Ok(self)
    }

    /// The ALPN protocols to offer, in order of preference (default: `http/1.1`).
    pub fn alpn_protocols(mut self, protocols: Vec<Vec<u8>>) -> Self {
        self.alpn = protocols;
        self
    }

    /// The rustls configuration, with the crate's crypto provider and safe protocol versions.
    pub fn build(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &self.client_roots {
            None => builder.with_no_client_auth(),
            Some((roots, required)) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots.clone()), provider());
                let verifier = if *required { verifier } else { verifier.allow_unauthenticated() };
                builder.with_client_cert_verifier(verifier.build().map_err(|e| TlsError::Config(e.to_string()))?)
            }
        };
        let mut config = builder.with_single_cert(self.certs.clone(), self.key.clone_key()).map_err(config_error)?;
        config.alpn_protocols = self.alpn.clone();
        Ok(Arc::new(config))
    }

    /// A [`TlsAcceptor`] for [`accept`].
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        Ok(TlsAcceptor::from(self.build()?))
    }
}

/// The TLS record type of a handshake: the first byte a TLS client sends.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Runs the server side of the TLS handshake on `tcp`. A client that speaks plain HTTP to the
/// TLS port (an `http://` or `ws://` URL by mistake) gets a plain-text `400 Bad Request` saying
/// so, and this returns [`TlsError::NotTls`]; other handshake failures are [`Error::Tls`] too.
/// Apply a timeout (the WebSocket handshake timeout is a good one): a client that sends nothing
/// is waited for.
///
/// **Cancel safety**: cancelling drops the half-open connection.
pub async fn accept(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, Error> {
    // The handshake's state (a rustls connection mid-handshake, the plain-HTTP answer's
    // buffers: several KB) lives in its own allocation, freed once the stream is open: a task
    // that awaits `accept` and then serves the connection keeps a pointer's worth of it for
    // its whole life, not the largest state it ever had.
    Box::pin(accept_inner(acceptor, tcp)).await
}

async fn accept_inner(
    acceptor: &TlsAcceptor,
    mut tcp: TcpStream,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, Error> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 0 {
        return Err(TlsError::Handshake("the client closed the connection before the TLS handshake".into()).into());
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        if first[0].is_ascii_uppercase() {
            // Probably an HTTP request line: answer in its language.
            refuse_plain_http(&mut tcp).await;
        }
        return Err(TlsError::NotTls.into());
    }
    match acceptor.accept(tcp).await {
        Ok(stream) => Ok(stream),
        // Typically a client that did not trust our certificate and hung up without an alert.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(TlsError::Handshake(
            "the client closed the connection during the TLS handshake (did it refuse our certificate?)".into(),
        )
        .into()),
        Err(e) => Err(e.into()),
    }
}

/// The most of a plain-HTTP request read before answering it, and how long each side of the
/// answer may take.
const PLAIN_REQUEST_LIMIT: usize = 16 * 1024;
const PLAIN_ANSWER_TIME: Duration = Duration::from_secs(1);

/// Answers a plain-HTTP request on the TLS port with a 400 that says what to do. The request is
/// read first (up to the end of its head, 16 KiB, or a second) and what follows the answer is
/// drained briefly: closing a socket with unread bytes sends a reset, which can make the
/// client lose the answer.
async fn refuse_plain_http(tcp: &mut TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::with_capacity(1024);
    let _ = tokio::time::timeout(PLAIN_ANSWER_TIME, async {
        let mut chunk = [0u8; 1024];
        while seen.len() < PLAIN_REQUEST_LIMIT && !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let body = "This port speaks TLS: use https:// or wss://.\n";
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(PLAIN_ANSWER_TIME, async {
        tcp.write_all(answer.as_bytes()).await?;
        tcp.shutdown().await?;
        // Until the client closes (it has read the answer) or the time is up.
        let mut sink = [0u8; 1024];
        let mut drained = 0;
        while drained < PLAIN_REQUEST_LIMIT {
            match tcp.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        std::io::Result::Ok(())
    })
    .await;
}

/// Runs the client side of the TLS handshake for `host` (its SNI name, or an IP address) over a
/// connected TCP stream, with `config` (from [`ClientTls::build`], say). [`ClientBuilder::connect`]
/// does this for `wss://`; call it yourself to time the TLS handshake apart from the TCP connect
/// and the WebSocket upgrade, then finish with [`ClientBuilder::connect_on`].
///
/// Failures are sorted as [`ClientBuilder::connect`] sorts them: [`Error::Tls`] with the
/// [`TlsError`] a user can act on (unknown issuer, name mismatch, expired certificate, …).
///
/// [`ClientBuilder::connect`]: crate::ClientBuilder::connect
/// [`ClientBuilder::connect_on`]: crate::ClientBuilder::connect_on
pub async fn connect(
    config: Arc<rustls::ClientConfig>,
    host: &str,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| Error::InvalidUrl(format!("{host:?} is not a valid TLS server name")))?;
    match TlsConnector::from(config).connect(name, tcp).await {
        Ok(stream) => Ok(stream),
        // A verifier that gives no context (a custom one, through `tls_config`): name the host.
        Err(e) if matches!(from_io(&e), Some(TlsError::NameMismatch { ref expected, .. }) if expected.is_empty()) => {
            Err(TlsError::NameMismatch { expected: host.to_owned(), presented: Vec::new() }.into())
        }
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(TlsError::Handshake(
            "the server closed the connection during the TLS handshake (does it speak TLS?)".into(),
        )
        .into()),
        Err(e) => Err(e.into()),
    }
}

/// The [`TlsError`] an I/O error from a rustls stream stands for, if it carries one.
pub(crate) fn from_io(e: &std::io::Error) -> Option<TlsError> {
    let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(from_rustls(inner))
}

/// Sorts a rustls error into what a user can act on.
pub(crate) fn from_rustls(e: &rustls::Error) -> TlsError {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => TlsError::UnknownIssuer,
            CertificateError::NotValidForName => TlsError::NameMismatch { expected: String::new(), presented: vec![] },
            CertificateError::NotValidForNameContext { expected, presented } => TlsError::NameMismatch {
                expected: match expected {
                    ServerName::DnsName(name) => name.as_ref().to_owned(),
                    ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
                    other => format!("{other:?}"),
                },
                presented: presented.iter().map(|name| plain_name(name)).collect(),
            },
            CertificateError::Expired => TlsError::Expired { detail: None },
            CertificateError::ExpiredContext { time, not_after } => TlsError::Expired {
                detail: Some(format!(
                    "not valid after {}, now {}",
                    unix_date(not_after.as_secs()),
                    unix_date(time.as_secs())
                )),
            },
            CertificateError::NotValidYet => TlsError::NotYetValid { detail: None },
            CertificateError::NotValidYetContext { time, not_before } => TlsError::NotYetValid {
                detail: Some(format!(
                    "not valid before {}, now {}",
                    unix_date(not_before.as_secs()),
                    unix_date(time.as_secs())
                )),
            },
            CertificateError::Revoked => TlsError::Revoked,
            // webpki's own error, boxed: its Debug name is the only handle on it.
            CertificateError::Other(other) if format!("{other:?}").contains("CaUsedAsEndEntity") => {
                TlsError::CaUsedAsEndEntity
            }
            other => TlsError::BadCertificate(other.to_string()),
        },
        E::AlertReceived(alert) => TlsError::AlertReceived { alert: format!("{alert:?}") },
        E::NoCertificatesPresented => TlsError::NoClientCertificate,
        E::InvalidMessage(rustls::InvalidMessage::InvalidContentType)
        | E::InvalidMessage(rustls::InvalidMessage::UnknownProtocolVersion) => TlsError::NotTls,
        other => TlsError::Handshake(other.to_string()),
    }
}

/// A name as webpki lists it (`DnsName("example.com")`, `IpAddress(127.0.0.1)`), without the
/// wrapper.
fn plain_name(name: &str) -> String {
    for prefix in ["DnsName(", "IpAddress("] {
        if let Some(inner) = name.strip_prefix(prefix).and_then(|n| n.strip_suffix(')')) {
            return inner.trim_matches('"').to_owned();
        }
    }
    name.to_owned()
}

/// `YYYY-MM-DD HH:MM:SS UTC` for a Unix time (civil-from-days, proleptic Gregorian).
fn unix_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem / 60 % 60, rem % 60)
}

fn config_error(e: rustls::Error) -> TlsError {
    match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch,
        other => TlsError::Config(other.to_string()),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path)
        .map_err(|e| TlsError::Pem { source_name: PemSource(Some(path)).to_string(), error: e.to_string() })
}

fn certificates(pem: &[u8], path: Option<&Path>) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let source_name = || PemSource(path).to_string();
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { source_name: source_name(), error: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { source_name: source_name() });
    }
    Ok(certs)
}

fn private_key(pem: &[u8], path: Option<&Path>) -> Result<PrivateKeyDer<'static>, TlsError> {
    use rustls::pki_types::pem::Error as PemError;
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        PemError::NoItemsFound => TlsError::NoPrivateKey { source_name: PemSource(path).to_string() },
        other => TlsError::Pem { source_name: PemSource(path).to_string(), error: other.to_string() },
    })
}

fn root_store(ca_pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for ca in certificates(ca_pem, None)? {
        store.add(ca).map_err(|e| TlsError::Pem { source_name: "a CA certificate".into(), error: e.to_string() })?;
    }
    Ok(store)
}

/// Fails with [`TlsError::KeyMismatch`] unless `key` is the private key of the first (leaf)
/// certificate.
fn check_key_matches(certs: &[CertificateDer<'static>], key: &PrivateKeyDer<'static>) -> Result<(), TlsError> {
    let signing_key = provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| TlsError::Pem { source_name: "the private key".into(), error: e.to_string() })?;
    rustls::sign::CertifiedKey::new(certs.to_vec(), signing_key).keys_match().map_err(config_error)
}

/// The verifier of [`ClientTls::danger_accept_invalid_certs`]: any certificate, but handshake
/// signatures are still checked with the provider's algorithms.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A name for where PEM data came from, for the messages above.
struct PemSource<'a>(Option<&'a std::path::Path>);

impl std::fmt::Display for PemSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(path) => write!(f, "{}", path.display()),
            None => f.write_str("the PEM data"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(unix_date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(unix_date(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(unix_date(1_798_761_599), "2026-12-31 23:59:59 UTC");
    }

    #[test]
    fn pem_without_certificate_or_key_is_named() {
        assert_eq!(
            certificates(b"nothing here", None),
            Err(TlsError::NoCertificate { source_name: "the PEM data".into() })
        );
        assert!(matches!(private_key(b"", None), Err(TlsError::NoPrivateKey { .. })));
    }
}
