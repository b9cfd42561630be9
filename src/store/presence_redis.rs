//! Presence across instances, in Redis.
//!
//! Keys (under `redis.key_prefix`):
//! - `presence:events`: a stream of subscription events, bounded apart from the event
//!   stream (`hub.subscriptions_history`), followed by every instance, which commits
//!   each entry to its hub: the lists of all instances are the same union;
//! - `presence:instances`: the instances that may have subscriptions listed;
//! - `presence:subs:{instance}`: a hash, subscription IRI → its start document and its
//!   end event, for each subscription the instance announced and did not end yet;
//! - `presence:alive:{instance}`: the instance's heartbeat, renewed every
//!   `redis.presence_heartbeat` and expiring after `redis.presence_ttl`.
//!
//! Each change is one script, so it happens once whoever runs it: a start adds the hash
//! field and the start event together; an end removes the field and adds the end event
//! only if the field was still there. A subscription therefore ends exactly once, by
//! its own instance when its stream ends or the instance stops cleanly, or by another
//! instance that found the heartbeat expired (`kill -9`, power cut): that claim checks
//! the heartbeat and ends the whole hash in one script, so two survivors never both
//! publish the ends.
//!
//! An instance that starts reads every listed subscription and the stream's last entry
//! in one script, so its list is complete and its reader starts exactly after it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use redis::aio::ConnectionManager;
use redis::streams::{StreamReadOptions, StreamReadReply};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::redis::{masked_url, RedisConnectError};
use crate::config::Config;
use crate::hub::presence::{Active, Change, Pair, Presence, Shared};
use crate::hub::Hub;

/// How long `XREAD` blocks before looping (and noticing shutdown).
const READ_BLOCK_MS: usize = 2000;
/// Longest pause between retries while Redis is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

const START_SCRIPT: &str = r#"
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[6])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'i', ARGV[4], 't', ARGV[3], 'd', ARGV[5], 'a', '1')
return 1
"#;

const END_SCRIPT: &str = r#"
local v = redis.call('HGET', KEYS[2], ARGV[2])
if not v then return 0 end
redis.call('HDEL', KEYS[2], ARGV[2])
local o = cjson.decode(v)
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'i', o.e, 't', ARGV[2], 'd', o.d, 'a', '0')
return 1
"#;

/// Ends every subscription of instance ARGV[2], unless its heartbeat is alive (ARGV[3]
/// = '1': a clean stop of that instance itself).
const CLAIM_SCRIPT: &str = r#"
if ARGV[3] ~= '1' and redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local all = redis.call('HGETALL', KEYS[2])
local n = 0
for i = 1, #all, 2 do
  local o = cjson.decode(all[i + 1])
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'i', o.e, 't', all[i], 'd', o.d, 'a', '0')
  n = n + 1
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[4], ARGV[2])
if ARGV[3] == '1' then redis.call('DEL', KEYS[3]) end
return n
"#;

/// The stream's last entry ID, then IRI and hash value of every listed subscription.
const LOAD_SCRIPT: &str = r#"
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local out = {'0-0'}
if #last > 0 then out[1] = last[1][1] end
for _, inst in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local all = redis.call('HGETALL', ARGV[1] .. inst)
  for i = 1, #all, 2 do
    table.insert(out, all[i])
    table.insert(out, all[i + 1])
  end
end
return out
"#;

/// What an instance keeps in Redis for each of its subscriptions.
#[derive(Serialize, Deserialize)]
struct Listed {
    /// The start document (`active: true`).
    s: String,
    /// The end event's ID.
    e: String,
    /// The end document (`active: false`).
    d: String,
}

/// The Redis key names of presence.
#[derive(Clone)]
struct Keys {
    stream: String,
    instances: String,
    subs_prefix: String,
    alive_prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            stream: format!("{prefix}presence:events"),
            instances: format!("{prefix}presence:instances"),
            subs_prefix: format!("{prefix}presence:subs:"),
            alive_prefix: format!("{prefix}presence:alive:"),
        }
    }
    fn subs(&self, instance: &str) -> String {
        format!("{}{instance}", self.subs_prefix)
    }
    fn alive(&self, instance: &str) -> String {
        format!("{}{instance}", self.alive_prefix)
    }
}

enum Command {
    Start(Box<Pair>),
    End(Arc<str>),
}

/// Presence shared through Redis.
struct RedisPresence {
    commands: mpsc::UnboundedSender<Command>,
    worker: Arc<Worker>,
}

/// Runs the scripts of this instance.
struct Worker {
    conn: ConnectionManager,
    keys: Keys,
    instance: String,
    maxlen: usize,
    heartbeat: Duration,
    ttl: Duration,
    /// This instance's subscriptions not ended yet, to announce again if the others took
    /// it for dead.
    local: Mutex<HashMap<String, Pair>>,
    start: redis::Script,
    end: redis::Script,
    claim: redis::Script,
}

impl Shared for RedisPresence {
    fn start(&self, pair: Pair) {
        // The worker only stops at shutdown; what is not sent then is ended by `close`.
        let _ = self.commands.send(Command::Start(Box::new(pair)));
    }

    fn end(&self, iri: Arc<str>) {
        let _ = self.commands.send(Command::End(iri));
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            match self.worker.claim_own().await {
                Ok(n) => tracing::info!(
                    subscriptions = n,
                    "presence: ended this instance's subscriptions for the other instances"
                ),
                Err(e) => tracing::warn!(
                    "presence: could not end this instance's subscriptions in Redis ({e}); the other instances will when its heartbeat expires"
                ),
            }
        }
        .boxed()
    }
}

/// The presence of this process: shared through Redis when `redis.url` is set, else
/// listed on disk (`presence.sqlite` in the state directory, so a restart ends what a
/// crash left), or in memory only with `hub.persist = false`. Switched off by
/// `hub.subscriptions = false`. Call it once the store has loaded its history.
pub async fn open(
    config: &Config,
    hub: &Arc<Hub>,
    shutdown: CancellationToken,
) -> Result<Arc<Presence>, super::OpenError> {
    let enabled = config.hub.subscriptions;
    let url = match &config.redis.url {
        Some(url) if enabled => url.expose().to_string(),
        None if enabled && config.hub.persist => {
            let path = config.state_dir().join("presence.sqlite");
            let disk =
                super::presence_disk::DiskPresence::open(&path, hub.clone()).map_err(|e| {
                    super::OpenError::Disk {
                        path: e.path,
                        reason: e.reason,
                    }
                })?;
            return Ok(Arc::new(Presence::shared(
                hub.clone(),
                true,
                Arc::new(disk),
            )));
        }
        _ => return Ok(Arc::new(Presence::local(hub.clone(), enabled))),
    };
    open_redis(config, hub, shutdown, url)
        .await
        .map_err(super::OpenError::Redis)
}

async fn open_redis(
    config: &Config,
    hub: &Arc<Hub>,
    shutdown: CancellationToken,
    url: String,
) -> Result<Arc<Presence>, RedisConnectError> {
    let err = |reason: String| RedisConnectError {
        url: masked_url(&url),
        reason,
    };
    let client = redis::Client::open(url.as_str()).map_err(|e| err(e.to_string()))?;
    let mut conn = client
        .get_connection_manager()
        .await
        .map_err(|e| err(e.to_string()))?;
    let keys = Keys::new(config.redis.key_prefix.as_deref().unwrap_or("relais:"));
    let (position, listed) = load(&mut conn, &keys)
        .await
        .map_err(|e| err(format!("cannot read presence: {e}")))?;
    tracing::info!(
        subscriptions = listed.len(),
        "presence: loaded the subscriptions listed by running instances"
    );
    hub.seed_presence(listed);
    let worker = Arc::new(Worker {
        conn,
        keys: keys.clone(),
        instance: uuid::Uuid::now_v7().to_string(),
        maxlen: config.hub.subscriptions_history.max(1),
        heartbeat: config
            .redis
            .presence_heartbeat
            .max(Duration::from_millis(10)),
        ttl: config.redis.presence_ttl.max(Duration::from_millis(20)),
        local: Mutex::new(HashMap::new()),
        start: redis::Script::new(START_SCRIPT),
        end: redis::Script::new(END_SCRIPT),
        claim: redis::Script::new(CLAIM_SCRIPT),
    });
    worker
        .beat()
        .await
        .map_err(|e| err(format!("cannot write the presence heartbeat: {e}")))?;
    let (commands, receiver) = mpsc::unbounded_channel();
    tokio::spawn(worker.clone().run(receiver, shutdown.clone()));
    tokio::spawn(worker.clone().heartbeats(shutdown.clone()));
    tokio::spawn(read(client, keys.stream, position, hub.clone(), shutdown));
    let shared = Arc::new(RedisPresence { commands, worker });
    Ok(Arc::new(Presence::shared(hub.clone(), true, shared)))
}

/// The stream position and every listed subscription, read together.
async fn load(
    conn: &mut ConnectionManager,
    keys: &Keys,
) -> redis::RedisResult<(String, Vec<Active>)> {
    let reply: Vec<String> = redis::Script::new(LOAD_SCRIPT)
        .key(&keys.stream)
        .key(&keys.instances)
        .arg(&keys.subs_prefix)
        .invoke_async(conn)
        .await?;
    let mut items = reply.into_iter();
    let position = items.next().unwrap_or_else(|| "0-0".into());
    let mut listed = Vec::new();
    while let (Some(iri), Some(value)) = (items.next(), items.next()) {
        match serde_json::from_str::<Listed>(&value) {
            Ok(l) => listed.push(Active::new(&iri, l.s)),
            Err(e) => {
                tracing::warn!(%iri, "presence: skipping an unreadable listed subscription: {e}")
            }
        }
    }
    Ok((position, listed))
}

impl Worker {
    /// Runs the start and end scripts in order, retrying while Redis is unreachable.
    async fn run(
        self: Arc<Self>,
        mut receiver: mpsc::UnboundedReceiver<Command>,
        shutdown: CancellationToken,
    ) {
        loop {
            let command = tokio::select! {
                _ = shutdown.cancelled() => return,
                c = receiver.recv() => match c { Some(c) => c, None => return },
            };
            let mut backoff = Duration::from_millis(100);
            loop {
                let done = match &command {
                    Command::Start(pair) => self.announce(pair).await,
                    Command::End(iri) => self.finish(iri).await,
                };
                match done {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!("presence: Redis refused a subscription change ({e}); retrying in {backoff:?}");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
    }

    fn local(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pair>> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn announce(&self, pair: &Pair) -> redis::RedisResult<()> {
        let iri = pair.start.iri().to_string();
        let listed = Listed {
            s: pair.start.draft.data.clone(),
            e: pair.end.draft.id.clone(),
            d: pair.end.draft.data.clone(),
        };
        let listed = serde_json::to_string(&listed).unwrap_or_default();
        let mut conn = self.conn.clone();
        let _: i64 = self
            .start
            .key(&self.keys.stream)
            .key(self.keys.subs(&self.instance))
            .key(&self.keys.instances)
            .arg(self.maxlen)
            .arg(&self.instance)
            .arg(&iri)
            .arg(&pair.start.draft.id)
            .arg(&pair.start.draft.data)
            .arg(listed)
            .invoke_async(&mut conn)
            .await?;
        self.local().insert(iri, pair.clone());
        Ok(())
    }

    async fn finish(&self, iri: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .end
            .key(&self.keys.stream)
            .key(self.keys.subs(&self.instance))
            .arg(self.maxlen)
            .arg(iri)
            .invoke_async(&mut conn)
            .await?;
        self.local().remove(iri);
        Ok(())
    }

    /// Ends the subscriptions of `instance` if its heartbeat expired (`own`: this
    /// instance's, unconditionally). The number ended, or -1 when it is alive.
    async fn claim(&self, instance: &str, own: bool) -> redis::RedisResult<i64> {
        let mut conn = self.conn.clone();
        self.claim
            .key(&self.keys.stream)
            .key(self.keys.subs(instance))
            .key(self.keys.alive(instance))
            .key(&self.keys.instances)
            .arg(self.maxlen)
            .arg(instance)
            .arg(if own { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await
    }

    async fn claim_own(&self) -> redis::RedisResult<i64> {
        let n = self.claim(&self.instance, true).await?;
        self.local().clear();
        Ok(n)
    }

    /// Renews the heartbeat; true when it had expired (the others may have ended this
    /// instance's subscriptions).
    async fn beat(&self) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let renewed: Option<String> = redis::cmd("SET")
            .arg(self.keys.alive(&self.instance))
            .arg("1")
            .arg("PX")
            .arg(self.ttl.as_millis() as u64)
            .arg("XX")
            .query_async(&mut conn)
            .await?;
        if renewed.is_some() {
            return Ok(false);
        }
        let _: () = redis::cmd("SET")
            .arg(self.keys.alive(&self.instance))
            .arg("1")
            .arg("PX")
            .arg(self.ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        let _: () = redis::cmd("SADD")
            .arg(&self.keys.instances)
            .arg(&self.instance)
            .query_async(&mut conn)
            .await?;
        Ok(true)
    }

    /// Renews the heartbeat and ends the subscriptions of dead instances, until shutdown.
    async fn heartbeats(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.sweep().await {
                tracing::warn!("presence: heartbeat or dead-instance check failed: {e}");
            }
        }
    }

    async fn sweep(&self) -> redis::RedisResult<()> {
        if self.beat().await? {
            // Taken for dead (a pause longer than presence_ttl): announce again what is
            // still connected here, with new event IDs.
            let pairs: Vec<Pair> = self.local().values().map(Pair::renewed).collect();
            if !pairs.is_empty() {
                tracing::warn!(
                    subscriptions = pairs.len(),
                    "presence: this instance's heartbeat had expired; announcing its subscriptions again"
                );
            }
            for pair in pairs {
                self.announce(&pair).await?;
            }
        }
        let mut conn = self.conn.clone();
        let instances: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&self.keys.instances)
            .query_async(&mut conn)
            .await?;
        for instance in instances.iter().filter(|i| **i != self.instance) {
            let n = self.claim(instance, false).await?;
            if n >= 0 {
                tracing::warn!(
                    %instance,
                    subscriptions = n,
                    "presence: an instance stopped renewing its heartbeat; ended its subscriptions"
                );
            }
        }
        Ok(())
    }
}

/// Follows the presence stream from `position` and commits each entry to the hub.
async fn read(
    client: redis::Client,
    stream: String,
    mut position: String,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut conn = None;
    while !shutdown.is_cancelled() {
        let c = match &mut conn {
            Some(c) => c,
            None => match client.get_multiplexed_async_connection().await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    tracing::warn!("presence: cannot reach Redis ({e}); retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        let options = StreamReadOptions::default()
            .block(READ_BLOCK_MS)
            .count(1000);
        let streams = [stream.as_str()];
        let positions = [position.as_str()];
        let read = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = redis::AsyncCommands::xread_options::<_, _, Option<StreamReadReply>>(
                c, &streams, &positions, &options,
            ) => r,
        };
        match read {
            Ok(reply) => {
                backoff = Duration::from_millis(100);
                for key in reply.map(|r| r.keys).unwrap_or_default() {
                    for entry in key.ids {
                        let text = |f: &str| entry.get::<String>(f).unwrap_or_default();
                        let change =
                            Change::from_parts(text("i"), text("t"), text("d"), text("a") == "1");
                        hub.commit_presence(change);
                        position = entry.id.clone();
                    }
                }
            }
            Err(e) => {
                conn = None;
                tracing::warn!("presence: lost the Redis stream ({e}); retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
