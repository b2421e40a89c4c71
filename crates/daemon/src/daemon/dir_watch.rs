//! Watching the kubelet's device-plugin directory across its deletion and
//! re-creation (a kubelet restart).

use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use crate::host::watch::watch_dir;

/// The device-plugin directory's watch, kept on the directory there now.
///
/// Deleting the directory ends its inotify watch with it; a directory
/// created again at the path (a kubelet start creates it) is another one.
/// The deletion is seen as an event (the watch's own, or the parent's), and
/// the new directory is watched as soon as it is there: its parent is
/// watched too, so its creation is an event as well. Without this, later
/// kubelet restarts would go unseen until a stream dropped.
///
/// The deletion event, not the directory's inode, tells: a new directory
/// often gets the inode number just freed.
pub(super) struct DirectoryWatch {
    dir: PathBuf,
    /// The watched directory was deleted; the one at the path (if any) is
    /// not watched yet.
    stale: bool,
    watch: Option<crate::host::watch::DirWatch>,
    pub(super) events: mpsc::UnboundedReceiver<crate::host::watch::DirEvent>,
    _parent: Option<crate::host::watch::DirWatch>,
    pub(super) parent_events: Option<mpsc::UnboundedReceiver<crate::host::watch::DirEvent>>,
}

impl DirectoryWatch {
    pub(super) fn start(dir: &Path) -> notify::Result<Self> {
        let (watch, events) = watch_dir(dir)?;
        let (parent, parent_events) = match dir.parent().filter(|p| p.is_dir()) {
            Some(parent) => match watch_dir(parent) {
                Ok((w, rx)) => (Some(w), Some(rx)),
                Err(e) => {
                    tracing::warn!(
                        "cannot watch {}: {e}; if {} is deleted and created again, it is watched again on the next wake-up",
                        parent.display(),
                        dir.display()
                    );
                    (None, None)
                }
            },
            None => (None, None),
        };
        Ok(DirectoryWatch {
            dir: dir.to_path_buf(),
            stale: false,
            watch: Some(watch),
            events,
            _parent: parent,
            parent_events,
        })
    }

    /// Notes an event about the directory itself (from its own watch or
    /// its parent's), then watches the new directory if it is due.
    pub(super) fn saw(&mut self, event: &crate::host::watch::DirEvent) {
        if event.path() == Some(self.dir.as_path())
            && matches!(event, crate::host::watch::DirEvent::Removed(_))
        {
            self.stale = true;
        }
        self.rearm_if_replaced();
    }

    /// Watches the directory again when the watched one was deleted and a
    /// new one is at the path. Safe against the watcher's own clean-up of
    /// the old watch: it handles the deletion (read before the creation)
    /// completely before it takes a new watch.
    pub(super) fn rearm_if_replaced(&mut self) {
        if !self.stale || !self.dir.is_dir() {
            return;
        }
        // The old watch goes first: the shared watcher skips a directory it
        // believes it watches.
        drop(self.watch.take());
        match watch_dir(&self.dir) {
            Ok((watch, events)) => {
                tracing::info!(
                    "{} was created again; watching the new directory",
                    self.dir.display()
                );
                self.watch = Some(watch);
                self.events = events;
                self.stale = false;
            }
            Err(e) => tracing::warn!("cannot watch {} again: {e}", self.dir.display()),
        }
    }
}
