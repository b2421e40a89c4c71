//! Validation, path and formatting helpers mirroring kubelet (Go) behaviour.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use tonic::Code;

use crate::types::Cleanup;
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

/// The kubelet's start-up clean-up (`CleanupPluginDirectory`): deletes top-level entries of
/// `dir` except the checkpoint file and directories (which are not traversed). Entries that
/// vanish meanwhile are skipped; a failed removal does not stop the others and is returned
/// at the end, as the kubelet aggregates them (and then fails to start). Returns what was
/// deleted.
pub(crate) fn clean_dir(dir: &Path, mode: Cleanup) -> Result<Vec<PathBuf>, SimError> {
    let io = |op, source| SimError::Io {
        op,
        path: dir.to_path_buf(),
        source,
    };
    let mut removed = Vec::new();
    let mut first_error = None;
    for entry in std::fs::read_dir(dir).map_err(|e| io("read_dir", e))? {
        let entry = entry.map_err(|e| io("read_dir", e))?;
        if entry.file_name() == CHECKPOINT_FILE {
            continue;
        }
        let path = entry.path();
        // `os.Lstat`: a symlink is judged (and removed) as itself.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let ft = meta.file_type();
        let delete = match mode {
            Cleanup::NonDirectories => !ft.is_dir(),
            Cleanup::Sockets => ft.is_socket(),
        };
        if !delete {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                tracing::warn!(path = %path.display(), error = %source, "Failed to remove file");
                first_error.get_or_insert(SimError::Io {
                    op: "remove",
                    path,
                    source,
                });
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}

/// Creates `<dir>/kubelet_internal_checkpoint` when it does not exist, with the kubelet's
/// JSON layout and no entries. Its content is not maintained afterwards.
pub(crate) fn ensure_checkpoint(dir: &Path) -> Result<(), SimError> {
    use std::io::Write;
    let path = dir.join(CHECKPOINT_FILE);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path);
    let result = match file {
        Ok(mut f) => f.write_all(EMPTY_CHECKPOINT.as_bytes()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(|source| SimError::Io {
        op: "write checkpoint",
        path,
        source,
    })
}

/// A checkpoint without allocations or registered devices (the checksum is not computed).
pub(crate) const EMPTY_CHECKPOINT: &str =
    r#"{"Data":{"PodDeviceEntries":null,"RegisteredDevices":{}},"Checksum":0}"#;

/// A status received by the kubelet as a client, formatted as grpc-go prints it. tonic
/// reports an over-limit message as `OutOfRange` `Error, decoded message length too large:
/// found N bytes, the limit is: L bytes`; grpc-go as `ResourceExhausted` `grpc: received
/// message larger than max (N vs. L)`. Every other status is formatted unchanged.
pub(crate) fn recv_error_string(status: &tonic::Status) -> String {
    let too_large = (status.code() == Code::OutOfRange)
        .then(|| {
            status
                .message()
                .strip_prefix("Error, decoded message length too large: found ")?
                .split_once(" bytes, the limit is: ")
        })
        .flatten()
        .and_then(|(found, rest)| Some((found, rest.strip_suffix(" bytes")?)));
    match too_large {
        Some((found, limit)) => format!(
            "rpc error: code = ResourceExhausted desc = grpc: received message larger than max ({found} vs. {limit})"
        ),
        None => grpc_error_string(status),
    }
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
    fn over_limit_messages_read_as_grpc_go_prints_them() {
        let s = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes",
        );
        assert_eq!(
            recv_error_string(&s),
            "rpc error: code = ResourceExhausted desc = grpc: received message larger than max (5000000 vs. 4194304)"
        );
        let other = tonic::Status::out_of_range("something else");
        assert_eq!(
            recv_error_string(&other),
            "rpc error: code = OutOfRange desc = something else"
        );
    }

    /// A short directory of its own under the system temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!("ksu-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Fills `d` with one entry of every kind.
    fn populate(d: &Path) {
        std::fs::write(d.join(CHECKPOINT_FILE), "{}").unwrap();
        std::fs::write(d.join("notes.txt"), "x").unwrap();
        drop(std::os::unix::net::UnixListener::bind(d.join("kubelet.sock")).unwrap());
        drop(std::os::unix::net::UnixListener::bind(d.join("plugin.sock")).unwrap());
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/inner.txt"), "x").unwrap();
        drop(std::os::unix::net::UnixListener::bind(d.join("sub/inner.sock")).unwrap());
        std::os::unix::fs::symlink(d.join("sub"), d.join("link-to-dir")).unwrap();
    }

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn cleanup_of_non_directories() {
        let s = Scratch::new("nondir");
        populate(&s.0);
        let mut removed = clean_dir(&s.0, Cleanup::NonDirectories).unwrap();
        removed.sort();
        assert_eq!(
            removed,
            ["kubelet.sock", "link-to-dir", "notes.txt", "plugin.sock"].map(|n| s.0.join(n))
        );
        assert_eq!(names(&s.0), [CHECKPOINT_FILE, "sub"]);
        // Not traversed; the checkpoint keeps its content.
        assert_eq!(names(&s.0.join("sub")), ["inner.sock", "inner.txt"]);
        assert_eq!(
            std::fs::read_to_string(s.0.join(CHECKPOINT_FILE)).unwrap(),
            "{}"
        );
        ensure_checkpoint(&s.0).unwrap();
        assert_eq!(
            std::fs::read_to_string(s.0.join(CHECKPOINT_FILE)).unwrap(),
            "{}",
            "an existing checkpoint is not rewritten"
        );
    }

    #[test]
    fn cleanup_of_sockets_only() {
        let s = Scratch::new("sock");
        populate(&s.0);
        clean_dir(&s.0, Cleanup::Sockets).unwrap();
        assert_eq!(
            names(&s.0),
            [CHECKPOINT_FILE, "link-to-dir", "notes.txt", "sub"]
        );
        assert_eq!(names(&s.0.join("sub")), ["inner.sock", "inner.txt"]);
        std::fs::remove_file(s.0.join(CHECKPOINT_FILE)).unwrap();
        ensure_checkpoint(&s.0).unwrap();
        assert_eq!(
            std::fs::read_to_string(s.0.join(CHECKPOINT_FILE)).unwrap(),
            EMPTY_CHECKPOINT
        );
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
