//! The store: where committed events and record states live, behind one seam.
//!
//! Three backends implement [`Backend`]:
//! - **memory** ([`local::LocalStore`] without a database): history and record state in
//!   this process only (`hub.persist = false`, for tests and throwaway use);
//! - **disk** ([`local::LocalStore`] with a [`disk::Disk`], the default without Redis):
//!   the same, mirrored in an embedded database in the state directory, committed in one
//!   transaction per request before it is acknowledged, and reloaded on start;
//! - **Redis** ([`redis::RedisStore`]): several instances share one ordered stream and
//!   the record states, written by one script per request.
//!
//! The contracts, and nothing else, are what callers see: publish one update
//! idempotently; ingest a batch (load the known states, let the caller plan, then commit
//! the events with the new states atomically); load record states; snapshot the last
//! events matching a subscription with a `lastEventID` consistent with the stream. One
//! test suite (`tests/store_contract.rs`) runs against all three.

pub mod disk;
pub mod live_log;
pub mod local;
pub mod presence_disk;
pub mod presence_redis;
pub mod records;
pub mod redis;
pub mod rows;

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::hub::{Event, EventDraft, Hub, Subscription};
use crate::ingest::record::StoredRecord;

/// Why the store did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or written now; the sender should retry (HTTP 503).
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// A publisher reused a retained event ID for a different update (HTTP 409).
    #[error("an event with id {0:?} is already retained with different content; event IDs must be unique")]
    Conflict(String),
}

/// The outcome of publishing one update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// Committed now, with this ID.
    New(String),
    /// The same update (same ID, topics, data, type and privacy) is already retained: a
    /// client's retry; nothing was published.
    Repeated(String),
}

impl Published {
    /// The event's ID either way.
    pub fn id(&self) -> &str {
        match self {
            Published::New(id) | Published::Repeated(id) => id,
        }
    }
}

/// A record state to store with a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordWrite {
    /// The record key within its source.
    pub key: String,
    /// The new state.
    pub state: StoredRecord,
    /// Index in [`Batch::events`] of the record's new last event.
    pub event: Option<usize>,
}

/// What one request commits: its events (in order) and the new states of its records,
/// all or nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// Events to publish, in order (relais-generated IDs).
    pub events: Vec<EventDraft>,
    /// New record states.
    pub records: Vec<RecordWrite>,
    /// Records identical to their known state (reported back, not stored).
    pub unchanged: usize,
    /// Records older than their known state (reported back, not stored).
    pub stale: usize,
}

impl Batch {
    /// What committing this batch amounts to, for the webhook's answer.
    pub fn outcome(&self) -> Ingested {
        Ingested {
            published: self.events.len(),
            unchanged: self.unchanged,
            stale: self.stale,
        }
    }

    /// Whether there is nothing to commit (every record unchanged or stale).
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.records.is_empty()
    }
}

/// Known record states by key.
pub type Known = HashMap<String, StoredRecord>;

/// Plans a batch from the known states of its records. Pure; it may be called again
/// when another instance changed one of the records meanwhile (Redis).
pub type PlanFn<'a> = dyn Fn(&Known) -> Batch + Send + Sync + 'a;

/// What an ingested request amounted to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ingested {
    /// Events committed.
    pub published: usize,
    /// Records identical to their known state.
    pub unchanged: usize,
    /// Records older than their known state.
    pub stale: usize,
}

/// A `/state` answer: the last event of each matching record, and the stream position
/// it is consistent with.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The last event committed when the snapshot was taken (`earliest` when nothing is
    /// retained yet: subscribing from it replays everything that came after).
    pub last_event_id: String,
    /// One event per record, shared with the store (not copied per request).
    pub records: Vec<Arc<SnapshotRecord>>,
}

/// One record of a snapshot: its last event, with its `/state` entry encoded once.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRecord {
    /// The event ID.
    pub id: String,
    /// The event type.
    pub event_type: Option<String>,
    /// Its topics.
    pub topics: Vec<String>,
    /// The normalized event data (JSON text as published).
    pub data: String,
    /// Whether it is private (only a matching claim sees it).
    pub private: bool,
    /// The record's JSON object as `/state` answers it: `{"id", "type", "topics",
    /// "data"}`, `data` embedded as JSON when it is JSON, else as a string.
    pub json: bytes::Bytes,
}

#[derive(serde::Serialize)]
struct Entry<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: Option<&'a str>,
    topics: &'a [String],
    data: EntryData<'a>,
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum EntryData<'a> {
    Json(&'a serde_json::value::RawValue),
    Text(&'a str),
}

impl SnapshotRecord {
    /// A record's last event, encoding its `/state` entry.
    pub fn new(
        id: String,
        event_type: Option<String>,
        topics: Vec<String>,
        data: String,
        private: bool,
    ) -> Self {
        let entry = Entry {
            id: &id,
            event_type: event_type.as_deref(),
            topics: &topics,
            data: match serde_json::from_str(&data) {
                Ok(raw) => EntryData::Json(raw),
                Err(_) => EntryData::Text(&data),
            },
        };
        // Strings and raw JSON always encode.
        let json = serde_json::to_vec(&entry).unwrap_or_default().into();
        Self {
            id,
            event_type,
            topics,
            data,
            private,
            json,
        }
    }

    /// From a committed event.
    pub fn of(event: &Event) -> Self {
        Self::new(
            event.id.clone(),
            event.event_type.clone(),
            event.topics.clone(),
            event.data.to_string(),
            event.private,
        )
    }
}

/// One storage backend. Every method is a contract of the shared test suite.
pub trait Backend: Send + Sync {
    /// Publishes one update (Mercure publish). An ID still retained answers
    /// [`Published::Repeated`] when the update is identical, [`StoreError::Conflict`]
    /// otherwise; generated IDs are checked the same way.
    fn publish(&self, draft: EventDraft) -> BoxFuture<'_, Result<Published, StoreError>>;

    /// Loads the known states of `keys` of `source`, plans the batch with `plan` and
    /// commits its events and record states atomically; nothing is stored when it fails.
    fn ingest<'a>(
        &'a self,
        source: &'a str,
        keys: &'a [String],
        plan: &'a PlanFn<'a>,
    ) -> BoxFuture<'a, Result<Ingested, StoreError>>;

    /// The known states of `keys` of `source`.
    fn load_records<'a>(
        &'a self,
        source: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Known, StoreError>>;

    /// The last event of every record `subscription` may see, and the last event ID
    /// committed at that moment.
    fn snapshot<'a>(
        &'a self,
        subscription: &'a Subscription,
    ) -> BoxFuture<'a, Result<Snapshot, StoreError>>;

    /// Whether the store can take events now (`/readyz`).
    fn ready(&self) -> BoxFuture<'_, bool>;

    /// Before a resume from an ID this instance does not know: waits briefly until it has
    /// read everything other instances committed (no-op in process).
    fn catch_up(&self) -> BoxFuture<'_, ()>;

    /// A short description for start-up messages.
    fn describe(&self) -> String;

    /// The queue of Matrix alerts holding at most `capacity`: in process by default
    /// (lost on restart); in Redis, shared by the instances, each alert sent once.
    fn alert_queue(&self, capacity: usize) -> BoxFuture<'_, Result<AlertQueue, StoreError>> {
        async move { Ok(crate::alerts::sender::memory_queue(capacity)) }.boxed()
    }
}

/// Both ends of the alert queue.
pub type AlertQueue = (
    crate::alerts::sender::QueueWriter,
    crate::alerts::sender::QueueReader,
);

/// The store in use (cheap to clone).
#[derive(Clone)]
pub struct Store(Arc<dyn Backend>);

impl std::ops::Deref for Store {
    type Target = dyn Backend;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}

impl Store {
    /// Wraps a backend.
    pub fn new(backend: impl Backend + 'static) -> Self {
        Self(Arc::new(backend))
    }

    /// A memory-only store feeding `hub` (nothing survives a restart).
    pub fn memory(hub: Arc<Hub>, config: &Config) -> Self {
        Self::new(local::LocalStore::memory(hub, config))
    }

    /// The store the configuration asks for: Redis when `redis.url` is set, else the disk
    /// store in the state directory, or memory only with `hub.persist = false`. Loads
    /// what was stored into `hub`.
    pub async fn open(
        config: &Config,
        hub: Arc<Hub>,
        shutdown: CancellationToken,
    ) -> Result<Self, OpenError> {
        if let Some(url) = &config.redis.url {
            let store = redis::RedisStore::connect(url.expose(), config, hub, shutdown).await?;
            return Ok(Self::new(store));
        }
        if !config.hub.persist {
            return Ok(Self::memory(hub, config));
        }
        let path = config.state_dir().join("store.sqlite");
        Ok(Self::new(local::LocalStore::open(&path, hub, config)?))
    }
}

/// Why the store could not be opened at start-up.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Redis was configured but could not be reached.
    #[error(transparent)]
    Redis(#[from] redis::RedisConnectError),
    /// The database file could not be opened or read.
    #[error("cannot open the store {path}: {reason}")]
    Disk {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}
