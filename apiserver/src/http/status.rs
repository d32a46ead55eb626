//! Errors at the API edge, each a Kubernetes `Status` object with the right HTTP code and
//! reason, as `kubectl` and kube-rs expect them.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::raft::ClusterError;

/// One invalid field, for a 422 `Invalid` status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// The field's path (`spec.disks[0].size`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// A failed API request.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status code.
    pub code: u16,
    /// The Kubernetes reason (`NotFound`, `Conflict`, ...).
    pub reason: &'static str,
    /// The one-line message a user reads.
    pub message: String,
    /// `details` of the Status: the object's name, group and kind, and field causes.
    pub details: Option<Value>,
}

/// Result of API handlers.
pub type ApiResult<T> = Result<T, ApiError>;

// === impl ApiError ===

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, group: &str, kind: &str, name: &str) -> ApiError {
        self.details = Some(json!({"name": name, "group": group, "kind": kind}));
        self
    }

    /// 400: the request makes no sense.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    /// 401: no valid token.
    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    /// 404 for a path that names nothing.
    pub fn no_route(path: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    /// 404 for an object.
    pub fn not_found(group: &str, plural: &str, name: &str) -> ApiError {
        let gr = if group.is_empty() {
            plural.to_string()
        } else {
            format!("{plural}.{group}")
        };
        ApiError::new(404, "NotFound", format!("{gr} \"{name}\" not found"))
            .with_details(group, plural, name)
    }

    /// 409: the object exists already.
    pub fn already_exists(group: &str, plural: &str, name: &str) -> ApiError {
        let gr = if group.is_empty() {
            plural.to_string()
        } else {
            format!("{plural}.{group}")
        };
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{gr} \"{name}\" already exists"),
        )
        .with_details(group, plural, name)
    }

    /// 409: the object changed since the caller read it.
    pub fn conflict(group: &str, plural: &str, name: &str) -> ApiError {
        let gr = if group.is_empty() {
            plural.to_string()
        } else {
            format!("{plural}.{group}")
        };
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {gr} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again"
            ),
        )
        .with_details(group, plural, name)
    }

    /// 422: fields are invalid; every cause is listed.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> ApiError {
        let summary = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect::<Vec<_>>()
            .join(", ");
        let qualified = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let mut err = ApiError::new(
            422,
            "Invalid",
            format!("{qualified} \"{name}\" is invalid: {summary}"),
        );
        err.details = Some(json!({
            "name": name,
            "group": group,
            "kind": kind,
            "causes": causes.iter().map(|c| json!({
                "reason": "FieldValueInvalid",
                "message": c.message,
                "field": c.field,
            })).collect::<Vec<_>>(),
        }));
        err
    }

    /// 403: not allowed in this state.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(403, "Forbidden", message)
    }

    /// 403 for a request authorization refused, worded as Kubernetes words it:
    /// `virtualmachines.keel.dev "web" is forbidden: User "alice" cannot ...`.
    pub fn forbidden_for(group: &str, resource: &str, name: &str, why: &str) -> ApiError {
        let qualified = if group.is_empty() {
            resource.to_string()
        } else {
            format!("{resource}.{group}")
        };
        let message = if name.is_empty() {
            format!("{qualified} is forbidden: {why}")
        } else {
            format!("{qualified} {name:?} is forbidden: {why}")
        };
        ApiError::new(403, "Forbidden", message).with_details(group, resource, name)
    }

    /// 405: the verb does not apply here.
    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        ApiError::new(405, "MethodNotAllowed", message)
    }

    /// 410: the revision asked for was compacted.
    pub fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    /// 413: the body is too big.
    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(413, "RequestEntityTooLarge", message)
    }

    /// 415: a content type the server does not take.
    pub fn unsupported_media_type(message: impl Into<String>) -> ApiError {
        ApiError::new(415, "UnsupportedMediaType", message)
    }

    /// 406: no representation the client accepts.
    pub fn not_acceptable(message: impl Into<String>) -> ApiError {
        ApiError::new(406, "NotAcceptable", message)
    }

    /// 500: the server failed.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, "InternalError", message)
    }

    /// The Kubernetes `Status` object of this error.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, axum::Json(self.status())).into_response()
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> ApiError {
        match &e {
            ClusterError::Compacted { .. } => {
                ApiError::expired(format!("too old resource version: {e}"))
            }
            ClusterError::FutureRevision { .. } => {
                ApiError::new(504, "Timeout", format!("Too large resource version: {e}"))
            }
            ClusterError::InvalidRequest { .. } => ApiError::bad_request(e.to_string()),
            ClusterError::NoLeader { .. }
            | ClusterError::NotLeader { .. }
            | ClusterError::Unreachable { .. }
            | ClusterError::ShuttingDown => ApiError::new(503, "ServiceUnavailable", e.to_string()),
            ClusterError::Timeout { .. } | ClusterError::Interrupted { .. } => {
                ApiError::new(504, "Timeout", e.to_string())
            }
            _ => ApiError::internal(e.to_string()),
        }
    }
}
