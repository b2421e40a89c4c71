//! gpu-slicer command line: parse, set up logging, dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use gpu_slicer::commands::karpenter::{self as karpenter_cmd, Output, OverlayOptions};
use gpu_slicer::commands::{
    self,
    demo::DemoOptions,
    run::{NodeOptions, RunOptions},
};
use gpu_slicer::config::ConfigFlags;
use gpu_slicer::gpu::simulated;
use gpu_slicer::plan::plan;

#[derive(Parser)]
#[command(
    name = "gpu-slicer",
    version,
    about = "Share NVIDIA GPUs in Kubernetes: MIG slices and time-sliced replicas"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
// Parsed once per process: boxing variants would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run the device plugin daemon.
    Run {
        /// Configuration file (NVIDIA's `version: v1` schema).
        #[arg(long, env = "CONFIG_FILE")]
        config_file: Option<PathBuf>,
        /// Directory of named configs (a mounted ConfigMap, one key per config, e.g.
        /// /available-configs); the node label --node-config-label picks one, as with
        /// NVIDIA's config-manager. Needs --node-name to read the label.
        #[arg(
            long,
            env = "CONFIG_DIR",
            value_name = "DIR",
            conflicts_with = "config_file"
        )]
        config_dir: Option<PathBuf>,
        /// This node's name (from the downward API: spec.nodeName).
        #[arg(long, env = "NODE_NAME")]
        node_name: Option<String>,
        /// The node label whose value names the config in --config-dir.
        #[arg(
            long,
            env = "NODE_LABEL",
            default_value = gpu_slicer::node::CONFIG_LABEL,
            value_name = "LABEL"
        )]
        node_config_label: String,
        /// The config in --config-dir to use when the node has no label; without it:
        /// the config named `default`, else the only config, else none.
        #[arg(long, env = "DEFAULT_CONFIG", value_name = "NAME")]
        default_config: Option<String>,
        /// Remove this taint from the node once every resource is registered with the
        /// kubelet (a Karpenter start-up taint). Needs --node-name and `patch` on nodes.
        #[arg(long, env = "STARTUP_TAINT", value_name = "KEY")]
        startup_taint: Option<String>,
        /// Kubernetes API server URL, without credentials (tests, `kubectl proxy`);
        /// default: the in-cluster service account or a kubeconfig.
        #[arg(long, env = "KUBE_API_URL", value_name = "URL", hide_short_help = true)]
        kube_api_url: Option<String>,
        /// The kubelet's registration socket; empty: do not register.
        #[arg(long, env = "KUBELET_SOCKET")]
        kubelet_socket: Option<String>,
        /// Directory for the plugin sockets (the kubelet's device-plugin directory).
        #[arg(
            long,
            env = "DEVICE_PLUGIN_PATH",
            default_value = "/var/lib/kubelet/device-plugins"
        )]
        device_plugin_path: PathBuf,
        /// Simulate GPUs: a cloud instance type (p4d.24xlarge) or a topology file.
        /// Without it, GPUs are discovered through NVML.
        #[arg(long, value_name = "INSTANCE|TOPOLOGY.yaml")]
        simulate: Option<String>,
        /// MIG layout for simulated GPUs (all-disabled, all-1g.5gb, all-balanced, ...).
        #[arg(long, value_name = "NAME")]
        mig_config: Option<String>,
        /// NVML library to load (default: libnvidia-ml.so.1 under the container driver root,
        /// then the dynamic loader's search path).
        #[arg(long, env = "NVML_LIB", value_name = "PATH")]
        nvml_lib: Option<PathBuf>,
        /// The driver's MIG capability minors, read to find each MIG device's
        /// /dev/nvidia-caps nodes.
        #[arg(
            long,
            env = "MIG_MINORS_FILE",
            value_name = "PATH",
            default_value = "/proc/driver/nvidia-caps/mig-minors",
            hide_short_help = true
        )]
        mig_minors: PathBuf,
        /// Write a CDI spec for every GPU and MIG device into this directory (e.g. /var/run/cdi)
        /// when a CDI device-list strategy is on; off when unset.
        #[arg(long, env = "CDI_SPEC_DIR", value_name = "DIR")]
        cdi_spec_dir: Option<PathBuf>,
        /// Write node labels (GPU Feature Discovery names) to this Node Feature Discovery
        /// feature file, e.g. /etc/kubernetes/node-feature-discovery/features.d/gpu-slicer.
        #[arg(long, env = "FEATURE_FILE", value_name = "PATH")]
        feature_file: Option<PathBuf>,
        /// Serve /metrics, /healthz and /readyz on this address (e.g. 127.0.0.1:9400); off when unset.
        #[arg(long, env = "METRICS_ADDRESS", value_name = "ADDR:PORT")]
        metrics_address: Option<std::net::SocketAddr>,
        #[command(flatten)]
        flags: ConfigFlags,
    },
    /// Show the whole path on a simulated node with a stand-in kubelet.
    Demo {
        #[arg(long, default_value = "p4d.24xlarge")]
        instance: String,
        #[arg(long, default_value = "all-balanced")]
        mig_config: String,
        #[arg(long, env = "CONFIG_FILE")]
        config_file: Option<PathBuf>,
        #[command(flatten)]
        flags: ConfigFlags,
    },
    /// Print what a node would advertise, without starting anything; with
    /// prices, the cost per slice-hour; with --workload, rank instance types
    /// and layouts for a mix of pods by cost.
    Plan {
        /// A cloud instance type (p4d.24xlarge) or a topology file.
        #[arg(
            long,
            value_name = "INSTANCE|TOPOLOGY.yaml",
            required_unless_present = "workload"
        )]
        instance: Option<String>,
        #[arg(long, value_name = "NAME")]
        mig_config: Option<String>,
        #[arg(long, env = "CONFIG_FILE")]
        config_file: Option<PathBuf>,
        /// On-demand price table replacing the built-in one (see docs/karpenter.md).
        #[arg(long, value_name = "FILE")]
        prices: Option<PathBuf>,
        /// A mix of pods to place (list of {name, count, slice} or {name, count, sharedGpu, memoryGiB}):
        /// ranks instance/layout choices by cost.
        #[arg(long, value_name = "FILE", conflicts_with = "instance")]
        workload: Option<PathBuf>,
        /// NodePool name prefix used in the overlays that --workload prints.
        #[arg(long, value_name = "NAME", default_value = "gpu-slices")]
        nodepool: String,
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
        #[command(flatten)]
        flags: ConfigFlags,
    },
    /// Karpenter helpers.
    Karpenter {
        #[command(subcommand)]
        command: KarpenterCommand,
    },
    /// Check NodePools, EC2NodeClasses, NodeOverlays, gpu-slicer ConfigMaps and
    /// workloads together (YAML files, or Markdown files' ```yaml blocks).
    /// Exits non-zero when there are errors.
    Lint {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
}

#[derive(Subcommand)]
enum KarpenterCommand {
    /// Print NodeOverlays (karpenter.sh/v1alpha1) declaring exactly what gpu-slicer advertises.
    Overlays {
        /// gpu-slicer config: a `version: v1` file or a ConfigMap manifest (one or several configs).
        #[arg(long, value_name = "FILE")]
        config_file: Option<PathBuf>,
        /// Which config of a ConfigMap with several (default: the NodePool's
        /// nvidia.com/device-plugin.config label, else config.yaml / default / the only one).
        #[arg(long, value_name = "NAME")]
        config_name: Option<String>,
        /// MIG layout (default: the NodePool's nvidia.com/mig.config label; none: MIG off).
        #[arg(long, value_name = "LAYOUT")]
        mig_config: Option<String>,
        /// NodePool name(s) (default: every NodePool of --nodepool-file).
        #[arg(long, value_name = "NAME")]
        nodepool: Vec<String>,
        /// File(s) holding the NodePool(s): their requirements choose the instance types.
        #[arg(long, value_name = "FILE")]
        nodepool_file: Vec<PathBuf>,
        /// Instance type(s) (default: every preset the NodePool allows, else every preset with the layout).
        #[arg(long, value_name = "TYPE")]
        instance_type: Vec<String>,
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
}

impl From<OutputFormat> for Output {
    fn from(o: OutputFormat) -> Output {
        match o {
            OutputFormat::Text => Output::Text,
            OutputFormat::Json => Output::Json,
        }
    }
}

fn init_tracing(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// NVIDIA's config-manager signals the process whose argv[0] is exactly
/// `nvidia-device-plugin`, and NVIDIA's manifests run it without a
/// subcommand: under that name, `run` is implied.
fn args() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked_as_nvidia = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == "nvidia-device-plugin");
    let has_subcommand = args.get(1).is_some_and(|a| {
        [
            "run",
            "demo",
            "plan",
            "karpenter",
            "lint",
            "help",
            "--help",
            "-h",
            "--version",
            "-V",
        ]
        .iter()
        .any(|c| a == *c)
    });
    if invoked_as_nvidia && !has_subcommand {
        args.insert(1, "run".into());
    }
    args
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(args());
    let result = match cli.command {
        Command::Plan {
            instance,
            mig_config,
            config_file,
            prices,
            workload,
            nodepool,
            output,
            flags,
        } => {
            init_tracing(cli.log_format, "warn");
            if let Some(workload) = workload {
                karpenter_cmd::workload_command(
                    &workload,
                    prices.as_deref(),
                    &nodepool,
                    output.into(),
                )
                .map(|text| print!("{text}"))
            } else {
                let instance = instance.unwrap_or_default();
                commands::config_for_layout(config_file.as_deref(), &flags, mig_config.as_deref())
                    .and_then(|config| {
                        let table = karpenter_cmd::price_table(prices.as_deref())?;
                        let inventory = simulated::load(&instance, mig_config.as_deref())
                            .map_err(|e| e.to_string())?;
                        let plan = plan(&inventory, &config);
                        for d in &plan.diagnostics {
                            eprintln!("{d}");
                        }
                        match output {
                            OutputFormat::Text => {
                                print!("{}", commands::plan::render(&plan, &inventory));
                                print!(
                                    "{}",
                                    gpu_slicer::karpenter::cost::render_costs(
                                        &instance, &plan, &inventory, &table
                                    )
                                );
                            }
                            OutputFormat::Json => println!(
                                "{}",
                                commands::plan::render_json(&instance, &plan, &inventory, &table)
                            ),
                        }
                        Ok(())
                    })
            }
        }
        Command::Karpenter {
            command:
                KarpenterCommand::Overlays {
                    config_file,
                    config_name,
                    mig_config,
                    nodepool,
                    nodepool_file,
                    instance_type,
                    output,
                },
        } => {
            init_tracing(cli.log_format, "warn");
            let options = OverlayOptions {
                config_file,
                config_name,
                mig_config,
                nodepools: nodepool,
                nodepool_files: nodepool_file,
                instance_types: instance_type,
            };
            karpenter_cmd::overlays_command(&options, output.into()).map(|text| print!("{text}"))
        }
        Command::Lint { files, output } => {
            init_tracing(cli.log_format, "warn");
            match karpenter_cmd::lint_command(&files, output.into()) {
                Ok((text, failed)) => {
                    print!("{text}");
                    if failed {
                        return ExitCode::FAILURE;
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        Command::Run {
            config_file,
            config_dir,
            node_name,
            node_config_label,
            default_config,
            startup_taint,
            kube_api_url,
            kubelet_socket,
            device_plugin_path,
            simulate,
            mig_config,
            nvml_lib,
            mig_minors,
            cdi_spec_dir,
            feature_file,
            metrics_address,
            flags,
        } => {
            init_tracing(cli.log_format, "info");
            block_on(commands::run::run(RunOptions {
                config_file,
                kubelet_socket: kubelet_socket.map(PathBuf::from),
                device_plugin_path,
                simulate,
                mig_config,
                nvml_lib,
                mig_minors: Some(mig_minors),
                cdi_spec_dir,
                feature_file,
                metrics_address,
                flags,
                node: NodeOptions {
                    node_name,
                    config_dir,
                    config_label: node_config_label,
                    default_config,
                    kube_api_url,
                    startup_taint,
                },
            }))
        }
        Command::Demo {
            instance,
            mig_config,
            config_file,
            flags,
        } => {
            init_tracing(cli.log_format, "warn");
            block_on(commands::demo::run(DemoOptions {
                instance,
                mig_config,
                config_file,
                flags,
            }))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// One runtime thread: the daemon's work is I/O and microseconds of
/// decisions, and every extra thread costs resident memory on every GPU node
/// (blocking work, NVML, still runs on tokio's blocking pool).
fn block_on<F: std::future::Future<Output = Result<(), String>>>(future: F) -> Result<(), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?
        .block_on(future)
}
