//! RS256 and ES256: relais verifies with the configured public key, `relais token` signs
//! with the private key, and the algorithm stays pinned (no HS256 with the public key).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use relais::auth::{Claims, MercureClaim};

fn key(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

fn claims() -> Claims {
    Claims {
        sub: Some("k".into()),
        mercure: MercureClaim {
            subscribe: vec!["*".into()],
            publish: vec!["*".into()],
            payload: None,
        },
        ..Default::default()
    }
}

async fn status(relais: &Relais, token: &str) -> u16 {
    client()
        .get(format!("{}?topic=t", relais.hub_url()))
        .bearer_auth(token)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn check(algorithm: &str, alg: Algorithm, private: &str, public: &str) {
    let public_path = key(public);
    let private_path = key(private);
    let relais = Relais::start(&[
        ("RELAIS_JWT__ALGORITHM", algorithm),
        ("RELAIS_JWT__PUBLIC_KEY", public_path.to_str().unwrap()),
        ("RELAIS_JWT__PRIVATE_KEY", private_path.to_str().unwrap()),
    ]);
    let pem = std::fs::read(&private_path).unwrap();
    let signing = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => EncodingKey::from_ec_pem(&pem).unwrap(),
    };
    let good = jsonwebtoken::encode(&Header::new(alg), &claims(), &signing).unwrap();
    assert_eq!(status(&relais, &good).await, 200, "{algorithm} token");

    // Algorithm confusion: HS256 signed with the public key bytes as the secret.
    let public_pem = std::fs::read(&public_path).unwrap();
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(&public_pem),
    )
    .unwrap();
    assert_eq!(
        status(&relais, &confused).await,
        401,
        "HS256 with the public key"
    );
    let hs = token("x", &["*"], &["*"]);
    assert_eq!(
        status(&relais, &hs).await,
        401,
        "HS256 token on an {algorithm} relais"
    );

    // `relais token` signs with the configured private key.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relais"))
        .args(["token", "--sub", "cli", "--subscribe", "*"])
        .env("RELAIS_JWT__ALGORITHM", algorithm)
        .env("RELAIS_JWT__PUBLIC_KEY", &public_path)
        .env("RELAIS_JWT__PRIVATE_KEY", &private_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let minted = String::from_utf8(out.stdout).unwrap();
    assert_eq!(status(&relais, minted.trim()).await, 200);
}

#[tokio::test]
async fn rs256_tokens() {
    check("RS256", Algorithm::RS256, "rs256.pem", "rs256.pub.pem").await;
}

#[tokio::test]
async fn es256_tokens() {
    check("ES256", Algorithm::ES256, "es256.pem", "es256.pub.pem").await;
}

#[test]
fn a_public_key_of_the_wrong_kind_is_a_clear_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relais"))
        .arg("check-config")
        .env("RELAIS_JWT__ALGORITHM", "ES256")
        .env("RELAIS_JWT__PUBLIC_KEY", key("rs256.pub.pem"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("jwt.public_key"), "{err}");
}
