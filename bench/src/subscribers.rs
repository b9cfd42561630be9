//! The SSE subscribers: one small tokio task per connection, raw TCP with a hand-written
//! `GET`, sockets bound to one of several 127.0.0.x source addresses before connecting
//! (so many connections fit in the ephemeral port range), and a scanner that only looks
//! for each event's sequence marker. Every receipt is checked against the subscriber's
//! own record (lost and duplicated events) and timed against the publisher's send time.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::latency::{Clock, Latencies, SendLog};
use crate::wire::{parse_head, Dechunker, Found, Scanner, Tracker};

/// Read buffer of each subscriber.
const READ_BUF: usize = 16 * 1024;
/// Latency samples a subscriber buffers before adding them to the shared histogram.
const SAMPLE_BATCH: usize = 1024;

/// State shared by the publisher, the subscribers and the progress display.
pub struct Shared {
    /// The run's clock.
    pub clock: Clock,
    /// When each sequence was sent.
    pub send_log: SendLog,
    /// Receive − send, per delivery.
    pub latencies: Latencies,
    /// Events sent and acknowledged by the server.
    pub sent: AtomicU64,
    /// First receipts of benchmark events, all subscribers together.
    pub delivered: AtomicU64,
    /// Repeated receipts.
    pub duplicates: AtomicU64,
    /// Event-stream bytes the subscribers read (without the chunked encoding's framing),
    /// all subscribers together: what each server wrote per delivery.
    pub stream_bytes: AtomicU64,
    /// Subscribers that have seen a warm-up event.
    pub warm_seen: AtomicU64,
    /// Subscribers whose response head (200) arrived.
    pub connected: AtomicU64,
    /// Subscribers that could not connect or were refused.
    pub connect_errors: AtomicU64,
    /// Streams that ended (server closed, error) before the benchmark stopped them.
    pub closed: AtomicU64,
    /// Streams that ended before the warm-up event and were opened again.
    pub retried: AtomicU64,
    /// Clock time of the latest first receipt.
    pub last_rx_ns: AtomicU64,
    /// The first connection error, for the report.
    pub first_error: Mutex<Option<String>>,
    /// Cancelled when the subscribers must stop and report.
    pub stop: CancellationToken,
}

impl Shared {
    /// Fresh state for one target.
    pub fn new() -> Self {
        Self {
            clock: Clock::new(),
            send_log: SendLog::new(),
            latencies: Latencies::new(),
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            stream_bytes: AtomicU64::new(0),
            warm_seen: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            last_rx_ns: AtomicU64::new(0),
            first_error: Mutex::new(None),
            stop: CancellationToken::new(),
        }
    }

    fn error(&self, message: String) {
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(message);
    }
}

/// The complete `GET` request of subscriber `i`.
pub type RequestFor = Arc<dyn Fn(usize) -> Vec<u8> + Send + Sync>;

/// Where subscribers connect and what they send.
#[derive(Clone)]
pub struct Endpoint {
    /// Server address.
    pub addr: SocketAddr,
    /// The request of each subscriber (they differ by topic in `topics`).
    pub request: RequestFor,
}

/// What one subscriber saw.
pub struct Outcome {
    /// The subscriber's number (its topic in `topics` is `index mod T`).
    pub index: usize,
    /// Sequences received.
    pub tracker: Tracker,
    /// Whether it received the warm-up event (it is then one of the measured ones).
    pub warmed: bool,
}

/// The running subscribers.
pub struct Subscribers {
    handles: Vec<JoinHandle<Outcome>>,
}

impl Subscribers {
    /// Starts `n` subscriber tasks; they connect with at most `concurrency` handshakes in
    /// flight. Watch `shared.connected` / `shared.connect_errors` to see them arrive.
    pub fn spawn(
        n: usize,
        endpoint: Endpoint,
        source_ips: u8,
        concurrency: usize,
        shared: Arc<Shared>,
    ) -> Self {
        let gate = Arc::new(Semaphore::new(concurrency.max(1)));
        let ips = source_ips.max(1) as usize;
        let handles = (0..n)
            .map(|i| {
                let source = Ipv4Addr::new(127, 0, 0, 2 + (i % ips) as u8);
                tokio::spawn(run(
                    i,
                    source,
                    endpoint.clone(),
                    gate.clone(),
                    shared.clone(),
                ))
            })
            .collect();
        Self { handles }
    }

    /// Stops every subscriber and collects what each one saw.
    pub async fn stop(self, shared: &Shared) -> Vec<Outcome> {
        shared.stop.cancel();
        let mut out = Vec::with_capacity(self.handles.len());
        for h in self.handles {
            if let Ok(o) = h.await {
                out.push(o);
            }
        }
        out
    }
}

async fn connect(
    index: usize,
    source: Ipv4Addr,
    endpoint: &Endpoint,
    buf: &mut Vec<u8>,
) -> Result<(TcpStream, Dechunker), String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if endpoint.addr.ip().is_loopback() {
        socket
            .bind(SocketAddr::new(source.into(), 0))
            .map_err(|e| format!("bind {source}: {e}"))?;
    }
    let mut stream = socket
        .connect(endpoint.addr)
        .await
        .map_err(|e| format!("connect {} from {source}: {e}", endpoint.addr))?;
    stream
        .write_all(&(endpoint.request)(index))
        .await
        .map_err(|e| format!("write request: {e}"))?;
    let mut chunk = [0u8; 4096];
    let head = loop {
        if let Some(head) = parse_head(buf) {
            break head?;
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read response: {e}"))?;
        if n == 0 {
            return Err("connection closed before the response head".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if head.status != 200 {
        let body = String::from_utf8_lossy(&buf[head.len..]).into_owned();
        return Err(format!("status {}: {}", head.status, body.trim()));
    }
    buf.drain(..head.len);
    Ok((stream, Dechunker::new(head.chunked)))
}

/// Attempts at opening a stream that ends before the warm-up event (Pushpin 1.36 cancels
/// a few streams when many connect at once: "received message out of sequence").
const ATTEMPTS: u32 = 3;
/// How long a subscriber waits for its response head.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

async fn run(
    index: usize,
    source: Ipv4Addr,
    endpoint: Endpoint,
    gate: Arc<Semaphore>,
    shared: Arc<Shared>,
) -> Outcome {
    let mut sub = Sub {
        index,
        tracker: Tracker::new(),
        samples: Vec::with_capacity(SAMPLE_BATCH),
        saw_warm: false,
        shared: shared.clone(),
    };
    let stop = shared.stop.clone();
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let mut buf = vec![0u8; READ_BUF];
    let mut counted = false;
    for attempt in 1..=ATTEMPTS {
        let mut pending = Vec::new();
        let permit = gate.acquire().await;
        let attempt_result = tokio::time::timeout(
            CONNECT_TIMEOUT,
            connect(index, source, &endpoint, &mut pending),
        )
        .await
        .unwrap_or_else(|_| Err(format!("no response head within {CONNECT_TIMEOUT:?}")));
        let (mut stream, mut dechunker) = match attempt_result {
            Ok(ok) => ok,
            Err(e) if attempt < ATTEMPTS && !counted && !stop.is_cancelled() => {
                drop(permit);
                shared.retried.fetch_add(1, Ordering::Relaxed);
                let _ = e;
                continue;
            }
            Err(e) => {
                if !counted {
                    shared.connect_errors.fetch_add(1, Ordering::Relaxed);
                }
                shared.error(e);
                break;
            }
        };
        drop(permit);
        if !counted {
            counted = true;
            shared.connected.fetch_add(1, Ordering::Relaxed);
        }
        let mut scanner = Scanner::new();
        let mut ok = sub.consume(&pending, &mut dechunker, &mut scanner);
        while ok.is_ok() {
            tokio::select! {
                biased;
                _ = &mut stopped => break,
                read = stream.read(&mut buf) => match read {
                    Ok(0) => { ok = Err("stream closed by the server".into()); }
                    Ok(n) => ok = sub.consume(&buf[..n], &mut dechunker, &mut scanner),
                    Err(e) => ok = Err(format!("read: {e}")),
                },
            }
        }
        match ok {
            Ok(()) => break,
            Err(e) if !sub.saw_warm && attempt < ATTEMPTS && !stop.is_cancelled() => {
                let _ = e;
                shared.retried.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                shared.closed.fetch_add(1, Ordering::Relaxed);
                shared.error(e);
                break;
            }
        }
    }
    shared.latencies.flush(index, &mut sub.samples);
    Outcome {
        index,
        tracker: sub.tracker,
        warmed: sub.saw_warm,
    }
}

/// One subscriber's record, fed with what its stream carries.
struct Sub {
    index: usize,
    tracker: Tracker,
    samples: Vec<u32>,
    saw_warm: bool,
    shared: Arc<Shared>,
}

impl Sub {
    fn consume(
        &mut self,
        bytes: &[u8],
        dechunker: &mut Dechunker,
        scanner: &mut Scanner,
    ) -> Result<(), String> {
        let shared = &*self.shared;
        let now = shared.clock.now_ns();
        let mut fresh = 0u64;
        let mut dups = 0u64;
        let mut read = 0u64;
        let (tracker, samples, saw_warm) =
            (&mut self.tracker, &mut self.samples, &mut self.saw_warm);
        dechunker.feed(bytes, |payload| {
            read += payload.len() as u64;
            scanner.feed(payload, |found| match found {
                Found::Seq(seq) => {
                    if tracker.record(seq) {
                        fresh += 1;
                        if let Some(sent) = shared.send_log.sent_at(seq) {
                            let us = now.saturating_sub(sent) / 1000;
                            samples.push(us.min(u64::from(u32::MAX)) as u32);
                        }
                    } else {
                        dups += 1;
                    }
                }
                Found::Warm => {
                    if !*saw_warm {
                        *saw_warm = true;
                        shared.warm_seen.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })?;
        if fresh > 0 {
            shared.delivered.fetch_add(fresh, Ordering::Relaxed);
            shared.last_rx_ns.fetch_max(now, Ordering::Relaxed);
        }
        if dups > 0 {
            shared.duplicates.fetch_add(dups, Ordering::Relaxed);
        }
        shared.stream_bytes.fetch_add(read, Ordering::Relaxed);
        if self.samples.len() >= SAMPLE_BATCH {
            shared.latencies.flush(self.index, &mut self.samples);
        }
        Ok(())
    }
}
