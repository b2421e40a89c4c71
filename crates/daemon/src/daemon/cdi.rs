//! The CDI specs the daemon writes with a CDI device-list strategy: the
//! GPUs' and MIG devices' spec, and one per optional device class
//! (gdrcopy, gds, mofed) that Allocate names, so that a CDI runtime resolves
//! every name Allocate returns.

use std::path::{Path, PathBuf};

use super::{ApplyError, DEFAULT_CDI_SPEC_DIR, Daemon, Setup};
use crate::host::files::{READABLE_FILE_MODE, write_atomically};

impl Daemon {
    /// With a CDI device-list strategy, writes the spec every name Allocate
    /// returns resolves in: to `--cdi-spec-dir`, by default
    /// [`DEFAULT_CDI_SPEC_DIR`], where container runtimes look.
    pub(super) fn write_cdi_spec(&self, setup: &Setup) -> Result<(), ApplyError> {
        let strategies = &setup.config.flags.plugin.device_list_strategy;
        if !strategies.iter().any(|s| s.is_cdi()) {
            return Ok(());
        }
        for class in gpu_slicer_core::allocate::enabled_classes(&setup.config.flags) {
            if setup.files.classes.of(class).is_empty() {
                tracing::warn!(
                    "{} is enabled, but this node has none of its device nodes: containers get {}=enabled and no \
                     CDI device {}=all (no spec would define it)",
                    class.as_str(),
                    class.env(),
                    gpu_slicer_core::cdi::class_kind(class)
                );
            }
        }
        let dir = self
            .paths
            .cdi_spec_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CDI_SPEC_DIR));
        let driver = &setup.files.driver;
        if !driver.version.is_empty() && !driver.has_libcuda() {
            tracing::warn!(
                "the CDI spec mounts no libcuda.so.1: none of driver {} was found under the driver root {} \
                 (looked in {}); containers get their GPUs' device nodes but not the CUDA driver library. \
                 Mount the host's driver root into this pod and pass --driver-root-ctr-path",
                driver.version,
                setup.config.flags.plugin.container_driver_root,
                gpu_slicer_core::driver_files::LIBRARY_DIRS.join(", ")
            );
        }
        let flags = &setup.config.flags;
        let host_mode = |path: &str| host_node_mode(flags, path);
        let spec = gpu_slicer_core::cdi::spec(
            &setup.inventory,
            &setup.files,
            flags.dev_root(),
            &flags.nvidia_driver_root,
            strategies,
            &host_mode,
        );
        write_spec(&dir, gpu_slicer_core::cdi::SPEC_FILE, &spec)?;
        // The optional classes Allocate names: a spec each; a spec of a
        // class no longer named goes.
        let enabled: Vec<_> =
            gpu_slicer_core::allocate::enabled_classes(&setup.config.flags).collect();
        for class in gpu_slicer_core::device_nodes::DeviceClass::ALL {
            let path = dir.join(gpu_slicer_core::cdi::class_spec_file(class));
            let spec = enabled
                .contains(&class)
                .then(|| {
                    gpu_slicer_core::cdi::class_spec(
                        class,
                        &setup.files,
                        setup.config.flags.dev_root(),
                    )
                })
                .flatten();
            match spec {
                Some(spec) => {
                    write_spec(&dir, &gpu_slicer_core::cdi::class_spec_file(class), &spec)?
                }
                None => match std::fs::remove_file(&path) {
                    Ok(()) => tracing::info!("removed CDI spec {}", path.display()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
                },
            }
        }
        Ok(())
    }
}

/// The permission bits of a device node on the host, as the daemon sees
/// it (NVIDIA's plugin stats the node the same way): through the driver
/// root mounted into the pod when the dev root is the driver root, else at
/// its host path (a daemon on the host, or a host directory mounted at the
/// same path), else at its container path in the daemon's own `/dev`
/// (where the NVIDIA runtime injected it with the host's mode). `None`
/// when none of them is a character device.
fn host_node_mode(flags: &gpu_slicer_core::config::Flags, container_path: &str) -> Option<u32> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dev_root = flags.dev_root();
    let mut candidates = Vec::with_capacity(3);
    if dev_root == flags.nvidia_driver_root {
        candidates.push(gpu_slicer_core::device_nodes::host_path(
            &flags.plugin.container_driver_root,
            container_path,
        ));
    }
    candidates.push(gpu_slicer_core::device_nodes::host_path(
        dev_root,
        container_path,
    ));
    candidates.push(container_path.to_string());
    candidates.iter().find_map(|path| {
        let meta = std::fs::metadata(path).ok()?;
        meta.file_type()
            .is_char_device()
            .then(|| meta.permissions().mode() & 0o7777)
    })
}

/// Writes one CDI spec file into `dir`, atomically, readable by the runtime.
fn write_spec(dir: &Path, file: &str, spec: &serde_json::Value) -> Result<(), ApplyError> {
    let path = dir.join(file);
    let text = serde_json::to_vec_pretty(spec).map_err(|e| ApplyError::CdiEncode(e.to_string()))?;
    write_atomically(&path, &text, READABLE_FILE_MODE).map_err(|source| ApplyError::CdiSpec {
        dir: dir.to_path_buf(),
        source,
    })?;
    tracing::info!("wrote CDI spec {}", path.display());
    Ok(())
}
