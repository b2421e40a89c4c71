//! `--apply-mig-layouts` with a per-GPU target (`gpu-slicer.io/mig-target`):
//! only free instances change, at exactly the placements the target names;
//! an instance a pod holds (the stand-in kubelet's PodResources) keeps its
//! UUID and stays advertised; a target that would need it destroyed is
//! refused before anything is withdrawn or changed. While a target
//! changes one GPU, only the instances it destroys are withdrawn: every
//! other device of the node, the kept ones of that GPU included, stays
//! Healthy in every list the kubelet is sent.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::common::{
    Daemon, TIMEOUT, aside, expect, fake_nvml, free_port, start_logged, temp_dir, wait_for,
};
use crate::kube_stub::KubeStub;
use gpu_slicer_core::gpu::simulated;
use kubelet_sim::{Container, Kubelet, Options, Pod};

const STATE: &str = "nvidia.com/mig.config.state";
const TARGET: &str = "gpu-slicer.io/mig-target";
const ONE_G: &str = "nvidia.com/mig-1g.5gb";
const THREE_G: &str = "nvidia.com/mig-3g.20gb";

/// The node daemon on the fake NVML in apply mode (mixed strategy, node
/// `n1`, a short retry), with `extra` arguments; its log goes aside.
fn start_applier(
    dir: &Path,
    stub: &KubeStub,
    pods: &Path,
    topology: &Path,
    extra: &[&str],
) -> (Daemon, PathBuf) {
    let lib = fake_nvml();
    let mut args = vec![
        "--nvml-lib",
        lib.to_str().expect("utf-8"),
        "--mig-strategy",
        "mixed",
        "--node-name",
        "n1",
        "--kube-api-url",
        &stub.url,
        "--apply-mig-layouts",
        "--mig-apply-retry-ms",
        "200",
        "--pod-resources-socket",
        pods.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    start_logged(
        dir,
        &args,
        &[("FAKE_NVML_TOPOLOGY", topology.to_str().expect("utf-8"))],
    )
}

fn events(stub: &KubeStub, reason: &str) -> Vec<String> {
    stub.created_events()
        .iter()
        .filter(|e| e["reason"] == reason)
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The fake driver's GPU 0: its MIG devices as (GPU instance id, UUID).
fn driver_instances(topology: &Path) -> BTreeSet<(u64, String)> {
    gpu_instances(topology, 0)
}

/// The fake driver's GPU `gpu`: its MIG devices as (GPU instance id, UUID).
fn gpu_instances(topology: &Path, gpu: usize) -> BTreeSet<(u64, String)> {
    let node: Value =
        serde_json::from_str(&std::fs::read_to_string(topology).expect("read")).expect("json");
    node["gpus"][gpu]["mig_devices"]
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
    let metrics = format!("127.0.0.1:{}", free_port());
    let _daemon = start_applier(
        dir.path(),
        &stub,
        &pods,
        &topology,
        &["--metrics-address", &metrics],
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
            !during_change.missing && !during_change.unhealthy,
            "the held device left the list, or was Unhealthy, during the change: {during_change:?}"
        );

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

/// Where a device of the kubelet's list lives: (GPU, GPU instance id).
fn locate(topology: &Path, gpus: usize, uuid: &str) -> (usize, u64) {
    (0..gpus)
        .find_map(|gpu| {
            gpu_instances(topology, gpu)
                .into_iter()
                .find(|(_, u)| u == uuid)
                .map(|(gi, _)| (gpu, gi))
        })
        .unwrap_or_else(|| panic!("{uuid} is no MIG device of the fake driver"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_withdraws_only_the_instances_it_destroys_and_every_other_device_stays_healthy() {
    let dir = temp_dir();
    let topology = aside(dir.path()).join("inventory.json");
    let mut inventory = simulated::from_instance("p4d.24xlarge", Some("all-1g.5gb")).expect("p4d");
    inventory.gpus.truncate(2);
    std::fs::write(&topology, serde_json::to_string(&inventory).expect("json")).expect("write");
    let stub = KubeStub::start("n1", &[], json!([])).await;
    let pods = aside(dir.path()).join("pod-resources").join("kubelet.sock");
    let kubelet = Kubelet::start(Options {
        pod_resources_socket: Some(pods.clone()),
        record_updates: true,
        ..Options::new(dir.path())
    })
    .await
    .expect("stand-in kubelet");
    let _daemon = start_applier(dir.path(), &stub, &pods, &topology, &[]);
    wait_for(&kubelet, &expect(&[(ONE_G, 14)])).await;

    // One pod holding a slice on each GPU: single-slice pods are admitted
    // until both GPUs hold one (8 at most: a GPU has 7), then the others
    // are released, so both GPUs keep free instances beside a held one.
    let mut on_gpu: [Option<(String, String, u64)>; 2] = [None, None];
    for n in 0..8 {
        if on_gpu.iter().all(Option::is_some) {
            break;
        }
        let name = format!("p{n}");
        let pod = Pod::new(name.as_str()).container(Container::new("main").limit(ONE_G, 1));
        kubelet.admit(&pod).await.expect("admitted");
        let device = kubelet
            .allocations()
            .into_iter()
            .find(|a| a.pod == name)
            .and_then(|a| a.device_ids.into_iter().next())
            .expect("the pod holds a device");
        let (gpu, gi) = locate(&topology, 2, &device);
        if on_gpu[gpu].is_none() {
            on_gpu[gpu] = Some((name, device, gi));
        }
    }
    let [Some(zero), Some(one)] = on_gpu else {
        panic!("no pod landed on one of the GPUs: {on_gpu:?}");
    };
    for a in kubelet.allocations() {
        if a.pod != zero.0 && a.pod != one.0 {
            kubelet.release(&a.pod);
        }
    }
    assert_eq!(kubelet.allocated(ONE_G).len(), 2);

    // The target changes GPU 0: it keeps the held 1g and one free 1g on
    // the held one's half, destroys the other five free 1g, and creates a
    // 3g on the other half. GPU 1 is not named.
    let (_, held, held_gi) = zero.clone();
    let held_start = held_gi - 7; // 1-slice GPU instances 7..=13 sit at slices 0..=6
    let (half, three_g_start) = if held_start < 4 { (0..4, 4) } else { (4..7, 0) };
    let kept_start = half
        .clone()
        .find(|s| *s != held_start)
        .expect("a free slice");
    let gpu0 = gpu_instances(&topology, 0);
    let uuid_at = |start: u64| {
        gpu0.iter()
            .find(|(gi, _)| *gi == start + 7)
            .map(|(_, uuid)| uuid.clone())
            .expect("a 1g at every slice")
    };
    let kept_free = uuid_at(kept_start);
    let destroyed: BTreeSet<String> = (0..7)
        .filter(|s| *s != held_start && *s != kept_start)
        .map(uuid_at)
        .collect();
    assert_eq!(destroyed.len(), 5);
    // Every device that stays: the two held, the kept free one, and GPU 1's.
    let staying: BTreeSet<String> = gpu_instances(&topology, 1)
        .into_iter()
        .map(|(_, uuid)| uuid)
        .chain([held.clone(), kept_free.clone()])
        .collect();
    assert_eq!(staying.len(), 9);
    assert!(staying.contains(&one.1));
    let first = kubelet.device_updates(ONE_G).len();
    let target = json!([{ "index": 0, "instances": [
        { "profile": "1g.5gb", "start": held_start },
        { "profile": "1g.5gb", "start": kept_start },
        { "profile": "3g.20gb", "start": three_g_start },
    ]}])
    .to_string();
    stub.set_annotation(TARGET, Some(&target));
    stub.wait_until(
        "state success",
        |s| s.label(STATE).as_deref() == Some("success"),
        TIMEOUT,
    )
    .await;
    wait_for(&kubelet, &expect(&[(ONE_G, 9), (THREE_G, 1)])).await;
    let applied = events(&stub, "MigTargetApplied");
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert!(
        applied[0].ends_with(&format!(
            "; created 3g.20gb at memory slice {three_g_start}"
        )),
        "{applied:?}"
    );

    // Every list the kubelet took in since the target was set (the one it
    // held then included).
    let updates = kubelet.device_updates(ONE_G);
    let since = &updates[first.saturating_sub(1)..];
    for (i, list) in since.iter().enumerate() {
        for uuid in &staying {
            let device = list.iter().find(|d| &d.id == uuid);
            assert!(
                device.is_some_and(|d| d.healthy),
                "list {i} of {}: {uuid} (held by {}) is {device:?}; every device the change keeps must stay Healthy",
                since.len(),
                [&zero, &one]
                    .iter()
                    .find(|p| &p.1 == uuid)
                    .map_or("no pod", |p| p.0.as_str()),
            );
        }
    }
    // The destroyed instances: withdrawn (all at once, while still listed)
    // before they vanish, never Healthy again after that, and gone from
    // the list in one update.
    let withdrawn_at = since
        .iter()
        .position(|list| {
            destroyed
                .iter()
                .all(|u| list.iter().any(|d| &d.id == u && !d.healthy))
        })
        .unwrap_or_else(|| {
            panic!("no list withdrew every instance the target destroys: {since:?}")
        });
    for list in &since[withdrawn_at..] {
        for d in list.iter().filter(|d| destroyed.contains(&d.id)) {
            assert!(
                !d.healthy,
                "{} advertised Healthy after its withdrawal",
                d.id
            );
        }
        let listed = list.iter().filter(|d| destroyed.contains(&d.id)).count();
        assert!(
            listed == 0 || listed == destroyed.len(),
            "the destroyed instances left the list one by one: {listed} of {} still listed",
            destroyed.len()
        );
    }
    assert!(
        since
            .last()
            .is_some_and(|l| l.iter().all(|d| !destroyed.contains(&d.id))),
        "the destroyed instances are still listed"
    );
    // The 3g arrives Healthy, in every list it is in.
    let three = kubelet.device_updates(THREE_G);
    assert!(
        three.iter().all(|l| l.len() == 1 && l[0].healthy),
        "{three:?}"
    );
    assert_eq!(
        kubelet.disconnects(ONE_G),
        0,
        "the kubelet never marked ONE_G Unhealthy itself"
    );
    // The driver: GPU 0 holds the two kept 1g and the 3g; GPU 1 is as it was.
    let after = gpu_instances(&topology, 0);
    assert!(after.contains(&(held_gi, held.clone())), "{after:?}");
    assert!(
        after.contains(&(kept_start + 7, kept_free.clone())),
        "{after:?}"
    );
    assert_eq!(after.len(), 3, "{after:?}");
    kubelet.shutdown().await;
}
