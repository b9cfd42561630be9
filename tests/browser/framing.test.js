// The widget and its token in a hostile browser context: only relais itself and the
// origins of server.cors_origins may frame /widget/ (frame-ancestors), and a `?token=`
// given in the page URL leaves the address bar at once.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startRelais, tokens, launchBrowser, newPage, waitForState } from './harness.js';

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

test('the token leaves the address bar and survives a reload', async () => {
  const page = await newPage(browser);
  await page.goto(`${relais.base}/widget/?token=${encodeURIComponent(tok.dashboard)}&standalone`);
  await waitForState(page, 'live');
  const url = new URL(page.url());
  assert.equal(url.searchParams.get('token'), null, `token still in ${page.url()}`);
  assert.equal(url.searchParams.has('standalone'), true, 'other parameters are kept');
  await page.reload();
  await waitForState(page, 'live');
  assert.equal(new URL(page.url()).searchParams.get('token'), null);
  // The token URL was replaced, not pushed: going back leaves the page.
  await page.goBack();
  assert.equal(page.url(), 'about:blank');
  await page.context().close();
});

/** Whether the iframe `selector` of the page loaded the widget. */
async function framedLoads(page, selector) {
  const handle = await page.waitForSelector(selector);
  const frame = await handle.contentFrame();
  try {
    await frame.waitForFunction(() => document.body && document.body.dataset.mode, null, { timeout: 4000 });
    return true;
  } catch {
    return false;
  }
}

/** Opens `parent` (a relais page without a policy of its own) and frames the widget in it. */
async function frameWidgetFrom(page, parent) {
  await page.goto(parent);
  await page.evaluate((src) => {
    const f = document.createElement('iframe');
    f.id = 'w';
    f.src = src;
    document.body.append(f);
  }, `${relais.base}/widget/?standalone`);
  return framedLoads(page, '#w');
}

test('a foreign page cannot frame the widget; relais itself can', async () => {
  const page = await newPage(browser);
  // http://localhost:PORT is another origin than relais' http://127.0.0.1:PORT: a
  // foreign page framing the widget (it would be taken for Grist).
  const foreign = relais.base.replace('127.0.0.1', 'localhost');
  assert.notEqual(foreign, relais.base);
  assert.equal(await frameWidgetFrom(page, `${foreign}/healthz`), false, 'a foreign page framed the widget');
  // The same frame in a page of relais' own origin loads ('self'). (Not the widget page:
  // its own policy lets it frame nothing.)
  assert.equal(await frameWidgetFrom(page, `${relais.base}/healthz`), true, 'relais could not frame its own page');
  await page.context().close();
});
