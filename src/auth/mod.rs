//! JWT authentication, Mercure style: the `mercure.subscribe` and `mercure.publish`
//! claims list the topic selectors a token holder may receive and publish.
//!
//! The algorithm is pinned by configuration: a token's own `alg` header never chooses the
//! key type, and `none` is always refused (it is not even a parseable algorithm here).

pub mod keys;
pub mod token;

pub use keys::{KeyMaterial, KeyOrigin, KeySetupError};
pub use token::{AuthError, Authenticator, Claims, Identity, MercureClaim, TokenMinter};
