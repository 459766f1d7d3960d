//! Makes the benchmark's TLS certificates: a CA, and a server certificate it signs for
//! `localhost`, `127.0.0.1` and `::1` (ECDSA P-256, as `wsx serve --tls-self-signed` makes).
//! Written at run time by `scripts/bench-tls` under `target/`, never committed.
//!
//! ```text
//! tls-cert DIR    # writes DIR/ca.pem, DIR/cert.pem (leaf then CA) and DIR/key.pem
//! ```

use std::path::Path;
use std::process::ExitCode;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

fn make(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "wsx benchmark CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()])?;
    params.distinguished_name.push(DnType::CommonName, "localhost");
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;

    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    std::fs::write(dir.join("cert.pem"), cert.pem() + &ca.pem())?;
    std::fs::write(dir.join("key.pem"), key.serialize_pem())?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir] = args.as_slice() else {
        eprintln!("usage: tls-cert DIR (writes DIR/ca.pem, DIR/cert.pem and DIR/key.pem)");
        return ExitCode::from(2);
    };
    match make(Path::new(dir)) {
        Ok(()) => {
            println!("tls-cert: wrote {dir}/ca.pem, {dir}/cert.pem, {dir}/key.pem");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tls-cert: {e}");
            ExitCode::FAILURE
        }
    }
}
