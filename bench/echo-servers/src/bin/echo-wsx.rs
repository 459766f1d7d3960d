//! wsx, with the echo loop of the project's README: `wsx::accept` with default settings (no
//! permessage-deflate, no keepalive), one `recv`/`feed` loop per connection
//! (the replies to a batch leave in one write).

use tokio::net::TcpStream;

async fn echo(tcp: TcpStream) -> Result<(), wsx::Error> {
    let mut ws = wsx::accept(tcp).await?;
    while let Some(msg) = ws.recv().await {
        let msg = msg?;
        if msg.is_data() {
            ws.feed(msg).await?;
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    echo_servers::serve("echo-wsx", echo)
}
