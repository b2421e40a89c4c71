//! Preferred allocation: which of the available devices a container should get.
//!
//! Pure and cheap: the kubelet asks during pod admission, so the answer must
//! come in microseconds even for 10,000 replicas. Two policies:
//! - whole GPUs: keep the set tightly linked (NVLink count, then NUMA node);
//! - replicas and MIG devices: spread over (or pack onto) physical GPUs,
//!   counting MIG devices by their parent GPU, which NVIDIA's plugin ignores.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::config::AllocationPolicy;
use crate::gpu::{Inventory, PcieLevel};
use crate::plan::Resource;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("not enough available devices to satisfy allocation")]
    NotEnoughDevices,
    #[error("must-include device {0} is not among the available devices")]
    MustIncludeUnavailable(String),
    #[error("{must_include} must-include devices are more than the {size} requested")]
    MustIncludeOverSize { must_include: usize, size: usize },
}

/// An id as it may appear in a message: ids come from the kubelet and are
/// not bounded there, so a long one is cut (an error echoing a 100 KB id
/// once made a trailer the client refused).
pub fn id_for_message(id: &str) -> String {
    const MAX: usize = 80;
    if id.len() <= MAX {
        return id.to_string();
    }
    let mut end = MAX;
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &id[..end], id.len())
}

/// Pairwise link strength between GPUs, by GPU index.
#[derive(Debug, Clone, Default)]
pub struct LinkScores {
    scores: HashMap<(u32, u32), u32>,
}

impl LinkScores {
    /// The weights of NVIDIA's go-gpuallocator: 100 per NVLink, plus the PCIe
    /// path (same board 60, one switch 50, several switches 40, host bridge
    /// 30, same NUMA node 20, across nodes 10); without PCIe information,
    /// the NUMA nodes decide (20 or 10).
    pub fn from_inventory(inventory: &Inventory) -> Self {
        let mut scores = HashMap::new();
        for a in &inventory.gpus {
            for b in &inventory.gpus {
                if a.index >= b.index {
                    continue;
                }
                let links = a
                    .nvlinks
                    .iter()
                    .find(|l| l.peer_index == b.index)
                    .map_or(0, |l| l.links);
                let path = match a.pcie.iter().find(|p| p.peer_index == b.index) {
                    Some(peer) => match peer.level {
                        PcieLevel::Board => 60,
                        PcieLevel::SingleSwitch => 50,
                        PcieLevel::MultipleSwitches => 40,
                        PcieLevel::HostBridge => 30,
                        PcieLevel::Node => 20,
                        PcieLevel::System => 10,
                    },
                    None => match (a.numa_node, b.numa_node) {
                        (Some(x), Some(y)) if x == y => 20,
                        _ => 10,
                    },
                };
                scores.insert((a.index, b.index), links * 100 + path);
            }
        }
        LinkScores { scores }
    }

    fn pair(&self, a: u32, b: u32) -> u32 {
        let key = if a < b { (a, b) } else { (b, a) };
        self.scores.get(&key).copied().unwrap_or(0)
    }
}

/// Chooses `size` ids from `available`, always including `must_include`.
/// Ids that are not devices of `resource` are ignored.
///
/// Each id is looked up once; everything after works on positions in
/// `resource.devices`, so a call costs one hash lookup per available id.
pub fn preferred(
    resource: &Resource,
    available: &[String],
    must_include: &[String],
    size: usize,
    policy: AllocationPolicy,
    links: &LinkScores,
) -> Result<Vec<String>, PlacementError> {
    // Positions already taken (chosen or a candidate): the kubelet's lists
    // may repeat ids, and an answer must never hold one twice.
    let mut seen = vec![false; resource.devices.len()];
    let mut candidates: Vec<usize> = Vec::with_capacity(available.len());
    for id in available {
        if let Some(p) = resource.position(id)
            && !std::mem::replace(&mut seen[p], true)
        {
            candidates.push(p);
        }
    }
    let mut chosen: Vec<usize> = Vec::with_capacity(size);
    for id in must_include {
        let p = resource
            .position(id)
            .filter(|&p| seen[p])
            .ok_or_else(|| PlacementError::MustIncludeUnavailable(id_for_message(id)))?;
        if !chosen.contains(&p) {
            chosen.push(p);
        }
    }
    if chosen.len() > size {
        return Err(PlacementError::MustIncludeOverSize {
            must_include: chosen.len(),
            size,
        });
    }
    candidates.retain(|p| !chosen.contains(p));
    let needed = size.saturating_sub(chosen.len());
    if candidates.len() < needed {
        return Err(PlacementError::NotEnoughDevices);
    }
    let shared = resource
        .devices
        .iter()
        .any(|d| d.replica.is_some() || d.physical.mig.is_some());
    let mps = resource.sharing.is_some_and(|s| s.mps.is_some());
    let picks = if mps && size > 1 {
        // Memory by count: one container's MPS replicas must share a GPU
        // (Allocate refuses them spread); when no GPU has enough, the
        // spread answer lets Allocate say why.
        one_gpu(resource, &chosen, &candidates, needed, policy)
            .unwrap_or_else(|| by_gpu_load(resource, &chosen, &candidates, needed, policy))
    } else if shared {
        by_gpu_load(resource, &chosen, &candidates, needed, policy)
    } else {
        tightly_linked(resource, &chosen, &candidates, needed, links)
    };
    chosen.extend(picks);
    Ok(chosen
        .into_iter()
        .map(|p| resource.devices[p].id.clone())
        .collect())
}

fn gpu_at(resource: &Resource, position: usize) -> u32 {
    resource.devices[position].physical.gpu_index
}

/// Greedy over physical GPUs. A GPU's load is its devices of this resource
/// that are already in use (total − available) plus those picked in this
/// call: `distributed` takes from the least loaded GPU, `packed` from the
/// most loaded one (ties: lower GPU index), so a 2-replica request lands on
/// two GPUs when spread and on one when packed. Within a GPU all devices
/// are equivalent and are taken in the order the kubelet listed them.
fn by_gpu_load(
    resource: &Resource,
    chosen: &[usize],
    candidates: &[usize],
    needed: usize,
    policy: AllocationPolicy,
) -> Vec<usize> {
    if needed == 0 {
        return Vec::new();
    }
    // GPU indices are small: plain vectors indexed by GPU beat hash maps.
    let gpus = resource.gpu_slots();
    let mut per_gpu: Vec<Vec<usize>> = vec![Vec::new(); gpus];
    for &p in candidates {
        per_gpu[gpu_at(resource, p) as usize].push(p);
    }
    let mut load: Vec<usize> = vec![0; gpus];
    let mut chosen_on: Vec<usize> = vec![0; gpus];
    for &p in chosen {
        chosen_on[gpu_at(resource, p) as usize] += 1;
    }
    for (gpu, slot) in load.iter_mut().enumerate() {
        let total = resource.devices_on_gpu(gpu as u32);
        // Must-include devices are available too (the kubelet lists them).
        let free = per_gpu[gpu].len() + chosen_on[gpu];
        *slot = total.saturating_sub(free) + chosen_on[gpu];
    }

    // Heap entries: (priority, Reverse(gpu)); the top is the GPU to take from.
    let priority = |l: usize| match policy {
        AllocationPolicy::Distributed => usize::MAX - l,
        AllocationPolicy::Packed => l,
    };
    let mut heap: BinaryHeap<(usize, Reverse<usize>)> = (0..gpus)
        .filter(|&gpu| !per_gpu[gpu].is_empty())
        .map(|gpu| (priority(load[gpu]), Reverse(gpu)))
        .collect();
    let mut next: Vec<usize> = vec![0; gpus];
    let mut picks = Vec::with_capacity(needed);
    while picks.len() < needed {
        let Some((_, Reverse(gpu))) = heap.pop() else {
            break;
        };
        let Some(&p) = per_gpu[gpu].get(next[gpu]) else {
            continue;
        };
        next[gpu] += 1;
        picks.push(p);
        load[gpu] += 1;
        if next[gpu] < per_gpu[gpu].len() {
            heap.push((priority(load[gpu]), Reverse(gpu)));
        }
    }
    picks
}

/// All `needed` picks from one GPU: the GPU of the must-include devices if
/// they are on one, else (by `policy`) the most loaded GPU that still has
/// enough free, or the least loaded one. `None` when no GPU can hold them.
fn one_gpu(
    resource: &Resource,
    chosen: &[usize],
    candidates: &[usize],
    needed: usize,
    policy: AllocationPolicy,
) -> Option<Vec<usize>> {
    let gpus = resource.gpu_slots();
    let mut per_gpu: Vec<Vec<usize>> = vec![Vec::new(); gpus];
    for &p in candidates {
        per_gpu[gpu_at(resource, p) as usize].push(p);
    }
    let mut required: Option<usize> = None;
    for &p in chosen {
        let gpu = gpu_at(resource, p) as usize;
        if required.is_some_and(|g| g != gpu) {
            return None;
        }
        required = Some(gpu);
    }
    let free_on = |gpu: usize| {
        per_gpu[gpu].len()
            + chosen
                .iter()
                .filter(|&&p| gpu_at(resource, p) as usize == gpu)
                .count()
    };
    let gpu = match required {
        Some(gpu) => (per_gpu[gpu].len() >= needed).then_some(gpu)?,
        None => {
            let fitting = (0..gpus).filter(|&g| per_gpu[g].len() >= needed);
            let in_use = |g: usize| resource.devices_on_gpu(g as u32).saturating_sub(free_on(g));
            match policy {
                // Ties: the lower GPU index (min_by_key/max_by_key keep the
                // first/last, so the key carries the index).
                AllocationPolicy::Packed => fitting.max_by_key(|&g| (in_use(g), Reverse(g)))?,
                AllocationPolicy::Distributed => fitting.min_by_key(|&g| (in_use(g), g))?,
            }
        }
    };
    Some(per_gpu[gpu][..needed].to_vec())
}

/// Whole GPUs: grow the set one GPU at a time, each time adding the GPU with
/// the strongest links to those already chosen. Without must-include GPUs,
/// every candidate is tried as the seed and the best-scoring set wins.
fn tightly_linked(
    resource: &Resource,
    chosen: &[usize],
    candidates: &[usize],
    needed: usize,
    links: &LinkScores,
) -> Vec<usize> {
    if needed == 0 {
        return Vec::new();
    }
    let grow = |mut set: Vec<u32>, mut pool: Vec<(u32, usize)>, count: usize| {
        let mut picks = Vec::with_capacity(count);
        while picks.len() < count && !pool.is_empty() {
            let best = pool
                .iter()
                .enumerate()
                .max_by_key(|(i, (gpu, _))| {
                    let score: u32 = set.iter().map(|&s| links.pair(s, *gpu)).sum();
                    (score, Reverse(*i))
                })
                .map(|(i, _)| i)
                .unwrap_or(0);
            let (gpu, p) = pool.remove(best);
            set.push(gpu);
            picks.push(p);
        }
        let score: u32 = set
            .iter()
            .enumerate()
            .flat_map(|(i, a)| set[i + 1..].iter().map(move |b| (*a, *b)))
            .map(|(a, b)| links.pair(a, b))
            .sum();
        (score, picks)
    };
    let pool: Vec<(u32, usize)> = candidates
        .iter()
        .map(|&p| (gpu_at(resource, p), p))
        .collect();
    if !chosen.is_empty() || candidates.len() > 64 {
        let set = chosen.iter().map(|&p| gpu_at(resource, p)).collect();
        return grow(set, pool, needed).1;
    }
    let mut best: Option<(u32, Vec<usize>)> = None;
    for seed in 0..pool.len() {
        let mut rest = pool.clone();
        let (gpu, p) = rest.remove(seed);
        let (score, mut picks) = grow(vec![gpu], rest, needed - 1);
        picks.insert(0, p);
        if best.as_ref().is_none_or(|(s, _)| score > *s) {
            best = Some((score, picks));
        }
    }
    best.map(|(_, picks)| picks).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn gpu_of(resource: &Resource, id: &str) -> u32 {
        resource
            .device(id)
            .map_or(u32::MAX, |d| d.physical.gpu_index)
    }
    use crate::config::{Config, MigStrategy, ReplicatedResource};
    use crate::gpu::{Gpu, MigDevice, NvLinkPeer, PciePeer};
    use crate::plan::plan;
    use proptest::prelude::*;

    /// 8 GPUs in two NVLink islands of four (0-3, 4-7), NUMA node per island.
    fn islands(mig_profiles: &[&str]) -> Inventory {
        let gpus = (0..8u32)
            .map(|index| Gpu {
                index,
                model: "NVIDIA A100-SXM4-40GB".into(),
                uuid: format!("GPU-{index}"),
                memory_mib: 40960,
                pci_bus_id: String::new(),
                pci_device_id: 0,
                numa_node: Some(i64::from(index / 4)),
                minor: index,
                mig_capable: true,
                mig_enabled: !mig_profiles.is_empty(),
                mig_devices: mig_profiles
                    .iter()
                    .enumerate()
                    .map(|(j, p)| MigDevice {
                        index: j as u32,
                        profile: (*p).into(),
                        uuid: format!("MIG-{index}-{j}"),
                        gpu_instance_id: j as u32,
                        compute_instance_id: 0,
                        memory_mib: 4864,
                        attributes: None,
                        placement_start: None,
                    })
                    .collect(),
                nvlinks: (0..8u32)
                    .filter(|p| *p != index && p / 4 == index / 4)
                    .map(|peer_index| NvLinkPeer {
                        peer_index,
                        links: 4,
                    })
                    .collect(),
                pcie: vec![],
                compute_capability: None,
                pci_class: None,
            })
            .collect();
        Inventory {
            gpus,
            ..Default::default()
        }
    }

    fn resource_for(inventory: &Inventory, config: &Config, name: &str) -> Resource {
        plan(inventory, config)
            .resource(name)
            .cloned()
            .expect("resource planned")
    }

    fn ids(resource: &Resource) -> Vec<String> {
        resource.devices.iter().map(|d| d.id.clone()).collect()
    }

    fn strings(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn whole_gpus_stay_within_an_nvlink_island() {
        let inventory = islands(&[]);
        let resource = resource_for(&inventory, &Config::default(), "nvidia.com/gpu");
        let links = LinkScores::from_inventory(&inventory);
        // GPUs 0 and 5 are busy: island A has 3 free, island B has 3 free.
        let available = strings(&["GPU-1", "GPU-2", "GPU-3", "GPU-4", "GPU-6", "GPU-7"]);
        let got = preferred(
            &resource,
            &available,
            &[],
            3,
            AllocationPolicy::Distributed,
            &links,
        )
        .expect("ok");
        let island: HashSet<u32> = got.iter().map(|id| gpu_of(&resource, id) / 4).collect();
        assert_eq!(island.len(), 1, "{got:?}");

        // A must-include GPU pulls the rest into its island.
        let got = preferred(
            &resource,
            &available,
            &strings(&["GPU-6"]),
            2,
            AllocationPolicy::Distributed,
            &links,
        )
        .expect("ok");
        assert_eq!(got[0], "GPU-6");
        assert_eq!(gpu_of(&resource, &got[1]) / 4, 1, "{got:?}");
    }

    #[test]
    fn without_nvlink_the_pcie_switch_decides() {
        // g5.48xlarge-like: 8 GPUs, no NVLink, pairs behind one PCIe switch.
        let mut inventory = islands(&[]);
        for gpu in &mut inventory.gpus {
            gpu.nvlinks.clear();
            let me = gpu.index;
            gpu.pcie = (0..8u32)
                .filter(|p| *p != me)
                .map(|peer_index| PciePeer {
                    peer_index,
                    level: if peer_index / 2 == me / 2 {
                        PcieLevel::SingleSwitch
                    } else if peer_index / 4 == me / 4 {
                        PcieLevel::Node
                    } else {
                        PcieLevel::System
                    },
                })
                .collect();
        }
        let resource = resource_for(&inventory, &Config::default(), "nvidia.com/gpu");
        let links = LinkScores::from_inventory(&inventory);
        // GPU 2 is busy, so its switch partner 3 is alone; 6 and 7 share a switch.
        let available = strings(&["GPU-0", "GPU-3", "GPU-5", "GPU-6", "GPU-7"]);
        let got = preferred(
            &resource,
            &available,
            &[],
            2,
            AllocationPolicy::Distributed,
            &links,
        )
        .expect("ok");
        assert_eq!(got, strings(&["GPU-6", "GPU-7"]));
        let got = preferred(
            &resource,
            &available,
            &strings(&["GPU-3"]),
            2,
            AllocationPolicy::Distributed,
            &links,
        )
        .expect("ok");
        assert_eq!(
            got,
            strings(&["GPU-3", "GPU-0"]),
            "same NUMA node beats crossing it"
        );
    }

    fn shared_config(replicas: u32) -> Config {
        let mut config = Config::default();
        config
            .sharing
            .time_slicing
            .resources
            .push(ReplicatedResource::every("nvidia.com/gpu", replicas));
        config
    }

    #[test]
    fn replicas_spread_or_pack_as_asked() {
        let inventory = islands(&[]);
        let resource = resource_for(&inventory, &shared_config(4), "nvidia.com/gpu");
        let links = LinkScores::from_inventory(&inventory);
        // GPU 0 already has one replica in use.
        let available: Vec<String> = ids(&resource)
            .into_iter()
            .filter(|id| id != "GPU-0::0")
            .collect();

        let spread = preferred(
            &resource,
            &available,
            &[],
            3,
            AllocationPolicy::Distributed,
            &links,
        )
        .expect("ok");
        let gpus: HashSet<u32> = spread.iter().map(|id| gpu_of(&resource, id)).collect();
        assert_eq!(gpus.len(), 3, "distinct GPUs: {spread:?}");
        assert!(!gpus.contains(&0), "the busy GPU is avoided: {spread:?}");

        let packed = preferred(
            &resource,
            &available,
            &[],
            3,
            AllocationPolicy::Packed,
            &links,
        )
        .expect("ok");
        assert_eq!(packed, strings(&["GPU-0::1", "GPU-0::2", "GPU-0::3"]));
    }

    /// MPS replicas of one container share a GPU under either policy: the
    /// least loaded GPU that fits when distributed, the fullest one that
    /// still fits when packed, the must-include device's GPU when given.
    #[test]
    fn mps_requests_stay_on_one_gpu() {
        let inventory = islands(&[]);
        let mut config = Config::default();
        config.flags.mps_root = "/run/nvidia/mps".into();
        let mut entry = ReplicatedResource::every("nvidia.com/gpu", 4);
        entry.mps.max_replicas_per_container = 4;
        config.sharing.mps = Some(crate::config::ReplicatedResources {
            rename_by_default: false,
            fail_requests_greater_than_one: false,
            resources: vec![entry],
        });
        let resource = resource_for(&inventory, &config, "nvidia.com/gpu");
        let links = LinkScores::from_inventory(&inventory);
        // GPU 0 has one replica in use, GPU 1 three.
        let busy = ["GPU-0::0", "GPU-1::0", "GPU-1::1", "GPU-1::2"];
        let available: Vec<String> = ids(&resource)
            .into_iter()
            .filter(|id| !busy.contains(&id.as_str()))
            .collect();
        let ask = |size: usize, must: &[&str], policy| {
            preferred(&resource, &available, &strings(must), size, policy, &links)
                .expect("answered")
        };
        let spread = ask(2, &[], AllocationPolicy::Distributed);
        assert_eq!(spread, strings(&["GPU-2::0", "GPU-2::1"]), "an idle GPU");
        let packed = ask(3, &[], AllocationPolicy::Packed);
        assert_eq!(
            packed,
            strings(&["GPU-0::1", "GPU-0::2", "GPU-0::3"]),
            "GPU 1 is fuller but has one free: the fullest that fits"
        );
        let with = ask(3, &["GPU-0::2"], AllocationPolicy::Distributed);
        assert_eq!(with, strings(&["GPU-0::2", "GPU-0::1", "GPU-0::3"]));
    }

    #[test]
    fn mig_devices_spread_by_parent_gpu() {
        let inventory = islands(&["1g.5gb"; 7]);
        let mut config = Config::default();
        config.flags.mig_strategy = MigStrategy::Mixed;
        let resource = resource_for(&inventory, &config, "nvidia.com/mig-1g.5gb");
        let links = LinkScores::from_inventory(&inventory);
        let got = preferred(
            &resource,
            &ids(&resource),
            &[],
            8,
            AllocationPolicy::Distributed,
            &links,
        )
        .expect("ok");
        let parents: HashSet<u32> = got.iter().map(|id| gpu_of(&resource, id)).collect();
        assert_eq!(parents.len(), 8, "{got:?}");
    }

    /// The kubelet's lists may repeat ids or name must-include ids that are
    /// not available; answers held duplicates, unavailable ids and more ids
    /// than the size asked. Now: no duplicates, never more than asked, and
    /// must-include ⊆ available or a clear error.
    #[test]
    fn answers_hold_no_duplicates_nor_more_than_asked() {
        let inventory = islands(&[]);
        let resource = resource_for(&inventory, &shared_config(4), "nvidia.com/gpu");
        let all = ids(&resource);
        let one = &all[0];
        let links = LinkScores::default();
        let repeated = vec![one.clone(), one.clone(), one.clone(), all[1].clone()];
        for policy in [AllocationPolicy::Packed, AllocationPolicy::Distributed] {
            let got = preferred(&resource, &repeated, &[], 2, policy, &links).expect("two fit");
            assert_eq!(got.len(), 2);
            assert_ne!(got[0], got[1], "{got:?}");
            let err = preferred(&resource, &repeated, &[], 3, policy, &links)
                .expect_err("only two distinct ids");
            assert_eq!(err, PlacementError::NotEnoughDevices);
        }
        let err = preferred(
            &resource,
            &all[1..],
            std::slice::from_ref(one),
            1,
            AllocationPolicy::Packed,
            &links,
        )
        .expect_err("must-include not available");
        assert_eq!(
            err.to_string(),
            format!("must-include device {one} is not among the available devices")
        );
        let err = preferred(
            &resource,
            &all,
            &all[..3],
            2,
            AllocationPolicy::Packed,
            &links,
        )
        .expect_err("three must-include, size two");
        assert_eq!(
            err.to_string(),
            "3 must-include devices are more than the 2 requested"
        );
        // A long id is cut in the message.
        let long = "x".repeat(100_000);
        let err = preferred(
            &resource,
            &all,
            std::slice::from_ref(&long),
            1,
            AllocationPolicy::Packed,
            &links,
        )
        .expect_err("unknown");
        assert!(err.to_string().len() < 200, "{}", err.to_string().len());
        assert!(err.to_string().contains("(100000 bytes)"));
    }

    #[test]
    fn too_few_devices_is_an_error() {
        let inventory = islands(&[]);
        let resource = resource_for(&inventory, &Config::default(), "nvidia.com/gpu");
        let err = preferred(
            &resource,
            &strings(&["GPU-0"]),
            &[],
            2,
            AllocationPolicy::Packed,
            &LinkScores::default(),
        )
        .expect_err("too few");
        assert_eq!(
            err.to_string(),
            "not enough available devices to satisfy allocation"
        );
    }

    proptest! {
        /// Whatever the inputs, the answer has the requested size, contains
        /// every must-include id, only available ids, and no duplicates.
        #[test]
        fn answers_are_well_formed(
            replicas in 2u32..6,
            free_mask in proptest::collection::vec(any::<bool>(), 40),
            must in 0usize..3,
            size in 1usize..10,
            packed in any::<bool>(),
        ) {
            let inventory = islands(&[]);
            let resource = resource_for(&inventory, &shared_config(replicas), "nvidia.com/gpu");
            let available: Vec<String> = ids(&resource)
                .into_iter()
                .zip(free_mask.iter().cycle())
                .filter(|(_, free)| **free)
                .map(|(id, _)| id)
                .collect();
            let must_include: Vec<String> = available.iter().take(must.min(size)).cloned().collect();
            let policy = if packed { AllocationPolicy::Packed } else { AllocationPolicy::Distributed };
            let result = preferred(&resource, &available, &must_include, size, policy, &LinkScores::default());
            if available.len() < size {
                prop_assert!(result.is_err());
            } else {
                let got = result.expect("enough devices");
                prop_assert_eq!(got.len(), size);
                let unique: HashSet<&String> = got.iter().collect();
                prop_assert_eq!(unique.len(), size);
                for id in &must_include {
                    prop_assert!(got.contains(id));
                }
                for id in &got {
                    prop_assert!(available.contains(id));
                }
            }
        }
    }
}
