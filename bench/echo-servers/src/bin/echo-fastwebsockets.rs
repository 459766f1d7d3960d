//! fastwebsockets through its documented server path: hyper 1 serves the HTTP/1.1 request,
//! `fastwebsockets::upgrade::upgrade` answers it with 101 and yields the socket, which is
//! wrapped in a `FragmentCollector` (whole messages), with `auto_pong` and `auto_close` on.

use fastwebsockets::{upgrade, FragmentCollector, OpCode, WebSocketError};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const NAME: &str = "echo-fastwebsockets";

/// Echoes the data messages of one upgraded connection until the peer closes it.
async fn echo(upgrade: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = upgrade.await?;
    ws.set_auto_pong(true);
    ws.set_auto_close(true);
    let mut ws = FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}

/// Answers the upgrade request, and starts the echo once hyper hands over the socket.
async fn upgrade_request(mut req: Request<Incoming>) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, upgrade) = upgrade::upgrade(&mut req)?;
    tokio::spawn(async move {
        if let Err(e) = echo(upgrade).await {
            echo_servers::report(NAME, e);
        }
    });
    Ok(response)
}

async fn serve_http(tcp: TcpStream) -> Result<(), hyper::Error> {
    http1::Builder::new().serve_connection(TokioIo::new(tcp), service_fn(upgrade_request)).with_upgrades().await
}

fn main() -> std::process::ExitCode {
    echo_servers::serve(NAME, serve_http)
}
