//! `--state-records N`: the latency of `GET /state` once relais holds N records that match
//! the query (N Grist rows on the bench's source, standing in for an audit's modules:
//! one record each, its last event returned in the snapshot).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::http1::Http1;

/// What the measurement found.
#[derive(Debug)]
pub struct StateFigures {
    /// Records in each answer.
    pub records: usize,
    /// Bytes of each answer's body.
    pub bytes: usize,
    /// Latencies of the requests, sorted.
    pub latencies: Vec<Duration>,
}

impl StateFigures {
    fn quantile(&self, q: f64) -> Duration {
        let i = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
        self.latencies.get(i).copied().unwrap_or_default()
    }

    /// The summary lines.
    pub fn print(&self) {
        println!(
            "/state: {} records, {} bytes per answer, {} requests: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.records,
            self.bytes,
            self.latencies.len(),
            self.quantile(0.5).as_secs_f64() * 1e3,
            self.quantile(0.99).as_secs_f64() * 1e3,
            self.latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
    }
}

/// Posts `records` rows to the Grist hook (100 per request), then times `samples`
/// snapshots of `topic=interventions`, one after the other.
pub async fn measure(
    addr: SocketAddr,
    hook_path: &str,
    hook_auth: &str,
    subscribe_token: &str,
    records: usize,
    samples: usize,
) -> Result<StateFigures, String> {
    let mut http = Http1::new(addr);
    let mut id = 0usize;
    while id < records {
        let rows: Vec<String> = (id + 1..=(id + 100).min(records))
            .map(|i| {
                format!(
                    r#"{{"id":{i},"manualSort":{i},"ID":"M{i:05}","Agent":"Adrien","Localisation":"S{}-{}","Type":"module","Statut":"ok","Priorite":"Normale","Derniere_MAJ":1732000000,"Commentaire":""}}"#,
                    i / 100,
                    i % 100
                )
            })
            .collect();
        id += rows.len();
        let body = format!("[{}]", rows.join(","));
        let r = http
            .request(
                "POST",
                hook_path,
                &[
                    ("Content-Type", "application/json"),
                    ("Authorization", hook_auth),
                ],
                body.as_bytes(),
            )
            .await?;
        if r.status != 200 {
            return Err(format!("webhook answered {}", r.status));
        }
    }
    let auth = format!("Bearer {subscribe_token}");
    let mut latencies = Vec::with_capacity(samples);
    let mut bytes = 0;
    let mut count = 0;
    for _ in 0..samples {
        let started = Instant::now();
        let r = http
            .request(
                "GET",
                "/state?topic=interventions",
                &[("Authorization", &auth)],
                &[],
            )
            .await?;
        latencies.push(started.elapsed());
        if r.status != 200 {
            return Err(format!("/state answered {}", r.status));
        }
        bytes = r.body.len();
        count = memchr_count(&r.body);
    }
    latencies.sort();
    Ok(StateFigures {
        records: count,
        bytes,
        latencies,
    })
}

/// Records in an answer: occurrences of `"topics":`.
fn memchr_count(body: &[u8]) -> usize {
    memchr::memmem::find_iter(body, b"\"topics\":").count()
}
