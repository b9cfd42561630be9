//! A real Synapse homeserver for the Matrix alert tests, started once per test binary by
//! `tests/setup/synapse.sh` on a free loopback port, with three accounts: `bot` (relais'
//! account, message rate limit lifted through the admin API), `bot429` (Synapse's default
//! message rate limit, 0.2/s with a burst of 10) and `reader` (an admin that reads the
//! rooms back). Each test makes its own room.
//!
//! Include it with `#[path = "common/matrix.rs"] mod matrix;`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::OnceCell;

/// Password of every test account.
const PASSWORD: &str = "relais-test-password";

/// The running homeserver and its accounts' tokens.
pub struct Synapse {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Token of `@bot:localhost` (no message rate limit).
    pub bot: Account,
    /// Token of `@bot429:localhost` (default message rate limit).
    pub bot429: Account,
    /// Token of `@reader:localhost` (admin; reads the rooms).
    pub reader: Account,
}

/// A logged-in account.
#[derive(Clone)]
pub struct Account {
    /// `@name:localhost`.
    pub user_id: String,
    /// Access token.
    pub token: String,
}

/// A notice read back from a room.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// Who sent it.
    pub sender: String,
    /// `msgtype`.
    pub msgtype: String,
    /// Plain text.
    pub body: String,
    /// `format`.
    pub format: Option<String>,
    /// HTML.
    pub formatted_body: Option<String>,
    /// `m.mentions` (who the notice intends to ping), as sent.
    pub mentions: Option<Value>,
}

static SYNAPSE: OnceCell<Synapse> = OnceCell::const_new();

/// The shared homeserver, started on first use (it takes several seconds). The
/// `synapse.sh` process stops it when this test binary exits.
pub async fn synapse() -> &'static Synapse {
    SYNAPSE.get_or_init(start).await
}

async fn start() -> Synapse {
    // The script removes this directory when it stops.
    let dir = std::env::temp_dir().join(format!("relais-synapse-{}", std::process::id()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/setup/synapse.sh");
    let mut child = Command::new("bash")
        .arg(script)
        .arg(&dir)
        .arg(port.to_string())
        .arg(std::process::id().to_string())
        .arg(format!("bot:{PASSWORD}"))
        .arg(format!("bot429:{PASSWORD}"))
        .arg(format!("reader:{PASSWORD}:admin"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run tests/setup/synapse.sh");
    let stdout = child.stdout.take().expect("stdout");
    // The script prints READY once Synapse answers and the accounts exist (bounded by the
    // script's own start-up timeout).
    let base = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let line = lines.next().and_then(Result::ok).unwrap_or_default();
        // Keep draining so the script never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        line
    })
    .await
    .expect("join");
    let base = match base.strip_prefix("READY ") {
        Some(b) => b.trim().to_string(),
        None => {
            let _ = child.kill();
            panic!("Synapse did not start (see stderr above); got {base:?}");
        }
    };
    // The script owns Synapse and exits with the test binary; the handle is not needed.
    std::mem::forget(child);
    let bot = login(&base, "bot").await;
    let bot429 = login(&base, "bot429").await;
    let reader = login(&base, "reader").await;
    // Lift the message rate limit of `bot` only (admin API).
    let url = format!(
        "{base}/_synapse/admin/v1/users/{}/override_ratelimit",
        enc(&bot.user_id)
    );
    let r = http()
        .post(url)
        .bearer_auth(&reader.token)
        .json(&json!({"messages_per_second": 0, "burst_count": 0}))
        .send()
        .await
        .expect("override_ratelimit");
    assert!(
        r.status().is_success(),
        "override_ratelimit: {}",
        r.status()
    );
    Synapse {
        base,
        bot,
        bot429,
        reader,
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn login(base: &str, user: &str) -> Account {
    let r: Value = http()
        .post(format!("{base}/_matrix/client/v3/login"))
        .json(&json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": PASSWORD,
        }))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("login json");
    Account {
        user_id: r["user_id"].as_str().expect("user_id").to_string(),
        token: r["access_token"]
            .as_str()
            .expect("access_token")
            .to_string(),
    }
}

impl Synapse {
    /// A new unencrypted private room created by `owner` (a bot), which `reader` joins.
    pub async fn room_for(&self, owner: &Account) -> String {
        let r: Value = http()
            .post(format!("{}/_matrix/client/v3/createRoom", self.base))
            .bearer_auth(&owner.token)
            .json(&json!({"preset": "private_chat", "name": "on-call", "invite": [self.reader.user_id]}))
            .send()
            .await
            .expect("createRoom")
            .json()
            .await
            .expect("createRoom json");
        let room = r["room_id"].as_str().expect("room_id").to_string();
        self.join(&self.reader, &room).await;
        room
    }

    /// A room created by `reader` that no bot was invited to.
    pub async fn room_without_bot(&self) -> String {
        let r: Value = http()
            .post(format!("{}/_matrix/client/v3/createRoom", self.base))
            .bearer_auth(&self.reader.token)
            .json(&json!({"preset": "private_chat", "name": "no bot here"}))
            .send()
            .await
            .expect("createRoom")
            .json()
            .await
            .expect("createRoom json");
        r["room_id"].as_str().expect("room_id").to_string()
    }

    async fn join(&self, who: &Account, room: &str) {
        let r = http()
            .post(format!(
                "{}/_matrix/client/v3/join/{}",
                self.base,
                enc(room)
            ))
            .bearer_auth(&who.token)
            .json(&json!({}))
            .send()
            .await
            .expect("join");
        assert!(r.status().is_success(), "join: {}", r.status());
    }

    /// The `m.room.message` events of `room` sent by `sender`, oldest first, read by
    /// `reader` with `GET /rooms/{id}/messages?dir=b&limit=50`.
    pub async fn notices(&self, room: &str, sender: &Account) -> Vec<Notice> {
        let r: Value = http()
            .get(format!(
                "{}/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
                self.base,
                enc(room)
            ))
            .bearer_auth(&self.reader.token)
            .send()
            .await
            .expect("messages")
            .json()
            .await
            .expect("messages json");
        let mut out: Vec<Notice> = r["chunk"]
            .as_array()
            .expect("chunk")
            .iter()
            .filter(|e| e["type"] == "m.room.message" && e["sender"] == sender.user_id.as_str())
            .map(|e| {
                let c = &e["content"];
                Notice {
                    sender: e["sender"].as_str().unwrap_or_default().to_string(),
                    msgtype: c["msgtype"].as_str().unwrap_or_default().to_string(),
                    body: c["body"].as_str().unwrap_or_default().to_string(),
                    format: c["format"].as_str().map(str::to_string),
                    formatted_body: c["formatted_body"].as_str().map(str::to_string),
                    mentions: c.get("m.mentions").cloned(),
                }
            })
            .collect();
        out.reverse();
        out
    }

    /// Polls the room until `sender` posted at least `n` messages or `wait` passed.
    pub async fn wait_notices(
        &self,
        room: &str,
        sender: &Account,
        n: usize,
        wait: Duration,
    ) -> Vec<Notice> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notices = self.notices(room, sender).await;
            if notices.len() >= n || tokio::time::Instant::now() >= deadline {
                return notices;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
