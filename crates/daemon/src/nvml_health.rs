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
//! # Failing closed
//!
//! NVIDIA's plugin, when a wait fails, marks every device unhealthy for good,
//! or with its checks off keeps advertising a GPU that fell off the bus. Here
//! each GPU is judged on its own:
//!
//! - every [`Timings::probe`] (the wait's timeout, an absolute deadline) each
//!   GPU answers a cheap query (`nvmlDeviceGetMemoryInfo_v2`); one that fails
//!   is reported [`HealthReport::Unreachable`] (its devices turn Unhealthy)
//!   and, once it answers, [`HealthReport::Reachable`]. NVML has no event for
//!   "this GPU stopped answering", so this is the one periodic query;
//! - a GPU whose events cannot be registered is unreachable too: its faults
//!   would go unseen. Registration is retried at every probe;
//! - a wait that fails (NVML returns `GPU_IS_LOST` for a set holding a lost
//!   GPU) rebuilds the set from the GPUs that answer, after a back-off, so
//!   a wait that keeps failing never spins;
//! - a set that cannot be created leaves the probes running.
//!
//! Every failed call is counted per call (`gpu_slicer_health_check_errors`)
//! and logged when a GPU's state changes, not on every pass.

use std::time::{Duration, Instant};

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::error::{NvmlError as RawError, nvml_try};
use nvml_wrapper::{Device, EventSet, Nvml};
use nvml_wrapper_sys::bindings::{
    nvmlEventData_t, nvmlEventTypeXidCriticalError, nvmlReturn_enum_NVML_ERROR_TIMEOUT,
    nvmlReturn_enum_NVML_SUCCESS,
};
use tokio::sync::mpsc;

use crate::backoff::Backoff;
use crate::metrics::{CallLabel, Metrics};
use crate::nvml::{NvmlOptions, nvml};
use gpu_slicer_core::health::XidEvent;

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
/// The call whose failure means a GPU no longer answers: cheap, and
/// answered by every GPU the driver can still reach.
const PROBE_CALL: &str = "nvmlDeviceGetMemoryInfo_v2";
/// More GPUs than any node has; NVML's count is bounded by it before use.
const MAX_GPUS: usize = 256;

/// What the watcher tells the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthReport {
    Xid(XidEvent),
    /// A GPU stopped answering NVML, or its health cannot be watched.
    Unreachable {
        gpu_uuid: String,
        reason: String,
    },
    /// A GPU that was reported unreachable answers and is watched again.
    Reachable {
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
    /// Registered in the current event set.
    in_set: bool,
    /// Why it is reported unreachable; `None`: reachable.
    unreachable: Option<String>,
}

struct Watcher<'a> {
    nvml: &'static Nvml,
    reports: &'a mpsc::Sender<HealthReport>,
    metrics: &'a Metrics,
    timings: Timings,
    set: Option<EventSet<'static>>,
    /// By NVML index; `None` while its handle or UUID cannot be read (such a
    /// GPU is not advertised either: discovery left it out).
    gpus: Vec<Option<Watched>>,
    rebuild: Backoff,
    /// When the current set may be rebuilt (after a failed wait).
    rebuild_at: Option<Instant>,
    set_error_logged: bool,
    /// The last wait failed (the next failure backs off).
    waits_failing: bool,
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
            gpus: Vec::new(),
            rebuild: REBUILD_BACKOFF,
            rebuild_at: None,
            set_error_logged: false,
            waits_failing: false,
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
                    let watched = self.gpus.iter().flatten().filter(|g| g.in_set).count();
                    tracing::info!(
                        gpus = watched,
                        "health checks started (critical XID events)"
                    );
                }
            }
            // Both deadlines are absolute: an event does not move them.
            let wake = self.rebuild_at.map_or(next_probe, |at| at.min(next_probe));
            let timeout = wake.saturating_duration_since(Instant::now());
            match self.set_handle() {
                Some(handle) => self.wait(handle, timeout),
                None => std::thread::sleep(timeout),
            }
        }
    }

    /// Every GPU: read it if it is new, check that it answers, register it
    /// for events; report the changes. A rebuild that is due starts a new set.
    fn probe(&mut self, now: Instant) {
        if self.rebuild_at.is_some_and(|at| at <= now) {
            self.rebuild_at = None;
            self.drop_set();
        }
        if self.set.is_none() && self.rebuild_at.is_none() {
            match self.nvml.create_event_set() {
                Ok(set) => {
                    self.set = Some(set);
                    self.set_error_logged = false;
                }
                Err(e) => {
                    self.failed("nvmlEventSetCreate");
                    if !self.set_error_logged {
                        self.set_error_logged = true;
                        tracing::error!(
                            "cannot create an NVML event set: {e}; XID events are not seen until it can be \
                             created (retried every {:?}); GPUs that stop answering are still marked Unhealthy",
                            self.timings.probe
                        );
                    }
                }
            }
        }
        let count = match self.nvml.device_count() {
            Ok(count) => count,
            Err(e) => {
                self.failed("nvmlDeviceGetCount_v2");
                tracing::warn!("health check: nvmlDeviceGetCount_v2 failed: {e}");
                return;
            }
        };
        // Bounded: NVML's own limit is far below this.
        let count = usize::try_from(count).unwrap_or(usize::MAX).min(MAX_GPUS);
        if self.gpus.len() < count {
            self.gpus.resize_with(count, || None);
        }
        for index in 0..count {
            self.probe_gpu(index);
        }
    }

    /// The raw handle of the current set, for the raw calls.
    fn set_handle(&self) -> Option<nvml_wrapper_sys::bindings::nvmlEventSet_t> {
        // SAFETY: the handle is used only while `self.set` owns the set
        // (the raw calls below, made before the set is dropped).
        self.set.as_ref().map(|set| unsafe { set.handle() })
    }

    /// Forgets the event set; every GPU is registered again in the next one.
    fn drop_set(&mut self) {
        self.set = None;
        for gpu in self.gpus.iter_mut().flatten() {
            gpu.in_set = false;
        }
    }

    fn probe_gpu(&mut self, index: usize) {
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
                in_set: false,
                unreachable: None,
            });
        }
        let answer = match self.gpus[index].as_ref().map(|g| g.device.memory_info()) {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(format!("{PROBE_CALL} failed: {e}")),
            None => return,
        };
        if let Err(reason) = answer {
            self.failed(PROBE_CALL);
            // A set that holds a lost GPU fails its waits: rebuild it.
            if self.gpus[index].as_ref().is_some_and(|g| g.in_set) {
                self.rebuild_at.get_or_insert_with(Instant::now);
            }
            self.set_unreachable(index, Some(reason));
            return;
        }
        let registered = self.register(index);
        self.set_unreachable(index, registered.err());
    }

    /// Registers a GPU that answers for XID events, once per set.
    fn register(&mut self, index: usize) -> Result<(), String> {
        let Some(set) = self.set_handle() else {
            // No set: nothing can be watched; the probe alone decides.
            return Ok(());
        };
        let Some(gpu) = self.gpus[index].as_mut() else {
            return Ok(());
        };
        if gpu.in_set {
            return Ok(());
        }
        match gpu.device.supported_event_types() {
            Ok(types) if types.contains(EventTypes::CRITICAL_XID_ERROR) => {}
            Ok(_) | Err(RawError::NotSupported) => {
                tracing::warn!("Device {} is too old to support healthchecking.", gpu.uuid);
                // Nothing to register; not asked again for this set.
                gpu.in_set = true;
                return Ok(());
            }
            Err(e) => {
                self.failed("nvmlDeviceGetSupportedEventTypes");
                return Err(format!(
                    "its health cannot be watched: nvmlDeviceGetSupportedEventTypes failed: {e}"
                ));
            }
        }
        let register = match self.nvml.lib().nvmlDeviceRegisterEvents.as_ref() {
            Ok(f) => *f,
            Err(e) => return Err(format!("nvmlDeviceRegisterEvents is missing: {e}")),
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
            Ok(()) => {
                gpu.in_set = true;
                Ok(())
            }
            Err(e) => {
                if matches!(e, RawError::Unknown) {
                    // NVML: the set is in an undefined state after UNKNOWN.
                    // Rebuilt at the next probe, not at once: a GPU that
                    // keeps failing so must not turn probing into a loop.
                    let next = Instant::now() + self.timings.probe;
                    self.rebuild_at.get_or_insert(next);
                }
                self.failed("nvmlDeviceRegisterEvents");
                Err(format!(
                    "its health cannot be watched: nvmlDeviceRegisterEvents failed: {e}"
                ))
            }
        }
    }

    /// Records and reports a change of a GPU's reachability.
    fn set_unreachable(&mut self, index: usize, reason: Option<String>) {
        let Some(gpu) = self.gpus[index].as_mut() else {
            return;
        };
        if gpu.unreachable == reason {
            return;
        }
        let was = std::mem::replace(&mut gpu.unreachable, reason.clone());
        let uuid = gpu.uuid.clone();
        match reason {
            Some(reason) => {
                tracing::error!("GPU {index} ({uuid}) {reason}; marking its devices Unhealthy");
                self.report(HealthReport::Unreachable {
                    gpu_uuid: uuid,
                    reason,
                });
            }
            None if was.is_some() => {
                tracing::info!("GPU {index} ({uuid}) answers again and is watched");
                self.report(HealthReport::Reachable { gpu_uuid: uuid });
            }
            None => {}
        }
    }

    /// One wait for an event, up to `timeout`.
    fn wait(&mut self, set: nvml_wrapper_sys::bindings::nvmlEventSet_t, timeout: Duration) {
        let result = match self.nvml.lib().nvmlEventSetWait_v2.as_ref() {
            Ok(wait) => {
                let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
                // SAFETY: all-zero is a valid nvmlEventData_t (a null pointer and integers).
                let mut data: nvmlEventData_t = unsafe { std::mem::zeroed() };
                // SAFETY: `set` is the live set owned by `self.set`, and
                // `data` is a valid, writable nvmlEventData_t.
                let ret = unsafe { wait(set, &mut data, ms) };
                if ret == nvmlReturn_enum_NVML_SUCCESS {
                    Ok(Some(data))
                } else if ret == nvmlReturn_enum_NVML_ERROR_TIMEOUT {
                    Ok(None)
                } else {
                    Err(nvml_try(ret)
                        .err()
                        .map_or_else(|| format!("NVML error {ret}"), |e| e.to_string()))
                }
            }
            Err(e) => Err(format!(
                "nvmlEventSetWait_v2 is missing from the NVML library (driver too old?): {e}"
            )),
        };
        let data = match result {
            Ok(Some(data)) => data,
            Ok(None) => {
                self.rebuild.reset();
                self.waits_failing = false;
                return;
            }
            Err(error) => {
                self.wait_failed(&error);
                return;
            }
        };
        self.rebuild.reset();
        self.waits_failing = false;
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

    /// A failed wait: the set is dropped and rebuilt after a back-off, and
    /// every GPU is checked now (the failure may be one GPU's).
    fn wait_failed(&mut self, error: &str) {
        self.failed("nvmlEventSetWait_v2");
        // The first failure in a row rebuilds at once (one lost GPU is left
        // out, and XIDs of the rest are missed for no longer than that);
        // repeated ones back off.
        let delay = if self.waits_failing {
            self.rebuild.next_delay()
        } else {
            Duration::ZERO
        };
        self.waits_failing = true;
        tracing::warn!(
            "waiting for NVML events failed: {error}; checking every GPU, and rebuilding the event set from \
             those that answer in {delay:?}"
        );
        self.drop_set();
        self.rebuild_at = Some(Instant::now() + delay);
        for index in 0..self.gpus.len() {
            let answer = self.gpus[index].as_ref().map(|g| g.device.memory_info());
            if let Some(Err(e)) = answer {
                self.failed(PROBE_CALL);
                self.set_unreachable(index, Some(format!("{PROBE_CALL} failed: {e}")));
            }
        }
    }
}
