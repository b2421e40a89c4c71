//! gpu-slicer command line: parse, set up logging, dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgGroup, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use gpu_slicer::commands::karpenter::{self as karpenter_cmd, Output, OverlayOptions};
use gpu_slicer::commands::plan::PlanOptions;
use gpu_slicer::commands::{self, demo::DemoOptions};
use gpu_slicer_core::config::ConfigFlags;
use gpu_slicer_daemon::args::{DeviceNamingArgs, MigStrategyArg, MpsRootArg, RunArgs};
use gpu_slicer_daemon::host::process::{
    LogFormat, block_on, init_tracing, invoked_as_nvidia_device_plugin,
};

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

#[derive(Subcommand)]
// Parsed once per process: boxing variants would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run the device plugin daemon (the DaemonSet runs the same code as
    /// the leaner `gpu-slicer-daemon` binary).
    Run(RunArgs),
    /// Show the whole path on a simulated node with a stand-in kubelet.
    #[command(after_help = ASSUMPTIONS_HELP)]
    Demo {
        /// A cloud instance type or a topology file: the simulated node.
        #[arg(
            long,
            value_name = "INSTANCE|TOPOLOGY.yaml",
            default_value = "p4d.24xlarge"
        )]
        instance: String,
        /// MIG layout (default: all-balanced where the instance's GPUs have
        /// MIG, all-disabled where they do not).
        #[arg(long, value_name = "NAME", value_parser = layout_arg)]
        mig_config: Option<String>,
        /// NVIDIA's configuration file (version: v1), or a ConfigMap manifest holding such configs.
        #[arg(long, env = "CONFIG_FILE", value_name = "FILE")]
        config_file: Option<PathBuf>,
        /// Which config of a ConfigMap with several (default: the only one, else config.yaml, else default).
        #[arg(long, value_name = "NAME", requires = "config_file")]
        config_name: Option<String>,
        #[command(flatten)]
        flags: DemoFlags,
    },
    /// Print what a node would advertise, without starting anything; with
    /// prices, the cost per slice-hour; with --workload, rank instance types
    /// and layouts for a mix of pods by cost.
    #[command(group(ArgGroup::new("node").required(true).args(["instance", "workload"])))]
    #[command(after_help = ASSUMPTIONS_HELP)]
    Plan {
        /// A cloud instance type (p4d.24xlarge) or a topology file.
        #[arg(long, value_name = "INSTANCE|TOPOLOGY.yaml")]
        instance: Option<String>,
        /// MIG layout (all-balanced, all-1g.5gb, 1g.5gb=2, ...; none or all-disabled: MIG off).
        #[arg(long, value_name = "NAME", value_parser = layout_arg, conflicts_with = "workload")]
        mig_config: Option<String>,
        /// NVIDIA's configuration file (version: v1), or a ConfigMap manifest holding such configs.
        #[arg(long, env = "CONFIG_FILE", value_name = "FILE")]
        config_file: Option<PathBuf>,
        /// Which config of a ConfigMap with several (default: the only one, else config.yaml, else default).
        #[arg(
            long,
            value_name = "NAME",
            requires = "config_file",
            conflicts_with = "workload"
        )]
        config_name: Option<String>,
        /// On-demand price table replacing the built-in one (see docs/karpenter.md).
        #[arg(long, value_name = "FILE")]
        prices: Option<PathBuf>,
        /// A mix of pods to place (list of {name, count, slice} or {name, count, sharedGpu, memoryGiB}):
        /// ranks instance/layout choices by cost.
        #[arg(long, value_name = "FILE", conflicts_with = "instance")]
        workload: Option<PathBuf>,
        /// NodePool name prefix used in the overlays that --workload prints.
        #[arg(
            long,
            value_name = "NAME",
            default_value = "gpu-slices",
            conflicts_with = "instance"
        )]
        nodepool: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
        #[command(flatten)]
        flags: PlanFlags,
    },
    /// Show this node's GPUs from NVML (read-only): MIG mode current and
    /// pending, the MIG profile table with possible placements, the MIG
    /// devices.
    Gpus {
        #[command(flatten)]
        nvml: NvmlArgs,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
    /// MIG layouts on this node.
    Mig {
        #[command(subcommand)]
        command: MigCommand,
    },
    /// Karpenter helpers.
    Karpenter {
        #[command(subcommand)]
        command: KarpenterCommand,
    },
    /// Replay nodes and pods (kubectl get nodes,pods -o yaml) through demand-driven MIG
    /// changes under three policies, and compare.
    Simulate(commands::simulate::SimulateArgs),
    /// Check NodePools, EC2NodeClasses, NodeOverlays, gpu-slicer ConfigMaps and
    /// workloads together (YAML files, or Markdown files' ```yaml blocks).
    /// Exits non-zero when there are errors.
    Lint {
        /// YAML or Markdown files, checked together (a NodePool's label may name a config in another file); - reads standard input.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: OutputFormat,
    },
}

/// NVIDIA's flags that change what `plan` computes; the daemon's others
/// (driver paths, device-list strategies, ...) change nothing it prints.
/// Each is declared once, in the daemon's command-line groups, and mapped
/// onto the core's plain [`ConfigFlags`].
#[derive(clap::Args)]
struct PlanFlags {
    #[command(flatten)]
    mig: MigStrategyArg,
    #[command(flatten)]
    mps: MpsRootArg,
}

impl From<PlanFlags> for ConfigFlags {
    fn from(f: PlanFlags) -> ConfigFlags {
        ConfigFlags {
            mig: f.mig.into(),
            mps: f.mps.into(),
            ..ConfigFlags::default()
        }
    }
}

/// NVIDIA's flags that change what `demo` shows: what is advertised and
/// what an admitted pod's container receives.
#[derive(clap::Args)]
struct DemoFlags {
    #[command(flatten)]
    mig: MigStrategyArg,
    #[command(flatten)]
    naming: DeviceNamingArgs,
}

impl From<DemoFlags> for ConfigFlags {
    fn from(f: DemoFlags) -> ConfigFlags {
        ConfigFlags {
            mig: f.mig.into(),
            naming: f.naming.into(),
            ..ConfigFlags::default()
        }
    }
}

/// Where the people's NVML commands (`gpus`, `mig apply`) find the driver.
#[derive(clap::Args)]
struct NvmlArgs {
    /// NVML library to load (default: libnvidia-ml.so.1 under the driver
    /// root, then the dynamic loader).
    #[arg(long, env = "NVML_LIB", value_name = "PATH")]
    nvml_lib: Option<PathBuf>,
    /// Where the driver root is, as this process sees it.
    #[arg(
        long,
        env = "DRIVER_ROOT_CTR_PATH",
        value_name = "DIR",
        default_value = "/"
    )]
    driver_root_ctr_path: PathBuf,
}

impl NvmlArgs {
    fn options(self, json: bool) -> commands::gpus::GpusOptions {
        commands::gpus::GpusOptions {
            nvml_lib: self.nvml_lib,
            driver_root: self.driver_root_ctr_path,
            json,
        }
    }
}

#[derive(Subcommand)]
enum MigCommand {
    /// Give this node's GPUs a MIG layout through NVML (all-balanced,
    /// all-1g.5gb, 1g.5gb=2,3g.20gb=1, all-disabled).
    ///
    /// Changes only the GPUs whose layout differs: MIG mode, then the GPU
    /// and compute instances, undoing a half-built GPU on failure. Refuses a
    /// GPU with compute processes or devices that pods hold (the kubelet's
    /// PodResources), unless --force. With --dry-run, prints the NVML
    /// operations and why, and changes nothing. Run it on the node (root);
    /// in a cluster, gpu-slicer's DaemonSet does this from the
    /// nvidia.com/mig.config label (--apply-mig-layouts).
    Apply {
        /// A named layout or a custom profile=count list (none: MIG off).
        #[arg(value_parser = layout_arg)]
        layout: String,
        /// A mig-parted config file (`version: v1`, `mig-configs:`, as the
        /// GPU Operator's default-mig-parted-config holds): its configs
        /// replace the built-in layouts.
        #[arg(long, env = "MIG_PARTED_CONFIG_FILE", value_name = "FILE")]
        config_file: Option<PathBuf>,
        /// Print the NVML operations and why; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Change GPUs even while compute processes run on them or pods hold
        /// their devices (their work is lost; NVML may still refuse to
        /// destroy an instance in use).
        #[arg(long)]
        force: bool,
        /// The kubelet's PodResources socket: GPUs whose devices pods hold
        /// are refused (not checked when the socket does not exist).
        #[arg(
            long,
            env = "POD_RESOURCES_SOCKET",
            value_name = "PATH",
            default_value = gpu_slicer_daemon::kubelet::pod_resources::DEFAULT_SOCKET
        )]
        pod_resources_socket: PathBuf,
        #[command(flatten)]
        nvml: NvmlArgs,
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
        #[arg(long, value_name = "LAYOUT", value_parser = layout_arg)]
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
        /// Output format.
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

/// Why a command failed; printed as `error: ...` before exiting 1.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Plan(#[from] commands::plan::PlanError),
    /// `plan --instance` printed the plan and found errors in it.
    #[error(
        "{count} error{} above: this node would not advertise what the configuration asks for",
        if *count == 1 { "" } else { "s" }
    )]
    PlanErrors { count: usize },
    #[error(transparent)]
    Workload(#[from] karpenter_cmd::WorkloadError),
    /// `plan --workload` printed the ranking; these pods fit no type.
    #[error("{}", .0.join("\nerror: "))]
    Unplaced(Vec<String>),
    #[error(transparent)]
    Overlays(#[from] karpenter_cmd::OverlaysError),
    #[error(transparent)]
    Lint(#[from] karpenter_cmd::LintError),
    #[error(transparent)]
    Gpus(#[from] commands::gpus::GpusError),
    #[error(transparent)]
    Demo(#[from] commands::demo::DemoError),
    #[error(transparent)]
    Run(#[from] gpu_slicer_daemon::run::RunError),
    #[error(transparent)]
    Simulate(#[from] commands::simulate::SimulateError),
}

/// `plan --help` and `demo --help`: what they choose when the user did not.
const ASSUMPTIONS_HELP: &str = "Assumptions, each printed as `# assumed:` (plan) or `assumed:` (demo): \
where a GPU has MIG enabled and neither --config-file nor --mig-strategy (MIG_STRATEGY) chooses a \
strategy, migStrategy mixed (NVIDIA's default, none, would advertise the MIG-enabled GPUs whole, and \
no workload can run on them); of a ConfigMap with several configs and no --config-name, the one \
NVIDIA's config-manager would pick. A plan whose devices no workload can use (MIG enabled under \
migStrategy none) is an error.";

/// NVIDIA's config-manager signals the process whose argv[0] is exactly
/// `nvidia-device-plugin`, and NVIDIA's manifests run it without a
/// subcommand: under that name, `run` is implied.
/// Every layout argument goes through here, so `none` (documented as "MIG
/// off") means `all-disabled` in every command and every comparison.
fn layout_arg(value: &str) -> Result<String, std::convert::Infallible> {
    Ok(gpu_slicer_core::gpu::catalog::canonical_layout_name(value).to_string())
}

fn args() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked_as_nvidia = invoked_as_nvidia_device_plugin(args.first().map(|a| a.as_os_str()));
    let has_subcommand = args.get(1).is_some_and(|a| {
        [
            "run",
            "demo",
            "plan",
            "gpus",
            "mig",
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

/// Writes a command's output. A reader that stopped reading (`| head`) is
/// not an error of the command: the rest goes nowhere, with no panic.
fn emit(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

/// Parses the command line. `plan --workload` refuses the options only
/// `plan --instance` uses when they are on the command line; from the
/// environment (`CONFIG_FILE` in the daemon's container) they stay unused.
fn parse() -> Cli {
    let args = args();
    let matches = Cli::command()
        .try_get_matches_from(&args)
        .unwrap_or_else(|e| without_far_suggestion(e, &args).exit());
    if let Some(("plan", plan)) = matches.subcommand()
        && plan.contains_id("workload")
    {
        for (id, flag) in [
            ("config_file", "--config-file"),
            ("mig_strategy", "--mig-strategy"),
            ("mps_root", "--mps-root"),
        ] {
            if plan.value_source(id) == Some(ValueSource::CommandLine) {
                clap::Error::raw(
                    ErrorKind::ArgumentConflict,
                    format!(
                        "the argument '--workload <FILE>' cannot be used with '{flag}' \
                         (it is for --instance)\n"
                    ),
                )
                .exit();
            }
        }
    }
    if let Some((command @ ("plan" | "demo"), sub)) = matches.subcommand() {
        check_mig_strategy(command, sub);
    }
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// `--mig-strategy` (or `MIG_STRATEGY`) of `plan` and `demo` is checked
/// while parsing, so that a typo lists the valid values as clap does for
/// its own enums. (The daemon keeps NVIDIA's message.)
fn check_mig_strategy(command: &str, sub: &clap::ArgMatches) {
    use gpu_slicer_core::config::MigStrategy;
    let Some(value) = sub.get_one::<String>("mig_strategy") else {
        return;
    };
    if value.parse::<MigStrategy>().is_ok() {
        return;
    }
    let valid: Vec<&str> = MigStrategy::ALL.iter().map(|(_, name)| *name).collect();
    let given = match sub.value_source("mig_strategy") {
        Some(ValueSource::EnvVariable) => "the environment variable MIG_STRATEGY".to_string(),
        _ => "'--mig-strategy <STRATEGY>'".to_string(),
    };
    clap::Error::raw(
        ErrorKind::InvalidValue,
        format!(
            "invalid value '{value}' for {given}\n  [possible values: {}]\n\n\
             For more information, try 'gpu-slicer {command} --help'.\n",
            valid.join(", ")
        ),
    )
    .exit();
}

/// clap suggests the most similar argument for an unknown one, however far
/// it is (`plan --replicas` got "a similar argument exists: '--prices'").
/// Kept only for a likely typo (at most 2 edits, or a third of the name);
/// otherwise the error says to read the command's help, and for the
/// config file's keys where they are set.
fn without_far_suggestion(mut error: clap::Error, args: &[std::ffi::OsString]) -> clap::Error {
    use clap::error::{ContextKind, ContextValue};
    if error.kind() != ErrorKind::UnknownArgument {
        return error;
    }
    let Some(ContextValue::String(given)) = error.get(ContextKind::InvalidArg).cloned() else {
        return error;
    };
    let given_name = given.trim_start_matches('-');
    let given_name = given_name.split('=').next().unwrap_or(given_name);
    let close = match error.get(ContextKind::SuggestedArg) {
        Some(ContextValue::String(suggested)) => {
            let suggested = suggested.trim_start_matches('-');
            let suggested = suggested.split_whitespace().next().unwrap_or(suggested);
            let distance = strsim::levenshtein(given_name, suggested);
            distance <= 2 || distance * 3 <= given_name.len().max(suggested.len())
        }
        _ => return error,
    };
    if close {
        return error;
    }
    error.remove(ContextKind::SuggestedArg);
    let command: Vec<String> = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .take_while(|a| !a.starts_with('-'))
        .collect();
    // clap's usage line named the far suggestion as if it were required.
    let mut sub = Cli::command();
    sub.build();
    for name in &command {
        let Some(next) = sub.find_subcommand(name).cloned() else {
            break;
        };
        sub = next;
    }
    error.insert(
        ContextKind::Usage,
        ContextValue::StyledStr(sub.render_usage()),
    );
    let mut tips = Vec::new();
    if let Some(key) = config_file_key(given_name) {
        tips.push(format!(
            "{given} is not a flag: it is the config file's {key}; write it in a config file \
             and pass --config-file"
        ));
    }
    tips.push(format!(
        "'gpu-slicer {} --help' lists the arguments",
        command.join(" ")
    ));
    error.insert(
        ContextKind::Suggested,
        ContextValue::StyledStrs(tips.into_iter().map(Into::into).collect()),
    );
    error
}

/// Config file keys that people try as flags.
fn config_file_key(flag: &str) -> Option<&'static str> {
    Some(match flag {
        "replicas" => "sharing.timeSlicing.resources[].replicas (or sharing.mps)",
        "rename-by-default" | "renameByDefault" => "sharing.timeSlicing.renameByDefault",
        "fail-requests-greater-than-one" | "failRequestsGreaterThanOne" => {
            "sharing.timeSlicing.failRequestsGreaterThanOne"
        }
        _ => return None,
    })
}

fn main() -> ExitCode {
    let cli = parse();
    let result = match cli.command {
        Command::Plan {
            instance,
            mig_config,
            config_file,
            config_name,
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
                .map_err(CliError::from)
                .and_then(|report| {
                    emit(&report.text);
                    match report.errors {
                        errors if errors.is_empty() => Ok(()),
                        errors => Err(CliError::Unplaced(errors)),
                    }
                })
            } else {
                let options = PlanOptions {
                    instance: instance.unwrap_or_default(),
                    mig_config,
                    config_file,
                    config_name,
                    prices,
                    json: matches!(output, OutputFormat::Json),
                    flags: flags.into(),
                };
                commands::plan::run(&options)
                    .map_err(CliError::from)
                    .and_then(|report| {
                        emit(&report.text);
                        match report.errors {
                            0 => Ok(()),
                            count => Err(CliError::PlanErrors { count }),
                        }
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
            karpenter_cmd::overlays_command(&options, output.into())
                .map(|text| emit(&text))
                .map_err(CliError::from)
        }
        Command::Lint { files, output } => {
            init_tracing(cli.log_format, "warn");
            match karpenter_cmd::lint_command(&files, output.into()) {
                Ok((text, failed)) => {
                    emit(&text);
                    if failed {
                        return ExitCode::FAILURE;
                    }
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::Simulate(args) => {
            init_tracing(cli.log_format, "warn");
            commands::simulate::run(&args)
                .map(|text| emit(&text))
                .map_err(CliError::from)
        }
        Command::Gpus { nvml, output } => {
            init_tracing(cli.log_format, "warn");
            commands::gpus::run(&nvml.options(matches!(output, OutputFormat::Json)))
                .map(|text| emit(&text))
                .map_err(CliError::from)
        }
        Command::Mig {
            command:
                MigCommand::Apply {
                    layout,
                    config_file,
                    dry_run,
                    force,
                    pod_resources_socket,
                    nvml,
                },
        } => {
            init_tracing(cli.log_format, "warn");
            if dry_run {
                commands::gpus::mig_apply_dry_run(
                    &nvml.options(false),
                    config_file.as_deref(),
                    &layout,
                )
                .map(|text| emit(&text))
                .map_err(CliError::from)
            } else {
                commands::gpus::mig_apply(
                    &nvml.options(false),
                    config_file.as_deref(),
                    &layout,
                    force,
                    &pod_resources_socket,
                )
                .map(|text| emit(&text))
                .map_err(CliError::from)
            }
        }
        Command::Run(args) => {
            init_tracing(cli.log_format, "info");
            block_on(gpu_slicer_daemon::run::run(args.into_options())).map_err(CliError::from)
        }
        Command::Demo {
            instance,
            mig_config,
            config_file,
            config_name,
            flags,
        } => {
            init_tracing(cli.log_format, "warn");
            block_on(commands::demo::run(DemoOptions {
                instance,
                mig_config,
                config_file,
                config_name,
                flags: flags.into(),
            }))
            .map_err(CliError::from)
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every option and argument `--help` lists, in every command, says in
    /// one line what it is for.
    #[test]
    fn every_listed_option_has_a_one_line_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                if help.trim().is_empty() || help.contains('\n') {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "gpu-slicer", &mut missing);
        assert!(missing.is_empty(), "no one-line help: {missing:?}");
    }
}
