//! The in-process backends: memory only, or memory mirrored on disk.
//!
//! One lock orders every commit of this process: a request's record states are read,
//! planned and written under it, so two deliveries never interleave their
//! read-diff-write, and a snapshot taken under it sees the record states and the last
//! committed event of the same instant. With a database, the request's events and
//! record states are written in one transaction, committed (synced to disk) before the
//! hub streams them and before the webhook is answered; if the commit fails nothing
//! changes in memory and the sender retries.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::BoxFuture;
use futures::FutureExt;

use super::disk::{Disk, DiskEvent, DiskRecord};
use super::records::{now_ms, Records};
use super::{
    Backend, Batch, Ingested, Known, OpenError, PlanFn, Published, Snapshot, SnapshotRecord,
    StoreError,
};
use crate::config::Config;
use crate::hub::{EventDraft, Hub, Subscription};

/// Memory or disk store of one process.
pub struct LocalStore {
    hub: Arc<Hub>,
    inner: Mutex<Inner>,
    describe: String,
}

struct Inner {
    records: Records,
    disk: Option<Disk>,
}

impl LocalStore {
    /// Memory only.
    pub fn memory(hub: Arc<Hub>, config: &Config) -> Self {
        Self {
            hub,
            inner: Mutex::new(Inner {
                records: Records::new(config.hub.record_state_capacity, config.hub.record_ttl),
                disk: None,
            }),
            describe: format!(
                "in memory only (hub.persist = false): history and the last {} record states are lost on restart",
                config.hub.record_state_capacity
            ),
        }
    }

    /// The disk store at `path`: loads its history into `hub` and its record states.
    pub fn open(path: &Path, hub: Arc<Hub>, config: &Config) -> Result<Self, OpenError> {
        let fail = |reason: String| OpenError::Disk {
            path: path.display().to_string(),
            reason,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        }
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
        Ok(Self {
            hub,
            inner: Mutex::new(Inner {
                records,
                disk: Some(disk),
            }),
            describe: format!(
                "on disk in {} (history and record states survive restarts)",
                path.display()
            ),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Memory is only changed after the database commit succeeded, so a poisoned lock
        // still guards consistent data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish_now(&self, draft: EventDraft) -> Result<Published, StoreError> {
        let mut inner = self.lock();
        if let Some(known) = self.hub.get(&draft.id) {
            return if same_update(&known, &draft) {
                Ok(Published::Repeated(draft.id))
            } else {
                Err(StoreError::Conflict(draft.id))
            };
        }
        if let Some(disk) = inner.disk.as_mut() {
            disk.commit(&[DiskEvent::of(&draft)], &[])
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        }
        let id = draft.id.clone();
        self.hub
            .commit(draft)
            .map_err(|e| StoreError::Conflict(e.to_string()))?;
        Ok(Published::New(id))
    }

    fn ingest_now(
        &self,
        source: &str,
        keys: &[String],
        plan: &PlanFn<'_>,
    ) -> Result<Ingested, StoreError> {
        let mut inner = self.lock();
        let known = inner.records.get_many(source, keys);
        let batch = plan(&known);
        let outcome = batch.outcome();
        if batch.is_empty() {
            return Ok(outcome);
        }
        let Batch {
            events, records, ..
        } = batch;
        let changed_at = now_ms();
        if let Some(disk) = inner.disk.as_mut() {
            let disk_events: Vec<DiskEvent> = events.iter().map(DiskEvent::of).collect();
            let disk_records: Vec<(String, String, DiskRecord)> = records
                .iter()
                .map(|w| {
                    (
                        source.to_string(),
                        w.key.clone(),
                        DiskRecord {
                            state: w.state.clone(),
                            last: w.event.and_then(|i| disk_events.get(i).cloned()),
                            changed_at,
                        },
                    )
                })
                .collect();
            disk.commit(&disk_events, &disk_records)
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        }
        // One hub commit for the whole batch: one fan-out, one wake-up per subscriber.
        let mut committed = Vec::with_capacity(events.len());
        for result in self.hub.commit_all(events) {
            // IDs are generated (UUIDv7): a duplicate cannot happen.
            match result {
                Ok(event) => committed.push(Some(event)),
                Err(e) => {
                    tracing::error!("event not committed to the hub: {e}");
                    committed.push(None);
                }
            }
        }
        let mut evicted = Vec::new();
        for w in records {
            let last = w.event.and_then(|i| committed.get(i).cloned().flatten());
            evicted.extend(inner.records.put(
                (source.to_string(), w.key),
                w.state,
                last,
                changed_at,
            ));
        }
        if let Some(disk) = inner.disk.as_mut() {
            // Records pushed out of the bounded state leave the database with the next
            // commit (until then a restart reloads them and evicts them again).
            disk.forget(evicted);
        }
        Ok(outcome)
    }
}

/// Runs a commit that may wait for the disk: on a multi-threaded runtime the worker hands
/// its other tasks (streams, other requests) to the rest of the pool meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
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
        let result = blocking(|| self.publish_now(draft));
        async move { result }.boxed()
    }

    fn ingest<'a>(
        &'a self,
        source: &'a str,
        keys: &'a [String],
        plan: &'a PlanFn<'a>,
    ) -> BoxFuture<'a, Result<Ingested, StoreError>> {
        let result = blocking(|| self.ingest_now(source, keys, plan));
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
        let last_event_id = self.hub.last_id().unwrap_or_else(|| "earliest".to_string());
        let events = inner.records.matching(subscription);
        drop(inner);
        let records = events.iter().map(|e| SnapshotRecord::of(e)).collect();
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
