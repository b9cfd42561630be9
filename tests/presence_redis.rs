//! Presence across instances: real relais processes on one real redis-server.

mod common;

use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::*;
use serde_json::Value;

const PRESENCE_X: &str = "/.well-known/mercure/subscriptions/audits%2FX{/subscriber}";

/// An instance on `redis` whose heartbeat is renewed every 200 ms and expires after
/// `ttl` (the defaults, 5 s and 20 s, would make the test slow).
fn on(redis: &RedisServer, ttl: &str) -> Relais {
    Relais::start(&[
        ("RELAIS_REDIS__URL", redis.url().as_str()),
        ("RELAIS_REDIS__PRESENCE_HEARTBEAT", "200ms"),
        ("RELAIS_REDIS__PRESENCE_TTL", ttl),
    ])
}

fn q(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

async fn board(relais: &Relais) -> SseClient {
    let sse = SseClient::connect(
        relais,
        &q(&[("topic", PRESENCE_X)]),
        Some(&technician("Board", "X")),
        &[],
    )
    .await;
    assert_eq!(sse.status, 200);
    sse
}

async fn tablet(relais: &Relais, name: &str) -> SseClient {
    let sse = SseClient::connect(
        relais,
        &q(&[("topic", "audits/X")]),
        Some(&technician(name, "X")),
        &[],
    )
    .await;
    assert_eq!(sse.status, 200);
    sse
}

/// The next subscription event on `audits/X` (skipping the boards' own).
async fn next_change(sse: &mut SseClient, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = sse.next_event(left).await?;
        let doc: Value = serde_json::from_str(&event.data).expect("JSON-LD");
        if doc["topic"] == "audits/X" {
            return Some(doc);
        }
    }
}

/// Names of the technicians listed on audit X by `relais`.
async fn listed(relais: &Relais) -> Vec<String> {
    let response = client()
        .get(format!(
            "{}/.well-known/mercure/subscriptions/audits%2FX",
            relais.base
        ))
        .bearer_auth(technician("Board", "X"))
        .send()
        .await
        .expect("list");
    assert_eq!(response.status(), 200);
    let list: Value = response.json().await.expect("JSON-LD");
    let mut names: Vec<String> = list["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["payload"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    names.sort();
    names
}

/// The `active: false` entries Redis holds for this subscriber (each one is published).
fn ends_in_redis(redis: &RedisServer, subscriber: &str) -> usize {
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let reply: ::redis::streams::StreamRangeReply = ::redis::cmd("XRANGE")
        .arg("relais:presence:events")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    reply
        .ids
        .iter()
        .filter(|entry| {
            entry.get::<String>("a").as_deref() == Some("0")
                && entry
                    .get::<String>("d")
                    .is_some_and(|d| d.contains(subscriber))
        })
        .count()
}

#[tokio::test]
async fn a_tablet_on_one_instance_is_seen_arriving_and_leaving_on_the_other() {
    let redis = RedisServer::start();
    let (a, b) = (on(&redis, "20s"), on(&redis, "20s"));
    let mut board_b = board(&b).await;
    let adrien = tablet(&a, "Adrien").await;
    let arrived = next_change(&mut board_b, ARRIVE)
        .await
        .expect("arrival seen on B");
    assert_eq!(arrived["active"], true);
    assert_eq!(arrived["payload"]["name"], "Adrien");
    assert_eq!(listed(&b).await, ["Adrien"]);
    assert_eq!(listed(&a).await, ["Adrien"]);
    // An instance started later lists him too (the union over instances).
    let c = on(&redis, "20s");
    assert_eq!(listed(&c).await, ["Adrien"]);

    drop(adrien);
    let left = next_change(&mut board_b, ARRIVE)
        .await
        .expect("departure seen on B");
    assert_eq!(left["active"], false);
    assert_eq!(left["subscriber"], arrived["subscriber"]);
    assert!(
        next_change(&mut board_b, QUIET).await.is_none(),
        "one end only"
    );
    assert!(listed(&b).await.is_empty());
    assert!(listed(&c).await.is_empty());
    let subscriber = arrived["subscriber"].as_str().unwrap();
    assert_eq!(ends_in_redis(&redis, subscriber), 1);
}

#[tokio::test]
async fn a_killed_instance_has_its_subscriptions_ended_once_by_the_survivors() {
    let redis = RedisServer::start();
    let mut a = on(&redis, "1s");
    let (b, c) = (on(&redis, "1s"), on(&redis, "1s"));
    let mut board_b = board(&b).await;
    let _vanishing = tablet(&a, "Tablet").await;
    let arrived = next_change(&mut board_b, ARRIVE)
        .await
        .expect("arrival seen on B");
    assert_eq!(listed(&c).await, ["Tablet"]);

    // Power cut: no goodbye.
    a.kill();
    let killed = Instant::now();
    let left = next_change(&mut board_b, Duration::from_secs(30))
        .await
        .expect("the vanished tablet is ended within 30 s");
    let took = killed.elapsed();
    assert_eq!(left["active"], false);
    assert_eq!(left["subscriber"], arrived["subscriber"]);
    assert!(took < Duration::from_secs(30), "{took:?}");
    // Two survivors sweep, one publishes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let subscriber = arrived["subscriber"].as_str().unwrap();
    assert_eq!(ends_in_redis(&redis, subscriber), 1, "ended exactly once");
    assert!(next_change(&mut board_b, QUIET).await.is_none());
    assert!(listed(&b).await.is_empty());
    assert!(listed(&c).await.is_empty());
}

#[tokio::test]
async fn a_clean_stop_ends_its_subscriptions_at_once() {
    let redis = RedisServer::start();
    // A heartbeat that would take a minute to expire: only the clean stop can end it.
    let mut a = on(&redis, "60s");
    let b = on(&redis, "60s");
    let mut board_b = board(&b).await;
    let _tablet = tablet(&a, "Tablet").await;
    next_change(&mut board_b, ARRIVE).await.expect("arrival");
    assert!(a.terminate().success());
    let left = next_change(&mut board_b, ARRIVE)
        .await
        .expect("ended when its instance stopped");
    assert_eq!(left["active"], false);
    assert!(listed(&b).await.is_empty());
}
