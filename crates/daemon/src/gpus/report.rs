//! What a node's GPUs are, from the hardware: the GPUs, their MIG mode
//! (current and pending), the MIG profile table with possible placements,
//! and the existing MIG devices. Read-only NVML queries (the profile table
//! and placements answer while MIG is disabled); `gpu-slicer gpus` prints it.
//!
//! Placements come from the raw `nvmlDeviceGetGpuInstancePossiblePlacements_v2`:
//! nvml-wrapper 0.13's `possible_placements` never sets its vector's length
//! and so always returns none.

use std::ffi::c_uint;

use nvml_wrapper::Device;
use nvml_wrapper::error::{NvmlError as RawError, nvml_try};
use nvml_wrapper_sys::bindings::{NVML_GPU_INSTANCE_PROFILE_COUNT, nvmlGpuInstancePlacement_t};
use serde::Serialize;

use crate::gpus::nvml::{NvmlError, NvmlOptions, discover, nvml, profile_attribute, profile_name};
use gpu_slicer_core::gpu::MigDevice;

/// More placements than any GPU offers for one profile; NVML's count is
/// bounded by it before anything is allocated.
const MAX_PLACEMENTS: usize = 64;

/// One GPU, as `gpu-slicer gpus` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuReport {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    /// PCI device id as `0xDDDDVVVV` (what mig-parted's `device-filter` matches).
    pub pci_device_id: u32,
    pub memory_mib: u64,
    /// `None` when the GPU is not MIG-capable.
    pub mig: Option<MigReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigReport {
    pub current: bool,
    pub pending: bool,
    pub profiles: Vec<ProfileReport>,
    pub devices: Vec<MigDevice>,
}

/// One row of the GPU-instance profile table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProfileReport {
    /// NVML's profile enum (`NVML_GPU_INSTANCE_PROFILE_*`), what
    /// `nvmlDeviceGetGpuInstanceProfileInfo` takes.
    pub profile: u32,
    /// The profile id mig-parted and `nvidia-smi mig -lgip` show.
    pub id: u32,
    /// NVIDIA's name (`1g.18gb`), from the memory and slices.
    pub name: String,
    pub instances: u32,
    pub slices: u32,
    pub memory_mib: u64,
    pub multiprocessors: u32,
    pub copy_engines: u32,
    pub decoders: u32,
    pub encoders: u32,
    pub jpegs: u32,
    pub ofas: u32,
    /// (start, size) in memory slices.
    pub placements: Vec<(u32, u32)>,
}

/// Why the report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Nvml(#[from] NvmlError),
    #[error("NVML {call} for GPU {gpu} failed: {source}")]
    Call {
        call: &'static str,
        gpu: u32,
        #[source]
        source: RawError,
    },
}

/// Reads every GPU's report.
pub fn report(options: &NvmlOptions) -> Result<Vec<GpuReport>, ReportError> {
    let found = discover(options)?;
    let (nvml, _) = nvml(options)?;
    let mut out = Vec::new();
    for gpu in &found.inventory.gpus {
        let device = nvml
            .device_by_index(gpu.index)
            .map_err(|source| ReportError::Call {
                call: "nvmlDeviceGetHandleByIndex_v2",
                gpu: gpu.index,
                source,
            })?;
        let mig = if gpu.mig_capable {
            Some(mig_report(&device, gpu.index, gpu.mig_devices.clone())?)
        } else {
            None
        };
        out.push(GpuReport {
            index: gpu.index,
            uuid: gpu.uuid.clone(),
            model: gpu.model.clone(),
            pci_device_id: gpu.pci_device_id,
            memory_mib: gpu.memory_mib,
            mig,
        });
    }
    Ok(out)
}

fn mig_report(
    device: &Device<'static>,
    index: u32,
    devices: Vec<MigDevice>,
) -> Result<MigReport, ReportError> {
    let call = |call: &'static str| {
        move |source| ReportError::Call {
            call,
            gpu: index,
            source,
        }
    };
    let mode = device.mig_mode().map_err(call("nvmlDeviceGetMigMode"))?;
    let total_bytes = device
        .memory_info()
        .map_err(call("nvmlDeviceGetMemoryInfo_v2"))?
        .total;
    let mut profiles = Vec::new();
    for profile in 0..NVML_GPU_INSTANCE_PROFILE_COUNT {
        let info = match device.profile_info(profile) {
            Ok(info) => info,
            Err(RawError::NotSupported | RawError::InvalidArg | RawError::NotFound) => continue,
            Err(e) => return Err(call("nvmlDeviceGetGpuInstanceProfileInfo")(e)),
        };
        let placements = placements(device, info.id)
            .map_err(call("nvmlDeviceGetGpuInstancePossiblePlacements_v2"))?;
        profiles.push(ProfileReport {
            profile,
            id: info.id,
            name: profile_name(
                info.slice_count,
                0,
                info.memory_size_mb,
                total_bytes,
                profile_attribute(profile),
            ),
            instances: info.instance_count,
            slices: info.slice_count,
            memory_mib: info.memory_size_mb,
            multiprocessors: info.multiprocessor_count,
            copy_engines: info.copy_engine_count,
            decoders: info.decoder_count,
            encoders: info.encoder_count,
            jpegs: info.jpeg_count,
            ofas: info.ofa_count,
            placements,
        });
    }
    Ok(MigReport {
        current: mode.current == 1,
        pending: mode.pending == 1,
        profiles,
        devices,
    })
}

/// The possible placements of profile id `id`.
fn placements(device: &Device<'static>, id: u32) -> Result<Vec<(u32, u32)>, RawError> {
    let nvml = device.nvml();
    let sym = nvml
        .lib()
        .nvmlDeviceGetGpuInstancePossiblePlacements_v2
        .as_ref()
        .map_err(|e| RawError::FailedToLoadSymbol(e.to_string()))?;
    let mut count: c_uint = 0;
    // SAFETY: the device handle is live (owned by `device`); a null array
    // with a zero count asks for the count only, as NVML documents.
    let first = unsafe { sym(device.handle(), id, std::ptr::null_mut(), &mut count) };
    match nvml_try(first) {
        Ok(()) | Err(RawError::InsufficientSize(_)) => {}
        Err(RawError::NotSupported) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    let count_usize = usize::try_from(count)
        .unwrap_or(usize::MAX)
        .min(MAX_PLACEMENTS);
    if count_usize == 0 {
        return Ok(Vec::new());
    }
    // SAFETY: all-zero is a valid placement (two integers).
    let mut array: Vec<nvmlGpuInstancePlacement_t> =
        vec![unsafe { std::mem::zeroed() }; count_usize];
    let mut filled = count_usize as c_uint;
    // SAFETY: `array` holds `filled` writable placements.
    let ret = unsafe { sym(device.handle(), id, array.as_mut_ptr(), &mut filled) };
    nvml_try(ret)?;
    array.truncate(usize::try_from(filled).unwrap_or(0).min(count_usize));
    Ok(array.iter().map(|p| (p.start, p.size)).collect())
}
