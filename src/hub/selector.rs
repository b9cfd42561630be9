//! Topic selectors: an exact topic, an RFC 6570 URI template, or `*`.
//!
//! A template matches a topic when some assignment of its variables expands to that
//! topic. Simple `{var}` expansions cannot contain `/`, `?` or `#` (they are
//! percent-encoded on expansion); reserved `{+var}` and fragment `{#var}` expansions can
//! hold anything; the other operators (`/ . ; ? &`) match their prefixed lists.

use std::num::NonZeroUsize;
use std::sync::{Mutex, OnceLock};

use lru::LruCache;
use regex::Regex;

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

    /// The selector as written.
    pub fn as_str(&self) -> &str {
        match self {
            Selector::Any => "*",
            Selector::Exact(s) => s,
            Selector::Template { source, .. } => source,
        }
    }

    /// Whether the selector matches a topic.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Selector::Any => true,
            Selector::Exact(s) => s == topic,
            Selector::Template { regex, .. } => regex.is_match(topic),
        }
    }

    /// Whether this selector (from a token's claim) lets its holder ask for `requested`:
    /// `*` allows all; the same selector text is allowed; a concrete topic is allowed
    /// when this selector matches it.
    pub fn permits(&self, requested: &Selector) -> bool {
        match (self, requested) {
            (Selector::Any, _) => true,
            (_, Selector::Exact(topic)) => self.matches(topic),
            _ => self.as_str() == requested.as_str(),
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

/// Sets how many compiled templates are kept (`hub.selector_cache_size`); called once at
/// start-up.
pub fn set_cache_size(n: usize) {
    cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .resize(capacity(n));
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

    #[test]
    fn claims_permit_requests() {
        assert!(sel("*").permits(&sel("audits/{t}")));
        assert!(sel("audits/{t}").permits(&sel("audits/abc")));
        assert!(sel("audits/{t}").permits(&sel("audits/{t}")));
        assert!(!sel("audits/{t}").permits(&sel("*")));
        assert!(!sel("interventions").permits(&sel("audits/abc")));
    }
}
