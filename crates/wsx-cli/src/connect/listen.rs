//! `wsx connect --listen tcp:ADDR URL`: every TCP connection accepted on ADDR is bridged to a
//! new WebSocket to URL (websocat's `tcp-l:`), by [`crate::bridge`], with the client options of
//! `wsx connect` (headers, subprotocols, Origin, TLS, proxy, deflate, keepalive).
//!
//! - A WebSocket that cannot be opened (refused, unreachable, TLS, timeout) closes its TCP
//!   connection at once; the cause is logged.
//! - At most `--max-bridges` bridges run at once; a TCP connection over it is closed at once
//!   (logged).
//! - A TCP client that takes nothing for [`WRITE_TIMEOUT`] (30 s) ends its bridge (1011); the
//!   accepted sockets have TCP keepalive on ([`bridge::tcp_keepalive`]), and the WebSocket
//!   has `connect`'s keepalive pings.
//! - SIGINT (Ctrl-C) or SIGTERM: the listener stops, every WebSocket is closed with 1001, and
//!   wsx exits 0 after at most 2 s.
//!
//! One log line (stderr) when listening (`listening on ADDR`), and one per bridge at its end:
//! bytes each way, duration, who ended it and how.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use wsx::ClientBuilder;

use super::{builder, normalize_url, ConnectArgs};
use crate::bridge;

/// How long shutdown waits for the closing handshakes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long a write to a TCP client may make no progress before its bridge fails (the
/// WebSocket is closed with 1011): a client that stops reading cannot hold its bridge.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Parses `tcp:ADDR` (`tcp:127.0.0.1:2222`, `tcp:[::1]:2222`, `tcp:localhost:2222`; port 0
/// picks a free port, logged).
pub fn parse_listen(value: &str) -> Result<String, String> {
    let rest = value.strip_prefix("tcp:").ok_or("expected tcp:ADDR:PORT, e.g. tcp:127.0.0.1:2222")?;
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(rest.to_owned()),
        _ => Err(format!("{rest:?} is not ADDR:PORT, e.g. tcp:127.0.0.1:2222")),
    }
}

/// Listens on `addr` and bridges every TCP connection until SIGINT or SIGTERM.
pub async fn run(args: &ConnectArgs, addr: &str, max_bridges: usize) -> anyhow::Result<ExitCode> {
    let mut signals = crate::serve::Signals::new().context("cannot install the signal handlers")?;
    let url = normalize_url(&args.url);
    let builder = builder(args, &url)?;
    if args.insecure && url.starts_with("wss://") {
        eprintln!("wsx: warning: --insecure: the server's certificate is not verified; anyone on the path can read and change this connection");
    }
    let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, url, max_bridges, "listening on {addr}, bridging each TCP connection to {url}");
    // Only the time the WebSocket may take to open; the bridge itself has the library's timers.
    let connect_timeout = args.connect_timeout + Duration::from_secs(1);

    let slots = Arc::new(Semaphore::new(max_bridges.max(1)));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut failing: u64 = 0;
    let signal = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    failing = 0;
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, max_bridges, "too many bridges: closing the new TCP connection");
                        drop(tcp);
                        continue;
                    };
                    let (builder, url, shutdown) = (builder.clone(), url.clone(), shutdown_rx.clone());
                    tasks.spawn(async move {
                        bridge_one(tcp, peer, builder, &url, connect_timeout, shutdown).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    if failing == 0 {
                        tracing::warn!(error = %e, bridges = tasks.len(), "accept failed; retrying every 50 ms");
                    }
                    failing += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = done {
                    tracing::warn!(error = %e, "bridge task failed");
                }
            }
            name = signals.recv() => break name,
        }
    };
    drop(listener);
    tracing::info!(signal, bridges = tasks.len(), "shutting down: closing every WebSocket with 1001");
    let _ = shutdown_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::info!(bridges = tasks.len(), "grace period over: dropping the bridges left");
        tasks.abort_all();
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the WebSocket for one TCP connection and bridges them; logs how it went.
async fn bridge_one(
    tcp: TcpStream,
    peer: SocketAddr,
    builder: ClientBuilder,
    url: &str,
    connect_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    bridge::tcp_keepalive(&tcp);
    let ws = tokio::select! {
        connected = tokio::time::timeout(connect_timeout, builder.connect()) => match connected {
            Ok(Ok((ws, _response))) => ws,
            Ok(Err(e)) => {
                tracing::warn!(%peer, url, error = %e, "cannot open the WebSocket: closing the TCP connection");
                return;
            }
            Err(_) => {
                let secs = connect_timeout.as_secs_f64();
                tracing::warn!(%peer, url, "the WebSocket did not open within {secs} s: closing the TCP connection");
                return;
            }
        },
        _ = shutdown.wait_for(|&down| down) => return,
    };
    let shutdown = async move {
        let _ = shutdown.wait_for(|&down| down).await;
    };
    let options = bridge::Options {
        write_timeout: WRITE_TIMEOUT,
        eof_reason: "tcp client closed",
        shutdown_reason: "wsx shutting down",
    };
    let report = bridge::run(ws, tcp, shutdown, options).await;
    tracing::info!(
        %peer,
        url,
        to_tcp = report.to_bytes,
        from_tcp = report.to_ws,
        ms = report.duration.as_millis() as u64,
        ended_by = report.ended_by.map(bridge::Side::as_str),
        code = report.code,
        error = report.error.as_deref(),
        "bridge ended"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_addresses() {
        assert_eq!(parse_listen("tcp:127.0.0.1:0").as_deref(), Ok("127.0.0.1:0"));
        assert_eq!(parse_listen("tcp:[::1]:2222").as_deref(), Ok("[::1]:2222"));
        for bad in ["127.0.0.1:22", "tcp:127.0.0.1", "tcp::22", "tcp:h:x"] {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
    }
}
