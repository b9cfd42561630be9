//! JWT verification and Mercure claims decoding (`relais::auth::Authenticator::verify`).
//!
//! Three inputs per run: any text as a token (never verifies: it has no valid
//! signature); any payload bytes correctly signed with the configured HS256 key (the
//! claims decoder on untrusted JSON: no panic, and what it accepts agrees with a plain
//! serde reading of the payload); and claims minted by relais itself, whose outcome is
//! predicted independently from their times and selectors (expired, not yet valid,
//! malformed selector, or accepted with the same subject, selectors and expiry).
//!
//! Input: `token 0x1F payload 0x1F sub 0x1F exp 0x1F nbf 0x1F subscribe selectors
//! (space-separated) 0x1F publish selectors (one per field)`.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use relais::auth::{
    AuthError, Authenticator, Claims, KeyMaterial, KeyOrigin, MercureClaim, TokenMinter,
};
use relais::config::{Config, JwtAlgorithm};
use relais::hub::Selector;
use relais_fuzz::Fields;
use sha2::Sha256;

const SECRET: &[u8] = b"fuzzing-only-key-0123456789abcdef0123456789";
/// 9999-12-31T23:59:59Z: the last `exp` relais reads as an expiry.
const LATEST_EXP: u64 = 253_402_300_799;

struct Input {
    raw: String,
    payload: Vec<u8>,
    sub: Option<String>,
    exp: Option<u64>,
    nbf: Option<u64>,
    subscribe: Vec<String>,
    publish: Vec<String>,
}

fn keys() -> KeyMaterial {
    KeyMaterial {
        algorithm: JwtAlgorithm::HS256,
        verify: SECRET.to_vec(),
        sign: Some(SECRET.to_vec()),
        origin: KeyOrigin::Configured,
    }
}

/// The verifier and the minter, built once (the key setup is not what is fuzzed).
fn setup() -> &'static (Authenticator, TokenMinter) {
    static SETUP: OnceLock<(Authenticator, TokenMinter)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let config = Config::default();
        (
            Authenticator::new(&keys(), &config).expect("HS256 authenticator"),
            TokenMinter::new(&keys(), &config).expect("HS256 minter"),
        )
    })
}

fn sign_payload(payload: &[u8]) -> String {
    let head = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(SECRET).expect("any key length");
    mac.update(head.as_bytes());
    format!(
        "{head}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

fn same_selectors(compiled: &[Selector], written: &[String]) -> bool {
    compiled.len() == written.len() && compiled.iter().zip(written).all(|(c, w)| c.as_str() == w)
}

fuzz_target!(|data: &[u8]| {
    let mut f = Fields::new(data);
    let input = Input {
        raw: f.text(),
        payload: f.bytes().to_vec(),
        sub: f.opt_text(),
        exp: f.opt_u64(),
        nbf: f.opt_u64(),
        subscribe: f
            .text()
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        publish: f.rest().into_iter().filter(|s| !s.is_empty()).collect(),
    };
    let (auth, minter) = setup();

    assert!(
        auth.verify(&input.raw).is_err(),
        "an unsigned text verified"
    );

    let verified = auth.verify(&sign_payload(&input.payload));
    // Read with plain serde_json (times may be any JSON number: RFC 7519 NumericDate). A
    // payload that only a typed reading accepts (an invalid escape inside a field relais
    // ignores) is left out of the comparison.
    let plain = serde_json::from_slice::<serde_json::Value>(&input.payload);
    if let (Ok(identity), Ok(claims)) = (verified, plain) {
        assert_eq!(
            identity.subject.as_deref(),
            claims.get("sub").and_then(|s| s.as_str())
        );
        let listed = |name: &str| -> Vec<String> {
            claims
                .get("mercure")
                .and_then(|m| m.get(name))
                .and_then(|l| l.as_array())
                .map(|l| {
                    l.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        assert!(same_selectors(&identity.subscribe, &listed("subscribe")));
        assert!(same_selectors(&identity.publish, &listed("publish")));
    }

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs();
    let claims = Claims {
        sub: input.sub.clone(),
        exp: input.exp,
        nbf: input.nbf,
        iat: None,
        mercure: MercureClaim {
            subscribe: input.subscribe.iter().take(4).cloned().collect(),
            publish: input.publish.iter().take(4).cloned().collect(),
            // The presence payload travels as is: any name a fuzzer picks.
            payload: input
                .sub
                .as_ref()
                .map(|name| serde_json::json!({ "name": name })),
        },
    };
    let token = minter.mint(&claims).expect("minting never fails for HS256");
    let result = auth.verify(&token);
    // Times within 10 s of now are left alone: the clock moves during the run.
    let expired = claims.exp.is_some_and(|e| e.saturating_add(10) < now);
    let fresh = claims.exp.is_none_or(|e| e > now + 10);
    let immature = claims.nbf.is_some_and(|n| n > now + 10);
    let mature = claims.nbf.is_none_or(|n| n.saturating_add(10) < now);
    let selectors_ok = claims
        .mercure
        .subscribe
        .iter()
        .chain(&claims.mercure.publish)
        .all(|s| Selector::parse(s).is_ok());
    if expired {
        assert_eq!(result.as_ref().err(), Some(&AuthError::Expired));
    } else if fresh && immature {
        assert_eq!(result.as_ref().err(), Some(&AuthError::NotYetValid));
    } else if fresh && mature && !selectors_ok {
        assert!(matches!(result, Err(AuthError::Malformed(_))), "{result:?}");
    } else if fresh && mature {
        let identity = result.expect("valid claims verify");
        assert_eq!(identity.subject, claims.sub);
        assert!(same_selectors(
            &identity.subscribe,
            &claims.mercure.subscribe
        ));
        assert!(same_selectors(&identity.publish, &claims.mercure.publish));
        assert_eq!(identity.payload, claims.mercure.payload);
        if let Some(exp) = claims.exp {
            // Up to the end of year 9999 an `exp` is an expiry; beyond, none (docs/security.md).
            let expected = (exp <= LATEST_EXP)
                .then(|| UNIX_EPOCH.checked_add(Duration::from_secs(exp)))
                .flatten();
            assert_eq!(identity.expires_at, expected);
        }
    }
});
