//! Which rows of the disk store's record log still matter, kept in memory by the writer.
//!
//! Each group commit logs its record changes as one row (`record_log`). A row whose every
//! change has been overtaken by a later row (the same record written or forgotten again)
//! no longer changes what the log replays to, so it can be deleted unread. The rows that
//! still hold some record's latest change are folded into the `records` table oldest
//! first, a row at a time, once they hold more than a set number of bytes.
//!
//! Why: a record rewritten by every group (a status changing every few seconds) left the
//! log full of overtaken rows that one big fold had to read and decode, stalling the
//! writer for most of a second at a time. With this index the overtaken rows leave as
//! they are overtaken, and what is still folded is spread over the commits.
//!
//! Pure bookkeeping: the writer ([`super::disk`]) deletes and folds the rows it names.

use std::collections::{BTreeMap, HashMap};

/// A row of the log as the index sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Row {
    /// Changes in it that are still their record's latest.
    live: usize,
    /// Its size in the table, as logged.
    bytes: usize,
}

/// The log rows still holding some record's latest change, and for each record with a
/// logged change, the row holding its latest.
#[derive(Debug, Default)]
pub struct LiveLog {
    /// Per source, per record key: the row of its latest change.
    latest: HashMap<Box<str>, HashMap<Box<str>, i64>>,
    /// The live rows by sequence number, oldest first.
    rows: BTreeMap<i64, Row>,
    /// Bytes of the live rows.
    bytes: usize,
}

impl LiveLog {
    /// Notes row `seq` of `bytes`, holding changes to `records` (source, key); returns the
    /// earlier rows it leaves without a latest change, which the caller deletes.
    pub fn logged<'a>(
        &mut self,
        seq: i64,
        bytes: usize,
        records: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vec<i64> {
        let mut live = 0;
        let mut dead = Vec::new();
        for (source, key) in records {
            let keys = match self.latest.get_mut(source) {
                Some(keys) => keys,
                None => self.latest.entry(source.into()).or_default(),
            };
            let before = match keys.get_mut(key) {
                Some(row) => Some(std::mem::replace(row, seq)),
                None => {
                    keys.insert(key.into(), seq);
                    None
                }
            };
            if before == Some(seq) {
                // The same record twice in one row counts once.
                continue;
            }
            live += 1;
            if let Some(old) = before {
                if let Some(row) = self.rows.get_mut(&old) {
                    row.live -= 1;
                    if row.live == 0 {
                        self.bytes -= row.bytes;
                        self.rows.remove(&old);
                        dead.push(old);
                    }
                }
            }
        }
        if live > 0 {
            self.rows.insert(seq, Row { live, bytes });
            self.bytes += bytes;
        } else {
            dead.push(seq);
        }
        dead
    }

    /// Bytes of the live rows: what a start would replay.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The oldest live row, next to fold.
    pub fn oldest(&self) -> Option<i64> {
        self.rows.keys().next().copied()
    }

    /// Whether row `seq` holds the latest change of `source`/`key`; if so, the record
    /// leaves the index (its change is being folded into the table).
    pub fn take_latest(&mut self, seq: i64, source: &str, key: &str) -> bool {
        let Some(keys) = self.latest.get_mut(source) else {
            return false;
        };
        if keys.get(key) != Some(&seq) {
            return false;
        }
        keys.remove(key);
        if keys.is_empty() {
            self.latest.remove(source);
        }
        if let Some(row) = self.rows.get_mut(&seq) {
            row.live = row.live.saturating_sub(1);
        }
        true
    }

    /// Row `seq` has been folded (or dropped unreadable): it leaves the index, with any
    /// record whose latest change it still held.
    pub fn folded(&mut self, seq: i64) {
        if let Some(row) = self.rows.remove(&seq) {
            self.bytes -= row.bytes;
            if row.live > 0 {
                for keys in self.latest.values_mut() {
                    keys.retain(|_, s| *s != seq);
                }
                self.latest.retain(|_, keys| !keys.is_empty());
            }
        }
    }

    /// Records with a logged change (tests).
    pub fn records(&self) -> usize {
        self.latest.values().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_dies_once_every_record_in_it_is_written_again() {
        let mut log = LiveLog::default();
        assert!(log.logged(1, 100, [("s", "a"), ("s", "b")]).is_empty());
        assert!(log.logged(2, 50, [("s", "a")]).is_empty());
        assert_eq!(log.bytes(), 150);
        // "b" written again: row 1 holds nothing current any more.
        assert_eq!(log.logged(3, 60, [("s", "b"), ("t", "a")]), [1]);
        assert_eq!(log.bytes(), 110);
        assert_eq!(log.oldest(), Some(2));
        assert_eq!(log.records(), 3);
    }

    #[test]
    fn sources_keep_their_keys_apart_and_a_key_twice_in_a_row_counts_once() {
        let mut log = LiveLog::default();
        log.logged(1, 10, [("s", "a"), ("t", "a"), ("s", "a")]);
        assert_eq!(log.logged(2, 10, [("s", "a")]), Vec::<i64>::new());
        assert_eq!(log.logged(3, 10, [("t", "a")]), [1]);
    }

    #[test]
    fn folding_takes_only_the_changes_still_latest() {
        let mut log = LiveLog::default();
        log.logged(1, 100, [("s", "a"), ("s", "b")]);
        log.logged(2, 100, [("s", "b")]);
        assert!(log.take_latest(1, "s", "a"));
        assert!(!log.take_latest(1, "s", "b"), "b's latest is in row 2");
        assert!(!log.take_latest(1, "s", "a"), "taken once");
        log.folded(1);
        assert_eq!(
            (log.bytes(), log.oldest(), log.records()),
            (100, Some(2), 1)
        );
        // "a" is in the table now: writing it again kills no row.
        assert!(log.logged(3, 10, [("s", "a")]).is_empty());
    }

    #[test]
    fn a_row_dropped_unread_takes_its_records_out_of_the_index() {
        let mut log = LiveLog::default();
        log.logged(1, 100, [("s", "a"), ("s", "b")]);
        log.logged(2, 100, [("s", "c")]);
        log.folded(1);
        assert_eq!(log.records(), 1);
        assert!(!log.take_latest(1, "s", "a"));
    }

    #[test]
    fn a_row_with_no_change_is_dead_at_once() {
        let mut log = LiveLog::default();
        log.logged(1, 10, [("s", "a")]);
        assert_eq!(log.logged(2, 10, [("s", "a"), ("s", "a")]), [1]);
        assert_eq!(log.logged(3, 10, std::iter::empty()), [3]);
        assert_eq!(log.bytes(), 10);
    }
}
