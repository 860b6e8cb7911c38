//! `/v1/completions` and `/v1/chat/completions` against the fake backend: shapes, streaming,
//! usage, logprobs, token ids, stop strings, EOS, workload labels.

mod common;

use common::{guard, harness, ids, tokenizer};
use moeflow_frontend::testing::fake_logprob;
use moeflow_tokenizer::ChatMessage;
use serde_json::{json, Value};

const TEXT: &str = "The quick brown fox jumps over the lazy dog.";

fn scripted(text: &str) -> common::Harness {
    let mut c = common::config();
    c.script = ids(text);
    harness(c)
}

fn decode(ids: &[u32]) -> String {
    tokenizer().decode_with(ids, true).expect("decode")
}

#[tokio::test]
async fn completion_whole_response() {
    let h = scripted(TEXT);
    let script = ids(TEXT);
    let (status, body) = h
        .post(
            "/v1/completions",
            &json!({"model": "fake-moe", "prompt": "Hello", "max_tokens": 5, "temperature": 0}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], "fake-moe");
    assert!(body["id"].as_str().is_some_and(|s| s.starts_with("cmpl-")));
    let choice = &body["choices"][0];
    assert_eq!(choice["text"], decode(&script[..5]));
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(choice["index"], 0);
    assert!(choice["logprobs"].is_null());
    let prompt_len = tokenizer().encode("Hello").expect("encode").len();
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": prompt_len, "completion_tokens": 5, "total_tokens": prompt_len + 5})
    );
    let sent = h.backend.requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].max_tokens, 5);
    assert_eq!(sent[0].sampling.temperature, 0.0);
    assert!(sent[0]
        .stop_token_ids
        .iter()
        .all(|id| tokenizer().eos_token_ids().contains(id)));
}

#[tokio::test]
async fn completion_prompt_forms() {
    // An empty script echoes the prompt.
    let h = harness(common::config());
    for prompt in [json!([5, 6, 7]), json!([[5, 6, 7]])] {
        let (status, body) = h
            .post(
                "/v1/completions",
                &json!({"prompt": prompt, "max_tokens": 3, "return_token_ids": true}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["choices"][0]["token_ids"], json!([5, 6, 7]));
        assert_eq!(body["choices"][0]["prompt_token_ids"], json!([5, 6, 7]));
    }
    let (status, _) = h
        .post(
            "/v1/completions",
            &json!({"prompt": ["Hello"], "max_tokens": 2}),
        )
        .await;
    assert_eq!(status, 200);
    let sent = h.backend.requests();
    assert_eq!(sent[2].prompt, tokenizer().encode("Hello").expect("encode"));
    // Default max_tokens is OpenAI's 16.
    let (status, body) = h.post("/v1/completions", &json!({"prompt": [1, 2]})).await;
    assert_eq!(status, 200);
    assert_eq!(body["usage"]["completion_tokens"], 16);
}

#[tokio::test]
async fn completion_stream_with_usage() {
    let h = scripted(TEXT);
    let script = ids(TEXT);
    let data = h
        .stream(
            "/v1/completions",
            &json!({"prompt": "Hi", "max_tokens": 6, "stream": true,
                    "stream_options": {"include_usage": true}}),
        )
        .await;
    let chunks = common::chunks(&data);
    let (usage_chunk, text_chunks) = chunks.split_last().expect("chunks");
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 6);
    let mut text = String::new();
    for c in text_chunks {
        assert_eq!(c["object"], "text_completion");
        assert!(c["usage"].is_null());
        text.push_str(c["choices"][0]["text"].as_str().expect("text"));
    }
    assert_eq!(text, decode(&script[..6]));
    let last = text_chunks.last().expect("a chunk");
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert!(text_chunks[..text_chunks.len() - 1]
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));

    // Without include_usage there is no usage field and no usage chunk.
    let data = h
        .stream(
            "/v1/completions",
            &json!({"prompt": "Hi", "max_tokens": 3, "stream": true}),
        )
        .await;
    let chunks = common::chunks(&data);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert!(chunks
        .iter()
        .all(|c| c["choices"].as_array().map(Vec::len) == Some(1)));
}

#[tokio::test]
async fn completion_logprobs_and_token_ids() {
    let h = scripted(TEXT);
    let script = ids(TEXT);
    let (status, body) = h
        .post(
            "/v1/completions",
            &json!({"prompt": "Hi", "max_tokens": 4, "logprobs": 1, "return_token_ids": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    let lp = &choice["logprobs"];
    let expected: Vec<f64> = (0..4).map(|i| f64::from(fake_logprob(i))).collect();
    assert_eq!(lp["token_logprobs"], json!(expected));
    let tokens: Vec<String> = script[..4]
        .iter()
        .map(|&id| tokenizer().decode(&[id]).expect("decode"))
        .collect();
    assert_eq!(lp["tokens"], json!(tokens));
    // `logprobs: 1`: the likeliest alternative, which here is the emitted token itself.
    assert_eq!(h.backend.requests()[0].sampling.top_logprobs, 1);
    let top: Vec<_> = (0..4)
        .map(|i| json!({ tokens[i].as_str(): f64::from(fake_logprob(i)) }))
        .collect();
    assert_eq!(lp["top_logprobs"], json!(top));
    // `logprobs: 0`: the sampled tokens' log-probabilities only.
    let (_, body0) = h
        .post(
            "/v1/completions",
            &json!({"prompt": "Hi", "max_tokens": 2, "logprobs": 0}),
        )
        .await;
    assert_eq!(
        body0["choices"][0]["logprobs"]["top_logprobs"],
        json!([null, null])
    );
    let mut offsets = Vec::new();
    let mut at = 0;
    for t in &tokens {
        offsets.push(at);
        at += t.chars().count();
    }
    assert_eq!(lp["text_offset"], json!(offsets));
    assert_eq!(choice["token_ids"], json!(script[..4]));
    assert_eq!(
        choice["prompt_token_ids"],
        json!(tokenizer().encode("Hi").expect("encode"))
    );

    // Streaming: token ids per chunk add up; prompt ids come in the first chunk only.
    let data = h
        .stream(
            "/v1/completions",
            &json!({"prompt": "Hi", "max_tokens": 4, "stream": true,
                    "logprobs": 0, "return_token_ids": true}),
        )
        .await;
    let chunks = common::chunks(&data);
    let mut all_ids = Vec::new();
    let mut all_lps = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let choice = &c["choices"][0];
        assert_eq!(choice.get("prompt_token_ids").is_some(), i == 0, "{c}");
        for id in choice["token_ids"].as_array().expect("token_ids") {
            all_ids.push(id.as_u64().expect("id") as u32);
        }
        all_lps.extend(
            choice["logprobs"]["token_logprobs"]
                .as_array()
                .expect("logprobs")
                .clone(),
        );
    }
    assert_eq!(all_ids, script[..4]);
    assert_eq!(Value::from(all_lps), json!(expected));
}

fn chat_prompt(messages: &[ChatMessage]) -> Vec<u32> {
    let text = tokenizer()
        .apply_chat_template(messages, true)
        .expect("template");
    tokenizer().encode_raw(&text).expect("encode")
}

#[tokio::test]
async fn chat_whole_response() {
    let h = scripted(TEXT);
    let script = ids(TEXT);
    let (status, body) = h
        .post(
            "/v1/chat/completions",
            &json!({
                "model": "fake-moe",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": [{"type": "text", "text": "Hello"},
                                                 {"type": "text", "text": "there"}]}
                ],
                "max_completion_tokens": 7,
                "logprobs": true,
                "top_logprobs": 2,
                "user": "someone",
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"]
        .as_str()
        .is_some_and(|s| s.starts_with("chatcmpl-")));
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], decode(&script[..7]));
    assert_eq!(choice["finish_reason"], "length");
    let content = choice["logprobs"]["content"].as_array().expect("content");
    assert_eq!(content.len(), 7);
    let first = tokenizer().decode(&script[..1]).expect("decode");
    assert_eq!(content[0]["token"], first.as_str());
    assert_eq!(content[0]["bytes"], json!(first.as_bytes()));
    assert_eq!(content[0]["logprob"], json!(f64::from(fake_logprob(0))));
    let alt = tokenizer().decode(&[script[0] + 1]).expect("decode");
    assert_eq!(
        content[0]["top_logprobs"],
        json!([
            {"token": first, "logprob": f64::from(fake_logprob(0)), "bytes": first.as_bytes()},
            {"token": alt, "logprob": f64::from(fake_logprob(0)) - 1.0, "bytes": alt.as_bytes()},
        ])
    );
    let expected = chat_prompt(&[
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Hello\nthere"),
    ]);
    assert_eq!(h.backend.requests()[0].prompt, expected);
    assert_eq!(body["usage"]["prompt_tokens"], expected.len());
    assert_eq!(body["usage"]["completion_tokens"], 7);
}

#[tokio::test]
async fn chat_defaults_to_the_room_left_and_stops_at_eos() {
    let eos = tokenizer().eos_token_ids()[0];
    let mut script = ids("Sure thing");
    script.push(eos);
    let mut c = common::config();
    c.script = script.clone();
    let h = harness(c);
    let (status, body) = h
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "stop");
    // The EOS token is special: counted, but not in the text.
    assert_eq!(choice["message"]["content"], "Sure thing");
    assert_eq!(body["usage"]["completion_tokens"], script.len());
    let sent = &h.backend.requests()[0];
    let room = 512 - sent.prompt.len() as u32;
    assert_eq!(sent.max_tokens, room);
    assert!(sent.stop_token_ids.contains(&eos));

    // ignore_eos: the fake keeps going past it until max_tokens.
    let (status, body) = h
        .post(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "Hi"}], "ignore_eos": true,
                    "max_tokens": 20}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert!(!h.backend.requests()[1].stop_token_ids.contains(&eos));
}

#[tokio::test]
async fn chat_stream() {
    let h = scripted(TEXT);
    let script = ids(TEXT);
    let data = h
        .stream(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5,
                    "stream": true, "stream_options": {"include_usage": true},
                    "logprobs": true, "return_token_ids": true}),
        )
        .await;
    let chunks = common::chunks(&data);
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let first = &chunks[0]["choices"][0];
    assert_eq!(first["delta"]["role"], "assistant");
    assert!(first["prompt_token_ids"].is_array());
    let (usage, rest) = chunks.split_last().expect("chunks");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    let mut text = String::new();
    let mut n_logprobs = 0;
    let mut token_ids = Vec::new();
    for c in &rest[1..] {
        let choice = &c["choices"][0];
        assert!(choice["delta"].get("role").is_none());
        if let Some(t) = choice["delta"]["content"].as_str() {
            text.push_str(t);
        }
        n_logprobs += choice["logprobs"]["content"].as_array().map_or(0, Vec::len);
        token_ids.extend(
            choice["token_ids"]
                .as_array()
                .expect("token_ids")
                .iter()
                .map(|v| v.as_u64().expect("id") as u32),
        );
    }
    assert_eq!(text, decode(&script[..5]));
    assert_eq!(n_logprobs, 5);
    assert_eq!(token_ids, script[..5]);
    assert_eq!(
        rest.last().expect("last")["choices"][0]["finish_reason"],
        "length"
    );
}

#[tokio::test]
async fn stop_strings_truncate_and_cancel_the_backend() {
    let text = "alpha beta gamma STOP delta epsilon";
    let script = ids(text);
    let mut c = common::config();
    c.script = script.clone();
    // After the script the fake waits, so only a dropped receiver ends its stream.
    c.stall_after = Some(script.len());
    let h = harness(c);
    let (status, body) = h
        .post(
            "/v1/completions",
            &json!({"prompt": "x", "max_tokens": 100, "stop": " STOP"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["text"], "alpha beta gamma");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    guard(
        "the backend to see the drop",
        h.backend.wait_until(|v| v.dropped.len() == 1),
    )
    .await;

    let data = h
        .stream(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 100,
                    "stop": ["zzz", "mma ST"], "stream": true}),
        )
        .await;
    let chunks = common::chunks(&data);
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, "alpha beta ga");
    assert_eq!(
        chunks.last().expect("last")["choices"][0]["finish_reason"],
        "stop"
    );
    guard(
        "the second drop",
        h.backend.wait_until(|v| v.dropped.len() == 2),
    )
    .await;
}

#[tokio::test]
async fn workload_label_from_header_or_body() {
    let h = scripted(TEXT);
    let (status, _) = h
        .post_raw(
            "/v1/completions",
            json!({"prompt": "a", "max_tokens": 1}).to_string(),
            &[("X-Moeflow-Workload", "code")],
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = h
        .post_raw(
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "a"}], "max_tokens": 1,
                   "workload": "math"})
            .to_string(),
            &[("X-Moeflow-Workload", "code")],
        )
        .await;
    assert_eq!(status, 200);
    let sent = h.backend.requests();
    assert_eq!(sent[0].workload.as_deref(), Some("code"));
    assert_eq!(sent[1].workload.as_deref(), Some("math"));
}

#[tokio::test]
async fn sampling_fields_reach_the_backend() {
    let h = scripted(TEXT);
    let (status, body) = h
        .post(
            "/v1/completions",
            &json!({"prompt": "a", "max_tokens": 1, "temperature": 0.7, "top_p": 0.9,
                    "top_k": 40, "seed": 1234, "stop_token_ids": [3],
                    "frequency_penalty": 0.0}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sent = &h.backend.requests()[0];
    assert_eq!(sent.sampling.temperature, 0.7);
    assert_eq!(sent.sampling.top_p, 0.9);
    assert_eq!(sent.sampling.top_k, 40);
    assert_eq!(sent.sampling.seed, Some(1234));
    assert!(sent.stop_token_ids.contains(&3));
}
