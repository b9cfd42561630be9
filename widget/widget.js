// relais — supervisors' dashboard: live interventions, as a Grist custom widget or as a
// standalone page served by relais at /widget/.
//
// A plain ES module, no build step. Two modes:
// - Grist mode, when `window.grist` exists, or when the page is framed (window.parent !==
//   window) or opened with `?grist`: the Grist plugin API script is then loaded from
//   https://docs.getgrist.com/grist-plugin-api.js (the only external script, and only in
//   that case). The Grist table (onRecords + column mapping) is the base of the view; the
//   relay's stream adds toasts, row flashes, sound and anything newer. Relay URL and
//   subscribe token are widget options (onOptions / setOption, settings panel through
//   onEditOptions). `?standalone` forces standalone mode even when framed.
// - Standalone mode: relay URL = the page's origin, token from `?token=` (or the settings
//   form); the initial list is relais' current state (`GET /state?topic=interventions`),
//   then the stream from the snapshot's `lastEventID` (no gap, no duplicate).
//
// All record text goes through textContent / createTextNode: never innerHTML with data.
//
// Pure helpers are exported so the browser tests can exercise them directly. The streaming
// (snapshot, resume, backoff, history gaps, network awareness) is relais' JS client,
// /client/relais.js, shared with the DiagPV audit board.

import { LiveStream, SseParser, backoffDelay } from '../client/relais.js';

export { LiveStream, SseParser, backoffDelay };

/** Topic selector the dashboard subscribes to. */
export const TOPIC = 'interventions';
/** Event type of normalized Grist rows. */
export const EVENT_TYPE = 'intervention';
/** URL of the Grist plugin API (only loaded inside Grist). */
export const GRIST_PLUGIN_API = 'https://docs.getgrist.com/grist-plugin-api.js';

/** Columns declared to Grist: names match the CEREMA `Interventions` table. */
export const GRIST_COLUMNS = [
  { name: 'ID', title: 'Identifiant', description: "Identifiant métier (ex. INT-2024-001)", optional: true },
  { name: 'Agent', title: 'Agent', description: "Nom de l'agent terrain" },
  { name: 'Localisation', title: 'Localisation', description: "Adresse de l'intervention" },
  { name: 'Type', title: "Type d'intervention", optional: true },
  { name: 'Statut', title: 'Statut', description: 'En cours, Terminé, En attente, Bloqué…' },
  { name: 'Priorite', title: 'Priorité', description: 'Basse, Normale, Haute, Urgente' },
  { name: 'Derniere_MAJ', title: 'Dernière mise à jour', optional: true },
  { name: 'Commentaire', title: 'Commentaire', optional: true },
];

// ---------------------------------------------------------------------------------------
// Pure helpers: normalization, classification, sorting, stats.
// ---------------------------------------------------------------------------------------

/** Lower-case, accent-free, single-spaced text for tolerant comparisons. */
export function fold(value) {
  if (value === null || value === undefined) return '';
  return String(value)
    .normalize('NFD')
    .replace(/[\u0300-\u036f]/g, '')
    .toLowerCase()
    .replace(/[\s_-]+/g, ' ')
    .trim();
}

/**
 * The category of a free-text status: 'done', 'in_progress', 'blocked', 'waiting' or
 * 'other'. Tolerant to accents, case, gender and a few synonyms (French and English).
 */
export function statusCategory(status) {
  const s = fold(status);
  if (!s) return 'other';
  if (/^(termin|fini|clos|clotur|fait|resolu|realise|acheve|done|complete|closed|ferme)/.test(s)) return 'done';
  if (/^(bloqu|suspendu|blocked|empech|stopp)/.test(s)) return 'blocked';
  if (/^(en cours|encours|in progress|demarr|commenc|started|ongoing|en traitement)/.test(s)) return 'in_progress';
  if (/^(en attente|a faire|planifi|nouve|ouvert|todo|to do|pending|waiting|a planifier|programm)/.test(s)) return 'waiting';
  return 'other';
}

/** Sort rank of a priority: 0 urgent, 1 high, 2 normal, 3 low, 4 unknown or empty. */
export function priorityRank(priority) {
  const p = fold(priority);
  if (!p) return 4;
  if (/^(urgent|critique|critical|p0|tres haute|immediat)/.test(p)) return 0;
  if (/^(haut|high|elevee?|important|p1)/.test(p)) return 1;
  if (/^(normal|moyen|medium|standard|p2)/.test(p)) return 2;
  if (/^(bass|low|faible|mineur|p3)/.test(p)) return 3;
  return 4;
}

/** CSS class suffix for a priority rank (fixed vocabulary, never record text). */
export const PRIORITY_CLASS = ['urgent', 'high', 'normal', 'low', 'unknown'];

/**
 * Milliseconds since the epoch from what Grist or relais gives: a Date, epoch seconds
 * (Grist storage), epoch milliseconds, an RFC 3339 string, or Grist's encoded
 * `['D', seconds, tz]` / `['d', seconds]`. Null when absent or unreadable.
 */
export function toMillis(value) {
  if (value === null || value === undefined || value === '' || value === 0) return null;
  if (value instanceof Date) return Number.isNaN(value.getTime()) ? null : value.getTime();
  if (Array.isArray(value) && (value[0] === 'D' || value[0] === 'd') && typeof value[1] === 'number') {
    return value[1] * 1000;
  }
  if (typeof value === 'number' && Number.isFinite(value)) {
    return value < 1e11 ? Math.round(value * 1000) : Math.round(value);
  }
  if (typeof value === 'string') {
    const t = Date.parse(value);
    return Number.isNaN(t) ? null : t;
  }
  return null;
}

/** Plain text for a cell value (ChoiceList `['L', ...]` joined, errors and objects shown as text). */
export function cellText(value) {
  if (value === null || value === undefined) return '';
  if (Array.isArray(value)) {
    if (value[0] === 'L') return value.slice(1).map(cellText).join(', ');
    if (value[0] === 'E') return `#${value[1] ?? 'Erreur'}`;
    return value.map(cellText).join(', ');
  }
  if (value instanceof Date) return value.toISOString();
  if (typeof value === 'object') {
    try { return JSON.stringify(value); } catch { return String(value); }
  }
  return String(value);
}

/**
 * A dashboard record from a normalized `intervention` event's data. `keyPrefix` separates
 * sources and tables in standalone mode; in Grist mode the key is the Grist row id.
 */
export function recordFromEvent(data, { withSourceInKey = true } = {}) {
  const d = data && typeof data === 'object' ? data : {};
  const rowId = d.row_id ?? d.rowId ?? null;
  const ident = rowId !== null && rowId !== undefined && rowId !== '' ? String(rowId) : `id:${cellText(d.id)}`;
  const key = withSourceInKey ? `${cellText(d.source)}|${cellText(d.table)}|${ident}` : ident;
  return {
    key,
    rowId,
    id: cellText(d.id),
    agent: cellText(d.agent),
    location: cellText(d.location),
    type: cellText(d.type),
    status: cellText(d.status),
    priority: cellText(d.priority),
    comment: cellText(d.comment),
    updatedAt: toMillis(d.updated_at),
    source: cellText(d.source),
    table: cellText(d.table),
  };
}

/** A dashboard record from a Grist row already passed through `grist.mapColumnNames`. */
export function recordFromGristRow(mapped, rawRow) {
  const m = mapped || {};
  const rowId = m.id ?? (rawRow && rawRow.id) ?? null;
  return {
    key: String(rowId),
    rowId,
    id: cellText(m.ID),
    agent: cellText(m.Agent),
    location: cellText(m.Localisation),
    type: cellText(m.Type),
    status: cellText(m.Statut),
    priority: cellText(m.Priorite),
    comment: cellText(m.Commentaire),
    updatedAt: toMillis(m.Derniere_MAJ),
    source: 'grist',
    table: '',
  };
}

/** Active (not done) records, most urgent first, then most recently updated. */
export function sortActive(records) {
  return records
    .filter((r) => statusCategory(r.status) !== 'done')
    .sort((a, b) => {
      const pa = priorityRank(a.priority);
      const pb = priorityRank(b.priority);
      if (pa !== pb) return pa - pb;
      const ta = a.updatedAt ?? -Infinity;
      const tb = b.updatedAt ?? -Infinity;
      if (ta !== tb) return tb - ta;
      return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
    });
}

/** The five counters of the stats cards. Urgent counts urgent records not yet done. */
export function computeStats(records) {
  const stats = { total: 0, inProgress: 0, done: 0, blocked: 0, urgent: 0 };
  for (const r of records) {
    stats.total += 1;
    const cat = statusCategory(r.status);
    if (cat === 'in_progress') stats.inProgress += 1;
    else if (cat === 'done') stats.done += 1;
    else if (cat === 'blocked') stats.blocked += 1;
    if (cat !== 'done' && priorityRank(r.priority) === 0) stats.urgent += 1;
  }
  return stats;
}

const FIELD_ALIASES = {
  status: ['status', 'statut'],
  priority: ['priority', 'priorite', 'priorité'],
  comment: ['comment', 'commentaire'],
  agent: ['agent'],
  location: ['location', 'localisation'],
  type: ['type'],
};
const FIELD_LABELS = {
  comment: 'commentaire', agent: 'agent', location: 'localisation', type: 'type',
};

/** Which dashboard fields an event says changed (from `changed`, else by comparison). */
export function changedFields(data, previous) {
  const out = new Set();
  const listed = Array.isArray(data && data.changed) ? data.changed.map(fold) : null;
  for (const [field, aliases] of Object.entries(FIELD_ALIASES)) {
    if (listed) {
      if (aliases.some((a) => listed.includes(fold(a)))) out.add(field);
    } else if (previous && cellText(previous[field]) !== cellText(data[field])) {
      out.add(field);
    }
  }
  return out;
}

/**
 * The toast text naming who changed what, e.g.
 * "Marie Durand: Avenue de la République → Terminé".
 */
export function describeChange(data, previous) {
  const who = cellText(data.agent) || "Quelqu'un";
  const where = cellText(data.location) || cellText(data.id) || `ligne ${cellText(data.row_id)}`;
  const status = cellText(data.status);
  const priority = cellText(data.priority);
  if (data.change === 'add') {
    const what = ['nouvelle intervention', status, priority && `priorité ${priority}`].filter(Boolean).join(', ');
    return `${who}: ${where} → ${what}`;
  }
  const changed = changedFields(data, previous);
  const parts = [];
  if (changed.has('status') && status) parts.push(status);
  if (changed.has('priority') && priority) parts.push(`priorité ${priority}`);
  const others = [...changed].filter((f) => f !== 'status' && f !== 'priority').map((f) => FIELD_LABELS[f]);
  if (others.length) parts.push(`${others.join(', ')} modifié${others.length > 1 ? 's' : ''}`);
  if (!parts.length) parts.push(status || 'mise à jour');
  return `${who}: ${where} → ${parts.join(', ')}`;
}

/** Toast colour for an event: 'success', 'error', 'warning' or 'info'. */
export function toastKind(data) {
  if (priorityRank(data.priority) === 0 && statusCategory(data.status) !== 'done') return 'error';
  switch (statusCategory(data.status)) {
    case 'done': return 'success';
    case 'blocked': return 'error';
    case 'waiting': return 'warning';
    default: return 'info';
  }
}

/** Relative French time: "à l'instant", "il y a 5 min", "il y a 2 h", else the date. */
export function relativeTime(ms, now = Date.now()) {
  if (ms === null || ms === undefined) return '';
  const diff = Math.floor((now - ms) / 1000);
  if (diff < 60) return "à l'instant";
  if (diff < 3600) return `il y a ${Math.floor(diff / 60)} min`;
  if (diff < 86400) return `il y a ${Math.floor(diff / 3600)} h`;
  return new Date(ms).toLocaleString('fr-FR', { dateStyle: 'short', timeStyle: 'short' });
}

// ---------------------------------------------------------------------------------------
// The dashboard (DOM).
// ---------------------------------------------------------------------------------------

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

/** The dashboard: model, rendering, notifications, settings, mode wiring. */
export class Dashboard {
  constructor(config = {}) {
    this.config = config;
    this.mode = 'standalone';
    this.grist = null;
    this.base = new Map(); // Grist rows (Grist mode)
    this.overlay = new Map(); // records from the relay's events
    this.flashUntil = new Map();
    this.soundOn = false;
    this.audio = null;
    this.renderScheduled = false;
    this.replayBuffer = [];
    this.pendingGapNotice = false;
    this.stream = null;
    this.mappingMissing = false;
    this.defaultRelay = window.location.origin;
  }

  // -- model -----------------------------------------------------------------------------

  /** Current records: the base with newer event records on top. */
  records() {
    const merged = new Map(this.base);
    for (const [key, rec] of this.overlay) {
      const b = merged.get(key);
      if (!b || b.updatedAt === null || rec.updatedAt === null || rec.updatedAt >= b.updatedAt) {
        merged.set(key, rec);
      }
    }
    return [...merged.values()];
  }

  current(key) {
    const o = this.overlay.get(key);
    const b = this.base.get(key);
    if (o && b) return (o.updatedAt ?? Infinity) >= (b.updatedAt ?? -Infinity) ? o : b;
    return o || b || null;
  }

  /** Applies one event's data; returns the record and its previous state, or null if stale. */
  applyEvent(data) {
    const rec = recordFromEvent(data, { withSourceInKey: this.mode !== 'grist' });
    const prev = this.current(rec.key);
    if (prev && prev.updatedAt !== null && rec.updatedAt !== null && rec.updatedAt < prev.updatedAt) {
      return null; // late delivery: never flip a record back
    }
    this.overlay.set(rec.key, rec);
    return { rec, prev };
  }

  // -- stream callbacks ----------------------------------------------------------------

  /** Standalone: the relay's current state replaces the view (no toast, no flash). */
  onSnapshot(records) {
    this.overlay.clear();
    for (const r of records) {
      if (r.type !== EVENT_TYPE || !r.data || typeof r.data !== 'object') continue;
      this.applyEvent(r.data);
    }
    this.scheduleRender();
  }

  onOpen({ fullLoad, gap, snapshotted }) {
    if (fullLoad && !snapshotted) {
      // Standalone: the stream's history is the snapshot, rebuilt from scratch. Grist: the
      // table's records stay the base; only what came from events is dropped.
      this.overlay.clear();
      this.scheduleRender();
    }
    this.fullLoad = fullLoad;
    if (gap) this.pendingGapNotice = true;
  }

  onEvents(events, { replay }) {
    for (const ev of events) {
      if (ev.type !== EVENT_TYPE) continue;
      let data;
      try {
        data = JSON.parse(ev.data);
      } catch {
        continue; // not ours to display
      }
      if (!data || typeof data !== 'object') continue;
      const applied = this.applyEvent(data);
      if (!applied) continue;
      if (replay && this.fullLoad) continue; // snapshot: no toast, no flash
      if (replay) {
        this.replayBuffer.push({ data, applied }); // resumed: summarized when replay ends
      } else {
        this.notify(data, applied);
      }
    }
    this.scheduleRender();
  }

  onReplayDone() {
    if (this.pendingGapNotice) {
      this.pendingGapNotice = false;
      this.toast(this.mode === 'grist'
        ? 'Historique du relais interrompu : la vue repart des données de la table.'
        : 'Historique du relais interrompu : la vue a été rechargée.', 'warning');
    }
    const missed = this.replayBuffer;
    this.replayBuffer = [];
    this.fullLoad = false;
    if (!missed.length) return;
    for (const { applied } of missed) this.flash(applied.rec.key);
    if (missed.length <= 3) {
      for (const { data, applied } of missed) this.toast(describeChange(data, applied.prev), toastKind(data));
    } else {
      this.toast(`${missed.length} mises à jour reçues pendant la coupure`, 'info');
    }
    this.beep(missed.some(({ data }) => priorityRank(data.priority) === 0));
    this.scheduleRender();
  }

  notify(data, { rec, prev }) {
    this.flash(rec.key);
    this.toast(describeChange(data, prev), toastKind(data));
    this.beep(priorityRank(data.priority) === 0 && statusCategory(data.status) !== 'done');
  }

  onState(state, detail) {
    const box = $('conn');
    box.dataset.state = state;
    $('conn-label').textContent = STATE_LABELS[state] || state;
    $('conn-detail').textContent = detail ? `(${detail})` : '';
  }

  onAuthError(status, message) {
    const why = status === 403
      ? "Le jeton n'autorise pas le sujet « interventions » (403)."
      : 'Le relais a refusé le jeton : expiré ou invalide (401).';
    this.openSettings(`${why} Saisissez un nouveau jeton d'abonnement.${message ? ` Détail : ${message}` : ''}`);
  }

  // -- rendering -------------------------------------------------------------------------

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

  scheduleRender() {
    if (this.renderScheduled) return;
    this.renderScheduled = true;
    // Not requestAnimationFrame: it is paused in background tabs, where toasts and sound
    // must still follow the stream.
    setTimeout(() => {
      this.renderScheduled = false;
      this.render();
    }, 0);
  }

  render() {
    const records = this.records();
    const stats = computeStats(records);
    $('stat-total').textContent = String(stats.total);
    $('stat-in-progress').textContent = String(stats.inProgress);
    $('stat-done').textContent = String(stats.done);
    $('stat-blocked').textContent = String(stats.blocked);
    $('stat-urgent').textContent = String(stats.urgent);
    $('stat-urgent').parentElement.classList.toggle('alert', stats.urgent > 0);

    const active = sortActive(records);
    const list = $('active-list');
    const now = Date.now();
    const rows = active.map((r) => this.row(r, now));
    list.replaceChildren(...rows);
    $('active-count').textContent = active.length ? `(${active.length})` : '';
    $('empty').hidden = active.length > 0;
  }

  row(r, now) {
    const rank = priorityRank(r.priority);
    const cat = statusCategory(r.status);
    const li = el('li', `row prio-${PRIORITY_CLASS[rank]} status-${cat}`);
    li.dataset.key = r.key;
    if ((this.flashUntil.get(r.key) ?? 0) > now) li.classList.add('flash');

    const head = el('div', 'row-head');
    head.append(
      el('span', `badge badge-prio prio-${PRIORITY_CLASS[rank]}`, r.priority || 'Priorité ?'),
      el('span', `badge badge-status status-${cat}`, r.status || 'Statut ?'),
    );
    if (r.id) head.append(el('span', 'row-id', r.id));
    const time = el('time', 'row-time', relativeTime(r.updatedAt, now));
    if (r.updatedAt !== null) {
      time.dateTime = new Date(r.updatedAt).toISOString();
      time.title = new Date(r.updatedAt).toLocaleString('fr-FR');
    }
    head.append(time);

    const location = el('div', 'row-location', r.location || '—');
    const meta = el('div', 'row-meta');
    meta.append(el('span', 'row-agent', r.agent || 'Agent inconnu'));
    if (r.type) meta.append(el('span', 'row-type', r.type));
    li.append(head, location, meta);
    if (r.comment) li.append(el('div', 'row-comment', r.comment));
    return li;
  }

  toast(text, kind = 'info') {
    const box = $('toasts');
    const t = el('div', `toast toast-${kind}`, text);
    t.setAttribute('role', kind === 'error' ? 'alert' : 'status');
    box.append(t);
    while (box.children.length > 5) box.firstElementChild.remove();
    setTimeout(() => t.remove(), this.config.toastMs ?? 6000);
  }

  notice(text) {
    const n = $('notice');
    n.textContent = text || '';
    n.hidden = !text;
  }

  // -- sound -----------------------------------------------------------------------------

  setSound(on) {
    this.soundOn = on;
    const b = $('sound-toggle');
    b.setAttribute('aria-pressed', on ? 'true' : 'false');
    b.textContent = on ? '♪ Son activé' : '♪ Son désactivé';
    try { localStorage.setItem('relais.widget.sound', on ? '1' : '0'); } catch { /* storage off */ }
    if (on) {
      // Created on the click (a user gesture), as browsers' autoplay policy requires.
      const Ctx = window.AudioContext || window.webkitAudioContext;
      if (Ctx && !this.audio) this.audio = new Ctx();
      if (this.audio && this.audio.state === 'suspended') this.audio.resume().catch(() => {});
      this.beep(false);
    }
  }

  /** A short synthesized beep (two for urgent): no audio file is downloaded. */
  beep(urgent) {
    if (!this.soundOn || !this.audio) return;
    const ctx = this.audio;
    const count = urgent ? 2 : 1;
    for (let i = 0; i < count; i++) {
      const start = ctx.currentTime + i * 0.22;
      const osc = ctx.createOscillator();
      const gain = ctx.createGain();
      osc.type = 'sine';
      osc.frequency.value = urgent ? 988 : 880;
      gain.gain.setValueAtTime(0.0001, start);
      gain.gain.exponentialRampToValueAtTime(0.2, start + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, start + 0.18);
      osc.connect(gain).connect(ctx.destination);
      osc.start(start);
      osc.stop(start + 0.2);
    }
    this.beeps = (this.beeps || 0) + count;
  }

  // -- settings --------------------------------------------------------------------------

  openSettings(message) {
    const dlg = $('settings');
    const msg = $('settings-message');
    msg.textContent = message || '';
    msg.hidden = !message;
    $('relay-field').hidden = this.mode !== 'grist';
    const relay = this.stream ? this.stream.relayUrl : '';
    $('relay-url').value = relay === this.defaultRelay ? '' : relay;
    $('relay-url').placeholder = this.defaultRelay || 'https://relais.example.fr';
    $('token').value = '';
    $('token').placeholder = this.stream && this.stream.token ? '(inchangé)' : '';
    if (!dlg.open) dlg.showModal();
    $('token').focus();
  }

  async saveSettings() {
    const relayUrl = $('relay-url').value.trim();
    const token = $('token').value.trim();
    $('settings').close();
    if (this.mode === 'grist') {
      // Stored in the document: a relay URL and a read-only subscribe token, never more.
      // An empty relay URL means "this page's origin" (relais serving the widget).
      await this.grist.setOption('relayUrl', relayUrl);
      if (token) await this.grist.setOption('token', token);
      this.stream.configure({ relayUrl: relayUrl || this.defaultRelay, token: token || undefined });
    } else if (token) {
      try { sessionStorage.setItem('relais.widget.token', token); } catch { /* storage off */ }
      this.stream.configure({ token });
    }
  }

  // -- start-up --------------------------------------------------------------------------

  wireUi() {
    $('sound-toggle').addEventListener('click', () => this.setSound(!this.soundOn));
    $('settings-open').addEventListener('click', () => this.openSettings(''));
    $('settings-cancel').addEventListener('click', () => $('settings').close());
    $('settings-form').addEventListener('submit', (e) => {
      e.preventDefault();
      this.saveSettings().catch((err) => this.toast(`Réglages non enregistrés : ${err}`, 'error'));
    });
    // A relay URL on another origin than the page's is refused by the CSP relais serves
    // the widget with (connect-src 'self'): say so instead of retrying silently.
    document.addEventListener('securitypolicyviolation', (e) => {
      if (e.effectiveDirective === 'connect-src' || e.violatedDirective === 'connect-src') {
        this.notice(`Connexion à ${e.blockedURI} refusée par la politique de sécurité de la page : `
          + "un widget servi par relais ne se connecte qu'à ce relais (laissez l'URL du relais vide).");
      }
    });
    // Online/offline and page visibility are followed by the client (LiveStream).
    setInterval(() => this.scheduleRender(), 30000); // relative times
  }

  makeStream(relayUrl, token, initialFrom) {
    const c = this.config;
    this.stream = new LiveStream({
      relayUrl,
      token,
      topics: [TOPIC],
      initialFrom,
      backoffBaseMs: c.backoffBaseMs,
      backoffCapMs: c.backoffCapMs,
      idleTimeoutMs: c.idleTimeoutMs,
      settleMs: c.settleMs,
      callbacks: {
        onState: (s, d) => this.onState(s, d),
        onOpen: (o) => this.onOpen(o),
        onSnapshot: (r) => this.onSnapshot(r),
        onGap: () => { this.pendingGapNotice = true; },
        onEvents: (e, o) => this.onEvents(e, o),
        onReplayDone: () => this.onReplayDone(),
        onAuthError: (s, m) => this.onAuthError(s, m),
      },
    });
    return this.stream;
  }

  startStandalone() {
    this.mode = 'standalone';
    document.body.dataset.mode = 'standalone';
    const params = new URLSearchParams(window.location.search);
    let token = params.get('token') || '';
    if (token) {
      // Out of the address bar (and of the history, bookmarks and screen shares): kept
      // for this tab only, like a token typed in the settings.
      try { sessionStorage.setItem('relais.widget.token', token); } catch { /* storage off */ }
      params.delete('token');
      const rest = params.toString();
      const url = window.location.pathname + (rest ? `?${rest}` : '') + window.location.hash;
      try { window.history.replaceState(window.history.state, '', url); } catch { /* sandboxed */ }
    } else {
      try { token = sessionStorage.getItem('relais.widget.token') || ''; } catch { /* storage off */ }
    }
    this.makeStream(window.location.origin, token, 'snapshot');
    this.render();
    this.stream.run();
    if (!token) this.openSettings("Saisissez un jeton d'abonnement pour afficher les interventions.");
  }

  startGrist(grist) {
    this.mode = 'grist';
    this.grist = grist;
    document.body.dataset.mode = 'grist';
    // Served by relais (http/https origin): the relay is this origin unless configured.
    const defaultRelay = /^https?:$/.test(window.location.protocol) ? window.location.origin : '';
    this.defaultRelay = defaultRelay;
    this.makeStream(defaultRelay, '', 'now');
    grist.ready({
      requiredAccess: 'read table',
      columns: GRIST_COLUMNS,
      onEditOptions: () => this.openSettings(''),
    });
    grist.onOptions((options) => {
      const o = options || {};
      this.stream.configure({ relayUrl: o.relayUrl || defaultRelay, token: o.token || '' });
      if (!o.token) {
        this.notice("Ouvrez la configuration du widget pour saisir l'URL du relais et un jeton d'abonnement.");
      } else if (!this.mappingMissing) {
        this.notice('');
      }
    });
    grist.onRecords((rows, mappings) => this.onGristRecords(rows, mappings));
    this.render();
    this.stream.run();
  }

  onGristRecords(rows, mappings) {
    const next = new Map();
    let missing = false;
    for (const row of rows || []) {
      let mapped = null;
      if (typeof this.grist.mapColumnNames === 'function') {
        mapped = this.grist.mapColumnNames(row, { mappings, columns: GRIST_COLUMNS });
      } else if (mappings) {
        mapped = { id: row.id };
        for (const col of GRIST_COLUMNS) mapped[col.name] = row[mappings[col.name]];
      } else {
        mapped = row;
      }
      // Older Grist: null when a required column is unmapped. Newer: the record without
      // it. Either way, show what is there and ask for the mapping.
      if (!mapped) {
        missing = true;
        continue;
      }
      for (const col of GRIST_COLUMNS) {
        if (!col.optional && mapped[col.name] === undefined) missing = true;
      }
      const rec = recordFromGristRow(mapped, row);
      next.set(rec.key, rec);
    }
    this.mappingMissing = missing;
    this.base = next;
    // Event records the table now has caught up with are no longer needed.
    for (const [key, rec] of this.overlay) {
      const b = next.get(key);
      if (b && b.updatedAt !== null && rec.updatedAt !== null && b.updatedAt >= rec.updatedAt) this.overlay.delete(key);
    }
    if (missing) {
      const required = GRIST_COLUMNS.filter((c) => !c.optional).map((c) => c.title).join(', ');
      this.notice(`Associez les colonnes requises (${required}) dans la configuration du widget.`);
    } else if (this.stream && this.stream.token) {
      this.notice('');
    }
    this.scheduleRender();
  }
}

function loadScript(src, timeoutMs) {
  return new Promise((resolve, reject) => {
    const s = document.createElement('script');
    const timer = setTimeout(() => reject(new Error('délai dépassé')), timeoutMs);
    s.src = src;
    s.onload = () => { clearTimeout(timer); resolve(); };
    s.onerror = () => { clearTimeout(timer); reject(new Error(`chargement impossible : ${src}`)); };
    document.head.append(s);
  });
}

/** Finds the Grist plugin API: already there, or loaded when framed / asked with `?grist`. */
async function findGrist() {
  if (window.grist) return window.grist;
  const params = new URLSearchParams(window.location.search);
  if (params.has('standalone')) return null;
  const framed = window.parent !== window;
  if (!framed && !params.has('grist')) return null;
  try {
    await loadScript(GRIST_PLUGIN_API, 10000);
  } catch {
    return null;
  }
  return window.grist || null;
}

async function boot() {
  // Test and tuning hook: `window.relaisWidgetConfig = {backoffBaseMs, backoffCapMs,
  // idleTimeoutMs, settleMs, toastMs, flashMs}` defined before this module runs.
  const config = window.relaisWidgetConfig || {};
  const app = new Dashboard(config);
  window.relaisWidget = app;
  app.wireUi();
  let saved = '0';
  try { saved = localStorage.getItem('relais.widget.sound') || '0'; } catch { /* storage off */ }
  if (saved === '1') {
    // Remember the choice; the audio context can only start on a click, so arm it then.
    app.soundOn = true;
    $('sound-toggle').setAttribute('aria-pressed', 'true');
    $('sound-toggle').textContent = '♪ Son activé';
    document.addEventListener('click', () => {
      if (app.soundOn && !app.audio) app.setSound(true);
    }, { once: true });
  }
  const grist = await findGrist();
  if (grist) {
    app.startGrist(grist);
  } else {
    if (window.parent !== window) {
      app.notice("API Grist indisponible : le widget fonctionne en mode autonome.");
    }
    app.startStandalone();
  }
}

if (typeof document !== 'undefined') {
  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', () => { boot(); });
  } else {
    boot();
  }
}
