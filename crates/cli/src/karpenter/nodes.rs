//! What a node of an instance type can hold besides GPUs, as Karpenter's AWS
//! provider computes it before it launches anything: CPU, memory,
//! ephemeral storage and pods, each after the provider's overhead.
//!
//! The instance facts (vCPUs, memory, ENIs and IPv4 addresses per ENI) are
//! copied from the AWS provider's generated data (aws/karpenter-provider-aws
//! at 1d92708, 2026-08-21): vCPUs and memory from its generated instance-type
//! reference (`website/content/en/v1.14/reference/instance-types.md`, written
//! from EC2 `DescribeInstanceTypes` by `hack/docs/instancetypes_gen`, release
//! v1.14.0 of 2026-07-11; the p3 types left that page in v1.13, so theirs come
//! from `v1.12/reference/instance-types.md`, release v1.12.0 of 2026-04-25),
//! the ENI limits from `pkg/providers/instancetype/zz_generated.vpclimits.go`
//! (generated 2026-08-06). The same reference page lists what the provider
//! computes from them for AL2023 with no kubelet settings; a test recomputes
//! every one of those figures with the rules below.
//!
//! The rules follow `pkg/providers/instancetype/types.go` of the same commit:
//! `computeCapacity`, `memory` (VM overhead `VM_MEMORY_OVERHEAD_PERCENT`,
//! default 0.075, and 64 MiB less on arm64), `pods` and `ENILimitedPods`,
//! `kubeReservedResources`, `systemReservedResources`, `evictionThreshold`
//! and `ephemeralStorage`; the AMI families' flags from
//! `pkg/providers/amifamily` (`resolver.go`, `bottlerocket.go`). Karpenter's
//! allocatable is capacity minus kube-reserved, system-reserved and the
//! eviction threshold (kubernetes-sigs/karpenter
//! `pkg/cloudprovider/types.go`, `InstanceType.Allocatable`).

use crate::error::InputError;
use std::collections::BTreeMap;

use serde_json::Value;

/// Where the instance facts come from, for messages and JSON.
pub const FACTS_SOURCE: &str = "Karpenter AWS provider generated data (instance-type reference v1.14.0 of 2026-07-11, p3 from v1.12.0; zz_generated.vpclimits.go of 2026-08-06; aws/karpenter-provider-aws 1d92708)";

/// The date of the newest part of [`FACTS_SOURCE`].
pub const FACTS_DATE: &str = "2026-08-06";

/// One instance type's facts: vCPUs, memory (MiB), ENIs of the default
/// network card, IPv4 addresses per ENI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceFacts {
    pub name: &'static str,
    pub vcpus: u64,
    pub memory_mib: u64,
    pub enis: u64,
    pub ipv4_per_eni: u64,
}

/// `(name, vCPUs, memory MiB, ENIs, IPv4 per ENI, reference page version,
/// (allocatable cpu in millicores, memory in MiB, pods) as that page lists it
/// for AL2023)`. The last column is only checked by a test.
type Row = (
    &'static str,
    u64,
    u64,
    u64,
    u64,
    &'static str,
    (u64, u64, u64),
);

#[rustfmt::skip]
const FACTS: &[Row] = &[
    ("p4d.24xlarge", 96, 1179648, 15, 50, "v1.14", (95690, 1082712, 737)),
    ("p4de.24xlarge", 96, 1179648, 15, 50, "v1.14", (95690, 1082712, 737)),
    ("p5.4xlarge", 16, 262144, 4, 30, "v1.14", (15890, 240830, 118)),
    ("p5.48xlarge", 192, 2097152, 2, 50, "v1.14", (191450, 1938410, 100)),
    ("p5e.48xlarge", 192, 2097152, 2, 50, "v1.14", (191450, 1938410, 100)),
    ("p5en.48xlarge", 192, 2097152, 4, 50, "v1.14", (191450, 1937332, 198)),
    ("p6-b200.48xlarge", 192, 2097152, 4, 50, "v1.14", (191450, 1937332, 198)),
    ("p6-b300.48xlarge", 192, 4194304, 4, 50, "v1.14", (191450, 3877198, 198)),
    ("g5.xlarge", 4, 16384, 4, 15, "v1.14", (3920, 14162, 58)),
    ("g5.2xlarge", 8, 32768, 4, 15, "v1.14", (7910, 29317, 58)),
    ("g5.4xlarge", 16, 65536, 8, 30, "v1.14", (15890, 57691, 234)),
    ("g5.8xlarge", 32, 131072, 8, 30, "v1.14", (31850, 118312, 234)),
    ("g5.16xlarge", 64, 262144, 8, 30, "v1.14", (63770, 239554, 234)),
    ("g5.12xlarge", 48, 196608, 15, 50, "v1.14", (47810, 173400, 737)),
    ("g5.24xlarge", 96, 393216, 15, 50, "v1.14", (95690, 355262, 737)),
    ("g5.48xlarge", 192, 786432, 7, 50, "v1.14", (191450, 723299, 345)),
    ("g6.xlarge", 4, 16384, 4, 15, "v1.14", (3920, 14162, 58)),
    ("g6.2xlarge", 8, 32768, 4, 15, "v1.14", (7910, 29317, 58)),
    ("g6.4xlarge", 16, 65536, 8, 30, "v1.14", (15890, 57691, 234)),
    ("g6.8xlarge", 32, 131072, 8, 30, "v1.14", (31850, 118312, 234)),
    ("g6.16xlarge", 64, 262144, 15, 50, "v1.14", (63770, 234021, 737)),
    ("g6.12xlarge", 48, 196608, 8, 30, "v1.14", (47810, 178933, 234)),
    ("g6.24xlarge", 96, 393216, 15, 50, "v1.14", (95690, 355262, 737)),
    ("g6.48xlarge", 192, 786432, 15, 50, "v1.14", (191450, 718987, 737)),
    ("gr6.4xlarge", 16, 131072, 8, 30, "v1.14", (15890, 118312, 234)),
    ("gr6.8xlarge", 32, 262144, 8, 30, "v1.14", (31850, 239554, 234)),
    ("g6e.xlarge", 4, 32768, 4, 15, "v1.14", (3920, 29317, 58)),
    ("g6e.2xlarge", 8, 65536, 4, 15, "v1.14", (7910, 59627, 58)),
    ("g6e.4xlarge", 16, 131072, 8, 30, "v1.14", (15890, 118312, 234)),
    ("g6e.8xlarge", 32, 262144, 8, 30, "v1.14", (31850, 239554, 234)),
    ("g6e.16xlarge", 64, 524288, 15, 50, "v1.14", (63770, 476504, 737)),
    ("g6e.12xlarge", 48, 393216, 10, 30, "v1.14", (47810, 360157, 292)),
    ("g6e.24xlarge", 96, 786432, 10, 50, "v1.14", (95690, 721682, 492)),
    ("g6e.48xlarge", 192, 1572864, 10, 50, "v1.14", (191450, 1449132, 492)),
    ("g5g.xlarge", 4, 8192, 4, 15, "v1.14", (3920, 6525, 58)),
    ("g5g.2xlarge", 8, 16384, 4, 15, "v1.14", (7910, 14103, 58)),
    ("g5g.4xlarge", 16, 32768, 8, 30, "v1.14", (15890, 27322, 234)),
    ("g5g.8xlarge", 32, 65536, 8, 30, "v1.14", (31850, 57632, 234)),
    ("g5g.16xlarge", 64, 131072, 15, 50, "v1.14", (63770, 112720, 737)),
    ("g5g.metal", 64, 131072, 15, 50, "v1.14", (63770, 112720, 737)),
    ("g6f.large", 2, 8192, 2, 10, "v1.14", (1930, 7002, 20)),
    ("g6f.xlarge", 4, 16384, 4, 15, "v1.14", (3920, 14162, 58)),
    ("g6f.2xlarge", 8, 32768, 4, 15, "v1.14", (7910, 29317, 58)),
    ("g6f.4xlarge", 16, 65536, 8, 30, "v1.14", (15890, 57691, 234)),
    ("gr6f.4xlarge", 16, 131072, 8, 30, "v1.14", (15890, 118312, 234)),
    ("g7.2xlarge", 8, 32768, 4, 64, "v1.14", (7910, 27161, 254)),
    ("g7.4xlarge", 16, 65536, 8, 64, "v1.14", (15890, 54699, 506)),
    ("g7.8xlarge", 32, 131072, 10, 64, "v1.14", (31850, 113934, 632)),
    ("g7.12xlarge", 48, 196608, 12, 64, "v1.14", (47810, 173169, 758)),
    ("g7.24xlarge", 96, 393216, 24, 64, "v1.14", (95690, 346715, 1514)),
    ("g7.48xlarge", 192, 786432, 12, 64, "v1.14", (191450, 718756, 758)),
    ("g7e.2xlarge", 8, 65536, 4, 64, "v1.14", (7910, 57471, 254)),
    ("g7e.4xlarge", 16, 131072, 8, 64, "v1.14", (15890, 115320, 506)),
    ("g7e.8xlarge", 32, 262144, 8, 64, "v1.14", (31850, 236562, 506)),
    ("g7e.12xlarge", 48, 524288, 10, 64, "v1.14", (47810, 477659, 632)),
    ("g7e.24xlarge", 96, 1048576, 10, 64, "v1.14", (95690, 962625, 632)),
    ("g7e.48xlarge", 192, 2097152, 10, 64, "v1.14", (191450, 1932558, 632)),
    ("g4dn.xlarge", 4, 16384, 3, 10, "v1.14", (3920, 14481, 29)),
    ("g4dn.2xlarge", 8, 32768, 3, 10, "v1.14", (7910, 29636, 29)),
    ("g4dn.4xlarge", 16, 65536, 3, 10, "v1.14", (15890, 59946, 29)),
    ("g4dn.8xlarge", 32, 131072, 4, 15, "v1.14", (31850, 120248, 58)),
    ("g4dn.16xlarge", 64, 262144, 4, 15, "v1.14", (63770, 241490, 58)),
    ("g4dn.12xlarge", 48, 196608, 8, 30, "v1.14", (47810, 178933, 234)),
    ("g4dn.metal", 96, 393216, 15, 50, "v1.14", (95690, 355262, 737)),
    ("p3.2xlarge", 8, 62464, 4, 15, "v1.12", (7910, 56786, 58)),
    ("p3.8xlarge", 32, 249856, 8, 30, "v1.12", (31850, 228187, 234)),
    ("p3.16xlarge", 64, 499712, 8, 30, "v1.12", (63770, 459304, 234)),
    ("p3dn.24xlarge", 96, 786432, 15, 50, "v1.14", (95690, 718987, 737)),
];

/// The facts of an instance type, if the provider's data has them.
pub fn facts(instance: &str) -> Option<InstanceFacts> {
    FACTS
        .iter()
        .find(|r| r.0.eq_ignore_ascii_case(instance))
        .map(
            |&(name, vcpus, memory_mib, enis, ipv4_per_eni, _, _)| InstanceFacts {
                name,
                vcpus,
                memory_mib,
                enis,
                ipv4_per_eni,
            },
        )
}

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The resource names of a node's non-GPU allocatable, in base units:
/// millicores, bytes, bytes, pods.
pub const CPU: &str = "cpu";
pub const MEMORY: &str = "memory";
pub const EPHEMERAL_STORAGE: &str = "ephemeral-storage";
pub const PODS: &str = "pods";

/// The AMI family of the EC2NodeClass, as far as capacity goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AmiFamily {
    #[default]
    Al2023,
    Al2,
    Bottlerocket,
}

impl AmiFamily {
    /// The block device whose size is the node's ephemeral storage.
    fn ephemeral_device(self) -> &'static str {
        match self {
            AmiFamily::Al2023 | AmiFamily::Al2 => "/dev/xvda",
            AmiFamily::Bottlerocket => "/dev/xvdb",
        }
    }

    /// `UsesENILimitedMemoryOverhead`: kube-reserved memory counts the
    /// ENI-limited pods even when maxPods is set (false on Bottlerocket).
    fn eni_limited_memory_overhead(self) -> bool {
        !matches!(self, AmiFamily::Bottlerocket)
    }

    /// `PodsPerCoreEnabled` (false on Bottlerocket: the setting is ignored).
    fn pods_per_core_enabled(self) -> bool {
        !matches!(self, AmiFamily::Bottlerocket)
    }

    pub fn name(self) -> &'static str {
        match self {
            AmiFamily::Al2023 => "AL2023",
            AmiFamily::Al2 => "AL2",
            AmiFamily::Bottlerocket => "Bottlerocket",
        }
    }
}

/// What an EC2NodeClass says about node capacity: its AMI family, its
/// `spec.kubelet` and the size of the ephemeral-storage volume.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeSettings {
    pub ami_family: AmiFamily,
    pub max_pods: Option<u64>,
    pub pods_per_core: Option<u64>,
    /// Resource → base units (millicores, bytes).
    pub kube_reserved: BTreeMap<String, u64>,
    pub system_reserved: BTreeMap<String, u64>,
    /// `memory.available`, `nodefs.available`: a quantity or a percentage.
    pub eviction_hard: BTreeMap<String, Threshold>,
    /// Bytes; `None`: the AMI family's default (20 GiB).
    pub ephemeral_bytes: Option<u64>,
    /// `spec.networkInterfaces` of `interfaceType: efa-only` on network
    /// card 0: each takes an ENI that holds no pod IPs.
    pub efa_only_enis: u64,
}

/// An eviction threshold: an absolute amount or a share of capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Bytes(u64),
    Percent(f64),
}

impl Threshold {
    /// `computeEvictionSignal`: a percentage of capacity, rounded up; 100 %
    /// means none.
    fn of(self, capacity: u64) -> u64 {
        match self {
            Threshold::Bytes(b) => b,
            Threshold::Percent(100.0) => 0,
            Threshold::Percent(p) => (capacity as f64 / 100.0 * p).ceil() as u64,
        }
    }
}

impl NodeSettings {
    /// Reads an EC2NodeClass (`spec.amiFamily` or the `amiSelectorTerms`
    /// alias, `spec.kubelet`, `spec.blockDeviceMappings`). Settings the
    /// model cannot follow are refused, never ignored.
    pub fn from_node_class(class: &Value, source: &str) -> Result<NodeSettings, InputError> {
        let spec = &class["spec"];
        let family = spec["amiFamily"].as_str().map(str::to_string).or_else(|| {
            spec["amiSelectorTerms"].as_array().and_then(|terms| {
                terms.iter().find_map(|t| {
                    t["alias"]
                        .as_str()
                        .map(|a| a.split('@').next().unwrap_or_default().to_string())
                })
            })
        });
        let ami_family = match family.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("al2023") => AmiFamily::Al2023,
            Some("al2") => AmiFamily::Al2,
            Some("bottlerocket") => AmiFamily::Bottlerocket,
            Some(_) => {
                return Err(crate::invalid!(
                    source,
                    "EC2NodeClass AMI family '{}' is not modelled by plan --workload \
                     (AL2023, AL2 and Bottlerocket are): its node capacity is unknown",
                    family.unwrap_or_default()
                ));
            }
        };
        if spec["instanceStorePolicy"].as_str() == Some("RAID0") {
            return Err(crate::invalid!(
                source,
                "EC2NodeClass instanceStorePolicy RAID0 (ephemeral storage on the \
                 instance store) is not modelled by plan --workload; remove it from the file given"
            ));
        }
        let mut settings = NodeSettings {
            ami_family,
            ..NodeSettings::default()
        };
        settings.read_kubelet(&spec["kubelet"], &format!("{source}: spec.kubelet"))?;
        settings.efa_only_enis = spec["networkInterfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| {
                n["networkCardIndex"].as_u64().unwrap_or(0) == 0
                    && n["interfaceType"].as_str() == Some("efa-only")
            })
            .count() as u64;
        if let Some(mappings) = spec["blockDeviceMappings"].as_array() {
            let root = mappings
                .iter()
                .find(|m| m["rootVolume"].as_bool() == Some(true))
                .or_else(|| {
                    mappings
                        .iter()
                        .find(|m| m["deviceName"].as_str() == Some(ami_family.ephemeral_device()))
                });
            if let Some(size) = root
                .map(|m| &m["ebs"]["volumeSize"])
                .filter(|v| !v.is_null())
            {
                settings.ephemeral_bytes = Some(bytes(
                    size,
                    &format!("{source}: spec.blockDeviceMappings volumeSize"),
                )?);
            }
        }
        Ok(settings)
    }

    /// Reads a `spec.kubelet` mapping (the EC2NodeClass's shape).
    pub fn read_kubelet(&mut self, kubelet: &Value, at: &str) -> Result<(), InputError> {
        if kubelet.is_null() {
            return Ok(());
        }
        if !kubelet.is_object() {
            return Err(crate::invalid!(
                at,
                "expected a mapping (maxPods, kubeReserved, ...)"
            ));
        }
        let whole = |v: &Value, key: &str| -> Result<Option<u64>, InputError> {
            match v {
                Value::Null => Ok(None),
                Value::Number(n) => n.as_u64().map(Some).ok_or_else(|| {
                    crate::invalid!(
                        format!("{at}.{key}"),
                        "expected a whole number of at least 0, not {n}"
                    )
                }),
                other => Err(crate::invalid!(
                    format!("{at}.{key}"),
                    "expected a whole number, not {other} (expressions need Karpenter's \
                     NodeClassCEL gate and are not modelled by plan --workload)"
                )),
            }
        };
        self.max_pods = whole(&kubelet["maxPods"], "maxPods")?;
        self.pods_per_core = whole(&kubelet["podsPerCore"], "podsPerCore")?;
        for (key, map) in [
            ("kubeReserved", &mut self.kube_reserved),
            ("systemReserved", &mut self.system_reserved),
        ] {
            let Some(entries) = kubelet[key].as_object() else {
                continue;
            };
            for (resource, v) in entries {
                let amount = match resource.as_str() {
                    CPU => millis(v, &format!("{at}.{key}.cpu"))?,
                    MEMORY | EPHEMERAL_STORAGE => bytes(v, &format!("{at}.{key}.{resource}"))?,
                    "pid" => continue,
                    other => {
                        return Err(crate::invalid!(
                            format!("{at}.{key}"),
                            "'{other}' is no resource the kubelet reserves; use cpu, \
                             memory, ephemeral-storage or pid"
                        ));
                    }
                };
                map.insert(resource.clone(), amount);
            }
        }
        if let Some(entries) = kubelet["evictionHard"].as_object() {
            for (signal, v) in entries {
                if signal != "memory.available" && signal != "nodefs.available" {
                    continue; // Karpenter's allocatable reads only these two.
                }
                let text = v.as_str().unwrap_or_default().trim();
                let threshold = match text.strip_suffix('%') {
                    Some(p) => Threshold::Percent(p.trim().parse().map_err(|_| {
                        crate::invalid!(
                            format!("{at}.evictionHard.{signal}"),
                            "'{text}' is no percentage"
                        )
                    })?),
                    None => Threshold::Bytes(bytes(v, &format!("{at}.evictionHard.{signal}"))?),
                };
                self.eviction_hard.insert(signal.clone(), threshold);
            }
        }
        Ok(())
    }

    /// What a node of this type can hold besides GPUs: `cpu` (millicores),
    /// `memory` and `ephemeral-storage` (bytes), `pods`.
    pub fn allocatable(&self, facts: &InstanceFacts, arch: &str) -> BTreeMap<String, u64> {
        // `ENILimitedPods`: ENIs of the default card less the EFA-only ones
        // (`RESERVED_ENIS` is 0 by default), none usable: no pods.
        let usable_enis = facts.enis.saturating_sub(self.efa_only_enis);
        let eni_pods = if usable_enis == 0 {
            0
        } else {
            usable_enis * facts.ipv4_per_eni.saturating_sub(1) + 2
        };
        let mut pods = self.max_pods.unwrap_or(eni_pods);
        if let Some(per_core) = self.pods_per_core.filter(|p| *p > 0)
            && self.ami_family.pods_per_core_enabled()
        {
            pods = pods.min(per_core * facts.vcpus);
        }
        let cpu = facts.vcpus * 1000;
        let mut memory_mib = facts.memory_mib;
        if arch == "arm64" {
            memory_mib -= 64; // Graviton's CMA reserve
        }
        let vm_overhead_mib = (memory_mib as f64 * 0.075).ceil() as u64;
        let memory = (memory_mib - vm_overhead_mib) * MIB;
        let storage = self.ephemeral_bytes.unwrap_or(20 * GIB);

        let overhead_pods = if self.ami_family.eni_limited_memory_overhead() {
            eni_pods
        } else {
            pods
        };
        let mut kube = BTreeMap::from([
            (CPU.to_string(), kube_reserved_cpu(cpu)),
            (MEMORY.to_string(), (11 * overhead_pods + 255) * MIB),
            (EPHEMERAL_STORAGE.to_string(), GIB),
        ]);
        kube.extend(self.kube_reserved.clone());
        let eviction = BTreeMap::from([
            (
                MEMORY.to_string(),
                self.eviction_hard
                    .get("memory.available")
                    .map_or(100 * MIB, |t| t.of(memory)),
            ),
            (
                EPHEMERAL_STORAGE.to_string(),
                self.eviction_hard
                    .get("nodefs.available")
                    .map_or(storage.div_ceil(10), |t| t.of(storage)),
            ),
        ]);
        let capacity = [(CPU, cpu), (MEMORY, memory), (EPHEMERAL_STORAGE, storage)];
        let mut out: BTreeMap<String, u64> = capacity
            .iter()
            .map(|&(resource, total)| {
                let reserved = [&kube, &self.system_reserved, &eviction]
                    .iter()
                    .map(|m| m.get(resource).copied().unwrap_or(0))
                    .sum::<u64>();
                (resource.to_string(), total.saturating_sub(reserved))
            })
            .collect();
        out.insert(PODS.to_string(), pods);
        out
    }
}

/// `kubeReservedResources`' CPU: 6 % of the first core, 1 % of the second,
/// 0.5 % of the next two, 0.25 % of the rest (millicores, each step
/// truncated).
fn kube_reserved_cpu(millicores: u64) -> u64 {
    [
        (0u64, 1000u64, 0.06),
        (1000, 2000, 0.01),
        (2000, 4000, 0.005),
        (4000, 1 << 31, 0.0025),
    ]
    .iter()
    .filter(|(start, _, _)| millicores >= *start)
    .map(|&(start, end, share)| ((millicores.min(end) - start) as f64 * share) as u64)
    .sum()
}

/// A CPU quantity (`"500m"`, `2`, `"1.5"`) in millicores, rounded up.
pub fn millis(v: &Value, at: &str) -> Result<u64, InputError> {
    scaled(v, 3).ok_or_else(|| {
        crate::invalid!(
            at,
            "{} is no CPU quantity; write cores (2, \"0.5\") or millicores (\"500m\")",
            shown(v)
        )
    })
}

/// A memory or storage quantity (`"12Gi"`, `"500M"`, `1073741824`) in bytes,
/// rounded up.
pub fn bytes(v: &Value, at: &str) -> Result<u64, InputError> {
    scaled(v, 0).ok_or_else(|| {
        crate::invalid!(at,
            "{} is no memory quantity; write bytes or a Kubernetes suffix (\"12Gi\", \"500Mi\", \"2G\")",
            shown(v)
        )
    })
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("'{s}'"),
        other => other.to_string(),
    }
}

/// A Kubernetes quantity times `10^decimals`, rounded up, exactly (no
/// floating point: `0.1` CPU is 100 millicores, not 101). Written here
/// because no maintained crate parses quantities without pulling in the
/// whole Kubernetes API types; bounded to 40 characters and to values that
/// fit 64 bits.
fn scaled(v: &Value, decimals: u32) -> Option<u64> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_string(),
        _ => return None,
    };
    if text.is_empty() || text.len() > 40 {
        return None;
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number = number.strip_prefix('+').unwrap_or(number);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .chars()
            .chain(fraction.chars())
            .all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let mantissa: u128 = format!("{whole}{fraction}").parse().ok()?;
    // value = mantissa * 2^binary * 10^(decimal - fraction digits + decimals)
    let (binary, decimal): (u32, i32) = match suffix {
        "" => (0, 0),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        s if s.starts_with(['e', 'E']) => {
            (0, s[1..].parse::<i32>().ok().filter(|e| e.abs() <= 30)?)
        }
        _ => return None,
    };
    let exponent = decimal - fraction.len() as i32 + decimals as i32;
    let mut value = mantissa.checked_mul(1u128.checked_shl(binary)?)?;
    if exponent >= 0 {
        value = value.checked_mul(10u128.checked_pow(exponent as u32)?)?;
    } else {
        value = value.div_ceil(10u128.checked_pow(exponent.unsigned_abs())?);
    }
    u64::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpu_slicer_core::gpu::catalog;

    /// Every preset has the provider's facts, and the rules reproduce the
    /// allocatable CPU, memory and pods that the provider's own generated
    /// reference lists for it (AL2023, no kubelet settings; ephemeral
    /// storage 17Gi for all).
    #[test]
    fn allocatable_matches_the_providers_reference() {
        let defaults = NodeSettings::default();
        for instance in catalog::instances() {
            let row = FACTS
                .iter()
                .find(|r| r.0 == instance.name)
                .unwrap_or_else(|| panic!("{} has no facts", instance.name));
            let facts = facts(instance.name).unwrap();
            let got = defaults.allocatable(&facts, instance.arch);
            let (cpu, memory_mib, pods) = row.6;
            assert_eq!(got[CPU], cpu, "{}", instance.name);
            assert_eq!(got[MEMORY], memory_mib * MIB, "{}", instance.name);
            assert_eq!(got[PODS], pods, "{}", instance.name);
            assert_eq!(got[EPHEMERAL_STORAGE], 17 * GIB, "{}", instance.name);
        }
        assert_eq!(FACTS.len(), catalog::instances().len());
    }

    /// kubelet settings of an EC2NodeClass change what a node holds.
    #[test]
    fn node_class_kubelet_settings_apply() {
        let g6 = facts("g6.xlarge").unwrap();
        let class = serde_json::json!({"spec": {
            "amiSelectorTerms": [{"alias": "al2023@latest"}],
            "kubelet": {"maxPods": 20, "systemReserved": {"cpu": "100m", "memory": "100Mi"},
                        "kubeReserved": {"cpu": "200m"},
                        "evictionHard": {"memory.available": "5%", "nodefs.available": "1Gi"}},
            "blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {"volumeSize": "100Gi"}}]
        }});
        let s = NodeSettings::from_node_class(&class, "nc.yaml").unwrap();
        let a = s.allocatable(&g6, "amd64");
        assert_eq!(a[PODS], 20);
        assert_eq!(a[CPU], 4000 - 200 - 100);
        // 15155 MiB after VM overhead; kube-reserved memory still counts
        // the ENI-limited 58 pods on AL2023 (893 MiB); 5 % eviction.
        let capacity = 15155 * MIB;
        let eviction = (capacity as f64 * 0.05).ceil() as u64;
        assert_eq!(a[MEMORY], capacity - 893 * MIB - 100 * MIB - eviction);
        assert_eq!(a[EPHEMERAL_STORAGE], 100 * GIB - GIB - GIB);
        // EFA-only interfaces on card 0 take ENIs: p5.48xlarge has 2, so one
        // leaves 1 x 49 + 2 = 51 pods.
        let p5 = facts("p5.48xlarge").unwrap();
        let class = serde_json::json!({"spec": {"networkInterfaces": [
            {"networkCardIndex": 0, "deviceIndex": 0, "interfaceType": "interface"},
            {"networkCardIndex": 0, "deviceIndex": 1, "interfaceType": "efa-only"},
            {"networkCardIndex": 1, "deviceIndex": 0, "interfaceType": "efa-only"}
        ]}});
        let s = NodeSettings::from_node_class(&class, "nc.yaml").unwrap();
        assert_eq!(s.allocatable(&p5, "amd64")[PODS], 51);
        // Bottlerocket's kube-reserved memory counts maxPods instead.
        let class =
            serde_json::json!({"spec": {"amiFamily": "Bottlerocket", "kubelet": {"maxPods": 20}}});
        let b = NodeSettings::from_node_class(&class, "nc.yaml").unwrap();
        assert_eq!(
            b.allocatable(&g6, "amd64")[MEMORY],
            (15155 - 475 - 100) * MIB
        );
        for (class, want) in [
            (
                serde_json::json!({"spec": {"amiFamily": "Windows2022"}}),
                "AMI family 'Windows2022' is not modelled",
            ),
            (
                serde_json::json!({"spec": {"kubelet": {"maxPods": "vcpus * 4"}}}),
                "maxPods: expected a whole number",
            ),
            (
                serde_json::json!({"spec": {"kubelet": {"kubeReserved": {"memory": "lots"}}}}),
                "'lots' is no memory quantity",
            ),
        ] {
            let err = NodeSettings::from_node_class(&class, "nc.yaml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn quantities_are_exact() {
        let q = |s: &str| Value::String(s.into());
        assert_eq!(millis(&q("0.1"), "x").ok(), Some(100));
        assert_eq!(millis(&q("500m"), "x").ok(), Some(500));
        assert_eq!(millis(&serde_json::json!(3), "x").ok(), Some(3000));
        assert_eq!(millis(&q("1.0005"), "x").ok(), Some(1001));
        assert_eq!(bytes(&q("12Gi"), "x").ok(), Some(12 * GIB));
        assert_eq!(bytes(&q("1.5Gi"), "x").ok(), Some(3 * GIB / 2));
        assert_eq!(bytes(&q("2G"), "x").ok(), Some(2_000_000_000));
        assert_eq!(bytes(&q("1e3"), "x").ok(), Some(1000));
        assert!(
            bytes(&q("12GB"), "x")
                .unwrap_err()
                .to_string()
                .contains("'12GB' is no memory quantity")
        );
        assert!(millis(&q("-1"), "x").is_err());
        assert!(bytes(&q("99999999999Ei"), "x").is_err());
    }
}
