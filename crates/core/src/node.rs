//! The node machine: every decision the daemon makes about what it
//! advertises, as a sans-IO state machine beside the registration machine
//! ([`crate::lifecycle`]): `(state, event, now) -> actions`.
//!
//! The registration machine decides *where* devices are served (sockets,
//! Register calls, streams); this one decides *what* is served and in which
//! health: which load is applied or refused, when device discovery is
//! retried, when the devices of MIG-capable GPUs are withdrawn and when
//! they are rediscovered, which devices an XID, an unwatched GPU or an MPS
//! control daemon makes Unhealthy and when they recover, and when the
//! daemon is ready. It does no I/O and reads no clock; every timer is an
//! absolute deadline in its state ([`NodeMachine::next_deadline`]).
//!
//! # States
//!
//! - **Loads**: none applied yet, or the last applied one (its resources,
//!   GPUs and health policy). A load is asked for with [`NodeAction::Load`]
//!   and its outcome fed back as [`NodeEvent::Loaded`]; the shell reads the
//!   config and the GPUs, plans, writes the CDI spec and starts the MPS
//!   control daemons, and reports either what it applied or why nothing was.
//! - **Discovery**: the NVML indices of GPUs that could not be read, and
//!   the deadline of the next attempt (a back-off, 1 s doubling to 5 min).
//! - **MIG**: the last MIG labels seen, what is withdrawn (nothing; every
//!   MIG-capable GPU, for MIG Manager and named layouts; or, for a per-GPU
//!   target, the devices of the GPUs it changes but those of the instances
//!   it keeps: [`MigScope`]), the label revision the last rediscovery
//!   reflects, and the deadline of a retry (1 s doubling to 1 min).
//! - **Health**: [`HealthState`] (XIDs and their recovery deadlines, GPU
//!   conditions, what the NVML watcher last said), the MPS resources'
//!   GPUs, and per MPS resource whose control daemon is not ready the
//!   deadline of its next start (a back-off, 1 s doubling to 1 min).
//! - **Ready**: the last readiness told to the shell.
//!
//! # Events and actions
//!
//! Events: a load's outcome, a reload asked for (SIGHUP), the MIG labels'
//! levels (with the scope of a change under way), an XID, a GPU watched or
//! not, an MPS control daemon that exited or a restart's outcome, the
//! registration machine's "every resource registered", and
//! [`NodeEvent::Tick`] (time passed; due timers fire).
//! Actions: load (with its cause), advertise the load just applied, push
//! the health to the kubelet, set readiness, tell the MIG applier what is
//! withdrawn (so it changes a GPU only once exactly its withdrawal is in
//! place), restart an MPS resource's control daemons, exit (a refused
//! first load), and notices for the log and the metrics.
//!
//! # Rules
//!
//! - **A refused load changes nothing** (a reload, a discovery retry, a
//!   rediscovery): the running devices, their health and readiness stay;
//!   only the retry timers move. A first load that is refused ends the
//!   daemon; one that finds no driver waits for it on the back-off.
//! - **MIG by level** ([`crate::node_labels::mig_withdrawn`]): on every
//!   label change, and when a retry comes due, the machine compares what
//!   the labels ask with what it did last: withdrawn labels withdraw their
//!   scope (idempotent; a scope that changes replaces the last one);
//!   otherwise the GPUs are rediscovered whenever the labels' revision
//!   differs from the one the last rediscovery reflects, or something is
//!   still withdrawn. A `pending` never seen cannot leave vanished devices
//!   advertised, and a failed rediscovery is retried, not left until the
//!   next label change. What is withdrawn is recomputed from the scope and
//!   the devices advertised now, whatever was withdrawn before: a load
//!   applied during a change (a reload) withdraws its devices the same way.
//! - **Withdraw what changes, nothing else**: MIG Manager's labels (and a
//!   named layout) cannot tell which GPUs change, so every MIG-capable
//!   GPU's devices are withdrawn, as NVIDIA's plugin does. A per-GPU target
//!   names them: only the devices of the instances it destroys stop being
//!   offered (no pod is admitted onto one about to vanish), along with any
//!   device that appears on those GPUs before the rediscovery; the
//!   instances it keeps, held or free, and every other GPU stay Healthy,
//!   and the new devices come with the rediscovery, in one update.
//! - **Fail closed**: a device being repartitioned, a GPU not watched, or
//!   whose MPS daemon is not ready, is advertised Unhealthy; a device hit
//!   by an XID stays Unhealthy until its quiet period ends (or for good,
//!   for XIDs that need a reset).
//! - **MPS daemons are restarted, never forgotten**: a control daemon
//!   that exits, or that a load or a restart could not make ready, is
//!   started again when its back-off ends ([`MPS_RESTART_BACKOFF`]); the
//!   back-off is reset once it is ready, and dropped with a load that no
//!   longer has the resource.
//! - **Ready** exactly when a load was applied, every resource is
//!   registered, and no whole-node MIG change is under way (a per-GPU
//!   target leaves the rest of the node serving).
//!
//! # Invariants
//!
//! Checked after every step by the simulation (`node::sim`), over random
//! interleavings of MIG Manager's changes (labels that arrive late,
//! together, or not at all; hardware that changes under a `pending` the
//! daemon never saw), the applier's per-GPU targets (one GPU re-cut,
//! keeping the instances both layouts share; success or failure), loads
//! that fail or are refused, reloads, XIDs, watcher reports, MPS exits,
//! daemon restarts (mid-change included) and time:
//!
//! 1. **A GPU being repartitioned is never advertised Healthy**: while the
//!    last labels seen withdraw the whole node, no device of a MIG-capable
//!    GPU is; while they withdraw for a per-GPU target (1b, **a device
//!    being destroyed is never advertised Healthy**), no device of a GPU it
//!    changes is, but those of the instances it keeps.
//! 2. **A refused load changes nothing**: what is advertised, its health
//!    and readiness are as before.
//! 3. **Ready** is exactly (a load applied, registered, the whole node not
//!    withdrawn).
//! 4. **An XID holds**: a device hit by an XID the policy acts on is not
//!    Healthy before its quiet period ends.
//! 5. **Never spins**: after any event, no deadline is already due.
//! 6. **Converges and idles**: once the labels stop changing and loads
//!    succeed, the devices advertised are those the GPUs hold now, nothing
//!    is withdrawn, and no timer is left but XID recoveries.
//! 7. **No blind window**: with a watcher, a GPU it does not watch (or has
//!    not reported on yet) has no device advertised Healthy.
//! 8. **No collateral withdrawal**: a device is Unhealthy because of a MIG
//!    change only inside the scope of the last change asked for (a held
//!    slice on a GPU a target does not change never is).
//! 9. **MPS fails closed**: an MPS resource's GPU is not Healthy while its
//!    control daemon is not ready.
//! 10. **A daemon not ready is being restarted**: while the load applied
//!     has an MPS resource whose daemon is not ready, its next start is
//!     scheduled.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::config::ResourceName;
use crate::health::{
    AdvertisedGpu, Condition, HealthPolicy, HealthState, NOT_WATCHED_YET, XidAction, XidEvent,
    affected,
};
use crate::node_labels::{MigLevels, MigScope};
use crate::plan::Resource;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

/// Device discovery retries while the driver is not ready, or GPUs do not
/// answer: 1 s doubling to 5 min.
pub const DISCOVERY_BACKOFF: Backoff =
    Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
/// Rediscovery retries after a MIG layout change: 1 s doubling to 1 min.
pub const MIG_REDISCOVERY_BACKOFF: Backoff =
    Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

/// Why the devices of a GPU being repartitioned are Unhealthy.
pub const REPARTITIONING: &str = "MIG Manager is changing its MIG layout";
/// Why a MIG device a per-GPU target is changing is Unhealthy: its GPU
/// instance is being destroyed (or was created by the change and is not
/// rediscovered yet).
pub const TARGET_CHANGING: &str = "a MIG target is changing its GPU instance";
/// Why an MPS resource's devices are Unhealthy before its control daemon
/// answered.
pub const MPS_EXITED: &str = "its MPS control daemon exited";
/// Restarts of an MPS control daemon that exited or did not become ready:
/// 1 s doubling to 1 min, reset once it is ready.
pub const MPS_RESTART_BACKOFF: Backoff =
    Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

/// Why a load was asked for; it decides what a refusal means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadCause {
    /// The first load: a refusal ends the daemon.
    Start,
    /// SIGHUP, a config file or a config label changed: a refusal keeps
    /// the running setup.
    Reload,
    /// A discovery retry (driver not ready, GPUs that did not answer).
    Discovery,
    /// The MIG labels at this revision ask for a rediscovery.
    MigLayout { revision: u64 },
}

/// What a load came to.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadOutcome {
    /// Applied by the shell (config read, GPUs discovered, plan accepted,
    /// CDI spec written, MPS control daemons started).
    Applied(Box<Applied>),
    /// Discovery failed with `failOnInitError: false`: nothing applied.
    NotReady(String),
    /// A bad config, a refused plan, or a CDI spec that cannot be written:
    /// nothing applied.
    Refused(String),
}

/// A load the shell applied: what the machine must know of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The resources planned (the device lists the shell serves).
    pub resources: Vec<Arc<Resource>>,
    /// Every GPU advertised.
    pub gpus: Vec<AdvertisedGpu>,
    /// UUIDs of the MIG-capable GPUs (what MIG Manager may repartition).
    pub mig_capable: Vec<String>,
    /// GPUs NVML counts that discovery could not read: `(index, why)`.
    pub unreachable: Vec<(u32, String)>,
    /// The health policy of the config and environment.
    pub policy: HealthPolicy,
    /// Per MPS resource: the GPUs behind its control daemon and, when it is
    /// not ready, why.
    pub mps: BTreeMap<ResourceName, MpsReadiness>,
}

/// An MPS resource's control daemon as a load left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpsReadiness {
    pub gpus: Vec<String>,
    pub not_ready: Option<String>,
}

/// What happens to the node.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeEvent {
    /// A [`NodeAction::Load`] ended.
    Loaded {
        cause: LoadCause,
        outcome: LoadOutcome,
    },
    /// A reload was asked for (SIGHUP).
    ReloadAsked,
    /// The MIG labels' levels now (MIG Manager's, or the applier's).
    MigLabels(MigLevels),
    /// An XID event from the NVML watcher.
    Xid(XidEvent),
    /// The watcher cannot watch this GPU (NVML calls fail, its XID events
    /// cannot be read, or the driver says it needs a reset).
    Unwatched { gpu_uuid: String, reason: String },
    /// The watcher watches this GPU again (or for the first time).
    Watched { gpu_uuid: String },
    /// The MPS control daemon of `resource` exited.
    MpsExited { resource: ResourceName },
    /// A [`NodeAction::RestartMps`] ended: the resource's control daemons
    /// are all ready (`None`), or why not.
    MpsRestarted {
        resource: ResourceName,
        not_ready: Option<String>,
    },
    /// The registration machine's word: every served resource is
    /// registered (or registration is off).
    Registration { all_registered: bool },
    /// Time passed: due timers fire.
    Tick,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeAction {
    /// Load and apply a setup; feed [`NodeEvent::Loaded`] with `cause`.
    Load(LoadCause),
    /// Serve the load just applied: its device lists with the current
    /// health ([`NodeMachine::health`]), and hand its resource names to the
    /// registration machine.
    Advertise,
    /// Re-send every resource's list with the current health.
    PushHealth,
    /// Readiness changed.
    SetReady(bool),
    /// Tell the MIG applier what is withdrawn now (`None`: nothing; the
    /// scope of the change it withdrew otherwise), so it can wait for
    /// exactly the withdrawal it asked for.
    TellWithdrawn(Option<MigScope>),
    /// Start the control daemons of this MPS resource that are not ready;
    /// feed [`NodeEvent::MpsRestarted`].
    RestartMps(ResourceName),
    /// The first load was refused: exit with this reason.
    Exit(String),
    /// Something to log or count.
    Notify(NodeNotice),
}

/// What the shell logs and counts.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeNotice {
    /// No driver or no GPU at start: waiting for discovery.
    NoDevicesYet {
        error: String,
    },
    DiscoveryRetryIn(Duration),
    DiscoveryFailedAgain {
        error: String,
    },
    DiscoverySucceeded,
    /// An applied load could not be kept ([`LoadCause::Discovery`]).
    DiscoveryNotApplied {
        error: String,
    },
    GpuUnreadable {
        index: u32,
        reason: String,
    },
    GpuAnswersAgain {
        index: u32,
    },
    /// How many GPUs are not advertised because discovery cannot read them.
    Undiscovered(usize),
    ReloadApplied,
    ReloadRefused {
        error: String,
    },
    /// A malformed entry of the health environment variables.
    HealthPolicyMalformed(String),
    /// GPUs advertised Unhealthy until the watcher confirms them.
    WaitingForWatcher {
        gpus: Vec<String>,
    },
    /// The MIG labels ask for a withdrawal (its scope is `levels.scope`):
    /// `gpus` GPUs touched, `devices` advertised devices withdrawn;
    /// `at_start`: before anything was advertised.
    MigWithdrawn {
        levels: MigLevels,
        gpus: usize,
        devices: usize,
        at_start: bool,
    },
    /// A MIG change is (1) or is not (0) under way.
    MigRepartitioning(bool),
    MigRediscovering {
        levels: MigLevels,
        withdrawn: bool,
    },
    MigRediscoveryFailed {
        error: String,
        retry_in: Duration,
        withdrawn: bool,
    },
    XidCounted {
        xid: u64,
    },
    XidIgnored {
        xid: u64,
        gpu_uuid: String,
    },
    /// Devices an XID made Unhealthy: `(resource, device)`.
    XidUnhealthy {
        xid: u64,
        action: XidAction,
        devices: Vec<(ResourceName, String)>,
    },
    Recovered {
        devices: Vec<String>,
    },
    /// The watcher reported a GPU not watched while checks are off.
    UnwatchedChecksOff {
        gpu_uuid: String,
        reason: String,
    },
    /// Devices marked Unhealthy because their GPU is not watched.
    UnwatchedUnhealthy {
        gpu_uuid: String,
        reason: String,
        devices: Vec<(ResourceName, String)>,
    },
    WatchedAgain {
        gpu_uuid: String,
    },
    /// An MPS resource's control daemon is not ready (it exited, or did
    /// not start): it is started again after `delay`.
    MpsRestartIn {
        resource: ResourceName,
        delay: Duration,
    },
    MpsReadyAgain {
        resource: ResourceName,
    },
}

/// What the machine is told once, at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSettings {
    /// GPUs are read from NVML and an XID watcher runs: with health checks
    /// on, a GPU is Healthy only once the watcher confirms it.
    pub health_watched: bool,
}

/// The node machine. See the module docs.
#[derive(Debug)]
pub struct NodeMachine {
    settings: NodeSettings,
    /// The last load applied.
    resources: Vec<Arc<Resource>>,
    applied: bool,
    undiscovered: BTreeSet<u32>,
    discovery_at: Option<Instant>,
    discovery_backoff: Backoff,
    health: HealthState,
    policy: HealthPolicy,
    mps_gpus: BTreeMap<ResourceName, Vec<String>>,
    /// Per MPS resource whose control daemon is not ready: its restart.
    mps_restarts: BTreeMap<ResourceName, MpsRestart>,
    mig_capable: Vec<String>,
    mig: Option<MigFollow>,
    registered: bool,
    ready: bool,
}

/// The restart of an MPS resource's control daemon that is not ready.
#[derive(Debug)]
struct MpsRestart {
    backoff: Backoff,
    /// When the next start is due; `None` while one is under way.
    at: Option<Instant>,
}

/// Following the MIG labels: what was seen and what was acted on.
#[derive(Debug)]
struct MigFollow {
    levels: MigLevels,
    /// What is withdrawn: the scope of the change last acted on, until a
    /// rediscovery after it is applied.
    withdrawn: Option<MigScope>,
    /// The revision the last rediscovery (or the first load) reflects.
    discovered: Option<u64>,
    retry_at: Option<Instant>,
    backoff: Backoff,
}

impl NodeMachine {
    /// `mig`: the MIG labels when followed, read before the first load (a
    /// change during it is acted on). Returns the machine and what to do
    /// before the first load (withdraw, when the labels say so).
    pub fn new(settings: NodeSettings, mig: Option<MigLevels>) -> (NodeMachine, Vec<NodeAction>) {
        let mut machine = NodeMachine {
            settings,
            resources: Vec::new(),
            applied: false,
            undiscovered: BTreeSet::new(),
            discovery_at: None,
            discovery_backoff: DISCOVERY_BACKOFF,
            health: HealthState::default(),
            policy: HealthPolicy::new(&Default::default(), None, None),
            mps_gpus: BTreeMap::new(),
            mps_restarts: BTreeMap::new(),
            mig_capable: Vec::new(),
            mig: mig.map(|levels| MigFollow {
                discovered: Some(levels.revision),
                withdrawn: None,
                levels,
                retry_at: None,
                backoff: MIG_REDISCOVERY_BACKOFF,
            }),
            registered: false,
            ready: false,
        };
        let mut out = Vec::new();
        if let Some(mig) = &mut machine.mig
            && mig.levels.withdrawn()
        {
            // Nothing is advertised yet: the first load takes it in.
            mig.withdrawn = Some(mig.levels.scope.clone());
            out.push(NodeAction::TellWithdrawn(mig.withdrawn.clone()));
            out.push(NodeAction::Notify(NodeNotice::MigRepartitioning(true)));
            out.push(NodeAction::Notify(NodeNotice::MigWithdrawn {
                levels: mig.levels.clone(),
                gpus: 0,
                devices: 0,
                at_start: true,
            }));
        }
        (machine, out)
    }

    /// The health every advertised device is pushed with.
    pub fn health(&self) -> &HealthState {
        &self.health
    }

    /// The resources of the last load applied.
    pub fn resources(&self) -> &[Arc<Resource>] {
        &self.resources
    }

    /// Something is withdrawn (a MIG change is under way, or its
    /// rediscovery has not been applied yet).
    pub fn withdrawn(&self) -> bool {
        self.withdrawal().is_some()
    }

    /// What is withdrawn: the whole node's MIG-capable GPUs, or the
    /// devices a per-GPU target changes; `None`: nothing.
    pub fn withdrawal(&self) -> Option<&MigScope> {
        self.mig.as_ref().and_then(|m| m.withdrawn.as_ref())
    }

    /// Whether the daemon is ready (what `/readyz` says).
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// The earliest timer: a discovery retry, a MIG rediscovery retry, an
    /// MPS control daemon's restart, or an XID recovery. The shell feeds
    /// [`NodeEvent::Tick`] then.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.discovery_at,
            self.mig.as_ref().and_then(|m| m.retry_at),
            self.mps_restarts.values().filter_map(|r| r.at).min(),
            self.health.next_recovery(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Handles one event at `now`; returns what to do, in order.
    pub fn handle(&mut self, event: NodeEvent, now: Instant) -> Vec<NodeAction> {
        let mut out = Vec::new();
        match event {
            NodeEvent::Loaded { cause, outcome } => self.on_loaded(cause, outcome, now, &mut out),
            NodeEvent::ReloadAsked => out.push(NodeAction::Load(LoadCause::Reload)),
            NodeEvent::MigLabels(levels) => {
                if let Some(mig) = &mut self.mig {
                    mig.levels = levels;
                }
                self.reconcile_mig(&mut out);
            }
            NodeEvent::Xid(event) => self.on_xid(event, now, &mut out),
            NodeEvent::Unwatched { gpu_uuid, reason } => {
                if !self.policy.enabled {
                    out.push(notice(NodeNotice::UnwatchedChecksOff {
                        gpu_uuid: gpu_uuid.clone(),
                        reason: reason.clone(),
                    }));
                }
                if self.health.watch_report(&gpu_uuid, Some(&reason)) {
                    let devices = self.devices_of(&gpu_uuid);
                    out.push(notice(NodeNotice::UnwatchedUnhealthy {
                        gpu_uuid,
                        reason,
                        devices,
                    }));
                    out.push(NodeAction::PushHealth);
                }
            }
            NodeEvent::Watched { gpu_uuid } => {
                let first = matches!(
                    self.health.condition(&gpu_uuid, Condition::Unreachable),
                    None | Some(NOT_WATCHED_YET)
                );
                if self.health.watch_report(&gpu_uuid, None) {
                    if self.health.is_healthy(&gpu_uuid) && !first {
                        out.push(notice(NodeNotice::WatchedAgain { gpu_uuid }));
                    }
                    out.push(NodeAction::PushHealth);
                }
            }
            NodeEvent::MpsExited { resource } => {
                // An exit of a resource the last load no longer has is old
                // news: its daemons were stopped.
                if self.mps_gpus.contains_key(&resource) {
                    if self.set_mps_health(&resource, Some(MPS_EXITED)) {
                        out.push(NodeAction::PushHealth);
                    }
                    self.schedule_mps_restart(&resource, now, &mut out);
                }
            }
            NodeEvent::MpsRestarted {
                resource,
                not_ready,
            } => self.on_mps_restarted(resource, not_ready, now, &mut out),
            NodeEvent::Registration { all_registered } => self.registered = all_registered,
            NodeEvent::Tick => self.on_tick(now, &mut out),
        }
        self.update_ready(&mut out);
        out
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<NodeAction>) {
        let recovered = self.health.recover(now);
        if !recovered.is_empty() {
            out.push(notice(NodeNotice::Recovered { devices: recovered }));
            out.push(NodeAction::PushHealth);
        }
        if self.discovery_at.is_some_and(|at| at <= now) {
            self.discovery_at = None;
            out.push(NodeAction::Load(LoadCause::Discovery));
        }
        if let Some(mig) = &mut self.mig
            && mig.retry_at.is_some_and(|at| at <= now)
        {
            mig.retry_at = None;
            self.reconcile_mig(out);
        }
        for (resource, restart) in &mut self.mps_restarts {
            if restart.at.is_some_and(|at| at <= now) {
                restart.at = None;
                out.push(NodeAction::RestartMps(resource.clone()));
            }
        }
    }

    /// A resource's control daemon is not ready: its next start is due
    /// after the back-off, unless one is already scheduled or under way.
    fn schedule_mps_restart(
        &mut self,
        resource: &ResourceName,
        now: Instant,
        out: &mut Vec<NodeAction>,
    ) {
        let restart = self
            .mps_restarts
            .entry(resource.clone())
            .or_insert(MpsRestart {
                backoff: MPS_RESTART_BACKOFF,
                at: None,
            });
        if restart.at.is_none() {
            let delay = restart.backoff.next_delay();
            restart.at = Some(now + delay);
            out.push(notice(NodeNotice::MpsRestartIn {
                resource: resource.clone(),
                delay,
            }));
        }
    }

    fn on_mps_restarted(
        &mut self,
        resource: ResourceName,
        not_ready: Option<String>,
        now: Instant,
        out: &mut Vec<NodeAction>,
    ) {
        if !self.mps_gpus.contains_key(&resource) {
            self.mps_restarts.remove(&resource);
            return;
        }
        match not_ready {
            Some(why) => {
                if self.set_mps_health(&resource, Some(&why)) {
                    out.push(NodeAction::PushHealth);
                }
                self.schedule_mps_restart(&resource, now, out);
            }
            None => {
                self.mps_restarts.remove(&resource);
                out.push(notice(NodeNotice::MpsReadyAgain {
                    resource: resource.clone(),
                }));
                if self.set_mps_health(&resource, None) {
                    out.push(NodeAction::PushHealth);
                }
            }
        }
    }

    fn on_loaded(
        &mut self,
        cause: LoadCause,
        outcome: LoadOutcome,
        now: Instant,
        out: &mut Vec<NodeAction>,
    ) {
        match (cause, outcome) {
            (_, LoadOutcome::Applied(applied)) => {
                let every = applied.unreachable.is_empty();
                self.apply(*applied, now, out);
                match cause {
                    LoadCause::Reload => out.push(notice(NodeNotice::ReloadApplied)),
                    LoadCause::Discovery if every => {
                        out.push(notice(NodeNotice::DiscoverySucceeded));
                    }
                    LoadCause::MigLayout { revision } => self.rediscovered(revision, out),
                    LoadCause::Start | LoadCause::Discovery => {}
                }
            }
            (LoadCause::Start, LoadOutcome::Refused(error)) => out.push(NodeAction::Exit(error)),
            (LoadCause::Start, LoadOutcome::NotReady(error)) => {
                out.push(notice(NodeNotice::NoDevicesYet { error }));
                self.schedule_discovery(now, out);
            }
            (LoadCause::Reload, LoadOutcome::Refused(error) | LoadOutcome::NotReady(error)) => {
                out.push(notice(NodeNotice::ReloadRefused { error }));
            }
            (LoadCause::Discovery, LoadOutcome::NotReady(error)) => {
                out.push(notice(NodeNotice::DiscoveryFailedAgain { error }));
                self.schedule_discovery(now, out);
            }
            (LoadCause::Discovery, LoadOutcome::Refused(error)) => {
                out.push(notice(NodeNotice::DiscoveryNotApplied { error }));
                self.schedule_discovery(now, out);
            }
            (
                LoadCause::MigLayout { .. },
                LoadOutcome::NotReady(error) | LoadOutcome::Refused(error),
            ) => {
                if let Some(mig) = &mut self.mig {
                    let retry_in = mig.backoff.next_delay();
                    mig.retry_at = Some(now + retry_in);
                    out.push(notice(NodeNotice::MigRediscoveryFailed {
                        error,
                        retry_in,
                        withdrawn: mig.withdrawn.is_some(),
                    }));
                }
            }
        }
    }

    /// Takes an applied load in: health, discovery, MPS, then advertises.
    fn apply(&mut self, applied: Applied, now: Instant, out: &mut Vec<NodeAction>) {
        let Applied {
            resources,
            gpus,
            mig_capable,
            unreachable,
            policy,
            mps,
        } = applied;
        self.applied = true;
        self.mig_capable = mig_capable;
        self.follow_discovery(&unreachable, now, out);
        for message in &policy.malformed {
            out.push(notice(NodeNotice::HealthPolicyMalformed(message.clone())));
        }
        self.policy = policy;
        self.advertise_gpus(gpus, out);
        for gpus in std::mem::take(&mut self.mps_gpus).into_values() {
            for gpu in gpus {
                self.health
                    .set_condition(&gpu, Condition::MpsNotReady, None);
            }
        }
        // A restart keeps its back-off across loads while its daemon stays
        // not ready; a resource gone or ready needs none.
        self.mps_restarts.retain(|name, _| {
            mps.get(name)
                .is_some_and(|daemon| daemon.not_ready.is_some())
        });
        for (name, daemon) in mps {
            self.mps_gpus.insert(name.clone(), daemon.gpus);
            self.set_mps_health(&name, daemon.not_ready.as_deref());
            if daemon.not_ready.is_some() {
                self.schedule_mps_restart(&name, now, out);
            }
        }
        self.resources = resources;
        // Still withdrawn (a reload during a change, or the first load
        // under labels that withdraw): the new devices are withdrawn as the
        // change asks, before they are advertised.
        self.sync_withdrawal();
        out.push(NodeAction::Advertise);
    }

    /// GPUs discovery could not read stay unadvertised and discovery is
    /// retried on a back-off until every GPU answers.
    fn follow_discovery(
        &mut self,
        unreachable: &[(u32, String)],
        now: Instant,
        out: &mut Vec<NodeAction>,
    ) {
        let indices: BTreeSet<u32> = unreachable.iter().map(|(index, _)| *index).collect();
        for &index in self.undiscovered.difference(&indices) {
            out.push(notice(NodeNotice::GpuAnswersAgain { index }));
        }
        for (index, reason) in unreachable {
            if !self.undiscovered.contains(index) {
                out.push(notice(NodeNotice::GpuUnreadable {
                    index: *index,
                    reason: reason.clone(),
                }));
            }
        }
        out.push(notice(NodeNotice::Undiscovered(indices.len())));
        self.undiscovered = indices;
        if self.undiscovered.is_empty() {
            self.discovery_at = None;
            self.discovery_backoff.reset();
        } else {
            self.schedule_discovery(now, out);
        }
    }

    fn schedule_discovery(&mut self, now: Instant, out: &mut Vec<NodeAction>) {
        let delay = self.discovery_backoff.next_delay();
        self.discovery_at = Some(now + delay);
        out.push(notice(NodeNotice::DiscoveryRetryIn(delay)));
    }

    /// The GPUs a load advertises: each one Healthy only once the watcher
    /// confirms it, when there is one and health checks are on.
    fn advertise_gpus(&mut self, gpus: Vec<AdvertisedGpu>, out: &mut Vec<NodeAction>) {
        let required = self.settings.health_watched && self.policy.enabled;
        let before: BTreeSet<String> = self
            .health
            .advertised()
            .iter()
            .map(|g| g.uuid.clone())
            .collect();
        self.health.advertise(gpus, required);
        let waiting: Vec<String> = self
            .health
            .advertised()
            .iter()
            .filter(|g| {
                !before.contains(&g.uuid)
                    && self.health.condition(&g.uuid, Condition::Unreachable)
                        == Some(NOT_WATCHED_YET)
            })
            .map(|g| format!("{} {}", g.index, g.uuid))
            .collect();
        if !waiting.is_empty() {
            out.push(notice(NodeNotice::WaitingForWatcher { gpus: waiting }));
        }
    }

    fn set_mps_health(&mut self, resource: &ResourceName, not_ready: Option<&str>) -> bool {
        let mut changed = false;
        for gpu in self.mps_gpus.get(resource).into_iter().flatten() {
            changed |= self
                .health
                .set_condition(gpu, Condition::MpsNotReady, not_ready);
        }
        changed
    }

    /// Brings the devices in line with what the MIG labels ask now.
    fn reconcile_mig(&mut self, out: &mut Vec<NodeAction>) {
        let Some(mig) = &mut self.mig else {
            return;
        };
        if mig.levels.withdrawn() {
            mig.retry_at = None;
            out.push(notice(NodeNotice::MigRepartitioning(true)));
            let scope = mig.levels.scope.clone();
            if mig.withdrawn.as_ref() != Some(&scope) {
                // A new change, or the same change asking for another
                // scope: what is withdrawn follows the labels' level.
                mig.withdrawn = Some(scope.clone());
                let levels = mig.levels.clone();
                let changed = self.sync_withdrawal();
                let gpus = match &scope {
                    MigScope::Node => self.mig_capable.len(),
                    MigScope::Gpus(gpus) => gpus.len(),
                };
                out.push(notice(NodeNotice::MigWithdrawn {
                    levels,
                    gpus,
                    devices: self.withdrawn_devices(),
                    at_start: false,
                }));
                if changed {
                    out.push(NodeAction::PushHealth);
                }
            }
            out.push(NodeAction::TellWithdrawn(Some(scope)));
            return;
        }
        out.push(notice(NodeNotice::MigRepartitioning(false)));
        if mig.withdrawn.is_none() && mig.discovered == Some(mig.levels.revision) {
            // Acted on already: nothing to do, nothing to retry.
            mig.retry_at = None;
            return;
        }
        // A label change does not wait for an armed retry: it may be the
        // change that makes the rediscovery succeed.
        mig.retry_at = None;
        out.push(notice(NodeNotice::MigRediscovering {
            levels: mig.levels.clone(),
            withdrawn: mig.withdrawn.is_some(),
        }));
        let revision = mig.levels.revision;
        out.push(NodeAction::Load(LoadCause::MigLayout { revision }));
    }

    /// A rediscovery at `revision` was applied: the GPUs hold what it found.
    fn rediscovered(&mut self, revision: u64, out: &mut Vec<NodeAction>) {
        let Some(mig) = &mut self.mig else {
            return;
        };
        mig.discovered = Some(revision);
        mig.retry_at = None;
        mig.backoff.reset();
        if mig.levels.withdrawn() {
            // The labels moved on to a new change while it ran: stay out.
            return;
        }
        let was = mig.withdrawn.take();
        out.push(NodeAction::TellWithdrawn(None));
        if was.is_some() && self.sync_withdrawal() {
            out.push(NodeAction::PushHealth);
        }
        // Labels that changed again while it ran are looked at now.
        self.reconcile_mig(out);
    }

    /// The UUIDs that must hold [`Condition::Repartitioning`] under the
    /// withdrawal now, for the devices advertised now: every MIG-capable
    /// GPU for the whole node; for a per-GPU target, each device of a GPU
    /// it changes but those of the GPU instances it keeps (a device that is
    /// not a MIG device of a kept instance is withdrawn: fail closed).
    fn withdrawn_uuids(&self) -> BTreeSet<String> {
        match self.withdrawal() {
            None => BTreeSet::new(),
            Some(MigScope::Node) => self.mig_capable.iter().cloned().collect(),
            Some(MigScope::Gpus(gpus)) => self
                .resources
                .iter()
                .flat_map(|r| &r.devices)
                .filter(|d| {
                    gpus.get(&d.physical.gpu_uuid).is_some_and(|kept| {
                        !d.physical
                            .mig
                            .is_some_and(|ids| kept.contains(&ids.gpu_instance))
                    })
                })
                .map(|d| d.physical.uuid.clone())
                .collect(),
        }
    }

    /// Sets [`Condition::Repartitioning`] on exactly
    /// [`Self::withdrawn_uuids`], clearing it everywhere else (devices gone
    /// with a load included); returns true if any health changed. By
    /// level: whatever was withdrawn before, the result is the same.
    fn sync_withdrawal(&mut self) -> bool {
        let want = self.withdrawn_uuids();
        let have = self.health.holding(Condition::Repartitioning);
        let reason = match self.withdrawal() {
            Some(MigScope::Gpus(_)) => TARGET_CHANGING,
            _ => REPARTITIONING,
        };
        let mut changed = false;
        for uuid in have.difference(&want) {
            changed |= self
                .health
                .set_condition(uuid, Condition::Repartitioning, None);
        }
        for uuid in &want {
            // A scope that changed kind changes the reason too.
            if self.health.condition(uuid, Condition::Repartitioning) != Some(reason) {
                self.health
                    .set_condition(uuid, Condition::Repartitioning, None);
                changed |= self
                    .health
                    .set_condition(uuid, Condition::Repartitioning, Some(reason));
            }
        }
        changed
    }

    /// How many advertised devices the withdrawal makes Unhealthy.
    fn withdrawn_devices(&self) -> usize {
        let health = &self.health;
        self.resources
            .iter()
            .flat_map(|r| &r.devices)
            .filter(|d| {
                health
                    .condition(&d.physical.uuid, Condition::Repartitioning)
                    .is_some()
                    || health
                        .condition(&d.physical.gpu_uuid, Condition::Repartitioning)
                        .is_some()
            })
            .count()
    }

    fn on_xid(&mut self, event: XidEvent, now: Instant, out: &mut Vec<NodeAction>) {
        out.push(notice(NodeNotice::XidCounted { xid: event.xid }));
        let action = self.policy.action(event.xid);
        if action == XidAction::Ignore {
            out.push(notice(NodeNotice::XidIgnored {
                xid: event.xid,
                gpu_uuid: event.gpu_uuid,
            }));
            return;
        }
        let mut changed = false;
        let mut devices = Vec::new();
        for resource in &self.resources {
            let hit = affected(&event, resource);
            devices.extend(hit.iter().map(|d| (resource.name.clone(), (*d).to_owned())));
            changed |= self
                .health
                .record(&hit, event.xid, action, now, &self.policy);
        }
        if !devices.is_empty() {
            out.push(notice(NodeNotice::XidUnhealthy {
                xid: event.xid,
                action,
                devices,
            }));
        }
        if changed {
            out.push(NodeAction::PushHealth);
        }
    }

    /// (resource, device id) of every advertised device on a GPU.
    fn devices_of(&self, gpu_uuid: &str) -> Vec<(ResourceName, String)> {
        self.resources
            .iter()
            .flat_map(|r| {
                r.devices
                    .iter()
                    .filter(|d| d.physical.gpu_uuid == gpu_uuid)
                    .map(|d| (r.name.clone(), d.id.clone()))
            })
            .collect()
    }

    fn update_ready(&mut self, out: &mut Vec<NodeAction>) {
        // A per-GPU target leaves the rest of the node serving: only a
        // whole-node withdrawal makes it not ready.
        let whole = matches!(self.withdrawal(), Some(MigScope::Node));
        let ready = self.applied && self.registered && !whole;
        if ready != self.ready {
            self.ready = ready;
            out.push(NodeAction::SetReady(ready));
        }
    }
}

fn notice(notice: NodeNotice) -> NodeAction {
    NodeAction::Notify(notice)
}
