//! SSE framing (`relais::hub::sse`): what the hub encodes, read back by relais' own
//! incremental parser however the bytes are split, and the parser on any bytes.
//!
//! Beyond "no panic": encode then parse gives back exactly one event with the same id,
//! type and retry and the data with its line breaks normalized to `\n`, whatever the
//! chunking; comments and retry frames read back as themselves.
//!
//! Input: `id 0x1F type 0x1F retry 0x1F data 0x1F comment 0x1F chunk sizes`; the whole
//! input is also fed to the parser as a stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relais::hub::sse::{
    encode_comment, encode_event, encode_retry, Parsed, ParsedEvent, SseParser,
};
use relais_fuzz::Fields;

struct Input {
    id: String,
    event_type: Option<String>,
    retry: Option<u64>,
    data: String,
    comment: String,
    cuts: Vec<u8>,
    noise: Vec<u8>,
}

fn feed_in_chunks(bytes: &[u8], cuts: &[u8]) -> Vec<Parsed> {
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    let mut rest = bytes;
    for cut in cuts {
        let n = (*cut as usize).min(rest.len());
        out.extend(parser.feed(&rest[..n]));
        rest = &rest[n..];
    }
    out.extend(parser.feed(rest));
    out
}

fuzz_target!(|raw: &[u8]| {
    let mut f = Fields::new(raw);
    let input = Input {
        id: f.text(),
        event_type: f.opt_text(),
        retry: f.opt_u64(),
        data: f.text(),
        comment: f.text(),
        cuts: f.bytes().to_vec(),
        noise: raw.to_vec(),
    };
    // Any bytes: the parser must not panic.
    let _ = SseParser::new().feed(&input.noise);

    // The hub only ever encodes single-line, non-empty ids and types (publish refuses
    // the others, generated ids are UUIDs).
    let single_line = |s: &str| !s.is_empty() && !s.contains(['\r', '\n']);
    if single_line(&input.id) && input.event_type.as_deref().is_none_or(single_line) {
        let frame = encode_event(
            &input.id,
            input.event_type.as_deref(),
            input.retry,
            &input.data,
        );
        let expected = ParsedEvent {
            id: input.id.clone(),
            event_type: input.event_type.clone().unwrap_or_default(),
            data: input.data.replace("\r\n", "\n").replace('\r', "\n"),
            retry: input.retry,
        };
        assert_eq!(
            feed_in_chunks(&frame, &input.cuts),
            vec![Parsed::Event(expected)]
        );
    }

    if !input.comment.contains(['\r', '\n']) {
        let items = feed_in_chunks(&encode_comment(&input.comment), &input.cuts);
        assert_eq!(
            items,
            vec![Parsed::Comment(input.comment.trim_start().to_string())]
        );
    }
    if let Some(ms) = input.retry {
        assert_eq!(
            feed_in_chunks(&encode_retry(ms), &input.cuts),
            vec![Parsed::Retry(ms)]
        );
    }
});
