//! What makes the daemon reload or stop: signals, and changes to the config
//! file.
//!
//! A ConfigMap volume updates a file by swapping a `..data` symlink in the
//! file's directory, so the directory is watched, not the file; a reload is
//! asked for only when the file's content really changed (one swap produces
//! several events).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// SIGHUP asks for a reload (NVIDIA's contract, used by its config-manager);
/// SIGTERM, SIGINT and SIGQUIT stop the daemon.
pub fn handle_signals(
    reload: mpsc::Sender<()>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = quit.recv() => "SIGQUIT",
                _ = hup.recv() => {
                    tracing::info!("Received SIGHUP, restarting.");
                    let _ = reload.try_send(());
                    continue;
                }
            };
            tracing::info!("Received signal \"{name}\", shutting down.");
            shutdown.cancel();
            break;
        }
    });
    Ok(())
}

/// Watches `dir`; after each burst of events has settled (no event for
/// `settle`, see [`crate::daemon::Timings`]), reads `state` and
/// asks for a reload when it differs from the last one seen. Must be called
/// inside the tokio runtime. The returned watcher must be kept alive.
fn watch_settled<S, F>(
    dir: &Path,
    state: F,
    what: String,
    settle: Duration,
    reload: mpsc::Sender<()>,
) -> notify::Result<crate::host::watch::DirWatch>
where
    S: PartialEq + Send + 'static,
    F: Fn() -> S + Send + 'static,
{
    let (watcher, mut rx) = crate::host::watch::watch_dir(dir)?;
    let mut last = state();
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Wait until no event has come for `settle`.
            loop {
                match tokio::time::timeout(settle, rx.recv()).await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let now = state();
            if now != last {
                tracing::info!("{what} changed, reloading.");
                last = now;
                let _ = reload.try_send(());
            }
        }
    });
    Ok(watcher)
}

/// Watches `file` and asks for a reload whenever its content changes. Its
/// directory is watched, so a ConfigMap's symlink swap is seen.
pub fn watch_config_file(
    file: &Path,
    settle: Duration,
    reload: mpsc::Sender<()>,
) -> notify::Result<crate::host::watch::DirWatch> {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let path: PathBuf = file.to_path_buf();
    let what = path.display().to_string();
    watch_settled(
        &dir,
        move || std::fs::read(&path).ok(),
        what,
        settle,
        reload,
    )
}

/// Watches a directory of named configs (a mounted ConfigMap, see
/// [`crate::cluster::node`]) and asks for a reload whenever a config is added,
/// removed or changed: any of those can change which one is selected, or
/// what it says. The returned watcher must be kept alive.
pub fn watch_config_dir(
    dir: &Path,
    settle: Duration,
    reload: mpsc::Sender<()>,
) -> notify::Result<crate::host::watch::DirWatch> {
    let dir_path = dir.to_path_buf();
    let what = dir_path.display().to_string();
    watch_settled(dir, move || snapshot(&dir_path), what, settle, reload)
}

/// Every config's name and content (unreadable ones as `None`).
fn snapshot(dir: &Path) -> std::collections::BTreeMap<String, Option<Vec<u8>>> {
    crate::cluster::node::list_configs(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|name| {
            let content = std::fs::read(dir.join(&name)).ok();
            (name, content)
        })
        .collect()
}
