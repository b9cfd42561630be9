//! The lean path's request-head reader (`relais::http::head::parse`), on any bytes.
//!
//! Beyond "no panic": the reader is called again each time more bytes arrive, so a
//! decision taken on a prefix must hold for the whole input (a complete head does not
//! change when bytes follow it, a partial head never becomes "not a request" because
//! the rest was cut), and a head the lean path takes must be exactly a body-less
//! `GET /.well-known/mercure` HTTP/1.1 request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relais::http::head::{parse, Head};
use relais::http::MERCURE_PATH;

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    if let Head::Subscribe(request) = &whole {
        let text = String::from_utf8_lossy(data);
        // httparse skips empty lines before the request line, as RFC 9112 allows.
        let target = text
            .trim_start_matches(['\r', '\n'])
            .strip_prefix("GET ")
            .and_then(|t| t.split(' ').next())
            .expect("a subscription starts with `GET <target>`");
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        assert_eq!(path, MERCURE_PATH);
        assert_eq!(request.query.as_deref(), query);
        assert!(!request.headers.contains_key("content-length"));
        assert!(!request.headers.contains_key("transfer-encoding"));
    }
    // Every prefix, as the reader would see it while bytes trickle in.
    let step = (data.len() / 64).max(1);
    for cut in (0..data.len()).step_by(step) {
        match (parse(&data[..cut]), &whole) {
            (Head::Partial, _) => {}
            (Head::Subscribe(a), Head::Subscribe(b)) => {
                assert_eq!(a.query, b.query);
                assert_eq!(a.headers, b.headers);
            }
            (Head::Other, Head::Other) => {}
            (early, late) => panic!("prefix of {cut} bytes said {early:?}, whole input {late:?}"),
        }
    }
});
