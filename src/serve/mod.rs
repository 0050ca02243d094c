//! `streetclip serve`: the model loaded once behind a JSON API and a map page, on tokio + axum
//! (hyper underneath). `engine` owns the model and batches images dynamically, `api` turns
//! requests into its jobs and its answers into JSON, `page` serves the map page and the files
//! it needs (Leaflet, Natural Earth outlines) from the binary itself, `listener` accepts
//! connections with their limits and stops gracefully.

pub mod api;
pub mod engine;
pub mod listener;
pub mod page;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::time::Duration;

/// Limits on what a client may hold or send.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A request body over this many bytes is refused (413) before it is read whole.
    pub max_body_bytes: usize,
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Whole request (headers, body, answer) and idle keep-alive time; a client slower than
    /// this is disconnected.
    pub timeout: Duration,
}

/// What a request gets when it cannot be answered: its HTTP status and a JSON body
/// `{"error": {"status": N, "message": "..."}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// The queue is full: come back shortly (503 with `Retry-After`).
    pub fn busy() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server's queue is full: retry after a second",
        )
    }

    /// A failure of the model itself (damaged weights, ...), not of the request.
    pub fn from_model(e: anyhow::Error) -> Self {
        Self::internal(format!("{e:#}"))
    }

    /// An image that could not be made into pixels: 415 when it is not an image streetclip
    /// reads, 413 over the decoder's pixel limit, 400 when damaged.
    pub fn from_image(name: &str, e: &anyhow::Error) -> Self {
        use crate::data::decode::Refused;
        let status = match e.downcast_ref::<Refused>() {
            Some(Refused::NotAnImage | Refused::Unsupported(_)) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Some(Refused::TooManyPixels { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            None => StatusCode::BAD_REQUEST,
        };
        Self::new(status, format!("{name}: {e:#}"))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"status": self.status.as_u16(), "message": self.message})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = axum::Json(serde_json::json!({ "error": self.json() }));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            let headers = response.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
