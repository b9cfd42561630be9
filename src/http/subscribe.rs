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

use super::auth::identify_for;
use super::error::ApiError;
use super::query::{QueryPairs, SelectorParam};
use super::AppState;
use crate::auth::Generation;
use crate::hub::{sse, Event, ResumeFrom, Selector, Subscription};

/// Largest chunk a subscriber's task hands to the socket at once.
const MAX_CHUNK: usize = 64 * 1024;

/// A subscription that passed every check, ready to stream.
pub struct Prepared {
    /// The stream's bytes: `retry:`, the replay, then live events and heartbeats.
    pub stream: Pin<Box<dyn Stream<Item = Result<Bytes, Infallible>> + Send>>,
    /// The asked ID was not retained: answer with `Last-Event-ID: earliest`.
    pub history_gap: bool,
    /// Mercure 1.0 requests that asked to resume: the `Mercure-Last-Event-ID` answer (the
    /// asked ID when it is retained, else `earliest`).
    pub resumed_from: Option<String>,
}

/// The response headers of a stream (besides CORS), for both serving paths: 0.x requests
/// get `Last-Event-ID: earliest` after a history gap, 1.0 requests that asked to resume
/// get `Mercure-Last-Event-ID`.
pub fn stream_headers(prepared: &Prepared) -> Vec<(&'static str, &str)> {
    let mut headers = vec![
        ("content-type", "text/event-stream"),
        (
            "cache-control",
            "private, no-cache, no-store, must-revalidate, max-age=0",
        ),
        ("x-accel-buffering", "no"),
    ];
    match &prepared.resumed_from {
        Some(id) => headers.push(("mercure-last-event-id", id.as_str())),
        None if prepared.history_gap => headers.push(("last-event-id", "earliest")),
        None => {}
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
    let mut headers = HeaderMap::new();
    for (name, value) in stream_headers(&prepared) {
        // Values are checked header-safe when the request is prepared.
        if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
            headers.insert(name, value);
        }
    }
    let mut response = Response::new(Body::from_stream(prepared.stream));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().extend(headers);
    Ok(response)
}

/// Checks a subscribe request (selectors, token, claims, resume point) and attaches it to
/// the hub. Used by the handler above and by the lean SSE path of [`super::serve`].
pub async fn prepare(
    app: AppState,
    headers: &HeaderMap,
    raw_query: Option<&str>,
) -> Result<Prepared, ApiError> {
    let query = QueryPairs::parse(raw_query);
    let (generation, params) = query.selectors()?;
    let Checked {
        selectors,
        claims,
        subject,
        expires_at,
    } = check(&app, headers, &query, generation, &params).map_err(|e| e.in_form(generation))?;
    let resume = resume_point(headers, &query, generation);
    if let ResumeFrom::After(id) = &resume {
        if !app.hub.retains(id) {
            // Another instance may have sent it moments ago: let this one catch up.
            app.bus.catch_up().await;
        }
    }

    let subscription = Subscription { selectors, claims };
    let attach = app.hub.attach(&resume);
    let gap = attach.history_gap;
    let resumed_from = (generation == Generation::V1)
        .then(|| resume_answer(&resume, gap))
        .flatten();

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
        resumed_from,
    })
}

/// What the checks of a subscribe request let through.
struct Checked {
    selectors: Vec<Selector>,
    claims: Option<Vec<Selector>>,
    subject: Option<String>,
    expires_at: Option<SystemTime>,
}

/// Authenticates the request, then reads its selectors and checks them against the
/// token's grants. Authentication comes first: nothing costly (selector compilation,
/// history) is done for a request without a valid token.
fn check(
    app: &AppState,
    headers: &HeaderMap,
    query: &QueryPairs,
    generation: Generation,
    params: &[(SelectorParam, &str)],
) -> Result<Checked, ApiError> {
    let identity = identify_for(&app.auth, headers, query, generation)?.map(|(id, _)| id);
    if identity.is_none() && !app.config.hub.allow_anonymous {
        return Err(crate::auth::AuthError::Missing.into());
    }
    let selectors = parse_selectors(&app.config.hub, params, generation)?;
    match identity {
        Some(id) => {
            if let Some(denied) = selectors
                .iter()
                .find(|s| !id.subscribe.iter().any(|c| c.permits(s)))
            {
                let claim = match id.generation {
                    Generation::V0 => "mercure.subscribe claim",
                    Generation::V1 => "subscribe authorization_details",
                };
                return Err(ApiError::Forbidden(format!(
                    "the token's {claim} does not allow topic selector {:?}",
                    denied.as_str()
                )));
            }
            Ok(Checked {
                selectors,
                claims: Some(id.subscribe),
                subject: id.subject,
                expires_at: id.expires_at,
            })
        }
        None => Ok(Checked {
            selectors,
            claims: None,
            subject: None,
            expires_at: None,
        }),
    }
}

/// Where the stream starts: the `Last-Event-ID` header, else the query parameter
/// (`lastEventID` for 0.x, `last_event_id` for 1.0; each generation's spelling is
/// accepted from the other too, and the older `Last-Event-ID` parameter last).
fn resume_point(headers: &HeaderMap, query: &QueryPairs, generation: Generation) -> ResumeFrom {
    let names: [&str; 3] = match generation {
        Generation::V0 => ["lastEventID", "last_event_id", "Last-Event-ID"],
        Generation::V1 => ["last_event_id", "lastEventID", "Last-Event-ID"],
    };
    let asked = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
        .or_else(|| names.iter().find_map(|name| query.first(name)));
    ResumeFrom::parse(asked)
}

/// The `Mercure-Last-Event-ID` answer to a 1.0 request that asked to resume: the asked
/// ID when it is retained (and can be sent as a header value), else `earliest`.
fn resume_answer(resume: &ResumeFrom, gap: bool) -> Option<String> {
    match resume {
        ResumeFrom::Now => None,
        ResumeFrom::After(id) if !gap && header_safe(id) => Some(id.clone()),
        ResumeFrom::After(_) | ResumeFrom::Earliest => Some("earliest".into()),
    }
}

/// Whether a text can be sent as a header value as is (visible ASCII, spaces, tabs and
/// UTF-8 bytes; no control character that could end the head).
fn header_safe(text: &str) -> bool {
    text.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// The request's selectors, within `hub.max_selectors` and `hub.max_selector_bytes`
/// (checked before anything is compiled): `topic` for 0.x (an exact topic, a URI template
/// or `*`), `match` (exact) and `match_urlpattern` (URL Pattern) for 1.0.
fn parse_selectors(
    limits: &crate::config::HubConfig,
    params: &[(SelectorParam, &str)],
    generation: Generation,
) -> Result<Vec<Selector>, ApiError> {
    let field = match generation {
        Generation::V0 => "topic",
        Generation::V1 => "match",
    };
    if params.is_empty() {
        return Err(ApiError::bad_request(
            field,
            match generation {
                Generation::V0 => "at least one `topic` query parameter (a topic, a URI template or *) is required",
                Generation::V1 => "at least one `match` (exact topic) or `match_urlpattern` (URL pattern) query parameter is required",
            },
        ));
    }
    if params.len() > limits.max_selectors {
        return Err(ApiError::bad_request(
            field,
            format!(
                "{} topic selectors given; at most {} per subscription (hub.max_selectors)",
                params.len(),
                limits.max_selectors
            ),
        ));
    }
    if let Some((_, long)) = params
        .iter()
        .find(|(_, t)| t.len() > limits.max_selector_bytes)
    {
        return Err(ApiError::bad_request(
            field,
            format!(
                "a topic selector of {} bytes; at most {} bytes each (hub.max_selector_bytes)",
                long.len(),
                limits.max_selector_bytes
            ),
        ));
    }
    params
        .iter()
        .map(|(kind, text)| {
            let (name, parsed) = match kind {
                SelectorParam::Topic => ("topic", Selector::parse(text)),
                SelectorParam::Exact => ("match", Selector::exact(text)),
                SelectorParam::UrlPattern => ("match_urlpattern", Selector::url_pattern(text)),
            };
            parsed.map_err(|e| ApiError::bad_request(name, e.to_string()))
        })
        .collect()
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
