// relais.js — the browser client of relais, served at /client/relais.js.
//
// One dependency-free ES module, no build step. It does what every live page needs and
// what a polling loop or a bare EventSource gets wrong:
// - snapshot then stream: `GET /state` for the current records, then the Mercure stream
//   from the snapshot's `lastEventID`, so nothing falls between the two and nothing comes
//   twice;
// - resume: every reconnection asks for the events after the last one received;
// - fetch-based Server-Sent Events, so a refused token (401/403) stops the retries and
//   asks for a new one, and a history gap (Mercure's `Last-Event-ID: earliest` answer
//   header) reloads the snapshot;
// - reconnection with exponential backoff and full jitter that never gives up, woken at
//   once when the browser comes back online or the page becomes visible again;
// - presence (Mercure active subscriptions): who else is subscribed to a topic, with the
//   `payload` of their tokens (a technician's name), kept current by the subscription
//   events;
// - connection-state callbacks for a LIVE / reconnecting / offline indicator.
//
// The Grist dashboard (/widget/) and the DiagPV audit board (/audit/) both use it. The
// high-level entry point is `connect()`; `LiveStream`, `SseParser`, `backoffDelay` and
// the presence helpers are exported for pages that need finer control. docs/client.md
// documents it with a copy-paste example.

/** The path of Mercure's active subscriptions (presence). */
export const SUBSCRIPTIONS_PATH = '/.well-known/mercure/subscriptions';

/**
 * Delay before reconnection attempt `attempt` (0-based): "full jitter", a uniform random
 * delay between 0 and min(cap, base * 2^attempt), so thousands of pages that lost the
 * relay together do not come back in lock-step.
 */
export function backoffDelay(attempt, baseMs, capMs, random = Math.random) {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

/**
 * Incremental Server-Sent Events parser (WHATWG rules): lines end with CRLF, LF or CR;
 * `:` starts a comment; `data` lines are joined with LF; `id` sets the last event ID
 * (kept across events, ignored when it contains NUL); `retry` takes digits only; a blank
 * line dispatches the event (not when it has no data).
 */
export class SseParser {
  constructor() {
    this.buffer = '';
    this.pendingCR = false;
    this.lastEventId = '';
    this.retry = null;
    this.resetEvent();
  }

  resetEvent() {
    this.data = [];
    this.hasData = false;
    this.eventType = '';
  }

  /** Feeds decoded text; returns the events completed by it. */
  feed(text) {
    const events = [];
    let chunk = text;
    if (this.pendingCR && chunk.startsWith('\n')) chunk = chunk.slice(1);
    this.pendingCR = false;
    this.buffer += chunk;
    let start = 0;
    for (let i = 0; i < this.buffer.length; i++) {
      const c = this.buffer[i];
      if (c !== '\n' && c !== '\r') continue;
      const line = this.buffer.slice(start, i);
      if (c === '\r') {
        if (i + 1 < this.buffer.length) {
          if (this.buffer[i + 1] === '\n') i++;
        } else {
          this.pendingCR = true;
        }
      }
      start = i + 1;
      const ev = this.line(line);
      if (ev) events.push(ev);
    }
    this.buffer = this.buffer.slice(start);
    return events;
  }

  line(line) {
    if (line === '') {
      if (!this.hasData) {
        this.resetEvent();
        return null;
      }
      const ev = {
        id: this.lastEventId,
        type: this.eventType || 'message',
        data: this.data.join('\n'),
      };
      this.resetEvent();
      return ev;
    }
    if (line.startsWith(':')) return null;
    const colon = line.indexOf(':');
    let field = line;
    let value = '';
    if (colon >= 0) {
      field = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
    }
    switch (field) {
      case 'data': this.data.push(value); this.hasData = true; break;
      case 'event': this.eventType = value; break;
      case 'id': if (!value.includes('\0')) this.lastEventId = value; break;
      case 'retry': if (/^\d+$/.test(value)) this.retry = Number(value); break;
      default: break;
    }
    return null;
  }
}

// ---------------------------------------------------------------------------------------
// Presence (Mercure active subscriptions).
// ---------------------------------------------------------------------------------------

/**
 * A topic as one path segment of a subscription IRI: every character but RFC 3986's
 * unreserved ones percent-encoded (an RFC 6570 simple expansion, as the hub writes it).
 */
export function encodeSegment(text) {
  return encodeURIComponent(text).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/**
 * The selector of the subscription events of `topic`:
 * `/.well-known/mercure/subscriptions/{topic, URL-encoded}/{subscriber}`.
 */
export function subscriptionsSelector(topic) {
  return `${SUBSCRIPTIONS_PATH}/${encodeSegment(topic)}/{subscriber}`;
}

/** Whether parsed event data is a Mercure `Subscription` object. */
export function isSubscription(data) {
  return !!data && typeof data === 'object' && data.type === 'Subscription'
    && typeof data.id === 'string' && data.id.startsWith(SUBSCRIPTIONS_PATH);
}

/**
 * Who is subscribed to one topic: a map of `Subscription` objects by their `id`, built
 * from the active-subscriptions API and kept current by the subscription events.
 */
export class PresenceList {
  constructor(topic) {
    this.topic = topic;
    this.byId = new Map();
  }

  /** Replaces the list with the API's answer (`subscriptions` of the JSON-LD document). */
  reset(subscriptions) {
    this.byId.clear();
    for (const s of subscriptions || []) if (isSubscription(s) && s.active !== false) this.byId.set(s.id, s);
  }

  /** Applies one subscription event; returns true when the list changed. */
  apply(subscription) {
    if (!isSubscription(subscription)) return false;
    if (subscription.topic !== undefined && subscription.topic !== this.topic) return false;
    if (subscription.active === false) return this.byId.delete(subscription.id);
    this.byId.set(subscription.id, subscription);
    return true;
  }

  /** The active subscriptions. */
  list() {
    return [...this.byId.values()];
  }

  /**
   * One entry per person: the `payload` of their subscriptions grouped by name (a
   * technician with two tabs open is listed once), sorted by name. `name` is the payload's
   * `name` (else `sub`, else "anonyme"); `count` how many subscriptions they have.
   */
  people() {
    const byName = new Map();
    for (const s of this.byId.values()) {
      const p = s.payload && typeof s.payload === 'object' ? s.payload : {};
      const raw = p.name ?? p.sub ?? (typeof s.payload === 'string' ? s.payload : null);
      const name = raw === null || raw === undefined || raw === '' ? 'anonyme' : String(raw);
      const entry = byName.get(name) || { name, payload: s.payload ?? null, count: 0 };
      entry.count += 1;
      byName.set(name, entry);
    }
    return [...byName.values()].sort((a, b) => a.name.localeCompare(b.name, 'fr'));
  }
}

// ---------------------------------------------------------------------------------------
// The live stream.
// ---------------------------------------------------------------------------------------

/**
 * One long-lived subscription to the relay, reconnecting for ever.
 *
 * Why fetch + ReadableStream rather than EventSource: EventSource exposes neither the
 * response status nor its headers, so it cannot tell a 401 (ask for a fresh token, stop
 * retrying with the dead one) from a network error, cannot read Mercure's
 * `Last-Event-ID: earliest` response header (history gap: the view must be rebuilt), and
 * its built-in reconnection has a fixed delay with no jitter. fetch also lets the token
 * travel in the `Authorization` header instead of the URL. Resume uses the `lastEventID`
 * query parameter, which needs no CORS preflight header of its own.
 *
 * Options: relayUrl, token, topics (selectors), initialFrom ('snapshot': `/state` then
 * the stream from its `lastEventID`; 'earliest': the stream's history is the snapshot;
 * 'now': only what comes next), presenceTopic (a topic whose active subscriptions to
 * follow), backoffBaseMs, backoffCapMs, idleTimeoutMs, settleMs, watchNetwork (default
 * true: react to online/offline and page visibility), callbacks.
 *
 * Callbacks: onState(state, detail) with state 'connecting' | 'live' | 'reconnecting' |
 * 'offline'; onSnapshot(records, {lastEventID}); onOpen({fullLoad, gap, from,
 * snapshotted}); onGap(); onEvents(events, {replay}) (business events only, each once);
 * onReplayDone(); onPresence(presenceList); onAuthError(status, message);
 * onHttpError(status).
 */
export class LiveStream {
  constructor(opts) {
    this.relayUrl = opts.relayUrl || '';
    this.token = opts.token || '';
    this.topics = opts.topics || [];
    this.initialFrom = opts.initialFrom || 'now';
    this.backoffBaseMs = opts.backoffBaseMs ?? null;
    this.backoffCapMs = opts.backoffCapMs ?? 30000;
    this.idleTimeoutMs = opts.idleTimeoutMs ?? 45000;
    this.settleMs = opts.settleMs ?? 250;
    this.cb = opts.callbacks || {};
    this.presenceTopic = opts.presenceTopic || null;
    this.presence = this.presenceTopic ? new PresenceList(this.presenceTopic) : null;
    // Whether the relay answered the active-subscriptions API: until it does, the stream
    // does not ask for subscription events (a relay without presence would refuse them).
    this.presenceOn = false;
    this.lastEventId = null;
    // Whether a connection to this relay has opened once: from then on, a reconnection
    // without a known ID (nothing received yet) replays from `earliest` events that are
    // all new to this page, so it is a resume, not a snapshot.
    this.synced = false;
    this.serverRetryMs = null;
    this.attempt = 0;
    this.connections = 0;
    this.state = 'connecting';
    this.authFailed = false;
    this.running = false;
    this.abort = null;
    this.wakeUp = null;
    // IDs of the last events delivered, so an event is never handed over twice (a resume
    // that overlaps what was already received, a snapshot position older than an event).
    this.seen = new Set();
    this.seenOrder = [];
    this.seenMax = opts.seenMax ?? 2000;
    if (opts.watchNetwork !== false && typeof window !== 'undefined') this.watchNetwork();
  }

  /** Follows the browser's online/offline events and the page's visibility. */
  watchNetwork() {
    window.addEventListener('offline', () => {
      this.setState('offline', 'réseau indisponible');
      this.restart();
    });
    window.addEventListener('online', () => {
      this.attempt = 0;
      this.wake();
    });
    // A tablet back from sleep: check the connection at once instead of waiting.
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden && this.state !== 'live') {
        this.attempt = 0;
        this.wake();
      }
    });
  }

  /** Changes relay URL and/or token and reconnects (a fresh token clears an auth failure). */
  configure({ relayUrl, token }) {
    const changedRelay = relayUrl !== undefined && relayUrl !== this.relayUrl;
    const changedToken = token !== undefined && token !== this.token;
    if (!changedRelay && !changedToken) return;
    if (changedRelay) {
      this.relayUrl = relayUrl;
      this.lastEventId = null; // IDs of another relay mean nothing here
      this.synced = false;
    }
    if (changedToken) this.token = token;
    this.authFailed = false;
    this.attempt = 0;
    this.restart();
  }

  /** Drops the current connection (if any) and reconnects at once. */
  restart() {
    if (this.abort) this.abort.abort();
    this.wake();
  }

  wake() {
    if (this.wakeUp) this.wakeUp();
  }

  setState(state, detail = '') {
    this.state = state;
    if (this.cb.onState) this.cb.onState(state, detail);
  }

  /** Sleeps `ms`, or less when woken (new options, back online). */
  sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wakeUp = () => { this.wakeUp = null; done(); };
    });
  }

  base() {
    return this.relayUrl.replace(/\/+$/, '');
  }

  selectors() {
    const out = [...this.topics];
    if (this.presence && this.presenceOn) out.push(subscriptionsSelector(this.presenceTopic));
    return out;
  }

  buildUrl() {
    const url = new URL(`${this.base()}/.well-known/mercure`, window.location.href);
    for (const t of this.selectors()) url.searchParams.append('topic', t);
    const from = this.lastEventId ?? (this.initialFrom === 'earliest' ? 'earliest' : null);
    if (from) url.searchParams.set('lastEventID', from);
    return { url: url.toString(), from };
  }

  async authFailure(resp) {
    let message = '';
    try { message = (await resp.json()).message || ''; } catch { /* not JSON */ }
    this.authFailed = true;
    this.setState('offline', 'jeton refusé');
    if (this.cb.onAuthError) this.cb.onAuthError(resp.status, message);
    return 'auth';
  }

  async getJson(path, params, signal) {
    const url = new URL(`${this.base()}${path}`, window.location.href);
    for (const [k, v] of params) url.searchParams.append(k, v);
    return fetch(url.toString(), {
      headers: { Accept: 'application/json, application/ld+json', Authorization: `Bearer ${this.token}` },
      cache: 'no-store',
      signal,
    });
  }

  /** GET /state for the topics: the snapshot object, or 'auth' / 'closed' on failure. */
  async fetchSnapshot(signal) {
    const resp = await this.getJson('/state', this.topics.map((t) => ['topic', t]), signal);
    if (resp.status === 401 || resp.status === 403) return this.authFailure(resp);
    if (!resp.ok) {
      if (this.cb.onHttpError) this.cb.onHttpError(resp.status);
      return 'closed';
    }
    return resp.json();
  }

  /**
   * The active subscriptions of the presence topic (Mercure's subscriptions API): their
   * document, or null when the relay does not offer it to this token (presence is then
   * left out; the rest works).
   */
  async fetchPresence(signal) {
    const path = `${SUBSCRIPTIONS_PATH}/${encodeSegment(this.presenceTopic)}`;
    const resp = await this.getJson(path, [], signal);
    if (!resp.ok) return null;
    try {
      const doc = await resp.json();
      return doc && Array.isArray(doc.subscriptions) ? doc : null;
    } catch {
      return null;
    }
  }

  /** Runs for ever (until `stop`). */
  async run() {
    this.running = true;
    while (this.running) {
      if (!this.relayUrl) {
        this.setState('offline', 'URL du relais à configurer');
        await this.sleep(3600_000);
        continue;
      }
      if (!this.token || this.authFailed) {
        this.setState('offline', this.authFailed ? 'jeton refusé' : 'jeton requis');
        await this.sleep(3600_000);
        continue;
      }
      if (navigator.onLine === false) {
        this.setState('offline', 'réseau indisponible');
        await this.sleep(3600_000);
        continue;
      }
      const outcome = await this.connectOnce();
      if (!this.running) break;
      if (outcome === 'auth' || outcome === 'restart') continue;
      const base = this.backoffBaseMs ?? this.serverRetryMs ?? 1000;
      const delay = backoffDelay(this.attempt, base, this.backoffCapMs);
      this.attempt += 1;
      const offline = navigator.onLine === false;
      this.setState(offline ? 'offline' : 'reconnecting',
        offline ? 'réseau indisponible' : `nouvel essai dans ${Math.max(1, Math.round(delay / 1000))} s`);
      await this.sleep(delay);
    }
  }

  stop() {
    this.running = false;
    this.restart();
  }

  /** Forgets which events were delivered (the view is rebuilt from the history). */
  forget() {
    this.seen.clear();
    this.seenOrder = [];
  }

  /** Remembers an event ID; false when it was already delivered. */
  firstTime(id) {
    if (!id) return true;
    if (this.seen.has(id)) return false;
    this.seen.add(id);
    this.seenOrder.push(id);
    if (this.seenOrder.length > this.seenMax) this.seen.delete(this.seenOrder.shift());
    return true;
  }

  /** Splits parsed SSE events into presence updates and business events (each once). */
  dispatch(events, replay) {
    const business = [];
    let presenceChanged = false;
    for (const ev of events) {
      if (!this.firstTime(ev.id)) continue;
      if (this.presence && ev.data.includes('"Subscription"')) {
        let data = null;
        try { data = JSON.parse(ev.data); } catch { /* not JSON */ }
        if (isSubscription(data)) {
          presenceChanged = this.presence.apply(data) || presenceChanged;
          continue;
        }
      }
      // The resume position is the last business event: subscription events may be kept
      // apart (and for less long, e.g. not across a relais restart), so resuming from one
      // could be answered as a history gap although no record change was lost.
      if (ev.id) this.lastEventId = ev.id;
      business.push(ev);
    }
    if (business.length && this.cb.onEvents) this.cb.onEvents(business, { replay });
    if (presenceChanged && this.cb.onPresence) this.cb.onPresence(this.presence);
  }

  /**
   * One connection: 'closed' (network error or stream end: back off and retry), 'auth'
   * (401/403: wait for a new token) or 'restart' (aborted on purpose: reconnect now).
   */
  async connectOnce() {
    const ctrl = new AbortController();
    this.abort = ctrl;
    let purposeful = false;
    const onPurpose = () => { purposeful = true; };
    ctrl.signal.addEventListener('abort', onPurpose);
    if (this.state !== 'reconnecting') this.setState('connecting', '');
    this.connections += 1;
    let idleTimer = null;
    let settleTimer = null;
    const idle = () => {
      clearTimeout(idleTimer);
      idleTimer = setTimeout(() => {
        ctrl.signal.removeEventListener('abort', onPurpose);
        ctrl.abort(); // silent connection (sleep, dead proxy): reconnect
      }, this.idleTimeoutMs);
    };
    try {
      idle();
      // Without a position in the stream, load the current state first and stream from
      // the position it was taken at (no gap, no duplicate).
      let snapshotted = false;
      if (this.initialFrom === 'snapshot' && this.lastEventId === null) {
        const snap = await this.fetchSnapshot(ctrl.signal);
        if (typeof snap === 'string') return snap;
        this.lastEventId = snap.lastEventID || 'earliest';
        if (this.cb.onSnapshot) this.cb.onSnapshot(snap.records || [], { lastEventID: snap.lastEventID });
        snapshotted = true;
      }
      // The presence list is read after the state, on every connection: the stream then
      // replays the subscription events after the position it resumes from, in order, on
      // top of a list that already holds them, so the list converges; and subscriptions
      // that ended while this page was away without their end being published (a relais
      // restart) leave it.
      if (this.presence) {
        const doc = await this.fetchPresence(ctrl.signal);
        this.presenceOn = doc !== null;
        if (doc) {
          this.presence.reset(doc.subscriptions);
          if (this.cb.onPresence) this.cb.onPresence(this.presence);
        }
      }
      const { url, from } = this.buildUrl();
      const resp = await fetch(url, {
        headers: { Accept: 'text/event-stream', Authorization: `Bearer ${this.token}` },
        cache: 'no-store',
        signal: ctrl.signal,
      });
      if (resp.status === 401 || resp.status === 403) return this.authFailure(resp);
      if (!resp.ok || !resp.body) {
        if (this.cb.onHttpError) this.cb.onHttpError(resp.status);
        return 'closed';
      }
      const gap = from !== null && from !== 'earliest' && resp.headers.get('Last-Event-ID') === 'earliest';
      if (gap && this.initialFrom === 'snapshot' && !snapshotted) {
        // The position is no longer retained: load the state again. (Right after a
        // snapshot, the stream goes on instead: the state is fresh, and the replay from
        // the oldest event only re-applies what it holds; reloading would loop.)
        this.lastEventId = null;
        if (this.cb.onGap) this.cb.onGap();
        ctrl.abort();
        return 'restart';
      }
      const fullLoad = snapshotted || (from === 'earliest' && !this.synced) || gap;
      // A view rebuilt from the stream's history needs those events again.
      if (fullLoad && !snapshotted) this.forget();
      this.synced = true;
      if (gap) this.lastEventId = null;
      if (this.cb.onOpen) this.cb.onOpen({ fullLoad, gap, from, snapshotted });

      const parser = new SseParser();
      const decoder = new TextDecoder();
      const reader = resp.body.getReader();
      const openedAt = Date.now();
      let replay = true;
      const endReplay = () => {
        if (!replay) return;
        replay = false;
        if (this.cb.onReplayDone) this.cb.onReplayDone();
        this.setState('live', '');
      };
      // The relay writes the whole replay at once, before any live event: the replay phase
      // ends when the stream has been quiet for `settleMs`.
      const settle = () => {
        clearTimeout(settleTimer);
        if (replay) settleTimer = setTimeout(endReplay, this.settleMs);
      };
      settle();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        idle();
        const events = parser.feed(decoder.decode(value, { stream: true }));
        if (parser.retry !== null) this.serverRetryMs = parser.retry;
        if (events.length) this.dispatch(events, replay);
        settle();
        // A connection that delivered for a while is healthy: the next drop starts the
        // backoff from the beginning again.
        if (!replay && (events.length || Date.now() - openedAt > 10000)) this.attempt = 0;
      }
      return 'closed';
    } catch (err) {
      return purposeful && this.running ? 'restart' : 'closed';
    } finally {
      clearTimeout(idleTimer);
      clearTimeout(settleTimer);
      if (this.abort === ctrl) this.abort = null;
    }
  }
}

/**
 * The simple way in: current state, then every change, for ever.
 *
 * ```js
 * const live = connect({
 *   token, topics: ['audits/AUDIT'], presence: 'audits/AUDIT',
 *   onSnapshot(records) {},            // [{id, type, topics, data}] — the current state
 *   onEvent(event) {},                 // {id, type, data (parsed JSON), replay}
 *   onPresence(people) {},             // [{name, payload, count}]
 *   onState(state, detail) {},         // connecting | live | reconnecting | offline
 * });
 * live.close();
 * ```
 *
 * Options: relay (default: this page's origin), token, topics, presence (a topic whose
 * active subscriptions to follow), from ('snapshot' (default) | 'earliest' | 'now'),
 * onSnapshot, onEvent, onPresence, onState, onGap, onAuthError(status, message), and
 * the tuning of `LiveStream` (backoffBaseMs, backoffCapMs, idleTimeoutMs, settleMs).
 * Returns `{stream, close(), setToken(token)}`.
 */
export function connect(opts) {
  const o = opts || {};
  const stream = new LiveStream({
    relayUrl: o.relay || window.location.origin,
    token: o.token,
    topics: o.topics,
    initialFrom: o.from || 'snapshot',
    presenceTopic: o.presence || null,
    backoffBaseMs: o.backoffBaseMs,
    backoffCapMs: o.backoffCapMs,
    idleTimeoutMs: o.idleTimeoutMs,
    settleMs: o.settleMs,
    callbacks: {
      onState: o.onState,
      onSnapshot: o.onSnapshot,
      onGap: o.onGap,
      onAuthError: o.onAuthError,
      onReplayDone: o.onReplayDone,
      onPresence: o.onPresence ? (p) => o.onPresence(p.people(), p) : undefined,
      onEvents: (events, { replay }) => {
        if (!o.onEvent) return;
        for (const ev of events) {
          let data = ev.data;
          try { data = JSON.parse(ev.data); } catch { /* left as text */ }
          o.onEvent({ id: ev.id, type: ev.type, data, replay });
        }
      },
    },
  });
  stream.run();
  return {
    stream,
    close: () => stream.stop(),
    setToken: (token) => stream.configure({ token }),
  };
}
