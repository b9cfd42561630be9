//! Presence in single-binary mode with the disk store: the subscriptions of this
//! process, listed in `presence.sqlite` in the state directory, so that a restart after
//! a crash (`kill -9`, power cut) ends those left from before (`active: false`
//! published at start, before anything listens). Clients that resume from an event ID
//! retained on disk then see their end in the replay.
//!
//! The list is written by a background thread, in batches, without waiting for the disk
//! (`synchronous = OFF`: a killed process loses nothing the kernel has, a power cut may
//! lose the last changes), so subscribing never waits on it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

use futures::future::BoxFuture;
use futures::FutureExt;
use rusqlite::{params, Connection};

use crate::hub::presence::{self, Change, Pair, Shared};
use crate::hub::Hub;

enum Write {
    Add {
        iri: String,
        id: String,
        data: String,
    },
    Remove(String),
    /// Everything written so far is in the file: answer on the channel.
    Flush(mpsc::Sender<()>),
}

/// This process' subscriptions, announced to its hub and listed on disk.
pub struct DiskPresence {
    hub: Arc<Hub>,
    /// The ID of each subscription's end event, by IRI, for the subscriptions of this
    /// process. Its document is derived from the start document the hub lists when the
    /// end is due: one connection holds one copy of each.
    ends: Mutex<HashMap<Arc<str>, Box<str>>>,
    writes: Mutex<mpsc::Sender<Write>>,
}

/// Why the presence list could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the presence list {path}: {reason}")]
pub struct PresenceFileError {
    /// The file.
    pub path: String,
    /// Why.
    pub reason: String,
}

impl DiskPresence {
    /// Opens the list at `path`, ends (in `hub`) the subscriptions left in it by an
    /// earlier run, and starts the writer thread.
    pub fn open(path: &Path, hub: Arc<Hub>) -> Result<Self, PresenceFileError> {
        let fail = |e: rusqlite::Error| PresenceFileError {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let conn = Connection::open(path).map_err(fail)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(fail)?;
        conn.pragma_update(None, "synchronous", "OFF")
            .map_err(fail)?;
        conn.execute(
            "CREATE TABLE IF NOT EXISTS subscriptions (iri TEXT PRIMARY KEY, end_id TEXT NOT NULL, end_data TEXT NOT NULL)",
            [],
        )
        .map_err(fail)?;
        let leftovers: Vec<(String, String, String)> = {
            let mut stmt = conn
                .prepare("SELECT iri, end_id, end_data FROM subscriptions")
                .map_err(fail)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(fail)?;
            rows.collect::<Result<_, _>>().map_err(fail)?
        };
        if !leftovers.is_empty() {
            tracing::info!(
                subscriptions = leftovers.len(),
                "presence: ending the subscriptions left by the previous run"
            );
        }
        for (iri, id, data) in leftovers {
            hub.commit_presence(Change::from_parts(id, iri, data, false));
        }
        conn.execute("DELETE FROM subscriptions", [])
            .map_err(fail)?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("relais-presence".into())
            .spawn(move || write_loop(conn, rx))
            .map_err(|e| PresenceFileError {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            hub,
            ends: Mutex::new(HashMap::new()),
            writes: Mutex::new(tx),
        })
    }

    fn send(&self, write: Write) {
        // The writer only stops with the process.
        let _ = self
            .writes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(write);
    }

    fn ends(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Box<str>>> {
        self.ends.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn write_loop(mut conn: Connection, rx: mpsc::Receiver<Write>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let mut flushed = Vec::new();
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for write in batch {
                match write {
                    Write::Add { iri, id, data } => {
                        tx.execute(
                            "INSERT OR REPLACE INTO subscriptions (iri, end_id, end_data) VALUES (?1, ?2, ?3)",
                            params![iri, id, data],
                        )?;
                    }
                    Write::Remove(iri) => {
                        tx.execute("DELETE FROM subscriptions WHERE iri = ?1", params![iri])?;
                    }
                    Write::Flush(done) => flushed.push(done),
                }
            }
            tx.commit()
        })();
        if let Err(e) = result {
            tracing::warn!("presence: cannot update the presence list on disk: {e}");
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

impl Shared for DiskPresence {
    fn start(&self, pair: Pair) {
        let iri = pair.start.shared_iri();
        self.send(Write::Add {
            iri: iri.to_string(),
            id: pair.end.draft.id.clone(),
            data: pair.end.draft.data.clone(),
        });
        self.ends().insert(iri, pair.end.draft.id.into_boxed_str());
        self.hub.commit_presence(pair.start);
    }

    fn end(&self, iri: Arc<str>) {
        let Some(id) = self.ends().remove(&iri) else {
            return;
        };
        self.send(Write::Remove(iri.to_string()));
        let listed = self.hub.active_document(&iri);
        let Some(data) = listed.as_deref().and_then(presence::ended) else {
            // Only this process lists or unlists its subscriptions here: not reached.
            tracing::warn!(%iri, "presence: a subscription of this process is not listed; its end is not announced");
            return;
        };
        let end = Change::from_parts(id.into(), iri.to_string(), data, false);
        self.hub.commit_presence(end);
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            // A clean stop: end what is still connected and leave an empty list.
            let iris: Vec<Arc<str>> = self.ends().keys().cloned().collect();
            for iri in iris {
                self.end(iri);
            }
            let (done, wait) = mpsc::channel();
            self.send(Write::Flush(done));
            let _ = tokio::task::spawn_blocking(move || wait.recv()).await;
        }
        .boxed()
    }
}
