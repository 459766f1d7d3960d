"""A minimal WebSocket frame codec (RFC 6455 section 5) for the HTTP/2 peers, written here so
that the HTTP/2 interop tests depend on no WebSocket library: h2_server.py and h2_client.py
carry these frames in the DATA frames of an extended CONNECT stream (RFC 8441).

No extensions (the RSV bits must be 0), no permessage-deflate.
"""

import os
import struct

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPCODES = (CONT, TEXT, BINARY)
CONTROL_OPCODES = (CLOSE, PING, PONG)


class ProtocolError(Exception):
    """The peer broke RFC 6455: the close code to send and why."""

    def __init__(self, code, why):
        super().__init__(why)
        self.code = code


def encode(opcode, payload, fin=True, mask=False):
    """One frame; masked with a random key when `mask` (a client's frames)."""
    head = bytearray([(0x80 if fin else 0) | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head.append(bit | n)
    elif n < 1 << 16:
        head.append(bit | 126)
        head += struct.pack("!H", n)
    else:
        head.append(bit | 127)
        head += struct.pack("!Q", n)
    if not mask:
        return bytes(head) + bytes(payload)
    key = os.urandom(4)
    return bytes(head) + key + apply_mask(payload, key)


def apply_mask(payload, key):
    """XOR with the 4-byte key (its own inverse)."""
    if not payload:
        return b""
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(len(payload), "big")


def close_payload(code, reason=""):
    return struct.pack("!H", code) + reason.encode()


def parse_close(payload):
    """(code, reason) of a close frame's payload; (None, "") when it has no code."""
    if len(payload) == 0:
        return None, ""
    if len(payload) == 1:
        raise ProtocolError(1002, "a close frame with a 1-byte payload")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError as e:
        raise ProtocolError(1007, f"a close reason that is not UTF-8 ({e})") from None
    return struct.unpack("!H", payload[:2])[0], reason


class Parser:
    """Frames out of a byte stream fed in pieces (DATA frames do not follow frame boundaries).

    `masked`: whether the peer's frames must be masked (True on the server side).
    `max_payload`: the largest frame payload accepted, checked on the header, before the
    payload is buffered.
    """

    def __init__(self, masked, max_payload):
        self.masked = masked
        self.max_payload = max_payload
        self.buffer = bytearray()

    def feed(self, data):
        """The whole frames now complete, as (fin, opcode, payload) tuples, unmasked."""
        self.buffer += data
        frames = []
        while True:
            frame = self._next()
            if frame is None:
                return frames
            frames.append(frame)

    def _next(self):
        b = self.buffer
        if len(b) < 2:
            return None
        fin, rsv, opcode = b[0] & 0x80, b[0] & 0x70, b[0] & 0x0F
        masked, n = b[1] & 0x80, b[1] & 0x7F
        if rsv:
            raise ProtocolError(1002, f"RSV bits set ({rsv:#x}) without an extension")
        if opcode not in DATA_OPCODES + CONTROL_OPCODES:
            raise ProtocolError(1002, f"reserved opcode {opcode:#x}")
        if bool(masked) != self.masked:
            raise ProtocolError(1002, "a masked frame from a server" if masked else "an unmasked frame from a client")
        at = 2
        if n == 126:
            if len(b) < 4:
                return None
            n = struct.unpack("!H", b[2:4])[0]
            at = 4
        elif n == 127:
            if len(b) < 10:
                return None
            n = struct.unpack("!Q", b[2:10])[0]
            at = 10
        if opcode in CONTROL_OPCODES and (n > 125 or not fin):
            raise ProtocolError(1002, "a control frame longer than 125 bytes or fragmented")
        if n > self.max_payload:
            raise ProtocolError(1009, f"a frame of {n} bytes (the limit is {self.max_payload})")
        key = b""
        if masked:
            if len(b) < at + 4:
                return None
            key = bytes(b[at : at + 4])
            at += 4
        if len(b) < at + n:
            return None
        payload = bytes(b[at : at + n])
        del b[: at + n]
        if masked:
            payload = apply_mask(payload, key)
        return bool(fin), opcode, payload


class Assembler:
    """Messages out of frames: returns (is_text, payload) when a message is complete, checks
    continuation order and UTF-8 of whole text messages, bounds the message size."""

    def __init__(self, max_message):
        self.max_message = max_message
        self.opcode = None
        self.parts = []
        self.size = 0

    def add(self, fin, opcode, payload):
        if opcode == CONT and self.opcode is None:
            raise ProtocolError(1002, "a continuation frame outside a fragmented message")
        if opcode != CONT and self.opcode is not None:
            raise ProtocolError(1002, "a new message inside a fragmented one")
        if opcode != CONT:
            self.opcode = opcode
        self.size += len(payload)
        if self.size > self.max_message:
            raise ProtocolError(1009, f"a message over {self.max_message} bytes")
        self.parts.append(payload)
        if not fin:
            return None
        data = b"".join(self.parts)
        is_text = self.opcode == TEXT
        self.opcode, self.parts, self.size = None, [], 0
        if is_text:
            try:
                data.decode()
            except UnicodeDecodeError as e:
                raise ProtocolError(1007, f"a text message that is not UTF-8 ({e})") from None
        return is_text, data
