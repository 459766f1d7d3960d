//! The frame header codec and masking: arbitrary bytes.
//!
//! `FrameHeader::parse` never panics; a header it accepts re-encodes to a header that parses
//! back to the same value, no longer than the original (a peer may use a longer length encoding
//! than needed); every shorter prefix of it is "incomplete"; an error names the reserved opcode
//! or the invalid 64-bit length that caused it. `apply_mask` (SIMD) agrees with the bytewise
//! oracle for any length, key and offset, and masking twice gives the input back.
//!
//! Input: the bytes to parse; the first byte also gives the mask offset, the next four the key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsx_proto::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};
use wsx_proto::mask::{apply_mask, apply_mask_bytewise};
use wsx_proto::ProtocolError;

fuzz_target!(|data: &[u8]| {
    match FrameHeader::parse(data) {
        Ok(Some((header, n))) => {
            assert!(n <= MAX_HEADER_LEN && n <= data.len() && n >= 2);
            assert!(header.payload_len >> 63 == 0);
            assert_eq!(OpCode::from_u8(header.opcode.as_u8()), Some(header.opcode));
            let mut encoded = [0u8; MAX_HEADER_LEN];
            let m = header.encode(&mut encoded);
            assert_eq!(m, header.encoded_len());
            assert!(m <= n, "re-encoded header is longer ({m}) than the parsed one ({n})");
            assert_eq!(FrameHeader::parse(&encoded[..m]), Ok(Some((header, m))));
            for k in 0..n {
                assert_eq!(FrameHeader::parse(&data[..k]), Ok(None), "a prefix of {k} bytes of a valid header");
            }
        }
        Ok(None) => {
            assert!(data.len() < MAX_HEADER_LEN, "{} bytes and still incomplete", data.len());
        }
        Err(ProtocolError::ReservedOpcode(op)) => {
            assert_eq!(op, data[0] & 0x0f);
            assert!(OpCode::from_u8(op).is_none());
        }
        Err(ProtocolError::InvalidLength) => {
            assert_eq!(data[1] & 0x7f, 127);
            assert!(data[2] & 0x80 != 0);
        }
        Err(e) => panic!("unexpected error from the header parser: {e:?}"),
    }

    // Masking, from any offset, against the bytewise oracle.
    if data.len() >= 5 {
        let offset = usize::from(data[0]);
        let key = [data[1], data[2], data[3], data[4]];
        let mut fast = data[5..].to_vec();
        let mut slow = fast.clone();
        apply_mask(&mut fast, key, offset);
        apply_mask_bytewise(&mut slow, key, offset);
        assert_eq!(fast, slow, "SIMD masking differs from the oracle");
        apply_mask(&mut fast, key, offset);
        assert_eq!(fast, &data[5..], "masking twice is not the identity");
    }
});
