//! What every gpu-slicer process sets up the same way: logging and the
//! async runtime.

use std::future::Future;

/// One malloc arena for the whole process. glibc gives each thread that
/// allocates an arena of its own (the tokio blocking pool, notify's thread,
/// the XID thread); each holds pages it rarely returns. The daemon does its
/// work on one runtime thread, so the arenas buy no parallelism, only
/// resident memory (measured in docs/benchmarks.md). Call before any other
/// thread starts.
pub fn use_one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable; no other thread
    // exists yet, and an unknown option is ignored (it returns 0).
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Log format (`--log-format`, `LOG_FORMAT`).
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr, filtered by `RUST_LOG` (else `default_level`).
///
/// `RUST_LOG` takes levels and per-target levels (`debug`,
/// `info,gpu_slicer_daemon::node=debug`): tracing-subscriber's `Targets`,
/// not its regex-based `EnvFilter`, which would add the regex engine to the
/// binary every GPU node runs. A value that does not parse is reported and
/// `default_level` applies.
pub fn init_tracing(format: LogFormat, default_level: &str) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let default = || {
        default_level
            .parse::<Targets>()
            .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO))
    };
    let (filter, bad) = match std::env::var("RUST_LOG") {
        Ok(value) if !value.trim().is_empty() => match value.parse::<Targets>() {
            Ok(filter) => (filter, None),
            Err(e) => (
                default(),
                Some(format!(
                    "RUST_LOG={value:?} is not a log filter ({e}); using {default_level}"
                )),
            ),
        },
        _ => (default(), None),
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(layer.with_filter(filter))
            .init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(layer.json().with_filter(filter))
            .init(),
    }
    if let Some(message) = bad {
        tracing::warn!("{message}");
    }
}

/// Runs `future` on one runtime thread: the daemon's work is I/O and
/// microseconds of decisions, and every extra thread costs resident memory
/// on every GPU node (blocking work, NVML, still runs on tokio's blocking
/// pool).
pub fn block_on<E, F>(future: F) -> Result<(), E>
where
    F: Future<Output = Result<(), E>>,
    E: From<RuntimeError>,
{
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RuntimeError)?
        .block_on(future)
}

/// The async runtime could not be started (threads, file descriptors).
#[derive(Debug, thiserror::Error)]
#[error("cannot start the async runtime: {0}")]
pub struct RuntimeError(#[source] pub std::io::Error);

/// NVIDIA's config-manager signals the process whose argv[0] is exactly
/// `nvidia-device-plugin`, and NVIDIA's manifests run it without a
/// subcommand.
pub fn invoked_as_nvidia_device_plugin(argv0: Option<&std::ffi::OsStr>) -> bool {
    argv0
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == "nvidia-device-plugin")
}

/// For the people's commands, whose errors are messages.
impl From<RuntimeError> for String {
    fn from(e: RuntimeError) -> String {
        e.to_string()
    }
}
