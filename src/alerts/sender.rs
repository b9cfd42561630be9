//! Delivery: a bounded queue of alerts and the task that posts them one by one, paced,
//! retrying until the homeserver takes them.
//!
//! - The queue is bounded: when it is full a new alert is dropped and counted in
//!   `relais_alerts_dropped_total{reason="queue_full"}`; whoever adds never waits.
//! - Sends are paced: at least `matrix.min_interval` between two requests (Tchap asks
//!   for about one call per second).
//! - 429: wait as long as the homeserver says (`Retry-After`, else `retry_after_ms`,
//!   else the backoff delay), then send the same alert again.
//! - Network errors, timeouts and 5xx: exponential backoff from `matrix.retry_initial`,
//!   doubled up to `matrix.retry_max`, retried until it goes through. Later alerts wait
//!   behind it, in order, in the bounded queue.
//! - Other refusals (401/403: bad token, not in the room, expired account; 4xx): logged
//!   with what to do, counted (`reason="rejected"`) and not retried.
//! - Every attempt is counted in `relais_matrix_sends_total{result}`.
//!
//! Each alert carries a transaction ID derived from its event ID and rule, so sending it
//! again (a retry after a lost answer, or another instance sending the same alert with the
//! same token) never posts twice.
//!
//! The queue is reached only through [`QueueWriter`] and [`QueueReader`] (`push`,
//! `next`, `ack`), so it can later be backed by something durable and shared (a Redis
//! stream with a consumer group: `push` = XADD, `next` = XREADGROUP, `ack` = XACK) without
//! touching the delivery loop. [`Alert`] is serializable for that reason.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use super::alert::{txn_id, Alert, PushError};
use super::matrix::{rejection_hint, MatrixClient, SendOutcome};
use super::redis_queue::{Pushed, RedisQueueReader, RedisQueueWriter};

/// The adding end of the alert queue.
#[derive(Clone)]
pub enum QueueWriter {
    /// In-process, bounded, lost on restart.
    Memory(mpsc::Sender<Alert>),
    /// In Redis, shared by the instances, kept across restarts.
    Redis(Box<RedisQueueWriter>),
}

/// The delivering end of the alert queue.
pub enum QueueReader {
    /// In-process, bounded, lost on restart.
    Memory(mpsc::Receiver<Alert>),
    /// In Redis: this instance's consumer of the senders' group.
    Redis(Box<RedisQueueReader>),
}

/// An in-process queue holding at most `capacity` alerts.
pub fn memory_queue(capacity: usize) -> (QueueWriter, QueueReader) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (QueueWriter::Memory(tx), QueueReader::Memory(rx))
}

impl QueueWriter {
    /// Adds an alert without waiting; counts it as pending, or as dropped when full.
    pub async fn push(&self, alert: Alert) -> Result<(), PushError> {
        match self {
            QueueWriter::Memory(tx) => match tx.try_send(alert) {
                Ok(()) => {
                    metrics::gauge!("relais_alerts_pending").increment(1.0);
                    Ok(())
                }
                Err(mpsc::error::TrySendError::Full(alert)) => Err(dropped_full(&alert)),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(PushError::Closed),
            },
            QueueWriter::Redis(queue) => match queue.push(&alert).await {
                Ok(Pushed::Queued) => {
                    metrics::gauge!("relais_alerts_pending").increment(1.0);
                    Ok(())
                }
                // Another instance saw the same event and queued it: sent once.
                Ok(Pushed::AlreadyQueued) => Ok(()),
                Err(PushError::Full) => Err(dropped_full(&alert)),
                Err(e) => {
                    metrics::counter!("relais_alerts_dropped_total", "reason" => "queue_unavailable")
                        .increment(1);
                    tracing::error!(rule = %alert.rule, event = %alert.event_id, "matrix alert dropped: {e}");
                    Err(e)
                }
            },
        }
    }
}

/// Counts and reports an alert refused because the queue is full.
fn dropped_full(alert: &Alert) -> PushError {
    metrics::counter!("relais_alerts_dropped_total", "reason" => "queue_full").increment(1);
    tracing::error!(
        rule = %alert.rule,
        event = %alert.event_id,
        "matrix alert dropped: the queue is full (matrix.queue_size); the homeserver has been failing or slow for a while"
    );
    PushError::Full
}

impl QueueReader {
    /// The next alert to deliver, waiting for one; `None` once every writer is gone.
    pub async fn next(&mut self) -> Option<Alert> {
        match self {
            QueueReader::Memory(rx) => rx.recv().await,
            QueueReader::Redis(queue) => Some(queue.next().await),
        }
    }

    /// Marks an alert as done (posted or rejected for good).
    pub async fn ack(&mut self, alert: &Alert) {
        metrics::gauge!("relais_alerts_pending").decrement(1.0);
        if let QueueReader::Redis(queue) = self {
            queue.ack(alert).await;
        }
    }

    /// Alerts still waiting (for the shutdown message).
    pub fn waiting(&self) -> usize {
        match self {
            QueueReader::Memory(rx) => rx.len(),
            QueueReader::Redis(queue) => queue.waiting(),
        }
    }

    /// Whether waiting alerts are kept when this process stops.
    pub fn is_durable(&self) -> bool {
        matches!(self, QueueReader::Redis(_))
    }
}

/// Delivery timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// Least time between two requests.
    pub min_interval: Duration,
    /// First retry delay after a failure.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

/// Exponential backoff: `initial`, doubled at each call, at most `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `initial`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            next: initial.min(max),
            max,
        }
    }

    /// The delay to wait now; the following one is twice as long (capped).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

/// Posts queued alerts until `shutdown` (or until the queue is closed).
pub async fn deliver(
    mut queue: QueueReader,
    client: MatrixClient,
    pacing: Pacing,
    shutdown: CancellationToken,
) {
    let mut last_attempt: Option<Instant> = None;
    'alerts: loop {
        let alert = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = queue.next() => match next {
                Some(alert) => alert,
                None => break,
            },
        };
        let message = alert.message();
        let mut backoff = Backoff::new(pacing.retry_initial, pacing.retry_max);
        let mut attempts = 0u32;
        loop {
            if let Some(at) = last_attempt {
                let ready = at + pacing.min_interval;
                tokio::select! {
                    _ = shutdown.cancelled() => break 'alerts,
                    _ = tokio::time::sleep_until(ready) => {}
                }
            }
            last_attempt = Some(Instant::now());
            attempts += 1;
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => break 'alerts,
                outcome = client.send_notice(&alert.txn_id, &message) => outcome,
            };
            metrics::counter!("relais_matrix_sends_total", "result" => outcome.metric_label())
                .increment(1);
            let wait = match outcome {
                SendOutcome::Sent { event_id } => {
                    tracing::info!(
                        rule = %alert.rule,
                        event = %alert.event_id,
                        matrix_event = %event_id,
                        attempts,
                        "matrix alert posted"
                    );
                    queue.ack(&alert).await;
                    continue 'alerts;
                }
                SendOutcome::Rejected {
                    status,
                    errcode,
                    error,
                } => {
                    tracing::error!(
                        rule = %alert.rule,
                        event = %alert.event_id,
                        room = %client.room_id(),
                        status,
                        errcode = %errcode,
                        error = %error,
                        "matrix alert refused by the homeserver, not retried: {}",
                        rejection_hint(status, &errcode)
                    );
                    metrics::counter!("relais_alerts_dropped_total", "reason" => "rejected")
                        .increment(1);
                    queue.ack(&alert).await;
                    continue 'alerts;
                }
                SendOutcome::RateLimited { retry_after } => {
                    let wait = retry_after.unwrap_or_else(|| backoff.next_delay());
                    tracing::warn!(
                        rule = %alert.rule,
                        event = %alert.event_id,
                        "matrix: rate limited by the homeserver (429); sending again in {} ms",
                        wait.as_millis()
                    );
                    wait
                }
                SendOutcome::Transient { reason } => {
                    let wait = backoff.next_delay();
                    tracing::warn!(
                        rule = %alert.rule,
                        event = %alert.event_id,
                        homeserver = %client.homeserver(),
                        attempts,
                        "matrix: send failed ({reason}); retrying in {} ms",
                        wait.as_millis()
                    );
                    wait
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break 'alerts,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
    let left = queue.waiting();
    if left > 0 && queue.is_durable() {
        tracing::info!("matrix: stopping; {left} alert(s) wait in Redis for the next sender");
    } else if left > 0 {
        tracing::warn!(
            "matrix: stopping with {left} alert(s) not yet posted (the in-process queue is not kept)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::Message;

    fn alert(n: u32) -> Alert {
        Alert::new(
            &format!("urn:uuid:{n}"),
            "rule",
            Message {
                body: format!("b{n}"),
                formatted_body: format!("h{n}"),
            },
        )
    }

    #[test]
    fn txn_ids_are_stable_url_safe_and_distinct() {
        let a = txn_id("urn:uuid:0190-abc", "urgent-intervention");
        assert_eq!(a, txn_id("urn:uuid:0190-abc", "urgent-intervention"));
        assert_eq!(a.len(), "relais-".len() + 40);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        assert_ne!(a, txn_id("urn:uuid:0190-abc", "module-down"));
        assert_ne!(a, txn_id("urn:uuid:0190-abd", "urgent-intervention"));
        // The separator keeps (event, rule) pairs apart.
        assert_ne!(txn_id("ab", "c"), txn_id("a", "bc"));
        assert!(txn_id("id with / and ? and #", "r").starts_with("relais-"));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<_> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
    }

    #[tokio::test]
    async fn a_full_queue_drops_without_waiting_and_keeps_order() {
        let (writer, mut reader) = memory_queue(2);
        writer.push(alert(1)).await.unwrap();
        writer.push(alert(2)).await.unwrap();
        assert_eq!(writer.push(alert(3)).await, Err(PushError::Full));
        assert_eq!(reader.next().await.unwrap().body, "b1");
        writer.push(alert(4)).await.unwrap();
        assert_eq!(reader.next().await.unwrap().body, "b2");
        assert_eq!(reader.next().await.unwrap().body, "b4");
        drop(writer);
        assert!(reader.next().await.is_none());
    }

    #[test]
    fn alerts_serialize_for_a_durable_queue() {
        let a = alert(7);
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Alert>(&text).unwrap(), a);
    }
}
