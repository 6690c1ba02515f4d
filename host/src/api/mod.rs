//! The HTTP API: Bedrock-compatible routes, health, and their errors.

mod bedrock;
mod error;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router as HttpRouter;

pub use error::ApiError;

use crate::router::Router;

/// What every handler can reach.
pub struct AppState {
    pub router: Router,
}

/// The gateway's routes.
pub fn routes(state: Arc<AppState>, max_body_bytes: usize) -> HttpRouter {
    HttpRouter::new()
        .route("/model/{model_id}/converse", post(bedrock::converse))
        .route(
            "/model/{model_id}/converse-stream",
            post(bedrock::converse_stream),
        )
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { ApiError::not_found() })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}
