//! API errors: every refusal has a status, a machine-readable code, the field at fault
//! when there is one, and a sentence saying why.
//!
//! Requests of Mercure 1.0 clients get the same body, plus the answer RFC 6750 defines:
//! `WWW-Authenticate: Bearer` with `error="invalid_token"` (401, a token was presented),
//! `error="insufficient_scope"` (403) or `error="invalid_request"` (400), and no error
//! code when no token was presented; the body's `error` is that code too.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::auth::{AuthError, Generation};
use crate::store::StoreError;

/// A refused request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed.
    #[error("{message}")]
    BadRequest {
        /// The parameter or field at fault.
        field: Option<String>,
        /// Why.
        message: String,
    },
    /// 401: missing or invalid token, bad secret or signature.
    #[error("{0}")]
    Unauthorized(String),
    /// 401: no token was presented where one is required.
    #[error("{0}")]
    NoToken(String),
    /// 403: the token does not cover what was asked.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such route or source.
    #[error("{0}")]
    NotFound(String),
    /// 409: the publisher's event ID is already used.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is larger than `server.max_body_bytes`.
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 415: wrong content type.
    #[error("Content-Type must be {0}")]
    UnsupportedMediaType(&'static str),
    /// 422: well-formed but missing or ill-typed content.
    #[error("{message}")]
    Unprocessable {
        /// Where (e.g. `rows[3].Statut`).
        field: Option<String>,
        /// Why.
        message: String,
    },
    /// 503: the store is unavailable; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// 408: the request body did not arrive within `server.body_timeout`.
    #[error("the request body did not arrive within {0:?} (server.body_timeout)")]
    RequestTimeout(std::time::Duration),
    /// The same refusal, answered to a Mercure 1.0 client (RFC 6750 form).
    #[error("{0}")]
    Bearer(Box<ApiError>),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    status: u16,
    error: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// A 400 naming the field at fault.
    pub fn bad_request(field: &str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// This refusal in the form of the request's generation: unchanged for 0.x, the
    /// RFC 6750 form for 1.0.
    pub fn in_form(self, generation: Generation) -> Self {
        match (generation, self) {
            (Generation::V1, e @ ApiError::Bearer(_)) => e,
            (Generation::V1, e) => ApiError::Bearer(Box::new(e)),
            (Generation::V0, e) => e,
        }
    }

    /// The RFC 6750 error code of a refusal, if it has one (`None` for a 401 without a
    /// token, which RFC 6750 answers with a bare challenge).
    fn bearer_code(&self) -> Option<&'static str> {
        match self {
            ApiError::Unauthorized(_) => Some("invalid_token"),
            ApiError::Forbidden(_) => Some("insufficient_scope"),
            ApiError::BadRequest { .. } => Some("invalid_request"),
            _ => None,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Bearer(inner) => inner.status(),
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) | ApiError::NoToken(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::Bearer(inner) => inner.bearer_code().unwrap_or_else(|| inner.code()),
            ApiError::BadRequest { .. } => "bad_request",
            ApiError::Unauthorized(_) | ApiError::NoToken(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Unprocessable { .. } => "unprocessable",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::RequestTimeout(_) => "request_timeout",
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            ApiError::Bearer(inner) => inner.field(),
            ApiError::BadRequest { field, .. } | ApiError::Unprocessable { field, .. } => {
                field.as_deref()
            }
            _ => None,
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing => ApiError::NoToken(e.to_string()),
            e => ApiError::Unauthorized(e.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => ApiError::Unavailable(format!("{e}; retry later")),
            StoreError::Conflict(_) => ApiError::Conflict(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody {
            status: status.as_u16(),
            error: self.code(),
            message: self.to_string(),
            field: self.field(),
        };
        let challenge = match &self {
            ApiError::Bearer(inner) => inner.bearer_code().map(|code| {
                format!(
                    "Bearer realm=\"relais\", error=\"{code}\", error_description=\"{}\"",
                    description(&inner.to_string())
                )
            }),
            _ => None,
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        } else if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"relais\""),
            );
        }
        if status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still come: the connection cannot be reused.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// An RFC 6750 `error_description`: only the characters it allows (printable ASCII but
/// `"` and `\\`), others replaced, so a message can never break the header.
fn description(message: &str) -> String {
    message
        .chars()
        .map(|c| match c {
            ' ' | '!' | '#'..='[' | ']'..='~' => c,
            _ => '\'',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(e: ApiError) -> (u16, Option<String>, serde_json::Value) {
        let response = e.into_response();
        let status = response.status().as_u16();
        let header = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap().to_string());
        let body =
            futures::executor::block_on(axum::body::to_bytes(response.into_body(), 4096)).unwrap();
        (status, header, serde_json::from_slice(&body).unwrap())
    }

    #[test]
    fn mercure_1_refusals_follow_rfc_6750() {
        let v1 = |e: ApiError| challenge(e.in_form(Generation::V1));
        let (status, header, body) = v1(AuthError::Expired.into());
        assert_eq!(status, 401);
        let header = header.unwrap();
        assert!(
            header.starts_with("Bearer realm=\"relais\", error=\"invalid_token\""),
            "{header}"
        );
        assert_eq!(body["error"], "invalid_token");
        let (status, header, body) = v1(ApiError::Forbidden("no \"grant\"".into()));
        assert_eq!(status, 403);
        assert!(header
            .unwrap()
            .contains("error=\"insufficient_scope\", error_description=\"no 'grant'\""));
        assert_eq!(body["error"], "insufficient_scope");
        let (status, header, body) = v1(ApiError::bad_request("match", "bad"));
        assert_eq!(status, 400);
        assert!(header.unwrap().contains("error=\"invalid_request\""));
        assert_eq!(
            (body["error"].as_str(), body["field"].as_str()),
            (Some("invalid_request"), Some("match"))
        );
        // No token: a bare challenge, no error code.
        let (status, header, body) = v1(AuthError::Missing.into());
        assert_eq!(
            (status, header.as_deref()),
            (401, Some("Bearer realm=\"relais\""))
        );
        assert_eq!(body["error"], "unauthorized");
    }

    #[test]
    fn mercure_0_refusals_are_unchanged() {
        let (status, header, body) =
            challenge(ApiError::from(AuthError::Expired).in_form(Generation::V0));
        assert_eq!(
            (status, header.as_deref()),
            (401, Some("Bearer realm=\"relais\""))
        );
        assert_eq!(body["error"], "unauthorized");
        let (status, header, body) = challenge(ApiError::Forbidden("x".into()));
        assert_eq!((status, header), (403, None));
        assert_eq!(body["error"], "forbidden");
    }
}
