//! The bus: where committed events go so that every instance's hub streams them.
//!
//! The in-process bus (the default) commits straight into this process's [`Hub`]; the
//! Redis bus shares one ordered stream between instances. A
//! publish call returns once the events are durably on the bus, which is the moment a
//! webhook may be acknowledged.

pub mod local;
pub mod redis;

use std::sync::Arc;

use crate::hub::{CommitError, EventDraft, Hub};

pub use self::redis::RedisBus;
pub use local::LocalBus;

/// Why the bus did not take events.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The bus cannot be reached now; the sender should retry (HTTP 503).
    #[error("the event bus is unavailable: {0}")]
    Unavailable(String),
    /// The hub refused an event (duplicate publisher ID).
    #[error(transparent)]
    Commit(#[from] CommitError),
}

/// The bus in use.
#[derive(Clone)]
pub enum Bus {
    /// Single process, no dependency.
    Local(LocalBus),
    /// Several instances sharing a Redis stream.
    Redis(Box<RedisBus>),
}

impl Bus {
    /// The in-process bus feeding `hub`.
    pub fn local(hub: Arc<Hub>) -> Self {
        Bus::Local(LocalBus::new(hub))
    }

    /// Publishes events in order; returns their IDs once they are on the bus.
    pub async fn publish(&self, drafts: Vec<EventDraft>) -> Result<Vec<String>, BusError> {
        match self {
            Bus::Local(bus) => bus.publish(drafts),
            Bus::Redis(bus) => bus.publish(drafts).await,
        }
    }

    /// Whether the bus can take events now (`/readyz`).
    pub async fn ready(&self) -> bool {
        match self {
            Bus::Local(_) => true,
            Bus::Redis(bus) => bus.ready().await,
        }
    }

    /// Before a resume from an ID this instance does not know: waits briefly until it has
    /// read everything other instances published (no-op in process).
    pub async fn catch_up(&self) {
        if let Bus::Redis(bus) = self {
            bus.catch_up().await;
        }
    }

    /// A short name for start-up messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Bus::Local(_) => "in-process bus, in-memory history",
            Bus::Redis(_) => "Redis bus (stream), history shared through Redis",
        }
    }
}
