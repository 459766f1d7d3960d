"""Python `websockets` as the echo server for wsx's interop client (scripts/interop).

Usage: server.py [--port 0] [--deflate | --no-deflate] [--connections 2] [--tls-cert FILE --tls-key FILE]

Prints "listening on 127.0.0.1:PORT" once it accepts connections. Per connection: pings the
client with "ping from server" right after the handshake; echoes every message, a fragmented one
as fragments; on a text message "close CODE REASON" (the interop client sends
"close 4002 bye from server"), closes with that code and reason.

It checks what it receives: each message byte for byte and by type against the sequence the
interop client sends (messages.first_connection() or, when the first message is that of
connection 2, messages.second_connection()), the pong to its ping, and the closing handshake
(the client's echo of our code, or the client's own close 4001 "bye from client"). After
--connections connections it exits: 0 if all matched; otherwise 1, one line per problem.

With --tls-cert and --tls-key (PEM: the certificate chain, leaf first, and its key), it serves
wss:// only, and checks that each connection is TLS (its version and cipher are in the ok line).
Failed TLS handshakes (a plain client, or one that refuses the certificate) are no connections.
"""

import argparse
import asyncio
import ssl
import sys

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

import messages as m


class Server:
    def __init__(self, connections, tls):
        self.tls = tls
        self.remaining = connections
        self.count = 0
        self.failures = []
        self.done = asyncio.Event()
        self.sequences = [m.first_connection(), m.second_connection()]

    def check(self, expected, index, is_text, data):
        """A problem with the index-th message received, or None."""
        if index >= len(expected):
            return f"message {index + 1}: unexpected {'text' if is_text else 'binary'} message of {len(data)} B"
        name, exp_text, exp_data, _ = expected[index]
        what = f"message {index + 1} ({name})"
        if is_text != exp_text:
            return f"{what}: expected a {'text' if exp_text else 'binary'} message, got {'text' if is_text else 'binary'}"
        if data != exp_data:
            return f"{what}: {m.describe_difference(exp_data, data)}"
        return None

    async def handler(self, ws):
        self.count += 1
        name = f"connection {self.count}"
        problems = []
        pong = await ws.ping(m.SERVER_PING)
        expected = None
        received = fragmented = 0
        closed_by_us = None
        try:
            while True:
                # Fragment by fragment, so that a fragmented message is echoed fragmented.
                fragments = [f async for f in ws.recv_streaming()]
                is_text = isinstance(fragments[0], str)
                data = b"".join(f.encode() if is_text else f for f in fragments)
                if expected is None:
                    second = self.sequences[1][0]
                    expected = self.sequences[1] if (is_text, data) == (second[1], second[2]) else self.sequences[0]
                problem = self.check(expected, received, is_text, data)
                if problem:
                    problems.append(problem)
                received += 1
                command = m.parse_close_command(data.decode()) if is_text else None
                if command:
                    await ws.close(*command)
                    closed_by_us = command
                    break
                if len(fragments) == 1:
                    await ws.send(fragments[0])
                else:
                    await ws.send(fragments)
                    fragmented += 1
        except ConnectionClosed:
            pass
        await ws.wait_closed()

        if expected is not None and received < len(expected):
            problems.append(f"received {received} of the {len(expected)} messages expected")
        close = ws.protocol.close_rcvd
        got = "no close frame" if close is None else f"{close.code} {close.reason!r}"
        if closed_by_us:
            if close is None or close.code != closed_by_us[0]:
                problems.append(f"our close {closed_by_us[0]}: the client echoed {got}")
        elif close is None or (close.code, close.reason) != m.CLIENT_CLOSE:
            problems.append(f"expected the client's close {m.CLIENT_CLOSE[0]} {m.CLIENT_CLOSE[1]!r}, got {got}")
        if not (pong.done() and not pong.cancelled() and pong.exception() is None):
            problems.append(f"no pong matching our ping {m.SERVER_PING!r}")
        ssl_object = ws.transport.get_extra_info("ssl_object")
        if self.tls != (ssl_object is not None):
            problems.append(f"expected a {'TLS' if self.tls else 'plain'} connection, got {'TLS' if ssl_object else 'plain'}")
        tls = f"; TLS: {ssl_object.version()} {ssl_object.cipher()[0]}" if ssl_object else ""

        extensions = ws.response.headers.get("Sec-WebSocket-Extensions") or "none"
        if problems:
            self.failures += [f"{name}: {p}" for p in problems]
        else:
            print(
                f"python server: {name}: ok: {received} message(s) ({fragmented} fragmented, echoed as fragments), "
                f"close {got}, pong matched; extensions: {extensions}{tls}",
                flush=True,
            )
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()


def server_context(cert, key):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def run(port, deflate, connections, ssl_context):
    server = Server(connections, ssl_context is not None)
    async with serve(
        server.handler,
        "127.0.0.1",
        port,
        compression="deflate" if deflate else None,
        max_size=64 * m.MIB,
        ping_interval=None,
        close_timeout=5,
        ssl=ssl_context,
    ) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        print(f"listening on 127.0.0.1:{port}", flush=True)
        await server.done.wait()
    return server.failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--deflate", dest="deflate", action="store_true", help="accept permessage-deflate")
    parser.add_argument("--no-deflate", dest="deflate", action="store_false", help="refuse it (default)")
    parser.add_argument("--connections", type=int, default=2, help="exit after this many connections")
    parser.add_argument("--tls-cert", help="serve wss:// with this PEM certificate chain (needs --tls-key)")
    parser.add_argument("--tls-key", help="the PEM private key of --tls-cert")
    args = parser.parse_args()
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    ssl_context = server_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    failures = asyncio.run(run(args.port, args.deflate, args.connections, ssl_context))
    for failure in failures:
        print(f"python server: FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
