//! Shared scaffolding of the benchmark echo servers: command line, runtime, accept loop.
//!
//! Every server binary is the same program around a different per-connection handler, so that
//! the only thing that differs between them is the library under test:
//!
//! - the same tokio runtime: multi-thread scheduler with `--threads N` workers (default 1, or
//!   the `ECHO_THREADS` environment variable), I/O and time drivers enabled;
//! - the same accept loop: `TCP_NODELAY` set on every accepted socket, one task per connection;
//! - the same reporting: a `listening on ADDR` line on stdout once the socket is bound (scripts
//!   wait for it), and the first few connection errors on stderr;
//! - the same TLS, for the servers that have a TLS variant (wsx and tokio-tungstenite, started
//!   through [`serve_tls`]): with `--tls-cert FILE --tls-key FILE` (or `ECHO_TLS_CERT` /
//!   `ECHO_TLS_KEY`), one `rustls::ServerConfig` is built by [`tls_config`] with
//!   `wsx::tls::ServerTls` (ring provider, safe protocol versions, ALPN `http/1.1`) and every
//!   accepted socket is handed to the handler with a tokio-rustls `TlsAcceptor` over that very
//!   config. The handler runs the TLS handshake itself, so each library is used as its users
//!   would use it, over the same TLS.
//!
//! ```text
//! echo-NAME [--addr HOST:PORT | --port PORT | PORT | HOST:PORT] [--threads N]
//!           [--tls-cert FILE --tls-key FILE]
//! ```

use std::fmt::Display;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
pub use wsx::tls::TlsAcceptor;

/// Where to listen when no address is given.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9201);

/// Connection errors reported on stderr before the rest are only counted.
const REPORTED_ERRORS: usize = 10;

static ERRORS: AtomicUsize = AtomicUsize::new(0);

/// The command line of a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opts {
    /// The address to listen on.
    pub addr: SocketAddr,
    /// Worker threads of the multi-thread runtime.
    pub threads: usize,
    /// Serve TLS with this PEM certificate chain and PEM private key.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl Opts {
    /// Parses `args` (without the program name); `env` looks up the environment (`ECHO_THREADS`,
    /// `ECHO_TLS_CERT`, `ECHO_TLS_KEY`), which the flags override.
    pub fn parse(args: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Opts, String> {
        let mut opts = Opts { addr: DEFAULT_ADDR, threads: 1, tls: None };
        if let Some(t) = env("ECHO_THREADS") {
            opts.threads = parse_threads(&t)?;
        }
        let (mut cert, mut key) = (env("ECHO_TLS_CERT").map(PathBuf::from), env("ECHO_TLS_KEY").map(PathBuf::from));
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (arg.as_str(), None),
            };
            let mut value = || inline.clone().or_else(|| it.next().cloned()).ok_or(format!("{flag} needs a value"));
            match flag {
                "--addr" => opts.addr = parse_addr(&value()?)?,
                "--port" => opts.addr.set_port(parse_port(&value()?)?),
                "--threads" => opts.threads = parse_threads(&value()?)?,
                "--tls-cert" => cert = Some(value()?.into()),
                "--tls-key" => key = Some(value()?.into()),
                "-h" | "--help" => return Err(usage()),
                other if !other.starts_with('-') => opts.addr = parse_addr(other)?,
                other => return Err(format!("unknown flag {other}\n{}", usage())),
            }
        }
        opts.tls = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err("TLS needs both a certificate and a key (--tls-cert and --tls-key)".into()),
        };
        Ok(opts)
    }
}

fn usage() -> String {
    "usage: echo-NAME [--addr HOST:PORT | --port PORT | PORT | HOST:PORT] [--threads N]\n\
     \x20                [--tls-cert FILE --tls-key FILE]\n\
     (--threads defaults to $ECHO_THREADS, else 1; --tls-cert and --tls-key to $ECHO_TLS_CERT and\n\
     $ECHO_TLS_KEY; only echo-wsx and echo-tungstenite serve TLS)"
        .to_string()
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    parse_port(s).map(|port| SocketAddr::new(DEFAULT_ADDR.ip(), port))
}

fn parse_port(s: &str) -> Result<u16, String> {
    s.parse().map_err(|_| format!("'{s}' is neither a port nor HOST:PORT"))
}

fn parse_threads(s: &str) -> Result<usize, String> {
    match s.parse() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("threads: '{s}' is not a positive number")),
    }
}

/// The most messages [`next_batch`] collects for one flush.
pub const BATCH: usize = 64;

/// For a server that answers a batch of messages with one flush: waits for the next message of
/// `stream`, then takes every further one it has already read (none of them waits for the
/// socket), up to [`BATCH`] in all, into `batch`. Returns `false` once the stream has ended.
/// Collecting first matters for libraries that flush their queue whenever they are polled for
/// the next message (tokio-websockets).
pub async fn next_batch<S, T, E>(stream: &mut S, batch: &mut Vec<T>) -> Result<bool, E>
where
    S: futures_util::Stream<Item = Result<T, E>> + Unpin,
{
    use futures_util::{FutureExt as _, StreamExt as _};
    let Some(first) = stream.next().await else { return Ok(false) };
    batch.push(first?);
    while batch.len() < BATCH {
        match stream.next().now_or_never() {
            Some(Some(msg)) => batch.push(msg?),
            _ => break,
        }
    }
    Ok(true)
}

/// Reports a failed connection on stderr (the first few; then only counts them).
pub fn report(server: &str, error: impl Display) {
    let n = ERRORS.fetch_add(1, Ordering::Relaxed) + 1;
    if n <= REPORTED_ERRORS {
        eprintln!("{server}: connection error: {error}");
    } else if n == REPORTED_ERRORS + 1 {
        eprintln!("{server}: more connection errors; not reporting them");
    }
}

/// The one TLS configuration of every TLS server: `wsx::tls::ServerTls` over the PEM
/// certificate chain and key (ring provider, safe protocol versions, ALPN `http/1.1`).
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<wsx::tls::rustls::ServerConfig>, String> {
    tls_config_alpn(cert, key, &[b"http/1.1"])
}

/// [`tls_config`] offering these ALPN protocols.
pub fn tls_config_alpn(
    cert: &std::path::Path,
    key: &std::path::Path,
    alpn: &[&[u8]],
) -> Result<Arc<wsx::tls::rustls::ServerConfig>, String> {
    wsx::tls::ServerTls::from_pem_files(cert, key)
        .map(|tls| tls.alpn_protocols(alpn.iter().map(|p| p.to_vec()).collect()))
        .and_then(|tls| tls.build())
        .map_err(|e| format!("TLS: {e}"))
}

/// Runs a plain-TCP echo server: parses the command line, builds the runtime, binds, and hands
/// every accepted socket (with `TCP_NODELAY` on) to `handle` in its own task. TLS flags are
/// refused: this server has no TLS variant.
pub fn serve<F, Fut, E>(server: &'static str, handle: F) -> ExitCode
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Display + 'static,
{
    run(server, None, move |tcp, _| handle(tcp))
}

/// As [`serve`], for a server with a TLS variant: `handle` also gets the acceptor when the
/// server was started with a certificate (`None` for plain TCP), and runs the handshake itself.
pub fn serve_tls<F, Fut, E>(server: &'static str, handle: F) -> ExitCode
where
    F: Fn(TcpStream, Option<TlsAcceptor>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Display + 'static,
{
    run(server, Some(&[b"http/1.1"]), handle)
}

/// As [`serve_tls`], with these ALPN protocols offered (in the server's order of preference)
/// instead of `http/1.1` alone: `echo-wsx-h2` offers `h2` first.
pub fn serve_tls_alpn<F, Fut, E>(server: &'static str, alpn: &'static [&'static [u8]], handle: F) -> ExitCode
where
    F: Fn(TcpStream, Option<TlsAcceptor>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Display + 'static,
{
    run(server, Some(alpn), handle)
}

/// `alpn`: the ALPN protocols of a server with a TLS variant (`None`: no TLS variant).
fn run<F, Fut, E>(server: &'static str, alpn: Option<&'static [&'static [u8]]>, handle: F) -> ExitCode
where
    F: Fn(TcpStream, Option<TlsAcceptor>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Display + 'static,
{
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match Opts::parse(&args, |name| std::env::var(name).ok()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{server}: {e}");
            return ExitCode::from(2);
        }
    };
    let acceptor = match &opts.tls {
        None => None,
        Some(_) if alpn.is_none() => {
            eprintln!("{server}: this server has no TLS variant (only echo-wsx and echo-tungstenite do)");
            return ExitCode::from(2);
        }
        Some((cert, key)) => match tls_config_alpn(cert, key, alpn.unwrap_or(&[b"http/1.1"])) {
            Ok(config) => Some(TlsAcceptor::from(config)),
            Err(e) => {
                eprintln!("{server}: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(opts.threads).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{server}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The accept loop runs as a task too, so that all the work happens on the worker threads.
    let result = runtime.block_on(async move {
        tokio::spawn(accept_loop(server, opts, acceptor, handle)).await.map_err(|e| e.to_string())?
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{server}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn accept_loop<F, Fut, E>(
    server: &'static str,
    opts: Opts,
    acceptor: Option<TlsAcceptor>,
    handle: F,
) -> Result<(), String>
where
    F: Fn(TcpStream, Option<TlsAcceptor>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Display + 'static,
{
    let listener = TcpListener::bind(opts.addr).await.map_err(|e| format!("cannot listen on {}: {e}", opts.addr))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let tls = if acceptor.is_some() { ", TLS" } else { "" };
    println!("{server}: listening on {local} ({} worker thread(s){tls})", opts.threads);
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // EMFILE and friends: report, back off a little, keep serving the others.
                report(server, format_args!("accept: {e}"));
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if let Err(e) = tcp.set_nodelay(true) {
            report(server, format_args!("set_nodelay: {e}"));
        }
        let conn = handle(tcp, acceptor.clone());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                report(server, e);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is ready is collected, at most `BATCH` at a time, in order; an error ends the
    /// batch with that error; the end of the stream is `false`.
    #[tokio::test]
    async fn next_batch_collects_what_is_ready_up_to_the_bound() {
        let items: Vec<Result<usize, String>> = (0..BATCH + 10).map(Ok).collect();
        let mut stream = futures_util::stream::iter(items);
        let mut batch = Vec::new();
        assert_eq!(next_batch(&mut stream, &mut batch).await, Ok(true));
        assert_eq!(batch, (0..BATCH).collect::<Vec<_>>());
        batch.clear();
        assert_eq!(next_batch(&mut stream, &mut batch).await, Ok(true));
        assert_eq!(batch, (BATCH..BATCH + 10).collect::<Vec<_>>());
        batch.clear();
        assert_eq!(next_batch(&mut stream, &mut batch).await, Ok(false));
        assert!(batch.is_empty());

        let mut failing = futures_util::stream::iter(vec![Ok(1), Err("broken".to_string()), Ok(2)]);
        assert_eq!(next_batch(&mut failing, &mut batch).await, Err("broken".to_string()));
        assert_eq!(batch, vec![1]);
    }

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn parses_the_ways_to_name_an_address() {
        let o = Opts::parse(&args(&[]), no_env).unwrap();
        assert_eq!(o, Opts { addr: DEFAULT_ADDR, threads: 1, tls: None });
        assert_eq!(Opts::parse(&args(&["9300"]), no_env).unwrap().addr, "127.0.0.1:9300".parse().unwrap());
        assert_eq!(Opts::parse(&args(&["--port", "9301"]), no_env).unwrap().addr.port(), 9301);
        assert_eq!(Opts::parse(&args(&["--addr=0.0.0.0:9302"]), no_env).unwrap().addr, "0.0.0.0:9302".parse().unwrap());
        assert_eq!(Opts::parse(&args(&["--addr", "9303"]), no_env).unwrap().addr.port(), 9303);
    }

    #[test]
    fn threads_from_flag_over_env() {
        assert_eq!(Opts::parse(&args(&[]), env(&[("ECHO_THREADS", "2")])).unwrap().threads, 2);
        assert_eq!(Opts::parse(&args(&["--threads", "3"]), env(&[("ECHO_THREADS", "2")])).unwrap().threads, 3);
        assert!(Opts::parse(&args(&["--threads", "0"]), no_env).is_err());
        assert!(Opts::parse(&args(&["--bogus"]), no_env).is_err());
    }

    #[test]
    fn tls_from_flags_or_env_and_needs_both_files() {
        let both = Some((PathBuf::from("c.pem"), PathBuf::from("k.pem")));
        assert_eq!(Opts::parse(&args(&["--tls-cert", "c.pem", "--tls-key=k.pem"]), no_env).unwrap().tls, both);
        let vars = [("ECHO_TLS_CERT", "c.pem"), ("ECHO_TLS_KEY", "k.pem")];
        assert_eq!(Opts::parse(&args(&[]), env(&vars)).unwrap().tls, both);
        let flag_wins = Opts::parse(&args(&["--tls-key", "other.pem"]), env(&vars)).unwrap().tls;
        assert_eq!(flag_wins, Some((PathBuf::from("c.pem"), PathBuf::from("other.pem"))));
        assert!(Opts::parse(&args(&["--tls-cert", "c.pem"]), no_env).is_err());
        assert!(Opts::parse(&args(&[]), env(&[("ECHO_TLS_KEY", "k.pem")])).is_err());
    }
}
