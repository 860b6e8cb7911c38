//! A hand-rolled scanner for the paper's fixed JSON layout (a list of objects mapping layer-id
//! strings to `null` or lists of lists of expert ids). The layout admits nothing else, so a
//! byte loop over digits, brackets, commas, `null` and keys parses it several times faster
//! than a generic JSON parser building nested vectors; it never panics on bad bytes.

use super::FormatError;
use crate::model::MISSING_EXPERT;

/// One iteration as written: `(layer id, None for null | Some(top_k, flat expert ids))`,
/// in file order.
pub type RawIteration = Vec<(usize, Option<(usize, Vec<u16>)>)>;

struct Scanner<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Scanner<'a> {
    fn err(&self, message: impl Into<String>) -> FormatError {
        FormatError::Syntax {
            offset: self.p,
            message: message.into(),
        }
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.p) {
            if matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                self.p += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.p).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), FormatError> {
        match self.peek() {
            Some(x) if x == c => {
                self.p += 1;
                Ok(())
            }
            Some(x) => Err(self.err(format!(
                "expected `{}`, found `{}`",
                c as char,
                x.escape_ascii()
            ))),
            None => Err(self.err(format!("expected `{}`, found the end", c as char))),
        }
    }

    /// `,` then true, or the closing bracket then false.
    #[inline]
    fn comma_or(&mut self, close: u8) -> Result<bool, FormatError> {
        match self.peek() {
            Some(b',') => {
                self.p += 1;
                Ok(true)
            }
            Some(c) if c == close => {
                self.p += 1;
                Ok(false)
            }
            Some(c) => Err(self.err(format!(
                "expected `,` or `{}`, found `{}`",
                close as char,
                c.escape_ascii()
            ))),
            None => Err(self.err(format!(
                "expected `,` or `{}`, found the end (truncated?)",
                close as char
            ))),
        }
    }

    #[inline]
    fn number(&mut self, max: u64, what: &str) -> Result<u64, FormatError> {
        self.ws();
        let start = self.p;
        let mut v: u64 = 0;
        while let Some(&c) = self.b.get(self.p) {
            if c.is_ascii_digit() {
                v = v * 10 + u64::from(c - b'0');
                if v > max {
                    return Err(self.err(format!("{what} over {max}")));
                }
                self.p += 1;
            } else {
                break;
            }
        }
        if self.p == start {
            return Err(match self.b.get(self.p) {
                Some(c) => self.err(format!("expected {what}, found `{}`", c.escape_ascii())),
                None => self.err(format!("expected {what}, found the end (truncated?)")),
            });
        }
        if self.p - start > 1 && self.b[start] == b'0' {
            return Err(self.err(format!("{what} with a leading zero")));
        }
        if matches!(self.b.get(self.p), Some(b'.' | b'e' | b'E')) {
            return Err(self.err(format!("{what} is not an integer")));
        }
        Ok(v)
    }

    fn key(&mut self) -> Result<usize, FormatError> {
        self.expect(b'"')?;
        let v = self.number(1 << 20, "layer id")?;
        if self.b.get(self.p) != Some(&b'"') {
            return Err(self.err("layer key is not a decimal layer id"));
        }
        self.p += 1;
        Ok(v as usize)
    }

    /// `[[e, e], [e, e], ...]`: returns (top_k, flat ids).
    fn tokens(&mut self, layer: usize) -> Result<(usize, Vec<u16>), FormatError> {
        self.expect(b'[')?;
        let mut ids = Vec::new();
        let mut k = 0usize;
        if self.peek() == Some(b']') {
            self.p += 1;
            return Ok((0, ids));
        }
        let mut token = 0usize;
        loop {
            self.expect(b'[')?;
            let before = ids.len();
            loop {
                let e = self.number(u64::from(MISSING_EXPERT) - 1, "expert id")?;
                ids.push(e as u16);
                if !self.comma_or(b']')? {
                    break;
                }
            }
            let n = ids.len() - before;
            if token == 0 {
                k = n;
            } else if n != k {
                return Err(self.err(format!(
                    "layer {layer} token {token}: {n} experts, earlier tokens have {k}"
                )));
            }
            token += 1;
            if !self.comma_or(b']')? {
                break;
            }
        }
        Ok((k, ids))
    }

    fn iteration(&mut self) -> Result<RawIteration, FormatError> {
        self.expect(b'{')?;
        let mut out = RawIteration::new();
        if self.peek() == Some(b'}') {
            self.p += 1;
            return Ok(out);
        }
        loop {
            let layer = self.key()?;
            self.expect(b':')?;
            let v = match self.peek() {
                Some(b'n') => {
                    if self.b[self.p..].starts_with(b"null") {
                        self.p += 4;
                        None
                    } else {
                        return Err(self.err("expected `null`"));
                    }
                }
                _ => Some(self.tokens(layer)?),
            };
            out.push((layer, v));
            if !self.comma_or(b'}')? {
                break;
            }
        }
        Ok(out)
    }
}

/// Scans a whole document. Rejects anything outside the layout (other value kinds, trailing
/// bytes, non-integer ids, ids that collide with [`MISSING_EXPERT`], ragged top-k within a
/// layer) with the byte offset.
pub fn scan(b: &[u8]) -> Result<Vec<RawIteration>, FormatError> {
    let mut s = Scanner { b, p: 0 };
    // A UTF-8 byte order mark is harmless.
    if b.starts_with(&[0xef, 0xbb, 0xbf]) {
        s.p = 3;
    }
    s.expect(b'[')?;
    let mut out = Vec::new();
    if s.peek() == Some(b']') {
        s.p += 1;
    } else {
        loop {
            out.push(s.iteration()?);
            if !s.comma_or(b']')? {
                break;
            }
        }
    }
    if s.peek().is_some() {
        return Err(s.err("trailing bytes after the iteration list"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The same layout through serde_json, as the reference.
    fn reference(text: &str) -> Option<Vec<RawIteration>> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let mut out = Vec::new();
        for it in v.as_array()? {
            let mut raw = RawIteration::new();
            for (k, v) in it.as_object()? {
                let layer: usize = k.parse().ok()?;
                if v.is_null() {
                    raw.push((layer, None));
                    continue;
                }
                let toks = v.as_array()?;
                let mut ids = Vec::new();
                let mut kk = 0;
                for (t, tok) in toks.iter().enumerate() {
                    let tok = tok.as_array()?;
                    if t == 0 {
                        kk = tok.len();
                    }
                    for e in tok {
                        ids.push(u16::try_from(e.as_u64()?).ok()?);
                    }
                }
                raw.push((layer, Some((kk, ids))));
            }
            out.push(raw);
        }
        Some(out)
    }

    type Doc = Vec<Vec<(usize, Option<Vec<Vec<u16>>>)>>;

    fn doc() -> impl Strategy<Value = Doc> {
        let layer = proptest::option::of((1usize..4).prop_flat_map(|k| {
            proptest::collection::vec(proptest::collection::vec(0u16..65535, k), 0..5)
        }));
        proptest::collection::vec(
            proptest::collection::btree_map(0usize..12, layer, 0..5)
                .prop_map(|m| m.into_iter().collect::<Vec<_>>()),
            0..4,
        )
    }

    proptest! {
        #[test]
        fn agrees_with_serde_json(d in doc(), pretty: bool) {
            let json: Vec<serde_json::Map<String, serde_json::Value>> = d
                .iter()
                .map(|it| it.iter().map(|(l, v)| (l.to_string(), serde_json::json!(v))).collect())
                .collect();
            let text = if pretty {
                serde_json::to_string_pretty(&json).unwrap()
            } else {
                serde_json::to_string(&json).unwrap()
            };
            let sorted = |mut d: Vec<RawIteration>| {
                d.iter_mut().for_each(|it| it.sort_by_key(|x| x.0));
                d
            };
            let mine = sorted(scan(text.as_bytes()).unwrap());
            prop_assert_eq!(Some(mine), reference(&text).map(sorted));
        }

        #[test]
        fn never_panics_on_random_bytes(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = scan(&b);
        }

        #[test]
        fn never_panics_on_damaged_documents(d in doc(), cut in any::<proptest::sample::Index>(), flip in any::<u8>()) {
            let text = serde_json::to_string(&d.iter().map(|it| it.iter().map(|(l, v)| (l.to_string(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>()).unwrap();
            let mut b = text.into_bytes();
            if !b.is_empty() {
                let i = cut.index(b.len());
                b[i] = flip;
                let _ = scan(&b);
                let _ = scan(&b[..i]);
            }
        }
    }

    #[test]
    fn names_the_offset_of_errors() {
        assert!(matches!(
            scan(b"[{\"0\": [[1, 2], [3]]}]"),
            Err(FormatError::Syntax { .. })
        ));
        assert!(scan(b"[{\"0\": [[1, 2]]}").is_err());
        assert!(scan(b"[{\"0\": [[1.5, 2]]}]").is_err());
        assert!(scan(b"[{\"x\": null}]").is_err());
        assert!(scan(b"[{\"0\": [[65535]]}]").is_err());
        let ok = scan(b" [ {\"1\" : null , \"0\":[[5,2],[0,1]]} , {\"0\":[[3, 4]],\"1\":null} ] ")
            .unwrap();
        assert_eq!(ok[0][1], (0, Some((2, vec![5, 2, 0, 1]))));
        assert_eq!(ok[1][1], (1, None));
    }
}
