//! The hub: topics, history and fan-out.
//!
//! Every event is committed once under a lock that assigns it the next sequence number,
//! appends it to the bounded [`History`] and routes it through the subscriber [`index`]
//! to the queues of the subscribers it is for, and only those: the cost of an event
//! follows its matching subscribers, not the connected ones. A subscriber registers under
//! the same lock, so the history snapshot it replays and the live events it then receives
//! meet exactly: no gap, no duplicate.
//!
//! Each subscriber's [`queue`] is bounded in events (`hub.subscriber_backlog`) and in
//! bytes (`hub.subscriber_queue_bytes`): a subscriber that falls behind either bound is
//! taken out of the index and disconnected, without slowing anyone else; it reconnects
//! and resumes from its last ID. A subscriber that matches nothing queues nothing, so it
//! can never lag.
//!
//! In-process consumers that want every event (the Matrix alerts) still attach to a
//! broadcast ring with [`Hub::attach`].

pub mod event;
pub mod history;
pub mod index;
pub mod presence;
pub mod queue;
pub mod selector;
pub mod sse;
pub mod subscription;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

pub use event::{Event, EventDraft};
pub use history::{History, Replay, ResumeFrom};
pub use queue::{Lagged, Queue, QueueLimits, Wakeups};
pub use selector::Selector;
pub use subscription::Subscription;

/// The fan-out point of one relais process.
pub struct Hub {
    inner: Mutex<HubInner>,
    sender: broadcast::Sender<Arc<Event>>,
    limits: QueueLimits,
}

/// Default of `hub.subscriptions_history`: subscription events retained for resume.
pub const DEFAULT_SUBSCRIPTIONS_HISTORY: usize = 10_000;

/// Default of `hub.subscriber_queue_bytes`: live frames one subscriber may have queued.
pub const DEFAULT_QUEUE_BYTES: usize = 4 * 1024 * 1024;

struct HubInner {
    next_seq: u64,
    history: History,
    /// Delivery counters by source, then type label (unknown types share `other`, so the
    /// map is as bounded as the metric series): few pairs, many events, so a lookup
    /// borrows the draft's strings and allocates nothing once a pair is known.
    counters: HashMap<String, HashMap<String, metrics::Counter>>,
    /// The subscribers by topic and pattern, with their queues.
    index: index::Index,
    /// Subscription events (presence), retained apart and the active subscriptions they
    /// describe.
    presence: presence::Registry,
}

impl HubInner {
    /// Gives a draft its sequence number and retains it (not yet routed).
    fn seal(&mut self, draft: EventDraft) -> Result<Arc<Event>, CommitError> {
        if self.history.contains(&draft.id) {
            return Err(CommitError::DuplicateId(draft.id));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let label = event::type_label(draft.event_type.as_deref());
        let known = self
            .counters
            .get(&draft.source)
            .and_then(|by_type| by_type.get(label))
            .cloned();
        let counter = match known {
            Some(counter) => counter,
            None => {
                let counter = event::delivery_counter(&draft.source, draft.event_type.as_deref());
                self.counters
                    .entry(draft.source.clone())
                    .or_default()
                    .insert(label.to_string(), counter.clone());
                counter
            }
        };
        let event = Arc::new(Event::with_counter(seq, draft, counter));
        self.history.push(event.clone());
        Ok(event)
    }
}

/// A subscriber registered with [`Hub::subscribe`]: what to replay, then its live queue.
pub struct Subscriber {
    /// Retained events after the requested ID (or all of them), oldest first, not yet
    /// filtered by the subscription (the stream filters them with
    /// [`Subscription::wants`] as it writes them).
    pub replay: Vec<Arc<Event>>,
    /// The requested ID was not retained (see [`Attach::history_gap`]).
    pub history_gap: bool,
    /// Live events for this subscriber, committed after the replay.
    pub live: Live,
}

/// A subscriber's live queue; dropping it takes the subscriber out of the hub.
pub struct Live {
    hub: Arc<Hub>,
    id: index::SubscriberId,
    queue: Arc<Queue>,
}

impl Live {
    /// Waits for live events and moves every queued one into `out` (emptied first).
    /// `Err(Lagged)` once the subscriber fell behind its queue bounds.
    pub async fn next_events(
        &self,
        out: &mut std::collections::VecDeque<Arc<Event>>,
    ) -> Result<(), Lagged> {
        self.queue.take_all(out).await
    }

    /// [`Live::next_events`] for a hand-written future (the subscriber's feed).
    pub fn poll_take(
        &self,
        cx: &mut std::task::Context<'_>,
        out: &mut std::collections::VecDeque<Arc<Event>>,
    ) -> std::task::Poll<Result<(), Lagged>> {
        self.queue.poll_take_all(cx, out)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.hub.lock().index.remove(self.id);
    }
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
                index: index::Index::default(),
                presence: presence::Registry::new(DEFAULT_SUBSCRIPTIONS_HISTORY),
            }),
            sender,
            limits: QueueLimits {
                events: subscriber_backlog.max(1),
                bytes: DEFAULT_QUEUE_BYTES,
            },
        }
    }

    /// Sets the bytes of live frames one subscriber may have queued before it is
    /// disconnected as too slow (`hub.subscriber_queue_bytes`).
    pub fn with_subscriber_queue_bytes(mut self, bytes: usize) -> Self {
        self.limits.bytes = bytes.max(1);
        self
    }

    /// Registers a subscriber resuming from `from`: the retained events to replay and a
    /// live queue that receives, from the same instant, exactly the events the
    /// subscription wants (see [`Subscription::wants`]).
    pub fn subscribe(
        self: &Arc<Self>,
        subscription: Subscription,
        from: &ResumeFrom,
    ) -> Subscriber {
        let queue = Arc::new(Queue::new(self.limits));
        let (id, replay) = {
            let mut inner = self.lock();
            let replay = inner.replay(from);
            (inner.index.insert(subscription, queue.clone()), replay)
        };
        Subscriber {
            replay: replay.events,
            history_gap: replay.gap,
            live: Live {
                hub: self.clone(),
                id,
                queue,
            },
        }
    }

    /// Number of subscribers registered with [`Hub::subscribe`].
    pub fn subscriber_count(&self) -> usize {
        self.lock().index.len()
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
        let mut wakeups = Wakeups::default();
        let mut inner = self.lock();
        let event = inner.seal(draft)?;
        inner.index.route(&event, &mut wakeups);
        // No receiver is not an error: the event is still retained for later resumes.
        let _ = self.sender.send(event.clone());
        drop(inner);
        wakeups.wake_all();
        Ok(event)
    }

    /// Commits a batch of events (one webhook's rows) in order, under one lock: each is
    /// sequenced and retained as by [`Hub::commit`], then the batch is fanned out at
    /// once, so a subscriber that wants several of them gets them with one queue update
    /// and one wake-up. An event refused (a duplicate ID) is left out; the others are
    /// committed. The results are in the order of `drafts`.
    pub fn commit_all(&self, drafts: Vec<EventDraft>) -> Vec<Result<Arc<Event>, CommitError>> {
        let (results, wakeups) = self.commit_all_deferred(drafts);
        wakeups.wake_all();
        results
    }

    /// [`Hub::commit_all`], leaving the subscribers to wake to the caller: the disk
    /// store's writer answers the requests whose events these are first, so their
    /// answers are not queued behind thousands of subscriber tasks.
    pub fn commit_all_deferred(
        &self,
        drafts: Vec<EventDraft>,
    ) -> (Vec<Result<Arc<Event>, CommitError>>, Wakeups) {
        let mut wakeups = Wakeups::default();
        let mut inner = self.lock();
        let results: Vec<_> = drafts.into_iter().map(|d| inner.seal(d)).collect();
        let committed: Vec<Arc<Event>> = results.iter().flatten().cloned().collect();
        inner.index.route_all(&committed, &mut wakeups);
        // Under the lock, as in `commit`: an `attach` sees each event in its replay or
        // in its live receiver, never both.
        for event in committed {
            let _ = self.sender.send(event);
        }
        (results, wakeups)
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

    /// Whether an event with this ID is retained (subscription events included).
    pub fn retains(&self, id: &str) -> bool {
        let inner = self.lock();
        inner.history.contains(id) || inner.presence.history.contains(id)
    }

    /// Keeps at most `events` subscription events for resume (`hub.subscriptions_history`).
    pub fn with_subscriptions_history(self, events: usize) -> Self {
        self.lock().presence = presence::Registry::new(events);
        self
    }

    /// Commits a subscription event (presence): it takes the next sequence number like
    /// any event and reaches the subscribers it matches, but is retained in the
    /// subscription events' own history, and updates the active subscriptions. An event
    /// already retained (same ID) is ignored.
    pub fn commit_presence(&self, change: presence::Change) -> Option<Arc<Event>> {
        let mut inner = self.lock();
        if inner.presence.history.contains(&change.draft.id) {
            return None;
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let counter = presence::delivery_counter();
        let event = Arc::new(Event::with_counter(seq, change.draft, counter));
        inner.presence.apply(&event, change.started);
        let mut wakeups = Wakeups::default();
        inner.index.route(&event, &mut wakeups);
        drop(inner);
        wakeups.wake_all();
        Some(event)
    }

    /// The document of an active subscription (its start event's data), by IRI.
    pub fn active_document(&self, iri: &str) -> Option<String> {
        self.lock().presence.document(iri).map(str::to_string)
    }

    /// Adds subscriptions known to be active without an event (those other instances
    /// announced before this one started, read from the shared store).
    pub fn seed_presence(&self, active: impl IntoIterator<Item = presence::Active>) {
        let mut inner = self.lock();
        for a in active {
            inner.presence.seed(a);
        }
    }

    /// The active subscriptions `visit` accepts, with the ID of the last event committed
    /// when they were read (`earliest` when none is retained): read together, so
    /// subscribing from that ID misses no change of the list.
    pub fn active_subscriptions<T>(
        &self,
        mut visit: impl FnMut(presence::Listed<'_>) -> Option<T>,
    ) -> (Vec<T>, String) {
        let inner = self.lock();
        let list = inner.presence.active().filter_map(&mut visit).collect();
        let last = match (inner.history.last(), inner.presence.history.last()) {
            (Some(a), Some(b)) => Some(if a.seq > b.seq { a } else { b }),
            (a, b) => a.or(b),
        };
        let last = last.map_or_else(|| "earliest".to_string(), |e| e.id.clone());
        (list, last)
    }

    /// Number of broadcast receivers ([`Hub::attach`]; not the SSE subscribers, see
    /// [`Hub::subscriber_count`]).
    pub fn receiver_count(&self) -> usize {
        self.sender.receiver_count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubInner> {
        // A panic while holding the lock cannot leave the history half-updated (push is
        // the last step), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl HubInner {
    /// What a subscriber resuming from `from` replays: business events and subscription
    /// events after it, merged in commit order. The asked ID may be either kind; when
    /// neither history retains it, everything retained is replayed and it is a gap.
    fn replay(&self, from: &ResumeFrom) -> Replay {
        let presence = &self.presence.history;
        if presence.is_empty() {
            return self.history.replay(from);
        }
        let after = match from {
            ResumeFrom::Now => return self.history.replay(from),
            ResumeFrom::Earliest => None,
            ResumeFrom::After(id) => match self.history.seq_of(id).or(presence.seq_of(id)) {
                Some(seq) => Some(seq),
                None => {
                    let mut all = self.history.replay(&ResumeFrom::Earliest);
                    all.events = merge(all.events.iter(), presence.after_seq(0));
                    all.gap = true;
                    return all;
                }
            },
        };
        let seq = after.unwrap_or(0);
        Replay {
            events: merge(self.history.after_seq(seq), presence.after_seq(seq)),
            gap: false,
        }
    }
}

/// Two runs of events, each in commit order, merged in commit order.
fn merge<'a>(
    a: impl Iterator<Item = &'a Arc<Event>>,
    b: impl Iterator<Item = &'a Arc<Event>>,
) -> Vec<Arc<Event>> {
    let mut a = a.peekable();
    let mut b = b.peekable();
    let mut out = Vec::new();
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => x.seq < y.seq,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return out,
        };
        let next = if take_a { a.next() } else { b.next() };
        out.extend(next.cloned());
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    /// Every event queued for a live subscriber so far, without waiting.
    fn queued(live: &Live) -> Vec<Arc<Event>> {
        let mut out = VecDeque::new();
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let ready = {
            let mut fut = std::pin::pin!(live.next_events(&mut out));
            matches!(
                std::future::Future::poll(fut.as_mut(), &mut cx),
                std::task::Poll::Ready(Ok(()))
            )
        };
        if ready {
            out.into_iter().collect()
        } else {
            Vec::new()
        }
    }

    fn subscription(selectors: &[String], claims: &Option<Vec<String>>) -> Subscription {
        let p = |v: &[String]| v.iter().map(|s| Selector::parse(s).unwrap()).collect();
        Subscription {
            selectors: p(selectors),
            claims: claims.as_deref().map(p),
        }
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "a/1", "a/2", "b/1", "a/1/x", "c/a"])
            .prop_map(str::to_string)
    }

    fn selector() -> impl Strategy<Value = String> {
        prop_oneof![
            topic(),
            prop::sample::select(vec!["*", "a/{id}", "{s}/1", "{+all}", "a/{id}/x", "c/{x}"])
                .prop_map(str::to_string),
        ]
    }

    /// One subscriber: its selectors, its claims, and after how many events it joins.
    type SubSpec = (Vec<String>, Option<Vec<String>>, usize);

    fn subscriber_spec() -> impl Strategy<Value = SubSpec> {
        (
            prop::collection::vec(selector(), 1..4),
            prop::option::of(prop::collection::vec(selector(), 0..3)),
            0usize..12,
        )
    }

    /// An event: its topics, whether it is private, and whether its batch ends with it.
    fn event_spec() -> impl Strategy<Value = (Vec<String>, bool, Option<bool>)> {
        (
            prop::collection::vec(topic(), 1..4),
            any::<bool>(),
            prop::option::of(any::<bool>()),
        )
    }

    proptest! {
        /// The indexed hub delivers to each subscriber exactly the events the old rule
        /// (every subscriber checks every event with `Subscription::wants`) would, in
        /// order, each once, from the moment it subscribed.
        #[test]
        fn indexed_delivery_equals_every_subscriber_checking(
            subs in prop::collection::vec(subscriber_spec(), 1..12),
            events in prop::collection::vec(event_spec(), 0..16),
        ) {
            let hub = Arc::new(Hub::new(100, 1000));
            let mut live: Vec<(Subscription, usize, Live)> = Vec::new();
            let mut committed: Vec<Arc<Event>> = Vec::new();
            // Events are committed in batches (`commit_all`) that end where the draw
            // says or where a subscriber joins, so runs of every shape are routed.
            let mut batch: Vec<EventDraft> = Vec::new();
            for step in 0..=events.len() {
                let joining = subs.iter().any(|(_, _, join)| *join == step || (step == events.len() && *join > step));
                if joining || step == events.len() {
                    committed.extend(hub.commit_all(std::mem::take(&mut batch)).into_iter().map(Result::unwrap));
                }
                for (selectors, claims, join) in &subs {
                    if *join == step || (step == events.len() && *join > step) {
                        let s = subscription(selectors, claims);
                        let attached = hub.subscribe(s.clone(), &ResumeFrom::Now);
                        prop_assert!(attached.replay.is_empty());
                        live.push((s, committed.len(), attached.live));
                    }
                }
                if let Some((topics, private, flush)) = events.get(step) {
                    let draft = EventDraft::new(topics.clone(), "d")
                        .with_id(format!("e{step}"))
                        .private(*private);
                    match flush {
                        // A batch of one through `commit`, the rest through `commit_all`.
                        Some(true) if batch.is_empty() => committed.push(hub.commit(draft).unwrap()),
                        Some(true) => {
                            batch.push(draft);
                            committed.extend(hub.commit_all(std::mem::take(&mut batch)).into_iter().map(Result::unwrap));
                        }
                        _ => batch.push(draft),
                    }
                }
            }
            prop_assert_eq!(hub.subscriber_count(), live.len());
            for (s, from, l) in &live {
                let got: Vec<String> = queued(l).iter().map(|e| e.id.clone()).collect();
                let expected: Vec<String> = committed[*from..]
                    .iter()
                    .filter(|e| s.wants(e))
                    .map(|e| e.id.clone())
                    .collect();
                prop_assert_eq!(got, expected, "selectors {:?}", s.selectors);
            }
            drop(live);
            prop_assert_eq!(hub.subscriber_count(), 0);
        }
    }

    #[test]
    fn subscribe_then_commit_has_no_gap_and_no_duplicate() {
        let hub = Arc::new(Hub::new(10, 16));
        hub.commit(draft("a")).unwrap();
        hub.commit(draft("b")).unwrap();
        let sub = Subscription {
            selectors: vec![Selector::Any],
            claims: None,
        };
        let s = hub.subscribe(sub, &ResumeFrom::After("a".into()));
        assert_eq!(
            s.replay.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        hub.commit(draft("c")).unwrap();
        let live: Vec<_> = queued(&s.live).iter().map(|e| e.id.clone()).collect();
        assert_eq!(live, ["c"]);
    }

    #[test]
    fn unsubscribing_while_publishing_loses_nothing_for_the_others() {
        let hub = Arc::new(Hub::new(10, 100_000));
        let stay = hub.subscribe(
            Subscription {
                selectors: vec![Selector::parse("t/{x}").unwrap()],
                claims: None,
            },
            &ResumeFrom::Now,
        );
        let publisher = {
            let hub = hub.clone();
            std::thread::spawn(move || {
                for i in 0..5000 {
                    hub.commit(
                        EventDraft::new(vec![format!("t/{}", i % 7)], "x").with_id(format!("e{i}")),
                    )
                    .unwrap();
                }
            })
        };
        let churn = {
            let hub = hub.clone();
            std::thread::spawn(move || {
                for i in 0..2000 {
                    let s = hub.subscribe(
                        Subscription {
                            selectors: vec![
                                Selector::parse(&format!("t/{}", i % 7)).unwrap(),
                                Selector::parse("t/{x}").unwrap(),
                                Selector::Any,
                            ],
                            claims: None,
                        },
                        &ResumeFrom::Now,
                    );
                    drop(s);
                }
            })
        };
        publisher.join().unwrap();
        churn.join().unwrap();
        assert_eq!(hub.subscriber_count(), 1);
        let got: Vec<_> = queued(&stay.live).iter().map(|e| e.id.clone()).collect();
        let expected: Vec<_> = (0..5000).map(|i| format!("e{i}")).collect();
        assert_eq!(got, expected);
    }

    /// A consumer that takes its queue as soon as it is woken (as a task on the other
    /// core would), recording how many events each take got.
    struct Eager {
        live: Live,
        takes: Mutex<Vec<usize>>,
    }

    impl std::task::Wake for Eager {
        fn wake(self: Arc<Self>) {
            self.take();
        }
    }

    impl Eager {
        fn take(self: &Arc<Self>) {
            let waker = std::task::Waker::from(self.clone());
            let mut cx = std::task::Context::from_waker(&waker);
            loop {
                let mut out = VecDeque::new();
                let ready = {
                    let mut fut = std::pin::pin!(self.live.next_events(&mut out));
                    matches!(
                        std::future::Future::poll(fut.as_mut(), &mut cx),
                        std::task::Poll::Ready(Ok(()))
                    )
                };
                if !ready {
                    return;
                }
                self.takes.lock().unwrap().push(out.len());
            }
        }
    }

    #[test]
    fn a_batch_reaches_a_subscriber_in_one_queue_update() {
        let hub = Arc::new(Hub::new(1000, 1000));
        let eager = |selector: &str| {
            let s = Subscription {
                selectors: vec![Selector::parse(selector).unwrap()],
                claims: Some(vec![Selector::Any]),
            };
            let e = Arc::new(Eager {
                live: hub.subscribe(s, &ResumeFrom::Now).live,
                takes: Mutex::new(Vec::new()),
            });
            e.take();
            e
        };
        let star = eager("*");
        let rows = eager("rows/{id}");
        let one = eager("rows/p");
        let mut batch: Vec<EventDraft> = (0..50)
            .map(|i| EventDraft::new(vec![format!("rows/{i}")], "x").with_id(format!("e{i}")))
            .collect();
        // A private event splits the runs; the subscribers' claims allow it.
        batch.insert(
            25,
            EventDraft::new(vec!["rows/p".into()], "x")
                .with_id("p")
                .private(true),
        );
        let results = hub.commit_all(batch);
        assert!(results.iter().all(Result::is_ok));
        // `*` and `rows/{id}` match every row: the private event splits the batch into
        // three runs (three queue updates), but the subscribers are woken once the
        // whole batch is routed, so each takes it at once (with per-event commits it
        // was one take per event).
        assert_eq!(*star.takes.lock().unwrap(), [51]);
        assert_eq!(*rows.takes.lock().unwrap(), [51]);
        assert_eq!(*one.takes.lock().unwrap(), [1]);
        // A subscriber on one row's topic changes that row's audience: the runs split
        // around it, and everyone still gets every event once, in order.
        let three = eager("rows/3");
        let batch = (50..60)
            .map(|i| {
                EventDraft::new(vec![format!("rows/{}", i - 50)], "x").with_id(format!("e{i}"))
            })
            .collect();
        assert!(hub.commit_all(batch).iter().all(Result::is_ok));
        assert_eq!(star.takes.lock().unwrap()[1..], [10]);
        assert_eq!(*three.takes.lock().unwrap(), [1]);
    }

    #[test]
    fn commit_all_refuses_duplicates_alone() {
        let hub = Arc::new(Hub::new(10, 16));
        let live = hub
            .subscribe(
                Subscription {
                    selectors: vec![Selector::Any],
                    claims: None,
                },
                &ResumeFrom::Now,
            )
            .live;
        let results = hub.commit_all(vec![draft("a"), draft("a"), draft("b")]);
        assert!(results[0].is_ok());
        assert_eq!(
            results[1].as_ref().unwrap_err(),
            &CommitError::DuplicateId("a".into())
        );
        assert!(results[2].is_ok());
        let got: Vec<_> = queued(&live).iter().map(|e| e.id.clone()).collect();
        assert_eq!(got, ["a", "b"]);
        assert_eq!(hub.retained(), 2);
    }

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
    fn unknown_publish_types_share_one_counter_entry() {
        let hub = Hub::new(10, 16);
        for i in 0..2000 {
            hub.commit(draft(&format!("e{i}")).with_type(format!("t{i}")))
                .unwrap();
        }
        hub.commit(draft("m")).unwrap();
        let inner = hub.lock();
        // `other` and `message`, as the metric series.
        assert_eq!(inner.counters.len(), 1);
        assert_eq!(inner.counters["mercure"].len(), 2);
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
