//! `gpu-slicer-daemon`: the binary a GPU node runs (also installed as
//! `nvidia-device-plugin`). It carries the daemon only; the people's
//! commands (`plan`, `demo`, `lint`, `karpenter`) live in `gpu-slicer`.

use std::process::ExitCode;

use clap::Parser;
use gpu_slicer_daemon::args::RunArgs;
use gpu_slicer_daemon::host::process::{LogFormat, block_on, init_tracing, use_one_malloc_arena};

#[derive(Parser)]
#[command(
    name = "gpu-slicer-daemon",
    version,
    about = "The gpu-slicer device plugin daemon: MIG slices and time-sliced replicas of NVIDIA GPUs for the kubelet"
)]
struct Cli {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(flatten)]
    run: RunArgs,
}

/// The daemon takes no subcommand; a leading `run` (as `gpu-slicer run`
/// takes it, and as scripts written for it pass it) is accepted and dropped.
fn args() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "run") {
        args.remove(1);
    }
    args
}

fn main() -> ExitCode {
    use_one_malloc_arena();
    let cli = Cli::parse_from(args());
    init_tracing(cli.log_format, "info");
    match block_on(gpu_slicer_daemon::run::run(cli.run.into_options())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
