//! The node publishes its MIG state (`gpu-slicer.io/mig-state`) on its
//! Node: the real daemon on the fake NVML in MIG mode, the stand-in kubelet
//! (with PodResources) and the stub API server (with the node's Pods). The
//! annotation shows the instances with their UUIDs, an instance a pod was
//! allocated shows held, it shows free again once the pod is gone from the
//! kubelet and the API server, and a write the API server refuses is
//! retried until it lands.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::common::{TIMEOUT, aside, expect, free_port, temp_dir, wait_for};
use crate::kube_stub::KubeStub;
use crate::mig_apply::{kubelet, start_with, write_topology};
use gpu_slicer_core::mig_state::{GpuMigState, parse};
use kubelet_sim::{Container, Pod};

const ANNOTATION: &str = "gpu-slicer.io/mig-state";

fn published(stub: &KubeStub) -> Option<Vec<GpuMigState>> {
    stub.annotation(ANNOTATION)
        .map(|text| parse(&text).unwrap_or_else(|e| panic!("{text}: {e}")))
}

/// The (profile, held) of every instance published, GPU by GPU.
fn held(stub: &KubeStub) -> Vec<Vec<(String, Option<bool>)>> {
    published(stub)
        .unwrap_or_default()
        .iter()
        .map(|g| {
            g.instances
                .iter()
                .map(|i| (i.profile.clone(), i.held))
                .collect()
        })
        .collect()
}

fn annotation_writes(stub: &KubeStub) -> usize {
    stub.patches()
        .iter()
        .filter(|p| p.body["metadata"]["annotations"].get(ANNOTATION).is_some())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_publishes_its_instances_and_which_pods_hold_them() {
    let dir = temp_dir();
    let topology = aside(dir.path()).join("inventory.json");
    write_topology(&topology, "all-balanced");
    let stub = KubeStub::start(
        "n1",
        &[("nvidia.com/mig.config", "all-balanced")],
        json!([]),
    )
    .await;
    // The first write of the annotation gets a 500: it must be retried.
    stub.fail_patches(
        1,
        Arc::new(|patch: &Value| patch["metadata"]["annotations"].get(ANNOTATION).is_some()),
    );
    let kubelet = kubelet(dir.path()).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let _daemon = start_with(dir.path(), &topology, &stub, &metrics, &[], &[]);
    wait_for(
        &kubelet,
        &expect(&[
            ("nvidia.com/mig-1g.5gb", 4),
            ("nvidia.com/mig-2g.10gb", 2),
            ("nvidia.com/mig-3g.20gb", 2),
        ]),
    )
    .await;

    // Every instance, with its placement and UUID, none held.
    let free = vec![
        ("2g.10gb".to_string(), Some(false)),
        ("1g.5gb".to_string(), Some(false)),
        ("1g.5gb".to_string(), Some(false)),
        ("3g.20gb".to_string(), Some(false)),
    ];
    stub.wait_until(
        "the MIG state published",
        |s| held(s) == [free.clone(), free.clone()],
        TIMEOUT,
    )
    .await;
    assert!(
        annotation_writes(&stub) >= 2,
        "the refused write was retried"
    );
    let state = published(&stub).expect("published");
    assert_eq!(state[1].index, Some(1));
    assert!(state.iter().all(|g| g.mig));
    let starts: Vec<u32> = state[0].instances.iter().map(|i| i.start).collect();
    assert_eq!(starts, [0, 2, 3, 4]);
    let advertised: BTreeSet<String> = [
        "nvidia.com/mig-1g.5gb",
        "nvidia.com/mig-2g.10gb",
        "nvidia.com/mig-3g.20gb",
    ]
    .iter()
    .flat_map(|r| kubelet.devices(r))
    .map(|d| d.id)
    .collect();
    let uuids: BTreeSet<String> = state
        .iter()
        .flat_map(|g| &g.instances)
        .flat_map(|i| i.devices.clone())
        .collect();
    assert_eq!(uuids, advertised);

    // A pod is allocated a 3g slice: its instance shows held.
    stub.add_pod("default", "train");
    let pod =
        Pod::new("train").container(Container::new("main").limit("nvidia.com/mig-3g.20gb", 1));
    kubelet.admit(&pod).await.expect("admitted");
    let taken: Vec<String> = kubelet
        .allocated("nvidia.com/mig-3g.20gb")
        .into_iter()
        .collect();
    assert_eq!(taken.len(), 1);
    let holds_taken = |s: &KubeStub| {
        published(s).is_some_and(|state| {
            let held: Vec<_> = state
                .iter()
                .flat_map(|g| &g.instances)
                .filter(|i| i.held == Some(true))
                .collect();
            held.len() == 1 && held[0].profile == "3g.20gb" && held[0].devices == taken
        })
    };
    stub.wait_until("the pod's instance shown held", holds_taken, TIMEOUT)
        .await;

    // The pod goes away (the kubelet releases it, the API server deletes
    // it): free again.
    kubelet.release("train");
    stub.delete_pod("default", "train");
    stub.wait_until(
        "every instance free again",
        |s| held(s) == [free.clone(), free.clone()],
        TIMEOUT,
    )
    .await;
    kubelet.shutdown().await;
}
