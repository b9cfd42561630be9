//! The publishing side: Grist-like rows (the CEREMA `Interventions` table, with
//! `manualSort` and a sequence marker in `Commentaire` so every row is a change), the
//! three ways of sending them (Mercure publish, Grist webhook, Pushpin's HTTP publish
//! endpoint) and the `burst` / `trickle` / `idle` loops.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::args::{Args, Workload};
use crate::http1::Http1;
use crate::latency::MAX_EVENTS;
use crate::subscribers::Shared;

const AGENTS: [&str; 4] = [
    "Marie Durand",
    "Karim Benali",
    "Sophie Martin",
    "Lucas Petit",
];
const STATUSES: [&str; 4] = ["En cours", "Terminé", "En attente", "Bloqué"];
const PRIORITIES: [&str; 4] = ["Basse", "Normale", "Haute", "Urgente"];
const TYPES: [&str; 3] = ["Voirie", "Signalisation", "Bâtiment"];

/// One row of the `Interventions` table as Grist sends it (storage encoding), for
/// benchmark sequence `seq`. Rows 1..=100 are updated over and over; the comment and the
/// timestamp change every time.
pub fn row(seq: u64, row_id: u64) -> serde_json::Value {
    let k = (seq as usize) % 4;
    json!({
        "id": row_id,
        "manualSort": row_id,
        "ID": format!("INT-2024-{row_id:03}"),
        "Agent": AGENTS[(row_id as usize) % 4],
        "Localisation": "Avenue de la République, Marseille",
        "Type": TYPES[(row_id as usize) % 3],
        "Statut": STATUSES[k],
        "Priorite": PRIORITIES[(k + row_id as usize) % 4],
        "Derniere_MAJ": 1_732_000_000 + seq,
        "Commentaire": format!("Nid-de-poule, passage {seq} BSEQ-{seq}"),
    })
}

/// How events are sent to the server under test.
pub enum Sender {
    /// relais, one Mercure publish per event.
    Mercure {
        /// Keep-alive connection.
        http: Http1,
        /// `Bearer <publish token>`.
        auth: String,
    },
    /// relais, one Grist webhook per batch (warm-up events go through Mercure).
    Grist {
        /// Keep-alive connection.
        http: Http1,
        /// `/hooks/grist/{source}`.
        path: String,
        /// The source's `Authorization` value.
        hook_auth: String,
        /// `Bearer <publish token>` for warm-up events.
        auth: String,
    },
    /// Pushpin's HTTP publish endpoint, one request per batch.
    Pushpin {
        /// Keep-alive connection to the handler's publish port.
        http: Http1,
        /// The GRIP channel subscribers hold.
        channel: String,
    },
}

fn expect_2xx(r: crate::http1::Response, what: &str) -> Result<(), String> {
    if (200..300).contains(&r.status) {
        Ok(())
    } else {
        Err(format!(
            "{what} answered {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body).trim()
        ))
    }
}

async fn mercure_publish(
    http: &mut Http1,
    auth: &str,
    topic: &str,
    data: &str,
) -> Result<(), String> {
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("topic", topic)
        .append_pair("type", "intervention")
        .append_pair("data", data)
        .finish();
    let r = http
        .request(
            "POST",
            "/.well-known/mercure",
            &[
                ("Authorization", auth),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            body.as_bytes(),
        )
        .await?;
    expect_2xx(r, "Mercure publish")
}

impl Sender {
    /// Sends events `first..first + count` as one batch (one request, or `count`
    /// Mercure publishes back to back), marking each send time.
    pub async fn publish(
        &mut self,
        shared: &Shared,
        first: u64,
        count: usize,
    ) -> Result<(), String> {
        let rows: Vec<(u64, serde_json::Value)> = (first..first + count as u64)
            .map(|seq| (seq, row(seq, seq % 100 + 1)))
            .collect();
        match self {
            Sender::Mercure { http, auth } => {
                for (seq, row) in rows {
                    let topic = format!("https://relais.bench/interventions/{}", row["id"]);
                    let data = row.to_string();
                    shared.send_log.mark(seq, shared.clock.now_ns());
                    mercure_publish(http, auth, &topic, &data).await?;
                    shared.sent.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Sender::Grist {
                http,
                path,
                hook_auth,
                ..
            } => {
                let body = serde_json::to_vec(&rows.iter().map(|(_, r)| r).collect::<Vec<_>>())
                    .unwrap_or_default();
                let now = shared.clock.now_ns();
                for (seq, _) in &rows {
                    shared.send_log.mark(*seq, now);
                }
                let r = http
                    .request(
                        "POST",
                        path,
                        &[
                            ("Authorization", hook_auth.as_str()),
                            ("Content-Type", "application/json"),
                        ],
                        &body,
                    )
                    .await?;
                expect_2xx(r, "Grist webhook")?;
                shared.sent.fetch_add(count as u64, Ordering::Relaxed);
                Ok(())
            }
            Sender::Pushpin { http, channel } => {
                let items: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|(seq, row)| {
                        json!({
                            "channel": channel,
                            "id": seq.to_string(),
                            "formats": {"http-stream": {"content":
                                format!("id: {seq}\nevent: intervention\ndata: {row}\n\n")}},
                        })
                    })
                    .collect();
                let body = serde_json::to_vec(&json!({ "items": items })).unwrap_or_default();
                let now = shared.clock.now_ns();
                for (seq, _) in &rows {
                    shared.send_log.mark(*seq, now);
                }
                let r = http
                    .request(
                        "POST",
                        "/publish/",
                        &[("Content-Type", "application/json")],
                        &body,
                    )
                    .await?;
                expect_2xx(r, "Pushpin publish")?;
                shared.sent.fetch_add(count as u64, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Sends one warm-up event (not counted), to learn that every subscription is live.
    pub async fn warm(&mut self) -> Result<(), String> {
        match self {
            Sender::Mercure { http, auth } | Sender::Grist { http, auth, .. } => {
                mercure_publish(http, auth, "https://relais.bench/warm-up", "BWARM").await
            }
            Sender::Pushpin { http, channel } => {
                let body = json!({"items": [{"channel": channel,
                    "formats": {"http-stream": {"content": "event: warm\ndata: BWARM\n\n"}}}]});
                let r = http
                    .request(
                        "POST",
                        "/publish/",
                        &[("Content-Type", "application/json")],
                        body.to_string().as_bytes(),
                    )
                    .await?;
                expect_2xx(r, "Pushpin publish")
            }
        }
    }
}

/// What the publishing loop did.
#[derive(Debug, Default, Clone)]
pub struct Published {
    /// Events sent and acknowledged.
    pub events: u64,
    /// Clock time of the first send.
    pub first_send_ns: u64,
    /// Clock time the loop ended.
    pub end_ns: u64,
    /// Why publishing stopped early, if it did.
    pub stopped_early: Option<String>,
}

/// Waits until `shared.delivered` reaches `target`; gives up after `stall` without any
/// new delivery. Returns whether it was reached.
pub async fn wait_delivered(shared: &Shared, target: u64, stall: Duration) -> bool {
    let mut last = shared.delivered.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        let now = shared.delivered.load(Ordering::Relaxed);
        if now >= target {
            return true;
        }
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= stall {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs the workload against connected subscribers (`subscribers` of them).
pub async fn run(args: &Args, sender: &mut Sender, shared: &Shared, subscribers: u64) -> Published {
    let mut out = Published {
        first_send_ns: shared.clock.now_ns(),
        ..Published::default()
    };
    let start = Instant::now();
    let deadline = start + args.duration;
    let mut seq: u64 = 0;
    match args.workload {
        Workload::Idle => tokio::time::sleep(args.duration).await,
        Workload::Trickle => {
            let rate = args.effective_rate().unwrap_or(100.0).max(0.001);
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while Instant::now() < deadline && (seq as usize) < MAX_EVENTS {
                tick.tick().await;
                if let Err(e) = sender.publish(shared, seq, 1).await {
                    out.stopped_early = Some(e);
                    break;
                }
                seq += 1;
            }
        }
        Workload::Burst => {
            let batch = args.batch.max(1);
            let mut batches: u64 = 0;
            while Instant::now() < deadline && seq as usize + batch <= MAX_EVENTS {
                if let Some(rate) = args.rate {
                    let at = start
                        + Duration::from_secs_f64(
                            (batches * batch as u64) as f64 / rate.max(0.001),
                        );
                    tokio::time::sleep_until(at.into()).await;
                } else if batches >= args.window as u64 {
                    let older = (batches - args.window as u64) * batch as u64;
                    if !wait_delivered(shared, older * subscribers, args.drain).await {
                        out.stopped_early = Some(format!(
                            "deliveries stalled for {:?} with batches in flight",
                            args.drain
                        ));
                        break;
                    }
                }
                if let Err(e) = sender.publish(shared, seq, batch).await {
                    out.stopped_early = Some(e);
                    break;
                }
                seq += batch as u64;
                batches += 1;
            }
        }
    }
    let _ = seq;
    out.events = shared.sent.load(Ordering::Relaxed);
    out.end_ns = shared.clock.now_ns();
    out
}
