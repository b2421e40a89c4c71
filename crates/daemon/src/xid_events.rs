//! XID events from NVML, on a dedicated thread.
//!
//! `nvmlEventSetWait` blocks, and an `EventSet` is not `Sync`, so one thread
//! owns it and forwards events into the async daemon through a channel. The
//! raw `nvmlEventSetWait_v2` is used because nvml-wrapper's `EventData` drops
//! the GPU- and compute-instance ids that attribute an event to one MIG
//! device. On errors the thread backs off instead of spinning (NVIDIA's
//! plugin can spin when the wait keeps failing).

use std::collections::HashMap;
use std::time::Duration;

use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper_sys::bindings::{
    nvmlEventData_t, nvmlEventTypeXidCriticalError, nvmlReturn_enum_NVML_ERROR_TIMEOUT,
    nvmlReturn_enum_NVML_SUCCESS,
};
use tokio::sync::mpsc;

use crate::backoff::Backoff;
use crate::nvml::{NvmlOptions, nvml};
use gpu_slicer_core::health::XidEvent;

const WAIT_MS: u32 = 5000;
/// XIDs waiting for the daemon. A full queue makes the watcher thread wait
/// (the driver keeps its own queue meanwhile) rather than grow memory.
pub const QUEUE: usize = 64;
const NO_INSTANCE: u32 = 0xFFFF_FFFF;

/// Starts the watcher thread. It waits for the NVML options that discovery
/// succeeded with (so both load the same library under the same driver
/// root), then runs until `events` is closed.
pub fn spawn_xid_watcher(
    discovered_with: std::sync::mpsc::Receiver<NvmlOptions>,
    events: mpsc::Sender<XidEvent>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("xid-events".into())
        .spawn(move || {
            // The sender goes away only when the daemon stops.
            let Ok(options) = discovered_with.recv() else {
                return;
            };
            let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
            while !events.is_closed() {
                match watch(&options, &events) {
                    Ok(()) => return,
                    Err(e) => {
                        let delay = backoff.next_delay();
                        tracing::warn!("Failed to start health check: {e}; retrying in {delay:?}");
                        std::thread::sleep(delay);
                    }
                }
            }
        })
}

/// Registers every GPU for critical XID events and forwards them; returns
/// Ok when the receiver is gone, Err when NVML fails (the caller retries).
fn watch(options: &NvmlOptions, events: &mpsc::Sender<XidEvent>) -> Result<(), String> {
    let (nvml, _) = nvml(options).map_err(|e| e.to_string())?;
    let count = nvml.device_count().map_err(|e| e.to_string())?;
    let mut set = nvml.create_event_set().map_err(|e| e.to_string())?;
    // Raw device handle → GPU UUID, to name the GPU of each event.
    let mut uuids: HashMap<usize, String> = HashMap::new();
    for index in 0..count {
        let device = nvml.device_by_index(index).map_err(|e| e.to_string())?;
        let uuid = device.uuid().map_err(|e| e.to_string())?;
        match device.supported_event_types() {
            Ok(types) if types.contains(EventTypes::CRITICAL_XID_ERROR) => {}
            Ok(_) | Err(nvml_wrapper::error::NvmlError::NotSupported) => {
                tracing::warn!("Device {uuid} is too old to support healthchecking.");
                continue;
            }
            Err(e) => {
                return Err(format!(
                    "unable to determine the supported events for {uuid}: {e}"
                ));
            }
        }
        set = device
            .register_events(EventTypes::CRITICAL_XID_ERROR, set)
            .map_err(|e| format!("registering XID events for {uuid}: {}", e.error))?;
        // SAFETY: the handle is only used as a map key to recognise the
        // device in event data; it is never dereferenced here.
        let handle = unsafe { device.handle() } as usize;
        uuids.insert(handle, uuid);
    }
    let wait = nvml.lib().nvmlEventSetWait_v2.as_ref().map_err(|e| {
        format!("nvmlEventSetWait_v2 is missing from the NVML library (driver too old?): {e}")
    })?;
    tracing::info!(
        gpus = uuids.len(),
        "health checks started (critical XID events)"
    );
    while !events.is_closed() {
        // SAFETY: all-zero is a valid nvmlEventData_t (a null pointer and integers).
        let mut data: nvmlEventData_t = unsafe { std::mem::zeroed() };
        // SAFETY: the set handle is live for the whole loop (owned by `set`)
        // and `data` is a valid, writable nvmlEventData_t.
        let ret = unsafe { wait(set.handle(), &mut data, WAIT_MS) };
        if ret == nvmlReturn_enum_NVML_ERROR_TIMEOUT {
            continue;
        }
        if ret != nvmlReturn_enum_NVML_SUCCESS {
            return Err(format!("Error waiting for event: NVML error {ret}"));
        }
        if data.eventType & u64::from(nvmlEventTypeXidCriticalError) == 0 {
            continue;
        }
        let Some(gpu_uuid) = uuids.get(&(data.device as usize)).cloned() else {
            tracing::warn!(
                xid = data.eventData,
                "XID event from an unknown device; ignored"
            );
            continue;
        };
        let instance = |id: u32| (id != NO_INSTANCE).then_some(id);
        let _ = events.blocking_send(XidEvent {
            gpu_uuid,
            xid: data.eventData,
            gpu_instance: instance(data.gpuInstanceId),
            compute_instance: instance(data.computeInstanceId),
        });
    }
    Ok(())
}
