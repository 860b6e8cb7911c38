//! Stop strings, matched on the detokenized output as OpenAI and vLLM do: the output ends
//! before the first match and the match itself is not returned.
//!
//! Text that could be the start of a stop string is held back until the next text decides it,
//! so a streamed client never sees a prefix of a stop string that is later cut off.

/// What one piece of text did to the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopStep {
    /// Text that can be sent now (possibly empty while a partial match is held back).
    Text(String),
    /// A stop string matched: this is the rest of the output before it; generation ends.
    Stopped(String),
}

/// The per-request stop-string state.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    /// A matcher for these stop strings; empty strings are ignored (they would match
    /// everywhere, and clients send them by accident).
    pub fn new(stops: impl IntoIterator<Item = String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    /// Whether there is anything to match.
    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// Adds newly decoded text.
    pub fn push(&mut self, text: &str) -> StopStep {
        if self.stops.is_empty() {
            return StopStep::Text(text.to_string());
        }
        self.held.push_str(text);
        // Every partial match was held back, so a match cannot start in text already sent.
        if let Some(pos) = self.stops.iter().filter_map(|s| self.held.find(s)).min() {
            let mut out = std::mem::take(&mut self.held);
            out.truncate(pos);
            return StopStep::Stopped(out);
        }
        let keep = self
            .stops
            .iter()
            .map(|s| partial_match_len(&self.held, s))
            .max()
            .unwrap_or(0);
        let rest = self.held.split_off(self.held.len() - keep);
        StopStep::Text(std::mem::replace(&mut self.held, rest))
    }

    /// The text still held back, at the end of generation (no stop string followed it).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// The length of the longest proper prefix of `stop` that `text` ends with.
fn partial_match_len(text: &str, stop: &str) -> usize {
    let longest = stop.len().saturating_sub(1).min(text.len());
    (1..=longest)
        .rev()
        .find(|&k| {
            stop.is_char_boundary(k)
                && text.is_char_boundary(text.len() - k)
                && text.ends_with(&stop[..k])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::{StopMatcher, StopStep};

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()));
        let mut out = String::new();
        for p in pieces {
            match m.push(p) {
                StopStep::Text(t) => out.push_str(&t),
                StopStep::Stopped(t) => {
                    out.push_str(&t);
                    return (out, true);
                }
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn truncates_before_a_match_across_pieces() {
        assert_eq!(
            run(&["END"], &["abc E", "N", "Dxyz"]),
            ("abc ".into(), true)
        );
        assert_eq!(run(&["\n\n"], &["a\n", "\nb"]), ("a".into(), true));
    }

    #[test]
    fn releases_held_text_that_did_not_match() {
        assert_eq!(run(&["END"], &["abc E", "Nx"]), ("abc ENx".into(), false));
        assert_eq!(run(&["END"], &["abc EN"]), ("abc EN".into(), false));
    }

    #[test]
    fn holds_back_only_possible_prefixes() {
        let mut m = StopMatcher::new(["STOP".to_string()]);
        assert_eq!(m.push("xxST"), StopStep::Text("xx".into()));
        assert_eq!(m.push("a"), StopStep::Text("STa".into()));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["b", "a"], &["xxab"]), ("xx".into(), true));
    }

    #[test]
    fn multibyte_text_is_split_on_char_boundaries() {
        assert_eq!(run(&["éé"], &["aé", "b"]), ("aéb".into(), false));
        assert_eq!(run(&["éé"], &["aé", "é"]), ("a".into(), true));
    }

    #[test]
    fn no_stops_passes_through() {
        assert_eq!(run(&[""], &["a", "b"]), ("ab".into(), false));
    }
}
