// Real-browser tests of `wsx serve`: chromium's own WebSocket implementation against the server.
// Every page is loaded from a `wsx serve` (pages on other origins may not open ws://127.0.0.1).
// Run through scripts/browser-test (builds wsx, installs chromium and playwright-core).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { launchBrowser, openPage, startServer } from './harness.mjs';

const T = { timeout: 60_000 };
let browser;
let server;

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  const status = await server?.stop();
  assert.equal(status?.code, 0, 'wsx serve exits 0 on SIGTERM');
});

async function withPage(fn, srv = server, path = '/') {
  const page = await openPage(browser, srv, path);
  try {
    return await fn(page);
  } finally {
    await page.context().close();
  }
}

test('plain HTTP requests get plain answers', T, async () => {
  let res = await fetch(`${server.origin}/`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^text\/html/);
  assert.match(await res.text(), /<title>wsx demo<\/title>/);
  res = await fetch(`${server.origin}/no/such/page`);
  assert.equal(res.status, 404);
  res = await fetch(`${server.origin}/`, { method: 'POST', body: 'x'.repeat(100_000) });
  assert.equal(res.status, 405);
  assert.equal(res.headers.get('allow'), 'GET, HEAD');
  res = await fetch(`${server.origin}/echo`);
  assert.equal(res.status, 426);
});

test('two pages in the same room see each other\'s messages (demo page)', T, async () => {
  const room = `room-${Date.now()}`;
  const [alice, bob] = [await openPage(browser, server, `/#${room}`), await openPage(browser, server, `/#${room}`)];
  try {
    for (const [page, name] of [[alice, 'alice'], [bob, 'bob']]) {
      await page.fill('#name', name);
      await page.locator('#state', { hasText: 'OPEN' }).waitFor();
      assert.equal(await page.textContent('#url'), `ws://127.0.0.1:${server.port}/room/${room}`);
    }
    await alice.fill('#message', 'hello from alice 👋');
    await alice.press('#message', 'Enter');
    await bob.locator('#log li', { hasText: 'hello from alice 👋' }).waitFor();
    assert.match(await bob.locator('#log li', { hasText: 'hello from alice' }).textContent(), /^alice/);
    await bob.fill('#message', 'hi alice, bob here');
    await bob.click('#send');
    await alice.locator('#log li', { hasText: 'hi alice, bob here' }).waitFor();
    // A room delivers to its sender too, in the room's order: alice sees both, hers as "mine".
    await alice.locator('#log li.mine', { hasText: 'hello from alice 👋' }).waitFor();
    const texts = await alice.locator('#log li:not(.system) .body').allTextContents();
    assert.deepEqual(texts, ['hello from alice 👋', 'hi alice, bob here']);
    // Another room hears nothing.
    const eve = await openPage(browser, server, `/#${room}-other`);
    await eve.locator('#state', { hasText: 'OPEN' }).waitFor();
    await alice.fill('#message', 'not for eve');
    await alice.press('#message', 'Enter');
    await bob.locator('#log li', { hasText: 'not for eve' }).waitFor();
    assert.equal(await eve.locator('#log li', { hasText: 'not for eve' }).count(), 0);
    await eve.context().close();
  } finally {
    await alice.context().close();
    await bob.context().close();
  }
});

test('text with non-ASCII and emoji', T, () =>
  withPage(async (page) => {
    const samples = ['héllo wörld', '日本語のテキスト', '🎉👩‍👩‍👧‍👦🇫🇷', 'mixed ∑ × ≠ – “quotes” 🦀', 'a\u0000b', ''];
    const echoed = await page.evaluate(async (samples) => {
      const ws = await t.open('/echo');
      const out = [];
      for (const s of samples) {
        ws.send(s);
        out.push(await t.next(ws));
      }
      ws.close();
      return out;
    }, samples);
    assert.deepEqual(echoed, samples);
  }));

test("binary with binaryType 'arraybuffer'", T, () =>
  withPage(async (page) => {
    const r = await page.evaluate(async () => {
      const ws = await t.open('/echo', [], 'arraybuffer');
      const sent = t.bytes(70_000, 7);
      ws.send(sent);
      const data = await t.next(ws);
      ws.send(new Uint8Array(0));
      const empty = await t.next(ws);
      ws.close();
      return { type: Object.prototype.toString.call(data), same: t.equal(new Uint8Array(data), sent), empty: empty.byteLength };
    });
    assert.deepEqual(r, { type: '[object ArrayBuffer]', same: true, empty: 0 });
  }));

test("binary with binaryType 'blob'", T, () =>
  withPage(async (page) => {
    const r = await page.evaluate(async () => {
      const ws = await t.open('/echo', [], 'blob');
      const sent = t.bytes(200_000, 9);
      ws.send(new Blob([sent.subarray(0, 1000), sent.subarray(1000)]));
      const data = await t.next(ws);
      ws.close();
      return { blob: data instanceof Blob, size: data.size, same: t.equal(new Uint8Array(await data.arrayBuffer()), sent) };
    });
    assert.deepEqual(r, { blob: true, size: 200_000, same: true });
  }));

test('1 MiB messages are echoed intact; 16 MiB compressed meets the inflated-size cap (1009)', T, () =>
  withPage(async (page) => {
    const r = await page.evaluate(async () => {
      const ws = await t.open('/echo');
      const results = [];
      const sent = t.bytes(1 << 20, 3);
      ws.send(sent);
      const back = new Uint8Array(await t.next(ws));
      results.push({ n: 1 << 20, length: back.length, same: t.equal(back, sent) });
      const text = 'ü'.repeat(1 << 19); // 1 MiB of UTF-8
      ws.send(text);
      const textBack = await t.next(ws);
      results.push({ n: 'text', length: textBack.length, same: textBack === text });
      // Chromium compresses every message (permessage-deflate is on): 16 MiB inflated is past
      // the server's max_inflated_message_size (4 MiB), so the server fails the connection with
      // 1009. The page sees 1009, or 1006 when the rest of the message was still arriving as
      // the server closed TCP (the unread bytes turn the close into a reset).
      ws.send(t.bytes(16 << 20, 5));
      const closed = await ws.closed;
      results.push({ code: closed.code, reason: closed.reason });
      return results;
    });
    assert.deepEqual(r.slice(0, 2), [
      { n: 1 << 20, length: 1 << 20, same: true },
      { n: 'text', length: 1 << 19, same: true },
    ]);
    assert.ok([1009, 1006].includes(r[2].code), `closed with ${r[2].code}`);
    if (r[2].code === 1009) assert.match(r[2].reason, /inflat/i);
    // The server's side of it: the limit named, 1009 sent.
    const lines = await server.logLines(/closed .*path="\/echo" code=1009/);
    assert.equal(lines.length, 1, 'the server logged the 1009 close');
    assert.match(lines[0], /inflat/i);
  }));

test('1000 messages arrive in order', T, () =>
  withPage(async (page) => {
    const r = await page.evaluate(async () => {
      const ws = await t.open('/echo');
      for (let i = 0; i < 1000; i++) ws.send(i % 2 ? `message ${i}` : new TextEncoder().encode(`binary ${i}`));
      const got = [];
      for (let i = 0; i < 1000; i++) {
        const d = await t.next(ws);
        got.push(typeof d === 'string' ? d : new TextDecoder().decode(d));
      }
      ws.close();
      return got;
    });
    assert.equal(r.length, 1000);
    r.forEach((m, i) => assert.equal(m, i % 2 ? `message ${i}` : `binary ${i}`));
  }));

test('the server selects, in its own order of preference, a subprotocol the page offered', T, () =>
  withPage(async (page) => {
    const r = await page.evaluate(async () => {
      const out = [];
      for (const offer of [['x.unknown', 'echo.v1', 'chat.v1'], ['chat.v1', 'echo.v1'], ['echo.v1'], []]) {
        const ws = await t.open('/echo', offer);
        out.push(ws.protocol);
        ws.close();
      }
      const refused = await t.open('/echo', ['x.unknown']).then(() => 'opened', (e) => e.code);
      return { out, refused };
    });
    // chat.v1 before echo.v1, whatever the page's order.
    assert.deepEqual(r.out, ['chat.v1', 'chat.v1', 'echo.v1', '']);
    // The server selects none of an offer it does not know, and the browser then fails the connection.
    assert.equal(r.refused, 1006);
  }));

test('--subprotocol sets what the server selects: a page asking for chat or superchat gets chat', T, async () => {
  const srv = await startServer(['--subprotocol', 'chat', '--subprotocol', 'superchat']);
  try {
    await withPage(async (page) => {
      const r = await page.evaluate(async () => {
        const out = [];
        for (const offer of [['chat', 'superchat'], ['superchat', 'chat'], ['superchat']]) {
          const ws = await t.open('/echo', offer);
          out.push(ws.protocol);
          ws.close();
        }
        return out;
      });
      assert.deepEqual(r, ['chat', 'chat', 'superchat']);
    }, srv);
  } finally {
    await srv.stop();
  }
});

test('ws.extensions shows permessage-deflate', T, async () => {
  const ext = await withPage((page) => page.evaluate(async () => {
    const ws = await t.open('/echo');
    const big = 'compressible '.repeat(10_000);
    ws.send(big);
    const same = (await t.next(ws)) === big;
    ws.close();
    return { extensions: ws.extensions, same };
  }));
  assert.match(ext.extensions, /^permessage-deflate/);
  assert.equal(ext.same, true);
  const plain = await startServer(['--no-deflate']);
  try {
    const none = await withPage((page) => page.evaluate(async () => (await t.open('/echo')).extensions), plain);
    assert.equal(none, '');
  } finally {
    assert.equal((await plain.stop()).code, 0);
  }
});

test('a close from the page: the server answers with the same code and reason', T, () =>
  withPage(async (page) => {
    const c = await page.evaluate(async () => {
      const ws = await t.open('/echo');
      ws.close(4000, 'bye from the page ✓');
      const states = [ws.readyState];
      const closed = await ws.closed;
      return { ...closed, states, final: ws.readyState };
    });
    // wsx answers a close with the peer's code and reason: the page's close event shows them.
    assert.deepEqual(c, { code: 4000, reason: 'bye from the page ✓', wasClean: true, events: ['open', 'close'], states: [2], final: 3 });
    const lines = await server.logLines(/closed .*path="\/echo" code=4000 by="client"/);
    assert.ok(lines.length > 0, 'the close is logged with its code');
  }));

test('a close from the server: /close?code=&reason=', T, () =>
  withPage(async (page) => {
    const c = await page.evaluate(async () => {
      const reason = 'server closes — ✓';
      const ws = await t.open(`/close?code=4001&reason=${encodeURIComponent(reason)}&after=300`, ['chat.v1']);
      ws.send('still echoing');
      const echoed = await t.next(ws);
      const closed = await ws.closed;
      return { ...closed, echoed, protocol: ws.protocol, expected: reason };
    });
    assert.equal(c.echoed, 'still echoing');
    assert.equal(c.protocol, 'chat.v1');
    assert.equal(c.code, 4001);
    assert.equal(c.reason, c.expected);
    assert.equal(c.wasClean, true);
    // A bad code is refused at the handshake (400): the browser sees 1006.
    const bad = await page.evaluate(() => t.open('/close?code=1006').then(() => 'opened', (e) => [e.code, e.wasClean]));
    assert.deepEqual(bad, [1006, false]);
  }));

test('a page from another origin is refused unless --origin allows it', T, async () => {
  const other = await startServer();
  const allowing = await startServer(['--origin', other.origin]);
  try {
    await withPage(async (page) => {
      const refused = await page.evaluate((url) => t.open(url).then(() => 'opened', (e) => ({ code: e.code, wasClean: e.wasClean, events: e.events })), `ws://127.0.0.1:${server.port}/echo`);
      assert.deepEqual(refused, { code: 1006, wasClean: false, events: ['error', 'close'] });
      const lines = await server.logLines(new RegExp(`refused .*status=403 .*origin \\\\"${other.origin}\\\\"`));
      assert.ok(lines.length > 0, `the refusal is logged:\n${server.log.slice(-5).join('\n')}`);
      const allowed = await page.evaluate(async (url) => {
        const ws = await t.open(url);
        ws.send('from another origin');
        const m = await t.next(ws);
        ws.close();
        return m;
      }, `ws://127.0.0.1:${allowing.port}/echo`);
      assert.equal(allowed, 'from another origin');
    }, other);
  } finally {
    assert.equal((await other.stop()).code, 0);
    assert.equal((await allowing.stop()).code, 0);
  }
});

test('SIGTERM closes every connection with 1001, then wsx exits 0', T, async () => {
  const doomed = await startServer();
  await withPage(async (page) => {
    await page.locator('#state', { hasText: 'OPEN' }).waitFor(); // the demo page's own room connection
    const open = page.evaluate(async () => {
      const echo = await t.open('/echo');
      const room = await t.open('/room/shutdown');
      window.closes = Promise.all([echo.closed, room.closed]);
    });
    await open;
    const started = Date.now();
    const status = await doomed.stop('SIGTERM');
    const closes = await page.evaluate(() => window.closes);
    assert.equal(status.code, 0);
    assert.ok(Date.now() - started < 2500, 'exits within the grace period');
    for (const c of closes) assert.deepEqual(c, { code: 1001, reason: 'server shutting down', wasClean: true, events: ['open', 'close'] });
    await page.locator('#closes td', { hasText: '1001' }).waitFor();
  }, doomed);
});

test('the demo page shows the connection, files and close events', T, async () => {
  const room = 'demo';
  const [alice, bob] = [await openPage(browser, server, `/#${room}`), await openPage(browser, server, `/#${room}`)];
  try {
    await alice.fill('#name', 'alice');
    await bob.fill('#name', 'bob');
    for (const p of [alice, bob]) await p.locator('#state', { hasText: '1 OPEN' }).waitFor();
    assert.equal(await alice.textContent('#protocol'), '"chat.v1"');
    assert.match(await alice.textContent('#extensions'), /^"permessage-deflate/);
    assert.equal(await alice.textContent('#buffered'), '0');

    // The page closes with 4000 "brb": its close table shows the server's answer, the same code
    // and reason.
    await alice.fill('#close-code', '4000');
    await alice.fill('#close-reason', 'brb');
    await alice.click('#disconnect');
    const pageRow = alice.locator('#closes tr', { hasText: '4000' });
    await pageRow.waitFor();
    assert.deepEqual((await pageRow.locator('td').allTextContents()).slice(2), ['4000', '"brb"', 'true']);
    await alice.locator('#state', { hasText: '3 CLOSED' }).waitFor();

    // The server closes a connection opened on /close: its code and reason in the table.
    await alice.fill('#server-after', '200');
    await alice.click('#server-close');
    const serverRow = alice.locator('#closes tr', { hasText: '4001' });
    await serverRow.waitFor();
    assert.deepEqual((await serverRow.locator('td').allTextContents()).slice(2), ['4001', '"server says bye"', 'true']);
    await alice.click('#connect');
    await alice.locator('#state', { hasText: '1 OPEN' }).waitFor();
    await alice.evaluate(() => { document.getElementById('log').replaceChildren(); });

    await bob.fill('#message', 'Hi alice, welcome back!');
    await bob.press('#message', 'Enter');
    await alice.locator('#log li', { hasText: 'welcome back' }).waitFor();
    await alice.fill('#message', 'Thanks! Here is the logo 🎨');
    await alice.press('#message', 'Enter');
    await bob.locator('#log li', { hasText: 'Here is the logo' }).waitFor();
    // alice sends an image as a binary message; bob (binaryType blob) sees it inline.
    await bob.selectOption('#binary-type', 'blob');
    const png = Buffer.from((await alice.evaluate(() => {
      const c = document.createElement('canvas');
      c.width = 240; c.height = 100;
      const g = c.getContext('2d');
      const grad = g.createLinearGradient(0, 0, 240, 100);
      grad.addColorStop(0, '#2f6fde'); grad.addColorStop(1, '#8e44ad');
      g.fillStyle = grad; g.fillRect(0, 0, 240, 100);
      g.fillStyle = '#fff'; g.font = 'bold 48px sans-serif'; g.fillText('wsx', 78, 66);
      return c.toDataURL('image/png');
    })).split(',')[1], 'base64');
    await alice.setInputFiles('#file', { name: 'wsx.png', mimeType: 'image/png', buffer: png });
    await bob.locator('#log li img').waitFor();
    assert.equal(await bob.locator('#log li a', { hasText: 'wsx.png' }).count(), 1);
    assert.match(await bob.locator('#log li:not(.system)', { hasText: 'wsx.png' }).textContent(), /^alice · .*wsx\.png \([\d.]+ KiB\) · Blob$/);
    await alice.locator('#log li.mine img').waitFor();
    await bob.fill('#message', 'Nice! Got it 🎉');
    await bob.press('#message', 'Enter');
    await alice.locator('#log li', { hasText: 'Got it 🎉' }).waitFor();

    const shot = process.env.WSX_DEMO_SCREENSHOT;
    if (shot) {
      await alice.fill('#message', 'See you in the lobby');
      await alice.screenshot({ path: shot, fullPage: true });
    }
  } finally {
    await alice.context().close();
    await bob.context().close();
  }
});
