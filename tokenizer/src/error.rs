//! The one error type of the tokenizer module.
//!
//! Every variant that comes from a file names the file (and the field where one is at fault),
//! because a checkpoint directory holds several JSON files and "invalid type" alone does not
//! tell a user which one to fix.

use std::path::PathBuf;

/// Why loading, encoding, decoding, chat-template rendering or training failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read (missing, unreadable).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be written (training, checkpoint generation).
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file that failed.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid JSON.
    #[error("{file}: invalid JSON: {source}")]
    Json {
        /// The file name (as in the checkpoint directory).
        file: String,
        /// The parse error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// A JSON file parsed but one of its fields has the wrong type or value.
    #[error("{file}: {field} {problem}")]
    Field {
        /// The file name.
        file: String,
        /// The field (a dotted path where nested).
        field: String,
        /// What is wrong, phrased to follow the field name ("is not a string").
        problem: String,
    },
    /// `tokenizer.json` parsed as JSON but the `tokenizers` library rejected it.
    #[error("{file}: not a valid tokenizer: {message}")]
    Load {
        /// The file name.
        file: String,
        /// The library's message.
        message: String,
    },
    /// Encoding text failed inside the `tokenizers` library.
    #[error("encoding failed: {0}")]
    Encode(String),
    /// Decoding ids failed inside the `tokenizers` library.
    #[error("decoding failed: {0}")]
    Decode(String),
    /// The checkpoint has no chat template, so chat requests cannot be rendered.
    #[error(
        "no chat template: neither {} nor tokenizer_config.json (field chat_template) defines one",
        dir.join("chat_template.jinja").display()
    )]
    NoChatTemplate {
        /// The checkpoint directory that was searched.
        dir: PathBuf,
    },
    /// The chat template does not compile.
    #[error("{file}: chat_template does not compile: {message}")]
    TemplateSyntax {
        /// Where the template came from.
        file: String,
        /// minijinja's message, with the template line.
        message: String,
    },
    /// The template called `raise_exception(...)`: the conversation is not acceptable to this
    /// model (for example roles that do not alternate). A caller should report it as the
    /// client's error.
    #[error("chat template rejected the conversation: {0}")]
    TemplateRaised(String),
    /// Rendering the template failed for another reason.
    #[error("chat template rendering failed: {0}")]
    TemplateRender(String),
    /// Training a tokenizer failed.
    #[error("tokenizer training failed: {0}")]
    Train(String),
}
