'use strict';
// Node `ws` as the echo server for wsx's interop client (scripts/interop).
//
// Usage: node server.js [--port 0] [--deflate | --no-deflate] [--connections 2] [--tls-cert FILE --tls-key FILE]
//
// Prints "listening on 127.0.0.1:PORT" once it accepts connections. Per connection: pings the
// client with "ping from server" right after the handshake; echoes every message; on a text
// message "close CODE REASON" (the interop client sends "close 4002 bye from server"), closes
// with that code and reason. ws hands over whole messages only, so the fragmented test messages
// (those starting with "fragmented") are echoed as fragments of 3, 0, 1000 and the remaining
// bytes.
//
// It checks what it receives: each message byte for byte and by type against the sequence the
// interop client sends (messages.firstConnection() or, when the first message is that of
// connection 2, messages.secondConnection()), with compression that the compressible 1 MiB
// messages arrived compressed, the pong to its ping, and the closing handshake (the client's
// echo of our code, or the client's own close 4001 "bye from client"). After --connections
// connections it exits: 0 if all matched; otherwise 1, one line per problem on stderr.
//
// With --tls-cert and --tls-key (PEM: the certificate chain, leaf first, and its key), ws runs on
// an `https` server: wss:// only; each connection must be TLS (its version and cipher are in the
// ok line). Failed TLS handshakes (a plain client, or one that refuses the certificate) are no
// connections.

const fs = require('fs');
const https = require('https');
const { WebSocketServer } = require('ws');
const m = require('./messages.js');

const FRAGMENTED_PREFIX = Buffer.from('fragmented');

function parseArgs() {
  const opts = { port: 0, deflate: false, connections: 2, tlsCert: null, tlsKey: null };
  const args = process.argv.slice(2);
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '--deflate') opts.deflate = true;
    else if (a === '--no-deflate') opts.deflate = false;
    else if (a === '--port') opts.port = Number(args[++i]);
    else if (a === '--connections') opts.connections = Number(args[++i]);
    else if (a === '--tls-cert') opts.tlsCert = args[++i];
    else if (a === '--tls-key') opts.tlsKey = args[++i];
    else {
      console.error(`node server: unexpected argument ${a}`);
      process.exit(2);
    }
  }
  if ((opts.tlsCert === null) !== (opts.tlsKey === null)) {
    console.error('node server: --tls-cert and --tls-key go together');
    process.exit(2);
  }
  return opts;
}

function split(data, sizes) {
  const out = [];
  let at = 0;
  for (const n of sizes) {
    out.push(data.subarray(at, Math.min(at + n, data.length)));
    at = Math.min(at + n, data.length);
  }
  out.push(data.subarray(at));
  return out;
}

function main() {
  const opts = parseArgs();
  const sequences = [m.firstConnection(), m.secondConnection()];
  const failures = [];
  let count = 0;
  let remaining = opts.connections;

  const tls = opts.tlsCert !== null;
  // With TLS, ws upgrades the requests of an https server, which listens itself.
  const httpsServer = tls
    ? https.createServer({ cert: fs.readFileSync(opts.tlsCert), key: fs.readFileSync(opts.tlsKey) })
    : null;
  const wss = new WebSocketServer({
    ...(tls ? { server: httpsServer } : { host: '127.0.0.1', port: opts.port }),
    // Threshold 0: compress every message, even empty ones, also if a client asks the server to
    // reset its context after each message (ws then leaves messages under 1 KiB uncompressed by
    // default).
    perMessageDeflate: opts.deflate ? { threshold: 0 } : false,
    maxPayload: 64 * m.MIB,
  });
  const listening = () => console.log(`listening on 127.0.0.1:${wss.address().port}`);
  const failed = (err) => {
    console.error(`node server: FAIL: ${err.message}`);
    process.exit(1);
  };
  wss.on('error', failed);
  if (tls) {
    httpsServer.on('error', failed);
    httpsServer.listen(opts.port, '127.0.0.1', listening);
  } else {
    wss.on('listening', listening);
  }

  wss.on('connection', (ws, req) => {
    const name = `connection ${++count}`;
    const socket = req.socket;
    const agreed = ws.extensions || 'none';
    // Now: once the socket has closed, the session's details are gone.
    const tlsNote = socket.encrypted ? `; TLS: ${socket.getProtocol()} ${socket.getCipher().standardName}` : '';
    const problems = [];
    let expected = null;
    let received = 0;
    let fragmented = 0;
    let closedByUs = null;
    let pongMatched = false;
    let lastBytesRead = socket.bytesRead;
    const wireSizes = [];

    ws.on('pong', (data) => {
      if (data.equals(m.SERVER_PING)) pongMatched = true;
      else problems.push(`a pong of ${data.length} B that does not match our ping`);
    });
    ws.ping(m.SERVER_PING);

    ws.on('message', (data, isBinary) => {
      const isText = !isBinary;
      // What this message took on the wire (the client waits for each echo, so nothing else
      // is in flight but control frames).
      const wire = socket.bytesRead - lastBytesRead;
      lastBytesRead = socket.bytesRead;
      if (expected === null) {
        const second = sequences[1][0];
        expected = isText && data.equals(second.payload) ? sequences[1] : sequences[0];
      }
      const index = received++;
      const exp = expected[index];
      if (exp === undefined) {
        problems.push(`message ${index + 1}: unexpected ${isText ? 'text' : 'binary'} message of ${data.length} B`);
      } else {
        const what = `message ${index + 1} (${exp.name})`;
        if (exp.text !== isText) {
          problems.push(`${what}: expected a ${exp.text ? 'text' : 'binary'} message, got ${isText ? 'text' : 'binary'}`);
        } else if (!data.equals(exp.payload)) {
          problems.push(`${what}: ${m.describeDifference(exp.payload, data)}`);
        } else if (exp.name.includes('compressible')) {
          wireSizes.push(wire);
          if (opts.deflate && wire > data.length / 4) {
            problems.push(`${what}: arrived in ${wire} bytes on the wire: not compressed`);
          }
        }
      }
      const command = isText ? m.parseCloseCommand(data.toString()) : null;
      if (command) {
        ws.close(command.code, command.reason);
        closedByUs = command;
      } else if (data.subarray(0, FRAGMENTED_PREFIX.length).equals(FRAGMENTED_PREFIX)) {
        const fragments = split(data, [3, 0, 1000]);
        fragments.forEach((f, i) => ws.send(f, { binary: isBinary, fin: i === fragments.length - 1 }));
        fragmented++;
      } else {
        ws.send(data, { binary: isBinary });
      }
    });

    ws.on('close', (code, reasonBuffer) => {
      const reason = reasonBuffer.toString();
      // ws reports the code of the close frame it received, 1006 when none came.
      const got = `${code} ${JSON.stringify(reason)}`;
      if (expected !== null && received < expected.length) {
        problems.push(`received ${received} of the ${expected.length} messages expected`);
      }
      if (closedByUs) {
        if (code !== closedByUs.code) problems.push(`our close ${closedByUs.code}: the client echoed ${got}`);
      } else if (code !== m.CLIENT_CLOSE.code || reason !== m.CLIENT_CLOSE.reason) {
        problems.push(`expected the client's close ${m.CLIENT_CLOSE.code} ${JSON.stringify(m.CLIENT_CLOSE.reason)}, got ${got}`);
      }
      if (!pongMatched) problems.push(`no pong matching our ping ${JSON.stringify(m.SERVER_PING.toString())}`);
      if (Boolean(socket.encrypted) !== tls) {
        problems.push(`expected a ${tls ? 'TLS' : 'plain'} connection, got ${socket.encrypted ? 'TLS' : 'plain'}`);
      }
      if (problems.length) {
        failures.push(...problems.map((p) => `${name}: ${p}`));
      } else {
        const wireNote = wireSizes.length ? `compressible messages took ${wireSizes.join(' and ')} B on the wire, ` : '';
        console.log(
          `node server: ${name}: ok: ${received} message(s) (${fragmented} echoed as fragments), ${wireNote}` +
            `close ${got}, pong matched; extensions: ${agreed}${tlsNote}`,
        );
      }
      if (--remaining === 0) {
        const finish = () => {
          for (const f of failures) console.error(`node server: FAIL: ${f}`);
          process.exit(failures.length ? 1 : 0);
        };
        // ws does not close an https server it was given.
        wss.close(() => (httpsServer ? httpsServer.close(finish) : finish()));
      }
    });
  });
}

main();
