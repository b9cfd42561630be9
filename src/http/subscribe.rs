//! `GET /.well-known/mercure`: the Server-Sent Events stream.
//!
//! A request is checked (selectors, token, claims, resume point) and attached to the hub
//! by [`prepare`]; what the stream then writes comes from its [`Feed`]: `retry:` and the
//! replayed history, then live events and heartbeats, as lists of frames encoded once
//! at commit time and shared by every subscriber. The lean path of [`super::serve`]
//! writes them to the socket itself; the handler here gives them to hyper.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use futures::StreamExt;

use super::auth::identify_for;
use super::error::ApiError;
use super::feed::{Feed, FeedParts, FeedStream, Session};
use super::query::{QueryPairs, SelectorParam};
use super::watchdog::{ConnectionControl, Guarded};
use super::AppState;
use crate::auth::Generation;
use crate::hub::{sse, ResumeFrom, Selector, Subscription};

/// A subscription that passed every check, ready to stream.
pub struct Prepared {
    /// The stream's frames: `retry:`, the replay, then live events and heartbeats.
    pub feed: Feed,
    /// The asked ID was not retained: answer with `Last-Event-ID: earliest`.
    pub history_gap: bool,
    /// Mercure 1.0 requests that asked to resume: the `Mercure-Last-Event-ID` answer (the
    /// asked ID when it is retained, else `earliest`).
    pub resumed_from: Option<String>,
    /// Longest one write may stay blocked (`server.write_timeout`).
    pub write_timeout: Duration,
    /// Where the writer records why it ended the stream, for the session log line.
    pub end: StreamEnd,
}

/// Why a stream ended, for the session log line and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EndReason {
    /// The client went away.
    ClientGone = 0,
    /// The subscriber fell behind its queue bounds.
    Lagged = 1,
    /// Its token expired.
    TokenExpired = 2,
    /// relais is shutting down.
    Shutdown = 3,
    /// A write stayed blocked longer than `server.write_timeout`.
    WriteTimeout = 4,
}

impl EndReason {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => EndReason::Lagged,
            2 => EndReason::TokenExpired,
            3 => EndReason::Shutdown,
            4 => EndReason::WriteTimeout,
            _ => EndReason::ClientGone,
        }
    }
}

/// The end reason a stream's writer may set (unset: the stream decides).
#[derive(Debug, Clone, Default)]
pub struct StreamEnd(Arc<AtomicU8>);

impl StreamEnd {
    const UNSET: u8 = u8::MAX;

    fn new() -> Self {
        Self(Arc::new(AtomicU8::new(Self::UNSET)))
    }

    /// Records why the writer ended the stream.
    pub fn set(&self, reason: EndReason) {
        self.0.store(reason as u8, Ordering::Relaxed);
    }

    /// The reason the writer recorded, if any.
    pub fn get(&self) -> Option<EndReason> {
        match self.0.load(Ordering::Relaxed) {
            Self::UNSET => None,
            v => Some(EndReason::from_u8(v)),
        }
    }
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
///
/// On a connection served by hyper (see [`super::serve`]) the body is watched: a stream
/// that stays blocked longer than `server.write_timeout`, or past its token's expiry,
/// closes its connection ([`super::watchdog`]).
pub async fn subscribe(
    State(app): State<AppState>,
    control: Option<Extension<ConnectionControl>>,
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
    let Prepared {
        feed,
        write_timeout,
        end,
        ..
    } = prepared;
    // The writer closes the stream at the token's expiry, even while a write is blocked.
    let expires_at = feed.expires_at();
    let frames = FeedStream(feed).flat_map(futures::stream::iter);
    let body = match control {
        Some(Extension(control)) => Body::from_stream(Guarded::new(
            frames,
            control,
            write_timeout,
            expires_at,
            end,
        )),
        None => Body::from_stream(frames.map(Ok::<_, Infallible>)),
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().extend(headers);
    Ok(response)
}

/// A request that passed the checks shared by subscribing and `/state`.
pub struct Authorized {
    /// The selectors asked for and the token's claims.
    pub subscription: Subscription,
    /// The token's subject, for the session log line.
    pub subject: Option<String>,
    /// When the token expires.
    pub expires_at: Option<SystemTime>,
    /// The protocol generation of the request (its error form and resume headers).
    pub generation: Generation,
    /// The token's `mercure.payload` (presence).
    pub payload: Option<serde_json::Value>,
}

/// The checks shared by subscribing and `/state`: the request's selectors (0.x `topic`,
/// 1.0 `match` / `match_urlpattern`), its token (any transport of its generation) and the
/// token's claims. Errors come in the request's generation's form.
pub fn authorize(
    app: &AppState,
    headers: &HeaderMap,
    query: &QueryPairs,
) -> Result<Authorized, ApiError> {
    let (generation, params) = query.selectors()?;
    let Checked {
        selectors,
        claims,
        subject,
        expires_at,
        payload,
    } = check(app, headers, query, generation, &params).map_err(|e| e.in_form(generation))?;
    Ok(Authorized {
        subscription: Subscription { selectors, claims },
        subject,
        expires_at,
        generation,
        payload,
    })
}

/// Checks a subscribe request (selectors, token, claims, resume point) and attaches it to
/// the hub. Used by the handler above and by the lean SSE path of [`super::serve`].
pub async fn prepare(
    app: AppState,
    headers: &HeaderMap,
    raw_query: Option<&str>,
) -> Result<Prepared, ApiError> {
    let query = QueryPairs::parse(raw_query);
    let Authorized {
        subscription,
        subject,
        expires_at,
        generation,
        payload,
    } = authorize(&app, headers, &query)?;
    let resume = resume_point(headers, &query, generation);
    if let ResumeFrom::After(id) = &resume {
        if !app.hub.retains(id) {
            // Another instance may have sent it moments ago: let this one catch up.
            app.store.catch_up().await;
        }
    }

    let subscriber = app.hub.subscribe(subscription.clone(), &resume);
    // Announced once the subscriber is in the hub; ended when the stream is dropped,
    // however it ends.
    let presence = app
        .presence
        .start(&subscription.selectors, form(generation), payload.as_ref());
    let gap = subscriber.history_gap;
    let resumed_from = (generation == Generation::V1)
        .then(|| resume_answer(&resume, gap))
        .flatten();
    let end = StreamEnd::new();
    let session = Session::start(subject, &subscription, gap, end.clone());
    let expires_at = expires_at
        .map(|at| {
            at.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        })
        .map(|left| tokio::time::Instant::now() + left);
    let write_timeout = app.config.server.write_timeout;
    let crate::hub::Subscriber { replay, live, .. } = subscriber;
    let feed = Feed::new(FeedParts {
        subscription,
        replay,
        live,
        retry: sse::encode_retry(app.config.server.retry_ms),
        heartbeat_every: app.config.server.heartbeat,
        expires_at,
        shutdown: app.shutdown.clone(),
        presence,
        session,
    });

    Ok(Prepared {
        feed,
        history_gap: gap,
        resumed_from,
        write_timeout,
        end,
    })
}

/// What the checks of a subscribe request let through.
struct Checked {
    selectors: Vec<Selector>,
    claims: Option<Vec<Selector>>,
    subject: Option<String>,
    expires_at: Option<SystemTime>,
    payload: Option<serde_json::Value>,
}

/// The presence IRI form of a request's generation.
pub fn form(generation: Generation) -> crate::hub::presence::Form {
    match generation {
        Generation::V0 => crate::hub::presence::Form::V0,
        Generation::V1 => crate::hub::presence::Form::V1,
    }
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
                payload: id.payload,
            })
        }
        None => Ok(Checked {
            selectors,
            claims: None,
            subject: None,
            expires_at: None,
            payload: None,
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
