//! `wsx serve`: an echo server.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use tokio::net::{TcpListener, TcpStream};
use wsx::proto::deflate::DeflateConfig;
use wsx::{Accept, Error, ServerConfig};

/// Options of `wsx serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Echo every text and binary message back on every path (the default).
    #[arg(long)]
    echo: bool,
    /// Settings for the Autobahn conformance suite: no keepalive pings, no idle timeout.
    #[arg(long)]
    conformance: bool,
    /// Do not offer permessage-deflate compression.
    #[arg(long)]
    no_deflate: bool,
    /// Keep the compression context between messages (better ratio for small, similar
    /// messages; about 350 KB more per connection).
    #[arg(long)]
    deflate_context_takeover: bool,
    /// Seconds between keepalive pings to a silent client (0 = off).
    #[arg(long, default_value_t = 30)]
    ping_interval: u64,
}

/// Runs the server until Ctrl-C.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // Echo is the only mode so far, and so the default; `--echo` names it explicitly.
    let _ = args.echo;
    let listener = TcpListener::bind(args.addr).await.with_context(|| format!("cannot listen on {}", args.addr))?;
    let mut config = ServerConfig::default();
    if !args.no_deflate {
        let mut deflate = DeflateConfig::default();
        if !args.conformance && !args.deflate_context_takeover {
            // Without context takeover each side's zlib state is released between messages, so
            // an idle connection holds none (with it, about 350 KB per connection stay
            // allocated); small messages compress less well.
            deflate.server_no_context_takeover = true;
            deflate.client_no_context_takeover = true;
        }
        config.websocket.deflate = Some(deflate);
    }
    if !args.conformance && args.ping_interval > 0 {
        config.websocket.proto.keepalive_interval = Some(Duration::from_secs(args.ping_interval));
    }
    tracing::info!(addr = %listener.local_addr()?, "wsx serve --echo listening");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let config = config.clone();
                tokio::spawn(async move { echo(tcp, peer, config).await });
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("shutting down");
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

async fn echo(tcp: TcpStream, peer: SocketAddr, config: ServerConfig) {
    let _ = tcp.set_nodelay(true);
    let started = Instant::now();
    let mut ws = match wsx::accept_with(tcp, &config, |_, _| Ok(Accept::default())).await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::info!(%peer, error = %e, "handshake failed");
            return;
        }
    };
    tracing::debug!(%peer, "open");
    let mut code = None;
    let mut error: Option<Error> = None;
    while let Some(msg) = ws.recv().await {
        match msg {
            Ok(wsx::Message::Close(frame)) => code = Some(frame.map_or(1005, |f| f.code.0)),
            Ok(msg) if msg.is_data() => {
                if let Err(e) = ws.send(msg).await {
                    error = Some(e);
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                code = e.close_code().map(|c| c.0);
                error = Some(e);
            }
        }
    }
    let ms = started.elapsed().as_millis();
    match error {
        Some(e) => tracing::info!(%peer, code, ms, error = %e, "closed"),
        None => tracing::info!(%peer, code, ms, "closed"),
    }
}
