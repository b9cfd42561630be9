// The standalone dashboard served by relais at /widget/: initial list from relais' /state
// snapshot, live updates (cards, list, toast, flash), inert record text, 401 handling, the
// serving headers, and the pure helpers run in the real browser.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import {
  ROOT, startRelais, tokens, publish, intervention, launchBrowser, newPage, waitForState,
  waitForStats, activeRows, waitForToast, artifact, postGristRows,
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

test('serving: content types, CSP, redirect, no external resource', async () => {
  const index = await fetch(`${relais.base}/widget/`);
  assert.equal(index.status, 200);
  assert.equal(index.headers.get('content-type'), 'text/html; charset=utf-8');
  const csp = index.headers.get('content-security-policy');
  assert.match(csp, /script-src 'self' https:\/\/docs\.getgrist\.com/);
  assert.match(csp, /connect-src 'self'/);
  assert.doesNotMatch(csp, /unsafe/);
  assert.equal(index.headers.get('referrer-policy'), 'no-referrer');
  const html = await index.text();
  assert.doesNotMatch(html, /(src|href)\s*=\s*["']?(https?:)?\/\//i, 'the page references no external URL');

  const js = await fetch(`${relais.base}/widget/widget.js`);
  assert.equal(js.headers.get('content-type'), 'text/javascript; charset=utf-8');
  const css = await fetch(`${relais.base}/widget/widget.css`);
  assert.equal(css.headers.get('content-type'), 'text/css; charset=utf-8');
  assert.doesNotMatch(await css.text(), /url\(|@import/, 'the style sheet loads nothing');

  // The redirect does not copy a token into one more URL.
  const redirect = await fetch(`${relais.base}/widget?token=abc&standalone`, { redirect: 'manual' });
  assert.equal(redirect.status, 308);
  assert.equal(redirect.headers.get('location'), '/widget/?standalone=');
});

test('history, then live events update cards, list, toast and flash', async () => {
  // Before the page opens: Grist sends three interventions (one twice, so relais' state
  // holds its latest), an hour old.
  const hourAgo = Math.floor(Date.now() / 1000) - 3600;
  const grist = (id, agent, location, statut, priorite, comment = '') => ({
    id, manualSort: id, ID: `INT-2024-${String(id).padStart(3, '0')}`, Agent: agent,
    Localisation: location, Type: 'Voirie', Statut: statut, Priorite: priorite,
    Derniere_MAJ: hourAgo, Commentaire: comment,
  });
  assert.equal(await postGristRows(relais, [grist(1, 'Marie Durand', 'Avenue de la République, Marseille', 'En attente', 'Normale')]), 200);
  assert.equal(await postGristRows(relais, [
    grist(1, 'Marie Durand', 'Avenue de la République, Marseille', 'En cours', 'Normale'),
    grist(2, 'Jean Martin', 'Boulevard Michelet', 'Bloqué', 'Haute', 'Accès fermé'),
    grist(3, 'Sophie Leroy', 'Quai du Port', 'Terminé', 'Basse'),
  ]), 200);

  const page = await newPage(browser);
  const external = [];
  page.on('request', (r) => { if (!r.url().startsWith(relais.base)) external.push(r.url()); });
  await page.goto(`${relais.base}/widget/?token=${encodeURIComponent(tok.dashboard)}`);
  await waitForState(page, 'live');
  await waitForStats(page, { total: 3, inProgress: 1, done: 1, blocked: 1, urgent: 0 });
  let rows = await activeRows(page);
  assert.equal(rows.length, 2, 'done interventions are not in the active list');
  assert.match(rows[0].text, /Boulevard Michelet/, 'Haute before Normale');
  assert.match(rows[1].text, /Avenue de la République/);
  assert.equal(await page.locator('#toasts .toast').count(), 0, 'the snapshot makes no toast');
  // The view came from /state; the stream starts at the snapshot's position.
  assert.ok(/lastEventID=(?!earliest)/.test(page.sseRequests[0]), page.sseRequests[0]);

  // Live: Marie's intervention is done.
  await publish(relais, tok.publisher, intervention({
    row_id: 1, agent: 'Marie Durand', location: 'Avenue de la République', status: 'Terminé',
    priority: 'Normale', changed: ['status'], previous: { status: 'En cours' },
  }));
  const toast = await waitForToast(page, 'Marie Durand');
  assert.equal(toast, 'Marie Durand: Avenue de la République → Terminé');
  await waitForStats(page, { total: 3, inProgress: 0, done: 2, blocked: 1 });
  rows = await activeRows(page);
  assert.equal(rows.length, 1);

  // Live: a new urgent intervention goes to the top of the list and flashes.
  await publish(relais, tok.publisher, intervention({
    row_id: 4, agent: 'Paul Girard', location: 'Rue de Rome', status: 'En cours',
    priority: 'Urgente', change: 'add', comment: 'Fuite de gaz signalée',
  }));
  await waitForStats(page, { total: 4, inProgress: 1, urgent: 1 });
  await page.waitForSelector('#active-list > li.flash', { timeout: 5000 });
  rows = await activeRows(page);
  assert.match(rows[0].text, /Rue de Rome/, 'urgent first');
  assert.ok(rows[0].flash, 'the changed row flashes');
  assert.ok(!rows[1].flash, 'other rows do not');
  await waitForToast(page, 'Paul Girard: Rue de Rome → nouvelle intervention, En cours, priorité Urgente');

  // Recency breaks priority ties: a newer Haute goes before the older Haute.
  await publish(relais, tok.publisher, intervention({
    row_id: 5, agent: 'Lina Roux', location: 'Place Castellane', status: 'En attente',
    priority: 'haute', change: 'add',
  }));
  await waitForStats(page, { total: 5 });
  rows = await activeRows(page);
  assert.deepEqual(rows.map((r) => r.text.match(/Rue de Rome|Place Castellane|Boulevard Michelet/)[0]),
    ['Rue de Rome', 'Place Castellane', 'Boulevard Michelet']);

  assert.deepEqual(external, [], 'nothing loaded from outside relais');
  assert.deepEqual(page.errors, []);
  await page.waitForTimeout(400); // let the toasts' slide-in finish for the picture
  await artifact(page, 'dashboard.png');
  if (process.env.RELAIS_UPDATE_SCREENSHOT === '1') {
    mkdirSync(path.join(ROOT, 'docs'), { recursive: true });
    copyFileSync(path.join(ROOT, 'tests/artifacts/dashboard.png'), path.join(ROOT, 'docs/widget.png'));
  }
  await page.context().close();
});

test('a script-bearing field stays inert text', async () => {
  const evil = '<img src=x onerror="window.__pwned=1">';
  const page = await newPage(browser);
  await page.goto(`${relais.base}/widget/?token=${encodeURIComponent(tok.dashboard)}`);
  await waitForState(page, 'live');
  await publish(relais, tok.publisher, intervention({
    row_id: 66, agent: evil, location: `${evil} Rue`, comment: evil, status: evil,
    priority: 'Urgente', change: 'add', id: `<script>window.__pwned=2</script>`,
  }));
  await waitForToast(page, evil);
  const row = page.locator('#active-list > li[data-key="cerema|Interventions|66"]');
  await row.waitFor({ timeout: 5000 });
  const text = await row.textContent();
  assert.ok(text.includes(evil), text);
  assert.ok(text.includes('<script>window.__pwned=2</script>'), text);
  assert.equal(await page.locator('#active-list img, #toasts img, #active-list script').count(), 0);
  // Give a broken image's onerror every chance to run, had it been markup.
  await page.waitForTimeout(300);
  assert.equal(await page.evaluate(() => window.__pwned), undefined);
  await artifact(page, 'inert-text.png');
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('a refused token asks for a fresh one, then connects', async () => {
  const page = await newPage(browser);
  await page.goto(`${relais.base}/widget/?token=not-a-valid-token`);
  await waitForState(page, 'offline');
  await page.waitForSelector('#settings[open]', { timeout: 5000 });
  const message = await page.textContent('#settings-message');
  assert.match(message, /401/);
  assert.match(await page.textContent('#conn-detail'), /jeton refusé/);
  const tries = page.sseRequests.length;
  await page.waitForTimeout(600);
  assert.equal(page.sseRequests.length, tries, 'no retry loop with a refused token');

  await page.fill('#token', tok.dashboard);
  await page.click('#settings-save');
  await waitForState(page, 'live');
  await page.waitForFunction(() => Number(document.getElementById('stat-total').textContent) > 0);
  await page.context().close();
});

test('no token: the form asks for one', async () => {
  const page = await newPage(browser);
  await page.goto(`${relais.base}/widget/`);
  await page.waitForSelector('#settings[open]', { timeout: 5000 });
  assert.match(await page.textContent('#conn-detail'), /jeton requis/);
  assert.equal(page.sseRequests.length, 0);
  await page.context().close();
});

test('pure helpers, in the browser', async () => {
  const page = await newPage(browser);
  await page.goto(`${relais.base}/widget/?token=${encodeURIComponent(tok.dashboard)}`);
  const result = await page.evaluate(async () => {
    const m = await import('/widget/widget.js');
    const p = new m.SseParser();
    const evs = [
      ...p.feed('retry: 2000\r'),
      ...p.feed('\n: heartbeat\r\nid: a1\r\nevent: intervention\r\ndata: {"x":'),
      ...p.feed('1}\r\ndata: second\n\nid: a2\ndata\n\n'),
    ];
    const rand = [0, 0.5, 0.999999];
    return {
      evs,
      retry: p.retry,
      last: p.lastEventId,
      statuses: ['En cours', 'Terminé', 'terminee', 'BLOQUÉ', 'À faire', 'Planifié', 'En attente', '??']
        .map(m.statusCategory),
      priorities: ['Urgente', 'URGENT', 'Haute', 'Normale', 'Basse', '', 'autre'].map(m.priorityRank),
      backoff: [0, 3, 10, 40].map((a) => rand.map((r) => m.backoffDelay(a, 1000, 30000, () => r))),
      times: [m.toMillis(1732000000), m.toMillis('2024-11-19T07:06:40Z'), m.toMillis(['D', 1732000000, 'UTC']), m.toMillis(0)],
      cells: [m.cellText(['L', 'a', 'b']), m.cellText(['E', 'ValueError']), m.cellText(null)],
    };
  });
  assert.deepEqual(result.evs, [
    { id: 'a1', type: 'intervention', data: '{"x":1}\nsecond' },
    { id: 'a2', type: 'message', data: '' },
  ]);
  assert.equal(result.retry, 2000);
  assert.equal(result.last, 'a2');
  assert.deepEqual(result.statuses, ['in_progress', 'done', 'done', 'blocked', 'waiting', 'waiting', 'waiting', 'other']);
  assert.deepEqual(result.priorities, [0, 0, 1, 2, 3, 4, 4]);
  for (const [i, row] of result.backoff.entries()) {
    const ceiling = Math.min(30000, 1000 * 2 ** [0, 3, 10, 40][i]);
    assert.equal(row[0], 0);
    assert.ok(row[1] <= ceiling && row[2] < ceiling && row[2] >= ceiling - 1, JSON.stringify(row));
  }
  assert.equal(result.backoff[3][2], 29999, 'capped at 30 s');
  assert.deepEqual(result.times, [1732000000000, 1732000000000, 1732000000000, null]);
  assert.deepEqual(result.cells, ['a, b', '#ValueError', '']);
  await page.context().close();
});
