// Chromium over TLS: pages loaded over https from `wsx serve --tls-self-signed` (and from
// `--tls-cert/--tls-key` with a certificate made here with openssl), their WebSockets over wss.
// Chromium trusts each certificate through its SPKI pin (--ignore-certificate-errors-spki-list),
// and refuses it without.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { launchBrowser, launchTrustingContext, startServer, TOOLKIT } from './harness.mjs';

const T = { timeout: 60_000 };
let server;
let context;

before(async () => {
  server = await startServer(['--tls-self-signed']);
  assert.ok(server.pin, `wsx serve printed no SPKI pin:\n${server.log.join('\n')}`);
  assert.match(server.origin, /^https:/);
  context = await launchTrustingContext([server.pin]);
});

after(async () => {
  await context?.close();
  const status = await server?.stop();
  assert.equal(status?.code, 0, 'wsx serve exits 0 on SIGTERM');
});

async function withPage(fn, ctx = context, srv = server) {
  const page = await ctx.newPage();
  try {
    await page.goto(srv.origin + '/');
    await page.addScriptTag({ content: TOOLKIT });
    return await fn(page);
  } finally {
    await page.close();
  }
}

test('the page is served over https and its WebSocket is wss', T, () =>
  withPage(async (page) => {
    const r = await page.evaluate(async () => {
      const ws = await t.open('/echo');
      ws.send('over TLS ✓');
      const echoed = await t.next(ws);
      ws.close();
      return { protocol: location.protocol, url: ws.url, echoed, extensions: ws.extensions };
    });
    assert.equal(r.protocol, 'https:');
    assert.match(r.url, /^wss:\/\/127\.0\.0\.1:\d+\/echo$/);
    assert.equal(r.echoed, 'over TLS ✓');
    assert.match(r.extensions, /^permessage-deflate/);
    const lines = await server.logLines(/open .*path="\/echo"/);
    assert.ok(lines.length > 0, 'the server logged the wss connection');
  }));

test('text, binary and a large message over wss', T, () =>
  withPage(async (page) => {
    const r = await page.evaluate(async () => {
      const ws = await t.open('/echo', [], 'arraybuffer');
      const samples = ['héllo', '日本語', '🦀🎉', ''];
      const texts = [];
      for (const s of samples) {
        ws.send(s);
        texts.push(await t.next(ws));
      }
      const small = t.bytes(1000, 7);
      ws.send(small);
      const smallBack = new Uint8Array(await t.next(ws));
      const big = t.bytes(1 << 20, 9);
      ws.send(big);
      const bigBack = new Uint8Array(await t.next(ws));
      ws.close(1000);
      return { texts, samples, small: t.equal(small, smallBack), big: t.equal(big, bigBack), bigLen: bigBack.length };
    });
    assert.deepEqual(r.texts, r.samples);
    assert.ok(r.small, '1000 binary bytes echoed intact');
    assert.ok(r.big, `1 MiB echoed intact (${r.bigLen} bytes back)`);
  }));

test('close codes over wss, from the page and from the server', T, () =>
  withPage(async (page) => {
    const fromPage = await page.evaluate(async () => {
      const ws = await t.open('/echo');
      ws.close(4000, 'bye');
      return ws.closed;
    });
    assert.deepEqual(fromPage, { code: 4000, reason: 'bye', wasClean: true, events: ['open', 'close'] });
    const fromServer = await page.evaluate(async () => {
      const ws = await t.open('/close?code=4001&reason=tls%20bye&after=100');
      return ws.closed;
    });
    assert.equal(fromServer.code, 4001);
    assert.equal(fromServer.reason, 'tls bye');
    assert.equal(fromServer.wasClean, true);
  }));

test('two pages in one room over wss', T, () =>
  withPage((a) =>
    withPage(async (b) => {
      const room = `/room/tls-${Date.now()}`;
      const received = b.evaluate(async (room) => {
        const ws = await t.open(room);
        window.ready = true;
        const got = await t.next(ws);
        ws.close();
        return got;
      }, room);
      await b.waitForFunction(() => window.ready === true);
      await a.evaluate(async (room) => {
        const ws = await t.open(room);
        ws.send('hello from the other tab');
        await t.next(ws); // the room echoes to the sender too
        ws.close();
      }, room);
      assert.equal(await received, 'hello from the other tab');
    })));

test('a certificate from files (--tls-cert/--tls-key), trusted by its pin', T, async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'wsx-tls-'));
  try {
    const cert = path.join(dir, 'cert.pem');
    const key = path.join(dir, 'key.pem');
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=wsx browser test',
      '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    const spki = new X509Certificate(readFileSync(cert)).publicKey.export({ type: 'spki', format: 'der' });
    const pin = createHash('sha256').update(spki).digest('base64');
    const srv = await startServer(['--tls-cert', cert, '--tls-key', key]);
    const ctx = await launchTrustingContext([pin]);
    try {
      const echoed = await withPage((page) => page.evaluate(async () => {
        const ws = await t.open('/echo');
        ws.send('from files');
        const got = await t.next(ws);
        ws.close();
        return got;
      }), ctx, srv);
      assert.equal(echoed, 'from files');
    } finally {
      await ctx.close();
      await srv.stop();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('without the pin Chromium refuses the certificate', T, async () => {
  const browser = await launchBrowser();
  try {
    const page = await browser.newPage();
    await assert.rejects(page.goto(server.origin + '/'), /ERR_CERT_AUTHORITY_INVALID/);
  } finally {
    await browser.close();
  }
});
