//! `--raw`: driving a plain TCP byte echo, the ceiling no WebSocket server can beat.
//!
//! A byte echo has no handshake and sends our own frames back as they were: masked, as every
//! client frame is. A client must refuse masked frames from a server (RFC 6455 §5.1), so the
//! connection reads through [`Unmasked`], which turns each echoed frame back into the frame a
//! server would have sent (mask bit cleared, key removed, payload unmasked) before the library
//! sees it. The library's client is otherwise the one every other run uses.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use wsx::proto::mask::apply_mask;
use wsx::proto::Connection;
use wsx::WebSocket;

/// Bytes read from the socket at a time.
const CHUNK: usize = 64 * 1024;

/// A stream whose incoming frames, masked by us and echoed back, are unmasked on the way in.
/// Writes pass through.
pub struct Unmasked<S> {
    inner: S,
    raw: Box<[u8]>,
    start: usize,
    end: usize,
    /// Payload bytes of the current frame still to pass on.
    left: u64,
    key: [u8; 4],
    /// Position in the current frame's payload (for the mask's rotation).
    offset: usize,
}

impl<S> Unmasked<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner, raw: vec![0; CHUNK].into_boxed_slice(), start: 0, end: 0, left: 0, key: [0; 4], offset: 0 }
    }

    /// Moves what it can of the buffered input into `out`, unmasked; returns the bytes written.
    fn drain_into(&mut self, out: &mut ReadBuf<'_>) -> usize {
        let mut wrote = 0;
        while out.remaining() > 0 && self.start < self.end {
            let avail = &self.raw[self.start..self.end];
            if self.left > 0 {
                let take = (self.left.min(avail.len() as u64) as usize).min(out.remaining());
                let at = out.filled().len();
                out.put_slice(&avail[..take]);
                apply_mask(&mut out.filled_mut()[at..], self.key, self.offset);
                self.offset += take;
                self.left -= take as u64;
                self.start += take;
                wrote += take;
                continue;
            }
            // A frame header: 2 bytes, the extended length, the masking key.
            if avail.len() < 2 {
                break;
            }
            let masked = avail[1] & 0x80 != 0;
            let ext = match avail[1] & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let total = 2 + ext + if masked { 4 } else { 0 };
            let out_len = 2 + ext;
            if avail.len() < total || out.remaining() < out_len {
                break;
            }
            let len = match ext {
                0 => u64::from(avail[1] & 0x7f),
                2 => u64::from(u16::from_be_bytes([avail[2], avail[3]])),
                _ => avail[2..10].iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
            };
            let mut header = [0u8; 10];
            header[..out_len].copy_from_slice(&avail[..out_len]);
            header[1] &= 0x7f;
            self.key = if masked {
                [avail[out_len], avail[out_len + 1], avail[out_len + 2], avail[out_len + 3]]
            } else {
                [0; 4]
            };
            out.put_slice(&header[..out_len]);
            self.start += total;
            self.left = len;
            self.offset = 0;
            wrote += out_len;
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        wrote
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Unmasked<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.drain_into(out) > 0 || out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // Only part of a header is left: keep it at the front and read more behind it.
            if this.start > 0 {
                this.raw.copy_within(this.start..this.end, 0);
                this.end -= this.start;
                this.start = 0;
            }
            let mut buf = ReadBuf::new(&mut this.raw[this.end..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            if n == 0 {
                // End of stream (a partial frame left behind is the library's to report).
                return Poll::Ready(Ok(()));
            }
            this.end += n;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Unmasked<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A client connection to a byte echo at `addr`, with no handshake.
pub async fn connect(addr: &str, config: &wsx::WebSocketConfig) -> io::Result<WebSocket<Unmasked<TcpStream>>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    // Masking keys for a benchmark against our own echo: unpredictable enough (seeded per
    // connection from the standard library's random hasher keys), and cheap.
    let mut state = {
        use std::hash::{BuildHasher as _, Hasher as _};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0);
        h.finish() | 1
    };
    let keys = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state as u32).to_le_bytes()
    };
    let conn = Connection::client(config.proto.clone(), Instant::now(), keys);
    Ok(WebSocket::from_parts(Unmasked::new(tcp), conn, BytesMut::new(), None, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    /// A client frame as the client sends it: masked with `key`.
    fn masked_frame(payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0x82];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&key);
        let mut p = payload.to_vec();
        apply_mask(&mut p, key, 0);
        f.extend_from_slice(&p);
        f
    }

    fn unmasked_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = masked_frame(payload, [0; 4]);
        f[1] &= 0x7f;
        let header = f.len() - payload.len() - 4;
        f.drain(header..header + 4);
        f
    }

    #[tokio::test]
    async fn turns_echoed_client_frames_into_server_frames_in_any_chunking() {
        let payloads: Vec<Vec<u8>> =
            [0usize, 5, 125, 126, 300, 70_000].iter().map(|&n| (0..n).map(|i| (i * 7 % 251) as u8).collect()).collect();
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            wire.extend(masked_frame(p, [1, 2, 3, i as u8 + 9]));
            expected.extend(unmasked_frame(p));
        }
        // Every split of the input into reads of 1, 3, 7, … bytes gives the same output.
        for chunk in [1usize, 3, 7, 13, 4096, 1 << 20] {
            let mut mock = tokio_test_reader(&wire, chunk);
            let mut out = Vec::new();
            let mut reader = Unmasked::new(&mut mock);
            reader.read_to_end(&mut out).await.unwrap();
            assert_eq!(out.len(), expected.len(), "chunk {chunk}");
            assert!(out == expected, "chunk {chunk}");
        }
    }

    /// A reader that hands out `data` `chunk` bytes at a time.
    fn tokio_test_reader(data: &[u8], chunk: usize) -> impl AsyncRead + Unpin {
        struct Chunked(Vec<u8>, usize, usize);
        impl AsyncRead for Chunked {
            fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
                let (pos, chunk) = (self.1, self.2);
                let n = chunk.min(self.0.len() - pos).min(buf.remaining());
                buf.put_slice(&self.0[pos..pos + n]);
                self.1 += n;
                Poll::Ready(Ok(()))
            }
        }
        Chunked(data.to_vec(), 0, chunk)
    }
}
