//! Grist webhook rows (`relais::ingest::grist`), from any body bytes, through the
//! source's plan (diff against known state, topics, event data).
//!
//! Beyond "no panic": accepted rows respect the documented representation (positive row
//! id, no `id`/`manualSort` in `fields`, mapped fields text or null, `updated_at` RFC 3339
//! and stable when fed back); the lenient decoder agrees with the strict one on accepted
//! rows; every row is either an event or unchanged; each event's data is JSON naming its
//! row, and its topics match the subscriber selectors written with the same templates;
//! replaying the same batch against the state it produced publishes nothing.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use relais::config::SourceConfig;
use relais::hub::Selector;
use relais::ingest::grist::{self, GristSource, DEFAULT_TOPICS};
use serde_json::{json, Value};

fn source() -> GristSource {
    let config: SourceConfig =
        serde_json::from_value(json!({"kind": "grist"})).expect("a minimal Grist source");
    GristSource::from_config("cerema", &config).expect("the default Grist source")
}

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let source = source();
    let Ok(rows) = grist::parse_rows(&body, &source.mapping) else {
        return;
    };
    assert!(rows.len() <= grist::MAX_ROWS);
    for row in &rows {
        assert!(row.row_id > 0);
        assert!(!row.fields.contains_key("id") && !row.fields.contains_key(grist::MANUAL_SORT));
        for field in grist::FIELDS {
            let v = row.mapped.get(field);
            assert!(v.is_null() || v.is_string(), "{field} = {v}");
        }
        assert_eq!(
            grist::normalize_lenient(&row.fields, &source.mapping),
            row.mapped
        );
        // A normalized date-time fed back as text decodes to itself.
        if let Value::String(at) = &row.mapped.updated_at {
            let mut fields = (*row.fields).clone();
            fields.insert("Derniere_MAJ".into(), Value::String(at.clone()));
            let again = grist::normalize(0, &fields, &source.mapping).expect("a normalized row");
            assert_eq!(&again.updated_at, &row.mapped.updated_at);
        }
    }

    let plan = source.plan(&rows, &HashMap::new());
    assert_eq!(plan.events.len() + plan.unchanged, rows.len());
    let selectors: Vec<Selector> = DEFAULT_TOPICS
        .iter()
        .map(|t| Selector::parse(t).expect("default topics are valid selectors"))
        .collect();
    for event in &plan.events {
        let data: Value = serde_json::from_str(&event.data).expect("event data is JSON");
        assert!(data["row_id"].as_i64().is_some_and(|id| id > 0));
        assert_eq!(event.topics.len(), selectors.len());
        for (topic, selector) in event.topics.iter().zip(&selectors) {
            assert!(
                selector.matches(topic),
                "{topic:?} vs {}",
                selector.as_str()
            );
        }
    }

    let known: HashMap<_, _> = plan.store.into_iter().collect();
    let replay = source.plan(&rows, &known);
    let mut ids: Vec<i64> = rows.iter().map(|r| r.row_id).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() == rows.len() {
        assert!(
            replay.events.is_empty(),
            "a replayed batch published {:?}",
            replay.events
        );
        assert_eq!(replay.unchanged, rows.len());
    }
});
