"""Python `websockets` as a client of `wsx serve` (scripts/interop).

Usage: client.py URL [--deflate | --no-deflate] [--expect-deflate] [--server-close-url URL2]
                 [--cacert FILE] [--untrusted-cacert FILE] [--plain-refused-url URL3]

Sends the message set of messages.py and checks every echo byte for byte and by type (text or
binary), pings with payloads and waits for the matching pongs, then closes with 4001
"bye from client" and checks that the server echoed the code and closed the TCP connection
promptly. With --server-close-url, a second connection, to URL2, must be closed by the server
with 4002 "bye from server", cleanly.

Over TLS (wss:// URLs, --cacert required): the client trusts only the CA certificates of
--cacert (ssl.create_default_context(cafile=...): the certificate and its name are verified),
checks that each connection is TLS and reports its version and cipher. With --untrusted-cacert,
a connection that trusts only that CA must first fail certificate verification; with
--plain-refused-url, a plain ws:// connection to the TLS port must be refused with HTTP 400
within 5 s, not hang.

Exit status 0 when everything matched; otherwise 1, with the mismatch on stderr.
"""

import argparse
import asyncio
import ssl
import sys
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

import messages as m

STEP_TIMEOUT = 15  # seconds for one echo, pong or close
CLOSE_DEADLINE = 3  # a closing handshake taking longer did not end cleanly
REFUSAL_DEADLINE = 5  # a connection that must be refused, and is not by then, hangs


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
    """We close with 4001 "bye from client": the server must echo the code and reason, and end TCP."""
    code, reason = m.CLIENT_CLOSE
    started = time.monotonic()
    await asyncio.wait_for(ws.close(code, reason), STEP_TIMEOUT)
    took = time.monotonic() - started
    received = ws.protocol.close_rcvd
    if received is None:
        raise Fail(f"our close {code}: no close frame came back")
    if (received.code, received.reason) != (code, reason):
        raise Fail(f"our close {code} {reason!r}: the server echoed {received.code} {received.reason!r}")
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


def trust_only(cafile):
    """An SSL context that trusts only the CAs of `cafile` (not the system's), and verifies the
    certificate and the host name (the defaults of create_default_context)."""
    context = ssl.create_default_context(cafile=cafile)
    if context.verify_mode != ssl.CERT_REQUIRED or not context.check_hostname:
        raise Fail("the SSL context does not verify the certificate and its name")
    return context


def open_connection(url, deflate, ssl_context=None):
    return connect(
        url,
        compression="deflate" if deflate else None,
        max_size=64 * m.MIB,
        ping_interval=None,
        close_timeout=5,
        ssl=ssl_context,
    )


def check_tls(ws, url):
    """The connection is TLS exactly when the URL is wss://; returns "TLSv1.3 CIPHER" or None."""
    ssl_object = ws.transport.get_extra_info("ssl_object")
    if url.startswith("wss://") != (ssl_object is not None):
        raise Fail(f"{url}: the connection is {'TLS' if ssl_object else 'not TLS'}")
    return f"{ssl_object.version()} {ssl_object.cipher()[0]}" if ssl_object else None


async def connect_and_close(url, ssl_context):
    async with open_connection(url, False, ssl_context):
        pass


async def untrusted_ca_refused(url, cafile):
    """A client trusting only another CA must fail to verify the server's certificate."""
    what = f"a connection trusting only --untrusted-cacert {cafile}"
    try:
        await asyncio.wait_for(connect_and_close(url, trust_only(cafile)), REFUSAL_DEADLINE)
    except asyncio.TimeoutError:
        raise Fail(f"{what}: neither refused nor connected in {REFUSAL_DEADLINE} s") from None
    except ssl.SSLCertVerificationError as exc:
        return f"untrusted CA refused ({exc.verify_message})"
    except (OSError, InvalidStatus, ConnectionClosed) as exc:
        raise Fail(f"{what}: refused, but not by certificate verification: {type(exc).__name__}: {exc}") from None
    raise Fail(f"{what}: connected: the server's certificate was not verified")


async def plain_refused(url):
    """A plain ws:// connection to the TLS port must get an HTTP 400, quickly."""
    started = time.monotonic()
    try:
        await asyncio.wait_for(connect_and_close(url, None), REFUSAL_DEADLINE)
    except asyncio.TimeoutError:
        raise Fail(f"plain {url}: no answer in {REFUSAL_DEADLINE} s (a hang)") from None
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status != 400:
            raise Fail(f"plain {url}: expected HTTP 400, got {status}") from None
        took = (time.monotonic() - started) * 1000
        body = exc.response.body.decode(errors="replace").strip()
        return f"plain ws:// refused with 400 in {took:.0f} ms ({body!r})"
    except (OSError, ConnectionClosed) as exc:
        raise Fail(f"plain {url}: expected HTTP 400, got {type(exc).__name__}: {exc}") from None
    raise Fail(f"plain {url}: connected without TLS to the TLS port")


async def run(url, deflate, expect_deflate, server_close_url, cacert, untrusted_cacert, plain_refused_url):
    ssl_context = trust_only(cacert) if cacert else None
    refusals = []
    if untrusted_cacert:
        refusals.append(await untrusted_ca_refused(url, untrusted_cacert))
    if plain_refused_url:
        refusals.append(await plain_refused(plain_refused_url))
    async with open_connection(url, deflate, ssl_context) as ws:
        extensions = check_extensions(ws, expect_deflate)
        tls = check_tls(ws, url)
        messages = m.message_set()
        for name, is_text, payload, fragments in messages:
            await echo(ws, name, is_text, payload, fragments)
        for payload in m.PING_PAYLOADS:
            await ping(ws, payload)
        await client_close(ws)
    closes = f"client close {m.CLIENT_CLOSE[0]}"
    if server_close_url:
        async with open_connection(server_close_url, deflate, ssl_context) as ws:
            check_extensions(ws, expect_deflate)
            check_tls(ws, server_close_url)
            await server_close(ws)
        closes += f", server close {m.SERVER_CLOSE[0]}"
    summary = f"{len(messages)} messages, {len(m.PING_PAYLOADS)} pings, {closes}; extensions: {extensions}"
    if tls:
        summary += "; " + ", ".join([f"TLS: {tls}"] + refusals)
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--deflate", dest="deflate", action="store_true", help="offer permessage-deflate")
    parser.add_argument("--no-deflate", dest="deflate", action="store_false", help="do not offer it (default)")
    parser.add_argument("--expect-deflate", action="store_true", help="the server must agree to it")
    parser.add_argument("--server-close-url", help="a URL where the server closes with 4002 (see above)")
    parser.add_argument("--cacert", help="for wss://: trust only the CA certificates of this PEM file")
    parser.add_argument("--untrusted-cacert", help="a CA that did not sign the server's certificate (see above)")
    parser.add_argument("--plain-refused-url", help="a ws:// URL of the TLS port, which must answer 400")
    args = parser.parse_args()
    tls = args.url.startswith("wss://")
    if tls and not args.cacert:
        parser.error("a wss:// URL needs --cacert (the CA to trust)")
    if not tls and (args.cacert or args.untrusted_cacert or args.plain_refused_url):
        parser.error("--cacert, --untrusted-cacert and --plain-refused-url need a wss:// URL")
    try:
        summary = asyncio.run(
            run(
                args.url,
                args.deflate,
                args.expect_deflate,
                args.server_close_url,
                args.cacert,
                args.untrusted_cacert,
                args.plain_refused_url,
            )
        )
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
