//! API errors: every refusal has a status, a machine-readable code, the field at fault
//! when there is one, and a sentence saying why.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::auth::AuthError;
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

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. } => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Unprocessable { .. } => "unprocessable",
            ApiError::Unavailable(_) => "unavailable",
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            ApiError::BadRequest { field, .. } | ApiError::Unprocessable { field, .. } => {
                field.as_deref()
            }
            _ => None,
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::Unauthorized(e.to_string())
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
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"relais\""),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
