//! `wsx`: a WebSocket client and server on the command line.

use clap::{FromArgMatches as _, Parser, Subcommand};

/// The binary's allocator (the library leaves the choice to its users). glibc's malloc pads
/// every 128-byte-aligned allocation tokio makes per connection (a task, a socket's
/// registration) and adds a header to each block; jemalloc serves them from size classes
/// that fit (`docs/performance-notes.md`, *The allocator*).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod bench;
mod bridge;
mod connect;
mod serve;

/// WebSocket client and server.
#[derive(Parser, Debug)]
#[command(name = "wsx", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a WebSocket server.
    Serve(serve::ServeArgs),
    /// Connect to a WebSocket server: an interactive prompt on a terminal, one message per stdin
    /// line in a pipe; received messages are printed on stdout.
    Connect(connect::ConnectArgs),
    /// Load-test a WebSocket server: throughput and honest latency (closed or open loop).
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let (Command::Connect(args), Some(("connect", m))) = (&mut cli.command, matches.subcommand()) {
        // --preamble and --preamble-file are sent in the order given.
        args.order_preamble(m);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours for a person at a terminal only: a log redirected to a file or a collector
        // gets plain text, not escape codes (and `NO_COLOR` turns them off anywhere).
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
    // `wsx serve` runs its own event loops, one single-threaded runtime per thread, this one
    // first (see `serve/loops.rs`); the other commands use tokio's work-stealing pool.
    let mut builder = match cli.command {
        Command::Serve(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsx: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Connect(args) => connect::run(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wsx: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
