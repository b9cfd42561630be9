//! `POST /.well-known/mercure`: Mercure publish, form-encoded.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;

use super::auth::{
    check_cookie_origin, find_token_for, identify_with_source, token_generation, TokenSource,
};
use super::error::ApiError;
use super::query::QueryPairs;
use super::AppState;
use crate::auth::Generation;
use crate::hub::EventDraft;
use crate::store::Published;

const FORM: &str = "application/x-www-form-urlencoded";

/// The publish route: [`publish`], its refusals answered in the form of the generation
/// the presented token speaks (RFC 6750 for a Mercure 1.0 access token; a publish request
/// has no other sign of its generation: its form fields are the same in both).
pub async fn publish_route(
    state: State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let generation = find_token_for(&headers, &QueryPairs::default(), Generation::V0)
        .ok()
        .flatten()
        .map_or(Generation::V0, |(token, _)| token_generation(&token));
    publish(state, headers, body)
        .await
        .map_err(|e| e.in_form(generation))
}

/// Publishes one update; answers `200 text/plain` with its ID.
pub async fn publish(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    require_content_type(&headers, FORM)?;
    let no_query = QueryPairs::default();
    let (identity, source) = identify_with_source(&app.auth, &headers, &no_query)?
        .ok_or_else(|| ApiError::from(crate::auth::AuthError::Missing))?;
    if source == TokenSource::Cookie {
        check_cookie_origin(&app.config.server.publish_origins, &headers)?;
    }
    let mut draft = parse_form(&body)?;
    if identity.generation == Generation::V1 {
        mercure_1_form(&body, &mut draft)?;
    }
    if let Some(topic) = draft
        .topics
        .iter()
        .find(|t| crate::hub::presence::is_reserved(t))
    {
        return Err(ApiError::bad_request(
            "topic",
            format!("topic {topic:?} is reserved: topics under /.well-known/mercure/ are the hub's own (subscription events); publishers cannot use them"),
        ));
    }
    if let Some(topic) = draft
        .topics
        .iter()
        .find(|t| !identity.publish.iter().any(|s| s.matches(t)))
    {
        let claim = match identity.generation {
            Generation::V0 => "mercure.publish claim",
            Generation::V1 => "publish authorization_details",
        };
        return Err(ApiError::Forbidden(format!(
            "the token's {claim} does not cover topic {topic:?}"
        )));
    }
    // A retry of an update still retained answers its ID again and publishes nothing;
    // the same ID with other content is a conflict (409).
    let published = app.store.publish(draft).await?;
    let id = published.id().to_string();
    match published {
        Published::New(_) => {
            tracing::debug!(subject = identity.subject.as_deref().unwrap_or("-"), %id, "published")
        }
        Published::Repeated(_) => {
            tracing::debug!(subject = identity.subject.as_deref().unwrap_or("-"), %id, "repeated publish: already retained, nothing published")
        }
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        id,
    ))
}

/// The Mercure 1.0 reading of a publish form, for a 1.0 access token: the `private` field
/// marks the update private whatever its value (`private=off` too), and a publisher's
/// `id` cannot start with `#` (1.0 keeps those for hub-generated IDs).
fn mercure_1_form(body: &[u8], draft: &mut EventDraft) -> Result<(), ApiError> {
    for (key, value) in form_urlencoded::parse(body) {
        match key.as_ref() {
            "private" => draft.private = true,
            "id" if value.starts_with('#') => {
                return Err(ApiError::bad_request(
                    "id",
                    "an event id cannot start with # (Mercure 1.0)",
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks the media type (parameters such as `charset` are allowed).
pub fn require_content_type(headers: &HeaderMap, expected: &'static str) -> Result<(), ApiError> {
    let actual = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    if actual.as_deref() == Some(expected) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(expected))
    }
}

/// Reads the Mercure publish fields: `topic` (one or more), `data`, `private`, `id`,
/// `type`, `retry`.
pub fn parse_form(body: &[u8]) -> Result<EventDraft, ApiError> {
    let mut topics = Vec::new();
    let mut data = String::new();
    let mut private = false;
    let mut id = None;
    let mut event_type = None;
    let mut retry = None;
    for (key, value) in form_urlencoded::parse(body) {
        match key.as_ref() {
            "topic" => {
                if value.is_empty() {
                    return Err(ApiError::bad_request("topic", "a topic cannot be empty"));
                }
                topics.push(value.into_owned());
            }
            "data" => data = value.into_owned(),
            "private" => private = !matches!(value.as_ref(), "false" | "off" | "0"),
            "id" => {
                let value = single_line("id", value.into_owned())?;
                if value.contains('\0') {
                    // EventSource clients ignore such an `id:` and would resume from the
                    // previous one after a reconnection.
                    return Err(ApiError::bad_request(
                        "id",
                        "an event id cannot contain a NUL character",
                    ));
                }
                id = Some(value);
            }
            "type" => event_type = Some(single_line("type", value.into_owned())?),
            "retry" => {
                retry = Some(value.parse::<u64>().map_err(|_| {
                    ApiError::bad_request("retry", "retry must be a whole number of milliseconds")
                })?)
            }
            _ => {}
        }
    }
    if topics.is_empty() {
        return Err(ApiError::bad_request(
            "topic",
            "at least one `topic` field is required",
        ));
    }
    let mut draft = EventDraft::new(topics, data).private(private);
    if let Some(id) = id {
        if id.is_empty() {
            return Err(ApiError::bad_request("id", "an event id cannot be empty"));
        }
        if id == "earliest" {
            return Err(ApiError::bad_request(
                "id",
                "\"earliest\" is reserved for resuming",
            ));
        }
        draft = draft.with_id(id);
    }
    if let Some(t) = event_type.filter(|t| !t.is_empty()) {
        draft = draft.with_type(t);
    }
    draft.retry = retry;
    Ok(draft)
}

fn single_line(field: &str, value: String) -> Result<String, ApiError> {
    if value.contains(['\n', '\r']) {
        Err(ApiError::bad_request(
            field,
            format!("{field} cannot contain a line break"),
        ))
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repeated_topics_and_options() {
        let d =
            parse_form(b"topic=a&topic=b%2Fc&data=x%0Ay&private=on&id=42&type=t&retry=10").unwrap();
        assert_eq!(d.topics, ["a", "b/c"]);
        assert_eq!(d.data, "x\ny");
        assert!(d.private);
        assert_eq!(d.id, "42");
        assert_eq!(d.event_type.as_deref(), Some("t"));
        assert_eq!(d.retry, Some(10));
    }

    #[test]
    fn mercure_1_reads_private_by_presence() {
        let mut draft = parse_form(b"topic=a&private=off").unwrap();
        assert!(!draft.private, "0.x reading");
        mercure_1_form(b"topic=a&private=off", &mut draft).unwrap();
        assert!(draft.private, "1.0 reading");
        let mut draft = parse_form(b"topic=a&private=").unwrap();
        mercure_1_form(b"topic=a&private=", &mut draft).unwrap();
        assert!(draft.private);
        let mut draft = parse_form(b"topic=a").unwrap();
        mercure_1_form(b"topic=a", &mut draft).unwrap();
        assert!(!draft.private);
        assert!(mercure_1_form(b"topic=a&id=%231", &mut draft).is_err());
    }

    #[test]
    fn refuses_bad_fields() {
        assert!(parse_form(b"data=x").is_err());
        assert!(parse_form(b"topic=a&retry=soon").is_err());
        assert!(parse_form(b"topic=a&id=a%0Ab").is_err());
        assert!(parse_form(b"topic=a&id=a%00b").is_err());
        assert!(parse_form(b"topic=").is_err());
    }
}
