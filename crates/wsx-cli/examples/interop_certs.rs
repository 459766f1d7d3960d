//! Test certificates for the TLS combinations of `scripts/interop`, made fresh at every run
//! (never committed).
//!
//! Usage: `interop_certs DIR`
//!
//! Writes into DIR (created if missing):
//!
//! - `ca.pem`: the test CA, the only root every TLS client of the run trusts;
//! - `server.pem`, `server.key`: a server certificate signed by it for `localhost`, `127.0.0.1`
//!   and `::1` (chain: leaf, then the CA), and its key (mode 0600);
//! - `other-ca.pem`: a second CA that signed nothing here. A client that trusts only it must
//!   refuse the server: that shows the clients verify the certificate at all.
//!
//! The CAs' keys are not kept.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The names the server certificate is valid for: what the interop URLs use (127.0.0.1) and
/// the usual spellings of this machine.
const SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

fn ca(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate()?)
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    // A key is created unreadable to others from the start, not chmod-ed after.
    let _ = std::fs::remove_file(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(fail)?;
    std::io::Write::write_all(&mut file, contents.as_bytes()).map_err(fail)
}

fn run(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let rcgen = |e: rcgen::Error| format!("rcgen: {e}");
    let test_ca = ca("wsx interop test CA").map_err(rcgen)?;
    let other_ca = ca("wsx interop other CA (trusted by nobody)").map_err(rcgen)?;

    let mut params = CertificateParams::new(SERVER_NAMES.map(String::from).to_vec()).map_err(rcgen)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "wsx interop server");
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(rcgen)?;
    let leaf = params.signed_by(&key, &test_ca).map_err(rcgen)?;

    write(&dir.join("ca.pem"), &test_ca.pem(), false)?;
    write(&dir.join("other-ca.pem"), &other_ca.pem(), false)?;
    write(&dir.join("server.pem"), &format!("{}{}", leaf.pem(), test_ca.pem()), false)?;
    write(&dir.join("server.key"), &key.serialize_pem(), true)?;
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: interop_certs DIR");
        return ExitCode::from(2);
    };
    let dir = PathBuf::from(dir);
    match run(&dir) {
        Ok(()) => {
            println!(
                "interop_certs: test CA, server certificate for {} and other CA in {}",
                SERVER_NAMES.join(", "),
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("interop_certs: {e}");
            ExitCode::FAILURE
        }
    }
}
