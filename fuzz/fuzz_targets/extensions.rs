//! `Sec-WebSocket-Extensions` parsing and permessage-deflate negotiation (RFC 7692 §7.1): the
//! server's choice among arbitrary offers, the client's check of an arbitrary answer, and the
//! two ends' agreement for arbitrary configurations.
//!
//! Invariants: no panic; whatever the server agrees to is within 8..=15 bits, within its own
//! configuration, and a header value that the default client (which offers
//! `client_max_window_bits`) accepts with exactly the same parameters; whatever a client accepts
//! is within its offer (windows no larger than it asked for or offered, its own
//! `client_no_context_takeover` kept); for any two configurations, the server accepts the
//! client's offer and the client accepts the server's answer, and both agree on the parameters.
//!
//! Input layout: bytes 0-3 a client and a server configuration (`DeflateSetup`), the rest the
//! header text (lossy UTF-8), one header line per `\n`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsx_fuzz::{DeflateSetup, Input};
use wsx_proto::deflate::{DeflateConfig, DeflateError, DeflateParams, MAX_WINDOW_BITS, MIN_WINDOW_BITS};

fn check_window_bits(p: &DeflateParams) {
    for bits in [p.server_max_window_bits, p.client_max_window_bits] {
        assert!((MIN_WINDOW_BITS..=MAX_WINDOW_BITS).contains(&bits), "{p:?}");
    }
}

/// The server's answer is valid: within its configuration, a valid header value, and accepted
/// by a client that offered `client_max_window_bits` with exactly these parameters.
fn check_server_answer(server: &DeflateConfig, params: &DeflateParams, answer: &str) {
    check_window_bits(params);
    assert!(params.server_max_window_bits <= server.server_max_window_bits.max(MIN_WINDOW_BITS));
    assert!(params.client_max_window_bits <= MAX_WINDOW_BITS);
    assert!(!server.server_no_context_takeover || params.server_no_context_takeover);
    assert!(!server.client_no_context_takeover || params.client_no_context_takeover);
    assert!(http::HeaderValue::from_str(answer).is_ok(), "{answer:?} is not a header value");
    assert!(answer.starts_with("permessage-deflate"), "{answer:?}");
    assert_eq!(DeflateConfig::default().client_accept(answer), Ok(Some(*params)), "answer {answer:?}");
}

/// A client accepted `params`: they are within what it offered.
fn check_client_accepted(client: &DeflateConfig, params: &DeflateParams) {
    check_window_bits(params);
    // A server that leaves out the window we asked for uses 15 bits (tolerated: we can always
    // decode it); one it states is at most what we asked for.
    let asked = client.server_max_window_bits;
    assert!(params.server_max_window_bits <= asked || params.server_max_window_bits == MAX_WINDOW_BITS, "{params:?}");
    assert!(params.client_max_window_bits <= client.client_max_window_bits.max(MIN_WINDOW_BITS), "{params:?}");
    assert!(!client.client_no_context_takeover || params.client_no_context_takeover);
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let setup = DeflateSetup::from_bytes(input.byte() | 3, input.byte());
    let other = DeflateSetup::from_bytes(input.byte() | 3, input.byte());
    let (Some(client), Some(server)) = (setup.client, other.server) else { unreachable!("both flags set") };
    let text = String::from_utf8_lossy(input.rest());
    let lines: Vec<String> = text.split('\n').map(str::to_owned).collect();

    // The server facing arbitrary offers.
    if let Some((params, answer)) = server.server_negotiate(&lines) {
        check_server_answer(&server, &params, &answer);
    }

    // The client facing an arbitrary answer.
    match client.client_accept(&text) {
        Ok(Some(params)) => check_client_accepted(&client, &params),
        Ok(None) => assert!(!text.to_ascii_lowercase().contains("permessage-deflate")),
        Err(DeflateError::Negotiation(_)) => {}
        Err(e) => panic!("client_accept failed with {e:?}"),
    }

    // Two arbitrary configurations always agree.
    let offer = client.client_offer();
    let (params, answer) = server
        .server_negotiate(std::slice::from_ref(&offer))
        .unwrap_or_else(|| panic!("the server declined our own offer {offer:?}"));
    check_server_answer(&server, &params, &answer);
    let accepted = client.client_accept(&answer).unwrap_or_else(|e| panic!("{offer:?} → {answer:?}: {e}"));
    assert_eq!(accepted, Some(params), "the ends disagree: {offer:?} → {answer:?}");
    check_client_accepted(&client, &params);
});
