//! `gpu-slicer demo`: the whole path, with no GPU and no cluster.
//!
//! Starts the stand-in kubelet in a temporary directory, runs the daemon on
//! a simulated instance against it, and prints what `kubectl describe node`
//! would show and what an admitted pod's container receives. Everything the
//! daemon writes stays in that directory, the CDI spec of a CDI strategy
//! included: never the host's /var/run/cdi, where it would overwrite a real
//! node's spec (or remove its gdrcopy/gds/mofed specs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kubelet_sim::{Container, Kubelet, Options, Pod};
use tokio_util::sync::CancellationToken;

use gpu_slicer_core::allocate::NodeDeviceFiles;
use gpu_slicer_core::config::{
    Config, ConfigFlags, MigStrategy, ReplicatedResource, SharingStrategy,
};
use gpu_slicer_core::gpu::Inventory;
use gpu_slicer_core::gpu::simulated::SimulationError;
use gpu_slicer_core::plan::plan;
use gpu_slicer_daemon::daemon::{self, DaemonError, Paths, Setup};
use gpu_slicer_daemon::gpus::simulate;
use gpu_slicer_daemon::host::config_file::{EffectiveConfigError, effective_config};

use super::node_config::{self, NodeConfig, NodeConfigError};

/// `println!` that never panics: once stdout is closed (`demo | head`) the
/// lines go nowhere and the demo still finishes and cleans up after itself.
macro_rules! say {
    () => {
        say(format_args!(""))
    };
    ($($arg:tt)*) => {
        say(format_args!($($arg)*))
    };
}

fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{line}");
}

pub struct DemoOptions {
    pub instance: String,
    /// `None`: all-balanced where the instance's GPUs have MIG, else all-disabled.
    pub mig_config: Option<String>,
    pub config_file: Option<PathBuf>,
    /// Which config of a ConfigMap manifest with several.
    pub config_name: Option<String>,
    pub flags: ConfigFlags,
}

/// How long to wait for every resource to reach the kubelet.
const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(20);

/// `all-balanced` where the instance's GPUs have MIG, `all-disabled` for a
/// catalog instance whose GPUs do not (so `demo --instance g5.xlarge` runs).
fn default_layout(instance: &str) -> &'static str {
    let no_mig = gpu_slicer_core::gpu::catalog::instance(instance)
        .and_then(|i| i.gpu_model())
        .is_some_and(|m| !m.mig_capable());
    if no_mig {
        "all-disabled"
    } else {
        "all-balanced"
    }
}

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The config file, flags or environment are refused.
    #[error(transparent)]
    Config(#[from] NodeConfigError),
    /// The flags are refused (the time-slicing scene).
    #[error(transparent)]
    Flags(#[from] EffectiveConfigError),
    /// MPS needs NVIDIA's control daemon on a GPU node.
    #[error(
        "{file}: the demo cannot show MPS sharing: its replicas need NVIDIA's MPS control \
         daemon (nvidia-cuda-mps-control) on a GPU node. `gpu-slicer plan --instance {instance} \
         --config-file {file} --mps-root DIR` prints what the node would advertise"
    )]
    Mps { file: String, instance: String },
    /// The instance or topology cannot be simulated.
    #[error(transparent)]
    Simulate(#[from] SimulationError),
    /// The config advertises devices no workload can use.
    #[error("the demo would admit pods onto devices they cannot use: {0}")]
    Unusable(String),
    #[error("cannot create a temporary directory: {0}")]
    TempDir(#[source] std::io::Error),
    #[error("stand-in kubelet failed to start: {0}")]
    Kubelet(#[from] kubelet_sim::SimError),
    /// The daemon did not advertise what the plan says.
    #[error("the resources did not all reach the stand-in kubelet within {seconds} s: {missing}")]
    NotRegistered { seconds: u64, missing: String },
    #[error("daemon task failed: {0}")]
    DaemonTask(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Runtime(#[from] gpu_slicer_daemon::host::process::RuntimeError),
}

pub async fn run(options: DemoOptions) -> Result<(), DemoError> {
    let mig_config = options
        .mig_config
        .clone()
        .unwrap_or_else(|| default_layout(&options.instance).to_string());
    let layout = Some(mig_config.as_str());
    if let Some(path) = &options.config_file {
        let file =
            node_config::file_config(Some(path), options.config_name.as_deref(), &mut Vec::new())?;
        if file.sharing.strategy() == SharingStrategy::Mps {
            return Err(DemoError::Mps {
                file: path.display().to_string(),
                instance: options.instance.clone(),
            });
        }
    }
    let inventory = simulate::load(&options.instance, layout)?;
    let NodeConfig {
        config,
        assumptions,
    } = node_config::resolve(
        options.config_file.as_deref(),
        options.config_name.as_deref(),
        &options.flags,
        &inventory,
    )?;
    if let Some(why) = node_config::unusable_devices(&inventory, &config) {
        return Err(DemoError::Unusable(why));
    }
    if options.mig_config.is_none() {
        say!(
            "assumed: MIG layout {mig_config} (the default for {}); choose another with --mig-config",
            options.instance
        );
    }
    for assumption in &assumptions {
        say!("assumed: {assumption}");
    }
    let title = format!(
        "MIG: {} with layout {} under migStrategy {}",
        options.instance, mig_config, config.flags.mig_strategy
    );
    scene_in_temp_dir(&title, inventory, config).await?;

    // Without a config file of the user's, also show time-slicing: the same
    // instance with MIG off and every GPU shared four ways.
    if options.config_file.is_none() {
        let inventory = simulate::load(&options.instance, Some("all-disabled"))?;
        let mut config = effective_config(None, &options.flags)?;
        config.flags.mig_strategy = MigStrategy::None;
        config.sharing.time_slicing.resources =
            vec![ReplicatedResource::every("nvidia.com/gpu", 4)];
        let title = format!(
            "Time-slicing: {} with MIG disabled and 4 replicas per GPU",
            options.instance
        );
        scene_in_temp_dir(&title, inventory, config).await?;
    }
    Ok(())
}

/// [`scene`] in a fresh temporary directory, removed when it ends.
async fn scene_in_temp_dir(
    title: &str,
    inventory: Inventory,
    config: Config,
) -> Result<(), DemoError> {
    let dir = tempfile::Builder::new()
        .prefix("gpu-slicer-demo")
        .tempdir()
        .map_err(DemoError::TempDir)?;
    scene(title, inventory, config, dir.path()).await
}

/// The directory under a scene's directory where its CDI spec goes.
const CDI_SUBDIR: &str = "cdi";

/// One node: the stand-in kubelet's sockets in `dir`, and the CDI spec (with
/// a CDI strategy) in `dir`/cdi.
async fn scene(
    title: &str,
    inventory: Inventory,
    config: Config,
    dir: &Path,
) -> Result<(), DemoError> {
    say!("=== {title}");
    let gpus = inventory.gpus.len();
    let model = inventory
        .gpus
        .first()
        .map(|g| g.model.clone())
        .unwrap_or_default();
    say!("simulated node: {gpus} × {model}");

    let planned = plan(&inventory, &config);
    for d in &planned.diagnostics {
        say!("  {d}");
    }
    let expected: BTreeMap<String, usize> = planned.counts().into_iter().collect();

    let cdi_spec_dir = dir.join(CDI_SUBDIR);
    let cdi = config
        .flags
        .plugin
        .device_list_strategy
        .iter()
        .any(|s| s.is_cdi());
    let kubelet = Kubelet::start(Options::new(dir)).await?;
    say!(
        "stand-in kubelet listening on {}",
        kubelet.socket_path().display()
    );

    let setup = Setup {
        files: NodeDeviceFiles {
            control: Vec::new(),
            mig_caps: NodeDeviceFiles::synthetic_mig_minors(gpus as u32),
            ..Default::default()
        },
        inventory,
        config,
        unreachable: Vec::new(),
    };
    let paths = Paths {
        device_plugin_dir: dir.to_path_buf(),
        kubelet_socket: Some(kubelet.socket_path()),
        feature_file: None,
        cdi_spec_dir: Some(cdi_spec_dir.clone()),
        health_env: Default::default(),
        health_watched: false,
        timings: Default::default(),
        mps_control_bin: None,
        mps_container_root: "/mps".into(),
        mig_manager: None,
        mig_state: None,
    };
    let shutdown = CancellationToken::new();
    let (_reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    let started = Instant::now();
    let daemon = tokio::spawn(daemon::run(
        paths,
        Arc::new(move || Ok(setup.clone())),
        reload_rx,
        tokio::sync::mpsc::channel(1).1,
        gpu_slicer_daemon::metrics::Metrics::default(),
        shutdown.clone(),
    ));

    let want = expected.clone();
    let registered = kubelet
        .wait_until(
            move |status| {
                want.iter().all(|(name, count)| {
                    status
                        .get(name)
                        .is_some_and(|c| c.allocatable == *count && c.capacity == *count)
                })
            },
            REGISTRATION_TIMEOUT,
        )
        .await;
    if registered.is_err() {
        let status = kubelet.node_status();
        shutdown.cancel();
        let _ = daemon.await;
        let missing: Vec<String> = expected
            .iter()
            .map(|(name, want)| {
                let got = status.get(name).map_or(0, |c| c.allocatable);
                format!("{name} {got} of {want} allocatable")
            })
            .collect();
        return Err(DemoError::NotRegistered {
            seconds: REGISTRATION_TIMEOUT.as_secs(),
            missing: missing.join(", "),
        });
    }
    say!(
        "{} registered and listed in {:.1} ms",
        registered_count(expected.len()),
        started.elapsed().as_secs_f64() * 1000.0
    );
    if cdi {
        say!(
            "CDI spec written to {} (the demo's temporary directory, removed when it ends; a node's daemon writes \
             /var/run/cdi, or --cdi-spec-dir)",
            cdi_spec_dir.join(gpu_slicer_core::cdi::SPEC_FILE).display()
        );
    }
    say!();

    let status = kubelet.node_status();
    let width = status.keys().map(String::len).max().unwrap_or(0) + 1;
    say!("$ kubectl describe node   (as the stand-in kubelet reports it)");
    for (heading, pick) in [("Capacity:", true), ("Allocatable:", false)] {
        say!("{heading}");
        for (name, c) in &status {
            let value = if pick { c.capacity } else { c.allocatable };
            say!("  {:<width$} {value}", format!("{name}:"));
        }
    }

    say!("\nPods admitted (one per resource):");
    for name in expected.keys() {
        let short = name.rsplit('/').next().unwrap_or(name).replace('.', "-");
        let pod = Pod::new(format!("demo-{short}"))
            .container(Container::new("main").limit(name.clone(), 1));
        match kubelet.admit(&pod).await {
            Ok(admission) => {
                let Some(container) = admission.containers.first() else {
                    continue;
                };
                let devices: Vec<String> = container
                    .resources
                    .values()
                    .flat_map(|r| r.device_ids.clone())
                    .collect();
                say!("  pod {} ({name}: 1)", pod.name);
                say!("    device: {}", devices.join(", "));
                let merged = &container.merged;
                for (key, value) in &merged.envs {
                    say!("    env {key}={value}");
                }
                for mount in &merged.mounts {
                    say!(
                        "    mount {} from {}",
                        mount.container_path,
                        mount.host_path
                    );
                }
                for (key, value) in &merged.annotations {
                    say!("    annotation {key}={value}");
                }
                for name in &merged.cdi_devices {
                    say!("    CDI device {name}");
                }
            }
            Err(e) => say!("  pod {}: {e}", pod.name),
        }
    }
    say!();

    shutdown.cancel();
    daemon.await??;
    kubelet.shutdown().await;
    Ok(())
}

/// `the 1 resource` / `all 3 resources`.
fn registered_count(n: usize) -> String {
    match n {
        1 => "the 1 resource".to_string(),
        n => format!("all {n} resources"),
    }
}

#[cfg(test)]
mod tests {
    use super::{CDI_SUBDIR, default_layout, scene};

    /// Defect: with a CDI strategy the demo wrote its spec into the host's
    /// /var/run/cdi (over a real node's spec). It goes to the scene's own
    /// directory: the test gives it one and finds the spec there, holding
    /// the simulated node's devices.
    #[tokio::test]
    async fn the_cdi_spec_goes_to_the_demos_own_directory() {
        let inventory =
            gpu_slicer_daemon::gpus::simulate::load("p4d.24xlarge", Some("all-balanced")).unwrap();
        let config = gpu_slicer_core::config::parse(
            "version: v1\nflags:\n  migStrategy: mixed\n  plugin:\n    deviceListStrategy: [cdi-annotations]\n",
            "test",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        scene("test", inventory, config, dir.path()).await.unwrap();
        let path = dir
            .path()
            .join(CDI_SUBDIR)
            .join(gpu_slicer_core::cdi::SPEC_FILE);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("no CDI spec at {}: {e}", path.display()));
        let spec: serde_json::Value = serde_json::from_str(&text).unwrap();
        let devices = spec["devices"].as_array().unwrap();
        // 8 GPUs x (2 x 1g + 1 x 2g + 1 x 3g) MIG devices, each named by
        // index and by UUID, at least.
        assert!(devices.len() >= 32, "{} devices in {text}", devices.len());
    }

    #[test]
    fn the_default_layout_fits_the_instance() {
        for (instance, layout) in [
            ("p4d.24xlarge", "all-balanced"),
            ("p5.48xlarge", "all-balanced"),
            ("g5.xlarge", "all-disabled"),
            ("g4dn.12xlarge", "all-disabled"),
            ("topology.yaml", "all-balanced"),
        ] {
            assert_eq!(default_layout(instance), layout, "{instance}");
        }
    }
}
