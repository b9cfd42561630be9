//! `GET /state?topic=SELECTOR[&topic=...]`: the current state of every record whose
//! topics match (its last event), with the `lastEventID` to stream from afterwards.
//!
//! Same selectors, token transports, private-update rules and errors as subscribing
//! (`subscribe::authorize` is shared): 400 malformed, 401 bad token, 403 selector not
//! allowed.

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::value::RawValue;

use super::error::ApiError;
use super::query::QueryPairs;
use super::subscribe::authorize;
use super::AppState;
use crate::store::SnapshotRecord;

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "lastEventID")]
    last_event_id: &'a str,
    records: Vec<Record<'a>>,
}

#[derive(Serialize)]
struct Record<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: Option<&'a str>,
    topics: &'a [String],
    /// The event data as published: embedded as JSON when it is JSON, else as a string.
    data: Data<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Data<'a> {
    Json(&'a RawValue),
    Text(&'a str),
}

fn record(r: &SnapshotRecord) -> Record<'_> {
    let data = match serde_json::from_str::<&RawValue>(&r.data) {
        Ok(raw) => Data::Json(raw),
        Err(_) => Data::Text(&r.data),
    };
    Record {
        id: &r.id,
        event_type: r.event_type.as_deref(),
        topics: &r.topics,
        data,
    }
}

/// Answers the snapshot as `application/json`.
pub async fn state(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = QueryPairs::parse(raw.as_deref());
    let subscription = authorize(&app, &headers, &query)?.subscription;
    let snapshot = app.store.snapshot(&subscription).await?;
    let body = Body {
        last_event_id: &snapshot.last_event_id,
        records: snapshot.records.iter().map(record).collect(),
    };
    let json = serde_json::to_vec(&body).map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        json,
    )
        .into_response())
}
