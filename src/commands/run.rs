//! `gpu-slicer run`: the daemon.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::allocate::NodeDeviceFiles;
use crate::config::ConfigFlags;
use crate::daemon::{self, HealthEnv, Paths, Setup, SetupError, SetupSource};
use crate::gpu::nvml::{self, NvmlOptions};
use crate::gpu::simulated;
use crate::metrics::{self, Metrics};
use crate::reload;

pub struct RunOptions {
    pub config_file: Option<PathBuf>,
    pub kubelet_socket: Option<PathBuf>,
    pub device_plugin_path: PathBuf,
    pub simulate: Option<String>,
    pub mig_config: Option<String>,
    /// NVML library to load instead of searching for `libnvidia-ml.so.1`.
    pub nvml_lib: Option<PathBuf>,
    /// Write a CDI spec here when a CDI strategy is on; `None` = off.
    pub cdi_spec_dir: Option<PathBuf>,
    /// Write node labels here (NFD feature file); `None` = off.
    pub feature_file: Option<PathBuf>,
    /// Serve metrics and health endpoints here; `None` = off.
    pub metrics_address: Option<std::net::SocketAddr>,
    pub flags: ConfigFlags,
}

/// Where the devices come from: the simulated backend with `--simulate`,
/// NVML otherwise. Config errors are always fatal; a discovery failure is
/// fatal only with `failOnInitError: true` (NVIDIA's default).
pub fn setup_source(
    config_file: Option<PathBuf>,
    flags: ConfigFlags,
    simulate: Option<String>,
    mig_config: Option<String>,
    nvml_lib: Option<PathBuf>,
) -> SetupSource {
    Arc::new(move || {
        let config =
            super::config_for_layout(config_file.as_deref(), &flags, mig_config.as_deref())
                .map_err(SetupError::Fatal)?;
        if let Some(spec) = &simulate {
            let inventory = simulated::load(spec, mig_config.as_deref())
                .map_err(|e| SetupError::Fatal(e.to_string()))?;
            let files = NodeDeviceFiles {
                control: Vec::new(),
                mig_caps: NodeDeviceFiles::synthetic_mig_minors(inventory.gpus.len() as u32),
            };
            return Ok(Setup {
                inventory,
                config,
                files,
            });
        }
        let options = NvmlOptions {
            lib_path: nvml_lib.clone(),
            driver_root: PathBuf::from(&config.flags.plugin.container_driver_root),
            ..NvmlOptions::default()
        };
        match nvml::discover(&options) {
            Ok(found) => {
                tracing::info!(
                    library = %found.library,
                    driver = found.driver_version.as_deref().unwrap_or("unknown"),
                    gpus = found.inventory.gpus.len(),
                    "discovered GPUs through NVML"
                );
                Ok(Setup {
                    inventory: found.inventory,
                    config,
                    files: found.files,
                })
            }
            Err(e) => {
                let message = format!(
                    "Failed to initialize NVML: {e}. If this is a GPU node, did you set the default container \
                     runtime to `nvidia`, or mount the driver root and pass --driver-root-ctr-path / --nvml-lib? \
                     If this is not a GPU node, use a toleration or nodeSelector to keep gpu-slicer off it."
                );
                if config.flags.fail_on_init_error {
                    Err(SetupError::Fatal(message))
                } else {
                    Err(SetupError::NotReady(format!(
                        "{message} (failOnInitError is false: staying up)"
                    )))
                }
            }
        }
    })
}

pub async fn run(options: RunOptions) -> Result<(), String> {
    let source = setup_source(
        options.config_file.clone(),
        options.flags,
        options.simulate.clone(),
        options.mig_config,
        options.nvml_lib.clone(),
    );
    let kubelet_socket = match options.kubelet_socket {
        // NVIDIA: an empty --kubelet-socket means "do not register".
        Some(path) if path.as_os_str().is_empty() => {
            tracing::info!("Skipping registration with Kubelet");
            None
        }
        Some(path) => Some(path),
        None => Some(options.device_plugin_path.join("kubelet.sock")),
    };
    let paths = Paths {
        device_plugin_dir: options.device_plugin_path,
        kubelet_socket,
        feature_file: options.feature_file,
        cdi_spec_dir: options.cdi_spec_dir,
        health_env: HealthEnv::from_process(),
    };

    let shutdown = CancellationToken::new();
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    reload::handle_signals(reload_tx.clone(), shutdown.clone())
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let _config_watch = match &options.config_file {
        Some(file) => Some(
            reload::watch_config_file(file, reload_tx)
                .map_err(|e| format!("cannot watch {}: {e}", file.display()))?,
        ),
        None => None,
    };

    let metrics = Metrics::default();
    if let Some(address) = options.metrics_address {
        let bound = metrics::serve(address, metrics.clone(), shutdown.clone())
            .await
            .map_err(|e| format!("cannot serve metrics on {address}: {e}"))?;
        tracing::info!("serving /metrics, /healthz and /readyz on http://{bound}");
    }
    // Health events come from NVML; simulated nodes have none.
    let (xid_tx, xid_rx) = tokio::sync::mpsc::unbounded_channel();
    if options.simulate.is_none() {
        let nvml_options = NvmlOptions {
            lib_path: options.nvml_lib.clone(),
            ..NvmlOptions::default()
        };
        crate::gpu::events::spawn_xid_watcher(nvml_options, xid_tx)
            .map_err(|e| format!("cannot start the health-check thread: {e}"))?;
    } else {
        drop(xid_tx);
    }
    daemon::run(paths, source, reload_rx, xid_rx, metrics, shutdown)
        .await
        .map_err(|e| e.to_string())
}
