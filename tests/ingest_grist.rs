//! Grist webhooks against the real binary: payloads shaped exactly like Grist's (a JSON
//! array of rows in storage encoding, with `manualSort`, a ChoiceList, a Ref, a
//! DateTime, formula errors), normalized `intervention` events, retries absorbed,
//! add/update diffs, and every refusal changing nothing.

mod common;

use common::{client, token, Relais, SseClient, ARRIVE, QUIET};
use relais::hub::sse::ParsedEvent;
use serde_json::{json, Value};

const AUTH: &str = "Bearer test-token-0123456789abcdef0123456789";

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("RELAIS_SOURCES__CEREMA__KIND", "grist"),
        ("RELAIS_SOURCES__CEREMA__AUTHORIZATION", AUTH),
        (
            "RELAIS_SOURCES__CEREMA__SECRET",
            "legacy-query-secret-0123456789abcdef",
        ),
        ("RELAIS_SOURCES__DIAGPV__KIND", "hub"),
        (
            "RELAIS_SOURCES__DIAGPV__AUTHORIZATION",
            "Bearer hub-token-0123456789abcdef0123456789ab",
        ),
    ]
}

/// One row as Grist sends it for the CEREMA `Interventions` table, plus a ChoiceList
/// (`Tags`), a Ref (`Equipe`, 0 = empty) and a formula column in error (`Duree`).
fn row(id: i64, statut: &str) -> Value {
    json!({
        "id": id,
        "manualSort": id as f64 + 0.5,
        "ID": format!("INT-2024-{id:03}"),
        "Agent": "Marie Durand",
        "Localisation": "Avenue de la République, Marseille",
        "Type": "Voirie",
        "Statut": statut,
        "Priorite": "Normale",
        "Derniere_MAJ": 1732000000.5,
        "Commentaire": "Nid-de-poule réparé",
        "Tags": ["L", "chaussée", "nuit"],
        "Equipe": 0,
        "Responsable": 3,
        "Duree": ["E", "TypeError", "unsupported operand type(s) for -: 'NoneType' and 'float'"]
    })
}

async fn post(relais: &Relais, path: &str, auth: Option<&str>, body: String) -> (u16, Value) {
    post_typed(relais, path, auth, "application/json", body).await
}

async fn post_typed(
    relais: &Relais,
    path: &str,
    auth: Option<&str>,
    content_type: &str,
    body: String,
) -> (u16, Value) {
    let mut request = client()
        .post(format!("{}{path}", relais.base))
        .header("content-type", content_type)
        .body(body);
    if let Some(a) = auth {
        request = request.header("authorization", a);
    }
    let response = request.send().await.expect("webhook request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("answer {status} is not JSON ({e}): {text:?}"));
    (status, value)
}

async fn subscriber(relais: &Relais, topic: &str) -> SseClient {
    let tok = token("dashboard", &["interventions", "interventions/{id}"], &[]);
    let client = SseClient::connect(relais, &format!("topic={topic}"), Some(&tok), &[]).await;
    assert_eq!(client.status, 200);
    client
}

/// Waits (bounded) for a log line containing `needle`.
async fn wait_logged(relais: &Relais, needle: &str) -> bool {
    for _ in 0..50 {
        if relais.logged(needle) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

fn data(event: &ParsedEvent) -> Value {
    serde_json::from_str(&event.data).expect("event data is JSON")
}

#[tokio::test]
async fn grist_row_reaches_interventions_subscribers_as_a_normalized_event() {
    let relais = Relais::start(&env());
    let mut all = subscriber(&relais, "interventions").await;
    let mut one = subscriber(&relais, "interventions/INT-2024-007").await;
    let mut other = subscriber(&relais, "interventions/INT-2024-008").await;

    let (status, body) = post(
        &relais,
        "/hooks/grist/cerema",
        Some(AUTH),
        json!([row(7, "En cours")]).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"received": 1, "published": 1, "unchanged": 0, "stale": 0})
    );

    let event = all
        .next_event(ARRIVE)
        .await
        .expect("event on interventions");
    assert_eq!(event.event_type, "intervention");
    assert!(event.id.starts_with("urn:uuid:"));
    let d = data(&event);
    assert_eq!(d["source"], "cerema");
    assert_eq!(d["table"], "Interventions");
    assert_eq!(d["row_id"], 7);
    assert_eq!(d["id"], "INT-2024-007");
    assert_eq!(d["agent"], "Marie Durand");
    assert_eq!(d["location"], "Avenue de la République, Marseille");
    assert_eq!(d["type"], "Voirie");
    assert_eq!(d["status"], "En cours");
    assert_eq!(d["priority"], "Normale");
    assert_eq!(d["comment"], "Nid-de-poule réparé");
    assert_eq!(d["updated_at"], "2024-11-19T07:06:40.5Z");
    assert_eq!(d["change"], "add");
    assert_eq!(d["previous"], json!({}));
    let changed = d["changed"].as_array().unwrap();
    for f in [
        "id",
        "agent",
        "status",
        "priority",
        "updated_at",
        "fields.Tags",
        "fields.Equipe",
    ] {
        assert!(changed.contains(&json!(f)), "{f} not in {changed:?}");
    }
    // fields: every raw column but manualSort, in Grist's storage encoding.
    let fields = d["fields"].as_object().unwrap();
    assert!(!fields.contains_key("manualSort"));
    assert_eq!(fields["Tags"], json!(["L", "chaussée", "nuit"]));
    assert_eq!(fields["Equipe"], json!(0));
    assert_eq!(fields["Responsable"], json!(3));
    assert_eq!(fields["Derniere_MAJ"], json!(1732000000.5));
    assert_eq!(fields["Duree"][0], "E");
    assert_eq!(fields["Statut"], "En cours");

    let same = one
        .next_event(ARRIVE)
        .await
        .expect("event on interventions/{id}");
    assert_eq!(same.id, event.id);
    assert!(
        other.next_event(QUIET).await.is_none(),
        "another intervention's topic got it"
    );

    // A formula error in a mapped column gives null there, the error stays in fields.
    let mut broken = row(8, "Terminé");
    broken["Commentaire"] = json!(["E", "NameError", "name 'x' is not defined"]);
    let (status, _) = post(
        &relais,
        "/hooks/grist/cerema",
        Some(AUTH),
        json!([broken]).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    let d = data(&all.next_event(ARRIVE).await.expect("second event"));
    assert_eq!(d["comment"], Value::Null);
    assert_eq!(d["fields"]["Commentaire"][1], "NameError");
    assert!(other.next_event(ARRIVE).await.is_some());

    // The log line says what happened without the credential.
    let metrics = common::metrics_text(&relais).await;
    assert!(
        metrics.contains("relais_webhook_requests_total{source=\"cerema\",status=\"200\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("relais_events_in_total{source=\"cerema\",type=\"intervention\"} 2"),
        "{metrics}"
    );
    assert!(relais.logged("webhook"));
    assert!(!relais.logged("test-token"));
}

#[tokio::test]
async fn retries_are_absorbed_and_updates_carry_changed_and_previous() {
    let relais = Relais::start(&env());
    let mut sub = subscriber(&relais, "interventions").await;
    let batch = json!([row(1, "En attente"), row(2, "En cours")]).to_string();
    let (status, body) = post(&relais, "/hooks/grist/cerema", Some(AUTH), batch.clone()).await;
    assert_eq!((status, body["published"].as_u64()), (200, Some(2)));
    let first = sub.events(2, ARRIVE).await;
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|e| data(e)["change"] == "add"));

    // Grist retries the same batch (at-least-once): acknowledged, nothing published.
    let (status, body) = post(&relais, "/hooks/grist/cerema", Some(AUTH), batch).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"received": 2, "published": 0, "unchanged": 2, "stale": 0})
    );
    assert!(
        sub.next_event(QUIET).await.is_none(),
        "a retry produced an event"
    );

    // Row 1 moves in the table (manualSort only): still nothing.
    let mut moved = row(1, "En attente");
    moved["manualSort"] = json!(42);
    let (_, body) = post(
        &relais,
        "/hooks/grist/cerema",
        Some(AUTH),
        json!([moved]).to_string(),
    )
    .await;
    assert_eq!(body["unchanged"], 1);

    // Row 1 really changes: an update naming what changed and the old values.
    let mut updated = row(1, "Terminé");
    updated["Priorite"] = json!("Urgente");
    updated["Tags"] = json!(["L", "nuit"]);
    let (_, body) = post(
        &relais,
        "/hooks/grist/cerema",
        Some(AUTH),
        json!([updated]).to_string(),
    )
    .await;
    assert_eq!(body["published"], 1);
    let d = data(&sub.next_event(ARRIVE).await.expect("update event"));
    assert_eq!(d["change"], "update");
    assert_eq!(d["row_id"], 1);
    assert_eq!(d["status"], "Terminé");
    assert_eq!(d["changed"], json!(["status", "priority", "fields.Tags"]));
    assert_eq!(
        d["previous"],
        json!({"status": "En attente", "priority": "Normale", "fields.Tags": ["L", "chaussée", "nuit"]})
    );
}

#[tokio::test]
async fn a_hundred_row_batch_is_accepted_and_a_hundred_and_one_refused() {
    let relais = Relais::start(&env());
    let mut sub = subscriber(&relais, "interventions").await;
    let hundred: Vec<Value> = (1..=100).map(|i| row(i, "En cours")).collect();
    let (status, body) = post(
        &relais,
        "/hooks/grist/cerema",
        Some(AUTH),
        json!(hundred).to_string(),
    )
    .await;
    assert_eq!((status, body["published"].as_u64()), (200, Some(100)));
    let events = sub.events(100, ARRIVE).await;
    assert_eq!(events.len(), 100);
    let row_ids: Vec<i64> = events
        .iter()
        .map(|e| data(e)["row_id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        row_ids,
        (1..=100).collect::<Vec<_>>(),
        "events keep the batch order"
    );

    let too_many: Vec<Value> = (101..=201).map(|i| row(i, "En cours")).collect();
    let (status, body) = post(
        &relais,
        "/hooks/grist/cerema",
        Some(AUTH),
        json!(too_many).to_string(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["field"], "body");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("at most 100 rows"),
        "{body}"
    );
    assert!(sub.next_event(QUIET).await.is_none());
}

#[tokio::test]
async fn every_refusal_says_why_and_changes_nothing() {
    let mut env = env();
    env.push(("RELAIS_SERVER__MAX_BODY_BYTES", "65536"));
    let relais = Relais::start(&env);
    let mut sub = subscriber(&relais, "interventions").await;
    let good = json!([row(1, "En cours")]).to_string();
    let url = "/hooks/grist/cerema";

    // 400: malformed JSON, with the position.
    let (status, body) = post(
        &relais,
        url,
        Some(AUTH),
        "[{\"id\": 1,\n \"Statut\": }]".into(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("line 2 column"),
        "{body}"
    );

    // 401: missing, wrong, or almost-right credentials.
    let (status, body) = post(&relais, url, None, good.clone()).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "unauthorized");
    assert_eq!(
        post(&relais, url, Some("Bearer wrong"), good.clone())
            .await
            .0,
        401
    );
    assert_eq!(
        post(&relais, url, Some("test-token"), good.clone()).await.0,
        401
    );
    assert_eq!(
        post(&relais, &format!("{url}?secret=nope"), None, good.clone())
            .await
            .0,
        401
    );

    // 404: unknown source, or a source of the other kind.
    let (status, body) = post(&relais, "/hooks/grist/nope", Some(AUTH), good.clone()).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    assert_eq!(
        post(
            &relais,
            "/hooks/grist/diagpv",
            Some("Bearer hub-token-0123456789abcdef0123456789ab"),
            good.clone()
        )
        .await
        .0,
        404
    );

    // 413: over server.max_body_bytes, answered in JSON.
    let big: Vec<Value> = (1..=100)
        .map(|i| {
            let mut r = row(i, "En cours");
            r["Commentaire"] = json!("x".repeat(700));
            r
        })
        .collect();
    let (status, body) = post(&relais, url, Some(AUTH), json!(big).to_string()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("payload_too_large"))
    );

    // 415: not JSON.
    let (status, body) = post_typed(&relais, url, Some(AUTH), "text/plain", good.clone()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (415, Some("unsupported_media_type"))
    );

    // 422: one bad row refuses the whole batch, naming the row and the column.
    let mut bad = row(4, "En cours");
    bad["Statut"] = json!(3);
    let batch = json!([
        row(1, "En cours"),
        row(2, "En cours"),
        row(3, "En cours"),
        bad
    ])
    .to_string();
    let (status, body) = post(&relais, url, Some(AUTH), batch).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["field"], "rows[3].Statut");
    assert_eq!(
        body["message"],
        "rows[3].Statut: expected text, found number"
    );
    let mut missing = row(5, "En cours");
    missing.as_object_mut().unwrap().remove("Priorite");
    let (status, body) = post(&relais, url, Some(AUTH), json!([missing]).to_string()).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (422, Some("rows[0].Priorite"))
    );
    let (status, body) = post(
        &relais,
        url,
        Some(AUTH),
        json!({"id": 1, "fields": {}}).to_string(),
    )
    .await;
    assert_eq!((status, body["field"].as_str()), (422, Some("body")));

    assert!(
        sub.next_event(QUIET).await.is_none(),
        "a refused request published"
    );

    // Nothing was stored either: the good rows of the refused batch are still new.
    let (status, body) = post(&relais, url, Some(AUTH), good).await;
    assert_eq!(status, 200);
    assert_eq!(body["published"], 1);
    let d = data(&sub.next_event(ARRIVE).await.expect("event"));
    assert_eq!(d["change"], "add");
    assert!(!relais.logged("test-token"));
}

#[tokio::test]
async fn older_grist_authenticates_with_the_secret_query_parameter() {
    let relais = Relais::start(&env());
    let mut sub = subscriber(&relais, "interventions").await;
    let (status, body) = post(
        &relais,
        "/hooks/grist/cerema?secret=legacy-query-secret-0123456789abcdef",
        None,
        json!([row(9, "Bloqué")]).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        data(&sub.next_event(ARRIVE).await.expect("event"))["status"],
        "Bloqué"
    );
    assert!(!relais.logged("legacy-query-secret-0123456789abcdef"));
}

#[tokio::test]
async fn column_mapping_topics_and_type_come_from_the_configuration_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relais.toml");
    std::fs::write(
        &file,
        r#"
[sources.chantiers]
kind = "grist"
authorization = "Bearer chantiers-0123456789abcdef0123456789ab"
table = "Chantiers"
topics = ["chantiers", "chantiers/{row_id}"]
event_type = "chantier"
private = true

[sources.chantiers.columns]
id = "Code"
status = "Etat"
comment = ""
"#,
    )
    .unwrap();
    let relais = Relais::start_with(&[("RELAIS_HUB__ALLOW_ANONYMOUS", "true")], Some(&file));
    assert!(
        wait_logged(
            &relais,
            "/hooks/grist/chantiers (auth: Authorization header"
        )
        .await,
        "start-up announces the webhook URL"
    );
    let tok = token("sup", &["chantiers/{n}"], &[]);
    let mut sub = SseClient::connect(&relais, "topic=chantiers/{n}", Some(&tok), &[]).await;
    let mut anonymous = SseClient::connect(&relais, "topic=chantiers", None, &[]).await;
    assert_eq!(anonymous.status, 200);
    let mut r = row(12, "unused");
    let r = r.as_object_mut().unwrap();
    r.remove("Statut");
    r.remove("ID");
    r.remove("Commentaire");
    r.insert("Code".into(), json!(1201));
    r.insert("Etat".into(), json!("Ouvert"));
    let (status, body) = post(
        &relais,
        "/hooks/grist/chantiers",
        Some("Bearer chantiers-0123456789abcdef0123456789ab"),
        json!([r]).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let event = sub.next_event(ARRIVE).await.expect("event on chantiers/12");
    assert_eq!(event.event_type, "chantier");
    let d = data(&event);
    assert_eq!(d["table"], "Chantiers");
    assert_eq!(d["id"], "1201");
    assert_eq!(d["status"], "Ouvert");
    assert_eq!(d["comment"], Value::Null);
    // Private: an anonymous subscriber of the same topic does not get it.
    assert!(anonymous.next_event(QUIET).await.is_none());
}

#[tokio::test]
async fn the_column_mapping_can_be_overridden_from_the_environment() {
    let mut env = env();
    env.push(("RELAIS_SOURCES__CEREMA__COLUMNS__STATUS", "Etat"));
    let relais = Relais::start(&env);
    let mut sub = subscriber(&relais, "interventions").await;
    let mut r = row(3, "ignored");
    r["Etat"] = json!("Bloqué");
    let (status, body) = post(
        &relais,
        "/hooks/grist/cerema",
        Some(AUTH),
        json!([r]).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let d = data(&sub.next_event(ARRIVE).await.expect("event"));
    assert_eq!(d["status"], "Bloqué");
    assert_eq!(d["fields"]["Statut"], "ignored");
}
