//! Subscriptions are authenticated before any costly work, and their selectors are
//! bounded in number and size (`hub.max_selectors`, `hub.max_selector_bytes`).

mod common;

use std::time::Duration;

use common::*;

async fn status(relais: &Relais, query: &str, token: Option<&str>) -> (u16, String) {
    let mut request = client().get(format!("{}?{}", relais.hub_url(), query));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = if status == 200 {
        String::new()
    } else {
        response.text().await.unwrap()
    };
    (status, body)
}

#[tokio::test]
async fn unauthenticated_requests_are_refused_before_selectors_are_compiled() {
    let relais = Relais::start(&[]);
    // A malformed template would be a 400 if it were compiled; without a token nothing
    // is compiled and the answer is 401.
    let (code, body) = status(&relais, "topic=audits/%7Bbad", None).await;
    assert_eq!(code, 401, "{body}");
    // The same for more selectors than allowed, and for oversized ones.
    let many = (0..200)
        .map(|i| format!("topic=a/{i}/%7Bx%7D"))
        .collect::<Vec<_>>()
        .join("&");
    assert_eq!(status(&relais, &many, None).await.0, 401);
    let bad = format!("topic=a/{}", "x".repeat(4000));
    assert_eq!(status(&relais, &bad, Some("not-a-token")).await.0, 401);
    // With a token the malformed template is a 400 naming the field.
    let tok = token("alice", &["*"], &[]);
    let (code, body) = status(&relais, "topic=audits/%7Bbad", Some(&tok)).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("\"field\":\"topic\""), "{body}");
}

#[tokio::test]
async fn selectors_are_bounded_in_number_and_size() {
    let relais = Relais::start(&[]);
    let tok = token("alice", &["*"], &[]);
    let query = |n: usize| {
        (0..n)
            .map(|i| format!("topic=a/{i}/%7Bx%7D"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let mut ok = SseClient::connect(&relais, &query(32), Some(&tok), &[]).await;
    assert_eq!(ok.status, 200);
    drop(ok.next_item(Duration::from_millis(100)).await);
    let (code, body) = status(&relais, &query(33), Some(&tok)).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("\"field\":\"topic\"") && body.contains("max_selectors"),
        "{body}"
    );

    let exact = format!("topic={}", "x".repeat(1024));
    assert_eq!(status(&relais, &exact, Some(&tok)).await.0, 200);
    let long = format!("topic={}", "x".repeat(1025));
    let (code, body) = status(&relais, &long, Some(&tok)).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("max_selector_bytes"), "{body}");
}

#[tokio::test]
async fn selector_limits_are_settings() {
    let relais = Relais::start(&[
        ("RELAIS_HUB__MAX_SELECTORS", "2"),
        ("RELAIS_HUB__MAX_SELECTOR_BYTES", "8"),
    ]);
    let tok = token("alice", &["*"], &[]);
    assert_eq!(
        status(&relais, "topic=a&topic=b&topic=c", Some(&tok))
            .await
            .0,
        400
    );
    assert_eq!(status(&relais, "topic=123456789", Some(&tok)).await.0, 400);
    let mut ok = SseClient::connect(&relais, "topic=a&topic=12345678", Some(&tok), &[]).await;
    assert_eq!(ok.status, 200);
    drop(ok.next_item(Duration::from_millis(100)).await);
}
