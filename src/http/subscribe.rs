//! `GET /.well-known/mercure`: the Server-Sent Events stream.
//!
//! The stream first sends `retry:` and the replayed history, then live events. Live
//! events that are already queued when the subscriber's task wakes are written together
//! (coalescing), each frame being the bytes encoded once at commit time.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::Stream;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::MissedTickBehavior;

use super::auth::identify;
use super::error::ApiError;
use super::query::QueryPairs;
use super::AppState;
use crate::hub::{sse, Event, ResumeFrom, Selector, Subscription};

/// Largest chunk a subscriber's task hands to the socket at once.
const MAX_CHUNK: usize = 64 * 1024;

/// A subscription that passed every check, ready to stream.
pub struct Prepared {
    /// The stream's bytes: `retry:`, the replay, then live events and heartbeats.
    pub stream: Pin<Box<dyn Stream<Item = Result<Bytes, Infallible>> + Send>>,
    /// The asked ID was not retained: answer with `Last-Event-ID: earliest`.
    pub history_gap: bool,
}

/// The response headers of a stream (besides CORS), for both serving paths.
pub fn stream_headers(history_gap: bool) -> Vec<(&'static str, &'static str)> {
    let mut headers = vec![
        ("content-type", "text/event-stream"),
        (
            "cache-control",
            "private, no-cache, no-store, must-revalidate, max-age=0",
        ),
        ("x-accel-buffering", "no"),
    ];
    if history_gap {
        headers.push(("last-event-id", "earliest"));
    }
    headers
}

/// Opens an SSE stream for the request's topic selectors.
pub async fn subscribe(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let prepared = prepare(app, &headers, raw.as_deref()).await?;
    let mut response = Response::new(Body::from_stream(prepared.stream));
    *response.status_mut() = StatusCode::OK;
    let h = response.headers_mut();
    for (name, value) in stream_headers(prepared.history_gap) {
        h.insert(name, HeaderValue::from_static(value));
    }
    Ok(response)
}

/// The checks shared by subscribing and `/state`: the request's selectors, its token
/// (any transport) and the token's claims. Returns the subscription, the token's subject
/// and expiry, and the parsed query.
pub fn authorize(
    app: &AppState,
    headers: &HeaderMap,
    raw_query: Option<&str>,
) -> Result<(Subscription, Option<String>, Option<SystemTime>), ApiError> {
    let query = QueryPairs::parse(raw_query);
    let selectors = query
        .all("topic")
        .map(|t| Selector::parse(t).map_err(|e| ApiError::bad_request("topic", e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    if selectors.is_empty() {
        return Err(ApiError::bad_request(
            "topic",
            "at least one `topic` query parameter (a topic, a URI template or *) is required",
        ));
    }
    let identity = identify(&app.auth, headers, &query)?;
    let (claims, subject, expires_at) = match identity {
        Some(id) => {
            if let Some(denied) = selectors
                .iter()
                .find(|s| !id.subscribe.iter().any(|c| c.permits(s)))
            {
                return Err(ApiError::Forbidden(format!(
                    "the token's mercure.subscribe claim does not allow topic selector {:?}",
                    denied.as_str()
                )));
            }
            (Some(id.subscribe), id.subject, id.expires_at)
        }
        None if app.config.hub.allow_anonymous => (None, None, None),
        None => return Err(crate::auth::AuthError::Missing.into()),
    };
    Ok((Subscription { selectors, claims }, subject, expires_at))
}

/// Checks a subscribe request (selectors, token, claims, resume point) and attaches it to
/// the hub. Used by the handler above and by the lean SSE path of [`super::serve`].
pub async fn prepare(
    app: AppState,
    headers: &HeaderMap,
    raw_query: Option<&str>,
) -> Result<Prepared, ApiError> {
    let (subscription, subject, expires_at) = authorize(&app, headers, raw_query)?;
    let query = QueryPairs::parse(raw_query);
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or_else(|| query.first("lastEventID"))
        .or_else(|| query.first("Last-Event-ID"));
    let resume = ResumeFrom::parse(resume);
    if let ResumeFrom::After(id) = &resume {
        if !app.hub.retains(id) {
            // Another instance may have sent it moments ago: let this one catch up.
            app.store.catch_up().await;
        }
    }

    let attach = app.hub.attach(&resume);
    let gap = attach.history_gap;

    let mut preamble = BytesMut::new();
    preamble.extend_from_slice(&sse::encode_retry(app.config.server.retry_ms));
    let mut replay = Batch::default();
    for event in &attach.replay {
        replay.offer(&subscription, event);
    }
    let replayed = replay.count;
    if let Some((bytes, _, _)) = replay.finish() {
        preamble.extend_from_slice(&bytes);
    }

    let session = Session::start(subject, &subscription, replayed, gap);
    let stream = event_stream(
        app,
        subscription,
        attach.live,
        preamble.freeze(),
        expires_at,
        session,
    );

    Ok(Prepared {
        stream: Box::pin(stream),
        history_gap: gap,
    })
}

/// Why a stream ended, for the session log line.
#[derive(Debug, Clone, Copy)]
enum EndReason {
    ClientGone,
    Lagged,
    TokenExpired,
    Shutdown,
    HubClosed,
}

/// One subscriber session: counts it in the metrics and logs one line when it ends.
struct Session {
    subject: Option<String>,
    selectors: String,
    started: Instant,
    delivered: u64,
    end: EndReason,
}

impl Session {
    fn start(subject: Option<String>, sub: &Subscription, replayed: u64, gap: bool) -> Self {
        metrics::gauge!("relais_subscribers_connected").increment(1.0);
        let selectors = sub
            .selectors
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        tracing::debug!(subject = subject.as_deref().unwrap_or("-"), %selectors, replayed, history_gap = gap, "subscriber connected");
        Self {
            subject,
            selectors,
            started: Instant::now(),
            delivered: replayed,
            end: EndReason::ClientGone,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        metrics::gauge!("relais_subscribers_connected").decrement(1.0);
        if matches!(self.end, EndReason::Lagged) {
            metrics::counter!("relais_slow_subscriber_disconnects_total").increment(1);
        }
        tracing::info!(
            subject = self.subject.as_deref().unwrap_or("-"),
            selectors = %self.selectors,
            delivered = self.delivered,
            duration_ms = self.started.elapsed().as_millis() as u64,
            end = ?self.end,
            "subscriber session ended"
        );
    }
}

fn event_stream(
    app: AppState,
    subscription: Subscription,
    mut live: tokio::sync::broadcast::Receiver<Arc<Event>>,
    preamble: Bytes,
    expires_at: Option<SystemTime>,
    mut session: Session,
) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    let heartbeat_every = app.config.server.heartbeat;
    let shutdown = app.shutdown.clone();
    let latency = metrics::histogram!("relais_delivery_latency_seconds");
    async_stream::stream! {
        yield Ok(preamble);
        let deadline = expires_at
            .map(|at| at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
            .map(|left| tokio::time::Instant::now() + left);
        let expiry = tokio::time::sleep_until(
            deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)),
        );
        tokio::pin!(expiry);
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat_every, heartbeat_every);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let heartbeat_frame = sse::encode_comment("");
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => { session.end = EndReason::Shutdown; break; }
                _ = &mut expiry, if deadline.is_some() => { session.end = EndReason::TokenExpired; break; }
                received = live.recv() => {
                    let first = match received {
                        Ok(event) => event,
                        Err(RecvError::Lagged(_)) => { session.end = EndReason::Lagged; break; }
                        Err(RecvError::Closed) => { session.end = EndReason::HubClosed; break; }
                    };
                    let mut batch = Batch::default();
                    batch.offer(&subscription, &first);
                    let mut lagged = false;
                    while batch.len() < MAX_CHUNK {
                        match live.try_recv() {
                            Ok(event) => batch.offer(&subscription, &event),
                            Err(TryRecvError::Lagged(_)) => { lagged = true; break; }
                            Err(_) => break,
                        }
                    }
                    if lagged {
                        session.end = EndReason::Lagged;
                        break;
                    }
                    if let Some((bytes, count, oldest)) = batch.finish() {
                        latency.record(oldest.elapsed().as_secs_f64());
                        session.delivered += count;
                        heartbeat.reset();
                        yield Ok(bytes);
                    }
                }
                _ = heartbeat.tick() => yield Ok(heartbeat_frame.clone()),
            }
        }
        if matches!(session.end, EndReason::Lagged) {
            tracing::warn!(subject = session.subject.as_deref().unwrap_or("-"), "subscriber too slow: disconnected; it will resume from its last event ID");
        }
    }
}

/// The frames one wake-up of a subscriber writes at once.
///
/// Delivery counters are shared by all subscribers; to keep their cache line quiet, a
/// batch adds to them once per run of events with the same counter (a burst of one
/// source's rows is one run), not once per event.
#[derive(Default)]
struct Batch {
    single: Option<Bytes>,
    joined: BytesMut,
    count: u64,
    oldest: Option<Instant>,
    run: Option<(Arc<Event>, u64)>,
}

impl Batch {
    fn offer(&mut self, subscription: &Subscription, event: &Arc<Event>) {
        if !subscription.wants(event) {
            return;
        }
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
        self.oldest.get_or_insert(event.committed_at);
        match self.single.take() {
            None if self.joined.is_empty() => self.single = Some(event.frame.clone()),
            None => self.joined.extend_from_slice(&event.frame),
            Some(first) => {
                self.joined.extend_from_slice(&first);
                self.joined.extend_from_slice(&event.frame);
            }
        }
    }

    fn len(&self) -> usize {
        self.single.as_ref().map_or(self.joined.len(), Bytes::len)
    }

    fn finish(mut self) -> Option<(Bytes, u64, Instant)> {
        if let Some((first, n)) = self.run.take() {
            first.delivered.increment(n);
        }
        let oldest = self.oldest?;
        let bytes = match self.single {
            Some(b) => b,
            None => self.joined.freeze(),
        };
        Some((bytes, self.count, oldest))
    }
}
