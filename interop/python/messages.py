"""The interop message set (interop/README.md), shared by the Python client and server.

The same generator and the same messages exist in interop/node/messages.js and in
crates/wsx-cli/examples/interop_client.rs, so every peer sends the same bytes.
"""

import re

MIB = 1 << 20

# Close codes and reasons of the closing tests.
CLIENT_CLOSE = (4001, "bye from client")
SERVER_CLOSE = (4002, "bye from server")
# The text message that asks a server to close with SERVER_CLOSE ("close CODE REASON").
CLOSE_COMMAND = f"close {SERVER_CLOSE[0]} {SERVER_CLOSE[1]}"
# The ping a peer server sends right after the handshake.
SERVER_PING = b"ping from server"


class XorShift32:
    """Marsaglia's xorshift32: the seeded generator shared by all peers."""

    def __init__(self, seed):
        self.state = seed & 0xFFFFFFFF

    def next(self):
        x = self.state
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.state = x
        return x


def random_bytes(seed, length):
    """`length` pseudo-random bytes: each step gives 4 bytes, little-endian."""
    rng = XorShift32(seed)
    out = bytearray()
    while len(out) < length:
        out += rng.next().to_bytes(4, "little")
    return bytes(out[:length])


# Characters of 1 to 4 bytes in UTF-8, so that frame and fragment boundaries fall inside them.
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 éßñ€✓中😀𝄞"


def random_text(seed, length):
    """Pseudo-random text of exactly `length` UTF-8 bytes, returned encoded."""
    rng = XorShift32(seed)
    encoded = [c.encode() for c in ALPHABET]
    out = bytearray()
    while True:
        c = encoded[rng.next() % len(encoded)]
        if len(out) + len(c) > length:
            break
        out += c
    out += b"." * (length - len(out))
    return bytes(out)


PATTERN = b"wsx interop: the quick brown fox jumps over the lazy dog 0123456789\n"


def compressible_text(length):
    return (PATTERN * (length // len(PATTERN) + 1))[:length]


def compressible_bytes(length):
    return bytes(i % 251 for i in range(length))


def split(data, sizes):
    """`data` cut into fragments of the given sizes, the rest in a last fragment."""
    out, at = [], 0
    for n in sizes:
        out.append(data[at : at + n])
        at += n
    out.append(data[at:])
    return out


def message_set():
    """(name, is_text, payload bytes, fragments or None) for every test message."""
    frag_text = b"fragmented text: " + random_text(3, 2000)
    frag_binary = b"fragmented binary: " + random_bytes(4, 100_000)
    return [
        ("text 0 B", True, b"", None),
        ("binary 0 B", False, b"", None),
        ("text 20 B", True, b"twenty bytes of text", None),
        ("binary 20 B", False, bytes((0xF0 + i) & 0xFF for i in range(20)), None),
        ("text 1 MiB compressible", True, compressible_text(MIB), None),
        ("binary 1 MiB compressible", False, compressible_bytes(MIB), None),
        ("text 1 MiB random", True, random_text(1, MIB), None),
        ("binary 1 MiB random", False, random_bytes(2, MIB), None),
        # Byte boundaries: some fall inside a multi-byte character; one fragment is empty.
        ("text fragmented", True, frag_text, split(frag_text, [5, 0, 1, 20, 3, 700])),
        ("binary fragmented", False, frag_binary, split(frag_binary, [1, 0, 4096, 65536])),
    ]


PING_PAYLOADS = [b"", b"ping from client", bytes(range(125))]

# What a client sends on each connection to a peer server, in order: connection 1 ends with
# CLOSE_COMMAND (the server closes), connection 2 with the client's close.
def first_connection():
    return message_set() + [("close command", True, CLOSE_COMMAND.encode(), None)]


def second_connection():
    return [("text before our close", True, b"hello, then bye", None)]


def parse_close_command(text):
    """(code, reason) of a text message "close CODE REASON", else None."""
    match = re.fullmatch(r"close ([0-9]{4})(?: (.*))?", text, re.DOTALL)
    return (int(match[1]), match[2] or "") if match else None


def describe_difference(expected, got):
    """Where two payloads first differ, for a failure message."""
    for i, (a, b) in enumerate(zip(expected, got)):
        if a != b:
            return (
                f"{len(expected)} bytes expected, {len(got)} received; "
                f"first difference at byte {i}: expected {a:#04x}, got {b:#04x}"
            )
    return f"{len(expected)} bytes expected, {len(got)} received (one is a prefix of the other)"
