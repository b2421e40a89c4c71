//! The demand-driven MIG decision: table tests for the basic cases and
//! property tests for the rules every plan keeps.

use std::collections::HashMap;

use gpu_slicer_core::gpu::catalog::{self, GpuModel, MigProfile};
use gpu_slicer_core::mig_demand::{
    BatchWindow, Cluster, Demand, Gpu, Instance, InstanceAt, Node, PendingPod, Plan, PodOutcome,
    Policy, Settings, apply, decide, layout_valid,
};
use proptest::prelude::*;

fn model(key: &str) -> &'static GpuModel {
    catalog::model(key).unwrap()
}

fn profile(m: &'static GpuModel, name: &str) -> &'static MigProfile {
    m.mig_profile(name).unwrap()
}

/// `(profile, start, held)` per instance.
fn gpu(key: &str, instances: &[(&str, u32, bool)]) -> Gpu {
    let m = model(key);
    Gpu {
        model: m,
        mig_enabled: true,
        instances: instances
            .iter()
            .map(|&(p, start, held)| Instance {
                profile: profile(m, p),
                start,
                held,
                free_since_s: 0,
            })
            .collect(),
    }
}

fn node(name: &str, gpus: Vec<Gpu>) -> Node {
    Node {
        name: name.into(),
        frozen: false,
        gpus,
    }
}

fn pod(name: &str, slices: &[(&str, u32)]) -> PendingPod {
    PendingPod {
        name: name.into(),
        slices: slices.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
        eligible: None,
    }
}

fn pods(slices: &[&str]) -> Demand {
    Demand {
        pods: slices
            .iter()
            .enumerate()
            .map(|(i, s)| pod(&format!("p{i}"), &[(s, 1)]))
            .collect(),
        in_flight: Vec::new(),
    }
}

fn per_instance() -> Settings {
    Settings {
        policy: Policy::PerInstance,
        now_s: 1000,
        min_free_age_s: 0,
    }
}

fn at(m: &'static GpuModel, p: &str, start: u32) -> InstanceAt {
    InstanceAt {
        profile: profile(m, p),
        start,
    }
}

const A100: &str = "A100-40GB";

fn seven_1g(held: &[u32]) -> Gpu {
    let instances: Vec<(&str, u32, bool)> =
        (0..7).map(|s| ("1g.5gb", s, held.contains(&s))).collect();
    gpu(A100, &instances)
}

#[test]
fn a_3g_replaces_four_free_1g_beside_held_ones() {
    let cluster = Cluster {
        nodes: vec![node("p4d", vec![seven_1g(&[4, 5])])],
    };
    let plan = decide(&cluster, &pods(&["3g.20gb"]), &per_instance());
    let m = model(A100);
    assert_eq!(plan.outcomes, vec![PodOutcome::Unlocked { node: 0 }]);
    assert_eq!(plan.changes.len(), 1);
    let change = &plan.changes[0];
    assert_eq!(
        change.destroy,
        (0..4).map(|s| at(m, "1g.5gb", s)).collect::<Vec<_>>()
    );
    assert_eq!(change.create, vec![at(m, "3g.20gb", 0)]);
    assert!(!change.whole_gpu);
}

#[test]
fn a_gpu_whose_instances_are_all_held_is_left_alone() {
    let cluster = Cluster {
        nodes: vec![node("p4d", vec![seven_1g(&[0, 1, 2, 3, 4, 5, 6])])],
    };
    let plan = decide(&cluster, &pods(&["3g.20gb", "1g.5gb"]), &per_instance());
    assert_eq!(plan.outcomes, vec![PodOutcome::Unserved; 2]);
    assert!(plan.changes.is_empty());
}

#[test]
fn a_free_instance_that_fits_is_used_and_nothing_changes() {
    let cluster = Cluster {
        nodes: vec![node("p4d", vec![seven_1g(&[0, 1])])],
    };
    let plan = decide(&cluster, &pods(&["1g.5gb", "1g.5gb"]), &per_instance());
    assert_eq!(plan.outcomes, vec![PodOutcome::Fits { node: 0 }; 2]);
    assert!(plan.changes.is_empty());
}

#[test]
fn instances_pending_pods_can_use_are_not_destroyed_for_others() {
    // Five free 1g: the first pod (a 3g) must not take four of them while
    // the five 1g pods behind it could use them as they are.
    let cluster = Cluster {
        nodes: vec![node("p4d", vec![seven_1g(&[5, 6])])],
    };
    let demand = pods(&["3g.20gb", "1g.5gb", "1g.5gb", "1g.5gb", "1g.5gb", "1g.5gb"]);
    let plan = decide(&cluster, &demand, &per_instance());
    assert_eq!(plan.outcomes[0], PodOutcome::Unserved);
    assert_eq!(plan.count(|o| matches!(o, PodOutcome::Fits { .. })), 5);
    assert!(plan.changes.is_empty());
}

#[test]
fn empty_space_is_used_before_anything_is_destroyed() {
    let cluster = Cluster {
        nodes: vec![node(
            "p4d",
            vec![seven_1g(&[]), gpu(A100, &[("3g.20gb", 0, true)])],
        )],
    };
    let plan = decide(&cluster, &pods(&["3g.20gb"]), &per_instance());
    let m = model(A100);
    assert_eq!(plan.changes.len(), 1);
    assert_eq!(plan.changes[0].gpu, 1);
    assert!(plan.changes[0].destroy.is_empty());
    assert_eq!(plan.changes[0].create, vec![at(m, "3g.20gb", 4)]);
}

#[test]
fn a_1g_on_an_empty_gpu_goes_where_a_4g_still_fits() {
    let cluster = Cluster {
        nodes: vec![node("p4d", vec![gpu(A100, &[])])],
    };
    let plan = decide(&cluster, &pods(&["1g.5gb"]), &per_instance());
    let m = model(A100);
    assert_eq!(plan.changes[0].create, vec![at(m, "1g.5gb", 6)]);
    let after = apply(&cluster, &plan, 1000);
    // 4g.20gb (start 0, 4 slices) still fits beside it.
    let mut with_4g: Vec<InstanceAt> = after.nodes[0].gpus[0]
        .instances
        .iter()
        .map(|i| InstanceAt {
            profile: i.profile,
            start: i.start,
        })
        .collect();
    with_4g.push(at(m, "4g.20gb", 0));
    assert_eq!(layout_valid(m, &with_4g), Ok(()));
}

#[test]
fn a_small_gpu_already_in_use_is_filled_before_an_empty_one() {
    let cluster = Cluster {
        nodes: vec![node(
            "p5",
            vec![
                gpu("H100-80GB", &[]),
                gpu("H100-80GB", &[("3g.40gb", 0, true)]),
            ],
        )],
    };
    let plan = decide(&cluster, &pods(&["1g.10gb"]), &per_instance());
    assert_eq!(plan.changes.len(), 1);
    assert_eq!(plan.changes[0].gpu, 1);
}

#[test]
fn gpus_without_mig_mode_and_frozen_nodes_never_change() {
    let mut off = gpu(A100, &[]);
    off.mig_enabled = false;
    let mut frozen = node("launching", vec![gpu(A100, &[])]);
    frozen.frozen = true;
    let cluster = Cluster {
        nodes: vec![node("mig-off", vec![off]), frozen],
    };
    let plan = decide(&cluster, &pods(&["1g.5gb"]), &per_instance());
    assert_eq!(plan.outcomes, vec![PodOutcome::Unserved]);
    assert!(plan.changes.is_empty());
}

#[test]
fn a_frozen_nodes_free_instances_still_serve() {
    let mut frozen = node("launching", vec![seven_1g(&[])]);
    frozen.frozen = true;
    let cluster = Cluster {
        nodes: vec![frozen],
    };
    let plan = decide(&cluster, &pods(&["1g.5gb"]), &per_instance());
    assert_eq!(plan.outcomes, vec![PodOutcome::Fits { node: 0 }]);
}

#[test]
fn young_free_instances_are_kept_hysteresis() {
    let mut g = seven_1g(&[4, 5]);
    for i in &mut g.instances {
        i.free_since_s = 950;
    }
    let cluster = Cluster {
        nodes: vec![node("p4d", vec![g])],
    };
    let settings = Settings {
        min_free_age_s: 300,
        ..per_instance()
    };
    let plan = decide(&cluster, &pods(&["3g.20gb"]), &settings);
    assert_eq!(plan.outcomes, vec![PodOutcome::Unserved]);
    assert!(plan.changes.is_empty());
    // Old enough: changed.
    let later = Settings {
        now_s: 1250,
        ..settings
    };
    assert_eq!(
        decide(&cluster, &pods(&["3g.20gb"]), &later).changes.len(),
        1
    );
}

#[test]
fn karpenter_in_flight_capacity_covers_pods_before_any_change() {
    let cluster = Cluster {
        nodes: vec![node("p4d", vec![seven_1g(&[])])],
    };
    let mut demand = pods(&["3g.20gb", "3g.20gb"]);
    demand.in_flight = vec![("3g.20gb".into(), 1)];
    let plan = decide(&cluster, &demand, &per_instance());
    assert_eq!(
        plan.outcomes,
        vec![PodOutcome::InFlight, PodOutcome::Unlocked { node: 0 }]
    );
}

#[test]
fn fixed_layouts_never_change() {
    let cluster = Cluster {
        nodes: vec![node("p4d", vec![seven_1g(&[4]), gpu(A100, &[])])],
    };
    let settings = Settings {
        policy: Policy::Fixed,
        ..per_instance()
    };
    let plan = decide(&cluster, &pods(&["3g.20gb", "1g.5gb"]), &settings);
    assert!(plan.changes.is_empty());
    assert_eq!(
        plan.outcomes,
        vec![PodOutcome::Unserved, PodOutcome::Fits { node: 0 }]
    );
}

#[test]
fn whole_gpu_policy_recuts_only_idle_gpus_and_whole() {
    let cluster = Cluster {
        nodes: vec![node("p4d", vec![seven_1g(&[6]), seven_1g(&[])])],
    };
    let settings = Settings {
        policy: Policy::WholeGpu,
        ..per_instance()
    };
    let plan = decide(&cluster, &pods(&["3g.20gb", "3g.20gb"]), &settings);
    let m = model(A100);
    // GPU 0 has a held instance: left alone although it has room for a 3g;
    // GPU 1 is idle: both 3g go there and the GPU is re-cut as a whole.
    assert_eq!(plan.changes.len(), 1);
    let change = &plan.changes[0];
    assert_eq!(change.gpu, 1);
    assert!(change.whole_gpu);
    assert_eq!(change.destroy.len(), 7);
    assert_eq!(
        change.create,
        vec![at(m, "3g.20gb", 0), at(m, "3g.20gb", 4)]
    );
    // Per instance, the first 3g goes beside the held 1g.
    let plan = decide(&cluster, &pods(&["3g.20gb", "3g.20gb"]), &per_instance());
    assert_eq!(plan.schedulable(), 2);
    assert!(plan.changes.iter().any(|c| c.gpu == 0));
}

#[test]
fn a_pod_of_several_slices_is_placed_on_one_node() {
    let cluster = Cluster {
        nodes: vec![
            node("a", vec![gpu(A100, &[("4g.20gb", 0, true)])]),
            node(
                "b",
                vec![seven_1g(&[0]), gpu(A100, &[("3g.20gb", 0, true)])],
            ),
        ],
    };
    let demand = Demand {
        pods: vec![pod("two", &[("3g.20gb", 2)])],
        in_flight: Vec::new(),
    };
    let plan = decide(&cluster, &demand, &per_instance());
    assert_eq!(plan.outcomes, vec![PodOutcome::Unlocked { node: 1 }]);
    check_claims(&cluster, &demand, &plan);
}

#[test]
fn a_profile_the_cluster_does_not_have_stays_unserved() {
    let cluster = Cluster {
        nodes: vec![node("p4d", vec![gpu(A100, &[])])],
    };
    let plan = decide(&cluster, &pods(&["1g.20gb", "3g.71gb"]), &per_instance());
    assert_eq!(plan.outcomes, vec![PodOutcome::Unserved; 2]);
    assert!(plan.changes.is_empty());
}

#[test]
fn the_max_count_of_a_profile_holds() {
    // A100-40GB: at most one 1g.5gb+me.
    let cluster = Cluster {
        nodes: vec![node("p4d", vec![gpu(A100, &[("1g.5gb+me", 0, true)])])],
    };
    let plan = decide(&cluster, &pods(&["1g.5gb.me"]), &per_instance());
    assert_eq!(plan.outcomes, vec![PodOutcome::Unserved]);
}

#[test]
fn layout_valid_names_what_is_wrong() {
    let m = model(A100);
    assert_eq!(
        layout_valid(m, &[at(m, "3g.20gb", 0), at(m, "1g.5gb", 2)])
            .unwrap_err()
            .to_string(),
        "1g.5gb at 2 overlaps another instance"
    );
    let p = profile(m, "3g.20gb");
    assert_eq!(
        layout_valid(
            m,
            &[InstanceAt {
                profile: p,
                start: 2
            }]
        )
        .unwrap_err()
        .to_string(),
        "3g.20gb cannot start at memory slice 2"
    );
    let three_2g: Vec<InstanceAt> = [0, 2, 4].iter().map(|&s| at(m, "2g.10gb", s)).collect();
    let mut full = three_2g.clone();
    full.push(at(m, "1g.10gb", 6));
    assert_eq!(layout_valid(m, &full), Ok(()));
    full.push(at(m, "1g.5gb", 6));
    assert_eq!(
        layout_valid(m, &full).unwrap_err().to_string(),
        "1g.5gb at 6 overlaps another instance"
    );
    let mut too_many = three_2g;
    too_many.push(at(m, "2g.10gb", 4));
    assert_eq!(
        layout_valid(m, &too_many).unwrap_err().to_string(),
        "4 × 2g.10gb (at most 3)"
    );
}

#[test]
fn batch_window_closes_on_timeout_or_idle() {
    let mut w = BatchWindow::new(60, 10);
    assert!(!w.observe(0, 0, 0));
    // Pods keep coming every 5 s: only the timeout closes the batch.
    assert!(!w.observe(100, 1, 1));
    for t in (105..160).step_by(5) {
        assert!(!w.observe(t, 1, 2), "closed at {t}");
    }
    assert!(w.observe(160, 1, 3));
    // The next batch opens with the pods still pending and closes 10 s
    // after the last arrival.
    assert!(!w.observe(165, 0, 3));
    assert!(!w.observe(170, 0, 3));
    assert!(w.observe(175, 0, 3));
    // Nothing pending: nothing to decide.
    assert!(!w.observe(500, 0, 0));
}

// ---------------------------------------------------------------------------
// Properties

/// Every claim of the plan holds on the cluster it leaves: the pods it says
/// fit on a node find enough free instances of their profiles there.
fn check_claims(cluster: &Cluster, demand: &Demand, plan: &Plan) {
    let after = apply(cluster, plan, 0);
    let mut wanted: HashMap<(usize, String), u32> = HashMap::new();
    for (pod, outcome) in demand.pods.iter().zip(&plan.outcomes) {
        if let PodOutcome::Fits { node } | PodOutcome::Unlocked { node } = outcome {
            for (r, n) in &pod.slices {
                *wanted.entry((*node, r.clone())).or_default() += n;
            }
        }
    }
    for ((node, r), n) in wanted {
        let free = after.nodes[node]
            .gpus
            .iter()
            .filter(|g| g.mig_enabled)
            .flat_map(|g| &g.instances)
            .filter(|i| !i.held && i.profile.name.replace('+', ".") == r)
            .count() as u32;
        assert!(
            free >= n,
            "node {node}: {n} pods' slices of {r}, {free} free"
        );
    }
}

const MODELS: &[&str] = &["A100-40GB", "H100-80GB", "H200", "A30"];

prop_compose! {
    /// A GPU with a random valid layout: instances added in random order
    /// where they fit.
    fn arb_gpu()(
        m in 0..MODELS.len(),
        mig in prop::bool::weighted(0.9),
        picks in prop::collection::vec((0usize..8, 0usize..8, any::<bool>(), 0u64..200), 0..10),
    ) -> Gpu {
        let model = catalog::model(MODELS[m]).unwrap();
        let geo = model.mig.as_ref().unwrap();
        let mut instances: Vec<Instance> = Vec::new();
        for (p, s, held, since) in picks {
            let profile = &geo.profiles[p % geo.profiles.len()];
            let start = profile.placement_starts[s % profile.placement_starts.len()];
            let mut trial: Vec<InstanceAt> = instances
                .iter()
                .map(|i| InstanceAt { profile: i.profile, start: i.start })
                .collect();
            trial.push(InstanceAt { profile, start });
            if layout_valid(model, &trial).is_ok() {
                instances.push(Instance { profile, start, held, free_since_s: since });
            }
        }
        Gpu { model, mig_enabled: mig, instances }
    }
}

prop_compose! {
    fn arb_cluster()(
        nodes in prop::collection::vec(
            (prop::collection::vec(arb_gpu(), 1..4), prop::bool::weighted(0.15)),
            1..4,
        )
    ) -> Cluster {
        Cluster {
            nodes: nodes
                .into_iter()
                .enumerate()
                .map(|(i, (gpus, frozen))| Node { name: format!("n{i}"), frozen, gpus })
                .collect(),
        }
    }
}

/// Pending pods asking for profiles of the catalog's models: mostly one
/// slice, some several, some of two profiles.
fn arb_demand(single_only: bool) -> impl Strategy<Value = Demand> {
    let names: Vec<String> = MODELS
        .iter()
        .flat_map(|m| catalog::model(m).unwrap().mig.unwrap().profiles)
        .map(|p| p.dotted_name())
        .collect();
    let n = names.len();
    let max_count: u32 = if single_only { 1 } else { 3 };
    // Some pods may run on some nodes only (a node selector, taints): one of
    // two placements, each a random set of the (at most 4) nodes.
    (
        prop::collection::vec(
            (
                prop::collection::vec((0..n, 1..=max_count), 1..=(if single_only { 1 } else { 2 })),
                prop::option::weighted(0.4, any::<bool>()),
            ),
            0..14,
        ),
        prop::collection::vec((0..n, 0u32..3), 0..2),
        prop::collection::vec(any::<bool>(), 4),
        prop::collection::vec(any::<bool>(), 4),
    )
        .prop_map(move |(pods, in_flight, first, second)| {
            let placements: [std::sync::Arc<[bool]>; 2] = [first.into(), second.into()];
            Demand {
                pods: pods
                    .into_iter()
                    .enumerate()
                    .map(|(i, (slices, placement))| PendingPod {
                        name: format!("p{i}"),
                        slices: slices
                            .into_iter()
                            .map(|(r, c)| (names[r].clone(), c))
                            .collect(),
                        eligible: placement
                            .filter(|_| !single_only)
                            .map(|which| placements[usize::from(which)].clone()),
                    })
                    .collect(),
                in_flight: in_flight
                    .into_iter()
                    .map(|(r, c)| (names[r].clone(), c))
                    .collect(),
            }
        })
}

fn arb_policy() -> impl Strategy<Value = Policy> {
    prop::sample::select(Policy::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn plans_keep_every_rule(
        cluster in arb_cluster(),
        demand in arb_demand(false),
        policy in arb_policy(),
        min_free_age_s in 0u64..100,
    ) {
        let now_s = 150;
        let settings = Settings { policy, now_s, min_free_age_s };
        let plan = decide(&cluster, &demand, &settings);
        prop_assert_eq!(plan.outcomes.len(), demand.pods.len());

        for change in &plan.changes {
            let node = &cluster.nodes[change.node];
            let gpu = &node.gpus[change.gpu];
            // Only GPUs in MIG mode on nodes that are not frozen, and
            // never under fixed layouts.
            prop_assert!(gpu.mig_enabled && !node.frozen && policy != Policy::Fixed);
            prop_assert_eq!(change.whole_gpu, policy == Policy::WholeGpu);
            for d in &change.destroy {
                let before = gpu.instances.iter().find(|i| i.profile == d.profile && i.start == d.start);
                // It existed, no pod held it, and it was old enough
                // (a whole-GPU re-cut recreates the instances it keeps).
                prop_assert!(before.is_some_and(|i| !i.held), "destroyed a held or unknown instance");
                let kept = change.create.contains(d);
                prop_assert!(kept || before.is_some_and(|i| i.free_since_s + min_free_age_s <= now_s),
                    "destroyed a young instance");
            }
        }

        let after = apply(&cluster, &plan, now_s);
        for (n_before, n_after) in cluster.nodes.iter().zip(&after.nodes) {
            for (g_before, g_after) in n_before.gpus.iter().zip(&n_after.gpus) {
                // No busy instance destroyed.
                for held in g_before.instances.iter().filter(|i| i.held) {
                    prop_assert!(g_after.instances.iter().any(|i| i.held && i.profile == held.profile && i.start == held.start));
                }
                // Every layout valid for the model, also as the catalog places it.
                if g_after.mig_enabled {
                    let at: Vec<InstanceAt> = g_after.instances.iter()
                        .map(|i| InstanceAt { profile: i.profile, start: i.start }).collect();
                    prop_assert_eq!(layout_valid(g_after.model, &at), Ok(()));
                    let profiles: Vec<&'static MigProfile> = at.iter().map(|i| i.profile).collect();
                    prop_assert!(catalog::place(g_after.model, &profiles).is_ok());
                }
            }
        }

        // Every pod the plan counts on fits where it says, on a node it
        // may run on.
        check_claims(&cluster, &demand, &plan);
        for (pod, outcome) in demand.pods.iter().zip(&plan.outcomes) {
            if let PodOutcome::Fits { node } | PodOutcome::Unlocked { node } = outcome {
                prop_assert!(pod.may_run_on(*node), "{} placed on node {} it may not run on", pod.name, node);
            }
        }

        // No plan worse than doing nothing.
        let nothing = decide(&cluster, &demand, &Settings { policy: Policy::Fixed, ..settings });
        prop_assert!(plan.schedulable() >= nothing.schedulable());
        for (a, b) in plan.outcomes.iter().zip(&nothing.outcomes) {
            if let PodOutcome::Fits { .. } = b {
                prop_assert!(matches!(a, PodOutcome::Fits { .. }), "a pod that fit now does not");
            }
        }
    }

    #[test]
    fn doing_nothing_counts_every_pod_that_fits_now(
        cluster in arb_cluster(),
        demand in arb_demand(true),
    ) {
        // With one slice per pod the best matching is per profile: the
        // baseline the plans are held to is the true one.
        let settings = Settings { policy: Policy::Fixed, now_s: 0, min_free_age_s: 0 };
        let plan = decide(&cluster, &demand, &settings);
        let mut free: HashMap<String, u32> = HashMap::new();
        for g in cluster.nodes.iter().flat_map(|n| &n.gpus).filter(|g| g.mig_enabled) {
            for i in g.instances.iter().filter(|i| !i.held) {
                *free.entry(i.profile.dotted_name()).or_default() += 1;
            }
        }
        let mut asked: HashMap<String, u32> = HashMap::new();
        for p in &demand.pods {
            *asked.entry(p.slices[0].0.clone()).or_default() += 1;
        }
        let best: u32 = asked.iter().map(|(r, n)| (*n).min(free.get(r).copied().unwrap_or(0))).sum();
        prop_assert_eq!(plan.count(|o| matches!(o, PodOutcome::Fits { .. })) as u32, best);
    }
}
