// The DiagPV live audit board (/audit/), in Chromium, with markings arriving as signed hub
// webhooks (POST /hooks/hub/diagpv, Standard Webhooks) exactly as the DiagPV hub sends
// them: serving headers; two technicians' pages on one audit seeing each other's markings
// live; a page opened late showing the state from /state, then live changes; a page
// offline while markings happen, converging without reload and without duplicate toasts;
// a relais restart (disk store); a script-bearing comment staying text; the M### grid.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import {
  ROOT, startRelais, launchBrowser, newPage, waitForState, waitForToast, artifact, freePort,
  moduleUpdate, technicianToken, openBoard as openBoardIn, waitForModule, waitForProgress, markModules,
  hasPresence, waitForPresence,
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

async function toasts(page) {
  return page.$$eval('#toasts .toast', (ts) => ts.map((t) => t.textContent));
}

async function count(page, status) {
  return Number(await page.textContent(`#count-${status} .count-value`));
}

const openBoard = (base, audit, name, query) => openBoardIn(browser, base, audit, name, query);
const mark = markModules;

test('serving: the board and the client, their headers, the redirect', async () => {
  const index = await fetch(`${relais.base}/audit/`);
  assert.equal(index.status, 200);
  assert.equal(index.headers.get('content-type'), 'text/html; charset=utf-8');
  const csp = index.headers.get('content-security-policy');
  assert.match(csp, /script-src 'self';/);
  assert.doesNotMatch(csp, /unsafe|https:/);
  assert.match(csp, /frame-ancestors 'self'$/);
  assert.equal(index.headers.get('referrer-policy'), 'no-referrer');
  assert.doesNotMatch(await index.text(), /(src|href)\s*=\s*["']?(https?:)?\/\//i);

  const client = await fetch(`${relais.base}/client/relais.js`);
  assert.equal(client.status, 200);
  assert.equal(client.headers.get('content-type'), 'text/javascript; charset=utf-8');
  assert.match(await client.text(), /export function connect/);
  for (const file of ['audit.js', 'audit.css']) {
    const r = await fetch(`${relais.base}/audit/${file}`);
    assert.equal(r.status, 200, file);
  }
  const redirect = await fetch(`${relais.base}/audit?audit=A1&token=secret`, { redirect: 'manual' });
  assert.equal(redirect.status, 308);
  assert.equal(redirect.headers.get('location'), '/audit/?audit=A1');
});

test('late join from /state, then live markings both ways, one toast each', async () => {
  const audit = 'a4e19950-live';
  // Marked before any page is open: the board must show them from /state.
  await mark(relais,
    moduleUpdate(audit, 'S1-1', 'ok', { name: 'Adrien' }),
    moduleUpdate(audit, 'S1-2', 'microcracks', { name: 'Adrien', comment: 'Fissures visibles EL' }));
  await mark(relais, moduleUpdate('another-audit', 'S1-3', 'dead', { name: 'Zoé' }));

  const adrien = await openBoard(relais.base, audit, 'Adrien', '&modules=2x3');
  await waitForModule(adrien, 'S1-1', 'ok');
  await waitForModule(adrien, 'S1-2', 'microcracks');
  await waitForModule(adrien, 'S1-3', '');
  assert.equal(await adrien.textContent('#progress'), '2 / 6 modules marqués');
  assert.equal(await count(adrien, 'microcracks'), 1);
  assert.equal(await adrien.locator('#grid .string-row').count(), 2, 'one row per string');
  assert.equal(await adrien.locator('#grid [data-module]').count(), 6);
  assert.deepEqual(await toasts(adrien), [], 'the snapshot makes no toast');
  assert.ok(!adrien.url().includes('token='), 'the token left the address bar');

  // Marie's tablet joins later: same state, then both see each other's markings.
  const marie = await openBoard(relais.base, audit, 'Marie', '&modules=2x3');
  await waitForProgress(marie, '2 / 6 modules marqués');

  await mark(relais, moduleUpdate(audit, 'S2-1', 'dead', { name: 'Marie' }));
  for (const page of [adrien, marie]) {
    await waitForModule(page, 'S2-1', 'dead');
    await waitForToast(page, 'S2-1 → Module mort (Marie)');
    await waitForProgress(page, '3 / 6 modules marqués');
    await page.waitForSelector('#grid [data-module="S2-1"].flash', { timeout: 5000 });
  }
  await mark(relais, moduleUpdate(audit, 'S1-1', 'microcracks', { name: 'Adrien', comment: 'Reprise EL' }));
  for (const page of [adrien, marie]) {
    await waitForToast(page, 'S1-1 → Microfissures (Adrien)');
    await waitForModule(page, 'S1-1', 'microcracks');
    assert.equal(await count(page, 'microcracks'), 2);
    assert.equal(await count(page, 'ok'), 0);
    await waitForProgress(page, '3 / 6 modules marqués');
  }
  // A late delivery (older than what is known) is dropped by relais: nothing changes.
  await mark(relais, moduleUpdate(audit, 'S1-1', 'ok', { name: 'Adrien', at: 1 }));
  await adrien.waitForTimeout(300);
  await waitForModule(adrien, 'S1-1', 'microcracks');
  for (const page of [adrien, marie]) {
    assert.deepEqual(await toasts(page), ['S2-1 → Module mort (Marie)', 'S1-1 → Microfissures (Adrien)'],
      'one toast per change, none for the snapshot or the other audit');
  }

  // A module's technician and comment on tap.
  await marie.click('#grid [data-module="S1-2"]');
  await marie.waitForSelector('#detail:not([hidden])');
  assert.equal(await marie.textContent('#detail-module'), 'S1-2');
  assert.equal(await marie.textContent('#detail-status'), 'Microfissures');
  assert.equal(await marie.textContent('#detail-technician'), 'Adrien');
  assert.equal(await marie.textContent('#detail-comment'), 'Fissures visibles EL');
  assert.deepEqual(adrien.errors, []);
  assert.deepEqual(marie.errors, []);
  await adrien.context().close();
  await marie.context().close();
});

test('a script-bearing comment and technician name stay text', async () => {
  const audit = 'audit-inert';
  const evil = '<img src=x onerror="window.__pwned=1">';
  const page = await openBoard(relais.base, audit, 'Adrien');
  await mark(relais, moduleUpdate(audit, 'M050', 'dead', { name: evil, comment: `${evil}<script>window.__pwned=2</script>` }));
  await waitForToast(page, `M050 → Module mort (${evil})`);
  await page.click('#grid [data-module="M50"]');
  await page.waitForSelector('#detail:not([hidden])');
  assert.equal(await page.textContent('#detail-comment'), `${evil}<script>window.__pwned=2</script>`);
  assert.equal(await page.textContent('#detail-technician'), evil);
  assert.equal(await page.locator('#detail img, #toasts img, #grid img, #detail script').count(), 0);
  await page.waitForTimeout(300);
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('M### audits: a plain grid of ?modules=N, progress over N', async () => {
  const audit = 'audit-m';
  await mark(relais,
    moduleUpdate(audit, 'M050', 'microcracks', { name: 'Adrien', comment: 'Fissures visibles EL' }),
    moduleUpdate(audit, 'M001', 'ok', { name: 'Adrien' }),
    moduleUpdate(audit, 'M002', 'inequality', { name: 'Adrien' }),
    moduleUpdate(audit, 'M003', 'string_open', { name: 'Marie' }),
    moduleUpdate(audit, 'M004', 'not_connected', { name: 'Marie' }),
    moduleUpdate(audit, 'M005', 'dead', { name: 'Marie' }));
  const page = await openBoard(relais.base, audit, 'Adrien', '&modules=242');
  await waitForProgress(page, '6 / 242 modules marqués');
  // A colleague on the audit too (shown in the presence list when relais has presence).
  const marie = await openBoard(relais.base, audit, 'Marie', '&modules=242');
  if (await hasPresence(relais, technicianToken(audit, 'Adrien'), `audits/${audit}`)) {
    await waitForPresence(page, ['Adrien', 'Marie']);
  }
  assert.equal(await page.locator('#grid .plain [data-module]').count(), 242);
  assert.equal(await page.textContent('#grid [data-module="M50"]'), 'M050');
  await mark(relais, moduleUpdate(audit, 'M242', 'ok', { name: 'Marie' }));
  await waitForToast(page, 'M242 → OK (Marie)');
  await waitForProgress(page, '7 / 242 modules marqués');
  await page.click('#grid [data-module="M50"]');
  await page.waitForSelector('#detail:not([hidden])');
  await page.waitForTimeout(400);
  await artifact(page, 'audit-board.png');
  if (process.env.RELAIS_UPDATE_SCREENSHOT === '1') {
    mkdirSync(path.join(ROOT, 'docs'), { recursive: true });
    copyFileSync(path.join(ROOT, 'tests/artifacts/audit-board.png'), path.join(ROOT, 'docs/audit.png'));
  }
  await marie.context().close();
  await page.context().close();
});

test('offline while markings happen: back online, converges without reload or duplicate toast', async () => {
  const audit = 'audit-offline';
  await mark(relais, moduleUpdate(audit, 'S1-1', 'ok', { name: 'Adrien' }));
  const page = await openBoard(relais.base, audit, 'Marie', '&modules=1x4');
  await waitForModule(page, 'S1-1', 'ok');
  await page.evaluate(() => { window.__sameDocument = true; });
  await mark(relais, moduleUpdate(audit, 'S1-2', 'ok', { name: 'Adrien' }));
  await waitForToast(page, 'S1-2 → OK (Adrien)');

  await page.context().setOffline(true);
  await waitForState(page, 'offline');
  assert.equal(await page.textContent('#conn-label'), 'Hors ligne');
  await mark(relais, moduleUpdate(audit, 'S1-3', 'dead', { name: 'Adrien' }));
  await mark(relais, moduleUpdate(audit, 'S1-1', 'inequality', { name: 'Adrien' }));
  await page.waitForTimeout(300);
  await waitForModule(page, 'S1-3', '');
  await artifact(page, 'audit-offline.png');

  await page.context().setOffline(false);
  await waitForState(page, 'live');
  await waitForModule(page, 'S1-3', 'dead');
  await waitForModule(page, 'S1-1', 'inequality');
  await waitForProgress(page, '3 / 4 modules marqués');
  await waitForToast(page, 'S1-3 → Module mort (Adrien)');
  await waitForToast(page, 'S1-1 → Inégalité (Adrien)');
  await page.waitForTimeout(500);
  assert.deepEqual(await toasts(page), [
    'S1-2 → OK (Adrien)', 'S1-3 → Module mort (Adrien)', 'S1-1 → Inégalité (Adrien)',
  ], 'each change toasted exactly once');
  assert.equal(await page.evaluate(() => window.__sameDocument), true, 'no reload');
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('relais restart (disk store): the board reconnects and converges', async (t) => {
  const port = await freePort();
  let own = await startRelais({ port });
  const stateDir = own.stateDir;
  t.after(async () => { await own.stop(); });
  const audit = 'audit-restart';
  await mark(own, moduleUpdate(audit, 'S1-1', 'ok', { name: 'Adrien' }));
  const page = await openBoard(own.base, audit, 'Marie', '&modules=1x3');
  await waitForModule(page, 'S1-1', 'ok');
  await page.evaluate(() => { window.__sameDocument = true; });

  await own.stop();
  await waitForState(page, 'reconnecting');
  own = await startRelais({ port, stateDir });
  await mark(own, moduleUpdate(audit, 'S1-2', 'microcracks', { name: 'Adrien' }));
  await waitForState(page, 'live');
  await waitForModule(page, 'S1-2', 'microcracks');
  await waitForModule(page, 'S1-1', 'ok');
  await waitForToast(page, 'S1-2 → Microfissures (Adrien)');
  await mark(own, moduleUpdate(audit, 'S1-3', 'dead', { name: 'Adrien' }));
  await waitForModule(page, 'S1-3', 'dead');
  await waitForProgress(page, '3 / 3 modules marqués');
  assert.equal(await page.locator('#toasts .toast', { hasText: 'Historique' }).count(), 0, 'no gap: history on disk');
  if (await hasPresence(own, technicianToken(audit, 'Marie'), `audits/${audit}`)) {
    // Marie once: her subscription from before the restart is not left in the list.
    await waitForPresence(page, ['Marie']);
    assert.equal(await page.textContent('#presence li'), 'Marie', 'one subscription, not two');
  }
  assert.equal(await page.evaluate(() => window.__sameDocument), true);
  assert.deepEqual(page.errors, []);
  await page.context().close();
  await own.stop();
  rmSync(stateDir, { recursive: true, force: true });
});

test('memory-only relais restart: the gap is said, the board reloads the state, then live', async (t) => {
  const port = await freePort();
  const env = { RELAIS_HUB__PERSIST: 'false' };
  let own = await startRelais({ port, env });
  const stateDir = own.stateDir;
  t.after(async () => { await own.stop(); rmSync(stateDir, { recursive: true, force: true }); });
  const audit = 'audit-gap';
  await mark(own, moduleUpdate(audit, 'S1-1', 'ok', { name: 'Adrien' }));
  const page = await openBoard(own.base, audit, 'Marie', '&modules=1x3');
  await waitForModule(page, 'S1-1', 'ok');
  await page.evaluate(() => { window.__sameDocument = true; });
  // A few events so the page's position is one the restarted relais never had.
  await mark(own, moduleUpdate(audit, 'S1-2', 'dead', { name: 'Adrien' }));
  await waitForModule(page, 'S1-2', 'dead');

  await own.stop();
  await waitForState(page, 'reconnecting');
  own = await startRelais({ port, stateDir, env });
  await mark(own, moduleUpdate(audit, 'S1-3', 'microcracks', { name: 'Adrien' }));
  await waitForToast(page, 'Historique du relais interrompu');
  await waitForState(page, 'live');
  // The state is what the restarted relais knows: only S1-3 (memory only, by choice).
  await waitForModule(page, 'S1-3', 'microcracks');
  await waitForModule(page, 'S1-1', '');
  await waitForProgress(page, '1 / 3 modules marqués');
  await mark(own, moduleUpdate(audit, 'S1-1', 'inequality', { name: 'Marie' }));
  await waitForToast(page, 'S1-1 → Inégalité (Marie)');
  assert.equal(await page.evaluate(() => window.__sameDocument), true, 'no page reload');
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('the token leaves the address bar, survives a reload, and is kept per audit', async () => {
  const page = await openBoard(relais.base, 'audit-token', 'Adrien');
  assert.equal(new URL(page.url()).search, '?audit=audit-token');
  await page.reload();
  await waitForState(page, 'live');
  // Another audit in the same tab: its own token is asked for, not this one reused.
  await page.goto(`${relais.base}/audit/?audit=audit-other`);
  await page.waitForSelector('#settings[open]', { timeout: 5000 });
  assert.equal(await page.textContent('#conn-label'), 'Hors ligne');
  await page.fill('#token', technicianToken('audit-other', 'Adrien'));
  await page.click('#settings-save');
  await waitForState(page, 'live');
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('pure helpers of the board and the client, in the browser', async () => {
  const page = await newPage(browser);
  await page.goto(`${relais.base}/audit/`);
  const r = await page.evaluate(async () => {
    const a = await import('/audit/audit.js');
    const c = await import('/client/relais.js');
    const sub = (id, name, active = true, topic = 'audits/T') => ({
      '@context': 'https://mercure.rocks/', id: `/.well-known/mercure/subscriptions/audits%2FT/${id}`,
      type: 'Subscription', topic, subscriber: id, active, payload: name === null ? null : { name },
    });
    const p = new c.PresenceList('audits/T');
    p.reset([sub('u1', 'Marie'), sub('u2', 'Adrien'), sub('u3', 'Adrien'), { type: 'Other', id: 'x' }]);
    const first = p.people();
    const changedOther = p.apply(sub('u9', 'Zoé', true, 'audits/other'));
    p.apply(sub('u1', 'Marie', false));
    p.apply(sub('u4', null));
    return {
      ids: ['S1-15', 'M050', 'M50', 'S01-02', 'X1', 'S1-', 'M'].map((x) => a.parseModuleId(x)?.key ?? null),
      layouts: ['10x24', '242', '0', '1000x1000', 'abc', ' 3×4 ', ''].map((x) => a.parseLayout(x)),
      grid: (() => {
        const g = a.gridModel(null, ['S2-3', 'S2-1', 'M7', 'S1-1']);
        return { strings: g.strings, plain: g.plain, total: g.total, label: g.labels.get('M7') };
      })(),
      gridM: a.gridModel({ kind: 'M', count: 1200 }, ['M5']).labels.get('M5'),
      labels: ['microcracks', 'dead', 'string_open', 'not_connected', 'inequality', 'ok', 'weird'].map(a.statusLabel),
      toast: a.describeChange({ moduleId: 'M050', status: 'microcracks', technician: 'Adrien', comment: '' }, null),
      toastComment: a.describeChange({ moduleId: 'M050', status: 'ok', technician: '', comment: 'b' }, { status: 'ok', comment: 'a' }),
      first,
      changedOther,
      after: p.people(),
      selector: c.subscriptionsSelector("audits/it's (x)"),
    };
  });
  assert.deepEqual(r.ids, ['S1-15', 'M50', 'M50', 'S1-2', null, null, null]);
  assert.deepEqual(r.layouts, [
    { kind: 'S', strings: 10, positions: 24 }, { kind: 'M', count: 242 }, null, null, null,
    { kind: 'S', strings: 3, positions: 4 }, null,
  ]);
  assert.deepEqual(r.grid.strings, [
    { string: 1, cells: ['S1-1'] }, { string: 2, cells: ['S2-1', null, 'S2-3'] },
  ]);
  assert.deepEqual(r.grid.plain, ['M7']);
  assert.equal(r.grid.total, 4);
  assert.equal(r.grid.label, 'M007');
  assert.equal(r.gridM, 'M0005');
  assert.deepEqual(r.labels, ['Microfissures', 'Module mort', 'String ouvert', 'Non connecté', 'Inégalité', 'OK', 'weird']);
  assert.equal(r.toast, 'M050 → Microfissures (Adrien)');
  assert.equal(r.toastComment, 'M050 → OK, commentaire modifié');
  assert.deepEqual(r.first, [
    { name: 'Adrien', payload: { name: 'Adrien' }, count: 2 }, { name: 'Marie', payload: { name: 'Marie' }, count: 1 },
  ]);
  assert.equal(r.changedOther, false, 'another topic is not this presence');
  assert.deepEqual(r.after.map((x) => x.name), ['Adrien', 'anonyme']);
  assert.equal(r.selector, '/.well-known/mercure/subscriptions/audits%2Fit%27s%20%28x%29/{subscriber}');
  await page.context().close();
});

test('tablet: a 10 × 24 audit fits a portrait tablet, modules open on touch', async () => {
  const audit = 'audit-tablet';
  const statuses = ['ok', 'ok', 'ok', 'inequality', 'microcracks', 'dead', 'string_open', 'not_connected'];
  const updates = [];
  for (let s = 1; s <= 6; s++) {
    for (let p = 1; p <= 24; p++) {
      if ((s * 7 + p * 3) % 5 !== 0) updates.push(moduleUpdate(audit, `S${s}-${p}`, statuses[(s * p) % 8], { name: s % 2 ? 'Adrien' : 'Marie' }));
    }
  }
  await mark(relais, ...updates);
  const context = await browser.newContext({ viewport: { width: 820, height: 1180 }, hasTouch: true, isMobile: true, locale: 'fr-FR' });
  const page = await context.newPage();
  const token = technicianToken(audit, 'Adrien');
  await page.goto(`${relais.base}/audit/?audit=${audit}&modules=10x24&token=${encodeURIComponent(token)}`);
  await waitForState(page, 'live');
  await waitForProgress(page, `${updates.length} / 240 modules marqués`);
  const overflow = await page.evaluate(() => ({
    grid: document.getElementById('grid').scrollWidth - document.getElementById('grid').clientWidth,
    page: document.documentElement.scrollWidth - window.innerWidth,
  }));
  assert.deepEqual(overflow, { grid: 0, page: 0 }, 'no horizontal scrolling');
  assert.equal(await page.textContent('#grid [data-module="S7-3"]'), '3', 'a cell shows its position');
  await mark(relais, moduleUpdate(audit, 'S7-3', 'microcracks', { name: 'Marie', comment: 'Fissures visibles EL' }));
  await waitForToast(page, 'S7-3 → Microfissures (Marie)');
  await page.tap('#grid [data-module="S7-3"]');
  await page.waitForSelector('#detail:not([hidden])');
  assert.equal(await page.textContent('#detail-comment'), 'Fissures visibles EL');
  await page.waitForTimeout(300);
  await artifact(page, 'audit-tablet.png');
  await context.close();
});
