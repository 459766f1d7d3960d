//! wsx, with the echo loop of the project's README: `wsx::accept` with default settings (no
//! permessage-deflate, no keepalive), one `recv`/`send` loop per connection.

use tokio::net::TcpStream;

async fn echo(tcp: TcpStream) -> Result<(), wsx::Error> {
    let mut ws = wsx::accept(tcp).await?;
    while let Some(msg) = ws.recv().await {
        let msg = msg?;
        if msg.is_data() {
            ws.send(msg).await?;
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    echo_servers::serve("echo-wsx", echo)
}
