//! Faults on a real network path: a client and a server in two network namespaces of their own,
//! joined by a veth pair whose packets are delayed, lost or silently dropped altogether (see
//! `netns/mod.rs`). Unlike loopback tests, a partition here sends no FIN and no RST: only wsx's
//! own timers can tell that the peer is gone.
//!
//! Needs root, iproute2 (`ip`, `tc`) and, for tc's injector, the `sch_netem` kernel module (an
//! in-test relay takes its place on kernels without it). Without root each test prints
//! "skipped: needs root" and passes, except when `CI` is set: then it fails.

mod netns;

use std::time::{Duration, Instant};

use netns::{Dir, Faults, NetPath, Side};
use tokio::net::TcpStream;
use wsx::proto::{Config, TimeoutError};
use wsx::{Accept, ClientBuilder, CloseCode, Error, Message, ServerConfig, WebSocket};

/// Timer granularity under a configured duration.
const EARLY: Duration = Duration::from_millis(20);
/// Scheduling on a busy two-core box over a configured duration.
const SLACK: Duration = Duration::from_secs(1);

fn assert_around(elapsed: Duration, expected: Duration, what: &str) {
    assert!(elapsed + EARLY >= expected, "{what}: after {elapsed:?}, expected at least {expected:?} (fired early)");
    assert!(elapsed <= expected + SLACK, "{what}: after {elapsed:?}, expected about {expected:?} (fired late)");
}

fn timeout_of(e: &Error) -> Option<TimeoutError> {
    match e {
        Error::Proto(wsx::proto::Error::Timeout(t)) => Some(*t),
        _ => None,
    }
}

/// Panics if `fut` takes longer than `d`: every test stops by itself.
async fn within<F: std::future::Future>(d: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(d, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: not done within {d:?}"),
    }
}

/// A client in A connected to a server in B over `path`, with these configurations.
async fn pair(path: &NetPath, client: Config, server: Config) -> (WebSocket<TcpStream>, WebSocket<TcpStream>) {
    let (listener, addr) = path.listen(Side::B);
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        tcp.set_nodelay(true).unwrap();
        let mut config = ServerConfig::default();
        config.websocket.proto = server;
        wsx::accept_with(tcp, &config, |_, _| Ok(Accept::default())).await.expect("server handshake")
    });
    let tcp = path.connect(Side::A, addr).await;
    let (client, _) = ClientBuilder::new(format!("ws://{addr}/netem"))
        .proto_config(client)
        .connect_on(tcp)
        .await
        .expect("client handshake");
    (client, accept.await.unwrap())
}

/// One message each way. Returns, for the client and for the server, an instant just before
/// the other side sent: each last heard from its peer no earlier than that (so timers measured
/// from it can be checked for firing early without slack for the scheduling of this task).
async fn exchange(client: &mut WebSocket<TcpStream>, server: &mut WebSocket<TcpStream>) -> (Instant, Instant) {
    let server_rx = Instant::now();
    client.send_text("ping?").await.unwrap();
    assert_eq!(server.recv().await.unwrap().unwrap(), Message::text("ping?"));
    let client_rx = Instant::now();
    server.send_text("pong!").await.unwrap();
    assert_eq!(client.recv().await.unwrap().unwrap(), Message::text("pong!"));
    (client_rx, server_rx)
}

/// Receives until an error; returns it and when it came (control frames and messages in
/// flight are skipped). The connection must then end at once.
async fn recv_until_error(ws: &mut WebSocket<TcpStream>) -> (Error, Instant) {
    loop {
        match ws.recv().await {
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                let at = Instant::now();
                let rest = within(Duration::from_secs(1), "end after the error", ws.recv()).await;
                assert!(rest.is_none(), "after {e}, got {rest:?}");
                return (e, at);
            }
            None => panic!("connection ended without an error"),
        }
    }
}

/// The peer's side of a closing handshake: the first message other than a ping or pong (which
/// keepalive may still send), then everything up to the end.
async fn answer_close(ws: &mut WebSocket<TcpStream>) -> Option<Result<Message, Error>> {
    let first = loop {
        match ws.recv().await {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => break other,
        }
    };
    while ws.recv().await.is_some() {}
    first
}

fn keepalive(interval: Duration, timeout: Duration) -> Config {
    let mut c = Config::default();
    c.keepalive_interval = Some(interval);
    c.keepalive_timeout = timeout;
    c
}

/// Both ends run keepalive with different timeouts; the path then drops everything, both ways,
/// without a FIN or RST. Each side must give up `interval + timeout` after it last heard from
/// the other: not before (a ping was sent and got no answer), and not much later.
#[tokio::test]
async fn keepalive_detects_silent_partition() {
    if !netns::require_root("keepalive_detects_silent_partition") {
        return;
    }
    let path = NetPath::new("ka");
    within(Duration::from_secs(20), "keepalive test", async {
        let (server_interval, server_timeout) = (Duration::from_secs(1), Duration::from_secs(1));
        let (client_interval, client_timeout) = (Duration::from_secs(1), Duration::from_secs(2));
        let (mut client, mut server) =
            pair(&path, keepalive(client_interval, client_timeout), keepalive(server_interval, server_timeout)).await;
        let (client_rx, server_rx) = exchange(&mut client, &mut server).await;
        path.set(Dir::Both, Faults::PARTITION);

        let ((server_err, server_at), (client_err, client_at)) =
            tokio::join!(recv_until_error(&mut server), recv_until_error(&mut client));
        assert_eq!(timeout_of(&server_err), Some(TimeoutError::Keepalive), "server: {server_err}");
        assert_eq!(timeout_of(&client_err), Some(TimeoutError::Keepalive), "client: {client_err}");
        assert_around(server_at - server_rx, server_interval + server_timeout, "server's keepalive");
        assert_around(client_at - client_rx, client_interval + client_timeout, "client's keepalive");
        assert_eq!(server.state(), wsx::State::Closed);
        assert_eq!(client.state(), wsx::State::Closed);
    })
    .await
}

/// Both ends start the closing handshake into a partition: neither close frame arrives, and each
/// `close` must give up after its own close timeout.
#[tokio::test]
async fn close_timeout_drops_partitioned_peer() {
    if !netns::require_root("close_timeout_drops_partitioned_peer") {
        return;
    }
    let path = NetPath::new("cl");
    within(Duration::from_secs(20), "close timeout test", async {
        let (client_timeout, server_timeout) = (Duration::from_millis(1500), Duration::from_secs(1));
        let (mut cc, mut sc) = (Config::default(), Config::default());
        cc.close_timeout = client_timeout;
        sc.close_timeout = server_timeout;
        let (mut client, mut server) = pair(&path, cc, sc).await;
        exchange(&mut client, &mut server).await;
        path.set(Dir::Both, Faults::PARTITION);

        let start = Instant::now();
        let (c, s) = tokio::join!(
            async {
                let r = client.close(CloseCode::NORMAL, "bye").await;
                (r.map_err(|e| timeout_of(&e)), start.elapsed(), client.state())
            },
            async {
                let r = server.close(CloseCode::NORMAL, "bye").await;
                (r.map_err(|e| timeout_of(&e)), start.elapsed(), server.state())
            }
        );
        assert_eq!(s.0, Err(Some(TimeoutError::Close)), "server's close");
        assert_eq!(c.0, Err(Some(TimeoutError::Close)), "client's close");
        assert_around(s.1, server_timeout, "server's close timeout");
        assert_around(c.1, client_timeout, "client's close timeout");
        assert_eq!((s.2, c.2), (wsx::State::Closed, wsx::State::Closed));
    })
    .await
}

/// Only the way back is cut: the server's close reaches the client, which echoes it, and the
/// echo is lost. The server must give up after its close timeout; the client saw a clean close.
#[tokio::test]
async fn close_timeout_when_the_echo_is_lost() {
    if !netns::require_root("close_timeout_when_the_echo_is_lost") {
        return;
    }
    let path = NetPath::new("ce");
    within(Duration::from_secs(20), "lost close echo test", async {
        let server_timeout = Duration::from_secs(1);
        let mut sc = Config::default();
        sc.close_timeout = server_timeout;
        let (mut client, mut server) = pair(&path, Config::default(), sc).await;
        exchange(&mut client, &mut server).await;
        path.set(Dir::AtoB, Faults::PARTITION);

        let start = Instant::now();
        let (s, c) = tokio::join!(
            async {
                let r = server.close(CloseCode::NORMAL, "bye").await;
                (r.map_err(|e| timeout_of(&e)), start.elapsed())
            },
            async { within(Duration::from_secs(5), "client sees the close", client.recv()).await }
        );
        match c {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!((f.code, f.reason.as_str()), (CloseCode::NORMAL, "bye")),
            other => panic!("client: expected the server's close, got {other:?}"),
        }
        assert_eq!(s.0, Err(Some(TimeoutError::Close)), "server's close");
        assert_around(s.1, server_timeout, "server's close timeout");
        assert_eq!(server.state(), wsx::State::Closed);
    })
    .await
}

/// A deterministic pseudo-random payload (xorshift64).
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i} of {}", want.len());
    }
}

/// 100 ms each way and 5% loss each way: a 16 MiB message crosses intact, both ways at once.
///
/// The veths' MTU is 65535: TCP's throughput under random loss is about MSS / RTT × 1.2 / √loss,
/// so at 1500 bytes, a 200 ms RTT and 5% loss it would be ~40 KB/s and 16 MiB would take
/// minutes; with ~64 KiB segments it takes seconds, and the loss and retransmissions are the
/// same kind. Sizes are raised to fit the message; the write timeout stays on (30 s, default) and
/// must not fire while retransmissions stall the writer; keepalive is off (the default).
///
/// The write-buffer high-water mark stays at its default (1 MiB): each side keeps reading while
/// its own 16 MiB waits to be written. (It used to stop, and the two sides waited on each other
/// until the write timeout ended the connection; `both_ways.rs` checks that on a pipe.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_delayed_link_carries_16_mib_both_ways() {
    if !netns::require_root("lossy_delayed_link_carries_16_mib_both_ways") {
        return;
    }
    let path = NetPath::new("big");
    path.set(Dir::Both, Faults { delay: Duration::from_millis(100), loss_percent: 5 });
    within(Duration::from_secs(50), "16 MiB over the lossy link", async {
        let mut config = Config::default();
        config.max_message_size = 32 << 20;
        config.max_frame_size = 32 << 20;
        config.handshake_timeout = Duration::from_secs(20);
        let start = Instant::now();
        let (client, server) = pair(&path, config.clone(), config).await;
        // The delay is real: TCP's handshake and the HTTP upgrade take a round trip (200 ms) each.
        let setup = start.elapsed();
        assert!(setup >= Duration::from_millis(400), "connected in {setup:?} over a 200 ms round trip");
        let start = Instant::now();
        const LEN: usize = 16 << 20;
        let up = payload(LEN, 1);
        let down = payload(LEN, 2);

        let run = |ws: WebSocket<TcpStream>, out: Vec<u8>, expect: Vec<u8>, who: &'static str| async move {
            let (mut reader, mut writer) = ws.split();
            let send = tokio::spawn(async move {
                writer.send(Message::binary(out)).await.unwrap_or_else(|e| panic!("{who} send: {e}"));
                writer
            });
            let got = match reader.recv().await {
                Some(Ok(Message::Binary(b))) => b,
                other => panic!("{who}: expected the 16 MiB message, got {other:?}"),
            };
            assert_same(&got, &expect, who);
            reader.reunite(send.await.unwrap()).unwrap_or_else(|_| panic!("reunite"))
        };
        let (mut client, mut server) = tokio::join!(
            tokio::spawn(run(client, up.clone(), down.clone(), "client")),
            tokio::spawn(run(server, down, up, "server")),
        );
        let (client, server) = (client.as_mut().unwrap(), server.as_mut().unwrap());
        let dropped = path.dropped();
        eprintln!(
            "16 MiB each way over {} (100 ms, 5% loss): {:?}, {dropped} packets lost",
            path.backend(),
            start.elapsed()
        );
        // The loss is real: at ~64 KiB a packet, 2 × 16 MiB is over 500 packets; 5% is ~25.
        assert!(dropped >= 5, "only {dropped} packets were lost");

        // Still a working connection: a clean closing handshake.
        let (c, s) = tokio::join!(client.close(CloseCode::NORMAL, "done"), answer_close(server));
        assert_eq!(c.unwrap().map(|f| f.code), Some(CloseCode::NORMAL));
        assert!(matches!(s, Some(Ok(Message::Close(Some(_))))), "server: {s:?}");
    })
    .await
}

/// Numbered messages stream both ways while the path is cut for 2 s and then healed; keepalive
/// (3 s + 5 s) and the close timeout are larger than the outage. Every message must arrive
/// exactly once and in order, the receivers must have seen the gap, and the connection must still
/// close cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healed_partition_loses_nothing() {
    if !netns::require_root("healed_partition_loses_nothing") {
        return;
    }
    let path = NetPath::new("heal");
    within(Duration::from_secs(30), "healed partition test", async {
        const COUNT: usize = 250;
        const EVERY: Duration = Duration::from_millis(16);
        let outage = Duration::from_secs(2);
        let config = keepalive(Duration::from_secs(3), Duration::from_secs(5));
        let (client, server) = pair(&path, config.clone(), config).await;

        let stream = |ws: WebSocket<TcpStream>, who: &'static str| async move {
            let (mut reader, mut writer) = ws.split();
            let send = tokio::spawn(async move {
                for i in 0..COUNT {
                    writer
                        .send(Message::text(format!("{who} {i}")))
                        .await
                        .unwrap_or_else(|e| panic!("{who} send {i}: {e}"));
                    tokio::time::sleep(EVERY).await;
                }
                writer
            });
            let peer = if who == "client" { "server" } else { "client" };
            let (mut next, mut last, mut longest_gap) = (0, Instant::now(), Duration::ZERO);
            while next < COUNT {
                match reader.recv().await {
                    Some(Ok(Message::Text(t))) => {
                        assert_eq!(t.as_str(), format!("{peer} {next}"), "{who}: out of order, duplicated or lost");
                        next += 1;
                        longest_gap = longest_gap.max(last.elapsed());
                        last = Instant::now();
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    other => panic!("{who}: after {next} messages, got {other:?}"),
                }
            }
            (reader.reunite(send.await.unwrap()).unwrap_or_else(|_| panic!("reunite")), longest_gap)
        };
        let client = tokio::spawn(stream(client, "client"));
        let server = tokio::spawn(stream(server, "server"));
        tokio::time::sleep(Duration::from_millis(800)).await;
        path.set(Dir::Both, Faults::PARTITION);
        tokio::time::sleep(outage).await;
        path.set(Dir::Both, Faults::NONE);

        let (mut client, client_gap) = client.await.unwrap();
        let (mut server, server_gap) = server.await.unwrap();
        // The outage was real: each receiver waited about as long as the path was cut (and up to
        // a TCP retransmission timeout more).
        for (who, gap) in [("client", client_gap), ("server", server_gap)] {
            assert!(gap >= outage - Duration::from_millis(300), "{who}: longest silence {gap:?}");
        }
        assert_eq!((client.state(), server.state()), (wsx::State::Open, wsx::State::Open));
        let (c, s) = tokio::join!(client.close(CloseCode::NORMAL, "done"), answer_close(&mut server));
        assert_eq!(c.unwrap().map(|f| f.code), Some(CloseCode::NORMAL));
        assert!(matches!(s, Some(Ok(Message::Close(Some(_))))), "server: {s:?}");
    })
    .await
}
