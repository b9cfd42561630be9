// End to end as a supervisor sees it: an agent edits the Grist `Interventions` table,
// Grist posts its webhook to relais, and the open dashboard updates.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  startRelais, tokens, postGristRows, launchBrowser, newPage, waitForState, waitForStats,
  activeRows, waitForToast, artifact,
} from './harness.js';

let relais;
let tok;
let browser;

before(async () => {
  relais = await startRelais();
  tok = tokens(relais.stateDir);
  browser = await launchBrowser();
});

after(async () => {
  if (browser) await browser.close();
  if (relais) await relais.dispose();
});

/** A row in Grist's storage encoding, as the webhook sends it. */
function row(id, statut, priorite, extra = {}) {
  return {
    id, manualSort: id, ID: `INT-2026-${String(id).padStart(3, '0')}`, Agent: 'Marie Durand',
    Localisation: 'Avenue de la République', Type: 'Voirie', Statut: statut, Priorite: priorite,
    Derniere_MAJ: 1763800000 + id, Commentaire: '', ...extra,
  };
}

test('a Grist webhook updates the open dashboard', async () => {
  const page = await newPage(browser);
  await page.goto(`${relais.base}/widget/?token=${encodeURIComponent(tok.dashboard)}`);
  await waitForState(page, 'live');

  assert.equal(await postGristRows(relais, [row(1, 'En cours', 'Normale'), row(2, 'Bloqué', 'Haute', { Agent: 'Jean Martin', Localisation: 'Boulevard Michelet' })]), 200);
  await waitForStats(page, { total: 2, inProgress: 1, blocked: 1 });

  // Grist retries the same batch: nothing changes on screen, no new toast.
  const toastsBefore = await page.locator('#toasts .toast').count();
  assert.equal(await postGristRows(relais, [row(1, 'En cours', 'Normale'), row(2, 'Bloqué', 'Haute', { Agent: 'Jean Martin', Localisation: 'Boulevard Michelet' })]), 200);

  // Marie finishes hers: the toast names her and the new status.
  assert.equal(await postGristRows(relais, [row(1, 'Terminé', 'Normale')]), 200);
  await waitForToast(page, 'Marie Durand: Avenue de la République → Terminé');
  await waitForStats(page, { total: 2, inProgress: 0, done: 1, blocked: 1 });
  assert.equal(await page.locator('#toasts .toast').count(), toastsBefore + 1, 'the retry made no toast');
  const rows = await activeRows(page);
  assert.equal(rows.length, 1);
  assert.match(rows[0].text, /Boulevard Michelet/);
  await artifact(page, 'webhook-dashboard.png');
});

test('the dashboard opened after a restart shows every intervention', async () => {
  const stateDir = mkdtempSync(path.join(os.tmpdir(), 'relais-restart-'));
  let first = await startRelais({ stateDir });
  const rows = [1, 2, 3, 4, 5].map((id) => row(100 + id, id === 5 ? 'Terminé' : 'En cours', 'Normale'));
  try {
    assert.equal(await postGristRows(first, rows), 200);
  } finally {
    await first.dispose();
  }
  // The same single binary, restarted on the same state directory.
  const again = await startRelais({ stateDir });
  try {
    const dashboard = tokens(stateDir).dashboard;
    const page = await newPage(browser);
    await page.goto(`${again.base}/widget/?token=${encodeURIComponent(dashboard)}`);
    await waitForState(page, 'live');
    await waitForStats(page, { total: 5, inProgress: 4, done: 1 });
    // And it keeps streaming from the snapshot's position.
    assert.equal(await postGristRows(again, [row(106, 'Bloqué', 'Haute')]), 200);
    await waitForStats(page, { total: 6, inProgress: 4, done: 1, blocked: 1 });
    await artifact(page, 'widget-after-restart.png');
  } finally {
    await again.dispose();
    rmSync(stateDir, { recursive: true, force: true });
  }
});
