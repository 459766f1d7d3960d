//! The connection's read path, in either role, with or without permessage-deflate, after a real
//! opening handshake: arbitrary bytes from the peer, in arbitrary chunks, read with `read_event`
//! or `read_chunk`, with timers, application closes and echoes in between.
//!
//! Input layout (see README.md):
//!
//! ```text
//! byte 0   bit 0: we are the client (else the server); bit 1: echo data messages back;
//!          bits 2-3: the limits preset (fuzz/src/lib.rs, Limits::preset)
//! byte 1   permessage-deflate: bit 0 the client offers it, bit 1 the server accepts it,
//!          bits 2-5 no_context_takeover choices
//! byte 2   window bits of both sides
//! byte 3   N, then N op bytes, used in a cycle until the wire bytes are used up
//! rest     the bytes the peer sends, after the handshake head
//! ```
//!
//! An op byte: bits 6-7 the kind, bits 0-5 a chunk length (`chunk_len`):
//! 0 feed a chunk and `read_event` until nothing more; 1 the same with `read_chunk`; 2 feed and
//! read while ignoring a full write buffer (a driver that keeps reading); 3 no bytes, but by the
//! low two bits: advance the clock and run the timers, close from the application, send a ping
//! from the application, or let the transport take all pending output.
#![no_main]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wsx_fuzz::{chunk_len, establish, DeflateSetup, Input, Limits, OutputChecker, Shadow, WireMessage};
use wsx_proto::frame::{CloseCode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use wsx_proto::{CloseFrame, Connection, Error, Message, Role, State, StreamEvent};

/// The most a single control frame adds to the output.
const CONTROL_FRAME: usize = MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD;

fn rank(state: State) -> u8 {
    match state {
        State::Connecting => 0,
        State::Open => 1,
        State::Closing => 2,
        State::Closed => 3,
    }
}

struct Harness {
    conn: Connection,
    peer: Connection,
    limits: Limits,
    deflate: bool,
    echo: bool,
    now: Instant,
    buf: BytesMut,
    out: OutputChecker,
    /// Data messages we sent, in order, that the peer has not received yet.
    sent: VecDeque<Message>,
    /// The close frame we sent from the application, if any.
    app_close: Option<Option<CloseFrame>>,
    /// The close code the connection owes on the wire after failing, if it had not sent one.
    owed_close: Option<u16>,
    /// The message `read_chunk` is handing out: (text, bytes so far).
    streaming: Option<(bool, usize)>,
    /// `read_chunk` was called since the last message boundary the harness saw, so it may have
    /// taken over a message that has not produced a chunk yet.
    chunked: bool,
    last_state: State,
    /// The peer's stream as framed, to check data events against.
    shadow: Shadow,
    /// What the timers wrote (keepalive pings, a close) since the output was last empty: not
    /// the peer's doing, and bounded by how often the driver runs them.
    timer_output: usize,
}

impl Harness {
    /// Pending output stays bounded: over the high-water mark by at most a data message we sent
    /// while under it, plus a few control frames (a pong, a held pong, a close).
    fn check_pending(&self) {
        let largest_echo = if self.echo { self.limits.message + self.limits.message / 64 + 64 } else { 0 };
        let bound = self.limits.high_water + largest_echo + 4 * CONTROL_FRAME + self.timer_output;
        let pending = self.conn.pending_output();
        assert!(pending <= bound, "pending output {pending} over the bound {bound}");
    }

    fn check_state(&mut self) {
        let state = self.conn.state();
        assert!(rank(state) >= rank(self.last_state), "state went back from {:?} to {state:?}", self.last_state);
        if self.last_state == State::Closed {
            assert_eq!(state, State::Closed);
        }
        if state == State::Closed {
            assert_eq!(self.conn.poll_timeout(), None, "a closed connection asks for timers");
        }
        self.last_state = state;
        self.check_pending();
    }

    /// Lets the transport take up to `max` bytes of output, checks them, and hands them to the
    /// peer, which must accept them all.
    fn drain(&mut self, max: usize) {
        let bytes = self.out.drain(&mut self.conn, max);
        if self.conn.pending_output() == 0 {
            self.timer_output = 0;
        }
        let mut wire = BytesMut::from(&bytes[..]);
        loop {
            match self.peer.read_event(&mut wire, self.now) {
                Ok(Some(Message::Close(frame))) => {
                    if let Some(sent) = &self.app_close {
                        assert_eq!(&frame, sent, "the peer got another close frame than we sent");
                    }
                }
                Ok(Some(message)) if message.is_data() => {
                    let expected = self.sent.pop_front().expect("the peer got a data message we did not send");
                    assert_eq!(message, expected, "the peer got another message than we sent");
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => panic!("the peer refused what we wrote: {e}"),
            }
        }
    }

    /// A whole data message (an event, or the last chunk) of `len` bytes was handed out: it is
    /// the next one the peer completed on the wire, of the same type, and within every limit as
    /// it was framed.
    fn check_wire_message(&mut self, text: bool, len: usize) {
        let wire: WireMessage = self.shadow.done.pop_front().expect("a data message the peer did not complete");
        assert_eq!(wire.text, text, "a message changed type: {wire:?}");
        assert!(wire.largest_frame <= self.limits.frame as u64, "a frame over max_frame_size let through: {wire:?}");
        assert!(wire.frames <= self.limits.fragments, "more than max_fragments frames let through: {wire:?}");
        if wire.compressed {
            assert!(self.deflate, "a compressed message without permessage-deflate: {wire:?}");
            let budget = self.limits.largest_message(true);
            assert!(len <= budget, "a compressed message inflated to {len} bytes, over {budget}");
        } else {
            assert_eq!(len as u64, wire.wire_len, "a message of another length than sent: {wire:?}");
        }
    }

    fn check_message(&mut self, message: &Message) {
        if let Message::Text(_) | Message::Binary(_) = message {
            self.check_wire_message(matches!(message, Message::Text(_)), message.payload().len());
        }
        match message {
            Message::Text(text) => {
                // Check the bytes, not `as_str` (which trusts them).
                assert!(std::str::from_utf8(text.as_bytes()).is_ok(), "a text message that is not UTF-8");
                assert!(text.len() <= self.limits.message, "text message of {} bytes", text.len());
            }
            Message::Binary(data) => {
                assert!(data.len() <= self.limits.message, "binary message of {} bytes", data.len());
            }
            Message::Ping(p) | Message::Pong(p) => assert!(p.len() <= MAX_CONTROL_PAYLOAD),
            Message::Close(frame) => {
                assert_eq!(self.conn.state(), State::Closed, "a close received but not closed");
                if let Some(f) = frame {
                    assert!(f.code.is_valid_on_wire(), "close code {} handed out", f.code);
                    assert!(f.reason.len() <= 123);
                    assert!(std::str::from_utf8(f.reason.as_bytes()).is_ok());
                }
                self.streaming = None;
                self.chunked = false;
            }
        }
        if self.echo && message.is_data() && self.conn.state() == State::Open && !self.conn.is_output_full() {
            self.conn.send(message.clone()).expect("an open connection sends");
            self.sent.push_back(message.clone());
        }
    }

    fn check_chunk(&mut self, chunk: &wsx_proto::Chunk) {
        let (text, so_far) = match self.streaming {
            Some((text, so_far)) => {
                assert!(!chunk.first, "a chunk marked first in the middle of a message");
                assert_eq!(chunk.text, text, "a message changed type");
                (text, so_far)
            }
            // `read_chunk` may take over a message `read_event` started: then the first chunk
            // holds everything so far.
            None => (chunk.text, 0),
        };
        if text {
            assert!(std::str::from_utf8(&chunk.data).is_ok(), "a text chunk that is not UTF-8");
            assert!(chunk.as_str().is_some());
        }
        let total = so_far + chunk.data.len();
        assert!(total <= self.limits.message, "a streamed message of {total} bytes");
        if chunk.fin {
            self.check_wire_message(text, total);
        }
        self.streaming = if chunk.fin { None } else { Some((text, total)) };
        if chunk.fin {
            self.chunked = false;
        }
    }

    /// A read failed: check the error against the state and the close frame it owes.
    fn on_error(&mut self, err: Error, close_sent_before: bool) {
        match &err {
            Error::Protocol(_) | Error::Limit(_) => {
                assert_eq!(self.conn.state(), State::Closed, "failed but not closed: {err}");
                let code = err.close_code().expect("a peer's fault has a close code").0;
                assert!(CloseCode(code).is_valid_on_wire());
                if !close_sent_before {
                    self.owed_close = Some(code);
                }
                self.streaming = None;
                self.chunked = false;
            }
            Error::Usage(_) => panic!("a usage error that the harness did not provoke: {err}"),
            _ => panic!("an unexpected error from a read: {err}"),
        }
    }

    /// Reads with `read_event` until it has nothing more; true if it refused because
    /// `read_chunk` has a message in progress.
    fn read_events(&mut self) -> bool {
        loop {
            let closed = self.conn.state() == State::Closed;
            let (pending, close_sent) = (self.conn.pending_output(), self.conn.close_sent());
            let before = self.buf.clone();
            let result = self.conn.read_event(&mut self.buf, self.now);
            if closed {
                assert!(matches!(result, Ok(None)), "a closed connection read something: {result:?}");
                assert!(self.buf.is_empty(), "a closed connection kept input");
                assert_eq!(self.conn.pending_output(), pending, "a closed connection wrote");
            }
            if self.streaming.is_some() {
                // A message `read_chunk` started must be finished with `read_chunk`.
                assert!(matches!(result, Err(Error::Usage(_))), "read_event took over a streamed message");
            }
            if let Err(Error::Usage(_)) = result {
                assert!(self.chunked, "read_event refused without read_chunk having started a message");
                assert_eq!(self.conn.pending_output(), pending, "a refused call wrote");
                assert_eq!(self.buf, before, "a refused call consumed input");
                assert_eq!(self.conn.state(), self.last_state, "a refused call changed the state");
                // The harness goes on with `read_chunk`.
                return true;
            }
            match result {
                Ok(Some(message)) => {
                    if message.is_data() {
                        self.chunked = false;
                    }
                    self.check_message(&message)
                }
                Ok(None) => break,
                Err(e) => {
                    self.on_error(e, close_sent);
                    break;
                }
            }
            self.check_state();
        }
        self.check_state();
        false
    }

    /// Reads with `read_chunk` until it has nothing more.
    fn read_chunks(&mut self) {
        loop {
            let closed = self.conn.state() == State::Closed;
            let (pending, close_sent) = (self.conn.pending_output(), self.conn.close_sent());
            let result = self.conn.read_chunk(&mut self.buf, self.now);
            self.chunked = true;
            if closed {
                assert!(matches!(result, Ok(None)), "a closed connection read something: {result:?}");
                assert_eq!(self.conn.pending_output(), pending, "a closed connection wrote");
            }
            match result {
                Ok(Some(StreamEvent::Chunk(chunk))) => self.check_chunk(&chunk),
                Ok(Some(StreamEvent::Control(message))) => {
                    assert!(!message.is_data(), "read_chunk handed out a whole data message");
                    self.check_message(&message);
                }
                Ok(None) => break,
                Err(e) => {
                    self.on_error(e, close_sent);
                    break;
                }
            }
            self.check_state();
        }
        self.check_state();
    }

    fn special(&mut self, code: u8) {
        match code & 3 {
            0 => {
                self.now += Duration::from_secs(u64::from(code >> 2));
                let closed = self.conn.state() == State::Closed;
                let close_sent = self.conn.close_sent();
                let pending = self.conn.pending_output();
                let result = self.conn.handle_timeout(self.now);
                self.timer_output += self.conn.pending_output().saturating_sub(pending);
                match result {
                    Ok(()) => {}
                    Err(Error::Timeout(e)) => {
                        assert!(!closed, "a closed connection timed out");
                        assert_eq!(self.conn.state(), State::Closed, "timed out ({e}) but not closed");
                        if let (false, Some(code)) = (close_sent, Error::Timeout(e).close_code()) {
                            self.owed_close = Some(code.0);
                        }
                        self.streaming = None;
                        self.chunked = false;
                    }
                    Err(e) => panic!("handle_timeout failed with {e}"),
                }
            }
            1 => {
                let frame = Some(CloseFrame::new(CloseCode::NORMAL, "bye"));
                let allowed = self.conn.state() == State::Open && !self.conn.close_sent();
                let result = self.conn.close(frame.clone(), self.now);
                assert_eq!(result.is_ok(), allowed, "close() from {:?}: {result:?}", self.conn.state());
                if allowed {
                    assert_eq!(self.conn.state(), State::Closing);
                    self.app_close = Some(frame);
                }
            }
            // A driver makes the application wait while the write buffer is full.
            2 if !self.conn.is_output_full() => {
                let open = self.conn.state() == State::Open;
                let result = self.conn.send(Message::Ping(bytes::Bytes::from_static(b"app")));
                assert_eq!(result.is_ok(), open, "send(ping) in {:?}: {result:?}", self.conn.state());
            }
            2 => {}
            _ => self.drain(usize::MAX),
        }
        self.check_state();
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let deflate_flags = input.byte();
    let deflate_bits = input.byte();
    let ops = input.short_slice().to_vec();
    let wire = input.rest();

    let role = if flags & 1 != 0 { Role::Client } else { Role::Server };
    let limits = Limits::preset(flags >> 2);
    let deflate = DeflateSetup::from_bytes(deflate_flags, deflate_bits);
    let now = Instant::now();
    let ops = if ops.is_empty() { vec![0x3f] } else { ops };
    let first = chunk_len(ops[0]).min(wire.len());
    let established = establish(role, &limits, &deflate, &wire[..first], now);

    let mut shadow = Shadow::default();
    shadow.feed(&established.leftover);
    let deflate_on = established.params.is_some();
    assert_eq!(established.ours.is_deflate(), deflate_on);
    let mut h = Harness {
        conn: established.ours,
        peer: established.peer,
        limits,
        deflate: deflate_on,
        echo: flags & 2 != 0,
        now,
        buf: established.leftover,
        out: OutputChecker::new(role, deflate_on),
        sent: VecDeque::new(),
        app_close: None,
        owed_close: None,
        streaming: None,
        chunked: false,
        timer_output: 0,
        shadow,
        last_state: State::Open,
    };
    assert_eq!(h.conn.state(), State::Open);
    assert_eq!(h.conn.role(), role);
    let _ = h.deflate;

    let mut rest = &wire[first..];
    for (i, &op) in ops.iter().cycle().enumerate() {
        if i > 0 && rest.is_empty() {
            break;
        }
        let kind = op >> 6;
        if kind == 3 {
            h.special(op & 0x3f);
            if i > ops.len() * 4 + wire.len() {
                break; // only special ops: do not loop forever
            }
            continue;
        }
        if i > 0 {
            let n = chunk_len(op).min(rest.len());
            h.buf.extend_from_slice(&rest[..n]);
            h.shadow.feed(&rest[..n]);
            rest = &rest[n..];
        }
        // A driver stops reading while the write buffer is full and lets the transport take
        // some: kind 2 plays one that does not.
        if kind != 2 && h.conn.is_output_full() {
            h.drain(usize::MAX);
        }
        if kind == 1 {
            h.read_chunks();
        } else {
            // While `read_chunk` is handing a message out, `read_event` refuses (checked in
            // `read_events`) and the harness goes on with `read_chunk`.
            if h.read_events() || h.streaming.is_some() {
                h.read_chunks();
            }
        }
    }

    // The end: whatever the transport has not taken leaves now, and makes whole frames.
    h.drain(usize::MAX);
    h.out.finish();
    if let Some(code) = h.owed_close {
        assert_eq!(h.out.close_code(), Some(code), "the connection failed without saying why on the wire");
    }
    if h.conn.state() == State::Closed && h.conn.close_received().is_some() {
        assert!(h.out.close_seen(), "the peer's close was not answered");
    }
});
