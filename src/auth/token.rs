//! Verifying and minting Mercure JWTs, of both generations.
//!
//! A token is a Mercure 1.0 access token when its header `typ` is `at+jwt` and it carries
//! `authorization_details`; it is a 0.x token when it carries the `mercure` claim (a
//! token with both and `typ: at+jwt` is read as 1.0, as a 1.0 hub would; without that
//! `typ`, as 0.x, as a 0.x hub would). Both give the same [`Identity`]: selectors the
//! holder may subscribe to and publish to, whatever their kind.
//!
//! 1.0 tokens follow RFC 9068: `exp` is required, and `aud` must contain the hub's
//! resource identifier (`jwt.audience`, else the hub's URL from `server.public_url`, else
//! `http(s)://{Host}/.well-known/mercure` of the request). `iss` is checked against
//! `jwt.issuers` for both generations when it is configured.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::details::{self, Detail, TopicMatcher};
use super::keys::{KeyMaterial, KeySetupError};
use crate::config::{Config, JwtAlgorithm};
use crate::hub::Selector;

/// Which generation of the Mercure protocol a token or a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Generation {
    /// Mercure up to 0.x: `topic=`, the `mercure` claim, today's answers.
    #[default]
    V0,
    /// Mercure 1.0: `match=` / `match_urlpattern=`, OAuth access tokens, RFC 6750 errors.
    V1,
}

/// The `mercure` claim.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MercureClaim {
    /// Selectors the holder may subscribe to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<String>,
    /// Selectors the holder may publish to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    /// What others see of the holder in presence (`payload` of its subscriptions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
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
    /// The token's generation (which claim its grants came from).
    pub generation: Generation,
    /// `sub`, if any.
    pub subject: Option<String>,
    /// Compiled `mercure.subscribe`, or the 1.0 `subscribe` grants.
    pub subscribe: Vec<Selector>,
    /// Compiled `mercure.publish`, or the 1.0 `publish` grants.
    pub publish: Vec<Selector>,
    /// When the token stops being valid.
    pub expires_at: Option<SystemTime>,
    /// `mercure.payload`, shown to others in presence.
    pub payload: Option<serde_json::Value>,
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
    /// The token has no `exp`: a Mercure 1.0 token, or `jwt.require_exp` is set.
    #[error("the token has no exp claim (required for Mercure 1.0 access tokens, and for every token when jwt.require_exp is set)")]
    MissingExp,
    /// `authorization_details` without the access-token header (`typ: at+jwt`).
    #[error(
        "a token with authorization_details must be an OAuth access token (header typ at+jwt)"
    )]
    NotAccessToken,
    /// A Mercure 1.0 token whose `aud` does not name this hub.
    #[error("the token's aud claim must contain this hub's resource identifier {0}")]
    WrongResource(String),
    /// A Mercure 1.0 token, and no way to know this hub's resource identifier.
    #[error("Mercure 1.0 tokens cannot be checked: set server.public_url or jwt.audience")]
    NoResource,
    /// A malformed Mercure authorization detail (the whole token is refused).
    #[error("the token's authorization_details are invalid: {0}")]
    BadDetails(String),
    /// More selectors in the token's grants than `jwt.max_claim_selectors`.
    #[error("the token's mercure claim holds more than {0} selectors (jwt.max_claim_selectors)")]
    TooManyClaims(usize),
    /// `jwt.issuers` is set and the token's `iss` is missing or not listed.
    #[error("the token's iss claim is missing or not one of jwt.issuers")]
    WrongIssuer,
    /// `jwt.audience` is set and the token's `aud` is missing or does not name it.
    #[error("the token's aud claim is missing or does not name jwt.audience")]
    WrongAudience,
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
    /// `jwt.audience` (checked on 0.x tokens when set).
    audience: Option<String>,
    /// The resource identifier 1.0 tokens must name; `None`: from the request's `Host`.
    resource: Option<String>,
    max_claims: usize,
    max_selector_bytes: usize,
}

/// The claims a token is read with, before its generation is known.
#[derive(Debug, Deserialize)]
struct ReadClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    mercure: Option<MercureClaim>,
    #[serde(default)]
    authorization_details: Option<serde_json::Value>,
}

/// `aud`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn names(&self, wanted: &str) -> bool {
        match self {
            Audience::One(a) => a == wanted,
            Audience::Many(list) => list.iter().any(|a| a == wanted),
        }
    }
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
        validation.required_spec_claims = HashSet::new();
        if config.jwt.require_exp {
            validation.required_spec_claims.insert("exp".into());
        }
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // `aud` is checked below, by generation: 0.x against `jwt.audience` when set, 1.0
        // always, against the resource identifier (which may depend on the request).
        validation.validate_aud = false;
        if !config.jwt.issuers.is_empty() {
            validation.set_issuer(&config.jwt.issuers);
            validation.required_spec_claims.insert("iss".into());
        }
        validation.leeway = config.jwt.leeway_secs;
        Ok(Self {
            algorithm: keys.algorithm,
            key,
            validation,
            audience: config.jwt.audience.clone(),
            resource: config.resource_identifier(),
            max_claims: config.jwt.max_claim_selectors,
            max_selector_bytes: config.hub.max_selector_bytes,
        })
    }

    /// Verifies a token and compiles its selectors; a 1.0 token is checked against the
    /// configured resource identifier only.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_for_host(token, None)
    }

    /// Verifies a token presented in a request to `host` (its `Host` header), which gives
    /// the resource identifier of 1.0 tokens when none is configured.
    pub fn verify_for_host(&self, token: &str, host: Option<&str>) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<ReadClaims>(token, &self.key, &self.validation)
            .map_err(|e| self.classify(e))?;
        let access_token = data.header.typ.as_deref().is_some_and(|t| {
            t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt")
        });
        let claims = data.claims;
        let expires_at = claims.exp.and_then(expiry_time);
        match (claims.authorization_details, claims.mercure) {
            (Some(details), mercure) if access_token => {
                if claims.exp.is_none() {
                    return Err(AuthError::MissingExp);
                }
                self.check_resource(claims.aud.as_ref(), host)?;
                let grants = details::read(&details, self.max_claims, self.max_selector_bytes)
                    .map_err(AuthError::BadDetails)?;
                Ok(Identity {
                    generation: Generation::V1,
                    subject: claims.sub,
                    subscribe: grants.subscribe,
                    publish: grants.publish,
                    expires_at,
                    payload: mercure.and_then(|m| m.payload),
                })
            }
            (Some(_), None) => Err(AuthError::NotAccessToken),
            (_, mercure) => {
                if let Some(audience) = &self.audience {
                    if !claims.aud.as_ref().is_some_and(|a| a.names(audience)) {
                        return Err(AuthError::WrongAudience);
                    }
                }
                let mercure = mercure.unwrap_or_default();
                if mercure.subscribe.len() + mercure.publish.len() > self.max_claims {
                    return Err(AuthError::TooManyClaims(self.max_claims));
                }
                let compile = |list: &[String], name: &str| {
                    list.iter()
                        .map(|s| {
                            Selector::parse(s).map_err(|e| {
                                AuthError::Malformed(format!(
                                    "mercure.{name} holds a bad selector: {e}"
                                ))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                };
                Ok(Identity {
                    generation: Generation::V0,
                    subject: claims.sub,
                    subscribe: compile(&mercure.subscribe, "subscribe")?,
                    publish: compile(&mercure.publish, "publish")?,
                    expires_at,
                    payload: mercure.payload,
                })
            }
        }
    }

    /// The resource identifier 1.0 tokens presented to `host` must name, if known.
    pub fn resource_for(&self, host: Option<&str>) -> Option<String> {
        self.resource.clone().or_else(|| {
            host.filter(|h| !h.is_empty())
                .map(|h| format!("https://{h}/.well-known/mercure"))
        })
    }

    /// `aud` must name the resource identifier. Without one configured, the hub's URL
    /// as the request reached it (either scheme: behind a TLS proxy relais sees `http`).
    fn check_resource(&self, aud: Option<&Audience>, host: Option<&str>) -> Result<(), AuthError> {
        let accepted: Vec<String> = match (&self.resource, host.filter(|h| !h.is_empty())) {
            (Some(resource), _) => vec![resource.clone()],
            (None, Some(host)) => ["https", "http"]
                .iter()
                .map(|scheme| format!("{scheme}://{host}/.well-known/mercure"))
                .collect(),
            (None, None) => return Err(AuthError::NoResource),
        };
        if aud.is_some_and(|aud| accepted.iter().any(|r| aud.names(r))) {
            Ok(())
        } else {
            Err(AuthError::WrongResource(accepted[0].clone()))
        }
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
            ErrorKind::MissingRequiredClaim(c) if c == "iss" => AuthError::WrongIssuer,
            ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
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

/// Latest `exp` taken as a deadline (the end of year 9999); a later one (up to
/// `u64::MAX`, which `SystemTime` cannot even hold) means the token never expires.
const LATEST_EXP: u64 = 253_402_300_799;

/// When a token with this `exp` stops being valid, computed without overflow.
fn expiry_time(exp: u64) -> Option<SystemTime> {
    if exp > LATEST_EXP {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::from_secs(exp))
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

    /// Signs a Mercure 1.0 access token (header `typ: at+jwt`).
    pub fn mint_access_token(&self, claims: &AccessTokenClaims) -> Result<String, AuthError> {
        let mut header = Header::new(jwt_algorithm(self.algorithm));
        header.typ = Some("at+jwt".into());
        jsonwebtoken::encode(&header, claims, &self.key)
            .map_err(|e| AuthError::Malformed(e.to_string()))
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
            mercure: MercureClaim {
                subscribe,
                publish,
                payload: None,
            },
        }
    }
}

/// The claims of a Mercure 1.0 access token (RFC 9068 + `authorization_details`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    /// Who issued it (`jwt.issuers`).
    pub iss: String,
    /// Who holds it.
    pub sub: String,
    /// The client it was issued to (RFC 9068 requires it; relais does not read it).
    pub client_id: String,
    /// The hub's resource identifier.
    pub aud: String,
    /// Expiry, seconds since the epoch (required).
    pub exp: u64,
    /// Issued at.
    pub iat: u64,
    /// A unique token ID.
    pub jti: String,
    /// The Mercure grants.
    pub authorization_details: Vec<Detail>,
    /// Only its `payload` (presence), when set with [`AccessTokenClaims::with_payload`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mercure: Option<MercureClaim>,
}

impl AccessTokenClaims {
    /// A token for `sub` issued by `iss` to the hub `aud`, with the given grants, valid
    /// for `ttl` from now. Empty grant lists add no detail.
    pub fn new(
        sub: &str,
        iss: &str,
        aud: &str,
        subscribe: Vec<TopicMatcher>,
        publish: Vec<TopicMatcher>,
        ttl: Duration,
    ) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut authorization_details = Vec::new();
        if !subscribe.is_empty() {
            authorization_details.push(Detail::new("subscribe", subscribe));
        }
        if !publish.is_empty() {
            authorization_details.push(Detail::new("publish", publish));
        }
        Self {
            iss: iss.to_string(),
            sub: sub.to_string(),
            client_id: "relais-token".to_string(),
            aud: aud.to_string(),
            exp: now + ttl.as_secs(),
            iat: now,
            jti: format!("urn:uuid:{}", uuid::Uuid::now_v7()),
            authorization_details,
            mercure: None,
        }
    }

    /// Sets `mercure.payload`: what others see of the holder in presence.
    pub fn with_payload(mut self, payload: serde_json::Value) -> Self {
        self.mercure = Some(MercureClaim {
            payload: Some(payload),
            ..MercureClaim::default()
        });
        self
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
    fn an_exp_beyond_what_time_can_hold_does_not_panic() {
        let (auth, minter) = setup();
        for exp in [
            i64::MAX as u64 + 1,
            u64::MAX,
            i64::MAX as u64,
            LATEST_EXP + 1,
        ] {
            let mut claims =
                TokenMinter::claims_for("a", vec!["*".into()], vec![], Duration::from_secs(60));
            claims.exp = Some(exp);
            let id = auth.verify(&minter.mint(&claims).unwrap()).unwrap();
            assert_eq!(id.expires_at, None, "exp {exp}");
        }
        assert!(expiry_time(LATEST_EXP).is_some());
    }

    #[test]
    fn issuers_and_audience_are_checked_when_configured() {
        let secret = "0123456789abcdef0123456789abcdef";
        let mut config = Config::default();
        config.jwt.secret = Some(Secret::new(secret));
        config.jwt.issuers = vec!["https://idp.example".into(), "relais".into()];
        config.jwt.audience = Some("https://relais.example".into());
        let keys = KeyMaterial::load_or_create(&config).unwrap();
        let auth = Authenticator::new(&keys, &config).unwrap();
        let sign = |payload: serde_json::Value| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &payload,
                &EncodingKey::from_secret(secret.as_bytes()),
            )
            .unwrap()
        };
        let ok = sign(
            serde_json::json!({"iss": "relais", "aud": "https://relais.example", "mercure": {"subscribe": ["*"]}}),
        );
        auth.verify(&ok).unwrap();
        let list = sign(
            serde_json::json!({"iss": "https://idp.example", "aud": ["x", "https://relais.example"]}),
        );
        auth.verify(&list).unwrap();
        for (payload, err) in [
            (
                serde_json::json!({"aud": "https://relais.example"}),
                AuthError::WrongIssuer,
            ),
            (
                serde_json::json!({"iss": "evil", "aud": "https://relais.example"}),
                AuthError::WrongIssuer,
            ),
            (
                serde_json::json!({"iss": "relais"}),
                AuthError::WrongAudience,
            ),
            (
                serde_json::json!({"iss": "relais", "aud": "other"}),
                AuthError::WrongAudience,
            ),
        ] {
            assert_eq!(
                auth.verify(&sign(payload.clone())).unwrap_err(),
                err,
                "{payload}"
            );
        }
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

#[cfg(test)]
mod access_token_tests {
    use super::*;
    use crate::config::Secret;
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const HUB: &str = "https://relais.example/.well-known/mercure";

    fn auth(configure: impl FnOnce(&mut Config)) -> Authenticator {
        let mut config = Config::default();
        config.jwt.secret = Some(Secret::new(SECRET));
        configure(&mut config);
        let keys = KeyMaterial::load_or_create(&config).unwrap();
        Authenticator::new(&keys, &config).unwrap()
    }

    fn sign(typ: Option<&str>, payload: serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.typ = typ.map(str::to_string);
        jsonwebtoken::encode(
            &header,
            &payload,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn later() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600
    }

    fn grant(topics: serde_json::Value) -> serde_json::Value {
        json!([{"type": details::DETAIL_TYPE, "actions": ["subscribe", "publish"], "topics": topics}])
    }

    fn access(extra: serde_json::Value) -> serde_json::Value {
        let mut base = json!({
            "iss": "relais", "sub": "tablet-7", "aud": HUB, "exp": later(),
            "authorization_details": grant(json!([{"match": "audits/:t", "match_type": "urlpattern"}])),
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                base.as_object_mut().unwrap().remove(k);
            } else {
                base[k] = v.clone();
            }
        }
        base
    }

    fn with_public_url(c: &mut Config) {
        c.server.public_url = Some("https://relais.example".into());
    }

    #[test]
    fn a_valid_access_token_gives_its_grants() {
        let a = auth(with_public_url);
        let id = a.verify(&sign(Some("at+jwt"), access(json!({})))).unwrap();
        assert_eq!(id.generation, Generation::V1);
        assert_eq!(id.subject.as_deref(), Some("tablet-7"));
        assert!(id.subscribe[0].matches("audits/abc") && id.publish[0].matches("audits/abc"));
        assert!(id.expires_at.is_some());
        // aud as a list, typ in its media-type spelling.
        let list = access(json!({"aud": ["https://other.example", HUB]}));
        a.verify(&sign(Some("application/at+jwt"), list)).unwrap();
    }

    #[test]
    fn access_token_rules() {
        let a = auth(|c| {
            with_public_url(c);
            c.jwt.issuers = vec!["relais".into()];
        });
        let cases = [
            (access(json!({"exp": null})), AuthError::MissingExp),
            (
                access(json!({"aud": "https://relais.example"})),
                AuthError::WrongResource(HUB.into()),
            ),
            (
                access(json!({"aud": null})),
                AuthError::WrongResource(HUB.into()),
            ),
            (
                access(json!({"iss": "someone-else"})),
                AuthError::WrongIssuer,
            ),
            (access(json!({"exp": 1000})), AuthError::Expired),
        ];
        for (payload, expected) in cases {
            assert_eq!(
                a.verify(&sign(Some("at+jwt"), payload.clone()))
                    .unwrap_err(),
                expected,
                "{payload}"
            );
        }
        // One bad Mercure detail rejects the whole token.
        let bad = access(json!({"authorization_details": [
            {"type": details::DETAIL_TYPE, "actions": ["subscribe"], "topics": [{"match": "*"}]},
            {"type": details::DETAIL_TYPE, "actions": ["subscribe"], "topics": [{"match": "x", "match_type": "regexp"}]}
        ]}));
        assert!(matches!(
            a.verify(&sign(Some("at+jwt"), bad)).unwrap_err(),
            AuthError::BadDetails(_)
        ));
        // authorization_details need the access-token typ; with a mercure claim beside
        // them and no such typ, the token is read as 0.x.
        assert_eq!(
            a.verify(&sign(Some("JWT"), access(json!({})))).unwrap_err(),
            AuthError::NotAccessToken
        );
        let both = access(json!({"mercure": {"subscribe": ["audits/{t}"]}}));
        let id = a.verify(&sign(None, both.clone())).unwrap();
        assert_eq!(id.generation, Generation::V0);
        assert_eq!(id.subscribe[0].as_str(), "audits/{t}");
        let id = a.verify(&sign(Some("at+jwt"), both)).unwrap();
        assert_eq!(
            (id.generation, id.subscribe[0].as_str()),
            (Generation::V1, "audits/:t")
        );
    }

    #[test]
    fn the_resource_comes_from_the_host_when_not_configured() {
        let a = auth(|_| {});
        let token = |aud: &str| sign(Some("at+jwt"), access(json!({"aud": aud})));
        for aud in [
            "http://127.0.0.1:8080/.well-known/mercure",
            "https://127.0.0.1:8080/.well-known/mercure",
        ] {
            a.verify_for_host(&token(aud), Some("127.0.0.1:8080"))
                .unwrap();
        }
        assert!(matches!(
            a.verify_for_host(
                &token("https://127.0.0.1:9999/.well-known/mercure"),
                Some("127.0.0.1:8080")
            ),
            Err(AuthError::WrongResource(_))
        ));
        assert_eq!(a.verify(&token(HUB)).unwrap_err(), AuthError::NoResource);
        // jwt.audience, when set, is the resource identifier, whatever the Host.
        let pinned = auth(|c| c.jwt.audience = Some("urn:relais".into()));
        pinned
            .verify_for_host(&token("urn:relais"), Some("h"))
            .unwrap();
        assert!(pinned
            .verify_for_host(&token("https://h/.well-known/mercure"), Some("h"))
            .is_err());
    }

    #[test]
    fn minted_access_tokens_verify() {
        let mut config = Config::default();
        config.jwt.secret = Some(Secret::new(SECRET));
        with_public_url(&mut config);
        let keys = KeyMaterial::load_or_create(&config).unwrap();
        let minter = TokenMinter::new(&keys, &config).unwrap();
        let claims = AccessTokenClaims::new(
            "alice",
            "relais",
            HUB,
            vec![TopicMatcher {
                pattern: "https://example.com/books/:id".into(),
                match_type: Some(details::MatchType::UrlPattern),
            }],
            vec![],
            Duration::from_secs(60),
        );
        let token = minter.mint_access_token(&claims).unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&token).unwrap().typ.as_deref(),
            Some("at+jwt")
        );
        let id = auth(with_public_url).verify(&token).unwrap();
        assert_eq!(id.generation, Generation::V1);
        assert!(id.publish.is_empty());
        assert!(id.subscribe[0].matches("https://example.com/books/1"));
    }

    #[test]
    fn claims_are_bounded() {
        let a = auth(|c| {
            with_public_url(c);
            c.jwt.max_claim_selectors = 2;
        });
        let legacy = sign(
            None,
            json!({"mercure": {"subscribe": ["a", "b"], "publish": ["c"]}}),
        );
        assert_eq!(a.verify(&legacy).unwrap_err(), AuthError::TooManyClaims(2));
        let many = access(
            json!({"authorization_details": grant(json!([{"match": "a"}, {"match": "b"}, {"match": "c"}]))}),
        );
        assert!(matches!(
            a.verify(&sign(Some("at+jwt"), many)).unwrap_err(),
            AuthError::BadDetails(_)
        ));
    }
}
