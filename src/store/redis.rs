//! The Redis store: several relais instances share one ordered stream of events and the
//! record states.
//!
//! - Committing runs one Lua script: it checks the fences of the record states the
//!   batch was planned from and, for a Mercure publish, whether the event ID is already
//!   used (same content: a retry, nothing done; other content: a conflict); then it
//!   appends the request's events to a Redis stream as one entry, encoded together as
//!   the disk store encodes them ([`super::rows`]; `XADD ... MAXLEN ~ history_size`),
//!   and writes the record states (each with its last event, indexed in one set for
//!   snapshots). A request is acknowledged only once Redis has applied the script.
//! - An instance plans its deliveries one at a time against the record states it
//!   knows, but does not wait for Redis between them: several scripts are in flight on
//!   its connection, each fenced on the states the one before it wrote.
//! - Every instance runs a reader that loads the stream's tail into its hub at start
//!   (entries newest first until they hold `history_size` events, so a fresh instance
//!   can resume anyone's `Last-Event-ID`), then follows the stream with `XREAD BLOCK`,
//!   committing each reply's events to its hub together. Stream order is the same for
//!   every instance, so histories agree.
//! - A snapshot is one script too: the stream's last event and the indexed record states
//!   are read at the same instant, so its `lastEventID` fits the states on any instance.
//! - Outages: committing answers `StoreError::Unavailable` (HTTP 503) while Redis is
//!   down; the reader reconnects with exponential backoff and continues after the last
//!   entry it read, so subscribers get everything acknowledged meanwhile once Redis is
//!   back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::AsyncConnectionConfig;
use redis::{AsyncCommands, Value};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::disk::DiskEvent;
use super::{
    Backend, Batch, Ingested, Known, PlanFn, Published, Snapshot, SnapshotRecord, StoreError,
};
use crate::config::Config;
use crate::hub::{EventDraft, Hub, Subscription};
use crate::ingest::record::StoredRecord;

/// How long a publisher's event ID stays reserved against reuse.
const PUBLISHER_ID_TTL_SECS: u64 = 24 * 3600;
/// Longest pause between two reconnection attempts of the reader.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long `XREAD` blocks before looping (and noticing shutdown).
const READ_BLOCK_MS: usize = 2000;
/// Longest wait for Redis to take a commit before answering 503. A commit that Redis
/// applies after this is delivered anyway: the sender's retry is then a duplicate, which
/// record state absorbs for webhooks and idempotent publishing for Mercure publishes.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a resume waits for this instance to catch up with the stream's tip.
const CATCH_UP_WAIT: Duration = Duration::from_secs(2);
/// How many times a delivery replans after another instance changed its records.
const MAX_CONFLICT_RETRIES: usize = 8;

const COMMIT_SCRIPT: &str = r#"
-- KEYS[1] stream, KEYS[2] record index. ARGV[1] maxlen, ARGV[2] publisher-id key prefix,
-- ARGV[3] publisher-id ttl, ARGV[4] record-state ttl, ARGV[5] fences, ARGV[6] writes,
-- ARGV[7] events; then the fences as (key, expected value) pairs ('' = absent), the
-- writes as (key, value) pairs, the events as (id, content digest ('' = relais-generated,
-- not checked)) pairs, and last the events themselves, encoded together by relais: they
-- are one stream entry ('i' the last event's ID, 'n' the number of events, 'b' the
-- batch). Everything or nothing happens.
local nf, nw, ne = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local writes_at = 8 + 2 * nf
local events_at = writes_at + 2 * nw
for f = 0, nf - 1 do
  local key = ARGV[8 + 2 * f]
  if (redis.call('GET', key) or '') ~= ARGV[9 + 2 * f] then
    return redis.error_reply('CONFLICT ' .. key)
  end
end
for e = 0, ne - 1 do
  local b = events_at + e * 2
  if ARGV[b + 1] ~= '' then
    local known = redis.call('GET', ARGV[2] .. ARGV[b])
    if known == ARGV[b + 1] then
      return redis.error_reply('REPEATED ' .. ARGV[b])
    elseif known then
      return redis.error_reply('DUPLICATE ' .. ARGV[b])
    end
  end
end
if ne > 0 then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
    'i', ARGV[events_at + (ne - 1) * 2], 'n', ne, 'b', ARGV[events_at + ne * 2])
end
for e = 0, ne - 1 do
  local b = events_at + e * 2
  if ARGV[b + 1] ~= '' then
    redis.call('SET', ARGV[2] .. ARGV[b], ARGV[b + 1], 'EX', ARGV[3])
  end
end
local indexed = {}
for w = 0, nw - 1 do
  local key = ARGV[writes_at + 2 * w]
  redis.call('SET', key, ARGV[writes_at + 2 * w + 1], 'EX', ARGV[4])
  indexed[#indexed + 1] = key
  if #indexed == 1000 then
    redis.call('SADD', KEYS[2], unpack(indexed))
    indexed = {}
  end
end
if #indexed > 0 then
  redis.call('SADD', KEYS[2], unpack(indexed))
end
return ne
"#;

const SNAPSHOT_SCRIPT: &str = r#"
-- KEYS[1] stream, KEYS[2] record index. Returns the last event's ID ('' when the stream
-- is empty), then the record keys and their values; drops expired keys from the index.
local out = {''}
local tip = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if tip[1] then
  local fields = tip[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'i' then out[1] = fields[i + 1] end
  end
end
local keys = redis.call('SMEMBERS', KEYS[2])
for start = 1, #keys, 1000 do
  local chunk = {}
  for i = start, math.min(start + 999, #keys) do chunk[#chunk + 1] = keys[i] end
  local values = redis.call('MGET', unpack(chunk))
  for i = 1, #chunk do
    if values[i] then
      out[#out + 1] = values[i]
    else
      redis.call('SREM', KEYS[2], chunk[i])
    end
  end
end
return out
"#;

/// The outcome of a fenced commit.
#[derive(Debug, PartialEq, Eq)]
enum Fenced {
    /// The events are on the stream and the writes are done.
    Published,
    /// A fenced key changed meanwhile: nothing was done; load again and retry.
    Conflict,
    /// A publisher's ID is already used by an identical update: nothing was done.
    Repeated,
}

/// A record state as kept in Redis: the state and the record's last event.
///
/// Stored as [`RecordHead`] in JSON, a newline, then the last event's data as it is:
/// the data (itself JSON, for webhook sources) is not escaped into a JSON string, which
/// cost each delivery as much as encoding the event in the first place. Values written
/// by earlier versions are one JSON object (the state flattened, with `last`), and are
/// still read.
#[derive(Debug, Deserialize)]
struct RedisRecord {
    #[serde(flatten)]
    state: StoredRecord,
    #[serde(default)]
    last: Option<LastEvent>,
}

/// The part of a stored record before the newline.
#[derive(Serialize, Deserialize)]
struct RecordHead<'a> {
    state: std::borrow::Cow<'a, StoredRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last: Option<LastMeta>,
}

/// A record's last event but its data.
#[derive(Serialize, Deserialize)]
struct LastMeta {
    id: String,
    topics: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event_type: Option<String>,
    #[serde(default)]
    private: bool,
}

impl RedisRecord {
    /// The stored value of a record's state and last event.
    fn encode(
        state: &StoredRecord,
        last: Option<&EventDraft>,
    ) -> Result<String, serde_json::Error> {
        let head = RecordHead {
            state: std::borrow::Cow::Borrowed(state),
            last: last.map(|d| LastMeta {
                id: d.id.clone(),
                topics: d.topics.clone(),
                event_type: d.event_type.clone(),
                private: d.private,
            }),
        };
        let mut text = serde_json::to_string(&head)?;
        text.push('\n');
        if let Some(d) = last {
            text.push_str(&d.data);
        }
        Ok(text)
    }

    /// Reads a stored value back (either form).
    fn decode(text: &str) -> Result<Self, serde_json::Error> {
        let Some((head, data)) = text.split_once('\n') else {
            return serde_json::from_str(text);
        };
        let head: RecordHead<'_> = serde_json::from_str(head)?;
        Ok(RedisRecord {
            state: head.state.into_owned(),
            last: head.last.map(|m| LastEvent {
                id: m.id,
                topics: m.topics,
                event_type: m.event_type,
                data: data.to_string(),
                private: m.private,
            }),
        })
    }
}

/// A record's last event, for snapshots.
#[derive(Debug, Deserialize)]
struct LastEvent {
    id: String,
    topics: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event_type: Option<String>,
    data: String,
    #[serde(default)]
    private: bool,
}

/// The digest identifying a publisher's update (topics, data, type, privacy).
fn content_digest(draft: &EventDraft) -> String {
    let mut hash = Sha256::new();
    for topic in &draft.topics {
        hash.update((topic.len() as u64).to_le_bytes());
        hash.update(topic.as_bytes());
    }
    hash.update([0xff]);
    let event_type = draft.event_type.as_deref().unwrap_or("");
    hash.update((event_type.len() as u64).to_le_bytes());
    hash.update(event_type.as_bytes());
    hash.update([draft.private as u8]);
    hash.update(draft.data.as_bytes());
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Names of the Redis keys relais uses, under one prefix.
#[derive(Debug, Clone)]
pub struct RedisKeys {
    /// The prefix of every key.
    prefix: String,
    /// The event stream.
    pub stream: String,
    /// Prefix of the keys reserving publisher-chosen IDs.
    pub ids: String,
    /// Prefix of record-state keys (ingestion).
    pub state: String,
    /// Set of every record-state key (snapshots).
    pub records: String,
}

impl RedisKeys {
    /// The prefix of every key (for other users' keys, e.g. alerts).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Keys under `prefix` (default `relais:`).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            stream: format!("{prefix}events"),
            ids: format!("{prefix}id:"),
            state: format!("{prefix}state:"),
            records: format!("{prefix}records"),
        }
    }
}

/// A position in the Redis stream (`ms-seq`), comparable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct StreamPos(u64, u64);

impl StreamPos {
    /// Parses `1700000000000-3`.
    pub fn parse(text: &str) -> Option<Self> {
        let (ms, seq) = text.split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl std::fmt::Display for StreamPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// The Redis backend (cheap to clone).
#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    conn: ConnectionManager,
    keys: RedisKeys,
    maxlen: usize,
    state_ttl: Duration,
    script: Arc<redis::Script>,
    snapshot_script: Arc<redis::Script>,
    read_pos: watch::Receiver<StreamPos>,
    reader_healthy: Arc<AtomicBool>,
    /// The record states this instance last read or wrote, by Redis key, with their
    /// stored text (the fence). Held for a whole delivery: this instance's deliveries
    /// run one after the other, so they never fence each other out, and a delivery of
    /// records this instance knows needs no read before its commit. Another instance's
    /// write fails the fence; the delivery then reads the records again and replans.
    known: Arc<tokio::sync::Mutex<KnownStates>>,
}

/// Record states known to this instance, least recently used out first (bounded by
/// `hub.record_state_capacity`).
type KnownStates = lru::LruCache<String, (String, StoredRecord)>;

/// Why Redis could not be reached at start-up.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach Redis at {url}: {reason}")]
pub struct RedisConnectError {
    /// The URL, with any password masked.
    pub url: String,
    /// What went wrong.
    pub reason: String,
}

/// The URL with credentials masked, for messages.
pub fn masked_url(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://********{}", &url[at..]),
        _ => url.to_string(),
    }
}

impl RedisStore {
    /// Connects (retrying for a few seconds), loads the stream's tail into `hub` and
    /// starts the reader that follows the stream until `shutdown`.
    pub async fn connect(
        url: &str,
        config: &Config,
        hub: Arc<Hub>,
        shutdown: CancellationToken,
    ) -> Result<Self, RedisConnectError> {
        let prefix = config.redis.key_prefix.as_deref().unwrap_or("relais:");
        let history_size = config.hub.history_size;
        let state_ttl = config.redis.state_ttl;
        let known_capacity = config.hub.record_state_capacity;
        let err = |reason: String| RedisConnectError {
            url: masked_url(url),
            reason,
        };
        let client = redis::Client::open(url).map_err(|e| err(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(5))
            .set_number_of_retries(1)
            .set_max_delay(1000);
        let mut last_error = String::new();
        let mut conn = None;
        for attempt in 0..6u32 {
            match client
                .get_connection_manager_with_config(config.clone())
                .await
            {
                Ok(c) => {
                    conn = Some(c);
                    break;
                }
                Err(e) => {
                    last_error = e.to_string();
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        let mut conn = conn.ok_or_else(|| err(last_error))?;
        let keys = RedisKeys::new(prefix);
        let start = load_tail(&mut conn, &keys, history_size, &hub)
            .await
            .map_err(|e| err(e.to_string()))?;
        let (pos_tx, read_pos) = watch::channel(start);
        let reader_healthy = Arc::new(AtomicBool::new(true));
        let reader = Reader {
            client: client.clone(),
            stream: keys.stream.clone(),
            hub,
            position: pos_tx,
            healthy: reader_healthy.clone(),
        };
        tokio::spawn(reader.run(shutdown));
        Ok(Self {
            client,
            conn,
            keys,
            maxlen: history_size,
            state_ttl,
            script: Arc::new(redis::Script::new(COMMIT_SCRIPT)),
            snapshot_script: Arc::new(redis::Script::new(SNAPSHOT_SCRIPT)),
            read_pos,
            reader_healthy,
            known: Arc::new(tokio::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(known_capacity).unwrap_or(std::num::NonZeroUsize::MIN),
            ))),
        })
    }

    /// The Redis key names.
    pub fn keys(&self) -> &RedisKeys {
        &self.keys
    }

    /// Atomically: if every `fences` key still holds its expected value (`None`: absent)
    /// and no publisher ID is reused, appends the events and writes `writes` (kept
    /// `redis.state_ttl`); otherwise changes nothing. `checked`: the events carry a
    /// publisher's ID, checked against reuse.
    async fn commit(
        &self,
        drafts: &[EventDraft],
        checked: bool,
        fences: &[(String, Option<String>)],
        writes: &[(String, String)],
    ) -> Result<Fenced, StoreError> {
        if !self.reader_healthy.load(Ordering::Relaxed) {
            // Known outage: answer at once so the sender retries later.
            return Err(StoreError::Unavailable("Redis is unreachable".into()));
        }
        let mut invocation = self.script.key(&self.keys.stream);
        invocation
            .key(&self.keys.records)
            .arg(self.maxlen)
            .arg(&self.keys.ids)
            .arg(PUBLISHER_ID_TTL_SECS)
            .arg(self.state_ttl.as_secs().max(1))
            .arg(fences.len())
            .arg(writes.len())
            .arg(drafts.len());
        for (key, expected) in fences {
            invocation.arg(key).arg(expected.as_deref().unwrap_or(""));
        }
        for (key, value) in writes {
            invocation.arg(key).arg(value);
        }
        for d in drafts {
            invocation.arg(&d.id).arg(if checked {
                content_digest(d)
            } else {
                String::new()
            });
        }
        if !drafts.is_empty() {
            invocation.arg(super::rows::encode(drafts));
        }
        let mut conn = self.conn.clone();
        let result =
            tokio::time::timeout(PUBLISH_TIMEOUT, invocation.invoke_async::<i64>(&mut conn))
                .await
                .unwrap_or_else(|_| {
                    Err(redis::RedisError::from((
                        redis::ErrorKind::IoError,
                        "Redis did not answer in time",
                    )))
                });
        match result {
            Ok(_) => Ok(Fenced::Published),
            Err(e) if e.code() == Some("CONFLICT") => Ok(Fenced::Conflict),
            Err(e) if e.code() == Some("REPEATED") => Ok(Fenced::Repeated),
            Err(e) if e.code() == Some("DUPLICATE") => Err(StoreError::Conflict(
                e.detail().unwrap_or_default().to_string(),
            )),
            Err(e) => Err(StoreError::Unavailable(e.to_string())),
        }
    }

    /// Reads several string keys at once (record states).
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<String>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if !self.reader_healthy.load(Ordering::Relaxed) {
            return Err(StoreError::Unavailable("Redis is unreachable".into()));
        }
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("MGET");
        for k in keys {
            cmd.arg(k);
        }
        tokio::time::timeout(
            PUBLISH_TIMEOUT,
            cmd.query_async::<Vec<Option<String>>>(&mut conn),
        )
        .await
        .map_err(|_| StoreError::Unavailable("Redis did not answer in time".into()))?
        .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    fn state_key(&self, source: &str, record: &str) -> String {
        format!("{}{source}:{record}", self.keys.state)
    }

    /// Reads the states of `keys` of `source`, with the raw values as a fence.
    async fn load(
        &self,
        source: &str,
        keys: &[String],
    ) -> Result<(Known, Vec<(String, Option<String>)>), StoreError> {
        let redis_keys: Vec<String> = keys.iter().map(|k| self.state_key(source, k)).collect();
        let raw = self.get_many(&redis_keys).await?;
        let mut known = HashMap::new();
        let mut fence = Vec::with_capacity(keys.len());
        for ((key, redis_key), value) in keys.iter().zip(redis_keys).zip(raw) {
            if let Some(text) = &value {
                match RedisRecord::decode(text) {
                    Ok(record) => {
                        known.insert(key.clone(), record.state);
                    }
                    Err(e) => {
                        tracing::warn!(%source, record = %key, "ignoring unreadable record state: {e}")
                    }
                }
            }
            fence.push((redis_key, value));
        }
        Ok((known, fence))
    }

    /// Plans a delivery against the record states this instance knows and commits it.
    ///
    /// The cache's lock is held while the delivery plans and until its script is queued
    /// on the connection, not while Redis answers: the next delivery plans against the
    /// states this one wrote (put in the cache before the answer) and its script follows
    /// on the same connection, so several deliveries are in flight at once. Redis runs
    /// the scripts in that order, and each checks the fences of the states it planned
    /// from: if an earlier one failed, or another instance changed a record meanwhile,
    /// the later ones find their fences changed and plan again from Redis.
    async fn ingest_batch(
        &self,
        source: &str,
        keys: &[String],
        plan: &PlanFn<'_>,
    ) -> Result<Ingested, StoreError> {
        let redis_keys: Vec<String> = keys.iter().map(|k| self.state_key(source, k)).collect();
        let mut attempt = 0;
        loop {
            let mut cache = self.known.lock().await;
            // Read only the records this instance does not know.
            let missing: Vec<String> = redis_keys
                .iter()
                .filter(|k| !cache.contains(*k))
                .cloned()
                .collect();
            let raw = self.get_many(&missing).await?;
            for (redis_key, value) in missing.into_iter().zip(raw) {
                if let Some(text) = value {
                    match RedisRecord::decode(&text) {
                        Ok(record) => {
                            cache.put(redis_key, (text, record.state));
                        }
                        Err(e) => {
                            tracing::warn!(%source, record = %redis_key, "ignoring unreadable record state: {e}")
                        }
                    }
                }
            }
            let mut known = HashMap::new();
            let mut fence = Vec::with_capacity(keys.len());
            for (key, redis_key) in keys.iter().zip(&redis_keys) {
                let text = cache.get(redis_key).map(|(text, state)| {
                    known.insert(key.clone(), state.clone());
                    text.clone()
                });
                fence.push((redis_key.clone(), text));
            }
            let batch = plan(&known);
            let outcome = batch.outcome();
            if batch.is_empty() {
                return Ok(outcome);
            }
            let Batch {
                events, records, ..
            } = batch;
            let mut writes = Vec::with_capacity(records.len());
            for w in records {
                let last = w.event.and_then(|i| events.get(i));
                if let Ok(text) = RedisRecord::encode(&w.state, last) {
                    let redis_key = self.state_key(source, &w.key);
                    cache.put(redis_key.clone(), (text.clone(), w.state));
                    writes.push((redis_key, text));
                }
            }
            let mut commit = std::pin::pin!(self.commit(&events, false, &fence, &writes));
            // Polled once under the lock: the script joins the connection's queue in the
            // order the deliveries planned.
            let first = futures::poll!(commit.as_mut());
            drop(cache);
            let committed = match first {
                std::task::Poll::Ready(result) => result,
                std::task::Poll::Pending => commit.await,
            };
            match committed {
                Ok(Fenced::Published | Fenced::Repeated) => return Ok(outcome),
                Ok(Fenced::Conflict) if attempt < MAX_CONFLICT_RETRIES => {
                    // Another instance, or a failed delivery this one planned after,
                    // changed one of these records meanwhile.
                    attempt += 1;
                    self.forget_known(&redis_keys).await;
                    metrics::counter!("relais_ingest_conflicts_total", "source" => source.to_string())
                        .increment(1);
                    // A short random pause, so that racing deliveries do not collide again.
                    let pause = rand::random_range(0..=(attempt as u64 * 2));
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Ok(Fenced::Conflict) => {
                    self.forget_known(&redis_keys).await;
                    return Err(StoreError::Unavailable(
                        "records kept changing under concurrent deliveries; retry".into(),
                    ));
                }
                Err(e) => {
                    // The commit may have been applied or not: read again next time.
                    self.forget_known(&redis_keys).await;
                    return Err(e);
                }
            }
        }
    }

    /// Drops records from the cache: the next delivery reads them from Redis.
    async fn forget_known(&self, redis_keys: &[String]) {
        let mut cache = self.known.lock().await;
        for redis_key in redis_keys {
            cache.pop(redis_key);
        }
    }

    async fn take_snapshot(&self, subscription: &Subscription) -> Result<Snapshot, StoreError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.snapshot_script.key(&self.keys.stream);
        invocation.key(&self.keys.records);
        let reply: Vec<String> = tokio::time::timeout(
            PUBLISH_TIMEOUT,
            invocation.invoke_async::<Vec<String>>(&mut conn),
        )
        .await
        .map_err(|_| StoreError::Unavailable("Redis did not answer in time".into()))?
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut reply = reply.into_iter();
        let last_event_id = reply
            .next()
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| "earliest".into());
        let records = reply
            .filter_map(|text| RedisRecord::decode(&text).ok()?.last)
            .filter(|last| subscription.permits(&last.topics, last.private))
            .map(|last| {
                Arc::new(SnapshotRecord::new(
                    last.id,
                    last.event_type,
                    last.topics,
                    last.data,
                    last.private,
                ))
            })
            .collect();
        Ok(Snapshot {
            last_event_id,
            records,
        })
    }

    /// Whether Redis answers and the reader is following the stream.
    pub async fn ready(&self) -> bool {
        let mut conn = self.conn.clone();
        let ping = tokio::time::timeout(Duration::from_secs(1), async {
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await;
        matches!(ping, Ok(Ok(_))) && self.reader_healthy.load(Ordering::Relaxed)
    }

    /// Waits (briefly) until this instance has read everything in the stream, so that a
    /// client resuming here with an ID it got from another instance finds it.
    pub async fn catch_up(&self) {
        let mut conn = self.conn.clone();
        let tip: Result<StreamRangeReply, _> = tokio::time::timeout(
            CATCH_UP_WAIT,
            conn.xrevrange_count(&self.keys.stream, "+", "-", 1),
        )
        .await
        .unwrap_or_else(|_| {
            Err(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "timeout",
            )))
        });
        let Some(tip) = tip
            .ok()
            .and_then(|r| r.ids.first().and_then(|e| StreamPos::parse(&e.id)))
        else {
            return;
        };
        let mut pos = self.read_pos.clone();
        let _ = tokio::time::timeout(CATCH_UP_WAIT, pos.wait_for(|p| *p >= tip)).await;
    }
}

impl Backend for RedisStore {
    fn publish(&self, draft: EventDraft) -> BoxFuture<'_, Result<Published, StoreError>> {
        async move {
            let drafts = [draft];
            match self.commit(&drafts, true, &[], &[]).await? {
                Fenced::Repeated => Ok(Published::Repeated(drafts[0].id.clone())),
                _ => Ok(Published::New(drafts[0].id.clone())),
            }
        }
        .boxed()
    }

    fn ingest<'a>(
        &'a self,
        source: &'a str,
        keys: &'a [String],
        plan: &'a PlanFn<'a>,
    ) -> BoxFuture<'a, Result<Ingested, StoreError>> {
        self.ingest_batch(source, keys, plan).boxed()
    }

    fn load_records<'a>(
        &'a self,
        source: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Known, StoreError>> {
        async move { Ok(self.load(source, keys).await?.0) }.boxed()
    }

    fn snapshot<'a>(
        &'a self,
        subscription: &'a Subscription,
    ) -> BoxFuture<'a, Result<Snapshot, StoreError>> {
        self.take_snapshot(subscription).boxed()
    }

    fn ready(&self) -> BoxFuture<'_, bool> {
        RedisStore::ready(self).boxed()
    }

    fn catch_up(&self) -> BoxFuture<'_, ()> {
        RedisStore::catch_up(self).boxed()
    }

    fn describe(&self) -> String {
        format!(
            "Redis (stream of the last {} events, record states kept {} after their last change), shared by all instances",
            self.maxlen,
            humantime::format_duration(self.state_ttl)
        )
    }

    fn alert_queue(&self, capacity: usize) -> BoxFuture<'_, Result<super::AlertQueue, StoreError>> {
        use crate::alerts::sender::{QueueReader, QueueWriter};
        async move {
            let (w, r) = crate::alerts::redis_queue::redis_queue(
                self.client.clone(),
                self.conn.clone(),
                self.keys.prefix(),
                capacity,
            )
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            Ok((
                QueueWriter::Redis(Box::new(w)),
                QueueReader::Redis(Box::new(r)),
            ))
        }
        .boxed()
    }
}

/// How many stream entries a start reads per request while loading the tail.
const TAIL_PAGE: usize = 100;

/// Loads the newest `history_size` events into the hub, oldest first; returns the
/// position to follow from. An entry holds a whole request's events: the entries are
/// read newest first, a page at a time, until they hold `history_size` events.
async fn load_tail(
    conn: &mut ConnectionManager,
    keys: &RedisKeys,
    history_size: usize,
    hub: &Hub,
) -> redis::RedisResult<StreamPos> {
    let mut pages: Vec<StreamId> = Vec::new();
    let mut events = 0;
    let mut before = "+".to_string();
    while events < history_size {
        let reply: StreamRangeReply = conn
            .xrevrange_count(&keys.stream, &before, "-", TAIL_PAGE)
            .await?;
        let Some(oldest) = reply.ids.last() else {
            break;
        };
        // The next page ends just before the oldest entry of this one.
        before = format!("({}", oldest.id);
        let full = reply.ids.len() == TAIL_PAGE;
        for entry in reply.ids {
            events += entry_events(&entry);
            pages.push(entry);
        }
        if !full {
            break;
        }
    }
    let entries = pages.len();
    let last = commit_entries(hub, pages.into_iter().rev()).unwrap_or_default();
    tracing::info!(entries, events, "loaded history from the Redis stream");
    Ok(last)
}

/// How many events a stream entry holds (an entry of earlier versions holds one).
fn entry_events(entry: &StreamId) -> usize {
    let count = match entry.map.get("n") {
        Some(Value::BulkString(bytes)) => std::str::from_utf8(bytes).ok(),
        Some(Value::SimpleString(text)) => Some(text.as_str()),
        _ => None,
    };
    count.and_then(|n| n.parse().ok()).unwrap_or(1)
}

/// Decodes stream entries and commits them into the local hub together (one lock, one
/// wake-up per subscriber for the lot); returns the position of the last one.
fn commit_entries(hub: &Hub, entries: impl Iterator<Item = StreamId>) -> Option<StreamPos> {
    let mut last = None;
    let mut drafts = Vec::new();
    for entry in entries {
        last = StreamPos::parse(&entry.id).or(last);
        drafts.extend(drafts_of(entry));
    }
    for result in hub.commit_all(drafts) {
        if let Err(e) = result {
            tracing::warn!("skipping stream entry: {e}");
        }
    }
    last
}

/// Decodes one stream entry: the events of one request (`b`, encoded as the disk store's
/// rows), or one event field by field as earlier versions wrote them.
fn drafts_of(entry: StreamId) -> Vec<EventDraft> {
    let StreamId {
        id: stream_id,
        mut map,
    } = entry;
    if let Some(batch) = map.remove("b") {
        let decoded = match batch {
            Value::BulkString(bytes) => super::rows::decode(&bytes).ok(),
            _ => None,
        };
        let Some(events) = decoded.filter(|events| events.iter().all(|e| !e.topics.is_empty()))
        else {
            tracing::warn!(%stream_id, "skipping an unreadable stream entry");
            return Vec::new();
        };
        return events.into_iter().map(DiskEvent::into_draft).collect();
    }
    // Take each field's bytes as they are (no copy when they are UTF-8, as relais writes).
    let mut text = |field: &str| -> String {
        match map.remove(field) {
            Some(Value::BulkString(b)) => String::from_utf8(b)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            Some(Value::SimpleString(s)) => s,
            _ => String::new(),
        }
    };
    let topics: Vec<String> = serde_json::from_str(&text("t")).unwrap_or_default();
    if topics.is_empty() {
        tracing::warn!(%stream_id, "skipping a stream entry without topics");
        return Vec::new();
    }
    let event_type = Some(text("y")).filter(|t| !t.is_empty());
    vec![EventDraft {
        id: text("i"),
        topics,
        event_type,
        data: text("d"),
        private: text("p") == "1",
        retry: text("r").parse().ok(),
        source: text("s"),
    }]
}

/// Follows the stream and feeds the local hub.
struct Reader {
    client: redis::Client,
    stream: String,
    hub: Arc<Hub>,
    position: watch::Sender<StreamPos>,
    healthy: Arc<AtomicBool>,
}

impl Reader {
    async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        let mut conn: Option<MultiplexedConnection> = None;
        while !shutdown.is_cancelled() {
            let c = match &mut conn {
                Some(c) => c,
                None => match self
                    .client
                    .get_multiplexed_async_connection_with_config(
                        &AsyncConnectionConfig::new()
                            .set_connection_timeout(Duration::from_secs(2))
                            .set_response_timeout(
                                Duration::from_millis(READ_BLOCK_MS as u64)
                                    + Duration::from_secs(3),
                            ),
                    )
                    .await
                {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        self.unhealthy(&e, backoff);
                        if self.pause(&shutdown, &mut backoff).await {
                            break;
                        }
                        continue;
                    }
                },
            };
            let from = self.position.borrow().to_string();
            let options = StreamReadOptions::default()
                .block(READ_BLOCK_MS)
                .count(1000);
            let streams = [self.stream.as_str()];
            let positions = [from.as_str()];
            let read = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = c.xread_options::<_, _, Option<StreamReadReply>>(&streams, &positions, &options) => r,
            };
            match read {
                Ok(reply) => {
                    if !self.healthy.swap(true, Ordering::Relaxed) {
                        tracing::info!("Redis stream reader reconnected; catching up");
                    }
                    backoff = Duration::from_millis(100);
                    for key in reply.map(|r| r.keys).unwrap_or_default() {
                        if let Some(p) = commit_entries(&self.hub, key.ids.into_iter()) {
                            self.position.send_replace(p);
                        }
                    }
                }
                Err(e) => {
                    conn = None;
                    self.unhealthy(&e, backoff);
                    if self.pause(&shutdown, &mut backoff).await {
                        break;
                    }
                }
            }
        }
    }

    fn unhealthy(&self, error: &redis::RedisError, retry_in: Duration) {
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::error!(
                "Redis stream reader lost Redis: {error}; retrying in {retry_in:?} with backoff"
            );
        }
    }

    /// Sleeps for the backoff (doubling it); true when shutting down.
    async fn pause(&self, shutdown: &CancellationToken, backoff: &mut Duration) -> bool {
        let wait = *backoff;
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tokio::time::sleep(wait) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_in_its_new_form_and_in_the_form_of_earlier_versions() {
        let state = StoredRecord {
            values: Arc::new([("Statut".to_string(), serde_json::json!("Bloqué"))].into()),
            version: Some(3),
        };
        let data = "{\"a\":\"x\\ny\",\n \"b\": 1}";
        let event = EventDraft::new(vec!["i/1".into()], data).with_type("intervention");
        let text = RedisRecord::encode(&state, Some(&event)).unwrap();
        assert!(text.ends_with(data), "the data is kept as it is: {text}");
        let back = RedisRecord::decode(&text).unwrap();
        assert_eq!(back.state, state);
        let last = back.last.unwrap();
        assert_eq!(
            (
                last.id,
                last.topics,
                last.event_type,
                last.data,
                last.private
            ),
            (
                event.id,
                event.topics,
                event.event_type,
                data.to_string(),
                false
            )
        );
        let bare = RedisRecord::decode(&RedisRecord::encode(&state, None).unwrap()).unwrap();
        assert_eq!((bare.state, bare.last.is_none()), (state.clone(), true));
        // One JSON object, the state flattened, as earlier versions stored it.
        let earlier = r#"{"values":{"Statut":"Bloqué"},"version":3,"last":{"id":"e1","topics":["i/1"],"data":"{\"a\":1}","private":true}}"#;
        let back = RedisRecord::decode(earlier).unwrap();
        assert_eq!(back.state, state);
        let last = back.last.unwrap();
        assert_eq!(
            (last.id.as_str(), last.data.as_str(), last.private),
            ("e1", "{\"a\":1}", true)
        );
    }

    #[test]
    fn stream_positions_order_and_urls_mask() {
        assert!(StreamPos::parse("10-2").unwrap() > StreamPos::parse("9-9").unwrap());
        assert!(StreamPos::parse("10-2").unwrap() < StreamPos::parse("10-3").unwrap());
        assert_eq!(StreamPos::parse("bad"), None);
        assert_eq!(
            masked_url("redis://user:pw@h:6379/0"),
            "redis://********@h:6379/0"
        );
        assert_eq!(masked_url("redis://h:6379"), "redis://h:6379");
    }
}
