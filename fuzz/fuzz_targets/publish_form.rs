//! The Mercure publish form (`relais::http::publish::parse_form`), on any body, and the
//! SSE frame of what it accepts.
//!
//! Beyond "no panic": an accepted form has at least one topic, no empty topic, an `id`
//! and a `type` without line breaks, an `id` that is not `earliest`; re-encoding the
//! accepted fields as a form parses to the same draft (parse(encode(x)) == x); and the
//! frame the hub sends for it reads back, with relais' own SSE parser, as exactly one
//! event with the same id, type, retry and data (line breaks normalized to `\n`), so a
//! publisher can never inject SSE fields or split an event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relais::http::publish::parse_form;
use relais::hub::event::Event;
use relais::hub::sse::{Parsed, ParsedEvent, SseParser};

fuzz_target!(|data: &[u8]| {
    let Ok(draft) = parse_form(data) else { return };
    assert!(!draft.topics.is_empty());
    assert!(draft.topics.iter().all(|t| !t.is_empty()));
    assert!(!draft.id.is_empty() && draft.id != "earliest");
    assert!(!draft.id.contains(['\r', '\n']));
    if let Some(t) = &draft.event_type {
        assert!(!t.is_empty() && !t.contains(['\r', '\n']));
    }

    let mut form = form_urlencoded::Serializer::new(String::new());
    for topic in &draft.topics {
        form.append_pair("topic", topic);
    }
    form.append_pair("data", &draft.data);
    form.append_pair("private", if draft.private { "on" } else { "off" });
    form.append_pair("id", &draft.id);
    if let Some(t) = &draft.event_type {
        form.append_pair("type", t);
    }
    if let Some(r) = draft.retry {
        form.append_pair("retry", &r.to_string());
    }
    let again = parse_form(form.finish().as_bytes()).expect("a re-encoded accepted form");
    assert_eq!(again, draft);

    let event = Event::new(1, draft.clone());
    let items = SseParser::new().feed(&event.frame);
    let expected = ParsedEvent {
        id: draft.id.clone(),
        event_type: draft.event_type.clone().unwrap_or_default(),
        data: draft.data.replace("\r\n", "\n").replace('\r', "\n"),
        retry: draft.retry,
    };
    assert_eq!(items, vec![Parsed::Event(expected)]);
});
