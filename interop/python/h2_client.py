"""An independent HTTP/2 peer: a WebSocket client over HTTP/2 (RFC 8441) on hyper-h2, against
a wsx server (scripts/interop; `wsx serve` with TLS and ALPN h2, or any wsx server over h2c).

Usage: h2_client.py URL [--cacert FILE]

URL is wss://HOST:PORT/PATH (TLS, ALPN h2 only, trusting only the CA certificates of --cacert)
or ws://HOST:PORT/PATH (HTTP/2 over cleartext TCP with prior knowledge, h2c). The WebSocket
frames are its own (wsframe.py): no WebSocket library. On one HTTP/2 connection it checks:

1. the server's SETTINGS advertise SETTINGS_ENABLE_CONNECT_PROTOCOL = 1;
2. a WebSocket: the extended CONNECT (`:protocol websocket`, `sec-websocket-version: 13`) is
   answered 200 without `sec-websocket-accept`; text and binary messages (masked; empty, 20 B,
   1 MiB random, a text fragmented inside its characters) come back byte for byte, unmasked;
   a ping comes back as its pong; our close 4001 "bye from client" is echoed with 4001 and the
   server ends the stream with END_STREAM (after which we end ours);
3. the refusals, each on a stream of its own: `:protocol` other than websocket -> 501; no
   `sec-websocket-version` -> 400; `sec-websocket-version: 8` -> 400 naming 13; an ordinary
   CONNECT (no `:protocol`, so no `:scheme` or `:path` either: RFC 9113 8.5) -> 400.

Prints one "ok" line per check, then "python h2 client: ok: ..."; exit 0 if all passed,
otherwise 1 with "FAIL: ..." lines.
"""

import argparse
import asyncio
import ssl
import sys
import urllib.parse

import h2.config
import h2.connection
import h2.events
import h2.settings

import messages as m
import wsframe as wf

STEP_TIMEOUT = 15
STREAM_WINDOW = 1 << 20
MAX_MESSAGE = 64 * m.MIB


class Failure(Exception):
    pass


class Stream:
    """What arrived on one stream."""

    def __init__(self):
        self.response = None
        self.data = bytearray()
        self.ended = False
        self.reset = None
        self.changed = asyncio.Event()


class Client:
    def __init__(self, reader, writer, scheme, authority):
        self.reader, self.writer = reader, writer
        self.scheme, self.authority = scheme, authority
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW}
        )
        self.streams = {}
        self.settings = asyncio.Event()
        self.pending = {}  # stream id -> bytes waiting for the send window
        self.closed = False

    async def start(self):
        self.conn.initiate_connection()
        await self.flush()
        self.task = asyncio.create_task(self.read_loop())
        try:
            await asyncio.wait_for(self.settings.wait(), STEP_TIMEOUT)
        except asyncio.TimeoutError:
            raise Failure(f"no SETTINGS from the server in {STEP_TIMEOUT} s") from None

    async def flush(self):
        for stream_id, out in list(self.pending.items()):
            while out:
                n = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size, len(out))
                if n <= 0:
                    break
                self.conn.send_data(stream_id, bytes(out[:n]))
                del out[:n]
            if not out:
                del self.pending[stream_id]
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def read_loop(self):
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                for event in self.conn.receive_data(data):
                    self.event(event)
                await self.flush()
        except Exception as e:  # the connection's end is seen by every waiting stream
            print(f"python h2 client: connection error: {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            self.closed = True
            self.settings.set()
            for s in self.streams.values():
                s.changed.set()

    def event(self, event):
        s = self.streams.get(getattr(event, "stream_id", None))
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings.set()
        elif isinstance(event, h2.events.ResponseReceived) and s:
            s.response = dict((n.decode(), v.decode()) for n, v in event.headers)
        elif isinstance(event, h2.events.DataReceived) and s:
            s.data += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded) and s:
            s.ended = True
        elif isinstance(event, h2.events.StreamReset) and s:
            s.reset = event.error_code
        if s:
            s.changed.set()

    def request(self, path, protocol="websocket", version="13", pseudo=True):
        """Opens a stream with a CONNECT (extended when `protocol`); returns its id."""
        headers = [(":method", "CONNECT")]
        if protocol is not None:
            headers.append((":protocol", protocol))
        if pseudo:
            headers += [(":scheme", self.scheme), (":path", path)]
        headers.append((":authority", self.authority))
        if version is not None:
            headers.append(("sec-websocket-version", version))
        stream_id = self.conn.get_next_available_stream_id()
        self.streams[stream_id] = Stream()
        self.conn.send_headers(stream_id, headers)
        return stream_id

    async def wait(self, stream_id, what, ready):
        s = self.streams[stream_id]
        deadline = asyncio.get_running_loop().time() + STEP_TIMEOUT
        while not ready(s):
            if s.reset is not None:
                raise Failure(f"{what}: the server reset the stream ({s.reset!r})")
            if self.closed:
                raise Failure(f"{what}: the connection ended")
            s.changed.clear()
            left = deadline - asyncio.get_running_loop().time()
            try:
                await asyncio.wait_for(s.changed.wait(), max(left, 0))
            except asyncio.TimeoutError:
                raise Failure(f"{what}: nothing in {STEP_TIMEOUT} s") from None
        return s

    async def send(self, stream_id, data, end=False):
        self.pending.setdefault(stream_id, bytearray()).extend(data)
        await self.flush()
        while end and stream_id in self.pending:
            # Wait for window updates (processed by the read loop) before ending the stream.
            await asyncio.sleep(0.01)
            await self.flush()
        if end:
            self.conn.end_stream(stream_id)
            await self.flush()


async def websocket(client, path):
    """Check 2: one WebSocket, its messages and its close."""
    sid = client.request(path)
    await client.flush()
    s = await client.wait(sid, "the answer to the extended CONNECT", lambda s: s.response is not None)
    if s.response.get(":status") != "200":
        raise Failure(f"extended CONNECT: status {s.response.get(':status')}, expected 200")
    if "sec-websocket-accept" in s.response:
        raise Failure("extended CONNECT: the 200 has a sec-websocket-accept (RFC 8441 has no key)")
    parser = wf.Parser(masked=False, max_payload=MAX_MESSAGE)
    assembler = wf.Assembler(MAX_MESSAGE)
    frames = []

    async def next_frame(what):
        while not frames:
            await client.wait(sid, what, lambda s: s.data or s.ended)
            if s.data:
                chunk = bytes(s.data)
                s.data.clear()
                frames.extend(parser.feed(chunk))
            elif s.ended:
                raise Failure(f"{what}: the stream ended")
        return frames.pop(0)

    async def next_message(what):
        while True:
            fin, opcode, payload = await next_frame(what)
            if opcode == wf.PING:
                await client.send(sid, wf.encode(wf.PONG, payload, mask=True))
                continue
            if opcode in (wf.PONG, wf.CLOSE):
                return opcode, payload
            message = assembler.add(fin, opcode, payload)
            if message is not None:
                return wf.TEXT if message[0] else wf.BINARY, message[1]

    sent = [
        ("text 0 B", wf.TEXT, b"", None),
        ("binary 0 B", wf.BINARY, b"", None),
        ("text 20 B", wf.TEXT, b"twenty bytes of text", None),
        ("binary 20 B", wf.BINARY, bytes((0xF0 + i) % 256 for i in range(20)), None),
        ("text 1 MiB random", wf.TEXT, m.random_text(1, m.MIB), None),
        ("binary 1 MiB random", wf.BINARY, m.random_bytes(2, m.MIB), None),
        ("text fragmented", wf.TEXT, b"fragmented text: " + m.random_text(3, 2000), [5, 0, 1, 20, 3, 700]),
    ]
    for name, opcode, payload, sizes in sent:
        if sizes is None:
            await client.send(sid, wf.encode(opcode, payload, mask=True))
        else:
            parts = m.split(payload, sizes)
            for i, part in enumerate(parts):
                frame_opcode = opcode if i == 0 else wf.CONT
                await client.send(sid, wf.encode(frame_opcode, part, fin=i == len(parts) - 1, mask=True))
        got_opcode, got = await next_message(f"the echo of {name}")
        if got_opcode != opcode or got != payload:
            kind = {wf.TEXT: "text", wf.BINARY: "binary", wf.PONG: "pong", wf.CLOSE: "close"}[got_opcode]
            raise Failure(f"the echo of {name}: got {kind}: {m.describe_difference(payload, got)}")
    await client.send(sid, wf.encode(wf.PING, b"ping from client", mask=True))
    got_opcode, got = await next_message("the pong")
    if (got_opcode, got) != (wf.PONG, b"ping from client"):
        raise Failure(f"the pong: got opcode {got_opcode:#x} {got!r}")
    await client.send(sid, wf.encode(wf.CLOSE, wf.close_payload(*m.CLIENT_CLOSE), mask=True))
    got_opcode, got = await next_message("the close echo")
    if got_opcode != wf.CLOSE or wf.parse_close(got)[0] != m.CLIENT_CLOSE[0]:
        raise Failure(f"the close echo: got opcode {got_opcode:#x} {got!r}")
    await client.wait(sid, "END_STREAM after the close", lambda s: s.ended)
    await asyncio.sleep(0.05)  # a reset that follows the END_STREAM arrives with it
    done = f"{len(sent)} messages echoed (1 fragmented), pong, close {m.CLIENT_CLOSE[0]} echoed, END_STREAM"
    if s.reset is None:
        await client.send(sid, b"", end=True)
        return f"{done} both ways"
    # RFC 9113 8.1: after a complete response a server may reset with NO_ERROR, telling the
    # client to stop sending (hyper does, once the WebSocket is done). Anything else is an
    # abnormal end.
    if s.reset != 0:
        raise Failure(f"after END_STREAM the server reset the stream ({s.reset!r})")
    return f"{done}, then RST_STREAM(NO_ERROR) from the server"


async def refusal(client, path, what, status, **request):
    sid = client.request(path, **request)
    await client.flush()
    s = await client.wait(sid, what, lambda s: s.response is not None)
    got = s.response.get(":status")
    if got != str(status):
        raise Failure(f"{what}: status {got}, expected {status}")
    if status == 400 and request.get("version") == "8" and s.response.get("sec-websocket-version") != "13":
        raise Failure(f"{what}: the 400 does not name sec-websocket-version: 13")
    await client.wait(sid, f"{what}: the end of the refusal", lambda s: s.ended)
    return f"{what}: {got}"


async def connect(url, cacert):
    parsed = urllib.parse.urlsplit(url)
    tls = parsed.scheme == "wss"
    if parsed.scheme not in ("ws", "wss") or not parsed.hostname:
        raise Failure(f"{url}: expected ws://HOST:PORT/PATH or wss://HOST:PORT/PATH")
    port = parsed.port or (443 if tls else 80)
    context = None
    if tls:
        if not cacert:
            raise Failure("a wss:// URL needs --cacert FILE (the only CA trusted)")
        context = ssl.create_default_context(cafile=cacert)
        context.set_alpn_protocols(["h2"])
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(parsed.hostname, port, ssl=context), STEP_TIMEOUT
    )
    if tls:
        alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        if alpn != "h2":
            raise Failure(f"the server chose {alpn!r} by ALPN, not h2")
    client = Client(reader, writer, "https" if tls else "http", parsed.netloc)
    await client.start()
    return client, (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")


async def run(url, cacert):
    results = []
    client, path = await connect(url, cacert)
    if client.conn.remote_settings.enable_connect_protocol != 1:
        raise Failure("the server's SETTINGS do not enable the extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL)")
    results.append("SETTINGS_ENABLE_CONNECT_PROTOCOL = 1")
    results.append(await websocket(client, path))
    results.append(await refusal(client, path, ":protocol connect-udp", 501, protocol="connect-udp"))
    results.append(await refusal(client, path, "no sec-websocket-version", 400, version=None))
    results.append(await refusal(client, path, "sec-websocket-version 8", 400, version="8"))
    # An ordinary CONNECT (RFC 9113 8.5: :authority only, no :scheme or :path; with them it is
    # malformed, and the server's HTTP/2 layer resets it before any route sees it).
    results.append(await refusal(client, path, "CONNECT without :protocol", 400, protocol=None, pseudo=False))
    client.writer.close()
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--cacert", help="for wss://: the only CA certificates trusted")
    args = parser.parse_args()
    try:
        results = asyncio.run(asyncio.wait_for(run(args.url, args.cacert), 4 * STEP_TIMEOUT))
    except (Failure, wf.ProtocolError, OSError, asyncio.TimeoutError) as e:
        print(f"python h2 client: FAIL: {type(e).__name__ + ': ' if not isinstance(e, Failure) else ''}{e}", file=sys.stderr)
        return 1
    for r in results:
        print(f"python h2 client: checked: {r}")
    print(f"python h2 client: ok: {len(results)} checks over HTTP/2 ({'; '.join(results[1:3])}, ...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
