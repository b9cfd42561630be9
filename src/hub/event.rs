//! Events as the hub carries them: the publisher's draft, and the committed event with
//! its SSE frame encoded once and shared by every subscriber.

use std::time::Instant;

use bytes::Bytes;

use super::sse;

/// An update before the hub commits it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventDraft {
    /// Unique ID (the publisher's, or generated).
    pub id: String,
    /// Topics the update belongs to (at least one).
    pub topics: Vec<String>,
    /// SSE `event:` type, if any.
    pub event_type: Option<String>,
    /// Payload (may span several lines).
    pub data: String,
    /// Private updates reach only subscribers whose claims match one of the topics.
    pub private: bool,
    /// Reconnection delay to announce with this event, in milliseconds.
    pub retry: Option<u64>,
    /// Who produced it (`mercure` for the publish endpoint, else the webhook source name),
    /// for metrics.
    pub source: String,
}

impl EventDraft {
    /// A public update with a generated ID.
    pub fn new(topics: Vec<String>, data: impl Into<String>) -> Self {
        Self {
            id: generate_id(),
            topics,
            event_type: None,
            data: data.into(),
            private: false,
            retry: None,
            source: "mercure".into(),
        }
    }

    /// Sets the ID.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Sets the SSE event type.
    pub fn with_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }

    /// Sets the source label.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// Marks the update private.
    pub fn private(mut self, private: bool) -> Self {
        self.private = private;
        self
    }
}

/// A new event ID: `urn:uuid:` and a UUIDv7, so IDs sort by creation time.
pub fn generate_id() -> String {
    format!("urn:uuid:{}", uuid::Uuid::now_v7())
}

/// Event types that get their own metric series: the types relais produces itself and
/// those of the configured sources. Any other `type` (a publisher chooses it freely) is
/// counted as `other`, so metric series stay bounded.
static KNOWN_TYPES: std::sync::OnceLock<std::collections::HashSet<String>> =
    std::sync::OnceLock::new();

/// The types relais always knows.
const BUILTIN_TYPES: &[&str] = &["message", "intervention", "module"];

/// Declares the configured sources' event types (once, at start-up).
pub fn set_known_types<'a>(types: impl IntoIterator<Item = &'a str>) {
    let mut set: std::collections::HashSet<String> =
        BUILTIN_TYPES.iter().map(|t| t.to_string()).collect();
    set.extend(types.into_iter().map(str::to_string));
    let _ = KNOWN_TYPES.set(set);
}

/// The `type` label of an event type: itself when known, else `other`.
pub fn type_label(event_type: Option<&str>) -> &str {
    let t = event_type.unwrap_or("message");
    let known = match KNOWN_TYPES.get() {
        Some(set) => set.contains(t),
        None => BUILTIN_TYPES.contains(&t),
    };
    if known {
        t
    } else {
        "other"
    }
}

/// The `relais_events_out_total` counter of a source and event type.
pub fn delivery_counter(source: &str, event_type: Option<&str>) -> metrics::Counter {
    metrics::counter!(
        "relais_events_out_total",
        "source" => source.to_string(),
        "type" => type_label(event_type).to_string(),
    )
}

/// An event's data, kept once: for one-line data (every normalized event's JSON) it is
/// the slice of the SSE frame that holds it, so history does not store it twice; other
/// data keeps its own copy. Reads as `&str`.
#[derive(Debug, Clone)]
pub struct Payload(Bytes);

impl Payload {
    /// The data within `frame` when the frame ends with `data: <data>\n\n`, else a copy.
    fn within(frame: &Bytes, data: String) -> Self {
        let tail = data.len() + 2;
        let start = frame.len().saturating_sub(tail);
        let shared = frame.len() >= tail + 6
            && frame[start - 6..start] == *b"data: "
            && frame[start..frame.len() - 2] == *data.as_bytes()
            && frame.ends_with(b"\n\n");
        if shared {
            Payload(frame.slice(start..frame.len() - 2))
        } else {
            Payload(Bytes::from(data))
        }
    }

    /// Whether the data shares the frame's bytes (tests).
    pub fn shares(&self, frame: &Bytes) -> bool {
        let (f, d) = (frame.as_ptr() as usize, self.0.as_ptr() as usize);
        d >= f && d + self.0.len() <= f + frame.len()
    }
}

impl std::ops::Deref for Payload {
    type Target = str;
    fn deref(&self) -> &str {
        // Built from a `String` (or a slice of one at line boundaries): always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl PartialEq<String> for Payload {
    fn eq(&self, other: &String) -> bool {
        *self.0 == *other.as_bytes()
    }
}

impl PartialEq<&str> for Payload {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == *other.as_bytes()
    }
}

impl std::fmt::Display for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

/// A committed event.
#[derive(Debug)]
pub struct Event {
    /// Position in this hub's history (1, 2, ...).
    pub seq: u64,
    /// Unique ID, sent as `id:`.
    pub id: String,
    /// Topics.
    pub topics: Vec<String>,
    /// `event:` type.
    pub event_type: Option<String>,
    /// Payload (shared with `frame` when it is one line).
    pub data: Payload,
    /// Private update.
    pub private: bool,
    /// Producer, for metrics.
    pub source: String,
    /// The complete SSE frame, encoded once.
    pub frame: Bytes,
    /// When the hub committed it, for the delivery latency histogram.
    pub committed_at: Instant,
    /// Counts deliveries of this event to subscribers (`relais_events_out_total`).
    pub delivered: metrics::Counter,
}

impl Event {
    /// Commits a draft at position `seq`.
    pub fn new(seq: u64, draft: EventDraft) -> Self {
        let delivered = delivery_counter(&draft.source, draft.event_type.as_deref());
        Self::with_counter(seq, draft, delivered)
    }

    /// Commits a draft with the delivery counter of its source and type already looked
    /// up (the hub keeps them, so that an event costs no registry lookup).
    pub fn with_counter(seq: u64, draft: EventDraft, delivered: metrics::Counter) -> Self {
        let frame = sse::encode_event(
            &draft.id,
            draft.event_type.as_deref(),
            draft.retry,
            &draft.data,
        );
        Self {
            seq,
            id: draft.id,
            topics: draft.topics,
            event_type: draft.event_type,
            data: Payload::within(&frame, draft.data),
            private: draft.private,
            source: draft.source,
            frame,
            committed_at: Instant::now(),
            delivered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_data_is_kept_once_inside_the_frame() {
        let one = Event::new(
            1,
            EventDraft::new(vec!["t".into()], r#"{"a":1}"#)
                .with_id("x")
                .with_type("y"),
        );
        assert_eq!(one.data, r#"{"a":1}"#);
        assert!(one.data.shares(&one.frame), "no second copy");
        let lines = Event::new(2, EventDraft::new(vec!["t".into()], "a\nb").with_id("z"));
        assert_eq!(&*lines.data, "a\nb");
        assert!(!lines.data.shares(&lines.frame));
        let empty = Event::new(3, EventDraft::new(vec!["t".into()], "").with_id("e"));
        assert_eq!(empty.data, "");
    }
}
