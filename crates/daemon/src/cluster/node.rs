//! Per-node configuration chosen by a node label, and the start-up taint.
//!
//! NVIDIA's config-manager contract, built in: a ConfigMap with one key per
//! named config is mounted as a directory (`--config-dir`, e.g.
//! `/available-configs`); the node label `nvidia.com/device-plugin.config`
//! names the key to use. [`select_config`] is the pure rule,
//! [`NodeWatcher`] follows the daemon's own Node (the one watcher of it:
//! the config label, MIG Manager's labels and the MIG applier all read its
//! [`NodeView`]), and [`LabelSelectedConfig`] ties the two together for the
//! daemon's `SetupSource`. Unlike NVIDIA's sidecar, which exits on a label value that
//! names no config, a bad value is refused like an invalid config: the
//! running configuration stays and the refusal is logged and counted.
//!
//! [`remove_taint`] removes a taint from the Node (the start-up handshake:
//! Karpenter marks a node initialized, and schedules on it, only once its
//! start-up taints are gone).
//!
//! Least RBAC (a ClusterRole bound to the daemon's ServiceAccount):
//!
//! ```yaml
//! rules:
//! - apiGroups: [""]
//!   resources: ["nodes"]
//!   verbs: ["get", "list", "watch"]   # --config-dir with the node label
//! # only with --startup-taint:
//! - apiGroups: [""]
//!   resources: ["nodes"]
//!   verbs: ["patch"]
//! ```
//!
//! Kubernetes RBAC cannot restrict `list`/`watch` to one object by name for a
//! field-selected watch, so `list`/`watch` apply to all nodes; the daemon
//! only ever asks for its own (`fieldSelector=metadata.name=<node>`).

pub use gpu_slicer_core::node_labels::MigLevels;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::api::{KubeClient, KubeError, Node, NodeWatch, WatchEvent};
use gpu_slicer_core::backoff::Backoff;

/// NVIDIA's label for the per-node config name (declared in the core).
pub use gpu_slicer_core::node_labels::DEVICE_PLUGIN_CONFIG as CONFIG_LABEL;
/// NVIDIA's `named` fallback: the key used when no label and no
/// `DEFAULT_CONFIG` say otherwise.
pub const DEFAULT_KEY: &str = "default";

/// Why a config was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The node label names it.
    Label,
    /// No label; `--default-config` / `DEFAULT_CONFIG` names it.
    DefaultConfig,
    /// No label, no default; the key `default` exists (NVIDIA's `named`).
    Named,
    /// No label, no default, no `default` key; the only key (NVIDIA's `single`).
    Single,
}

/// NVIDIA's config-manager fallbacks (`--fallback-strategies`,
/// `FALLBACK_STRATEGIES`), tried in order when the node has no label and no
/// default config is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FallbackStrategy {
    /// The config named `default`.
    Named,
    /// The only config, when there is exactly one.
    Single,
    /// No config file: defaults and flags only.
    Empty,
}

/// The fallbacks when none are given: NVIDIA's chart's `named, single`,
/// then `empty`, which is what gpu-slicer always did.
pub const DEFAULT_FALLBACKS: [FallbackStrategy; 3] = [
    FallbackStrategy::Named,
    FallbackStrategy::Single,
    FallbackStrategy::Empty,
];

/// The outcome of [`select_config`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// A file in the config directory.
    Config { name: String, reason: Reason },
    /// Nothing fits: no config file, defaults and flags only (NVIDIA's `empty`).
    Empty,
}

impl Selection {
    /// The file name in the config directory, if any.
    pub fn name(&self) -> Option<&str> {
        match self {
            Selection::Config { name, .. } => Some(name),
            Selection::Empty => None,
        }
    }
}

impl std::fmt::Display for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selection::Config { name, reason } => {
                let why = match reason {
                    Reason::Label => "named by the node label",
                    Reason::DefaultConfig => "the default config",
                    Reason::Named => "no label: the config named `default`",
                    Reason::Single => "no label: the only config",
                };
                write!(f, "config {name} ({why})")
            }
            Selection::Empty => write!(
                f,
                "no config file (no label, no default config, and not exactly one config): defaults and flags only"
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    #[error(
        "node label {label}={value} names no config; available: {}; keeping the running config",
        list(available)
    )]
    UnknownLabelValue {
        label: String,
        value: String,
        available: Vec<String>,
    },
    #[error(
        "default config {value} (--default-config / DEFAULT_CONFIG) names no config; available: {}; keeping the running config",
        list(available)
    )]
    UnknownDefault {
        value: String,
        available: Vec<String>,
    },
    #[error(
        "the node has no label {label}, no default config is set (--default-config / DEFAULT_CONFIG), and no fallback strategy ({}) found a config among: {}; set the label, set a default config, or add `empty` to --fallback-strategies / FALLBACK_STRATEGIES to run with defaults and flags only",
        strategies(tried),
        list(available)
    )]
    NoFallback {
        label: String,
        tried: Vec<FallbackStrategy>,
        available: Vec<String>,
    },
}

fn strategies(tried: &[FallbackStrategy]) -> String {
    if tried.is_empty() {
        return "none given".into();
    }
    let names: Vec<&str> = tried
        .iter()
        .map(|s| match s {
            FallbackStrategy::Named => "named",
            FallbackStrategy::Single => "single",
            FallbackStrategy::Empty => "empty",
        })
        .collect();
    names.join(", ")
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".into()
    } else {
        names.join(", ")
    }
}

/// NVIDIA's config-manager rule. `available` are the file names in the
/// config directory (see [`list_configs`]); `label_key` is only used in
/// messages. A label value picks that config; with no label (or an empty
/// value): `default` (DEFAULT_CONFIG) if set, else the `fallbacks` in
/// order (the key `default`, the only key, no config); none matching is an
/// error, as in NVIDIA's config-manager.
pub fn select_config(
    available: &[String],
    label_key: &str,
    label: Option<&str>,
    default: Option<&str>,
    fallbacks: &[FallbackStrategy],
) -> Result<Selection, SelectionError> {
    let mut sorted = available.to_vec();
    sorted.sort();
    sorted.dedup();
    let has = |name: &str| sorted.iter().any(|a| a == name);
    if let Some(value) = label.filter(|v| !v.is_empty()) {
        return if has(value) {
            Ok(Selection::Config {
                name: value.into(),
                reason: Reason::Label,
            })
        } else {
            Err(SelectionError::UnknownLabelValue {
                label: label_key.into(),
                value: value.into(),
                available: sorted,
            })
        };
    }
    if let Some(value) = default.filter(|v| !v.is_empty()) {
        return if has(value) {
            Ok(Selection::Config {
                name: value.into(),
                reason: Reason::DefaultConfig,
            })
        } else {
            Err(SelectionError::UnknownDefault {
                value: value.into(),
                available: sorted,
            })
        };
    }
    for fallback in fallbacks {
        match fallback {
            FallbackStrategy::Named if has(DEFAULT_KEY) => {
                return Ok(Selection::Config {
                    name: DEFAULT_KEY.into(),
                    reason: Reason::Named,
                });
            }
            FallbackStrategy::Single => {
                if let [only] = sorted.as_slice() {
                    return Ok(Selection::Config {
                        name: only.clone(),
                        reason: Reason::Single,
                    });
                }
            }
            FallbackStrategy::Empty => return Ok(Selection::Empty),
            FallbackStrategy::Named => {}
        }
    }
    Err(SelectionError::NoFallback {
        label: label_key.into(),
        tried: fallbacks.to_vec(),
        available: sorted,
    })
}

/// The config names in a mounted ConfigMap directory: regular files (or
/// links to them), without the volume's own `..data`-style entries.
pub fn list_configs(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with("..") {
            continue;
        }
        // Follows links: a ConfigMap key is a link into `..data/`.
        if std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file()) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Why no config file could be chosen from `--config-dir`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot read the config directory {dir}: {reason}")]
    Unreadable { dir: String, reason: String },
    /// A thread panicked while choosing; the daemon cannot tell what it
    /// runs with.
    #[error("selection lock poisoned")]
    Poisoned,
    #[error(transparent)]
    Selection(#[from] SelectionError),
}

/// The daemon's view of `--config-dir`: the directory, the label's latest
/// value (from the [`NodeWatcher`], through [`follow`]) and the default; [`Self::resolve`] is
/// called from the `SetupSource` on every (re)load.
pub struct LabelSelectedConfig {
    pub dir: PathBuf,
    pub label_key: String,
    pub default: Option<String>,
    pub fallbacks: Vec<FallbackStrategy>,
    /// `None` inside: the node has no such label.
    pub label: watch::Receiver<Option<String>>,
    /// The last selection handed out; `None` before the first load.
    last: Mutex<Option<Selection>>,
}

impl LabelSelectedConfig {
    pub fn new(
        dir: PathBuf,
        label_key: String,
        default: Option<String>,
        fallbacks: Vec<FallbackStrategy>,
        label: watch::Receiver<Option<String>>,
    ) -> Self {
        LabelSelectedConfig {
            dir,
            label_key,
            default,
            fallbacks,
            label,
            last: Mutex::new(None),
        }
    }

    /// The config file to load now (`None`: no file, defaults and flags).
    /// A label value that names no config is an error, except at the very
    /// first load, where there is no running config to keep: then the
    /// label is ignored (logged as an error) and the fallbacks apply.
    pub fn resolve(&self) -> Result<Option<PathBuf>, ResolveError> {
        let available = list_configs(&self.dir).map_err(|e| ResolveError::Unreadable {
            dir: self.dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let label = self.label.borrow().clone();
        let mut last = self.last.lock().map_err(|_| ResolveError::Poisoned)?;
        let selection = match select_config(
            &available,
            &self.label_key,
            label.as_deref(),
            self.default.as_deref(),
            &self.fallbacks,
        ) {
            Ok(selection) => selection,
            Err(e @ SelectionError::UnknownLabelValue { .. }) if last.is_none() => {
                tracing::error!("{e}; starting without the label");
                select_config(
                    &available,
                    &self.label_key,
                    None,
                    self.default.as_deref(),
                    &self.fallbacks,
                )?
            }
            Err(e) => return Err(e.into()),
        };
        if last.as_ref() != Some(&selection) {
            tracing::info!("Using {selection} from {}", self.dir.display());
        }
        let path = selection.name().map(|name| self.dir.join(name));
        *last = Some(selection);
        Ok(path)
    }
}

/// Errors making a client.
/// A Kubernetes client: the in-cluster service account by default, or an
/// explicit API URL without credentials (tests, or a local `kubectl proxy`).
pub fn client(api_url: Option<&str>) -> Result<Arc<KubeClient>, KubeError> {
    match api_url {
        Some(url) => KubeClient::with_url(url),
        None => KubeClient::in_cluster(),
    }
    .map(Arc::new)
}

/// Back-off between failed API calls: 1 s doubling to 60 s.
fn api_backoff() -> ApiBackoff {
    ApiBackoff(Backoff::new(
        Duration::from_secs(1),
        Duration::from_secs(60),
    ))
}

/// [`Backoff`] with a shutdown-aware wait.
struct ApiBackoff(Backoff);

impl ApiBackoff {
    fn reset(&mut self) {
        self.0.reset();
    }
    /// Sleeps; false when shut down meanwhile.
    async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.0.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

/// What the daemon knows of its Node's labels: the one [`NodeWatcher`]
/// publishes it, and everything that follows a label (the config choice,
/// MIG Manager's labels, the MIG applier) reads it from there.
///
/// Followers act on levels, not on the changes they happen to see: a
/// `watch` channel keeps only the latest value, so two label steps that
/// arrive together are seen as one. What the counts are for: a follower that
/// must know whether a label may have changed since it last acted (even
/// back to the same value) compares [`NodeView::revision`] with the one it
/// acted at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    /// False until the Node was read once.
    pub synced: bool,
    pub labels: BTreeMap<String, String>,
    /// Per label: how many changes of its value the watcher saw (set,
    /// changed or removed; the first read counts none).
    pub changes: BTreeMap<String, u64>,
    /// How many times the Node was read afresh after a gap in watching it
    /// (an error, an expired resourceVersion): what changed in a gap is not
    /// seen one change at a time, so any label may have changed meanwhile.
    pub relists: u64,
    /// The Node's annotations as last read (the MIG target's among them);
    /// followers compare values, so no change counts are kept.
    pub annotations: BTreeMap<String, String>,
}

impl NodeView {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }

    /// Grows whenever one of `keys` may have changed: each change seen, and
    /// each gap in watching.
    pub fn revision(&self, keys: &[&str]) -> u64 {
        let seen: u64 = keys
            .iter()
            .map(|k| self.changes.get(*k).copied().unwrap_or(0))
            .sum();
        seen + self.relists
    }

    /// Takes the labels of a Node read by a get (`relist`: after a gap) or
    /// reported by the watch; returns the keys whose value changed, with
    /// the old value.
    pub fn observe(
        &mut self,
        labels: &BTreeMap<String, String>,
        relist: bool,
    ) -> Vec<(String, Option<String>)> {
        let first = !self.synced;
        self.synced = true;
        if relist && !first {
            self.relists += 1;
        }
        let mut changed = Vec::new();
        for (key, value) in labels {
            if self.labels.get(key) != Some(value) {
                changed.push((key.clone(), self.labels.get(key).cloned()));
            }
        }
        for (key, value) in &self.labels {
            if !labels.contains_key(key) {
                changed.push((key.clone(), Some(value.clone())));
            }
        }
        if !first {
            for (key, _) in &changed {
                *self.changes.entry(key.clone()).or_default() += 1;
            }
        }
        self.labels = labels.clone();
        changed
    }
}

/// Where the Node watcher is: kube-runtime's watcher, for one object, on
/// this crate's small client. Each [`step`] does one request or reads one
/// event and says where it ends up.
pub enum WatcherState {
    /// Nothing is known: read the Node (a get; the list of one object).
    /// `gap`: after an error, so the read is a relist.
    Empty { gap: bool },
    /// Read or watched up to `version`: open a watch from there.
    Listed { version: String },
    /// A watch is open.
    Watching {
        version: String,
        stream: NodeWatch,
        started: tokio::time::Instant,
    },
}

/// What one [`step`] saw.
#[derive(Debug)]
pub enum WatcherEvent {
    /// The Node as a get returned it; `relist`: after a gap in watching.
    Listed { node: Node, relist: bool },
    /// The Node as the watch reported it (added or modified).
    Applied(Node),
    /// The watch reported the Node deleted.
    Deleted(Node),
    /// The server ended the watch (its timeout) after `lasted`; the next
    /// step watches again from the last version.
    WatchEnded { lasted: Duration },
    /// A call failed; the next step reads the Node afresh.
    Error(String),
}

/// One step of the watcher (kube-runtime's `step`): from `state`, one get,
/// one watch request or one watch event; returns what was seen and the
/// next state. Errors always go back to [`WatcherState::Empty`] (a relist):
/// a watch that broke may have missed changes, and only a fresh read shows
/// the labels as they are. Waiting between failed steps is the caller's.
pub async fn step(
    client: &KubeClient,
    name: &str,
    state: WatcherState,
) -> (Option<WatcherEvent>, WatcherState) {
    const GAP: WatcherState = WatcherState::Empty { gap: true };
    match state {
        WatcherState::Empty { gap } => match client.get_node(name).await {
            Ok(node) => {
                let version = node.metadata.resource_version.clone();
                (
                    Some(WatcherEvent::Listed { node, relist: gap }),
                    WatcherState::Listed { version },
                )
            }
            Err(e) => (
                Some(WatcherEvent::Error(format!("cannot get node {name}: {e}"))),
                WatcherState::Empty { gap },
            ),
        },
        WatcherState::Listed { version } => match client.watch_node(name, &version).await {
            Ok(stream) => (
                None,
                WatcherState::Watching {
                    version,
                    stream,
                    started: tokio::time::Instant::now(),
                },
            ),
            Err(e) => (
                Some(WatcherEvent::Error(format!(
                    "cannot watch node {name}: {e}"
                ))),
                GAP,
            ),
        },
        WatcherState::Watching {
            version,
            mut stream,
            started,
        } => {
            let watching = |version: String, stream: NodeWatch| WatcherState::Watching {
                version,
                stream,
                started,
            };
            match stream.next().await {
                Some(Ok(WatchEvent::Added(node) | WatchEvent::Modified(node))) => {
                    let version = node.metadata.resource_version.clone();
                    (Some(WatcherEvent::Applied(node)), watching(version, stream))
                }
                Some(Ok(WatchEvent::Deleted(node))) => {
                    let version = node.metadata.resource_version.clone();
                    (Some(WatcherEvent::Deleted(node)), watching(version, stream))
                }
                Some(Ok(WatchEvent::Bookmark(version))) => (None, watching(version, stream)),
                Some(Ok(WatchEvent::Error { code, message })) => (
                    Some(WatcherEvent::Error(format!(
                        "watch of node {name} failed: {message} ({code})"
                    ))),
                    GAP,
                ),
                Some(Err(e)) => (
                    Some(WatcherEvent::Error(format!(
                        "watch of node {name} broke: {e}"
                    ))),
                    GAP,
                ),
                None => (
                    Some(WatcherEvent::WatchEnded {
                        lasted: started.elapsed(),
                    }),
                    WatcherState::Listed { version },
                ),
            }
        }
    }
}

/// A watch that ends sooner than this after it started counts as a failure
/// (back off before the next), so a server that closes at once is not hammered.
const SHORT_WATCH: Duration = Duration::from_secs(5);

/// The one watcher of the daemon's own Node: gets it, watches it, and
/// publishes its labels as a [`NodeView`] on every change; re-reads and
/// re-watches after errors with back-off; between events it only waits on
/// the open watch (no polling).
pub struct NodeWatcher {
    pub client: Arc<KubeClient>,
    pub node: String,
    /// Labels whose changes are logged (the others are only published).
    pub logged: Vec<String>,
}

impl NodeWatcher {
    /// Starts the watcher; it runs until `shutdown`. The receiver's value is
    /// not [`NodeView::synced`] until the Node was read once (see [`synced`]).
    pub fn spawn(self, shutdown: CancellationToken) -> watch::Receiver<NodeView> {
        let (tx, rx) = watch::channel(NodeView::default());
        tokio::spawn(self.run(tx, shutdown));
        rx
    }

    async fn run(self, tx: watch::Sender<NodeView>, shutdown: CancellationToken) {
        let mut backoff = api_backoff();
        let mut state = WatcherState::Empty { gap: false };
        loop {
            let (event, next) = tokio::select! {
                _ = shutdown.cancelled() => return,
                stepped = step(&self.client, &self.node, state) => stepped,
            };
            state = next;
            let read = match event {
                None => continue,
                Some(WatcherEvent::Listed { node, relist }) => {
                    if relist {
                        tracing::info!("read node {} again after a gap in watching it", self.node);
                    }
                    Some((node.metadata.labels, node.metadata.annotations, relist))
                }
                Some(WatcherEvent::Applied(node)) => {
                    backoff.reset();
                    Some((node.metadata.labels, node.metadata.annotations, false))
                }
                Some(WatcherEvent::Deleted(_)) => {
                    // Keep the labels: a re-created Node is read on the next gap.
                    tracing::warn!("node {} was deleted; keeping its last labels", self.node);
                    None
                }
                Some(WatcherEvent::WatchEnded { lasted }) => {
                    if lasted < SHORT_WATCH && !backoff.wait(&shutdown).await {
                        return;
                    }
                    None
                }
                Some(WatcherEvent::Error(e)) => {
                    tracing::warn!("{e}; retrying");
                    if !backoff.wait(&shutdown).await {
                        return;
                    }
                    None
                }
            };
            if let Some((labels, annotations, relist)) = read {
                tx.send_if_modified(|view| {
                    let first = !view.synced;
                    let before = view.clone();
                    let changed = view.observe(&labels, relist);
                    view.annotations = annotations;
                    for (key, old) in changed {
                        if !self.logged.contains(&key) {
                            continue;
                        }
                        let new = view.label(&key).unwrap_or("(absent)");
                        if first {
                            tracing::info!(node = %self.node, "node label {key}={new}");
                        } else {
                            tracing::info!(
                                node = %self.node,
                                "node label {key} changed from {} to {new}",
                                old.as_deref().unwrap_or("(absent)")
                            );
                        }
                    }
                    *view != before
                });
            }
        }
    }
}

/// Waits until the view holds the Node as read once; false when the
/// watcher stopped first (shutdown).
pub async fn synced(view: &mut watch::Receiver<NodeView>) -> bool {
    view.wait_for(|v| v.synced).await.is_ok()
}

/// Publishes `f(view)` on `tx` whenever it differs from what `tx` holds,
/// from the first read of the Node on (a caller that must have the first
/// value before it goes on sets it itself, from a synced view). Runs until
/// the watcher stops or every receiver of `tx` is gone.
pub fn follow<T, F>(mut view: watch::Receiver<NodeView>, tx: watch::Sender<T>, f: F)
where
    T: PartialEq + Send + Sync + 'static,
    F: Fn(&NodeView) -> T + Send + 'static,
{
    tokio::spawn(async move {
        if !synced(&mut view).await {
            return;
        }
        loop {
            let value = f(&view.borrow_and_update());
            tx.send_if_modified(|current| {
                if *current == value {
                    return false;
                }
                *current = value;
                true
            });
            tokio::select! {
                _ = tx.closed() => return,
                changed = view.changed() => if changed.is_err() { return },
            }
        }
    });
}

/// How many times [`remove_taint`] retries a conflicting update.
const TAINT_ATTEMPTS: usize = 5;

/// Removes every taint with key `taint_key` from the Node `node_name`.
/// Returns whether one was removed (false: the node did not carry it).
///
/// A JSON merge patch replaces `spec.taints` with the list minus that key;
/// it carries the `resourceVersion` the list was read at, so a concurrent
/// change of the Node (another controller adding a taint) makes the API
/// server answer 409 Conflict instead of losing that change; we then read
/// again and retry. Needs `patch` on nodes.
pub async fn remove_taint(
    client: &KubeClient,
    node_name: &str,
    taint_key: &str,
) -> Result<bool, KubeError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let node = client.get_node(node_name).await?;
        let taints = node.spec.taints;
        let kept: Vec<_> = taints
            .iter()
            .filter(|t| t["key"].as_str() != Some(taint_key))
            .collect();
        if kept.len() == taints.len() {
            return Ok(false);
        }
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": node.metadata.resource_version },
            "spec": { "taints": if kept.is_empty() { serde_json::Value::Null } else { serde_json::json!(kept) } },
        });
        match client.merge_patch_node(node_name, &patch).await {
            Ok(()) => {
                tracing::info!("removed the taint {taint_key} from node {node_name}");
                return Ok(true);
            }
            Err(e) if e.code() == Some(409) && attempt < TAINT_ATTEMPTS => {
                tracing::debug!("node {node_name} changed meanwhile; retrying the taint removal");
            }
            Err(e) => return Err(e),
        }
    }
}

/// The start-up handshake: waits until `ready` is true (every planned
/// resource registered with the kubelet, see `Metrics::readiness`), then
/// removes `taint_key` from the Node once, retrying API errors with back-off.
pub async fn remove_taint_when_ready(
    client: Arc<KubeClient>,
    node_name: String,
    taint_key: String,
    mut ready: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = shutdown.cancelled() => return,
        ready = ready.wait_for(|ready| *ready) => if ready.is_err() { return },
    }
    let mut backoff = api_backoff();
    loop {
        match remove_taint(&client, &node_name, &taint_key).await {
            Ok(true) => return,
            Ok(false) => {
                tracing::info!("node {node_name} does not carry the start-up taint {taint_key}");
                return;
            }
            Err(e) => {
                tracing::warn!(
                    "cannot remove the taint {taint_key} from node {node_name}: {e}; retrying"
                );
                if !backoff.wait(&shutdown).await {
                    return;
                }
            }
        }
    }
}

/// The MIG labels' levels in a view of the Node (`--follow-mig-manager`).
pub fn mig_levels(view: &NodeView) -> MigLevels {
    MigLevels {
        config: view
            .label(gpu_slicer_core::node_labels::MIG_CONFIG)
            .map(str::to_owned),
        state: view
            .label(gpu_slicer_core::node_labels::MIG_CONFIG_STATE)
            .map(str::to_owned),
        revision: view.revision(&[
            gpu_slicer_core::node_labels::MIG_CONFIG,
            gpu_slicer_core::node_labels::MIG_CONFIG_STATE,
        ]),
        // MIG Manager may re-cut any GPU: the labels say no more.
        scope: gpu_slicer_core::node_labels::MigScope::Node,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn config(name: &str, reason: Reason) -> Result<Selection, SelectionError> {
        Ok(Selection::Config {
            name: name.into(),
            reason,
        })
    }

    #[test]
    fn selection_follows_nvidia_config_manager() {
        use Reason::*;
        let two = names(&["ts-2", "ts-4"]);
        let with_default = names(&["default", "ts-2", "ts-4"]);
        let one = names(&["only"]);
        let none: Vec<String> = Vec::new();
        let unknown = |value: &str, available: &[String]| {
            Err(SelectionError::UnknownLabelValue {
                label: CONFIG_LABEL.into(),
                value: value.into(),
                available: available.to_vec(),
            })
        };
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            &[String],
            Option<&str>,
            Option<&str>,
            Result<Selection, SelectionError>,
        )> = vec![
            // The label wins over everything.
            (&two, Some("ts-4"), None, config("ts-4", Label)),
            (
                &with_default,
                Some("ts-2"),
                Some("ts-4"),
                config("ts-2", Label),
            ),
            (&one, Some("only"), None, config("only", Label)),
            // A label value that names nothing is an error, whatever the fallbacks.
            (&two, Some("ts-8"), None, unknown("ts-8", &two)),
            (
                &with_default,
                Some("nope"),
                Some("ts-2"),
                unknown("nope", &with_default),
            ),
            (&none, Some("x"), None, unknown("x", &none)),
            // No label (or an empty value): DEFAULT_CONFIG.
            (&two, None, Some("ts-2"), config("ts-2", DefaultConfig)),
            (&two, Some(""), Some("ts-2"), config("ts-2", DefaultConfig)),
            (
                &two,
                None,
                Some("ts-9"),
                Err(SelectionError::UnknownDefault {
                    value: "ts-9".into(),
                    available: two.clone(),
                }),
            ),
            // Then `default`, then the only key, then nothing.
            (&with_default, None, None, config("default", Named)),
            (&with_default, None, Some(""), config("default", Named)),
            (&one, None, None, config("only", Single)),
            (&two, None, None, Ok(Selection::Empty)),
            (&none, None, None, Ok(Selection::Empty)),
        ];
        for (available, label, default, want) in cases {
            assert_eq!(
                select_config(available, CONFIG_LABEL, label, default, &DEFAULT_FALLBACKS),
                want,
                "available {available:?}, label {label:?}, default {default:?}"
            );
        }
    }

    #[test]
    fn errors_say_what_is_available_and_what_happens() {
        let e = select_config(
            &names(&["b", "a"]),
            CONFIG_LABEL,
            Some("x"),
            None,
            &DEFAULT_FALLBACKS,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "node label nvidia.com/device-plugin.config=x names no config; available: a, b; keeping the running config"
        );
        let e = select_config(&[], CONFIG_LABEL, Some("x"), None, &DEFAULT_FALLBACKS).unwrap_err();
        assert!(e.to_string().contains("available: (none)"), "{e}");
    }

    #[test]
    fn fallbacks_are_tried_in_the_order_given_and_none_matching_is_an_error() {
        use FallbackStrategy::*;
        let two = names(&["ts-2", "ts-4"]);
        let with_default = names(&["default", "ts-2"]);
        let one = names(&["only"]);
        let no_fallback = |tried: &[FallbackStrategy], available: &[String]| {
            Err(SelectionError::NoFallback {
                label: CONFIG_LABEL.into(),
                tried: tried.to_vec(),
                available: available.to_vec(),
            })
        };
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            &[String],
            &[FallbackStrategy],
            Result<Selection, SelectionError>,
        )> = vec![
            // NVIDIA's chart default.
            (
                &with_default,
                &[Named, Single],
                config("default", Reason::Named),
            ),
            (&one, &[Named, Single], config("only", Reason::Single)),
            (&two, &[Named, Single], no_fallback(&[Named, Single], &two)),
            // Order matters: `single` first picks the only key even if it is `default`.
            (&one, &[Single, Named], config("only", Reason::Single)),
            (
                &with_default,
                &[Single],
                no_fallback(&[Single], &with_default),
            ),
            (&one, &[Named], no_fallback(&[Named], &one)),
            (&two, &[Named, Empty], Ok(Selection::Empty)),
            (&with_default, &[Empty, Named], Ok(Selection::Empty)),
            // None given: NVIDIA's config-manager fails too.
            (&one, &[], no_fallback(&[], &one)),
        ];
        for (available, fallbacks, want) in cases {
            assert_eq!(
                select_config(available, CONFIG_LABEL, None, None, fallbacks),
                want,
                "available {available:?}, fallbacks {fallbacks:?}"
            );
        }
        // A default config still comes before any fallback.
        assert_eq!(
            select_config(&two, CONFIG_LABEL, None, Some("ts-4"), &[]),
            config("ts-4", Reason::DefaultConfig)
        );
    }

    #[test]
    fn no_fallback_says_what_to_do() {
        let e = select_config(
            &names(&["ts-4", "ts-2"]),
            CONFIG_LABEL,
            None,
            None,
            &[FallbackStrategy::Named, FallbackStrategy::Single],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the node has no label nvidia.com/device-plugin.config, no default config is set (--default-config / DEFAULT_CONFIG), and no fallback strategy (named, single) found a config among: ts-2, ts-4; set the label, set a default config, or add `empty` to --fallback-strategies / FALLBACK_STRATEGIES to run with defaults and flags only"
        );
    }

    #[test]
    fn listing_skips_configmap_internals_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("..2026_01_01_00_00_00.1");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("ts-2"), "version: v1\n").unwrap();
        std::os::unix::fs::symlink(&data, dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/ts-2", dir.path().join("ts-2")).unwrap();
        std::fs::write(dir.path().join("plain"), "version: v1\n").unwrap();
        std::fs::create_dir(dir.path().join("subdir")).unwrap();
        std::os::unix::fs::symlink("..data/gone", dir.path().join("dangling")).unwrap();
        assert_eq!(list_configs(dir.path()).unwrap(), names(&["plain", "ts-2"]));
    }

    #[test]
    fn an_unknown_label_is_refused_after_the_first_load_but_not_at_it() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["ts-2", "ts-4"] {
            std::fs::write(dir.path().join(name), "version: v1\n").unwrap();
        }
        let (tx, rx) = watch::channel(Some("nope".to_string()));
        let selector = LabelSelectedConfig::new(
            dir.path().into(),
            CONFIG_LABEL.into(),
            None,
            DEFAULT_FALLBACKS.to_vec(),
            rx,
        );
        // First load: nothing to keep, so the fallbacks apply (two keys: none).
        assert_eq!(selector.resolve(), Ok(None));
        tx.send_replace(Some("ts-4".into()));
        assert_eq!(selector.resolve(), Ok(Some(dir.path().join("ts-4"))));
        tx.send_replace(Some("nope".into()));
        let e = selector.resolve().unwrap_err().to_string();
        assert!(e.contains("names no config; available: ts-2, ts-4"), "{e}");
        tx.send_replace(None);
        assert_eq!(selector.resolve(), Ok(None));
    }
}
