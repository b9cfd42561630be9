//! Finding the token of a request: the `Authorization: Bearer` header, else the
//! `authorization` query parameter, else the `mercureAuthorization` cookie.

use axum::http::{header, HeaderMap};

use super::error::ApiError;
use super::query::QueryPairs;
use crate::auth::{AuthError, Authenticator, Identity};

/// Cookie that browsers' `EventSource` carries the token in.
pub const COOKIE_NAME: &str = "mercureAuthorization";

/// The raw token of a request, if any.
pub fn find_token(headers: &HeaderMap, query: &QueryPairs) -> Result<Option<String>, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let text = value
            .to_str()
            .map_err(|_| ApiError::Unauthorized("the Authorization header is not text".into()))?;
        let token = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
            .ok_or_else(|| {
                ApiError::Unauthorized("the Authorization header must be `Bearer <token>`".into())
            })?;
        return Ok(Some(token.trim().to_string()));
    }
    if let Some(token) = query.first("authorization") {
        return Ok(Some(token.trim().to_string()));
    }
    for value in headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((name, token)) = pair.trim().split_once('=') {
                if name == COOKIE_NAME {
                    return Ok(Some(token.trim().to_string()));
                }
            }
        }
    }
    Ok(None)
}

/// Verifies the request's token, if it has one.
pub fn identify(
    auth: &Authenticator,
    headers: &HeaderMap,
    query: &QueryPairs,
) -> Result<Option<Identity>, ApiError> {
    match find_token(headers, query)? {
        None => Ok(None),
        Some(token) if token.is_empty() => Err(AuthError::Missing.into()),
        Some(token) => Ok(Some(auth.verify(&token)?)),
    }
}
