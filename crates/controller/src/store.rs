//! What the controller keeps of the Pods and Nodes it watches: one small
//! entry per pending pod that asks for MIG slices and per Node, read once
//! when the watch delivers the object (the objects themselves are dropped,
//! which is what keeps 10,000 pending pods and 1,000 nodes in a few MiB).
//! A [`Store`] follows kube-runtime's watcher events, relists included, so
//! every pass reads the cluster as the watches last saw it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use gpu_slicer_core::cluster_objects::{self, NodeError};
use gpu_slicer_core::gpu::catalog::GpuModel;
use gpu_slicer_core::node_labels::{MIG_CONFIG_STATE, MIG_STATE, MIG_TARGET};
use gpu_slicer_core::{mig_state, mig_target};

use crate::placement::{self, NodeFacts, Placement};
use k8s_openapi::api::core::v1::{Container, Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Karpenter's label on the nodes it launched, and the one it adds once a
/// node is initialized (Ready, start-up taints gone, requested resources
/// registered).
pub const KARPENTER_NODEPOOL_LABEL: &str = "karpenter.sh/nodepool";
pub const KARPENTER_INITIALIZED_LABEL: &str = "karpenter.sh/initialized";

/// The largest number of entries a store keeps: beyond it new objects are
/// left out (and logged), so a flood of pods cannot exhaust the
/// controller's memory. Kubernetes supports 5,000 nodes and 150,000 pods.
pub const MAX_PENDING_PODS: usize = 50_000;
pub const MAX_NODES: usize = 15_000;
/// NodeClaims on their way (not yet initialized) kept at most.
pub const MAX_CLAIMS: usize = 5_000;

/// Karpenter's NodeClaim, as its CRD names it.
pub const NODECLAIM_GROUP: &str = "karpenter.sh";
pub const NODECLAIM_VERSION: &str = "v1";
pub const NODECLAIM_KIND: &str = "NodeClaim";

/// A pod waiting to be scheduled that asks for MIG slices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingPod {
    /// `namespace/name`.
    pub key: String,
    /// Its creationTimestamp, in seconds since the Unix epoch.
    pub created_s: u64,
    /// (profile, count), as [`cluster_objects::pod_slices`] reads them.
    pub slices: Vec<(String, u32)>,
    /// `status.nominatedNodeName`: the scheduler expects it on that node.
    pub nominated_node: Option<String>,
    /// Its node selector, required node affinity and tolerations, shared
    /// with the pending pods of the same placement ([`Placements`]).
    pub placement: Arc<Placement>,
}

/// One shared copy of each placement among the pending pods: the pods of
/// one Deployment or Job carry the same tolerations and selectors, and
/// 10,000 copies of them would cost megabytes.
#[derive(Debug, Default)]
pub struct Placements(HashSet<Arc<Placement>>);

impl Placements {
    /// The shared copy of `placement`'s value.
    pub fn intern(&mut self, placement: Arc<Placement>) -> Arc<Placement> {
        if let Some(shared) = self.0.get(&placement) {
            return shared.clone();
        }
        self.0.insert(placement.clone());
        placement
    }

    /// Forgets the placements no pending pod holds any more.
    pub fn prune(&mut self) {
        self.0.retain(|p| Arc::strong_count(p) > 1);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a watched Pod is to the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodRead {
    Pending(PendingPod),
    /// Bound, finishing, gated, or asking for no MIG slice.
    NotPending,
    /// Asks for MIG slices in a way no node can serve (the reason).
    Invalid(String),
}

pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

pub fn pod_bound(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
}

/// Reads a Pod: pending (unbound, not finished, not being deleted, no
/// scheduling gates) and asking for `nvidia.com/mig-*`, or not.
pub fn read_pod(pod: &Pod) -> PodRead {
    let Some(spec) = &pod.spec else {
        return PodRead::NotPending;
    };
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if pod_bound(pod)
        || matches!(phase, Some("Succeeded" | "Failed"))
        || pod.metadata.deletion_timestamp.is_some()
        || spec
            .scheduling_gates
            .as_ref()
            .is_some_and(|g| !g.is_empty())
    {
        return PodRead::NotPending;
    }
    let each = |containers: &[Container]| -> Result<Vec<Vec<(String, u32)>>, String> {
        containers
            .iter()
            .map(|c| {
                let resources = c.resources.as_ref();
                cluster_objects::container_slices(
                    &quantities(resources.and_then(|r| r.limits.as_ref())),
                    &quantities(resources.and_then(|r| r.requests.as_ref())),
                )
                .map_err(|e| e.to_string())
            })
            .collect()
    };
    let slices = each(&spec.containers).and_then(|containers| {
        let init = each(spec.init_containers.as_deref().unwrap_or(&[]))?;
        cluster_objects::pod_slices(containers, init).map_err(|e| e.to_string())
    });
    match slices {
        Err(reason) => PodRead::Invalid(reason),
        Ok(slices) if slices.is_empty() => PodRead::NotPending,
        Ok(slices) => PodRead::Pending(PendingPod {
            key: pod_key(pod),
            created_s: pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second().max(0) as u64)
                .unwrap_or(0),
            slices,
            nominated_node: pod
                .status
                .as_ref()
                .and_then(|s| s.nominated_node_name.clone())
                .filter(|n| !n.is_empty()),
            placement: Arc::new(Placement::of(pod)),
        }),
    }
}

/// A container's limits or requests as (resource, quantity text).
fn quantities(table: Option<&BTreeMap<String, Quantity>>) -> Vec<(&str, &str)> {
    table
        .map(|t| t.iter().map(|(k, v)| (k.as_str(), v.0.as_str())).collect())
        .unwrap_or_default()
}

/// What the controller keeps of a Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    /// Its GPU model and count from its labels (`Ok(None)`: no GPU the
    /// decision uses); the error as text.
    pub gpus: Result<Option<(&'static GpuModel, u32)>, String>,
    /// Its `Ready` condition is `True`.
    pub ready: bool,
    /// `spec.unschedulable` (cordoned): no pending pod can go there.
    pub cordoned: bool,
    /// Karpenter launched it and has not initialized it yet.
    pub karpenter_uninitialized: bool,
    /// Annotation `gpu-slicer.io/mig-state`, as published (at most
    /// [`mig_state::MAX_BYTES`]; longer is dropped as unreadable).
    pub mig_state: Option<String>,
    /// Annotation `gpu-slicer.io/mig-target`, as written.
    pub mig_target: Option<String>,
    /// Label `nvidia.com/mig.config.state`.
    pub config_state: Option<String>,
    /// Its labels and schedule-blocking taints, which pending pods'
    /// placements are checked against.
    pub facts: NodeFacts,
}

pub fn read_node(node: &Node) -> NodeEntry {
    let labels = node.metadata.labels.as_ref();
    let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
    let annotations = node.metadata.annotations.as_ref();
    let annotation = |key: &str, max: usize| {
        annotations
            .and_then(|a| a.get(key))
            .filter(|v| v.len() <= max)
            .cloned()
    };
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    NodeEntry {
        gpus: cluster_objects::node_gpus(label).map_err(|e: NodeError| e.to_string()),
        ready,
        cordoned: node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false),
        karpenter_uninitialized: label(KARPENTER_NODEPOOL_LABEL).is_some()
            && label(KARPENTER_INITIALIZED_LABEL) != Some("true"),
        mig_state: annotation(MIG_STATE, mig_state::MAX_BYTES),
        mig_target: annotation(MIG_TARGET, mig_target::MAX_BYTES),
        config_state: label(MIG_CONFIG_STATE).map(str::to_string),
        facts: NodeFacts::new(
            labels
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.as_str(), v.as_str())),
            placement::blocking_taints(
                node.spec
                    .as_ref()
                    .and_then(|s| s.taints.as_deref())
                    .unwrap_or(&[]),
            ),
        ),
    }
}

/// What the controller keeps of a Karpenter NodeClaim that is on its way:
/// launched for pending pods and not initialized yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimEntry {
    /// `status.nodeName`: the Node it registered as, once it has.
    pub node: Option<String>,
    /// The `nvidia.com/mig-*` of its `status.capacity` as (profile, count):
    /// Karpenter writes the instance type's capacity there at launch, with
    /// the NodeOverlays' slices applied (docs/karpenter.md). Before launch,
    /// those of `spec.resources.requests`: what the pods Karpenter packed
    /// onto it asked for, which the node will have at least.
    pub slices: Vec<(String, u32)>,
}

/// Reads a NodeClaim: `None` when it brings no MIG slice on the way: it is
/// initialized (its Node, Ready and registered, publishes what it holds),
/// being deleted, or neither its capacity nor its requests name a slice; an
/// unreadable count is left out too.
pub fn read_claim(claim: &kube::api::DynamicObject) -> Option<ClaimEntry> {
    if claim.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let empty = serde_json::Value::Null;
    let status = claim.data.get("status").unwrap_or(&empty);
    let initialized = status
        .get("conditions")
        .and_then(|c| c.as_array())
        .is_some_and(|conditions| {
            conditions.iter().any(|c| {
                c.get("type").and_then(|t| t.as_str()) == Some("Initialized")
                    && c.get("status").and_then(|s| s.as_str()) == Some("True")
            })
        });
    if initialized {
        return None;
    }
    let capacity = resource_table(status.get("capacity"));
    let requests = resource_table(
        claim
            .data
            .get("spec")
            .and_then(|s| s.get("resources"))
            .and_then(|r| r.get("requests")),
    );
    // Launched: the capacity; before, the requests (read as a container's
    // limits-else-requests, the capacity in the limits' place).
    let slices = cluster_objects::container_slices(&capacity, &requests).ok()?;
    if slices.is_empty() {
        return None;
    }
    Some(ClaimEntry {
        node: status
            .get("nodeName")
            .and_then(|n| n.as_str())
            .filter(|n| !n.is_empty())
            .map(str::to_string),
        slices,
    })
}

/// A resource table of an unstructured object (`status.capacity`,
/// `spec.resources.requests`) as (resource, quantity text).
fn resource_table(value: Option<&serde_json::Value>) -> Vec<(&str, &str)> {
    value
        .and_then(|c| c.as_object())
        .map(|c| {
            c.iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Entries by key, following a watcher: `Init`, `InitApply`... `InitDone`
/// replace everything at once (a relist), `Apply` and `Delete` change one.
#[derive(Debug)]
pub struct Store<T> {
    items: BTreeMap<String, T>,
    relisting: Option<BTreeMap<String, T>>,
    /// A first list has completed: the store describes the cluster.
    synced: bool,
    max: usize,
    /// Objects left out because the store was full.
    pub dropped: u64,
}

impl<T> Store<T> {
    pub fn new(max: usize) -> Self {
        Store {
            items: BTreeMap::new(),
            relisting: None,
            synced: false,
            max,
            dropped: 0,
        }
    }

    pub fn items(&self) -> &BTreeMap<String, T> {
        &self.items
    }

    pub fn synced(&self) -> bool {
        self.synced
    }

    pub fn init(&mut self) {
        self.relisting = Some(BTreeMap::new());
    }

    /// One object of a relist: kept (`Some`) or not one the controller keeps.
    pub fn init_apply(&mut self, key: String, entry: Option<T>) {
        let max = self.max;
        let relisting = self.relisting.get_or_insert_with(BTreeMap::new);
        if let Some(entry) = entry {
            if relisting.len() < max {
                relisting.insert(key, entry);
            } else {
                self.dropped += 1;
            }
        }
    }

    pub fn init_done(&mut self) {
        if let Some(items) = self.relisting.take() {
            self.items = items;
        }
        self.synced = true;
    }

    /// An object added or changed: kept (`Some`) or removed (`None`: no
    /// longer one the controller keeps). Returns what was there.
    pub fn apply(&mut self, key: String, entry: Option<T>) -> Option<T> {
        match entry {
            Some(entry) if self.items.len() < self.max || self.items.contains_key(&key) => {
                self.items.insert(key, entry)
            }
            Some(_) => {
                self.dropped += 1;
                self.items.remove(&key)
            }
            None => self.items.remove(&key),
        }
    }

    pub fn delete(&mut self, key: &str) -> Option<T> {
        self.items.remove(key)
    }

    /// Every entry at once (a benchmark or a test filling the store).
    pub fn replace_all(&mut self, items: impl IntoIterator<Item = (String, T)>) {
        self.init();
        for (k, v) in items {
            self.init_apply(k, Some(v));
        }
        self.init_done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).expect("a Pod")
    }

    #[test]
    fn a_pending_pod_is_read_with_its_slices_and_a_bound_or_gated_one_is_not() {
        let pending = pod(json!({
            "metadata": {"name": "a", "namespace": "ml", "creationTimestamp": "2026-12-07T00:00:10Z"},
            "spec": {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/mig-3g.20gb": "1"}}}]},
            "status": {"phase": "Pending", "nominatedNodeName": "n2"},
        }));
        let PodRead::Pending(p) = read_pod(&pending) else {
            panic!("pending");
        };
        assert_eq!(p.key, "ml/a");
        assert_eq!(p.slices, vec![("3g.20gb".to_string(), 1)]);
        assert_eq!(p.nominated_node.as_deref(), Some("n2"));
        assert_eq!(p.created_s, 1_796_601_610);
        let mut bound = pending.clone();
        bound.spec.as_mut().unwrap().node_name = Some("n1".into());
        assert_eq!(read_pod(&bound), PodRead::NotPending);
        let mut gated = pending.clone();
        gated.spec.as_mut().unwrap().scheduling_gates =
            Some(vec![k8s_openapi::api::core::v1::PodSchedulingGate {
                name: "g".into(),
            }]);
        assert_eq!(read_pod(&gated), PodRead::NotPending);
        let cpu = pod(json!({"metadata": {"name": "b"}, "spec": {"containers": [{"name": "c"}]}}));
        assert_eq!(read_pod(&cpu), PodRead::NotPending);
        let wrong = pod(json!({"metadata": {"name": "c"}, "spec": {"containers": [
            {"name": "c", "resources": {"limits": {"nvidia.com/mig-1g.5gb": "100m"}}}]}}));
        assert!(matches!(read_pod(&wrong), PodRead::Invalid(_)));
    }

    #[test]
    fn a_nodeclaim_on_its_way_is_read_with_its_slices_and_an_initialized_one_is_not() {
        let claim = |status: serde_json::Value| -> kube::api::DynamicObject {
            serde_json::from_value(json!({
                "apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
                "metadata": {"name": "gpu-x7k2p"},
                "status": status,
            }))
            .expect("a NodeClaim")
        };
        let launched = claim(json!({
            "capacity": {"cpu": "96", "nvidia.com/mig-1g.5gb": "16", "nvidia.com/mig-3g.20gb": "8"},
            "conditions": [{"type": "Launched", "status": "True"}, {"type": "Initialized", "status": "Unknown"}],
        }));
        assert_eq!(
            read_claim(&launched),
            Some(ClaimEntry {
                node: None,
                slices: vec![("1g.5gb".into(), 16), ("3g.20gb".into(), 8)],
            })
        );
        let registered = claim(json!({
            "nodeName": "ip-10-0-1-2",
            "capacity": {"nvidia.com/mig-1g.5gb": "16"},
            "conditions": [{"type": "Registered", "status": "True"}],
        }));
        assert_eq!(
            read_claim(&registered).unwrap().node.as_deref(),
            Some("ip-10-0-1-2")
        );
        // Not launched yet: what its pods asked for.
        let mut created = claim(json!({"conditions": [{"type": "Launched", "status": "Unknown"}]}));
        created.data["spec"] =
            json!({"resources": {"requests": {"cpu": "3", "nvidia.com/mig-3g.20gb": "2"}}});
        assert_eq!(
            read_claim(&created).map(|c| c.slices),
            Some(vec![("3g.20gb".to_string(), 2)])
        );
        for (what, other) in [
            (
                "initialized",
                claim(json!({
                    "capacity": {"nvidia.com/mig-1g.5gb": "16"},
                    "conditions": [{"type": "Initialized", "status": "True"}],
                })),
            ),
            ("not launched, nothing requested", claim(json!({}))),
            (
                "no slices",
                claim(json!({"capacity": {"cpu": "8", "nvidia.com/gpu": "1"}})),
            ),
            (
                "a count that is no integer",
                claim(json!({"capacity": {"nvidia.com/mig-1g.5gb": "1.5"}})),
            ),
        ] {
            assert_eq!(read_claim(&other), None, "{what}");
        }
        let mut deleting = launched.clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-12-07T00:00:00Z".parse().unwrap(),
            ));
        assert_eq!(read_claim(&deleting), None);
    }

    #[test]
    fn pods_of_one_placement_share_one_copy_and_unheld_copies_are_pruned() {
        let gpu_pod = |name: &str| {
            pod(json!({
                "metadata": {"name": name, "namespace": "ml"},
                "spec": {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/mig-1g.5gb": "1"}}}],
                         "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
            }))
        };
        let mut placements = Placements::default();
        let mut read = |name: &str| {
            let PodRead::Pending(mut entry) = read_pod(&gpu_pod(name)) else {
                panic!("pending");
            };
            entry.placement = placements.intern(entry.placement);
            entry
        };
        let (a, b) = (read("a"), read("b"));
        assert!(Arc::ptr_eq(&a.placement, &b.placement));
        assert_eq!(a.placement.tolerations.len(), 1);
        drop((a, b));
        placements.prune();
        assert!(placements.is_empty());
    }

    #[test]
    fn a_node_keeps_its_labels_and_only_its_blocking_taints() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n", "labels": {"karpenter.sh/nodepool": "gpu", "zone": "a"}},
            "spec": {"taints": [
                {"key": "nvidia.com/gpu", "effect": "NoSchedule"},
                {"key": "spot", "value": "yes", "effect": "PreferNoSchedule"}]},
        }))
        .unwrap();
        let facts = read_node(&node).facts;
        assert_eq!(facts.label("karpenter.sh/nodepool"), Some("gpu"));
        assert_eq!(facts.label("zone"), Some("a"));
        assert_eq!(facts.label("missing"), None);
        assert_eq!(
            facts.taints,
            vec![(
                "nvidia.com/gpu".to_string(),
                String::new(),
                "NoSchedule".to_string()
            )]
        );
    }

    #[test]
    fn a_karpenter_node_is_uninitialized_until_labelled_and_its_annotations_are_kept() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n", "labels": {
                "node.kubernetes.io/instance-type": "p4d.24xlarge",
                "karpenter.sh/nodepool": "gpu"},
                "annotations": {"gpu-slicer.io/mig-state": "[]"}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]},
        }))
        .unwrap();
        let entry = read_node(&node);
        assert!(entry.karpenter_uninitialized && entry.cordoned && !entry.ready);
        assert_eq!(entry.mig_state.as_deref(), Some("[]"));
        assert_eq!(entry.gpus.as_ref().unwrap().unwrap().1, 8);
        let mut initialized = node.clone();
        initialized
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(KARPENTER_INITIALIZED_LABEL.into(), "true".into());
        assert!(!read_node(&initialized).karpenter_uninitialized);
    }

    #[test]
    fn a_relist_replaces_the_entries_at_once_and_a_full_store_drops_new_ones() {
        let mut store = Store::new(2);
        store.apply("a".into(), Some(1));
        assert!(!store.synced());
        store.init();
        store.init_apply("b".into(), Some(2));
        store.init_apply("c".into(), None);
        assert_eq!(
            store.items().len(),
            1,
            "the old entries serve until the list is done"
        );
        store.init_done();
        assert!(store.synced());
        assert_eq!(store.items().keys().collect::<Vec<_>>(), ["b"]);
        store.apply("c".into(), Some(3));
        store.apply("d".into(), Some(4));
        assert_eq!(store.items().len(), 2);
        assert_eq!(store.dropped, 1);
        store.apply("b".into(), None);
        assert_eq!(store.items().keys().collect::<Vec<_>>(), ["c"]);
    }
}
