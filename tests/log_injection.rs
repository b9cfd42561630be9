//! Text-format logs escape client input: a line break in a topic selector cannot forge a
//! log line.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn a_line_break_in_a_topic_cannot_forge_a_log_line() {
    let relais = Relais::start(&[]);
    let tok = token("alice", &["*"], &[]);
    let forged = "2026-01-01T00:00:00Z  INFO relais: FORGED-LINE admin logged in";
    let query = format!(
        "topic=a{}",
        form_urlencoded::byte_serialize(format!("\n{forged}").as_bytes()).collect::<String>()
    );
    let mut sse = SseClient::connect(&relais, &query, Some(&tok), &[]).await;
    assert_eq!(sse.status, 200);
    sse.next_item(Duration::from_millis(300)).await;
    drop(sse);
    // The session line is written when the stream ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !relais.logged("FORGED-LINE") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = relais.logs.lock().unwrap().clone();
    let line = logs
        .iter()
        .find(|l| l.contains("FORGED-LINE"))
        .unwrap_or_else(|| panic!("no session line: {logs:#?}"));
    assert!(line.contains("subscriber session ended"), "{line}");
    assert!(line.contains("a\\n2026"), "escaped: {line}");
    assert!(
        !logs.iter().any(|l| l.starts_with("2026-01-01")),
        "a forged line: {logs:#?}"
    );
}
