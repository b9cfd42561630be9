//! The relais under test: started by the benchmark (its own binary, a random HS256 key,
//! a fresh state directory, a Grist source, loopback on a free port), or an already
//! running one given with `--target`. Tokens are minted with the library.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::RngCore;
use relais::auth::{KeyMaterial, TokenMinter};
use relais::config::{Config, Secret};

use crate::args::Args;

/// Name of the bench's Grist source `Authorization` value prefix.
const HOOK_AUTH: &str = "Bearer relais-bench-hook-0123456789abcdef012345";

/// A relais to drive.
pub struct RelaisTarget {
    child: Option<Child>,
    /// Listening address.
    pub addr: SocketAddr,
    /// Process to sample, when known.
    pub pid: Option<u32>,
    /// Subscribe token (`*`).
    pub subscribe_token: String,
    /// Publish token (`*`).
    pub publish_token: String,
    /// The Grist source's `Authorization` value.
    pub hook_auth: String,
    state_dir: Option<PathBuf>,
    /// Last lines relais logged, for error messages.
    pub logs: Arc<Mutex<Vec<String>>>,
}

fn minter(secret: &str) -> Result<TokenMinter, String> {
    let mut config = Config::default();
    config.jwt.secret = Some(Secret::new(secret));
    let keys = KeyMaterial::load_or_create(&config).map_err(|e| e.to_string())?;
    TokenMinter::new(&keys, &config).map_err(|e| e.to_string())
}

fn tokens(secret: &str) -> Result<(String, String), String> {
    let m = minter(secret)?;
    let ttl = Duration::from_secs(24 * 3600);
    let sub = TokenMinter::claims_for("relais-bench", vec!["*".into()], vec![], ttl);
    let publ = TokenMinter::claims_for("relais-bench", vec![], vec!["*".into()], ttl);
    Ok((
        m.mint(&sub).map_err(|e| e.to_string())?,
        m.mint(&publ).map_err(|e| e.to_string())?,
    ))
}

/// The `relais` binary next to this one.
fn default_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("relais")))
        .unwrap_or_else(|| PathBuf::from("relais"))
}

impl RelaisTarget {
    /// Starts relais, or connects to `--target`.
    pub fn start(args: &Args) -> Result<Self, String> {
        if let Some(url) = &args.target {
            let secret = args
                .jwt_secret
                .as_deref()
                .ok_or("--target needs --jwt-secret (or RELAIS_JWT__SECRET)")?;
            let hostport = url
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string();
            let addr = std::net::ToSocketAddrs::to_socket_addrs(&hostport)
                .map_err(|e| format!("--target {url}: {e}"))?
                .next()
                .ok_or_else(|| format!("--target {url}: no address"))?;
            let (subscribe_token, publish_token) = tokens(secret)?;
            return Ok(Self {
                child: None,
                addr,
                pid: args.target_pid,
                subscribe_token,
                publish_token,
                hook_auth: HOOK_AUTH.into(),
                state_dir: None,
                logs: Arc::default(),
            });
        }
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let secret: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let state_dir = std::env::temp_dir().join(format!(
            "relais-bench-{}-{}",
            std::process::id(),
            rand::rng().next_u32()
        ));
        std::fs::create_dir_all(&state_dir).map_err(|e| format!("state dir: {e}"))?;
        let bin = args.relais_bin.clone().unwrap_or_else(default_bin);
        let mut cmd = Command::new(&bin);
        cmd.arg("serve");
        for (key, _) in std::env::vars() {
            if key.starts_with("RELAIS_") {
                cmd.env_remove(key);
            }
        }
        let source = args.source.to_ascii_uppercase();
        cmd.env("RELAIS_SERVER__LISTEN", "127.0.0.1:0")
            .env("RELAIS_JWT__SECRET", &secret)
            .env("RELAIS_SERVER__STATE_DIR", &state_dir)
            .env(format!("RELAIS_SOURCES__{source}__KIND"), "grist")
            .env(
                format!("RELAIS_SOURCES__{source}__AUTHORIZATION"),
                HOOK_AUTH,
            )
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        if args.memory {
            cmd.env("RELAIS_HUB__PERSIST", "false");
        }
        if args.no_presence {
            cmd.env("RELAIS_HUB__SUBSCRIPTIONS", "false");
        }
        if let Some(url) = &args.redis {
            cmd.env("RELAIS_REDIS__URL", url);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let logs: Arc<Mutex<Vec<String>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(pos) = line.find("listening on http://") {
                    let rest = &line[pos + "listening on http://".len()..];
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                let mut l = sink.lock().unwrap_or_else(|p| p.into_inner());
                if l.len() >= 50 {
                    l.remove(0);
                }
                l.push(line);
            }
        });
        let pid = child.id();
        crate::procstat::register_child(pid);
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let l = logs.lock().unwrap_or_else(|p| p.into_inner()).join("\n");
                return Err(format!("relais did not start:\n{l}"));
            }
        };
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| format!("relais announced {addr:?}: {e}"))?;
        let (subscribe_token, publish_token) = tokens(&secret)?;
        Ok(Self {
            child: Some(child),
            addr,
            pid: Some(pid),
            subscribe_token,
            publish_token,
            hook_auth: HOOK_AUTH.into(),
            state_dir: Some(state_dir),
            logs,
        })
    }
}

/// What a subscriber's request to relais is made of.
pub struct SubscribeRequest {
    /// relais's address.
    pub addr: SocketAddr,
    /// The subscribe token.
    pub token: String,
}

impl SubscribeRequest {
    /// The request: `topic=*`, or `topic` and the warm-up topic.
    pub fn build(&self, topic: Option<&str>) -> Vec<u8> {
        let selectors = match topic {
            Some(t) => format!(
                "topic={}&topic={}",
                query_escape(t),
                query_escape(crate::workload::WARM_TOPIC)
            ),
            None => "topic=*".into(),
        };
        format!(
            "GET /.well-known/mercure?{selectors} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nAuthorization: Bearer {}\r\n\r\n",
            self.addr, self.token
        )
        .into_bytes()
    }
}

impl RelaisTarget {
    /// Stops relais (SIGTERM, then SIGKILL after 10 s) if the benchmark started it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::procstat::stop_child(&mut child);
        }
        if let Some(dir) = self.state_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for RelaisTarget {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Percent-encodes a query value.
fn query_escape(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}
