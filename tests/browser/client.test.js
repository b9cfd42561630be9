// The documented entry point of /client/relais.js, `connect()`, used as docs/client.md
// shows it, from a page of relais' origin: the snapshot, then each event once with its
// parsed data, presence with the payload names, the connection states, and a refused
// token reported once with no retry loop.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startRelais, launchBrowser, newPage, moduleUpdate, markModules, technicianToken, hasPresence,
} from './harness.js';

let relais;
let browser;

before(async () => {
  relais = await startRelais();
  browser = await launchBrowser();
});

after(async () => {
  if (browser) await browser.close();
  if (relais) await relais.dispose();
});

/** Runs `connect()` in the page; everything it reports lands in `window.seen`. */
async function connectIn(page, token, audit) {
  await page.evaluate(async ([tok, a]) => {
    const { connect } = await import('/client/relais.js');
    window.seen = { snapshots: [], events: [], presence: [], states: [], auth: [] };
    window.live = connect({
      token: tok,
      topics: [`audits/${a}`],
      presence: `audits/${a}`,
      backoffBaseMs: 200,
      settleMs: 150,
      onSnapshot: (records) => window.seen.snapshots.push(records.map((r) => r.data.module_id)),
      onEvent: (e) => window.seen.events.push({ type: e.type, module: e.data.module_id, status: e.data.status, replay: e.replay }),
      onPresence: (people) => window.seen.presence.push(people.map((p) => p.name)),
      onState: (s) => window.seen.states.push(s),
      onAuthError: (status) => window.seen.auth.push(status),
    });
  }, [token, audit]);
}

test('connect(): snapshot, events once, presence, states', async () => {
  const audit = 'audit-client';
  await markModules(relais, moduleUpdate(audit, 'M001', 'ok', { name: 'Adrien' }));
  const page = await newPage(browser);
  await page.goto(`${relais.base}/healthz`);
  await connectIn(page, technicianToken(audit, 'Adrien'), audit);
  await page.waitForFunction(() => window.seen.states.includes('live'));
  await markModules(relais, moduleUpdate(audit, 'M002', 'dead', { name: 'Marie' }));
  await page.waitForFunction(() => window.seen.events.length >= 1);
  await page.waitForTimeout(300);
  const seen = await page.evaluate(() => window.seen);
  assert.deepEqual(seen.snapshots, [['M001']]);
  assert.deepEqual(seen.events, [{ type: 'module', module: 'M002', status: 'dead', replay: false }]);
  assert.equal(seen.states[0], 'connecting');
  assert.equal(seen.states.at(-1), 'live');
  assert.deepEqual(seen.auth, []);
  if (await hasPresence(relais, technicianToken(audit, 'Adrien'), `audits/${audit}`)) {
    assert.deepEqual(seen.presence.at(-1), ['Adrien'], 'the page itself is on the topic');
  }
  assert.deepEqual(page.errors, []);
  await page.evaluate(() => window.live.close());
  await page.context().close();
});

test('connect(): a refused token is reported once, with no retry loop', async () => {
  const page = await newPage(browser);
  page.on('request', (r) => { if (r.url().includes('/state')) page.sseRequests.push(r.url()); });
  await page.goto(`${relais.base}/healthz`);
  await connectIn(page, 'not-a-token', 'audit-client');
  await page.waitForFunction(() => window.seen.auth.length === 1);
  const tries = page.sseRequests.length;
  await page.waitForTimeout(800);
  const seen = await page.evaluate(() => window.seen);
  assert.deepEqual(seen.auth, [401]);
  assert.equal(seen.states.at(-1), 'offline');
  assert.equal(page.sseRequests.length, tries, 'no retry with a refused token');
  await page.context().close();
});
