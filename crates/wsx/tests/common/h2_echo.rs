//! A hyper service that takes every WebSocket request (an HTTP/1.1 upgrade or an HTTP/2
//! extended CONNECT) through `wsx::hyper` and echoes its data messages; refusals as
//! `rejection_response` words them. Shared by the h2 client tests of `wsx` and `wsx-cli`.
#![allow(dead_code)]

use std::convert::Infallible;

use http::{Request, Response};
use hyper::body::Incoming;
use wsx::hyper::{rejection_response, Upgrade};
use wsx::{WebSocket, WebSocketConfig};

/// Echoes data messages until the WebSocket ends.
pub async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut ws: WebSocket<S>) {
    while let Some(Ok(msg)) = ws.recv().await {
        if msg.is_data() && ws.send(msg).await.is_err() {
            break;
        }
    }
}

/// The service: accept with the defaults, echo on a task of its own.
pub async fn h2_service(mut request: Request<Incoming>) -> Result<Response<String>, Infallible> {
    let upgrade = match Upgrade::new(&mut request) {
        Ok(upgrade) => upgrade,
        Err(rejection) => return Ok(rejection_response(&rejection)),
    };
    match upgrade.accept(wsx::Accept::default(), &WebSocketConfig::default()) {
        Ok((response, upgrading)) => {
            tokio::spawn(async move {
                if let Ok(ws) = upgrading.await {
                    echo(ws).await;
                }
            });
            Ok(response.map(|()| String::new()))
        }
        Err(rejection) => Ok(rejection_response(&rejection)),
    }
}
