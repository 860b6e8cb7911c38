//! Server-sent events in OpenAI's streaming format: one `data: {json}` event per chunk, an
//! error as `data: {"error": {...}}`, and `data: [DONE]` last.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Serialize;

use super::error::ApiError;
use crate::error::RequestError;

/// Comment lines sent on an idle stream (a long queue or prefill), so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// A chunk as an event.
pub fn json_event<T: Serialize>(chunk: &T) -> Event {
    match serde_json::to_string(chunk) {
        Ok(json) => Event::default().data(json),
        Err(e) => error_event(RequestError::Internal(format!(
            "serializing a chunk failed: {e}"
        ))),
    }
}

/// A terminal error as an event (the stream then sends [`done_event`]).
pub fn error_event(error: RequestError) -> Event {
    Event::default().data(ApiError::from(error).json_body())
}

/// The last event of every stream.
pub fn done_event() -> Event {
    Event::default().data("[DONE]")
}

/// The response for a stream of events. The stream owns the request's
/// [`Generation`](crate::generation::Generation), so the connection closing drops it.
pub fn response<S>(events: S) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}
