//! Timers with real sockets and short real durations: handshake timeout, idle timeout,
//! keepalive (answered and unanswered), close timeout.
//!
//! Lower bounds are checked with a little tolerance, upper bounds generously (the machine may be
//! busy): what matters is that the connection is dropped at all, and not early.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsx::proto::{Config, TimeoutError};
use wsx::{Accept, CloseCode, Error, Message, ServerConfig};

/// Slack under a configured duration (timer granularity) and over it (scheduling on a busy box).
const EARLY: Duration = Duration::from_millis(20);
const LATE: Duration = Duration::from_secs(3);

fn assert_around(elapsed: Duration, expected: Duration, what: &str) {
    assert!(elapsed + EARLY >= expected, "{what}: after {elapsed:?}, expected at least {expected:?}");
    assert!(elapsed <= expected + LATE, "{what}: after {elapsed:?}, expected about {expected:?}");
}

/// Runs `test` with a deadline table on this thread (`wsx::deadlines`), so that its connections
/// keep their deadlines there rather than on tokio timers: checks that they did, and that each
/// gave its entry back when it ended.
async fn on_a_deadline_table(test: impl Future<Output = ()>) {
    // The watcher is a task of its own, so that it does not poll the driver every few
    // milliseconds (the driver still shares this task with the test's client side; its own
    // wakeups are checked in `wsx::deadlines`' tests, where it has a task of its own).
    let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watcher = tokio::spawn({
        let most = most.clone();
        async move {
            loop {
                most.fetch_max(wsx::deadlines::entries(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let mut table = std::pin::pin!(wsx::deadlines::drive());
    tokio::select! {
        () = &mut table => panic!("the table's driver ended"),
        () = test => {}
    }
    watcher.abort();
    assert!(most.load(std::sync::atomic::Ordering::Relaxed) >= 1, "no connection kept its deadline in the table");
    let given_back = async {
        while wsx::deadlines::entries() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::select! {
        () = &mut table => panic!("the table's driver ended"),
        () = within(Duration::from_secs(5), "every entry given back", given_back) => {}
    }
}

fn server_config(f: impl FnOnce(&mut Config)) -> ServerConfig {
    let mut config = ServerConfig::default();
    f(&mut config.websocket.proto);
    config
}

fn timeout_of(e: &Error) -> Option<TimeoutError> {
    match e {
        Error::Proto(wsx::proto::Error::Timeout(t)) => Some(*t),
        _ => None,
    }
}

/// A server running `accept_with` with a 300 ms handshake timeout; the client writes `prefix` and
/// then nothing. Returns when the client has seen EOF.
async fn stalled_handshake(prefix: &[u8]) {
    let (listener, addr) = listen().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut config = ServerConfig::default();
        config.websocket.proto.handshake_timeout = Duration::from_millis(300);
        let start = Instant::now();
        let result = wsx::accept_with(tcp, &config, |_, _| Ok(Accept::default())).await;
        (result.map(|_| ()), start.elapsed())
    });
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(prefix).await.unwrap();
    let mut buf = [0u8; 64];
    let n = within(Duration::from_secs(5), "EOF after the handshake timeout", s.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0, "expected EOF, got {:?}", &buf[..n]);
    assert_around(start.elapsed(), Duration::from_millis(300), "client saw EOF");

    let (result, elapsed) = server.await.unwrap();
    match result {
        Err(Error::HandshakeTimeout(d)) => assert_eq!(d, Duration::from_millis(300)),
        other => panic!("expected HandshakeTimeout, got {other:?}"),
    }
    assert_around(elapsed, Duration::from_millis(300), "accept_with gave up");
}

#[tokio::test]
async fn silent_client_hits_handshake_timeout() {
    deadline(stalled_handshake(b"")).await
}

#[tokio::test]
async fn half_request_head_hits_handshake_timeout() {
    deadline(stalled_handshake(b"GET /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: webso")).await
}

#[tokio::test]
async fn idle_timeout_drops_silent_client() {
    idle_timeout_drops_silent_client_run().await
}

#[tokio::test]
async fn idle_timeout_drops_silent_client_on_a_deadline_table() {
    on_a_deadline_table(idle_timeout_drops_silent_client_run()).await
}

async fn idle_timeout_drops_silent_client_run() {
    deadline(async {
        let idle = Duration::from_millis(300);
        let config = server_config(|c| c.idle_timeout = Some(idle));
        let (addr, server) = spawn_server(config, |mut ws| async move {
            let start = Instant::now();
            let first = ws.recv().await;
            let elapsed = start.elapsed();
            let rest = ws.recv().await;
            (first.map(|r| r.map_err(|e| (timeout_of(&e), e.close_code()))), rest.is_none(), elapsed)
        })
        .await;
        let (mut ws, _) = wsx::connect(&url(addr)).await.unwrap();
        let start = Instant::now();
        let got = within(Duration::from_secs(5), "server's idle close", ws.recv()).await;
        match got {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::GOING_AWAY),
            other => panic!("expected Close(1001), got {other:?}"),
        }
        assert_around(start.elapsed(), idle, "client saw the idle close");
        assert!(ws.recv().await.is_none());

        let (first, then_none, elapsed) = server.await.unwrap();
        assert_eq!(first, Some(Err((Some(TimeoutError::Idle), Some(CloseCode::GOING_AWAY)))));
        assert!(then_none);
        assert_around(elapsed, idle, "server's idle timeout");
    })
    .await
}

#[tokio::test]
async fn keepalive_pings_are_answered_and_connection_stays_up() {
    keepalive_pings_are_answered_and_connection_stays_up_run().await
}

#[tokio::test]
async fn keepalive_pings_are_answered_and_connection_stays_up_on_a_deadline_table() {
    on_a_deadline_table(keepalive_pings_are_answered_and_connection_stays_up_run()).await
}

async fn keepalive_pings_are_answered_and_connection_stays_up_run() {
    deadline(async {
        let config = server_config(|c| {
            c.keepalive_interval = Some(Duration::from_millis(100));
            c.keepalive_timeout = Duration::from_secs(2);
        });
        let (addr, server) = spawn_echo_server(config).await;
        let (mut ws, _) = wsx::connect(&url(addr)).await.unwrap();

        // Only recv runs for 700 ms: the server pings, our client answers by itself.
        let until = tokio::time::Instant::now() + Duration::from_millis(700);
        let mut pings = 0;
        while let Ok(m) = tokio::time::timeout_at(until, ws.recv()).await {
            match m {
                Some(Ok(Message::Ping(_))) => pings += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(pings >= 3, "only {pings} keepalive pings in 700 ms with a 100 ms interval");

        // Still up, both ways.
        ws.send_text("still here").await.unwrap();
        loop {
            match ws.recv().await.unwrap().unwrap() {
                Message::Ping(_) => pings += 1,
                m => {
                    assert_eq!(m, Message::text("still here"));
                    break;
                }
            }
        }
        assert_eq!(ws.state(), wsx::State::Open);
        ws.close(CloseCode::NORMAL, "").await.unwrap();

        let log = server.await.unwrap();
        assert!(log.errors.is_empty(), "server errors: {:?}", log.errors);
        let pongs = log.controls.iter().filter(|m| matches!(m, Message::Pong(_))).count();
        assert!(pongs >= 3, "server got {pongs} pongs for {pings} pings");
    })
    .await
}

#[tokio::test]
async fn unanswered_keepalive_drops_peer() {
    unanswered_keepalive_drops_peer_run().await
}

#[tokio::test]
async fn unanswered_keepalive_drops_peer_on_a_deadline_table() {
    on_a_deadline_table(unanswered_keepalive_drops_peer_run()).await
}

async fn unanswered_keepalive_drops_peer_run() {
    deadline(async {
        let interval = Duration::from_millis(100);
        let timeout = Duration::from_millis(200);
        let config = server_config(|c| {
            c.keepalive_interval = Some(interval);
            c.keepalive_timeout = timeout;
        });
        let (addr, server) = spawn_server(config, |mut ws| async move {
            let start = Instant::now();
            let first = ws.recv().await;
            let elapsed = start.elapsed();
            let rest = ws.recv().await;
            (first.map(|r| r.map_err(|e| timeout_of(&e))), rest.is_none(), elapsed)
        })
        .await;
        // A peer that completes the handshake and then ignores everything (it reads only to
        // observe, and never answers).
        let (mut s, mut buf) = raw_handshake(addr).await;
        let start = Instant::now();
        let frames = within(Duration::from_secs(5), "EOF", read_frames_to_eof(&mut s, &mut buf)).await;
        assert_around(start.elapsed(), interval + timeout, "peer dropped");
        assert!(!frames.is_empty(), "no keepalive ping was sent");
        assert!(frames.iter().all(|f| f.opcode == OP_PING), "unexpected frames: {frames:?}");

        let (first, then_none, elapsed) = server.await.unwrap();
        assert_eq!(first, Some(Err(Some(TimeoutError::Keepalive))));
        assert!(then_none);
        assert_around(elapsed, interval + timeout, "server's keepalive timeout");
    })
    .await
}

#[tokio::test]
async fn close_timeout_bounds_server_close() {
    close_timeout_bounds_server_close_run().await
}

#[tokio::test]
async fn close_timeout_bounds_server_close_on_a_deadline_table() {
    on_a_deadline_table(close_timeout_bounds_server_close_run()).await
}

async fn close_timeout_bounds_server_close_run() {
    deadline(async {
        let close_timeout = Duration::from_millis(300);
        let config = server_config(|c| c.close_timeout = close_timeout);
        let (addr, server) = spawn_server(config, |mut ws| async move {
            let start = Instant::now();
            let r = ws.close(CloseCode::NORMAL, "bye").await;
            (r.map_err(|e| timeout_of(&e)), start.elapsed(), ws.state())
        })
        .await;
        let (mut s, mut buf) = raw_handshake(addr).await;
        // The close frame arrives; we never answer it.
        let frame = within(Duration::from_secs(5), "server's close", read_frame(&mut s, &mut buf)).await;
        assert_eq!(frame, Some(RawFrame { fin: true, opcode: OP_CLOSE, payload: close_payload(1000, "bye") }));

        let (result, elapsed, state) = server.await.unwrap();
        assert_eq!(result, Err(Some(TimeoutError::Close)));
        assert_around(elapsed, close_timeout, "close() returned");
        assert_eq!(state, wsx::State::Closed);
        // The server dropped the connection.
        assert!(within(Duration::from_secs(5), "EOF", read_frame(&mut s, &mut buf)).await.is_none());
    })
    .await
}
