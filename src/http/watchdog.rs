//! What closes connections served by hyper: the write timeout and token expiry of their
//! streams, and (through [`ConnectionControl::idle_for`]) the idle deadline of a connection
//! with no request in flight.
//!
//! On relais' own stream path the writer sees every blocked write and cuts it (see
//! [`super::serve`]). A stream served by hyper (HTTP/2, or a subscription that is not the
//! first request of its connection) is only a response body: hyper polls it when it can
//! send, and stops polling it while the socket (or, over HTTP/2, the stream's flow-control
//! window) takes nothing. A body that is not polled cannot notice anything, so each such
//! stream gets a small watchdog task beside it:
//!
//! - the body records when it handed a frame to hyper and was not asked for the next one
//!   yet (it is *blocked*);
//! - a stream blocked longer than `server.write_timeout`, or still blocked when its token
//!   expires, closes its connection through the connection's [`ConnectionControl`] (the
//!   connection's task then drops hyper's connection, its socket and the stream, which
//!   unregisters from the hub). hyper has no way to reset one HTTP/2 stream from outside,
//!   so the whole connection goes, as a stalled socket would take it anyway.
//!
//! While a stream is blocked its events wait in its bounded hub queue
//! (`hub.subscriber_queue_bytes`), never in hyper's buffers.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::subscribe::{EndReason, StreamEnd};

/// How long a stream may stay blocked once its token has expired: enough for a write in
/// progress on a reading client to finish, far less than the write timeout.
const EXPIRED_GRACE: Duration = Duration::from_secs(1);

/// The handle a hyper-served connection gives its requests (as a request extension):
/// cancelling it closes the connection. It also counts the connection's requests in
/// flight, so that a connection without any (an HTTP/2 client that answers pings but
/// sends nothing) can be closed after `server.keepalive_timeout`.
#[derive(Debug, Clone)]
pub struct ConnectionControl {
    close: CancellationToken,
    activity: Arc<std::sync::Mutex<Activity>>,
}

/// Requests in flight on a connection, and since when it has had none.
#[derive(Debug)]
struct Activity {
    open: usize,
    idle_since: Instant,
}

impl Default for ConnectionControl {
    fn default() -> Self {
        Self {
            close: CancellationToken::new(),
            activity: Arc::new(std::sync::Mutex::new(Activity {
                open: 0,
                idle_since: Instant::now(),
            })),
        }
    }
}

impl ConnectionControl {
    /// A handle for a new connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves when a stream of the connection asked for it to be closed.
    pub async fn closed(&self) {
        self.close.cancelled().await
    }

    /// Counts a request in flight until the returned guard is dropped (keep it in the
    /// response body, which hyper drops once the response is sent or reset).
    pub fn request_started(&self) -> InFlight {
        self.activity().open += 1;
        InFlight(self.activity.clone())
    }

    /// Resolves once the connection has had no request in flight for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let next = {
                let activity = self.activity();
                match activity.open {
                    0 => activity.idle_since + idle,
                    _ => Instant::now() + idle,
                }
            };
            if Instant::now() >= next {
                return;
            }
            tokio::time::sleep_until(next).await;
        }
    }

    fn activity(&self) -> std::sync::MutexGuard<'_, Activity> {
        // A poisoned lock only means a panic elsewhere; the counts are still usable.
        self.activity.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A request in flight on a connection (see [`ConnectionControl::request_started`]).
#[derive(Debug)]
pub struct InFlight(Arc<std::sync::Mutex<Activity>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut activity = self.0.lock().unwrap_or_else(|e| e.into_inner());
        activity.open = activity.open.saturating_sub(1);
        if activity.open == 0 {
            activity.idle_since = Instant::now();
        }
    }
}

/// A response body that counts as a request in flight until hyper drops it.
pub struct Tracked {
    inner: axum::body::Body,
    _in_flight: InFlight,
}

impl Tracked {
    /// `inner`, counted by `in_flight`.
    pub fn new(inner: axum::body::Body, in_flight: InFlight) -> Self {
        Self {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// What a guarded body and its watchdog share.
struct Blocked {
    /// When the stream was started: the origin of `since`.
    origin: Instant,
    /// Nanoseconds after `origin` (plus one) at which the body handed over a frame and was
    /// not polled again; 0 while it is not blocked.
    since: AtomicU64,
    /// Cancelled when the body is dropped (the stream ended or the connection closed).
    done: CancellationToken,
}

impl Blocked {
    fn mark(&self) {
        let nanos = self.origin.elapsed().as_nanos() as u64;
        self.since.store(nanos.saturating_add(1), Ordering::Relaxed);
    }

    fn clear(&self) {
        self.since.store(0, Ordering::Relaxed);
    }

    fn since(&self) -> Option<Instant> {
        match self.since.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.origin + Duration::from_nanos(n - 1)),
        }
    }
}

/// A stream's body for hyper, watched: see the module documentation.
pub struct Guarded<S> {
    inner: Pin<Box<S>>,
    blocked: Arc<Blocked>,
    expires_at: Option<Instant>,
    end: StreamEnd,
}

impl<S> Guarded<S> {
    /// Watches `inner` on the connection of `control`: spawns its watchdog, which ends
    /// when the body is dropped.
    pub fn new(
        inner: S,
        control: ConnectionControl,
        write_timeout: Duration,
        expires_at: Option<Instant>,
        end: StreamEnd,
    ) -> Self {
        let blocked = Arc::new(Blocked {
            origin: Instant::now(),
            since: AtomicU64::new(0),
            done: CancellationToken::new(),
        });
        tokio::spawn(watch(
            blocked.clone(),
            control,
            write_timeout,
            expires_at,
            end.clone(),
        ));
        Self {
            inner: Box::pin(inner),
            blocked,
            expires_at,
            end,
        }
    }
}

impl<S: Stream<Item = Bytes>> Stream for Guarded<S> {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.blocked.clear();
        // The stream checks expiry between live events; this also covers a long replay.
        if self.expires_at.is_some_and(|at| Instant::now() >= at) {
            self.end.set(EndReason::TokenExpired);
            return Poll::Ready(None);
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(frame)) => {
                self.blocked.mark();
                Poll::Ready(Some(Ok(frame)))
            }
            other => other.map(|end| end.map(Ok)),
        }
    }
}

impl<S> Drop for Guarded<S> {
    fn drop(&mut self) {
        self.blocked.done.cancel();
    }
}

/// Closes the connection when the stream stays blocked longer than `write_timeout`, or
/// past its token's expiry (after [`EXPIRED_GRACE`]); ends with the stream.
async fn watch(
    blocked: Arc<Blocked>,
    control: ConnectionControl,
    write_timeout: Duration,
    expires_at: Option<Instant>,
    end: StreamEnd,
) {
    loop {
        let now = Instant::now();
        let expired = expires_at.is_some_and(|at| now >= at);
        let allowed = if expired {
            write_timeout.min(EXPIRED_GRACE)
        } else {
            write_timeout
        };
        let next = match blocked.since() {
            Some(since) if now >= since + allowed => {
                end.set(if expired {
                    EndReason::TokenExpired
                } else {
                    EndReason::WriteTimeout
                });
                control.close.cancel();
                return;
            }
            Some(since) => since + allowed,
            None => now + allowed,
        };
        // Wake at expiry too: a stream blocked then is given only the grace.
        let next = match expires_at {
            Some(at) if !expired => next.min(at),
            _ => next,
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = blocked.done.cancelled() => return,
            _ = control.close.cancelled() => return,
        }
    }
}
