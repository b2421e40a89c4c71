//! CUDA MPS: what the control daemon of an MPS-shared resource is told, and
//! where its files are. Pure: the daemon crate starts the processes.
//!
//! NVIDIA's layout, which workloads and charts expect: under the MPS root
//! (`--mps-root`, a host directory), per resource `<root>/<resource>/pipe`
//! (the control daemon's pipes, which clients reach) and
//! `<root>/<resource>/log` (its `control.log`), and one `<root>/shm` that
//! the MPS server and its clients share as `/dev/shm`. Containers see the
//! pipe directory at `/mps/<resource>/pipe`.
//!
//! Each control daemon serves the GPUs of its resource. It is started with
//! `CUDA_VISIBLE_DEVICES` set to their UUIDs in index order and
//! `CUDA_DEVICE_ORDER=PCI_BUS_ID`, so device ordinal *i* in its commands is
//! the *i*-th of those GPUs, whatever CUDA's default (fastest-first) order
//! would have made of them.

use crate::config::ResourceName;
use crate::plan::{Plan, Resource};

/// Where containers see the MPS root (NVIDIA's, kept for compatibility).
pub const CONTAINER_ROOT: &str = "/mps";

/// The directory of the control daemon that serves containers holding
/// `shares` replicas: `<root>/<resource>` for one (NVIDIA's layout, which
/// workloads expect), `<root>/<resource>/shares-<k>` for *k* (memory by
/// count: a daemon per request size, since MPS limits are per server and a
/// client's environment can only lower them, measured on an H200).
fn daemon_dir(root: &str, resource: &ResourceName, shares: u32) -> String {
    let base = format!("{}/{resource}", root.trim_end_matches('/'));
    if shares <= 1 {
        base
    } else {
        format!("{base}/shares-{shares}")
    }
}

/// `<daemon dir>/pipe`: the control daemon's pipes, which clients reach.
pub fn pipe_dir(root: &str, resource: &ResourceName, shares: u32) -> String {
    format!("{}/pipe", daemon_dir(root, resource, shares))
}

/// `<daemon dir>/log`.
pub fn log_dir(root: &str, resource: &ResourceName, shares: u32) -> String {
    format!("{}/log", daemon_dir(root, resource, shares))
}

/// `<root>/shm`, shared by every resource's server and clients.
pub fn shm_dir(root: &str) -> String {
    format!("{}/shm", root.trim_end_matches('/'))
}

/// One GPU a control daemon serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonGpu {
    pub uuid: String,
    /// NVML index (for messages).
    pub index: u32,
    /// Pinned device memory each client may use, MiB.
    pub memory_limit_mib: u64,
}

/// Which control daemon: a resource's, for containers holding `shares`
/// of its replicas.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DaemonKey {
    pub resource: ResourceName,
    pub shares: u32,
}

impl std::fmt::Display for DaemonKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.shares <= 1 {
            write!(f, "{}", self.resource)
        } else {
            write!(f, "{} ({} shares)", self.resource, self.shares)
        }
    }
}

/// The control daemon of one MPS-shared resource, for the containers that
/// hold `key.shares` replicas each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlDaemon {
    pub key: DaemonKey,
    /// In index order: ordinal *i* is `gpus[i]`.
    pub gpus: Vec<DaemonGpu>,
    /// Per client: `shares` × the replica's percentage, at most 100.
    pub active_thread_percentage: u32,
    pub replicas: u32,
}

impl ControlDaemon {
    pub fn resource(&self) -> &ResourceName {
        &self.key.resource
    }

    /// Its pipe directory under `root` (a host or container view).
    pub fn pipe_dir(&self, root: &str) -> String {
        pipe_dir(root, &self.key.resource, self.key.shares)
    }

    /// Its log directory under `root`.
    pub fn log_dir(&self, root: &str) -> String {
        log_dir(root, &self.key.resource, self.key.shares)
    }

    /// `CUDA_VISIBLE_DEVICES` for the daemon (and so its servers).
    pub fn visible_devices(&self) -> String {
        let uuids: Vec<&str> = self.gpus.iter().map(|g| g.uuid.as_str()).collect();
        uuids.join(",")
    }

    /// The commands that set its limits, in order, one per control-client
    /// call. They only affect servers started afterwards, so they are sent
    /// before the resource is advertised.
    pub fn limit_commands(&self) -> Vec<String> {
        let mut commands: Vec<String> = self
            .gpus
            .iter()
            .enumerate()
            .map(|(ordinal, gpu)| {
                format!(
                    "set_default_device_pinned_mem_limit {ordinal} {}M",
                    gpu.memory_limit_mib
                )
            })
            .collect();
        commands.push(format!(
            "set_default_active_thread_percentage {}",
            self.active_thread_percentage
        ));
        commands
    }
}

/// The command whose answer shows that a daemon is up and holds its
/// limits: it prints the default active thread percentage.
pub const READY_QUERY: &str = "get_default_active_thread_percentage";

/// Whether an answer to [`READY_QUERY`] shows `expected` (MPS prints it as
/// a number, possibly with decimals: `25.0`).
pub fn answer_shows_percentage(answer: &str, expected: u32) -> bool {
    answer
        .trim()
        .parse::<f64>()
        .is_ok_and(|p| (p - f64::from(expected)).abs() < 0.5)
}

/// Whether the answer to a limit command shows it was taken: nothing (the
/// memory limit, on driver 580) or the value just set, echoed
/// (`set_default_active_thread_percentage 25` prints `25.0`). A rejected
/// command prints an error message instead, and the control program still
/// exits 0, so the text is what tells them apart.
pub fn answer_accepts(command: &str, answer: &str) -> bool {
    let answer = answer.trim();
    if answer.is_empty() {
        return true;
    }
    let set = command
        .rsplit(' ')
        .next()
        .map(|v| v.trim_end_matches(['M', 'G']))
        .and_then(|v| v.parse::<f64>().ok());
    let echoed = answer.trim_end_matches(['M', 'G']).parse::<f64>().ok();
    matches!((set, echoed), (Some(a), Some(b)) if (a - b).abs() < 0.5)
}

/// The control daemons of the plan's MPS-shared resources, in name order:
/// per resource one for each request size from 1 to its
/// `maxReplicasPerContainer`.
pub fn control_daemons(plan: &Plan) -> Vec<ControlDaemon> {
    plan.resources.iter().flat_map(resource_daemons).collect()
}

fn resource_daemons(resource: &Resource) -> Vec<ControlDaemon> {
    let Some((sharing, share)) = resource.sharing.and_then(|s| Some((s, s.mps?))) else {
        return Vec::new();
    };
    let replicas = u64::from(sharing.replicas.max(1));
    let mut per_replica: Vec<DaemonGpu> = Vec::new();
    for device in &resource.devices {
        let physical = &device.physical;
        if per_replica.iter().any(|g| g.uuid == physical.gpu_uuid) {
            continue;
        }
        per_replica.push(DaemonGpu {
            uuid: physical.gpu_uuid.clone(),
            index: physical.gpu_index,
            memory_limit_mib: share
                .memory_per_replica_mib
                .unwrap_or(physical.memory_mib / replicas),
        });
    }
    per_replica.sort_by_key(|g| g.index);
    (1..=share.max_replicas_per_container.max(1))
        .map(|shares| ControlDaemon {
            key: DaemonKey {
                resource: resource.name.clone(),
                shares,
            },
            gpus: per_replica
                .iter()
                .map(|g| DaemonGpu {
                    memory_limit_mib: g.memory_limit_mib.saturating_mul(u64::from(shares)),
                    ..g.clone()
                })
                .collect(),
            active_thread_percentage: share
                .active_thread_percentage
                .saturating_mul(shares)
                .min(100),
            replicas: sharing.replicas,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, SharingStrategy};
    use crate::gpu::simulated;

    fn mps_plan(yaml: &str, instance: &str) -> Plan {
        let mut config = crate::config::parse(yaml, "test").expect("config");
        config.flags.mps_root = "/run/nvidia/mps".into();
        crate::config::validate_cross(&config).expect("valid");
        let inventory = simulated::from_instance(instance, None).expect("instance");
        crate::plan::plan(&inventory, &config)
    }

    #[test]
    fn nvidias_defaults_memory_over_replicas_and_threads_over_replicas() {
        let plan = mps_plan(
            "version: v1\nsharing:\n  mps:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 3\n",
            "g5.12xlarge",
        );
        assert_eq!(plan.refusal(), None);
        let daemons = control_daemons(&plan);
        assert_eq!(daemons.len(), 1);
        let d = &daemons[0];
        assert_eq!(d.resource().as_str(), "nvidia.com/gpu");
        assert_eq!(d.key.shares, 1);
        assert_eq!(d.gpus.len(), 4);
        let memory = plan.resources[0].devices[0].physical.memory_mib;
        assert_eq!(
            d.limit_commands(),
            vec![
                format!("set_default_device_pinned_mem_limit 0 {}M", memory / 3),
                format!("set_default_device_pinned_mem_limit 1 {}M", memory / 3),
                format!("set_default_device_pinned_mem_limit 2 {}M", memory / 3),
                format!("set_default_device_pinned_mem_limit 3 {}M", memory / 3),
                "set_default_active_thread_percentage 33".to_string(),
            ]
        );
        assert_eq!(d.visible_devices().split(',').count(), 4);
        assert!(d.visible_devices().starts_with("GPU-"));
    }

    #[test]
    fn explicit_limits_replace_the_defaults() {
        let plan = mps_plan(
            "version: v1\nsharing:\n  mps:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 4\n      memoryPerReplica: 4Gi\n      activeThreadPercentage: 50\n",
            "g5.xlarge",
        );
        let d = &control_daemons(&plan)[0];
        assert_eq!(
            d.limit_commands(),
            vec![
                "set_default_device_pinned_mem_limit 0 4096M".to_string(),
                "set_default_active_thread_percentage 50".to_string(),
            ]
        );
    }

    #[test]
    fn memory_that_does_not_fit_is_refused_with_what_fits() {
        let plan = mps_plan(
            "version: v1\nsharing:\n  mps:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 4\n      memoryPerReplica: 8Gi\n",
            "g5.xlarge",
        );
        let memory = simulated::from_instance("g5.xlarge", None)
            .expect("g5")
            .gpus[0]
            .memory_mib;
        assert_eq!(
            plan.refusal().expect("refused"),
            format!(
                "sharing.mps.resources[0]: memoryPerReplica 8192Mi × 4 replicas = 32768Mi does not fit GPU 0 ({memory}Mi); at most {}Mi per replica fits there",
                memory / 4
            )
        );
        assert!(control_daemons(&plan).is_empty());
    }

    #[test]
    fn no_daemon_without_mps() {
        let config = Config::default();
        let inventory = simulated::from_instance("g5.xlarge", None).expect("instance");
        let plan = crate::plan::plan(&inventory, &config);
        assert_eq!(config.sharing.strategy(), SharingStrategy::None);
        assert!(control_daemons(&plan).is_empty());
    }

    #[test]
    fn memory_by_count_has_a_daemon_per_request_size_with_k_shares() {
        let plan = mps_plan(
            "version: v1\nsharing:\n  mps:\n    failRequestsGreaterThanOne: false\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 4\n      maxReplicasPerContainer: 3\n",
            "g5.xlarge",
        );
        assert_eq!(plan.refusal(), None);
        let memory = plan.resources[0].devices[0].physical.memory_mib;
        let daemons = control_daemons(&plan);
        let summary: Vec<(String, Vec<String>)> = daemons
            .iter()
            .map(|d| (d.pipe_dir("/mps"), d.limit_commands()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    "/mps/nvidia.com/gpu/pipe".to_string(),
                    vec![
                        format!("set_default_device_pinned_mem_limit 0 {}M", memory / 4),
                        "set_default_active_thread_percentage 25".to_string()
                    ]
                ),
                (
                    "/mps/nvidia.com/gpu/shares-2/pipe".to_string(),
                    vec![
                        format!("set_default_device_pinned_mem_limit 0 {}M", memory / 4 * 2),
                        "set_default_active_thread_percentage 50".to_string()
                    ]
                ),
                (
                    "/mps/nvidia.com/gpu/shares-3/pipe".to_string(),
                    vec![
                        format!("set_default_device_pinned_mem_limit 0 {}M", memory / 4 * 3),
                        "set_default_active_thread_percentage 75".to_string()
                    ]
                ),
            ]
        );
        assert_eq!(daemons[2].key.to_string(), "nvidia.com/gpu (3 shares)");
    }

    #[test]
    fn memory_by_count_defaults_to_every_replica_of_a_gpu_and_caps_threads_at_100() {
        let plan = mps_plan(
            "version: v1\nsharing:\n  mps:\n    failRequestsGreaterThanOne: false\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 3\n      activeThreadPercentage: 40\n",
            "g5.xlarge",
        );
        let daemons = control_daemons(&plan);
        let percentages: Vec<u32> = daemons.iter().map(|d| d.active_thread_percentage).collect();
        assert_eq!(percentages, vec![40, 80, 100]);
    }

    #[test]
    fn limit_answers() {
        let set = "set_default_active_thread_percentage 25";
        assert!(
            answer_accepts(set, "25.0\n"),
            "the value echoed (driver 580)"
        );
        assert!(answer_accepts(
            "set_default_device_pinned_mem_limit 0 35942M",
            ""
        ));
        assert!(!answer_accepts(set, "33.0"));
        assert!(!answer_accepts(set, "Invalid percentage"));
    }

    #[test]
    fn readiness_answers() {
        assert!(answer_shows_percentage("25.0\n", 25));
        assert!(answer_shows_percentage("25", 25));
        assert!(!answer_shows_percentage("100.0", 25));
        assert!(!answer_shows_percentage("Invalid command", 25));
        assert!(!answer_shows_percentage("", 25));
    }

    #[test]
    fn paths_follow_nvidias_layout() {
        let name = ResourceName::new_unchecked("nvidia.com/gpu");
        assert_eq!(
            pipe_dir("/run/nvidia/mps/", &name, 1),
            "/run/nvidia/mps/nvidia.com/gpu/pipe"
        );
        assert_eq!(
            log_dir("/run/nvidia/mps", &name, 1),
            "/run/nvidia/mps/nvidia.com/gpu/log"
        );
        assert_eq!(
            pipe_dir("/run/nvidia/mps", &name, 3),
            "/run/nvidia/mps/nvidia.com/gpu/shares-3/pipe"
        );
        assert_eq!(shm_dir("/run/nvidia/mps"), "/run/nvidia/mps/shm");
    }
}
