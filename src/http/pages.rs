//! `GET /client/relais.js` (the browser client both pages use, documented for DiagPV's
//! own pages) and `GET /audit/` (the live board of one DiagPV audit), embedded in the
//! binary like the widget.
//!
//! The audit board gets the widget's headers with a stricter script source: it never
//! runs inside Grist, so it loads no script from anywhere but relais. `frame-ancestors`
//! is the widget's (relais itself and `server.cors_origins`), and a `?token=` given in the
//! URL is dropped by the `/audit` redirect and taken out of the address bar by the page.
//! The client is served with the widget's policy, so both pages may import it.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{Redirect, Response};

use super::widget::{asset_with_policy, policy_with_frame_ancestors, redirect_without_credentials};
use super::AppState;

/// The JS client (a plain ES module, no build step, no dependency).
const CLIENT_JS: &str = include_str!("../../client/relais.js");
/// The audit board's page.
const AUDIT_HTML: &str = include_str!("../../audit/index.html");
/// The audit board's script.
const AUDIT_JS: &str = include_str!("../../audit/audit.js");
/// The audit board's style sheet.
const AUDIT_CSS: &str = include_str!("../../audit/audit.css");

/// The policy of every audit board file: only relais' own scripts, styles and
/// connections, no inline code.
pub const AUDIT_POLICY: &str = "default-src 'none'; \
     script-src 'self'; \
     style-src 'self'; \
     connect-src 'self'; \
     img-src 'self' data:; \
     base-uri 'none'; \
     form-action 'self'; \
     object-src 'none'";

/// `GET /client/relais.js`: the client module.
pub async fn client_script() -> Response {
    let mut response = asset_with_policy(
        "text/javascript; charset=utf-8",
        CLIENT_JS,
        super::widget::CONTENT_SECURITY_POLICY,
    );
    // DiagPV's own pages, on other origins listed in `server.cors_origins`, import it as
    // a module: module scripts are fetched in CORS mode (the CORS layer answers them).
    response.headers_mut().insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    response
}

/// `GET /audit`: redirects to `/audit/`, keeping the query string except credentials.
pub async fn audit_redirect(uri: axum::http::Uri) -> Redirect {
    redirect_without_credentials(&uri, "/audit/")
}

/// `GET /audit/`: the board's page.
pub async fn audit_index(State(app): State<AppState>) -> Response {
    let mut response = asset_with_policy("text/html; charset=utf-8", AUDIT_HTML, AUDIT_POLICY);
    let policy = policy_with_frame_ancestors(AUDIT_POLICY, &app.config.server.cors_origins);
    if let Ok(value) = HeaderValue::from_str(&policy) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, value);
    }
    response
}

/// `GET /audit/audit.js`: the board's script.
pub async fn audit_script() -> Response {
    asset_with_policy("text/javascript; charset=utf-8", AUDIT_JS, AUDIT_POLICY)
}

/// `GET /audit/audit.css`: the board's style sheet.
pub async fn audit_style() -> Response {
    asset_with_policy("text/css; charset=utf-8", AUDIT_CSS, AUDIT_POLICY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_files_reference_each_other() {
        assert!(AUDIT_HTML.contains("audit.js"));
        assert!(AUDIT_HTML.contains("audit.css"));
        assert!(!AUDIT_HTML.contains("<script>"), "no inline script");
        assert!(AUDIT_JS.contains("/client/relais.js"));
        assert!(CLIENT_JS.contains("export function connect"));
    }

    #[test]
    fn audit_policy_loads_nothing_from_elsewhere() {
        assert!(!AUDIT_POLICY.contains("unsafe"));
        assert!(!AUDIT_POLICY.contains("https:"));
        assert!(HeaderValue::from_str(AUDIT_POLICY).is_ok());
    }

    #[tokio::test]
    async fn files_have_their_content_types() {
        for (resp, ct) in [
            (client_script().await, "text/javascript; charset=utf-8"),
            (audit_script().await, "text/javascript; charset=utf-8"),
            (audit_style().await, "text/css; charset=utf-8"),
        ] {
            assert_eq!(resp.headers()[header::CONTENT_TYPE], ct);
            assert_eq!(resp.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
    }
}
