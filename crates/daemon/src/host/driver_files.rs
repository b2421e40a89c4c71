//! Lists the driver root for [`gpu_slicer_core::driver_files`], which
//! chooses the libraries, binaries, firmware and sockets the CDI spec
//! mounts. Blocking (reads folders): called from discovery, which runs off
//! the async runtime.
//!
//! Paths are kept as they are under the driver root (the container sees
//! the same path); symbolic links are followed inside the root only, so a
//! driver root mounted at `/driver-root` whose `libcuda.so.1` points to the
//! absolute `/usr/lib/...` resolves to `/driver-root/usr/lib/...`.

use std::collections::HashSet;
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};

use gpu_slicer_core::driver_files::{
    DriverFiles, Entry, EntryKind, SOCKETS, folders_to_list, select,
};

/// Entries read from one folder at most: a library folder holds hundreds;
/// the bound keeps a pathological one from stalling discovery.
const MAX_ENTRIES_PER_FOLDER: usize = 20_000;
/// Links followed from one entry at most (the loader's own limit is
/// similar; a loop ends here).
const MAX_LINK_HOPS: usize = 8;

/// The driver files under `root` (this process's view of the driver root)
/// for driver `version`.
pub fn discover(root: &Path, version: &str) -> DriverFiles {
    let mut entries = Vec::new();
    // On a merged-/usr system `/lib` leads to `/usr/lib`: list each real
    // folder once, under the first name it was met by.
    let mut seen: HashSet<PathBuf> = HashSet::new();
    for folder in folders_to_list(version) {
        let dir = under(root, &folder);
        let Ok(real) = dir.canonicalize() else {
            continue;
        };
        if !seen.insert(real) {
            continue;
        }
        let Ok(read) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in read.flatten().take(MAX_ENTRIES_PER_FOLDER) {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let path = format!("{folder}/{name}");
            if let Some(kind) = classify(root, &path) {
                entries.push(Entry { path, kind });
            }
        }
    }
    for socket in SOCKETS {
        if let Some(kind @ EntryKind::Socket) = classify(root, socket) {
            entries.push(Entry {
                path: socket.to_string(),
                kind,
            });
        }
    }
    // Directory order is the file system's: sort so the spec is stable.
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    select(version, &entries)
}

/// `path` (absolute, under the root) in this process's view.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn classify(root: &Path, path: &str) -> Option<EntryKind> {
    let kind = std::fs::symlink_metadata(under(root, path))
        .ok()?
        .file_type();
    if kind.is_socket() {
        Some(EntryKind::Socket)
    } else if kind.is_file() {
        Some(EntryKind::File)
    } else if kind.is_symlink() {
        resolve(root, path).map(EntryKind::Link)
    } else {
        None
    }
}

/// The regular file a link leads to, as a path under the root; `None` for
/// a dangling link, a loop, or a link to something else.
fn resolve(root: &Path, path: &str) -> Option<String> {
    let mut current = path.to_string();
    for _ in 0..MAX_LINK_HOPS {
        let target = std::fs::read_link(under(root, &current)).ok()?;
        let target = target.to_str()?;
        let joined = if target.starts_with('/') {
            target.to_string()
        } else {
            let dir = current.rsplit_once('/').map_or("", |(d, _)| d);
            format!("{dir}/{target}")
        };
        current = normalize(&joined);
        let kind = std::fs::symlink_metadata(under(root, &current))
            .ok()?
            .file_type();
        if kind.is_file() {
            return Some(current);
        }
        if !kind.is_symlink() {
            return None;
        }
    }
    None
}

/// `a/./b/../c` → `/a/c`, never above the root.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpu_slicer_core::driver_files::FileKind;
    use std::os::unix::fs::symlink;

    const V: &str = "580.159.04";

    #[test]
    fn finds_libraries_links_binaries_firmware_and_sockets_inside_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let lib = root.join("usr/lib/x86_64-linux-gnu");
        std::fs::create_dir_all(&lib).expect("mkdir");
        std::fs::write(lib.join(format!("libcuda.so.{V}")), b"elf").expect("write");
        // Relative, as ldconfig makes them, and absolute (resolved in the root).
        symlink(format!("libcuda.so.{V}"), lib.join("libcuda.so.1")).expect("link");
        symlink(
            format!("/usr/lib/x86_64-linux-gnu/libcuda.so.{V}"),
            lib.join("libcuda.so"),
        )
        .expect("link");
        symlink("missing.so", lib.join("libdangling.so.1")).expect("link");
        symlink("libloop.so.1", lib.join("libloop.so.1")).expect("link");
        // Merged /usr: /lib leads to usr/lib, listed once.
        symlink("usr/lib", root.join("lib")).expect("link");
        std::fs::create_dir_all(root.join("usr/bin")).expect("mkdir");
        std::fs::write(root.join("usr/bin/nvidia-smi"), b"elf").expect("write");
        let firmware = root.join(format!("usr/lib/firmware/nvidia/{V}"));
        std::fs::create_dir_all(&firmware).expect("mkdir");
        std::fs::write(firmware.join("gsp_gh100.bin"), b"fw").expect("write");
        std::fs::create_dir_all(root.join("run/nvidia-persistenced")).expect("mkdir");
        let _socket =
            std::os::unix::net::UnixListener::bind(root.join("run/nvidia-persistenced/socket"))
                .expect("socket");

        let files = discover(root, V);
        let got: Vec<(&str, &str, FileKind)> = files
            .mounts
            .iter()
            .map(|m| (m.container_path.as_str(), m.source.as_str(), m.kind))
            .collect();
        let cuda = format!("/usr/lib/x86_64-linux-gnu/libcuda.so.{V}");
        let fw = format!("/lib/firmware/nvidia/{V}/gsp_gh100.bin");
        assert_eq!(
            got,
            vec![
                (fw.as_str(), fw.as_str(), FileKind::Firmware),
                (
                    "/run/nvidia-persistenced/socket",
                    "/run/nvidia-persistenced/socket",
                    FileKind::Socket
                ),
                (
                    "/usr/bin/nvidia-smi",
                    "/usr/bin/nvidia-smi",
                    FileKind::Binary
                ),
                (
                    "/usr/lib/x86_64-linux-gnu/libcuda.so",
                    cuda.as_str(),
                    FileKind::Library
                ),
                (
                    "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
                    cuda.as_str(),
                    FileKind::Library
                ),
                (cuda.as_str(), cuda.as_str(), FileKind::Library),
                (
                    "/usr/local/nvidia/lib64/libcuda.so",
                    cuda.as_str(),
                    FileKind::Library
                ),
                (
                    "/usr/local/nvidia/lib64/libcuda.so.1",
                    cuda.as_str(),
                    FileKind::Library
                ),
                (
                    "/usr/local/nvidia/lib64/libcuda.so.580.159.04",
                    cuda.as_str(),
                    FileKind::Library
                ),
            ]
        );
        // Every source exists under the root.
        for m in &files.mounts {
            assert!(under(root, &m.source).exists(), "{}", m.source);
        }
    }

    #[test]
    fn paths_are_normalized_inside_the_root() {
        assert_eq!(
            normalize("/usr/lib/../lib64/./libx.so"),
            "/usr/lib64/libx.so"
        );
        assert_eq!(normalize("/../../etc/passwd"), "/etc/passwd");
    }
}
