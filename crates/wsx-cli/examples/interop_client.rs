//! Our client in the interop tests (`scripts/interop`): runs the message set of
//! `interop/README.md` against a peer's echo server (Python `websockets`, Node `ws`) and checks
//! every echo byte for byte.
//!
//! Usage: `interop_client URL [--deflate | --no-deflate] [--expect-deflate] [--cacert FILE]
//! [--untrusted-cacert FILE] [--plain-refused-url URL2] [--http2]`
//!
//! - `--http2`: every WebSocket must be carried by HTTP/2 (RFC 8441; `Http2Mode::Only`: ALPN
//!   `h2` for `wss://`, prior knowledge for `ws://`), each on a stream of its own connection.
//! - `--deflate` offers permessage-deflate (default: `--no-deflate`, no offer).
//! - `--expect-deflate`: the server must accept it; without it, no extension may be agreed.
//! - `--cacert FILE`: for a `wss://` URL (required there): trust only the CA certificates of
//!   FILE, not the system's. The connection must then really be TLS; the TLS version and cipher
//!   suite are reported.
//! - `--untrusted-cacert FILE`: first, a connection that trusts only FILE (a CA that did not
//!   sign the server's certificate) must be refused with "unknown issuer": the certificate is
//!   verified at all.
//! - `--plain-refused-url URL2`: first, a plain `ws://` connection to URL2 (the server's TLS
//!   port) must fail within 5 s, not hang.
//!
//! Connection 1: the message set (text and binary of 0 B, 20 B, 1 MiB compressible, 1 MiB
//! random; a fragmented text and a fragmented binary message), pings with payloads, the server's
//! own ping, then the text `close 4002 bye from server`, upon which the server closes with that
//! code and reason. Connection 2: one echo, then we close with 4001 `bye from client` and the
//! server must echo the code.
//!
//! Exit status 0 when everything matched; otherwise 1, with the first mismatch on stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wsx::h2::Http2Mode;
use wsx::proto::deflate::DeflateConfig;
use wsx::tls::ClientTls;
use wsx::{ClientBuilder, CloseCode, Message, TlsError, WebSocket, WebSocketConfig};

type Ws = WebSocket<wsx::MaybeTlsStream>;

const MIB: usize = 1 << 20;
/// How long one echo, pong or close may take before the run fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);
/// A closing handshake that takes longer than this did not end cleanly (the close timeout is 5 s).
const CLOSE_DEADLINE: Duration = Duration::from_secs(3);
/// A connection that must be refused (plain to a TLS port, untrusted certificate) must fail
/// within this, not hang.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(5);
/// The text message that asks the server to close with 4002 `bye from server`.
const CLOSE_COMMAND: &str = "close 4002 bye from server";
/// What the peer servers send as their ping right after the handshake.
const SERVER_PING: &[u8] = b"ping from server";

const USAGE: &str = "usage: interop_client URL [--deflate | --no-deflate] [--expect-deflate] [--cacert FILE] \
                     [--untrusted-cacert FILE] [--plain-refused-url URL2] [--http2]";

#[derive(Debug)]
struct Args {
    url: String,
    deflate: bool,
    expect_deflate: bool,
    cacert: Option<PathBuf>,
    untrusted_cacert: Option<PathBuf>,
    plain_refused_url: Option<String>,
    http2: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut url = None;
    let mut deflate = false;
    let mut expect_deflate = false;
    let mut cacert = None;
    let mut untrusted_cacert = None;
    let mut plain_refused_url = None;
    let mut http2 = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--deflate" => deflate = true,
            "--no-deflate" => deflate = false,
            "--expect-deflate" => expect_deflate = true,
            "--cacert" => cacert = Some(PathBuf::from(value("--cacert")?)),
            "--untrusted-cacert" => untrusted_cacert = Some(PathBuf::from(value("--untrusted-cacert")?)),
            "--plain-refused-url" => plain_refused_url = Some(value("--plain-refused-url")?),
            "--http2" => http2 = true,
            a if a.starts_with("--") => return Err(format!("unknown option {a}")),
            a if url.is_none() => url = Some(a.to_owned()),
            a => return Err(format!("unexpected argument {a}")),
        }
    }
    let url: String = url.ok_or(USAGE)?;
    let tls = url.starts_with("wss://");
    if tls && cacert.is_none() {
        // The system's roots would not know the test CA, and verification stays on.
        return Err(format!("{url}: a wss:// URL needs --cacert FILE (the CA to trust)"));
    }
    if !tls && (cacert.is_some() || untrusted_cacert.is_some() || plain_refused_url.is_some()) {
        return Err(format!("--cacert, --untrusted-cacert and --plain-refused-url need a wss:// URL, not {url}"));
    }
    Ok(Args { url, deflate, expect_deflate, cacert, untrusted_cacert, plain_refused_url, http2 })
}

/// A client configuration that trusts only the CA certificates of `file`.
fn trust_only(option: &str, file: &std::path::Path) -> Result<ClientTls, String> {
    ClientTls::new().only_added_roots().add_ca_pem_file(file).map_err(|e| format!("{option} {}: {e}", file.display()))
}

// ---------------------------------------------------------------- the message set

/// xorshift32 (Marsaglia): the seeded generator all interop peers share, so the "random"
/// messages are the same bytes in every language.
struct XorShift32(u32);

impl XorShift32 {
    fn next(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
}

/// `len` pseudo-random bytes: each step of the generator gives 4 bytes, little-endian.
fn random_bytes(seed: u32, len: usize) -> Vec<u8> {
    let mut rng = XorShift32(seed);
    let mut out = Vec::with_capacity(len + 4);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Characters of 1 to 4 bytes in UTF-8, so that frame and fragment boundaries fall inside them.
const ALPHABET: &str = "abcdefghijklmnopqrstuvwxyz0123456789 éßñ€✓中😀𝄞";

/// Pseudo-random text of exactly `len` bytes: characters of [`ALPHABET`] picked by the generator
/// while the next one fits, then `.` up to `len`.
fn random_text(seed: u32, len: usize) -> String {
    let alphabet: Vec<char> = ALPHABET.chars().collect();
    let mut rng = XorShift32(seed);
    let mut out = String::with_capacity(len);
    loop {
        let c = alphabet[rng.next() as usize % alphabet.len()];
        if out.len() + c.len_utf8() > len {
            break;
        }
        out.push(c);
    }
    while out.len() < len {
        out.push('.');
    }
    out
}

const PATTERN: &str = "wsx interop: the quick brown fox jumps over the lazy dog 0123456789\n";

fn compressible_text(len: usize) -> String {
    PATTERN.bytes().cycle().take(len).map(char::from).collect()
}

fn compressible_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Splits `data` into fragments of the given sizes, the rest going into a last fragment.
fn split(data: &[u8], sizes: &[usize]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = 0;
    for &n in sizes {
        out.push(Bytes::copy_from_slice(&data[at..at + n]));
        at += n;
    }
    out.push(Bytes::copy_from_slice(&data[at..]));
    out
}

/// One test message: sent whole, or as fragments (then `fragments` is not empty).
struct TestMessage {
    name: &'static str,
    text: bool,
    payload: Bytes,
    fragments: Vec<Bytes>,
}

impl TestMessage {
    fn whole(name: &'static str, text: bool, payload: impl Into<Bytes>) -> Self {
        Self { name, text, payload: payload.into(), fragments: Vec::new() }
    }

    fn fragmented(name: &'static str, text: bool, payload: Vec<u8>, sizes: &[usize]) -> Self {
        let fragments = split(&payload, sizes);
        Self { name, text, payload: payload.into(), fragments }
    }
}

fn message_set() -> Vec<TestMessage> {
    let binary_20: Vec<u8> = (0..20u8).map(|i| 0xf0u8.wrapping_add(i)).collect();
    let mut frag_text = b"fragmented text: ".to_vec();
    frag_text.extend_from_slice(random_text(3, 2000).as_bytes());
    let mut frag_binary = b"fragmented binary: ".to_vec();
    frag_binary.extend_from_slice(&random_bytes(4, 100_000));
    vec![
        TestMessage::whole("text 0 B", true, ""),
        TestMessage::whole("binary 0 B", false, Bytes::new()),
        TestMessage::whole("text 20 B", true, "twenty bytes of text"),
        TestMessage::whole("binary 20 B", false, binary_20),
        TestMessage::whole("text 1 MiB compressible", true, compressible_text(MIB)),
        TestMessage::whole("binary 1 MiB compressible", false, compressible_bytes(MIB)),
        TestMessage::whole("text 1 MiB random", true, random_text(1, MIB)),
        TestMessage::whole("binary 1 MiB random", false, random_bytes(2, MIB)),
        // Byte boundaries: some fall inside a multi-byte character; one fragment is empty.
        TestMessage::fragmented("text fragmented", true, frag_text, &[5, 0, 1, 20, 3, 700]),
        TestMessage::fragmented("binary fragmented", false, frag_binary, &[1, 0, 4096, 65536]),
    ]
}

fn ping_payloads() -> Vec<Bytes> {
    vec![Bytes::new(), Bytes::from_static(b"ping from client"), (0..125u8).collect::<Vec<u8>>().into()]
}

// ---------------------------------------------------------------- checks

type Check<T> = Result<T, String>;

/// Where two payloads first differ, for the failure message.
fn describe_difference(expected: &[u8], got: &[u8]) -> String {
    let first = expected.iter().zip(got).position(|(a, b)| a != b);
    match first {
        Some(i) => format!(
            "{} bytes expected, {} received; first difference at byte {i}: expected {:#04x}, got {:#04x}",
            expected.len(),
            got.len(),
            expected[i],
            got[i]
        ),
        None => format!("{} bytes expected, {} received (one is a prefix of the other)", expected.len(), got.len()),
    }
}

fn kind(m: &Message) -> &'static str {
    match m {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
        Message::Ping(_) => "ping",
        Message::Pong(_) => "pong",
        Message::Close(_) => "close",
    }
}

/// The run's state across both connections.
struct Run {
    args: Args,
    /// Payloads of the pings the server sent us.
    server_pings: Vec<Bytes>,
    /// The TLS version and cipher suite of the last connection, for `wss://` over HTTP/1.1.
    tls: Option<String>,
    /// The HTTP/2 stream of the last WebSocket, with `--http2`.
    http2: Option<String>,
}

impl Run {
    /// With `--untrusted-cacert`: a client that trusts only another CA must refuse the server's
    /// certificate as signed by an unknown issuer. Returns what happened, for the summary.
    async fn untrusted_ca_refused(&self, ca: &std::path::Path) -> Check<String> {
        let what = format!("a connection trusting only --untrusted-cacert {}", ca.display());
        let connect = self.builder().tls(trust_only("--untrusted-cacert", ca)?).connect();
        match tokio::time::timeout(REFUSAL_DEADLINE, connect).await {
            Err(_) => Err(format!("{what}: neither refused nor connected in {REFUSAL_DEADLINE:?}")),
            Ok(Ok(_)) => Err(format!("{what}: connected: the server's certificate was not verified")),
            Ok(Err(wsx::Error::Tls(TlsError::UnknownIssuer))) => Ok("untrusted CA refused (unknown issuer)".into()),
            Ok(Err(e)) => Err(format!("{what}: refused, but not for an unknown issuer: {e}")),
        }
    }

    /// With `--plain-refused-url`: a plain `ws://` connection to the TLS port must fail, and
    /// quickly. Returns what happened, for the summary.
    async fn plain_refused(&self, url: &str) -> Check<String> {
        let started = Instant::now();
        match tokio::time::timeout(REFUSAL_DEADLINE, ClientBuilder::new(url).connect()).await {
            Err(_) => Err(format!("plain {url}: neither refused nor connected in {REFUSAL_DEADLINE:?} (a hang)")),
            Ok(Ok(_)) => Err(format!("plain {url}: connected without TLS to the TLS port")),
            Ok(Err(e)) => Ok(format!("plain ws:// refused in {} ms ({e})", started.elapsed().as_millis())),
        }
    }

    /// A builder for the URL: HTTP/2 only with `--http2`.
    fn builder(&self) -> ClientBuilder {
        let builder = ClientBuilder::new(&self.args.url);
        if self.args.http2 {
            builder.http2(Http2Mode::Only)
        } else {
            builder
        }
    }

    async fn connect(&mut self) -> Check<Ws> {
        let mut config = WebSocketConfig::default();
        config.deflate = self.args.deflate.then(DeflateConfig::default);
        let mut builder = self.builder().config(config);
        if let Some(ca) = &self.args.cacert {
            builder = builder.tls(trust_only("--cacert", ca)?);
        }
        let (ws, _) = builder.connect().await.map_err(|e| format!("connect to {}: {e}", self.args.url))?;
        let want_tls = self.args.url.starts_with("wss://");
        if ws.get_ref().is_tls() != want_tls {
            return Err(format!(
                "connect to {}: the connection is {}",
                self.args.url,
                if ws.get_ref().is_tls() { "TLS" } else { "not TLS" }
            ));
        }
        match (self.args.http2, ws.get_ref().http2_stream()) {
            (true, Some(stream)) => {
                let over = if want_tls { "TLS with ALPN h2" } else { "h2c" };
                self.http2 = Some(format!("HTTP/2 ({over}, extended CONNECT, stream {})", stream.stream_id()));
            }
            (true, None) => return Err(format!("connect to {}: not carried by HTTP/2", self.args.url)),
            (false, Some(_)) => return Err(format!("connect to {}: carried by HTTP/2 unasked", self.args.url)),
            (false, None) => {}
        }
        if let Some(session) = ws.get_ref().tls_session() {
            let version = session.protocol_version().map_or("no version".into(), |v| format!("{v:?}"));
            let suite =
                session.negotiated_cipher_suite().map_or("no cipher suite".into(), |s| format!("{:?}", s.suite()));
            self.tls = Some(format!("{version} {suite}"));
        }
        let ext = ws.extensions();
        match (self.args.expect_deflate, ext) {
            (true, Some(e)) if e.trim_start().to_ascii_lowercase().starts_with("permessage-deflate") => {}
            (true, _) => return Err(format!("expected permessage-deflate to be agreed, got extensions {ext:?}")),
            (false, None) => {}
            (false, Some(e)) => return Err(format!("expected no extension, got {e:?}")),
        }
        if ws.connection().is_deflate() != self.args.expect_deflate {
            return Err(format!(
                "extensions {ext:?} agreed, but the connection has compression {}",
                if ws.connection().is_deflate() { "on" } else { "off" }
            ));
        }
        Ok(ws)
    }

    /// The next message that is not a ping from the server (those are answered by wsx and
    /// recorded here).
    async fn next(&mut self, ws: &mut Ws, waiting_for: &str) -> Check<Message> {
        loop {
            let msg = match tokio::time::timeout(STEP_TIMEOUT, ws.recv()).await {
                Err(_) => return Err(format!("{waiting_for}: nothing received in {STEP_TIMEOUT:?}")),
                Ok(None) => return Err(format!("{waiting_for}: the connection ended")),
                Ok(Some(Err(e))) => return Err(format!("{waiting_for}: {e}")),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Ping(p) => self.server_pings.push(p),
                m => return Ok(m),
            }
        }
    }

    async fn echo(&mut self, ws: &mut Ws, m: &TestMessage) -> Check<()> {
        let what = format!("echo of {} ({} B)", m.name, m.payload.len());
        if m.fragments.is_empty() {
            let msg = if m.text {
                Message::Text(m.payload.clone().try_into().map_err(|_| format!("{}: not UTF-8", m.name))?)
            } else {
                Message::Binary(m.payload.clone())
            };
            ws.send(msg).await.map_err(|e| format!("sending {}: {e}", m.name))?;
        } else {
            let last = m.fragments.len() - 1;
            for (i, fragment) in m.fragments.iter().enumerate() {
                ws.send_fragment(m.text, fragment.clone(), i == last)
                    .await
                    .map_err(|e| format!("sending fragment {i} of {}: {e}", m.name))?;
            }
        }
        let got = self.next(ws, &what).await?;
        let expected_kind = if m.text { "text" } else { "binary" };
        if kind(&got) != expected_kind {
            return Err(format!("{what}: expected a {expected_kind} message, got {}", kind(&got)));
        }
        if got.payload() != &m.payload[..] {
            return Err(format!("{what}: {}", describe_difference(&m.payload, got.payload())));
        }
        Ok(())
    }

    async fn ping(&mut self, ws: &mut Ws, payload: &Bytes) -> Check<()> {
        let what = format!("pong to a ping of {} B", payload.len());
        ws.send(Message::Ping(payload.clone())).await.map_err(|e| format!("sending a ping: {e}"))?;
        match self.next(ws, &what).await? {
            Message::Pong(p) if p == payload => Ok(()),
            Message::Pong(p) => Err(format!("{what}: {}", describe_difference(payload, &p))),
            m => Err(format!("{what}: got a {} message instead", kind(&m))),
        }
    }

    /// Receives until `None`: any further message or error fails.
    async fn expect_end(&mut self, ws: &mut Ws, after: &str) -> Check<()> {
        match tokio::time::timeout(STEP_TIMEOUT, ws.recv()).await {
            Err(_) => Err(format!("after {after}: the connection did not end in {STEP_TIMEOUT:?}")),
            Ok(None) => Ok(()),
            Ok(Some(Ok(m))) => Err(format!("after {after}: got a {} message instead of the end", kind(&m))),
            Ok(Some(Err(e))) => Err(format!("after {after}: {e}")),
        }
    }

    /// Connection 1: the message set, pings, then the server closes. Returns the agreed
    /// extensions and the number of messages echoed.
    async fn first_connection(&mut self) -> Check<(String, usize)> {
        let mut ws = self.connect().await?;
        let extensions = ws.extensions().unwrap_or("none").to_owned();
        let messages = message_set();
        for m in &messages {
            self.echo(&mut ws, m).await?;
        }
        for p in ping_payloads() {
            self.ping(&mut ws, &p).await?;
        }
        if !self.server_pings.iter().any(|p| p == SERVER_PING) {
            return Err(format!(
                "the server's ping {:?} was not received (pings received: {:?})",
                String::from_utf8_lossy(SERVER_PING),
                self.server_pings
            ));
        }
        ws.send_text(CLOSE_COMMAND).await.map_err(|e| format!("sending {CLOSE_COMMAND:?}: {e}"))?;
        let started = Instant::now();
        match self.next(&mut ws, "the server's close").await? {
            Message::Close(Some(f)) if f.code == CloseCode(4002) && f.reason == "bye from server" => {}
            Message::Close(f) => {
                return Err(format!("expected the server's close 4002 \"bye from server\", got {f:?}"));
            }
            m => return Err(format!("expected the server's close, got a {} message", kind(&m))),
        }
        self.expect_end(&mut ws, "the server's close").await?;
        if !ws.connection().is_closed_cleanly() {
            return Err("the server's close: the closing handshake did not complete".into());
        }
        if started.elapsed() > CLOSE_DEADLINE {
            return Err(format!(
                "the server's close: took {:?}; the server did not close the TCP connection",
                started.elapsed()
            ));
        }
        Ok((extensions, messages.len()))
    }

    /// Connection 2: one echo, then we close with a code and a reason.
    async fn second_connection(&mut self) -> Check<()> {
        let mut ws = self.connect().await?;
        let m = TestMessage::whole("text before our close", true, "hello, then bye");
        self.echo(&mut ws, &m).await?;
        let started = Instant::now();
        let echoed = tokio::time::timeout(STEP_TIMEOUT, ws.close(CloseCode(4001), "bye from client"))
            .await
            .map_err(|_| format!("our close: no end in {STEP_TIMEOUT:?}"))?
            .map_err(|e| format!("our close: {e}"))?;
        match echoed {
            Some(f) if f.code == CloseCode(4001) => {}
            f => return Err(format!("our close 4001: the server echoed {f:?}")),
        }
        self.expect_end(&mut ws, "our close").await?;
        if !ws.connection().is_closed_cleanly() {
            return Err("our close: the closing handshake did not complete".into());
        }
        if started.elapsed() > CLOSE_DEADLINE {
            return Err(format!(
                "our close: took {:?}; the server did not close the TCP connection",
                started.elapsed()
            ));
        }
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("interop_client: {e}");
            return ExitCode::from(2);
        }
    };
    let mut run = Run { args, server_pings: Vec::new(), tls: None, http2: None };
    let result = async {
        // The refusals first: a peer server counts only the connections that got through.
        let mut refusals = Vec::new();
        if let Some(ca) = run.args.untrusted_cacert.clone() {
            refusals.push(run.untrusted_ca_refused(&ca).await?);
        }
        if let Some(url) = run.args.plain_refused_url.clone() {
            refusals.push(run.plain_refused(&url).await?);
        }
        let (extensions, echoed) = run.first_connection().await?;
        run.second_connection().await?;
        // Nothing to add for ws:// over HTTP/1.1: the line stays what it was before TLS.
        let carrier = run.tls.as_ref().map(|session| format!("TLS: {session}")).or(run.http2.clone());
        let tls = match carrier {
            Some(carrier) => {
                let parts: Vec<String> = std::iter::once(carrier).chain(refusals).collect();
                format!("; {}", parts.join(", "))
            }
            None => String::new(),
        };
        Ok::<_, String>((extensions, echoed + 1, tls))
    }
    .await;
    match result {
        Ok((extensions, echoed, tls)) => {
            println!(
                "interop_client: ok: {} messages, {} pings, server close 4002, client close 4001; extensions: {extensions}{tls}",
                echoed,
                ping_payloads().len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("interop_client: FAIL: {e}");
            ExitCode::FAILURE
        }
    }
}
