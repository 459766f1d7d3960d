//! `wsx connect`: a line-oriented client.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use wsx::{ClientBuilder, CloseCode, Message};

/// Options of `wsx connect`.
#[derive(Args, Debug)]
pub struct ConnectArgs {
    /// The server's URL, e.g. ws://127.0.0.1:8080/echo
    url: String,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Offer a subprotocol (repeatable).
    #[arg(long = "subprotocol")]
    subprotocols: Vec<String>,
    /// Send an Origin header.
    #[arg(long)]
    origin: Option<String>,
}

/// Connects, pumps stdin to the server and the server to stdout; exits 0 on a clean close.
pub async fn run(args: ConnectArgs) -> anyhow::Result<ExitCode> {
    let mut builder = ClientBuilder::new(&args.url);
    for h in &args.headers {
        let (name, value) = h.split_once(':').with_context(|| format!("header {h:?} is not `Name: value`"))?;
        builder = builder.header(name.trim(), value.trim());
    }
    for p in &args.subprotocols {
        builder = builder.protocol(p);
    }
    if let Some(o) = &args.origin {
        builder = builder.origin(o);
    }
    let (ws, _) = builder.connect().await.with_context(|| format!("cannot connect to {}", args.url))?;
    let (mut reader, mut writer) = ws.split();

    let printer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        let mut close = None;
        while let Some(msg) = reader.recv().await {
            match msg {
                Ok(Message::Text(t)) => {
                    let _ = stdout.write_all(t.as_bytes()).await;
                    let _ = stdout.write_all(b"\n").await;
                    let _ = stdout.flush().await;
                }
                Ok(Message::Binary(b)) => {
                    let _ = stdout.write_all(&b).await;
                    let _ = stdout.flush().await;
                }
                Ok(Message::Close(frame)) => close = Some(frame),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(close)
    });

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut printer = printer;
    let result = loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    if let Err(e) = writer.send(Message::text(line)).await {
                        break (&mut printer).await.unwrap_or(Err(e));
                    }
                }
                Ok(None) | Err(_) => {
                    let _ = writer.close(CloseCode::NORMAL, "").await;
                    break (&mut printer).await.unwrap_or(Ok(None));
                }
            },
            done = &mut printer => break done.unwrap_or(Ok(None)),
        }
    };
    match result {
        Ok(Some(Some(frame))) => {
            eprintln!("closed: {} {}", frame.code, frame.reason);
            Ok(if frame.code == CloseCode::NORMAL { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
        Ok(Some(None)) => {
            eprintln!("closed: 1005 (no status code)");
            Ok(ExitCode::SUCCESS)
        }
        Ok(None) => {
            eprintln!("closed");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e} (close code {})", e.close_code().map_or(1006, |c| c.0));
            Ok(ExitCode::FAILURE)
        }
    }
}
