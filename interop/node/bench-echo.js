'use strict';
// A plain echo server on Node `ws`, for scripts/bench-deflate (not a test peer: it checks
// nothing). Usage: node bench-echo.js PORT
//
// permessage-deflate on the terms `wsx serve` uses by default, so that the benchmark compares
// the cost of the same work: compression level 1, no context takeover either way, every message
// compressed (threshold 0). A client that does not offer the extension gets plain frames.
// Prints "listening on 127.0.0.1:PORT" once it accepts connections.

const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 0);
const wss = new WebSocketServer({
  host: '127.0.0.1',
  port,
  maxPayload: 64 * 1024 * 1024,
  perMessageDeflate: {
    serverNoContextTakeover: true,
    clientNoContextTakeover: true,
    threshold: 0,
    zlibDeflateOptions: { level: 1 },
  },
});
wss.on('listening', () => console.log(`listening on 127.0.0.1:${wss.address().port}`));
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => ws.terminate());
});
