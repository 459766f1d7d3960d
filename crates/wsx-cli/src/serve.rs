//! `wsx serve`: a WebSocket server with a demo page, an echo endpoint, broadcast rooms and
//! static files, all on one port.
//!
//! | path                               | WebSocket                                          | plain HTTP |
//! |------------------------------------|----------------------------------------------------|------------|
//! | `/`                                | (404)                                              | the demo page |
//! | `/echo`                            | echoes every text and binary message               | 426 |
//! | `/room/{name}`                     | every message goes to every member (sender too)    | 426 |
//! | `/hub`                             | the hub subprotocol `wsx.hub.v1` (`docs/hub.md`)   | 426 |
//! | `/close?code=N&reason=R&after=MS`  | echoes, then the server closes with N and R after MS ms (default 1000, "", 0) | 426 |
//! | anything else                      | 404                                                | `--static` file or 404 |
//!
//! With `--echo` every path echoes (the Autobahn conformance setup).
//! With `--exec PROGRAM [ARGS]...` every path but `/room/{name}` and `/hub` (which stay the
//! rooms) runs the program, one per connection: its stdout lines are sent as messages, the
//! messages go to its stdin (websocketd; see [`exec`]).
//! With `--forward tcp:HOST:PORT` every path is bridged to a new TCP connection to HOST:PORT
//! (websockify): bytes both ways as binary messages, text messages passed on as their bytes;
//! a target that cannot be reached refuses the upgrade with 502 (see [`forward`],
//! [`crate::bridge`]).
//!
//! - **Subprotocols**: the server selects, in its own order of preference, the first of its
//!   subprotocols (`--subprotocol`, repeatable; by default [`PROTOCOLS`]: `chat.v1`, `echo.v1`)
//!   that the client offered; with none in common it selects none. They do not
//!   change what an endpoint does: `chat.v1` names the convention of the demo page (room
//!   messages are JSON `{"id","from","text"}` or a file announcement followed by the file as a
//!   binary message), which the server relays unchanged.
//! - **Host names**: see [`host`]: requests whose `Host` is not an IP address, `localhost` or a
//!   `--host` name are refused with 421 (DNS rebinding), unless `--allow-any-host`.
//! - **Origins**: see [`wsx::origin`]: a browser page may connect when it was served by this
//!   server or its origin was given with `--origin`; requests without `Origin` are allowed.
//! - **Closing**: the peer's close frame is answered with the same code and reason (the protocol
//!   core's echo, as browsers answer), so a page that closes with 4000 "bye" sees 4000, "bye".
//! - **Rooms**: see [`wsx_hub`] (in this process, or shared over Redis with `--bus`): a member that falls more than `--room-queue` messages or
//!   `--room-queue-bytes` bytes behind is closed with 1008. A message to a room may have at most
//!   `--room-max-message` bytes (else 1009), so that what the room holds for a slow member stays
//!   small.
//! - **Slow and silent clients** (every endpoint): one whose socket takes no data for
//!   `--write-timeout` (30 s) is dropped, and so is one that, with 1 MiB of output waiting,
//!   takes less than 1 MiB of it within `--slow-reader-timeout` (60 s). A client that answers
//!   no keepalive ping (`--ping-interval`, 30 s) within `--ping-timeout` (20 s) is dropped.
//! - **Limits** (off by default): `--max-connections` refuses handshakes over it with 503;
//!   `--max-connections-per-ip` and `--handshake-rate-per-ip` refuse one client address's
//!   handshakes over them with 429 (see [`wsx::limit`]). Both carry `Retry-After`.
//! - **Shutdown**: SIGINT (Ctrl-C) or SIGTERM closes every connection with 1001 and waits up to
//!   2 s for the closing handshakes, then exits 0.
//!
//! - **HTTP/2**: with TLS the port offers ALPN `h2` and `http/1.1` (`--no-http2`: `http/1.1`
//!   only). Over h2 ([`h2`]) the same pages and files are served, and WebSockets arrive as
//!   extended CONNECT streams (RFC 8441) on the same routes, admitted by the same [`admit`].
//!
//! One log line per connection when it opens (`open`: peer, path, protocol, `http` version and,
//! over HTTP/2, the connection's number `conn`) and when it ends (`closed`: peer, path, code, who
//! closed first, duration in ms), and one per plain HTTP request (`http`, with `http` and `conn`
//! too).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::http::{HeaderMap, StatusCode, Uri};
use anyhow::Context as _;
use clap::Args;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::either::Either;
use wsx::origin::{OriginPolicy, Scheme};
use wsx::proto::deflate::DeflateConfig;
use wsx::proto::handshake::{check_request, UpgradeRequest};
use wsx::{
    Accept, CloseCode, CloseFrame, Incoming, Message, Rejection, ServerConfig, State, WebSocket, WebSocketConfig,
};

mod exec;
mod forward;
mod h2;
mod host;
mod http;
mod loops;
mod shutdown;
mod tls;

use host::HostPolicy;
use shutdown::Shutdown;
use wsx_hub::{Hub, HubConfig, QueueLimits};

/// The subprotocols the server selects from without `--subprotocol`, in its order of preference.
pub const PROTOCOLS: [&str; 2] = ["chat.v1", "echo.v1"];

/// How long shutdown waits for the closing handshakes.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// The longest `after` of `/close`.
const MAX_CLOSE_AFTER_MS: u64 = 600_000;

/// Options of `wsx serve`.
#[derive(Args, Debug)]
#[command(after_help = "\
Endpoints (all on one port):
  /                                  the demo page (plain HTTP)
  /echo                              WebSocket: echoes every message
  /room/NAME                         WebSocket: every message goes to every member of the room
  /hub                               WebSocket: the hub subprotocol wsx.hub.v1 (docs/hub.md)
  /close?code=N&reason=R&after=MS    WebSocket: echoes, then the server closes with N and R
  anything else                      a --static file, or 404
Subprotocols: the server selects the first of its --subprotocol list (default chat.v1, echo.v1)
that the client offered (wsx.hub.v1 on /hub).
With --tls-cert/--tls-key or --tls-self-signed the port speaks https and wss, over HTTP/2
(WebSockets as extended CONNECT streams, RFC 8441, as Chromium and Firefox open them) and
HTTP/1.1; --no-http2 keeps it to HTTP/1.1.
Rooms live in this process, or, with --bus redis://HOST:PORT[/DB] (or WSX_BUS), are shared by
every wsx serve connected to that Redis server (docs/hub.md).
Instead of the endpoints, every WebSocket path can be (plain HTTP stays as above):
  --echo                             an echo (the conformance setup)
  --exec PROGRAM [ARGS]...           a program per connection (websocketd), last on the line;
                                     /room/NAME and /hub stay the rooms:
                                       wsx serve --exec sh -c 'while read l; do echo \"got $l\"; done'
  --forward tcp:HOST:PORT            a bridge to a new TCP connection (websockify):
                                       wsx serve --addr 127.0.0.1:6080 --forward tcp:127.0.0.1:5900
docs/cli.md has websocat's, wscat's, websocketd's and websockify's jobs as wsx commands.
SIGINT/SIGTERM close every connection with 1001 and exit 0 (after at most 2 s).")]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Event-loop threads (0: one per core this process may run on). Each is a single-threaded
    /// runtime that serves its share of the connections, dealt round robin, from start to end.
    #[arg(long, default_value_t = 0, value_name = "N")]
    threads: usize,
    /// Echo every text and binary message back, on every path (no rooms).
    #[arg(long)]
    echo: bool,
    /// Settings for the Autobahn conformance suite: no keepalive pings, no idle timeout.
    #[arg(long)]
    conformance: bool,
    /// Do not offer permessage-deflate compression.
    #[arg(long)]
    no_deflate: bool,
    /// Keep the compression context between messages (better ratio for small, similar
    /// messages; about 350 KB more per connection).
    #[arg(long)]
    deflate_context_takeover: bool,
    /// Seconds between keepalive pings to a silent client (0 = off).
    #[arg(long, default_value_t = 30)]
    ping_interval: u64,
    /// Seconds a client may take to answer a keepalive ping (and after it, to send anything)
    /// before it is dropped as gone.
    #[arg(long, default_value_t = 20, value_name = "SECONDS")]
    ping_timeout: u64,
    /// Seconds the server's output to a client may make no progress (the client reads
    /// nothing) before the connection is dropped (0 = never).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    write_timeout: u64,
    /// The slow-reader bound: with a client's output at the high-water mark (1 MiB), the client
    /// must take a mark's worth of it within this many seconds, or it is dropped: a client that
    /// reads a trickle cannot hold a connection and its buffer for ever (0 = off). The slowest
    /// accepted read rate is 1 MiB over this time (60 s: about 17 KiB/s).
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    slow_reader_timeout: u64,
    /// The longest a plain HTTP answer (the page, a file, an error) may take to be sent over
    /// HTTP/1.1; over HTTP/2, the longest the client may take none of an answer (it then loses
    /// its connection: one stream cannot be cut alone).
    #[arg(long, default_value_t = 60, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    http_timeout: u64,
    /// Serve the files of this directory to plain HTTP requests (`/` serves its index.html if
    /// it has one, else the demo page).
    #[arg(long = "static", value_name = "DIR")]
    static_dir: Option<PathBuf>,
    /// Also allow browser pages from this origin (repeatable), e.g. http://localhost:3000;
    /// `null` allows file: pages, `*` every origin. By default only pages served by this server
    /// may connect.
    #[arg(long = "origin", value_name = "URL")]
    origins: Vec<String>,
    /// Also answer requests for this host name (repeatable), e.g. myhost.lan. By default only
    /// IP addresses and localhost are answered; other names get 421 (against DNS rebinding).
    #[arg(long = "host", value_name = "NAME")]
    hosts: Vec<String>,
    /// Answer requests for every host name: only behind a reverse proxy that checks the name
    /// itself (otherwise any web page can reach the server through DNS rebinding).
    #[arg(long)]
    allow_any_host: bool,
    /// Messages a room queues for each member; one that falls further behind is closed with
    /// 1008.
    #[arg(long, default_value_t = 256, value_name = "N")]
    room_queue: usize,
    /// Bytes a room queues for each member (on top of what its socket holds); one that falls
    /// further behind is closed with 1008. A single larger message still fits an empty queue.
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES")]
    room_queue_bytes: usize,
    /// The largest message a room member may send, in bytes (after decompression); a larger one
    /// closes its connection with 1009. /echo keeps the 64 MiB limit.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    room_max_message: usize,
    /// Share rooms with every wsx serve connected to this Redis server
    /// (redis://HOST:PORT[/DB]). By default rooms live in this process.
    #[arg(long, env = "WSX_BUS", value_name = "URL")]
    bus: Option<String>,
    /// Declare that the --bus Redis keeps every write it acknowledged across a restart
    /// (appendonly yes, appendfsync always): rooms' histories then survive its restarts.
    /// Without it, a Redis restart starts every room afresh (clients are told recovered: false).
    #[arg(long, requires = "bus")]
    bus_durable: bool,
    /// A subprotocol the server may select (repeatable), in its order of preference; replaces
    /// the default list (chat.v1, echo.v1). /hub selects wsx.hub.v1.
    #[arg(long = "subprotocol", value_name = "NAME")]
    subprotocols: Vec<String>,
    /// The most WebSocket connections open at once (0: no limit): over it, handshakes are
    /// refused with 503 and Retry-After; open connections are untouched.
    #[arg(long, default_value_t = 0, value_name = "N")]
    max_connections: usize,
    /// The most WebSocket connections one client address (an IPv6 /64) may hold at once (0: no
    /// limit): over it, its handshakes are refused with 429 and Retry-After. Behind a reverse
    /// proxy every client has the proxy's address: limit there instead.
    #[arg(long, default_value_t = 0, value_name = "N")]
    max_connections_per_ip: usize,
    /// How many WebSocket handshakes one client address (an IPv6 /64) may start per second, in
    /// bursts of as many (0: no limit): faster ones are refused with 429 and Retry-After.
    #[arg(long, default_value_t = 0, value_name = "N")]
    handshake_rate_per_ip: u32,
    /// Messages each room's history keeps, for members that reconnect (hub protocol).
    #[arg(long, default_value_t = 100, value_name = "N")]
    room_history: usize,
    /// Seconds a message stays in a room's history.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    room_history_ttl: u64,
    /// Seconds a member of a dead node stays in presence (with --bus).
    #[arg(long, default_value_t = 15, value_name = "SECONDS")]
    presence_ttl: u64,
    /// Bridge every WebSocket connection, on every path, to a new TCP connection to HOST:PORT
    /// (like websockify): bytes both ways as binary messages; a text message's bytes are passed
    /// on too. The TCP connection is made before the upgrade is answered: if it fails (refused,
    /// or not within 5 s) the upgrade is refused with 502. The target's end of stream closes
    /// the WebSocket with 1000 (after everything before it was sent), a TCP error with 1011;
    /// the client's close shuts the TCP connection down (both ways; what the target still
    /// sends is read and dropped for up to 5 s, so that everything sent to it arrives). No
    /// half-close: WebSocket cannot carry one, so a target that shuts its sending side down
    /// ends the bridge, and its client cannot send more (nor can a client half-close and wait
    /// for an answer). One log line per bridge: bytes each way, duration. A target that takes
    /// nothing for --write-timeout (30 s when it is 0) ends the bridge too (1011); the target's
    /// socket has TCP keepalive. Plain HTTP (the demo page, --static) is unchanged. Browser
    /// clients that insist on a subprotocol (noVNC's `binary`) need it in --subprotocol.
    #[arg(long, value_name = "tcp:HOST:PORT", value_parser = forward::parse_target, conflicts_with_all = ["echo", "exec"])]
    forward: Option<forward::Target>,
    #[command(flatten)]
    tls: tls::TlsArgs,
    #[command(flatten)]
    exec: exec::ExecArgs,
}

/// Everything a connection needs to know about the server.
struct Server {
    config: ServerConfig,
    /// The connection settings of room members: `config.websocket` with the room's message
    /// size limit.
    room_websocket: WebSocketConfig,
    echo_everywhere: bool,
    /// `--forward`: every WebSocket is bridged to a new TCP connection to this target.
    forward: Option<forward::Target>,
    hosts: HostPolicy,
    origins: OriginPolicy,
    site: http::Site,
    hub: Hub,
    /// The subprotocols to select from, in order of preference.
    protocols: Vec<String>,
    /// `--max-connections`.
    limit: Option<wsx::limit::ConnectionLimit>,
    /// `--max-connections-per-ip` and `--handshake-rate-per-ip`.
    per_ip: wsx::limit::PerIpLimit,
    /// With `--tls-cert`/`--tls-key` or `--tls-self-signed`: every connection speaks TLS.
    tls: Option<wsx::tls::TlsAcceptor>,
    /// `--exec`: the program each connection runs.
    exec: Option<exec::Exec>,
    /// `--http-timeout`.
    http_timeout: Duration,
}

impl Server {
    /// The connection settings of a route: room members have their own message size limit.
    fn websocket_config(&self, route: &Route) -> &WebSocketConfig {
        match route {
            Route::Room(_) | Route::Hub => &self.room_websocket,
            _ => &self.config.websocket,
        }
    }

    /// The scheme of this server's own pages, for the same-origin check.
    fn scheme(&self) -> Scheme {
        if self.tls.is_some() {
            Scheme::Https
        } else {
            Scheme::Http
        }
    }
}

/// What an upgrade request's path asks for.
///
/// Every variant's data is a pointer (the route is kept in every connection's task): 16 bytes.
#[derive(Debug)]
enum Route {
    Echo,
    #[allow(clippy::box_collection, reason = "a thin pointer keeps the route at 16 bytes")]
    Room(Box<String>),
    /// A client of the hub subprotocol.
    Hub,
    /// Echo, and close with this frame after this long. (Boxed, as the other modes' state: a
    /// route is kept in every connection's task, whatever its mode.)
    Close(Box<(CloseFrame, Duration)>),
    /// `--forward`: a bridge to the target; the connection to it, once made (before the
    /// upgrade is accepted).
    Forward(Option<Box<TcpStream>>),
    /// `--exec`: the program; its variables and place under `--exec-max`, once the request is
    /// accepted.
    Exec(Option<Box<(exec::Env, Option<wsx::limit::ConnectionPermit>)>>),
}

/// Runs the server until SIGINT or SIGTERM.
///
/// Every event loop's thread, this one included, drives a deadline table
/// ([`wsx::deadlines`]): the connections it serves keep their keepalive, idle and close
/// deadlines there, an entry of 24 bytes each, rather than a tokio timer each.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    tokio::select! {
        result = serve(args) => result,
        () = wsx::deadlines::drive() => anyhow::bail!("the accepting thread's deadline table was replaced"),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // Installed first, so that a signal arriving while we start is not fatal.
    let mut signals = Signals::new().context("cannot install the signal handlers")?;
    let origins = OriginPolicy::new(&args.origins).map_err(|e| anyhow::anyhow!("--origin {e}"))?;
    let hosts = HostPolicy::new(&args.hosts, args.allow_any_host).map_err(anyhow::Error::msg)?;
    let static_root = match &args.static_dir {
        Some(dir) => {
            let root = dir.canonicalize().with_context(|| format!("--static {}", dir.display()))?;
            anyhow::ensure!(root.is_dir(), "--static {}: not a directory", dir.display());
            Some(root)
        }
        None => None,
    };
    let tls = tls::acceptor(&args.tls)?;
    let listener = TcpListener::bind(args.addr).await.with_context(|| format!("cannot listen on {}", args.addr))?;
    let mut config = ServerConfig::default();
    if !args.no_deflate {
        let mut deflate = DeflateConfig::default();
        if !args.conformance && !args.deflate_context_takeover {
            // Without context takeover each side's zlib state is released between messages, so
            // an idle connection holds none (with it, about 350 KB per connection stay
            // allocated); small messages compress less well.
            deflate.server_no_context_takeover = true;
            deflate.client_no_context_takeover = true;
        }
        config.websocket.deflate = Some(deflate);
    }
    if !args.conformance && args.ping_interval > 0 {
        config.websocket.proto.keepalive_interval = Some(Duration::from_secs(args.ping_interval));
    }
    if args.ping_timeout == 0 {
        anyhow::bail!("--ping-timeout must be at least 1 second");
    }
    config.websocket.proto.keepalive_timeout = Duration::from_secs(args.ping_timeout);
    config.websocket.proto.write_timeout = (args.write_timeout > 0).then(|| Duration::from_secs(args.write_timeout));
    config.websocket.proto.slow_reader_timeout =
        (args.slow_reader_timeout > 0).then(|| Duration::from_secs(args.slow_reader_timeout));
    // Checked once here, so a bad flag is an error at start rather than a refused handshake each.
    config
        .websocket
        .proto
        .validate()
        .map_err(|e| anyhow::anyhow!("{e} (check --ping-timeout, --write-timeout, --slow-reader-timeout)"))?;
    let mut room_websocket = config.websocket.clone();
    room_websocket.proto.max_message_size = args.room_max_message;
    room_websocket.proto.max_frame_size = room_websocket.proto.max_frame_size.min(args.room_max_message);
    let hub_config = HubConfig {
        queue: QueueLimits { messages: args.room_queue, bytes: args.room_queue_bytes },
        history_size: args.room_history,
        history_ttl: Duration::from_secs(args.room_history_ttl),
        presence_ttl: Duration::from_secs(args.presence_ttl.max(1)),
        broker_durable: args.bus_durable,
        ..HubConfig::default()
    };
    let hub = match &args.bus {
        None => Hub::local(hub_config),
        Some(url) => Hub::redis(url, hub_config).await.with_context(|| format!("--bus {url}"))?,
    };
    let write_timeout = config.websocket.proto.write_timeout;
    let exec = exec::Exec::new(&args.exec, listener.local_addr()?.port(), tls.is_some(), write_timeout)?;
    let server = Arc::new(Server {
        config,
        room_websocket,
        echo_everywhere: args.echo,
        forward: args.forward.clone(),
        hosts,
        origins,
        site: http::Site { static_root },
        hub,
        protocols: if args.subprotocols.is_empty() {
            PROTOCOLS.iter().map(|p| (*p).to_owned()).collect()
        } else {
            args.subprotocols.clone()
        },
        limit: (args.max_connections > 0).then(|| wsx::limit::ConnectionLimit::new(args.max_connections)),
        per_ip: wsx::limit::PerIpLimit::new(wsx::limit::PerIpConfig {
            max_connections: (args.max_connections_per_ip > 0).then_some(args.max_connections_per_ip),
            handshake_rate: (args.handshake_rate_per_ip > 0).then_some(args.handshake_rate_per_ip),
            handshake_burst: 0,
        }),
        exec,
        tls,
        http_timeout: Duration::from_secs(args.http_timeout),
    });
    let (trigger, shutdown) = shutdown::Trigger::new();
    let threads = match args.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut loops = loops::Loops::start(threads).context("cannot start the event loops")?;
    let addr = listener.local_addr()?;
    let mode = if args.echo { "echo on every path" } else { "demo, /echo, /room/{name}, /hub, /close" };
    let mode = if args.forward.is_some() { "forward every path to the --forward target" } else { mode };
    let mode =
        if server.exec.is_some() { "/room/{name} and /hub, and the --exec program on every other path" } else { mode };
    let scheme = if server.tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, mode, threads, "wsx serve listening on {scheme}://{addr}/");

    // Accept failures in a row (out of file descriptors, typically): logged once per episode.
    let mut failing: u64 = 0;
    let signal = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    if failing > 0 {
                        tracing::info!(failures = failing, "accepting connections again");
                        failing = 0;
                    }
                    let (server, shutdown) = (server.clone(), shutdown.clone());
                    loops.spawn(tcp, move |tcp| tcp_connection(server, tcp, peer, shutdown));
                }
                Err(e) => {
                    if failing == 0 {
                        tracing::warn!(
                            error = %e,
                            connections = loops.live(),
                            "accept failed; retrying every 50 ms until connections end"
                        );
                    }
                    failing += 1;
                    // The pending connection stays in the backlog: wait instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            name = signals.recv() => break name,
        }
    };
    drop(listener);
    tracing::info!(
        signal,
        connections = loops.live(),
        too_slow = server.hub.registry().lagged(),
        "shutting down: closing every connection with 1001"
    );
    trigger.shut_down();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, loops.drained()).await;
    if drained.is_err() {
        // Returning drops them: this thread's runtime ends with `main`, the other loops stop
        // when `loops` is dropped.
        tracing::info!(connections = loops.live(), "grace period over: dropping the connections left");
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// SIGINT and SIGTERM (Ctrl-C elsewhere); `wsx connect --listen` waits for them too.
pub(crate) struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self { interrupt: signal(SignalKind::interrupt())?, terminate: signal(SignalKind::terminate())? })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    pub(crate) async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// The transport of a connection: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for S {}

/// Serves one TCP connection: with `--tls-*`, the TLS handshake first (bounded by the handshake
/// timeout), then [`connection`]. The future of a plain connection is [`connection`]'s itself,
/// with no layer of its own around it: an idle connection's memory is mostly this future.
fn tcp_connection(
    server: Arc<Server>,
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: Shutdown,
) -> impl Future<Output = ()> + Send {
    let _ = tcp.set_nodelay(true);
    let Some(acceptor) = server.tls.clone() else { return Either::Left(connection(server, tcp, peer, shutdown)) };
    // Boxed: a TLS connection's state (its stream is larger than a TCP socket) must not make
    // every plain connection's task as large.
    Either::Right(Box::pin(async move {
        let timeout = server.config.websocket.proto.handshake_timeout;
        match tokio::time::timeout(timeout, wsx::tls::accept(&acceptor, tcp)).await {
            Ok(Ok(stream)) if stream.get_ref().1.alpn_protocol() == Some(b"h2") => {
                h2::connection(server, stream, peer, shutdown).await
            }
            Ok(Ok(stream)) => connection(server, stream, peer, shutdown).await,
            Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::info!(%peer, "TLS handshake not done within {timeout:?}"),
        }
    }))
}

/// Serves one connection: a plain HTTP answer, a refused handshake, or a WebSocket.
fn connection<S: Io>(
    server: Arc<Server>,
    stream: S,
    peer: SocketAddr,
    shutdown: Shutdown,
) -> impl Future<Output = ()> + Send {
    let started = Instant::now();
    // The handshake's state lives in its own allocation, freed before the connection's life.
    let handshake = Box::pin({
        let server = server.clone();
        async move {
            let (ws, route, path, permits) = handshake(&server, stream, peer).await?;
            Some((
                ws,
                Opened { route, path: path.into_boxed_str(), permits, peer, started: started.into(), http2: None },
            ))
        }
    });
    Phases::Handshake { handshake, next: Some((server, shutdown)), session: websocket::<S> }
}

/// The type of [`websocket`], for [`Phases`].
type SessionFn<S, W> = fn(Arc<Server>, WebSocket<S>, Opened, Shutdown) -> W;

pin_project_lite::pin_project! {
    /// A connection's future: its handshake, then its WebSocket's session. What an `async`
    /// block awaiting one then the other would be, without the block's own copies of the
    /// arguments kept beside the session for its whole life (an idle connection's memory is
    /// mostly this future).
    #[project = PhasesProj]
    enum Phases<S, H, W> {
        Handshake {
            #[pin]
            handshake: H,
            // What the session needs besides the handshake's result (taken when it starts).
            next: Option<(Arc<Server>, Shutdown)>,
            session: SessionFn<S, W>,
        },
        Session {
            #[pin]
            session: W,
        },
        Done,
    }
}

impl<S, H, W> Future for Phases<S, H, W>
where
    H: Future<Output = Option<(WebSocket<S>, Opened)>>,
    W: Future<Output = ()>,
{
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        use std::task::{ready, Poll};
        loop {
            match self.as_mut().project() {
                PhasesProj::Handshake { handshake, next, session } => {
                    let (upgraded, make) = (ready!(handshake.poll(cx)), *session);
                    match (upgraded, next.take()) {
                        (Some((ws, opened)), Some((server, shutdown))) => {
                            self.set(Phases::Session { session: make(server, ws, opened, shutdown) });
                        }
                        _ => {
                            self.set(Phases::Done);
                            return Poll::Ready(());
                        }
                    }
                }
                PhasesProj::Session { session } => {
                    ready!(session.poll(cx));
                    self.set(Phases::Done);
                    return Poll::Ready(());
                }
                PhasesProj::Done => return Poll::Ready(()),
            }
        }
    }
}

/// What the server knows of a WebSocket it has accepted.
struct Opened {
    route: Route,
    /// The request target (path and query), for the log.
    path: Box<str>,
    /// Its places under the limits, held for its life (released when this is dropped; the
    /// `--exec-max` place is in the route).
    permits: Permits,
    peer: SocketAddr,
    /// When its connection (or, over HTTP/2, its stream) arrived.
    started: wsx::proto::Stamp,
    /// Over HTTP/2: the number of the connection that carries it (see [`h2`]).
    http2: Option<std::num::NonZeroU64>,
}

/// Runs an accepted WebSocket on its route until it ends; logs its opening and its end.
///
/// An `async move` block over the arguments rather than an `async fn`: an `async fn` moves its
/// arguments into locals, and its future keeps both places, so the `WebSocket` (the bulk of an
/// idle connection's task) would be stored twice.
#[allow(clippy::manual_async_fn, reason = "an async fn would store its arguments twice")]
fn websocket<S: Io>(
    server: Arc<Server>,
    mut ws: WebSocket<S>,
    opened: Opened,
    mut shutdown: Shutdown,
) -> impl Future<Output = ()> + Send {
    {
        // Logged here, where the session is made (just before its first poll), rather than in
        // it: what only this line reads (the HTTP/2 connection's number) is then not kept in
        // every connection's task.
        let (peer, conn) = (opened.peer, opened.http2);
        let http = if conn.is_some() { "2" } else { "1.1" };
        tracing::info!(%peer, path = &*opened.path, protocol = ws.protocol(), http, conn, "open");
    }
    // Taken apart: the block keeps what it uses, and not the HTTP/2 connection's number.
    let Opened { route, path, permits, peer, started, http2: _ } = opened;
    let peer = Peer::from(peer);
    async move {
        let outcome = match route {
            Route::Echo => echo(&mut ws, &mut shutdown).await,
            // Boxed, as every mode but the plain echo: a mode's state must not make every
            // connection's task (and idle connection) larger.
            Route::Close(close) => {
                let (frame, after) = *close;
                Box::pin(close_after(&mut ws, &mut shutdown, frame, after)).await
            }
            // `Shutdown` is itself the shutdown future these sessions take (see its `Future`).
            Route::Room(name) => {
                Box::pin(wsx_hub::session::raw_member(&mut ws, &server.hub, name.as_str(), shutdown)).await.into()
            }
            Route::Hub => Box::pin(wsx_hub::session::hub_member(&mut ws, &server.hub, shutdown)).await.into(),
            Route::Forward(tcp) => match (tcp, &server.forward) {
                (Some(tcp), Some(target)) => {
                    let write_timeout = server.config.websocket.proto.write_timeout;
                    Box::pin(forward::bridge(ws, *tcp, target, peer.get(), write_timeout, shutdown)).await
                }
                _ => Outcome { error: Some("no connection to the forward target".into()), ..Outcome::default() },
            },
            Route::Exec(admitted) => match (admitted, &server.exec) {
                (Some(admitted), Some(exec)) => {
                    // The place under --exec-max is held until the program's session ends.
                    let (env, _permit) = *admitted;
                    Box::pin(exec.run(ws, env, peer.get(), shutdown)).await
                }
                _ => Outcome { error: Some("no --exec program".into()), ..Outcome::default() },
            },
        };
        let ms = started.get().elapsed().as_millis() as u64;
        let error = outcome.error.as_deref();
        // Named, so that the block owns them from the start (it captures only what it uses; an
        // unused one would be dropped when it was made).
        drop(permits);
        tracing::info!(%peer, path, code = outcome.code, by = outcome.by.map(By::as_str), ms, error, "closed");
    }
}

/// A peer's address as a session keeps it for its log: 16 bytes, where a `SocketAddr` takes 32
/// (room for an IPv6 address, its flow label and scope), in every connection's task. An IPv6
/// address is boxed.
enum Peer {
    V4(std::net::SocketAddrV4),
    V6(Box<std::net::SocketAddrV6>),
}

impl From<SocketAddr> for Peer {
    fn from(addr: SocketAddr) -> Self {
        match addr {
            SocketAddr::V4(v4) => Peer::V4(v4),
            SocketAddr::V6(v6) => Peer::V6(Box::new(v6)),
        }
    }
}

impl Peer {
    fn get(&self) -> SocketAddr {
        match self {
            Peer::V4(v4) => SocketAddr::V4(*v4),
            Peer::V6(v6) => SocketAddr::V6(**v6),
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::V4(v4) => v4.fmt(f),
            Peer::V6(v6) => v6.fmt(f),
        }
    }
}

/// The places a connection holds under the server's limits, for its life: under
/// `--max-connections` and per address. (The place under `--exec-max` of a connection that runs
/// a program is in its route, `Route::Exec`: few connections have one.)
type Permits = (Option<wsx::limit::ConnectionPermit>, wsx::limit::PerIpPermit);
/// An accepted WebSocket: its route, its path, and its places under the limits.
type Upgraded<S> = (WebSocket<S>, Route, String, Permits);

/// Reads the request and answers it: plain HTTP, a refusal, or the upgrade.
async fn handshake<S: Io>(server: &Server, stream: S, peer: SocketAddr) -> Option<Upgraded<S>> {
    let timeout = server.config.websocket.proto.handshake_timeout;
    let incoming =
        match tokio::time::timeout(timeout, Incoming::read(stream, &server.config.websocket.proto.handshake)).await {
            Ok(Ok(incoming)) => incoming,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "no request");
                return None;
            }
            Err(_) => {
                tracing::debug!(%peer, "no request head within {timeout:?}");
                return None;
            }
        };
    let uri = incoming.request().uri();
    let path = uri.path_and_query().map_or_else(|| uri.to_string(), |p| p.as_str().to_owned());
    let route = server_route(server, uri);

    let host_check = server.hosts.check(incoming.request().version(), incoming.request().headers());

    if !incoming.is_upgrade() {
        let (stream, request, _) = incoming.into_parts();
        let response = match host_check {
            Ok(()) => http::respond(&server.site, &request, !matches!(route, Ok(None))).await,
            Err(rejection) => http::text(rejection.status, rejection.body),
        };
        let status = response.status().as_u16();
        let written = tokio::time::timeout(server.http_timeout, http::write(stream, request.method(), response)).await;
        let error = match written {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("timed out".to_owned()),
        };
        tracing::info!(%peer, method = %request.method(), path, status, error, http = "1.1", "http");
        return None;
    }

    if let Err(rejection) = host_check {
        refuse(incoming, rejection, peer, &path).await;
        return None;
    }
    let upgrade = match check_request(incoming.request()) {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            refuse(incoming, rejection, peer, &path).await;
            return None;
        }
    };
    let Admitted { route, protocol, permits } = match admit(server, incoming.request(), &upgrade, route, peer).await {
        Ok(admitted) => admitted,
        Err(rejection) => {
            refuse(incoming, rejection, peer, &path).await;
            return None;
        }
    };
    let accept = Accept { protocol, headers: HeaderMap::new() };
    match incoming.accept(&upgrade, accept, server.websocket_config(&route)).await {
        Ok(ws) => Some((ws, route, path, permits)),
        Err(e) => {
            tracing::info!(%peer, path, error = %e, "handshake failed");
            None
        }
    }
}

/// A WebSocket request the server takes: its route, the subprotocol selected, its places under
/// the limits.
struct Admitted {
    route: Route,
    protocol: Option<String>,
    permits: Permits,
}

/// Decides whether to take a valid WebSocket request (HTTP/1.1 upgrade or HTTP/2 extended
/// CONNECT, its `Host` already checked): its `Origin`, its route, the subprotocol, the limits;
/// with `--forward`, the connection to the target; with `--exec`, a place for the program.
/// `Err` is the refusal to answer with.
async fn admit(
    server: &Server,
    request: &::http::Request<()>,
    upgrade: &UpgradeRequest,
    route: Result<Option<Route>, String>,
    peer: SocketAddr,
) -> Result<Admitted, Rejection> {
    // Over HTTP/2 the server's name is the `:authority`.
    let host = request.headers().get(::http::header::HOST).and_then(|h| h.to_str().ok());
    let host = host.or_else(|| request.uri().authority().map(|a| a.as_str()));
    if let Err(rejection) = server.origins.check(upgrade.origin.as_deref(), host, server.scheme()) {
        let origin = upgrade.origin.as_deref().unwrap_or_default().trim();
        let body = format!(
            "origin {origin:?} may not open a WebSocket here: only pages served by this server may \
             (start wsx serve with --origin {origin} to allow it)\n"
        );
        return Err(Rejection::new(rejection.status, body));
    }
    let route = match route {
        Ok(Some(route)) => route,
        Ok(None) => {
            let body = "no WebSocket endpoint here: try /echo, /room/NAME, /hub or /close?code=4000&reason=bye\n";
            return Err(Rejection::new(StatusCode::NOT_FOUND, body));
        }
        Err(message) => return Err(Rejection::new(StatusCode::BAD_REQUEST, format!("{message}\n"))),
    };
    let offered = |p: &&str| upgrade.protocols.iter().any(|o| o == p);
    let protocol = match route {
        Route::Hub => [wsx_hub::protocol::PROTOCOL].into_iter().find(offered).map(str::to_owned),
        _ => server.protocols.iter().map(String::as_str).find(offered).map(str::to_owned),
    };
    // Over a per-address limit: 429 with when to come back.
    let per_ip = server.per_ip.check(peer.ip(), std::time::Instant::now()).map_err(|refusal| refusal.rejection())?;
    // Over --max-connections: 503, come back in a second. The permit lives as long as the
    // connection.
    let permit = match &server.limit {
        None => None,
        Some(limit) => Some(limit.try_acquire().ok_or_else(|| limit.rejection(Duration::from_secs(1)))?),
    };
    // --forward: connect to the target first; if it cannot be reached, 502.
    let route = match (route, &server.forward) {
        (Route::Forward(None), Some(target)) => Route::Forward(Some(Box::new(forward::connect(target, peer).await?))),
        (route, _) => route,
    };
    // --exec: a place under --exec-max (else 503), and the program's variables.
    let route = match (route, &server.exec) {
        (Route::Exec(_), Some(exec)) => {
            let permit = exec.try_acquire()?;
            Route::Exec(Some(Box::new((exec.env(request, peer, protocol.as_deref()), permit))))
        }
        (route, _) => route,
    };
    Ok(Admitted { route, protocol, permits: (permit, per_ip) })
}

/// Answers an upgrade request with an HTTP error and closes; logs it.
async fn refuse<S: Io>(incoming: Incoming<S>, rejection: Rejection, peer: SocketAddr, path: &str) {
    let status = rejection.status.as_u16();
    let reason = rejection.body.trim().to_owned();
    incoming.reject(rejection).await;
    tracing::info!(%peer, path, status, reason, http = "1.1", "refused");
}

/// What an upgrade request's path asks for on this server: its mode (`--echo`, `--forward`,
/// `--exec`; they exclude each other) first, else [`route`].
fn server_route(server: &Server, uri: &Uri) -> Result<Option<Route>, String> {
    if server.echo_everywhere {
        return Ok(Some(Route::Echo));
    }
    if server.forward.is_some() {
        return Ok(Some(Route::Forward(None)));
    }
    // --exec: the rooms stay (the demo page's chat works next to the program); every other
    // path runs the program.
    let rooms = uri.path() == "/hub" || uri.path().starts_with("/room/");
    if server.exec.is_some() && !rooms {
        return Ok(Some(Route::Exec(None)));
    }
    route(uri)
}

/// The WebSocket endpoint of a path: `Ok(None)` when there is none, `Err` for bad parameters.
fn route(uri: &Uri) -> Result<Option<Route>, String> {
    let path = uri.path();
    if path == "/echo" {
        return Ok(Some(Route::Echo));
    }
    if path == "/hub" {
        return Ok(Some(Route::Hub));
    }
    if let Some(name) = path.strip_prefix("/room/") {
        let name = http::percent_decode(name)
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|n| wsx_hub::check_room(n).is_ok());
        return Ok(name.map(|n| Route::Room(Box::new(n))));
    }
    if path == "/close" {
        let bad = |name: &str| format!("bad {name} parameter of /close");
        let query = uri.query();
        let code = match http::query_param(query, "code").map_err(|()| bad("code"))? {
            Some(c) => c
                .parse::<u16>()
                .ok()
                .map(CloseCode)
                .filter(|c| c.is_valid_on_wire())
                .ok_or_else(|| "the code of /close must be 1000-1003, 1007-1014 or 3000-4999".to_owned())?,
            None => CloseCode::NORMAL,
        };
        let reason = http::query_param(query, "reason").map_err(|()| bad("reason"))?.unwrap_or_default();
        if reason.len() > 123 {
            return Err("the reason of /close may have at most 123 bytes".to_owned());
        }
        let after = match http::query_param(query, "after").map_err(|()| bad("after"))? {
            Some(ms) => ms.parse::<u64>().ok().filter(|ms| *ms <= MAX_CLOSE_AFTER_MS).ok_or_else(|| bad("after"))?,
            None => 0,
        };
        return Ok(Some(Route::Close(Box::new((CloseFrame::new(code, reason), Duration::from_millis(after))))));
    }
    Ok(None)
}

/// How a connection ended, for the log.
#[derive(Default)]
struct Outcome {
    /// The close code: of the side that closed first, or of the failure (1006: no close frame).
    code: Option<u16>,
    /// Who closed first.
    by: Option<By>,
    /// What failed. (Boxed, and `by` a byte: every connection's task holds an outcome.)
    error: Option<Box<str>>,
    /// We have started the closing handshake (or are done).
    closing: bool,
    /// Where [`Echo`] is in its loop (in what would be the outcome's padding).
    echo_at: EchoStep,
}

/// Where [`Echo`] is in its loop.
#[derive(Clone, Copy, Default)]
enum EchoStep {
    /// Receive the next message (or the shutdown).
    #[default]
    Receive,
    /// A reply was queued: wait for room under the high-water mark before reading on.
    Ready,
    /// Shutting down: send the close (1001) once there is room.
    Close,
    /// Write out the close just queued.
    Flush,
}

impl Outcome {
    fn peer_closed(&mut self, frame: Option<CloseFrame>) {
        if self.code.is_none() {
            self.code = Some(frame.map_or(CloseCode::NO_STATUS.0, |f| f.code.0));
            self.by = Some(By::Client);
        }
        self.closing = true;
    }

    fn failed(&mut self, error: wsx::Error) {
        if self.code.is_none() {
            self.code = error.close_code().map(|c| c.0);
        }
        self.error.get_or_insert_with(|| error.to_string().into());
        self.closing = true;
    }

    /// Notes that we close with `code`: closing from here on, and the code ours unless one was
    /// noted first. True when a close frame is to be sent: the connection (in `state`) is still
    /// open. Shared by [`close`](Self::close) and [`Echo`]'s close at shutdown.
    fn begin_close(&mut self, state: State, code: CloseCode) -> bool {
        self.closing = true;
        if state != State::Open {
            return false;
        }
        if self.code.is_none() {
            self.code = Some(code.0);
            self.by = Some(By::Server);
        }
        true
    }

    /// Starts the closing handshake (unless one is under way); the caller goes on receiving
    /// until the peer's answer.
    async fn close<S: Io>(&mut self, ws: &mut WebSocket<S>, frame: CloseFrame) {
        if !self.begin_close(ws.state(), frame.code) {
            return;
        }
        // A peer that stopped reading cannot hold the task here: the connection's write timeout
        // fails the send, and the caller's `recv` then ends the connection.
        if let Err(e) = ws.send(Message::Close(Some(frame))).await {
            self.failed(e);
        }
    }
}

/// Which side closed a connection first, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum By {
    Client,
    Server,
}

impl By {
    fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Server => "server",
        }
    }
}

/// What an echo does with what `recv` returned.
enum Step {
    /// Feed this data message back.
    Feed(Message),
    /// Nothing to send; receive on.
    Next,
    /// The connection has ended.
    End,
}

impl Outcome {
    /// Notes a close or an error that `recv` returned; a data message is to be echoed.
    fn step(&mut self, msg: Option<Result<Message, wsx::Error>>) -> Step {
        match msg {
            None => return Step::End,
            Some(Ok(Message::Close(frame))) => self.peer_closed(frame),
            // Once our close is sent, what the peer sent before it saw it gets no echo: no data
            // frame may follow a close (RFC 6455 §5.5.1), and feeding one would fail and cut
            // the closing handshake short.
            Some(Ok(msg)) if msg.is_data() && !self.closing => return Step::Feed(msg),
            Some(Ok(_)) => {}
            Some(Err(e)) => self.failed(e),
        }
        Step::Next
    }

    /// Handles what `recv` returned ([`step`](Self::step)), feeding a data message back (not
    /// sent: the replies to a batch of messages leave in one write when `recv` has handled the
    /// batch); false once the connection has ended. Not an `async fn`, which would keep the
    /// message twice in the echo's state.
    fn echo<'a, S: Io>(
        &'a mut self,
        ws: &'a mut WebSocket<S>,
        msg: Option<Result<Message, wsx::Error>>,
    ) -> impl Future<Output = bool> + Send + 'a {
        let step = self.step(msg);
        async move {
            match step {
                Step::Feed(msg) => ws.feed(msg).await.map_err(|e| self.failed(e)).is_ok(),
                Step::Next => true,
                Step::End => false,
            }
        }
    }
}

fn going_away() -> CloseFrame {
    CloseFrame::new(CloseCode::GOING_AWAY, "server shutting down")
}

/// Echoes every data message until the connection ends (closing it with 1001 at shutdown).
///
/// This is what an idle `--echo` connection waits in, so it is a future written by hand: two
/// references and the outcome, with the loop's own step in the outcome's spare byte (40 B; the
/// `async` loop it replaced took 72, for the references its block and its `poll_fn` closure
/// each kept). No message is ever kept across a wait: a reply is queued as soon as its message
/// is received, and room for the next one waited for after.
struct Echo<'a, S> {
    ws: &'a mut WebSocket<S>,
    shutdown: &'a mut Shutdown,
    out: Outcome,
}

/// The echo of a connection until it ends: see [`Echo`].
fn echo<'a, S: Io>(ws: &'a mut WebSocket<S>, shutdown: &'a mut Shutdown) -> Echo<'a, S> {
    // Ready at first, so that the first `start_send` follows a `poll_ready` too, as `Sink` asks
    // (ready at once: nothing is queued yet).
    Echo { ws, shutdown, out: Outcome { echo_at: EchoStep::Ready, ..Outcome::default() } }
}

impl<S: Io> Future for Echo<'_, S> {
    type Output = Outcome;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Outcome> {
        use futures_core::Stream;
        use futures_sink::Sink;
        use std::pin::Pin;
        use std::task::{ready, Poll};
        let Echo { ws, shutdown, out } = self.get_mut();
        loop {
            match out.echo_at {
                // Over the high-water mark, nothing more is read until the output is written (or
                // the write timeout ends the connection). Only after a data reply: pongs are
                // coalesced, so a peer that floods pings and never reads is still read, at a
                // bounded cost.
                EchoStep::Ready => {
                    if let Err(e) = ready!(Pin::new(&mut **ws).poll_ready(cx)) {
                        out.failed(e);
                        return Poll::Ready(std::mem::take(out));
                    }
                    out.echo_at = EchoStep::Receive;
                }
                EchoStep::Receive => {
                    // Messages first: the shutdown signal is polled (and its waiter registered,
                    // under a lock) only when no message is ready, once per batch rather than per
                    // message.
                    let msg = match Pin::new(&mut **ws).poll_next(cx) {
                        Poll::Ready(msg) => msg,
                        Poll::Pending if !out.closing => {
                            ready!(shutdown.poll_down(cx));
                            // As `Outcome::close`: closing from here on, and the close sent
                            // unless the connection has already left the open state.
                            if out.begin_close(ws.state(), going_away().code) {
                                out.echo_at = EchoStep::Close;
                            }
                            continue;
                        }
                        Poll::Pending => return Poll::Pending,
                    };
                    match out.step(msg) {
                        // Replies are queued, not sent: those of a batch leave in one write when
                        // the next `poll_next` has handled the batch.
                        Step::Feed(msg) => {
                            if let Err(e) = Pin::new(&mut **ws).start_send(msg) {
                                out.failed(e);
                                return Poll::Ready(std::mem::take(out));
                            }
                            // Room for the next reply before reading on, here rather than through
                            // `EchoStep::Ready`: the step is stored only when there is no room.
                            match Pin::new(&mut **ws).poll_ready(cx) {
                                Poll::Ready(Ok(())) => {}
                                Poll::Ready(Err(e)) => {
                                    out.failed(e);
                                    return Poll::Ready(std::mem::take(out));
                                }
                                Poll::Pending => {
                                    out.echo_at = EchoStep::Ready;
                                    return Poll::Pending;
                                }
                            }
                        }
                        Step::Next => {}
                        Step::End => return Poll::Ready(std::mem::take(out)),
                    }
                }
                // The close is sent as `send` would (room, queue, flush); a peer that stopped
                // reading cannot hold the task here: the write timeout fails the send, and
                // receiving then ends the connection.
                EchoStep::Close => {
                    let queued = match ready!(Pin::new(&mut **ws).poll_ready(cx)) {
                        Ok(()) => Pin::new(&mut **ws).start_send(Message::Close(Some(going_away()))),
                        Err(e) => Err(e),
                    };
                    match queued {
                        Ok(()) => out.echo_at = EchoStep::Flush,
                        Err(e) => {
                            out.failed(e);
                            out.echo_at = EchoStep::Receive;
                        }
                    }
                }
                EchoStep::Flush => {
                    if let Err(e) = ready!(Pin::new(&mut **ws).poll_flush(cx)) {
                        out.failed(e);
                    }
                    // On to the peer's answer.
                    out.echo_at = EchoStep::Receive;
                }
            }
        }
    }
}

/// `/close`: echoes as [`echo`] does, and closes with `frame` after `after`.
async fn close_after<S: Io>(
    ws: &mut WebSocket<S>,
    shutdown: &mut Shutdown,
    frame: CloseFrame,
    after: Duration,
) -> Outcome {
    let mut out = Outcome::default();
    let timer = tokio::time::sleep(after);
    tokio::pin!(timer);
    let mut pending_close = Some(frame);
    // Not `biased` as `echo` is: under a client that never pauses, `recv` would use up the
    // task's cooperative budget, the timer (budgeted too) would never be seen ready, and the
    // scheduled close would never go out.
    loop {
        let msg = tokio::select! {
            msg = ws.recv() => msg,
            () = &mut timer, if pending_close.is_some() => {
                let frame = pending_close.take().expect("guarded");
                out.close(ws, frame).await;
                continue;
            }
            () = shutdown.down(), if !out.closing => {
                out.close(ws, going_away()).await;
                continue;
            }
        };
        if !out.echo(ws, msg).await {
            break;
        }
    }
    out
}

impl From<wsx_hub::session::Outcome> for Outcome {
    fn from(o: wsx_hub::session::Outcome) -> Self {
        let by = o.by.map(|by| if by == "client" { By::Client } else { By::Server });
        Self { code: o.code, by, error: o.error.map(String::into_boxed_str), closing: true, ..Self::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, B, C, D, F>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// What an idle HTTP/1.1 connection's task holds is mostly its future: measured here so
    /// that a change that grows it shows (idle memory per connection is a benchmark figure).
    /// The modes' and the rooms' sessions are boxed, so an echo connection's task is the size
    /// of the echo session: 5,344 B (release) before they were, 3,056 B after, 1,040 B once
    /// the layers stopped storing their arguments twice and the protocol settings were shared,
    /// 1,016 B with the agreed subprotocol and extensions boxed, 768 B once the echo loop kept
    /// no future of `recv`, of the shutdown signal or of `feed`, 656 B with its deadlines as
    /// stamps, 528 B with the echo a future written by hand and the rarer state boxed
    /// (`docs/performance-notes.md`).
    ///
    /// The bound is where it costs: tokio lays a task out in 128-byte lines, and a future of
    /// up to 1,040 B made a task of nine (1,152 B, with its header), 1,056 B ten: `wsload idle`
    /// measured 1,906 → 2,015 B per connection for those 16 bytes. So the header takes 97 to
    /// 112 B, and a future of up to 784 B makes a task of seven lines.
    #[test]
    fn connection_futures_stay_small() {
        let plain = future_size(tcp_connection);
        let session = future_size(websocket::<TcpStream>);
        eprintln!("tcp_connection future {plain} B, websocket::<TcpStream> {session} B");
        // At most 528 B, the task is five 128-byte lines with tokio's header and trailer (six
        // before: 656 B, seven before that: 768 B). The bound is for release builds; debug ones
        // lay the future out a little differently (536 B against 528 when measured; 664 against
        // 656 before) and get 8 B more.
        let bound = if cfg!(debug_assertions) { 536 } else { 528 };
        assert!(plain <= bound, "the task of a plain connection grew to {plain} B");
    }

    /// A room member's session is boxed apart from its task, and is most of what an idle
    /// member costs (see `wsx_hub::session`'s own test): measured here with the shutdown future
    /// `websocket` really passes. 400 and 312 B when measured (debug and release alike): within
    /// jemalloc's 448- and 320-byte classes. (504 and 416 B while the inbox was waited on through
    /// a `Notify`; 1,072 B when that future was an `async` block over `Shutdown::down`; 840 and
    /// 792 B while the sessions held their wake-ups' work across awaits.)
    #[tokio::test]
    async fn room_sessions_stay_small() {
        let hub = wsx_hub::Hub::local(wsx_hub::HubConfig::default());
        let (stream, _peer) = tokio::io::duplex(64);
        let conn = wsx::proto::Connection::server(Default::default(), Instant::now());
        let mut ws = WebSocket::from_parts(stream, conn, Default::default(), None, None);
        let (_trigger, shutdown) = shutdown::Trigger::new();
        let raw = std::mem::size_of_val(&wsx_hub::session::raw_member(&mut ws, &hub, "a", shutdown.clone()));
        let subprotocol = std::mem::size_of_val(&wsx_hub::session::hub_member(&mut ws, &hub, shutdown));
        eprintln!("raw_member {raw} B, hub_member {subprotocol} B");
        assert!(raw <= 448, "a room member's session future grew to {raw} B");
        assert!(subprotocol <= 320, "a hub member's session future grew to {subprotocol} B");
    }

    fn route_of(target: &str) -> Result<Option<Route>, String> {
        route(&target.parse().unwrap())
    }

    /// The log shows a peer as `SocketAddr` does, and the forward and exec routes get the
    /// same address back, flow label and scope included.
    #[test]
    fn a_peer_is_logged_and_given_back_as_it_came() {
        for addr in ["192.0.2.1:443", "[2001:db8::1]:8080", "[fe80::1%3]:9", "[::ffff:192.0.2.9]:1"] {
            let mut addr: SocketAddr = addr.parse().unwrap();
            if let SocketAddr::V6(v6) = &mut addr {
                v6.set_flowinfo(7);
            }
            let peer = Peer::from(addr);
            assert_eq!(peer.to_string(), addr.to_string());
            assert_eq!(peer.get(), addr);
        }
        if cfg!(target_pointer_width = "64") {
            assert_eq!(std::mem::size_of::<Peer>(), 16);
        }
    }

    #[test]
    fn routes() {
        assert!(matches!(route_of("/echo"), Ok(Some(Route::Echo))));
        assert!(matches!(route_of("/echo?x=1"), Ok(Some(Route::Echo))));
        assert!(matches!(route_of("/room/caf%C3%A9"), Ok(Some(Route::Room(n))) if *n == "café"));
        assert!(matches!(route_of("/room/"), Ok(None)));
        assert!(matches!(route_of("/room/a/b"), Ok(None)));
        assert!(matches!(route_of("/"), Ok(None)));
        assert!(matches!(route_of("/nope"), Ok(None)));
        match route_of("/close?code=4001&reason=bye+now&after=20") {
            Ok(Some(Route::Close(close))) => {
                let (frame, after) = *close;
                assert_eq!((frame.code.0, frame.reason.as_str(), after), (4001, "bye now", Duration::from_millis(20)));
            }
            other => panic!("{other:?}"),
        }
        match route_of("/close") {
            Ok(Some(Route::Close(close))) => assert_eq!((close.0.code.0, close.1), (1000, Duration::ZERO)),
            other => panic!("{other:?}"),
        }
        for bad in ["/close?code=1006", "/close?code=x", "/close?after=-1", "/close?reason=%ff"] {
            assert!(route_of(bad).is_err(), "{bad}");
        }
        assert!(route_of(&format!("/close?reason={}", "x".repeat(124))).is_err());
    }
}
