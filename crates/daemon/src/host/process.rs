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

/// Raises the open-file soft limit to the hard limit, so that many idle
/// HTTP clients cannot use up the descriptors the kubelet side needs (a
/// 1,024 soft limit was exhausted by 1,074 connections). Returns the
/// (before, after) soft limits.
pub fn raise_fd_limit() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, limit.rlim_cur))
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
/// `info,gpu_slicer_daemon::cluster::node=debug`): tracing-subscriber's `Targets`,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fd_soft_limit_is_raised_to_the_hard_limit() {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: reads into the struct passed.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        let hard = limit.rlim_max;
        // Lower the soft limit first (this test process only), so the raise
        // has something to do wherever it runs.
        limit.rlim_cur = hard.min(256);
        // SAFETY: sets a limit at or below the hard limit.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
        let (before, after) = raise_fd_limit().expect("raise");
        assert_eq!(before, hard.min(256));
        assert_eq!(after, hard);
    }
}
