//! The ceiling: a plain TCP byte echo, no WebSocket code (`wsload echo --raw` drives it).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most bytes one read takes. Large, so that the ceiling costs as few system calls as the
/// data allows: with 64 KiB reads, a 1 MiB message takes 16 reads and 16 writes, more than a
/// WebSocket server that reads big frames in big chunks and writes them whole.
const BUFFER: usize = 1 << 20;

async fn echo(mut tcp: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0; BUFFER];
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        tcp.write_all(&buf[..n]).await?;
    }
}

fn main() -> std::process::ExitCode {
    echo_servers::serve("echo-raw", echo)
}
