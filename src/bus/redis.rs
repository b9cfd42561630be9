//! The Redis bus: several relais instances share one ordered stream of events.
//!
//! - Publishing runs one Lua script: it refuses publisher IDs already used, then appends
//!   the events to a Redis stream (`XADD ... MAXLEN ~ history_size`). A publish is
//!   acknowledged only once Redis has the events.
//! - Every instance runs a reader that loads the stream's tail into its hub at start
//!   (so a fresh instance can resume anyone's `Last-Event-ID`), then follows the stream
//!   with `XREAD BLOCK`. Stream order is the same for every instance, so histories agree.
//! - Outages: publishing answers `BusError::Unavailable` (HTTP 503) while Redis is down;
//!   the reader reconnects with exponential backoff and continues after the last entry it
//!   read, so subscribers get everything acknowledged meanwhile once Redis is back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::AsyncConnectionConfig;
use redis::{AsyncCommands, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::BusError;
use crate::hub::{EventDraft, Hub};

/// How long a publisher-chosen event ID stays reserved against reuse.
const PUBLISHER_ID_TTL_SECS: u64 = 24 * 3600;
/// Longest pause between two reconnection attempts of the reader.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long `XREAD` blocks before looping (and noticing shutdown).
const READ_BLOCK_MS: usize = 2000;
/// Longest wait for Redis to take a publish before answering 503. A publish that Redis
/// applies after this is delivered anyway: the sender's retry is then a duplicate, which
/// record state absorbs for webhooks.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a resume waits for this instance to catch up with the stream's tip.
const CATCH_UP_WAIT: Duration = Duration::from_secs(2);

const PUBLISH_SCRIPT: &str = r#"
-- KEYS[1] stream. ARGV[1] maxlen, ARGV[2] publisher-id key prefix, ARGV[3] publisher-id
-- ttl, ARGV[4] record-state ttl, ARGV[5] fences, ARGV[6] writes, ARGV[7] events; then the
-- fences as (key, expected value) pairs ('' = absent), the writes as (key, value) pairs,
-- and the events, 8 fields each: id, custom-id flag, topics (JSON), type, data, private,
-- retry, source. Everything or nothing happens.
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
  local b = events_at + e * 8
  if ARGV[b + 1] == '1' and redis.call('EXISTS', ARGV[2] .. ARGV[b]) == 1 then
    return redis.error_reply('DUPLICATE ' .. ARGV[b])
  end
end
for e = 0, ne - 1 do
  local b = events_at + e * 8
  local sid = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
    'i', ARGV[b], 't', ARGV[b + 2], 'y', ARGV[b + 3], 'd', ARGV[b + 4],
    'p', ARGV[b + 5], 'r', ARGV[b + 6], 's', ARGV[b + 7])
  if ARGV[b + 1] == '1' then
    redis.call('SET', ARGV[2] .. ARGV[b], sid, 'EX', ARGV[3])
  end
end
for w = 0, nw - 1 do
  redis.call('SET', ARGV[writes_at + 2 * w], ARGV[writes_at + 2 * w + 1], 'EX', ARGV[4])
end
return ne
"#;

/// The outcome of [`RedisBus::publish_fenced`].
#[derive(Debug, PartialEq, Eq)]
pub enum Fenced {
    /// The events are on the stream (their IDs) and the writes are done.
    Published(Vec<String>),
    /// A fenced key changed meanwhile: nothing was done; load again and retry.
    Conflict,
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

/// Publishing side of the Redis bus (cheap to clone).
#[derive(Clone)]
pub struct RedisBus {
    client: redis::Client,
    conn: ConnectionManager,
    keys: RedisKeys,
    maxlen: usize,
    script: Arc<redis::Script>,
    read_pos: watch::Receiver<StreamPos>,
    reader_healthy: Arc<AtomicBool>,
}

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

impl RedisBus {
    /// Connects (retrying for a few seconds), loads the stream's tail into `hub` and
    /// starts the reader that follows the stream until `shutdown`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        history_size: usize,
        hub: Arc<Hub>,
        shutdown: CancellationToken,
    ) -> Result<Self, RedisConnectError> {
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
            script: Arc::new(redis::Script::new(PUBLISH_SCRIPT)),
            read_pos,
            reader_healthy,
        })
    }

    /// The Redis key names.
    pub fn keys(&self) -> &RedisKeys {
        &self.keys
    }

    /// A shared connection for other Redis users (alerts), reconnecting by itself.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// A client for users that need a connection of their own (blocking reads).
    pub fn client(&self) -> redis::Client {
        self.client.clone()
    }

    /// Appends events to the stream; returns their IDs once Redis has them.
    pub async fn publish(&self, drafts: Vec<EventDraft>) -> Result<Vec<String>, BusError> {
        if drafts.is_empty() {
            return Ok(Vec::new());
        }
        match self
            .publish_fenced(drafts, &[], &[], Duration::ZERO)
            .await?
        {
            Fenced::Published(ids) => Ok(ids),
            Fenced::Conflict => Err(BusError::Unavailable("unexpected conflict".into())),
        }
    }

    /// Atomically: if every `fences` key still holds its expected value (`None`: absent),
    /// appends the events and writes `writes` (kept for `ttl`); otherwise changes nothing
    /// and answers [`Fenced::Conflict`]. This is how record state and events stay
    /// consistent between instances.
    pub async fn publish_fenced(
        &self,
        drafts: Vec<EventDraft>,
        fences: &[(String, Option<String>)],
        writes: &[(String, String)],
        ttl: Duration,
    ) -> Result<Fenced, BusError> {
        if !self.reader_healthy.load(Ordering::Relaxed) {
            // Known outage: answer at once so the sender retries later.
            return Err(BusError::Unavailable("Redis is unreachable".into()));
        }
        let mut invocation = self.script.key(&self.keys.stream);
        invocation
            .arg(self.maxlen)
            .arg(&self.keys.ids)
            .arg(PUBLISHER_ID_TTL_SECS)
            .arg(ttl.as_secs().max(1))
            .arg(fences.len())
            .arg(writes.len())
            .arg(drafts.len());
        for (key, expected) in fences {
            invocation.arg(key).arg(expected.as_deref().unwrap_or(""));
        }
        for (key, value) in writes {
            invocation.arg(key).arg(value);
        }
        for d in &drafts {
            let custom = !d.id.starts_with("urn:uuid:");
            invocation
                .arg(&d.id)
                .arg(if custom { "1" } else { "0" })
                .arg(serde_json::to_string(&d.topics).unwrap_or_else(|_| "[]".into()))
                .arg(d.event_type.as_deref().unwrap_or(""))
                .arg(&d.data)
                .arg(if d.private { "1" } else { "0" })
                .arg(d.retry.map(|r| r.to_string()).unwrap_or_default())
                .arg(&d.source);
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
            Ok(_) => Ok(Fenced::Published(
                drafts.into_iter().map(|d| d.id).collect(),
            )),
            Err(e) if e.code() == Some("CONFLICT") => Ok(Fenced::Conflict),
            Err(e) if e.code() == Some("DUPLICATE") => Err(BusError::Commit(
                crate::hub::CommitError::DuplicateId(e.detail().unwrap_or_default().to_string()),
            )),
            Err(e) => Err(BusError::Unavailable(e.to_string())),
        }
    }

    /// Reads several string keys at once (record states).
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<String>>, BusError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if !self.reader_healthy.load(Ordering::Relaxed) {
            return Err(BusError::Unavailable("Redis is unreachable".into()));
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
        .map_err(|_| BusError::Unavailable("Redis did not answer in time".into()))?
        .map_err(|e| BusError::Unavailable(e.to_string()))
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

/// Loads the newest `history_size` entries into the hub, oldest first; returns the
/// position to follow from.
async fn load_tail(
    conn: &mut ConnectionManager,
    keys: &RedisKeys,
    history_size: usize,
    hub: &Hub,
) -> redis::RedisResult<StreamPos> {
    let reply: StreamRangeReply = conn
        .xrevrange_count(&keys.stream, "+", "-", history_size)
        .await?;
    let mut last = StreamPos::default();
    let loaded = reply.ids.len();
    for entry in reply.ids.into_iter().rev() {
        if let Some(p) = StreamPos::parse(&entry.id) {
            last = p;
        }
        commit_entry(hub, entry);
    }
    tracing::info!(events = loaded, "loaded history from the Redis stream");
    Ok(last)
}

/// Decodes one stream entry and commits it into the local hub.
fn commit_entry(hub: &Hub, entry: StreamId) {
    let StreamId {
        id: stream_id,
        mut map,
    } = entry;
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
        return;
    }
    let event_type = Some(text("y")).filter(|t| !t.is_empty());
    let draft = EventDraft {
        id: text("i"),
        topics,
        event_type,
        data: text("d"),
        private: text("p") == "1",
        retry: text("r").parse().ok(),
        source: text("s"),
    };
    if let Err(e) = hub.commit(draft) {
        tracing::warn!(%stream_id, "skipping stream entry: {e}");
    }
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
                        for entry in key.ids {
                            let position = StreamPos::parse(&entry.id);
                            commit_entry(&self.hub, entry);
                            if let Some(p) = position {
                                self.position.send_replace(p);
                            }
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
