//! The `bare` peer: the least a server must do to deliver the same events to the same
//! subscribers, as a reference for this machine. It accepts the subscribers' `GET` (any
//! path; `topic=` values as written), answers `200 text/event-stream`, and writes the
//! pre-encoded frames the benchmark posts to `POST /publish` to the sockets of the
//! subscribers of each frame's topic (`*` subscribers get everything): no parsing of
//! events, no authentication, no history, one task and one unbounded queue per
//! connection, coalesced vectored writes.
//!
//! It runs as a child process (this binary with `--serve-bare`), so that its memory and
//! CPU are measured exactly like relais's.

use std::collections::HashMap;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Subscribers by topic.
type Topics = Arc<Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Bytes>>>>>;

/// Largest request head or publish body the bare server accepts.
const MAX_REQUEST: usize = 64 * 1024 * 1024;
/// Frames written with one `writev`.
const MAX_IOV: usize = 256;

/// Runs the bare server until the process is killed; prints `bare listening on ADDR`.
pub async fn serve() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    eprintln!("bare listening on {}", listener.local_addr()?);
    let topics: Topics = Arc::default();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, topics.clone()));
    }
}

async fn connection(mut stream: TcpStream, topics: Topics) {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // One request head.
        let end = loop {
            if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                break end + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) if buf.len() + n <= MAX_REQUEST => buf.extend_from_slice(&chunk[..n]),
                Ok(_) => return,
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let line = head.lines().next().unwrap_or_default();
        if line.starts_with("GET ") {
            let wanted: Vec<String> = line
                .split(['?', '&', ' '])
                .filter_map(|p| p.strip_prefix("topic="))
                .map(str::to_string)
                .collect();
            subscriber(stream, wanted, topics).await;
            return;
        }
        // POST /publish with a Content-Length body.
        let length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())
                    .flatten()
            })
            .unwrap_or(0);
        if length > MAX_REQUEST {
            return;
        }
        while buf.len() < length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..length).collect();
        let status = if publish(&body, &topics) {
            "200 OK"
        } else {
            "400 Bad Request"
        };
        let response = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Fans out a publish body: repeated `TOPIC\nLENGTH\nFRAME`.
fn publish(mut body: &[u8], topics: &Topics) -> bool {
    let map = topics.lock().unwrap_or_else(|p| p.into_inner());
    while !body.is_empty() {
        let Some(nl) = memchr::memchr(b'\n', body) else {
            return false;
        };
        let topic = String::from_utf8_lossy(&body[..nl]).into_owned();
        body = &body[nl + 1..];
        let Some(nl) = memchr::memchr(b'\n', body) else {
            return false;
        };
        let Some(len) = std::str::from_utf8(&body[..nl])
            .ok()
            .and_then(|l| l.parse::<usize>().ok())
        else {
            return false;
        };
        body = &body[nl + 1..];
        if body.len() < len {
            return false;
        }
        let frame = Bytes::copy_from_slice(&body[..len]);
        body = &body[len..];
        let keys: &[&str] = if topic == "*" {
            &["*"]
        } else {
            &[topic.as_str(), "*"]
        };
        for key in keys {
            if let Some(subs) = map.get(*key) {
                for s in subs {
                    let _ = s.send(frame.clone());
                }
            }
        }
    }
    true
}

async fn subscriber(mut stream: TcpStream, wanted: Vec<String>, topics: Topics) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    {
        let mut map = topics.lock().unwrap_or_else(|p| p.into_inner());
        for t in &wanted {
            map.entry(t.clone()).or_default().push(tx.clone());
        }
    }
    drop(tx);
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\nretry: 2000\n\n";
    if stream.write_all(head.as_bytes()).await.is_ok() {
        let mut frames: Vec<Bytes> = Vec::with_capacity(MAX_IOV);
        'stream: while let Some(first) = rx.recv().await {
            frames.push(first);
            while frames.len() < MAX_IOV {
                match rx.try_recv() {
                    Ok(f) => frames.push(f),
                    Err(_) => break,
                }
            }
            let (mut index, mut offset) = (0usize, 0usize);
            while index < frames.len() {
                let slices: Vec<IoSlice<'_>> = frames[index..]
                    .iter()
                    .enumerate()
                    .map(|(i, f)| IoSlice::new(if i == 0 { &f[offset..] } else { f }))
                    .collect();
                let mut n = match stream.write_vectored(&slices).await {
                    Ok(0) | Err(_) => break 'stream,
                    Ok(n) => n,
                };
                while n > 0 && index < frames.len() {
                    let left = frames[index].len() - offset;
                    if n >= left {
                        n -= left;
                        index += 1;
                        offset = 0;
                    } else {
                        offset += n;
                        n = 0;
                    }
                }
            }
            frames.clear();
        }
    }
    // Forget the closed queue.
    let mut map = topics.lock().unwrap_or_else(|p| p.into_inner());
    for t in &wanted {
        if let Some(subs) = map.get_mut(t) {
            subs.retain(|s| !s.is_closed());
        }
    }
}

/// The bare server process started by the benchmark.
pub struct BareTarget {
    child: Option<Child>,
    /// Listening address.
    pub addr: SocketAddr,
    /// Its process ID.
    pub pid: u32,
}

impl BareTarget {
    /// Starts this binary with `--serve-bare` and waits for its address.
    pub fn start() -> Result<Self, String> {
        use std::io::{BufRead, BufReader};
        let exe = std::env::current_exe().map_err(|e| format!("own binary: {e}"))?;
        let mut child = Command::new(exe)
            .arg("--serve-bare")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the bare server: {e}"))?;
        let pid = child.id();
        crate::procstat::register_child(pid);
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("bare listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.trim().to_string());
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "the bare server did not start".to_string())?;
        let addr = addr
            .parse()
            .map_err(|e| format!("bare server announced {addr:?}: {e}"))?;
        Ok(Self {
            child: Some(child),
            addr,
            pid,
        })
    }

    /// Builds subscribers' requests to the bare server at `addr`: every event, or
    /// those of one topic and the warm-up events.
    pub fn request_builder(addr: SocketAddr) -> impl Fn(Option<&str>) -> Vec<u8> + Send + Sync {
        move |topic| {
            let query = match topic {
                Some(t) => format!("topic={t}&topic={}", crate::workload::WARM_TOPIC),
                None => "topic=*".to_string(),
            };
            format!(
                "GET /events?{query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
            )
            .into_bytes()
        }
    }

    /// Stops the bare server.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::procstat::stop_child(&mut child);
        }
    }
}

impl Drop for BareTarget {
    fn drop(&mut self) {
        self.stop();
    }
}
