//! The hub subprotocol, `wsx.hub.v1`: JSON text messages, one object per WebSocket message, with
//! a `"type"`. `docs/hub.md` has the whole protocol with examples; this module is its code.
//!
//! Client to server ([`Request`]); each may carry an `"id"` (any JSON value), echoed in the
//! answer:
//!
//! | type          | fields                                                    | answer |
//! |---------------|-----------------------------------------------------------|--------|
//! | `subscribe`   | `room`, optional `since: {offset, epoch}` or `history: N`, `name`, `presence: bool` | `subscribed` (then the recovered, or latest N, messages) |
//! | `unsubscribe` | `room`                                                    | `unsubscribed` |
//! | `publish`     | `room`, and one of `text` (string), `data` (any JSON), `binary` (base64) | `published` with the offset |
//! | `presence`    | `room`                                                    | `presence` with `members` |
//!
//! Server to client, besides the answers: `welcome` (first, with the connection's member
//! `id`), `message` (`room`, `offset`, `epoch`, and `text`, `data` or `binary`), `join` and
//! `leave` (`room`, `member`), `interrupted` and `resumed` (`room`, `recovered`, `missed`,
//! `offset`, `epoch`) around a broker outage, and `error` (`code`, `message`, and the request's
//! `id`).

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::{HubError, MemberInfo, Payload, Position, RoomMessage};

/// The subprotocol's name, for `Sec-WebSocket-Protocol`.
pub const PROTOCOL: &str = "wsx.hub.v1";

/// A request from a client.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Join a room.
    Subscribe {
        /// Echoed in the answer.
        #[serde(default)]
        id: Option<Value>,
        /// The room.
        room: String,
        /// Recover the messages published after this position.
        #[serde(default)]
        since: Option<Since>,
        /// Without `since`: also send up to this many of the latest messages of the history.
        #[serde(default)]
        history: usize,
        /// The name presence shows.
        #[serde(default)]
        name: Option<String>,
        /// Receive join and leave events.
        #[serde(default)]
        presence: bool,
    },
    /// Leave a room.
    Unsubscribe {
        /// Echoed in the answer.
        #[serde(default)]
        id: Option<Value>,
        /// The room.
        room: String,
    },
    /// Publish to a room (the connection need not be in it).
    Publish {
        /// Echoed in the answer.
        #[serde(default)]
        id: Option<Value>,
        /// The room.
        room: String,
        /// A text message.
        #[serde(default)]
        text: Option<String>,
        /// Any JSON value.
        #[serde(default)]
        data: Option<Value>,
        /// A binary message, in base64.
        #[serde(default)]
        binary: Option<String>,
    },
    /// Ask who is in a room.
    Presence {
        /// Echoed in the answer.
        #[serde(default)]
        id: Option<Value>,
        /// The room.
        room: String,
    },
}

/// A position as a client sends it back.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    /// The offset of the last message the client received.
    pub offset: u64,
    /// The epoch it belonged to.
    pub epoch: String,
}

impl From<Since> for Position {
    fn from(s: Since) -> Self {
        Position { offset: s.offset, epoch: s.epoch.into() }
    }
}

/// Why a request could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest {
    /// The request's `id`, when it could be read.
    pub id: Option<Value>,
    /// What is wrong.
    pub message: String,
}

impl Request {
    /// Parses one text message.
    pub fn parse(text: &str) -> Result<Self, BadRequest> {
        serde_json::from_str(text).map_err(|e| {
            let id = serde_json::from_str::<Map<String, Value>>(text).ok().and_then(|mut m| m.remove("id"));
            BadRequest { id, message: format!("bad request: {e}") }
        })
    }

    /// The request's `id`.
    pub fn id(&self) -> Option<&Value> {
        match self {
            Self::Subscribe { id, .. }
            | Self::Unsubscribe { id, .. }
            | Self::Publish { id, .. }
            | Self::Presence { id, .. } => id.as_ref(),
        }
    }
}

/// The payload of a `publish`: exactly one of `text`, `data`, `binary`.
pub fn publish_payload(text: Option<String>, data: Option<Value>, binary: Option<String>) -> Result<Payload, String> {
    match (text, data, binary) {
        (Some(t), None, None) => Ok(Payload::Text(t.into())),
        (None, Some(d), None) => Ok(Payload::Json(d.to_string().into())),
        (None, None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.as_bytes())
            .map(|b| Payload::Binary(Bytes::from(b)))
            .map_err(|e| format!("binary is not base64: {e}")),
        _ => Err("publish needs exactly one of text, data, binary".to_owned()),
    }
}

fn with_id(mut v: Value, id: Option<&Value>) -> String {
    if let (Some(id), Some(map)) = (id, v.as_object_mut()) {
        map.insert("id".to_owned(), id.clone());
    }
    v.to_string()
}

/// `welcome`: the first message on a hub connection.
pub fn welcome(member: &str, node: &str) -> String {
    json!({"type": "welcome", "id": member, "node": node, "protocol": PROTOCOL}).to_string()
}

/// `subscribed`: the answer to `subscribe`; `missed` messages follow it (recovered ones, or
/// the latest ones asked for with `history`).
pub fn subscribed(
    id: Option<&Value>,
    room: &str,
    position: &Position,
    recovered: Option<bool>,
    missed: usize,
) -> String {
    let mut v = json!({"type": "subscribed", "room": room, "offset": position.offset, "epoch": &*position.epoch});
    match recovered {
        Some(recovered) => {
            v["recovered"] = json!(recovered);
            v["missed"] = json!(missed);
        }
        // The latest messages asked for with `history`.
        None if missed > 0 => v["history"] = json!(missed),
        None => {}
    }
    with_id(v, id)
}

/// `unsubscribed`: the answer to `unsubscribe`.
pub fn unsubscribed(id: Option<&Value>, room: &str) -> String {
    with_id(json!({"type": "unsubscribed", "room": room}), id)
}

/// `published`: the answer to `publish`.
pub fn published(id: Option<&Value>, room: &str, position: &Position) -> String {
    with_id(json!({"type": "published", "room": room, "offset": position.offset, "epoch": &*position.epoch}), id)
}

/// `presence`: the answer to `presence`.
pub fn presence(id: Option<&Value>, room: &str, members: &[MemberInfo]) -> String {
    with_id(json!({"type": "presence", "room": room, "members": members}), id)
}

/// `message`: a room message.
pub fn message_event(m: &RoomMessage) -> String {
    let (field, value) = m.hub_field();
    let mut v = json!({"type": "message", "room": &**m.room(), "offset": m.offset(), "epoch": &**m.epoch()});
    v[field] = value;
    v.to_string()
}

/// `join` or `leave`.
pub fn presence_event(kind: &str, room: &str, member: &MemberInfo) -> String {
    json!({"type": kind, "room": room, "member": member}).to_string()
}

/// `interrupted`: the broker connection was lost; messages may be missing until `resumed`.
pub fn interrupted(room: &str) -> String {
    json!({"type": "interrupted", "room": room}).to_string()
}

/// `resumed`: the broker is back; with `recovered`, the `missed` messages came before this.
pub fn resumed(room: &str, recovered: bool, missed: u64, position: &Position) -> String {
    json!({"type": "resumed", "room": room, "recovered": recovered, "missed": missed,
           "offset": position.offset, "epoch": &*position.epoch})
    .to_string()
}

/// `error`, for a request that failed.
pub fn error(id: Option<&Value>, code: &str, message: &str) -> String {
    with_id(json!({"type": "error", "code": code, "message": message}), id)
}

/// `error` for a [`HubError`].
pub fn hub_error(id: Option<&Value>, e: &HubError) -> String {
    error(id, e.code(), &e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_bad_ones_keep_their_id() {
        let r = Request::parse(r#"{"type":"subscribe","room":"a","since":{"offset":3,"epoch":"e"},"id":7}"#).unwrap();
        assert_eq!(
            r,
            Request::Subscribe {
                id: Some(json!(7)),
                room: "a".into(),
                since: Some(Since { offset: 3, epoch: "e".into() }),
                history: 0,
                name: None,
                presence: false
            }
        );
        let bad = Request::parse(r#"{"type":"subscribe","id":"x"}"#).unwrap_err();
        assert_eq!(bad.id, Some(json!("x")));
        assert!(bad.message.contains("room"), "{}", bad.message);
        assert!(Request::parse(r#"{"type":"teleport","room":"a"}"#).is_err());
        assert!(Request::parse(r#"{"type":"publish","room":"a","text":"t","extra":1}"#).is_err());
        assert!(Request::parse("not json").unwrap_err().id.is_none());
    }

    #[test]
    fn a_publish_has_exactly_one_payload() {
        assert_eq!(publish_payload(Some("hi".into()), None, None), Ok(Payload::Text("hi".into())));
        assert_eq!(publish_payload(None, Some(json!({"a":[1]})), None), Ok(Payload::Json(r#"{"a":[1]}"#.into())));
        assert_eq!(publish_payload(None, None, Some("AAE=".into())), Ok(Payload::Binary(Bytes::from_static(&[0, 1]))));
        assert!(publish_payload(None, None, Some("!!".into())).unwrap_err().contains("base64"));
        assert!(publish_payload(Some("a".into()), Some(json!(1)), None).is_err());
        assert!(publish_payload(None, None, None).is_err());
    }

    #[test]
    fn a_message_event_carries_its_payload_in_its_own_field() {
        let m = |p| RoomMessage::new("r".into(), 4, "e".into(), p);
        let v: Value = serde_json::from_str(&message_event(&m(Payload::Text("hi".into())))).unwrap();
        assert_eq!(v, json!({"type":"message","room":"r","offset":4,"epoch":"e","text":"hi"}));
        let v: Value = serde_json::from_str(&message_event(&m(Payload::Json(r#"{"k":true}"#.into())))).unwrap();
        assert_eq!(v["data"], json!({"k": true}));
        let v: Value = serde_json::from_str(&message_event(&m(Payload::Binary(Bytes::from_static(b"\xff"))))).unwrap();
        assert_eq!(v["binary"], json!("/w=="));
    }
}
