//! Typed access to the fields of a parsed `config.json`, with the file and field named in
//! every error.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{Arch, ConfigError};

/// One config object (the top level, or the `text_config` of a multimodal Llama-4 config)
/// and the file it came from.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    obj: serde_json::Map<String, Value>,
    path: PathBuf,
}

impl ConfigSource {
    /// Wraps a parsed config. A multimodal config (one with a `text_config` object) is read
    /// through its text model, which is the part moeflow executes.
    pub fn new(value: Value, path: &Path) -> Result<Self, ConfigError> {
        let Value::Object(mut obj) = value else {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                field: "<root>".into(),
                msg: "expected a JSON object".into(),
            });
        };
        if let Some(Value::Object(text)) = obj.remove("text_config") {
            let outer_type = obj.get("model_type").cloned();
            obj = text;
            if !obj.contains_key("model_type") {
                if let Some(t) = outer_type {
                    obj.insert("model_type".into(), t);
                }
            }
        }
        Ok(Self {
            obj,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The architecture named by `model_type` (or, failing that, by `architectures[0]`).
    pub fn arch(&self) -> Result<Arch, ConfigError> {
        if let Some(t) = self.opt::<String>("model_type")? {
            return t.parse().map_err(|source| ConfigError::UnknownArch {
                path: self.path.clone(),
                source,
            });
        }
        let archs: Option<Vec<String>> = self.opt("architectures")?;
        let by_class = archs
            .and_then(|a| a.into_iter().next())
            .map(|c| match c.as_str() {
                "Qwen3MoeForCausalLM" => "qwen3_moe".to_string(),
                "DeepseekV3ForCausalLM" => "deepseek_v3".to_string(),
                "Llama4ForCausalLM" | "Llama4ForConditionalGeneration" => "llama4".to_string(),
                other => other.to_string(),
            });
        match by_class {
            Some(t) => t.parse().map_err(|source| ConfigError::UnknownArch {
                path: self.path.clone(),
                source,
            }),
            None => Err(self.missing("model_type")),
        }
    }

    /// A field that must be present (and not null).
    pub fn req<T: DeserializeOwned>(&self, field: &str) -> Result<T, ConfigError> {
        self.opt(field)?.ok_or_else(|| self.missing(field))
    }

    /// A field that may be absent or null.
    pub fn opt<T: DeserializeOwned>(&self, field: &str) -> Result<Option<T>, ConfigError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| self.invalid(field, e.to_string())),
        }
    }

    /// A field with a default used when it is absent or null.
    pub fn or<T: DeserializeOwned>(&self, field: &str, default: T) -> Result<T, ConfigError> {
        Ok(self.opt(field)?.unwrap_or(default))
    }

    /// The raw value of a field, for fields whose shape varies between checkpoint generations.
    pub fn raw(&self, field: &str) -> Option<&Value> {
        self.obj.get(field).filter(|v| !v.is_null())
    }

    pub fn missing(&self, field: &str) -> ConfigError {
        ConfigError::Missing {
            path: self.path.clone(),
            field: field.to_string(),
        }
    }

    pub fn invalid(&self, field: &str, msg: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            field: field.to_string(),
            msg: msg.into(),
        }
    }

    /// A positive integer field (sizes and counts, where 0 would be meaningless).
    pub fn positive(&self, field: &str) -> Result<usize, ConfigError> {
        let v: usize = self.req(field)?;
        if v == 0 {
            return Err(self.invalid(field, "must be positive"));
        }
        Ok(v)
    }

    /// Checks that `a` divides evenly by `b`, naming `field` (the dividend) otherwise.
    pub fn divisible(
        &self,
        field: &str,
        a: usize,
        b: usize,
        what: &str,
    ) -> Result<(), ConfigError> {
        if b == 0 || !a.is_multiple_of(b) {
            return Err(self.invalid(field, format!("{a} is not divisible by {what} ({b})")));
        }
        Ok(())
    }
}
