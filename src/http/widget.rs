//! `GET /widget/`: the supervisors' dashboard (also a Grist custom widget), served from
//! files embedded in the binary so a single `relais` needs nothing else on disk.
//!
//! Every answer carries a strict `Content-Security-Policy`: scripts, styles and
//! connections only from relais itself (the page's own origin), plus the Grist plugin API
//! script from `docs.getgrist.com`, which the page loads only when it runs framed inside
//! Grist. No inline script or style is allowed, so a record that smuggled markup into the
//! page still could not run anything. `Referrer-Policy: no-referrer` keeps the `?token=`
//! of the page URL from leaking to other sites.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};

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

/// `GET /widget`: redirects to `/widget/` so the page's relative URLs resolve, keeping
/// the query string (the `?token=`).
pub async fn redirect(uri: axum::http::Uri) -> Redirect {
    match uri.query() {
        Some(q) => Redirect::permanent(&format!("/widget/?{q}")),
        None => Redirect::permanent("/widget/"),
    }
}

/// `GET /widget/`: the page.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
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
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
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

    #[tokio::test]
    async fn assets_have_their_content_types_and_policy() {
        for (resp, ct) in [
            (index().await, "text/html; charset=utf-8"),
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
    async fn bare_path_redirects_and_keeps_the_query() {
        let resp = redirect("/widget?token=abc".parse().unwrap())
            .await
            .into_response();
        assert_eq!(resp.headers()[header::LOCATION], "/widget/?token=abc");
    }
}
