//! How the disk store writes one request's events: a single compressed value per
//! request, not a row per event.
//!
//! Why: the events of one webhook repeat the same field names and most of their values,
//! so the batch compresses about ten times where one event alone compresses about
//! twice. Each byte the store writes is written twice (the write-ahead log, then the
//! checkpoint) and synced before relais answers: the bytes written per event bound how
//! many webhook rows per second the disk store can acknowledge.
//!
//! Format: the events in order, each encoded with `postcard` (ID, topics, type, data,
//! privacy, retry, source), compressed as one LZ4 block with its size in front. Pure:
//! the database is in [`super::disk`].

use serde::Serialize;

use super::disk::DiskEvent;
use crate::hub::EventDraft;

/// The largest batch [`decode`] accepts once decompressed: a request's events are
/// bounded by the webhook body limit, far below this; a larger size is damage.
const MAX_DECODED: usize = 256 << 20;

/// Why a stored batch could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The size in front of the block is missing or beyond [`MAX_DECODED`].
    #[error("stored batch announces an impossible size")]
    Size,
    /// The LZ4 block is damaged.
    #[error("stored batch does not decompress: {0}")]
    Decompress(#[from] lz4_flex::block::DecompressError),
    /// The decompressed bytes are not a list of events.
    #[error("stored batch does not decode: {0}")]
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

/// Encodes a request's events, oldest first.
pub fn encode(events: &[EventDraft]) -> Vec<u8> {
    let stored: Vec<Stored<'_>> = events
        .iter()
        .map(|e| Stored {
            id: &e.id,
            topics: &e.topics,
            event_type: e.event_type.as_deref(),
            data: &e.data,
            private: e.private,
            retry: e.retry,
            source: &e.source,
        })
        .collect();
    // Strings, lists and integers always encode: postcard fails only on a full buffer,
    // and this one grows.
    let plain = postcard::to_allocvec(&stored).unwrap_or_default();
    lz4_flex::block::compress_prepend_size(&plain)
}

/// Reads back what [`encode`] wrote.
pub fn decode(bytes: &[u8]) -> Result<Vec<DiskEvent>, BatchError> {
    let Some((size, block)) = bytes
        .split_first_chunk::<4>()
        .map(|(size, block)| (u32::from_le_bytes(*size) as usize, block))
    else {
        return Err(BatchError::Size);
    };
    if size > MAX_DECODED {
        return Err(BatchError::Size);
    }
    let plain = lz4_flex::block::decompress(block, size)?;
    Ok(postcard::from_bytes(&plain)?)
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
        assert!(matches!(decode(&huge), Err(BatchError::Size)));
        let mut garbage = bytes;
        for b in garbage.iter_mut().skip(4) {
            *b = 0xff;
        }
        assert!(decode(&garbage).is_err());
    }
}
