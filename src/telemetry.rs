//! Logs (`tracing`, text or JSON) and the Prometheus metrics recorder.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::field::MakeExt;
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
        // Values can hold client input (topic selectors, error details): control
        // characters are escaped so a `\n` in a topic cannot forge a log line.
        LogFormat::Text => builder
            .fmt_fields(
                tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
                    let raw = format!("{value:?}");
                    let text = escape_control(&raw);
                    if field.name() == "message" {
                        write!(w, "{text}")
                    } else {
                        write!(w, "{field}={text}")
                    }
                })
                .delimited(" "),
            )
            .try_init(),
    };
}

/// `text` with its control characters written as escapes (`\n`, `\r`, `\t`, `\u{1b}`).
pub fn escape_control(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
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
        "Event deliveries to subscribers, by source and type (types relais does not know: other)"
    );
    describe_gauge!(
        "relais_connections_open",
        "TCP connections currently open (at most server.max_connections)"
    );
    describe_counter!(
        "relais_connections_refused_total",
        "Connections refused because server.max_connections were open"
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

#[cfg(test)]
mod tests {
    use super::escape_control;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_control("a/b c"), "a/b c");
        assert_eq!(
            escape_control("t\n2026 INFO forged\r\x1b[31m"),
            "t\\n2026 INFO forged\\r\\u{1b}[31m"
        );
    }
}
