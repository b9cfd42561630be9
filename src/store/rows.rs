//! The compressed rows of the disk store: a request's events (`batches`) and a group's
//! record changes (`record_log`), each one value instead of a row per event or record.
//! The Redis store writes a request's events to its stream in the same encoding, one
//! stream entry per request.
//!
//! Why: the events of one webhook repeat the same field names and most of their values,
//! so a batch compresses about ten times where one event alone compresses about twice;
//! and a record rewritten in place costs the database a whole page (4 KiB) however small
//! it is. Each byte the store writes is written twice (the write-ahead log, then the
//! checkpoint) and synced before relais answers: the bytes written per event bound how
//! many webhook rows per second the disk store can acknowledge.
//!
//! Format: the values in order, each encoded with `postcard` (by position), compressed
//! as one LZ4 block with its size in front. Pure: the database is in [`super::disk`].

use serde::{Deserialize, Serialize};

use super::disk::DiskEvent;
use crate::hub::EventDraft;

/// The largest batch [`decode`] accepts once decompressed: a request's events are
/// bounded by the webhook body limit, far below this; a larger size is damage.
const MAX_DECODED: usize = 256 << 20;

/// Why a stored row could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    /// The size in front of the block is beyond [`MAX_DECODED`].
    #[error("stored row announces an impossible size")]
    Size,
    /// The LZ4 block, or the size in front of it, is damaged.
    #[error("stored row does not decompress: {0}")]
    Decompress(#[from] lz4_flex::block::DecompressError),
    /// The decompressed bytes are not what the row holds.
    #[error("stored row does not decode: {0}")]
    Decode(#[from] postcard::Error),
}

/// The fields of an event in the order [`DiskEvent`] declares them, borrowed from the
/// draft: `postcard` encodes by position, so both decode alike.
#[derive(Serialize)]
struct Stored<'a> {
    id: &'a str,
    topics: &'a [String],
    event_type: Option<&'a str>,
    data: &'a str,
    private: bool,
    retry: Option<u64>,
    source: &'a str,
}

impl<'a> Stored<'a> {
    fn of(e: &'a EventDraft) -> Self {
        Stored {
            id: &e.id,
            topics: &e.topics,
            event_type: e.event_type.as_deref(),
            data: &e.data,
            private: e.private,
            retry: e.retry,
            source: &e.source,
        }
    }
}

/// A record's change as the writer logs it, borrowed from the request that planned it.
#[derive(Serialize)]
pub enum ChangeRef<'a> {
    /// The record's new state (JSON, as in the `records` table) and last event.
    Put {
        /// The source the record belongs to.
        source: &'a str,
        /// The record key within its source.
        key: &'a str,
        /// The state, encoded.
        state: &'a str,
        /// When it changed (Unix milliseconds).
        changed_at: u64,
        /// Its new last event, if the change published one.
        #[serde(serialize_with = "last_event")]
        last: Option<&'a EventDraft>,
    },
    /// The record was evicted from memory: it is forgotten.
    Forget {
        /// The source the record belongs to.
        source: &'a str,
        /// The record key within its source.
        key: &'a str,
    },
}

fn last_event<S: serde::Serializer>(
    last: &Option<&EventDraft>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    last.map(Stored::of).serialize(serializer)
}

/// A record's change read back from the log ([`ChangeRef`] owned, variant for variant).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub enum RecordChange {
    /// See [`ChangeRef::Put`].
    Put {
        /// The source the record belongs to.
        source: String,
        /// The record key within its source.
        key: String,
        /// The state, encoded.
        state: String,
        /// When it changed (Unix milliseconds).
        changed_at: u64,
        /// Its last event.
        last: Option<DiskEvent>,
    },
    /// See [`ChangeRef::Forget`].
    Forget {
        /// The source the record belongs to.
        source: String,
        /// The record key within its source.
        key: String,
    },
}

fn compress<T: Serialize + ?Sized>(values: &T) -> Vec<u8> {
    // Strings, lists and integers always encode: postcard fails only on a full buffer,
    // and this one grows.
    let plain = postcard::to_allocvec(values).unwrap_or_default();
    lz4_flex::block::compress_prepend_size(&plain)
}

fn decompress<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, RowError> {
    let (size, block) = lz4_flex::block::uncompressed_size(bytes)?;
    if size > MAX_DECODED {
        return Err(RowError::Size);
    }
    let plain = lz4_flex::block::decompress(block, size)?;
    Ok(postcard::from_bytes(&plain)?)
}

/// Encodes a request's events, oldest first.
pub fn encode(events: &[EventDraft]) -> Vec<u8> {
    compress(&events.iter().map(Stored::of).collect::<Vec<_>>())
}

/// Reads back what [`encode`] wrote.
pub fn decode(bytes: &[u8]) -> Result<Vec<DiskEvent>, RowError> {
    decompress(bytes)
}

/// Encodes a group's record changes.
pub fn encode_changes(changes: &[ChangeRef<'_>]) -> Vec<u8> {
    compress(changes)
}

/// Reads back what [`encode_changes`] wrote.
pub fn decode_changes(bytes: &[u8]) -> Result<Vec<RecordChange>, RowError> {
    decompress(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_reads_back_as_it_was_written_and_smaller() {
        let events: Vec<EventDraft> = (0..100)
            .map(|i| {
                let mut e = EventDraft::new(
                    vec![format!("interventions/{i}"), "interventions".into()],
                    format!(r#"{{"source":"cerema","status":"En cours","comment":"passage {i}"}}"#),
                )
                .with_type("intervention")
                .with_source("cerema");
                e.retry = (i % 2 == 0).then_some(i);
                e.private = i % 3 == 0;
                e
            })
            .collect();
        let bytes = encode(&events);
        let plain: usize = events.iter().map(|e| e.data.len() + e.id.len()).sum();
        assert!(bytes.len() * 3 < plain, "{} of {plain}", bytes.len());
        let back = decode(&bytes).unwrap();
        assert_eq!(back, events.iter().map(DiskEvent::of).collect::<Vec<_>>());
    }

    #[test]
    fn damaged_bytes_are_an_error_not_a_panic() {
        let bytes = encode(&[EventDraft::new(vec!["t".into()], "d")]);
        assert!(decode(&[]).is_err());
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        let mut huge = bytes.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&huge), Err(RowError::Size)));
        let mut garbage = bytes;
        for b in garbage.iter_mut().skip(4) {
            *b = 0xff;
        }
        assert!(decode(&garbage).is_err());
    }

    #[test]
    fn record_changes_read_back_as_they_were_written() {
        let event = EventDraft::new(vec!["r/1".into()], r#"{"v":1}"#).with_type("t");
        let changes = [
            ChangeRef::Put {
                source: "s",
                key: "1",
                state: r#"{"values":{"v":1}}"#,
                changed_at: 7,
                last: Some(&event),
            },
            ChangeRef::Put {
                source: "s",
                key: "2",
                state: "{}",
                changed_at: 8,
                last: None,
            },
            ChangeRef::Forget {
                source: "s",
                key: "3",
            },
        ];
        let back = decode_changes(&encode_changes(&changes)).unwrap();
        assert_eq!(
            back,
            [
                RecordChange::Put {
                    source: "s".into(),
                    key: "1".into(),
                    state: r#"{"values":{"v":1}}"#.into(),
                    changed_at: 7,
                    last: Some(DiskEvent::of(&event)),
                },
                RecordChange::Put {
                    source: "s".into(),
                    key: "2".into(),
                    state: "{}".into(),
                    changed_at: 8,
                    last: None,
                },
                RecordChange::Forget {
                    source: "s".into(),
                    key: "3".into(),
                },
            ]
        );
    }
}
