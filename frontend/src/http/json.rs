//! The JSON body extractor of the API: like axum's `Json`, but every failure is an OpenAI
//! error whose `param` names the field (serde's path, `messages[0].content`), the body's
//! content type is not insisted on (some clients omit it), and the size limit answers 413.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A request body parsed from JSON.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| ApiError::from_body_rejection(&r))?;
        parse(&bytes).map(ApiJson)
    }
}

/// Parses a JSON body, naming the field of a type error.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() || inner.is_io() {
            return ApiError::bad_request(format!("malformed JSON body: {inner}"), None);
        }
        let message = inner.to_string();
        let param = missing_field(&message)
            .map(|field| join_path(&path, field))
            .or_else(|| (path != ".").then(|| path.clone()));
        let message = match &param {
            Some(p) => format!("invalid field {p}: {message}"),
            None => format!("invalid request body: {message}"),
        };
        ApiError::bad_request(message, param)
    })?;
    de.end()
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}"), None))?;
    Ok(value)
}

/// The field serde's "missing field `x`" message names.
fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

fn join_path(parent: &str, field: &str) -> String {
    if parent == "." || parent.is_empty() {
        field.to_string()
    } else {
        format!("{parent}.{field}")
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::parse;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        content: String,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Body {
        n: Option<u32>,
        messages: Vec<Inner>,
    }

    #[test]
    fn names_the_field() {
        let e = parse::<Body>(br#"{"n": "x", "messages": []}"#).unwrap_err();
        assert_eq!(e.detail.param.as_deref(), Some("n"));
        let e = parse::<Body>(br#"{"messages": [{"content": 1}]}"#).unwrap_err();
        assert_eq!(e.detail.param.as_deref(), Some("messages[0].content"));
        let e = parse::<Body>(br#"{"messages": [{}]}"#).unwrap_err();
        assert_eq!(e.detail.param.as_deref(), Some("messages[0].content"));
        let e = parse::<Body>(br#"{}"#).unwrap_err();
        assert_eq!(e.detail.param.as_deref(), Some("messages"));
    }

    #[test]
    fn malformed_json_has_no_param() {
        let e = parse::<Body>(br#"{"messages": [}"#).unwrap_err();
        assert_eq!(e.detail.param, None);
        assert!(
            e.detail.message.contains("malformed"),
            "{}",
            e.detail.message
        );
        assert!(parse::<Body>(br#"{"messages": []} x"#).is_err());
    }
}
