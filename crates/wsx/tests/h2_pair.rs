//! The same conversations between our client and our server over two transports: an HTTP/1.1
//! upgrade on an in-memory pipe, and an extended CONNECT stream (RFC 8441) of an HTTP/2
//! connection on an in-memory pipe (the `h2` crate's server with `wsx::h2::server`, the client
//! `wsx::h2`). Autobahn's suite speaks HTTP/1.1 only; these run its kinds of exchanges
//! (fragments with control frames between them, empty and large messages, pings, both closes,
//! permessage-deflate, a message far larger than a window streamed in chunks) over h2 too, and
//! check each transport gives the same result.
#![cfg(feature = "http2")]

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use wsx::h2::server::Http2Upgrade;
use wsx::h2::{Http2Config, Http2Connection};
use wsx::proto::deflate::DeflateConfig;
use wsx::proto::handshake::ClientRequestConfig;
use wsx::{Accept, ClientBuilder, CloseCode, Message, ServerConfig, StreamEvent, WebSocket, WebSocketConfig};

/// Which transport a conversation runs over.
#[derive(Debug, Clone, Copy)]
enum Transport {
    Http1,
    Http2,
}

/// A connected pair over `transport`, each side configured by `config`; `f` runs the
/// conversation with (client, server). Fails the test after 30 s.
async fn pair<F, Fut>(transport: Transport, config: WebSocketConfig, f: F)
where
    F: FnOnce(Box<dyn Ws>, Box<dyn Ws>) -> Fut,
    Fut: Future<Output = ()>,
{
    let run = async {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        match transport {
            Transport::Http1 => {
                let mut server_config = ServerConfig::default();
                server_config.websocket = config.clone();
                let server = tokio::spawn(async move {
                    wsx::accept_with(server_io, &server_config, |_, _| Ok(Accept::default())).await
                });
                let (client, _) =
                    ClientBuilder::new("ws://localhost/").config(config).connect_on(client_io).await.expect("client");
                let server = server.await.unwrap().expect("server");
                f(Box::new(client), Box::new(server)).await;
            }
            Transport::Http2 => {
                let server_ws = config.clone();
                let server = tokio::spawn(async move {
                    let mut h2 = h2::server::Builder::new()
                        .enable_connect_protocol()
                        .initial_window_size(256 * 1024)
                        .handshake::<DuplexStream, Bytes>(server_io)
                        .await
                        .expect("h2 server");
                    let (request, respond) = h2.accept().await.expect("a request").expect("h2");
                    // The connection must go on being polled for the stream to move.
                    tokio::spawn(async move { while h2.accept().await.is_some() {} });
                    Http2Upgrade::new(request, respond).expect("extended CONNECT").accept(Accept::default(), &server_ws)
                });
                let h2 = Http2Connection::handshake(client_io, &Http2Config::default()).await.expect("h2 client");
                let (client, response) =
                    h2.open("ws://localhost/", ClientRequestConfig::default(), &config).await.expect("open");
                assert_eq!(response.version(), http::Version::HTTP_2);
                let server = server.await.unwrap().expect("accept");
                f(Box::new(client), Box::new(server)).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), run).await.unwrap_or_else(|_| panic!("{transport:?}: over 30 s"));
}

/// A boxed future of a [`Ws`] call.
type Call<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The calls a conversation makes, on either transport's stream.
trait Ws: Send {
    fn send<'a>(&'a mut self, m: Message) -> Call<'a, Result<(), wsx::Error>>;
    fn fragment<'a>(&'a mut self, text: bool, payload: Bytes, fin: bool) -> Call<'a, Result<(), wsx::Error>>;
    fn recv(&mut self) -> Call<'_, Option<Result<Message, wsx::Error>>>;
    fn recv_chunk(&mut self) -> Call<'_, Option<Result<StreamEvent, wsx::Error>>>;
    fn close<'a>(
        &'a mut self,
        code: CloseCode,
        reason: &'a str,
    ) -> Call<'a, Result<Option<wsx::CloseFrame>, wsx::Error>>;
    fn extensions(&self) -> Option<String>;
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Ws for WebSocket<S> {
    fn send<'a>(&'a mut self, m: Message) -> Call<'a, Result<(), wsx::Error>> {
        Box::pin(WebSocket::send(self, m))
    }
    fn fragment<'a>(&'a mut self, text: bool, payload: Bytes, fin: bool) -> Call<'a, Result<(), wsx::Error>> {
        Box::pin(self.send_fragment(text, payload, fin))
    }
    fn recv(&mut self) -> Call<'_, Option<Result<Message, wsx::Error>>> {
        Box::pin(WebSocket::recv(self))
    }
    fn recv_chunk(&mut self) -> Call<'_, Option<Result<StreamEvent, wsx::Error>>> {
        Box::pin(WebSocket::recv_chunk(self))
    }
    fn close<'a>(
        &'a mut self,
        code: CloseCode,
        reason: &'a str,
    ) -> Call<'a, Result<Option<wsx::CloseFrame>, wsx::Error>> {
        Box::pin(WebSocket::close(self, code, reason))
    }
    fn extensions(&self) -> Option<String> {
        WebSocket::extensions(self).map(str::to_owned)
    }
}

const BOTH: [Transport; 2] = [Transport::Http1, Transport::Http2];

fn bytes(n: usize, seed: u32) -> Bytes {
    let mut x = seed | 1;
    Bytes::from(
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect::<Vec<u8>>(),
    )
}

async fn next(ws: &mut Box<dyn Ws>) -> Message {
    ws.recv().await.expect("a message").expect("no error")
}

/// Sends `m` from `from` while `to` receives it (a message larger than the pipe needs both),
/// and returns what `to` got.
async fn exchange(from: &mut Box<dyn Ws>, to: &mut Box<dyn Ws>, m: Message) -> Message {
    let (sent, got) = tokio::join!(from.send(m), next(to));
    sent.expect("send");
    got
}

/// Messages both ways: empty, UTF-8, binary with every byte value, 1 MiB and 8 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_both_ways() {
    for transport in BOTH {
        pair(transport, WebSocketConfig::default(), |mut client, mut server| async move {
            let all: Bytes = (0..=255u8).collect::<Vec<u8>>().into();
            let sent = vec![
                Message::text(""),
                Message::binary(Bytes::new()),
                Message::text("héllo, wörld ✓ 日本語 🦀"),
                Message::binary(all),
                Message::binary(bytes(1 << 20, 3)),
                Message::binary(bytes(8 << 20, 4)),
            ];
            for m in &sent {
                assert!(exchange(&mut client, &mut server, m.clone()).await == *m, "{transport:?}: to the server");
                assert!(exchange(&mut server, &mut client, m.clone()).await == *m, "{transport:?}: to the client");
            }
        })
        .await;
    }
}

/// A fragmented message with a ping between its fragments (answered at once, RFC 6455 §5.4),
/// and a pong the application sent unasked.
#[tokio::test]
async fn fragments_with_control_frames_between() {
    for transport in BOTH {
        pair(transport, WebSocketConfig::default(), |mut client, mut server| async move {
            client.fragment(true, Bytes::from_static("frag".as_bytes()), false).await.unwrap();
            client.send(Message::Ping(Bytes::from_static(b"between"))).await.unwrap();
            client.fragment(true, Bytes::from_static("ment".as_bytes()), false).await.unwrap();
            client.fragment(true, Bytes::from_static("ed ✓".as_bytes()), true).await.unwrap();
            client.send(Message::Pong(Bytes::from_static(b"unasked"))).await.unwrap();
            let mut got = Vec::new();
            for _ in 0..3 {
                got.push(next(&mut server).await);
            }
            assert_eq!(
                got,
                [
                    Message::Ping(Bytes::from_static(b"between")),
                    Message::text("fragmented ✓"),
                    Message::Pong(Bytes::from_static(b"unasked")),
                ],
                "{transport:?}"
            );
            // The server's automatic pong reaches the client (written while the server goes on
            // receiving).
            let pong = tokio::select! {
                m = next(&mut client) => m,
                m = server.recv() => panic!("{transport:?}: the server got {m:?}"),
            };
            assert_eq!(pong, Message::Pong(Bytes::from_static(b"between")), "{transport:?}");
        })
        .await;
    }
}

/// Closes from either side, with a code and a reason, answered with the same (the echo
/// browsers make too).
#[tokio::test]
async fn closes_from_either_side() {
    for transport in BOTH {
        for client_first in [true, false] {
            pair(transport, WebSocketConfig::default(), |mut client, mut server| async move {
                let (first, second) =
                    if client_first { (&mut client, &mut server) } else { (&mut server, &mut client) };
                let (reply, seen) = tokio::join!(first.close(CloseCode::from(4321), "see you"), async {
                    let seen = second.recv().await;
                    // Drain to the end: the answer is sent while receiving.
                    while second.recv().await.is_some() {}
                    seen
                });
                let reply = reply.expect("clean close").expect("a close frame back");
                assert_eq!((u16::from(reply.code), reply.reason.as_str()), (4321, "see you"), "{transport:?}");
                match seen {
                    Some(Ok(Message::Close(Some(frame)))) => {
                        assert_eq!((u16::from(frame.code), frame.reason.as_str()), (4321, "see you"));
                    }
                    other => panic!("{transport:?}: {other:?}"),
                }
            })
            .await;
        }
    }
}

/// permessage-deflate negotiated and used over both transports: compressible and random
/// messages arrive intact.
#[tokio::test]
async fn permessage_deflate() {
    for transport in BOTH {
        let mut config = WebSocketConfig::default();
        config.deflate = Some(DeflateConfig::default());
        pair(transport, config, |mut client, mut server| async move {
            assert!(client.extensions().is_some_and(|e| e.starts_with("permessage-deflate")), "{transport:?}");
            assert!(server.extensions().is_some_and(|e| e.starts_with("permessage-deflate")), "{transport:?}");
            let json = Message::text("{\"id\":1,\"text\":\"hello\"} ".repeat(2000));
            let random = Message::binary(bytes(300_000, 9));
            for m in [json, random] {
                assert!(exchange(&mut client, &mut server, m.clone()).await == m, "{transport:?}: to the server");
                assert!(exchange(&mut server, &mut client, m.clone()).await == m, "{transport:?}: to the client");
            }
        })
        .await;
    }
}

/// A 24 MiB message streamed to `recv_chunk` in chunks far smaller than itself: over h2, many
/// times the stream window passes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_the_windows_streams_in_chunks() {
    const SIZE: usize = 24 << 20;
    for transport in BOTH {
        let mut config = WebSocketConfig::default();
        config.proto.max_message_size = SIZE;
        config.proto.max_frame_size = SIZE;
        pair(transport, config, |mut client, mut server| async move {
            let message = bytes(SIZE, 11);
            // The client stays alive until the server has it all: over HTTP/2 a WebSocket
            // dropped without closing resets its stream, and what h2 still held is lost.
            let sending = async { client.send(Message::binary(message.clone())).await.expect("send 24 MiB") };
            let receiving = async {
                let mut at = 0usize;
                let mut largest = 0usize;
                loop {
                    match server.recv_chunk().await.expect("chunk").expect("no error") {
                        StreamEvent::Chunk(wsx::proto::stream::Chunk { data, fin, .. }) => {
                            assert!(data[..] == message[at..at + data.len()], "{transport:?}: bytes at {at}");
                            at += data.len();
                            largest = largest.max(data.len());
                            if fin {
                                break;
                            }
                        }
                        other => panic!("{other:?}"),
                    }
                }
                (at, largest)
            };
            let ((), (got, largest)) = tokio::join!(sending, receiving);
            assert_eq!(got, SIZE, "{transport:?}");
            assert!(largest < 4 << 20, "{transport:?}: chunks stay small ({largest} bytes)");
        })
        .await;
    }
}
