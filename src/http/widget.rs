//! `GET /widget/`: the supervisors' dashboard (also a Grist custom widget), served from
//! files embedded in the binary so a single `relais` needs nothing else on disk.
//!
//! Every answer carries a strict `Content-Security-Policy`: scripts, styles and
//! connections only from relais itself (the page's own origin), plus the Grist plugin API
//! script from `docs.getgrist.com`, which the page loads only when it runs framed inside
//! Grist. No inline script or style is allowed, so a record that smuggled markup into the
//! page still could not run anything. `frame-ancestors` lets only relais itself and the
//! origins of `server.cors_origins` (the Grist hosts) frame the page: any other page that
//! framed it would be taken for Grist and receive the token typed in the settings.
//! `Referrer-Policy: no-referrer` keeps a `?token=` of the page URL from leaking to other
//! sites; the page also removes it from the address bar, and the `/widget` redirect does
//! not copy it.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};

use super::AppState;

/// The dashboard page.
const INDEX_HTML: &str = include_str!("../../widget/index.html");
/// The dashboard's script (a plain ES module, no build step).
const WIDGET_JS: &str = include_str!("../../widget/widget.js");
/// The dashboard's style sheet.
const WIDGET_CSS: &str = include_str!("../../widget/widget.css");

/// The policy sent with every widget file.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; \
     script-src 'self' https://docs.getgrist.com; \
     style-src 'self'; \
     connect-src 'self'; \
     img-src 'self' data:; \
     base-uri 'none'; \
     form-action 'self'; \
     object-src 'none'";

/// Query parameters that carry credentials: never copied into a redirect.
const CREDENTIAL_PARAMS: &[&str] = &["token", "authorization", "access_token"];

/// `GET /widget`: redirects to `/widget/` so the page's relative URLs resolve, keeping
/// the query string except its credentials (a `?token=` would otherwise be copied into
/// one more URL, and one more history entry).
pub async fn redirect(uri: axum::http::Uri) -> Redirect {
    redirect_without_credentials(&uri, "/widget/")
}

/// A permanent redirect to `target` (a page's folder) with the query string of `uri`
/// minus its credentials.
pub fn redirect_without_credentials(uri: &axum::http::Uri, target: &str) -> Redirect {
    let kept: Vec<(String, String)> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .filter(|(k, _)| !CREDENTIAL_PARAMS.contains(&k.as_ref()))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        return Redirect::permanent(target);
    }
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(kept)
        .finish();
    Redirect::permanent(&format!("{target}?{query}"))
}

/// The page's policy: [`CONTENT_SECURITY_POLICY`] and who may frame it.
pub fn page_policy(frame_origins: &[String]) -> String {
    policy_with_frame_ancestors(CONTENT_SECURITY_POLICY, frame_origins)
}

/// `policy` followed by a `frame-ancestors` directive naming relais itself and the
/// validated `frame_origins`.
pub fn policy_with_frame_ancestors(policy: &str, frame_origins: &[String]) -> String {
    let mut policy = format!("{policy}; frame-ancestors 'self'");
    for origin in frame_origins {
        // Validated origins (scheme://host[:port]); anything else is left out.
        if origin
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":/.-[]".contains(c))
        {
            policy.push(' ');
            policy.push_str(origin);
        }
    }
    policy
}

/// `GET /widget/`: the page.
pub async fn index(State(app): State<AppState>) -> Response {
    let mut response = asset("text/html; charset=utf-8", INDEX_HTML);
    if let Ok(value) = HeaderValue::from_str(&page_policy(&app.config.server.cors_origins)) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, value);
    }
    response
}

/// `GET /widget/widget.js`: the script.
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", WIDGET_JS)
}

/// `GET /widget/widget.css`: the style sheet.
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", WIDGET_CSS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    asset_with_policy(content_type, body, CONTENT_SECURITY_POLICY)
}

/// An embedded file with its content type, `policy` as its CSP, and the headers every
/// page file carries (`nosniff`, `no-referrer`, `no-cache`).
pub fn asset_with_policy(
    content_type: &'static str,
    body: &'static str,
    policy: &'static str,
) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(policy),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The files change with the binary: revalidate instead of caching stale code.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_files_reference_each_other() {
        assert!(INDEX_HTML.contains("widget.js"));
        assert!(INDEX_HTML.contains("widget.css"));
        assert!(
            !INDEX_HTML.contains("<script>"),
            "no inline script: CSP forbids it"
        );
    }

    #[test]
    fn policy_has_no_unsafe_sources() {
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
        assert!(HeaderValue::from_str(CONTENT_SECURITY_POLICY).is_ok());
    }

    #[test]
    fn the_page_may_be_framed_only_by_itself_and_the_cors_origins() {
        let policy = page_policy(&["https://docs.getgrist.com".into()]);
        assert!(
            policy.ends_with("; frame-ancestors 'self' https://docs.getgrist.com"),
            "{policy}"
        );
        assert!(page_policy(&[]).ends_with("; frame-ancestors 'self'"));
        assert!(!page_policy(&["https://a; script-src *".into()]).contains("script-src *"));
    }

    #[tokio::test]
    async fn assets_have_their_content_types_and_policy() {
        for (resp, ct) in [
            (script().await, "text/javascript; charset=utf-8"),
            (style().await, "text/css; charset=utf-8"),
        ] {
            assert_eq!(resp.headers()[header::CONTENT_TYPE], ct);
            assert_eq!(
                resp.headers()[header::CONTENT_SECURITY_POLICY],
                CONTENT_SECURITY_POLICY
            );
        }
    }

    #[tokio::test]
    async fn bare_path_redirects_without_copying_credentials() {
        let location = |uri: &'static str| async move {
            let resp = redirect(uri.parse().unwrap()).await.into_response();
            resp.headers()[header::LOCATION]
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(location("/widget?token=abc").await, "/widget/");
        assert_eq!(
            location("/widget?standalone&token=abc&authorization=x").await,
            "/widget/?standalone="
        );
        assert_eq!(location("/widget?grist=1").await, "/widget/?grist=1");
        assert_eq!(location("/widget").await, "/widget/");
    }
}
