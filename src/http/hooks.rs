//! `POST /hooks/grist/{source}` and `POST /hooks/hub/{source}`: webhooks in, events on
//! the bus, answered as soon as the events are on the bus.
//!
//! Checks, in order: the source exists and is of this kind (404), `Content-Type:
//! application/json` (415), the body fits `server.max_body_bytes` (413), credentials
//! (401), JSON syntax (400, with line and column), payload content (422, naming the row
//! and field; one bad row refuses the whole batch). Then the pipeline publishes (503 if
//! the bus refuses, nothing stored) and the answer is `200 {received, published,
//! unchanged, stale}`. Every request is counted in `relais_webhook_requests_total` and
//! logged on one line, without secrets.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::publish::require_content_type;
use super::query::QueryPairs;
use super::AppState;
use crate::config::{SourceConfig, SourceKind};
use crate::ingest::signature::WebhookSecret;
use crate::ingest::{diagpv, grist, IngestError, InputError, Source, Summary};

const JSON: &str = "application/json";

/// `POST /hooks/grist/{source}`: a Grist webhook (array of row objects).
pub async fn grist_hook(
    State(app): State<AppState>,
    Path(source): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(app, SourceKind::Grist, source, query, headers, body).await
}

/// `POST /hooks/hub/{source}`: DiagPV hub module updates (object or array).
pub async fn hub_hook(
    State(app): State<AppState>,
    Path(source): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(app, SourceKind::Hub, source, query, headers, body).await
}

/// What one request amounted to, for the log line.
struct Outcome {
    rows: usize,
    summary: Option<Summary>,
}

async fn handle(
    app: AppState,
    kind: SourceKind,
    name: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let config = app
        .config
        .sources
        .get(&name)
        .filter(|s| s.kind == kind)
        .cloned();
    // Unknown names are not used as metric labels (unbounded cardinality).
    let label = if config.is_some() {
        name.as_str()
    } else {
        "unknown"
    }
    .to_string();
    let mut outcome = Outcome {
        rows: 0,
        summary: None,
    };
    let result = match config {
        None => Err(ApiError::NotFound(format!(
            "no {} source named {name:?} (see [sources] in the configuration)",
            kind_name(kind)
        ))),
        Some(config) => {
            receive(
                &app,
                kind,
                &name,
                &config,
                query,
                &headers,
                body,
                &mut outcome,
            )
            .await
        }
    };
    let status = match &result {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status(),
    };
    metrics::counter!(
        "relais_webhook_requests_total",
        "source" => label.clone(),
        "status" => status.as_u16().to_string(),
    )
    .increment(1);
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let s = outcome.summary.unwrap_or_default();
    match &result {
        Ok(_) => tracing::info!(
            source = %label,
            kind = %kind_name(kind),
            rows = outcome.rows,
            events = s.published,
            unchanged = s.unchanged,
            stale = s.stale,
            status = status.as_u16(),
            duration_ms = format!("{elapsed_ms:.2}"),
            "webhook"
        ),
        Err(e) => tracing::warn!(
            source = %label,
            kind = %kind_name(kind),
            rows = outcome.rows,
            events = 0,
            status = status.as_u16(),
            duration_ms = format!("{elapsed_ms:.2}"),
            error = %e,
            "webhook refused"
        ),
    }
    match result {
        Ok(summary) => (StatusCode::OK, Json(summary)).into_response(),
        Err(e) => e.into_response(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn receive(
    app: &AppState,
    kind: SourceKind,
    name: &str,
    config: &SourceConfig,
    query: Option<String>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    outcome: &mut Outcome,
) -> Result<Summary, ApiError> {
    require_content_type(headers, JSON)?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(app.config.server.max_body_bytes)
        } else {
            ApiError::BadRequest {
                field: None,
                message: format!("could not read the request body: {rejection}"),
            }
        }
    })?;
    let now = unix_now();
    let signed = match kind {
        SourceKind::Grist => {
            check_grist_credentials(config, headers, query.as_deref())?;
            None
        }
        SourceKind::Hub => check_hub_credentials(config, headers, &body, now)?,
    };
    if let Some((id, _)) = &signed {
        if app.webhook_ids.seen(name, id, now) {
            // Already stored: a sender that lost our answer retries with the same
            // webhook-id, and must get a success it can stop on; a replay by someone
            // else must change nothing. Both get 200 and an empty summary.
            tracing::info!(source = %name, webhook_id = %id, "webhook-id already received: nothing applied");
            return Ok(Summary::default());
        }
    }
    let value: Value = serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest {
        field: None,
        message: format!("the body is not valid JSON: {e}"),
    })?;
    let source = app
        .ingest
        .source(name)
        .ok_or_else(|| ApiError::NotFound(format!("no source named {name:?}")))?;
    let result = match source {
        Source::Grist(grist_source) => {
            let rows = grist::parse_rows(&value, &grist_source.mapping).map_err(unprocessable)?;
            outcome.rows = rows.len();
            app.ingest.ingest_grist(name, &rows).await
        }
        Source::Hub(_) => {
            let updates = diagpv::parse_updates(&value).map_err(unprocessable)?;
            outcome.rows = updates.len();
            app.ingest.ingest_hub(name, &updates).await
        }
    };
    let summary = result.map_err(|e| match e {
        IngestError::Store(e) => ApiError::from(e),
        IngestError::UnknownSource => ApiError::NotFound(format!("no source named {name:?}")),
    })?;
    outcome.summary = Some(summary);
    if let Some((id, timestamp)) = &signed {
        // Only once stored: a message refused with 503 must be deliverable again.
        app.webhook_ids.remember(name, id, *timestamp);
    }
    Ok(summary)
}

fn unprocessable(e: InputError) -> ApiError {
    ApiError::Unprocessable {
        field: Some(e.path.clone()),
        message: e.to_string(),
    }
}

fn kind_name(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Grist => "grist",
        SourceKind::Hub => "hub",
    }
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Compares two secrets in constant time (hashes first, so not even the length leaks).
fn same_secret(expected: &str, given: &[u8]) -> bool {
    let a = Sha256::digest(expected.as_bytes());
    let b = Sha256::digest(given);
    a.ct_eq(&b).into()
}

fn authorization_matches(config: &SourceConfig, headers: &HeaderMap) -> Option<bool> {
    let expected = config.authorization.as_ref()?;
    let given = headers.get(header::AUTHORIZATION)?;
    Some(same_secret(expected.expose(), given.as_bytes()))
}

/// Grist: the exact `Authorization` value configured (Grist's webhook `authorization`
/// field), or the `secret` query parameter (older Grist).
fn check_grist_credentials(
    config: &SourceConfig,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<(), ApiError> {
    let by_header = authorization_matches(config, headers);
    let query = QueryPairs::parse(query);
    let by_query = config
        .secret
        .as_ref()
        .zip(query.first("secret"))
        .map(|(expected, given)| same_secret(expected.expose(), given.as_bytes()));
    match (by_header, by_query) {
        (Some(true), _) | (_, Some(true)) => Ok(()),
        (None, None) => Err(ApiError::Unauthorized(
            "missing credentials: send the source's Authorization header value (the Grist webhook's `authorization` field) or its `secret` query parameter".into(),
        )),
        _ => Err(ApiError::Unauthorized(
            "the Authorization header or secret does not match this source".into(),
        )),
    }
}

/// Hub: a Standard Webhooks signature when `secret` is set (and the request carries
/// `webhook-*` headers, or no `authorization` is configured), else the exact
/// `Authorization` value.
///
/// Returns the message's `webhook-id` and timestamp when it was verified by signature.
fn check_hub_credentials(
    config: &SourceConfig,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<Option<(String, i64)>, ApiError> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signed = ["webhook-id", "webhook-timestamp", "webhook-signature"]
        .iter()
        .any(|h| headers.contains_key(*h));
    if let Some(secret) = &config.secret {
        if signed || config.authorization.is_none() {
            let key = WebhookSecret::parse(secret.expose())
                .map_err(|_| ApiError::Unavailable("the source's secret is not usable".into()))?;
            let id = get("webhook-id");
            let timestamp = key
                .verify(
                    id,
                    get("webhook-timestamp"),
                    get("webhook-signature"),
                    body,
                    now,
                )
                .map_err(|e| ApiError::Unauthorized(format!("webhook signature refused: {e}")))?;
            return Ok(id.map(|id| (id.to_string(), timestamp)));
        }
    }
    match authorization_matches(config, headers) {
        Some(true) => Ok(None),
        Some(false) => Err(ApiError::Unauthorized(
            "the Authorization header does not match this source".into(),
        )),
        None => Err(ApiError::Unauthorized(
            "missing credentials: sign with Standard Webhooks headers or send the source's Authorization header".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use axum::http::HeaderValue;

    fn source(toml_text: &str) -> SourceConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn grist_credentials() {
        let c = source("kind = \"grist\"\nauthorization = \"Bearer tok\"\nsecret = \"qs\"");
        let mut h = HeaderMap::new();
        assert!(check_grist_credentials(&c, &h, None).is_err());
        assert!(check_grist_credentials(&c, &h, Some("secret=qs")).is_ok());
        assert!(check_grist_credentials(&c, &h, Some("secret=nope")).is_err());
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tok"),
        );
        assert!(check_grist_credentials(&c, &h, None).is_ok());
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("tok"));
        assert!(check_grist_credentials(&c, &h, None).is_err());
    }

    #[test]
    fn hub_credentials() {
        let mut c = source("kind = \"hub\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"");
        let key = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = b"{}";
        let mut h = HeaderMap::new();
        assert!(check_hub_credentials(&c, &h, body, 1000).is_err());
        h.insert("webhook-id", HeaderValue::from_static("msg_1"));
        h.insert("webhook-timestamp", HeaderValue::from_static("1000"));
        let sig = key.sign("msg_1", 1000, body);
        h.insert("webhook-signature", HeaderValue::from_str(&sig).unwrap());
        assert!(check_hub_credentials(&c, &h, body, 1010).is_ok());
        assert!(check_hub_credentials(&c, &h, b"{ }", 1010).is_err());
        assert!(check_hub_credentials(&c, &h, body, 1400).is_err());
        c.authorization = Some(Secret::new("Bearer hub"));
        let mut plain = HeaderMap::new();
        plain.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer hub"),
        );
        assert!(check_hub_credentials(&c, &plain, body, 0).is_ok());
        plain.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer no"));
        assert!(check_hub_credentials(&c, &plain, body, 0).is_err());
    }
}
