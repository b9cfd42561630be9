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

/// The last `capacity` events, indexed by ID.
#[derive(Debug)]
pub struct History {
    capacity: usize,
    events: VecDeque<Arc<Event>>,
    seq_by_id: HashMap<String, u64>,
}

impl History {
    /// An empty history keeping at most `capacity` events.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            events: VecDeque::with_capacity(capacity.clamp(1, 65_536)),
            seq_by_id: HashMap::new(),
        }
    }

    /// Appends an event, evicting the oldest beyond capacity.
    pub fn push(&mut self, event: Arc<Event>) {
        if self.events.len() == self.capacity {
            if let Some(old) = self.events.pop_front() {
                self.seq_by_id.remove(&old.id);
            }
        }
        self.seq_by_id.insert(event.id.clone(), event.seq);
        self.events.push_back(event);
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
                Some(&seq) => {
                    // Sequence numbers are contiguous in the deque.
                    let first = self.events.front().map(|e| e.seq).unwrap_or(seq);
                    let skip = (seq - first + 1) as usize;
                    Replay {
                        events: self.events.iter().skip(skip).cloned().collect(),
                        gap: false,
                    }
                }
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
    }
}
