"""A plain echo server on Python `websockets`, for scripts/bench-deflate (not a test peer: it
checks nothing). Usage: python bench_echo.py PORT

permessage-deflate on the terms `wsx serve` uses by default, so that the benchmark compares the
cost of the same work: compression level 1 (memLevel 8, zlib's default), no context takeover
either way, every message compressed. A client that does not offer the extension gets plain
frames. Prints "listening on 127.0.0.1:PORT" once it accepts connections.
"""

import asyncio
import sys

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory


async def echo(ws):
    try:
        async for message in ws:
            await ws.send(message)
    except ConnectionClosed:
        pass


async def main(port):
    deflate = ServerPerMessageDeflateFactory(
        server_no_context_takeover=True,
        client_no_context_takeover=True,
        compress_settings={"level": 1, "memLevel": 8},
    )
    async with serve(
        echo, "127.0.0.1", port, compression=None, extensions=[deflate], max_size=64 << 20, ping_interval=None
    ) as server:
        print(f"listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
