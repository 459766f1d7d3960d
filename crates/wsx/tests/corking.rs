//! Corking: replies fed while handling one read leave in one write, yet a lone message is
//! written at once; and `send` is honest: it writes before it returns, batch or not. Counted with a stream wrapper that records every write call the
//! WebSocket makes.

mod common;

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use common::*;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// A stream that counts write calls (plain and vectored) that reached the socket.
struct CountingStream {
    inner: TcpStream,
    writes: Arc<AtomicUsize>,
}

impl AsyncRead for CountingStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if r.is_ready() {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if r.is_ready() {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Starts an echo server (the README's loop, replying with `feed` when `batch`, else `send`) over
/// a counting stream; returns its address and the write counter, which counts only writes made
/// after the handshake.
async fn counting_echo_server(batch: bool) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let (listener, addr) = listen().await;
    let writes = Arc::new(AtomicUsize::new(0));
    let counter = writes.clone();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let stream = CountingStream { inner: tcp, writes: counter.clone() };
        let mut ws = wsx::accept(stream).await.unwrap();
        counter.store(0, Ordering::SeqCst);
        while let Some(msg) = ws.recv().await {
            let Ok(msg) = msg else { break };
            if msg.is_data() {
                if batch {
                    ws.feed(msg).await.unwrap();
                } else {
                    ws.send(msg).await.unwrap();
                }
            }
        }
    });
    (addr, writes)
}

#[tokio::test]
async fn a_batch_of_sixteen_messages_is_answered_with_one_write() {
    let (addr, writes) = counting_echo_server(true).await;
    let (mut tcp, mut buf) = raw_handshake(addr).await;
    let mut total = 0;
    for round in 0..5u8 {
        // 16 small masked frames in one write (416 bytes: one read on the server's side).
        let mut batch = Vec::new();
        for i in 0..16u8 {
            batch.extend(masked_frame(0x2, true, &[round, i, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45], [1, 2, 3, 4]));
        }
        let before = writes.load(Ordering::SeqCst);
        tcp.write_all(&batch).await.unwrap();
        for i in 0..16u8 {
            let frame = deadline(read_frame(&mut tcp, &mut buf)).await.expect("echo");
            assert_eq!(&frame.payload[..2], &[round, i]);
        }
        let used = writes.load(Ordering::SeqCst) - before;
        // One write, or two should the batch happen to arrive in two reads.
        assert!(used <= 2, "round {round}: {used} writes for one batch of 16");
        total += used;
    }
    assert!(total <= 6, "{total} writes for 5 batches of 16");
}

#[tokio::test]
async fn a_lone_message_is_written_at_once() {
    let (addr, writes) = counting_echo_server(true).await;
    let (mut tcp, mut buf) = raw_handshake(addr).await;
    for i in 0..20u8 {
        tcp.write_all(&masked_frame(0x1, true, &[b'a' + i], [9, 8, 7, 6])).await.unwrap();
        // The echo must arrive without any further traffic from us (no Nagle-like wait).
        let frame = deadline(read_frame(&mut tcp, &mut buf)).await.expect("echo");
        assert_eq!(frame.payload[..], [b'a' + i]);
    }
    assert_eq!(writes.load(Ordering::SeqCst), 20);
}

/// `send` returns only once its bytes were written, even when more received frames are
/// buffered (the server could have deferred the write): one write per reply.
#[tokio::test]
async fn send_writes_before_returning_even_inside_a_batch() {
    let (addr, writes) = counting_echo_server(false).await;
    let (mut tcp, mut buf) = raw_handshake(addr).await;
    let mut batch = Vec::new();
    for i in 0..16u8 {
        batch.extend(masked_frame(0x2, true, &[i, 1, 2, 3], [1, 2, 3, 4]));
    }
    tcp.write_all(&batch).await.unwrap();
    for i in 0..16u8 {
        let frame = deadline(read_frame(&mut tcp, &mut buf)).await.expect("echo");
        assert_eq!(frame.payload[0], i);
    }
    assert_eq!(writes.load(Ordering::SeqCst), 16, "send must write each reply before returning");
}
