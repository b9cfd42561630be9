//! The publishing side: Grist-like rows (the CEREMA `Interventions` table, with
//! `manualSort` and a sequence marker in `Commentaire` so every row is a change), the
//! ways of sending them (Mercure publish, Grist webhook, Pushpin's HTTP publish endpoint,
//! the `bare` peer's publish endpoint) and the `burst` / `trickle` / `topics` / `idle`
//! loops.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use serde_json::json;

use crate::args::{Args, Workload};
use crate::frames::PeerFrames;
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

/// The topic of topic number `k` (0-based): the Grist source's default
/// `interventions/{id}` of the row whose `id` is `k + 1`.
pub fn topic_of(k: u64) -> String {
    format!("interventions/INT-2024-{:03}", k + 1)
}

/// The topic the warm-up event goes to (every subscriber listens to it).
pub const WARM_TOPIC: &str = "https://relais.bench/warm-up";

/// The row id of event `seq`: topics spread events over the T topics; the other
/// workloads update rows 1..=100 over and over.
pub fn row_id(seq: u64, topics: Option<u64>) -> u64 {
    seq % topics.unwrap_or(100) + 1
}

/// Deliveries that events `0..events` make when `subscribers` are spread over `topics`
/// (subscriber i on topic i mod T, event s on topic s mod T), or reach everyone.
pub fn expected_deliveries(events: u64, subscribers: u64, topics: Option<u64>) -> u64 {
    match topics {
        None => events * subscribers,
        Some(t) => {
            let t = t.max(1);
            let on = |j: u64| subscribers / t + u64::from(j < subscribers % t);
            let (cycles, rest) = (events / t, events % t);
            // Topics numbered `subscribers` and above have nobody when T > subscribers.
            let partial: u64 = (0..rest.min(subscribers)).map(on).sum();
            cycles * subscribers + partial
        }
    }
}

/// How events are sent to the server under test.
pub enum Sender {
    /// relais, one Mercure publish per event.
    Mercure {
        /// Keep-alive connection.
        http: Http1,
        /// `Bearer <publish token>`.
        auth: String,
        /// `topics`: the topic count.
        topics: Option<u64>,
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
        /// `topics`: the topic count.
        topics: Option<u64>,
    },
    /// Pushpin's HTTP publish endpoint, one request per batch.
    Pushpin {
        /// Keep-alive connection to the handler's publish port.
        http: Http1,
        /// The GRIP channel subscribers hold.
        channel: String,
        /// `topics`: events go to channel `topic_of(seq mod T)` instead.
        topics: Option<u64>,
        /// The frames relais would write for the same events.
        frames: PeerFrames,
    },
    /// The `bare` peer: pre-encoded frames with their topic, one request per batch.
    Bare {
        /// Keep-alive connection to the bare server.
        http: Http1,
        /// `topics`: the topic count, else every event goes to every subscriber.
        topics: Option<u64>,
        /// The frames relais would write for the same events.
        frames: PeerFrames,
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
    /// The same sender on a connection of its own.
    pub fn fresh(&self) -> Sender {
        match self {
            Sender::Mercure { http, auth, topics } => Sender::Mercure {
                http: http.fresh(),
                auth: auth.clone(),
                topics: *topics,
            },
            Sender::Grist {
                http,
                path,
                hook_auth,
                auth,
                topics,
            } => Sender::Grist {
                http: http.fresh(),
                path: path.clone(),
                hook_auth: hook_auth.clone(),
                auth: auth.clone(),
                topics: *topics,
            },
            Sender::Pushpin {
                http,
                channel,
                topics,
                frames,
            } => Sender::Pushpin {
                http: http.fresh(),
                channel: channel.clone(),
                topics: *topics,
                frames: frames.clone(),
            },
            Sender::Bare {
                http,
                topics,
                frames,
            } => Sender::Bare {
                http: http.fresh(),
                topics: *topics,
                frames: frames.clone(),
            },
        }
    }

    fn topic_count(&self) -> Option<u64> {
        match self {
            Sender::Mercure { topics, .. }
            | Sender::Grist { topics, .. }
            | Sender::Pushpin { topics, .. }
            | Sender::Bare { topics, .. } => *topics,
        }
    }

    /// Sends events `first..first + count` as one batch (one request, or `count`
    /// Mercure publishes back to back), marking each send time.
    pub async fn publish(
        &mut self,
        shared: &Shared,
        first: u64,
        count: usize,
    ) -> Result<(), String> {
        let topics = self.topic_count();
        let rows: Vec<(u64, serde_json::Value)> = (first..first + count as u64)
            .map(|seq| (seq, row(seq, row_id(seq, topics))))
            .collect();
        match self {
            Sender::Mercure { http, auth, .. } => {
                for (seq, row) in rows {
                    let topic = topic_of(row_id(seq, topics) - 1);
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
            Sender::Bare {
                http,
                topics,
                frames,
            } => {
                let mut body = Vec::with_capacity(rows.len() * 1024);
                for (seq, row) in &rows {
                    let topic = match topics {
                        Some(t) => topic_of(seq % *t),
                        None => "*".to_string(),
                    };
                    let frame = frames.frame(*seq, row, *topics);
                    body.extend_from_slice(format!("{topic}\n{}\n", frame.len()).as_bytes());
                    body.extend_from_slice(frame.as_bytes());
                }
                let now = shared.clock.now_ns();
                for (seq, _) in &rows {
                    shared.send_log.mark(*seq, now);
                }
                let r = http.request("POST", "/publish", &[], &body).await?;
                expect_2xx(r, "bare publish")?;
                shared.sent.fetch_add(count as u64, Ordering::Relaxed);
                Ok(())
            }
            Sender::Pushpin {
                http,
                channel,
                topics,
                frames,
            } => {
                let items: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|(seq, row)| {
                        let channel = match topics {
                            Some(t) => topic_of(seq % *t),
                            None => channel.clone(),
                        };
                        json!({
                            "channel": channel,
                            "id": seq.to_string(),
                            "formats": {"http-stream": {"content": frames.frame(*seq, row, *topics)}},
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
            Sender::Mercure { http, auth, .. } | Sender::Grist { http, auth, .. } => {
                mercure_publish(http, auth, WARM_TOPIC, "BWARM").await
            }
            Sender::Bare { http, .. } => {
                let frame = "event: warm\ndata: BWARM\n\n";
                let body = format!("{WARM_TOPIC}\n{}\n{frame}", frame.len());
                let r = http
                    .request("POST", "/publish", &[], body.as_bytes())
                    .await?;
                expect_2xx(r, "bare publish")
            }
            Sender::Pushpin { http, channel, .. } => {
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

/// A request for the pool: events `first..first + count`, and the free connection it
/// took.
type Job = (u64, usize, OwnedSemaphorePermit);

/// The publisher's connections (`--senders`): each takes the next request when it is
/// free, so up to that many are in flight at once.
struct Pool {
    jobs: mpsc::UnboundedSender<Job>,
    free: Arc<Semaphore>,
    failed: Arc<Mutex<Option<String>>>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    fn start(senders: Vec<Sender>, shared: Arc<Shared>) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel::<Job>();
        let queue = Arc::new(tokio::sync::Mutex::new(queue));
        let free = Arc::new(Semaphore::new(senders.len()));
        let failed = Arc::new(Mutex::new(None));
        let workers = senders
            .into_iter()
            .map(|mut sender| {
                let (queue, shared, failed) = (queue.clone(), shared.clone(), failed.clone());
                tokio::spawn(async move {
                    loop {
                        let job = queue.lock().await.recv().await;
                        let Some((first, count, permit)) = job else {
                            break;
                        };
                        let result = sender.publish(&shared, first, count).await;
                        drop(permit);
                        if let Err(e) = result {
                            failed
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                            break;
                        }
                    }
                })
            })
            .collect();
        Self {
            jobs,
            free,
            failed,
            workers,
        }
    }

    fn failure(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Hands events `first..first + count` to the next free connection (waiting for
    /// one); the error of a request that failed before, if any.
    async fn send(&self, first: u64, count: usize) -> Result<(), String> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let permit = self
            .free
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| "publisher pool closed".to_string())?;
        if let Some(e) = self.failure() {
            return Err(e);
        }
        self.jobs
            .send((first, count, permit))
            .map_err(|_| "publisher pool closed".to_string())
    }

    /// Waits for the requests in flight; the first error, if any.
    async fn finish(self) -> Option<String> {
        drop(self.jobs);
        for worker in self.workers {
            let _ = worker.await;
        }
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Runs the workload against connected subscribers (`subscribers` of them), publishing
/// through `senders` (one connection each, see `--senders`).
pub async fn run(
    args: &Args,
    senders: Vec<Sender>,
    shared: &Arc<Shared>,
    subscribers: u64,
) -> Published {
    let mut out = Published {
        first_send_ns: shared.clock.now_ns(),
        ..Published::default()
    };
    let start = Instant::now();
    let deadline = start + args.duration;
    let mut seq: u64 = 0;
    let pool = Pool::start(senders, shared.clone());
    match args.workload {
        Workload::Idle => tokio::time::sleep(args.duration).await,
        Workload::Trickle => {
            let rate = args.effective_rate().unwrap_or(100.0).max(0.001);
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while Instant::now() < deadline && (seq as usize) < MAX_EVENTS {
                tick.tick().await;
                if let Err(e) = pool.send(seq, 1).await {
                    out.stopped_early = Some(e);
                    break;
                }
                seq += 1;
            }
        }
        Workload::Burst | Workload::Topics => {
            let topics = args.topic_count();
            // A Grist batch holds distinct rows: at most one event per topic.
            let batch = args.batch.max(1).min(topics.unwrap_or(u64::MAX) as usize);
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
                    let target = expected_deliveries(older, subscribers, topics);
                    if !wait_delivered(shared, target, args.drain).await {
                        out.stopped_early = Some(format!(
                            "deliveries stalled for {:?} with batches in flight",
                            args.drain
                        ));
                        break;
                    }
                }
                if let Err(e) = pool.send(seq, batch).await {
                    out.stopped_early = Some(e);
                    break;
                }
                seq += batch as u64;
                batches += 1;
            }
        }
    }
    let _ = seq;
    if let Some(e) = pool.finish().await {
        out.stopped_early.get_or_insert(e);
    }
    out.events = shared.sent.load(Ordering::Relaxed);
    out.end_ns = shared.clock.now_ns();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_deliveries_follow_the_topics() {
        assert_eq!(expected_deliveries(10, 5, None), 50);
        // 10 subscribers on 10 topics: one each.
        assert_eq!(expected_deliveries(25, 10, Some(10)), 25);
        // 10 subscribers on 4 topics: 3, 3, 2, 2.
        assert_eq!(expected_deliveries(4, 10, Some(4)), 10);
        assert_eq!(expected_deliveries(6, 10, Some(4)), 16);
        // 3 subscribers on 10 topics: events to topics 3..9 reach nobody.
        assert_eq!(expected_deliveries(10, 3, Some(10)), 3);
        assert_eq!(expected_deliveries(12, 3, Some(10)), 5);
    }
}
