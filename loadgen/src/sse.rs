//! An incremental server-sent-events parser: bytes in as the network delivers them, complete
//! events out. Events may be split across reads or several may share one read, so parsing
//! cannot assume one chunk per event.

/// One event: its `event:` name (if any) and its `data:` lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Why the byte stream is not SSE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("a line is not UTF-8")]
    Utf8,
    #[error("a line is longer than {0} bytes")]
    LineTooLong(usize),
}

/// Bounds the memory a server can make the client hold with a line that never ends.
pub const MAX_LINE: usize = 16 << 20;

#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// Bytes of `buf` already scanned for a newline.
    scanned: usize,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; returns the events they completed, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            let end = self.scanned + pos;
            let mut line = &self.buf[start..end];
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            let line = std::str::from_utf8(line).map_err(|_| SseError::Utf8)?;
            if let Some(ev) = Self::line(&mut self.event, &mut self.data, line) {
                events.push(ev);
            }
            start = end + 1;
            self.scanned = start;
        }
        self.buf.drain(..start);
        self.scanned = self.buf.len();
        if self.buf.len() > MAX_LINE {
            return Err(SseError::LineTooLong(MAX_LINE));
        }
        Ok(events)
    }

    /// The stream ended: an event whose blank line never came is still delivered.
    pub fn finish(&mut self) -> Result<Option<SseEvent>, SseError> {
        let rest = std::mem::take(&mut self.buf);
        self.scanned = 0;
        if !rest.is_empty() {
            let line = std::str::from_utf8(&rest).map_err(|_| SseError::Utf8)?;
            let line = line.strip_suffix('\r').unwrap_or(line);
            if let Some(ev) = Self::line(&mut self.event, &mut self.data, line) {
                return Ok(Some(ev));
            }
        }
        Ok(self.data.take().map(|data| SseEvent {
            event: self.event.take(),
            data,
        }))
    }

    /// One line of the SSE grammar: a field, a comment, or the blank line that ends an event.
    fn line(event: &mut Option<String>, data: &mut Option<String>, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let ev = data.take().map(|data| SseEvent {
                event: event.take(),
                data,
            });
            *event = None;
            return ev;
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => match data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => *data = Some(value.to_string()),
            },
            "event" => *event = Some(value.to_string()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(s: &str) -> SseEvent {
        SseEvent {
            event: None,
            data: s.into(),
        }
    }

    #[test]
    fn events_split_across_reads_and_sharing_reads() {
        let mut p = SseParser::new();
        assert_eq!(p.push(b"data: {\"a\"").unwrap(), vec![]);
        assert_eq!(p.push(b":1}\n").unwrap(), vec![]);
        assert_eq!(
            p.push(b"\ndata: x\n\ndata: [DONE]\n\n").unwrap(),
            vec![data("{\"a\":1}"), data("x"), data("[DONE]")]
        );
    }

    #[test]
    fn crlf_comments_event_names_and_multiline_data() {
        let mut p = SseParser::new();
        let evs = p
            .push(b": keep-alive\r\n\r\nevent: error\r\ndata: a\r\ndata:b\r\n\r\n")
            .unwrap();
        assert_eq!(
            evs,
            vec![SseEvent {
                event: Some("error".into()),
                data: "a\nb".into()
            }]
        );
    }

    #[test]
    fn an_unterminated_last_event_is_delivered_at_the_end() {
        let mut p = SseParser::new();
        assert!(p.push(b"data: [DONE]").unwrap().is_empty());
        assert_eq!(p.finish().unwrap(), Some(data("[DONE]")));
        assert_eq!(p.finish().unwrap(), None);
    }

    #[test]
    fn bad_utf8_is_an_error() {
        assert_eq!(SseParser::new().push(b"data: \xff\n"), Err(SseError::Utf8));
    }
}
