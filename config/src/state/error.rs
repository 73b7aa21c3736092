//! Errors of the cluster state, classified so callers know whether and when to retry.

use std::fmt;
use std::path::PathBuf;

use crate::model::ObjectRef;

/// Errors from a cluster-state backend.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[cfg(feature = "io")]
    #[error("kubernetes API: {0}")]
    Kube(#[from] ::kube::Error),
    /// A Kubernetes failure about something other than one object: the client configuration
    /// (`what` names the source tried) or a whole resource (`metallb.io/v1beta1/ipaddresspools`).
    #[error("kubernetes API: {what}: {message}")]
    KubeApi { what: String, message: String },
    /// A failure about one object. `status` keeps the API server's HTTP status code (404,
    /// 409, 403, 422, 500, ...) so callers can tell a permanent failure from a passing one.
    #[error("{object}: {message}")]
    Object {
        object: ObjectRef,
        message: String,
        status: Option<u16>,
    },
    #[cfg(feature = "io")]
    #[error("watching the state directory: {0}")]
    Watch(#[from] notify::Error),
    /// A lock another process holds (see `ClusterState::lock`).
    #[error("{}: {holder}", path.display())]
    Locked { path: PathBuf, holder: String },
}

/// What kind of failure a [`StateError`] is, which decides whether and when to retry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorClass {
    /// The object is gone: nothing to retry; its deletion arrives as a change.
    NotFound,
    /// Someone else changed the object first: retry soon, on the latest state.
    Conflict,
    /// Not allowed (RBAC, file permissions): retry slowly, it needs an operator.
    Forbidden,
    /// Passing trouble (timeouts, 5xx, 429, a full disk, a watch error): retry with backoff.
    Transient,
    /// The request itself is wrong (400, 422, a manifest that does not parse): retrying the
    /// same request cannot help; the next change of the object replans it.
    Invalid,
}

impl ErrorClass {
    /// The class of an HTTP status code from the API server.
    pub fn of_status(code: u16) -> ErrorClass {
        match code {
            404 => ErrorClass::NotFound,
            409 => ErrorClass::Conflict,
            401 | 403 => ErrorClass::Forbidden,
            400 | 405 | 406 | 413 | 415 | 422 => ErrorClass::Invalid,
            _ => ErrorClass::Transient,
        }
    }

    /// The class of an I/O error of the state directory.
    pub fn of_io(e: &std::io::Error) -> ErrorClass {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::NotFound => ErrorClass::NotFound,
            K::PermissionDenied | K::ReadOnlyFilesystem => ErrorClass::Forbidden,
            K::InvalidData | K::InvalidInput => ErrorClass::Invalid,
            _ => ErrorClass::Transient,
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorClass::NotFound => "not found",
            ErrorClass::Conflict => "conflict",
            ErrorClass::Forbidden => "forbidden",
            ErrorClass::Transient => "transient",
            ErrorClass::Invalid => "invalid",
        })
    }
}

impl StateError {
    /// What kind of failure this is (see [`ErrorClass`]).
    pub fn class(&self) -> ErrorClass {
        match self {
            StateError::Io { source, .. } => ErrorClass::of_io(source),
            StateError::Manifest { .. } => ErrorClass::Invalid,
            #[cfg(feature = "io")]
            StateError::Kube(::kube::Error::Api(status)) => ErrorClass::of_status(status.code),
            #[cfg(feature = "io")]
            StateError::Kube(_) | StateError::Watch(_) => ErrorClass::Transient,
            StateError::KubeApi { .. } => ErrorClass::Transient,
            StateError::Locked { .. } => ErrorClass::Conflict,
            StateError::Object {
                status: Some(code), ..
            } => ErrorClass::of_status(*code),
            StateError::Object { status: None, .. } => ErrorClass::Invalid,
        }
    }

    /// The API server's HTTP status code, when the failure came from one.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            #[cfg(feature = "io")]
            StateError::Kube(::kube::Error::Api(status)) => Some(status.code),
            StateError::Object { status, .. } => *status,
            _ => None,
        }
    }
}
