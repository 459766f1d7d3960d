// The demo page in hub mode (wsx.hub.v1) against two `wsx serve` nodes sharing rooms through a
// redis-server started here: pages on different nodes chat, see each other in the members list,
// and a page whose node restarts reconnects by itself and recovers exactly what it missed.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { freePort, launchBrowser, openPage, startRedis, startServer } from './harness.mjs';

const T = { timeout: 90_000 };
let browser;
let redis;

before(async () => {
  redis = await startRedis();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  redis?.stop();
});

async function join(page, name) {
  await page.fill('#name', name);
  // The page connected on load with the default name: join again with this one.
  await page.click('#connect');
  await page.locator('#members li.me', { hasText: name }).waitFor();
}

async function say(page, text) {
  await page.fill('#message', text);
  await page.press('#message', 'Enter');
}

const chat = (page) => page.locator('#log li:not(.system) .body').allTextContents();

test('two pages on two nodes chat through a room, and a page recovers after its node restarts', T, async () => {
  const bus = ['--bus', redis.url, '--presence-ttl', '2'];
  const portB = await freePort();
  const a = await startServer(bus);
  let b = await startServer([...bus, '--addr', `127.0.0.1:${portB}`]);
  const room = `hub-${Date.now()}`;
  const alice = await openPage(browser, a, `/?endpoint=hub#${room}`);
  const bob = await openPage(browser, b, `/?endpoint=hub#${room}`);
  try {
    await join(alice, 'alice');
    await join(bob, 'bob');
    assert.equal(await bob.textContent('#protocol'), '"wsx.hub.v1"');
    // Presence spans the nodes: each page lists both.
    await alice.locator('#members li', { hasText: 'bob' }).waitFor();
    await bob.locator('#members li', { hasText: 'alice' }).waitFor();

    await say(alice, 'hello bob, from node A');
    await bob.locator('#log li', { hasText: 'hello bob, from node A' }).waitFor();
    await say(bob, 'hi alice, from node B');
    await alice.locator('#log li', { hasText: 'hi alice, from node B' }).waitFor();
    await alice.locator('#log li.mine', { hasText: 'hello bob, from node A' }).waitFor();

    // Bob's node goes away (SIGTERM: it closes with 1001); alice goes on talking.
    const status = await b.stop();
    assert.equal(status.code, 0);
    await bob.locator('#log li.system', { hasText: 'code 1001' }).waitFor();
    await bob.locator('#log li.system', { hasText: 'reconnecting' }).waitFor();
    await alice.locator('#members li', { hasText: 'bob' }).waitFor({ state: 'detached' });
    await say(alice, 'while you were away 1');
    await say(alice, 'while you were away 2');
    await alice.locator('#log li', { hasText: 'while you were away 2' }).waitFor();

    // The node comes back on its port: the page reconnects by itself and recovers both.
    b = await startServer([...bus, '--addr', `127.0.0.1:${portB}`]);
    await bob.locator('#log li.system', { hasText: '2 missed message(s) recovered' }).waitFor({ timeout: 20_000 });
    await bob.locator('#log li', { hasText: 'while you were away 2' }).waitFor();
    assert.deepEqual(await chat(bob), [
      'hello bob, from node A',
      'hi alice, from node B',
      'while you were away 1',
      'while you were away 2',
    ]);
    await alice.locator('#members li', { hasText: 'bob' }).waitFor();
    await say(bob, 'back on node B');
    await alice.locator('#log li', { hasText: 'back on node B' }).waitFor();

    // A newcomer gets the room's latest messages on join.
    const carol = await openPage(browser, a, `/?endpoint=hub#${room}`);
    await join(carol, 'carol');
    await carol.locator('#log li', { hasText: 'back on node B' }).waitFor();
    assert.ok((await chat(carol)).includes('hello bob, from node A'));
    await carol.context().close();
  } finally {
    await alice.context().close();
    await bob.context().close();
    await a.stop();
    await b.stop();
  }
});
