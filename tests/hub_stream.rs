//! The relay core end to end over real sockets: framing, selectors, private updates,
//! resume, `earliest`, history gaps, slow subscribers, heartbeats and shutdown.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use relais::hub::sse::{Parsed, SseParser};

fn all() -> String {
    token("alice", &["*"], &["*"])
}

#[tokio::test]
async fn publish_reaches_subscriber_with_full_framing() {
    let relais = Relais::start(&[]);
    let tok = all();
    let mut sub = SseClient::connect(&relais, "topic=interventions", Some(&tok), &[]).await;
    assert_eq!(sub.status, 200);
    assert_eq!(sub.headers["content-type"], "text/event-stream");
    assert!(matches!(
        sub.next_item(ARRIVE).await,
        Some(Parsed::Retry(2000))
    ));
    let response = publish(
        &relais,
        &tok,
        &[
            ("topic", "interventions"),
            ("data", "line one\nline two"),
            ("type", "intervention"),
            ("id", "evt-1"),
            ("retry", "3000"),
        ],
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert_eq!(response.text().await.unwrap(), "evt-1");
    let event = sub.next_event(ARRIVE).await.expect("event");
    assert_eq!(event.id, "evt-1");
    assert_eq!(event.event_type, "intervention");
    assert_eq!(event.data, "line one\nline two");
    assert_eq!(event.retry, Some(3000));
    // Generated IDs are unique.
    let a = publish_ok(&relais, &tok, "interventions", "a").await;
    let b = publish_ok(&relais, &tok, "interventions", "b").await;
    assert_ne!(a, b);
    assert!(a.starts_with("urn:uuid:"));
}

#[tokio::test]
async fn selectors_exact_template_and_wildcard() {
    let relais = Relais::start(&[]);
    let tok = all();
    let mut exact = SseClient::connect(&relais, "topic=interventions", Some(&tok), &[]).await;
    let mut template =
        SseClient::connect(&relais, "topic=audits%2F%7Btoken%7D", Some(&tok), &[]).await;
    let mut url_template = SseClient::connect(
        &relais,
        "topic=https%3A%2F%2Fexample.net%2Ffoo%2F%7Bid%7D",
        Some(&tok),
        &[],
    )
    .await;
    let mut two = SseClient::connect(
        &relais,
        "topic=interventions&topic=audits%2Fa1",
        Some(&tok),
        &[],
    )
    .await;
    let mut star = SseClient::connect(&relais, "topic=*", Some(&tok), &[]).await;

    let i = publish_ok(&relais, &tok, "interventions", "i").await;
    let a = publish_ok(&relais, &tok, "audits/a1", "a").await;
    let m = publish_ok(&relais, &tok, "audits/a1/modules/M050", "m").await;
    let u = publish_ok(&relais, &tok, "https://example.net/foo/42", "u").await;

    let ids = |events: Vec<relais::hub::sse::ParsedEvent>| {
        events.into_iter().map(|e| e.id).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(star.events(4, ARRIVE).await),
        [i.clone(), a.clone(), m.clone(), u.clone()]
    );
    assert_eq!(ids(exact.events(2, QUIET).await), std::slice::from_ref(&i));
    assert_eq!(
        ids(template.events(2, QUIET).await),
        std::slice::from_ref(&a),
        "audits/{{token}} must not match a module topic"
    );
    assert_eq!(ids(url_template.events(2, QUIET).await), [u]);
    assert_eq!(ids(two.events(3, QUIET).await), [i, a]);
}

#[tokio::test]
async fn private_updates_reach_only_matching_claims() {
    let relais = Relais::start(&[("RELAIS_HUB__ALLOW_ANONYMOUS", "true")]);
    let publisher = token("pub", &[], &["*"]);
    let mut anonymous = SseClient::connect(&relais, "topic=*", None, &[]).await;
    assert_eq!(anonymous.status, 200);
    let other_claim = token("bob", &["audits/{t}"], &[]);
    let mut bob =
        SseClient::connect(&relais, "topic=audits%2F%7Bt%7D", Some(&other_claim), &[]).await;
    let right_claim = token("carol", &["interventions/{id}"], &[]);
    let mut carol = SseClient::connect(
        &relais,
        "topic=interventions%2F%7Bid%7D",
        Some(&right_claim),
        &[],
    )
    .await;

    let response = publish(
        &relais,
        &publisher,
        &[
            ("topic", "interventions/7"),
            ("data", "secret"),
            ("private", "on"),
        ],
    )
    .await;
    assert_eq!(response.status(), 200);
    let private_id = response.text().await.unwrap();
    let public_id = publish_ok(&relais, &publisher, "interventions/8", "public").await;

    assert_eq!(
        carol
            .events(2, ARRIVE)
            .await
            .iter()
            .map(|e| e.id.clone())
            .collect::<Vec<_>>(),
        [private_id, public_id.clone()]
    );
    let seen: Vec<String> = anonymous
        .events(2, QUIET)
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(
        seen,
        [public_id],
        "anonymous subscribers get public updates only"
    );
    assert!(bob.events(1, QUIET).await.is_empty());
}

#[tokio::test]
async fn resume_after_drop_gets_exactly_the_missed_events_then_live() {
    let relais = Relais::start(&[]);
    let tok = all();
    let mut first = SseClient::connect(&relais, "topic=t", Some(&tok), &[]).await;
    let e1 = publish_ok(&relais, &tok, "t", "1").await;
    let e2 = publish_ok(&relais, &tok, "t", "2").await;
    let got = first.events(2, ARRIVE).await;
    assert_eq!(got.last().unwrap().id, e2);
    drop(first);
    let mut missed = Vec::new();
    for i in 3..=6 {
        missed.push(publish_ok(&relais, &tok, "t", &i.to_string()).await);
        publish_ok(&relais, &tok, "other", "not for us").await;
    }
    // Header form.
    let mut again =
        SseClient::connect(&relais, "topic=t", Some(&tok), &[("Last-Event-ID", &e2)]).await;
    assert!(
        again.headers.get("last-event-id").is_none(),
        "no gap, so no earliest header"
    );
    let replayed: Vec<String> = again
        .events(4, ARRIVE)
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(replayed, missed);
    let live = publish_ok(&relais, &tok, "t", "7").await;
    let next = again.events(2, QUIET.max(Duration::from_secs(1))).await;
    assert_eq!(
        next.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        [live],
        "live follows replay with no duplicate"
    );

    // Query form, from the first event.
    let mut q = SseClient::connect(
        &relais,
        &format!("topic=t&lastEventID={}", urlencode(&e1)),
        Some(&tok),
        &[],
    )
    .await;
    let replayed: Vec<String> = q
        .events(6, ARRIVE)
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(replayed.len(), 6);
    assert_eq!(replayed[0], e2);
}

#[tokio::test]
async fn earliest_and_history_gap() {
    let relais = Relais::start(&[("RELAIS_HUB__HISTORY_SIZE", "3")]);
    let tok = all();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(publish_ok(&relais, &tok, "t", &i.to_string()).await);
    }
    let mut earliest =
        SseClient::connect(&relais, "topic=t&lastEventID=earliest", Some(&tok), &[]).await;
    let got: Vec<String> = earliest
        .events(3, ARRIVE)
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(got, ids[2..]);
    assert!(earliest.headers.get("last-event-id").is_none());

    // ids[0] was evicted: the response says so and replays from the oldest retained.
    let mut gap = SseClient::connect(
        &relais,
        "topic=t",
        Some(&tok),
        &[("Last-Event-ID", &ids[0])],
    )
    .await;
    assert_eq!(gap.headers["last-event-id"], "earliest");
    let got: Vec<String> = gap
        .events(3, ARRIVE)
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(got, ids[2..]);
}

#[tokio::test]
async fn slow_subscriber_is_disconnected_alone_and_resumes() {
    let relais = Relais::start(&[("RELAIS_HUB__SUBSCRIBER_BACKLOG", "16")]);
    let tok = all();
    let mut fast = SseClient::connect(&relais, "topic=t", Some(&tok), &[]).await;
    let total = 2000;
    // The fast one reads all the time, while the events are published.
    let fast_reader = tokio::spawn(async move {
        fast.events(total, Duration::from_secs(60))
            .await
            .into_iter()
            .map(|e| e.id)
            .collect::<Vec<_>>()
    });

    // The slow one: a raw socket that sends its request and then does not read.
    let addr = relais.base.trim_start_matches("http://").to_string();
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        slow,
        "GET /.well-known/mercure?topic=t HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {tok}\r\n\r\n"
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let payload = "x".repeat(8000);
    let mut published = Vec::with_capacity(total);
    let client = client();
    for _ in 0..total {
        let r = client
            .post(relais.hub_url())
            .bearer_auth(&tok)
            .form(&[("topic", "t"), ("data", payload.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        published.push(r.text().await.unwrap());
    }
    let received = fast_reader.await.unwrap();
    assert_eq!(received.len(), total, "the fast subscriber gets everything");
    assert_eq!(received, published);

    // The slow one was cut off: draining its socket reaches the end of the stream.
    let slow_events = tokio::task::spawn_blocking(move || {
        slow.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut raw = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match slow.read(&mut buf) {
                // The end of the chunked body (keep-alive holds the socket open) or EOF.
                Ok(0) => return (raw, true),
                Ok(n) => {
                    raw.extend_from_slice(&buf[..n]);
                    if raw.ends_with(b"\r\n0\r\n\r\n") {
                        return (raw, true);
                    }
                }
                Err(_) => return (raw, false),
            }
        }
    })
    .await
    .unwrap();
    let (raw, closed) = slow_events;
    let body_start = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let slow_ids = items(&mut SseParser::new(), &dechunk_loose(&raw[body_start..]));
    assert!(closed, "the slow subscriber's stream was closed by relais");
    assert!(slow_ids.len() < total, "it could not have kept up");
    assert!(relais.logged("subscriber too slow"));

    // It resumes from its last ID and gets the rest, in order.
    let last = slow_ids
        .last()
        .cloned()
        .unwrap_or_else(|| "earliest".into());
    let mut resumed =
        SseClient::connect(&relais, "topic=t", Some(&tok), &[("Last-Event-ID", &last)]).await;
    let rest: Vec<String> = resumed
        .events(total - slow_ids.len(), Duration::from_secs(30))
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    let mut all_ids = slow_ids.clone();
    all_ids.extend(rest);
    assert_eq!(
        all_ids, published,
        "nothing lost, nothing duplicated across the disconnect"
    );

    let metrics = client
        .get(format!("{}/metrics", relais.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("relais_slow_subscriber_disconnects_total 1"),
        "{metrics}"
    );
}

/// Events of a raw chunked body: strips chunk-size lines loosely (they are hex digits on
/// lines of their own, which never look like SSE fields).
fn dechunk_loose(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    for piece in text.split_inclusive("\r\n") {
        let trimmed = piece.trim_end_matches("\r\n");
        if !trimmed.is_empty()
            && trimmed.chars().all(|c| c.is_ascii_hexdigit())
            && piece.ends_with("\r\n")
        {
            continue;
        }
        out.push_str(piece.strip_suffix("\r\n").unwrap_or(piece));
    }
    out.into_bytes()
}

fn items(parser: &mut SseParser, bytes: &[u8]) -> Vec<String> {
    parser
        .feed(bytes)
        .into_iter()
        .filter_map(|p| match p {
            Parsed::Event(e) => Some(e.id),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn heartbeats_are_sent_on_idle_streams() {
    let relais = Relais::start(&[("RELAIS_SERVER__HEARTBEAT", "200ms")]);
    let tok = all();
    let mut sub = SseClient::connect(&relais, "topic=t", Some(&tok), &[]).await;
    let mut comments = 0;
    while comments < 2 {
        match sub.next_item(ARRIVE).await {
            Some(Parsed::Comment(_)) => comments += 1,
            Some(_) => {}
            None => panic!("stream ended or no heartbeat"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_streams_and_exits_cleanly() {
    let mut relais = Relais::start(&[]);
    let tok = all();
    let mut sub = SseClient::connect(&relais, "topic=t", Some(&tok), &[]).await;
    assert_eq!(sub.status, 200);
    let status = tokio::task::block_in_place(|| relais.terminate());
    assert!(status.success(), "exit status {status:?}");
    assert!(
        sub.closed_within(ARRIVE).await,
        "stream closed so the client reconnects elsewhere"
    );
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[tokio::test]
async fn streams_carry_cors_headers_for_allowed_origins() {
    let relais = Relais::start(&[(
        "RELAIS_SERVER__CORS_ORIGINS",
        "[\"https://docs.getgrist.com\"]",
    )]);
    let tok = all();
    let allowed = SseClient::connect(
        &relais,
        "topic=t",
        Some(&tok),
        &[("Origin", "https://docs.getgrist.com")],
    )
    .await;
    assert_eq!(allowed.status, 200);
    assert_eq!(
        allowed.headers["access-control-allow-origin"],
        "https://docs.getgrist.com"
    );
    assert_eq!(allowed.headers["access-control-allow-credentials"], "true");
    let other = SseClient::connect(
        &relais,
        "topic=t",
        Some(&tok),
        &[("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(other.status, 200);
    assert!(other.headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn a_subscription_on_a_reused_keep_alive_connection_streams_too() {
    // The first request of a connection decides its path; a subscription that comes after
    // another request on the same connection is served by the general HTTP path.
    let relais = Relais::start(&[]);
    let tok = all();
    let addr = relais.base.trim_start_matches("http://").to_string();
    let mut socket = std::net::TcpStream::connect(&addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(socket, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut buf = vec![0u8; 4096];
    let n = socket.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    write!(
        socket,
        "GET /.well-known/mercure?topic=t HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {tok}\r\n\r\n"
    )
    .unwrap();
    let mut seen = String::new();
    while !seen.contains("retry: 2000") {
        let n = socket.read(&mut buf).expect("the stream opens");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let id = publish_ok(&relais, &tok, "t", "over keep-alive").await;
    while !seen.contains(&id) {
        let n = socket.read(&mut buf).expect("the event arrives");
        assert!(n > 0, "stream closed early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("text/event-stream"), "{seen}");
}
