//! `wsx connect`: a WebSocket client for terminals and pipes.
//!
//! - interactive mode (stdin and stdout are terminals): a rustyline prompt with history and
//!   slash commands; received messages are printed above the prompt;
//! - plain mode: stdin lines (or, with `--binary`, chunks) are sent, received messages are
//!   written to stdout, status lines to stderr.
//!
//! The connection is split: a reader task receives and prints, while the main loop sends what
//! the input thread hands it and the close. The library does the rest: it answers pings, sends
//! the keepalive pings of `--ping-interval` and fails a connection that stops answering, and runs
//! the closing handshake within its close timeout; the reader reports how it ended. The exit
//! status tells how the connection ended (see [`AFTER_LONG_HELP`]).

pub(crate) mod format;
mod history;
mod input;
#[macro_use]
mod jsonl;
mod listen;
mod retry;
mod ui;

use std::collections::VecDeque;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Args;
use tokio::sync::{mpsc, Notify};
use wsx::h2::{Http2Mode, Http2Outcome};
use wsx::proto::deflate::DeflateConfig;
use wsx::tls::ClientTls;
use wsx::MaybeTlsStream;
use wsx::{ClientBuilder, CloseCode, CloseFrame, Message, WebSocket, WebSocketConfig, WsReader, WsWriter};

use self::format::{describe_close, escape_controls, parse_secs, parse_size, payload};
use self::input::{Ack, Command, Input};
use self::jsonl::{Direction, Event};
use self::ui::{Kind, Ui, UiConfig};

/// The examples both help texts open with (a macro, so that `concat!` can extend it).
macro_rules! examples {
    () => {
        "\
Examples:
  wsx connect ws://127.0.0.1:8080/echo
      Interactive session: line editing, history, /help lists the commands.
  printf 'hello\\nworld\\n' | wsx connect ws://127.0.0.1:8080/echo
      One text message per line; closes at the end of input and waits for the server's close.
  echo '{\"op\":\"subscribe\"}' | wsx connect -n --json -t ws://host/feed
      Subscribe, then print pretty JSON with timestamps until the server closes or Ctrl-C.
  wsx connect -H 'Authorization: Bearer TOKEN' --subprotocol chat.v2 --origin https://example.com ws://host/chat
      Extra headers, a subprotocol offer, an Origin.
  wsx connect --binary ws://host/upload < data.bin > reply.bin
      Send stdin as binary messages, write what comes back unchanged.
  wsx connect --ping-interval 30 --show-ping ws://host/
      Keepalive ping after 30 s without traffic, printed with its round-trip time.
  wsx connect --cacert ca.pem --cert me.pem --key me-key.pem wss://host:8443/feed
      TLS with a private CA (besides the system's roots) and a client certificate.
  wsx connect --proxy http://user:password@proxy.corp:3128 wss://host/feed
      Through an HTTP proxy (CONNECT); socks5h://host:1080 for a SOCKS5 proxy.
  wsx connect --http2 -v wss://host/feed
      The WebSocket as a stream of an HTTP/2 connection (RFC 8441) when the server allows it,
      else HTTP/1.1; -v says which protocol carried it.
  wsx connect -r --preamble '{\"op\":\"subscribe\"}' wss://host/feed
      Stay connected: after a drop, a restart (1012) or a 5xx, reconnect with backoff and
      subscribe again.
  echo '{\"op\":\"snapshot\"}' | wsx connect --oneshot wss://host/api
      Print the first message received, close cleanly, exit 0.
  wsx connect --jsonl ws://host/feed | jq -r 'select(.type==\"text\") | .data'
      Every event as one JSON object per line, for scripts (fields under JSON lines, --help).
  wsx connect --hex ws://host/feed
      Show binary messages as hexdump -C dumps.
  wsx connect --no-deflate --listen tcp:127.0.0.1:2222 ws://host:8080/
      A TCP port whose connections each go through a new WebSocket (ssh -p 2222 localhost to
      a wsx serve --forward tcp:127.0.0.1:22)."
    };
}

const AFTER_HELP: &str = examples!();

const AFTER_LONG_HELP: &str = concat!(
    examples!(),
    "

Interactive mode (stdin and stdout are terminals, without --binary, --jsonl or --no-interactive):
  Each line typed is a text message; received messages are printed above the prompt, marked
  '< ' (binary ones as hex). Commands: /ping [payload], /pong [payload], /hex <hex bytes>,
  /binary <file> (its contents as one binary message, at most 64 MiB), /text <text>,
  /close [code [reason]], /quit, /help; a line starting with // sends text that starts with /.
  Ctrl-D or /quit closes with 1000; Ctrl-C clears the line, twice closes. Tab completes
  commands and the file of /binary. History is kept per server, in
  $XDG_DATA_HOME/wsx/history/<scheme>_<host>_<port> (default ~/.local/share/wsx/history/,
  e.g. ws_localhost_8080; the path of the URL is ignored), 1000 lines, readable by you only;
  $WSX_HISTORY names one file for all servers instead (empty: none), --no-history turns it off.
  Lines starting with a space are not saved.

Plain mode (otherwise):
  Each stdin line, without its newline (\\n or \\r\\n), is one text message; lines that are not
  UTF-8 are skipped with a warning. With --binary, each read of stdin (at most 64 KiB; for a
  file, 64 KiB pieces) is one binary message. At the end of stdin wsx closes with 1000 and waits
  for the server's close, printing what still arrives (it gives up when the server has not
  answered within 5 s); --no-close keeps listening instead.
  Received text messages go to stdout followed by a newline; binary messages are written as
  they came (with --binary, text messages get no newline either), or with --hex as a hex dump:
  a line 'binary, N bytes:', then lines as hexdump -C writes them (offset, 16 bytes in hex,
  ASCII; '*' for lines repeating the one before; on a terminal, the first 256 KiB). Pings,
  pongs, errors and the close go to stderr.

",
    jsonl_help!(),
    "

Reconnecting (--reconnect):
  Before attempt n, wsx waits a random time between 0 and min(--reconnect-max-delay,
  --reconnect-delay * 2^(n-1)) (exponential backoff with full jitter; RFC 6455 7.2.3), and says
  so on stderr: 'wsx: reconnecting in 1.73 s (attempt 2 of 5): closed: 1012 service restart'.
  A connection that stayed open at least --reconnect-max-delay counts as a success: the next
  failure is attempt 1 again. After every (re)connect the --preamble messages go first, then
  what the previous connection could not send, then stdin. Stdin read while disconnected waits
  in a queue of 16 messages; when it is full wsx stops reading stdin (the writer into the pipe
  waits), so nothing is dropped. Messages already handed to a connection that then dropped may
  be lost: WebSocket has no acknowledgements.

Terminal safety:
  Whatever the server sends is printed to a terminal with control characters escaped (ESC as
  \\x1b, CR as \\r, C1 codes as \\u{9b}; newlines and tabs of text messages are kept) and binary
  messages summarised as hex, so a server cannot send escape sequences to your terminal. Output
  to a pipe or file is written unchanged.

Exit status:
  0    closed cleanly: the server closed with 1000 or without a code, or wsx closed (end of
       stdin, /quit, /close, Ctrl-C) and the server answered
  1    could not connect: invalid URL or option, DNS failure, connection refused, timeout,
       TLS failure (unknown issuer, name mismatch, expired certificate…: the cause is printed),
       handshake refused by the server (its HTTP status is printed), a proxy that failed or
       refused (the proxy, without its password, and its answer are printed)
  2    the server closed with another code, or the connection ended abnormally (1006: dropped
       without a close frame, no answer to our close, no pong within --ping-timeout, a
       protocol error); clap also exits with 2 on invalid command-line usage
  130  Ctrl-C again while the connection was closing (or Ctrl-C while reconnecting)
  With --reconnect, the status is the last connection's, once wsx stops reconnecting: 1 when
  --max-retries gave up after attempts that could not connect.
  The close code and reason are printed on stderr, e.g. 'closed: 1000 normal' or
  'closed: 4000 \"session expired\"'.

Environment:
  SSL_CERT_FILE, SSL_CERT_DIR   trusted roots for wss:// instead of the system's store
  WSX_HISTORY   one history file for interactive mode instead of one per server (empty: none)
  XDG_DATA_HOME where the per-server history lives (default ~/.local/share)
  NO_COLOR      no colours
  ws_proxy, WS_PROXY, https_proxy, HTTPS_PROXY, http_proxy, all_proxy, ALL_PROXY
                the proxy for ws:// URLs: the first one set, unless --proxy or --no-proxy
  wss_proxy, WSS_PROXY, https_proxy, HTTPS_PROXY, all_proxy, ALL_PROXY
                the proxy for wss:// URLs; as in curl, upper-case HTTP_PROXY is never read
  no_proxy, NO_PROXY
                hosts reached directly, comma separated: * for all, a name for itself and
                its subdomains (leading dot allowed), IP addresses and CIDR ranges
                (10.0.0.0/8), each optionally with :port"
);

/// Options of `wsx connect`.
#[derive(Args, Debug)]
#[command(after_help = AFTER_HELP, after_long_help = AFTER_LONG_HELP)]
pub struct ConnectArgs {
    /// The server's URL, `ws://host:port/path?query` or `wss://…`: port, path and query are optional, and so is `ws://`.
    url: String,
    /// Add a request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Offer a subprotocol (repeatable, most preferred first).
    #[arg(short = 's', long = "subprotocol", visible_alias = "protocol", value_name = "NAME")]
    subprotocols: Vec<String>,
    /// Send an Origin header.
    #[arg(short = 'o', long, value_name = "ORIGIN")]
    origin: Option<String>,
    /// Send stdin as binary messages; write received messages unchanged.
    ///
    /// Each read of stdin (at most 64 KiB) is one binary message. Received messages, text ones
    /// too, are written to stdout with no newline added.
    #[arg(short = 'b', long)]
    binary: bool,
    /// Pretty-print received text messages that are JSON objects or arrays.
    #[arg(short = 'j', long)]
    json: bool,
    /// Prefix printed messages and events with the local time (HH:MM:SS.mmm).
    #[arg(short = 't', long)]
    timestamps: bool,
    /// Print pings and pongs, sent and received, with round-trip times.
    #[arg(short = 'P', long)]
    show_ping: bool,
    /// Send a ping after SECS seconds without anything from the server (e.g. 30, 0.5, 250ms).
    ///
    /// Keeps idle connections alive through proxies and detects a dead server (see
    /// --ping-timeout). Pings from the server are always answered, with or without this.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    ping_interval: Option<Duration>,
    /// With --ping-interval: give up when nothing arrives within SECS after a ping.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "20")]
    ping_timeout: Duration,
    /// Time allowed for the TCP connection and the opening handshake.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "10")]
    connect_timeout: Duration,
    /// Largest message accepted from the server (e.g. 64k, 16M).
    ///
    /// k, M and G are powers of 1024. A larger message fails the connection with 1009.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "64M")]
    max_message_size: usize,
    /// Do not offer permessage-deflate compression (offered by default, like browsers).
    #[arg(long)]
    no_deflate: bool,
    /// Keep listening after stdin ends, until the server closes or Ctrl-C.
    #[arg(short = 'n', long)]
    no_close: bool,
    /// Plain mode even on a terminal: no line editing, no commands.
    #[arg(long)]
    no_interactive: bool,
    /// No colours (also when NO_COLOR is set).
    #[arg(long)]
    no_color: bool,
    /// Print the server's handshake response (status and headers).
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Print the server's handshake response on stderr: its status and headers when it accepts;
    /// when it refuses, also its body (at most 64 KiB; the rest is not read). A refusal exits
    /// with 1 (with --reconnect, a 5xx, 429 or 408 refusal is retried and shown each time).
    #[arg(short = 'i', long)]
    include: bool,
    /// wss://: also trust the CA certificates in this PEM file (besides the system's).
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// wss://: present this PEM client certificate (chain, leaf first); needs --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// wss://: the PEM private key of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// wss://: do not verify the server's certificate (name, issuer, dates). Anyone on the path
    /// can then read and change the traffic: for development only; a warning is printed.
    #[arg(short = 'k', long)]
    insecure: bool,
    /// Connect through this proxy instead of the environment's.
    ///
    /// `http://[user:password@]host:port` for an HTTP CONNECT tunnel (the default without a
    /// scheme), `socks5://…` for SOCKS5 with the server's name resolved here, `socks5h://…` for
    /// SOCKS5 with the name resolved by the proxy. The port defaults to 1080; the user name and password
    /// are percent-decoded (%40 for @). wss:// runs TLS end to end inside the tunnel.
    #[arg(short = 'x', long, value_name = "URL", conflicts_with = "no_proxy")]
    proxy: Option<String>,
    /// Connect directly, ignoring the proxy environment variables.
    #[arg(long)]
    no_proxy: bool,
    /// wss://: carry the WebSocket over HTTP/2 (RFC 8441) when the server allows it.
    ///
    /// Offers ALPN h2 and http/1.1. If the server chooses h2 and advertises
    /// SETTINGS_ENABLE_CONNECT_PROTOCOL, the WebSocket is an extended CONNECT stream of that
    /// connection; if it chooses h2 without the setting, wsx opens a new connection for HTTP/1.1;
    /// if it chooses http/1.1, the same connection goes on as HTTP/1.1. -v says which. Through a
    /// proxy too (TLS runs inside the tunnel). ws:// URLs stay HTTP/1.1 (see --http2-only).
    #[arg(long, conflicts_with = "http2_only")]
    http2: bool,
    /// HTTP/2 or nothing: wss:// offers ALPN h2 only, ws:// speaks HTTP/2 in cleartext with prior
    /// knowledge (h2c); a server without WebSockets over HTTP/2 is an error (exit status 1).
    #[arg(long)]
    http2_only: bool,
    /// Reconnect after an abnormal end or a transient refusal, with backoff.
    ///
    /// Reconnects when the connection ends without a closing handshake (1006: dropped, no pong,
    /// a write that made no progress), when the server closes with 1001 (going away), 1011
    /// (internal error), 1012 (service restart) or 1013 (try again later), and when connecting
    /// fails in a way that may pass: connection refused or reset, DNS failure, timeout, HTTP 5xx,
    /// 429 or 408. A close with 1000 or any other code ends wsx (see --reconnect-always); so do a
    /// 4xx refusal (authentication, path, Origin: retrying will not help), a TLS failure, and
    /// our own close (end of stdin, /quit, Ctrl-C, --max-messages). Each attempt is reported on
    /// stderr with its number, wait and reason. Stdin read while disconnected is kept and sent
    /// after the preamble of the next connection.
    #[arg(short = 'r', long)]
    reconnect: bool,
    /// Like --reconnect, and also reconnect when the server closes with 1000 or any other code.
    #[arg(long)]
    reconnect_always: bool,
    /// With --reconnect: the first wait is random between 0 and SECS; each further attempt
    /// doubles the range, up to --reconnect-max-delay (exponential backoff with full jitter).
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "5")]
    reconnect_delay: Duration,
    /// With --reconnect: the largest range of a wait. A connection that stayed open at least
    /// this long counts as a success: the next failure starts again at attempt 1.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "60")]
    reconnect_max_delay: Duration,
    /// With --reconnect: give up after N attempts in a row (exit status 1 if the last one could
    /// not connect, 2 if it connected and then ended abnormally). Default: never give up.
    #[arg(long, value_name = "N")]
    max_retries: Option<u32>,
    /// Send TEXT as a text message (binary with --binary) as soon as the connection opens, and
    /// again after every reconnect, before anything from stdin (repeatable; --preamble and
    /// --preamble-file are sent in the order given).
    #[arg(long, value_name = "TEXT")]
    preamble: Vec<String>,
    /// Send the contents of FILE as one message after each (re)connect, like --preamble: text
    /// if it is UTF-8 (binary with --binary or if it is not). Read once, at start.
    #[arg(long, value_name = "FILE")]
    preamble_file: Vec<PathBuf>,
    /// --preamble and --preamble-file in command-line order (see [`ConnectArgs::order_preamble`]).
    #[arg(skip)]
    ordered_preamble: Vec<Preamble>,
    /// Exit after N received text or binary messages, closing with 1000 (exit status 0 when the
    /// server answers). Implies --no-close: the end of stdin does not close.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_messages: Option<u64>,
    /// Exit after the first received message: --max-messages 1.
    #[arg(short = '1', long, conflicts_with = "max_messages")]
    oneshot: bool,
    /// Listen on this TCP address instead of using stdin and stdout: every TCP connection
    /// accepted there is bridged to a new WebSocket to URL, bytes both ways as binary messages
    /// (received text messages are written as their bytes). The WebSocket options above apply
    /// (headers, subprotocols, Origin, TLS, proxy, deflate, keepalive); a WebSocket that cannot
    /// be opened closes its TCP connection (logged). A TCP end of stream closes the WebSocket
    /// with 1000, the server's close closes the TCP connection (what the TCP client still sends
    /// is read and dropped for up to 5 s, so that everything sent to it arrives). No half-close:
    /// WebSocket cannot carry one, so a TCP client that shuts its sending side down (nc -N) to
    /// wait for an answer gets none; it must keep it open until it has read the answer. A TCP
    /// client that takes nothing for 30 s ends its bridge (1011); accepted sockets have TCP
    /// keepalive. Runs until Ctrl-C or SIGTERM;
    /// port 0 picks a free port (`listening on ADDR` on stderr). E.g. with wsx serve --forward
    /// tcp:127.0.0.1:22 on the server: wsx connect --no-deflate --listen tcp:127.0.0.1:2222
    /// ws://host:8080/ and then ssh -p 2222 localhost (--no-deflate: ssh and TLS traffic does not
    /// compress, and deflating it costs CPU for nothing).
    #[arg(long, value_name = "tcp:ADDR:PORT", value_parser = listen::parse_listen,
          conflicts_with_all = ["reconnect", "reconnect_always", "preamble", "preamble_file", "max_messages", "oneshot"])]
    listen: Option<String>,
    /// With --listen: the most bridges at once; further TCP connections are closed at once
    /// (logged).
    #[arg(long, value_name = "N", default_value_t = 1024, requires = "listen")]
    max_bridges: usize,
    /// Write every event as one JSON object per line on stdout, for scripts and jq: open, text,
    /// binary, ping, pong, close, error, reconnect, each with "type" and "ts" (see "JSON lines"
    /// in --help for the fields). Nothing else goes to stdout; status lines still go to stderr.
    /// Implies plain mode: stdin is sent as without it.
    #[arg(long, conflicts_with_all = ["json", "hex"])]
    jsonl: bool,
    /// Show received binary messages as hex dumps (offset, hex, ASCII, like hexdump -C) instead
    /// of a summary on a terminal (the first 256 KiB of each) or the raw bytes on a pipe (all of
    /// it); also in interactive mode. With --binary, text messages then keep their newline.
    #[arg(long)]
    hex: bool,
    /// Interactive mode: neither read nor write the history file.
    #[arg(long)]
    no_history: bool,
}

/// One `--preamble` or `--preamble-file` value.
#[derive(Debug, Clone)]
enum Preamble {
    Text(String),
    File(PathBuf),
}

impl ConnectArgs {
    /// Puts the `--preamble` and `--preamble-file` values in the order they were given, from the
    /// indices clap recorded (the derived fields keep only the order within each flag). Without
    /// it, the texts are sent before the files.
    pub fn order_preamble(&mut self, matches: &clap::ArgMatches) {
        let mut items: Vec<(usize, Preamble)> = Vec::new();
        if let Some(indices) = matches.indices_of("preamble") {
            items.extend(indices.zip(&self.preamble).map(|(i, t)| (i, Preamble::Text(t.clone()))));
        }
        if let Some(indices) = matches.indices_of("preamble_file") {
            items.extend(indices.zip(&self.preamble_file).map(|(i, f)| (i, Preamble::File(f.clone()))));
        }
        items.sort_by_key(|(i, _)| *i);
        self.ordered_preamble = items.into_iter().map(|(_, p)| p).collect();
    }

    /// The preamble messages, files read now.
    fn preamble_messages(&self) -> anyhow::Result<Vec<Message>> {
        let items = if self.ordered_preamble.is_empty() {
            let texts = self.preamble.iter().cloned().map(Preamble::Text);
            texts.chain(self.preamble_file.iter().cloned().map(Preamble::File)).collect()
        } else {
            self.ordered_preamble.clone()
        };
        items
            .into_iter()
            .map(|item| match item {
                Preamble::Text(text) if self.binary => Ok(Message::binary(text.into_bytes())),
                Preamble::Text(text) => Ok(Message::text(text)),
                Preamble::File(path) => {
                    let data = std::fs::read(&path).with_context(|| format!("--preamble-file {}", path.display()))?;
                    Ok(match String::from_utf8(data) {
                        Ok(text) if !self.binary => Message::text(text),
                        Ok(text) => Message::binary(text.into_bytes()),
                        Err(e) => Message::binary(e.into_bytes()),
                    })
                }
            })
            .collect()
    }

    /// The backoff of `--reconnect`, if reconnecting.
    fn backoff(&self) -> Option<retry::Backoff> {
        (self.reconnect || self.reconnect_always).then_some(retry::Backoff {
            base: self.reconnect_delay,
            max: self.reconnect_max_delay.max(self.reconnect_delay),
            max_retries: self.max_retries,
        })
    }

    /// `--max-messages`, or 1 with `--oneshot`.
    fn max_messages(&self) -> Option<u64> {
        if self.oneshot {
            Some(1)
        } else {
            self.max_messages
        }
    }
}

/// After our close frame, how long the server may take to answer it (the library's close
/// timeout, which also bounds the wait for the server to close TCP after the handshake).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts a URL without a scheme, and http(s):// for ws(s)://.
pub(crate) fn normalize_url(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if url.contains("://") {
        url.to_owned()
    } else {
        format!("ws://{url}")
    }
}

/// Parses and checks the `-H` values.
pub(crate) fn parse_headers(headers: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    headers
        .iter()
        .map(|h| {
            let (name, value) = h.split_once(':').with_context(|| format!("header {h:?} is not `Name: value`"))?;
            let (name, value) = (name.trim(), value.trim());
            http::HeaderName::from_bytes(name.as_bytes()).with_context(|| format!("invalid header name {name:?}"))?;
            http::HeaderValue::from_str(value).with_context(|| format!("invalid value for header {name:?}"))?;
            Ok((name.to_owned(), value.to_owned()))
        })
        .collect()
}

fn builder(args: &ConnectArgs, url: &str) -> anyhow::Result<ClientBuilder> {
    let mut builder = ClientBuilder::new(url);
    for (name, value) in parse_headers(&args.headers)? {
        builder = builder.header(&name, &value);
    }
    for p in &args.subprotocols {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)) {
            bail!("invalid subprotocol {p:?}: it must be an HTTP token");
        }
        builder = builder.protocol(p);
    }
    if let Some(o) = &args.origin {
        builder = builder.origin(o);
    }
    if let Some(proxy) = &args.proxy {
        builder = builder.proxy(proxy);
    }
    if args.no_proxy {
        builder = builder.no_proxy();
    }
    if args.http2 {
        builder = builder.http2(Http2Mode::Prefer);
    } else if args.http2_only {
        builder = builder.http2(Http2Mode::Only);
    }
    let mut config = WebSocketConfig::default();
    config.proto.max_message_size = args.max_message_size;
    config.proto.max_frame_size = args.max_message_size;
    config.proto.close_timeout = CLOSE_TIMEOUT;
    config.proto.keepalive_interval = args.ping_interval;
    config.proto.keepalive_timeout = args.ping_timeout;
    if !args.no_deflate {
        config.deflate = Some(DeflateConfig::default());
    }
    config.proto.handshake_timeout = args.connect_timeout;
    Ok(builder.config(config).tls(client_tls(args)?))
}

/// The TLS settings of `--cacert`, `--cert`/`--key` and `--insecure` (used for wss:// only).
fn client_tls(args: &ConnectArgs) -> anyhow::Result<ClientTls> {
    let mut tls = ClientTls::new();
    if let Some(ca) = &args.cacert {
        tls = tls.add_ca_pem_file(ca).context("--cacert")?;
    }
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        tls = tls.client_auth_pem_files(cert, key).context("--cert/--key")?;
    }
    if args.insecure {
        tls = tls.danger_accept_invalid_certs();
    }
    Ok(tls)
}

/// Pings sent and not yet answered, for `--show-ping` and round-trip times. Display only: the
/// library sends the keepalive pings and decides when the server is dead.
struct Pings {
    /// Payload, when sent, whether it is a keepalive ping (not `/ping`).
    sent: VecDeque<(Bytes, Instant, bool)>,
    /// The library's keepalive pings so far (their payload is this counter, 8 bytes big-endian).
    keepalives: u64,
    /// When the reader last received anything: the library pings after the interval without it.
    last_received: Instant,
}

impl Pings {
    fn new() -> Self {
        Self { sent: VecDeque::new(), keepalives: 0, last_received: Instant::now() }
    }

    /// When the library sends its next keepalive ping: `interval` after the last frame received,
    /// unless one sent since then is still unanswered.
    fn next_keepalive(&self, interval: Duration) -> Option<Instant> {
        let waiting = self.sent.iter().any(|(_, at, keepalive)| *keepalive && *at >= self.last_received);
        (!waiting).then_some(self.last_received + interval)
    }

    /// Notes the keepalive ping the library sends now; returns its number.
    fn keepalive_sent(&mut self) -> u64 {
        self.keepalives += 1;
        self.record(Bytes::copy_from_slice(&self.keepalives.to_be_bytes()), true);
        self.keepalives
    }

    fn record(&mut self, payload: Bytes, keepalive: bool) {
        if self.sent.len() >= 64 {
            self.sent.pop_front();
        }
        self.sent.push_back((payload, Instant::now(), keepalive));
    }

    /// A pong for the next keepalive ping arrived before the display noted the ping (the
    /// library's timer and ours race): notes the ping now, as sent at `sent_at` (when the library
    /// sent it: the interval after the previous frame received). Returns its number and the
    /// round-trip time.
    fn catch_up(&mut self, pong: &[u8], sent_at: Instant) -> Option<(u64, Duration)> {
        let n = u64::from_be_bytes(pong.try_into().ok()?);
        if n != self.keepalives + 1 {
            return None;
        }
        self.keepalives = n;
        Some((n, sent_at.elapsed()))
    }

    /// The round-trip time of the ping this pong answers, and whether it was a keepalive.
    fn answer(&mut self, pong: &[u8]) -> Option<(Duration, bool)> {
        let i = self.sent.iter().position(|(p, ..)| p.as_ref() == pong)?;
        let (_, at, keepalive) = self.sent.remove(i)?;
        Some((at.elapsed(), keepalive))
    }
}

/// How a ping or pong payload is shown: the number of a keepalive ping (8 bytes big-endian),
/// else the payload as text or hex.
fn ping_payload(data: &[u8], keepalive: bool) -> String {
    match <[u8; 8]>::try_from(data) {
        Ok(n) if keepalive => u64::from_be_bytes(n).to_string(),
        _ => payload(data),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What is left of `--max-messages`, over all connections.
struct Budget(std::sync::atomic::AtomicU64);

/// What [`Budget::take`] found.
enum Take {
    /// Show this message; more may follow.
    More,
    /// Show this message; it was the last one.
    Last,
    /// The budget was spent before this message.
    Over,
}

impl Budget {
    fn take(&self) -> Take {
        use std::sync::atomic::Ordering;
        match self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)) {
            Ok(1) => Take::Last,
            Ok(_) => Take::More,
            Err(_) => Take::Over,
        }
    }
}

/// What the reader task reports to the session loop.
enum ReaderEvent {
    /// The server's close frame (our close's answer, or its own close).
    Closed(Option<CloseFrame>),
    /// The connection failed.
    Failed(wsx::Error),
    /// stdout is closed: nothing more can be shown.
    OutputClosed,
    /// The last message of --max-messages was received (it is shown after this is sent).
    Enough,
    /// The connection is fully shut down.
    Done,
}

/// `< pong 3 (0.21 ms)`: a ping or pong line, with its payload as shown and round-trip time.
fn control_line(what: &str, shown: &str, rtt: Option<Duration>) -> String {
    let mut line = what.to_owned();
    if !shown.is_empty() {
        line.push(' ');
        line.push_str(shown);
    }
    if let Some(rtt) = rtt {
        let ms = rtt.as_secs_f64() * 1000.0;
        line.push_str(&if ms < 10.0 { format!(" ({ms:.2} ms)") } else { format!(" ({ms:.0} ms)") });
    }
    line
}

/// What the reader task shows and counts.
struct ReaderOptions {
    /// --show-ping.
    show_ping: bool,
    /// --ping-interval.
    interval: Option<Duration>,
    /// Notified of every frame received (for the display of keepalive pings).
    received: Option<Arc<Notify>>,
    /// --max-messages.
    budget: Option<Arc<Budget>>,
}

async fn read_loop(
    mut reader: WsReader<MaybeTlsStream>,
    ui: Arc<Ui>,
    pings: Arc<Mutex<Pings>>,
    options: ReaderOptions,
    events: mpsc::UnboundedSender<ReaderEvent>,
) {
    let ReaderOptions { show_ping, interval, received, budget } = options;
    // With a keepalive interval, 8-byte pong payloads are shown as keepalive numbers.
    let keepalive = interval.is_some();
    let mut output_ok = true;
    while let Some(event) = reader.recv().await {
        let previous = std::mem::replace(&mut lock(&pings).last_received, Instant::now());
        if let Some(received) = &received {
            // The next keepalive ping is due later now.
            received.notify_one();
        }
        if matches!(event, Ok(Message::Text(_) | Message::Binary(_))) {
            match budget.as_ref().map(|b| b.take()) {
                // --max-messages reached earlier: what still arrives before the close is not shown.
                Some(Take::Over) => continue,
                Some(Take::Last) => {
                    let _ = events.send(ReaderEvent::Enough);
                }
                Some(Take::More) | None => {}
            }
        }
        let shown = match event {
            Ok(Message::Text(t)) if output_ok => ui.text(t.as_str()),
            Ok(Message::Binary(b)) if output_ok => ui.binary(&b),
            Ok(Message::Text(_) | Message::Binary(_)) => Ok(()),
            Ok(Message::Ping(p)) => {
                if show_ping {
                    ui.note(Kind::Ping, &control_line("< ping", &payload(&p), None));
                    ui.note_event(&Event::Ping { direction: Direction::Received, payload: &p, keepalive: false });
                }
                Ok(())
            }
            Ok(Message::Pong(p)) => {
                let answered = lock(&pings).answer(&p);
                match answered {
                    Some((rtt, was_keepalive)) if show_ping || !was_keepalive => {
                        ui.note(Kind::Ping, &control_line("< pong", &ping_payload(&p, was_keepalive), Some(rtt)));
                        let received = Direction::Received;
                        ui.note_event(&Event::Pong {
                            direction: received,
                            payload: &p,
                            keepalive: was_keepalive,
                            rtt: Some(rtt),
                        });
                    }
                    // A keepalive ping the display did not see go out yet: the library's timer
                    // fired before ours. Show it now, in order, timed from when it left.
                    None if show_ping => {
                        let caught = interval.and_then(|every| lock(&pings).catch_up(&p, previous + every));
                        match caught {
                            Some((n, rtt)) => {
                                ui.note(Kind::Ping, &control_line("> ping", &n.to_string(), None));
                                ui.note(Kind::Ping, &control_line("< pong", &n.to_string(), Some(rtt)));
                                let number = n.to_be_bytes();
                                ui.note_event(&Event::Ping {
                                    direction: Direction::Sent,
                                    payload: &number,
                                    keepalive: true,
                                });
                                let received = Direction::Received;
                                ui.note_event(&Event::Pong {
                                    direction: received,
                                    payload: &p,
                                    keepalive: true,
                                    rtt: Some(rtt),
                                });
                            }
                            None => {
                                ui.note(Kind::Ping, &control_line("< pong", &ping_payload(&p, keepalive), None));
                                let keepalive = keepalive && p.len() == 8;
                                let received = Direction::Received;
                                ui.note_event(&Event::Pong { direction: received, payload: &p, keepalive, rtt: None });
                            }
                        }
                    }
                    _ => {}
                }
                Ok(())
            }
            Ok(Message::Close(frame)) => {
                let _ = events.send(ReaderEvent::Closed(frame));
                Ok(())
            }
            Err(e) => {
                let _ = events.send(ReaderEvent::Failed(e));
                Ok(())
            }
        };
        if shown.is_err() && output_ok {
            output_ok = false;
            let _ = events.send(ReaderEvent::OutputClosed);
        }
    }
    let _ = events.send(ReaderEvent::Done);
}

/// Connects and runs the session, again after each transient end with `--reconnect`; the exit
/// code tells how the last connection ended.
pub async fn run(args: ConnectArgs) -> anyhow::Result<ExitCode> {
    if let Some(addr) = &args.listen {
        return listen::run(&args, addr, args.max_bridges).await;
    }
    let url = normalize_url(&args.url);
    let builder = builder(&args, &url)?;
    let preamble = args.preamble_messages()?;
    let backoff = args.backoff();
    let budget = args.max_messages().map(|n| Arc::new(Budget(std::sync::atomic::AtomicU64::new(n))));
    if args.insecure && url.starts_with("wss://") {
        eprintln!("wsx: warning: --insecure: the server's certificate is not verified; anyone on the path can read and change this connection");
    }
    let stdin_tty = std::io::stdin().is_terminal();
    let stdout_tty = std::io::stdout().is_terminal();
    let force_tty = std::env::var_os("WSX_FORCE_TTY").is_some_and(|v| v == "1");
    let interactive = !args.binary && !args.jsonl && !args.no_interactive && stdin_tty && stdout_tty;
    let color_ok = !args.no_color && !matches!(std::env::var_os("NO_COLOR"), Some(v) if !v.is_empty());
    let ui_config = UiConfig {
        interactive,
        display: stdout_tty || force_tty,
        color: color_ok && interactive,
        err_color: color_ok && std::io::stderr().is_terminal(),
        timestamps: args.timestamps,
        json: args.json,
        binary: args.binary,
        hex: args.hex,
        jsonl: args.jsonl,
    };

    // Attempts in a row that did not give a connection that stayed up.
    let mut attempt = 0;
    let report = |text: &str| eprintln!("{text}");
    let show = Show { include: args.include, jsonl: args.jsonl };
    let (mut ws, mut response) =
        match connect_retrying(&builder, &url, backoff, &mut attempt, None, show, &report).await {
            Ok(connected) => connected,
            Err(code) => return Ok(code),
        };

    let (input_tx, input_rx) = mpsc::channel::<Input>(INPUT_QUEUE);
    let mut prompt = None;
    let printer = if interactive {
        let history = if args.no_history { None } else { history::path(&url) };
        let editor = input::spawn_interactive(input_tx.clone(), ui_config.color, history)?;
        prompt = Some(editor.prompt);
        Some(editor.printer)
    } else {
        None
    };
    let ui = Arc::new(Ui::new(ui_config, printer));
    if !interactive {
        let warn_ui = ui.clone();
        let warn = move |text: String| {
            warn_ui.note(Kind::Error, &format!("wsx: {text}"));
            warn_ui.note_event(&Event::Error { message: &text, kind: "input", status: None });
        };
        if args.binary {
            input::spawn_binary(input_tx.clone(), warn);
        } else {
            input::spawn_lines(input_tx.clone(), warn);
        }
    }
    drop(input_tx);

    let mut input = InputState { rx: input_rx, open: true, unsent: VecDeque::new() };
    let mut reconnected = false;
    loop {
        announce(&args, &ui, &url, &ws, &response, interactive, reconnected);
        let opened = Instant::now();
        let end = session(ws, &args, &ui, &preamble, budget.clone(), &mut input).await;
        if end.interrupted {
            // --jsonl: the connection's end is an event even when the user cut it short (1006,
            // not clean, unless the server's close frame came first).
            report_end(&ui, &end);
            finish_terminal(&ui, prompt.as_ref()).await;
            ui.note(Kind::Error, "interrupted");
            return Ok(ExitCode::from(130));
        }
        let transient = backoff.is_some() && end.is_transient(args.reconnect_always);
        report_end(&ui, &end);
        let (line, code) = outcome(end.we_closed, end.peer_close, end.failure, end.send_error, args.ping_timeout);
        let Some(b) = backoff.filter(|_| transient) else {
            finish_terminal(&ui, prompt.as_ref()).await;
            ui.note(if code == 0 { Kind::Info } else { Kind::Error }, &line);
            return Ok(ExitCode::from(code));
        };
        if opened.elapsed() >= b.max {
            // It stayed up: whatever went wrong before has passed.
            attempt = 0;
        }
        let report = |text: &str| ui.note(Kind::Error, text);
        match connect_retrying(&builder, &url, backoff, &mut attempt, Some((line, code)), show, &report).await {
            Ok(connected) => (ws, response) = connected,
            Err(code) => {
                finish_terminal(&ui, prompt.as_ref()).await;
                return Ok(code);
            }
        }
        reconnected = true;
    }
}

/// Input lines or chunks waiting to be sent. Stdin is read into a channel of this many
/// messages; while it is full (nobody sends: wsx is reconnecting, or the server is slow) stdin
/// is not read, so whatever writes to it waits, and nothing is dropped.
const INPUT_QUEUE: usize = 16;

/// What outlives one connection: stdin and what could not be sent.
struct InputState {
    rx: mpsc::Receiver<Input>,
    /// Stdin has not ended.
    open: bool,
    /// Input whose send failed because the connection had ended: sent on the next connection,
    /// after the preamble (with --reconnect; else dropped with the connection).
    unsent: VecDeque<Message>,
}

/// The `error` (if the connection failed) and `close` events of `--jsonl` for how a connection
/// ended, told as [`outcome`] tells it.
fn report_end(ui: &Ui, end: &SessionEnd) {
    if !ui.config.jsonl {
        return;
    }
    let failure = end.failure.as_ref().or(end.send_error.as_ref()).filter(|_| end.peer_close.is_none());
    if let Some(e) = failure {
        ui.note_event(&Event::error(&e.to_string(), e));
    }
    ui.note_event(&Event::close(end.we_closed, end.peer_close.as_ref(), failure));
}

/// Prints the handshake response (-v, -i) and the "connected" line.
fn announce(
    args: &ConnectArgs,
    ui: &Ui,
    url: &str,
    ws: &WebSocket<MaybeTlsStream>,
    response: &http::Response<()>,
    interactive: bool,
    reconnected: bool,
) {
    if args.verbose || args.include {
        let mut head = format!("{:?} {}", response.version(), response.status());
        for (name, value) in response.headers() {
            let value = escape_controls(&String::from_utf8_lossy(value.as_bytes()), false).into_owned();
            head.push_str(&format!("\n{name}: {value}"));
        }
        ui.note(Kind::Plain, &head);
    }
    let stream = ws.get_ref().http2_stream().map(|s| s.stream_id());
    if args.verbose {
        ui.note(Kind::Info, &carried_by(stream, response.extensions().get::<Http2Outcome>()));
    }
    ui.note_event(&Event::Open {
        url,
        protocol: ws.protocol(),
        extensions: ws.extensions(),
        http: if stream.is_some() { "2" } else { "1.1" },
        stream,
        response: (args.include || args.verbose).then_some(response),
    });
    if interactive || args.verbose || reconnected {
        let mut details = Vec::new();
        if let Some(p) = ws.protocol() {
            details.push(format!("subprotocol {}", escape_controls(p, false)));
        }
        if let Some(x) = ws.extensions() {
            details.push(escape_controls(x, false).into_owned());
        }
        let details = if details.is_empty() { String::new() } else { format!(" ({})", details.join("; ")) };
        ui.note(Kind::Info, &format!("connected to {url}{details}"));
        if interactive && !reconnected {
            ui.note(Kind::Plain, "type a message and Enter to send it; /help lists the commands; Ctrl-D closes");
        }
    }
}

/// The line of `-v` that says which protocol carried the WebSocket: HTTP/2 (with the stream's
/// id) or HTTP/1.1, and why HTTP/1.1 when HTTP/2 was asked for.
fn carried_by(stream: Option<u32>, outcome: Option<&Http2Outcome>) -> String {
    match (stream, outcome) {
        (Some(id), _) => format!("connected over HTTP/2 (extended CONNECT, stream {id})"),
        (None, Some(Http2Outcome::Http1Fallback)) => "connected over HTTP/1.1 (fallback: the server chose HTTP/2 \
             but does not accept WebSockets over it (no SETTINGS_ENABLE_CONNECT_PROTOCOL), so a new \
             connection was opened)"
            .to_owned(),
        (None, Some(_)) => "connected over HTTP/1.1 (the server did not choose HTTP/2)".to_owned(),
        (None, None) => "connected over HTTP/1.1".to_owned(),
    }
}

/// What [`connect_retrying`] shows besides its human-readable reports.
#[derive(Debug, Clone, Copy)]
struct Show {
    /// -i: the refused handshake's status, headers and body.
    include: bool,
    /// --jsonl: `error` and `reconnect` events on stdout.
    jsonl: bool,
}

/// Connects. With `backoff`, a transient failure (see [`retry::connect_error_is_transient`]) is
/// followed by a wait and another attempt; `reason`, if given, is why a first wait is due (the
/// previous connection ended, with its exit status). `attempt` counts the attempts in a row.
/// `show` says what else is shown: refusals (-i), events (--jsonl). Returns the exit code when it gives up: 1 for a
/// failed connection, the ended connection's when `--max-retries` forbids even the first
/// attempt after it; 130 for Ctrl-C.
async fn connect_retrying(
    builder: &ClientBuilder,
    url: &str,
    backoff: Option<retry::Backoff>,
    attempt: &mut u32,
    mut after: Option<(String, u8)>,
    show: Show,
    report: &dyn Fn(&str),
) -> Result<(WebSocket<MaybeTlsStream>, http::Response<()>), ExitCode> {
    loop {
        if let (Some((why, ended)), Some(b)) = (after.take(), backoff) {
            *attempt += 1;
            if b.max_retries.is_some_and(|max| *attempt > max) {
                let n = *attempt - 1;
                report(&format!("wsx: giving up after {n} reconnect attempt{}: {why}", if n == 1 { "" } else { "s" }));
                return Err(ExitCode::from(ended));
            }
            let delay = b.delay(*attempt);
            let of = b.max_retries.map(|m| format!(" of {m}")).unwrap_or_default();
            report(&format!("wsx: reconnecting in {:.2} s (attempt {attempt}{of}): {why}", delay.as_secs_f64()));
            if show.jsonl {
                let event = Event::Reconnect { attempt: *attempt, max_retries: b.max_retries, delay, reason: &why };
                let _ = jsonl::emit(&event);
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = tokio::signal::ctrl_c() => {
                    report("wsx: interrupted");
                    return Err(ExitCode::from(130));
                }
            }
        }
        let result = tokio::select! {
            result = builder.clone().connect() => result,
            _ = tokio::signal::ctrl_c() => {
                report("wsx: interrupted");
                return Err(ExitCode::from(130));
            }
        };
        match result {
            Ok(connected) => return Ok(connected),
            Err(e) => {
                if let (true, Some(refusal)) = (show.include, refusal(&e)) {
                    report(&refusal);
                }
                let line = format!("cannot connect to {url}: {}", escape_controls(&e.to_string(), false));
                if show.jsonl {
                    let _ = jsonl::emit(&Event::error(&format!("cannot connect to {url}: {e}"), &e));
                }
                if backoff.is_some() && retry::connect_error_is_transient(&e) {
                    after = Some((line, 1));
                    continue;
                }
                report(&format!("wsx: {line}"));
                return Err(ExitCode::from(1));
            }
        }
    }
}

/// A refused handshake as `-i` shows it: status, headers, a blank line and the body (as text,
/// escaped; cut at the library's bound).
fn refusal(e: &wsx::Error) -> Option<String> {
    let wsx::Error::Handshake(wsx::HandshakeError::UnexpectedStatus { status, headers, body }) = e else {
        return None;
    };
    let mut text = format!("HTTP {status}");
    for (name, value) in headers.iter() {
        let value = escape_controls(&String::from_utf8_lossy(value.as_bytes()), false).into_owned();
        text.push_str(&format!("\n{name}: {value}"));
    }
    text.push('\n');
    if !body.is_empty() {
        text.push('\n');
        text.push_str(escape_controls(String::from_utf8_lossy(body).trim_end_matches('\n'), true).as_ref());
        if body.len() >= wsx::proto::handshake::MAX_ERROR_BODY_BYTES {
            text.push_str(&format!("\n[body cut at {} bytes]", body.len()));
        }
    }
    Some(text)
}

/// How one connection ended.
struct SessionEnd {
    /// We started the closing handshake (end of stdin, /quit, /close, Ctrl-C, --max-messages).
    we_closed: bool,
    /// The server's close frame.
    peer_close: Option<Option<CloseFrame>>,
    /// The connection failed.
    failure: Option<wsx::Error>,
    /// A send failed (the connection had ended).
    send_error: Option<wsx::Error>,
    /// Ctrl-C twice, or while closing: exit now.
    interrupted: bool,
}

impl SessionEnd {
    /// Whether `--reconnect` connects again after this end.
    fn is_transient(&self, always: bool) -> bool {
        if self.we_closed {
            return false;
        }
        if let Some(frame) = &self.peer_close {
            return retry::close_is_transient(frame.as_ref().map(|f| f.code), always);
        }
        match self.failure.as_ref().or(self.send_error.as_ref()) {
            Some(e) => retry::failure_is_transient(e),
            None => true,
        }
    }
}

/// Runs one connection: sends the preamble, what the previous connection could not send, then
/// stdin; prints what arrives; returns how it ended.
async fn session(
    ws: WebSocket<MaybeTlsStream>,
    args: &ConnectArgs,
    ui: &Arc<Ui>,
    preamble: &[Message],
    budget: Option<Arc<Budget>>,
    input: &mut InputState,
) -> SessionEnd {
    let (reader, mut writer) = ws.split();
    let pings = Arc::new(Mutex::new(Pings::new()));
    let (events_tx, mut events) = mpsc::unbounded_channel();
    // The library sends the keepalive pings; with --show-ping they are shown when it does.
    let shown_keepalive = args.ping_interval.filter(|_| args.show_ping);
    let received = shown_keepalive.map(|_| Arc::new(Notify::new()));
    tokio::spawn(read_loop(
        reader,
        ui.clone(),
        pings.clone(),
        ReaderOptions { show_ping: args.show_ping, interval: args.ping_interval, received: received.clone(), budget },
        events_tx,
    ));
    let keep_unsent = args.backoff().is_some();
    let no_close = args.no_close || args.max_messages().is_some();

    let mut session = Session {
        writer: &mut writer,
        ui,
        pings: &pings,
        show_ping: args.show_ping,
        we_closed: false,
        send_error: None,
        unsent: std::mem::take(&mut input.unsent),
        keep_unsent,
    };
    for message in preamble {
        session.send(message.clone()).await;
    }
    for message in std::mem::take(&mut session.unsent) {
        session.send_input(message).await;
    }
    let mut peer_close: Option<Option<CloseFrame>> = None;
    let mut failure: Option<wsx::Error> = None;
    let mut ctrl_c = Box::pin(tokio::signal::ctrl_c());
    let mut interrupted = false;

    // Every way out of this loop has a deadline in the library: the reader ends (`Done`) when
    // the connection is closed, cleanly or by the close, keepalive or write timeout.
    loop {
        let ending = session.we_closed || peer_close.is_some() || failure.is_some();
        let reading = input.open && !ending && session.send_error.is_none();
        let next_ping = shown_keepalive.filter(|_| !ending).and_then(|every| lock(&pings).next_keepalive(every));
        tokio::select! {
            event = events.recv() => match event {
                Some(ReaderEvent::Closed(frame)) => peer_close = Some(frame),
                Some(ReaderEvent::Failed(e)) => {
                    failure.get_or_insert(e);
                }
                Some(ReaderEvent::OutputClosed | ReaderEvent::Enough) => session.close(CloseCode::NORMAL, "").await,
                Some(ReaderEvent::Done) | None => break,
            },
            line = input.rx.recv(), if reading => match line {
                Some(Input::Text(text)) => session.send_input(Message::text(text)).await,
                Some(Input::Binary(data)) => session.send_input(Message::Binary(data)).await,
                Some(Input::Line(line, ack)) => {
                    session.command(&line).await;
                    let _ = ack.send(if session.we_closed { Ack::Stop } else { Ack::Continue });
                }
                Some(Input::Interrupt) => session.close(CloseCode::NORMAL, "").await,
                Some(Input::Eof) | None => {
                    input.open = false;
                    if !no_close {
                        session.close(CloseCode::NORMAL, "").await;
                    }
                }
            },
            () = async { received.as_ref().expect("guarded").notified().await }, if received.is_some() => {},
            _ = sleep_until_opt(next_ping), if next_ping.is_some() => {
                // Nothing received for the interval: the library's keepalive ping leaves now
                // (unless the reader saw a frame meanwhile, or already showed this ping).
                let mut p = lock(&pings);
                let still_due = shown_keepalive.and_then(|every| p.next_keepalive(every)).is_some_and(|d| d <= Instant::now());
                if still_due {
                    let n = p.keepalive_sent();
                    drop(p);
                    ui.note(Kind::Ping, &control_line("> ping", &n.to_string(), None));
                    let number = n.to_be_bytes();
                    ui.note_event(&Event::Ping { direction: Direction::Sent, payload: &number, keepalive: true });
                }
            },
            _ = &mut ctrl_c => {
                if interrupted || ending {
                    return SessionEnd { we_closed: session.we_closed, peer_close, failure, send_error: None, interrupted: true };
                }
                interrupted = true;
                ctrl_c = Box::pin(tokio::signal::ctrl_c());
                session.close(CloseCode::NORMAL, "").await;
            },
        }
    }
    input.unsent = std::mem::take(&mut session.unsent);
    SessionEnd {
        we_closed: session.we_closed,
        peer_close,
        failure,
        send_error: session.send_error.take(),
        interrupted: false,
    }
}

/// Stops the prompt and gives the terminal back (interactive mode).
async fn finish_terminal(ui: &Ui, prompt: Option<&input::Prompt>) {
    if let Some(prompt) = prompt {
        ui.detach_printer();
        prompt.end().await;
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await;
    }
}

fn humantime(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs.fract() == 0.0 {
        format!("{secs:.0} s")
    } else {
        format!("{secs} s")
    }
}

/// The sending side of the session.
struct Session<'a> {
    writer: &'a mut WsWriter<MaybeTlsStream>,
    ui: &'a Ui,
    pings: &'a Mutex<Pings>,
    show_ping: bool,
    we_closed: bool,
    send_error: Option<wsx::Error>,
    /// Input that could not be sent (kept only with `keep_unsent`).
    unsent: VecDeque<Message>,
    keep_unsent: bool,
}

impl Session<'_> {
    /// Sends a message from stdin or the prompt; with --reconnect, one the ended connection
    /// did not take is kept for the next.
    async fn send_input(&mut self, message: Message) {
        if self.send_error.is_some() {
            if self.keep_unsent {
                self.unsent.push_back(message);
            }
            return;
        }
        if let Err(e) = self.writer.send(message.clone()).await {
            self.send_error = Some(e);
            if self.keep_unsent {
                self.unsent.push_back(message);
            }
        }
    }

    async fn send(&mut self, message: Message) {
        if self.send_error.is_some() {
            return;
        }
        if let Err(e) = self.writer.send(message).await {
            // The connection is closed; the reader reports why and ends.
            self.send_error = Some(e);
        }
    }

    /// Starts the closing handshake; the reader receives the server's answer, or the library's
    /// close timeout ends the connection.
    async fn close(&mut self, code: CloseCode, reason: &str) {
        if self.we_closed {
            return;
        }
        self.we_closed = true;
        if let Err(e) = self.writer.close(code, reason).await {
            self.send_error.get_or_insert(e);
        }
    }

    /// Runs a line typed at the prompt.
    async fn command(&mut self, line: &str) {
        let Some(command) = input::parse_command(line) else {
            return;
        };
        match command {
            Command::Text(text) => self.send_input(Message::text(text)).await,
            Command::Binary(data) => self.send_input(Message::binary(data)).await,
            Command::BinaryFile(arg) => match input::read_binary_arg(&arg, input::MAX_BINARY_FILE).await {
                Ok((data, note)) => {
                    if let Some(note) = note {
                        self.ui.note(Kind::Plain, &escape_controls(&note, false));
                    }
                    self.send_input(Message::Binary(data)).await;
                }
                Err(why) => self.ui.note(Kind::Error, &escape_controls(&why, false)),
            },
            Command::Ping(data) => {
                let data = Bytes::from(data);
                lock(self.pings).record(data.clone(), false);
                if self.show_ping {
                    self.ui.note(Kind::Ping, &control_line("> ping", &payload(&data), None));
                }
                self.send(Message::Ping(data)).await;
            }
            Command::Pong(data) => self.send(Message::Pong(Bytes::from(data))).await,
            Command::Close(code, reason) => self.close(code, &reason).await,
            Command::Help => self.ui.note(Kind::Plain, &input::help_text()),
            Command::Invalid(why) => self.ui.note(Kind::Error, &why),
        }
    }
}

/// The final status line and the exit code. `ping_timeout` is named when the keepalive failed.
fn outcome(
    we_closed: bool,
    peer_close: Option<Option<CloseFrame>>,
    failure: Option<wsx::Error>,
    send_error: Option<wsx::Error>,
    ping_timeout: Duration,
) -> (String, u8) {
    if let Some(frame) = peer_close {
        let (code, reason) = frame.as_ref().map_or((1005, ""), |f| (f.code.0, f.reason.as_str()));
        let clean = we_closed || code == 1000 || code == 1005;
        return (format!("closed: {}", describe_close(code, reason)), if clean { 0 } else { 2 });
    }
    let Some(error) = failure.or(send_error) else {
        return ("closed: 1006 abnormal closure: the connection ended without a close frame".into(), 2);
    };
    let text = escape_controls(&error.to_string(), false).into_owned();
    let line = match &error {
        wsx::Error::AbnormalClosure => {
            "closed: 1006 abnormal closure: the connection ended without a close frame".into()
        }
        wsx::Error::Proto(wsx::proto::Error::Timeout(wsx::proto::TimeoutError::Close)) => {
            format!(
                "closed: 1006 abnormal closure: the server did not answer our close frame within {}",
                humantime(CLOSE_TIMEOUT)
            )
        }
        wsx::Error::Proto(wsx::proto::Error::Timeout(wsx::proto::TimeoutError::Keepalive)) => {
            format!("closed: 1006 abnormal closure: no answer to a ping within {}", humantime(ping_timeout))
        }
        e => match e.close_code() {
            Some(code) if code != CloseCode::ABNORMAL => {
                format!("closed: {} (sent by wsx): {text}", describe_close(code.0, ""))
            }
            _ => format!("closed: 1006 abnormal closure: {text}"),
        },
    };
    (line, 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_urls() {
        assert_eq!(normalize_url("ws://h/p"), "ws://h/p");
        assert_eq!(normalize_url("localhost:8080/x"), "ws://localhost:8080/x");
        assert_eq!(normalize_url("http://h/"), "ws://h/");
        assert_eq!(normalize_url("https://h/"), "wss://h/");
    }

    #[test]
    fn checks_headers() {
        let ok = parse_headers(&["X-Token: abc:def ".into(), "Cookie:a=b".into()]).unwrap();
        assert_eq!(ok, vec![("X-Token".into(), "abc:def".into()), ("Cookie".into(), "a=b".into())]);
        assert!(parse_headers(&["no colon".into()]).is_err());
        assert!(parse_headers(&["bad name: x".into()]).is_err());
        assert!(parse_headers(&["X: a\u{1}b".into()]).is_err());
    }

    #[test]
    fn tracks_pings() {
        let mut pings = Pings::new();
        let interval = Duration::from_secs(20);
        let due = pings.next_keepalive(interval).unwrap();
        assert_eq!(due, pings.last_received + interval);
        assert_eq!(pings.keepalive_sent(), 1);
        pings.record(Bytes::from_static(b"manual"), false);
        assert_eq!(pings.next_keepalive(interval), None, "one keepalive ping is unanswered");
        assert!(matches!(pings.answer(b"manual"), Some((_, false))));
        assert!(pings.answer(b"unknown").is_none());
        // Anything received after the ping answers it: the next one is due an interval later.
        pings.last_received = Instant::now() + Duration::from_millis(1);
        assert_eq!(pings.next_keepalive(interval), Some(pings.last_received + interval));
        assert!(matches!(pings.answer(&1u64.to_be_bytes()), Some((_, true))));
        assert_eq!(pings.keepalive_sent(), 2);
        assert_eq!(ping_payload(&2u64.to_be_bytes(), true), "2");
        assert_eq!(ping_payload(b"abc", true), "abc");
        assert_eq!(ping_payload(&2u64.to_be_bytes(), false), payload(&2u64.to_be_bytes()));
        // A pong for keepalive 3 before the display noted ping 3: caught up, in order, once.
        let sent_at = Instant::now();
        assert!(pings.catch_up(&4u64.to_be_bytes(), sent_at).is_none(), "not the next keepalive");
        assert!(matches!(pings.catch_up(&3u64.to_be_bytes(), sent_at), Some((3, _))));
        assert!(pings.catch_up(&3u64.to_be_bytes(), sent_at).is_none(), "shown once");
        assert_eq!(pings.keepalive_sent(), 4);
    }

    #[test]
    fn exit_codes() {
        const T: Duration = Duration::from_secs(20);
        let frame = |code, reason: &str| Some(Some(CloseFrame::new(CloseCode(code), reason)));
        assert_eq!(outcome(false, frame(1000, ""), None, None, T), ("closed: 1000 normal".into(), 0));
        assert_eq!(outcome(false, Some(None), None, None, T), ("closed: 1005 no status code".into(), 0));
        assert_eq!(outcome(false, frame(4000, "bye"), None, None, T), ("closed: 4000 \"bye\"".into(), 2));
        assert_eq!(outcome(false, frame(1001, ""), None, None, T).1, 2);
        assert_eq!(outcome(true, frame(4000, "mine"), None, None, T).1, 0);
        let (line, code) = outcome(false, None, Some(wsx::Error::AbnormalClosure), None, T);
        assert!(line.starts_with("closed: 1006"), "{line}");
        assert_eq!(code, 2);
        let timeout = wsx::Error::Proto(wsx::proto::Error::Timeout(wsx::proto::TimeoutError::Close));
        let (line, code) = outcome(true, None, Some(timeout), None, T);
        assert!(line.contains("did not answer our close"), "{line}");
        assert_eq!(code, 2);
        let protocol = wsx::Error::Proto(wsx::proto::ProtocolError::ReservedOpcode(3).into());
        let (line, code) = outcome(false, None, Some(protocol), None, T);
        assert!(line.starts_with("closed: 1002 protocol error (sent by wsx)"), "{line}");
        assert_eq!(code, 2);
        let keepalive = wsx::Error::Proto(wsx::proto::Error::Timeout(wsx::proto::TimeoutError::Keepalive));
        let (line, code) = outcome(false, None, Some(keepalive), None, Duration::from_millis(300));
        assert_eq!((line.as_str(), code), ("closed: 1006 abnormal closure: no answer to a ping within 0.3 s", 2));
    }
}
