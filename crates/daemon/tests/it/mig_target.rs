//! `--apply-mig-layouts` with a per-GPU target (`gpu-slicer.io/mig-target`):
//! only free instances change, at exactly the placements the target names;
//! an instance a pod holds (the stand-in kubelet's PodResources) keeps its
//! UUID and stays advertised; a target that would need it destroyed is
//! refused before anything is withdrawn or changed.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::common::{
    TIMEOUT, aside, expect, fake_nvml, free_port, start_logged, temp_dir, wait_for,
};
use crate::kube_stub::KubeStub;
use gpu_slicer_core::gpu::simulated;
use kubelet_sim::{Container, Kubelet, Options, Pod};

const STATE: &str = "nvidia.com/mig.config.state";
const TARGET: &str = "gpu-slicer.io/mig-target";
const ONE_G: &str = "nvidia.com/mig-1g.5gb";
const THREE_G: &str = "nvidia.com/mig-3g.20gb";

fn events(stub: &KubeStub, reason: &str) -> Vec<String> {
    stub.created_events()
        .iter()
        .filter(|e| e["reason"] == reason)
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The fake driver's GPU 0: its MIG devices as (GPU instance id, UUID).
fn driver_instances(topology: &Path) -> BTreeSet<(u64, String)> {
    let node: Value =
        serde_json::from_str(&std::fs::read_to_string(topology).expect("read")).expect("json");
    node["gpus"][0]["mig_devices"]
        .as_array()
        .expect("MIG devices")
        .iter()
        .map(|d| {
            (
                d["gpu_instance_id"].as_u64().expect("GI id"),
                d["uuid"].as_str().expect("uuid").to_string(),
            )
        })
        .collect()
}

/// What the held device looked like to the kubelet, sampled on every
/// change of the kubelet's state: ever missing from the list, ever
/// Unhealthy.
#[derive(Default, Debug, Clone, Copy)]
struct Seen {
    missing: bool,
    unhealthy: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_instances_make_room_for_a_3g_and_the_held_one_is_never_touched() {
    let dir = temp_dir();
    let topology = aside(dir.path()).join("inventory.json");
    let mut inventory = simulated::from_instance("p4d.24xlarge", Some("all-1g.5gb")).expect("p4d");
    inventory.gpus.truncate(1);
    std::fs::write(&topology, serde_json::to_string(&inventory).expect("json")).expect("write");
    let stub = KubeStub::start("n1", &[], json!([])).await;
    let pods = aside(dir.path()).join("pod-resources").join("kubelet.sock");
    let kubelet = Kubelet::start(Options {
        pod_resources_socket: Some(pods.clone()),
        ..Options::new(dir.path())
    })
    .await
    .expect("stand-in kubelet");
    let lib = fake_nvml();
    let metrics = format!("127.0.0.1:{}", free_port());
    let (_daemon, _log) = start_logged(
        dir.path(),
        &[
            "--nvml-lib",
            lib.to_str().expect("utf-8"),
            "--mig-strategy",
            "mixed",
            "--node-name",
            "n1",
            "--kube-api-url",
            &stub.url,
            "--apply-mig-layouts",
            "--metrics-address",
            &metrics,
            "--mig-apply-retry-ms",
            "200",
            "--pod-resources-socket",
            pods.to_str().expect("utf-8"),
        ],
        &[("FAKE_NVML_TOPOLOGY", topology.to_str().expect("utf-8"))],
    );
    wait_for(&kubelet, &expect(&[(ONE_G, 7)])).await;

    // A pod holds one 1g.5gb: where is it?
    let pod = Pod::new("infer").container(Container::new("main").limit(ONE_G, 1));
    kubelet.admit(&pod).await.expect("admitted");
    let held = kubelet
        .allocated(ONE_G)
        .into_iter()
        .next()
        .expect("one device held");
    let before = driver_instances(&topology);
    let held_gi = before
        .iter()
        .find(|(_, uuid)| *uuid == held)
        .map(|(gi, _)| *gi)
        .expect("the held device is a MIG device of GPU 0");
    // 1-slice instances are GPU instances 7..=13 at memory slices 0..=6.
    let held_start = held_gi - 7;
    let free_half = if held_start < 4 { 4 } else { 0 };

    // The held device as the kubelet lists it, looked at on every change
    // of the kubelet's state while the rest of the test runs.
    let seen = Mutex::new(Seen::default());
    let watch_held = kubelet.wait_for("the test to end", TIMEOUT * 10, |k| {
        let devices = k.devices(ONE_G);
        let mut s = seen.lock().expect("seen");
        match devices.iter().find(|d| d.id == held) {
            None => s.missing = true,
            Some(d) if !d.healthy => s.unhealthy = true,
            Some(_) => {}
        }
        false
    });
    let changes = async {
        // The target keeps the held 1g and asks for a 3g on the other half:
        // the six free 1g go, the 3g comes.
        let target = json!([{ "index": 0, "instances": [
            { "profile": "1g.5gb", "start": held_start },
            { "profile": "3g.20gb", "start": free_half },
        ]}])
        .to_string();
        stub.set_annotation(TARGET, Some(&target));
        stub.wait_until(
            "a MigTargetApplied event",
            |s| !events(s, "MigTargetApplied").is_empty(),
            TIMEOUT,
        )
        .await;
        wait_for(&kubelet, &expect(&[(ONE_G, 1), (THREE_G, 1)])).await;
        // The applier writes the Event, then the state label: wait for it.
        stub.wait_until(
            "state success",
            |s| s.label(STATE).as_deref() == Some("success"),
            TIMEOUT,
        )
        .await;
        let applied = events(&stub, "MigTargetApplied")[0].clone();
        assert!(
            applied.starts_with(
                "MIG target applied (1 GPU(s) changed): GPU 0: destroyed 1g.5gb at memory slice "
            ) && applied.ends_with(&format!("; created 3g.20gb at memory slice {free_half}")),
            "{applied}"
        );
        assert!(
            !applied.contains(&format!("1g.5gb at memory slice {held_start},"))
                && !applied.contains(&format!("1g.5gb at memory slice {held_start};")),
            "the held instance is not destroyed: {applied}"
        );
        let after = driver_instances(&topology);
        assert!(after.contains(&(held_gi, held.clone())), "{after:?}");
        assert_eq!(after.len(), 2, "{after:?}");
        let held_now = kubelet
            .devices(ONE_G)
            .into_iter()
            .find(|d| d.id == held)
            .expect("the held device is still advertised");
        assert!(held_now.healthy);
        let during_change = *seen.lock().expect("seen");
        assert!(
            !during_change.missing,
            "the held device left the list during the change"
        );
        // The handshake withdraws every MIG-capable GPU while a change runs:
        // the held device was advertised Unhealthy meanwhile (docs say so).

        // A target that needs the held instance's slices: refused before
        // anything is withdrawn, nothing changes, the reason names the pod.
        *seen.lock().expect("seen") = Seen::default();
        let needs_held = json!([{ "index": 0, "instances": [
            { "profile": "3g.20gb", "start": if held_start < 4 { 0 } else { 4 } },
            { "profile": "3g.20gb", "start": free_half },
        ]}])
        .to_string();
        stub.set_annotation(TARGET, Some(&needs_held));
        stub.wait_until(
            "a MigTargetFailed event",
            |s| !events(s, "MigTargetFailed").is_empty(),
            TIMEOUT,
        )
        .await;
        stub.wait_until(
            "state failed",
            |s| s.label(STATE).as_deref() == Some("failed"),
            TIMEOUT,
        )
        .await;
        let failed = events(&stub, "MigTargetFailed")[0].clone();
        assert_eq!(
            failed,
            format!(
                "MIG target not applied: GPU 0 ({}) cannot get its target: pod default/infer ({ONE_G}) holds 1g.5gb at memory slice {held_start} \
             (GPU instance {held_gi}), which the target does not keep; 3g.20gb at memory slice {} needs its memory slices; \
             stop that work, or keep those instances in the target",
                inventory.gpus[0].uuid,
                if held_start < 4 { 0 } else { 4 }
            )
        );
        assert_eq!(driver_instances(&topology), after, "nothing changed");
        wait_for(&kubelet, &expect(&[(ONE_G, 1), (THREE_G, 1)])).await;
        let refused = *seen.lock().expect("seen");
        assert!(
            !refused.missing && !refused.unhealthy,
            "a refused target disturbed the held device: {refused:?}"
        );
    };
    tokio::select! {
        () = changes => {}
        ended = watch_held => panic!("the kubelet watch ended first: {ended:?}"),
    }
    kubelet.shutdown().await;
}
