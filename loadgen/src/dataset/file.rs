//! Prompt files: JSONL (`{"prompt": "...", "max_tokens": 64}` per line; the file ends in
//! `.jsonl` or starts with `{`) or plain text with one prompt per non-empty line.

use std::path::Path;

use serde::Deserialize;

use super::{estimate_tokens, Prompt};

#[derive(Debug, Deserialize)]
struct Line {
    prompt: String,
    #[serde(default, alias = "output_len")]
    max_tokens: Option<u32>,
}

pub fn parse(path: &Path, text: &str, output_len: u32) -> Result<Vec<Prompt>, String> {
    let jsonl =
        path.extension().is_some_and(|e| e == "jsonl") || text.trim_start().starts_with('{');
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (prompt, out) = if jsonl {
            let l: Line = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
            (l.prompt, l.max_tokens.unwrap_or(output_len))
        } else {
            (line.to_string(), output_len)
        };
        if out == 0 {
            return Err(format!("line {}: max_tokens must be at least 1", i + 1));
        }
        prompts.push(Prompt {
            estimated_tokens: estimate_tokens(&prompt),
            text: prompt,
            output_len: out,
        });
    }
    Ok(prompts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_with_and_without_max_tokens() {
        let p = parse(
            Path::new("p.jsonl"),
            "{\"prompt\": \"hello there\", \"max_tokens\": 5}\n\n{\"prompt\": \"bye\"}\n",
            9,
        )
        .unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].text.as_str(), p[0].output_len), ("hello there", 5));
        assert_eq!((p[1].text.as_str(), p[1].output_len), ("bye", 9));
    }

    #[test]
    fn plain_text_one_prompt_per_line() {
        let p = parse(Path::new("p.txt"), "first prompt\n\n  \nsecond\n", 3).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].text, "second");
        assert!(p.iter().all(|q| q.output_len == 3));
    }

    #[test]
    fn a_bad_jsonl_line_is_named() {
        let e = parse(Path::new("p.jsonl"), "{\"prompt\": 1}\n", 3).unwrap_err();
        assert!(e.starts_with("line 1"), "{e}");
    }
}
