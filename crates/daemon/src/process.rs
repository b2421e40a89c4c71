//! What every gpu-slicer process sets up the same way: logging and the
//! async runtime.

use std::future::Future;

/// Log format (`--log-format`, `LOG_FORMAT`).
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr, filtered by `RUST_LOG` (else `default_level`).
pub fn init_tracing(format: LogFormat, default_level: &str) {
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

/// Runs `future` on one runtime thread: the daemon's work is I/O and
/// microseconds of decisions, and every extra thread costs resident memory
/// on every GPU node (blocking work, NVML, still runs on tokio's blocking
/// pool).
pub fn block_on<F: Future<Output = Result<(), String>>>(future: F) -> Result<(), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?
        .block_on(future)
}

/// NVIDIA's config-manager signals the process whose argv[0] is exactly
/// `nvidia-device-plugin`, and NVIDIA's manifests run it without a
/// subcommand.
pub fn invoked_as_nvidia_device_plugin(argv0: Option<&std::ffi::OsStr>) -> bool {
    argv0
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == "nvidia-device-plugin")
}
