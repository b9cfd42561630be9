//! Query strings with repeated keys (`topic=a&topic=b`), which serde's form decoding
//! does not keep.

/// The decoded pairs of a query string, in order.
#[derive(Debug, Default)]
pub struct QueryPairs(Vec<(String, String)>);

impl QueryPairs {
    /// Decodes `a=1&b=2` (percent-encoding and `+` for space).
    pub fn parse(raw: Option<&str>) -> Self {
        Self(
            raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
        )
    }

    /// Every value of `key`.
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `key`.
    pub fn first(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// How a subscribe request names a selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectorParam {
    /// `topic=` (0.x): an exact topic, a URI template or `*`.
    Topic,
    /// `match=` / `match_exact=` (1.0): an exact topic or `*`.
    Exact,
    /// `match_urlpattern=` (1.0): a WHATWG URL Pattern or `*`.
    UrlPattern,
}

impl SelectorParam {
    /// The parameter a name stands for. Names of the reserved `match` namespace that no
    /// matcher type owns are `Err` (Mercure 1.0: a misspelt matcher fails loudly). The
    /// camel-case spellings of later drafts of the specification are accepted too.
    fn of(name: &str) -> Result<Option<Self>, ()> {
        match name {
            "topic" => Ok(Some(SelectorParam::Topic)),
            "match" | "match_exact" | "matchExact" => Ok(Some(SelectorParam::Exact)),
            "match_urlpattern" | "matchURLPattern" => Ok(Some(SelectorParam::UrlPattern)),
            _ if name
                .get(..5)
                .is_some_and(|p| p.eq_ignore_ascii_case("match")) =>
            {
                Err(())
            }
            _ => Ok(None),
        }
    }
}

/// The generation a subscribe request speaks and its selector parameters, in order.
pub type RequestSelectors<'a> = (crate::auth::Generation, Vec<(SelectorParam, &'a str)>);

impl QueryPairs {
    /// The request's selector parameters, in order, and the generation they speak:
    /// `match*` is Mercure 1.0, `topic` is 0.x (also when there is neither). Mixing both,
    /// or an unknown `match*` name, is a 400 (in the 1.0 form, since it names `match`).
    pub fn selectors(&self) -> Result<RequestSelectors<'_>, super::error::ApiError> {
        use crate::auth::Generation;
        let mut found = Vec::new();
        for (key, value) in &self.0 {
            match SelectorParam::of(key) {
                Ok(Some(kind)) => found.push((kind, value.as_str())),
                Ok(None) => {}
                Err(()) => {
                    return Err(super::error::ApiError::bad_request(
                        key,
                        format!(
                            "unknown matcher parameter {key:?}: Mercure 1.0 matchers are match (exact) and match_urlpattern (URL Pattern)"
                        ),
                    )
                    .in_form(Generation::V1))
                }
            }
        }
        let v0 = found.iter().any(|(k, _)| *k == SelectorParam::Topic);
        let v1 = found.iter().any(|(k, _)| *k != SelectorParam::Topic);
        match (v0, v1) {
            (true, true) => Err(super::error::ApiError::bad_request(
                "topic",
                "a request uses either topic (Mercure 0.x) or match / match_urlpattern (Mercure 1.0), not both",
            )
            .in_form(Generation::V1)),
            (_, true) => Ok((Generation::V1, found)),
            _ => Ok((Generation::V0, found)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Generation;

    fn selectors(q: &str) -> Result<(Generation, Vec<(SelectorParam, String)>), u16> {
        QueryPairs::parse(Some(q))
            .selectors()
            .map(|(g, v)| (g, v.into_iter().map(|(k, s)| (k, s.to_string())).collect()))
            .map_err(|e| e.status().as_u16())
    }

    #[test]
    fn the_parameters_say_the_generation() {
        assert_eq!(
            selectors("topic=a&topic=b%2F%7Bid%7D").unwrap(),
            (
                Generation::V0,
                vec![
                    (SelectorParam::Topic, "a".into()),
                    (SelectorParam::Topic, "b/{id}".into())
                ]
            )
        );
        assert_eq!(
            selectors("match=a&match_urlpattern=https%3A%2F%2Fx%2F%3Aid&lastEventID=1").unwrap(),
            (
                Generation::V1,
                vec![
                    (SelectorParam::Exact, "a".into()),
                    (SelectorParam::UrlPattern, "https://x/:id".into())
                ]
            )
        );
        assert_eq!(selectors("match_exact=a").unwrap().0, Generation::V1);
        assert_eq!(selectors("matchURLPattern=a").unwrap().0, Generation::V1);
        assert_eq!(selectors("").unwrap(), (Generation::V0, vec![]));
        for bad in [
            "match_regexp=a",
            "Match=a",
            "matchurlpattern=a",
            "MATCH_X=1",
            "topic=a&match=b",
        ] {
            assert_eq!(selectors(bad).unwrap_err(), 400, "{bad}");
        }
        // Names outside the reserved prefix are ignored.
        assert_eq!(selectors("matc=1&topic=a").unwrap().0, Generation::V0);
    }
}
