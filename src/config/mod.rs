//! Configuration: the TOML file, `RELAIS_<SECTION>__<KEY>` environment overrides,
//! embedded defaults, validation and a secret-masked rendering for `check-config`.
//!
//! Loading is done with `figment`, which keeps track of where each value came from, so a
//! bad value is reported with its key and its origin (file or environment variable).

mod duration;
mod secret;
pub mod secret_policy;

pub use duration::parse_duration;
pub use secret::Secret;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Keys whose values are masked whenever the configuration is shown.
const SECRET_KEYS: &[&str] = &["secret", "authorization", "access_token", "password"];

/// Why a configuration could not be loaded or is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key has a value of the wrong type or shape, or is unknown.
    #[error("{0}")]
    Invalid(String),
    /// The file named with `--config` does not exist.
    #[error("configuration file {0} not found")]
    FileNotFound(PathBuf),
}

/// The whole configuration of one relais process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP listener, CORS, limits and SSE framing.
    pub server: ServerConfig,
    /// How subscriber and publisher JWTs are verified (and minted by `relais token`).
    pub jwt: JwtConfig,
    /// Topics, history and fan-out.
    pub hub: HubConfig,
    /// Optional Redis bus for several instances.
    pub redis: RedisConfig,
    /// Webhook sources, by name (`POST /hooks/grist/{name}`, `POST /hooks/hub/{name}`).
    pub sources: BTreeMap<String, SourceConfig>,
    /// Optional Matrix / Tchap alerts.
    pub matrix: MatrixConfig,
    /// Log level and format.
    pub log: LogConfig,
}

/// `[server]`: the HTTP side.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address and port to listen on (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// Origins allowed by CORS (explicit list; `*` is refused because cookies carry tokens).
    pub cors_origins: Vec<String>,
    /// Where relais keeps its generated signing key. Default: `$XDG_STATE_HOME/relais`,
    /// else `$HOME/.local/state/relais`, else `.relais-state`.
    pub state_dir: Option<PathBuf>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Interval between heartbeat comments on idle streams (`15s`, `500ms`).
    #[serde(with = "duration::serde_human")]
    pub heartbeat: Duration,
    /// Longest a write to a subscriber may stay blocked (the client stopped reading)
    /// before its stream is closed (`30s`: two heartbeats).
    #[serde(with = "duration::serde_human")]
    pub write_timeout: Duration,
    /// Reconnection delay announced to clients with `retry:`, in milliseconds.
    pub retry_ms: u64,
    /// Time a new connection has to send its first complete request head.
    #[serde(with = "duration::serde_human")]
    pub head_timeout: Duration,
    /// Time a kept-alive connection may wait for its next request, whose head must be
    /// complete within it.
    #[serde(with = "duration::serde_human")]
    pub keepalive_timeout: Duration,
    /// Time a request body has to arrive whole, counted from its head (408 beyond).
    #[serde(with = "duration::serde_human")]
    pub body_timeout: Duration,
    /// Largest request head, in bytes (431 beyond).
    pub max_head_bytes: usize,
    /// Open connections at most; beyond, new ones are refused (counted in
    /// `relais_connections_refused_total`).
    pub max_connections: usize,
    /// Accept HTTP/2 (prior knowledge, h2c) besides HTTP/1.1.
    pub http2: bool,
    /// Origins a cookie-authenticated publish may come from (CSRF protection); empty:
    /// publishes must carry their token in the `Authorization` header.
    pub publish_origins: Vec<String>,
    /// Standard Webhooks message IDs remembered to refuse a replayed message within the
    /// tolerance window (the oldest is forgotten first).
    pub webhook_id_cache: usize,
    /// The URL clients reach relais at (`https://relais.example.org`, no trailing slash).
    /// The hub's URL is this plus `/.well-known/mercure`: Mercure 1.0 tokens must name it
    /// in `aud` (unless `jwt.audience` says otherwise), and relative URL patterns and
    /// topics resolve against it. Unset: the request's `Host` decides the audience.
    pub public_url: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            cors_origins: Vec::new(),
            state_dir: None,
            max_body_bytes: 1024 * 1024,
            heartbeat: Duration::from_secs(15),
            write_timeout: Duration::from_secs(30),
            retry_ms: 2000,
            head_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            max_head_bytes: 16 * 1024,
            max_connections: 50_000,
            http2: false,
            publish_origins: Vec::new(),
            webhook_id_cache: 100_000,
            public_url: None,
        }
    }
}

/// The JWT algorithms relais verifies; the configured one is the only one accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret.
    #[default]
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256.
    RS256,
    /// ECDSA P-256 with SHA-256.
    ES256,
}

/// `[jwt]`: token verification.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Algorithm pinned for every token.
    pub algorithm: JwtAlgorithm,
    /// HS256 key. Unset: a random key is generated once and kept in the state directory.
    pub secret: Option<Secret>,
    /// RS256/ES256 verification key (PEM).
    pub public_key: Option<PathBuf>,
    /// RS256/ES256 signing key (PEM), only needed by `relais token`.
    pub private_key: Option<PathBuf>,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Accepted `iss` values; empty: `iss` is not checked.
    pub issuers: Vec<String>,
    /// Required `aud` value; unset: `aud` is not checked for 0.x tokens. It is also the
    /// hub's resource identifier that Mercure 1.0 tokens must name in `aud` (default: the
    /// hub's URL, from `server.public_url`).
    pub audience: Option<String>,
    /// Topic selectors at most in one token's grants (the `mercure` claim, or every
    /// Mercure entry of `authorization_details`); beyond, the token is refused.
    pub max_claim_selectors: usize,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            algorithm: JwtAlgorithm::HS256,
            secret: None,
            public_key: None,
            private_key: None,
            require_exp: false,
            leeway_secs: 0,
            issuers: Vec::new(),
            audience: None,
            max_claim_selectors: 256,
        }
    }
}

/// Default number of record states kept (all sources together).
pub const DEFAULT_RECORD_STATE_CAPACITY: usize = 50_000;

/// `[hub]`: subscriptions, history and fan-out.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// Let subscribers without a token receive public updates.
    pub allow_anonymous: bool,
    /// How many events are retained for resume.
    pub history_size: usize,
    /// How many events a subscriber may fall behind before it is disconnected (it then
    /// reconnects and resumes from its last ID). Rounded up to a power of two.
    pub subscriber_backlog: usize,
    /// How many bytes of live frames a subscriber may have queued before it is
    /// disconnected as too slow (it then resumes from its last ID).
    pub subscriber_queue_bytes: usize,
    /// How many webhook records (Grist rows, DiagPV modules; all sources together) relais
    /// remembers to compute `change`/`changed`/`previous` and absorb retries; the least
    /// recently used is forgotten first.
    pub record_state_capacity: usize,
    /// Topic selectors per subscription at most (400 beyond).
    pub max_selectors: usize,
    /// Bytes per topic selector at most (400 beyond).
    pub max_selector_bytes: usize,
    /// Compiled URI templates kept for reuse (least recently used dropped first).
    pub selector_cache_size: usize,
    /// Keep history and record state on disk in the state directory (the default without
    /// Redis); `false` keeps them in memory only, lost on restart.
    pub persist: bool,
    /// Most bytes of event data (and IDs) retained for resume, besides `history_size`.
    pub history_bytes: usize,
    /// Forget a record this long after its last change (unset: kept until evicted by
    /// `record_state_capacity`). With Redis, `redis.state_ttl` applies instead.
    #[serde(
        default,
        with = "duration::serde_human_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub record_ttl: Option<Duration>,
    /// Presence: publish Mercure subscription events and answer the subscriptions API
    /// (`false` switches both off).
    pub subscriptions: bool,
    /// Subscription events retained for resume, apart from the history of business
    /// events (they never push those out).
    pub subscriptions_history: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            allow_anonymous: false,
            history_size: 10_000,
            subscriber_backlog: 8192,
            subscriber_queue_bytes: crate::hub::DEFAULT_QUEUE_BYTES,
            record_state_capacity: DEFAULT_RECORD_STATE_CAPACITY,
            max_selectors: 32,
            max_selector_bytes: 1024,
            selector_cache_size: 4096,
            persist: true,
            history_bytes: 64 * 1024 * 1024,
            record_ttl: None,
            subscriptions: true,
            subscriptions_history: 10_000,
        }
    }
}

/// `[redis]`: the bus shared by several instances.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`; unset means the in-process bus.
    pub url: Option<Secret>,
    /// Prefix of every Redis key relais uses (default `relais:`).
    pub key_prefix: Option<String>,
    /// How long a record's state is kept in Redis after its last change (`30d`).
    #[serde(with = "duration::serde_human")]
    pub state_ttl: Duration,
    /// How often an instance renews its presence heartbeat and looks for instances that
    /// died with subscriptions still listed (`5s`).
    #[serde(with = "duration::serde_human")]
    pub presence_heartbeat: Duration,
    /// How long after its last heartbeat an instance counts as dead, its subscriptions
    /// then ended by the others (`20s`; with the heartbeat, ended within 25 s).
    #[serde(with = "duration::serde_human")]
    pub presence_ttl: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            key_prefix: None,
            state_ttl: Duration::from_secs(30 * 86_400),
            presence_heartbeat: Duration::from_secs(5),
            presence_ttl: Duration::from_secs(20),
        }
    }
}

/// Which kind of webhook a source receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Grist webhooks: arrays of row objects.
    Grist,
    /// DiagPV hub module updates.
    Hub,
}

/// `[sources.NAME]`: one webhook source.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `grist` or `hub`.
    pub kind: SourceKind,
    /// Exact `Authorization` header value expected (Grist's webhook `authorization` field,
    /// or the hub's bearer secret as `Bearer ...`).
    #[serde(default)]
    pub authorization: Option<Secret>,
    /// Grist: value of the `secret` query parameter (older Grist). Hub: Standard Webhooks
    /// secret (`whsec_` + base64).
    #[serde(default)]
    pub secret: Option<Secret>,
    /// Grist: table name reported in events.
    #[serde(default)]
    pub table: Option<String>,
    /// Grist: event field → column id (keys: id, agent, location, type, status, priority,
    /// updated_at, comment).
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// Topic templates (`{id}`, `{audit_token}`, `{module_id}` are filled in).
    #[serde(default)]
    pub topics: Vec<String>,
    /// Event type (defaults: `intervention` for Grist, `module` for the hub).
    #[serde(default)]
    pub event_type: Option<String>,
    /// Publish events of this source as private updates.
    #[serde(default)]
    pub private: bool,
    /// Grist: a column the document maintains (e.g. `Derniere_MAJ`, a DateTime updated
    /// by a trigger formula); a row older than the known state by it is dropped as
    /// stale (Grist may deliver an old batch after a newer one). Unset: rows apply in
    /// arrival order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_column: Option<String>,
}

/// `[matrix]`: alerts to a Matrix / Tchap room.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MatrixConfig {
    /// Client-server API base URL, e.g. `https://matrix.agent.tchap.gouv.fr`.
    pub homeserver: Option<String>,
    /// The bot account's access token.
    pub access_token: Option<Secret>,
    /// Room to post to (`!id:server` or a version-12 `!id`).
    pub room_id: Option<String>,
    /// Alert rules; empty with Matrix configured means the default rules.
    pub rules: Vec<AlertRuleConfig>,
    /// Least time between two sends (Tchap asks for about one call per second).
    #[serde(with = "duration::serde_human")]
    pub min_interval: Duration,
    /// Alerts waiting to be sent at most; beyond, new alerts are dropped and counted in
    /// `relais_alerts_dropped_total{reason="queue_full"}`.
    pub queue_size: usize,
    /// First delay before retrying after a network error or a 5xx answer (doubled at
    /// each failure up to `retry_max`).
    #[serde(with = "duration::serde_human")]
    pub retry_initial: Duration,
    /// Longest delay between two retries.
    #[serde(with = "duration::serde_human")]
    pub retry_max: Duration,
    /// Time limit of one request to the homeserver.
    #[serde(with = "duration::serde_human")]
    pub request_timeout: Duration,
}

impl Default for MatrixConfig {
    fn default() -> Self {
        Self {
            homeserver: None,
            access_token: None,
            room_id: None,
            rules: Vec::new(),
            min_interval: Duration::from_secs(1),
            queue_size: 1000,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl MatrixConfig {
    /// Whether alerts are on (homeserver, access token and room all set).
    pub fn enabled(&self) -> bool {
        self.homeserver.is_some() && self.access_token.is_some() && self.room_id.is_some()
    }
}

/// One alert rule: events of `event_type` whose `field` takes one of `values`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRuleConfig {
    /// Name shown in logs and metrics.
    pub name: String,
    /// Event type the rule looks at (`intervention`, `module`).
    pub event_type: String,
    /// Field of the event data (`priority`, `status`).
    pub field: String,
    /// Values that make the record alert-worthy.
    pub values: Vec<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`: logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `relais=debug`.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl Config {
    /// Loads the embedded defaults, then `file` (if given), then `RELAIS_*` variables,
    /// and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::FileNotFound(path.to_path_buf()));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // Only RELAIS_<SECTION>__<KEY> variables are configuration (the filter sees the
        // name before `split` turns `__` into dots).
        figment = figment.merge(
            Env::prefixed("RELAIS_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        );
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(describe_figment_error(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot: addresses, origins, keys, sources, sizes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if self.server.listen.parse::<SocketAddr>().is_err() {
            return invalid(format!(
                "server.listen: {:?} is not an address:port such as 127.0.0.1:8080",
                self.server.listen
            ));
        }
        for origin in &self.server.cors_origins {
            if origin == "*" {
                return invalid("server.cors_origins: \"*\" is refused because tokens travel in cookies; list the origins explicitly".into());
            }
            if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.ends_with('/')
            {
                return invalid(format!(
                    "server.cors_origins: {origin:?} is not an origin such as https://docs.getgrist.com (scheme and host, no trailing slash)"
                ));
            }
        }
        if self.server.max_body_bytes == 0 {
            return invalid("server.max_body_bytes: must be greater than 0".into());
        }
        self.validate_limits()?;
        if self.server.heartbeat.is_zero() {
            return invalid("server.heartbeat: must be greater than 0".into());
        }
        if self.server.write_timeout.is_zero() {
            return invalid("server.write_timeout: must be greater than 0".into());
        }
        if self.hub.subscriber_queue_bytes == 0 {
            return invalid("hub.subscriber_queue_bytes: must be at least 1".into());
        }
        if self.hub.history_size == 0 {
            return invalid("hub.history_size: must be at least 1".into());
        }
        if self.hub.subscriber_backlog == 0 {
            return invalid("hub.subscriber_backlog: must be at least 1".into());
        }
        if self.hub.history_bytes == 0 {
            return invalid("hub.history_bytes: must be at least 1".into());
        }
        if self.hub.record_ttl.is_some_and(|t| t.is_zero()) {
            return invalid("hub.record_ttl: must be greater than 0 (leave it unset to keep records until evicted)".into());
        }
        if self.hub.record_state_capacity == 0 {
            return invalid("hub.record_state_capacity: must be at least 1".into());
        }
        match self.jwt.algorithm {
            JwtAlgorithm::HS256 => {
                if let Some(secret) = &self.jwt.secret {
                    if let Err(e) = secret_policy::check_text(secret.expose()) {
                        return invalid(format!("jwt.secret: the HS256 key {e}"));
                    }
                }
            }
            JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
                if self.jwt.public_key.is_none() {
                    return invalid(format!(
                        "jwt.public_key: required with algorithm {:?} (path to a PEM public key)",
                        self.jwt.algorithm
                    ));
                }
            }
        }
        for (name, source) in &self.sources {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return invalid(format!(
                    "sources.{name}: a source name may only hold letters, digits, '-' and '_'"
                ));
            }
            if source.authorization.is_none() && source.secret.is_none() {
                return invalid(format!(
                    "sources.{name}: set `authorization` (header value) or `secret`, so that only the real sender can post"
                ));
            }
            if source.kind != SourceKind::Hub {
                if let Some(secret) = &source.secret {
                    if let Err(e) = secret_policy::check_text(secret.expose()) {
                        return invalid(format!("sources.{name}.secret: the value {e}"));
                    }
                }
            }
            if let Some(authorization) = &source.authorization {
                if let Err(e) = secret_policy::check_authorization(authorization.expose()) {
                    return invalid(format!("sources.{name}.authorization: the credential {e}"));
                }
            }
            if source.kind == SourceKind::Hub && source.version_column.is_some() {
                return invalid(format!(
                    "sources.{name}.version_column: only for Grist sources (hub updates are ordered by updated_at)"
                ));
            }
            // What only ingestion can tell (templates, mappings, webhook keys) is checked
            // by `ingest::check_sources`, which `Config::load` callers run as well.
        }
        let matrix = &self.matrix;
        let set = [
            matrix.homeserver.is_some(),
            matrix.access_token.is_some(),
            matrix.room_id.is_some(),
        ];
        if set.iter().any(|s| *s) && !set.iter().all(|s| *s) {
            return invalid(
                "matrix: homeserver, access_token and room_id go together; set all three or none"
                    .into(),
            );
        }
        if let Some(url) = &matrix.homeserver {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return invalid(format!(
                    "matrix.homeserver: {url:?} must start with https:// (or http:// for a local test server)"
                ));
            }
        }
        if let Some(room) = &matrix.room_id {
            if !room.starts_with('!') || room.len() < 2 || room.chars().any(char::is_whitespace) {
                return invalid(format!(
                    "matrix.room_id: {room:?} is not a room ID: a room ID starts with '!' (room settings → Advanced → internal room ID); an alias (#room:server) cannot be used"
                ));
            }
        }
        if matrix.queue_size == 0 {
            return invalid("matrix.queue_size: must be at least 1".into());
        }
        if matrix.retry_initial.is_zero() {
            return invalid("matrix.retry_initial: must be greater than 0".into());
        }
        if matrix.retry_max < matrix.retry_initial {
            return invalid("matrix.retry_max: must be at least matrix.retry_initial".into());
        }
        if matrix.request_timeout.is_zero() {
            return invalid("matrix.request_timeout: must be greater than 0".into());
        }
        for (i, rule) in matrix.rules.iter().enumerate() {
            let at = format!("matrix.rules[{i}]");
            if rule.name.trim().is_empty() {
                return invalid(format!(
                    "{at}.name: a rule needs a name (used in logs and metrics)"
                ));
            }
            if matrix.rules[..i].iter().any(|r| r.name == rule.name) {
                return invalid(format!(
                    "{at}.name: {:?} is used by two rules; names must be unique (they make the Matrix transaction IDs)",
                    rule.name
                ));
            }
            if rule.event_type.trim().is_empty() {
                return invalid(format!(
                    "{at}.event_type: required (e.g. \"intervention\", \"module\")"
                ));
            }
            if rule.field.trim().is_empty() {
                return invalid(format!(
                    "{at}.field: required (e.g. \"priority\", \"status\")"
                ));
            }
            if rule.values.is_empty() {
                return invalid(format!(
                    "{at}.values: list at least one value that raises the alert"
                ));
            }
        }
        if self.redis.state_ttl.is_zero() {
            return invalid("redis.state_ttl: must be greater than 0".into());
        }
        if let Some(url) = &self.redis.url {
            let u = url.expose();
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                return invalid("redis.url: must start with redis:// or rediss://".into());
            }
        }
        Ok(())
    }

    /// Checks the connection, request and subscription limits.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        let invalid = |msg: &str| Err(ConfigError::Invalid(msg.into()));
        let s = &self.server;
        if s.head_timeout.is_zero() {
            return invalid("server.head_timeout: must be greater than 0");
        }
        if s.keepalive_timeout.is_zero() {
            return invalid("server.keepalive_timeout: must be greater than 0");
        }
        if s.body_timeout.is_zero() {
            return invalid("server.body_timeout: must be greater than 0");
        }
        if s.max_head_bytes < 8192 {
            return invalid("server.max_head_bytes: must be at least 8192");
        }
        if s.max_connections == 0 {
            return invalid("server.max_connections: must be at least 1");
        }
        if s.webhook_id_cache == 0 {
            return invalid("server.webhook_id_cache: must be at least 1");
        }
        for origin in &s.publish_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.ends_with('/')
            {
                return Err(ConfigError::Invalid(format!(
                    "server.publish_origins: {origin:?} is not an origin such as https://app.example.org (scheme and host, no trailing slash)"
                )));
            }
        }
        let h = &self.hub;
        if h.max_selectors == 0 {
            return invalid("hub.max_selectors: must be at least 1");
        }
        if h.max_selector_bytes == 0 {
            return invalid("hub.max_selector_bytes: must be at least 1");
        }
        if h.selector_cache_size == 0 {
            return invalid("hub.selector_cache_size: must be at least 1");
        }
        if self.jwt.leeway_secs > 3600 {
            return invalid("jwt.leeway_secs: at most 3600 (one hour of clock skew)");
        }
        if self.jwt.issuers.iter().any(|i| i.is_empty()) {
            return invalid("jwt.issuers: an issuer cannot be empty");
        }
        if self.jwt.audience.as_deref() == Some("") {
            return invalid("jwt.audience: cannot be empty (leave it unset to skip the check)");
        }
        if self.jwt.max_claim_selectors == 0 {
            return invalid("jwt.max_claim_selectors: must be at least 1");
        }
        if let Some(url) = &self.server.public_url {
            let parsed = url::Url::parse(url).ok().filter(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some()
                    && u.query().is_none()
                    && u.fragment().is_none()
            });
            if parsed.is_none() || url.ends_with('/') {
                return Err(ConfigError::Invalid(format!(
                    "server.public_url: {url:?} is not a URL such as https://relais.example.org (http or https, no trailing slash, no query)"
                )));
            }
        }
        Ok(())
    }

    /// The hub's URL (`server.public_url` + `/.well-known/mercure`), when configured.
    pub fn hub_url(&self) -> Option<String> {
        self.server
            .public_url
            .as_ref()
            .map(|base| format!("{base}/.well-known/mercure"))
    }

    /// The hub's OAuth resource identifier, which Mercure 1.0 tokens must name in `aud`:
    /// `jwt.audience`, else the hub's URL; `None`: derived from each request's `Host`.
    pub fn resource_identifier(&self) -> Option<String> {
        self.jwt.audience.clone().or_else(|| self.hub_url())
    }

    /// The listen address (validated by [`Config::validate`]).
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server
            .listen
            .parse()
            .map_err(|_| ConfigError::Invalid(format!("server.listen: {:?}", self.server.listen)))
    }

    /// The effective configuration as TOML, with every secret replaced by `********`.
    pub fn to_masked_toml(&self) -> String {
        let mut value = match toml::Value::try_from(self) {
            Ok(v) => v,
            Err(e) => return format!("# could not render configuration: {e}\n"),
        };
        mask_secrets(&mut value);
        toml::to_string_pretty(&value).unwrap_or_else(|e| format!("# {e}\n"))
    }

    /// The state directory, resolved from the configuration and the environment.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.server.state_dir {
            return dir.clone();
        }
        if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir).join("relais");
        }
        if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(home).join(".local/state/relais");
        }
        PathBuf::from(".relais-state")
    }
}

fn mask_secrets(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, v) in table.iter_mut() {
                if SECRET_KEYS.contains(&key.as_str()) || key == "url" && is_url_with_password(v) {
                    *v = toml::Value::String("********".into());
                } else {
                    mask_secrets(v);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(mask_secrets),
        _ => {}
    }
}

fn is_url_with_password(v: &toml::Value) -> bool {
    // redis://user:password@host: the credentials part is secret.
    v.as_str()
        .map(|s| {
            s.split_once("://")
                .is_some_and(|(_, rest)| rest.contains('@'))
        })
        .unwrap_or(false)
}

/// Renders figment's error with the key path and where the value came from, without
/// ever echoing a value (it may be a secret).
fn describe_figment_error(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let path = if e.path.is_empty() {
                String::from("(top level)")
            } else {
                e.path.join(".")
            };
            let origin = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(src) => format!(" (from {} {src})", m.name),
                    None => format!(" (from {})", m.name),
                })
                .unwrap_or_default();
            let kind = match &e.kind {
                figment::error::Kind::InvalidType(actual, expected) => {
                    format!("invalid type: found {actual}, expected {expected}")
                }
                figment::error::Kind::InvalidValue(_, expected) => {
                    format!("invalid value, expected {expected}")
                }
                other => other.to_string(),
            };
            format!("{path}: {kind}{origin}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_spec() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert_eq!(c.hub.history_size, 10_000);
        assert_eq!(c.server.heartbeat, Duration::from_secs(15));
        assert_eq!(c.server.retry_ms, 2000);
        assert_eq!(c.server.max_body_bytes, 1 << 20);
        assert_eq!(c.hub.max_selectors, 32);
        assert_eq!(c.hub.max_selector_bytes, 1024);
        assert!(!c.server.http2);
        assert!(c.server.publish_origins.is_empty());
        assert!(c.redis.url.is_none());
    }

    #[test]
    fn wildcard_cors_is_refused() {
        let mut c = Config::default();
        c.server.cors_origins = vec!["*".into()];
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("server.cors_origins"), "{err}");
    }

    #[test]
    fn limits_must_be_usable() {
        for (set, key) in [
            (
                (|c: &mut Config| c.server.max_connections = 0) as fn(&mut Config),
                "server.max_connections",
            ),
            (
                |c| c.server.head_timeout = Duration::ZERO,
                "server.head_timeout",
            ),
            (|c| c.server.max_head_bytes = 100, "server.max_head_bytes"),
            (|c| c.hub.max_selectors = 0, "hub.max_selectors"),
            (|c| c.jwt.leeway_secs = u64::MAX, "jwt.leeway_secs"),
            (
                |c| c.server.publish_origins = vec!["evil.example".into()],
                "server.publish_origins",
            ),
            (|c| c.jwt.audience = Some(String::new()), "jwt.audience"),
        ] {
            let mut c = Config::default();
            set(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn masked_rendering_hides_secrets() {
        let mut c = Config::default();
        c.jwt.secret = Some(Secret::new("super-secret-key-123456"));
        c.redis.url = Some(Secret::new("redis://u:pw@127.0.0.1:6379"));
        let text = c.to_masked_toml();
        assert!(!text.contains("super-secret"), "{text}");
        assert!(!text.contains("pw@"), "{text}");
        assert!(text.contains("********"));
    }
}
