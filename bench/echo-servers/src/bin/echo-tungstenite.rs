//! tokio-tungstenite: `accept_async` with the default configuration, then the stream of
//! messages is read with `StreamExt::next` and each data message sent back with `SinkExt::send`.
//! Pings are answered and the close handshake completed by tungstenite itself.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;

async fn echo(tcp: TcpStream) -> Result<(), tungstenite::Error> {
    let mut ws = tokio_tungstenite::accept_async(tcp).await?;
    while let Some(msg) = ws.next().await {
        let msg = msg?;
        if msg.is_text() || msg.is_binary() {
            ws.send(msg).await?;
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    echo_servers::serve("echo-tungstenite", echo)
}
