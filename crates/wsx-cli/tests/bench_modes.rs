//! `wsx bench connect` and `wsx bench pubsub` against `wsx serve` and against test servers that
//! misbehave on purpose: a room that loses, duplicates or reorders messages, a server that
//! drops idle connections. Short runs at low rates.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bench_json as bench, Server, WSX};
use wsx::{CloseCode, Message};

fn num(j: &serde_json::Value, path: &[&str]) -> f64 {
    let mut v = j;
    for key in path {
        v = &v[*key];
    }
    v.as_f64().unwrap_or_else(|| panic!("{} in {j}", path.join(".")))
}

/// What the test room does to the messages its members send.
#[derive(Clone, Copy)]
enum Room {
    /// Drops message 50 of every 100.
    Lossy,
    /// Publishes message 10 of every 100 twice.
    Duplicating,
    /// Closes every connection with 1001 after 300 ms.
    Kicking,
    /// Each member gets nothing of the first 5 messages sent to it (it joined late).
    LateJoin,
}

/// A one-room server on its own thread: what a member sends goes to every member (sender
/// too), after `room` has had its way with it.
fn test_room(room: Room) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let (bus, _) = tokio::sync::broadcast::channel::<Message>(1 << 16);
            let count = Arc::new(AtomicU64::new(0));
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (bus, count) = (bus.clone(), count.clone());
                tokio::spawn(async move {
                    let Ok(mut ws) = wsx::accept(tcp).await else { return };
                    let mut inbox = bus.subscribe();
                    let mut late = if matches!(room, Room::LateJoin) { 5 } else { 0 };
                    let kick = tokio::time::sleep(Duration::from_millis(300));
                    tokio::pin!(kick);
                    loop {
                        tokio::select! {
                            msg = ws.recv() => match msg {
                                Some(Ok(msg)) if msg.is_data() => {
                                    let n = count.fetch_add(1, Ordering::Relaxed) % 100;
                                    match (room, n) {
                                        (Room::Lossy, 50) => {}
                                        (Room::Duplicating, 10) => {
                                            let _ = bus.send(msg.clone());
                                            let _ = bus.send(msg);
                                        }
                                        _ => {
                                            let _ = bus.send(msg);
                                        }
                                    }
                                }
                                Some(Ok(_)) => {}
                                _ => return,
                            },
                            Ok(msg) = inbox.recv() => {
                                if late > 0 {
                                    late -= 1;
                                    continue;
                                }
                                if ws.send(msg).await.is_err() {
                                    return;
                                }
                            }
                            () = &mut kick, if matches!(room, Room::Kicking) => {
                                let _ = ws.close(CloseCode::GOING_AWAY, "bye").await;
                                return;
                            }
                        }
                    }
                });
            }
        });
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("test room started")
}

#[test]
fn connect_times_each_part_of_the_handshake() {
    let server = Server::start(&["--echo"]);
    let (out, j) = bench("connect", &server.url("/"), &["--conns", "4", "--duration", "1", "--warmup", "0.2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(j["mode"], "connect");
    assert_eq!(j["error_count"], 0, "{j}");
    let handshakes = num(&j, &["handshakes"]);
    assert!(handshakes >= 20.0, "{j}");
    assert_eq!(num(&j, &["handshakes_per_s"]), handshakes, "a 1 s window");
    // Each part is timed, and the whole is at least its parts.
    for phase in ["tcp", "upgrade"] {
        assert_eq!(num(&j, &[phase, "count"]), handshakes, "{phase}: {j}");
        assert!(num(&j, &[phase, "p50_ms"]) > 0.0);
    }
    assert!(j["tls"].is_null(), "no TLS on ws://");
    assert!(num(&j, &["latency", "max_ms"]) >= num(&j, &["upgrade", "max_ms"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for word in ["handshakes/s", "tcp", "upgrade", "closed loop"] {
        assert!(stdout.contains(word), "{word} missing:\n{stdout}");
    }
    // Every connection was closed with the closing handshake.
    server.expect_log(&["closed", "code=1000"]);
}

#[test]
fn connect_over_tls_times_full_handshakes_on_a_schedule() {
    let server = Server::start(&["--echo", "--tls-self-signed"]);
    let url = format!("wss://127.0.0.1:{}/", server.addr.port());
    let (out, j) =
        bench("connect", &url, &["--rate", "40", "--duration", "1", "--warmup", "0", "--insecure", "--status"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(j["loop"], "open");
    // Exactly the handshakes scheduled in the window.
    assert_eq!(num(&j, &["handshakes"]), 40.0, "{j}");
    assert_eq!(num(&j, &["tls", "count"]), 40.0, "{j}");
    assert!(num(&j, &["tls", "p50_ms"]) > 0.0);
    assert!(j["lag"]["max_ms"].is_number());
    assert!(String::from_utf8_lossy(&out.stdout).contains("full TLS handshakes"));
    // Without --insecure, the self-signed certificate is refused, and counted as such.
    let (out, j) = bench("connect", &url, &["--conns", "1", "--duration", "0.3", "--warmup", "0"]);
    assert!(num(&j, &["errors", "tls"]) >= 1.0, "{j}");
    assert_eq!(j["handshakes"], 0);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn connect_against_a_closed_port_fails_fast_and_says_why() {
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let started = Instant::now();
    let (out, j) =
        bench("connect", &format!("ws://{refused}/"), &["--conns", "2", "--duration", "0.5", "--warmup", "0"]);
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    assert!(num(&j, &["errors", "connect refused"]) >= 2.0, "{j}");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no connection could be opened"));
}

#[test]
fn ramp_holds_connections_and_reports_server_memory() {
    let server = Server::start(&["--echo"]);
    let pid = server.child.id().to_string();
    let (out, j) =
        bench("connect", &server.url("/"), &["--ramp", "300", "--rate", "1000", "--hold", "0.5", "--server-pid", &pid]);
    assert!(out.status.success(), "{}\n{j}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(j["handshakes"], 300, "{j}");
    assert_eq!(j["held"], 300, "{j}");
    // Paced at 1000/s: the ramp takes about 0.3 s, not less.
    assert!(num(&j, &["ramp_s"]) >= 0.25, "{j}");
    assert_eq!(j["server"]["ramp_conns"], 300, "{j}");
    let per_conn = num(&j, &["server", "bytes_per_conn"]);
    // Some memory per connection, and not absurdly much (the server's buffers are bounded).
    assert!(per_conn > 0.0 && per_conn < 256.0 * 1024.0, "{per_conn} bytes per connection: {j}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("per connection"));
}

#[test]
fn ramp_counts_connections_the_server_drops_while_held() {
    let addr = test_room(Room::Kicking);
    let (out, j) = bench("connect", &format!("ws://{addr}/"), &["--ramp", "20", "--hold", "1"]);
    assert_eq!(num(&j, &["errors", "close 1001 while held"]), 20.0, "{j}");
    assert_eq!(num(&j, &["held"]), 0.0, "{j}");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn pubsub_delivers_every_message_to_every_subscriber() {
    let server = Server::start(&[]);
    let (out, j) = bench(
        "pubsub",
        &server.url("/room/bench"),
        &[
            "--rooms",
            "2",
            "--publishers",
            "2",
            "--subscribers",
            "5",
            "--rate",
            "200",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--threads",
            "2",
        ],
    );
    assert!(out.status.success(), "{}\n{j}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(j["connected"], 14, "{j}");
    // Exactly the messages scheduled in the window were published, and each reached the 5
    // subscribers of its room.
    assert_eq!(j["published"], 200, "{j}");
    assert_eq!(j["deliveries_expected"], 1000, "{j}");
    assert_eq!(j["deliveries"], 1000, "{j}");
    assert_eq!(j["error_count"], 0, "{j}");
    assert!(num(&j, &["latency", "p50_ms"]) > 0.0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("deliveries/s") && stdout.contains("1000 deliveries expected, 1000 made"), "{stdout}");
    // Both rooms were used.
    server.expect_log(&["/room/bench-0"]);
    server.expect_log(&["/room/bench-1"]);
}

/// The same over the hub subprotocol: subscribers are in the room before the run starts, and
/// every `message` event's payload is checked (text payloads, so they travel as JSON strings).
#[test]
fn pubsub_over_the_hub_subprotocol() {
    let server = Server::start(&[]);
    let args = [
        "--hub",
        "--room",
        "bench",
        "--rooms",
        "2",
        "--publishers",
        "2",
        "--subscribers",
        "5",
        "--rate",
        "200",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--text",
    ];
    let (out, j) = bench("pubsub", &server.url("/hub"), &args);
    assert!(out.status.success(), "{}\n{j}", String::from_utf8_lossy(&out.stderr));
    assert_eq!((j["connected"].clone(), j["published"].clone()), (14.into(), 200.into()), "{j}");
    assert_eq!((j["deliveries"].clone(), j["error_count"].clone()), (1000.into(), 0.into()), "{j}");
    // Binary payloads travel in base64.
    let (out, j) = bench("pubsub", &server.url("/hub"), &args[..args.len() - 1]);
    assert!(out.status.success(), "{}\n{j}", String::from_utf8_lossy(&out.stderr));
    assert_eq!((j["deliveries"].clone(), j["error_count"].clone()), (1000.into(), 0.into()), "{j}");
    // A URL that is not a hub endpoint is a connect error of its own kind.
    let (_, j) = bench("pubsub", &server.url("/echo"), &args);
    assert_eq!(j["connected"], 0, "{j}");
    assert!(j["errors"].as_object().unwrap().keys().any(|k| k.contains("subprotocol not selected")), "{j}");
}

#[test]
fn pubsub_counts_lost_messages() {
    let addr = test_room(Room::Lossy);
    let (out, j) = bench(
        "pubsub",
        &format!("ws://{addr}/room"),
        &["--subscribers", "3", "--rate", "400", "--duration", "1", "--warmup", "0", "--timeout", "1"],
    );
    // The room drops 1 message in 100 (4 of 400), for all 3 subscribers.
    assert_eq!(num(&j, &["errors", "lost"]), 12.0, "{j}");
    assert_eq!(num(&j, &["deliveries"]), 3.0 * 396.0, "{j}");
    assert_eq!(out.status.code(), Some(1));
}

/// A raw room does not say when a member joined: the messages it missed before its first
/// one, during the warm-up, are not losses; with no warm-up they are.
#[test]
fn pubsub_starts_a_late_subscriber_from_its_first_message_in_the_warmup() {
    let addr = test_room(Room::LateJoin);
    let args = ["--subscribers", "3", "--rate", "400", "--duration", "1", "--timeout", "1"];
    let (out, j) = bench("pubsub", &format!("ws://{addr}/room"), &[&args[..], &["--warmup", "0.3"]].concat());
    assert!(out.status.success(), "{j}");
    assert_eq!(j["error_count"], 0, "{j}");
    let (_, j) = bench("pubsub", &format!("ws://{addr}/room"), &[&args[..], &["--warmup", "0"]].concat());
    assert_eq!(num(&j, &["errors", "lost"]), 15.0, "5 for each of the 3 subscribers: {j}");
}

#[test]
fn pubsub_counts_duplicates() {
    let addr = test_room(Room::Duplicating);
    let (out, j) = bench(
        "pubsub",
        &format!("ws://{addr}/room"),
        &["--subscribers", "2", "--rate", "300", "--duration", "1", "--warmup", "0", "--timeout", "1"],
    );
    assert_eq!(num(&j, &["errors", "duplicate or out of order"]), 6.0, "{j}");
    assert!(j["errors"]["lost"].is_null(), "{j}");
    assert_eq!(num(&j, &["deliveries"]), 600.0, "{j}");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn connect_rate_opens_connections_gradually() {
    let server = Server::start(&["--echo"]);
    let started = Instant::now();
    let (out, j) = bench(
        "echo",
        &server.url("/"),
        &["--conns", "10", "--connect-rate", "20", "--depth", "1", "--duration", "0.3", "--warmup", "0"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(j["connected"], 10);
    // The tenth connection opens 0.45 s after the first; the clock starts after that.
    assert!(started.elapsed() >= Duration::from_millis(750), "took {:?}", started.elapsed());
}

#[test]
fn help_lists_every_mode() {
    let out = Command::new(WSX).args(["bench", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["echo", "connect", "pubsub", "--ramp", "--server-pid", "coordinated omission"] {
        assert!(help.contains(word), "{word} missing:\n{help}");
    }
    let bad = Command::new(WSX).args(["bench", "connect", "--hold", "1", "ws://127.0.0.1:1/"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--hold goes with --ramp"));
}

/// A TCP byte echo on a loopback port, each connection served by a thread of its own; with
/// `flip`, the byte at that position of each connection's stream goes back with its lowest bit
/// flipped.
fn byte_echo(flip: Option<usize>) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            std::thread::spawn(move || {
                use std::io::{Read as _, Write as _};
                let (mut reader, mut writer) = (tcp.try_clone().unwrap(), tcp);
                let mut buf = vec![0u8; 64 * 1024];
                let mut at = 0usize;
                while let Ok(n @ 1..) = reader.read(&mut buf) {
                    if let Some(flip) = flip.filter(|f| (at..at + n).contains(f)) {
                        buf[flip - at] ^= 0x01;
                    }
                    at += n;
                    if writer.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn raw_drives_a_plain_byte_echo() {
    // The ceiling of scripts/bench-servers: a TCP byte echo, no WebSocket code at all.
    let addr = byte_echo(None);
    for size in ["20", "70000"] {
        let (out, j) = bench(
            "echo",
            &format!("ws://{addr}/"),
            &["--raw", "--conns", "2", "--depth", "4", "--size", size, "--duration", "0.5", "--warmup", "0"],
        );
        assert!(out.status.success(), "{}\n{j}", String::from_utf8_lossy(&out.stderr));
        assert!(num(&j, &["messages"]) > 10.0, "{j}");
        assert_eq!(j["error_count"], 0, "{j}");
    }
    // Without --raw, the byte echo cannot answer the handshake.
    let (out, _) = bench("echo", &format!("ws://{addr}/"), &["--conns", "1", "--duration", "0.3", "--timeout", "1"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn raw_counts_an_echo_a_byte_echo_changed() {
    // Byte 5,000 of each connection's stream: with 1 KiB messages (8-byte headers, 1,032-byte
    // frames) that is in the fifth message's filler, which the generator checks still masked.
    let addr = byte_echo(Some(5000));
    let (out, j) = bench(
        "echo",
        &format!("ws://{addr}/"),
        &["--raw", "--conns", "2", "--depth", "4", "--size", "1024", "--duration", "0.5", "--warmup", "0"],
    );
    assert_eq!(out.status.code(), Some(1), "{}\n{j}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(j["errors"]["echo mismatch"], 2, "one per connection: {j}");
    assert!(num(&j, &["messages"]) > 10.0, "the rest still echoed: {j}");
}

#[test]
fn connect_against_a_server_that_never_answers_is_bounded_by_the_timeout() {
    // Accepts TCP connections and holds them, reading nothing and answering nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for tcp in listener.incoming().flatten() {
            held.push(tcp);
        }
    });
    let started = Instant::now();
    let (out, j) = bench(
        "connect",
        &format!("ws://{addr}/"),
        &["--conns", "2", "--duration", "0.5", "--warmup", "0", "--timeout", "1"],
    );
    // Each in-flight handshake gives up at --timeout; the run ends soon after its window.
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    assert_eq!(num(&j, &["errors", "connect timeout"]), 2.0, "{j}");
    assert_eq!(j["handshakes"], 0);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn pubsub_counts_members_the_room_drops() {
    let addr = test_room(Room::Kicking);
    let started = Instant::now();
    let (out, j) = bench(
        "pubsub",
        &format!("ws://{addr}/room"),
        &["--subscribers", "3", "--rate", "100", "--duration", "1", "--warmup", "0", "--timeout", "1"],
    );
    assert!(started.elapsed() < Duration::from_secs(12), "took {:?}", started.elapsed());
    // All four members were closed with 1001 after 300 ms; what was published after that
    // never reached the subscribers.
    assert_eq!(num(&j, &["errors", "close 1001"]), 4.0, "{j}");
    assert!(num(&j, &["deliveries"]) < num(&j, &["deliveries_expected"]), "{j}");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn echo_counts_messages_it_never_sent_without_losing_count_of_its_own() {
    // A server that greets each client with two messages of its own, then echoes.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                tokio::spawn(async move {
                    let Ok(mut ws) = wsx::accept(tcp).await else { return };
                    for greeting in ["hello", "welcome"] {
                        if ws.send(Message::text(greeting)).await.is_err() {
                            return;
                        }
                    }
                    while let Some(Ok(msg)) = ws.recv().await {
                        if msg.is_data() && ws.send(msg).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    });
    let addr = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    for shape in [&["--rate", "100"][..], &["--depth", "2"][..]] {
        let args = [shape, &["--conns", "2", "--duration", "0.5", "--warmup", "0", "--timeout", "1"][..]].concat();
        let (out, j) = bench("echo", &format!("ws://{addr}/"), &args);
        // The greetings arrive before anything was sent: unexpected, two per connection. They
        // must not shift the count: every echo after them is in order and counted.
        assert_eq!(num(&j, &["errors", "unexpected message"]), 4.0, "{shape:?}: {j}");
        assert!(j["errors"]["echo out of order"].is_null(), "{shape:?}: {j}");
        assert!(j["errors"]["echo mismatch"].is_null(), "{shape:?}: {j}");
        assert!(num(&j, &["messages"]) > 0.0, "{shape:?}: {j}");
        assert_eq!(out.status.code(), Some(1));
    }
}

/// `bench echo --http2 --streams-per-connection`: 40 WebSockets as streams of two HTTP/2
/// connections to `wsx serve` over TLS (the server's log counts 20 per connection), every echo
/// checked; without the flag, each WebSocket has a connection of its own.
#[test]
fn echo_over_http2_shares_connections() {
    let server = Server::start(&["--tls-self-signed", "--echo"]);
    let url = format!("wss://localhost:{}/", server.addr.port());
    let args = ["-k", "--http2", "--streams-per-connection", "20", "--conns", "40", "--size", "200"];
    let (out, j) = bench("echo", &url, &[&args[..], &["--depth", "2", "--duration", "1", "--warmup", "0.2"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(num(&j, &["messages"]) > 100.0, "{j}");
    assert_eq!(num(&j, &["error_count"]), 0.0, "{j}");
    let per_conn = |log: &[String]| {
        let mut counts = std::collections::BTreeMap::new();
        for line in log.iter().filter(|l| l.contains(" open ") && l.contains("http=\"2\"")) {
            let conn = line.split("conn=").nth(1).and_then(|s| s.split_whitespace().next()).unwrap_or("").to_owned();
            *counts.entry(conn).or_insert(0) += 1;
        }
        counts.into_values().collect::<Vec<usize>>()
    };
    assert_eq!(per_conn(&server.log.lock().unwrap()), [20, 20]);

    let server = Server::start(&["--tls-self-signed", "--echo"]);
    let url = format!("wss://localhost:{}/", server.addr.port());
    let (out, _) =
        bench("echo", &url, &["-k", "--http2", "--conns", "3", "--size", "200", "--duration", "0.5", "--warmup", "0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(per_conn(&server.log.lock().unwrap()), [1, 1, 1]);
}
