//! The one file-system watcher: one notify (inotify) instance, and so one
//! watcher thread, for the whole process. The device-plugin directory
//! (kubelet restarts, deleted sockets) and the config file's or config
//! set's directory (a ConfigMap swaps a `..data` symlink, so the directory
//! is what changes) are both watched through it, not recursively; each
//! watch gets the events of its own directory on its own channel.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
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

impl DirEvent {
    /// The entry it is about (`None` for a failed watch).
    pub fn path(&self) -> Option<&Path> {
        match self {
            DirEvent::Created(p) | DirEvent::Removed(p) | DirEvent::Changed(p) => Some(p),
            DirEvent::Error(_) => None,
        }
    }
}

/// One caller's interest in one directory.
struct Route {
    id: u64,
    dir: PathBuf,
    events: mpsc::UnboundedSender<DirEvent>,
}

struct Shared {
    watcher: RecommendedWatcher,
    routes: Arc<Mutex<Vec<Route>>>,
    next_id: u64,
}

/// The process's watcher, created on first use.
static SHARED: OnceLock<Mutex<Option<Shared>>> = OnceLock::new();

/// A lock that survives a panicked holder: the routes stay consistent
/// (every change to them is a single push or retain).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Keeps a directory watched; dropping it stops the events (and the
/// directory's inotify watch, once no one else watches it).
pub struct DirWatch {
    id: u64,
    dir: PathBuf,
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        let Some(shared) = SHARED.get() else { return };
        let mut shared = lock(shared);
        let Some(shared) = shared.as_mut() else {
            return;
        };
        let last = {
            let mut routes = lock(&shared.routes);
            routes.retain(|r| r.id != self.id);
            !routes.iter().any(|r| r.dir == self.dir)
        };
        // Not under the routes lock: `unwatch` waits for notify's thread,
        // which may be waiting for that lock to dispatch an event.
        if last {
            let _ = shared.watcher.unwatch(&self.dir);
        }
    }
}

/// Watches `dir` and forwards what happens in it. Access events (reads) are
/// dropped: a reader of the watched files would otherwise wake itself for
/// ever. Events flow while the returned [`DirWatch`] lives.
pub fn watch_dir(dir: &Path) -> notify::Result<(DirWatch, mpsc::UnboundedReceiver<DirEvent>)> {
    let mut guard = lock(SHARED.get_or_init(|| Mutex::new(None)));
    let shared = match guard.as_mut() {
        Some(shared) => shared,
        None => {
            let routes: Arc<Mutex<Vec<Route>>> = Arc::default();
            let watcher = notify::recommended_watcher({
                let routes = routes.clone();
                move |event: notify::Result<notify::Event>| dispatch(&routes, event)
            })?;
            guard.insert(Shared {
                watcher,
                routes,
                next_id: 0,
            })
        }
    };
    let dir = dir.to_path_buf();
    let already = lock(&shared.routes).iter().any(|r| r.dir == dir);
    if !already {
        shared.watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    shared.next_id += 1;
    let id = shared.next_id;
    lock(&shared.routes).push(Route {
        id,
        dir: dir.clone(),
        events: tx,
    });
    Ok((DirWatch { id, dir }, rx))
}

/// Runs on notify's thread: each event to the watches of its directory.
fn dispatch(routes: &Mutex<Vec<Route>>, event: notify::Result<notify::Event>) {
    use notify::EventKind;
    use notify::event::{ModifyKind, RenameMode};
    let routes = lock(routes);
    let event = match event {
        Ok(event) => event,
        Err(e) => {
            for route in routes.iter() {
                let _ = route.events.send(DirEvent::Error(e.to_string()));
            }
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
        let dir = path.parent();
        for route in routes.iter() {
            if dir == Some(route.dir.as_path()) || path == route.dir {
                let _ = route.events.send(kind(path.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn next(rx: &mut mpsc::UnboundedReceiver<DirEvent>) -> DirEvent {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an event within 10 s")
            .expect("channel open")
    }

    #[tokio::test]
    async fn two_directories_one_watcher_each_gets_its_own_events() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let (_wa, mut ra) = watch_dir(a.path()).unwrap();
        let (wb, mut rb) = watch_dir(b.path()).unwrap();
        std::fs::write(b.path().join("x"), "1").unwrap();
        assert_eq!(next(&mut rb).await, DirEvent::Created(b.path().join("x")));
        std::fs::write(a.path().join("y"), "1").unwrap();
        assert_eq!(next(&mut ra).await, DirEvent::Created(a.path().join("y")));
        // Nothing of b's reached a.
        while let Ok(event) = ra.try_recv() {
            assert!(
                !matches!(&event, DirEvent::Created(p) if p.starts_with(b.path())),
                "{event:?}"
            );
        }
        // A dropped watch gets nothing more, the other still does.
        drop(wb);
        std::fs::remove_file(a.path().join("y")).unwrap();
        loop {
            if next(&mut ra).await == DirEvent::Removed(a.path().join("y")) {
                break;
            }
        }
        assert!(
            rb.recv()
                .await
                .is_none_or(|e| !matches!(e, DirEvent::Removed(_)))
        );
    }
}
