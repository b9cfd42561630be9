//! Server-Sent Events framing (WHATWG HTML, "server-sent events"): encoding for the hub
//! and an incremental parser for clients (tests, the benchmark). Pure, no I/O.

use bytes::{BufMut, Bytes, BytesMut};

/// Encodes one event: `id:`, `event:`, `retry:`, one `data:` line per line of data.
pub fn encode_event(id: &str, event_type: Option<&str>, retry: Option<u64>, data: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + id.len() + 48);
    out.put_slice(b"id: ");
    out.put_slice(id.as_bytes());
    out.put_u8(b'\n');
    if let Some(t) = event_type {
        out.put_slice(b"event: ");
        out.put_slice(t.as_bytes());
        out.put_u8(b'\n');
    }
    if let Some(r) = retry {
        out.put_slice(format!("retry: {r}\n").as_bytes());
    }
    for line in split_lines(data) {
        out.put_slice(b"data: ");
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// A comment frame.
pub fn encode_comment(text: &str) -> Bytes {
    Bytes::from(format!(":{text}\n\n"))
}

/// The heartbeat frame: [`encode_comment`] of nothing, static (a heartbeat allocates
/// nothing).
pub fn heartbeat() -> Bytes {
    Bytes::from_static(b":\n\n")
}

/// The frame announcing the reconnection delay.
pub fn encode_retry(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// Splits on `\r\n`, `\n` or `\r`, as SSE clients do; an empty payload is one empty line.
fn split_lines(data: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\n', '\r']) {
            Some(i) => {
                let skip = if s[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[i + skip..]);
                Some(&s[..i])
            }
            None => {
                rest = None;
                Some(s)
            }
        }
    })
}

/// One event as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedEvent {
    /// `id:` (empty when absent).
    pub id: String,
    /// `event:` (empty when absent).
    pub event_type: String,
    /// Data lines joined with `\n`.
    pub data: String,
    /// `retry:` when present.
    pub retry: Option<u64>,
}

/// What the parser found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A complete event.
    Event(ParsedEvent),
    /// A comment line (heartbeat).
    Comment(String),
    /// A frame with only `retry:`.
    Retry(u64),
}

/// Incremental SSE parser: feed bytes as they arrive, get complete items out.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    current: ParsedEvent,
    has_fields: bool,
    data_lines: Vec<String>,
}

impl SseParser {
    /// A parser with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the items they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Parsed> {
        self.buffer.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.buffer[start..].iter().position(|b| *b == b'\n') {
            let end = start + pos;
            let line = String::from_utf8_lossy(&self.buffer[start..end])
                .trim_end_matches('\r')
                .to_string();
            start = end + 1;
            self.line(&line, &mut out);
        }
        self.buffer.drain(..start);
        out
    }

    fn line(&mut self, line: &str, out: &mut Vec<Parsed>) {
        if line.is_empty() {
            if self.has_fields {
                let mut ev = std::mem::take(&mut self.current);
                ev.data = std::mem::take(&mut self.data_lines).join("\n");
                self.has_fields = false;
                if ev.id.is_empty() && ev.event_type.is_empty() && ev.data.is_empty() {
                    if let Some(r) = ev.retry {
                        out.push(Parsed::Retry(r));
                    }
                } else {
                    out.push(Parsed::Event(ev));
                }
            }
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            out.push(Parsed::Comment(comment.trim_start().to_string()));
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        self.has_fields = true;
        match field {
            "id" => self.current.id = value.to_string(),
            "event" => self.current.event_type = value.to_string(),
            "data" => self.data_lines.push(value.to_string()),
            "retry" => self.current.retry = value.parse().ok(),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heartbeat_is_an_empty_comment() {
        assert_eq!(heartbeat(), encode_comment(""));
    }

    #[test]
    fn multi_line_data_round_trips() {
        let frame = encode_event("1", Some("intervention"), Some(5), "a\nb\r\nc\rd");
        assert_eq!(
            std::str::from_utf8(&frame).unwrap(),
            "id: 1\nevent: intervention\nretry: 5\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        let mut p = SseParser::new();
        let items = p.feed(&frame);
        assert_eq!(
            items,
            vec![Parsed::Event(ParsedEvent {
                id: "1".into(),
                event_type: "intervention".into(),
                data: "a\nb\nc\nd".into(),
                retry: Some(5),
            })]
        );
    }

    #[test]
    fn parser_handles_split_input_and_comments() {
        let mut p = SseParser::new();
        assert!(p.feed(b"retry: 2000\n\n:hb\n\nid: x\nda").len() == 2);
        let items = p.feed(b"ta: {}\n\n");
        assert_eq!(items.len(), 1);
        match &items[0] {
            Parsed::Event(e) => assert_eq!((e.id.as_str(), e.data.as_str()), ("x", "{}")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn empty_data_is_one_empty_line() {
        let frame = encode_event("1", None, None, "");
        assert_eq!(&frame[..], b"id: 1\ndata: \n\n");
    }
}
