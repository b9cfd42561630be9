//! `relais serve`: assembles the hub, the store and the router, listens, and shuts down
//! gracefully on SIGTERM or Ctrl-C.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::keys::KeyOrigin;
use crate::auth::{Authenticator, KeyMaterial, KeySetupError};
use crate::config::Config;
use crate::http::{router, AppState};
use crate::hub::Hub;
use crate::ingest::{Ingestor, Source};
use crate::store::Store;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Keys could not be prepared.
    #[error(transparent)]
    Keys(#[from] KeySetupError),
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The store (Redis, or the database in the state directory) could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::OpenError),
    /// The Matrix alert client could not be set up.
    #[error(transparent)]
    Alerts(#[from] crate::alerts::ClientError),
    /// The listener could not be bound or failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs relais until SIGTERM / Ctrl-C.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let metrics = crate::telemetry::init_metrics();
    let keys = KeyMaterial::load_or_create(&config)?;
    crate::hub::selector::set_cache_size(config.hub.selector_cache_size);
    if let Some(url) = config.hub_url().and_then(|u| url::Url::parse(&u).ok()) {
        crate::hub::selector::set_hub_url(url);
    }
    crate::hub::event::set_known_types(
        config
            .sources
            .values()
            .filter_map(|s| s.event_type.as_deref()),
    );
    let auth = Arc::new(Authenticator::new(&keys, &config)?);
    let hub = Arc::new(
        Hub::new(config.hub.history_size, config.hub.subscriber_backlog)
            .with_subscriber_queue_bytes(config.hub.subscriber_queue_bytes)
            .with_history_bytes(config.hub.history_bytes)
            .with_subscriptions_history(config.hub.subscriptions_history),
    );
    let shutdown = CancellationToken::new();
    // Loads stored history and record states into the hub before anything listens.
    let store = Store::open(&config, hub.clone(), shutdown.clone()).await?;
    let ingest = Arc::new(Ingestor::new(&config, store.clone())?);
    let addr = config.listen_addr()?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen {
            addr: addr.to_string(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: addr.to_string(),
        source,
    })?;
    announce(&config, &keys.origin, &store, &ingest, local);
    // Attached to the hub before the first request (and after the store loaded its
    // history, so past events raise no alert), beside ingestion and streaming.
    let queue = if config.matrix.enabled() {
        store
            .alert_queue(config.matrix.queue_size)
            .await
            .map_err(|e| crate::alerts::ClientError::Queue(e.to_string()))?
    } else {
        crate::alerts::sender::memory_queue(1)
    };
    let _alerts = crate::alerts::start(&config.matrix, &hub, queue, shutdown.clone())?;

    let webhook_ids = Arc::new(crate::ingest::replay::SeenWebhooks::new(
        config.server.webhook_id_cache,
    ));
    let presence = crate::store::presence_redis::open(&config, &hub, shutdown.clone()).await?;
    let state = AppState {
        config: Arc::new(config),
        hub,
        store,
        auth,
        shutdown: shutdown.clone(),
        metrics,
        ingest,
        webhook_ids,
        presence,
    };
    tokio::spawn(wait_for_signal(shutdown.clone()));
    let app = router(state.clone());
    let presence = state.presence.clone();
    crate::http::serve::run(listener, app, state).await;
    presence.close().await;
    tracing::info!("relais stopped");
    Ok(())
}

fn announce(
    config: &Config,
    origin: &KeyOrigin,
    store: &Store,
    ingest: &Ingestor,
    local: std::net::SocketAddr,
) {
    tracing::info!("relais listening on http://{local}");
    tracing::info!(
        "subscribe: GET http://{local}/.well-known/mercure?topic=...  publish: POST same URL"
    );
    tracing::info!("store: {}", store.describe());
    let key = match origin {
        KeyOrigin::Configured => "jwt.secret from configuration".to_string(),
        KeyOrigin::Generated(p) => format!("generated a new key in {}", p.display()),
        KeyOrigin::Stored(p) => format!("key generated earlier, in {}", p.display()),
        KeyOrigin::Pem => "PEM public key from jwt.public_key".to_string(),
    };
    tracing::info!(
        "auth: {:?} JWT ({key}); anonymous subscribers {}",
        config.jwt.algorithm,
        if config.hub.allow_anonymous {
            "allowed (public updates only)"
        } else {
            "refused"
        }
    );
    tracing::info!(
        "mercure: 0.x (topic=, mercure claim) and 1.0 (match=, match_urlpattern=, at+jwt access tokens with aud {})",
        config
            .resource_identifier()
            .unwrap_or_else(|| "http(s)://<request Host>/.well-known/mercure".into())
    );
    if config.sources.is_empty() {
        tracing::info!("sources: none configured (see config/relais.toml)");
    }
    for (name, source) in &config.sources {
        announce_source(local, name, source, ingest.source(name));
    }
    tracing::info!(
        "history: last {} events, at most {} bytes of data",
        config.hub.history_size,
        config.hub.history_bytes
    );
}

/// One line per source: its webhook URL, auth mode, event type and topics (never a
/// secret).
fn announce_source(
    local: std::net::SocketAddr,
    name: &str,
    config: &crate::config::SourceConfig,
    source: Option<&Source>,
) {
    let Some(source) = source else { return };
    let mut auth = Vec::new();
    match source {
        Source::Grist(_) => {
            if config.authorization.is_some() {
                auth.push("Authorization header");
            }
            if config.secret.is_some() {
                auth.push("?secret= query parameter");
            }
        }
        Source::Hub(_) => {
            if config.secret.is_some() {
                auth.push("Standard Webhooks signature");
            }
            if config.authorization.is_some() {
                auth.push("Authorization header");
            }
        }
    }
    let (path, extra) = match source {
        Source::Grist(g) => ("grist", format!(", table {}", g.table)),
        Source::Hub(_) => ("hub", String::new()),
    };
    tracing::info!(
        "source {name}: POST http://{local}/hooks/{path}/{name} (auth: {}; events: {}{extra}; topics: {}{})",
        auth.join(" or "),
        source.event_type(),
        source.topics().join(", "),
        if config.private { "; private" } else { "" },
    );
}

async fn wait_for_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot listen for SIGTERM: {e}");
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: closing streams so clients reconnect elsewhere");
    shutdown.cancel();
}
