//! Alert rules: which events raise a Matrix alert (pure, no I/O).
//!
//! A rule looks at events of one type and one field of their data, and fires when the
//! record *enters* the matching state. Normalized events carry what is needed to tell:
//! `change` (`"add"` or `"update"`), `changed` (the fields that changed) and `previous`
//! (their old values). A record enters the state when its current value matches and
//! either it is new (`change == "add"`) or the field is among `changed` and its previous
//! value did not match. So an intervention that becomes urgent fires once, later updates
//! while it stays urgent do not, and it fires again after leaving and re-entering.
//! An event without `change` information never fires (nothing tells it entered).

use serde_json::Value;

use crate::config::{AlertRuleConfig, MatrixConfig};

/// One compiled rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Name, for logs, metrics and transaction IDs.
    pub name: String,
    /// Event type the rule looks at (`intervention`, `module`).
    pub event_type: String,
    /// Top-level field of the event data (`priority`, `status`).
    pub field: String,
    /// Values that make the record alert-worthy (compared exactly).
    pub values: Vec<String>,
}

impl Rule {
    /// Whether `value` (a field of the event data) is one of the rule's values. Strings
    /// compare exactly, numbers and booleans by their JSON text, and a list matches when
    /// one of its items does (Grist ChoiceList).
    pub fn matches(&self, value: Option<&Value>) -> bool {
        match value {
            Some(Value::String(s)) => self.values.iter().any(|v| v == s),
            Some(Value::Number(n)) => self.values.iter().any(|v| *v == n.to_string()),
            Some(Value::Bool(b)) => self.values.iter().any(|v| *v == b.to_string()),
            Some(Value::Array(items)) => items.iter().any(|i| self.matches(Some(i))),
            Some(Value::Null) | Some(Value::Object(_)) | None => false,
        }
    }

    /// Whether the record described by `data` enters the matching state with this event.
    pub fn entered(&self, data: &Value) -> bool {
        if !self.matches(data.get(&self.field)) {
            return false;
        }
        match data.get("change").and_then(Value::as_str) {
            Some("add") => true,
            Some(_) => {
                let changed = data
                    .get("changed")
                    .and_then(Value::as_array)
                    .is_some_and(|fields| {
                        fields
                            .iter()
                            .any(|f| f.as_str() == Some(self.field.as_str()))
                    });
                let before = data.get("previous").and_then(|p| p.get(&self.field));
                changed && !self.matches(before)
            }
            None => false,
        }
    }
}

impl From<&AlertRuleConfig> for Rule {
    fn from(c: &AlertRuleConfig) -> Self {
        Rule {
            name: c.name.trim().to_string(),
            event_type: c.event_type.trim().to_string(),
            field: c.field.trim().to_string(),
            values: c.values.clone(),
        }
    }
}

/// The rule set in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    /// The configured rules, or the default ones when none is configured.
    pub fn from_config(config: &MatrixConfig) -> Self {
        if config.rules.is_empty() {
            return Self::defaults();
        }
        Rules {
            rules: config.rules.iter().map(Rule::from).collect(),
        }
    }

    /// The default rules: an intervention whose `priority` becomes `Urgente`; a module
    /// whose `status` becomes `dead` or `string_open`.
    pub fn defaults() -> Self {
        Rules {
            rules: vec![
                Rule {
                    name: "urgent-intervention".into(),
                    event_type: "intervention".into(),
                    field: "priority".into(),
                    values: vec!["Urgente".into()],
                },
                Rule {
                    name: "module-down".into(),
                    event_type: "module".into(),
                    field: "status".into(),
                    values: vec!["dead".into(), "string_open".into()],
                },
            ],
        }
    }

    /// All rules.
    pub fn all(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether some rule looks at events of this type (only those are parsed).
    pub fn covers(&self, event_type: &str) -> bool {
        self.rules.iter().any(|r| r.event_type == event_type)
    }

    /// The rules that fire for an event of `event_type` with this data.
    pub fn fired<'a>(
        &'a self,
        event_type: &'a str,
        data: &'a Value,
    ) -> impl Iterator<Item = &'a Rule> {
        self.rules
            .iter()
            .filter(move |r| r.event_type == event_type && r.entered(data))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn urgent() -> Rule {
        Rules::defaults().all()[0].clone()
    }

    #[test]
    fn a_new_urgent_record_fires() {
        let data = json!({"priority": "Urgente", "change": "add", "changed": [], "previous": {}});
        assert!(urgent().entered(&data));
    }

    #[test]
    fn a_new_normal_record_does_not_fire() {
        let data = json!({"priority": "Normale", "change": "add"});
        assert!(!urgent().entered(&data));
    }

    #[test]
    fn becoming_urgent_fires() {
        let data = json!({"priority": "Urgente", "change": "update",
            "changed": ["priority"], "previous": {"priority": "Haute"}});
        assert!(urgent().entered(&data));
    }

    #[test]
    fn staying_urgent_does_not_fire() {
        // Another field changed while the record stays urgent.
        let data = json!({"priority": "Urgente", "status": "Terminé", "change": "update",
            "changed": ["status"], "previous": {"status": "En cours"}});
        assert!(!urgent().entered(&data));
        // A sender that lists the field although its value did not change.
        let data = json!({"priority": "Urgente", "change": "update",
            "changed": ["priority"], "previous": {"priority": "Urgente"}});
        assert!(!urgent().entered(&data));
    }

    #[test]
    fn leaving_does_not_fire_and_re_entering_does() {
        let leave = json!({"priority": "Normale", "change": "update",
            "changed": ["priority"], "previous": {"priority": "Urgente"}});
        assert!(!urgent().entered(&leave));
        let back = json!({"priority": "Urgente", "change": "update",
            "changed": ["priority"], "previous": {"priority": "Normale"}});
        assert!(urgent().entered(&back));
    }

    #[test]
    fn changed_field_without_previous_value_fires() {
        let data = json!({"priority": "Urgente", "change": "update", "changed": ["priority"]});
        assert!(urgent().entered(&data));
    }

    #[test]
    fn without_change_information_nothing_fires() {
        assert!(!urgent().entered(&json!({"priority": "Urgente"})));
        assert!(!urgent().entered(&json!({"priority": "Urgente", "change": 3})));
    }

    #[test]
    fn module_default_rule_takes_both_values() {
        let rules = Rules::defaults();
        for status in ["dead", "string_open"] {
            let data = json!({"status": status, "change": "update",
                "changed": ["status"], "previous": {"status": "ok"}});
            let fired: Vec<_> = rules
                .fired("module", &data)
                .map(|r| r.name.as_str())
                .collect();
            assert_eq!(fired, ["module-down"], "{status}");
        }
        let from_dead = json!({"status": "string_open", "change": "update",
            "changed": ["status"], "previous": {"status": "dead"}});
        assert_eq!(rules.fired("module", &from_dead).count(), 0);
    }

    #[test]
    fn rules_only_see_their_event_type() {
        let rules = Rules::defaults();
        let data = json!({"priority": "Urgente", "change": "add"});
        assert_eq!(rules.fired("module", &data).count(), 0);
        assert!(rules.covers("intervention"));
        assert!(!rules.covers("message"));
    }

    #[test]
    fn values_compare_lists_numbers_and_exact_text() {
        let rule = Rule {
            name: "r".into(),
            event_type: "x".into(),
            field: "f".into(),
            values: vec!["3".into(), "a".into()],
        };
        assert!(rule.matches(Some(&json!(3))));
        assert!(rule.matches(Some(&json!(["L", "b", "a"]))));
        assert!(!rule.matches(Some(&json!("A"))));
        assert!(!rule.matches(Some(&json!(null))));
        assert!(!rule.matches(None));
    }

    #[test]
    fn configured_rules_replace_the_defaults() {
        let config = MatrixConfig {
            rules: vec![AlertRuleConfig {
                name: " blocked ".into(),
                event_type: "intervention".into(),
                field: "status".into(),
                values: vec!["Bloqué".into()],
            }],
            ..MatrixConfig::default()
        };
        let rules = Rules::from_config(&config);
        assert_eq!(rules.all().len(), 1);
        assert_eq!(rules.all()[0].name, "blocked");
        assert!(!rules.covers("module"));
        assert_eq!(
            Rules::from_config(&MatrixConfig::default()),
            Rules::defaults()
        );
    }
}
