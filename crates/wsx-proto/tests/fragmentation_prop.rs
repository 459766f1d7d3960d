//! Property tests: however a message is fragmented and however its bytes are chunked by the
//! transport, the server reassembles exactly the original, and chunking never changes the events.

mod common;

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use common::{drain, encode_frame, feed_all, parse_frames, Rng};
use proptest::prelude::*;
use proptest::sample::Index;
use wsx_proto::frame::{FrameHeader, OpCode};
use wsx_proto::{Config, Connection, Error, Message, MessageRef, State, Utf8Bytes};

/// The original message: text with multibyte characters, or binary.
#[derive(Debug, Clone)]
enum Original {
    Text(String),
    Binary(Vec<u8>),
}

fn original() -> impl Strategy<Value = Original> {
    let ch = prop_oneof![
        3 => any::<char>(),
        1 => Just('é'),
        1 => Just('€'),
        1 => Just('🎉'),
        1 => Just('a'),
    ];
    prop_oneof![
        prop::collection::vec(ch, 0..150).prop_map(|cs| Original::Text(cs.into_iter().collect())),
        prop::collection::vec(any::<u8>(), 0..600).prop_map(Original::Binary),
    ]
}

/// Feeds `wire` to `conn` in random chunks of `1..=max_chunk` bytes, calling `read_event` after
/// each until `Ok(None)`; keeps feeding after an error. Returns every event and error in order.
fn feed_chunked(
    conn: &mut Connection,
    wire: &[u8],
    max_chunk: usize,
    seed: u64,
    now: Instant,
) -> Vec<Result<Message, Error>> {
    feed_chunked_with(conn, wire, max_chunk, seed, |conn, buf| conn.read_event(buf, now))
}

/// [`feed_chunked`] through [`Connection::read_ref`], each lent message copied out as it comes.
fn feed_chunked_ref(
    conn: &mut Connection,
    wire: &[u8],
    max_chunk: usize,
    seed: u64,
    now: Instant,
) -> Vec<Result<Message, Error>> {
    feed_chunked_with(conn, wire, max_chunk, seed, |conn, buf| {
        Ok(conn.read_ref(buf, now)?.map(|event| match event {
            MessageRef::Text(t) => Message::text(t.to_owned()),
            MessageRef::Binary(b) => Message::binary(b.to_vec()),
            MessageRef::Owned(m) => m,
        }))
    })
}

/// The loop of [`feed_chunked`], with `read` for the read call.
fn feed_chunked_with(
    conn: &mut Connection,
    wire: &[u8],
    max_chunk: usize,
    seed: u64,
    read: impl Fn(&mut Connection, &mut BytesMut) -> Result<Option<Message>, Error>,
) -> Vec<Result<Message, Error>> {
    let mut rng = Rng::new(seed);
    let mut buf = BytesMut::new();
    let mut results = Vec::new();
    let mut rest = wire;
    while !rest.is_empty() {
        let n = rng.chunk_len(max_chunk).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match read(conn, &mut buf) {
                Ok(Some(ev)) => results.push(Ok(ev)),
                Ok(None) => break,
                Err(e) => {
                    results.push(Err(e));
                    break;
                }
            }
        }
    }
    results
}

fn feed_whole(conn: &mut Connection, wire: &[u8], now: Instant) -> Vec<Result<Message, Error>> {
    let (events, err) = feed_all(conn, wire, now);
    events.into_iter().map(Ok).chain(err.map(Err)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn fragmented_message_with_interleaved_pings(
        original in original(),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
        pings in prop::collection::vec(
            (any::<Index>(), prop::collection::vec(any::<u8>(), 0..=125)), 0..5),
        keys in prop::collection::vec(any::<[u8; 4]>(), 1..4),
        max_chunk in 1usize..40,
        seed: u64,
    ) {
        let (data, text) = match &original {
            Original::Text(s) => (s.as_bytes().to_vec(), true),
            Original::Binary(b) => (b.clone(), false),
        };
        // Fragment boundaries anywhere, including inside a character; repeats make empty fragments.
        let mut bounds: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
        bounds.sort_unstable();
        bounds.insert(0, 0);
        bounds.push(data.len());
        let fragments: Vec<&[u8]> = bounds.windows(2).map(|w| &data[w[0]..w[1]]).collect();
        // Pings go before fragment i (i == fragments.len(): after the last one).
        let mut pings: Vec<(usize, Vec<u8>)> =
            pings.into_iter().map(|(i, p)| (i.index(fragments.len() + 1), p)).collect();
        pings.sort_by_key(|(i, _)| *i); // stable: keeps the generated order among equals

        let mut key_n = 0;
        let mut next_key = || { key_n += 1; keys[key_n % keys.len()] };
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        let mut pending_pings = pings.iter().peekable();
        for (i, frag) in fragments.iter().enumerate() {
            while let Some((_, p)) = pending_pings.next_if(|(at, _)| *at == i) {
                wire.extend(encode_frame(FrameHeader::new(OpCode::Ping, p.len() as u64, Some(next_key())), p));
                expected.push(Message::Ping(Bytes::from(p.clone())));
            }
            let opcode = match (i, text) {
                (0, true) => OpCode::Text,
                (0, false) => OpCode::Binary,
                _ => OpCode::Continuation,
            };
            let mut h = FrameHeader::new(opcode, frag.len() as u64, Some(next_key()));
            h.fin = i + 1 == fragments.len();
            wire.extend(encode_frame(h, frag));
        }
        expected.push(match &original {
            Original::Text(s) => Message::text(s.as_str()),
            Original::Binary(b) => Message::binary(b.clone()),
        });
        for (_, p) in pending_pings {
            wire.extend(encode_frame(FrameHeader::new(OpCode::Ping, p.len() as u64, Some(next_key())), p));
            expected.push(Message::Ping(Bytes::from(p.clone())));
        }

        let now = Instant::now();
        let mut server = Connection::server(Config::default(), now);
        let results = feed_chunked(&mut server, &wire, max_chunk, seed, now);
        let events: Vec<Message> = results.into_iter().collect::<Result<_, _>>().map_err(|e| {
            TestCaseError::fail(format!("unexpected error {e:?}"))
        })?;
        prop_assert_eq!(&events, &expected);
        prop_assert_eq!(server.state(), State::Open);

        // Exactly one pong per ping, in order, with the ping's payload, unmasked.
        let out = parse_frames(&drain(&mut server));
        prop_assert_eq!(out.len(), pings.len());
        for (frame, (_, ping)) in out.iter().zip(&pings) {
            prop_assert_eq!(frame.header.opcode, OpCode::Pong);
            prop_assert_eq!(frame.header.mask, None);
            prop_assert_eq!(&frame.payload, ping);
        }
    }

    #[test]
    fn fragmented_message_sent_by_a_client_connection(
        original in original(),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
        max_chunk in 1usize..64,
        seed: u64,
    ) {
        let (data, text) = match &original {
            Original::Text(s) => (Bytes::from(s.clone()), true),
            Original::Binary(b) => (Bytes::from(b.clone()), false),
        };
        let mut bounds: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
        bounds.sort_unstable();
        bounds.insert(0, 0);
        bounds.push(data.len());
        let now = Instant::now();
        let mut client = Connection::client(Config::default(), now, common::counting_keys());
        let n = bounds.len() - 1;
        for (i, w) in bounds.windows(2).enumerate() {
            client.send_fragment(text, data.slice(w[0]..w[1]), i + 1 == n).unwrap();
            if i % 2 == 0 {
                client.send(Message::Ping(Bytes::from(vec![i as u8]))).unwrap();
            }
        }
        let wire = drain(&mut client);
        let mut server = Connection::server(Config::default(), now);
        let events: Vec<Message> = feed_chunked(&mut server, &wire, max_chunk, seed, now)
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(|e| TestCaseError::fail(format!("unexpected error {e:?}")))?;
        let message = events.iter().find(|m| m.is_data()).cloned();
        let expected = if text { Message::Text(Utf8Bytes::try_from(data).unwrap()) } else { Message::Binary(data) };
        prop_assert_eq!(message, Some(expected));
        let pings: Vec<Message> = events.into_iter().filter(|m| matches!(m, Message::Ping(_))).collect();
        let expected_pings: Vec<Message> =
            (0..n).step_by(2).map(|i| Message::Ping(Bytes::from(vec![i as u8]))).collect();
        prop_assert_eq!(pings, expected_pings);
    }

    #[test]
    fn chunking_never_changes_the_events(
        frames in any_frames(),
        max_chunk in 1usize..30,
        seed: u64,
    ) {
        let wire: Vec<u8> = frames.iter().flat_map(|f| f.encode()).collect();
        let now = Instant::now();
        agrees_with_whole_feed(|| Connection::server(small_limits(), now), &wire, now, |conn| {
            feed_chunked(conn, &wire, max_chunk, seed, now)
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Borrowed reads see what owned reads see: the same messages, errors, replies and state,
    /// however the bytes arrive (whole frames take the lending path, the rest the general one).
    #[test]
    fn read_ref_matches_read_event(
        frames in any_frames(),
        max_chunk in prop_oneof![1usize..30, 200usize..2000],
        seed: u64,
    ) {
        let wire: Vec<u8> = frames.iter().flat_map(|f| f.encode()).collect();
        let now = Instant::now();
        agrees_with_whole_feed(|| Connection::server(small_limits(), now), &wire, now, |conn| {
            feed_chunked_ref(conn, &wire, max_chunk, seed, now)
        })?;
    }

    /// The same in the client role: the server's frames unmasked (and the one the fault
    /// "unmasked" masked instead, which a client must refuse), byte-at-a-time reads included.
    #[test]
    fn read_ref_matches_read_event_in_the_client_role(
        frames in any_frames(),
        max_chunk in prop_oneof![1usize..3, 1usize..30, 200usize..2000],
        seed: u64,
    ) {
        let wire: Vec<u8> = frames
            .into_iter()
            .map(|mut f| {
                f.key = if f.key.is_some() { None } else { Some([9, 8, 7, 6]) };
                f
            })
            .flat_map(|f| f.encode())
            .collect();
        let now = Instant::now();
        agrees_with_whole_feed(
            || Connection::client(small_limits(), now, common::counting_keys()),
            &wire,
            now,
            |conn| feed_chunked_ref(conn, &wire, max_chunk, seed, now),
        )?;
    }
}

/// Feeds `wire` whole to one connection made by `make` and through `feed` to another: both give
/// the same events and errors, end in the same state and queue the same replies, byte for byte
/// (pongs, an echoed close or a failure's close).
fn agrees_with_whole_feed(
    make: impl Fn() -> Connection,
    wire: &[u8],
    now: Instant,
    feed: impl FnOnce(&mut Connection) -> Vec<Result<Message, Error>>,
) -> Result<(), TestCaseError> {
    let mut whole = make();
    let mut other = make();
    let expected = feed_whole(&mut whole, wire, now);
    let got = feed(&mut other);
    prop_assert_eq!(&got, &expected);
    prop_assert_eq!(other.state(), whole.state());
    prop_assert_eq!(drain(&mut other), drain(&mut whole));
    Ok(())
}

fn small_limits() -> Config {
    let mut c = Config::default();
    c.max_frame_size = 200;
    c.max_message_size = 400;
    c.max_fragments = 5;
    c
}

/// A frame a (possibly misbehaving) client might send.
#[derive(Debug, Clone)]
struct RawFrame {
    fin: bool,
    rsv: u8,
    opcode: u8,
    key: Option<[u8; 4]>,
    payload: Vec<u8>,
}

impl RawFrame {
    fn encode(&self) -> Vec<u8> {
        // Built by hand so that reserved opcodes can be encoded too.
        let mut v = vec![(u8::from(self.fin) << 7) | (self.rsv << 4) | self.opcode];
        let mask_bit = if self.key.is_some() { 0x80 } else { 0 };
        let len = self.payload.len();
        match len {
            0..=125 => v.push(mask_bit | len as u8),
            126..=0xFFFF => {
                v.push(mask_bit | 126);
                v.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                v.push(mask_bit | 127);
                v.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        let start = v.len() + if self.key.is_some() { 4 } else { 0 };
        if let Some(key) = self.key {
            v.extend_from_slice(&key);
        }
        v.extend_from_slice(&self.payload);
        if let Some(key) = self.key {
            wsx_proto::mask::apply_mask(&mut v[start..], key, 0);
        }
        v
    }
}

fn any_payload(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => "\\PC{0,40}".prop_map(String::into_bytes).prop_filter("fits", move |b| b.len() <= max),
        2 => prop::collection::vec(any::<u8>(), 0..=max.min(60)),
        1 => prop::collection::vec(any::<u8>(), 0..=max),
    ]
}

/// One step of a client's frame sequence, before the opcodes are fixed up.
#[derive(Debug, Clone)]
enum Step {
    /// A data frame: the opcode follows from whether a message is in progress.
    Data { binary: bool, fin: bool, payload: Vec<u8> },
    /// A control frame (ping, pong, close).
    Control { opcode: u8, payload: Vec<u8> },
}

/// A deliberate fault injected into one frame.
#[derive(Debug, Clone)]
enum Fault {
    Opcode(u8),
    FlipFin,
    Rsv(u8),
    Unmask,
    Corrupt(Index, u8),
    Oversize,
}

fn any_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (any::<bool>(), prop_oneof![3 => Just(true), 2 => Just(false)], any_payload(150))
            .prop_map(|(binary, fin, payload)| Step::Data { binary, fin, payload }),
        3 => (prop_oneof![4 => Just(0x9u8), 2 => Just(0xA)], any_payload(125))
            .prop_map(|(opcode, payload)| Step::Control { opcode, payload }),
        1 => (prop_oneof![Just(1000u16), Just(1001), Just(4000), Just(1005), Just(0)], "\\PC{0,10}")
            .prop_map(|(code, reason)| {
                let mut payload = code.to_be_bytes().to_vec();
                payload.extend(reason.into_bytes());
                Step::Control { opcode: 0x8, payload }
            }),
    ]
}

fn any_fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        (0u8..=0xF).prop_map(Fault::Opcode),
        Just(Fault::FlipFin),
        (1u8..8).prop_map(Fault::Rsv),
        Just(Fault::Unmask),
        (any::<Index>(), prop_oneof![Just(0xFFu8), Just(0xC0), Just(0x80), Just(0xED), any::<u8>()])
            .prop_map(|(i, b)| Fault::Corrupt(i, b)),
        Just(Fault::Oversize),
    ]
}

/// A mostly well-formed sequence of client frames, with up to two faults injected.
fn any_frames() -> impl Strategy<Value = Vec<RawFrame>> {
    (
        prop::collection::vec(any_step(), 0..12),
        prop::collection::vec((any::<Index>(), any_fault()), 0..=2),
        any::<[u8; 4]>(),
    )
        .prop_map(|(steps, faults, key)| {
            let mut in_message = false;
            let mut frames: Vec<RawFrame> = steps
                .into_iter()
                .enumerate()
                .map(|(i, step)| {
                    let key = Some([key[0], key[1], key[2], key[3].wrapping_add(i as u8)]);
                    match step {
                        Step::Data { binary, fin, payload } => {
                            let opcode = match (in_message, binary) {
                                (true, _) => 0x0,
                                (false, false) => 0x1,
                                (false, true) => 0x2,
                            };
                            in_message = !fin;
                            RawFrame { fin, rsv: 0, opcode, key, payload }
                        }
                        Step::Control { opcode, payload } => RawFrame { fin: true, rsv: 0, opcode, key, payload },
                    }
                })
                .collect();
            if !frames.is_empty() {
                for (at, fault) in faults {
                    let n = frames.len();
                    let f = &mut frames[at.index(n)];
                    match fault {
                        Fault::Opcode(op) => f.opcode = op,
                        Fault::FlipFin => f.fin = !f.fin,
                        Fault::Rsv(rsv) => f.rsv = rsv,
                        Fault::Unmask => f.key = None,
                        Fault::Corrupt(i, b) if !f.payload.is_empty() => {
                            let i = i.index(f.payload.len());
                            f.payload[i] = b;
                        }
                        Fault::Corrupt(..) => f.payload = vec![0xC3],
                        Fault::Oversize => f.payload.resize(f.payload.len().max(126) + 75, b'x'),
                    }
                }
            }
            frames
        })
}
