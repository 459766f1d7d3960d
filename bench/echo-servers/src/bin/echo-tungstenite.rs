//! tokio-tungstenite: `accept_async` with the default configuration, then the stream of
//! messages is read with `StreamExt::next` and each data message sent back with `SinkExt::send`.
//! Pings are answered and the close handshake completed by tungstenite itself. With
//! `--tls-cert`/`--tls-key`, the same loop over a tokio-rustls `TlsAcceptor::accept` stream, with
//! the rustls configuration the wsx server uses (see the library docs).

use echo_servers::TlsAcceptor;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(stream: S) -> Result<(), tungstenite::Error> {
    let mut ws = tokio_tungstenite::accept_async(stream).await?;
    while let Some(msg) = ws.next().await {
        let msg = msg?;
        if msg.is_text() || msg.is_binary() {
            ws.send(msg).await?;
        }
    }
    Ok(())
}

async fn handle(tcp: TcpStream, tls: Option<TlsAcceptor>) -> Result<(), tungstenite::Error> {
    match tls {
        None => echo(tcp).await,
        // Boxed: the TLS connection's state must not make every plain connection's task as large.
        Some(acceptor) => Box::pin(async move { echo(acceptor.accept(tcp).await?).await }).await,
    }
}

fn main() -> std::process::ExitCode {
    echo_servers::serve_tls("echo-tungstenite", handle)
}
