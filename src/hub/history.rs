//! The bounded history that resumes replay from.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::Event;

/// Where a subscriber wants its stream to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeFrom {
    /// Live events only.
    Now,
    /// Every retained event (`lastEventID=earliest`).
    Earliest,
    /// Events after this ID.
    After(String),
}

impl ResumeFrom {
    /// Reads a `Last-Event-ID` / `lastEventID` value.
    pub fn parse(value: Option<&str>) -> Self {
        match value.map(str::trim) {
            None | Some("") => ResumeFrom::Now,
            Some("earliest") => ResumeFrom::Earliest,
            Some(id) => ResumeFrom::After(id.to_string()),
        }
    }
}

/// Events to replay and whether the asked ID was missing.
#[derive(Debug)]
pub struct Replay {
    /// Oldest first.
    pub events: Vec<Arc<Event>>,
    /// The asked ID is not retained: the replay is everything retained.
    pub gap: bool,
}

/// Bytes an event counts for in the byte bound: its data and ID (the SSE frame the
/// hub also keeps is of the same order; both are bounded through this figure).
pub fn event_size(id: &str, data: &str) -> usize {
    id.len() + data.len()
}

/// The last `capacity` events, at most `max_bytes` of them, indexed by ID.
#[derive(Debug)]
pub struct History {
    capacity: usize,
    max_bytes: usize,
    bytes: usize,
    events: VecDeque<Arc<Event>>,
    seq_by_id: HashMap<String, u64>,
}

impl History {
    /// An empty history keeping at most `capacity` events.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            max_bytes: usize::MAX,
            bytes: 0,
            events: VecDeque::with_capacity(capacity.clamp(1, 65_536)),
            seq_by_id: HashMap::new(),
        }
    }

    /// Also bounds the history by bytes ([`event_size`]); the newest event is always
    /// kept.
    pub fn set_max_bytes(&mut self, max_bytes: usize) {
        self.max_bytes = max_bytes.max(1);
    }

    /// Appends an event, evicting the oldest beyond capacity or bytes.
    pub fn push(&mut self, event: Arc<Event>) {
        self.bytes += event_size(&event.id, &event.data);
        self.seq_by_id.insert(event.id.clone(), event.seq);
        self.events.push_back(event);
        while self.events.len() > 1
            && (self.events.len() > self.capacity || self.bytes > self.max_bytes)
        {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= event_size(&old.id, &old.data);
                self.seq_by_id.remove(&old.id);
            }
        }
    }

    /// Bytes retained ([`event_size`] of every event).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The retained event with this ID.
    pub fn get(&self, id: &str) -> Option<&Arc<Event>> {
        let seq = *self.seq_by_id.get(id)?;
        self.events.get(self.position(seq)?)
    }

    /// Where the event numbered `seq` is in the deque. Sequence numbers increase but
    /// need not be contiguous (subscription events, kept apart, take numbers too).
    fn position(&self, seq: u64) -> Option<usize> {
        let first = self.events.front()?.seq;
        let guess = seq.checked_sub(first)? as usize;
        match self.events.get(guess) {
            Some(e) if e.seq == seq => Some(guess),
            _ => self.events.binary_search_by_key(&seq, |e| e.seq).ok(),
        }
    }

    /// The sequence number of the retained event with this ID.
    pub fn seq_of(&self, id: &str) -> Option<u64> {
        self.seq_by_id.get(id).copied()
    }

    /// The retained events numbered after `seq`, oldest first.
    pub fn after_seq(&self, seq: u64) -> impl Iterator<Item = &Arc<Event>> {
        let start = self.events.partition_point(|e| e.seq <= seq);
        self.events.range(start..)
    }

    /// The newest retained event.
    pub fn last(&self) -> Option<&Arc<Event>> {
        self.events.back()
    }

    /// The ID of the newest retained event.
    pub fn last_id(&self) -> Option<&str> {
        self.events.back().map(|e| e.id.as_str())
    }

    /// Whether an event with this ID is retained.
    pub fn contains(&self, id: &str) -> bool {
        self.seq_by_id.contains_key(id)
    }

    /// Number of retained events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The events a subscriber starting at `from` must receive before live ones.
    pub fn replay(&self, from: &ResumeFrom) -> Replay {
        match from {
            ResumeFrom::Now => Replay {
                events: Vec::new(),
                gap: false,
            },
            ResumeFrom::Earliest => Replay {
                events: self.events.iter().cloned().collect(),
                gap: false,
            },
            ResumeFrom::After(id) => match self.seq_by_id.get(id) {
                Some(&seq) => Replay {
                    events: self.after_seq(seq).cloned().collect(),
                    gap: false,
                },
                None => Replay {
                    events: self.events.iter().cloned().collect(),
                    gap: true,
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::EventDraft;

    fn ev(seq: u64, id: &str) -> Arc<Event> {
        Arc::new(Event::new(
            seq,
            EventDraft::new(vec!["t".into()], "d").with_id(id),
        ))
    }

    #[test]
    fn replays_after_id_and_reports_evicted_ids() {
        let mut h = History::new(3);
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            h.push(ev(i as u64 + 1, id));
        }
        assert_eq!(h.len(), 3);
        let r = h.replay(&ResumeFrom::After("b".into()));
        assert_eq!(
            r.events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["c", "d"]
        );
        assert!(!r.gap);
        let r = h.replay(&ResumeFrom::After("a".into()));
        assert!(r.gap, "evicted id is a gap");
        assert_eq!(r.events.len(), 3);
        assert_eq!(h.replay(&ResumeFrom::After("d".into())).events.len(), 0);
        assert_eq!(h.replay(&ResumeFrom::Earliest).events.len(), 3);
        assert_eq!(ResumeFrom::parse(Some("earliest")), ResumeFrom::Earliest);
        assert_eq!(ResumeFrom::parse(None), ResumeFrom::Now);
        assert_eq!(h.get("c").map(|e| e.seq), Some(3));
        assert!(h.get("a").is_none());
        assert_eq!(h.last_id(), Some("d"));
    }

    #[test]
    fn bounded_by_bytes_keeping_the_newest() {
        let mut h = History::new(100);
        h.set_max_bytes(10);
        h.push(ev(1, "a")); // 2 bytes
        h.push(ev(2, "b"));
        h.push(ev(3, "c"));
        assert_eq!(h.len(), 3);
        assert_eq!(h.bytes(), 6);
        h.push(Arc::new(Event::new(
            4,
            EventDraft::new(vec!["t".into()], "0123456789").with_id("big"),
        )));
        // 13 bytes alone: only the newest stays.
        assert_eq!(h.len(), 1);
        assert_eq!(h.bytes(), 13);
        assert!(h.get("big").is_some());
        assert!(!h.contains("a"));
    }
}
