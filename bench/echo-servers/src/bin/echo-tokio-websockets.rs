//! tokio-websockets 0.13 at its best for an echo: `ServerBuilder::accept` does the handshake,
//! and the loop collects every message already read (`echo_servers::next_batch`), then queues
//! their echoes with `feed` and writes them with one `flush`, so that a pipelined batch leaves in
//! one write as it does from wsx. (The library flushes its queue whenever it is polled for the
//! next message, so feeding each echo as it is read would write once per message; and `feed`
//! itself flushes once 8 KiB are queued unless the flush threshold is lifted, as here.) Pings
//! are answered and the peer's close echoed by the library.

use futures_util::SinkExt as _;
use tokio::net::TcpStream;
use tokio_websockets::{Config, Error, ServerBuilder};

const NAME: &str = "echo-tokio-websockets";

/// Echoes the data messages of one connection until the peer closes it.
async fn echo(tcp: TcpStream) -> Result<(), Error> {
    // The queue is written by the flush that ends each batch, not by `feed` along the way.
    let config = Config::default().flush_threshold(usize::MAX);
    let (_request, mut ws) = ServerBuilder::new().config(config).accept(tcp).await?;
    let mut batch = Vec::with_capacity(echo_servers::BATCH);
    while echo_servers::next_batch(&mut ws, &mut batch).await? {
        for msg in batch.drain(..) {
            if msg.is_close() {
                // The library has queued its answer: write it, and the connection is over.
                // Whether it can still be written no longer matters.
                let _ = ws.flush().await;
                return Ok(());
            }
            if msg.is_text() || msg.is_binary() {
                ws.feed(msg).await?;
            }
        }
        ws.flush().await?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    echo_servers::serve(NAME, echo)
}
