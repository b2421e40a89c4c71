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

use std::collections::BTreeMap;
use std::ffi::c_uint;

use nvml_wrapper::Device;
use nvml_wrapper::error::{NvmlError as RawError, nvml_try};
use nvml_wrapper_sys::bindings::{
    NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED, nvmlComputeInstance_t,
    nvmlComputeInstanceProfileInfo_t, nvmlGpuInstance_t, nvmlGpuInstancePlacement_t, nvmlReturn_t,
};

use crate::gpus::nvml::{NvmlError, NvmlOptions, nvml};
use crate::gpus::report::{GpuReport, ReportError, report};
use crate::kubelet::pod_resources::PodDevice;
use gpu_slicer_core::mig_change::{
    self, GpuChange, GpuNow, GpuOutcome, Op, Outcome, compute_instance_profile,
};
use gpu_slicer_core::mig_parted::{LayoutError, MigLayouts};

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
                        error,
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

/// A function of NVML's table, or the error naming it.
macro_rules! sym {
    ($lib:expr, $name:ident) => {
        match $lib.$name.as_ref() {
            Ok(f) => *f,
            Err(e) => {
                return Err(format!(
                    "{} is missing from the NVML library ({e}): the driver is too old for MIG changes",
                    stringify!($name)
                ));
            }
        }
    };
}

fn check(ret: nvmlReturn_t) -> Result<(), String> {
    nvml_try(ret).map_err(|e: RawError| e.to_string())
}

fn gpu_instance(device: &Device<'static>, id: u32) -> Result<nvmlGpuInstance_t, String> {
    let by_id = sym!(device.nvml().lib(), nvmlDeviceGetGpuInstanceById);
    let mut gi: nvmlGpuInstance_t = std::ptr::null_mut();
    // SAFETY: the device handle is live (its Nvml is 'static); `gi` is a
    // valid out pointer.
    check(unsafe { by_id(device.handle(), id, &mut gi) })?;
    Ok(gi)
}

fn run_op(device: &Device<'static>, op: &Op, created: &mut Created) -> Result<Step, String> {
    let lib = device.nvml().lib();
    match *op {
        Op::SetMigMode { enable } => {
            let status = device.set_mig_mode(enable).map_err(|e| e.to_string())?;
            let mode = device.mig_mode().map_err(|e| e.to_string())?;
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
                Err(format!(
                    "NVML accepted the change but reports MIG mode current {} and pending {} (activation status {status})",
                    mode.current, mode.pending
                ))
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
                .ok_or_else(|| format!("GPU instance {planned} was not created by this apply"))?;
            let profile = compute_instance_profile(slices)
                .ok_or_else(|| format!("no compute-instance profile has {slices} slices"))?;
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
