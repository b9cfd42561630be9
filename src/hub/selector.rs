//! Topic selectors: an exact topic, an RFC 6570 URI template (Mercure 0.x), a WHATWG URL
//! Pattern (Mercure 1.0), or `*`.
//!
//! A template matches a topic when some assignment of its variables expands to that
//! topic. Simple `{var}` expansions cannot contain `/`, `?` or `#` (they are
//! percent-encoded on expansion); reserved `{+var}` and fragment `{#var}` expansions can
//! hold anything; the other operators (`/ . ; ? &`) match their prefixed lists.
//!
//! A URL Pattern (`https://example.com/books/:id`, `https://example.com/users/42/*`)
//! matches a topic read as a URL; relative patterns and relative topics (`audits/:token`,
//! `audits/abc`) are both resolved against the hub's URL, as Mercure 1.0 says. Patterns
//! are compiled by the `urlpattern` crate (its regular expressions are the `regex`
//! crate's, linear in the input, so a crafted pattern cannot backtrack), once, and kept
//! in a bounded cache like templates.

use std::cell::RefCell;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, OnceLock};

use lru::LruCache;
use regex::Regex;
use url::Url;
use urlpattern::{UrlPattern, UrlPatternInit, UrlPatternOptions};

/// A compiled topic selector.
#[derive(Debug, Clone)]
pub enum Selector {
    /// `*`: every topic.
    Any,
    /// A topic compared as a string.
    Exact(String),
    /// A URI template, compiled to an anchored regular expression.
    Template {
        /// The template as written.
        source: String,
        /// The compiled matcher.
        regex: Regex,
    },
    /// A WHATWG URL Pattern (Mercure 1.0 `match_urlpattern`, `match_type: "urlpattern"`).
    Pattern {
        /// The pattern as written.
        source: String,
        /// The compiled pattern, shared by every selector with the same text.
        pattern: Arc<UrlPattern>,
    },
}

/// Why a selector could not be compiled.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    /// Empty selector.
    #[error("a topic selector cannot be empty")]
    Empty,
    /// Unbalanced or empty braces.
    #[error("topic selector {0:?} is not a valid URI template (unbalanced or empty braces)")]
    BadTemplate(String),
    /// Not a URL Pattern the WHATWG rules accept.
    #[error("{0:?} is not a valid URL pattern: {1}")]
    BadPattern(String, String),
}

impl Selector {
    /// Compiles a selector.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        if text.is_empty() {
            return Err(SelectorError::Empty);
        }
        if text == "*" {
            return Ok(Selector::Any);
        }
        if !text.contains('{') && !text.contains('}') {
            return Ok(Selector::Exact(text.to_string()));
        }
        let regex = cached_template(text)?;
        Ok(Selector::Template {
            source: text.to_string(),
            regex,
        })
    }

    /// A Mercure 1.0 exact matcher (`match=`, `match_type: "exact"`): the topic compared
    /// byte for byte, braces included; `*` is the reserved wildcard.
    pub fn exact(text: &str) -> Result<Self, SelectorError> {
        match text {
            "" => Err(SelectorError::Empty),
            "*" => Ok(Selector::Any),
            _ => Ok(Selector::Exact(text.to_string())),
        }
    }

    /// A Mercure 1.0 URL Pattern matcher (`match_urlpattern=`, `match_type: "urlpattern"`);
    /// `*` is the reserved wildcard.
    pub fn url_pattern(text: &str) -> Result<Self, SelectorError> {
        match text {
            "" => Err(SelectorError::Empty),
            "*" => Ok(Selector::Any),
            _ => Ok(Selector::Pattern {
                source: text.to_string(),
                pattern: cached_pattern(text)?,
            }),
        }
    }

    /// The selector as written.
    pub fn as_str(&self) -> &str {
        match self {
            Selector::Any => "*",
            Selector::Exact(s) => s,
            Selector::Template { source, .. } | Selector::Pattern { source, .. } => source,
        }
    }

    /// Whether the selector matches a topic.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Selector::Any => true,
            Selector::Exact(s) => s == topic,
            Selector::Template { regex, .. } => regex.is_match(topic),
            Selector::Pattern { pattern, .. } => pattern_matches(pattern, topic),
        }
    }

    /// Whether a subscriber asking for this selector receives updates on `topic`:
    /// [`Selector::matches`], except that `*` does not select the hub's own topics under
    /// `/.well-known/mercure/` (subscription events). A subscriber names those to get
    /// them, so existing `*` subscribers are not sent documents of another shape, and a
    /// reconnect storm is not delivered to every wildcard subscriber. Claims still match
    /// with [`Selector::matches`] (`*` grants everything).
    pub fn selects(&self, topic: &str) -> bool {
        match self {
            // Only the hub writes there (publishes are refused), always in this form.
            Selector::Any => !topic.starts_with(super::presence::RESERVED_PREFIX),
            other => other.matches(topic),
        }
    }

    /// Whether this selector (from a token's claim) lets its holder ask for `requested`:
    /// `*` allows all; the same selector text is allowed; a concrete topic is allowed
    /// when this selector matches it.
    ///
    /// A template and a pattern are never compared by what they match (that is
    /// undecidable in general): a claim permits a requested template or pattern only when
    /// it is `*` or the same selector of the same kind.
    pub fn permits(&self, requested: &Selector) -> bool {
        match (self, requested) {
            (Selector::Any, _) => true,
            (_, Selector::Exact(topic)) => self.matches(topic),
            (Selector::Template { .. }, Selector::Template { .. })
            | (Selector::Pattern { .. }, Selector::Pattern { .. }) => {
                self.as_str() == requested.as_str()
            }
            _ => false,
        }
    }
}

/// Default number of compiled templates kept (`hub.selector_cache_size`).
pub const DEFAULT_CACHE_SIZE: usize = 4096;

/// Compiled templates, shared: many subscribers ask for the same selectors, and a
/// `Regex` clone is a reference count, not a recompilation. Bounded, least recently used
/// first out, so a flood of new templates evicts only the coldest ones, never all.
static CACHE: OnceLock<Mutex<LruCache<String, Regex>>> = OnceLock::new();

fn cache() -> &'static Mutex<LruCache<String, Regex>> {
    CACHE.get_or_init(|| Mutex::new(LruCache::new(capacity(DEFAULT_CACHE_SIZE))))
}

fn capacity(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

/// Sets how many compiled templates (and, apart, URL patterns) are kept
/// (`hub.selector_cache_size`); called once at start-up.
pub fn set_cache_size(n: usize) {
    cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .resize(capacity(n));
    pattern_cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .resize(capacity(n));
}

/// Where relative URL patterns and relative topics are resolved when no public URL is
/// configured: any fixed hub URL will do, since both sides resolve against the same one.
pub const DEFAULT_HUB_URL: &str = "https://relais.invalid/.well-known/mercure";

static HUB_URL: OnceLock<Url> = OnceLock::new();

/// Sets the hub's URL (`server.public_url` + `/.well-known/mercure`), against which
/// relative URL patterns and topics are resolved; called once at start-up, before any
/// pattern is compiled. A second call is ignored.
pub fn set_hub_url(url: Url) {
    let _ = HUB_URL.set(url);
}

fn hub_url() -> &'static Url {
    HUB_URL.get_or_init(|| {
        Url::parse(DEFAULT_HUB_URL).unwrap_or_else(|_| unreachable!("constant URL parses"))
    })
}

/// Compiled URL patterns, shared and bounded like templates.
static PATTERNS: OnceLock<Mutex<LruCache<String, Arc<UrlPattern>>>> = OnceLock::new();

fn pattern_cache() -> &'static Mutex<LruCache<String, Arc<UrlPattern>>> {
    PATTERNS.get_or_init(|| Mutex::new(LruCache::new(capacity(DEFAULT_CACHE_SIZE))))
}

fn cached_pattern(text: &str) -> Result<Arc<UrlPattern>, SelectorError> {
    let found = pattern_cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(text)
        .cloned();
    if let Some(pattern) = found {
        return Ok(pattern);
    }
    let pattern = Arc::new(compile_pattern(text)?);
    pattern_cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .put(text.to_string(), pattern.clone());
    Ok(pattern)
}

/// Square brackets outside a regular-expression group (`:id([0-9]+)` keeps its class).
/// The `urlpattern` parser counts them as IPv6 host brackets with an unsigned counter, and
/// a `]` it did not see opened overflows it (a panic in debug builds, a corrupt pattern in
/// release ones; found by the `selector` fuzz target). Topics are not IPv6 literals, so
/// such patterns are refused instead.
fn unsupported_brackets(text: &str) -> Option<&'static str> {
    let mut groups = 0usize;
    let mut escaped = false;
    for c in text.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '(' => groups += 1,
            ')' => groups = groups.saturating_sub(1),
            '[' | ']' if groups == 0 => {
                return Some("square brackets are only supported inside a regular-expression group")
            }
            _ => {}
        }
    }
    None
}

fn compile_pattern(text: &str) -> Result<UrlPattern, SelectorError> {
    if let Some(reason) = unsupported_brackets(text) {
        return Err(SelectorError::BadPattern(text.to_string(), reason.into()));
    }
    let bad = |e: urlpattern::Error| SelectorError::BadPattern(text.to_string(), e.to_string());
    let init = UrlPatternInit::parse_constructor_string::<Regex>(text, Some(hub_url().clone()))
        .map_err(bad)?;
    // `ignore_case` stays off: Mercure 1.0 forbids it.
    UrlPattern::parse(init, UrlPatternOptions::default()).map_err(bad)
}

/// Topics read as URLs, remembered per thread: one event is matched against every
/// candidate subscriber's patterns in a row, so each of its topics (relais' events have
/// two) is parsed once, not once per pattern.
const PARSED_TOPICS: usize = 4;

thread_local! {
    static PARSED: RefCell<ParsedTopics> = const { RefCell::new(ParsedTopics { slots: Vec::new(), next: 0 }) };
}

/// A few recently parsed topics, the oldest replaced first.
struct ParsedTopics {
    slots: Vec<(Box<str>, Option<Url>)>,
    next: usize,
}

impl ParsedTopics {
    fn get(&mut self, topic: &str) -> Option<&Url> {
        let at = match self.slots.iter().position(|(t, _)| &**t == topic) {
            Some(at) => at,
            None => {
                let parsed = (topic.into(), hub_url().join(topic).ok());
                if self.slots.len() < PARSED_TOPICS {
                    self.slots.push(parsed);
                    self.slots.len() - 1
                } else {
                    let at = self.next;
                    self.slots[at] = parsed;
                    self.next = (at + 1) % PARSED_TOPICS;
                    at
                }
            }
        };
        self.slots[at].1.as_ref()
    }
}

/// Whether `pattern` accepts `topic` read as a URL (relative topics resolved against the
/// hub's URL; a topic that is not a URL matches no pattern).
///
/// This is the URL Pattern "match" algorithm with the input components taken from the
/// parsed URL as the standard takes them, tested component by component (path first, the
/// most selective) without building the match result and its named groups, which relais
/// never reads.
fn pattern_matches(pattern: &UrlPattern, topic: &str) -> bool {
    PARSED.with(|cell| {
        cell.borrow_mut()
            .get(topic)
            .is_some_and(|url| components_match(pattern, url))
    })
}

fn components_match(p: &UrlPattern, url: &Url) -> bool {
    p.pathname
        .matcher
        .matches(url::quirks::pathname(url))
        .is_some()
        && p.protocol.matcher.matches(url.scheme()).is_some()
        && p.hostname
            .matcher
            .matches(url.host_str().unwrap_or_default())
            .is_some()
        && p.port.matcher.matches(url::quirks::port(url)).is_some()
        && p.username.matcher.matches(url.username()).is_some()
        && p.password
            .matcher
            .matches(url.password().unwrap_or_default())
            .is_some()
        && p.search
            .matcher
            .matches(url.query().unwrap_or_default())
            .is_some()
        && p.hash
            .matcher
            .matches(url.fragment().unwrap_or_default())
            .is_some()
}

fn cached_template(text: &str) -> Result<Regex, SelectorError> {
    let found = cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(text)
        .cloned();
    if let Some(regex) = found {
        return Ok(regex);
    }
    let regex = compile_template(text)?;
    cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .put(text.to_string(), regex.clone());
    Ok(regex)
}

fn compile_template(text: &str) -> Result<Regex, SelectorError> {
    let bad = || SelectorError::BadTemplate(text.to_string());
    let mut pattern = String::from("^");
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let literal = &rest[..open];
        if literal.contains('}') {
            return Err(bad());
        }
        pattern.push_str(&regex::escape(literal));
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(bad)?;
        let expr = &after[..close];
        if expr.is_empty() || expr.contains('{') {
            return Err(bad());
        }
        let (operator, vars) = match expr.chars().next() {
            Some(c @ ('+' | '#' | '/' | '.' | ';' | '?' | '&')) => (Some(c), &expr[1..]),
            _ => (None, expr),
        };
        if vars.is_empty() {
            return Err(bad());
        }
        pattern.push_str(match operator {
            None => "[^/?#]*",
            Some('+') => ".*",
            Some('#') => "(?:#.*)?",
            Some('/') => "(?:/[^/?#]*)*",
            Some('.') => r"(?:\.[^/?#.]*)*",
            Some(';') => "(?:;[^/?#]*)*",
            Some('?') => r"(?:\?[^#]*)?",
            _ => "(?:&[^#]*)*",
        });
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(bad());
    }
    pattern.push_str(&regex::escape(rest));
    pattern.push('$');
    Regex::new(&pattern).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(s: &str) -> Selector {
        Selector::parse(s).unwrap()
    }

    #[test]
    fn exact_any_and_simple_templates() {
        assert!(sel("*").matches("anything/at/all"));
        assert!(sel("interventions").matches("interventions"));
        assert!(!sel("interventions").matches("interventions/1"));
        assert!(sel("audits/{token}").matches("audits/abc"));
        assert!(!sel("audits/{token}").matches("audits/abc/modules/M050"));
        assert!(sel("audits/{token}/modules/{id}").matches("audits/abc/modules/S1-15"));
        assert!(sel("https://example.net/foo/{id}").matches("https://example.net/foo/42"));
        assert!(!sel("https://example.net/foo/{id}").matches("https://example.net/bar/42"));
        assert!(sel("audits/{+rest}").matches("audits/abc/modules/M050"));
        assert!(sel("a.b/{id}").matches("a.b/1") && !sel("a.b/{id}").matches("axb/1"));
    }

    #[test]
    fn malformed_templates_are_errors() {
        assert!(Selector::parse("audits/{token").is_err());
        assert!(Selector::parse("audits/{}").is_err());
        assert!(Selector::parse("audits/}x").is_err());
        assert_eq!(Selector::parse("").unwrap_err(), SelectorError::Empty);
    }

    #[test]
    fn the_cache_keeps_recent_templates_when_full() {
        // A flood of distinct templates must not wipe the whole cache: a template used
        // between two floods stays compiled (the same `Regex`, not a recompilation).
        set_cache_size(64);
        let hot = "hot/{id}";
        let first = cached_template(hot).unwrap();
        for round in 0..4 {
            for i in 0..48 {
                cached_template(&format!("flood/{round}/{i}/{{x}}")).unwrap();
            }
            let again = cached_template(hot).unwrap();
            assert_eq!(again.as_str(), first.as_str());
        }
        let len = cache().lock().unwrap().len();
        assert!(len <= 64, "bounded: {len}");
        assert!(cache().lock().unwrap().contains(hot));
        set_cache_size(DEFAULT_CACHE_SIZE);
    }

    fn pat(s: &str) -> Selector {
        Selector::url_pattern(s).unwrap()
    }

    #[test]
    fn url_patterns_match_like_the_standard_says() {
        let cases: &[(&str, &str, bool)] = &[
            (
                "https://example.com/books/:id",
                "https://example.com/books/1",
                true,
            ),
            (
                "https://example.com/books/:id",
                "https://example.com/books/1/x",
                false,
            ),
            (
                "https://example.com/books/:id",
                "https://example.com/books/",
                false,
            ),
            (
                "https://example.com/books/:id",
                "http://example.com/books/1",
                false,
            ),
            (
                "https://example.com/books/:id",
                "https://EXAMPLE.com/books/1",
                true,
            ),
            (
                "https://example.com/books/:id",
                "https://example.com:443/books/1",
                true,
            ),
            (
                "https://example.com/users/42/*",
                "https://example.com/users/42/a/b",
                true,
            ),
            (
                "https://example.com/users/42/*",
                "https://example.com/users/43/a",
                false,
            ),
            (
                "https://example.com/feed/:t(news|alerts)",
                "https://example.com/feed/news",
                true,
            ),
            (
                "https://example.com/feed/:t(news|alerts)",
                "https://example.com/feed/x",
                false,
            ),
            (
                "https://example.com/items{/:tail}?",
                "https://example.com/items",
                true,
            ),
            ("audits/:token", "audits/abc", true),
            ("audits/:token", "audits/abc/modules/M050", false),
            (
                "audits/:token/modules/:id",
                "audits/abc/modules/S1-15",
                true,
            ),
            ("audits/:token", "interventions", false),
            (
                "/.well-known/mercure/subscriptions/:t/:m/:s",
                "/.well-known/mercure/subscriptions/exact/a/b",
                true,
            ),
            ("https://example.com/books/:id", "not a url at all", false),
            (
                "https://example.com/(a+)+b",
                "https://example.com/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaac",
                false,
            ),
        ];
        for (pattern, topic, expected) in cases {
            assert_eq!(
                pat(pattern).matches(topic),
                *expected,
                "{pattern} ~ {topic}"
            );
            // The component-wise matcher agrees with the crate's own `test`, the oracle.
            let compiled = compile_pattern(pattern).unwrap();
            let oracle = hub_url()
                .join(topic)
                .ok()
                .map(|u| {
                    compiled
                        .test(urlpattern::UrlPatternMatchInput::Url(u))
                        .unwrap()
                })
                .unwrap_or(false);
            assert_eq!(oracle, *expected, "oracle: {pattern} ~ {topic}");
        }
    }

    #[test]
    fn mercure_1_exact_and_pattern_constructors() {
        assert!(matches!(Selector::exact("*").unwrap(), Selector::Any));
        assert!(matches!(Selector::url_pattern("*").unwrap(), Selector::Any));
        // A 1.0 exact matcher never reads braces as a template.
        let braces = Selector::exact("audits/{token}").unwrap();
        assert!(braces.matches("audits/{token}") && !braces.matches("audits/abc"));
        assert_eq!(Selector::exact("").unwrap_err(), SelectorError::Empty);
        assert!(matches!(
            Selector::url_pattern("https://example.com/:id(").unwrap_err(),
            SelectorError::BadPattern(..)
        ));
        assert!(Selector::url_pattern("{").is_err());
        assert_eq!(pat("audits/:t").as_str(), "audits/:t");
        // A `]` the parser would count as closing an IPv6 host it never opened (fuzzed).
        assert!(matches!(
            Selector::url_pattern("ht://\u{86}t]rveveno\u{17}x").unwrap_err(),
            SelectorError::BadPattern(..)
        ));
        assert!(Selector::url_pattern("h[t://x]/a").is_err());
        // Brackets inside a regular-expression group are a character class, and stay.
        assert!(
            pat("https://example.com/books/:id([0-9]+)").matches("https://example.com/books/42")
        );
    }

    #[test]
    fn topics_of_one_event_alternate_without_confusion() {
        // Two topics matched in turn (as a two-topic event against many subscribers),
        // then more than the remembered few: every answer stays the answer for its topic.
        let p = pat("audits/:t");
        for _ in 0..3 {
            assert!(p.matches("audits/a"));
            assert!(!p.matches("interventions"));
        }
        for i in 0..10 {
            assert!(p.matches(&format!("audits/{i}")));
            assert!(!p.matches(&format!("other/{i}")));
        }
        assert!(p.matches("audits/a") && !p.matches("audits/a/b"));
    }

    #[test]
    fn patterns_are_compiled_once() {
        let a = pat("https://example.com/cached/:id");
        let b = pat("https://example.com/cached/:id");
        match (a, b) {
            (Selector::Pattern { pattern: a, .. }, Selector::Pattern { pattern: b, .. }) => {
                assert!(Arc::ptr_eq(&a, &b))
            }
            _ => panic!("patterns expected"),
        }
    }

    #[test]
    fn pattern_claims_permit_requests() {
        let claim = pat("https://example.com/books/:id");
        assert!(claim.permits(&Selector::exact("https://example.com/books/1").unwrap()));
        assert!(!claim.permits(&Selector::exact("https://example.com/authors/1").unwrap()));
        assert!(claim.permits(&pat("https://example.com/books/:id")));
        assert!(!claim.permits(&pat("https://example.com/books/*")));
        assert!(!claim.permits(&sel("*")));
        // Same text, other kind: not the same selector.
        assert!(!sel("audits/{t}").permits(&pat("audits/{t}")));
        assert!(sel("*").permits(&pat("audits/:t")));
        // A 0.x template claim covers a 1.0 exact request, and the other way round.
        assert!(sel("audits/{t}").permits(&Selector::exact("audits/abc").unwrap()));
        assert!(pat("audits/:t").permits(&sel("audits/abc")));
    }

    #[test]
    fn claims_permit_requests() {
        assert!(sel("*").permits(&sel("audits/{t}")));
        assert!(sel("audits/{t}").permits(&sel("audits/abc")));
        assert!(sel("audits/{t}").permits(&sel("audits/{t}")));
        assert!(!sel("audits/{t}").permits(&sel("*")));
        assert!(!sel("interventions").permits(&sel("audits/abc")));
    }
}
