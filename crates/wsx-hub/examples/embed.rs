//! Rooms in your own server: every WebSocket connection to 127.0.0.1:9090 is a client of the
//! hub subprotocol (`wsx.hub.v1`, docs/hub.md), on in-process rooms, or on rooms shared with
//! every other node when `WSX_BUS=redis://…` is set.
//!
//! ```sh
//! cargo run -p wsx-hub --features redis --example embed
//! wsx connect --subprotocol wsx.hub.v1 ws://127.0.0.1:9090/
//! > {"type":"subscribe","room":"lobby","name":"me","presence":true}
//! > {"type":"publish","room":"lobby","text":"hello"}
//! ```
//!
//! An axum route does the same with `wsx::axum::WebSocketUpgrade`: the `WebSocket` it hands
//! over goes to [`wsx_hub::session::hub_member`] (or `raw_member`) just like this one.

use wsx_hub::{Hub, HubConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = HubConfig::default();
    let hub = match std::env::var("WSX_BUS") {
        #[cfg(feature = "redis")]
        Ok(url) => Hub::redis(&url, config).await?,
        _ => Hub::local(config),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:9090").await?;
    println!("hub on ws://127.0.0.1:9090/ (node {})", hub.node_id());
    loop {
        let (tcp, peer) = listener.accept().await?;
        let hub = hub.clone();
        tokio::spawn(async move {
            // The handshake has its own deadline (the connection config's handshake timeout).
            let mut ws = match wsx::accept(tcp).await {
                Ok(ws) => ws,
                Err(e) => return eprintln!("{peer}: handshake failed: {e}"),
            };
            // Runs until the connection ends; `pending()`: this server never shuts down.
            let outcome = wsx_hub::session::hub_member(&mut ws, &hub, std::future::pending()).await;
            println!("{peer}: closed with {:?} by {:?}", outcome.code, outcome.by);
        });
    }
}
