//! sockudo-ws 2 with the batching loop its `Sink` is made for: `accept_raw` does the
//! handshake (keeping frame bytes that came with the request), `feed` encodes each echo into
//! the library's cork buffer, and one `flush` per batch writes the echoes of everything already
//! read (`echo_servers::next_batch`; vectored writes), as in `echo-tokio-websockets`. Its
//! keepalive (a ping every 30 s) and idle timeout are off, as they are in `echo-wsx`: with them
//! on, every poll for a message reads the clock and polls a timer. Pings are answered by the
//! library; permessage-deflate is off, as in every row.

use futures_util::SinkExt as _;
use sockudo_ws::server::WebSocketServer;
use sockudo_ws::transport::Http1;
use sockudo_ws::{Config, Error, Message};
use tokio::net::TcpStream;

const NAME: &str = "echo-sockudo";

/// Echoes the data messages of one connection until the peer closes it.
async fn echo(tcp: TcpStream) -> Result<(), Error> {
    let config = Config::builder().auto_ping(false).idle_timeout(0).build();
    let (mut ws, _handshake) = WebSocketServer::<Http1>::new(config).accept_raw(tcp).await?;
    let mut batch = Vec::with_capacity(echo_servers::BATCH);
    while echo_servers::next_batch(&mut ws, &mut batch).await? {
        for msg in batch.drain(..) {
            match msg {
                Message::Text(_) | Message::Binary(_) => ws.feed(msg).await?,
                // The library has queued its answer: write it, and the connection is over.
                Message::Close(_) => {
                    // Whether it can still be written no longer matters.
                    let _ = ws.flush().await;
                    return Ok(());
                }
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
        ws.flush().await?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    echo_servers::serve(NAME, echo)
}
