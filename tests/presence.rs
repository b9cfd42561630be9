//! Presence on one instance (Mercure active subscriptions): subscription events, the
//! subscriptions API, claims, payload, 1.0 form, switching off, forged publishes, and
//! `relais token --payload`. Real binary, real HTTP.

mod common;

use common::{
    client, presence_of, publish, technician, token, Relais, SseClient, ARRIVE, QUIET, TEST_SECRET,
};
use serde_json::Value;
use std::time::Duration;

fn q(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

async fn get(relais: &Relais, path: &str, token: Option<&str>) -> (u16, Value, String) {
    let mut request = client().get(format!("{}{}", relais.base, path));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
        content_type,
    )
}

/// Subscribes to `topics` with `token`, without other headers.
async fn subscribe(relais: &Relais, topics: &[&str], token: &str) -> SseClient {
    let pairs: Vec<(&str, &str)> = topics.iter().map(|t| ("topic", *t)).collect();
    SseClient::connect(relais, &q(&pairs), Some(token), &[]).await
}

fn doc(event: &relais::hub::sse::ParsedEvent) -> Value {
    serde_json::from_str(&event.data).expect("a JSON-LD document")
}

/// Waits for the next subscription event of `topic` with this `active` value.
async fn next_presence(sse: &mut SseClient, topic: &str, active: bool) -> Value {
    let deadline = tokio::time::Instant::now() + ARRIVE;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = sse
            .next_event(left)
            .await
            .unwrap_or_else(|| panic!("no subscription event for {topic} active={active}"));
        let d = doc(&event);
        if d["topic"] == topic && d["active"] == active {
            return d;
        }
    }
}

#[tokio::test]
async fn a_board_sees_technicians_arrive_and_leave_and_lists_them() {
    let relais = Relais::start(&[("RELAIS_HUB__PERSIST", "false")]);
    let board_token = technician("Board", "X");
    let mut board = subscribe(&relais, &[&presence_of("X")], &board_token).await;
    assert_eq!(board.status, 200);

    // Adrien opens the audit: the board sees him arrive, with his payload.
    let adrien = subscribe(&relais, &["audits/X"], &technician("Adrien", "X")).await;
    assert_eq!(adrien.status, 200);
    let arrived = next_presence(&mut board, "audits/X", true).await;
    assert_eq!(arrived["@context"], "https://mercure.rocks/");
    assert_eq!(arrived["type"], "Subscription");
    assert_eq!(arrived["payload"]["name"], "Adrien");
    let subscriber = arrived["subscriber"].as_str().unwrap().to_string();
    assert!(subscriber.starts_with("urn:uuid:"), "{subscriber}");
    let encoded = relais::hub::presence::encode(&subscriber);
    let iri = format!("/.well-known/mercure/subscriptions/audits%2FX/{encoded}");
    assert_eq!(arrived["id"], iri);

    // The API lists him (and the board's own subscription), in JSON-LD.
    let (status, list, content_type) = get(
        &relais,
        "/.well-known/mercure/subscriptions/audits%2FX",
        Some(&board_token),
    )
    .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(content_type, "application/ld+json");
    assert_eq!(list["type"], "Subscriptions");
    assert_eq!(list["id"], "/.well-known/mercure/subscriptions/audits%2FX");
    let subs = list["subscriptions"].as_array().unwrap();
    assert_eq!(subs.len(), 1, "{list}");
    assert_eq!(subs[0]["payload"]["name"], "Adrien");
    assert!(list["lastEventID"]
        .as_str()
        .unwrap()
        .starts_with("urn:uuid:"));

    // One subscription by its IRI.
    let (status, one, _) = get(&relais, &iri, Some(&board_token)).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["subscriber"], subscriber.as_str());
    assert_eq!(one["active"], true);
    assert!(one["lastEventID"].is_string());

    // The whole collection, for a claim covering it.
    let admin = token(
        "admin",
        &["/.well-known/mercure/subscriptions{/rest*}"],
        &[],
    );
    let (status, all, _) = get(&relais, "/.well-known/mercure/subscriptions", Some(&admin)).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["id"], "/.well-known/mercure/subscriptions");
    assert_eq!(all["subscriptions"].as_array().unwrap().len(), 2, "{all}");

    // Read the list and its position, then subscribe from it: the next change arrives,
    // nothing before it is replayed twice.
    let (_, list, _) = get(
        &relais,
        "/.well-known/mercure/subscriptions/audits%2FX",
        Some(&board_token),
    )
    .await;
    let position = list["lastEventID"].as_str().unwrap().to_string();
    let _eve = subscribe(&relais, &["audits/X"], &technician("Eve", "X")).await;
    let mut resumed = SseClient::connect(
        &relais,
        &q(&[("topic", &presence_of("X"))]),
        Some(&board_token),
        &[("Last-Event-ID", &position)],
    )
    .await;
    let first = resumed
        .next_event(ARRIVE)
        .await
        .expect("the change after the list");
    let first = doc(&first);
    assert_eq!(first["payload"]["name"], "Eve");
    assert_eq!(first["active"], true);

    // Adrien's tablet closes: the board sees him leave, the API forgets him.
    drop(adrien);
    let left = next_presence(&mut board, "audits/X", false).await;
    assert_eq!(left["subscriber"], subscriber.as_str());
    assert_eq!(left["payload"]["name"], "Adrien");
    let (status, gone, _) = get(&relais, &iri, Some(&board_token)).await;
    assert_eq!(status, 404, "{gone}");
}

#[tokio::test]
async fn claims_are_enforced() {
    let relais = Relais::start(&[("RELAIS_HUB__PERSIST", "false")]);
    let _y = subscribe(&relais, &["audits/Y"], &technician("Yann", "Y")).await;
    let x = technician("Xavier", "X");
    // A technician of audit X cannot list audit Y, nor everything.
    let (status, _, _) = get(
        &relais,
        "/.well-known/mercure/subscriptions/audits%2FY",
        Some(&x),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, _) = get(&relais, "/.well-known/mercure/subscriptions", Some(&x)).await;
    assert_eq!(status, 403);
    // Without a token: 401; with a bad one: 401.
    let (status, _, _) = get(
        &relais,
        "/.well-known/mercure/subscriptions/audits%2FX",
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, _) = get(
        &relais,
        "/.well-known/mercure/subscriptions/audits%2FX",
        Some("not-a-token"),
    )
    .await;
    assert_eq!(status, 401);
    // Audit X's list does not show Yann; an unknown subscription is a 404.
    let (status, list, _) = get(
        &relais,
        "/.well-known/mercure/subscriptions/audits%2FX",
        Some(&x),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["subscriptions"].as_array().unwrap().len(), 0, "{list}");
    let (status, _, _) = get(
        &relais,
        "/.well-known/mercure/subscriptions/audits%2FX/urn%3Auuid%3A00000000-0000-0000-0000-000000000000",
        Some(&x),
    )
    .await;
    assert_eq!(status, 404);
    // A board of audit X receives none of audit Y's subscription events.
    let mut board = subscribe(&relais, &[&presence_of("X"), "audits/X"], &x).await;
    assert_eq!(board.status, 200);
    let _y2 = subscribe(&relais, &["audits/Y"], &technician("Yvonne", "Y")).await;
    let seen = board.events(10, QUIET).await;
    assert!(
        seen.iter().all(|e| doc(e)["topic"] != "audits/Y"),
        "audit Y's presence leaked: {seen:?}"
    );
}

#[tokio::test]
async fn presence_topics_cannot_be_published_to() {
    let relais = Relais::start(&[("RELAIS_HUB__PERSIST", "false")]);
    let publisher = token("p", &[], &["*", "{+any}"]);
    for topic in [
        "/.well-known/mercure/subscriptions/audits%2FX/urn%3Auuid%3Aforged",
        "https://example.com/.well-known/mercure/subscriptions/x",
    ] {
        let response = publish(
            &relais,
            &publisher,
            &[
                ("topic", topic),
                ("data", r#"{"active":true}"#),
                ("private", "on"),
            ],
        )
        .await;
        assert_eq!(response.status(), 400, "{topic}");
        let body = response.text().await.unwrap();
        assert!(body.contains("reserved"), "{body}");
    }
}

#[tokio::test]
async fn mercure_1_subscriptions_take_the_match_type_form() {
    let relais = Relais::start(&[("RELAIS_HUB__PERSIST", "false")]);
    let watcher = token("w", &["/.well-known/mercure/subscriptions{/rest*}"], &[]);
    let mut board = subscribe(
        &relais,
        &["/.well-known/mercure/subscriptions{/rest*}"],
        &watcher,
    )
    .await;
    assert_eq!(board.status, 200);
    let access = common::access_token(&relais, "t", &[("audits/X", false)], &[]);
    let _t = SseClient::connect(&relais, &q(&[("match", "audits/X")]), Some(&access), &[]).await;
    let arrived = next_presence(&mut board, "audits/X", true).await;
    assert_eq!(arrived["match_type"], "exact");
    let id = arrived["id"].as_str().unwrap();
    assert!(
        id.starts_with("/.well-known/mercure/subscriptions/exact/audits%2FX/urn%3Auuid%3A"),
        "{id}"
    );
}

#[tokio::test]
async fn presence_can_be_switched_off() {
    let relais = Relais::start(&[
        ("RELAIS_HUB__PERSIST", "false"),
        ("RELAIS_HUB__SUBSCRIPTIONS", "false"),
    ]);
    let watcher = token("w", &["/.well-known/mercure/subscriptions{/rest*}"], &[]);
    let mut board = subscribe(
        &relais,
        &["/.well-known/mercure/subscriptions{/rest*}"],
        &watcher,
    )
    .await;
    let _t = subscribe(&relais, &["audits/X"], &technician("A", "X")).await;
    assert!(board.next_event(QUIET).await.is_none());
    let (status, _, _) = get(
        &relais,
        "/.well-known/mercure/subscriptions",
        Some(&watcher),
    )
    .await;
    assert_eq!(status, 404);
}

#[test]
fn relais_token_sets_the_payload() {
    let state = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_relais"))
            .args(["token", "--sub", "adrien", "--subscribe", "audits/X"])
            .args(extra)
            .env("RELAIS_JWT__SECRET", TEST_SECRET)
            .env("RELAIS_SERVER__STATE_DIR", state.path())
            .env("RELAIS_SERVER__PUBLIC_URL", "https://relais.example.org")
            .output()
            .unwrap()
    };
    let claims = |out: std::process::Output| -> Value {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).unwrap();
        let part = token.trim().split('.').nth(1).unwrap().to_string();
        use base64::Engine;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    let v0 = claims(run(&["--payload", r#"{"name":"Adrien"}"#]));
    assert_eq!(v0["mercure"]["payload"]["name"], "Adrien");
    let v1 = claims(run(&[
        "--format",
        "1.0",
        "--payload",
        r#"{"name":"Adrien"}"#,
    ]));
    assert_eq!(v1["mercure"]["payload"]["name"], "Adrien");
    let bad = run(&["--payload", "{name"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--payload must be JSON"));
}

#[tokio::test]
async fn a_restart_after_a_crash_ends_the_subscriptions_left_from_before() {
    let state = tempfile::tempdir().unwrap();
    let mut relais = Relais::start_in(state.path(), &[], None);
    let publisher = token("p", &[], &["audits/X"]);
    let before = common::publish_ok(&relais, &publisher, "audits/X", "{}").await;
    let board_token = technician("Board", "X");
    let mut board = subscribe(&relais, &[&presence_of("X")], &board_token).await;
    let _tablet = subscribe(&relais, &["audits/X"], &technician("Adrien", "X")).await;
    let arrived = next_presence(&mut board, "audits/X", true).await;
    // Let the list reach the disk, then crash.
    tokio::time::sleep(Duration::from_millis(300)).await;
    relais.kill();

    let relais = Relais::start_in(state.path(), &[], None);
    let (status, list, _) = get(
        &relais,
        "/.well-known/mercure/subscriptions/audits%2FX",
        Some(&board_token),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["subscriptions"].as_array().unwrap().len(), 0, "{list}");
    // A board resuming from before the crash is told the tablet left.
    let mut resumed = SseClient::connect(
        &relais,
        &q(&[("topic", &presence_of("X"))]),
        Some(&board_token),
        &[("Last-Event-ID", &before)],
    )
    .await;
    let left = next_presence(&mut resumed, "audits/X", false).await;
    assert_eq!(left["subscriber"], arrived["subscriber"]);
    assert_eq!(left["payload"]["name"], "Adrien");
}
