//! `--raw`: driving a plain TCP byte echo, the ceiling no WebSocket server can beat.
//!
//! A byte echo has no handshake and sends our own frames back as they were: masked, as every
//! client frame is. A client-role core must refuse masked frames from a server (RFC 6455
//! §5.1), so [`Wire::raw`] checks whole data frames still masked (see [`Wire::next`]) and reads
//! anything else with a server-role core, which requires exactly that mask; the client-role
//! core that frames, masks and sends is the one every other run uses.

use std::io;
use std::time::Instant;

use tokio::net::TcpStream;
use wsx::proto::Connection;
use wsx::MaybeTlsStream;

use super::wire::Wire;

/// A client connection to a byte echo at `addr`, with no handshake.
pub async fn connect(addr: &str, config: &wsx::WebSocketConfig) -> io::Result<Wire<MaybeTlsStream>> {
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
    Ok(Wire::raw(MaybeTlsStream::Plain(tcp), conn))
}
