//! permessage-deflate (RFC 7692) at the connection level: negotiated parameters put to work in a
//! client/server pair, RSV1 on the wire, hand-built fragmented compressed messages with control
//! frames in between, the RSV rules, invalid compressed data and invalid UTF-8 inside compressed
//! text, and context takeover.
//!
//! The compression bomb (peak memory while inflating) has its own test binary, `deflate_bomb`,
//! because it needs a counting global allocator.

mod common;

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use common::{drain, encode_frame, feed_all, params, parse_frames, single_close_code, Pair, Rng, Side, WireFrame};
use proptest::prelude::*;
use wsx_proto::deflate::{DeflateConfig, DeflateParams, PerMessageDeflate};
use wsx_proto::frame::{FrameHeader, OpCode};
use wsx_proto::{CloseCode, CloseFrame, Config, Connection, Error, LimitError, Message, ProtocolError, State};

const KEY: [u8; 4] = [0x9c, 0x41, 0x07, 0xe2];

// ------------------------------------------------------------------ helpers

/// Runs the negotiation as the handshake does: the client's offer goes to the server, the
/// server's response back to the client. Both sides must agree on the result.
fn negotiate(client: &DeflateConfig, server: &DeflateConfig) -> DeflateParams {
    let offer = client.client_offer();
    let (server_params, response) =
        server.server_negotiate(std::slice::from_ref(&offer)).expect("server declined the offer");
    let client_params = client
        .client_accept(&response)
        .unwrap_or_else(|e| panic!("client rejected {response:?} (offer {offer:?}): {e}"))
        .expect("client saw no extension in the response");
    assert_eq!(client_params, server_params, "offer {offer:?}, response {response:?}");
    server_params
}

/// Turns on permessage-deflate on both sides of `pair`, each with its own level and threshold.
fn enable(pair: &mut Pair, params: &DeflateParams, client: &DeflateConfig, server: &DeflateConfig) {
    pair.client.conn.set_deflate(PerMessageDeflate::new(params, false, client.level, client.compression_threshold));
    pair.server.conn.set_deflate(PerMessageDeflate::new(params, true, server.level, server.compression_threshold));
    assert!(pair.client.conn.is_deflate() && pair.server.conn.is_deflate());
}

/// A pair (delivering in one piece) with the parameters both configurations negotiate.
fn deflate_pair(client: &DeflateConfig, server: &DeflateConfig) -> (Pair, DeflateParams) {
    let params = negotiate(client, server);
    let mut pair = Pair::default();
    enable(&mut pair, &params, client, server);
    (pair, params)
}

/// Text made of words drawn at random: compressible, but not trivially.
fn words(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "alpha ", "beta ", "gamma ", "delta ", "epsilon ", "zeta ", "eta ", "theta ", "iota ", "kappa ", "lambda ",
        "mu\n",
    ];
    let mut rng = Rng::new(seed);
    let mut v = Vec::with_capacity(len + 16);
    while v.len() < len {
        v.extend_from_slice(WORDS[(rng.next_u64() % WORDS.len() as u64) as usize].as_bytes());
    }
    v.truncate(len);
    v
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Multibyte text: 2-, 3- and 4-byte UTF-8 sequences mixed with ASCII.
fn multibyte_text(repeat: usize) -> String {
    "héllo wörld — 日本語のテキスト 🎉🦀 Ωmega ≈ çà ".repeat(repeat)
}

/// Compares without printing megabytes on failure.
fn assert_same(got: &Message, want: &Message, what: &str) {
    let kind = |m: &Message| std::mem::discriminant(m);
    assert!(
        kind(got) == kind(want) && got.payload() == want.payload(),
        "{what}: got {} ({} bytes), want {} ({} bytes)",
        short(got),
        got.payload().len(),
        short(want),
        want.payload().len(),
    );
}

fn short(m: &Message) -> String {
    let s = format!("{m:?}");
    s.chars().take(80).collect()
}

/// Sends `msg` from one side, delivers everything both ways, and checks that the other side
/// received exactly `msg` with no error. Returns the frames the sender wrote for it.
fn exchange(pair: &mut Pair, from_client: bool, msg: &Message, what: &str) -> Vec<WireFrame> {
    let sender = if from_client { &mut pair.client } else { &mut pair.server };
    let before = sender.wire.len();
    sender.conn.send(msg.clone()).unwrap();
    pair.drive();
    let (sender, receiver) =
        if from_client { (&pair.client, &mut pair.server) } else { (&pair.server, &mut pair.client) };
    assert!(receiver.errors.is_empty(), "{what}: {:?}", receiver.errors);
    let events = receiver.take_events();
    assert_eq!(events.len(), 1, "{what}: {} events", events.len());
    assert_same(&events[0], msg, what);
    parse_frames(&sender.wire[before..])
}

/// The one data frame of a message sent with [`exchange`].
fn single_data_frame(frames: &[WireFrame], what: &str) -> WireFrame {
    assert_eq!(frames.len(), 1, "{what}: expected one frame, got {}", frames.len());
    let f = frames[0].clone();
    assert!(matches!(f.header.opcode, OpCode::Text | OpCode::Binary), "{what}: {:?}", f.header);
    assert!(f.header.fin && !f.header.rsv2 && !f.header.rsv3, "{what}: {:?}", f.header);
    f
}

/// Asserts that no control frame either side wrote has RSV1 (or any RSV bit) set.
fn assert_control_frames_plain(pair: &Pair) {
    for side in [&pair.client, &pair.server] {
        for f in side.frames_sent().iter().filter(|f| f.header.opcode.is_control()) {
            assert!(!f.header.rsv1 && !f.header.rsv2 && !f.header.rsv3, "control frame with RSV: {:?}", f.header);
        }
    }
}

/// Exchanges pings both ways (answered by pongs), then closes cleanly from the client.
fn ping_and_close(pair: &mut Pair) {
    let payload = Bytes::from_static(b"ping ping ping ping ping ping ping ping");
    pair.client.conn.send(Message::Ping(payload.clone())).unwrap();
    pair.server.conn.send(Message::Ping(payload.clone())).unwrap();
    pair.drive();
    for side in [&mut pair.client, &mut pair.server] {
        let events = side.take_events();
        assert!(events.contains(&Message::Ping(payload.clone())), "{events:?}");
        assert!(events.contains(&Message::Pong(payload.clone())), "{events:?}");
    }
    pair.client.conn.close(Some(CloseFrame::new(CloseCode::NORMAL, "done done done done")), pair.now).unwrap();
    pair.drive();
    assert!(pair.client.conn.is_closed_cleanly() && pair.server.conn.is_closed_cleanly());
    assert!(pair.client.errors.is_empty() && pair.server.errors.is_empty());
    assert_control_frames_plain(pair);
    let controls = |s: &Side| s.frames_sent().iter().filter(|f| f.header.opcode.is_control()).count();
    assert_eq!((controls(&pair.client), controls(&pair.server)), (3, 3));
}

/// One frame of a hand-built message.
fn frame(opcode: OpCode, fin: bool, rsv1: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut h = FrameHeader::new(opcode, payload.len() as u64, mask);
    h.fin = fin;
    h.rsv1 = rsv1;
    encode_frame(h, payload)
}

/// A deflate-enabled connection in `role` (true: server) with the default parameters.
fn deflate_conn(server: bool, params: &DeflateParams, config: Config) -> Connection {
    let now = Instant::now();
    let mut conn =
        if server { Connection::server(config, now) } else { Connection::client(config, now, common::counting_keys()) };
    conn.set_deflate(PerMessageDeflate::new(params, server, 1, 0));
    conn
}

/// The mask a frame sent *to* a connection of this role must carry.
fn mask_for(to_server: bool) -> Option<[u8; 4]> {
    to_server.then_some(KEY)
}

/// A sender's compressor for messages to a connection of role `to_server`.
fn sender(params: &DeflateParams, to_server: bool, level: u32) -> PerMessageDeflate {
    PerMessageDeflate::new(params, !to_server, level, 0)
}

/// Feeds `wire` to `conn` in one piece: asserts it fails with `expected`, that nothing else was
/// reported, that the connection is closed, and returns the close code it wrote.
fn fails_with(conn: &mut Connection, wire: &[u8], expected: Error) -> Option<u16> {
    let (events, err) = feed_all(conn, wire, Instant::now());
    assert_eq!(err.as_ref(), Some(&expected), "events {events:?}");
    assert!(events.iter().all(|e| !e.is_data()), "no data message may get through: {events:?}");
    assert_eq!(conn.state(), State::Closed);
    let out = drain(conn);
    // Pongs for pings that came before the fault may precede the close.
    single_close_code(&out)
}

// ------------------------------------------------------------------ 1. negotiated pairs

/// The messages every configuration carries both ways.
fn test_messages() -> Vec<(&'static str, Message, bool)> {
    // (name, message, compressible: the compressed payload must be smaller)
    vec![
        ("multibyte text", Message::text(multibyte_text(40)), true),
        ("short binary", Message::binary(vec![0u8, 1, 2, 255, 254, 0]), false),
        ("empty text", Message::text(""), false),
        ("empty binary", Message::binary(Bytes::new()), false),
        ("64 KiB compressible binary", Message::binary(words(64 << 10, 1)), true),
        ("1 MiB compressible text", Message::Text(String::from_utf8(words(1 << 20, 2)).unwrap().into()), true),
        ("256 KiB random", Message::binary(random_bytes(256 << 10, 3)), false),
    ]
}

fn run_config(
    name: &str,
    client: &DeflateConfig,
    server: &DeflateConfig,
    expected: DeflateParams,
    chunk: Option<usize>,
) {
    let params = negotiate(client, server);
    assert_eq!(params, expected, "{name}");
    let mut pair = match chunk {
        Some(max) => Pair::default().chunked(max, 0xdef1a7e),
        None => Pair::default(),
    };
    enable(&mut pair, &params, client, server);
    // The small messages twice over, so that the second round runs on whatever context the first
    // one left (the large ones only once: inflating megabytes is slow in debug builds).
    for round in 0..2 {
        for (what, msg, compressible) in test_messages() {
            if round > 0 && msg.payload().len() > 100 << 10 {
                continue;
            }
            for from_client in [true, false] {
                let what =
                    format!("{name}, round {round}, {what}, from {}", if from_client { "client" } else { "server" });
                let f = single_data_frame(&exchange(&mut pair, from_client, &msg, &what), &what);
                assert_eq!(f.header.mask.is_some(), from_client, "{what}");
                // Threshold 0: every data message is compressed.
                assert!(f.header.rsv1, "{what}: RSV1 clear");
                let level = if from_client { client.level } else { server.level };
                if compressible && level > 0 {
                    assert!(f.payload.len() < msg.payload().len() / 2, "{what}: {} bytes on the wire", f.payload.len());
                }
                if msg.payload().is_empty() {
                    // RFC 7692 §7.2.3.6: an empty message compresses to a single 0x00 byte.
                    assert_eq!(f.payload, [0u8], "{what}");
                }
            }
        }
    }
    ping_and_close(&mut pair);
}

/// A default configuration changed by `f` (the struct is non-exhaustive).
fn with(f: impl FnOnce(&mut DeflateConfig)) -> DeflateConfig {
    let mut c = DeflateConfig::default();
    f(&mut c);
    c
}

#[test]
fn negotiated_configurations_round_trip() {
    let d = DeflateConfig::default;
    let cases: Vec<(&str, DeflateConfig, DeflateConfig, DeflateParams)> = vec![
        ("defaults", d(), d(), params(false, false, 15, 15)),
        (
            "client asks server_no_context_takeover",
            with(|c| c.server_no_context_takeover = true),
            d(),
            params(true, false, 15, 15),
        ),
        (
            "server decides server_no_context_takeover",
            d(),
            with(|c| c.server_no_context_takeover = true),
            params(true, false, 15, 15),
        ),
        (
            "client decides client_no_context_takeover",
            with(|c| c.client_no_context_takeover = true),
            d(),
            params(false, true, 15, 15),
        ),
        (
            "server imposes client_no_context_takeover",
            d(),
            with(|c| c.client_no_context_takeover = true),
            params(false, true, 15, 15),
        ),
        (
            "no context takeover both ways",
            with(|c| c.server_no_context_takeover = true),
            with(|c| c.client_no_context_takeover = true),
            params(true, true, 15, 15),
        ),
        (
            "server imposes windows 9 and 8",
            d(),
            with(|c| {
                c.server_max_window_bits = 9;
                c.client_max_window_bits = 8
            }),
            params(false, false, 9, 8),
        ),
        (
            "level 9, no context takeover, window 10",
            with(|c| {
                c.level = 9;
                c.client_no_context_takeover = true;
                c.client_max_window_bits = 10
            }),
            with(|c| {
                c.level = 9;
                c.server_no_context_takeover = true
            }),
            params(true, true, 15, 10),
        ),
        ("level 0 (stored blocks)", with(|c| c.level = 0), with(|c| c.level = 0), params(false, false, 15, 15)),
    ];
    for (name, client, server, expected) in &cases {
        run_config(name, client, server, *expected, None);
    }
}

#[test]
fn window_bits_round_trip() {
    for bits in [8u8, 9, 12, 15] {
        // The client asks for both windows; the server agrees.
        let mut client = DeflateConfig::default();
        client.server_max_window_bits = bits;
        client.client_max_window_bits = bits;
        let name = format!("window bits {bits}");
        run_config(&name, &client, &DeflateConfig::default(), params(false, false, bits, bits), None);
        // The same, delivered in random chunks, without context takeover on the server.
        client.server_no_context_takeover = true;
        run_config(
            &format!("{name}, chunked"),
            &client,
            &DeflateConfig::default(),
            params(true, false, bits, bits),
            Some(3000),
        );
    }
}

#[test]
fn threshold_sends_small_messages_uncompressed() {
    let mut cfg = DeflateConfig::default();
    cfg.compression_threshold = 64;
    let (mut pair, _) = deflate_pair(&cfg, &cfg);
    for from_client in [true, false] {
        for (what, msg, rsv1) in [
            ("short text", Message::text("héllo 🎉"), false),
            ("63 bytes", Message::binary(vec![b'a'; 63]), false),
            ("empty", Message::binary(Bytes::new()), false),
            ("64 bytes", Message::binary(vec![b'a'; 64]), true),
            ("long text", Message::text(multibyte_text(10)), true),
            // With context takeover, random data still goes out compressed (threshold > 0 only
            // skips incompressible data when the context is reset).
            ("random", Message::binary(random_bytes(4096, 9)), true),
        ] {
            let what = format!("{what} from {}", if from_client { "client" } else { "server" });
            let f = single_data_frame(&exchange(&mut pair, from_client, &msg, &what), &what);
            assert_eq!(f.header.rsv1, rsv1, "{what}");
            if !rsv1 {
                assert_eq!(f.payload, msg.payload(), "{what}: sent as-is");
            }
        }
    }
    ping_and_close(&mut pair);

    // Without context takeover and a threshold above 0, data that does not shrink goes out as-is.
    let mut reset = cfg.clone();
    reset.server_no_context_takeover = true;
    reset.client_no_context_takeover = true;
    let (mut pair, params) = deflate_pair(&reset, &reset);
    assert_eq!(params, self::params(true, true, 15, 15));
    for from_client in [true, false] {
        let random = Message::binary(random_bytes(4096, 10));
        let f = single_data_frame(&exchange(&mut pair, from_client, &random, "random"), "random");
        assert!(!f.header.rsv1);
        let text = Message::text(multibyte_text(10));
        let f = single_data_frame(&exchange(&mut pair, from_client, &text, "text"), "text");
        assert!(f.header.rsv1);
    }
    ping_and_close(&mut pair);
}

#[test]
fn uncompressed_messages_accepted_when_deflate_is_on() {
    // The peer may send any message uncompressed (RSV1 clear), also fragmented.
    for to_server in [true, false] {
        let mut conn = deflate_conn(to_server, &DeflateParams::default(), Config::default());
        let mask = mask_for(to_server);
        let mut tx = sender(&DeflateParams::default(), to_server, 6);
        let text = multibyte_text(3);
        let mut wire = frame(OpCode::Text, true, false, text.as_bytes(), mask);
        wire.extend(frame(OpCode::Binary, false, false, b"abc", mask));
        wire.extend(frame(OpCode::Continuation, true, false, b"def", mask));
        wire.extend(frame(OpCode::Text, true, true, &tx.compress(text.as_bytes()).unwrap(), mask));
        let (events, err) = feed_all(&mut conn, &wire, Instant::now());
        assert_eq!(err, None);
        assert_eq!(
            events,
            [Message::text(text.as_str()), Message::binary(&b"abcdef"[..]), Message::text(text.as_str())]
        );
    }
}

#[test]
fn compressed_messages_are_bounded_by_max_inflated_message_size() {
    // A few KiB of DEFLATE may not become more than the inflate cap, although the same message
    // sent uncompressed is well within max_message_size.
    let defaults = Config::default();
    let cap = defaults.max_inflated_message_size;
    assert!((1 << 20..=4 << 20).contains(&cap) && cap < defaults.max_message_size, "default cap {cap}");
    let params = DeflateParams::default();
    let now = Instant::now();
    for to_server in [true, false] {
        let mask = mask_for(to_server);
        let over = vec![0u8; cap + 1];

        // Uncompressed: accepted.
        let mut conn = deflate_conn(to_server, &params, Config::default());
        let (events, err) = feed_all(&mut conn, &frame(OpCode::Binary, true, false, &over, mask), now);
        assert_eq!(err, None, "to_server {to_server}");
        assert!(matches!(&events[..], [Message::Binary(b)] if b.len() == cap + 1), "to_server {to_server}");

        // Compressed: refused with 1009, naming the inflate limit.
        let compressed = sender(&params, to_server, 6).compress(&over).expect("zeros compress");
        assert!(compressed.len() < 16 << 10, "{} compressed bytes", compressed.len());
        let wire = frame(OpCode::Binary, true, true, &compressed, mask);
        let mut conn = deflate_conn(to_server, &params, Config::default());
        let expected = Error::Limit(LimitError::InflatedMessageTooLarge { limit: cap });
        assert_eq!(fails_with(&mut conn, &wire, expected), Some(1009), "to_server {to_server}");

        // When max_message_size is the smaller limit, it is the budget and the one reported.
        let mut small = Config::default();
        small.max_message_size = 1 << 20;
        let mut conn = deflate_conn(to_server, &params, small);
        let expected = Error::Limit(LimitError::MessageTooLarge { limit: 1 << 20 });
        assert_eq!(fails_with(&mut conn, &wire, expected), Some(1009), "to_server {to_server}");

        // Exactly the cap inflates.
        let exact = vec![0u8; cap];
        let compressed = sender(&params, to_server, 6).compress(&exact).expect("zeros compress");
        let mut conn = deflate_conn(to_server, &params, Config::default());
        let (events, err) = feed_all(&mut conn, &frame(OpCode::Binary, true, true, &compressed, mask), now);
        assert_eq!(err, None, "to_server {to_server}");
        assert!(matches!(&events[..], [Message::Binary(b)] if b.len() == cap), "to_server {to_server}");
    }
}

// ------------------------------------------------------------------ 2. hand-fragmented messages

/// One message to send fragmented: kind, payload, where to cut the compressed bytes, and after
/// which fragments a ping goes.
#[derive(Debug, Clone)]
struct Plan {
    text: bool,
    payload: Vec<u8>,
    /// Cut points as fractions of the compressed length, in `0.0..=1.0`.
    cuts: Vec<f64>,
    pings: Vec<bool>,
}

fn payload_strategy() -> impl Strategy<Value = (bool, Vec<u8>)> {
    let piece = prop_oneof![
        Just("héllo ".to_owned()),
        Just("wörld ".to_owned()),
        Just("日本語".to_owned()),
        Just("🎉".to_owned()),
        Just("€".to_owned()),
        "[a-z ]{0,12}",
        any::<char>().prop_map(String::from),
    ];
    let text = (prop::collection::vec(piece, 0..120), 1usize..6)
        .prop_map(|(pieces, times)| pieces.concat().repeat(times).into_bytes());
    prop_oneof![
        text.clone().prop_map(|t| (true, t)),
        text.prop_map(|t| (false, t)),
        prop::collection::vec(any::<u8>(), 0..1500).prop_map(|b| (false, b)),
    ]
}

fn plan_strategy() -> impl Strategy<Value = Plan> {
    (payload_strategy(), prop::collection::vec(0.0..=1.0f64, 0..6), prop::collection::vec(any::<bool>(), 1..6))
        .prop_map(|((text, payload), cuts, pings)| Plan { text, payload, cuts, pings })
}

/// Builds the wire bytes of `plan` (compressed by `tx`, cut into frames, pings in between) and
/// the events the receiver must report for them.
fn build(plan: &Plan, n: usize, tx: &mut PerMessageDeflate, mask: Option<[u8; 4]>) -> (Vec<u8>, Vec<Message>) {
    let compressed = tx.compress(&plan.payload).expect("threshold 0 always compresses");
    let len = compressed.len();
    let mut cuts: Vec<usize> = plan.cuts.iter().map(|f| ((f * len as f64) as usize).min(len)).collect();
    cuts.sort_unstable();
    let bounds: Vec<usize> = std::iter::once(0).chain(cuts).chain(std::iter::once(compressed.len())).collect();
    let last = bounds.len() - 2;
    let mut wire = Vec::new();
    let mut events = Vec::new();
    for (k, w) in bounds.windows(2).enumerate() {
        let opcode = match (k, plan.text) {
            (0, true) => OpCode::Text,
            (0, false) => OpCode::Binary,
            _ => OpCode::Continuation,
        };
        // RSV1 on the first frame only.
        wire.extend(frame(opcode, k == last, k == 0, &compressed[w[0]..w[1]], mask));
        if k != last && plan.pings[k % plan.pings.len()] {
            let payload = Bytes::from(format!("ping {n}.{k}"));
            wire.extend(frame(OpCode::Ping, true, false, &payload, mask));
            events.push(Message::Ping(payload));
        }
    }
    let payload = Bytes::from(plan.payload.clone());
    events.push(if plan.text {
        Message::Text(String::from_utf8(plan.payload.clone()).unwrap().into())
    } else {
        Message::Binary(payload)
    });
    (wire, events)
}

/// Feeds `wire` in random chunks of `1..=max_chunk` bytes, reading after each, stopping at an error.
fn feed_chunked(conn: &mut Connection, wire: &[u8], max_chunk: usize, seed: u64) -> (Vec<Message>, Option<Error>) {
    let now = Instant::now();
    let mut rng = Rng::new(seed);
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    let mut rest = wire;
    while !rest.is_empty() {
        let n = rng.chunk_len(max_chunk).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match conn.read_event(&mut buf, now) {
                Ok(Some(ev)) => events.push(ev),
                Ok(None) => break,
                Err(e) => return (events, Some(e)),
            }
        }
    }
    (events, None)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn fragmented_compressed_messages_with_pings(
        plans in prop::collection::vec(plan_strategy(), 1..4),
        to_server in any::<bool>(),
        no_context_takeover in any::<bool>(),
        bits in 8u8..=15,
        level in 0u32..=9,
        max_chunk in 1usize..400,
        seed in any::<u64>(),
    ) {
        let p = params(no_context_takeover, no_context_takeover, bits, bits);
        let mut tx = sender(&p, to_server, level);
        let mut conn = deflate_conn(to_server, &p, Config::default());
        let mask = mask_for(to_server);
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        // One compressor for all messages: with context takeover, later messages refer back.
        for (n, plan) in plans.iter().enumerate() {
            let (w, e) = build(plan, n, &mut tx, mask);
            wire.extend(w);
            expected.extend(e);
        }
        let (events, err) = feed_chunked(&mut conn, &wire, max_chunk, seed);
        prop_assert_eq!(err, None);
        prop_assert_eq!(&events, &expected);
        // Every ping was answered, with RSV1 clear.
        let pongs: Vec<WireFrame> = parse_frames(&drain(&mut conn));
        let pings = expected.iter().filter(|m| matches!(m, Message::Ping(_))).count();
        prop_assert_eq!(pongs.len(), pings);
        for f in &pongs {
            prop_assert_eq!(f.header.opcode, OpCode::Pong);
            prop_assert!(!f.header.rsv1);
        }
        prop_assert_eq!(conn.state(), State::Open);
    }
}

#[test]
fn fragmented_large_compressed_message_fed_in_tiny_chunks() {
    // A message larger than the inflater's output step, cut into many frames.
    for to_server in [true, false] {
        let p = DeflateParams::default();
        let mut tx = sender(&p, to_server, 6);
        let mut conn = deflate_conn(to_server, &p, Config::default());
        let payload = words(300_000, 4);
        let plan = Plan {
            text: true,
            payload,
            cuts: (1..20).map(|i| f64::from(i) / 20.0).collect(),
            pings: vec![true, false],
        };
        let (wire, expected) = build(&plan, 0, &mut tx, mask_for(to_server));
        let (events, err) = feed_chunked(&mut conn, &wire, 97, 42);
        assert_eq!(err, None);
        assert_eq!(events.len(), expected.len());
        for (got, want) in events.iter().zip(&expected) {
            assert_same(got, want, "large fragmented");
        }
    }
}

// ------------------------------------------------------------------ 3. RSV rules, corrupt data

fn reserved_bits() -> Error {
    Error::Protocol(ProtocolError::ReservedBits)
}

#[test]
fn rsv1_on_continuation_frame() {
    for to_server in [true, false] {
        let p = DeflateParams::default();
        let mask = mask_for(to_server);
        let mut tx = sender(&p, to_server, 1);
        let c = tx.compress(&words(2000, 5)).unwrap();
        let (a, b) = c.split_at(c.len() / 2);
        // A compressed message whose continuation also has RSV1.
        let mut wire = frame(OpCode::Binary, false, true, a, mask);
        wire.extend(frame(OpCode::Continuation, true, true, b, mask));
        let mut conn = deflate_conn(to_server, &p, Config::default());
        assert_eq!(fails_with(&mut conn, &wire, reserved_bits()), Some(1002));
        // An uncompressed message whose continuation has RSV1.
        let mut wire = frame(OpCode::Text, false, false, b"abc", mask);
        wire.extend(frame(OpCode::Continuation, true, true, b"def", mask));
        let mut conn = deflate_conn(to_server, &p, Config::default());
        assert_eq!(fails_with(&mut conn, &wire, reserved_bits()), Some(1002));
    }
}

#[test]
fn rsv1_on_control_frame() {
    for to_server in [true, false] {
        let mask = mask_for(to_server);
        for op in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
            // Alone, and between the frames of a compressed message.
            let mut conn = deflate_conn(to_server, &DeflateParams::default(), Config::default());
            assert_eq!(fails_with(&mut conn, &frame(op, true, true, b"", mask), reserved_bits()), Some(1002), "{op:?}");

            let mut tx = sender(&DeflateParams::default(), to_server, 1);
            let c = tx.compress(b"hello hello hello").unwrap();
            let mut wire = frame(OpCode::Text, false, true, &c, mask);
            wire.extend(frame(op, true, true, &[0x03, 0xe8], mask));
            wire.extend(frame(OpCode::Continuation, true, false, b"", mask));
            let mut conn = deflate_conn(to_server, &DeflateParams::default(), Config::default());
            assert_eq!(fails_with(&mut conn, &wire, reserved_bits()), Some(1002), "{op:?}");
        }
    }
}

#[test]
fn rsv1_without_deflate_negotiated() {
    for to_server in [true, false] {
        let mask = mask_for(to_server);
        let mut tx = sender(&DeflateParams::default(), to_server, 1);
        let c = tx.compress(b"hello hello hello").unwrap();
        for op in [OpCode::Text, OpCode::Binary] {
            let now = Instant::now();
            let mut conn = if to_server {
                Connection::server(Config::default(), now)
            } else {
                Connection::client(Config::default(), now, common::counting_keys())
            };
            assert!(!conn.is_deflate());
            assert_eq!(fails_with(&mut conn, &frame(op, true, true, &c, mask), reserved_bits()), Some(1002));
        }
    }
}

#[test]
fn rsv2_and_rsv3_are_never_allowed() {
    for to_server in [true, false] {
        let mask = mask_for(to_server);
        for (rsv2, rsv3) in [(true, false), (false, true), (true, true)] {
            for (op, rsv1) in
                [(OpCode::Text, false), (OpCode::Binary, true), (OpCode::Ping, false), (OpCode::Continuation, false)]
            {
                // For the continuation, a compressed message in progress.
                let mut tx = sender(&DeflateParams::default(), to_server, 1);
                let c = tx.compress(b"abcabcabc").unwrap();
                let mut wire = Vec::new();
                if op == OpCode::Continuation {
                    wire.extend(frame(OpCode::Binary, false, true, &c, mask));
                }
                // The payload: the compressed message (with RSV1) or anything (the header fails).
                let payload: &[u8] = if rsv1 { &c } else { b"xyz" };
                let mut h = FrameHeader::new(op, payload.len() as u64, mask);
                h.rsv1 = rsv1;
                h.rsv2 = rsv2;
                h.rsv3 = rsv3;
                wire.extend(encode_frame(h, payload));
                let mut conn = deflate_conn(to_server, &DeflateParams::default(), Config::default());
                let what = format!("{op:?} rsv2={rsv2} rsv3={rsv3}");
                assert_eq!(fails_with(&mut conn, &wire, reserved_bits()), Some(1002), "{what}");
            }
        }
    }
}

#[test]
fn corrupt_compressed_data() {
    let corrupt = Error::Protocol(ProtocolError::InvalidCompressedData);
    for to_server in [true, false] {
        let mask = mask_for(to_server);
        let cases: [(&str, &[u8]); 4] = [
            // BTYPE 11 is reserved.
            ("reserved block type", &[0xff, 0xff, 0xff]),
            // A stored block whose LEN and NLEN disagree.
            ("stored length mismatch", &[0x00, 0x05, 0x00, 0x00, 0x00]),
            // A back-reference before the start of the stream.
            ("distance too far", &[0x02, 0x02, 0x00, 0x00]),
            // A final empty stored block, then garbage starting a new stream.
            ("garbage after a final block", &[0x01, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff]),
        ];
        for (what, data) in cases {
            for op in [OpCode::Text, OpCode::Binary] {
                let mut conn = deflate_conn(to_server, &DeflateParams::default(), Config::default());
                assert_eq!(
                    fails_with(&mut conn, &frame(op, true, true, data, mask), corrupt.clone()),
                    Some(1007),
                    "{what}"
                );
            }
            // Detected in the first fragment, before the message ends.
            let mut conn = deflate_conn(to_server, &DeflateParams::default(), Config::default());
            let wire = frame(OpCode::Binary, false, true, data, mask);
            assert_eq!(fails_with(&mut conn, &wire, corrupt.clone()), Some(1007), "{what}, fragmented");
        }
        // Corrupt data after a valid message: the first message is delivered, then 1007.
        let mut tx = sender(&DeflateParams::default(), to_server, 1);
        let mut wire = frame(OpCode::Text, true, true, &tx.compress(b"fine").unwrap(), mask);
        wire.extend(frame(OpCode::Text, true, true, &[0xff, 0xff, 0xff], mask));
        let mut conn = deflate_conn(to_server, &DeflateParams::default(), Config::default());
        let (events, err) = feed_all(&mut conn, &wire, Instant::now());
        assert_eq!(events, [Message::text("fine")]);
        assert_eq!(err, Some(corrupt.clone()));
        assert_eq!(single_close_code(&drain(&mut conn)), Some(1007));
    }
}

// ------------------------------------------------------------------ 4. invalid UTF-8

#[test]
fn invalid_utf8_in_compressed_text() {
    let invalid = Error::Protocol(ProtocolError::InvalidUtf8);
    let cases: [(&str, Vec<u8>); 4] = [
        ("0xff", [b"abc".as_slice(), &[0xff], b"def"].concat()),
        ("overlong", [b"abc".as_slice(), &[0xc0, 0xaf]].concat()),
        ("surrogate", [multibyte_text(2).as_bytes(), &[0xed, 0xa0, 0x80]].concat()),
        ("truncated at the end", [multibyte_text(2).as_bytes(), &[0xe2, 0x82]].concat()),
    ];
    for to_server in [true, false] {
        let mask = mask_for(to_server);
        for (what, payload) in &cases {
            let mut tx = sender(&DeflateParams::default(), to_server, 1);
            let c = tx.compress(payload).unwrap();
            let mut conn = deflate_conn(to_server, &DeflateParams::default(), Config::default());
            assert_eq!(
                fails_with(&mut conn, &frame(OpCode::Text, true, true, &c, mask), invalid.clone()),
                Some(1007),
                "{what}"
            );
            // The same bytes as a binary message are fine.
            let mut tx = sender(&DeflateParams::default(), to_server, 1);
            let c = tx.compress(payload).unwrap();
            let mut conn = deflate_conn(to_server, &DeflateParams::default(), Config::default());
            let (events, err) = feed_all(&mut conn, &frame(OpCode::Binary, true, true, &c, mask), Instant::now());
            assert_eq!((events, err), (vec![Message::binary(payload.clone())], None), "{what}");
        }
    }
}

#[test]
fn invalid_utf8_in_compressed_text_fails_fast() {
    // The bad byte is near the start of a 64 KiB message; its compressed bytes are cut into four
    // frames. The error must come while the first frame arrives, without waiting for the rest.
    let mut payload = multibyte_text(1).into_bytes();
    payload.extend_from_slice(&[0xf8, 0x88, 0x80, 0x80, 0x80]);
    payload.extend(words(64 << 10, 6));
    for level in [0u32, 1, 6, 9] {
        for to_server in [true, false] {
            let mask = mask_for(to_server);
            let mut tx = sender(&DeflateParams::default(), to_server, level);
            let c = tx.compress(&payload).unwrap();
            let q = c.len() / 4;
            let frames: Vec<Vec<u8>> = (0..4)
                .map(|k| {
                    let end = if k == 3 { c.len() } else { (k + 1) * q };
                    let op = if k == 0 { OpCode::Text } else { OpCode::Continuation };
                    frame(op, k == 3, k == 0, &c[k * q..end], mask)
                })
                .collect();
            let what = format!("level {level}, to server {to_server}");
            // Fed a byte at a time: the error comes before the first frame is even complete.
            let mut conn = deflate_conn(to_server, &DeflateParams::default(), Config::default());
            let mut buf = BytesMut::new();
            let mut fed = 0;
            let err = loop {
                assert!(fed < frames[0].len(), "{what}: the whole first frame arrived without an error");
                buf.extend_from_slice(&frames[0][fed..fed + 1]);
                fed += 1;
                match conn.read_event(&mut buf, Instant::now()) {
                    Ok(None) => {}
                    Ok(Some(ev)) => panic!("{what}: unexpected {}", short(&ev)),
                    Err(e) => break e,
                }
            };
            assert_eq!(err, Error::Protocol(ProtocolError::InvalidUtf8), "{what}");
            assert_eq!(conn.state(), State::Closed);
            assert_eq!(single_close_code(&drain(&mut conn)), Some(1007), "{what}");
            // The remaining frames are ignored.
            let (events, err) = feed_all(&mut conn, &frames[1..].concat(), Instant::now());
            assert_eq!((events, err), (vec![], None));
            assert!(drain(&mut conn).is_empty());

            // Fed frame by frame: fails on the first one.
            let mut conn = deflate_conn(to_server, &DeflateParams::default(), Config::default());
            let (events, err) = feed_all(&mut conn, &frames[0], Instant::now());
            assert!(events.is_empty());
            assert_eq!(err, Some(Error::Protocol(ProtocolError::InvalidUtf8)), "{what}");
        }
    }
}

#[test]
fn valid_utf8_split_across_compressed_fragments() {
    // Multibyte characters whose bytes end up in different frames, and (fed a byte at a time)
    // in different inflate calls.
    let text = multibyte_text(50);
    for to_server in [true, false] {
        let cuts = (1..7).map(|i| f64::from(i) / 7.0).collect();
        let plan = Plan { text: true, payload: text.clone().into_bytes(), cuts, pings: vec![false] };
        let mut tx = sender(&DeflateParams::default(), to_server, 0);
        let (wire, expected) = build(&plan, 0, &mut tx, mask_for(to_server));
        let mut conn = deflate_conn(to_server, &DeflateParams::default(), Config::default());
        assert_eq!(feed_chunked(&mut conn, &wire, 1, 1), (expected, None));
    }
}

// ------------------------------------------------------------------ 6. context takeover

/// Sends `msg` twice from one side; returns the two compressed payloads.
fn send_twice(pair: &mut Pair, from_client: bool, msg: &Message) -> (Vec<u8>, Vec<u8>) {
    let a = single_data_frame(&exchange(pair, from_client, msg, "first"), "first");
    let b = single_data_frame(&exchange(pair, from_client, msg, "second"), "second");
    assert!(a.header.rsv1 && b.header.rsv1);
    (a.payload, b.payload)
}

/// The second of two identical messages is a few back-references into the first.
fn assert_much_smaller(first: &[u8], second: &[u8]) {
    assert!(second.len() * 10 < first.len(), "first {} bytes, second {}", first.len(), second.len());
}

#[test]
fn context_takeover_shrinks_repeated_messages() {
    let msg = Message::binary(words(4000, 11));
    // Level 6 searches hash chains and finds the whole previous message. (Level 1, zlib-rs's
    // "quick" strategy, looks at one hash candidate only, which here is a nearby short match
    // within the same message: the second copy still shrinks, but only a little.)
    let cfg = with(|c| c.level = 6);
    let (mut pair, p) = deflate_pair(&cfg, &cfg);
    assert_eq!(p, params(false, false, 15, 15));
    for from_client in [true, false] {
        let (first, second) = send_twice(&mut pair, from_client, &msg);
        assert_much_smaller(&first, &second);
    }
    ping_and_close(&mut pair);

    let (mut pair, _) = deflate_pair(&DeflateConfig::default(), &DeflateConfig::default());
    for from_client in [true, false] {
        let (first, second) = send_twice(&mut pair, from_client, &msg);
        assert!(second.len() < first.len(), "level 1: first {} bytes, second {}", first.len(), second.len());
    }
    ping_and_close(&mut pair);
}

#[test]
fn no_context_takeover_repeats_the_same_bytes() {
    let msg = Message::text(String::from_utf8(words(4000, 12)).unwrap());
    for level in [1, 6, 9] {
        let client = with(|c| {
            c.level = level;
            c.server_no_context_takeover = true;
        });
        let (mut pair, p) = deflate_pair(&client, &with(|c| c.level = level));
        assert_eq!(p, params(true, false, 15, 15));
        // The server resets its context: identical messages compress identically.
        let (first, second) = send_twice(&mut pair, false, &msg);
        assert_eq!(first, second, "level {level}");
        assert!(first.len() < msg.payload().len() / 2);
        // The client keeps its own.
        let (first, second) = send_twice(&mut pair, true, &msg);
        assert_ne!(first, second, "level {level}");
        if level > 1 {
            assert_much_smaller(&first, &second);
        }
        ping_and_close(&mut pair);

        // And the other way round.
        let server = with(|c| {
            c.level = level;
            c.client_no_context_takeover = true;
        });
        let (mut pair, p) = deflate_pair(&with(|c| c.level = level), &server);
        assert_eq!(p, params(false, true, 15, 15));
        let (first, second) = send_twice(&mut pair, true, &msg);
        assert_eq!(first, second, "level {level}");
        let (first, second) = send_twice(&mut pair, false, &msg);
        assert_ne!(first, second, "level {level}");
        if level > 1 {
            assert_much_smaller(&first, &second);
        }
        ping_and_close(&mut pair);
    }
}
