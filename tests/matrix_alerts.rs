//! Matrix / Tchap alerts against a real Synapse homeserver (started once for this test
//! binary on loopback, see `tests/common/matrix.rs`) and the real relais binary.
//!
//! Normalized events (with `change`, `changed`, `previous`, as ingestion produces them)
//! are published through Mercure publish, which goes through the same hub as webhooks.

mod common;
#[path = "common/matrix.rs"]
mod matrix;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{publish, token, Relais, SseClient, ARRIVE, QUIET};
use matrix::{synapse, Account, Synapse};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

/// How long a notice may take to reach the room when nothing is in the way.
const DELIVER: Duration = Duration::from_secs(20);

/// relais posting as `bot` to `room` on `homeserver`, with test pacing.
fn relais_for(homeserver: &str, bot: &Account, room: &str, extra: &[(&str, &str)]) -> Relais {
    let mut env = vec![
        ("RELAIS_MATRIX__HOMESERVER", homeserver),
        ("RELAIS_MATRIX__ACCESS_TOKEN", bot.token.as_str()),
        ("RELAIS_MATRIX__ROOM_ID", room),
        ("RELAIS_MATRIX__MIN_INTERVAL", "50ms"),
    ];
    env.extend_from_slice(extra);
    Relais::start(&env)
}

fn publisher() -> String {
    token("tests", &["*"], &["*"])
}

/// A normalized intervention event, as ingestion makes it from a Grist row.
fn intervention(id: u64, priority: &str, status: &str, change: &str, previous: Value) -> String {
    let changed: Vec<String> = previous
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    json!({
        "source": "cerema", "table": "Interventions", "row_id": id, "id": id,
        "agent": "Marie Durand", "location": "Avenue de la République", "type": "Voirie",
        "status": status, "priority": priority, "comment": "",
        "updated_at": "2026-01-01T10:00:00Z",
        "change": change, "changed": changed, "previous": previous,
    })
    .to_string()
}

/// Publishes an intervention event; returns its ID (panics unless 200).
async fn publish_intervention(relais: &Relais, data: &str) -> String {
    let response = publish(
        relais,
        &publisher(),
        &[
            ("topic", "interventions"),
            ("type", "intervention"),
            ("data", data),
        ],
    )
    .await;
    assert_eq!(response.status(), 200, "publish refused");
    response.text().await.expect("id")
}

fn urgent_body(id: u64, status: &str) -> String {
    format!("🚨 Intervention urgente #{id} — Avenue de la République (Marie Durand) : {status}")
}

fn bodies(notices: &[matrix::Notice]) -> Vec<String> {
    notices.iter().map(|n| n.body.clone()).collect()
}

/// Sum of the samples of `name` whose labels contain `labels` in relais' /metrics.
async fn metric(relais: &Relais, name: &str, labels: &str) -> f64 {
    let text = common::client()
        .get(format!("{}/metrics", relais.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| {
            l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until `name{labels}` reaches `at_least` (or `wait` passes); returns the value.
async fn wait_metric(
    relais: &Relais,
    name: &str,
    labels: &str,
    at_least: f64,
    wait: Duration,
) -> f64 {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let v = metric(relais, name, labels).await;
        if v >= at_least || tokio::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_urgent_intervention_posts_exactly_one_notice_and_updates_while_urgent_post_none() {
    let hs: &Synapse = synapse().await;
    let room = hs.room_for(&hs.bot).await;
    let relais = relais_for(&hs.base, &hs.bot, &room, &[]);

    // A normal intervention raises nothing; a new urgent one raises one notice.
    publish_intervention(
        &relais,
        &intervention(11, "Normale", "En cours", "add", json!({})),
    )
    .await;
    publish_intervention(
        &relais,
        &intervention(12, "Urgente", "En cours", "add", json!({})),
    )
    .await;
    let notices = hs.wait_notices(&room, &hs.bot, 1, DELIVER).await;
    assert_eq!(bodies(&notices), [urgent_body(12, "En cours")]);
    let notice = &notices[0];
    assert_eq!(notice.msgtype, "m.notice");
    assert_eq!(notice.format.as_deref(), Some("org.matrix.custom.html"));
    assert_eq!(
        notice.formatted_body.as_deref(),
        Some("<strong>🚨 Intervention urgente #12</strong> — Avenue de la République (Marie Durand) : <em>En cours</em>")
    );
    // Record text never pings the room: the notice mentions no one.
    assert_eq!(notice.mentions, Some(json!({})));

    // Updates while it stays urgent raise nothing.
    publish_intervention(
        &relais,
        &intervention(
            12,
            "Urgente",
            "Bloqué",
            "update",
            json!({"status": "En cours"}),
        ),
    )
    .await;
    publish_intervention(
        &relais,
        &intervention(
            12,
            "Urgente",
            "Terminé",
            "update",
            json!({"status": "Bloqué"}),
        ),
    )
    .await;
    // A sentinel that does raise an alert: alerts are posted in order, so once it is in
    // the room anything the updates had raised would be there too.
    publish_intervention(
        &relais,
        &intervention(13, "Urgente", "En attente", "add", json!({})),
    )
    .await;
    let notices = hs.wait_notices(&room, &hs.bot, 2, DELIVER).await;
    assert_eq!(
        bodies(&notices),
        [urgent_body(12, "En cours"), urgent_body(13, "En attente")]
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(hs.notices(&room, &hs.bot).await.len(), 2);
    assert_eq!(
        metric(&relais, "relais_matrix_sends_total", "result=\"ok\"").await,
        2.0
    );
    assert!(
        !relais.logged(&hs.bot.token),
        "the access token reached the logs"
    );
}

#[tokio::test]
async fn leaving_and_re_entering_the_urgent_state_posts_a_second_notice() {
    let hs = synapse().await;
    let room = hs.room_for(&hs.bot).await;
    let relais = relais_for(&hs.base, &hs.bot, &room, &[]);

    publish_intervention(
        &relais,
        &intervention(21, "Haute", "En cours", "add", json!({})),
    )
    .await;
    // Becomes urgent: first notice.
    publish_intervention(
        &relais,
        &intervention(
            21,
            "Urgente",
            "En cours",
            "update",
            json!({"priority": "Haute"}),
        ),
    )
    .await;
    // Leaves: nothing.
    publish_intervention(
        &relais,
        &intervention(
            21,
            "Normale",
            "En cours",
            "update",
            json!({"priority": "Urgente"}),
        ),
    )
    .await;
    // Re-enters: second notice.
    publish_intervention(
        &relais,
        &intervention(
            21,
            "Urgente",
            "Bloqué",
            "update",
            json!({"priority": "Normale", "status": "En cours"}),
        ),
    )
    .await;
    let notices = hs.wait_notices(&room, &hs.bot, 2, DELIVER).await;
    assert_eq!(
        bodies(&notices),
        [urgent_body(21, "En cours"), urgent_body(21, "Bloqué")]
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(hs.notices(&room, &hs.bot).await.len(), 2);
}

#[tokio::test]
async fn a_dead_module_posts_a_notice() {
    let hs = synapse().await;
    let room = hs.room_for(&hs.bot).await;
    let relais = relais_for(&hs.base, &hs.bot, &room, &[]);
    let data = json!({
        "source": "diagpv", "audit_token": "A-17", "module_id": "M050", "status": "dead",
        "comment": "diode <HS>", "technician": {"id": "t1", "name": "Adrien"},
        "updated_at": "2026-01-01T10:00:00Z",
        "change": "update", "changed": ["status", "comment"],
        "previous": {"status": "microcracks", "comment": ""},
    })
    .to_string();
    let response = publish(
        &relais,
        &publisher(),
        &[
            ("topic", "audits/A-17"),
            ("type", "module"),
            ("data", &data),
        ],
    )
    .await;
    assert_eq!(response.status(), 200);
    let notices = hs.wait_notices(&room, &hs.bot, 1, DELIVER).await;
    assert_eq!(
        bodies(&notices),
        ["⚠️ Module M050 marqué dead — audit A-17 (Adrien)\n💬 diode <HS>"]
    );
    assert_eq!(
        notices[0].formatted_body.as_deref(),
        Some("<strong>⚠️ Module M050 marqué dead</strong> — audit A-17 (Adrien)<br>💬 diode &lt;HS&gt;")
    );
}

#[tokio::test]
async fn rate_limited_sends_are_delayed_but_none_is_lost_or_doubled() {
    let hs = synapse().await;
    // bot429 keeps Synapse's default rc_message (0.2/s, burst 10).
    let room = hs.room_for(&hs.bot429).await;
    let relais = relais_for(
        &hs.base,
        &hs.bot429,
        &room,
        &[("RELAIS_MATRIX__MIN_INTERVAL", "10ms")],
    );
    let ids: Vec<u64> = (101..=112).collect();
    for id in &ids {
        publish_intervention(
            &relais,
            &intervention(*id, "Urgente", "En cours", "add", json!({})),
        )
        .await;
    }
    let notices = hs
        .wait_notices(&room, &hs.bot429, ids.len(), Duration::from_secs(90))
        .await;
    let expected: Vec<String> = ids.iter().map(|id| urgent_body(*id, "En cours")).collect();
    assert_eq!(bodies(&notices), expected, "every alert once, in order");
    let limited = metric(
        &relais,
        "relais_matrix_sends_total",
        "result=\"rate_limited\"",
    )
    .await;
    assert!(
        limited >= 1.0,
        "Synapse never answered 429 (rate_limited = {limited})"
    );
    assert!(relais.logged("rate limited by the homeserver (429)"));
    tokio::time::sleep(QUIET).await;
    assert_eq!(hs.notices(&room, &hs.bot429).await.len(), ids.len());
}

/// A TCP relay in front of Synapse that can be switched off: while down it accepts and
/// closes every connection at once (what a client sees of a crashed homeserver behind
/// its port), and counts them; while up it forwards bytes both ways.
struct Switch {
    url: String,
    up: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
}

async fn switch_to(target: &str) -> Switch {
    let target = target.trim_start_matches("http://").to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let up = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let (up2, refused2) = (up.clone(), refused.clone());
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            if !up2.load(Ordering::SeqCst) {
                refused2.fetch_add(1, Ordering::SeqCst);
                drop(inbound);
                continue;
            }
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Switch { url, up, refused }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_homeserver_that_is_down_delays_alerts_but_never_webhooks_publishes_or_streams() {
    let hs = synapse().await;
    let room = hs.room_for(&hs.bot).await;
    let switch = switch_to(&hs.base).await;
    let relais = relais_for(
        &switch.url,
        &hs.bot,
        &room,
        &[
            ("RELAIS_MATRIX__RETRY_INITIAL", "100ms"),
            ("RELAIS_MATRIX__RETRY_MAX", "400ms"),
            ("RELAIS_SOURCES__CEREMA__KIND", "grist"),
            (
                "RELAIS_SOURCES__CEREMA__AUTHORIZATION",
                "Bearer grist-hook-secret-0123456789abcdef01234",
            ),
        ],
    );
    let sub = token("dashboard", &["interventions"], &[]);
    let mut sse = SseClient::connect(&relais, "topic=interventions", Some(&sub), &[]).await;
    assert_eq!(sse.status, 200);

    // The homeserver is down: the publish is answered and the event streamed anyway.
    let first = publish_intervention(
        &relais,
        &intervention(31, "Urgente", "En cours", "add", json!({})),
    )
    .await;
    let got = sse
        .next_event(ARRIVE)
        .await
        .expect("SSE event while Matrix is down");
    assert_eq!(got.id, first);
    // relais has tried and failed (so the alert is pending, not lost)...
    let failed = wait_metric(
        &relais,
        "relais_matrix_sends_total",
        "result=\"error_retry\"",
        2.0,
        ARRIVE,
    )
    .await;
    assert!(
        failed >= 2.0,
        "relais did not retry ({failed} failed attempts)"
    );
    assert!(switch.refused.load(Ordering::SeqCst) >= 2);
    // ...and webhooks and the stream still flow while it keeps retrying.
    post_grist(&relais, json!([grist_row(32, "Urgente", "Bloqué")])).await;
    let got = sse
        .next_event(ARRIVE)
        .await
        .expect("second SSE event while Matrix is down");
    assert!(got.data.contains("INT-2024-032"), "{}", got.data);
    // The alert task sees the event beside the stream: wait for it rather than race it.
    assert_eq!(
        wait_metric(&relais, "relais_alerts_pending", "", 2.0, ARRIVE).await,
        2.0
    );
    assert!(hs.notices(&room, &hs.bot).await.is_empty());
    assert!(relais.logged("matrix: send failed"));

    // Back up: both alerts arrive, once each, in order.
    switch.up.store(true, Ordering::SeqCst);
    let notices = hs.wait_notices(&room, &hs.bot, 2, DELIVER).await;
    assert_eq!(
        bodies(&notices),
        [
            urgent_body(31, "En cours"),
            "🚨 Intervention urgente #INT-2024-032 — Avenue de la République, Marseille (Marie Durand) : Bloqué".to_string()
        ]
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(hs.notices(&room, &hs.bot).await.len(), 2);
    assert_eq!(metric(&relais, "relais_alerts_pending", "").await, 0.0);
}

#[tokio::test]
async fn a_room_the_bot_is_not_in_is_reported_and_not_retried_forever() {
    let hs = synapse().await;
    let room = hs.room_without_bot().await;
    let relais = relais_for(&hs.base, &hs.bot, &room, &[]);
    publish_intervention(
        &relais,
        &intervention(41, "Urgente", "En cours", "add", json!({})),
    )
    .await;
    publish_intervention(
        &relais,
        &intervention(42, "Urgente", "En cours", "add", json!({})),
    )
    .await;
    // Each alert is refused once (403 M_FORBIDDEN), reported and given up.
    let rejected = wait_metric(
        &relais,
        "relais_alerts_dropped_total",
        "reason=\"rejected\"",
        2.0,
        DELIVER,
    )
    .await;
    assert_eq!(rejected, 2.0);
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        metric(&relais, "relais_matrix_sends_total", "result=\"rejected\"").await,
        2.0
    );
    assert_eq!(metric(&relais, "relais_alerts_pending", "").await, 0.0);
    assert!(relais.logged("M_FORBIDDEN"));
    assert!(relais.logged("invite it and make it join"));
    assert!(
        !relais.logged(&hs.bot.token),
        "the access token reached the logs"
    );
}

/// A Grist row of the CEREMA `Interventions` table, as Grist's webhook sends it.
fn grist_row(row: u64, priority: &str, status: &str) -> Value {
    json!({
        "id": row, "manualSort": row, "ID": format!("INT-2024-{row:03}"),
        "Agent": "Marie Durand", "Localisation": "Avenue de la République, Marseille",
        "Type": "Voirie", "Statut": status, "Priorite": priority,
        "Derniere_MAJ": 1732000000, "Commentaire": "",
    })
}

async fn post_grist(relais: &Relais, rows: Value) {
    let response = common::client()
        .post(format!("{}/hooks/grist/cerema", relais.base))
        .header(
            "Authorization",
            "Bearer grist-hook-secret-0123456789abcdef01234",
        )
        .json(&rows)
        .send()
        .await
        .expect("webhook");
    assert_eq!(response.status(), 200, "webhook refused");
}

#[tokio::test]
async fn a_grist_row_turning_urgent_posts_one_notice_end_to_end() {
    let hs = synapse().await;
    let room = hs.room_for(&hs.bot).await;
    let relais = relais_for(
        &hs.base,
        &hs.bot,
        &room,
        &[
            ("RELAIS_SOURCES__CEREMA__KIND", "grist"),
            (
                "RELAIS_SOURCES__CEREMA__AUTHORIZATION",
                "Bearer grist-hook-secret-0123456789abcdef01234",
            ),
        ],
    );
    let body = |row: u64, status: &str| {
        format!(
            "🚨 Intervention urgente #INT-2024-{row:03} — Avenue de la République, Marseille (Marie Durand) : {status}"
        )
    };

    // A new urgent row: one notice.
    post_grist(&relais, json!([grist_row(12, "Urgente", "En cours")])).await;
    let notices = hs.wait_notices(&room, &hs.bot, 1, DELIVER).await;
    assert_eq!(bodies(&notices), [body(12, "En cours")]);

    // Grist retrying the same row, then the status changing while it stays urgent, then
    // a normal row: nothing. A second urgent row closes the sequence (alerts are posted
    // in order, so anything raised before it would be in the room by then).
    post_grist(&relais, json!([grist_row(12, "Urgente", "En cours")])).await;
    post_grist(
        &relais,
        json!([
            grist_row(12, "Urgente", "Bloqué"),
            grist_row(14, "Basse", "En cours")
        ]),
    )
    .await;
    post_grist(&relais, json!([grist_row(14, "Urgente", "En cours")])).await;
    let notices = hs.wait_notices(&room, &hs.bot, 2, DELIVER).await;
    assert_eq!(
        bodies(&notices),
        [body(12, "En cours"), body(14, "En cours")]
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(hs.notices(&room, &hs.bot).await.len(), 2);
}

/// relais on a Redis bus, posting as `bot`, with a fixed consumer name (`HOSTNAME`).
fn relais_on_redis(homeserver: &str, bot: &Account, room: &str, redis: &str, host: &str) -> Relais {
    relais_for(
        homeserver,
        bot,
        room,
        &[("RELAIS_REDIS__URL", redis), ("HOSTNAME", host)],
    )
}

#[tokio::test]
async fn with_redis_two_instances_send_each_alert_once_from_one_instance() {
    let hs: &Synapse = synapse().await;
    let room = hs.room_for(&hs.bot).await;
    let redis = common::redis::RedisServer::start();
    let a = relais_on_redis(&hs.base, &hs.bot, &room, &redis.url(), "instance-a");
    let b = relais_on_redis(&hs.base, &hs.bot, &room, &redis.url(), "instance-b");
    for id in [31, 32, 33] {
        let target = if id % 2 == 0 { &b } else { &a };
        publish_intervention(
            target,
            &intervention(id, "Urgente", "En cours", "add", json!({})),
        )
        .await;
    }
    let notices = hs.wait_notices(&room, &hs.bot, 3, DELIVER).await;
    // Published on two instances: the alerts may be posted in either order.
    let mut got = bodies(&notices);
    got.sort();
    assert_eq!(
        got,
        [
            urgent_body(31, "En cours"),
            urgent_body(32, "En cours"),
            urgent_body(33, "En cours")
        ]
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(hs.notices(&room, &hs.bot).await.len(), 3);
    // Both instances saw every event; the homeserver would hide a second send of the
    // same transaction, so count the sends themselves: three in all, not six.
    let sent = metric(&a, "relais_matrix_sends_total", "result=\"ok\"").await
        + metric(&b, "relais_matrix_sends_total", "result=\"ok\"").await;
    assert_eq!(sent, 3.0, "each alert is sent by one instance only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_a_pending_alert_survives_a_restart() {
    let hs: &Synapse = synapse().await;
    let room = hs.room_for(&hs.bot).await;
    let redis = common::redis::RedisServer::start();
    // First run: the homeserver address answers nothing, so the alert stays pending.
    let nowhere = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let mut first = relais_on_redis(&nowhere, &hs.bot, &room, &redis.url(), "instance-r");
    publish_intervention(
        &first,
        &intervention(41, "Urgente", "Bloqué", "add", json!({})),
    )
    .await;
    let failures = wait_metric(
        &first,
        "relais_matrix_sends_total",
        "result=\"error_retry\"",
        1.0,
        DELIVER,
    )
    .await;
    assert!(failures >= 1.0, "the first run tried and failed");
    tokio::task::block_in_place(|| first.terminate());

    // Second run, same instance, homeserver reachable: the alert kept in Redis goes out once.
    let second = relais_on_redis(&hs.base, &hs.bot, &room, &redis.url(), "instance-r");
    let notices = hs.wait_notices(&room, &hs.bot, 1, DELIVER).await;
    assert_eq!(bodies(&notices), [urgent_body(41, "Bloqué")]);
    tokio::time::sleep(QUIET).await;
    assert_eq!(hs.notices(&room, &hs.bot).await.len(), 1);
    assert_eq!(
        metric(&second, "relais_matrix_sends_total", "result=\"ok\"").await,
        1.0
    );
}

#[tokio::test]
async fn after_a_kill_and_restart_on_the_disk_store_a_record_that_stays_urgent_posts_nothing() {
    let hs = synapse().await;
    let room = hs.room_for(&hs.bot).await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("RELAIS_MATRIX__HOMESERVER", hs.base.as_str()),
        ("RELAIS_MATRIX__ACCESS_TOKEN", hs.bot.token.as_str()),
        ("RELAIS_MATRIX__ROOM_ID", room.as_str()),
        ("RELAIS_MATRIX__MIN_INTERVAL", "50ms"),
        ("RELAIS_SOURCES__CEREMA__KIND", "grist"),
        (
            "RELAIS_SOURCES__CEREMA__AUTHORIZATION",
            "Bearer grist-hook-secret-0123456789abcdef01234",
        ),
    ];
    let body = |row: u64, status: &str| {
        format!(
            "🚨 Intervention urgente #INT-2024-{row:03} — Avenue de la République, Marseille (Marie Durand) : {status}"
        )
    };
    // The disk store is the default (no RELAIS_HUB__PERSIST): the record states survive.
    let mut relais = Relais::start_in(dir.path(), &env, None);
    post_grist(&relais, json!([grist_row(31, "Urgente", "En cours")])).await;
    let notices = hs.wait_notices(&room, &hs.bot, 1, DELIVER).await;
    assert_eq!(bodies(&notices), [body(31, "En cours")]);
    relais.kill();

    let relais = Relais::start_in(dir.path(), &env, None);
    // Still urgent, another status: an update of a known record, no new alert. A
    // sentinel that does alert closes the sequence (notices are posted in order).
    post_grist(&relais, json!([grist_row(31, "Urgente", "Bloqué")])).await;
    post_grist(&relais, json!([grist_row(32, "Urgente", "En attente")])).await;
    let notices = hs.wait_notices(&room, &hs.bot, 2, DELIVER).await;
    assert_eq!(
        bodies(&notices),
        [body(31, "En cours"), body(32, "En attente")]
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(hs.notices(&room, &hs.bot).await.len(), 2);
}
