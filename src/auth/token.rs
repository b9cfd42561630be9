//! Verifying and minting Mercure JWTs.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::keys::{KeyMaterial, KeySetupError};
use crate::config::{Config, JwtAlgorithm};
use crate::hub::Selector;

/// The `mercure` claim.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MercureClaim {
    /// Selectors the holder may subscribe to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<String>,
    /// Selectors the holder may publish to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
}

/// The claims relais reads and writes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Claims {
    /// Who holds the token (shown in logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Expiry, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Not valid before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Mercure permissions.
    #[serde(default)]
    pub mercure: MercureClaim,
}

/// A verified token holder.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `sub`, if any.
    pub subject: Option<String>,
    /// Compiled `mercure.subscribe`.
    pub subscribe: Vec<Selector>,
    /// Compiled `mercure.publish`.
    pub publish: Vec<Selector>,
    /// When the token stops being valid.
    pub expires_at: Option<SystemTime>,
}

/// Why a token was refused (always answered with 401).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No token was presented where one is required.
    #[error("a token is required (Authorization: Bearer header, authorization query parameter or mercureAuthorization cookie)")]
    Missing,
    /// The token is past its `exp`.
    #[error("the token has expired")]
    Expired,
    /// The token's `nbf` is in the future.
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// The signature does not verify with the configured key.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// The header names another algorithm than the configured one (or `none`).
    #[error("the token's algorithm is not the configured {0}")]
    WrongAlgorithm(&'static str),
    /// `jwt.require_exp` is set and the token has no `exp`.
    #[error("the token has no exp claim, and this relais requires one")]
    MissingExp,
    /// Not a JWT, or its claims are not of the expected shape.
    #[error("the token is malformed: {0}")]
    Malformed(String),
}

fn jwt_algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
    }
}

fn algorithm_name(a: JwtAlgorithm) -> &'static str {
    match a {
        JwtAlgorithm::HS256 => "HS256",
        JwtAlgorithm::RS256 => "RS256",
        JwtAlgorithm::ES256 => "ES256",
    }
}

/// Verifies tokens with the configured key and algorithm.
pub struct Authenticator {
    algorithm: JwtAlgorithm,
    key: DecodingKey,
    validation: Validation,
}

impl Authenticator {
    /// Builds the verifier from key material and the `[jwt]` settings.
    pub fn new(keys: &KeyMaterial, config: &Config) -> Result<Self, KeySetupError> {
        let bad_pem = |reason: String| KeySetupError::BadPem {
            what: "jwt.public_key",
            path: config.jwt.public_key.clone().unwrap_or_default(),
            algorithm: keys.algorithm,
            reason,
        };
        let key = match keys.algorithm {
            JwtAlgorithm::HS256 => DecodingKey::from_secret(&keys.verify),
            JwtAlgorithm::RS256 => {
                DecodingKey::from_rsa_pem(&keys.verify).map_err(|e| bad_pem(e.to_string()))?
            }
            JwtAlgorithm::ES256 => {
                DecodingKey::from_ec_pem(&keys.verify).map_err(|e| bad_pem(e.to_string()))?
            }
        };
        let mut validation = Validation::new(jwt_algorithm(keys.algorithm));
        validation.required_spec_claims = if config.jwt.require_exp {
            HashSet::from(["exp".to_string()])
        } else {
            HashSet::new()
        };
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.leeway = config.jwt.leeway_secs;
        Ok(Self {
            algorithm: keys.algorithm,
            key,
            validation,
        })
    }

    /// Verifies a token and compiles its selectors.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| self.classify(e))?;
        let claims = data.claims;
        let compile = |list: &[String], name: &str| {
            list.iter()
                .map(|s| {
                    Selector::parse(s).map_err(|e| {
                        AuthError::Malformed(format!("mercure.{name} holds a bad selector: {e}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Identity {
            subject: claims.sub,
            subscribe: compile(&claims.mercure.subscribe, "subscribe")?,
            publish: compile(&claims.mercure.publish, "publish")?,
            // An `exp` beyond what the clock can represent never comes: no expiry.
            expires_at: claims
                .exp
                .and_then(|e| UNIX_EPOCH.checked_add(Duration::from_secs(e))),
        })
    }

    fn classify(&self, e: jsonwebtoken::errors::Error) -> AuthError {
        match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                AuthError::WrongAlgorithm(algorithm_name(self.algorithm))
            }
            ErrorKind::MissingRequiredClaim(c) if c == "exp" => AuthError::MissingExp,
            ErrorKind::Json(_) | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
                // A header naming an unknown algorithm ("none") fails as JSON.
                if header_names_other_algorithm(&e) {
                    AuthError::WrongAlgorithm(algorithm_name(self.algorithm))
                } else {
                    AuthError::Malformed("not a JWT with Mercure claims".into())
                }
            }
            _ => AuthError::Malformed(e.to_string()),
        }
    }
}

fn header_names_other_algorithm(e: &jsonwebtoken::errors::Error) -> bool {
    e.to_string().contains("unknown variant")
}

/// Mints tokens (`relais token`) with the configured signing key.
pub struct TokenMinter {
    algorithm: JwtAlgorithm,
    key: EncodingKey,
}

impl TokenMinter {
    /// Builds the minter; RS256/ES256 need `jwt.private_key`.
    pub fn new(keys: &KeyMaterial, config: &Config) -> Result<Self, KeySetupError> {
        let sign = keys
            .sign
            .as_deref()
            .ok_or(KeySetupError::NoPrivateKey(keys.algorithm))?;
        let bad_pem = |reason: String| KeySetupError::BadPem {
            what: "jwt.private_key",
            path: config.jwt.private_key.clone().unwrap_or_default(),
            algorithm: keys.algorithm,
            reason,
        };
        let key = match keys.algorithm {
            JwtAlgorithm::HS256 => EncodingKey::from_secret(sign),
            JwtAlgorithm::RS256 => {
                EncodingKey::from_rsa_pem(sign).map_err(|e| bad_pem(e.to_string()))?
            }
            JwtAlgorithm::ES256 => {
                EncodingKey::from_ec_pem(sign).map_err(|e| bad_pem(e.to_string()))?
            }
        };
        Ok(Self {
            algorithm: keys.algorithm,
            key,
        })
    }

    /// Signs claims.
    pub fn mint(&self, claims: &Claims) -> Result<String, AuthError> {
        jsonwebtoken::encode(
            &Header::new(jwt_algorithm(self.algorithm)),
            claims,
            &self.key,
        )
        .map_err(|e| AuthError::Malformed(e.to_string()))
    }

    /// Claims for `sub` with the given permissions, valid for `ttl` from now.
    pub fn claims_for(
        sub: &str,
        subscribe: Vec<String>,
        publish: Vec<String>,
        ttl: Duration,
    ) -> Claims {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Claims {
            sub: Some(sub.to_string()),
            exp: Some(now + ttl.as_secs()),
            nbf: None,
            iat: Some(now),
            mercure: MercureClaim { subscribe, publish },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn setup() -> (Authenticator, TokenMinter) {
        let mut config = Config::default();
        config.jwt.secret = Some(Secret::new("0123456789abcdef0123456789abcdef"));
        let keys = KeyMaterial::load_or_create(&config).unwrap();
        (
            Authenticator::new(&keys, &config).unwrap(),
            TokenMinter::new(&keys, &config).unwrap(),
        )
    }

    fn b64(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn round_trip_and_refusals() {
        let (auth, minter) = setup();
        let claims =
            TokenMinter::claims_for("alice", vec!["*".into()], vec![], Duration::from_secs(60));
        let id = auth.verify(&minter.mint(&claims).unwrap()).unwrap();
        assert_eq!(id.subject.as_deref(), Some("alice"));
        assert_eq!(id.subscribe.len(), 1);

        let mut expired = claims.clone();
        expired.exp = Some(1000);
        assert_eq!(
            auth.verify(&minter.mint(&expired).unwrap()).unwrap_err(),
            AuthError::Expired
        );

        let mut future = claims.clone();
        future.nbf = Some(u64::MAX / 2);
        assert_eq!(
            auth.verify(&minter.mint(&future).unwrap()).unwrap_err(),
            AuthError::NotYetValid
        );

        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(r#"{"mercure":{}}"#)
        );
        assert!(matches!(
            auth.verify(&none).unwrap_err(),
            AuthError::WrongAlgorithm(_)
        ));

        let token = minter.mint(&claims).unwrap();
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = b64(r#"{"sub":"mallory","mercure":{"subscribe":["*"]}}"#);
        parts[1] = &forged;
        assert_eq!(
            auth.verify(&parts.join(".")).unwrap_err(),
            AuthError::BadSignature
        );
        assert!(matches!(
            auth.verify("garbage").unwrap_err(),
            AuthError::Malformed(_)
        ));
    }

    #[test]
    fn an_exp_beyond_the_clock_does_not_panic() {
        // Found by the jwt_claims fuzz target: adding `exp` to the epoch overflowed.
        let (auth, minter) = setup();
        let mut claims =
            TokenMinter::claims_for("alice", vec!["*".into()], vec![], Duration::from_secs(60));
        claims.exp = Some(u64::MAX);
        let id = auth.verify(&minter.mint(&claims).unwrap()).unwrap();
        assert_eq!(id.expires_at, None);
    }
}
