//! One pass of the controller, pure: the stores as the watches last saw
//! them in, the per-GPU targets to write out. Level-triggered: every pass
//! recomputes from the current state and never depends on having seen a
//! transition, so a controller that restarts, or misses an event, decides
//! the same.
//!
//! The rules a pass keeps, besides those of the decision itself
//! ([`gpu_slicer_core::mig_demand`]):
//! - only what a node daemon publishes (`gpu-slicer.io/mig-state`) is read;
//!   a node without it, or whose labels or state cannot be read, is left out;
//! - a node is **frozen** (never changed; its free instances still serve
//!   pending pods) while it is not Ready, while Karpenter launched it and
//!   has not initialized it, while a pending pod is nominated to it, and
//!   while its last target is not applied yet ([`target_applied`]): that
//!   is what keeps a controller restarted mid-change from changing a node
//!   twice;
//! - the instances a frozen node's unapplied target will create count as
//!   capacity on the way (the decision's in-flight slices), so the pods it
//!   was written for drive no second change elsewhere while it applies; a
//!   target unapplied for [`STALE_TARGET_S`] stops counting (its node
//!   refuses it), so those pods are not held back by it for good;
//! - the slices a Karpenter NodeClaim on its way brings (its overlaid
//!   capacity) count as capacity on the way until its Node publishes what
//!   it holds, so pods Karpenter launched a node for drive no re-cut;
//! - a pending pod is placed only on nodes its node selector, required
//!   node affinity and tolerations admit ([`crate::placement`]);
//! - a cordoned node is left out (no pending pod can go there);
//! - a free instance counts as free since the pass that first saw it free
//!   (after a start: that pass), which is what the hysteresis measures.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use gpu_slicer_core::cluster_objects::{self, HeldFrom};
use gpu_slicer_core::mig_demand::{self, Cluster, Demand, Node, PodOutcome, Policy, Settings};
use gpu_slicer_core::mig_state;
use gpu_slicer_core::mig_target::{self, GpuTarget, TargetInstance};
use gpu_slicer_core::node_labels::MigConfigState;

use crate::placement::Placement;
use crate::store::{ClaimEntry, NodeEntry, PendingPod};

/// A target this controller wrote that the node store has not shown yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub text: String,
    /// The node's target before the write.
    pub previous: Option<String>,
}

impl Written {
    /// The store still shows the node as it was before the write (the
    /// write's echo has not come back through the watch).
    pub fn awaiting_echo(&self, node: &NodeEntry) -> bool {
        node.mig_target != Some(self.text.clone()) && node.mig_target == self.previous
    }
}

/// How long a node's target may stay unapplied and still count as capacity
/// on the way. A change takes seconds; a node that refuses one (a pod took
/// an instance it would destroy) retries it on a back-off doubling from
/// 15 s to 10 min, so after 10 min it has failed five times. From then on
/// the pods it was for may be served by another node; the node itself stays
/// frozen (its target is still its own to apply or to be replaced), so no
/// node is ever changed twice at once.
pub const STALE_TARGET_S: u64 = 600;

/// What a pass remembers from earlier ones, as times in seconds: when each
/// free instance was first seen free (node, GPU, profile, start), which the
/// hysteresis measures; and when each node's unapplied target was first seen
/// (node → target text, time), which [`STALE_TARGET_S`] measures. A
/// restarted controller starts both clocks again: later, never sooner.
#[derive(Debug, Default)]
pub struct FirstSeen {
    free: HashMap<(String, u32, &'static str, u32), u64>,
    unapplied: HashMap<String, (String, u64)>,
}

/// One node's new target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTarget {
    pub node: String,
    /// The annotation's value ([`mig_target`]'s JSON).
    pub text: String,
    /// GPUs the target changes.
    pub gpus_changed: usize,
}

/// What one pass found and decided.
#[derive(Debug, Default)]
pub struct PassOutcome {
    pub targets: Vec<NodeTarget>,
    /// Pods the targets will make schedulable (`namespace/name`).
    pub unlocked: Vec<String>,
    pub pending: usize,
    /// Pending pods that fit free instances that exist already.
    pub fit_now: usize,
    /// Nodes frozen this pass, and why (for the log).
    pub frozen: Vec<(String, &'static str)>,
    /// Karpenter NodeClaims whose slices counted as capacity on the way.
    pub claims_on_the_way: usize,
    /// Nodes whose target has stayed unapplied for [`STALE_TARGET_S`] or
    /// more, with its age in seconds: what it would create no longer counts
    /// for pending pods.
    pub stale_targets: Vec<(String, u64)>,
    /// Nodes left out, and why.
    pub left_out: Vec<(String, String)>,
}

/// Why a node is frozen this pass, if it is.
fn frozen_because(
    name: &str,
    node: &NodeEntry,
    nominated: &BTreeSet<&str>,
    written: Option<&Written>,
) -> Option<&'static str> {
    if !node.ready {
        Some("not Ready")
    } else if node.karpenter_uninitialized {
        Some("Karpenter has not initialized it")
    } else if nominated.contains(name) {
        Some("a pending pod is nominated to it")
    } else if written.is_some_and(|w| w.awaiting_echo(node)) {
        Some("the target just written has not come back through the watch")
    } else if node.config_state.as_deref() == Some(MigConfigState::Pending.as_str())
        || !target_applied(node.mig_target.as_deref(), node.mig_state.as_deref())
    {
        Some("its MIG target is not applied yet")
    } else {
        None
    }
}

/// Whether a node's target, if it has one, is what its GPUs hold now, as
/// it publishes them: every GPU the target names holds exactly the
/// instances named (profile and start). A target that cannot be read, or
/// names a GPU by UUID (the published state has no GPU UUIDs), counts as
/// not applied: a target someone else wrote is left to the node.
pub fn target_applied(target: Option<&str>, state: Option<&str>) -> bool {
    let Some(target) = target else {
        return true;
    };
    let (Ok(entries), Some(Ok(gpus))) = (mig_target::parse(target), state.map(mig_state::parse))
    else {
        return false;
    };
    let normal = |profile: &str, start: u32| (profile.replace('+', "."), start);
    entries.iter().all(|entry| {
        let Some(index) = entry.index else {
            return false;
        };
        let Some(gpu) = (0..gpus.len())
            .find(|p| mig_state::gpu_index(&gpus, *p) == index)
            .map(|p| &gpus[p])
        else {
            return false;
        };
        let want: BTreeSet<_> = entry
            .instances
            .iter()
            .map(|i| normal(&i.profile, i.start))
            .collect();
        let have: BTreeSet<_> = gpu
            .instances
            .iter()
            .map(|i| normal(&i.profile, i.start))
            .collect();
        gpu.mig && want == have
    })
}

/// The instances `target` names that the published `state` does not hold
/// yet, as (profile with `+` written `.`, count): what applying it will
/// create. Empty when either cannot be read.
pub fn pending_creations(target: &str, state: Option<&str>) -> Vec<(String, u32)> {
    let Ok(entries) = mig_target::parse(target) else {
        return Vec::new();
    };
    let gpus = state
        .and_then(|s| mig_state::parse(s).ok())
        .unwrap_or_default();
    let normal = |profile: &str| profile.replace('+', ".");
    let mut creations: BTreeMap<String, u32> = BTreeMap::new();
    for entry in &entries {
        let have: BTreeSet<(String, u32)> = entry
            .index
            .and_then(|index| (0..gpus.len()).find(|p| mig_state::gpu_index(&gpus, *p) == index))
            .map(|p| {
                gpus[p]
                    .instances
                    .iter()
                    .map(|i| (normal(&i.profile), i.start))
                    .collect()
            })
            .unwrap_or_default();
        for i in &entry.instances {
            let key = (normal(&i.profile), i.start);
            if !have.contains(&key) {
                *creations.entry(key.0).or_default() += 1;
            }
        }
    }
    creations.into_iter().collect()
}

/// One pass: the cluster the stores describe, the per-instance decision on
/// the pending pods (longest pending first), the targets of the nodes it
/// changes.
pub fn run(
    nodes: &BTreeMap<String, NodeEntry>,
    pods: &BTreeMap<String, PendingPod>,
    claims: &BTreeMap<String, ClaimEntry>,
    written: &HashMap<String, Written>,
    first_seen: &mut FirstSeen,
    now_s: u64,
    min_free_age_s: u64,
) -> PassOutcome {
    let mut outcome = PassOutcome::default();
    let nominated: BTreeSet<&str> = pods
        .values()
        .filter_map(|p| p.nominated_node.as_deref())
        .collect();
    let mut cluster = Cluster::default();
    let mut seen = HashMap::new();
    let mut in_flight: Vec<(String, u32)> = Vec::new();
    let mut unapplied = HashMap::new();
    for (name, node) in nodes {
        if node.cordoned {
            continue;
        }
        let (model, count) = match &node.gpus {
            Ok(Some(gpus)) => *gpus,
            Ok(None) => continue,
            Err(e) => {
                outcome.left_out.push((name.clone(), e.clone()));
                continue;
            }
        };
        let Some(state) = &node.mig_state else {
            continue;
        };
        let mut gpus =
            match cluster_objects::gpus_from_state(model, count, state, HeldFrom::Published, now_s)
            {
                Ok(gpus) => gpus,
                Err(e) => {
                    outcome.left_out.push((
                        name.clone(),
                        format!("annotation {}: {e}", mig_state::MIG_STATE),
                    ));
                    continue;
                }
            };
        for (g, gpu) in gpus.iter_mut().enumerate() {
            for instance in &mut gpu.instances {
                let key = (
                    name.clone(),
                    g as u32,
                    instance.profile.name,
                    instance.start,
                );
                if instance.held {
                    continue;
                }
                let since = *first_seen.free.entry(key.clone()).or_insert(now_s);
                instance.free_since_s = since;
                seen.insert(key, since);
            }
        }
        let frozen = frozen_because(name, node, &nominated, written.get(name));
        if let Some(why) = frozen {
            outcome.frozen.push((name.clone(), why));
        }
        // A target on its way: what it creates serves pending pods.
        let on_the_way = written
            .get(name)
            .filter(|w| w.awaiting_echo(node))
            .map(|w| w.text.as_str())
            .or(node.mig_target.as_deref());
        if frozen.is_some()
            && let Some(target) = on_the_way
        {
            let creations = pending_creations(target, node.mig_state.as_deref());
            if !creations.is_empty() {
                let since = match first_seen.unapplied.get(name) {
                    Some((text, since)) if text == target => *since,
                    _ => now_s,
                };
                unapplied.insert(name.clone(), (target.to_string(), since));
                let age = now_s.saturating_sub(since);
                if age < STALE_TARGET_S {
                    in_flight.extend(creations);
                } else {
                    outcome.stale_targets.push((name.clone(), age));
                }
            }
        }
        cluster.nodes.push(Node {
            name: name.clone(),
            frozen: frozen.is_some(),
            gpus,
        });
    }
    // What Karpenter is launching serves pending pods once it is up (its
    // scheduler launched it for them): until its Node publishes its state,
    // which then counts instead (the node frozen until Karpenter
    // initializes it).
    for claim in claims.values() {
        let published = claim
            .node
            .as_ref()
            .and_then(|n| nodes.get(n))
            .is_some_and(|n| n.mig_state.is_some());
        if !published {
            in_flight.extend(claim.slices.iter().cloned());
            outcome.claims_on_the_way += 1;
        }
    }
    // Instances gone, or held now, start over when next seen free; targets
    // applied, replaced or gone start over when next seen unapplied.
    first_seen.free = seen;
    first_seen.unapplied = unapplied;

    let mut order: Vec<&PendingPod> = pods.values().collect();
    order.sort_by(|a, b| a.created_s.cmp(&b.created_s).then(a.key.cmp(&b.key)));
    // One eligibility vector per placement among the pending pods.
    let mut eligibility: BTreeMap<&Placement, Option<Arc<[bool]>>> = BTreeMap::new();
    for pod in &order {
        eligibility.entry(&*pod.placement).or_insert_with(|| {
            let admitted: Vec<bool> = cluster
                .nodes
                .iter()
                .map(|n| {
                    nodes
                        .get(&n.name)
                        .is_some_and(|e| pod.placement.admits(&n.name, &e.facts))
                })
                .collect();
            // Every node (the common case): the decision's fast path.
            (!admitted.iter().all(|a| *a)).then(|| admitted.into())
        });
    }
    let demand = Demand {
        pods: order
            .iter()
            .map(|p| mig_demand::PendingPod {
                name: p.key.clone(),
                slices: p.slices.clone(),
                eligible: eligibility.get(&*p.placement).cloned().flatten(),
            })
            .collect(),
        in_flight,
    };
    outcome.pending = demand.pods.len();
    let plan = mig_demand::decide(
        &cluster,
        &demand,
        &Settings {
            policy: Policy::PerInstance,
            now_s,
            min_free_age_s,
        },
    );
    outcome.fit_now = plan.count(|o| matches!(o, PodOutcome::Fits { .. }));
    outcome.unlocked = plan
        .outcomes
        .iter()
        .zip(&order)
        .filter(|(o, _)| matches!(o, PodOutcome::Unlocked { .. }))
        .map(|(_, p)| p.key.clone())
        .collect();
    let after = mig_demand::apply(&cluster, &plan, now_s);
    let mut by_node: BTreeMap<usize, Vec<GpuTarget>> = BTreeMap::new();
    for change in &plan.changes {
        let mut instances: Vec<TargetInstance> = after.nodes[change.node].gpus[change.gpu]
            .instances
            .iter()
            .map(|i| TargetInstance {
                profile: i.profile.name.to_string(),
                start: i.start,
            })
            .collect();
        instances.sort_by_key(|i| i.start);
        by_node.entry(change.node).or_default().push(GpuTarget {
            index: Some(change.gpu as u32),
            uuid: None,
            instances,
        });
    }
    for (node, entries) in by_node {
        let name = &cluster.nodes[node].name;
        // Serializing a Vec of plain structs cannot fail; the parse is the
        // node daemon's own check, so a target it would refuse is not sent.
        let Ok(text) = serde_json::to_string(&entries) else {
            continue;
        };
        if mig_target::parse(&text).is_err() {
            outcome.left_out.push((
                name.clone(),
                format!("its target would be refused by the node: {text}"),
            ));
            continue;
        }
        outcome.targets.push(NodeTarget {
            node: name.clone(),
            text,
            gpus_changed: entries.len(),
        });
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::NodeFacts;

    /// A pass without Karpenter NodeClaims.
    fn run(
        nodes: &BTreeMap<String, NodeEntry>,
        pods: &BTreeMap<String, PendingPod>,
        written: &HashMap<String, Written>,
        first_seen: &mut FirstSeen,
        now_s: u64,
        min_free_age_s: u64,
    ) -> PassOutcome {
        super::run(
            nodes,
            pods,
            &BTreeMap::new(),
            written,
            first_seen,
            now_s,
            min_free_age_s,
        )
    }
    use gpu_slicer_core::gpu::catalog;

    fn p4d(state: &str, target: Option<&str>) -> NodeEntry {
        NodeEntry {
            gpus: Ok(Some((catalog::model("A100-40GB").expect("A100"), 1))),
            ready: true,
            cordoned: false,
            karpenter_uninitialized: false,
            mig_state: Some(state.to_string()),
            mig_target: target.map(str::to_string),
            config_state: None,
            facts: NodeFacts::default(),
        }
    }

    /// One A100 of seven 1g.5gb, the one at memory slice 0 held.
    const SEVEN_ONES: &str = r#"[{"index": 0, "mig": true, "instances": [
        {"profile": "1g.5gb", "start": 0, "held": true},
        {"profile": "1g.5gb", "start": 1, "held": false},
        {"profile": "1g.5gb", "start": 2, "held": false},
        {"profile": "1g.5gb", "start": 3, "held": false},
        {"profile": "1g.5gb", "start": 4, "held": false},
        {"profile": "1g.5gb", "start": 5, "held": false},
        {"profile": "1g.5gb", "start": 6, "held": false}]}]"#;

    fn wants_3g() -> BTreeMap<String, PendingPod> {
        let pod = PendingPod {
            key: "ml/train".into(),
            created_s: 10,
            slices: vec![("3g.20gb".into(), 1)],
            nominated_node: None,
            placement: Arc::default(),
        };
        BTreeMap::from([(pod.key.clone(), pod)])
    }

    fn one(node: NodeEntry) -> BTreeMap<String, NodeEntry> {
        BTreeMap::from([("n1".to_string(), node)])
    }

    #[test]
    fn free_1g_slices_become_a_3g_beside_the_held_one() {
        let out = run(
            &one(p4d(SEVEN_ONES, None)),
            &wants_3g(),
            &HashMap::new(),
            &mut FirstSeen::default(),
            100,
            0,
        );
        assert_eq!(out.unlocked, ["ml/train"]);
        assert_eq!(out.targets.len(), 1);
        let entries = mig_target::parse(&out.targets[0].text).unwrap();
        assert_eq!(entries[0].index, Some(0));
        let profiles: Vec<(&str, u32)> = entries[0]
            .instances
            .iter()
            .map(|i| (i.profile.as_str(), i.start))
            .collect();
        assert!(
            profiles.contains(&("1g.5gb", 0)),
            "the held one is kept: {profiles:?}"
        );
        assert!(
            profiles.iter().any(|(p, _)| *p == "3g.20gb"),
            "{profiles:?}"
        );
    }

    #[test]
    fn a_node_whose_target_is_not_applied_or_not_yet_echoed_is_never_changed() {
        let pending = r#"[{"index": 0, "instances": [{"profile": "7g.40gb", "start": 0}]}]"#;
        let out = run(
            &one(p4d(SEVEN_ONES, Some(pending))),
            &wants_3g(),
            &HashMap::new(),
            &mut FirstSeen::default(),
            100,
            0,
        );
        assert!(out.targets.is_empty());
        assert_eq!(
            out.frozen,
            [("n1".to_string(), "its MIG target is not applied yet")]
        );

        let written = HashMap::from([(
            "n1".to_string(),
            Written {
                text: "[]".into(),
                previous: None,
            },
        )]);
        let out = run(
            &one(p4d(SEVEN_ONES, None)),
            &wants_3g(),
            &written,
            &mut FirstSeen::default(),
            100,
            0,
        );
        assert!(
            out.targets.is_empty(),
            "no second write before the first shows"
        );
    }

    #[test]
    fn what_an_unapplied_target_creates_serves_its_pod_so_no_other_node_changes_for_it() {
        let for_the_3g = r#"[{"index": 0, "instances": [
            {"profile": "1g.5gb", "start": 0}, {"profile": "1g.5gb", "start": 1},
            {"profile": "1g.5gb", "start": 2}, {"profile": "1g.5gb", "start": 3},
            {"profile": "3g.20gb", "start": 4}]}]"#;
        assert_eq!(
            pending_creations(for_the_3g, Some(SEVEN_ONES)),
            [("3g.20gb".to_string(), 1)]
        );
        let free = SEVEN_ONES.replace("\"held\": true", "\"held\": false");
        let nodes = BTreeMap::from([
            ("n1".to_string(), p4d(SEVEN_ONES, Some(for_the_3g))),
            ("n2".to_string(), p4d(&free, None)),
        ]);
        let out = run(
            &nodes,
            &wants_3g(),
            &HashMap::new(),
            &mut FirstSeen::default(),
            100,
            0,
        );
        assert!(out.targets.is_empty(), "{:?}", out.targets);
        // The same while the write has not echoed back.
        let written = HashMap::from([(
            "n1".to_string(),
            Written {
                text: for_the_3g.to_string(),
                previous: None,
            },
        )]);
        let nodes = BTreeMap::from([
            ("n1".to_string(), p4d(SEVEN_ONES, None)),
            ("n2".to_string(), p4d(&free, None)),
        ]);
        let out = run(
            &nodes,
            &wants_3g(),
            &written,
            &mut FirstSeen::default(),
            100,
            0,
        );
        assert!(out.targets.is_empty(), "{:?}", out.targets);
    }

    #[test]
    fn a_target_unapplied_for_ten_minutes_stops_holding_its_pods_back_but_its_node_stays_frozen() {
        let for_the_3g = r#"[{"index": 0, "instances": [
            {"profile": "1g.5gb", "start": 0}, {"profile": "1g.5gb", "start": 1},
            {"profile": "1g.5gb", "start": 2}, {"profile": "1g.5gb", "start": 3},
            {"profile": "3g.20gb", "start": 4}]}]"#;
        let free = SEVEN_ONES.replace("\"held\": true", "\"held\": false");
        let nodes = |target: &str| {
            BTreeMap::from([
                ("n1".to_string(), p4d(SEVEN_ONES, Some(target))),
                ("n2".to_string(), p4d(&free, None)),
            ])
        };
        let mut seen = FirstSeen::default();
        let pass = |seen: &mut FirstSeen, target: &str, now: u64| {
            run(&nodes(target), &wants_3g(), &HashMap::new(), seen, now, 0)
        };
        // First seen unapplied at 100: it serves the pod until 100 + 600.
        for now in [100, 400, 100 + STALE_TARGET_S - 1] {
            let out = pass(&mut seen, for_the_3g, now);
            assert!(out.targets.is_empty(), "at {now}: {:?}", out.targets);
            assert!(out.stale_targets.is_empty(), "at {now}");
        }
        let out = pass(&mut seen, for_the_3g, 100 + STALE_TARGET_S);
        assert_eq!(out.stale_targets, [("n1".to_string(), STALE_TARGET_S)]);
        assert_eq!(out.unlocked, ["ml/train"]);
        let nodes_changed: Vec<&str> = out.targets.iter().map(|t| t.node.as_str()).collect();
        assert_eq!(nodes_changed, ["n2"], "only the other node changes");
        assert!(out.frozen.iter().any(|(n, _)| n == "n1"));
        // A target replaced (another text) is young again.
        let replaced = for_the_3g.replace("\"start\": 4}]", "\"start\": 4}] ");
        let out = pass(&mut seen, &replaced, 100 + STALE_TARGET_S + 1);
        assert!(out.targets.is_empty(), "{:?}", out.targets);
        assert!(out.stale_targets.is_empty());
    }

    #[test]
    fn the_slices_of_a_nodeclaim_on_its_way_serve_pending_pods_until_its_node_publishes() {
        let claim = |node: Option<&str>, profile: &str| {
            BTreeMap::from([(
                "gpu-x7k2p".to_string(),
                ClaimEntry {
                    node: node.map(str::to_string),
                    slices: vec![(profile.to_string(), 8)],
                },
            )])
        };
        let nodes = one(p4d(SEVEN_ONES, None));
        let pass = |claims: &BTreeMap<String, ClaimEntry>| {
            super::run(
                &nodes,
                &wants_3g(),
                claims,
                &HashMap::new(),
                &mut FirstSeen::default(),
                100,
                0,
            )
        };
        // Karpenter launched a node with 3g slices for the pod: no re-cut.
        let out = pass(&claim(None, "3g.20gb"));
        assert!(out.targets.is_empty(), "{:?}", out.targets);
        assert_eq!(out.claims_on_the_way, 1);
        // Registered but not publishing yet: still on its way.
        let out = pass(&claim(Some("ip-10-0-1-2"), "3g.20gb"));
        assert!(out.targets.is_empty(), "{:?}", out.targets);
        // Slices of another size do not serve it: n1 is re-cut.
        let out = pass(&claim(None, "1g.5gb"));
        assert_eq!(out.unlocked, ["ml/train"]);
        // Its Node publishes (here n1 itself): the claim no longer counts.
        let out = pass(&claim(Some("n1"), "3g.20gb"));
        assert_eq!(out.claims_on_the_way, 0);
        assert_eq!(out.unlocked, ["ml/train"]);
    }

    #[test]
    fn a_pod_is_cut_for_only_on_a_node_its_selector_and_tolerations_admit() {
        let with = |pool: &str, taint: Option<&str>| {
            let mut node = p4d(SEVEN_ONES, None);
            let taints = taint
                .map(|key| vec![(key.to_string(), String::new(), "NoSchedule".to_string())])
                .unwrap_or_default();
            node.facts = NodeFacts::new([("karpenter.sh/nodepool", pool)], taints);
            node
        };
        let decide = |n1: NodeEntry, placement: Placement| {
            let nodes =
                BTreeMap::from([("n1".to_string(), n1), ("n2".to_string(), with("b", None))]);
            let mut pods = wants_3g();
            pods.get_mut("ml/train").unwrap().placement = Arc::new(placement);
            let out = run(
                &nodes,
                &pods,
                &HashMap::new(),
                &mut FirstSeen::default(),
                100,
                0,
            );
            out.targets
                .iter()
                .map(|t| t.node.clone())
                .collect::<Vec<_>>()
        };
        let to_pool = |pool: &str| Placement {
            node_selector: BTreeMap::from([("karpenter.sh/nodepool".into(), pool.into())]),
            ..Placement::default()
        };
        // Unconstrained, the lowest node is cut; constrained, the one it may use.
        assert_eq!(decide(with("a", None), Placement::default()), ["n1"]);
        assert_eq!(decide(with("a", None), to_pool("b")), ["n2"]);
        assert_eq!(
            decide(with("a", Some("dedicated")), Placement::default()),
            ["n2"]
        );
        // A node selector no node matches: nothing is cut for it.
        assert!(decide(with("a", None), to_pool("c")).is_empty());
    }

    #[test]
    fn an_applied_target_leaves_the_node_free_to_change_and_a_fitting_pod_changes_nothing() {
        let applied = r#"[{"index": 0, "instances": [
            {"profile": "1g.5gb", "start": 0}, {"profile": "1g.5gb", "start": 1},
            {"profile": "1g.5gb", "start": 2}, {"profile": "1g.5gb", "start": 3},
            {"profile": "1g.5gb", "start": 4}, {"profile": "1g.5gb", "start": 5},
            {"profile": "1g.5gb", "start": 6}]}]"#;
        assert!(target_applied(Some(applied), Some(SEVEN_ONES)));
        let out = run(
            &one(p4d(SEVEN_ONES, Some(applied))),
            &wants_3g(),
            &HashMap::new(),
            &mut FirstSeen::default(),
            100,
            0,
        );
        assert_eq!(out.targets.len(), 1);
        let mut one_g = wants_3g();
        one_g.get_mut("ml/train").unwrap().slices = vec![("1g.5gb".into(), 1)];
        let out = run(
            &one(p4d(SEVEN_ONES, None)),
            &one_g,
            &HashMap::new(),
            &mut FirstSeen::default(),
            100,
            0,
        );
        assert!(out.targets.is_empty());
        assert_eq!(out.fit_now, 1);
    }

    #[test]
    fn frozen_nodes_and_young_free_instances_are_left_alone() {
        for change in [
            (|n: &mut NodeEntry| n.ready = false) as fn(&mut NodeEntry),
            |n| n.karpenter_uninitialized = true,
            |n| n.config_state = Some("pending".into()),
        ] {
            let mut node = p4d(SEVEN_ONES, None);
            change(&mut node);
            let out = run(
                &one(node),
                &wants_3g(),
                &HashMap::new(),
                &mut FirstSeen::default(),
                100,
                0,
            );
            assert!(out.targets.is_empty());
            assert_eq!(out.frozen.len(), 1);
        }
        let mut nominated = wants_3g();
        nominated.get_mut("ml/train").unwrap().nominated_node = Some("n1".into());
        let out = run(
            &one(p4d(SEVEN_ONES, None)),
            &nominated,
            &HashMap::new(),
            &mut FirstSeen::default(),
            100,
            0,
        );
        assert!(out.targets.is_empty());
        // Hysteresis: first seen free at 100, so not destroyed before 100 + 60.
        let mut since = FirstSeen::default();
        let nodes = one(p4d(SEVEN_ONES, None));
        let young = run(&nodes, &wants_3g(), &HashMap::new(), &mut since, 100, 60);
        assert!(young.targets.is_empty());
        let old = run(&nodes, &wants_3g(), &HashMap::new(), &mut since, 160, 60);
        assert_eq!(old.targets.len(), 1);
    }

    #[test]
    fn a_layout_that_cannot_be_made_writes_nothing() {
        let all_held = SEVEN_ONES.replace("false", "true");
        let out = run(
            &one(p4d(&all_held, None)),
            &wants_3g(),
            &HashMap::new(),
            &mut FirstSeen::default(),
            100,
            0,
        );
        assert!(out.targets.is_empty() && out.unlocked.is_empty());
        assert_eq!(out.pending, 1);
    }
}
