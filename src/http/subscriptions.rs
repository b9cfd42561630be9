//! `GET /.well-known/mercure/subscriptions[/{topic}[/{subscriber}]]` (Mercure 1.0 form:
//! `.../subscriptions/{match_type}/{match}/{subscriber}`): the active subscriptions, as
//! `application/ld+json`, with the `lastEventID` they are consistent with.
//!
//! Authorization follows the rules of subscribing: a token is required, its subscribe
//! claim must match the requested URL's path (else 403), and only subscriptions whose
//! IRI the claim matches are listed (each is a private update on its IRI). A path naming
//! one subscription answers that subscription, or 404 when it is not active.

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::value::RawValue;

use super::auth::{find_token_for, identify_for, token_generation};
use super::error::ApiError;
use super::query::QueryPairs;
use super::AppState;
use crate::auth::{AuthError, Generation};
use crate::hub::presence::{self, CONTEXT, SUBSCRIPTIONS_PATH};

const LD_JSON: &str = "application/ld+json";

#[derive(Serialize)]
struct Collection<'a> {
    #[serde(rename = "@context")]
    context: &'static str,
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "lastEventID")]
    last_event_id: &'a str,
    subscriptions: Vec<&'a RawValue>,
}

/// Answers the subscriptions under the requested path.
pub async fn subscriptions(
    State(app): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = QueryPairs::parse(raw.as_deref());
    // The token's own generation decides its transports and error form.
    let generation = find_token_for(&headers, &query, Generation::V0)
        .ok()
        .flatten()
        .map_or(Generation::V0, |(token, _)| token_generation(&token));
    answer(&app, &headers, &query, uri.path(), generation).map_err(|e| e.in_form(generation))
}

fn answer(
    app: &AppState,
    headers: &HeaderMap,
    query: &QueryPairs,
    path: &str,
    generation: Generation,
) -> Result<Response, ApiError> {
    if !app.presence.enabled() {
        return Err(ApiError::NotFound(
            "presence is switched off on this hub (hub.subscriptions = false)".into(),
        ));
    }
    let identity = identify_for(&app.auth, headers, query, generation)?
        .map(|(id, _)| id)
        .ok_or(AuthError::Missing)?;
    let path = path.trim_end_matches('/');
    let asked = presence::segments(path)
        .ok_or_else(|| ApiError::NotFound(format!("no such path {path:?}")))?;
    if !identity.subscribe.iter().any(|c| c.matches(path)) {
        return Err(ApiError::Forbidden(format!(
            "the token's subscribe claim does not match {path:?}"
        )));
    }
    let (found, last_event_id) = app.hub.active_subscriptions(|active| {
        let segments = active.segments();
        let under =
            segments.len() >= asked.len() && segments.iter().zip(&asked).all(|(a, b)| a == b);
        let visible = identity.subscribe.iter().any(|c| c.matches(active.iri));
        (under && visible).then(|| (segments.len() == asked.len(), active.data.to_string()))
    });
    // A path as long as a subscription's IRI names that subscription.
    if let Some((_, data)) = found.iter().find(|(exact, _)| *exact) {
        let mut doc: serde_json::Value = serde_json::from_str(data).map_err(|e| {
            ApiError::Unavailable(format!("a stored subscription is not JSON: {e}"))
        })?;
        doc["lastEventID"] = serde_json::Value::String(last_event_id);
        return Ok(ld_json(doc.to_string()));
    }
    if asked
        .last()
        .is_some_and(|s| s.starts_with("urn:uuid:") || s.starts_with("urn:"))
    {
        return Err(ApiError::NotFound(format!(
            "no active subscription {path:?}"
        )));
    }
    let docs = found
        .iter()
        .map(|(_, data)| serde_json::from_str::<&RawValue>(data))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::Unavailable(format!("a stored subscription is not JSON: {e}")))?;
    let body = Collection {
        context: CONTEXT,
        id: if path.is_empty() {
            SUBSCRIPTIONS_PATH
        } else {
            path
        },
        kind: "Subscriptions",
        last_event_id: &last_event_id,
        subscriptions: docs,
    };
    let json = serde_json::to_string(&body).map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(ld_json(json))
}

fn ld_json(body: String) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, LD_JSON),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}
