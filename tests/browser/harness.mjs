// Test harness: starts `wsx serve` processes and a headless Debian chromium.
//
//   WSX_BIN               the wsx binary (default: target/release/wsx, built by scripts/browser-test)
//   CHROMIUM              the browser (default: /usr/bin/chromium)
//   WSX_DEMO_SCREENSHOT   where the demo test saves its screenshot (default: none)

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const WSX_BIN = process.env.WSX_BIN || path.join(root, 'target/release/wsx');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

const ANSI = /\x1b\[[0-9;]*m/g;

// Servers still running when this process ends (a failed or interrupted run) are killed.
const running = new Set();
process.on('exit', () => {
  for (const proc of running) proc.kill('SIGKILL');
});

/** A running `wsx serve --addr 127.0.0.1:0 ...args` (or on the `--addr` in `args`); resolves once it listens. */
export async function startServer(args = []) {
  const addr = args.includes('--addr') ? [] : ['--addr', '127.0.0.1:0'];
  const proc = spawn(WSX_BIN, ['serve', ...addr, ...args], {
    env: { ...process.env, NO_COLOR: '1', RUST_LOG: 'info' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  running.add(proc);
  const log = [];
  const exited = once(proc, 'exit').then(([code, signal]) => {
    running.delete(proc);
    return { code, signal };
  });
  const port = await new Promise((resolve, reject) => {
    let partial = '';
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (chunk) => {
      const lines = (partial + chunk).split('\n');
      partial = lines.pop();
      for (const raw of lines) {
        const line = raw.replace(ANSI, '');
        log.push(line);
        const m = /listening.*addr=127\.0\.0\.1:(\d+)/.exec(line);
        if (m) resolve(Number(m[1]));
      }
    });
    proc.on('error', reject);
    exited.then(({ code }) => reject(new Error(`wsx serve exited (${code}) before listening:\n${log.join('\n')}`)));
  });
  const tls = args.includes('--tls-self-signed') || args.includes('--tls-cert');
  // `wsx serve --tls-self-signed` prints the SPKI pin of the certificate it made.
  const pin = log.map((l) => /SPKI pin: (\S+)/.exec(l)).find(Boolean)?.[1];
  return {
    port,
    origin: `${tls ? 'https' : 'http'}://127.0.0.1:${port}`,
    pin,
    log,
    exited,
    /** Lines of the log that match `re`, waiting up to `ms` for at least one. */
    async logLines(re, ms = 2000) {
      const end = Date.now() + ms;
      for (;;) {
        const found = log.filter((l) => re.test(l));
        if (found.length || Date.now() > end) return found;
        await new Promise((r) => setTimeout(r, 25));
      }
    },
    /** Sends `signal` and resolves with the exit status. */
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      return exited;
    },
  };
}

/** A free loopback TCP port (free when this resolves; taken soon after by whoever asked). */
export async function freePort() {
  const net = await import('node:net');
  const srv = net.createServer();
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address();
  await new Promise((resolve) => srv.close(resolve));
  return port;
}

/**
 * A `redis-server` of its own on a loopback port (no persistence), for the hub tests;
 * resolves once it answers. `stop()` kills it.
 */
export async function startRedis() {
  const net = await import('node:net');
  const port = await freePort();
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: ['ignore', 'ignore', 'ignore'],
  });
  running.add(proc);
  const failed = new Promise((_, reject) => proc.on('error', (e) => reject(new Error(`cannot run redis-server: ${e.message}`))));
  const ready = (async () => {
    const end = Date.now() + 10_000;
    for (;;) {
      const pong = await new Promise((resolve) => {
        const s = net.connect(port, '127.0.0.1', () => s.write('PING\r\n'));
        s.on('data', (d) => { s.destroy(); resolve(d.toString().startsWith('+PONG')); });
        s.on('error', () => resolve(false));
      });
      if (pong) return;
      if (Date.now() > end) throw new Error(`redis-server did not answer on port ${port} within 10 s`);
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  await Promise.race([ready, failed]);
  return {
    url: `redis://127.0.0.1:${port}/`,
    stop() {
      running.delete(proc);
      proc.kill('SIGKILL');
    },
  };
}

/** Headless chromium with a fresh temporary profile (playwright makes one per launch). */
export function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: BROWSER_ARGS,
  });
}

const BROWSER_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/**
 * Headless chromium that trusts the certificates whose SPKI pins (base64 SHA-256 of the public
 * key) are given, as `--ignore-certificate-errors-spki-list` does: Chromium reads that switch
 * only with a persistent profile, so this is a persistent context in a fresh temporary
 * user-data-dir. Resolves to the context (`newPage`, `close`).
 */
export async function launchTrustingContext(pins) {
  const { mkdtemp, rm } = await import('node:fs/promises');
  const os = await import('node:os');
  const dir = await mkdtemp(path.join(os.tmpdir(), 'wsx-chromium-'));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [...BROWSER_ARGS, `--ignore-certificate-errors-spki-list=${pins.join(',')}`],
  });
  const close = context.close.bind(context);
  context.close = async () => {
    await close();
    await rm(dir, { recursive: true, force: true });
  };
  return context;
}

/**
 * A small toolkit installed in test pages as `window.t`: promise-based wrappers around the
 * browser's WebSocket, so that a test body evaluated in the page reads top to bottom.
 */
export const TOOLKIT = `
window.t = {
  /** Opens a WebSocket; resolves when open, rejects with the close event's fields if it never opens. */
  open(url, protocols = [], binaryType = 'arraybuffer') {
    if (url.startsWith('/')) url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + url;
    const ws = new WebSocket(url, protocols);
    ws.binaryType = binaryType;
    ws.queue = [];
    ws.waiters = [];
    ws.events = [];
    ws.addEventListener('open', () => ws.events.push('open'));
    ws.addEventListener('error', () => ws.events.push('error'));
    ws.addEventListener('message', (e) => {
      const w = ws.waiters.shift();
      if (w) w(e.data); else ws.queue.push(e.data);
    });
    ws.closed = new Promise((resolve) => ws.addEventListener('close', (e) => {
      ws.events.push('close');
      resolve({ code: e.code, reason: e.reason, wasClean: e.wasClean, events: ws.events });
    }));
    return new Promise((resolve, reject) => {
      ws.addEventListener('open', () => resolve(ws));
      ws.closed.then((c) => reject(Object.assign(new Error('closed before open'), c)));
    });
  },
  /** The next message's data. */
  next(ws) {
    if (ws.queue.length) return Promise.resolve(ws.queue.shift());
    return new Promise((resolve) => ws.waiters.push(resolve));
  },
  /** Deterministic pseudo-random bytes (xorshift32). */
  bytes(n, seed = 1) {
    const out = new Uint8Array(n);
    let x = seed >>> 0 || 1;
    for (let i = 0; i < n; i++) {
      x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
      out[i] = x & 0xff;
    }
    return out;
  },
  equal(a, b) {
    if (a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  },
};
`;

/** A new page (own context: own cookies, storage) loaded from `server` at `path`, with the toolkit. */
export async function openPage(browser, server, path = '/') {
  const context = await browser.newContext({ viewport: { width: 1200, height: 860 } });
  const page = await context.newPage();
  await page.goto(server.origin + path);
  await page.addScriptTag({ content: TOOLKIT });
  return page;
}
