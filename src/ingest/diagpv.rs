//! DiagPV hub webhooks: module updates of a photovoltaic audit (one object or an array,
//! fields of the DiagPV v3.3 `audit_modules` table) turned into `module` events.
//!
//! Ordering: each update carries `updated_at` (RFC 3339) and/or `updated_at_ms` (Unix
//! milliseconds, what the DiagPV clients compare). When both are present
//! `updated_at_ms` is the one used, and the event's `updated_at` is rendered from it.
//! Last write wins: an update strictly older than the known state of its module is
//! dropped, so a late delivery never flips a module back.
//!
//! Everything here is pure: no I/O.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::error::InputError;
use super::grist::epoch_millis_to_rfc3339;
use super::record::{decide, Change, Diff, Outcome, Plan, PlannedEvent, StoredRecord};
use super::topics::TopicTemplate;
use crate::config::SourceConfig;

/// Module statuses accepted: the DiagPV electroluminescence ones and the
/// interconnection summary ones.
pub const STATUSES: [&str; 8] = [
    "ok",
    "inequality",
    "microcracks",
    "dead",
    "string_open",
    "not_connected",
    "warning",
    "critical",
];

/// Most updates accepted in one request.
pub const MAX_UPDATES: usize = 1000;

/// Longest audit token accepted.
pub const MAX_TOKEN_LEN: usize = 128;

/// Default topics of a hub source.
pub const DEFAULT_TOPICS: [&str; 2] = [
    "audits/{audit_token}",
    "audits/{audit_token}/modules/{module_id}",
];

/// Placeholders a hub topic template may use.
pub const TOPIC_VARS: [&str; 3] = ["audit_token", "module_id", "source"];

/// Default event type.
pub const DEFAULT_EVENT_TYPE: &str = "module";

/// One module update, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleUpdate {
    /// The audit (a UUID in DiagPV).
    pub audit_token: String,
    /// `M050` or `S1-15`.
    pub module_id: String,
    /// One of [`STATUSES`].
    pub status: String,
    /// Technician's comment.
    pub comment: Option<String>,
    /// Technician's ID (`tech_abc123`).
    pub technician_id: Option<String>,
    /// Technician's display name.
    pub technician_name: Option<String>,
    /// When the module was marked, Unix milliseconds (the last-write-wins key).
    pub updated_at_ms: i64,
}

/// Parses a hub webhook body: one update object or an array of them. One bad update
/// refuses the whole request.
pub fn parse_updates(body: &Value) -> Result<Vec<ModuleUpdate>, InputError> {
    match body {
        Value::Object(_) => Ok(vec![parse_update("update".into(), body)?]),
        Value::Array(items) => {
            if items.len() > MAX_UPDATES {
                return Err(InputError::invalid(
                    "body",
                    format!(
                        "at most {MAX_UPDATES} updates per request, this one has {}",
                        items.len()
                    ),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| parse_update(format!("updates[{i}]"), item))
                .collect()
        }
        _ => Err(InputError::wrong_type(
            "body",
            "a module update object or an array of them",
            body,
        )),
    }
}

fn parse_update(at: String, value: &Value) -> Result<ModuleUpdate, InputError> {
    let Value::Object(object) = value else {
        return Err(InputError::wrong_type(at, "a module update object", value));
    };
    let path = |key: &str| format!("{at}.{key}");
    let required = |key: &str| -> Result<String, InputError> {
        match object.get(key) {
            None | Some(Value::Null) => Err(InputError::missing(path(key), "")),
            Some(Value::String(s)) if s.trim().is_empty() => {
                Err(InputError::invalid(path(key), "cannot be empty"))
            }
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(InputError::wrong_type(path(key), "text", other)),
        }
    };
    let optional = |key: &str| -> Result<Option<String>, InputError> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(InputError::wrong_type(path(key), "text or null", other)),
        }
    };

    let audit_token = required("audit_token")?;
    if audit_token.len() > MAX_TOKEN_LEN
        || audit_token
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(InputError::invalid(
            path("audit_token"),
            format!("an audit token has at most {MAX_TOKEN_LEN} characters and no spaces"),
        ));
    }
    let module_id = required("module_id")?;
    if !is_module_id(&module_id) {
        return Err(InputError::invalid(
            path("module_id"),
            "expected a module identifier such as M050 or S1-15",
        ));
    }
    let status = required("status")?;
    if !STATUSES.contains(&status.as_str()) {
        return Err(InputError::invalid(
            path("status"),
            format!("unknown status (one of: {})", STATUSES.join(", ")),
        ));
    }
    let comment = optional("comment")?;
    let technician_id = optional("technician_id")?;
    let technician_name = optional("technician_name")?;

    let from_text =
        match object.get("updated_at") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(parse_rfc3339_millis(s).ok_or_else(|| {
                InputError::invalid(path("updated_at"), "not an RFC 3339 date-time")
            })?),
            Some(other) => {
                return Err(InputError::wrong_type(
                    path("updated_at"),
                    "RFC 3339 text (epoch milliseconds go in updated_at_ms)",
                    other,
                ))
            }
        };
    let from_ms = match object.get("updated_at_ms") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .filter(|ms| *ms >= 0 && epoch_millis_to_rfc3339(*ms).is_some())
                .ok_or_else(|| {
                    InputError::wrong_type(
                        path("updated_at_ms"),
                        "Unix time in milliseconds (a whole number)",
                        v,
                    )
                })?,
        ),
    };
    let updated_at_ms = from_ms.or(from_text).ok_or_else(|| {
        InputError::missing(
            path("updated_at"),
            " (send updated_at, RFC 3339, or updated_at_ms, Unix milliseconds: last write wins by it)",
        )
    })?;

    Ok(ModuleUpdate {
        audit_token,
        module_id,
        status,
        comment,
        technician_id,
        technician_name,
        updated_at_ms,
    })
}

/// Whether `id` is a DiagPV module identifier: `M` + digits (`M050`) or
/// `S` + string number + `-` + position (`S1-15`).
pub fn is_module_id(id: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.len() <= 6 && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = id.strip_prefix('M') {
        return digits(rest);
    }
    if let Some((string, position)) = id.strip_prefix('S').and_then(|r| r.split_once('-')) {
        return digits(string) && digits(position);
    }
    false
}

fn parse_rfc3339_millis(text: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

impl ModuleUpdate {
    /// The record key in the state store.
    pub fn key(&self) -> String {
        format!("{}/{}", self.audit_token, self.module_id)
    }

    /// The state kept for last-write-wins and diffs.
    pub fn to_record(&self) -> StoredRecord {
        let mut values = std::collections::BTreeMap::new();
        values.insert("status".into(), json!(self.status));
        values.insert("comment".into(), json!(self.comment));
        values.insert(
            "technician".into(),
            json!({"id": self.technician_id, "name": self.technician_name}),
        );
        values.insert(
            "updated_at".into(),
            json!(epoch_millis_to_rfc3339(self.updated_at_ms)),
        );
        StoredRecord {
            values: values.into(),
            version: Some(self.updated_at_ms),
        }
    }
}

/// A configured hub source, ready to turn module updates into events.
#[derive(Debug, Clone)]
pub struct HubSource {
    /// Source name.
    pub name: String,
    /// Topic templates.
    pub topics: Vec<TopicTemplate>,
    /// Event type.
    pub event_type: String,
    /// Publish as private updates.
    pub private: bool,
}

impl HubSource {
    /// Builds a source from its configuration (defaults: topics `audits/{audit_token}`
    /// and `audits/{audit_token}/modules/{module_id}`, type `module`).
    pub fn from_config(name: &str, config: &SourceConfig) -> Result<Self, String> {
        if !config.columns.is_empty() {
            return Err("columns: only Grist sources have a column mapping".into());
        }
        let topics = if config.topics.is_empty() {
            DEFAULT_TOPICS.iter().map(|t| t.to_string()).collect()
        } else {
            config.topics.clone()
        };
        let topics =
            TopicTemplate::parse_all(&topics, &TOPIC_VARS).map_err(|e| format!("topics: {e}"))?;
        Ok(Self {
            name: name.into(),
            topics,
            event_type: config
                .event_type
                .clone()
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| DEFAULT_EVENT_TYPE.into()),
            private: config.private,
        })
    }

    /// Decides which updates become events, given the known states by key.
    pub fn plan(&self, updates: &[ModuleUpdate], known: &HashMap<String, StoredRecord>) -> Plan {
        let mut plan = Plan::default();
        let mut current: HashMap<String, StoredRecord> = known.clone();
        for update in updates {
            let key = update.key();
            let record = update.to_record();
            match decide(current.get(&key), &record) {
                Outcome::Unchanged => plan.unchanged += 1,
                Outcome::Stale => plan.stale += 1,
                Outcome::Publish(diff) => {
                    plan.events.push(PlannedEvent {
                        topics: self.topics_for(update),
                        data: self.event_data(update, &record, &diff),
                    });
                    plan.remember(key.clone(), record.clone());
                    current.insert(key, record);
                }
            }
        }
        plan
    }

    /// The rendered topics of an update.
    pub fn topics_for(&self, update: &ModuleUpdate) -> Vec<String> {
        self.topics
            .iter()
            .map(|t| {
                t.render(|var| match var {
                    "audit_token" => update.audit_token.clone(),
                    "module_id" => update.module_id.clone(),
                    _ => self.name.clone(),
                })
            })
            .collect()
    }

    /// The event's JSON data (the spec's "Normalized events").
    pub fn event_data(&self, update: &ModuleUpdate, record: &StoredRecord, diff: &Diff) -> String {
        let data = ModuleData {
            source: &self.name,
            audit_token: &update.audit_token,
            module_id: &update.module_id,
            status: &update.status,
            comment: update.comment.as_deref(),
            technician: Technician {
                id: update.technician_id.as_deref(),
                name: update.technician_name.as_deref(),
            },
            updated_at: record.values.get("updated_at").unwrap_or(&Value::Null),
            change: diff.change,
            changed: &diff.changed,
            previous: &diff.previous,
        };
        serde_json::to_string(&data).unwrap_or_default()
    }
}

#[derive(Serialize)]
struct ModuleData<'a> {
    source: &'a str,
    audit_token: &'a str,
    module_id: &'a str,
    status: &'a str,
    comment: Option<&'a str>,
    technician: Technician<'a>,
    updated_at: &'a Value,
    change: Change,
    changed: &'a [String],
    previous: &'a Map<String, Value>,
}

#[derive(Serialize)]
struct Technician<'a> {
    id: Option<&'a str>,
    name: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(module: &str, status: &str, ms: i64) -> Value {
        json!({
            "audit_token": "a4e19950-c73c-412c-be4d-699c9de1dde1", "module_id": module,
            "status": status, "comment": "Fissures visibles EL",
            "technician_id": "tech_abc123", "technician_name": "Adrien", "updated_at_ms": ms
        })
    }

    fn source() -> HubSource {
        let config: SourceConfig =
            toml::from_str("kind = \"hub\"\nauthorization = \"Bearer x\"").unwrap();
        HubSource::from_config("diagpv", &config).unwrap()
    }

    #[test]
    fn parses_one_object_or_an_array() {
        let one = parse_updates(&update("M050", "microcracks", 1737800595000)).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].module_id, "M050");
        let many =
            parse_updates(&json!([update("S1-15", "ok", 1), update("M1", "dead", 2)])).unwrap();
        assert_eq!(many.len(), 2);
    }

    #[test]
    fn timestamps_rfc3339_or_millis_with_millis_preferred() {
        let mut u = update("M050", "ok", 0);
        u.as_object_mut().unwrap().remove("updated_at_ms");
        u["updated_at"] = json!("2025-10-24T16:23:15.5+02:00");
        assert_eq!(parse_updates(&u).unwrap()[0].updated_at_ms, 1761315795500);
        u["updated_at_ms"] = json!(1737800595000i64);
        assert_eq!(parse_updates(&u).unwrap()[0].updated_at_ms, 1737800595000);
        u["updated_at"] = json!(1737800595);
        assert!(parse_updates(&u)
            .unwrap_err()
            .to_string()
            .contains("updated_at_ms"));
    }

    #[test]
    fn refusals_name_the_update_and_field() {
        let e = |v: Value| parse_updates(&v).unwrap_err().to_string();
        assert_eq!(
            e(update("M50X", "ok", 1)),
            "update.module_id: expected a module identifier such as M050 or S1-15"
        );
        assert!(e(json!([update("M1", "ok", 1), update("M2", "broken", 1)]))
            .starts_with("updates[1].status: unknown status"));
        let mut u = update("M1", "ok", 1);
        u.as_object_mut().unwrap().remove("updated_at_ms");
        assert!(e(u).starts_with("update.updated_at: missing"));
        let mut u = update("M1", "ok", 1);
        u.as_object_mut().unwrap().remove("audit_token");
        assert_eq!(e(u), "update.audit_token: missing");
        let mut u = update("M1", "ok", 1);
        u["technician_name"] = json!(5);
        assert_eq!(
            e(u),
            "update.technician_name: expected text or null, found number"
        );
        assert_eq!(
            e(json!("x")),
            "body: expected a module update object or an array of them, found text"
        );
        let mut u = update("M1", "ok", 1);
        u["updated_at_ms"] = json!(-5);
        assert!(e(u).starts_with("update.updated_at_ms"));
    }

    #[test]
    fn module_ids() {
        for ok in ["M050", "M1", "S1-15", "S10-24"] {
            assert!(is_module_id(ok), "{ok}");
        }
        for bad in ["", "M", "m050", "S1", "S1-", "S-1", "X1", "M05a", "S1-15-2"] {
            assert!(!is_module_id(bad), "{bad}");
        }
    }

    #[test]
    fn last_write_wins_and_replays_are_absorbed() {
        let s = source();
        let newer = parse_updates(&update("M050", "dead", 2000)).unwrap();
        let older = parse_updates(&update("M050", "ok", 1000)).unwrap();
        let plan = s.plan(&newer, &HashMap::new());
        assert_eq!(plan.events.len(), 1);
        assert_eq!(
            plan.events[0].topics,
            [
                "audits/a4e19950-c73c-412c-be4d-699c9de1dde1",
                "audits/a4e19950-c73c-412c-be4d-699c9de1dde1/modules/M050"
            ]
        );
        let data: Value = serde_json::from_str(&plan.events[0].data).unwrap();
        assert_eq!(data["change"], "add");
        assert_eq!(
            data["technician"],
            json!({"id": "tech_abc123", "name": "Adrien"})
        );
        assert_eq!(data["updated_at"], "1970-01-01T00:00:02Z");
        let known: HashMap<_, _> = plan.store.into_iter().collect();
        let late = s.plan(&older, &known);
        assert_eq!((late.events.len(), late.stale), (0, 1));
        let replay = s.plan(&newer, &known);
        assert_eq!((replay.events.len(), replay.unchanged), (0, 1));
        let later = s.plan(&parse_updates(&update("M050", "ok", 3000)).unwrap(), &known);
        let data: Value = serde_json::from_str(&later.events[0].data).unwrap();
        assert_eq!(data["change"], "update");
        assert_eq!(data["changed"], json!(["status", "updated_at"]));
        assert_eq!(
            data["previous"],
            json!({"status": "dead", "updated_at": "1970-01-01T00:00:02Z"})
        );
    }

    #[test]
    fn out_of_order_within_one_batch() {
        let s = source();
        let batch =
            parse_updates(&json!([update("M1", "dead", 20), update("M1", "ok", 10)])).unwrap();
        let plan = s.plan(&batch, &HashMap::new());
        assert_eq!((plan.events.len(), plan.stale), (1, 1));
        assert_eq!(plan.store[0].1.values["status"], json!("dead"));
    }
}
