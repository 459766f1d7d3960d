//! The client side of the opening handshake: an arbitrary byte stream as the server's response
//! to our request, read in arbitrary pieces with `ClientHandshake::receive`.
//!
//! Invariants: no panic; while the head is incomplete, and on an error, the buffer is left as it
//! was; errors are the client-side ones `receive` documents, with the configured limits, and a
//! refusal's body is at most `MAX_ERROR_BODY_BYTES`; a successful outcome consumed exactly its
//! head (at most `max_head_bytes`, at most `max_headers` headers), is a `101` with our
//! `Sec-WebSocket-Accept`, a subprotocol we offered (or none) and only extensions we offered; if
//! it accepts permessage-deflate, `client_accept` agrees with our offer or refuses with a
//! negotiation error.
//!
//! Input layout: byte 0 flags (bit 0: offer subprotocols; bit 1: offer permessage-deflate; bits
//! 2-7 the deflate offer's parameters), byte 1 the limits, byte 2 N then N chunk lengths, the rest
//! the stream.
#![no_main]

use bytes::BytesMut;
use http::StatusCode;
use libfuzzer_sys::fuzz_target;
use wsx_fuzz::{chunk_len, Input, CLIENT_KEY_RANDOM};
use wsx_proto::deflate::{DeflateConfig, DeflateError};
use wsx_proto::handshake::{
    ClientHandshake, ClientRequestConfig, HandshakeError, HandshakeLimits, MAX_ERROR_BODY_BYTES,
};

const PROTOCOLS: [&str; 2] = ["chat", "superchat.v2"];

fn check_error(err: &HandshakeError, limits: &HandshakeLimits, offered_protocols: bool) {
    match err {
        HandshakeError::HeadTooLarge { limit } => assert_eq!(*limit, limits.max_head_bytes),
        HandshakeError::TooManyHeaders { limit } => assert_eq!(*limit, limits.max_headers),
        HandshakeError::UnexpectedStatus { status, body, .. } => {
            assert_ne!(*status, StatusCode::SWITCHING_PROTOCOLS);
            assert!(body.len() <= MAX_ERROR_BODY_BYTES);
        }
        // One we offered is refused only as part of several.
        HandshakeError::UnexpectedProtocol(p) => {
            assert!(!(offered_protocols && PROTOCOLS.contains(&p.as_str())), "{p:?} refused")
        }
        HandshakeError::Malformed(_)
        | HandshakeError::MissingUpgrade
        | HandshakeError::MissingConnectionUpgrade
        | HandshakeError::BadAccept
        | HandshakeError::UnexpectedExtension(_) => {}
        other => panic!("receive returned an error it does not document: {other:?}"),
    }
    let _ = err.to_string();
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let limits_byte = input.byte();
    let chunks = input.short_slice().to_vec();
    let stream = input.rest();
    let limits = HandshakeLimits {
        max_head_bytes: 64 + 64 * usize::from(limits_byte & 0x1f),
        max_headers: 1 + usize::from(limits_byte >> 3),
    };

    let mut deflate = DeflateConfig::default();
    deflate.server_no_context_takeover = flags & 4 != 0;
    deflate.client_no_context_takeover = flags & 8 != 0;
    deflate.server_max_window_bits = 8 + ((flags >> 4) & 7);
    deflate.client_max_window_bits = if flags & 0x80 != 0 { 10 } else { 15 };
    let mut config = ClientRequestConfig::default();
    if flags & 1 != 0 {
        config.protocols = PROTOCOLS.iter().map(|p| p.to_string()).collect();
    }
    let offers_deflate = flags & 2 != 0;
    if offers_deflate {
        config.extensions.push(deflate.client_offer());
    }
    let uri: http::Uri = "ws://fuzz.invalid/".parse().expect("valid URI");
    let mut client = ClientHandshake::new(&uri, config, CLIENT_KEY_RANDOM).expect("valid request");
    let expected_accept = client.expected_accept().to_owned();

    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut pieces = chunks.iter().cycle();
    loop {
        let n = pieces.next().map_or(stream.len(), |&c| chunk_len(c)).min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        let before = buf.clone();
        match client.receive(&mut buf, &limits) {
            Ok(None) => {
                assert_eq!(buf, before, "an incomplete read changed the buffer");
                if fed == stream.len() {
                    return;
                }
            }
            Err(e) => {
                assert_eq!(buf, before, "a failed read changed the buffer");
                check_error(&e, &limits, flags & 1 != 0);
                return;
            }
            Ok(Some(outcome)) => {
                let consumed = before.len() - buf.len();
                assert_eq!(&before[consumed..], &buf[..], "the read took bytes after the head");
                let head = &before[..consumed];
                assert!(head.len() <= limits.max_head_bytes);
                assert!(head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n"));
                let response = &outcome.response;
                assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
                assert!(response.headers().len() <= limits.max_headers);
                let accept = response.headers().get("sec-websocket-accept").expect("an accept header");
                assert_eq!(accept.to_str().ok().map(str::trim), Some(expected_accept.as_str()));
                if let Some(p) = &outcome.protocol {
                    assert!(PROTOCOLS.contains(&p.as_str()) && flags & 1 != 0, "protocol {p:?} accepted");
                }
                if let Some(ext) = &outcome.extensions {
                    // Every element names an extension we offered.
                    if !offers_deflate {
                        assert_eq!(DeflateConfig::default().client_accept(ext), Ok(None), "{ext:?}");
                        return;
                    }
                    match deflate.client_accept(ext) {
                        Ok(Some(p)) => {
                            // A server that leaves out the window we asked for uses 15 bits
                            // (tolerated: we can always decode it).
                            let asked = deflate.server_max_window_bits;
                            assert!(p.server_max_window_bits <= asked || p.server_max_window_bits == 15);
                            assert!(p.client_max_window_bits <= deflate.client_max_window_bits);
                            assert!(p.server_max_window_bits >= 8 && p.client_max_window_bits >= 8);
                            assert!(!deflate.client_no_context_takeover || p.client_no_context_takeover);
                        }
                        Ok(None) | Err(DeflateError::Negotiation(_)) => {}
                        Err(e) => panic!("client_accept failed with {e:?}"),
                    }
                }
                return;
            }
        }
    }
});
