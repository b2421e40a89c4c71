//! The one way gpu-slicer writes a file that another program reads (the CDI
//! spec read by the container runtime, the feature file read by NFD):
//! atomically, so a reader sees the old file or the new one, never half.
//!
//! The staged file is created by `tempfile` in the target directory with
//! `O_CREAT | O_EXCL` under an unpredictable name, so a symlink planted in
//! the directory is never followed and never overwritten through; its mode
//! is set explicitly (not left to the umask); it is flushed to disk before
//! the rename, so a crash leaves either file whole.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Mode of the files gpu-slicer writes for others to read: world-readable,
/// writable by the owner only (NVIDIA writes its CDI spec 0644 too).
pub const READABLE_FILE_MODE: u32 = 0o644;
/// Mode of a directory gpu-slicer creates to hold such files.
pub const READABLE_DIR_MODE: u32 = 0o755;

/// Why a file could not be written; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot stage a new {path}: {source}")]
    Stage {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot replace {path}: {source}")]
    Replace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Replaces `path` with `contents`, atomically, with mode `mode`; creates
/// the parent directory (mode [`READABLE_DIR_MODE`]) when it is missing.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), WriteError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(READABLE_DIR_MODE)
            .create(dir)
            .map_err(|source| WriteError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    let stage = |source| WriteError::Stage {
        path: path.to_path_buf(),
        source,
    };
    let mut staged = tempfile::Builder::new()
        .prefix(".gpu-slicer-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(stage)?;
    staged
        .as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(stage)?;
    staged.write_all(contents).map_err(stage)?;
    staged.as_file().sync_all().map_err(stage)?;
    staged.persist(path).map_err(|e| WriteError::Replace {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// Identity of a socket file (device, inode): tells the socket a server
/// bound apart from one bound later at the same path.
pub fn socket_identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_with_the_given_mode_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/spec.json");
        write_atomically(&path, b"one", READABLE_FILE_MODE).unwrap();
        write_atomically(&path, b"two", READABLE_FILE_MODE).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode & !0o022, 0o755 & !0o022);
        let entries: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, vec![std::ffi::OsString::from("spec.json")]);
    }

    #[test]
    fn a_planted_symlink_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let path = dir.path().join("labels");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write_atomically(&path, b"new", READABLE_FILE_MODE).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert!(
            !std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
    }
}
