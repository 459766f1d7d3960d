//! The Redis engine against a real `redis-server` (one per test, on its own port): what its
//! failures look like to members. Needs `redis-server` and `redis-cli` (scripts/test installs
//! them).
#![cfg(feature = "redis")]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use wsx_hub::{Event, Hub, HubConfig, JoinOptions, Member, Payload, Received};

struct Redis {
    child: Option<Child>,
    port: u16,
    dir: std::path::PathBuf,
}

impl Redis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("wsx-hub-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Self { child: None, port, dir };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts it (again) with snapshots only: what it saved last is what it comes back with.
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server ({e}): scripts/test installs it"));
        self.child = Some(child);
        for _ in 0..500 {
            if self.cli(&["PING"]).trim() == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}): scripts/test installs it"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config(node: &str) -> HubConfig {
    HubConfig { node_id: Some(node.into()), ..HubConfig::default() }
}

fn text(s: &str) -> Payload {
    Payload::Text(s.to_owned().into())
}

/// What a member receives within `d`, as short strings.
async fn seen_within(m: &mut Member, d: Duration) -> Vec<String> {
    let mut out = vec![];
    let end = tokio::time::Instant::now() + d;
    while let Ok(r) = tokio::time::timeout_at(end, m.recv()).await {
        out.push(match r {
            Received::Event(_, Event::Message(m)) => match m.payload() {
                Payload::Text(t) => format!("{} {t}", m.offset()),
                _ => format!("{} ?", m.offset()),
            },
            Received::Event(_, Event::Resumed { recovered, position, .. }) => {
                format!("resumed {recovered} at {}", position.offset)
            }
            Received::Event(_, Event::Interrupted) => "interrupted".into(),
            Received::Event(_, e) => format!("{e:?}"),
            Received::Lagged(l) => format!("lagged {l}"),
        });
    }
    out
}

async fn publish_when_back(hub: &Hub, room: &str, t: &str) -> u64 {
    for _ in 0..100 {
        if let Ok(p) = hub.publish(room, text(t)).await {
            return p.offset;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("publishing never worked again");
}

/// Redis crashes and comes back from its last snapshot, older than what it acknowledged: the
/// offsets it hands out again must not be taken for messages the member has. The member is
/// told of the loss and gets every message published after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_back_from_an_older_snapshot_reports_the_loss_and_delivers_the_rest() {
    let mut redis = Redis::start();
    let a = Hub::redis(&redis.url(), config("a")).await.unwrap();
    let b = Hub::redis(&redis.url(), config("b")).await.unwrap();
    let mut m = b.member();
    m.join("r", JoinOptions::default()).await.unwrap();
    for i in 1..=3 {
        a.publish("r", text(&format!("x{i}"))).await.unwrap();
    }
    redis.cli(&["SAVE"]);
    for i in 4..=6 {
        a.publish("r", text(&format!("x{i}"))).await.unwrap();
    }
    let before = seen_within(&mut m, Duration::from_millis(300)).await;
    assert_eq!(before, ["1 x1", "2 x2", "3 x3", "4 x4", "5 x5", "6 x6"]);
    redis.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    let mut acked = vec![];
    for t in ["y1", "y2", "y3"] {
        acked.push(format!("{} {t}", publish_when_back(&a, "r", t).await));
    }
    let after = seen_within(&mut m, Duration::from_secs(3)).await;
    let lost = after.iter().position(|s| s.starts_with("resumed false")).expect("no loss reported");
    assert!(after[..lost].iter().all(|s| s == "interrupted"), "{after:?}");
    assert_eq!(after[lost + 1..], acked[..], "{after:?}");
}

/// The room's meta is gone (evicted, say) but its log stays: publishing starts a new epoch and
/// works at once, instead of failing on the log's old entries.
#[tokio::test]
async fn a_room_whose_meta_was_evicted_starts_afresh() {
    let redis = Redis::start();
    let a = Hub::redis(&redis.url(), config("a")).await.unwrap();
    let first = a.publish("r", text("x")).await.unwrap();
    a.publish("r", text("y")).await.unwrap();
    redis.cli(&["DEL", "wsx:{r}:meta"]);
    let next = a.publish("r", text("z")).await.unwrap();
    assert_eq!(next.offset, 1);
    assert_ne!(next.epoch, first.epoch);
    let mut m = a.member();
    let joined = m.join("r", JoinOptions { history: 10, ..Default::default() }).await.unwrap();
    let texts: Vec<_> = joined.messages.iter().map(|m| m.payload().clone()).collect();
    assert_eq!(texts, [text("z")], "the old log was not dropped with its epoch");
}

/// A member leaves a room and another joins it on the same node before the node forgot the
/// room: messages published in between (beyond the history) are not the newcomer's loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoin_is_not_told_of_losses_before_it() {
    let redis = Redis::start();
    let a = Hub::redis(&redis.url(), HubConfig { history_size: 3, ..config("a") }).await.unwrap();
    let b = Hub::redis(&redis.url(), HubConfig { history_size: 3, ..config("b") }).await.unwrap();
    for round in 0..3 {
        let room = format!("r{round}");
        let mut first = b.member();
        first.join(&room, JoinOptions::default()).await.unwrap();
        a.publish(&room, text("first")).await.unwrap();
        assert_eq!(seen_within(&mut first, Duration::from_millis(200)).await, ["1 first"]);
        drop(first);
        for i in 0..5 {
            a.publish(&room, text(&format!("away {i}"))).await.unwrap();
        }
        let mut second = b.member();
        let joined = second.join(&room, JoinOptions::default()).await.unwrap();
        assert_eq!(joined.position.offset, 6);
        a.publish(&room, text("after")).await.unwrap();
        assert_eq!(seen_within(&mut second, Duration::from_millis(300)).await, ["7 after"], "round {round}");
    }
}

/// Redis restarts without its data: members still connected come back into presence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_comes_back_after_redis_lost_it() {
    let mut redis = Redis::start();
    let a = Hub::redis(&redis.url(), HubConfig { presence_ttl: Duration::from_secs(1), ..config("a") }).await.unwrap();
    let mut m = a.member();
    m.join("r", JoinOptions { name: Some("alice".into()), ..Default::default() }).await.unwrap();
    assert_eq!(a.presence("r").await.unwrap().len(), 1);
    redis.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    let mut back = false;
    for _ in 0..50 {
        if a.presence("r").await.is_ok_and(|p| p.iter().any(|x| x.name.as_deref() == Some("alice"))) {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "alice, still connected, never came back into presence");
}

/// A raw member whose room cannot be joined (Redis away) is closed with 1013 within the broker
/// timeout, with a reason that fits a close frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_member_is_closed_when_its_room_cannot_be_joined() {
    let mut redis = Redis::start();
    let a = Hub::redis(&redis.url(), config("a")).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hub = a.clone();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = wsx::accept(tcp).await.unwrap();
        wsx_hub::session::raw_member(&mut ws, &hub, "fresh", std::future::pending()).await
    });
    redis.kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut ws, _) = wsx::connect(&format!("ws://127.0.0.1:{port}/")).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(5), ws.recv()).await {
        Ok(Some(Ok(wsx::Message::Close(Some(frame))))) => {
            assert_eq!(frame.code, wsx::CloseCode::TRY_AGAIN_LATER);
            assert!(frame.reason.as_str().starts_with("room broker unavailable"), "{frame:?}");
        }
        other => panic!("expected a close with 1013, got {other:?}"),
    }
}
