//! A request body too large for its route is refused by its declared
//! length, as soon as the headers are read: 413 `body_too_large` in the
//! route's error shape. Reading the body would first wait for bytes that
//! will be thrown away, or, from a client that declares gigabytes and
//! sends nothing, for `http.body_read_timeout_ms`.

use axum::extract::Request;
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::Response;

use super::error::body_too_large;
use super::extract::request_id;
use crate::service::GatewayError;

/// How a route group answers an error, under the request's id.
pub(super) type Render = fn(&GatewayError, &str) -> Response;

/// Passes `request` on unless its `content-length` is over `max_bytes`.
pub(super) async fn refuse_declared_over(
    max_bytes: usize,
    render: Render,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(length) if length > max_bytes as u64 => {
            render(&body_too_large(), &request_id(request.headers()))
        }
        _ => next.run(request).await,
    }
}
