//! The frames the peers (`bare`, Pushpin) write: for each benchmark event, the same
//! bytes relais writes to its subscribers for it, so that a ratio compares two servers
//! delivering the same stream, not two streams of different sizes.
//!
//! relais does not forward a Grist row as it came: it writes the normalized event of
//! `../shared/SPEC.md` ("Normalized events"), with a `urn:uuid:` ID, the mapped fields,
//! `change`, `changed`, `previous` and every raw column. That is about 2.6 times the
//! bytes of the row alone. Built here from the contract, not by relais's normalization
//! (only the RFC 3339 formatting of a timestamp is relais's function), and checked by the
//! `bytes/delivery` figure of every run, which counts what each server's subscribers
//! actually read.

use serde_json::{json, Map, Value};

use crate::args::Ingest;
use crate::workload::{row, row_id};

/// The Grist columns relais maps by default, with the field each becomes, in order.
const MAPPED: [(&str, &str); 8] = [
    ("ID", "id"),
    ("Agent", "agent"),
    ("Localisation", "location"),
    ("Type", "type"),
    ("Statut", "status"),
    ("Priorite", "priority"),
    ("Commentaire", "comment"),
    ("Derniere_MAJ", "updated_at"),
];

/// How the peers' frames are made: as relais writes the events of the run's ingestion.
#[derive(Debug, Clone)]
pub enum PeerFrames {
    /// Mercure publishes: relais writes the row as the data, with its own ID and the type.
    Mercure,
    /// Grist webhooks: relais writes the normalized event of each row.
    Grist {
        /// The webhook source's name (`source` in the event).
        source: String,
    },
}

impl PeerFrames {
    /// The frames for the run's ingestion.
    pub fn new(ingest: Ingest, source: &str) -> Self {
        match ingest {
            Ingest::Mercure => PeerFrames::Mercure,
            Ingest::Grist => PeerFrames::Grist {
                source: source.to_string(),
            },
        }
    }

    /// The SSE frame relais writes for event `seq`, whose row the sender built
    /// ([`row`]), when events are spread over `topics` (or over 100 rows when every
    /// subscriber gets everything).
    pub fn frame(&self, seq: u64, now: &Value, topics: Option<u64>) -> String {
        let data = match self {
            PeerFrames::Mercure => now.to_string(),
            PeerFrames::Grist { source } => normalized(source, seq, now, topics).to_string(),
        };
        format!(
            "id: {}\nevent: intervention\ndata: {data}\n\n",
            event_id(seq)
        )
    }
}

/// An ID of the form and length of relais's (`urn:uuid:` and a version 7 UUID).
fn event_id(seq: u64) -> String {
    format!(
        "urn:uuid:{:08x}-{:04x}-7{:03x}-8{:03x}-{:012x}",
        (seq >> 16) as u32,
        seq & 0xffff,
        seq & 0xfff,
        (seq >> 12) & 0xfff,
        seq & 0xffff_ffff_ffff
    )
}

/// A mapped value as relais writes it: `Derniere_MAJ` (Unix seconds) as RFC 3339.
fn mapped(column: &str, value: &Value) -> Value {
    match (column, value.as_i64()) {
        ("Derniere_MAJ", Some(secs)) => secs
            .checked_mul(1000)
            .and_then(relais::ingest::grist::epoch_millis_to_rfc3339)
            .map_or(Value::Null, Value::String),
        _ => value.clone(),
    }
}

/// The normalized event of event `seq`'s row `now`: the row of the same id sent `T`
/// events earlier is its previous state (none for the first `T`).
fn normalized(source: &str, seq: u64, now: &Value, topics: Option<u64>) -> Value {
    let id = row_id(seq, topics);
    let t = topics.unwrap_or(100).max(1);
    let before = seq.checked_sub(t).map(|s| row(s, id));
    let mut event = Map::new();
    event.insert("source".into(), json!(source));
    event.insert("table".into(), json!("Interventions"));
    event.insert("row_id".into(), json!(id));
    let (mut changed, mut previous) = (Vec::new(), Map::new());
    for (column, field) in MAPPED {
        let value = mapped(column, &now[column]);
        match &before {
            None => changed.push(json!(field)),
            Some(old) => {
                let old = mapped(column, &old[column]);
                if old != value {
                    changed.push(json!(field));
                    previous.insert(field.into(), old);
                }
            }
        }
        event.insert(field.into(), value);
    }
    let change = if before.is_some() { "update" } else { "add" };
    event.insert("change".into(), json!(change));
    event.insert("changed".into(), Value::Array(changed));
    event.insert("previous".into(), Value::Object(previous));
    let fields: Map<String, Value> = now
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| *k != "id" && *k != "manualSort")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    event.insert("fields".into(), Value::Object(fields));
    Value::Object(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_names_what_changed_and_keeps_the_new_marker_first() {
        let frames = PeerFrames::new(Ingest::Grist, "bench");
        let frame = frames.frame(205, &row(205, row_id(205, None)), None);
        let data: Value =
            serde_json::from_str(frame.split("data: ").nth(1).unwrap().trim_end()).unwrap();
        assert_eq!(data["change"], "update");
        assert_eq!(data["row_id"], 6);
        assert_eq!(data["changed"], json!(["comment", "updated_at"]));
        assert_eq!(
            data["previous"]["comment"],
            "Nid-de-poule, passage 105 BSEQ-105"
        );
        assert_eq!(data["fields"]["Derniere_MAJ"], 1_732_000_205);
        assert!(data["fields"].get("manualSort").is_none());
        // The benchmark's scanner counts the first marker of an event.
        let first = frame.find("BSEQ-").unwrap();
        assert!(frame[first..].starts_with("BSEQ-205"));
        assert!(frame.starts_with("id: urn:uuid:") && frame.ends_with("}\n\n"));
    }

    #[test]
    fn the_first_event_of_a_row_is_an_add_of_every_field() {
        let data = normalized("bench", 3, &row(3, row_id(3, Some(10))), Some(10));
        assert_eq!(data["change"], "add");
        assert_eq!(data["changed"].as_array().unwrap().len(), MAPPED.len());
        assert_eq!(data["previous"], json!({}));
    }
}
