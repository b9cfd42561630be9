//! Scale-out on Redis: two real relais processes on one real redis-server.

mod common;

use std::time::Duration;

use common::redis::RedisServer;
use common::*;

fn on(redis: &RedisServer) -> Relais {
    Relais::start(&[("RELAIS_REDIS__URL", redis.url().as_str())])
}

fn all() -> String {
    token("alice", &["*"], &["*"])
}

fn ids(events: Vec<relais::hub::sse::ParsedEvent>) -> Vec<String> {
    events.into_iter().map(|e| e.id).collect()
}

#[tokio::test]
async fn publish_on_one_instance_reaches_subscribers_of_both() {
    let redis = RedisServer::start();
    let (a, b) = (on(&redis), on(&redis));
    let tok = all();
    let mut on_a = SseClient::connect(&a, "topic=t", Some(&tok), &[]).await;
    let mut on_b = SseClient::connect(&b, "topic=t", Some(&tok), &[]).await;
    let e1 = publish_ok(&a, &tok, "t", "from a").await;
    let e2 = publish_ok(&b, &tok, "t", "from b").await;
    assert_eq!(ids(on_a.events(2, ARRIVE).await), [e1.clone(), e2.clone()]);
    assert_eq!(
        ids(on_b.events(2, ARRIVE).await),
        [e1, e2],
        "same order everywhere"
    );
    assert!(on_b.events(1, QUIET).await.is_empty(), "no duplicate");
    // Start-up lines are all written by now (events went through this instance).
    assert!(a.logged("store: Redis"));
}

#[tokio::test]
async fn drop_on_one_instance_and_resume_on_the_other() {
    let redis = RedisServer::start();
    let (a, b) = (on(&redis), on(&redis));
    let tok = all();
    let mut sub = SseClient::connect(&a, "topic=t", Some(&tok), &[]).await;
    let mut published = Vec::new();
    for i in 0..3 {
        published.push(publish_ok(&a, &tok, "t", &i.to_string()).await);
    }
    let seen = ids(sub.events(3, ARRIVE).await);
    assert_eq!(seen, published);
    drop(sub);
    let mut missed = Vec::new();
    for i in 3..8 {
        let target = if i % 2 == 0 { &a } else { &b };
        missed.push(publish_ok(target, &tok, "t", &i.to_string()).await);
    }
    let last = seen.last().unwrap().clone();
    let mut resumed =
        SseClient::connect(&b, "topic=t", Some(&tok), &[("Last-Event-ID", &last)]).await;
    assert!(
        resumed.headers.get("last-event-id").is_none(),
        "B knows A's IDs: no gap"
    );
    assert_eq!(ids(resumed.events(5, ARRIVE).await), missed);
    let live = publish_ok(&a, &tok, "t", "live").await;
    assert_eq!(ids(resumed.events(2, Duration::from_secs(1)).await), [live]);

    // A third instance started afterwards loads the history from Redis and resumes too.
    let c = on(&redis);
    let mut late = SseClient::connect(
        &c,
        "topic=t",
        Some(&tok),
        &[("Last-Event-ID", &published[0])],
    )
    .await;
    assert_eq!(late.events(8, ARRIVE).await.len(), 8);
}

#[tokio::test]
async fn publisher_ids_are_unique_across_instances() {
    let redis = RedisServer::start();
    let (a, b) = (on(&redis), on(&redis));
    let tok = all();
    assert_eq!(
        publish(&a, &tok, &[("topic", "t"), ("id", "x-1")])
            .await
            .status(),
        200
    );
    // The same update again is a retry (200, published once); other content, a
    // conflict; also for an ID shaped like the ones relais generates.
    assert_eq!(
        publish(&b, &tok, &[("topic", "t"), ("id", "x-1")])
            .await
            .status(),
        200
    );
    assert_eq!(
        publish(
            &b,
            &tok,
            &[("topic", "t"), ("id", "x-1"), ("data", "other")]
        )
        .await
        .status(),
        409
    );
    let generated_like = "urn:uuid:01900000-0000-7000-8000-000000000000";
    assert_eq!(
        publish(&a, &tok, &[("topic", "t"), ("id", generated_like)])
            .await
            .status(),
        200
    );
    assert_eq!(
        publish(
            &b,
            &tok,
            &[("topic", "t"), ("id", generated_like), ("data", "x")]
        )
        .await
        .status(),
        409
    );
    let mut sub = SseClient::connect(&a, "topic=t&lastEventID=earliest", Some(&tok), &[]).await;
    assert_eq!(sub.events(3, QUIET).await.len(), 2, "each published once");
}

#[tokio::test]
async fn redis_outage_gives_503_then_everything_acknowledged_is_delivered() {
    let mut redis = RedisServer::start();
    let (a, b) = (on(&redis), on(&redis));
    let tok = all();
    let mut sub_a = SseClient::connect(&a, "topic=t", Some(&tok), &[]).await;
    let mut sub_b = SseClient::connect(&b, "topic=t", Some(&tok), &[]).await;
    let mut acknowledged = vec![publish_ok(&a, &tok, "t", "before").await];
    assert_eq!(ids(sub_b.events(1, ARRIVE).await), acknowledged);

    redis.stop();
    let c = client();
    let mut refused = 0;
    for i in 0..5 {
        let r = publish(
            &a,
            &tok,
            &[("topic", "t"), ("data", &format!("during {i}"))],
        )
        .await;
        match r.status().as_u16() {
            200 => acknowledged.push(r.text().await.unwrap()),
            503 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        refused > 0,
        "publishes are refused with 503 while Redis is down"
    );
    let ready = c.get(format!("{}/readyz", b.base)).send().await.unwrap();
    assert_eq!(ready.status(), 503, "readyz reports the outage");

    redis.restart();
    // Publishing works again once the instances have reconnected.
    let mut after = None;
    for _ in 0..100 {
        let r = publish(&b, &tok, &[("topic", "t"), ("data", "after")]).await;
        if r.status() == 200 {
            after = Some(r.text().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    acknowledged.push(after.expect("publishing recovers after Redis restarts"));
    for _ in 0..50 {
        if c.get(format!("{}/readyz", a.base))
            .send()
            .await
            .unwrap()
            .status()
            == 200
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        c.get(format!("{}/readyz", a.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Subscribers stayed connected and get every acknowledged event, once, in order.
    let got_a = ids(sub_a
        .events(acknowledged.len(), Duration::from_secs(15))
        .await);
    assert_eq!(got_a, acknowledged);
    let got_b = ids(sub_b
        .events(acknowledged.len() - 1, Duration::from_secs(15))
        .await);
    assert_eq!(got_b, acknowledged[1..]);
}

fn grist_env(redis: &RedisServer) -> Vec<(&'static str, String)> {
    vec![
        ("RELAIS_REDIS__URL", redis.url()),
        ("RELAIS_SOURCES__CEREMA__KIND", "grist".into()),
        (
            "RELAIS_SOURCES__CEREMA__AUTHORIZATION",
            "Bearer grist-0123456789abcdef0123456789abcdef".into(),
        ),
    ]
}

fn start_grist(redis: &RedisServer) -> Relais {
    let env = grist_env(redis);
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Relais::start(&pairs)
}

fn grist_batch(statut: &str) -> String {
    let rows: Vec<serde_json::Value> = (1..=20)
        .map(|id| {
            serde_json::json!({
                "id": id, "manualSort": id, "ID": format!("INT-{id}"), "Agent": "Marie Durand",
                "Localisation": "Rue de Rome", "Type": "Voirie", "Statut": statut,
                "Priorite": "Normale", "Derniere_MAJ": 1732000000, "Commentaire": ""
            })
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

async fn post_grist(relais: &Relais, body: &str) -> u16 {
    client()
        .post(format!("{}/hooks/grist/cerema", relais.base))
        .header(
            "authorization",
            "Bearer grist-0123456789abcdef0123456789abcdef",
        )
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_same_grist_batch_on_two_instances_yields_one_event_per_row() {
    let redis = RedisServer::start();
    let (a, b) = (start_grist(&redis), start_grist(&redis));
    let tok = token("w", &["interventions"], &[]);
    let mut sub = SseClient::connect(&a, "topic=interventions", Some(&tok), &[]).await;
    let mut expected = 0;
    for statut in ["Planifiée", "En cours", "Terminé"] {
        let body = grist_batch(statut);
        // Grist's retries of one batch land on both instances at the same moment.
        let (ra, rb, ra2) = tokio::join!(
            post_grist(&a, &body),
            post_grist(&b, &body),
            post_grist(&a, &body)
        );
        assert_eq!((ra, rb, ra2), (200, 200, 200));
        expected += 20;
    }
    let events = sub.events(expected + 1, Duration::from_secs(5)).await;
    assert_eq!(
        events.len(),
        expected,
        "one event per row and change, whatever instance got it"
    );
    // The second batch's events are updates whose `previous` is the first batch's state.
    let second: serde_json::Value = serde_json::from_str(&events[20].data).unwrap();
    assert_eq!(second["change"], "update");
    assert_eq!(second["previous"]["status"], "Planifiée");
}

#[tokio::test]
async fn webhooks_get_503_while_redis_is_down_and_nothing_is_lost() {
    let mut redis = RedisServer::start();
    let a = start_grist(&redis);
    let tok = token("w", &["interventions"], &[]);
    let mut sub = SseClient::connect(&a, "topic=interventions", Some(&tok), &[]).await;
    let body = grist_batch("En cours");
    redis.stop();
    assert_eq!(post_grist(&a, &body).await, 503, "the sender must retry");
    redis.restart();
    let mut status = 0;
    for _ in 0..100 {
        status = post_grist(&a, &body).await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
    // The refused delivery stored nothing, so its retry is published in full, as adds.
    let events = sub.events(21, Duration::from_secs(5)).await;
    assert_eq!(events.len(), 20);
    let first: serde_json::Value = serde_json::from_str(&events[0].data).unwrap();
    assert_eq!(first["change"], "add");
}

#[tokio::test]
async fn a_snapshot_on_one_instance_then_the_stream_on_the_other_equal_the_final_state() {
    let redis = RedisServer::start();
    let (a, b) = (start_grist(&redis), start_grist(&redis));
    let tok = token("dashboard", &["interventions", "interventions/{id}"], &[]);
    let base = a.base.clone();
    let writer = tokio::spawn(async move {
        for round in 0..25 {
            let status = client()
                .post(format!("{base}/hooks/grist/cerema"))
                .header(
                    "authorization",
                    "Bearer grist-0123456789abcdef0123456789abcdef",
                )
                .header("content-type", "application/json")
                .body(grist_batch(&format!("étape {round}")))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 200);
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Snapshot on B while A ingests; stream on B from its lastEventID.
    let snapshot: serde_json::Value = client()
        .get(format!("{}/state?topic=interventions", b.base))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let last = snapshot["lastEventID"].as_str().unwrap().to_string();
    let mut view = std::collections::HashMap::new();
    for r in snapshot["records"].as_array().unwrap() {
        view.insert(
            r["data"]["row_id"].as_i64().unwrap(),
            r["data"]["status"].clone(),
        );
    }
    let mut sub = SseClient::connect(
        &b,
        &format!("topic=interventions&lastEventID={last}"),
        Some(&tok),
        &[],
    )
    .await;
    writer.await.unwrap();
    let done = serde_json::json!("étape 24");
    while view.len() < 20 || view.values().any(|s| *s != done) {
        let Some(event) = sub.next_event(Duration::from_secs(10)).await else {
            panic!("stream ended before the final state: {view:?}");
        };
        let d: serde_json::Value = serde_json::from_str(&event.data).unwrap();
        let row = d["row_id"].as_i64().unwrap();
        match view.get(&row) {
            Some(before) => assert_eq!(&d["previous"]["status"], before, "no gap, no duplicate"),
            None => assert_eq!(d["change"], "add"),
        }
        view.insert(row, d["status"].clone());
    }
    assert!(sub.events(1, QUIET).await.is_empty());
}
