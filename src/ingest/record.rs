//! Record state and the diff between what relais last knew of a record and what a
//! webhook now says: `change` (add/update), `changed` (field names) and `previous`
//! (their old values). Pure: the state store and the pipeline do the I/O.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What relais keeps of one record between webhooks (serializable, so a shared store
/// such as Redis can hold it too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRecord {
    /// The values compared by the diff, by name. Grist: the raw columns (storage
    /// encoding, without `manualSort`); hub: `status`, `comment`, `technician`,
    /// `updated_at`. Shared: the known state handed to a plan, the state planned and
    /// the row it came from are one map, not copies.
    pub values: Arc<BTreeMap<String, Value>>,
    /// Ordering key for last-write-wins (hub: `updated_at` in Unix milliseconds);
    /// `None` when the source has none (Grist delivers in order per document).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
}

/// Whether relais had seen the record before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// First time relais sees this record (since it started, or since the record was
    /// evicted from the bounded state).
    Add,
    /// relais knew an earlier state of this record.
    Update,
}

/// How a record differs from its last known state.
#[derive(Debug, Clone, PartialEq)]
pub struct Diff {
    /// Add or update.
    pub change: Change,
    /// Names of the fields whose value differs (for an add: every field with a value).
    pub changed: Vec<String>,
    /// Old value of each changed field (empty for an add).
    pub previous: Map<String, Value>,
}

/// What to do with one incoming record.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Publish an event with this diff and store the new state.
    Publish(Diff),
    /// Identical to the known state (a retry or a replay): no event.
    Unchanged,
    /// Older than the known state (last write wins): dropped, no event.
    Stale,
}

/// Compares named values: `None` when identical, else the diff. Fields are reported in
/// the order of `new` (then fields that disappeared); a field absent on one side counts
/// as `null`.
pub fn diff_values(
    previous: Option<&BTreeMap<String, Value>>,
    new: &BTreeMap<String, Value>,
) -> Option<Diff> {
    let Some(previous) = previous else {
        let changed = new
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, _)| k.clone())
            .collect();
        return Some(Diff {
            change: Change::Add,
            changed,
            previous: Map::new(),
        });
    };
    if previous == new {
        return None;
    }
    let mut changed = Vec::new();
    let mut old = Map::new();
    let null = Value::Null;
    for (key, value) in new {
        let before = previous.get(key).unwrap_or(&null);
        if before != value {
            changed.push(key.clone());
            old.insert(key.clone(), before.clone());
        }
    }
    for (key, before) in previous {
        if !new.contains_key(key) && !before.is_null() {
            changed.push(key.clone());
            old.insert(key.clone(), before.clone());
        }
    }
    Some(Diff {
        change: Change::Update,
        changed,
        previous: old,
    })
}

/// Last-write-wins comparison of a versioned record with its known state: stale when
/// strictly older, unchanged when identical, else the diff. Equal versions with other
/// values are applied (the later delivery wins a tie).
pub fn decide(previous: Option<&StoredRecord>, new: &StoredRecord) -> Outcome {
    if let (Some(prev), Some(new_version)) = (previous, new.version) {
        if prev.version.is_some_and(|v| new_version < v) {
            return Outcome::Stale;
        }
    }
    match diff_values(previous.map(|p| &*p.values), &new.values) {
        Some(diff) => Outcome::Publish(diff),
        None => Outcome::Unchanged,
    }
}

/// What one webhook turns into, decided purely from the known states: the events to
/// publish, the states to store once they are on the bus, and what was absorbed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Events to publish, in the order of the payload.
    pub events: Vec<PlannedEvent>,
    /// New states to store (one per record key, the last one when a batch holds a
    /// record twice), only after the events are on the bus.
    pub store: Vec<(String, StoredRecord)>,
    /// For each entry of `store`, the index in `events` of the record's new last event
    /// (the event planned just before [`Plan::remember`] was called).
    pub last_event: Vec<Option<usize>>,
    /// Records identical to their known state (retries, replays).
    pub unchanged: usize,
    /// Records older than their known state (late deliveries), dropped.
    pub stale: usize,
}

/// One event to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedEvent {
    /// Rendered topics.
    pub topics: Vec<String>,
    /// The event's JSON data.
    pub data: String,
}

impl Plan {
    /// Records `record` as the new state of `key`, replacing an earlier one of the same
    /// batch. Called right after pushing the record's event, which becomes its last
    /// event.
    pub fn remember(&mut self, key: String, record: StoredRecord) {
        let event = self.events.len().checked_sub(1);
        match self.store.iter().position(|(k, _)| *k == key) {
            Some(i) => {
                self.store[i].1 = record;
                self.last_event[i] = event;
            }
            None => {
                self.store.push((key, record));
                self.last_event.push(event);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(pairs: &[(&str, Value)], version: Option<i64>) -> StoredRecord {
        StoredRecord {
            values: Arc::new(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            ),
            version,
        }
    }

    #[test]
    fn first_sight_is_an_add_listing_fields_with_values() {
        let new = rec(&[("a", json!(1)), ("b", Value::Null)], None);
        let Outcome::Publish(d) = decide(None, &new) else {
            panic!()
        };
        assert_eq!(d.change, Change::Add);
        assert_eq!(d.changed, ["a"]);
        assert!(d.previous.is_empty());
    }

    #[test]
    fn identical_is_unchanged_and_differences_carry_previous_values() {
        let old = rec(
            &[("a", json!(1)), ("b", json!("x")), ("gone", json!(2))],
            None,
        );
        assert_eq!(decide(Some(&old), &old.clone()), Outcome::Unchanged);
        let new = rec(
            &[("a", json!(1)), ("b", json!("y")), ("c", json!(true))],
            None,
        );
        let Outcome::Publish(d) = decide(Some(&old), &new) else {
            panic!()
        };
        assert_eq!(d.change, Change::Update);
        assert_eq!(d.changed, ["b", "c", "gone"]);
        assert_eq!(
            Value::Object(d.previous),
            json!({"b": "x", "c": null, "gone": 2})
        );
    }

    #[test]
    fn older_versions_are_stale_and_ties_apply() {
        let old = rec(&[("s", json!("dead"))], Some(200));
        assert_eq!(
            decide(Some(&old), &rec(&[("s", json!("ok"))], Some(100))),
            Outcome::Stale
        );
        assert_eq!(
            decide(Some(&old), &rec(&[("s", json!("dead"))], Some(200))),
            Outcome::Unchanged
        );
        assert!(matches!(
            decide(Some(&old), &rec(&[("s", json!("ok"))], Some(200))),
            Outcome::Publish(_)
        ));
        assert!(matches!(
            decide(Some(&old), &rec(&[("s", json!("ok"))], Some(300))),
            Outcome::Publish(_)
        ));
    }

    #[test]
    fn stored_records_round_trip_as_json() {
        let r = rec(&[("a", json!(["L", "x"]))], Some(5));
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<StoredRecord>(&text).unwrap(), r);
    }
}
