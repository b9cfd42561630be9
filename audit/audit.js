// relais — the live board of one DiagPV audit, served at /audit/?audit=TOKEN.
//
// A plain ES module, no build step, built on relais' client (/client/relais.js): the
// current state of every module from `GET /state?topic=audits/{token}`, then each
// marking live from the stream, and who is on the audit from Mercure's active
// subscriptions. Made for a technician's tablet as much as an office screen.
//
// Query parameters: `audit` (the audit token, required), `token` (the subscribe token;
// taken out of the address bar and kept for this tab only), `modules` (`10x24`: 10
// strings of 24 positions, `S1-1` … `S10-24`; `242`: `M001` … `M242`; else the modules
// known are the total).
//
// All record text goes through textContent: never innerHTML with data.

import { LiveStream } from '/client/relais.js';

/** Event type of DiagPV module updates. */
export const EVENT_TYPE = 'module';

/** French labels and colour families of the statuses (fixed vocabulary, never record text). */
export const STATUSES = {
  ok: { label: 'OK', level: 'ok' },
  inequality: { label: 'Inégalité', level: 'warning' },
  microcracks: { label: 'Microfissures', level: 'warning' },
  dead: { label: 'Module mort', level: 'critical' },
  string_open: { label: 'String ouvert', level: 'critical' },
  not_connected: { label: 'Non connecté', level: 'critical' },
  warning: { label: 'Avertissement', level: 'warning' },
  critical: { label: 'Critique', level: 'critical' },
};

/** The statuses in display order. */
export const STATUS_ORDER = Object.keys(STATUSES);

/** The French label of a status (the status itself when unknown). */
export function statusLabel(status) {
  return STATUSES[status] ? STATUSES[status].label : String(status ?? '');
}

/** A CSS-safe status class: the status when known, else `unknown`. */
export function statusClass(status) {
  return STATUSES[status] ? status : 'unknown';
}

/**
 * A module ID read: `{kind: 'S', string, position}` for `S1-15`, `{kind: 'M', number}`
 * for `M050`, null otherwise. `key` is the canonical form (`S1-15`, `M50`), so `M050` and
 * `M50` are one module.
 */
export function parseModuleId(id) {
  const text = String(id ?? '');
  let m = /^S(\d{1,6})-(\d{1,6})$/.exec(text);
  if (m) {
    const string = Number(m[1]);
    const position = Number(m[2]);
    return { kind: 'S', string, position, key: `S${string}-${position}` };
  }
  m = /^M(\d{1,6})$/.exec(text);
  if (m) {
    const number = Number(m[1]);
    return { kind: 'M', number, key: `M${number}` };
  }
  return null;
}

/**
 * The layout asked for by `?modules=`: `{kind: 'S', strings, positions}` for `10x24`,
 * `{kind: 'M', count}` for `242`, null when absent or unreadable (bounded to 100,000
 * modules so a typo cannot freeze the tablet).
 */
export function parseLayout(value) {
  const text = String(value ?? '').trim().toLowerCase();
  let m = /^(\d{1,4})\s*[x×]\s*(\d{1,4})$/.exec(text);
  if (m) {
    const strings = Number(m[1]);
    const positions = Number(m[2]);
    if (strings > 0 && positions > 0 && strings * positions <= 100000) return { kind: 'S', strings, positions };
    return null;
  }
  m = /^(\d{1,6})$/.exec(text);
  if (m) {
    const count = Number(m[1]);
    if (count > 0 && count <= 100000) return { kind: 'M', count };
  }
  return null;
}

/** The display ID of module number `n` of an `M` layout of `count` modules (`M050`). */
export function mLabel(n, count) {
  return `M${String(n).padStart(Math.max(3, String(count).length), '0')}`;
}

/**
 * The grid to draw: `{strings: [{string, cells: [key|null, ...]}], plain: [key, ...],
 * total}`. With a layout, every module of it is drawn (and counted); modules known
 * beyond it are drawn too. Without one, the modules known.
 */
export function gridModel(layout, knownKeys) {
  const sCells = new Map(); // string -> Set(position)
  const mNumbers = new Set();
  const labels = new Map();
  if (layout && layout.kind === 'S') {
    for (let s = 1; s <= layout.strings; s++) {
      const set = new Set();
      for (let p = 1; p <= layout.positions; p++) set.add(p);
      sCells.set(s, set);
    }
  } else if (layout && layout.kind === 'M') {
    for (let n = 1; n <= layout.count; n++) mNumbers.add(n);
  }
  for (const key of knownKeys) {
    const id = parseModuleId(key);
    if (!id) continue;
    if (id.kind === 'S') {
      if (!sCells.has(id.string)) sCells.set(id.string, new Set());
      sCells.get(id.string).add(id.position);
    } else {
      mNumbers.add(id.number);
    }
  }
  const mCount = layout && layout.kind === 'M' ? layout.count : Math.max(0, ...mNumbers);
  const strings = [...sCells.keys()].sort((a, b) => a - b).map((s) => {
    const positions = sCells.get(s);
    const width = Math.max(...positions);
    const cells = [];
    for (let p = 1; p <= width; p++) cells.push(positions.has(p) ? `S${s}-${p}` : null);
    return { string: s, cells };
  });
  const plain = [...mNumbers].sort((a, b) => a - b).map((n) => {
    labels.set(`M${n}`, mLabel(n, mCount));
    return `M${n}`;
  });
  let total = plain.length;
  for (const set of sCells.values()) total += set.size;
  return { strings, plain, total, labels };
}

/** Counts by status of the marked modules, and how many are marked. */
export function countByStatus(modules) {
  const counts = {};
  for (const s of STATUS_ORDER) counts[s] = 0;
  let marked = 0;
  for (const m of modules) {
    if (!m.status) continue;
    marked += 1;
    counts[m.status] = (counts[m.status] || 0) + 1;
  }
  return { counts, marked };
}

/** Milliseconds since the epoch of an RFC 3339 text, null when unreadable. */
function millis(text) {
  const t = Date.parse(text ?? '');
  return Number.isNaN(t) ? null : t;
}

/** A module state from a normalized `module` event's data, or null when not one. */
export function moduleFromData(data) {
  if (!data || typeof data !== 'object') return null;
  const id = parseModuleId(data.module_id);
  if (!id) return null;
  const technician = data.technician && typeof data.technician === 'object' ? data.technician : {};
  return {
    key: id.key,
    moduleId: String(data.module_id),
    status: typeof data.status === 'string' ? data.status : '',
    comment: data.comment === null || data.comment === undefined ? '' : String(data.comment),
    technician: technician.name ? String(technician.name) : (technician.id ? String(technician.id) : ''),
    updatedAt: millis(data.updated_at),
  };
}

/** The toast of a change: "M050 → Microfissures (Adrien)". */
export function describeChange(mod, previous) {
  const who = mod.technician ? ` (${mod.technician})` : '';
  let what = statusLabel(mod.status);
  if (previous && previous.status === mod.status && previous.comment !== mod.comment) {
    what = `${what}, commentaire modifié`;
  }
  return `${mod.moduleId} → ${what}${who}`;
}

const STATE_LABELS = {
  connecting: 'Connexion…',
  live: 'LIVE',
  reconnecting: 'Reconnexion…',
  offline: 'Hors ligne',
};

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null && text !== '') node.appendChild(document.createTextNode(text));
  return node;
}

/** The board: model, rendering, toasts, detail panel. */
export class Board {
  constructor(audit, layout, config = {}) {
    this.audit = audit;
    this.layout = layout;
    this.config = config;
    this.modules = new Map(); // canonical key -> module state
    this.flashUntil = new Map();
    this.selected = null;
    this.renderScheduled = false;
    this.replayBuffer = [];
    this.fullLoad = false;
    this.stream = null;
  }

  /** Applies one module state; returns the previous state, or undefined when ignored. */
  apply(mod) {
    const prev = this.modules.get(mod.key) || null;
    if (prev && prev.updatedAt !== null && mod.updatedAt !== null && mod.updatedAt < prev.updatedAt) {
      return undefined; // a late delivery never flips a module back
    }
    if (prev && prev.updatedAt === mod.updatedAt && prev.status === mod.status
      && prev.comment === mod.comment && prev.technician === mod.technician) {
      return undefined; // already shown: no second toast
    }
    this.modules.set(mod.key, mod);
    return prev;
  }

  onSnapshot(records) {
    this.modules.clear();
    for (const r of records) {
      if (r.type !== EVENT_TYPE || !r.data || r.data.audit_token !== this.audit) continue;
      const mod = moduleFromData(r.data);
      if (mod) this.apply(mod);
    }
    this.scheduleRender();
  }

  onOpen({ fullLoad }) {
    if (fullLoad) this.fullLoad = true;
  }

  /** relais no longer had our position: the client reloads the state; say so. */
  onGap() {
    this.toast("Historique du relais interrompu : l'audit a été rechargé.", 'warning');
  }

  onEvents(events, { replay }) {
    for (const ev of events) {
      if (ev.type !== EVENT_TYPE) continue;
      let data;
      try { data = JSON.parse(ev.data); } catch { continue; }
      if (!data || data.audit_token !== this.audit) continue;
      const mod = moduleFromData(data);
      if (!mod) continue;
      const prev = this.apply(mod);
      if (prev === undefined) continue;
      if (replay && this.fullLoad) continue; // the snapshot's catch-up: no toast
      if (replay) this.replayBuffer.push({ mod, prev });
      else this.notify(mod, prev);
    }
    this.scheduleRender();
  }

  onReplayDone() {
    this.fullLoad = false;
    const missed = this.replayBuffer;
    this.replayBuffer = [];
    if (!missed.length) return;
    for (const { mod } of missed) this.flash(mod.key);
    if (missed.length <= 5) {
      for (const { mod, prev } of missed) this.toast(describeChange(mod, prev), STATUSES[mod.status]?.level || 'info');
    } else {
      this.toast(`${missed.length} modules marqués pendant la coupure`, 'info');
    }
  }

  notify(mod, prev) {
    this.flash(mod.key);
    this.toast(describeChange(mod, prev), STATUSES[mod.status]?.level || 'info');
  }

  onState(state, detail) {
    $('conn').dataset.state = state;
    $('conn-label').textContent = STATE_LABELS[state] || state;
    $('conn-detail').textContent = detail ? `(${detail})` : '';
  }

  onPresence(people) {
    const list = $('presence');
    list.replaceChildren(...people.map((p) => {
      const li = el('li', 'person', p.name);
      li.dataset.name = p.name;
      if (p.count > 1) li.append(el('span', 'person-count', `×${p.count}`));
      return li;
    }));
    $('presence-empty').hidden = people.length > 0;
  }

  onAuthError(status) {
    const why = status === 403
      ? `Le jeton n'autorise pas l'audit « ${this.audit} » (403).`
      : 'Le relais a refusé le jeton : expiré ou invalide (401).';
    this.askToken(`${why} Saisissez un nouveau jeton d'abonnement.`);
  }

  askToken(message) {
    const msg = $('settings-message');
    msg.textContent = message || '';
    msg.hidden = !message;
    $('token').value = '';
    if (!$('settings').open) $('settings').showModal();
  }

  flash(key) {
    const ms = this.config.flashMs ?? 2500;
    this.flashUntil.set(key, Date.now() + ms);
    setTimeout(() => {
      if ((this.flashUntil.get(key) ?? 0) <= Date.now()) {
        this.flashUntil.delete(key);
        this.scheduleRender();
      }
    }, ms + 100);
  }

  toast(text, level = 'info') {
    const box = $('toasts');
    const t = el('div', `toast toast-${level}`, text);
    t.setAttribute('role', level === 'critical' ? 'alert' : 'status');
    box.append(t);
    while (box.children.length > 6) box.firstElementChild.remove();
    setTimeout(() => t.remove(), this.config.toastMs ?? 6000);
  }

  scheduleRender() {
    if (this.renderScheduled) return;
    this.renderScheduled = true;
    // Not requestAnimationFrame: paused in background tabs.
    setTimeout(() => { this.renderScheduled = false; this.render(); }, 0);
  }

  cell(key, label, now, fullName = label) {
    const mod = this.modules.get(key);
    const b = el('button', 'cell', label);
    b.type = 'button';
    b.dataset.module = key;
    const status = mod ? statusClass(mod.status) : 'none';
    b.dataset.status = mod ? mod.status : '';
    b.classList.add(`status-${status}`);
    if (mod) b.classList.add(`level-${STATUSES[mod.status]?.level || 'unknown'}`);
    if ((this.flashUntil.get(key) ?? 0) > now) b.classList.add('flash');
    if (this.selected === key) b.classList.add('selected');
    b.title = mod ? `${fullName} : ${statusLabel(mod.status)}` : `${fullName} : non marqué`;
    b.setAttribute('aria-label', b.title);
    return b;
  }

  render() {
    const now = Date.now();
    const model = gridModel(this.layout, this.modules.keys());
    const grid = $('grid');
    const sections = [];
    if (model.strings.length) {
      const table = el('div', 'strings');
      for (const row of model.strings) {
        const line = el('div', 'string-row');
        line.append(el('span', 'string-label', `S${row.string}`));
        const cells = el('div', 'string-cells');
        cells.style.setProperty('--cols', String(row.cells.length));
        for (const key of row.cells) {
          // The row names the string: a cell shows its position (its title the full ID).
          cells.append(key ? this.cell(key, key.slice(key.indexOf('-') + 1), now, key) : el('span', 'cell cell-gap'));
        }
        line.append(cells);
        table.append(line);
      }
      sections.push(table);
    }
    if (model.plain.length) {
      const plain = el('div', 'plain');
      for (const key of model.plain) plain.append(this.cell(key, model.labels.get(key) || key, now));
      sections.push(plain);
    }
    grid.replaceChildren(...sections);
    $('empty').hidden = model.total > 0;

    const { counts, marked } = countByStatus(this.modules.values());
    const total = Math.max(model.total, marked);
    $('progress').textContent = `${marked} / ${total} modules marqués`;
    $('progress-fill').style.width = total ? `${Math.round((100 * marked) / total)}%` : '0%';
    const items = STATUS_ORDER.filter((s) => counts[s] > 0 || ['ok', 'inequality', 'microcracks', 'dead', 'string_open', 'not_connected'].includes(s))
      .map((s) => {
        const li = el('li', `count status-${s} level-${STATUSES[s].level}`);
        li.dataset.status = s;
        li.append(el('span', 'count-value', String(counts[s])), el('span', 'count-label', STATUSES[s].label));
        li.id = `count-${s}`;
        return li;
      });
    $('counts').replaceChildren(...items);
    this.renderDetail();
  }

  renderDetail() {
    const box = $('detail');
    if (!this.selected) { box.hidden = true; return; }
    const mod = this.modules.get(this.selected);
    box.hidden = false;
    $('detail-module').textContent = mod ? mod.moduleId : this.selected;
    const badge = $('detail-status');
    badge.textContent = mod ? statusLabel(mod.status) : 'Non marqué';
    badge.className = `badge status-${mod ? statusClass(mod.status) : 'none'}`;
    $('detail-technician').textContent = (mod && mod.technician) || '—';
    $('detail-comment').textContent = (mod && mod.comment) || '—';
    $('detail-time').textContent = mod && mod.updatedAt !== null
      ? new Date(mod.updatedAt).toLocaleString('fr-FR', { dateStyle: 'short', timeStyle: 'medium' })
      : '—';
  }

  wireUi() {
    $('grid').addEventListener('click', (e) => {
      const cell = e.target.closest('.cell[data-module]');
      if (!cell) return;
      this.selected = cell.dataset.module;
      this.scheduleRender();
    });
    $('detail-close').addEventListener('click', () => { this.selected = null; this.scheduleRender(); });
    $('settings-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const token = $('token').value.trim();
      $('settings').close();
      if (!token) return;
      try { sessionStorage.setItem(tokenKey(this.audit), token); } catch { /* storage off */ }
      this.stream.configure({ token });
    });
  }

  start(token) {
    const c = this.config;
    const topic = `audits/${this.audit}`;
    this.stream = new LiveStream({
      relayUrl: window.location.origin,
      token,
      topics: [topic],
      presenceTopic: topic,
      initialFrom: 'snapshot',
      backoffBaseMs: c.backoffBaseMs,
      backoffCapMs: c.backoffCapMs,
      idleTimeoutMs: c.idleTimeoutMs,
      settleMs: c.settleMs,
      callbacks: {
        onState: (s, d) => this.onState(s, d),
        onSnapshot: (r) => this.onSnapshot(r),
        onOpen: (o) => this.onOpen(o),
        onGap: () => this.onGap(),
        onEvents: (e, o) => this.onEvents(e, o),
        onReplayDone: () => this.onReplayDone(),
        onPresence: (p) => this.onPresence(p.people()),
        onAuthError: (s) => this.onAuthError(s),
      },
    });
    this.render();
    this.stream.run();
  }
}

/** Where this tab keeps the token of one audit (tokens are usually given per audit). */
function tokenKey(audit) {
  return `relais.audit.token.${audit}`;
}

/**
 * The subscribe token: from `?token=` (always taken out of the address bar, and kept for
 * this tab and this audit), else the one this tab kept for the audit.
 */
function takeToken(params, audit) {
  const given = params.get('token') || '';
  if (params.has('token')) {
    params.delete('token');
    const rest = params.toString();
    const url = window.location.pathname + (rest ? `?${rest}` : '') + window.location.hash;
    try { window.history.replaceState(window.history.state, '', url); } catch { /* sandboxed */ }
  }
  if (!audit) return '';
  if (given) {
    try { sessionStorage.setItem(tokenKey(audit), given); } catch { /* storage off */ }
    return given;
  }
  try { return sessionStorage.getItem(tokenKey(audit)) || ''; } catch { return ''; }
}

function boot() {
  // Tuning hook (tests): `window.relaisAuditConfig = {backoffBaseMs, backoffCapMs,
  // idleTimeoutMs, settleMs, toastMs, flashMs}` defined before this module runs.
  const config = window.relaisAuditConfig || {};
  const params = new URLSearchParams(window.location.search);
  const audit = (params.get('audit') || '').trim();
  const layout = parseLayout(params.get('modules'));
  const token = takeToken(params, audit);
  if (!audit) {
    const n = $('notice');
    n.textContent = "Indiquez l'audit dans l'adresse : /audit/?audit=JETON_DE_L_AUDIT";
    n.hidden = false;
    $('conn').dataset.state = 'offline';
    $('conn-label').textContent = STATE_LABELS.offline;
    return;
  }
  $('audit-name').textContent = `Audit ${audit}`;
  document.title = `Audit ${audit} — relais`;
  const board = new Board(audit, layout, config);
  window.relaisAudit = board;
  board.wireUi();
  board.start(token);
  if (!token) board.askToken("Saisissez un jeton d'abonnement pour suivre l'audit.");
}

if (typeof document !== 'undefined' && document.getElementById('grid')) {
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', boot);
  else boot();
}
