//! wsx, with the echo loop of the project's README: `wsx::accept` with default settings (no
//! permessage-deflate, no keepalive), one `recv`/`feed` loop per connection
//! (the replies to a batch leave in one write). With `--tls-cert`/`--tls-key`, the same loop
//! over `wsx::tls::accept` (the shared rustls configuration, see the library docs).

use echo_servers::TlsAcceptor;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(stream: S) -> Result<(), wsx::Error> {
    let mut ws = wsx::accept(stream).await?;
    while let Some(msg) = ws.recv().await {
        let msg = msg?;
        if msg.is_data() {
            ws.feed(msg).await?;
        }
    }
    Ok(())
}

async fn handle(tcp: TcpStream, tls: Option<TlsAcceptor>) -> Result<(), wsx::Error> {
    match tls {
        None => echo(tcp).await,
        // Boxed: the TLS connection's state must not make every plain connection's task as large.
        Some(acceptor) => Box::pin(async move { echo(wsx::tls::accept(&acceptor, tcp).await?).await }).await,
    }
}

fn main() -> std::process::ExitCode {
    echo_servers::serve_tls("echo-wsx", handle)
}
