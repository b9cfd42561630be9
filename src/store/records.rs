//! Record state in memory: the last known state of each record by (source, record key),
//! with the record's last event (for `/state`), bounded by count (least recently used
//! out first) and optionally by age (`hub.record_ttl`).
//!
//! Used by the in-process backends (memory and disk); the disk backend mirrors every
//! change in its database and reloads this map on start.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::SnapshotRecord;
use crate::hub::{Event, Subscription};
use crate::ingest::record::StoredRecord;

/// A record's key: (source, record key).
pub type Key = (String, String);

/// What is kept of one record.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The state the diff compares against.
    pub state: StoredRecord,
    /// The record's last event (absent for states written without an event).
    pub last: Option<Arc<Event>>,
    /// When the record last changed (Unix milliseconds), for `hub.record_ttl`.
    pub changed_at: u64,
    /// Last use, for least-recently-used eviction.
    tick: u64,
    /// The last event's `/state` entry, encoded by the first snapshot that needs it
    /// (shared with the snapshots in progress, which encode it outside the store's
    /// lock).
    snapshot: Arc<OnceLock<Arc<SnapshotRecord>>>,
}

/// A record's last event as a snapshot found it under the store's lock: its `/state`
/// entry is encoded (once per change of the record) only by [`SnapshotSlot::entry`],
/// after the lock is released, so a first snapshot of 10,000 changed records does not
/// hold up deliveries while it encodes them.
#[derive(Debug, Clone)]
pub struct SnapshotSlot {
    event: Arc<Event>,
    entry: Arc<OnceLock<Arc<SnapshotRecord>>>,
}

impl SnapshotSlot {
    /// The record's `/state` entry, encoded now if no snapshot did it before.
    pub fn entry(&self) -> Arc<SnapshotRecord> {
        self.entry
            .get_or_init(|| Arc::new(SnapshotRecord::of(&self.event)))
            .clone()
    }
}

/// A bounded LRU map of record states.
#[derive(Debug)]
pub struct Records {
    capacity: usize,
    ttl: Option<Duration>,
    entries: HashMap<Key, Entry>,
    /// Last use tick → key, oldest first.
    order: BTreeMap<u64, Key>,
    tick: u64,
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Records {
    /// At most `capacity` records (at least 1), each forgotten `ttl` after its last change
    /// when set.
    pub fn new(capacity: usize, ttl: Option<Duration>) -> Self {
        Self {
            capacity: capacity.max(1),
            ttl,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
        }
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn expired(&self, entry: &Entry, now: u64) -> bool {
        self.ttl
            .is_some_and(|ttl| entry.changed_at.saturating_add(ttl.as_millis() as u64) < now)
    }

    /// The known states of `keys` of `source` (marks them used; expired ones are
    /// forgotten).
    pub fn get_many(&mut self, source: &str, keys: &[String]) -> HashMap<String, StoredRecord> {
        let now = now_ms();
        let mut found = HashMap::new();
        for k in keys {
            let key = (source.to_string(), k.clone());
            let Some(entry) = self.entries.get(&key) else {
                continue;
            };
            if self.expired(entry, now) {
                self.remove(&key);
                continue;
            }
            self.tick += 1;
            let tick = self.tick;
            if let Some(entry) = self.entries.get_mut(&key) {
                self.order.remove(&entry.tick);
                entry.tick = tick;
                self.order.insert(tick, key);
                found.insert(k.clone(), entry.state.clone());
            }
        }
        found
    }

    /// Stores a record's new state; returns the keys evicted to stay within capacity.
    pub fn put(
        &mut self,
        key: Key,
        state: StoredRecord,
        last: Option<Arc<Event>>,
        changed_at: u64,
    ) -> Vec<Key> {
        self.tick += 1;
        let tick = self.tick;
        let entry = Entry {
            state,
            last,
            changed_at,
            tick,
            snapshot: Arc::default(),
        };
        if let Some(old) = self.entries.insert(key.clone(), entry) {
            self.order.remove(&old.tick);
        }
        self.order.insert(tick, key);
        let mut evicted = Vec::new();
        while self.entries.len() > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
            evicted.push(oldest);
        }
        evicted
    }

    /// Forgets a record.
    pub fn remove(&mut self, key: &Key) {
        if let Some(old) = self.entries.remove(key) {
            self.order.remove(&old.tick);
        }
    }

    /// The last events of the records a subscriber may see (selectors and private
    /// rules as for streaming), in no particular order; each slot gives the record's
    /// `/state` entry, encoded once per change of its record.
    pub fn matching(&self, subscription: &Subscription) -> Vec<SnapshotSlot> {
        let now = now_ms();
        self.entries
            .values()
            .filter(|e| !self.expired(e, now))
            .filter_map(|e| Some((e, e.last.as_ref()?)))
            .filter(|(_, event)| subscription.wants(event))
            .map(|(e, event)| SnapshotSlot {
                event: event.clone(),
                entry: e.snapshot.clone(),
            })
            .collect()
    }

    /// Every entry, least recently used first (for tests and reloads).
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Entry)> {
        self.order
            .values()
            .filter_map(|k| self.entries.get(k).map(|e| (k, e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(n: i64) -> StoredRecord {
        StoredRecord {
            values: std::sync::Arc::new([("n".to_string(), json!(n))].into()),
            version: None,
        }
    }

    fn key(k: &str) -> Key {
        ("s".into(), k.into())
    }

    #[test]
    fn evicts_the_least_recently_used() {
        let mut r = Records::new(2, None);
        r.put(key("1"), rec(1), None, 0);
        r.put(key("2"), rec(2), None, 0);
        assert_eq!(r.get_many("s", &["1".into()]).len(), 1);
        assert_eq!(r.put(key("3"), rec(3), None, 0), vec![key("2")]);
        let got = r.get_many("s", &["1".into(), "2".into(), "3".into()]);
        assert_eq!(got.len(), 2);
        assert!(!got.contains_key("2"));
        r.put(key("3"), rec(4), None, 0);
        assert_eq!(r.len(), 2);
        assert_eq!(r.order.len(), r.entries.len());
        assert!(r.get_many("t", &["1".into()]).is_empty());
    }

    #[test]
    fn expired_records_are_forgotten() {
        let mut r = Records::new(10, Some(Duration::from_secs(60)));
        r.put(key("old"), rec(1), None, now_ms() - 61_000);
        r.put(key("new"), rec(2), None, now_ms());
        let got = r.get_many("s", &["old".into(), "new".into()]);
        assert_eq!(got.keys().collect::<Vec<_>>(), ["new"]);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn a_snapshot_slot_encodes_the_event_it_found_once() {
        use crate::hub::{EventDraft, Selector};
        let event = |data: &str| {
            Arc::new(Event::new(
                1,
                EventDraft::new(vec!["r/1".into()], data).with_id(data),
            ))
        };
        let everything = Subscription {
            selectors: vec![Selector::Any],
            claims: None,
        };
        let mut r = Records::new(10, None);
        r.put(key("1"), rec(1), Some(event("{\"v\":1}")), now_ms());
        let slots = r.matching(&everything);
        // The record changes before the slot is encoded (outside the store's lock):
        // the slot still gives the event of the snapshot's instant.
        r.put(key("1"), rec(2), Some(event("{\"v\":2}")), now_ms());
        assert_eq!(slots.len(), 1);
        assert_eq!(slots[0].entry().id, "{\"v\":1}");
        // Encoded once per change, shared by the snapshots that follow.
        let [now] = &r.matching(&everything)[..] else {
            panic!("one record");
        };
        let (a, b) = (now.entry(), now.entry());
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(
            &a.json[..],
            br#"{"id":"{\"v\":2}","type":null,"topics":["r/1"],"data":{"v":2}}"#
        );
    }
}
