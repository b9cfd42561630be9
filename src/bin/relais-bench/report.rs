//! The figures of one run, the side-by-side table with the relais/peer ratios, the
//! one-line summary, and the `--json` object.

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::args::Args;

/// What one server under test achieved.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    /// Subscribers that connected (and received the warm-up event).
    pub subscribers: u64,
    /// Workload name.
    pub workload: String,
    /// Events published and acknowledged.
    pub events: u64,
    /// First receipts, all subscribers together.
    pub deliveries: u64,
    /// Events (webhook rows) published per second while publishing.
    pub events_per_sec: f64,
    /// Deliveries per second, from the first send to the last delivery.
    pub deliveries_per_sec: f64,
    /// End-to-end latency percentiles (send → parsed by the subscriber), ms.
    pub latency_p50_ms: f64,
    /// 99th percentile, ms.
    pub latency_p99_ms: f64,
    /// 99.9th percentile, ms.
    pub latency_p999_ms: f64,
    /// Largest, ms.
    pub latency_max_ms: f64,
    /// Subscribers connected per second (response head received).
    pub connect_per_sec: f64,
    /// Server resident memory (largest sample), bytes.
    pub rss_bytes: u64,
    /// Server memory added per connection, bytes.
    pub rss_per_connection_bytes: f64,
    /// Server CPU time during the workload, seconds.
    pub cpu_seconds_server: f64,
    /// Benchmark CPU time during the workload, seconds.
    pub cpu_seconds_bench: f64,
    /// Events some subscriber never received (summed over subscribers).
    pub lost: u64,
    /// Repeated receipts (summed over subscribers).
    pub duplicated: u64,
    /// Subscribers that could not connect.
    pub connect_errors: u64,
    /// Streams the server ended before the benchmark did.
    pub streams_closed: u64,
    /// Streams that ended before the warm-up event and were opened again.
    pub streams_reopened: u64,
    /// Publishing and draining time, seconds.
    pub elapsed_secs: f64,
    /// Why the run stopped early, or what went wrong, if anything.
    pub note: Option<String>,
}

/// Figures compared by ratio, with the JSON key and table label, and whether higher is
/// better.
const COMPARED: &[(&str, &str, bool)] = &[
    ("events_per_sec", "events published/s", true),
    ("deliveries_per_sec", "deliveries/s", true),
    ("latency_p50_ms", "latency p50 ms", false),
    ("latency_p99_ms", "latency p99 ms", false),
    ("latency_p999_ms", "latency p99.9 ms", false),
    ("latency_max_ms", "latency max ms", false),
    ("connect_per_sec", "connects/s", true),
    ("rss_bytes", "server RSS bytes", false),
    ("rss_per_connection_bytes", "RSS/connection bytes", false),
    ("cpu_seconds_server", "server CPU s", false),
    ("cpu_seconds_bench", "bench CPU s", false),
    ("lost", "lost", false),
    ("duplicated", "duplicated", false),
];

fn value(f: &Figures, key: &str) -> f64 {
    match key {
        "events_per_sec" => f.events_per_sec,
        "deliveries_per_sec" => f.deliveries_per_sec,
        "latency_p50_ms" => f.latency_p50_ms,
        "latency_p99_ms" => f.latency_p99_ms,
        "latency_p999_ms" => f.latency_p999_ms,
        "latency_max_ms" => f.latency_max_ms,
        "connect_per_sec" => f.connect_per_sec,
        "rss_bytes" => f.rss_bytes as f64,
        "rss_per_connection_bytes" => f.rss_per_connection_bytes,
        "cpu_seconds_server" => f.cpu_seconds_server,
        "cpu_seconds_bench" => f.cpu_seconds_bench,
        "lost" => f.lost as f64,
        "duplicated" => f.duplicated as f64,
        _ => 0.0,
    }
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b != 0.0 && a.is_finite() && b.is_finite()).then(|| round(a / b, 3))
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

fn figures_json(f: &Figures, cpu_key: &str) -> Map<String, Value> {
    let mut m = match serde_json::to_value(f) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    if let Some(cpu) = m.remove("cpu_seconds_server") {
        m.insert(cpu_key.into(), cpu);
    }
    m
}

/// The `--json` object: relais's figures at the top, the peer's under `peer` with the
/// relais/peer `ratio` of each figure beside them.
pub fn json(args: &Args, ingest: &str, relais: &Figures, peer: Option<(&str, &Figures)>) -> Value {
    let mut top = figures_json(relais, "cpu_seconds_relais");
    top.insert("target".into(), json!("relais"));
    top.insert("ingest".into(), json!(ingest));
    top.insert("rate".into(), json!(args.effective_rate()));
    top.insert("duration_secs".into(), json!(args.duration.as_secs_f64()));
    if let Some((name, p)) = peer {
        let mut pm = figures_json(p, &format!("cpu_seconds_{name}"));
        pm.insert("name".into(), json!(name));
        let mut ratios = Map::new();
        for (key, _, _) in COMPARED {
            let k = if *key == "cpu_seconds_server" {
                "cpu_seconds_relais"
            } else {
                key
            };
            ratios.insert(k.into(), json!(ratio(value(relais, key), value(p, key))));
        }
        pm.insert("ratio".into(), Value::Object(ratios));
        top.insert("peer".into(), Value::Object(pm));
    }
    Value::Object(top)
}

fn fmt_num(x: f64) -> String {
    if x.abs() >= 1000.0 {
        let s = format!("{:.0}", x);
        let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

/// The side-by-side table (or one column without a peer).
pub fn table(
    args: &Args,
    ingest: &str,
    relais: &Figures,
    peer: Option<(&str, &Figures)>,
) -> String {
    let mut out = String::new();
    let rate = args
        .effective_rate()
        .map(|r| format!(", {r} events/s"))
        .unwrap_or_default();
    out.push_str(&format!(
        "relais-bench: {} workload, {} subscribers, {:?}{rate}, ingest {ingest}\n",
        relais.workload, args.subscribers, args.duration
    ));
    let peer_name = peer.map(|(n, _)| n).unwrap_or("");
    out.push_str(&format!(
        "{:<24} {:>16} {:>16} {:>16}\n",
        "figure",
        "relais",
        peer_name,
        if peer.is_some() {
            format!("relais/{peer_name}")
        } else {
            String::new()
        }
    ));
    let mut row = |label: &str, a: String, b: String, r: String| {
        out.push_str(&format!("{label:<24} {a:>16} {b:>16} {r:>16}\n"));
    };
    row(
        "subscribers",
        fmt_num(relais.subscribers as f64),
        peer.map(|(_, p)| fmt_num(p.subscribers as f64))
            .unwrap_or_default(),
        String::new(),
    );
    row(
        "events",
        fmt_num(relais.events as f64),
        peer.map(|(_, p)| fmt_num(p.events as f64))
            .unwrap_or_default(),
        String::new(),
    );
    row(
        "deliveries",
        fmt_num(relais.deliveries as f64),
        peer.map(|(_, p)| fmt_num(p.deliveries as f64))
            .unwrap_or_default(),
        String::new(),
    );
    for (key, label, higher_better) in COMPARED {
        let a = value(relais, key);
        let (b, r) = match peer {
            Some((_, p)) => {
                let b = value(p, key);
                let r = ratio(a, b)
                    .map(|r| format!("{r:.2}{}", if *higher_better { " ↑" } else { " ↓" }))
                    .unwrap_or_else(|| "-".into());
                (fmt_num(b), r)
            }
            None => (String::new(), String::new()),
        };
        row(label, fmt_num(a), b, r);
    }
    for (name, f) in std::iter::once(("relais", relais)).chain(peer) {
        if f.connect_errors > 0 || f.streams_closed > 0 || f.streams_reopened > 0 {
            out.push_str(&format!(
                "{name}: {} connect errors, {} streams closed early, {} streams reopened before warm-up\n",
                f.connect_errors, f.streams_closed, f.streams_reopened
            ));
        }
        if let Some(note) = &f.note {
            out.push_str(&format!("{name}: {note}\n"));
        }
    }
    if peer.is_some() {
        out.push_str("(ratio = relais / peer; ↑ higher is better, ↓ lower is better)\n");
    }
    out
}

fn one(f: &Figures) -> String {
    format!(
        "{} deliveries/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms, {} connects/s, {:.0} B/conn, lost {}, duplicated {}",
        fmt_num(f.deliveries_per_sec),
        f.latency_p50_ms,
        f.latency_p99_ms,
        f.latency_p999_ms,
        f.latency_max_ms,
        fmt_num(f.connect_per_sec),
        f.rss_per_connection_bytes,
        f.lost,
        f.duplicated
    )
}

/// The one-line summary printed at the end.
pub fn summary(relais: &Figures, peer: Option<(&str, &Figures)>) -> String {
    let mut s = format!(
        "summary: {} x{}: relais {}",
        relais.workload,
        relais.subscribers,
        one(relais)
    );
    if let Some((name, p)) = peer {
        s.push_str(&format!(" | {name} {}", one(p)));
        if let Some(r) = ratio(relais.deliveries_per_sec, p.deliveries_per_sec) {
            s.push_str(&format!(" | deliveries ratio {r:.2}x"));
        }
    }
    s
}
