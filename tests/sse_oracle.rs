//! SSE framing checked against an independent client: the frames the hub writes
//! (`relais::hub::sse`) for what the publish form accepts, read back by the
//! `eventsource-stream` crate (a WHATWG event-stream parser), however the byte stream
//! is split, must give exactly the events that were published.

use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::{Event as ClientEvent, Eventsource};
use futures::{executor::block_on, stream, StreamExt};
use proptest::prelude::*;
use relais::http::publish::parse_form;
use relais::hub::event::{Event, EventDraft};
use relais::hub::sse::{encode_comment, encode_retry};

/// What a publisher sends: id, type, retry and data as raw form values.
#[derive(Debug, Clone)]
struct Publish {
    id: Option<String>,
    event_type: Option<String>,
    retry: Option<u64>,
    data: String,
}

/// Text with the characters that matter to SSE framing over-represented.
fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            4 => any::<char>(),
            2 => prop::sample::select(vec!['\n', '\r', ':', ' ', '\0', '\u{feff}', 'é', '€']),
        ],
        0..24,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

fn publish() -> impl Strategy<Value = Publish> {
    (
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(any::<u64>()),
        text(),
    )
        .prop_map(|(id, event_type, retry, data)| Publish {
            id,
            event_type,
            retry,
            data,
        })
}

/// The draft relais would commit for this publish, when it accepts it.
fn accepted(p: &Publish) -> Option<EventDraft> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("topic", "t");
    form.append_pair("data", &p.data);
    if let Some(id) = &p.id {
        form.append_pair("id", id);
    }
    if let Some(t) = &p.event_type {
        form.append_pair("type", t);
    }
    if let Some(r) = p.retry {
        form.append_pair("retry", &r.to_string());
    }
    parse_form(form.finish().as_bytes()).ok()
}

/// The event a WHATWG client dispatches for a draft.
fn expected(draft: &EventDraft) -> ClientEvent {
    ClientEvent {
        event: draft.event_type.clone().unwrap_or_else(|| "message".into()),
        data: draft.data.replace("\r\n", "\n").replace('\r', "\n"),
        id: draft.id.clone(),
        retry: draft.retry.map(Duration::from_millis),
    }
}

/// Reads a byte stream, cut at the given sizes, with the independent client.
fn client_events(bytes: &[u8], cuts: &[usize]) -> Vec<ClientEvent> {
    let mut chunks = Vec::new();
    let mut rest = bytes;
    for cut in cuts {
        let n = (*cut).min(rest.len());
        chunks.push(Ok::<_, std::convert::Infallible>(Bytes::copy_from_slice(
            &rest[..n],
        )));
        rest = &rest[n..];
    }
    chunks.push(Ok(Bytes::copy_from_slice(rest)));
    block_on(
        stream::iter(chunks)
            .eventsource()
            .map(|e| e.expect("a well-formed event stream"))
            .collect(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn published_events_read_back_identically(
        publishes in proptest::collection::vec(publish(), 1..6),
        retry in 0u64..100_000,
        cuts in proptest::collection::vec(0usize..40, 0..30),
    ) {
        // The stream as the hub writes it: retry frame, then events with heartbeats.
        let mut wire = encode_retry(retry).to_vec();
        let mut want = Vec::new();
        for p in &publishes {
            let Some(draft) = accepted(p) else { continue };
            wire.extend_from_slice(&Event::new(1, draft.clone()).frame);
            wire.extend_from_slice(&encode_comment(""));
            want.push(expected(&draft));
        }
        prop_assert_eq!(client_events(&wire, &cuts), want);
    }
}

#[test]
fn a_nul_in_an_event_id_is_refused() {
    // A WHATWG client ignores an `id:` holding U+0000: it would resume from the wrong
    // event after a reconnection. Found by the property above.
    let p = Publish {
        id: Some("a\0b".into()),
        event_type: None,
        retry: None,
        data: "x".into(),
    };
    assert!(accepted(&p).is_none());
}
