//! tls-load: a closed-loop WebSocket echo load client over plain TCP (`ws://`) or rustls
//! (`wss://`), for `scripts/bench-tls`. wsload (`../shared/bench/wsload`) speaks plain TCP only;
//! this client drives the same traffic over either, so that one client measures what TLS adds.
//!
//! ```text
//! tls-load --url wss://127.0.0.1:9301/ --cacert target/bench-tls/certs/ca.pem \
//!          --conns 64 --size 1k --depth 16 --secs 5 --warmup 1 --server-pid PID
//! ```
//!
//! Every connection keeps `--depth` binary messages of `--size` bytes in flight, as wsload does:
//! it writes a batch of `depth` masked frames in one write (and one flush, so over TLS the batch
//! leaves as full 16 KiB records), reads until all `depth` echoes are back, and writes the next
//! batch. Reading goes on while a batch is being written, so large batches cannot deadlock.
//!
//! **Checks.** Each message carries its sequence number on the connection (the first 8 bytes of
//! the payload, big-endian; fewer for smaller messages) and a fixed pattern after it. Every echo
//! must be a binary message (in one frame or several) of exactly `--size` bytes with the
//! next sequence number (so a lost, duplicated or reordered echo fails the run), and its whole
//! payload is compared with what was sent in one batch out of `--verify-every` (default 1:
//! every batch). A close frame, a reset, or a batch that gets no complete echo for `--stall`
//! seconds (default 3) at the end fails the connection.
//!
//! **Cost.** One thread (a current-thread tokio runtime), pre-built frames (only the sequence
//! numbers are patched per batch), 256 KiB reads, payloads compared in place. Pin it to its own
//! core (`taskset`), away from the server's: the figure that matters is the server's CPU per
//! message, and `client_cpu_pct` near 100 while the server is below it says the client was the
//! limit.
//!
//! **Output**, one line of `key=value` fields on stdout:
//!
//! | field | meaning |
//! | --- | --- |
//! | `tls` | the negotiated protocol and cipher suite, or `plain` |
//! | `msgs_per_s` | echoed messages per second (batches completed inside the measured window) |
//! | `bytes_per_s`, `MiB_per_s` | `msgs_per_s × size`: payload bytes per second, one direction |
//! | `batches`, `mean_batch_us` | batches completed in the window, mean round trip of a batch |
//! | `client_cpu_pct`, `server_cpu_pct` | CPU time (utime + stime of `/proc/PID/stat`, all threads) in the window, % of one core |
//! | `client_cpu_us_per_msg`, `server_cpu_us_per_msg` | the same CPU time divided by the echoed messages |
//! | `errors` | connections that failed (details on stderr) |
//!
//! Exit status: 0 every connection ran cleanly, 1 some connection failed or an echo was wrong,
//! 2 bad arguments or setup failure.

use std::future::poll_fn;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use wsx::tls::rustls;

const USAGE: &str = "\
usage: tls-load --url ws[s]://HOST:PORT/PATH [--cacert FILE] [--conns 64] [--size 1k]
                [--depth 16] [--secs 5] [--warmup 1] [--verify-every 1] [--stall 3]
                [--server-pid PID]

Each connection keeps --depth binary messages of --size bytes in flight (sizes take a k or m
suffix, 1024-based) and checks every echo; after --warmup seconds it counts for --secs seconds
and prints one line of key=value fields. wss:// trusts only the CA certificate(s) in --cacert.";

/// Size of each connection's read buffer.
const READ_BUF: usize = 256 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

// ---------------------------------------------------------------- command line

struct Opts {
    url: Url,
    cacert: Option<PathBuf>,
    conns: usize,
    size: usize,
    depth: usize,
    secs: f64,
    warmup: f64,
    verify_every: u64,
    stall: Duration,
    server_pid: Option<u32>,
}

/// A parsed `ws://` or `wss://` URL.
#[derive(Debug, Clone, PartialEq)]
struct Url {
    tls: bool,
    host: String,
    port: u16,
    /// The request target, starting with '/'.
    path: String,
}

impl Url {
    fn parse(s: &str) -> Result<Url, String> {
        let err = |why: &str| format!("bad --url '{s}': {why}");
        let (tls, rest) = if let Some(rest) = s.strip_prefix("ws://") {
            (false, rest)
        } else if let Some(rest) = s.strip_prefix("wss://") {
            (true, rest)
        } else {
            return Err(err("it must start with ws:// or wss://"));
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        let path = match path.chars().next() {
            None => "/".to_string(),
            Some('?') => format!("/{path}"),
            Some(_) => path.to_string(),
        };
        let (host, port) = match authority.strip_prefix('[') {
            Some(bracketed) => {
                let (host, after) = bracketed.split_once(']').ok_or_else(|| err("unclosed '['"))?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        if host.is_empty() {
            return Err(err("missing host"));
        }
        let port = match port {
            None if tls => 443,
            None => 80,
            Some(p) => p.parse().ok().filter(|&p| p > 0).ok_or_else(|| err("bad port"))?,
        };
        Ok(Url { tls, host: host.to_string(), port, path })
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        format!("{host}:{}", self.port)
    }
}

/// `1024`, `1k`, `64k`, `1m` (1024-based).
fn parse_size(s: &str) -> Result<usize, String> {
    let lower = s.to_ascii_lowercase();
    let (digits, unit) = match lower.strip_suffix('k') {
        Some(d) => (d, 1024),
        None => match lower.strip_suffix('m') {
            Some(d) => (d, 1024 * 1024),
            None => (lower.as_str(), 1),
        },
    };
    digits.parse::<usize>().ok().and_then(|n| n.checked_mul(unit)).ok_or_else(|| format!("'{s}' is not a size"))
}

fn parse_opts(args: &[String]) -> Result<Opts, String> {
    let mut url = None;
    let mut o = Opts {
        url: Url { tls: false, host: String::new(), port: 0, path: String::new() },
        cacert: None,
        conns: 64,
        size: 1024,
        depth: 16,
        secs: 5.0,
        warmup: 1.0,
        verify_every: 1,
        stall: Duration::from_secs(3),
        server_pid: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next().cloned()).ok_or(format!("{flag} needs a value"));
        let positive = |v: String| match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{flag}: '{v}' is not a positive number")),
        };
        let seconds =
            |v: String| v.parse::<f64>().ok().filter(|s| *s >= 0.0).ok_or(format!("{flag}: '{v}' is not seconds"));
        match flag {
            "--url" => url = Some(Url::parse(&value()?)?),
            "--cacert" => o.cacert = Some(value()?.into()),
            "--conns" => o.conns = positive(value()?)?,
            "--size" => o.size = parse_size(&value()?)?,
            "--depth" => o.depth = positive(value()?)?,
            "--secs" => o.secs = seconds(value()?)?,
            "--warmup" => o.warmup = seconds(value()?)?,
            "--verify-every" => o.verify_every = positive(value()?)? as u64,
            "--stall" => o.stall = Duration::from_secs_f64(seconds(value()?)?),
            "--server-pid" => {
                let v = value()?;
                o.server_pid = Some(v.parse().map_err(|_| format!("--server-pid: '{v}' is not a pid"))?);
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    o.url = url.ok_or(format!("--url is required\n{USAGE}"))?;
    if o.secs <= 0.0 {
        return Err("--secs must be more than 0".into());
    }
    if o.url.tls && o.cacert.is_none() {
        return Err("wss:// needs --cacert FILE (the CA that signed the server's certificate)".into());
    }
    Ok(o)
}

// ---------------------------------------------------------------- the traffic

/// Bytes of the payload that carry the message's sequence number.
fn seq_len(size: usize) -> usize {
    size.min(8)
}

/// Appends one masked binary frame (FIN set) to `out`; returns where its payload starts.
fn push_masked_frame(out: &mut Vec<u8>, payload: &[u8], mask: [u8; 4]) -> usize {
    let len = payload.len();
    out.push(0x80 | OP_BINARY);
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    start
}

/// What every connection writes per batch (before the sequence numbers are patched in) and
/// what its echoes must carry.
struct Batch {
    /// `depth` complete masked frames, back to back.
    bytes: Vec<u8>,
    /// Where each frame's payload starts in `bytes`, and its mask.
    frames: Vec<(usize, [u8; 4])>,
    /// Each message's payload as sent, with zeros where the sequence number goes.
    payloads: Vec<Vec<u8>>,
    size: usize,
}

impl Batch {
    fn new(size: usize, depth: usize) -> Batch {
        let mut bytes = Vec::new();
        let mut frames = Vec::with_capacity(depth);
        let mut payloads = Vec::with_capacity(depth);
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for k in 0..depth {
            // Different for each message of the batch, so that a mixed-up echo shows.
            let mut payload: Vec<u8> = (0..size).map(|i| b'!' + ((i + 7 * k) % 94) as u8).collect();
            payload[..seq_len(size)].fill(0);
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let mask = (rng as u32).to_be_bytes();
            frames.push((push_masked_frame(&mut bytes, &payload, mask), mask));
            payloads.push(payload);
        }
        Batch { bytes, frames, payloads, size }
    }

    /// Writes the sequence numbers `first..first + depth` into the frames in `out` (a copy of
    /// `bytes`).
    fn number(&self, out: &mut [u8], first: u64) {
        let n = seq_len(self.size);
        for (k, &(start, mask)) in self.frames.iter().enumerate() {
            let seq = (first + k as u64).to_be_bytes();
            for j in 0..n {
                out[start + j] = seq[8 - n + j] ^ mask[j % 4];
            }
        }
    }
}

// ---------------------------------------------------------------- server frames

/// What the parser found.
#[derive(Debug, PartialEq)]
enum Event<'d> {
    /// The next piece of a data message's payload.
    Data(&'d [u8]),
    /// The end of a data message.
    MessageEnd { opcode: u8, len: u64 },
    /// A whole control frame.
    Control { opcode: u8, payload: Vec<u8> },
}

/// An incremental parser for the (unmasked) frames a server sends: give it whatever a read
/// returned; it keeps partial headers between calls and never copies data payloads.
#[derive(Default)]
struct FrameReader {
    header: [u8; 10],
    header_len: usize,
    in_frame: bool,
    fin: bool,
    opcode: u8,
    left: u64,
    msg_opcode: u8,
    msg_len: u64,
    control: Vec<u8>,
}

fn header_size(b1: u8) -> usize {
    match b1 & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    }
}

impl FrameReader {
    fn next<'d>(&mut self, data: &mut &'d [u8]) -> Result<Option<Event<'d>>, String> {
        loop {
            if self.in_frame {
                if self.left > 0 {
                    if data.is_empty() {
                        return Ok(None);
                    }
                    let n = self.left.min(data.len() as u64) as usize;
                    let (chunk, rest) = data.split_at(n);
                    *data = rest;
                    self.left -= n as u64;
                    if self.opcode >= OP_CLOSE {
                        self.control.extend_from_slice(chunk);
                        continue;
                    }
                    self.msg_len += n as u64;
                    return Ok(Some(Event::Data(chunk)));
                }
                self.in_frame = false;
                if self.opcode >= OP_CLOSE {
                    return Ok(Some(Event::Control {
                        opcode: self.opcode,
                        payload: std::mem::take(&mut self.control),
                    }));
                }
                if self.fin {
                    let end = Event::MessageEnd { opcode: self.msg_opcode, len: self.msg_len };
                    (self.msg_opcode, self.msg_len) = (0, 0);
                    return Ok(Some(end));
                }
                continue;
            }
            if self.header_len == 0 && data.len() >= 2 && data.len() >= header_size(data[1]) {
                let (header, rest) = data.split_at(header_size(data[1]));
                *data = rest;
                self.start_frame(header)?;
                continue;
            }
            if data.is_empty() {
                return Ok(None);
            }
            let want = if self.header_len < 2 { 2 } else { header_size(self.header[1]) };
            let n = (want - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            *data = &data[n..];
            if self.header_len >= 2 && self.header_len == header_size(self.header[1]) {
                let (header, len) = (self.header, self.header_len);
                self.header_len = 0;
                self.start_frame(&header[..len])?;
            }
        }
    }

    fn start_frame(&mut self, h: &[u8]) -> Result<(), String> {
        let fin = h[0] & 0x80 != 0;
        let opcode = h[0] & 0x0F;
        if h[0] & 0x70 != 0 {
            return Err(format!("server frame with reserved bits set (0x{:02x})", h[0]));
        }
        if h[1] & 0x80 != 0 {
            return Err("server sent a masked frame".into());
        }
        let len = match h[1] & 0x7F {
            126 => u16::from_be_bytes([h[2], h[3]]) as u64,
            127 => u64::from_be_bytes(h[2..10].try_into().expect("8 bytes")),
            n => n as u64,
        };
        match opcode {
            OP_CONTINUATION if self.msg_opcode == 0 => return Err("continuation frame with no message".into()),
            OP_CONTINUATION => {}
            OP_TEXT | OP_BINARY if self.msg_opcode != 0 => return Err("new message inside a fragmented one".into()),
            OP_TEXT | OP_BINARY => self.msg_opcode = opcode,
            OP_CLOSE | OP_PING | OP_PONG if !fin || len > 125 => {
                return Err(format!("invalid control frame (opcode {opcode}, length {len})"))
            }
            OP_CLOSE | OP_PING | OP_PONG => {}
            _ => return Err(format!("server frame with reserved opcode {opcode}")),
        }
        (self.in_frame, self.fin, self.opcode, self.left) = (true, fin, opcode, len);
        Ok(())
    }
}

fn describe_close(payload: &[u8]) -> String {
    match payload {
        [] => "no status code".into(),
        [a, b, reason @ ..] => format!("code {} '{}'", u16::from_be_bytes([*a, *b]), String::from_utf8_lossy(reason)),
        _ => "malformed close payload".into(),
    }
}

// ---------------------------------------------------------------- connections

/// The measurement window, shared by all connections.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

/// One connection's results.
#[derive(Default)]
struct Outcome {
    msgs: u64,
    batches: u64,
    batch_ns: u128,
    error: Option<String>,
}

/// The per-connection state machine, driven by `poll`, over plain TCP or TLS.
struct Conn<S> {
    stream: S,
    buf: Box<[u8]>,
    s: State,
}

struct State {
    batch: Arc<Batch>,
    /// This connection's copy of the batch, numbered for the batch in flight.
    out: Vec<u8>,
    window: Window,
    verify_every: u64,
    written: usize,
    /// Written but not yet flushed (TLS: records may still sit in rustls' buffer).
    need_flush: bool,
    /// Pong replies, written between batches.
    control_out: Vec<u8>,
    reader: FrameReader,
    /// The sequence number of the first message of the batch in flight.
    first_seq: u64,
    msg_index: usize,
    msg_offset: usize,
    verify: bool,
    batch_no: u64,
    sent_at: Instant,
    outcome: Outcome,
}

#[derive(Debug)]
enum Flow {
    Continue,
    Stop,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        loop {
            self.poll_write(cx)?;
            let n = {
                let mut rb = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut self.stream).poll_read(cx, &mut rb) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(format!("read failed: {e}"))),
                    Poll::Ready(Ok(())) => rb.filled().len(),
                }
            };
            if n == 0 {
                return Poll::Ready(Err("the server closed the connection".into()));
            }
            if let Flow::Stop = self.s.on_bytes(&self.buf[..n])? {
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Writes as much of the pending output as the stream takes, then flushes it.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<(), String> {
        loop {
            let s = &mut self.s;
            let at_boundary = s.written == 0 || s.written == s.out.len();
            let control = !s.control_out.is_empty() && at_boundary;
            let pending: &[u8] = if control {
                &s.control_out
            } else if s.written < s.out.len() {
                &s.out[s.written..]
            } else if s.need_flush {
                match Pin::new(&mut self.stream).poll_flush(cx) {
                    Poll::Pending => return Ok(()),
                    Poll::Ready(Ok(())) => {
                        s.need_flush = false;
                        return Ok(());
                    }
                    Poll::Ready(Err(e)) => return Err(format!("flush failed: {e}")),
                }
            } else {
                return Ok(());
            };
            match Pin::new(&mut self.stream).poll_write(cx, pending) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Ok(0)) => return Err("the connection closed while writing".into()),
                Poll::Ready(Ok(n)) if control => drop(s.control_out.drain(..n)),
                Poll::Ready(Ok(n)) => s.written += n,
                Poll::Ready(Err(e)) => return Err(format!("write failed: {e}")),
            }
            s.need_flush = true;
        }
    }
}

impl State {
    /// A connection's state before its first batch.
    fn new(batch: Arc<Batch>, out: Vec<u8>, window: Window, verify_every: u64) -> Self {
        State {
            batch,
            out,
            window,
            verify_every,
            written: 0,
            need_flush: false,
            control_out: Vec::new(),
            reader: FrameReader::default(),
            first_seq: 0,
            msg_index: 0,
            msg_offset: 0,
            verify: true,
            batch_no: 0,
            sent_at: Instant::now(),
            outcome: Outcome::default(),
        }
    }

    fn on_bytes(&mut self, mut data: &[u8]) -> Result<Flow, String> {
        while let Some(event) = self.reader.next(&mut data)? {
            match event {
                Event::Data(chunk) => {
                    if self.msg_index >= self.batch.payloads.len() {
                        return Err(format!("an echo arrived with no message of batch {} left to echo", self.batch_no));
                    }
                    self.check(chunk)?;
                    self.msg_offset += chunk.len();
                }
                Event::MessageEnd { opcode, len } => {
                    if opcode != OP_BINARY || len != self.batch.size as u64 {
                        return Err(format!(
                            "echo was a {len}-byte message with opcode {opcode}, expected {} bytes with opcode 2",
                            self.batch.size
                        ));
                    }
                    self.msg_offset = 0;
                    self.msg_index += 1;
                    if self.msg_index == self.batch.payloads.len() {
                        if let Flow::Stop = self.batch_done() {
                            return Ok(Flow::Stop);
                        }
                    }
                }
                Event::Control { opcode: OP_PING, payload } => {
                    let mut pong = Vec::new();
                    let start = push_masked_frame(&mut pong, &payload, [0x5a, 0x3c, 0x96, 0x0f]);
                    pong[0] = 0x80 | OP_PONG;
                    debug_assert_eq!(pong.len() - start, payload.len());
                    self.control_out.extend_from_slice(&pong);
                }
                Event::Control { opcode: OP_CLOSE, payload } => {
                    return Err(format!("the server sent a close frame ({})", describe_close(&payload)));
                }
                Event::Control { .. } => {} // an unsolicited pong
            }
        }
        Ok(Flow::Continue)
    }

    /// Checks a piece of the echo of message `msg_index` at `msg_offset`: always its sequence
    /// number, and the rest of the payload when this batch is verified.
    fn check(&self, chunk: &[u8]) -> Result<(), String> {
        let (k, from) = (self.msg_index, self.msg_offset);
        let to = from + chunk.len();
        let want = &self.batch.payloads[k];
        if to > want.len() {
            return Err(format!("echo of message {k} of batch {} is longer than {} bytes", self.batch_no, want.len()));
        }
        let n = seq_len(want.len());
        let seq = (self.first_seq + k as u64).to_be_bytes();
        for i in from..to.min(n) {
            if chunk[i - from] != seq[8 - n + i] {
                return Err(format!(
                    "echo out of order: expected message #{} (message {k} of batch {}), got other bytes \
                     where its sequence number goes (lost, duplicated or reordered echo?)",
                    self.first_seq + k as u64,
                    self.batch_no
                ));
            }
        }
        if self.verify && to > n {
            let start = from.max(n);
            if chunk[start - from..] != want[start..to] {
                return Err(format!(
                    "echo of message {k} of batch {} differs from what was sent (bytes {start}..{to})",
                    self.batch_no
                ));
            }
        }
        Ok(())
    }

    /// All echoes of the batch are back: count it and start the next one.
    fn batch_done(&mut self) -> Flow {
        let now = Instant::now();
        if now >= self.window.end {
            return Flow::Stop;
        }
        if now >= self.window.start {
            self.outcome.msgs += self.batch.payloads.len() as u64;
            self.outcome.batches += 1;
            self.outcome.batch_ns += (now - self.sent_at).as_nanos();
        }
        self.batch_no += 1;
        self.first_seq += self.batch.payloads.len() as u64;
        self.batch.number(&mut self.out, self.first_seq);
        self.verify = self.batch_no.is_multiple_of(self.verify_every);
        self.msg_index = 0;
        self.written = 0;
        self.sent_at = now;
        Flow::Continue
    }
}

async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    leftover: Vec<u8>,
    batch: Arc<Batch>,
    window: Window,
    verify_every: u64,
    stall: Duration,
) -> Outcome {
    let mut out = batch.bytes.clone();
    batch.number(&mut out, 0);
    let mut conn =
        Conn { stream, buf: vec![0; READ_BUF].into_boxed_slice(), s: State::new(batch, out, window, verify_every) };
    let mut result = conn.s.on_bytes(&leftover).map(|_| ());
    if result.is_ok() {
        let run = poll_fn(|cx| conn.poll(cx));
        result = match tokio::time::timeout_at(window.end.into(), run).await {
            Ok(finished) => finished,
            // The window closed with a batch in flight: abandon it, unless it has waited so long
            // that an echo was evidently lost.
            Err(_) => match window.end.saturating_duration_since(conn.s.sent_at) {
                waited if waited > stall => Err(format!(
                    "stalled: batch {} got no complete echo in {:.1} s (lost or unanswered message?)",
                    conn.s.batch_no,
                    waited.as_secs_f64()
                )),
                _ => Ok(()),
            },
        };
    }
    let mut outcome = std::mem::take(&mut conn.s.outcome);
    outcome.error = result.err();
    if outcome.error.is_none() && outcome.batches == 0 {
        outcome.error = Some("no batch of echoes completed during the measurement window".into());
    }
    outcome
}

// ---------------------------------------------------------------- setup

/// Sends the opening handshake and checks the `101` answer; returns the bytes read past it.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    url: &Url,
    key: &[u8; 16],
) -> Result<Vec<u8>, String> {
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        url.path,
        url.host_header()
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("cannot send the upgrade request: {e}"))?;
    stream.flush().await.map_err(|e| format!("cannot send the upgrade request: {e}"))?;
    let mut response = Vec::with_capacity(512);
    let mut chunk = [0u8; 2048];
    let end = loop {
        let n = stream.read(&mut chunk).await.map_err(|e| format!("reading the upgrade response: {e}"))?;
        if n == 0 {
            return Err("the server closed the connection instead of answering the upgrade request".into());
        }
        response.extend_from_slice(&chunk[..n]);
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if response.len() > 16 * 1024 {
            return Err("no end of the response head in its first 16 KiB".into());
        }
    };
    let head = String::from_utf8_lossy(&response[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("101") {
        return Err(format!("the server answered '{status}' instead of 101"));
    }
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let expected = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    let mut accept = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("sec-websocket-accept") {
                accept = Some(value.to_string());
            } else if name.eq_ignore_ascii_case("sec-websocket-extensions") && !value.is_empty() {
                return Err(format!("the server enabled extension '{value}', which was not offered"));
            }
        }
    }
    match accept {
        Some(a) if a == expected => Ok(response[end + 4..].to_vec()),
        Some(a) => Err(format!("Sec-WebSocket-Accept is '{a}', expected '{expected}'")),
        None => Err("the 101 response has no Sec-WebSocket-Accept".into()),
    }
}

async fn open_tcp(url: &Url) -> Result<TcpStream, String> {
    let addr = (url.host.as_str(), url.port);
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Err(_) => return Err(format!("connecting to {}:{} timed out", url.host, url.port)),
        Ok(Err(e)) => return Err(format!("cannot connect to {}:{}: {e}", url.host, url.port)),
        Ok(Ok(tcp)) => tcp,
    };
    tcp.set_nodelay(true).map_err(|e| format!("cannot set TCP_NODELAY: {e}"))?;
    Ok(tcp)
}

/// CPU seconds (user + system, all threads) a process has used: `self` or a pid.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may contain spaces:
    // utime and stime are fields 14 and 15 of the line, 12 and 13 of these.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / if hz > 0 { hz as f64 } else { 100.0 })
}

async fn run(o: Opts) -> Result<bool, String> {
    let tls = match &o.cacert {
        Some(ca) if o.url.tls => {
            let config = wsx::tls::ClientTls::new()
                .only_added_roots()
                .add_ca_pem_file(ca)
                .and_then(|t| t.build())
                .map_err(|e| format!("TLS: {e}"))?;
            let name = rustls::pki_types::ServerName::try_from(o.url.host.clone())
                .map_err(|_| format!("'{}' is not a TLS server name", o.url.host))?;
            Some((wsx::tls::TlsConnector::from(config), name))
        }
        _ => None,
    };
    let batch = Arc::new(Batch::new(o.size, o.depth));
    let mut key = [0u8; 16];

    // Connect everything before the clock starts.
    let mut plain = Vec::new();
    let mut secure = Vec::new();
    let mut suite = String::from("plain");
    for i in 0..o.conns {
        let fail = |e: String| format!("connection {} of {}: {e}", i + 1, o.conns);
        key[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let tcp = open_tcp(&o.url).await.map_err(fail)?;
        match &tls {
            None => {
                let mut tcp = tcp;
                let leftover = handshake(&mut tcp, &o.url, &key).await.map_err(fail)?;
                plain.push((tcp, leftover));
            }
            Some((connector, name)) => {
                let mut stream = match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name.clone(), tcp)).await
                {
                    Err(_) => return Err(fail("the TLS handshake timed out".into())),
                    Ok(Err(e)) => return Err(fail(format!("TLS handshake failed: {e}"))),
                    Ok(Ok(s)) => s,
                };
                let session = stream.get_ref().1;
                if let (Some(version), Some(cs)) = (session.protocol_version(), session.negotiated_cipher_suite()) {
                    suite = format!("{version:?}/{:?}", cs.suite());
                }
                let leftover = handshake(&mut stream, &o.url, &key).await.map_err(fail)?;
                secure.push((stream, leftover));
            }
        }
    }

    let start = Instant::now() + Duration::from_secs_f64(o.warmup);
    let window = Window { start, end: start + Duration::from_secs_f64(o.secs) };
    let mut tasks = Vec::with_capacity(o.conns);
    for (stream, leftover) in plain {
        tasks.push(tokio::spawn(drive(stream, leftover, batch.clone(), window, o.verify_every, o.stall)));
    }
    for (stream, leftover) in secure {
        tasks.push(tokio::spawn(drive(stream, leftover, batch.clone(), window, o.verify_every, o.stall)));
    }

    // CPU use of both sides over exactly the window.
    let server_pid = o.server_pid.map(|p| p.to_string());
    let cpu = || (cpu_seconds("self"), server_pid.as_deref().and_then(cpu_seconds));
    tokio::time::sleep_until(window.start.into()).await;
    let before = cpu();
    tokio::time::sleep_until(window.end.into()).await;
    let after = cpu();

    let (mut msgs, mut batches, mut batch_ns, mut errors) = (0u64, 0u64, 0u128, Vec::new());
    for (i, task) in tasks.into_iter().enumerate() {
        let outcome = task.await.map_err(|e| format!("connection task failed: {e}"))?;
        msgs += outcome.msgs;
        batches += outcome.batches;
        batch_ns += outcome.batch_ns;
        if let Some(e) = outcome.error {
            errors.push(format!("connection {}: {e}", i + 1));
        }
    }

    let used = |b: Option<f64>, a: Option<f64>| b.zip(a).map(|(b, a)| a - b);
    let (client_cpu, server_cpu) = (used(before.0, after.0), used(before.1, after.1));
    let pct = |c: Option<f64>| c.map_or("na".into(), |c| format!("{:.1}", c / o.secs * 100.0));
    let per_msg = |c: Option<f64>| match c {
        Some(c) if msgs > 0 => format!("{:.3}", c * 1e6 / msgs as f64),
        _ => "na".into(),
    };
    let msgs_per_s = msgs as f64 / o.secs;
    let mean_batch_us = if batches > 0 { batch_ns as f64 / batches as f64 / 1000.0 } else { 0.0 };
    println!(
        "tls={suite} conns={} size={} depth={} secs={} msgs={msgs} msgs_per_s={msgs_per_s:.0} bytes_per_s={:.0} \
         MiB_per_s={:.2} batches={batches} mean_batch_us={mean_batch_us:.1} client_cpu_pct={} server_cpu_pct={} \
         client_cpu_us_per_msg={} server_cpu_us_per_msg={} errors={}",
        o.conns,
        o.size,
        o.depth,
        o.secs,
        msgs_per_s * o.size as f64,
        msgs_per_s * o.size as f64 / (1024.0 * 1024.0),
        pct(client_cpu),
        pct(server_cpu),
        per_msg(client_cpu),
        per_msg(server_cpu),
        errors.len()
    );
    for e in errors.iter().take(5) {
        eprintln!("tls-load: {e}");
    }
    if errors.len() > 5 {
        eprintln!("tls-load: ... and {} more failed connections", errors.len() - 5);
    }
    Ok(errors.is_empty())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = match parse_opts(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("tls-load: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tls-load: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(o)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("tls-load: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = Url::parse("wss://127.0.0.1:9301/x?y").unwrap();
        assert_eq!(u, Url { tls: true, host: "127.0.0.1".into(), port: 9301, path: "/x?y".into() });
        let u = Url::parse("ws://[::1]:9").unwrap();
        assert_eq!((u.tls, u.host.as_str(), u.port, u.path.as_str()), (false, "::1", 9, "/"));
        assert_eq!(Url::parse("wss://localhost").unwrap().port, 443);
        assert!(Url::parse("http://x/").is_err());
        assert!(Url::parse("ws://:80/").is_err());
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("20").unwrap(), 20);
        assert_eq!(parse_size("1k").unwrap(), 1024);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("1m").unwrap(), 1 << 20);
        assert!(parse_size("x").is_err());
    }

    /// The server's echo of `out` (a numbered batch): the same payloads, unmasked, in server
    /// frames.
    fn echo_of(batch: &Batch, out: &[u8]) -> Vec<u8> {
        let mut echo = Vec::new();
        for &(start, mask) in &batch.frames {
            let payload: Vec<u8> =
                out[start..start + batch.size].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
            echo.push(0x80 | OP_BINARY);
            match payload.len() {
                n if n < 126 => echo.push(n as u8),
                n if n <= 0xFFFF => {
                    echo.push(126);
                    echo.extend_from_slice(&(n as u16).to_be_bytes());
                }
                n => {
                    echo.push(127);
                    echo.extend_from_slice(&(n as u64).to_be_bytes());
                }
            }
            echo.extend_from_slice(&payload);
        }
        echo
    }

    fn state(batch: Arc<Batch>) -> State {
        let mut out = batch.bytes.clone();
        batch.number(&mut out, 0);
        let now = Instant::now();
        State::new(batch, out, Window { start: now, end: now + Duration::from_secs(60) }, 1)
    }

    #[test]
    fn accepts_correct_echoes_byte_by_byte_and_counts_batches() {
        for (size, depth) in [(5, 3), (1024, 4), (70_000, 2)] {
            let batch = Arc::new(Batch::new(size, depth));
            let mut s = state(batch.clone());
            for round in 0..3u64 {
                let echo = echo_of(&batch, &s.out);
                if size < 100 {
                    for b in echo.chunks(1) {
                        assert!(matches!(s.on_bytes(b), Ok(Flow::Continue)));
                    }
                } else {
                    assert!(matches!(s.on_bytes(&echo), Ok(Flow::Continue)));
                }
                assert_eq!(s.outcome.batches, round + 1, "size {size}");
                assert_eq!(s.first_seq, (round + 1) * depth as u64);
            }
        }
    }

    #[test]
    fn rejects_reordered_lost_or_changed_echoes() {
        let batch = Arc::new(Batch::new(64, 3));
        // The second batch's echo while the first is expected: a lost batch.
        let mut s = state(batch.clone());
        let mut later = batch.bytes.clone();
        batch.number(&mut later, 3);
        assert!(s.on_bytes(&echo_of(&batch, &later)).unwrap_err().contains("out of order"));
        // Messages 0 and 1 swapped.
        let mut s = state(batch.clone());
        let echo = echo_of(&batch, &s.out);
        let frame = 2 + 64;
        let mut swapped = echo[frame..2 * frame].to_vec();
        swapped.extend_from_slice(&echo[..frame]);
        assert!(s.on_bytes(&swapped).is_err());
        // One payload byte changed.
        let mut s = state(batch.clone());
        let mut echo = echo_of(&batch, &s.out);
        echo[2 + 40] ^= 1;
        assert!(s.on_bytes(&echo).unwrap_err().contains("differs"));
        // A shorter message.
        let mut s = state(batch.clone());
        assert!(s.on_bytes(&[0x82, 3, 0, 0, 0]).unwrap_err().contains("3-byte"));
        // A close frame.
        let mut s = state(batch);
        assert!(s.on_bytes(&[0x88, 2, 0x03, 0xe9]).unwrap_err().contains("1001"));
    }

    #[test]
    fn answers_pings() {
        let mut s = state(Arc::new(Batch::new(16, 1)));
        assert!(s.on_bytes(&[0x89, 2, b'h', b'i']).is_ok());
        assert_eq!(s.control_out[0], 0x80 | OP_PONG);
        assert_eq!(s.control_out[1], 0x80 | 2);
        let mask = &s.control_out[2..6];
        assert_eq!([s.control_out[6] ^ mask[0], s.control_out[7] ^ mask[1]], *b"hi");
    }
}
