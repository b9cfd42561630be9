//! End-to-end latency: when each sequence was sent (a table of atomics written by the
//! publisher) and an HDR histogram of receive − send, sharded so that thousands of
//! subscriber tasks can record without contending on one lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use hdrhistogram::Histogram;

/// Most events one run may publish (the send-time table is allocated up front).
pub const MAX_EVENTS: usize = 1 << 22;
const SHARDS: usize = 32;
/// Highest latency the histogram holds, in microseconds (values above are clamped).
const MAX_MICROS: u64 = 120_000_000;

/// The benchmark's clock: nanoseconds since the run started.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Clock(Instant::now())
    }

    /// Nanoseconds since the start (never 0, so 0 can mean "not sent").
    pub fn now_ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64 + 1
    }
}

/// Send time of each sequence, in [`Clock`] nanoseconds; 0 = not sent yet.
pub struct SendLog {
    sent: Vec<AtomicU64>,
}

impl SendLog {
    /// An empty table for [`MAX_EVENTS`] sequences.
    pub fn new() -> Self {
        Self {
            sent: (0..MAX_EVENTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Records that `seq` was sent at `ns`.
    pub fn mark(&self, seq: u64, ns: u64) {
        if let Some(slot) = self.sent.get(seq as usize) {
            slot.store(ns, Ordering::Release);
        }
    }

    /// When `seq` was sent, if it was.
    pub fn sent_at(&self, seq: u64) -> Option<u64> {
        let ns = self.sent.get(seq as usize)?.load(Ordering::Acquire);
        (ns != 0).then_some(ns)
    }
}

/// Latency histograms in microseconds, sharded.
pub struct Latencies {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Latencies {
    /// Empty histograms (1 µs to 120 s, 3 significant digits).
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect(),
        }
    }

    /// Adds a subscriber's buffered samples (microseconds) to shard `hint % SHARDS`.
    pub fn flush(&self, hint: usize, samples: &mut Vec<u32>) {
        if samples.is_empty() {
            return;
        }
        let mut h = self.shards[hint % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for &us in samples.iter() {
            h.saturating_record(u64::from(us).clamp(1, MAX_MICROS));
        }
        samples.clear();
    }

    /// All shards merged.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in &self.shards {
            let h = shard.lock().unwrap_or_else(|p| p.into_inner());
            // Same bounds: adding cannot fail.
            let _ = all.add(&*h);
        }
        all
    }
}

fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

/// The percentiles the report shows, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    /// Reads them from a histogram of microseconds (all zero when empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}
