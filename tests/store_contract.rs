//! The store's contracts, run against the three backends: memory, disk (SQLite in a
//! temporary directory) and Redis (a real `redis-server`, two instances sharing it).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::redis::RedisServer;
use relais::config::Config;
use relais::hub::{EventDraft, Hub, ResumeFrom, Selector, Subscription};
use relais::ingest::record::StoredRecord;
use relais::store::{Batch, Known, Published, RecordWrite, Store, StoreError};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// One instance: its hub and its store.
struct Instance {
    hub: Arc<Hub>,
    store: Store,
}

/// A backend under test: one or two instances sharing the same data.
struct Backend {
    name: &'static str,
    a: Instance,
    b: Instance,
    _keep: Option<(RedisServer, CancellationToken)>,
    _dir: Option<tempfile::TempDir>,
}

fn hub() -> Arc<Hub> {
    Arc::new(Hub::new(1000, 4096))
}

async fn memory() -> Backend {
    let hub = hub();
    let store = Store::memory(hub.clone(), &Config::default());
    let a = Instance {
        hub: hub.clone(),
        store: store.clone(),
    };
    Backend {
        name: "memory",
        b: Instance { hub, store },
        a,
        _keep: None,
        _dir: None,
    }
}

/// A disk store on the default settings in `dir`, with a hub of its own: opened again on
/// the same directory, it reads back what it wrote.
async fn open_disk(dir: &std::path::Path) -> (Arc<Hub>, Store) {
    let mut config = Config::default();
    config.server.state_dir = Some(dir.to_path_buf());
    let hub = hub();
    let store = Store::open(&config, hub.clone(), CancellationToken::new())
        .await
        .unwrap();
    (hub, store)
}

async fn disk() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let (hub, store) = open_disk(dir.path()).await;
    let a = Instance {
        hub: hub.clone(),
        store: store.clone(),
    };
    Backend {
        name: "disk",
        b: Instance { hub, store },
        a,
        _keep: None,
        _dir: Some(dir),
    }
}

async fn redis() -> Backend {
    let server = RedisServer::start();
    let shutdown = CancellationToken::new();
    let mut config = Config::default();
    config.redis.url = Some(relais::config::Secret::new(server.url()));
    let open = || async {
        let hub = hub();
        let store = Store::open(&config, hub.clone(), shutdown.clone())
            .await
            .unwrap();
        Instance { hub, store }
    };
    let a = open().await;
    let b = open().await;
    Backend {
        name: "redis",
        a,
        b,
        _keep: Some((server, shutdown)),
        _dir: None,
    }
}

async fn backends() -> Vec<Backend> {
    vec![memory().await, disk().await, redis().await]
}

fn record(n: i64) -> StoredRecord {
    StoredRecord {
        values: std::sync::Arc::new([("n".to_string(), json!(n))].into()),
        version: None,
    }
}

/// A plan that increments counter `key` and publishes its new value on `c/{key}`.
fn increment(source: &'static str, key: String) -> impl Fn(&Known) -> Batch + Send + Sync {
    increment_all(source, vec![key])
}

/// A plan that increments each of `keys` in one batch, publishing each new value on
/// `c/{key}` (one event per record, in order).
fn increment_all(
    source: &'static str,
    keys: Vec<String>,
) -> impl Fn(&Known) -> Batch + Send + Sync {
    move |known: &Known| {
        let mut batch = Batch::default();
        for key in &keys {
            let n = known
                .get(key)
                .and_then(|r| r.values["n"].as_i64())
                .unwrap_or(0)
                + 1;
            batch.records.push(RecordWrite {
                key: key.clone(),
                state: record(n),
                event: Some(batch.events.len()),
            });
            batch.events.push(
                EventDraft::new(
                    vec!["c".into(), format!("c/{key}")],
                    json!({"key": key, "n": n}).to_string(),
                )
                .with_type("counter")
                .with_source(source),
            );
        }
        batch
    }
}

fn subscription(selectors: &[&str], claims: Option<&[&str]>) -> Subscription {
    let p = |v: &[&str]| v.iter().map(|s| Selector::parse(s).unwrap()).collect();
    Subscription {
        selectors: p(selectors),
        claims: claims.map(p),
    }
}

/// Waits until a hub holds `n` events (Redis instances read the stream asynchronously).
async fn retained(hub: &Hub, n: usize) {
    for _ in 0..200 {
        if hub.retained() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("hub holds {} events, expected {n}", hub.retained());
}

#[tokio::test]
async fn a_batch_commits_its_events_with_its_record_states() {
    for b in backends().await {
        let keys = vec!["1".to_string()];
        let plan = increment("s", "1".into());
        let done = b.a.store.ingest("s", &keys, &plan).await.unwrap();
        assert_eq!(done.published, 1, "{}", b.name);
        let known = b.b.store.load_records("s", &keys).await.unwrap();
        assert_eq!(known["1"], record(1), "{}", b.name);
        // Another source's record of the same key is another record.
        assert!(b.a.store.load_records("t", &keys).await.unwrap().is_empty());
        retained(&b.b.hub, 1).await;
        let replay = b.b.hub.attach(&ResumeFrom::Earliest).replay;
        assert_eq!(replay[0].event_type.as_deref(), Some("counter"));
        // A plan with nothing to do stores nothing.
        let nothing = |_: &Known| Batch {
            unchanged: 1,
            ..Batch::default()
        };
        let done = b.a.store.ingest("s", &keys, &nothing).await.unwrap();
        assert_eq!((done.published, done.unchanged), (0, 1), "{}", b.name);
    }
}

#[tokio::test]
async fn concurrent_deliveries_never_lose_an_update() {
    for b in backends().await {
        let keys = vec!["k".to_string()];
        let mut tasks = Vec::new();
        for i in 0..40 {
            let store = if i % 2 == 0 {
                b.a.store.clone()
            } else {
                b.b.store.clone()
            };
            let keys = keys.clone();
            tasks.push(tokio::spawn(async move {
                let plan = increment("s", "k".into());
                // Like a webhook sender, retry what was answered "unavailable" (Redis
                // gives up after a few conflicts in a row).
                loop {
                    match store.ingest("s", &keys, &plan).await {
                        Ok(done) => return done,
                        Err(StoreError::Unavailable(_)) => {
                            tokio::time::sleep(Duration::from_millis(5)).await
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let known = b.a.store.load_records("s", &keys).await.unwrap();
        assert_eq!(known["k"], record(40), "{}", b.name);
        retained(&b.a.hub, 40).await;
        let values: Vec<i64> =
            b.a.hub
                .attach(&ResumeFrom::Earliest)
                .replay
                .iter()
                .map(|e| {
                    serde_json::from_str::<serde_json::Value>(&e.data).unwrap()["n"]
                        .as_i64()
                        .unwrap()
                })
                .collect();
        assert_eq!(values, (1..=40).collect::<Vec<_>>(), "{}", b.name);
    }
}

#[tokio::test]
async fn publishing_is_idempotent_by_id() {
    for b in backends().await {
        // IDs of any shape are checked, generated-looking ones too.
        for id in ["order-1", "urn:uuid:0190c0de-0000-7000-8000-000000000001"] {
            let draft = EventDraft::new(vec!["t".into()], "x").with_id(id);
            let first = b.a.store.publish(draft.clone()).await.unwrap();
            assert_eq!(first, Published::New(id.into()), "{}", b.name);
            retained(&b.b.hub, 1).await;
            let again = b.b.store.publish(draft.clone()).await.unwrap();
            assert_eq!(again, Published::Repeated(id.into()), "{}", b.name);
            for other in [
                EventDraft::new(vec!["t".into()], "y").with_id(id),
                EventDraft::new(vec!["u".into()], "x").with_id(id),
                draft.clone().private(true),
                draft.clone().with_type("other"),
            ] {
                let refused = b.b.store.publish(other).await;
                assert!(
                    matches!(refused, Err(StoreError::Conflict(_))),
                    "{}: {refused:?}",
                    b.name
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(b.a.hub.retained(), 2, "{}: published once each", b.name);
        assert_eq!(b.b.hub.retained(), 2, "{}", b.name);
    }
}

#[tokio::test]
async fn a_snapshot_holds_the_last_event_of_each_visible_record() {
    for b in backends().await {
        let empty =
            b.a.store
                .snapshot(&subscription(&["*"], None))
                .await
                .unwrap();
        assert_eq!(empty.last_event_id, "earliest", "{}", b.name);
        assert!(empty.records.is_empty());
        for key in ["1", "2", "1"] {
            let keys = vec![key.to_string()];
            let plan = increment("s", key.into());
            b.a.store.ingest("s", &keys, &plan).await.unwrap();
        }
        // A private record of another source.
        let private = |_: &Known| Batch {
            events: vec![EventDraft::new(vec!["secret/9".into()], "{}").private(true)],
            records: vec![RecordWrite {
                key: "9".into(),
                state: record(9),
                event: Some(0),
            }],
            ..Batch::default()
        };
        b.a.store
            .ingest("p", &["9".into()], &private)
            .await
            .unwrap();
        retained(&b.b.hub, 4).await;
        let last = b.b.hub.attach(&ResumeFrom::Earliest).replay[3].id.clone();
        for instance in [&b.a, &b.b] {
            let snap = instance
                .store
                .snapshot(&subscription(&["c"], None))
                .await
                .unwrap();
            assert_eq!(snap.last_event_id, last, "{}", b.name);
            let mut seen: Vec<(String, i64)> = snap
                .records
                .iter()
                .map(|r| {
                    let v: serde_json::Value = serde_json::from_str(&r.data).unwrap();
                    (
                        v["key"].as_str().unwrap().to_string(),
                        v["n"].as_i64().unwrap(),
                    )
                })
                .collect();
            seen.sort();
            assert_eq!(seen, [("1".into(), 2), ("2".into(), 1)], "{}", b.name);
            let one = instance
                .store
                .snapshot(&subscription(&["c/2"], None))
                .await
                .unwrap();
            assert_eq!(one.records.len(), 1, "{}", b.name);
            assert_eq!(one.records[0].topics, ["c", "c/2"]);
            // Private records need a matching claim.
            let all = subscription(&["*"], None);
            assert_eq!(
                instance.store.snapshot(&all).await.unwrap().records.len(),
                2
            );
            let claimed = subscription(&["*"], Some(&["secret/{id}"]));
            assert_eq!(
                instance
                    .store
                    .snapshot(&claimed)
                    .await
                    .unwrap()
                    .records
                    .len(),
                3,
                "{}",
                b.name
            );
        }
    }
}

#[tokio::test]
async fn a_snapshot_then_its_stream_equal_the_final_state() {
    for b in backends().await {
        let writer = {
            let store = b.a.store.clone();
            tokio::spawn(async move {
                for i in 0..300 {
                    let key = format!("{}", i % 17);
                    let keys = vec![key.clone()];
                    let plan = increment("s", key);
                    store.ingest("s", &keys, &plan).await.unwrap();
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        // Snapshot on instance B while A ingests, then stream from its lastEventID on B.
        let snap =
            b.b.store
                .snapshot(&subscription(&["c"], None))
                .await
                .unwrap();
        b.b.store.catch_up().await;
        let from = relais::hub::ResumeFrom::parse(Some(&snap.last_event_id));
        let mut attach = b.b.hub.attach(&from);
        assert!(!attach.history_gap, "{}", b.name);
        writer.await.unwrap();
        let mut state: HashMap<String, i64> = HashMap::new();
        let name = b.name;
        let apply = |state: &mut HashMap<String, i64>, data: &str| {
            let v: serde_json::Value = serde_json::from_str(data).unwrap();
            let key = v["key"].as_str().unwrap().to_string();
            let n = v["n"].as_i64().unwrap();
            let before = state.insert(key.clone(), n).unwrap_or(0);
            // No gap, no duplicate: each change follows the one before.
            assert_eq!(n, before + 1, "{name}: record {key}");
        };
        for r in &snap.records {
            let v: serde_json::Value = serde_json::from_str(&r.data).unwrap();
            state.insert(
                v["key"].as_str().unwrap().to_string(),
                v["n"].as_i64().unwrap(),
            );
        }
        for e in &attach.replay {
            apply(&mut state, &e.data);
        }
        let mut seen = attach.replay.len();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while state.values().sum::<i64>() < 300 && tokio::time::Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(500), attach.live.recv()).await {
                Ok(Ok(e)) => {
                    apply(&mut state, &e.data);
                    seen += 1;
                }
                _ => continue,
            }
        }
        assert_eq!(
            state.values().sum::<i64>(),
            300,
            "{}: {seen} events",
            b.name
        );
        let final_state =
            b.a.store
                .load_records("s", &(0..17).map(|i| i.to_string()).collect::<Vec<_>>())
                .await
                .unwrap();
        for (key, n) in &state {
            assert_eq!(final_state[key], record(*n), "{}", b.name);
        }
    }
}

#[tokio::test]
async fn the_disk_store_reloads_history_and_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.state_dir = Some(dir.path().to_path_buf());
    config.hub.history_size = 5;
    let open = || async {
        let hub = Arc::new(Hub::new(5, 64));
        let store = Store::open(&config, hub.clone(), CancellationToken::new())
            .await
            .unwrap();
        (hub, store)
    };
    let (hub, store) = open().await;
    for i in 0..8 {
        let key = format!("{}", i % 3);
        let keys = vec![key.clone()];
        store
            .ingest("s", &keys, &increment("s", key))
            .await
            .unwrap();
    }
    let ids: Vec<String> = hub
        .attach(&ResumeFrom::Earliest)
        .replay
        .iter()
        .map(|e| e.id.clone())
        .collect();
    drop((hub, store));
    let (hub, store) = open().await;
    let reloaded: Vec<String> = hub
        .attach(&ResumeFrom::Earliest)
        .replay
        .iter()
        .map(|e| e.id.clone())
        .collect();
    assert_eq!(reloaded, ids, "the same last 5 events, in order");
    let known = store
        .load_records("s", &["0".into(), "1".into(), "2".into()])
        .await
        .unwrap();
    assert_eq!(
        (known["0"].clone(), known["1"].clone(), known["2"].clone()),
        (record(3), record(3), record(2))
    );
    let snap = store.snapshot(&subscription(&["c"], None)).await.unwrap();
    assert_eq!(snap.records.len(), 3);
    assert_eq!(&snap.last_event_id, ids.last().unwrap());
    // The next event continues the counters.
    store
        .ingest("s", &["2".into()], &increment("s", "2".into()))
        .await
        .unwrap();
    assert_eq!(
        store.load_records("s", &["2".into()]).await.unwrap()["2"],
        record(3)
    );
}

/// A transaction that fails (a trigger refuses it here, as a full disk would) refuses its
/// requests and every request planned on them, and changes nothing in memory or on
/// disk; once the disk takes writes again, requests commit from the durable states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_refuses_its_requests_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, store) = open_disk(dir.path()).await;
    let keys = vec!["k".to_string()];
    let plan = increment("s", "k".into());
    store.ingest("s", &keys, &plan).await.unwrap();

    let other = rusqlite::Connection::open(dir.path().join("store.sqlite")).unwrap();
    other
        .execute_batch(
            "CREATE TRIGGER full BEFORE INSERT ON batches BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
        )
        .unwrap();
    // Concurrent requests: some share a group, later ones plan on earlier ones.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (store, keys) = (store.clone(), keys.clone());
        tasks.push(tokio::spawn(async move {
            store.ingest("s", &keys, &increment("s", "k".into())).await
        }));
    }
    for task in tasks {
        let refused = task.await.unwrap();
        assert!(
            matches!(refused, Err(StoreError::Unavailable(_))),
            "{refused:?}"
        );
    }
    let draft = EventDraft::new(vec!["t".into()], "x").with_id("order-1");
    let refused = store.publish(draft.clone()).await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "{refused:?}"
    );
    assert_eq!(hub.retained(), 1, "no refused event reached the hub");
    assert_eq!(
        store.load_records("s", &keys).await.unwrap()["k"],
        record(1)
    );

    other.execute_batch("DROP TRIGGER full;").unwrap();
    store.ingest("s", &keys, &plan).await.unwrap();
    assert_eq!(
        store.publish(draft).await.unwrap(),
        Published::New("order-1".into()),
        "the refused ID was never published"
    );
    assert_eq!(
        store.load_records("s", &keys).await.unwrap()["k"],
        record(2)
    );
    assert_eq!(hub.retained(), 3);
    drop((hub, store));
    let (hub, store) = open_disk(dir.path()).await;
    assert_eq!(
        store.load_records("s", &keys).await.unwrap()["k"],
        record(2)
    );
    assert_eq!(hub.retained(), 3, "on disk as in memory");
}

/// The writer copies SQLite's write-ahead log into the database between transactions
/// (automatic checkpoints are off): without it the `-wal` file would grow with every
/// event ever written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_store_keeps_its_write_ahead_log_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (_hub, store) = open_disk(dir.path()).await;
    // 200 events of 100 KB that LZ4 cannot shrink: 20 MB through the log.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..200 {
        let mut data = String::with_capacity(100_016);
        while data.len() < 100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.push_str(&format!("{x:016x}"));
        }
        store
            .publish(EventDraft::new(vec!["t".into()], data))
            .await
            .unwrap();
    }
    let len = |name: &str| {
        std::fs::metadata(dir.path().join(name))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    // The last checkpoint may still be running on the writer thread.
    let mut waited = 0;
    while len("store.sqlite") < 4 << 20 && waited < 100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert!(
        len("store.sqlite") >= 4 << 20,
        "the log was copied into the database: {} bytes",
        len("store.sqlite")
    );
    assert!(
        len("store.sqlite-wal") < 10 << 20,
        "the log starts again once copied: {} bytes for 20 MB written",
        len("store.sqlite-wal")
    );
}

#[tokio::test]
async fn the_alert_queue_hands_out_what_was_pushed_and_forgets_it_once_acknowledged() {
    use relais::alerts::{Alert, Message};
    for b in backends().await {
        let (writer, mut reader) = b.a.store.alert_queue(10).await.unwrap();
        let alert = Alert::new(
            "ev-1",
            "urgent",
            Message {
                body: "b".into(),
                formatted_body: "h".into(),
            },
        );
        writer.push(alert.clone()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), reader.next())
            .await
            .unwrap();
        assert_eq!(got, Some(alert.clone()), "{}", b.name);
        reader.ack(&alert).await;
        if b.name == "redis" {
            // Shared: the other instance's writer sees it queued already (sent once).
            let (other, _) = b.b.store.alert_queue(10).await.unwrap();
            other.push(alert.clone()).await.unwrap();
            assert!(
                tokio::time::timeout(Duration::from_millis(300), reader.next())
                    .await
                    .is_err(),
                "queued once across instances"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_evicted_under_concurrent_deliveries_stay_on_disk_while_memory_holds_them() {
    // Memory holds 6 of 12 records; each delivery writes 3, so applying a group evicts
    // records. A record evicted by one group and written again by a later group
    // (committed, not yet applied) must not be deleted from disk by the group after it:
    // whatever memory holds, a restart must read back.
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.state_dir = Some(dir.path().to_path_buf());
    config.hub.record_state_capacity = 6;
    let store = Store::open(&config, hub(), CancellationToken::new())
        .await
        .unwrap();
    let db = rusqlite::Connection::open(dir.path().join("store.sqlite")).unwrap();
    let all: Vec<String> = (0..12).map(|k| k.to_string()).collect();
    for burst in 0..150usize {
        let mut tasks = Vec::new();
        for i in 0..8usize {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let keys: Vec<String> = (0..3)
                    .map(|k| ((burst * 5 + i * 7 + k) % 12).to_string())
                    .collect();
                let plan = increment_all("s", keys.clone());
                store.ingest("s", &keys, &plan).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Every request is answered, so every group is committed and applied.
        let held = store.load_records("s", &all).await.unwrap();
        let stored = relais::store::disk::read_records(&db).unwrap();
        for (key, state) in &held {
            let stored = stored
                .iter()
                .find(|(s, k, _)| s == "s" && k == key)
                .map(|(_, _, r)| &r.state);
            assert_eq!(stored, Some(state), "burst {burst}, record {key}");
        }
    }
}

#[tokio::test]
async fn a_new_redis_instance_loads_the_newest_history_from_entries_of_every_size() {
    // Each request is one stream entry: two webhooks of 100 events, then 120 single
    // publishes (more than a page of entries). A later instance must read back entries
    // until it holds the newest `history_size` events, whatever their grouping.
    let server = RedisServer::start();
    let shutdown = CancellationToken::new();
    let mut config = Config::default();
    config.redis.url = Some(relais::config::Secret::new(server.url()));
    config.hub.history_size = 150;
    let hub_a = Arc::new(Hub::new(150, 16));
    let a = Store::open(&config, hub_a.clone(), shutdown.clone())
        .await
        .unwrap();
    for batch in 0..2 {
        let keys: Vec<String> = (0..100).map(|k| format!("{batch}-{k}")).collect();
        let plan = increment_all("s", keys.clone());
        a.ingest("s", &keys, &plan).await.unwrap();
    }
    for i in 0..120 {
        let draft = EventDraft::new(vec!["t".into()], format!("single {i}"));
        a.publish(draft).await.unwrap();
    }
    retained(&hub_a, 150).await;
    let ids = |hub: &Hub| -> Vec<String> {
        hub.attach(&ResumeFrom::Earliest)
            .replay
            .iter()
            .map(|e| e.id.clone())
            .collect()
    };
    let hub_b = Arc::new(Hub::new(150, 16));
    let _b = Store::open(&config, hub_b.clone(), shutdown.clone())
        .await
        .unwrap();
    assert_eq!(hub_b.retained(), 150);
    assert_eq!(ids(&hub_b), ids(&hub_a));
    let first = hub_b.attach(&ResumeFrom::Earliest).replay[0]
        .data
        .to_string();
    assert!(first.contains("\"key\":\"1-70\""), "{first}");
    shutdown.cancel();
}
