//! The permessage-deflate inflate path with a message-size budget, on arbitrary compressed data,
//! and compression round trips.
//!
//! Invariants, inflating arbitrary bytes: no panic; after every call, successful or not, the
//! output holds at most `budget` bytes (+1 on `TooLarge`, the byte that detects it) and its
//! capacity never grew past `budget + 1`; `TooLarge` names the budget; the errors are `TooLarge`
//! and `Corrupt` only.
//!
//! Round trips (bit 3 of byte 0): messages compressed by one end inflate to themselves at the
//! other, in any chunking, with any window and context takeover; when the sender resets its
//! context, a budget of exactly the message's size passes and one byte less fails with
//! `TooLarge`.
//!
//! Input layout: byte 0 flags (bit 0: we inflate as the server; bits 1-2: no context takeover of
//! the server, client; bit 3: round-trip mode; bits 4-7: the compression level), byte 1 the
//! window bits, bytes 2-3 the budget, byte 4 N then N op bytes (`chunk_len` of the low six bits;
//! bit 7 ends the message after the chunk), then the data.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wsx_fuzz::{chunk_len, Input};
use wsx_proto::deflate::{DeflateError, DeflateParams, PerMessageDeflate};

/// Checks the output buffer after an inflate call with `budget`.
fn check_out(out: &BytesMut, budget: usize, result: &Result<(), DeflateError>) {
    match result {
        Ok(()) => assert!(out.len() <= budget, "{} bytes inflated under a budget of {budget}", out.len()),
        Err(DeflateError::TooLarge { limit }) => {
            assert_eq!(*limit, budget);
            assert!(out.len() <= budget.saturating_add(1), "{} bytes inflated past a budget of {budget}", out.len());
        }
        Err(DeflateError::Corrupt(_)) => {}
        Err(e) => panic!("inflating failed with {e:?}"),
    }
    assert!(out.capacity() <= budget.saturating_add(1), "capacity {} for a budget of {budget}", out.capacity());
}

/// Splits `data` into messages, each a list of chunks, as the op bytes say.
fn messages<'a>(data: &'a [u8], ops: &[u8]) -> Vec<Vec<&'a [u8]>> {
    let ops = if ops.is_empty() { &[0xff][..] } else { ops };
    let (mut all, mut current, mut rest) = (Vec::new(), Vec::new(), data);
    for &op in ops.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(chunk_len(op).min(rest.len()));
        current.push(chunk);
        rest = tail;
        if op & 0x80 != 0 {
            all.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        all.push(current);
    }
    all
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let bits = input.byte();
    let budget = usize::from(input.u16());
    let ops = input.short_slice().to_vec();
    let data = input.rest();

    let is_server = flags & 1 != 0;
    let params = DeflateParams {
        server_no_context_takeover: flags & 2 != 0,
        client_no_context_takeover: flags & 4 != 0,
        server_max_window_bits: 8 + (bits & 7),
        client_max_window_bits: 8 + ((bits >> 3) & 7),
    };
    let level = u32::from(flags >> 4);
    let mut receiver = PerMessageDeflate::new(&params, is_server, level, 0);

    if flags & 8 == 0 {
        // Arbitrary bytes as compressed messages.
        for message in messages(data, &ops) {
            let mut out = BytesMut::new();
            let mut result = Ok(());
            for chunk in message {
                result = receiver.decompress_chunk(chunk, &mut out, budget);
                check_out(&out, budget, &result);
                if result.is_err() {
                    break;
                }
            }
            if result.is_ok() {
                let result = receiver.finish_message(&mut out, budget);
                check_out(&out, budget, &result);
            }
        }
        return;
    }

    // Round trips: the other end compresses each message whole; we inflate it in pieces.
    let mut sender = PerMessageDeflate::new(&params, !is_server, level, 0);
    let sender_resets = if is_server { params.client_no_context_takeover } else { params.server_no_context_takeover };
    for message in messages(data, &ops) {
        let original: Vec<u8> = message.concat();
        let Some(compressed) = sender.compress(&original) else {
            continue; // sent uncompressed (allowed): nothing to inflate
        };
        if sender_resets {
            // A fresh inflater for each message: the budget is exact.
            let exact = inflate(&mut PerMessageDeflate::new(&params, is_server, level, 0), &compressed, original.len());
            assert_eq!(exact.as_deref(), Ok(&original[..]), "a budget of exactly the message's size");
            if !original.is_empty() {
                let short = original.len() - 1;
                let refused = inflate(&mut PerMessageDeflate::new(&params, is_server, level, 0), &compressed, short);
                assert_eq!(refused, Err(DeflateError::TooLarge { limit: short }), "one byte less");
            }
        }
        // In the chunking of the ops (reusing them over the compressed bytes).
        let mut out = BytesMut::new();
        for piece in compressed.chunks(chunk_len(ops.first().copied().unwrap_or(0x3f))) {
            receiver.decompress_chunk(piece, &mut out, usize::MAX).expect("our own compressed data inflates");
        }
        receiver.finish_message(&mut out, usize::MAX).expect("our own compressed data inflates");
        assert_eq!(&out[..], &original[..], "a round trip changed the message");
    }
});

fn inflate(d: &mut PerMessageDeflate, compressed: &[u8], budget: usize) -> Result<Vec<u8>, DeflateError> {
    let mut out = BytesMut::new();
    d.decompress_chunk(compressed, &mut out, budget)?;
    d.finish_message(&mut out, budget)?;
    Ok(out.to_vec())
}
