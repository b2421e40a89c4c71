//! The daemon's command line, declared once: the daemon binary parses it
//! directly, and the people's `gpu-slicer run` flattens the same struct.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use gpu_slicer_core::config::ConfigFlags;

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
    /// With --apply-mig-layouts: the kubelet's PodResources socket, asked
    /// which pods hold devices before a GPU is changed.
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
    pub flags: ConfigFlags,
}

/// `--metrics-address`: `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT`, the host
/// name resolved once, here, at start (its first address is served).
fn metrics_address(value: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = value.parse::<SocketAddr>() {
        return Ok(address);
    }
    let write = "write HOST:PORT, e.g. 0.0.0.0:9401 (every address), localhost:9401 or [::1]:9401";
    let no_port = value.ends_with(']') || !value.contains(':');
    let (host, port) = match value.rsplit_once(':') {
        Some(split) if !no_port => split,
        _ => return Err(format!("no port; {write}")),
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("'{port}' is not a port number (0 to 65535); {write}"))?;
    if host.is_empty() {
        return Err(format!("no host before ':{port}'; {write}"));
    }
    if host.contains(':') {
        return Err(format!(
            "an IPv6 address takes brackets ([{host}]:{port}), or the address is not valid; {write}"
        ));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let resolved = (host, port).to_socket_addrs().map_err(|e| {
        format!(
            "cannot resolve the host name '{host}': {}; write an IP address, or a name this node resolves",
            gpu_slicer_core::messages::io_error(&e)
        )
    })?;
    resolved.into_iter().next().ok_or_else(|| {
        format!("the host name '{host}' resolves to no address; write an IP address")
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
            flags: self.flags,
            node: NodeOptions {
                node_name: self.node_name,
                config_dir: self.config_dir,
                config_label: self.node_config_label,
                default_config: self.default_config,
                fallback_strategies: self.fallback_strategies,
                kube_api_url: self.kube_api_url,
                startup_taint: self.startup_taint,
                follow_mig_manager: self.follow_mig_manager,
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

#[cfg(test)]
mod tests {
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
