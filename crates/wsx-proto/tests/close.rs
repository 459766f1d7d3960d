//! The closing handshake (RFC 6455 §5.5.1, §7): who sends what, exactly once, and what is
//! refused on either side.

mod common;

use bytes::Bytes;
use common::{client_frame, close_payload, drain, feed_all, server_frame, single_close_code, Pair};
use wsx_proto::frame::OpCode;
use wsx_proto::{CloseCode, CloseFrame, Connection, Error, Message, ProtocolError, State, UsageError};

fn close_msg(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame::new(CloseCode(code), reason)))
}

#[test]
fn client_initiated_close() {
    let mut p = Pair::default();
    p.client.conn.close(Some(CloseFrame::new(CloseCode::NORMAL, "bye")), p.now).unwrap();
    assert_eq!(p.client.conn.state(), State::Closing);
    assert!(p.client.conn.close_sent());
    assert!(!p.client.conn.is_closed_cleanly());
    p.drive();

    assert_eq!(p.server.take_events(), [close_msg(1000, "bye")]);
    assert_eq!(p.server.conn.state(), State::Closed);
    assert_eq!(p.client.take_events(), [close_msg(1000, "bye")]);
    assert_eq!(p.client.conn.state(), State::Closed);

    // Exactly one close frame each way; the server echoed the code and the reason.
    let client_closes = p.client.closes_sent();
    assert_eq!(client_closes.len(), 1);
    assert_eq!(client_closes[0].payload, close_payload(1000, b"bye"));
    assert!(client_closes[0].header.mask.is_some());
    assert_eq!(single_close_code(&p.server.wire), Some(1000));
    let server_closes = p.server.closes_sent();
    assert_eq!(server_closes.len(), 1);
    assert_eq!(server_closes[0].payload, close_payload(1000, b"bye"));

    assert!(p.client.conn.is_closed_cleanly());
    assert!(p.server.conn.is_closed_cleanly());
    assert_eq!(p.server.conn.close_received(), Some(&Some(CloseFrame::new(CloseCode::NORMAL, "bye"))));
    assert!(p.client.errors.is_empty() && p.server.errors.is_empty());
    // Nothing runs after the handshake.
    assert_eq!(p.client.conn.poll_timeout(), None);
    assert_eq!(p.server.conn.poll_timeout(), None);
}

#[test]
fn server_initiated_close_echoes_the_code_and_reason() {
    let mut p = Pair::default().chunked(3, 11);
    p.server.conn.close(Some(CloseFrame::new(CloseCode(4321), "app reason ✓")), p.now).unwrap();
    assert_eq!(p.server.conn.state(), State::Closing);
    p.drive();
    assert_eq!(p.client.take_events(), [close_msg(4321, "app reason ✓")]);
    assert_eq!(p.server.take_events(), [close_msg(4321, "app reason ✓")]);
    assert_eq!(single_close_code(&p.server.wire), Some(4321));
    assert_eq!(single_close_code(&p.client.wire), Some(4321));
    assert!(p.client.conn.is_closed_cleanly() && p.server.conn.is_closed_cleanly());
    assert_eq!((p.client.conn.state(), p.server.conn.state()), (State::Closed, State::Closed));
}

#[test]
fn simultaneous_close_sends_one_close_frame_each() {
    let mut p = Pair::default();
    p.client.conn.close(Some(CloseFrame::new(CloseCode::GOING_AWAY, "")), p.now).unwrap();
    p.server.conn.close(Some(CloseFrame::new(CloseCode::NORMAL, "")), p.now).unwrap();
    p.drive();
    assert_eq!(p.server.take_events(), [close_msg(1001, "")]);
    assert_eq!(p.client.take_events(), [close_msg(1000, "")]);
    assert_eq!(single_close_code(&p.client.wire), Some(1001));
    assert_eq!(single_close_code(&p.server.wire), Some(1000));
    assert!(p.client.conn.is_closed_cleanly() && p.server.conn.is_closed_cleanly());
}

#[test]
fn a_second_close_is_never_sent() {
    let mut p = Pair::default();
    p.client.conn.close(None, p.now).unwrap();
    let pending = p.client.conn.pending_output();
    assert_eq!(p.client.conn.close(None, p.now), Err(Error::Usage(UsageError::AlreadyClosing)));
    assert_eq!(
        p.client.conn.send(Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, "")))),
        Err(Error::Usage(UsageError::AlreadyClosing))
    );
    assert_eq!(p.client.conn.pending_output(), pending);
    p.drive();
    // The server echoed, so it may not close again either.
    assert_eq!(p.server.conn.close(None, p.now), Err(Error::Usage(UsageError::AlreadyClosing)));
    assert_eq!(p.server.conn.send(Message::Close(None)), Err(Error::Usage(UsageError::AlreadyClosing)));
    p.drive();
    assert_eq!(p.client.closes_sent().len(), 1);
    assert_eq!(p.server.closes_sent().len(), 1);
}

#[test]
fn a_protocol_error_while_closing_sends_no_second_close() {
    let now = std::time::Instant::now();
    let mut client = Connection::client(Default::default(), now, || [1, 2, 3, 4]);
    client.close(Some(CloseFrame::new(CloseCode::NORMAL, "")), now).unwrap();
    let first = drain(&mut client);
    assert_eq!(single_close_code(&first), Some(1000));
    // The server answers with a masked frame: a violation.
    let (events, err) = feed_all(&mut client, &client_frame(OpCode::Text, true, b"x"), now);
    assert!(events.is_empty());
    assert_eq!(err, Some(Error::Protocol(ProtocolError::MaskedFrame)));
    assert_eq!(client.state(), State::Closed);
    assert!(drain(&mut client).is_empty(), "a second close frame was written");
    assert!(!client.is_closed_cleanly());
}

#[test]
fn no_data_can_be_sent_after_close() {
    let mut p = Pair::default();
    p.client.conn.close(None, p.now).unwrap();
    let pending = p.client.conn.pending_output();
    let closing = Err(Error::Usage(UsageError::NotOpen(State::Closing)));
    assert_eq!(p.client.conn.send(Message::text("late")), closing);
    assert_eq!(p.client.conn.send(Message::binary(vec![1u8])), closing);
    assert_eq!(p.client.conn.send(Message::Ping(Bytes::new())), closing);
    assert_eq!(p.client.conn.send_fragment(false, Bytes::from_static(b"f"), true), closing);
    assert_eq!(p.client.conn.pending_output(), pending);
    p.drive();
    let closed = Err(Error::Usage(UsageError::NotOpen(State::Closed)));
    for side in [&mut p.client, &mut p.server] {
        assert_eq!(side.conn.send(Message::text("late")), closed);
        assert_eq!(side.conn.send(Message::binary(vec![1u8])), closed);
        assert_eq!(side.conn.send(Message::Pong(Bytes::new())), closed);
        assert_eq!(side.conn.send_fragment(true, Bytes::from_static(b"f"), false), closed);
        assert_eq!(side.conn.pending_output(), 0);
    }
    // Only the close frames ever went out.
    assert_eq!(p.client.frames_sent().len(), 1);
    assert_eq!(p.server.frames_sent().len(), 1);
}

#[test]
fn data_arriving_while_closing_is_delivered() {
    let mut p = Pair::default();
    p.client.conn.close(Some(CloseFrame::new(CloseCode::NORMAL, "done")), p.now).unwrap();
    // The server had these in flight before it saw the close.
    p.server.conn.send(Message::text("in flight")).unwrap();
    p.server.conn.send_fragment(false, Bytes::from_static(b"ab"), false).unwrap();
    p.server.conn.send(Message::Ping(Bytes::from_static(b"pi"))).unwrap();
    p.server.conn.send_fragment(false, Bytes::from_static(b"cd"), true).unwrap();
    p.drive();
    assert_eq!(
        p.client.take_events(),
        [
            Message::text("in flight"),
            Message::Ping(Bytes::from_static(b"pi")),
            Message::binary(Bytes::from_static(b"abcd")),
            close_msg(1000, "done"),
        ]
    );
    assert!(p.client.errors.is_empty());
    assert!(p.client.conn.is_closed_cleanly());
    // The client sent no data after its close, and exactly one close frame; it still answered
    // the ping (RFC 6455 §5.5.2: a pong is owed unless a close was *received*).
    let sent: Vec<(OpCode, Vec<u8>)> =
        p.client.frames_sent().into_iter().map(|f| (f.header.opcode, f.payload)).collect();
    assert_eq!(sent, [(OpCode::Close, close_payload(1000, b"done")), (OpCode::Pong, b"pi".to_vec())]);
}

#[test]
fn close_without_status_code() {
    let mut p = Pair::default();
    p.client.conn.close(None, p.now).unwrap();
    p.drive();
    assert_eq!(p.server.take_events(), [Message::Close(None)]);
    assert_eq!(p.client.take_events(), [Message::Close(None)]);
    assert_eq!(p.server.conn.close_received(), Some(&None));
    assert_eq!(p.client.conn.close_received(), Some(&None));
    // Both close frames are empty.
    assert_eq!(p.client.closes_sent()[0].payload, b"");
    assert_eq!(p.server.closes_sent()[0].payload, b"");
    assert!(p.client.conn.is_closed_cleanly() && p.server.conn.is_closed_cleanly());

    // The same through `send`.
    let mut p = Pair::default();
    p.server.conn.send(Message::Close(None)).unwrap();
    assert_eq!(p.server.conn.state(), State::Closing);
    p.drive();
    assert_eq!(p.client.take_events(), [Message::Close(None)]);
    assert_eq!(p.server.take_events(), [Message::Close(None)]);
}

fn server_receives_close(payload: &[u8]) -> (Connection, Vec<Message>, Option<Error>) {
    let now = std::time::Instant::now();
    let mut server = Connection::server(Default::default(), now);
    let (events, err) = feed_all(&mut server, &client_frame(OpCode::Close, true, payload), now);
    (server, events, err)
}

#[test]
fn invalid_close_codes_are_a_protocol_error() {
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
        let (mut server, events, err) = server_receives_close(&close_payload(code, b"r"));
        assert!(events.is_empty(), "{code}: {events:?}");
        assert_eq!(err, Some(Error::Protocol(ProtocolError::InvalidCloseCode(code))), "{code}");
        assert_eq!(server.state(), State::Closed);
        assert_eq!(single_close_code(&drain(&mut server)), Some(1002), "{code}");
        assert!(!server.is_closed_cleanly());
        assert_eq!(server.close_received(), None);
    }
}

#[test]
fn valid_close_codes_are_accepted_and_echoed() {
    for code in [1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999] {
        let (mut server, events, err) = server_receives_close(&close_payload(code, b""));
        assert_eq!(err, None, "{code}");
        assert_eq!(events, [close_msg(code, "")], "{code}");
        assert_eq!(single_close_code(&drain(&mut server)), Some(code));
        assert!(server.is_closed_cleanly());
    }
}

#[test]
fn the_echo_carries_the_peers_reason_up_to_the_largest_one() {
    // 123 bytes is the longest reason a control frame can carry; multi-byte characters included.
    let longest = "é".repeat(61) + "x";
    assert_eq!(longest.len(), 123);
    for reason in ["", "bye", "app reason ✓", longest.as_str()] {
        let (mut server, events, err) = server_receives_close(&close_payload(4000, reason.as_bytes()));
        assert_eq!(err, None, "{reason}");
        assert_eq!(events, [close_msg(4000, reason)]);
        let wire = drain(&mut server);
        let frames = common::parse_frames(&wire);
        assert_eq!(frames.len(), 1, "{reason}");
        assert_eq!(frames[0].payload, close_payload(4000, reason.as_bytes()), "{reason}");
    }
}

#[test]
fn one_byte_close_payload_is_a_protocol_error() {
    let (mut server, events, err) = server_receives_close(&[0x03]);
    assert!(events.is_empty());
    assert_eq!(err, Some(Error::Protocol(ProtocolError::InvalidClosePayload)));
    assert_eq!(single_close_code(&drain(&mut server)), Some(1002));
    assert_eq!(server.state(), State::Closed);
}

#[test]
fn close_reason_with_invalid_utf8_is_1007() {
    for reason in [&b"\xff"[..], b"ok\xc3", b"\xed\xa0\x80", b"abc\xc0\xafdef"] {
        let (mut server, events, err) = server_receives_close(&close_payload(1000, reason));
        assert!(events.is_empty());
        assert_eq!(err, Some(Error::Protocol(ProtocolError::InvalidUtf8)), "{reason:?}");
        assert_eq!(single_close_code(&drain(&mut server)), Some(1007), "{reason:?}");
    }
    // The client side validates the same way.
    let now = std::time::Instant::now();
    let mut client = Connection::client(Default::default(), now, || [9, 9, 9, 9]);
    let (_, err) = feed_all(&mut client, &server_frame(OpCode::Close, true, &close_payload(1000, b"\xfe")), now);
    assert_eq!(err, Some(Error::Protocol(ProtocolError::InvalidUtf8)));
    assert_eq!(single_close_code(&drain(&mut client)), Some(1007));
}

#[test]
fn close_refuses_invalid_codes_and_long_reasons() {
    let now = std::time::Instant::now();
    let mut c = Connection::client(Default::default(), now, || [1, 2, 3, 4]);
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000] {
        assert_eq!(
            c.close(Some(CloseFrame::new(CloseCode(code), "")), now),
            Err(Error::Usage(UsageError::InvalidCloseCode(code)))
        );
        assert_eq!(
            c.send(Message::Close(Some(CloseFrame::new(CloseCode(code), "")))),
            Err(Error::Usage(UsageError::InvalidCloseCode(code)))
        );
    }
    let long = "x".repeat(124);
    assert_eq!(
        c.close(Some(CloseFrame::new(CloseCode::NORMAL, long.as_str())), now),
        Err(Error::Usage(UsageError::CloseReasonTooLong))
    );
    // 62 two-byte characters: 62 chars but 124 bytes.
    let wide = "é".repeat(62);
    assert_eq!(
        c.close(Some(CloseFrame::new(CloseCode::NORMAL, wide.as_str())), now),
        Err(Error::Usage(UsageError::CloseReasonTooLong))
    );
    // Nothing changed.
    assert_eq!(c.state(), State::Open);
    assert!(!c.close_sent());
    assert_eq!(c.pending_output(), 0);
    // 123 bytes is the maximum, and goes out as a 125-byte control frame the peer accepts.
    let max = "y".repeat(123);
    c.close(Some(CloseFrame::new(CloseCode(3000), max.as_str())), now).unwrap();
    let wire = drain(&mut c);
    let closes = common::close_frames(&wire);
    assert_eq!(closes.len(), 1);
    assert_eq!(closes[0].payload.len(), 125);
    let mut server = Connection::server(Default::default(), now);
    let (events, err) = feed_all(&mut server, &wire, now);
    assert_eq!(err, None);
    assert_eq!(events, [close_msg(3000, &max)]);
}

#[test]
fn failure_is_not_a_clean_close_and_the_peer_sees_the_code() {
    let mut p = Pair::default();
    // Inject a frame with a reserved opcode from the client's side of the wire.
    p.server.inbuf.extend_from_slice(&[0x83, 0x80, 1, 2, 3, 4]);
    p.server.process(p.now);
    assert_eq!(p.server.errors, [Error::Protocol(ProtocolError::ReservedOpcode(3))]);
    p.drive();
    assert_eq!(p.server.conn.state(), State::Closed);
    assert!(!p.server.conn.is_closed_cleanly());
    // The client learns why, and answers with its own close (which the closed server discards).
    match p.client.take_events().as_slice() {
        [Message::Close(Some(f))] => assert_eq!(f.code, CloseCode::PROTOCOL_ERROR),
        other => panic!("unexpected events {other:?}"),
    }
    assert_eq!(single_close_code(&p.client.wire), Some(1002));
    assert!(p.server.take_events().is_empty());
    assert_eq!(p.server.closes_sent().len(), 1);
}

mod invariants {
    //! Whatever the two sides do, in any order, with any timing: at most one close frame per
    //! side, no data frame after it, and states only move forward; and once every byte is
    //! delivered, a closing handshake between two sides that did not fail completes cleanly.

    use std::time::Duration;

    use bytes::Bytes;
    use proptest::prelude::*;
    use wsx_proto::frame::OpCode;
    use wsx_proto::{CloseCode, CloseFrame, Config, Message, State};

    use super::common::{Pair, Side};

    #[derive(Debug, Clone)]
    enum Action {
        Send { client: bool, kind: u8 },
        Close { client: bool, code: Option<u16>, via_send: bool },
        DeliverToServer,
        DeliverToClient,
        Advance(u64),
        Garbage,
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            4 => (any::<bool>(), 0u8..6).prop_map(|(client, kind)| Action::Send { client, kind }),
            1 => (any::<bool>(), prop_oneof![Just(None), Just(Some(1000u16)), Just(Some(4000)), Just(Some(1005))], any::<bool>())
                .prop_map(|(client, code, via_send)| Action::Close { client, code, via_send }),
            4 => Just(Action::DeliverToServer),
            4 => Just(Action::DeliverToClient),
            2 => (0u64..4000).prop_map(Action::Advance),
            1 => Just(Action::Garbage),
        ]
    }

    fn rank(s: State) -> u8 {
        match s {
            State::Connecting => 0,
            State::Open => 1,
            State::Closing => 2,
            State::Closed => 3,
        }
    }

    fn check_wire(side: &Side, who: &str) -> Result<(), TestCaseError> {
        let frames = side.frames_sent();
        let closes: Vec<usize> =
            frames.iter().enumerate().filter(|(_, f)| f.header.opcode == OpCode::Close).map(|(i, _)| i).collect();
        prop_assert!(closes.len() <= 1, "{} sent {} close frames", who, closes.len());
        if let Some(&at) = closes.first() {
            prop_assert!(side.conn.close_sent());
            for f in &frames[at + 1..] {
                prop_assert!(f.header.opcode.is_control(), "{} sent data after its close: {:?}", who, f);
            }
            let payload = &frames[at].payload;
            prop_assert!(payload.len() != 1 && payload.len() <= 125);
        }
        Ok(())
    }

    /// One generated run: the actions, then a final settling phase. Returns whether both sides
    /// ended with a clean closing handshake.
    fn run(actions: Vec<Action>, max_chunk: usize, seed: u64) -> Result<bool, TestCaseError> {
        let mut client_config = Config::default();
        client_config.keepalive_interval = Some(Duration::from_secs(3));
        client_config.keepalive_timeout = Duration::from_secs(2);
        let mut server_config = Config::default();
        server_config.idle_timeout = Some(Duration::from_secs(10));
        let mut p = Pair::new(client_config, server_config).chunked(max_chunk, seed);
        let mut ranks = (1, 1);
        let mut fragmenting = (false, false);
        for action in actions {
            match action {
                Action::Send { client, kind } => {
                    let (side, fragmenting) =
                        if client { (&mut p.client, &mut fragmenting.0) } else { (&mut p.server, &mut fragmenting.1) };
                    let open = side.conn.state() == State::Open;
                    let msg = match kind {
                        0 => Message::text("tëxt"),
                        1 => Message::binary(vec![0u8; 5000]),
                        2 => Message::Ping(Bytes::from_static(b"ping")),
                        3 => Message::Pong(Bytes::new()),
                        _ => {
                            let fin = kind == 5;
                            let res = side.conn.send_fragment(false, Bytes::from_static(b"frag"), fin);
                            prop_assert_eq!(res.is_ok(), open);
                            if res.is_ok() {
                                *fragmenting = !fin;
                            }
                            continue;
                        }
                    };
                    let data = msg.is_data();
                    prop_assert_eq!(side.conn.send(msg).is_ok(), open && !(data && *fragmenting));
                }
                Action::Close { client, code, via_send } => {
                    let now = p.now;
                    let side = if client { &mut p.client } else { &mut p.server };
                    let frame = code.map(|c| CloseFrame::new(CloseCode(c), "bye"));
                    let allowed = side.conn.state() == State::Open
                        && !side.conn.close_sent()
                        && code.is_none_or(|c| CloseCode(c).is_valid_on_wire());
                    let res =
                        if via_send { side.conn.send(Message::Close(frame)) } else { side.conn.close(frame, now) };
                    prop_assert_eq!(res.is_ok(), allowed, "{:?}", res);
                }
                // The only actions that move bytes: what a side queued stays queued (and
                // unseen by the peer) until one of these runs.
                Action::DeliverToServer => {
                    p.deliver_to_server();
                }
                Action::DeliverToClient => {
                    p.deliver_to_client();
                }
                Action::Advance(ms) => {
                    p.advance(Duration::from_millis(ms));
                    p.handle_timeouts();
                }
                Action::Garbage => {
                    p.server.inbuf.extend_from_slice(&[0x83, 0x80]);
                    let now = p.now;
                    p.server.process(now);
                }
            }
            let now_ranks = (rank(p.client.conn.state()), rank(p.server.conn.state()));
            prop_assert!(now_ranks.0 >= ranks.0 && now_ranks.1 >= ranks.1, "state went backwards");
            ranks = now_ranks;
            // What was delivered so far obeys the rules.
            check_wire(&p.client, "client")?;
            check_wire(&p.server, "server")?;
        }

        // Settle: deliver everything, with no more time passing. If nobody has closed or failed
        // yet, the client closes, so that every run ends in a closing handshake.
        p.drive();
        if p.client.conn.state() == State::Open && p.server.conn.state() == State::Open {
            let now = p.now;
            p.client.conn.close(None, now).unwrap();
            p.drive();
        }
        check_wire(&p.client, "client")?;
        check_wire(&p.server, "server")?;
        for (side, who) in [(&p.client, "client"), (&p.server, "server")] {
            if side.conn.is_closed_cleanly() {
                prop_assert_eq!(side.conn.state(), State::Closed);
            }
            // A side that failed (a protocol error, a timeout) did not close cleanly.
            if !side.errors.is_empty() {
                prop_assert!(!side.conn.is_closed_cleanly(), "{} failed ({:?}) yet closed cleanly", who, side.errors);
            }
        }
        // Neither side failed: then whatever started the close, once every byte is delivered the
        // handshake completes on both sides.
        let failed = !p.client.errors.is_empty() || !p.server.errors.is_empty();
        if !failed {
            for (side, who) in [(&p.client, "client"), (&p.server, "server")] {
                prop_assert!(side.conn.is_closed_cleanly(), "{} did not close cleanly: {:?}", who, side.conn.state());
            }
        }
        Ok(p.client.conn.is_closed_cleanly() && p.server.conn.is_closed_cleanly())
    }

    #[test]
    fn close_invariants() {
        const CASES: u32 = 256;
        let config = ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() };
        let mut runner = proptest::test_runner::TestRunner::new(config);
        let clean = std::cell::Cell::new(0u32);
        let strategy = (prop::collection::vec(action(), 0..40), 1usize..20, any::<u64>());
        let result = runner.run(&strategy, |(actions, max_chunk, seed)| {
            if run(actions, max_chunk, seed)? {
                clean.set(clean.get() + 1);
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        // Delivery really carries bytes: a good share of runs end in a clean closing handshake
        // (the rest failed on purpose: garbage, or timers run out while nothing was delivered).
        let clean = clean.get();
        eprintln!("{clean} of {CASES} runs ended in a clean close");
        assert!(clean >= CASES / 4, "only {clean} of {CASES} runs ended in a clean close");
    }
}
