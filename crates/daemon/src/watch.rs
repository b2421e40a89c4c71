//! The one file-system watcher: a directory, not recursively, through
//! notify (inotify on Linux). The device-plugin directory (kubelet restarts,
//! deleted sockets) and the config file's or config set's directory (a
//! ConfigMap swaps a `..data` symlink, so the directory is what changes)
//! are both watched with it.

use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

/// What happened in a watched directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirEvent {
    /// An entry appeared (created, or renamed into the directory).
    Created(PathBuf),
    /// An entry went away (removed, or renamed out of the directory).
    Removed(PathBuf),
    /// An entry's content or metadata changed.
    Changed(PathBuf),
    /// The watch itself failed; the receiver re-checks everything.
    Error(String),
}

/// Watches `dir` and forwards what happens in it. Access events (reads) are
/// dropped: a reader of the watched files would otherwise wake itself for
/// ever. The returned watcher must be kept alive for events to flow.
pub fn watch_dir(
    dir: &Path,
) -> notify::Result<(
    notify::RecommendedWatcher,
    mpsc::UnboundedReceiver<DirEvent>,
)> {
    use notify::event::{ModifyKind, RenameMode};
    use notify::{EventKind, RecursiveMode, Watcher};
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let event = match res {
            Ok(event) => event,
            Err(e) => {
                let _ = tx.send(DirEvent::Error(e.to_string()));
                return;
            }
        };
        let kind: fn(PathBuf) -> DirEvent = match event.kind {
            EventKind::Create(_) | EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                DirEvent::Created
            }
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                DirEvent::Removed
            }
            EventKind::Access(_) => return,
            _ => DirEvent::Changed,
        };
        for path in event.paths {
            let _ = tx.send(kind(path));
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok((watcher, rx))
}
