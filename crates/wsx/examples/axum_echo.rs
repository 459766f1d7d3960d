//! An echo server on axum with the wsx extractor: every path upgrades and echoes every text and
//! binary message, with permessage-deflate accepted. The Autobahn conformance suite runs
//! against it (`scripts/autobahn axum`), as it does against `wsx serve --echo --conformance`,
//! whose settings it mirrors: default limits, no keepalive pings, compression with context
//! takeover.
//!
//! ```sh
//! cargo run --release -p wsx --features axum --example axum_echo -- --addr 127.0.0.1:9001
//! ```
//!
//! The address comes from `--addr HOST:PORT`, else the `WSX_ADDR` environment variable, else
//! 127.0.0.1:9001.

use axum::response::Response;
use axum::Router;
use wsx::axum::WebSocketUpgrade;
use wsx::proto::deflate::DeflateConfig;

async fn echo(upgrade: WebSocketUpgrade) -> Response {
    upgrade.deflate(DeflateConfig::default()).on_upgrade(|mut ws| async move {
        while let Some(msg) = ws.recv().await {
            match msg {
                // Fed, not sent: the replies to a batch of messages leave in one write once
                // `recv` has handled the batch.
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
    })
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut addr = std::env::var("WSX_ADDR").unwrap_or_else(|_| "127.0.0.1:9001".to_owned());
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(value)) => addr = value,
            _ => {
                eprintln!("usage: axum_echo [--addr HOST:PORT]   (or WSX_ADDR=HOST:PORT)");
                std::process::exit(2);
            }
        }
    }
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("axum_echo listening on ws://{}/", listener.local_addr()?);
    axum::serve(listener, Router::new().fallback(echo)).await
}
