//! MIG capacity that follows demand: which free GPU instances to destroy and
//! which to create where, so that the most pending pods become schedulable.
//!
//! Pure: the cluster (nodes, their GPUs, the GPU instances that exist, which
//! of them a pod holds) and the demand (pending pods' MIG requests, plus the
//! slices Karpenter is already launching) go in; a [`Plan`] comes out. The
//! controller and `gpu-slicer simulate` call the same [`decide`].
//!
//! Rules the plan keeps, whatever the input:
//! - an instance a pod holds is never destroyed, nor one a pending pod can
//!   already use (those pods are matched to the existing free instances
//!   before anything is changed);
//! - a pod fits or is unlocked only on a node it may run on
//!   ([`PendingPod::eligible`]);
//! - only GPUs already in MIG mode change (a mode change needs a GPU reset,
//!   which gpu-slicer never does); nodes marked frozen (Karpenter launched
//!   them for pods not yet bound, or they are not ready) never change;
//! - every created instance sits at one of its profile's placements from the
//!   catalog, overlaps nothing, and the GPU's compute slices and the
//!   profile's instance limit hold ([`layout_valid`]);
//! - hysteresis: a free instance younger than [`Settings::min_free_age_s`]
//!   (freed or created recently) is kept, so a layout made for one batch is
//!   not undone by the next; [`BatchWindow`] gathers pending pods first.
//!
//! Choice among possible placements: fewest free instances destroyed, then
//! the smallest loss of what the GPU's empty space could still hold (the
//! number of (profile, start) placements still open there: an instance at
//! the end of an empty A100 leaves room for a 4g, one at the start does
//! not), then the lowest node, GPU and start, so the plan is deterministic.
//!
//! Policies, compared by `gpu-slicer simulate`:
//! - [`Policy::Fixed`]: layouts never change (a person's `nvidia.com/mig.config`);
//! - [`Policy::WholeGpu`]: only GPUs where no pod holds or will take an
//!   instance are repartitioned, each as a whole (nebuly-ai/nos's approach);
//! - [`Policy::PerInstance`]: single free instances are destroyed and
//!   created next to running ones (gpu-slicer's).

use std::collections::HashMap;
use std::sync::Arc;

use crate::gpu::catalog::{GpuModel, MigGeometry, MigProfile};

/// Every node the decision may use.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    /// Never changed (Karpenter launched it for pods not yet bound, or the
    /// node is not ready); its free instances still serve pending pods.
    pub frozen: bool,
    pub gpus: Vec<Gpu>,
}

#[derive(Debug, Clone)]
pub struct Gpu {
    pub model: &'static GpuModel,
    /// MIG mode is on now (current, not pending).
    pub mig_enabled: bool,
    pub instances: Vec<Instance>,
}

/// One GPU instance (with one compute instance over all of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    pub profile: &'static MigProfile,
    /// First memory slice.
    pub start: u32,
    /// A pod holds it (the kubelet's PodResources says so).
    pub held: bool,
    /// When it was created or last released, in the caller's seconds.
    pub free_since_s: u64,
}

/// What pending pods ask for.
#[derive(Debug, Clone, Default)]
pub struct Demand {
    /// In priority order (the caller sorts: longest pending first).
    pub pods: Vec<PendingPod>,
    /// Slices Karpenter is launching (NodeClaims not yet ready), by profile
    /// name with `+` written as `.` (`1g.10gb.me`): pods they will serve
    /// cause no change.
    pub in_flight: Vec<(String, u32)>,
}

#[derive(Debug, Clone)]
pub struct PendingPod {
    pub name: String,
    /// MIG slices the pod needs on one node: profile name with `+` written
    /// as `.` (the resource name `nvidia.com/mig-<this>`), and how many.
    pub slices: Vec<(String, u32)>,
    /// The nodes it may run on, by index into [`Cluster::nodes`] (its node
    /// selector, required node affinity and tolerations, as the caller
    /// reads them); `None`: any node. Shared by the pods of one placement,
    /// so 10,000 pods of a few placements hold a few vectors.
    pub eligible: Option<Arc<[bool]>>,
}

impl PendingPod {
    /// Whether the pod may run on node `node` (index into the cluster).
    pub fn may_run_on(&self, node: usize) -> bool {
        self.eligible
            .as_ref()
            .is_none_or(|e| e.get(node).copied().unwrap_or(false))
    }

    /// The pod needs exactly one slice (the common case, decided fast).
    fn single(&self) -> Option<&str> {
        match self.slices.as_slice() {
            [(r, 1)] => Some(r.as_str()),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Layouts never change.
    Fixed,
    /// Idle GPUs only (no instance held or wanted), repartitioned whole.
    WholeGpu,
    /// Free instances changed one at a time, next to running ones.
    PerInstance,
}

impl Policy {
    pub const ALL: [Policy; 3] = [Policy::Fixed, Policy::WholeGpu, Policy::PerInstance];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Fixed => "fixed",
            Policy::WholeGpu => "whole-gpu",
            Policy::PerInstance => "per-instance",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub policy: Policy,
    /// Now, in the same seconds as [`Instance::free_since_s`].
    pub now_s: u64,
    /// A free instance younger than this is not destroyed (hysteresis).
    pub min_free_age_s: u64,
}

/// Where one instance is (or will be) on its GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceAt {
    pub profile: &'static MigProfile,
    pub start: u32,
}

/// One GPU's change: destroy these free instances, then create those.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuChange {
    pub node: usize,
    pub gpu: usize,
    pub destroy: Vec<InstanceAt>,
    pub create: Vec<InstanceAt>,
    /// The whole GPU is re-cut ([`Policy::WholeGpu`]): every instance it
    /// had is destroyed and the ones kept are created again.
    pub whole_gpu: bool,
}

/// What the plan does for one pending pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodOutcome {
    /// Free instances that exist already fit it on this node.
    Fits { node: usize },
    /// Karpenter's in-flight capacity covers it.
    InFlight,
    /// The plan's changes make it fit on this node.
    Unlocked { node: usize },
    /// Nothing this policy may change makes it fit.
    Unserved,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// One entry per GPU that changes, by node then GPU.
    pub changes: Vec<GpuChange>,
    /// One per pending pod, in the demand's order.
    pub outcomes: Vec<PodOutcome>,
}

impl Plan {
    pub fn count(&self, wanted: fn(&PodOutcome) -> bool) -> usize {
        self.outcomes.iter().filter(|o| wanted(o)).count()
    }

    /// Pods that fit now or once the plan is applied.
    pub fn schedulable(&self) -> usize {
        self.count(|o| matches!(o, PodOutcome::Fits { .. } | PodOutcome::Unlocked { .. }))
    }
}

/// Pending pods gathered into batches, as nos does: a batch closes when
/// `timeout_s` has passed since its first pod, or when no new pod has come
/// for `idle_s`. Pods still pending after a decision start the next batch.
#[derive(Debug, Clone)]
pub struct BatchWindow {
    pub timeout_s: u64,
    pub idle_s: u64,
    opened_s: Option<u64>,
    last_arrival_s: u64,
}

impl BatchWindow {
    pub fn new(timeout_s: u64, idle_s: u64) -> Self {
        BatchWindow {
            timeout_s,
            idle_s,
            opened_s: None,
            last_arrival_s: 0,
        }
    }

    /// Called at every observation with the pods that became pending since
    /// the last one and how many are pending now. True: decide now (the
    /// batch closes; a later pending pod opens the next).
    pub fn observe(&mut self, now_s: u64, new_pending: usize, pending: usize) -> bool {
        if pending == 0 {
            self.opened_s = None;
            return false;
        }
        let opened = *self.opened_s.get_or_insert(now_s);
        if new_pending > 0 || opened == now_s {
            self.last_arrival_s = now_s;
        }
        let ready = now_s.saturating_sub(opened) >= self.timeout_s
            || now_s.saturating_sub(self.last_arrival_s) >= self.idle_s;
        if ready {
            self.opened_s = None;
        }
        ready
    }
}

/// Why a GPU's instances are not a layout its model allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutInvalid {
    #[error("{product} has no MIG")]
    NoMig { product: &'static str },
    #[error("{profile} is not a profile of {model}")]
    UnknownProfile {
        profile: &'static str,
        model: &'static str,
    },
    #[error("{profile} cannot start at memory slice {start}")]
    BadStart { profile: &'static str, start: u32 },
    #[error("{profile} at {start} overlaps another instance")]
    Overlap { profile: &'static str, start: u32 },
    #[error("{count} × {profile} (at most {max})")]
    TooMany {
        count: u32,
        profile: &'static str,
        max: u32,
    },
    #[error("{used} compute slices (the GPU has {has})")]
    TooMuchCompute { used: u32, has: u32 },
}

/// Whether a GPU's instances are a layout its model allows.
pub fn layout_valid(model: &GpuModel, instances: &[InstanceAt]) -> Result<(), LayoutInvalid> {
    let Some(geo) = &model.mig else {
        return Err(LayoutInvalid::NoMig {
            product: model.product_name,
        });
    };
    let mut used = 0u64;
    let mut compute = 0u32;
    for i in instances {
        let p = i.profile;
        if geo.profile(p.name) != Some(p) {
            return Err(LayoutInvalid::UnknownProfile {
                profile: p.name,
                model: model.key,
            });
        }
        if !p.placement_starts.contains(&i.start) || i.start + p.placement_size > geo.memory_slices
        {
            return Err(LayoutInvalid::BadStart {
                profile: p.name,
                start: i.start,
            });
        }
        let mask = slice_mask(i.start, p.placement_size);
        if used & mask != 0 {
            return Err(LayoutInvalid::Overlap {
                profile: p.name,
                start: i.start,
            });
        }
        used |= mask;
        compute += p.compute_slices;
        let count = instances.iter().filter(|j| j.profile == p).count() as u32;
        if count > p.max_count {
            return Err(LayoutInvalid::TooMany {
                count,
                profile: p.name,
                max: p.max_count,
            });
        }
    }
    if compute > geo.compute_slices {
        return Err(LayoutInvalid::TooMuchCompute {
            used: compute,
            has: geo.compute_slices,
        });
    }
    Ok(())
}

/// The cluster once `plan` is carried out at `now_s` (created instances are
/// free from then on).
pub fn apply(cluster: &Cluster, plan: &Plan, now_s: u64) -> Cluster {
    let mut after = cluster.clone();
    for change in &plan.changes {
        let gpu = &mut after.nodes[change.node].gpus[change.gpu];
        gpu.instances.retain(|i| {
            !change
                .destroy
                .iter()
                .any(|d| d.profile == i.profile && d.start == i.start)
        });
        gpu.instances.extend(change.create.iter().map(|c| Instance {
            profile: c.profile,
            start: c.start,
            held: false,
            free_since_s: now_s,
        }));
    }
    after
}

fn slice_mask(start: u32, size: u32) -> u64 {
    if size == 0 || start + size > 63 {
        return 0;
    }
    ((1u64 << size) - 1) << start
}

// ---------------------------------------------------------------------------
// The decision

/// An instance during the decision.
#[derive(Debug, Clone, Copy)]
struct Live {
    profile: &'static MigProfile,
    start: u32,
    /// Held by a pod, or promised to a pending pod by this plan.
    taken: bool,
    /// Free but too young to destroy.
    young: bool,
    /// Existed before the plan.
    original: bool,
}

#[derive(Debug, Clone)]
struct WorkGpu {
    node: usize,
    gpu: usize,
    geo: Option<&'static MigGeometry>,
    /// Index into the decision's model table.
    model: usize,
    /// The policy may change it.
    changeable: bool,
    live: Vec<Live>,
    destroyed: Vec<InstanceAt>,
}

/// A way to add one instance of a profile to a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    destroyed: u32,
    /// Loss of open placements in the GPU's empty space, biased to stay
    /// non-negative (destroying may open more than the instance takes).
    loss: u32,
    start: u32,
}

const LOSS_BIAS: i64 = 1 << 20;

impl WorkGpu {
    fn occupied(&self) -> (u64, u32) {
        self.live.iter().fold((0, 0), |(m, c), l| {
            (
                m | slice_mask(l.start, l.profile.placement_size),
                c + l.profile.compute_slices,
            )
        })
    }

    fn held_or_taken(&self) -> bool {
        self.live.iter().any(|l| l.taken)
    }

    /// The cheapest way to add one `profile` here, destroying only free,
    /// old-enough instances that overlap it.
    fn best(&self, profile: &'static MigProfile) -> Option<Candidate> {
        let geo = self.geo?;
        if !self.changeable {
            return None;
        }
        let (occupied, compute) = self.occupied();
        let open_before = open_placements(geo, occupied, compute);
        let mut best: Option<Candidate> = None;
        for &start in profile.placement_starts {
            if start + profile.placement_size > geo.memory_slices {
                continue;
            }
            let mask = slice_mask(start, profile.placement_size);
            let mut destroyed = 0u32;
            let mut blocked = false;
            let (mut occ_after, mut compute_after, mut same) = (0u64, 0u32, 0u32);
            for l in &self.live {
                let lm = slice_mask(l.start, l.profile.placement_size);
                if lm & mask != 0 {
                    if l.taken || l.young {
                        blocked = true;
                        break;
                    }
                    destroyed += 1;
                } else {
                    occ_after |= lm;
                    compute_after += l.profile.compute_slices;
                    same += u32::from(l.profile == profile);
                }
            }
            if blocked
                || same + 1 > profile.max_count
                || compute_after + profile.compute_slices > geo.compute_slices
            {
                continue;
            }
            let open_after = open_placements(
                geo,
                occ_after | mask,
                compute_after + profile.compute_slices,
            );
            let loss = (open_before as i64 - open_after as i64 + LOSS_BIAS).max(0) as u32;
            let c = Candidate {
                destroyed,
                loss,
                start,
            };
            if best.is_none_or(|b| c < b) {
                best = Some(c);
            }
        }
        best
    }

    /// Carries out a candidate: the new instance is taken by its pod.
    fn commit(&mut self, profile: &'static MigProfile, start: u32) {
        let mask = slice_mask(start, profile.placement_size);
        let mut kept = Vec::with_capacity(self.live.len() + 1);
        for l in self.live.drain(..) {
            if slice_mask(l.start, l.profile.placement_size) & mask != 0 {
                debug_assert!(!l.taken && !l.young);
                if l.original {
                    self.destroyed.push(InstanceAt {
                        profile: l.profile,
                        start: l.start,
                    });
                }
            } else {
                kept.push(l);
            }
        }
        kept.push(Live {
            profile,
            start,
            taken: true,
            young: false,
            original: false,
        });
        self.live = kept;
    }

    /// Takes a free instance of `profile` that exists, if any.
    fn take_free(&mut self, profile: &'static MigProfile) -> bool {
        match self
            .live
            .iter_mut()
            .find(|l| !l.taken && l.profile == profile)
        {
            Some(l) => {
                l.taken = true;
                true
            }
            None => false,
        }
    }
}

/// How many (profile, start) placements the empty space still allows.
fn open_placements(geo: &MigGeometry, occupied: u64, compute: u32) -> u32 {
    let free_compute = geo.compute_slices.saturating_sub(compute);
    let mut n = 0;
    for p in geo.profiles {
        if p.compute_slices > free_compute {
            continue;
        }
        for &s in p.placement_starts {
            if s + p.placement_size <= geo.memory_slices
                && slice_mask(s, p.placement_size) & occupied == 0
            {
                n += 1;
            }
        }
    }
    n
}

/// Resource names interned per decision, and per model which profile each is.
struct Resources {
    names: HashMap<String, usize>,
    /// `profile[model][resource]`.
    profile: Vec<Vec<Option<&'static MigProfile>>>,
    models: Vec<&'static GpuModel>,
}

impl Resources {
    fn new(cluster: &Cluster, demand: &Demand) -> Self {
        let mut names: HashMap<String, usize> = HashMap::new();
        for pod in &demand.pods {
            for (r, _) in &pod.slices {
                let n = names.len();
                names.entry(r.clone()).or_insert(n);
            }
        }
        let mut models: Vec<&'static GpuModel> = Vec::new();
        for gpu in cluster.nodes.iter().flat_map(|n| &n.gpus) {
            if !models.iter().any(|m| std::ptr::eq(*m, gpu.model)) {
                models.push(gpu.model);
            }
        }
        let mut by_name: Vec<(&String, usize)> = names.iter().map(|(k, v)| (k, *v)).collect();
        by_name.sort_by_key(|(_, v)| *v);
        let profile = models
            .iter()
            .map(|m| {
                by_name
                    .iter()
                    .map(|(name, _)| m.mig.as_ref().and_then(|g| dotted_profile(g, name)))
                    .collect()
            })
            .collect();
        Resources {
            names,
            profile,
            models,
        }
    }

    fn model_index(&self, model: &'static GpuModel) -> usize {
        self.models
            .iter()
            .position(|m| std::ptr::eq(*m, model))
            .unwrap_or(0)
    }

    fn id(&self, name: &str) -> usize {
        self.names[name]
    }
}

/// The profile whose resource name (`+` written as `.`) is `name`.
fn dotted_profile(geo: &MigGeometry, name: &str) -> Option<&'static MigProfile> {
    geo.profiles
        .iter()
        .find(|p| p.name.len() == name.len() && p.name.replace('+', ".") == name)
}

/// The plan under `settings.policy`: see the module's documentation.
pub fn decide(cluster: &Cluster, demand: &Demand, settings: &Settings) -> Plan {
    let res = Resources::new(cluster, demand);
    let mut gpus: Vec<WorkGpu> = Vec::new();
    let mut node_gpus: Vec<std::ops::Range<usize>> = Vec::new();
    for (ni, node) in cluster.nodes.iter().enumerate() {
        let first = gpus.len();
        for (gi, gpu) in node.gpus.iter().enumerate() {
            let geo = gpu.model.mig.as_ref().filter(|_| gpu.mig_enabled);
            gpus.push(WorkGpu {
                node: ni,
                gpu: gi,
                geo,
                model: res.model_index(gpu.model),
                changeable: geo.is_some() && !node.frozen && settings.policy != Policy::Fixed,
                live: if geo.is_some() {
                    gpu.instances
                        .iter()
                        .map(|i| Live {
                            profile: i.profile,
                            start: i.start,
                            taken: i.held,
                            young: !i.held
                                && settings.now_s
                                    < i.free_since_s.saturating_add(settings.min_free_age_s),
                            original: true,
                        })
                        .collect()
                } else {
                    Vec::new()
                },
                destroyed: Vec::new(),
            });
        }
        node_gpus.push(first..gpus.len());
    }

    // 1. What fits without any change: existing free instances, then
    //    Karpenter's in-flight capacity.
    let mut outcomes = vec![PodOutcome::Unserved; demand.pods.len()];
    let mut in_flight: HashMap<&str, u32> = HashMap::new();
    for (r, n) in &demand.in_flight {
        *in_flight.entry(r.as_str()).or_default() += n;
    }
    // Free instances per resource, lowest node last so `pop` takes it first.
    let mut free: Vec<Vec<(usize, usize)>> = vec![Vec::new(); res.names.len()];
    for (g, gpu) in gpus.iter().enumerate().rev() {
        for (i, l) in gpu.live.iter().enumerate().rev() {
            if l.taken {
                continue;
            }
            for (r, p) in res.profile[gpu.model].iter().enumerate() {
                if *p == Some(l.profile) {
                    free[r].push((g, i));
                }
            }
        }
    }
    for (k, pod) in demand.pods.iter().enumerate() {
        if let Some(r) = pod.single() {
            let stack = &mut free[res.id(r)];
            if pod.eligible.is_none() {
                while let Some((g, i)) = stack.pop() {
                    if !gpus[g].live[i].taken {
                        gpus[g].live[i].taken = true;
                        outcomes[k] = PodOutcome::Fits { node: gpus[g].node };
                        break;
                    }
                }
            } else if let Some(at) = stack
                .iter()
                .rposition(|&(g, i)| !gpus[g].live[i].taken && pod.may_run_on(gpus[g].node))
            {
                // Lowest eligible node first, as `pop` takes it.
                let (g, i) = stack.remove(at);
                gpus[g].live[i].taken = true;
                outcomes[k] = PodOutcome::Fits { node: gpus[g].node };
            }
        } else if let Some(node) = fits_existing(&mut gpus, &node_gpus, &res, pod) {
            outcomes[k] = PodOutcome::Fits { node };
        }
        if outcomes[k] == PodOutcome::Unserved && !pod.slices.is_empty() {
            let mut needs: HashMap<&str, u32> = HashMap::new();
            for (r, n) in &pod.slices {
                *needs.entry(r.as_str()).or_default() += n;
            }
            if needs
                .iter()
                .all(|(r, n)| in_flight.get(r).is_some_and(|have| have >= n))
            {
                for (r, n) in needs {
                    if let Some(have) = in_flight.get_mut(r) {
                        *have -= n;
                    }
                }
                outcomes[k] = PodOutcome::InFlight;
            }
        }
    }

    // 2. Changes for the rest, pod by pod in priority order.
    if settings.policy != Policy::Fixed {
        if settings.policy == Policy::WholeGpu {
            for gpu in &mut gpus {
                gpu.changeable &= !gpu.held_or_taken();
            }
        }
        let n_res = res.names.len();
        let mut best: Vec<Vec<Option<Candidate>>> = vec![vec![None; gpus.len()]; n_res];
        let refresh = |gpus: &Vec<WorkGpu>, best: &mut Vec<Vec<Option<Candidate>>>, g: usize| {
            for (r, slot) in best.iter_mut().enumerate() {
                slot[g] = res.profile[gpus[g].model][r].and_then(|p| gpus[g].best(p));
            }
        };
        for g in 0..gpus.len() {
            refresh(&gpus, &mut best, g);
        }
        for (k, pod) in demand.pods.iter().enumerate() {
            if outcomes[k] != PodOutcome::Unserved || pod.slices.is_empty() {
                continue;
            }
            if let Some(r) = pod.single() {
                let r = res.id(r);
                let mut pick: Option<(Candidate, usize)> = None;
                for (g, c) in best[r].iter().enumerate() {
                    if let Some(c) = c
                        && pod.may_run_on(gpus[g].node)
                        && pick.is_none_or(|(b, _)| (c.destroyed, c.loss) < (b.destroyed, b.loss))
                    {
                        pick = Some((*c, g));
                    }
                }
                // A GPU has a candidate only for a profile of its model.
                if let Some((c, g)) = pick
                    && let Some(profile) = res.profile[gpus[g].model][r]
                {
                    gpus[g].commit(profile, c.start);
                    refresh(&gpus, &mut best, g);
                    outcomes[k] = PodOutcome::Unlocked { node: gpus[g].node };
                }
            } else if let Some((node, changed)) =
                unlock_on_some_node(&mut gpus, &node_gpus, &res, pod)
            {
                for g in changed {
                    refresh(&gpus, &mut best, g);
                }
                outcomes[k] = PodOutcome::Unlocked { node };
            }
        }
    }

    let changes = gpus
        .into_iter()
        .filter_map(|g| change_of(g, cluster, settings.policy))
        .collect();
    Plan { changes, outcomes }
}

/// A pod of several slices that the free instances of one node fit.
fn fits_existing(
    gpus: &mut [WorkGpu],
    node_gpus: &[std::ops::Range<usize>],
    res: &Resources,
    pod: &PendingPod,
) -> Option<usize> {
    for (node, range) in node_gpus.iter().enumerate() {
        if !pod.may_run_on(node) {
            continue;
        }
        let mut trial: Vec<WorkGpu> = gpus[range.clone()].to_vec();
        let all = pod.slices.iter().all(|(r, n)| {
            let r = res.id(r);
            (0..*n).all(|_| {
                trial.iter_mut().any(|g| match res.profile[g.model][r] {
                    Some(p) if g.geo.is_some() => g.take_free(p),
                    _ => false,
                })
            })
        });
        if all {
            gpus[range.clone()].clone_from_slice(&trial);
            return Some(node);
        }
    }
    None
}

/// A pod of several slices: the node where free instances plus the cheapest
/// changes fit it all, and the GPUs that changed.
fn unlock_on_some_node(
    gpus: &mut [WorkGpu],
    node_gpus: &[std::ops::Range<usize>],
    res: &Resources,
    pod: &PendingPod,
) -> Option<(usize, Vec<usize>)> {
    let mut pick: Option<((u32, u32), usize, Vec<WorkGpu>)> = None;
    for (node, range) in node_gpus.iter().enumerate() {
        if !pod.may_run_on(node) || !gpus[range.clone()].iter().any(|g| g.changeable) {
            continue;
        }
        let mut trial: Vec<WorkGpu> = gpus[range.clone()].to_vec();
        let mut cost = (0u32, 0u32);
        let mut ok = true;
        'slices: for (r, n) in &pod.slices {
            let r = res.id(r);
            for _ in 0..*n {
                let used_free = trial.iter_mut().any(|g| match res.profile[g.model][r] {
                    Some(p) if g.geo.is_some() => g.take_free(p),
                    _ => false,
                });
                if used_free {
                    continue;
                }
                let best = trial
                    .iter()
                    .enumerate()
                    .filter_map(|(t, g)| {
                        let p = res.profile[g.model][r]?;
                        g.best(p).map(|c| (c, t, p))
                    })
                    .min_by_key(|(c, t, _)| (c.destroyed, c.loss, *t));
                match best {
                    Some((c, t, p)) => {
                        cost.0 += c.destroyed;
                        cost.1 += c.loss;
                        trial[t].commit(p, c.start);
                    }
                    None => {
                        ok = false;
                        break 'slices;
                    }
                }
            }
        }
        if ok && pick.as_ref().is_none_or(|(c, _, _)| cost < *c) {
            pick = Some((cost, node, trial));
        }
    }
    let (_, node, trial) = pick?;
    let range = node_gpus[node].clone();
    gpus[range.clone()].clone_from_slice(&trial);
    Some((node, range.collect()))
}

fn change_of(g: WorkGpu, cluster: &Cluster, policy: Policy) -> Option<GpuChange> {
    let created: Vec<InstanceAt> = g
        .live
        .iter()
        .filter(|l| !l.original)
        .map(|l| InstanceAt {
            profile: l.profile,
            start: l.start,
        })
        .collect();
    if created.is_empty() && g.destroyed.is_empty() {
        return None;
    }
    if policy == Policy::WholeGpu {
        let before = &cluster.nodes[g.node].gpus[g.gpu].instances;
        let mut create: Vec<InstanceAt> = g
            .live
            .iter()
            .map(|l| InstanceAt {
                profile: l.profile,
                start: l.start,
            })
            .collect();
        create.sort_by_key(|i| i.start);
        return Some(GpuChange {
            node: g.node,
            gpu: g.gpu,
            destroy: before
                .iter()
                .map(|i| InstanceAt {
                    profile: i.profile,
                    start: i.start,
                })
                .collect(),
            create,
            whole_gpu: true,
        });
    }
    let mut destroy = g.destroyed;
    destroy.sort_by_key(|i| i.start);
    let mut create = created;
    create.sort_by_key(|i| i.start);
    Some(GpuChange {
        node: g.node,
        gpu: g.gpu,
        destroy,
        create,
        whole_gpu: false,
    })
}
