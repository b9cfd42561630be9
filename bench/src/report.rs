//! The figures of one run, the side-by-side table with the relais/peer ratio of every
//! figure for each peer (`bare`, `pushpin`), the one-line summary, and the `--json`
//! object.

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
    /// Server CPU seconds per 1,000 deliveries (server CPU / deliveries × 1,000).
    pub cpu_seconds_per_1000_deliveries: f64,
    /// Event-stream bytes the subscribers read per delivery: the size of what the server
    /// wrote for each event (with the head, the warm-up and heartbeats spread over them),
    /// so that two servers' deliveries are seen to be the same bytes.
    pub bytes_per_delivery: f64,
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
    (
        "cpu_seconds_per_1000_deliveries",
        "server CPU s/1k deliv.",
        false,
    ),
    ("cpu_seconds_bench", "bench CPU s", false),
    ("bytes_per_delivery", "bytes/delivery", false),
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
        "cpu_seconds_per_1000_deliveries" => f.cpu_seconds_per_1000_deliveries,
        "cpu_seconds_bench" => f.cpu_seconds_bench,
        "bytes_per_delivery" => f.bytes_per_delivery,
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

/// The `--json` object: relais's figures at the top; each peer's under `peers.NAME` with
/// the relais/peer `ratio` of each figure beside them; the first peer also under `peer`
/// (as before there were several).
pub fn json(args: &Args, ingest: &str, relais: &Figures, peers: &[(&str, &Figures)]) -> Value {
    let mut top = figures_json(relais, "cpu_seconds_relais");
    top.insert("target".into(), json!("relais"));
    top.insert("ingest".into(), json!(ingest));
    top.insert("rate".into(), json!(args.effective_rate()));
    top.insert("senders".into(), json!(args.senders));
    top.insert("duration_secs".into(), json!(args.duration.as_secs_f64()));
    top.insert("topics".into(), json!(args.topic_count()));
    let mut all = Map::new();
    for (name, p) in peers {
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
        if !top.contains_key("peer") {
            top.insert("peer".into(), Value::Object(pm.clone()));
        }
        all.insert((*name).into(), Value::Object(pm));
    }
    top.insert("peers".into(), Value::Object(all));
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

/// A count row of the table: its label and how to read it.
type Count = (&'static str, fn(&Figures) -> u64);

/// The side-by-side table: relais, then each peer and the ratio relais/peer.
pub fn table(args: &Args, ingest: &str, relais: &Figures, peers: &[(&str, &Figures)]) -> String {
    let mut out = String::new();
    let rate = args
        .effective_rate()
        .map(|r| format!(", {r} events/s"))
        .unwrap_or_default();
    let topics = args
        .topic_count()
        .map(|t| format!(", {t} topics"))
        .unwrap_or_default();
    out.push_str(&format!(
        "relais-bench: {} workload, {} subscribers{topics}, {:?}{rate}, ingest {ingest}, {} publisher connections\n",
        relais.workload, args.subscribers, args.duration, args.senders
    ));
    let mut header = format!("{:<24} {:>14}", "figure", "relais");
    for (name, _) in peers {
        header.push_str(&format!(" {:>14} {:>14}", name, format!("relais/{name}")));
    }
    out.push_str(header.trim_end());
    out.push('\n');
    let mut line = |label: &str, a: String, cells: Vec<(String, String)>| {
        let mut l = format!("{label:<24} {a:>14}");
        for (b, r) in cells {
            l.push_str(&format!(" {b:>14} {r:>14}"));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    let counts: [Count; 3] = [
        ("subscribers", |f| f.subscribers),
        ("events", |f| f.events),
        ("deliveries", |f| f.deliveries),
    ];
    for (label, get) in counts {
        line(
            label,
            fmt_num(get(relais) as f64),
            peers
                .iter()
                .map(|(_, p)| (fmt_num(get(p) as f64), String::new()))
                .collect(),
        );
    }
    for (key, label, higher_better) in COMPARED {
        let a = value(relais, key);
        let cells = peers
            .iter()
            .map(|(_, p)| {
                let b = value(p, key);
                let r = ratio(a, b)
                    .map(|r| format!("{r:.2}{}", if *higher_better { " ↑" } else { " ↓" }))
                    .unwrap_or_else(|| "-".into());
                (fmt_num(b), r)
            })
            .collect();
        line(label, fmt_num(a), cells);
    }
    for (name, f) in std::iter::once(("relais", relais)).chain(peers.iter().copied()) {
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
    if !peers.is_empty() {
        out.push_str("(ratio = relais / peer; ↑ higher is better, ↓ lower is better)\n");
    }
    out
}

fn one(f: &Figures) -> String {
    format!(
        "{} deliveries/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms, {} connects/s, {:.0} B/conn, CPU {:.4} s/1k deliveries, lost {}, duplicated {}",
        fmt_num(f.deliveries_per_sec),
        f.latency_p50_ms,
        f.latency_p99_ms,
        f.latency_p999_ms,
        f.latency_max_ms,
        fmt_num(f.connect_per_sec),
        f.rss_per_connection_bytes,
        f.cpu_seconds_per_1000_deliveries,
        f.lost,
        f.duplicated
    )
}

/// The one-line summary printed at the end.
pub fn summary(relais: &Figures, peers: &[(&str, &Figures)]) -> String {
    let mut s = format!(
        "summary: {} x{}: relais {}",
        relais.workload,
        relais.subscribers,
        one(relais)
    );
    for (name, p) in peers {
        s.push_str(&format!(" | {name} {}", one(p)));
    }
    for (name, p) in peers {
        let r = |key: &str| {
            ratio(value(relais, key), value(p, key))
                .map(|r| format!("{r:.2}"))
                .unwrap_or_else(|| "-".into())
        };
        s.push_str(&format!(
            " | relais/{name}: deliveries/s {}x, p50 {}x, p99 {}x, RSS/conn {}x, CPU/1k {}x",
            r("deliveries_per_sec"),
            r("latency_p50_ms"),
            r("latency_p99_ms"),
            r("rss_per_connection_bytes"),
            r("cpu_seconds_per_1000_deliveries"),
        ));
    }
    s
}
