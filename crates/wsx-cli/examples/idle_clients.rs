//! Opens N client connections to a server, optionally with permessage-deflate, sends one
//! message on each and waits for its echo (so that compression state, if any, exists), then
//! holds them open. With `--server-pid`, prints the server's RSS growth per connection.
//!
//! Usage: `idle_clients URL N [--deflate] [--server-pid PID] [--hold SECS]`
//!
//! A measuring tool for `docs/` (compression memory); `wsload idle` measures connections that
//! negotiate no extension.

use std::time::Duration;

use wsx::proto::deflate::DeflateConfig;
use wsx::{ClientBuilder, Message, WebSocketConfig};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args.first().ok_or("usage: idle_clients URL N [--deflate] [--server-pid PID] [--hold SECS]")?.clone();
    let n: usize = args.get(1).ok_or("missing N")?.parse()?;
    let deflate = args.iter().any(|a| a == "--deflate");
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let pid: Option<u32> = flag("--server-pid").map(|p| p.parse()).transpose()?;
    let hold: u64 = flag("--hold").map(|p| p.parse()).transpose()?.unwrap_or(0);

    let before = pid.map(rss_kib);
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut config = WebSocketConfig::default();
        if deflate {
            config.deflate = Some(DeflateConfig::default());
        }
        let (mut ws, _) = ClientBuilder::new(&url).config(config).connect().await?;
        ws.send_text("a message that is long enough to be worth compressing, repeated, repeated").await?;
        match ws.recv().await {
            Some(Ok(Message::Text(_))) => {}
            other => return Err(format!("unexpected reply: {other:?}").into()),
        }
        conns.push(ws);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let negotiated = conns.iter().filter(|c| c.extensions().is_some()).count();
    if let (Some(pid), Some(before)) = (pid, before) {
        let after = rss_kib(pid);
        let per_conn = (after.saturating_sub(before)) * 1024 / n as u64;
        println!(
            "conns={n} deflate_negotiated={negotiated} rss_before_kib={before} rss_after_kib={after} bytes_per_conn={per_conn}"
        );
    } else {
        println!("conns={n} deflate_negotiated={negotiated}");
    }
    tokio::time::sleep(Duration::from_secs(hold)).await;
    Ok(())
}
