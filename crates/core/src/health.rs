//! Device health: which XID events make which advertised devices unhealthy,
//! and when they recover. Pure: events and time in, health out.
//!
//! NVIDIA's plugin marks a device unhealthy on any critical XID outside a
//! small ignore list, marks only one device per physical GPU
//! (NVIDIA/k8s-device-plugin#1929), and never lets a device recover. Here an
//! event reaches every advertised device it affects (all replicas of the
//! GPU; for a MIG event, only the MIG device whose GPU/compute instance ids
//! match), and each XID has a documented action:
//!
//! | action | meaning | default XIDs |
//! |---|---|---|
//! | `ignore` | no health change | 13, 31, 43, 45, 68, 109 (NVIDIA's defaults: application faults) |
//! | `reset` | unhealthy until the GPU is reset (the daemon restarts or re-discovers) | 48, 62, 63, 64, 74, 79, 92, 95, 119, 120, 140 |
//! | `recover` | unhealthy, healthy again after `recoverAfter` without another event | every other XID |
//!
//! The configuration overrides any XID (`health.xids`, `health.recoverAfter`);
//! NVIDIA's `DP_DISABLE_HEALTHCHECKS` / `DP_ENABLE_HEALTHCHECKS` keep working.
//!
//! # Fail closed: healthy only while watched
//!
//! An XID that nobody reads is lost for good, so a GPU is advertised Healthy
//! only while its XID events are being watched: a gap in watching is a gap
//! in health. Two pure parts decide it, the shell only gathers what they
//! need:
//!
//! - the watcher's side, per GPU: [`WatchFacts::verdict`]. Watched means it
//!   answers, is registered in the current event set (or reports no XID
//!   events at all), the set's waits work ([`SetState::Working`]), and it
//!   passed a check made after that registration (the check stands for
//!   whatever happened in the gap before it); [`SetWatch`] decides when a
//!   set works (a returned wait; while waits keep failing, the zero-timeout
//!   confirmation of a new set is not enough); [`WaitPacer`] keeps the waits
//!   from spinning (absolute deadlines, a minimum spacing after a wait
//!   without an event);
//! - the daemon's side: [`HealthState::advertise`] and
//!   [`HealthState::watch_report`]. Where a watcher is required (GPUs read
//!   from NVML, health checks on), an advertised GPU holds
//!   [`Condition::Unreachable`] until the watcher reports it watched, and
//!   again whenever it reports it is not. Each GPU is counted once
//!   ([`HealthState::count_advertised`]): a GPU that is not advertised is the
//!   daemon's "undiscovered", never "unreachable".

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::config::InvalidValue;
use crate::plan::Resource;

/// What an XID does to the devices it affects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XidAction {
    Ignore,
    Recover,
    Reset,
}

impl XidAction {
    pub fn parse(value: &str) -> Result<XidAction, InvalidValue> {
        match value {
            "ignore" => Ok(XidAction::Ignore),
            "recover" => Ok(XidAction::Recover),
            "reset" => Ok(XidAction::Reset),
            other => Err(InvalidValue(format!(
                "unknown XID action '{other}': use ignore, recover or reset"
            ))),
        }
    }
}

/// NVIDIA's default-ignored XIDs.
pub const DEFAULT_IGNORED: &[u64] = &[13, 31, 43, 45, 68, 109];

/// XIDs after which NVIDIA's XID catalog asks for a GPU reset or reboot.
pub const DEFAULT_RESET: &[u64] = &[48, 62, 63, 64, 74, 79, 92, 95, 119, 120, 140];

/// The `health` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HealthConfig {
    pub recover_after: Option<Duration>,
    pub xids: BTreeMap<u64, XidAction>,
}

/// The effective policy: defaults, then the configuration, then NVIDIA's
/// environment variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthPolicy {
    pub enabled: bool,
    pub recover_after: Duration,
    actions: BTreeMap<u64, XidAction>,
    /// Entries of the environment variables that are not XIDs, as messages
    /// for the daemon to log (the core does not log).
    pub malformed: Vec<String>,
}

pub const DEFAULT_RECOVER_AFTER: Duration = Duration::from_secs(300);

impl HealthPolicy {
    /// `disable` and `enable` are the raw values of `DP_DISABLE_HEALTHCHECKS`
    /// and `DP_ENABLE_HEALTHCHECKS`. Unlike NVIDIA's plugin, `enable=all`
    /// turns checks back on even after `disable=all`, as its docs say.
    pub fn new(config: &HealthConfig, disable: Option<&str>, enable: Option<&str>) -> Self {
        let mut actions: BTreeMap<u64, XidAction> = BTreeMap::new();
        for &x in DEFAULT_IGNORED {
            actions.insert(x, XidAction::Ignore);
        }
        for &x in DEFAULT_RESET {
            actions.insert(x, XidAction::Reset);
        }
        actions.extend(config.xids.iter().map(|(k, v)| (*k, *v)));
        let mut enabled = true;
        let mut malformed = Vec::new();
        let list = |raw: Option<&str>| -> Vec<String> {
            raw.unwrap_or("")
                .to_lowercase()
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        for item in list(disable) {
            if item == "all" || item == "xids" {
                enabled = false;
            } else if let Ok(xid) = item.parse::<u64>() {
                actions.insert(xid, XidAction::Ignore);
            } else {
                malformed.push(format!(
                    "Ignoring malformed Xid value {item} in DP_DISABLE_HEALTHCHECKS"
                ));
            }
        }
        for item in list(enable) {
            if item == "all" {
                enabled = true;
                for action in actions.values_mut() {
                    if *action == XidAction::Ignore {
                        *action = XidAction::Recover;
                    }
                }
            } else if let Ok(xid) = item.parse::<u64>() {
                if actions.get(&xid).is_none_or(|a| *a == XidAction::Ignore) {
                    actions.insert(xid, XidAction::Recover);
                }
            } else {
                malformed.push(format!(
                    "Ignoring malformed Xid value {item} in DP_ENABLE_HEALTHCHECKS"
                ));
            }
        }
        HealthPolicy {
            enabled,
            recover_after: config.recover_after.unwrap_or(DEFAULT_RECOVER_AFTER),
            actions,
            malformed,
        }
    }

    pub fn action(&self, xid: u64) -> XidAction {
        if !self.enabled {
            return XidAction::Ignore;
        }
        self.actions
            .get(&xid)
            .copied()
            .unwrap_or(XidAction::Recover)
    }
}

/// An XID event as NVML reports it. `gpu_instance`/`compute_instance` are
/// `None` for an event on the whole GPU (NVML's 0xFFFFFFFF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XidEvent {
    pub gpu_uuid: String,
    pub xid: u64,
    pub gpu_instance: Option<u32>,
    pub compute_instance: Option<u32>,
}

/// Physical devices (GPU or MIG UUIDs) that an event affects, among those a
/// resource advertises.
pub fn affected<'r>(event: &XidEvent, resource: &'r Resource) -> Vec<&'r str> {
    let mut out: Vec<&str> = Vec::new();
    for device in &resource.devices {
        let p = &device.physical;
        if p.gpu_uuid != event.gpu_uuid {
            continue;
        }
        let hit = match (p.mig, event.gpu_instance) {
            (Some(ids), Some(gi)) => {
                ids.gpu_instance == gi
                    && event
                        .compute_instance
                        .is_none_or(|ci| ci == ids.compute_instance)
            }
            // A whole-GPU event affects everything on that GPU; a MIG event
            // on a GPU advertised whole affects the whole GPU.
            _ => true,
        };
        if hit && out.last() != Some(&p.uuid.as_str()) && !out.contains(&p.uuid.as_str()) {
            out.push(p.uuid.as_str());
        }
    }
    out
}

/// Why a physical device is unhealthy, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unhealthy {
    pub xid: u64,
    /// `None`: until reset.
    pub until: Option<Instant>,
}

/// Why a GPU is unhealthy besides XIDs; each cause is set and cleared on
/// its own, and a GPU is healthy only when none holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Condition {
    /// Not watched: its NVML calls fail, its XID events cannot be read (or
    /// are not registered yet), or the driver says it needs a reset; clears
    /// when the watcher reports it watched again.
    Unreachable,
    /// Its MPS control daemon is not ready (MPS resources).
    MpsNotReady,
    /// A MIG change is under way (`nvidia.com/mig.config.state`): held by
    /// every MIG-capable GPU while MIG Manager or a named layout changes
    /// the node, by single MIG devices while a per-GPU target destroys
    /// their instances.
    Repartitioning,
}

/// Health of physical devices (by UUID); absent = healthy.
///
/// Two kinds of cause: XID events ([`HealthState::record`]), which recover
/// by time or not at all, and [`Condition`]s of a whole GPU
/// ([`HealthState::set_condition`]), which clear when their cause does.
///
/// Watching is followed here too ([`HealthState::advertise`],
/// [`HealthState::watch_report`]): where a watcher is required, an
/// advertised GPU holds [`Condition::Unreachable`] until the watcher has
/// reported it watched, and again whenever it reports it is not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthState {
    unhealthy: HashMap<String, Unhealthy>,
    /// GPU UUID → its conditions and why.
    conditions: BTreeMap<String, BTreeMap<Condition, String>>,
    /// The watcher's last word on each GPU: `None`: watched; `Some`: why not.
    watch: BTreeMap<String, Option<String>>,
    /// A watcher must confirm each GPU before it is Healthy.
    watch_required: bool,
    /// The GPUs advertised now.
    advertised: Vec<AdvertisedGpu>,
}

/// A GPU as advertised: its NVML index, UUID and MIG devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvertisedGpu {
    pub index: u32,
    pub uuid: String,
    pub mig_uuids: Vec<String>,
}

impl AdvertisedGpu {
    pub fn of(gpu: &crate::gpu::Gpu) -> AdvertisedGpu {
        AdvertisedGpu {
            index: gpu.index,
            uuid: gpu.uuid.clone(),
            mig_uuids: gpu.mig_devices.iter().map(|m| m.uuid.clone()).collect(),
        }
    }
}

/// Why a GPU the watcher has not reported on yet is not Healthy.
pub const NOT_WATCHED_YET: &str = "its XID events are not watched yet";

impl HealthState {
    /// Records an event on `devices`; returns true if any health changed.
    pub fn record(
        &mut self,
        devices: &[&str],
        xid: u64,
        action: XidAction,
        now: Instant,
        policy: &HealthPolicy,
    ) -> bool {
        let until = match action {
            XidAction::Ignore => return false,
            XidAction::Recover => Some(now + policy.recover_after),
            XidAction::Reset => None,
        };
        let mut changed = false;
        for device in devices {
            let entry = self.unhealthy.entry((*device).to_owned());
            match entry {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(Unhealthy { xid, until });
                    changed = true;
                }
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    // A reset-class event wins over a timed one; a new timed
                    // event restarts the quiet period.
                    let current = o.get_mut();
                    if current.until.is_some() {
                        current.until = until;
                        current.xid = xid;
                    }
                }
            }
        }
        changed
    }

    /// Devices whose quiet period is over become healthy; returns them.
    pub fn recover(&mut self, now: Instant) -> Vec<String> {
        let due: Vec<String> = self
            .unhealthy
            .iter()
            .filter(|(_, u)| u.until.is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &due {
            self.unhealthy.remove(key);
        }
        due
    }

    pub fn next_recovery(&self) -> Option<Instant> {
        self.unhealthy.values().filter_map(|u| u.until).min()
    }

    pub fn is_healthy(&self, physical_uuid: &str) -> bool {
        !self.unhealthy.contains_key(physical_uuid) && !self.conditions.contains_key(physical_uuid)
    }

    /// Sets (`Some(reason)`) or clears (`None`) one condition of a GPU;
    /// returns true if it changed. The others stay as they are.
    pub fn set_condition(
        &mut self,
        gpu_uuid: &str,
        condition: Condition,
        reason: Option<&str>,
    ) -> bool {
        match reason {
            Some(reason) => self
                .conditions
                .entry(gpu_uuid.to_owned())
                .or_default()
                .insert(condition, reason.to_owned())
                .is_none(),
            None => {
                let Some(held) = self.conditions.get_mut(gpu_uuid) else {
                    return false;
                };
                let removed = held.remove(&condition).is_some();
                if held.is_empty() {
                    self.conditions.remove(gpu_uuid);
                }
                removed
            }
        }
    }

    /// How many GPUs hold `condition`.
    pub fn count(&self, condition: Condition) -> usize {
        self.conditions
            .values()
            .filter(|held| held.contains_key(&condition))
            .count()
    }

    /// The UUIDs (GPUs or MIG devices) that hold `condition`.
    pub fn holding(&self, condition: Condition) -> BTreeSet<String> {
        self.conditions
            .iter()
            .filter(|(_, held)| held.contains_key(&condition))
            .map(|(uuid, _)| uuid.clone())
            .collect()
    }

    pub fn get(&self, physical_uuid: &str) -> Option<&Unhealthy> {
        self.unhealthy.get(physical_uuid)
    }

    /// The GPUs advertised now, and whether a watcher must confirm each
    /// one (health checks on, and GPUs read from NVML). Returns true if any
    /// health changed.
    ///
    /// Fail closed: a required GPU the watcher has not reported on yet holds
    /// [`Condition::Unreachable`] ([`NOT_WATCHED_YET`]); one it reported not
    /// watched holds it with the watcher's reason. Not required: the
    /// watcher's word is kept (for when it is required again) but decides
    /// nothing.
    pub fn advertise(&mut self, gpus: Vec<AdvertisedGpu>, watch_required: bool) -> bool {
        self.watch_required = watch_required;
        let mut changed = false;
        // GPUs no longer advertised keep no watch condition.
        let gone: Vec<String> = self
            .conditions
            .iter()
            .filter(|(uuid, held)| {
                held.contains_key(&Condition::Unreachable) && !gpus.iter().any(|g| &g.uuid == *uuid)
            })
            .map(|(uuid, _)| uuid.clone())
            .collect();
        for uuid in gone {
            changed |= self.set_condition(&uuid, Condition::Unreachable, None);
        }
        self.advertised = gpus;
        for uuid in self
            .advertised
            .iter()
            .map(|g| g.uuid.clone())
            .collect::<Vec<_>>()
        {
            changed |= self.apply_watch(&uuid);
        }
        changed
    }

    /// The watcher's word on a GPU: `None`: its XID events are watched (and
    /// it answered a check since they were registered); `Some(reason)`:
    /// they are not, or it needs a reset. Returns true if any health changed.
    pub fn watch_report(&mut self, gpu_uuid: &str, not_watched: Option<&str>) -> bool {
        self.watch
            .insert(gpu_uuid.to_owned(), not_watched.map(str::to_owned));
        if self.advertised.iter().any(|g| g.uuid == gpu_uuid) {
            self.apply_watch(gpu_uuid)
        } else {
            false
        }
    }

    /// Sets or clears the watch condition of an advertised GPU.
    fn apply_watch(&mut self, gpu_uuid: &str) -> bool {
        let reason = if self.watch_required {
            match self.watch.get(gpu_uuid) {
                Some(word) => word.clone(),
                None => Some(NOT_WATCHED_YET.to_owned()),
            }
        } else {
            None
        };
        // A reason that changed (not watched → needs a reset) is recorded.
        let held = self
            .conditions
            .get(gpu_uuid)
            .and_then(|held| held.get(&Condition::Unreachable))
            .cloned();
        if held == reason {
            return false;
        }
        self.set_condition(gpu_uuid, Condition::Unreachable, None);
        self.set_condition(gpu_uuid, Condition::Unreachable, reason.as_deref());
        true
    }

    /// The advertised GPUs, in the order given to [`HealthState::advertise`].
    pub fn advertised(&self) -> &[AdvertisedGpu] {
        &self.advertised
    }

    /// A GPU is healthy when it holds no condition or XID and none of its
    /// MIG devices holds an XID: every device on it is advertised Healthy.
    pub fn gpu_healthy(&self, gpu: &AdvertisedGpu) -> bool {
        self.is_healthy(&gpu.uuid) && gpu.mig_uuids.iter().all(|m| self.is_healthy(m))
    }

    /// How many advertised GPUs hold `condition`: each GPU counted once
    /// (GPUs that are not advertised are not counted).
    pub fn count_advertised(&self, condition: Condition) -> usize {
        self.advertised
            .iter()
            .filter(|g| {
                self.conditions
                    .get(&g.uuid)
                    .is_some_and(|held| held.contains_key(&condition))
            })
            .count()
    }

    /// Why a GPU holds `condition`, if it does.
    pub fn condition(&self, gpu_uuid: &str, condition: Condition) -> Option<&str> {
        self.conditions
            .get(gpu_uuid)
            .and_then(|held| held.get(&condition))
            .map(String::as_str)
    }
}

/// A GPU's registration for XID events in the watcher's current event set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// Not registered in the current set (no set yet, a new set, a new GPU).
    NotYet,
    Registered,
    /// The GPU reports no XID events: nothing to watch (NVIDIA's plugin
    /// keeps such GPUs Healthy, and so does gpu-slicer).
    Unsupported,
    /// Registering failed, with what the driver said.
    Failed(String),
}

/// The watcher's event set, as its waits show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetState {
    /// No set: none could be created yet.
    Missing(String),
    /// Created, and no wait on it has returned yet.
    Unconfirmed,
    /// Its latest wait returned an event or a timeout.
    Working,
    /// Its latest wait failed: events queued in it are lost.
    Failed(String),
}

/// The watcher's event set through its life: created, confirmed by its
/// waits, failed. Which wait outcome makes the set count as working is
/// decided here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetWatch {
    state: SetState,
    /// Waits failed since the last real (non-confirming) one that returned.
    failures: u32,
}

impl Default for SetWatch {
    fn default() -> Self {
        SetWatch {
            state: SetState::Missing("not created yet".into()),
            failures: 0,
        }
    }
}

impl SetWatch {
    pub fn state(&self) -> &SetState {
        &self.state
    }

    /// A new set was created (it replaces any other).
    pub fn created(&mut self) {
        self.state = SetState::Unconfirmed;
    }

    /// No set could be created; one that still exists keeps its state.
    pub fn creation_failed(&mut self, reason: String, a_set_exists: bool) {
        if !a_set_exists {
            self.state = SetState::Missing(reason);
        }
    }

    /// A wait returned an event or a timeout. `confirming`: the
    /// zero-timeout wait on a new set. It confirms the set after one
    /// failure (a lost GPU left out: the others are never reported
    /// unwatched), but not after several in a row: a driver whose
    /// zero-timeout waits work while its real ones fail must not have its
    /// GPUs flap Healthy, so only a real wait that returns ends a streak.
    /// Returns true if the set counts as working now.
    pub fn returned(&mut self, confirming: bool) -> bool {
        if confirming {
            if self.failures > 1 {
                return false;
            }
        } else {
            self.failures = 0;
        }
        self.state = SetState::Working;
        true
    }

    /// A wait failed: the set is gone with its unread events. Returns true
    /// for the first failure of a streak (rebuilt at once; later ones back
    /// off).
    pub fn failed(&mut self, reason: String) -> bool {
        self.failures = self.failures.saturating_add(1);
        self.state = SetState::Failed(reason);
        self.failures == 1
    }
}

/// Why the driver says a GPU may not be advertised Healthy (the message
/// names the NVML call, so a user can look it up or rerun it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuFault {
    /// The probe failed: the GPU does not answer.
    #[error("{call} failed: {reason}")]
    NoAnswer { call: &'static str, reason: String },
    #[error(
        "has pages pending retirement (nvmlDeviceGetRetiredPagesPendingStatus): an ECC fault that needs a GPU reset"
    )]
    PagesPendingRetirement,
    #[error("reports a failed row remapping (nvmlDeviceGetRemappedRows): its memory needs service")]
    RowRemappingFailed,
    #[error(
        "has a row remapping pending (nvmlDeviceGetRemappedRows): an ECC fault that needs a GPU reset"
    )]
    RowRemappingPending,
    /// A check failed for a reason other than "not supported": the GPU's
    /// state is unknown.
    #[error("cannot be checked: {call} failed: {reason}")]
    Unchecked { call: &'static str, reason: String },
}

/// What the NVML watcher knows of one GPU; [`WatchFacts::verdict`] decides
/// whether it may be advertised Healthy.
///
/// A change of registration (a new set, a registration that failed)
/// forgets the last check: a GPU is confirmed only by a check made after
/// its events were registered, so whatever happened in the gap before is
/// either seen by that check or caught by the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchFacts {
    /// The last probe: `Err(fault)` when the GPU does not answer.
    pub answers: Result<(), GpuFault>,
    registration: Registration,
    /// The last check made since the registration (`None`: none yet):
    /// `Err(fault)` when the driver says the GPU needs a reset.
    checked: Option<Result<(), GpuFault>>,
}

impl Default for WatchFacts {
    fn default() -> Self {
        WatchFacts {
            answers: Ok(()),
            registration: Registration::NotYet,
            checked: None,
        }
    }
}

impl WatchFacts {
    pub fn registration(&self) -> &Registration {
        &self.registration
    }

    /// A new registration state; any change forgets the last check.
    pub fn set_registration(&mut self, registration: Registration) {
        if self.registration != registration {
            self.registration = registration;
            self.checked = None;
        }
    }

    /// The result of a check (pending retirements, row remapping) made
    /// now, after the current registration.
    pub fn set_checked(&mut self, result: Result<(), GpuFault>) {
        self.checked = Some(result);
    }

    /// `None`: the GPU is watched and may be Healthy; `Some(reason)`: it is
    /// not, and why (the first cause that holds, in the order a user would
    /// fix them).
    pub fn verdict(&self, set: &SetState) -> Option<String> {
        if let Err(fault) = &self.answers {
            return Some(fault.to_string());
        }
        match &self.registration {
            Registration::Failed(reason) => {
                return Some(format!("its health cannot be watched: {reason}"));
            }
            Registration::NotYet => {
                return Some(match set {
                    SetState::Missing(reason) => {
                        format!("its XID events are not watched: no NVML event set ({reason})")
                    }
                    SetState::Failed(reason) => format!(
                        "its XID events are not watched: waiting for NVML events failed ({reason})"
                    ),
                    _ => NOT_WATCHED_YET.to_owned(),
                });
            }
            Registration::Registered => match set {
                SetState::Working => {}
                SetState::Failed(reason) => {
                    return Some(format!(
                        "its XID events are not watched: waiting for NVML events failed ({reason})"
                    ));
                }
                SetState::Unconfirmed | SetState::Missing(_) => {
                    return Some(NOT_WATCHED_YET.to_owned());
                }
            },
            Registration::Unsupported => {}
        }
        match &self.checked {
            None => Some(NOT_WATCHED_YET.to_owned()),
            Some(Err(fault)) => Some(fault.to_string()),
            Some(Ok(())) => None,
        }
    }
}

/// How one event wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    Event,
    /// `NVML_ERROR_TIMEOUT`, which NVML also returns at once when the wait
    /// is interrupted.
    Timeout,
    Failed,
}

/// What the watcher does next: sleep until an instant, or wait for events
/// up to a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextWait {
    SleepUntil(Instant),
    Wait(Duration),
}

/// Paces the watcher's event waits so that a wait that returns at once
/// never spins the thread: every deadline is absolute, and a wait that
/// ended without an event is followed by the next one no sooner than
/// `min_spacing` after it started (events queue in the driver meanwhile:
/// they are delayed, never lost). A wait that returned an event is followed
/// at once, so a burst of XIDs is read without delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitPacer {
    min_spacing: Duration,
    /// When the last wait started, and until when it was allowed to wait.
    last: Option<(Instant, Instant)>,
    last_end: Option<WaitEnd>,
    /// Waits in a row that returned a timeout well before their deadline.
    early_in_a_row: u32,
}

/// A timeout this much before its deadline is early (NVML's timeouts are
/// whole milliseconds).
const EARLY_SLACK: Duration = Duration::from_millis(2);

impl WaitPacer {
    pub fn new(min_spacing: Duration) -> WaitPacer {
        WaitPacer {
            min_spacing,
            last: None,
            last_end: None,
            early_in_a_row: 0,
        }
    }

    /// What to do at `now`, with `deadline` the next thing due (a probe, a
    /// rebuild): never past it.
    pub fn next(&self, now: Instant, deadline: Instant) -> NextWait {
        if let (Some((started, _)), Some(WaitEnd::Timeout | WaitEnd::Failed)) =
            (self.last, self.last_end)
        {
            let earliest = started + self.min_spacing;
            if now < earliest && now < deadline {
                return NextWait::SleepUntil(earliest.min(deadline));
            }
        }
        NextWait::Wait(deadline.saturating_duration_since(now))
    }

    /// A wait starts at `now`, allowed to wait until `deadline`.
    pub fn started(&mut self, now: Instant, deadline: Instant) {
        self.last = Some((now, deadline));
    }

    /// The wait ended at `now`. Returns the number of early timeouts in a
    /// row when this one makes it more than one (for the shell to log once
    /// a streak starts).
    pub fn ended(&mut self, end: WaitEnd, now: Instant) -> u32 {
        self.last_end = Some(end);
        let early = end == WaitEnd::Timeout
            && self
                .last
                .is_some_and(|(_, deadline)| now + EARLY_SLACK < deadline);
        if early {
            self.early_in_a_row += 1;
        } else {
            self.early_in_a_row = 0;
        }
        self.early_in_a_row
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, MigStrategy, ReplicatedResource};
    use crate::gpu::simulated;
    use crate::plan::plan;

    fn policy(disable: Option<&str>, enable: Option<&str>) -> HealthPolicy {
        HealthPolicy::new(&HealthConfig::default(), disable, enable)
    }

    #[test]
    fn conditions_hold_until_cleared_each_on_its_own_and_xids_stay_apart() {
        let mut state = HealthState::default();
        let now = Instant::now();
        let lost = Some("GPU is lost");
        assert!(state.set_condition("GPU-a", Condition::Unreachable, lost));
        assert!(
            !state.set_condition("GPU-a", Condition::Unreachable, lost),
            "no change"
        );
        assert!(!state.is_healthy("GPU-a"));
        assert!(state.is_healthy("GPU-b"));
        assert_eq!(state.count(Condition::Unreachable), 1);
        // A second cause on the same GPU outlives the first.
        assert!(state.set_condition("GPU-a", Condition::Repartitioning, Some("pending")));
        assert!(state.set_condition("GPU-a", Condition::Unreachable, None));
        assert!(!state.is_healthy("GPU-a"), "still repartitioning");
        assert_eq!(state.count(Condition::Unreachable), 0);
        // An XID during the outage outlives it.
        let policy = policy(None, None);
        assert!(state.record(&["GPU-a"], 79, XidAction::Reset, now, &policy));
        assert!(state.set_condition("GPU-a", Condition::Repartitioning, None));
        assert!(
            !state.set_condition("GPU-a", Condition::Repartitioning, None),
            "no change"
        );
        assert!(!state.is_healthy("GPU-a"), "the XID still holds");
        assert!(state.set_condition("GPU-b", Condition::MpsNotReady, Some("x")));
        assert!(state.set_condition("GPU-b", Condition::MpsNotReady, None));
        assert!(state.is_healthy("GPU-b"));
    }

    #[test]
    fn default_actions_and_environment_overrides() {
        let cases: Vec<(Option<&str>, Option<&str>, u64, XidAction)> = vec![
            (None, None, 13, XidAction::Ignore),
            (None, None, 79, XidAction::Reset),
            (None, None, 94, XidAction::Recover),
            (Some("94"), None, 94, XidAction::Ignore),
            (Some("all"), None, 79, XidAction::Ignore),
            (Some("xids"), None, 48, XidAction::Ignore),
            (None, Some("13"), 13, XidAction::Recover),
            (Some("all"), Some("all"), 31, XidAction::Recover),
            (Some("all"), Some("all"), 79, XidAction::Reset),
            (Some("13,junk"), Some("31"), 31, XidAction::Recover),
        ];
        for (disable, enable, xid, want) in cases {
            assert_eq!(
                policy(disable, enable).action(xid),
                want,
                "{disable:?} {enable:?} xid {xid}"
            );
        }
    }

    #[test]
    fn config_overrides_defaults() {
        let mut config = HealthConfig::default();
        config.xids.insert(79, XidAction::Recover);
        config.xids.insert(94, XidAction::Ignore);
        config.recover_after = Some(Duration::from_secs(10));
        let policy = HealthPolicy::new(&config, None, None);
        assert_eq!(policy.action(79), XidAction::Recover);
        assert_eq!(policy.action(94), XidAction::Ignore);
        assert_eq!(policy.recover_after, Duration::from_secs(10));
    }

    #[test]
    fn gpu_events_reach_every_replica_and_mig_events_only_their_instance() {
        let inventory =
            simulated::from_instance("p4d.24xlarge", Some("all-balanced")).expect("sim");
        let mut config = Config::default();
        config.flags.mig_strategy = MigStrategy::Mixed;
        let planned = plan(&inventory, &config);
        let gpu = &inventory.gpus[2];
        let target = gpu
            .mig_devices
            .iter()
            .find(|m| m.profile == "1g.5gb")
            .expect("a 1g.5gb device");
        let one_g = planned.resource("nvidia.com/mig-1g.5gb").expect("1g");
        let event = XidEvent {
            gpu_uuid: gpu.uuid.clone(),
            xid: 94,
            gpu_instance: Some(target.gpu_instance_id),
            compute_instance: Some(target.compute_instance_id),
        };
        let hit = affected(&event, one_g);
        assert_eq!(
            hit,
            vec![target.uuid.as_str()],
            "exactly the MIG device with those ids"
        );
        let whole = XidEvent {
            gpu_instance: None,
            compute_instance: None,
            ..event
        };
        assert_eq!(
            affected(&whole, one_g).len(),
            2,
            "both 1g devices of the GPU"
        );

        let mut config = Config::default();
        config
            .sharing
            .time_slicing
            .resources
            .push(ReplicatedResource::every("nvidia.com/gpu", 4));
        let inventory = simulated::from_instance("g5.12xlarge", None).expect("sim");
        let planned = plan(&inventory, &config);
        let resource = &planned.resources[0];
        let event = XidEvent {
            gpu_uuid: inventory.gpus[1].uuid.clone(),
            xid: 48,
            gpu_instance: None,
            compute_instance: None,
        };
        let hit = affected(&event, resource);
        assert_eq!(hit, vec![inventory.gpus[1].uuid.as_str()]);
        let replicas = resource
            .devices
            .iter()
            .filter(|d| hit.contains(&d.physical.uuid.as_str()))
            .count();
        assert_eq!(replicas, 4, "all four replicas share the physical device");
    }

    #[test]
    fn recoverable_devices_come_back_after_a_quiet_period() {
        let policy = HealthPolicy::new(
            &HealthConfig {
                recover_after: Some(Duration::from_secs(60)),
                xids: BTreeMap::new(),
            },
            None,
            None,
        );
        let mut state = HealthState::default();
        let t0 = Instant::now();
        assert!(state.record(&["GPU-a"], 94, XidAction::Recover, t0, &policy));
        assert!(state.record(&["GPU-b"], 79, XidAction::Reset, t0, &policy));
        // A second event restarts the quiet period.
        assert!(!state.record(
            &["GPU-a"],
            94,
            XidAction::Recover,
            t0 + Duration::from_secs(30),
            &policy
        ));
        assert!(state.recover(t0 + Duration::from_secs(61)).is_empty());
        assert_eq!(
            state.recover(t0 + Duration::from_secs(91)),
            vec!["GPU-a".to_string()]
        );
        assert!(state.is_healthy("GPU-a"));
        assert!(
            !state.is_healthy("GPU-b"),
            "reset-class XIDs do not time out"
        );
        assert_eq!(state.next_recovery(), None);
    }

    fn gpu(index: u32, uuid: &str, migs: &[&str]) -> AdvertisedGpu {
        AdvertisedGpu {
            index,
            uuid: uuid.into(),
            mig_uuids: migs.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    #[test]
    fn a_gpu_is_healthy_only_once_its_watcher_says_it_is_watched() {
        let mut state = HealthState::default();
        // Required: a GPU the watcher never mentioned is not Healthy.
        assert!(state.advertise(vec![gpu(0, "GPU-a", &[]), gpu(1, "GPU-b", &[])], true));
        assert!(!state.is_healthy("GPU-a") && !state.is_healthy("GPU-b"));
        assert_eq!(
            state.condition("GPU-a", Condition::Unreachable),
            Some(NOT_WATCHED_YET)
        );
        assert_eq!(state.count_advertised(Condition::Unreachable), 2);
        assert!(state.watch_report("GPU-a", None));
        assert!(!state.watch_report("GPU-a", None), "no change");
        assert!(state.is_healthy("GPU-a"));
        // A gap in watching is a gap in health, with the watcher's reason.
        assert!(state.watch_report("GPU-a", Some("waiting failed")));
        assert_eq!(
            state.condition("GPU-a", Condition::Unreachable),
            Some("waiting failed")
        );
        assert!(
            state.watch_report("GPU-a", Some("needs a reset")),
            "a new reason is a change"
        );
        assert!(state.watch_report("GPU-a", None));
        // A GPU advertised later (rediscovered) starts unwatched, even if
        // the watcher spoke of it before it was advertised.
        assert!(!state.watch_report("GPU-c", Some("lost")), "not advertised");
        assert!(state.advertise(
            vec![
                gpu(0, "GPU-a", &[]),
                gpu(1, "GPU-b", &[]),
                gpu(2, "GPU-c", &[]),
                gpu(3, "GPU-d", &[])
            ],
            true
        ));
        assert!(state.is_healthy("GPU-a"), "still watched");
        assert_eq!(
            state.condition("GPU-c", Condition::Unreachable),
            Some("lost")
        );
        assert_eq!(
            state.condition("GPU-d", Condition::Unreachable),
            Some(NOT_WATCHED_YET)
        );
        // Not required (health checks off, a simulated node): decides nothing,
        // and the watcher's word holds again once required.
        assert!(state.advertise(vec![gpu(0, "GPU-a", &[]), gpu(2, "GPU-c", &[])], false));
        assert!(state.is_healthy("GPU-a") && state.is_healthy("GPU-c"));
        assert!(!state.watch_report("GPU-a", Some("lost")));
        assert!(state.is_healthy("GPU-a"));
        assert!(state.advertise(vec![gpu(0, "GPU-a", &[]), gpu(2, "GPU-c", &[])], true));
        assert!(!state.is_healthy("GPU-a") && !state.is_healthy("GPU-c"));
    }

    #[test]
    fn gpus_are_counted_once_and_only_while_advertised() {
        let mut state = HealthState::default();
        state.advertise(vec![gpu(0, "GPU-a", &[]), gpu(1, "GPU-b", &[])], true);
        state.watch_report("GPU-a", None);
        state.watch_report("GPU-b", Some("lost"));
        // MPS and repartitioning on the same GPU do not count it twice.
        state.set_condition("GPU-b", Condition::MpsNotReady, Some("x"));
        assert_eq!(state.count_advertised(Condition::Unreachable), 1);
        // GPU-b is no longer advertised (rediscovery could not read it):
        // counted as undiscovered by the daemon, not here.
        state.advertise(vec![gpu(0, "GPU-a", &[])], true);
        assert_eq!(state.count_advertised(Condition::Unreachable), 0);
        assert_eq!(
            state.count(Condition::Unreachable),
            0,
            "its watch condition went with it"
        );
    }

    #[test]
    fn a_gpu_is_healthy_when_every_device_on_it_is() {
        let mut state = HealthState::default();
        let a = gpu(0, "GPU-a", &["MIG-1", "MIG-2"]);
        state.advertise(vec![a.clone()], false);
        assert!(state.gpu_healthy(&a));
        let policy = policy(None, None);
        state.record(&["MIG-2"], 94, XidAction::Recover, Instant::now(), &policy);
        assert!(state.is_healthy("GPU-a"));
        assert!(!state.gpu_healthy(&a), "one MIG device is unhealthy");
    }

    #[test]
    fn the_watchers_verdict_needs_an_answer_a_registration_a_working_set_and_a_check_after_it() {
        let ok = |f: &mut WatchFacts| {
            f.set_registration(Registration::Registered);
            f.set_checked(Ok(()));
        };
        let cases: Vec<(&str, fn(&mut WatchFacts), SetState, Option<&str>)> = vec![
            (
                "never seen",
                |_| {},
                SetState::Working,
                Some(NOT_WATCHED_YET),
            ),
            ("watched", ok, SetState::Working, None),
            (
                "set unconfirmed",
                ok,
                SetState::Unconfirmed,
                Some(NOT_WATCHED_YET),
            ),
            (
                "waits fail",
                ok,
                SetState::Failed("Unknown Error".into()),
                Some(
                    "its XID events are not watched: waiting for NVML events failed (Unknown Error)",
                ),
            ),
            (
                "no set",
                |_| {},
                SetState::Missing("Unknown Error".into()),
                Some("its XID events are not watched: no NVML event set (Unknown Error)"),
            ),
            (
                "registered, not checked since",
                |f| f.set_registration(Registration::Registered),
                SetState::Working,
                Some(NOT_WATCHED_YET),
            ),
            (
                "a check before the registration does not count",
                |f| {
                    f.set_checked(Ok(()));
                    f.set_registration(Registration::Registered);
                },
                SetState::Working,
                Some(NOT_WATCHED_YET),
            ),
            (
                "needs a reset",
                |f| {
                    f.set_registration(Registration::Registered);
                    f.set_checked(Err(GpuFault::RowRemappingPending));
                },
                SetState::Working,
                Some(
                    "has a row remapping pending (nvmlDeviceGetRemappedRows): an ECC fault that needs a GPU reset",
                ),
            ),
            (
                "registration failed",
                |f| {
                    f.set_registration(Registration::Failed(
                        "nvmlDeviceRegisterEvents failed".into(),
                    ))
                },
                SetState::Working,
                Some("its health cannot be watched: nvmlDeviceRegisterEvents failed"),
            ),
            (
                "does not answer",
                |f| {
                    f.set_registration(Registration::Registered);
                    f.set_checked(Ok(()));
                    f.answers = Err(GpuFault::NoAnswer {
                        call: "nvmlDeviceGetMemoryInfo",
                        reason: "GPU is lost".into(),
                    });
                },
                SetState::Working,
                Some("nvmlDeviceGetMemoryInfo failed: GPU is lost"),
            ),
            (
                "no XID events to watch: no set needed",
                |f| {
                    f.set_registration(Registration::Unsupported);
                    f.set_checked(Ok(()));
                },
                SetState::Missing("x".into()),
                None,
            ),
        ];
        for (name, setup, set, want) in cases {
            let mut facts = WatchFacts::default();
            setup(&mut facts);
            assert_eq!(facts.verdict(&set).as_deref(), want, "{name}");
        }
    }

    #[test]
    fn waits_that_return_at_once_are_spaced_and_never_pass_a_deadline() {
        let spacing = Duration::from_millis(100);
        let mut pacer = WaitPacer::new(spacing);
        let t0 = Instant::now();
        let probe = t0 + Duration::from_secs(5);
        assert_eq!(
            pacer.next(t0, probe),
            NextWait::Wait(Duration::from_secs(5))
        );
        // Interrupted: TIMEOUT at once. The next wait starts no sooner than
        // the spacing after the last one started, however often it repeats.
        let mut now = t0;
        let mut waits = 0;
        while now < t0 + Duration::from_secs(1) {
            match pacer.next(now, probe) {
                NextWait::Wait(timeout) => {
                    assert_eq!(now + timeout, probe, "the deadline is absolute");
                    pacer.started(now, probe);
                    let streak = pacer.ended(WaitEnd::Timeout, now);
                    waits += 1;
                    assert_eq!(streak, waits, "each one early");
                }
                NextWait::SleepUntil(until) => {
                    assert!(until > now && until <= probe);
                    now = until;
                }
            }
        }
        assert_eq!(waits, 10, "one wait per 100 ms");
        // A failed wait is spaced too.
        pacer.started(now, probe);
        pacer.ended(WaitEnd::Failed, now);
        assert_eq!(pacer.next(now, probe), NextWait::SleepUntil(now + spacing));
        // An event: the next wait at once (a burst is read without delay).
        pacer.started(now, probe);
        assert_eq!(pacer.ended(WaitEnd::Event, now), 0);
        assert_eq!(pacer.next(now, probe), NextWait::Wait(probe - now));
        // Never past the deadline: a probe due in 10 ms is not delayed.
        pacer.started(now, probe);
        pacer.ended(WaitEnd::Timeout, now);
        let soon = now + Duration::from_millis(10);
        assert_eq!(pacer.next(now, soon), NextWait::SleepUntil(soon));
        assert_eq!(pacer.next(soon, soon), NextWait::Wait(Duration::ZERO));
        // A timeout at its deadline is not early.
        pacer.started(now, soon);
        assert_eq!(pacer.ended(WaitEnd::Timeout, soon), 0);
    }

    #[test]
    fn a_set_works_once_a_wait_returns_and_a_confirmation_does_not_end_a_failing_streak() {
        let mut set = SetWatch::default();
        assert!(matches!(set.state(), SetState::Missing(_)));
        set.creation_failed("Unknown Error".into(), false);
        assert_eq!(set.state(), &SetState::Missing("Unknown Error".into()));
        set.created();
        assert_eq!(set.state(), &SetState::Unconfirmed);
        assert!(
            set.returned(true),
            "a new set is confirmed by a zero-timeout wait"
        );
        assert_eq!(set.state(), &SetState::Working);
        // One failure: rebuilt at once, and confirmed at once.
        assert!(set.failed("lost".into()));
        set.created();
        assert!(set.returned(true));
        assert!(
            set.returned(false),
            "a real wait returned: the streak is over"
        );
        // Failures in a row: the first confirmation counts, then real waits
        // keep failing; later confirmations are not enough, a real wait is.
        assert!(set.failed("Unknown Error".into()));
        set.created();
        assert!(set.returned(true));
        assert!(
            !set.failed("Unknown Error".into()),
            "the streak goes on: back off"
        );
        set.created();
        assert!(!set.returned(true));
        assert_eq!(set.state(), &SetState::Unconfirmed);
        assert!(!set.failed("Unknown Error".into()));
        set.created();
        assert!(!set.returned(true));
        assert!(set.returned(false), "a real wait returned");
        assert_eq!(set.state(), &SetState::Working);
        assert!(set.failed("x".into()), "a new streak");
        // A set that still exists keeps its state when a replacement cannot be made.
        set.created();
        set.returned(false);
        set.creation_failed("Unknown Error".into(), true);
        assert_eq!(set.state(), &SetState::Working);
    }
}
