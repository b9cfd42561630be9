//! A subscriber's feed: what its stream writes next, as lists of shared frames.
//!
//! The feed first hands out `retry:` and the replayed history (filtered by the
//! subscription, in chunks of at most [`MAX_CHUNK`] bytes as the socket takes them,
//! never built whole), then live events from the subscriber's own queue in the hub
//! (which holds only the events it matches; what is queued when the task wakes goes out
//! together), and a heartbeat comment when nothing was sent for `server.heartbeat`. It
//! ends on shutdown, at the token's expiry, or when the subscriber fell behind its queue
//! bounds.
//!
//! It is polled, not an `async` block: a connection holding an idle stream keeps this
//! struct and nothing else (no generator state sized for every await point, no channel
//! between a producer and the writer), which is what lets one process hold tens of
//! thousands of idle subscribers in a few KiB each. Both serving paths use it: the lean
//! path writes its frames to the socket itself (`super::lean_stream`), hyper's path reads
//! it as a [`Stream`] ([`FeedStream`]).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Future, Stream};
use tokio::time::Sleep;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::subscribe::{EndReason, StreamEnd};
use crate::hub::presence::Guard;
use crate::hub::{sse, Event, Live, Subscription};

/// Largest chunk (sum of frame sizes) a subscriber's task hands to the socket at once;
/// with the hub's queue bound it is what one connection can hold.
pub const MAX_CHUNK: usize = 256 * 1024;

/// One write to the socket: shared frames, in order.
pub type Frames = Vec<Bytes>;

/// What a subscriber's stream writes next; see the module documentation.
pub struct Feed {
    /// `retry:` and the history to replay, until they are out (then freed).
    replay: Option<Box<Replay>>,
    /// The subscriber's queue in the hub; dropping it unregisters the subscriber.
    live: Live,
    /// Events taken from the queue and not yet handed out (a take larger than a chunk).
    taken: VecDeque<Arc<Event>>,
    /// One timer for the next heartbeat and the token's expiry, whichever comes first:
    /// when it fires before the expiry, it is the heartbeat's.
    timer: Pin<Box<Sleep>>,
    heartbeat_every: Duration,
    expires_at: Option<tokio::time::Instant>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Announces the end of the subscriptions when the feed is dropped.
    _presence: Guard,
    /// Dropped last: its log line comes after the subscriber left the hub.
    session: Session,
    ended: bool,
}

/// The start of a stream: `retry:`, then the retained events the subscription wants.
struct Replay {
    retry: Option<Bytes>,
    events: std::vec::IntoIter<Arc<Event>>,
    /// Live events come filtered by the hub; the replay is filtered here.
    filter: Subscription,
}

/// The delivery latency histogram (looked up once: a lookup allocates a handle).
fn latency() -> &'static metrics::Histogram {
    static LATENCY: std::sync::OnceLock<metrics::Histogram> = std::sync::OnceLock::new();
    LATENCY.get_or_init(|| metrics::histogram!("relais_delivery_latency_seconds"))
}

/// What a feed is made of (see [`Feed::new`]).
pub struct FeedParts {
    /// The subscription (filters the replay).
    pub subscription: Subscription,
    /// Retained events to replay, unfiltered, oldest first.
    pub replay: Vec<Arc<Event>>,
    /// The subscriber's queue in the hub.
    pub live: Live,
    /// `retry:` frame.
    pub retry: Bytes,
    /// `server.heartbeat`.
    pub heartbeat_every: Duration,
    /// When the token expires.
    pub expires_at: Option<tokio::time::Instant>,
    /// Cancelled on shutdown.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The subscriptions' presence, ended with the feed.
    pub presence: Guard,
    /// The session's log line.
    pub session: Session,
}

impl Feed {
    /// A feed starting with `retry:` and the replay.
    pub fn new(parts: FeedParts) -> Self {
        let now = tokio::time::Instant::now();
        let first = next_wake(now, parts.heartbeat_every, parts.expires_at);
        Self {
            replay: Some(Box::new(Replay {
                retry: Some(parts.retry),
                events: parts.replay.into_iter(),
                filter: parts.subscription,
            })),
            live: parts.live,
            taken: VecDeque::new(),
            timer: Box::pin(tokio::time::sleep_until(first)),
            heartbeat_every: parts.heartbeat_every,
            expires_at: parts.expires_at,
            shutdown: Box::pin(parts.shutdown.cancelled_owned()),
            _presence: parts.presence,
            session: parts.session,
            ended: false,
        }
    }

    /// Appends the next frames to write to `out`: `Ready(true)` when some were added,
    /// `Ready(false)` once the feed has ended (its reason recorded for the session).
    pub fn poll_fill(&mut self, cx: &mut Context<'_>, out: &mut Frames) -> Poll<bool> {
        if self.ended {
            return Poll::Ready(false);
        }
        let mut chunk = Chunk::default();
        let before = out.len();
        if let Some(replay) = &mut self.replay {
            if let Some(retry) = replay.retry.take() {
                chunk.bytes += retry.len();
                out.push(retry);
            }
            while chunk.bytes < MAX_CHUNK {
                let Some(event) = replay.events.next() else {
                    self.replay = None;
                    break;
                };
                if replay.filter.wants(&event) {
                    chunk.offer(&event, out);
                }
            }
            if out.len() > before {
                self.session.delivered += chunk.finish();
                return Poll::Ready(true);
            }
        }
        // In this order: shutdown, expiry, live events, heartbeat.
        if self.shutdown.as_mut().poll(cx).is_ready() {
            return self.end(EndReason::Shutdown);
        }
        let timer_fired = self.timer.as_mut().poll(cx).is_ready();
        let now = tokio::time::Instant::now();
        if timer_fired && self.expires_at.is_some_and(|at| now >= at) {
            return self.end(EndReason::TokenExpired);
        }
        if self.taken.is_empty() {
            if let Poll::Ready(Err(_)) = self.live.poll_take(cx, &mut self.taken) {
                return self.end(EndReason::Lagged);
            }
        }
        if !self.taken.is_empty() {
            while chunk.bytes < MAX_CHUNK {
                let Some(event) = self.taken.pop_front() else {
                    break;
                };
                chunk.offer(&event, out);
            }
            if self.taken.is_empty() && self.taken.capacity() > 1024 {
                self.taken = VecDeque::new();
            }
            if let Some(oldest) = chunk.oldest {
                latency().record(oldest.elapsed().as_secs_f64());
            }
            self.session.delivered += chunk.finish();
            self.rearm(now);
            return Poll::Ready(true);
        }
        if timer_fired {
            // Not the expiry (checked above), so the heartbeat.
            out.push(sse::heartbeat());
            self.rearm(now);
            return Poll::Ready(true);
        }
        Poll::Pending
    }

    /// When the token expires, if it does.
    pub fn expires_at(&self) -> Option<tokio::time::Instant> {
        self.expires_at
    }

    /// Something was sent at `now`: the next heartbeat is a period away.
    fn rearm(&mut self, now: tokio::time::Instant) {
        let at = next_wake(now, self.heartbeat_every, self.expires_at);
        self.timer.as_mut().reset(at);
    }

    fn end(&mut self, reason: EndReason) -> Poll<bool> {
        self.ended = true;
        self.session.end = reason;
        Poll::Ready(false)
    }
}

/// The feed's timer deadline after a send at `now`: the next heartbeat, or the token's
/// expiry if it comes first.
fn next_wake(
    now: tokio::time::Instant,
    heartbeat_every: Duration,
    expires_at: Option<tokio::time::Instant>,
) -> tokio::time::Instant {
    let heartbeat = now + heartbeat_every;
    expires_at.map_or(heartbeat, |at| at.min(heartbeat))
}

/// A feed read as a stream of frame lists (hyper's path).
pub struct FeedStream(pub Feed);

impl Stream for FeedStream {
    type Item = Frames;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Frames>> {
        let mut out = Frames::new();
        match self.0.poll_fill(cx, &mut out) {
            Poll::Ready(true) => Poll::Ready(Some(out)),
            Poll::Ready(false) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// One subscriber session: counts it in the metrics and logs one line when it ends.
pub struct Session {
    subject: Option<String>,
    selectors: String,
    started: Instant,
    delivered: u64,
    end: EndReason,
    /// Set by the writer when it ended the stream (takes precedence over `end`).
    writer_end: StreamEnd,
}

impl Session {
    /// Starts the session of `sub` (logged at debug level).
    pub fn start(
        subject: Option<String>,
        sub: &Subscription,
        gap: bool,
        writer_end: StreamEnd,
    ) -> Self {
        metrics::gauge!("relais_subscribers_connected").increment(1.0);
        let selectors = sub
            .selectors
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        tracing::debug!(subject = subject.as_deref().unwrap_or("-"), %selectors, history_gap = gap, "subscriber connected");
        Self {
            subject,
            selectors,
            started: Instant::now(),
            delivered: 0,
            end: EndReason::ClientGone,
            writer_end,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let end = self.writer_end.get().unwrap_or(self.end);
        metrics::gauge!("relais_subscribers_connected").decrement(1.0);
        match end {
            EndReason::Lagged => {
                metrics::counter!("relais_slow_subscriber_disconnects_total").increment(1);
                tracing::warn!(
                    subject = self.subject.as_deref().unwrap_or("-"),
                    "subscriber too slow: disconnected; it will resume from its last event ID"
                );
            }
            EndReason::WriteTimeout => {
                metrics::counter!("relais_stalled_subscriber_disconnects_total").increment(1);
                tracing::warn!(subject = self.subject.as_deref().unwrap_or("-"), "subscriber stopped reading: write timed out, disconnected; it will resume from its last event ID");
            }
            _ => {}
        }
        tracing::info!(
            subject = self.subject.as_deref().unwrap_or("-"),
            selectors = %self.selectors,
            delivered = self.delivered,
            duration_ms = self.started.elapsed().as_millis() as u64,
            end = ?end,
            "subscriber session ended"
        );
    }
}

/// Counts what one fill adds: the frames are shared `Bytes` handles, never copies.
///
/// Delivery counters are shared by all subscribers; to keep their cache line quiet, a
/// chunk adds to them once per run of events with the same counter (a burst of one
/// source's rows is one run), not once per event.
#[derive(Default)]
struct Chunk {
    bytes: usize,
    count: u64,
    oldest: Option<Instant>,
    run: Option<(Arc<Event>, u64)>,
}

impl Chunk {
    /// Adds an event this subscriber wants.
    fn offer(&mut self, event: &Arc<Event>, out: &mut Frames) {
        match &mut self.run {
            Some((first, n))
                if first.source == event.source && first.event_type == event.event_type =>
            {
                *n += 1
            }
            run => {
                if let Some((first, n)) = run.replace((event.clone(), 1)) {
                    first.delivered.increment(n);
                }
            }
        }
        self.count += 1;
        self.bytes += event.frame.len();
        self.oldest.get_or_insert(event.committed_at);
        out.push(event.frame.clone());
    }

    /// Adds the last run to its counter; the number of events added.
    fn finish(&mut self) -> u64 {
        if let Some((first, n)) = self.run.take() {
            first.delivered.increment(n);
        }
        self.count
    }
}
