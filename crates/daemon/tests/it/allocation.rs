//! What a container receives, end to end: CDI names that resolve in the
//! written CDI spec, and gRPC errors with codes that fit.

use std::path::Path;

use crate::common::{Daemon, expect, kubelet, temp_dir, wait_for};
use hyper_util::rt::TokioIo;
use kubelet_sim::api::device_plugin_client::DevicePluginClient;
use kubelet_sim::api::{AllocateRequest, ContainerAllocateRequest};
use kubelet_sim::{Container, Pod};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

async fn plugin_client(socket: &Path) -> DevicePluginClient<Channel> {
    let path = socket.to_path_buf();
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .expect("connect to the plugin");
    DevicePluginClient::new(channel)
}

fn p4d_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--simulate",
        "p4d.24xlarge",
        "--mig-config",
        "all-balanced",
        "--mig-strategy",
        "mixed",
    ];
    args.extend_from_slice(extra);
    args
}

const BALANCED: &[(&str, usize)] = &[
    ("nvidia.com/mig-1g.5gb", 16),
    ("nvidia.com/mig-2g.10gb", 8),
    ("nvidia.com/mig-3g.20gb", 8),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdi_names_resolve_in_the_written_spec() {
    let dir = temp_dir();
    let cdi_dir = dir.path().join("cdi");
    let kubelet = kubelet(dir.path()).await;
    let cdi = cdi_dir.to_str().expect("utf-8");
    let _daemon = Daemon::start(
        dir.path(),
        &p4d_args(&[
            "--device-list-strategy",
            "cdi-annotations,cdi-cri",
            "--device-id-strategy",
            "index",
            "--cdi-spec-dir",
            cdi,
            // This node has no /dev/gdrdrv: no gdrcopy name, no spec.
            "--gdrcopy-enabled",
        ]),
    );
    wait_for(&kubelet, &expect(BALANCED)).await;

    let pod = Pod::new("cdi").container(Container::new("main").limit("nvidia.com/mig-2g.10gb", 1));
    let admission = kubelet.admit(&pod).await.expect("admitted");
    let container = &admission.containers[0];
    assert!(
        !container.merged.envs.contains_key("NVIDIA_VISIBLE_DEVICES"),
        "CDI-only strategies set no NVIDIA_VISIBLE_DEVICES: {:?}",
        container.merged.envs
    );
    let names = &container.merged.cdi_devices;
    assert_eq!(names.len(), 1, "only the device, no gdrcopy=all: {names:?}");
    assert_eq!(container.merged.envs["NVIDIA_GDRCOPY"], "enabled");
    assert!(
        !cdi_dir
            .join("k8s.device-plugin.nvidia.com-gdrcopy.json")
            .exists()
    );
    let (kind, id) = names[0].split_once('=').expect("vendor/class=name");
    assert_eq!(kind, "k8s.device-plugin.nvidia.com/gpu");
    assert!(id.contains(':'), "index form for a MIG device: {id}");
    let annotation = container
        .merged
        .annotations
        .iter()
        .find(|(k, _)| k.starts_with("cdi.k8s.io/nvidia-device-plugin_"))
        .map(|(_, v)| v.clone());
    assert_eq!(annotation.as_deref(), Some(names[0].as_str()));

    let spec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cdi_dir.join("k8s.device-plugin.nvidia.com-gpu.json"))
            .expect("the CDI spec was written"),
    )
    .expect("JSON");
    assert_eq!(spec["kind"], "k8s.device-plugin.nvidia.com/gpu");
    let device = spec["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .find(|d| d["name"] == id)
        .unwrap_or_else(|| panic!("{id} is not in the CDI spec"));
    assert_eq!(
        device["containerEdits"]["deviceNodes"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    kubelet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_codes_that_fit() {
    let dir = temp_dir();
    let kubelet = kubelet(dir.path()).await;
    let _daemon = Daemon::start(dir.path(), &p4d_args(&[]));
    wait_for(&kubelet, &expect(BALANCED)).await;
    let foreign = kubelet
        .devices("nvidia.com/mig-2g.10gb")
        .first()
        .map(|d| d.id.clone())
        .expect("a 2g device");

    let mut client = plugin_client(&dir.path().join("nvidia-mig-1g.5gb.sock")).await;
    let allocate = |ids: Vec<String>| AllocateRequest {
        container_requests: vec![ContainerAllocateRequest { devices_ids: ids }],
    };

    let status = client
        .allocate(allocate(vec![foreign.clone()]))
        .await
        .expect_err("a device of another resource is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        status.message(),
        format!(
            "invalid allocation request for \"nvidia.com/mig-1g.5gb\": invalid request: device {foreign} belongs to \
             resource nvidia.com/mig-2g.10gb; one request cannot mix resources"
        )
    );

    let status = client
        .allocate(allocate(vec!["MIG-nope".into()]))
        .await
        .expect_err("an unknown device is refused");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(
        status.message(),
        "invalid allocation request for \"nvidia.com/mig-1g.5gb\": invalid request: unknown device: MIG-nope"
    );
    kubelet.shutdown().await;
}

/// A CDI strategy whose spec cannot be written would hand out device names
/// no runtime resolves: refused at start, saying what to mount.
#[test]
fn a_cdi_strategy_without_a_writable_spec_directory_is_refused_at_start() {
    let dir = temp_dir();
    // A file where the spec directory should be.
    let blocked = crate::common::aside(dir.path()).join("cdi");
    std::fs::write(&blocked, "not a directory").expect("plant a file");
    let out = std::process::Command::new(crate::BIN)
        .args([
            "run",
            "--simulate",
            "g5.xlarge",
            "--device-list-strategy",
            "cdi-cri",
            "--cdi-spec-dir",
        ])
        .arg(&blocked)
        .arg("--device-plugin-path")
        .arg(dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "error: a CDI device-list strategy is on, but the CDI spec cannot be written in {}: ",
            blocked.display()
        )),
        "{stderr}"
    );
    assert!(
        last.contains("mount the host's /var/run/cdi into the pod"),
        "{last}"
    );
}
