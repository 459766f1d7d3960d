//! Keepalive pings, the idle timeout and the close timeout, on a simulated clock.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{single_close_code, Pair};
use wsx_proto::frame::OpCode;
use wsx_proto::{CloseCode, CloseFrame, Config, Error, Message, State, TimeoutError};

const MS: Duration = Duration::from_millis(1);

fn keepalive_config() -> Config {
    let mut c = Config::default();
    c.keepalive_interval = Some(Duration::from_secs(10));
    c.keepalive_timeout = Duration::from_secs(5);
    c
}

fn pings(wire: &[u8]) -> Vec<common::WireFrame> {
    common::parse_frames(wire).into_iter().filter(|f| f.header.opcode == OpCode::Ping).collect()
}

#[test]
fn no_timers_by_default() {
    let mut p = Pair::default();
    assert_eq!(p.client.conn.poll_timeout(), None);
    assert_eq!(p.server.conn.poll_timeout(), None);
    p.advance(Duration::from_secs(100_000));
    p.handle_timeouts();
    assert!(p.client.errors.is_empty() && p.server.errors.is_empty());
    assert_eq!(p.client.conn.pending_output() + p.server.conn.pending_output(), 0);
}

#[test]
fn keepalive_ping_is_sent_after_the_interval_and_answered() {
    let mut p = Pair::new(Config::default(), keepalive_config());
    let start = p.now;
    assert_eq!(p.server.conn.poll_timeout(), Some(start + Duration::from_secs(10)));

    // Just before the interval: nothing.
    p.advance(Duration::from_secs(10) - MS);
    p.handle_timeouts();
    assert_eq!(p.server.conn.pending_output(), 0);

    // At the interval: a ping, and the deadline for its answer.
    p.advance(MS);
    assert_eq!(p.server.conn.poll_timeout(), Some(p.now));
    p.handle_timeouts();
    assert!(p.server.errors.is_empty());
    assert!(p.server.conn.pending_output() > 0);
    assert_eq!(p.server.conn.poll_timeout(), Some(p.now + Duration::from_secs(5)));
    // Calling again does not send a second ping.
    p.handle_timeouts();

    // The client answers a second later.
    p.advance(Duration::from_secs(1));
    p.drive();
    let sent = pings(&p.server.wire);
    assert_eq!(sent.len(), 1);
    assert_eq!(p.client.take_events(), [Message::Ping(Bytes::from(sent[0].payload.clone()))]);
    assert_eq!(p.server.take_events(), [Message::Pong(Bytes::from(sent[0].payload.clone()))]);
    // The next ping is due an interval after the pong arrived.
    let pong_at = p.now;
    assert_eq!(p.server.conn.poll_timeout(), Some(pong_at + Duration::from_secs(10)));

    // Past the old keepalive deadline: no timeout.
    p.advance(Duration::from_secs(9));
    p.handle_timeouts();
    assert!(p.server.errors.is_empty());
    assert_eq!(p.server.conn.state(), State::Open);
    assert_eq!(p.server.conn.pending_output(), 0);

    // The next round sends a different ping.
    p.advance(Duration::from_secs(1));
    p.handle_timeouts();
    p.drive();
    let sent = pings(&p.server.wire);
    assert_eq!(sent.len(), 2);
    assert_ne!(sent[0].payload, sent[1].payload);
    assert!(p.server.errors.is_empty() && p.client.errors.is_empty());
}

#[test]
fn keepalive_keeps_an_idle_timeout_from_firing() {
    let mut config = keepalive_config();
    config.idle_timeout = Some(Duration::from_secs(30));
    let mut p = Pair::new(Config::default(), config);
    let start = p.now;
    for _ in 0..20 {
        let at = p.server.conn.poll_timeout().unwrap();
        assert!(at >= p.now);
        p.now = at;
        p.handle_timeouts();
        p.drive();
    }
    assert!(p.now >= start + Duration::from_secs(150), "{:?}", p.now - start);
    assert!(p.server.errors.is_empty());
    assert_eq!(p.server.conn.state(), State::Open);
    assert_eq!(pings(&p.server.wire).len(), 20);
}

#[test]
fn any_received_frame_postpones_the_keepalive_ping() {
    let mut p = Pair::new(Config::default(), keepalive_config());
    p.advance(Duration::from_secs(8));
    p.client.conn.send(Message::text("still here")).unwrap();
    p.drive();
    assert_eq!(p.server.conn.poll_timeout(), Some(p.now + Duration::from_secs(10)));
    p.advance(Duration::from_secs(5));
    p.handle_timeouts();
    assert_eq!(p.server.conn.pending_output(), 0);
}

#[test]
fn an_empty_frame_from_the_peer_also_answers_the_keepalive() {
    let mut p = Pair::new(Config::default(), keepalive_config());
    p.advance(Duration::from_secs(10));
    p.handle_timeouts();
    let _ = p.server.take_output(); // the ping is lost
                                    // The peer happens to send an empty frame: only its header arrives, and that is enough.
    p.advance(Duration::from_secs(1));
    p.client.conn.send(Message::Pong(Bytes::new())).unwrap();
    p.drive();
    assert_eq!(p.server.take_events(), [Message::Pong(Bytes::new())]);
    p.advance(Duration::from_secs(5));
    p.handle_timeouts();
    assert!(p.server.errors.is_empty(), "{:?}", p.server.errors);
    assert_eq!(p.server.conn.state(), State::Open);
}

#[test]
fn unanswered_keepalive_times_out() {
    let mut p = Pair::new(Config::default(), keepalive_config());
    p.advance(Duration::from_secs(10));
    p.handle_timeouts();
    let ping_at = p.now;
    let wire = p.server.take_output();
    assert_eq!(pings(&wire).len(), 1);
    assert_eq!(p.server.conn.poll_timeout(), Some(ping_at + Duration::from_secs(5)));

    // The ping is never delivered.
    p.advance(Duration::from_secs(5) - MS);
    p.handle_timeouts();
    assert!(p.server.errors.is_empty());
    assert_eq!(p.server.conn.state(), State::Open);
    p.advance(MS);
    let err = p.server.conn.handle_timeout(p.now).unwrap_err();
    assert_eq!(err, Error::Timeout(TimeoutError::Keepalive));
    assert_eq!(p.server.conn.state(), State::Closed);
    assert_eq!(p.server.conn.poll_timeout(), None);
    // A dead peer gets no close frame (the error names no close code).
    assert_eq!(err.close_code(), None);
    assert_eq!(p.server.conn.pending_output(), 0);
    // The timer does not fire twice.
    p.advance(Duration::from_secs(100));
    assert_eq!(p.server.conn.handle_timeout(p.now), Ok(()));
}

#[test]
fn idle_timeout_closes_with_1001() {
    let mut config = Config::default();
    config.idle_timeout = Some(Duration::from_secs(30));
    let mut p = Pair::new(Config::default(), config);
    let start = p.now;
    assert_eq!(p.server.conn.poll_timeout(), Some(start + Duration::from_secs(30)));

    // Traffic from the client resets the idle timer; traffic to it does not.
    p.advance(Duration::from_secs(20));
    p.client.conn.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    p.drive();
    let last = p.now;
    p.server.conn.send(Message::text("server talks")).unwrap();
    p.advance(Duration::from_secs(15));
    p.drive();
    assert_eq!(p.server.conn.poll_timeout(), Some(last + Duration::from_secs(30)));

    p.now = last + Duration::from_secs(30) - MS;
    p.handle_timeouts();
    assert!(p.server.errors.is_empty());
    p.now = last + Duration::from_secs(30);
    p.handle_timeouts();
    assert_eq!(p.server.errors, [Error::Timeout(TimeoutError::Idle)]);
    assert_eq!(p.server.conn.state(), State::Closed);
    assert!(p.server.conn.pending_output() > 0, "no close frame queued");
    p.drive();
    assert_eq!(single_close_code(&p.server.wire), Some(1001));
    match p.client.take_events().as_slice() {
        [Message::Text(_), Message::Close(Some(f))] => assert_eq!(f.code, CloseCode::GOING_AWAY),
        other => panic!("unexpected client events {other:?}"),
    }
}

#[test]
fn close_timeout_when_the_peer_never_answers() {
    let mut config = Config::default();
    config.close_timeout = Duration::from_secs(5);
    let mut p = Pair::new(config, Config::default());
    let t0 = p.now;
    p.client.conn.close(Some(CloseFrame::new(CloseCode::NORMAL, "")), t0).unwrap();
    assert_eq!(p.client.conn.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    let wire = p.client.take_output(); // written, but the peer never answers

    p.advance(Duration::from_secs(5) - MS);
    p.handle_timeouts();
    assert!(p.client.errors.is_empty());
    assert_eq!(p.client.conn.state(), State::Closing);

    p.advance(MS);
    p.handle_timeouts();
    assert_eq!(p.client.errors, [Error::Timeout(TimeoutError::Close)]);
    assert_eq!(p.client.conn.state(), State::Closed);
    assert!(!p.client.conn.is_closed_cleanly());
    assert_eq!(p.client.conn.poll_timeout(), None);
    // No second close frame.
    assert_eq!(p.client.conn.pending_output(), 0);
    assert_eq!(single_close_code(&wire), Some(1000));
}

#[test]
fn close_timeout_starts_at_the_next_handle_timeout_after_send_close() {
    let mut p = Pair::default();
    p.server.conn.send(Message::Close(None)).unwrap();
    // Without a clock at send time, the connection asks to be woken at once to arm the timer.
    assert!(p.server.conn.poll_timeout().is_some_and(|t| t <= p.now));
    p.advance(Duration::from_secs(3));
    p.handle_timeouts();
    let t1 = p.now;
    assert_eq!(p.server.conn.poll_timeout(), Some(t1 + Duration::from_secs(5)));
    p.now = t1 + Duration::from_secs(5);
    p.handle_timeouts();
    assert_eq!(p.server.errors, [Error::Timeout(TimeoutError::Close)]);
}

#[test]
fn answered_close_does_not_time_out() {
    let mut p = Pair::default();
    p.client.conn.close(None, p.now).unwrap();
    p.advance(Duration::from_secs(4));
    p.drive();
    assert!(p.client.conn.is_closed_cleanly());
    p.advance(Duration::from_secs(10));
    p.handle_timeouts();
    assert!(p.client.errors.is_empty() && p.server.errors.is_empty());
}

#[test]
fn no_keepalive_ping_while_closing() {
    let mut config = keepalive_config();
    config.close_timeout = Duration::from_secs(30);
    let mut p = Pair::new(config, Config::default());
    p.client.conn.close(None, p.now).unwrap();
    let _ = p.client.take_output();
    assert_eq!(p.client.conn.poll_timeout(), Some(p.now + Duration::from_secs(30)));
    p.advance(Duration::from_secs(20));
    p.handle_timeouts();
    assert!(p.client.errors.is_empty());
    assert_eq!(p.client.conn.pending_output(), 0, "a ping was sent after close");
}

/// A keepalive ping queued behind output the peer has not taken cannot have been answered: its
/// timeout starts over while it waits, and runs out only once the ping has left.
#[test]
fn a_ping_stuck_behind_untaken_output_does_not_time_out_until_it_leaves() {
    let now = std::time::Instant::now();
    let mut server = wsx_proto::Connection::server(keepalive_config(), now);
    // A backlog the peer has not taken: 64 KiB of our own.
    server.send(Message::binary(vec![1u8; 64 * 1024])).unwrap();
    let backlog = server.pending_output();
    let t_ping = now + Duration::from_secs(10);
    server.handle_timeout(t_ping).unwrap();
    assert!(server.pending_output() > backlog, "the ping was queued");
    // The answer's deadline passes with the ping still queued: not a timeout.
    let t1 = t_ping + Duration::from_secs(5);
    assert_eq!(server.poll_timeout(), Some(t1));
    assert_eq!(server.handle_timeout(t1), Ok(()));
    assert_eq!(server.state(), State::Open);
    assert_eq!(server.poll_timeout(), Some(t1 + Duration::from_secs(5)));
    // Part of the backlog leaves; the ping has not: still no timeout.
    bytes::Buf::advance(server.output(), backlog / 2);
    let t2 = t1 + Duration::from_secs(5);
    assert_eq!(server.handle_timeout(t2), Ok(()));
    // Everything leaves, the ping included; no answer within the timeout: the peer is gone.
    let rest = server.pending_output();
    bytes::Buf::advance(server.output(), rest);
    let t3 = t2 + Duration::from_secs(5);
    assert_eq!(server.poll_timeout(), Some(t3));
    assert_eq!(server.handle_timeout(t3 - MS), Ok(()));
    assert_eq!(server.handle_timeout(t3), Err(Error::Timeout(TimeoutError::Keepalive)));
    assert_eq!(server.state(), State::Closed);
}
