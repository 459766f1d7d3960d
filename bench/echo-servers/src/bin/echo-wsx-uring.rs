//! The io_uring experiment of issue 14: wsx's sans-I/O core (`wsx_proto::Connection`) driven by
//! one thread over io_uring instead of tokio's epoll reactor, echoing as `echo-wsx` does
//! (default settings: no permessage-deflate, no keepalive, so no timers to run).
//!
//! One ring, one thread (`--threads` is ignored). Each connection has at most one operation in
//! flight, a receive or a send, so that the buffers the kernel reads into or writes from are
//! never touched meanwhile: a receive is followed by handling what arrived and, if that queued
//! replies, a send of all of them (a vectored write of the core's pending output, no copy); the
//! next receive is submitted once the output has left. What a thread saves over epoll is the
//! system calls: one `io_uring_enter` submits the operations of every connection that is ready
//! and collects their completions, where epoll pays a `read` and a `writev` per connection and
//! an `epoll_wait`. Linux only; a benchmark, not a server (no TLS, no limits on connections).

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    uring::main()
}

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!("echo-wsx-uring: io_uring is Linux only");
    std::process::ExitCode::from(2)
}

#[cfg(target_os = "linux")]
mod uring {
    use std::io;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::process::ExitCode;
    use std::sync::Arc;
    use std::time::Instant;

    use bytes::{Buf, BytesMut};
    use io_uring::{opcode, squeue, types, IoUring};
    use wsx_proto::handshake::{self, HandshakeLimits, RequestReader};
    use wsx_proto::{Config, Connection, Message, State};

    /// Submission queue entries: room for an operation per connection in one batch, and more.
    const RING: u32 = 4096;
    /// The room a receive gets (the same bounds as the library's adaptive reads: it doubles
    /// when a receive fills it).
    const MIN_READ: usize = 4096;
    const MAX_READ: usize = 256 * 1024;
    /// The most iovecs one send carries; the rest leaves with the next.
    const MAX_IOVECS: usize = 64;
    /// `user_data`: the connection's slot in the high bits, the operation in the low ones.
    const ACCEPT: u64 = 0;
    const RECV: u64 = 1;
    const SEND: u64 = 2;

    enum Phase {
        /// Reading the HTTP upgrade request.
        Handshake(RequestReader),
        /// The response head, then the WebSocket connection.
        Open(Box<Connection>),
    }

    struct Conn {
        stream: TcpStream,
        phase: Phase,
        buf: BytesMut,
        read_size: usize,
        /// The handshake's response head, being sent.
        head: BytesMut,
        /// The iovecs of the send in flight (their memory is the core's pending output, which
        /// is not touched until the send completes).
        iovecs: Vec<libc::iovec>,
        /// Close once the output in flight has left.
        closing: bool,
    }

    pub fn main() -> ExitCode {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let opts = match echo_servers::Opts::parse(&args, |name| std::env::var(name).ok()) {
            Ok(o) if o.tls.is_none() => o,
            Ok(_) => {
                eprintln!("echo-wsx-uring: no TLS variant");
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("echo-wsx-uring: {e}");
                return ExitCode::from(2);
            }
        };
        match run(opts.addr) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("echo-wsx-uring: {e}");
                ExitCode::FAILURE
            }
        }
    }

    fn run(addr: std::net::SocketAddr) -> io::Result<()> {
        let listener = TcpListener::bind(addr)?;
        let mut ring = IoUring::new(RING)?;
        let config = Arc::new(Config::default());
        let limits = HandshakeLimits::default();
        let mut conns: Vec<Option<Box<Conn>>> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        let mut pending: Vec<squeue::Entry> = Vec::new();
        let mut completions: Vec<(u64, i32)> = Vec::new();
        pending.push(accept(&listener));
        loop {
            // Submit what the last batch of completions asked for, and wait for at least one.
            while !pending.is_empty() {
                {
                    let mut sq = ring.submission();
                    let room = sq.capacity() - sq.len();
                    for entry in pending.drain(..room.min(pending.len())) {
                        // SAFETY: every buffer an entry points to (a connection's read buffer,
                        // its iovecs and the output they point to) lives in a boxed `Conn` that
                        // is not touched, moved out or dropped until the entry completes.
                        unsafe { sq.push(&entry).expect("room was counted") };
                    }
                }
                if !pending.is_empty() {
                    // The submission queue is full: hand it to the kernel to make room.
                    ring.submit()?;
                }
            }
            ring.submit_and_wait(1)?;
            completions.clear();
            completions.extend(ring.completion().map(|c| (c.user_data(), c.result())));
            for &(data, result) in &completions {
                let (slot, op) = ((data >> 2) as usize, data & 3);
                if op == ACCEPT {
                    pending.push(accept(&listener));
                    if result < 0 {
                        continue;
                    }
                    // SAFETY: a completed accept's result is a new socket that nothing else owns.
                    let stream = unsafe { TcpStream::from_raw_fd(result) };
                    let _ = stream.set_nodelay(true);
                    let conn = Box::new(Conn {
                        stream,
                        phase: Phase::Handshake(RequestReader::new()),
                        buf: BytesMut::with_capacity(MIN_READ),
                        read_size: MIN_READ,
                        head: BytesMut::new(),
                        iovecs: Vec::with_capacity(MAX_IOVECS),
                        closing: false,
                    });
                    let slot = match free.pop() {
                        Some(s) => {
                            conns[s] = Some(conn);
                            s
                        }
                        None => {
                            conns.push(Some(conn));
                            conns.len() - 1
                        }
                    };
                    if let Some(c) = conns[slot].as_deref_mut() {
                        pending.push(recv(c, slot));
                    }
                    continue;
                }
                let Some(c) = conns.get_mut(slot).and_then(|c| c.as_deref_mut()) else {
                    continue;
                };
                let next = if op == RECV { received(c, slot, result, &config, &limits) } else { sent(c, slot, result) };
                match next {
                    Some(entry) => pending.push(entry),
                    None => {
                        conns[slot] = None;
                        free.push(slot);
                    }
                }
            }
        }
    }

    fn accept(listener: &TcpListener) -> squeue::Entry {
        opcode::Accept::new(types::Fd(listener.as_raw_fd()), std::ptr::null_mut(), std::ptr::null_mut())
            .build()
            .user_data(ACCEPT)
    }

    fn recv(c: &mut Conn, slot: usize) -> squeue::Entry {
        if c.buf.capacity() - c.buf.len() < c.read_size / 2 {
            c.buf.reserve(c.read_size);
        }
        let spare = c.buf.spare_capacity_mut();
        opcode::Recv::new(types::Fd(c.stream.as_raw_fd()), spare.as_mut_ptr().cast(), spare.len() as u32)
            .build()
            .user_data((slot as u64) << 2 | RECV)
    }

    /// A receive completed: handle what arrived; the next operation, or `None` to close.
    fn received(
        c: &mut Conn,
        slot: usize,
        result: i32,
        config: &Arc<Config>,
        limits: &HandshakeLimits,
    ) -> Option<squeue::Entry> {
        if result <= 0 {
            return None;
        }
        let n = result as usize;
        let room = c.buf.capacity() - c.buf.len();
        // SAFETY: the kernel wrote `n` bytes into the spare capacity the receive was given.
        unsafe { c.buf.set_len(c.buf.len() + n) };
        if n >= room {
            c.read_size = (c.read_size * 2).min(MAX_READ);
        }
        let now = Instant::now();
        if let Phase::Handshake(reader) = &mut c.phase {
            let request = match reader.read(&mut c.buf, limits) {
                Ok(None) => return Some(recv(c, slot)),
                Ok(Some(request)) => request,
                Err(_) => return None,
            };
            let Ok(upgrade) = handshake::check_request(&request) else {
                return None;
            };
            let response = handshake::accept_response(&upgrade, None, None, &http::HeaderMap::new());
            handshake::write_response(&response, &mut c.head);
            c.phase = Phase::Open(Box::new(Connection::server_shared(config.clone(), now)));
        }
        let Phase::Open(conn) = &mut c.phase else {
            return None;
        };
        loop {
            match conn.read_event(&mut c.buf, now) {
                Ok(Some(msg @ (Message::Text(_) | Message::Binary(_)))) => {
                    if conn.send(msg).is_err() {
                        return None;
                    }
                }
                Ok(Some(_)) => {} // pongs and the close echo are queued by the core
                Ok(None) => break,
                Err(_) => {
                    c.closing = true;
                    break;
                }
            }
        }
        if conn.state() == State::Closed {
            c.closing = true;
        }
        send_or_recv(c, slot)
    }

    /// A send completed: the rest of the output, or the next receive.
    fn sent(c: &mut Conn, slot: usize, result: i32) -> Option<squeue::Entry> {
        if result < 0 {
            return None;
        }
        let mut n = result as usize;
        let from_head = n.min(c.head.len());
        c.head.advance(from_head);
        n -= from_head;
        if let Phase::Open(conn) = &mut c.phase {
            conn.output().advance(n);
        }
        send_or_recv(c, slot)
    }

    /// A send of the pending output if there is any; else the next receive (or the end).
    fn send_or_recv(c: &mut Conn, slot: usize) -> Option<squeue::Entry> {
        c.iovecs.clear();
        if !c.head.is_empty() {
            c.iovecs.push(libc::iovec { iov_base: c.head.as_mut_ptr().cast(), iov_len: c.head.len() });
        }
        if let Phase::Open(conn) = &mut c.phase {
            let out = conn.output();
            let mut slices = [io::IoSlice::new(&[]); MAX_IOVECS];
            let k = out.chunks_vectored(&mut slices[..MAX_IOVECS - c.iovecs.len()]);
            for s in &slices[..k] {
                c.iovecs.push(libc::iovec { iov_base: s.as_ptr() as *mut _, iov_len: s.len() });
            }
        }
        if !c.iovecs.is_empty() {
            return Some(
                opcode::Writev::new(types::Fd(c.stream.as_raw_fd()), c.iovecs.as_ptr(), c.iovecs.len() as u32)
                    .build()
                    .user_data((slot as u64) << 2 | SEND),
            );
        }
        if c.closing {
            return None;
        }
        Some(recv(c, slot))
    }
}
