//! The hub: topics, history and fan-out.
//!
//! Every event is committed once under a lock that assigns it the next sequence number,
//! appends it to the bounded [`History`] and sends it on a broadcast ring shared by all
//! subscribers. A subscriber registers under the same lock, so the history snapshot it
//! replays and the live events it then receives meet exactly: no gap, no duplicate.
//!
//! The broadcast ring is the per-subscriber queue: a subscriber that falls more than
//! `hub.subscriber_backlog` events behind is told it lagged and is disconnected, without
//! slowing anyone else; it reconnects and resumes from its last ID.

pub mod event;
pub mod history;
pub mod selector;
pub mod sse;
pub mod subscription;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

pub use event::{Event, EventDraft};
pub use history::{History, Replay, ResumeFrom};
pub use selector::Selector;
pub use subscription::Subscription;

/// The fan-out point of one relais process.
pub struct Hub {
    inner: Mutex<HubInner>,
    sender: broadcast::Sender<Arc<Event>>,
}

struct HubInner {
    next_seq: u64,
    history: History,
    /// Delivery counters by source, then type: few distinct pairs, many events, so a
    /// lookup borrows the draft's strings and allocates nothing once a pair is known.
    counters: HashMap<String, HashMap<Option<String>, metrics::Counter>>,
}

/// What a new subscriber gets: the events to replay, then the live receiver.
pub struct Attach {
    /// Retained events after the requested ID (or all of them), oldest first.
    pub replay: Vec<Arc<Event>>,
    /// Set when the requested ID was not (or no longer) retained: the replay starts from
    /// the oldest retained event and the client must reload its snapshot.
    pub history_gap: bool,
    /// Live events committed after the replay.
    pub live: broadcast::Receiver<Arc<Event>>,
}

/// Why an event could not be committed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommitError {
    /// The publisher chose an ID that is already in the history.
    #[error("an event with id {0:?} is already retained; event IDs must be unique")]
    DuplicateId(String),
}

impl Hub {
    /// A hub retaining `history_size` events, letting subscribers lag by
    /// `subscriber_backlog` events.
    pub fn new(history_size: usize, subscriber_backlog: usize) -> Self {
        let (sender, _) = broadcast::channel(subscriber_backlog.max(1));
        Self {
            inner: Mutex::new(HubInner {
                next_seq: 1,
                history: History::new(history_size),
                counters: HashMap::new(),
            }),
            sender,
        }
    }

    /// Also bounds the history by bytes (`hub.history_bytes`).
    pub fn with_history_bytes(self, max_bytes: usize) -> Self {
        self.lock().history.set_max_bytes(max_bytes);
        self
    }

    /// The retained event with this ID (idempotent publishing, snapshots).
    pub fn get(&self, id: &str) -> Option<Arc<Event>> {
        self.lock().history.get(id).cloned()
    }

    /// The ID of the last committed event still retained (a snapshot's `lastEventID`).
    pub fn last_id(&self) -> Option<String> {
        self.lock().history.last_id().map(str::to_string)
    }

    /// Bytes of event data and IDs retained (see `hub.history_bytes`).
    pub fn retained_bytes(&self) -> usize {
        self.lock().history.bytes()
    }

    /// Commits an event: gives it its sequence number, retains it and fans it out.
    pub fn commit(&self, draft: EventDraft) -> Result<Arc<Event>, CommitError> {
        let mut inner = self.lock();
        if inner.history.contains(&draft.id) {
            return Err(CommitError::DuplicateId(draft.id));
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let known = inner
            .counters
            .get(&draft.source)
            .and_then(|by_type| by_type.get(&draft.event_type))
            .cloned();
        let counter = match known {
            Some(counter) => counter,
            None => {
                let counter = event::delivery_counter(&draft.source, draft.event_type.as_deref());
                inner
                    .counters
                    .entry(draft.source.clone())
                    .or_default()
                    .insert(draft.event_type.clone(), counter.clone());
                counter
            }
        };
        let event = Arc::new(Event::with_counter(seq, draft, counter));
        inner.history.push(event.clone());
        // No receiver is not an error: the event is still retained for later resumes.
        let _ = self.sender.send(event.clone());
        Ok(event)
    }

    /// Registers a subscriber resuming from `from`.
    pub fn attach(&self, from: &ResumeFrom) -> Attach {
        let inner = self.lock();
        let live = self.sender.subscribe();
        let Replay { events, gap } = inner.history.replay(from);
        Attach {
            replay: events,
            history_gap: gap,
            live,
        }
    }

    /// Number of events currently retained.
    pub fn retained(&self) -> usize {
        self.lock().history.len()
    }

    /// Whether an event with this ID is retained.
    pub fn retains(&self, id: &str) -> bool {
        self.lock().history.contains(id)
    }

    /// Number of live receivers (connected subscribers).
    pub fn receiver_count(&self) -> usize {
        self.sender.receiver_count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubInner> {
        // A panic while holding the lock cannot leave the history half-updated (push is
        // the last step), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(id: &str) -> EventDraft {
        EventDraft::new(vec!["t".into()], "x").with_id(id)
    }

    #[test]
    fn attach_then_commit_has_no_gap_and_no_duplicate() {
        let hub = Hub::new(10, 16);
        hub.commit(draft("a")).unwrap();
        hub.commit(draft("b")).unwrap();
        let mut att = hub.attach(&ResumeFrom::After("a".into()));
        assert_eq!(
            att.replay.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        assert!(!att.history_gap);
        hub.commit(draft("c")).unwrap();
        assert_eq!(att.live.try_recv().unwrap().id, "c");
        assert!(att.live.try_recv().is_err());
    }

    #[test]
    fn duplicate_publisher_ids_are_refused() {
        let hub = Hub::new(10, 16);
        hub.commit(draft("a")).unwrap();
        assert_eq!(
            hub.commit(draft("a")).unwrap_err(),
            CommitError::DuplicateId("a".into())
        );
        assert_eq!(hub.retained(), 1);
    }
}
