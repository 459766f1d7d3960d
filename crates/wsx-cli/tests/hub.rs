//! The hub: `wsx serve` nodes sharing rooms through a real `redis-server` (started by each
//! test on its own port), and the `wsx.hub.v1` subprotocol on one node.

mod common;

use std::time::{Duration, Instant};

use common::{Redis, Server};
use serde_json::{json, Value};
use wsx::{ClientBuilder, CloseCode, MaybeTlsStream, Message, WebSocket};

type Ws = WebSocket<MaybeTlsStream>;

/// How long any one wait of these tests may take.
const WAIT: Duration = Duration::from_secs(10);

/// A client of the hub subprotocol.
struct HubClient {
    ws: Ws,
    /// Its member id, from `welcome`.
    id: String,
}

impl HubClient {
    async fn connect(server: &Server) -> Self {
        let (ws, response) =
            ClientBuilder::new(server.url("/hub")).protocol("wsx.hub.v1").connect().await.expect("connect to /hub");
        assert_eq!(response.headers().get("sec-websocket-protocol").unwrap(), "wsx.hub.v1");
        let mut client = Self { ws, id: String::new() };
        let welcome = client.next().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        client.id = welcome["id"].as_str().unwrap().to_owned();
        client
    }

    async fn send(&mut self, v: Value) {
        self.ws.send_text(v.to_string()).await.expect("send a request");
    }

    /// The next message, as JSON (the server's keepalive pings, after 30 s of silence from a
    /// client that only listens, are answered by the library and skipped).
    async fn next(&mut self) -> Value {
        loop {
            match tokio::time::timeout(WAIT, self.ws.recv()).await {
                Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(t.as_str()).expect("JSON"),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                other => panic!("expected a hub message, got {other:?}"),
            }
        }
    }

    /// The next message of this type (others are skipped).
    async fn next_of(&mut self, kind: &str) -> Value {
        let end = Instant::now() + WAIT;
        loop {
            let v = self.next().await;
            if v["type"] == kind {
                return v;
            }
            assert!(Instant::now() < end, "no {kind} within {WAIT:?}");
        }
    }

    async fn subscribe(&mut self, request: Value) -> Value {
        self.send(request).await;
        let answer = self.next().await;
        assert_eq!(answer["type"], "subscribed", "{answer}");
        answer
    }
}

/// A raw `/room/NAME` member.
async fn raw(server: &Server, room: &str) -> Ws {
    let (ws, _) = wsx::connect(&server.url(&format!("/room/{room}"))).await.expect("join a raw room");
    ws
}

/// A raw member that is in the room when this returns. The handshake's end does not say so: the
/// server joins the room after it, so a message published at once could miss the member. A
/// watcher asking for presence sees the raw member's `join`.
async fn raw_in_room(server: &Server, room: &str) -> Ws {
    let mut watcher = HubClient::connect(server).await;
    watcher.subscribe(json!({"type": "subscribe", "room": room, "presence": true})).await;
    assert_eq!(watcher.next_of("join").await["member"]["id"], watcher.id.as_str());
    let ws = raw(server, room).await;
    let join = watcher.next_of("join").await;
    assert_ne!(join["member"]["id"], watcher.id.as_str(), "{join}");
    ws
}

fn node(redis: &Redis, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--bus", url.as_str(), "--no-deflate"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Three nodes on one Redis, three publishers (one per node) sending 1,000 messages in all,
/// members of the room on every node (hub clients and raw members): every member receives the
/// same sequence, with contiguous offsets, each publisher's messages in its own order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_one_order_to_every_member() {
    let redis = Redis::start(false);
    let nodes: Vec<Server> = (0..3).map(|_| node(&redis, &[])).collect();
    // Watches the joins: a member is in the room (its node subscribed) once its join is seen.
    let mut watcher = HubClient::connect(&nodes[0]).await;
    watcher.subscribe(json!({"type": "subscribe", "room": "r", "presence": true})).await;
    assert_eq!(watcher.next_of("join").await["member"]["id"], watcher.id.as_str());
    let mut subscribers = Vec::new();
    let mut raws = Vec::new();
    for n in &nodes {
        for _ in 0..2 {
            let mut c = HubClient::connect(n).await;
            c.subscribe(json!({"type": "subscribe", "room": "r"})).await;
            subscribers.push(c);
        }
        raws.push(raw(n, "r").await);
    }
    for _ in 0..9 {
        watcher.next_of("join").await;
    }
    let counts = [334, 333, 333];
    let mut publishers = Vec::new();
    for (p, n) in nodes.iter().enumerate() {
        let mut c = HubClient::connect(n).await;
        let count = counts[p];
        publishers.push(tokio::spawn(async move {
            for i in 0..count {
                c.send(json!({"type": "publish", "room": "r", "text": format!("p{p}-{i}"), "id": i})).await;
            }
            let mut acked = 0;
            while acked < count {
                let v = c.next().await;
                if v["type"] == "published" {
                    acked += 1;
                } else {
                    panic!("publisher {p}: {v}");
                }
            }
            c
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let mut sequences = Vec::new();
    for c in &mut subscribers {
        let mut seq = Vec::new();
        let mut offsets = Vec::new();
        while seq.len() < 1000 {
            let v = c.next_of("message").await;
            offsets.push(v["offset"].as_u64().unwrap());
            seq.push(v["text"].as_str().unwrap().to_owned());
        }
        assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "offsets not contiguous: {offsets:?}");
        sequences.push(seq);
    }
    for ws in &mut raws {
        let mut seq = Vec::new();
        while seq.len() < 1000 {
            match tokio::time::timeout(WAIT, ws.recv()).await {
                Ok(Some(Ok(Message::Text(t)))) => seq.push(t.as_str().to_owned()),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                other => panic!("raw member: {other:?}"),
            }
        }
        sequences.push(seq);
    }
    let first = &sequences[0];
    for (i, s) in sequences.iter().enumerate() {
        assert_eq!(s, first, "member {i} saw another order");
    }
    for (p, &count) in counts.iter().enumerate() {
        let mine: Vec<usize> =
            first.iter().filter_map(|t| t.strip_prefix(&format!("p{p}-"))).map(|n| n.parse().unwrap()).collect();
        assert_eq!(mine, (0..count).collect::<Vec<_>>(), "publisher {p}'s messages out of its order");
    }
}

/// What a member of the broker-restart tests saw.
#[derive(Debug, Default)]
struct Seen {
    /// (offset, text) of every message, in arrival order.
    messages: Vec<(u64, String)>,
    interrupted: usize,
    resumed: Vec<Value>,
}

/// Publishes one message every 5 ms from node A while Redis is killed and restarted, until
/// 100 messages were acknowledged after the restart. Returns what was acknowledged (offset,
/// text, epoch) and how many publishes failed.
async fn publish_through_a_restart(
    publisher: &mut HubClient,
    redis: &mut Redis,
) -> (Vec<(u64, String, String)>, usize) {
    let mut acked = Vec::new();
    let mut failed = 0;
    let mut after_restart = 0;
    let mut i = 0;
    let mut restarted = false;
    let started = Instant::now();
    while after_restart < 100 {
        assert!(started.elapsed() < Duration::from_secs(60), "publishing did not resume after the restart");
        let text = format!("m{i}");
        publisher.send(json!({"type": "publish", "room": "r", "text": &text})).await;
        let answer = publisher.next().await;
        match answer["type"].as_str() {
            Some("published") => {
                acked.push((answer["offset"].as_u64().unwrap(), text, answer["epoch"].as_str().unwrap().to_owned()));
                if restarted {
                    after_restart += 1;
                }
            }
            Some("error") => {
                assert_eq!(answer["code"], "broker_unavailable", "{answer}");
                failed += 1;
            }
            _ => panic!("unexpected answer {answer}"),
        }
        i += 1;
        if i == 150 {
            redis.kill();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        if i == 160 {
            redis.restart();
            restarted = true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (acked, failed)
}

/// Collects a hub member's messages and events until it has seen `last` (offset, epoch).
async fn collect_until(c: &mut HubClient, last: &(u64, String, String)) -> Seen {
    let mut seen = Seen::default();
    loop {
        let v = c.next().await;
        match v["type"].as_str() {
            Some("message") => {
                let offset = v["offset"].as_u64().unwrap();
                seen.messages.push((offset, v["text"].as_str().unwrap().to_owned()));
                if offset == last.0 && v["epoch"] == last.2 {
                    return seen;
                }
            }
            Some("interrupted") => seen.interrupted += 1,
            Some("resumed") => seen.resumed.push(v),
            _ => panic!("unexpected {v}"),
        }
    }
}

/// Redis killed (SIGKILL) in the middle of traffic and started again with its append-only
/// file: the nodes resubscribe by themselves; publishing fails while it is away (the client
/// is told); the hub member on the other node is told of the outage and then gets exactly the
/// acknowledged messages (none lost, none twice, in order); the raw member keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_with_persistence_loses_nothing() {
    let mut redis = Redis::start(true);
    let (a, b) = (node(&redis, &["--bus-durable"]), node(&redis, &["--bus-durable"]));
    let mut member = HubClient::connect(&b).await;
    member.subscribe(json!({"type": "subscribe", "room": "r"})).await;
    let mut raw_member = raw_in_room(&b, "r").await;
    let mut publisher = HubClient::connect(&a).await;
    let (acked, failed) = publish_through_a_restart(&mut publisher, &mut redis).await;
    assert!(failed > 0, "no publish failed while Redis was away");
    assert!(acked.iter().all(|(_, _, e)| *e == acked[0].2), "the epoch changed although Redis kept its data");

    let seen = collect_until(&mut member, acked.last().unwrap()).await;
    let want: Vec<(u64, String)> = acked.iter().map(|(o, t, _)| (*o, t.clone())).collect();
    assert_eq!(seen.messages, want, "the hub member did not get exactly the acknowledged messages");
    assert!(seen.interrupted >= 1, "the member was not told of the outage");
    assert!(!seen.resumed.is_empty() && seen.resumed.iter().all(|r| r["recovered"] == true), "{:?}", seen.resumed);

    let mut raw_seen = Vec::new();
    while raw_seen.len() < want.len() {
        match tokio::time::timeout(WAIT, raw_member.recv()).await {
            Ok(Some(Ok(Message::Text(t)))) => raw_seen.push(t.as_str().to_owned()),
            // The server's keepalive, when the run took longer than its 30 s ping interval.
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            other => panic!(
                "raw member after {} of {} messages, missing {:?}: {other:?}",
                raw_seen.len(),
                want.len(),
                want.iter().filter(|(_, t)| !raw_seen.contains(t)).collect::<Vec<_>>()
            ),
        }
    }
    assert_eq!(raw_seen, want.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>());
}

/// The same without persistence: the room's history is gone with Redis. The hub member is told
/// `recovered: false` and then gets the new epoch's messages; the raw member, which cannot be
/// told, is closed with 1012 so that its client reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_without_persistence_says_what_was_lost() {
    let mut redis = Redis::start(false);
    let (a, b) = (node(&redis, &[]), node(&redis, &[]));
    let mut member = HubClient::connect(&b).await;
    member.subscribe(json!({"type": "subscribe", "room": "r"})).await;
    let mut raw_member = raw(&b, "r").await;
    let mut publisher = HubClient::connect(&a).await;
    let (acked, _) = publish_through_a_restart(&mut publisher, &mut redis).await;
    let (old, new) = (&acked[0].2, &acked.last().unwrap().2);
    assert_ne!(old, new, "the epoch must change when Redis lost the room");

    let seen = collect_until(&mut member, acked.last().unwrap()).await;
    assert!(seen.resumed.iter().any(|r| r["recovered"] == false && r["epoch"] == *new), "{:?}", seen.resumed);
    // Every message of the new epoch arrived, in order, after the `resumed`.
    let new_epoch: Vec<(u64, String)> =
        acked.iter().filter(|(_, _, e)| e == new).map(|(o, t, _)| (*o, t.clone())).collect();
    assert!(seen.messages.ends_with(&new_epoch), "new epoch's messages missing: {:?}", seen.messages);

    let end = Instant::now() + WAIT;
    let frame = loop {
        match tokio::time::timeout(WAIT, raw_member.recv()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.expect("a close frame"),
            Ok(Some(Ok(_))) => assert!(Instant::now() < end, "the raw member was not closed"),
            other => panic!("raw member: {other:?}"),
        }
    };
    assert_eq!(frame.code, CloseCode::SERVICE_RESTART, "{frame:?}");
    assert!(frame.reason.as_str().starts_with("messages lost"), "{frame:?}");
}

/// A node dies (SIGKILL): the members of the other node keep going, and presence drops the
/// dead node's members within the TTL (2 s here) plus one refresh period, with a `leave`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_members_leave_presence_within_the_ttl() {
    let redis = Redis::start(false);
    let a = node(&redis, &["--presence-ttl", "2"]);
    let mut b = node(&redis, &["--presence-ttl", "2"]);
    let mut x = HubClient::connect(&a).await;
    x.subscribe(json!({"type": "subscribe", "room": "r", "name": "x", "presence": true})).await;
    let mut y = HubClient::connect(&b).await;
    y.subscribe(json!({"type": "subscribe", "room": "r", "name": "y"})).await;
    let join = x.next_of("join").await;
    let join = if join["member"]["name"] == "x" { x.next_of("join").await } else { join };
    assert_eq!(join["member"], json!({"id": y.id, "name": "y"}));
    x.send(json!({"type": "presence", "room": "r", "id": 1})).await;
    let p = x.next_of("presence").await;
    assert_eq!(p["members"].as_array().unwrap().len(), 2, "{p}");

    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let killed = Instant::now();
    let leave = x.next_of("leave").await;
    let took = killed.elapsed();
    assert_eq!(leave["member"]["id"], y.id.as_str());
    assert!(took < Duration::from_millis(3500), "the dead member left presence after {took:?}");
    x.send(json!({"type": "presence", "room": "r"})).await;
    let p = x.next_of("presence").await;
    assert_eq!(p["members"], json!([{"id": x.id, "name": "x"}]));
    // The surviving node goes on.
    x.send(json!({"type": "publish", "room": "r", "text": "still here"})).await;
    let m = x.next_of("message").await;
    assert_eq!(m["text"], "still here");
}

/// A member that stops reading is closed with 1008 while another member on the same node gets
/// every message; the node's memory stays bounded by the queue limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_member_is_closed_and_memory_stays_bounded() {
    let redis = Redis::start(false);
    let a = node(&redis, &[]);
    let b = node(&redis, &["--room-queue-bytes", "1048576"]);
    let rss = |s: &Server| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", s.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    };
    let mut slow = raw(&b, "busy").await;
    let mut fast = HubClient::connect(&b).await;
    fast.subscribe(json!({"type": "subscribe", "room": "busy"})).await;
    let before = rss(&b);
    let mut publisher = HubClient::connect(&a).await;
    let payload = "x".repeat(60_000);
    let total = 400; // 24 MB through the room
    let mut got = 0;
    for i in 0..total {
        publisher.send(json!({"type": "publish", "room": "busy", "text": &payload})).await;
        assert_eq!(publisher.next().await["type"], "published", "publish {i}");
        // The fast member keeps up.
        let m = fast.next_of("message").await;
        assert_eq!(m["text"].as_str().map(str::len), Some(payload.len()));
        got += 1;
    }
    assert_eq!(got, total);
    let grown = rss(&b).saturating_sub(before);
    assert!(grown < 16 << 20, "node B grew by {grown} bytes while one member did not read");
    // The slow member was closed with 1008 (after what its socket buffers held).
    let frame = loop {
        match tokio::time::timeout(WAIT, slow.recv()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame.expect("a close frame"),
            Ok(Some(Ok(_))) => {}
            other => panic!("slow member: {other:?}"),
        }
    };
    assert_eq!(frame.code, CloseCode::POLICY_VIOLATION);
    assert!(frame.reason.as_str().starts_with("too slow"), "{frame:?}");
    b.expect_log(&["closed", "path=\"/room/busy\"", "code=1008"]);
    // The node counts the members it cut off.
    b.signal("TERM");
    b.expect_log(&["shutting down", "too_slow=1"]);
}

/// The subprotocol on one node (in-process engine): recovery after a reconnect, a gap the
/// history no longer covers, presence, and the errors.
#[tokio::test]
async fn hub_protocol_recovers_and_reports() {
    let server = Server::start(&["--room-history", "5", "--no-deflate"]);
    let mut a = HubClient::connect(&server).await;
    let sub = a.subscribe(json!({"type": "subscribe", "room": "r", "id": "s1"})).await;
    assert_eq!((sub["id"].clone(), sub["offset"].clone()), (json!("s1"), json!(0)));
    let epoch = sub["epoch"].as_str().unwrap().to_owned();
    let mut pub_ = HubClient::connect(&server).await;
    for i in 1..=3 {
        pub_.send(json!({"type": "publish", "room": "r", "data": {"n": i}})).await;
        assert_eq!(pub_.next().await["offset"], i);
        let m = a.next_of("message").await;
        assert_eq!((m["offset"].clone(), m["data"].clone()), (json!(i), json!({"n": i})));
    }
    drop(a);
    // Two more while it is away; it comes back with its last position.
    for i in 4..=5 {
        pub_.send(json!({"type": "publish", "room": "r", "text": format!("t{i}")})).await;
        assert_eq!(pub_.next().await["type"], "published");
    }
    let mut a = HubClient::connect(&server).await;
    let sub = a.subscribe(json!({"type": "subscribe", "room": "r", "since": {"offset": 3, "epoch": &epoch}})).await;
    assert_eq!(
        (sub["recovered"].clone(), sub["missed"].clone(), sub["offset"].clone()),
        (json!(true), json!(2), json!(5))
    );
    for i in 4..=5 {
        let m = a.next_of("message").await;
        assert_eq!((m["offset"].clone(), m["text"].clone()), (json!(i), json!(format!("t{i}"))));
    }
    // Then live messages, none twice.
    pub_.send(json!({"type": "publish", "room": "r", "binary": "AAE="})).await;
    let m = a.next_of("message").await;
    assert_eq!((m["offset"].clone(), m["binary"].clone()), (json!(6), json!("AAE=")));

    // The history keeps 5: from offset 0 the gap is too wide, and no partial catch-up is given.
    let mut late = HubClient::connect(&server).await;
    let sub = late.subscribe(json!({"type": "subscribe", "room": "r", "since": {"offset": 0, "epoch": &epoch}})).await;
    assert_eq!((sub["recovered"].clone(), sub["missed"].clone()), (json!(false), json!(0)));
    // A wrong epoch is not recovered either.
    let mut other = HubClient::connect(&server).await;
    let sub = other.subscribe(json!({"type": "subscribe", "room": "r", "since": {"offset": 5, "epoch": "nope"}})).await;
    assert_eq!(sub["recovered"], false);

    // A newcomer may ask for the latest messages instead: at most what the history holds.
    let mut newcomer = HubClient::connect(&server).await;
    let sub = newcomer.subscribe(json!({"type": "subscribe", "room": "r", "history": 2})).await;
    assert_eq!((sub["history"].clone(), sub["offset"].clone()), (json!(2), json!(6)));
    assert_eq!(newcomer.next_of("message").await["offset"], 5);
    assert_eq!(newcomer.next_of("message").await["offset"], 6);
    let mut greedy = HubClient::connect(&server).await;
    let sub = greedy.subscribe(json!({"type": "subscribe", "room": "r", "history": 50})).await;
    assert_eq!(sub["history"], 5, "the history keeps 5");

    // Presence with names and events.
    let mut p = HubClient::connect(&server).await;
    p.subscribe(json!({"type": "subscribe", "room": "q", "name": "pat", "presence": true})).await;
    assert_eq!(p.next_of("join").await["member"]["name"], "pat");
    late.subscribe(json!({"type": "subscribe", "room": "q", "name": "lee"})).await;
    assert_eq!(p.next_of("join").await["member"], json!({"id": late.id, "name": "lee"}));
    late.send(json!({"type": "unsubscribe", "room": "q", "id": 9})).await;
    assert_eq!(late.next().await, json!({"type": "unsubscribed", "room": "q", "id": 9}));
    assert_eq!(p.next_of("leave").await["member"]["id"], late.id.as_str());

    // Errors: each with its code, the request's id, and the connection stays open.
    let cases: Vec<(Value, &str)> = vec![
        (json!({"type": "subscribe", "room": "r", "id": 1}), "already_subscribed"),
        (json!({"type": "unsubscribe", "room": "zz", "id": 2}), "not_subscribed"),
        (json!({"type": "presence", "room": "zz", "id": 3}), "not_subscribed"),
        (json!({"type": "subscribe", "room": "", "id": 4}), "bad_room"),
        (json!({"type": "subscribe", "room": "a/b", "id": 5}), "bad_room"),
        (json!({"type": "publish", "room": "r", "id": 6}), "bad_request"),
        (json!({"type": "publish", "room": "r", "binary": "***", "id": 7}), "bad_request"),
        (json!({"type": "jump", "id": 8}), "bad_request"),
    ];
    for (request, code) in cases {
        let id = request["id"].clone();
        a.send(request).await;
        let e = a.next_of("error").await;
        assert_eq!((e["code"].as_str(), e["id"].clone()), (Some(code), id), "{e}");
    }
    a.ws.send_text("{not json").await.unwrap();
    assert_eq!(a.next_of("error").await["code"], "bad_request");
    a.ws.send_binary(vec![1u8, 2]).await.unwrap();
    assert_eq!(a.next_of("error").await["code"], "bad_request");
    let mut rooms = 1;
    let code = loop {
        a.send(json!({"type": "subscribe", "room": format!("x{rooms}")})).await;
        let v = a.next().await;
        if v["type"] == "error" {
            break v["code"].clone();
        }
        rooms += 1;
        assert!(rooms < 1000);
    };
    assert_eq!((code, rooms), (json!("too_many_rooms"), 64));
    a.send(json!({"type": "publish", "room": "r", "text": "still open"})).await;
    assert_eq!(a.next_of("published").await["offset"], 7);
}

/// `wsx bench pubsub --node` spreads the subscribers over two nodes sharing the room through
/// Redis: every delivery arrives, and `--server-pid` takes both nodes' process ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_pubsub_across_two_nodes() {
    let redis = Redis::start(false);
    let (a, b) = (node(&redis, &[]), node(&redis, &[]));
    let pids = format!("{},{}", a.child.id(), b.child.id());
    let node_b = b.url("/room/spread");
    let args = [
        "--node",
        &node_b,
        "--subscribers",
        "6",
        "--rate",
        "200",
        "--duration",
        "1",
        "--warmup",
        "0.3",
        "--server-pid",
        &pids,
    ];
    let (out, j) = tokio::task::block_in_place(|| common::bench_json("pubsub", &a.url("/room/spread"), &args));
    assert!(out.status.success(), "{}\n{j}", String::from_utf8_lossy(&out.stderr));
    assert_eq!((j["nodes"].clone(), j["connected"].clone()), (json!(2), json!(7)), "{j}");
    assert_eq!((j["deliveries"].clone(), j["error_count"].clone()), (json!(1200), json!(0)), "{j}");
    assert!(j["server"]["cpu_s"].as_f64().unwrap() > 0.0, "{j}");
    // Both nodes had subscribers.
    for n in [&a, &b] {
        n.expect_log(&["open", "/room/spread"]);
    }
    let on_b = b.log.lock().unwrap().iter().filter(|l| l.contains("open") && l.contains("/room/spread")).count();
    assert_eq!(on_b, 3, "the 6 subscribers are spread evenly");
}

/// A TCP relay to Redis whose answers on chosen connections can be silently dropped: a
/// connection that looks alive but delivers nothing.
struct Blackhole {
    port: u16,
    /// Connections accepted so far.
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Numbers (from 0) of the connections whose Redis-to-client bytes are dropped.
    silenced: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<usize>>>,
}

impl Blackhole {
    async fn start(redis_port: u16) -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let silenced = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        let (acc, sil) = (accepted.clone(), silenced.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let n = acc.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await else { continue };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                let sil = sil.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16384];
                    while let Ok(k) = sr.read(&mut buf).await {
                        if k == 0 {
                            break;
                        }
                        if !sil.lock().unwrap().contains(&n) && cw.write_all(&buf[..k]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self { port, accepted, silenced }
    }
}

/// A node's subscription that stays connected but stops delivering (its Redis connection goes
/// silent) is caught by the probe within a few seconds: the node opens a new one, and the
/// member gets the messages published meanwhile from the history, then live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_subscription_is_replaced_and_nothing_is_lost() {
    use std::sync::atomic::Ordering;
    let redis = Redis::start(false);
    let relay = Blackhole::start(redis.port).await;
    let via_relay = format!("redis://127.0.0.1:{}/", relay.port);
    let a = Server::start(&["--bus", &via_relay, "--no-deflate"]);
    // The node's first check, its command connection, then its subscription: the last one.
    let subscription = relay.accepted.load(Ordering::SeqCst) - 1;
    assert_eq!(subscription, 2, "expected three connections from the node");
    let b = node(&redis, &[]);
    let mut member = HubClient::connect(&a).await;
    member.subscribe(json!({"type": "subscribe", "room": "r"})).await;
    let mut publisher = HubClient::connect(&b).await;
    let mut publish = async |text: &str| {
        publisher.send(json!({"type": "publish", "room": "r", "text": text})).await;
        let answer = publisher.next_of("published").await;
        answer["offset"].as_u64().unwrap()
    };
    publish("before").await;
    assert_eq!(member.next_of("message").await["text"], "before");

    relay.silenced.lock().unwrap().insert(subscription);
    let silenced_at = Instant::now();
    for i in 0..10 {
        publish(&format!("during {i}")).await;
    }
    let mut texts = Vec::new();
    let mut events = Vec::new();
    while texts.len() < 10 {
        let v = member.next().await;
        match v["type"].as_str() {
            Some("message") => texts.push(v["text"].as_str().unwrap().to_owned()),
            Some(other) => events.push((other.to_owned(), v["recovered"].clone())),
            None => panic!("{v}"),
        }
    }
    let took = silenced_at.elapsed();
    assert_eq!(texts, (0..10).map(|i| format!("during {i}")).collect::<Vec<_>>());
    assert!(took < Duration::from_secs(8), "the silent subscription was replaced after {took:?}");
    assert!(relay.accepted.load(Ordering::SeqCst) > subscription + 1, "no new subscription connection");
    assert_eq!(events.first().map(|e| e.0.as_str()), Some("interrupted"), "{events:?}");
    let resumed = loop {
        let v = member.next().await;
        if v["type"] == "resumed" {
            break v;
        }
    };
    assert_eq!(resumed["recovered"], true, "{resumed}");
    publish("after").await;
    assert_eq!(member.next_of("message").await["text"], "after");
}

/// `--bus` that cannot work stops the server at once with a message naming the problem.
#[test]
fn a_bus_that_cannot_be_reached_is_a_clear_startup_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    for (url, says) in
        [(format!("redis://127.0.0.1:{port}/"), "cannot connect"), ("http://example.com/".to_owned(), "bad Redis URL")]
    {
        let started = Instant::now();
        let out = std::process::Command::new(common::WSX)
            .args(["serve", "--addr", "127.0.0.1:0", "--bus", &url])
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("--bus") && stderr.contains(says), "{stderr}");
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    }
}
