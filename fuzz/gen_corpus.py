#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets into fuzz/corpus/<target>/.

Run it after changing a target's input layout (documented at the top of each target and in
fuzz/README.md), and check in its output. Each seed is named after what it holds; the files are
small (a few KB at most). The frames come from RFC 6455 §5.7 and RFC 7692 §7.2.3, plus typical
handshakes and hostile cases.
"""

import base64
import hashlib
import os
import shutil
import struct
import sys
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

# Opcodes.
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

# RFC 6455 §5.7's masking key.
RFC_KEY = bytes([0x37, 0xFA, 0x21, 0x3D])
# A zero key leaves the payload readable, which helps the fuzzer mutate masked frames.
ZERO_KEY = bytes(4)


def frame(opcode, payload=b"", fin=True, rsv1=False, key=None, rsv=0, length=None):
    """One frame; `length` overrides the declared payload length (for hostile frames)."""
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | rsv | opcode
    n = len(payload) if length is None else length
    mask_bit = 0x80 if key is not None else 0
    if n < 126:
        head = bytes([b0, mask_bit | n])
    elif n < 1 << 16:
        head = bytes([b0, mask_bit | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, mask_bit | 127]) + struct.pack(">Q", n)
    if key is None:
        return head + payload
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def deflate(data, wbits=15, level=6, compressor=None):
    """permessage-deflate: raw DEFLATE with a sync flush, the 00 00 ff ff tail removed."""
    c = compressor or zlib.compressobj(level, zlib.DEFLATED, -wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def close_payload(code, reason=b""):
    return struct.pack(">H", code) + reason


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    assert len(data) <= 4096, (target, name, len(data))
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- connection

def connection_input(client, wire, deflate_flags=0, deflate_bits=0x3F, ops=b"\x3f", echo=False, preset=0):
    flags = (1 if client else 0) | (2 if echo else 0) | (preset << 2)
    return bytes([flags, deflate_flags, deflate_bits, len(ops)]) + ops + wire


def connection_seeds():
    # Frames as a server receives them (masked) and as a client does (not masked).
    def srv(*frames):
        return b"".join(frames)

    hello_masked = frame(TEXT, b"Hello", key=RFC_KEY)  # RFC 6455 §5.7
    assert hello_masked == bytes.fromhex("818537fa213d7f9f4d5158")
    hello = frame(TEXT, b"Hello")
    assert hello == bytes.fromhex("810548656c6c6f")
    frag = frame(TEXT, b"Hel", fin=False) + frame(CONT, b"lo")
    assert frag == bytes.fromhex("010348656c80026c6f")
    ping = frame(PING, b"Hello")
    pong_masked = frame(PONG, b"Hello", key=RFC_KEY)
    binary256 = frame(BINARY, bytes(range(256)))
    assert binary256[:4] == bytes.fromhex("827e0100")

    seeds = {
        # RFC 6455 §5.7, as each role receives it.
        "server_rfc_examples": connection_input(False, srv(
            hello_masked, pong_masked,
            frame(TEXT, b"Hel", fin=False, key=ZERO_KEY), frame(PING, b"Hello", key=ZERO_KEY),
            frame(CONT, b"lo", key=ZERO_KEY),
            frame(BINARY, bytes(range(256)), key=RFC_KEY),
            frame(CLOSE, close_payload(1000, b"bye"), key=ZERO_KEY))),
        "client_rfc_examples": connection_input(True, hello + frag + ping + binary256
                                                + frame(PONG, b"") + frame(CLOSE, close_payload(1001))),
        # Chunked byte by byte, with read_chunk, and mixed.
        "server_bytewise": connection_input(False, hello_masked + frame(TEXT, "héllo ✓".encode(), key=RFC_KEY),
                                            ops=b"\x00"),
        "server_read_chunk": connection_input(False, frame(TEXT, "grüße ".encode() * 20, key=RFC_KEY)
                                              + frame(BINARY, b"x" * 300, fin=False, key=ZERO_KEY)
                                              + frame(CONT, b"y" * 300, key=ZERO_KEY), ops=b"\x40\x47\x00\x7f"),
        "client_mixed_ops": connection_input(True, frag * 3 + ping * 3, ops=b"\x02\x41\x80\xc3\x05\xc0\xc1"),
        # Timers, an application close, echoes.
        "server_timers_close": connection_input(False, srv(hello_masked, frame(PING, b"p", key=ZERO_KEY),
                                                           frame(CLOSE, close_payload(1000), key=ZERO_KEY)),
                                                ops=b"\x0a\xe8\xc1\x3f", echo=True),
        "client_echo": connection_input(True, hello + binary256 + frag, echo=True, preset=2),
        "server_keepalive": connection_input(False, hello_masked, ops=b"\x3f\xe8\xe8\xe8\xe8\x3f"),
        # A ping flood while the driver keeps reading (kind 2) with a tiny write buffer.
        "server_ping_flood": connection_input(False, frame(PING, b"x" * 125, key=ZERO_KEY) * 20,
                                              ops=b"\xbf", preset=1),
        # Hostile frames.
        "server_unmasked": connection_input(False, hello),
        "client_masked": connection_input(True, hello_masked),
        "server_reserved_opcode": connection_input(False, frame(0x3, b"x", key=ZERO_KEY) + frame(0xB, b"", key=ZERO_KEY)),
        "server_rsv_bits": connection_input(False, frame(TEXT, b"x", key=ZERO_KEY, rsv=0x20)
                                            + frame(TEXT, b"y", key=ZERO_KEY, rsv=0x10)),
        "client_rsv1_without_deflate": connection_input(True, frame(TEXT, b"x", rsv1=True)),
        "server_fragmented_ping": connection_input(False, frame(PING, b"a", fin=False, key=ZERO_KEY)),
        "client_long_ping": connection_input(True, frame(PING, b"p" * 126)),
        "server_huge_length": connection_input(False, frame(BINARY, b"abc", key=ZERO_KEY, length=0x7FFF_FFFF_FFFF_FFFF)),
        "client_length_msb": connection_input(True, bytes.fromhex("82ff8000000000000001") + b"x"),
        "client_frame_too_large": connection_input(True, frame(BINARY, b"z" * 2000)),
        "server_message_too_large": connection_input(False, b"".join(
            frame(BINARY if i == 0 else CONT, b"m" * 200, fin=(i == 5), key=ZERO_KEY) for i in range(6))),
        "client_too_many_fragments": connection_input(True, frame(TEXT, b"a", fin=False)
                                                      + frame(CONT, b"b", fin=False) * 10 + frame(CONT, b"c")),
        "server_continuation_first": connection_input(False, frame(CONT, b"x", key=ZERO_KEY)),
        "client_text_in_fragmented": connection_input(True, frame(TEXT, b"a", fin=False) + frame(TEXT, b"b")),
        # Autobahn 6.x: invalid UTF-8 (a surrogate), and a character split across frames.
        "server_invalid_utf8": connection_input(False, frame(TEXT, bytes.fromhex(
            "cebae1bdb9cf83cebcceb5eda080656469746564"), key=ZERO_KEY)),
        "client_utf8_split": connection_input(True, frame(TEXT, "κό".encode()[:3], fin=False)
                                              + frame(CONT, "κό".encode()[3:]) + frame(TEXT, b"\xf4\x90\x80\x80")),
        "client_close_one_byte": connection_input(True, frame(CLOSE, b"\x03")),
        "server_close_1005": connection_input(False, frame(CLOSE, close_payload(1005), key=ZERO_KEY)),
        "client_close_bad_reason": connection_input(True, frame(CLOSE, close_payload(1000, b"\xff\xfe"))),
        "server_data_after_close": connection_input(False, frame(CLOSE, b"", key=ZERO_KEY) + hello_masked),
    }

    # permessage-deflate: flags 3 = offered and accepted; 0x3f = no context takeover both ways.
    hello_deflate = bytes.fromhex("f248cdc9c90700")  # RFC 7692 §7.2.3.1
    assert deflate(b"Hello") == hello_deflate
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    first, second = deflate(b"Hello", compressor=c), deflate(b"Hello", compressor=c)
    assert second == bytes.fromhex("f20011000000") or len(second) < len(first)  # §7.2.3.2: shares the context
    stored = bytes.fromhex("0005 00faff 48656c6c6f 00".replace(" ", ""))  # §7.2.3.3 (a stored block)
    bomb = deflate(bytes(200_000), level=9)
    json = b'{"type":"update","id":42,"values":[1,2,3,4,5],"text":"hello hello hello"}'
    seeds.update({
        "client_deflate_rfc7692": connection_input(True, frame(TEXT, hello_deflate, rsv1=True)
                                                   + frame(TEXT, hello_deflate[:3], fin=False, rsv1=True)
                                                   + frame(CONT, hello_deflate[3:])
                                                   + frame(TEXT, first, rsv1=True) + frame(TEXT, second, rsv1=True)
                                                   + frame(TEXT, stored, rsv1=True), deflate_flags=3),
        "server_deflate_masked": connection_input(False, frame(TEXT, hello_deflate, rsv1=True, key=RFC_KEY)
                                                  + frame(BINARY, deflate(json), rsv1=True, key=ZERO_KEY)
                                                  + frame(TEXT, json, key=ZERO_KEY), deflate_flags=3, echo=True),
        "server_deflate_no_context": connection_input(False, frame(TEXT, deflate(json), rsv1=True, key=ZERO_KEY) * 2,
                                                      deflate_flags=0x3F, deflate_bits=0x00, ops=b"\x03\x47"),
        "client_deflate_read_chunk": connection_input(True, frame(BINARY, deflate(json * 20), rsv1=True),
                                                      deflate_flags=3, ops=b"\x50"),
        "client_deflate_bomb": connection_input(True, frame(BINARY, bomb, rsv1=True), deflate_flags=3),
        "server_deflate_corrupt": connection_input(False, frame(TEXT, b"\xff\xff\xff\xff", rsv1=True, key=ZERO_KEY),
                                                   deflate_flags=3),
        "client_deflate_rsv1_continuation": connection_input(True, frame(TEXT, hello_deflate[:3], fin=False, rsv1=True)
                                                             + frame(CONT, hello_deflate[3:], rsv1=True), deflate_flags=3),
        "client_deflate_invalid_utf8": connection_input(True, frame(TEXT, deflate(b"ok \xc3\x28"), rsv1=True),
                                                        deflate_flags=3),
    })
    for name, data in seeds.items():
        write("connection", name, data)


# ---------------------------------------------------------------- close_payload

def close_seeds():
    def peer(payload, client=False, fin=True, bytewise=False, key=ZERO_KEY):
        flags = (1 if client else 0) | (0 if fin else 4) | (8 if bytewise else 0)
        return bytes([flags]) + key + payload

    def app(code, reason=b""):
        return bytes([2]) + ZERO_KEY + struct.pack(">H", code) + reason

    seeds = {
        "empty": peer(b""),
        "one_byte": peer(b"\x03"),
        "normal_reason": peer(close_payload(1000, b"bye"), key=RFC_KEY),
        "client_going_away": peer(close_payload(1001), client=True),
        "no_status_1005": peer(close_payload(1005)),
        "reserved_1004": peer(close_payload(1004)),
        "tls_1015": peer(close_payload(1015)),
        "unassigned_999": peer(close_payload(999)),
        "unassigned_2999": peer(close_payload(2999)),
        "app_3000": peer(close_payload(3000)),
        "app_4999": peer(close_payload(4999, b"x")),
        "out_of_range_5000": peer(close_payload(5000)),
        "iana_1014": peer(close_payload(1014)),
        "invalid_utf8_reason": peer(close_payload(1000, b"\xce\xba\xe1\xbd\xb9\xed\xa0\x80")),
        "reason_123_bytes": peer(close_payload(1000, "é".encode() * 61 + b"x")),
        "reason_124_bytes": peer(close_payload(1000, b"r" * 124)),
        "not_fin": peer(close_payload(1000), fin=False),
        "bytewise": peer(close_payload(1002, "ünïcödé".encode()), bytewise=True),
        "app_normal": app(1000, b"bye"),
        "app_1005": app(1005),
        "app_reason_124": app(1000, b"r" * 124),
        "app_bad_utf8": app(3000, b"\xff"),
    }
    for name, data in seeds.items():
        write("close_payload", name, data)


# ---------------------------------------------------------------- handshakes

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CLIENT_KEY = base64.b64encode(b"wsx-fuzz-key-16b")  # fuzz/src/lib.rs: CLIENT_KEY_RANDOM
ACCEPT = base64.b64encode(hashlib.sha1(CLIENT_KEY + GUID).digest())


def request_seeds():
    def req(head, limit=0xFF, headers=0x1F, chunks=b""):
        return bytes([limit, headers, len(chunks)]) + chunks + head

    rfc = (b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\n"
           b"Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n")
    browser = (b"GET /ws?room=1 HTTP/1.1\r\nHost: localhost:8080\r\nConnection: Upgrade\r\nPragma: no-cache\r\n"
               b"Cache-Control: no-cache\r\nUser-Agent: Mozilla/5.0\r\nUpgrade: websocket\r\n"
               b"Origin: http://localhost:8080\r\nSec-WebSocket-Version: 13\r\nAccept-Encoding: gzip, deflate, br\r\n"
               b"Accept-Language: en-US,en;q=0.9\r\nSec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n"
               b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n")
    seeds = {
        "rfc6455_sample": req(rfc),
        "browser": req(browser),
        "browser_bytewise": req(browser, chunks=b"\x00"),
        "browser_then_frame": req(browser + bytes.fromhex("818537fa213d7f9f4d5158"), chunks=b"\x10\x3f"),
        "lf_only": req(rfc.replace(b"\r\n", b"\n")),
        "extensions_many_lines": req(rfc[:-2] + b"Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n"
                                     b"Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10; "
                                     b"client_no_context_takeover, permessage-deflate\r\n\r\n"),
        "post": req(rfc.replace(b"GET", b"POST", 1)),
        "http10": req(rfc.replace(b"HTTP/1.1", b"HTTP/1.0", 1)),
        "version_8": req(rfc.replace(b"Version: 13", b"Version: 8")),
        "bad_key": req(rfc.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"short")),
        "two_hosts": req(rfc[:-2] + b"Host: other\r\n\r\n"),
        "obs_fold": req(rfc[:-2] + b"X-Folded: a\r\n b\r\n\r\n"),
        "too_many_headers": req(rfc, headers=3),
        "head_too_large": req(rfc, limit=4),
        "garbage": req(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
        "absolute_uri": req(rfc.replace(b"/chat", b"http://server.example.com/chat", 1)),
    }
    for name, data in seeds.items():
        write("handshake_request", name, data)


def response_seeds():
    def resp(head, flags=0x03, limits=0xFF, chunks=b""):
        return bytes([flags, limits, len(chunks)]) + chunks + head

    ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: "
    ok += ACCEPT + b"\r\n"
    seeds = {
        "plain": resp(ok + b"\r\n"),
        "protocol": resp(ok + b"Sec-WebSocket-Protocol: chat\r\n\r\n"),
        "deflate": resp(ok + b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "
                        b"client_max_window_bits=10\r\n\r\n"),
        "deflate_bytewise_then_frame": resp(ok + b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
                                            + bytes.fromhex("c107f248cdc9c90700"), chunks=b"\x00"),
        "two_protocols": resp(ok + b"Sec-WebSocket-Protocol: chat, superchat.v2\r\n\r\n"),
        "unknown_extension": resp(ok + b"Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n\r\n"),
        "bad_accept": resp(ok.replace(ACCEPT, b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") + b"\r\n"),
        "no_upgrade": resp(ok.replace(b"Upgrade: websocket\r\n", b"") + b"\r\n"),
        "refused_with_body": resp(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\n\r\nforbidden"),
        "refused_426": resp(b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n"),
        "lf_only": resp((ok + b"\r\n").replace(b"\r\n", b"\n")),
        "head_too_large": resp(ok + b"X-Pad: " + b"p" * 200 + b"\r\n\r\n", limits=0x00),
        "garbage": resp(b"SSH-2.0-OpenSSH_9.6\r\n"),
    }
    for name, data in seeds.items():
        write("handshake_response", name, data)


# ---------------------------------------------------------------- extensions

def extension_seeds():
    def ext(text, c_flags=0x00, c_bits=0xFF, s_flags=0x00, s_bits=0xFF):
        return bytes([c_flags, c_bits, s_flags, s_bits]) + text

    seeds = {
        "bare": ext(b"permessage-deflate"),
        "chrome_offer": ext(b"permessage-deflate; client_max_window_bits"),
        "all_params": ext(b"permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                          b"server_max_window_bits=10; client_max_window_bits=9", c_flags=0x3C, s_flags=0x3C),
        "quoted": ext(b'permessage-deflate; client_max_window_bits="10"; server_max_window_bits="\\1\\2"'),
        "several_offers": ext(b"x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=8, "
                              b"permessage-deflate\nfoo; bar=baz"),
        "leading_zero": ext(b"permessage-deflate; server_max_window_bits=08"),
        "out_of_range": ext(b"permessage-deflate; client_max_window_bits=16", c_bits=0x00),
        "duplicate": ext(b"permessage-deflate; server_no_context_takeover; server_no_context_takeover"),
        "unknown_param": ext(b"permessage-deflate; mode=fast"),
        "value_on_flag": ext(b"permessage-deflate; client_no_context_takeover=1"),
        "twice": ext(b"permessage-deflate, permessage-deflate"),
        "empty_elements": ext(b" , ,permessage-deflate;;, "),
        "unterminated_quote": ext(b'permessage-deflate; client_max_window_bits="10'),
        "upper_case": ext(b"PerMessage-Deflate; Client_Max_Window_Bits=15"),
    }
    for name, data in seeds.items():
        write("extensions", name, data)


# ---------------------------------------------------------------- inflate

def inflate_seeds():
    def inf(data, flags=0x00, bits=0x3F, budget=4096, ops=b"\xbf"):
        return bytes([flags, bits]) + struct.pack(">H", budget) + bytes([len(ops)]) + ops + data

    hello = bytes.fromhex("f248cdc9c90700")
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    two = deflate(b"Hello", compressor=c) + deflate(b"Hello", compressor=c)
    json = b'{"type":"update","id":42,"values":[1,2,3,4,5],"text":"hello hello hello"}'
    final_block = zlib.compressobj(6, zlib.DEFLATED, -15)
    final_block = final_block.compress(b"Hello") + final_block.flush(zlib.Z_FINISH)
    seeds = {
        "rfc7692_hello": inf(hello),
        "rfc7692_hello_split": inf(hello, ops=b"\x02\x83"),
        "shared_context": inf(two, ops=bytes([0x80 | (len(deflate(b"Hello")) - 1), 0xbf])),
        "stored_block": inf(bytes.fromhex("000500faff48656c6c6f00")),
        "final_block": inf(final_block),
        "bomb_small_budget": inf(deflate(bytes(100_000), level=9), budget=1000),
        "bomb_zero_budget": inf(deflate(b"a" * 5000, level=9), budget=0),
        "exact_budget": inf(deflate(json), budget=len(json)),
        "window_8_bits": inf(deflate(json * 10, wbits=9), bits=0x00),
        "corrupt": inf(b"\xff\xfe\xfd\xfc\x00"),
        "bytewise": inf(deflate(json), ops=b"\x00"),
        "roundtrip": inf(json * 3, flags=0x08 | 0x10, ops=b"\x8a\x3f\xbd"),
        "roundtrip_no_context": inf("grüße, κόσμε ".encode() * 30, flags=0x08 | 0x06 | 0x90, bits=0x00, ops=b"\x47\x85"),
        "roundtrip_server": inf(bytes(range(256)) * 4, flags=0x08 | 0x01 | 0x60, ops=b"\xbe\xbd"),
    }
    for name, data in seeds.items():
        write("inflate", name, data)


# ---------------------------------------------------------------- frame_header

def frame_header_seeds():
    seeds = {
        "rfc_hello": frame(TEXT, b"Hello"),
        "rfc_hello_masked": frame(TEXT, b"Hello", key=RFC_KEY),
        "len16": frame(BINARY, bytes(256)),
        "len64": bytes.fromhex("827f0000000000010000") + bytes(32),
        "len64_masked": bytes.fromhex("82ff0000000000000005") + RFC_KEY + b"Hello",
        "len64_msb": bytes.fromhex("827f8000000000000000"),
        "non_minimal": bytes.fromhex("817e0005") + b"Hello",
        "reserved_opcode": bytes.fromhex("83807f9f4d51"),
        "rsv_all": bytes.fromhex("f1 00".replace(" ", "")),
        "mask_long": bytes.fromhex("03deadbeef") + bytes(range(200)),
    }
    for name, data in seeds.items():
        write("frame_header", name, data)


def main():
    if os.path.isdir(ROOT):
        shutil.rmtree(ROOT)
    connection_seeds()
    close_seeds()
    request_seeds()
    response_seeds()
    extension_seeds()
    inflate_seeds()
    frame_header_seeds()
    total = sum(len(files) for _, _, files in os.walk(ROOT))
    print(f"wrote {total} seeds under {ROOT}", file=sys.stderr)


if __name__ == "__main__":
    main()
