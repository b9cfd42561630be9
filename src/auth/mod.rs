//! JWT authentication, Mercure style, both generations: the 0.x `mercure.subscribe` and
//! `mercure.publish` claims, or the 1.0 `authorization_details` of an OAuth access token,
//! list the topic selectors a token holder may receive and publish.
//!
//! The algorithm is pinned by configuration: a token's own `alg` header never chooses the
//! key type, and `none` is always refused (it is not even a parseable algorithm here).

pub mod details;
pub mod keys;
pub mod token;

pub use details::{MatchType, TopicMatcher};
pub use keys::{KeyMaterial, KeyOrigin, KeySetupError};
pub use token::{
    AccessTokenClaims, AuthError, Authenticator, Claims, Generation, Identity, MercureClaim,
    TokenMinter,
};
