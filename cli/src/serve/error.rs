//! HTTP errors: `{"error": {"code": <anneal error code>, "message": ..., "type": ...}}`
//! with a status mapped from the code. `type` follows OpenAI's error types, so its
//! clients show the message as they do for OpenAI's own errors.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error answered to a client.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    /// The core's error code (`invalid_config`, `not_found`, ...) or one of the
    /// server's own: `unauthorized`, `forbidden`, `payload_too_large`,
    /// `too_many_requests`, `method_not_allowed`, `shutting_down`.
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) retry_after: Option<u64>,
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self { status, code: code.to_string(), message: message.into(), retry_after: None }
    }

    /// `invalid_config` naming `field`, as the core words it.
    pub(crate) fn config(field: &str, reason: impl std::fmt::Display) -> Self {
        anneal::Error::config(field, reason.to_string()).into()
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub(crate) fn busy(message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message)
        }
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// OpenAI's error type for this status.
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            409 => "conflict_error",
            413 | 400 | 405 | 422 => "invalid_request_error",
            429 => "rate_limit_error",
            _ => "server_error",
        }
    }

    /// The body as JSON (also sent inside SSE streams that fail after they started).
    pub(crate) fn body(&self) -> serde_json::Value {
        json!({"error": {"code": self.code, "message": self.message, "type": self.kind()}})
    }
}

/// The HTTP status of each core error code.
pub(crate) fn status_of(e: &anneal::Error) -> StatusCode {
    match e.code() {
        "invalid_config" => StatusCode::BAD_REQUEST,
        "invalid_data" => StatusCode::UNPROCESSABLE_ENTITY,
        "not_found" | "file_not_found" => StatusCode::NOT_FOUND,
        "already_exists" | "duplicate_content" | "in_use" => StatusCode::CONFLICT,
        // The client went away or asked to stop.
        "cancelled" => StatusCode::CONFLICT,
        "storage" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<anneal::Error> for ApiError {
    fn from(e: anneal::Error) -> Self {
        Self::new(status_of(&e), e.code(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, Json(self.body())).into_response();
        let h = res.headers_mut();
        if let Some(s) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"anneal\""));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_codes_map_to_statuses() {
        assert_eq!(status_of(&anneal::Error::config("x", "y")), StatusCode::BAD_REQUEST);
        assert_eq!(status_of(&anneal::Error::not_found("model", "m")), StatusCode::NOT_FOUND);
        assert_eq!(status_of(&anneal::Error::Internal("x".into())), StatusCode::INTERNAL_SERVER_ERROR);
        let e = ApiError::from(anneal::Error::not_found("job", "j"));
        assert_eq!(e.body()["error"]["code"], "not_found");
        assert_eq!(e.body()["error"]["type"], "not_found_error");
    }
}
