// The dashboard never misses an update: a cut network (TCP proxy dropped) is resumed from
// the last event ID with nothing lost; a relais restart resumes with no gap (history on
// disk), and a memory-only restart is detected as a gap and the view is rebuilt; the browser going offline shows "Hors ligne" and catches up
// when back online.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import {
  startRelais, tokens, publish, intervention, launchBrowser, newPage, waitForState,
  waitForStats, activeRows, waitForToast, artifact, startProxy, freePort, postGristRows, gristRow,
} from './harness.js';

let browser;

before(async () => { browser = await launchBrowser(); });
after(async () => { if (browser) await browser.close(); });

test('network cut: reconnexion, then resume from the last event ID without loss', async (t) => {
  const relais = await startRelais();
  t.after(() => relais.dispose());
  const tok = tokens(relais.stateDir);
  const proxy = await startProxy(relais.port);
  t.after(() => proxy.close());

  assert.equal(await postGristRows(relais, [gristRow(1, { agent: 'Marie Durand', location: 'Avenue A' })]), 200);
  const page = await newPage(browser);
  t.after(() => page.context().close());
  await page.goto(`${proxy.base}/widget/?token=${encodeURIComponent(tok.dashboard)}`);
  await waitForState(page, 'live');
  await waitForStats(page, { total: 1 });
  const lastSeen = await publish(relais, tok.publisher, intervention({
    row_id: 2, agent: 'Jean Martin', location: 'Avenue B', change: 'add',
  }));
  await waitForStats(page, { total: 2 });

  // Every stream request from the cut on is a reconnection, and each must resume from
  // the last event seen. Counted from the cut, not from the restore: once on a loaded
  // machine no request was recorded after a count taken at the restore.
  const before = page.sseRequests.length;
  await proxy.cut();
  await waitForState(page, 'reconnecting');
  // Published while the dashboard cannot hear: it must catch up on these.
  await publish(relais, tok.publisher, intervention({
    row_id: 1, agent: 'Marie Durand', location: 'Avenue A', status: 'Terminé', changed: ['status'],
  }));
  await publish(relais, tok.publisher, intervention({
    row_id: 3, agent: 'Sophie Leroy', location: 'Avenue C', priority: 'Urgente', change: 'add',
  }));
  await artifact(page, 'reconnecting.png');
  await proxy.restore();

  await waitForState(page, 'live');
  await waitForStats(page, { total: 3, done: 1, urgent: 1 });
  await waitForToast(page, 'Marie Durand: Avenue A → Terminé');
  await waitForToast(page, 'Sophie Leroy: Avenue C → nouvelle intervention');
  const resumed = page.sseRequests.slice(before);
  assert.ok(resumed.length >= 1);
  assert.ok(resumed.every((u) => new URL(u).searchParams.get('lastEventID') === lastSeen),
    `resumed from ${lastSeen}: ${resumed.join(' ')}`);
  assert.equal(await page.locator('#toasts .toast', { hasText: 'Historique' }).count(), 0, 'no gap');
  const rows = await activeRows(page);
  assert.match(rows[0].text, /Avenue C/);

  // Live again after the resume.
  await publish(relais, tok.publisher, intervention({ row_id: 4, agent: 'Paul Girard', location: 'Avenue D', change: 'add' }));
  await waitForStats(page, { total: 4 });
  assert.deepEqual(page.errors, []);
});

test('relais restart: reconnexion and resume without loss (history kept on disk)', async (t) => {
  const port = await freePort();
  let relais = await startRelais({ port });
  const stateDir = relais.stateDir;
  // The restarted relais shares the directory without owning it: removed here.
  t.after(async () => {
    await relais.dispose();
    rmSync(stateDir, { recursive: true, force: true });
  });
  const tok = tokens(stateDir);

  assert.equal(await postGristRows(relais, [gristRow(1, { location: 'Avant redémarrage' })]), 200);
  const page = await newPage(browser);
  t.after(() => page.context().close());
  await page.goto(`${relais.base}/widget/?token=${encodeURIComponent(tok.dashboard)}`);
  await waitForState(page, 'live');
  await waitForStats(page, { total: 1 });

  await relais.stop();
  await waitForState(page, 'reconnecting');
  const before = page.sseRequests.length;
  // Same port and state directory: history and record states were reloaded, so the
  // dashboard resumes from its last event ID with no gap.
  relais = await startRelais({ port, stateDir });
  await waitForState(page, 'live');
  await publish(relais, tok.publisher, intervention({
    row_id: 7, agent: 'Lina Roux', location: 'Après redémarrage', change: 'add',
  }));
  await waitForToast(page, 'Lina Roux: Après redémarrage');
  await waitForStats(page, { total: 2 });
  const resumed = page.sseRequests.slice(before);
  assert.ok(resumed.some((u) => {
    const from = new URL(u).searchParams.get('lastEventID');
    return from && from !== 'earliest';
  }), `resumed with the last ID: ${resumed.join(' ')}`);
  assert.equal(await page.locator('#toasts .toast', { hasText: 'Historique' }).count(), 0, 'no gap');
  assert.deepEqual(page.errors, []);
});

test('memory-only relais restart: gap detected, view rebuilt from the snapshot, then live', async (t) => {
  const port = await freePort();
  const env = { RELAIS_HUB__PERSIST: 'false' };
  let relais = await startRelais({ port, env });
  const stateDir = relais.stateDir;
  // The restarted relais shares the directory without owning it: removed here.
  t.after(async () => {
    await relais.dispose();
    rmSync(stateDir, { recursive: true, force: true });
  });
  const tok = tokens(stateDir);

  assert.equal(await postGristRows(relais, [gristRow(1, { location: 'Avant redémarrage' })]), 200);
  const page = await newPage(browser);
  t.after(() => page.context().close());
  await page.goto(`${relais.base}/widget/?token=${encodeURIComponent(tok.dashboard)}`);
  await waitForState(page, 'live');
  await waitForStats(page, { total: 1 });

  await relais.stop();
  await waitForState(page, 'reconnecting');
  // hub.persist = false: the new process knows nothing, so the last event ID is unknown.
  relais = await startRelais({ port, stateDir, env });
  await waitForState(page, 'live');
  await waitForToast(page, 'Historique du relais interrompu');
  // The view is the relay's (empty) state now, not a stale copy.
  await waitForStats(page, { total: 0 });

  await publish(relais, tok.publisher, intervention({
    row_id: 7, agent: 'Lina Roux', location: 'Après redémarrage', change: 'add',
  }));
  await waitForToast(page, 'Lina Roux: Après redémarrage');
  await waitForStats(page, { total: 1 });
  assert.deepEqual(page.errors, []);
});

test('browser offline: Hors ligne, then catches up when back online', async (t) => {
  const relais = await startRelais();
  t.after(() => relais.dispose());
  const tok = tokens(relais.stateDir);
  const page = await newPage(browser);
  t.after(() => page.context().close());
  await page.goto(`${relais.base}/widget/?token=${encodeURIComponent(tok.dashboard)}`);
  await waitForState(page, 'live');

  await page.context().setOffline(true);
  await waitForState(page, 'offline');
  assert.match(await page.textContent('#conn-label'), /Hors ligne/);
  await publish(relais, tok.publisher, intervention({
    row_id: 9, agent: 'Marie Durand', location: 'Pendant la coupure', change: 'add',
  }));
  await page.context().setOffline(false);
  await waitForState(page, 'live');
  await waitForToast(page, 'Marie Durand: Pendant la coupure');
  await waitForStats(page, { total: 1 });
  assert.deepEqual(page.errors, []);
});
