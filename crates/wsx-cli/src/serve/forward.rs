//! `wsx serve --forward tcp:HOST:PORT`: every WebSocket connection is bridged to a new TCP
//! connection to HOST:PORT (websockify's job), by [`crate::bridge`].
//!
//! The TCP connection is made before the handshake is answered: when it fails (refused,
//! unreachable, or not made within [`CONNECT_TIMEOUT`]) the upgrade is refused with 502 Bad
//! Gateway and the cause in the body, so a client learns it as an HTTP status, not as a
//! WebSocket that opens and closes at once. [`CONNECT_TIMEOUT`] is below `wsx connect`'s
//! default handshake timeout (10 s), so that a client learns the 502 rather than timing out.
//!
//! Writes to the target are bounded by `--write-timeout`, or by [`TCP_WRITE_TIMEOUT`] when it
//! is 0 (no bound for WebSocket clients): a target that stops reading cannot hold its bridge
//! for ever. The target's socket has TCP keepalive on ([`bridge::tcp_keepalive`]); a vanished
//! WebSocket client is noticed by the WebSocket's pings (`--ping-interval`).

use std::net::SocketAddr;
use std::time::Duration;

use ::http::StatusCode;
use tokio::net::TcpStream;
use wsx::{Rejection, WebSocket};

use super::{By, Io, Outcome};
use crate::bridge;

/// How long the TCP connection to the target may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a write to the target may make no progress when `--write-timeout` is 0.
pub const TCP_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The `--forward` target, `HOST:PORT`, resolved at each connection.
#[derive(Debug, Clone)]
pub struct Target(pub String);

/// Parses `tcp:HOST:PORT` (IPv6 addresses in brackets: `tcp:[::1]:22`).
pub fn parse_target(value: &str) -> Result<Target, String> {
    let Some(rest) = value.strip_prefix("tcp:") else {
        return Err("expected tcp:HOST:PORT, e.g. tcp:127.0.0.1:22".to_owned());
    };
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err(format!("{rest:?} has no port: expected tcp:HOST:PORT"));
    };
    if host.is_empty() || host.trim_start_matches('[').trim_end_matches(']').is_empty() {
        return Err(format!("{rest:?} has no host: expected tcp:HOST:PORT"));
    }
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!("bad port {port:?}: expected 1-65535"));
    }
    Ok(Target(rest.to_owned()))
}

/// Connects to the target for the client `peer` (logged when it fails); `Err` is the 502
/// refusal to answer the upgrade with.
pub async fn connect(target: &Target, peer: SocketAddr) -> Result<TcpStream, Rejection> {
    let error = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target.0)).await {
        Ok(Ok(tcp)) => {
            let _ = tcp.set_nodelay(true);
            bridge::tcp_keepalive(&tcp);
            return Ok(tcp);
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
    };
    tracing::warn!(%peer, target = target.0, error, "cannot connect to the forward target");
    let body = format!("cannot connect to the forward target: {error}\n");
    Err(Rejection::new(StatusCode::BAD_GATEWAY, body))
}

/// Bridges an accepted WebSocket and its target connection until both are done; logs one line
/// (bytes each way, duration) and returns the outcome for the `closed` line.
pub async fn bridge<S: Io>(
    ws: WebSocket<S>,
    tcp: TcpStream,
    target: &Target,
    peer: SocketAddr,
    write_timeout: Option<Duration>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Outcome {
    let write_timeout = write_timeout.unwrap_or(TCP_WRITE_TIMEOUT);
    let options =
        bridge::Options { write_timeout, eof_reason: "target closed", shutdown_reason: "server shutting down" };
    let report = bridge::run(ws, tcp, shutdown, options).await;
    tracing::info!(
        %peer,
        target = target.0,
        to_target = report.to_bytes,
        from_target = report.to_ws,
        ms = report.duration.as_millis() as u64,
        ended_by = report.ended_by.map(bridge::Side::as_str),
        code = report.code,
        error = report.error.as_deref(),
        "forward ended"
    );
    Outcome {
        code: report.code,
        by: report.ended_by.map(|side| if side == bridge::Side::WebSocket { By::Client } else { By::Server }),
        error: report.error.map(String::into_boxed_str),
        closing: true,
        ..Outcome::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!(parse_target("tcp:127.0.0.1:22").map(|t| t.0), Ok("127.0.0.1:22".to_owned()));
        assert_eq!(parse_target("tcp:[::1]:5900").map(|t| t.0), Ok("[::1]:5900".to_owned()));
        assert_eq!(parse_target("tcp:db.lan:5432").map(|t| t.0), Ok("db.lan:5432".to_owned()));
        for bad in ["127.0.0.1:22", "tcp:127.0.0.1", "tcp::22", "tcp:[]:22", "tcp:host:0", "tcp:host:x", "udp:h:1"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }
}
