//! Pushpin 1.36 as the peer: a generated configuration in a temporary directory (loopback
//! ports, its own run directory and zurl sockets, raised `message_rate` / `message_hwm`
//! and connection limit), the runner started as a child process, and a tiny GRIP backend
//! (a task of this process) answering every subscriber with `Grip-Hold: stream` on one
//! channel. Publishing goes to the handler's HTTP endpoint `POST /publish/`.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::args::Args;

/// The channel every benchmark subscriber holds.
pub const CHANNEL: &str = "bench";

/// A running Pushpin and its backend.
pub struct PushpinTarget {
    child: Option<Child>,
    /// Where clients connect.
    pub http_addr: SocketAddr,
    /// Where `POST /publish/` goes.
    pub publish_addr: SocketAddr,
    dir: PathBuf,
    backend: tokio::task::JoinHandle<()>,
}

fn free_port() -> Result<u16, String> {
    let l = StdListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

fn write_config(dir: &Path, backend: SocketAddr, args: &Args) -> Result<(u16, u16), String> {
    let http = free_port()?;
    let publish = free_port()?;
    let (push_in, push_sub, command) = (free_port()?, free_port()?, free_port()?);
    let run = dir.join("run");
    let log = dir.join("log");
    for d in [&run, &log] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let conf = format!(
        r#"[global]
include={{libdir}}/internal.conf
rundir={run}
ipc_prefix=bench-
port_offset=0
stats_connection_ttl=120

[runner]
services=condure,zurl,pushpin-proxy,pushpin-handler
http_port=127.0.0.1:{http}
logdir={log}
log_level=1
client_buffer_size=8192
client_maxconn=200000
condure_bin=condure
zurl_bin=zurl

[proxy]
routesfile=routes
debug=false
auto_cross_origin=false
accept_x_forwarded_protocol=false
set_x_forwarded_protocol=proto-only
log_from=false
log_user_agent=false
sig_iss=pushpin
sig_key=relais-bench-not-a-secret
updates_check=off
zurl_out_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-in
zurl_out_stream_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-in-stream
zurl_in_specs=ipc://{{rundir}}/{{ipc_prefix}}zurl-out

[handler]
push_in_spec=tcp://127.0.0.1:{push_in}
push_in_sub_specs=tcp://127.0.0.1:{push_sub}
push_in_sub_connect=false
push_in_http_addr=127.0.0.1
push_in_http_port={publish}
push_in_http_max_headers_size=10000
push_in_http_max_body_size=10000000
stats_spec=ipc://{{rundir}}/{{ipc_prefix}}stats
command_spec=tcp://127.0.0.1:{command}
message_rate={rate}
message_hwm={hwm}
message_wait=5000
id_cache_ttl=60
connection_subscription_max=20
subscription_linger=60
stats_subscription_ttl=60
stats_report_interval=10
stats_format=tnetstring
"#,
        run = run.display(),
        log = log.display(),
        rate = args.pushpin_message_rate,
        hwm = args.pushpin_message_hwm,
    );
    std::fs::write(dir.join("pushpin.conf"), conf).map_err(|e| format!("pushpin.conf: {e}"))?;
    std::fs::write(dir.join("routes"), format!("* {backend}\n"))
        .map_err(|e| format!("routes: {e}"))?;
    Ok((http, publish))
}

/// A subscriber's request to Pushpin at `addr`: every event, or those of `topic` (and
/// the warm-up events).
pub fn subscribe_request(addr: SocketAddr, topic: Option<&str>) -> Vec<u8> {
    let query = topic.map(|t| format!("?topic={t}")).unwrap_or_default();
    format!("GET /events{query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")
        .into_bytes()
}

/// The GRIP channels of a request: its `topic=` value (the `topics` workload) and
/// [`CHANNEL`], which every subscriber holds (warm-up events, the other workloads).
fn channels(head: &[u8]) -> String {
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let topic = line
        .split(['?', '&', ' '])
        .find_map(|part| part.strip_prefix("topic="));
    match topic {
        Some(t) => format!("{t}, {CHANNEL}"),
        None => CHANNEL.to_string(),
    }
}

/// Answers one backend connection (requests may come keep-alive through zurl).
async fn serve_backend(mut stream: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nGrip-Hold: stream\r\nGrip-Channel: {}\r\nCache-Control: no-cache\r\nContent-Length: 13\r\n\r\nretry: 2000\n\n",
                channels(&buf[..end])
            );
            buf.drain(..end + 4);
            if stream.write_all(response.as_bytes()).await.is_err() {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn wait_port(addr: SocketAddr, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Whether one subscription gets its `200` head within 2 s.
async fn probe(addr: SocketAddr, request: &[u8]) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(request).await.ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(head) = crate::wire::parse_head(&buf) {
                return Some(matches!(head, Ok(h) if h.status == 200));
            }
            let n = s.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(true))
    )
}

impl PushpinTarget {
    /// Starts the backend and Pushpin, and waits until both of its ports answer.
    pub async fn start(args: &Args) -> Result<Self, String> {
        let bin = &args.pushpin_bin;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("backend: {e}"))?;
        let backend_addr = listener.local_addr().map_err(|e| format!("backend: {e}"))?;
        let backend = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve_backend(s));
            }
        });
        let dir = std::env::temp_dir().join(format!(
            "relais-bench-pushpin-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let (http, publish) = write_config(&dir, backend_addr, args)?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(dir.join("pushpin.conf"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start {} (Debian package `pushpin`): {e}",
                    bin.display()
                )
            })?;
        crate::procstat::register_child(child.id());
        let mut target = Self {
            child: Some(child),
            http_addr: SocketAddr::from(([127, 0, 0, 1], http)),
            publish_addr: SocketAddr::from(([127, 0, 0, 1], publish)),
            dir,
            backend,
        };
        let up = wait_port(target.http_addr, Duration::from_secs(30)).await
            && wait_port(target.publish_addr, Duration::from_secs(30)).await;
        if !up {
            target.stop();
            return Err("Pushpin did not open its ports within 30 s".into());
        }
        // The ports open before the proxy, zurl and the handler are wired together: wait
        // until a subscription really goes through to the backend and back.
        let request = target.subscribe_request(None);
        let start = Instant::now();
        while !probe(target.http_addr, &request).await {
            if start.elapsed() > Duration::from_secs(30) {
                target.stop();
                return Err("Pushpin did not answer a subscription within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(target)
    }

    /// The runner's process ID (the other Pushpin processes are its children).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The subscribers' request.
    pub fn subscribe_request(&self, topic: Option<&str>) -> Vec<u8> {
        subscribe_request(self.http_addr, topic)
    }

    /// Stops Pushpin (SIGTERM to the runner, which stops its services) and the backend.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pids = crate::procstat::tree(child.id());
            crate::procstat::stop_child(&mut child);
            // Services the runner may have left behind (ours only: its own children).
            for pid in pids.into_iter().skip(1) {
                if crate::procstat::rss_bytes(pid).is_some() {
                    crate::procstat::terminate(pid);
                }
            }
        }
        self.backend.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for PushpinTarget {
    fn drop(&mut self) {
        self.stop();
    }
}
