//! Shared scaffolding of the benchmark echo servers: command line, runtime, accept loop.
//!
//! Every server binary is the same program around a different per-connection handler, so that
//! the only thing that differs between them is the library under test:
//!
//! - the same tokio runtime: multi-thread scheduler with `--threads N` workers (default 1, or
//!   the `ECHO_THREADS` environment variable), I/O and time drivers enabled;
//! - the same accept loop: `TCP_NODELAY` set on every accepted socket, one task per connection;
//! - the same reporting: a `listening on ADDR` line on stdout once the socket is bound (scripts
//!   wait for it), and the first few connection errors on stderr.
//!
//! ```text
//! echo-NAME [--addr HOST:PORT | --port PORT | PORT | HOST:PORT] [--threads N]
//! ```

use std::fmt::Display;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};

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
}

impl Opts {
    /// Parses `args` (without the program name); `env_threads` is the value of `ECHO_THREADS`.
    pub fn parse(args: &[String], env_threads: Option<&str>) -> Result<Opts, String> {
        let mut opts = Opts { addr: DEFAULT_ADDR, threads: 1 };
        if let Some(t) = env_threads {
            opts.threads = parse_threads(t)?;
        }
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
                "-h" | "--help" => return Err(usage()),
                other if !other.starts_with('-') => opts.addr = parse_addr(other)?,
                other => return Err(format!("unknown flag {other}\n{}", usage())),
            }
        }
        Ok(opts)
    }
}

fn usage() -> String {
    "usage: echo-NAME [--addr HOST:PORT | --port PORT | PORT | HOST:PORT] [--threads N]\n\
     (--threads defaults to $ECHO_THREADS, else 1)"
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

/// Reports a failed connection on stderr (the first few; then only counts them).
pub fn report(server: &str, error: impl Display) {
    let n = ERRORS.fetch_add(1, Ordering::Relaxed) + 1;
    if n <= REPORTED_ERRORS {
        eprintln!("{server}: connection error: {error}");
    } else if n == REPORTED_ERRORS + 1 {
        eprintln!("{server}: more connection errors; not reporting them");
    }
}

/// Runs an echo server: parses the command line, builds the runtime, binds, and hands every
/// accepted socket (with `TCP_NODELAY` on) to `handle` in its own task.
pub fn serve<F, Fut, E>(server: &'static str, handle: F) -> ExitCode
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Display + 'static,
{
    let args: Vec<String> = std::env::args().skip(1).collect();
    let env_threads = std::env::var("ECHO_THREADS").ok();
    let opts = match Opts::parse(&args, env_threads.as_deref()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{server}: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(opts.threads).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{server}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The accept loop runs as a task too, so that all the work happens on the worker threads.
    let result = runtime
        .block_on(async move { tokio::spawn(accept_loop(server, opts, handle)).await.map_err(|e| e.to_string())? });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{server}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn accept_loop<F, Fut, E>(server: &'static str, opts: Opts, handle: F) -> Result<(), String>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Display + 'static,
{
    let listener = TcpListener::bind(opts.addr).await.map_err(|e| format!("cannot listen on {}: {e}", opts.addr))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    println!("{server}: listening on {local} ({} worker thread(s))", opts.threads);
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
        let conn = handle(tcp);
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

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_the_ways_to_name_an_address() {
        let o = Opts::parse(&args(&[]), None).unwrap();
        assert_eq!(o, Opts { addr: DEFAULT_ADDR, threads: 1 });
        assert_eq!(Opts::parse(&args(&["9300"]), None).unwrap().addr, "127.0.0.1:9300".parse().unwrap());
        assert_eq!(Opts::parse(&args(&["--port", "9301"]), None).unwrap().addr.port(), 9301);
        assert_eq!(Opts::parse(&args(&["--addr=0.0.0.0:9302"]), None).unwrap().addr, "0.0.0.0:9302".parse().unwrap());
        assert_eq!(Opts::parse(&args(&["--addr", "9303"]), None).unwrap().addr.port(), 9303);
    }

    #[test]
    fn threads_from_flag_over_env() {
        assert_eq!(Opts::parse(&args(&[]), Some("2")).unwrap().threads, 2);
        assert_eq!(Opts::parse(&args(&["--threads", "3"]), Some("2")).unwrap().threads, 3);
        assert!(Opts::parse(&args(&["--threads", "0"]), None).is_err());
        assert!(Opts::parse(&args(&["--bogus"]), None).is_err());
    }
}
