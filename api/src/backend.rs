//! The trait every token generator implements for the front ends.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::{ComponentHealth, GenerateRequest, ModelInfo, RankLoad, SubmitError, TokenEvent};

/// A token generator as the front ends see it.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Accepts a request; its events arrive on the returned receiver. Dropping the receiver
    /// cancels the request (its KV blocks are freed).
    async fn submit(&self, req: GenerateRequest)
        -> Result<mpsc::Receiver<TokenEvent>, SubmitError>;
    /// Cancels a request by id; false if it is unknown or finished.
    async fn abort(&self, request_id: &str) -> bool;
    fn health(&self) -> Vec<ComponentHealth>;
    async fn loads(&self) -> Vec<RankLoad>;
    fn model_info(&self) -> ModelInfo;
}

/// Shared handle used by the front ends.
pub type SharedBackend = Arc<dyn Backend>;
