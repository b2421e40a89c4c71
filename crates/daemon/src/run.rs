//! `gpu-slicer run`: the daemon, wired from its options.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};

use tokio_util::sync::CancellationToken;

use crate::cluster::node::{self, LabelSelectedConfig, NodeView, NodeWatcher};
use crate::daemon::{self, HealthEnv, Paths, Setup, SetupError, SetupSource, Timings};
use crate::gpus::nvml::{self, NvmlOptions};
use crate::gpus::simulate;
use crate::host::config_file::{config_for_layout, refuse_blank_on_reload};
use crate::host::reload;
use crate::metrics::{self, Metrics};
use gpu_slicer_core::allocate::NodeDeviceFiles;
use gpu_slicer_core::config::{Config, ConfigFlags};
use gpu_slicer_core::node_labels::{MIG_CONFIG, MIG_CONFIG_STATE, MIG_TARGET};

pub struct RunOptions {
    /// Life-cycle waits (defaults, or shortened by tests).
    pub timings: Timings,
    pub config_file: Option<PathBuf>,
    pub kubelet_socket: Option<PathBuf>,
    pub device_plugin_path: PathBuf,
    pub simulate: Option<String>,
    pub mig_config: Option<String>,
    /// NVML library to load instead of searching for `libnvidia-ml.so.1`.
    pub nvml_lib: Option<PathBuf>,
    /// The driver's MIG capability minors (default `/proc/driver/nvidia-caps/mig-minors`).
    pub mig_minors: Option<PathBuf>,
    /// Write the CDI spec here when a CDI strategy is on; `None`: /var/run/cdi.
    pub cdi_spec_dir: Option<PathBuf>,
    /// Write node labels here (NFD feature file); `None` = off.
    pub feature_file: Option<PathBuf>,
    /// Serve metrics and health endpoints here; `None` = off.
    pub metrics_address: Option<std::net::SocketAddr>,
    /// `--mps-control-bin`.
    pub mps_control_bin: Option<PathBuf>,
    /// `--mps-container-root`.
    pub mps_container_root: PathBuf,
    pub flags: ConfigFlags,
    pub node: NodeOptions,
}

/// Why the daemon could not start or stopped with an error; each says what
/// to check.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("--config-file and --config-dir exclude each other")]
    ConfigFileAndDir,
    #[error("--startup-taint needs --node-name (NODE_NAME from the downward API)")]
    TaintWithoutNode,
    #[error("--follow-mig-manager needs --node-name (NODE_NAME from the downward API)")]
    MigManagerWithoutNode,
    #[error("--apply-mig-layouts needs --node-name (NODE_NAME from the downward API)")]
    MigApplyWithoutNode,
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("cannot serve metrics on {address}: {source}")]
    Metrics {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Kube(#[from] crate::cluster::api::KubeError),
    #[error("cannot watch {}: {source}", path.display())]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("cannot start the health-check thread: {0}")]
    HealthThread(#[source] std::io::Error),
    #[error("the node label watch stopped")]
    LabelWatchStopped,
    #[error("--mig-parted-config: {0}")]
    MigLayouts(String),
    #[error(transparent)]
    Daemon(daemon::DaemonError),
    #[error(transparent)]
    Runtime(#[from] crate::host::process::RuntimeError),
}

/// Per-node configuration by node label, and the start-up taint (see
/// [`crate::cluster::node`] for the contract and the RBAC they need).
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// This node's name (`NODE_NAME` from the downward API).
    pub node_name: Option<String>,
    /// A directory of named configs (a mounted ConfigMap, one key each);
    /// the node label picks one. Replaces `config_file`.
    pub config_dir: Option<PathBuf>,
    /// The label naming the config (NVIDIA's `nvidia.com/device-plugin.config`).
    pub config_label: String,
    /// The config to use when the node has no label (`DEFAULT_CONFIG`).
    pub default_config: Option<String>,
    pub fallback_strategies: Vec<crate::cluster::node::FallbackStrategy>,
    /// Talk to this API server URL instead of the in-cluster one (tests).
    pub kube_api_url: Option<String>,
    /// Remove this taint from the Node once every resource is registered.
    pub startup_taint: Option<String>,
    /// Follow `nvidia.com/mig.config.state` (MIG Manager).
    pub follow_mig_manager: bool,
    /// Apply `nvidia.com/mig.config` layouts ourselves (`--apply-mig-layouts`).
    pub apply_mig_layouts: Option<MigApplyOptions>,
    /// Publish the node's MIG state (`--publish-mig-state`, on with either
    /// MIG option).
    pub publish_mig_state: Option<MigStateOptions>,
}

/// Publishing the node's MIG state ([`crate::cluster::mig_state`]).
#[derive(Debug, Clone)]
pub struct MigStateOptions {
    /// `--pod-resources-socket`.
    pub pod_resources_socket: PathBuf,
}

/// `--apply-mig-layouts` and its options.
#[derive(Debug, Clone)]
pub struct MigApplyOptions {
    /// `--mig-parted-config`; `None`: the built-in layouts.
    pub layouts_file: Option<PathBuf>,
    /// `--mig-apply-force`.
    pub force: bool,
    /// `--pod-resources-socket`.
    pub pod_resources_socket: PathBuf,
}

/// Which config file a (re)load reads.
#[derive(Clone)]
pub enum ConfigChoice {
    /// `--config-file`, or none: defaults and flags.
    File(Option<PathBuf>),
    /// `--config-dir`: the one the node label selects, at each load.
    Selected(Arc<LabelSelectedConfig>),
}

/// The one place NVML options are built, from the effective config and the
/// command line: discovery and the XID watcher must load the same library.
fn nvml_options(
    config: &Config,
    nvml_lib: Option<&PathBuf>,
    mig_minors: Option<&PathBuf>,
) -> NvmlOptions {
    let mut options = NvmlOptions {
        lib_path: nvml_lib.cloned(),
        driver_root: PathBuf::from(&config.flags.plugin.container_driver_root),
        ..NvmlOptions::default()
    };
    if let Some(path) = mig_minors {
        options.mig_minors = path.clone();
    }
    options
}

/// Where the devices come from: the simulated backend with `--simulate`,
/// NVML otherwise. Config errors are always fatal; a discovery failure is
/// fatal only with `failOnInitError: true` (NVIDIA's default). The options
/// of the first successful NVML discovery go to `nvml_used` (the XID
/// watcher waits for them).
pub fn setup_source(
    config: ConfigChoice,
    flags: ConfigFlags,
    simulate: Option<String>,
    mig_config: Option<String>,
    nvml_lib: Option<PathBuf>,
    mig_minors: Option<PathBuf>,
    nvml_used: Option<SyncSender<NvmlOptions>>,
) -> SetupSource {
    // Set once a setup was produced: every later load is a reload.
    let loaded = Arc::new(AtomicBool::new(false));
    Arc::new(move || {
        let config_file = match &config {
            ConfigChoice::File(file) => file.clone(),
            ConfigChoice::Selected(selector) => selector
                .resolve()
                .map_err(|e| SetupError::Fatal(e.to_string()))?,
        };
        if loaded.load(Ordering::Relaxed)
            && let Some(path) = &config_file
        {
            refuse_blank_on_reload(path)
                .map_err(|e| SetupError::Fatal(format!("unable to load config: {e}")))?;
        }
        let config = config_for_layout(config_file.as_deref(), &flags, mig_config.as_deref())
            .map_err(|e| SetupError::Fatal(e.to_string()))?;
        if let Some(spec) = &simulate {
            let inventory = simulate::load(spec, mig_config.as_deref())
                .map_err(|e| SetupError::Fatal(e.to_string()))?;
            let files = NodeDeviceFiles {
                control: Vec::new(),
                mig_caps: NodeDeviceFiles::synthetic_mig_minors(inventory.gpus.len() as u32),
                ..Default::default()
            };
            loaded.store(true, Ordering::Relaxed);
            return Ok(Setup {
                inventory,
                config,
                files,
                unreachable: Vec::new(),
            });
        }
        let options = nvml_options(&config, nvml_lib.as_ref(), mig_minors.as_ref());
        match nvml::discover(&options) {
            Ok(mut found) => {
                if let Some(version) = &found.driver_version {
                    found.files.driver =
                        crate::host::driver_files::discover(&options.driver_root, version);
                }
                if let Some(used) = &nvml_used {
                    // Full: the watcher has its options already.
                    let _ = used.try_send(options.clone());
                }
                tracing::info!(
                    library = %found.library,
                    driver = found.driver_version.as_deref().unwrap_or("unknown"),
                    gpus = found.inventory.gpus.len(),
                    "discovered GPUs through NVML"
                );
                loaded.store(true, Ordering::Relaxed);
                Ok(Setup {
                    inventory: found.inventory,
                    config,
                    files: found.files,
                    unreachable: found.unreachable,
                })
            }
            Err(e) => {
                // NVIDIA's advice, where the error does not already say
                // what to check (said twice, the two disagreed).
                let advice = if e.says_what_to_do() {
                    ""
                } else {
                    ". If this is a GPU node, did you set the default container runtime to `nvidia`, \
                     or mount the driver root and pass --driver-root-ctr-path / --nvml-lib? If this is \
                     not a GPU node, use a nodeSelector or affinity to keep gpu-slicer off it"
                };
                let message = format!("Failed to initialize NVML: {e}{advice}");
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

pub async fn run(options: RunOptions) -> Result<(), RunError> {
    let node_options = options.node;
    if options.config_file.is_some() && node_options.config_dir.is_some() {
        return Err(RunError::ConfigFileAndDir);
    }
    if node_options.startup_taint.is_some() && node_options.node_name.is_none() {
        return Err(RunError::TaintWithoutNode);
    }
    if node_options.follow_mig_manager && node_options.node_name.is_none() {
        return Err(RunError::MigManagerWithoutNode);
    }
    if node_options.apply_mig_layouts.is_some() && node_options.node_name.is_none() {
        return Err(RunError::MigApplyWithoutNode);
    }
    let apply_driver_root = options.flags.driver_root_ctr_path.clone();
    if let Some(apply) = &node_options.apply_mig_layouts {
        // A bad layouts file is refused at start, not at the first change.
        crate::host::config_file::mig_layouts(apply.layouts_file.as_deref())
            .map_err(|e| RunError::MigLayouts(e.to_string()))?;
    }
    match crate::host::process::raise_fd_limit() {
        Ok((before, after)) if before != after => {
            tracing::info!("raised the open-file limit from {before} to {after}");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
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
        // Simulated nodes have no NVML to watch.
        health_watched: options.simulate.is_none(),
        timings: options.timings,
        mps_control_bin: options.mps_control_bin.clone(),
        mps_container_root: options.mps_container_root.clone(),
        mig_manager: None,
        mig_state: None,
    };

    let shutdown = CancellationToken::new();
    // Tasks that must reach a safe point before the process exits.
    let background = tokio_util::task::TaskTracker::new();
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    reload::handle_signals(reload_tx.clone(), shutdown.clone()).map_err(RunError::Signals)?;

    let metrics = Metrics::default();
    if let Some(address) = options.metrics_address {
        let bound = metrics::serve(address, metrics.clone(), shutdown.clone())
            .await
            .map_err(|source| RunError::Metrics { address, source })?;
        tracing::info!("serving /metrics, /healthz and /readyz on http://{bound}");
    }

    let needs_api = node_options.node_name.is_some()
        && (node_options.config_dir.is_some()
            || node_options.startup_taint.is_some()
            || node_options.follow_mig_manager
            || node_options.apply_mig_layouts.is_some());
    let client = if needs_api {
        Some(node::client(node_options.kube_api_url.as_deref())?)
    } else {
        None
    };
    // The one watcher of the Node: everything that follows a label reads
    // its view. Read once before anything is loaded or advertised.
    let node_view = match (&node_options.node_name, &client) {
        (Some(name), Some(client))
            if node_options.config_dir.is_some()
                || node_options.follow_mig_manager
                || node_options.apply_mig_layouts.is_some() =>
        {
            let mut view = NodeWatcher {
                client: client.clone(),
                node: name.clone(),
                logged: vec![
                    node_options.config_label.clone(),
                    MIG_CONFIG.to_string(),
                    MIG_CONFIG_STATE.to_string(),
                ],
            }
            .spawn(shutdown.clone());
            let synced = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                synced = node::synced(&mut view) => synced,
            };
            if !synced {
                return if shutdown.is_cancelled() {
                    Ok(())
                } else {
                    Err(RunError::LabelWatchStopped)
                };
            }
            Some(view)
        }
        _ => None,
    };

    let (choice, _config_watch, label) = match node_options.config_dir.clone() {
        None => {
            let watch = match &options.config_file {
                Some(file) => Some(
                    reload::watch_config_file(
                        file,
                        options.timings.config_settle,
                        reload_tx.clone(),
                    )
                    .map_err(|source| RunError::Watch {
                        path: file.clone(),
                        source,
                    })?,
                ),
                None => None,
            };
            (ConfigChoice::File(options.config_file), watch, None)
        }
        Some(dir) => {
            let watch =
                reload::watch_config_dir(&dir, options.timings.config_settle, reload_tx.clone())
                    .map_err(|source| RunError::Watch {
                        path: dir.clone(),
                        source,
                    })?;
            let (tx, rx) = tokio::sync::watch::channel(None);
            let selector = LabelSelectedConfig::new(
                dir,
                node_options.config_label.clone(),
                node_options.default_config.clone(),
                node_options.fallback_strategies.clone(),
                rx.clone(),
            );
            let choice = ConfigChoice::Selected(Arc::new(selector));
            (choice, Some(watch), Some((tx, rx)))
        }
    };
    // Health events come from NVML; simulated nodes have none. The watcher
    // starts with the options of the first successful discovery.
    let (xid_tx, xid_rx) = tokio::sync::mpsc::channel(crate::gpus::health::QUEUE);
    let nvml_used = if options.simulate.is_none() {
        let (used_tx, used_rx): (SyncSender<NvmlOptions>, Receiver<NvmlOptions>) =
            std::sync::mpsc::sync_channel(1);
        crate::gpus::health::spawn_health_watcher(
            used_rx,
            xid_tx,
            metrics.clone(),
            crate::gpus::health::Timings {
                probe: options.timings.health_probe,
            },
        )
        .map_err(RunError::HealthThread)?;
        Some(used_tx)
    } else {
        drop(xid_tx);
        None
    };
    let source = setup_source(
        choice,
        options.flags,
        options.simulate.clone(),
        options.mig_config,
        options.nvml_lib.clone(),
        options.mig_minors,
        nvml_used,
    );
    if let Some((tx, rx)) = label {
        follow_label(&node_options, node_view.clone(), tx, rx, &reload_tx);
    }

    let mut paths = paths;
    if node_options.follow_mig_manager
        && let (Some(name), Some(view)) = (node_options.node_name.clone(), node_view.clone())
    {
        tracing::info!("following node {name}'s {MIG_CONFIG} and {MIG_CONFIG_STATE} (MIG Manager)");
        // The view is read already: the first levels are there before the
        // first advertisement, so a node whose layout is not applied yet
        // never offers its GPUs whole.
        let (tx, levels) = tokio::sync::watch::channel(node::mig_levels(&view.borrow()));
        node::follow(view, tx, node::mig_levels);
        paths.mig_manager = Some(daemon::MigManagerLabels {
            levels,
            withdrawn: None,
        });
    }
    if let (Some(apply), Some(name), Some(client), Some(view)) = (
        node_options.apply_mig_layouts.clone(),
        node_options.node_name.clone(),
        client.clone(),
        node_view.clone(),
    ) {
        tracing::info!(
            "applying the MIG layouts node {name}'s {MIG_CONFIG} names (in place of MIG Manager), from {}",
            apply
                .layouts_file
                .as_ref()
                .map_or("the built-in layouts".to_string(), |p| p
                    .display()
                    .to_string())
        );
        let layout = |v: &NodeView| v.label(MIG_CONFIG).map(str::to_owned);
        let (config_tx, config) = tokio::sync::watch::channel(layout(&view.borrow()));
        node::follow(view.clone(), config_tx, layout);
        let target_of = |v: &NodeView| v.annotation(MIG_TARGET).map(str::to_owned);
        let (target_tx, target) = tokio::sync::watch::channel(target_of(&view.borrow()));
        node::follow(view.clone(), target_tx, target_of);
        // Nothing is reported until the applier has looked: a node with a
        // layout asked for starts withdrawn.
        let (levels_tx, levels) = tokio::sync::watch::channel(node::MigLevels {
            config: config.borrow().clone(),
            ..node::MigLevels::default()
        });
        let (withdrawn_tx, withdrawn) = tokio::sync::watch::channel(None);
        paths.mig_manager = Some(daemon::MigManagerLabels {
            levels,
            withdrawn: Some(Arc::new(withdrawn_tx)),
        });
        let driver_root = apply_driver_root
            .clone()
            .unwrap_or_else(|| Config::default().flags.plugin.container_driver_root);
        let applier = crate::cluster::mig_applier::Applier {
            client: client.clone(),
            node: name,
            layouts_file: apply.layouts_file,
            nvml: NvmlOptions {
                lib_path: options.nvml_lib.clone(),
                driver_root: PathBuf::from(driver_root),
                ..NvmlOptions::default()
            },
            force: apply.force,
            pod_resources_socket: apply.pod_resources_socket,
            config,
            target,
            node_view: view,
            levels: levels_tx,
            withdrawn,
            metrics: metrics.clone(),
            retry_first: options.timings.mig_apply_retry,
        };
        background.spawn(applier.run(shutdown.clone()));
    }
    if let (Some(publish), Some(name), Some(client)) = (
        node_options.publish_mig_state.clone(),
        node_options.node_name.clone(),
        client.clone(),
    ) {
        let feed = crate::cluster::mig_state::MigStateFeed::default();
        paths.mig_state = Some(feed.clone());
        tokio::spawn(
            crate::cluster::mig_state::Publisher {
                client,
                node: name,
                pod_resources_socket: publish.pod_resources_socket,
                feed,
            }
            .run(shutdown.clone()),
        );
    }
    if let (Some(taint), Some(name), Some(client)) =
        (node_options.startup_taint, node_options.node_name, client)
    {
        background.spawn(node::remove_taint_when_ready(
            client,
            name,
            taint,
            metrics.readiness(),
            shutdown.clone(),
        ));
    }

    let result = daemon::run(paths, source, reload_rx, xid_rx, metrics, shutdown)
        .await
        .map_err(RunError::Daemon);
    // SIGTERM: the owned background tasks reach their safe point first (the
    // MIG applier finishes an apply NVML has started and reports it), within
    // the pod's default termination grace.
    background.close();
    if tokio::time::timeout(BACKGROUND_STOP, background.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "background tasks did not stop within {BACKGROUND_STOP:?} of shutting down; exiting anyway"
        );
    }
    result
}

/// How long SIGTERM waits for background tasks (a MIG apply under way):
/// within Kubernetes' default 30 s termination grace period.
const BACKGROUND_STOP: std::time::Duration = std::time::Duration::from_secs(25);

/// Starts following the node label (when there is a node to read): its
/// first value is there before the first load, so that load already uses the
/// right config; every later change asks for a reload.
fn follow_label(
    options: &NodeOptions,
    view: Option<tokio::sync::watch::Receiver<NodeView>>,
    tx: tokio::sync::watch::Sender<Option<String>>,
    mut rx: tokio::sync::watch::Receiver<Option<String>>,
    reload: &tokio::sync::mpsc::Sender<()>,
) {
    let (Some(name), Some(view)) = (options.node_name.clone(), view) else {
        tracing::warn!(
            "--config-dir without --node-name (NODE_NAME): the node label {} is not read; \
             the default config applies",
            options.config_label
        );
        return;
    };
    tracing::info!("reading the label {} of node {name}", options.config_label);
    let key = options.config_label.clone();
    let label = move |v: &NodeView| v.label(&key).map(str::to_owned);
    // The view is read already: the first load uses the label's value.
    tx.send_replace(label(&view.borrow()));
    rx.borrow_and_update();
    node::follow(view, tx, label);
    let reload = reload.clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            // A full channel already holds a reload, which reads the latest label.
            let _ = reload.try_send(());
        }
    });
}
