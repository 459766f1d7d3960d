//! The bytes a connection has produced and the transport has not yet written.
//!
//! Small frames are encoded back to back into one contiguous buffer, so that many replies leave
//! in one write; a large payload that needs no masking is queued as its own [`Bytes`] chunk, its
//! header beside it, so that it goes out through a vectored write without being copied.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};

use crate::frame::MAX_HEADER_LEN;

/// A piece of pending output before the tail.
#[derive(Debug)]
enum Chunk {
    /// Bytes queued as they are: a large payload, a shared prepared frame, or small frames
    /// encoded in the tail and split off it.
    Shared(Bytes),
    /// The header of a payload queued as a chunk of its own, kept inline (queueing a large
    /// payload allocates nothing); `start..end` is what is left to write.
    Head { bytes: [u8; MAX_HEADER_LEN], start: u8, end: u8 },
}

impl Chunk {
    fn as_slice(&self) -> &[u8] {
        match self {
            Chunk::Shared(b) => b,
            Chunk::Head { bytes, start, end } => &bytes[usize::from(*start)..usize::from(*end)],
        }
    }

    /// Takes `cnt` bytes (fewer than it holds) off the front.
    fn advance(&mut self, cnt: usize) {
        match self {
            Chunk::Shared(b) => b.advance(cnt),
            // Under `MAX_HEADER_LEN` bytes: fits.
            Chunk::Head { start, .. } => *start += cnt as u8,
        }
    }
}

/// Pending output, readable through the [`Buf`] trait (so `tokio::io::AsyncWriteExt::write_buf`
/// and vectored writes work on it directly).
#[derive(Debug, Default)]
pub struct OutBuf {
    /// Chunks that come before `tail`, oldest first. Boxed, and made on first use: only large
    /// payloads and shared frames make chunks, and every connection holds an `OutBuf` (a
    /// pointer here keeps an idle connection's task 24 bytes smaller).
    #[allow(clippy::box_collection, reason = "a pointer in every connection, the queue in few")]
    chunks: Option<Box<VecDeque<Chunk>>>,
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

    /// Queues a frame: its header (copied) and its payload as a chunk of its own (not copied),
    /// after everything pending.
    pub(crate) fn push_frame(&mut self, head: &[u8], payload: Bytes) {
        let mut bytes = [0; MAX_HEADER_LEN];
        bytes[..head.len()].copy_from_slice(head);
        self.split_tail();
        self.queue().push_back(Chunk::Head { bytes, start: 0, end: head.len() as u8 });
        self.len += head.len();
        self.push_chunk(payload);
    }

    /// Queues a payload as its own chunk after everything pending.
    fn push_chunk(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        self.split_tail();
        self.len += chunk.len();
        self.queue().push_back(Chunk::Shared(chunk));
    }

    /// Ends the tail's run of small frames as a chunk, so that what is queued next follows it.
    fn split_tail(&mut self) {
        if !self.tail.is_empty() {
            let head = self.tail.split().freeze();
            self.queue().push_back(Chunk::Shared(head));
        }
    }

    /// The chunks' queue, made on first use.
    fn queue(&mut self) -> &mut VecDeque<Chunk> {
        self.chunks.get_or_insert_with(Box::default)
    }
}

impl Buf for OutBuf {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        match self.chunks.as_ref().and_then(|c| c.front()) {
            Some(c) => c.as_slice(),
            None => &self.tail,
        }
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.len, "advance past the end of OutBuf");
        self.len -= cnt;
        self.written += cnt as u64;
        while cnt > 0 {
            match self.chunks.as_mut().and_then(|c| c.front_mut()) {
                Some(front) if front.as_slice().len() <= cnt => {
                    cnt -= front.as_slice().len();
                    self.queue().pop_front();
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
        for c in self.chunks.iter().flat_map(|c| c.iter()) {
            if n == dst.len() {
                return n;
            }
            dst[n] = IoSlice::new(c.as_slice());
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

    #[test]
    fn a_frame_queued_whole_keeps_its_header_inline_and_its_payload_uncopied() {
        let mut o = OutBuf::default();
        o.tail_mut().extend_from_slice(b"ab");
        o.commit(2);
        let payload = Bytes::from(vec![7u8; 5000]);
        o.push_frame(&[0x82, 126, 0x13, 0x88], payload.clone());
        assert_eq!(o.remaining(), 2 + 4 + 5000);
        let mut v = [IoSlice::new(&[]); 8];
        let n = o.chunks_vectored(&mut v);
        assert_eq!(n, 3, "small frames, header, payload");
        assert_eq!(&v[1][..], [0x82, 126, 0x13, 0x88]);
        assert_eq!(v[2].as_ptr(), payload.as_ptr(), "the payload was copied");
        // A write that stops inside the header, then one that ends inside the payload.
        o.advance(3);
        assert_eq!(o.chunk(), [126, 0x13, 0x88]);
        o.advance(2);
        assert_eq!(o.chunk(), [0x88]);
        o.advance(1 + 4999);
        assert_eq!(o.chunk(), [7]);
        o.advance(1);
        assert!(o.is_empty());
        assert_eq!(o.written(), 5006);
    }
}
