//! Cost per slice-hour, and instance/layout choices for a mix of pods.
//!
//! A slice's price is its share of the instance price: the instance price is
//! split evenly over its GPUs, a MIG-enabled GPU's price over its GPU
//! instances by compute slices (unused slices are paid for by the used
//! ones), and a time-shared device's price over its replicas. Summed over
//! every advertised device this gives back the instance price.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use gpu_slicer_core::config::{self, Config, ConfigError};
use gpu_slicer_core::gpu::Inventory;
use gpu_slicer_core::gpu::catalog::{self, InstanceType};
use gpu_slicer_core::gpu::simulated;
use gpu_slicer_core::plan::{Plan, plan};

use super::nodes::{self, NodeSettings};
use super::overlays;
use super::prices::{self, PriceTable};

/// The price of one device (slice or replica) of a resource.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceCost {
    pub resource: String,
    pub count: usize,
    /// Average over the resource's devices.
    pub usd_per_slice_hour: f64,
}

/// Each advertised resource's price per device-hour, for an instance that
/// costs `usd_per_hour`.
pub fn resource_costs(plan: &Plan, inventory: &Inventory, usd_per_hour: f64) -> Vec<ResourceCost> {
    let gpus = inventory.gpus.len().max(1) as f64;
    let per_gpu = usd_per_hour / gpus;
    plan.resources
        .iter()
        .map(|resource| {
            let replicas = f64::from(resource.sharing.map_or(1, |s| s.replicas.max(1)));
            let total: f64 = resource
                .devices
                .iter()
                .map(|device| {
                    let share = inventory
                        .gpus
                        .get(device.physical.gpu_index as usize)
                        .map_or(1.0, |gpu| match device.physical.mig {
                            None => 1.0,
                            Some(ids) => {
                                // Compute slices per GPU instance, and how many
                                // devices (compute instances) share each one.
                                let mut instances: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
                                for m in &gpu.mig_devices {
                                    let e = instances.entry(m.gpu_instance_id).or_insert((0, 0));
                                    e.0 = m.gpu_instance_slices().unwrap_or(1);
                                    e.1 += 1;
                                }
                                let used: u32 = instances.values().map(|(s, _)| *s).sum();
                                let (slices, sharing) =
                                    instances.get(&ids.gpu_instance).copied().unwrap_or((1, 1));
                                f64::from(slices)
                                    / f64::from(used.max(1))
                                    / f64::from(sharing.max(1))
                            }
                        });
                    per_gpu * share / replicas
                })
                .sum();
            let count = resource.devices.len();
            ResourceCost {
                resource: resource.name.to_string(),
                count,
                usd_per_slice_hour: if count == 0 {
                    0.0
                } else {
                    total / count as f64
                },
            }
        })
        .collect()
}

/// Cost lines for `gpu-slicer plan`. They start with `#` so that no line
/// reads as `<resource> <count>`.
pub fn render_costs(
    instance: &str,
    plan: &Plan,
    inventory: &Inventory,
    table: &PriceTable,
) -> String {
    let mut out = String::new();
    let Some(price) = table.price(instance) else {
        let _ = writeln!(
            out,
            "# price: no price for {instance} in the {}; add it with --prices FILE",
            table.describe()
        );
        return out;
    };
    let _ = writeln!(
        out,
        "# price: {instance} {} from the {}",
        prices::describe_price(price),
        table.describe()
    );
    let costs = resource_costs(plan, inventory, price.usd_per_hour);
    let width = costs.iter().map(|c| c.resource.len()).max().unwrap_or(0);
    for c in costs {
        let _ = writeln!(
            out,
            "# cost:  {:<width$}  ${} per slice-hour",
            c.resource,
            prices::money(c.usd_per_slice_hour)
        );
    }
    out
}

// ---------------------------------------------------------------------------
// Workload mixes

pub use super::workload::{Workload, WorkloadItem, parse_workload};

/// One way to run a group of pods: a NodePool of one instance type.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Choice {
    pub instance: String,
    /// MIG layout (`all-disabled` for time-slicing).
    pub layout: String,
    /// Time-slicing replicas per GPU (1: whole GPUs).
    pub replicas: u32,
    pub nodes: u64,
    pub usd_per_hour: f64,
    pub usd_per_node_hour: f64,
    pub price_source: String,
    /// What one node advertises (all resources, as the overlay declares).
    pub per_node: BTreeMap<String, u64>,
    /// What one node holds besides GPUs, after the AWS provider's overhead:
    /// `cpu` (millicores), `memory`, `ephemeral-storage` (bytes), `pods`.
    pub allocatable: BTreeMap<String, u64>,
    /// The AWS provider's launch drops this type from a NodeClaim's options
    /// while a non-exotic one remains: a metal size, or (after the overlay)
    /// `nvidia.com/gpu` above 0.
    pub exotic: bool,
    /// NodePool `limits` in slice units for the demanded resources, plus `nodes`.
    pub limits: BTreeMap<String, String>,
    /// The overlay to apply for this NodePool and instance type.
    pub overlay: Value,
}

/// An instance type (with its layout) on which some pod fits on no node:
/// never a ranked row.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Unfit {
    pub instance: String,
    pub layout: String,
    /// Pods that would stay pending in a pool of only this type.
    pub pending: usize,
}

/// Pods that go to one kind of pool.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    /// `mig` or `time-slicing`.
    pub kind: String,
    pub nodepool: String,
    pub pods: Vec<String>,
    /// Resource → devices the pods need in total.
    pub demand: BTreeMap<String, u64>,
    /// Cheapest first; every pod fits on a node of each.
    pub choices: Vec<Choice>,
    /// Instance types on which some pod fits no node (CPU, memory, pods or
    /// GPUs): not candidates.
    pub unfit: Vec<Unfit>,
    /// Instance types that would fit but have no price.
    pub unpriced: Vec<String>,
    /// Each pod as Karpenter's scheduler sees it, in its queue's order.
    #[serde(skip)]
    pub pod_requests: Vec<PodAsk>,
    /// What Karpenter launches from one NodePool allowing every priced type
    /// (or the file's NodePool's) with the cheapest row's layout, pods in
    /// Karpenter's order with ties in file order ([`karpenter_launch`]).
    pub karpenter: Option<KarpenterLaunch>,
    /// When pods created in the same second make the outcome depend on
    /// their (random) UIDs: the cheapest and dearest outcome.
    pub karpenter_orders: Option<OrderRange>,
}

/// One pod as Karpenter's scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAsk {
    /// Index of the workload entry.
    pub item: usize,
    /// GPU resource, `cpu` (millicores), `memory`, `ephemeral-storage`
    /// (bytes) and `pods: 1`.
    pub requests: BTreeMap<String, u64>,
    /// Seconds after the first pod's creation.
    pub created: u64,
}

/// The nodes Karpenter's scheduler would launch for a group's pods.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KarpenterLaunch {
    /// The MIG layout of the NodePool (`all-disabled` for time-slicing).
    pub layout: String,
    /// One entry per NodeClaim: instance type and the pods packed on it.
    pub nodes: Vec<LaunchedNode>,
    pub usd_per_hour: f64,
    /// Pods no instance type of the pool can hold.
    pub unschedulable: usize,
}

/// One NodeClaim of a [`KarpenterLaunch`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LaunchedNode {
    pub instance: String,
    pub pods: usize,
    pub usd_per_hour: f64,
}

/// The outcomes of every order Karpenter may take pods created in the same
/// second in.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderRange {
    /// Distinct orders of the pods (saturating).
    pub orders: u64,
    /// Orders simulated; all of them when `exhaustive`.
    pub tried: u64,
    pub exhaustive: bool,
    pub best: KarpenterLaunch,
    pub worst: KarpenterLaunch,
}

/// The ranking of a workload mix.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ranking {
    pub price_table: String,
    pub price_table_date: String,
    pub currency: String,
    /// Where the instance types' vCPUs, memory and ENI limits come from.
    pub node_facts: String,
    /// The AMI family and kubelet settings the allocatable assumes.
    pub node_settings: String,
    /// What the DaemonSets take on every node (`pods` included).
    pub daemon_overhead: BTreeMap<String, u64>,
    /// The DaemonSets counted on every node.
    pub daemon_sets: Vec<String>,
    /// DaemonSets that do not tolerate the NodePool's taints: not counted.
    pub daemon_sets_elsewhere: Vec<String>,
    pub groups: Vec<Group>,
}

/// Why no ranking could be made.
#[derive(Debug, thiserror::Error)]
pub enum CostError {
    /// A built-in config the ranking simulates is refused (a defect).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The cheapest overlay cannot be printed.
    #[error(transparent)]
    Render(#[from] overlays::RenderError),
}

fn mixed_config() -> Result<Config, ConfigError> {
    config::parse(
        "version: v1\nflags:\n  migStrategy: mixed\n",
        "built-in mixed config",
    )
}

fn time_slicing_config(replicas: u32, rename: bool) -> Result<Config, ConfigError> {
    let text = if replicas >= 2 {
        format!(
            "version: v1\nflags:\n  migStrategy: none\nsharing:\n  timeSlicing:\n    renameByDefault: {rename}\n    resources:\n      - name: nvidia.com/gpu\n        replicas: {replicas}\n"
        )
    } else {
        "version: v1\nflags:\n  migStrategy: none\n".to_string()
    };
    config::parse(&text, "built-in time-slicing config")
}

/// The resource a time-shared pod asks for.
fn shared_resource(workload: &Workload) -> &'static str {
    if workload.rename_by_default {
        config::SHARED_GPU_RESOURCE
    } else {
        config::GPU_RESOURCE
    }
}

/// What the DaemonSets take on every node, `pods` included.
fn daemon_overhead(workload: &Workload) -> BTreeMap<String, u64> {
    let mut overhead: BTreeMap<String, u64> = BTreeMap::new();
    for d in &workload.daemon_sets {
        for (r, n) in &d.requests {
            let e = overhead.entry(r.clone()).or_insert(0);
            *e = (*e).saturating_add(*n);
        }
    }
    if !workload.daemon_sets.is_empty() {
        overhead.insert(nodes::PODS.to_string(), workload.daemon_sets.len() as u64);
    }
    overhead
}

/// `AL2023, kubelet defaults` / `Bottlerocket, maxPods 50`.
fn describe_settings(s: &NodeSettings) -> String {
    let mut parts = vec![s.ami_family.name().to_string()];
    if let Some(n) = s.max_pods {
        parts.push(format!("maxPods {n}"));
    }
    if let Some(n) = s.pods_per_core {
        parts.push(format!("podsPerCore {n}"));
    }
    for (name, map) in [
        ("kubeReserved", &s.kube_reserved),
        ("systemReserved", &s.system_reserved),
    ] {
        if !map.is_empty() {
            let list: Vec<String> = map.iter().map(|(r, n)| show_amount(r, *n)).collect();
            parts.push(format!("{name} {}", list.join(" ")));
        }
    }
    if !s.eviction_hard.is_empty() {
        parts.push("evictionHard set".into());
    }
    if let Some(b) = s.ephemeral_bytes {
        parts.push(format!(
            "root volume {}",
            show_amount(nodes::EPHEMERAL_STORAGE, b)
        ));
    }
    if parts.len() == 1 {
        parts.push("kubelet defaults".into());
    }
    parts.join(", ")
}

/// `cpu=500m`, `memory=12Gi`, `pods=3`.
fn show_amount(resource: &str, n: u64) -> String {
    match resource {
        nodes::CPU => format!("cpu={n}m"),
        nodes::MEMORY | nodes::EPHEMERAL_STORAGE => {
            let gib = n as f64 / f64::from(1u32 << 30);
            if n.is_multiple_of(1 << 30) {
                format!("{resource}={}Gi", n >> 30)
            } else if n.is_multiple_of(1 << 20) {
                format!("{resource}={}Mi", n >> 20)
            } else {
                format!("{resource}={gib:.2}Gi")
            }
        }
        _ => format!("{resource}={n}"),
    }
}

/// Ranks instance/layout choices for a workload, cheapest first, in one
/// group per pool kind (MIG slices; time-shared GPUs). `nodepool` prefixes
/// the NodePool names of the overlays (`<nodepool>-mig`, `<nodepool>-shared`).
pub fn rank(workload: &Workload, table: &PriceTable, nodepool: &str) -> Result<Ranking, CostError> {
    let mut groups = Vec::new();
    let items = &workload.items;
    let slices: Vec<usize> = (0..items.len())
        .filter(|&i| items[i].slice.is_some())
        .collect();
    let shared: Vec<usize> = (0..items.len())
        .filter(|&i| items[i].shared_gpu.is_some())
        .collect();
    let allowed = |name: &str| {
        workload
            .instance_types
            .as_ref()
            .is_none_or(|types| types.iter().any(|t| t.eq_ignore_ascii_case(name)))
    };
    if !slices.is_empty() {
        let config = mixed_config()?;
        let pool = format!("{nodepool}-mig");
        let mut candidates = Vec::new();
        for instance in catalog::instances().iter().filter(|i| allowed(i.name)) {
            let Some(model) = instance.gpu_model().filter(|m| m.mig_capable()) else {
                continue;
            };
            for layout in catalog::layout_names(model) {
                if layout == "all-disabled" || layout == "all-enabled" {
                    continue;
                }
                candidates.push((instance, layout, 1, config.clone()));
            }
        }
        groups.push(group("mig", &pool, workload, &slices, candidates, table));
    }
    if !shared.is_empty() {
        let pool = format!("{nodepool}-shared");
        let mut candidates = Vec::new();
        for instance in catalog::instances().iter().filter(|i| allowed(i.name)) {
            let Some(model) = instance.gpu_model() else {
                continue;
            };
            let gib = model.memory_mib as f64 / 1024.0;
            let replicas = shared
                .iter()
                .map(|&i| (gib / items[i].memory_gib.unwrap_or(gib)).floor() as u32)
                .min()
                .unwrap_or(1)
                .clamp(0, 48);
            if replicas == 0 {
                continue; // a pod needs more memory than one GPU has
            }
            if workload.rename_by_default && replicas < 2 {
                continue; // no replicas, so no nvidia.com/gpu.shared
            }
            candidates.push((
                instance,
                "all-disabled".to_string(),
                replicas,
                time_slicing_config(replicas, workload.rename_by_default)?,
            ));
        }
        groups.push(group(
            "time-slicing",
            &pool,
            workload,
            &shared,
            candidates,
            table,
        ));
    }
    Ok(Ranking {
        price_table: table.origin.clone(),
        price_table_date: table.date.clone(),
        currency: table.currency.clone(),
        node_facts: nodes::FACTS_SOURCE.to_string(),
        node_settings: describe_settings(&workload.node),
        daemon_overhead: daemon_overhead(workload),
        daemon_sets: workload
            .daemon_sets
            .iter()
            .map(|d| d.name.clone())
            .collect(),
        daemon_sets_elsewhere: workload.daemon_sets_elsewhere.clone(),
        groups,
    })
}

/// Each pod of `members` as Karpenter sees it, in its queue's order: CPU,
/// then memory, descending, then creation time; file order stands in for
/// the UID among pods created in the same second.
fn pod_asks(workload: &Workload, members: &[usize]) -> Vec<PodAsk> {
    let mut pods: Vec<PodAsk> = Vec::new();
    for &i in members {
        let item = &workload.items[i];
        let (resource, n) = match (&item.slice, item.shared_gpu) {
            (Some(slice), _) => (
                config::mig_resource(slice),
                u64::from(item.slices_per_pod.max(1)),
            ),
            (None, n) => (
                shared_resource(workload).to_string(),
                u64::from(n.unwrap_or(1)),
            ),
        };
        let mut requests = item.host.clone();
        requests.insert(resource, n);
        requests.insert(nodes::PODS.to_string(), 1);
        for _ in 0..item.count {
            pods.push(PodAsk {
                item: i,
                requests: requests.clone(),
                created: item.created,
            });
        }
    }
    pods.sort_by(|a, b| {
        queue_key(b)
            .cmp(&queue_key(a))
            .then(a.created.cmp(&b.created))
    });
    pods
}

/// What Karpenter's queue sorts by, descending (`byCPUAndMemoryDescending`).
fn queue_key(pod: &PodAsk) -> (u64, u64) {
    (
        pod.requests.get(nodes::CPU).copied().unwrap_or(0),
        pod.requests.get(nodes::MEMORY).copied().unwrap_or(0),
    )
}

fn group(
    kind: &str,
    pool: &str,
    workload: &Workload,
    members: &[usize],
    candidates: Vec<(&'static InstanceType, String, u32, Config)>,
    table: &PriceTable,
) -> Group {
    let items: Vec<&WorkloadItem> = members.iter().map(|&i| &workload.items[i]).collect();
    let pods = pod_asks(workload, members);
    let mut demand: BTreeMap<String, u64> = BTreeMap::new();
    for pod in &pods {
        for (r, n) in &pod.requests {
            if config::is_nvidia_resource(r) {
                let e = demand.entry(r.clone()).or_insert(0);
                *e = (*e).saturating_add(*n);
            }
        }
    }
    let overhead = daemon_overhead(workload);
    let mut pool_types = Vec::new();
    let mut unpriced = BTreeSet::new();
    for (instance, layout, replicas, config) in candidates {
        // The pods' images must run on the instance's CPUs.
        if items.iter().any(|i| i.arch() != instance.arch) {
            continue;
        }
        let Some(facts) = nodes::facts(instance.name) else {
            continue; // every preset has facts (a test checks it)
        };
        let layout_arg = (layout != "all-disabled").then_some(layout.as_str());
        let Ok(inventory) = simulated::from_instance(instance.name, layout_arg) else {
            continue;
        };
        let node_plan = plan(&inventory, &config);
        if node_plan.errors().next().is_some() {
            continue;
        }
        let cap = overlays::capacity_of(&node_plan);
        let fits = demand
            .keys()
            .all(|r| cap.counts.get(r).copied().unwrap_or(0) > 0);
        if !fits {
            continue;
        }
        let Some(price) = table.price(instance.name) else {
            unpriced.insert(instance.name.to_string());
            continue;
        };
        let exotic = instance.name.contains("metal")
            || cap.counts.get(config::GPU_RESOURCE).copied().unwrap_or(0) > 0;
        pool_types.push(Choice {
            instance: instance.name.to_string(),
            layout: layout.clone(),
            replicas,
            nodes: 0,
            usd_per_hour: 0.0,
            usd_per_node_hour: price.usd_per_hour,
            price_source: format!("{}, {}", price.source, price.date),
            overlay: overlays::overlay(pool, instance.name, Some(&layout), None, &cap),
            per_node: cap.counts,
            allocatable: workload.node.allocatable(&facts, instance.arch),
            exotic,
            limits: BTreeMap::new(),
        });
    }
    // A row is a pool of one type: every pod must fit on some node of it.
    let mut choices = Vec::new();
    let mut unfit = Vec::new();
    for mut choice in pool_types.clone() {
        let launch = karpenter_launch(std::slice::from_ref(&choice), &pods, &overhead);
        if launch.unschedulable > 0 {
            unfit.push(Unfit {
                instance: choice.instance.clone(),
                layout: choice.layout.clone(),
                pending: launch.unschedulable,
            });
            continue;
        }
        let nodes = launch.nodes.len() as u64;
        choice.nodes = nodes;
        choice.usd_per_hour = launch.usd_per_hour;
        choice.limits = demand
            .keys()
            .map(|r| {
                (
                    r.clone(),
                    nodes
                        .saturating_mul(choice.per_node.get(r).copied().unwrap_or(0))
                        .to_string(),
                )
            })
            .collect();
        choice.limits.insert("nodes".into(), nodes.to_string());
        choices.push(choice);
    }
    choices.sort_by(|a, b| {
        a.usd_per_hour
            .total_cmp(&b.usd_per_hour)
            .then(a.nodes.cmp(&b.nodes))
            .then(a.instance.cmp(&b.instance))
            .then(a.layout.cmp(&b.layout))
    });
    // Karpenter's pool: every priced type of the cheapest row's layout,
    // including those some pods do not fit (others may use them).
    let launch_pool: Vec<Choice> = choices
        .first()
        .map(|best| {
            pool_types
                .iter()
                .filter(|c| c.layout == best.layout)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let (karpenter, karpenter_orders) = if launch_pool.is_empty() {
        (None, None)
    } else {
        let canonical = karpenter_launch(&launch_pool, &pods, &overhead);
        let range = order_range(&launch_pool, &pods, &overhead);
        (Some(canonical), range)
    };
    Group {
        kind: kind.to_string(),
        nodepool: pool.to_string(),
        pods: items
            .iter()
            .map(|i| {
                let mut text = match (&i.slice, i.shared_gpu) {
                    (Some(s), _) if i.slices_per_pod > 1 => {
                        format!("{} ({} x {} {s}", i.name, i.count, i.slices_per_pod)
                    }
                    (Some(s), _) => format!("{} ({} x {s}", i.name, i.count),
                    (None, n) => format!(
                        "{} ({} x {} shared GPU, {} GiB",
                        i.name,
                        i.count,
                        n.unwrap_or(1),
                        i.memory_gib.unwrap_or(0.0)
                    ),
                };
                for (r, n) in &i.host {
                    text.push_str(", ");
                    text.push_str(&show_amount(r, *n));
                }
                if i.created > 0 {
                    let _ = write!(text, ", created +{}s", i.created);
                }
                text.push(')');
                text
            })
            .collect(),
        demand,
        choices,
        unfit,
        unpriced: unpriced.into_iter().collect(),
        pod_requests: pods,
        karpenter,
        karpenter_orders,
    }
}

/// What Karpenter launches for pods that are pending together, taken in
/// the order of `pods`, from one NodePool whose instance types are `pool`
/// (each declaring, through its overlay, the capacity of its row, and
/// holding the allocatable of its row), every new node first holding
/// `overhead` (DaemonSets). The model follows kubernetes-sigs/karpenter
/// `pkg/controllers/provisioning/scheduling` (at 2266468, 2026-08-20) with
/// no existing nodes:
///
/// 1. The queue takes pods by CPU, then memory, descending, then by
///    creation time, then by UID (`queue.go`, `byCPUAndMemoryDescending`);
///    the caller orders `pods` so.
/// 2. For each pod (`Scheduler.add`), the NodeClaims planned so far are
///    sorted by how many pods they hold, fewest first, and the pod joins the
///    first one on which some instance type still fits all its pods plus
///    this one plus the DaemonSets (`addToInflightNode`, `NodeClaim.CanAdd`,
///    `filterInstanceTypesByRequirements`: requests against each type's
///    allocatable); that NodeClaim keeps only the types that do.
/// 3. Otherwise a new NodeClaim starts with every type of the pool that fits
///    the pod and the DaemonSets (`addToNewNodeClaim`); a pod that fits
///    none stays pending.
/// 4. At launch the AWS provider drops exotic types (metal sizes, types
///    with GPUs or other accelerators after the overlays) while others
///    remain (aws/karpenter-provider-aws 1d92708,
///    `pkg/providers/instance/filter/filter.go`, `ExoticInstanceTypeFilter`;
///    overlays are applied first, `pkg/cloudprovider/cloudprovider.go`
///    `Create`), and EC2 Fleet takes the cheapest remaining type
///    (on-demand allocation strategy `lowest-price`,
///    `pkg/providers/instance/types.go`, when no overlay sets a price,
///    which gpu-slicer's never do). Spot uses `price-capacity-optimized`,
///    not modelled.
pub fn karpenter_launch(
    pool: &[Choice],
    pods: &[PodAsk],
    overhead: &BTreeMap<String, u64>,
) -> KarpenterLaunch {
    struct Claim {
        /// Creation order, for the output.
        id: usize,
        pods: usize,
        used: BTreeMap<String, u64>,
        options: Vec<usize>,
    }
    let capacity: Vec<BTreeMap<&str, u64>> = pool
        .iter()
        .map(|c| {
            c.per_node
                .iter()
                .chain(c.allocatable.iter())
                .map(|(r, n)| (r.as_str(), *n))
                .collect()
        })
        .collect();
    let fits = |t: usize, used: &BTreeMap<String, u64>, pod: &BTreeMap<String, u64>| {
        used.keys().chain(pod.keys()).all(|r| {
            let want = used
                .get(r)
                .copied()
                .unwrap_or(0)
                .saturating_add(pod.get(r).copied().unwrap_or(0));
            capacity[t].get(r.as_str()).copied().unwrap_or(0) >= want
        })
    };
    let mut claims: Vec<Claim> = Vec::new();
    let mut unschedulable = 0;
    for pod in pods {
        // Fewest pods first; stable, so ties keep their creation order.
        claims.sort_by_key(|c| c.pods);
        let joined = claims.iter_mut().find_map(|claim| {
            let options: Vec<usize> = claim
                .options
                .iter()
                .copied()
                .filter(|&t| fits(t, &claim.used, &pod.requests))
                .collect();
            (!options.is_empty()).then_some((claim, options))
        });
        if let Some((claim, options)) = joined {
            claim.options = options;
            claim.pods += 1;
            for (r, n) in &pod.requests {
                let e = claim.used.entry(r.clone()).or_insert(0);
                *e = (*e).saturating_add(*n);
            }
            continue;
        }
        let options: Vec<usize> = (0..pool.len())
            .filter(|&t| fits(t, overhead, &pod.requests))
            .collect();
        if options.is_empty() {
            unschedulable += 1;
            continue;
        }
        let mut used = overhead.clone();
        for (r, n) in &pod.requests {
            let e = used.entry(r.clone()).or_insert(0);
            *e = (*e).saturating_add(*n);
        }
        claims.push(Claim {
            id: claims.len(),
            pods: 1,
            used,
            options,
        });
    }
    claims.sort_by_key(|c| c.id);
    let nodes: Vec<LaunchedNode> = claims
        .iter()
        .filter_map(|claim| {
            let generic: Vec<usize> = claim
                .options
                .iter()
                .copied()
                .filter(|&t| !pool[t].exotic)
                .collect();
            let options = if generic.is_empty() {
                &claim.options
            } else {
                &generic
            };
            options
                .iter()
                .map(|&t| &pool[t])
                .min_by(|a, b| {
                    a.usd_per_node_hour
                        .total_cmp(&b.usd_per_node_hour)
                        .then(a.instance.cmp(&b.instance))
                })
                .map(|c| LaunchedNode {
                    instance: c.instance.clone(),
                    pods: claim.pods,
                    usd_per_hour: c.usd_per_node_hour,
                })
        })
        .collect();
    KarpenterLaunch {
        layout: pool.first().map_or_else(String::new, |c| c.layout.clone()),
        usd_per_hour: nodes.iter().map(|n| n.usd_per_hour).sum(),
        nodes,
        unschedulable,
    }
}

/// Orders simulated one by one up to this many; beyond, a fixed sample.
const EXHAUSTIVE_ORDERS: u64 = 5_000;
/// Orders of the sample when there are too many to try them all (fewer for
/// many pods: at most about 200,000 pod placements in all).
const SAMPLED_ORDERS: u64 = 200;

/// The best and worst launch over the orders Karpenter may take `pods` in:
/// pods of equal CPU and memory created in the same second go by UID, so
/// in any order. `None` when every order gives the same cost.
pub fn order_range(
    pool: &[Choice],
    pods: &[PodAsk],
    overhead: &BTreeMap<String, u64>,
) -> Option<OrderRange> {
    // Runs of pods Karpenter's queue cannot tell apart by CPU, memory and
    // creation time; inside each, only the kinds of pod matter.
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    let mut start = 0;
    for i in 1..=pods.len() {
        if i == pods.len()
            || queue_key(&pods[i]) != queue_key(&pods[start])
            || pods[i].created != pods[start].created
        {
            runs.push(start..i);
            start = i;
        }
    }
    // Each run as a sorted sequence of kinds (indices into `kinds`).
    let mut kinds: Vec<&BTreeMap<String, u64>> = Vec::new();
    let mut sequences: Vec<Vec<usize>> = runs
        .iter()
        .map(|run| {
            let mut seq: Vec<usize> = pods[run.clone()]
                .iter()
                .map(|p| match kinds.iter().position(|k| **k == p.requests) {
                    Some(k) => k,
                    None => {
                        kinds.push(&p.requests);
                        kinds.len() - 1
                    }
                })
                .collect();
            seq.sort_unstable();
            seq
        })
        .collect();
    let orders = sequences
        .iter()
        .map(|s| distinct_permutations(s))
        .fold(1u64, u64::saturating_mul);
    if orders <= 1 {
        return None;
    }
    let simulate = |sequences: &[Vec<usize>]| {
        // Pods of one kind are interchangeable: only the kinds' order counts.
        let ordered: Vec<PodAsk> = sequences
            .iter()
            .flatten()
            .map(|&k| PodAsk {
                item: 0,
                requests: kinds[k].clone(),
                created: 0,
            })
            .collect();
        karpenter_launch(pool, &ordered, overhead)
    };
    // Fewer pending pods first, then the lower cost.
    let cheaper = |a: &KarpenterLaunch, b: &KarpenterLaunch| {
        a.unschedulable < b.unschedulable
            || (a.unschedulable == b.unschedulable && a.usd_per_hour < b.usd_per_hour - 1e-9)
    };
    let mut best: Option<KarpenterLaunch> = None;
    let mut worst: Option<KarpenterLaunch> = None;
    let mut consider = |launch: KarpenterLaunch| {
        if best.as_ref().is_none_or(|b| cheaper(&launch, b)) {
            best = Some(launch.clone());
        }
        if worst.as_ref().is_none_or(|w| cheaper(w, &launch)) {
            worst = Some(launch);
        }
    };
    let exhaustive = orders <= EXHAUSTIVE_ORDERS;
    let tried;
    if exhaustive {
        // Every order: an odometer of each run's next permutation.
        let mut count = 0;
        loop {
            consider(simulate(&sequences));
            count += 1;
            let mut advanced = false;
            for seq in sequences.iter_mut().rev() {
                if next_permutation(seq) {
                    advanced = true;
                    break;
                }
                // wrapped around to the first order; carry to the next run
            }
            if !advanced {
                break;
            }
        }
        tried = count;
    } else {
        // A fixed sample: the sorted orders, their reverses, and shuffles
        // from a fixed seed, so every run prints the same.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        consider(simulate(&sequences));
        let reversed: Vec<Vec<usize>> = sequences
            .iter()
            .map(|s| s.iter().rev().copied().collect())
            .collect();
        consider(simulate(&reversed));
        let samples = (200_000 / pods.len().max(1) as u64).clamp(10, SAMPLED_ORDERS);
        for _ in 2..samples {
            for seq in sequences.iter_mut() {
                for i in (1..seq.len()).rev() {
                    let j = (random() % (i as u64 + 1)) as usize;
                    seq.swap(i, j);
                }
            }
            consider(simulate(&sequences));
        }
        tried = samples;
    }
    let (best, worst) = (best?, worst?);
    if (worst.usd_per_hour - best.usd_per_hour).abs() < 1e-9
        && worst.unschedulable == best.unschedulable
    {
        return None;
    }
    Some(OrderRange {
        orders,
        tried,
        exhaustive,
        best,
        worst,
    })
}

/// How many distinct orders a sequence's items have (saturating).
fn distinct_permutations(seq: &[usize]) -> u64 {
    // n! / (c1! c2! ...), built as a product of binomials.
    let mut counts: BTreeMap<usize, u64> = BTreeMap::new();
    for &k in seq {
        *counts.entry(k).or_insert(0) += 1;
    }
    let mut total: u64 = 1;
    let mut placed: u64 = 0;
    for c in counts.values() {
        // binomial(placed + c, c)
        let mut b: u128 = 1;
        for i in 1..=u128::from(*c) {
            b = b * (u128::from(placed) + i) / i;
            if b > u128::from(u64::MAX) {
                return u64::MAX;
            }
        }
        total = total.saturating_mul(u64::try_from(b).unwrap_or(u64::MAX));
        placed += c;
    }
    total
}

/// The next lexicographic order of `seq` (repeats allowed); `false`, with
/// `seq` back at its first (sorted) order, after the last.
fn next_permutation(seq: &mut [usize]) -> bool {
    let Some(i) = (1..seq.len()).rev().find(|&i| seq[i - 1] < seq[i]) else {
        seq.reverse();
        return false;
    };
    let pivot = i - 1;
    let Some(j) = (i..seq.len()).rev().find(|&j| seq[j] > seq[pivot]) else {
        return false;
    };
    seq.swap(pivot, j);
    seq[i..].reverse();
    true
}

/// `1 x g4dn.12xlarge (5 pods)`, `2 x g6.xlarge (5, 1 pods)`.
fn describe_launch(launch: &KarpenterLaunch) -> String {
    let mut by_type: Vec<(&str, Vec<usize>)> = Vec::new();
    for node in &launch.nodes {
        match by_type.iter_mut().find(|(t, _)| *t == node.instance) {
            Some((_, pods)) => pods.push(node.pods),
            None => by_type.push((&node.instance, vec![node.pods])),
        }
    }
    let text = by_type
        .iter()
        .map(|(t, pods)| {
            if pods.len() > 6 {
                let (least, most) = (pods.iter().min(), pods.iter().max());
                return format!(
                    "{} x {t} ({} to {} pods each, {} in all)",
                    pods.len(),
                    least.copied().unwrap_or(0),
                    most.copied().unwrap_or(0),
                    pods.iter().sum::<usize>()
                );
            }
            let list: Vec<String> = pods.iter().map(usize::to_string).collect();
            format!(
                "{} x {t} ({} pod{})",
                pods.len(),
                list.join(", "),
                if pods.len() == 1 && pods[0] == 1 {
                    ""
                } else {
                    "s"
                }
            )
        })
        .collect::<Vec<_>>()
        .join(" + ");
    if text.is_empty() {
        "no node".to_string()
    } else {
        text
    }
}

/// Why no instance type is ranked for a group's pods; `None` when some is.
pub fn unplaced(g: &Group) -> Option<String> {
    if !g.choices.is_empty() {
        return None;
    }
    Some(if !g.unfit.is_empty() {
        let types: Vec<&str> = g.unfit.iter().map(|u| u.instance.as_str()).collect();
        format!(
            "on every instance type that has the GPUs some pod fits on no node (its CPU, memory, \
             ephemeral storage or GPUs, plus the DaemonSets, exceed one node, or the node's pod \
             limit is reached): {}",
            dedup(&types).join(", ")
        )
    } else if !g.unpriced.is_empty() {
        format!(
            "the instance types that fit have no price ({}): add them with --prices FILE",
            g.unpriced.join(", ")
        )
    } else if g.kind == "mig" {
        "no instance type of the pods' arch has a named MIG layout (all-<profile>, \
         all-balanced) with every slice they ask for, and a NodePool has one layout: rank such \
         slices in separate files"
            .to_string()
    } else {
        "no instance type of the pods' arch has GPUs with the memory each pod asks for \
         (memoryGiB)"
            .to_string()
    })
}

/// The names once each, in order.
fn dedup<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for n in names {
        if !out.contains(n) {
            out.push(n);
        }
    }
    out
}

/// The ranking as terminal tables: the best `top` choices per group, then
/// the NodePool limits and overlay of the cheapest.
pub fn render_ranking(ranking: &Ranking, top: usize) -> Result<String, overlays::RenderError> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Prices: {} (dated {}, {}, on-demand; each price names its source and date)",
        ranking.price_table, ranking.price_table_date, ranking.currency
    );
    let overhead = if ranking.daemon_overhead.is_empty() {
        "no DaemonSets given".to_string()
    } else {
        let list: Vec<String> = ranking
            .daemon_overhead
            .iter()
            .map(|(r, n)| show_amount(r, *n))
            .collect();
        format!(
            "DaemonSets {} take {} per node",
            ranking.daemon_sets.join(", "),
            list.join(" ")
        )
    };
    let overhead = if ranking.daemon_sets_elsewhere.is_empty() {
        overhead
    } else {
        format!(
            "{overhead}; not on this pool (its taints not tolerated): {}",
            ranking.daemon_sets_elsewhere.join(", ")
        )
    };
    let _ = writeln!(
        out,
        "Nodes: allocatable CPU, memory, ephemeral storage and pods as Karpenter's AWS provider computes them ({}); {overhead}",
        ranking.node_settings
    );
    for g in &ranking.groups {
        let _ = writeln!(
            out,
            "\n== {} pool '{}': {}",
            g.kind,
            g.nodepool,
            g.pods.join(", ")
        );
        let demand: Vec<String> = g.demand.iter().map(|(r, n)| format!("{n} x {r}")).collect();
        let _ = writeln!(out, "   needs {}", demand.join(", "));
        if g.choices.is_empty() {
            let _ = writeln!(
                out,
                "   no instance type provides this: {}",
                unplaced(g).unwrap_or_default()
            );
            continue;
        }
        let rows: Vec<[String; 6]> = g
            .choices
            .iter()
            .take(top)
            .enumerate()
            .map(|(i, c)| {
                let layout = if c.replicas > 1 {
                    format!("time-slicing x{}", c.replicas)
                } else {
                    c.layout.clone()
                };
                let provides: Vec<String> = c
                    .per_node
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(r, n)| format!("{n} {}", r.trim_start_matches("nvidia.com/")))
                    .collect();
                [
                    (i + 1).to_string(),
                    c.instance.clone(),
                    layout,
                    c.nodes.to_string(),
                    format!("${}", prices::money(c.usd_per_hour)),
                    provides.join(", "),
                ]
            })
            .collect();
        let header = [
            "rank", "instance", "layout", "nodes", "per hour", "per node",
        ]
        .map(String::from);
        let mut widths = [0usize; 6];
        for row in std::iter::once(&header).chain(rows.iter()) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        for row in std::iter::once(&header).chain(rows.iter()) {
            let line: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            let _ = writeln!(out, "   {}", line.join("  ").trim_end());
        }
        if g.choices.len() > top {
            let _ = writeln!(
                out,
                "   ... {} more (--output json lists all)",
                g.choices.len() - top
            );
        }
        if !g.unpriced.is_empty() {
            let _ = writeln!(out, "   not ranked, no price: {}", g.unpriced.join(", "));
        }
        if !g.unfit.is_empty() {
            let types: Vec<&str> = g.unfit.iter().map(|u| u.instance.as_str()).collect();
            let _ = writeln!(
                out,
                "   not ranked, some pod fits on no node (it would stay pending): {}",
                dedup(&types).join(", ")
            );
        }
        // The ranking prices each choice as a pool of one instance type;
        // say so, and what Karpenter picks when the pool allows them all.
        let _ = writeln!(
            out,
            "   assumes: a NodePool restricted to the one instance type of each row, filled to the node counts shown"
        );
        if let (Some(launch), Some(best)) = (&g.karpenter, g.choices.first()) {
            let layout = if launch.layout == "all-disabled" {
                String::new()
            } else {
                format!(" with layout {}", launch.layout)
            };
            let pool = if g.choices.len() + g.unfit.len() > 1 {
                format!("one NodePool allowing every type above{layout}")
            } else {
                format!("the NodePool{layout}")
            };
            let pending = |l: &KarpenterLaunch| {
                if l.unschedulable > 0 {
                    format!(", {} pods fit no type and stay pending", l.unschedulable)
                } else {
                    String::new()
                }
            };
            let dearer = |l: &KarpenterLaunch| l.usd_per_hour > best.usd_per_hour + 1e-9;
            match &g.karpenter_orders {
                None => {
                    let _ = writeln!(
                        out,
                        "   Karpenter's pick from {pool}, pods pending together, on-demand: {} = ${}/h{}",
                        describe_launch(launch),
                        prices::money(launch.usd_per_hour),
                        pending(launch)
                    );
                }
                Some(range) => {
                    let _ = writeln!(
                        out,
                        "   Karpenter's pick from {pool}, pods pending together, on-demand, depends on the order of pods created in the same second (by UID, at random; {} of {} orders{}):",
                        range.tried,
                        range.orders,
                        if range.exhaustive {
                            ", all"
                        } else {
                            " tried, a fixed sample: the range may be wider"
                        }
                    );
                    let _ = writeln!(
                        out,
                        "     best:  {} = ${}/h{}",
                        describe_launch(&range.best),
                        prices::money(range.best.usd_per_hour),
                        pending(&range.best)
                    );
                    let _ = writeln!(
                        out,
                        "     worst: {} = ${}/h{} (+{:.0} %)",
                        describe_launch(&range.worst),
                        prices::money(range.worst.usd_per_hour),
                        pending(&range.worst),
                        (range.worst.usd_per_hour / range.best.usd_per_hour.max(1e-9) - 1.0)
                            * 100.0
                    );
                    let _ = writeln!(
                        out,
                        "     in file order (pods created in that order, a second apart): {} = ${}/h",
                        describe_launch(launch),
                        prices::money(launch.usd_per_hour)
                    );
                }
            }
            let worst = g.karpenter_orders.as_ref().map_or(launch, |r| &r.worst);
            if dearer(worst) {
                let _ = writeln!(
                    out,
                    "   (the cheapest row is ${}/h: restrict the pool's instance types to {} to get it)",
                    prices::money(best.usd_per_hour),
                    best.instance
                );
            }
            let _ = writeln!(
                out,
                "   (Karpenter packs pods that arrive together onto one NodeClaim while one type holds them all, then launches the cheapest type that is not metal or, after the overlays, a GPU type, if one remains; docs/karpenter.md, \"What Karpenter launches\")"
            );
        }
        if let Some(best) = g.choices.first() {
            let limits: Vec<String> = best
                .limits
                .iter()
                .map(|(k, v)| format!("{k}: \"{v}\""))
                .collect();
            let _ = writeln!(
                out,
                "   cheapest: {} nodes of {} at ${}/h each ({}); NodePool limits (slice units): {}",
                best.nodes,
                best.instance,
                prices::money(best.usd_per_node_hour),
                best.price_source,
                limits.join(", ")
            );
            let _ = writeln!(out, "   overlay to apply:");
            let yaml = overlays::to_yaml(std::slice::from_ref(&best.overlay), "")?;
            for line in yaml.lines() {
                let _ = writeln!(out, "     {line}");
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::karpenter::{default_config, prices::builtin};

    /// A pod asking for these resources.
    fn pod(requests: &[(&str, u64)]) -> PodAsk {
        PodAsk {
            item: 0,
            requests: requests.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
            created: 0,
        }
    }

    #[test]
    fn slice_costs_add_up_to_the_instance_price() {
        let inv = simulated::from_instance("p4d.24xlarge", Some("all-balanced")).unwrap();
        let p = plan(&inv, &default_config(Some("all-balanced")));
        let costs = resource_costs(&p, &inv, 21.97);
        let total: f64 = costs
            .iter()
            .map(|c| c.usd_per_slice_hour * c.count as f64)
            .sum();
        assert!((total - 21.97).abs() < 1e-9, "{total}");
        let one_g = costs
            .iter()
            .find(|c| c.resource == "nvidia.com/mig-1g.5gb")
            .unwrap();
        assert!((one_g.usd_per_slice_hour - 21.97 / 8.0 / 7.0).abs() < 1e-9);
    }

    #[test]
    fn ranking_prefers_the_cheapest() {
        let items = parse_workload(
            "- {name: asr, count: 20, slice: 1g.10gb}\n- {name: nb, count: 6, sharedGpu: 1, memoryGiB: 8}\n",
            "w.yaml",
        )
        .unwrap();
        let r = rank(&items, &builtin(), "gpu").unwrap();
        assert_eq!(r.groups.len(), 2);
        let mig = &r.groups[0];
        assert_eq!(mig.demand["nvidia.com/mig-1g.10gb"], 20);
        let best = &mig.choices[0];
        // 7 x 1g.10gb per H100: three p5.4xlarge (3 x 6.88 = 20.64 USD/h)
        // undercut one p4d.24xlarge (32 x 1g.10gb, 21.96 USD/h).
        assert_eq!(best.instance, "p5.4xlarge");
        assert_eq!(best.layout, "all-1g.10gb");
        assert_eq!(best.nodes, 3);
        let shared = &r.groups[1];
        assert_eq!(shared.choices[0].instance, "g6.xlarge");
        assert_eq!(shared.choices[0].replicas, 2);
        assert_eq!(shared.choices[0].nodes, 3);
        let text = render_ranking(&r, 5).unwrap();
        assert!(text.contains("dated 2026-07-20"), "{text}");
    }

    /// Defect: `plan --workload` ranked 2 x g4dn.xlarge first for 5
    /// gpu.shared pods, but Karpenter launched one g4dn.12xlarge: pods that
    /// arrive together share one NodeClaim while one type holds them all,
    /// and the launch takes the cheapest such type. Rows: pods (4 GiB, one
    /// replica each; a T4 holds 3), what Karpenter launches from a pool of
    /// g4dn types, its cost.
    #[test]
    fn karpenter_launch_follows_its_scheduler() {
        let cases: &[(u32, &[(&str, usize)], f64)] = &[
            (3, &[("g4dn.xlarge", 3)], 0.526),
            // The example: 2 x g4dn.xlarge would be 1.052 USD/h.
            (5, &[("g4dn.12xlarge", 5)], 3.912),
            (12, &[("g4dn.12xlarge", 12)], 3.912),
            // 13 fit only a metal (24): one node, not a 12xlarge + an xlarge.
            (13, &[("g4dn.metal", 13)], 7.824),
            // 25: the first NodeClaim is full at 24, the 25th pod opens a
            // second one, which takes the cheapest type for one pod.
            (25, &[("g4dn.metal", 24), ("g4dn.xlarge", 1)], 7.824 + 0.526),
        ];
        for &(count, want, usd) in cases {
            let items = parse_workload(
                &format!("- {{name: shared, count: {count}, sharedGpu: 1, memoryGiB: 4}}\n"),
                "w.yaml",
            )
            .unwrap();
            let r = rank(&items, &builtin(), "gpu").unwrap();
            let group = &r.groups[0];
            let g4dn: Vec<Choice> = group
                .choices
                .iter()
                .filter(|c| c.instance.starts_with("g4dn."))
                .cloned()
                .collect();
            let launch = karpenter_launch(&g4dn, &group.pod_requests, &BTreeMap::new());
            let got: Vec<(&str, usize)> = launch
                .nodes
                .iter()
                .map(|n| (n.instance.as_str(), n.pods))
                .collect();
            assert_eq!(got, want, "{count} pods");
            assert!((launch.usd_per_hour - usd).abs() < 1e-9, "{count} pods");
            assert_eq!(launch.unschedulable, 0);
        }
        // The 5 pods: the ranking's cheapest g4dn row is two
        // g4dn.xlarge; the printed ranking (every type allowed) shows both.
        let items = parse_workload(
            "- {name: shared, count: 5, sharedGpu: 1, memoryGiB: 4}\n",
            "w.yaml",
        )
        .unwrap();
        let r = rank(&items, &builtin(), "gpu").unwrap();
        let g4dn_best = r.groups[0]
            .choices
            .iter()
            .find(|c| c.instance.starts_with("g4dn."))
            .unwrap();
        assert_eq!(
            (g4dn_best.instance.as_str(), g4dn_best.nodes),
            ("g4dn.xlarge", 2)
        );
        let text = render_ranking(&r, 5).unwrap();
        assert!(
            text.contains("assumes: a NodePool restricted to the one instance type of each row"),
            "{text}"
        );
        assert!(
            text.contains("Karpenter's pick from one NodePool allowing every type above, pods pending together, on-demand: "),
            "{text}"
        );
        // A pod larger than any type of the pool stays pending.
        let launch = karpenter_launch(
            &r.groups[0].choices,
            &[pod(&[("nvidia.com/gpu", 1000)])],
            &BTreeMap::new(),
        );
        assert!(launch.nodes.is_empty() && launch.unschedulable == 1);
    }

    /// MIG slices: 8 pods of 1g.10gb from a pool of all-1g.10gb p5 types.
    #[test]
    fn karpenter_launch_of_mig_slices() {
        let items = parse_workload(
            "- {name: a, count: 7, slice: 1g.10gb}\n- {name: b, count: 1, slice: 1g.10gb}\n",
            "w.yaml",
        )
        .unwrap();
        let r = rank(&items, &builtin(), "gpu").unwrap();
        let group = &r.groups[0];
        // Pools of one layout: all-1g.10gb on p5.4xlarge (7) and
        // p5.48xlarge (56): 8 pods fit only the 48xlarge.
        let pool: Vec<Choice> = group
            .choices
            .iter()
            .filter(|c| c.layout == "all-1g.10gb" && c.instance.starts_with("p5."))
            .cloned()
            .collect();
        assert_eq!(pool.len(), 2, "{pool:?}");
        let launch = karpenter_launch(&pool, &group.pod_requests, &BTreeMap::new());
        let got: Vec<(&str, usize)> = launch
            .nodes
            .iter()
            .map(|n| (n.instance.as_str(), n.pods))
            .collect();
        assert_eq!(got, [("p5.48xlarge", 8)]);
        // The ranking's cheapest is two p5.4xlarge (13.76 USD/h), Karpenter's
        // one p5.48xlarge (55.04 USD/h).
        let cheapest = pool
            .iter()
            .min_by(|a, b| a.usd_per_hour.total_cmp(&b.usd_per_hour))
            .unwrap();
        assert_eq!(
            (cheapest.instance.as_str(), cheapest.nodes),
            ("p5.4xlarge", 2)
        );
        assert!((launch.usd_per_hour - 55.04).abs() < 1e-9);
    }

    /// Pods of different sizes: a pod goes to the NodeClaim with the fewest
    /// pods that can take it (Karpenter sorts them so), not the oldest.
    #[test]
    fn karpenter_launch_tries_the_nodeclaim_with_fewest_pods_first() {
        let choice = |name: &str, gpus: u64, usd: f64| Choice {
            instance: name.to_string(),
            layout: "all-disabled".to_string(),
            replicas: 1,
            nodes: 1,
            usd_per_hour: usd,
            usd_per_node_hour: usd,
            price_source: "test".to_string(),
            per_node: BTreeMap::from([("nvidia.com/gpu".to_string(), gpus)]),
            allocatable: BTreeMap::from([("pods".to_string(), 110)]),
            exotic: true,
            limits: BTreeMap::new(),
            overlay: Value::Null,
        };
        let pool = [choice("small", 2, 1.0), choice("large", 3, 2.0)];
        let pod = |n: u64| pod(&[("nvidia.com/gpu", n), ("pods", 1)]);
        // 1, 1 share a NodeClaim; 2 opens a second; the last 1 joins the
        // second (1 pod) rather than the first (2 pods).
        let launch = karpenter_launch(&pool, &[pod(1), pod(1), pod(2), pod(1)], &BTreeMap::new());
        let got: Vec<(&str, usize)> = launch
            .nodes
            .iter()
            .map(|n| (n.instance.as_str(), n.pods))
            .collect();
        // (Joining the oldest would give large 3 + small 1.)
        assert_eq!(got, [("small", 2), ("large", 2)]);
    }

    /// g5g is arm64: ranked only for pods that say `arch: arm64`.
    #[test]
    fn workloads_rank_only_their_arch() {
        for (arch, first) in [("", "g6.xlarge"), (", arch: arm64", "g5g.xlarge")] {
            let items = parse_workload(
                &format!("- {{name: nb, count: 6, sharedGpu: 1, memoryGiB: 8{arch}}}\n"),
                "w.yaml",
            )
            .unwrap();
            let r = rank(&items, &builtin(), "gpu").unwrap();
            let choices = &r.groups[0].choices;
            assert_eq!(choices[0].instance, first, "{arch}");
            let arm = choices
                .iter()
                .filter(|c| c.instance.starts_with("g5g."))
                .count();
            assert_eq!(arm == choices.len(), !arch.is_empty(), "{arch}");
        }
        assert!(
            parse_workload(
                "- {name: a, count: 1, sharedGpu: 1, memoryGiB: 1, arch: riscv}",
                "w"
            )
            .unwrap_err()
            .to_string()
            .contains("write amd64 or arm64")
        );
    }

    /// Karpenter's queue (`queue.go`, `byCPUAndMemoryDescending`): CPU
    /// descending, then memory descending, then creation time; the file
    /// order stands in for the UID.
    #[test]
    fn pods_go_in_karpenters_queue_order() {
        let w = parse_workload(
            "- {name: a, count: 1, slice: 1g.5gb, created: 1}\n\
             - {name: b, count: 1, slice: 1g.5gb, requests: {cpu: 1, memory: 1Gi}}\n\
             - {name: c, count: 1, slice: 1g.5gb, requests: {cpu: 2}}\n\
             - {name: d, count: 1, slice: 1g.5gb, requests: {cpu: 1, memory: 2Gi}}\n\
             - {name: e, count: 1, slice: 1g.5gb}\n\
             - {name: f, count: 1, slice: 1g.5gb, requests: {cpu: 1, memory: 2Gi}, created: 5}\n",
            "w.yaml",
        )
        .unwrap();
        let order: Vec<&str> = pod_asks(&w, &[0, 1, 2, 3, 4, 5])
            .iter()
            .map(|p| w.items[p.item].name.as_str())
            .collect();
        assert_eq!(order, ["c", "d", "f", "b", "e", "a"]);
    }

    /// Every distinct order of pods that Karpenter cannot tell apart is
    /// visited once: 4!/(2!2!) = 6 for two pods of each of two kinds.
    #[test]
    fn orders_of_tied_pods_are_enumerated_once_each() {
        let mut seq = vec![0, 0, 1, 1];
        assert_eq!(distinct_permutations(&seq), 6);
        let mut seen = vec![seq.clone()];
        while next_permutation(&mut seq) {
            assert!(!seen.contains(&seq), "{seq:?} twice");
            seen.push(seq.clone());
        }
        assert_eq!(seen.len(), 6);
        assert_eq!(seq, [0, 0, 1, 1], "back at the first order");
        assert_eq!(distinct_permutations(&[0, 1, 1, 1, 1, 1, 1, 1, 1]), 9);
        assert_eq!(distinct_permutations(&[0; 200]), 1);
        assert_eq!(
            distinct_permutations(&(0..40).collect::<Vec<_>>()),
            u64::MAX
        );
    }
}
