"""An independent HTTP/2 peer: a WebSocket echo server over HTTP/2 (RFC 8441) on hyper-h2, for
wsx's interop client (scripts/interop).

Usage: h2_server.py [--port 0] [--connections 2] [--tls-cert FILE --tls-key FILE]

Prints "listening on 127.0.0.1:PORT" once it accepts connections. It advertises
SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 and accepts an extended CONNECT with `:protocol websocket`
and `sec-websocket-version: 13` (200, no extensions); anything else is refused (501 for another
`:protocol`, 400 otherwise). The WebSocket frames are its own (wsframe.py): no WebSocket library.

Per WebSocket (one stream each; they count as the "connections" of the interop message set):
pings the client with "ping from server" right after the 200; echoes every data frame as it
arrives (a fragmented message is echoed as the same fragments); on a text message
"close CODE REASON" closes with that code and reason; answers the client's close with the same
code; ends its side of the stream (END_STREAM) once both close frames have passed. It checks
the messages against the interop sequence (messages.first_connection() or
messages.second_connection()), the pong, the close handshake and that the client ended the
stream with END_STREAM (not RST_STREAM). After --connections WebSockets it exits: 0 if all
matched; otherwise 1, one line per problem.

With --tls-cert and --tls-key it serves TLS with ALPN h2 only (a client that does not choose h2
is dropped); without, HTTP/2 over cleartext TCP with prior knowledge (h2c).
"""

import argparse
import asyncio
import ssl
import sys

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

import messages as m
import wsframe as wf

# Our receive windows: 1 MiB per stream, 16 MiB for the connection.
STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 16 << 20
# Echo bytes waiting for the client's window, per stream, above which we stop reopening the
# client's window (so a client that does not read cannot make us buffer without bound).
MAX_PENDING = 8 << 20
MAX_MESSAGE = 64 * m.MIB
# How long one connection may stay silent before it is dropped.
READ_TIMEOUT = 30
DEBUG = bool(__import__("os").environ.get("H2_PEER_DEBUG"))


def header_map(headers):
    """The request's headers as {name: [values]} (names and values as str)."""
    out = {}
    for name, value in headers:
        out.setdefault(name.decode().lower(), []).append(value.decode(errors="replace"))
    return out


class WebSocketStream:
    """The server's side of one WebSocket on an HTTP/2 stream."""

    def __init__(self, server, conn, stream_id, name):
        self.server, self.conn, self.id, self.name = server, conn, stream_id, name
        self.parser = wf.Parser(masked=True, max_payload=MAX_MESSAGE)
        self.assembler = wf.Assembler(MAX_MESSAGE)
        self.out = bytearray()
        self.unacked = 0
        self.problems = []
        self.expected = None
        self.received = 0
        self.fragmented = 0
        self.fragments_in_message = 0
        self.pong_ok = False
        self.closed_by_us = None
        self.close_received = None
        self.close_sent = False
        self.local_ended = False
        self.remote_ended = False
        self.reset = None
        self.done = False

    # -------------------------------------------------------------- output
    def send_frame(self, opcode, payload, fin=True):
        if self.local_ended:
            return
        self.out += wf.encode(opcode, payload, fin=fin)
        self.flush()

    def flush(self):
        """Sends what the stream's send window allows; END_STREAM once our close has gone."""
        while self.out and not self.local_ended:
            window = self.conn.local_flow_control_window(self.id)
            n = min(window, self.conn.max_outbound_frame_size, len(self.out))
            if n <= 0:
                break
            self.conn.send_data(self.id, bytes(self.out[:n]))
            del self.out[:n]
        if self.unacked and len(self.out) < MAX_PENDING:
            self.conn.acknowledge_received_data(self.unacked, self.id)
            self.unacked = 0
        if not self.out and self.close_sent and self.close_received is not None and not self.local_ended:
            self.conn.end_stream(self.id)
            self.local_ended = True
        self.maybe_done()

    # -------------------------------------------------------------- input
    def data(self, data, flow_controlled_length):
        if len(self.out) < MAX_PENDING:
            self.conn.acknowledge_received_data(flow_controlled_length, self.id)
        else:
            self.unacked += flow_controlled_length
        try:
            for fin, opcode, payload in self.parser.feed(data):
                self.frame(fin, opcode, payload)
        except wf.ProtocolError as e:
            self.problems.append(f"protocol error from the client: {e}")
            if not self.close_sent:
                self.close_sent = True
                self.send_frame(wf.CLOSE, wf.close_payload(e.code, str(e)[:100]))
            self.conn.reset_stream(self.id, h2.errors.ErrorCodes.CANCEL)
            self.local_ended = self.remote_ended = True
            self.maybe_done()

    def frame(self, fin, opcode, payload):
        if opcode == wf.PING:
            self.send_frame(wf.PONG, payload)
            return
        if opcode == wf.PONG:
            if payload == m.SERVER_PING:
                self.pong_ok = True
            return
        if opcode == wf.CLOSE:
            self.close_received = wf.parse_close(payload)
            if not self.close_sent:
                code = self.close_received[0]
                self.close_sent = True
                self.send_frame(wf.CLOSE, wf.close_payload(code) if code is not None else b"")
            self.flush()
            return
        if self.close_sent:
            return  # data after our close: ignored, as RFC 6455 allows
        whole = fin and opcode != wf.CONT
        message = self.assembler.add(fin, opcode, payload)
        if not whole:
            # A fragment: echoed as it came.
            self.fragments_in_message += 1
            self.send_frame(opcode, payload, fin=fin)
        if message is None:
            return
        is_text, data = message
        if self.fragments_in_message:
            self.fragmented += 1
            self.fragments_in_message = 0
        self.check(is_text, data)
        command = m.parse_close_command(data.decode()) if is_text else None
        if command and whole:
            self.closed_by_us = command
            self.close_sent = True
            self.send_frame(wf.CLOSE, wf.close_payload(*command))
        elif whole:
            self.send_frame(opcode, payload)

    def check(self, is_text, data):
        if self.expected is None:
            second = self.server.sequences[1][0]
            first_of_second = (second[1], second[2])
            self.expected = self.server.sequences[1] if (is_text, data) == first_of_second else self.server.sequences[0]
        index = self.received
        self.received += 1
        if index >= len(self.expected):
            self.problems.append(f"message {index + 1}: unexpected {'text' if is_text else 'binary'} of {len(data)} B")
            return
        name, exp_text, exp_data, _ = self.expected[index]
        what = f"message {index + 1} ({name})"
        if is_text != exp_text:
            self.problems.append(f"{what}: expected {'text' if exp_text else 'binary'}")
        elif data != exp_data:
            self.problems.append(f"{what}: {m.describe_difference(exp_data, data)}")

    def stream_ended(self):
        self.remote_ended = True
        if self.close_received is None:
            self.problems.append("the client ended the stream before its close frame")
        self.flush()

    def stream_reset(self, code):
        self.reset = code
        self.remote_ended = self.local_ended = True
        self.problems.append(f"the client reset the stream ({code!r}) instead of ending it")
        self.maybe_done()

    # -------------------------------------------------------------- verdict
    def maybe_done(self):
        if self.done or not (self.local_ended and self.remote_ended):
            return
        self.done = True
        problems = self.problems
        if self.expected is not None and self.received < len(self.expected):
            problems.append(f"received {self.received} of the {len(self.expected)} messages expected")
        close = self.close_received
        got = "no close frame" if close is None else f"{close[0]} {close[1]!r}"
        if self.closed_by_us:
            if close is None or close[0] != self.closed_by_us[0]:
                problems.append(f"our close {self.closed_by_us[0]}: the client echoed {got}")
        elif close is None or close != m.CLIENT_CLOSE:
            problems.append(f"expected the client's close {m.CLIENT_CLOSE[0]} {m.CLIENT_CLOSE[1]!r}, got {got}")
        if not self.pong_ok:
            problems.append(f"no pong matching our ping {m.SERVER_PING!r}")
        self.server.finished(self, problems, got)


class Server:
    def __init__(self, connections, tls):
        self.tls = tls
        self.remaining = connections
        self.count = 0
        self.failures = []
        self.done = asyncio.Event()
        self.sequences = [m.first_connection(), m.second_connection()]

    def finished(self, ws, problems, got):
        if problems:
            self.failures += [f"{ws.name}: {p}" for p in problems]
        else:
            print(
                f"python h2 server: {ws.name}: ok: stream {ws.id}, {ws.received} message(s) ({ws.fragmented} "
                f"fragmented, echoed as fragments), close {got}, END_STREAM both ways, pong matched"
                + ("; TLS, ALPN h2" if self.tls else "; h2c"),
                flush=True,
            )
        self.remaining -= 1
        if self.remaining <= 0:
            self.done.set()

    def refuse(self, conn, stream_id, status, why):
        conn.send_headers(stream_id, [(":status", str(status)), ("sec-websocket-version", "13")])
        conn.send_data(stream_id, why.encode(), end_stream=True)

    def request(self, conn, event, streams):
        headers = dict((n.decode(), v.decode(errors="replace")) for n, v in event.headers if n.startswith(b":"))
        fields = header_map([(n, v) for n, v in event.headers if not n.startswith(b":")])
        if headers.get(":method") != "CONNECT":
            return self.refuse(conn, event.stream_id, 405, "WebSockets only: CONNECT")
        protocol = headers.get(":protocol")
        if protocol is None:
            return self.refuse(conn, event.stream_id, 400, "CONNECT without :protocol")
        if protocol != "websocket":
            return self.refuse(conn, event.stream_id, 501, f":protocol {protocol} is not implemented")
        if fields.get("sec-websocket-version") != ["13"]:
            return self.refuse(conn, event.stream_id, 400, "sec-websocket-version must be 13")
        self.count += 1
        ws = WebSocketStream(self, conn, event.stream_id, f"WebSocket {self.count}")
        streams[event.stream_id] = ws
        conn.send_headers(event.stream_id, [(":status", "200")])
        ws.send_frame(wf.PING, m.SERVER_PING)

    async def connection(self, reader, writer):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
            },
        )
        conn.initiate_connection()
        conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        streams = {}
        try:
            writer.write(conn.data_to_send())
            await writer.drain()
            while True:
                data = await asyncio.wait_for(reader.read(65536), READ_TIMEOUT)
                if not data:
                    break
                for event in conn.receive_data(data):
                    if DEBUG:
                        print(f"debug: {event}", file=sys.stderr, flush=True)
                    ws = streams.get(getattr(event, "stream_id", None) or 0)
                    if isinstance(event, h2.events.RequestReceived):
                        self.request(conn, event, streams)
                    elif isinstance(event, h2.events.DataReceived) and ws:
                        ws.data(event.data, event.flow_controlled_length)
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded) and ws:
                        ws.stream_ended()
                    elif isinstance(event, h2.events.StreamReset) and ws:
                        ws.stream_reset(event.error_code)
                    elif isinstance(event, h2.events.WindowUpdated):
                        for s in [ws] if ws else list(streams.values()):
                            s.flush()
                    elif isinstance(event, h2.events.RemoteSettingsChanged):
                        for s in streams.values():
                            s.flush()
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        break
                writer.write(conn.data_to_send())
                await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, h2.exceptions.ProtocolError, ssl.SSLError) as e:
            if any(not s.done for s in streams.values()):
                self.failures.append(f"connection: {type(e).__name__}: {e}")
        finally:
            for s in streams.values():
                if not s.done:
                    s.problems.append("the connection ended before the WebSocket did")
                    s.local_ended = s.remote_ended = True
                    s.maybe_done()
            writer.close()


def server_context(cert, key):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    return context


async def run(port, connections, ssl_context):
    server = Server(connections, ssl_context is not None)

    async def accepted(reader, writer):
        if ssl_context is not None:
            ssl_object = writer.get_extra_info("ssl_object")
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                writer.close()
                return
        await server.connection(reader, writer)

    listener = await asyncio.start_server(accepted, "127.0.0.1", port, ssl=ssl_context)
    port = listener.sockets[0].getsockname()[1]
    print(f"listening on 127.0.0.1:{port}", flush=True)
    async with listener:
        await server.done.wait()
    return server.failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--connections", type=int, default=2, help="exit after this many WebSockets")
    parser.add_argument("--no-deflate", action="store_true", help="accepted for symmetry: never compresses")
    parser.add_argument("--tls-cert", help="serve TLS (ALPN h2) with this PEM certificate chain (needs --tls-key)")
    parser.add_argument("--tls-key", help="the PEM private key of --tls-cert")
    args = parser.parse_args()
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    ssl_context = server_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    failures = asyncio.run(run(args.port, args.connections, ssl_context))
    for failure in failures:
        print(f"python h2 server: FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
