//! The text of an alert (pure, no I/O): a plain `body` and an HTML `formatted_body`
//! built from the event's fields, in French, every field HTML-escaped in the HTML form.
//!
//! - intervention: `🚨 Intervention urgente #12 — Avenue de la République (Marie Durand) : En cours`
//! - module: `⚠️ Module M050 marqué dead — audit A-17 (Adrien)`
//! - any other type: `🔔 alarm #7 : level critical`
//!
//! A non-empty comment follows on a second line (`💬 ...`). Fields are flattened to one
//! line and cut at [`MAX_FIELD_CHARS`] characters so a long value cannot flood the room.

use serde_json::Value;

use super::rules::Rule;

/// Longest text taken from one field.
pub const MAX_FIELD_CHARS: usize = 200;

/// One alert's text, as Matrix wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Plain text, shown by clients without HTML and in notifications.
    pub body: String,
    /// The same in HTML (`format: org.matrix.custom.html`).
    pub formatted_body: String,
}

/// Builds the alert text for `rule` firing on an event of `event_type` with `data`.
pub fn render(rule: &Rule, event_type: &str, data: &Value) -> Message {
    let value = field_text(data, &rule.field).unwrap_or_default();
    let mut m = Builder::default();
    match event_type {
        "intervention" => {
            let qualifier = if rule.field == "priority" {
                value.to_lowercase()
            } else {
                format!("{} {value}", label(&rule.field))
            };
            let id = field_text(data, "id").or_else(|| field_text(data, "row_id"));
            let mut title = format!("🚨 Intervention {qualifier}");
            if let Some(id) = id {
                title.push_str(&format!(" #{id}"));
            }
            m.strong(&title);
            if let Some(location) = field_text(data, "location") {
                m.text(" — ");
                m.text(&location);
            }
            if let Some(agent) = field_text(data, "agent") {
                m.text(&format!(" ({agent})"));
            }
            if let Some(status) = field_text(data, "status") {
                m.text(" : ");
                m.em(&status);
            }
        }
        "module" => {
            let module = field_text(data, "module_id").unwrap_or_else(|| "?".into());
            let state = if rule.field == "status" {
                format!("marqué {value}")
            } else {
                format!("{} {value}", label(&rule.field))
            };
            m.strong(&format!("⚠️ Module {module} {state}"));
            if let Some(audit) = field_text(data, "audit_token") {
                m.text(" — audit ");
                m.text(&audit);
            }
            let technician = data
                .get("technician")
                .and_then(|t| field_text(t, "name").or_else(|| field_text(t, "id")));
            if let Some(technician) = technician {
                m.text(&format!(" ({technician})"));
            }
        }
        other => {
            let mut title = format!("🔔 {}", one_line(other));
            if let Some(id) = field_text(data, "id") {
                title.push_str(&format!(" #{id}"));
            }
            m.strong(&title);
            m.text(&format!(" : {} {value}", label(&rule.field)));
        }
    }
    if let Some(comment) = field_text(data, "comment") {
        m.line_break();
        m.text(&format!("💬 {comment}"));
    }
    m.finish()
}

/// Accumulates the plain and HTML forms side by side.
#[derive(Default)]
struct Builder {
    body: String,
    html: String,
}

impl Builder {
    fn text(&mut self, s: &str) {
        self.body.push_str(s);
        self.html.push_str(&escape_html(s));
    }

    fn strong(&mut self, s: &str) {
        self.body.push_str(s);
        self.html.push_str("<strong>");
        self.html.push_str(&escape_html(s));
        self.html.push_str("</strong>");
    }

    fn em(&mut self, s: &str) {
        self.body.push_str(s);
        self.html.push_str("<em>");
        self.html.push_str(&escape_html(s));
        self.html.push_str("</em>");
    }

    fn line_break(&mut self) {
        self.body.push('\n');
        self.html.push_str("<br>");
    }

    fn finish(self) -> Message {
        Message {
            body: self.body,
            formatted_body: self.html,
        }
    }
}

/// A field's value as one line of text: strings (trimmed, non-empty), numbers and
/// booleans; `None` for anything else or a missing field.
fn field_text(data: &Value, key: &str) -> Option<String> {
    let text = match data.get(key)? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    let text = one_line(&text);
    (!text.is_empty()).then_some(text)
}

/// Collapses whitespace (newlines included) to single spaces and cuts long text.
fn one_line(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() <= MAX_FIELD_CHARS {
        return joined;
    }
    let mut cut: String = joined.chars().take(MAX_FIELD_CHARS).collect();
    cut.push('…');
    cut
}

/// French label of a normalized field name.
fn label(field: &str) -> String {
    match field {
        "priority" => "priorité".into(),
        "status" => "statut".into(),
        "location" => "lieu".into(),
        "comment" => "commentaire".into(),
        other => one_line(other),
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::rules::Rules;
    use super::*;

    fn rule(i: usize) -> Rule {
        Rules::defaults().all()[i].clone()
    }

    #[test]
    fn intervention_wording() {
        let data = json!({"id": 12, "location": "Avenue de la République", "agent": "Marie Durand",
            "status": "En cours", "priority": "Urgente", "comment": ""});
        let m = render(&rule(0), "intervention", &data);
        assert_eq!(
            m.body,
            "🚨 Intervention urgente #12 — Avenue de la République (Marie Durand) : En cours"
        );
        assert_eq!(
            m.formatted_body,
            "<strong>🚨 Intervention urgente #12</strong> — Avenue de la République (Marie Durand) : <em>En cours</em>"
        );
    }

    #[test]
    fn module_wording_with_comment() {
        let data = json!({"module_id": "M050", "audit_token": "X", "status": "dead",
            "technician": {"id": "t1", "name": "Adrien"}, "comment": "diode HS"});
        let m = render(&rule(1), "module", &data);
        assert_eq!(
            m.body,
            "⚠️ Module M050 marqué dead — audit X (Adrien)\n💬 diode HS"
        );
        assert_eq!(
            m.formatted_body,
            "<strong>⚠️ Module M050 marqué dead</strong> — audit X (Adrien)<br>💬 diode HS"
        );
    }

    #[test]
    fn fields_are_escaped_in_html_only() {
        let data = json!({"id": "<b>1</b>", "location": "A & B <script>alert(1)</script>",
            "agent": "O'Neil \"Jo\"", "status": "x", "priority": "Urgente"});
        let m = render(&rule(0), "intervention", &data);
        assert!(
            m.body.contains("A & B <script>alert(1)</script>"),
            "{}",
            m.body
        );
        assert!(
            !m.formatted_body.contains("<script>"),
            "{}",
            m.formatted_body
        );
        assert!(!m.formatted_body.contains("<b>"), "{}", m.formatted_body);
        assert!(m
            .formatted_body
            .contains("A &amp; B &lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(m.formatted_body.contains("O&#39;Neil &quot;Jo&quot;"));
    }

    #[test]
    fn missing_fields_are_left_out_and_long_ones_cut() {
        let long = "x".repeat(500);
        let data = json!({"row_id": 4, "priority": "Urgente", "location": long,
            "comment": "line one\nline two"});
        let m = render(&rule(0), "intervention", &data);
        let expected = format!(
            "🚨 Intervention urgente #4 — {}…\n💬 line one line two",
            "x".repeat(MAX_FIELD_CHARS)
        );
        assert_eq!(m.body, expected);
    }

    #[test]
    fn other_rules_and_types_name_the_field() {
        let blocked = Rule {
            name: "b".into(),
            event_type: "intervention".into(),
            field: "status".into(),
            values: vec!["Bloqué".into()],
        };
        let m = render(
            &blocked,
            "intervention",
            &json!({"id": "I-1", "status": "Bloqué"}),
        );
        assert_eq!(m.body, "🚨 Intervention statut Bloqué #I-1 : Bloqué");
        let alarm = Rule {
            name: "a".into(),
            event_type: "alarm".into(),
            field: "level".into(),
            values: vec!["critical".into()],
        };
        let m = render(&alarm, "alarm", &json!({"id": 7, "level": "critical"}));
        assert_eq!(m.body, "🔔 alarm #7 : level critical");
        assert_eq!(
            m.formatted_body,
            "<strong>🔔 alarm #7</strong> : level critical"
        );
    }
}
