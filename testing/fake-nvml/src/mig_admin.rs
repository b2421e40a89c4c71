//! Changing a GPU's MIG layout, as the driver does: MIG mode with pending
//! and current values, GPU instances created at a placement and destroyed,
//! compute instances, and the processes that keep a GPU busy.
//!
//! The driver's state lives in the `FAKE_NVML_TOPOLOGY` file: every change
//! is written back to it (atomically), so that every process loading the
//! fake (the daemon, `gpu-slicer mig apply`, a test) sees the same GPUs, as
//! they would see one driver. Beyond the inventory's fields, each GPU may
//! carry:
//!
//! | Field | Meaning |
//! |---|---|
//! | `mig_pending` | the pending MIG mode (absent: equal to `mig_enabled`) |
//! | `mig_activation` | `immediate`: a MIG mode change takes effect at once when no process runs; `reset-required`: only after a GPU reset (what NVML reports where it cannot reset the GPU itself, `NVML_ERROR_RESET_REQUIRED`). Absent: `reset-required` for Ampere (A100, A30), `immediate` for later models; a test "resets" the GPU by writing `mig_enabled: <pending>` |
//! | `gpu_instances` | GPU instances without a compute instance: `{id, profile_id}` |
//! | `processes` | running compute processes: `{pid, used_memory_mib, gpu_instance_id?, compute_instance_id?}`; MIG mode cannot be activated and their instance cannot be destroyed while they run |
//!
//! Placement rules are the catalog's for the GPU's model (profile ids,
//! possible starts, sizes, most instances, compute slices); a GPU instance's
//! id is the driver's numbering of its placement
//! ([`catalog::gpu_instance_id`]), so its start follows from its id. Only
//! compute instances spanning their whole GPU instance can be created
//! (what mig-parted and gpu-slicer create); a topology file may still list
//! smaller ones (`1c.3g.20gb`).

use std::ffi::c_uint;

use gpu_slicer_core::gpu::catalog::{self, GpuModel, MigProfile};
use gpu_slicer_core::gpu::{Gpu, Inventory, MigDevice, NodeFacts};
use gpu_slicer_core::mig_change;
use nvml_wrapper_sys::bindings::{
    nvmlComputeInstance_st, nvmlComputeInstance_t, nvmlComputeInstanceProfileInfo_t, nvmlDevice_t,
    nvmlGpuInstance_t, nvmlGpuInstancePlacement_t, nvmlProcessInfo_t, nvmlReturn_t,
};
use serde::{Deserialize, Serialize};

use crate::{
    IN_USE, INSUFFICIENT_RESOURCES, INSUFFICIENT_SIZE, INVALID_ARGUMENT, NOT_FOUND, NOT_SUPPORTED,
    SUCCESS, State, call, call_mut, decode, gi_handle, gpu_of, mig_capable, put,
};

/// The topology file: the inventory's GPUs with the driver's extra state.
#[derive(Serialize, Deserialize)]
pub struct FakeNode {
    gpus: Vec<FakeGpu>,
    /// The inventory's node-wide facts (driver and CUDA versions for labels).
    #[serde(default, skip_serializing_if = "NodeFacts::is_unknown")]
    node: NodeFacts,
}

#[derive(Serialize, Deserialize)]
struct FakeGpu {
    #[serde(flatten)]
    gpu: Gpu,
    #[serde(flatten)]
    extra: GpuExtra,
}

/// What the driver holds for one GPU beyond [`Gpu`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GpuExtra {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mig_pending: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mig_activation: Option<Activation>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    gpu_instances: Vec<IdleGpuInstance>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    processes: Vec<Process>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Activation {
    Immediate,
    ResetRequired,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct IdleGpuInstance {
    id: u32,
    profile_id: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Process {
    pid: u32,
    #[serde(default)]
    used_memory_mib: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gpu_instance_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    compute_instance_id: Option<u32>,
}

impl FakeNode {
    pub fn split(self) -> (Inventory, Vec<GpuExtra>) {
        let (gpus, extra) = self.gpus.into_iter().map(|g| (g.gpu, g.extra)).unzip();
        (
            Inventory {
                gpus,
                node: self.node,
            },
            extra,
        )
    }
}

impl GpuExtra {
    pub fn pending(&self, gpu: &Gpu) -> bool {
        self.mig_pending.unwrap_or(gpu.mig_enabled)
    }

    fn activation(&self, gpu: &Gpu) -> Activation {
        self.mig_activation.unwrap_or_else(|| {
            let ampere = catalog::model(&gpu.model)
                .is_some_and(|m| m.key.starts_with("A100") || m.key.starts_with("A30"));
            if ampere {
                Activation::ResetRequired
            } else {
                Activation::Immediate
            }
        })
    }
}

/// One GPU instance as NVML describes it.
pub struct GpuInstance {
    pub id: u32,
    pub profile_id: u32,
    pub start: u32,
    pub size: u32,
    slices: u32,
}

/// The catalog's model of `gpu` and its profile with id `profile_id`.
pub fn catalog_profile(
    gpu: &Gpu,
    profile_id: u32,
) -> Option<(&'static GpuModel, &'static MigProfile)> {
    let model = catalog::model(&gpu.model)?;
    let profile = model.mig?.profiles.iter().find(|p| p.id == profile_id)?;
    Some((model, profile))
}

/// A catalog profile by the name a MIG device carries (`3g.20gb`,
/// `1c.3g.20gb`: the GPU instance's profile).
fn profile_by_device_name(gpu: &Gpu, name: &str) -> Option<&'static MigProfile> {
    let model = catalog::model(&gpu.model)?;
    let name = match name.split_once('.') {
        Some((c, rest)) if c.ends_with('c') && rest.contains('.') => rest,
        _ => name,
    };
    model.mig_profile(name)
}

fn memory_slices(gpu: &Gpu) -> u32 {
    catalog::model(&gpu.model)
        .and_then(|m| m.mig)
        .map_or(8, |g| g.memory_slices)
}

/// The first memory slice of GPU instance `id` of `size` slices (the
/// inverse of [`catalog::gpu_instance_id`]).
fn start_of(gpu: &Gpu, id: u32, size: u32) -> u32 {
    let slices = memory_slices(gpu);
    if size == 0 || slices < size {
        return id;
    }
    id.saturating_sub(slices / size - 1) * size
}

/// Every GPU instance of GPU `index`: those with compute instances (from its
/// MIG devices) and those without.
fn gpu_instances(s: &State, index: usize) -> Vec<GpuInstance> {
    let Some(gpu) = s.inventory.gpus.get(index) else {
        return Vec::new();
    };
    let mut out: Vec<GpuInstance> = Vec::new();
    for dev in &gpu.mig_devices {
        if out.iter().any(|g| g.id == dev.gpu_instance_id) {
            continue;
        }
        let (profile_id, size, slices) = match profile_by_device_name(gpu, &dev.profile) {
            Some(p) => (p.id, p.placement_size, p.compute_slices),
            None => match crate::profile_of(gpu, dev) {
                Some((p, _)) => (p.id, p.eighths as u32, p.slices),
                None => continue,
            },
        };
        out.push(GpuInstance {
            id: dev.gpu_instance_id,
            profile_id,
            start: start_of(gpu, dev.gpu_instance_id, size),
            size,
            slices,
        });
    }
    for idle in &s.extra[index].gpu_instances {
        if let Some((_, p)) = catalog_profile(gpu, idle.profile_id) {
            out.push(GpuInstance {
                id: idle.id,
                profile_id: idle.profile_id,
                start: start_of(gpu, idle.id, p.placement_size),
                size: p.placement_size,
                slices: p.compute_slices,
            });
        }
    }
    out.sort_by_key(|g| g.id);
    out
}

pub fn gpu_instance(s: &State, index: usize, id: u32) -> Option<GpuInstance> {
    gpu_instances(s, index).into_iter().find(|g| g.id == id)
}

/// Writes the driver's state back to the topology file, so other processes
/// see the change; the new text is what this process already holds.
fn persist(s: &mut State) -> Result<(), nvmlReturn_t> {
    let Ok(path) = std::env::var("FAKE_NVML_TOPOLOGY") else {
        return Ok(());
    };
    let node = FakeNode {
        gpus: s
            .inventory
            .gpus
            .iter()
            .cloned()
            .zip(s.extra.iter().cloned())
            .map(|(gpu, extra)| FakeGpu { gpu, extra })
            .collect(),
        node: s.inventory.node.clone(),
    };
    let text = serde_json::to_string_pretty(&node).map_err(|_| crate::UNKNOWN)?;
    let staged = format!("{path}.fake-nvml.{}", std::process::id());
    std::fs::write(&staged, &text)
        .and_then(|()| std::fs::rename(&staged, &path))
        .map_err(|e| {
            eprintln!("fake-nvml: cannot write {path}: {e}");
            crate::UNKNOWN
        })?;
    s.topology_text = text;
    Ok(())
}

/// A MIG device UUID no earlier instance had (the driver gives every new
/// compute instance a new one).
fn new_mig_uuid(gpu: &Gpu, gi: u32, ci: u32) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!("{}/{gi}/{ci}/{nanos}/{}", gpu.uuid, std::process::id());
    let mut hash: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for byte in seed.bytes() {
        hash ^= u128::from(byte);
        hash = hash.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013B);
    }
    let h = format!("{hash:032x}");
    format!(
        "MIG-{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// MIG device handle indices follow GPU-instance, then compute-instance ids.
fn renumber(gpu: &mut Gpu) {
    gpu.mig_devices
        .sort_by_key(|d| (d.gpu_instance_id, d.compute_instance_id));
    for (i, dev) in gpu.mig_devices.iter_mut().enumerate() {
        dev.index = i as u32;
    }
}

const CI_BASE: usize = 0x3000_0000;

fn ci_handle(gpu: usize, gi: u32, ci: u32) -> nvmlComputeInstance_t {
    std::ptr::without_provenance_mut::<nvmlComputeInstance_st>(
        CI_BASE + gpu * crate::STRIDE + (gi as usize) * 0x10 + ci as usize,
    )
}

fn decode_ci(ci: nvmlComputeInstance_t) -> Option<(usize, u32, u32)> {
    let (gpu, rest) = decode(ci.addr(), CI_BASE)?;
    Some((gpu, (rest / 0x10) as u32, (rest % 0x10) as u32))
}

fn decode_gi(s: &State, gi: nvmlGpuInstance_t) -> Result<(usize, GpuInstance), nvmlReturn_t> {
    let (gpu, id) = decode(gi.addr(), crate::GI_BASE).ok_or(INVALID_ARGUMENT)?;
    crate::gpu_failure(gpu)?;
    let found = gpu_instance(s, gpu, id as u32).ok_or(INVALID_ARGUMENT)?;
    Ok((gpu, found))
}

/// Compute-instance profile enum (`NVML_COMPUTE_INSTANCE_PROFILE_*`) → slices:
/// the inverse of the core's table.
fn ci_profile_slices(profile: c_uint) -> Option<u32> {
    (1..=8).find(|&slices| mig_change::compute_instance_profile(slices) == Some(profile))
}

// ---- Exported NVML functions ----

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceSetMigMode(
    device: nvmlDevice_t,
    mode: c_uint,
    activation_status: *mut nvmlReturn_t,
) -> nvmlReturn_t {
    call_mut("nvmlDeviceSetMigMode", |s| {
        let (i, gpu) = gpu_of(s, device)?;
        mig_capable(gpu)?;
        let enable = match mode {
            0 => false,
            1 => true,
            _ => return Err(INVALID_ARGUMENT),
        };
        // Instances must be destroyed before MIG mode is turned off.
        if !enable && !gpu_instances(s, i).is_empty() {
            return Err(IN_USE);
        }
        let activation = s.extra[i].activation(gpu);
        let busy = !s.extra[i].processes.is_empty();
        let gpu = &mut s.inventory.gpus[i];
        let status = if gpu.mig_enabled == enable {
            SUCCESS
        } else if busy {
            IN_USE
        } else if activation == Activation::ResetRequired {
            crate::RESET_REQUIRED
        } else {
            gpu.mig_enabled = enable;
            SUCCESS
        };
        s.extra[i].mig_pending = (enable != s.inventory.gpus[i].mig_enabled).then_some(enable);
        persist(s)?;
        // SAFETY: NVML contract: `activation_status` is null or writable.
        unsafe { put(activation_status, status) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    device: nvmlDevice_t,
    count: *mut c_uint,
    infos: *mut nvmlProcessInfo_t,
) -> nvmlReturn_t {
    call("nvmlDeviceGetComputeRunningProcesses_v3", |s| {
        let (i, _) = gpu_of(s, device)?;
        if count.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        let processes = &s.extra[i].processes;
        // SAFETY: NVML contract: `count` is valid (checked non-null above).
        let room = unsafe { *count } as usize;
        // SAFETY: as above.
        unsafe { put(count, processes.len() as c_uint) }?;
        if processes.is_empty() {
            return Ok(());
        }
        if infos.is_null() || room < processes.len() {
            return Err(INSUFFICIENT_SIZE);
        }
        for (k, p) in processes.iter().enumerate() {
            let info = nvmlProcessInfo_t {
                pid: p.pid,
                usedGpuMemory: p.used_memory_mib * 1024 * 1024,
                gpuInstanceId: p.gpu_instance_id.unwrap_or(u32::MAX),
                computeInstanceId: p.compute_instance_id.unwrap_or(u32::MAX),
            };
            // SAFETY: NVML contract: `infos` holds `room` >= len entries.
            unsafe { infos.add(k).write(info) };
        }
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceCreateGpuInstanceWithPlacement(
    device: nvmlDevice_t,
    profile_id: c_uint,
    placement: *const nvmlGpuInstancePlacement_t,
    gpu_instance: *mut nvmlGpuInstance_t,
) -> nvmlReturn_t {
    // A driver takes a while per instance (tests interrupt an apply with it):
    // `FAKE_NVML_GPU_INSTANCE_CREATE_MS`, outside the state lock.
    if let Some(ms) = std::env::var("FAKE_NVML_GPU_INSTANCE_CREATE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms.min(60_000)));
    }
    call_mut("nvmlDeviceCreateGpuInstanceWithPlacement", |s| {
        let (i, gpu) = gpu_of(s, device)?;
        mig_capable(gpu)?;
        if !gpu.mig_enabled {
            return Err(NOT_SUPPORTED);
        }
        if placement.is_null() || gpu_instance.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        // SAFETY: NVML contract: `placement` is valid (checked non-null).
        let wanted = unsafe { *placement };
        let (model, profile) = catalog_profile(gpu, profile_id).ok_or(INVALID_ARGUMENT)?;
        if wanted.size != profile.placement_size
            || !profile.placement_starts.contains(&wanted.start)
        {
            return Err(INVALID_ARGUMENT);
        }
        let geometry = model.mig.ok_or(NOT_SUPPORTED)?;
        let existing = gpu_instances(s, i);
        let overlaps = existing
            .iter()
            .any(|g| g.start < wanted.start + wanted.size && wanted.start < g.start + g.size);
        let compute: u32 = existing.iter().map(|g| g.slices).sum();
        let same = existing
            .iter()
            .filter(|g| g.profile_id == profile_id)
            .count() as u32;
        if overlaps
            || compute + profile.compute_slices > geometry.compute_slices
            || same >= profile.max_count
        {
            return Err(INSUFFICIENT_RESOURCES);
        }
        let id = catalog::gpu_instance_id(geometry.memory_slices, wanted.start, wanted.size);
        s.extra[i]
            .gpu_instances
            .push(IdleGpuInstance { id, profile_id });
        persist(s)?;
        // SAFETY: NVML contract: `gpu_instance` is writable (checked non-null).
        unsafe { put(gpu_instance, gi_handle(i, id)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstances(
    device: nvmlDevice_t,
    profile_id: c_uint,
    gpu_instances_out: *mut nvmlGpuInstance_t,
    count: *mut c_uint,
) -> nvmlReturn_t {
    call("nvmlDeviceGetGpuInstances", |s| {
        let (i, gpu) = gpu_of(s, device)?;
        mig_capable(gpu)?;
        if count.is_null() || gpu_instances_out.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        let found: Vec<u32> = gpu_instances(s, i)
            .iter()
            .filter(|g| g.profile_id == profile_id)
            .map(|g| g.id)
            .collect();
        for (k, id) in found.iter().enumerate() {
            // SAFETY: NVML contract: the buffer holds the profile's instance
            // count, which bounds the instances of that profile.
            unsafe { gpu_instances_out.add(k).write(gi_handle(i, *id)) };
        }
        // SAFETY: NVML contract: `count` is writable (checked non-null).
        unsafe { put(count, found.len() as c_uint) }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlGpuInstanceDestroy(gpu_instance: nvmlGpuInstance_t) -> nvmlReturn_t {
    call_mut("nvmlGpuInstanceDestroy", |s| {
        let (i, gi) = decode_gi(s, gpu_instance)?;
        let gpu = &s.inventory.gpus[i];
        if gpu.mig_devices.iter().any(|d| d.gpu_instance_id == gi.id) {
            return Err(IN_USE);
        }
        if s.extra[i]
            .processes
            .iter()
            .any(|p| p.gpu_instance_id == Some(gi.id))
        {
            return Err(IN_USE);
        }
        s.extra[i].gpu_instances.retain(|g| g.id != gi.id);
        persist(s)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstanceProfileInfo(
    gpu_instance: nvmlGpuInstance_t,
    profile: c_uint,
    _eng_profile: c_uint,
    info: *mut nvmlComputeInstanceProfileInfo_t,
) -> nvmlReturn_t {
    call("nvmlGpuInstanceGetComputeInstanceProfileInfo", |s| {
        let (_, gi) = decode_gi(s, gpu_instance)?;
        let slices = ci_profile_slices(profile).ok_or(INVALID_ARGUMENT)?;
        if slices > gi.slices {
            return Err(NOT_SUPPORTED);
        }
        let value = nvmlComputeInstanceProfileInfo_t {
            id: profile,
            sliceCount: slices,
            instanceCount: gi.slices / slices,
            multiprocessorCount: 14 * slices,
            sharedCopyEngineCount: gi.slices,
            sharedDecoderCount: gi.slices / 2,
            sharedEncoderCount: 0,
            sharedJpegCount: 0,
            sharedOfaCount: 0,
        };
        // SAFETY: NVML contract: `info` is null or writable.
        unsafe { put(info, value) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpuInstanceCreateComputeInstance(
    gpu_instance: nvmlGpuInstance_t,
    profile_id: c_uint,
    compute_instance: *mut nvmlComputeInstance_t,
) -> nvmlReturn_t {
    call_mut("nvmlGpuInstanceCreateComputeInstance", |s| {
        let (i, gi) = decode_gi(s, gpu_instance)?;
        let slices = ci_profile_slices(profile_id).ok_or(INVALID_ARGUMENT)?;
        if slices != gi.slices {
            // Only compute instances over their whole GPU instance are modelled.
            return Err(NOT_SUPPORTED);
        }
        if compute_instance.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        let gpu = &s.inventory.gpus[i];
        if gpu.mig_devices.iter().any(|d| d.gpu_instance_id == gi.id) {
            return Err(INSUFFICIENT_RESOURCES);
        }
        let (_, profile) = catalog_profile(gpu, gi.profile_id).ok_or(INVALID_ARGUMENT)?;
        let device = MigDevice {
            index: 0,
            profile: profile.name.to_string(),
            uuid: new_mig_uuid(gpu, gi.id, 0),
            gpu_instance_id: gi.id,
            compute_instance_id: 0,
            memory_mib: profile.memory_mib,
            // Not stored: nvmlDeviceGetAttributes_v2 derives them from the profile.
            attributes: None,
            placement_start: None,
        };
        s.extra[i].gpu_instances.retain(|g| g.id != gi.id);
        let gpu = &mut s.inventory.gpus[i];
        gpu.mig_devices.push(device);
        renumber(gpu);
        persist(s)?;
        // SAFETY: NVML contract: `compute_instance` is writable (checked non-null).
        unsafe { put(compute_instance, ci_handle(i, gi.id, 0)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstances(
    gpu_instance: nvmlGpuInstance_t,
    profile_id: c_uint,
    compute_instances: *mut nvmlComputeInstance_t,
    count: *mut c_uint,
) -> nvmlReturn_t {
    call("nvmlGpuInstanceGetComputeInstances", |s| {
        let (i, gi) = decode_gi(s, gpu_instance)?;
        if count.is_null() || compute_instances.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        let gpu = &s.inventory.gpus[i];
        let found: Vec<u32> = gpu
            .mig_devices
            .iter()
            .filter(|d| d.gpu_instance_id == gi.id)
            .filter(|d| {
                let ci_slices = crate::profile_of(gpu, d).map(|(_, c)| c);
                ci_profile_slices(profile_id).is_some()
                    && ci_slices == ci_profile_slices(profile_id)
            })
            .map(|d| d.compute_instance_id)
            .collect();
        for (k, ci) in found.iter().enumerate() {
            // SAFETY: NVML contract: the buffer holds the profile's instance
            // count, which bounds the compute instances of that profile.
            unsafe { compute_instances.add(k).write(ci_handle(i, gi.id, *ci)) };
        }
        // SAFETY: NVML contract: `count` is writable (checked non-null).
        unsafe { put(count, found.len() as c_uint) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstanceById(
    gpu_instance: nvmlGpuInstance_t,
    id: c_uint,
    compute_instance: *mut nvmlComputeInstance_t,
) -> nvmlReturn_t {
    call("nvmlGpuInstanceGetComputeInstanceById", |s| {
        let (i, gi) = decode_gi(s, gpu_instance)?;
        let exists = s.inventory.gpus[i]
            .mig_devices
            .iter()
            .any(|d| d.gpu_instance_id == gi.id && d.compute_instance_id == id);
        if !exists {
            return Err(NOT_FOUND);
        }
        // SAFETY: NVML contract: `compute_instance` is null or writable.
        unsafe { put(compute_instance, ci_handle(i, gi.id, id)) }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlComputeInstanceDestroy(
    compute_instance: nvmlComputeInstance_t,
) -> nvmlReturn_t {
    call_mut("nvmlComputeInstanceDestroy", |s| {
        let (i, gi, ci) = decode_ci(compute_instance).ok_or(INVALID_ARGUMENT)?;
        crate::gpu_failure(i)?;
        let gpu = s.inventory.gpus.get(i).ok_or(INVALID_ARGUMENT)?;
        let position = gpu
            .mig_devices
            .iter()
            .position(|d| d.gpu_instance_id == gi && d.compute_instance_id == ci)
            .ok_or(INVALID_ARGUMENT)?;
        let busy = s.extra[i].processes.iter().any(|p| {
            p.gpu_instance_id == Some(gi) && p.compute_instance_id.is_none_or(|c| c == ci)
        });
        if busy {
            return Err(IN_USE);
        }
        let profile_id = gpu_instance(s, i, gi).map(|g| g.profile_id);
        let gpu = &mut s.inventory.gpus[i];
        gpu.mig_devices.remove(position);
        let emptied = !gpu.mig_devices.iter().any(|d| d.gpu_instance_id == gi);
        renumber(gpu);
        if emptied && let Some(profile_id) = profile_id {
            s.extra[i]
                .gpu_instances
                .push(IdleGpuInstance { id: gi, profile_id });
        }
        persist(s)
    })
}
