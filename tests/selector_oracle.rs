//! Topic selectors and URI templates checked against an independent RFC 6570
//! implementation (the `iri-string` crate's template expander): a template expanded
//! with any values gives a topic the selector written with that template matches; a
//! template of simple `{var}` expressions matches no topic with an extra segment; and a
//! webhook source's topic template renders exactly what RFC 6570 expansion gives.

use iri_string::spec::UriSpec;
use iri_string::template::simple_context::{SimpleContext, Value};
use iri_string::template::UriTemplateStr;
use proptest::prelude::*;
use relais::hub::Selector;
use relais::ingest::topics::TopicTemplate;

/// One piece of a template.
#[derive(Debug, Clone)]
enum Piece {
    /// Literal text (characters RFC 6570 copies as they are).
    Literal(String),
    /// `{<operator><var>[modifier],...}`.
    Expression {
        operator: &'static str,
        vars: Vec<(String, &'static str)>,
    },
}

/// A variable's value, as RFC 6570 knows them.
#[derive(Debug, Clone)]
enum Val {
    Undefined,
    Text(String),
    List(Vec<String>),
    Assoc(Vec<(String, String)>),
}

const OPERATORS: [&str; 8] = ["", "+", "#", "/", ".", ";", "?", "&"];
const NAMES: [&str; 4] = ["id", "audit_token", "x", "y"];

fn literal() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._~:/?#@!$&()*+,;=-]{1,8}"
}

/// Printable ASCII values. (The oracle, iri-string 0.7.14, panics on non-ASCII values
/// in `{+var}`, `{#var}` and `{var:N}` expansions, so only simple expansions, below, get
/// any text.)
fn value_text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9]{0,6}", "[ -~]{0,8}"]
}

/// Any text, for simple expansions.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        value_text(),
        any::<String>().prop_map(|s| s.chars().take(6).collect()),
    ]
}

fn value() -> impl Strategy<Value = Val> {
    prop_oneof![
        1 => Just(Val::Undefined),
        4 => value_text().prop_map(Val::Text),
        1 => proptest::collection::vec(value_text(), 0..3).prop_map(Val::List),
        1 => proptest::collection::vec((value_text(), value_text()), 0..3).prop_map(Val::Assoc),
    ]
}

fn expression(simple_only: bool) -> impl Strategy<Value = Piece> {
    let operator = if simple_only {
        Just("").boxed()
    } else {
        prop::sample::select(OPERATORS.to_vec()).boxed()
    };
    let modifier = prop::sample::select(vec!["", "", "*", ":3"]);
    (
        operator,
        proptest::collection::vec((prop::sample::select(NAMES.to_vec()), modifier), 1..3),
    )
        .prop_map(|(operator, vars)| Piece::Expression {
            operator,
            vars: vars.into_iter().map(|(n, m)| (n.to_string(), m)).collect(),
        })
}

fn template(simple_only: bool) -> impl Strategy<Value = Vec<Piece>> {
    proptest::collection::vec(
        prop_oneof![literal().prop_map(Piece::Literal), expression(simple_only),],
        1..5,
    )
}

fn write(pieces: &[Piece]) -> String {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Literal(text) => out.push_str(text),
            Piece::Expression { operator, vars } => {
                out.push('{');
                out.push_str(operator);
                let list: Vec<String> = vars.iter().map(|(n, m)| format!("{n}{m}")).collect();
                out.push_str(&list.join(","));
                out.push('}');
            }
        }
    }
    out
}

/// The RFC 6570 expansion, `None` where the RFC has none (a `:prefix` on a list).
fn expand(template: &str, values: &[(&str, Val)]) -> Option<String> {
    let mut context = SimpleContext::new();
    for (name, v) in values {
        let v = match v {
            Val::Undefined => Value::Undefined,
            Val::Text(s) => Value::String(s.clone()),
            Val::List(l) => Value::List(l.clone()),
            Val::Assoc(a) => Value::Assoc(a.clone()),
        };
        context.insert(*name, v);
    }
    let template = UriTemplateStr::new(template).expect("a valid RFC 6570 template");
    Some(template.expand::<UriSpec, _>(&context).ok()?.to_string())
}

fn values() -> impl Strategy<Value = Vec<Val>> {
    proptest::collection::vec(value(), NAMES.len())
}

fn named(values: &[Val]) -> Vec<(&'static str, Val)> {
    NAMES.iter().copied().zip(values.iter().cloned()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_selector_matches_every_expansion_of_its_template(
        pieces in template(false),
        values in values(),
    ) {
        let text = write(&pieces);
        let topic = expand(&text, &named(&values));
        prop_assume!(topic.is_some());
        let topic = topic.unwrap_or_default();
        let selector = Selector::parse(&text).expect("an RFC 6570 template is a selector");
        prop_assert!(selector.matches(&topic), "{} does not match {:?}", text, topic);
    }

    #[test]
    fn simple_expressions_never_span_segments(
        pieces in template(true),
        values in values(),
        extra in "[a-z0-9]{0,4}",
    ) {
        let text = write(&pieces);
        // A selector that is exactly `*` is Mercure's match-all, not a template.
        prop_assume!(text != "*");
        let topic = expand(&text, &named(&values));
        prop_assume!(topic.is_some());
        let topic = topic.unwrap_or_default();
        let selector = Selector::parse(&text).expect("a selector");
        prop_assert!(selector.matches(&topic));
        let longer = format!("{topic}/{extra}");
        prop_assert!(!selector.matches(&longer), "{} matches {:?}", text, longer);
    }

    #[test]
    fn source_topics_render_as_rfc6570_expands(
        pieces in template(true),
        value in any_text(),
    ) {
        // Source templates have one value per placeholder and no modifiers.
        let pieces: Vec<Piece> = pieces
            .into_iter()
            .map(|p| match p {
                Piece::Expression { vars, .. } => Piece::Expression {
                    operator: "",
                    vars: vec![(vars[0].0.clone(), "")],
                },
                literal => literal,
            })
            .collect();
        let text = write(&pieces);
        let source = TopicTemplate::parse(&text, &NAMES).expect("a source template");
        let rendered = source.render(|_| value.clone());
        let values: Vec<(&str, Val)> = NAMES.iter().map(|n| (*n, Val::Text(value.clone()))).collect();
        prop_assert_eq!(Some(rendered.clone()), expand(&text, &values));
        prop_assert!(Selector::parse(&text).expect("a selector").matches(&rendered));
    }
}
