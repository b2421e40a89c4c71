//! The demand-driven MIG decision at cluster scale: 1,000 GPU nodes
//! (8,000 GPUs: a third each p4d.24xlarge A100-40GB, p5.48xlarge H100,
//! p5e.48xlarge H200), every GPU in the balanced layout with about 70 % of
//! its instances held, and 10,000 pending pods asking for the three models'
//! 1g, 2g and 3g profiles in a mix unlike the layout (1 % of them for two
//! slices on one node).
//!
//! ```sh
//! cargo bench -p gpu-slicer-core --bench mig_demand
//! ```

use std::sync::LazyLock;

use divan::{Bencher, black_box};
use gpu_slicer_core::gpu::catalog;
use gpu_slicer_core::mig_demand::{
    Cluster, Demand, Gpu, Instance, Node, PendingPod, Policy, Settings, decide,
};

fn main() {
    // What each policy decides, once, beside the timings.
    let (cluster, demand) = &*INPUT;
    for policy in Policy::ALL {
        let plan = decide(cluster, demand, &settings(policy));
        println!(
            "{}: {} of {} pods schedulable, {} GPUs changed",
            policy.name(),
            plan.schedulable(),
            demand.pods.len(),
            plan.changes.len()
        );
    }
    // The peak memory of the input and three decisions (Linux only): a
    // floor for what a controller holding this cluster would need.
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for line in status
            .lines()
            .filter(|l| l.starts_with("VmHWM") || l.starts_with("VmRSS"))
        {
            println!("{line}");
        }
    }
    divan::main();
}

/// A fixed-seed generator (xorshift64*): the same cluster every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const MODELS: [(&str, [&str; 3]); 3] = [
    ("A100-40GB", ["1g.5gb", "2g.10gb", "3g.20gb"]),
    ("H100-80GB", ["1g.10gb", "2g.20gb", "3g.40gb"]),
    ("H200", ["1g.18gb", "2g.35gb", "3g.71gb"]),
];

const NODES: usize = 1_000;
const PODS: usize = 10_000;

static INPUT: LazyLock<(Cluster, Demand)> = LazyLock::new(|| {
    let mut rng = Rng(0x5EED_2024);
    let mut cluster = Cluster::default();
    for n in 0..NODES {
        let model = catalog::model(MODELS[n % 3].0).unwrap();
        let catalog::MigLayout::Instances(profiles) =
            catalog::layout(model, "all-balanced").unwrap()
        else {
            unreachable!("the balanced layout has instances")
        };
        let placed = catalog::place(model, &profiles).unwrap();
        let gpus = (0..8)
            .map(|_| Gpu {
                model,
                mig_enabled: true,
                instances: placed
                    .iter()
                    .map(|p| Instance {
                        profile: p.profile,
                        start: p.start,
                        held: rng.below(10) < 7,
                        free_since_s: 0,
                    })
                    .collect(),
            })
            .collect();
        cluster.nodes.push(Node {
            name: format!("node-{n}"),
            frozen: false,
            gpus,
        });
    }
    // 70 % 1g, 20 % 2g, 10 % 3g: more small slices than the layout has.
    let pods = (0..PODS)
        .map(|k| {
            let profiles = MODELS[rng.below(3) as usize].1;
            let r = rng.below(100);
            let profile = profiles[if r < 70 {
                0
            } else if r < 90 {
                1
            } else {
                2
            }];
            let count = if rng.below(100) == 0 { 2 } else { 1 };
            PendingPod {
                name: format!("pod-{k}"),
                slices: vec![(profile.to_string(), count)],
                eligible: None,
            }
        })
        .collect();
    (
        cluster,
        Demand {
            pods,
            in_flight: Vec::new(),
        },
    )
});

fn settings(policy: Policy) -> Settings {
    Settings {
        policy,
        now_s: 1_000,
        min_free_age_s: 0,
    }
}

#[divan::bench(args = [Policy::PerInstance, Policy::WholeGpu, Policy::Fixed], sample_count = 10)]
fn decide_1000_nodes_10000_pods(bencher: Bencher, policy: Policy) {
    let (cluster, demand) = &*INPUT;
    bencher.bench(|| decide(black_box(cluster), black_box(demand), &settings(policy)));
}
