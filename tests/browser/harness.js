// Shared helpers of the widget's browser tests: start the real relais binary, mint tokens
// with its key, publish normalized intervention events, drive Debian's Chromium through
// playwright-core (never a downloaded browser), cut the network with a TCP proxy.

import { spawn, execFileSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const RELAIS_BIN = process.env.RELAIS_BIN || path.join(ROOT, 'target/debug/relais');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const ARTIFACTS = path.join(ROOT, 'tests/artifacts');
export const SECRET = 'browser-test-secret-0123456789abcdef';
/** The `Authorization` value of the Grist source `cerema` every test relais has. */
export const GRIST_AUTHORIZATION = 'Bearer grist-browser-test-0123456789abcdef0123';
/** The Standard Webhooks key of the DiagPV hub source `diagpv` every test relais has. */
export const HUB_SECRET = `whsec_${Buffer.from('diagpv-browser-test-key-0123456789abcdef').toString('base64')}`;

/** Widget tuning for tests: quick reconnection, long-lived toasts. */
export const WIDGET_CONFIG = {
  backoffBaseMs: 200, backoffCapMs: 1500, settleMs: 150, toastMs: 30000, flashMs: 15000,
};

function relaisEnv(stateDir, listen) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('RELAIS_')) env[k] = v;
  return {
    ...env,
    RELAIS_JWT__SECRET: SECRET,
    RELAIS_SERVER__LISTEN: listen,
    RELAIS_SERVER__STATE_DIR: stateDir,
    RELAIS_SOURCES__CEREMA__KIND: 'grist',
    RELAIS_SOURCES__CEREMA__AUTHORIZATION: GRIST_AUTHORIZATION,
    RELAIS_SOURCES__DIAGPV__KIND: 'hub',
    RELAIS_SOURCES__DIAGPV__SECRET: HUB_SECRET,
    RUST_LOG: 'info',
    NO_COLOR: '1',
  };
}

/** A free loopback port (for a relais that must come back on the same port). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Starts `relais serve`; resolves once it logged `listening on http://...`.
 * Options: port (0 = any), stateDir (reuse to restart with the same state), env (extra
 * RELAIS_* variables).
 */
export async function startRelais({ port = 0, stateDir, env = {} } = {}) {
  const dir = stateDir || mkdtempSync(path.join(os.tmpdir(), 'relais-widget-'));
  const proc = spawn(RELAIS_BIN, ['serve'], {
    env: { ...relaisEnv(dir, `127.0.0.1:${port}`), ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const logs = [];
  const base = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`relais did not start:\n${logs.join('\n')}`)), 20000);
    let pending = '';
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (chunk) => {
      pending += chunk;
      const lines = pending.split('\n');
      pending = lines.pop();
      for (const line of lines) {
        logs.push(line);
        const m = line.match(/listening on (http:\/\/\S+)/);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      }
    });
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`relais exited (${code}):\n${logs.join('\n')}`));
    });
  });
  const relais = {
    base,
    port: Number(new URL(base).port),
    stateDir: dir,
    logs,
    proc,
    /** SIGTERM and wait for the exit. */
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    },
    /** Stops it and removes its state directory. */
    async dispose() {
      await relais.stop();
      if (!stateDir) rmSync(dir, { recursive: true, force: true });
    },
  };
  return relais;
}

/** Mints a token with `relais token` (same key, through the same environment). */
export function mintToken(stateDir, args) {
  return execFileSync(RELAIS_BIN, ['token', ...args], {
    env: relaisEnv(stateDir, '127.0.0.1:0'),
    encoding: 'utf8',
  }).trim();
}

/** The tokens a test needs: a read-only dashboard token and a publisher's. */
export function tokens(stateDir) {
  return {
    dashboard: mintToken(stateDir, ['--sub', 'dashboard', '--subscribe', 'interventions', '--subscribe', 'interventions/{id}', '--ttl', '1h']),
    publisher: mintToken(stateDir, ['--sub', 'tests', '--publish', '*']),
  };
}

let sequence = 0;

/** A normalized `intervention` event's data, as ingestion produces it. */
export function intervention(overrides = {}) {
  sequence += 1;
  const rowId = overrides.row_id ?? sequence;
  const base = {
    source: 'cerema',
    table: 'Interventions',
    row_id: rowId,
    id: `INT-2024-${String(rowId).padStart(3, '0')}`,
    agent: 'Agent Test',
    location: `Rue ${rowId}, Marseille`,
    type: 'Voirie',
    status: 'En cours',
    priority: 'Normale',
    comment: '',
    updated_at: new Date().toISOString(),
    change: 'update',
    changed: [],
    previous: {},
  };
  const data = { ...base, ...overrides };
  data.fields = {
    ID: data.id, Agent: data.agent, Localisation: data.location, Type: data.type,
    Statut: data.status, Priorite: data.priority, Commentaire: data.comment,
    Derniere_MAJ: Date.parse(data.updated_at) / 1000,
  };
  return data;
}

/** Publishes one intervention event through Mercure publish; resolves to its ID. */
export async function publish(relais, token, data) {
  const body = new URLSearchParams();
  body.append('topic', 'interventions');
  body.append('topic', `interventions/${data.id}`);
  body.append('type', 'intervention');
  body.append('data', JSON.stringify(data));
  const resp = await fetch(`${relais.base}/.well-known/mercure`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/x-www-form-urlencoded' },
    body,
  });
  const text = await resp.text();
  if (resp.status !== 200) throw new Error(`publish answered ${resp.status}: ${text}`);
  return text.trim();
}

/** Launches Debian's Chromium (a fresh temporary profile per launch). */
export async function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
}

/** A new page with the widget's test tuning, page errors collected in `page.errors`. */
export async function newPage(browser, { initScript } = {}) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 760 }, locale: 'fr-FR' });
  await context.addInitScript((cfg) => { window.relaisWidgetConfig = cfg; window.relaisAuditConfig = cfg; }, WIDGET_CONFIG);
  if (initScript) await context.addInitScript(initScript);
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (err) => page.errors.push(String(err)));
  page.sseRequests = [];
  page.on('request', (req) => {
    if (req.url().includes('/.well-known/mercure')) page.sseRequests.push(req.url());
  });
  return page;
}

/** Waits until the connection indicator is in `state` (live, reconnecting, offline...). */
export async function waitForState(page, state, timeout = 15000) {
  await page.waitForFunction((s) => document.getElementById('conn').dataset.state === s, state, { timeout });
}

/** The stats cards as numbers. */
export async function stats(page) {
  return page.evaluate(() => {
    const n = (id) => Number(document.getElementById(id).textContent);
    return {
      total: n('stat-total'), inProgress: n('stat-in-progress'), done: n('stat-done'),
      blocked: n('stat-blocked'), urgent: n('stat-urgent'),
    };
  });
}

/** Waits until the stats cards match `expected` (a subset of counters). */
export async function waitForStats(page, expected, timeout = 10000) {
  try {
    await page.waitForFunction((exp) => {
      const n = (id) => Number(document.getElementById(id).textContent);
      const now = {
        total: n('stat-total'), inProgress: n('stat-in-progress'), done: n('stat-done'),
        blocked: n('stat-blocked'), urgent: n('stat-urgent'),
      };
      return Object.entries(exp).every(([k, v]) => now[k] === v);
    }, expected, { timeout });
  } catch (err) {
    throw new Error(`stats never became ${JSON.stringify(expected)}: now ${JSON.stringify(await stats(page))}`);
  }
}

/** The active list as text lines, in display order. */
export async function activeRows(page) {
  return page.$$eval('#active-list > li', (lis) => lis.map((li) => ({
    key: li.dataset.key,
    text: li.textContent,
    flash: li.classList.contains('flash'),
  })));
}

/** Waits for a toast containing `text`; returns its text. */
export async function waitForToast(page, text, timeout = 10000) {
  const handle = await page.waitForFunction(
    (t) => [...document.querySelectorAll('#toasts .toast')].map((e) => e.textContent).find((x) => x.includes(t)),
    text,
    { timeout },
  );
  return handle.jsonValue();
}

/** Saves a screenshot under tests/artifacts/. */
export async function artifact(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const file = path.join(ARTIFACTS, name);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/**
 * A TCP proxy in front of relais whose network can be cut: `cut()` drops every open
 * connection and refuses new ones (like Wi-Fi going away), `restore()` listens again on
 * the same port.
 */
export async function startProxy(targetPort) {
  const port = await freePort();
  const sockets = new Set();
  let server = null;
  const listen = () => new Promise((resolve, reject) => {
    server = net.createServer((client) => {
      const upstream = net.connect(targetPort, '127.0.0.1');
      sockets.add(client);
      sockets.add(upstream);
      const drop = () => { client.destroy(); upstream.destroy(); sockets.delete(client); sockets.delete(upstream); };
      client.on('error', drop).on('close', drop);
      upstream.on('error', drop).on('close', drop);
      client.pipe(upstream);
      upstream.pipe(client);
    });
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  await listen();
  return {
    base: `http://127.0.0.1:${port}`,
    async cut() {
      const closed = new Promise((r) => server.close(r));
      for (const s of sockets) s.destroy();
      sockets.clear();
      await closed;
    },
    restore: listen,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(() => r()));
    },
  };
}

/** A row of the `Interventions` table in Grist's storage encoding, an hour old. */
export function gristRow(id, { agent = 'Agent Test', location = `Rue ${id}`, statut = 'En cours', priorite = 'Normale' } = {}) {
  return {
    id, manualSort: id, ID: `INT-2024-${String(id).padStart(3, '0')}`, Agent: agent,
    Localisation: location, Type: 'Voirie', Statut: statut, Priorite: priorite,
    Derniere_MAJ: Math.floor(Date.now() / 1000) - 3600, Commentaire: '',
  };
}

/** Posts rows to `/hooks/grist/cerema` exactly as Grist's webhook does; returns the status. */
export async function postGristRows(relais, rows) {
  const response = await fetch(`${relais.base}/hooks/grist/cerema`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: GRIST_AUTHORIZATION },
    body: JSON.stringify(rows),
  });
  return response.status;
}

/**
 * Signs `claims` as an HS256 JWT with the test relais' secret: for claims `relais token`
 * does not write, such as `mercure.payload` (the name presence shows).
 */
export function signToken(claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ exp: Math.floor(Date.now() / 1000) + 3600, ...claims })}`;
  return `${head}.${createHmac('sha256', SECRET).update(head).digest('base64url')}`;
}

/**
 * A technician's subscribe token for one audit: its module events and the audit's
 * subscription events (presence), with their name as `mercure.payload`.
 */
export function technicianToken(audit, name) {
  const topic = encodeURIComponent(`audits/${audit}`);
  return signToken({
    sub: `tech-${name}`,
    mercure: {
      subscribe: [`audits/${audit}`,
        `/.well-known/mercure/subscriptions/${topic}/{subscriber}`,
        `/.well-known/mercure/subscriptions/${topic}`],
      payload: { name },
    },
  });
}

let webhookSequence = 0;

/**
 * Posts module updates to `/hooks/hub/diagpv` as the DiagPV hub does: JSON body signed
 * with Standard Webhooks headers. Resolves to `{status, body}`.
 */
export async function postModules(relais, updates) {
  const body = JSON.stringify(updates);
  webhookSequence += 1;
  const id = `msg_browser_${process.pid}_${Date.now()}_${webhookSequence}`;
  const ts = String(Math.floor(Date.now() / 1000));
  const key = Buffer.from(HUB_SECRET.slice('whsec_'.length), 'base64');
  const signature = createHmac('sha256', key).update(`${id}.${ts}.${body}`).digest('base64');
  const response = await fetch(`${relais.base}/hooks/hub/diagpv`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      'webhook-id': id,
      'webhook-timestamp': ts,
      'webhook-signature': `v1,${signature}`,
    },
    body,
  });
  return { status: response.status, body: await response.text() };
}

let moduleClock = Date.now() - 600000;

/** One DiagPV module update (the DiagPV hub's fields), each newer than the last. */
export function moduleUpdate(audit, moduleId, status, { name = 'Adrien', comment = null, at } = {}) {
  moduleClock += 1000;
  return {
    audit_token: audit,
    module_id: moduleId,
    status,
    comment,
    technician_id: `tech_${name.toLowerCase()}`,
    technician_name: name,
    updated_at_ms: at ?? moduleClock,
  };
}

/** Starts a throw-away `redis-server` on a free port; resolves to `{url, stop()}`. */
export async function startRedis() {
  const port = await freePort();
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('redis-server did not start')), 10000);
    proc.stdout.setEncoding('utf8');
    proc.stdout.on('data', (chunk) => {
      if (chunk.includes('Ready to accept connections')) { clearTimeout(timer); resolve(); }
    });
    proc.once('exit', (code) => { clearTimeout(timer); reject(new Error(`redis-server exited (${code})`)); });
  });
  return {
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      await exited;
    },
  };
}

/**
 * Whether this relais has Mercure's active-subscriptions API (presence): false when the
 * route does not exist (404); any other answer than 200 to `token` is a failure.
 */
export async function hasPresence(relais, token, topic) {
  const resp = await fetch(`${relais.base}/.well-known/mercure/subscriptions/${encodeURIComponent(topic)}`, {
    headers: { Authorization: `Bearer ${token}` },
  });
  const body = await resp.text();
  if (resp.status === 404) return false;
  if (resp.status !== 200) throw new Error(`the subscriptions API answered ${resp.status}: ${body}`);
  return true;
}

/** Opens the audit board of `audit` as technician `name` (their presence token); waits for LIVE. */
export async function openBoard(browser, base, audit, name, query = '') {
  const page = await newPage(browser);
  const token = technicianToken(audit, name);
  await page.goto(`${base}/audit/?audit=${encodeURIComponent(audit)}${query}&token=${encodeURIComponent(token)}`);
  await waitForState(page, 'live');
  return page;
}

/** Waits until module `id`'s cell on the board shows `status` ('' for unmarked). */
export async function waitForModule(page, id, status, timeout = 10000) {
  try {
    await page.waitForFunction(([m, s]) => {
      const cell = document.querySelector(`#grid [data-module="${m}"]`);
      return cell && cell.dataset.status === s;
    }, [id, status], { timeout });
  } catch {
    const now = await page.evaluate((m) => document.querySelector(`#grid [data-module="${m}"]`)?.dataset.status ?? null, id);
    throw new Error(`module ${id} never became "${status}": now ${now}`);
  }
}

/** Waits until the board's progress line reads `text`. */
export async function waitForProgress(page, text, timeout = 10000) {
  try {
    await page.waitForFunction((t) => document.getElementById('progress').textContent === t, text, { timeout });
  } catch {
    throw new Error(`progress never became "${text}": now "${await page.textContent('#progress')}"`);
  }
}

/** Posts module updates as the DiagPV hub does and expects them accepted. */
export async function markModules(target, ...updates) {
  const { status, body } = await postModules(target, updates);
  if (status !== 200) throw new Error(`the hub webhook answered ${status}: ${body}`);
}

/** Waits until the presence list names exactly `names` (sorted). */
export async function waitForPresence(page, names, timeout = 10000) {
  try {
    await page.waitForFunction((want) => {
      const got = [...document.querySelectorAll('#presence li')].map((li) => li.dataset.name);
      return JSON.stringify(got) === JSON.stringify(want);
    }, names, { timeout });
  } catch {
    const got = await page.$$eval('#presence li', (lis) => lis.map((li) => li.dataset.name));
    throw new Error(`presence never became ${JSON.stringify(names)}: now ${JSON.stringify(got)}`);
  }
}
