//! Applying a MIG layout to this node's GPUs through NVML: the plan of
//! [`gpu_slicer_core::mig_change`], run. Blocking (NVML calls); the daemon
//! runs it off the async runtime, `gpu-slicer mig apply` directly.
//!
//! Per GPU: refuse while compute processes run on it (unless forced), then
//! the plan's operations in order. A MIG mode change is checked by reading
//! the mode back: where it took effect at once (Hopper and later, with the
//! GPU idle) the GPU is planned again and its instances created in the same
//! apply; where it stays pending (NVML answers `RESET_REQUIRED` where it
//! cannot reset the GPU itself, as on Ampere in VMs) the GPU is reported as
//! needing a reset, which is never done here. An operation that fails
//! undoes the instances this apply created on that GPU, so the GPU is left
//! with MIG on and nothing half-built; every apply starts from what the GPUs
//! hold, so running it again is safe.
//!
//! nvml-wrapper 0.13 has no calls for GPU and compute instances: they are
//! made through its `-sys` function table, in this one module.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::c_uint;

use nvml_wrapper::Device;
use nvml_wrapper::error::{NvmlError as RawError, nvml_try};
use nvml_wrapper_sys::bindings::{
    NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED, nvmlComputeInstance_t,
    nvmlComputeInstanceProfileInfo_t, nvmlGpuInstance_t, nvmlGpuInstanceInfo_t,
    nvmlGpuInstancePlacement_t, nvmlReturn_t,
};

use crate::gpus::nvml::{NvmlError, NvmlOptions, nvml};
use crate::gpus::report::{GpuReport, ReportError, report};
use crate::kubelet::pod_resources::PodDevice;
use gpu_slicer_core::gpu::MigDevice;
use gpu_slicer_core::mig_change::{
    self, GpuChange, GpuNow, GpuOutcome, Op, Outcome, compute_instance_profile,
};
use gpu_slicer_core::mig_parted::{LayoutError, MigLayouts};
use gpu_slicer_core::mig_target::{self, GpuState, InstanceNow, ResolvedTarget};

/// Why nothing could be applied at all (per-GPU failures are [`Outcome`]s).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Nvml(#[from] NvmlError),
    #[error("reading the GPUs: {0}")]
    Report(#[from] ReportError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

/// What to apply, and how.
#[derive(Debug, Clone)]
pub struct ApplyRequest<'a> {
    pub layouts: &'a MigLayouts,
    pub layout: &'a str,
    /// Change GPUs even while processes run on them (NVML may still refuse
    /// to destroy an instance in use).
    pub force: bool,
    /// The devices pods hold (the kubelet's PodResources): their GPUs are
    /// refused unless forced.
    pub pod_devices: Vec<PodDevice>,
}

/// The GPU (NVML index) a device id names, in any form gpu-slicer hands
/// out: a GPU or MIG UUID (`deviceIDStrategy: uuid`), `<gpu>` or
/// `<gpu>:<mig>` (`index`), each maybe with a replica suffix `::<n>`.
pub fn gpu_of_device_id(id: &str, gpus: &[GpuReport]) -> Option<u32> {
    let base = id.split_once("::").map_or(id, |(base, _)| base);
    if let Some(gpu) = gpus.iter().find(|g| g.uuid == base) {
        return Some(gpu.index);
    }
    if base.starts_with("MIG-") {
        return gpus
            .iter()
            .find(|g| {
                g.mig
                    .as_ref()
                    .is_some_and(|m| m.devices.iter().any(|d| d.uuid == base))
            })
            .map(|g| g.index);
    }
    let index: u32 = base.split(':').next()?.parse().ok()?;
    gpus.iter().any(|g| g.index == index).then_some(index)
}

/// Who holds GPU `index`'s devices: `pod <ns/name> (<resource>)`, once each.
fn pods_holding(index: u32, gpus: &[GpuReport], pod_devices: &[PodDevice]) -> Vec<String> {
    let mut holders: Vec<String> = pod_devices
        .iter()
        .filter(|d| gpu_of_device_id(&d.device_id, gpus) == Some(index))
        .map(|d| format!("pod {} ({})", d.pod, d.resource))
        .collect();
    holders.sort();
    holders.dedup();
    holders
}

/// The GPUs as the planner sees them.
pub fn gpus_now(gpus: &[GpuReport]) -> Vec<GpuNow> {
    gpus.iter()
        .map(|g| GpuNow {
            index: g.index,
            uuid: g.uuid.clone(),
            model: g.model.clone(),
            pci_device_id: g.pci_device_id,
            mig_current: g.mig.as_ref().is_some_and(|m| m.current),
            mig_pending: g.mig.as_ref().is_some_and(|m| m.pending),
            devices: g
                .mig
                .as_ref()
                .map(|m| {
                    m.devices
                        .iter()
                        .map(|d| (d.profile.clone(), d.gpu_instance_id, d.compute_instance_id))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// The plan for this node now (what `--dry-run` prints).
pub fn plan(
    options: &NvmlOptions,
    request: &ApplyRequest<'_>,
) -> Result<Vec<GpuChange>, ApplyError> {
    let gpus = report(options)?;
    Ok(mig_change::plan(
        &gpus_now(&gpus),
        request.layouts,
        request.layout,
    )?)
}

/// Applies the layout; one outcome per GPU.
pub fn apply(
    options: &NvmlOptions,
    request: &ApplyRequest<'_>,
) -> Result<Vec<GpuOutcome>, ApplyError> {
    let (nvml, _) = nvml(options)?;
    let gpus = report(options)?;
    let changes = mig_change::plan(&gpus_now(&gpus), request.layouts, request.layout)?;
    let mut outcomes = Vec::new();
    for change in changes {
        let outcome = if change.ops.is_empty() {
            Outcome::Unchanged
        } else {
            match nvml.device_by_index(change.index) {
                Ok(device) => {
                    let pods = pods_holding(change.index, &gpus, &request.pod_devices);
                    apply_gpu(options, request, &device, change.clone(), pods)?
                }
                Err(e) => Outcome::Failed {
                    operation: "nvmlDeviceGetHandleByIndex_v2".into(),
                    error: e.to_string(),
                },
            }
        };
        outcomes.push(GpuOutcome {
            index: change.index,
            uuid: change.uuid,
            outcome,
        });
    }
    Ok(outcomes)
}

fn apply_gpu(
    options: &NvmlOptions,
    request: &ApplyRequest<'_>,
    device: &Device<'static>,
    mut change: GpuChange,
    pods: Vec<String>,
) -> Result<Outcome, ApplyError> {
    if !request.force {
        let mut holders: Vec<String> = match device.running_compute_processes() {
            Ok(processes) => processes
                .iter()
                .map(|p| format!("process {}", p.pid))
                .collect(),
            Err(e) => {
                return Ok(Outcome::Failed {
                    operation: "nvmlDeviceGetComputeRunningProcesses_v3".into(),
                    error: format!("{e}: cannot tell whether the GPU is in use"),
                });
            }
        };
        holders.extend(pods);
        if !holders.is_empty() {
            return Ok(Outcome::Busy { holders });
        }
    }
    // At most two passes: the second after a MIG mode change that took
    // effect at once, to create the instances.
    for _ in 0..2 {
        let mut mode_changed = false;
        let mut created = Created::default();
        for op in &change.ops {
            let result = run_op(device, op, &mut created);
            match result {
                Ok(Step::Done) => {}
                Ok(Step::ModeActive) => mode_changed = true,
                Ok(Step::ModePending { enable }) => return Ok(Outcome::ResetRequired { enable }),
                Err(error) => {
                    created.undo(device);
                    return Ok(Outcome::Failed {
                        operation: op.to_string(),
                        error: error.to_string(),
                    });
                }
            }
        }
        if !mode_changed {
            break;
        }
        let again = plan(options, request)?
            .into_iter()
            .find(|c| c.index == change.index);
        match again {
            Some(next) if !next.ops.is_empty() => change = next,
            _ => break,
        }
    }
    // Read back: the GPU must now hold the layout.
    let left = plan(options, request)?
        .into_iter()
        .find(|c| c.index == change.index);
    Ok(match left {
        Some(c) if !c.ops.is_empty() => Outcome::Failed {
            operation: "reading the instances back".into(),
            error: format!("the GPU still needs: {}", describe(&c.ops)),
        },
        _ => Outcome::Applied,
    })
}

fn describe(ops: &[Op]) -> String {
    ops.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

enum Step {
    Done,
    /// The MIG mode change took effect.
    ModeActive,
    /// The MIG mode change awaits a GPU reset.
    ModePending {
        enable: bool,
    },
}

/// What this apply created on one GPU, by the plan's GPU-instance id.
#[derive(Default)]
struct Created {
    gpu_instances: BTreeMap<u32, nvmlGpuInstance_t>,
    compute_instances: Vec<nvmlComputeInstance_t>,
}

impl Created {
    /// Destroys what was created, newest first; best effort (logged).
    fn undo(&mut self, device: &Device<'static>) {
        let lib = device.nvml().lib();
        for ci in self.compute_instances.drain(..).rev() {
            if let Ok(destroy) = lib.nvmlComputeInstanceDestroy.as_ref() {
                // SAFETY: `ci` was returned by NVML for this device and not
                // destroyed since.
                if let Err(e) = nvml_try(unsafe { destroy(ci) }) {
                    tracing::warn!(
                        "undoing a failed MIG apply: nvmlComputeInstanceDestroy failed: {e}"
                    );
                }
            }
        }
        for (id, gi) in std::mem::take(&mut self.gpu_instances).into_iter().rev() {
            if let Ok(destroy) = lib.nvmlGpuInstanceDestroy.as_ref() {
                // SAFETY: as above, for the GPU instance.
                if let Err(e) = nvml_try(unsafe { destroy(gi) }) {
                    tracing::warn!(
                        "undoing a failed MIG apply: nvmlGpuInstanceDestroy(GPU instance {id}) failed: {e}"
                    );
                }
            }
        }
    }
}

/// Why one operation of the plan failed on a GPU (reported as that GPU's
/// [`Outcome::Failed`]).
#[derive(Debug, thiserror::Error)]
enum OpError {
    #[error(
        "{call} is missing from the NVML library ({reason}): the driver is too old for MIG changes"
    )]
    MissingCall { call: &'static str, reason: String },
    #[error(transparent)]
    Nvml(#[from] RawError),
    #[error(
        "NVML accepted the change but reports MIG mode current {current} and pending {pending} (activation status {status})"
    )]
    ModeUnchanged {
        current: c_uint,
        pending: c_uint,
        status: String,
    },
    #[error("GPU instance {0} was not created by this apply")]
    NotCreated(u32),
    #[error("no compute-instance profile has {0} slices")]
    NoComputeProfile(u32),
}

/// A function of NVML's table, or the error naming it.
macro_rules! sym {
    ($lib:expr, $name:ident) => {
        match $lib.$name.as_ref() {
            Ok(f) => *f,
            Err(e) => {
                return Err(OpError::MissingCall {
                    call: stringify!($name),
                    reason: e.to_string(),
                });
            }
        }
    };
}

fn check(ret: nvmlReturn_t) -> Result<(), OpError> {
    Ok(nvml_try(ret)?)
}

fn gpu_instance(device: &Device<'static>, id: u32) -> Result<nvmlGpuInstance_t, OpError> {
    let by_id = sym!(device.nvml().lib(), nvmlDeviceGetGpuInstanceById);
    let mut gi: nvmlGpuInstance_t = std::ptr::null_mut();
    // SAFETY: the device handle is live (its Nvml is 'static); `gi` is a
    // valid out pointer.
    check(unsafe { by_id(device.handle(), id, &mut gi) })?;
    Ok(gi)
}

fn run_op(device: &Device<'static>, op: &Op, created: &mut Created) -> Result<Step, OpError> {
    let lib = device.nvml().lib();
    match *op {
        Op::SetMigMode { enable } => {
            let status = device.set_mig_mode(enable)?;
            let mode = device.mig_mode()?;
            let wanted = c_uint::from(enable);
            if mode.current == wanted {
                Ok(Step::ModeActive)
            } else if mode.pending == wanted {
                tracing::info!(
                    "MIG mode {} is pending (activation status {status}): it needs a GPU reset",
                    if enable { "on" } else { "off" }
                );
                Ok(Step::ModePending { enable })
            } else {
                Err(OpError::ModeUnchanged {
                    current: mode.current,
                    pending: mode.pending,
                    status: status.to_string(),
                })
            }
        }
        Op::DestroyComputeInstance {
            gpu_instance: gi_id,
            compute_instance,
        } => {
            let gi = gpu_instance(device, gi_id)?;
            let by_id = sym!(lib, nvmlGpuInstanceGetComputeInstanceById);
            let destroy = sym!(lib, nvmlComputeInstanceDestroy);
            let mut ci: nvmlComputeInstance_t = std::ptr::null_mut();
            // SAFETY: `gi` is a live GPU instance handle; `ci` a valid out pointer.
            check(unsafe { by_id(gi, compute_instance, &mut ci) })?;
            // SAFETY: `ci` was just returned by NVML.
            check(unsafe { destroy(ci) })?;
            Ok(Step::Done)
        }
        Op::DestroyGpuInstance { gpu_instance: id } => {
            let gi = gpu_instance(device, id)?;
            let destroy = sym!(lib, nvmlGpuInstanceDestroy);
            // SAFETY: `gi` was just returned by NVML.
            check(unsafe { destroy(gi) })?;
            Ok(Step::Done)
        }
        Op::CreateGpuInstance {
            profile_id,
            start,
            size,
            gpu_instance: planned,
            ..
        } => {
            let create = sym!(lib, nvmlDeviceCreateGpuInstanceWithPlacement);
            let placement = nvmlGpuInstancePlacement_t { start, size };
            let mut gi: nvmlGpuInstance_t = std::ptr::null_mut();
            // SAFETY: the device handle is live; `placement` and `gi` are
            // valid for the call.
            check(unsafe { create(device.handle(), profile_id, &placement, &mut gi) })?;
            created.gpu_instances.insert(planned, gi);
            Ok(Step::Done)
        }
        Op::CreateComputeInstance {
            gpu_instance: planned,
            slices,
        } => {
            let gi = *created
                .gpu_instances
                .get(&planned)
                .ok_or(OpError::NotCreated(planned))?;
            let profile =
                compute_instance_profile(slices).ok_or(OpError::NoComputeProfile(slices))?;
            let info_of = sym!(lib, nvmlGpuInstanceGetComputeInstanceProfileInfo);
            let create = sym!(lib, nvmlGpuInstanceCreateComputeInstance);
            // SAFETY: plain C struct; zero is a valid bit pattern.
            let mut info: nvmlComputeInstanceProfileInfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `gi` is live; `info` a valid out pointer.
            check(unsafe {
                info_of(
                    gi,
                    profile,
                    NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED,
                    &mut info,
                )
            })?;
            let mut ci: nvmlComputeInstance_t = std::ptr::null_mut();
            // SAFETY: `gi` is live; `ci` a valid out pointer.
            check(unsafe { create(gi, info.id, &mut ci) })?;
            created.compute_instances.push(ci);
            Ok(Step::Done)
        }
    }
}

// ---------------------------------------------------------------------------
// Per-GPU targets (`gpu-slicer.io/mig-target`): only free instances change.

/// The GPUs as a target's plan sees them: every GPU instance of a MIG GPU
/// (with or without compute instances: `nvmlDeviceGetGpuInstances` per
/// profile, so an empty one left by an interrupted change is seen and can
/// be destroyed), its placement (`nvmlGpuInstanceGetInfo`), and who holds
/// it: the pods whose devices are on it (the kubelet's PodResources), the
/// processes NVML places on it, and every process NVML does not place
/// (it may run on any instance). With `force` nothing counts as held.
pub fn target_state(
    options: &NvmlOptions,
    pod_devices: &[PodDevice],
    force: bool,
) -> Result<Vec<GpuState>, ApplyError> {
    let (nvml, _) = nvml(options)?;
    let gpus = report(options)?;
    let mut out = Vec::new();
    for gpu in &gpus {
        let mig_current = gpu.mig.as_ref().is_some_and(|m| m.current);
        let geometry = gpu_slicer_core::gpu::catalog::model(&gpu.model).and_then(|m| m.mig);
        let mut instances = Vec::new();
        if let (true, Some(geometry), Some(mig)) = (mig_current, geometry, gpu.mig.as_ref()) {
            let call = |call: &'static str| {
                let index = gpu.index;
                move |source| ReportError::Call {
                    call,
                    gpu: index,
                    source,
                }
            };
            let device = nvml
                .device_by_index(gpu.index)
                .map_err(call("nvmlDeviceGetHandleByIndex_v2"))?;
            let processes = if force {
                Vec::new()
            } else {
                device
                    .running_compute_processes()
                    .map_err(call("nvmlDeviceGetComputeRunningProcesses_v3"))?
            };
            for profile in geometry.profiles {
                for (id, start) in gpu_instances_of(&device, profile.id, profile.max_count)
                    .map_err(call("nvmlDeviceGetGpuInstances"))?
                {
                    let devices: Vec<&MigDevice> = mig
                        .devices
                        .iter()
                        .filter(|d| d.gpu_instance_id == id)
                        .collect();
                    let mut holders: Vec<String> = processes
                        .iter()
                        .filter(|p| p.gpu_instance_id.is_none_or(|gi| gi == id))
                        .map(|p| format!("process {}", p.pid))
                        .collect();
                    if !force {
                        holders.extend(
                            pod_devices
                                .iter()
                                .filter(|p| {
                                    mig_device_of_id(&p.device_id, gpu)
                                        .is_some_and(|d| d.gpu_instance_id == id)
                                })
                                .map(|p| format!("pod {} ({})", p.pod, p.resource)),
                        );
                    }
                    holders.sort();
                    holders.dedup();
                    instances.push(InstanceNow {
                        gpu_instance: id,
                        profile,
                        start,
                        compute_instances: devices.iter().map(|d| d.compute_instance_id).collect(),
                        holders,
                    });
                }
            }
            instances.sort_by_key(|i| i.start);
        }
        out.push(GpuState {
            index: gpu.index,
            uuid: gpu.uuid.clone(),
            product: gpu.model.clone(),
            mig_current,
            instances,
        });
    }
    Ok(out)
}

/// The MIG device a device id names on `gpu`: its MIG UUID
/// (`deviceIDStrategy: uuid`) or `<gpu>:<mig>` (`index`), each maybe with a
/// replica suffix `::<n>`.
fn mig_device_of_id<'a>(id: &str, gpu: &'a GpuReport) -> Option<&'a MigDevice> {
    let base = id.split_once("::").map_or(id, |(base, _)| base);
    let devices = &gpu.mig.as_ref()?.devices;
    if base.starts_with("MIG-") {
        return devices.iter().find(|d| d.uuid == base);
    }
    let (parent, slot) = base.split_once(':')?;
    if parent.parse::<u32>().ok()? != gpu.index {
        return None;
    }
    let slot: u32 = slot.parse().ok()?;
    devices.iter().find(|d| d.index == slot)
}

/// GPU instances of one profile: (id, placement start).
fn gpu_instances_of(
    device: &Device<'static>,
    profile_id: u32,
    max_count: u32,
) -> Result<Vec<(u32, u32)>, RawError> {
    let lib = device.nvml().lib();
    let symbol = |e: &dyn std::fmt::Display| RawError::FailedToLoadSymbol(e.to_string());
    let list = *lib
        .nvmlDeviceGetGpuInstances
        .as_ref()
        .map_err(|e| symbol(e))?;
    let info_of = *lib.nvmlGpuInstanceGetInfo.as_ref().map_err(|e| symbol(e))?;
    // NVML's contract: the buffer holds the profile's most instances.
    let mut handles: Vec<nvmlGpuInstance_t> = vec![std::ptr::null_mut(); max_count.max(1) as usize];
    let mut count: c_uint = 0;
    // SAFETY: the device handle is live; `handles` has room for the
    // profile's most instances; `count` is a valid out pointer.
    let ret = unsafe {
        list(
            device.handle(),
            profile_id,
            handles.as_mut_ptr(),
            &mut count,
        )
    };
    match nvml_try(ret) {
        Ok(()) => {}
        // A profile this GPU does not offer has no instances.
        Err(RawError::NotSupported | RawError::InvalidArg | RawError::NotFound) => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    }
    let mut out = Vec::new();
    for &gi in handles.iter().take((count as usize).min(handles.len())) {
        // SAFETY: plain C struct; zero is a valid bit pattern.
        let mut info: nvmlGpuInstanceInfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `gi` was just returned by NVML; `info` a valid out pointer.
        nvml_try(unsafe { info_of(gi, &mut info) })?;
        out.push((info.id, info.placement.start));
    }
    Ok(out)
}

/// What a target did to one GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetOutcome {
    pub outcome: GpuOutcome,
    /// What changed (`destroyed …; created …`), for the Event and the log.
    pub changes: String,
}

/// Gives one GPU its target: reads what it holds and who holds what (right
/// before any destroy), plans, runs the operations, and reads back. A
/// failed operation undoes the instances this apply created and creates
/// again the free ones it destroyed, at their placements (new UUIDs: a
/// destroyed instance cannot come back as itself), so the GPU holds its
/// former layout.
///
/// `serving`: the GPU instances the node keeps advertising Healthy during
/// this change (the plan's [`mig_target::GpuPlan::keep`] when the change
/// was checked). A pod may be admitted onto them at any moment, so a plan
/// that would destroy one (the GPU changed since the check) is refused.
pub fn apply_target_gpu(
    options: &NvmlOptions,
    target: &ResolvedTarget,
    force: bool,
    pod_devices: &[PodDevice],
    serving: &BTreeSet<u32>,
) -> Result<TargetOutcome, ApplyError> {
    let done = |outcome: Outcome, changes: String| TargetOutcome {
        outcome: GpuOutcome {
            index: target.index,
            uuid: target.uuid.clone(),
            outcome,
        },
        changes,
    };
    let state = target_state(options, pod_devices, force)?;
    let Some(gpu) = state.iter().find(|g| g.uuid == target.uuid) else {
        return Ok(done(
            Outcome::Failed {
                operation: "finding the GPU".into(),
                error: "NVML no longer lists it".into(),
            },
            String::new(),
        ));
    };
    let plan = match mig_target::plan_gpu(target.model, gpu, &target.wanted) {
        Ok(plan) => plan,
        Err(blocked) => {
            return Ok(done(
                Outcome::Blocked {
                    reasons: blocked.reasons(),
                },
                String::new(),
            ));
        }
    };
    if plan.ops.is_empty() {
        return Ok(done(Outcome::Unchanged, plan.summary()));
    }
    if let Some(gpu_instance) = plan.destroys_any_of(serving) {
        return Ok(done(
            Outcome::Failed {
                operation: "planning".into(),
                error: format!(
                    "the GPU changed since the target was checked: GPU instance {gpu_instance} is still \
                     offered to pods and would be destroyed; nothing changed, the target is retried"
                ),
            },
            String::new(),
        ));
    }
    let (nvml, _) = nvml(options)?;
    let device = match nvml.device_by_index(gpu.index) {
        Ok(device) => device,
        Err(e) => {
            return Ok(done(
                Outcome::Failed {
                    operation: "nvmlDeviceGetHandleByIndex_v2".into(),
                    error: e.to_string(),
                },
                String::new(),
            ));
        }
    };
    let before: Vec<_> = gpu.instances.iter().map(InstanceNow::at).collect();
    let mut created = Created::default();
    for op in &plan.ops {
        if let Err(error) = run_op(&device, op, &mut created) {
            created.undo(&device);
            let restored = restore(options, target, &device, &before);
            return Ok(done(
                Outcome::Failed {
                    operation: op.to_string(),
                    error: format!("{error}; {restored}"),
                },
                String::new(),
            ));
        }
    }
    // Read back: the GPU must now hold its target.
    let after = target_state(options, &[], true)?;
    let left = after
        .iter()
        .find(|g| g.uuid == target.uuid)
        .map(|g| mig_target::plan_gpu(target.model, g, &target.wanted));
    Ok(match left {
        Some(Ok(p)) if p.ops.is_empty() => done(Outcome::Applied, plan.summary()),
        Some(Ok(p)) => done(
            Outcome::Failed {
                operation: "reading the instances back".into(),
                error: format!("the GPU still needs: {}", describe(&p.ops)),
            },
            plan.summary(),
        ),
        _ => done(
            Outcome::Failed {
                operation: "reading the instances back".into(),
                error: "the GPU is no longer listed".into(),
            },
            plan.summary(),
        ),
    })
}

/// After a failed target: creates again the instances `before` had that
/// the GPU no longer holds. Best effort; says what it came to.
fn restore(
    options: &NvmlOptions,
    target: &ResolvedTarget,
    device: &Device<'static>,
    before: &[gpu_slicer_core::mig_demand::InstanceAt],
) -> String {
    let now = match target_state(options, &[], true) {
        Ok(now) => now,
        Err(e) => {
            return format!("the former layout was not restored: reading the GPU failed: {e}");
        }
    };
    let Some(gpu) = now.iter().find(|g| g.uuid == target.uuid) else {
        return "the former layout was not restored: the GPU is no longer listed".into();
    };
    let Ok(back) = mig_target::plan_gpu(target.model, gpu, before) else {
        return "the former layout was not restored".into();
    };
    let mut created = Created::default();
    for op in back.ops.iter().filter(|op| {
        matches!(
            op,
            Op::CreateGpuInstance { .. } | Op::CreateComputeInstance { .. }
        )
    }) {
        if let Err(e) = run_op(device, op, &mut created) {
            return format!("the former layout was not fully restored: {op} failed: {e}");
        }
    }
    if back.create.is_empty() {
        "nothing was changed".into()
    } else {
        format!(
            "the former layout was restored ({} created again)",
            back.create
                .iter()
                .map(mig_target::describe)
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpus::report::MigReport;
    use gpu_slicer_core::gpu::MigDevice;

    fn gpu(index: u32, migs: &[&str]) -> GpuReport {
        GpuReport {
            index,
            uuid: format!("GPU-{index}"),
            model: "NVIDIA A100-SXM4-40GB".into(),
            pci_device_id: 0x20B0_10DE,
            memory_mib: 40536,
            mig: Some(MigReport {
                current: true,
                pending: true,
                profiles: Vec::new(),
                devices: migs
                    .iter()
                    .enumerate()
                    .map(|(j, uuid)| MigDevice {
                        index: j as u32,
                        profile: "1g.5gb".into(),
                        uuid: uuid.to_string(),
                        gpu_instance_id: 7 + j as u32,
                        compute_instance_id: 0,
                        memory_mib: 4864,
                        attributes: None,
                        placement_start: None,
                    })
                    .collect(),
            }),
        }
    }

    #[test]
    fn every_device_id_form_names_its_gpu() {
        let gpus = [gpu(0, &["MIG-a"]), gpu(1, &["MIG-b", "MIG-c"])];
        for (id, want) in [
            ("GPU-1", Some(1)),
            ("GPU-0::3", Some(0)),
            ("MIG-c", Some(1)),
            ("MIG-a::1", Some(0)),
            ("1", Some(1)),
            ("0:0", Some(0)),
            ("1:1::2", Some(1)),
            ("2", None),
            ("MIG-z", None),
            ("GPU-9", None),
            ("x", None),
        ] {
            assert_eq!(gpu_of_device_id(id, &gpus), want, "{id}");
        }
        let held = [
            PodDevice {
                pod: "ml/train".into(),
                resource: "nvidia.com/mig-1g.5gb".into(),
                device_id: "MIG-c".into(),
            },
            PodDevice {
                pod: "ml/train".into(),
                resource: "nvidia.com/mig-1g.5gb".into(),
                device_id: "MIG-b".into(),
            },
        ];
        assert_eq!(
            pods_holding(1, &gpus, &held),
            ["pod ml/train (nvidia.com/mig-1g.5gb)"]
        );
        assert!(pods_holding(0, &gpus, &held).is_empty());
    }
}
