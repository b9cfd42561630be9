//! The ingestion pipeline: parsed webhook records in, events in the store out.
//!
//! For one request the store loads the known states of the records, this module plans
//! the events (pure: `grist.rs`, `diagpv.rs`), and the store commits the events with the
//! new record states atomically (one transaction on disk, one script in Redis) before
//! the webhook is answered. If the store refuses, nothing is stored and the caller
//! answers 503, so the sender's retry finds the same known states and produces the same
//! events.

use std::collections::HashMap;

use serde::Serialize;

use super::diagpv::{HubSource, ModuleUpdate};
use super::grist::{GristRow, GristSource};
use super::record::{Plan, StoredRecord};
use crate::config::{Config, ConfigError, SourceConfig, SourceKind};
use crate::hub::EventDraft;
use crate::store::{Batch, RecordWrite, Store, StoreError};

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

/// Checks what the configuration of each source means to ingestion (topic templates,
/// column mappings, Standard Webhooks keys); the error names the faulty key. Run after
/// `Config::load` (which checks everything else), so that `config` needs nothing from
/// `ingest`.
pub fn check_sources(config: &Config) -> Result<(), ConfigError> {
    for (name, source) in &config.sources {
        Source::from_config(name, source)
            .map_err(|e| ConfigError::Invalid(format!("sources.{name}.{e}")))?;
        if source.kind == SourceKind::Hub {
            if let Some(secret) = &source.secret {
                let Ok(key) = super::signature::WebhookSecret::parse(secret.expose()) else {
                    return Err(ConfigError::Invalid(format!(
                        "sources.{name}.secret: a hub secret is a Standard Webhooks key: whsec_ followed by base64"
                    )));
                };
                if let Err(e) =
                    crate::config::secret_policy::check_webhook_key(secret.expose(), key.len())
                {
                    return Err(ConfigError::Invalid(format!(
                        "sources.{name}.secret: the decoded key {e}"
                    )));
                }
            }
        }
    }
    Ok(())
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
    /// The store did not take the events.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No source of that name and kind (HTTP 404).
    #[error("no such source")]
    UnknownSource,
}

struct Entry {
    source: Source,
}

/// Turns webhook records into events in the store, keeping record state.
pub struct Ingestor {
    sources: HashMap<String, Entry>,
    store: Store,
}

impl Ingestor {
    /// The ingestor for the configured sources, committing into `store`.
    pub fn new(config: &Config, store: Store) -> Result<Self, ConfigError> {
        let mut sources = HashMap::new();
        for (name, source) in &config.sources {
            let source = Source::from_config(name, source)
                .map_err(|e| ConfigError::Invalid(format!("sources.{name}.{e}")))?;
            sources.insert(name.clone(), Entry { source });
        }
        Ok(Self { sources, store })
    }

    /// A configured source by name.
    pub fn source(&self, name: &str) -> Option<&Source> {
        self.sources.get(name).map(|e| &e.source)
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
        plan: impl Fn(&HashMap<String, StoredRecord>) -> Plan + Send + Sync,
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
        let batch = |known: &HashMap<String, StoredRecord>| -> Batch {
            let plan = plan(known);
            let events = plan
                .events
                .into_iter()
                .map(|e| {
                    EventDraft::new(e.topics, e.data)
                        .with_type(event_type)
                        .private(private)
                        .with_source(name.as_str())
                })
                .collect();
            let records = plan
                .store
                .into_iter()
                .zip(plan.last_event)
                .map(|((key, state), event)| RecordWrite { key, state, event })
                .collect();
            Batch {
                events,
                records,
                unchanged: plan.unchanged,
                stale: plan.stale,
            }
        };
        let done = self.store.ingest(name, &keys, &batch).await?;
        let published = done.published;
        if published > 0 {
            metrics::counter!(
                "relais_events_in_total",
                "source" => name.clone(),
                "type" => event_type.to_string(),
            )
            .increment(published as u64);
        }
        for (reason, count) in [("unchanged", done.unchanged), ("stale", done.stale)] {
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
            unchanged: done.unchanged,
            stale: done.stale,
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
        let ingestor = Ingestor::new(&config(), Store::memory(hub.clone(), &config())).unwrap();
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
