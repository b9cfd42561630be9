//! DiagPV hub webhooks against the real binary: Standard Webhooks signatures (valid,
//! invalid, expired, replayed), bearer secrets, `module` events on `audits/{token}`
//! topics only, last write wins for out-of-order deliveries, refusals changing nothing.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{client, token, Relais, SseClient, ARRIVE, QUIET};
use relais::hub::sse::ParsedEvent;
use relais::ingest::signature::WebhookSecret;
use serde_json::{json, Value};

const SECRET: &str = "whsec_cmVsYWlzLWluZ2VzdC1odWItdGVzdC1rZXktMzJieXQ=";
const OTHER_SECRET: &str = "whsec_c2VjcmV0LW9mLXNvbWVvbmUtZWxzZQ==";
const AUDIT_A: &str = "a4e19950-c73c-412c-be4d-699c9de1dde1";
const AUDIT_B: &str = "0b1c2d3e-0000-4000-8000-000000000002";

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("RELAIS_SOURCES__DIAGPV__KIND", "hub"),
        ("RELAIS_SOURCES__DIAGPV__SECRET", SECRET),
        ("RELAIS_SOURCES__HUBBEARER__KIND", "hub"),
        (
            "RELAIS_SOURCES__HUBBEARER__AUTHORIZATION",
            "Bearer hub-token-0123456789abcdef0123456789ab",
        ),
        ("RELAIS_SOURCES__CEREMA__KIND", "grist"),
        (
            "RELAIS_SOURCES__CEREMA__AUTHORIZATION",
            "Bearer grist-token-0123456789abcdef0123456789",
        ),
    ]
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn update(audit: &str, module: &str, status: &str, ms: i64) -> Value {
    json!({
        "audit_token": audit,
        "module_id": module,
        "status": status,
        "comment": "Fissures visibles EL",
        "technician_id": "tech_abc123",
        "technician_name": "Adrien",
        "updated_at": "2025-10-24T14:23:15.000Z",
        "updated_at_ms": ms
    })
}

/// A signed request: (webhook-id, webhook-timestamp, webhook-signature).
fn sign(secret: &str, id: &str, ts: i64, body: &str) -> (String, String, String) {
    let key = WebhookSecret::parse(secret).unwrap();
    (
        id.to_string(),
        ts.to_string(),
        key.sign(id, ts, body.as_bytes()),
    )
}

async fn post(
    relais: &Relais,
    path: &str,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &str,
) -> (u16, Value) {
    let mut request = client()
        .post(format!("{}{path}", relais.base))
        .header("content-type", content_type)
        .body(body.to_string());
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.expect("webhook request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("answer {status} is not JSON ({e}): {text:?}"));
    (status, value)
}

/// Posts `body` to the signed source with fresh, valid headers.
async fn post_signed(relais: &Relais, msg_id: &str, body: &str) -> (u16, Value) {
    let (id, ts, sig) = sign(SECRET, msg_id, now(), body);
    let headers = [
        ("webhook-id", id.as_str()),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", sig.as_str()),
    ];
    post(
        relais,
        "/hooks/hub/diagpv",
        &headers,
        "application/json",
        body,
    )
    .await
}

async fn subscriber(relais: &Relais, topic: &str) -> SseClient {
    let tok = token(
        "tablet",
        &["audits/{token}", "audits/{token}/modules/{module}"],
        &[],
    );
    let client = SseClient::connect(relais, &format!("topic={topic}"), Some(&tok), &[]).await;
    assert_eq!(client.status, 200);
    client
}

fn data(event: &ParsedEvent) -> Value {
    serde_json::from_str(&event.data).expect("event data is JSON")
}

#[tokio::test]
async fn a_signed_update_reaches_subscribers_of_its_audit_only() {
    let relais = Relais::start(&env());
    let mut audit_a = subscriber(&relais, &format!("audits/{AUDIT_A}")).await;
    let mut module = subscriber(&relais, &format!("audits/{AUDIT_A}/modules/M050")).await;
    let mut other_module = subscriber(&relais, &format!("audits/{AUDIT_A}/modules/M051")).await;
    let mut audit_b = subscriber(&relais, &format!("audits/{AUDIT_B}")).await;

    let body = update(AUDIT_A, "M050", "microcracks", 1737800595000).to_string();
    let (status, answer) = post_signed(&relais, "msg_1", &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        json!({"received": 1, "published": 1, "unchanged": 0, "stale": 0})
    );

    let event = audit_a
        .next_event(ARRIVE)
        .await
        .expect("event on audits/{token}");
    assert_eq!(event.event_type, "module");
    let d = data(&event);
    assert_eq!(
        d,
        json!({
            "source": "diagpv",
            "audit_token": AUDIT_A,
            "module_id": "M050",
            "status": "microcracks",
            "comment": "Fissures visibles EL",
            "technician": {"id": "tech_abc123", "name": "Adrien"},
            "updated_at": "2025-01-25T10:23:15Z",
            "change": "add",
            "changed": ["comment", "status", "technician", "updated_at"],
            "previous": {}
        })
    );
    assert_eq!(
        module.next_event(ARRIVE).await.expect("module topic").id,
        event.id
    );
    assert!(
        audit_b.next_event(QUIET).await.is_none(),
        "another audit got it"
    );
    assert!(
        other_module.next_event(QUIET).await.is_none(),
        "another module got it"
    );
}

#[tokio::test]
async fn signatures_valid_invalid_expired_and_replayed() {
    let relais = Relais::start(&env());
    let mut sub = subscriber(&relais, &format!("audits/{AUDIT_A}")).await;
    let body = update(AUDIT_A, "S1-15", "dead", 1737800600000).to_string();
    let url = "/hooks/hub/diagpv";
    let json_type = "application/json";

    // Signed with another key.
    let (id, ts, sig) = sign(OTHER_SECRET, "msg_a", now(), &body);
    let h = [
        ("webhook-id", id.as_str()),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", sig.as_str()),
    ];
    let (status, answer) = post(&relais, url, &h, json_type, &body).await;
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("signature"),
        "{answer}"
    );

    // Right key, body changed after signing.
    let (id, ts, sig) = sign(SECRET, "msg_b", now(), &body);
    let tampered = body.replace("dead", "ok");
    let h = [
        ("webhook-id", id.as_str()),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", sig.as_str()),
    ];
    assert_eq!(post(&relais, url, &h, json_type, &tampered).await.0, 401);

    // Expired: ten minutes old.
    let (id, ts, sig) = sign(SECRET, "msg_c", now() - 600, &body);
    let h = [
        ("webhook-id", id.as_str()),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", sig.as_str()),
    ];
    let (status, answer) = post(&relais, url, &h, json_type, &body).await;
    assert_eq!(status, 401);
    assert!(
        answer["message"].as_str().unwrap().contains("five minutes"),
        "{answer}"
    );

    // No headers at all, or a bearer value on a signed source.
    assert_eq!(post(&relais, url, &[], json_type, &body).await.0, 401);
    assert_eq!(
        post(
            &relais,
            url,
            &[(
                "authorization",
                "Bearer hub-token-0123456789abcdef0123456789ab"
            )],
            json_type,
            &body
        )
        .await
        .0,
        401
    );

    assert!(
        sub.next_event(QUIET).await.is_none(),
        "a refused request published"
    );

    // Valid, with several signatures (key rotation): one matching is enough.
    let (id, ts, sig) = sign(SECRET, "msg_d", now(), &body);
    let (_, _, old) = sign(OTHER_SECRET, "msg_d", ts.parse().unwrap(), &body);
    let both = format!("{old} {sig}");
    let h = [
        ("webhook-id", id.as_str()),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", both.as_str()),
    ];
    let (status, answer) = post(&relais, url, &h, json_type, &body).await;
    assert_eq!(
        (status, answer["published"].as_u64()),
        (200, Some(1)),
        "{answer}"
    );
    let d = data(&sub.next_event(ARRIVE).await.expect("event"));
    assert_eq!(
        (d["module_id"].as_str(), d["status"].as_str()),
        (Some("S1-15"), Some("dead"))
    );

    // The same request replayed (same webhook-id, within tolerance): 200, no event.
    let (status, answer) = post(&relais, url, &h, json_type, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        sub.next_event(QUIET).await.is_none(),
        "a replay published again"
    );
}

#[tokio::test]
async fn late_deliveries_never_flip_a_module_back() {
    let relais = Relais::start(&env());
    let mut sub = subscriber(&relais, &format!("audits/{AUDIT_A}")).await;
    let t0 = 1761315795000_i64;

    // Technician B's later "ok" arrives first, technician A's earlier "microcracks" after.
    let mut newer = update(AUDIT_A, "M050", "ok", t0 + 5000);
    newer["technician_name"] = json!("Sophie");
    newer["technician_id"] = json!("tech_def456");
    let older = update(AUDIT_A, "M050", "microcracks", t0);
    let (status, answer) = post_signed(&relais, "msg_new", &newer.to_string()).await;
    assert_eq!((status, answer["published"].as_u64()), (200, Some(1)));
    assert_eq!(
        data(&sub.next_event(ARRIVE).await.expect("event"))["status"],
        "ok"
    );

    let (status, answer) = post_signed(&relais, "msg_old", &older.to_string()).await;
    assert_eq!(status, 200, "a late delivery is still acknowledged");
    assert_eq!(
        answer,
        json!({"received": 1, "published": 0, "unchanged": 0, "stale": 1})
    );
    assert!(
        sub.next_event(QUIET).await.is_none(),
        "the late update was published"
    );

    // The module is still "ok": re-sending it is a no-op, a newer change diffs against it.
    let (_, answer) = post_signed(&relais, "msg_new2", &newer.to_string()).await;
    assert_eq!(answer["unchanged"], 1);
    let mut later = update(AUDIT_A, "M050", "dead", t0 + 9000);
    later["technician_name"] = json!("Sophie");
    later["technician_id"] = json!("tech_def456");
    later["comment"] = Value::Null;
    later.as_object_mut().unwrap().remove("updated_at");
    let (_, answer) = post_signed(&relais, "msg_later", &later.to_string()).await;
    assert_eq!(answer["published"], 1);
    let d = data(&sub.next_event(ARRIVE).await.expect("update"));
    assert_eq!(d["change"], "update");
    assert_eq!(d["changed"], json!(["comment", "status", "updated_at"]));
    assert_eq!(d["previous"]["status"], "ok");
    assert_eq!(d["previous"]["comment"], "Fissures visibles EL");
    assert_eq!(d["comment"], Value::Null);

    // Out of order inside one array: the older one is dropped too.
    let batch = json!([
        update(AUDIT_A, "M051", "dead", t0 + 2000),
        update(AUDIT_A, "M051", "ok", t0 + 1000),
    ]);
    let (_, answer) = post_signed(&relais, "msg_batch", &batch.to_string()).await;
    assert_eq!(
        answer,
        json!({"received": 2, "published": 1, "unchanged": 0, "stale": 1})
    );
    assert_eq!(
        data(&sub.next_event(ARRIVE).await.expect("M051"))["status"],
        "dead"
    );
    assert!(sub.next_event(QUIET).await.is_none());
}

#[tokio::test]
async fn arrays_rfc3339_timestamps_and_bearer_sources() {
    let relais = Relais::start(&env());
    let mut sub = subscriber(&relais, "audits/{token}").await;
    let mut a = update(AUDIT_B, "S1-15", "string_open", 0);
    a.as_object_mut().unwrap().remove("updated_at_ms");
    a["updated_at"] = json!("2025-10-24T16:23:15+02:00");
    let b = update(AUDIT_B, "M001", "not_connected", 1761315795000);
    let body = json!([a, b]).to_string();
    let url = "/hooks/hub/hubbearer";
    assert_eq!(
        post(
            &relais,
            url,
            &[("authorization", "Bearer nope")],
            "application/json",
            &body
        )
        .await
        .0,
        401
    );
    assert_eq!(
        post(&relais, url, &[], "application/json", &body).await.0,
        401
    );
    let (status, answer) = post(
        &relais,
        url,
        &[(
            "authorization",
            "Bearer hub-token-0123456789abcdef0123456789ab",
        )],
        "application/json",
        &body,
    )
    .await;
    assert_eq!(
        (status, answer["published"].as_u64()),
        (200, Some(2)),
        "{answer}"
    );
    let events = sub.events(2, ARRIVE).await;
    assert_eq!(events.len(), 2);
    let first = data(&events[0]);
    assert_eq!(first["source"], "hubbearer");
    assert_eq!(first["module_id"], "S1-15");
    assert_eq!(first["updated_at"], "2025-10-24T14:23:15Z");
    assert_eq!(data(&events[1])["module_id"], "M001");
}

#[tokio::test]
async fn every_refusal_says_why_and_changes_nothing() {
    let mut env = env();
    env.push(("RELAIS_SERVER__MAX_BODY_BYTES", "4096"));
    let relais = Relais::start(&env);
    let mut sub = subscriber(&relais, &format!("audits/{AUDIT_A}")).await;

    // 400 with the position (the signature is valid: the body is what is wrong).
    let (status, answer) =
        post_signed(&relais, "m1", "{\"audit_token\": \"x\",\n  \"status\" ok}").await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("line 2 column"),
        "{answer}"
    );

    // 422 naming the update and field; one bad update refuses the array.
    let mut bad = update(AUDIT_A, "M050", "ok", 1);
    bad["module_id"] = json!("module 50");
    let body = json!([update(AUDIT_A, "M049", "ok", 1), bad]).to_string();
    let (status, answer) = post_signed(&relais, "m2", &body).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["field"], "updates[1].module_id");
    let mut no_time = update(AUDIT_A, "M050", "ok", 1);
    no_time.as_object_mut().unwrap().remove("updated_at");
    no_time.as_object_mut().unwrap().remove("updated_at_ms");
    let (status, answer) = post_signed(&relais, "m3", &no_time.to_string()).await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (422, Some("update.updated_at"))
    );
    let (status, answer) = post_signed(
        &relais,
        "m4",
        &update(AUDIT_A, "M050", "broken", 1).to_string(),
    )
    .await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (422, Some("update.status"))
    );

    // 404, 413, 415.
    let ok_body = update(AUDIT_A, "M049", "ok", 1).to_string();
    let (status, _) = post(
        &relais,
        "/hooks/hub/nope",
        &[],
        "application/json",
        &ok_body,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = post(
        &relais,
        "/hooks/hub/cerema",
        &[(
            "authorization",
            "Bearer grist-token-0123456789abcdef0123456789",
        )],
        "application/json",
        &ok_body,
    )
    .await;
    assert_eq!(status, 404);
    let big: Vec<Value> = (0..40)
        .map(|i| update(AUDIT_A, &format!("M{i:03}"), "ok", 1))
        .collect();
    let (status, answer) = post_signed(&relais, "m5", &json!(big).to_string()).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (413, Some("payload_too_large"))
    );
    let (status, answer) = post(&relais, "/hooks/hub/diagpv", &[], "text/plain", &ok_body).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (415, Some("unsupported_media_type"))
    );

    assert!(
        sub.next_event(QUIET).await.is_none(),
        "a refused request published"
    );

    // Nothing stored: the good update of the refused array is still new.
    let (_, answer) = post_signed(&relais, "m6", &ok_body).await;
    assert_eq!(answer["published"], 1);
    assert_eq!(
        data(&sub.next_event(ARRIVE).await.expect("event"))["change"],
        "add"
    );
    assert!(!relais.logged("MfKQ9r8G"));
}
