//! What one connection may hold, against the real binary: a subscriber that stops
//! reading is bounded (the replay is streamed in chunks as the socket takes them, never
//! built whole), is disconnected after `server.write_timeout`, and its stream still
//! closes when its token expires, even while a write is blocked.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures::StreamExt;
use relais::auth::TokenMinter;

/// Retained events and their payload size: 2,500 × 4 KB = 10 MB of history.
const RETAINED: usize = 2500;
const PAYLOAD: usize = 4000;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

async fn fill_history(relais: &Relais, tok: &str) {
    let payload = "x".repeat(PAYLOAD);
    let client = client();
    let url = relais.hub_url();
    let sent = futures::stream::iter(0..RETAINED)
        .map(|_| {
            let req = client
                .post(&url)
                .bearer_auth(tok)
                .form(&[("topic", "t"), ("data", payload.as_str())]);
            async move { req.send().await.map(|r| r.status().as_u16()) }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    assert!(sent.iter().all(|s| matches!(s, Ok(200))), "{sent:?}");
}

/// Opens a subscription that never reads (a small receive buffer, so the server's writes
/// block soon).
fn never_reading(relais: &Relais, tok: &str) -> TcpStream {
    let addr = relais.base.trim_start_matches("http://").to_string();
    // The kernel's receive window (a few hundred KB at most) is far below the 10 MB
    // replay: the server's writes block soon.
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "GET /.well-known/mercure?topic=t&lastEventID=earliest HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {tok}\r\n\r\n"
    )
    .unwrap();
    s
}

/// How many log lines contain `needle`.
fn count_logged(relais: &Relais, needle: &str) -> usize {
    relais
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

/// Waits (without touching any socket) until `n` log lines contain `needle`.
async fn wait_logged(relais: &Relais, needle: &str, n: usize, wait: Duration) -> usize {
    let start = Instant::now();
    loop {
        let seen = count_logged(relais, needle);
        if seen >= n || start.elapsed() > wait {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads what is left on the socket; `true` when the server closed it within `wait`.
fn drained_to_close(mut s: TcpStream, wait: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let start = Instant::now();
    let mut buf = vec![0u8; 1 << 16];
    while start.elapsed() < wait {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => {}
        }
    }
    false
}

#[tokio::test]
async fn a_never_reading_earliest_subscriber_is_disconnected_and_pins_no_memory() {
    let relais = Relais::start(&[
        ("RELAIS_HUB__HISTORY_SIZE", "2500"),
        ("RELAIS_SERVER__WRITE_TIMEOUT", "3s"),
    ]);
    let tok = token("alice", &["*"], &["*"]);
    fill_history(&relais, &tok).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_bytes(relais.pid());

    let stalled: Vec<TcpStream> = (0..20).map(|_| never_reading(&relais, &tok)).collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = rss_bytes(relais.pid());
    let grown = during.saturating_sub(before);
    // Copying the replay per subscriber would take 20 × 10 MB; a chunk each is ~1.3 MB.
    assert!(
        grown < 32 << 20,
        "20 stalled subscribers grew relais by {} MiB",
        grown >> 20
    );

    // After the write timeout, relais closes every one of them, while they still do not
    // read (reading would unblock the writes).
    assert_eq!(
        wait_logged(&relais, "write timed out", 20, Duration::from_secs(30)).await,
        20,
        "each one was closed for not reading"
    );
    let closed = tokio::task::spawn_blocking(move || {
        stalled
            .into_iter()
            .map(|s| drained_to_close(s, Duration::from_secs(30)))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(closed.iter().all(|c| *c), "{closed:?}");
    let metrics = metrics_text(&relais).await;
    assert!(
        metrics.contains("relais_stalled_subscriber_disconnects_total 20"),
        "{metrics}"
    );

    // A reader is unaffected and gets the whole history.
    let mut reader =
        SseClient::connect(&relais, "topic=t&lastEventID=earliest", Some(&tok), &[]).await;
    assert_eq!(
        reader.events(RETAINED, Duration::from_secs(60)).await.len(),
        RETAINED
    );
}

#[tokio::test]
async fn an_expired_token_closes_the_stream_even_when_the_client_does_not_read() {
    let relais = Relais::start(&[
        ("RELAIS_HUB__HISTORY_SIZE", "2500"),
        ("RELAIS_SERVER__WRITE_TIMEOUT", "10m"),
    ]);
    let publisher = token("alice", &["*"], &["*"]);
    fill_history(&relais, &publisher).await;
    let short = sign(&TokenMinter::claims_for(
        "bob",
        vec!["*".into()],
        vec![],
        Duration::from_secs(3),
    ));
    let stalled = never_reading(&relais, &short);
    // The client does not read: the server's writes are blocked when the token expires,
    // and the stream ends all the same.
    assert_eq!(
        wait_logged(&relais, "end=TokenExpired", 1, Duration::from_secs(20)).await,
        1,
        "{:?}",
        relais.logs.lock().unwrap()
    );
    let closed =
        tokio::task::spawn_blocking(move || drained_to_close(stalled, Duration::from_secs(30)))
            .await
            .unwrap();
    assert!(closed, "the stream of an expired token was closed");
}

// The same limits on streams served by hyper: a subscription over HTTP/2, and one that
// is not the first request of its HTTP/1.1 connection.

/// How a never-reading subscriber reached hyper.
#[derive(Clone, Copy, Debug)]
enum HyperPath {
    /// HTTP/2 with prior knowledge; the client answers pings but never takes the
    /// stream's data (its flow-control window stays shut).
    Http2,
    /// A keep-alive HTTP/1.1 connection whose subscription follows another request; the
    /// client reads nothing at all.
    SecondRequest,
}

/// A never-reading subscriber on a hyper-served connection.
enum Stalled {
    /// The h2 client's connection task (it ends when the server closes the connection),
    /// and what must stay alive meanwhile.
    Http2 {
        driver: tokio::task::JoinHandle<Result<(), h2::Error>>,
        _keep: (h2::client::SendRequest<Bytes>, h2::RecvStream),
    },
    SecondRequest(TcpStream),
}

impl Stalled {
    async fn open(path: HyperPath, relais: &Relais, tok: &str) -> Stalled {
        let addr = relais.base.trim_start_matches("http://").to_string();
        let target = "/.well-known/mercure?topic=t&lastEventID=earliest";
        match path {
            HyperPath::Http2 => {
                let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
                let (send, conn) = h2::client::handshake(tcp).await.unwrap();
                let driver = tokio::spawn(conn);
                let mut send = send.ready().await.unwrap();
                let request = axum::http::Request::get(format!("http://{addr}{target}"))
                    .header("authorization", format!("Bearer {tok}"))
                    .body(())
                    .unwrap();
                let (response, _) = send.send_request(request, true).unwrap();
                let response = response.await.unwrap();
                assert_eq!(response.status(), 200);
                Stalled::Http2 {
                    driver,
                    _keep: (send, response.into_body()),
                }
            }
            HyperPath::SecondRequest => {
                let mut s = TcpStream::connect(&addr).unwrap();
                write!(
                    s,
                    "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\nGET {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {tok}\r\n\r\n"
                )
                .unwrap();
                Stalled::SecondRequest(s)
            }
        }
    }

    /// Whether the server closed the connection within `wait` (reading what is left on
    /// a raw socket, as a client that comes back would).
    async fn closed_within(self, wait: Duration) -> bool {
        match self {
            Stalled::Http2 { driver, _keep } => {
                let ended = tokio::time::timeout(wait, driver).await.is_ok();
                drop(_keep);
                ended
            }
            Stalled::SecondRequest(s) => {
                tokio::task::spawn_blocking(move || drained_to_close(s, wait))
                    .await
                    .unwrap()
            }
        }
    }
}

async fn never_reading_on_hyper_is_disconnected(path: HyperPath) {
    let relais = Relais::start(&[
        ("RELAIS_HUB__HISTORY_SIZE", "2500"),
        ("RELAIS_SERVER__WRITE_TIMEOUT", "3s"),
        ("RELAIS_SERVER__HTTP2", "true"),
    ]);
    let tok = token("alice", &["*"], &["*"]);
    fill_history(&relais, &tok).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_bytes(relais.pid());

    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(Stalled::open(path, &relais, &tok).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let grown = rss_bytes(relais.pid()).saturating_sub(before);
    assert!(
        grown < 32 << 20,
        "{path:?}: 20 stalled subscribers grew relais by {} MiB",
        grown >> 20
    );

    assert_eq!(
        wait_logged(&relais, "write timed out", 20, Duration::from_secs(30)).await,
        20,
        "{path:?}: each one was closed for not reading"
    );
    let mut closed = Vec::new();
    for s in stalled {
        closed.push(s.closed_within(Duration::from_secs(30)).await);
    }
    assert!(closed.iter().all(|c| *c), "{path:?}: {closed:?}");
    let metrics = metrics_text(&relais).await;
    assert!(
        metrics.contains("relais_stalled_subscriber_disconnects_total 20"),
        "{path:?}: {metrics}"
    );
    // Their streams left the hub.
    assert!(
        metrics.contains("relais_subscribers_connected 0"),
        "{path:?}: {metrics}"
    );
}

async fn expired_token_on_hyper_closes_a_blocked_stream(path: HyperPath) {
    let relais = Relais::start(&[
        ("RELAIS_HUB__HISTORY_SIZE", "2500"),
        ("RELAIS_SERVER__WRITE_TIMEOUT", "10m"),
        ("RELAIS_SERVER__HTTP2", "true"),
    ]);
    let publisher = token("alice", &["*"], &["*"]);
    fill_history(&relais, &publisher).await;
    let short = sign(&TokenMinter::claims_for(
        "bob",
        vec!["*".into()],
        vec![],
        Duration::from_secs(3),
    ));
    let stalled = Stalled::open(path, &relais, &short).await;
    assert_eq!(
        wait_logged(&relais, "end=TokenExpired", 1, Duration::from_secs(20)).await,
        1,
        "{path:?}: {:?}",
        relais.logs.lock().unwrap()
    );
    assert!(
        stalled.closed_within(Duration::from_secs(30)).await,
        "{path:?}: the stream of an expired token was closed"
    );
}

#[tokio::test]
async fn a_never_reading_http2_subscriber_is_disconnected_and_pins_no_memory() {
    never_reading_on_hyper_is_disconnected(HyperPath::Http2).await;
}

#[tokio::test]
async fn a_never_reading_subscription_after_a_keepalive_request_is_disconnected() {
    never_reading_on_hyper_is_disconnected(HyperPath::SecondRequest).await;
}

#[tokio::test]
async fn an_expired_token_closes_a_blocked_http2_stream() {
    expired_token_on_hyper_closes_a_blocked_stream(HyperPath::Http2).await;
}

#[tokio::test]
async fn an_expired_token_closes_a_blocked_stream_after_a_keepalive_request() {
    expired_token_on_hyper_closes_a_blocked_stream(HyperPath::SecondRequest).await;
}
