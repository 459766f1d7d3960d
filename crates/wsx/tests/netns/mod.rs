//! A real network path between two network namespaces that the test creates, with faults it
//! controls: delay, random loss, and a silent partition (every packet dropped, so no FIN or RST
//! ever arrives). Both ends live in namespaces of their own; nothing touches the root
//! namespace's interfaces or any address outside them.
//!
//! ```text
//!  netns A (client)              netns B (server)
//!  v0 10.200.0.1/30 ══ veth ══ v1 10.200.0.2/30        tc netem on v0 (A→B) and v1 (B→A)
//! ```
//!
//! Faults come from `tc qdisc … netem` on each end's veth. Kernels built without `sch_netem`
//! (some CI and container kernels: `CONFIG_NET_SCH_NETEM` unset, nothing to `modprobe`) get the
//! same faults from a relay in this process instead, on the same kind of link:
//!
//! ```text
//!  netns A            netns R (relay)                          netns B
//!  v0 ══ veth ══ ra ─ AF_PACKET ─ delay/loss ─ AF_PACKET ─ rb ══ veth ══ v1
//! ```
//!
//! The relay is a wire: it moves whole Ethernet frames (ARP included) from one veth to the other
//! after the delay, dropping the lost ones; the TCP stacks at both ends are the kernel's own. It
//! keeps the kernel's offload metadata (`PACKET_VNET_HDR`), so segmentation and checksums work as
//! they would on the direct veth. `WSX_NETEM_BACKEND=netem` or `=relay` forces one of the two.
//!
//! Sockets are made inside a namespace by a short-lived thread that `setns`es into it (a thread's
//! network namespace is its own), then handed to tokio; they stay in their namespace for life.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The client side's address (namespace A).
pub const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
/// The server side's address (namespace B).
pub const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
/// The veths' MTU. See the 16 MiB test for why it is this large.
pub const MTU: u32 = 65535;

/// Whether this test can run: true when root with `ip` and `tc`. Not root: prints why and
/// returns false, unless `CI` is set, where it panics (CI runs as root; a test that cannot run
/// there must not pass). Missing `ip`/`tc`: panics, naming the package.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        let why = "needs root (network namespaces, veth pairs and tc netem)";
        if std::env::var_os("CI").is_some() {
            panic!("{test}: {why}; CI is set, so this fails instead of skipping");
        }
        // Straight to stderr, past the test harness's capture: a skip must be seen.
        let _ = writeln!(io::stderr(), "{test}: skipped: {why}; run the tests as root to include it");
        return false;
    }
    for tool in ["ip", "tc"] {
        match Command::new(tool).arg("-V").output() {
            Ok(out) if out.status.success() => {}
            _ => panic!(
                "{test}: `{tool}` not found or not working: install the iproute2 package (apt-get install iproute2)"
            ),
        }
    }
    true
}

/// What happens to packets going one way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Added to every packet.
    pub delay: Duration,
    /// Percentage of packets dropped at random (100: a partition).
    pub loss_percent: u32,
}

impl Faults {
    /// A clean link.
    pub const NONE: Faults = Faults { delay: Duration::ZERO, loss_percent: 0 };
    /// Every packet dropped, silently.
    pub const PARTITION: Faults = Faults { delay: Duration::ZERO, loss_percent: 100 };
}

/// Which way faults apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    AtoB,
    BtoA,
    Both,
}

/// An end of the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

enum Backend {
    Netem,
    Relay(Relay),
}

/// The namespaces and the link between them; deletes them all when dropped (a panicking test
/// included).
pub struct NetPath {
    ns_a: String,
    ns_b: String,
    /// Every namespace created so far, deleted on drop.
    created: Vec<String>,
    backend: Option<Backend>,
}

/// `ip netns add` mounts /run/netns the first time; concurrent first calls can race, so setups
/// within this process take turns (they take a few milliseconds).
static SETUP: Mutex<()> = Mutex::new(());

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e} (is iproute2 installed?)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`{cmd} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn must(cmd: &str, args: &[&str]) {
    if let Err(e) = run(cmd, args) {
        panic!("{e}");
    }
}

impl NetPath {
    /// Builds namespaces `wsx<pid><tag>{a,b[,r]}` and a clean link between them. `tag` must be
    /// unique among the tests of this process.
    pub fn new(tag: &str) -> NetPath {
        let _turn = SETUP.lock().unwrap_or_else(|p| p.into_inner());
        let base = format!("wsx{}{tag}", std::process::id());
        let mut path =
            NetPath { ns_a: format!("{base}a"), ns_b: format!("{base}b"), created: Vec::new(), backend: None };
        for ns in [path.ns_a.clone(), path.ns_b.clone()] {
            // A namespace left over by a killed run of the same pid would make `add` fail.
            let _ = run("ip", &["netns", "del", &ns]);
            must("ip", &["netns", "add", &ns]);
            path.created.push(ns.clone());
            must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        }
        let wanted = std::env::var("WSX_NETEM_BACKEND").unwrap_or_default();
        let (a, b) = (path.ns_a.clone(), path.ns_b.clone());
        if wanted != "relay" {
            // Created straight inside the namespaces: interface names are per namespace, so
            // parallel tests never clash, and the root namespace never sees these links.
            must("ip", &["link", "add", "v0", "netns", &a, "type", "veth", "peer", "name", "v1", "netns", &b]);
            match run("tc", &["-n", &a, "qdisc", "replace", "dev", "v0", "root", "netem", "delay", "0ms"]) {
                Ok(()) => path.backend = Some(Backend::Netem),
                Err(e) if wanted == "netem" => {
                    panic!(
                        "tc netem unavailable ({e}); load it with `modprobe sch_netem` (kernel CONFIG_NET_SCH_NETEM)"
                    )
                }
                Err(e) => {
                    eprintln!("{tag}: tc netem unavailable ({e}); faults come from the in-test relay instead");
                    must("ip", &["-n", &a, "link", "del", "v0"]);
                }
            }
        }
        if path.backend.is_none() {
            let r = format!("{base}r");
            let _ = run("ip", &["netns", "del", &r]);
            must("ip", &["netns", "add", &r]);
            path.created.push(r.clone());
            must("ip", &["link", "add", "v0", "netns", &a, "type", "veth", "peer", "name", "ra", "netns", &r]);
            must("ip", &["link", "add", "v1", "netns", &b, "type", "veth", "peer", "name", "rb", "netns", &r]);
            for dev in ["ra", "rb"] {
                must("ip", &["-n", &r, "link", "set", dev, "mtu", &MTU.to_string(), "up"]);
            }
            path.backend = Some(Backend::Relay(Relay::start(&r)));
        }
        for (ns, dev, addr) in [(&a, "v0", ADDR_A), (&b, "v1", ADDR_B)] {
            must("ip", &["-n", ns, "link", "set", dev, "mtu", &MTU.to_string(), "up"]);
            must("ip", &["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", dev]);
        }
        path.set(Dir::Both, Faults::NONE);
        path
    }

    /// Which fault injector this path uses: "netem" or "relay".
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Some(Backend::Netem) => "netem",
            _ => "relay",
        }
    }

    /// Applies `faults` to the packets going `dir`, from now on (packets already delayed on the
    /// link still arrive).
    pub fn set(&self, dir: Dir, faults: Faults) {
        let ways: &[(Side, &str)] = match dir {
            Dir::AtoB => &[(Side::A, "v0")],
            Dir::BtoA => &[(Side::B, "v1")],
            Dir::Both => &[(Side::A, "v0"), (Side::B, "v1")],
        };
        for &(from, dev) in ways {
            match self.backend.as_ref().expect("backend") {
                Backend::Netem => {
                    let delay = format!("{}ms", faults.delay.as_millis());
                    let loss = format!("{}%", faults.loss_percent);
                    let ns = self.ns(from);
                    let args =
                        ["-n", ns, "qdisc", "replace", "dev", dev, "root", "netem", "delay", &delay, "loss", &loss];
                    must("tc", &args);
                }
                Backend::Relay(relay) => *relay.faults[from as usize].lock().unwrap() = faults,
            }
        }
    }

    /// Packets the faults dropped so far, both ways (netem's counters, or the relay's).
    pub fn dropped(&self) -> u64 {
        match self.backend.as_ref().expect("backend") {
            Backend::Relay(relay) => relay.dropped.load(Ordering::Relaxed),
            Backend::Netem => [(Side::A, "v0"), (Side::B, "v1")]
                .iter()
                .map(|&(side, dev)| {
                    let out = Command::new("tc")
                        .args(["-s", "-n", self.ns(side), "qdisc", "show", "dev", dev])
                        .output()
                        .expect("tc -s qdisc show");
                    // "Sent 1234 bytes 56 pkt (dropped 7, overlimits 0 requeues 0)"
                    let text = String::from_utf8_lossy(&out.stdout).into_owned();
                    let n = text.split("dropped ").nth(1).and_then(|r| r.split(',').next());
                    n.and_then(|n| n.trim().parse::<u64>().ok()).unwrap_or(0)
                })
                .sum(),
        }
    }

    fn ns(&self, side: Side) -> &str {
        match side {
            Side::A => &self.ns_a,
            Side::B => &self.ns_b,
        }
    }

    /// Runs `f` on a new thread inside `side`'s namespace (sockets it makes stay there).
    fn inside<T: Send + 'static>(&self, side: Side, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = self.ns(side).to_string();
        std::thread::spawn(move || {
            enter(&ns);
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    /// A listener on `side`'s address, port chosen by the kernel.
    pub fn listen(&self, side: Side) -> (tokio::net::TcpListener, SocketAddr) {
        let addr = SocketAddr::V4(SocketAddrV4::new(self.addr(side), 0));
        let std = self.inside(side, move || std::net::TcpListener::bind(addr)).expect("bind in namespace");
        std.set_nonblocking(true).unwrap();
        let addr = std.local_addr().unwrap();
        (tokio::net::TcpListener::from_std(std).unwrap(), addr)
    }

    /// A TCP connection from `side` to `to` (connected on a blocking thread; SYNs may be lost).
    pub async fn connect(&self, side: Side, to: SocketAddr) -> tokio::net::TcpStream {
        let ns = self.ns(side).to_string();
        let std = tokio::task::spawn_blocking(move || {
            std::thread::spawn(move || {
                enter(&ns);
                std::net::TcpStream::connect_timeout(&to, Duration::from_secs(15))
            })
            .join()
            .unwrap()
        })
        .await
        .unwrap()
        .expect("connect across the namespaces");
        std.set_nonblocking(true).unwrap();
        std.set_nodelay(true).unwrap();
        tokio::net::TcpStream::from_std(std).unwrap()
    }

    pub fn addr(&self, side: Side) -> Ipv4Addr {
        match side {
            Side::A => ADDR_A,
            Side::B => ADDR_B,
        }
    }
}

impl Drop for NetPath {
    fn drop(&mut self) {
        if let Some(Backend::Relay(relay)) = &mut self.backend {
            relay.stop();
        }
        // Deleting a namespace deletes its veth ends, and with them their peers.
        for ns in self.created.drain(..) {
            if let Err(e) = run("ip", &["netns", "del", &ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Moves the calling thread into the named namespace.
fn enter(ns: &str) {
    let file = File::open(format!("/var/run/netns/{ns}")).unwrap_or_else(|e| panic!("open netns {ns}: {e}"));
    // SAFETY: a valid open fd of a network namespace; only this thread's namespace changes.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        panic!("setns into {ns}: {}", io::Error::last_os_error());
    }
}

/// The userspace fault injector: one thread in the relay namespace, two packet sockets.
struct Relay {
    /// Faults of the frames entering at `ra` (A→B) and at `rb` (B→A), indexed by [`Side`].
    faults: [Arc<Mutex<Faults>>; 2],
    /// Frames dropped so far, both ways.
    dropped: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const SO_RCVBUFFORCE: libc::c_int = 33;

impl Relay {
    fn start(ns: &str) -> Relay {
        let faults = [Arc::new(Mutex::new(Faults::NONE)), Arc::new(Mutex::new(Faults::NONE))];
        let stop = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let (ns, f, s, d) = (ns.to_string(), faults.clone(), stop.clone(), dropped.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            enter(&ns);
            let socks = [packet_socket("ra"), packet_socket("rb")];
            ready_tx.send(()).unwrap();
            relay_loop(socks, f, d, s);
        });
        ready_rx.recv().expect("relay thread failed to start");
        Relay { faults, dropped, stop, thread: Some(thread) }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn check(r: libc::c_int, what: &str) {
    if r < 0 {
        panic!("{what}: {}", io::Error::last_os_error());
    }
}

/// A raw packet socket bound to `dev`, with the offload header and without our own sends.
fn packet_socket(dev: &str) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket calls on a fd we own; every pointer is to a live local of the size given.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto as libc::c_int);
        check(fd, "socket(AF_PACKET)");
        let fd = OwnedFd::from_raw_fd(fd);
        let on: libc::c_int = 1;
        let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let opt = |level, name, value: &libc::c_int, what| {
            check(libc::setsockopt(fd.as_raw_fd(), level, name, (value as *const libc::c_int).cast(), size), what)
        };
        opt(libc::SOL_PACKET, PACKET_VNET_HDR, &on, "PACKET_VNET_HDR");
        opt(libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, &on, "PACKET_IGNORE_OUTGOING");
        // Room for a burst: a full receive queue would be loss the test did not ask for.
        opt(libc::SOL_SOCKET, SO_RCVBUFFORCE, &(8 << 20), "SO_RCVBUFFORCE");
        let name = std::ffi::CString::new(dev).unwrap();
        let index = libc::if_nametoindex(name.as_ptr());
        assert!(index != 0, "no interface {dev}");
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        check(libc::bind(fd.as_raw_fd(), (&sll as *const libc::sockaddr_ll).cast(), len), "bind(AF_PACKET)");
        fd
    }
}

/// Forwards frames between the two sockets until `stop`: frames read from `socks[i]` get
/// `faults[i]` and leave by the other socket, in order.
fn relay_loop(socks: [OwnedFd; 2], faults: [Arc<Mutex<Faults>>; 2], dropped: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let mut queues: [VecDeque<(Instant, Vec<u8>)>; 2] = [VecDeque::new(), VecDeque::new()];
    // A GSO frame is at most 64 KiB plus headers; room to spare.
    let mut buf = vec![0u8; 256 << 10];
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(std::process::id());
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        for (i, queue) in queues.iter_mut().enumerate() {
            while queue.front().is_some_and(|(due, _)| *due <= now) {
                let (_, frame) = queue.pop_front().unwrap();
                // SAFETY: writes `frame` (a live buffer of that length) to our socket.
                // A failed send is a lost packet, like on a wire.
                unsafe { libc::write(socks[1 - i].as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
            }
        }
        let next = queues.iter().filter_map(|q| q.front().map(|(due, _)| *due)).min();
        let wait = next.map_or(Duration::from_millis(20), |due| due.saturating_duration_since(now));
        let wait_ms = wait.as_micros().div_ceil(1000).min(20) as libc::c_int;
        let mut fds = socks.each_ref().map(|s| libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        // SAFETY: two valid pollfd entries.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, wait_ms) };
        for (i, pfd) in fds.iter().enumerate() {
            if pfd.revents & libc::POLLIN == 0 {
                continue;
            }
            loop {
                // SAFETY: reads into `buf`, a live buffer of that length.
                let n =
                    unsafe { libc::recv(socks[i].as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
                if n <= 0 {
                    break;
                }
                let f = *faults[i].lock().unwrap();
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                if (rng % 100) < u64::from(f.loss_percent) {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                queues[i].push_back((Instant::now() + f.delay, buf[..n as usize].to_vec()));
            }
        }
    }
}
