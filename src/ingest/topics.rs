//! Topic templates of a webhook source (`interventions/{id}`,
//! `audits/{audit_token}/modules/{module_id}`): parsed once from the configuration,
//! filled in per record. Values are percent-encoded like an RFC 6570 simple expansion
//! (everything but unreserved characters), so a topic always matches the subscriber
//! selector written with the same template.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Characters encoded in placeholder values: all but RFC 3986 unreserved ones.
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(String),
}

/// A parsed topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    source: String,
    parts: Vec<Part>,
}

/// Why a topic template is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Empty template.
    #[error("a topic cannot be empty")]
    Empty,
    /// Unbalanced braces or an empty placeholder.
    #[error("topic {0:?}: unbalanced braces or empty placeholder")]
    Syntax(String),
    /// A topic under `/.well-known/mercure/`, which belongs to the hub (presence).
    #[error("topic {0:?} is reserved: topics under /.well-known/mercure/ are the hub's own (subscription events)")]
    Reserved(String),
    /// A placeholder this kind of source cannot fill.
    #[error("topic {template:?}: unknown placeholder {{{name}}} (available: {available})")]
    UnknownVar {
        /// The template.
        template: String,
        /// The placeholder.
        name: String,
        /// The placeholders that exist.
        available: String,
    },
}

impl TopicTemplate {
    /// Parses `text`, allowing only the placeholders in `vars`.
    pub fn parse(text: &str, vars: &[&str]) -> Result<Self, TemplateError> {
        if text.is_empty() {
            return Err(TemplateError::Empty);
        }
        if crate::hub::presence::is_reserved(text) {
            return Err(TemplateError::Reserved(text.to_string()));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err(TemplateError::Syntax(text.into()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| TemplateError::Syntax(text.into()))?;
            let name = &after[..close];
            if name.is_empty() || name.contains('{') {
                return Err(TemplateError::Syntax(text.into()));
            }
            if !vars.contains(&name) {
                return Err(TemplateError::UnknownVar {
                    template: text.into(),
                    name: name.into(),
                    available: vars
                        .iter()
                        .map(|v| format!("{{{v}}}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            if open > 0 {
                parts.push(Part::Text(rest[..open].into()));
            }
            parts.push(Part::Var(name.into()));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.into()));
        }
        Ok(Self {
            source: text.into(),
            parts,
        })
    }

    /// Parses a list of templates.
    pub fn parse_all(texts: &[String], vars: &[&str]) -> Result<Vec<Self>, TemplateError> {
        texts.iter().map(|t| Self::parse(t, vars)).collect()
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Fills in the placeholders with `value(name)` (percent-encoded).
    pub fn render(&self, value: impl Fn(&str) -> String) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(name) => out.extend(utf8_percent_encode(&value(name), ENCODE)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_topics_are_refused() {
        assert!(matches!(
            TopicTemplate::parse("/.well-known/mercure/subscriptions/{id}", &["id"]),
            Err(TemplateError::Reserved(_))
        ));
    }

    #[test]
    fn renders_and_encodes() {
        let t = TopicTemplate::parse(
            "audits/{audit_token}/modules/{module_id}",
            &["audit_token", "module_id"],
        )
        .unwrap();
        let topic = t.render(|n| match n {
            "audit_token" => "a4e1".into(),
            _ => "S1-15".into(),
        });
        assert_eq!(topic, "audits/a4e1/modules/S1-15");
        let t = TopicTemplate::parse("interventions/{id}", &["id"]).unwrap();
        assert_eq!(t.render(|_| "A/B é".into()), "interventions/A%2FB%20%C3%A9");
        let t = TopicTemplate::parse("interventions", &["id"]).unwrap();
        assert_eq!(t.render(|_| unreachable!()), "interventions");
    }

    #[test]
    fn refuses_bad_templates() {
        assert!(matches!(
            TopicTemplate::parse("x/{nope}", &["id"]),
            Err(TemplateError::UnknownVar { .. })
        ));
        assert!(TopicTemplate::parse("x/{id", &["id"]).is_err());
        assert!(TopicTemplate::parse("x/}", &["id"]).is_err());
        assert!(TopicTemplate::parse("x/{}", &["id"]).is_err());
        assert!(TopicTemplate::parse("", &["id"]).is_err());
    }
}
