//! What a node publishes of its MIG state, declared once: the JSON of the
//! Node annotation [`MIG_STATE`] (`gpu-slicer.io/mig-state`). The node
//! daemon renders it from what it discovered and what the kubelet says pods
//! hold ([`from_inventory`], [`render`]); `gpu-slicer simulate` (and the
//! controller to come) read it back ([`parse`]). One entry per GPU, in NVML
//! index order:
//!
//! ```json
//! [{"index": 0, "mig": true, "instances": [
//!     {"profile": "3g.20gb", "start": 4, "devices": ["MIG-…"], "held": true},
//!     {"profile": "1g.5gb", "start": 0, "devices": ["MIG-…"], "held": false}]},
//!  {"index": 1, "mig": false}]
//! ```
//!
//! | Field | Meaning | On read |
//! |---|---|---|
//! | `index` | the GPU's NVML index (a GPU discovery could not read is left out, so positions alone could mislead) | optional: absent, the position is the index |
//! | `mig` | MIG mode is on | required |
//! | `instances` | the GPU instances that exist | optional, empty |
//! | `profile` | the GPU instance's profile (`3g.20gb`; `1g.10gb+me`), never a compute-instance profile (`1c.3g.20gb`) | required |
//! | `start` | the memory slice its placement starts at | required |
//! | `devices` | the MIG device UUIDs on it (one per compute instance) | optional, empty |
//! | `held` | whether a pod holds one of its devices (the kubelet's PodResources API) | optional: absent means *unknown*, which a reader that changes instances must treat as held |
//!
//! Unknown fields are ignored, so a newer writer does not break an older
//! reader. The text is bounded ([`MAX_BYTES`]): a Node's annotations
//! together may hold 256 KiB, and this one must leave room for the rest.

use serde::{Deserialize, Serialize};

use crate::gpu::Inventory;
pub use crate::node_labels::MIG_STATE;

/// The largest annotation value written or read: an eighth of the 256 KiB
/// the API server allows for all of a Node's annotations together. Eight
/// GPUs of seven instances with their UUIDs take about 6 KiB.
pub const MAX_BYTES: usize = 32 * 1024;
/// Most GPU entries (no node has more than 16 GPUs).
pub const MAX_GPUS: usize = 16;
/// Most GPU instances of one GPU (MIG allows at most 7).
pub const MAX_INSTANCES: usize = 8;
/// Most MIG devices (compute instances) of one GPU instance (at most 7).
pub const MAX_DEVICES: usize = 8;
/// Longest profile name or device UUID accepted.
const MAX_NAME: usize = 64;

/// One GPU's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuMigState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    pub mig: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceState>,
}

/// One GPU instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceState {
    pub profile: String,
    pub start: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<bool>,
}

impl InstanceState {
    /// Whether a reader that changes instances must leave this one alone:
    /// held, or not known to be free.
    pub fn maybe_held(&self) -> bool {
        self.held != Some(false)
    }
}

/// Why a state cannot be read or written; each names what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigStateError {
    #[error(
        "{bytes} bytes, more than the {MAX_BYTES} a node's MIG state may take (a Node's annotations together are limited to 256 KiB)"
    )]
    TooLarge { bytes: usize },
    #[error(
        "not the expected JSON, a list with one entry per GPU such as [{{\"mig\": true, \"instances\": [{{\"profile\": \"3g.20gb\", \"start\": 4}}]}}, {{\"mig\": false}}]: {0}"
    )]
    Json(String),
    #[error("{count} GPU entries, more than the {MAX_GPUS} a node has at most")]
    TooManyGpus { count: usize },
    #[error(
        "GPU entry {position}: index {index} does not follow {previous}; the entries go in index order, each GPU once"
    )]
    IndexOrder {
        position: usize,
        index: u32,
        previous: u32,
    },
    #[error("GPU entry {position}: give every entry an index, or none")]
    MixedIndices { position: usize },
    #[error("GPU {gpu}: instances are listed but MIG is off")]
    InstancesWithMigOff { gpu: u32 },
    #[error("GPU {gpu}: {count} instances, more than the {MAX_INSTANCES} a GPU holds at most")]
    TooManyInstances { gpu: u32, count: usize },
    #[error(
        "GPU {gpu}: instance {profile} at {start}: {count} devices, more than the {MAX_DEVICES} an instance holds at most"
    )]
    TooManyDevices {
        gpu: u32,
        profile: String,
        start: u32,
        count: usize,
    },
    #[error(
        "GPU {gpu}: profile {profile:?} is not a GPU-instance profile name such as 3g.20gb or 1g.10gb+me"
    )]
    BadProfile { gpu: u32, profile: String },
    #[error("GPU {gpu}: device {device:?} is not a MIG device UUID (MIG-…)")]
    BadDevice { gpu: u32, device: String },
    #[error("GPU {gpu}: two instances start at memory slice {start}")]
    SameStart { gpu: u32, start: u32 },
    #[error(
        "GPU {gpu}: MIG device {device} has no known placement, so its instance cannot be published"
    )]
    PlacementUnknown { gpu: u32, device: String },
}

/// Reads an annotation value: bounded, then decoded, then checked.
pub fn parse(text: &str) -> Result<Vec<GpuMigState>, MigStateError> {
    if text.len() > MAX_BYTES {
        return Err(MigStateError::TooLarge { bytes: text.len() });
    }
    let gpus: Vec<GpuMigState> =
        serde_json::from_str(text).map_err(|e| MigStateError::Json(e.to_string()))?;
    validate(&gpus)?;
    Ok(gpus)
}

/// The annotation value for `gpus`: checked as [`parse`] checks it, and
/// refused when larger than [`MAX_BYTES`] (a writer must not replace a
/// good value with one the API server or a reader refuses).
pub fn render(gpus: &[GpuMigState]) -> Result<String, MigStateError> {
    validate(gpus)?;
    let text = serde_json::to_string(gpus).map_err(|e| MigStateError::Json(e.to_string()))?;
    if text.len() > MAX_BYTES {
        return Err(MigStateError::TooLarge { bytes: text.len() });
    }
    Ok(text)
}

/// The GPU index of entry `position` (its `index`, else its position).
pub fn gpu_index(gpus: &[GpuMigState], position: usize) -> u32 {
    gpus.get(position)
        .and_then(|g| g.index)
        .unwrap_or(position as u32)
}

fn validate(gpus: &[GpuMigState]) -> Result<(), MigStateError> {
    if gpus.len() > MAX_GPUS {
        return Err(MigStateError::TooManyGpus { count: gpus.len() });
    }
    let indexed = gpus.first().is_some_and(|g| g.index.is_some());
    let mut previous: Option<u32> = None;
    for (position, gpu) in gpus.iter().enumerate() {
        if gpu.index.is_some() != indexed {
            return Err(MigStateError::MixedIndices { position });
        }
        if let (Some(index), Some(previous)) = (gpu.index, previous)
            && index <= previous
        {
            return Err(MigStateError::IndexOrder {
                position,
                index,
                previous,
            });
        }
        previous = gpu.index;
        let g = gpu_index(gpus, position);
        if !gpu.mig && !gpu.instances.is_empty() {
            return Err(MigStateError::InstancesWithMigOff { gpu: g });
        }
        if gpu.instances.len() > MAX_INSTANCES {
            return Err(MigStateError::TooManyInstances {
                gpu: g,
                count: gpu.instances.len(),
            });
        }
        let mut starts = Vec::new();
        for instance in &gpu.instances {
            if !is_gpu_instance_profile(&instance.profile) {
                return Err(MigStateError::BadProfile {
                    gpu: g,
                    profile: instance.profile.clone(),
                });
            }
            if starts.contains(&instance.start) {
                return Err(MigStateError::SameStart {
                    gpu: g,
                    start: instance.start,
                });
            }
            starts.push(instance.start);
            if instance.devices.len() > MAX_DEVICES {
                return Err(MigStateError::TooManyDevices {
                    gpu: g,
                    profile: instance.profile.clone(),
                    start: instance.start,
                    count: instance.devices.len(),
                });
            }
            if let Some(device) = instance
                .devices
                .iter()
                .find(|d| !d.starts_with("MIG-") || d.len() > MAX_NAME)
            {
                return Err(MigStateError::BadDevice {
                    gpu: g,
                    device: device.chars().take(MAX_NAME).collect(),
                });
            }
        }
    }
    Ok(())
}

/// `<n>g.<m>gb` with an optional `+attribute`: a GPU-instance profile as
/// NVIDIA names it (not a compute-instance profile `<c>c.<n>g.<m>gb`).
fn is_gpu_instance_profile(profile: &str) -> bool {
    if profile.is_empty() || profile.len() > MAX_NAME {
        return false;
    }
    let base = profile.split('+').next().unwrap_or("");
    let Some((slices, memory)) = base.split_once("g.") else {
        return false;
    };
    !slices.is_empty()
        && slices.bytes().all(|b| b.is_ascii_digit())
        && memory
            .strip_suffix("gb")
            .is_some_and(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))
}

/// The GPU-instance profile of a MIG device's profile: `1c.3g.20gb` → `3g.20gb`.
fn gpu_instance_profile(profile: &str) -> &str {
    match profile.split_once("c.") {
        Some((ci, rest)) if !ci.is_empty() && ci.bytes().all(|b| b.is_ascii_digit()) => rest,
        _ => profile,
    }
}

/// What a node publishes: per GPU of `inventory`, its MIG mode and GPU
/// instances (grouped from its MIG devices, in placement order); an
/// instance is held when one of `held` names one of its devices, or its
/// whole GPU. `held` is the device ids pods hold, in any form gpu-slicer
/// hands out: a GPU or MIG UUID, `<gpu>` or `<gpu>:<mig>` (deviceIDStrategy
/// `index`), each maybe with a replica suffix `::<n>`; `None`: not known, so
/// no instance says whether it is held.
pub fn from_inventory(
    inventory: &Inventory,
    held: Option<&[String]>,
) -> Result<Vec<GpuMigState>, MigStateError> {
    let bases: Option<Vec<&str>> = held.map(|ids| {
        ids.iter()
            .map(|id| id.split("::").next().unwrap_or(id))
            .collect()
    });
    let mut out = Vec::new();
    for gpu in &inventory.gpus {
        let whole_held = bases.as_ref().map(|b| {
            b.iter()
                .any(|id| *id == gpu.uuid || *id == gpu.index.to_string())
        });
        let mut instances: Vec<(u32, InstanceState)> = Vec::new();
        if gpu.mig_enabled {
            for device in &gpu.mig_devices {
                let start =
                    device
                        .placement_start
                        .ok_or_else(|| MigStateError::PlacementUnknown {
                            gpu: gpu.index,
                            device: device.uuid.clone(),
                        })?;
                let index_id = format!("{}:{}", gpu.index, device.index);
                let device_held = bases
                    .as_ref()
                    .map(|b| b.iter().any(|id| *id == device.uuid || *id == index_id));
                match instances
                    .iter_mut()
                    .find(|(gi, _)| *gi == device.gpu_instance_id)
                {
                    Some((_, instance)) => {
                        instance.devices.push(device.uuid.clone());
                        instance.held = instance.held.zip(device_held).map(|(a, b)| a || b);
                    }
                    None => instances.push((
                        device.gpu_instance_id,
                        InstanceState {
                            profile: gpu_instance_profile(&device.profile).to_string(),
                            start,
                            devices: vec![device.uuid.clone()],
                            held: device_held.zip(whole_held).map(|(a, b)| a || b),
                        },
                    )),
                }
            }
        }
        let mut instances: Vec<InstanceState> = instances.into_iter().map(|(_, i)| i).collect();
        instances.sort_by_key(|i| i.start);
        out.push(GpuMigState {
            index: Some(gpu.index),
            mig: gpu.mig_enabled,
            instances,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::simulated;

    fn instance(profile: &str, start: u32, held: Option<bool>) -> InstanceState {
        InstanceState {
            profile: profile.into(),
            start,
            devices: vec![format!("MIG-{profile}-{start}")],
            held,
        }
    }

    #[test]
    fn a_state_round_trips_and_the_simulators_older_form_still_reads() {
        let gpus = vec![
            GpuMigState {
                index: Some(0),
                mig: true,
                instances: vec![
                    instance("3g.20gb", 0, Some(true)),
                    instance("1g.5gb+me", 4, Some(false)),
                    instance("1g.5gb", 5, None),
                ],
            },
            GpuMigState {
                index: Some(2),
                mig: false,
                instances: Vec::new(),
            },
        ];
        let text = render(&gpus).unwrap();
        assert_eq!(parse(&text).unwrap(), gpus);
        assert!(!text.contains("null"), "absent, not null: {text}");
        // What simulate read before the node published anything: no index,
        // no devices, no held; unknown fields are ignored.
        let old = r#"[{"mig": true, "instances": [{"profile": "3g.20gb", "start": 4}], "future": 1}, {"mig": false}]"#;
        let read = parse(old).unwrap();
        assert_eq!(gpu_index(&read, 1), 1);
        assert_eq!(read[0].instances[0].held, None);
        assert!(read[0].instances[0].maybe_held(), "unknown counts as held");
        assert!(!instance("1g.5gb", 0, Some(false)).maybe_held());
    }

    #[test]
    fn bad_states_are_refused_saying_what_is_wrong() {
        let cases: [(&str, &str); 9] = [
            (
                "{}",
                "not the expected JSON, a list with one entry per GPU such as",
            ),
            (
                r#"[{"mig": false, "instances": [{"profile": "1g.5gb", "start": 0}]}]"#,
                "GPU 0: instances are listed but MIG is off",
            ),
            (
                r#"[{"index": 3, "mig": false}, {"index": 1, "mig": false}]"#,
                "GPU entry 1: index 1 does not follow 3; the entries go in index order, each GPU once",
            ),
            (
                r#"[{"index": 0, "mig": false}, {"mig": false}]"#,
                "GPU entry 1: give every entry an index, or none",
            ),
            (
                r#"[{"mig": true, "instances": [{"profile": "1c.3g.20gb", "start": 0}]}]"#,
                "GPU 0: profile \"1c.3g.20gb\" is not a GPU-instance profile name such as 3g.20gb or 1g.10gb+me",
            ),
            (
                r#"[{"mig": true, "instances": [{"profile": "1g.5gb", "start": 0, "devices": ["GPU-1"]}]}]"#,
                "GPU 0: device \"GPU-1\" is not a MIG device UUID (MIG-…)",
            ),
            (
                r#"[{"mig": true, "instances": [{"profile": "1g.5gb", "start": 2}, {"profile": "2g.10gb", "start": 2}]}]"#,
                "GPU 0: two instances start at memory slice 2",
            ),
            (
                &format!("[{}]", vec![r#"{"mig": false}"#; 17].join(",")),
                "17 GPU entries, more than the 16 a node has at most",
            ),
            (
                &format!(
                    r#"[{{"mig": true, "instances": [{}]}}]"#,
                    (0..9)
                        .map(|s| format!(r#"{{"profile": "1g.5gb", "start": {s}}}"#))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                "GPU 0: 9 instances, more than the 8 a GPU holds at most",
            ),
        ];
        for (text, want) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with(want), "{text}: {e}");
        }
    }

    #[test]
    fn the_size_is_bounded_on_both_sides() {
        let huge = format!("[{}]", " ".repeat(MAX_BYTES));
        assert_eq!(
            parse(&huge).unwrap_err().to_string(),
            format!(
                "{} bytes, more than the 32768 a node's MIG state may take (a Node's annotations together are limited to 256 KiB)",
                MAX_BYTES + 2
            )
        );
        // Within every count limit, yet too large once rendered: refused,
        // never cut (a cut value would say less than the truth).
        let long_device = format!("MIG-{}", "0".repeat(MAX_NAME - 4));
        let gpus: Vec<GpuMigState> = (0..MAX_GPUS as u32)
            .map(|index| GpuMigState {
                index: Some(index),
                mig: true,
                instances: (0..MAX_INSTANCES as u32)
                    .map(|start| InstanceState {
                        profile: "1g.5gb".into(),
                        start,
                        devices: vec![long_device.clone(); MAX_DEVICES],
                        held: Some(false),
                    })
                    .collect(),
            })
            .collect();
        let e = render(&gpus).unwrap_err();
        assert!(
            matches!(e, MigStateError::TooLarge { bytes } if bytes > MAX_BYTES),
            "{e}"
        );
        // A p4d's eight GPUs of seven 1g slices fit well within the bound.
        let p4d = simulated::from_instance("p4d.24xlarge", Some("all-1g.5gb")).unwrap();
        let text = render(&from_inventory(&p4d, Some(&[])).unwrap()).unwrap();
        assert!(text.len() < MAX_BYTES / 4, "{} bytes", text.len());
    }

    #[test]
    fn instances_come_from_the_inventory_with_what_pods_hold() {
        let mut inventory = simulated::from_instance("p4d.24xlarge", Some("all-balanced")).unwrap();
        inventory.gpus.truncate(3);
        inventory.gpus[2].mig_enabled = false;
        inventory.gpus[2].mig_devices.clear();
        let g0 = &inventory.gpus[0];
        let held_3g = g0
            .mig_devices
            .iter()
            .find(|d| d.profile == "3g.20gb")
            .unwrap();
        let held = vec![
            // uuid strategy, time-sliced replica
            format!("{}::2", held_3g.uuid),
            // index strategy: GPU 1's MIG device 0
            "1:0".to_string(),
            // a whole GPU (MIG off): nothing of it is a MIG instance
            inventory.gpus[2].uuid.clone(),
        ];
        let state = from_inventory(&inventory, Some(&held)).unwrap();
        assert_eq!(state.len(), 3);
        let g0 = &state[0];
        assert_eq!(g0.index, Some(0));
        let layout: Vec<(&str, u32, Option<bool>)> = g0
            .instances
            .iter()
            .map(|i| (i.profile.as_str(), i.start, i.held))
            .collect();
        assert_eq!(
            layout,
            [
                ("2g.10gb", 0, Some(false)),
                ("1g.5gb", 2, Some(false)),
                ("1g.5gb", 3, Some(false)),
                ("3g.20gb", 4, Some(true)),
            ]
        );
        assert_eq!(g0.instances[3].devices, std::slice::from_ref(&held_3g.uuid));
        let mig1_0 = &inventory.gpus[1].mig_devices[0];
        let g1 = &state[1];
        let held1: Vec<&InstanceState> = g1
            .instances
            .iter()
            .filter(|i| i.held == Some(true))
            .collect();
        assert_eq!(held1.len(), 1);
        assert_eq!(held1[0].devices, std::slice::from_ref(&mig1_0.uuid));
        assert_eq!(
            state[2],
            GpuMigState {
                index: Some(2),
                mig: false,
                instances: Vec::new()
            }
        );
        // Not known what pods hold: no instance says.
        let unknown = from_inventory(&inventory, None).unwrap();
        assert!(
            unknown
                .iter()
                .flat_map(|g| &g.instances)
                .all(|i| i.held.is_none())
        );
        // A whole MIG GPU handed out (MIG strategy none): all its instances held.
        let whole = vec![inventory.gpus[0].index.to_string()];
        let state = from_inventory(&inventory, Some(&whole)).unwrap();
        assert!(state[0].instances.iter().all(|i| i.held == Some(true)));
        assert!(state[1].instances.iter().all(|i| i.held == Some(false)));
    }

    #[test]
    fn compute_instances_publish_their_gpu_instance_once() {
        let mut inventory = simulated::from_instance("p4d.24xlarge", Some("all-3g.20gb")).unwrap();
        inventory.gpus.truncate(1);
        let gpu = &mut inventory.gpus[0];
        let first = gpu.mig_devices[0].clone();
        gpu.mig_devices = (0..3)
            .map(|ci| crate::gpu::MigDevice {
                index: ci,
                profile: "1c.3g.20gb".into(),
                uuid: format!("MIG-ci-{ci}"),
                compute_instance_id: ci,
                ..first.clone()
            })
            .collect();
        let held = vec!["MIG-ci-2".to_string()];
        let state = from_inventory(&inventory, Some(&held)).unwrap();
        assert_eq!(state[0].instances.len(), 1);
        let instance = &state[0].instances[0];
        assert_eq!(instance.profile, "3g.20gb");
        assert_eq!(instance.devices, ["MIG-ci-0", "MIG-ci-1", "MIG-ci-2"]);
        assert_eq!(instance.held, Some(true));
        // An inventory without placements cannot be published.
        inventory.gpus[0].mig_devices[0].placement_start = None;
        assert_eq!(
            from_inventory(&inventory, None).unwrap_err().to_string(),
            "GPU 0: MIG device MIG-ci-0 has no known placement, so its instance cannot be published"
        );
    }
}
