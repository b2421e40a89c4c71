//! A fake `libnvidia-ml.so` for CI: exports the NVML functions gpu-slicer's
//! NVML backend calls, answering from a node description instead of a driver.
//!
//! Environment, read by `nvmlInit_v2` / `nvmlInitWithFlags`:
//!
//! | Variable | Effect |
//! |---|---|
//! | `FAKE_NVML_TOPOLOGY` | re-read when rewritten (a repartitioned node, as the driver reflects it at once); YAML (or JSON) file with the node's [`Inventory`] (`gpus: [{index, model, uuid, memory_mib, pci_bus_id, pci_device_id, numa_node, minor, mig_capable, mig_enabled, mig_devices: [{index, profile, uuid, gpu_instance_id, compute_instance_id, memory_mib}], nvlinks}]`); unset: a node without GPUs |
//! | `FAKE_NVML_FAIL` | `nvmlDeviceGetMemoryInfo_v2:NVML_ERROR_UNKNOWN,nvmlDeviceGetUUID:NO_PERMISSION`: those calls return those errors; `<function>@<gpu index>:<error>` fails the call only for that GPU (and its MIG devices); `*@<gpu index>:<error>` fails every call on that GPU (a GPU fallen off the bus: `*@3:GPU_IS_LOST`) |
//! | `FAKE_NVML_FAIL_FILE` | a file with entries in `FAKE_NVML_FAIL`'s syntax (commas or lines), re-read on every call, so a test can make a GPU fail and answer again while the daemon runs; a missing file injects nothing |
//! | `FAKE_NVML_INIT_ERROR` | `DRIVER_NOT_LOADED` (any error name): init fails with it |
//! | `FAKE_NVML_DRIVER_VERSION` | what `nvmlSystemGetDriverVersion` answers (default `580.159.04`) |
//! | `FAKE_NVML_CUDA_DRIVER_VERSION` | what `nvmlSystemGetCudaDriverVersion(_v2)` answers (default: the topology's `node.cuda_driver_version`, else `13000`, CUDA 13.0) |
//! | `FAKE_NVML_EVENTS` | file of XID events, one per line: `<GPU or MIG uuid> <xid> [<gi> <ci>]`; append lines while the test runs |
//! | `FAKE_NVML_GPU_STATE_FILE` | what the driver says a GPU needs, re-read on every call: lines `<gpu index> <state>`, state `pages-pending-retirement` (`nvmlDeviceGetRetiredPagesPendingStatus` answers enabled), `row-remap-pending` or `row-remap-failed` (`nvmlDeviceGetRemappedRows` sets `isPending` / `failureOccurred`): what the driver shows after an ECC fault (XID 48, 63, 64, 94, 95) until the GPU is reset; a missing file: nothing pending |
//!
//! Answers for node labels (GFD's), with values of the modelled hardware:
//!
//! | Function | Answer |
//! |---|---|
//! | `nvmlDeviceGetCudaComputeCapability` | the GPU's `compute_capability` in the topology; else the catalog's for its model (`8.0` for an A100, `9.0` for an H200); else `NOT_SUPPORTED` |
//! | `nvmlDeviceGetAttributes_v2` (MIG handles) | 14 SMs per compute slice (an A100's), copy engines = GI slices, decoders = GI slices / 2, no encoder/JPEG/OFA, memory = the MIG device's |
//!
//! The PCI class (`gpu.mode`) and machine type (`gpu.machine`) are read
//! from sysfs, not NVML: tests give the daemon a sysfs root of their own.
//!
//! Events: `nvmlEventSetWait_v2` returns the next line of `FAKE_NVML_EVENTS`
//! not yet consumed by that event set whose device is registered in the set
//! (lines for other devices are consumed silently), as an
//! `nvmlEventTypeXidCriticalError` on the parent GPU; a MIG uuid sets that MIG
//! device's GI/CI ids, explicit `gi ci` override them, a GPU uuid without
//! them gives `0xFFFFFFFF` for both. With no line it polls the file until the
//! timeout and returns `NVML_ERROR_TIMEOUT`. Regular files only (not FIFOs).
//! While a GPU registered in the set fails every call (`*@<gpu>`), the wait
//! returns that error, as NVML's documentation says of a lost GPU
//! (`NVML_ERROR_GPU_IS_LOST`). Injected failures reach the event calls as
//! the driver's do: `nvmlDeviceRegisterEvents@<gpu>:UNKNOWN`,
//! `nvmlEventSetCreate:UNKNOWN`, `nvmlEventSetWait_v2:UNKNOWN` (every wait
//! fails at once; the set keeps its unread events, as the driver's queue
//! does) and `nvmlEventSetWait_v2:TIMEOUT` (every wait returns `TIMEOUT` at
//! once, as NVML does when the wait is interrupted).
//!
//! `nvmlDeviceGetCount_v2` counts GPUs whose calls fail, as NVML's does (its
//! documentation: the count includes devices that `nvmlDeviceGetHandleByIndex_v2`
//! then refuses); `nvmlDeviceGetHandleByIndex_v2` returns the injected error.
//!
//! Error names are NVML's, with or without the `NVML_ERROR_` prefix.
//! Functions that are not exported make nvml-wrapper report `FailedToLoadSymbol`.
//!
//! MIG layouts can be changed through NVML's calls (MIG mode, GPU and
//! compute instances, running processes): see [`mig_admin`], which writes
//! the driver's state back to `FAKE_NVML_TOPOLOGY`.
//!
//! GPU-instance profiles follow the A100/H100 structure (8 memory slices,
//! profile ids 19/20/15/14/9/5/0) with memory `0.95 × eighths × total`, so
//! that NVIDIA's naming rule gives back the names in the file. A MIG device's
//! profile name selects its profile; `<C>c.` prefixes set the compute
//! instance's slice count (`nvmlDeviceGetAttributes_v2`).
//!
//! Handles are opaque integers: device `0x1000_0000 + gpu·0x1000 + slot`
//! (slot 0: the GPU, `j+1`: its `j`-th listed MIG device), GPU instance
//! `0x2000_0000 + gpu·0x1000 + gi id`.

// Every exported function has NVML's C contract: handles come from this
// library, out pointers are null or valid for writes, strings are
// NUL-terminated. Documenting that on each of them would repeat nvml.h.
#![allow(clippy::missing_safety_doc)]
#![allow(non_snake_case)]

mod mig_admin;

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_int, c_uint, c_ulonglong};
use std::sync::{Mutex, MutexGuard};

use gpu_slicer_core::gpu::{Gpu, Inventory, MigDevice, PcieLevel};
use nvml_wrapper_sys::bindings::{
    nvmlDevice_st, nvmlDevice_t, nvmlDeviceAttributes_t,
    nvmlEnableState_enum_NVML_FEATURE_DISABLED, nvmlEnableState_enum_NVML_FEATURE_ENABLED,
    nvmlEnableState_t, nvmlEventData_t, nvmlEventSet_st, nvmlEventSet_t,
    nvmlEventTypeDoubleBitEccError, nvmlEventTypeSingleBitEccError, nvmlEventTypeXidCriticalError,
    nvmlGpuInstance_st, nvmlGpuInstance_t, nvmlGpuInstanceInfo_t, nvmlGpuInstancePlacement_t,
    nvmlGpuInstanceProfileInfo_t, nvmlGpuLevel_enum_NVML_TOPOLOGY_HOSTBRIDGE,
    nvmlGpuLevel_enum_NVML_TOPOLOGY_INTERNAL, nvmlGpuLevel_enum_NVML_TOPOLOGY_MULTIPLE,
    nvmlGpuLevel_enum_NVML_TOPOLOGY_NODE, nvmlGpuLevel_enum_NVML_TOPOLOGY_SINGLE,
    nvmlGpuLevel_enum_NVML_TOPOLOGY_SYSTEM, nvmlGpuTopologyLevel_t, nvmlMemory_v2_t, nvmlPciInfo_t,
    nvmlReturn_t,
};

const SUCCESS: nvmlReturn_t = 0;
const UNINITIALIZED: nvmlReturn_t = 1;
const INVALID_ARGUMENT: nvmlReturn_t = 2;
const NOT_SUPPORTED: nvmlReturn_t = 3;
const NOT_FOUND: nvmlReturn_t = 6;
const INSUFFICIENT_SIZE: nvmlReturn_t = 7;
const TIMEOUT: nvmlReturn_t = 10;
const RESET_REQUIRED: nvmlReturn_t = 16;
const IN_USE: nvmlReturn_t = 19;
const INSUFFICIENT_RESOURCES: nvmlReturn_t = 23;
const UNKNOWN: nvmlReturn_t = 999;

const ERROR_NAMES: &[(&str, nvmlReturn_t)] = &[
    ("SUCCESS", 0),
    ("UNINITIALIZED", 1),
    ("INVALID_ARGUMENT", 2),
    ("NOT_SUPPORTED", 3),
    ("NO_PERMISSION", 4),
    ("ALREADY_INITIALIZED", 5),
    ("NOT_FOUND", 6),
    ("INSUFFICIENT_SIZE", 7),
    ("INSUFFICIENT_POWER", 8),
    ("DRIVER_NOT_LOADED", 9),
    ("TIMEOUT", 10),
    ("IRQ_ISSUE", 11),
    ("LIBRARY_NOT_FOUND", 12),
    ("FUNCTION_NOT_FOUND", 13),
    ("CORRUPTED_INFOROM", 14),
    ("GPU_IS_LOST", 15),
    ("RESET_REQUIRED", 16),
    ("OPERATING_SYSTEM", 17),
    ("LIB_RM_VERSION_MISMATCH", 18),
    ("IN_USE", 19),
    ("MEMORY", 20),
    ("NO_DATA", 21),
    ("VGPU_ECC_NOT_SUPPORTED", 22),
    ("INSUFFICIENT_RESOURCES", 23),
    ("UNKNOWN", 999),
];

fn error_code(name: &str) -> Option<nvmlReturn_t> {
    let name = name.trim();
    let name = name.strip_prefix("NVML_ERROR_").unwrap_or(name);
    let name = name.strip_prefix("NVML_").unwrap_or(name);
    ERROR_NAMES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|&(_, code)| code)
}

/// A GPU-instance profile: NVML enum value, profile id, compute slices,
/// memory in eighths of the GPU, maximum instances, name attribute.
struct Profile {
    value: u32,
    id: u32,
    slices: u32,
    eighths: u64,
    instances: u32,
    attribute: &'static str,
}

const PROFILES: &[Profile] = &[
    Profile {
        value: 0,
        id: 19,
        slices: 1,
        eighths: 1,
        instances: 7,
        attribute: "",
    },
    Profile {
        value: 1,
        id: 14,
        slices: 2,
        eighths: 2,
        instances: 3,
        attribute: "",
    },
    Profile {
        value: 2,
        id: 9,
        slices: 3,
        eighths: 4,
        instances: 2,
        attribute: "",
    },
    Profile {
        value: 3,
        id: 5,
        slices: 4,
        eighths: 4,
        instances: 1,
        attribute: "",
    },
    Profile {
        value: 4,
        id: 0,
        slices: 7,
        eighths: 8,
        instances: 1,
        attribute: "",
    },
    Profile {
        value: 7,
        id: 20,
        slices: 1,
        eighths: 1,
        instances: 1,
        attribute: "+me",
    },
    Profile {
        value: 9,
        id: 15,
        slices: 1,
        eighths: 2,
        instances: 4,
        attribute: "",
    },
];

fn profile_memory_mb(gpu: &Gpu, profile: &Profile) -> u64 {
    profile.eighths * gpu.memory_mib * 95 / 800
}

/// (GI profile, compute-instance slices) of a MIG device, from its name.
fn profile_of(gpu: &Gpu, dev: &MigDevice) -> Option<(&'static Profile, u32)> {
    let split = dev.profile.find(['+', '-']).unwrap_or(dev.profile.len());
    let (base, attribute) = dev.profile.split_at(split);
    let parts: Vec<&str> = base.split('.').collect();
    let (ci, gi, mem) = match parts.as_slice() {
        [c, g, m] => (Some(*c), *g, *m),
        [g, m] => (None, *g, *m),
        _ => return None,
    };
    let slices: u32 = gi.strip_suffix('g')?.parse().ok()?;
    let gb: u64 = mem.strip_suffix("gb")?.parse().ok()?;
    let total_gb = gpu.memory_mib.div_ceil(1024).max(1);
    let eighths = (gb * 8 + total_gb / 2) / total_gb;
    let profile = PROFILES
        .iter()
        .find(|p| p.slices == slices && p.attribute == attribute && p.eighths == eighths)?;
    let ci = match ci {
        Some(c) => c.strip_suffix('c')?.parse().ok()?,
        None => slices,
    };
    Some((profile, ci))
}

struct State {
    inventory: Inventory,
    /// What the driver holds beyond the inventory, per GPU (list position):
    /// pending MIG mode, GPU instances without a compute instance, running
    /// processes ([`mig_admin`]).
    extra: Vec<mig_admin::GpuExtra>,
    /// The topology file's text, to notice a rewrite (a MIG repartition,
    /// which the driver reflects at once).
    topology_text: String,
    /// `FAKE_NVML_FAIL`, read at init.
    fail: Failures,
    driver_version: String,
    cuda_driver_version: c_int,
}

/// Injected failures: whole calls, and calls on one GPU (`*`: every call).
#[derive(Default)]
struct Failures {
    calls: HashMap<String, nvmlReturn_t>,
    per_gpu: Vec<(String, usize, nvmlReturn_t)>,
}

impl Failures {
    fn parse(source: &str, spec: &str) -> Result<Failures, String> {
        let mut failures = Failures::default();
        for item in spec
            .split([',', '\n'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let (name, error) = item
                .rsplit_once(':')
                .ok_or_else(|| format!("{source}: '{item}' is not <function>[@<gpu>]:<error>"))?;
            let code = error_code(error)
                .ok_or_else(|| format!("{source}: unknown error name '{error}'"))?;
            match name.split_once('@') {
                Some((function, gpu)) => {
                    let gpu = gpu
                        .trim()
                        .parse()
                        .map_err(|_| format!("{source}: '{gpu}' in '{item}' is not a GPU index"))?;
                    failures
                        .per_gpu
                        .push((function.trim().to_string(), gpu, code));
                }
                None if name.trim() == "*" => {
                    return Err(format!("{source}: '*' needs a GPU ('*@<gpu>:<error>')"));
                }
                None => {
                    failures.calls.insert(name.trim().to_string(), code);
                }
            }
        }
        Ok(failures)
    }

    /// The file's entries, read now; a missing or unreadable file injects nothing.
    fn from_file() -> Failures {
        let Ok(path) = std::env::var("FAKE_NVML_FAIL_FILE") else {
            return Failures::default();
        };
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        Failures::parse("FAKE_NVML_FAIL_FILE", &text).unwrap_or_else(|message| {
            eprintln!("fake-nvml: {message}");
            Failures::default()
        })
    }

    fn call(&self, name: &str) -> Option<nvmlReturn_t> {
        self.calls.get(name).copied()
    }

    /// Per-GPU failures that apply to the call `name`.
    fn for_call<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (usize, nvmlReturn_t)> + 'a {
        self.per_gpu
            .iter()
            .filter(move |(function, _, _)| function == name || function == "*")
            .map(|&(_, gpu, code)| (gpu, code))
    }
}

thread_local! {
    /// The per-GPU failures that apply to the call in progress on this
    /// thread (set by `call`), checked wherever a call resolves a GPU.
    static ACTIVE: std::cell::RefCell<Vec<(usize, nvmlReturn_t)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The injected error of the call in progress for `gpu`, if any.
fn gpu_failure(gpu: usize) -> Result<(), nvmlReturn_t> {
    ACTIVE.with(|active| {
        active
            .borrow()
            .iter()
            .find(|(g, _)| *g == gpu)
            .map_or(Ok(()), |&(_, code)| Err(code))
    })
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn state() -> MutexGuard<'static, Option<State>> {
    STATE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn load() -> Result<State, String> {
    let fail = match std::env::var("FAKE_NVML_FAIL") {
        Ok(spec) => Failures::parse("FAKE_NVML_FAIL", &spec)?,
        Err(_) => Failures::default(),
    };
    let (inventory, extra, topology_text) = read_topology()?;
    let cuda_driver_version = std::env::var("FAKE_NVML_CUDA_DRIVER_VERSION")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .or(inventory
            .node
            .cuda_driver_version
            .and_then(|v| c_int::try_from(v).ok()))
        .unwrap_or(13000);
    Ok(State {
        inventory,
        extra,
        topology_text,
        fail,
        driver_version: std::env::var("FAKE_NVML_DRIVER_VERSION")
            .unwrap_or_else(|_| "580.159.04".to_string()),
        cuda_driver_version,
    })
}

/// The node as `FAKE_NVML_TOPOLOGY` describes it now, what the driver
/// holds beyond it, and the file's text.
fn read_topology() -> Result<(Inventory, Vec<mig_admin::GpuExtra>, String), String> {
    let (inventory, extra, text) = match std::env::var("FAKE_NVML_TOPOLOGY") {
        Ok(path) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("FAKE_NVML_TOPOLOGY: cannot read {path}: {e}"))?;
            let node = serde_saphyr::from_str::<mig_admin::FakeNode>(&text)
                .map_err(|e| format!("FAKE_NVML_TOPOLOGY: {path}: {e}"))?;
            let (inventory, extra) = node.split();
            (inventory, extra, text)
        }
        Err(_) => (Inventory::default(), Vec::new(), String::new()),
    };
    for gpu in &inventory.gpus {
        for dev in &gpu.mig_devices {
            if profile_of(gpu, dev).is_none() {
                return Err(format!(
                    "FAKE_NVML_TOPOLOGY: GPU {}: MIG profile '{}' is not one the fake models",
                    gpu.index, dev.profile
                ));
            }
        }
    }
    Ok((inventory, extra, text))
}

fn init(name: &str) -> nvmlReturn_t {
    if let Ok(error) = std::env::var("FAKE_NVML_INIT_ERROR") {
        return error_code(&error).unwrap_or(UNKNOWN);
    }
    match load() {
        Ok(s) => {
            if let Some(code) = s.fail.call(name).or(Failures::from_file().call(name)) {
                return code;
            }
            *state() = Some(s);
            SUCCESS
        }
        Err(message) => {
            eprintln!("fake-nvml: {message}");
            UNKNOWN
        }
    }
}

/// Runs one call: injected failure, then `f` on the state.
fn call(name: &str, f: impl FnOnce(&State) -> Result<(), nvmlReturn_t>) -> nvmlReturn_t {
    call_mut(name, |s| f(s))
}

/// [`call`] for the calls that change the driver's state ([`mig_admin`]).
fn call_mut(name: &str, f: impl FnOnce(&mut State) -> Result<(), nvmlReturn_t>) -> nvmlReturn_t {
    let mut guard = state();
    // A rewritten topology file is a repartitioned node: NVML answers from
    // the driver's current state, not from what it saw at init.
    if let Some(s) = guard.as_mut()
        && let Ok(path) = std::env::var("FAKE_NVML_TOPOLOGY")
        && std::fs::read_to_string(path).is_ok_and(|text| text != s.topology_text)
        && let Ok((inventory, extra, text)) = read_topology()
    {
        s.inventory = inventory;
        s.extra = extra;
        s.topology_text = text;
    }
    let Some(s) = guard.as_mut() else {
        return UNINITIALIZED;
    };
    let file = Failures::from_file();
    if let Some(code) = s.fail.call(name).or(file.call(name)) {
        return code;
    }
    let per_gpu: Vec<_> = s.fail.for_call(name).chain(file.for_call(name)).collect();
    ACTIVE.with(|active| *active.borrow_mut() = per_gpu);
    let result = f(s);
    ACTIVE.with(|active| active.borrow_mut().clear());
    match result {
        Ok(()) => SUCCESS,
        Err(code) => code,
    }
}

const DEVICE_BASE: usize = 0x1000_0000;
const GI_BASE: usize = 0x2000_0000;
const STRIDE: usize = 0x1000;

fn device_handle(gpu: usize, slot: usize) -> nvmlDevice_t {
    std::ptr::without_provenance_mut::<nvmlDevice_st>(DEVICE_BASE + gpu * STRIDE + slot)
}

fn gi_handle(gpu: usize, gi: u32) -> nvmlGpuInstance_t {
    std::ptr::without_provenance_mut::<nvmlGpuInstance_st>(GI_BASE + gpu * STRIDE + gi as usize)
}

fn decode(addr: usize, base: usize) -> Option<(usize, usize)> {
    let offset = addr.checked_sub(base)?;
    (offset < 0x1000_0000).then_some((offset / STRIDE, offset % STRIDE))
}

enum Target<'a> {
    Gpu(usize, &'a Gpu),
    Mig(&'a Gpu, &'a MigDevice),
}

fn target(s: &State, device: nvmlDevice_t) -> Result<Target<'_>, nvmlReturn_t> {
    let (gpu, slot) = decode(device.addr(), DEVICE_BASE).ok_or(INVALID_ARGUMENT)?;
    let g = s.inventory.gpus.get(gpu).ok_or(INVALID_ARGUMENT)?;
    gpu_failure(gpu)?;
    match slot {
        0 => Ok(Target::Gpu(gpu, g)),
        j => Ok(Target::Mig(
            g,
            g.mig_devices.get(j - 1).ok_or(INVALID_ARGUMENT)?,
        )),
    }
}

fn gpu_of(s: &State, device: nvmlDevice_t) -> Result<(usize, &Gpu), nvmlReturn_t> {
    match target(s, device)? {
        Target::Gpu(i, g) => Ok((i, g)),
        Target::Mig(..) => Err(INVALID_ARGUMENT),
    }
}

fn mig_of(s: &State, device: nvmlDevice_t) -> Result<(&Gpu, &MigDevice), nvmlReturn_t> {
    match target(s, device)? {
        Target::Mig(g, d) => Ok((g, d)),
        Target::Gpu(..) => Err(INVALID_ARGUMENT),
    }
}

fn mig_capable(gpu: &Gpu) -> Result<(), nvmlReturn_t> {
    if gpu.mig_capable {
        Ok(())
    } else {
        Err(NOT_SUPPORTED)
    }
}

/// Writes `value` through an out pointer.
///
/// # Safety
/// `ptr` is null or valid for writes of `T`.
unsafe fn put<T>(ptr: *mut T, value: T) -> Result<(), nvmlReturn_t> {
    if ptr.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    // SAFETY: non-null, and valid for writes by the caller's contract.
    unsafe { ptr.write(value) };
    Ok(())
}

/// Copies `text` and a NUL into a caller buffer of `length` bytes.
///
/// # Safety
/// `buf` is null or valid for writes of `length` bytes.
unsafe fn put_str(buf: *mut c_char, length: c_uint, text: &str) -> Result<(), nvmlReturn_t> {
    if buf.is_null() {
        return Err(INVALID_ARGUMENT);
    }
    if text.len() + 1 > length as usize {
        return Err(INSUFFICIENT_SIZE);
    }
    // SAFETY: `buf` holds at least `text.len() + 1` bytes (checked above), and
    // cannot overlap `text`, which this library owns.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr().cast::<c_char>(), buf, text.len());
        buf.add(text.len()).write(0);
    }
    Ok(())
}

fn c_array<const N: usize>(text: &str) -> [c_char; N] {
    let mut out = [0 as c_char; N];
    for (slot, byte) in out.iter_mut().zip(text.bytes().take(N - 1)) {
        *slot = byte as c_char;
    }
    out
}

fn pci_info(gpu: &Gpu) -> nvmlPciInfo_t {
    let id = gpu.pci_bus_id.as_str();
    let mut fields = id.split([':', '.']);
    let mut hex = || {
        fields
            .next()
            .and_then(|f| u32::from_str_radix(f, 16).ok())
            .unwrap_or(0)
    };
    let (domain, bus, device) = (hex(), hex(), hex());
    let legacy = id
        .split_once(':')
        .map(|(d, rest)| format!("{}:{rest}", &d[d.len().saturating_sub(4)..]))
        .unwrap_or_else(|| id.to_string());
    nvmlPciInfo_t {
        busIdLegacy: c_array(&legacy),
        domain,
        bus,
        device,
        pciDeviceId: gpu.pci_device_id,
        pciSubSystemId: 0,
        busId: c_array(id),
    }
}

/// The peer GPU (list position) behind link `link`, links numbered in
/// `nvlinks` order.
fn nvlink_peer(s: &State, gpu: &Gpu, link: c_uint) -> Result<Option<usize>, nvmlReturn_t> {
    if gpu.nvlinks.is_empty() {
        return Err(NOT_SUPPORTED);
    }
    if link >= nvml_wrapper_sys::bindings::NVML_NVLINK_MAX_LINKS {
        return Err(INVALID_ARGUMENT);
    }
    let mut next = 0;
    for peer in &gpu.nvlinks {
        if link < next + peer.links {
            return Ok(s
                .inventory
                .gpus
                .iter()
                .position(|g| g.index == peer.peer_index));
        }
        next += peer.links;
    }
    Ok(None)
}

// ---- Exported NVML functions ----

#[unsafe(no_mangle)]
pub extern "C" fn nvmlInit_v2() -> nvmlReturn_t {
    init("nvmlInit_v2")
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> nvmlReturn_t {
    init("nvmlInitWithFlags")
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlShutdown() -> nvmlReturn_t {
    call("nvmlShutdown", |_| Ok(()))
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlErrorString(result: nvmlReturn_t) -> *const c_char {
    let text: &'static CStr = match result {
        0 => c"Success",
        1 => c"Uninitialized",
        2 => c"Invalid Argument",
        3 => c"Not Supported",
        4 => c"Insufficient Permissions",
        6 => c"Not Found",
        9 => c"Driver Not Loaded",
        _ => c"Unknown Error",
    };
    text.as_ptr()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(
    version: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    call("nvmlSystemGetDriverVersion", |s| {
        // SAFETY: NVML contract: `version` holds `length` bytes.
        unsafe { put_str(version, length, &s.driver_version) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion(version: *mut c_int) -> nvmlReturn_t {
    call("nvmlSystemGetCudaDriverVersion", |s| {
        // SAFETY: NVML contract: `version` is null or writable.
        unsafe { put(version, s.cuda_driver_version) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(version: *mut c_int) -> nvmlReturn_t {
    call("nvmlSystemGetCudaDriverVersion_v2", |s| {
        // SAFETY: NVML contract: `version` is null or writable.
        unsafe { put(version, s.cuda_driver_version) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCudaComputeCapability(
    device: nvmlDevice_t,
    major: *mut c_int,
    minor: *mut c_int,
) -> nvmlReturn_t {
    call("nvmlDeviceGetCudaComputeCapability", |s| {
        let (_, gpu) = gpu_of(s, device)?;
        let (ma, mi) = match gpu.compute_capability {
            Some(cc) => (cc.major, cc.minor),
            None => gpu_slicer_core::gpu::catalog::model(&gpu.model)
                .and_then(|m| gpu_slicer_core::gpu::catalog::compute_capability(m.key))
                .ok_or(NOT_SUPPORTED)?,
        };
        let to_c = |v: u32| c_int::try_from(v).map_err(|_| UNKNOWN);
        // SAFETY: NVML contract: `major` and `minor` are null or writable.
        unsafe {
            put(major, to_c(ma)?)?;
            put(minor, to_c(mi)?)
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(
    version: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    call("nvmlSystemGetNVMLVersion", |_| {
        // SAFETY: NVML contract: `version` holds `length` bytes.
        unsafe { put_str(version, length, "13.580.159.04") }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> nvmlReturn_t {
    call("nvmlDeviceGetCount_v2", |s| {
        // SAFETY: NVML contract: `count` is null or writable.
        unsafe { put(count, s.inventory.gpus.len() as c_uint) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    call("nvmlDeviceGetHandleByIndex_v2", |s| {
        if index as usize >= s.inventory.gpus.len() {
            return Err(INVALID_ARGUMENT);
        }
        gpu_failure(index as usize)?;
        // SAFETY: NVML contract: `device` is null or writable.
        unsafe { put(device, device_handle(index as usize, 0)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(
    uuid: *const c_char,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    call("nvmlDeviceGetHandleByUUID", |s| {
        if uuid.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        // SAFETY: NVML contract: a non-null `uuid` is a NUL-terminated string.
        let wanted = unsafe { CStr::from_ptr(uuid) }
            .to_str()
            .map_err(|_| INVALID_ARGUMENT)?;
        for (i, gpu) in s.inventory.gpus.iter().enumerate() {
            if gpu.uuid == wanted || gpu.mig_devices.iter().any(|d| d.uuid == wanted) {
                gpu_failure(i)?;
            }
            if gpu.uuid == wanted {
                // SAFETY: NVML contract: `device` is null or writable.
                return unsafe { put(device, device_handle(i, 0)) };
            }
            if let Some(j) = gpu.mig_devices.iter().position(|d| d.uuid == wanted) {
                // SAFETY: as above.
                return unsafe { put(device, device_handle(i, j + 1)) };
            }
        }
        Err(NOT_FOUND)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetIndex(
    device: nvmlDevice_t,
    index: *mut c_uint,
) -> nvmlReturn_t {
    call("nvmlDeviceGetIndex", |s| {
        let (_, gpu) = gpu_of(s, device)?;
        // SAFETY: NVML contract: `index` is null or writable.
        unsafe { put(index, gpu.index) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: nvmlDevice_t,
    name: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    call("nvmlDeviceGetName", |s| {
        let model = match target(s, device)? {
            Target::Gpu(_, g) => g.model.clone(),
            Target::Mig(g, d) => format!("{} MIG {}", g.model, d.profile),
        };
        // SAFETY: NVML contract: `name` holds `length` bytes.
        unsafe { put_str(name, length, &model) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: nvmlDevice_t,
    uuid: *mut c_char,
    length: c_uint,
) -> nvmlReturn_t {
    call("nvmlDeviceGetUUID", |s| {
        let id = match target(s, device)? {
            Target::Gpu(_, g) => &g.uuid,
            Target::Mig(_, d) => &d.uuid,
        };
        // SAFETY: NVML contract: `uuid` holds `length` bytes.
        unsafe { put_str(uuid, length, id) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: nvmlDevice_t,
    memory: *mut nvmlMemory_v2_t,
) -> nvmlReturn_t {
    call("nvmlDeviceGetMemoryInfo_v2", |s| {
        let mib = match target(s, device)? {
            Target::Gpu(_, g) => g.memory_mib,
            Target::Mig(_, d) => d.memory_mib,
        };
        let total = mib << 20;
        let version = if memory.is_null() {
            0
        } else {
            // SAFETY: NVML contract: a non-null `memory` points to a struct
            // whose `version` the caller set.
            unsafe { (*memory).version }
        };
        let info = nvmlMemory_v2_t {
            version,
            total,
            reserved: 0,
            free: total,
            used: 0,
        };
        // SAFETY: NVML contract: `memory` is null or writable.
        unsafe { put(memory, info) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMinorNumber(
    device: nvmlDevice_t,
    minor: *mut c_uint,
) -> nvmlReturn_t {
    call("nvmlDeviceGetMinorNumber", |s| {
        let (_, gpu) = gpu_of(s, device)?;
        // SAFETY: NVML contract: `minor` is null or writable.
        unsafe { put(minor, gpu.minor) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(
    device: nvmlDevice_t,
    pci: *mut nvmlPciInfo_t,
) -> nvmlReturn_t {
    call("nvmlDeviceGetPciInfo_v3", |s| {
        let gpu = match target(s, device)? {
            Target::Gpu(_, g) | Target::Mig(g, _) => g,
        };
        // SAFETY: NVML contract: `pci` is null or writable.
        unsafe { put(pci, pci_info(gpu)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetNvLinkState(
    device: nvmlDevice_t,
    link: c_uint,
    is_active: *mut nvmlEnableState_t,
) -> nvmlReturn_t {
    call("nvmlDeviceGetNvLinkState", |s| {
        let (_, gpu) = gpu_of(s, device)?;
        let state = match nvlink_peer(s, gpu, link)? {
            Some(_) => nvmlEnableState_enum_NVML_FEATURE_ENABLED,
            None => nvmlEnableState_enum_NVML_FEATURE_DISABLED,
        };
        // SAFETY: NVML contract: `is_active` is null or writable.
        unsafe { put(is_active, state) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetNvLinkRemotePciInfo_v2(
    device: nvmlDevice_t,
    link: c_uint,
    pci: *mut nvmlPciInfo_t,
) -> nvmlReturn_t {
    call("nvmlDeviceGetNvLinkRemotePciInfo_v2", |s| {
        let (_, gpu) = gpu_of(s, device)?;
        let peer = nvlink_peer(s, gpu, link)?.ok_or(NOT_SUPPORTED)?;
        let remote = s.inventory.gpus.get(peer).ok_or(NOT_SUPPORTED)?;
        // SAFETY: NVML contract: `pci` is null or writable.
        unsafe { put(pci, pci_info(remote)) }
    })
}

/// From the inventory's `pcie` peers; a pair it does not list is "not supported".
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetTopologyCommonAncestor(
    device1: nvmlDevice_t,
    device2: nvmlDevice_t,
    path: *mut nvmlGpuTopologyLevel_t,
) -> nvmlReturn_t {
    call("nvmlDeviceGetTopologyCommonAncestor", |s| {
        let (_, a) = gpu_of(s, device1)?;
        let (_, b) = gpu_of(s, device2)?;
        let peer = a
            .pcie
            .iter()
            .find(|p| p.peer_index == b.index)
            .ok_or(NOT_SUPPORTED)?;
        let level = match peer.level {
            PcieLevel::Board => nvmlGpuLevel_enum_NVML_TOPOLOGY_INTERNAL,
            PcieLevel::SingleSwitch => nvmlGpuLevel_enum_NVML_TOPOLOGY_SINGLE,
            PcieLevel::MultipleSwitches => nvmlGpuLevel_enum_NVML_TOPOLOGY_MULTIPLE,
            PcieLevel::HostBridge => nvmlGpuLevel_enum_NVML_TOPOLOGY_HOSTBRIDGE,
            PcieLevel::Node => nvmlGpuLevel_enum_NVML_TOPOLOGY_NODE,
            PcieLevel::System => nvmlGpuLevel_enum_NVML_TOPOLOGY_SYSTEM,
        };
        // SAFETY: NVML contract: `path` is null or writable.
        unsafe { put(path, level) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    device: nvmlDevice_t,
    current: *mut c_uint,
    pending: *mut c_uint,
) -> nvmlReturn_t {
    call("nvmlDeviceGetMigMode", |s| {
        let (i, gpu) = gpu_of(s, device)?;
        mig_capable(gpu)?;
        let mode = c_uint::from(gpu.mig_enabled);
        let next = c_uint::from(s.extra[i].pending(gpu));
        // SAFETY: NVML contract: both out pointers are null or writable.
        unsafe {
            put(current, mode)?;
            put(pending, next)
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMaxMigDeviceCount(
    device: nvmlDevice_t,
    count: *mut c_uint,
) -> nvmlReturn_t {
    call("nvmlDeviceGetMaxMigDeviceCount", |s| {
        let (_, gpu) = gpu_of(s, device)?;
        mig_capable(gpu)?;
        let max = if gpu.mig_enabled {
            gpu.mig_devices
                .iter()
                .map(|d| d.index + 1)
                .max()
                .unwrap_or(0)
                .max(7)
        } else {
            0
        };
        // SAFETY: NVML contract: `count` is null or writable.
        unsafe { put(count, max) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(
    device: nvmlDevice_t,
    index: c_uint,
    mig_device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    call("nvmlDeviceGetMigDeviceHandleByIndex", |s| {
        let (i, gpu) = gpu_of(s, device)?;
        mig_capable(gpu)?;
        if !gpu.mig_enabled {
            return Err(INVALID_ARGUMENT);
        }
        let j = gpu
            .mig_devices
            .iter()
            .position(|d| d.index == index)
            .ok_or(NOT_FOUND)?;
        // SAFETY: NVML contract: `mig_device` is null or writable.
        unsafe { put(mig_device, device_handle(i, j + 1)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceIsMigDeviceHandle(
    device: nvmlDevice_t,
    is_mig: *mut c_uint,
) -> nvmlReturn_t {
    call("nvmlDeviceIsMigDeviceHandle", |s| {
        let mig = matches!(target(s, device)?, Target::Mig(..));
        // SAFETY: NVML contract: `is_mig` is null or writable.
        unsafe { put(is_mig, c_uint::from(mig)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetDeviceHandleFromMigDeviceHandle(
    mig_device: nvmlDevice_t,
    device: *mut nvmlDevice_t,
) -> nvmlReturn_t {
    call("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", |s| {
        mig_of(s, mig_device)?;
        let (gpu, _) = decode(mig_device.addr(), DEVICE_BASE).ok_or(INVALID_ARGUMENT)?;
        // SAFETY: NVML contract: `device` is null or writable.
        unsafe { put(device, device_handle(gpu, 0)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceId(
    device: nvmlDevice_t,
    id: *mut c_uint,
) -> nvmlReturn_t {
    call("nvmlDeviceGetGpuInstanceId", |s| {
        let (_, dev) = mig_of(s, device).map_err(|_| NOT_SUPPORTED)?;
        // SAFETY: NVML contract: `id` is null or writable.
        unsafe { put(id, dev.gpu_instance_id) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeInstanceId(
    device: nvmlDevice_t,
    id: *mut c_uint,
) -> nvmlReturn_t {
    call("nvmlDeviceGetComputeInstanceId", |s| {
        let (_, dev) = mig_of(s, device).map_err(|_| NOT_SUPPORTED)?;
        // SAFETY: NVML contract: `id` is null or writable.
        unsafe { put(id, dev.compute_instance_id) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceById(
    device: nvmlDevice_t,
    id: c_uint,
    gpu_instance: *mut nvmlGpuInstance_t,
) -> nvmlReturn_t {
    call("nvmlDeviceGetGpuInstanceById", |s| {
        let (i, gpu) = gpu_of(s, device)?;
        mig_capable(gpu)?;
        if mig_admin::gpu_instance(s, i, id).is_none() {
            return Err(NOT_FOUND);
        }
        // SAFETY: NVML contract: `gpu_instance` is null or writable.
        unsafe { put(gpu_instance, gi_handle(i, id)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlGpuInstanceGetInfo(
    gpu_instance: nvmlGpuInstance_t,
    info: *mut nvmlGpuInstanceInfo_t,
) -> nvmlReturn_t {
    call("nvmlGpuInstanceGetInfo", |s| {
        let (i, gi) = decode(gpu_instance.addr(), GI_BASE).ok_or(INVALID_ARGUMENT)?;
        let gi = mig_admin::gpu_instance(s, i, gi as c_uint).ok_or(INVALID_ARGUMENT)?;
        let value = nvmlGpuInstanceInfo_t {
            device: device_handle(i, 0),
            id: gi.id,
            profileId: gi.profile_id,
            placement: nvmlGpuInstancePlacement_t {
                start: gi.start,
                size: gi.size,
            },
        };
        // SAFETY: NVML contract: `info` is null or writable.
        unsafe { put(info, value) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceProfileInfo(
    device: nvmlDevice_t,
    profile: c_uint,
    info: *mut nvmlGpuInstanceProfileInfo_t,
) -> nvmlReturn_t {
    call("nvmlDeviceGetGpuInstanceProfileInfo", |s| {
        let (_, gpu) = gpu_of(s, device)?;
        mig_capable(gpu)?;
        let p = PROFILES
            .iter()
            .find(|p| p.value == profile)
            .ok_or(NOT_SUPPORTED)?;
        let value = nvmlGpuInstanceProfileInfo_t {
            id: p.id,
            isP2pSupported: 0,
            sliceCount: p.slices,
            instanceCount: p.instances,
            multiprocessorCount: 14 * p.slices,
            copyEngineCount: p.slices,
            decoderCount: p.slices / 2,
            encoderCount: 0,
            jpegCount: 0,
            ofaCount: 0,
            memorySizeMB: profile_memory_mb(gpu, p) as c_ulonglong,
        };
        // SAFETY: NVML contract: `info` is null or writable.
        unsafe { put(info, value) }
    })
}

/// Where a GPU instance of `profile` can start, in memory slices (eighths):
/// at multiples of its size, within the 8 memory slices and the 7 compute
/// slices (the A100/H100 rule: 1g at 0–6, 2g at 0/2/4, 1g.10gb at 0/2/4/6,
/// 3g at 0/4, 4g and 7g at 0).
fn placements_of(profile: &Profile) -> Vec<(u32, u32)> {
    let size = profile.eighths as u32;
    (0..8)
        .step_by(size as usize)
        .filter(|start| start + size <= 8 && start + profile.slices <= 7)
        .map(|start| (start, size))
        .collect()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstancePossiblePlacements_v2(
    device: nvmlDevice_t,
    profile_id: c_uint,
    placements: *mut nvmlGpuInstancePlacement_t,
    count: *mut c_uint,
) -> nvmlReturn_t {
    call("nvmlDeviceGetGpuInstancePossiblePlacements_v2", |s| {
        let (_, gpu) = gpu_of(s, device)?;
        mig_capable(gpu)?;
        let all = match mig_admin::catalog_profile(gpu, profile_id) {
            Some((_, p)) => p
                .placement_starts
                .iter()
                .map(|&start| (start, p.placement_size))
                .collect(),
            None => placements_of(
                PROFILES
                    .iter()
                    .find(|p| p.id == profile_id)
                    .ok_or(NOT_SUPPORTED)?,
            ),
        };
        if count.is_null() {
            return Err(INVALID_ARGUMENT);
        }
        // SAFETY: NVML contract: `count` is valid (checked non-null above).
        let room = unsafe { *count } as usize;
        // SAFETY: as above.
        unsafe { put(count, all.len() as c_uint) }?;
        if placements.is_null() {
            return Ok(());
        }
        if room < all.len() {
            return Err(INSUFFICIENT_SIZE);
        }
        for (i, &(start, size)) in all.iter().enumerate() {
            // SAFETY: NVML contract: `placements` holds `room` >= len entries.
            unsafe {
                placements
                    .add(i)
                    .write(nvmlGpuInstancePlacement_t { start, size })
            };
        }
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetAttributes_v2(
    device: nvmlDevice_t,
    attributes: *mut nvmlDeviceAttributes_t,
) -> nvmlReturn_t {
    call("nvmlDeviceGetAttributes_v2", |s| {
        let (gpu, dev) = mig_of(s, device).map_err(|_| NOT_SUPPORTED)?;
        let (profile, ci) = profile_of(gpu, dev).ok_or(UNKNOWN)?;
        let value = nvmlDeviceAttributes_t {
            multiprocessorCount: 14 * ci,
            sharedCopyEngineCount: profile.slices,
            sharedDecoderCount: profile.slices / 2,
            sharedEncoderCount: 0,
            sharedJpegCount: 0,
            sharedOfaCount: 0,
            gpuInstanceSliceCount: profile.slices,
            computeInstanceSliceCount: ci,
            memorySizeMB: dev.memory_mib as c_ulonglong,
        };
        // SAFETY: NVML contract: `attributes` is null or writable.
        unsafe { put(attributes, value) }
    })
}

// ---- Events ----

/// One event set: registered GPUs (list positions) and event lines consumed.
#[derive(Default)]
struct EventSet {
    gpus: Vec<usize>,
    consumed: usize,
}

static EVENT_SETS: Mutex<Vec<Option<EventSet>>> = Mutex::new(Vec::new());
const EVENT_SET_BASE: usize = 0x3000_0000;

fn event_sets() -> MutexGuard<'static, Vec<Option<EventSet>>> {
    EVENT_SETS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn event_set_index(set: nvmlEventSet_t) -> Result<usize, nvmlReturn_t> {
    set.addr()
        .checked_sub(EVENT_SET_BASE)
        .ok_or(INVALID_ARGUMENT)
}

/// An event line resolved against the inventory: (GPU position, xid, gi, ci).
fn parse_event(s: &State, line: &str) -> Option<(usize, u64, u32, u32)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (uuid, xid) = (fields.first()?, fields.get(1)?.parse().ok()?);
    let explicit = match (fields.get(2), fields.get(3)) {
        (Some(gi), Some(ci)) => Some((gi.parse().ok()?, ci.parse().ok()?)),
        _ => None,
    };
    for (i, gpu) in s.inventory.gpus.iter().enumerate() {
        if gpu.uuid == *uuid {
            let (gi, ci) = explicit.unwrap_or((u32::MAX, u32::MAX));
            return Some((i, xid, gi, ci));
        }
        if let Some(dev) = gpu.mig_devices.iter().find(|d| d.uuid == *uuid) {
            let (gi, ci) = explicit.unwrap_or((dev.gpu_instance_id, dev.compute_instance_id));
            return Some((i, xid, gi, ci));
        }
    }
    None
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetCreate(set: *mut nvmlEventSet_t) -> nvmlReturn_t {
    call("nvmlEventSetCreate", |_| {
        // A new set sees only events that happen after it is created.
        let consumed = std::env::var("FAKE_NVML_EVENTS")
            .ok()
            .and_then(|path| std::fs::read_to_string(path).ok())
            .map_or(0, |text| text.matches('\n').count());
        let mut sets = event_sets();
        sets.push(Some(EventSet {
            gpus: Vec::new(),
            consumed,
        }));
        let handle =
            std::ptr::without_provenance_mut::<nvmlEventSet_st>(EVENT_SET_BASE + sets.len() - 1);
        // SAFETY: NVML contract: `set` is null or writable.
        unsafe { put(set, handle) }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlEventSetFree(set: nvmlEventSet_t) -> nvmlReturn_t {
    call("nvmlEventSetFree", |_| {
        let index = event_set_index(set)?;
        let mut sets = event_sets();
        let slot = sets.get_mut(index).ok_or(INVALID_ARGUMENT)?;
        slot.take().ok_or(INVALID_ARGUMENT)?;
        Ok(())
    })
}

const SUPPORTED_EVENTS: c_ulonglong = (nvmlEventTypeXidCriticalError
    | nvmlEventTypeSingleBitEccError
    | nvmlEventTypeDoubleBitEccError) as c_ulonglong;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetSupportedEventTypes(
    device: nvmlDevice_t,
    event_types: *mut c_ulonglong,
) -> nvmlReturn_t {
    call("nvmlDeviceGetSupportedEventTypes", |s| {
        gpu_of(s, device)?;
        // SAFETY: NVML contract: `event_types` is null or writable.
        unsafe { put(event_types, SUPPORTED_EVENTS) }
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn nvmlDeviceRegisterEvents(
    device: nvmlDevice_t,
    event_types: c_ulonglong,
    set: nvmlEventSet_t,
) -> nvmlReturn_t {
    call("nvmlDeviceRegisterEvents", |s| {
        let (gpu, _) = gpu_of(s, device)?;
        if event_types & !SUPPORTED_EVENTS != 0 {
            return Err(NOT_SUPPORTED);
        }
        let index = event_set_index(set)?;
        let mut sets = event_sets();
        let entry = sets
            .get_mut(index)
            .and_then(Option::as_mut)
            .ok_or(INVALID_ARGUMENT)?;
        if !entry.gpus.contains(&gpu) {
            entry.gpus.push(gpu);
        }
        Ok(())
    })
}

/// The next unconsumed event of a set, consuming the lines read.
fn next_event(s: &State, index: usize) -> Result<Option<(usize, u64, u32, u32)>, nvmlReturn_t> {
    let Ok(path) = std::env::var("FAKE_NVML_EVENTS") else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut sets = event_sets();
    let entry = sets
        .get_mut(index)
        .and_then(Option::as_mut)
        .ok_or(INVALID_ARGUMENT)?;
    // Only complete lines count: a writer may be mid-line.
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    for line in complete.lines().skip(entry.consumed) {
        entry.consumed += 1;
        if let Some(event) = parse_event(s, line)
            && entry.gpus.contains(&event.0)
        {
            return Ok(Some(event));
        }
    }
    Ok(None)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlEventSetWait_v2(
    set: nvmlEventSet_t,
    data: *mut nvmlEventData_t,
    timeout_ms: c_uint,
) -> nvmlReturn_t {
    let index = match event_set_index(set) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_millis(u64::from(timeout_ms));
    loop {
        // The state lock is released between polls, so other threads' calls proceed.
        let mut found = None;
        let code = call("nvmlEventSetWait_v2", |s| {
            let registered = event_sets()
                .get(index)
                .and_then(Option::as_ref)
                .map(|set| set.gpus.clone())
                .unwrap_or_default();
            // A registered GPU that fails its calls fails the wait.
            for gpu in registered {
                gpu_failure(gpu)?;
            }
            found = next_event(s, index)?;
            Ok(())
        });
        if code == TIMEOUT {
            // An injected TIMEOUT is an interrupted wait: NVML returns at
            // once, but an event already queued is returned first (a wait
            // with an event ready does not block, so nothing interrupts it).
            let guard = state();
            if let Some(s) = guard.as_ref() {
                found = next_event(s, index).ok().flatten();
            }
            if found.is_none() {
                return TIMEOUT;
            }
        } else if code != SUCCESS {
            return code;
        }
        if let Some((gpu, xid, gi, ci)) = found {
            let event = nvmlEventData_t {
                device: device_handle(gpu, 0),
                eventType: c_ulonglong::from(nvmlEventTypeXidCriticalError),
                eventData: xid,
                gpuInstanceId: gi,
                computeInstanceId: ci,
            };
            // SAFETY: NVML contract: `data` is null or writable.
            return match unsafe { put(data, event) } {
                Ok(()) => SUCCESS,
                Err(code) => code,
            };
        }
        if std::time::Instant::now() >= deadline {
            return TIMEOUT;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

// ---- What the driver says a GPU needs (ECC page retirement, row remapping) ----

/// `FAKE_NVML_GPU_STATE_FILE`: does GPU `gpu` (list position) hold `state`?
fn gpu_state(gpu: usize, state: &str) -> bool {
    let Ok(path) = std::env::var("FAKE_NVML_GPU_STATE_FILE") else {
        return false;
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().any(|line| {
        let mut fields = line.split_whitespace();
        fields.next().and_then(|g| g.parse::<usize>().ok()) == Some(gpu)
            && fields.next() == Some(state)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetRetiredPagesPendingStatus(
    device: nvmlDevice_t,
    is_pending: *mut nvmlEnableState_t,
) -> nvmlReturn_t {
    call("nvmlDeviceGetRetiredPagesPendingStatus", |s| {
        let (gpu, _) = gpu_of(s, device)?;
        let state = if gpu_state(gpu, "pages-pending-retirement") {
            nvmlEnableState_enum_NVML_FEATURE_ENABLED
        } else {
            nvmlEnableState_enum_NVML_FEATURE_DISABLED
        };
        // SAFETY: NVML contract: `is_pending` is null or writable.
        unsafe { put(is_pending, state) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetRemappedRows(
    device: nvmlDevice_t,
    corrected: *mut c_uint,
    uncorrected: *mut c_uint,
    is_pending: *mut c_uint,
    failure_occurred: *mut c_uint,
) -> nvmlReturn_t {
    call("nvmlDeviceGetRemappedRows", |s| {
        let (gpu, _) = gpu_of(s, device)?;
        let pending = gpu_state(gpu, "row-remap-pending");
        let failed = gpu_state(gpu, "row-remap-failed");
        // SAFETY: NVML contract: every pointer is null or writable.
        unsafe {
            put(corrected, 0)?;
            put(uncorrected, c_uint::from(pending || failed))?;
            put(is_pending, c_uint::from(pending))?;
            put(failure_occurred, c_uint::from(failed))
        }
    })
}
