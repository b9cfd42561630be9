//! The default single-binary store against the real binary: history and record state
//! survive a restart and `kill -9`, `/state` gives a snapshot consistent with the
//! stream, and Mercure publishing is idempotent by ID.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client, metrics_text, publish, token, Relais, SseClient, ARRIVE};
use serde_json::{json, Value};

const AUTH: &str = "Bearer durable-test-token-0123456789abcdef0123";

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("RELAIS_SOURCES__CEREMA__KIND", "grist"),
        ("RELAIS_SOURCES__CEREMA__AUTHORIZATION", AUTH),
    ]
}

fn row(id: i64, statut: &str, priorite: &str) -> Value {
    json!({
        "id": id, "manualSort": id, "ID": format!("INT-{id}"), "Agent": "Marie Durand",
        "Localisation": "Marseille", "Type": "Voirie", "Statut": statut,
        "Priorite": priorite, "Derniere_MAJ": 1732000000, "Commentaire": ""
    })
}

async fn post_rows(base: &str, rows: &[Value]) -> reqwest::Result<reqwest::Response> {
    client()
        .post(format!("{base}/hooks/grist/cerema"))
        .header("authorization", AUTH)
        .header("content-type", "application/json")
        .body(Value::Array(rows.to_vec()).to_string())
        .send()
        .await
}

fn reader() -> String {
    token("dashboard", &["interventions", "interventions/{id}"], &[])
}

async fn state(relais: &Relais, query: &str, tok: Option<&str>) -> (u16, Value) {
    let mut request = client().get(format!("{}/state?{query}", relais.base));
    if let Some(t) = tok {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.expect("state request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn data(e: &relais::hub::sse::ParsedEvent) -> Value {
    serde_json::from_str(&e.data).expect("JSON data")
}

#[tokio::test]
async fn a_subscriber_resumes_across_a_restart_and_records_keep_their_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut relais = Relais::start_in(dir.path(), &env(), None);
    // The start-up lines follow "listening on": wait for the store's.
    let mut announced = false;
    for _ in 0..50 {
        announced = relais.logged("store: on disk");
        if announced {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(announced, "the store is announced as on disk");
    let tok = reader();
    let mut sub = SseClient::connect(&relais, "topic=interventions", Some(&tok), &[]).await;
    let rows: Vec<Value> = (1..=5).map(|i| row(i, "En cours", "Urgente")).collect();
    assert_eq!(post_rows(&relais.base, &rows).await.unwrap().status(), 200);
    let before = sub.events(5, ARRIVE).await;
    assert_eq!(before.len(), 5);
    let last = before[4].id.clone();
    relais.terminate();
    drop(sub);

    let relais = Relais::start_in(dir.path(), &env(), None);
    // Changes made while the subscriber was away, after the restart.
    let after = vec![row(6, "En cours", "Normale"), row(1, "Terminée", "Urgente")];
    assert_eq!(post_rows(&relais.base, &after).await.unwrap().status(), 200);
    // An identical row is still absorbed after the restart (its state was reloaded).
    let body: Value = post_rows(&relais.base, &[row(2, "En cours", "Urgente")])
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["unchanged"], 1, "{body}");
    let mut sub = SseClient::connect(
        &relais,
        "topic=interventions",
        Some(&tok),
        &[("Last-Event-ID", &last)],
    )
    .await;
    assert!(sub.headers.get("last-event-id").is_none(), "no history gap");
    let resumed = sub.events(3, Duration::from_secs(2)).await;
    assert_eq!(resumed.len(), 2, "exactly what came after, nothing twice");
    assert_eq!(data(&resumed[0])["row_id"], 6);
    assert_eq!(data(&resumed[0])["change"], "add");
    // Row 1 was known before the restart: an update with its previous values, and it
    // stays urgent (priority is not among the changes, so no new alert).
    let update = data(&resumed[1]);
    assert_eq!(update["change"], "update", "{update}");
    assert_eq!(update["changed"], json!(["status"]));
    assert_eq!(update["previous"]["status"], "En cours");
    // The whole history is still there.
    let mut all = SseClient::connect(
        &relais,
        "topic=interventions&lastEventID=earliest",
        Some(&tok),
        &[],
    )
    .await;
    assert_eq!(all.events(8, Duration::from_secs(2)).await.len(), 7);
    let (status, snapshot) = state(&relais, "topic=interventions", Some(&tok)).await;
    assert_eq!(status, 200);
    assert_eq!(snapshot["records"].as_array().unwrap().len(), 6);
}

#[tokio::test]
async fn kill_9_during_webhooks_loses_nothing_acknowledged_and_no_half_batch() {
    let dir = tempfile::tempdir().unwrap();
    // Room for every record sent: past the default 50,000, the least recently changed
    // are forgotten (by design), and a fast machine acknowledges more within 1.5 s.
    let env = [
        env(),
        vec![("RELAIS_HUB__RECORD_STATE_CAPACITY", "2000000")],
    ]
    .concat();
    let mut relais = Relais::start_in(dir.path(), &env, None);
    let acked = Arc::new(AtomicUsize::new(0));
    let base = relais.base.clone();
    let counter = acked.clone();
    // Batches of 100 new rows, one after the other, each acknowledged or not.
    let sender = tokio::spawn(async move {
        for batch in 0..10_000i64 {
            let rows: Vec<Value> = (0..100)
                .map(|i| row(batch * 100 + i + 1, "En cours", "Normale"))
                .collect();
            match post_rows(&base, &rows).await {
                Ok(r) if r.status() == 200 => {
                    counter.store(batch as usize + 1, Ordering::SeqCst);
                }
                _ => return,
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    relais.kill();
    let _ = sender.await;
    let acknowledged = acked.load(Ordering::SeqCst);
    assert!(
        acknowledged > 0,
        "some batches were acknowledged before the kill"
    );

    let relais = Relais::start_in(dir.path(), &env, None);
    let (status, snapshot) = state(&relais, "topic=interventions", Some(&reader())).await;
    assert_eq!(status, 200);
    let mut per_batch: BTreeMap<i64, usize> = BTreeMap::new();
    for r in snapshot["records"].as_array().unwrap() {
        let row_id = r["data"]["row_id"].as_i64().unwrap();
        *per_batch.entry((row_id - 1) / 100).or_default() += 1;
    }
    for batch in 0..acknowledged as i64 {
        assert_eq!(
            per_batch.get(&batch),
            Some(&100),
            "acknowledged batch {batch}"
        );
    }
    for (batch, rows) in &per_batch {
        assert_eq!(*rows, 100, "batch {batch} is whole or absent");
        assert!(
            *batch <= acknowledged as i64,
            "at most the batch in flight beyond"
        );
    }
    // The history agrees with the record states.
    let mut all = SseClient::connect(
        &relais,
        "topic=interventions&lastEventID=earliest",
        Some(&reader()),
        &[],
    )
    .await;
    let total: usize = per_batch.values().sum();
    let events = all.events(total + 1, Duration::from_secs(5)).await;
    assert_eq!(events.len(), total.min(10_000));
}

/// The value of an unlabelled counter in `/metrics` (0 when absent).
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn concurrent_webhooks_share_commits_each_whole_and_acknowledged_ones_survive_kill_9() {
    const SENDERS: i64 = 8;
    const ROWS: i64 = 50;
    let dir = tempfile::tempdir().unwrap();
    let mut relais = Relais::start_in(dir.path(), &env(), None);
    // Batch b of sender t has rows (t * 10,000 + b) * 50 + 1..=50; every fifth, from the
    // second on, is bad (its last row lacks a column): refused alone, whatever is
    // committed with it.
    let batch_of = |row_id: i64| (row_id - 1) / ROWS;
    let acked = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let in_flight = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let refused = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let mut senders = Vec::new();
    for t in 0..SENDERS {
        let base = relais.base.clone();
        let (acked, in_flight, refused) = (acked.clone(), in_flight.clone(), refused.clone());
        senders.push(tokio::spawn(async move {
            for b in 0..10_000i64 {
                let batch = t * 10_000 + b;
                let bad = b % 5 == 1;
                let mut rows: Vec<Value> = (0..ROWS)
                    .map(|i| row(batch * ROWS + i + 1, "En cours", "Normale"))
                    .collect();
                if bad {
                    rows[ROWS as usize - 1]
                        .as_object_mut()
                        .unwrap()
                        .remove("Priorite");
                }
                in_flight.lock().unwrap().push(batch);
                match post_rows(&base, &rows).await {
                    Ok(r) if r.status() == 200 && !bad => acked.lock().unwrap().push(batch),
                    Ok(r) if bad => {
                        assert_eq!(r.status(), 422, "a bad batch is refused alone");
                        refused.lock().unwrap().push(batch);
                    }
                    Ok(r) => panic!("batch {batch} answered {}", r.status()),
                    Err(_) => return,
                }
                in_flight.lock().unwrap().retain(|&x| x != batch);
            }
        }));
    }
    // Kill while webhooks flow, once a few rounds went through (however loaded the
    // machine is).
    for _ in 0..400 {
        if acked.lock().unwrap().len() >= 4 * SENDERS as usize
            && refused.lock().unwrap().len() >= SENDERS as usize
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = metrics_text(&relais).await;
    relais.kill();
    for s in senders {
        s.await.expect("a sender failed");
    }
    let commits = counter(&metrics, "relais_store_commits_total");
    let requests = counter(&metrics, "relais_store_committed_requests_total");
    assert!(requests > 0, "requests were committed before the kill");
    assert!(
        commits < requests,
        "concurrent requests share transactions: {commits} commits for {requests} requests"
    );
    let acked = acked.lock().unwrap().clone();
    let in_flight = in_flight.lock().unwrap().clone();
    let refused = refused.lock().unwrap().clone();
    assert!(
        !refused.is_empty(),
        "bad batches were sent among the good ones"
    );

    let relais = Relais::start_in(dir.path(), &env(), None);
    let (status, snapshot) = state(&relais, "topic=interventions", Some(&reader())).await;
    assert_eq!(status, 200);
    let mut per_batch: BTreeMap<i64, i64> = BTreeMap::new();
    for r in snapshot["records"].as_array().unwrap() {
        *per_batch
            .entry(batch_of(r["data"]["row_id"].as_i64().unwrap()))
            .or_default() += 1;
    }
    for batch in &acked {
        assert_eq!(
            per_batch.get(batch),
            Some(&ROWS),
            "acknowledged batch {batch}"
        );
    }
    for (batch, rows) in &per_batch {
        assert_eq!(*rows, ROWS, "batch {batch} is whole or absent");
        assert!(
            acked.contains(batch) || in_flight.contains(batch),
            "batch {batch} was acknowledged or in flight at the kill"
        );
    }
    for batch in &refused {
        assert!(
            !per_batch.contains_key(batch),
            "refused batch {batch} left nothing"
        );
    }
}

#[tokio::test]
async fn state_answers_a_snapshot_that_the_stream_continues_without_gap_or_duplicate() {
    let relais = Relais::start(&env());
    let tok = reader();
    // Refusals, as for subscribing.
    assert_eq!(state(&relais, "topic=interventions", None).await.0, 401);
    assert_eq!(
        state(&relais, "topic=interventions", Some("not-a-token"))
            .await
            .0,
        401
    );
    let narrow = token("x", &["interventions/INT-1"], &[]);
    assert_eq!(
        state(&relais, "topic=interventions", Some(&narrow)).await.0,
        403
    );
    assert_eq!(state(&relais, "", Some(&tok)).await.0, 400);
    let empty = state(&relais, "topic=interventions", Some(&tok)).await.1;
    assert_eq!(empty, json!({"lastEventID": "earliest", "records": []}));
    // The token also travels as a query parameter or a cookie.
    let by_query = client()
        .get(format!(
            "{}/state?topic=interventions&authorization={tok}",
            relais.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.status(), 200);

    let base = relais.base.clone();
    let writer = tokio::spawn(async move {
        for round in 0..30 {
            let rows: Vec<Value> = (1..=20)
                .map(|i| row(i, &format!("étape {round}"), "Normale"))
                .collect();
            assert_eq!(post_rows(&base, &rows).await.unwrap().status(), 200);
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, snapshot) = state(&relais, "topic=interventions", Some(&tok)).await;
    assert_eq!(status, 200);
    let last = snapshot["lastEventID"].as_str().unwrap().to_string();
    let mut view: HashMap<i64, Value> = HashMap::new();
    for r in snapshot["records"].as_array().unwrap() {
        assert_eq!(r["type"], "intervention");
        assert!(r["topics"]
            .as_array()
            .unwrap()
            .contains(&json!("interventions")));
        view.insert(r["data"]["row_id"].as_i64().unwrap(), r["data"].clone());
    }
    let mut sub = SseClient::connect(
        &relais,
        &format!("topic=interventions&lastEventID={last}"),
        Some(&tok),
        &[],
    )
    .await;
    writer.await.unwrap();
    while view.len() < 20 || view.values().any(|v| v["status"] != "étape 29") {
        let Some(event) = sub.next_event(Duration::from_secs(5)).await else {
            panic!("stream ended before the final state: {view:?}");
        };
        let d = data(&event);
        let row_id = d["row_id"].as_i64().unwrap();
        if let Some(before) = view.get(&row_id) {
            // The next change of a row starts from the state the view holds.
            assert_eq!(
                d["previous"]["status"], before["status"],
                "no gap, no duplicate"
            );
        } else {
            assert_eq!(d["change"], "add");
        }
        view.insert(row_id, d);
    }
    assert!(sub.events(1, Duration::from_millis(500)).await.is_empty());
}

#[tokio::test]
async fn publishing_again_with_a_retained_id_is_idempotent_or_a_conflict() {
    let relais = Relais::start(&[]);
    let tok = token("app", &[], &["orders/{id}"]);
    let form = [
        ("topic", "orders/1"),
        ("data", "paid"),
        ("id", "urn:uuid:order-1-paid"),
    ];
    let first = publish(&relais, &tok, &form).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.text().await.unwrap(), "urn:uuid:order-1-paid");
    let retry = publish(&relais, &tok, &form).await;
    assert_eq!(retry.status(), 200, "a retry of the same update");
    assert_eq!(retry.text().await.unwrap(), "urn:uuid:order-1-paid");
    let other = publish(
        &relais,
        &tok,
        &[
            ("topic", "orders/1"),
            ("data", "refunded"),
            ("id", "urn:uuid:order-1-paid"),
        ],
    )
    .await;
    assert_eq!(other.status(), 409);
    let sub_tok = token("s", &["orders/{id}"], &[]);
    let mut sub = SseClient::connect(
        &relais,
        "topic=orders/1&lastEventID=earliest",
        Some(&sub_tok),
        &[],
    )
    .await;
    assert_eq!(
        sub.events(2, Duration::from_millis(800)).await.len(),
        1,
        "published once"
    );
}

#[tokio::test]
async fn a_grist_version_column_drops_late_deliveries_of_older_rows() {
    let mut env = env();
    env.push(("RELAIS_SOURCES__CEREMA__VERSION_COLUMN", "Derniere_MAJ"));
    let relais = Relais::start(&env);
    let at = |statut: &str, when: i64| {
        let mut r = row(3, statut, "Normale");
        r["Derniere_MAJ"] = json!(when);
        r
    };
    let answer = |r: reqwest::Response| async move { r.json::<Value>().await.unwrap() };
    let newer = answer(
        post_rows(&relais.base, &[at("Terminée", 1_732_000_200)])
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(newer["published"], 1);
    // Grist sends the batch that exhausted its retries after the newer one.
    let late = answer(
        post_rows(&relais.base, &[at("En cours", 1_732_000_100)])
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (late["published"].clone(), late["stale"].clone()),
        (json!(0), json!(1))
    );
    let (_, snapshot) = state(&relais, "topic=interventions", Some(&reader())).await;
    assert_eq!(snapshot["records"][0]["data"]["status"], "Terminée");
    // Without the column the late row wins, as documented.
    let plain = Relais::start(&self::env());
    post_rows(&plain.base, &[at("Terminée", 1_732_000_200)])
        .await
        .unwrap();
    let late = answer(
        post_rows(&plain.base, &[at("En cours", 1_732_000_100)])
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(late["published"], 1);
}

#[tokio::test]
async fn history_is_bounded_in_bytes_in_memory_and_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("RELAIS_HUB__HISTORY_BYTES", "1000000"),
        ("RELAIS_SERVER__MAX_BODY_BYTES", "2000000"),
    ];
    let mut relais = Relais::start_in(dir.path(), &env, None);
    let tok = token("app", &["big"], &["big"]);
    let big = "x".repeat(400_000);
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(common::publish_ok(&relais, &tok, "big", &big).await);
    }
    let replayed = |relais: &Relais| {
        let relais_url = relais.hub_url();
        let tok = tok.clone();
        async move {
            let response = client()
                .get(format!("{relais_url}?topic=big&lastEventID=earliest"))
                .bearer_auth(tok)
                .send()
                .await
                .unwrap();
            let mut stream = response.bytes_stream();
            let mut parser = relais::hub::sse::SseParser::new();
            let mut got = Vec::new();
            use futures::StreamExt;
            while let Ok(Some(Ok(chunk))) =
                tokio::time::timeout(Duration::from_millis(800), stream.next()).await
            {
                for item in parser.feed(&chunk) {
                    if let relais::hub::sse::Parsed::Event(e) = item {
                        got.push(e.id);
                    }
                }
            }
            got
        }
    };
    // 4 x 400 kB against 1 MB: the two newest stay, in memory...
    assert_eq!(replayed(&relais).await, ids[2..]);
    relais.terminate();
    // ...and on disk.
    let relais = Relais::start_in(dir.path(), &env, None);
    assert_eq!(replayed(&relais).await, ids[2..]);
}
