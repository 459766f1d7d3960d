//! Serving one WebSocket connection as a member of the hub: a raw room member
//! ([`raw_member`]) or a client of the hub subprotocol ([`hub_member`]).
//!
//! # Close codes
//!
//! | code | reason starts with | when |
//! |------|--------------------|------|
//! | 1001 | `server shutting down` | the `shutdown` future completed |
//! | 1008 | `too slow:` | the connection fell behind the room ([`QueueLimits`](crate::QueueLimits)) |
//! | 1012 | `messages lost` | raw member: the broker lost messages this member cannot get back; reconnect |
//! | 1013 | `room broker unavailable` | raw member: its message (or its join) could not reach the broker; try again later |
//!
//! A hub client is never closed for a broker failure: it gets an `error` answer
//! (`broker_unavailable`) or the `interrupted` and `resumed` events, and decides.

use std::future::Future;
use std::pin::Pin;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use wsx::{CloseCode, CloseFrame, Message, PreparedMessage, State, WebSocket};

use crate::protocol::{self, Request};
use crate::{Event, Hub, HubError, JoinOptions, Member, Payload, Received};

/// Events written between two flushes, at most: a burst to one member leaves in one write.
const BATCH: usize = 64;

/// How a member's connection ended, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The close code of the side that closed first, or of the failure.
    pub code: Option<u16>,
    /// Who closed first: `"client"` or `"server"`.
    pub by: Option<&'static str>,
    /// What failed, if anything did.
    pub error: Option<String>,
    /// The closing handshake has started.
    closing: bool,
}

impl Outcome {
    fn peer_closed(&mut self, frame: Option<CloseFrame>) {
        if self.code.is_none() {
            self.code = Some(frame.map_or(CloseCode::NO_STATUS.0, |f| f.code.0));
            self.by = Some("client");
        }
        self.closing = true;
    }

    fn failed(&mut self, error: wsx::Error) {
        if self.code.is_none() {
            self.code = error.close_code().map(|c| c.0);
        }
        self.error.get_or_insert_with(|| error.to_string());
        self.closing = true;
    }

    /// Starts the closing handshake (unless one is under way); the caller goes on receiving
    /// until the peer's answer.
    ///
    /// Boxed: it is rare (the handshake starts once; a later call returns at once), and this
    /// future (192 B) awaited in line would be laid out in the session's future, which every
    /// idle member keeps for the connection's life.
    fn close<'a, S: AsyncRead + AsyncWrite + Unpin>(
        &'a mut self,
        ws: &'a mut WebSocket<S>,
        code: CloseCode,
        reason: &'a str,
    ) -> Pin<Box<impl Future<Output = ()> + 'a>> {
        Box::pin(async move {
            self.closing = true;
            if ws.state() != State::Open {
                return;
            }
            if self.code.is_none() {
                self.code = Some(code.0);
                self.by = Some("server");
            }
            // A longer reason (a broker's error message, say) would make the close be refused.
            let frame = CloseFrame::new(code, CloseFrame::fit_reason(reason));
            // The connection's write timeout bounds this when the peer stopped reading.
            if let Err(e) = ws.send(Message::Close(Some(frame))).await {
                self.failed(e);
            }
        })
    }
}

/// What a member session's wait ended with.
enum Wake {
    /// The peer's next message (`None`: the connection ended).
    Peer(Option<Result<Message, wsx::Error>>),
    /// An event of the member's rooms.
    Room(Received),
    /// The server is shutting down.
    Shutdown,
}

/// Serves a raw member of `room` until the connection ends: every text or binary message it
/// sends is published to the room, and every message of the room is sent to it as a text or
/// binary message. See the [module docs](self) for when the server closes it.
pub async fn raw_member<S>(ws: &mut WebSocket<S>, hub: &Hub, room: &str, shutdown: impl Future<Output = ()>) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = Outcome::default();
    let mut member = hub.member();
    // Boxed: a join's future is large (1,032 B) and awaited once; in line, room for it would
    // stay in the session's future, so in every idle member, for the whole connection.
    if let Err(e) = Box::pin(member.join(room, JoinOptions::default())).await {
        out.close(ws, CloseCode::TRY_AGAIN_LATER, &e.to_string()).await;
    }
    tokio::pin!(shutdown);
    let mut shut = false;
    loop {
        // Only the wait is in the `select!`, and a message to publish leaves this block: the
        // awaits that follow are not laid out beside the select's futures, its output or the
        // message in the session's future, which an idle member keeps for its connection's life.
        let publish = {
            let wake = tokio::select! {
                msg = ws.recv() => Wake::Peer(msg),
                received = member.recv(), if !out.closing => Wake::Room(received),
                () = &mut shutdown, if !shut => Wake::Shutdown,
            };
            match wake {
                Wake::Peer(msg) => match msg {
                    None => break,
                    Some(Ok(Message::Text(t))) if !out.closing => Some(Payload::Text(t)),
                    Some(Ok(Message::Binary(b))) if !out.closing => Some(Payload::Binary(b)),
                    Some(Ok(Message::Close(frame))) => {
                        out.peer_closed(frame);
                        None
                    }
                    Some(Ok(_)) => None,
                    Some(Err(e)) => {
                        out.failed(e);
                        None
                    }
                },
                Wake::Room(received) => {
                    let mut next = Some(received);
                    let mut written = 0;
                    while let Some(received) = next.take() {
                        match received {
                            Received::Event(_, Event::Message(m)) => {
                                if let Err(e) = ws.feed_prepared(m.raw_frame()).await {
                                    out.failed(e);
                                    break;
                                }
                                written += 1;
                            }
                            Received::Event(_, Event::Resumed { recovered: false, .. }) => {
                                out.close(
                                    ws,
                                    CloseCode::SERVICE_RESTART,
                                    "messages lost while the room broker was away: reconnect",
                                )
                                .await;
                                break;
                            }
                            Received::Event(..) => {}
                            Received::Lagged(lag) => {
                                out.close(ws, CloseCode::POLICY_VIOLATION, &format!("too slow: {lag}")).await;
                                break;
                            }
                        }
                        if written < BATCH {
                            next = member.try_recv();
                        }
                    }
                    if !out.closing {
                        if let Err(e) = ws.flush().await {
                            out.failed(e);
                        }
                    }
                    None
                }
                Wake::Shutdown => {
                    shut = true;
                    out.close(ws, CloseCode::GOING_AWAY, "server shutting down").await;
                    None
                }
            }
        };
        if let Some(payload) = publish {
            // Boxed: one allocation per message published, beside those a publish makes anyway
            // (its engine's boxed future, the message); in line, its future (248 B, with the
            // broker deadline's timer) took the session past jemalloc's 896-byte size class, for
            // every idle member.
            if let Err(e) = Box::pin(hub.publish(room, payload)).await {
                out.close(ws, CloseCode::TRY_AGAIN_LATER, &e.to_string()).await;
            }
        }
    }
    out
}

/// Serves a client of the hub subprotocol ([`protocol`]) until the connection ends. It is sent
/// `welcome` first; requests are answered in order; room events are sent as they come.
pub async fn hub_member<S>(ws: &mut WebSocket<S>, hub: &Hub, shutdown: impl Future<Output = ()>) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = Outcome::default();
    let mut member = hub.member();
    if let Err(e) = ws.send_text(protocol::welcome(member.id(), hub.node_id())).await {
        out.failed(e);
    }
    tokio::pin!(shutdown);
    let mut shut = false;
    loop {
        tokio::select! {
            msg = ws.recv() => match msg {
                None => break,
                Some(Ok(Message::Text(t))) if !out.closing => {
                    // Boxed (one allocation per request, next to parsing its JSON): in line,
                    // the request's future would be part of every idle member's. (A publish
                    // handled in line, the rest boxed, measured 1,080 B for this session:
                    // past jemalloc's 1,024-byte class, 256 B more per idle member.)
                    let answers = Box::pin(request(hub, &mut member, t.as_str())).await;
                    for answer in answers {
                        if let Err(e) = ws.feed_prepared(&answer).await {
                            out.failed(e);
                            break;
                        }
                    }
                    if !out.closing {
                        if let Err(e) = ws.flush().await {
                            out.failed(e);
                        }
                    }
                }
                Some(Ok(Message::Binary(_))) if !out.closing => {
                    let answer = protocol::error(None, "bad_request", "wsx.hub.v1 takes JSON text messages only");
                    if let Err(e) = ws.send_text(answer).await {
                        out.failed(e);
                    }
                }
                Some(Ok(Message::Close(frame))) => out.peer_closed(frame),
                Some(Ok(_)) => {}
                Some(Err(e)) => out.failed(e),
            },
            received = member.recv(), if !out.closing => {
                let mut next = Some(received);
                let mut written = 0;
                while let Some(received) = next.take() {
                    let frame = match received {
                        Received::Event(_, Event::Message(m)) => m.hub_frame().clone(),
                        Received::Event(room, event) => PreparedMessage::text(event_text(&room, &event)),
                        Received::Lagged(lag) => {
                            out.close(ws, CloseCode::POLICY_VIOLATION, &format!("too slow: {lag}")).await;
                            break;
                        }
                    };
                    if let Err(e) = ws.feed_prepared(&frame).await {
                        out.failed(e);
                        break;
                    }
                    written += 1;
                    if written < BATCH {
                        next = member.try_recv();
                    }
                }
                if !out.closing {
                    if let Err(e) = ws.flush().await {
                        out.failed(e);
                    }
                }
            },
            _ = &mut shutdown, if !shut => {
                shut = true;
                out.close(ws, CloseCode::GOING_AWAY, "server shutting down").await;
            }
        }
    }
    out
}

/// The text of a room event other than a message.
fn event_text(room: &str, event: &Event) -> String {
    match event {
        Event::Message(m) => protocol::message_event(m),
        Event::Join(who) => protocol::presence_event("join", room, who),
        Event::Leave(who) => protocol::presence_event("leave", room, who),
        Event::Interrupted => protocol::interrupted(room),
        Event::Resumed { recovered, missed, position } => protocol::resumed(room, *recovered, *missed, position),
    }
}

/// Handles one request; returns the answers to send, in order.
async fn request(hub: &Hub, member: &mut Member, text: &str) -> Vec<PreparedMessage> {
    let request = match Request::parse(text) {
        Ok(r) => r,
        Err(bad) => return vec![PreparedMessage::text(protocol::error(bad.id.as_ref(), "bad_request", &bad.message))],
    };
    let id: Option<Value> = request.id().cloned();
    let id = id.as_ref();
    let fail = |e: &HubError| vec![PreparedMessage::text(protocol::hub_error(id, e))];
    match request {
        Request::Subscribe { room, since, history, name, presence, .. } => {
            let options = JoinOptions { name, presence_events: presence, since: since.map(Into::into), history };
            // Boxed: a join is rare and its future large; in line, it would make the request's
            // future that much larger.
            match Box::pin(member.join(&room, options)).await {
                Ok(joined) => {
                    let n = joined.messages.len();
                    let mut answers = vec![PreparedMessage::text(protocol::subscribed(
                        id,
                        &room,
                        &joined.position,
                        joined.recovered,
                        n,
                    ))];
                    answers.extend(joined.messages.iter().map(|m| m.hub_frame().clone()));
                    answers
                }
                Err(e) => fail(&e),
            }
        }
        Request::Unsubscribe { room, .. } => {
            if member.leave(&room) {
                vec![PreparedMessage::text(protocol::unsubscribed(id, &room))]
            } else {
                fail(&HubError::NotJoined(room))
            }
        }
        Request::Publish { room, text, data, binary, .. } => match protocol::publish_payload(text, data, binary) {
            Ok(payload) => match hub.publish(&room, payload).await {
                Ok(position) => vec![PreparedMessage::text(protocol::published(id, &room, &position))],
                Err(e) => fail(&e),
            },
            Err(message) => vec![PreparedMessage::text(protocol::error(id, "bad_request", &message))],
        },
        Request::Presence { room, .. } => {
            if !member.is_in(&room) {
                return fail(&HubError::NotJoined(room));
            }
            match hub.presence(&room).await {
                Ok(members) => vec![PreparedMessage::text(protocol::presence(id, &room, &members))],
                Err(e) => fail(&e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HubConfig;

    /// An idle member's memory is mostly its session future (a server boxes it per connection):
    /// a rare, large step awaited in line (a join: 1,032 B) made every idle member carry it.
    #[tokio::test]
    async fn idle_session_futures_stay_small() {
        let hub = Hub::local(HubConfig { node_id: Some("n".into()), ..HubConfig::default() });
        let (stream, _peer) = tokio::io::duplex(64);
        let conn = wsx::proto::Connection::server(Default::default(), std::time::Instant::now());
        let mut ws = WebSocket::from_parts(stream, conn, Default::default(), None, None);
        // A stand-in for the shutdown future `wsx serve` passes: its `Shutdown` (an `Arc` and a
        // key, 16 bytes, `Unpin`) is itself the future.
        struct Shutdown(#[allow(dead_code, reason = "its size is the point")] [usize; 2]);
        impl Future for Shutdown {
            type Output = ();
            fn poll(self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<()> {
                std::task::Poll::Pending
            }
        }
        let shutdown = || Shutdown([0; 2]);
        let raw = std::mem::size_of_val(&raw_member(&mut ws, &hub, "a", shutdown()));
        let subprotocol = std::mem::size_of_val(&hub_member(&mut ws, &hub, shutdown()));
        let mut member = hub.member();
        let one_request = std::mem::size_of_val(&request(&hub, &mut member, ""));
        eprintln!("raw_member {raw} B, hub_member {subprotocol} B, request {one_request} B");
        // 840 and 792 B when measured (debug and release alike): under jemalloc's 896-byte
        // size class, where the boxed future lands.
        assert!(raw <= 896, "a raw member's session future grew to {raw} B");
        assert!(subprotocol <= 896, "a hub member's session future grew to {subprotocol} B");
        // Each request is boxed: 544 B when measured, 1,272 B with its join in line.
        assert!(one_request <= 640, "a request's future grew to {one_request} B");
    }
}
