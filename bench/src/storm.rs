//! `--storm`: a reconnect storm against relais, to measure what presence costs.
//!
//! N subscribers (`--subscribers`) connect, each to one of 100 quiet topics; then all of
//! them are closed at once and reopened at once. Meanwhile a live subscriber receives a
//! steady stream of events (`--rate`, default 200/s, Mercure publishes carrying their
//! send time) and a presence watcher subscribes to every subscription event. Printed:
//! connects per second (first connection and storm), the live subscriber's latency
//! before and during the storm, and the number of subscription events the watcher saw
//! (with presence on, one per subscription change: 2N for the storm). Run it with and
//! without `--no-presence` to compare.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::args::Args;
use crate::http1::Http1;
use crate::relais_proc::RelaisTarget;

const LIVE_TOPIC: &str = "storm/live";
const PRESENCE: &str = "/.well-known/mercure/subscriptions{/rest*}";

fn escape(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

fn request(addr: SocketAddr, token: &str, topic: &str) -> Vec<u8> {
    format!(
        "GET /.well-known/mercure?topic={} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nAuthorization: Bearer {token}\r\n\r\n",
        escape(topic)
    )
    .into_bytes()
}

/// Opens a stream and reads until its response head; the socket stays open.
async fn open(addr: SocketAddr, req: &[u8]) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(req).await.map_err(|e| format!("write: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before the response head".into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        return Err(String::from_utf8_lossy(&head)
            .lines()
            .next()
            .unwrap_or("")
            .to_string());
    }
    Ok(s)
}

/// Opens `n` quiet subscribers with at most `concurrency` connecting at once; returns
/// them and the connects per second.
async fn connect_all(
    addr: SocketAddr,
    token: &str,
    n: usize,
    concurrency: usize,
) -> Result<(Vec<TcpStream>, f64), String> {
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let req = request(addr, token, &format!("storm/quiet/{}", i % 100));
            let gate = gate.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire().await;
                open(addr, &req).await
            })
        })
        .collect();
    let mut streams = Vec::with_capacity(n);
    for h in handles {
        streams.push(h.await.map_err(|e| e.to_string())??);
    }
    Ok((streams, n as f64 / t0.elapsed().as_secs_f64().max(1e-9)))
}

/// Latencies (µs) of the live subscriber, by phase.
#[derive(Default)]
struct Live {
    samples: Mutex<Vec<u64>>,
    received: AtomicU64,
}

impl Live {
    fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Counts `needle` in a byte stream read in pieces.
async fn count_in_stream(mut s: TcpStream, needle: &'static [u8], count: Arc<AtomicU64>) {
    let mut carry: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            break;
        }
        carry.extend_from_slice(&buf[..n]);
        let found = carry.windows(needle.len()).filter(|w| *w == needle).count();
        count.fetch_add(found as u64, Ordering::Relaxed);
        let keep = carry.len().min(needle.len() - 1);
        carry.drain(..carry.len() - keep);
    }
}

/// Reads the live stream: each event's data is its send time in µs since `start`.
async fn read_live(mut s: TcpStream, start: Instant, live: Arc<Live>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            if let Some(rest) = line.strip_prefix(b"data: ") {
                if let Ok(sent) = String::from_utf8_lossy(rest).trim().parse::<u64>() {
                    let now = start.elapsed().as_micros() as u64;
                    live.samples
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(now.saturating_sub(sent));
                    live.received.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn describe(label: &str, mut samples: Vec<u64>) -> String {
    samples.sort_unstable();
    format!(
        "{label:<28} {:>7} events  p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms",
        samples.len(),
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        percentile(&samples, 1.0),
    )
}

/// Runs the storm and prints its figures.
pub async fn run(args: &Args) -> Result<(), String> {
    let mut target = RelaisTarget::start(args)?;
    let result = storm(args, &target).await;
    target.stop();
    result
}

async fn storm(args: &Args, target: &RelaisTarget) -> Result<(), String> {
    let addr = target.addr;
    let token = target.subscribe_token.clone();
    let n = args.subscribers;
    let start = Instant::now();

    let presence_events = Arc::new(AtomicU64::new(0));
    let watcher = open(addr, &request(addr, &token, PRESENCE)).await?;
    tokio::spawn(count_in_stream(
        watcher,
        b"\"type\":\"Subscription\"",
        presence_events.clone(),
    ));
    let live = Arc::new(Live::default());
    let live_stream = open(addr, &request(addr, &token, LIVE_TOPIC)).await?;
    tokio::spawn(read_live(live_stream, start, live.clone()));

    // The steady publisher.
    let publishing = Arc::new(AtomicBool::new(true));
    let publisher = {
        let publishing = publishing.clone();
        let auth = format!("Bearer {}", target.publish_token);
        let every = Duration::from_secs_f64(1.0 / args.rate.unwrap_or(200.0).max(1.0));
        tokio::spawn(async move {
            let mut http = Http1::new(addr);
            let mut tick = tokio::time::interval(every);
            let mut sent = 0u64;
            while publishing.load(Ordering::Relaxed) {
                tick.tick().await;
                let body = format!(
                    "topic={}&data={}",
                    escape(LIVE_TOPIC),
                    start.elapsed().as_micros()
                );
                let headers = [
                    ("Authorization", auth.as_str()),
                    ("Content-Type", "application/x-www-form-urlencoded"),
                ];
                if http
                    .request("POST", "/.well-known/mercure", &headers, body.as_bytes())
                    .await
                    .is_ok()
                {
                    sent += 1;
                }
            }
            sent
        })
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    let calm = live.take();
    let before = presence_events.load(Ordering::Relaxed);
    let (streams, first_rate) = connect_all(addr, &token, n, args.connect_concurrency).await?;
    let connect_samples = live.take();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_connect = presence_events.load(Ordering::Relaxed);

    // The storm: every subscriber gone at once, then back at once.
    let t0 = Instant::now();
    drop(streams);
    let (streams, storm_rate) = connect_all(addr, &token, n, args.connect_concurrency).await?;
    let storm_secs = t0.elapsed().as_secs_f64();
    // Let the subscription events settle (until none arrive for a second).
    let mut last = presence_events.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = presence_events.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    let storm_samples = live.take();
    let storm_events = last - after_connect;
    publishing.store(false, Ordering::Relaxed);
    let sent = publisher.await.unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(streams);

    println!(
        "storm: {n} subscribers, presence {}",
        if args.no_presence {
            "off (hub.subscriptions = false)"
        } else {
            "on"
        }
    );
    println!("first connection             {first_rate:>10.0} connects/s");
    println!(
        "reconnect storm              {storm_rate:>10.0} connects/s ({n} closed and reopened in {storm_secs:.2} s)"
    );
    println!(
        "subscription events          {:>10} at first connection, {storm_events} in the storm (one per change: {})",
        after_connect - before,
        if args.no_presence { 0 } else { 2 * n }
    );
    println!("{}", describe("live latency, calm", calm));
    println!("{}", describe("live latency, connecting", connect_samples));
    println!("{}", describe("live latency, storm", storm_samples));
    println!(
        "live events                  {:>10} received of {sent} published",
        live.received.load(Ordering::Relaxed)
    );
    Ok(())
}
