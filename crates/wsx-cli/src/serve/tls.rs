//! TLS for `wsx serve`: `--tls-cert FILE --tls-key FILE`, or `--tls-self-signed` for
//! development. With either, the port speaks only TLS: the demo page over https, WebSockets
//! over wss. A plain-HTTP request to it gets a `400` that says to use https:// or wss://.
//! The port offers ALPN `h2` and `http/1.1` (`--no-http2`: `http/1.1` only); a connection that
//! chose `h2` is served by [`super::h2`].

use std::path::PathBuf;

use anyhow::Context as _;
use base64::Engine as _;
use clap::Args;
use sha2::{Digest, Sha256};
use wsx::tls::{ServerTls, TlsAcceptor};

/// The TLS options of `wsx serve`.
#[derive(Args, Debug, Default)]
pub struct TlsArgs {
    /// Serve https and wss with this PEM certificate chain (leaf first); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key", conflicts_with = "tls_self_signed")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve https and wss with a certificate made at start for localhost, 127.0.0.1 and ::1,
    /// valid 30 days; its SHA-256 fingerprint and SPKI pin are printed (for development: browsers
    /// warn about it unless told to trust the pin).
    #[arg(long)]
    tls_self_signed: bool,
    /// Require a client certificate issued by a CA in this PEM file (mutual TLS).
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// Do not offer HTTP/2 on the TLS port (ALPN http/1.1 only). By default the port offers
    /// h2 and http/1.1: over h2 it serves the same pages and files, and takes WebSockets as
    /// extended CONNECT streams (RFC 8441) on the page's own connection.
    #[arg(long)]
    pub no_http2: bool,
}

/// The acceptor the options ask for, if any.
pub fn acceptor(args: &TlsArgs) -> anyhow::Result<Option<TlsAcceptor>> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => ServerTls::from_pem_files(cert, key)
            .with_context(|| format!("--tls-cert {} --tls-key {}", cert.display(), key.display()))?,
        _ if args.tls_self_signed => self_signed()?,
        _ => {
            anyhow::ensure!(
                args.tls_client_ca.is_none(),
                "--tls-client-ca needs --tls-cert/--tls-key or --tls-self-signed"
            );
            return Ok(None);
        }
    };
    let tls = match &args.tls_client_ca {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("--tls-client-ca {}", path.display()))?;
            tls.require_client_cert(&pem).with_context(|| format!("--tls-client-ca {}", path.display()))?
        }
        None => tls,
    };
    // In the server's order of preference: h2 when the client offers it.
    let alpn: &[&[u8]] = if args.no_http2 { &[b"http/1.1"] } else { &[b"h2", b"http/1.1"] };
    let tls = tls.alpn_protocols(alpn.iter().map(|p| p.to_vec()).collect());
    Ok(Some(tls.acceptor()?))
}

/// Makes a certificate for localhost, valid from yesterday for 30 days, and prints how to trust
/// it.
fn self_signed() -> anyhow::Result<ServerTls> {
    let names = ["localhost", "127.0.0.1", "::1"];
    let mut params = rcgen::CertificateParams::new(names.map(String::from).to_vec())?;
    let day = |offset: i64| {
        let date = (chrono::Utc::now() + chrono::Duration::days(offset)).date_naive();
        use chrono::Datelike as _;
        rcgen::date_time_ymd(date.year(), date.month() as u8, date.day() as u8)
    };
    params.not_before = day(-1);
    params.not_after = day(30);
    params.distinguished_name.push(rcgen::DnType::CommonName, "wsx serve (self-signed)");
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let (fingerprint, pin) = fingerprints(cert.der(), &rcgen::PublicKeyData::subject_public_key_info(&key));
    eprintln!("wsx serve: self-signed certificate for {}, valid 30 days", names.join(", "));
    eprintln!("  SHA-256 fingerprint: {fingerprint}");
    eprintln!("  SPKI pin: {pin}");
    eprintln!("  (chromium --ignore-certificate-errors-spki-list={pin}; curl --pinnedpubkey sha256//{pin})");
    let key = wsx::tls::rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    Ok(ServerTls::from_der(vec![cert.der().clone()], key)?)
}

/// The SHA-256 fingerprint of a certificate (hex pairs joined by `:`) and the SPKI pin of its
/// key (base64 of the SHA-256 of the SubjectPublicKeyInfo).
pub fn fingerprints(cert_der: &[u8], spki_der: &[u8]) -> (String, String) {
    let fingerprint = Sha256::digest(cert_der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
    let pin = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki_der));
    (fingerprint, pin)
}
