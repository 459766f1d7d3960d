'use strict';
// The interop message set (interop/README.md), shared by the Node client and server.
//
// The same generator and the same messages exist in interop/python/messages.py and in
// crates/wsx-cli/examples/interop_client.rs, so every peer sends the same bytes.

const MIB = 1 << 20;

// Close codes and reasons of the closing tests.
const CLIENT_CLOSE = { code: 4001, reason: 'bye from client' };
const SERVER_CLOSE = { code: 4002, reason: 'bye from server' };
// The text message that asks a server to close with SERVER_CLOSE ("close CODE REASON").
const CLOSE_COMMAND = `close ${SERVER_CLOSE.code} ${SERVER_CLOSE.reason}`;
// The ping a peer server sends right after the handshake.
const SERVER_PING = Buffer.from('ping from server');

// Marsaglia's xorshift32: the seeded generator shared by all peers.
function xorshift32(seed) {
  let x = seed >>> 0;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

// `length` pseudo-random bytes: each step gives 4 bytes, little-endian.
function randomBytes(seed, length) {
  const next = xorshift32(seed);
  const out = Buffer.alloc(length + 4);
  for (let at = 0; at < length; at += 4) out.writeUInt32LE(next(), at);
  return out.subarray(0, length);
}

// Characters of 1 to 4 bytes in UTF-8, so that frame and fragment boundaries fall inside them.
const ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789 éßñ€✓中😀𝄞';

// Pseudo-random text of exactly `length` UTF-8 bytes, returned encoded.
function randomText(seed, length) {
  const next = xorshift32(seed);
  const chars = Array.from(ALPHABET, (c) => Buffer.from(c));
  const out = Buffer.alloc(length, '.');
  let at = 0;
  for (;;) {
    const c = chars[next() % chars.length];
    if (at + c.length > length) break;
    c.copy(out, at);
    at += c.length;
  }
  return out;
}

const PATTERN = Buffer.from('wsx interop: the quick brown fox jumps over the lazy dog 0123456789\n');

function compressibleText(length) {
  const out = Buffer.alloc(length);
  for (let at = 0; at < length; at += PATTERN.length) PATTERN.copy(out, at);
  return out;
}

function compressibleBytes(length) {
  const out = Buffer.alloc(length);
  for (let i = 0; i < length; i++) out[i] = i % 251;
  return out;
}

// `data` cut into fragments of the given sizes, the rest in a last fragment.
function split(data, sizes) {
  const out = [];
  let at = 0;
  for (const n of sizes) {
    out.push(data.subarray(at, at + n));
    at += n;
  }
  out.push(data.subarray(at));
  return out;
}

// {name, text, payload (Buffer), fragments (Buffers) or null} for every test message.
function messageSet() {
  const binary20 = Buffer.from(Array.from({ length: 20 }, (_, i) => (0xf0 + i) & 0xff));
  const fragText = Buffer.concat([Buffer.from('fragmented text: '), randomText(3, 2000)]);
  const fragBinary = Buffer.concat([Buffer.from('fragmented binary: '), randomBytes(4, 100000)]);
  const whole = (name, text, payload) => ({ name, text, payload, fragments: null });
  return [
    whole('text 0 B', true, Buffer.alloc(0)),
    whole('binary 0 B', false, Buffer.alloc(0)),
    whole('text 20 B', true, Buffer.from('twenty bytes of text')),
    whole('binary 20 B', false, binary20),
    whole('text 1 MiB compressible', true, compressibleText(MIB)),
    whole('binary 1 MiB compressible', false, compressibleBytes(MIB)),
    whole('text 1 MiB random', true, randomText(1, MIB)),
    whole('binary 1 MiB random', false, randomBytes(2, MIB)),
    // Byte boundaries: some fall inside a multi-byte character; one fragment is empty.
    { name: 'text fragmented', text: true, payload: fragText, fragments: split(fragText, [5, 0, 1, 20, 3, 700]) },
    { name: 'binary fragmented', text: false, payload: fragBinary, fragments: split(fragBinary, [1, 0, 4096, 65536]) },
  ];
}

const PING_PAYLOADS = [Buffer.alloc(0), Buffer.from('ping from client'), Buffer.from(Array.from({ length: 125 }, (_, i) => i))];

// What a client sends on each connection to a peer server, in order: connection 1 ends with
// CLOSE_COMMAND (the server closes), connection 2 with the client's close.
function firstConnection() {
  return [...messageSet(), { name: 'close command', text: true, payload: Buffer.from(CLOSE_COMMAND), fragments: null }];
}

function secondConnection() {
  return [{ name: 'text before our close', text: true, payload: Buffer.from('hello, then bye'), fragments: null }];
}

// {code, reason} of a text message "close CODE REASON", else null.
function parseCloseCommand(text) {
  const match = /^close ([0-9]{4})(?: ([^]*))?$/.exec(text);
  return match ? { code: Number(match[1]), reason: match[2] || '' } : null;
}

// Where two payloads first differ, for a failure message.
function describeDifference(expected, got) {
  const n = Math.min(expected.length, got.length);
  for (let i = 0; i < n; i++) {
    if (expected[i] !== got[i]) {
      const hex = (b) => '0x' + b.toString(16).padStart(2, '0');
      return `${expected.length} bytes expected, ${got.length} received; first difference at byte ${i}: expected ${hex(expected[i])}, got ${hex(got[i])}`;
    }
  }
  return `${expected.length} bytes expected, ${got.length} received (one is a prefix of the other)`;
}

module.exports = {
  MIB,
  CLIENT_CLOSE,
  SERVER_CLOSE,
  CLOSE_COMMAND,
  SERVER_PING,
  PING_PAYLOADS,
  messageSet,
  firstConnection,
  secondConnection,
  parseCloseCommand,
  describeDifference,
};
