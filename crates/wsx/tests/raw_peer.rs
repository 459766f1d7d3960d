//! Our server against a hand-written client that controls exactly how bytes arrive: frames
//! dribbled in small pieces while `recv` is cancelled again and again, a burst of frames in one
//! write answered by an echo loop (corking), and a reply sent while a frame is half received.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;
use wsx::{CloseCode, CloseFrame, Message, ServerConfig};

/// One message of the cancel-safety script, as frames on the wire and as the server should see it.
struct Scripted {
    wire: Vec<u8>,
    expect: Message,
}

fn key(i: usize) -> [u8; 4] {
    let b = (i as u8).wrapping_mul(37);
    [b ^ 0x5A, b.wrapping_add(1), 0xA5, b.rotate_left(3)]
}

fn script() -> Vec<Scripted> {
    let mut out = Vec::new();
    let mut add = |opcode: u8, payload: Vec<u8>, expect: Message| {
        let i = out.len();
        out.push(Scripted { wire: masked_frame(opcode, true, &payload, key(i)), expect });
    };
    add(OP_TEXT, b"hello".to_vec(), Message::text("hello"));
    let s = "multi-byte: é ✓ 🦀 日本 — split everywhere";
    add(OP_TEXT, s.as_bytes().to_vec(), Message::text(s));
    add(OP_BINARY, Vec::new(), Message::binary(Vec::new()));
    add(OP_TEXT, Vec::new(), Message::text(""));
    for (n, seed) in [(1, 1), (125, 2), (126, 3), (1000, 4), (65_535, 5), (70_000, 6)] {
        let p = pattern(n, seed);
        add(OP_BINARY, p.clone(), Message::binary(p));
    }
    add(OP_PING, b"mid-stream".to_vec(), Message::Ping(wsx::Bytes::from_static(b"mid-stream")));
    let big_text = "ñ🦀".repeat(3000);
    add(OP_TEXT, big_text.as_bytes().to_vec(), Message::text(big_text.clone()));

    // A fragmented text message with a ping between its fragments; a 4-byte character is split
    // across the first two fragments.
    let frag_text = "frag🦀ment".as_bytes();
    let i = out.len();
    let mut wire = masked_frame(OP_TEXT, false, &frag_text[..6], key(i));
    wire.extend(masked_frame(OP_PING, true, b"between", key(i + 1)));
    out.push(Scripted { wire, expect: Message::Ping(wsx::Bytes::from_static(b"between")) });
    let mut wire = masked_frame(OP_CONT, false, &frag_text[6..9], key(i + 2));
    wire.extend(masked_frame(OP_CONT, true, &frag_text[9..], key(i + 3)));
    out.push(Scripted { wire, expect: Message::text("frag🦀ment") });
    out
}

#[tokio::test]
async fn recv_in_select_with_dribbled_frames_loses_nothing() {
    deadline(async {
        let (addr, server) = spawn_server(ServerConfig::default(), |mut ws| async move {
            let mut got = Vec::new();
            let mut ticks = 0u64;
            loop {
                tokio::select! {
                    m = ws.recv() => match m {
                        Some(Ok(m)) => got.push(m),
                        Some(Err(e)) => panic!("recv failed: {e}"),
                        None => break,
                    },
                    _ = tokio::time::sleep(Duration::from_micros(200)) => ticks += 1,
                }
            }
            (got, ticks)
        })
        .await;
        let (mut s, mut buf) = raw_handshake(addr).await;

        let script = script();
        let mut wire: Vec<u8> = script.iter().flat_map(|m| m.wire.iter().copied()).collect();
        wire.extend(masked_frame(OP_CLOSE, true, &close_payload(4000, "done"), [1, 2, 3, 4]));
        // Pieces of varying size, each its own write with a pause in between, so that headers,
        // masking keys, payloads and UTF-8 sequences are cut at many different places.
        let sizes = [1usize, 2, 3, 5, 1, 7, 13, 64, 2, 333, 1, 4096, 3, 9000];
        let mut pos = 0;
        for (n, size) in sizes.iter().cycle().enumerate() {
            if pos == wire.len() {
                break;
            }
            let end = (pos + size).min(wire.len());
            s.write_all(&wire[pos..end]).await.unwrap();
            pos = end;
            if n % 2 == 0 || *size < 64 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }

        // The client sees the pongs for both pings and the echo of its close (code and reason).
        let frames = within(Duration::from_secs(10), "server's answers", read_frames_to_eof(&mut s, &mut buf)).await;
        let summary: Vec<(u8, Vec<u8>)> = frames.into_iter().map(|f| (f.opcode, f.payload)).collect();
        assert_eq!(
            summary,
            vec![
                (OP_PONG, b"mid-stream".to_vec()),
                (OP_PONG, b"between".to_vec()),
                (OP_CLOSE, close_payload(4000, "done")),
            ]
        );

        let (got, ticks) = server.await.unwrap();
        let mut expect: Vec<Message> = script.into_iter().map(|m| m.expect).collect();
        expect.push(Message::Close(Some(CloseFrame::new(CloseCode(4000), "done"))));
        assert_eq!(got.len(), expect.len(), "messages lost or added");
        for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
            assert!(
                g == e,
                "message {i} differs: got {} bytes, expected {} bytes",
                g.payload().len(),
                e.payload().len()
            );
        }
        // The timer branch won many times, so recv was cancelled many times mid-message.
        assert!(ticks >= 20, "the timer fired only {ticks} times");
    })
    .await
}

#[tokio::test]
async fn burst_of_frames_is_echoed_intact() {
    deadline(async {
        let (addr, server) = spawn_server(ServerConfig::default(), |mut ws| async move {
            let mut echoed = 0usize;
            while let Some(m) = ws.recv().await {
                let m = m.unwrap();
                if m.is_data() {
                    ws.send(m).await.unwrap();
                    echoed += 1;
                }
            }
            echoed
        })
        .await;
        let (mut s, mut buf) = raw_handshake(addr).await;

        let payload = |i: usize| -> (u8, Vec<u8>) {
            if i % 4 == 3 {
                (OP_BINARY, pattern(i * 3, i as u64))
            } else {
                (OP_TEXT, format!("message #{i} {}", "·".repeat(i % 17)).into_bytes())
            }
        };
        let mut burst = Vec::new();
        for i in 0..100 {
            let (op, p) = payload(i);
            burst.extend(masked_frame(op, true, &p, key(i)));
        }
        s.write_all(&burst).await.unwrap();

        for i in 0..100 {
            let f = within(Duration::from_secs(5), "echo", read_frame(&mut s, &mut buf)).await;
            let f = f.unwrap_or_else(|| panic!("connection ended after {i} echoes"));
            let (op, p) = payload(i);
            assert_eq!((f.fin, f.opcode), (true, op), "echo {i}");
            assert!(f.payload == p, "echo {i} corrupted");
        }

        s.write_all(&masked_frame(OP_CLOSE, true, &close_payload(1000, ""), [9, 8, 7, 6])).await.unwrap();
        let rest = within(Duration::from_secs(5), "close echo", read_frames_to_eof(&mut s, &mut buf)).await;
        assert_eq!(rest, vec![RawFrame { fin: true, opcode: OP_CLOSE, payload: close_payload(1000, "") }]);
        assert_eq!(server.await.unwrap(), 100);
    })
    .await
}

/// `send` defers its write only when a whole received frame is waiting in the read buffer. A
/// frame that is half received, and whose header the connection has already consumed, is not
/// one, even if its payload bytes happen to look like a complete frame.
#[tokio::test]
async fn send_after_cancelled_recv_mid_frame_is_written_at_once() {
    deadline(async {
        let (release, released) = oneshot::channel::<()>();
        let (addr, server) = spawn_server(ServerConfig::default(), |mut ws| async move {
            let r = tokio::time::timeout(Duration::from_millis(200), ws.recv()).await;
            assert!(r.is_err(), "recv returned {r:?} for a half-received frame");
            ws.send_text("reply").await.unwrap();
            // Do not call recv (which would also flush) until the client has seen the reply.
            let _ = released.await;
            let mut got = Vec::new();
            while let Some(m) = ws.recv().await {
                got.push(m.unwrap());
            }
            got
        })
        .await;
        let (mut s, mut buf) = raw_handshake(addr).await;

        // A 10-byte binary frame; its first two payload bytes unmask to 0x82 0x00, which would
        // parse as a complete, empty binary frame.
        let payload = [0x82u8, 0x00, 1, 2, 3, 4, 5, 6, 7, 8];
        let wire = masked_frame(OP_BINARY, true, &payload, [0x11, 0x22, 0x33, 0x44]);
        let head = 2 + 4;
        s.write_all(&wire[..head + 2]).await.unwrap();

        let reply = within(Duration::from_secs(2), "the reply", read_frame(&mut s, &mut buf)).await;
        assert_eq!(reply, Some(RawFrame { fin: true, opcode: OP_TEXT, payload: b"reply".to_vec() }));
        let _ = release.send(());

        s.write_all(&wire[head + 2..]).await.unwrap();
        s.write_all(&masked_frame(OP_CLOSE, true, &[], [0; 4])).await.unwrap();
        let rest = within(Duration::from_secs(5), "close echo", read_frames_to_eof(&mut s, &mut buf)).await;
        assert_eq!(rest, vec![RawFrame { fin: true, opcode: OP_CLOSE, payload: Vec::new() }]);
        assert_eq!(server.await.unwrap(), vec![Message::binary(payload.to_vec()), Message::Close(None)]);
    })
    .await
}
