//! What makes the daemon reload or stop: signals, and changes to the config
//! file.
//!
//! A ConfigMap volume updates a file by swapping a `..data` symlink in the
//! file's directory, so the directory is watched, not the file; a reload is
//! asked for only when the file's content really changed (one swap produces
//! several events).

use std::path::{Path, PathBuf};

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

/// Watches `file` and asks for a reload whenever its content changes.
/// The returned watcher must be kept alive.
pub fn watch_config_file(
    file: &Path,
    reload: mpsc::Sender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let file: PathBuf = file.to_path_buf();
    let mut last = std::fs::read(&file).ok();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_err() {
            return;
        }
        let now = std::fs::read(&file).ok();
        if now.is_some() && now != last {
            tracing::info!("{} changed, reloading.", file.display());
            last = now;
            let _ = reload.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Watches a directory of named configs (a mounted ConfigMap, see
/// [`crate::node`]) and asks for a reload whenever a config is added,
/// removed or changed: any of those can change which one is selected, or
/// what it says. The returned watcher must be kept alive.
pub fn watch_config_dir(
    dir: &Path,
    reload: mpsc::Sender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let dir_path = dir.to_path_buf();
    let mut last = snapshot(&dir_path);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_err() {
            return;
        }
        let now = snapshot(&dir_path);
        if now != last {
            tracing::info!("{} changed, reloading.", dir_path.display());
            last = now;
            let _ = reload.try_send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Every config's name and content (unreadable ones as `None`).
fn snapshot(dir: &Path) -> std::collections::BTreeMap<String, Option<Vec<u8>>> {
    crate::node::list_configs(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|name| {
            let content = std::fs::read(dir.join(&name)).ok();
            (name, content)
        })
        .collect()
}
