//! DiagPV hub module updates (`relais::ingest::diagpv`), from any body bytes, through
//! the source's plan (last write wins, diff, topics, event data).
//!
//! Beyond "no panic": accepted updates respect the checks (module id shape, known
//! status, audit token without spaces); the stored `updated_at`
//! text parses back to the same millisecond (parse(encode(x)) == x); each event's data
//! is JSON naming its module, and its topics match the subscriber selectors written
//! with the same templates; replaying the same batch against the state it produced
//! publishes nothing.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use relais::config::SourceConfig;
use relais::hub::Selector;
use relais::ingest::diagpv::{self, HubSource, DEFAULT_TOPICS};
use serde_json::{json, Value};

fn source() -> HubSource {
    let config: SourceConfig =
        serde_json::from_value(json!({"kind": "hub"})).expect("a minimal hub source");
    HubSource::from_config("diagpv", &config).expect("the default hub source")
}

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(updates) = diagpv::parse_updates(&body) else {
        return;
    };
    assert!(updates.len() <= diagpv::MAX_UPDATES);
    for u in &updates {
        assert!(diagpv::is_module_id(&u.module_id));
        assert!(diagpv::STATUSES.contains(&u.status.as_str()));
        assert!(!u.audit_token.is_empty() && u.audit_token.len() <= diagpv::MAX_TOKEN_LEN);
        assert!(!u
            .audit_token
            .chars()
            .any(|c| c.is_whitespace() || c.is_control()));
        // (`updated_at_ms` must be >= 0; an RFC 3339 `updated_at` before 1970 gives a
        // negative time, which orders and renders correctly.)
        let record = u.to_record();
        assert_eq!(record.version, Some(u.updated_at_ms));
        let Some(Value::String(at)) = record.values.get("updated_at") else {
            panic!("no updated_at text for {u:?}");
        };
        // The rendered time, sent back as `updated_at` alone, is the same millisecond.
        let back = json!({
            "audit_token": u.audit_token, "module_id": u.module_id,
            "status": u.status, "updated_at": at,
        });
        let again = diagpv::parse_updates(&back).expect("a re-encoded accepted update");
        assert_eq!(again[0].updated_at_ms, u.updated_at_ms, "{at}");
    }

    let source = source();
    let plan = source.plan(&updates, &HashMap::new());
    assert_eq!(
        plan.events.len() + plan.unchanged + plan.stale,
        updates.len()
    );
    let selectors: Vec<Selector> = DEFAULT_TOPICS
        .iter()
        .map(|t| Selector::parse(t).expect("default topics are valid selectors"))
        .collect();
    for event in &plan.events {
        let data: Value = serde_json::from_str(&event.data).expect("event data is JSON");
        assert!(data["module_id"].as_str().is_some_and(diagpv::is_module_id));
        for (topic, selector) in event.topics.iter().zip(&selectors) {
            assert!(
                selector.matches(topic),
                "{topic:?} vs {}",
                selector.as_str()
            );
        }
    }

    let known: HashMap<_, _> = plan.store.into_iter().collect();
    let replay = source.plan(&updates, &known);
    let mut keys: Vec<String> = updates.iter().map(|u| u.key()).collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.len() == updates.len() {
        assert!(
            replay.events.is_empty(),
            "a replayed batch published {:?}",
            replay.events
        );
    }
});
