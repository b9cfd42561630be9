//! A Standard Webhooks message accepted once is applied as nothing when sent again within
//! the tolerance window (a captured request cannot be replayed; an honest retry gets the
//! 200 it can stop on), while a message refused with an error can still be delivered.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use relais::ingest::signature::WebhookSecret;
use serde_json::json;

const SECRET: &str = "whsec_cmVsYWlzLWluZ2VzdC1odWItdGVzdC1rZXktMzJieXQ=";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn deliver(relais: &Relais, id: &str, ts: i64, body: &str) -> (u16, String) {
    let key = WebhookSecret::parse(SECRET).unwrap();
    let response = client()
        .post(format!("{}/hooks/hub/diagpv", relais.base))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", key.sign(id, ts, body.as_bytes()))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

#[tokio::test]
async fn a_replayed_message_changes_nothing() {
    let relais = Relais::start(&[
        ("RELAIS_SOURCES__DIAGPV__KIND", "hub"),
        ("RELAIS_SOURCES__DIAGPV__SECRET", SECRET),
    ]);
    let update = |status: &str, ms: i64| {
        json!({"audit_token": "a4e19950-c73c-412c-be4d-699c9de1dde1", "module_id": "M050",
               "status": status, "updated_at_ms": ms})
        .to_string()
    };
    let dead = update("dead", 1_700_000_000_000);
    let ts = now();
    let (code, body) = deliver(&relais, "msg_replay", ts, &dead).await;
    assert_eq!(code, 200, "{body}");
    // The record moves on; replaying the captured "dead" message must not bring it back.
    let (code, _) = deliver(&relais, "msg_next", now(), &update("ok", 1_700_000_001_000)).await;
    assert_eq!(code, 200);
    let (code, body) = deliver(&relais, "msg_replay", ts, &dead).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"published\":0"), "{body}");
    // Exactly the two first deliveries are in the history, and the module stays "ok".
    let reader = token("reader", &["*"], &[]);
    let mut sub =
        SseClient::connect(&relais, "topic=*&lastEventID=earliest", Some(&reader), &[]).await;
    let events = sub.events(3, std::time::Duration::from_secs(2)).await;
    let statuses: Vec<String> = events
        .iter()
        .map(|e| serde_json::from_str::<serde_json::Value>(&e.data).unwrap()["status"].to_string())
        .collect();
    assert_eq!(
        statuses,
        ["\"dead\"", "\"ok\""],
        "the replay published nothing"
    );

    // A message first refused (malformed) is not remembered: fixed, it goes through.
    let (code, _) = deliver(&relais, "msg_fixed", now(), "{not json").await;
    assert_eq!(code, 400);
    let (code, body) = deliver(
        &relais,
        "msg_fixed",
        now(),
        &update("ok", 1_700_000_002_000),
    )
    .await;
    assert_eq!(code, 200, "{body}");
}
