//! Benchmarks of the server's side of the opening handshake, without I/O: reading a request
//! head, checking it, and writing the `101` answer (the user-space work behind each handshake
//! `wsx bench connect` measures).
//!
//! Run with `cargo bench -p wsx-proto --bench handshake` (add `-- --quick` for a fast pass).
//! See `docs/benchmarks-codepaths.md`.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use wsx_proto::handshake::{self, HandshakeLimits, RequestReader};

mod common;

/// A minimal upgrade request, like the one `wsx bench connect` sends.
const SMALL: &str = "GET / HTTP/1.1\r\nHost: 127.0.0.1:9201\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A browser's request (Chromium's headers, with cookies and a compression offer).
const BROWSER: &str = "GET /chat HTTP/1.1\r\nHost: example.com\r\nConnection: Upgrade\r\nPragma: no-cache\r\n\
    Cache-Control: no-cache\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
    Chrome/131.0.0.0 Safari/537.36\r\nUpgrade: websocket\r\nOrigin: https://example.com\r\n\
    Sec-WebSocket-Version: 13\r\nAccept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-US,en;q=0.9\r\n\
    Cookie: session=8f2a9c1e4b7d6a3f; theme=dark\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

fn server_handshake(c: &mut Criterion) {
    let limits = HandshakeLimits::default();
    let extra = HeaderMap::new();
    let mut group = c.benchmark_group("server_handshake");
    for (name, head) in [("small", SMALL), ("browser", BROWSER)] {
        // As a server does: a first try before anything was read, then the head in one read.
        group.bench_function(format!("read/{name}"), |b| {
            b.iter(|| {
                let mut reader = RequestReader::new();
                let mut buf = BytesMut::with_capacity(1024);
                assert!(reader.read(&mut buf, &limits).unwrap().is_none());
                buf.extend_from_slice(head.as_bytes());
                black_box(reader.read(&mut buf, &limits).unwrap().unwrap())
            })
        });
        let mut buf = BytesMut::from(head.as_bytes());
        let request = RequestReader::new().read(&mut buf, &limits).unwrap().unwrap();
        group.bench_function(format!("check_and_answer/{name}"), |b| {
            b.iter(|| {
                let upgrade = handshake::check_request(black_box(&request)).unwrap();
                let response = handshake::accept_response(&upgrade, None, None, &extra);
                let mut out = BytesMut::with_capacity(256);
                handshake::write_response(&response, &mut out);
                black_box(out)
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = server_handshake
}
criterion_main!(benches);
