//! What a container receives for the devices the kubelet chose: a pure
//! function from (resource, request, configuration) to the Allocate response,
//! built in the order and with the wording of NVIDIA's k8s-device-plugin
//! v0.20 (its `internal/plugin/server.go` and `internal/rm`), so that
//! switching plugins changes nothing for workloads.

use std::collections::{BTreeMap, HashMap};

use crate::config::{DeviceIdStrategy, DeviceListStrategy, Flags};
pub use crate::device_nodes::NodeDeviceFiles;
use crate::device_nodes::{self, DeviceClass};
use crate::placement::id_for_message;
use crate::plan::{Device, Physical, Resource};

/// What one container receives: the core's own copy of the kubelet's
/// `ContainerAllocateResponse`, field for field, so that the decision does
/// not depend on the generated wire types (the daemon converts it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerAllocateResponse {
    pub envs: HashMap<String, String>,
    pub mounts: Vec<Mount>,
    pub devices: Vec<DeviceSpec>,
    pub annotations: HashMap<String, String>,
    pub cdi_devices: Vec<CdiDevice>,
}

/// A host path mounted into the container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mount {
    pub container_path: String,
    pub host_path: String,
    pub read_only: bool,
}

/// A device node given to the container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceSpec {
    pub container_path: String,
    pub host_path: String,
    /// cgroup permissions, `rw` or `rwm`.
    pub permissions: String,
}

/// A fully qualified CDI device name (`vendor.com/class=name`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CdiDevice {
    pub name: String,
}

/// Why an Allocate request is refused. The Display text is NVIDIA's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocateError {
    #[error("invalid allocation request for \"{resource}\": invalid request: unknown device: {id}")]
    UnknownDevice { resource: String, id: String },
    #[error(
        "invalid allocation request for \"{resource}\": invalid request: maximum request size for shared resources is 1; found {count}"
    )]
    TooManySharedDevices { resource: String, count: usize },
    #[error(
        "invalid allocation request for \"{resource}\": invalid request: {count} MPS replicas requested; at most {max} per container (maxReplicasPerContainer)"
    )]
    TooManyMpsReplicas {
        resource: String,
        count: usize,
        max: u32,
    },
    #[error(
        "invalid allocation request for \"{resource}\": invalid request: the {count} MPS replicas of one container must be on one GPU, found them on GPUs {gpus}; MPS limits are per GPU, so shares of several GPUs cannot be added up (ask for at most {per_gpu}, the replicas of one GPU)"
    )]
    MpsReplicasOnSeveralGpus {
        resource: String,
        count: usize,
        gpus: String,
        per_gpu: u32,
    },
    #[error("invalid allocation request for \"{resource}\": invalid request: no devices requested")]
    NoDevices { resource: String },
    #[error(
        "invalid allocation request for \"{resource}\": invalid request: device {id} requested twice"
    )]
    DuplicateDevice { resource: String, id: String },
}

/// Builds the response for one container request.
///
/// `response_id` makes the CDI annotation key unique per response, as
/// NVIDIA's plugin does with a random UUID (the caller supplies it so this
/// function stays deterministic).
pub fn allocate(
    resource: &Resource,
    requested: &[String],
    flags: &Flags,
    files: &NodeDeviceFiles,
    response_id: &str,
) -> Result<ContainerAllocateResponse, AllocateError> {
    if requested.is_empty() {
        return Err(AllocateError::NoDevices {
            resource: resource.name.to_string(),
        });
    }
    let mut devices = Vec::with_capacity(requested.len());
    let mut seen = std::collections::HashSet::with_capacity(requested.len());
    for id in requested {
        let device = resource
            .device(id)
            .ok_or_else(|| AllocateError::UnknownDevice {
                resource: resource.name.to_string(),
                id: id_for_message(id),
            })?;
        if !seen.insert(device.id.as_str()) {
            return Err(AllocateError::DuplicateDevice {
                resource: resource.name.to_string(),
                id: id_for_message(id),
            });
        }
        devices.push(device);
    }
    if let Some(sharing) = resource.sharing
        && sharing.fail_requests_greater_than_one
        && requested.len() > 1
        && devices.iter().any(|d| d.replica.is_some())
    {
        return Err(AllocateError::TooManySharedDevices {
            resource: resource.name.to_string(),
            count: requested.len(),
        });
    }
    if let Some(sharing) = resource.sharing
        && let Some(share) = sharing.mps
    {
        check_mps_request(
            resource,
            &devices,
            sharing.replicas,
            share.max_replicas_per_container,
        )?;
    }

    // Replica suffixes are stripped and ids de-duplicated in request order.
    let mut physical: Vec<&Physical> = Vec::with_capacity(devices.len());
    for device in &devices {
        if !physical.iter().any(|p| p.uuid == device.physical.uuid) {
            physical.push(&device.physical);
        }
    }
    let ids: Vec<&str> = physical
        .iter()
        .map(|p| match flags.plugin.device_id_strategy {
            DeviceIdStrategy::Uuid => p.uuid.as_str(),
            DeviceIdStrategy::Index => p.index.as_str(),
        })
        .collect();

    let strategies = &flags.plugin.device_list_strategy;
    let uses = |s: DeviceListStrategy| strategies.contains(&s);
    let mut response = ContainerAllocateResponse::default();

    if strategies.iter().any(|s| s.is_cdi()) {
        let mut names: Vec<String> = ids
            .iter()
            .map(|id| format!("k8s.device-plugin.nvidia.com/gpu={id}"))
            .collect();
        // Only classes the node has: a name no spec defines would make the
        // runtime refuse the container (the daemon warns about the rest).
        for class in enabled_classes(flags) {
            if !files.classes.of(class).is_empty() {
                names.push(format!("{}=all", crate::cdi::class_kind(class)));
            }
        }
        if uses(DeviceListStrategy::CdiAnnotations) {
            response.annotations.insert(
                format!(
                    "{}nvidia-device-plugin_{response_id}",
                    flags.plugin.cdi_annotation_prefix
                ),
                names.join(","),
            );
        }
        if uses(DeviceListStrategy::CdiCri) {
            response.cdi_devices = names.into_iter().map(|name| CdiDevice { name }).collect();
        }
    }
    // MPS under every device-list strategy, as NVIDIA's plugin does: the
    // container reaches its resource's control daemon through the pipe
    // directory and shares the server's /dev/shm.
    let mps_mounts = mps_access(resource, devices.len(), flags, &mut response);
    for class in enabled_classes(flags) {
        response.envs.insert(class.env().into(), "enabled".into());
    }
    if strategies.iter().all(|s| s.is_cdi()) {
        response.mounts.extend(mps_mounts);
        return Ok(response);
    }
    if uses(DeviceListStrategy::Envvar) {
        response
            .envs
            .insert("NVIDIA_VISIBLE_DEVICES".into(), ids.join(","));
    }
    if uses(DeviceListStrategy::VolumeMounts) {
        response.envs.insert(
            "NVIDIA_VISIBLE_DEVICES".into(),
            "/var/run/nvidia-container-devices".into(),
        );
        response.mounts = ids
            .iter()
            .map(|id| Mount {
                container_path: format!("/var/run/nvidia-container-devices/{id}"),
                host_path: "/dev/null".into(),
                read_only: false,
            })
            .collect();
    }
    if flags.plugin.pass_device_specs {
        response.devices = device_specs(&physical, flags.dev_root(), files);
    }
    response.mounts.extend(mps_mounts);
    Ok(response)
}

/// The optional device classes the flags turn on.
pub fn enabled_classes(flags: &Flags) -> impl Iterator<Item = DeviceClass> + '_ {
    DeviceClass::ALL.into_iter().filter(|class| match class {
        DeviceClass::Gdrcopy => flags.gdrcopy_enabled,
        DeviceClass::Gds => flags.gds_enabled,
        DeviceClass::Mofed => flags.mofed_enabled,
    })
}

/// For an MPS replica: `CUDA_MPS_PIPE_DIRECTORY` (as the container sees
/// it) into `response`, and the mounts of the pipe and shm directories.
/// Memory by count: a container's MPS replicas are all on one GPU, and no
/// more than the resource allows (each request size has its own control
/// daemon, whose limits are that many shares).
fn check_mps_request(
    resource: &Resource,
    devices: &[&Device],
    replicas: u32,
    max: u32,
) -> Result<(), AllocateError> {
    if devices.len() <= 1 {
        return Ok(());
    }
    if devices.len() > max as usize {
        return Err(AllocateError::TooManyMpsReplicas {
            resource: resource.name.to_string(),
            count: devices.len(),
            max,
        });
    }
    let mut gpus: Vec<u32> = devices.iter().map(|d| d.physical.gpu_index).collect();
    gpus.sort_unstable();
    gpus.dedup();
    if gpus.len() > 1 {
        let listed: Vec<String> = gpus.iter().map(u32::to_string).collect();
        return Err(AllocateError::MpsReplicasOnSeveralGpus {
            resource: resource.name.to_string(),
            count: devices.len(),
            gpus: listed.join(", "),
            per_gpu: replicas.min(max),
        });
    }
    Ok(())
}

fn mps_access(
    resource: &Resource,
    shares: usize,
    flags: &Flags,
    response: &mut ContainerAllocateResponse,
) -> Vec<Mount> {
    if resource.sharing.and_then(|s| s.mps).is_none() {
        return Vec::new();
    }
    // Checked against maxReplicasPerContainer (≤ 48) before this point.
    let shares = u32::try_from(shares).unwrap_or(1);
    let pipe = crate::mps::pipe_dir(crate::mps::CONTAINER_ROOT, &resource.name, shares);
    response
        .envs
        .insert("CUDA_MPS_PIPE_DIRECTORY".into(), pipe.clone());
    vec![
        Mount {
            container_path: pipe,
            host_path: crate::mps::pipe_dir(&flags.mps_root, &resource.name, shares),
            read_only: false,
        },
        Mount {
            container_path: "/dev/shm".into(),
            host_path: crate::mps::shm_dir(&flags.mps_root),
            read_only: false,
        },
    ]
}

/// Device nodes for the container: control nodes, `/dev/nvidia<minor>` per
/// GPU, and the GI/CI capability nodes of each MIG device; no duplicates.
fn device_specs(
    physical: &[&Physical],
    dev_root: &str,
    files: &NodeDeviceFiles,
) -> Vec<DeviceSpec> {
    let mut paths: Vec<String> = files.control.clone();
    for p in physical {
        let mig = p.mig.map(|m| (m.gpu_instance, m.compute_instance));
        paths.extend(files.nodes_of(p.gpu_minor, mig));
    }
    let mut seen = BTreeMap::new();
    paths.retain(|p| seen.insert(p.clone(), ()).is_none());
    paths
        .into_iter()
        .map(|path| DeviceSpec {
            host_path: device_nodes::host_path(dev_root, &path),
            container_path: path,
            permissions: "rw".into(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, MigStrategy, ReplicatedResource};
    use crate::gpu::{Gpu, Inventory, MigDevice};
    use crate::plan::plan;

    fn node() -> Inventory {
        let gpu = |index: u32, mig: bool| Gpu {
            index,
            model: "NVIDIA A100-SXM4-40GB".into(),
            uuid: format!("GPU-{index}"),
            memory_mib: 40960,
            pci_bus_id: String::new(),
            pci_device_id: 0,
            numa_node: None,
            minor: index,
            mig_capable: true,
            mig_enabled: mig,
            mig_devices: if mig {
                vec![MigDevice {
                    index: 0,
                    profile: "3g.20gb".into(),
                    uuid: format!("MIG-{index}-0"),
                    gpu_instance_id: 1,
                    compute_instance_id: 0,
                    memory_mib: 20000,
                    attributes: None,
                    placement_start: None,
                }]
            } else {
                vec![]
            },
            nvlinks: vec![],
            pcie: vec![],
            compute_capability: None,
            pci_class: None,
        };
        Inventory {
            gpus: vec![gpu(0, false), gpu(1, false), gpu(2, true)],
            ..Default::default()
        }
    }

    fn config(replicas: u32, fail_gt_one: bool) -> Config {
        let mut config = Config::default();
        config.flags.mig_strategy = MigStrategy::Mixed;
        if replicas > 1 {
            config.sharing.time_slicing.fail_requests_greater_than_one = fail_gt_one;
            config
                .sharing
                .time_slicing
                .resources
                .push(ReplicatedResource::every("nvidia.com/gpu", replicas));
        }
        config
    }

    fn run(
        config: &Config,
        resource: &str,
        ids: &[&str],
    ) -> Result<ContainerAllocateResponse, AllocateError> {
        let plan = plan(&node(), config);
        let resource = plan.resource(resource).expect("resource planned");
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        let files = NodeDeviceFiles {
            control: vec!["/dev/nvidiactl".into(), "/dev/nvidia-uvm".into()],
            mig_caps: NodeDeviceFiles::synthetic_mig_minors(3),
            ..Default::default()
        };
        allocate(resource, &ids, &config.flags, &files, "fixed")
    }

    #[test]
    fn envvar_deduplicates_replicas_in_request_order() {
        let config = config(4, false);
        let response = run(
            &config,
            "nvidia.com/gpu",
            &["GPU-1::2", "GPU-0::0", "GPU-1::3"],
        )
        .expect("ok");
        assert_eq!(response.envs["NVIDIA_VISIBLE_DEVICES"], "GPU-1,GPU-0");
        assert!(response.mounts.is_empty() && response.devices.is_empty());
    }

    /// MPS replicas get NVIDIA's pipe env and the pipe and shm mounts under
    /// every device-list strategy, beside what the strategy itself gives.
    #[test]
    fn mps_replicas_reach_their_control_daemon_under_every_strategy() {
        use DeviceListStrategy::*;
        let mut config = Config::default();
        config.flags.mig_strategy = MigStrategy::Single;
        config.flags.mps_root = "/run/nvidia/mps".into();
        config.flags.plugin.pass_device_specs = true;
        config.sharing.mps = Some(crate::config::ReplicatedResources {
            rename_by_default: false,
            fail_requests_greater_than_one: true,
            resources: vec![ReplicatedResource::every("nvidia.com/gpu", 4)],
        });
        let inventory = Inventory {
            gpus: node().gpus.into_iter().take(2).collect(),
            ..Default::default()
        };
        let mps_mounts = vec![
            Mount {
                container_path: "/mps/nvidia.com/gpu/pipe".into(),
                host_path: "/run/nvidia/mps/nvidia.com/gpu/pipe".into(),
                read_only: false,
            },
            Mount {
                container_path: "/dev/shm".into(),
                host_path: "/run/nvidia/mps/shm".into(),
                read_only: false,
            },
        ];
        for strategies in [
            vec![Envvar],
            vec![VolumeMounts],
            vec![Envvar, VolumeMounts],
            vec![CdiAnnotations],
            vec![CdiCri],
            vec![Envvar, CdiCri],
        ] {
            config.flags.plugin.device_list_strategy = strategies.clone();
            let plan = plan(&inventory, &config);
            let resource = plan.resource("nvidia.com/gpu").expect("planned");
            let files = NodeDeviceFiles {
                control: vec!["/dev/nvidiactl".into()],
                mig_caps: NodeDeviceFiles::synthetic_mig_minors(2),
                ..Default::default()
            };
            let response = allocate(resource, &["GPU-1::2".into()], &config.flags, &files, "id")
                .expect("allocated");
            assert_eq!(
                response.envs["CUDA_MPS_PIPE_DIRECTORY"], "/mps/nvidia.com/gpu/pipe",
                "{strategies:?}"
            );
            assert!(
                response.mounts.ends_with(&mps_mounts),
                "{strategies:?}: {:?}",
                response.mounts
            );
            let all_cdi = strategies.iter().all(|s| s.is_cdi());
            assert_eq!(
                response.devices.is_empty(),
                all_cdi,
                "{strategies:?}: device specs with passDeviceSpecs unless all-CDI"
            );
            if strategies.contains(&VolumeMounts) {
                assert_eq!(
                    response.mounts[0].container_path,
                    "/var/run/nvidia-container-devices/GPU-1"
                );
                assert_eq!(response.mounts.len(), 3);
            }
        }
        // Time-slicing gives none of it.
        let response = run(
            &super::tests::config(4, false),
            "nvidia.com/gpu",
            &["GPU-0::0"],
        )
        .expect("ok");
        assert!(!response.envs.contains_key("CUDA_MPS_PIPE_DIRECTORY"));
        assert!(response.mounts.is_empty());
    }

    /// Memory by count: k replicas of one GPU reach the daemon whose limits
    /// are k shares; spread over GPUs, or more than allowed, they are
    /// refused with what to ask for instead.
    #[test]
    fn mps_replicas_by_count_reach_the_daemon_of_their_size() {
        let mut config = Config::default();
        config.flags.mps_root = "/run/nvidia/mps".into();
        let mut entry = ReplicatedResource::every("nvidia.com/gpu", 4);
        entry.mps.max_replicas_per_container = 3;
        config.sharing.mps = Some(crate::config::ReplicatedResources {
            rename_by_default: false,
            fail_requests_greater_than_one: false,
            resources: vec![entry],
        });
        let inventory = Inventory {
            gpus: node().gpus.into_iter().take(2).collect(),
            ..Default::default()
        };
        let plan = plan(&inventory, &config);
        let resource = plan.resource("nvidia.com/gpu").expect("planned");
        let files = NodeDeviceFiles::default();
        let ask = |ids: &[&str]| {
            let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
            allocate(resource, &ids, &config.flags, &files, "id")
        };
        for (ids, pipe) in [
            (vec!["GPU-1::2"], "nvidia.com/gpu/pipe"),
            (vec!["GPU-1::2", "GPU-1::0"], "nvidia.com/gpu/shares-2/pipe"),
            (
                vec!["GPU-0::3", "GPU-0::1", "GPU-0::2"],
                "nvidia.com/gpu/shares-3/pipe",
            ),
        ] {
            let response = ask(&ids).expect("allocated");
            assert_eq!(
                response.envs["CUDA_MPS_PIPE_DIRECTORY"],
                format!("/mps/{pipe}")
            );
            assert_eq!(
                response.mounts[0],
                Mount {
                    container_path: format!("/mps/{pipe}"),
                    host_path: format!("/run/nvidia/mps/{pipe}"),
                    read_only: false,
                }
            );
            assert_eq!(
                response.envs["NVIDIA_VISIBLE_DEVICES"],
                ids[0].split("::").next().expect("uuid")
            );
        }
        assert_eq!(
            ask(&["GPU-0::0", "GPU-1::0"])
                .expect_err("spread")
                .to_string(),
            "invalid allocation request for \"nvidia.com/gpu\": invalid request: the 2 MPS replicas of one container must be on one GPU, found them on GPUs 0, 1; MPS limits are per GPU, so shares of several GPUs cannot be added up (ask for at most 3, the replicas of one GPU)"
        );
        assert_eq!(
            ask(&["GPU-0::0", "GPU-0::1", "GPU-0::2", "GPU-0::3"])
                .expect_err("too many")
                .to_string(),
            "invalid allocation request for \"nvidia.com/gpu\": invalid request: 4 MPS replicas requested; at most 3 per container (maxReplicasPerContainer)"
        );
    }

    #[test]
    fn refusals_use_nvidia_wording() {
        let config = config(4, true);
        let err = run(&config, "nvidia.com/gpu", &["GPU-0::0", "GPU-1::0"]).expect_err("refused");
        assert_eq!(
            err.to_string(),
            "invalid allocation request for \"nvidia.com/gpu\": invalid request: maximum request size for shared resources is 1; found 2"
        );
        let err = run(&config, "nvidia.com/gpu", &["GPU-9::0"]).expect_err("refused");
        assert_eq!(
            err.to_string(),
            "invalid allocation request for \"nvidia.com/gpu\": invalid request: unknown device: GPU-9::0"
        );
        // One replica is fine even with the flag.
        assert!(run(&config, "nvidia.com/gpu", &["GPU-0::0"]).is_ok());
    }

    /// Allocate accepted an empty list (`NVIDIA_VISIBLE_DEVICES=''`) and
    /// duplicate ids, and echoed whole ids of any length in its errors.
    #[test]
    fn empty_duplicate_and_long_ids_are_refused_briefly() {
        let config = config(4, false);
        let err = run(&config, "nvidia.com/gpu", &[]).expect_err("empty");
        assert_eq!(
            err.to_string(),
            "invalid allocation request for \"nvidia.com/gpu\": invalid request: no devices requested"
        );
        let err = run(
            &config,
            "nvidia.com/gpu",
            &["GPU-0::1", "GPU-1::0", "GPU-0::1"],
        )
        .expect_err("duplicate");
        assert_eq!(
            err.to_string(),
            "invalid allocation request for \"nvidia.com/gpu\": invalid request: device GPU-0::1 requested twice"
        );
        let long = format!("GPU-{}", "9".repeat(100_000));
        let err = run(&config, "nvidia.com/gpu", &[long.as_str()]).expect_err("unknown");
        let message = err.to_string();
        assert!(message.len() < 250, "{}", message.len());
        assert!(message.ends_with("... (100004 bytes)"), "{message}");
    }

    #[test]
    fn strategies_and_id_forms() {
        use DeviceListStrategy::*;
        let cases: Vec<(
            Vec<DeviceListStrategy>,
            DeviceIdStrategy,
            &str,
            Option<&str>,
            usize,
            Option<&str>,
            usize,
        )> = vec![
            // strategies, id strategy, device, NVIDIA_VISIBLE_DEVICES, mounts, annotation value, cdi devices
            (
                vec![Envvar],
                DeviceIdStrategy::Index,
                "MIG-2-0",
                Some("2:0"),
                0,
                None,
                0,
            ),
            (
                vec![VolumeMounts],
                DeviceIdStrategy::Uuid,
                "MIG-2-0",
                Some("/var/run/nvidia-container-devices"),
                1,
                None,
                0,
            ),
            (
                vec![CdiAnnotations],
                DeviceIdStrategy::Uuid,
                "MIG-2-0",
                None,
                0,
                Some("k8s.device-plugin.nvidia.com/gpu=MIG-2-0"),
                0,
            ),
            (
                vec![CdiCri, Envvar],
                DeviceIdStrategy::Index,
                "MIG-2-0",
                Some("2:0"),
                0,
                None,
                1,
            ),
        ];
        for (strategies, id_strategy, id, env, mounts, annotation, cdi) in cases {
            let mut config = config(1, false);
            config.flags.plugin.device_list_strategy = strategies.clone();
            config.flags.plugin.device_id_strategy = id_strategy;
            let response = run(&config, "nvidia.com/mig-3g.20gb", &[id]).expect("ok");
            let label = format!("{strategies:?} {id_strategy:?}");
            assert_eq!(
                response
                    .envs
                    .get("NVIDIA_VISIBLE_DEVICES")
                    .map(String::as_str),
                env,
                "{label}"
            );
            assert_eq!(response.mounts.len(), mounts, "{label}");
            assert_eq!(
                response
                    .annotations
                    .get("cdi.k8s.io/nvidia-device-plugin_fixed")
                    .map(String::as_str),
                annotation,
                "{label}"
            );
            assert_eq!(response.cdi_devices.len(), cdi, "{label}");
        }
    }

    /// Every combination of the four device-list strategies × both id
    /// strategies × the three kinds of device, against what NVIDIA's plugin
    /// v0.20 returns for each, restated here rule by rule.
    #[test]
    fn every_strategy_combination_for_every_kind_of_device() {
        use DeviceListStrategy::*;
        const ALL: [DeviceListStrategy; 4] = [Envvar, VolumeMounts, CdiAnnotations, CdiCri];
        // (resource, requested id, uuid form, index form, device nodes)
        let kinds = [
            (
                "nvidia.com/gpu",
                "GPU-1::2",
                "GPU-1",
                "1",
                vec!["/dev/nvidia1"],
            ),
            (
                "nvidia.com/mig-3g.20gb",
                "MIG-2-0",
                "MIG-2-0",
                "2:0",
                // GPU minor 2, GI 1, CI 0 → 3 + 270 + 9 = 282, 283.
                vec![
                    "/dev/nvidia2",
                    "/dev/nvidia-caps/nvidia-cap282",
                    "/dev/nvidia-caps/nvidia-cap283",
                ],
            ),
            (
                "nvidia.com/gpu",
                "GPU-0",
                "GPU-0",
                "0",
                vec!["/dev/nvidia0"],
            ),
        ];
        let mut cases = 0;
        for mask in 1u8..16 {
            let strategies: Vec<DeviceListStrategy> = (0..4)
                .filter(|b| mask & (1 << b) != 0)
                .map(|b| ALL[b])
                .collect();
            for id_strategy in [DeviceIdStrategy::Uuid, DeviceIdStrategy::Index] {
                for pass_specs in [false, true] {
                    for (replicas, (resource, requested, uuid, index, nodes)) in
                        [(4, &kinds[0]), (1, &kinds[1]), (1, &kinds[2])]
                    {
                        let mut config = config(replicas, false);
                        config.flags.plugin.device_list_strategy = strategies.clone();
                        config.flags.plugin.device_id_strategy = id_strategy;
                        config.flags.plugin.pass_device_specs = pass_specs;
                        let got = run(&config, resource, &[requested]).expect("allocated");
                        let label = format!(
                            "{strategies:?} {id_strategy:?} specs={pass_specs} {requested}"
                        );

                        let id = match id_strategy {
                            DeviceIdStrategy::Uuid => *uuid,
                            DeviceIdStrategy::Index => *index,
                        };
                        let uses = |s| strategies.contains(&s);
                        let all_cdi = strategies.iter().all(|s| s.is_cdi());
                        let cdi_name = format!("k8s.device-plugin.nvidia.com/gpu={id}");

                        let mut envs = BTreeMap::new();
                        if !all_cdi && uses(VolumeMounts) {
                            envs.insert(
                                "NVIDIA_VISIBLE_DEVICES".to_string(),
                                "/var/run/nvidia-container-devices".to_string(),
                            );
                        } else if !all_cdi && uses(Envvar) {
                            envs.insert("NVIDIA_VISIBLE_DEVICES".to_string(), id.to_string());
                        }
                        let got_envs: BTreeMap<String, String> =
                            got.envs.clone().into_iter().collect();
                        assert_eq!(got_envs, envs, "envs: {label}");

                        let mounts: Vec<(String, String)> = if !all_cdi && uses(VolumeMounts) {
                            vec![(
                                format!("/var/run/nvidia-container-devices/{id}"),
                                "/dev/null".to_string(),
                            )]
                        } else {
                            vec![]
                        };
                        let got_mounts: Vec<(String, String)> = got
                            .mounts
                            .iter()
                            .map(|m| (m.container_path.clone(), m.host_path.clone()))
                            .collect();
                        assert_eq!(got_mounts, mounts, "mounts: {label}");

                        let annotations: BTreeMap<String, String> = if uses(CdiAnnotations) {
                            [(
                                "cdi.k8s.io/nvidia-device-plugin_fixed".to_string(),
                                cdi_name.clone(),
                            )]
                            .into()
                        } else {
                            BTreeMap::new()
                        };
                        let got_annotations: BTreeMap<String, String> =
                            got.annotations.clone().into_iter().collect();
                        assert_eq!(got_annotations, annotations, "annotations: {label}");

                        let cdi: Vec<String> = if uses(CdiCri) {
                            vec![cdi_name.clone()]
                        } else {
                            vec![]
                        };
                        let got_cdi: Vec<String> =
                            got.cdi_devices.iter().map(|d| d.name.clone()).collect();
                        assert_eq!(got_cdi, cdi, "cdi devices: {label}");

                        let mut specs: Vec<String> = Vec::new();
                        if pass_specs && !all_cdi {
                            specs.extend([
                                "/dev/nvidiactl".to_string(),
                                "/dev/nvidia-uvm".to_string(),
                            ]);
                            specs.extend(nodes.iter().map(|n| n.to_string()));
                        }
                        let got_specs: Vec<String> = got
                            .devices
                            .iter()
                            .map(|d| d.container_path.clone())
                            .collect();
                        assert_eq!(got_specs, specs, "device specs: {label}");
                        assert!(
                            got.devices
                                .iter()
                                .all(|d| d.host_path == d.container_path && d.permissions == "rw")
                        );
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 15 * 2 * 2 * 3);
    }

    #[test]
    fn whole_gpus_in_both_id_forms() {
        let mut config = config(1, false);
        config.flags.plugin.device_id_strategy = DeviceIdStrategy::Index;
        let got = run(&config, "nvidia.com/gpu", &["GPU-1", "GPU-0"]).expect("ok");
        assert_eq!(got.envs["NVIDIA_VISIBLE_DEVICES"], "1,0");
        config.flags.plugin.device_id_strategy = DeviceIdStrategy::Uuid;
        let got = run(&config, "nvidia.com/gpu", &["GPU-1", "GPU-0"]).expect("ok");
        assert_eq!(got.envs["NVIDIA_VISIBLE_DEVICES"], "GPU-1,GPU-0");
    }

    #[test]
    fn gdrcopy_gds_and_mofed_add_env_and_only_the_cdi_names_the_node_has() {
        let mut config = config(1, false);
        config.flags.gdrcopy_enabled = true;
        config.flags.gds_enabled = true;
        config.flags.mofed_enabled = true;
        config.flags.plugin.device_list_strategy =
            vec![DeviceListStrategy::Envvar, DeviceListStrategy::CdiCri];
        // None of the classes on this node: the env as NVIDIA sets it, but
        // no CDI name a spec would not define.
        let got = run(&config, "nvidia.com/gpu", &["GPU-0"]).expect("ok");
        for key in ["NVIDIA_GDRCOPY", "NVIDIA_GDS", "NVIDIA_MOFED"] {
            assert_eq!(got.envs[key], "enabled", "{key}");
        }
        let names: Vec<&str> = got.cdi_devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, vec!["k8s.device-plugin.nvidia.com/gpu=GPU-0"]);
        // GDRCopy and MOFED present: named.
        let plan = plan(&node(), &config);
        let files = NodeDeviceFiles {
            classes: device_nodes::ClassNodes {
                gdrcopy: vec!["/dev/gdrdrv".into()],
                gds: vec![],
                mofed: vec!["/dev/infiniband/uverbs0".into()],
            },
            ..Default::default()
        };
        let resource = plan.resource("nvidia.com/gpu").expect("planned");
        let got = allocate(resource, &["GPU-0".into()], &config.flags, &files, "x").expect("ok");
        let names: Vec<&str> = got.cdi_devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "k8s.device-plugin.nvidia.com/gpu=GPU-0",
                "k8s.device-plugin.nvidia.com/gdrcopy=all",
                "k8s.device-plugin.nvidia.com/mofed=all",
            ]
        );
    }

    #[test]
    fn device_specs_cover_control_gpu_and_mig_capability_nodes() {
        let mut config = config(1, false);
        config.flags.plugin.pass_device_specs = true;
        config.flags.nvidia_driver_root = "/run/nvidia/driver".into();
        let response = run(&config, "nvidia.com/mig-3g.20gb", &["MIG-2-0"]).expect("ok");
        let host: Vec<&str> = response
            .devices
            .iter()
            .map(|d| d.host_path.as_str())
            .collect();
        // GPU minor 2, GI 1, CI 0 → GI minor 3 + 270 + 9 = 282, CI minor 283.
        assert_eq!(
            host,
            vec![
                "/run/nvidia/driver/dev/nvidiactl",
                "/run/nvidia/driver/dev/nvidia-uvm",
                "/run/nvidia/driver/dev/nvidia2",
                "/run/nvidia/driver/dev/nvidia-caps/nvidia-cap282",
                "/run/nvidia/driver/dev/nvidia-caps/nvidia-cap283",
            ]
        );
    }

    #[test]
    fn replicas_of_one_gpu_yield_one_device_node() {
        let mut config = config(4, false);
        config.flags.plugin.pass_device_specs = true;
        let response = run(&config, "nvidia.com/gpu", &["GPU-0::0", "GPU-0::1"]).expect("ok");
        let paths: Vec<&str> = response
            .devices
            .iter()
            .map(|d| d.container_path.as_str())
            .collect();
        assert_eq!(
            paths,
            vec!["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia0"]
        );
    }

    #[test]
    fn mig_minors_file_parses() {
        let text = "config 1\nmonitor 2\ngpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\ngpu1/gi2/ci0/access 9\n";
        let map = NodeDeviceFiles::parse_mig_minors(text);
        assert_eq!(map.get(&(0, 1, 0)), Some(&(12, 13)));
        assert_eq!(map.len(), 1, "CI without its GI line is dropped");
    }
}
