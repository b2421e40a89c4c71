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
//! compute-instance capability nodes for a MIG device. Each node carries
//! the file mode it has on the host, as NVIDIA's generated spec does
//! (nvidia-container-toolkit `internal/edits/device.go` stats the node):
//! without one, runc creates the node 0666, which would make a MIG
//! capability node (0444 on the host) writable in the container. A MIG
//! capability node the daemon cannot see gets the driver's mode for it,
//! [`MIG_CAPABILITY_MODE`].
//!
//! The spec-wide edits carry the control nodes and, when every device-list
//! strategy is a CDI one, `NVIDIA_VISIBLE_DEVICES=void`. What each strategy
//! sets, read from NVIDIA's plugin (`internal/plugin/server.go`) and toolkit
//! sources; the last case departs from NVIDIA's plugin, whose spec always
//! carries `void`:
//!
//! - `envvar`: the answer's `NVIDIA_VISIBLE_DEVICES=<ids>`, which the
//!   NVIDIA runtime hook reads (the last value of the variable wins:
//!   toolkit `internal/config/image/builder.go`) to inject the devices and
//!   the driver's files.
//! - `cdi-cri`, `cdi-annotations`: the CDI names; the runtime applies the
//!   spec's edits after the answer's environment, replacing a variable of
//!   the same name (podman; containerd's CDI library likewise). `void`
//!   keeps a hook, if one is installed, from reading a CUDA image's own
//!   `NVIDIA_VISIBLE_DEVICES=all` and injecting every GPU (the toolkit's
//!   `pkg/nvcdi/wrapper.go` adds it to every spec it generates).
//! - a CDI strategy beside `envvar` or `volume-mounts`: the answer already
//!   names exactly the allocated devices, so `void` has nothing to guard
//!   against, and it would replace that value and switch off the hook the
//!   non-CDI strategy was chosen for (and with it the driver's files when
//!   the daemon has no driver root to put them in the spec). The spec then
//!   sets no `NVIDIA_VISIBLE_DEVICES`: both paths inject the same devices.
//!
//! No per-device environment is set: CDI merges environment variables by
//! name, so a per-device `NVIDIA_VISIBLE_DEVICES` would keep only the last
//! device of a multi-device container.

use serde_json::{Value, json};

use crate::config::DeviceListStrategy;
use crate::device_nodes::{self, DeviceClass, NodeDeviceFiles};
use crate::driver_files::{FILE_OPTIONS, FileKind, SOCKET_OPTIONS};
use crate::gpu::Inventory;

pub const KIND: &str = "k8s.device-plugin.nvidia.com/gpu";
pub const SPEC_FILE: &str = "k8s.device-plugin.nvidia.com-gpu.json";

/// The mode the driver gives a MIG capability node
/// (`/proc/driver/nvidia/capabilities/gpu<N>/mig/gi<G>/access`,
/// `DeviceFileMode: 292`): readable by all, writable by none. Opening it
/// for reading is what grants the capability.
pub const MIG_CAPABILITY_MODE: u32 = 0o444;

/// The permission bits of a device node on the host, by container path
/// (`/dev/nvidia0`); `None` when the daemon cannot see it.
pub type HostMode<'a> = &'a dyn Fn(&str) -> Option<u32>;

fn node(container_path: &str, dev_root: &str) -> Value {
    json!({
        "path": container_path,
        "hostPath": device_nodes::host_path(dev_root, container_path),
        "permissions": "rw",
    })
}

/// A GPU's or MIG device's node, with its host file mode when known (a MIG
/// capability node always has one).
fn node_with_mode(container_path: &str, dev_root: &str, host_mode: HostMode) -> Value {
    let mut value = node(container_path, dev_root);
    let mode = host_mode(container_path).or_else(|| {
        device_nodes::is_capability_node(container_path).then_some(MIG_CAPABILITY_MODE)
    });
    if let Some(mode) = mode {
        value["fileMode"] = json!(mode & 0o7777);
    }
    value
}

/// Whether the spec sets `NVIDIA_VISIBLE_DEVICES=void`: only when every
/// device-list strategy is a CDI one (the module's documentation says why).
pub fn sets_void(strategies: &[DeviceListStrategy]) -> bool {
    strategies.iter().all(|s| s.is_cdi())
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
/// the host's driver root, which the driver files' host paths start with;
/// `strategies` are the device-list strategies in use; `host_mode` gives
/// the nodes' modes on the host.
pub fn spec(
    inventory: &Inventory,
    files: &NodeDeviceFiles,
    dev_root: &str,
    driver_root: &str,
    strategies: &[DeviceListStrategy],
    host_mode: HostMode,
) -> Value {
    let with_mode = |p: &String| node_with_mode(p, dev_root, host_mode);
    let mut devices = Vec::new();
    let mut push = |names: [String; 2], nodes: Vec<String>| {
        let edits = json!({
            "deviceNodes": nodes.iter().map(with_mode).collect::<Vec<_>>(),
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
        "deviceNodes": files.control.iter().map(with_mode).collect::<Vec<_>>(),
    });
    if sets_void(strategies) {
        edits["env"] = json!(["NVIDIA_VISIBLE_DEVICES=void"]);
    }
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
            &[DeviceListStrategy::CdiCri],
            &|_| None,
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
            spec(
                &inventory,
                &files,
                "/",
                "/",
                &[DeviceListStrategy::CdiCri],
                &|_| None
            )["containerEdits"]
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
        let spec = spec(
            &inventory,
            &files,
            "/",
            "/run/nvidia/driver",
            &[DeviceListStrategy::CdiCri],
            &|_| None,
        );
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

    /// NVIDIA's generated spec takes each node's mode from the host; a MIG
    /// capability node the daemon cannot see gets the driver's 0444, never
    /// the runtime's default 0666.
    #[test]
    fn device_nodes_carry_their_host_file_mode() {
        let inventory =
            simulated::from_instance("p4d.24xlarge", Some("all-balanced")).expect("sim");
        let files = NodeDeviceFiles {
            control: vec!["/dev/nvidiactl".into()],
            mig_caps: NodeDeviceFiles::synthetic_mig_minors(8),
            ..Default::default()
        };
        let mode_of = |spec: &Value, name: &str, path: &str| -> Option<u64> {
            let edits = if name.is_empty() {
                &spec["containerEdits"]
            } else {
                &spec["devices"]
                    .as_array()
                    .expect("devices")
                    .iter()
                    .find(|d| d["name"] == name)
                    .expect("device")["containerEdits"]
            };
            let node = edits["deviceNodes"]
                .as_array()
                .expect("nodes")
                .iter()
                .find(|n| n["path"] == path)
                .expect("node");
            node.get("fileMode").map(|m| m.as_u64().expect("a number"))
        };
        let gi = 3 + 135 + 9 * inventory.gpus[1].mig_devices[0].gpu_instance_id;
        let cap = format!("/dev/nvidia-caps/nvidia-cap{gi}");
        let strategies = [DeviceListStrategy::CdiCri];

        // Nothing seen on the host: only the capability nodes get a mode.
        let unseen = spec(&inventory, &files, "/", "/", &strategies, &|_| None);
        assert_eq!(mode_of(&unseen, "1:0", &cap), Some(0o444));
        assert_eq!(mode_of(&unseen, "1:0", "/dev/nvidia1"), None);
        assert_eq!(mode_of(&unseen, "", "/dev/nvidiactl"), None);

        // Seen: the host's permission bits, file-type bits dropped.
        let host = |path: &str| match path {
            "/dev/nvidia1" => Some(0o020_666),
            "/dev/nvidiactl" => Some(0o660),
            p if p.starts_with("/dev/nvidia-caps/") => Some(0o400),
            _ => None,
        };
        let seen = spec(&inventory, &files, "/", "/", &strategies, &host);
        assert_eq!(mode_of(&seen, "1:0", &cap), Some(0o400));
        assert_eq!(mode_of(&seen, "1:0", "/dev/nvidia1"), Some(0o666));
        assert_eq!(mode_of(&seen, "", "/dev/nvidiactl"), Some(0o660));
    }

    /// `NVIDIA_VISIBLE_DEVICES=void` only when every strategy is CDI: beside
    /// `envvar` or `volume-mounts` it would replace the answer's value.
    #[test]
    fn void_is_set_only_when_every_strategy_is_cdi() {
        use DeviceListStrategy::*;
        let inventory = simulated::from_instance("g5.xlarge", None).expect("sim");
        let files = NodeDeviceFiles::default();
        let cases: [(&[DeviceListStrategy], bool); 7] = [
            (&[CdiCri], true),
            (&[CdiAnnotations], true),
            (&[CdiAnnotations, CdiCri], true),
            (&[Envvar, CdiCri], false),
            (&[Envvar, CdiAnnotations], false),
            (&[VolumeMounts, CdiCri], false),
            (&[Envvar, VolumeMounts, CdiAnnotations, CdiCri], false),
        ];
        for (strategies, void) in cases {
            let spec = spec(&inventory, &files, "/", "/", strategies, &|_| None);
            let env = spec["containerEdits"].get("env");
            if void {
                assert_eq!(
                    env,
                    Some(&json!(["NVIDIA_VISIBLE_DEVICES=void"])),
                    "{strategies:?}"
                );
            } else {
                assert_eq!(env, None, "{strategies:?}");
            }
        }
    }
}
