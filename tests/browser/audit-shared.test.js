// The audit board with what relais shares between pages: presence (Mercure active
// subscriptions: two technicians see each other, and see a closed tablet leave) and two
// relais instances on one real redis-server with one page on each (markings posted to
// either instance reach both pages, presence too).
//
// The presence checks need relais' active-subscriptions API: when the relais under test
// does not answer it, they are skipped and say so (never passed silently).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startRelais, launchBrowser, waitForToast, moduleUpdate, technicianToken, startRedis, hasPresence,
  openBoard as openBoardIn, waitForModule, markModules, waitForPresence,
} from './harness.js';

let browser;

before(async () => { browser = await launchBrowser(); });
after(async () => { if (browser) await browser.close(); });

const openBoard = (base, audit, name, query) => openBoardIn(browser, base, audit, name, query);
const mark = markModules;

test('presence: two technicians on one audit see each other, a closed tablet leaves', async (t) => {
  const relais = await startRelais();
  t.after(() => relais.dispose());
  const audit = 'audit-presence';
  if (!await hasPresence(relais, technicianToken(audit, 'Adrien'), `audits/${audit}`)) {
    t.skip('NOT RUN: this relais does not answer GET /.well-known/mercure/subscriptions/{topic} (presence, issue 12)');
    return;
  }
  const adrien = await openBoard(relais.base, audit, 'Adrien', '&modules=1x2');
  await waitForPresence(adrien, ['Adrien']);
  const marie = await openBoard(relais.base, audit, 'Marie', '&modules=1x2');
  await waitForPresence(marie, ['Adrien', 'Marie']);
  await waitForPresence(adrien, ['Adrien', 'Marie']);

  await mark(relais, moduleUpdate(audit, 'S1-1', 'ok', { name: 'Marie' }));
  await waitForToast(adrien, 'S1-1 → OK (Marie)');
  // Presence events are not markings: no toast, no count.
  assert.equal(await adrien.locator('#toasts .toast').count(), 1);

  await marie.context().close();
  await waitForPresence(adrien, ['Adrien']);
  assert.deepEqual(adrien.errors, []);
  await adrien.context().close();
});

/** Two relais instances on one throw-away redis-server. */
async function twoInstances(t) {
  const redis = await startRedis();
  t.after(() => redis.stop());
  const env = { RELAIS_REDIS__URL: redis.url };
  const one = await startRelais({ env });
  t.after(() => one.dispose());
  const two = await startRelais({ env });
  t.after(() => two.dispose());
  return [one, two];
}

test('two relais instances on Redis, one page on each: markings cross both ways', async (t) => {
  const [one, two] = await twoInstances(t);
  const audit = 'audit-redis';
  await mark(one, moduleUpdate(audit, 'S1-1', 'ok', { name: 'Adrien' }));
  const adrien = await openBoard(one.base, audit, 'Adrien', '&modules=2x2');
  const marie = await openBoard(two.base, audit, 'Marie', '&modules=2x2');
  // Late join on the other instance: the state lives in Redis.
  await waitForModule(marie, 'S1-1', 'ok');

  await mark(one, moduleUpdate(audit, 'S1-2', 'microcracks', { name: 'Adrien' }));
  await mark(two, moduleUpdate(audit, 'S2-1', 'dead', { name: 'Marie' }));
  for (const page of [adrien, marie]) {
    await waitForModule(page, 'S1-2', 'microcracks');
    await waitForModule(page, 'S2-1', 'dead');
    await waitForToast(page, 'S1-2 → Microfissures (Adrien)');
    await waitForToast(page, 'S2-1 → Module mort (Marie)');
    assert.equal(await page.textContent('#progress'), '3 / 4 modules marqués');
    assert.equal(await page.locator('#toasts .toast').count(), 2, 'one toast per marking');
  }
  assert.deepEqual(adrien.errors, []);
  assert.deepEqual(marie.errors, []);
  await adrien.context().close();
  await marie.context().close();
});

test('two relais instances on Redis: presence crosses instances', async (t) => {
  const [one, two] = await twoInstances(t);
  const audit = 'audit-redis-presence';
  if (!await hasPresence(one, technicianToken(audit, 'Adrien'), `audits/${audit}`)) {
    t.skip('NOT RUN: this relais does not answer GET /.well-known/mercure/subscriptions/{topic} (presence, issue 12)');
    return;
  }
  const adrien = await openBoard(one.base, audit, 'Adrien', '&modules=1x2');
  const marie = await openBoard(two.base, audit, 'Marie', '&modules=1x2');
  await waitForPresence(adrien, ['Adrien', 'Marie']);
  await waitForPresence(marie, ['Adrien', 'Marie']);
  await marie.context().close();
  await waitForPresence(adrien, ['Adrien']);
  assert.deepEqual(adrien.errors, []);
  await adrien.context().close();
});
