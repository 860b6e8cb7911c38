//! Reading the tokenizer-side files of a Hugging Face checkpoint: `tokenizer_config.json`,
//! `generation_config.json` and `chat_template.jinja`.
//!
//! Real checkpoints disagree on the shapes of these fields (a special token is a string or an
//! `AddedToken` object; `eos_token_id` is an int or a list; `chat_template` is a string or a
//! list of named templates), so each accessor accepts every published shape and names the file
//! and field when it finds something else.

use std::path::Path;

use serde_json::Value;

use super::TokenizerError;

/// The file name of the tokenizer configuration.
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
/// The file name of the generation defaults.
pub const GENERATION_CONFIG: &str = "generation_config.json";
/// The file that newer transformers versions write the chat template to.
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// What the runtime needs from `tokenizer_config.json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenizerConfig {
    /// The Jinja chat template, if the file has one.
    pub chat_template: Option<String>,
    /// The BOS token's text (exposed to templates as `bos_token`).
    pub bos_token: Option<String>,
    /// The EOS token's text (exposed to templates as `eos_token`).
    pub eos_token: Option<String>,
    /// The padding token's text (exposed to templates as `pad_token`).
    pub pad_token: Option<String>,
    /// The unknown token's text (exposed to templates as `unk_token`).
    pub unk_token: Option<String>,
}

/// Reads a file as UTF-8 text, or `None` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<String>, TokenizerError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Parses `text` as JSON, attributing errors to `file`.
pub fn parse_json(file: &str, text: &str) -> Result<Value, TokenizerError> {
    serde_json::from_str(text).map_err(|source| TokenizerError::Json {
        file: file.to_string(),
        source,
    })
}

fn field_error(file: &str, field: &str, problem: impl Into<String>) -> TokenizerError {
    TokenizerError::Field {
        file: file.to_string(),
        field: field.to_string(),
        problem: problem.into(),
    }
}

/// Parses the contents of `tokenizer_config.json`.
pub fn parse_tokenizer_config(text: &str) -> Result<TokenizerConfig, TokenizerError> {
    let file = TOKENIZER_CONFIG;
    let root = parse_json(file, text)?;
    let Value::Object(map) = &root else {
        return Err(field_error(file, "top level", "is not a JSON object"));
    };
    Ok(TokenizerConfig {
        chat_template: map
            .get("chat_template")
            .map(|v| chat_template_field(file, v))
            .transpose()?
            .flatten(),
        bos_token: special_token(file, "bos_token", map.get("bos_token"))?,
        eos_token: special_token(file, "eos_token", map.get("eos_token"))?,
        pad_token: special_token(file, "pad_token", map.get("pad_token"))?,
        unk_token: special_token(file, "unk_token", map.get("unk_token"))?,
    })
}

/// A special token is `null`, a string, or an `AddedToken` object with a `content` string.
fn special_token(
    file: &str,
    field: &str,
    value: Option<&Value>,
) -> Result<Option<String>, TokenizerError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(obj)) => match obj.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(field_error(
                file,
                field,
                "is an object without a string \"content\" field",
            )),
        },
        Some(_) => Err(field_error(
            file,
            field,
            "is not a string or an object with \"content\"",
        )),
    }
}

/// `chat_template` is a string, `null`, or a list of `{"name", "template"}` objects of which
/// transformers uses the one named `default`.
fn chat_template_field(file: &str, value: &Value) -> Result<Option<String>, TokenizerError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Array(items) => {
            for item in items {
                let name = item.get("name").and_then(Value::as_str);
                let template = item.get("template").and_then(Value::as_str);
                match (name, template) {
                    (Some("default"), Some(t)) => return Ok(Some(t.to_string())),
                    (Some(_), Some(_)) => {}
                    _ => {
                        return Err(field_error(
                            file,
                            "chat_template",
                            "is a list whose entries are not {\"name\", \"template\"} strings",
                        ))
                    }
                }
            }
            Err(field_error(
                file,
                "chat_template",
                "is a list without a template named \"default\"",
            ))
        }
        _ => Err(field_error(file, "chat_template", "is not a string")),
    }
}

/// Parses the `eos_token_id` of `generation_config.json` (an int, a list of ints, or absent).
pub fn parse_generation_eos(text: &str) -> Result<Option<Vec<u32>>, TokenizerError> {
    let file = GENERATION_CONFIG;
    let root = parse_json(file, text)?;
    let Value::Object(map) = &root else {
        return Err(field_error(file, "top level", "is not a JSON object"));
    };
    let as_id = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    match map.get("eos_token_id") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                as_id(v).ok_or_else(|| {
                    field_error(
                        file,
                        "eos_token_id",
                        "contains an entry that is not a token id",
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(v) => as_id(v).map(|id| Some(vec![id])).ok_or_else(|| {
            field_error(file, "eos_token_id", "is not a token id or a list of them")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_tokens_accept_strings_objects_and_null() {
        let cfg = parse_tokenizer_config(
            r#"{"bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false},
                "eos_token": "</s>", "pad_token": null, "chat_template": "{{ bos_token }}"}"#,
        )
        .unwrap();
        assert_eq!(cfg.bos_token.as_deref(), Some("<s>"));
        assert_eq!(cfg.eos_token.as_deref(), Some("</s>"));
        assert_eq!(cfg.pad_token, None);
        assert_eq!(cfg.chat_template.as_deref(), Some("{{ bos_token }}"));
    }

    #[test]
    fn chat_template_list_picks_default() {
        let cfg = parse_tokenizer_config(
            r#"{"chat_template": [{"name": "tool_use", "template": "T"},
                                  {"name": "default", "template": "D"}]}"#,
        )
        .unwrap();
        assert_eq!(cfg.chat_template.as_deref(), Some("D"));
    }

    #[test]
    fn bad_fields_name_file_and_field() {
        let err = parse_tokenizer_config(r#"{"chat_template": 3}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tokenizer_config.json: chat_template is not a string"
        );
        let err = parse_tokenizer_config(r#"{"eos_token": {"id": 2}}"#).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("tokenizer_config.json: eos_token "));
        let err = parse_tokenizer_config("{not json").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("tokenizer_config.json: invalid JSON"));
    }

    #[test]
    fn generation_eos_is_int_or_list() {
        assert_eq!(
            parse_generation_eos(r#"{"eos_token_id": 7}"#).unwrap(),
            Some(vec![7])
        );
        assert_eq!(
            parse_generation_eos(r#"{"eos_token_id": [7, 8]}"#).unwrap(),
            Some(vec![7, 8])
        );
        assert_eq!(
            parse_generation_eos(r#"{"do_sample": true}"#).unwrap(),
            None
        );
        let err = parse_generation_eos(r#"{"eos_token_id": "x"}"#).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("generation_config.json: eos_token_id "));
    }
}
