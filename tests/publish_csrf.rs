//! A publish authenticated by the `mercureAuthorization` cookie is accepted only from an
//! origin listed in `server.publish_origins` (cross-site request forgery); a token in the
//! `Authorization` header is not affected.

mod common;

use common::*;

async fn cookie_publish(relais: &Relais, token: &str, origin: Option<&str>) -> (u16, String) {
    let mut request = client()
        .post(relais.hub_url())
        .header("cookie", format!("mercureAuthorization={token}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("topic=interventions&data=forged");
    if let Some(o) = origin {
        request = request.header("origin", o);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn cookie_publishes_only_from_listed_origins() {
    let relais = Relais::start(&[(
        "RELAIS_SERVER__PUBLISH_ORIGINS",
        r#"["https://app.example.org"]"#,
    )]);
    let tok = token("editor", &[], &["*"]);
    let (code, body) = cookie_publish(&relais, &tok, Some("https://evil.example")).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("server.publish_origins"), "{body}");
    assert_eq!(cookie_publish(&relais, &tok, None).await.0, 403);
    let (code, body) = cookie_publish(&relais, &tok, Some("https://app.example.org")).await;
    assert_eq!(code, 200, "{body}");

    // The Authorization header is not sent by browsers on their own: any origin.
    let response = client()
        .post(relais.hub_url())
        .bearer_auth(&tok)
        .header("origin", "https://evil.example")
        .form(&[("topic", "interventions"), ("data", "ok")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn without_publish_origins_cookie_publishes_are_refused() {
    let relais = Relais::start(&[]);
    let tok = token("editor", &[], &["*"]);
    let (code, body) = cookie_publish(&relais, &tok, Some("https://evil.example")).await;
    assert_eq!(code, 403, "{body}");
}
