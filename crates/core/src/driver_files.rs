//! The driver's user-space files a container needs beside its device nodes
//! (`libcuda.so.1`, `libnvidia-ml.so.1`, `nvidia-smi`, GSP firmware, the
//! persistenced socket), chosen from a listing of the driver root, so that
//! the CDI spec alone lets a CUDA image use its GPU without NVIDIA's
//! container toolkit on the node.
//!
//! What is chosen follows NVIDIA's toolkit (`nvidia-ctk cdi generate`, its
//! `pkg/nvcdi` and `internal/discover`): every library whose name ends in
//! `.so.<driver version>` in the usual library folders, the driver's
//! binaries, `nvidia/<version>/gsp*.bin` firmware, and the persistenced and
//! fabric-manager sockets, each mounted read-only at the path it has under
//! the driver root.
//!
//! Where the toolkit adds hooks (programs the runtime runs in the
//! container: `create-symlinks`, `update-ldcache`), this spec has none,
//! since a hook needs a program on the node, which is the toolkit. Instead:
//! - the soname links the node already has (`libcuda.so.1 →
//!   libcuda.so.580.159.04`, found as symlinks beside the libraries) are
//!   mounted too, each as the file it points to;
//! - every library and link is also mounted in [`CUDA_IMAGE_LIB_DIR`],
//!   which NVIDIA's CUDA images name in `LD_LIBRARY_PATH` (and GKE's
//!   driver installs use), so that the loader finds them whatever the
//!   image's distribution and linker cache.
//!
//! An image whose loader looks neither in the host's library folder (its
//! default search path or its `ld.so.cache`) nor in `CUDA_IMAGE_LIB_DIR`
//! does not find `libcuda.so.1`: it needs `LD_LIBRARY_PATH` set, or the
//! toolkit. Pure: the daemon lists the files.

/// Where NVIDIA's toolkit looks for driver libraries under the driver root.
pub const LIBRARY_DIRS: &[&str] = &[
    "/usr/lib64",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu/nvidia/current",
    "/usr/lib/aarch64-linux-gnu/nvidia/current",
    "/lib64",
    "/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/lib/x86_64-linux-gnu/nvidia/current",
    "/lib/aarch64-linux-gnu/nvidia/current",
    // NVIDIA's runfile into a prefix, and GKE's layout.
    "/usr/local/nvidia/lib64",
];

/// Where the driver's binaries are (the MPS control program is found there
/// too).
pub const BIN_DIRS: &[&str] = &[
    "/usr/bin",
    "/usr/local/nvidia/bin",
    "/bin",
    "/usr/local/bin",
    "/usr/sbin",
];

/// The binaries NVIDIA's toolkit gives a container.
pub const BINARIES: &[&str] = &[
    "nvidia-smi",
    "nvidia-debugdump",
    "nvidia-persistenced",
    "nvidia-cuda-mps-control",
    "nvidia-cuda-mps-server",
    "nvidia-imex",
    "nvidia-imex-ctl",
];

/// Firmware folders; the GSP firmware is `<dir>/nvidia/<version>/gsp*.bin`.
pub const FIRMWARE_DIRS: &[&str] = &["/lib/firmware", "/usr/lib/firmware"];

/// IPC sockets a container may talk to, when present.
pub const SOCKETS: &[&str] = &[
    "/run/nvidia-persistenced/socket",
    "/var/run/nvidia-persistenced/socket",
    "/run/nvidia-fabricmanager/socket",
    "/var/run/nvidia-fabricmanager/socket",
];

/// The library folder of NVIDIA's CUDA images (`LD_LIBRARY_PATH`).
pub const CUDA_IMAGE_LIB_DIR: &str = "/usr/local/nvidia/lib64";

/// The toolkit's mount options for files, and for sockets.
pub const FILE_OPTIONS: &[&str] = &["ro", "nosuid", "nodev", "rbind", "rprivate"];
pub const SOCKET_OPTIONS: &[&str] = &["nosuid", "nodev", "rbind", "rprivate", "noexec"];

/// One entry of the driver root, as the daemon found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path under the driver root (`/usr/lib/x86_64-linux-gnu/libcuda.so.1`).
    pub path: String,
    pub kind: EntryKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    /// A symbolic link and the regular file it leads to, under the root.
    Link(String),
    Socket,
}

/// What a mount is, for its options and for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FileKind {
    Library,
    Binary,
    Firmware,
    Socket,
}

/// One file given to containers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DriverMount {
    pub container_path: String,
    /// The file under the driver root (the host path is the driver root
    /// joined with it).
    pub source: String,
    pub kind: FileKind,
}

/// The driver files of a node; empty when the driver version is unknown
/// (the simulated backend) or nothing was found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverFiles {
    pub version: String,
    /// Sorted by container path, one per container path.
    pub mounts: Vec<DriverMount>,
}

impl DriverFiles {
    /// Whether a container gets `libcuda.so.1` (the CUDA driver API).
    pub fn has_libcuda(&self) -> bool {
        self.mounts
            .iter()
            .any(|m| m.container_path.ends_with("/libcuda.so.1"))
    }
}

fn name_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn dir_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(d, _)| d)
}

/// Chooses the files for driver `version` from `entries`.
pub fn select(version: &str, entries: &[Entry]) -> DriverFiles {
    let mut mounts: Vec<DriverMount> = Vec::new();
    let mut add = |container_path: String, source: &str, kind: FileKind| {
        if !mounts.iter().any(|m| m.container_path == container_path) {
            mounts.push(DriverMount {
                container_path,
                source: source.to_string(),
                kind,
            });
        }
    };
    let suffix = format!(".so.{version}");
    let is_library =
        |path: &str| LIBRARY_DIRS.contains(&dir_of(path)) && name_of(path).ends_with(&suffix);
    // The versioned libraries first, then the links that lead to them.
    for entry in entries {
        if entry.kind == EntryKind::File && is_library(&entry.path) {
            add(entry.path.clone(), &entry.path, FileKind::Library);
            add(
                format!("{CUDA_IMAGE_LIB_DIR}/{}", name_of(&entry.path)),
                &entry.path,
                FileKind::Library,
            );
        }
    }
    for entry in entries {
        if let EntryKind::Link(target) = &entry.kind
            && LIBRARY_DIRS.contains(&dir_of(&entry.path))
            && is_library(target)
            && entries
                .iter()
                .any(|e| e.path == *target && e.kind == EntryKind::File)
        {
            add(entry.path.clone(), target, FileKind::Library);
            add(
                format!("{CUDA_IMAGE_LIB_DIR}/{}", name_of(&entry.path)),
                target,
                FileKind::Library,
            );
        }
    }
    // Binaries: the first folder that has one wins, as on PATH.
    for binary in BINARIES {
        let found = BIN_DIRS.iter().find_map(|dir| {
            let path = format!("{dir}/{binary}");
            entries.iter().find_map(|e| match &e.kind {
                _ if e.path != path => None,
                EntryKind::File => Some((path.clone(), path.clone())),
                EntryKind::Link(target) => Some((path.clone(), target.clone())),
                EntryKind::Socket => None,
            })
        });
        if let Some((path, source)) = found {
            add(path, &source, FileKind::Binary);
        }
    }
    for entry in entries {
        let name = name_of(&entry.path);
        let in_firmware = FIRMWARE_DIRS
            .iter()
            .any(|dir| dir_of(&entry.path) == format!("{dir}/nvidia/{version}"));
        if entry.kind == EntryKind::File
            && in_firmware
            && name.starts_with("gsp")
            && name.ends_with(".bin")
        {
            add(entry.path.clone(), &entry.path, FileKind::Firmware);
        }
        if entry.kind == EntryKind::Socket && SOCKETS.contains(&entry.path.as_str()) {
            add(entry.path.clone(), &entry.path, FileKind::Socket);
        }
    }
    mounts.sort();
    DriverFiles {
        version: version.to_string(),
        mounts,
    }
}

/// The folders the daemon lists for [`select`], in the toolkit's order
/// (where two are one folder, as `/lib` and `/usr/lib` on a merged-`/usr`
/// system, the first name is kept): every library and binary folder, and
/// the firmware folder of `version`.
pub fn folders_to_list(version: &str) -> Vec<String> {
    let mut folders: Vec<String> = Vec::new();
    let all = LIBRARY_DIRS
        .iter()
        .chain(BIN_DIRS)
        .map(|d| d.to_string())
        .chain(
            FIRMWARE_DIRS
                .iter()
                .map(|d| format!("{d}/nvidia/{version}")),
        );
    for folder in all {
        if !folders.contains(&folder) {
            folders.push(folder);
        }
    }
    folders
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: &str = "580.159.04";

    fn file(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File,
        }
    }

    fn link(path: &str, target: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Link(target.into()),
        }
    }

    fn chosen(files: &DriverFiles) -> Vec<(String, String, FileKind)> {
        files
            .mounts
            .iter()
            .map(|m| (m.container_path.clone(), m.source.clone(), m.kind))
            .collect()
    }

    #[test]
    fn libraries_of_the_version_their_soname_links_binaries_firmware_and_sockets() {
        let lib = "/usr/lib/x86_64-linux-gnu";
        let entries = vec![
            file(&format!("{lib}/libcuda.so.{V}")),
            link(
                &format!("{lib}/libcuda.so.1"),
                &format!("{lib}/libcuda.so.{V}"),
            ),
            link(
                &format!("{lib}/libcuda.so"),
                &format!("{lib}/libcuda.so.{V}"),
            ),
            file(&format!("{lib}/libnvidia-ml.so.{V}")),
            link(
                &format!("{lib}/libnvidia-ml.so.1"),
                &format!("{lib}/libnvidia-ml.so.{V}"),
            ),
            // Another driver's leftovers and unrelated libraries stay out.
            file(&format!("{lib}/libcuda.so.535.54.03")),
            file(&format!("{lib}/libc.so.6")),
            link(&format!("{lib}/libfoo.so.1"), &format!("{lib}/libc.so.6")),
            // Not a library folder.
            file(&format!("/opt/lib/libcuda.so.{V}")),
            link("/usr/bin/nvidia-smi", "/usr/lib/nvidia/nvidia-smi"),
            file("/usr/local/nvidia/bin/nvidia-smi"),
            file("/usr/bin/nvidia-cuda-mps-control"),
            file("/usr/bin/ls"),
            file(&format!("/lib/firmware/nvidia/{V}/gsp_ga10x.bin")),
            file(&format!("/lib/firmware/nvidia/{V}/README")),
            file("/lib/firmware/nvidia/535.54.03/gsp_ga10x.bin"),
            Entry {
                path: "/run/nvidia-persistenced/socket".into(),
                kind: EntryKind::Socket,
            },
        ];
        let files = select(V, &entries);
        let cuda = format!("{lib}/libcuda.so.{V}");
        let nvml = format!("{lib}/libnvidia-ml.so.{V}");
        use FileKind::*;
        assert_eq!(
            chosen(&files),
            vec![
                (
                    format!("/lib/firmware/nvidia/{V}/gsp_ga10x.bin"),
                    format!("/lib/firmware/nvidia/{V}/gsp_ga10x.bin"),
                    Firmware
                ),
                (
                    "/run/nvidia-persistenced/socket".into(),
                    "/run/nvidia-persistenced/socket".into(),
                    Socket
                ),
                (
                    "/usr/bin/nvidia-cuda-mps-control".into(),
                    "/usr/bin/nvidia-cuda-mps-control".into(),
                    Binary
                ),
                (
                    "/usr/bin/nvidia-smi".into(),
                    "/usr/lib/nvidia/nvidia-smi".into(),
                    Binary
                ),
                (format!("{lib}/libcuda.so"), cuda.clone(), Library),
                (format!("{lib}/libcuda.so.1"), cuda.clone(), Library),
                (cuda.clone(), cuda.clone(), Library),
                (format!("{lib}/libnvidia-ml.so.1"), nvml.clone(), Library),
                (nvml.clone(), nvml.clone(), Library),
                (
                    "/usr/local/nvidia/lib64/libcuda.so".into(),
                    cuda.clone(),
                    Library
                ),
                (
                    "/usr/local/nvidia/lib64/libcuda.so.1".into(),
                    cuda.clone(),
                    Library
                ),
                (
                    format!("/usr/local/nvidia/lib64/libcuda.so.{V}"),
                    cuda.clone(),
                    Library
                ),
                (
                    "/usr/local/nvidia/lib64/libnvidia-ml.so.1".into(),
                    nvml.clone(),
                    Library
                ),
                (
                    format!("/usr/local/nvidia/lib64/libnvidia-ml.so.{V}"),
                    nvml.clone(),
                    Library
                ),
            ]
        );
        assert!(files.has_libcuda());
        assert!(!select(V, &[]).has_libcuda());
    }

    #[test]
    fn a_library_already_in_the_cuda_image_folder_is_mounted_once() {
        let entries = vec![
            file(&format!("/usr/local/nvidia/lib64/libcuda.so.{V}")),
            link(
                "/usr/local/nvidia/lib64/libcuda.so.1",
                &format!("/usr/local/nvidia/lib64/libcuda.so.{V}"),
            ),
        ];
        let files = select(V, &entries);
        assert_eq!(files.mounts.len(), 2, "{:?}", files.mounts);
    }

    #[test]
    fn the_folders_listed_include_the_versions_firmware() {
        let folders = folders_to_list(V);
        assert!(folders.contains(&format!("/lib/firmware/nvidia/{V}")));
        assert!(folders.contains(&"/usr/lib/x86_64-linux-gnu".to_string()));
        assert!(folders.contains(&"/usr/bin".to_string()));
    }
}
