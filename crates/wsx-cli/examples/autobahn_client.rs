//! The client side of the Autobahn conformance suite: runs every case of a fuzzing server
//! (`kosoku -m fuzzingserver`), echoing each message, then asks it to write its reports.
//!
//! Usage: `autobahn_client ws://127.0.0.1:9001 AGENT [JOBS]`
//!
//! JOBS cases run at once (default 1): the suite's compression cases spend most of their time
//! in the fuzzing server, which serves several cases at once.

use wsx::proto::deflate::DeflateConfig;
use wsx::{ClientBuilder, Message, WebSocketConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let base = args.next().unwrap_or_else(|| "ws://127.0.0.1:9001".into());
    let agent = args.next().unwrap_or_else(|| "wsx".into());
    let jobs: u32 = match args.next() {
        Some(j) => j.parse().map_err(|_| format!("JOBS must be a number, not {j:?}"))?,
        None => 1,
    };

    let count = case_count(&base).await?;
    eprintln!("{count} cases, {jobs} at a time");
    // Each worker takes the next case not yet taken.
    let next = std::rc::Rc::new(std::cell::Cell::new(1u32));
    let workers = (0..jobs.max(1)).map(|_| {
        let (next, base, agent) = (next.clone(), base.clone(), agent.clone());
        async move {
            loop {
                let case = next.get();
                if case > count {
                    return;
                }
                next.set(case + 1);
                let url = format!("{base}/runCase?case={case}&agent={agent}");
                if let Err(e) = run_case(&url).await {
                    eprintln!("case {case}: {e}");
                }
            }
        }
    });
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let handles: Vec<_> = workers.map(|w| tokio::task::spawn_local(w)).collect();
            for h in handles {
                h.await.expect("a case worker panicked");
            }
        })
        .await;
    // The fuzzing server drops this connection without a close frame once the reports are
    // written: that is expected, not a failure.
    let url = format!("{base}/updateReports?agent={agent}");
    if let Ok((mut ws, _)) = ClientBuilder::new(url).connect().await {
        while let Some(Ok(_)) = ws.recv().await {}
    }
    Ok(())
}

async fn case_count(base: &str) -> Result<u32, Box<dyn std::error::Error>> {
    let (mut ws, _) = ClientBuilder::new(format!("{base}/getCaseCount")).connect().await?;
    while let Some(msg) = ws.recv().await {
        if let Message::Text(t) = msg? {
            return Ok(t.trim().parse()?);
        }
    }
    Err("no case count received".into())
}

async fn run_case(url: &str) -> Result<(), wsx::Error> {
    // Offer permessage-deflate, compressing every message (the suite's 12.* and 13.* cases
    // hash what they receive and need it compressed).
    // The suite's fuzzing server grants `client_no_context_takeover` (cases 13.2, 13.5, 13.6)
    // only to a client whose offer carries that parameter, so offer it, and honour it.
    let mut deflate = DeflateConfig::default();
    deflate.client_no_context_takeover = true;
    let mut config = WebSocketConfig::default();
    config.deflate = Some(deflate);
    let (mut ws, _) = ClientBuilder::new(url).config(config).connect().await?;
    while let Some(msg) = ws.recv().await {
        match msg {
            Ok(m) if m.is_data() => ws.send(m).await?,
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
