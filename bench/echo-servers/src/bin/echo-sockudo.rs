//! sockudo-ws 2 with the batching loop its `Sink` is made for: `accept_raw` does the
//! handshake (keeping frame bytes that came with the request), `feed` encodes each echo into
//! the library's cork buffer, and one `flush` per batch writes the echoes of everything already
//! read (up to [`BATCH`] messages; vectored writes). The same loop as `echo-tokio-websockets`.
//! Its keepalive (a ping every 30 s) and idle timeout are off, as they are in `echo-wsx`: with
//! them on, every poll for a message reads the clock and polls a timer. Pings are answered by the library; permessage-deflate is off, as in every row.

use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use sockudo_ws::server::WebSocketServer;
use sockudo_ws::transport::Http1;
use sockudo_ws::{Config, Error, Message};
use tokio::net::TcpStream;

const NAME: &str = "echo-sockudo";

/// The most messages answered by one flush.
const BATCH: usize = 64;

/// Echoes the data messages of one connection until the peer closes it.
async fn echo(tcp: TcpStream) -> Result<(), Error> {
    let config = Config::builder().auto_ping(false).idle_timeout(0).build();
    let (mut ws, _handshake) = WebSocketServer::<Http1>::new(config).accept_raw(tcp).await?;
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = ws.next().await {
        batch.push(first?);
        while batch.len() < BATCH {
            match ws.next().now_or_never() {
                Some(Some(msg)) => batch.push(msg?),
                _ => break,
            }
        }
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
