//! [`TlsError`]: what went wrong with TLS, in terms a user can act on. Always compiled, so that
//! [`Error`](crate::Error) is the same type with or without the `tls` feature.

/// A TLS failure: a certificate that was not accepted, a handshake the peer refused, or a
/// certificate or key file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The peer's certificate chain does not lead to a trusted root certificate.
    #[error(
        "the peer's certificate is not signed by a trusted certificate authority (unknown issuer); \
         a client trusts a CA with --cacert FILE (ClientTls::add_ca_pem)"
    )]
    UnknownIssuer,
    /// The server's certificate is not valid for the name we connected to.
    #[error("the certificate is not valid for {expected}{}", presented_names(.presented))]
    NameMismatch {
        /// The host name (or IP address) of the URL.
        expected: String,
        /// The names the certificate is valid for (when known).
        presented: Vec<String>,
    },
    /// The peer's certificate has expired.
    #[error("the peer's certificate has expired{}", when(.detail))]
    Expired {
        /// When it expired and what time it is (when known).
        detail: Option<String>,
    },
    /// The peer's certificate is not valid yet.
    #[error("the peer's certificate is not valid yet{}", when(.detail))]
    NotYetValid {
        /// When it becomes valid and what time it is (when known).
        detail: Option<String>,
    },
    /// The server's certificate is a CA certificate (`CA:TRUE`), which may not identify a server:
    /// typical of `openssl req -x509` without `-addext basicConstraints=critical,CA:FALSE`.
    #[error(
        "the server's certificate is a CA certificate (CA:TRUE) and cannot identify a server; \
         use a certificate signed by that CA, or a self-signed one made with CA:FALSE"
    )]
    CaUsedAsEndEntity,
    /// The peer's certificate was revoked.
    #[error("the peer's certificate was revoked")]
    Revoked,
    /// Another problem with the peer's certificate.
    #[error("the peer's certificate was refused: {0}")]
    BadCertificate(String),
    /// The server requires a client certificate and none was presented.
    #[error("the client presented no certificate, and this server requires one")]
    NoClientCertificate,
    /// The peer ended the handshake with a TLS alert (for example `CertificateRequired`: the
    /// server wants a client certificate; `UnknownCA` or `BadCertificate`: it did not accept
    /// ours; `HandshakeFailure`: no common parameters).
    #[error("the peer sent the TLS alert {alert}{}", alert_hint(.alert))]
    AlertReceived {
        /// The alert's name, as rustls spells it (`CertificateRequired`, `UnknownCA`, …).
        alert: String,
    },
    /// The peer does not speak TLS: a plain `ws://` or `http://` server on the other side, or a
    /// plain client on a TLS port.
    #[error("the peer does not speak TLS (a plain ws:// or http:// peer on the other side?)")]
    NotTls,
    /// The TLS handshake failed for another reason.
    #[error("TLS failed: {0}")]
    Handshake(String),
    /// A PEM file or buffer holds no certificate.
    #[error("no certificate found in {source_name}")]
    NoCertificate {
        /// The file (or "the PEM data").
        source_name: String,
    },
    /// A PEM file or buffer holds no private key.
    #[error("no private key found in {source_name} (PKCS#8, PKCS#1 or SEC1 PEM expected)")]
    NoPrivateKey {
        /// The file (or "the PEM data").
        source_name: String,
    },
    /// A PEM file or buffer could not be read or parsed.
    #[error("cannot read {source_name}: {error}")]
    Pem {
        /// The file (or "the PEM data").
        source_name: String,
        /// What went wrong.
        error: String,
    },
    /// The private key does not belong to the certificate.
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    /// No root certificate to verify servers with: the system store is empty or unreadable and
    /// no CA was added.
    #[error(
        "no trusted root certificates: {0}; install the system's CA certificates, add a CA \
         (ClientTls::add_ca_pem, --cacert), or build wsx with the webpki-roots feature"
    )]
    NoRootCertificates(String),
    /// A TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// This build of wsx has no TLS (the `tls` feature and a crypto provider are off).
    #[error("wss:// needs TLS, and this build of wsx has none (enable the `ring` or `aws-lc-rs` feature)")]
    NotBuiltIn,
}

fn presented_names(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!(" (it is valid for {})", names.join(", "))
    }
}

fn when(detail: &Option<String>) -> String {
    detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default()
}

fn alert_hint(alert: &str) -> &'static str {
    match alert {
        "CertificateRequired" => {
            ": the server requires a client certificate (ClientTls::client_auth_pem, --cert/--key)"
        }
        "UnknownCA" | "BadCertificate" | "CertificateUnknown" => ": the peer did not accept our certificate",
        "HandshakeFailure" => ": no TLS version or cipher suite in common",
        _ => "",
    }
}

impl TlsError {
    /// Whether the failure is in the local setup (a certificate or key file, the trust store,
    /// the build), rather than in what the peer did.
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            Self::NoCertificate { .. }
                | Self::NoPrivateKey { .. }
                | Self::Pem { .. }
                | Self::KeyMismatch
                | Self::NoRootCertificates(_)
                | Self::Config(_)
                | Self::NotBuiltIn
        )
    }
}
