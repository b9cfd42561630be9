//! Query-string decoding (`relais::http::query::QueryPairs`), on any text.
//!
//! Beyond "no panic": `first` is the first of `all`, and re-encoding the decoded pairs
//! decodes to the same pairs (parse(encode(x)) == x), so repeated keys (`topic=a&topic=b`)
//! and their order survive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relais::http::query::QueryPairs;

const KEYS: [&str; 5] = ["topic", "lastEventID", "authorization", "", "x"];

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    let pairs = QueryPairs::parse(Some(&raw));
    let mut keys: Vec<String> = KEYS.iter().map(|k| k.to_string()).collect();
    keys.extend(
        form_urlencoded::parse(raw.as_bytes())
            .take(8)
            .map(|(k, _)| k.into_owned()),
    );
    let mut encoder = form_urlencoded::Serializer::new(String::new());
    for key in &keys {
        let all: Vec<&str> = pairs.all(key).collect();
        assert_eq!(pairs.first(key), all.first().copied(), "key {key:?}");
    }
    let decoded: Vec<(String, String)> = form_urlencoded::parse(raw.as_bytes())
        .into_owned()
        .collect();
    for (k, v) in &decoded {
        encoder.append_pair(k, v);
    }
    let again = QueryPairs::parse(Some(&encoder.finish()));
    for key in &keys {
        assert_eq!(
            pairs.all(key).collect::<Vec<_>>(),
            again.all(key).collect::<Vec<_>>(),
            "key {key:?} after a round trip"
        );
    }
    assert!(QueryPairs::parse(None).first("topic").is_none());
});
