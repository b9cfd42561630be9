//! Command-line flags of `relais-bench`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Load tool for relais: opens SSE subscribers, publishes a named workload, and prints
/// deliveries per second, end-to-end latency, connect rate, memory and CPU, and lost or
/// duplicated events; with `--peer pushpin`, the same against Pushpin, side by side.
#[derive(Debug, Clone, Parser)]
#[command(name = "relais-bench", version, about)]
pub struct Args {
    /// Number of SSE subscribers to open (each receives every event).
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,

    /// What to publish: `burst` (batches of 100 Grist-like rows), `trickle` (single
    /// events at --rate), `topics` (subscriber i on topic i mod --topics, batches of rows
    /// spread over the topics: selective delivery), `idle` (connections only, to measure
    /// memory per connection).
    #[arg(long, value_enum, default_value_t = Workload::Trickle)]
    pub workload: Workload,

    /// `topics`: number of distinct topics T (subscriber i listens to topic i mod T;
    /// event s goes to topic s mod T).
    #[arg(long, default_value_t = 100)]
    pub topics: u64,

    /// Events per second. `trickle`: the steady publishing rate (default 100). `burst`:
    /// caps the rate (batches/s = rate / batch size); without it batches are sent back
    /// to back as soon as the previous ones are delivered (see --window).
    #[arg(long)]
    pub rate: Option<f64>,

    /// How long to publish (or, for `idle`, to hold the connections), e.g. `10s`, `500ms`.
    #[arg(long, default_value = "10s", value_parser = relais::config::parse_duration)]
    pub duration: Duration,

    /// Rows per webhook batch in `burst`.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,

    /// `burst` without --rate: batches in flight (published but not yet delivered to
    /// every subscriber) before the next one is sent. 1 keeps Pushpin's per-connection
    /// queue (100 items) from overflowing.
    #[arg(long, default_value_t = 1)]
    pub window: usize,

    /// Publisher connections. Each sends one request at a time; `trickle` events and
    /// `burst`/`topics` batches go to whichever connection is free, so up to this many
    /// requests are in flight and a server slow to answer one is still offered the
    /// load (an open-loop publisher, as independent Grist documents and tablets are).
    /// `--window` still bounds the batches in flight. 1 is the closed-loop publisher
    /// of the figures taken before 2026-11-24: each request waits for the previous
    /// answer, so the rate offered falls with the server's answer time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub senders: u16,

    /// Redis URL passed to the relais it starts (`RELAIS_REDIS__URL`).
    #[arg(long)]
    pub redis: Option<String>,

    /// Also run the same workload against these peers, in this order, and print the
    /// ratio relais/peer of every figure (`--peer bare --peer pushpin`, or
    /// `--peer bare,pushpin`).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub peer: Vec<Peer>,

    /// Internal: run as the `bare` peer's server process (started by the benchmark
    /// itself) and print its address.
    #[arg(long, hide = true)]
    pub serve_bare: bool,

    /// Print the summary as one JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,

    /// The relais binary to start (default: `relais` next to this binary).
    #[arg(long, conflicts_with = "target")]
    pub relais_bin: Option<PathBuf>,

    /// Drive an already-running relais at this base URL (`http://127.0.0.1:8080`)
    /// instead of starting one; needs --jwt-secret (or RELAIS_JWT__SECRET) and, for
    /// memory and CPU figures, --target-pid.
    #[arg(long)]
    pub target: Option<String>,

    /// HS256 key of the relais given with --target.
    #[arg(long, env = "RELAIS_JWT__SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Process ID of the relais given with --target (for RSS and CPU figures).
    #[arg(long)]
    pub target_pid: Option<u32>,

    /// How events reach relais: `grist` (POST /hooks/grist/{source}, one request per
    /// batch, or per event in `trickle`) or `mercure` (POST /.well-known/mercure, one
    /// request per event).
    #[arg(long, value_enum, default_value_t = Ingest::Grist)]
    pub ingest: Ingest,

    /// Webhook source name used with `--ingest grist`.
    #[arg(long, default_value = "bench")]
    pub source: String,

    /// Number of 127.0.0.x source addresses the subscribers' sockets are spread over.
    #[arg(long, default_value_t = 16)]
    pub source_ips: u8,

    /// Connections being opened at the same time.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,

    /// After publishing stops, how long to wait without any new delivery before
    /// counting what is missing as lost.
    #[arg(long, default_value = "3s", value_parser = relais::config::parse_duration)]
    pub drain: Duration,

    /// Pushpin's runner binary.
    #[arg(long, default_value = "pushpin")]
    pub pushpin_bin: PathBuf,

    /// Pushpin's `[handler] message_rate`; 0 = no rate limiting. Its default (2500)
    /// throttles any benchmark, and any positive value makes its rate limiter restart a
    /// 25 ms batch timer on every publish, so publishes closer than 25 ms apart are held
    /// until a pause (seconds of latency); 0 avoids both.
    #[arg(long, default_value_t = 0)]
    pub pushpin_message_rate: u64,

    /// Pushpin's `[handler] message_hwm` (default 25000). It bounds the weight queued in
    /// its publish limiter, and one item weighs one per receiving connection: at 10,000
    /// subscribers anything below a billion drops most of a 100-item batch.
    #[arg(long, default_value_t = 1_000_000_000)]
    pub pushpin_message_hwm: u64,

    /// Instead of a workload: post this many Grist rows, then time `GET /state` of all of
    /// them (`--state-samples` requests), e.g. 10000 for an audit of 10,000 modules.
    #[arg(long, default_value_t = 0)]
    pub state_records: usize,

    /// Requests timed with `--state-records`.
    #[arg(long, default_value_t = 50)]
    pub state_samples: usize,

    /// Start relais with history and record state in memory only (`hub.persist =
    /// false`), the reference for the disk store's ingestion figures.
    #[arg(long)]
    pub memory: bool,

    /// Keep the per-second progress lines off stderr.
    #[arg(long)]
    pub quiet: bool,

    /// Instead of a workload: a reconnect storm (`--subscribers` quiet subscribers
    /// connect, then are all closed and reopened at once, while a live subscriber
    /// receives `--rate` events/s); prints connects/s, the live latency and the
    /// subscription events seen. Compare with `--no-presence`.
    #[arg(long)]
    pub storm: bool,

    /// Start relais with presence off (`hub.subscriptions = false`), the reference for
    /// what presence costs.
    #[arg(long)]
    pub no_presence: bool,
}

/// The named workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Batches of 100 rows, as Grist sends them.
    Burst,
    /// Single events at a steady rate.
    Trickle,
    /// Subscribers spread over `--topics` topics, events spread over them.
    Topics,
    /// Connections only.
    Idle,
}

impl Workload {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Burst => "burst",
            Workload::Trickle => "trickle",
            Workload::Topics => "topics",
            Workload::Idle => "idle",
        }
    }
}

/// Servers the benchmark can compare relais with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Peer {
    /// A minimal tokio server started by the benchmark (its own binary, as a child
    /// process) that accepts the same subscribers and only writes pre-encoded events (the
    /// bytes relais writes for them) to their sockets: this machine's limit.
    Bare,
    /// Pushpin (Debian package), with a GRIP backend inside the benchmark.
    Pushpin,
}

impl Peer {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Bare => "bare",
            Peer::Pushpin => "pushpin",
        }
    }
}

/// Ways of getting events into relais.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Ingest {
    /// Mercure publish, one event per request on a keep-alive connection.
    Mercure,
    /// Grist webhook, one batch per request.
    Grist,
}

impl Args {
    /// The trickle rate or burst cap actually used, in events per second.
    pub fn effective_rate(&self) -> Option<f64> {
        match self.workload {
            Workload::Trickle => Some(self.rate.unwrap_or(100.0)),
            Workload::Burst | Workload::Topics => self.rate,
            Workload::Idle => None,
        }
    }
}

impl Args {
    /// Topics the subscribers are spread over: `--topics` for `topics`, else none (every
    /// subscriber receives every event).
    pub fn topic_count(&self) -> Option<u64> {
        (self.workload == Workload::Topics).then_some(self.topics.max(1))
    }
}
