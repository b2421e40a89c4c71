//! CDI spec files: what a CDI-capable runtime (containerd ≥ 1.7, CRI-O)
//! needs to resolve the names Allocate hands out
//! (`k8s.device-plugin.nvidia.com/gpu=<id>`) without NVIDIA's toolkit.
//!
//! Written with a CDI device-list strategy (`--cdi-spec-dir`, default
//! `/var/run/cdi`). Pure: inventory → spec; the daemon writes it atomically
//! whenever the plan is applied. The optional classes (gdrcopy, gds, mofed)
//! get a spec each, with the device `all`, when the node has their nodes.
//!
//! The spec-wide edits also mount the driver's user-space files
//! ([`crate::driver_files`]: libraries, binaries, firmware, sockets), so a
//! CUDA image needs nothing else from the node.
//!
//! Each device (named by UUID and by index, since `deviceIDStrategy` picks
//! either) carries its device nodes: `/dev/nvidia<minor>`, plus the GPU- and
//! compute-instance capability nodes for a MIG device. The spec-wide edits
//! carry the control nodes and `NVIDIA_VISIBLE_DEVICES=void`, which keeps an
//! NVIDIA runtime hook, if one is also installed, from injecting every GPU.
//! No per-device environment is set: CDI merges environment variables by
//! name, so a per-device `NVIDIA_VISIBLE_DEVICES` would keep only the last
//! device of a multi-device container.

use serde_json::{Value, json};

use crate::device_nodes::{self, DeviceClass, NodeDeviceFiles};
use crate::driver_files::{FILE_OPTIONS, FileKind, SOCKET_OPTIONS};
use crate::gpu::Inventory;

pub const KIND: &str = "k8s.device-plugin.nvidia.com/gpu";
pub const SPEC_FILE: &str = "k8s.device-plugin.nvidia.com-gpu.json";

fn node(container_path: &str, dev_root: &str) -> Value {
    json!({
        "path": container_path,
        "hostPath": device_nodes::host_path(dev_root, container_path),
        "permissions": "rw",
    })
}

/// The CDI kind of an optional class (`k8s.device-plugin.nvidia.com/gdrcopy`).
pub fn class_kind(class: DeviceClass) -> String {
    format!("k8s.device-plugin.nvidia.com/{}", class.as_str())
}

/// The spec file of an optional class.
pub fn class_spec_file(class: DeviceClass) -> String {
    format!("k8s.device-plugin.nvidia.com-{}.json", class.as_str())
}

/// The spec of an optional class: one device, `all`, with the class's
/// nodes; `None` when the node has none (no spec, and Allocate names none).
pub fn class_spec(class: DeviceClass, files: &NodeDeviceFiles, dev_root: &str) -> Option<Value> {
    let nodes = files.classes.of(class);
    if nodes.is_empty() {
        return None;
    }
    Some(json!({
        "cdiVersion": "0.5.0",
        "kind": class_kind(class),
        "devices": [{
            "name": "all",
            "containerEdits": {
                "deviceNodes": nodes.iter().map(|p| node(p, dev_root)).collect::<Vec<_>>(),
            },
        }],
    }))
}

/// The CDI spec for every GPU and MIG device of the node. `driver_root` is
/// the host's driver root, which the driver files' host paths start with.
pub fn spec(
    inventory: &Inventory,
    files: &NodeDeviceFiles,
    dev_root: &str,
    driver_root: &str,
) -> Value {
    let mut devices = Vec::new();
    let mut push = |names: [String; 2], nodes: Vec<String>| {
        let edits = json!({
            "deviceNodes": nodes.iter().map(|p| node(p, dev_root)).collect::<Vec<_>>(),
        });
        for name in names {
            devices.push(json!({ "name": name, "containerEdits": edits.clone() }));
        }
    };
    for gpu in &inventory.gpus {
        push(
            [gpu.uuid.clone(), gpu.index.to_string()],
            files.nodes_of(gpu.minor, None),
        );
        for mig in &gpu.mig_devices {
            let nodes = files.nodes_of(
                gpu.minor,
                Some((mig.gpu_instance_id, mig.compute_instance_id)),
            );
            push(
                [mig.uuid.clone(), format!("{}:{}", gpu.index, mig.index)],
                nodes,
            );
        }
    }
    let mounts: Vec<Value> = files
        .driver
        .mounts
        .iter()
        .map(|m| {
            let options = match m.kind {
                FileKind::Socket => SOCKET_OPTIONS,
                _ => FILE_OPTIONS,
            };
            json!({
                "hostPath": device_nodes::host_path(driver_root, &m.source),
                "containerPath": m.container_path,
                "options": options,
            })
        })
        .collect();
    let mut edits = json!({
        "env": ["NVIDIA_VISIBLE_DEVICES=void"],
        "deviceNodes": files.control.iter().map(|p| node(p, dev_root)).collect::<Vec<_>>(),
    });
    if !mounts.is_empty() {
        edits["mounts"] = Value::Array(mounts);
    }
    json!({
        "cdiVersion": "0.5.0",
        "kind": KIND,
        "devices": devices,
        "containerEdits": edits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_optional_class_has_a_spec_only_when_present() {
        let mut files = NodeDeviceFiles::default();
        assert_eq!(class_spec(DeviceClass::Gdrcopy, &files, "/"), None);
        files.classes.gdrcopy = vec!["/dev/gdrdrv".into()];
        let spec = class_spec(DeviceClass::Gdrcopy, &files, "/run/nvidia/driver").expect("spec");
        assert_eq!(spec["kind"], "k8s.device-plugin.nvidia.com/gdrcopy");
        assert_eq!(spec["devices"][0]["name"], "all");
        assert_eq!(
            spec["devices"][0]["containerEdits"]["deviceNodes"][0],
            json!({"path": "/dev/gdrdrv", "hostPath": "/run/nvidia/driver/dev/gdrdrv", "permissions": "rw"})
        );
        assert_eq!(
            class_spec_file(DeviceClass::Mofed),
            "k8s.device-plugin.nvidia.com-mofed.json"
        );
    }
    use crate::gpu::simulated;

    #[test]
    fn mig_devices_carry_parent_and_capability_nodes_under_both_names() {
        let inventory =
            simulated::from_instance("p4d.24xlarge", Some("all-balanced")).expect("sim");
        let files = NodeDeviceFiles {
            control: vec!["/dev/nvidiactl".into()],
            mig_caps: NodeDeviceFiles::synthetic_mig_minors(8),
            ..Default::default()
        };
        let spec = spec(
            &inventory,
            &files,
            "/run/nvidia/driver",
            "/run/nvidia/driver",
        );
        assert_eq!(spec["kind"], KIND);
        let devices = spec["devices"].as_array().expect("devices");
        // 8 GPUs + 32 MIG devices, each under two names.
        assert_eq!(devices.len(), (8 + 32) * 2);
        let mig = &inventory.gpus[1].mig_devices[0];
        let by_uuid = devices
            .iter()
            .find(|d| d["name"] == mig.uuid.as_str())
            .expect("by uuid");
        let by_index = devices
            .iter()
            .find(|d| d["name"] == "1:0")
            .expect("by index");
        assert_eq!(by_uuid["containerEdits"], by_index["containerEdits"]);
        let gi = 3 + 135 + 9 * mig.gpu_instance_id;
        let paths: Vec<&str> = by_uuid["containerEdits"]["deviceNodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .filter_map(|n| n["hostPath"].as_str())
            .collect();
        assert_eq!(
            paths,
            vec![
                "/run/nvidia/driver/dev/nvidia1".to_string(),
                format!("/run/nvidia/driver/dev/nvidia-caps/nvidia-cap{gi}"),
                format!("/run/nvidia/driver/dev/nvidia-caps/nvidia-cap{}", gi + 1),
            ]
        );
        assert_eq!(
            spec["containerEdits"]["deviceNodes"][0]["path"],
            "/dev/nvidiactl"
        );
    }

    #[test]
    fn driver_files_are_spec_wide_mounts_from_the_host_driver_root() {
        use crate::driver_files::{DriverFiles, DriverMount};
        let inventory = simulated::from_instance("g5.xlarge", None).expect("sim");
        let mut files = NodeDeviceFiles::default();
        assert!(
            spec(&inventory, &files, "/", "/")["containerEdits"]
                .get("mounts")
                .is_none(),
            "no driver files, no mounts"
        );
        files.driver = DriverFiles {
            version: "580.159.04".into(),
            mounts: vec![
                DriverMount {
                    container_path: "/usr/lib64/libcuda.so.1".into(),
                    source: "/usr/lib64/libcuda.so.580.159.04".into(),
                    kind: FileKind::Library,
                },
                DriverMount {
                    container_path: "/run/nvidia-persistenced/socket".into(),
                    source: "/run/nvidia-persistenced/socket".into(),
                    kind: FileKind::Socket,
                },
            ],
        };
        let spec = spec(&inventory, &files, "/", "/run/nvidia/driver");
        assert_eq!(
            spec["containerEdits"]["mounts"],
            json!([
                {"hostPath": "/run/nvidia/driver/usr/lib64/libcuda.so.580.159.04",
                 "containerPath": "/usr/lib64/libcuda.so.1",
                 "options": ["ro", "nosuid", "nodev", "rbind", "rprivate"]},
                {"hostPath": "/run/nvidia/driver/run/nvidia-persistenced/socket",
                 "containerPath": "/run/nvidia-persistenced/socket",
                 "options": ["nosuid", "nodev", "rbind", "rprivate", "noexec"]},
            ])
        );
    }
}
