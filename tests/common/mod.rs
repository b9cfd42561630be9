//! Shared harness for the integration tests: starts the real `relais` binary on a free
//! loopback port with a test configuration, mints tokens with its key, and reads its
//! Server-Sent Events over a real HTTP connection.
#![allow(dead_code)]

pub mod redis;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use relais::auth::{Claims, KeyMaterial, TokenMinter};
use relais::config::{Config, Secret};
use relais::hub::sse::{Parsed, ParsedEvent, SseParser};

/// The HS256 key every test relais uses.
pub const TEST_SECRET: &str = "integration-test-secret-0123456789";

/// A running relais process, killed on drop.
pub struct Relais {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Everything the process wrote to stderr so far (its logs).
    pub logs: Arc<Mutex<Vec<String>>>,
    _state: Option<tempfile::TempDir>,
}

impl Relais {
    /// Starts relais with the test key and these extra `RELAIS_*` variables.
    pub fn start(env: &[(&str, &str)]) -> Relais {
        Self::start_with(env, None)
    }

    /// Starts relais with a configuration file as well.
    pub fn start_with(env: &[(&str, &str)], config_file: Option<&std::path::Path>) -> Relais {
        let state = tempfile::tempdir().expect("tempdir");
        let mut relais = Self::start_in(state.path(), env, config_file);
        relais._state = Some(state);
        relais
    }

    /// Starts relais with its state (key, store) in `state_dir`, kept by the caller so
    /// that a restart finds it again.
    pub fn start_in(
        state_dir: &std::path::Path,
        env: &[(&str, &str)],
        config_file: Option<&std::path::Path>,
    ) -> Relais {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_relais"));
        cmd.arg("serve");
        if let Some(file) = config_file {
            cmd.arg("--config").arg(file);
        }
        for (key, _) in std::env::vars() {
            if key.starts_with("RELAIS_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("RELAIS_SERVER__LISTEN", "127.0.0.1:0")
            .env("RELAIS_JWT__SECRET", TEST_SECRET)
            .env("RELAIS_SERVER__STATE_DIR", state_dir)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn relais");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(pos) = line.find("listening on http://") {
                    let addr = line[pos + "listening on ".len()..].trim().to_string();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("relais did not start: {:?}", logs.lock().unwrap());
            }
        };
        Relais {
            child,
            base,
            logs,
            _state: None,
        }
    }

    /// Kills the process at once (SIGKILL, as `kill -9`) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The Mercure hub URL.
    pub fn hub_url(&self) -> String {
        format!("{}/.well-known/mercure", self.base)
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        self.child.wait().expect("wait")
    }

    /// The process ID (for memory figures read from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether a log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.logs.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

impl Drop for Relais {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A token signed with [`TEST_SECRET`], valid for an hour.
pub fn token(sub: &str, subscribe: &[&str], publish: &[&str]) -> String {
    let claims = TokenMinter::claims_for(
        sub,
        subscribe.iter().map(|s| s.to_string()).collect(),
        publish.iter().map(|s| s.to_string()).collect(),
        Duration::from_secs(3600),
    );
    sign(&claims)
}

/// The presence topic template of one audit (what a board subscribes to, and what its
/// token must grant to see who is on the audit).
pub fn presence_of(audit: &str) -> String {
    format!("/.well-known/mercure/subscriptions/audits%2F{audit}{{/subscriber}}")
}

/// A technician's token: subscribes to `audits/{audit}` and its presence, with the
/// presence payload `{"name": name}`, valid for an hour.
pub fn technician(name: &str, audit: &str) -> String {
    let mut claims = TokenMinter::claims_for(
        name,
        vec![format!("audits/{audit}"), presence_of(audit)],
        vec![],
        Duration::from_secs(3600),
    );
    claims.mercure.payload = Some(serde_json::json!({ "name": name }));
    sign(&claims)
}

/// Signs arbitrary claims with [`TEST_SECRET`].
pub fn sign(claims: &Claims) -> String {
    let mut config = Config::default();
    config.jwt.secret = Some(Secret::new(TEST_SECRET));
    let keys = KeyMaterial::load_or_create(&config).expect("keys");
    TokenMinter::new(&keys, &config)
        .expect("minter")
        .mint(claims)
        .expect("mint")
}

/// An HTTP client for the tests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Publishes with the Mercure form; returns the response.
pub async fn publish(relais: &Relais, token: &str, form: &[(&str, &str)]) -> reqwest::Response {
    client()
        .post(relais.hub_url())
        .bearer_auth(token)
        .form(form)
        .send()
        .await
        .expect("publish request")
}

/// Publishes `data` on `topic` and returns the event ID (panics unless 200).
pub async fn publish_ok(relais: &Relais, token: &str, topic: &str, data: &str) -> String {
    let response = publish(relais, token, &[("topic", topic), ("data", data)]).await;
    assert_eq!(response.status(), 200, "publish failed");
    response.text().await.expect("id")
}

/// The text of relais' `/metrics`.
pub async fn metrics_text(relais: &Relais) -> String {
    client()
        .get(format!("{}/metrics", relais.base))
        .send()
        .await
        .expect("metrics request")
        .text()
        .await
        .expect("metrics text")
}

/// A live SSE connection.
pub struct SseClient {
    /// Status of the response.
    pub status: u16,
    /// Response headers.
    pub headers: reqwest::header::HeaderMap,
    stream: Option<futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>>,
    parser: SseParser,
    pending: std::collections::VecDeque<Parsed>,
}

impl SseClient {
    /// Opens `GET /.well-known/mercure?{query}` with an optional bearer token and extra
    /// headers (e.g. `Last-Event-ID`).
    pub async fn connect(
        relais: &Relais,
        query: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> SseClient {
        let mut request = reqwest::Client::new().get(format!("{}?{}", relais.hub_url(), query));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.expect("subscribe request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        SseClient {
            status,
            headers,
            stream: Some(response.bytes_stream().boxed()),
            parser: SseParser::new(),
            pending: Default::default(),
        }
    }

    /// The next item (event, comment, retry), or `None` on timeout or end of stream.
    pub async fn next_item(&mut self, wait: Duration) -> Option<Parsed> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            let stream = self.stream.as_mut()?;
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Ok(bytes))) => self.pending.extend(self.parser.feed(&bytes)),
                Ok(Some(Err(_))) | Ok(None) => {
                    self.stream = None;
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    /// The next event, skipping comments and `retry:` frames.
    pub async fn next_event(&mut self, wait: Duration) -> Option<ParsedEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_item(left).await? {
                Parsed::Event(e) => return Some(e),
                _ => continue,
            }
        }
    }

    /// Collects events until `n` arrived or `wait` passed.
    pub async fn events(&mut self, n: usize, wait: Duration) -> Vec<ParsedEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(e) => out.push(e),
                None => break,
            }
        }
        out
    }

    /// Whether the server closed the stream (reads until end or `wait`).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            if self.next_item(left).await.is_none() {
                return self.stream.is_none();
            }
        }
    }
}

/// A short wait for things that must arrive.
pub const ARRIVE: Duration = Duration::from_secs(5);
/// How long to watch for things that must not arrive.
pub const QUIET: Duration = Duration::from_millis(700);

/// A Mercure 1.0 matcher for [`access_token`]: `("topic", false)` is exact,
/// `("pattern", true)` a URL pattern.
pub fn matchers(list: &[(&str, bool)]) -> Vec<relais::auth::TopicMatcher> {
    list.iter()
        .map(|(pattern, url_pattern)| relais::auth::TopicMatcher {
            pattern: pattern.to_string(),
            match_type: url_pattern.then_some(relais::auth::MatchType::UrlPattern),
        })
        .collect()
}

/// A Mercure 1.0 access token (`typ: at+jwt`, `authorization_details`) for this relais
/// (`aud` = its hub URL), minted by relais' own minter with [`TEST_SECRET`].
pub fn access_token(
    relais: &Relais,
    sub: &str,
    subscribe: &[(&str, bool)],
    publish: &[(&str, bool)],
) -> String {
    let claims = relais::auth::AccessTokenClaims::new(
        sub,
        "relais",
        &relais.hub_url(),
        matchers(subscribe),
        matchers(publish),
        Duration::from_secs(3600),
    );
    let mut config = Config::default();
    config.jwt.secret = Some(Secret::new(TEST_SECRET));
    let keys = KeyMaterial::load_or_create(&config).expect("keys");
    TokenMinter::new(&keys, &config)
        .expect("minter")
        .mint_access_token(&claims)
        .expect("mint")
}
