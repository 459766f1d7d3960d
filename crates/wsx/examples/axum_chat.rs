//! A chat room on axum with the wsx extractor: a page, a broadcast room, and an echo endpoint.
//!
//! ```sh
//! cargo run -p wsx --features axum --example axum_chat -- --addr 127.0.0.1:3000
//! # then open http://127.0.0.1:3000/ in two tabs
//! ```
//!
//! | route   | plain HTTP | WebSocket |
//! | ------- | ---------- | --------- |
//! | `/`     | the page   | —         |
//! | `/chat` | —          | the room: every text message goes to every member, as `name: text` |
//! | `/echo` | —          | echoes every text and binary message (permessage-deflate accepted) |
//!
//! Options: `--addr HOST:PORT` (else the `WSX_ADDR` environment variable, else
//! 127.0.0.1:3000), and `--origin URL` (repeatable) to let pages from another origin join
//! the room; by default only the page served here may (see [`wsx::origin`]).
//!
//! The room encodes each message once for all its members ([`PreparedMessage`]) and never
//! waits for a slow member: each member has a queue of at most [`QUEUE`] messages of at most
//! [`MAX_MESSAGE`] bytes, and a member whose queue is full is dropped from the room and closed
//! with 1008 (its socket's output is bounded by the write-buffer high-water mark and the write
//! timeout, as every wsx connection's). What a room holds for a member is thus bounded, however
//! slow the member.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::State;
use axum::response::{Html, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::mpsc::{self, error::TrySendError};
use wsx::axum::{UpgradeRejection, WebSocketUpgrade};
use wsx::hyper::UpgradedStream;
use wsx::origin::OriginPolicy;
use wsx::proto::deflate::DeflateConfig;
use wsx::{CloseCode, Message, PreparedMessage, WebSocket};

/// Messages the room queues for a member; a member that falls further behind is closed.
pub const QUEUE: usize = 64;
/// The largest message a member may send to the room, in bytes (a larger one closes its
/// connection with 1009).
pub const MAX_MESSAGE: usize = 4096;

/// The app's state: the room and who may join it.
pub struct App {
    room: Room,
    origins: OriginPolicy,
}

/// The app: the page, the room and the echo endpoint.
pub fn app(state: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/chat", get(chat))
        .route("/echo", get(echo))
        .with_state(state)
}

async fn chat(State(app): State<Arc<App>>, upgrade: WebSocketUpgrade) -> Result<Response, UpgradeRejection> {
    upgrade.check_origin(&app.origins)?;
    Ok(upgrade.protocols(["chat.v1"]).max_message_size(MAX_MESSAGE).on_upgrade(move |ws| member(ws, app)))
}

/// One member of the room: what it sends goes to everyone, what the room carries goes to it.
async fn member(mut ws: WebSocket<UpgradedStream>, app: Arc<App>) {
    let (id, mut inbox) = app.room.join();
    let name = format!("guest-{id}");
    app.room.publish(PreparedMessage::text(format!("* {name} joined")));
    loop {
        // Both branches are cancel-safe: nothing is lost when the other one wins.
        tokio::select! {
            msg = ws.recv() => match msg {
                Some(Ok(Message::Text(text))) => app.room.publish(PreparedMessage::text(format!("{name}: {text}"))),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            out = inbox.recv() => match out {
                Some(message) => {
                    if ws.send_prepared(&message).await.is_err() {
                        break;
                    }
                }
                // The room dropped this member: it fell more than QUEUE messages behind.
                None => {
                    let _ = ws.close(CloseCode::POLICY_VIOLATION, "too slow: fell behind the room").await;
                    break;
                }
            },
        }
    }
    app.room.leave(id);
    app.room.publish(PreparedMessage::text(format!("* {name} left")));
}

async fn echo(upgrade: WebSocketUpgrade) -> Response {
    upgrade.deflate(DeflateConfig::default()).on_upgrade(|mut ws| async move {
        while let Some(msg) = ws.recv().await {
            match msg {
                Ok(msg) if msg.is_data() => {
                    if ws.feed(msg).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => {} // the connection winds down; `recv` then returns None
            }
        }
    })
}

/// The members of the room, each a bounded queue.
#[derive(Default)]
pub struct Room {
    members: Mutex<HashMap<u64, mpsc::Sender<PreparedMessage>>>,
    next_id: AtomicU64,
}

impl Room {
    /// Joins: a member id and the member's queue of room messages.
    pub fn join(&self) -> (u64, mpsc::Receiver<PreparedMessage>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(QUEUE);
        self.members().insert(id, tx);
        (id, rx)
    }

    /// Leaves (a member already dropped for being slow is gone).
    pub fn leave(&self, id: u64) {
        self.members().remove(&id);
    }

    /// Queues `message` for every member, never waiting: a member whose queue is full is
    /// dropped from the room (its queue then ends, and it is closed).
    pub fn publish(&self, message: PreparedMessage) {
        self.members().retain(|_, queue| match queue.try_send(message.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Closed(_)) => false,
        });
    }

    /// How many members the room has.
    pub fn len(&self) -> usize {
        self.members().len()
    }

    /// Whether the room has no member.
    pub fn is_empty(&self) -> bool {
        self.members().is_empty()
    }

    fn members(&self) -> MutexGuard<'_, HashMap<u64, mpsc::Sender<PreparedMessage>>> {
        // Every critical section leaves the map consistent: a poisoned lock is still usable.
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl App {
    /// An empty room that pages from `origins` (and this server) may join.
    pub fn new(origins: OriginPolicy) -> Arc<Self> {
        Arc::new(Self { room: Room::default(), origins })
    }

    /// The room.
    pub fn room(&self) -> &Room {
        &self.room
    }
}

/// `--addr` (or `WSX_ADDR`, or 127.0.0.1:3000) and the `--origin` values.
fn parse_args() -> Result<(String, Vec<String>), String> {
    let mut addr = std::env::var("WSX_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let mut origins = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--addr", Some(value)) => addr = value,
            ("--origin", Some(value)) => origins.push(value),
            _ => return Err("usage: axum_chat [--addr HOST:PORT] [--origin URL]...   (or WSX_ADDR=HOST:PORT)".into()),
        }
    }
    Ok((addr, origins))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (addr, origins) = parse_args()?;
    let origins = OriginPolicy::new(&origins).map_err(|e| format!("--origin {e}"))?;
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("axum_chat listening on http://{}/", listener.local_addr()?);
    // Small messages should leave at once, not wait for the previous one's ACK (Nagle).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app(App::new(origins))).await?;
    Ok(())
}

/// The page: joins the room over `/chat` and shows what it carries.
const PAGE: &str = r#"<!doctype html>
<html lang="en">
<meta charset="utf-8">
<title>wsx on axum: chat</title>
<style>
  body { font: 16px system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; }
  #log { border: 1px solid #ccc; height: 20rem; overflow-y: auto; padding: .5rem; white-space: pre-wrap; }
  form { display: flex; gap: .5rem; margin-top: .5rem; } #text { flex: 1; }
</style>
<h1>Chat</h1>
<p id="state">connecting…</p>
<div id="log"></div>
<form id="form"><input id="text" autocomplete="off" maxlength="1000" autofocus><button>Send</button></form>
<script>
  const log = document.getElementById("log");
  const show = (line) => {
    const div = document.createElement("div");
    div.textContent = line;
    log.append(div);
    log.scrollTop = log.scrollHeight;
  };
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(scheme + location.host + "/chat", "chat.v1");
  ws.onopen = () => { document.getElementById("state").textContent = "connected (" + ws.protocol + ")"; };
  ws.onmessage = (event) => show(event.data);
  ws.onclose = (event) => {
    document.getElementById("state").textContent = "closed: " + event.code + " " + event.reason;
  };
  document.getElementById("form").onsubmit = (event) => {
    event.preventDefault();
    const text = document.getElementById("text");
    if (text.value && ws.readyState === WebSocket.OPEN) ws.send(text.value);
    text.value = "";
  };
</script>
</html>
"#;
