//! The disk side of the default store: an SQLite database (through `rusqlite`, SQLite
//! compiled in) in the state directory.
//!
//! Why SQLite: measured on this project's workload (100-row webhook transactions, each
//! event plus its record state, history trimmed as it goes, one sync per commit), SQLite
//! in write-ahead-log mode with `synchronous = FULL` committed 1.4 to 1.8 times more rows
//! per second than redb with immediate durability, with the same guarantee: a committed
//! transaction survives `kill -9` and power loss, an interrupted one leaves nothing.
//!
//! Tables (their compressed rows are in [`super::rows`]):
//! - `batches`: the retained history, one row per request, its events compressed
//!   together. The history is trimmed in the transaction that grows it, by count
//!   (`hub.history_size`) and bytes (`hub.history_bytes`), as the hub's: a batch is
//!   deleted once its last event is trimmed, and the events of a batch trimmed in part
//!   are dropped again when it is read back.
//! - `record_log`: one row per group commit, the record states it wrote (and the records
//!   it forgot), compressed together.
//! - `records`: the state and last event of each record as of the last fold. Once the
//!   log holds 16 MiB ([`FOLD_BYTES`]), it is folded into the table in the group's own
//!   transaction, so a record changed by every request is rewritten in place once per
//!   fold instead of once per group. Opening the database first folds what the log
//!   still holds, then reads the table.
//!
//! Databases of earlier versions kept one row per event in `events`: opening one moves
//! those rows into `batches`, once.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::rows::{ChangeRef, RecordChange};

use crate::hub::history::event_size;
use crate::hub::EventDraft;
use crate::ingest::record::StoredRecord;

/// An event as stored. Field order matters: [`super::rows`] encodes by position.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct DiskEvent {
    /// Event ID.
    pub id: String,
    /// Topics.
    pub topics: Vec<String>,
    /// Type.
    pub event_type: Option<String>,
    /// Payload.
    pub data: String,
    /// Private update.
    pub private: bool,
    /// `retry:` announced with it.
    pub retry: Option<u64>,
    /// Producer (metrics label).
    pub source: String,
}

impl DiskEvent {
    /// The stored form of a draft.
    pub fn of(draft: &EventDraft) -> Self {
        Self {
            id: draft.id.clone(),
            topics: draft.topics.clone(),
            event_type: draft.event_type.clone(),
            data: draft.data.clone(),
            private: draft.private,
            retry: draft.retry,
            source: draft.source.clone(),
        }
    }

    /// Back to a draft, to commit into the hub on start.
    pub fn into_draft(self) -> EventDraft {
        EventDraft {
            id: self.id,
            topics: self.topics,
            event_type: self.event_type,
            data: self.data,
            private: self.private,
            retry: self.retry,
            source: self.source,
        }
    }

    /// Bytes it counts for in `hub.history_bytes` (as the hub counts it).
    pub fn size(&self) -> usize {
        crate::hub::history::event_size(&self.id, &self.data)
    }
}

/// A record as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskRecord {
    /// Its state.
    pub state: StoredRecord,
    /// Its last event.
    pub last: Option<DiskEvent>,
    /// When it last changed (Unix milliseconds).
    pub changed_at: u64,
}

/// A record's new state, planned by one request and written by its group commit.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordRow {
    /// The record key within its source.
    pub key: String,
    /// The new state.
    pub state: StoredRecord,
    /// The state as stored (JSON), encoded by the request that planned it.
    pub state_json: String,
    /// Index in the request's events of the record's new last event.
    pub event: Option<usize>,
}

/// One request's rows within a group commit.
#[derive(Debug, Clone, Copy)]
pub struct GroupWrite<'a> {
    /// The source the records belong to.
    pub source: &'a str,
    /// Its events, in order.
    pub events: &'a [EventDraft],
    /// Its records' new states.
    pub records: &'a [RecordRow],
    /// When its records changed (Unix milliseconds).
    pub changed_at: u64,
}

/// What the database held at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Retained events, oldest first.
    pub events: Vec<DiskEvent>,
    /// Records (source, key, record), least recently changed first.
    pub records: Vec<(String, String, DiskRecord)>,
}

/// Why the database failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DiskError(String);

impl From<rusqlite::Error> for DiskError {
    fn from(e: rusqlite::Error) -> Self {
        DiskError(e.to_string())
    }
}

/// The open database.
pub struct Disk {
    conn: Connection,
    max_events: usize,
    max_bytes: usize,
    /// (seq, bytes) of the retained events, oldest first, to trim without reading.
    window: VecDeque<(i64, usize)>,
    bytes: usize,
    next_seq: i64,
    /// Bytes in `record_log`, not yet folded into `records`.
    log_bytes: usize,
    /// The log is folded once it holds this many bytes ([`FOLD_BYTES`]; lower in tests).
    fold_bytes: usize,
}

/// Pops the oldest events beyond the limits (keeping the newest); returns the last
/// sequence number to delete.
fn trim(
    window: &mut VecDeque<(i64, usize)>,
    bytes: &mut usize,
    max_events: usize,
    max_bytes: usize,
) -> Option<i64> {
    let mut upto = None;
    while window.len() > 1 && (window.len() > max_events || *bytes > max_bytes) {
        if let Some((seq, size)) = window.pop_front() {
            *bytes -= size;
            upto = Some(seq);
        }
    }
    upto
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS batches (
  seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL, events BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS record_log (seq INTEGER PRIMARY KEY, changes BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS records (
  source TEXT NOT NULL, key TEXT NOT NULL, state TEXT NOT NULL, changed_at INTEGER NOT NULL,
  last_id TEXT, last_topics TEXT, last_type TEXT, last_data TEXT, last_private INTEGER,
  last_retry INTEGER, PRIMARY KEY (source, key)) WITHOUT ROWID;
";

fn topics_text(topics: &[String]) -> String {
    serde_json::to_string(topics).unwrap_or_else(|_| "[]".into())
}

/// `record_log` is folded into `records` once it holds this many bytes: a record changed
/// by every group is rewritten in place once per fold, not once per group, and a start
/// replays at most this much.
const FOLD_BYTES: usize = 16 << 20;

/// A record as the `records` table and the log hold it, its state still encoded.
struct RawRecord {
    state: String,
    changed_at: u64,
    last: Option<DiskEvent>,
}

/// Each record's latest logged change: its new state, or `None` once forgotten.
type Latest = HashMap<(String, String), Option<RawRecord>>;

/// Applies the changes logged in `record_log` over `latest`, oldest first, each group's
/// in its order.
fn replay_log(conn: &Connection, latest: &mut Latest) -> Result<(), DiskError> {
    let mut stmt = conn.prepare_cached("SELECT seq, changes FROM record_log ORDER BY seq")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
    for row in rows {
        let (seq, bytes) = row?;
        let group = match super::rows::decode_changes(&bytes) {
            Ok(group) => group,
            Err(e) => {
                tracing::warn!(
                    seq,
                    "ignoring an unreadable logged group of record changes: {e}"
                );
                continue;
            }
        };
        for change in group {
            match change {
                RecordChange::Put {
                    source,
                    key,
                    state,
                    changed_at,
                    last,
                } => latest.insert(
                    (source, key),
                    Some(RawRecord {
                        state,
                        changed_at,
                        last,
                    }),
                ),
                RecordChange::Forget { source, key } => latest.insert((source, key), None),
            };
        }
    }
    Ok(())
}

/// Applies the logged changes to `records` and empties the log, in the caller's
/// transaction.
fn fold(tx: &rusqlite::Transaction<'_>) -> Result<(), DiskError> {
    let mut latest = Latest::new();
    replay_log(tx, &mut latest)?;
    let mut upsert = tx.prepare_cached(
        "INSERT OR REPLACE INTO records (source, key, state, changed_at, last_id, last_topics, last_type, last_data, last_private, last_retry) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    let mut delete = tx.prepare_cached("DELETE FROM records WHERE source = ?1 AND key = ?2")?;
    for ((source, key), record) in &latest {
        match record {
            Some(r) => {
                let last = r.last.as_ref();
                upsert.execute(params![
                    source,
                    key,
                    r.state,
                    r.changed_at as i64,
                    last.map(|e| e.id.as_str()),
                    last.map(|e| topics_text(&e.topics)),
                    last.and_then(|e| e.event_type.as_deref()),
                    last.map(|e| e.data.as_str()),
                    last.map(|e| e.private as i64),
                    last.and_then(|e| e.retry.map(|r| r as i64)),
                ])?;
            }
            None => {
                delete.execute(params![source, key])?;
            }
        }
    }
    tx.execute("DELETE FROM record_log", [])?;
    Ok(())
}

/// Every stored record (the `records` table with the log's changes applied, without
/// writing), least recently changed first. Read-only, so a test can compare a running
/// store's database with its memory.
pub fn read_records(conn: &Connection) -> Result<Vec<(String, String, DiskRecord)>, DiskError> {
    // One read transaction: a fold between reading the table and reading the log would
    // otherwise lose the folded changes.
    let tx = conn.unchecked_transaction()?;
    let conn: &Connection = &tx;
    let mut all = Latest::new();
    {
        let mut stmt = conn.prepare(
            "SELECT source, key, state, changed_at, last_id, last_topics, last_type, last_data, last_private, last_retry FROM records",
        )?;
        let rows = stmt.query_map([], |r| {
            let source = r.get::<_, String>(0)?;
            let last = match r.get::<_, Option<String>>(4)? {
                Some(id) => Some(DiskEvent {
                    id,
                    topics: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
                    event_type: r.get(6)?,
                    data: r.get(7)?,
                    private: r.get::<_, i64>(8)? != 0,
                    retry: r.get::<_, Option<i64>>(9)?.map(|v| v as u64),
                    // A record's events come from its own source.
                    source: source.clone(),
                }),
                None => None,
            };
            Ok((
                (source, r.get::<_, String>(1)?),
                RawRecord {
                    state: r.get(2)?,
                    changed_at: r.get::<_, i64>(3)?.max(0) as u64,
                    last,
                },
            ))
        })?;
        for row in rows {
            let (key, record) = row?;
            all.insert(key, Some(record));
        }
    }
    replay_log(conn, &mut all)?;
    let mut records = Vec::with_capacity(all.len());
    for ((source, key), raw) in all {
        let Some(raw) = raw else { continue };
        match serde_json::from_str::<StoredRecord>(&raw.state) {
            Ok(state) => records.push((
                source,
                key,
                DiskRecord {
                    state,
                    last: raw.last,
                    changed_at: raw.changed_at,
                },
            )),
            Err(e) => {
                tracing::warn!(%source, record = %key, "ignoring an unreadable record state: {e}")
            }
        }
    }
    records.sort_by_key(|(_, _, r)| r.changed_at);
    Ok(records)
}

/// The most events one migrated batch holds.
const MIGRATED_BATCH: usize = 100;

/// Moves the one-row-per-event history of earlier versions (`events`) into `batches`,
/// in one transaction, and drops the old table: a crash during it leaves the old table
/// whole, to be moved on the next start.
fn migrate_events(conn: &Connection) -> Result<(), DiskError> {
    let old: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'events'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if old.is_none() {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    let mut runs: Vec<(i64, Vec<EventDraft>)> = Vec::new();
    {
        let mut stmt = tx.prepare(
            "SELECT seq, id, topics, type, data, private, retry, source FROM events ORDER BY seq",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                DiskEvent {
                    id: r.get(1)?,
                    topics: serde_json::from_str(&r.get::<_, String>(2)?).unwrap_or_default(),
                    event_type: r.get(3)?,
                    data: r.get(4)?,
                    private: r.get::<_, i64>(5)? != 0,
                    retry: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
                    source: r.get(7)?,
                },
            ))
        })?;
        for row in rows {
            let (seq, event) = row?;
            // A batch holds consecutive sequence numbers.
            match runs.last_mut() {
                Some((first, events))
                    if *first + events.len() as i64 == seq && events.len() < MIGRATED_BATCH =>
                {
                    events.push(event.into_draft())
                }
                _ => runs.push((seq, vec![event.into_draft()])),
            }
        }
    }
    let moved: usize = runs.iter().map(|(_, events)| events.len()).sum();
    {
        let mut insert =
            tx.prepare("INSERT INTO batches (seq, last_seq, events) VALUES (?1, ?2, ?3)")?;
        for (first, events) in &runs {
            let last = first + events.len() as i64 - 1;
            insert.execute(params![first, last, super::rows::encode(events)])?;
        }
    }
    tx.execute_batch("DROP TABLE events")?;
    tx.commit()?;
    tracing::info!(
        events = moved,
        "moved the stored history to one row per request"
    );
    Ok(())
}

impl Disk {
    /// Opens (creating) the database and reads what it holds.
    pub fn open(
        path: &Path,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<(Self, Loaded), DiskError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // Every commit is synced before relais acknowledges it.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        let mut loaded = Loaded::default();
        let mut window = VecDeque::new();
        let mut bytes_total = 0;
        let mut next_seq = 1;
        migrate_events(&conn)?;
        {
            let mut stmt =
                conn.prepare("SELECT seq, last_seq, events FROM batches ORDER BY seq")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })?;
            for row in rows {
                let (first, last, bytes) = row?;
                let events = match super::rows::decode(&bytes) {
                    Ok(events) if events.len() as i64 == last - first + 1 => events,
                    Ok(events) => {
                        tracing::warn!(
                            first,
                            last,
                            found = events.len(),
                            "ignoring a stored batch whose event count does not match"
                        );
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(first, last, "ignoring an unreadable stored batch: {e}");
                        continue;
                    }
                };
                for (seq, event) in (first..).zip(events) {
                    let size = event.size();
                    window.push_back((seq, size));
                    bytes_total += size;
                    loaded.events.push(event);
                }
                next_seq = next_seq.max(last + 1);
            }
        }
        // Folded first, so the log is decoded once and the records read from the table.
        let log_rows: i64 = conn.query_row("SELECT count(*) FROM record_log", [], |r| r.get(0))?;
        if log_rows > 0 {
            let tx = conn.unchecked_transaction()?;
            fold(&tx)?;
            tx.commit()?;
        }
        loaded.records = read_records(&conn)?;
        let mut disk = Self {
            conn,
            max_events: max_events.max(1),
            max_bytes: max_bytes.max(1),
            window,
            bytes: bytes_total,
            next_seq,
            log_bytes: 0,
            fold_bytes: FOLD_BYTES,
        };
        // Limits may have been lowered since the last run.
        let trimmed = disk.trim_plan();
        if let Some(upto) = trimmed {
            disk.conn
                .execute("DELETE FROM batches WHERE last_seq <= ?1", [upto])?;
            let keep = loaded.events.len() - disk.window.len();
            loaded.events.drain(..keep);
        }
        Ok((disk, loaded))
    }

    /// Pops the oldest events beyond the limits (keeping the newest); returns the last
    /// sequence number to delete.
    fn trim_plan(&mut self) -> Option<i64> {
        trim(
            &mut self.window,
            &mut self.bytes,
            self.max_events,
            self.max_bytes,
        )
    }

    /// Writes the rows of a group of requests, and the deletions of records evicted
    /// from memory, in one transaction, synced before it returns (group commit: one
    /// sync for every request of the group). On error nothing is written and the
    /// in-memory window is unchanged.
    pub fn commit_group(
        &mut self,
        group: &[GroupWrite<'_>],
        forget: &[(String, String)],
    ) -> Result<(), DiskError> {
        let window_len = self.window.len();
        let before = (self.bytes, self.next_seq);
        // Trimming pops from the front: keep what it pops to put back on failure.
        let mut popped = Vec::new();
        let result = self.write(group, forget, &mut popped);
        if result.is_err() {
            self.window
                .truncate(window_len.saturating_sub(popped.len()));
            for entry in popped.into_iter().rev() {
                self.window.push_front(entry);
            }
            (self.bytes, self.next_seq) = before;
        }
        result
    }

    fn write(
        &mut self,
        group: &[GroupWrite<'_>],
        forget: &[(String, String)],
        popped: &mut Vec<(i64, usize)>,
    ) -> Result<(), DiskError> {
        let tx = self.conn.transaction()?;
        let (window, bytes) = (&mut self.window, &mut self.bytes);
        let mut log_bytes = self.log_bytes;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO batches (seq, last_seq, events) VALUES (?1, ?2, ?3)",
            )?;
            for request in group {
                if request.events.is_empty() {
                    continue;
                }
                let first = self.next_seq;
                for e in request.events {
                    let size = event_size(&e.id, &e.data);
                    window.push_back((self.next_seq, size));
                    *bytes += size;
                    self.next_seq += 1;
                }
                let blob = super::rows::encode(request.events);
                insert.execute(params![first, self.next_seq - 1, blob])?;
            }
            // A record changed by several requests of the group is written once, in the
            // state the last of them left it: the transaction is atomic, so the states
            // in between are never seen on disk.
            let mut last_write: HashMap<(&str, &str), (usize, usize)> = HashMap::new();
            for (g, request) in group.iter().enumerate() {
                for (i, r) in request.records.iter().enumerate() {
                    last_write.insert((request.source, r.key.as_str()), (g, i));
                }
            }
            let mut changes = Vec::new();
            for (g, request) in group.iter().enumerate() {
                for (i, r) in request.records.iter().enumerate() {
                    if last_write.get(&(request.source, r.key.as_str())) == Some(&(g, i)) {
                        changes.push(ChangeRef::Put {
                            source: request.source,
                            key: &r.key,
                            state: &r.state_json,
                            changed_at: request.changed_at,
                            last: r.event.and_then(|i| request.events.get(i)),
                        });
                    }
                }
            }
            for (source, key) in forget {
                if !last_write.contains_key(&(source.as_str(), key.as_str())) {
                    changes.push(ChangeRef::Forget { source, key });
                }
            }
            if !changes.is_empty() {
                let blob = super::rows::encode_changes(&changes);
                log_bytes += blob.len();
                tx.prepare_cached("INSERT INTO record_log (changes) VALUES (?1)")?
                    .execute([blob])?;
            }
        }
        let mut upto = None;
        while window.len() > 1 && (window.len() > self.max_events || *bytes > self.max_bytes) {
            if let Some((seq, size)) = window.pop_front() {
                *bytes -= size;
                upto = Some(seq);
                popped.push((seq, size));
            }
        }
        if let Some(upto) = upto {
            tx.prepare_cached("DELETE FROM batches WHERE last_seq <= ?1")?
                .execute([upto])?;
        }
        if log_bytes >= self.fold_bytes {
            fold(&tx)?;
            log_bytes = 0;
        }
        tx.commit()?;
        self.log_bytes = log_bytes;
        Ok(())
    }

    /// The number of retained events on disk (tests).
    pub fn retained(&self) -> usize {
        self.window.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, value: &str, event: Option<usize>) -> RecordRow {
        let state = StoredRecord {
            values: std::sync::Arc::new([("v".to_string(), serde_json::Value::from(value))].into()),
            version: None,
        };
        RecordRow {
            key: key.into(),
            state_json: serde_json::to_string(&state).unwrap(),
            state,
            event,
        }
    }

    #[test]
    fn a_record_changed_twice_in_one_group_is_stored_as_the_later_request_left_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite");
        let (mut disk, _) = Disk::open(&path, 100, 1 << 20).unwrap();
        let first = [EventDraft::new(vec!["r/1".into()], "first")];
        let second = [
            EventDraft::new(vec!["r/2".into()], "other"),
            EventDraft::new(vec!["r/1".into()], "second"),
        ];
        let (rows1, rows2) = (
            [row("1", "a", Some(0))],
            [row("2", "x", Some(0)), row("1", "b", Some(1))],
        );
        let group = [
            GroupWrite {
                source: "s",
                events: &first,
                records: &rows1,
                changed_at: 1,
            },
            GroupWrite {
                source: "s",
                events: &second,
                records: &rows2,
                changed_at: 2,
            },
        ];
        // Record "2" was evicted from memory before this group rewrote it: it stays.
        disk.commit_group(&group, &[("s".into(), "2".into())])
            .unwrap();
        drop(disk);

        let (_, loaded) = Disk::open(&path, 100, 1 << 20).unwrap();
        let data: Vec<&str> = loaded.events.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data, ["first", "other", "second"]);
        assert_eq!(loaded.records.len(), 2);
        let (_, _, one) = loaded
            .records
            .iter()
            .find(|(s, k, _)| s == "s" && k == "1")
            .unwrap();
        assert_eq!(one.state, rows2[1].state);
        assert_eq!(one.changed_at, 2);
        let last = one.last.as_ref().unwrap();
        assert_eq!(
            (last.data.as_str(), last.topics.clone()),
            ("second", vec!["r/1".to_string()])
        );
    }

    fn request<'a>(events: &'a [EventDraft]) -> GroupWrite<'a> {
        GroupWrite {
            source: "s",
            events,
            records: &[],
            changed_at: 1,
        }
    }

    fn drafts(from: usize, n: usize) -> Vec<EventDraft> {
        (from..from + n)
            .map(|i| EventDraft::new(vec![format!("t/{i}")], format!("e{i}")))
            .collect()
    }

    #[test]
    fn a_batch_trimmed_in_part_reads_back_without_its_trimmed_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite");
        let (mut disk, _) = Disk::open(&path, 150, 1 << 20).unwrap();
        let (first, second) = (drafts(0, 100), drafts(100, 100));
        disk.commit_group(&[request(&first)], &[]).unwrap();
        disk.commit_group(&[request(&second)], &[]).unwrap();
        assert_eq!(disk.retained(), 150);
        drop(disk);

        let (mut disk, loaded) = Disk::open(&path, 150, 1 << 20).unwrap();
        let data: Vec<String> = loaded.events.iter().map(|e| e.data.clone()).collect();
        let expected: Vec<String> = (50..200).map(|i| format!("e{i}")).collect();
        assert_eq!(data, expected);
        // Sequence numbers go on after the stored ones: the first batch leaves once its
        // last event is trimmed, and the history still reads back in order.
        let third = drafts(200, 100);
        disk.commit_group(&[request(&third)], &[]).unwrap();
        drop(disk);
        let (_, loaded) = Disk::open(&path, 150, 1 << 20).unwrap();
        let data: Vec<String> = loaded.events.iter().map(|e| e.data.clone()).collect();
        let expected: Vec<String> = (150..300).map(|i| format!("e{i}")).collect();
        assert_eq!(data, expected);
        let conn = Connection::open(&path).unwrap();
        let batches: i64 = conn
            .query_row("SELECT count(*) FROM batches", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            batches, 2,
            "the first batch is deleted, the second kept in part"
        );
    }

    #[test]
    fn a_history_of_one_row_per_event_is_moved_into_batches_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite");
        {
            // The table as earlier versions wrote it.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE events (
                   seq INTEGER PRIMARY KEY, id TEXT NOT NULL, topics TEXT NOT NULL, type TEXT,
                   data TEXT NOT NULL, private INTEGER NOT NULL, retry INTEGER, source TEXT NOT NULL);",
            )
            .unwrap();
            for seq in 41..=290_i64 {
                conn.execute(
                    "INSERT INTO events VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        seq,
                        format!("id-{seq}"),
                        format!(r#"["t/{seq}","t"]"#),
                        (seq % 2 == 0).then_some("intervention"),
                        format!("data {seq}"),
                        (seq % 3 == 0) as i64,
                        (seq % 5 == 0).then_some(seq),
                        "cerema"
                    ],
                )
                .unwrap();
            }
        }
        let (mut disk, loaded) = Disk::open(&path, 1000, 1 << 20).unwrap();
        assert_eq!(loaded.events.len(), 250);
        let e = &loaded.events[9];
        assert_eq!(
            e,
            &DiskEvent {
                id: "id-50".into(),
                topics: vec!["t/50".into(), "t".into()],
                event_type: Some("intervention".into()),
                data: "data 50".into(),
                private: false,
                retry: Some(50),
                source: "cerema".into(),
            }
        );
        let next = drafts(0, 1);
        disk.commit_group(&[request(&next)], &[]).unwrap();
        drop(disk);
        let conn = Connection::open(&path).unwrap();
        let old: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'events'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old, 0, "the old table is dropped");
        let last: i64 = conn
            .query_row("SELECT max(last_seq) FROM batches", [], |r| r.get(0))
            .unwrap();
        assert_eq!(last, 291, "numbering goes on after the moved events");
        drop(conn);
        let (_, loaded) = Disk::open(&path, 1000, 1 << 20).unwrap();
        assert_eq!(loaded.events.len(), 251);
        assert_eq!(loaded.events[250].data, "e0");
    }

    fn rows_in(path: &Path, table: &str) -> i64 {
        let conn = Connection::open(path).unwrap();
        conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    fn states(loaded: &Loaded) -> Vec<(String, Option<String>)> {
        let mut states: Vec<_> = loaded
            .records
            .iter()
            .map(|(_, k, r)| {
                let v = r.state.values["v"].as_str().map(str::to_string);
                (k.clone(), v)
            })
            .collect();
        states.sort();
        states
    }

    #[test]
    fn record_changes_and_evictions_survive_through_the_log_and_its_fold() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite");
        let (mut disk, _) = Disk::open(&path, 100, 1 << 20).unwrap();
        let events = [EventDraft::new(vec!["r".into()], "e")];
        let write = |disk: &mut Disk, rows: &[RecordRow], forget: &[(String, String)]| {
            let group = [GroupWrite {
                source: "s",
                events: &events,
                records: rows,
                changed_at: 1,
            }];
            disk.commit_group(&group, forget).unwrap();
        };
        let forget = |key: &str| [("s".to_string(), key.to_string())];
        write(
            &mut disk,
            &[row("1", "a", Some(0)), row("2", "a", None)],
            &[],
        );
        write(&mut disk, &[row("1", "b", Some(0))], &forget("2"));
        write(&mut disk, &[row("3", "a", None)], &[]);
        write(&mut disk, &[], &forget("3"));
        write(&mut disk, &[row("3", "c", None)], &[]);
        assert_eq!(rows_in(&path, "records"), 0, "nothing folded yet");
        // Read back from the log alone, without writing.
        let conn = Connection::open(&path).unwrap();
        let read = Loaded {
            records: read_records(&conn).unwrap(),
            ..Loaded::default()
        };
        let expected = vec![
            ("1".to_string(), Some("b".to_string())),
            ("3".to_string(), Some("c".to_string())),
        ];
        assert_eq!(states(&read), expected);
        // The next group folds: the table holds the same, the log is empty.
        disk.fold_bytes = 1;
        write(&mut disk, &[], &forget("1"));
        assert_eq!(rows_in(&path, "record_log"), 0);
        assert_eq!(rows_in(&path, "records"), 1);
        write(&mut disk, &[row("4", "d", Some(0))], &[]);
        drop(disk);

        // A start reads the table and the log, then folds what the log held.
        let (_, loaded) = Disk::open(&path, 100, 1 << 20).unwrap();
        let expected = vec![
            ("3".to_string(), Some("c".to_string())),
            ("4".to_string(), Some("d".to_string())),
        ];
        assert_eq!(states(&loaded), expected);
        let four = loaded.records.iter().find(|(_, k, _)| k == "4").unwrap();
        assert_eq!(four.2.last.as_ref().map(|e| e.data.as_str()), Some("e"));
        assert_eq!(rows_in(&path, "record_log"), 0);
        assert_eq!(rows_in(&path, "records"), 2);
    }
}
