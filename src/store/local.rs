//! The in-process backends: memory only, or memory mirrored on disk.
//!
//! One lock orders every request of this process: a request's record states are read
//! and planned under it, so two deliveries never interleave their read-diff-write, and
//! a snapshot taken under it sees the record states and the last committed event of the
//! same instant.
//!
//! Memory only, a request is applied under the lock. With a database, requests are
//! committed in groups (group commit): a request plans under the lock against the
//! durable record states plus the states planned by requests still waiting for their
//! commit, queues its rows and waits. Two workers then carry the groups, one behind the
//! other:
//! - the writer (the `relais-store` thread: SQLite blocks) takes every queued request,
//!   writes them all in one SQLite transaction with one sync, hands the group to the
//!   applier and takes the next group;
//! - the applier (a task on the server's runtime) takes every group written, hands their
//!   events to the hub, applies their record states and answers each request, in commit
//!   order. A task rather than a thread: the requests it answers join the queue of the
//!   worker it runs on, with no thread to wake for each group and no hand-over from
//!   outside the runtime (`docs/performance.md` has the figures of both).
//!
//! So a webhook is acknowledged only once the transaction holding its rows is durable,
//! and the hub never streams an event that a crash could take back, while the next
//! transaction is written as the previous one is fanned out. A request whose own rows
//! cannot be encoded fails alone, before it joins a group; if a transaction fails (disk
//! full, I/O error), its requests and every request planned after them fail (503) and
//! the planned states are dropped (once the groups written before it are applied), so
//! memory and disk still agree and the senders' retries start from the durable states.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{oneshot, watch, Notify};

use super::disk::{Disk, GroupWrite, RecordRow};
use super::records::{now_ms, Key, Records};
use super::{Backend, Batch, Ingested, Known, OpenError, PlanFn, Published, Snapshot, StoreError};
use crate::config::Config;
use crate::hub::{EventDraft, Hub, Subscription, Wakeups};
use crate::ingest::record::StoredRecord;

/// Memory or disk store of one process.
pub struct LocalStore {
    shared: Arc<Shared>,
    /// The group-commit writer (disk store only).
    writer: Option<JoinHandle<()>>,
    describe: String,
}

struct Shared {
    hub: Arc<Hub>,
    inner: Mutex<Inner>,
    /// Wakes the writer when a request is queued or the store closes.
    wake: Condvar,
    /// Wakes the applier when a group is written or the writer stops.
    to_apply: Notify,
    /// The number of the last request settled: applied and answered, or refused after a
    /// failed commit.
    settled: watch::Sender<u64>,
}

struct Inner {
    records: Records,
    /// Disk store: the states planned by queued requests, by record, with the number of
    /// the last request that planned each (the durable states are in `records`).
    planned: HashMap<Key, (StoredRecord, u64)>,
    /// Disk store: requests waiting for the next group commit, in order.
    queue: Vec<Job>,
    /// Disk store: IDs of published updates waiting for their commit, with their request.
    pending_ids: HashMap<String, u64>,
    /// Number of the last request queued.
    last_job: u64,
    /// Records evicted from memory, deleted from the database with the next commit.
    forget: Vec<Key>,
    /// The store is being dropped: the writer drains the queue and stops.
    closing: bool,
    /// Disk store: groups written (durable, not yet applied), oldest first.
    written: VecDeque<Vec<Job>>,
    /// Disk store: the writer has stopped (the applier stops once it drained).
    writer_stopped: bool,
}

/// One request waiting for its group commit.
struct Job {
    number: u64,
    source: String,
    events: Vec<EventDraft>,
    records: Vec<RecordRow>,
    changed_at: u64,
    done: Done,
}

impl LocalStore {
    fn with(hub: Arc<Hub>, records: Records, describe: String) -> Self {
        let (settled, _) = watch::channel(0);
        Self {
            shared: Arc::new(Shared {
                hub,
                inner: Mutex::new(Inner {
                    records,
                    planned: HashMap::new(),
                    queue: Vec::new(),
                    pending_ids: HashMap::new(),
                    last_job: 0,
                    forget: Vec::new(),
                    closing: false,
                    written: VecDeque::new(),
                    writer_stopped: false,
                }),
                wake: Condvar::new(),
                to_apply: Notify::new(),
                settled,
            }),
            writer: None,
            describe,
        }
    }

    /// Memory only.
    pub fn memory(hub: Arc<Hub>, config: &Config) -> Self {
        Self::with(
            hub,
            Records::new(config.hub.record_state_capacity, config.hub.record_ttl),
            format!(
                "in memory only (hub.persist = false): history and the last {} record states are lost on restart",
                config.hub.record_state_capacity
            ),
        )
    }

    /// The disk store at `path`: loads its history into `hub` and its record states,
    /// and starts the group-commit writer and, on the current tokio runtime, the applier.
    pub fn open(path: &Path, hub: Arc<Hub>, config: &Config) -> Result<Self, OpenError> {
        let fail = |reason: String| OpenError::Disk {
            path: path.display().to_string(),
            reason,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| fail(format!("the disk store needs a tokio runtime: {e}")))?;
        let (disk, loaded) = Disk::open(path, config.hub.history_size, config.hub.history_bytes)
            .map_err(|e| fail(e.to_string()))?;
        let events = loaded.events.len();
        for event in loaded.events {
            if let Err(e) = hub.commit(event.into_draft()) {
                tracing::warn!("skipping a stored event: {e}");
            }
        }
        let mut records = Records::new(config.hub.record_state_capacity, config.hub.record_ttl);
        let count = loaded.records.len();
        for (source, key, record) in loaded.records {
            // The record's last event shares the hub's copy while it is retained.
            let last = record.last.map(|ev| {
                hub.get(&ev.id)
                    .unwrap_or_else(|| Arc::new(crate::hub::Event::new(0, ev.into_draft())))
            });
            records.put((source, key), record.state, last, record.changed_at);
        }
        tracing::info!(
            events,
            records = count,
            "loaded history and record states from {}",
            path.display()
        );
        let mut store = Self::with(
            hub,
            records,
            format!(
                "on disk in {} (history and record states survive restarts)",
                path.display()
            ),
        );
        metrics::describe_counter!(
            "relais_store_commits_total",
            "Transactions committed (and synced) by the disk store; each holds a group of requests"
        );
        metrics::describe_counter!(
            "relais_store_committed_requests_total",
            "Requests (webhooks, publishes) made durable by the disk store's group commits"
        );
        metrics::describe_counter!(
            "relais_store_checkpoints_total",
            "Copies of the disk store's write-ahead log into its database, run between commits"
        );
        runtime.spawn(store.shared.clone().apply_groups());
        let shared = store.shared.clone();
        let writer = std::thread::Builder::new()
            .name("relais-store".into())
            .spawn(move || shared.write_groups(disk))
            .map_err(|e| fail(format!("cannot start the store writer: {e}")))?;
        store.writer = Some(writer);
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared.lock()
    }

    fn publish_memory(&self, draft: EventDraft) -> Result<Published, StoreError> {
        let _inner = self.lock();
        if let Some(known) = self.shared.hub.get(&draft.id) {
            return repeated_or_conflict(&known, draft);
        }
        let id = draft.id.clone();
        self.shared
            .hub
            .commit(draft)
            .map_err(|e| StoreError::Conflict(e.to_string()))?;
        Ok(Published::New(id))
    }

    async fn publish_disk(&self, draft: EventDraft) -> Result<Published, StoreError> {
        let mut draft = Some(draft);
        while let Some(update) = draft.take() {
            // An update with the same ID may be waiting for its commit: wait for it to
            // settle, then answer as for a retained one.
            let waiting = {
                let mut inner = self.lock();
                if let Some(known) = self.shared.hub.get(&update.id) {
                    return repeated_or_conflict(&known, update);
                }
                match inner.pending_ids.get(&update.id) {
                    Some(&number) => {
                        draft = Some(update);
                        Err(number)
                    }
                    None => {
                        let id = update.id.clone();
                        let (number, done) =
                            self.shared
                                .enqueue(&mut inner, "mercure", vec![update], Vec::new());
                        inner.pending_ids.insert(id.clone(), number);
                        Ok((id, done))
                    }
                }
            };
            match waiting {
                Ok((id, done)) => {
                    settle(done).await?;
                    return Ok(Published::New(id));
                }
                Err(number) => {
                    let mut settled = self.shared.settled.subscribe();
                    if settled.wait_for(|&n| n >= number).await.is_err() {
                        return Err(stopped());
                    }
                }
            }
        }
        Err(stopped())
    }

    fn ingest_memory(
        &self,
        source: &str,
        keys: &[String],
        plan: &PlanFn<'_>,
    ) -> Result<Ingested, StoreError> {
        let mut inner = self.lock();
        let known = inner.records.get_many(source, keys);
        let batch = plan(&known);
        let outcome = batch.outcome();
        let Batch {
            events, records, ..
        } = batch;
        let changed_at = now_ms();
        // One hub commit for the whole batch: one fan-out, one wake-up per subscriber.
        let committed = self.shared.commit_to_hub(events);
        for w in records {
            let last = w.event.and_then(|i| committed.get(i).cloned().flatten());
            inner
                .records
                .put((source.to_string(), w.key), w.state, last, changed_at);
        }
        Ok(outcome)
    }

    async fn ingest_disk(
        &self,
        source: &str,
        keys: &[String],
        plan: &PlanFn<'_>,
    ) -> Result<Ingested, StoreError> {
        let (outcome, done) = {
            let mut inner = self.lock();
            let inner = &mut *inner;
            let mut known = inner.records.get_many(source, keys);
            if !inner.planned.is_empty() {
                for key in keys {
                    if let Some((state, _)) = inner.planned.get(&(source.to_string(), key.clone()))
                    {
                        known.insert(key.clone(), state.clone());
                    }
                }
            }
            let batch = plan(&known);
            let outcome = batch.outcome();
            if batch.is_empty() {
                return Ok(outcome);
            }
            let Batch {
                events, records, ..
            } = batch;
            // Encoded here, so a record that cannot be stored fails its own request only.
            let mut rows = Vec::with_capacity(records.len());
            for w in records {
                let state_json = serde_json::to_string(&w.state).map_err(|e| {
                    StoreError::Unavailable(format!("cannot encode record {}: {e}", w.key))
                })?;
                rows.push(RecordRow {
                    key: w.key,
                    state: w.state,
                    state_json,
                    event: w.event,
                });
            }
            let (_, done) = self.shared.enqueue(inner, source, events, rows);
            (outcome, done)
        };
        settle(done).await?;
        Ok(outcome)
    }
}

/// Waits for a request's group commit.
async fn settle(done: oneshot::Receiver<Result<(), StoreError>>) -> Result<(), StoreError> {
    done.await.unwrap_or_else(|_| Err(stopped()))
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the store writer stopped".into())
}

fn repeated_or_conflict(
    known: &crate::hub::Event,
    draft: EventDraft,
) -> Result<Published, StoreError> {
    if same_update(known, &draft) {
        Ok(Published::Repeated(draft.id))
    } else {
        Err(StoreError::Conflict(draft.id))
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Memory is only changed after the database commit succeeded (or, memory only,
        // after planning), so a poisoned lock still guards consistent data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a planned request for the next group commit (under the lock).
    fn enqueue(
        &self,
        inner: &mut Inner,
        source: &str,
        events: Vec<EventDraft>,
        records: Vec<RecordRow>,
    ) -> (u64, oneshot::Receiver<Result<(), StoreError>>) {
        inner.last_job += 1;
        let number = inner.last_job;
        for r in &records {
            inner.planned.insert(
                (source.to_string(), r.key.clone()),
                (r.state.clone(), number),
            );
        }
        let (done, wait) = oneshot::channel();
        inner.queue.push(Job {
            number,
            source: source.to_string(),
            events,
            records,
            changed_at: now_ms(),
            done,
        });
        self.wake.notify_one();
        (number, wait)
    }

    fn commit_to_hub(&self, drafts: Vec<EventDraft>) -> Vec<Option<Arc<crate::hub::Event>>> {
        let (committed, wakeups) = self.commit_to_hub_deferred(drafts);
        wakeups.wake_all();
        committed
    }

    /// [`Shared::commit_to_hub`], leaving the subscribers to wake to the caller.
    fn commit_to_hub_deferred(
        &self,
        drafts: Vec<EventDraft>,
    ) -> (Vec<Option<Arc<crate::hub::Event>>>, Wakeups) {
        // IDs are generated (UUIDv7) or checked before: a duplicate cannot happen.
        let (results, wakeups) = self.hub.commit_all_deferred(drafts);
        let committed = results
            .into_iter()
            .map(|result| match result {
                Ok(event) => Some(event),
                Err(e) => {
                    tracing::error!("event not committed to the hub: {e}");
                    None
                }
            })
            .collect();
        (committed, wakeups)
    }

    /// The writer thread: commits every queued request in one transaction, then hands
    /// the group to the applier.
    fn write_groups(&self, mut disk: Disk) {
        loop {
            let (jobs, forget) = {
                let mut inner = self.lock();
                while inner.queue.is_empty() && !inner.closing {
                    inner = self.wake.wait(inner).unwrap_or_else(|p| p.into_inner());
                }
                if inner.queue.is_empty() {
                    inner.writer_stopped = true;
                    self.to_apply.notify_one();
                    return;
                }
                let mut forget = std::mem::take(&mut inner.forget);
                // A record a request still to be applied writes again comes back to
                // memory when that request is applied: it is not deleted.
                forget.retain(|key| !inner.planned.contains_key(key));
                (std::mem::take(&mut inner.queue), forget)
            };
            let group: Vec<GroupWrite<'_>> = jobs
                .iter()
                .map(|j| GroupWrite {
                    source: &j.source,
                    events: &j.events,
                    records: &j.records,
                    changed_at: j.changed_at,
                })
                .collect();
            let result = disk.commit_group(&group, &forget);
            drop(group);
            let mut inner = self.lock();
            match result {
                Ok(()) => {
                    metrics::counter!("relais_store_commits_total").increment(1);
                    metrics::counter!("relais_store_committed_requests_total")
                        .increment(jobs.len() as u64);
                    inner.written.push_back(jobs);
                    drop(inner);
                    self.to_apply.notify_one();
                    // While the group is applied and answered, not inside its commit.
                    match disk.checkpoint_if_due() {
                        Ok(true) => {
                            metrics::counter!("relais_store_checkpoints_total").increment(1)
                        }
                        Ok(false) => {}
                        Err(e) => tracing::warn!("store checkpoint failed, retried later: {e}"),
                    }
                }
                Err(e) => {
                    tracing::error!("store commit failed, {} requests refused: {e}", jobs.len());
                    // The groups written before this one still apply their states (here,
                    // if the applier has not taken them yet), then what later requests
                    // planned on this one is dropped.
                    let (applied, wakeups) = self.apply_locked(&mut inner);
                    inner.forget.extend(forget);
                    let refused = Self::refuse(&mut inner, jobs, &format!("commit failed: {e}"));
                    drop(inner);
                    self.answer(applied, wakeups);
                    self.answer(refused, Wakeups::default());
                }
            }
        }
    }

    /// Refuses `jobs` and every request queued after them (they planned against the
    /// states of the refused ones), and drops every planned state (under the lock).
    fn refuse(inner: &mut Inner, jobs: Vec<Job>, reason: &str) -> Answers {
        let later = std::mem::take(&mut inner.queue);
        inner.planned.clear();
        inner.pending_ids.clear();
        let mut answers = Answers::default();
        for job in jobs.into_iter().chain(later) {
            answers.last = answers.last.max(job.number);
            let error = StoreError::Unavailable(reason.to_string());
            answers.list.push((job.done, Err(error)));
        }
        answers
    }

    /// Tells the requests their outcome, then wakes the subscribers of their events: the
    /// woken tasks queue in that order, and an answer behind 10,000 subscribers' writes
    /// would wait for all of them.
    fn answer(&self, answers: Answers, wakeups: Wakeups) {
        self.settled
            .send_modify(|settled| *settled = (*settled).max(answers.last));
        for (done, answer) in answers.list {
            // A request whose client left no longer waits: nothing to tell.
            let _ = done.send(answer);
        }
        wakeups.wake_all();
    }

    /// The applier: hands the events of every group written to the hub, applies their
    /// record states and answers their requests, in commit order, until the writer has
    /// stopped and everything it wrote is applied.
    async fn apply_groups(self: Arc<Self>) {
        loop {
            self.to_apply.notified().await;
            let mut inner = self.lock();
            let (answers, wakeups) = self.apply_locked(&mut inner);
            let stopped = inner.writer_stopped && inner.written.is_empty();
            drop(inner);
            self.answer(answers, wakeups);
            if stopped {
                return;
            }
        }
    }

    /// Applies every group written so far (under the lock), returning their answers and
    /// the subscribers to wake, for the caller to send once the lock is released.
    fn apply_locked(&self, inner: &mut Inner) -> (Answers, Wakeups) {
        let mut answers = Answers::default();
        let mut wakeups = Wakeups::default();
        for job in std::mem::take(&mut inner.written).into_iter().flatten() {
            answers.last = job.number;
            for draft in &job.events {
                inner.pending_ids.remove(&draft.id);
            }
            // One hub commit per request: one wake-up per subscriber.
            let (committed, woken) = self.commit_to_hub_deferred(job.events);
            wakeups.extend(woken);
            for r in job.records {
                let key = (job.source.clone(), r.key);
                if !inner.forget.is_empty() {
                    // Evicted by an earlier group, written again by this one.
                    inner.forget.retain(|k| k != &key);
                }
                if inner
                    .planned
                    .get(&key)
                    .is_some_and(|(_, n)| *n == job.number)
                {
                    inner.planned.remove(&key);
                }
                let last = r.event.and_then(|i| committed.get(i).cloned().flatten());
                let evicted = inner.records.put(key, r.state, last, job.changed_at);
                inner.forget.extend(evicted);
            }
            answers.list.push((job.done, Ok(())));
        }
        (answers, wakeups)
    }
}

/// Where a request waits for its outcome.
type Done = oneshot::Sender<Result<(), StoreError>>;

/// Outcomes to send, and the number of the last request they settle.
#[derive(Default)]
struct Answers {
    list: Vec<(Done, Result<(), StoreError>)>,
    last: u64,
}

impl Drop for LocalStore {
    fn drop(&mut self) {
        self.lock().closing = true;
        self.shared.wake.notify_all();
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!("the store writer panicked");
            }
            // What the writer made durable is applied and answered here: the applier
            // task may not run again (a runtime shutting down drops its tasks).
            let mut inner = self.lock();
            inner.writer_stopped = true;
            let (answers, wakeups) = self.shared.apply_locked(&mut inner);
            drop(inner);
            self.shared.answer(answers, wakeups);
            self.shared.to_apply.notify_one();
        }
    }
}

/// Whether a retained event and a new draft are the same update (ID, topics, data,
/// type, privacy).
pub fn same_update(event: &crate::hub::Event, draft: &EventDraft) -> bool {
    event.id == draft.id
        && event.topics == draft.topics
        && event.data == draft.data
        && event.event_type == draft.event_type
        && event.private == draft.private
}

impl Backend for LocalStore {
    fn publish(&self, draft: EventDraft) -> BoxFuture<'_, Result<Published, StoreError>> {
        if self.writer.is_some() {
            return self.publish_disk(draft).boxed();
        }
        let result = self.publish_memory(draft);
        async move { result }.boxed()
    }

    fn ingest<'a>(
        &'a self,
        source: &'a str,
        keys: &'a [String],
        plan: &'a PlanFn<'a>,
    ) -> BoxFuture<'a, Result<Ingested, StoreError>> {
        if self.writer.is_some() {
            return self.ingest_disk(source, keys, plan).boxed();
        }
        let result = self.ingest_memory(source, keys, plan);
        async move { result }.boxed()
    }

    fn load_records<'a>(
        &'a self,
        source: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Known, StoreError>> {
        let known = self.lock().records.get_many(source, keys);
        async move { Ok(known) }.boxed()
    }

    fn snapshot<'a>(
        &'a self,
        subscription: &'a Subscription,
    ) -> BoxFuture<'a, Result<Snapshot, StoreError>> {
        let inner = self.lock();
        let last_event_id = self
            .shared
            .hub
            .last_id()
            .unwrap_or_else(|| "earliest".to_string());
        let slots = inner.records.matching(subscription);
        drop(inner);
        // Encoded outside the lock: deliveries go on meanwhile.
        let records = slots.iter().map(|slot| slot.entry()).collect();
        async move {
            Ok(Snapshot {
                last_event_id,
                records,
            })
        }
        .boxed()
    }

    fn ready(&self) -> BoxFuture<'_, bool> {
        async { true }.boxed()
    }

    fn catch_up(&self) -> BoxFuture<'_, ()> {
        async {}.boxed()
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}
