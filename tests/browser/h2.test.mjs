// Chromium over HTTP/2: the page is loaded from `wsx serve --tls-self-signed` over h2, and its
// WebSocket travels as an RFC 8441 extended CONNECT stream on that same connection. The server's
// log says so: the page's `http` line and the WebSocket's `open` line carry `http="2"`, the same
// connection number (`conn`) and the same client address and port. Negative controls: with
// `--no-http2` the page and the WebSocket use HTTP/1.1; with the setting advertised but the
// CONNECT refused, the browser's WebSocket fails (it does not fall back to HTTP/1.1).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { launchTrustingContext, startServer, TOOLKIT } from './harness.mjs';

const T = { timeout: 60_000 };
let server;
let context;

before(async () => {
  server = await startServer(['--tls-self-signed']);
  assert.ok(server.pin, `wsx serve printed no SPKI pin:\n${server.log.join('\n')}`);
  context = await launchTrustingContext([server.pin]);
});

after(async () => {
  await context?.close();
  const status = await server?.stop();
  assert.equal(status?.code, 0, 'wsx serve exits 0 on SIGTERM');
});

/** A field of a log line: `peer=127.0.0.1:5000` → `127.0.0.1:5000` (quotes dropped). */
function field(line, name) {
  const m = new RegExp(`\\b${name}=("[^"]*"|\\S+)`).exec(line);
  return m ? m[1].replace(/^"|"$/g, '') : undefined;
}

async function loadPage(ctx, srv) {
  const page = await ctx.newPage();
  await page.goto(srv.origin + '/');
  await page.addScriptTag({ content: TOOLKIT });
  return page;
}

test('the page over h2, its WebSocket an extended CONNECT stream on the same connection', T, async () => {
  const page = await loadPage(context, server);
  try {
    const r = await page.evaluate(async () => {
      const nav = performance.getEntriesByType('navigation')[0];
      const ws = await t.open('/echo?h2', [], 'arraybuffer');
      ws.send('over h2 ✓');
      const text = await t.next(ws);
      const big = t.bytes(1 << 20, 5);
      ws.send(big);
      const back = new Uint8Array(await t.next(ws));
      ws.close(4000, 'h2 bye');
      const closed = await ws.closed;
      return { nextHop: nav.nextHopProtocol, text, big: t.equal(big, back), bigLen: back.length, closed };
    });
    assert.equal(r.nextHop, 'h2', 'the page itself came over HTTP/2');
    assert.equal(r.text, 'over h2 ✓');
    assert.ok(r.big, `1 MiB echoed intact (${r.bigLen} bytes back)`);
    assert.deepEqual(r.closed, { code: 4000, reason: 'h2 bye', wasClean: true, events: ['open', 'close'] });

    const [pageLine] = await server.logLines(/ http .*path="\/" .*status=200/);
    const [open] = await server.logLines(/ open .*path="\/echo\?h2"/);
    assert.ok(pageLine, `the page request was logged:\n${server.log.join('\n')}`);
    assert.ok(open, `the WebSocket was logged:\n${server.log.join('\n')}`);
    assert.equal(field(pageLine, 'http'), '2', pageLine);
    assert.equal(field(open, 'http'), '2', `the WebSocket came as an HTTP/2 extended CONNECT: ${open}`);
    assert.equal(field(open, 'conn'), field(pageLine, 'conn'), `on the page's connection:\n${pageLine}\n${open}`);
    assert.equal(field(open, 'peer'), field(pageLine, 'peer'), 'from the same client socket');
    const [closed] = await server.logLines(/ closed .*path="\/echo\?h2"/);
    assert.equal(field(closed, 'code'), '4000', closed);
    assert.equal(field(closed, 'by'), 'client', closed);
  } finally {
    await page.close();
  }
});

test('several WebSockets and a room on the one h2 connection', T, async () => {
  const page = await loadPage(context, server);
  try {
    const got = await page.evaluate(async () => {
      const room = '/room/h2-' + Date.now();
      const a = await t.open(room);
      const b = await t.open(room);
      const echo = await t.open('/echo?many');
      a.send('to the room');
      const atB = await t.next(b);
      echo.send('echo');
      const echoed = await t.next(echo);
      for (const ws of [a, b, echo]) ws.close();
      return { atB, echoed };
    });
    assert.deepEqual(got, { atB: 'to the room', echoed: 'echo' });
    const opens = await server.logLines(/ open .*(path="\/room\/h2-|path="\/echo\?many")/);
    assert.equal(opens.length, 3, opens.join('\n'));
    const conns = new Set(opens.map((l) => field(l, 'conn')));
    assert.equal(conns.size, 1, `one connection carried all three: ${opens.join('\n')}`);
    assert.ok(opens.every((l) => field(l, 'http') === '2'));
  } finally {
    await page.close();
  }
});

test('with the setting advertised but the CONNECT refused, the WebSocket fails (no HTTP/1.1 fallback)', T, async () => {
  const page = await loadPage(context, server);
  try {
    const r = await page.evaluate(async () => {
      try {
        await t.open('/no-such-endpoint');
        return { opened: true };
      } catch (e) {
        return { opened: false, code: e.code, wasClean: e.wasClean, events: e.events };
      }
    });
    assert.deepEqual(r, { opened: false, code: 1006, wasClean: false, events: ['error', 'close'] });
    const refused = await server.logLines(/ refused .*path="\/no-such-endpoint"/);
    assert.equal(refused.length, 1, `one refusal:\n${server.log.join('\n')}`);
    assert.equal(field(refused[0], 'status'), '404');
    assert.equal(field(refused[0], 'http'), '2', 'refused as an HTTP/2 extended CONNECT');
  } finally {
    await page.close();
  }
});

test('--no-http2: the page and its WebSocket over HTTP/1.1', T, async () => {
  const srv = await startServer(['--tls-self-signed', '--no-http2']);
  const ctx = await launchTrustingContext([srv.pin]);
  try {
    const page = await loadPage(ctx, srv);
    const r = await page.evaluate(async () => {
      const nav = performance.getEntriesByType('navigation')[0];
      const ws = await t.open('/echo?h1');
      ws.send('over h1');
      const text = await t.next(ws);
      ws.close();
      return { nextHop: nav.nextHopProtocol, text };
    });
    assert.deepEqual(r, { nextHop: 'http/1.1', text: 'over h1' });
    const [open] = await srv.logLines(/ open .*path="\/echo\?h1"/);
    assert.equal(field(open, 'http'), '1.1', open);
    assert.equal(field(open, 'conn'), undefined, open);
  } finally {
    await ctx.close();
    await srv.stop();
  }
});
