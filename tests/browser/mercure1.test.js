// Mercure 1.0 from a real browser: a native EventSource subscribes with
// `match_urlpattern`, authenticated by the `__Secure-mercure_access_token` cookie (an
// EventSource cannot send headers), next to a 0.x EventSource (`topic=` + URI template,
// `mercureAuthorization` cookie) on the same relais. Both get what their selectors match,
// from a 0.x and a 1.0 publisher; a misspelt matcher parameter is refused.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startRelais, mintToken, launchBrowser } from './harness.js';

let browser;

before(async () => { browser = await launchBrowser(); });
after(async () => { if (browser) await browser.close(); });

async function publishOn(base, token, topic, data) {
  const body = new URLSearchParams({ topic, data });
  const resp = await fetch(`${base}/.well-known/mercure`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/x-www-form-urlencoded' },
    body,
  });
  const text = await resp.text();
  assert.equal(resp.status, 200, `publish on ${topic}: ${text}`);
  return text.trim();
}

test('native EventSource with match_urlpattern beside a 0.x one', async (t) => {
  const relais = await startRelais();
  t.after(() => relais.dispose());
  // `localhost` is a secure context for Chromium, so it keeps `Secure` cookies over http.
  const base = `http://localhost:${relais.port}`;
  const hub = `${base}/.well-known/mercure`;
  const v1 = mintToken(relais.stateDir, [
    '--format', '1.0', '--sub', 'tablet', '--aud', hub,
    '--subscribe-urlpattern', 'audits/:token', '--ttl', '1h',
  ]);
  const v0 = mintToken(relais.stateDir, ['--sub', 'dashboard', '--subscribe', 'audits/{token}', '--ttl', '1h']);
  // Publishes go from here to 127.0.0.1: the hub is that URL for them.
  const publisherV1 = mintToken(relais.stateDir, [
    '--format', '1.0', '--sub', 'p1', '--aud', `${relais.base}/.well-known/mercure`, '--publish', '*',
  ]);
  const publisherV0 = mintToken(relais.stateDir, ['--sub', 'p0', '--publish', '*']);

  const context = await browser.newContext();
  t.after(() => context.close());
  await context.addCookies([
    { name: '__Secure-mercure_access_token', value: v1, domain: 'localhost', path: '/', secure: true, httpOnly: true, sameSite: 'Strict' },
    { name: 'mercureAuthorization', value: v0, domain: 'localhost', path: '/', httpOnly: true, sameSite: 'Strict' },
  ]);
  const page = await context.newPage();
  const sse = [];
  page.on('request', (req) => { if (req.url().includes('/.well-known/mercure')) sse.push(req); });
  await page.goto(`${base}/healthz`);

  await page.evaluate(() => {
    window.received = { v1: [], v0: [], refused: null };
    const open = (name, query) => new Promise((resolve) => {
      const es = new EventSource(`/.well-known/mercure?${query}`);
      es.onmessage = (e) => window.received[name].push(e.data);
      es.onopen = () => resolve();
    });
    // The misspelt matcher is refused: the EventSource fails for good (no reconnection
    // after a non-200 answer).
    const bad = new EventSource('/.well-known/mercure?match_regexp=audits');
    bad.onerror = () => { window.received.refused = bad.readyState; };
    window.opened = Promise.all([
      open('v1', `match_urlpattern=${encodeURIComponent('audits/:token')}`),
      open('v0', `topic=${encodeURIComponent('audits/{token}')}`),
    ]);
  });
  await page.evaluate(() => window.opened);

  await publishOn(relais.base, publisherV0, 'audits/abc', 'from 0.x');
  await publishOn(relais.base, publisherV1, 'audits/abc/modules/M050', 'not an audit topic');
  await publishOn(relais.base, publisherV1, 'audits/def', 'from 1.0');

  await page.waitForFunction(() => window.received.v1.length >= 2 && window.received.v0.length >= 2, null, { timeout: 10000 });
  // Anything else published would have arrived before the last one (one stream, in order).
  const received = await page.evaluate(() => window.received);
  assert.deepEqual(received.v1, ['from 0.x', 'from 1.0']);
  assert.deepEqual(received.v0, ['from 0.x', 'from 1.0']);
  assert.equal(received.refused, 2, 'the match_regexp EventSource is closed (readyState CLOSED)');

  // Tokens travelled in cookies only, never in a URL.
  assert.ok(sse.length >= 3);
  for (const req of sse) {
    const url = new URL(req.url());
    assert.ok(!url.searchParams.has('authorization') && !url.searchParams.has('access_token'), url.href);
  }
  const v1Request = sse.find((r) => r.url().includes('match_urlpattern'));
  const cookies = (await v1Request.allHeaders()).cookie || '';
  assert.match(cookies, /__Secure-mercure_access_token=/);
});
