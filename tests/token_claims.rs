//! Token claims at their edges, against the real binary: an `exp` beyond what a clock
//! can hold does not crash the handler, and `jwt.issuers` / `jwt.audience` are enforced
//! when configured.

mod common;

use std::time::Duration;

use common::*;
use relais::auth::{Claims, MercureClaim};

fn claims(exp: Option<u64>) -> Claims {
    Claims {
        sub: Some("edge".into()),
        exp,
        nbf: None,
        iat: None,
        mercure: MercureClaim {
            subscribe: vec!["*".into()],
            publish: vec!["*".into()],
            payload: None,
        },
    }
}

#[tokio::test]
async fn an_exp_beyond_i64_is_served_without_panic() {
    let relais = Relais::start(&[]);
    for exp in [u64::MAX, i64::MAX as u64 + 1, i64::MAX as u64] {
        let tok = sign(&claims(Some(exp)));
        let mut sse = SseClient::connect(&relais, "topic=edge", Some(&tok), &[]).await;
        assert_eq!(sse.status, 200, "exp {exp}");
        assert!(
            sse.next_item(Duration::from_secs(2)).await.is_some(),
            "exp {exp}"
        );
        let response = publish(&relais, &tok, &[("topic", "edge"), ("data", "x")]).await;
        assert_eq!(response.status(), 200, "exp {exp}");
    }
    assert!(!relais.logged("panicked"));
}

fn signed(payload: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &payload,
        &jsonwebtoken::EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn issuers_and_audience_are_enforced_when_configured() {
    let relais = Relais::start(&[
        (
            "RELAIS_JWT__ISSUERS",
            r#"["https://idp.example", "relais"]"#,
        ),
        ("RELAIS_JWT__AUDIENCE", "https://relais.example"),
    ]);
    let status = |tok: String| {
        let url = format!("{}?topic=a", relais.hub_url());
        async move {
            let r = client()
                .get(url)
                .bearer_auth(tok)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .unwrap();
            let code = r.status().as_u16();
            let body = if code == 200 {
                String::new()
            } else {
                r.text().await.unwrap()
            };
            (code, body)
        }
    };
    let mercure = serde_json::json!({"subscribe": ["*"]});
    let good = signed(
        serde_json::json!({"iss": "relais", "aud": "https://relais.example", "mercure": mercure}),
    );
    assert_eq!(status(good).await.0, 200);
    let (code, body) = status(signed(
        serde_json::json!({"iss": "evil", "aud": "https://relais.example", "mercure": mercure}),
    ))
    .await;
    assert_eq!(code, 401);
    assert!(body.contains("jwt.issuers"), "{body}");
    let (code, body) = status(signed(
        serde_json::json!({"iss": "relais", "mercure": mercure}),
    ))
    .await;
    assert_eq!(code, 401);
    assert!(body.contains("jwt.audience"), "{body}");
    // The common test token has neither claim.
    assert_eq!(status(token("t", &["*"], &[])).await.0, 401);
}
