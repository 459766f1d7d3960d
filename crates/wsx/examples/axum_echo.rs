//! An echo server on axum with the wsx extractor: every path upgrades and echoes every text and
//! binary message, with permessage-deflate accepted. The Autobahn conformance suite runs
//! against it (`scripts/autobahn axum`), as it does against `wsx serve --echo --conformance`,
//! whose settings it mirrors: default limits, no keepalive pings, compression with context
//! takeover, `TCP_NODELAY` on every connection.
//!
//! ```sh
//! cargo run --release -p wsx --features axum --example axum_echo -- --addr 127.0.0.1:9001
//! ```
//!
//! Options: `--addr HOST:PORT` (else the `WSX_ADDR` environment variable, else
//! 127.0.0.1:9001). Two more, to measure what the axum path costs (`scripts/bench-axum`):
//! `--wrap-stream` serves every connection through a stream type of this program's own, which
//! wsx cannot take back out of hyper (as with TLS): the connections then run on hyper's
//! `Upgraded` stream (`wsx::hyper::UpgradedStream::Upgraded`); `--plain` serves the same echo
//! loop without axum or hyper, on `wsx::accept_with` over a plain accept loop.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::response::Response;
use axum::serve::{Listener, ListenerExt};
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use wsx::axum::WebSocketUpgrade;
use wsx::proto::deflate::DeflateConfig;
use wsx::{Accept, ServerConfig, WebSocket};

async fn echo(upgrade: WebSocketUpgrade) -> Response {
    upgrade.deflate(DeflateConfig::default()).on_upgrade(echo_loop)
}

async fn echo_loop<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocket<S>) {
    while let Some(msg) = ws.recv().await {
        match msg {
            // Fed, not sent: the replies to a batch of messages leave in one write once `recv`
            // has handled the batch.
            Ok(msg) if msg.is_data() => {
                if ws.feed(msg).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            // The peer broke the protocol (the close frame naming it is sent): keep calling
            // `recv` so the connection winds down.
            Err(_) => {}
        }
    }
}

/// The same echo on `wsx::accept_with` and a plain accept loop: no axum, no hyper.
async fn serve_plain(listener: TcpListener) -> io::Result<()> {
    let mut config = ServerConfig::default();
    config.websocket.deflate = Some(DeflateConfig::default());
    let config = Arc::new(config);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let config = config.clone();
        tokio::spawn(async move {
            if let Ok(ws) = wsx::accept_with(tcp, &config, |_, _| Ok(Accept::default())).await {
                echo_loop(ws).await;
            }
        });
    }
}

#[tokio::main]
async fn main() -> io::Result<()> {
    let mut addr = std::env::var("WSX_ADDR").unwrap_or_else(|_| "127.0.0.1:9001".to_owned());
    let (mut wrap, mut plain) = (false, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().unwrap_or_default(),
            "--wrap-stream" => wrap = true,
            "--plain" => plain = true,
            _ => {
                eprintln!("usage: axum_echo [--addr HOST:PORT] [--wrap-stream | --plain]   (or WSX_ADDR=HOST:PORT)");
                std::process::exit(2);
            }
        }
    }
    let listener = TcpListener::bind(&addr).await?;
    let path = match (plain, wrap) {
        (true, _) => "wsx::accept, no axum",
        (false, true) => "hyper's Upgraded stream",
        (false, false) => "the TCP socket",
    };
    eprintln!("axum_echo listening on ws://{}/ (connections on {path})", listener.local_addr()?);
    let app = Router::new().fallback(echo);
    if plain {
        serve_plain(listener).await
    } else if wrap {
        axum::serve(Wrapping(listener), app).await
    } else {
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await
    }
}

/// A listener whose connections are [`Wrapped`].
struct Wrapping(TcpListener);

impl Listener for Wrapping {
    /// A `TcpStream` under another type name (wsx's client stream, which forwards everything,
    /// vectored writes included): hyper cannot downcast it back.
    type Io = wsx::MaybeTlsStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (wsx::MaybeTlsStream, SocketAddr) {
        loop {
            match self.0.accept().await {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    return (wsx::MaybeTlsStream::Plain(tcp), peer);
                }
                // Out of file descriptors, typically: let connections end before retrying.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}
