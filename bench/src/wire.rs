//! What a benchmark subscriber does with the bytes it reads, kept free of I/O: the HTTP
//! response head, chunked transfer decoding, a minimal SSE scanner that finds each
//! event's sequence marker, and the per-subscriber record of which sequences arrived.

use memchr::memmem;

/// Marker placed in every benchmark event's data, followed by the decimal sequence.
pub const SEQ_MARKER: &[u8] = b"BSEQ-";
/// Marker of the warm-up events sent before measuring (subscriptions are live).
pub const WARM_MARKER: &[u8] = b"BWARM";

/// The parts of a response head a subscriber needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// `Content-Length`, when given.
    pub content_length: Option<usize>,
    /// `Connection: close`: the server closes the connection after this response.
    pub close: bool,
    /// Bytes taken by the head, including the blank line.
    pub len: usize,
}

/// Parses a response head once `buf` holds all of it; `None` while incomplete.
pub fn parse_head(buf: &[u8]) -> Option<Result<Head, String>> {
    let end = memmem::find(buf, b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = match status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
    {
        Some(s) => s,
        None => return Some(Err(format!("bad status line {status_line:?}"))),
    };
    let mut chunked = false;
    let mut content_length = None;
    let mut close = false;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse().ok();
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
    }
    Some(Ok(Head {
        status,
        chunked,
        content_length,
        close,
        len: end,
    }))
}

/// Incremental decoder of `Transfer-Encoding: chunked` (or a pass-through).
#[derive(Debug)]
pub struct Dechunker {
    chunked: bool,
    state: ChunkState,
    size_line: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(usize),
    DataEnd,
    Done,
}

impl Dechunker {
    /// A decoder for a chunked body, or a pass-through when `chunked` is false.
    pub fn new(chunked: bool) -> Self {
        Self {
            chunked,
            state: ChunkState::Size,
            size_line: Vec::new(),
        }
    }

    /// Feeds raw body bytes, handing each decoded payload slice to `out`. Returns an
    /// error on a malformed chunk header.
    pub fn feed(&mut self, mut input: &[u8], mut out: impl FnMut(&[u8])) -> Result<(), String> {
        if !self.chunked {
            out(input);
            return Ok(());
        }
        while !input.is_empty() {
            match self.state {
                ChunkState::Size => match memchr::memchr(b'\n', input) {
                    Some(i) => {
                        self.size_line.extend_from_slice(&input[..i]);
                        input = &input[i + 1..];
                        let line = String::from_utf8_lossy(&self.size_line);
                        let hex = line.trim().split(';').next().unwrap_or("").trim();
                        if hex.is_empty() {
                            // The CRLF that ends a chunk's data when it was split.
                            self.size_line.clear();
                            continue;
                        }
                        let size = usize::from_str_radix(hex, 16)
                            .map_err(|_| format!("bad chunk size {hex:?}"))?;
                        self.size_line.clear();
                        self.state = if size == 0 {
                            ChunkState::Done
                        } else {
                            ChunkState::Data(size)
                        };
                    }
                    None => {
                        self.size_line.extend_from_slice(input);
                        return Ok(());
                    }
                },
                ChunkState::Data(left) => {
                    let take = left.min(input.len());
                    out(&input[..take]);
                    input = &input[take..];
                    self.state = if take == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - take)
                    };
                }
                ChunkState::DataEnd => {
                    // Skip "\r\n" (possibly split across reads): the size state ignores
                    // the empty line it leaves.
                    self.state = ChunkState::Size;
                }
                ChunkState::Done => return Ok(()),
            }
        }
        Ok(())
    }

    /// Whether the terminating zero-size chunk was seen.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// What the scanner found in one complete SSE event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// A benchmark event with this sequence number.
    Seq(u64),
    /// A warm-up event.
    Warm,
}

/// Minimal SSE scanner: splits lines, and for each event (ended by a blank line) reports
/// the first sequence marker found in its `data:` lines. Comments, `retry:` and events
/// without a marker are skipped.
#[derive(Debug, Default)]
pub struct Scanner {
    partial: Vec<u8>,
    current: Option<Found>,
    has_fields: bool,
}

impl Scanner {
    /// A scanner with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds decoded body bytes; calls `out` for every complete event with a marker.
    pub fn feed(&mut self, mut input: &[u8], mut out: impl FnMut(Found)) {
        if !self.partial.is_empty() {
            match memchr::memchr(b'\n', input) {
                None => {
                    self.partial.extend_from_slice(input);
                    return;
                }
                Some(i) => {
                    let mut line = std::mem::take(&mut self.partial);
                    line.extend_from_slice(&input[..i]);
                    self.line(&line, &mut out);
                    input = &input[i + 1..];
                }
            }
        }
        while let Some(i) = memchr::memchr(b'\n', input) {
            self.line(&input[..i], &mut out);
            input = &input[i + 1..];
        }
        self.partial.extend_from_slice(input);
    }

    fn line(&mut self, line: &[u8], out: &mut impl FnMut(Found)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if self.has_fields {
                if let Some(found) = self.current.take() {
                    out(found);
                }
                self.has_fields = false;
            }
            return;
        }
        if line[0] == b':' {
            return;
        }
        self.has_fields = true;
        if self.current.is_none() && line.starts_with(b"data:") {
            self.current = find_marker(line);
        }
    }
}

/// The first marker in `line`, if any.
pub fn find_marker(line: &[u8]) -> Option<Found> {
    if let Some(pos) = memmem::find(line, SEQ_MARKER) {
        let digits = &line[pos + SEQ_MARKER.len()..];
        let mut value: u64 = 0;
        let mut any = false;
        for &b in digits.iter().take(19) {
            if !b.is_ascii_digit() {
                break;
            }
            value = value * 10 + u64::from(b - b'0');
            any = true;
        }
        if any {
            return Some(Found::Seq(value));
        }
    }
    if memmem::find(line, WARM_MARKER).is_some() {
        return Some(Found::Warm);
    }
    None
}

/// Which sequences one subscriber received, as sorted disjoint ranges (one range when
/// everything arrived in order), with the duplicates counted.
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    ranges: Vec<(u64, u64)>,
    /// Distinct sequences received.
    pub distinct: u64,
    /// Receipts of a sequence already received.
    pub duplicates: u64,
}

impl Tracker {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a receipt; returns whether it was the first one for `seq`.
    pub fn record(&mut self, seq: u64) -> bool {
        // Fast path: the next one in order.
        if let Some(last) = self.ranges.last_mut() {
            if seq == last.1 {
                last.1 += 1;
                self.distinct += 1;
                return true;
            }
        }
        // Ranges are [start, end). Find the first range whose end >= seq.
        let i = self.ranges.partition_point(|r| r.1 < seq);
        if i < self.ranges.len() && self.ranges[i].0 <= seq && seq < self.ranges[i].1 {
            self.duplicates += 1;
            return false;
        }
        self.distinct += 1;
        let touches_prev = i < self.ranges.len() && self.ranges[i].1 == seq;
        if touches_prev {
            self.ranges[i].1 += 1;
            if i + 1 < self.ranges.len() && self.ranges[i + 1].0 == self.ranges[i].1 {
                self.ranges[i].1 = self.ranges[i + 1].1;
                self.ranges.remove(i + 1);
            }
        } else if i < self.ranges.len() && self.ranges[i].0 == seq + 1 {
            self.ranges[i].0 = seq;
        } else {
            self.ranges.insert(i, (seq, seq + 1));
        }
        true
    }

    /// How many distinct sequences below `total` arrived.
    pub fn received(&self, total: u64) -> u64 {
        self.ranges
            .iter()
            .map(|&(s, e)| e.min(total).saturating_sub(s.min(total)))
            .sum()
    }

    /// How many of the sequences `0..total` never arrived.
    pub fn missing(&self, total: u64) -> u64 {
        let got: u64 = self
            .ranges
            .iter()
            .map(|&(s, e)| e.min(total).saturating_sub(s.min(total)))
            .sum();
        total - got
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_and_chunks_split_anywhere() {
        let body = "id: 1\ndata: {\"c\":\"BSEQ-7\"}\n\n:hb\n\ndata: BWARM\n\nretry: 5\n\n";
        let chunked = format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            10,
            &body[..10],
            body.len() - 10,
            &body[10..]
        );
        for split in 0..chunked.len() {
            let (a, b) = chunked.as_bytes().split_at(split);
            let mut buf = a.to_vec();
            let mut found = Vec::new();
            let head = match parse_head(&buf) {
                Some(h) => h.unwrap(),
                None => {
                    buf.extend_from_slice(b);
                    parse_head(&buf).unwrap().unwrap()
                }
            };
            assert_eq!(head.status, 200);
            assert!(head.chunked);
            let mut d = Dechunker::new(true);
            let mut s = Scanner::new();
            let rest = buf[head.len..].to_vec();
            d.feed(&rest, |p| s.feed(p, |f| found.push(f))).unwrap();
            if buf.len() == a.len() {
                d.feed(b, |p| s.feed(p, |f| found.push(f))).unwrap();
            }
            assert_eq!(found, vec![Found::Seq(7), Found::Warm], "split at {split}");
            assert!(d.done());
        }
    }

    #[test]
    fn first_marker_of_an_event_counts() {
        let mut s = Scanner::new();
        let mut found = Vec::new();
        s.feed(
            b"event: x\ndata: new BSEQ-12\ndata: old BSEQ-11\n\nid: 2\ndata: none\n\n",
            |f| found.push(f),
        );
        assert_eq!(found, vec![Found::Seq(12)]);
    }

    #[test]
    fn tracker_counts_gaps_and_duplicates_in_any_order() {
        let mut t = Tracker::new();
        for seq in [0, 1, 2, 5, 4, 2, 9, 3, 5, 8] {
            t.record(seq);
        }
        assert_eq!(t.distinct, 8);
        assert_eq!(t.duplicates, 2);
        assert_eq!(t.missing(10), 2); // 6 and 7
        assert_eq!(t.missing(12), 4);
        for seq in [7, 6, 10, 11] {
            assert!(t.record(seq));
        }
        assert_eq!(t.missing(12), 0);
        assert_eq!(t.ranges, vec![(0, 12)]);
    }
}
