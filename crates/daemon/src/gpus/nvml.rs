//! NVML backend: discovers the node's real GPUs and MIG devices.
//!
//! [`discover`] loads `libnvidia-ml.so.1` (see [`find_library`] for where it
//! looks), initialises NVML once per library path and keeps it for the life of
//! the process, so the daemon can run discovery again on reload and on retry.
//! It produces the same [`Inventory`] the simulated backend does, plus the
//! node's [`NodeDeviceFiles`] (control device nodes and MIG capability minors).
//!
//! Everything here **blocks** (NVML calls are synchronous FFI, and sysfs/procfs
//! are read with `std::fs`): call it from `tokio::task::spawn_blocking` or a
//! dedicated thread, never directly on an async worker.
//!
//! What is read where:
//!
//! | Field | Source |
//! |---|---|
//! | index, name, UUID, memory, minor, PCI bus id, PCI device id | NVML device queries |
//! | NUMA node | `<sysfs>/bus/pci/devices/<bus id>/numa_node` (NVIDIA's rule: value < 0 or no file → none) |
//! | compute capability | `nvmlDeviceGetCudaComputeCapability` (labels only; an error leaves it unknown) |
//! | PCI class | `<sysfs>/bus/pci/devices/<bus id>/class` (labels only: `gpu.mode`) |
//! | driver / CUDA version | `nvmlSystemGetDriverVersion`, `nvmlSystemGetCudaDriverVersion_v2` |
//! | machine type | `<sysfs>/class/dmi/id/product_name`, `unknown` when unreadable (as GFD) |
//! | MIG device attributes | `nvmlDeviceGetAttributes_v2` (memory, SMs, slices, shared engines) |
//! | NVLink peers | active links by remote PCI bus id, mapped to the peer GPU's index |
//! | MIG capable / enabled | `nvmlDeviceGetMigMode`: `NotSupported` → not capable; `current == 1` → enabled |
//! | MIG devices | handles `0..nvmlDeviceGetMaxMigDeviceCount`, empty slots skipped |
//! | GI / CI ids | raw `nvmlDeviceGetGpuInstanceId` / `nvmlDeviceGetComputeInstanceId` |
//! | GI placement start | `nvmlGpuInstanceGetInfo` (the call that names the profile) |
//! | profile name | GI profile (raw `nvmlDeviceGetGpuInstanceById` + `nvmlGpuInstanceGetInfo`, matched against `nvmlDeviceGetGpuInstanceProfileInfo` for every profile enum), CI slices from `nvmlDeviceGetAttributes_v2`, named by [`profile_name`] |
//! | control nodes | `nvidiactl`, `nvidia-uvm`, `nvidia-uvm-tools`, `nvidia-modeset` present under the dev root |
//! | MIG capability minors | `/proc/driver/nvidia-caps/mig-minors` |
//!
//! GPUs named `DGX Display` / `NVIDIA DGX Display` (the display adapter of DGX
//! stations) are skipped, as NVIDIA's plugin does; the other GPUs keep their
//! NVML indices.

use std::collections::HashMap;
use std::ffi::c_uint;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nvml_wrapper::error::{NvmlError as RawError, nvml_try};
use nvml_wrapper::struct_wrappers::device::ProfileInfo;
use nvml_wrapper::{Device, Nvml};
use nvml_wrapper_sys::bindings::{
    NVML_GPU_INSTANCE_PROFILE_COUNT, NVML_NVLINK_MAX_LINKS, nvmlGpuInstance_t,
    nvmlGpuInstanceInfo_t,
};

use gpu_slicer_core::allocate::NodeDeviceFiles;
use gpu_slicer_core::gpu::{
    ComputeCapability, Gpu, Inventory, MigAttributes, MigDevice, MigEngines, NodeFacts, NvLinkPeer,
    PcieLevel, PciePeer,
};

/// File name of the NVML library.
pub const LIBRARY_NAME: &str = "libnvidia-ml.so.1";

/// Directories under the driver root searched for [`LIBRARY_NAME`], in order
/// (NVIDIA's list, plus the two places cloud images put it).
pub const LIBRARY_DIRS: &[&str] = &[
    "usr/lib64",
    "usr/lib/x86_64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "lib64",
    "lib/x86_64-linux-gnu",
    "lib/aarch64-linux-gnu",
    "usr/local/nvidia/lib64",
    "opt/nvidia/lib64",
];

/// Control device nodes handed to every container when present.
pub const CONTROL_NODES: &[&str] = &[
    "nvidiactl",
    "nvidia-uvm",
    "nvidia-uvm-tools",
    "nvidia-modeset",
];

/// Default location of the MIG capability minors.
pub const MIG_MINORS_PATH: &str = "/proc/driver/nvidia-caps/mig-minors";

/// Product names of display adapters that are not compute GPUs.
const DISPLAY_ONLY: &[&str] = &["DGX Display", "NVIDIA DGX Display"];

const MIB: u64 = 1 << 20;

/// Where to find NVML and the node's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvmlOptions {
    /// Explicit library (`--nvml-lib`); skips the search.
    pub lib_path: Option<PathBuf>,
    /// Container path of the host's driver root (e.g. `/driver-root`).
    pub driver_root: PathBuf,
    /// sysfs mount (`/sys`); NUMA nodes are read below it.
    pub sysfs_root: PathBuf,
    /// Where device nodes are checked (`/dev`); the paths handed out are
    /// always `/dev/<name>`.
    pub dev_root: PathBuf,
    /// `mig-minors` file ([`MIG_MINORS_PATH`]).
    pub mig_minors: PathBuf,
}

impl Default for NvmlOptions {
    fn default() -> Self {
        Self {
            lib_path: None,
            driver_root: PathBuf::from("/driver-root"),
            sysfs_root: PathBuf::from("/sys"),
            dev_root: PathBuf::from("/dev"),
            mig_minors: PathBuf::from(MIG_MINORS_PATH),
        }
    }
}

/// How the library to load was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibrarySource {
    /// `lib_path` was given.
    Explicit,
    /// Found under the driver root.
    DriverRoot,
    /// Nothing found: the bare name, resolved by the dynamic loader.
    DynamicLoader,
}

/// The library [`find_library`] picked, and what it looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryChoice {
    /// What is passed to `dlopen`.
    pub path: PathBuf,
    pub source: LibrarySource,
    /// Candidates under the driver root that were checked (empty when explicit).
    pub tried: Vec<PathBuf>,
}

/// The result of one discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    pub inventory: Inventory,
    pub files: NodeDeviceFiles,
    /// The library file that was loaded (as passed to `dlopen`).
    pub library: String,
    /// `nvmlSystemGetDriverVersion`, when the driver answers.
    pub driver_version: Option<String>,
    /// GPUs NVML counts but that could not be read: left out of the
    /// inventory (never advertised half-known), rediscovered later.
    pub unreachable: Vec<UnreachableGpu>,
}

/// A GPU that NVML counts but whose calls failed during discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreachableGpu {
    /// NVML's index.
    pub index: u32,
    /// The failed call and its error, as a user reads it.
    pub reason: String,
}

impl NvmlError {
    /// Errors that no GPU of the node escapes (the library, the driver):
    /// discovery stops at the first. Anything else concerns one GPU.
    pub fn is_node_wide(&self) -> bool {
        matches!(
            self,
            NvmlError::LibraryNotFound { .. }
                | NvmlError::DriverNotLoaded { .. }
                | NvmlError::MissingSymbol { .. }
                | NvmlError::Init { .. }
        )
    }

    /// The message already says what to check or change (the library's
    /// paths, the kernel driver, permissions, the driver's age).
    pub fn says_what_to_do(&self) -> bool {
        matches!(
            self,
            NvmlError::LibraryNotFound { .. }
                | NvmlError::DriverNotLoaded { .. }
                | NvmlError::NoPermission { .. }
                | NvmlError::MissingSymbol { .. }
        )
    }
}

/// Why discovery failed; every message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum NvmlError {
    #[error(
        "cannot load the NVML library {library}: {detail}. Looked for {LIBRARY_NAME} under the driver root {driver_root} in [{tried}], then asked the dynamic loader. If this is a GPU node: point --nvml-lib at the host's {LIBRARY_NAME}, mount the host's driver root at {driver_root}, or run the pod with the `nvidia` runtime (runtimeClassName: nvidia, or the nvidia default runtime) so the driver libraries are injected. If this is not a GPU node, keep the plugin off it with a nodeSelector or affinity"
    )]
    LibraryNotFound {
        library: String,
        driver_root: String,
        tried: String,
        detail: String,
    },
    #[error(
        "NVML ({library}) could not initialise: the NVIDIA kernel driver is not loaded. Check `nvidia-smi` and `lsmod | grep nvidia` on the host; if the driver is installed by the GPU operator, wait for its driver pod to become ready"
    )]
    DriverNotLoaded { library: String },
    #[error(
        "NVML {call}{context} failed: no permission. The plugin needs read-write access to /dev/nvidiactl and /dev/nvidia*: run it privileged or with the `nvidia` runtime"
    )]
    NoPermission { call: String, context: String },
    #[error(
        "NVML function {call} is missing from {library} ({detail}): the NVIDIA driver is too old for gpu-slicer; upgrade the driver (R525 or newer), or point --nvml-lib at the library that matches the loaded kernel driver"
    )]
    MissingSymbol {
        call: String,
        library: String,
        detail: String,
    },
    #[error("NVML ({library}) could not initialise: {source}")]
    Init {
        library: String,
        #[source]
        source: RawError,
    },
    #[error("NVML {call}{context} failed: {source}")]
    Call {
        call: String,
        context: String,
        #[source]
        source: RawError,
    },
    #[error(
        "NVML {call}{context} returned GPU instance profile id {profile_id}, which none of the GPU's profiles (nvmlDeviceGetGpuInstanceProfileInfo) has"
    )]
    UnknownProfile {
        call: String,
        context: String,
        profile_id: u32,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("error parsing value for NUMA node in {path}: {value:?}")]
    Numa { path: String, value: String },
}

/// Picks the library to load, checking files with `Path::exists`.
pub fn find_library(opts: &NvmlOptions) -> LibraryChoice {
    find_library_with(opts, |p| p.exists())
}

/// [`find_library`] with an injectable existence check: an explicit
/// `lib_path` wins, else the first [`LIBRARY_DIRS`] entry under the driver
/// root that holds [`LIBRARY_NAME`], else the bare name.
pub fn find_library_with(opts: &NvmlOptions, exists: impl Fn(&Path) -> bool) -> LibraryChoice {
    if let Some(path) = &opts.lib_path {
        return LibraryChoice {
            path: path.clone(),
            source: LibrarySource::Explicit,
            tried: Vec::new(),
        };
    }
    let mut tried = Vec::new();
    for dir in LIBRARY_DIRS {
        let candidate = opts.driver_root.join(dir).join(LIBRARY_NAME);
        let found = exists(&candidate);
        tried.push(candidate);
        if found {
            let path = tried[tried.len() - 1].clone();
            return LibraryChoice {
                path,
                source: LibrarySource::DriverRoot,
                tried,
            };
        }
    }
    LibraryChoice {
        path: PathBuf::from(LIBRARY_NAME),
        source: LibrarySource::DynamicLoader,
        tried,
    }
}

/// Initialised NVML instances, by library path. Leaked on purpose: NVML stays
/// initialised for the life of the process (devices borrow it as `'static`),
/// and a failed init is not cached, so a retry tries again.
static LOADED: Mutex<Vec<(PathBuf, &'static Nvml)>> = Mutex::new(Vec::new());

/// The process-wide NVML instance for the library [`find_library`] picks,
/// initialising it on first use. Blocking. Also what a health checker should
/// use, so that it shares the instance discovery used.
pub fn nvml(opts: &NvmlOptions) -> Result<(&'static Nvml, String), NvmlError> {
    let choice = find_library(opts);
    let library = choice.path.display().to_string();
    let mut loaded = LOADED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, nvml)) = loaded.iter().find(|(path, _)| *path == choice.path) {
        return Ok((nvml, library));
    }
    let nvml = Nvml::builder()
        .lib_path(choice.path.as_os_str())
        .init()
        .map_err(|e| init_error(e, &choice, opts))?;
    let nvml: &'static Nvml = Box::leak(Box::new(nvml));
    loaded.push((choice.path.clone(), nvml));
    Ok((nvml, library))
}

fn init_error(error: RawError, choice: &LibraryChoice, opts: &NvmlOptions) -> NvmlError {
    let library = choice.path.display().to_string();
    match error {
        RawError::LibloadingError(e) => NvmlError::LibraryNotFound {
            library,
            driver_root: opts.driver_root.display().to_string(),
            tried: if choice.source == LibrarySource::Explicit {
                "nothing: --nvml-lib was given".to_string()
            } else {
                choice
                    .tried
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            detail: e.to_string(),
        },
        RawError::DriverNotLoaded => NvmlError::DriverNotLoaded { library },
        RawError::NoPermission => NvmlError::NoPermission {
            call: "nvmlInit_v2".to_string(),
            context: String::new(),
        },
        RawError::FailedToLoadSymbol(detail) => NvmlError::MissingSymbol {
            call: "nvmlInit_v2".to_string(),
            library,
            detail,
        },
        source => NvmlError::Init { library, source },
    }
}

/// Maps wrapper errors of one call to [`NvmlError`].
struct Ctx<'a> {
    library: &'a str,
}

impl Ctx<'_> {
    fn err(&self, call: &str, context: impl Display) -> impl FnOnce(RawError) -> NvmlError {
        let library = self.library.to_string();
        let call = call.to_string();
        let context = context.to_string();
        move |error| match error {
            RawError::FailedToLoadSymbol(detail) => NvmlError::MissingSymbol {
                call,
                library,
                detail,
            },
            RawError::NoPermission => NvmlError::NoPermission { call, context },
            RawError::DriverNotLoaded => NvmlError::DriverNotLoaded { library },
            source => NvmlError::Call {
                call,
                context,
                source,
            },
        }
    }

    /// A raw `NvmlLib` field: the function, or [`NvmlError::MissingSymbol`].
    fn sym<T: Copy, E: Display>(&self, field: &Result<T, E>, call: &str) -> Result<T, NvmlError> {
        field
            .as_ref()
            .copied()
            .map_err(|e| NvmlError::MissingSymbol {
                call: call.to_string(),
                library: self.library.to_string(),
                detail: e.to_string(),
            })
    }
}

/// Discovers the node's GPUs, MIG devices and device files. Blocking: run it
/// in `spawn_blocking`. NVML is initialised on the first call and reused.
pub fn discover(opts: &NvmlOptions) -> Result<Discovery, NvmlError> {
    let (nvml, library) = nvml(opts)?;
    let ctx = Ctx { library: &library };
    let driver_version = nvml.sys_driver_version().ok();
    let count = nvml
        .device_count()
        .map_err(ctx.err("nvmlDeviceGetCount_v2", ""))?;

    let mut gpus = Vec::new();
    let mut devices = Vec::new();
    let mut failed: Vec<(u32, NvmlError)> = Vec::new();
    for index in 0..count {
        match discover_gpu(&ctx, opts, nvml, index) {
            Ok(Some((gpu, device))) => {
                gpus.push(gpu);
                devices.push(device);
            }
            Ok(None) => {}
            // The library or the driver is wrong: no GPU will answer.
            Err(e) if e.is_node_wide() => return Err(e),
            Err(e) => failed.push((index, e)),
        }
    }
    // One GPU that does not answer leaves the others serving; none
    // answering is a node that is not ready.
    if gpus.is_empty() && !failed.is_empty() {
        return Err(failed.swap_remove(0).1);
    }
    let unreachable = failed
        .into_iter()
        .map(|(index, e)| UnreachableGpu {
            index,
            reason: e.to_string(),
        })
        .collect();

    let by_bus_id: HashMap<String, u32> = gpus
        .iter()
        .map(|g| (sysfs_bus_id(&g.pci_bus_id), g.index))
        .collect();
    for (gpu, device) in gpus.iter_mut().zip(&devices) {
        gpu.nvlinks = nvlink_peers(device, gpu.index, &by_bus_id);
    }
    let indices: Vec<u32> = gpus.iter().map(|g| g.index).collect();
    for (i, gpu) in gpus.iter_mut().enumerate() {
        gpu.pcie = pcie_peers(nvml, &devices, &indices, i);
    }

    let files = device_files(opts)?;
    let node = NodeFacts {
        driver_version: driver_version.clone(),
        // GFD reads the same call; a driver without it leaves the CUDA
        // labels out.
        cuda_driver_version: nvml
            .sys_cuda_driver_version()
            .ok()
            .and_then(|v| u32::try_from(v).ok()),
        machine: Some(read_machine_type(&opts.sysfs_root)),
    };
    Ok(Discovery {
        inventory: Inventory { gpus, node },
        files,
        library,
        driver_version,
        unreachable,
    })
}

/// One GPU by NVML index; `None` for a display-only adapter.
fn discover_gpu(
    ctx: &Ctx<'_>,
    opts: &NvmlOptions,
    nvml: &'static Nvml,
    index: u32,
) -> Result<Option<(Gpu, Device<'static>)>, NvmlError> {
    let at = format!(" for GPU {index}");
    let device = nvml
        .device_by_index(index)
        .map_err(ctx.err("nvmlDeviceGetHandleByIndex_v2", &at))?;
    let model = device.name().map_err(ctx.err("nvmlDeviceGetName", &at))?;
    if DISPLAY_ONLY.contains(&model.trim()) {
        tracing::debug!(index, %model, "skipping display-only device");
        return Ok(None);
    }
    let gpu = full_gpu(ctx, opts, &device, index, model)?;
    Ok(Some((gpu, device)))
}

fn full_gpu(
    ctx: &Ctx<'_>,
    opts: &NvmlOptions,
    device: &Device<'static>,
    index: u32,
    model: String,
) -> Result<Gpu, NvmlError> {
    let at = format!(" for GPU {index}");
    let uuid = device.uuid().map_err(ctx.err("nvmlDeviceGetUUID", &at))?;
    let memory = device
        .memory_info()
        .map_err(ctx.err("nvmlDeviceGetMemoryInfo_v2", &at))?;
    let minor = device
        .minor_number()
        .map_err(ctx.err("nvmlDeviceGetMinorNumber", &at))?;
    let pci = device
        .pci_info()
        .map_err(ctx.err("nvmlDeviceGetPciInfo_v3", &at))?;
    let numa_node = read_numa_node(&opts.sysfs_root, &pci.bus_id)?;
    // For node labels only: a GPU that cannot say leaves its labels out
    // (GFD would fail its whole labelling), it still serves.
    let compute_capability = match device.cuda_compute_capability() {
        Ok(cc) => u32::try_from(cc.major)
            .ok()
            .zip(u32::try_from(cc.minor).ok())
            .map(|(major, minor)| ComputeCapability { major, minor }),
        Err(e) => {
            tracing::debug!(index, error = %e, "nvmlDeviceGetCudaComputeCapability failed");
            None
        }
    };
    let pci_class = read_pci_class(&opts.sysfs_root, &pci.bus_id);
    let (mig_capable, mig_enabled) = match device.mig_mode() {
        Ok(mode) => (true, mode.current == 1),
        Err(RawError::NotSupported) => (false, false),
        Err(e) => return Err(ctx.err("nvmlDeviceGetMigMode", &at)(e)),
    };
    let mig_devices = if mig_enabled {
        mig_devices(ctx, device, index, memory.total)?
    } else {
        Vec::new()
    };
    Ok(Gpu {
        index,
        model,
        uuid,
        memory_mib: memory.total / MIB,
        pci_bus_id: pci.bus_id,
        pci_device_id: pci.pci_device_id,
        numa_node,
        minor,
        mig_capable,
        mig_enabled,
        mig_devices,
        nvlinks: Vec::new(),
        pcie: Vec::new(),
        compute_capability,
        pci_class,
    })
}

/// GPU-instance profiles of a MIG-capable GPU: (enum value, info).
fn gi_profiles(
    ctx: &Ctx<'_>,
    device: &Device<'static>,
    index: u32,
) -> Result<Vec<(u32, ProfileInfo)>, NvmlError> {
    let mut profiles = Vec::new();
    for profile in 0..NVML_GPU_INSTANCE_PROFILE_COUNT {
        match device.profile_info(profile) {
            Ok(info) => profiles.push((profile, info)),
            Err(RawError::NotSupported | RawError::InvalidArg | RawError::NotFound) => {}
            Err(e) => {
                return Err(ctx.err(
                    "nvmlDeviceGetGpuInstanceProfileInfo",
                    format!(" for GPU {index}, profile {profile}"),
                )(e));
            }
        }
    }
    Ok(profiles)
}

fn mig_devices(
    ctx: &Ctx<'_>,
    parent: &Device<'static>,
    index: u32,
    parent_total_bytes: u64,
) -> Result<Vec<MigDevice>, NvmlError> {
    let at = format!(" for GPU {index}");
    let slots = parent
        .mig_device_count()
        .map_err(ctx.err("nvmlDeviceGetMaxMigDeviceCount", &at))?;
    let mut profiles: Option<Vec<(u32, ProfileInfo)>> = None;
    let mut out = Vec::new();
    for slot in 0..slots {
        let mig = match parent.mig_device_by_index(slot) {
            Ok(mig) => mig,
            Err(RawError::NotFound) => continue,
            Err(e) => {
                return Err(ctx.err(
                    "nvmlDeviceGetMigDeviceHandleByIndex",
                    format!(" for GPU {index}, MIG slot {slot}"),
                )(e));
            }
        };
        let profiles = match &profiles {
            Some(p) => p,
            None => profiles.insert(gi_profiles(ctx, parent, index)?),
        };
        out.push(mig_device(
            ctx,
            parent,
            &mig,
            index,
            slot,
            parent_total_bytes,
            profiles,
        )?);
    }
    Ok(out)
}

fn mig_device(
    ctx: &Ctx<'_>,
    parent: &Device<'static>,
    mig: &Device<'static>,
    index: u32,
    slot: u32,
    parent_total_bytes: u64,
    profiles: &[(u32, ProfileInfo)],
) -> Result<MigDevice, NvmlError> {
    let at = format!(" for MIG device {index}:{slot}");
    let uuid = mig.uuid().map_err(ctx.err("nvmlDeviceGetUUID", &at))?;
    let memory = mig
        .memory_info()
        .map_err(ctx.err("nvmlDeviceGetMemoryInfo_v2", &at))?;
    let lib = mig.nvml().lib();

    let get_gi = ctx.sym(
        &lib.nvmlDeviceGetGpuInstanceId,
        "nvmlDeviceGetGpuInstanceId",
    )?;
    let get_ci = ctx.sym(
        &lib.nvmlDeviceGetComputeInstanceId,
        "nvmlDeviceGetComputeInstanceId",
    )?;
    let gi_by_id = ctx.sym(
        &lib.nvmlDeviceGetGpuInstanceById,
        "nvmlDeviceGetGpuInstanceById",
    )?;
    let gi_info = ctx.sym(&lib.nvmlGpuInstanceGetInfo, "nvmlGpuInstanceGetInfo")?;

    let mut gpu_instance_id: c_uint = 0;
    // SAFETY: `get_gi` is nvmlDeviceGetGpuInstanceId resolved from the loaded
    // library; the handle is a live MIG handle of the initialised NVML, and the
    // out pointer is a valid, writable c_uint.
    let ret = unsafe { get_gi(mig.handle(), &mut gpu_instance_id) };
    nvml_try(ret).map_err(ctx.err("nvmlDeviceGetGpuInstanceId", &at))?;

    let mut compute_instance_id: c_uint = 0;
    // SAFETY: as above, for nvmlDeviceGetComputeInstanceId.
    let ret = unsafe { get_ci(mig.handle(), &mut compute_instance_id) };
    nvml_try(ret).map_err(ctx.err("nvmlDeviceGetComputeInstanceId", &at))?;

    let mut gi: nvmlGpuInstance_t = std::ptr::null_mut();
    // SAFETY: the parent handle is a live full-GPU handle; `gi` is a valid out
    // pointer for the opaque instance handle NVML writes.
    let ret = unsafe { gi_by_id(parent.handle(), gpu_instance_id, &mut gi) };
    nvml_try(ret).map_err(ctx.err(
        "nvmlDeviceGetGpuInstanceById",
        format!("{at} (GPU instance {gpu_instance_id})"),
    ))?;

    // SAFETY: nvmlGpuInstanceInfo_t is a plain C struct (a pointer, integers);
    // all-zero is a valid value.
    let mut info: nvmlGpuInstanceInfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `gi` was just returned by NVML for this parent; `info` is a
    // valid, writable struct of the layout the function expects.
    let ret = unsafe { gi_info(gi, &mut info) };
    nvml_try(ret).map_err(ctx.err(
        "nvmlGpuInstanceGetInfo",
        format!("{at} (GPU instance {gpu_instance_id})"),
    ))?;

    let Some((profile_enum, profile)) = profiles.iter().find(|(_, p)| p.id == info.profileId)
    else {
        return Err(NvmlError::UnknownProfile {
            call: "nvmlGpuInstanceGetInfo".to_string(),
            context: at,
            profile_id: info.profileId,
        });
    };

    // The compute instance's share of the GPU instance (C≠G profiles), and
    // what GFD's per-profile labels say of the device.
    let (ci_slices, attributes) = match mig.attributes() {
        Ok(a) => (
            if a.compute_instance_slice_count > 0 {
                a.compute_instance_slice_count
            } else {
                profile.slice_count
            },
            Some(MigAttributes {
                memory_mib: a.memory_size_mb,
                multiprocessors: a.multiprocessor_count,
                gpu_instance_slices: a.gpu_instance_slice_count,
                compute_instance_slices: a.compute_instance_slice_count,
                engines: Some(MigEngines {
                    copy: a.shared_copy_engine_count,
                    decoder: a.shared_decoder_count,
                    encoder: a.shared_encoder_count,
                    jpeg: a.shared_jpeg_count,
                    ofa: a.shared_ofa_count,
                }),
            }),
        ),
        Err(e) => {
            tracing::warn!(
                mig = %uuid,
                error = %e,
                "nvmlDeviceGetAttributes_v2 failed; assuming the compute instance spans its GPU instance"
            );
            (profile.slice_count, None)
        }
    };

    Ok(MigDevice {
        index: slot,
        profile: profile_name(
            profile.slice_count,
            ci_slices,
            profile.memory_size_mb,
            parent_total_bytes,
            profile_attribute(*profile_enum),
        ),
        uuid,
        gpu_instance_id,
        compute_instance_id,
        memory_mib: memory.total / MIB,
        attributes,
        placement_start: Some(info.placement.start),
    })
}

/// The PCIe path from GPU `me` to every other GPU. A placement hint: when
/// NVML cannot say (old driver, not supported), the pair is left out and
/// the NUMA nodes decide.
fn pcie_peers(
    nvml: &Nvml,
    devices: &[Device<'static>],
    indices: &[u32],
    me: usize,
) -> Vec<PciePeer> {
    use nvml_wrapper::enum_wrappers::device::TopologyLevel;
    let mut peers = Vec::new();
    for (j, other) in devices.iter().enumerate() {
        if j == me {
            continue;
        }
        match nvml.topology_common_ancestor(&devices[me], other) {
            Ok(level) => peers.push(PciePeer {
                peer_index: indices[j],
                level: match level {
                    TopologyLevel::Internal => PcieLevel::Board,
                    TopologyLevel::Single => PcieLevel::SingleSwitch,
                    TopologyLevel::Multiple => PcieLevel::MultipleSwitches,
                    TopologyLevel::HostBridge => PcieLevel::HostBridge,
                    TopologyLevel::Node => PcieLevel::Node,
                    TopologyLevel::System => PcieLevel::System,
                },
            }),
            Err(e) => {
                tracing::debug!(gpu = indices[me], peer = indices[j], error = %e, "PCIe topology unavailable");
                return Vec::new();
            }
        }
    }
    peers
}

/// Active NVLinks by peer GPU; links to non-GPUs (NVSwitches) and errors are
/// ignored (NVLink is a placement hint, not a reason to fail discovery).
fn nvlink_peers(
    device: &Device<'static>,
    own_index: u32,
    by_bus_id: &HashMap<String, u32>,
) -> Vec<NvLinkPeer> {
    let mut counts: std::collections::BTreeMap<u32, u32> = std::collections::BTreeMap::new();
    for link in 0..NVML_NVLINK_MAX_LINKS {
        let nvlink = device.link_wrapper_for(link);
        match nvlink.is_active() {
            Ok(true) => {}
            Ok(false) | Err(RawError::InvalidArg) => continue,
            Err(RawError::NotSupported | RawError::FailedToLoadSymbol(_)) => break,
            Err(e) => {
                tracing::debug!(gpu = own_index, link, error = %e, "NVLink state unavailable");
                continue;
            }
        }
        match nvlink.remote_pci_info() {
            Ok(remote) => {
                if let Some(&peer) = by_bus_id.get(&sysfs_bus_id(&remote.bus_id))
                    && peer != own_index
                {
                    *counts.entry(peer).or_default() += 1;
                }
            }
            Err(e) => {
                tracing::debug!(gpu = own_index, link, error = %e, "NVLink remote unavailable");
            }
        }
    }
    counts
        .into_iter()
        .map(|(peer_index, links)| NvLinkPeer { peer_index, links })
        .collect()
}

/// NVML's bus id (`00000000:0A:00.0`) as sysfs names the device
/// (`0000:0a:00.0`): 4-digit domain, lower case.
pub fn sysfs_bus_id(nvml_bus_id: &str) -> String {
    let id = nvml_bus_id
        .trim()
        .trim_end_matches('\0')
        .to_ascii_lowercase();
    match id.split_once(':') {
        Some((domain, rest)) if domain.len() > 4 => {
            format!("{}:{rest}", &domain[domain.len() - 4..])
        }
        _ => id,
    }
}

/// Where GFD reads the machine type (its `--machine-type-file` default),
/// relative to the sysfs root.
pub const MACHINE_TYPE_FILE: &str = "class/dmi/id/product_name";

/// The machine type as GFD reads it: the DMI product name, trimmed; GFD's
/// `unknown` when the file cannot be read (no DMI: some VMs, Arm boards).
pub fn read_machine_type(sysfs_root: &Path) -> String {
    let path = sysfs_root.join(MACHINE_TYPE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().to_string(),
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "no machine type; labelling it unknown as GFD does");
            "unknown".to_string()
        }
    }
}

/// The PCI class of a GPU from `<sysfs_root>/bus/pci/devices/<bus id>/class`
/// (`0x030200`), as GFD reads it for `gpu.mode`; `None` when unreadable.
pub fn read_pci_class(sysfs_root: &Path, nvml_bus_id: &str) -> Option<u32> {
    let path = sysfs_root
        .join("bus/pci/devices")
        .join(sysfs_bus_id(nvml_bus_id))
        .join("class");
    let text = std::fs::read_to_string(&path).ok()?;
    parse_pci_class(&text)
}

/// The content of a sysfs `class` file: hexadecimal, `0x` optional.
pub fn parse_pci_class(text: &str) -> Option<u32> {
    let text = text.trim();
    let hex = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    u32::from_str_radix(hex, 16).ok()
}

/// The content of a sysfs `numa_node` file: a negative value means none.
pub fn parse_numa_node(text: &str) -> Result<Option<i64>, std::num::ParseIntError> {
    text.trim().parse::<i64>().map(|n| (n >= 0).then_some(n))
}

/// The NUMA node of a GPU from `<sysfs_root>/bus/pci/devices/<bus id>/numa_node`;
/// `None` when the file is missing or the value is negative, an error when it
/// does not parse (as NVIDIA's plugin).
pub fn read_numa_node(sysfs_root: &Path, nvml_bus_id: &str) -> Result<Option<i64>, NvmlError> {
    let path = sysfs_root
        .join("bus/pci/devices")
        .join(sysfs_bus_id(nvml_bus_id))
        .join("numa_node");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(NvmlError::Read {
                path: path.display().to_string(),
                source,
            });
        }
    };
    parse_numa_node(&text).map_err(|_| NvmlError::Numa {
        path: path.display().to_string(),
        value: text.trim().to_string(),
    })
}

/// Control nodes present under the dev root, and the MIG capability minors
/// (an absent `mig-minors` file gives none: the driver has no MIG support).
pub fn device_files(opts: &NvmlOptions) -> Result<NodeDeviceFiles, NvmlError> {
    let control = CONTROL_NODES
        .iter()
        .filter(|name| opts.dev_root.join(name).exists())
        .map(|name| format!("/dev/{name}"))
        .collect();
    let mig_caps = match std::fs::read_to_string(&opts.mig_minors) {
        Ok(text) => NodeDeviceFiles::parse_mig_minors(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
        Err(source) => {
            return Err(NvmlError::Read {
                path: opts.mig_minors.display().to_string(),
                source,
            });
        }
    };
    Ok(NodeDeviceFiles {
        control,
        mig_caps,
        classes: class_nodes(&opts.dev_root),
        // Listed by the caller once the driver version is known.
        driver: Default::default(),
    })
}

/// The present nodes of the optional device classes under the dev root
/// (`gdrdrv`, `nvidia-fs*`, `infiniband/*`), as container paths, sorted.
/// Bounded: a dev directory is small, and at most [`MAX_CLASS_NODES`] are
/// taken per class.
pub fn class_nodes(dev_root: &Path) -> gpu_slicer_core::device_nodes::ClassNodes {
    use gpu_slicer_core::device_nodes::{ClassNodes, DeviceClass};
    let mut out = ClassNodes::default();
    let mut names: Vec<String> = Vec::new();
    let list = |dir: &Path, prefix: &str, names: &mut Vec<String>| {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten().take(4096) {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(format!("{prefix}{name}"));
                }
            }
        }
    };
    list(dev_root, "", &mut names);
    list(&dev_root.join("infiniband"), "infiniband/", &mut names);
    names.sort();
    for class in DeviceClass::ALL {
        let nodes = out.of_mut(class);
        nodes.extend(
            names
                .iter()
                .filter(|n| class.matches(n))
                .take(MAX_CLASS_NODES)
                .map(|n| format!("/dev/{n}")),
        );
    }
    out
}

/// The most device nodes one optional class hands out.
const MAX_CLASS_NODES: usize = 256;

/// Name suffix of an NVML GPU-instance profile enum value (`+me`, `-me`,
/// `+me.all`, `+gfx`, or none).
pub fn profile_attribute(profile_enum: u32) -> &'static str {
    match profile_enum {
        7 | 8 => "+me",
        10..=12 => "+gfx",
        13 | 14 => "-me",
        15 | 16 => "+me.all",
        _ => "",
    }
}

/// NVIDIA's profile name (go-nvlib's rule): `<G>g.<GB>gb<attr>`, prefixed
/// `<C>c.` when the compute instance is smaller than its GPU instance. `GB`
/// is the profile's memory as a fraction of the GPU's, rounded up to eighths,
/// times the GPU's memory in whole GiB (rounded up), rounded half away from zero.
pub fn profile_name(
    gi_slices: u32,
    ci_slices: u32,
    profile_memory_mib: u64,
    parent_total_bytes: u64,
    attribute: &str,
) -> String {
    let gb = if parent_total_bytes == 0 {
        0
    } else {
        let frac = (profile_memory_mib as f64 * MIB as f64) / parent_total_bytes as f64;
        let frac = (frac * 8.0).ceil() / 8.0;
        let total_gb = (parent_total_bytes as f64 / (1u64 << 30) as f64).ceil();
        (frac * total_gb).round() as u64
    };
    let base = format!("{gi_slices}g.{gb}gb{attribute}");
    if ci_slices != 0 && ci_slices < gi_slices {
        format!("{ci_slices}c.{base}")
    } else {
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_library_wins() {
        let opts = NvmlOptions {
            lib_path: Some(PathBuf::from("/opt/x/libnvidia-ml.so.1")),
            ..NvmlOptions::default()
        };
        let choice = find_library_with(&opts, |_| true);
        assert_eq!(choice.path, PathBuf::from("/opt/x/libnvidia-ml.so.1"));
        assert_eq!(choice.source, LibrarySource::Explicit);
        assert!(choice.tried.is_empty());
    }

    #[test]
    fn first_existing_driver_root_directory_wins() {
        let opts = NvmlOptions {
            driver_root: PathBuf::from("/driver-root"),
            ..NvmlOptions::default()
        };
        let choice = find_library_with(&opts, |p| {
            p == Path::new("/driver-root/lib64/libnvidia-ml.so.1")
                || p == Path::new("/driver-root/usr/local/nvidia/lib64/libnvidia-ml.so.1")
        });
        assert_eq!(
            choice.path,
            PathBuf::from("/driver-root/lib64/libnvidia-ml.so.1")
        );
        assert_eq!(choice.source, LibrarySource::DriverRoot);
        assert_eq!(choice.tried.len(), 4);
        assert_eq!(
            choice.tried[0],
            PathBuf::from("/driver-root/usr/lib64/libnvidia-ml.so.1")
        );
    }

    #[test]
    fn cloud_image_location_is_searched() {
        let opts = NvmlOptions {
            driver_root: PathBuf::from("/host"),
            ..NvmlOptions::default()
        };
        let choice = find_library_with(&opts, |p| {
            p == Path::new("/host/usr/local/nvidia/lib64/libnvidia-ml.so.1")
        });
        assert_eq!(choice.source, LibrarySource::DriverRoot);
        assert_eq!(choice.tried.len(), 7);
    }

    #[test]
    fn nothing_found_falls_back_to_the_dynamic_loader() {
        let choice = find_library_with(&NvmlOptions::default(), |_| false);
        assert_eq!(choice.path, PathBuf::from("libnvidia-ml.so.1"));
        assert_eq!(choice.source, LibrarySource::DynamicLoader);
        assert_eq!(choice.tried.len(), LIBRARY_DIRS.len());
    }

    #[test]
    fn bus_ids_become_sysfs_names() {
        assert_eq!(sysfs_bus_id("00000000:0A:1C.0"), "0000:0a:1c.0");
        assert_eq!(sysfs_bus_id("0000:0a:00.0"), "0000:0a:00.0");
        assert_eq!(sysfs_bus_id("00000001:B3:00.0\0"), "0001:b3:00.0");
    }

    #[test]
    fn pci_classes_and_machine_type_from_sysfs() {
        for (text, want) in [
            ("0x030200\n", Some(0x03_0200)),
            ("0x030000", Some(0x03_0000)),
            ("030200", Some(0x03_0200)),
            ("garbage", None),
        ] {
            assert_eq!(parse_pci_class(text), want, "{text:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("bus/pci/devices/0000:10:1c.0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("class"), "0x030200\n").unwrap();
        assert_eq!(
            read_pci_class(dir.path(), "00000000:10:1C.0"),
            Some(0x03_0200)
        );
        assert_eq!(read_pci_class(dir.path(), "00000000:20:00.0"), None);
        assert_eq!(read_machine_type(dir.path()), "unknown");
        let dmi = dir.path().join(MACHINE_TYPE_FILE);
        std::fs::create_dir_all(dmi.parent().unwrap()).unwrap();
        std::fs::write(&dmi, "p5e.48xlarge\n").unwrap();
        assert_eq!(read_machine_type(dir.path()), "p5e.48xlarge");
    }

    #[test]
    fn numa_values() {
        assert_eq!(parse_numa_node("1\n"), Ok(Some(1)));
        assert_eq!(parse_numa_node("0"), Ok(Some(0)));
        assert_eq!(parse_numa_node("-1\n"), Ok(None));
        assert!(parse_numa_node("x").is_err());
    }

    #[test]
    fn numa_from_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("bus/pci/devices/0000:10:1c.0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("numa_node"), "1\n").unwrap();
        assert_eq!(
            read_numa_node(dir.path(), "00000000:10:1C.0").unwrap(),
            Some(1)
        );
        std::fs::write(dev.join("numa_node"), "-1\n").unwrap();
        assert_eq!(
            read_numa_node(dir.path(), "00000000:10:1C.0").unwrap(),
            None
        );
        assert_eq!(
            read_numa_node(dir.path(), "00000000:20:00.0").unwrap(),
            None
        );
        std::fs::write(dev.join("numa_node"), "one\n").unwrap();
        let err = read_numa_node(dir.path(), "00000000:10:1C.0").unwrap_err();
        assert!(
            err.to_string()
                .contains("error parsing value for NUMA node"),
            "{err}"
        );
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn profile_names_follow_nvidias_rule() {
        let h100 = 81559 * MIB;
        let a100_40 = 40 * GIB;
        let h200 = 143771 * MIB; // 140.4 GiB → 141 GB
        let b200 = 183359 * MIB; // 179.06 GiB → 180 GB
        let h100_94 = 95830 * MIB; // 93.6 GiB → 94 GB
        for (slices, ci, mem, total, attr, want) in [
            (1, 1, 9984, h100, "", "1g.10gb"),
            (1, 1, 9984, h100, "+me", "1g.10gb+me"),
            (1, 1, 20096, h100, "", "1g.20gb"),
            (2, 2, 20096, h100, "", "2g.20gb"),
            (3, 3, 40448, h100, "", "3g.40gb"),
            (4, 4, 40448, h100, "", "4g.40gb"),
            (7, 7, 81152, h100, "", "7g.80gb"),
            (1, 1, 4864, a100_40, "", "1g.5gb"),
            (2, 2, 9856, a100_40, "", "2g.10gb"),
            (3, 3, 19968, a100_40, "", "3g.20gb"),
            (3, 1, 19968, a100_40, "", "1c.3g.20gb"),
            (7, 7, 40192, a100_40, "", "7g.40gb"),
            (1, 1, 16 * 1024, h200, "", "1g.18gb"),
            (2, 2, 33 * 1024, h200, "", "2g.35gb"),
            (3, 3, 66 * 1024, h200, "", "3g.71gb"),
            (1, 1, 21 * 1024, b200, "", "1g.23gb"),
            (1, 1, 21 * 1024, b200, "+me.all", "1g.23gb+me.all"),
            (1, 1, 11 * 1024, h100_94, "", "1g.12gb"),
            (2, 2, 22 * 1024, h100_94, "-me", "2g.24gb-me"),
        ] {
            assert_eq!(profile_name(slices, ci, mem, total, attr), want);
        }
    }

    #[test]
    fn attributes_by_profile_enum() {
        assert_eq!(profile_attribute(0), "");
        assert_eq!(profile_attribute(7), "+me");
        assert_eq!(profile_attribute(9), "");
        assert_eq!(profile_attribute(11), "+gfx");
        assert_eq!(profile_attribute(13), "-me");
        assert_eq!(profile_attribute(16), "+me.all");
    }

    #[test]
    fn device_files_from_dev_root_and_mig_minors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nvidiactl"), "").unwrap();
        std::fs::write(dir.path().join("nvidia-uvm"), "").unwrap();
        let minors = dir.path().join("mig-minors");
        std::fs::write(
            &minors,
            "config 1\nmonitor 2\ngpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\n",
        )
        .unwrap();
        let opts = NvmlOptions {
            dev_root: dir.path().to_path_buf(),
            mig_minors: minors,
            ..NvmlOptions::default()
        };
        let files = device_files(&opts).unwrap();
        assert_eq!(files.control, vec!["/dev/nvidiactl", "/dev/nvidia-uvm"]);
        assert_eq!(files.mig_caps.get(&(0, 1, 0)), Some(&(12, 13)));
        let opts = NvmlOptions {
            mig_minors: dir.path().join("absent"),
            ..opts
        };
        assert!(device_files(&opts).unwrap().mig_caps.is_empty());
        assert_eq!(files.classes, Default::default(), "no optional class here");

        std::fs::write(dir.path().join("gdrdrv"), "").unwrap();
        std::fs::write(dir.path().join("nvidia-fs0"), "").unwrap();
        std::fs::write(dir.path().join("nvidia-fs1"), "").unwrap();
        std::fs::create_dir(dir.path().join("infiniband")).unwrap();
        std::fs::write(dir.path().join("infiniband/uverbs0"), "").unwrap();
        std::fs::write(dir.path().join("infiniband/rdma_cm"), "").unwrap();
        let classes = device_files(&opts).unwrap().classes;
        assert_eq!(classes.gdrcopy, vec!["/dev/gdrdrv"]);
        assert_eq!(classes.gds, vec!["/dev/nvidia-fs0", "/dev/nvidia-fs1"]);
        assert_eq!(
            classes.mofed,
            vec!["/dev/infiniband/rdma_cm", "/dev/infiniband/uverbs0"]
        );
    }
}
