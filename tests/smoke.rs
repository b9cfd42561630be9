//! The first end-to-end check: publish on one connection, receive on another.

mod common;

use common::*;

#[tokio::test]
async fn publish_reaches_a_subscriber() {
    let relais = Relais::start(&[]);
    let tok = token("alice", &["*"], &["*"]);
    let mut sub = SseClient::connect(&relais, "topic=*", Some(&tok), &[]).await;
    assert_eq!(sub.status, 200);
    let id = publish_ok(&relais, &tok, "interventions", "{\"a\":1}").await;
    let event = sub.next_event(ARRIVE).await.expect("event");
    assert_eq!(event.id, id);
    assert_eq!(event.data, "{\"a\":1}");
}
