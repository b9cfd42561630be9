//! Grist webhooks: the body Grist sends (a JSON array of row objects in Grist's storage
//! encoding), the column mapping of a source, and the normalized `intervention` events.
//!
//! Representation (also in `docs/ingestion.md`):
//! - `row_id` is Grist's row `id`, the record's key.
//! - `fields` holds every column of the row except `manualSort`, **exactly as Grist
//!   stored it**: Date/DateTime as epoch seconds, ChoiceList/RefList as `["L", ...]`,
//!   Ref as a row id with `0` for empty, a formula error as `["E", "TypeError", ...]`.
//!   The payload does not carry column types (a Ref `0` and a Numeric `0` look the same),
//!   so relais cannot decode these without guessing and keeps them lossless.
//! - The mapped fields are decoded: `id` is text (an integer ID column becomes text);
//!   `agent`, `location`, `type`, `status`, `priority` and `comment` are text or `null`;
//!   `updated_at` is an RFC 3339 UTC date-time (from epoch seconds, `["D", s, tz]`,
//!   `["d", s]` or RFC 3339 text) or `null`. A formula error in a mapped column gives
//!   `null` (the error stays visible in `fields`). Any other type is refused (422).
//!
//! Everything here is pure: no I/O.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::error::InputError;
use super::record::{Change, Diff, Plan, PlannedEvent, StoredRecord};
use super::topics::{TemplateError, TopicTemplate};
use crate::config::SourceConfig;

/// Most rows Grist puts in one webhook request.
pub const MAX_ROWS: usize = 100;

/// Grist's hidden ordering column, left out of `fields` and of the comparison.
pub const MANUAL_SORT: &str = "manualSort";

/// The normalized fields, in event order.
pub const FIELDS: [&str; 8] = [
    "id",
    "agent",
    "location",
    "type",
    "status",
    "priority",
    "comment",
    "updated_at",
];

/// The default mapping: the CEREMA `Interventions` table.
pub const DEFAULT_COLUMNS: [(&str, &str); 8] = [
    ("id", "ID"),
    ("agent", "Agent"),
    ("location", "Localisation"),
    ("type", "Type"),
    ("status", "Statut"),
    ("priority", "Priorite"),
    ("comment", "Commentaire"),
    ("updated_at", "Derniere_MAJ"),
];

/// Default table name reported in events.
pub const DEFAULT_TABLE: &str = "Interventions";

/// Default topics of a Grist source.
pub const DEFAULT_TOPICS: [&str; 2] = ["interventions", "interventions/{id}"];

/// Placeholders a Grist topic template may use.
pub const TOPIC_VARS: [&str; 4] = ["id", "row_id", "table", "source"];

/// Default event type.
pub const DEFAULT_EVENT_TYPE: &str = "intervention";

/// Which Grist column feeds each normalized field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnMapping {
    /// In [`FIELDS`] order; `None` when the field is not mapped (always `null`).
    columns: Vec<(&'static str, Option<String>)>,
}

impl Default for ColumnMapping {
    fn default() -> Self {
        Self {
            columns: DEFAULT_COLUMNS
                .iter()
                .map(|(f, c)| (*f, Some(c.to_string())))
                .collect(),
        }
    }
}

impl ColumnMapping {
    /// The default mapping with `overrides` (field → column id; an empty column id
    /// unmaps the field). Unknown fields and two fields on one column are refused.
    pub fn from_overrides(overrides: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut mapping = Self::default();
        for (field, column) in overrides {
            let Some(slot) = mapping.columns.iter_mut().find(|(f, _)| f == field) else {
                return Err(format!(
                    "columns.{field}: unknown field (mappable fields: {})",
                    FIELDS.join(", ")
                ));
            };
            let column = column.trim();
            if column == MANUAL_SORT {
                return Err(format!("columns.{field}: manualSort cannot be mapped"));
            }
            slot.1 = (!column.is_empty()).then(|| column.to_string());
        }
        let mut seen = HashMap::new();
        for (field, column) in &mapping.columns {
            if let Some(column) = column {
                if let Some(other) = seen.insert(column.clone(), *field) {
                    return Err(format!(
                        "columns: {other} and {field} both map to column {column:?}"
                    ));
                }
            }
        }
        Ok(mapping)
    }

    /// The column feeding `field`.
    pub fn column(&self, field: &str) -> Option<&str> {
        self.columns
            .iter()
            .find(|(f, _)| *f == field)
            .and_then(|(_, c)| c.as_deref())
    }

    /// The field a column feeds.
    pub fn field_for(&self, column: &str) -> Option<&'static str> {
        self.columns
            .iter()
            .find(|(_, c)| c.as_deref() == Some(column))
            .map(|(f, _)| *f)
    }

    /// `(field, column)` pairs of the mapped fields, in event order.
    pub fn pairs(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.columns
            .iter()
            .filter_map(|(f, c)| c.as_deref().map(|c| (*f, c)))
    }
}

/// The decoded, mapped fields of one row.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Intervention {
    /// The `ID` column as text, or `null`.
    pub id: Value,
    /// Agent name.
    pub agent: Value,
    /// Address / location.
    pub location: Value,
    /// Intervention type.
    #[serde(rename = "type")]
    pub kind: Value,
    /// Status (`En cours`, `Terminé`, ...).
    pub status: Value,
    /// Priority (`Basse` ... `Urgente`).
    pub priority: Value,
    /// Agent's comment.
    pub comment: Value,
    /// Last update, RFC 3339 UTC.
    pub updated_at: Value,
}

impl Intervention {
    /// The value of a normalized field by name.
    pub fn get(&self, field: &str) -> &Value {
        match field {
            "id" => &self.id,
            "agent" => &self.agent,
            "location" => &self.location,
            "type" => &self.kind,
            "status" => &self.status,
            "priority" => &self.priority,
            "comment" => &self.comment,
            "updated_at" => &self.updated_at,
            _ => &Value::Null,
        }
    }

    fn slot(&mut self, field: &str) -> Option<&mut Value> {
        Some(match field {
            "id" => &mut self.id,
            "agent" => &mut self.agent,
            "location" => &mut self.location,
            "type" => &mut self.kind,
            "status" => &mut self.status,
            "priority" => &mut self.priority,
            "comment" => &mut self.comment,
            "updated_at" => &mut self.updated_at,
            _ => return None,
        })
    }
}

/// One row of a Grist webhook, checked and normalized.
#[derive(Debug, Clone, PartialEq)]
pub struct GristRow {
    /// Grist's row id (`id`), the record's key.
    pub row_id: i64,
    /// Every column but `manualSort` (and the row `id`, kept in `row_id`), raw (storage
    /// encoding).
    pub fields: Arc<BTreeMap<String, Value>>,
    /// The mapped fields, decoded.
    pub mapped: Intervention,
}

/// Parses a Grist webhook body. One bad row refuses the whole batch.
pub fn parse_rows(body: &Value, mapping: &ColumnMapping) -> Result<Vec<GristRow>, InputError> {
    let Value::Array(rows) = body else {
        return Err(InputError::wrong_type(
            "body",
            "a JSON array of row objects (the body Grist sends)",
            body,
        ));
    };
    if rows.len() > MAX_ROWS {
        return Err(InputError::invalid(
            "body",
            format!(
                "a Grist webhook carries at most {MAX_ROWS} rows, this one has {}",
                rows.len()
            ),
        ));
    }
    rows.iter()
        .enumerate()
        .map(|(i, row)| parse_row(i, row, mapping))
        .collect()
}

fn parse_row(index: usize, row: &Value, mapping: &ColumnMapping) -> Result<GristRow, InputError> {
    let Value::Object(object) = row else {
        return Err(InputError::wrong_type(
            format!("rows[{index}]"),
            "a row object",
            row,
        ));
    };
    let id_path = || format!("rows[{index}].id");
    let row_id = match object.get("id") {
        None => return Err(InputError::missing(id_path(), " (Grist's row id)")),
        Some(v) => v
            .as_i64()
            .filter(|id| *id > 0)
            .ok_or_else(|| InputError::wrong_type(id_path(), "a row id (positive integer)", v))?,
    };
    let fields: BTreeMap<String, Value> = object
        .iter()
        .filter(|(k, _)| k.as_str() != MANUAL_SORT && k.as_str() != "id")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mapped = normalize(index, &fields, mapping)?;
    Ok(GristRow {
        row_id,
        fields: fields.into(),
        mapped,
    })
}

/// Decodes the mapped columns of a row (`index` names the row in errors). Every mapped
/// column must be present.
pub fn normalize(
    index: usize,
    fields: &BTreeMap<String, Value>,
    mapping: &ColumnMapping,
) -> Result<Intervention, InputError> {
    let mut out = Intervention::default();
    for (field, column) in mapping.pairs() {
        let path = || format!("rows[{index}].{column}");
        let raw = fields.get(column).ok_or_else(|| {
            InputError::missing(path(), format!(" (the column mapped to {field})"))
        })?;
        let value = decode_field(field, raw).map_err(|expected| {
            if let Some(detail) = expected.strip_prefix('!') {
                InputError::invalid(path(), detail.to_string())
            } else {
                InputError::wrong_type(path(), expected, raw)
            }
        })?;
        if let Some(slot) = out.slot(field) {
            *slot = value;
        }
    }
    Ok(out)
}

/// Like [`normalize`] but never fails: a missing or undecodable column gives `null`.
/// This is how [`diff_row`] reads a stored row (column by column, only where the raw
/// value changed): a stored row may predate a mapping change. The fuzz target checks
/// that it agrees with [`normalize`] on every accepted row, which the diff relies on.
pub fn normalize_lenient(
    fields: &BTreeMap<String, Value>,
    mapping: &ColumnMapping,
) -> Intervention {
    let mut out = Intervention::default();
    for (field, column) in mapping.pairs() {
        if let (Some(raw), Some(slot)) = (fields.get(column), out.slot(field)) {
            *slot = decode_field(field, raw).unwrap_or(Value::Null);
        }
    }
    out
}

/// Decodes one mapped value. On refusal returns what was expected, or `!reason` for a
/// value of the right type that is unusable.
fn decode_field(field: &str, raw: &Value) -> Result<Value, &'static str> {
    if is_formula_error(raw) || raw.is_null() {
        return Ok(Value::Null);
    }
    match field {
        "id" => match raw {
            Value::String(_) => Ok(raw.clone()),
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(Value::String(n.to_string())),
            _ => Err("text or an integer"),
        },
        "updated_at" => decode_datetime(raw),
        _ => match raw {
            Value::String(_) => Ok(raw.clone()),
            _ => Err("text"),
        },
    }
}

fn decode_datetime(raw: &Value) -> Result<Value, &'static str> {
    const EXPECTED: &str = "a Date/DateTime (epoch seconds) or RFC 3339 text";
    let seconds = match raw {
        Value::Number(n) => n.as_f64(),
        // ["D", seconds, timezone] and ["d", seconds]: dates in Any columns.
        Value::Array(items) if matches!(items.first().and_then(Value::as_str), Some("D" | "d")) => {
            items.get(1).and_then(Value::as_f64)
        }
        Value::String(text) => {
            return OffsetDateTime::parse(text, &Rfc3339)
                .ok()
                .and_then(|t| format_utc(t).ok())
                .map(Value::String)
                .ok_or("!text that is not an RFC 3339 date-time");
        }
        _ => None,
    };
    let seconds = seconds.ok_or(EXPECTED)?;
    epoch_seconds_to_rfc3339(seconds)
        .map(Value::String)
        .ok_or("!a date out of range")
}

/// Epoch seconds (possibly fractional, rounded to the millisecond) as RFC 3339 UTC.
pub fn epoch_seconds_to_rfc3339(seconds: f64) -> Option<String> {
    let millis = (seconds * 1000.0).round();
    if !millis.is_finite() || millis.abs() > 1e15 {
        return None;
    }
    epoch_millis_to_rfc3339(millis as i64)
}

/// Epoch milliseconds as RFC 3339 UTC.
pub fn epoch_millis_to_rfc3339(millis: i64) -> Option<String> {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000).ok()?;
    format_utc(t).ok()
}

fn format_utc(t: OffsetDateTime) -> Result<String, time::error::Format> {
    t.to_offset(time::UtcOffset::UTC).format(&Rfc3339)
}

/// Whether a cell holds a Grist formula error (`["E", name, ...]`).
pub fn is_formula_error(value: &Value) -> bool {
    matches!(value, Value::Array(items) if items.first().and_then(Value::as_str) == Some("E"))
}

/// How a row differs from its stored raw columns. `None` when identical. Mapped columns
/// are reported by field name with their decoded old value; other columns as
/// `fields.<column>` with their raw old value.
pub fn diff_row(
    previous: Option<&BTreeMap<String, Value>>,
    row: &GristRow,
    mapping: &ColumnMapping,
) -> Option<Diff> {
    let Some(previous) = previous else {
        let mut changed: Vec<String> = FIELDS
            .iter()
            .filter(|f| mapping.column(f).is_some() && !row.mapped.get(f).is_null())
            .map(|f| f.to_string())
            .collect();
        changed.extend(
            row.fields
                .iter()
                .filter(|(c, v)| mapping.field_for(c).is_none() && !v.is_null())
                .map(|(c, _)| format!("fields.{c}")),
        );
        return Some(Diff {
            change: Change::Add,
            changed,
            previous: Map::new(),
        });
    };
    if *previous == *row.fields {
        return None;
    }
    let mut changed = Vec::new();
    let mut before = Map::new();
    for (field, column) in mapping.pairs() {
        let (was, now) = (previous.get(column), row.fields.get(column));
        // The same raw value decodes to the same value: only a changed column is
        // decoded again (leniently, as `normalize_lenient` would).
        if was == now {
            continue;
        }
        let old = was
            .map(|raw| decode_field(field, raw).unwrap_or(Value::Null))
            .unwrap_or(Value::Null);
        if &old != row.mapped.get(field) {
            changed.push(field.to_string());
            before.insert(field.to_string(), old);
        }
    }
    // Both maps are sorted by column: one walk visits the union of their columns in
    // order, each side once.
    let (mut olds, mut news) = (previous.iter().peekable(), row.fields.iter().peekable());
    loop {
        let order = match (olds.peek(), news.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((a, _)), Some((b, _))) => a.cmp(b),
        };
        // The side holding the smaller column moves on; both do on the same column.
        let was = if order.is_le() { olds.next() } else { None };
        let now = if order.is_ge() { news.next() } else { None };
        let Some(column) = was.or(now).map(|(c, _)| c) else {
            break;
        };
        let (was, now) = (was.map(|(_, v)| v), now.map(|(_, v)| v));
        if was == now {
            continue;
        }
        if mapping
            .field_for(column)
            .is_some_and(|f| changed.iter().any(|c| c == f))
        {
            continue;
        }
        let key = format!("fields.{column}");
        before.insert(key.clone(), was.cloned().unwrap_or(Value::Null));
        changed.push(key);
    }
    Some(Diff {
        change: Change::Update,
        changed,
        previous: before,
    })
}

/// A configured Grist source, ready to turn rows into events.
#[derive(Debug, Clone)]
pub struct GristSource {
    /// Source name (`sources.NAME`).
    pub name: String,
    /// Table name reported in events.
    pub table: String,
    /// Column mapping.
    pub mapping: ColumnMapping,
    /// Topic templates.
    pub topics: Vec<TopicTemplate>,
    /// Event type.
    pub event_type: String,
    /// Publish as private updates.
    pub private: bool,
    /// Column whose value orders versions of a row (`version_column`): a row older than
    /// the known state by it is dropped as stale. `None`: rows apply in arrival order.
    pub version_column: Option<String>,
}

/// The ordering value of a version column: a Date/DateTime (epoch seconds, or
/// `["D", s, tz]`), any number, or RFC 3339 text, in milliseconds; `None` when empty or
/// of another kind (such a row is not compared and applies).
pub fn version_of(raw: Option<&Value>) -> Option<i64> {
    let seconds = match raw? {
        Value::Number(n) => n.as_f64(),
        Value::Array(items) if matches!(items.first().and_then(Value::as_str), Some("D" | "d")) => {
            items.get(1).and_then(Value::as_f64)
        }
        Value::String(text) => {
            let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
            return i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok();
        }
        _ => None,
    }?;
    let millis = (seconds * 1000.0).round();
    (millis.is_finite() && millis.abs() < 9e18).then_some(millis as i64)
}

impl GristSource {
    /// Builds a source from its configuration (defaults: the CEREMA `Interventions`
    /// table, topics `interventions` and `interventions/{id}`, type `intervention`).
    pub fn from_config(name: &str, config: &SourceConfig) -> Result<Self, String> {
        let mapping = ColumnMapping::from_overrides(&config.columns)?;
        let topics = if config.topics.is_empty() {
            DEFAULT_TOPICS.iter().map(|t| t.to_string()).collect()
        } else {
            config.topics.clone()
        };
        let topics = TopicTemplate::parse_all(&topics, &TOPIC_VARS)
            .map_err(|e: TemplateError| format!("topics: {e}"))?;
        Ok(Self {
            name: name.into(),
            table: config
                .table
                .clone()
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| DEFAULT_TABLE.into()),
            mapping,
            topics,
            event_type: config
                .event_type
                .clone()
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| DEFAULT_EVENT_TYPE.into()),
            private: config.private,
            version_column: config
                .version_column
                .clone()
                .filter(|c| !c.trim().is_empty()),
        })
    }

    /// The record key of a row in the state store.
    pub fn key(row: &GristRow) -> String {
        row.row_id.to_string()
    }

    /// Decides which rows become events, given the known states by key.
    pub fn plan(&self, rows: &[GristRow], known: &HashMap<String, StoredRecord>) -> Plan {
        let mut plan = Plan::default();
        let mut current: HashMap<String, (&BTreeMap<String, Value>, Option<i64>)> = known
            .iter()
            .map(|(k, r)| (k.clone(), (&*r.values, r.version)))
            .collect();
        for row in rows {
            let key = Self::key(row);
            let version = self
                .version_column
                .as_ref()
                .and_then(|c| version_of(row.fields.get(c)));
            let before = current.get(&key).copied();
            // Last write wins by the version column: an older row is a late delivery.
            if let (Some(new), Some((_, Some(old)))) = (version, before) {
                if new < old {
                    plan.stale += 1;
                    continue;
                }
            }
            match diff_row(before.map(|(values, _)| values), row, &self.mapping) {
                None => plan.unchanged += 1,
                Some(diff) => {
                    plan.events.push(PlannedEvent {
                        topics: self.topics_for(row),
                        data: self.event_data(row, &diff),
                    });
                    plan.remember(
                        key.clone(),
                        StoredRecord {
                            values: row.fields.clone(),
                            version,
                        },
                    );
                    current.insert(key, (&row.fields, version));
                }
            }
        }
        plan
    }

    /// The rendered topics of a row. `{id}` is the `id` field, or the row id when the
    /// `ID` column is empty.
    pub fn topics_for(&self, row: &GristRow) -> Vec<String> {
        let id = match &row.mapped.id {
            Value::String(s) if !s.is_empty() => s.clone(),
            _ => row.row_id.to_string(),
        };
        self.topics
            .iter()
            .map(|t| {
                t.render(|var| match var {
                    "id" => id.clone(),
                    "row_id" => row.row_id.to_string(),
                    "table" => self.table.clone(),
                    _ => self.name.clone(),
                })
            })
            .collect()
    }

    /// The event's JSON data (the spec's "Normalized events").
    pub fn event_data(&self, row: &GristRow, diff: &Diff) -> String {
        let data = InterventionData {
            source: &self.name,
            table: &self.table,
            row_id: row.row_id,
            mapped: &row.mapped,
            change: diff.change,
            changed: &diff.changed,
            previous: &diff.previous,
            fields: &row.fields,
        };
        // Serializing JSON values and strings cannot fail.
        serde_json::to_string(&data).unwrap_or_default()
    }
}

#[derive(Serialize)]
struct InterventionData<'a> {
    source: &'a str,
    table: &'a str,
    row_id: i64,
    #[serde(flatten)]
    mapped: &'a Intervention,
    change: Change,
    changed: &'a [String],
    previous: &'a Map<String, Value>,
    fields: &'a BTreeMap<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(id: i64, statut: Value) -> Value {
        json!({
            "id": id, "manualSort": id, "ID": format!("INT-{id}"), "Agent": "Marie Durand",
            "Localisation": "Avenue de la République, Marseille", "Type": "Voirie",
            "Statut": statut, "Priorite": "Normale", "Derniere_MAJ": 1732000000,
            "Commentaire": "Nid-de-poule réparé", "Tags": ["L", "nuit", "pluie"],
            "Equipe": 0, "Duree": ["E", "TypeError", "unsupported operand"]
        })
    }

    fn source() -> GristSource {
        let config: SourceConfig = toml::from_str("kind = \"grist\"\nsecret = \"s\"").unwrap();
        GristSource::from_config("cerema", &config).unwrap()
    }

    #[test]
    fn parses_storage_encoding_and_keeps_fields_raw() {
        let rows = parse_rows(
            &json!([row(1, json!("Terminé"))]),
            &ColumnMapping::default(),
        )
        .unwrap();
        let r = &rows[0];
        assert_eq!(r.row_id, 1);
        assert!(!r.fields.contains_key("manualSort"));
        assert!(!r.fields.contains_key("id"));
        assert_eq!(r.fields["Tags"], json!(["L", "nuit", "pluie"]));
        assert_eq!(r.fields["Equipe"], json!(0));
        assert_eq!(r.fields["Duree"][0], json!("E"));
        assert_eq!(r.mapped.id, json!("INT-1"));
        assert_eq!(r.mapped.status, json!("Terminé"));
        assert_eq!(r.mapped.updated_at, json!("2024-11-19T07:06:40Z"));
    }

    #[test]
    fn decodes_dates_ids_and_formula_errors() {
        assert_eq!(
            decode_field("updated_at", &json!(1732000000.25)),
            Ok(json!("2024-11-19T07:06:40.25Z"))
        );
        assert_eq!(
            decode_field("updated_at", &json!(["D", 0, "Europe/Paris"])),
            Ok(json!("1970-01-01T00:00:00Z"))
        );
        assert_eq!(
            decode_field("updated_at", &json!("2024-11-19T08:06:40+01:00")),
            Ok(json!("2024-11-19T07:06:40Z"))
        );
        assert!(decode_field("updated_at", &json!("hier")).is_err());
        assert!(decode_field("updated_at", &json!(1e300)).is_err());
        assert_eq!(decode_field("id", &json!(42)), Ok(json!("42")));
        assert_eq!(
            decode_field("status", &json!(["E", "ValueError"])),
            Ok(Value::Null)
        );
        assert_eq!(decode_field("comment", &Value::Null), Ok(Value::Null));
        assert_eq!(decode_field("status", &json!(3)), Err("text"));
        assert_eq!(decode_field("type", &json!(["L", "a"])), Err("text"));
    }

    #[test]
    fn errors_name_row_and_column() {
        let m = ColumnMapping::default();
        let body = json!([
            row(1, json!("ok")),
            row(2, json!("ok")),
            row(3, json!("ok")),
            row(4, json!(7))
        ]);
        assert_eq!(
            parse_rows(&body, &m).unwrap_err().to_string(),
            "rows[3].Statut: expected text, found number"
        );
        let mut r = row(1, json!("ok"));
        r.as_object_mut().unwrap().remove("Priorite");
        assert_eq!(
            parse_rows(&json!([r]), &m).unwrap_err().to_string(),
            "rows[0].Priorite: missing (the column mapped to priority)"
        );
        let mut r = row(1, json!("ok"));
        r["id"] = json!("rec1");
        assert_eq!(
            parse_rows(&json!([r]), &m).unwrap_err().to_string(),
            "rows[0].id: expected a row id (positive integer), found text"
        );
        assert_eq!(parse_rows(&json!({"id": 1}), &m).unwrap_err().path, "body");
        assert_eq!(parse_rows(&json!([1]), &m).unwrap_err().path, "rows[0]");
        let many: Vec<Value> = (1..=101).map(|i| row(i, json!("ok"))).collect();
        assert!(parse_rows(&json!(many), &m)
            .unwrap_err()
            .to_string()
            .contains("at most 100"));
        let hundred: Vec<Value> = (1..=100).map(|i| row(i, json!("ok"))).collect();
        assert_eq!(parse_rows(&json!(hundred), &m).unwrap().len(), 100);
    }

    #[test]
    fn mapping_overrides_and_refusals() {
        let mut o = BTreeMap::new();
        o.insert("status".to_string(), "Etat".to_string());
        o.insert("comment".to_string(), String::new());
        let m = ColumnMapping::from_overrides(&o).unwrap();
        assert_eq!(m.column("status"), Some("Etat"));
        assert_eq!(m.column("comment"), None);
        assert_eq!(m.field_for("Agent"), Some("agent"));
        o.insert("nope".to_string(), "X".to_string());
        assert!(ColumnMapping::from_overrides(&o)
            .unwrap_err()
            .contains("unknown field"));
        let mut o = BTreeMap::new();
        o.insert("status".to_string(), "Agent".to_string());
        assert!(ColumnMapping::from_overrides(&o)
            .unwrap_err()
            .contains("both map"));
    }

    #[test]
    fn a_version_column_drops_rows_older_than_the_known_state() {
        let config: SourceConfig =
            toml::from_str("kind = \"grist\"\nsecret = \"s\"\nversion_column = \"Derniere_MAJ\"")
                .unwrap();
        let s = GristSource::from_config("cerema", &config).unwrap();
        let at = |statut: &str, when: Value| {
            let mut r = row(7, json!(statut));
            r["Derniere_MAJ"] = when;
            parse_rows(&json!([r]), &s.mapping).unwrap()
        };
        let newer = s.plan(&at("Terminé", json!(1_732_000_100)), &HashMap::new());
        assert_eq!(newer.store[0].1.version, Some(1_732_000_100_000));
        let known: HashMap<String, StoredRecord> = newer.store.into_iter().collect();
        // Grist delivers an older version of the row late: dropped, nothing stored.
        let late = s.plan(&at("En cours", json!(1_732_000_000.5)), &known);
        assert_eq!((late.events.len(), late.stale, late.store.len()), (0, 1, 0));
        // A newer one (here as RFC 3339 text) applies; within one batch too.
        let next = s.plan(&at("Bloqué", json!("2024-11-19T07:15:00Z")), &known);
        assert_eq!(next.events.len(), 1);
        let (mut b1, mut b2) = (row(7, json!("B")), row(7, json!("A")));
        b1["Derniere_MAJ"] = json!(1_732_000_300);
        b2["Derniere_MAJ"] = json!(1_732_000_200);
        let batch = parse_rows(&json!([b1, b2]), &s.mapping).unwrap();
        let plan = s.plan(&batch, &known);
        assert_eq!((plan.events.len(), plan.stale), (1, 1));
        // Without the column, behaviour is as before: arrival order wins.
        let plain = source().plan(&at("En cours", json!(1)), &known);
        assert_eq!(plain.events.len(), 1);
        assert_eq!(version_of(Some(&json!(["D", 1.5, "UTC"]))), Some(1500));
        assert_eq!(version_of(Some(&Value::Null)), None);
        assert_eq!(version_of(None), None);
    }

    #[test]
    fn plan_add_then_identical_then_update() {
        let s = source();
        let m = &s.mapping;
        let first = parse_rows(&json!([row(7, json!("En cours"))]), m).unwrap();
        let plan = s.plan(&first, &HashMap::new());
        assert_eq!(plan.events.len(), 1);
        assert_eq!(
            plan.events[0].topics,
            ["interventions", "interventions/INT-7"]
        );
        let data: Value = serde_json::from_str(&plan.events[0].data).unwrap();
        assert_eq!(data["change"], "add");
        assert_eq!(data["source"], "cerema");
        assert_eq!(data["table"], "Interventions");
        assert_eq!(data["row_id"], 7);
        assert_eq!(data["location"], "Avenue de la République, Marseille");
        assert_eq!(data["type"], "Voirie");
        assert_eq!(data["previous"], json!({}));
        assert!(data["changed"]
            .as_array()
            .unwrap()
            .contains(&json!("status")));
        assert!(data["changed"]
            .as_array()
            .unwrap()
            .contains(&json!("fields.Tags")));
        assert!(data["fields"].get("manualSort").is_none());

        let known: HashMap<String, StoredRecord> = plan.store.into_iter().collect();
        let again = s.plan(&first, &known);
        assert!(again.events.is_empty());
        assert_eq!(again.unchanged, 1);

        let mut updated = row(7, json!("Terminé"));
        updated["manualSort"] = json!(99);
        updated["Tags"] = json!(["L", "nuit"]);
        let second = parse_rows(&json!([updated]), m).unwrap();
        let plan = s.plan(&second, &known);
        let data: Value = serde_json::from_str(&plan.events[0].data).unwrap();
        assert_eq!(data["change"], "update");
        assert_eq!(data["changed"], json!(["status", "fields.Tags"]));
        assert_eq!(
            data["previous"],
            json!({"status": "En cours", "fields.Tags": ["L", "nuit", "pluie"]})
        );

        // Only manualSort moved: identical.
        let mut moved = row(7, json!("En cours"));
        moved["manualSort"] = json!(1.5);
        let plan = s.plan(&parse_rows(&json!([moved]), m).unwrap(), &known);
        assert_eq!((plan.events.len(), plan.unchanged), (0, 1));
    }

    #[test]
    fn a_row_twice_in_one_batch_gives_two_events_and_one_state() {
        let s = source();
        let rows = parse_rows(
            &json!([row(1, json!("A")), row(1, json!("B")), row(1, json!("B"))]),
            &s.mapping,
        )
        .unwrap();
        let plan = s.plan(&rows, &HashMap::new());
        assert_eq!(plan.events.len(), 2);
        assert_eq!(plan.unchanged, 1);
        assert_eq!(plan.store.len(), 1);
        assert_eq!(plan.store[0].1.values["Statut"], json!("B"));
        let second: Value = serde_json::from_str(&plan.events[1].data).unwrap();
        assert_eq!(second["previous"], json!({"status": "A"}));
    }

    #[test]
    fn empty_id_falls_back_to_row_id_in_topics() {
        let s = source();
        let rows = parse_rows(&json!([row(3, json!("A"))]), &s.mapping).unwrap();
        let mut r = rows[0].clone();
        r.mapped.id = Value::Null;
        assert_eq!(s.topics_for(&r)[1], "interventions/3");
    }

    /// The diff as it was first written (decode the whole stored row, then look every
    /// column of the union up on both sides): the reference the faster walk must match.
    fn reference_diff(
        previous: &BTreeMap<String, Value>,
        row: &GristRow,
        mapping: &ColumnMapping,
    ) -> Option<Diff> {
        if *previous == *row.fields {
            return None;
        }
        let old = normalize_lenient(previous, mapping);
        let mut changed = Vec::new();
        let mut before = Map::new();
        for (field, _) in mapping.pairs() {
            if old.get(field) != row.mapped.get(field) {
                changed.push(field.to_string());
                before.insert(field.to_string(), old.get(field).clone());
            }
        }
        let columns: std::collections::BTreeSet<&String> =
            previous.keys().chain(row.fields.keys()).collect();
        for column in columns {
            let (was, now) = (previous.get(column), row.fields.get(column));
            if was == now {
                continue;
            }
            if mapping
                .field_for(column)
                .is_some_and(|f| changed.iter().any(|c| c == f))
            {
                continue;
            }
            let key = format!("fields.{column}");
            before.insert(key.clone(), was.cloned().unwrap_or(Value::Null));
            changed.push(key);
        }
        Some(Diff {
            change: Change::Update,
            changed,
            previous: before,
        })
    }

    proptest::proptest! {
        #[test]
        fn the_diff_walk_reports_what_the_reference_rule_does(
            old in proptest::collection::btree_map("(ID|Agent|Statut|Derniere_MAJ|A|Z|b)", 0..6u8, 0..7),
            new in proptest::collection::btree_map("(ID|Agent|Statut|Derniere_MAJ|A|Z|b)", 0..6u8, 0..7),
        ) {
            // Small value alphabets, so that columns often agree; the mapped columns
            // always present in the new row (the strict parser requires them).
            let value = |v: u8| match v {
                0 => Value::Null,
                1 => json!("x"),
                2 => json!("y"),
                3 => json!(1732000000),
                4 => json!(["E", "TypeError"]),
                _ => json!(7),
            };
            let source = source();
            let mut body = json!({"id": 1, "manualSort": 1, "ID": "I", "Agent": "a",
                "Localisation": "l", "Type": "t", "Statut": "s", "Priorite": "p",
                "Derniere_MAJ": 0, "Commentaire": "c"});
            for (column, v) in &new {
                body[column.as_str()] = value(*v);
            }
            let Ok(row) = parse_row(0, &body, &source.mapping) else {
                return Ok(());
            };
            let previous: BTreeMap<String, Value> =
                old.iter().map(|(c, v)| (c.clone(), value(*v))).collect();
            let mut previous_full = (*row.fields).clone();
            previous_full.extend(previous);
            for previous in [previous_full, old.iter().map(|(c, v)| (c.clone(), value(*v))).collect()] {
                proptest::prop_assert_eq!(
                    diff_row(Some(&previous), &row, &source.mapping),
                    reference_diff(&previous, &row, &source.mapping)
                );
            }
        }
    }
}
