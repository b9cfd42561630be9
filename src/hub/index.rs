//! The subscriber index: which subscribers an event is for, without visiting the others.
//!
//! Exact topics are looked up in a map (topic → subscribers). URI templates and `*` are
//! grouped by their text, so each distinct pattern is matched once per event however many
//! subscribers asked for it. A subscriber reached through several selectors or topics is
//! served once (a per-event stamp). Private updates then need a matching claim, as in
//! [`Subscription::wants`], which this index must always agree with.
//!
//! The cost of routing one event is the number of its topics, the number of distinct
//! patterns, and the number of matching subscribers, not the number connected.

use std::collections::HashMap;
use std::sync::Arc;

use super::queue::{Queue, Wakeups};
use super::{Event, Selector, Subscription};

/// A subscriber's slot in the index.
pub type SubscriberId = u32;

/// Subscribers by topic and by pattern.
#[derive(Default)]
pub struct Index {
    slots: Vec<Option<Entry>>,
    free: Vec<SubscriberId>,
    exact: HashMap<String, Vec<SubscriberId>>,
    patterns: HashMap<String, Group>,
    /// Stamps events as they are routed, to serve each subscriber once per event.
    stamp: u64,
}

struct Entry {
    subscription: Subscription,
    queue: Arc<Queue>,
    /// The last event stamp this subscriber was considered for.
    seen: u64,
    /// Still in the topic maps (a lagged subscriber is taken out at once).
    indexed: bool,
}

/// Subscribers sharing one template or `*` selector.
struct Group {
    selector: Selector,
    members: Vec<SubscriberId>,
}

/// What routing one event did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Routed {
    /// Deliveries queued: one per subscriber per event it was queued for.
    pub queued: usize,
    /// Subscribers whose queue overflowed (they were taken out of the index).
    pub lagged: usize,
}

impl Index {
    /// Adds a subscriber; its queue receives every event routed after this call.
    pub fn insert(&mut self, subscription: Subscription, queue: Arc<Queue>) -> SubscriberId {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as SubscriberId
            }
        };
        for selector in &subscription.selectors {
            match selector {
                Selector::Exact(topic) => self.exact.entry(topic.clone()).or_default().push(id),
                other => self
                    .patterns
                    .entry(other.as_str().to_string())
                    .or_insert_with(|| Group {
                        selector: other.clone(),
                        members: Vec::new(),
                    })
                    .members
                    .push(id),
            }
        }
        self.slots[id as usize] = Some(Entry {
            subscription,
            queue,
            seen: 0,
            indexed: true,
        });
        id
    }

    /// Removes a subscriber (no-op for an unknown ID).
    pub fn remove(&mut self, id: SubscriberId) {
        self.unindex(id);
        if let Some(slot) = self.slots.get_mut(id as usize) {
            if slot.take().is_some() {
                self.free.push(id);
            }
        }
    }

    /// Takes a subscriber out of the topic maps, keeping its slot until it is removed.
    fn unindex(&mut self, id: SubscriberId) {
        let Index {
            slots,
            exact,
            patterns,
            ..
        } = self;
        let Some(Some(entry)) = slots.get_mut(id as usize) else {
            return;
        };
        if !entry.indexed {
            return;
        }
        entry.indexed = false;
        for selector in &entry.subscription.selectors {
            let key = selector.as_str();
            if let Selector::Exact(_) = selector {
                if let Some(members) = exact.get_mut(key) {
                    forget(members, id);
                    if members.is_empty() {
                        exact.remove(key);
                    }
                }
            } else if let Some(group) = patterns.get_mut(key) {
                forget(&mut group.members, id);
                if group.members.is_empty() {
                    patterns.remove(key);
                }
            }
        }
    }

    /// Number of subscribers (lagged ones included until they are removed).
    pub fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether no subscriber is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `event` for every subscriber it is for.
    pub fn route(&mut self, event: &Arc<Event>, wakeups: &mut Wakeups) -> Routed {
        self.route_all(std::slice::from_ref(event), wakeups)
    }

    /// Queues each of `events` (in commit order) for every subscriber it is for.
    ///
    /// Consecutive public events with the same audience (the very same member lists:
    /// the subscribers of their exact topics and of the patterns they match; a
    /// webhook's rows for `*` subscribers, for instance) form a run, queued with one
    /// [`Queue::push_all`] per subscriber: one lock and at most one wake-up per
    /// subscriber per run instead of one per event. A private event is a run of its
    /// own, since each subscriber's claims decide whether it gets it.
    ///
    /// The subscribers to wake are added to `wakeups`, for the caller to wake once it
    /// has released its lock.
    pub fn route_all(&mut self, events: &[Arc<Event>], wakeups: &mut Wakeups) -> Routed {
        let mut routed = Routed::default();
        let mut lagged: Vec<SubscriberId> = Vec::new();
        let Index {
            slots,
            exact,
            patterns,
            stamp: counter,
            ..
        } = self;
        let mut current = Audience::default();
        let mut ahead = Audience::default();
        let mut ahead_of: Option<usize> = None;
        let mut start = 0;
        while start < events.len() {
            if ahead_of == Some(start) {
                std::mem::swap(&mut current, &mut ahead);
            } else {
                current.find(exact, patterns, &events[start]);
            }
            ahead_of = None;
            let mut end = start + 1;
            if !events[start].private {
                while end < events.len() && !events[end].private {
                    ahead.find(exact, patterns, &events[end]);
                    if !current.same(&ahead) {
                        ahead_of = Some(end);
                        break;
                    }
                    end += 1;
                }
            }
            let run = &events[start..end];
            // A subscriber reached through several lists is served once per run.
            *counter += 1;
            let stamp = *counter;
            for members in &current.lists {
                for &id in members.iter() {
                    let Some(Some(entry)) = slots.get_mut(id as usize) else {
                        continue;
                    };
                    if entry.seen == stamp {
                        continue;
                    }
                    entry.seen = stamp;
                    if run[0].private && !claims_allow(&entry.subscription, &run[0]) {
                        continue;
                    }
                    match entry.queue.push_all_deferred(run, wakeups) {
                        Ok(()) => routed.queued += run.len(),
                        Err(_) => lagged.push(id),
                    }
                }
            }
            start = end;
        }
        routed.lagged = lagged.len();
        for id in lagged {
            self.unindex(id);
        }
        routed
    }
}

/// The member lists an event reaches: the subscribers of each of its exact topics and
/// of each pattern matching one of them (a subscriber may be in several).
#[derive(Default)]
struct Audience<'a> {
    lists: Vec<&'a [SubscriberId]>,
}

impl<'a> Audience<'a> {
    /// Whether both are the very same lists (compared by identity, not content).
    fn same(&self, other: &Audience<'_>) -> bool {
        self.lists.len() == other.lists.len()
            && self
                .lists
                .iter()
                .zip(&other.lists)
                .all(|(a, b)| std::ptr::eq(*a, *b))
    }

    /// Finds the lists `event` reaches.
    fn find(
        &mut self,
        exact: &'a HashMap<String, Vec<SubscriberId>>,
        patterns: &'a HashMap<String, Group>,
        event: &Event,
    ) {
        self.lists.clear();
        for topic in &event.topics {
            if let Some(members) = exact.get(topic.as_str()) {
                self.lists.push(members);
            }
        }
        for group in patterns.values() {
            if event.topics.iter().any(|t| group.selector.selects(t)) {
                self.lists.push(&group.members);
            }
        }
    }
}

/// Drops one occurrence of `id` (a subscriber listing a selector twice is there twice).
fn forget(members: &mut Vec<SubscriberId>, id: SubscriberId) {
    if let Some(pos) = members.iter().position(|m| *m == id) {
        members.swap_remove(pos);
    }
}

/// The claim half of [`Subscription::wants`]: a private update needs a claim matching
/// one of its topics.
fn claims_allow(subscription: &Subscription, event: &Event) -> bool {
    match &subscription.claims {
        None => false,
        Some(claims) => event
            .topics
            .iter()
            .any(|t| claims.iter().any(|c| c.matches(t))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::hub::queue::QueueLimits;
    use crate::hub::EventDraft;

    const LIMITS: QueueLimits = QueueLimits {
        events: 1024,
        bytes: 1 << 20,
    };

    fn sub(selectors: &[&str], claims: Option<&[&str]>) -> Subscription {
        let p = |v: &[&str]| v.iter().map(|s| Selector::parse(s).unwrap()).collect();
        Subscription {
            selectors: p(selectors),
            claims: claims.map(p),
        }
    }

    fn event(seq: u64, topics: &[&str], private: bool) -> Arc<Event> {
        Arc::new(Event::new(
            seq,
            EventDraft::new(topics.iter().map(|t| t.to_string()).collect(), "d")
                .with_id(format!("e{seq}"))
                .private(private),
        ))
    }

    /// IDs of the events queued for a subscriber so far.
    fn drain(queue: &Queue) -> Vec<String> {
        let mut out = VecDeque::new();
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let ready = {
            let fut = queue.take_all(&mut out);
            let mut fut = std::pin::pin!(fut);
            matches!(fut.as_mut().poll(&mut cx), std::task::Poll::Ready(Ok(())))
        };
        if !ready {
            return Vec::new();
        }
        out.iter().map(|e| e.id.clone()).collect()
    }

    use std::future::Future;

    fn add(index: &mut Index, s: Subscription) -> (SubscriberId, Arc<Queue>) {
        let q = Arc::new(Queue::new(LIMITS));
        (index.insert(s, q.clone()), q)
    }

    #[test]
    fn exact_topics_reach_only_their_subscribers() {
        let mut index = Index::default();
        let (_, a) = add(&mut index, sub(&["audits/a"], None));
        let (_, b) = add(&mut index, sub(&["audits/b"], None));
        let r = index.route(&event(1, &["audits/a"], false), &mut Wakeups::default());
        assert_eq!(r.queued, 1);
        assert_eq!(drain(&a), ["e1"]);
        assert!(drain(&b).is_empty());
    }

    #[test]
    fn templates_and_star_are_grouped_by_text() {
        let mut index = Index::default();
        let (_, t1) = add(&mut index, sub(&["audits/{id}"], None));
        let (_, t2) = add(&mut index, sub(&["audits/{id}"], None));
        let (_, star) = add(&mut index, sub(&["*"], None));
        let (_, other) = add(&mut index, sub(&["modules/{id}"], None));
        assert_eq!(index.patterns.len(), 3, "one group per distinct pattern");
        assert_eq!(
            index
                .route(&event(1, &["audits/x"], false), &mut Wakeups::default())
                .queued,
            3
        );
        assert_eq!(drain(&t1), ["e1"]);
        assert_eq!(drain(&t2), ["e1"]);
        assert_eq!(drain(&star), ["e1"]);
        assert!(drain(&other).is_empty());
        assert!(index
            .route(
                &event(2, &["audits/x/deeper"], false),
                &mut Wakeups::default()
            )
            .queued
            .eq(&1));
        assert_eq!(drain(&star), ["e2"]);
    }

    #[test]
    fn private_updates_need_a_matching_claim() {
        let mut index = Index::default();
        let (_, anonymous) = add(&mut index, sub(&["*"], None));
        let (_, wrong) = add(&mut index, sub(&["*"], Some(&["audits/b"])));
        let (_, right) = add(&mut index, sub(&["audits/{t}"], Some(&["audits/{t}"])));
        let r = index.route(&event(1, &["audits/a"], true), &mut Wakeups::default());
        assert_eq!(r.queued, 1);
        assert!(drain(&anonymous).is_empty());
        assert!(drain(&wrong).is_empty());
        assert_eq!(drain(&right), ["e1"]);
        // A claim on any of the event's topics is enough.
        index.route(
            &event(2, &["audits/a", "audits/b"], true),
            &mut Wakeups::default(),
        );
        assert_eq!(drain(&wrong), ["e2"]);
    }

    #[test]
    fn many_selectors_and_topics_deliver_once() {
        let mut index = Index::default();
        let (_, q) = add(&mut index, sub(&["a", "b", "{x}", "*", "a"], Some(&["*"])));
        assert_eq!(
            index
                .route(&event(1, &["a", "b", "c"], false), &mut Wakeups::default())
                .queued,
            1
        );
        assert_eq!(
            index
                .route(&event(2, &["a", "b"], true), &mut Wakeups::default())
                .queued,
            1
        );
        assert_eq!(drain(&q), ["e1", "e2"]);
    }

    #[test]
    fn removed_subscribers_get_nothing_and_slots_are_reused() {
        let mut index = Index::default();
        let (a_id, a) = add(&mut index, sub(&["t", "{x}"], None));
        let (_, b) = add(&mut index, sub(&["t"], None));
        index.remove(a_id);
        assert_eq!(index.len(), 1);
        assert_eq!(
            index
                .route(&event(1, &["t"], false), &mut Wakeups::default())
                .queued,
            1
        );
        assert!(drain(&a).is_empty());
        assert_eq!(drain(&b), ["e1"]);
        assert!(index.patterns.is_empty(), "an emptied group is dropped");
        let (c_id, _) = add(&mut index, sub(&["u"], None));
        assert_eq!(c_id, a_id, "the freed slot is reused");
        index.remove(c_id);
        index.remove(c_id);
        assert_eq!(index.len(), 1);
        assert!(!index.exact.contains_key("u"));
    }

    #[test]
    fn a_lagging_subscriber_is_taken_out_alone() {
        let mut index = Index::default();
        let slow = Arc::new(Queue::new(QueueLimits {
            events: 2,
            bytes: 1 << 20,
        }));
        let slow_id = index.insert(sub(&["t"], None), slow.clone());
        let (_, fast) = add(&mut index, sub(&["t"], None));
        for seq in 1..=3 {
            index.route(&event(seq, &["t"], false), &mut Wakeups::default());
            drain(&fast);
        }
        assert!(slow.is_lagged());
        let r = index.route(&event(4, &["t"], false), &mut Wakeups::default());
        assert_eq!(
            r,
            Routed {
                queued: 1,
                lagged: 0
            }
        );
        assert_eq!(drain(&fast), ["e4"]);
        index.remove(slow_id);
        assert!(index.is_empty() || index.len() == 1);
    }

    #[test]
    fn a_subscriber_that_matches_nothing_never_lags() {
        let mut index = Index::default();
        let quiet = Arc::new(Queue::new(QueueLimits {
            events: 1,
            bytes: 1,
        }));
        index.insert(sub(&["audits/quiet"], None), quiet.clone());
        for seq in 1..=1000 {
            index.route(
                &event(seq, &[&format!("audits/{seq}")], false),
                &mut Wakeups::default(),
            );
        }
        assert!(!quiet.is_lagged());
        assert_eq!(quiet.queued_bytes(), 0);
    }
}
