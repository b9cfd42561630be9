//! Why a webhook body was refused: the place (`rows[3].Statut`, `updates[0].status`,
//! `body`) and the problem, so the sender can fix exactly that. Values are never echoed
//! beyond their kind, so an error message cannot leak record content into logs.

use serde_json::Value;

/// A webhook body that is well-formed JSON but not an acceptable payload (HTTP 422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct InputError {
    /// Where: `body`, `rows[3]`, `rows[3].Statut`, `update.status`, `updates[2].module_id`.
    pub path: String,
    /// What is wrong there.
    pub problem: Problem,
}

/// What is wrong with one place of a payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// A required key is absent.
    #[error("missing{0}")]
    Missing(String),
    /// The value has the wrong JSON (or Grist) type.
    #[error("expected {expected}, found {found}")]
    WrongType {
        /// What was expected, in words.
        expected: &'static str,
        /// What was found, in words (see [`describe`]).
        found: String,
    },
    /// The value has the right type but is not acceptable.
    #[error("{0}")]
    Invalid(String),
}

impl InputError {
    /// A missing key at `path`, with an optional hint appended (e.g. the mapping).
    pub fn missing(path: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            problem: Problem::Missing(hint.into()),
        }
    }

    /// A value of the wrong type at `path`.
    pub fn wrong_type(path: impl Into<String>, expected: &'static str, found: &Value) -> Self {
        Self {
            path: path.into(),
            problem: Problem::WrongType {
                expected,
                found: describe(found),
            },
        }
    }

    /// An unacceptable value at `path`.
    pub fn invalid(path: impl Into<String>, why: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            problem: Problem::Invalid(why.into()),
        }
    }
}

/// Names the kind of a JSON value in words, recognising Grist's encoded objects
/// (`["L", ...]` lists, `["E", ...]` formula errors) without ever quoting the content.
pub fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(_) => "true/false".into(),
        Value::Number(_) => "number".into(),
        Value::String(_) => "text".into(),
        Value::Object(_) => "object".into(),
        Value::Array(items) => match items.first().and_then(Value::as_str) {
            Some("L") => "a list (ChoiceList, RefList)".into(),
            Some("E") => "a formula error".into(),
            Some("D") | Some("d") => "an encoded date".into(),
            Some("R") | Some("r") => "an encoded reference".into(),
            _ => "array".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_name_the_place_and_the_kind() {
        let e = InputError::wrong_type("rows[3].Statut", "text", &json!(3));
        assert_eq!(e.to_string(), "rows[3].Statut: expected text, found number");
        let e = InputError::missing("rows[0].Statut", " (column mapped to status)");
        assert_eq!(
            e.to_string(),
            "rows[0].Statut: missing (column mapped to status)"
        );
        assert_eq!(describe(&json!(["L", "a"])), "a list (ChoiceList, RefList)");
        assert_eq!(describe(&json!(["E", "TypeError"])), "a formula error");
        assert_eq!(describe(&json!("secret value")), "text");
    }
}
