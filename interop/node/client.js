'use strict';
// Node `ws` as a client of `wsx serve` (scripts/interop).
//
// Usage: node client.js URL [--deflate | --no-deflate] [--expect-deflate] [--server-close-url URL2]
//                       [--cacert FILE] [--untrusted-cacert FILE] [--plain-refused-url URL3]
//
// Sends the message set of messages.js and checks every echo byte for byte and by type (text or
// binary), pings with payloads and checks each pong's payload, then closes with 4001
// "bye from client" and checks that the server echoed the code and closed the TCP connection
// promptly. With --server-close-url, a second connection, to URL2, must be closed by the server
// with 4002 "bye from server", cleanly. With compression, it also checks on the socket that the
// echoes of the compressible 1 MiB messages arrived compressed.
//
// Over TLS (wss:// URLs, --cacert required): the client trusts only the CA certificates of
// --cacert (the `ca` option, with rejectUnauthorized: the certificate and its name are
// verified), checks that each connection is TLS and authorized, and reports its version and
// cipher. With --untrusted-cacert, a connection that trusts only that CA must first fail
// certificate verification; with --plain-refused-url, a plain ws:// connection to the TLS port
// must be refused with HTTP 400 within 5 s, not hang.
//
// Exit status 0 when everything matched; otherwise 1, with the mismatch on stderr.

const fs = require('fs');
const WebSocket = require('ws');
const m = require('./messages.js');

const STEP_TIMEOUT_MS = 15000; // for one echo, pong or close
const CLOSE_DEADLINE_MS = 3000; // a closing handshake taking longer did not end cleanly
const REFUSAL_DEADLINE_MS = 5000; // a connection that must be refused, and is not by then, hangs

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

// TLS options that trust only the CA certificates of `file` (not Node's bundled roots), with
// verification on whatever NODE_TLS_REJECT_UNAUTHORIZED says.
function trustOnly(file) {
  return { ca: fs.readFileSync(file), rejectUnauthorized: true };
}

// The connection is TLS exactly when the URL is wss://, and then its certificate was verified;
// returns "TLSv1.3 CIPHER" or null.
function checkTls(url, socket) {
  const wantTls = url.startsWith('wss://');
  if (Boolean(socket.encrypted) !== wantTls) throw new Fail(`${url}: the connection is ${socket.encrypted ? 'TLS' : 'not TLS'}`);
  if (!wantTls) return null;
  if (!socket.authorized) throw new Fail(`${url}: the certificate was not verified: ${socket.authorizationError}`);
  return `${socket.getProtocol()} ${socket.getCipher().standardName}`;
}

// Opens a connection and checks the agreed extensions: {ws, next, socket, agreed, tls}.
async function open(url, deflate, expectDeflate, tlsOptions) {
  // Threshold 0: compress every message, even empty ones (when its side resets its context
  // after each message, as wsx serve asks, ws leaves messages under 1 KiB uncompressed by
  // default).
  const ws = new WebSocket(url, {
    perMessageDeflate: deflate ? { threshold: 0 } : false,
    maxPayload: 64 * m.MIB,
    ...tlsOptions,
  });
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
  const tls = checkTls(url, upgrade.res.socket);
  return { ws, next, socket: upgrade.res.socket, agreed: agreed || 'none', tls };
}

// One connection attempt that must fail: resolves with {type: 'error', err},
// {type: 'response', res} (an HTTP answer other than 101), or {type: 'open'} or
// {type: 'timeout'} (both failures for the caller).
function attempt(url, options) {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, ...options });
    const timer = setTimeout(() => {
      ws.terminate();
      resolve({ type: 'timeout' });
    }, REFUSAL_DEADLINE_MS);
    const done = (result) => {
      clearTimeout(timer);
      resolve(result);
    };
    ws.on('unexpected-response', (req, res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => (body += chunk));
      res.on('end', () => done({ type: 'response', res, body }));
      res.on('error', (err) => done({ type: 'error', err }));
    });
    ws.on('open', () => {
      ws.terminate();
      done({ type: 'open' });
    });
    ws.on('error', (err) => done({ type: 'error', err }));
  });
}

// A client trusting only another CA must fail to verify the server's certificate.
async function untrustedCaRefused(url, file) {
  const what = `a connection trusting only --untrusted-cacert ${file}`;
  const got = await attempt(url, trustOnly(file));
  if (got.type === 'timeout') throw new Fail(`${what}: neither refused nor connected in ${REFUSAL_DEADLINE_MS} ms`);
  if (got.type === 'open') throw new Fail(`${what}: connected: the server's certificate was not verified`);
  if (got.type === 'response') throw new Fail(`${what}: got HTTP ${got.res.statusCode}: the certificate was not verified`);
  // OpenSSL's verification errors: the chain ends in a CA we do not trust.
  const verification = ['SELF_SIGNED_CERT_IN_CHAIN', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY'];
  if (!verification.includes(got.err.code)) {
    throw new Fail(`${what}: refused, but not by certificate verification: ${got.err.code}: ${got.err.message}`);
  }
  return `untrusted CA refused (${got.err.code})`;
}

// A plain ws:// connection to the TLS port must get an HTTP 400, quickly.
async function plainRefused(url) {
  const started = Date.now();
  const got = await attempt(url, {});
  if (got.type === 'timeout') throw new Fail(`plain ${url}: no answer in ${REFUSAL_DEADLINE_MS} ms (a hang)`);
  if (got.type === 'open') throw new Fail(`plain ${url}: connected without TLS to the TLS port`);
  if (got.type === 'error') throw new Fail(`plain ${url}: expected HTTP 400, got ${got.err.code || ''} ${got.err.message}`);
  if (got.res.statusCode !== 400) throw new Fail(`plain ${url}: expected HTTP 400, got ${got.res.statusCode}`);
  return `plain ws:// refused with 400 in ${Date.now() - started} ms (${JSON.stringify(got.body.trim())})`;
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
  // The server must echo the code and the reason (as browsers do).
  await expectClosed(conn, `our close ${code}`, started, code, reason);
}

async function serverClose(conn) {
  const { code, reason } = m.SERVER_CLOSE;
  await expectClosed(conn, `the server's close ${code}`, Date.now(), code, reason);
}

async function run(url, deflate, expectDeflate, serverCloseUrl, cacert, untrustedCacert, plainRefusedUrl) {
  const tlsOptions = cacert === null ? {} : trustOnly(cacert);
  const refusals = [];
  if (untrustedCacert !== null) refusals.push(await untrustedCaRefused(url, untrustedCacert));
  if (plainRefusedUrl !== null) refusals.push(await plainRefused(plainRefusedUrl));
  const conn = await open(url, deflate, expectDeflate, tlsOptions);
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
    await serverClose(await open(serverCloseUrl, deflate, expectDeflate, tlsOptions));
    closes += `, server close ${m.SERVER_CLOSE.code}`;
  }
  const tls = conn.tls === null ? '' : `; ${[`TLS: ${conn.tls}`, ...refusals].join(', ')}`;
  return (
    `${messages.length} messages, ${m.PING_PAYLOADS.length} pings, ${closes}; ` +
    `compressible echoes took ${wireSizes.join(' and ')} B on the wire; extensions: ${conn.agreed}${tls}`
  );
}

function main() {
  let url = null;
  let deflate = false;
  let expectDeflate = false;
  let serverCloseUrl = null;
  let cacert = null;
  let untrustedCacert = null;
  let plainRefusedUrl = null;
  const args = process.argv.slice(2);
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '--deflate') deflate = true;
    else if (a === '--no-deflate') deflate = false;
    else if (a === '--expect-deflate') expectDeflate = true;
    else if (a === '--server-close-url' && i + 1 < args.length) serverCloseUrl = args[++i];
    else if (a === '--cacert' && i + 1 < args.length) cacert = args[++i];
    else if (a === '--untrusted-cacert' && i + 1 < args.length) untrustedCacert = args[++i];
    else if (a === '--plain-refused-url' && i + 1 < args.length) plainRefusedUrl = args[++i];
    else if (!a.startsWith('--') && url === null) url = a;
    else {
      console.error(`node client: unexpected argument ${a}`);
      process.exit(2);
    }
  }
  if (url === null) {
    console.error(
      'usage: node client.js URL [--deflate | --no-deflate] [--expect-deflate] [--server-close-url URL2] ' +
        '[--cacert FILE] [--untrusted-cacert FILE] [--plain-refused-url URL3]',
    );
    process.exit(2);
  }
  const tls = url.startsWith('wss://');
  if (tls && cacert === null) {
    console.error('node client: a wss:// URL needs --cacert FILE (the CA to trust)');
    process.exit(2);
  }
  if (!tls && (cacert !== null || untrustedCacert !== null || plainRefusedUrl !== null)) {
    console.error('node client: --cacert, --untrusted-cacert and --plain-refused-url need a wss:// URL');
    process.exit(2);
  }
  run(url, deflate, expectDeflate, serverCloseUrl, cacert, untrustedCacert, plainRefusedUrl).then(
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
