//! The HTTP side: the router, shared state and the handlers (subscribe, publish,
//! webhooks, ops, the dashboard widget, the audit board and the JS client).

pub mod auth;
pub mod error;
pub mod feed;
pub mod head;
pub mod hooks;
pub mod lean_stream;
pub mod limits;
pub mod ops;
pub mod pages;
pub mod publish;
pub mod query;
pub mod serve;
pub mod state;
pub mod subscribe;
pub mod subscriptions;
pub mod watchdog;
pub mod widget;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::Authenticator;
use crate::config::Config;
use crate::hub::Hub;
use crate::ingest::Ingestor;
use crate::store::Store;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The effective configuration.
    pub config: Arc<Config>,
    /// Local fan-out and history.
    pub hub: Arc<Hub>,
    /// Where events and record states are committed (memory, disk or Redis).
    pub store: Store,
    /// Token verification.
    pub auth: Arc<Authenticator>,
    /// Cancelled on SIGTERM: streams end so clients reconnect elsewhere.
    pub shutdown: CancellationToken,
    /// Renders `/metrics` (absent when no recorder is installed).
    pub metrics: Option<PrometheusHandle>,
    /// Webhook sources, turned into events in the store.
    pub ingest: Arc<Ingestor>,
    /// Standard Webhooks message IDs accepted recently (replays are refused).
    pub webhook_ids: Arc<crate::ingest::replay::SeenWebhooks>,
    /// Announces this process' subscriptions (Mercure active subscriptions).
    pub presence: Arc<crate::hub::presence::Presence>,
}

/// The Mercure hub path.
pub const MERCURE_PATH: &str = "/.well-known/mercure";

/// Builds the router with its layers.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.server.max_body_bytes;
    let cors = cors_layer(&state.config.server.cors_origins);
    let mut app = Router::new()
        .route(
            MERCURE_PATH,
            get(subscribe::subscribe).post(publish::publish_route),
        )
        .route(
            crate::hub::presence::SUBSCRIPTIONS_PATH,
            get(subscriptions::subscriptions),
        )
        .route(
            "/.well-known/mercure/subscriptions/{*rest}",
            get(subscriptions::subscriptions),
        )
        .route("/state", get(state::state))
        .route("/hooks/grist/{source}", post(hooks::grist_hook))
        .route("/hooks/hub/{source}", post(hooks::hub_hook))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/widget", get(widget::redirect))
        .route("/widget/", get(widget::index))
        .route("/widget/widget.js", get(widget::script))
        .route("/widget/widget.css", get(widget::style))
        .route("/client/relais.js", get(pages::client_script))
        .route("/audit", get(pages::audit_redirect))
        .route("/audit/", get(pages::audit_index))
        .route("/audit/audit.js", get(pages::audit_script))
        .route("/audit/audit.css", get(pages::audit_style))
        .fallback(ops::not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::body_deadline,
        ))
        .with_state(state);
    if let Some(cors) = cors {
        app = app.layer(cors);
    }
    app
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(list))
            .allow_credentials(true)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::CACHE_CONTROL,
                HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([
                HeaderName::from_static("last-event-id"),
                HeaderName::from_static("mercure-last-event-id"),
            ]),
    )
}
