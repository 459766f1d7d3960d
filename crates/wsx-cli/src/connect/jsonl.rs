//! `wsx connect --jsonl`: every event as one JSON object on one line of stdout, for scripts and
//! `jq`. Nothing else is written to stdout in this mode; the human-readable status lines of the
//! plain mode (the close, reconnects, warnings, `-i`/`-v`, `--show-ping`) still go to stderr.
//!
//! # Schema
//!
//! Every object has `type` (a string, below) and `ts`, the time wsx saw the event, RFC 3339 in
//! UTC with milliseconds (`2026-11-30T13:52:10.123Z`). Field names are camelCase, durations are
//! milliseconds (numbers with a fraction), binary data is standard base64 with padding. A field
//! shown as `T|null` is always present; a field marked "only …" is absent otherwise.
//!
//! | `type`      | fields |
//! |-------------|--------|
//! | `open`      | `url` string (as wsx connected to it), `protocol` string\|null (the subprotocol the server chose), `extensions` string\|null (the negotiated `Sec-WebSocket-Extensions`); only with `-i`/`-v`: `status` number (101) and `headers` object (lower-case name → value; repeated headers joined with `, `) |
//! | `text`      | `data` string: a text message received |
//! | `binary`    | `data` string (base64), `length` number (bytes): a binary message received |
//! | `ping`      | `direction` `"sent"`\|`"received"`, `data` string (base64 payload), `text` string\|null (the payload when it is UTF-8), `keepalive` bool (a `--ping-interval` ping; its payload is its number, 8 bytes big-endian) |
//! | `pong`      | as `ping`, and `rtt` number\|null: the round-trip time of the ping it answers, when known |
//! | `close`     | `code` number (1005: the close frame had no code; 1006: no closing handshake), `reason` string, `wasClean` bool (the closing handshake completed), `closedBy` `"client"`\|`"server"`\|null (who started the close; null when the connection just ended) |
//! | `error`     | `message` string, `kind` string: `peer`, `limit`, `usage`, `timeout`, `io`, `tls` (see `wsx::ErrorKind`), or `input` (stdin could not be read or a line was not UTF-8); only for a refused handshake: `status` number |
//! | `reconnect` | `attempt` number (1, 2, … in a row), `maxRetries` number\|null, `delay` number (ms before the attempt), `reason` string (why the last connection or attempt ended) |
//!
//! `ping` and `pong` objects are written with `--show-ping` only (as in the other modes): pings
//! sent by wsx (`--ping-interval`) and pings and pongs received. wsx's automatic answers to the
//! server's pings are not reported. A connection is `open`, then messages, then `close` (after an
//! `error` when it failed); a failed attempt to connect is an `error`; with `--reconnect`, a
//! `reconnect` comes before each new attempt.

use std::borrow::Cow;
use std::io::{self, Write as _};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use wsx::{CloseCode, CloseFrame};

/// The part of `--help` that describes the schema (kept next to the code that writes it; a
/// macro so that `concat!` can take it).
macro_rules! jsonl_help {
    () => {
        "\
JSON lines (--jsonl):
  stdout has one JSON object per line for every event, nothing else; the human-readable status
  lines still go to stderr. Every object has \"type\" and \"ts\" (RFC 3339, UTC, milliseconds,
  e.g. \"2026-11-30T13:52:10.123Z\"); durations are milliseconds, binary data is base64.
    open       url, protocol (string|null), extensions (string|null), http (\"1.1\"|\"2\": the
               HTTP version that carried the WebSocket), stream (the HTTP/2 stream id|null);
               with -i or -v also status (101; 200 over HTTP/2) and headers (object:
               lower-case name -> value)
    text       data (string)
    binary     data (base64), length (bytes)
    ping, pong direction (\"sent\"|\"received\"), data (base64), text (the payload if UTF-8, else
               null), keepalive (bool: a --ping-interval ping), and for pong rtt (ms|null);
               only with --show-ping
    close      code (1005: no code in the close frame; 1006: no closing handshake), reason,
               wasClean (bool), closedBy (\"client\"|\"server\"|null)
    error      message, kind (peer, limit, usage, timeout, io, tls, input); status for a
               refused handshake
    reconnect  attempt, maxRetries (number|null), delay (ms), reason
  Example: wsx connect --jsonl URL | jq -r 'select(.type == \"text\") | .data'"
    };
}

/// Which way a ping or pong went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// wsx sent it.
    Sent,
    /// The server sent it.
    Received,
}

/// Who started the closing handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// wsx.
    Client,
    /// The server.
    Server,
}

/// One event of the schema above.
#[derive(Debug)]
pub enum Event<'a> {
    /// The opening handshake succeeded.
    Open {
        url: &'a str,
        protocol: Option<&'a str>,
        extensions: Option<&'a str>,
        /// The HTTP version that carried the WebSocket: `"1.1"` or `"2"`.
        http: &'static str,
        /// The HTTP/2 stream's id.
        stream: Option<u32>,
        /// The response (with `-i`/`-v`).
        response: Option<&'a http::Response<()>>,
    },
    /// A text message.
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
    /// A ping.
    Ping { direction: Direction, payload: &'a [u8], keepalive: bool },
    /// A pong, with the round-trip time of the ping it answers when known.
    Pong { direction: Direction, payload: &'a [u8], keepalive: bool, rtt: Option<Duration> },
    /// The connection ended.
    Close { code: u16, reason: &'a str, was_clean: bool, closed_by: Option<Side> },
    /// Something failed.
    Error { message: &'a str, kind: &'a str, status: Option<u16> },
    /// Another attempt to connect follows after `delay`.
    Reconnect { attempt: u32, max_retries: Option<u32>, delay: Duration, reason: &'a str },
}

impl<'a> Event<'a> {
    /// The `error` event of a failed connection or attempt.
    pub fn error(message: &'a str, error: &wsx::Error) -> Self {
        let status = match error {
            wsx::Error::Handshake(wsx::HandshakeError::UnexpectedStatus { status, .. }) => Some(status.as_u16()),
            _ => None,
        };
        Event::Error { message, kind: error_kind(error), status }
    }

    /// The `close` event of a connection that ended: `we_closed` when wsx sent the first close
    /// frame, `peer_close` the server's close frame if one came, else the `failure` that ended it.
    pub fn close(we_closed: bool, peer_close: Option<&'a Option<CloseFrame>>, failure: Option<&wsx::Error>) -> Self {
        if let Some(frame) = peer_close {
            let (code, reason) = frame.as_ref().map_or((CloseCode::NO_STATUS.0, ""), |f| (f.code.0, f.reason.as_str()));
            let closed_by = if we_closed { Side::Client } else { Side::Server };
            return Event::Close { code, reason, was_clean: true, closed_by: Some(closed_by) };
        }
        // No close frame from the server: the connection failed. wsx may still have sent a
        // close frame first (its own close, or one naming a fault of the server's).
        let code = failure.and_then(wsx::Error::close_code).unwrap_or(CloseCode::ABNORMAL);
        let sent_by_wsx = we_closed || code != CloseCode::ABNORMAL;
        Event::Close { code: code.0, reason: "", was_clean: false, closed_by: sent_by_wsx.then_some(Side::Client) }
    }

    /// The JSON object, with `ts` set to `now` (fields in a fixed order: `type`, `ts`, the rest).
    pub fn to_line(&self, now: chrono::DateTime<chrono::Utc>) -> String {
        let ts = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let (kind, fields): (&str, Vec<(&str, Value)>) = match self {
            Event::Open { url, protocol, extensions, http, stream, response } => {
                let mut fields = vec![
                    ("url", json!(url)),
                    ("protocol", json!(protocol)),
                    ("extensions", json!(extensions)),
                    ("http", json!(http)),
                    ("stream", json!(stream)),
                ];
                if let Some(response) = response {
                    fields.push(("status", json!(response.status().as_u16())));
                    fields.push(("headers", headers(response.headers())));
                }
                ("open", fields)
            }
            Event::Text(data) => ("text", vec![("data", json!(data))]),
            Event::Binary(data) => ("binary", vec![("data", json!(base64(data))), ("length", json!(data.len()))]),
            Event::Ping { direction, payload, keepalive } => ("ping", control(*direction, payload, *keepalive)),
            Event::Pong { direction, payload, keepalive, rtt } => {
                let mut fields = control(*direction, payload, *keepalive);
                fields.push(("rtt", json!(rtt.map(millis))));
                ("pong", fields)
            }
            Event::Close { code, reason, was_clean, closed_by } => (
                "close",
                vec![
                    ("code", json!(code)),
                    ("reason", json!(reason)),
                    ("wasClean", json!(was_clean)),
                    ("closedBy", json!(closed_by.map(|s| if s == Side::Client { "client" } else { "server" }))),
                ],
            ),
            Event::Error { message, kind, status } => {
                let mut fields = vec![("message", json!(message)), ("kind", json!(kind))];
                if let Some(status) = status {
                    fields.push(("status", json!(status)));
                }
                ("error", fields)
            }
            Event::Reconnect { attempt, max_retries, delay, reason } => (
                "reconnect",
                vec![
                    ("attempt", json!(attempt)),
                    ("maxRetries", json!(max_retries)),
                    ("delay", json!(millis(*delay))),
                    ("reason", json!(reason)),
                ],
            ),
        };
        let mut line = format!("{{\"type\":{},\"ts\":{}", json!(kind), json!(ts));
        for (name, value) in fields {
            line.push_str(&format!(",{}:{value}", json!(name)));
        }
        line.push('}');
        line
    }
}

/// Writes `event` as one line on stdout, now.
pub fn emit(event: &Event<'_>) -> io::Result<()> {
    let line = event.to_line(chrono::Utc::now());
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// The `kind` of an error from the library.
pub fn error_kind(error: &wsx::Error) -> &'static str {
    match error.kind() {
        wsx::ErrorKind::Peer => "peer",
        wsx::ErrorKind::Limit => "limit",
        wsx::ErrorKind::Usage => "usage",
        wsx::ErrorKind::Timeout => "timeout",
        wsx::ErrorKind::Io => "io",
        wsx::ErrorKind::Tls => "tls",
        _ => "other",
    }
}

fn control(direction: Direction, payload: &[u8], keepalive: bool) -> Vec<(&'static str, Value)> {
    vec![
        ("direction", json!(if direction == Direction::Sent { "sent" } else { "received" })),
        ("data", json!(base64(payload))),
        ("text", json!(std::str::from_utf8(payload).ok())),
        ("keepalive", json!(keepalive)),
    ]
}

fn headers(map: &http::HeaderMap) -> Value {
    let mut out = serde_json::Map::new();
    for (name, value) in map {
        let value: Cow<'_, str> = String::from_utf8_lossy(value.as_bytes());
        match out.get_mut(name.as_str()) {
            Some(Value::String(previous)) => {
                previous.push_str(", ");
                previous.push_str(&value);
            }
            _ => {
                out.insert(name.as_str().to_owned(), Value::String(value.into_owned()));
            }
        }
    }
    Value::Object(out)
}

fn base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn millis(d: Duration) -> f64 {
    // Microsecond precision is plenty, and keeps the numbers short.
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339("2026-11-30T13:52:10.123456Z").unwrap().into()
    }

    #[test]
    fn lines_have_type_and_ts_first() {
        let line = Event::Text("hé \"x\"\n").to_line(at());
        assert_eq!(line, r#"{"type":"text","ts":"2026-11-30T13:52:10.123Z","data":"hé \"x\"\n"}"#);
        let line = Event::Binary(b"\x00\xffhi").to_line(at());
        assert_eq!(line, r#"{"type":"binary","ts":"2026-11-30T13:52:10.123Z","data":"AP9oaQ==","length":4}"#);
        let pong = Event::Pong {
            direction: Direction::Received,
            payload: &1u64.to_be_bytes(),
            keepalive: true,
            rtt: Some(Duration::from_micros(1234)),
        };
        assert_eq!(
            pong.to_line(at()),
            r#"{"type":"pong","ts":"2026-11-30T13:52:10.123Z","direction":"received","data":"AAAAAAAAAAE=","text":"\u0000\u0000\u0000\u0000\u0000\u0000\u0000\u0001","keepalive":true,"rtt":1.234}"#
        );
        let ping = Event::Ping { direction: Direction::Sent, payload: b"\xff", keepalive: false };
        assert!(ping.to_line(at()).ends_with(r#""direction":"sent","data":"/w==","text":null,"keepalive":false}"#));
    }

    #[test]
    fn close_events() {
        let frame = Some(CloseFrame::new(CloseCode(4000), "bye"));
        let line = Event::close(false, Some(&frame), None).to_line(at());
        assert!(line.ends_with(r#""code":4000,"reason":"bye","wasClean":true,"closedBy":"server"}"#), "{line}");
        let line = Event::close(true, Some(&None), None).to_line(at());
        assert!(line.ends_with(r#""code":1005,"reason":"","wasClean":true,"closedBy":"client"}"#), "{line}");
        let line = Event::close(false, None, Some(&wsx::Error::AbnormalClosure)).to_line(at());
        assert!(line.ends_with(r#""code":1006,"reason":"","wasClean":false,"closedBy":null}"#), "{line}");
        let protocol = wsx::Error::Proto(wsx::proto::ProtocolError::ReservedOpcode(3).into());
        let line = Event::close(false, None, Some(&protocol)).to_line(at());
        assert!(line.ends_with(r#""code":1002,"reason":"","wasClean":false,"closedBy":"client"}"#), "{line}");
    }
}
