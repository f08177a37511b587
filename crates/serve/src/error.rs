//! Error replies: a status and a JSON body `{"error": {"code", "message", "field"}}`
//! that names the offending field. Bad input is always a 4xx; an overloaded LLM
//! queue is a 503 with `Retry-After`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An error reply.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code (`bad_request`, `not_found`, `overloaded`, ...).
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// The request field at fault, if one is.
    pub field: Option<String>,
}

/// The JSON body of an error reply.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The error's details.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code.
    pub code: String,
    /// What went wrong.
    pub message: String,
    /// The request field at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    /// 400 naming `field`.
    pub fn bad(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// 404.
    pub fn not_found(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// 409: the service is not set up for this request (no LLM configured).
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::CONFLICT,
            code: "not_configured",
            message: message.into(),
            field: None,
        }
    }

    /// 503 with `Retry-After`: the LLM queue is full, or the request ran out of time.
    pub fn overloaded(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "overloaded",
            message: message.into(),
            field: None,
        }
    }

    /// 502: the LLM backend failed.
    pub fn upstream(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_GATEWAY,
            code: "llm_failed",
            message: message.into(),
            field: None,
        }
    }

    /// 500: a fault of the service itself (never bad input).
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: message.into(),
            field: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                field: self.field,
            },
        };
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}
