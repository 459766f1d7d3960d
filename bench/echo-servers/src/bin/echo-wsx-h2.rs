//! wsx over TLS with ALPN `h2` and `http/1.1`: a client that chose `h2` opens its WebSockets as
//! extended CONNECT streams (RFC 8441) of one connection; one that chose `http/1.1` gets the
//! loop of `echo-wsx` over TLS. The echo loop is the same (`recv`/`feed`) either way, so the
//! figures compare the transports. `ECHO_H2_ENGINE` picks the HTTP/2 server:
//!
//! - `hyper` (default): hyper's HTTP/2 server and `wsx::hyper::Upgrade` (hyper's upgraded
//!   stream), as `wsx serve` and the axum extractor run;
//! - `h2`: the `h2` crate's server and `wsx::h2::server::Http2Upgrade` (wsx's own
//!   `Http2Stream`, no hyper in between).
//!
//! Both with the windows of `wsx serve` (256 KiB per stream, 4 MiB per connection) and room
//! for 2,000 streams per connection. Needs `--tls-cert`/`--tls-key`.

use std::convert::Infallible;

use echo_servers::TlsAcceptor;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wsx::WebSocket;

const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 4 << 20;
const MAX_STREAMS: u32 = 2000;

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocket<S>) -> Result<(), wsx::Error> {
    while let Some(msg) = ws.recv().await {
        let msg = msg?;
        if msg.is_data() {
            ws.feed(msg).await?;
        }
    }
    Ok(())
}

fn report(e: impl std::fmt::Display) {
    echo_servers::report("echo-wsx-h2", e);
}

/// hyper's HTTP/2 server: every extended CONNECT accepted and echoed on hyper's upgraded stream.
async fn hyper_h2<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: S) -> Result<(), wsx::Error> {
    let service = hyper::service::service_fn(|mut request: hyper::Request<hyper::body::Incoming>| async move {
        let config = wsx::WebSocketConfig::default();
        let accepted = wsx::hyper::Upgrade::new(&mut request).and_then(|u| u.accept(wsx::Accept::default(), &config));
        let response = match accepted {
            Ok((response, upgrading)) => {
                tokio::spawn(async move {
                    match upgrading.await {
                        Ok(ws) => {
                            if let Err(e) = echo(ws).await {
                                report(e);
                            }
                        }
                        Err(e) => report(e),
                    }
                });
                response.map(|()| String::new())
            }
            Err(rejection) => wsx::hyper::rejection_response(&rejection),
        };
        Ok::<_, Infallible>(response)
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .enable_connect_protocol()
        .max_concurrent_streams(MAX_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .serve_connection(TokioIo::new(io), service)
        .await
        .map_err(|e| wsx::Error::Io(std::io::Error::other(e)))
}

/// The h2 crate's server: every extended CONNECT accepted by `Http2Upgrade` and echoed on
/// wsx's `Http2Stream`.
async fn raw_h2<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: S) -> Result<(), wsx::Error> {
    let h2_error = |e: h2::Error| wsx::Error::Io(std::io::Error::other(e));
    let mut conn = h2::server::Builder::new()
        .enable_connect_protocol()
        .max_concurrent_streams(MAX_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .handshake(io)
        .await
        .map_err(h2_error)?;
    while let Some(accepted) = conn.accept().await {
        let (request, respond) = accepted.map_err(h2_error)?;
        tokio::spawn(async move {
            let ws = wsx::h2::server::Http2Upgrade::new(request, respond)
                .and_then(|u| u.accept(wsx::Accept::default(), &wsx::WebSocketConfig::default()));
            match ws {
                Ok(ws) => {
                    if let Err(e) = echo(ws).await {
                        report(e);
                    }
                }
                Err(e) => report(e),
            }
        });
    }
    Ok(())
}

async fn handle(tcp: TcpStream, tls: Option<TlsAcceptor>) -> Result<(), wsx::Error> {
    let Some(acceptor) = tls else {
        return Err(wsx::Error::Io(std::io::Error::other("echo-wsx-h2 needs --tls-cert and --tls-key")));
    };
    let stream = wsx::tls::accept(&acceptor, tcp).await?;
    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        return echo(wsx::accept(stream).await?).await;
    }
    match std::env::var("ECHO_H2_ENGINE").as_deref() {
        Ok("h2") => raw_h2(stream).await,
        _ => hyper_h2(stream).await,
    }
}

fn main() -> std::process::ExitCode {
    match std::env::var("ECHO_H2_ENGINE").as_deref() {
        Ok("h2" | "hyper") | Err(_) => {}
        Ok(other) => {
            eprintln!("echo-wsx-h2: ECHO_H2_ENGINE must be hyper or h2, not {other:?}");
            return std::process::ExitCode::from(2);
        }
    }
    echo_servers::serve_tls_alpn("echo-wsx-h2", &[b"h2", b"http/1.1"], handle)
}
