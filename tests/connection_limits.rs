//! Every connection has deadlines (request head, keep-alive wait, body), heads are
//! bounded (431), HTTP/2 is off unless configured, and the number of open connections is
//! capped (`server.max_connections`), against the real binary over raw TCP.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr(relais: &Relais) -> String {
    relais.base.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection or `wait` passes; returns what was read
/// and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, wait: Duration) -> (String, bool) {
    let deadline = tokio::time::Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into(), false),
        }
    }
}

fn short_deadlines() -> Vec<(&'static str, &'static str)> {
    vec![
        ("RELAIS_SERVER__HEAD_TIMEOUT", "1s"),
        ("RELAIS_SERVER__KEEPALIVE_TIMEOUT", "1s"),
        ("RELAIS_SERVER__BODY_TIMEOUT", "1s"),
    ]
}

#[tokio::test]
async fn a_partial_head_is_closed_at_the_head_deadline() {
    let relais = Relais::start(&short_deadlines());
    let mut s = TcpStream::connect(addr(&relais)).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "a partial head was kept open");
    assert!(started.elapsed() >= Duration::from_millis(800));
}

#[tokio::test]
async fn an_oversized_head_is_answered_431() {
    let relais = Relais::start(&[]);
    let mut s = TcpStream::connect(addr(&relais)).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let line = format!("X-Filler: {}\r\n", "a".repeat(1000));
    for _ in 0..20 {
        if s.write_all(line.as_bytes()).await.is_err() {
            break;
        }
    }
    let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    assert!(closed);

    // The limit is a setting.
    let relais = Relais::start(&[("RELAIS_SERVER__MAX_HEAD_BYTES", "65536")]);
    let mut s = TcpStream::connect(addr(&relais)).await.unwrap();
    let mut request = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for _ in 0..20 {
        request.push_str(&line);
    }
    request.push_str("Connection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let (answer, _) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}

#[tokio::test]
async fn idle_keep_alive_and_half_sent_pipelined_requests_are_closed() {
    let relais = Relais::start(&short_deadlines());
    let mut s = TcpStream::connect(addr(&relais)).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(closed, "an idle keep-alive connection was kept open");

    let mut s = TcpStream::connect(addr(&relais)).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(closed, "a half-sent pipelined request was kept open");
}

#[tokio::test]
async fn a_body_that_never_ends_is_answered_408() {
    let relais = Relais::start(&short_deadlines());
    let mut s = TcpStream::connect(addr(&relais)).await.unwrap();
    s.write_all(
        b"POST /.well-known/mercure HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ntopic=a",
    )
    .await
    .unwrap();
    let (answer, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("body_timeout"), "{answer:?}");
    assert!(closed);
}

#[tokio::test]
async fn http2_is_off_unless_configured() {
    let relais = Relais::start(&short_deadlines());
    let mut s = TcpStream::connect(addr(&relais)).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed, "an h2c preface followed by silence was kept open");
    assert!(started.elapsed() < Duration::from_secs(3));

    // With server.http2 the same preface is answered with HTTP/2 settings.
    let relais = Relais::start(&[("RELAIS_SERVER__HTTP2", "true")]);
    let mut s = TcpStream::connect(addr(&relais)).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut frame = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut frame))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frame[3], 0x4, "a SETTINGS frame: {frame:?}");

    // A silent HTTP/2 client (its pings unanswered) is closed too.
    let relais = Relais::start(&[
        ("RELAIS_SERVER__HTTP2", "true"),
        ("RELAIS_SERVER__KEEPALIVE_TIMEOUT", "1s"),
        ("RELAIS_SERVER__HEAD_TIMEOUT", "1s"),
    ]);
    let mut s = TcpStream::connect(addr(&relais)).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(8)).await;
    assert!(closed, "a silent HTTP/2 connection was kept open");
}

#[tokio::test]
async fn connections_beyond_the_cap_are_refused_logged_and_counted() {
    let relais = Relais::start(&[("RELAIS_SERVER__MAX_CONNECTIONS", "3")]);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(addr(&relais)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(addr(&relais)).await.unwrap();
    let (answer, closed) = read_until_closed(&mut extra, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(closed);
    // A freed slot is usable again.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = metrics_text(&relais).await;
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("relais_connections_refused_total"))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(refused.ends_with(" 1"), "{refused}");
    assert!(relais.logged("server.max_connections"));
}

/// An HTTP/2 client (prior knowledge) that answers pings on its own: its connection
/// task ends when the server closes the connection.
async fn h2_client(
    relais: &Relais,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr(relais)).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    (send, tokio::spawn(conn))
}

async fn h2_get(
    send: h2::client::SendRequest<bytes::Bytes>,
    relais: &Relais,
    target: &str,
    tok: Option<&str>,
) -> h2::RecvStream {
    let mut send = send.ready().await.unwrap();
    let mut request = axum::http::Request::get(format!("{}{target}", relais.base));
    if let Some(tok) = tok {
        request = request.header("authorization", format!("Bearer {tok}"));
    }
    let (response, _) = send.send_request(request.body(()).unwrap(), true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body()
}

#[tokio::test]
async fn an_http2_connection_without_open_streams_is_closed_after_the_keepalive_wait() {
    let relais = Relais::start(&[
        ("RELAIS_SERVER__HTTP2", "true"),
        ("RELAIS_SERVER__KEEPALIVE_TIMEOUT", "1s"),
    ]);
    // It answers pings but opens no stream.
    let (silent, driver) = h2_client(&relais).await;
    let ended = tokio::time::timeout(Duration::from_secs(8), driver).await;
    assert!(
        ended.is_ok(),
        "an HTTP/2 connection without streams was kept open"
    );
    drop(silent);

    // After a finished request, the same.
    let (send, driver) = h2_client(&relais).await;
    let mut body = h2_get(send.clone(), &relais, "/healthz", None).await;
    while let Some(chunk) = body.data().await {
        chunk.unwrap();
    }
    let ended = tokio::time::timeout(Duration::from_secs(8), driver).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection was kept open");
    drop(send);

    // A connection with an open stream (a subscription) is not idle.
    let tok = token("alice", &["*"], &[]);
    let (send, driver) = h2_client(&relais).await;
    let _stream = h2_get(
        send.clone(),
        &relais,
        "/.well-known/mercure?topic=t",
        Some(&tok),
    )
    .await;
    let ended = tokio::time::timeout(Duration::from_secs(4), driver).await;
    assert!(
        ended.is_err(),
        "a subscription's connection was closed as idle"
    );
}
