//! Metric labels stay bounded: a publisher choosing a new `type` for every update does
//! not create a new metric series each time (unknown types are counted as `other`).

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn unknown_publish_types_are_counted_as_other() {
    let relais = Relais::start(&[]);
    let tok = token("pub", &["*"], &["*"]);
    let mut sub = SseClient::connect(&relais, "topic=t", Some(&tok), &[]).await;
    assert_eq!(sub.status, 200);
    for i in 0..50 {
        let t = format!("kind-{i}");
        let r = publish(
            &relais,
            &tok,
            &[("topic", "t"), ("data", "x"), ("type", &t)],
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    publish_ok(&relais, &tok, "t", "plain").await;
    assert_eq!(sub.events(51, Duration::from_secs(5)).await.len(), 51);
    let text = metrics_text(&relais).await;
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("relais_events_out_total{"))
        .collect();
    assert!(!text.contains("kind-"), "{series:?}");
    assert!(
        series
            .iter()
            .any(|l| l.contains("type=\"other\"") && l.ends_with(" 50")),
        "{series:?}"
    );
    assert!(
        series.iter().any(|l| l.contains("type=\"message\"")),
        "{series:?}"
    );
}
