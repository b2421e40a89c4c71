//! The daemon's command line, declared once: the daemon binary parses it
//! directly, and the people's `gpu-slicer run` flattens the same struct.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use gpu_slicer_core::config::{
    ConfigFlags, DeviceNamingFlags, MigStrategyFlag, MpsRootFlag, parse_go_bool,
};

use std::time::Duration;

use crate::daemon::Timings;
use crate::run::{NodeOptions, RunOptions};

/// Options of `run` (and of the daemon binary, which needs no subcommand).
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Configuration file (NVIDIA's `version: v1` schema).
    #[arg(long, env = "CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
    /// Directory of named configs (a mounted ConfigMap, one key per config, e.g.
    /// /available-configs); the node label --node-config-label picks one, as with
    /// NVIDIA's config-manager. Needs --node-name to read the label.
    #[arg(
        long,
        env = "CONFIG_DIR",
        value_name = "DIR",
        conflicts_with = "config_file"
    )]
    pub config_dir: Option<PathBuf>,
    /// This node's name (from the downward API: spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// The node label whose value names the config in --config-dir.
    #[arg(
        long,
        env = "NODE_LABEL",
        default_value = crate::cluster::node::CONFIG_LABEL,
        value_name = "LABEL"
    )]
    pub node_config_label: String,
    /// The config in --config-dir to use when the node has no label; without it:
    /// the config named `default`, else the only config, else none.
    #[arg(long, env = "DEFAULT_CONFIG", value_name = "NAME")]
    pub default_config: Option<String>,
    /// Ordered fallbacks when the node has no label and no --default-config
    /// is set, as NVIDIA's config-manager: `named` (the config `default`),
    /// `single` (the only config), `empty` (no config file). None matching
    /// is an error.
    #[arg(
        long,
        env = "FALLBACK_STRATEGIES",
        value_delimiter = ',',
        value_enum,
        default_value = "named,single,empty",
        value_name = "LIST"
    )]
    pub fallback_strategies: Vec<crate::cluster::node::FallbackStrategy>,
    /// Remove this taint from the node once every resource is registered with the
    /// kubelet (a Karpenter start-up taint). Needs --node-name and `patch` on nodes.
    #[arg(long, env = "STARTUP_TAINT", value_name = "KEY")]
    pub startup_taint: Option<String>,
    /// Follow the node's nvidia.com/mig.config.state, as NVIDIA's GPU
    /// Operator MIG Manager sets it: while it is `pending` (or `rebooting`)
    /// the devices of MIG-capable GPUs are Unhealthy; on `success` or
    /// `failed` the GPUs are rediscovered. Needs --node-name and `get`,
    /// `list`, `watch` on nodes.
    #[arg(long, env = "FOLLOW_MIG_MANAGER")]
    pub follow_mig_manager: bool,
    /// Apply the MIG layout the node's nvidia.com/mig.config label names
    /// through NVML, in place of NVIDIA's MIG Manager, and report
    /// nvidia.com/mig.config.state as it does (pending, success, failed).
    /// GPUs running processes are refused; a MIG mode change that needs a
    /// GPU reset or a reboot is reported, never done. Needs --node-name,
    /// `get`, `list`, `watch`, `patch` on nodes and `create` on events.
    #[arg(long, env = "APPLY_MIG_LAYOUTS", conflicts_with = "follow_mig_manager")]
    pub apply_mig_layouts: bool,
    /// The MIG layouts, in mig-parted's format (`version: v1`,
    /// `mig-configs:`, as the GPU Operator's default-mig-parted-config
    /// ConfigMap holds them); read at every change. Default: NVIDIA's
    /// layouts, built in.
    #[arg(
        long,
        env = "MIG_PARTED_CONFIG_FILE",
        value_name = "FILE",
        requires = "apply_mig_layouts"
    )]
    pub mig_parted_config: Option<PathBuf>,
    /// With --apply-mig-layouts: change GPUs even while compute processes
    /// run on them (their work is lost).
    #[arg(long, env = "MIG_APPLY_FORCE", requires = "apply_mig_layouts")]
    pub mig_apply_force: bool,
    /// Publish the node's MIG state (per GPU: MIG mode, the GPU instances
    /// with their placements and MIG device UUIDs, and which of them pods
    /// hold) as its annotation gpu-slicer.io/mig-state, kept current as
    /// pods come and go. On by default with --follow-mig-manager or
    /// --apply-mig-layouts (which talk to the API server already); `false`
    /// turns it off. Needs `patch` on nodes and `list`, `watch` on pods.
    #[arg(
        long,
        env = "PUBLISH_MIG_STATE",
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub publish_mig_state: bool,
    /// The kubelet's PodResources socket, asked which pods hold devices:
    /// before --apply-mig-layouts changes a GPU, and for the published MIG
    /// state.
    #[arg(
        long,
        env = "POD_RESOURCES_SOCKET",
        value_name = "PATH",
        default_value = crate::kubelet::pod_resources::DEFAULT_SOCKET
    )]
    pub pod_resources_socket: PathBuf,
    /// Kubernetes API server URL, without credentials (tests, `kubectl proxy`);
    /// default: the in-cluster service account or a kubeconfig.
    #[arg(long, env = "KUBE_API_URL", value_name = "URL", hide_short_help = true)]
    pub kube_api_url: Option<String>,
    /// The kubelet's registration socket; empty: do not register.
    #[arg(long, env = "KUBELET_SOCKET")]
    pub kubelet_socket: Option<String>,
    /// Directory for the plugin sockets (the kubelet's device-plugin directory).
    #[arg(
        long,
        env = "DEVICE_PLUGIN_PATH",
        default_value = "/var/lib/kubelet/device-plugins"
    )]
    pub device_plugin_path: PathBuf,
    /// Simulate GPUs: a cloud instance type (p4d.24xlarge) or a topology file.
    /// Without it, GPUs are discovered through NVML.
    #[arg(long, value_name = "INSTANCE|TOPOLOGY.yaml")]
    pub simulate: Option<String>,
    /// MIG layout for simulated GPUs (all-disabled, all-1g.5gb, all-balanced, ...).
    #[arg(long, value_name = "NAME")]
    pub mig_config: Option<String>,
    /// NVML library to load (default: libnvidia-ml.so.1 under the container driver root,
    /// then the dynamic loader's search path).
    #[arg(long, env = "NVML_LIB", value_name = "PATH")]
    pub nvml_lib: Option<PathBuf>,
    /// The driver's MIG capability minors, read to find each MIG device's
    /// /dev/nvidia-caps nodes.
    #[arg(
        long,
        env = "MIG_MINORS_FILE",
        value_name = "PATH",
        default_value = "/proc/driver/nvidia-caps/mig-minors",
        hide_short_help = true
    )]
    pub mig_minors: PathBuf,
    /// Where the CDI spec for every GPU and MIG device is written when a CDI
    /// device-list strategy is on (default /var/run/cdi, where container
    /// runtimes look); the daemon refuses to start if it cannot be written.
    #[arg(long, env = "CDI_SPEC_DIR", value_name = "DIR")]
    pub cdi_spec_dir: Option<PathBuf>,
    /// Write node labels (GPU Feature Discovery names) to this Node Feature Discovery
    /// feature file, e.g. /etc/kubernetes/node-feature-discovery/features.d/gpu-slicer.
    #[arg(long, env = "FEATURE_FILE", value_name = "PATH")]
    pub feature_file: Option<PathBuf>,
    /// Serve /metrics, /healthz and /readyz on this address (e.g. 0.0.0.0:9401,
    /// localhost:9401, [::1]:9401; a host name is resolved at start); off when unset.
    #[arg(
        long,
        env = "METRICS_ADDRESS",
        value_name = "HOST:PORT",
        value_parser = metrics_address
    )]
    pub metrics_address: Option<SocketAddr>,
    /// The MPS control program (`nvidia-cuda-mps-control`); by default it is
    /// looked for in the driver's bin directories under the driver root,
    /// then on PATH.
    #[arg(long, env = "MPS_CONTROL_BIN", value_name = "PATH")]
    pub mps_control_bin: Option<PathBuf>,
    /// Where the host's --mps-root directory is mounted in this container
    /// (NVIDIA's chart: /mps). Running on the host itself, give the
    /// --mps-root path.
    #[arg(
        long,
        env = "MPS_CONTAINER_ROOT",
        value_name = "DIR",
        default_value = "/mps"
    )]
    pub mps_container_root: PathBuf,
    /// Milliseconds a resource may go without a ListAndWatch stream before it
    /// registers again (tests shorten it).
    #[arg(
        long,
        env = "GPU_SLICER_STREAM_GRACE_MS",
        value_name = "MS",
        hide = true
    )]
    pub stream_grace_ms: Option<u64>,
    /// Milliseconds watched config files must stay quiet before they are read
    /// (tests shorten it).
    #[arg(
        long,
        env = "GPU_SLICER_CONFIG_SETTLE_MS",
        value_name = "MS",
        hide = true
    )]
    pub config_settle_ms: Option<u64>,
    /// Milliseconds between checks that every GPU answers NVML (tests
    /// shorten it).
    #[arg(
        long,
        env = "GPU_SLICER_HEALTH_PROBE_MS",
        value_name = "MS",
        hide = true
    )]
    pub health_probe_ms: Option<u64>,
    /// Milliseconds before the first retry of a MIG layout change that
    /// failed (tests shorten it).
    #[arg(
        long,
        env = "GPU_SLICER_MIG_APPLY_RETRY_MS",
        value_name = "MS",
        hide = true
    )]
    pub mig_apply_retry_ms: Option<u64>,
    #[command(flatten)]
    pub flags: ConfigFlagArgs,
}

/// Why `--metrics-address` cannot be served; each says what to write.
#[derive(Debug, thiserror::Error)]
pub enum MetricsAddressError {
    #[error("no port; {WRITE_METRICS_ADDRESS}")]
    NoPort,
    #[error("'{port}' is not a port number (0 to 65535); {WRITE_METRICS_ADDRESS}")]
    BadPort { port: String },
    #[error("no host before ':{port}'; {WRITE_METRICS_ADDRESS}")]
    NoHost { port: u16 },
    #[error(
        "an IPv6 address takes brackets ([{host}]:{port}), or the address is not valid; {WRITE_METRICS_ADDRESS}"
    )]
    BareIpv6 { host: String, port: u16 },
    #[error(
        "cannot resolve the host name '{host}': {reason}; write an IP address, or a name this node resolves"
    )]
    Unresolved { host: String, reason: String },
    #[error("the host name '{host}' resolves to no address; write an IP address")]
    NoAddress { host: String },
}

const WRITE_METRICS_ADDRESS: &str =
    "write HOST:PORT, e.g. 0.0.0.0:9401 (every address), localhost:9401 or [::1]:9401";

/// `--metrics-address`: `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT`, the host
/// name resolved once, here, at start (its first address is served).
fn metrics_address(value: &str) -> Result<SocketAddr, MetricsAddressError> {
    if let Ok(address) = value.parse::<SocketAddr>() {
        return Ok(address);
    }
    let no_port = value.ends_with(']') || !value.contains(':');
    let (host, port) = match value.rsplit_once(':') {
        Some(split) if !no_port => split,
        _ => return Err(MetricsAddressError::NoPort),
    };
    let port: u16 = port.parse().map_err(|_| MetricsAddressError::BadPort {
        port: port.to_owned(),
    })?;
    if host.is_empty() {
        return Err(MetricsAddressError::NoHost { port });
    }
    if host.contains(':') {
        return Err(MetricsAddressError::BareIpv6 {
            host: host.to_owned(),
            port,
        });
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let resolved = (host, port)
        .to_socket_addrs()
        .map_err(|e| MetricsAddressError::Unresolved {
            host: host.to_owned(),
            reason: gpu_slicer_core::messages::io_error(&e),
        })?;
    resolved
        .into_iter()
        .next()
        .ok_or_else(|| MetricsAddressError::NoAddress {
            host: host.to_owned(),
        })
}

impl RunArgs {
    /// The options the daemon runs with.
    pub fn into_options(self) -> RunOptions {
        let defaults = Timings::default();
        let millis = |ms: Option<u64>, default| ms.map_or(default, Duration::from_millis);
        RunOptions {
            timings: Timings {
                stream_grace: millis(self.stream_grace_ms, defaults.stream_grace),
                config_settle: millis(self.config_settle_ms, defaults.config_settle),
                health_probe: millis(self.health_probe_ms, defaults.health_probe),
                mig_apply_retry: millis(self.mig_apply_retry_ms, defaults.mig_apply_retry),
            },
            config_file: self.config_file,
            kubelet_socket: self.kubelet_socket.map(PathBuf::from),
            device_plugin_path: self.device_plugin_path,
            simulate: self.simulate,
            mig_config: self.mig_config,
            nvml_lib: self.nvml_lib,
            mig_minors: Some(self.mig_minors),
            cdi_spec_dir: self.cdi_spec_dir,
            feature_file: self.feature_file,
            mps_control_bin: self.mps_control_bin,
            mps_container_root: self.mps_container_root,
            metrics_address: self.metrics_address,
            flags: self.flags.into(),
            node: NodeOptions {
                node_name: self.node_name,
                config_dir: self.config_dir,
                config_label: self.node_config_label,
                default_config: self.default_config,
                fallback_strategies: self.fallback_strategies,
                kube_api_url: self.kube_api_url,
                startup_taint: self.startup_taint,
                follow_mig_manager: self.follow_mig_manager,
                publish_mig_state: (self.publish_mig_state
                    && (self.follow_mig_manager || self.apply_mig_layouts))
                    .then(|| crate::run::MigStateOptions {
                        pod_resources_socket: self.pod_resources_socket.clone(),
                    }),
                apply_mig_layouts: self
                    .apply_mig_layouts
                    .then_some(crate::run::MigApplyOptions {
                        layouts_file: self.mig_parted_config,
                        force: self.mig_apply_force,
                        pod_resources_socket: self.pod_resources_socket,
                    }),
            },
        }
    }
}

/// `--mig-strategy`: declared once, flattened into [`ConfigFlagArgs`] and into
/// the people's commands that take it (`plan`, `demo`).
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct MigStrategyArg {
    /// The desired strategy for exposing MIG devices: none, single or mixed.
    #[arg(long, env = "MIG_STRATEGY", value_name = "STRATEGY")]
    pub mig_strategy: Option<String>,
}

/// `--device-list-strategy` and `--device-id-strategy`: how containers
/// receive their devices (the daemon, and `demo`, which shows it).
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct DeviceNamingArgs {
    /// How devices are passed to the runtime: envvar, volume-mounts,
    /// cdi-annotations, cdi-cri (comma-separated or repeated).
    #[arg(
        long,
        env = "DEVICE_LIST_STRATEGY",
        value_delimiter = ',',
        value_name = "STRATEGY"
    )]
    pub device_list_strategy: Option<Vec<String>>,

    /// How devices are identified to the runtime: uuid or index.
    #[arg(long, env = "DEVICE_ID_STRATEGY", value_name = "STRATEGY")]
    pub device_id_strategy: Option<String>,
}

/// `--mps-root` (the daemon, and `plan`: a config with MPS sharing needs it).
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct MpsRootArg {
    /// The MPS root folder on the host (required when MPS sharing is used).
    #[arg(long, env = "MPS_ROOT", value_name = "PATH")]
    pub mps_root: Option<String>,
}

/// Every NVIDIA flag that changes the config, with its environment
/// variable; mapped onto the core's plain [`ConfigFlags`]. `None` = not
/// given (neither flag nor env), so the config file's value stands.
///
/// Boolean flags are Go-style: `--flag` (= true), `--flag=false`, or the env
/// var with a `strconv.ParseBool` value.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct ConfigFlagArgs {
    #[command(flatten)]
    pub mig: MigStrategyArg,

    /// Fail the plugin if an error is encountered during initialization,
    /// otherwise block indefinitely.
    #[arg(long, env = "FAIL_ON_INIT_ERROR", num_args = 0..=1, default_missing_value = "true",
          require_equals = true, value_parser = parse_go_bool, value_name = "BOOL")]
    pub fail_on_init_error: Option<bool>,

    /// The root path for the NVIDIA driver installation on the host.
    #[arg(
        long = "driver-root",
        visible_alias = "nvidia-driver-root",
        env = "NVIDIA_DRIVER_ROOT",
        value_name = "PATH"
    )]
    pub nvidia_driver_root: Option<String>,

    /// The root path for the NVIDIA device nodes on the host (default: the driver root).
    #[arg(
        long = "dev-root",
        visible_alias = "nvidia-dev-root",
        env = "NVIDIA_DEV_ROOT",
        value_name = "PATH"
    )]
    pub nvidia_dev_root: Option<String>,

    /// Pass the list of DeviceSpecs to the kubelet on Allocate().
    #[arg(long, env = "PASS_DEVICE_SPECS", num_args = 0..=1, default_missing_value = "true",
          require_equals = true, value_parser = parse_go_bool, value_name = "BOOL")]
    pub pass_device_specs: Option<bool>,

    #[command(flatten)]
    pub naming: DeviceNamingArgs,

    /// Ensure that containers are started with NVIDIA_GDRCOPY=enabled.
    #[arg(long, env = "GDRCOPY_ENABLED", num_args = 0..=1, default_missing_value = "true",
          require_equals = true, value_parser = parse_go_bool, value_name = "BOOL")]
    pub gdrcopy_enabled: Option<bool>,

    /// Ensure that containers are started with NVIDIA_GDS=enabled.
    #[arg(long, env = "GDS_ENABLED", num_args = 0..=1, default_missing_value = "true",
          require_equals = true, value_parser = parse_go_bool, value_name = "BOOL")]
    pub gds_enabled: Option<bool>,

    /// Ensure that containers are started with NVIDIA_MOFED=enabled.
    #[arg(long, env = "MOFED_ENABLED", num_args = 0..=1, default_missing_value = "true",
          require_equals = true, value_parser = parse_go_bool, value_name = "BOOL")]
    pub mofed_enabled: Option<bool>,

    /// The prefix to use for CDI container annotation keys.
    #[arg(long, env = "CDI_ANNOTATION_PREFIX", value_name = "PREFIX")]
    pub cdi_annotation_prefix: Option<String>,

    /// The path to use for the nvidia CDI hooks in the generated CDI
    /// specification (env NVIDIA_CDI_HOOK_PATH, else NVIDIA_CTK_PATH).
    #[arg(
        long = "nvidia-cdi-hook-path",
        visible_alias = "nvidia-ctk-path",
        env = "NVIDIA_CDI_HOOK_PATH",
        value_name = "PATH"
    )]
    pub nvidia_cdi_hook_path: Option<String>,

    /// The path where the NVIDIA driver root is mounted in the container
    /// (env DRIVER_ROOT_CTR_PATH, else CONTAINER_DRIVER_ROOT).
    #[arg(
        long = "driver-root-ctr-path",
        visible_alias = "container-driver-root",
        env = "DRIVER_ROOT_CTR_PATH",
        value_name = "PATH"
    )]
    pub driver_root_ctr_path: Option<String>,

    #[command(flatten)]
    pub mps: MpsRootArg,

    /// How shared devices are preferred: distributed or packed.
    #[arg(long, env = "SHARED_DEVICES_ALLOCATION_POLICY", value_name = "POLICY")]
    pub shared_devices_allocation_policy: Option<String>,

    /// How devices are discovered: auto or nvml (both NVML; tegra is refused).
    #[arg(long, env = "DEVICE_DISCOVERY_STRATEGY", value_name = "STRATEGY")]
    pub device_discovery_strategy: Option<String>,

    /// IMEX channel ids. gpu-slicer injects no IMEX channel, so only an
    /// empty list is accepted; `0` (NVIDIA's only valid id) is refused with
    /// a message, and any other id is invalid.
    #[arg(
        long,
        env = "IMEX_CHANNEL_IDS",
        value_delimiter = ',',
        value_name = "IDS"
    )]
    pub imex_channel_ids: Option<Vec<i64>>,

    /// Whether IMEX channels are required; type-checked, and without
    /// effect, since no channel is ever requested.
    #[arg(long, env = "IMEX_REQUIRED", num_args = 0..=1, default_missing_value = "true",
          require_equals = true, value_parser = parse_go_bool, value_name = "BOOL")]
    pub imex_required: Option<bool>,
}

impl From<MigStrategyArg> for MigStrategyFlag {
    fn from(a: MigStrategyArg) -> Self {
        MigStrategyFlag {
            mig_strategy: a.mig_strategy,
        }
    }
}

impl From<DeviceNamingArgs> for DeviceNamingFlags {
    fn from(a: DeviceNamingArgs) -> Self {
        DeviceNamingFlags {
            device_list_strategy: a.device_list_strategy,
            device_id_strategy: a.device_id_strategy,
        }
    }
}

impl From<MpsRootArg> for MpsRootFlag {
    fn from(a: MpsRootArg) -> Self {
        MpsRootFlag {
            mps_root: a.mps_root,
        }
    }
}

impl From<ConfigFlagArgs> for ConfigFlags {
    fn from(a: ConfigFlagArgs) -> Self {
        ConfigFlags {
            mig: a.mig.into(),
            fail_on_init_error: a.fail_on_init_error,
            nvidia_driver_root: a.nvidia_driver_root,
            nvidia_dev_root: a.nvidia_dev_root,
            pass_device_specs: a.pass_device_specs,
            naming: a.naming.into(),
            gdrcopy_enabled: a.gdrcopy_enabled,
            gds_enabled: a.gds_enabled,
            mofed_enabled: a.mofed_enabled,
            cdi_annotation_prefix: a.cdi_annotation_prefix,
            nvidia_cdi_hook_path: a.nvidia_cdi_hook_path,
            driver_root_ctr_path: a.driver_root_ctr_path,
            mps: a.mps.into(),
            shared_devices_allocation_policy: a.shared_devices_allocation_policy,
            device_discovery_strategy: a.device_discovery_strategy,
            imex_channel_ids: a.imex_channel_ids,
            imex_required: a.imex_required,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use clap::Parser;

    use super::RunArgs;
    use crate::cluster::node::{DEFAULT_FALLBACKS, FallbackStrategy};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn fallbacks(args: &[&str]) -> Result<Vec<FallbackStrategy>, String> {
        let argv = std::iter::once("daemon").chain(args.iter().copied());
        Cli::try_parse_from(argv)
            .map(|cli| cli.run.fallback_strategies)
            .map_err(|e| e.to_string())
    }

    fn metrics(value: &str) -> Result<Option<std::net::SocketAddr>, String> {
        Cli::try_parse_from(["daemon", "--metrics-address", value])
            .map(|cli| cli.run.metrics_address)
            .map_err(|e| e.to_string().lines().next().unwrap_or_default().to_string())
    }

    #[test]
    fn the_mig_state_is_published_with_either_mig_option_unless_turned_off() {
        let published = |args: &[&str]| -> Result<Option<PathBuf>, String> {
            let argv = std::iter::once("daemon").chain(args.iter().copied());
            Cli::try_parse_from(argv)
                .map(|cli| {
                    cli.run
                        .into_options()
                        .node
                        .publish_mig_state
                        .map(|p| p.pod_resources_socket)
                })
                .map_err(|e| e.to_string())
        };
        let socket = Some(PathBuf::from(crate::kubelet::pod_resources::DEFAULT_SOCKET));
        assert_eq!(published(&[]), Ok(None), "no MIG option: no API writes");
        assert_eq!(published(&["--follow-mig-manager"]), Ok(socket.clone()));
        assert_eq!(published(&["--apply-mig-layouts"]), Ok(socket));
        assert_eq!(
            published(&["--apply-mig-layouts", "--publish-mig-state", "false"]),
            Ok(None)
        );
        assert_eq!(
            published(&["--follow-mig-manager", "--pod-resources-socket", "/p.sock"]),
            Ok(Some(PathBuf::from("/p.sock")))
        );
        let e = published(&["--publish-mig-state", "no"]).unwrap_err();
        assert!(
            e.contains("invalid value 'no' for '--publish-mig-state <BOOL>'"),
            "{e}"
        );
    }

    #[test]
    fn metrics_address_takes_addresses_and_host_names() {
        let at = |v: &str| metrics(v).unwrap().unwrap().to_string();
        assert_eq!(at("0.0.0.0:9401"), "0.0.0.0:9401");
        assert_eq!(at("[::1]:9401"), "[::1]:9401");
        let local = metrics("localhost:9401").unwrap().unwrap();
        assert!(local.ip().is_loopback() && local.port() == 9401, "{local}");
        let cli = Cli::try_parse_from(["daemon"]).unwrap();
        assert_eq!(cli.run.metrics_address, None);
    }

    #[test]
    fn a_bad_metrics_address_says_what_to_write() {
        let head =
            |v: &str| format!("error: invalid value '{v}' for '--metrics-address <HOST:PORT>': ");
        let write =
            "write HOST:PORT, e.g. 0.0.0.0:9401 (every address), localhost:9401 or [::1]:9401";
        for (value, why) in [
            ("localhost", format!("no port; {write}")),
            ("[::1]", format!("no port; {write}")),
            (
                "localhost:http",
                format!("'http' is not a port number (0 to 65535); {write}"),
            ),
            (
                "0.0.0.0:94010",
                format!("'94010' is not a port number (0 to 65535); {write}"),
            ),
            (":9401", format!("no host before ':9401'; {write}")),
            (
                "::1:9401",
                format!(
                    "an IPv6 address takes brackets ([::1]:9401), or the address is not valid; {write}"
                ),
            ),
        ] {
            assert_eq!(
                metrics(value).unwrap_err(),
                format!("{}{why}", head(value)),
                "{value}"
            );
        }
        // RFC 6761: `.invalid` never resolves.
        let e = metrics("no-such-host.invalid:9401").unwrap_err();
        assert!(
            e.starts_with(&format!(
                "{}cannot resolve the host name 'no-such-host.invalid': ",
                head("no-such-host.invalid:9401")
            )) && e.ends_with("; write an IP address, or a name this node resolves"),
            "{e}"
        );
    }

    #[test]
    fn fallback_strategies_take_nvidia_s_comma_separated_list() {
        use FallbackStrategy::*;
        assert_eq!(fallbacks(&[]).unwrap(), DEFAULT_FALLBACKS.to_vec());
        assert_eq!(
            fallbacks(&["--fallback-strategies", "named,single"]).unwrap(),
            vec![Named, Single]
        );
        assert_eq!(
            fallbacks(&["--fallback-strategies", "empty"]).unwrap(),
            vec![Empty]
        );
        let e = fallbacks(&["--fallback-strategies", "named,first"]).unwrap_err();
        assert!(
            e.contains("invalid value 'first'") && e.contains("named, single, empty"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod config_flag_tests {
    use super::*;
    use clap::Parser;
    use gpu_slicer_core::config::{
        AllocationPolicy, Config, DeviceIdStrategy, DeviceListStrategy, MigStrategy, parse,
    };

    #[derive(Parser, Debug)]
    struct T {
        #[command(flatten)]
        f: ConfigFlagArgs,
    }

    fn flags(args: &[&str]) -> ConfigFlags {
        let mut argv = vec!["test"];
        argv.extend_from_slice(args);
        match T::try_parse_from(argv) {
            Ok(t) => t.f.into(),
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    fn clap_err(args: &[&str]) -> String {
        let mut argv = vec!["test"];
        argv.extend_from_slice(args);
        match T::try_parse_from(argv) {
            Ok(t) => panic!("{args:?} parsed as {:?}", t.f),
            Err(e) => e.to_string(),
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn apply(f: &ConfigFlags, file: &str) -> Result<Config, String> {
        let config = parse(file, "config.yaml").map_err(|e| e.to_string())?;
        f.apply_with_env(config, no_env).map_err(|e| e.to_string())
    }

    /// The command line declares every flag of the core's key table, and
    /// no other flag that sets a config key (the IMEX flags only validate).
    #[test]
    fn the_command_line_declares_each_table_flag() {
        use clap::CommandFactory;
        use gpu_slicer_core::config::keys::OVERRIDES;
        let cmd = T::command();
        for (key, flag) in OVERRIDES {
            let long = flag.trim_start_matches("--");
            let Some(arg) = cmd.get_arguments().find(|a| a.get_long() == Some(long)) else {
                panic!("{key}: the command line has no {flag}");
            };
            assert!(
                arg.get_env().is_some(),
                "{key}: {flag} has no environment variable"
            );
        }
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long.starts_with("imex-") || long == "help" {
                continue;
            }
            assert!(
                OVERRIDES
                    .iter()
                    .any(|(_, flag)| flag.trim_start_matches("--") == long),
                "--{long} is not in the core's key table (config/keys.rs)"
            );
        }
        let keys: std::collections::BTreeSet<_> = OVERRIDES.iter().map(|(k, _)| k).collect();
        assert_eq!(keys.len(), OVERRIDES.len(), "a key declared twice");
    }

    #[test]
    fn go_bool_flags() {
        assert_eq!(flags(&[]).fail_on_init_error, None);
        assert_eq!(
            flags(&["--fail-on-init-error"]).fail_on_init_error,
            Some(true)
        );
        assert_eq!(
            flags(&["--fail-on-init-error=false"]).fail_on_init_error,
            Some(false)
        );
        assert_eq!(
            flags(&["--pass-device-specs=T"]).pass_device_specs,
            Some(true)
        );
        assert_eq!(flags(&["--gdrcopy-enabled=0"]).gdrcopy_enabled, Some(false));
        assert_eq!(flags(&["--gds-enabled"]).gds_enabled, Some(true));
        assert_eq!(flags(&["--mofed-enabled=True"]).mofed_enabled, Some(true));
        assert_eq!(flags(&["--imex-required"]).imex_required, Some(true));
        let e = clap_err(&["--fail-on-init-error=yes"]);
        assert!(e.contains("'yes'"), "{e}");
        assert!(e.contains("--fail-on-init-error"), "{e}");
        // Like Go's flag package, a bool flag's value must be attached with '='.
        assert!(clap_err(&["--pass-device-specs", "false"]).contains("false"));
    }

    /// `--help` says what the code does with IMEX ids: only an empty list
    /// passes; `0` is refused with the reason.
    #[test]
    fn imex_help_matches_what_is_refused() {
        use clap::CommandFactory;
        let help = T::command().render_long_help().to_string();
        assert!(help.contains("only an empty list is accepted"), "{help}");
        assert!(!help.contains("then ignored"), "{help}");
        let refused = apply(&flags(&["--imex-channel-ids", "0"]), "version: v1\n")
            .expect_err("IMEX channel 0 is refused");
        assert!(
            refused.contains("IMEX channels are not supported"),
            "{refused}"
        );
        let invalid = apply(&flags(&["--imex-channel-ids", "1"]), "version: v1\n")
            .expect_err("IMEX channel 1 is invalid");
        assert!(
            invalid.contains("channelIDs must be [] or [0]"),
            "{invalid}"
        );
    }

    #[test]
    fn string_and_list_flags_and_aliases() {
        let f = flags(&[
            "--mig-strategy=mixed",
            "--nvidia-driver-root",
            "/run/nvidia/driver",
            "--nvidia-dev-root=/",
            "--device-list-strategy=envvar,cdi-cri",
            "--device-list-strategy",
            "volume-mounts",
            "--device-id-strategy=index",
            "--cdi-annotation-prefix=cdi.example.com/",
            "--nvidia-ctk-path=/ctk",
            "--container-driver-root=/drv",
            "--mps-root=/mps",
            "--shared-devices-allocation-policy=packed",
            "--device-discovery-strategy=nvml",
        ]);
        assert_eq!(
            f,
            ConfigFlags {
                mig: MigStrategyFlag {
                    mig_strategy: Some("mixed".into()),
                },
                nvidia_driver_root: Some("/run/nvidia/driver".into()),
                nvidia_dev_root: Some("/".into()),
                naming: DeviceNamingFlags {
                    device_list_strategy: Some(vec![
                        "envvar".into(),
                        "cdi-cri".into(),
                        "volume-mounts".into()
                    ]),
                    device_id_strategy: Some("index".into()),
                },
                cdi_annotation_prefix: Some("cdi.example.com/".into()),
                nvidia_cdi_hook_path: Some("/ctk".into()),
                driver_root_ctr_path: Some("/drv".into()),
                mps: MpsRootFlag {
                    mps_root: Some("/mps".into()),
                },
                shared_devices_allocation_policy: Some("packed".into()),
                device_discovery_strategy: Some("nvml".into()),
                ..ConfigFlags::default()
            }
        );
        let c = apply(&f, "").unwrap();
        assert_eq!(c.flags.mig_strategy, MigStrategy::Mixed);
        assert_eq!(c.flags.nvidia_driver_root, "/run/nvidia/driver");
        assert_eq!(c.flags.dev_root(), "/");
        assert_eq!(c.flags.mps_root, "/mps");
        assert_eq!(c.flags.device_discovery_strategy, "nvml");
        let p = &c.flags.plugin;
        assert_eq!(
            p.device_list_strategy,
            vec![
                DeviceListStrategy::Envvar,
                DeviceListStrategy::CdiCri,
                DeviceListStrategy::VolumeMounts
            ]
        );
        assert_eq!(p.device_id_strategy, DeviceIdStrategy::Index);
        assert_eq!(p.cdi_annotation_prefix, "cdi.example.com/");
        assert_eq!(p.nvidia_ctk_path, "/ctk");
        assert_eq!(p.container_driver_root, "/drv");
        assert_eq!(p.shared_devices_allocation_policy, AllocationPolicy::Packed);
        let canonical = flags(&[
            "--driver-root=/a",
            "--dev-root=/b",
            "--nvidia-cdi-hook-path=/c",
            "--driver-root-ctr-path=/d",
        ]);
        assert_eq!(canonical.nvidia_driver_root.as_deref(), Some("/a"));
        assert_eq!(canonical.nvidia_dev_root.as_deref(), Some("/b"));
        assert_eq!(canonical.nvidia_cdi_hook_path.as_deref(), Some("/c"));
        assert_eq!(canonical.driver_root_ctr_path.as_deref(), Some("/d"));
    }

    #[test]
    fn precedence_flag_over_file_over_default() {
        let file = "flags: {migStrategy: mixed, failOnInitError: false, plugin: {deviceIDStrategy: index}}";
        let c = apply(&flags(&["--mig-strategy=single"]), file).unwrap();
        assert_eq!(c.flags.mig_strategy, MigStrategy::Single);
        assert!(!c.flags.fail_on_init_error, "file value kept");
        assert_eq!(c.flags.plugin.device_id_strategy, DeviceIdStrategy::Index);
        let c = apply(&flags(&[]), file).unwrap();
        assert_eq!(c.flags.mig_strategy, MigStrategy::Mixed);
        let c = apply(&flags(&["--fail-on-init-error"]), file).unwrap();
        assert!(c.flags.fail_on_init_error);
        let c = apply(&flags(&[]), "").unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn env_fallbacks_only_when_unset() {
        let env = |k: &str| match k {
            "NVIDIA_CTK_PATH" => Some("/env/ctk".to_string()),
            "CONTAINER_DRIVER_ROOT" => Some("/env/root".to_string()),
            _ => None,
        };
        let c = flags(&[]).apply_with_env(Config::default(), env).unwrap();
        assert_eq!(c.flags.plugin.nvidia_ctk_path, "/env/ctk");
        assert_eq!(c.flags.plugin.container_driver_root, "/env/root");
        let c = flags(&["--nvidia-cdi-hook-path=/flag/ctk"])
            .apply_with_env(Config::default(), env)
            .unwrap();
        assert_eq!(c.flags.plugin.nvidia_ctk_path, "/flag/ctk");
        let empty = |_: &str| Some(String::new());
        let c = flags(&[]).apply_with_env(Config::default(), empty).unwrap();
        assert_eq!(c.flags.plugin.nvidia_ctk_path, "/usr/bin/nvidia-ctk");
    }

    #[test]
    fn invalid_override_values() {
        let mps = "sharing: {mps: {resources: [{name: gpu, replicas: 2}]}}";
        for (args, file, expected) in [
            (
                &["--mig-strategy=all"][..],
                "",
                "--mig-strategy: unknown MIG strategy: all",
            ),
            (
                &["--device-list-strategy=envvar,bogus"][..],
                "",
                "--device-list-strategy: invalid --device-list-strategy option: invalid strategy: bogus",
            ),
            (
                &["--device-id-strategy=serial"][..],
                "",
                "--device-id-strategy: invalid --device-id-strategy option: serial",
            ),
            (
                &["--shared-devices-allocation-policy=spread"][..],
                "",
                "--shared-devices-allocation-policy: invalid --shared-devices-allocation-policy option: spread",
            ),
            (
                &["--device-discovery-strategy=cuda"][..],
                "",
                "--device-discovery-strategy: invalid --device-discovery-strategy option cuda",
            ),
            (
                &["--device-discovery-strategy=tegra"][..],
                "",
                "--device-discovery-strategy: device discovery strategy tegra is not supported by gpu-slicer: it \
                 finds GPUs through NVML only, and Tegra's integrated GPUs (Jetson, IGX) are not NVML devices; use \
                 auto or nvml, or keep NVIDIA's plugin on Tegra nodes",
            ),
            (
                &["--imex-channel-ids=0"][..],
                "",
                "--imex-channel-ids: IMEX channels are not supported by gpu-slicer: a container would not get \
                 /dev/nvidia-caps-imex-channels/channel0; remove imex.channelIDs (or set it to []), or keep \
                 NVIDIA's plugin on nodes whose workloads need IMEX",
            ),
            (
                &["--imex-channel-ids=1,2"][..],
                "",
                "--imex-channel-ids: invalid IMEX channel IDs: invalid IMEX config: channelIDs must be [] or [0]; found [1 2]",
            ),
            (
                &["--mig-strategy=mixed", "--mps-root=/mps"][..],
                mps,
                "unable to validate flags: using --mig-strategy=mixed is not supported with MPS",
            ),
            (
                &[][..],
                mps,
                "unable to validate flags: using MPS requires --mps-root to be specified",
            ),
        ] {
            assert_eq!(apply(&flags(args), file).unwrap_err(), expected, "{args:?}");
        }
        // The cross checks see the overridden values.
        assert!(apply(&flags(&["--mps-root=/mps"]), mps).is_ok());
        let mixed_file = format!("flags: {{migStrategy: mixed}}\n{mps}");
        assert!(
            apply(
                &flags(&["--mig-strategy=single", "--mps-root=/m"]),
                &mixed_file
            )
            .is_ok()
        );
    }
}
