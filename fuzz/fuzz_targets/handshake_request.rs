//! The server side of the opening handshake: an arbitrary byte stream as the client's request,
//! read in arbitrary pieces with `RequestReader`, then checked and answered.
//!
//! Invariants: no panic; while the head is incomplete, and on an error, the buffer is left as it
//! was; an error is one of the three the reader documents, with the configured limit, and maps
//! to a 400 or 431 rejection; a request that is read consumed exactly its head (at most
//! `max_head_bytes`, ending with an empty line) and has at most `max_headers` headers; reading in
//! pieces gives the same result as reading everything at once (`read_request`). A request that
//! `check_request` accepts has a valid key and gives a well-formed `101` response; a rejection is
//! a 4xx with a body and a correct `Content-Length`; the extension offers go through
//! `server_negotiate` without panicking.
//!
//! Input layout: byte 0 the head limit (16 + 8 × byte), byte 1 the header limit (1 + byte % 32),
//! byte 2 N then N bytes of chunk lengths (`chunk_len`, cycled), the rest the stream.
#![no_main]

use bytes::BytesMut;
use http::{Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use wsx_fuzz::{chunk_len, Input};
use wsx_proto::deflate::DeflateConfig;
use wsx_proto::handshake::{
    accept_response, check_request, read_request, write_response, HandshakeError, HandshakeLimits, RequestReader,
};

/// A comparable summary of a read's result.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Incomplete,
    Request { consumed: usize, head: String },
    Error(String),
}

fn summary(result: &Result<Option<Request<()>>, HandshakeError>, consumed: usize) -> Outcome {
    match result {
        Ok(None) => Outcome::Incomplete,
        Ok(Some(req)) => Outcome::Request { consumed, head: format!("{req:?}") },
        Err(e) => Outcome::Error(format!("{e:?}")),
    }
}

fn check_error(err: &HandshakeError, limits: &HandshakeLimits) {
    match err {
        HandshakeError::HeadTooLarge { limit } => assert_eq!(*limit, limits.max_head_bytes),
        HandshakeError::TooManyHeaders { limit } => assert_eq!(*limit, limits.max_headers),
        HandshakeError::Malformed(_) => {}
        other => panic!("read_request returned an error it does not document: {other:?}"),
    }
    let rejection = err.to_rejection().expect("a request error has a response");
    assert!(
        rejection.status == StatusCode::BAD_REQUEST || rejection.status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "{}",
        rejection.status
    );
}

fn check_request_head(req: &Request<()>, head: &[u8], limits: &HandshakeLimits) {
    assert!(head.len() <= limits.max_head_bytes, "a head of {} bytes read", head.len());
    assert!(head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n"), "the head does not end with an empty line");
    assert!(req.headers().len() <= limits.max_headers, "{} headers read", req.headers().len());

    match check_request(req) {
        Ok(upgrade) => {
            assert_eq!(upgrade.key.len(), 24);
            let negotiated = DeflateConfig::default().server_negotiate(&upgrade.extensions);
            let protocol = upgrade.protocols.first().map(String::as_str);
            let response =
                accept_response(&upgrade, protocol, negotiated.as_ref().map(|(_, r)| r.as_str()), &Default::default());
            let mut out = BytesMut::new();
            write_response(&response, &mut out);
            assert!(out.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
            assert!(out.ends_with(b"\r\n\r\n"));
            assert_eq!(out.windows(4).filter(|w| w == b"\r\n\r\n").count(), 1, "a header value broke the head");
        }
        Err(rejection) => {
            assert!(rejection.status.is_client_error(), "{}", rejection.status);
            assert!(!rejection.body.is_empty());
            let mut out = BytesMut::new();
            rejection.write_to(&mut out);
            let text = String::from_utf8(out.to_vec()).expect("a rejection is text");
            let (head, body) = text.split_once("\r\n\r\n").expect("a rejection has a head");
            assert_eq!(body, rejection.body);
            assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let limits = HandshakeLimits {
        max_head_bytes: 16 + 8 * usize::from(input.byte()),
        max_headers: 1 + usize::from(input.byte() % 32),
    };
    let chunks = input.short_slice().to_vec();
    let stream = input.rest();

    // All at once.
    let mut whole = BytesMut::from(stream);
    let once = read_request(&mut whole, &limits);
    let once = summary(&once, stream.len() - whole.len());

    // In pieces.
    let mut reader = RequestReader::new();
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut pieces = chunks.iter().cycle();
    let mut result;
    loop {
        let n = pieces.next().map_or(stream.len(), |&c| chunk_len(c)).min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        let before = buf.clone();
        result = reader.read(&mut buf, &limits);
        match &result {
            Ok(None) => {
                assert_eq!(buf, before, "an incomplete read changed the buffer");
                if fed == stream.len() {
                    break;
                }
            }
            Ok(Some(req)) => {
                assert!(buf.len() <= before.len());
                let consumed = before.len() - buf.len();
                assert_eq!(&before[consumed..], &buf[..], "the read took bytes after the head");
                check_request_head(req, &before[..consumed], &limits);
                break;
            }
            Err(e) => {
                assert_eq!(buf, before, "a failed read changed the buffer");
                check_error(e, &limits);
                break;
            }
        }
    }
    // Reading in pieces gives the same request or error as reading at once; it may also wait
    // for more (the parser runs again only once the buffer has doubled or the head's end is
    // there), but never where the whole stream holds a complete request.
    let consumed = fed - buf.len();
    match summary(&result, consumed) {
        Outcome::Incomplete => assert!(!matches!(once, Outcome::Request { .. }), "a request missed: {once:?}"),
        pieces => assert_eq!(pieces, once, "reading in pieces differs from reading at once"),
    }
});
