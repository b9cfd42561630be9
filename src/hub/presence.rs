//! Presence: Mercure's active subscriptions.
//!
//! Each topic selector of an accepted subscription request is one subscription; the
//! selectors of one connection share one subscriber identifier (a `urn:uuid:`). When a
//! subscription starts or ends, a private update is published on its IRI,
//! `/.well-known/mercure/subscriptions/{topic}/{subscriber}` (a Mercure 1.0 request:
//! `/.well-known/mercure/subscriptions/{match_type}/{match}/{subscriber}`), each part
//! percent-encoded as an RFC 6570 simple expansion. Its data is the JSON-LD document
//! `{"@context", "id", "type": "Subscription", "topic", "subscriber", "active",
//! "payload"}` (`id` is the IRI, `payload` the token's `mercure.payload`, absent when it
//! has none). These events reach subscribers by the rules of any private update.
//!
//! The hub keeps them apart from business events ([`Registry`]): their own bounded
//! history (`hub.subscriptions_history`), so a reconnect storm never pushes business
//! events out, and the active subscriptions they describe, read by the subscriptions
//! API together with the last event ID. Because the list is derived from the events
//! themselves, every instance fed the same events (Redis) holds the same list.
//!
//! [`Presence`] announces the subscriptions of this process: directly to the hub in
//! single-binary mode, or through a [`Shared`] backend (Redis) that publishes to every
//! instance. A [`Guard`], created when a subscription request is accepted and dropped
//! however its stream ends, announces the end.

use std::collections::BTreeMap;
use std::sync::Arc;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use super::{Event, EventDraft, History, Hub, Selector};

/// Which protocol generation's IRI form a subscription takes (that of its request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// Mercure 0.x: `{topic}/{subscriber}`.
    V0,
    /// Mercure 1.0: `{match_type}/{match}/{subscriber}`.
    V1,
}

/// The path under which subscriptions live (the collection's `id`).
pub const SUBSCRIPTIONS_PATH: &str = "/.well-known/mercure/subscriptions";

/// The `@context` of every presence document.
pub const CONTEXT: &str = "https://mercure.rocks/";

/// The source label of subscription events (metrics).
pub const SOURCE: &str = "presence";

/// Topics under this prefix are the hub's own: publishers cannot use them.
pub const RESERVED_PREFIX: &str = "/.well-known/mercure/";

/// What an RFC 6570 simple expansion leaves as is: unreserved characters.
const EXPANSION: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `text` as an RFC 6570 simple expansion writes it.
pub fn encode(text: &str) -> String {
    utf8_percent_encode(text, EXPANSION).to_string()
}

/// Whether a publisher's topic is reserved for the hub (`/.well-known/mercure/...`,
/// relative or under any host), so nobody can forge presence.
pub fn is_reserved(topic: &str) -> bool {
    let path = match topic.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("", |at| &rest[at..]),
        None => topic,
    };
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    decoded.starts_with(RESERVED_PREFIX) || path.starts_with(RESERVED_PREFIX)
}

/// The decoded path segments after [`SUBSCRIPTIONS_PATH`] (`None` for another path).
pub fn segments(path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix(SUBSCRIPTIONS_PATH)?;
    if rest.is_empty() || rest == "/" {
        return Some(Vec::new());
    }
    let rest = rest.strip_prefix('/')?;
    Some(
        rest.trim_end_matches('/')
            .split('/')
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect(),
    )
}

/// One active subscription: its IRI (the topic of its events) and its JSON-LD document
/// (`active: true`), as a change carries it or another instance's list gives it.
#[derive(Debug, Clone)]
pub struct Active {
    /// Its IRI, one allocation shared by the hub's list, the backend and the connection's
    /// guard (held for every connection, so held once).
    pub iri: Arc<str>,
    /// The JSON-LD document.
    pub data: String,
}

impl Active {
    /// From an IRI and its document.
    pub fn new(iri: &str, data: String) -> Self {
        Self {
            iri: iri.into(),
            data,
        }
    }
}

/// An active subscription as the hub lists it (borrowed from its registry).
#[derive(Debug, Clone, Copy)]
pub struct Listed<'a> {
    /// Its IRI.
    pub iri: &'a str,
    /// The JSON-LD document (`active: true`).
    pub data: &'a str,
}

impl Listed<'_> {
    /// The IRI's decoded segments after [`SUBSCRIPTIONS_PATH`] (computed when asked: the
    /// list is read rarely and held for every connection).
    pub fn segments(&self) -> Vec<String> {
        segments(self.iri).unwrap_or_default()
    }
}

/// A subscription event to commit: the update, and the subscription it starts (`None`
/// when it ends one).
#[derive(Debug, Clone)]
pub struct Change {
    /// The private update on the subscription's IRI.
    pub draft: EventDraft,
    /// Set when the subscription starts.
    pub started: Option<Active>,
}

impl Change {
    /// A change read back from a shared log: `active` tells a start from an end.
    pub fn from_parts(id: String, iri: String, data: String, active: bool) -> Self {
        let started = active.then(|| Active::new(&iri, data.clone()));
        Self {
            draft: draft(id, iri, data),
            started,
        }
    }

    /// The subscription's IRI.
    pub fn iri(&self) -> &str {
        self.draft.topics.first().map_or("", String::as_str)
    }

    /// The IRI of the subscription it starts, shared with the hub's list (a new
    /// allocation for an end).
    pub fn shared_iri(&self) -> Arc<str> {
        match &self.started {
            Some(active) => active.iri.clone(),
            None => self.iri().into(),
        }
    }
}

fn draft(id: String, iri: String, data: String) -> EventDraft {
    EventDraft::new(vec![iri], data)
        .with_id(id)
        .with_source(SOURCE)
        .private(true)
}

/// The hub's side of presence: the subscription events retained for resume and the
/// active subscriptions, by IRI.
#[derive(Debug)]
pub struct Registry {
    /// Subscription events, bounded apart from business events.
    pub history: History,
    /// Documents by IRI, each held once and at its exact size (one per subscription).
    active: BTreeMap<Arc<str>, Box<str>>,
}

impl Registry {
    /// Empty, retaining at most `capacity` subscription events.
    pub fn new(capacity: usize) -> Self {
        Self {
            history: History::new(capacity),
            active: BTreeMap::new(),
        }
    }

    /// Records a committed subscription event.
    pub fn apply(&mut self, event: &Arc<Event>, started: Option<Active>) {
        self.history.push(event.clone());
        match started {
            Some(active) => self.seed(active),
            None => {
                let iri = event.topics.first().map_or("", String::as_str);
                self.active.remove(iri);
            }
        }
    }

    /// Records an active subscription without an event.
    pub fn seed(&mut self, active: Active) {
        self.active.insert(active.iri, active.data.into_boxed_str());
    }

    /// The document of the active subscription with this IRI.
    pub fn document(&self, iri: &str) -> Option<&str> {
        self.active.get(iri).map(|d| &**d)
    }

    /// The active subscriptions, by IRI.
    pub fn active(&self) -> impl Iterator<Item = Listed<'_>> {
        self.active.iter().map(|(iri, data)| Listed { iri, data })
    }
}

/// The counter of delivered subscription events (looked up once: a reconnect storm
/// commits thousands of them).
pub fn delivery_counter() -> metrics::Counter {
    static COUNTER: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    COUNTER
        .get_or_init(|| super::event::delivery_counter(SOURCE, None))
        .clone()
}

/// The start and end events of one subscription.
#[derive(Debug, Clone)]
pub struct Pair {
    /// `active: true`, to publish now.
    pub start: Change,
    /// `active: false`, to publish when it ends (its ID chosen now, so whoever publishes
    /// it, this instance or another after a crash, publishes the same event).
    pub end: Change,
}

impl Pair {
    /// The same subscription announced again, with new event IDs (after this instance
    /// was taken for dead and its subscriptions ended by another).
    pub fn renewed(&self) -> Pair {
        let mut pair = self.clone();
        pair.start.draft.id = super::event::generate_id();
        pair.end.draft.id = super::event::generate_id();
        pair
    }
}

/// The start and end events of the subscription of `subscriber` to `selector`.
pub fn pair(
    selector: &Selector,
    generation: Form,
    subscriber: &str,
    payload: Option<&Value>,
) -> Pair {
    let topic = selector.as_str();
    let (iri, match_type) = match (generation, selector) {
        (Form::V1, Selector::Pattern { .. }) => (
            format!(
                "{SUBSCRIPTIONS_PATH}/urlpattern/{}/{}",
                encode(topic),
                encode(subscriber)
            ),
            Some("urlpattern"),
        ),
        (Form::V1, _) => (
            format!(
                "{SUBSCRIPTIONS_PATH}/exact/{}/{}",
                encode(topic),
                encode(subscriber)
            ),
            Some("exact"),
        ),
        (Form::V0, _) => (
            format!(
                "{SUBSCRIPTIONS_PATH}/{}/{}",
                encode(topic),
                encode(subscriber)
            ),
            None,
        ),
    };
    let document = |active: bool| {
        let mut doc = json!({
            "@context": CONTEXT,
            "id": iri,
            "type": "Subscription",
            "topic": topic,
            "subscriber": subscriber,
            "active": active,
        });
        if let Some(kind) = match_type {
            doc["match_type"] = json!(kind);
        }
        if let Some(payload) = payload {
            doc["payload"] = payload.clone();
        }
        doc.to_string()
    };
    let start = document(true);
    Pair {
        start: Change {
            draft: draft(super::event::generate_id(), iri.clone(), start.clone()),
            started: Some(Active::new(&iri, start)),
        },
        end: Change {
            draft: draft(super::event::generate_id(), iri.clone(), document(false)),
            started: None,
        },
    }
}

/// The end document of a subscription from its start document: the same with
/// `active: false` (`None` if `start` is not a JSON object). A backend can keep the start
/// document alone and derive the end when it is due.
pub fn ended(start: &str) -> Option<String> {
    let mut doc: Value = serde_json::from_str(start).ok()?;
    *doc.as_object_mut()?.get_mut("active")? = Value::Bool(false);
    Some(doc.to_string())
}

/// A backend that shares presence between instances (Redis).
pub trait Shared: Send + Sync {
    /// Publishes `pair.start` to every instance and remembers `pair.end` as this
    /// instance's, to publish when the subscription ends or this instance dies.
    fn start(&self, pair: Pair);
    /// Publishes the end of the subscription with this IRI, once: not if another
    /// instance already ended it.
    fn end(&self, iri: Arc<str>);
    /// A clean stop: ends every subscription of this instance still listed, once.
    fn close(&self) -> futures::future::BoxFuture<'_, ()>;
}

/// Announces this process' subscriptions.
pub struct Presence {
    hub: Arc<Hub>,
    enabled: bool,
    shared: Option<Arc<dyn Shared>>,
}

impl Presence {
    /// Presence for `hub`, in this process only; `enabled = false` announces nothing
    /// (`hub.subscriptions = false`).
    pub fn local(hub: Arc<Hub>, enabled: bool) -> Self {
        Self {
            hub,
            enabled,
            shared: None,
        }
    }

    /// Presence shared through `shared` (Redis).
    pub fn shared(hub: Arc<Hub>, enabled: bool, shared: Arc<dyn Shared>) -> Self {
        Self {
            hub,
            enabled,
            shared: Some(shared),
        }
    }

    /// Whether subscriptions are announced and listed.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// A clean stop: with a shared backend, ends this instance's subscriptions for the
    /// others at once (in process, nobody else is left to tell).
    pub async fn close(&self) {
        if let Some(shared) = &self.shared {
            shared.close().await;
        }
    }

    /// Announces the subscriptions of a new connection (one per selector, one new
    /// subscriber identifier); the guard announces their end when dropped.
    pub fn start(
        self: &Arc<Self>,
        selectors: &[Selector],
        generation: Form,
        payload: Option<&Value>,
    ) -> Guard {
        if !self.enabled {
            return Guard {
                presence: self.clone(),
                ends: Ends::Shared(Box::default()),
            };
        }
        let subscriber = super::event::generate_id();
        let pairs = selectors
            .iter()
            .map(|selector| pair(selector, generation, &subscriber, payload));
        let ends = match &self.shared {
            // The backend keeps the end events: the guard only names them.
            Some(shared) => Ends::Shared(
                pairs
                    .map(|pair| {
                        let iri = pair.start.shared_iri();
                        shared.start(pair);
                        iri
                    })
                    .collect(),
            ),
            None => Ends::Local(
                pairs
                    .map(|pair| {
                        self.hub.commit_presence(pair.start);
                        pair.end
                    })
                    .collect(),
            ),
        };
        Guard {
            presence: self.clone(),
            ends,
        }
    }
}

/// Ends a connection's subscriptions when dropped (however its stream ends).
pub struct Guard {
    presence: Arc<Presence>,
    ends: Ends,
}

/// What a guard ends.
enum Ends {
    /// In process: the end events, to commit.
    Local(Box<[Change]>),
    /// Through the shared backend, which keeps the end events: their IRIs.
    Shared(Box<[Arc<str>]>),
}

impl Guard {
    /// The subscriber identifier shared by the connection's subscriptions, if announced:
    /// the last segment of their IRIs.
    pub fn subscriber(&self) -> Option<String> {
        let iri = match &self.ends {
            Ends::Local(changes) => changes.first()?.iri(),
            Ends::Shared(iris) => iris.first()?,
        };
        segments(iri)?.pop()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.ends, Ends::Shared(Box::default())) {
            Ends::Local(changes) => {
                for end in changes.into_vec() {
                    self.presence.hub.commit_presence(end);
                }
            }
            Ends::Shared(iris) => {
                if let Some(shared) = &self.presence.shared {
                    for iri in iris.into_vec() {
                        shared.end(iri);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{ResumeFrom, Subscription};

    #[test]
    fn encodes_as_a_simple_expansion() {
        assert_eq!(encode("audits/a b"), "audits%2Fa%20b");
        assert_eq!(encode("urn:uuid:1-2"), "urn%3Auuid%3A1-2");
        assert_eq!(encode("a.b_c~d"), "a.b_c~d");
    }

    #[test]
    fn reserved_topics() {
        assert!(is_reserved("/.well-known/mercure/subscriptions/x/y"));
        assert!(is_reserved(
            "https://example.com/.well-known/mercure/subscriptions/x"
        ));
        assert!(is_reserved("/%2Ewell-known/mercure/subscriptions"));
        assert!(!is_reserved("audits/x"));
        assert!(!is_reserved(
            "https://example.com/audits/.well-known/mercure/"
        ));
    }

    #[test]
    fn the_end_document_derives_from_the_start_document() {
        let payload = json!({"name": "Adrien", "active": true});
        for (selector, form) in [
            (Selector::parse("audits/{t}").unwrap(), Form::V0),
            (Selector::exact("audits/a").unwrap(), Form::V1),
        ] {
            let pair = pair(&selector, form, "urn:uuid:1", Some(&payload));
            let end = ended(&pair.start.draft.data).unwrap();
            assert_eq!(end, pair.end.draft.data);
            let doc: Value = serde_json::from_str(&end).unwrap();
            assert_eq!(
                doc["payload"]["active"], true,
                "only the top-level flag changes"
            );
        }
        assert_eq!(ended("[1]"), None);
        assert_eq!(ended("{\"id\": 1}"), None);
    }

    #[test]
    fn events_and_list_follow_the_subscription() {
        let hub = Arc::new(Hub::new(10, 100).with_subscriptions_history(100));
        let presence = Arc::new(Presence::local(hub.clone(), true));
        let payload = json!({"name": "Adrien"});
        let selectors = vec![
            Selector::parse("audits/a").unwrap(),
            Selector::parse("audits/{t}").unwrap(),
        ];
        let guard = presence.start(&selectors, Form::V0, Some(&payload));
        let (list, last) = hub.active_subscriptions(|a| Some(a.data.to_string()));
        assert_eq!(list.len(), 2);
        let doc: Value = list
            .iter()
            .map(|d| serde_json::from_str::<Value>(d).unwrap())
            .find(|d| d["topic"] == "audits/a")
            .unwrap();
        assert_eq!(doc["type"], "Subscription");
        assert_eq!(doc["payload"]["name"], "Adrien");
        assert_eq!(doc["active"], true);
        let subscriber = guard.subscriber().unwrap();
        assert!(subscriber.starts_with("urn:uuid:"));
        assert_eq!(
            doc["id"],
            format!("{SUBSCRIPTIONS_PATH}/audits%2Fa/{}", encode(&subscriber))
        );
        // Business history untouched; both events resumable.
        assert_eq!(hub.retained(), 0);
        assert!(hub.retains(&last));
        drop(guard);
        let (list, _) = hub.active_subscriptions(|a| Some(a.iri.to_string()));
        assert!(list.is_empty());
        let all = Subscription {
            selectors: vec![Selector::Any],
            claims: Some(vec![Selector::Any]),
        };
        let s = hub.subscribe(all, &ResumeFrom::Earliest);
        assert_eq!(s.replay.len(), 4);
    }

    #[test]
    fn replay_merges_both_histories_in_commit_order() {
        let hub = Arc::new(Hub::new(10, 100).with_subscriptions_history(2));
        let presence = Arc::new(Presence::local(hub.clone(), true));
        hub.commit(EventDraft::new(vec!["t".into()], "1").with_id("b1"))
            .unwrap();
        let g = presence.start(&[Selector::parse("t").unwrap()], Form::V0, None);
        hub.commit(EventDraft::new(vec!["t".into()], "2").with_id("b2"))
            .unwrap();
        drop(g);
        hub.commit(EventDraft::new(vec!["t".into()], "3").with_id("b3"))
            .unwrap();
        let all = || Subscription {
            selectors: vec![Selector::Any],
            claims: Some(vec![Selector::Any]),
        };
        let ids = |from: ResumeFrom| -> Vec<String> {
            let s = hub.subscribe(all(), &from);
            s.replay
                .iter()
                .map(|e| {
                    if e.source == SOURCE {
                        "p".to_string()
                    } else {
                        e.id.clone()
                    }
                })
                .collect()
        };
        assert_eq!(ids(ResumeFrom::Earliest), ["b1", "p", "b2", "p", "b3"]);
        assert_eq!(ids(ResumeFrom::After("b1".into())), ["p", "b2", "p", "b3"]);
        assert_eq!(ids(ResumeFrom::After("b2".into())), ["p", "b3"]);
        // A reconnect storm of subscription events never evicts business events.
        for _ in 0..50 {
            drop(presence.start(&[Selector::parse("t").unwrap()], Form::V0, None));
        }
        assert_eq!(hub.retained(), 3);
        assert!(hub.retains("b1"));
    }

    #[test]
    fn wildcard_subscribers_are_not_sent_subscription_events() {
        let hub = Arc::new(Hub::new(10, 100));
        let presence = Arc::new(Presence::local(hub.clone(), true));
        let any = Subscription {
            selectors: vec![Selector::Any],
            claims: Some(vec![Selector::Any]),
        };
        let named = Subscription {
            selectors: vec![Selector::parse("/.well-known/mercure/subscriptions{/rest*}").unwrap()],
            claims: Some(vec![Selector::Any]),
        };
        let wildcard = hub.subscribe(any.clone(), &ResumeFrom::Now);
        let board = hub.subscribe(named.clone(), &ResumeFrom::Now);
        let guard = presence.start(&[Selector::parse("t").unwrap()], Form::V0, None);
        let ready = |live: &crate::hub::Live| {
            let mut out = std::collections::VecDeque::new();
            let waker = futures::task::noop_waker();
            let mut cx = std::task::Context::from_waker(&waker);
            {
                let mut fut = std::pin::pin!(live.next_events(&mut out));
                let _ = std::future::Future::poll(fut.as_mut(), &mut cx);
            }
            out.len()
        };
        assert_eq!(ready(&wildcard.live), 0, "* does not select presence");
        assert_eq!(ready(&board.live), 1);
        drop(guard);
        let all = hub.subscribe(any.clone(), &ResumeFrom::Earliest);
        assert!(all.replay.iter().all(|e| !any.wants(e)));
        assert!(all.replay.iter().all(|e| named.wants(e)));
    }

    #[test]
    fn a_disabled_presence_announces_nothing() {
        let hub = Arc::new(Hub::new(10, 100));
        let presence = Arc::new(Presence::local(hub.clone(), false));
        drop(presence.start(&[Selector::parse("t").unwrap()], Form::V0, None));
        assert_eq!(
            hub.active_subscriptions(|a| Some(a.iri.to_string()))
                .0
                .len(),
            0
        );
        assert_eq!(hub.active_subscriptions(|_| Some(())).1, "earliest");
    }
}
