//! Per-node configuration chosen by a node label, and the start-up taint.
//!
//! NVIDIA's config-manager contract, built in: a ConfigMap with one key per
//! named config is mounted as a directory (`--config-dir`, e.g.
//! `/available-configs`); the node label `nvidia.com/device-plugin.config`
//! names the key to use. [`select_config`] is the pure rule,
//! [`watch_node_label`] follows the label on the daemon's own Node, and
//! [`LabelSelectedConfig`] ties the two together for the daemon's
//! `SetupSource`. Unlike NVIDIA's sidecar, which exits on a label value that
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

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::kube_api::{KubeClient, KubeError, Node, WatchEvent};

/// NVIDIA's label for the per-node config name.
pub const CONFIG_LABEL: &str = "nvidia.com/device-plugin.config";
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

/// The daemon's view of `--config-dir`: the directory, the label's latest
/// value (from [`watch_node_label`]) and the default; [`Self::resolve`] is
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
    pub fn resolve(&self) -> Result<Option<PathBuf>, String> {
        let available = list_configs(&self.dir).map_err(|e| {
            format!(
                "cannot read the config directory {}: {e}",
                self.dir.display()
            )
        })?;
        let label = self.label.borrow().clone();
        let mut last = self.last.lock().map_err(|_| "selection lock poisoned")?;
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
                )
                .map_err(|e| e.to_string())?
            }
            Err(e) => return Err(e.to_string()),
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

fn label_of(node: &Node, label: &str) -> Option<String> {
    node.metadata.labels.get(label).cloned()
}

/// A watch that ends sooner than this after it started counts as a failure
/// (back off before the next), so a server that closes at once is not hammered.
const SHORT_WATCH: Duration = Duration::from_secs(5);

/// Follows `label` on the Node `node_name`: gets the Node, sends the
/// label's value, then watches that one Node and sends on every change. The
/// first value is always sent (even `None`), so a receiver can wait for it
/// with `changed()`; later ones only when they differ. Re-gets and
/// re-watches after errors with back-off; between events it only waits on
/// the open watch (no polling). Returns on `shutdown`.
pub async fn watch_node_label(
    client: Arc<KubeClient>,
    node_name: String,
    label: String,
    tx: watch::Sender<Option<String>>,
    shutdown: CancellationToken,
) {
    let mut backoff = api_backoff();
    let mut first = true;
    let publish = |value: Option<String>, first: &mut bool| {
        if std::mem::take(first) {
            tracing::info!(node = %node_name, "node label {label}={}", value.as_deref().unwrap_or("(absent)"));
            tx.send_replace(value);
        } else {
            tx.send_if_modified(|current| {
                if *current == value {
                    return false;
                }
                tracing::info!(node = %node_name, "node label {label} changed to {}", value.as_deref().unwrap_or("(absent)"));
                *current = value;
                true
            });
        }
    };
    'get: loop {
        let got = tokio::select! {
            _ = shutdown.cancelled() => return,
            got = client.get_node(&node_name) => got,
        };
        let mut version = match got {
            Ok(node) => {
                publish(label_of(&node, &label), &mut first);
                node.metadata.resource_version
            }
            Err(e) => {
                tracing::warn!("cannot get node {node_name}: {e}; retrying");
                if backoff.wait(&shutdown).await {
                    continue 'get;
                }
                return;
            }
        };
        loop {
            let started = tokio::time::Instant::now();
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                stream = client.watch_node(&node_name, &version) => stream,
            };
            let mut stream = match stream {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!("cannot watch node {node_name}: {e}; retrying");
                    if backoff.wait(&shutdown).await {
                        continue 'get;
                    }
                    return;
                }
            };
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = stream.next() => next,
                };
                match next {
                    Some(Ok(WatchEvent::Added(node) | WatchEvent::Modified(node))) => {
                        backoff.reset();
                        version = node.metadata.resource_version.clone();
                        publish(label_of(&node, &label), &mut first);
                    }
                    Some(Ok(WatchEvent::Deleted(node))) => {
                        // Keep the selection: a re-created Node is seen on re-get.
                        tracing::warn!("node {node_name} was deleted; keeping the running config");
                        version = node.metadata.resource_version;
                    }
                    Some(Ok(WatchEvent::Bookmark(resource_version))) => {
                        version = resource_version;
                    }
                    Some(Ok(WatchEvent::Error { code: 410, .. })) => {
                        // Our resourceVersion is too old: get afresh.
                        tracing::debug!("watch of node {node_name} expired; getting it again");
                        continue 'get;
                    }
                    Some(Ok(WatchEvent::Error { code, message })) => {
                        tracing::warn!(
                            "watch of node {node_name} failed: {message} ({code}); retrying"
                        );
                        if backoff.wait(&shutdown).await {
                            continue 'get;
                        }
                        return;
                    }
                    Some(Err(e)) => {
                        tracing::warn!("watch of node {node_name} broke: {e}; retrying");
                        if backoff.wait(&shutdown).await {
                            continue 'get;
                        }
                        return;
                    }
                    None => {
                        // The server ended the watch (its timeout): watch again
                        // from where we are, backing off if it ended at once.
                        if started.elapsed() < SHORT_WATCH && !backoff.wait(&shutdown).await {
                            return;
                        }
                        break;
                    }
                }
            }
        }
    }
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
        let e = selector.resolve().unwrap_err();
        assert!(e.contains("names no config; available: ts-2, ts-4"), "{e}");
        tx.send_replace(None);
        assert_eq!(selector.resolve(), Ok(None));
    }
}
