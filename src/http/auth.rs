//! Finding the token of a request. Mercure 0.x requests: the `Authorization: Bearer`
//! header, else the `authorization` query parameter, else the `mercureAuthorization`
//! cookie (else the 1.0 cookie). Mercure 1.0 requests: the header, else the
//! `__Secure-mercure_access_token` cookie; never the query string (RFC 9700: URLs leak
//! into logs and `Referer`).

use axum::http::{header, HeaderMap};

use super::error::ApiError;
use super::query::QueryPairs;
use crate::auth::{AuthError, Authenticator, Generation, Identity};

/// Cookie that browsers' `EventSource` carries the token in (Mercure 0.x).
pub const COOKIE_NAME: &str = "mercureAuthorization";

/// Cookie that browsers' `EventSource` carries the access token in (Mercure 1.0).
pub const ACCESS_TOKEN_COOKIE: &str = "__Secure-mercure_access_token";

/// Where a request's token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer` header (a browser never adds it on its own).
    Header,
    /// `authorization` query parameter.
    Query,
    /// `mercureAuthorization` or `__Secure-mercure_access_token` cookie (sent by
    /// browsers with cross-site requests too).
    Cookie,
}

/// The raw token of a request, if any.
pub fn find_token(headers: &HeaderMap, query: &QueryPairs) -> Result<Option<String>, ApiError> {
    Ok(find_token_and_source(headers, query)?.map(|(token, _)| token))
}

/// The raw token of a request and where it was found, by the transports of the
/// generation its query speaks (see [`QueryPairs::selectors`]).
pub fn find_token_and_source(
    headers: &HeaderMap,
    query: &QueryPairs,
) -> Result<Option<(String, TokenSource)>, ApiError> {
    let generation = query.selectors().map(|(g, _)| g).unwrap_or(Generation::V1);
    find_token_for(headers, query, generation)
}

/// The raw token of a request of this generation and where it was found.
pub fn find_token_for(
    headers: &HeaderMap,
    query: &QueryPairs,
    generation: Generation,
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
    let cookies: &[&str] = match generation {
        Generation::V0 => {
            if let Some(token) = query.first("authorization") {
                return Ok(Some((token.trim().to_string(), TokenSource::Query)));
            }
            &[COOKIE_NAME, ACCESS_TOKEN_COOKIE]
        }
        Generation::V1 => &[ACCESS_TOKEN_COOKIE],
    };
    for wanted in cookies {
        if let Some(token) = cookie(headers, wanted) {
            return Ok(Some((token.trim().to_string(), TokenSource::Cookie)));
        }
    }
    Ok(None)
}

fn cookie<'a>(headers: &'a HeaderMap, wanted: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|text| text.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == wanted)
        .map(|(_, token)| token)
}

/// The `Host` a request was sent to (its authority: host and port).
pub fn request_host(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::HOST).and_then(|v| v.to_str().ok())
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
    let generation = query.selectors().map(|(g, _)| g).unwrap_or(Generation::V1);
    identify_for(auth, headers, query, generation)
}

/// Verifies the token of a request of this generation, if it has one, and says where it
/// was found. A 1.0 token is checked against the resource identifier of the request's
/// `Host` when none is configured.
pub fn identify_for(
    auth: &Authenticator,
    headers: &HeaderMap,
    query: &QueryPairs,
    generation: Generation,
) -> Result<Option<(Identity, TokenSource)>, ApiError> {
    match find_token_for(headers, query, generation)? {
        None => Ok(None),
        Some((token, _)) if token.is_empty() => Err(AuthError::Missing.into()),
        Some((token, source)) => Ok(Some((
            auth.verify_for_host(&token, request_host(headers))?,
            source,
        ))),
    }
}

/// The generation a token says it speaks, read from its header without verifying it
/// (`typ: at+jwt` is 1.0): it only chooses the form of an answer, never a permission.
pub fn token_generation(token: &str) -> Generation {
    match jsonwebtoken::decode_header(token) {
        Ok(h)
            if h.typ.as_deref().is_some_and(|t| {
                t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
            }) =>
        {
            Generation::V1
        }
        _ => Generation::V0,
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
            "a publish authenticated by a cookie ({COOKIE_NAME} or {ACCESS_TOKEN_COOKIE}) is refused from origin {o:?}: not in server.publish_origins (send the token in the Authorization header instead)"
        ))),
        None => Err(ApiError::Forbidden(format!(
            "a publish authenticated by a cookie ({COOKIE_NAME} or {ACCESS_TOKEN_COOKIE}) needs an Origin header listed in server.publish_origins (or send the token in the Authorization header)"
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

    fn found(headers: &HeaderMap, query: &str) -> Option<(String, TokenSource)> {
        find_token_and_source(headers, &QueryPairs::parse(Some(query))).unwrap()
    }

    #[test]
    fn each_generation_has_its_transports() {
        let cookies = with(
            header::COOKIE,
            "a=b; __Secure-mercure_access_token=new; mercureAuthorization=old",
        );
        // 0.x: query before cookies, the 0.x cookie before the 1.0 one.
        assert_eq!(found(&cookies, "topic=a&authorization=q").unwrap().0, "q");
        assert_eq!(
            found(&cookies, "topic=a").unwrap(),
            ("old".into(), TokenSource::Cookie)
        );
        let only_new = with(header::COOKIE, "__Secure-mercure_access_token=new");
        assert_eq!(found(&only_new, "topic=a").unwrap().0, "new");
        // 1.0: never the query string nor the 0.x cookie.
        assert_eq!(found(&cookies, "match=a&authorization=q").unwrap().0, "new");
        let only_old = with(header::COOKIE, "mercureAuthorization=old");
        assert_eq!(
            found(&only_old, "match=a&authorization=q&access_token=q"),
            None
        );
        // The header wins for both.
        let mut both = cookies.clone();
        both.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer h"));
        assert_eq!(
            found(&both, "match=a").unwrap(),
            ("h".into(), TokenSource::Header)
        );
        assert_eq!(found(&both, "topic=a&authorization=q").unwrap().0, "h");
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
