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
//! - `records`: the state and last event of each record as of its last fold. A log row
//!   whose every change a later row overtook is deleted unread, in the transaction that
//!   overtakes it ([`super::live_log`] tracks which rows still hold a latest change).
//!   Once the rows left hold more than 16 MiB ([`FOLD_BYTES`]), the oldest are folded
//!   into the table, a row at a time in each group's own transaction: a record changed
//!   by every request is rewritten in place rarely, if ever, and no commit waits for a
//!   whole log to be folded. Opening the database folds what the log still holds, then
//!   reads the table.
//!
//! Databases of earlier versions kept one row per event in `events`: opening one moves
//! those rows into `batches`, once.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::live_log::LiveLog;
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
    /// The log rows still holding some record's latest change; `None` after a failed
    /// transaction, read again from the log before the next one.
    live: Option<LiveLog>,
    /// The oldest live rows are folded while they hold more than this many bytes
    /// ([`FOLD_BYTES`]; lower in tests).
    fold_bytes: usize,
    /// Pages in the write-ahead log after the last commit (its WAL hook's count).
    wal_pages: u32,
}

/// The write-ahead log is copied into the database once it holds this many pages
/// (4 KiB each): SQLite's own default, but run by the writer after it has handed the
/// group on ([`Disk::checkpoint_if_due`]) instead of inside the commit, where its
/// `fsync` of the database (16 ms to over 200 ms on this project's machines) delayed
/// the requests of that commit and, at a few events per second, the next ones.
const CHECKPOINT_PAGES: u32 = 1000;

thread_local! {
    /// The page count SQLite's WAL hook reports, read back by [`Disk::write`] right
    /// after its commit. The hook is called on the committing thread, within the
    /// commit, and can only be a plain function: a thread-local is its way out.
    static WAL_PAGES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Records the log's size after each commit. Registering it replaces SQLite's
/// automatic checkpoint, which is itself a WAL hook.
fn note_wal_pages(_: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_PAGES.with(|p| p.set(u32::try_from(pages).unwrap_or(0)));
    Ok(())
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

/// The live rows of `record_log` (those still holding some record's latest change) are
/// folded into `records`, oldest first, while they hold more than this many bytes: a
/// record changed again within that much log is never rewritten in place, and a start
/// replays about this much at most.
const FOLD_BYTES: usize = 16 << 20;

/// A record as the `records` table and the log hold it, its state still encoded.
struct RawRecord {
    state: String,
    changed_at: u64,
    last: Option<DiskEvent>,
}

/// Each record's latest logged change: its new state, or `None` once forgotten.
type Latest = HashMap<(String, String), Option<RawRecord>>;

/// A logged change as the key it is for and the state it leaves (`None`: forgotten).
fn split(change: RecordChange) -> ((String, String), Option<RawRecord>) {
    match change {
        RecordChange::Put {
            source,
            key,
            state,
            changed_at,
            last,
        } => (
            (source, key),
            Some(RawRecord {
                state,
                changed_at,
                last,
            }),
        ),
        RecordChange::Forget { source, key } => ((source, key), None),
    }
}

/// Reads and decodes the logged row `seq`; `None` if it is unreadable (with a warning:
/// what cannot be read cannot be applied).
fn decode_row(seq: i64, bytes: &[u8]) -> Option<Vec<RecordChange>> {
    match super::rows::decode_changes(bytes) {
        Ok(group) => Some(group),
        Err(e) => {
            tracing::warn!(
                seq,
                "ignoring an unreadable logged group of record changes: {e}"
            );
            None
        }
    }
}

/// Applies the changes logged in `record_log` over `latest`, oldest first, each group's
/// in its order.
fn replay_log(conn: &Connection, latest: &mut Latest) -> Result<(), DiskError> {
    let mut stmt = conn.prepare_cached("SELECT seq, changes FROM record_log ORDER BY seq")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
    for row in rows {
        let (seq, bytes) = row?;
        for change in decode_row(seq, &bytes).unwrap_or_default() {
            let (key, record) = split(change);
            latest.insert(key, record);
        }
    }
    Ok(())
}

/// The live rows of the log, read from it (after a failed transaction, whose changes to
/// the index were not written), and the rows that hold no latest change or cannot be
/// read: replaying the log gives the same records without them.
fn read_live(conn: &Connection) -> Result<(LiveLog, Vec<i64>), DiskError> {
    let mut live = LiveLog::default();
    let mut dead = Vec::new();
    let mut stmt = conn.prepare_cached("SELECT seq, changes FROM record_log ORDER BY seq")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
    for row in rows {
        let (seq, bytes) = row?;
        let Some(group) = decode_row(seq, &bytes) else {
            dead.push(seq);
            continue;
        };
        let keys = group.iter().map(|c| match c {
            RecordChange::Put { source, key, .. } | RecordChange::Forget { source, key } => {
                (source.as_str(), key.as_str())
            }
        });
        dead.extend(live.logged(seq, bytes.len(), keys));
    }
    Ok((live, dead))
}

/// Writes a record's folded state into `records`, or deletes it (`None`: forgotten).
fn put_record(
    conn: &Connection,
    source: &str,
    key: &str,
    record: Option<&RawRecord>,
) -> Result<(), DiskError> {
    match record {
        Some(r) => {
            let last = r.last.as_ref();
            conn.prepare_cached(
                "INSERT OR REPLACE INTO records (source, key, state, changed_at, last_id, last_topics, last_type, last_data, last_private, last_retry) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
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
            conn.prepare_cached("DELETE FROM records WHERE source = ?1 AND key = ?2")?
                .execute(params![source, key])?;
        }
    }
    Ok(())
}

/// Applies the whole log to `records` and empties it, in the caller's transaction (on
/// open).
fn fold(tx: &rusqlite::Transaction<'_>) -> Result<(), DiskError> {
    let mut latest = Latest::new();
    replay_log(tx, &mut latest)?;
    for ((source, key), record) in &latest {
        put_record(tx, source, key, record.as_ref())?;
    }
    tx.execute("DELETE FROM record_log", [])?;
    Ok(())
}

/// Folds the log row `seq` into `records`: the changes in it that are still their
/// record's latest are written, the others skipped (a later row holds them), and the
/// row is deleted.
fn fold_row(conn: &Connection, live: &mut LiveLog, seq: i64) -> Result<(), DiskError> {
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached("SELECT changes FROM record_log WHERE seq = ?1")?
        .query_row([seq], |r| r.get(0))
        .optional()?;
    let group = bytes.and_then(|bytes| decode_row(seq, &bytes));
    for change in group.unwrap_or_default() {
        let ((source, key), record) = split(change);
        if live.take_latest(seq, &source, &key) {
            put_record(conn, &source, &key, record.as_ref())?;
        }
    }
    conn.prepare_cached("DELETE FROM record_log WHERE seq = ?1")?
        .execute([seq])?;
    live.folded(seq);
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
        // No checkpoint inside a commit: the writer runs them between groups.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.wal_hook(Some(note_wal_pages));
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
            live: Some(LiveLog::default()),
            fold_bytes: FOLD_BYTES,
            wal_pages: 0,
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
        // The index leaves while the transaction may fail: it changes with it.
        let mut live = match self.live.take() {
            Some(live) => live,
            None => {
                let (live, dead) = read_live(&tx)?;
                for seq in dead {
                    tx.prepare_cached("DELETE FROM record_log WHERE seq = ?1")?
                        .execute([seq])?;
                }
                live
            }
        };
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
                let size = blob.len();
                tx.prepare_cached("INSERT INTO record_log (changes) VALUES (?1)")?
                    .execute([blob])?;
                let seq = tx.last_insert_rowid();
                let keys = changes.iter().map(|c| match c {
                    ChangeRef::Put { source, key, .. } | ChangeRef::Forget { source, key } => {
                        (*source, *key)
                    }
                });
                for dead in live.logged(seq, size, keys) {
                    tx.prepare_cached("DELETE FROM record_log WHERE seq = ?1")?
                        .execute([dead])?;
                }
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
        while live.bytes() > self.fold_bytes {
            let Some(oldest) = live.oldest() else { break };
            fold_row(&tx, &mut live, oldest)?;
        }
        tx.commit()?;
        self.wal_pages = WAL_PAGES.with(|p| p.get());
        self.live = Some(live);
        Ok(())
    }

    /// Copies the write-ahead log into the database once it holds
    /// [`CHECKPOINT_PAGES`], without waiting for anything (SQLite's passive
    /// checkpoint). The writer calls it after handing a group on, so no request waits
    /// for the database's `fsync` inside its commit; the next commit then starts the
    /// log again from its beginning, keeping its file from growing. Returns whether
    /// it ran. A failed checkpoint loses nothing: the log still holds every commit,
    /// and the next call tries again.
    pub fn checkpoint_if_due(&mut self) -> Result<bool, DiskError> {
        if self.wal_pages < CHECKPOINT_PAGES {
            return Ok(false);
        }
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        self.wal_pages = 0;
        Ok(true)
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

    /// One group writing `puts` (key, value) and forgetting `forgets`, for source "s".
    fn write_group(disk: &mut Disk, puts: &[(String, String)], forgets: &[String]) {
        let events = [EventDraft::new(vec!["r".into()], "e")];
        let rows: Vec<RecordRow> = puts.iter().map(|(k, v)| row(k, v, Some(0))).collect();
        let forget: Vec<(String, String)> = forgets
            .iter()
            .map(|k| ("s".to_string(), k.clone()))
            .collect();
        let group = [GroupWrite {
            source: "s",
            events: &events,
            records: &rows,
            changed_at: 1,
        }];
        disk.commit_group(&group, &forget).unwrap();
    }

    fn stored(path: &Path) -> Vec<(String, Option<String>)> {
        let conn = Connection::open(path).unwrap();
        let read = Loaded {
            records: read_records(&conn).unwrap(),
            ..Loaded::default()
        };
        states(&read)
    }

    #[test]
    fn a_log_row_leaves_unread_once_later_rows_overtook_every_change_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite");
        let (mut disk, _) = Disk::open(&path, 100, 1 << 20).unwrap();
        let put = |k: &str, v: &str| (k.to_string(), v.to_string());
        write_group(&mut disk, &[put("a", "1"), put("b", "1")], &[]);
        write_group(&mut disk, &[put("a", "2")], &[]);
        assert_eq!(rows_in(&path, "record_log"), 2);
        // "b" forgotten: the first row holds nothing current any more.
        write_group(&mut disk, &[], &["b".to_string()]);
        assert_eq!(rows_in(&path, "record_log"), 2);
        write_group(&mut disk, &[put("a", "3")], &[]);
        assert_eq!(rows_in(&path, "record_log"), 2, "the row of a=2 left too");
        assert_eq!(
            rows_in(&path, "records"),
            0,
            "nothing folded: the log is small"
        );
        assert_eq!(stored(&path), [("a".to_string(), Some("3".to_string()))]);
    }

    #[test]
    fn the_oldest_live_rows_are_folded_one_at_a_time_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite");
        let (mut disk, _) = Disk::open(&path, 100, 1 << 20).unwrap();
        let put = |k: &str| (k.to_string(), format!("{k}-value"));
        write_group(&mut disk, &[put("a")], &[]);
        let one_row = disk.live.as_ref().unwrap().bytes();
        // Room for two rows of this size.
        disk.fold_bytes = one_row * 2 + one_row / 2;
        write_group(&mut disk, &[put("b")], &[]);
        assert_eq!(rows_in(&path, "records"), 0);
        write_group(&mut disk, &[put("c")], &[]);
        assert_eq!(
            (rows_in(&path, "records"), rows_in(&path, "record_log")),
            (1, 2),
            "the oldest row, and only it, is folded"
        );
        write_group(&mut disk, &[put("d")], &[]);
        assert_eq!(
            (rows_in(&path, "records"), rows_in(&path, "record_log")),
            (2, 2)
        );
        let expected: Vec<_> = ["a", "b", "c", "d"]
            .iter()
            .map(|k| (k.to_string(), Some(format!("{k}-value"))))
            .collect();
        assert_eq!(stored(&path), expected);
    }

    #[test]
    fn a_failed_transaction_leaves_the_log_index_as_the_database_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite");
        let (mut disk, _) = Disk::open(&path, 100, 1 << 20).unwrap();
        let put = |k: &str, v: &str| (k.to_string(), v.to_string());
        write_group(&mut disk, &[put("a", "1"), put("b", "1")], &[]);
        // The group that overtakes the first row fails as it deletes that row, after
        // the index noted it: the row stays, and the index must say so.
        disk.conn
            .execute_batch(
                "CREATE TEMP TRIGGER fail BEFORE DELETE ON record_log
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
            )
            .unwrap();
        let events = [EventDraft::new(vec!["r".into()], "e")];
        let rows = [row("a", "2", Some(0)), row("b", "2", Some(0))];
        let group = [GroupWrite {
            source: "s",
            events: &events,
            records: &rows,
            changed_at: 1,
        }];
        let failed = disk.commit_group(&group, &[]).unwrap_err();
        assert!(failed.to_string().contains("injected"), "{failed}");
        disk.conn.execute_batch("DROP TRIGGER fail").unwrap();
        // The next group folds every row: the first one's changes are still current.
        disk.fold_bytes = 0;
        write_group(&mut disk, &[put("c", "1")], &[]);
        assert_eq!(rows_in(&path, "record_log"), 0);
        let one = |k: &str| (k.to_string(), Some("1".to_string()));
        assert_eq!(rows_in(&path, "records"), 3);
        assert_eq!(stored(&path), [one("a"), one("b"), one("c")]);
    }

    /// `n` characters LZ4 cannot shrink (hex of a xorshift sequence), so each event
    /// writes its size to the log.
    fn noise(seed: u64, n: usize) -> String {
        let mut x = seed | 1;
        let mut out = String::with_capacity(n + 16);
        while out.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.push_str(&format!("{x:016x}"));
        }
        out.truncate(n);
        out
    }

    #[test]
    fn the_log_is_copied_into_the_database_between_commits_not_inside_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite");
        let (mut disk, _) = Disk::open(&path, 10_000, 1 << 30).unwrap();
        let db_len = || std::fs::metadata(&path).unwrap().len();
        // 60 events of 100 KB: about 1,500 pages of log, past the limit.
        for i in 0..60 {
            let events = [EventDraft::new(vec!["t".into()], noise(i, 100_000))];
            disk.commit_group(&[request(&events)], &[]).unwrap();
        }
        assert!(
            db_len() < 1 << 20,
            "no commit copied the log into the database ({} bytes)",
            db_len()
        );
        assert!(
            disk.wal_pages >= CHECKPOINT_PAGES,
            "{} pages",
            disk.wal_pages
        );
        assert!(disk.checkpoint_if_due().unwrap());
        assert!(db_len() > 5 << 20, "copied: {} bytes", db_len());
        assert!(!disk.checkpoint_if_due().unwrap(), "nothing left to copy");
        // The next commit starts the log from its beginning.
        let events = [EventDraft::new(vec!["t".into()], "after")];
        disk.commit_group(&[request(&events)], &[]).unwrap();
        assert!(disk.wal_pages < 50, "{} pages", disk.wal_pages);
        drop(disk);
        let (_, loaded) = Disk::open(&path, 10_000, 1 << 30).unwrap();
        assert_eq!(loaded.events.len(), 61);
        assert_eq!(loaded.events[60].data, "after");
        assert_eq!(loaded.events[7].data, noise(7, 100_000));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever the groups write and forget, and however small the fold limit, the
        /// database reads back (running, then reopened) as the groups left the records.
        #[test]
        fn the_log_and_its_folds_read_back_as_the_groups_left_the_records(
            groups in proptest::collection::vec(
                (
                    proptest::collection::vec((0..12u8, 0..4u8), 0..6),
                    proptest::collection::vec(0..12u8, 0..3),
                ),
                1..40,
            ),
            fold_rows in 0..6usize,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("store.sqlite");
            let (mut disk, _) = Disk::open(&path, 100, 1 << 20).unwrap();
            // Rows are 60-100 bytes: a limit of a few rows folds often.
            disk.fold_bytes = fold_rows * 80;
            let mut model = std::collections::BTreeMap::new();
            for (puts, forgets) in &groups {
                let puts: Vec<(String, String)> =
                    puts.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                let forgets: Vec<String> = forgets.iter().map(|k| k.to_string()).collect();
                write_group(&mut disk, &puts, &forgets);
                // As the writer does: a record written by the group is not forgotten.
                for k in &forgets {
                    if !puts.iter().any(|(p, _)| p == k) {
                        model.remove(k);
                    }
                }
                for (k, v) in puts {
                    model.insert(k, Some(v));
                }
                let expected: Vec<_> = model.clone().into_iter().collect();
                proptest::prop_assert_eq!(stored(&path), expected);
            }
            drop(disk);
            let (_, loaded) = Disk::open(&path, 100, 1 << 20).unwrap();
            let expected: Vec<_> = model.into_iter().collect();
            proptest::prop_assert_eq!(states(&loaded), expected);
        }
    }
}
