//! Validation, path and formatting helpers mirroring kubelet (Go) behaviour.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use tonic::Code;

use crate::{CHECKPOINT_FILE, SimError};

/// The kubelet's extended-resource-name rule (`IsExtendedResourceName`).
pub fn is_extended_resource_name(name: &str) -> bool {
    if !name.contains('/') || name.contains("kubernetes.io/") || name.starts_with("requests.") {
        return false;
    }
    is_qualified_name(&format!("requests.{name}"))
}

fn is_qualified_name(s: &str) -> bool {
    let mut parts = s.split('/');
    let (prefix, name) = match (parts.next(), parts.next(), parts.next()) {
        (Some(n), None, None) => (None, n),
        (Some(p), Some(n), None) => (Some(p), n),
        _ => return false,
    };
    if let Some(p) = prefix
        && (p.is_empty() || p.len() > 253 || !is_dns1123_subdomain(p))
    {
        return false;
    }
    is_qualified_name_part(name)
}

fn is_dns1123_subdomain(s: &str) -> bool {
    s.split('.').all(|label| {
        let b = label.as_bytes();
        let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        !b.is_empty()
            && b.first().is_some_and(alnum)
            && b.last().is_some_and(alnum)
            && b.iter().all(|c| alnum(c) || *c == b'-')
    })
}

fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Go's `filepath.Join(dir, endpoint)`: plain concatenation then lexical cleaning (an
/// absolute endpoint is appended, `..` may escape the directory).
pub(crate) fn join_clean(dir: &Path, endpoint: &str) -> PathBuf {
    let dir = dir.to_string_lossy();
    let joined = if endpoint.is_empty() {
        dir.to_string()
    } else {
        format!("{dir}/{endpoint}")
    };
    PathBuf::from(clean(&joined))
}

/// Go's `path.Clean` for '/'-separated paths.
fn clean(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    let body = out.join("/");
    match (rooted, body.is_empty()) {
        (true, _) => format!("/{body}"),
        (false, true) => ".".to_string(),
        (false, false) => body,
    }
}

/// A gRPC status formatted as grpc-go's `status.Error(...).Error()`:
/// `rpc error: code = <Code> desc = <message>`.
pub fn grpc_error_string(status: &tonic::Status) -> String {
    format!(
        "rpc error: code = {} desc = {}",
        go_code_name(status.code()),
        status.message()
    )
}

fn go_code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Random order, like Go's set iteration (`sets.Set.UnsortedList`).
pub(crate) fn shuffled<I: IntoIterator<Item = String>>(ids: I) -> Vec<String> {
    let state = RandomState::new();
    let mut v: Vec<(u64, String)> = ids
        .into_iter()
        .map(|id| (state.hash_one(&id), id))
        .collect();
    v.sort();
    v.into_iter().map(|(_, id)| id).collect()
}

/// Deletes every top-level socket in `dir` except the checkpoint file; does not recurse.
pub(crate) fn clean_sockets(dir: &Path) -> Result<Vec<PathBuf>, SimError> {
    let io = |op, source| SimError::Io {
        op,
        path: dir.to_path_buf(),
        source,
    };
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io("read_dir", e))? {
        let entry = entry.map_err(|e| io("read_dir", e))?;
        if entry.file_name() == CHECKPOINT_FILE {
            continue;
        }
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_socket() {
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => removed.push(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(SimError::Io {
                        op: "remove",
                        path,
                        source,
                    });
                }
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names() {
        for ok in [
            "nvidia.com/gpu",
            "nvidia.com/mig-1g.10gb",
            "nvidia.com/gpu.shared",
        ] {
            assert!(is_extended_resource_name(ok), "{ok}");
        }
        for bad in [
            "gpu",
            "kubernetes.io/gpu",
            "foo.kubernetes.io/x",
            "Vendor.com/gpu",
            "requests.nvidia.com/gpu",
            "a/b/c",
            "nvidia.com/",
            "nvidia.com/-x",
        ] {
            assert!(!is_extended_resource_name(bad), "{bad}");
        }
    }

    #[test]
    fn endpoint_join() {
        let d = Path::new("/var/lib/kubelet/device-plugins/");
        assert_eq!(
            join_clean(d, "x.sock"),
            PathBuf::from("/var/lib/kubelet/device-plugins/x.sock")
        );
        assert_eq!(
            join_clean(d, "/var/lib/kubelet/device-plugins/x.sock"),
            PathBuf::from("/var/lib/kubelet/device-plugins/var/lib/kubelet/device-plugins/x.sock")
        );
        assert_eq!(
            join_clean(d, "../x.sock"),
            PathBuf::from("/var/lib/kubelet/x.sock")
        );
        assert_eq!(
            join_clean(d, ""),
            PathBuf::from("/var/lib/kubelet/device-plugins")
        );
        assert_eq!(clean("a/../../b"), "../b");
    }

    #[test]
    fn grpc_strings() {
        let s = tonic::Status::invalid_argument("bad ids");
        assert_eq!(
            grpc_error_string(&s),
            "rpc error: code = InvalidArgument desc = bad ids"
        );
        assert_eq!(
            grpc_error_string(&tonic::Status::cancelled("x")),
            "rpc error: code = Canceled desc = x"
        );
    }
}
