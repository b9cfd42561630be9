//! Replayed Standard Webhooks messages: a signed message stays valid for the whole
//! tolerance window, so whoever captured one could send it again (re-raising a state
//! that has since changed, and its alert). relais remembers the `webhook-id` of each
//! message it accepted until its timestamp leaves the window, and applies a second
//! delivery of the same ID as nothing (answered 200, so an honest sender's retry stops). The memory is bounded (`server.webhook_id_cache` IDs, least
//! recently seen forgotten first).

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;

use super::signature::TOLERANCE_SECS;

/// The message IDs accepted recently, per source.
pub struct SeenWebhooks {
    ids: Mutex<LruCache<(String, String), i64>>,
}

impl SeenWebhooks {
    /// Remembers at most `capacity` IDs.
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            ids: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// Whether `source` already accepted message `id` whose timestamp is still within
    /// the tolerance at `now` (Unix seconds).
    pub fn seen(&self, source: &str, id: &str, now: i64) -> bool {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        let key = (source.to_string(), id.to_string());
        match ids.get(&key) {
            Some(&until) if until >= now => true,
            Some(_) => {
                ids.pop(&key);
                false
            }
            None => false,
        }
    }

    /// Records that `source` accepted message `id` signed at `timestamp`.
    pub fn remember(&self, source: &str, id: &str, timestamp: i64) {
        let until = timestamp.saturating_add(TOLERANCE_SECS);
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put((source.to_string(), id.to_string()), until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_refused_again_until_it_leaves_the_window() {
        let seen = SeenWebhooks::new(10);
        assert!(!seen.seen("diagpv", "msg_1", 1000));
        seen.remember("diagpv", "msg_1", 1000);
        assert!(seen.seen("diagpv", "msg_1", 1000 + TOLERANCE_SECS));
        assert!(!seen.seen("other", "msg_1", 1000), "per source");
        // Past the window the signature check refuses it anyway: forgotten.
        assert!(!seen.seen("diagpv", "msg_1", 1001 + TOLERANCE_SECS));
    }

    #[test]
    fn memory_is_bounded() {
        let seen = SeenWebhooks::new(3);
        for i in 0..10 {
            seen.remember("s", &format!("m{i}"), 0);
        }
        assert!(seen.seen("s", "m9", 0));
        assert!(!seen.seen("s", "m0", 0));
        assert_eq!(seen.ids.lock().unwrap().len(), 3);
        seen.remember("s", "x", i64::MAX);
    }
}
