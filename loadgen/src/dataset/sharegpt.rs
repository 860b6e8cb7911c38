//! ShareGPT-style conversation files, as `vllm bench serve --dataset-name sharegpt` reads them:
//! a JSON array of `{"conversations": [{"from": "human", "value": ...}, {"from": "gpt",
//! "value": ...}, ...]}`; `role`/`content` are accepted for `from`/`value`.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Deserialize;

use super::{estimate_tokens, Prompt};

#[derive(Debug, Deserialize)]
struct Conversation {
    #[serde(default, alias = "conversation", alias = "messages")]
    conversations: Vec<Turn>,
}

#[derive(Debug, Deserialize)]
struct Turn {
    #[serde(alias = "content")]
    value: Option<String>,
}

/// vLLM's filter, on estimated lengths: too short to measure, or too long for a 2K context.
const MIN_LEN: u64 = 4;
const MAX_PROMPT: u64 = 1024;
const MAX_TOTAL: u64 = 2048;

/// The usable conversations, shuffled with `seed` (as vLLM does, so a prefix of the file is
/// not always the sample).
pub fn parse(text: &str, output_len: Option<u32>, seed: u64) -> Result<Vec<Prompt>, String> {
    let convs: Vec<Conversation> =
        serde_json::from_str(text).map_err(|e| format!("not a ShareGPT JSON array: {e}"))?;
    let mut prompts: Vec<Prompt> = convs
        .into_iter()
        .filter_map(|c| {
            let mut turns = c.conversations.into_iter();
            let prompt = turns.next()?.value?;
            let answer = turns.next()?.value?;
            let estimated_tokens = estimate_tokens(&prompt);
            let out = match output_len {
                Some(n) => u64::from(n),
                None => estimate_tokens(&answer),
            };
            // A fixed output length is the user's choice: only the prompt is checked then.
            let fits = estimated_tokens >= MIN_LEN
                && (output_len.is_some() || out >= MIN_LEN)
                && estimated_tokens <= MAX_PROMPT
                && estimated_tokens + out <= MAX_TOTAL;
            fits.then(|| Prompt {
                text: prompt,
                estimated_tokens,
                output_len: u32::try_from(out).unwrap_or(u32::MAX),
            })
        })
        .collect();
    prompts.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    Ok(prompts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"[
        {"id": "a", "conversations": [
            {"from": "human", "value": "Tell me a story about a red fox in winter."},
            {"from": "gpt", "value": "Once upon a time, a red fox walked through the snow."}]},
        {"id": "b", "conversations": [{"from": "human", "value": "only one turn here"}]},
        {"id": "c", "conversations": [
            {"role": "user", "content": "What is the capital city of France, please?"},
            {"role": "assistant", "content": "The capital of France is Paris."}]}
    ]"#;

    #[test]
    fn first_two_turns_become_prompt_and_length() {
        let mut p = parse(FILE, None, 0).unwrap();
        p.sort_by(|a, b| a.text.cmp(&b.text));
        assert_eq!(p.len(), 2);
        assert!(p[0].text.starts_with("Tell me"));
        assert_eq!(p[0].output_len, 13); // 52 characters / 4
        assert!(p[1].text.starts_with("What is"));
        let fixed = parse(FILE, Some(7), 0).unwrap();
        assert!(fixed.iter().all(|q| q.output_len == 7));
    }

    #[test]
    fn not_json_is_an_error() {
        assert!(parse("{", None, 0).is_err());
    }
}
