//! `--apply-mig-layouts`: gpu-slicer applies the MIG layout its node's
//! `nvidia.com/mig.config` label names, itself, in place of NVIDIA's MIG
//! Manager, and reports `nvidia.com/mig.config.state` as MIG Manager does.
//!
//! One change, in order:
//! 1. `nvidia.com/mig.config.state=pending` on the Node; the daemon
//!    withdraws the MIG-capable GPUs' devices (Unhealthy: nothing is
//!    admitted onto a GPU being repartitioned), and this task waits until it
//!    has;
//! 2. the layout is applied through NVML off the async runtime
//!    ([`crate::mig_apply`]): GPUs with compute processes, and GPUs whose
//!    devices pods hold (the kubelet's PodResources API), are refused
//!    unless forced; a MIG
//!    mode change that needs a GPU reset is reported, never done;
//! 3. on success the daemon rediscovers and advertises the new devices, and
//!    then the state becomes `success`; otherwise it becomes `failed`, the
//!    GPUs stay withdrawn (a node must not offer GPUs in a layout nobody
//!    asked for, nor lose its start-up taint) and the change is retried
//!    with a back-off until it succeeds or the label changes.
//!
//! Each outcome is also a Kubernetes Event on the Node and a metric.
//!
//! The daemon sees this task's progress as MIG Manager's labels
//! ([`crate::daemon::MigManagerLabels`]): the state it follows is this
//! task's, not the Node's (which this task writes), so the two never race.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::daemon::sleep_until_if;
use crate::kube_api::{EventKind, KubeClient};
use crate::metrics::Metrics;
use crate::mig_apply::{ApplyRequest, apply};
use crate::nvml::NvmlOptions;
use crate::run::MIG_CONFIG_STATE;
use gpu_slicer_core::mig_change::{ConfigState, summarize};

/// Retries of a failed change: soon (a process may just be ending), then
/// doubling up to every [`RETRY_MAX`] (a reset or reboot is someone's
/// manual step).
pub const RETRY_FIRST: Duration = Duration::from_secs(15);
pub const RETRY_MAX: Duration = Duration::from_secs(600);

/// How long to wait for the daemon to withdraw or advertise before going on
/// (it may not be serving at all, e.g. while NVML is not ready).
const DAEMON_WAIT: Duration = Duration::from_secs(30);

/// What the task needs.
pub struct Applier {
    pub client: Arc<KubeClient>,
    pub node: String,
    /// `--mig-parted-config`: read at every change, so an edited ConfigMap
    /// applies without a restart; `None`: NVIDIA's layouts, built in.
    pub layouts_file: Option<PathBuf>,
    pub nvml: NvmlOptions,
    pub force: bool,
    /// The kubelet's PodResources socket (`--pod-resources-socket`).
    pub pod_resources_socket: PathBuf,
    /// The Node's `nvidia.com/mig.config`.
    pub config: watch::Receiver<Option<String>>,
    /// The state the daemon follows.
    pub state: watch::Sender<Option<String>>,
    /// The daemon's answer: MIG-capable GPUs withdrawn (`true`) or
    /// advertised again (`false`).
    pub withdrawn: watch::Receiver<bool>,
    pub metrics: Metrics,
    /// The first retry after a failure ([`RETRY_FIRST`] but in tests).
    pub retry_first: Duration,
}

impl Applier {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.retry_first, RETRY_MAX.max(self.retry_first));
        let mut retry_at: Option<tokio::time::Instant>;
        let mut layout = self.config.borrow_and_update().clone();
        loop {
            match layout.clone() {
                None => {
                    // Nothing asked for: the GPUs are served as they are.
                    self.state.send_replace(None);
                    retry_at = None;
                }
                Some(name) => {
                    let applied = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        ok = self.change(&name) => ok,
                    };
                    retry_at = if applied {
                        backoff.reset();
                        None
                    } else {
                        let delay = backoff.next_delay();
                        tracing::warn!("retrying MIG layout '{name}' in {delay:?}");
                        Some(tokio::time::Instant::now() + delay)
                    };
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = self.config.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    layout = self.config.borrow_and_update().clone();
                    backoff.reset();
                }
                _ = sleep_until_if(retry_at) => {}
            }
        }
    }

    /// One attempt at `layout`; true when the GPUs hold it.
    async fn change(&mut self, layout: &str) -> bool {
        self.state
            .send_replace(Some(ConfigState::Pending.as_str().into()));
        self.set_node_state(ConfigState::Pending).await;
        self.wait_daemon(true).await;

        let layouts_file = self.layouts_file.clone();
        let nvml = self.nvml.clone();
        let force = self.force;
        let name = layout.to_string();
        let started = std::time::Instant::now();
        // Read after the GPUs are withdrawn: no pod is admitted onto them
        // from here on.
        let pod_devices = if force {
            Ok(Vec::new())
        } else {
            crate::pod_resources::list(&self.pod_resources_socket)
                .await
                .map_err(|e| e.to_string())
        };
        let result = tokio::task::spawn_blocking(move || {
            let pod_devices = pod_devices?;
            let layouts = crate::config_file::mig_layouts(layouts_file.as_deref())
                .map_err(|e| e.to_string())?;
            let request = ApplyRequest {
                layouts: &layouts,
                layout: &name,
                force,
                pod_devices,
            };
            apply(&nvml, &request).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("the MIG apply task ended: {e}")));
        let (state, message) = match result {
            Ok(outcomes) => summarize(&outcomes, layout),
            Err(e) => (
                ConfigState::Failed,
                format!("MIG layout '{layout}' not applied: {e}"),
            ),
        };
        self.metrics.count_mig_apply(state == ConfigState::Success);
        if state == ConfigState::Success {
            tracing::info!(seconds = started.elapsed().as_secs_f64(), "{message}");
            // The daemon rediscovers, then the Node says success: by then
            // the new devices are advertised.
            self.state
                .send_replace(Some(ConfigState::Success.as_str().into()));
            self.wait_daemon(false).await;
            // The Event first: whoever sees the state finds the why.
            self.event(EventKind::Normal, "MigLayoutApplied", &message)
                .await;
            self.set_node_state(ConfigState::Success).await;
            true
        } else {
            // The daemon keeps the GPUs withdrawn (its state stays pending).
            tracing::error!("{message}");
            self.event(EventKind::Warning, "MigLayoutFailed", &message)
                .await;
            self.set_node_state(ConfigState::Failed).await;
            false
        }
    }

    /// Waits until the daemon reports `withdrawn`, bounded by [`DAEMON_WAIT`].
    async fn wait_daemon(&mut self, withdrawn: bool) {
        let wait = self.withdrawn.wait_for(|w| *w == withdrawn);
        if tokio::time::timeout(DAEMON_WAIT, wait).await.is_err() {
            tracing::warn!(
                "the daemon did not {} the MIG-capable GPUs within {DAEMON_WAIT:?}; going on",
                if withdrawn { "withdraw" } else { "advertise" }
            );
        }
    }

    async fn set_node_state(&self, state: ConfigState) {
        let patch = serde_json::json!({
            "metadata": { "labels": { MIG_CONFIG_STATE: state.as_str() } }
        });
        match self.client.merge_patch_node(&self.node, &patch).await {
            Ok(()) => tracing::info!("node {}: {MIG_CONFIG_STATE}={}", self.node, state.as_str()),
            Err(e) => tracing::error!(
                "cannot set {MIG_CONFIG_STATE}={} on node {}: {e}; gpu-slicer needs `patch` on nodes for --apply-mig-layouts",
                state.as_str(),
                self.node
            ),
        }
    }

    async fn event(&self, kind: EventKind, reason: &str, message: &str) {
        if let Err(e) = self
            .client
            .node_event(&self.node, kind, reason, message)
            .await
        {
            tracing::warn!(
                "cannot record event {reason} for node {}: {e}; gpu-slicer needs `create` on events",
                self.node
            );
        }
    }
}
