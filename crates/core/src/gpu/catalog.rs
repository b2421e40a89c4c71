//! Built-in catalog: GPU models, MIG geometry, named layouts, cloud instances.
//!
//! Pure data and lookups, no I/O. Each profile table says where its values
//! come from: `HW`, read off real hardware through NVML; `DOC`, NVIDIA's MIG
//! user guide (its per-GPU "supported profiles" tables); `DER`, derived from
//! the common slice structure and NVIDIA's naming rule, not confirmed on
//! hardware. Production code discovers profiles through NVML; this catalog
//! feeds the simulated backend, tests and documentation.
//!
//! Placement model: every GPU instance occupies `placement_size` consecutive
//! memory slices starting at one of its profile's `placement_starts`, and the
//! compute slices of all instances must not exceed the GPU's. [`place`] finds a
//! deterministic placement (largest instances first, as mig-parted creates
//! them) and [`gpu_instance_id`] turns a placement into the GPU-instance id the
//! driver assigns to it.

use std::collections::BTreeMap;

/// One GPU model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuModel {
    /// Catalog key, e.g. `A100-40GB`.
    pub key: &'static str,
    /// Product name as NVML reports it, e.g. `NVIDIA A100-SXM4-40GB`.
    pub product_name: &'static str,
    /// Total framebuffer memory in MiB, as NVML reports it.
    pub memory_mib: u64,
    /// PCI device id as `0xDDDDVVVV` (vendor `10DE`), as mig-parted's `device-filter`.
    pub pci_device_id: u32,
    /// MIG geometry; `None` for GPUs without MIG support.
    pub mig: Option<MigGeometry>,
}

/// How a MIG-capable GPU can be partitioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigGeometry {
    pub compute_slices: u32,
    pub memory_slices: u32,
    pub profiles: &'static [MigProfile],
    /// The `all-balanced` layout of mig-parted for this model: `(profile, count)`.
    pub balanced: &'static [(&'static str, u32)],
}

/// One GPU-instance profile (a GI whose single CI spans it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigProfile {
    /// `1g.5gb`, `1g.5gb+me`.
    pub name: &'static str,
    /// Profile id as `nvidia-smi mig -cgi` takes it (differs per model).
    pub id: u32,
    /// Most instances of this profile on one GPU.
    pub max_count: u32,
    /// Memory of one instance in MiB.
    pub memory_mib: u64,
    /// GPU-instance (compute) slices: the `<G>` of `<G>g.<GB>gb`.
    pub compute_slices: u32,
    /// Possible placement starts, in memory slices.
    pub placement_starts: &'static [u32],
    /// Placement size, in memory slices.
    pub placement_size: u32,
    /// Streaming multiprocessors of one instance.
    pub multiprocessors: u32,
}

impl GpuModel {
    /// The model supports MIG.
    pub fn mig_capable(&self) -> bool {
        self.mig.is_some()
    }

    /// Total memory in bytes (what MIG profile names derive from).
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib * MIB
    }

    /// A profile of this model by name; `+` may be written as `.` (`1g.5gb.me`).
    pub fn mig_profile(&self, name: &str) -> Option<&'static MigProfile> {
        self.mig.as_ref().and_then(|g| g.profile(name))
    }
}

impl MigGeometry {
    /// A profile by name; `+` may be written as `.` (`1g.5gb.me` = `1g.5gb+me`).
    pub fn profile(&self, name: &str) -> Option<&'static MigProfile> {
        let wanted = name.trim().replace('+', ".");
        self.profiles
            .iter()
            .find(|p| p.name.replace('+', ".") == wanted)
    }
}

impl MigProfile {
    /// The profile name with `+` written as `.`, as mig-parted names layouts
    /// and NVIDIA's plugin names resources (`1g.5gb+me` → `1g.5gb.me`).
    pub fn dotted_name(&self) -> String {
        self.name.replace('+', ".")
    }
}

const MIB: u64 = 1 << 20;

// Placement starts (memory slices) shared by the 7-compute / 8-memory-slice parts.
const P1: &[u32] = &[0, 1, 2, 3, 4, 5, 6];
const P1_DOUBLE: &[u32] = &[0, 2, 4, 6];
const P2: &[u32] = &[0, 2, 4];
const P3: &[u32] = &[0, 4];
const P0: &[u32] = &[0];
// 4 / 4 slice parts (A30).
const Q1: &[u32] = &[0, 1, 2, 3];
const Q2: &[u32] = &[0, 2];
// 2 / 2 slice parts (RTX PRO 4500 Blackwell).
const Q1_HALF: &[u32] = &[0, 1];

#[allow(clippy::too_many_arguments)]
const fn prof(
    name: &'static str,
    id: u32,
    max_count: u32,
    memory_mib: u64,
    compute_slices: u32,
    placement_starts: &'static [u32],
    placement_size: u32,
    multiprocessors: u32,
) -> MigProfile {
    MigProfile {
        name,
        id,
        max_count,
        memory_mib,
        compute_slices,
        placement_starts,
        placement_size,
        multiprocessors,
    }
}

/// A100-SXM4-40GB (DOC). Memory: 4.75 / 9.62 / 19.62 / 39.25 GiB.
const A100_40GB_PROFILES: &[MigProfile] = &[
    prof("1g.5gb", 19, 7, 4864, 1, P1, 1, 14),
    prof("1g.5gb+me", 20, 1, 4864, 1, P1, 1, 14),
    prof("1g.10gb", 15, 4, 9856, 1, P1_DOUBLE, 2, 14),
    prof("2g.10gb", 14, 3, 9856, 2, P2, 2, 28),
    prof("3g.20gb", 9, 2, 20096, 3, P3, 4, 42),
    prof("4g.20gb", 5, 1, 20096, 4, P0, 4, 56),
    prof("7g.40gb", 0, 1, 40192, 7, P0, 8, 98),
];

/// A100-SXM4-80GB (DOC). Memory: 9.50 / 19.50 / 39.25 / 79.00 GiB.
const A100_80GB_PROFILES: &[MigProfile] = &[
    prof("1g.10gb", 19, 7, 9728, 1, P1, 1, 14),
    prof("1g.10gb+me", 20, 1, 9728, 1, P1, 1, 14),
    prof("1g.20gb", 15, 4, 19968, 1, P1_DOUBLE, 2, 14),
    prof("2g.20gb", 14, 3, 19968, 2, P2, 2, 28),
    prof("3g.40gb", 9, 2, 40192, 3, P3, 4, 42),
    prof("4g.40gb", 5, 1, 40192, 4, P0, 4, 56),
    prof("7g.80gb", 0, 1, 80896, 7, P0, 8, 98),
];

/// A30-24GB (DOC; IDs differ from A100). Memory: 5.81 / 11.69 / 23.44 GiB.
const A30_PROFILES: &[MigProfile] = &[
    prof("1g.6gb", 14, 4, 5952, 1, Q1, 1, 14),
    prof("1g.6gb+me", 21, 1, 5952, 1, Q1, 1, 14), // placements DER
    prof("2g.12gb", 5, 2, 11968, 2, Q2, 2, 28),
    prof("2g.12gb+me", 6, 1, 11968, 2, Q2, 2, 28),
    prof("4g.24gb", 0, 1, 24000, 4, P0, 4, 56),
];

/// H100 80GB HBM3 (HW). Memory: 9.75 / 19.62 / 39.50 / 79.25 GiB.
const H100_80GB_PROFILES: &[MigProfile] = &[
    prof("1g.10gb", 19, 7, 9984, 1, P1, 1, 16),
    prof("1g.10gb+me", 20, 1, 9984, 1, P1, 1, 16),
    prof("1g.20gb", 15, 4, 20096, 1, P1_DOUBLE, 2, 26),
    prof("2g.20gb", 14, 3, 20096, 2, P2, 2, 32),
    prof("3g.40gb", 9, 2, 40448, 3, P3, 4, 60),
    prof("4g.40gb", 5, 1, 40448, 4, P0, 4, 64),
    prof("7g.80gb", 0, 1, 81152, 7, P0, 8, 132),
];

/// H100 NVL 94GB (DOC for IDs, counts, placements, 4g/7g memory and SMs).
/// DER: 1g/2g memory (11.5 / 23.0 GiB), 3g memory (as 4g), SMs other than 4g/7g (as H100 80GB).
const H100_NVL_PROFILES: &[MigProfile] = &[
    prof("1g.12gb", 19, 7, 11776, 1, P1, 1, 16),
    prof("1g.12gb+me", 20, 1, 11776, 1, P1, 1, 16),
    prof("1g.24gb", 15, 4, 23552, 1, P1_DOUBLE, 2, 26),
    prof("2g.24gb", 14, 3, 23552, 2, P2, 2, 32),
    prof("3g.47gb", 9, 2, 47493, 3, P3, 4, 60),
    prof("4g.47gb", 5, 1, 47493, 4, P0, 4, 64),
    prof("7g.94gb", 0, 1, 95355, 7, P0, 8, 132),
];

/// H200 141GB (HW: `gpu-slicer gpus` on an H200, driver 580.159.04, MIG
/// disabled; docs/real-gpu.md). IDs, counts, placements and SMs as H100.
/// Memory: 16.00 / 32.50 / 69.75 / 140.00 GiB (it had been derived as
/// 16.25 / 32.5 / 66.0 / 132.5).
const H200_PROFILES: &[MigProfile] = &[
    prof("1g.18gb", 19, 7, 16384, 1, P1, 1, 16),
    prof("1g.18gb+me", 20, 1, 16384, 1, P1, 1, 16),
    prof("1g.35gb", 15, 4, 33280, 1, P1_DOUBLE, 2, 26),
    prof("2g.35gb", 14, 3, 33280, 2, P2, 2, 32),
    prof("3g.71gb", 9, 2, 71424, 3, P3, 4, 60),
    prof("4g.71gb", 5, 1, 71424, 4, P0, 4, 64),
    prof("7g.141gb", 0, 1, 143360, 7, P0, 8, 132),
];

/// B200 180GB (names and counts DOC, 1g 18 SMs DOC; IDs, placements DER as H100).
/// DER: memory 21.5 / 43.0 / 87.0 / 174.0 GiB; SMs 18 per compute slice, 148 for 7g.
const B200_PROFILES: &[MigProfile] = &[
    prof("1g.23gb", 19, 7, 22016, 1, P1, 1, 18),
    prof("1g.23gb+me", 20, 1, 22016, 1, P1, 1, 18),
    prof("1g.45gb", 15, 4, 44032, 1, P1_DOUBLE, 2, 18),
    prof("2g.45gb", 14, 3, 44032, 2, P2, 2, 36),
    prof("3g.90gb", 9, 2, 89088, 3, P3, 4, 54),
    prof("4g.90gb", 5, 1, 89088, 4, P0, 4, 72),
    prof("7g.180gb", 0, 1, 178176, 7, P0, 8, 148),
];

/// B300 (Blackwell Ultra). DOC: names and counts from the GPU Operator's
/// default mig-parted config (NVIDIA/gpu-operator a22dbf6, 2026-08-21,
/// `assets/state-mig-manager/0400_configmap.yaml`, device-filter
/// 0x318210DE): 1g.34gb ×7, 1g.34gb+me ×1, 1g.67gb ×4, 2g.67gb ×3,
/// 3g.135gb ×2, 4g.135gb ×1, 7g.269gb ×1. DER: IDs and placements as H100
/// (8 memory slices in the same fractions); memory scaled from B200's
/// DER figures (32.25 / 64.5 / 130.5 / 261.0 GiB); SMs as B200. No real
/// `-lgip` output has been seen.
const B300_PROFILES: &[MigProfile] = &[
    prof("1g.34gb", 19, 7, 33024, 1, P1, 1, 18),
    prof("1g.34gb+me", 20, 1, 33024, 1, P1, 1, 18),
    prof("1g.67gb", 15, 4, 66048, 1, P1_DOUBLE, 2, 18),
    prof("2g.67gb", 14, 3, 66048, 2, P2, 2, 36),
    prof("3g.135gb", 9, 2, 133632, 3, P3, 4, 54),
    prof("4g.135gb", 5, 1, 133632, 4, P0, 4, 72),
    prof("7g.269gb", 0, 1, 267264, 7, P0, 8, 148),
];

/// RTX PRO 6000 Blackwell Server Edition 96GB (g7e). DOC: NVIDIA MIG User
/// Guide, "Supported MIG Profiles" (RTX PRO 6000 Blackwell table: 1g.24gb ×4
/// and 1g.24gb+me ×1 at 1/4 of memory and SMs, 2g.48gb ×2 at 1/2, 4g.96gb
/// ×1 full; 4 compute / 4 memory slices), and "Supported GPUs" (at most 4
/// instances). Not listed here: the `+gfx`, `-me` and `+me.all` variants the
/// guide also has. DER: IDs as A30's (same 4/4 structure: 14, 21, 5, 0);
/// memory = the fraction of the EC2 total (an upper bound: NVML reports
/// less); SMs = the fraction of 188 (24,064 CUDA cores at 128 per SM,
/// NVIDIA's RTX PRO 6000 Blackwell datasheet).
const RTX_PRO_6000_PROFILES: &[MigProfile] = &[
    prof("1g.24gb", 14, 4, 24576, 1, Q1, 1, 47),
    prof("1g.24gb+me", 21, 1, 24576, 1, Q1, 1, 47),
    prof("2g.48gb", 5, 2, 49152, 2, Q2, 2, 94),
    prof("4g.96gb", 0, 1, 98304, 4, P0, 4, 188),
];

/// RTX PRO 4500 Blackwell 32GB (g7). DOC: NVIDIA MIG User Guide, "Supported
/// GPUs" (r610 and later: RTX PRO 4500 Blackwell, GB203, 32GB, at most 2
/// instances) and "Supported MIG Profiles" (RTX PRO 4500 Blackwell table:
/// 1g.16gb ×2 at 1/2 of memory and SMs, 2g.32gb ×1 full; the `+gfx`, `-me`
/// and `+me.all` variants are not listed here). DER: 2 compute / 2 memory
/// slices (from the fractions), IDs by analogy with A30's half (5) and full
/// (0) profiles, memory = the fraction of the EC2 total; SMs not published
/// in the sources used: 0 (unknown).
const RTX_PRO_4500_PROFILES: &[MigProfile] = &[
    prof("1g.16gb", 5, 2, 16384, 1, Q1_HALF, 1, 0),
    prof("2g.32gb", 0, 1, 32768, 2, P0, 2, 0),
];

const fn seven_slices(
    profiles: &'static [MigProfile],
    balanced: &'static [(&'static str, u32)],
) -> Option<MigGeometry> {
    Some(MigGeometry {
        compute_slices: 7,
        memory_slices: 8,
        profiles,
        balanced,
    })
}

static MODELS: &[GpuModel] = &[
    GpuModel {
        key: "A100-40GB",
        product_name: "NVIDIA A100-SXM4-40GB",
        memory_mib: 40960,
        pci_device_id: 0x20B0_10DE,
        mig: seven_slices(
            A100_40GB_PROFILES,
            &[("1g.5gb", 2), ("2g.10gb", 1), ("3g.20gb", 1)],
        ),
    },
    GpuModel {
        key: "A100-80GB",
        product_name: "NVIDIA A100-SXM4-80GB",
        memory_mib: 81920,
        pci_device_id: 0x20B2_10DE,
        mig: seven_slices(
            A100_80GB_PROFILES,
            &[("1g.10gb", 2), ("2g.20gb", 1), ("3g.40gb", 1)],
        ),
    },
    GpuModel {
        key: "A30",
        product_name: "NVIDIA A30",
        memory_mib: 24576,
        pci_device_id: 0x20B7_10DE,
        mig: Some(MigGeometry {
            compute_slices: 4,
            memory_slices: 4,
            profiles: A30_PROFILES,
            balanced: &[("1g.6gb", 2), ("2g.12gb", 1)],
        }),
    },
    GpuModel {
        key: "H100-80GB",
        product_name: "NVIDIA H100 80GB HBM3",
        memory_mib: 81559,
        pci_device_id: 0x2330_10DE,
        mig: seven_slices(
            H100_80GB_PROFILES,
            &[("1g.10gb", 2), ("2g.20gb", 1), ("3g.40gb", 1)],
        ),
    },
    GpuModel {
        key: "H100-NVL",
        product_name: "NVIDIA H100 NVL",
        memory_mib: 95830, // DER: NVML total of a 94GB part
        pci_device_id: 0x2321_10DE,
        mig: seven_slices(
            H100_NVL_PROFILES,
            &[("1g.12gb", 2), ("2g.24gb", 1), ("3g.47gb", 1)],
        ),
    },
    GpuModel {
        key: "H200",
        product_name: "NVIDIA H200",
        memory_mib: 143771, // HW: NVML's total on the lent H200
        pci_device_id: 0x2335_10DE,
        mig: seven_slices(
            H200_PROFILES,
            &[("1g.18gb", 2), ("2g.35gb", 1), ("3g.71gb", 1)],
        ),
    },
    GpuModel {
        key: "B200",
        product_name: "NVIDIA B200",
        memory_mib: 183359, // DER: NVML total of a 180GB part
        pci_device_id: 0x2901_10DE,
        mig: seven_slices(
            B200_PROFILES,
            &[("1g.23gb", 2), ("2g.45gb", 1), ("3g.90gb", 1)],
        ),
    },
    GpuModel {
        key: "B300",
        product_name: "NVIDIA B300", // DER: NVML's name not observed
        // EC2's per-GPU figure (Karpenter's AWS provider instance-type
        // reference, p6-b300.48xlarge instance-gpu-memory 275040); with it
        // NVIDIA's naming rule gives mig-parted's names (1g.34gb ... 7g.269gb).
        memory_mib: 275040,
        pci_device_id: 0x3182_10DE, // GPU Operator mig-parted config (B300)
        mig: seven_slices(
            B300_PROFILES,
            &[("1g.34gb", 2), ("2g.67gb", 1), ("3g.135gb", 1)],
        ),
    },
    GpuModel {
        key: "RTX-PRO-6000",
        product_name: "NVIDIA RTX PRO 6000 Blackwell Server Edition",
        // EC2's figure (Karpenter's instance-type reference, g7e
        // instance-gpu-memory 98304); NVML's total not observed.
        memory_mib: 98304,
        pci_device_id: 0x2BB5_10DE, // GPU Operator mig-parted config (RTX-PRO-6000-96GB)
        mig: Some(MigGeometry {
            compute_slices: 4,
            memory_slices: 4,
            profiles: RTX_PRO_6000_PROFILES,
            // GPU Operator mig-parted config, device-filter 0x2BB510DE.
            balanced: &[("1g.24gb", 2), ("2g.48gb", 1)],
        }),
    },
    GpuModel {
        key: "RTX-PRO-4500",
        // DER: NVIDIA's vGPU docs call the part "RTX Pro 4500 SE 32 GB";
        // NVML's name not observed.
        product_name: "NVIDIA RTX PRO 4500 Blackwell Server Edition",
        // EC2's figure (Karpenter's instance-type reference, g7
        // instance-gpu-memory 32768); NVML's total not observed.
        memory_mib: 32768,
        // Not published in the sources used (the GPU Operator's config has
        // no entry for this part): 0 means unknown, it matches no filter.
        pci_device_id: 0x0000_10DE,
        mig: Some(MigGeometry {
            compute_slices: 2,
            memory_slices: 2,
            profiles: RTX_PRO_4500_PROFILES,
            // mig-parted has no all-balanced entry for this part.
            balanced: &[],
        }),
    },
    // Non-MIG parts (time-slicing only). Memory totals are what NVML
    // typically reports (slightly under the marketing size; DER).
    GpuModel {
        key: "A10G",
        product_name: "NVIDIA A10G",
        memory_mib: 23028,
        pci_device_id: 0x2237_10DE,
        mig: None,
    },
    GpuModel {
        key: "L4",
        product_name: "NVIDIA L4",
        memory_mib: 23034,
        pci_device_id: 0x27B8_10DE,
        mig: None,
    },
    GpuModel {
        key: "L40S",
        product_name: "NVIDIA L40S",
        memory_mib: 46068,
        pci_device_id: 0x26B9_10DE,
        mig: None,
    },
    GpuModel {
        key: "T4",
        product_name: "Tesla T4",
        memory_mib: 15360,
        pci_device_id: 0x1EB8_10DE,
        mig: None,
    },
    // T4G (g5g, arm64 Graviton2 hosts): no MIG (Turing). Memory: EC2's
    // figure (Karpenter's instance-type reference, instance-gpu-memory
    // 16384); DER: NVML's name and the PCI id (as T4's TU104) not observed.
    GpuModel {
        key: "T4G",
        product_name: "NVIDIA T4G",
        memory_mib: 16384,
        pci_device_id: 0x1EB8_10DE,
        mig: None,
    },
    // Fractional L4s (g6f, gr6f): AWS hands the instance one vGPU that is a
    // fraction of an L4 (Karpenter's NodeOverlay docs, "Example: Fractional
    // GPU Instances (g6f)": "a slice of a physical L4 GPU (from 1/8th to 1/2)
    // as a single logical GPU device"; the NVIDIA device plugin reports
    // nvidia.com/gpu: 1). Memory: EC2's figure, Karpenter's
    // instance-gpu-memory of g6f.large/xlarge (2861), g6f.2xlarge (5722),
    // g6f.4xlarge and gr6f.4xlarge (11444). No MIG (L4, and a vGPU cannot
    // be partitioned further); time-slicing shares the fraction. DER: the
    // vGPU's NVML name and PCI id (taken as the L4's) not observed.
    GpuModel {
        key: "L4-1/8",
        product_name: "NVIDIA L4",
        memory_mib: 2861,
        pci_device_id: 0x27B8_10DE,
        mig: None,
    },
    GpuModel {
        key: "L4-1/4",
        product_name: "NVIDIA L4",
        memory_mib: 5722,
        pci_device_id: 0x27B8_10DE,
        mig: None,
    },
    GpuModel {
        key: "L4-1/2",
        product_name: "NVIDIA L4",
        memory_mib: 11444,
        pci_device_id: 0x27B8_10DE,
        mig: None,
    },
    GpuModel {
        key: "V100",
        product_name: "Tesla V100-SXM2-16GB",
        memory_mib: 16160,
        pci_device_id: 0x1DB1_10DE,
        mig: None,
    },
    GpuModel {
        key: "V100-32GB",
        product_name: "Tesla V100-SXM2-32GB",
        memory_mib: 32510,
        pci_device_id: 0x1DB5_10DE,
        mig: None,
    },
];

/// Every GPU model of the catalog (MIG-capable ones first).
pub fn models() -> &'static [GpuModel] {
    MODELS
}

/// A model by catalog key (case-insensitive, e.g. `a100-40gb`) or by NVML
/// product name (with or without the `NVIDIA ` / `Tesla ` prefix).
pub fn model(name: &str) -> Option<&'static GpuModel> {
    let name = name.trim();
    let bare = |s: &str| {
        let s = s.trim();
        let lower = s.to_ascii_lowercase();
        for prefix in ["nvidia ", "tesla "] {
            if let Some(rest) = lower.strip_prefix(prefix) {
                return rest.to_string();
            }
        }
        lower
    };
    MODELS
        .iter()
        .find(|m| m.key.eq_ignore_ascii_case(name))
        .or_else(|| {
            let wanted = bare(name);
            MODELS.iter().find(|m| bare(m.product_name) == wanted)
        })
}

// ---- Facts for node labels (GPU Feature Discovery's gpu.compute.*, gpu.family
// and per-MIG-profile engines) on simulated nodes. Kept apart from the model
// table so that table's rows stay as they are. ----

/// CUDA compute capability `(major, minor)` of a catalog model (DOC: NVIDIA's
/// "CUDA GPUs" compute-capability list). `None` for a key the catalog does
/// not know.
pub fn compute_capability(model_key: &str) -> Option<(u32, u32)> {
    Some(match model_key {
        "A100-40GB" | "A100-80GB" | "A30" => (8, 0),
        "A10G" => (8, 6),
        // The fractional L4s are vGPU slices of an L4: the same silicon.
        "L4" | "L40S" | "L4-1/8" | "L4-1/4" | "L4-1/2" => (8, 9),
        "H100-80GB" | "H100-NVL" | "H200" => (9, 0),
        "B200" => (10, 0),
        "B300" => (10, 3),
        "RTX-PRO-6000" | "RTX-PRO-4500" => (12, 0),
        "T4" | "T4G" => (7, 5),
        "V100" | "V100-32GB" => (7, 0),
        _ => return None,
    })
}

/// Engines of one MIG profile: copy, decoder, encoder, JPEG, OFA, as NVML's
/// GPU-instance profile info reports them. Only models whose profiles were
/// read off hardware (HW: H100 80GB, `nvidia-smi mig -lgip`; H200, `gpu-slicer
/// gpus`, docs/real-gpu.md); every other model: `None`, unknown, and the
/// engine labels are left out rather than guessed.
pub fn mig_engines(model_key: &str, profile: &str) -> Option<[u32; 5]> {
    const H100_80GB: &[(&str, [u32; 5])] = &[
        ("1g.10gb", [1, 1, 0, 1, 0]),
        ("1g.10gb+me", [1, 1, 0, 1, 1]),
        ("1g.20gb", [1, 1, 0, 1, 0]),
        ("2g.20gb", [2, 2, 0, 2, 0]),
        ("3g.40gb", [3, 3, 0, 3, 0]),
        ("4g.40gb", [4, 4, 0, 4, 0]),
        ("7g.80gb", [8, 7, 0, 7, 1]),
    ];
    const H200: &[(&str, [u32; 5])] = &[
        ("1g.18gb", [1, 1, 0, 1, 0]),
        ("1g.18gb+me", [1, 1, 0, 1, 1]),
        ("1g.35gb", [1, 1, 0, 1, 0]),
        ("2g.35gb", [2, 2, 0, 2, 0]),
        ("3g.71gb", [3, 3, 0, 3, 0]),
        ("4g.71gb", [4, 4, 0, 4, 0]),
        ("7g.141gb", [8, 7, 0, 7, 1]),
    ];
    let table = match model_key {
        "H100-80GB" => H100_80GB,
        "H200" => H200,
        _ => return None,
    };
    table.iter().find(|(p, _)| *p == profile).map(|(_, e)| *e)
}

/// A model by PCI device id (`0xDDDDVVVV`, as NVML's `pci_device_id`).
pub fn model_by_pci_device_id(pci_device_id: u32) -> Option<&'static GpuModel> {
    MODELS.iter().find(|m| m.pci_device_id == pci_device_id)
}

/// Families of MIG-capable models, for messages: `A100/A30/H100/H200/B200/B300/RTX PRO`.
pub fn mig_families() -> String {
    let mut families: Vec<&str> = Vec::new();
    for m in MODELS.iter().filter(|m| m.mig_capable()) {
        let family = if m.key.starts_with("RTX-PRO") {
            "RTX PRO"
        } else {
            m.key.split('-').next().unwrap_or(m.key)
        };
        if !families.contains(&family) {
            families.push(family);
        }
    }
    families.join("/")
}

// ---------------------------------------------------------------------------
// Profile naming rule

/// NVIDIA's MIG profile name for a profile of `profile_memory_mib` on a GPU
/// with `gpu_total_bytes` of memory (NVIDIA go-nvlib's rule):
/// memory fraction rounded up to eighths, times the GPU's total in whole GB
/// (rounded up), rounded half away from zero. `ci_slices < gi_slices` adds the
/// `<C>c.` prefix; `suffix` (`+me`, `-me`, `+gfx`, ...) is appended verbatim.
pub fn mig_profile_name(
    gi_slices: u32,
    ci_slices: u32,
    profile_memory_mib: u64,
    gpu_total_bytes: u64,
    suffix: &str,
) -> String {
    const GIB: u128 = 1 << 30;
    let total = u128::from(gpu_total_bytes);
    let gb = if total == 0 {
        0
    } else {
        // frac in eighths, rounded up: ceil(mem * 8 / total).
        let eighths = (u128::from(profile_memory_mib) * u128::from(MIB) * 8).div_ceil(total);
        let total_gb = total.div_ceil(GIB);
        // round(eighths * total_gb / 8), half away from zero (all values ≥ 0).
        (eighths * total_gb + 4) / 8
    };
    let prefix = if ci_slices < gi_slices {
        format!("{ci_slices}c.")
    } else {
        String::new()
    };
    format!("{prefix}{gi_slices}g.{gb}gb{suffix}")
}

// ---------------------------------------------------------------------------
// Layouts

/// A MIG configuration for one GPU, as mig-parted's named configs describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigLayout {
    /// MIG mode off (`all-disabled`).
    Disabled,
    /// MIG mode on, no instances (`all-enabled`).
    EnabledEmpty,
    /// MIG mode on with these instances, in the order the layout lists them.
    Instances(Vec<&'static MigProfile>),
}

impl MigLayout {
    /// MIG mode is on under this layout.
    pub fn mig_enabled(&self) -> bool {
        !matches!(self, MigLayout::Disabled)
    }

    /// The instances (empty unless [`MigLayout::Instances`]).
    pub fn profiles(&self) -> &[&'static MigProfile] {
        match self {
            MigLayout::Instances(p) => p,
            _ => &[],
        }
    }

    /// Instance count per profile name, sorted by name.
    pub fn counts(&self) -> BTreeMap<&'static str, u32> {
        let mut counts = BTreeMap::new();
        for p in self.profiles() {
            *counts.entry(p.name).or_insert(0) += 1;
        }
        counts
    }
}

/// Context used by catalog errors until the caller names the GPU (see
/// [`CatalogError::in_context`]).
pub const DEFAULT_CONTEXT: &str = "this GPU";

/// Why a layout cannot be used. Every message names the layout, the GPU and
/// what to do; `context` says where the GPU is (an instance type, a topology
/// entry) and is set with [`CatalogError::in_context`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error(
        "MIG layout '{layout}' needs a MIG-capable GPU, but {context} has {product} (no MIG support); use time-slicing (sharing.timeSlicing) or an instance with {families} GPUs"
    )]
    MigUnsupported {
        layout: String,
        context: String,
        product: String,
        families: String,
    },
    #[error(
        "unknown MIG layout '{layout}' for {context} ({product}); valid layouts: {valid}; or a custom list of profile=count such as '{example}'"
    )]
    UnknownLayout {
        layout: String,
        context: String,
        product: String,
        valid: String,
        example: String,
    },
    #[error(
        "MIG layout '{layout}' names profile '{profile}', which {context} ({product}) does not have; its profiles are: {valid}"
    )]
    UnknownProfile {
        layout: String,
        profile: String,
        context: String,
        product: String,
        valid: String,
    },
    #[error(
        "MIG layout '{layout}' for {context} is malformed: {reason}; write a named layout (e.g. all-balanced) or profile=count pairs separated by commas, e.g. '{example}'"
    )]
    Malformed {
        layout: String,
        reason: String,
        context: String,
        example: String,
    },
    #[error(
        "MIG layout '{layout}' asks for {count} × {profile}, but {context} ({product}) supports at most {max}; lower the count"
    )]
    TooMany {
        layout: String,
        profile: String,
        count: u32,
        max: u32,
        context: String,
        product: String,
    },
    #[error(
        "MIG layout '{layout}' does not fit on {context} ({product}): {detail}; remove or shrink instances"
    )]
    DoesNotFit {
        layout: String,
        context: String,
        product: String,
        detail: String,
    },
}

impl CatalogError {
    /// The same error, naming the GPU's whereabouts (`g5.xlarge`,
    /// `GPU 3 (gpus[1] in topo.yaml)`) instead of "this GPU".
    pub fn in_context(mut self, new: impl Into<String>) -> Self {
        let new = new.into();
        match &mut self {
            CatalogError::MigUnsupported { context, .. }
            | CatalogError::UnknownLayout { context, .. }
            | CatalogError::UnknownProfile { context, .. }
            | CatalogError::Malformed { context, .. }
            | CatalogError::TooMany { context, .. }
            | CatalogError::DoesNotFit { context, .. } => *context = new,
        }
        self
    }

    /// The layout the error is about.
    pub fn layout(&self) -> &str {
        match self {
            CatalogError::MigUnsupported { layout, .. }
            | CatalogError::UnknownLayout { layout, .. }
            | CatalogError::UnknownProfile { layout, .. }
            | CatalogError::Malformed { layout, .. }
            | CatalogError::TooMany { layout, .. }
            | CatalogError::DoesNotFit { layout, .. } => layout,
        }
    }
}

/// The named layouts a model accepts: `all-disabled` for every model; for
/// MIG-capable ones also `all-enabled`, `all-<profile>` (with `+` written as
/// `.`, as mig-parted names them) and `all-balanced`.
pub fn layout_names(model: &GpuModel) -> Vec<String> {
    let mut names = vec!["all-disabled".to_string()];
    if let Some(geo) = &model.mig {
        names.push("all-enabled".to_string());
        names.extend(
            geo.profiles
                .iter()
                .map(|p| format!("all-{}", p.dotted_name())),
        );
        if !geo.balanced.is_empty() {
            names.push("all-balanced".to_string());
        }
    }
    names
}

fn custom_example(model: &GpuModel) -> String {
    match &model.mig {
        Some(geo) if !geo.balanced.is_empty() => render_counts(geo.balanced.iter().copied()),
        Some(geo) => geo
            .profiles
            .first()
            .map(|p| format!("{}=1", p.name))
            .unwrap_or_default(),
        None => "1g.5gb=2,2g.10gb=1".to_string(),
    }
}

fn render_counts<'a>(counts: impl IntoIterator<Item = (&'a str, u32)>) -> String {
    counts
        .into_iter()
        .map(|(p, n)| format!("{p}={n}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn profile_list(geo: &MigGeometry) -> String {
    geo.profiles
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `none`: what gpu-slicer's commands document for "MIG off"; an alias of
/// mig-parted's `all-disabled`.
pub const MIG_OFF_ALIAS: &str = "none";

/// The layout name with the `none` alias written as `all-disabled`, so that
/// every comparison and every message uses mig-parted's name.
pub fn canonical_layout_name(name: &str) -> &str {
    let name = name.trim();
    if name == MIG_OFF_ALIAS {
        "all-disabled"
    } else {
        name
    }
}

/// Resolves a layout name for a model and checks that it fits.
///
/// Accepts `all-disabled` (alias `none`), `all-enabled`, `all-<profile>` (`+` may be written
/// as `.`: `all-1g.5gb.me`), `all-balanced`, and custom lists of
/// `profile=count` pairs (`1g.5gb=2,2g.10gb=1`). Errors name "this GPU";
/// callers add where the GPU is with [`CatalogError::in_context`].
pub fn layout(model: &GpuModel, name: &str) -> Result<MigLayout, CatalogError> {
    let name = canonical_layout_name(name);
    if name == "all-disabled" {
        return Ok(MigLayout::Disabled);
    }
    let Some(geo) = &model.mig else {
        return Err(CatalogError::MigUnsupported {
            layout: name.to_string(),
            context: DEFAULT_CONTEXT.to_string(),
            product: model.product_name.to_string(),
            families: mig_families(),
        });
    };
    let unknown = || CatalogError::UnknownLayout {
        layout: name.to_string(),
        context: DEFAULT_CONTEXT.to_string(),
        product: model.product_name.to_string(),
        valid: layout_names(model).join(", "),
        example: custom_example(model),
    };
    let instances: Vec<&'static MigProfile> = if name == "all-enabled" {
        return Ok(MigLayout::EnabledEmpty);
    } else if name == "all-balanced" {
        if geo.balanced.is_empty() {
            return Err(unknown());
        }
        return layout_from_counts(model, name, geo.balanced);
    } else if let Some(p) = name.strip_prefix("all-").and_then(|p| geo.profile(p)) {
        vec![p; p.max_count as usize]
    } else if name.contains('=') {
        let counts = parse_custom(model, name)?;
        return layout_from_counts(model, name, &counts);
    } else {
        return Err(unknown());
    };
    place_named(model, name, &instances)?;
    Ok(MigLayout::Instances(instances))
}

/// The layout `name` declares as profile counts (a custom list, or a
/// mig-parted `mig-devices` map), checked against the model: known profiles
/// (`+` may be written as `.`), counts within their maximum, and a fit.
/// No instances at all is MIG mode on with nothing created.
pub fn layout_from_counts(
    model: &GpuModel,
    name: &str,
    counts: &[(&str, u32)],
) -> Result<MigLayout, CatalogError> {
    let Some(geo) = &model.mig else {
        return Err(CatalogError::MigUnsupported {
            layout: name.to_string(),
            context: DEFAULT_CONTEXT.to_string(),
            product: model.product_name.to_string(),
            families: mig_families(),
        });
    };
    let mut instances = Vec::new();
    for &(profile, count) in counts {
        let p = geo
            .profile(profile)
            .ok_or_else(|| CatalogError::UnknownProfile {
                layout: name.to_string(),
                profile: profile.to_string(),
                context: DEFAULT_CONTEXT.to_string(),
                product: model.product_name.to_string(),
                valid: profile_list(geo),
            })?;
        if count > p.max_count {
            return Err(CatalogError::TooMany {
                layout: name.to_string(),
                profile: p.name.to_string(),
                count,
                max: p.max_count,
                context: DEFAULT_CONTEXT.to_string(),
                product: model.product_name.to_string(),
            });
        }
        instances.extend(std::iter::repeat_n(p, count as usize));
    }
    if instances.is_empty() {
        return Ok(MigLayout::EnabledEmpty);
    }
    place_named(model, name, &instances)?;
    Ok(MigLayout::Instances(instances))
}

fn parse_custom<'n>(model: &GpuModel, name: &'n str) -> Result<Vec<(&'n str, u32)>, CatalogError> {
    let malformed = |reason: String| CatalogError::Malformed {
        layout: name.to_string(),
        reason,
        context: DEFAULT_CONTEXT.to_string(),
        example: custom_example(model),
    };
    let mut out = Vec::new();
    for item in name.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(malformed("empty entry between commas".to_string()));
        }
        let Some((profile, count)) = item.split_once('=') else {
            return Err(malformed(format!("'{item}' has no '=count'")));
        };
        let (profile, count) = (profile.trim(), count.trim());
        let count: u32 = count.parse().map_err(|_| {
            malformed(format!(
                "count '{count}' of '{profile}' is not a non-negative whole number"
            ))
        })?;
        out.push((profile, count));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Placement

/// Where one GPU instance of a layout goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub profile: &'static MigProfile,
    /// First memory slice.
    pub start: u32,
    /// GPU-instance id the driver assigns to this placement ([`gpu_instance_id`]).
    pub gpu_instance_id: u32,
}

/// The slice footprint of one GPU instance, for [`fit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceShape<'a> {
    /// Possible starts, in memory slices.
    pub starts: &'a [u32],
    /// Size in memory slices.
    pub size: u32,
    /// Compute slices it takes.
    pub compute: u32,
}

/// Finds a start for each shape so that no two overlap in memory slices and
/// compute slices suffice. Deterministic: the largest shapes are placed first
/// (as mig-parted creates them), each at its lowest free start, backtracking
/// when a later shape does not fit. Returns the starts in input order.
pub fn fit(memory_slices: u32, compute_slices: u32, shapes: &[SliceShape<'_>]) -> Option<Vec<u32>> {
    let compute: u64 = shapes.iter().map(|s| u64::from(s.compute)).sum();
    if compute > u64::from(compute_slices) || memory_slices > 63 {
        return None;
    }
    let mut order: Vec<usize> = (0..shapes.len()).collect();
    order.sort_by(|&a, &b| {
        let (sa, sb) = (&shapes[a], &shapes[b]);
        sb.size
            .cmp(&sa.size)
            .then(sb.compute.cmp(&sa.compute))
            .then(sa.starts.cmp(sb.starts))
            .then(a.cmp(&b))
    });
    let mut starts = vec![0; shapes.len()];
    fit_dfs(&order, 0, 0, shapes, memory_slices, &mut starts).then_some(starts)
}

fn fit_dfs(
    order: &[usize],
    k: usize,
    used: u64,
    shapes: &[SliceShape<'_>],
    memory_slices: u32,
    starts: &mut [u32],
) -> bool {
    let Some(&i) = order.get(k) else {
        return true;
    };
    let shape = &shapes[i];
    // Identical shapes are interchangeable: keep their starts increasing.
    let min_start = match k.checked_sub(1).map(|j| order[j]) {
        Some(prev) if shapes[prev] == *shape => Some(starts[prev]),
        _ => None,
    };
    for &start in shape.starts {
        if min_start.is_some_and(|m| start <= m)
            || shape.size == 0
            || start + shape.size > memory_slices
        {
            continue;
        }
        let mask = ((1u64 << shape.size) - 1) << start;
        if used & mask != 0 {
            continue;
        }
        starts[i] = start;
        if fit_dfs(order, k + 1, used | mask, shapes, memory_slices, starts) {
            return true;
        }
    }
    false
}

/// GPU-instance id of a placement, as the driver numbers them: a binary tree
/// over the memory slices (8 slices: the 8-slice instance is 0, 4-slice ones
/// 1–2, 2-slice ones 3–6, 1-slice ones 7–14; so 7 × 1g.5gb are GI 7..13 and
/// a 3g.20gb at slice 4 is GI 2, as NVIDIA's MIG guide shows).
pub fn gpu_instance_id(memory_slices: u32, start: u32, size: u32) -> u32 {
    if size == 0 || memory_slices < size {
        return start;
    }
    (memory_slices / size - 1) + start / size
}

/// Places the instances of a layout on a model. Returns one [`Placement`] per
/// input profile, in input order. Errors when a profile exceeds its maximum
/// count or the set does not fit.
pub fn place(
    model: &GpuModel,
    profiles: &[&'static MigProfile],
) -> Result<Vec<Placement>, CatalogError> {
    let mut counts: Vec<(&str, u32)> = Vec::new();
    for p in profiles {
        match counts.iter_mut().find(|(n, _)| *n == p.name) {
            Some((_, c)) => *c += 1,
            None => counts.push((p.name, 1)),
        }
    }
    place_named(model, &render_counts(counts), profiles)
}

fn place_named(
    model: &GpuModel,
    layout_name: &str,
    profiles: &[&'static MigProfile],
) -> Result<Vec<Placement>, CatalogError> {
    let Some(geo) = &model.mig else {
        return Err(CatalogError::MigUnsupported {
            layout: layout_name.to_string(),
            context: DEFAULT_CONTEXT.to_string(),
            product: model.product_name.to_string(),
            families: mig_families(),
        });
    };
    let mut counts: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    for p in profiles {
        counts.entry(p.name).or_insert((0, p.max_count)).0 += 1;
    }
    if let Some((profile, (count, max))) = counts.iter().find(|(_, (c, m))| c > m) {
        return Err(CatalogError::TooMany {
            layout: layout_name.to_string(),
            profile: profile.to_string(),
            count: *count,
            max: *max,
            context: DEFAULT_CONTEXT.to_string(),
            product: model.product_name.to_string(),
        });
    }
    let shapes: Vec<SliceShape<'_>> = profiles
        .iter()
        .map(|p| SliceShape {
            starts: p.placement_starts,
            size: p.placement_size,
            compute: p.compute_slices,
        })
        .collect();
    let starts = fit(geo.memory_slices, geo.compute_slices, &shapes).ok_or_else(|| {
        let compute: u32 = profiles.iter().map(|p| p.compute_slices).sum();
        let memory: u32 = profiles.iter().map(|p| p.placement_size).sum();
        let detail = if compute > geo.compute_slices {
            format!(
                "it needs {compute} compute slices and the GPU has {}",
                geo.compute_slices
            )
        } else if memory > geo.memory_slices {
            format!(
                "it needs {memory} memory slices and the GPU has {}",
                geo.memory_slices
            )
        } else {
            "no placement of its instances avoids overlapping memory slices".to_string()
        };
        CatalogError::DoesNotFit {
            layout: layout_name.to_string(),
            context: DEFAULT_CONTEXT.to_string(),
            product: model.product_name.to_string(),
            detail,
        }
    })?;
    Ok(profiles
        .iter()
        .zip(starts)
        .map(|(&profile, start)| Placement {
            profile,
            start,
            gpu_instance_id: gpu_instance_id(geo.memory_slices, start, profile.placement_size),
        })
        .collect())
}

// ---------------------------------------------------------------------------
// Cloud instances

/// A cloud instance type with GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceType {
    pub name: &'static str,
    /// Catalog key of the GPU model.
    pub model: &'static str,
    pub gpus: u32,
    pub numa_nodes: u32,
    /// GPUs are connected by NVLink (NVSwitch on p4/p5/p6, hybrid cube mesh on p3).
    pub nvlink: bool,
    /// CPU architecture as Kubernetes names it (`amd64`, `arm64`).
    pub arch: &'static str,
    /// `Some(n)`: the instance has 1/n of a GPU, as one vGPU device (g6f,
    /// gr6f). EC2 and so Karpenter report a GPU count of 0 for it.
    pub gpu_fraction: Option<u32>,
}

impl InstanceType {
    /// The GPU model of this instance.
    pub fn gpu_model(&self) -> Option<&'static GpuModel> {
        model(self.model)
    }

    /// The instance has a fraction of a GPU (a vGPU), not whole GPUs.
    pub fn is_fractional(&self) -> bool {
        self.gpu_fraction.is_some()
    }
}

const fn inst(
    name: &'static str,
    model: &'static str,
    gpus: u32,
    numa_nodes: u32,
    nvlink: bool,
) -> InstanceType {
    InstanceType {
        name,
        model,
        gpus,
        numa_nodes,
        nvlink,
        arch: "amd64",
        gpu_fraction: None,
    }
}

/// An arm64 (Graviton) instance.
const fn arm64(instance: InstanceType) -> InstanceType {
    InstanceType {
        arch: "arm64",
        ..instance
    }
}

/// An instance with 1/`denominator` of one GPU, as a single vGPU device.
const fn fractional(name: &'static str, model: &'static str, denominator: u32) -> InstanceType {
    InstanceType {
        gpu_fraction: Some(denominator),
        ..inst(name, model, 1, 1, false)
    }
}

static INSTANCES: &[InstanceType] = &[
    inst("p4d.24xlarge", "A100-40GB", 8, 2, true),
    inst("p4de.24xlarge", "A100-80GB", 8, 2, true),
    // 1 × H100 (Karpenter's AWS provider instance-type data: gpu-count 1,
    // h100, 81920 MiB); without a preset no overlay could zero its
    // `nvidia.com/gpu` under MIG.
    inst("p5.4xlarge", "H100-80GB", 1, 1, false),
    inst("p5.48xlarge", "H100-80GB", 8, 2, true),
    inst("p5e.48xlarge", "H200", 8, 2, true),
    inst("p5en.48xlarge", "H200", 8, 2, true),
    inst("p6-b200.48xlarge", "B200", 8, 2, true),
    // 8 × B300 (Karpenter's AWS provider instance-type reference at
    // aws/karpenter-provider-aws 1d92708, 2026-08-21: gpu-name b300,
    // gpu-count 8); NVSwitch and 2 NUMA nodes as p6-b200 (DER).
    inst("p6-b300.48xlarge", "B300", 8, 2, true),
    inst("g5.xlarge", "A10G", 1, 1, false),
    inst("g5.2xlarge", "A10G", 1, 1, false),
    inst("g5.4xlarge", "A10G", 1, 1, false),
    inst("g5.8xlarge", "A10G", 1, 1, false),
    inst("g5.16xlarge", "A10G", 1, 1, false),
    inst("g5.12xlarge", "A10G", 4, 1, false),
    inst("g5.24xlarge", "A10G", 4, 1, false),
    inst("g5.48xlarge", "A10G", 8, 2, false),
    inst("g6.xlarge", "L4", 1, 1, false),
    inst("g6.2xlarge", "L4", 1, 1, false),
    inst("g6.4xlarge", "L4", 1, 1, false),
    inst("g6.8xlarge", "L4", 1, 1, false),
    inst("g6.16xlarge", "L4", 1, 1, false),
    inst("g6.12xlarge", "L4", 4, 1, false),
    inst("g6.24xlarge", "L4", 4, 1, false),
    inst("g6.48xlarge", "L4", 8, 2, false),
    // gr6: 1 × L4 (Karpenter's AWS provider instance-type data).
    inst("gr6.4xlarge", "L4", 1, 1, false),
    inst("gr6.8xlarge", "L4", 1, 1, false),
    inst("g6e.xlarge", "L40S", 1, 1, false),
    inst("g6e.2xlarge", "L40S", 1, 1, false),
    inst("g6e.4xlarge", "L40S", 1, 1, false),
    inst("g6e.8xlarge", "L40S", 1, 1, false),
    inst("g6e.16xlarge", "L40S", 1, 1, false),
    inst("g6e.12xlarge", "L40S", 4, 1, false),
    inst("g6e.24xlarge", "L40S", 4, 1, false),
    inst("g6e.48xlarge", "L40S", 8, 2, false),
    // The families below come from Karpenter's AWS provider instance-type
    // reference (aws/karpenter-provider-aws 1d92708, 2026-08-21,
    // website/content/en/preview/reference/instance-types.md): gpu-name,
    // gpu-count, gpu-memory and kubernetes.io/arch per type. NUMA nodes:
    // 1 (DER: not in that data); 2 for the 8-GPU sizes (DER, as the other
    // 8-GPU PCIe families). No NVLink (not in that data; PCIe parts).
    // g5g: T4G on arm64 (1 GPU; 2 on 16xlarge and metal).
    arm64(inst("g5g.xlarge", "T4G", 1, 1, false)),
    arm64(inst("g5g.2xlarge", "T4G", 1, 1, false)),
    arm64(inst("g5g.4xlarge", "T4G", 1, 1, false)),
    arm64(inst("g5g.8xlarge", "T4G", 1, 1, false)),
    arm64(inst("g5g.16xlarge", "T4G", 2, 1, false)),
    arm64(inst("g5g.metal", "T4G", 2, 1, false)),
    // g6f/gr6f: a fraction of an L4 (gpu-count 0 in Karpenter's data;
    // gpu-memory 2861 = 1/8, 5722 = 1/4, 11444 = 1/2 of the L4's 22888).
    fractional("g6f.large", "L4-1/8", 8),
    fractional("g6f.xlarge", "L4-1/8", 8),
    fractional("g6f.2xlarge", "L4-1/4", 4),
    fractional("g6f.4xlarge", "L4-1/2", 2),
    fractional("gr6f.4xlarge", "L4-1/2", 2),
    // g7: RTX PRO 4500 Blackwell (1 / 2 / 4 / 8 GPUs).
    inst("g7.2xlarge", "RTX-PRO-4500", 1, 1, false),
    inst("g7.4xlarge", "RTX-PRO-4500", 1, 1, false),
    inst("g7.8xlarge", "RTX-PRO-4500", 1, 1, false),
    inst("g7.12xlarge", "RTX-PRO-4500", 2, 1, false),
    inst("g7.24xlarge", "RTX-PRO-4500", 4, 1, false),
    inst("g7.48xlarge", "RTX-PRO-4500", 8, 2, false),
    // g7e: RTX PRO 6000 Blackwell Server Edition (1 / 2 / 4 / 8 GPUs).
    inst("g7e.2xlarge", "RTX-PRO-6000", 1, 1, false),
    inst("g7e.4xlarge", "RTX-PRO-6000", 1, 1, false),
    inst("g7e.8xlarge", "RTX-PRO-6000", 1, 1, false),
    inst("g7e.12xlarge", "RTX-PRO-6000", 2, 1, false),
    inst("g7e.24xlarge", "RTX-PRO-6000", 4, 1, false),
    inst("g7e.48xlarge", "RTX-PRO-6000", 8, 2, false),
    inst("g4dn.xlarge", "T4", 1, 1, false),
    inst("g4dn.2xlarge", "T4", 1, 1, false),
    inst("g4dn.4xlarge", "T4", 1, 1, false),
    inst("g4dn.8xlarge", "T4", 1, 1, false),
    inst("g4dn.16xlarge", "T4", 1, 1, false),
    inst("g4dn.12xlarge", "T4", 4, 1, false),
    inst("g4dn.metal", "T4", 8, 2, false),
    inst("p3.2xlarge", "V100", 1, 1, false),
    inst("p3.8xlarge", "V100", 4, 1, true),
    inst("p3.16xlarge", "V100", 8, 2, true),
    inst("p3dn.24xlarge", "V100-32GB", 8, 2, true),
];

/// Every cloud instance preset.
pub fn instances() -> &'static [InstanceType] {
    INSTANCES
}

/// An instance preset by name (case-insensitive).
pub fn instance(name: &str) -> Option<&'static InstanceType> {
    let name = name.trim();
    INSTANCES.iter().find(|i| i.name.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(key: &str) -> &'static GpuModel {
        model(key).unwrap()
    }

    #[test]
    fn naming_rule_worked_checks() {
        let gib = |g: f64| (g * 1024.0).round() as u64;
        let cases: &[(u64, u32, u64, &str)] = &[
            // (total MiB, GI slices, profile MiB, expected)
            (81559, 1, gib(9.75), "1g.10gb"),
            (81559, 1, gib(19.62), "1g.20gb"),
            (81559, 2, gib(19.62), "2g.20gb"),
            (81559, 3, gib(39.50), "3g.40gb"),
            (81559, 4, gib(39.50), "4g.40gb"),
            (81559, 7, gib(79.25), "7g.80gb"),
            (40960, 1, gib(4.75), "1g.5gb"),
            // Eighths of the total: 1/8, 2/8, 4/8.
            (141 * 1024, 1, 141 * 1024 / 8, "1g.18gb"),
            (141 * 1024, 2, 141 * 1024 / 4, "2g.35gb"),
            (141 * 1024, 3, 141 * 1024 / 2, "3g.71gb"),
            (180 * 1024, 1, 180 * 1024 / 8, "1g.23gb"),
            (269 * 1024, 3, 269 * 1024 / 2, "3g.135gb"),
            (94 * 1024, 1, 94 * 1024 / 8, "1g.12gb"),
            (94 * 1024, 2, 94 * 1024 / 4, "2g.24gb"),
        ];
        for &(total, gi, mem, want) in cases {
            assert_eq!(
                mig_profile_name(gi, gi, mem, total * MIB, ""),
                want,
                "{total} MiB, {gi}g, {mem} MiB"
            );
        }
        assert_eq!(
            mig_profile_name(3, 1, gib(19.62), 40960 * MIB, ""),
            "1c.3g.20gb"
        );
        assert_eq!(
            mig_profile_name(1, 1, gib(9.75), 81559 * MIB, "+me"),
            "1g.10gb+me"
        );
        assert_eq!(mig_profile_name(1, 1, 100, 0, ""), "1g.0gb");
    }

    #[test]
    fn every_catalog_profile_agrees_with_the_naming_rule() {
        for model in models() {
            let Some(geo) = &model.mig else { continue };
            for p in geo.profiles {
                let suffix = p.name.find(['+', '-']).map_or("", |i| &p.name[i..]);
                assert_eq!(
                    mig_profile_name(
                        p.compute_slices,
                        p.compute_slices,
                        p.memory_mib,
                        model.memory_bytes(),
                        suffix
                    ),
                    p.name,
                    "{}",
                    model.key
                );
            }
        }
    }

    #[test]
    fn catalog_is_consistent() {
        for model in models() {
            assert_eq!(model.pci_device_id & 0xFFFF, 0x10DE, "{}", model.key);
            let Some(geo) = &model.mig else { continue };
            assert!(
                geo.profiles
                    .iter()
                    .any(|p| p.compute_slices == geo.compute_slices)
            );
            for p in geo.profiles {
                // Placements follow the common structure: aligned to their size,
                // inside memory, compute fits from the start.
                let expected: Vec<u32> = (0..geo.memory_slices)
                    .step_by(p.placement_size as usize)
                    .filter(|s| s + p.compute_slices <= geo.compute_slices)
                    .collect();
                assert_eq!(p.placement_starts, expected, "{} {}", model.key, p.name);
                // Every `all-<profile>` layout (max_count instances) fits.
                assert!(
                    place(model, &vec![p; p.max_count as usize]).is_ok(),
                    "{} {}",
                    model.key,
                    p.name
                );
            }
            for (name, _) in geo.balanced {
                assert!(geo.profile(name).is_some(), "{} {}", model.key, name);
            }
        }
    }

    #[test]
    fn model_lookup_by_key_or_product_name() {
        for (query, key) in [
            ("A100-40GB", Some("A100-40GB")),
            ("a100-40gb", Some("A100-40GB")),
            ("NVIDIA A100-SXM4-40GB", Some("A100-40GB")),
            ("A100-SXM4-80GB", Some("A100-80GB")),
            ("NVIDIA H100 80GB HBM3", Some("H100-80GB")),
            ("h100-nvl", Some("H100-NVL")),
            ("Tesla T4", Some("T4")),
            ("NVIDIA B200", Some("B200")),
            ("V100-32gb", Some("V100-32GB")),
            ("RTX 4090", None),
        ] {
            assert_eq!(model(query).map(|m| m.key), key, "{query}");
        }
        assert_eq!(
            model_by_pci_device_id(0x2335_10DE).map(|m| m.key),
            Some("H200")
        );
        assert_eq!(mig_families(), "A100/A30/H100/H200/B200/B300/RTX PRO");
    }

    fn counts(model: &str, name: &str) -> Vec<(&'static str, u32)> {
        layout(m(model), name)
            .unwrap()
            .counts()
            .into_iter()
            .collect()
    }

    #[test]
    fn named_layouts() {
        type Case = (&'static str, &'static str, &'static [(&'static str, u32)]);
        let cases: &[Case] = &[
            ("A100-40GB", "all-1g.5gb", &[("1g.5gb", 7)]),
            ("A100-40GB", "all-1g.5gb.me", &[("1g.5gb+me", 1)]),
            ("A100-40GB", "all-1g.5gb+me", &[("1g.5gb+me", 1)]),
            ("A100-40GB", "all-1g.10gb", &[("1g.10gb", 4)]),
            ("A100-80GB", "all-1g.10gb", &[("1g.10gb", 7)]),
            ("A100-40GB", "all-2g.10gb", &[("2g.10gb", 3)]),
            ("A100-40GB", "all-3g.20gb", &[("3g.20gb", 2)]),
            ("A100-40GB", "all-7g.40gb", &[("7g.40gb", 1)]),
            (
                "A100-40GB",
                "all-balanced",
                &[("1g.5gb", 2), ("2g.10gb", 1), ("3g.20gb", 1)],
            ),
            (
                "A100-80GB",
                "all-balanced",
                &[("1g.10gb", 2), ("2g.20gb", 1), ("3g.40gb", 1)],
            ),
            (
                "H100-80GB",
                "all-balanced",
                &[("1g.10gb", 2), ("2g.20gb", 1), ("3g.40gb", 1)],
            ),
            (
                "H100-NVL",
                "all-balanced",
                &[("1g.12gb", 2), ("2g.24gb", 1), ("3g.47gb", 1)],
            ),
            (
                "H200",
                "all-balanced",
                &[("1g.18gb", 2), ("2g.35gb", 1), ("3g.71gb", 1)],
            ),
            (
                "B200",
                "all-balanced",
                &[("1g.23gb", 2), ("2g.45gb", 1), ("3g.90gb", 1)],
            ),
            ("A30", "all-balanced", &[("1g.6gb", 2), ("2g.12gb", 1)]),
            ("A30", "all-1g.6gb", &[("1g.6gb", 4)]),
            ("H200", "all-1g.35gb", &[("1g.35gb", 4)]),
            ("B200", "all-7g.180gb", &[("7g.180gb", 1)]),
            (
                "B300",
                "all-balanced",
                &[("1g.34gb", 2), ("2g.67gb", 1), ("3g.135gb", 1)],
            ),
            ("B300", "all-1g.34gb", &[("1g.34gb", 7)]),
            (
                "RTX-PRO-6000",
                "all-balanced",
                &[("1g.24gb", 2), ("2g.48gb", 1)],
            ),
            ("RTX-PRO-6000", "all-1g.24gb", &[("1g.24gb", 4)]),
            ("RTX-PRO-6000", "all-4g.96gb", &[("4g.96gb", 1)]),
            ("RTX-PRO-4500", "all-1g.16gb", &[("1g.16gb", 2)]),
            ("RTX-PRO-4500", "all-2g.32gb", &[("2g.32gb", 1)]),
            (
                "A100-40GB",
                "1g.5gb=2, 2g.10gb=1",
                &[("1g.5gb", 2), ("2g.10gb", 1)],
            ),
            (
                "A100-40GB",
                "4g.20gb=1,3g.20gb=1",
                &[("3g.20gb", 1), ("4g.20gb", 1)],
            ),
            ("A100-40GB", "all-enabled", &[]),
            ("A100-40GB", "1g.5gb=0", &[]),
            ("A100-40GB", "all-disabled", &[]),
        ];
        for &(model, name, want) in cases {
            assert_eq!(counts(model, name), want, "{model} {name}");
        }
        assert_eq!(
            layout(m("A100-40GB"), "all-enabled").unwrap(),
            MigLayout::EnabledEmpty
        );
        assert_eq!(
            layout(m("A30"), " 1g.6gb=0 ").unwrap(),
            MigLayout::EnabledEmpty
        );
        assert_eq!(
            layout(m("T4"), "all-disabled").unwrap(),
            MigLayout::Disabled
        );
    }

    #[test]
    fn layout_names_per_model() {
        assert_eq!(layout_names(m("T4")), vec!["all-disabled"]);
        assert_eq!(
            layout_names(m("A100-40GB")),
            vec![
                "all-disabled",
                "all-enabled",
                "all-1g.5gb",
                "all-1g.5gb.me",
                "all-1g.10gb",
                "all-2g.10gb",
                "all-3g.20gb",
                "all-4g.20gb",
                "all-7g.40gb",
                "all-balanced",
            ]
        );
        for model in models() {
            for name in layout_names(model) {
                assert!(layout(model, &name).is_ok(), "{} {name}", model.key);
            }
        }
    }

    #[test]
    fn layout_errors_are_actionable() {
        let a10g = m("A10G");
        let err = layout(a10g, "all-balanced").unwrap_err();
        assert_eq!(
            err.to_string(),
            "MIG layout 'all-balanced' needs a MIG-capable GPU, but this GPU has NVIDIA A10G (no MIG support); use time-slicing (sharing.timeSlicing) or an instance with A100/A30/H100/H200/B200/B300/RTX PRO GPUs"
        );
        assert_eq!(
            err.in_context("g5.xlarge").to_string(),
            "MIG layout 'all-balanced' needs a MIG-capable GPU, but g5.xlarge has NVIDIA A10G (no MIG support); use time-slicing (sharing.timeSlicing) or an instance with A100/A30/H100/H200/B200/B300/RTX PRO GPUs"
        );
        assert!(matches!(
            layout(a10g, "all-enabled"),
            Err(CatalogError::MigUnsupported { .. })
        ));

        let a30 = m("A30");
        let cases: &[(&str, &str)] = &[
            (
                "all-3g.20gb",
                "unknown MIG layout 'all-3g.20gb' for this GPU (NVIDIA A30); valid layouts: all-disabled, all-enabled, all-1g.6gb, all-1g.6gb.me, all-2g.12gb, all-2g.12gb.me, all-4g.24gb, all-balanced; or a custom list of profile=count such as '1g.6gb=2,2g.12gb=1'",
            ),
            (
                "1g.6gb=5",
                "MIG layout '1g.6gb=5' asks for 5 × 1g.6gb, but this GPU (NVIDIA A30) supports at most 4; lower the count",
            ),
            (
                "1g.5gb=1",
                "MIG layout '1g.5gb=1' names profile '1g.5gb', which this GPU (NVIDIA A30) does not have; its profiles are: 1g.6gb, 1g.6gb+me, 2g.12gb, 2g.12gb+me, 4g.24gb",
            ),
            (
                "1g.6gb=two",
                "MIG layout '1g.6gb=two' for this GPU is malformed: count 'two' of '1g.6gb' is not a non-negative whole number; write a named layout (e.g. all-balanced) or profile=count pairs separated by commas, e.g. '1g.6gb=2,2g.12gb=1'",
            ),
            (
                "4g.24gb=1,1g.6gb=1",
                "MIG layout '4g.24gb=1,1g.6gb=1' does not fit on this GPU (NVIDIA A30): it needs 5 compute slices and the GPU has 4; remove or shrink instances",
            ),
            (
                "2g.12gb=2,1g.6gb+me=1",
                "MIG layout '2g.12gb=2,1g.6gb+me=1' does not fit on this GPU (NVIDIA A30): it needs 5 compute slices and the GPU has 4; remove or shrink instances",
            ),
        ];
        for &(name, want) in cases {
            assert_eq!(layout(a30, name).unwrap_err().to_string(), want, "{name}");
        }
        // Memory overlap although compute would suffice: 4g.20gb takes slices 0-3,
        // the 1g.10gb (double memory) ones need 0/2/4/6, two are left.
        let err = layout(m("A100-40GB"), "4g.20gb=1,1g.10gb=3").unwrap_err();
        assert!(matches!(err, CatalogError::DoesNotFit { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "MIG layout '4g.20gb=1,1g.10gb=3' does not fit on this GPU (NVIDIA A100-SXM4-40GB): it needs 10 memory slices and the GPU has 8; remove or shrink instances"
        );
    }

    #[test]
    fn placement_is_deterministic_and_largest_first() {
        let a100 = m("A100-40GB");
        let MigLayout::Instances(profiles) = layout(a100, "all-balanced").unwrap() else {
            panic!("balanced has instances");
        };
        let placed: Vec<(&str, u32, u32)> = place(a100, &profiles)
            .unwrap()
            .iter()
            .map(|p| (p.profile.name, p.start, p.gpu_instance_id))
            .collect();
        // 3g.20gb first: at slice 0 the 1g.5gb ones would find no room (slice 7
        // takes no 1-slice instance), so it moves to 4, as the driver places it.
        assert_eq!(
            placed,
            vec![
                ("1g.5gb", 2, 9),
                ("1g.5gb", 3, 10),
                ("2g.10gb", 0, 3),
                ("3g.20gb", 4, 2),
            ]
        );
        // A first-come 1g.10gb at slice 0 would block the third 2g.10gb.
        let p = a100.mig_profile("1g.10gb").unwrap();
        let q = a100.mig_profile("2g.10gb").unwrap();
        let starts: Vec<u32> = place(a100, &[p, q, q, q])
            .unwrap()
            .iter()
            .map(|x| x.start)
            .collect();
        assert_eq!(starts, vec![6, 0, 2, 4]);
        // GI ids follow the driver's tree numbering.
        let ones: Vec<u32> = place(a100, &[a100.mig_profile("1g.5gb").unwrap(); 7])
            .unwrap()
            .iter()
            .map(|x| x.gpu_instance_id)
            .collect();
        assert_eq!(ones, (7..14).collect::<Vec<_>>());
        assert_eq!(gpu_instance_id(8, 0, 8), 0);
        assert_eq!(gpu_instance_id(8, 4, 4), 2);
        assert_eq!(gpu_instance_id(8, 2, 2), 4);
        assert_eq!(gpu_instance_id(4, 2, 2), 2);
    }

    /// Defect: `--mig-config none` was documented as "MIG off" but rejected.
    #[test]
    fn none_is_an_alias_of_all_disabled() {
        for key in ["T4", "A100-40GB", "H200"] {
            assert_eq!(layout(m(key), "none"), Ok(MigLayout::Disabled), "{key}");
            assert_eq!(layout(m(key), " none "), Ok(MigLayout::Disabled), "{key}");
        }
        assert_eq!(canonical_layout_name("none"), "all-disabled");
        assert_eq!(canonical_layout_name("all-balanced"), "all-balanced");
    }

    #[test]
    fn instance_presets_resolve() {
        assert!(instances().len() >= 40);
        for i in instances() {
            let model = i.gpu_model().unwrap_or_else(|| panic!("{}", i.name));
            assert!(i.gpus >= 1 && i.numa_nodes >= 1, "{}", i.name);
            if i.name.starts_with("p4") || i.name.starts_with("p5") || i.name.starts_with("p6") {
                assert!(model.mig_capable(), "{}", i.name);
                // The 8-GPU sizes are NVSwitch machines; p5.4xlarge has one GPU.
                assert_eq!(i.nvlink, i.gpus == 8, "{}", i.name);
            }
        }
        assert_eq!(instance("P4D.24xlarge").map(|i| i.model), Some("A100-40GB"));
        assert_eq!(instance("g6e.48xlarge").map(|i| i.gpus), Some(8));
        assert_eq!(instance("g4dn.12xlarge").map(|i| i.gpus), Some(4));
        assert_eq!(
            instance("p3dn.24xlarge").map(|i| i.model),
            Some("V100-32GB")
        );
        assert!(instance("p9.mega").is_none());
        // Defect: p5.4xlarge (1 x H100) had no preset, so no overlay zeroed
        // its nvidia.com/gpu in a MIG pool.
        let p5_small = instance("p5.4xlarge").expect("p5.4xlarge preset");
        assert_eq!((p5_small.model, p5_small.gpus), ("H100-80GB", 1));
        assert_eq!(
            instance("gr6.8xlarge").map(|i| (i.model, i.gpus)),
            Some(("L4", 1))
        );
        // Karpenter's AWS provider knows these GPU families; each has a
        // preset now: (instance, model, GPUs, arch, fraction).
        type Case = (&'static str, &'static str, u32, &'static str, Option<u32>);
        let cases: &[Case] = &[
            ("g5g.xlarge", "T4G", 1, "arm64", None),
            ("g5g.metal", "T4G", 2, "arm64", None),
            ("g6f.large", "L4-1/8", 1, "amd64", Some(8)),
            ("g6f.2xlarge", "L4-1/4", 1, "amd64", Some(4)),
            ("gr6f.4xlarge", "L4-1/2", 1, "amd64", Some(2)),
            ("g7.12xlarge", "RTX-PRO-4500", 2, "amd64", None),
            ("g7e.48xlarge", "RTX-PRO-6000", 8, "amd64", None),
            ("p6-b300.48xlarge", "B300", 8, "amd64", None),
            ("p5.48xlarge", "H100-80GB", 8, "amd64", None),
        ];
        for &(name, model, gpus, arch, fraction) in cases {
            let i = instance(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(
                (i.model, i.gpus, i.arch, i.gpu_fraction),
                (model, gpus, arch, fraction),
                "{name}"
            );
        }
        // MIG: B300 and both RTX PRO Blackwell parts (NVIDIA's MIG guide);
        // not T4G nor a fractional L4.
        for (key, mig) in [
            ("B300", true),
            ("RTX-PRO-6000", true),
            ("RTX-PRO-4500", true),
            ("T4G", false),
            ("L4-1/8", false),
        ] {
            assert_eq!(m(key).mig_capable(), mig, "{key}");
        }
        // The fractional L4s' memory is the fraction of a full L4 as EC2
        // reports it (22888 MiB).
        for (key, n) in [("L4-1/8", 8), ("L4-1/4", 4), ("L4-1/2", 2)] {
            assert_eq!(m(key).memory_mib * n, 22888, "{key}");
        }
        // A product-name lookup of "NVIDIA L4" is the whole GPU.
        assert_eq!(model("NVIDIA L4").map(|m| m.key), Some("L4"));
    }
}
