//! Record state: the last known state of each record, by (source, record key), used to
//! tell adds from updates, compute `changed`/`previous`, absorb retries and drop late
//! deliveries.
//!
//! [`StateStore`] is an enum so that a shared store (Redis, for several instances) can be
//! added next to the in-process one without touching the pipeline.
//!
//! The in-process store keeps at most `hub.record_state_capacity` records in total (all
//! sources together). When full, the least recently used record (read or written) is
//! evicted. Nothing expires by age and nothing survives a restart: a record relais no
//! longer knows is reported as `change: "add"` the next time it arrives.
//!
//! With the Redis bus, states live in Redis (one key per record, JSON, expiring
//! `redis.state_ttl` after the record's last change) and are shared by every instance.
//! Loading returns the raw values as a fence; the events and the new states are then
//! written by one Redis script that first checks the fence, so two instances handling
//! the same record at once never both publish (the loser reloads and replans).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use std::time::Duration;

use super::record::StoredRecord;
use crate::bus::redis::{Fenced, RedisBus};
use crate::bus::BusError;
use crate::hub::EventDraft;

/// Default number of records kept (all sources together).
pub const DEFAULT_CAPACITY: usize = 50_000;

/// Why the state store failed (the webhook is answered 503 and retried).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached now.
    #[error("the record state store is unavailable: {0}")]
    Unavailable(String),
}

/// Where record states are kept.
pub enum StateStore {
    /// In this process, bounded, least recently used first out.
    Memory(MemoryStateStore),
    /// In Redis, shared by every instance.
    Redis(RedisStateStore),
}

/// Record states in Redis, written together with the events they explain.
pub struct RedisStateStore {
    bus: RedisBus,
    ttl: Duration,
}

/// Known states of some records, and (for Redis) the raw values they were read from.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Known states by record key.
    pub known: HashMap<String, StoredRecord>,
    /// Redis keys and the raw values read (`None`: absent), checked when committing.
    pub fence: Vec<(String, Option<String>)>,
}

impl RedisStateStore {
    /// States under the bus's key prefix, kept `ttl` after their last change.
    pub fn new(bus: RedisBus, ttl: Duration) -> Self {
        Self { bus, ttl }
    }

    fn key(&self, source: &str, record: &str) -> String {
        format!("{}{source}:{record}", self.bus.keys().state)
    }

    /// Reads the states of `keys` of `source` with their fence.
    pub async fn load(&self, source: &str, keys: &[String]) -> Result<Snapshot, StoreError> {
        let redis_keys: Vec<String> = keys.iter().map(|k| self.key(source, k)).collect();
        let raw = self
            .bus
            .get_many(&redis_keys)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut snapshot = Snapshot::default();
        for ((key, redis_key), value) in keys.iter().zip(redis_keys).zip(raw) {
            if let Some(text) = &value {
                match serde_json::from_str::<StoredRecord>(text) {
                    Ok(record) => {
                        snapshot.known.insert(key.clone(), record);
                    }
                    Err(e) => {
                        tracing::warn!(%source, record = %key, "ignoring unreadable record state: {e}")
                    }
                }
            }
            snapshot.fence.push((redis_key, value));
        }
        Ok(snapshot)
    }

    /// Publishes `drafts` and stores `records` if nothing changed since `fence` was read.
    pub async fn commit(
        &self,
        source: &str,
        fence: &[(String, Option<String>)],
        drafts: Vec<EventDraft>,
        records: &[(String, StoredRecord)],
    ) -> Result<Fenced, BusError> {
        let writes: Vec<(String, String)> = records
            .iter()
            .filter_map(|(k, r)| {
                serde_json::to_string(r)
                    .ok()
                    .map(|json| (self.key(source, k), json))
            })
            .collect();
        self.bus
            .publish_fenced(drafts, fence, &writes, self.ttl)
            .await
    }
}

impl StateStore {
    /// An in-process store holding at most `capacity` records.
    pub fn memory(capacity: usize) -> Self {
        StateStore::Memory(MemoryStateStore::new(capacity))
    }

    /// The known states of `keys` of `source`, in the same order (`None`: unknown).
    pub async fn get_many(
        &self,
        source: &str,
        keys: &[String],
    ) -> Result<Vec<Option<StoredRecord>>, StoreError> {
        match self {
            StateStore::Memory(store) => Ok(store.get_many(source, keys)),
            StateStore::Redis(store) => {
                let mut snapshot = store.load(source, keys).await?;
                Ok(keys.iter().map(|k| snapshot.known.remove(k)).collect())
            }
        }
    }

    /// Stores new states of `source`.
    pub async fn put_many(
        &self,
        source: &str,
        records: Vec<(String, StoredRecord)>,
    ) -> Result<(), StoreError> {
        match self {
            StateStore::Memory(store) => {
                store.put_many(source, records);
                Ok(())
            }
            StateStore::Redis(store) => {
                // Unfenced write (no event): used by tests and tools, not by the pipeline.
                match store.commit(source, &[], Vec::new(), &records).await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(StoreError::Unavailable(e.to_string())),
                }
            }
        }
    }

    /// A short description for start-up messages.
    pub fn describe(&self) -> String {
        match self {
            StateStore::Memory(store) => format!(
                "in memory, last {} records, least recently used evicted first",
                store.capacity
            ),
            StateStore::Redis(store) => format!(
                "in Redis, shared by all instances, kept {} after a record's last change",
                humantime::format_duration(store.ttl)
            ),
        }
    }
}

type Key = (String, String);

/// A bounded in-process LRU map of record states.
pub struct MemoryStateStore {
    capacity: usize,
    inner: Mutex<Lru>,
}

#[derive(Default)]
struct Lru {
    /// key → (record, last use tick).
    entries: HashMap<Key, (StoredRecord, u64)>,
    /// last use tick → key, oldest first.
    order: BTreeMap<u64, Key>,
    tick: u64,
}

impl Lru {
    fn touch(&mut self, key: &Key) -> Option<&StoredRecord> {
        self.tick += 1;
        let tick = self.tick;
        let entry = self.entries.get_mut(key)?;
        self.order.remove(&entry.1);
        entry.1 = tick;
        self.order.insert(tick, key.clone());
        Some(&entry.0)
    }
}

impl MemoryStateStore {
    /// A store of at most `capacity` records (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Lru::default()),
        }
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        // Every mutation leaves the map consistent before it can panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// See [`StateStore::get_many`].
    pub fn get_many(&self, source: &str, keys: &[String]) -> Vec<Option<StoredRecord>> {
        let mut lru = self.lock();
        keys.iter()
            .map(|k| lru.touch(&(source.to_string(), k.clone())).cloned())
            .collect()
    }

    /// See [`StateStore::put_many`].
    pub fn put_many(&self, source: &str, records: Vec<(String, StoredRecord)>) {
        let mut lru = self.lock();
        for (key, record) in records {
            let key = (source.to_string(), key);
            lru.tick += 1;
            let tick = lru.tick;
            if let Some((_, old_tick)) = lru.entries.insert(key.clone(), (record, tick)) {
                lru.order.remove(&old_tick);
            }
            lru.order.insert(tick, key);
            while lru.entries.len() > self.capacity {
                let Some((_, oldest)) = lru.order.pop_first() else {
                    break;
                };
                lru.entries.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(n: i64) -> StoredRecord {
        StoredRecord {
            values: [("n".to_string(), json!(n))].into_iter().collect(),
            version: None,
        }
    }

    #[tokio::test]
    async fn keeps_by_source_and_key() {
        let store = StateStore::memory(10);
        store
            .put_many("a", vec![("1".into(), rec(1)), ("2".into(), rec(2))])
            .await
            .unwrap();
        let got = store
            .get_many("a", &["2".into(), "3".into(), "1".into()])
            .await
            .unwrap();
        assert_eq!(got, vec![Some(rec(2)), None, Some(rec(1))]);
        assert_eq!(
            store.get_many("b", &["1".into()]).await.unwrap(),
            vec![None]
        );
        store
            .put_many("a", vec![("1".into(), rec(5))])
            .await
            .unwrap();
        assert_eq!(
            store.get_many("a", &["1".into()]).await.unwrap(),
            vec![Some(rec(5))]
        );
    }

    #[test]
    fn evicts_the_least_recently_used() {
        let store = MemoryStateStore::new(2);
        store.put_many("s", vec![("1".into(), rec(1)), ("2".into(), rec(2))]);
        // Reading 1 makes 2 the least recently used.
        assert!(store.get_many("s", &["1".into()])[0].is_some());
        store.put_many("s", vec![("3".into(), rec(3))]);
        assert_eq!(store.len(), 2);
        let got = store.get_many("s", &["1".into(), "2".into(), "3".into()]);
        assert_eq!(got, vec![Some(rec(1)), None, Some(rec(3))]);
        // Rewriting a key does not grow the store.
        store.put_many("s", vec![("3".into(), rec(4)), ("3".into(), rec(5))]);
        assert_eq!(store.len(), 2);
        let lru = store.lock();
        assert_eq!(lru.order.len(), lru.entries.len());
    }
}
