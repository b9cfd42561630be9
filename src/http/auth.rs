//! Finding the token of a request: the `Authorization: Bearer` header, else the
//! `authorization` query parameter, else the `mercureAuthorization` cookie.

use axum::http::{header, HeaderMap};

use super::error::ApiError;
use super::query::QueryPairs;
use crate::auth::{AuthError, Authenticator, Identity};

/// Cookie that browsers' `EventSource` carries the token in.
pub const COOKIE_NAME: &str = "mercureAuthorization";

/// Where a request's token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer` header (a browser never adds it on its own).
    Header,
    /// `authorization` query parameter.
    Query,
    /// `mercureAuthorization` cookie (sent by browsers with cross-site requests too).
    Cookie,
}

/// The raw token of a request, if any.
pub fn find_token(headers: &HeaderMap, query: &QueryPairs) -> Result<Option<String>, ApiError> {
    Ok(find_token_and_source(headers, query)?.map(|(token, _)| token))
}

/// The raw token of a request and where it was found.
pub fn find_token_and_source(
    headers: &HeaderMap,
    query: &QueryPairs,
) -> Result<Option<(String, TokenSource)>, ApiError> {
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
        return Ok(Some((token.trim().to_string(), TokenSource::Header)));
    }
    if let Some(token) = query.first("authorization") {
        return Ok(Some((token.trim().to_string(), TokenSource::Query)));
    }
    for value in headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((name, token)) = pair.trim().split_once('=') {
                if name == COOKIE_NAME {
                    return Ok(Some((token.trim().to_string(), TokenSource::Cookie)));
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
    Ok(identify_with_source(auth, headers, query)?.map(|(id, _)| id))
}

/// Verifies the request's token, if it has one, and says where it was found.
pub fn identify_with_source(
    auth: &Authenticator,
    headers: &HeaderMap,
    query: &QueryPairs,
) -> Result<Option<(Identity, TokenSource)>, ApiError> {
    match find_token_and_source(headers, query)? {
        None => Ok(None),
        Some((token, _)) if token.is_empty() => Err(AuthError::Missing.into()),
        Some((token, source)) => Ok(Some((auth.verify(&token)?, source))),
    }
}

/// CSRF protection for cookie-authenticated writes (as Mercure does): the request's
/// `Origin` (else the origin of its `Referer`) must be one of `allowed`
/// (`server.publish_origins`). A browser attaches the cookie to a form posted from any
/// site; it cannot forge `Origin`.
pub fn check_cookie_origin(allowed: &[String], headers: &HeaderMap) -> Result<(), ApiError> {
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            headers
                .get(header::REFERER)
                .and_then(|v| v.to_str().ok())
                .and_then(origin_of)
        });
    match origin {
        Some(o) if allowed.iter().any(|a| a.eq_ignore_ascii_case(&o)) => Ok(()),
        Some(o) => Err(ApiError::Forbidden(format!(
            "a publish authenticated by the {COOKIE_NAME} cookie is refused from origin {o:?}: not in server.publish_origins (send the token in the Authorization header instead)"
        ))),
        None => Err(ApiError::Forbidden(format!(
            "a publish authenticated by the {COOKIE_NAME} cookie needs an Origin header listed in server.publish_origins (or send the token in the Authorization header)"
        ))),
    }
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit('@').next()?;
    (!host.is_empty()).then(|| format!("{scheme}://{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn cookie_origin_must_be_listed() {
        let allowed = vec!["https://app.example.org".to_string()];
        assert!(
            check_cookie_origin(&allowed, &with(header::ORIGIN, "https://app.example.org")).is_ok()
        );
        assert!(
            check_cookie_origin(&allowed, &with(header::ORIGIN, "https://evil.example")).is_err()
        );
        assert!(check_cookie_origin(&allowed, &HeaderMap::new()).is_err());
        assert!(check_cookie_origin(
            &allowed,
            &with(header::REFERER, "https://app.example.org/page?x=1")
        )
        .is_ok());
        assert!(check_cookie_origin(
            &allowed,
            &with(header::REFERER, "https://app.example.org.evil.example/")
        )
        .is_err());
        assert!(check_cookie_origin(&[], &with(header::ORIGIN, "null")).is_err());
    }
}
