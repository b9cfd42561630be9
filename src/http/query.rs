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
