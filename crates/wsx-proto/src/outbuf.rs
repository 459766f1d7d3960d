//! The bytes a connection has produced and the transport has not yet written.
//!
//! Small frames are encoded back to back into one contiguous buffer, so that many replies leave
//! in one write; a large payload that needs no masking is queued as its own [`Bytes`] chunk, so
//! that it goes out through a vectored write without being copied.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};

/// Pending output, readable through the [`Buf`] trait (so `tokio::io::AsyncWriteExt::write_buf`
/// and vectored writes work on it directly).
#[derive(Debug, Default)]
pub struct OutBuf {
    /// Chunks that come before `tail`, oldest first.
    chunks: VecDeque<Bytes>,
    /// The buffer new small frames are encoded into.
    tail: BytesMut,
    /// Total bytes pending (chunks + tail).
    len: usize,
    /// Total bytes taken out (advanced over) so far.
    written: u64,
}

impl OutBuf {
    /// Payloads at least this long are queued without copying (when they need no masking).
    pub const ZERO_COPY_THRESHOLD: usize = 4096;

    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes taken out so far (advanced over): with [`len`](Self::len), where in the stream of
    /// output a queued frame ends, and whether it has left.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The buffer to encode small frames into. Callers must call [`Self::commit`] with the number
    /// of bytes they appended.
    pub(crate) fn tail_mut(&mut self) -> &mut BytesMut {
        &mut self.tail
    }

    /// Records `n` bytes appended to the tail.
    pub(crate) fn commit(&mut self, n: usize) {
        self.len += n;
    }

    /// Queues a whole encoded frame that other connections share (a prepared message): a large
    /// one as its own chunk, without a copy; a small one copied after the pending frames.
    pub(crate) fn push_shared(&mut self, frame: &Bytes) {
        if frame.len() >= Self::ZERO_COPY_THRESHOLD {
            self.push_chunk(frame.clone());
        } else {
            self.tail.extend_from_slice(frame);
            self.len += frame.len();
        }
    }

    /// Queues a payload as its own chunk after everything pending.
    pub(crate) fn push_chunk(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        if !self.tail.is_empty() {
            let head = self.tail.split().freeze();
            self.chunks.push_back(head);
        }
        self.len += chunk.len();
        self.chunks.push_back(chunk);
    }
}

impl Buf for OutBuf {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        match self.chunks.front() {
            Some(c) => c,
            None => &self.tail,
        }
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.len, "advance past the end of OutBuf");
        self.len -= cnt;
        self.written += cnt as u64;
        while cnt > 0 {
            match self.chunks.front_mut() {
                Some(front) if front.len() <= cnt => {
                    cnt -= front.len();
                    self.chunks.pop_front();
                }
                Some(front) => {
                    front.advance(cnt);
                    cnt = 0;
                }
                None => {
                    self.tail.advance(cnt);
                    cnt = 0;
                }
            }
        }
        if self.tail.is_empty() {
            // Lets the next reserve reuse the allocation from its start.
            self.tail.clear();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for c in &self.chunks {
            if n == dst.len() {
                return n;
            }
            dst[n] = IoSlice::new(c);
            n += 1;
        }
        if n < dst.len() && !self.tail.is_empty() {
            dst[n] = IoSlice::new(&self.tail);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_across_chunks_and_tail() {
        let mut o = OutBuf::default();
        o.tail_mut().extend_from_slice(b"ab");
        o.commit(2);
        o.push_chunk(Bytes::from_static(b"cdef"));
        o.tail_mut().extend_from_slice(b"gh");
        o.commit(2);
        assert_eq!(o.remaining(), 8);
        let mut v = [IoSlice::new(&[]); 8];
        let n = o.chunks_vectored(&mut v);
        let all: Vec<u8> = v[..n].iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(all, b"abcdefgh");
        o.advance(3);
        assert_eq!(o.chunk(), b"def");
        let rest = o.copy_to_bytes(5);
        assert_eq!(&rest[..], b"defgh");
        assert!(o.is_empty());
    }
}
