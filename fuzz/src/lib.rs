//! Helpers shared by the fuzz targets.
//!
//! Targets that need several values read them from one input split on the ASCII unit
//! separator (0x1F), so that seed files stay plain text a person can write and read:
//! `printf 'audits/{id}\x1faudits/42\x1fvalue' > corpus/selector/seed-simple`.

/// The field separator of structured inputs.
pub const SEP: u8 = 0x1f;

/// The fields of a structured input, in order; missing fields read as empty.
pub struct Fields<'a> {
    parts: std::slice::Split<'a, u8, fn(&u8) -> bool>,
}

impl<'a> Fields<'a> {
    /// Splits `data` on [`SEP`].
    pub fn new(data: &'a [u8]) -> Self {
        Self {
            parts: data.split((|b: &u8| *b == SEP) as fn(&u8) -> bool),
        }
    }

    /// The next field as bytes (empty when there is none).
    pub fn bytes(&mut self) -> &'a [u8] {
        self.parts.next().unwrap_or_default()
    }

    /// The next field as text (invalid UTF-8 replaced).
    pub fn text(&mut self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }

    /// The next field as an optional text: absent when the field is empty.
    pub fn opt_text(&mut self) -> Option<String> {
        Some(self.text()).filter(|t| !t.is_empty())
    }

    /// The next field as a number: decimal text, else its bytes folded, so the fuzzer
    /// reaches every value (extremes included) either way.
    pub fn i64(&mut self) -> i64 {
        let raw = self.bytes();
        match std::str::from_utf8(raw).ok().and_then(|t| t.parse().ok()) {
            Some(n) => n,
            None => raw
                .iter()
                .fold(0i64, |acc, b| acc.rotate_left(8) ^ i64::from(*b)),
        }
    }

    /// The next field as an optional unsigned number: absent when the field is empty.
    pub fn opt_u64(&mut self) -> Option<u64> {
        let raw = self.bytes();
        if raw.is_empty() {
            return None;
        }
        match std::str::from_utf8(raw).ok().and_then(|t| t.parse().ok()) {
            Some(n) => Some(n),
            None => Some(
                raw.iter()
                    .fold(0u64, |acc, b| acc.rotate_left(8) ^ u64::from(*b)),
            ),
        }
    }

    /// The remaining fields, as texts.
    pub fn rest(&mut self) -> Vec<String> {
        self.parts
            .by_ref()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }
}
