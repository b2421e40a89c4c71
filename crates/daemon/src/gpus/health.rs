//! GPU health from NVML, on a dedicated thread: XID events, and whether
//! each GPU still answers.
//!
//! `nvmlEventSetWait` blocks, and an event set is not `Sync`, so one thread
//! owns it and forwards [`HealthReport`]s into the async daemon through a
//! bounded channel. Raw `nvmlDeviceRegisterEvents` / `nvmlEventSetWait_v2`
//! are used: nvml-wrapper frees the whole set when registering one GPU fails,
//! and its `EventData` drops the GPU- and compute-instance ids that
//! attribute an event to one MIG device.
//!
//! # The rule: a GPU is Healthy only while its XID events are watched
//!
//! An XID that nobody reads is lost for good: NVML delivers events only to
//! a set that holds the GPU when they happen, and a set whose wait fails
//! takes its unread events with it. So a gap in watching is a gap in health
//! (fail closed). The daemon advertises a GPU Healthy only after this
//! thread has reported it [`HealthReport::Watched`], which needs all of
//! (decided in the core, [`gpu_slicer_core::health::WatchFacts::verdict`]):
//!
//! - it answers a cheap query (`nvmlDeviceGetMemoryInfo_v2`) at every
//!   [`Timings::probe`]; NVML has no event for "this GPU stopped answering",
//!   so this is the one periodic query;
//! - it is registered for critical XID events in the current set (a GPU
//!   that reports no XID events at all has nothing to watch and is kept
//!   Healthy, as NVIDIA's plugin does);
//! - the set works: a new set is confirmed by a wait of zero timeout before
//!   any GPU in it counts as watched, and a wait that fails makes every GPU
//!   in it unwatched at once;
//! - it passed a check made **after** that registration: no pages pending
//!   retirement (`nvmlDeviceGetRetiredPagesPendingStatus`) and no row
//!   remapping pending or failed (`nvmlDeviceGetRemappedRows`). The faults
//!   whose XIDs ask for a reset (48, 63, 64, 94, 95, 140: ECC; 79 and the
//!   GSP errors: the GPU stops answering) leave these traces until the GPU
//!   is reset, so an XID lost in a gap is still seen after it, and a GPU
//!   that needs a reset is held Unhealthy until the driver says it no
//!   longer does. A check that is not supported (or not permitted) by the
//!   GPU proves nothing either way and does not hold it. XIDs that leave no
//!   trace (application faults, recoverable ones) and fall in a gap are
//!   lost, as with NVML itself; the GPU was Unhealthy meanwhile.
//!
//! A GPU is reported [`HealthReport::Unreachable`], with the reason, when
//! any of these stops holding. A GPU the daemon advertises that this thread
//! has not reported on yet (just rediscovered, or at start) is Unhealthy
//! too, until the next probe registers and checks it.
//!
//! # Rebuilding the set, and pacing the waits
//!
//! - a set that holds a lost GPU fails its waits (`GPU_IS_LOST`): it is
//!   rebuilt at once without that GPU, the new set made, filled, checked
//!   and confirmed before the old one is drained and freed, so the GPUs
//!   that still answer are never reported unwatched;
//! - a wait that fails while every GPU answers rebuilds the set at once
//!   (a one-off failure: the GPUs, registered and checked again, are never
//!   reported unwatched), then on a back-off (100 ms doubling to a minute)
//!   while it keeps failing; every GPU is Unhealthy meanwhile, until a wait
//!   on a rebuilt set returns (after two failures in a row the
//!   zero-timeout confirmation alone is not enough);
//! - a registration that fails with `UNKNOWN` leaves the set undefined
//!   (NVML's documentation): it is rebuilt at the next probe;
//! - a set that cannot be created leaves the probes running; every GPU is
//!   Unhealthy until one can;
//! - every deadline is absolute, and a wait that returns without an event
//!   (`TIMEOUT`, which NVML also returns at once when the wait is
//!   interrupted, or a failure) is followed by the next one no sooner than
//!   [`MIN_WAIT_SPACING`] after it started
//!   ([`gpu_slicer_core::health::WaitPacer`]), so the thread never spins.
//!
//! Which wait outcome makes a set count as working is the core's
//! [`gpu_slicer_core::health::SetWatch`]; this module only makes the calls
//! and feeds it.
//!
//! Every failed call is counted per call (`gpu_slicer_health_check_errors`)
//! and logged when a GPU's state changes, not on every pass.

use std::time::{Duration, Instant};

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::error::{NvmlError as RawError, nvml_try};
use nvml_wrapper::{Device, EventSet, Nvml};
use nvml_wrapper_sys::bindings::{
    nvmlEventData_t, nvmlEventSet_t, nvmlEventTypeXidCriticalError,
    nvmlReturn_enum_NVML_ERROR_TIMEOUT, nvmlReturn_enum_NVML_SUCCESS, nvmlReturn_t,
};
use tokio::sync::mpsc;

use crate::gpus::nvml::{NvmlOptions, nvml};
use crate::metrics::{CallLabel, Metrics};
use gpu_slicer_core::backoff::Backoff;
use gpu_slicer_core::health::{
    GpuFault, NextWait, Registration, SetState, SetWatch, WaitEnd, WaitPacer, WatchFacts, XidEvent,
};

/// Reports waiting for the daemon. A full queue makes the watcher thread
/// wait (the driver keeps its own queue meanwhile) rather than grow memory.
pub const QUEUE: usize = 64;
const NO_INSTANCE: u32 = 0xFFFF_FFFF;
/// How long the watcher waits for NVML itself (a library or driver that is
/// not there) before trying again.
const START_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
/// Rebuilding an event set whose wait failed: the first rebuild is at once
/// (a lost GPU is left out and the rest are watched again), repeated
/// failures wait up to a minute.
const REBUILD_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
/// The least time from the start of one event wait to the next when the
/// first returned without an event: at most ten such waits a second.
pub const MIN_WAIT_SPACING: Duration = Duration::from_millis(100);
/// Early timeouts in a row before the watcher says so (once per streak).
const EARLY_STREAK_LOGGED: u32 = 3;
/// Events read from a replaced set before it is freed, at most.
const DRAIN_LIMIT: usize = 256;
/// The call whose failure means a GPU no longer answers: cheap, and
/// answered by every GPU the driver can still reach.
const PROBE_CALL: &str = "nvmlDeviceGetMemoryInfo_v2";
/// More GPUs than any node has; NVML's count is bounded by it before use.
const MAX_GPUS: usize = 256;

/// Why one wait for NVML events failed.
#[derive(Debug, thiserror::Error)]
enum WaitError {
    #[error("nvmlEventSetWait_v2 is missing from the NVML library (driver too old?): {0}")]
    MissingCall(String),
    #[error(transparent)]
    Nvml(RawError),
    /// A return code nvml_wrapper does not map to an error.
    #[error("NVML error {0}")]
    Code(nvmlReturn_t),
}

/// What the watcher tells the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthReport {
    Xid(XidEvent),
    /// A GPU is not watched: it stopped answering NVML, its XID events
    /// cannot be read, or the driver says it needs a reset.
    Unreachable {
        gpu_uuid: String,
        reason: String,
    },
    /// A GPU's XID events are watched, and it passed a check made after they
    /// were registered (reported the first time and after every gap).
    Watched {
        gpu_uuid: String,
    },
}

/// The watcher's waits, injectable so tests need not sit them out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// How often each GPU must answer; also the event wait's timeout.
    pub probe: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            probe: Duration::from_secs(5),
        }
    }
}

/// Starts the watcher thread. It waits for the NVML options that discovery
/// succeeded with (so both load the same library under the same driver
/// root), then runs until `reports` is closed.
pub fn spawn_health_watcher(
    discovered_with: std::sync::mpsc::Receiver<NvmlOptions>,
    reports: mpsc::Sender<HealthReport>,
    metrics: Metrics,
    timings: Timings,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("nvml-health".into())
        .spawn(move || {
            // The sender goes away only when the daemon stops.
            let Ok(options) = discovered_with.recv() else {
                return;
            };
            let mut backoff = START_BACKOFF;
            while !reports.is_closed() {
                match nvml(&options) {
                    Ok((nvml, _)) => {
                        Watcher::new(nvml, &reports, &metrics, timings).run();
                        return;
                    }
                    Err(e) => {
                        let delay = backoff.next_delay();
                        tracing::warn!("Failed to start health check: {e}; retrying in {delay:?}");
                        std::thread::sleep(delay);
                    }
                }
            }
        })
}

/// One GPU as the watcher knows it.
struct Watched {
    device: Device<'static>,
    uuid: String,
    facts: WatchFacts,
    /// What the daemon was told last (`None`: nothing yet; `Some(None)`:
    /// watched; `Some(Some(reason))`: not).
    told: Option<Option<String>>,
}

struct Watcher<'a> {
    nvml: &'static Nvml,
    reports: &'a mpsc::Sender<HealthReport>,
    metrics: &'a Metrics,
    timings: Timings,
    set: Option<EventSet<'static>>,
    set_watch: SetWatch,
    /// The set being replaced: drained once the new one is confirmed.
    replaced: Option<EventSet<'static>>,
    /// By NVML index; `None` while its handle or UUID cannot be read (such a
    /// GPU is not advertised either: discovery left it out).
    gpus: Vec<Option<Watched>>,
    rebuild: Backoff,
    /// When the current set must be replaced (a lost GPU in it, a failed
    /// wait, an undefined set).
    rebuild_at: Option<Instant>,
    set_error_logged: bool,
    pacer: WaitPacer,
    /// Checks a GPU does not support, said once each.
    unsupported_logged: std::collections::BTreeSet<&'static str>,
}

impl<'a> Watcher<'a> {
    fn new(
        nvml: &'static Nvml,
        reports: &'a mpsc::Sender<HealthReport>,
        metrics: &'a Metrics,
        timings: Timings,
    ) -> Self {
        Watcher {
            nvml,
            reports,
            metrics,
            timings,
            set: None,
            set_watch: SetWatch::default(),
            replaced: None,
            gpus: Vec::new(),
            rebuild: REBUILD_BACKOFF,
            rebuild_at: None,
            set_error_logged: false,
            pacer: WaitPacer::new(MIN_WAIT_SPACING),
            unsupported_logged: Default::default(),
        }
    }

    fn failed(&self, call: &str) {
        self.metrics
            .health_check_errors
            .get_or_create(&CallLabel { call: call.into() })
            .inc();
    }

    fn report(&self, report: HealthReport) {
        let _ = self.reports.blocking_send(report);
    }

    /// Runs until the daemon stops.
    fn run(mut self) {
        let mut next_probe = Instant::now();
        let mut started = false;
        while !self.reports.is_closed() {
            let now = Instant::now();
            if now >= next_probe || self.rebuild_at.is_some_and(|at| at <= now) {
                self.probe(now);
                if now >= next_probe {
                    next_probe = now + self.timings.probe;
                }
                if !started {
                    started = true;
                    let watched = self
                        .gpus
                        .iter()
                        .flatten()
                        .filter(|g| g.facts.verdict(self.set_watch.state()).is_none())
                        .count();
                    tracing::info!(
                        gpus = watched,
                        "health checks started (critical XID events)"
                    );
                }
            }
            self.tell();
            // Both deadlines are absolute: an event does not move them.
            let wake = self.rebuild_at.map_or(next_probe, |at| at.min(next_probe));
            let now = Instant::now();
            let Some(set) = self.set_handle() else {
                std::thread::sleep(wake.saturating_duration_since(now));
                continue;
            };
            match self.pacer.next(now, wake) {
                NextWait::SleepUntil(until) => {
                    std::thread::sleep(until.saturating_duration_since(now));
                }
                NextWait::Wait(timeout) => {
                    self.pacer.started(now, wake);
                    let end = self.wait(set, timeout, false);
                    let early = self.pacer.ended(end, Instant::now());
                    if early == EARLY_STREAK_LOGGED {
                        tracing::warn!(
                            "nvmlEventSetWait_v2 keeps returning TIMEOUT before its deadline (interrupted?); \
                             waits are spaced at least {MIN_WAIT_SPACING:?} apart, events are read between them"
                        );
                    }
                }
            }
        }
    }

    /// Tells the daemon of every GPU whose verdict changed.
    fn tell(&mut self) {
        let mut reports = Vec::new();
        for (index, gpu) in self.gpus.iter_mut().enumerate() {
            let Some(gpu) = gpu else { continue };
            let verdict = gpu.facts.verdict(self.set_watch.state());
            if gpu.told.as_ref() == Some(&verdict) {
                continue;
            }
            let was = gpu.told.replace(verdict.clone());
            let uuid = gpu.uuid.clone();
            match verdict {
                Some(reason) => {
                    tracing::error!("GPU {index} ({uuid}) {reason}; marking its devices Unhealthy");
                    reports.push(HealthReport::Unreachable {
                        gpu_uuid: uuid,
                        reason,
                    });
                }
                None => {
                    if was.is_some() {
                        tracing::info!(
                            "GPU {index} ({uuid}) answers again and its XID events are watched"
                        );
                    }
                    reports.push(HealthReport::Watched { gpu_uuid: uuid });
                }
            }
        }
        for report in reports {
            self.report(report);
        }
    }

    /// Every GPU: read it if it is new, check that it answers, register it
    /// for events, check it; a set that is missing or due to be rebuilt is
    /// made first, confirmed, and only then is the old one drained.
    fn probe(&mut self, now: Instant) {
        let rebuild_due = self.rebuild_at.is_some_and(|at| at <= now);
        if rebuild_due || (self.set.is_none() && self.rebuild_at.is_none()) {
            self.rebuild_at = None;
            self.new_set();
        }
        let count = match self.nvml.device_count() {
            Ok(count) => count,
            Err(e) => {
                self.failed("nvmlDeviceGetCount_v2");
                tracing::warn!("health check: nvmlDeviceGetCount_v2 failed: {e}");
                0
            }
        };
        // Bounded: NVML's own limit is far below this.
        let count = usize::try_from(count).unwrap_or(usize::MAX).min(MAX_GPUS);
        if self.gpus.len() < count {
            self.gpus.resize_with(count, || None);
        }
        for index in 0..count {
            self.probe_gpu(index, now);
        }
        if *self.set_watch.state() == SetState::Unconfirmed
            && let Some(set) = self.set_handle()
        {
            // A wait of zero timeout: an event, a timeout (the set works) or
            // the error every wait on it would give.
            self.wait(set, Duration::ZERO, true);
        }
        self.drain_replaced();
    }

    /// Makes a new event set; the current one (if any) is kept to be
    /// drained. Every GPU is registered again in the new one.
    fn new_set(&mut self) {
        match self.nvml.create_event_set() {
            Ok(set) => {
                self.set_error_logged = false;
                if let Some(old) = self.set.replace(set) {
                    self.replaced = Some(old);
                }
                self.set_watch.created();
                for gpu in self.gpus.iter_mut().flatten() {
                    if *gpu.facts.registration() != Registration::Unsupported {
                        gpu.facts.set_registration(Registration::NotYet);
                    }
                }
            }
            Err(e) => {
                self.failed("nvmlEventSetCreate");
                if !self.set_error_logged {
                    self.set_error_logged = true;
                    tracing::error!(
                        "cannot create an NVML event set: {e}; XID events cannot be watched, so no GPU is \
                         advertised Healthy until it can be created (retried every {:?})",
                        self.timings.probe
                    );
                }
                self.set_watch.creation_failed(
                    format!("nvmlEventSetCreate failed: {e}"),
                    self.set.is_some(),
                );
            }
        }
    }

    /// Reads what is left in a replaced set, then frees it. Its GPUs are
    /// registered in the new set already, so nothing between is unread
    /// unless the old set's waits fail (then the check made after the new
    /// registration stands for what was lost).
    fn drain_replaced(&mut self) {
        let Some(old) = self.replaced.take() else {
            return;
        };
        // SAFETY: `old` owns the set and outlives every use of the handle.
        let handle = unsafe { old.handle() };
        for _ in 0..DRAIN_LIMIT {
            match self.raw_wait(handle, 0) {
                Ok(Some(data)) => self.deliver(&data),
                Ok(None) | Err(_) => break,
            }
        }
        drop(old);
    }

    /// The raw handle of the current set, for the raw calls.
    fn set_handle(&self) -> Option<nvmlEventSet_t> {
        // SAFETY: the handle is used only while `self.set` owns the set
        // (the raw calls below, made before the set is dropped).
        self.set.as_ref().map(|set| unsafe { set.handle() })
    }

    fn probe_gpu(&mut self, index: usize, now: Instant) {
        if self.gpus[index].is_none() {
            let Ok(i) = u32::try_from(index) else { return };
            let Ok(device) = self.nvml.device_by_index(i) else {
                // Not advertised (discovery could not read it either).
                return;
            };
            let Ok(uuid) = device.uuid() else { return };
            self.gpus[index] = Some(Watched {
                device,
                uuid,
                facts: WatchFacts::default(),
                told: None,
            });
        }
        let answer = match self.gpus[index].as_ref().map(|g| g.device.memory_info()) {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(GpuFault::NoAnswer {
                call: PROBE_CALL,
                reason: e.to_string(),
            }),
            None => return,
        };
        let Some(gpu) = self.gpus[index].as_mut() else {
            return;
        };
        gpu.facts.answers = answer.clone();
        if answer.is_err() {
            // A set that holds a lost GPU fails its waits: rebuild it now,
            // without this GPU.
            if *gpu.facts.registration() == Registration::Registered {
                gpu.facts.set_registration(Registration::NotYet);
                self.rebuild_at.get_or_insert(now);
            }
            self.failed(PROBE_CALL);
            return;
        }
        if matches!(
            gpu.facts.registration(),
            Registration::NotYet | Registration::Failed(_)
        ) {
            self.register(index);
        }
        let registered = self.gpus[index].as_ref().is_some_and(|g| {
            matches!(
                g.facts.registration(),
                Registration::Registered | Registration::Unsupported
            )
        });
        if registered {
            // After the registration: what happened before it shows here.
            let checked = self.check(index);
            if let Some(gpu) = self.gpus[index].as_mut() {
                gpu.facts.set_checked(checked);
            }
        }
    }

    /// Registers a GPU that answers for XID events in the current set.
    fn register(&mut self, index: usize) {
        let Some(set) = self.set_handle() else {
            // No set: nothing can be registered (the verdict says why).
            return;
        };
        let Some(gpu) = self.gpus[index].as_mut() else {
            return;
        };
        match gpu.device.supported_event_types() {
            Ok(types) if types.contains(EventTypes::CRITICAL_XID_ERROR) => {}
            Ok(_) | Err(RawError::NotSupported) => {
                tracing::warn!("Device {} is too old to support healthchecking.", gpu.uuid);
                gpu.facts.set_registration(Registration::Unsupported);
                return;
            }
            Err(e) => {
                gpu.facts.set_registration(Registration::Failed(format!(
                    "nvmlDeviceGetSupportedEventTypes failed: {e}"
                )));
                self.failed("nvmlDeviceGetSupportedEventTypes");
                return;
            }
        }
        let register = match self.nvml.lib().nvmlDeviceRegisterEvents.as_ref() {
            Ok(f) => *f,
            Err(e) => {
                gpu.facts.set_registration(Registration::Failed(format!(
                    "nvmlDeviceRegisterEvents is missing: {e}"
                )));
                return;
            }
        };
        // SAFETY: the device handle is live (owned by `gpu.device`, whose
        // Nvml is 'static) and `set` is the live set owned by `self.set`.
        let ret = unsafe {
            register(
                gpu.device.handle(),
                u64::from(nvmlEventTypeXidCriticalError),
                set,
            )
        };
        match nvml_try(ret) {
            Ok(()) => gpu.facts.set_registration(Registration::Registered),
            Err(e) => {
                gpu.facts.set_registration(Registration::Failed(format!(
                    "nvmlDeviceRegisterEvents failed: {e}"
                )));
                if matches!(e, RawError::Unknown) {
                    // NVML: the set is in an undefined state after UNKNOWN.
                    // Rebuilt at the next probe, not at once: a GPU that
                    // keeps failing so must not turn probing into a loop.
                    let next = Instant::now() + self.timings.probe;
                    self.rebuild_at.get_or_insert(next);
                }
                self.failed("nvmlDeviceRegisterEvents");
            }
        }
    }

    /// What the driver says of a GPU now: `Err(fault)` when it needs a
    /// reset (pages pending retirement, a row remapping pending or failed).
    fn check(&mut self, index: usize) -> Result<(), GpuFault> {
        let Some(gpu) = self.gpus[index].as_ref() else {
            return Ok(());
        };
        match gpu.device.are_pages_pending_retired() {
            Ok(false) => {}
            Ok(true) => return Err(GpuFault::PagesPendingRetirement),
            Err(e) => self.unchecked("nvmlDeviceGetRetiredPagesPendingStatus", &e)?,
        }
        let Some(gpu) = self.gpus[index].as_ref() else {
            return Ok(());
        };
        let remapped = match self.nvml.lib().nvmlDeviceGetRemappedRows.as_ref() {
            Ok(f) => *f,
            Err(_) => return self.unchecked("nvmlDeviceGetRemappedRows", &RawError::NotSupported),
        };
        let (mut corrected, mut uncorrected, mut pending, mut failure) = (0, 0, 0, 0);
        // SAFETY: the device handle is live (owned by `gpu.device`) and the
        // four out pointers are valid, writable integers.
        let ret = unsafe {
            remapped(
                gpu.device.handle(),
                &mut corrected,
                &mut uncorrected,
                &mut pending,
                &mut failure,
            )
        };
        match nvml_try(ret) {
            Ok(()) if failure != 0 => Err(GpuFault::RowRemappingFailed),
            Ok(()) if pending != 0 => Err(GpuFault::RowRemappingPending),
            Ok(()) => Ok(()),
            Err(e) => self.unchecked("nvmlDeviceGetRemappedRows", &e),
        }
    }

    /// A check that failed: one the GPU does not support (or this process
    /// may not make) proves nothing and holds nothing; any other error
    /// holds the GPU (its state is unknown).
    fn unchecked(&mut self, call: &'static str, error: &RawError) -> Result<(), GpuFault> {
        match error {
            RawError::NotSupported | RawError::NoPermission | RawError::FailedToLoadSymbol(_) => {
                if self.unsupported_logged.insert(call) {
                    tracing::info!("health check: {call} is not available ({error}); not checked");
                }
                Ok(())
            }
            _ => {
                self.failed(call);
                Err(GpuFault::Unchecked {
                    call,
                    reason: error.to_string(),
                })
            }
        }
    }

    /// One raw wait on `set`: an event, `None` on a timeout, or the error.
    fn raw_wait(&self, set: nvmlEventSet_t, ms: u32) -> Result<Option<nvmlEventData_t>, WaitError> {
        let wait = match self.nvml.lib().nvmlEventSetWait_v2.as_ref() {
            Ok(wait) => wait,
            Err(e) => return Err(WaitError::MissingCall(e.to_string())),
        };
        // SAFETY: all-zero is a valid nvmlEventData_t (a null pointer and integers).
        let mut data: nvmlEventData_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a live set owned by this watcher, and `data` is a
        // valid, writable nvmlEventData_t.
        let ret = unsafe { wait(set, &mut data, ms) };
        if ret == nvmlReturn_enum_NVML_SUCCESS {
            Ok(Some(data))
        } else if ret == nvmlReturn_enum_NVML_ERROR_TIMEOUT {
            Ok(None)
        } else {
            Err(nvml_try(ret)
                .err()
                .map_or(WaitError::Code(ret), WaitError::Nvml))
        }
    }

    /// One wait on the current set, up to `timeout` (rounded up to NVML's
    /// whole milliseconds, so it never returns before the deadline).
    ///
    /// `confirming`: the zero-timeout wait on a new set (which counts only
    /// outside a streak of failures: [`SetWatch::returned`]).
    fn wait(&mut self, set: nvmlEventSet_t, timeout: Duration, confirming: bool) -> WaitEnd {
        let ms = timeout.as_micros().div_ceil(1000);
        let ms = u32::try_from(ms).unwrap_or(u32::MAX);
        match self.raw_wait(set, ms) {
            Ok(data) => {
                if self.set_watch.returned(confirming) {
                    self.rebuild.reset();
                }
                match data {
                    Some(data) => {
                        self.deliver(&data);
                        WaitEnd::Event
                    }
                    None => WaitEnd::Timeout,
                }
            }
            Err(error) => {
                self.wait_failed(&error);
                WaitEnd::Failed
            }
        }
    }

    /// Reports an XID event read from a set.
    fn deliver(&self, data: &nvmlEventData_t) {
        if data.eventType & u64::from(nvmlEventTypeXidCriticalError) == 0 {
            return;
        }
        // SAFETY: the handle is only compared with the watched devices'
        // handles; it is never dereferenced here.
        let uuid = self
            .gpus
            .iter()
            .flatten()
            .find(|g| unsafe { g.device.handle() } == data.device)
            .map(|g| g.uuid.clone());
        let Some(gpu_uuid) = uuid else {
            tracing::warn!(
                xid = data.eventData,
                "XID event from an unknown device; ignored"
            );
            return;
        };
        let instance = |id: u32| (id != NO_INSTANCE).then_some(id);
        self.report(HealthReport::Xid(XidEvent {
            gpu_uuid,
            xid: data.eventData,
            gpu_instance: instance(data.gpuInstanceId),
            compute_instance: instance(data.computeInstanceId),
        }));
    }

    /// A failed wait: its unread events are lost with the set. The set is
    /// rebuilt (at once the first time, then on a back-off); every GPU is
    /// checked now (the failure may be one lost GPU's). Until a new set is
    /// confirmed, no GPU of it is watched.
    fn wait_failed(&mut self, error: &WaitError) {
        self.failed("nvmlEventSetWait_v2");
        let first = self.set_watch.failed(error.to_string());
        let delay = if first {
            Duration::ZERO
        } else {
            self.rebuild.next_delay()
        };
        if first {
            tracing::warn!(
                "waiting for NVML events failed: {error}; checking every GPU, and rebuilding the event set \
                 from those that answer (a GPU whose events cannot be read is Unhealthy until they can)"
            );
        }
        self.set = None;
        self.rebuild_at = Some(Instant::now() + delay);
        for gpu in self.gpus.iter_mut().flatten() {
            if *gpu.facts.registration() == Registration::Registered {
                gpu.facts.set_registration(Registration::NotYet);
            }
            if let Err(e) = gpu.device.memory_info() {
                gpu.facts.answers = Err(GpuFault::NoAnswer {
                    call: PROBE_CALL,
                    reason: e.to_string(),
                });
                self.metrics
                    .health_check_errors
                    .get_or_create(&CallLabel {
                        call: PROBE_CALL.into(),
                    })
                    .inc();
            }
        }
    }
}
