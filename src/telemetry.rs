//! Logs (`tracing`, text or JSON) and the Prometheus metrics recorder.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the log subscriber. `RUST_LOG`, when set, overrides `log.level`.
pub fn init_logging(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests) is harmless: keep the first.
    let _ = match config.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Installs the global Prometheus recorder; returns the handle `/metrics` renders.
pub fn init_metrics() -> Option<PrometheusHandle> {
    let buckets = [
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ];
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
        .ok()?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).ok()?;
    describe();
    Some(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "relais_subscribers_connected",
        "SSE subscribers currently connected"
    );
    describe_counter!(
        "relais_events_in_total",
        "Events accepted onto the bus, by source and type"
    );
    describe_counter!(
        "relais_events_out_total",
        "Event deliveries to subscribers, by source and type"
    );
    describe_counter!(
        "relais_webhook_requests_total",
        "Webhook requests, by source and HTTP status"
    );
    describe_counter!(
        "relais_slow_subscriber_disconnects_total",
        "Subscribers disconnected for falling too far behind"
    );
    describe_histogram!(
        "relais_delivery_latency_seconds",
        Unit::Seconds,
        "Time from commit to the write of a subscriber's batch (oldest event of the batch)"
    );
}
