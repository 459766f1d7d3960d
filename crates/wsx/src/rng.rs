//! Masking keys and handshake keys from the operating system's CSPRNG (RFC 6455 §10.3: keys the
//! peer cannot predict), drawn in blocks to spare a system call per frame.

/// A buffered source of OS randomness.
pub(crate) struct OsRandom {
    buf: [u8; 256],
    pos: usize,
}

impl OsRandom {
    pub(crate) fn new() -> Self {
        Self { buf: [0; 256], pos: 256 }
    }

    /// Fills `out` with random bytes.
    pub(crate) fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            if self.pos == self.buf.len() {
                if let Err(e) = getrandom::fill(&mut self.buf) {
                    // No secure randomness means we cannot mask safely: refuse to go on.
                    panic!("the operating system's random number generator failed: {e}");
                }
                self.pos = 0;
            }
            *b = self.buf[self.pos];
            self.pos += 1;
        }
    }
}

impl wsx_proto::MaskKeySource for OsRandom {
    fn next_key(&mut self) -> [u8; 4] {
        let mut k = [0; 4];
        self.fill(&mut k);
        k
    }
}

/// 16 random bytes for a Sec-WebSocket-Key.
pub(crate) fn handshake_key() -> [u8; 16] {
    let mut k = [0; 16];
    OsRandom::new().fill(&mut k);
    k
}
