//! `GET /state?topic=SELECTOR[&topic=...]`: the current state of every record whose
//! topics match (its last event), with the `lastEventID` to stream from afterwards.
//!
//! Same selectors, token transports, private-update rules and errors as subscribing
//! (`subscribe::authorize` is shared): 400 malformed, 401 bad token, 403 selector not
//! allowed.

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::query::QueryPairs;
use super::subscribe::authorize;
use super::AppState;
use crate::store::Snapshot;

/// The answer's body: `{"lastEventID": ..., "records": [...]}`, written in one buffer
/// from the records' entries the store encoded once.
fn body(snapshot: &Snapshot) -> Vec<u8> {
    let id = serde_json::to_string(&snapshot.last_event_id).unwrap_or_default();
    let size = snapshot
        .records
        .iter()
        .map(|r| r.json.len() + 1)
        .sum::<usize>();
    let mut out = Vec::with_capacity(32 + id.len() + size);
    out.extend_from_slice(b"{\"lastEventID\":");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b",\"records\":[");
    for (i, r) in snapshot.records.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&r.json);
    }
    out.extend_from_slice(b"]}");
    out
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
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body(&snapshot),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::SnapshotRecord;

    #[test]
    fn the_body_is_the_snapshot_as_json() {
        let snapshot = Snapshot {
            last_event_id: "ev\"1".into(),
            records: vec![
                Arc::new(SnapshotRecord::new(
                    "a".into(),
                    Some("module".into()),
                    vec!["audits/t".into()],
                    r#"{"status":"dead"}"#.into(),
                    false,
                )),
                Arc::new(SnapshotRecord::new(
                    "b".into(),
                    None,
                    vec!["x".into()],
                    "plain \"text\"".into(),
                    false,
                )),
            ],
        };
        let parsed: serde_json::Value = serde_json::from_slice(&body(&snapshot)).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"lastEventID": "ev\"1", "records": [
                {"id": "a", "type": "module", "topics": ["audits/t"], "data": {"status": "dead"}},
                {"id": "b", "type": null, "topics": ["x"], "data": "plain \"text\""},
            ]})
        );
        let empty = Snapshot {
            last_event_id: "earliest".into(),
            records: vec![],
        };
        assert_eq!(body(&empty), br#"{"lastEventID":"earliest","records":[]}"#);
    }
}
