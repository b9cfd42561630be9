//! Matrix / Tchap alerts: urgent items posted once to an on-call room.
//!
//! Two tasks, started by [`start`] when `[matrix]` is configured:
//! - the **watcher** attaches to the hub like a subscriber (live events only) and, for
//!   each event whose type a rule covers, reads its JSON data, applies the [`rules`]
//!   (fire when the record *enters* the matching state) and queues one [`sender::Alert`]
//!   per rule that fired, with its text from [`message`]. It never waits on Matrix: the
//!   hub's broadcast does not block publishers, and a full queue drops (and counts) the
//!   new alert instead of waiting. If it falls behind the hub's ring it logs and counts
//!   the missed events and goes on;
//! - the **sender** ([`sender::deliver`]) posts queued alerts through the [`matrix`]
//!   client, paced, honouring 429, retrying errors with backoff.
//!
//! Metrics: `relais_alerts_fired_total{rule}`, `relais_alerts_pending`,
//! `relais_alerts_dropped_total{reason}`, `relais_alerts_missed_events_total`,
//! `relais_matrix_sends_total{result}`.

pub mod alert;
pub mod matrix;
pub mod message;
pub mod redis_queue;
pub mod rules;
pub mod sender;

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::MatrixConfig;
use crate::hub::{Event, Hub, ResumeFrom};

pub use matrix::{ClientError, MatrixClient, SendOutcome};
pub use message::Message;
pub use rules::{Rule, Rules};
pub use sender::{Alert, Pacing, QueueReader, QueueWriter};

/// The running alert tasks.
pub struct Alerts {
    /// Reads hub events and queues alerts.
    pub watcher: JoinHandle<()>,
    /// Posts queued alerts.
    pub sender: JoinHandle<()>,
}

/// Starts the alert tasks when Matrix is configured (`Ok(None)` otherwise), posting
/// through `queue` (the store's alert queue: in process, or shared in Redis). The hub
/// subscription is taken before this returns, so no event committed afterwards is missed.
pub fn start(
    config: &MatrixConfig,
    hub: &Arc<Hub>,
    queue: (QueueWriter, QueueReader),
    shutdown: CancellationToken,
) -> Result<Option<Alerts>, ClientError> {
    if !config.enabled() {
        tracing::info!("matrix alerts: off (set matrix.homeserver, access_token and room_id)");
        return Ok(None);
    }
    describe_metrics();
    let client = MatrixClient::new(config)?;
    let rules = Rules::from_config(config);
    let pacing = Pacing {
        min_interval: config.min_interval,
        retry_initial: config.retry_initial,
        retry_max: config.retry_max,
    };
    let (writer, reader) = queue;
    let live = hub.attach(&ResumeFrom::Now).live;
    let names: Vec<String> = rules
        .all()
        .iter()
        .map(|r| {
            format!(
                "{} ({} {} in {:?})",
                r.name, r.event_type, r.field, r.values
            )
        })
        .collect();
    tracing::info!(
        "matrix alerts: room {} on {}, one send per {} ms at most; rules: {}",
        client.room_id(),
        client.homeserver(),
        config.min_interval.as_millis(),
        names.join(", ")
    );
    let watcher = tokio::spawn(watch(live, rules, writer, shutdown.clone()));
    let sender = tokio::spawn(sender::deliver(reader, client, pacing, shutdown));
    Ok(Some(Alerts { watcher, sender }))
}

/// The alerts an event raises (none when its type is not covered, its data is not a
/// JSON object, or no rule sees the record enter its state).
pub fn alerts_for(rules: &Rules, event: &Event) -> Vec<Alert> {
    let Some(event_type) = event.event_type.as_deref() else {
        return Vec::new();
    };
    if !rules.covers(event_type) {
        return Vec::new();
    }
    let data: serde_json::Value = match serde_json::from_str(&event.data) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        _ => {
            tracing::debug!(
                event = %event.id,
                "matrix alerts: {event_type} event whose data is not a JSON object; no rule applies"
            );
            return Vec::new();
        }
    };
    rules
        .fired(event_type, &data)
        .map(|rule| {
            Alert::new(
                &event.id,
                &rule.name,
                message::render(rule, event_type, &data),
            )
        })
        .collect()
}

async fn watch(
    mut live: broadcast::Receiver<Arc<Event>>,
    rules: Rules,
    queue: QueueWriter,
    shutdown: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = live.recv() => received,
        };
        match event {
            Ok(event) => {
                for alert in alerts_for(&rules, &event) {
                    metrics::counter!("relais_alerts_fired_total", "rule" => alert.rule.clone())
                        .increment(1);
                    tracing::info!(rule = %alert.rule, event = %alert.event_id, "matrix alert queued");
                    if queue.push(alert).await == Err(sender::PushError::Closed) {
                        return;
                    }
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                metrics::counter!("relais_alerts_missed_events_total").increment(missed);
                tracing::warn!(
                    "matrix alerts fell behind the hub and skipped {missed} event(s); alerts they would have raised are lost (raise hub.subscriber_backlog)"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "relais_matrix_sends_total",
        "Matrix send attempts, by result (ok, rate_limited, error_retry, rejected)"
    );
    describe_counter!(
        "relais_alerts_fired_total",
        "Alerts raised by a rule (a record entered the rule's state)"
    );
    describe_counter!(
        "relais_alerts_dropped_total",
        "Alerts given up, by reason (queue_full, rejected)"
    );
    describe_gauge!("relais_alerts_pending", "Alerts queued and not yet posted");
    describe_counter!(
        "relais_alerts_missed_events_total",
        "Hub events the alert watcher skipped because it fell behind"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::EventDraft;

    fn event(event_type: Option<&str>, data: &str) -> Event {
        let mut draft = EventDraft::new(vec!["interventions".into()], data).with_id("ev-1");
        draft.event_type = event_type.map(str::to_string);
        Event::new(1, draft)
    }

    #[test]
    fn an_urgent_intervention_event_gives_one_alert() {
        let data = r#"{"id": 12, "location": "Avenue de la République", "agent": "Marie Durand",
            "status": "En cours", "priority": "Urgente", "change": "add", "changed": [], "previous": {}}"#;
        let alerts = alerts_for(&Rules::defaults(), &event(Some("intervention"), data));
        assert_eq!(alerts.len(), 1);
        let alert = &alerts[0];
        assert_eq!(alert.rule, "urgent-intervention");
        assert_eq!(alert.event_id, "ev-1");
        assert_eq!(alert.txn_id, sender::txn_id("ev-1", "urgent-intervention"));
        assert_eq!(
            alert.body,
            "🚨 Intervention urgente #12 — Avenue de la République (Marie Durand) : En cours"
        );
    }

    #[test]
    fn uncovered_untyped_and_non_json_events_give_nothing() {
        let rules = Rules::defaults();
        let urgent = r#"{"priority": "Urgente", "change": "add"}"#;
        assert!(alerts_for(&rules, &event(None, urgent)).is_empty());
        assert!(alerts_for(&rules, &event(Some("message"), urgent)).is_empty());
        assert!(alerts_for(&rules, &event(Some("intervention"), "not json")).is_empty());
        assert!(alerts_for(&rules, &event(Some("intervention"), "[1]")).is_empty());
    }

    #[test]
    fn matrix_configuration_is_checked() {
        use crate::config::{AlertRuleConfig, Config, Secret};
        let mut config = Config::default();
        config.matrix.homeserver = Some("https://matrix.example".into());
        config.matrix.access_token = Some(Secret::new("syt_secret_token"));
        config.matrix.room_id = Some("!room:example".into());
        config.validate().unwrap();
        assert!(config.matrix.enabled());

        let error = |c: &Config| c.validate().unwrap_err().to_string();
        let mut alias = config.clone();
        alias.matrix.room_id = Some("#oncall:example".into());
        assert!(error(&alias).contains("matrix.room_id"));
        let mut partial = config.clone();
        partial.matrix.access_token = None;
        assert!(error(&partial).contains("go together"));
        let mut retries = config.clone();
        retries.matrix.retry_max = std::time::Duration::from_millis(1);
        assert!(error(&retries).contains("matrix.retry_max"));
        let rule = AlertRuleConfig {
            name: "urgent".into(),
            event_type: "intervention".into(),
            field: "priority".into(),
            values: vec!["Urgente".into()],
        };
        let mut twice = config.clone();
        twice.matrix.rules = vec![rule.clone(), rule.clone()];
        assert!(error(&twice).contains("matrix.rules[1].name"));
        let mut empty = config.clone();
        empty.matrix.rules = vec![AlertRuleConfig {
            values: vec![],
            ..rule
        }];
        assert!(error(&empty).contains("matrix.rules[0].values"));
        // The token never shows in check-config output.
        assert!(!config.to_masked_toml().contains("syt_secret_token"));
    }

    #[tokio::test]
    async fn start_does_nothing_without_matrix() {
        let hub = Arc::new(Hub::new(10, 16));
        let started = start(
            &MatrixConfig::default(),
            &hub,
            sender::memory_queue(1),
            CancellationToken::new(),
        )
        .unwrap();
        assert!(started.is_none());
        assert_eq!(hub.receiver_count(), 0);
    }
}
