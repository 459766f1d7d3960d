//! Close frames: the payload a peer sends (code and reason), through the connection's public
//! read path, and the close frame the application asks for.
//!
//! The outcome is predicted by an oracle written from RFC 6455 §5.5.1, §7.4 and §8.1 (not from
//! wsx-proto's code): an empty payload is a close without a code; one byte is a protocol error
//! (1002); a code that may not appear on the wire is a protocol error (1002); a reason that is not
//! UTF-8 is invalid payload (1007); more than 125 bytes, or FIN clear, is a protocol error. A
//! valid close is handed out as it was sent and echoed with the same code. Whatever we write is a
//! valid close frame, and the connection is closed afterwards.
//!
//! Input layout: byte 0 flags (bit 0: we are the client; bit 1: test the application's
//! `close()` instead; bit 2: FIN clear; bit 3: deliver byte by byte), bytes 1-4 the mask key,
//! then the payload (for `close()`: two bytes of code, then the reason).
#![no_main]

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use wsx_fuzz::{encode_frame, is_valid_on_wire_oracle, mask_keys, parse_frames, Input};
use wsx_proto::frame::{CloseCode, OpCode, MAX_CONTROL_PAYLOAD};
use wsx_proto::{CloseFrame, Config, Connection, Error, Message, ProtocolError, State, Utf8Bytes};

/// What RFC 6455 says must happen to a close frame with this payload.
fn expected(payload: &[u8], fin: bool) -> Result<Option<(u16, &str)>, (ProtocolError, u16)> {
    // Both are decided by the header; when both apply, either may be reported (wsx-proto
    // checks FIN first).
    if !fin {
        return Err((ProtocolError::FragmentedControlFrame, 1002));
    }
    if payload.len() > MAX_CONTROL_PAYLOAD {
        return Err((ProtocolError::ControlFrameTooLong, 1002));
    }
    match payload {
        [] => Ok(None),
        [_] => Err((ProtocolError::InvalidClosePayload, 1002)),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !is_valid_on_wire_oracle(code) {
                return Err((ProtocolError::InvalidCloseCode(code), 1002));
            }
            match std::str::from_utf8(reason) {
                Ok(reason) => Ok(Some((code, reason))),
                Err(_) => Err((ProtocolError::InvalidUtf8, 1007)),
            }
        }
    }
}

/// The reason bytes of an application close input (after the two bytes of code).
fn p_reason(payload: &[u8]) -> &[u8] {
    payload.get(2..).unwrap_or_default()
}

fn output(conn: &mut Connection) -> Vec<u8> {
    use bytes::Buf;
    let out = conn.output();
    out.copy_to_bytes(out.remaining()).to_vec()
}

fn new_connection(client: bool, now: Instant) -> Connection {
    if client {
        Connection::client(Config::default(), now, mask_keys())
    } else {
        Connection::server(Config::default(), now)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let key = [input.byte(), input.byte(), input.byte(), input.byte()];
    let payload = input.rest();
    let client = flags & 1 != 0;
    let now = Instant::now();
    let mut conn = new_connection(client, now);

    if flags & 2 != 0 {
        // The application's close(): refused unless the code may be sent and the reason fits.
        let mut p = Input::new(payload);
        let code = p.u16();
        let reason = p.rest();
        let Ok(reason) = Utf8Bytes::try_from_bytes(Bytes::copy_from_slice(reason)) else {
            assert!(std::str::from_utf8(reason).is_err(), "valid UTF-8 refused");
            return;
        };
        assert_eq!(reason.as_bytes(), p_reason(payload), "the reason changed");
        let frame = CloseFrame::new(CloseCode(code), reason.clone());
        let allowed = is_valid_on_wire_oracle(code) && reason.len() <= 123;
        let result = conn.close(Some(frame), now);
        assert_eq!(result.is_ok(), allowed, "close({code}, {} bytes): {result:?}", reason.len());
        let wire = output(&mut conn);
        if !allowed {
            assert!(matches!(result, Err(Error::Usage(_))));
            assert!(wire.is_empty() && conn.state() == State::Open && !conn.close_sent());
            return;
        }
        assert_eq!(conn.state(), State::Closing);
        let frames = parse_frames(&wire);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].header.opcode, OpCode::Close);
        assert_eq!(frames[0].payload[..2], code.to_be_bytes());
        assert_eq!(&frames[0].payload[2..], reason.as_bytes());
        return;
    }

    // The peer's close frame.
    let fin = flags & 4 == 0;
    let mask = (!client).then_some(key);
    let frame = encode_frame(OpCode::Close, fin, false, mask, payload);
    let mut events = Vec::new();
    let mut error = None;
    let mut buf = BytesMut::new();
    let step = if flags & 8 != 0 { 1 } else { frame.len().max(1) };
    for piece in frame.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match conn.read_event(&mut buf, now) {
                Ok(Some(event)) => events.push(event),
                Ok(None) => break,
                Err(e) => {
                    assert!(error.is_none(), "two errors");
                    error = Some(e);
                    break;
                }
            }
        }
    }
    assert_eq!(conn.state(), State::Closed, "a close frame (valid or not) leaves the connection closed");
    let frames = parse_frames(&output(&mut conn));
    assert_eq!(frames.len(), 1, "exactly one close frame answers it: {frames:?}");
    assert_eq!(frames[0].header.opcode, OpCode::Close);
    let answer = wsx_fuzz::check_close_payload(&frames[0].payload);

    match expected(payload, fin) {
        Ok(close) => {
            assert!(error.is_none(), "a valid close frame refused: {error:?}");
            let frame = close.map(|(code, reason)| CloseFrame::new(CloseCode(code), reason));
            assert_eq!(events, [Message::Close(frame.clone())]);
            assert_eq!(conn.close_received(), Some(&frame));
            assert!(conn.is_closed_cleanly());
            // The echo carries the peer's code and its reason, byte for byte.
            assert_eq!(answer, close.map(|(code, _)| code), "the echo has another code");
            if let Some((_, reason)) = close {
                let echoed = &frames[0].payload[2..];
                assert_eq!(echoed, reason.as_bytes(), "the echo has another reason");
            }
        }
        Err((kind, code)) => {
            assert!(events.is_empty(), "events before a refused close: {events:?}");
            assert_eq!(error, Some(Error::Protocol(kind)), "for payload {payload:02x?}");
            assert_eq!(answer, Some(code), "the close code answering {kind:?}");
            assert_eq!(conn.close_received(), None);
        }
    }
    // Closed stays closed.
    let mut more = BytesMut::from(&frame[..]);
    assert_eq!(conn.read_event(&mut more, now), Ok(None));
    assert!(output(&mut conn).is_empty());
});
