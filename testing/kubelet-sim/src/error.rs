//! Error types.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::types::Capacity;

/// Errors of the simulator itself (not of the plugin under test).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A filesystem or socket operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A Unix socket path exceeds the 107-byte limit.
    #[error("socket path {path} is {len} bytes long; Unix socket paths are limited to 107 bytes")]
    PathTooLong {
        /// The offending path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// A `wait_*` call timed out.
    #[error("timed out after {timeout:?} waiting for {waiting_for}; node status: {node_status:?}")]
    Timeout {
        /// The timeout that elapsed.
        timeout: Duration,
        /// What was awaited.
        waiting_for: &'static str,
        /// Node status at the time of the timeout.
        node_status: BTreeMap<String, Capacity>,
    },
}

/// A pod rejection, as the kubelet would report it in the pod status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// Device-manager or plugin RPC failure: reason `UnexpectedAdmissionError`.
    /// The payload is the inner error text (`<err>`).
    #[error("Pod was rejected: Allocate failed due to {0}, which is unexpected")]
    Unexpected(String),
    /// The pod requests more of a resource than the node's allocatable minus the requests of
    /// admitted pods: reason `OutOf<resource>`.
    #[error(
        "Pod was rejected: Node didn't have enough resource: {resource}, requested: {requested}, used: {used}, capacity: {capacity}"
    )]
    OutOfResource {
        /// The resource name.
        resource: String,
        /// The pod's effective request.
        requested: u64,
        /// Sum of the requests of already admitted pods.
        used: u64,
        /// Node allocatable.
        capacity: u64,
    },
}

impl AdmissionError {
    /// The pod status reason: `UnexpectedAdmissionError` or `OutOf<resource>`.
    pub fn reason(&self) -> String {
        match self {
            AdmissionError::Unexpected(_) => "UnexpectedAdmissionError".to_string(),
            AdmissionError::OutOfResource { resource, .. } => format!("OutOf{resource}"),
        }
    }

    /// The inner device-manager error text for [`AdmissionError::Unexpected`].
    pub fn inner(&self) -> Option<&str> {
        match self {
            AdmissionError::Unexpected(e) => Some(e),
            AdmissionError::OutOfResource { .. } => None,
        }
    }
}

/// A container-start failure (reason `CreateContainerConfigError`; the kubelet retries with
/// backoff). The payload is the kubelet's error text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);
