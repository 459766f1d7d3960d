//! The `permessage-deflate` extension (RFC 7692): negotiation and per-message compression, without I/O.
//!
//! # Negotiation
//!
//! * **Client**: put [`DeflateConfig::client_offer`] in
//!   `ClientRequestConfig::extensions`; once the handshake succeeded, pass the server's
//!   `Sec-WebSocket-Extensions` value (`ClientOutcome::extensions`, or `""` when absent) to
//!   [`DeflateConfig::client_accept`]. `Ok(None)` means the server declined compression; an error
//!   means the response breaks RFC 7692 §7.1 and the client must fail the connection.
//! * **Server**: pass every `Sec-WebSocket-Extensions` value of the request
//!   (`UpgradeRequest::extensions`) to [`DeflateConfig::server_negotiate`]; if it returns
//!   `Some((params, response))`, send `response` as the `extensions` argument of `accept_response`.
//!
//! Either way the result is a [`DeflateParams`], from which [`PerMessageDeflate::new`] builds the
//! per-connection state.
//!
//! # Messages
//!
//! A compressed message has RSV1 set on its first frame only (RFC 7692 §6). Sending: compress the
//! whole payload with [`PerMessageDeflate::compress`] and frame the result, or send the payload
//! uncompressed with RSV1 clear when it returns `None`. Receiving a message whose first frame has
//! RSV1 set: feed each frame's payload (or any split of it) to
//! [`PerMessageDeflate::decompress_chunk`], then call [`PerMessageDeflate::finish_message`] after
//! the final frame. Both append the inflated bytes to the caller's buffer and never let it grow past
//! the given budget (plus one byte), so a small compressed message cannot make us allocate a huge
//! one ("compression bomb"). Control frames are never compressed.
//!
//! # Windows of 8 bits
//!
//! zlib (and zlib-rs, which follows it) refuses an 8-bit window for raw deflate, and `flate2`
//! accepts only 9 to 15. Both directions still work when 8 is negotiated:
//!
//! * Inflating: a peer limited to a 256-byte window never refers further back than 256 bytes, so a
//!   512-byte (9-bit) inflater decodes its stream exactly.
//! * Compressing: we compress with a 9-bit window. zlib's deflate never emits a distance larger
//!   than `window size - MIN_LOOKAHEAD` (512 - 262 = 250 bytes for 9 bits), so every back-reference
//!   fits in the 256-byte window the peer allocated. zlib itself relies on the same fact: it turns
//!   a requested window of 8 into 9 for zlib-wrapped streams. A test decodes our output with an
//!   independent decoder and checks that no distance exceeds 256, for every level.
//!
//! So offers and responses with a window of 8 are accepted like any other.
//!
//! # Memory
//!
//! Measured with zlib-rs (flate2's defaults: memory level 8), whatever the compression level: a
//! compressor takes 380,032 bytes with a 15-bit window, 265,344 with 12 bits and 251,008 with 9;
//! an inflater takes 47,552 bytes for any window, since zlib-rs always allocates a 32 KiB inflate
//! window. A compressor whose context is reset after each message (our side's
//! `*_no_context_takeover`) is handed back after each message to a small per-thread pool of reset
//! states and taken from it by the next [`PerMessageDeflate::compress`] of any connection on that
//! thread; an inflater likewise when the peer's context is reset. A connection holds nothing
//! before its first compressed message and, with no context takeover both ways, nothing between
//! messages, while messages allocate no zlib state: the pool holds at most a few states per thread.

use bytes::{Bytes, BytesMut};
use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};

use crate::headers::{is_token, split_outside_quotes, trim_ows};

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const EXTENSION_NAME: &str = "permessage-deflate";

/// The smallest LZ77 window RFC 7692 allows: 2^8 = 256 bytes.
pub const MIN_WINDOW_BITS: u8 = 8;

/// The largest LZ77 window RFC 7692 allows, and the default: 2^15 = 32 KiB.
pub const MAX_WINDOW_BITS: u8 = 15;

/// The empty stored block a sync flush ends with; stripped by the sender and appended by the
/// receiver (RFC 7692 §7.2.1, §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The smallest window flate2 and zlib accept for raw deflate.
const ZLIB_MIN_WINDOW_BITS: u8 = 9;

/// The inflate output buffer grows by at least this much at a time.
const MIN_GROW: usize = 16 * 1024;

/// The largest slice of spare capacity zeroed for one inflate call.
const MAX_STEP: usize = 1024 * 1024;

/// Everything that can go wrong with `permessage-deflate`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeflateError {
    /// The server's response is not a valid acceptance of our offer (RFC 7692 §7.1): the client
    /// must fail the WebSocket connection.
    #[error("invalid permessage-deflate negotiation: {0}")]
    Negotiation(String),
    /// The decompressed message would be larger than the budget (close with 1009).
    #[error("decompressed message is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The budget that was exceeded.
        limit: usize,
    },
    /// The compressed data is not valid DEFLATE (close with 1007).
    #[error("invalid compressed data: {0}")]
    Corrupt(String),
}

/// Our configuration of `permessage-deflate`, for either role.
///
/// Window sizes outside 8..=15 are clamped into that range and levels above 9 are treated as 9.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeflateConfig {
    /// The zlib compression level, 0 (store only) to 9 (smallest output). Default 1.
    ///
    /// On zlib-rs, level 1 (fixed Huffman codes) is by far the cheapest for the small messages
    /// WebSocket usually carries: with context takeover, a 150-byte JSON message takes about
    /// 0.2 µs at level 1 against 1.7 to 2.8 µs at levels 2 to 9 (each flush builds new Huffman
    /// tables), for output only about 7% larger than at 6. On large messages level 1 is also
    /// fastest but its output is about half as large again as level 6's; raise it for bulk data.
    pub level: u32,
    /// The largest window (as a base-2 logarithm, 8..=15) the server may compress with. Default 15.
    ///
    /// As a client, a value below 15 is requested from the server (RFC 7692 means it to save the
    /// receiver's memory, but a zlib-rs inflater costs the same for every window); as a server, we
    /// compress with at most this window and say so in the response.
    pub server_max_window_bits: u8,
    /// The largest window (as a base-2 logarithm, 8..=15) the client may compress with. Default 15.
    ///
    /// As a client, we compress with at most this window and announce it in the offer; as a
    /// server, a value below 15 is imposed on clients that offered `client_max_window_bits`
    /// (RFC 7692 §7.1.2.2 allows no more: a client that did not offer it may use a 32 KiB window).
    pub client_max_window_bits: u8,
    /// Ask (as a client) or decide (as a server) that the server resets its compression context
    /// after every message. Default `false`.
    pub server_no_context_takeover: bool,
    /// Ask (as a server) or decide (as a client) that the client resets its compression context
    /// after every message. Default `false`.
    pub client_no_context_takeover: bool,
    /// Messages shorter than this many bytes are sent uncompressed. Default 0: compress every
    /// message, even one that does not shrink (with context takeover even tiny messages shrink
    /// when they repeat earlier ones). Above 0, a message that compression would not shrink while
    /// our context is reset after each message is also sent uncompressed.
    pub compression_threshold: usize,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            level: 1,
            server_max_window_bits: MAX_WINDOW_BITS,
            client_max_window_bits: MAX_WINDOW_BITS,
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            compression_threshold: 0,
        }
    }
}

/// What was agreed for one connection: the parameters of RFC 7692 §7.1 in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compression context after every message.
    pub server_no_context_takeover: bool,
    /// The client resets its compression context after every message.
    pub client_no_context_takeover: bool,
    /// The largest window (base-2 logarithm, 8..=15) the server compresses with.
    pub server_max_window_bits: u8,
    /// The largest window (base-2 logarithm, 8..=15) the client compresses with.
    pub client_max_window_bits: u8,
}

impl Default for DeflateParams {
    /// `permessage-deflate` without parameters: context takeover both ways, 32 KiB windows.
    fn default() -> Self {
        DeflateParams {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: MAX_WINDOW_BITS,
            client_max_window_bits: MAX_WINDOW_BITS,
        }
    }
}

impl DeflateConfig {
    /// Client: the offer for `Sec-WebSocket-Extensions`, e.g.
    /// `permessage-deflate; client_max_window_bits`.
    ///
    /// `client_max_window_bits` is always offered (with our limit as its value when it is below
    /// 15), so the server may shrink our window; the other parameters appear when configured.
    pub fn client_offer(&self) -> String {
        self.offer().to_header()
    }

    /// Client: checks the server's `Sec-WebSocket-Extensions` value against our offer (RFC 7692
    /// §7.1) and returns what was agreed.
    ///
    /// `Ok(None)` when the value lists no extension (the server declined). Errors, upon which the
    /// client must fail the connection: another extension, more than one `permessage-deflate`, a
    /// malformed value, an unknown or repeated parameter, a window outside 8..=15 or written other
    /// than as a plain decimal, a `server_max_window_bits` larger than we asked for, a
    /// `client_max_window_bits` without a value or larger than we offered.
    ///
    /// Tolerated: `server_no_context_takeover` or `server_max_window_bits` we did not ask for, and
    /// a response that leaves out one we asked for (we then expect the server to keep its context
    /// or use a 32 KiB window, which we can always decode).
    pub fn client_accept(&self, response_header: &str) -> Result<Option<DeflateParams>, DeflateError> {
        let mut found = None;
        for element in parse_list(response_header) {
            let element = element.map_err(DeflateError::Negotiation)?;
            if !element.name.eq_ignore_ascii_case(EXTENSION_NAME) {
                return Err(DeflateError::Negotiation(format!(
                    "server accepted extension {:?}, which we do not support",
                    element.name
                )));
            }
            if found.is_some() {
                return Err(DeflateError::Negotiation("server accepted permessage-deflate twice".to_owned()));
            }
            found = Some(element);
        }
        let Some(element) = found else { return Ok(None) };
        let response = Offer::parse(&element.params, true).map_err(DeflateError::Negotiation)?;
        self.offer().check_response(&response).map(Some).map_err(DeflateError::Negotiation)
    }

    /// Server: picks the first acceptable `permessage-deflate` offer among the request's
    /// `Sec-WebSocket-Extensions` values (one string per header line, each a comma-separated list)
    /// and returns the agreed parameters with the value to send back, e.g.
    /// `permessage-deflate; server_no_context_takeover; client_max_window_bits=10`.
    ///
    /// Offers with an unknown, repeated or invalid parameter are declined (RFC 7692 §7.1) and the
    /// next one is tried; other extensions are ignored. `None` when no offer is acceptable.
    pub fn server_negotiate(&self, request_headers: &[String]) -> Option<(DeflateParams, String)> {
        request_headers
            .iter()
            .flat_map(|value| parse_list(value))
            .filter_map(Result::ok)
            .filter(|element| element.name.eq_ignore_ascii_case(EXTENSION_NAME))
            .find_map(|element| Offer::parse(&element.params, false).ok())
            .map(|offer| self.accept_offer(&offer))
    }

    /// The offer [`client_offer`](Self::client_offer) sends.
    fn offer(&self) -> Offer {
        let server = clamp_bits(self.server_max_window_bits);
        let client = clamp_bits(self.client_max_window_bits);
        Offer {
            server_no_context_takeover: self.server_no_context_takeover,
            client_no_context_takeover: self.client_no_context_takeover,
            server_max_window_bits: (server < MAX_WINDOW_BITS).then_some(server),
            client_max_window_bits: Some((client < MAX_WINDOW_BITS).then_some(client)),
        }
    }

    /// Server: the response to a valid offer. Every valid offer is acceptable: windows of 8 to 15
    /// bits are all supported.
    fn accept_offer(&self, offer: &Offer) -> (DeflateParams, String) {
        let server_cfg = clamp_bits(self.server_max_window_bits);
        let server_bits = offer.server_max_window_bits.map_or(server_cfg, |asked| asked.min(server_cfg));
        // The client's window can only be limited if it offered client_max_window_bits; we then
        // state the limit explicitly (even when it is the client's own value), so that the
        // response fully describes what both sides use.
        let client_bits = match offer.client_max_window_bits {
            None => MAX_WINDOW_BITS,
            Some(own) => own.unwrap_or(MAX_WINDOW_BITS).min(clamp_bits(self.client_max_window_bits)),
        };
        let response = Offer {
            server_no_context_takeover: offer.server_no_context_takeover || self.server_no_context_takeover,
            client_no_context_takeover: offer.client_no_context_takeover || self.client_no_context_takeover,
            server_max_window_bits: (offer.server_max_window_bits.is_some() || server_bits < MAX_WINDOW_BITS)
                .then_some(server_bits),
            client_max_window_bits: (client_bits < MAX_WINDOW_BITS).then_some(Some(client_bits)),
        };
        let params = DeflateParams {
            server_no_context_takeover: response.server_no_context_takeover,
            client_no_context_takeover: response.client_no_context_takeover,
            server_max_window_bits: server_bits,
            client_max_window_bits: client_bits,
        };
        (params, response.to_header())
    }
}

/// The parameters of one `permessage-deflate` offer or response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value (allowed in offers only).
    client_max_window_bits: Option<Option<u8>>,
}

impl Offer {
    /// Validates the parameters of an offer (`response == false`) or a response.
    fn parse(params: &[(String, Option<String>)], response: bool) -> Result<Offer, String> {
        let mut offer = Offer::default();
        let mut seen = [false; 4];
        for (name, value) in params {
            let (index, canonical) = match name.to_ascii_lowercase().as_str() {
                "server_no_context_takeover" => (0, "server_no_context_takeover"),
                "client_no_context_takeover" => (1, "client_no_context_takeover"),
                "server_max_window_bits" => (2, "server_max_window_bits"),
                "client_max_window_bits" => (3, "client_max_window_bits"),
                _ => return Err(format!("unknown parameter {name:?}")),
            };
            if std::mem::replace(&mut seen[index], true) {
                return Err(format!("parameter {canonical} appears twice"));
            }
            let bits = match value {
                Some(v) => Some(parse_window_bits(v).ok_or_else(|| format!("invalid value {v:?} for {canonical}"))?),
                None => None,
            };
            match index {
                0 | 1 if value.is_some() => return Err(format!("parameter {canonical} takes no value")),
                0 => offer.server_no_context_takeover = true,
                1 => offer.client_no_context_takeover = true,
                2 => offer.server_max_window_bits = Some(bits.ok_or("server_max_window_bits needs a value")?),
                _ if response && bits.is_none() => return Err("client_max_window_bits needs a value".to_owned()),
                _ => offer.client_max_window_bits = Some(bits),
            }
        }
        Ok(offer)
    }

    /// Client: checks a server's response against this offer.
    fn check_response(&self, response: &Offer) -> Result<DeflateParams, String> {
        if let (Some(asked), Some(got)) = (self.server_max_window_bits, response.server_max_window_bits) {
            if got > asked {
                return Err(format!("server_max_window_bits={got} is larger than the {asked} we asked for"));
            }
        }
        let client_bits = match (self.client_max_window_bits, response.client_max_window_bits.flatten()) {
            (None, Some(_)) => return Err("client_max_window_bits in the response, but we did not offer it".to_owned()),
            (Some(Some(own)), Some(got)) if got > own => {
                return Err(format!("client_max_window_bits={got} is larger than the {own} we offered"))
            }
            (own, got) => got.unwrap_or(MAX_WINDOW_BITS).min(own.flatten().unwrap_or(MAX_WINDOW_BITS)),
        };
        Ok(DeflateParams {
            server_no_context_takeover: response.server_no_context_takeover,
            // Offering client_no_context_takeover binds us whatever the response says (§7.1.1.2).
            client_no_context_takeover: response.client_no_context_takeover || self.client_no_context_takeover,
            server_max_window_bits: response.server_max_window_bits.unwrap_or(MAX_WINDOW_BITS),
            client_max_window_bits: client_bits,
        })
    }

    /// The `Sec-WebSocket-Extensions` element for these parameters.
    fn to_header(self) -> String {
        let mut s = String::from(EXTENSION_NAME);
        if self.server_no_context_takeover {
            s.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            s.push_str("; client_no_context_takeover");
        }
        if let Some(bits) = self.server_max_window_bits {
            s.push_str(&format!("; server_max_window_bits={bits}"));
        }
        match self.client_max_window_bits {
            Some(Some(bits)) => s.push_str(&format!("; client_max_window_bits={bits}")),
            Some(None) => s.push_str("; client_max_window_bits"),
            None => {}
        }
        s
    }
}

fn clamp_bits(bits: u8) -> u8 {
    bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS)
}

/// A window size as RFC 7692 writes it: a decimal integer from 8 to 15 without leading zeros.
fn parse_window_bits(value: &str) -> Option<u8> {
    let valid = !value.is_empty() && value.len() <= 2 && value.bytes().all(|b| b.is_ascii_digit());
    if !valid || value.starts_with('0') {
        return None;
    }
    let bits: u8 = value.parse().ok()?;
    (MIN_WINDOW_BITS..=MAX_WINDOW_BITS).contains(&bits).then_some(bits)
}

// ---------------------------------------------------------------------------
// Sec-WebSocket-Extensions syntax (RFC 6455 §9.1)
// ---------------------------------------------------------------------------

/// One element of an extension list: a name and its parameters, quoted values unquoted.
#[derive(Debug)]
struct Element {
    name: String,
    params: Vec<(String, Option<String>)>,
}

/// Parses a `Sec-WebSocket-Extensions` value into its elements, each `Err` with a reason when
/// malformed. Empty elements (`a, , b`) are skipped.
fn parse_list(value: &str) -> Vec<Result<Element, String>> {
    split_outside_quotes(value, b',').into_iter().filter_map(parse_element).collect()
}

fn parse_element(text: &str) -> Option<Result<Element, String>> {
    let parts = split_outside_quotes(text, b';');
    let name = trim_ows(parts.first().copied().unwrap_or_default());
    if name.is_empty() && parts.len() == 1 {
        return None;
    }
    if !is_token(name) {
        return Some(Err(format!("invalid extension name {name:?}")));
    }
    let mut params = Vec::with_capacity(parts.len() - 1);
    for part in &parts[1..] {
        let (key, value) = match part.split_once('=') {
            Some((key, value)) => (trim_ows(key), Some(trim_ows(value))),
            None => (trim_ows(part), None),
        };
        if !is_token(key) {
            return Some(Err(format!("invalid parameter name {key:?} in {EXTENSION_NAME:?}")));
        }
        let value = match value.map(parse_value) {
            None => None,
            Some(Some(v)) => Some(v),
            Some(None) => return Some(Err(format!("invalid value for parameter {key:?}"))),
        };
        params.push((key.to_owned(), value));
    }
    Some(Ok(Element { name: name.to_owned(), params }))
}

/// A parameter value: a token, or a quoted string whose unescaped content is a token.
fn parse_value(raw: &str) -> Option<String> {
    let Some(quoted) = raw.strip_prefix('"') else {
        return is_token(raw).then(|| raw.to_owned());
    };
    let inner = quoted.strip_suffix('"')?;
    let mut value = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => value.push(chars.next()?),
            '"' => return None,
            c => value.push(c),
        }
    }
    is_token(&value).then_some(value)
}

// ---------------------------------------------------------------------------
// Compression
// ---------------------------------------------------------------------------

/// zlib states released by connections whose context is reset after every message, kept reset
/// for the next message of any connection on the same thread. Such a connection then allocates
/// nothing per message (a fresh zlib-rs compressor costs several microseconds to allocate and
/// clear), and the memory kept is bounded by threads × [`POOL_SIZE`], not by connections.
/// A cache only: what a connection sends or accepts does not depend on it.
mod pool {
    use std::cell::RefCell;

    use flate2::{Compress, Compression, Decompress};

    /// The most states of each kind a thread keeps.
    pub(super) const POOL_SIZE: usize = 4;

    thread_local! {
        static COMPRESSORS: RefCell<Vec<(u32, u8, Compress)>> = const { RefCell::new(Vec::new()) };
        static DECOMPRESSORS: RefCell<Vec<Decompress>> = const { RefCell::new(Vec::new()) };
    }

    /// A compressor for raw deflate at `level` with a window of `bits`, ready for a new stream.
    pub(super) fn compressor(level: u32, bits: u8) -> Compress {
        let pooled = COMPRESSORS.with_borrow_mut(|pool| {
            let i = pool.iter().position(|&(l, b, _)| l == level && b == bits)?;
            Some(pool.swap_remove(i).2)
        });
        pooled.unwrap_or_else(|| Compress::new_with_window_bits(Compression::new(level), false, bits))
    }

    /// Resets a compressor and keeps it for reuse, if there is room.
    pub(super) fn release_compressor(level: u32, bits: u8, mut c: Compress) {
        c.reset();
        COMPRESSORS.with_borrow_mut(|pool| {
            if pool.len() < POOL_SIZE {
                pool.push((level, bits, c));
            }
        });
    }

    /// A raw-deflate inflater with a 15-bit window (which decodes a stream made with any smaller
    /// window; zlib-rs allocates a 32 KiB window whatever the size asked, and only a 15-bit
    /// inflater resets without reallocating).
    pub(super) fn decompressor() -> Decompress {
        DECOMPRESSORS.with_borrow_mut(|pool| pool.pop()).unwrap_or_else(|| Decompress::new_with_window_bits(false, 15))
    }

    /// Resets an inflater and keeps it for reuse, if there is room.
    pub(super) fn release_decompressor(mut d: Decompress) {
        d.reset(false);
        DECOMPRESSORS.with_borrow_mut(|pool| {
            if pool.len() < POOL_SIZE {
                pool.push(d);
            }
        });
    }
}

/// Per-connection compression state for one role: our compressor and the inflater for the peer's
/// messages.
pub struct PerMessageDeflate {
    params: DeflateParams,
    is_server: bool,
    level: u32,
    threshold: usize,
    /// The window our compressor uses (the negotiated one, at least 9).
    compress_bits: u8,
    /// Our side resets its context after every message.
    compress_reset: bool,
    /// `None` until the first message, and between messages when `compress_reset`.
    compressor: Option<Compress>,
    /// The peer resets its context after every message.
    inflate_reset: bool,
    /// `None` until needed, and between messages when `inflate_reset`.
    decompressor: Option<Decompress>,
    /// The current incoming message has had compressed bytes.
    in_message: bool,
    /// The current incoming message contained a final (BFINAL) block.
    stream_ended: bool,
}

impl std::fmt::Debug for PerMessageDeflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerMessageDeflate")
            .field("params", &self.params)
            .field("is_server", &self.is_server)
            .field("level", &self.level)
            .field("threshold", &self.threshold)
            .field("compressor_allocated", &self.compressor.is_some())
            .field("decompressor_allocated", &self.decompressor.is_some())
            .finish_non_exhaustive()
    }
}

impl PerMessageDeflate {
    /// The state for one connection: `params` as negotiated, `is_server` for our role, `level`
    /// 0..=9 (larger values act as 9) and `threshold` as in
    /// [`DeflateConfig::compression_threshold`]. Allocates nothing until the first message.
    pub fn new(params: &DeflateParams, is_server: bool, level: u32, threshold: usize) -> Self {
        // Our compressor uses our side's window; the inflater always uses 15 bits (see `pool`).
        let ours = if is_server { params.server_max_window_bits } else { params.client_max_window_bits };
        let (compress_reset, inflate_reset) = if is_server {
            (params.server_no_context_takeover, params.client_no_context_takeover)
        } else {
            (params.client_no_context_takeover, params.server_no_context_takeover)
        };
        PerMessageDeflate {
            params: *params,
            is_server,
            level: level.min(9),
            threshold,
            compress_bits: clamp_bits(ours).max(ZLIB_MIN_WINDOW_BITS),
            compress_reset,
            compressor: None,
            inflate_reset,
            decompressor: None,
            in_message: false,
            stream_ended: false,
        }
    }

    /// The negotiated parameters.
    pub fn params(&self) -> &DeflateParams {
        &self.params
    }

    /// Compresses a whole outgoing message payload. Returns the bytes to send with RSV1 set on the
    /// first frame: the DEFLATE data with the trailing `00 00 ff ff` removed (RFC 7692 §7.2.1); an
    /// empty payload gives the single byte `00` (§7.2.3.6).
    ///
    /// Returns `None` when the message should go out uncompressed with RSV1 clear: it is shorter
    /// than the threshold, or the threshold is not 0, our context is reset after every message and
    /// compression did not make it smaller (incompressible data, tiny messages). (Also, defensively, if the compressor
    /// reported an error; the compressor then starts afresh, which the peer cannot notice.)
    pub fn compress(&mut self, payload: &[u8]) -> Option<Bytes> {
        if payload.len() < self.threshold {
            return None;
        }
        let (level, bits) = (self.level, self.compress_bits);
        let compressor = self.compressor.get_or_insert_with(|| pool::compressor(level, bits));
        let Some(out) = deflate_message(compressor, payload) else {
            self.compressor = None;
            return None;
        };
        if self.compress_reset {
            if let Some(c) = self.compressor.take() {
                pool::release_compressor(level, bits, c);
            }
        }
        self.accept_compressed(payload.len(), out)
    }

    /// When our compression context is reset after every message, what our compressed output
    /// depends on: the same payload compressed with this key gives bytes any connection with the
    /// same key may send as they are (a [`PreparedMessage`](crate::PreparedMessage) caches them
    /// by key). `None` with context takeover: each message depends on the ones before it.
    pub(crate) fn shared_key(&self) -> Option<SharedKey> {
        self.compress_reset.then_some(SharedKey { level: self.level, bits: self.compress_bits })
    }

    /// Whether a payload of this length is sent uncompressed without trying (the threshold).
    pub(crate) fn skips(&self, payload_len: usize) -> bool {
        payload_len < self.threshold
    }

    /// The threshold's second rule, for output compressed with a reset context: with a
    /// threshold above 0, output that did not shrink is not worth sending compressed.
    fn accept_compressed(&self, payload_len: usize, mut out: Vec<u8>) -> Option<Bytes> {
        // With a threshold of 0 every message is compressed, even when it does not shrink
        // (some peers, such as the Autobahn suite's compression cases, expect that).
        if self.compress_reset && self.threshold > 0 && out.len() >= payload_len {
            return None;
        }
        if out.capacity() - out.len() > out.len() / 4 + 4096 {
            out.shrink_to_fit();
        }
        Some(Bytes::from(out))
    }

    /// Whether compressed bytes made with this connection's [`shared_key`](Self::shared_key)
    /// are worth sending for a payload of `payload_len` bytes (else send it uncompressed).
    pub(crate) fn accepts_shared(&self, payload_len: usize, compressed_len: usize) -> bool {
        !(self.threshold > 0 && compressed_len >= payload_len)
    }

    /// Inflates the next piece of an incoming compressed message (a frame's payload, or any part
    /// of it, in order), appending the result to `out`.
    ///
    /// `budget` bounds `out.len()`: as soon as it would pass `budget`, this returns
    /// [`DeflateError::TooLarge`]. `out` is grown in bounded steps and its capacity never exceeds
    /// `budget + 1` (unless it was already larger), whatever the compression ratio. Returns
    /// [`DeflateError::Corrupt`] on invalid data. After an error the message is abandoned (the
    /// connection should be failed) and the contents of `out` are unspecified.
    pub fn decompress_chunk(&mut self, input: &[u8], out: &mut BytesMut, budget: usize) -> Result<(), DeflateError> {
        if !input.is_empty() {
            self.in_message = true;
        }
        let result = self.inflate(input, out, budget, FlushDecompress::None);
        if result.is_err() {
            self.abandon_message();
        }
        result
    }

    /// Ends an incoming compressed message: inflates the `00 00 ff ff` tail the sender removed
    /// (RFC 7692 §7.2.2), appending any output to `out` under the same `budget` as
    /// [`decompress_chunk`](Self::decompress_chunk), and resets the inflater when the peer resets
    /// its context after each message (handing its state back to the per-thread pool).
    ///
    /// A message whose frames were all empty is an empty message. A message containing a final
    /// DEFLATE block (BFINAL set, §7.2.3.4) is accepted; bytes after that block start a new DEFLATE
    /// stream, and the next message starts a new one too (back-references across a final block
    /// are not supported).
    pub fn finish_message(&mut self, out: &mut BytesMut, budget: usize) -> Result<(), DeflateError> {
        let needs_tail = self.in_message && !(self.stream_ended && self.decompressor.is_none());
        let result = if needs_tail { self.inflate(&TAIL, out, budget, FlushDecompress::Sync) } else { Ok(()) };
        if result.is_err() {
            self.decompressor = None;
        } else if self.inflate_reset || self.stream_ended {
            if let Some(d) = self.decompressor.take() {
                pool::release_decompressor(d);
            }
        }
        self.in_message = false;
        self.stream_ended = false;
        result
    }

    /// Drops the state of a partly received message.
    fn abandon_message(&mut self) {
        self.decompressor = None;
        self.in_message = false;
        self.stream_ended = false;
    }

    fn inflate(
        &mut self,
        mut input: &[u8],
        out: &mut BytesMut,
        budget: usize,
        flush: FlushDecompress,
    ) -> Result<(), DeflateError> {
        if out.len() > budget {
            return Err(DeflateError::TooLarge { limit: budget });
        }
        if input.is_empty() {
            return Ok(());
        }
        // Output is written into zeroed spare capacity; zero about as much as this input is
        // likely to produce, doubling while the inflater keeps filling it.
        let mut step = input.len().saturating_mul(4).clamp(4096, 64 * 1024);
        loop {
            let decompressor = self.decompressor.get_or_insert_with(pool::decompressor);
            if out.len() == out.capacity() {
                grow(out, budget)?;
            }
            let start = out.len();
            let window = (out.capacity() - start).min(step);
            out.resize(start + window, 0);
            let (in_before, out_before) = (decompressor.total_in(), decompressor.total_out());
            let result = decompressor.decompress(input, &mut out[start..], flush);
            let consumed = (decompressor.total_in() - in_before) as usize;
            let produced = ((decompressor.total_out() - out_before) as usize).min(window);
            out.truncate(start + produced);
            input = input.get(consumed..).unwrap_or_default();
            let status = result.map_err(|e| DeflateError::Corrupt(e.to_string()))?;
            if out.len() > budget {
                return Err(DeflateError::TooLarge { limit: budget });
            }
            if status == Status::StreamEnd {
                // A final block: whatever follows is a new stream.
                self.stream_ended = true;
                self.decompressor = None;
                if input.is_empty() {
                    return Ok(());
                }
                continue;
            }
            if produced == window {
                // Output full: more may be pending even with all input consumed.
                step = step.saturating_mul(2).min(MAX_STEP);
                continue;
            }
            if input.is_empty() {
                return Ok(());
            }
            if consumed == 0 && produced == 0 {
                return Err(DeflateError::Corrupt("the inflater made no progress".to_owned()));
            }
        }
    }
}

/// What the output of a compressor whose context is reset after every message depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SharedKey {
    /// The compression level, 0..=9.
    pub(crate) level: u32,
    /// The window, 9..=15.
    pub(crate) bits: u8,
}

/// Compresses one whole message with a fresh context (taken from and handed back to the
/// per-thread pool), as a connection with `key` would: the DEFLATE data without the trailing
/// `00 00 ff ff`. `None` if the compressor failed (the message then goes out uncompressed).
pub(crate) fn compress_fresh(key: SharedKey, payload: &[u8]) -> Option<Vec<u8>> {
    let mut compressor = pool::compressor(key.level, key.bits);
    let out = deflate_message(&mut compressor, payload)?;
    pool::release_compressor(key.level, key.bits, compressor);
    Some(out)
}

/// Runs `payload` through `compressor` with a sync flush and strips the flush's empty block
/// (RFC 7692 §7.2.1); an empty result becomes the single byte `00` (§7.2.3.6). `None` if the
/// compressor failed (drop it: its state is unknown).
fn deflate_message(compressor: &mut Compress, payload: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(payload.len() / 4 + 64);
    let mut input = payload;
    let complete = loop {
        if out.len() == out.capacity() {
            out.reserve_exact(input.len() + input.len() / 8 + 1024);
        }
        let (in_before, out_before) = (compressor.total_in(), compressor.total_out());
        let result = compressor.compress_vec(input, &mut out, FlushCompress::Sync);
        let consumed = (compressor.total_in() - in_before) as usize;
        let produced = compressor.total_out() - out_before;
        input = input.get(consumed..).unwrap_or_default();
        if result.is_err() {
            break false;
        }
        // With room left in the output, zlib has flushed everything it had.
        if out.len() < out.capacity() && (input.is_empty() || (consumed == 0 && produced == 0)) {
            break input.is_empty();
        }
    };
    if complete && out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    } else if complete && out.is_empty() {
        // Nothing new since the previous flush (zlib declines a second flush in a row): the
        // stream is at a byte boundary, where `00` plus the receiver's tail is an empty block.
        out.push(0);
    } else {
        return None;
    }
    Some(out)
}

/// Gives a full `out` more capacity, never more than `budget + 1` in total (one byte past the
/// budget is how an oversized message is detected). Grows geometrically, so that a large message
/// costs a linear amount of copying.
fn grow(out: &mut BytesMut, budget: usize) -> Result<(), DeflateError> {
    let limit = budget.saturating_add(1);
    let len = out.len();
    if len >= limit {
        return Err(DeflateError::TooLarge { limit: budget });
    }
    let capacity = len.saturating_add(MIN_GROW).max(out.capacity().saturating_mul(2)).min(limit);
    // `BytesMut::reserve` may double the allocation, and a new buffer plus a copy would hold old
    // and new at once (twice the budget at the last step). Instead, reallocate the same buffer to
    // exactly this capacity; the conversions to and from `Vec` do not copy.
    let mut vec = Vec::from(std::mem::take(out));
    vec.reserve_exact(capacity - len);
    *out = BytesMut::from(Bytes::from(vec));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params(snct: bool, cnct: bool, sbits: u8, cbits: u8) -> DeflateParams {
        DeflateParams {
            server_no_context_takeover: snct,
            client_no_context_takeover: cnct,
            server_max_window_bits: sbits,
            client_max_window_bits: cbits,
        }
    }

    /// A server and a client endpoint over the same parameters.
    fn pair(p: &DeflateParams, level: u32) -> (PerMessageDeflate, PerMessageDeflate) {
        (PerMessageDeflate::new(p, true, level, 0), PerMessageDeflate::new(p, false, level, 0))
    }

    fn inflate_message(d: &mut PerMessageDeflate, chunks: &[&[u8]], budget: usize) -> Result<Vec<u8>, DeflateError> {
        let mut out = BytesMut::new();
        for chunk in chunks {
            d.decompress_chunk(chunk, &mut out, budget)?;
        }
        d.finish_message(&mut out, budget)?;
        Ok(out.to_vec())
    }

    fn inflate_one(d: &mut PerMessageDeflate, payload: &[u8]) -> Vec<u8> {
        inflate_message(d, &[payload], usize::MAX).unwrap()
    }

    fn config() -> DeflateConfig {
        DeflateConfig::default()
    }

    fn offers(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|s| s.to_string()).collect()
    }

    const HELLO: [u8; 7] = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];

    // ----------------------------------------------------------- RFC 7692 §7.2.3 vectors

    #[test]
    fn rfc_hello_one_block() {
        let (_, mut client) = pair(&DeflateParams::default(), 6);
        assert_eq!(inflate_one(&mut client, &HELLO), b"Hello");
        // Fragmented as in §7.2.3.1.
        assert_eq!(inflate_message(&mut client, &[&HELLO[..3], &HELLO[3..]], 100).unwrap(), b"Hello");
        // Byte by byte.
        let bytes: Vec<&[u8]> = HELLO.chunks(1).collect();
        assert_eq!(inflate_message(&mut client, &bytes, 100).unwrap(), b"Hello");
    }

    #[test]
    fn rfc_hello_compresses_to_the_rfc_bytes() {
        for level in 1..=9 {
            let (mut server, _) = pair(&DeflateParams::default(), level);
            assert_eq!(&server.compress(b"Hello").unwrap()[..], &HELLO, "level {level}");
            // Without context takeover every message is compressed alone, so identical messages
            // give identical bytes; with threshold 0 even "Hello", which does not shrink, is
            // compressed.
            let (mut server, _) = pair(&params(true, false, 15, 15), level);
            assert_eq!(&server.compress(b"Hello").unwrap()[..], &HELLO, "level {level}");
            let text = b"Hello, Hello, Hello, Hello";
            let first = server.compress(text).unwrap();
            assert_eq!(server.compress(text).unwrap(), first, "level {level}");
        }
    }

    #[test]
    fn rfc_sharing_the_sliding_window() {
        let second = [0xf2, 0x00, 0x11, 0x00, 0x00];
        let (mut server, mut client) = pair(&DeflateParams::default(), 6);
        assert_eq!(inflate_one(&mut client, &HELLO), b"Hello");
        assert_eq!(inflate_one(&mut client, &second), b"Hello");
        // Our compressor with context takeover produces the RFC's second message too.
        assert_eq!(&server.compress(b"Hello").unwrap()[..], &HELLO);
        assert_eq!(&server.compress(b"Hello").unwrap()[..], &second);
        // Without context takeover the receiver must not keep the window: the second message of
        // §7.2.3.2 refers back to the first and then fails.
        let (_, mut client) = pair(&params(true, false, 15, 15), 6);
        assert_eq!(inflate_one(&mut client, &HELLO), b"Hello");
        assert_eq!(inflate_one(&mut client, &HELLO), b"Hello");
        assert!(matches!(inflate_message(&mut client, &[&second], 100), Err(DeflateError::Corrupt(_))));
    }

    #[test]
    fn rfc_stored_block() {
        let (_, mut client) = pair(&DeflateParams::default(), 6);
        let payload = [0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00];
        assert_eq!(inflate_one(&mut client, &payload), b"Hello");
    }

    #[test]
    fn rfc_bfinal_block() {
        let (_, mut client) = pair(&DeflateParams::default(), 6);
        let payload = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        assert_eq!(inflate_one(&mut client, &payload), b"Hello");
        assert!(client.decompressor.is_none(), "a final block resets the inflater");
        // Later messages decode normally, with or without the trailing 00.
        assert_eq!(inflate_one(&mut client, &HELLO), b"Hello");
        assert_eq!(inflate_one(&mut client, &payload[..7]), b"Hello");
        assert_eq!(inflate_one(&mut client, &HELLO), b"Hello");
        // Split anywhere.
        for split in 0..payload.len() {
            assert_eq!(inflate_message(&mut client, &[&payload[..split], &payload[split..]], 5).unwrap(), b"Hello");
        }
        // Another stream after the final block in the same message.
        let mut two = payload[..7].to_vec();
        two.extend_from_slice(&HELLO);
        assert_eq!(inflate_one(&mut client, &two), b"HelloHello");
    }

    #[test]
    fn rfc_two_blocks_in_one_message() {
        let (_, mut client) = pair(&DeflateParams::default(), 6);
        let payload = [0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate_one(&mut client, &payload), b"Hello");
    }

    #[test]
    fn rfc_empty_fragment() {
        let (_, mut client) = pair(&DeflateParams::default(), 6);
        // A frame flushed with its full sync marker, then a final frame of just 00 (§7.2.3.6).
        let mut first = HELLO.to_vec();
        first.extend_from_slice(&TAIL);
        assert_eq!(inflate_message(&mut client, &[&first, &[0x00]], 100).unwrap(), b"Hello");
        assert_eq!(inflate_one(&mut client, &[0x00]), b"");
        assert_eq!(inflate_one(&mut client, &HELLO), b"Hello");
    }

    // ----------------------------------------------------------- empty messages

    #[test]
    fn empty_messages() {
        let (mut server, mut client) = pair(&DeflateParams::default(), 6);
        // First message of a fresh compressor, then after another message, then twice in a row.
        assert_eq!(&server.compress(b"").unwrap()[..], &[0x00]);
        assert_eq!(inflate_one(&mut client, &[0x00]), b"");
        let hello = server.compress(b"Hello").unwrap();
        assert_eq!(inflate_one(&mut client, &hello), b"Hello");
        for _ in 0..3 {
            assert_eq!(&server.compress(b"").unwrap()[..], &[0x00]);
            assert_eq!(inflate_one(&mut client, &[0x00]), b"");
        }
        let hello = server.compress(b"Hello").unwrap();
        assert_eq!(inflate_one(&mut client, &hello), b"Hello");
        // A compressed message with no payload bytes at all is empty and leaves the context alone.
        assert_eq!(inflate_message(&mut client, &[], 0).unwrap(), b"");
        assert_eq!(inflate_message(&mut client, &[b"", b""], 0).unwrap(), b"");
        let hello = server.compress(b"Hello").unwrap();
        assert_eq!(inflate_one(&mut client, &hello), b"Hello");
        // With our context reset after each message and a threshold of 0, an empty message is
        // still compressed (to the single byte 00).
        let (mut server, _) = pair(&params(true, false, 15, 15), 6);
        assert_eq!(&server.compress(b"").unwrap()[..], &[0x00]);
    }

    // ----------------------------------------------------------- compression behaviour

    #[test]
    fn threshold_and_incompressible_fallback() {
        let mut d = PerMessageDeflate::new(&DeflateParams::default(), true, 6, 10);
        assert_eq!(d.compress(b"short"), None);
        assert!(d.compressor.is_none(), "nothing allocated for a skipped message");
        assert!(d.compress(&[b'a'; 100]).is_some());

        // Incompressible data with context takeover is still compressed (the peer's window
        // must follow ours); without, and with a threshold above 0, it goes out uncompressed;
        // with a threshold of 0 every message is compressed.
        let random = pseudo_random(2000, 7);
        let mut keep = PerMessageDeflate::new(&DeflateParams::default(), true, 6, 0);
        assert!(keep.compress(&random).is_some());
        let mut reset = PerMessageDeflate::new(&params(true, false, 15, 15), true, 6, 1);
        assert_eq!(reset.compress(&random), None);
        assert!(reset.compress(&[b'a'; 100]).is_some());
        let mut always = PerMessageDeflate::new(&params(true, false, 15, 15), true, 6, 0);
        assert!(always.compress(&random).is_some());
    }

    #[test]
    fn compressor_released_without_context_takeover() {
        let p = params(true, false, 15, 15);
        let (mut server, mut client) = pair(&p, 6);
        let text = b"some text some text some text".repeat(10);
        let c = server.compress(&text).unwrap();
        assert!(server.compressor.is_none());
        assert_eq!(inflate_one(&mut client, &c), text);
        assert!(client.decompressor.is_none(), "the peer resets, so our inflater is freed");
        let c = client.compress(&text).unwrap();
        assert!(client.compressor.is_some(), "the client keeps its context");
        assert_eq!(inflate_one(&mut server, &c), text);
        assert!(server.decompressor.is_some());
    }

    #[test]
    fn large_messages_round_trip() {
        let (mut server, mut client) = pair(&DeflateParams::default(), 1);
        let text: Vec<u8> = (0..3_000_000u32).map(|i| b"abcdefghij"[(i % 7 + i % 3) as usize]).collect();
        let c = server.compress(&text).unwrap();
        assert!(c.len() < text.len() / 10);
        assert_eq!(inflate_one(&mut client, &c), text);
        let random = pseudo_random(1_000_000, 3);
        let c = server.compress(&random).unwrap();
        assert_eq!(inflate_one(&mut client, &c), random);
        // Exactly at the budget is fine; one byte less is not.
        let c = server.compress(&random).unwrap();
        assert_eq!(inflate_message(&mut client, &[&c], random.len()).unwrap(), random);
        let c = server.compress(&random).unwrap();
        assert_eq!(
            inflate_message(&mut client, &[&c], random.len() - 1),
            Err(DeflateError::TooLarge { limit: random.len() - 1 })
        );
    }

    // ----------------------------------------------------------- limits and bad data

    #[test]
    fn compression_bomb_is_bounded() {
        let zeros = vec![0u8; 10 << 20];
        let mut sender = PerMessageDeflate::new(&DeflateParams::default(), true, 9, 0);
        let bomb = sender.compress(&zeros).unwrap();
        assert!(bomb.len() < 20 * 1024, "{}", bomb.len());
        let budget = 1 << 20;
        for chunk_size in [bomb.len(), 1000, 7] {
            let mut receiver = PerMessageDeflate::new(&DeflateParams::default(), false, 9, 0);
            let mut out = BytesMut::new();
            let mut result = Ok(());
            for chunk in bomb.chunks(chunk_size) {
                result = receiver.decompress_chunk(chunk, &mut out, budget);
                assert!(out.capacity() <= budget + 1, "capacity {}", out.capacity());
                if result.is_err() {
                    break;
                }
            }
            if result.is_ok() {
                result = receiver.finish_message(&mut out, budget);
            }
            assert_eq!(result, Err(DeflateError::TooLarge { limit: budget }));
            assert!(out.capacity() <= budget + 1, "capacity {}", out.capacity());
            // The connection is failed after this, but the state stays usable.
            assert!(receiver.decompressor.is_none());
        }
        // Budgets that are not powers of two, and tiny ones.
        for budget in [0, 1, 100, 16 * 1024 + 3, 700_000] {
            let mut receiver = PerMessageDeflate::new(&DeflateParams::default(), false, 9, 0);
            let mut out = BytesMut::new();
            let r = receiver.decompress_chunk(&bomb, &mut out, budget);
            assert_eq!(r, Err(DeflateError::TooLarge { limit: budget }));
            assert!(out.capacity() <= budget + 1, "budget {budget}: capacity {}", out.capacity());
        }
        // A budget already used up by what `out` holds.
        let mut receiver = PerMessageDeflate::new(&DeflateParams::default(), false, 9, 0);
        let mut out = BytesMut::from(&b"0123456789"[..]);
        assert_eq!(receiver.decompress_chunk(&HELLO, &mut out, 15), Ok(()));
        assert_eq!(receiver.finish_message(&mut out, 15), Ok(()));
        assert_eq!(&out[..], b"0123456789Hello");
        let mut out = BytesMut::from(&b"0123456789"[..]);
        assert_eq!(receiver.decompress_chunk(&HELLO, &mut out, 14), Err(DeflateError::TooLarge { limit: 14 }));
        let mut out = BytesMut::from(&b"0123456789"[..]);
        assert_eq!(receiver.decompress_chunk(&HELLO, &mut out, 9), Err(DeflateError::TooLarge { limit: 9 }));
    }

    #[test]
    fn corrupt_data_is_an_error() {
        let (_, mut client) = pair(&DeflateParams::default(), 6);
        // BTYPE 11 is reserved.
        assert!(matches!(inflate_message(&mut client, &[&[0xff, 0xff, 0xff]], 100), Err(DeflateError::Corrupt(_))));
        // A stored block whose lengths disagree.
        assert!(matches!(
            inflate_message(&mut client, &[&[0x00, 0x05, 0x00, 0x00, 0x00]], 100),
            Err(DeflateError::Corrupt(_))
        ));
        // A distance before the start of the stream.
        let far = [0x02, 0x02, 0x00, 0x00];
        assert!(matches!(inflate_message(&mut client, &[&far], 100), Err(DeflateError::Corrupt(_))));
        // The state recovers for a new message (the connection would be closed anyway).
        assert_eq!(inflate_one(&mut client, &HELLO), b"Hello");
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 1u64;
        for round in 0..2000 {
            let data = pseudo_random(1 + round % 300, round as u64 + 11);
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            let p = params(state & 1 == 0, state & 2 == 0, 8 + (state >> 8) as u8 % 8, 8 + (state >> 16) as u8 % 8);
            let mut d = PerMessageDeflate::new(&p, state & 4 == 0, 6, 0);
            let mut out = BytesMut::new();
            let budget = (state >> 24) as usize % 5000;
            if d.decompress_chunk(&data, &mut out, budget).is_ok() {
                let _ = d.finish_message(&mut out, budget);
            }
            assert!(out.len() <= budget + 1 && out.capacity() <= budget + 1);
        }
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect()
    }

    // ----------------------------------------------------------- 8-bit windows

    /// An independent DEFLATE decoder (RFC 1951) that also records the largest distance used.
    struct Decoder {
        data: Vec<u8>,
        bit: usize,
        output: Vec<u8>,
        max_distance: usize,
    }

    struct Huffman {
        counts: [u16; 16],
        symbols: Vec<u16>,
    }

    impl Huffman {
        fn new(lengths: &[u8]) -> Huffman {
            let mut counts = [0u16; 16];
            for &l in lengths {
                counts[l as usize] += 1;
            }
            counts[0] = 0;
            let mut offsets = [0u16; 16];
            for len in 1..16 {
                offsets[len] = offsets[len - 1] + counts[len - 1];
            }
            let mut symbols = vec![0; lengths.len()];
            for (symbol, &l) in lengths.iter().enumerate() {
                if l != 0 {
                    symbols[offsets[l as usize] as usize] = symbol as u16;
                    offsets[l as usize] += 1;
                }
            }
            Huffman { counts, symbols }
        }
    }

    impl Decoder {
        fn bits(&mut self, n: usize) -> Option<usize> {
            let mut v = 0;
            for i in 0..n {
                let byte = *self.data.get(self.bit / 8)?;
                v |= (((byte >> (self.bit % 8)) & 1) as usize) << i;
                self.bit += 1;
            }
            Some(v)
        }

        fn decode(&mut self, h: &Huffman) -> Option<usize> {
            let (mut code, mut first, mut index) = (0usize, 0usize, 0usize);
            for len in 1..16 {
                code |= self.bits(1)?;
                let count = h.counts[len] as usize;
                if code < first + count {
                    return Some(h.symbols[index + code - first] as usize);
                }
                index += count;
                first = (first + count) << 1;
                code <<= 1;
            }
            None
        }

        /// Decodes blocks until the data runs out in a block header; panics on invalid data.
        fn run(&mut self) {
            const LBASE: [usize; 29] = [
                3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163,
                195, 227, 258,
            ];
            const LEXT: [usize; 29] =
                [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
            const DBASE: [usize; 30] = [
                1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073,
                4097, 6145, 8193, 12289, 16385, 24577,
            ];
            const DEXT: [usize; 30] =
                [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];
            while let Some(header) = self.bits(3) {
                match header >> 1 {
                    0 => {
                        self.bit = self.bit.div_ceil(8) * 8;
                        let Some(len) = self.bits(16) else { return };
                        let nlen = self.bits(16).unwrap();
                        assert_eq!(len ^ 0xffff, nlen);
                        let start = self.bit / 8;
                        self.output.extend_from_slice(&self.data[start..start + len]);
                        self.bit += len * 8;
                    }
                    kind @ (1 | 2) => {
                        let (lit, dist) = if kind == 1 {
                            let mut l = [8u8; 288];
                            l[144..256].fill(9);
                            l[256..280].fill(7);
                            (Huffman::new(&l), Huffman::new(&[5; 30]))
                        } else {
                            let hlit = self.bits(5).unwrap() + 257;
                            let hdist = self.bits(5).unwrap() + 1;
                            let hclen = self.bits(4).unwrap() + 4;
                            const ORDER: [usize; 19] =
                                [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];
                            let mut cl = [0u8; 19];
                            for &i in &ORDER[..hclen] {
                                cl[i] = self.bits(3).unwrap() as u8;
                            }
                            let clh = Huffman::new(&cl);
                            let mut lengths = Vec::new();
                            while lengths.len() < hlit + hdist {
                                match self.decode(&clh).unwrap() {
                                    s @ 0..=15 => lengths.push(s as u8),
                                    16 => {
                                        let prev = *lengths.last().unwrap();
                                        let n = 3 + self.bits(2).unwrap();
                                        lengths.resize(lengths.len() + n, prev);
                                    }
                                    17 => {
                                        let n = 3 + self.bits(3).unwrap();
                                        lengths.resize(lengths.len() + n, 0);
                                    }
                                    _ => {
                                        let n = 11 + self.bits(7).unwrap();
                                        lengths.resize(lengths.len() + n, 0);
                                    }
                                }
                            }
                            (Huffman::new(&lengths[..hlit]), Huffman::new(&lengths[hlit..]))
                        };
                        loop {
                            let symbol = self.decode(&lit).unwrap();
                            if symbol < 256 {
                                self.output.push(symbol as u8);
                            } else if symbol == 256 {
                                break;
                            } else {
                                let i = symbol - 257;
                                let len = LBASE[i] + self.bits(LEXT[i]).unwrap();
                                let d = self.decode(&dist).unwrap();
                                let distance = DBASE[d] + self.bits(DEXT[d]).unwrap();
                                assert!(distance <= self.output.len());
                                self.max_distance = self.max_distance.max(distance);
                                for _ in 0..len {
                                    self.output.push(self.output[self.output.len() - distance]);
                                }
                            }
                        }
                    }
                    _ => panic!("reserved block type"),
                }
            }
        }
    }

    /// Compresses `messages` in sequence and decodes the stream with [`Decoder`].
    fn max_distance(p: &DeflateParams, level: u32, messages: &[Vec<u8>]) -> usize {
        let mut server = PerMessageDeflate::new(p, true, level, 0);
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for m in messages {
            let c = server.compress(m).unwrap();
            stream.extend_from_slice(&c);
            stream.extend_from_slice(&TAIL);
            expected.extend_from_slice(m);
        }
        let mut d = Decoder { data: stream, bit: 0, output: Vec::new(), max_distance: 0 };
        d.run();
        assert_eq!(d.output, expected);
        d.max_distance
    }

    fn window_test_messages() -> Vec<Vec<u8>> {
        // Repeats at every distance up to 1000, so a larger window would be used if allowed.
        let mut messages = Vec::new();
        for period in [37usize, 200, 255, 256, 257, 300, 511, 700, 1000] {
            let unit = pseudo_random(period, period as u64);
            messages.push(unit.iter().cycle().take(period * 6).copied().collect());
        }
        messages.push(b"Hello, Hello, Hello! ".repeat(200));
        messages.push(pseudo_random(3000, 99));
        messages
    }

    #[test]
    fn window_of_8_bits_never_refers_past_256_bytes() {
        let messages = window_test_messages();
        for level in 0..=9 {
            let p = params(false, false, 8, 15);
            let d = max_distance(&p, level, &messages);
            assert!(d <= 256, "level {level}: distance {d}");
        }
        // The check has teeth: a 10-bit window does use longer distances.
        let d = max_distance(&params(false, false, 10, 15), 6, &messages);
        assert!(d > 256, "{d}");
    }

    #[test]
    fn window_of_8_bits_round_trips_both_ways() {
        let p = params(false, false, 8, 8);
        let (mut server, mut client) = pair(&p, 6);
        for m in window_test_messages() {
            let c = server.compress(&m).unwrap();
            assert_eq!(inflate_one(&mut client, &c), m);
            let c = client.compress(&m).unwrap();
            assert_eq!(inflate_one(&mut server, &c), m);
        }
    }

    // ----------------------------------------------------------- negotiation: server

    fn negotiate(cfg: &DeflateConfig, lines: &[&str]) -> Option<(DeflateParams, String)> {
        cfg.server_negotiate(&offers(lines))
    }

    #[test]
    fn server_accepts_plain_offer() {
        let (p, resp) = negotiate(&config(), &["permessage-deflate"]).unwrap();
        assert_eq!(p, DeflateParams::default());
        assert_eq!(resp, "permessage-deflate");
        assert_eq!(negotiate(&config(), &[]), None);
        assert_eq!(negotiate(&config(), &[""]), None);
        assert_eq!(negotiate(&config(), &["x-webkit-deflate-frame"]), None);
        assert_eq!(negotiate(&config(), &["PerMessage-Deflate"]).unwrap().1, "permessage-deflate");
    }

    #[test]
    fn server_rfc_examples() {
        // RFC 7692 §5.2 / §7.1 examples.
        let (p, resp) = negotiate(&config(), &["permessage-deflate; client_max_window_bits"]).unwrap();
        assert_eq!(p, DeflateParams::default());
        assert_eq!(resp, "permessage-deflate");

        let (p, resp) = negotiate(
            &config(),
            &["permessage-deflate; client_max_window_bits; server_max_window_bits=10, \
               permessage-deflate; client_max_window_bits"],
        )
        .unwrap();
        assert_eq!(p, params(false, false, 10, 15));
        assert_eq!(resp, "permessage-deflate; server_max_window_bits=10");

        let (p, resp) =
            negotiate(&config(), &["permessage-deflate; server_no_context_takeover; client_no_context_takeover"])
                .unwrap();
        assert_eq!(p, params(true, true, 15, 15));
        assert_eq!(resp, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");

        let (p, resp) = negotiate(&config(), &["permessage-deflate; client_max_window_bits=10"]).unwrap();
        assert_eq!(p, params(false, false, 15, 10));
        assert_eq!(resp, "permessage-deflate; client_max_window_bits=10");
    }

    #[test]
    fn server_applies_its_config() {
        let cfg = DeflateConfig {
            server_max_window_bits: 11,
            client_max_window_bits: 9,
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            ..config()
        };
        let (p, resp) = negotiate(&cfg, &["permessage-deflate; client_max_window_bits"]).unwrap();
        assert_eq!(p, params(true, true, 11, 9));
        assert_eq!(
            resp,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=11; client_max_window_bits=9"
        );
        // The client can only be limited if it offered client_max_window_bits.
        let (p, resp) = negotiate(&cfg, &["permessage-deflate; server_max_window_bits=13"]).unwrap();
        assert_eq!(p, params(true, true, 11, 15));
        assert_eq!(
            resp,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=11"
        );
        // The smaller of the two limits wins.
        let (p, _) =
            negotiate(&cfg, &["permessage-deflate; server_max_window_bits=8; client_max_window_bits=12"]).unwrap();
        assert_eq!(p, params(true, true, 8, 9));
        let cfg = DeflateConfig { client_max_window_bits: 12, ..config() };
        let (p, resp) = negotiate(&cfg, &["permessage-deflate; client_max_window_bits=10"]).unwrap();
        assert_eq!(p, params(false, false, 15, 10));
        assert_eq!(resp, "permessage-deflate; client_max_window_bits=10");
        // Out-of-range configuration is clamped.
        let cfg = DeflateConfig { server_max_window_bits: 3, client_max_window_bits: 200, ..config() };
        let (p, resp) = negotiate(&cfg, &["permessage-deflate; client_max_window_bits"]).unwrap();
        assert_eq!(p, params(false, false, 8, 15));
        assert_eq!(resp, "permessage-deflate; server_max_window_bits=8");
    }

    #[test]
    fn server_window_bits_values() {
        for bits in 8..=15u8 {
            let (p, resp) =
                negotiate(&config(), &[&format!("permessage-deflate; server_max_window_bits={bits}")]).unwrap();
            assert_eq!(p.server_max_window_bits, bits);
            assert_eq!(resp, format!("permessage-deflate; server_max_window_bits={bits}"));
            let (p, _) =
                negotiate(&config(), &[&format!("permessage-deflate; client_max_window_bits={bits}")]).unwrap();
            assert_eq!(p.client_max_window_bits, bits);
        }
        // Quoted values are unquoted (RFC 6455 §9.1), whitespace is allowed around separators.
        let (p, _) = negotiate(&config(), &["permessage-deflate ; server_max_window_bits = \"10\" "]).unwrap();
        assert_eq!(p.server_max_window_bits, 10);
        let (p, _) = negotiate(&config(), &["permessage-deflate;client_max_window_bits=\"1\\2\""]).unwrap();
        assert_eq!(p.client_max_window_bits, 12);
        for bad in [
            "7",
            "16",
            "0",
            "08",
            "010",
            "abc",
            "",
            "1 0",
            "+9",
            "-9",
            "9.0",
            "\"\"",
            "\"10",
            "\"1\"0\"",
            "999999999999",
        ] {
            for name in ["server_max_window_bits", "client_max_window_bits"] {
                let offer = format!("permessage-deflate; {name}={bad}");
                assert_eq!(negotiate(&config(), &[&offer]), None, "{offer}");
            }
        }
        // server_max_window_bits needs a value.
        assert_eq!(negotiate(&config(), &["permessage-deflate; server_max_window_bits"]), None);
        // The no-context-takeover parameters take none.
        assert_eq!(negotiate(&config(), &["permessage-deflate; server_no_context_takeover=1"]), None);
        assert_eq!(negotiate(&config(), &["permessage-deflate; client_no_context_takeover=\"x\""]), None);
    }

    #[test]
    fn server_declines_bad_offers_and_takes_the_next() {
        let cases = [
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=10; SERVER_MAX_WINDOW_BITS=10",
            "permessage-deflate; foo",
            "permessage-deflate; foo=bar",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate;",
            "permessage-deflate; =10",
            "permessage-deflate; x y",
        ];
        for bad in cases {
            assert_eq!(negotiate(&config(), &[bad]), None, "{bad}");
            let line = format!("{bad}, permessage-deflate; client_max_window_bits=9");
            let (p, resp) = negotiate(&config(), &[&line]).unwrap();
            assert_eq!(p, params(false, false, 15, 9), "{line}");
            assert_eq!(resp, "permessage-deflate; client_max_window_bits=9");
            // The same across header lines.
            let (p, _) =
                negotiate(&config(), &[bad, "x-foo", "permessage-deflate; server_no_context_takeover"]).unwrap();
            assert_eq!(p, params(true, false, 15, 15), "{bad}");
        }
        // Several offers in a line: the first acceptable one wins.
        let (p, _) = negotiate(
            &config(),
            &["x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=9, permessage-deflate"],
        )
        .unwrap();
        assert_eq!(p.server_max_window_bits, 9);
        // Commas and semicolons inside quoted strings do not split; malformed elements are skipped.
        let (p, _) = negotiate(
            &config(),
            &["x-foo; a=\"b, c; d\", permessage-deflate; server_max_window_bits=\"11\", permessage-deflate"],
        )
        .unwrap();
        assert_eq!(p.server_max_window_bits, 11);
        let (p, _) =
            negotiate(&config(), &["x-\"weird, permessage-deflate; client_max_window_bits=8", "permessage-deflate"])
                .unwrap();
        assert_eq!(p, DeflateParams::default());
        assert_eq!(negotiate(&config(), &[" , ,, permessage-deflate ,"]).unwrap().0, DeflateParams::default());
    }

    #[test]
    fn autobahn_style_offers() {
        // Offers like those of Autobahn's cases 12 and 13.
        let lines = [
            "permessage-deflate; client_no_context_takeover; client_max_window_bits",
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=9",
            "permessage-deflate; server_max_window_bits=9; client_max_window_bits",
            "permessage-deflate; client_max_window_bits, permessage-deflate",
        ];
        let expected = [
            params(false, true, 15, 15),
            params(true, false, 15, 9),
            params(false, false, 9, 15),
            params(false, false, 15, 15),
        ];
        for (line, want) in lines.iter().zip(expected) {
            let (p, resp) = negotiate(&config(), &[line]).unwrap();
            assert_eq!(p, want, "{line}");
            // The client side agrees with what the server decided.
            let offer_params = parse_list(line).remove(0).unwrap().params;
            let offer = Offer::parse(&offer_params, false).unwrap();
            let response = parse_list(&resp).remove(0).unwrap().params;
            let client_view = offer.check_response(&Offer::parse(&response, true).unwrap()).unwrap();
            assert_eq!(client_view, p, "{line} -> {resp}");
        }
    }

    // ----------------------------------------------------------- negotiation: client

    #[test]
    fn client_offers() {
        assert_eq!(config().client_offer(), "permessage-deflate; client_max_window_bits");
        let cfg = DeflateConfig {
            server_max_window_bits: 10,
            client_max_window_bits: 12,
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            ..config()
        };
        assert_eq!(
            cfg.client_offer(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10; client_max_window_bits=12"
        );
        // Our own offer is acceptable to our own server, with the same result on both sides.
        for cfg in [config(), cfg] {
            let (p, resp) = cfg.server_negotiate(&[cfg.client_offer()]).unwrap();
            assert_eq!(cfg.client_accept(&resp).unwrap(), Some(p));
        }
    }

    #[test]
    fn client_accepts_valid_responses() {
        let cfg = config();
        assert_eq!(cfg.client_accept("").unwrap(), None);
        assert_eq!(cfg.client_accept("  ").unwrap(), None);
        assert_eq!(cfg.client_accept("permessage-deflate").unwrap(), Some(DeflateParams::default()));
        // Not asked for, but allowed.
        assert_eq!(
            cfg.client_accept("permessage-deflate; server_no_context_takeover").unwrap(),
            Some(params(true, false, 15, 15))
        );
        assert_eq!(
            cfg.client_accept("permessage-deflate; client_no_context_takeover").unwrap(),
            Some(params(false, true, 15, 15))
        );
        assert_eq!(
            cfg.client_accept("permessage-deflate; server_max_window_bits=8").unwrap(),
            Some(params(false, false, 8, 15))
        );
        assert_eq!(
            cfg.client_accept("permessage-deflate; client_max_window_bits=8").unwrap(),
            Some(params(false, false, 15, 8))
        );
        assert_eq!(
            cfg.client_accept("Permessage-Deflate ; client_max_window_bits=\"10\"").unwrap(),
            Some(params(false, false, 15, 10))
        );

        let asking = DeflateConfig {
            server_max_window_bits: 10,
            client_max_window_bits: 12,
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            ..config()
        };
        assert_eq!(
            asking.client_accept("permessage-deflate; server_max_window_bits=9; client_max_window_bits=11").unwrap(),
            Some(params(false, true, 9, 11))
        );
        // Leaving out what we asked for: we keep our own promises and decode whatever comes.
        assert_eq!(asking.client_accept("permessage-deflate").unwrap(), Some(params(false, true, 15, 12)));
    }

    #[test]
    fn client_rejects_invalid_responses() {
        let cfg = DeflateConfig { server_max_window_bits: 10, client_max_window_bits: 12, ..config() };
        let bad = [
            "x-webkit-deflate-frame",
            "permessage-deflate, x-foo",
            "permessage-deflate, permessage-deflate",
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=11",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=abc",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=13",
            "permessage-deflate; client_max_window_bits=09",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=\"10",
            "permessage-deflate;",
            "\"permessage-deflate\"",
        ];
        for response in bad {
            assert!(matches!(cfg.client_accept(response), Err(DeflateError::Negotiation(_))), "{response}");
        }
        // client_max_window_bits when we did not offer it.
        let offer = Offer { client_max_window_bits: None, ..Offer::default() };
        let response = Offer { client_max_window_bits: Some(Some(10)), ..Offer::default() };
        assert!(offer.check_response(&response).is_err());
        assert!(offer.check_response(&Offer::default()).is_ok());
    }

    // ----------------------------------------------------------- round trips

    fn message_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..3000),
            (proptest::collection::vec(0u8..4, 1..40), 0usize..5000).prop_map(|(unit, len)| unit
                .iter()
                .cycle()
                .take(len)
                .map(|b| b"abc "[*b as usize])
                .collect()),
            (proptest::collection::vec(any::<u8>(), 1..300), 0usize..20_000).prop_map(|(unit, len)| unit
                .iter()
                .cycle()
                .take(len)
                .copied()
                .collect()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn round_trip(
            messages in proptest::collection::vec(message_strategy(), 1..8),
            snct in any::<bool>(), cnct in any::<bool>(),
            sbits in 8u8..=15, cbits in 8u8..=15, level in 0u32..=9,
            chunk in 1usize..2000, threshold in 0usize..100,
        ) {
            let p = params(snct, cnct, sbits, cbits);
            let mut server = PerMessageDeflate::new(&p, true, level, threshold);
            let mut client = PerMessageDeflate::new(&p, false, level, threshold);
            for (i, m) in messages.iter().enumerate() {
                // Alternate directions, and feed the receiver in chunks of varying size.
                let (tx, rx) = if i % 2 == 0 { (&mut server, &mut client) } else { (&mut client, &mut server) };
                let Some(c) = tx.compress(m) else {
                    prop_assert!(m.len() < threshold || tx.compress_reset);
                    continue;
                };
                let chunk = chunk + i * 17;
                let chunks: Vec<&[u8]> = c.chunks(chunk).collect();
                let out = inflate_message(rx, &chunks, m.len()).unwrap();
                prop_assert_eq!(&out, m);
            }
        }

        #[test]
        fn same_direction_round_trip(
            messages in proptest::collection::vec(message_strategy(), 1..10),
            reset in any::<bool>(), bits in 8u8..=15, chunk in 1usize..500,
        ) {
            let p = params(reset, reset, bits, bits);
            let (mut server, mut client) = pair(&p, 6);
            for m in &messages {
                if let Some(c) = server.compress(m) {
                    let chunks: Vec<&[u8]> = c.chunks(chunk).collect();
                    prop_assert_eq!(&inflate_message(&mut client, &chunks, usize::MAX).unwrap(), m);
                }
            }
        }

        #[test]
        fn negotiation_never_panics(lines in proptest::collection::vec("[ -~]{0,80}", 0..4)) {
            let cfg = DeflateConfig::default();
            let _ = cfg.server_negotiate(&lines);
            for line in &lines {
                let _ = cfg.client_accept(line);
            }
        }

        #[test]
        fn negotiation_fuzz_near_valid(params in proptest::collection::vec(
            prop_oneof![
                Just("server_no_context_takeover".to_owned()),
                Just("client_no_context_takeover".to_owned()),
                (8u8..=16).prop_map(|b| format!("server_max_window_bits={b}")),
                (7u8..=15).prop_map(|b| format!("client_max_window_bits={b}")),
                Just("client_max_window_bits".to_owned()),
            ], 0..5)) {
            // Whatever our server accepts, the client side of the same offer accepts identically.
            let line = std::iter::once("permessage-deflate".to_owned()).chain(params).collect::<Vec<_>>().join("; ");
            if let Some((p, resp)) = config().server_negotiate(std::slice::from_ref(&line)) {
                let offer = Offer::parse(&parse_list(&line).remove(0).unwrap().params, false).unwrap();
                let response = Offer::parse(&parse_list(&resp).remove(0).unwrap().params, true).unwrap();
                prop_assert_eq!(offer.check_response(&response).unwrap(), p);
            }
        }
    }

    #[test]
    fn state_is_send() {
        fn assert_send<T: Send + Sync>() {}
        assert_send::<PerMessageDeflate>();
        assert_send::<DeflateConfig>();
    }
}
