//! The ingestion pipeline: parsed webhook records in, events on the bus out.
//!
//! For one request: load the known states of the records, plan the events (pure),
//! publish them on the bus, and only then store the new states. If the bus refuses,
//! nothing is stored and the caller answers 503, so the sender's retry finds the same
//! known states and produces the same events.
//!
//! In process, the source's lock keeps two deliveries from interleaving their
//! read-diff-write. With Redis, the events and the states are written by one fenced
//! script instead (see `state.rs`): deliveries run concurrently and one that raced over
//! a record is planned again.

use std::collections::HashMap;

use serde::Serialize;

use super::diagpv::{HubSource, ModuleUpdate};
use super::grist::{GristRow, GristSource};
use super::record::Plan;
use super::state::{RedisStateStore, StateStore, StoreError};
use crate::bus::redis::Fenced;
use crate::bus::{Bus, BusError};
use crate::config::{Config, ConfigError, SourceConfig, SourceKind};
use crate::hub::EventDraft;

/// A configured webhook source of either kind.
#[derive(Debug, Clone)]
pub enum Source {
    /// `POST /hooks/grist/{name}`.
    Grist(GristSource),
    /// `POST /hooks/hub/{name}`.
    Hub(HubSource),
}

impl Source {
    /// Builds a source from its configuration; the error names the faulty key.
    pub fn from_config(name: &str, config: &SourceConfig) -> Result<Self, String> {
        match config.kind {
            SourceKind::Grist => GristSource::from_config(name, config).map(Source::Grist),
            SourceKind::Hub => HubSource::from_config(name, config).map(Source::Hub),
        }
    }

    /// Topic templates, as written.
    pub fn topics(&self) -> Vec<&str> {
        let templates = match self {
            Source::Grist(s) => &s.topics,
            Source::Hub(s) => &s.topics,
        };
        templates.iter().map(|t| t.as_str()).collect()
    }

    /// Event type.
    pub fn event_type(&self) -> &str {
        match self {
            Source::Grist(s) => &s.event_type,
            Source::Hub(s) => &s.event_type,
        }
    }

    fn private(&self) -> bool {
        match self {
            Source::Grist(s) => s.private,
            Source::Hub(s) => s.private,
        }
    }
}

/// What a webhook request amounted to (the 200 answer's body).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Rows or updates in the request.
    pub received: usize,
    /// Events published.
    pub published: usize,
    /// Records identical to their known state (retries, replays): no event.
    pub unchanged: usize,
    /// Updates older than the known state (late deliveries): dropped.
    pub stale: usize,
}

/// Why a valid request could not be ingested (the sender should retry: HTTP 503).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The record state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The bus did not take the events.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// No source of that name and kind (HTTP 404).
    #[error("no such source")]
    UnknownSource,
}

/// How many times a delivery replans after another instance changed its records.
const MAX_CONFLICT_RETRIES: usize = 8;

struct Entry {
    source: Source,
    lock: tokio::sync::Mutex<()>,
}

/// Turns webhook records into events on the bus, keeping record state.
pub struct Ingestor {
    sources: HashMap<String, Entry>,
    store: StateStore,
    bus: Bus,
}

impl Ingestor {
    /// The ingestor for the configured sources: record state in Redis with the Redis
    /// bus, else in process (`hub.record_state_capacity` records).
    pub fn new(config: &Config, bus: Bus) -> Result<Self, ConfigError> {
        let store = match &bus {
            Bus::Redis(redis) => StateStore::Redis(RedisStateStore::new(
                redis.as_ref().clone(),
                config.redis.state_ttl,
            )),
            Bus::Local(_) => StateStore::memory(config.hub.record_state_capacity),
        };
        Self::with_store(config, store, bus)
    }

    /// The ingestor with a given state store.
    pub fn with_store(config: &Config, store: StateStore, bus: Bus) -> Result<Self, ConfigError> {
        let mut sources = HashMap::new();
        for (name, source) in &config.sources {
            let source = Source::from_config(name, source)
                .map_err(|e| ConfigError::Invalid(format!("sources.{name}.{e}")))?;
            sources.insert(
                name.clone(),
                Entry {
                    source,
                    lock: tokio::sync::Mutex::new(()),
                },
            );
        }
        Ok(Self {
            sources,
            store,
            bus,
        })
    }

    /// A configured source by name.
    pub fn source(&self, name: &str) -> Option<&Source> {
        self.sources.get(name).map(|e| &e.source)
    }

    /// The state store, for start-up messages.
    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// Ingests the parsed rows of a Grist webhook.
    pub async fn ingest_grist(
        &self,
        name: &str,
        rows: &[GristRow],
    ) -> Result<Summary, IngestError> {
        let entry = self.sources.get(name).ok_or(IngestError::UnknownSource)?;
        let Source::Grist(source) = &entry.source else {
            return Err(IngestError::UnknownSource);
        };
        let keys = rows.iter().map(GristSource::key).collect();
        self.run(entry, rows.len(), keys, |known| source.plan(rows, known))
            .await
    }

    /// Ingests the parsed updates of a hub webhook.
    pub async fn ingest_hub(
        &self,
        name: &str,
        updates: &[ModuleUpdate],
    ) -> Result<Summary, IngestError> {
        let entry = self.sources.get(name).ok_or(IngestError::UnknownSource)?;
        let Source::Hub(source) = &entry.source else {
            return Err(IngestError::UnknownSource);
        };
        let keys = updates.iter().map(ModuleUpdate::key).collect();
        self.run(entry, updates.len(), keys, |known| {
            source.plan(updates, known)
        })
        .await
    }

    async fn run(
        &self,
        entry: &Entry,
        received: usize,
        mut keys: Vec<String>,
        plan: impl Fn(&HashMap<String, super::record::StoredRecord>) -> Plan,
    ) -> Result<Summary, IngestError> {
        let name = match &entry.source {
            Source::Grist(s) => &s.name,
            Source::Hub(s) => &s.name,
        };
        keys.sort_unstable();
        keys.dedup();
        let event_type = entry.source.event_type();
        let private = entry.source.private();
        // Moves each planned event into its draft: the payloads are not copied.
        let drafts_of = |plan: &mut Plan| -> Vec<EventDraft> {
            std::mem::take(&mut plan.events)
                .into_iter()
                .map(|e| {
                    EventDraft::new(e.topics, e.data)
                        .with_type(event_type)
                        .private(private)
                        .with_source(name.as_str())
                })
                .collect()
        };
        let (plan, published) = match &self.store {
            StateStore::Memory(store) => {
                // Two deliveries of one source never interleave their read-diff-write.
                let _guard = entry.lock.lock().await;
                let states = store.get_many(name, &keys);
                let known = keys
                    .into_iter()
                    .zip(states)
                    .filter_map(|(k, s)| s.map(|s| (k, s)))
                    .collect();
                let mut plan = plan(&known);
                let published = plan.events.len();
                if published > 0 {
                    self.bus.publish(drafts_of(&mut plan)).await?;
                }
                // Stored only once the events are on the bus: if the bus refused, the
                // sender's retry finds the same states and produces the same events.
                store.put_many(name, std::mem::take(&mut plan.store));
                (plan, published)
            }
            StateStore::Redis(store) => {
                // No lock: deliveries run concurrently (on this instance as on others),
                // and the fenced commit makes any that raced over a record replan.
                let mut attempt = 0;
                loop {
                    let snapshot = store.load(name, &keys).await?;
                    let mut planned = plan(&snapshot.known);
                    let published = planned.events.len();
                    if published == 0 && planned.store.is_empty() {
                        break (planned, 0);
                    }
                    let drafts = drafts_of(&mut planned);
                    match store
                        .commit(name, &snapshot.fence, drafts, &planned.store)
                        .await?
                    {
                        Fenced::Published(_) => break (planned, published),
                        Fenced::Conflict if attempt < MAX_CONFLICT_RETRIES => {
                            // Another instance changed one of these records meanwhile.
                            attempt += 1;
                            metrics::counter!("relais_ingest_conflicts_total", "source" => name.clone())
                                .increment(1);
                        }
                        Fenced::Conflict => {
                            return Err(IngestError::Bus(BusError::Unavailable(
                                "records kept changing under concurrent deliveries; retry".into(),
                            )))
                        }
                    }
                }
            }
        };
        if published > 0 {
            metrics::counter!(
                "relais_events_in_total",
                "source" => name.clone(),
                "type" => event_type.to_string(),
            )
            .increment(published as u64);
        }
        for (reason, count) in [("unchanged", plan.unchanged), ("stale", plan.stale)] {
            if count > 0 {
                metrics::counter!(
                    "relais_ingest_dropped_total",
                    "source" => name.clone(),
                    "reason" => reason,
                )
                .increment(count as u64);
            }
        }
        Ok(Summary {
            received,
            published,
            unchanged: plan.unchanged,
            stale: plan.stale,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::hub::{Hub, ResumeFrom};
    use serde_json::json;

    fn config() -> Config {
        toml::from_str(
            r#"
            [sources.cerema]
            kind = "grist"
            authorization = "Bearer t"
            [sources.diagpv]
            kind = "hub"
            authorization = "Bearer h"
            private = true
            "#,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn publishes_then_absorbs_retries() {
        let hub = Arc::new(Hub::new(100, 16));
        let ingestor = Ingestor::new(&config(), Bus::local(hub.clone())).unwrap();
        let src = match ingestor.source("cerema").unwrap() {
            Source::Grist(s) => s.clone(),
            Source::Hub(_) => panic!(),
        };
        let body = json!([{"id": 1, "manualSort": 1, "ID": "INT-1", "Agent": "A", "Localisation": "L",
            "Type": "Voirie", "Statut": "En cours", "Priorite": "Haute", "Derniere_MAJ": 0, "Commentaire": null}]);
        let rows = crate::ingest::grist::parse_rows(&body, &src.mapping).unwrap();
        let s = ingestor.ingest_grist("cerema", &rows).await.unwrap();
        assert_eq!((s.received, s.published, s.unchanged), (1, 1, 0));
        let s = ingestor.ingest_grist("cerema", &rows).await.unwrap();
        assert_eq!((s.published, s.unchanged), (0, 1));
        let replay = hub.attach(&ResumeFrom::Earliest).replay;
        assert_eq!(replay.len(), 1);
        assert_eq!(replay[0].event_type.as_deref(), Some("intervention"));
        assert_eq!(replay[0].source, "cerema");
        assert!(!replay[0].private);
        // A Grist source is not a hub source.
        assert!(matches!(
            ingestor.ingest_hub("cerema", &[]).await,
            Err(IngestError::UnknownSource)
        ));
        let updates =
            crate::ingest::diagpv::parse_updates(&json!({"audit_token": "t", "module_id": "M1",
            "status": "dead", "updated_at_ms": 5}))
            .unwrap();
        ingestor.ingest_hub("diagpv", &updates).await.unwrap();
        let replay = hub.attach(&ResumeFrom::Earliest).replay;
        assert!(replay[1].private);
        assert_eq!(replay[1].topics, ["audits/t", "audits/t/modules/M1"]);
    }
}
