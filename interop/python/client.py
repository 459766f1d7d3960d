"""Python `websockets` as a client of `wsx serve` (scripts/interop).

Usage: client.py URL [--deflate | --no-deflate] [--expect-deflate] [--server-close-url URL2]

Sends the message set of messages.py and checks every echo byte for byte and by type (text or
binary), pings with payloads and waits for the matching pongs, then closes with 4001
"bye from client" and checks that the server echoed the code and closed the TCP connection
promptly. With --server-close-url, a second connection, to URL2, must be closed by the server
with 4002 "bye from server", cleanly. Exit status 0 when everything matched; otherwise 1, with
the mismatch on stderr.
"""

import argparse
import asyncio
import sys
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import messages as m

STEP_TIMEOUT = 15  # seconds for one echo, pong or close
CLOSE_DEADLINE = 3  # a closing handshake taking longer did not end cleanly


class Fail(Exception):
    pass


def check_extensions(ws, expect_deflate):
    agreed = ws.response.headers.get("Sec-WebSocket-Extensions")
    names = [ext.name for ext in ws.protocol.extensions]
    if expect_deflate:
        if not (agreed or "").lower().startswith("permessage-deflate") or names != ["permessage-deflate"]:
            raise Fail(f"expected permessage-deflate to be agreed, got {agreed!r} (active: {names})")
    elif agreed is not None or names:
        raise Fail(f"expected no extension, got {agreed!r} (active: {names})")
    return agreed or "none"


async def echo(ws, name, is_text, payload, fragments):
    what = f"echo of {name} ({len(payload)} B)"
    if fragments is not None:
        # An iterable is sent as fragments (bytes with text=True: text frames, split anywhere).
        await ws.send(fragments, text=is_text)
    elif is_text:
        await ws.send(payload.decode())
    else:
        await ws.send(payload)
    try:
        got = await asyncio.wait_for(ws.recv(), STEP_TIMEOUT)
    except asyncio.TimeoutError:
        raise Fail(f"{what}: nothing received in {STEP_TIMEOUT} s") from None
    except ConnectionClosed as exc:
        raise Fail(f"{what}: the connection closed: {exc}") from None
    if isinstance(got, str) != is_text:
        raise Fail(f"{what}: expected a {'text' if is_text else 'binary'} message, "
                   f"got {'text' if isinstance(got, str) else 'binary'}")
    got = got.encode() if isinstance(got, str) else got
    if got != payload:
        raise Fail(f"{what}: {m.describe_difference(payload, got)}")


async def ping(ws, payload):
    # websockets completes the waiter only when a pong with exactly this payload arrives.
    waiter = await ws.ping(payload)
    try:
        await asyncio.wait_for(waiter, STEP_TIMEOUT)
    except asyncio.TimeoutError:
        raise Fail(f"no pong with the payload of a ping of {len(payload)} B in {STEP_TIMEOUT} s") from None


async def client_close(ws):
    """We close with 4001 "bye from client": the server must echo the code and end TCP."""
    code, reason = m.CLIENT_CLOSE
    started = time.monotonic()
    await asyncio.wait_for(ws.close(code, reason), STEP_TIMEOUT)
    took = time.monotonic() - started
    received = ws.protocol.close_rcvd
    if received is None:
        raise Fail(f"our close {code}: no close frame came back")
    if received.code != code:
        raise Fail(f"our close {code}: the server echoed {received.code} {received.reason!r}")
    if ws.protocol.close_rcvd_then_sent is not False:
        raise Fail("our close: the server's close frame came before ours")
    if took > CLOSE_DEADLINE:
        raise Fail(f"our close: took {took:.1f} s; the server did not close the TCP connection")


async def server_close(ws):
    """The server must close with 4002 "bye from server", then end TCP."""
    code, reason = m.SERVER_CLOSE
    started = time.monotonic()
    try:
        got = await asyncio.wait_for(ws.recv(), STEP_TIMEOUT)
        raise Fail(f"the server's close: got a message of {len(got)} {'chars' if isinstance(got, str) else 'B'} instead")
    except asyncio.TimeoutError:
        raise Fail(f"the server's close: nothing received in {STEP_TIMEOUT} s") from None
    except ConnectionClosed:
        pass
    await asyncio.wait_for(ws.wait_closed(), STEP_TIMEOUT)
    took = time.monotonic() - started
    received = ws.protocol.close_rcvd
    if received is None or (received.code, received.reason) != (code, reason):
        got = "no close frame" if received is None else f"{received.code} {received.reason!r}"
        raise Fail(f"expected the server's close {code} {reason!r}, got {got}")
    if ws.protocol.close_rcvd_then_sent is not True:
        raise Fail("the server's close: the closing handshake did not complete")
    if took > CLOSE_DEADLINE:
        raise Fail(f"the server's close: took {took:.1f} s; the server did not close the TCP connection")


def open_connection(url, deflate):
    return connect(
        url,
        compression="deflate" if deflate else None,
        max_size=64 * m.MIB,
        ping_interval=None,
        close_timeout=5,
    )


async def run(url, deflate, expect_deflate, server_close_url):
    async with open_connection(url, deflate) as ws:
        extensions = check_extensions(ws, expect_deflate)
        messages = m.message_set()
        for name, is_text, payload, fragments in messages:
            await echo(ws, name, is_text, payload, fragments)
        for payload in m.PING_PAYLOADS:
            await ping(ws, payload)
        await client_close(ws)
    closes = f"client close {m.CLIENT_CLOSE[0]}"
    if server_close_url:
        async with open_connection(server_close_url, deflate) as ws:
            check_extensions(ws, expect_deflate)
            await server_close(ws)
        closes += f", server close {m.SERVER_CLOSE[0]}"
    return f"{len(messages)} messages, {len(m.PING_PAYLOADS)} pings, {closes}; extensions: {extensions}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--deflate", dest="deflate", action="store_true", help="offer permessage-deflate")
    parser.add_argument("--no-deflate", dest="deflate", action="store_false", help="do not offer it (default)")
    parser.add_argument("--expect-deflate", action="store_true", help="the server must agree to it")
    parser.add_argument("--server-close-url", help="a URL where the server closes with 4002 (see above)")
    args = parser.parse_args()
    try:
        summary = asyncio.run(run(args.url, args.deflate, args.expect_deflate, args.server_close_url))
    except Fail as exc:
        print(f"python client: FAIL: {exc}", file=sys.stderr)
        return 1
    except (OSError, ConnectionClosed) as exc:
        print(f"python client: FAIL: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"python client: ok: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
