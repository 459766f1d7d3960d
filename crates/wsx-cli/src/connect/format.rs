//! Pure text helpers of `wsx connect`: escaping what the peer sends before it reaches a terminal,
//! JSON re-indentation, hex summaries, close-code names, option value parsers.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

/// Makes text from the peer safe to print on a terminal: every control character (C0, DEL and
/// C1, i.e. Unicode category Cc) becomes a visible escape such as `\x1b`, `\r` or `\u{9b}`, so
/// that a server cannot move the cursor, change colours, set the window title, ring the bell or
/// overwrite what is already on the screen. With `keep_newlines`, `\n` and `\t` pass through
/// (a multi-line message stays readable); without it they are escaped too (one-line output).
///
/// Backslashes are left alone: the escaping is for safety, not a reversible encoding.
pub fn escape_controls(s: &str, keep_newlines: bool) -> Cow<'_, str> {
    if !s.chars().any(|c| needs_escape(c, keep_newlines)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if !needs_escape(c, keep_newlines) {
            out.push(c);
            continue;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char, keep_newlines: bool) -> bool {
    match c {
        '\n' | '\t' => !keep_newlines,
        c => c.is_control(),
    }
}

/// A one-line, quoted and escaped rendering of a string from the peer (close reasons).
pub fn quoted(s: &str) -> String {
    let escaped = escape_controls(s, false);
    format!("\"{}\"", escaped.replace('"', "\\\""))
}

/// A control frame payload for display: escaped text when it is UTF-8, else hex.
pub fn payload(p: &[u8]) -> String {
    match std::str::from_utf8(p) {
        Ok(s) => escape_controls(s, false).into_owned(),
        Err(_) => format!("0x{}", hex(p, "")),
    }
}

/// `text` re-indented with two spaces per level when it is a JSON object or array; `None`
/// otherwise (scalars and non-JSON text are printed as they came).
///
/// The input is checked with serde_json, then re-indented token by token, so numbers, string
/// escapes and key order stay exactly as the peer sent them (no float rounding, no reordering).
pub fn pretty_json(text: &str) -> Option<String> {
    let trimmed = text.trim();
    if !(trimmed.starts_with('{') || trimmed.starts_with('[')) {
        return None;
    }
    serde_json::from_str::<serde_json::Value>(trimmed).ok()?;
    Some(reindent(trimmed))
}

/// Re-indents JSON that is known to be valid.
fn reindent(json: &str) -> String {
    fn newline(out: &mut String, depth: usize) {
        out.push('\n');
        for _ in 0..depth {
            out.push_str("  ");
        }
    }
    let mut out = String::with_capacity(json.len() * 2);
    let mut depth = 0usize;
    let mut chars = json.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                out.push('"');
                while let Some(c) = chars.next() {
                    out.push(c);
                    match c {
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                out.push(escaped);
                            }
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '{' | '[' => {
                while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
                    chars.next();
                }
                let close = if c == '{' { '}' } else { ']' };
                out.push(c);
                if chars.peek() == Some(&close) {
                    chars.next();
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// Lower-case hex of `bytes`, joined by `sep`.
pub fn hex(bytes: &[u8], sep: &str) -> String {
    let mut out = String::with_capacity(bytes.len() * (2 + sep.len()));
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// How many bytes of a binary message the terminal view shows.
const HEXDUMP_LIMIT: usize = 256;

/// A binary message for a terminal: a header line (`binary, 5 bytes: 68 65 6c 6c 6f  |hello|`
/// for up to 16 bytes), else the header and `hexdump -C`-style lines for the first 256 bytes.
pub fn binary_summary(bytes: &[u8]) -> String {
    let unit = if bytes.len() == 1 { "byte" } else { "bytes" };
    if bytes.is_empty() {
        return "binary, 0 bytes".to_owned();
    }
    if bytes.len() <= 16 {
        return format!("binary, {} {unit}: {}  |{}|", bytes.len(), hex(bytes, " "), ascii(bytes));
    }
    let mut out = format!("binary, {} {unit}:", bytes.len());
    let shown = &bytes[..bytes.len().min(HEXDUMP_LIMIT)];
    for (row, chunk) in shown.chunks(16).enumerate() {
        let _ = write!(out, "\n{:04x}  {:<47}  |{}|", row * 16, hex(chunk, " "), ascii(chunk));
    }
    if bytes.len() > HEXDUMP_LIMIT {
        let _ = write!(out, "\n… {} more bytes", bytes.len() - HEXDUMP_LIMIT);
    }
    out
}

/// A binary message as `hexdump -C` shows it, for `--hex`, one line at a time (so that a large
/// message is written without holding its whole dump): a header line (`binary, 20 bytes:`),
/// then one line per 16 bytes with the offset (8 hex digits), the bytes in two groups of 8 and
/// the printable ASCII between bars (`.` for the rest). As in `hexdump -C`, a run of lines equal
/// to the one before is shown as one `*`; the closing line with the length is left out (the
/// header says it). No line holds a control character.
pub struct HexDump<'a> {
    bytes: &'a [u8],
    /// The next row (16 bytes each); `None` before the header.
    row: Option<usize>,
    /// Rows from this one on are not shown: a `… N more bytes` line ends the dump.
    limit_rows: usize,
    previous: Option<&'a [u8]>,
    starred: bool,
}

impl<'a> HexDump<'a> {
    /// The whole dump of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, row: None, limit_rows: usize::MAX, previous: None, starred: false }
    }

    /// The dump of the first `limit` bytes (rounded up to a line), then `… N more bytes`.
    pub fn limited(bytes: &'a [u8], limit: usize) -> Self {
        Self { limit_rows: limit.div_ceil(16), ..Self::new(bytes) }
    }
}

impl Iterator for HexDump<'_> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        let Some(mut row) = self.row else {
            self.row = Some(0);
            let unit = if self.bytes.len() == 1 { "byte" } else { "bytes" };
            return Some(format!("binary, {} {unit}:", self.bytes.len()));
        };
        loop {
            let start = row.checked_mul(16)?;
            if start >= self.bytes.len() {
                return None;
            }
            if row >= self.limit_rows {
                self.row = Some(usize::MAX / 16);
                return Some(format!("… {} more bytes", self.bytes.len() - start));
            }
            let chunk = &self.bytes[start..self.bytes.len().min(start + 16)];
            row += 1;
            self.row = Some(row);
            if chunk.len() == 16 && self.previous == Some(chunk) {
                if !self.starred {
                    self.starred = true;
                    return Some("*".to_owned());
                }
                continue;
            }
            self.starred = false;
            self.previous = Some(chunk);
            let mut line = format!("{start:08x}  ");
            for i in 0..16 {
                match chunk.get(i) {
                    Some(b) => {
                        let _ = write!(line, "{b:02x} ");
                    }
                    None => line.push_str("   "),
                }
                if i == 7 {
                    line.push(' ');
                }
            }
            let _ = write!(line, " |{}|", ascii(chunk));
            return Some(line);
        }
    }
}

/// How much of a binary message `--hex` shows on a terminal (16 Ki lines); the rest is counted.
pub const HEXDUMP_DISPLAY_LIMIT: usize = 256 * 1024;

/// The dump of [`HexDump`] as one string (lines joined by `\n`), at most `limit` bytes shown.
pub fn hexdump(bytes: &[u8], limit: usize) -> String {
    HexDump::limited(bytes, limit).collect::<Vec<_>>().join("\n")
}

fn ascii(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| if b.is_ascii_graphic() || b == b' ' { b as char } else { '.' }).collect()
}

/// Parses hex for `/binary`: pairs of digits, with optional spaces, `:` separators and a
/// leading `0x`.
pub fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    let s = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    let digits: Vec<u8> = s.bytes().filter(|b| !matches!(b, b' ' | b'\t' | b':')).collect();
    if !digits.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    digits
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).map_err(|_| "not a hex digit".to_string())?;
            u8::from_str_radix(text, 16).map_err(|_| format!("{text:?} is not a hex byte"))
        })
        .collect()
}

/// The registered name of a close code, if it has one.
pub fn close_code_name(code: u16) -> Option<&'static str> {
    Some(match code {
        1000 => "normal",
        1001 => "going away",
        1002 => "protocol error",
        1003 => "unsupported data",
        1005 => "no status code",
        1006 => "abnormal closure",
        1007 => "invalid payload",
        1008 => "policy violation",
        1009 => "message too big",
        1010 => "mandatory extension",
        1011 => "internal error",
        1012 => "service restart",
        1013 => "try again later",
        1014 => "bad gateway",
        1015 => "TLS handshake",
        _ => return None,
    })
}

/// `1000 normal`, `4000`, followed by the quoted reason when there is one.
pub fn describe_close(code: u16, reason: &str) -> String {
    let mut out = code.to_string();
    if let Some(name) = close_code_name(code) {
        out.push(' ');
        out.push_str(name);
    }
    if !reason.is_empty() {
        out.push(' ');
        out.push_str(&quoted(reason));
    }
    out
}

/// A duration in seconds: `5`, `0.5`, `2s`, `250ms`, `1m`. Must be positive.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| format!("{s:?} is not a duration (e.g. 5, 0.5, 250ms)"))?;
    let secs = value * scale;
    if !(secs.is_finite() && secs > 0.0 && secs < 1e9) {
        return Err(format!("{s:?}: the duration must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A size in bytes: `1000`, `64k`, `16M`, `1G`, `16MiB` (k, M and G are powers of 1024).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let stripped = lower.strip_suffix("ib").or_else(|| lower.strip_suffix('b')).unwrap_or(&lower);
    let (number, shift) = match stripped.as_bytes().last() {
        Some(b'k') => (&stripped[..stripped.len() - 1], 10),
        Some(b'm') => (&stripped[..stripped.len() - 1], 20),
        Some(b'g') => (&stripped[..stripped.len() - 1], 30),
        _ => (stripped, 0),
    };
    let n: usize = number.trim().parse().map_err(|_| format!("{t:?} is not a size (e.g. 65536, 64k, 16M)"))?;
    let size = n.checked_mul(1 << shift).ok_or_else(|| format!("{t:?} is too large"))?;
    if size == 0 {
        return Err("the size must be positive".into());
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_terminal_controls() {
        assert_eq!(escape_controls("plain text ✓", true), "plain text ✓");
        assert!(matches!(escape_controls("plain", true), Cow::Borrowed(_)));
        assert_eq!(escape_controls("\x1b[31mred\x1b[0m", true), "\\x1b[31mred\\x1b[0m");
        assert_eq!(escape_controls("a\rb\x07\x08\x7f\0", true), "a\\rb\\x07\\x08\\x7f\\x00");
        assert_eq!(escape_controls("\u{9b}2J", true), "\\u{9b}2J");
        assert_eq!(escape_controls("two\nlines\tand tab", true), "two\nlines\tand tab");
        assert_eq!(escape_controls("two\nlines\tand tab", false), "two\\nlines\\tand tab");
        // An OSC sequence (window title) loses its ESC and BEL.
        assert_eq!(escape_controls("\x1b]0;pwned\x07", true), "\\x1b]0;pwned\\x07");
    }

    #[test]
    fn quotes_reasons_on_one_line() {
        assert_eq!(quoted("bye"), "\"bye\"");
        assert_eq!(quoted("a \"b\"\n\x1b"), "\"a \\\"b\\\"\\n\\x1b\"");
    }

    #[test]
    fn pretty_prints_json_keeping_numbers_and_order() {
        let input = r#" {"z":1,"a":[1, 2.50, 12345678901234567890123],"e":{},"l":[ ],"s":"x,y:{}\"]"} "#;
        let expected = "{\n  \"z\": 1,\n  \"a\": [\n    1,\n    2.50,\n    12345678901234567890123\n  ],\n  \
                        \"e\": {},\n  \"l\": [],\n  \"s\": \"x,y:{}\\\"]\"\n}";
        assert_eq!(pretty_json(input).unwrap(), expected);
        assert_eq!(pretty_json("[]").unwrap(), "[]");
        assert_eq!(pretty_json("not json"), None);
        assert_eq!(pretty_json("{\"a\":"), None);
        assert_eq!(pretty_json("42"), None);
        assert_eq!(pretty_json("[1] trailing"), None);
    }

    #[test]
    fn summarises_binary() {
        assert_eq!(binary_summary(b""), "binary, 0 bytes");
        assert_eq!(binary_summary(b"\x00"), "binary, 1 byte: 00  |.|");
        assert_eq!(binary_summary(b"hello"), "binary, 5 bytes: 68 65 6c 6c 6f  |hello|");
        let long: Vec<u8> = (0..=255u8).chain(0..10).collect();
        let s = binary_summary(&long);
        assert!(s.starts_with("binary, 266 bytes:\n0000  00 01 02"), "{s}");
        assert!(s.contains("\n00f0  f0 f1"), "{s}");
        assert!(s.ends_with("… 10 more bytes"), "{s}");
        // Never a raw control byte in the output.
        assert!(!s.chars().any(|c| c.is_control() && c != '\n'));
    }

    #[test]
    fn dumps_like_hexdump_c() {
        assert_eq!(hexdump(b"", 1024), "binary, 0 bytes:");
        assert_eq!(
            hexdump(b"hello world\n\x00\x01\x02\x03\xff\xfe\xfd\xfc", 1024),
            "binary, 20 bytes:\n\
             00000000  68 65 6c 6c 6f 20 77 6f  72 6c 64 0a 00 01 02 03  |hello world.....|\n\
             00000010  ff fe fd fc                                       |....|"
        );
        let zeros = [0u8; 64];
        assert_eq!(
            hexdump(&[&zeros[..], b"\x1b[2J"].concat(), 1024),
            "binary, 68 bytes:\n\
             00000000  00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00  |................|\n\
             *\n\
             00000040  1b 5b 32 4a                                       |.[2J|"
        );
        assert_eq!(
            hexdump(b"\x7f", 1024),
            "binary, 1 byte:\n00000000  7f                                                |.|"
        );
        let limited = hexdump(&[0x41; 100], 32);
        assert_eq!(
            limited,
            "binary, 100 bytes:\n\
             00000000  41 41 41 41 41 41 41 41  41 41 41 41 41 41 41 41  |AAAAAAAAAAAAAAAA|\n\
             *\n\
             … 68 more bytes"
        );
        // Streamed line by line, the whole of a large message, in bounded pieces.
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let lines: Vec<String> = HexDump::new(&big).collect();
        assert_eq!(lines.len(), 1 + big.len().div_ceil(16));
        assert!(lines.last().unwrap().starts_with("00018690  "), "{}", lines.last().unwrap());
    }

    #[test]
    fn parses_hex() {
        assert_eq!(parse_hex("00ff 10").unwrap(), vec![0, 255, 16]);
        assert_eq!(parse_hex("0xDEADbeef").unwrap(), vec![0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(parse_hex("de:ad").unwrap(), vec![0xde, 0xad]);
        assert_eq!(parse_hex("").unwrap(), Vec::<u8>::new());
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("zz").is_err());
        assert!(parse_hex("é1").is_err());
    }

    #[test]
    fn describes_close_codes() {
        assert_eq!(describe_close(1000, ""), "1000 normal");
        assert_eq!(describe_close(4000, "bye now"), "4000 \"bye now\"");
        assert_eq!(describe_close(1001, "restart"), "1001 going away \"restart\"");
    }

    #[test]
    fn parses_durations_and_sizes() {
        assert_eq!(parse_secs("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_secs("0.25").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_secs("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_secs("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_secs("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_secs("0").is_err());
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("soon").is_err());
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("16M").unwrap(), 16 << 20);
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("512B").unwrap(), 512);
        assert!(parse_size("0").is_err());
        assert!(parse_size("lots").is_err());
    }
}
