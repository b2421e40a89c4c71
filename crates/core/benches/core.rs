//! Micro-benchmarks of the pure core: the planner, Allocate response
//! building and preferred allocation, on simulated nodes of 8 to 10,000
//! devices.
//!
//! ```sh
//! cargo bench --bench core                 # everything
//! cargo bench --bench core -- preferred    # only names containing "preferred"
//! ```
//!
//! Nodes (all a simulated p4d.24xlarge, 8 × A100-SXM4-40GB):
//! - `gpus-8`: MIG off, whole GPUs (`nvidia.com/gpu`, 8 devices);
//! - `mig-56`: `all-1g.5gb` under `mixed` (`nvidia.com/mig-1g.5gb`, 56 devices);
//! - `replicas-1024`: MIG off, time-slicing 128 replicas per GPU;
//! - `replicas-10000`: MIG off, time-slicing 1,250 replicas per GPU.
//!
//! Preferred allocation is measured as the kubelet asks it: every advertised
//! id available except those already in use (about one in ten, spread over
//! the GPUs; none for whole GPUs so that size 8 fits), nothing
//! must-included, sizes 1, 2 and 8.

use std::collections::HashMap;
use std::sync::LazyLock;

use divan::{Bencher, black_box};
use gpu_slicer_core::allocate::{NodeDeviceFiles, allocate};
use gpu_slicer_core::config::{AllocationPolicy, Config, MigStrategy, ReplicatedResource};
use gpu_slicer_core::gpu::{Inventory, simulated};
use gpu_slicer_core::placement::{LinkScores, preferred};
use gpu_slicer_core::plan::{Resource, plan};

fn main() {
    divan::main();
}

/// Node names, smallest first.
const NODES: &[&str] = &["gpus-8", "mig-56", "replicas-1024", "replicas-10000"];

struct Node {
    inventory: Inventory,
    config: Config,
    /// The single resource the node advertises.
    resource: Resource,
    files: NodeDeviceFiles,
    links: LinkScores,
    /// Every id minus those in use: what the kubelet sends as available.
    available: Vec<String>,
}

fn time_sliced(replicas: u32) -> Config {
    let mut config = Config::default();
    config.sharing.time_slicing.resources =
        vec![ReplicatedResource::every("nvidia.com/gpu", replicas)];
    config
}

fn build(name: &str) -> Node {
    let (layout, config) = match name {
        "gpus-8" => (None, Config::default()),
        "mig-56" => {
            let mut config = Config::default();
            config.flags.mig_strategy = MigStrategy::Mixed;
            (Some("all-1g.5gb"), config)
        }
        "replicas-1024" => (None, time_sliced(128)),
        "replicas-10000" => (None, time_sliced(1250)),
        other => panic!("unknown benchmark node {other}"),
    };
    let inventory = simulated::from_instance("p4d.24xlarge", layout).expect("simulated node");
    let planned = plan(&inventory, &config);
    assert_eq!(planned.resources.len(), 1, "{name}: one resource expected");
    let resource = planned.resources.into_iter().next().expect("one resource");
    let whole_gpus = name == "gpus-8";
    // Deterministic, uneven "in use" set: ids whose scrambled position is 0 mod 10.
    let available = resource
        .devices
        .iter()
        .enumerate()
        .filter(|(i, _)| whole_gpus || (i * 7919) % 10 != 0)
        .map(|(_, d)| d.id.clone())
        .collect();
    Node {
        files: NodeDeviceFiles {
            control: Vec::new(),
            mig_caps: NodeDeviceFiles::synthetic_mig_minors(inventory.gpus.len() as u32),
            ..Default::default()
        },
        links: LinkScores::from_inventory(&inventory),
        inventory,
        config,
        resource,
        available,
    }
}

static FIXTURES: LazyLock<HashMap<&'static str, Node>> =
    LazyLock::new(|| NODES.iter().map(|&n| (n, build(n))).collect());

fn node(name: &str) -> &'static Node {
    &FIXTURES[name]
}

/// Inventory + configuration → resources (what start-up and every reload do).
#[divan::bench(args = NODES)]
fn plan_node(bencher: Bencher, name: &str) {
    let n = node(name);
    bencher.bench(|| plan(black_box(&n.inventory), black_box(&n.config)));
}

/// One container's Allocate response for `N` devices (spread over the GPUs).
#[divan::bench(args = NODES, consts = [1, 8])]
fn allocate_response<const N: usize>(bencher: Bencher, name: &str) {
    let n = node(name);
    let step = (n.resource.devices.len() / N).max(1);
    let ids: Vec<String> = n
        .resource
        .devices
        .iter()
        .step_by(step)
        .take(N)
        .map(|d| d.id.clone())
        .collect();
    bencher.bench(|| {
        allocate(
            black_box(&n.resource),
            black_box(&ids),
            &n.config.flags,
            &n.files,
            "00000000-0000-4000-8000-000000000000",
        )
    });
}

fn bench_preferred(bencher: Bencher, name: &str, size: usize, policy: AllocationPolicy) {
    let n = node(name);
    bencher.bench(|| {
        preferred(
            black_box(&n.resource),
            black_box(&n.available),
            &[],
            size,
            policy,
            &n.links,
        )
    });
}

/// GetPreferredAllocation's core, `distributed` policy, size `N`.
#[divan::bench(args = NODES, consts = [1, 2, 8])]
fn preferred_distributed<const N: usize>(bencher: Bencher, name: &str) {
    bench_preferred(bencher, name, N, AllocationPolicy::Distributed);
}

/// GetPreferredAllocation's core, `packed` policy, size `N`.
#[divan::bench(args = NODES, consts = [1, 2, 8])]
fn preferred_packed<const N: usize>(bencher: Bencher, name: &str) {
    bench_preferred(bencher, name, N, AllocationPolicy::Packed);
}
