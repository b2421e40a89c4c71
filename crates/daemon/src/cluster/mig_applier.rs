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
//!    ([`crate::gpus::mig_apply`]): GPUs with compute processes, and GPUs whose
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
//! A per-GPU target (the Node annotation `gpu-slicer.io/mig-target`,
//! [`gpu_slicer_core::mig_target`]) is applied in place of the layout while
//! it is set, changing only free instances: it is first checked against the
//! GPUs and the pods as they are, without withdrawing anything (a target
//! that is invalid, already held, or that needs a held instance destroyed
//! ends there); otherwise the steps above run, one GPU at a time, the
//! PodResources read again before each. After a failure the GPUs are served
//! as they are (each holds its target or its former layout), not kept
//! withdrawn. The withdrawal is per instance
//! ([`MigScope::Gpus`]): on the GPUs the target changes, only the devices of
//! the instances it destroys (and any that appear before the rediscovery)
//! are Unhealthy; the instances it keeps, held or free, and every other GPU
//! keep serving. A GPU whose plan would destroy a kept instance when its
//! turn comes (it changed since the check) is refused, not changed.
//!
//! The Node's state label is kept level-triggered: one writer task holds
//! the latest outcome and compares it with the label as the Node watcher
//! sees it ([`crate::cluster::node::NodeView`]); while they differ it patches the
//! Node, retrying failed writes on a back-off until the API server has the
//! value. A newer outcome supersedes an older one still being retried, so
//! the Node always ends with the last outcome, whatever the API server
//! answered in between.
//!
//! The daemon sees this task's progress as MIG Manager's labels
//! ([`crate::daemon::MigManagerLabels`]): the levels it follows are this
//! task's, not the Node's (which this task writes), so the two never race.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::api::{EventKind, KubeClient};
use crate::cluster::node::MigLevels;
use crate::cluster::node::NodeView;
use crate::deadline::sleep_until_if;
use crate::gpus::mig_apply::{ApplyRequest, TargetOutcome, apply, apply_target_gpu, target_state};
use crate::gpus::nvml::NvmlOptions;
use crate::kubelet::pod_resources::PodDevice;
use crate::metrics::Metrics;
use gpu_slicer_core::backoff::Backoff;
use gpu_slicer_core::mig_change::{ConfigState, GpuOutcome, Outcome, summarize, summarize_change};
use gpu_slicer_core::mig_target::{self, ResolvedTarget};
use gpu_slicer_core::node_labels::{MIG_CONFIG, MIG_CONFIG_STATE, MIG_TARGET, MigScope};

/// Why a layout change was not applied at all (per-GPU failures are
/// outcomes); the message follows "MIG layout '<name>' not applied: ".
#[derive(Debug, thiserror::Error)]
enum ChangeError {
    #[error(transparent)]
    PodResources(#[from] crate::kubelet::pod_resources::PodResourcesError),
    #[error(transparent)]
    Layouts(#[from] crate::host::config_file::MigConfigFileError),
    #[error(transparent)]
    Apply(#[from] crate::gpus::mig_apply::ApplyError),
    #[error("the MIG apply task ended: {0}")]
    Task(tokio::task::JoinError),
}

/// Why a target was not applied at all (per-GPU refusals are outcomes);
/// the message follows "MIG target not applied: ".
#[derive(Debug, thiserror::Error)]
enum TargetCheckError {
    #[error("{MIG_TARGET}: {0}")]
    Target(#[from] gpu_slicer_core::mig_target::TargetError),
    #[error(transparent)]
    PodResources(#[from] crate::kubelet::pod_resources::PodResourcesError),
    #[error(transparent)]
    Apply(#[from] crate::gpus::mig_apply::ApplyError),
    #[error("the MIG apply task ended: {0}")]
    Task(tokio::task::JoinError),
}

/// A target's GPU as checked before anything changes.
enum Check {
    /// It holds its target already.
    Holds,
    /// Its target needs operations, none on a held instance; `keep`: the
    /// GPU instances it keeps (they stay advertised during the change).
    Change { keep: BTreeSet<u32> },
    /// Its target would need a held instance destroyed.
    Refused(GpuOutcome),
}

/// Retries of a failed change: soon (a process may just be ending), then
/// doubling up to every [`RETRY_MAX`] (a reset or reboot is someone's
/// manual step).
pub const RETRY_FIRST: Duration = Duration::from_secs(15);
pub const RETRY_MAX: Duration = Duration::from_secs(600);

/// How long to wait for the daemon to withdraw or advertise before going on
/// (it may not be serving at all, e.g. while NVML is not ready).
const DAEMON_WAIT: Duration = Duration::from_secs(30);

/// How long a change waits for the API server to take its state label
/// before going on; the writer keeps retrying after that.
const STATE_WAIT: Duration = Duration::from_secs(10);

/// Retries of a state label write the API server refused: 1 s doubling to 1 min.
const STATE_RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

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
    /// The Node's `gpu-slicer.io/mig-target` annotation (its text); while
    /// present it is applied in place of the layout `config` names.
    pub target: watch::Receiver<Option<String>>,
    /// The Node as its watcher sees it: the state label as it is now.
    pub node_view: watch::Receiver<NodeView>,
    /// The levels the daemon follows: the layout being applied and this
    /// task's state.
    pub levels: watch::Sender<MigLevels>,
    /// The daemon's answer: what it withdrew (the scope of the levels
    /// published), or `None` once it advertises what the GPUs hold again.
    pub withdrawn: watch::Receiver<Option<MigScope>>,
    pub metrics: Metrics,
    /// The first retry after a failure ([`RETRY_FIRST`] but in tests).
    pub retry_first: Duration,
}

impl Applier {
    /// Runs until `shutdown`, then returns at the apply's safe point once
    /// its last outcome is on the Node (bounded by [`STATE_WAIT`]).
    pub async fn run(self, shutdown: CancellationToken) {
        let (report, reports) = watch::channel(None);
        let (written_tx, written) = watch::channel(0);
        // The writer outlives SIGTERM: the last outcome still gets written.
        let writer_stop = CancellationToken::new();
        let writer = tokio::spawn(keep_node_state(
            self.client.clone(),
            self.node.clone(),
            reports,
            self.node_view.clone(),
            written_tx,
            writer_stop.clone(),
        ));
        let mut task = Task {
            applier: self,
            report,
            written,
            reported: 0,
        };
        task.run(shutdown).await;
        let last = task.reported;
        let written = task.written.wait_for(|w| *w >= last);
        if tokio::time::timeout(STATE_WAIT, written).await.is_err() {
            tracing::warn!(
                "node {}: the last {MIG_CONFIG_STATE} was not written within {STATE_WAIT:?} of shutting down",
                task.node
            );
        }
        writer_stop.cancel();
        let _ = writer.await;
    }
}

/// The applier at work: its state reports go to [`keep_node_state`].
struct Task {
    applier: Applier,
    /// The latest outcome for the Node's state label, numbered.
    report: watch::Sender<Option<(u64, ConfigState)>>,
    /// The number of the latest report the API server has (or that is
    /// superseded).
    written: watch::Receiver<u64>,
    reported: u64,
}

impl std::ops::Deref for Task {
    type Target = Applier;
    fn deref(&self) -> &Applier {
        &self.applier
    }
}

impl std::ops::DerefMut for Task {
    fn deref_mut(&mut self) -> &mut Applier {
        &mut self.applier
    }
}

impl Task {
    async fn run(&mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.retry_first, RETRY_MAX.max(self.retry_first));
        let mut retry_at: Option<tokio::time::Instant>;
        let mut layout = self.config.borrow_and_update().clone();
        let mut target = self.target.borrow_and_update().clone();
        loop {
            match (target.clone(), layout.clone()) {
                (Some(text), _) => {
                    if layout.is_some() {
                        tracing::info!(
                            "node {}: {MIG_TARGET} is set; it is applied in place of {MIG_CONFIG}",
                            self.node
                        );
                    }
                    let applied = self.change_target(&text, &shutdown).await;
                    if shutdown.is_cancelled() {
                        return;
                    }
                    retry_at = retry_after(applied, &mut backoff, "the MIG target");
                }
                (None, None) => {
                    // Nothing asked for: the GPUs are served as they are.
                    self.publish(None, None, MigScope::Node);
                    retry_at = None;
                }
                (None, Some(name)) => {
                    // Not raced against SIGTERM: `change` stops early only
                    // before NVML is touched, and otherwise runs to its
                    // safe point (every GPU done or undone, the outcome on
                    // the Node); `run` in `crate::run` waits for it.
                    let applied = self.change(&name, &shutdown).await;
                    if shutdown.is_cancelled() {
                        return;
                    }
                    retry_at = retry_after(applied, &mut backoff, &format!("MIG layout '{name}'"));
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = self.applier.config.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    layout = self.config.borrow_and_update().clone();
                    backoff.reset();
                }
                changed = self.applier.target.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    target = self.target.borrow_and_update().clone();
                    backoff.reset();
                }
                _ = sleep_until_if(retry_at) => {}
            }
        }
    }

    /// What the daemon follows: the layout, this task's state, and what a
    /// change withdraws (a new revision with each step, so the daemon acts
    /// on every one; a scope matters only while the state withdraws).
    fn publish(&self, layout: Option<&str>, state: Option<ConfigState>, scope: MigScope) {
        let config = layout.map(str::to_owned);
        let state = state.map(|s| s.as_str().to_owned());
        self.levels.send_if_modified(|levels| {
            let withdraws =
                gpu_slicer_core::node_labels::mig_withdrawn(state.as_deref(), config.as_deref());
            if levels.config == config
                && levels.state == state
                && (!withdraws || levels.scope == scope)
            {
                return false;
            }
            levels.config = config;
            levels.state = state;
            levels.scope = scope;
            levels.revision += 1;
            true
        });
    }

    /// One attempt at `layout`; true when the GPUs hold it. SIGTERM before
    /// the NVML apply starts abandons it (nothing changed; the Node says
    /// `pending` and the next start applies it); after, the apply finishes
    /// and its outcome is reported.
    async fn change(&mut self, layout: &str, shutdown: &CancellationToken) -> bool {
        // A named layout may re-cut any GPU: the whole node is withdrawn.
        self.publish(Some(layout), Some(ConfigState::Pending), MigScope::Node);
        self.set_node_state(ConfigState::Pending).await;
        self.wait_daemon(Some(MigScope::Node), shutdown).await;
        if shutdown.is_cancelled() {
            return false;
        }

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
            crate::kubelet::pod_resources::list(&self.pod_resources_socket).await
        };
        let result = tokio::task::spawn_blocking(move || {
            let pod_devices = pod_devices?;
            let layouts = crate::host::config_file::mig_layouts(layouts_file.as_deref())?;
            let request = ApplyRequest {
                layouts: &layouts,
                layout: &name,
                force,
                pod_devices,
            };
            Ok(apply(&nvml, &request)?)
        })
        .await
        .unwrap_or_else(|e| Err(ChangeError::Task(e)));
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
            self.publish(Some(layout), Some(ConfigState::Success), MigScope::Node);
            self.wait_daemon(None, shutdown).await;
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

    /// One attempt at the per-GPU target `text`; true when every GPU it
    /// names holds its target. Checked first against the GPUs as they are,
    /// without withdrawing anything: a target that is invalid, already
    /// held, or that would need a held instance destroyed changes nothing
    /// and disturbs no device. Otherwise the handshake of a named layout
    /// (`pending`, the daemon withdraws, the change, the daemon
    /// rediscovers), with the change made one GPU at a time, the kubelet's
    /// PodResources read again right before each GPU's destroys. What is
    /// withdrawn is only what the change does not keep: per GPU changed,
    /// every device but those of the instances its plan keeps; so the
    /// PodResources read after the withdrawal is final for every instance
    /// destroyed (no pod can be admitted onto one any more).
    async fn change_target(&mut self, text: &str, shutdown: &CancellationToken) -> bool {
        const SUBJECT: &str = "MIG target";
        let started = std::time::Instant::now();
        // The check: what the GPUs and pods hold now, every GPU planned.
        let checked = match self.target_check(text).await {
            Ok(checked) => checked,
            Err(e) => {
                let message = format!("{SUBJECT} not applied: {e}");
                return self
                    .target_failed(&message, MigScope::default(), shutdown)
                    .await;
            }
        };
        let refused: Vec<GpuOutcome> = checked
            .iter()
            .filter_map(|(_, check)| match check {
                Check::Refused(outcome) => Some(outcome.clone()),
                _ => None,
            })
            .collect();
        if !refused.is_empty() {
            let (_, message) = summarize_change(&refused, SUBJECT);
            return self
                .target_failed(&message, MigScope::default(), shutdown)
                .await;
        }
        let changing: Vec<(ResolvedTarget, BTreeSet<u32>)> = checked
            .iter()
            .filter_map(|(t, check)| match check {
                Check::Change { keep } => Some((t.clone(), keep.clone())),
                _ => None,
            })
            .collect();
        let scope = MigScope::Gpus(
            changing
                .iter()
                .map(|(t, keep)| (t.uuid.clone(), keep.clone()))
                .collect::<BTreeMap<_, _>>(),
        );
        let mut outcomes: Vec<GpuOutcome> = Vec::new();
        let mut changes: Vec<String> = Vec::new();
        let needs_change = !changing.is_empty();
        if needs_change {
            self.publish(Some(MIG_TARGET), Some(ConfigState::Pending), scope.clone());
            self.set_node_state(ConfigState::Pending).await;
            self.wait_daemon(Some(scope.clone()), shutdown).await;
            if shutdown.is_cancelled() {
                return false;
            }
        }
        for (target, keep) in changing {
            // Between GPUs is a safe point: SIGTERM leaves the rest as they are.
            if shutdown.is_cancelled() {
                outcomes.push(GpuOutcome {
                    index: target.index,
                    uuid: target.uuid.clone(),
                    outcome: Outcome::Failed {
                        operation: "the change".into(),
                        error: "the daemon is shutting down; the next start applies it".into(),
                    },
                });
                continue;
            }
            let result = self.target_gpu(target.clone(), keep).await;
            match result {
                Ok(done) => {
                    if !done.changes.is_empty() && done.outcome.outcome == Outcome::Applied {
                        tracing::info!(
                            "GPU {} ({}): MIG target applied: {}",
                            done.outcome.index,
                            done.outcome.uuid,
                            done.changes
                        );
                        changes.push(format!("GPU {}: {}", done.outcome.index, done.changes));
                    }
                    outcomes.push(done.outcome);
                }
                Err(e) => outcomes.push(GpuOutcome {
                    index: target.index,
                    uuid: target.uuid.clone(),
                    outcome: Outcome::Failed {
                        operation: "reading the GPUs".into(),
                        error: e.to_string(),
                    },
                }),
            }
        }
        for (target, check) in &checked {
            if matches!(check, Check::Holds) {
                outcomes.push(GpuOutcome {
                    index: target.index,
                    uuid: target.uuid.clone(),
                    outcome: Outcome::Unchanged,
                });
            }
        }
        let (state, message) = summarize_change(&outcomes, SUBJECT);
        let changed = changes.join("; ");
        if state != ConfigState::Success {
            let message = if changed.is_empty() {
                message
            } else {
                format!("{message}; changed meanwhile: {changed}")
            };
            return self.target_failed(&message, scope, shutdown).await;
        }
        let message = if changed.is_empty() {
            message
        } else {
            format!("{message}: {changed}")
        };
        self.metrics.count_mig_apply(true);
        tracing::info!(seconds = started.elapsed().as_secs_f64(), "{message}");
        self.publish(Some(MIG_TARGET), Some(ConfigState::Success), scope);
        if needs_change {
            self.wait_daemon(None, shutdown).await;
        }
        self.event(EventKind::Normal, "MigTargetApplied", &message)
            .await;
        self.set_node_state(ConfigState::Success).await;
        true
    }

    /// The target parsed and checked against the GPUs and pods as they
    /// are, per GPU it names.
    async fn target_check(
        &self,
        text: &str,
    ) -> Result<Vec<(ResolvedTarget, Check)>, TargetCheckError> {
        let entries = mig_target::parse(text)?;
        let pod_devices = self.pod_devices().await?;
        let nvml = self.nvml.clone();
        let force = self.force;
        tokio::task::spawn_blocking(move || {
            let gpus = target_state(&nvml, &pod_devices, force)?;
            let resolved = mig_target::resolve(&entries, &gpus)?;
            Ok(resolved
                .into_iter()
                .map(|t| {
                    // `resolve` found every GPU among `gpus`.
                    let plan = gpus
                        .iter()
                        .find(|g| g.index == t.index)
                        .map(|g| mig_target::plan_gpu(t.model, g, &t.wanted));
                    let check = match plan {
                        Some(Ok(plan)) if plan.ops.is_empty() => Check::Holds,
                        Some(Ok(plan)) => Check::Change {
                            keep: plan.keep.into_iter().collect(),
                        },
                        Some(Err(blocked)) => Check::Refused(GpuOutcome {
                            index: t.index,
                            uuid: t.uuid.clone(),
                            outcome: Outcome::Blocked {
                                reasons: blocked.reasons(),
                            },
                        }),
                        // Not found among the GPUs `resolve` found it in:
                        // unreachable; planned when its turn comes, with
                        // nothing kept (every device of it withdrawn).
                        None => Check::Change {
                            keep: BTreeSet::new(),
                        },
                    };
                    (t, check)
                })
                .collect())
        })
        .await
        .unwrap_or_else(|e| Err(TargetCheckError::Task(e)))
    }

    /// One GPU's change, with the pods' devices read right before it;
    /// `keep`: the instances it keeps serving meanwhile (never destroyed).
    async fn target_gpu(
        &self,
        target: ResolvedTarget,
        keep: BTreeSet<u32>,
    ) -> Result<TargetOutcome, TargetCheckError> {
        let pod_devices = self.pod_devices().await?;
        let nvml = self.nvml.clone();
        let force = self.force;
        tokio::task::spawn_blocking(move || {
            Ok(apply_target_gpu(
                &nvml,
                &target,
                force,
                &pod_devices,
                &keep,
            )?)
        })
        .await
        .unwrap_or_else(|e| Err(TargetCheckError::Task(e)))
    }

    /// The devices pods hold (none when forced: nothing counts as held).
    async fn pod_devices(
        &self,
    ) -> Result<Vec<PodDevice>, crate::kubelet::pod_resources::PodResourcesError> {
        if self.force {
            Ok(Vec::new())
        } else {
            crate::kubelet::pod_resources::list(&self.pod_resources_socket).await
        }
    }

    /// A target that did not (fully) apply: every GPU holds a whole layout
    /// (its target, or its former one: each GPU's change is undone on
    /// failure), so the daemon serves what they hold rather than keeping
    /// them withdrawn; `failed` with the reason, and a retry.
    async fn target_failed(
        &mut self,
        message: &str,
        scope: MigScope,
        shutdown: &CancellationToken,
    ) -> bool {
        tracing::error!("{message}");
        self.metrics.count_mig_apply(false);
        self.publish(Some(MIG_TARGET), Some(ConfigState::Failed), scope);
        // Whoever sees `failed` finds the devices served again.
        self.wait_daemon(None, shutdown).await;
        self.event(EventKind::Warning, "MigTargetFailed", message)
            .await;
        self.set_node_state(ConfigState::Failed).await;
        false
    }

    /// Waits until the daemon reports `withdrawn` (exactly the scope asked
    /// for, or nothing), bounded by [`DAEMON_WAIT`].
    async fn wait_daemon(&mut self, withdrawn: Option<MigScope>, shutdown: &CancellationToken) {
        let wait = self.withdrawn.wait_for(|w| *w == withdrawn);
        let bounded = tokio::time::timeout(DAEMON_WAIT, wait);
        // A daemon shutting down withdraws and advertises nothing more.
        let timed_out = tokio::select! {
            _ = shutdown.cancelled() => return,
            waited = bounded => waited.is_err(),
        };
        if timed_out {
            tracing::warn!(
                "the daemon did not {} within {DAEMON_WAIT:?}; going on",
                match withdrawn {
                    Some(MigScope::Node) => "withdraw the MIG-capable GPUs",
                    Some(MigScope::Gpus(_)) => "withdraw the instances the target changes",
                    None => "advertise the GPUs again",
                }
            );
        }
    }

    /// Hands `state` to the writer (superseding any report it still
    /// retries) and waits, bounded by [`STATE_WAIT`], until the API server
    /// has it: observers see `pending` before the GPUs change.
    async fn set_node_state(&mut self, state: ConfigState) {
        self.reported += 1;
        let number = self.reported;
        self.report.send_replace(Some((number, state)));
        let written = self.written.wait_for(|w| *w >= number);
        if tokio::time::timeout(STATE_WAIT, written).await.is_err() {
            tracing::warn!(
                "node {}: {MIG_CONFIG_STATE}={} not written within {STATE_WAIT:?}; going on, and still retrying",
                self.node,
                state.as_str()
            );
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

/// Keeps the Node's state label at the latest report: level-triggered (see
/// the module docs). `written` gets the number of each report the API
/// server has (or that needed no write: the label already said so).
async fn keep_node_state(
    client: Arc<KubeClient>,
    node: String,
    mut reports: watch::Receiver<Option<(u64, ConfigState)>>,
    mut view: watch::Receiver<NodeView>,
    written: watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    let mut backoff = STATE_RETRY;
    // The last state the API server accepted, until the watcher shows it
    // (so a lagging view does not cause a second write).
    let mut accepted: Option<ConfigState> = None;
    let mut failures = 0u32;
    let mut view_alive = true;
    loop {
        let report = *reports.borrow_and_update();
        let on_node = view
            .borrow_and_update()
            .label(MIG_CONFIG_STATE)
            .map(str::to_owned);
        // What the Node says: the watcher's view, unless it has not caught
        // up with the last write the API server accepted.
        let known = match accepted {
            Some(a) if on_node.as_deref() != Some(a.as_str()) => Some(a.as_str().to_owned()),
            _ => {
                accepted = None;
                on_node
            }
        };
        if let Some((number, state)) = report {
            if known.as_deref() == Some(state.as_str()) {
                written.send_replace(number);
            } else {
                let patch = serde_json::json!({
                    "metadata": { "labels": { MIG_CONFIG_STATE: state.as_str() } }
                });
                match client.merge_patch_node(&node, &patch).await {
                    Ok(()) => {
                        tracing::info!("node {node}: {MIG_CONFIG_STATE}={}", state.as_str());
                        accepted = Some(state);
                        failures = 0;
                        backoff.reset();
                        written.send_replace(number);
                    }
                    Err(e) => {
                        failures += 1;
                        let delay = backoff.next_delay();
                        tracing::error!(
                            "cannot set {MIG_CONFIG_STATE}={} on node {node} (attempt {failures}): {e}; retrying in {delay:?} \
                             (gpu-slicer needs `patch` on nodes for --apply-mig-layouts)",
                            state.as_str()
                        );
                        // A newer report supersedes this one at once.
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            changed = reports.changed() => if changed.is_err() { return },
                            () = tokio::time::sleep(delay) => {}
                        }
                    }
                }
                continue;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = reports.changed() => if changed.is_err() { return },
            changed = view.changed(), if view_alive => view_alive = changed.is_ok(),
        }
    }
}

/// After an attempt: none to retry when it applied (the back-off starts
/// over), else the instant of the next, on the back-off.
fn retry_after(applied: bool, backoff: &mut Backoff, what: &str) -> Option<tokio::time::Instant> {
    if applied {
        backoff.reset();
        return None;
    }
    let delay = backoff.next_delay();
    tracing::warn!("retrying {what} in {delay:?}");
    Some(tokio::time::Instant::now() + delay)
}
