'use strict';
// Node `ws` as a client of `wsx serve` (scripts/interop).
//
// Usage: node client.js URL [--deflate | --no-deflate] [--expect-deflate] [--server-close-url URL2]
//
// Sends the message set of messages.js and checks every echo byte for byte and by type (text or
// binary), pings with payloads and checks each pong's payload, then closes with 4001
// "bye from client" and checks that the server echoed the code and closed the TCP connection
// promptly. With --server-close-url, a second connection, to URL2, must be closed by the server
// with 4002 "bye from server", cleanly. With compression, it also checks on the socket that the
// echoes of the compressible 1 MiB messages arrived compressed. Exit status 0 when everything
// matched; otherwise 1, with the mismatch on stderr.

const WebSocket = require('ws');
const m = require('./messages.js');

const STEP_TIMEOUT_MS = 15000; // for one echo, pong or close
const CLOSE_DEADLINE_MS = 3000; // a closing handshake taking longer did not end cleanly

class Fail extends Error {}

// The connection's events as a queue: next(what) resolves with the next one, in order, skipping
// pings (ws answers them).
function eventQueue(ws) {
  const items = [];
  const waiters = [];
  const push = (item) => (waiters.length ? waiters.shift()(item) : items.push(item));
  ws.on('open', () => push({ type: 'open' }));
  ws.on('upgrade', (res) => push({ type: 'upgrade', res }));
  ws.on('message', (data, isBinary) => push({ type: 'message', data, isBinary }));
  ws.on('ping', (data) => push({ type: 'ping', data }));
  ws.on('pong', (data) => push({ type: 'pong', data }));
  ws.on('close', (code, reason) => push({ type: 'close', code, reason }));
  ws.on('error', (err) => push({ type: 'error', err }));
  return async (what) => {
    for (;;) {
      const item = items.length
        ? items.shift()
        : await new Promise((resolve) => {
            const timer = setTimeout(() => {
              waiters.splice(waiters.indexOf(waiter), 1);
              resolve({ type: 'timeout' });
            }, STEP_TIMEOUT_MS);
            const waiter = (it) => {
              clearTimeout(timer);
              resolve(it);
            };
            waiters.push(waiter);
          });
      if (item.type === 'timeout') throw new Fail(`${what}: nothing received in ${STEP_TIMEOUT_MS} ms`);
      if (item.type === 'error') throw new Fail(`${what}: ${item.err.message}`);
      if (item.type !== 'ping') return item;
    }
  };
}

function describe(item) {
  if (item.type === 'message') return `a ${item.isBinary ? 'binary' : 'text'} message of ${item.data.length} B`;
  if (item.type === 'close') return `the close ${item.code} ${JSON.stringify(item.reason.toString())}`;
  return `a ${item.type} event`;
}

// Opens a connection and checks the agreed extensions: {ws, next, socket, agreed}.
async function open(url, deflate, expectDeflate) {
  // Threshold 0: compress every message, even empty ones (when its side resets its context
  // after each message, as wsx serve asks, ws leaves messages under 1 KiB uncompressed by
  // default).
  const ws = new WebSocket(url, { perMessageDeflate: deflate ? { threshold: 0 } : false, maxPayload: 64 * m.MIB });
  const next = eventQueue(ws);
  const upgrade = await next('the opening handshake');
  if (upgrade.type !== 'upgrade') throw new Fail(`the opening handshake: got ${describe(upgrade)}`);
  const opened = await next('the opening handshake');
  if (opened.type !== 'open') throw new Fail(`the opening handshake: got ${describe(opened)}`);
  const agreed = upgrade.res.headers['sec-websocket-extensions'];
  const active = JSON.stringify(ws.extensions);
  if (expectDeflate) {
    if (!(agreed || '').toLowerCase().startsWith('permessage-deflate') || ws.extensions !== 'permessage-deflate') {
      throw new Fail(`expected permessage-deflate to be agreed, got ${JSON.stringify(agreed)} (active: ${active})`);
    }
  } else if (agreed !== undefined || ws.extensions !== '') {
    throw new Fail(`expected no extension, got ${JSON.stringify(agreed)} (active: ${active})`);
  }
  return { ws, next, socket: upgrade.res.socket, agreed: agreed || 'none' };
}

// Sends one test message and checks its echo; returns the bytes the echo took on the wire.
async function echo({ ws, next, socket }, msg) {
  const what = `echo of ${msg.name} (${msg.payload.length} B)`;
  const before = socket.bytesRead;
  if (msg.fragments) {
    // Buffers sent as text with binary: false, so fragments may split a character.
    msg.fragments.forEach((f, i) => ws.send(f, { binary: !msg.text, fin: i === msg.fragments.length - 1 }));
  } else if (msg.text) {
    ws.send(msg.payload.toString('utf8'));
  } else {
    ws.send(msg.payload);
  }
  const got = await next(what);
  if (got.type !== 'message') throw new Fail(`${what}: got ${describe(got)}`);
  if (got.isBinary === msg.text) {
    throw new Fail(`${what}: expected a ${msg.text ? 'text' : 'binary'} message, got ${got.isBinary ? 'binary' : 'text'}`);
  }
  if (!got.data.equals(msg.payload)) throw new Fail(`${what}: ${m.describeDifference(msg.payload, got.data)}`);
  // Nothing else is in flight: this is what the echo took on the wire.
  return socket.bytesRead - before;
}

// Waits for the close event and the end of TCP; checks the close and the time taken.
async function expectClosed({ next, socket }, what, started, expectCode, expectReason) {
  const socketClosed = new Promise((resolve) => (socket.destroyed ? resolve() : socket.once('close', resolve)));
  const closed = await next(what);
  if (closed.type !== 'close') throw new Fail(`${what}: got ${describe(closed)}`);
  // ws reports the code of the close frame it received, 1006 when none came.
  const reason = closed.reason.toString();
  if (closed.code !== expectCode || (expectReason !== null && reason !== expectReason)) {
    throw new Fail(`${what}: received the close ${closed.code} ${JSON.stringify(reason)}`);
  }
  await socketClosed;
  const took = Date.now() - started;
  if (took > CLOSE_DEADLINE_MS) throw new Fail(`${what}: took ${took} ms; the server did not close the TCP connection`);
}

async function clientClose(conn) {
  const { code, reason } = m.CLIENT_CLOSE;
  const started = Date.now();
  conn.ws.close(code, reason);
  // The server must echo the code; its reason is its own.
  await expectClosed(conn, `our close ${code}`, started, code, null);
}

async function serverClose(conn) {
  const { code, reason } = m.SERVER_CLOSE;
  await expectClosed(conn, `the server's close ${code}`, Date.now(), code, reason);
}

async function run(url, deflate, expectDeflate, serverCloseUrl) {
  const conn = await open(url, deflate, expectDeflate);
  const messages = m.messageSet();
  const wireSizes = [];
  for (const msg of messages) {
    const wire = await echo(conn, msg);
    if (msg.name.includes('compressible')) {
      wireSizes.push(wire);
      if (expectDeflate && wire > msg.payload.length / 4) {
        throw new Fail(`echo of ${msg.name}: arrived in ${wire} bytes on the wire: not compressed`);
      }
      if (!expectDeflate && wire < msg.payload.length) {
        throw new Fail(`echo of ${msg.name}: arrived in ${wire} bytes on the wire without compression`);
      }
    }
  }
  for (const payload of m.PING_PAYLOADS) {
    const what = `pong to a ping of ${payload.length} B`;
    conn.ws.ping(payload);
    const got = await conn.next(what);
    if (got.type !== 'pong') throw new Fail(`${what}: got ${describe(got)}`);
    if (!got.data.equals(payload)) throw new Fail(`${what}: ${m.describeDifference(payload, got.data)}`);
  }
  await clientClose(conn);
  let closes = `client close ${m.CLIENT_CLOSE.code}`;
  if (serverCloseUrl !== null) {
    await serverClose(await open(serverCloseUrl, deflate, expectDeflate));
    closes += `, server close ${m.SERVER_CLOSE.code}`;
  }
  return (
    `${messages.length} messages, ${m.PING_PAYLOADS.length} pings, ${closes}; ` +
    `compressible echoes took ${wireSizes.join(' and ')} B on the wire; extensions: ${conn.agreed}`
  );
}

function main() {
  let url = null;
  let deflate = false;
  let expectDeflate = false;
  let serverCloseUrl = null;
  const args = process.argv.slice(2);
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '--deflate') deflate = true;
    else if (a === '--no-deflate') deflate = false;
    else if (a === '--expect-deflate') expectDeflate = true;
    else if (a === '--server-close-url' && i + 1 < args.length) serverCloseUrl = args[++i];
    else if (!a.startsWith('--') && url === null) url = a;
    else {
      console.error(`node client: unexpected argument ${a}`);
      process.exit(2);
    }
  }
  if (url === null) {
    console.error('usage: node client.js URL [--deflate | --no-deflate] [--expect-deflate] [--server-close-url URL2]');
    process.exit(2);
  }
  run(url, deflate, expectDeflate, serverCloseUrl).then(
    (summary) => {
      console.log(`node client: ok: ${summary}`);
      process.exit(0);
    },
    (err) => {
      console.error(`node client: FAIL: ${err instanceof Fail ? err.message : err.stack}`);
      process.exit(1);
    },
  );
}

main();
