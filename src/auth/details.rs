//! Mercure 1.0 grants: the `authorization_details` claim (RFC 9396) of an OAuth access
//! token, read into the same selectors as a 0.x `mercure` claim.
//!
//! Each entry of type `https://mercure.rocks/authorization-detail` grants `actions`
//! (`publish`, `subscribe`) on `topics`, a list of `{"match", "match_type"?}` matchers
//! (`exact`, the default, or `urlpattern`; `*` matches every topic). Entries of another
//! type are ignored (a token may carry grants for several resources). One malformed Mercure
//! entry rejects the whole token: acting on the others would silently change what the
//! token allows.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::hub::Selector;

/// The authorization detail type Mercure 1.0 defines.
pub const DETAIL_TYPE: &str = "https://mercure.rocks/authorization-detail";

/// The same type as spelled by later drafts of the Mercure specification, accepted too.
const DETAIL_TYPE_SHORT: &str = "mercure";

/// What the Mercure entries of a token grant.
#[derive(Debug, Default)]
pub struct Grants {
    /// Selectors the holder may receive private updates of (and subscribe to).
    pub subscribe: Vec<Selector>,
    /// Selectors the holder may publish to.
    pub publish: Vec<Selector>,
}

/// The kind of a matcher in a grant, as `relais token --format 1.0` writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchType {
    /// Byte-for-byte comparison (`match_type` omitted or `exact`).
    Exact,
    /// A WHATWG URL Pattern (`urlpattern`).
    #[serde(rename = "urlpattern")]
    UrlPattern,
}

/// One `{"match", "match_type"}` entry, for minting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMatcher {
    /// The topic, pattern or `*`.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Omitted for exact matchers (the default).
    #[serde(
        rename = "match_type",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub match_type: Option<MatchType>,
}

/// One Mercure authorization detail, for minting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detail {
    /// Always [`DETAIL_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// `publish` and/or `subscribe`.
    pub actions: Vec<String>,
    /// What the actions apply to.
    pub topics: Vec<TopicMatcher>,
}

impl Detail {
    /// A detail granting `action` on `topics`.
    pub fn new(action: &str, topics: Vec<TopicMatcher>) -> Self {
        Self {
            kind: DETAIL_TYPE.to_string(),
            actions: vec![action.to_string()],
            topics,
        }
    }
}

/// Reads the `authorization_details` claim. `max_matchers` bounds the matchers summed over
/// every Mercure entry (`jwt.max_claim_selectors`), `max_bytes` the length of each
/// (`hub.max_selector_bytes`); both are checked before any pattern is compiled.
pub fn read(claim: &Value, max_matchers: usize, max_bytes: usize) -> Result<Grants, String> {
    let entries = claim
        .as_array()
        .ok_or("authorization_details must be an array")?;
    let mut grants = Grants::default();
    let mut seen = 0usize;
    for (i, entry) in entries.iter().enumerate() {
        let at = |what: &str| format!("authorization_details[{i}]{what}");
        let object = entry
            .as_object()
            .ok_or_else(|| format!("{} must be an object", at("")))?;
        match object.get("type").and_then(Value::as_str) {
            Some(DETAIL_TYPE) | Some(DETAIL_TYPE_SHORT) => {}
            Some(_) => continue,
            None => return Err(format!("{} has no type", at(""))),
        }
        let actions = object
            .get("actions")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| format!("{} must be a non-empty array", at(".actions")))?;
        let (mut publish, mut subscribe) = (false, false);
        for action in actions {
            match action.as_str() {
                Some("publish") => publish = true,
                Some("subscribe") => subscribe = true,
                _ => {
                    return Err(format!(
                        "{}: unknown action {action} (publish or subscribe)",
                        at(".actions")
                    ))
                }
            }
        }
        let topics = object
            .get("topics")
            .and_then(Value::as_array)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("{} must be a non-empty array", at(".topics")))?;
        seen += topics.len();
        if seen > max_matchers {
            return Err(format!(
                "more than {max_matchers} topic matchers (jwt.max_claim_selectors)"
            ));
        }
        for (j, topic) in topics.iter().enumerate() {
            let selector = read_matcher(topic, max_bytes)
                .map_err(|e| format!("{}: {e}", at(&format!(".topics[{j}]"))))?;
            if publish {
                grants.publish.push(selector.clone());
            }
            if subscribe {
                grants.subscribe.push(selector);
            }
        }
    }
    Ok(grants)
}

fn read_matcher(topic: &Value, max_bytes: usize) -> Result<Selector, String> {
    let object = topic
        .as_object()
        .ok_or("must be an object {\"match\": ..., \"match_type\": ...}")?;
    let text = object
        .get("match")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or("needs a non-empty match string")?;
    if text.len() > max_bytes {
        return Err(format!(
            "a matcher of {} bytes; at most {max_bytes} (hub.max_selector_bytes)",
            text.len()
        ));
    }
    let kind = object.get("match_type").or_else(|| object.get("matchType"));
    match kind.map(|k| k.as_str()) {
        None | Some(Some("exact" | "Exact")) => Selector::exact(text),
        Some(Some("urlpattern" | "URLPattern")) => Selector::url_pattern(text),
        Some(other) => {
            return Err(format!(
                "unknown match_type {} (exact or urlpattern)",
                other.map_or_else(|| "(not a string)".to_string(), |s| format!("{s:?}"))
            ))
        }
    }
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn grants(v: Value) -> Result<Grants, String> {
        read(&v, 8, 64)
    }

    #[test]
    fn reads_actions_and_both_matcher_kinds() {
        let g = grants(json!([
            {"type": DETAIL_TYPE, "actions": ["subscribe"], "topics": [
                {"match": "https://example.com/books/:id", "match_type": "urlpattern"},
                {"match": "audits/{t}"}
            ]},
            {"type": DETAIL_TYPE, "actions": ["publish", "subscribe"], "topics": [{"match": "*"}]},
            {"type": "https://other.example/detail", "topics": "not ours", "actions": {"x": 1}}
        ]))
        .unwrap();
        assert_eq!(g.subscribe.len(), 3);
        assert_eq!(g.publish.len(), 1);
        assert!(g.subscribe[0].matches("https://example.com/books/1"));
        // An exact 1.0 matcher is exact even with braces in it.
        assert!(g.subscribe[1].matches("audits/{t}") && !g.subscribe[1].matches("audits/a"));
        assert!(g.publish[0].matches("anything"));
    }

    #[test]
    fn one_bad_mercure_entry_rejects_all() {
        let good =
            json!({"type": DETAIL_TYPE, "actions": ["subscribe"], "topics": [{"match": "a"}]});
        for (bad, why) in [
            (
                json!({"type": DETAIL_TYPE, "actions": [], "topics": [{"match": "a"}]}),
                "actions",
            ),
            (
                json!({"type": DETAIL_TYPE, "actions": ["read"], "topics": [{"match": "a"}]}),
                "unknown action",
            ),
            (
                json!({"type": DETAIL_TYPE, "actions": ["publish"], "topics": []}),
                "topics",
            ),
            (
                json!({"type": DETAIL_TYPE, "actions": ["publish"], "topics": ["a"]}),
                "object",
            ),
            (
                json!({"type": DETAIL_TYPE, "actions": ["publish"], "topics": [{"match": ""}]}),
                "non-empty",
            ),
            (
                json!({"type": DETAIL_TYPE, "actions": ["publish"], "topics": [{"match": "a", "match_type": "regexp"}]}),
                "match_type",
            ),
            (
                json!({"type": DETAIL_TYPE, "actions": ["publish"], "topics": [{"match": "https://x/:id(", "match_type": "urlpattern"}]}),
                "URL pattern",
            ),
            (
                json!({"type": DETAIL_TYPE, "actions": ["publish"], "topics": [{"match": "x".repeat(65)}]}),
                "bytes",
            ),
            (
                json!({"actions": ["publish"], "topics": [{"match": "a"}]}),
                "no type",
            ),
            (json!("a string"), "object"),
        ] {
            let err = grants(json!([good.clone(), bad])).unwrap_err();
            assert!(err.contains(why), "{err} should say {why}");
        }
        assert!(grants(json!({"type": DETAIL_TYPE})).is_err());
        let many: Vec<Value> = (0..9).map(|i| json!({"match": format!("t{i}")})).collect();
        let err = grants(json!([{"type": DETAIL_TYPE, "actions": ["subscribe"], "topics": many}]))
            .unwrap_err();
        assert!(err.contains("jwt.max_claim_selectors"), "{err}");
    }

    #[test]
    fn minted_details_read_back() {
        let detail = Detail::new(
            "subscribe",
            vec![
                TopicMatcher {
                    pattern: "audits/:t".into(),
                    match_type: Some(MatchType::UrlPattern),
                },
                TopicMatcher {
                    pattern: "interventions".into(),
                    match_type: None,
                },
            ],
        );
        let value = serde_json::to_value(vec![detail]).unwrap();
        assert_eq!(value[0]["topics"][0]["match_type"], "urlpattern");
        assert!(value[0]["topics"][1].get("match_type").is_none());
        let g = grants(value).unwrap();
        assert!(g.subscribe[0].matches("audits/abc"));
        assert!(g.subscribe[1].matches("interventions"));
    }
}
