//! OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, with the status
//! code that goes with each kind of failure.

use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::error::RequestError;

/// The body of an OpenAI error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a ErrorDetail,
}

/// An HTTP error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: ErrorDetail,
}

impl ApiError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        message: impl Into<String>,
        param: Option<String>,
        code: Option<&'static str>,
    ) -> Self {
        Self {
            status,
            detail: ErrorDetail {
                message: message.into(),
                kind,
                param,
                code,
            },
        }
    }

    /// A 400 naming the field at fault.
    pub fn bad_request(message: impl Into<String>, param: Option<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            message,
            param,
            None,
        )
    }

    /// 404 for paths the API does not have.
    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("no route for {path}"),
            None,
            Some("not_found"),
        )
    }

    /// A body that could not be read: 413 over the size limit, else 400.
    pub fn from_body_rejection(rejection: &BytesRejection) -> Self {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Self::new(
                status,
                "invalid_request_error",
                "the request body is over the size limit",
                None,
                Some("request_too_large"),
            )
        } else {
            Self::new(
                status,
                "invalid_request_error",
                rejection.body_text(),
                None,
                None,
            )
        }
    }

    /// The JSON text of the error body, for SSE error events.
    pub fn json_body(&self) -> String {
        serde_json::to_string(&ErrorBody {
            error: &self.detail,
        })
        .unwrap_or_else(|_| {
            r#"{"error":{"message":"internal error","type":"server_error","param":null,"code":null}}"#
                .to_string()
        })
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Invalid { param, message } => Self::bad_request(message, param),
            RequestError::Overloaded(m) => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                m,
                None,
                Some("overloaded"),
            ),
            RequestError::Unavailable(m) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                m,
                None,
                Some("unavailable"),
            ),
            // A worker failure: the deployment could not serve this request now.
            RequestError::Backend(m) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                m,
                None,
                Some("generation_failed"),
            ),
            RequestError::Internal(m) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                m,
                None,
                Some("internal_error"),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody {
            error: &self.detail,
        });
        (self.status, body).into_response()
    }
}
