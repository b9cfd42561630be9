// The widget inside a Grist host. No official Grist mock exists, so a fake `window.grist`
// is defined before the widget code loads (page.addInitScript); it behaves like the
// plugin API the widget uses: ready, onRecords (with mappings), mapColumnNames (both the
// older null-on-unmapped and the newer partial behaviours), onOptions / setOption, and
// the settings panel through onEditOptions. The relay is the real relais.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startRelais, tokens, publish, intervention, launchBrowser, newPage, waitForState,
  waitForStats, activeRows, waitForToast, artifact,
} from './harness.js';

/** Runs in the page before widget.js: a Grist host that the test drives. */
function fakeGrist() {
  const host = {
    calls: [],
    options: null,
    mappings: null,
    nullWhenUnmapped: false,
    onRecordsCb: null,
    onOptionsCb: null,
    sendRecords(rows, mappings) {
      host.mappings = mappings;
      host.onRecordsCb(rows, mappings);
    },
    sendOptions(options) {
      host.options = options;
      host.onOptionsCb(options, {});
    },
  };
  window.__gristHost = host;
  window.grist = {
    ready(opts) { host.calls.push(['ready', opts]); host.readyOptions = opts; },
    onRecords(cb) { host.calls.push(['onRecords']); host.onRecordsCb = cb; },
    onOptions(cb) { host.calls.push(['onOptions']); host.onOptionsCb = cb; },
    async setOption(key, value) {
      host.calls.push(['setOption', key, value]);
      host.options = { ...(host.options || {}), [key]: value };
      setTimeout(() => host.onOptionsCb(host.options, {}), 0);
    },
    mapColumnNames(record, opts) {
      const mappings = (opts && opts.mappings) || host.mappings;
      const columns = host.readyOptions.columns;
      if (!mappings) return record;
      const out = { id: record.id };
      for (const col of columns) {
        const name = typeof col === 'string' ? col : col.name;
        const mapped = mappings[name];
        if (mapped) out[name] = record[mapped];
        else if (!col.optional && host.nullWhenUnmapped) return null;
      }
      return out;
    },
  };
}

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

const MAPPINGS = {
  ID: 'Ref', Agent: 'Technicien', Localisation: 'Adresse', Type: 'Nature', Statut: 'Etat',
  Priorite: 'Urgence', Derniere_MAJ: 'MAJ', Commentaire: 'Notes',
};
const now = Math.floor(Date.now() / 1000);
const ROWS = [
  { id: 1, Ref: 'INT-1', Technicien: 'Marie Durand', Adresse: 'Avenue de la République', Nature: 'Voirie', Etat: 'En cours', Urgence: 'Normale', MAJ: new Date((now - 600) * 1000), Notes: '' },
  { id: 2, Ref: 'INT-2', Technicien: 'Jean Martin', Adresse: 'Boulevard Michelet', Nature: 'Bâtiment', Etat: 'Bloqué', Urgence: 'Haute', MAJ: new Date((now - 300) * 1000), Notes: 'Accès fermé' },
  { id: 3, Ref: 'INT-3', Technicien: 'Sophie Leroy', Adresse: 'Quai du Port', Nature: 'Signalisation', Etat: 'Terminé', Urgence: 'Basse', MAJ: new Date((now - 100) * 1000), Notes: '' },
];

test('Grist mode: ready, options, mapped records, live events over the table', async () => {
  const page = await newPage(browser, { initScript: fakeGrist });
  await page.goto(`${relais.base}/widget/`);
  await page.waitForFunction(() => window.__gristHost.onRecordsCb && window.__gristHost.onOptionsCb);
  const ready = await page.evaluate(() => {
    const o = window.__gristHost.readyOptions;
    return { access: o.requiredAccess, columns: o.columns, editable: typeof o.onEditOptions };
  });
  assert.equal(ready.access, 'read table');
  assert.equal(ready.editable, 'function');
  const byName = Object.fromEntries(ready.columns.map((c) => [c.name, c]));
  for (const name of ['Agent', 'Localisation', 'Statut', 'Priorite']) {
    assert.ok(byName[name] && byName[name].title && !byName[name].optional, `${name} declared, required`);
  }
  assert.equal(byName.Commentaire.optional, true);
  assert.equal(await page.evaluate(() => document.body.dataset.mode), 'grist');
  // Not framed, no script tag: the plugin API is the fake, nothing fetched from Grist.
  assert.equal(await page.locator('script[src*="getgrist"]').count(), 0);

  // No options yet: the widget asks for them and does not connect.
  await page.evaluate(() => window.__gristHost.sendOptions(null));
  await waitForState(page, 'offline');
  assert.match(await page.textContent('#notice'), /configuration du widget/);
  assert.equal(page.sseRequests.length, 0);

  await page.evaluate(([rows, m]) => window.__gristHost.sendRecords(
    rows.map((r) => ({ ...r, MAJ: new Date(r.MAJ) })), m,
  ), [ROWS, MAPPINGS]);
  await waitForStats(page, { total: 3, inProgress: 1, done: 1, blocked: 1, urgent: 0 });
  let rows = await activeRows(page);
  assert.deepEqual(rows.map((r) => r.key), ['2', '1']);
  assert.match(rows[0].text, /Jean Martin/);
  assert.match(rows[0].text, /Accès fermé/);

  await page.evaluate(([url, token]) => window.__gristHost.sendOptions({ relayUrl: url, token }), [relais.base, tok.dashboard]);
  await waitForState(page, 'live');
  assert.equal(await page.isHidden('#notice'), true);
  const first = new URL(page.sseRequests[0]);
  assert.equal(first.searchParams.get('lastEventID'), null, 'Grist mode: the table is the snapshot');

  // A change arrives through relais before Grist's own refresh: toast, flash, new state.
  await publish(relais, tok.publisher, intervention({
    row_id: 1, id: 'INT-1', agent: 'Marie Durand', location: 'Avenue de la République',
    status: 'Bloqué', priority: 'Urgente', changed: ['status', 'priority'],
    updated_at: new Date().toISOString(),
  }));
  await waitForToast(page, 'Marie Durand: Avenue de la République → Bloqué, priorité Urgente');
  await waitForStats(page, { total: 3, inProgress: 0, blocked: 2, urgent: 1 });
  await page.waitForSelector('#active-list > li.flash[data-key="1"]', { timeout: 5000 });
  rows = await activeRows(page);
  assert.deepEqual(rows.map((r) => r.key), ['1', '2'], 'urgent first');

  // Grist's refresh with an older snapshot does not flip the row back...
  await page.evaluate(([rows, m]) => window.__gristHost.sendRecords(
    rows.map((r) => ({ ...r, MAJ: new Date(r.MAJ) })), m,
  ), [ROWS, MAPPINGS]);
  await page.waitForTimeout(100);
  await waitForStats(page, { blocked: 2, urgent: 1 });
  // ...and a newer table row wins over the event.
  const newer = ROWS.map((r) => (r.id === 1 ? { ...r, Etat: 'Terminé', MAJ: new Date(Date.now() + 60000) } : r));
  await page.evaluate(([rows, m]) => window.__gristHost.sendRecords(
    rows.map((r) => ({ ...r, MAJ: new Date(r.MAJ) })), m,
  ), [newer, MAPPINGS]);
  await waitForStats(page, { done: 2, blocked: 1, urgent: 0 });
  await artifact(page, 'grist.png');
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('Grist mode: unmapped required columns, both mapColumnNames behaviours', async () => {
  const page = await newPage(browser, { initScript: fakeGrist });
  await page.goto(`${relais.base}/widget/`);
  await page.waitForFunction(() => window.__gristHost.onRecordsCb);
  const partial = { ...MAPPINGS, Statut: null };

  // Newer Grist: the record without the unmapped column.
  await page.evaluate(([rows, m]) => window.__gristHost.sendRecords(rows, m), [ROWS, partial]);
  await waitForStats(page, { total: 3 });
  assert.match(await page.textContent('#notice'), /Associez les colonnes requises \(.*Statut.*\)/);
  const rows = await activeRows(page);
  assert.equal(rows.length, 3, 'no status: nothing is known to be done');
  assert.match(rows[0].text, /Statut \?/);

  // Older Grist: null for such records.
  await page.evaluate(([rows, m]) => {
    window.__gristHost.nullWhenUnmapped = true;
    window.__gristHost.sendRecords(rows, m);
  }, [ROWS, partial]);
  await waitForStats(page, { total: 0 });
  assert.match(await page.textContent('#notice'), /Associez les colonnes requises/);

  // Mapping completed: the notice goes away once a token is set too.
  await page.evaluate(([url, token]) => window.__gristHost.sendOptions({ relayUrl: url, token }), [relais.base, tok.dashboard]);
  await page.evaluate(([rows, m]) => window.__gristHost.sendRecords(rows, m), [ROWS, MAPPINGS]);
  await waitForStats(page, { total: 3, done: 1 });
  await page.waitForFunction(() => document.getElementById('notice').hidden);
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('Grist mode: settings panel through onEditOptions saves with setOption', async () => {
  const page = await newPage(browser, { initScript: fakeGrist });
  await page.goto(`${relais.base}/widget/`);
  await page.waitForFunction(() => window.__gristHost.onOptionsCb);
  // Another origin than the page's: the CSP blocks it and the widget explains why.
  await page.evaluate(() => window.__gristHost.sendOptions({ relayUrl: 'http://127.0.0.1:9', token: 'x' }));
  await page.waitForFunction(() => /politique de sécurité/.test(document.getElementById('notice').textContent));
  await page.evaluate(() => window.__gristHost.readyOptions.onEditOptions());
  await page.waitForSelector('#settings[open]');
  assert.equal(await page.isVisible('#relay-url'), true, 'relay URL is editable in Grist mode');
  assert.equal(await page.inputValue('#relay-url'), 'http://127.0.0.1:9');
  await page.fill('#relay-url', relais.base);
  await page.fill('#token', tok.dashboard);
  await page.click('#settings-save');
  await waitForState(page, 'live');
  const calls = await page.evaluate(() => window.__gristHost.calls.filter((c) => c[0] === 'setOption'));
  assert.deepEqual(calls, [['setOption', 'relayUrl', relais.base], ['setOption', 'token', tok.dashboard]]);

  // A token Grist's options hold that relais refuses: the panel asks for a new one.
  await page.evaluate(() => window.__gristHost.sendOptions({ ...window.__gristHost.options, token: 'expired' }));
  await page.waitForSelector('#settings[open]', { timeout: 5000 });
  assert.match(await page.textContent('#settings-message'), /401/);
  assert.deepEqual(page.errors, []);
  await page.context().close();
});
