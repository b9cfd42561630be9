//! Topic selectors and URI templates (`relais::hub::Selector`), as a subscriber's
//! `topic=` or a token's claims write them, and the topic templates of webhook sources
//! (`relais::ingest::topics::TopicTemplate`) that produce the topics they must match.
//!
//! Beyond "no panic": a selector keeps its text; `*` matches all and an exact topic
//! itself; a claim permits a concrete topic exactly when it matches it; a topic a
//! source renders from a template matches the selector written with that template,
//! whatever the value; and a template of simple `{var}` expressions never matches a
//! topic with more `/` than its literal text (a value cannot span segments).
//!
//! Input: `selector 0x1F topic 0x1F value`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relais::hub::Selector;
use relais::ingest::topics::TopicTemplate;
use relais_fuzz::Fields;

/// Every placeholder a webhook source may use.
const VARS: [&str; 6] = [
    "id",
    "row_id",
    "table",
    "source",
    "audit_token",
    "module_id",
];

/// The template's literal text (outside braces), for a template that compiled.
fn literal(template: &str) -> String {
    let mut out = String::new();
    let mut depth = false;
    for c in template.chars() {
        match c {
            '{' => depth = true,
            '}' => depth = false,
            c if !depth => out.push(c),
            _ => {}
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // selector, topic, value
    let mut fields = Fields::new(data);
    let (text, topic, value) = (&fields.text(), fields.text(), fields.text());
    let Ok(selector) = Selector::parse(text) else {
        // A source template is always a valid selector: only refused text gets here.
        assert!(TopicTemplate::parse(text, &VARS).is_err(), "{text:?}");
        return;
    };
    assert_eq!(selector.as_str(), text);
    match &selector {
        Selector::Any => assert!(selector.matches(&topic)),
        Selector::Exact(s) => {
            assert!(selector.matches(s));
            assert_eq!(selector.matches(&topic), *s == topic);
        }
        Selector::Template { .. } => {}
        Selector::Pattern { .. } => panic!("{text:?}: only url_pattern makes a URL pattern"),
    }
    // The same text read as a Mercure 1.0 URL pattern: refused or kept as written, and a
    // pattern always permits itself.
    if let Ok(pattern) = Selector::url_pattern(text) {
        assert_eq!(pattern.as_str(), text);
        assert!(pattern.permits(&pattern));
        let _ = pattern.matches(&topic);
    }
    if !topic.is_empty() && topic != "*" && !topic.contains(['{', '}']) {
        let requested = Selector::parse(&topic).expect("a concrete topic");
        assert_eq!(
            selector.permits(&requested),
            selector.matches(&topic),
            "{text:?} permits {:?}",
            topic
        );
    }
    assert!(selector.permits(&selector));

    if let Ok(template) = TopicTemplate::parse(text, &VARS) {
        let topic = template.render(|_| value.clone());
        assert!(
            selector.matches(&topic),
            "{text:?} does not match its own {topic:?}"
        );
        // Source placeholders are plain names, so these are simple `{var}` expressions.
        if !matches!(selector, Selector::Any) {
            let slashes = literal(text).matches('/').count();
            assert_eq!(topic.matches('/').count(), slashes);
            assert!(!selector.matches(&format!("{topic}/x")));
        }
    }
});
