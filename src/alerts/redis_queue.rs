//! The alert queue on Redis, for several instances: pending alerts survive restarts and
//! each is sent by one instance only.
//!
//! Every instance's watcher sees every event, so every instance computes the same alerts.
//! Adding one runs a script that reserves its transaction ID (`SET NX`) and only then
//! appends it to the `alerts` stream, so the stream holds each alert once. Senders read
//! the stream through one consumer group: Redis hands each entry to one instance, which
//! acknowledges and deletes it once posted (or refused for good). Entries a stopped
//! instance had taken are picked up again: by itself after a restart (same consumer
//! name), or by any instance once they have been idle for [`CLAIM_IDLE`].

use std::time::Duration;

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::streams::{StreamAutoClaimOptions, StreamId, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, AsyncConnectionConfig, Value};

use super::alert::{Alert, PushError};

/// Consumer group of the senders.
const GROUP: &str = "senders";
/// How long an alert taken by an instance may stay unacknowledged before another takes it.
pub const CLAIM_IDLE: Duration = Duration::from_secs(60);
/// How long a transaction ID stays reserved (longer than any sensible outage).
const RESERVE_SECS: u64 = 7 * 86_400;
/// How long a blocking read waits before looking for abandoned alerts again.
const BLOCK_MS: usize = 2000;

const PUSH_SCRIPT: &str = r#"
-- KEYS[1] alert stream, KEYS[2] reservation key; ARGV[1] capacity, ARGV[2] reservation
-- ttl, ARGV[3] alert JSON. Returns 1 queued, 0 already queued by someone, -1 full.
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return -1 end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
redis.call('XADD', KEYS[1], '*', 'a', ARGV[3])
return 1
"#;

/// The adding side.
#[derive(Clone)]
pub struct RedisQueueWriter {
    conn: ConnectionManager,
    stream: String,
    reserve_prefix: String,
    capacity: usize,
    script: std::sync::Arc<redis::Script>,
}

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// Queued by this instance.
    Queued,
    /// Another instance (or an earlier run) queued the same alert already.
    AlreadyQueued,
}

impl RedisQueueWriter {
    /// Adds an alert unless it is queued already; refuses when `capacity` are waiting.
    pub async fn push(&self, alert: &Alert) -> Result<Pushed, PushError> {
        let json =
            serde_json::to_string(alert).map_err(|e| PushError::Unavailable(e.to_string()))?;
        let mut conn = self.conn.clone();
        let outcome: redis::RedisResult<i64> = self
            .script
            .key(&self.stream)
            .key(format!("{}{}", self.reserve_prefix, alert.txn_id))
            .arg(self.capacity)
            .arg(RESERVE_SECS)
            .arg(json)
            .invoke_async(&mut conn)
            .await;
        match outcome {
            Ok(1) => Ok(Pushed::Queued),
            Ok(0) => Ok(Pushed::AlreadyQueued),
            Ok(_) => Err(PushError::Full),
            Err(e) => Err(PushError::Unavailable(e.to_string())),
        }
    }
}

/// The delivering side: one consumer of the group.
pub struct RedisQueueReader {
    client: redis::Client,
    conn: Option<MultiplexedConnection>,
    stream: String,
    consumer: String,
    in_flight: Option<(String, String)>,
    waiting: usize,
}

/// Creates the stream and group if needed; returns both ends.
pub async fn redis_queue(
    client: redis::Client,
    conn: ConnectionManager,
    prefix: &str,
    capacity: usize,
) -> redis::RedisResult<(RedisQueueWriter, RedisQueueReader)> {
    let stream = format!("{prefix}alerts");
    let mut c = conn.clone();
    let created: redis::RedisResult<()> = c.xgroup_create_mkstream(&stream, GROUP, "0").await;
    if let Err(e) = created {
        if e.code() != Some("BUSYGROUP") {
            return Err(e);
        }
    }
    let writer = RedisQueueWriter {
        conn,
        stream: stream.clone(),
        reserve_prefix: format!("{prefix}alert:"),
        capacity: capacity.max(1),
        script: std::sync::Arc::new(redis::Script::new(PUSH_SCRIPT)),
    };
    let reader = RedisQueueReader {
        client,
        conn: None,
        stream,
        consumer: consumer_name(),
        in_flight: None,
        waiting: 0,
    };
    Ok((writer, reader))
}

/// A name that stays the same across restarts of the same instance (its host name),
/// so it finds the alerts it had taken.
fn consumer_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("relais-{}", std::process::id()))
}

impl RedisQueueReader {
    /// The next alert for this instance: first its own unacknowledged ones, then ones
    /// abandoned by another instance, then new ones (waiting for them).
    pub async fn next(&mut self) -> Alert {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.try_next().await {
                Ok(Next::Alert(entry_id, alert)) => {
                    self.in_flight = Some((alert.txn_id.clone(), entry_id));
                    return alert;
                }
                Ok(Next::Unreadable(entry_id)) => {
                    self.in_flight = Some((String::new(), entry_id));
                    self.ack_in_flight().await;
                }
                Ok(Next::Nothing) => backoff = Duration::from_millis(200),
                Err(e) => {
                    tracing::warn!(
                        "matrix alert queue: Redis failed ({e}); retrying in {backoff:?}"
                    );
                    self.conn = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn connection(&mut self) -> redis::RedisResult<&mut MultiplexedConnection> {
        if self.conn.is_none() {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Duration::from_secs(2))
                .set_response_timeout(
                    Duration::from_millis(BLOCK_MS as u64) + Duration::from_secs(3),
                );
            self.conn = Some(
                self.client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            );
        }
        match self.conn.as_mut() {
            Some(c) => Ok(c),
            None => Err(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "no connection",
            ))),
        }
    }

    async fn try_next(&mut self) -> redis::RedisResult<Next> {
        let stream = self.stream.clone();
        let consumer = self.consumer.clone();
        let conn = self.connection().await?;
        // 1. Ours, taken before a restart and never acknowledged.
        let own: Option<StreamReadReply> = conn
            .xread_options(
                &[&stream],
                &["0"],
                &StreamReadOptions::default()
                    .group(GROUP, &consumer)
                    .count(1),
            )
            .await?;
        if let Some(found) = first_entry(own) {
            return Ok(decode(found));
        }
        // 2. Abandoned by another instance.
        let claimed: redis::streams::StreamAutoClaimReply = conn
            .xautoclaim_options(
                &stream,
                GROUP,
                &consumer,
                CLAIM_IDLE.as_millis() as u64,
                "0-0",
                StreamAutoClaimOptions::default().count(1),
            )
            .await?;
        if let Some(entry) = claimed.claimed.into_iter().next() {
            tracing::info!(entry = %entry.id, "matrix alert queue: took over an alert another instance had not sent");
            return Ok(decode(entry));
        }
        // 3. New ones.
        let new: Option<StreamReadReply> = conn
            .xread_options(
                &[&stream],
                &[">"],
                &StreamReadOptions::default()
                    .group(GROUP, &consumer)
                    .count(1)
                    .block(BLOCK_MS),
            )
            .await?;
        let waiting: usize = conn.xlen(&stream).await.unwrap_or(0);
        self.waiting = waiting;
        Ok(first_entry(new).map(decode).unwrap_or(Next::Nothing))
    }

    /// Acknowledges and deletes the alert being delivered.
    pub async fn ack(&mut self, alert: &Alert) {
        if self
            .in_flight
            .as_ref()
            .is_some_and(|(txn, _)| *txn == alert.txn_id)
        {
            self.ack_in_flight().await;
        }
    }

    async fn ack_in_flight(&mut self) {
        let Some((_, entry_id)) = self.in_flight.take() else {
            return;
        };
        let stream = self.stream.clone();
        for _ in 0..3 {
            let done = match self.connection().await {
                Ok(conn) => {
                    let acked: redis::RedisResult<i64> =
                        conn.xack(&stream, GROUP, &[&entry_id]).await;
                    let deleted: redis::RedisResult<i64> = conn.xdel(&stream, &[&entry_id]).await;
                    acked.is_ok() && deleted.is_ok()
                }
                Err(_) => false,
            };
            if done {
                return;
            }
            self.conn = None;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Not acknowledged: it will be taken again and re-sent with the same transaction
        // ID, which the homeserver deduplicates.
        tracing::warn!(entry = %entry_id, "matrix alert queue: could not acknowledge a sent alert in Redis");
    }

    /// Alerts in the stream at the last look (for the shutdown message).
    pub fn waiting(&self) -> usize {
        self.waiting
    }
}

fn first_entry(reply: Option<StreamReadReply>) -> Option<StreamId> {
    reply?.keys.into_iter().next()?.ids.into_iter().next()
}

/// What the queue held.
enum Next {
    /// An alert to deliver, with its stream entry ID.
    Alert(String, Alert),
    /// An entry that is not an alert: acknowledged and removed without sending.
    Unreadable(String),
    /// Nothing yet.
    Nothing,
}

/// The alert in a stream entry.
fn decode(entry: StreamId) -> Next {
    let text = match entry.map.get("a") {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    };
    match serde_json::from_str::<Alert>(&text) {
        Ok(alert) => Next::Alert(entry.id, alert),
        Err(e) => {
            tracing::error!(entry = %entry.id, "matrix alert queue: unreadable entry skipped: {e}");
            Next::Unreadable(entry.id)
        }
    }
}
