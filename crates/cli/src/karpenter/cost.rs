//! Cost per slice-hour, and instance/layout choices for a mix of pods.
//!
//! A slice's price is its share of the instance price: the instance price is
//! split evenly over its GPUs, a MIG-enabled GPU's price over its GPU
//! instances by compute slices (unused slices are paid for by the used
//! ones), and a time-shared device's price over its replicas. Summed over
//! every advertised device this gives back the instance price.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use gpu_slicer_core::config::{self, Config};
use gpu_slicer_core::gpu::Inventory;
use gpu_slicer_core::gpu::catalog::{self, InstanceType};
use gpu_slicer_core::gpu::simulated;
use gpu_slicer_core::messages::{types_in_words, yaml_error};
use gpu_slicer_core::plan::{Plan, plan};

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

/// One line of a workload file: `count` pods, each asking for one MIG
/// `slice` (`1g.10gb`), or for `sharedGpu` time-shared replicas with
/// `memoryGiB` of GPU memory each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadItem {
    pub name: String,
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default)]
    pub slice: Option<String>,
    #[serde(default)]
    pub shared_gpu: Option<u32>,
    #[serde(default, rename = "memoryGiB")]
    pub memory_gib: Option<f64>,
    /// CPU architecture of the pods' images (`kubernetes.io/arch`):
    /// `amd64` (default) or `arm64`. Only instance types of that
    /// architecture are ranked (g5g is arm64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
}

impl WorkloadItem {
    /// The architecture the pods' images need; `amd64` unless given.
    pub fn arch(&self) -> &str {
        self.arch.as_deref().unwrap_or("amd64")
    }
}

fn one() -> u32 {
    1
}

/// A workload file's value, as a user wrote it: `the number 3`, `a mapping`.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "empty".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// Every MIG profile of the catalog's GPUs, once each, in catalog order.
fn mig_profile_names() -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for profile in catalog::models()
        .iter()
        .filter_map(|m| m.mig.as_ref())
        .flat_map(|g| g.profiles)
    {
        let name = profile.dotted_name();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// Parses a workload file (a YAML list, or `pods:` holding one).
pub fn parse_workload(text: &str, source: &str) -> Result<Vec<WorkloadItem>, String> {
    let hint = "expected a list of {name, count, slice: \"1g.10gb\"} or {name, count, sharedGpu: 1, memoryGiB: 8}";
    let value: Value = serde_saphyr::from_str(text)
        .map_err(|e| format!("{source}: {}; {hint}", yaml_error(&e)))?;
    let list = match value.get("pods") {
        Some(pods) => pods.clone(),
        None => value,
    };
    let Value::Array(entries) = list else {
        return Err(format!(
            "{source}: {} is not a list; {hint}",
            describe(&list)
        ));
    };
    let mut items = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        if !entry.is_object() {
            return Err(format!(
                "{source}: pods[{i}] is {}, not a pod; {hint}",
                describe(&entry)
            ));
        }
        let item: WorkloadItem = serde_json::from_value(entry).map_err(|e| {
            format!(
                "{source}: pods[{i}]: {}; {hint}",
                types_in_words(&e.to_string())
            )
        })?;
        items.push(item);
    }
    if items.is_empty() {
        return Err(format!("{source}: no pods; {hint}"));
    }
    for item in &items {
        if let Some(slice) = &item.slice {
            let profile = slice.trim_start_matches("mig-");
            if !catalog::models()
                .iter()
                .any(|m| m.mig_profile(profile).is_some())
            {
                return Err(format!(
                    "{source}: pod '{}' asks for slice '{slice}', which is no MIG profile of any \
                     GPU; MIG profiles: {}",
                    item.name,
                    mig_profile_names().join(", ")
                ));
            }
        }
        if !matches!(item.arch(), "amd64" | "arm64") {
            return Err(format!(
                "{source}: pod '{}' has arch '{}': write amd64 or arm64 (kubernetes.io/arch of its images)",
                item.name,
                item.arch()
            ));
        }
        match (&item.slice, item.shared_gpu) {
            (Some(_), None) => {}
            (None, Some(n)) if n >= 1 => {
                if item.memory_gib.is_none_or(|m| m.is_nan() || m <= 0.0) {
                    return Err(format!(
                        "{source}: pod '{}' shares GPUs but has no memoryGiB: say how much GPU memory each pod needs",
                        item.name
                    ));
                }
            }
            _ => {
                return Err(format!(
                    "{source}: pod '{}' needs exactly one of `slice` (a MIG profile such as 1g.10gb) or `sharedGpu` (replicas, at least 1)",
                    item.name
                ));
            }
        }
    }
    Ok(items)
}

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
    /// NodePool `limits` in slice units for the demanded resources, plus `nodes`.
    pub limits: BTreeMap<String, String>,
    /// The overlay to apply for this NodePool and instance type.
    pub overlay: Value,
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
    /// Cheapest first.
    pub choices: Vec<Choice>,
    /// Instance types that would fit but have no price.
    pub unpriced: Vec<String>,
    /// What each pod requests, in the order Karpenter's queue takes them.
    #[serde(skip)]
    pub pod_requests: Vec<BTreeMap<String, u64>>,
    /// What Karpenter launches from one NodePool allowing every row with
    /// the cheapest row's layout ([`karpenter_launch`]).
    pub karpenter: Option<KarpenterLaunch>,
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

/// The ranking of a workload mix.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ranking {
    pub price_table: String,
    pub price_table_date: String,
    pub currency: String,
    pub groups: Vec<Group>,
}

fn mixed_config() -> Result<Config, String> {
    config::parse(
        "version: v1\nflags:\n  migStrategy: mixed\n",
        "built-in mixed config",
    )
    .map_err(|e| e.to_string())
}

fn time_slicing_config(replicas: u32) -> Result<Config, String> {
    let text = if replicas >= 2 {
        format!(
            "version: v1\nflags:\n  migStrategy: none\nsharing:\n  timeSlicing:\n    resources:\n      - name: nvidia.com/gpu\n        replicas: {replicas}\n"
        )
    } else {
        "version: v1\nflags:\n  migStrategy: none\n".to_string()
    };
    config::parse(&text, "built-in time-slicing config").map_err(|e| e.to_string())
}

/// Ranks instance/layout choices for `items`, cheapest first, in one group
/// per pool kind (MIG slices; time-shared GPUs). `nodepool` prefixes the
/// NodePool names of the overlays (`<nodepool>-mig`, `<nodepool>-shared`).
pub fn rank(items: &[WorkloadItem], table: &PriceTable, nodepool: &str) -> Result<Ranking, String> {
    let mut groups = Vec::new();
    let slices: Vec<&WorkloadItem> = items.iter().filter(|i| i.slice.is_some()).collect();
    let shared: Vec<&WorkloadItem> = items.iter().filter(|i| i.shared_gpu.is_some()).collect();
    if !slices.is_empty() {
        let mut demand = BTreeMap::new();
        for i in &slices {
            let profile = i
                .slice
                .as_deref()
                .unwrap_or_default()
                .trim_start_matches("mig-");
            *demand
                .entry(format!("nvidia.com/mig-{profile}"))
                .or_insert(0) += u64::from(i.count);
        }
        let config = mixed_config()?;
        let pool = format!("{nodepool}-mig");
        let mut candidates = Vec::new();
        for instance in catalog::instances() {
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
        groups.push(group("mig", &pool, &slices, demand, candidates, table)?);
    }
    if !shared.is_empty() {
        let demand = BTreeMap::from([(
            "nvidia.com/gpu".to_string(),
            shared
                .iter()
                .map(|i| u64::from(i.count) * u64::from(i.shared_gpu.unwrap_or(1)))
                .sum(),
        )]);
        let pool = format!("{nodepool}-shared");
        let mut candidates = Vec::new();
        for instance in catalog::instances() {
            let Some(model) = instance.gpu_model() else {
                continue;
            };
            let gib = model.memory_mib as f64 / 1024.0;
            let replicas = shared
                .iter()
                .map(|i| (gib / i.memory_gib.unwrap_or(gib)).floor() as u32)
                .min()
                .unwrap_or(1)
                .clamp(0, 48);
            if replicas == 0 {
                continue; // a pod needs more memory than one GPU has
            }
            candidates.push((
                instance,
                "all-disabled".to_string(),
                replicas,
                time_slicing_config(replicas)?,
            ));
        }
        groups.push(group(
            "time-slicing",
            &pool,
            &shared,
            demand,
            candidates,
            table,
        )?);
    }
    Ok(Ranking {
        price_table: table.origin.clone(),
        price_table_date: table.date.clone(),
        currency: table.currency.clone(),
        groups,
    })
}

fn group(
    kind: &str,
    pool: &str,
    items: &[&WorkloadItem],
    demand: BTreeMap<String, u64>,
    candidates: Vec<(&'static InstanceType, String, u32, Config)>,
    table: &PriceTable,
) -> Result<Group, String> {
    let mut choices = Vec::new();
    let mut unpriced = BTreeSet::new();
    for (instance, layout, replicas, config) in candidates {
        // The pods' images must run on the instance's CPUs.
        if items.iter().any(|i| i.arch() != instance.arch) {
            continue;
        }
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
        let nodes = demand
            .iter()
            .map(|(r, n)| n.div_ceil(cap.counts[r]))
            .max()
            .unwrap_or(0);
        let mut limits: BTreeMap<String, String> = demand
            .keys()
            .map(|r| (r.clone(), (nodes * cap.counts[r]).to_string()))
            .collect();
        limits.insert("nodes".into(), nodes.to_string());
        choices.push(Choice {
            instance: instance.name.to_string(),
            layout: layout.clone(),
            replicas,
            nodes,
            usd_per_hour: nodes as f64 * price.usd_per_hour,
            usd_per_node_hour: price.usd_per_hour,
            price_source: format!("{}, {}", price.source, price.date),
            overlay: overlays::overlay(pool, instance.name, Some(&layout), None, &cap),
            per_node: cap.counts,
            limits,
        });
    }
    choices.sort_by(|a, b| {
        a.usd_per_hour
            .total_cmp(&b.usd_per_hour)
            .then(a.nodes.cmp(&b.nodes))
            .then(a.instance.cmp(&b.instance))
            .then(a.layout.cmp(&b.layout))
    });
    let pod_requests: Vec<BTreeMap<String, u64>> = items
        .iter()
        .flat_map(|i| {
            let request = match (&i.slice, i.shared_gpu) {
                (Some(slice), _) => (
                    format!("nvidia.com/mig-{}", slice.trim_start_matches("mig-")),
                    1,
                ),
                (None, n) => ("nvidia.com/gpu".to_string(), u64::from(n.unwrap_or(1))),
            };
            std::iter::repeat_n(BTreeMap::from([request]), i.count as usize)
        })
        .collect();
    let karpenter = choices.first().map(|best| {
        let pool: Vec<Choice> = choices
            .iter()
            .filter(|c| c.layout == best.layout)
            .cloned()
            .collect();
        karpenter_launch(&pool, &pod_requests)
    });
    Ok(Group {
        kind: kind.to_string(),
        nodepool: pool.to_string(),
        pods: items
            .iter()
            .map(|i| match (&i.slice, i.shared_gpu) {
                (Some(s), _) => format!("{} ({} x {s})", i.name, i.count),
                (None, Some(n)) => format!(
                    "{} ({} x {n} shared GPU, {} GiB)",
                    i.name,
                    i.count,
                    i.memory_gib.unwrap_or(0.0)
                ),
                _ => i.name.clone(),
            })
            .collect(),
        demand,
        choices,
        unpriced: unpriced.into_iter().collect(),
        pod_requests,
        karpenter,
    })
}

/// What Karpenter launches for pods that are pending together, from one
/// NodePool whose instance types are `pool` (each declaring, through its
/// overlay, the capacity of its row), on-demand. The model follows
/// kubernetes-sigs/karpenter `pkg/controllers/provisioning/scheduling` (at
/// 2266468, 2026-08-20) with no existing nodes:
///
/// 1. The queue takes pods by CPU, then memory, descending, then by
///    creation (`queue.go`, `byCPUAndMemoryDescending`); the workload file's
///    pods have neither, so they go in file order.
/// 2. For each pod (`Scheduler.add`), the NodeClaims planned so far are
///    sorted by how many pods they hold, fewest first, and the pod joins the
///    first one on which some instance type still fits all its pods plus
///    this one (`addToInflightNode`, `NodeClaim.CanAdd`); that NodeClaim
///    keeps only the types that do.
/// 3. Otherwise a new NodeClaim starts with every type of the pool that fits
///    the pod (`addToNewNodeClaim`); a pod that fits none stays pending.
/// 4. Each NodeClaim is launched with its remaining types, and EC2 Fleet
///    takes the cheapest (aws/karpenter-provider-aws 1d92708,
///    `pkg/providers/instance/types.go`: on-demand allocation strategy
///    `lowest-price` when no overlay sets a price, which gpu-slicer's never
///    do). Spot uses `price-capacity-optimized`, not modelled.
///
/// So pods that arrive together fill one NodeClaim while one type can hold
/// them all, and Karpenter launches the cheapest such type, even when
/// several small nodes would cost less. Not modelled: CPU, memory and
/// DaemonSet overhead (the file has none; they can only rule types out),
/// NodePool limits, `minValues`, capacity errors (EC2 then takes the next
/// cheapest), and pods arriving in separate batches (each batch starts from
/// the nodes launched before it, which changes the result).
pub fn karpenter_launch(pool: &[Choice], pods: &[BTreeMap<String, u64>]) -> KarpenterLaunch {
    struct Claim {
        pods: usize,
        used: BTreeMap<String, u64>,
        options: Vec<usize>,
    }
    let fits = |choice: &Choice, used: &BTreeMap<String, u64>, pod: &BTreeMap<String, u64>| {
        pod.iter().all(|(r, n)| {
            let want = used.get(r).copied().unwrap_or(0).saturating_add(*n);
            choice.per_node.get(r).copied().unwrap_or(0) >= want
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
                .filter(|&t| fits(&pool[t], &claim.used, pod))
                .collect();
            (!options.is_empty()).then_some((claim, options))
        });
        if let Some((claim, options)) = joined {
            claim.options = options;
            claim.pods += 1;
            for (r, n) in pod {
                *claim.used.entry(r.clone()).or_insert(0) += n;
            }
            continue;
        }
        let empty = BTreeMap::new();
        let options: Vec<usize> = (0..pool.len())
            .filter(|&t| fits(&pool[t], &empty, pod))
            .collect();
        if options.is_empty() {
            unschedulable += 1;
            continue;
        }
        claims.push(Claim {
            pods: 1,
            used: pod.clone(),
            options,
        });
    }
    let nodes: Vec<LaunchedNode> = claims
        .iter()
        .filter_map(|claim| {
            claim
                .options
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

/// `1 x g4dn.12xlarge (5 pods)`, `2 x g6.xlarge (5, 1 pods)`.
fn describe_launch(launch: &KarpenterLaunch) -> String {
    let mut by_type: Vec<(&str, Vec<usize>)> = Vec::new();
    for node in &launch.nodes {
        match by_type.iter_mut().find(|(t, _)| *t == node.instance) {
            Some((_, pods)) => pods.push(node.pods),
            None => by_type.push((&node.instance, vec![node.pods])),
        }
    }
    by_type
        .iter()
        .map(|(t, pods)| {
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
        .join(" + ")
}

/// Why no instance type is ranked for a group's pods; `None` when some is.
pub fn unplaced(g: &Group) -> Option<String> {
    if !g.choices.is_empty() {
        return None;
    }
    Some(if !g.unpriced.is_empty() {
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

/// The ranking as terminal tables: the best `top` choices per group, then
/// the NodePool limits and overlay of the cheapest.
pub fn render_ranking(ranking: &Ranking, top: usize) -> Result<String, String> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Prices: {} (dated {}, {}, on-demand; each price names its source and date)",
        ranking.price_table, ranking.price_table_date, ranking.currency
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
            let _ = writeln!(
                out,
                "   Karpenter's pick from one NodePool allowing every row{layout}, pods pending together, on-demand: {} = ${}/h{}{}",
                describe_launch(launch),
                prices::money(launch.usd_per_hour),
                if launch.unschedulable > 0 {
                    format!(
                        ", {} pods fit no type and stay pending",
                        launch.unschedulable
                    )
                } else {
                    String::new()
                },
                if launch.usd_per_hour > best.usd_per_hour + 1e-9 {
                    format!(
                        " (the cheapest row is ${}/h: restrict the pool's instance types to {} to get it)",
                        prices::money(best.usd_per_hour),
                        best.instance
                    )
                } else {
                    String::new()
                }
            );
            let _ = writeln!(
                out,
                "   (Karpenter packs pods that arrive together onto one NodeClaim while one type holds them all, then launches the cheapest such type; docs/karpenter.md, \"What Karpenter launches\")"
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

    #[test]
    fn workload_errors_say_what_to_do() {
        assert!(
            parse_workload("- {name: a}", "w")
                .unwrap_err()
                .contains("exactly one")
        );
        assert!(
            parse_workload("- {name: a, sharedGpu: 1}", "w")
                .unwrap_err()
                .contains("memoryGiB")
        );
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
            let launch = karpenter_launch(&g4dn, &group.pod_requests);
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
            text.contains("Karpenter's pick from one NodePool allowing every row, pods pending together, on-demand: "),
            "{text}"
        );
        // A pod larger than any type of the pool stays pending.
        let launch = karpenter_launch(
            &r.groups[0].choices,
            &[BTreeMap::from([("nvidia.com/gpu".to_string(), 1000)])],
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
        let launch = karpenter_launch(&pool, &group.pod_requests);
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
            limits: BTreeMap::new(),
            overlay: Value::Null,
        };
        let pool = [choice("small", 2, 1.0), choice("large", 3, 2.0)];
        let pod = |n: u64| BTreeMap::from([("nvidia.com/gpu".to_string(), n)]);
        // 1, 1 share a NodeClaim; 2 opens a second; the last 1 joins the
        // second (1 pod) rather than the first (2 pods).
        let launch = karpenter_launch(&pool, &[pod(1), pod(1), pod(2), pod(1)]);
        let got: Vec<(&str, usize)> = launch
            .nodes
            .iter()
            .map(|n| (n.instance.as_str(), n.pods))
            .collect();
        // (Joining the oldest would give large 3 + small 1.)
        let mut got = got;
        got.sort();
        assert_eq!(got, [("large", 2), ("small", 2)]);
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
            .contains("write amd64 or arm64")
        );
    }
}
