//! An alert as queued and sent: its text and its Matrix transaction ID, and why a
//! queue may refuse it. Shared by the in-process queue ([`super::sender`]) and the Redis
//! one ([`super::redis_queue`]), which otherwise know nothing of each other.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::message::Message;

/// One alert waiting to be posted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Matrix transaction ID (stable, URL-safe), see [`txn_id`].
    pub txn_id: String,
    /// Name of the rule that fired.
    pub rule: String,
    /// ID of the event that fired it.
    pub event_id: String,
    /// Plain text.
    pub body: String,
    /// HTML.
    pub formatted_body: String,
}

impl Alert {
    /// An alert for `rule` firing on event `event_id`.
    pub fn new(event_id: &str, rule: &str, message: Message) -> Self {
        Alert {
            txn_id: txn_id(event_id, rule),
            rule: rule.to_string(),
            event_id: event_id.to_string(),
            body: message.body,
            formatted_body: message.formatted_body,
        }
    }

    /// The text to send.
    pub fn message(&self) -> Message {
        Message {
            body: self.body.clone(),
            formatted_body: self.formatted_body.clone(),
        }
    }
}

/// The transaction ID of the alert `rule` raised by event `event_id`: `relais-` and 40
/// hex digits of SHA-256 over both, so it is the same every time (and on every instance)
/// and safe in a URL whatever the event ID looks like.
pub fn txn_id(event_id: &str, rule: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(event_id.as_bytes());
    hash.update([0u8]);
    hash.update(rule.as_bytes());
    let digest = hash.finalize();
    let hex: String = digest.iter().take(20).map(|b| format!("{b:02x}")).collect();
    format!("relais-{hex}")
}

/// Why an alert was not queued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds `matrix.queue_size` alerts already.
    #[error("the alert queue is full")]
    Full,
    /// The delivery task has stopped.
    #[error("the alert sender has stopped")]
    Closed,
    /// The shared queue (Redis) could not be reached.
    #[error("the alert queue is unavailable: {0}")]
    Unavailable(String),
}
