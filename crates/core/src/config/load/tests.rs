//! The loader's tests: the messages a user sees for each bad file, and
//! the key tables held to the readers.

use super::*;
use crate::config::keys::{Kind, generic_path};
use crate::config::schema::{ReplicatedResource, ResourceName};

const SRC: &str = "config.yaml";

fn err(text: &str) -> String {
    match parse(text, SRC) {
        Ok(c) => panic!("expected an error for {text:?}, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn ok(text: &str) -> Config {
    match parse(text, SRC) {
        Ok(c) => c,
        Err(e) => panic!("unexpected error for {text:?}: {e}"),
    }
}

fn ts(resource: &str) -> String {
    format!("sharing:\n  timeSlicing:\n    resources:\n    - {resource}\n")
}

const FLAGS_KEYS: &str = "migStrategy, failOnInitError, mpsRoot, nvidiaDriverRoot, \
        nvidiaDevRoot, gdrcopyEnabled, gdsEnabled, mofedEnabled, deviceDiscoveryStrategy, \
        useNodeFeatureAPI, plugin, gfd";

#[test]
fn unknown_and_misplaced_keys() {
    let cases: Vec<(String, String)> = vec![
        (
            "flags: {renameByDefault: true}".into(),
            "config.yaml: unknown key 'flags.renameByDefault': renameByDefault belongs under \
                 sharing.timeSlicing (or sharing.mps)"
                .into(),
        ),
        (
            "sharing: {timeSlicing: {replicas: 2}}".into(),
            "config.yaml: unknown key 'sharing.timeSlicing.replicas': replicas belongs under \
                 sharing.timeSlicing.resources[] (or sharing.mps.resources[])"
                .into(),
        ),
        (
            "sharing: {mps: {replicas: 2}}".into(),
            "config.yaml: unknown key 'sharing.mps.replicas': replicas belongs under \
                 sharing.mps.resources[] (or sharing.timeSlicing.resources[])"
                .into(),
        ),
        (
            "flags: {plugin: {migStrategy: mixed}}".into(),
            "config.yaml: unknown key 'flags.plugin.migStrategy': migStrategy belongs under flags"
                .into(),
        ),
        (
            "migStrategy: mixed".into(),
            "config.yaml: unknown key 'migStrategy': migStrategy belongs under flags".into(),
        ),
        (
            "flags: {version: v1}".into(),
            "config.yaml: unknown key 'flags.version': version belongs at the top level".into(),
        ),
        (
            "flags: {migstrategy: mixed}".into(),
            format!(
                "config.yaml: unknown key 'flags.migstrategy': did you mean 'migStrategy'? \
                     valid keys under flags: {FLAGS_KEYS}"
            ),
        ),
        (
            "flags: {bogus: 1}".into(),
            format!("config.yaml: unknown key 'flags.bogus': valid keys under flags: {FLAGS_KEYS}"),
        ),
        (
            "flag: {}".into(),
            "config.yaml: unknown key 'flag': did you mean 'flags'? valid top-level keys: \
                 version, flags, resources, sharing, imex, health"
                .into(),
        ),
        (
            ts("{name: gpu, replica: 2}"),
            "config.yaml: unknown key 'sharing.timeSlicing.resources[0].replica': did you mean \
                 'replicas'? valid keys under sharing.timeSlicing.resources[0]: name, rename, \
                 devices, replicas"
                .into(),
        ),
        (
            "flags: {gfd: {oneshot: true, sleep: 1}}".into(),
            "config.yaml: unknown key 'flags.gfd.sleep': valid keys under flags.gfd: oneshot, \
                 noTimestamp, sleepInterval, outputFile, machineTypeFile"
                .into(),
        ),
        (
            "resources: {gpus: [{pattern: '*', name: gpu, replicas: 2}]}".into(),
            "config.yaml: unknown key 'resources.gpus[0].replicas': replicas belongs under \
                 sharing.timeSlicing.resources[] (or sharing.mps.resources[])"
                .into(),
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(err(&text), expected, "{text}");
    }
}

#[test]
fn invalid_values() {
    let cases: Vec<(String, &str)> = vec![
            (
                "version: v2".into(),
                "config.yaml: version: unknown version: v2",
            ),
            (
                "version: 1".into(),
                "config.yaml: version: unknown version: 1",
            ),
            (
                "- a\n- b\n".into(),
                "config.yaml: expected a mapping at the top level, found a list",
            ),
            (
                "flags: 3".into(),
                "config.yaml: flags: expected a mapping, found number 3",
            ),
            (
                "flags: {migStrategy: bogus}".into(),
                "config.yaml: flags.migStrategy: unknown MIG strategy: bogus",
            ),
            (
                "flags: {failOnInitError: maybe}".into(),
                "config.yaml: flags.failOnInitError: expected a boolean, found string \"maybe\"",
            ),
            (
                "flags: {mpsRoot: 3}".into(),
                "config.yaml: flags.mpsRoot: expected a string, found number 3",
            ),
            (
                "flags: {deviceDiscoveryStrategy: cuda}".into(),
                "config.yaml: flags.deviceDiscoveryStrategy: invalid --device-discovery-strategy option cuda",
            ),
            (
                "flags: {deviceDiscoveryStrategy: tegra}".into(),
                "config.yaml: flags.deviceDiscoveryStrategy: device discovery strategy tegra is not supported by gpu-slicer: it finds GPUs through NVML only, and Tegra's integrated GPUs (Jetson, IGX) are not NVML devices; use auto or nvml, or keep NVIDIA's plugin on Tegra nodes",
            ),
            (
                "flags: {plugin: {deviceListStrategy: bogus}}".into(),
                "config.yaml: flags.plugin.deviceListStrategy: invalid strategy: bogus",
            ),
            (
                "flags: {plugin: {deviceListStrategy: [envvar, bogus]}}".into(),
                "config.yaml: flags.plugin.deviceListStrategy: invalid strategy: bogus",
            ),
            (
                "flags: {plugin: {deviceListStrategy: 3}}".into(),
                "config.yaml: flags.plugin.deviceListStrategy: invalid deviceListStrategy: 3",
            ),
            (
                "flags: {plugin: {deviceListStrategy: [envvar, 3]}}".into(),
                "config.yaml: flags.plugin.deviceListStrategy[1]: invalid deviceListStrategy: 3",
            ),
            (
                "flags: {plugin: {deviceIDStrategy: serial}}".into(),
                "config.yaml: flags.plugin.deviceIDStrategy: invalid --device-id-strategy option: serial",
            ),
            (
                "flags: {plugin: {sharedDevicesAllocationPolicy: spread}}".into(),
                "config.yaml: flags.plugin.sharedDevicesAllocationPolicy: invalid \
                 --shared-devices-allocation-policy option: spread",
            ),
            (
                "resources: {gpus: [{name: gpu}]}".into(),
                "config.yaml: resources.gpus[0]: resources must have a 'pattern' field set",
            ),
            (
                "resources: {mig: [{pattern: 1g.10gb}]}".into(),
                "config.yaml: resources.mig[0]: resources must have a 'name' field set",
            ),
            (
                "resources: {gpus: {pattern: '*'}}".into(),
                "config.yaml: resources.gpus: expected a list, found a mapping",
            ),
            (
                "sharing: {timeSlicing: {}}".into(),
                "config.yaml: sharing.timeSlicing.resources: no resources specified",
            ),
            (
                "sharing: {mps: {resources: []}}".into(),
                "config.yaml: sharing.mps.resources: no resources specified",
            ),
            (
                ts("{replicas: 2}"),
                "config.yaml: sharing.timeSlicing.resources[0]: no resource name specified",
            ),
            (
                ts("{name: gpu}"),
                "config.yaml: sharing.timeSlicing.resources[0]: no replicas specified",
            ),
            (
                ts("{name: gpu, replicas: 1}"),
                "config.yaml: sharing.timeSlicing.resources[0].replicas: number of replicas must be >= 2",
            ),
            (
                "sharing: {mps: {resources: [{name: gpu, replicas: 1}]}}".into(),
                "config.yaml: sharing.mps.resources[0].replicas: number of replicas must be >= 2",
            ),
            (
                "sharing: {mps: {resources: [{name: gpu, replicas: 49}]}}".into(),
                "config.yaml: sharing.mps.resources[0].replicas: invalid MPS configuration: invalid device \
                 maximum allowed replicas exceeded: 49 > 48 (an MPS server serves at most 48 clients per GPU)",
            ),
            (
                "sharing: {mps: {resources: [{name: gpu, replicas: 4, memoryPerReplica: 10G}]}}".into(),
                "config.yaml: sharing.mps.resources[0].memoryPerReplica: '10G' is not a size: write it as 10Gi or 4096Mi",
            ),
            (
                "sharing: {mps: {resources: [{name: gpu, replicas: 4, memoryPerReplica: 0Mi}]}}".into(),
                "config.yaml: sharing.mps.resources[0].memoryPerReplica: '0Mi' is no memory: give at least 1Mi",
            ),
            (
                "sharing: {mps: {resources: [{name: gpu, replicas: 4, memoryPerReplica: 4096}]}}".into(),
                "config.yaml: sharing.mps.resources[0].memoryPerReplica: expected a size such as 10Gi or 4096Mi, found number 4096",
            ),
            (
                "sharing: {mps: {resources: [{name: gpu, replicas: 4, activeThreadPercentage: 0}]}}".into(),
                "config.yaml: sharing.mps.resources[0].activeThreadPercentage: must be a whole percentage from 1 to 100, found 0",
            ),
            (
                "sharing: {mps: {resources: [{name: gpu, replicas: 4, activeThreadPercentage: 150}]}}".into(),
                "config.yaml: sharing.mps.resources[0].activeThreadPercentage: must be a whole percentage from 1 to 100, found 150",
            ),
            (
                "sharing: {mps: {resources: [{name: gpu, replicas: 4, maxReplicasPerContainer: 2}]}}".into(),
                "config.yaml: sharing.mps.resources[0].maxReplicasPerContainer: 2 replicas per container needs \
                 'failRequestsGreaterThanOne: false' in sharing.mps (it defaults to true under MPS, which refuses \
                 containers asking for more than one replica)",
            ),
            (
                "sharing: {mps: {failRequestsGreaterThanOne: false, resources: [{name: gpu, replicas: 4, maxReplicasPerContainer: 5}]}}".into(),
                "config.yaml: sharing.mps.resources[0].maxReplicasPerContainer: must be a whole number from 1 to \
                 replicas (4): a container's replicas are all on one GPU, found 5",
            ),
            (
                "sharing: {mps: {failRequestsGreaterThanOne: false, resources: [{name: gpu, replicas: 4, maxReplicasPerContainer: 0}]}}".into(),
                "config.yaml: sharing.mps.resources[0].maxReplicasPerContainer: must be a whole number from 1 to \
                 replicas (4): a container's replicas are all on one GPU, found 0",
            ),
            (
                "sharing: {mps: {failRequestsGreaterThanOne: false, resources: [{name: gpu, replicas: 4, maxReplicasPerContainer: two}]}}".into(),
                "config.yaml: sharing.mps.resources[0].maxReplicasPerContainer: must be a whole number from 1 to \
                 replicas (4), found string \"two\"",
            ),
            (
                ts("{name: gpu, replicas: -3}"),
                "config.yaml: sharing.timeSlicing.resources[0].replicas: number of replicas must be >= 2",
            ),
            (
                ts("{name: gpu, replicas: '4'}"),
                "config.yaml: sharing.timeSlicing.resources[0].replicas: expected an integer, found string \"4\"",
            ),
            (
                ts("{name: gpu, replicas: 2, devices: some}"),
                "config.yaml: sharing.timeSlicing.resources[0].devices: devices set as 'some' but \
                 the only valid string input is 'all'",
            ),
            (
                ts("{name: gpu, replicas: 2, devices: 0}"),
                "config.yaml: sharing.timeSlicing.resources[0].devices: devices set as '0' but a \
                 count of devices must be > 0",
            ),
            (
                ts("{name: gpu, replicas: 2, devices: -1}"),
                "config.yaml: sharing.timeSlicing.resources[0].devices: devices set as '-1' but a \
                 count of devices must be > 0",
            ),
            (
                ts("{name: gpu, replicas: 2, devices: 1.5}"),
                "config.yaml: sharing.timeSlicing.resources[0].devices: devices set as '1.5' but a \
                 count of devices must be a whole number",
            ),
            (
                ts("{name: gpu, replicas: 2, devices: 99999999999}"),
                "config.yaml: sharing.timeSlicing.resources[0].devices: devices set as \
                 '99999999999', more devices than any node has",
            ),
            (
                ts("{name: gpu, replicas: 2, devices: [0, [1]]}"),
                "config.yaml: sharing.timeSlicing.resources[0].devices[1]: unsupported device \
                 in devices list: a list (expected a GPU index '0', a MIG device index \
                 '0:1', 'GPU-<uuid>' or 'MIG-<uuid>')",
            ),
            (
                ts("{name: gpu, replicas: 2, devices: [0, true]}"),
                "config.yaml: sharing.timeSlicing.resources[0].devices[1]: unsupported device \
                 in devices list: boolean true (expected a GPU index '0', a MIG device index \
                 '0:1', 'GPU-<uuid>' or 'MIG-<uuid>')",
            ),
            (
                ts("{name: gpu, replicas: 2, devices: [nvme0]}"),
                "config.yaml: sharing.timeSlicing.resources[0].devices[0]: unsupported device \
                 reference in devices list: 'nvme0' (expected a GPU index '0', a MIG device index \
                 '0:1', 'GPU-<uuid>' or 'MIG-<uuid>')",
            ),
            (
                ts("{name: gpu, replicas: 2, devices: {a: 1}}"),
                "config.yaml: sharing.timeSlicing.resources[0].devices: devices is a mapping; \
                 expected 'all', a count of devices or a list of devices",
            ),
            (
                ts(&format!("{{name: {}, replicas: 2}}", "a".repeat(53))),
                "config.yaml: sharing.timeSlicing.resources[0].name: fully-qualified resource name \
                 must be 63 characters or less: nvidia.com/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            ),
            (
                ts("{name: 'gpu shared', replicas: 2}"),
                "config.yaml: sharing.timeSlicing.resources[0].name: incorrect format for resource \
                 name 'nvidia.com/gpu shared': [name part must consist of alphanumeric characters, \
                 '-', '_' or '.', and must start and end with an alphanumeric character (e.g. \
                 'MyName', or 'my.name', or '123-abc', regex used for validation is \
                 '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')]",
            ),
            (
                ts("{name: gpu, rename: kubernetes.io/gpu, replicas: 2}"),
                "config.yaml: sharing.timeSlicing.resources[0].rename: incorrect format for \
                 resource name 'kubernetes.io/gpu': [the kubernetes.io/ prefix is reserved for \
                 native resources, not extended resources]",
            ),
            (
                "imex: {channelIDs: [0]}".into(),
                "config.yaml: imex.channelIDs: IMEX channels are not supported by gpu-slicer: a container \
                 would not get /dev/nvidia-caps-imex-channels/channel0; remove imex.channelIDs (or set it \
                 to []), or keep NVIDIA's plugin on nodes whose workloads need IMEX",
            ),
            (
                "imex: {channelIDs: [1, 2]}".into(),
                "config.yaml: imex.channelIDs: invalid IMEX config: channelIDs must be [] or [0]; found [1 2]",
            ),
            (
                "imex: {channelIDs: [0, 0]}".into(),
                "config.yaml: imex.channelIDs: invalid IMEX config: channelIDs must be [] or [0]; found [0 0]",
            ),
        ];
    for (text, expected) in cases {
        assert_eq!(err(&text), expected, "{text}");
    }
}

#[test]
fn syntax_errors_carry_line_and_column() {
    let e = err("flags:\n  migStrategy: [mixed\n");
    assert!(e.starts_with("config.yaml: "), "{e}");
    assert!(e.contains("line "), "{e}");
    assert!(e.contains("column "), "{e}");
    let e = err("{\"flags\": {\"migStrategy\": \"mixed\"}");
    assert!(e.starts_with("config.yaml: "), "{e}");
    assert!(e.contains("line 1"), "{e}");
    let e = err("flags:\n  migStrategy: mixed\n migStrategy: none\n");
    assert!(e.contains("line 3"), "{e}");
    assert_eq!(
        err("flags:\n  migStrategy: mixed\n  migStrategy: none\n"),
        "config.yaml: duplicate mapping key: migStrategy at line 3, column 3"
    );
    assert_eq!(
        err("{\"flags\": {}, \"flags\": {}}"),
        "config.yaml: duplicate mapping key: flags at line 1, column 15"
    );
}

#[test]
fn empty_and_comment_only_files_are_defaults() {
    for text in [
        "",
        "\n\n",
        "# nothing here\n  # indented\n",
        "---\n",
        "{}",
        "version: v1",
    ] {
        assert_eq!(ok(text), Config::default(), "{text:?}");
    }
}

#[test]
fn nvidia_examples_load_unchanged() {
    let c = ok(
        "version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 10\n",
    );
    assert_eq!(
        c.sharing.time_slicing,
        ReplicatedResources {
            rename_by_default: false,
            fail_requests_greater_than_one: false,
            resources: vec![ReplicatedResource {
                name: ResourceName::new_unchecked("nvidia.com/gpu"),
                rename: None,
                devices: DeviceSelection::All,
                replicas: 10,
                mps: Default::default(),
            }],
        }
    );
    assert_eq!(c.sharing.strategy(), SharingStrategy::TimeSlicing);

    let c = ok(
        "version: v1\nflags: {migStrategy: mixed}\nsharing:\n  timeSlicing:\n    renameByDefault: true\n    resources:\n    - {name: nvidia.com/mig-1g.10gb, replicas: 2}\n",
    );
    assert_eq!(c.flags.mig_strategy, MigStrategy::Mixed);
    assert!(c.sharing.time_slicing.rename_by_default);
    assert_eq!(
        c.sharing.time_slicing.resources[0].name.as_str(),
        "nvidia.com/mig-1g.10gb"
    );
    assert!(validate_cross(&c).is_ok());
}

#[test]
fn full_file_with_every_key() {
    let c = ok(r#"
version: v1
flags:
  migStrategy: single
  failOnInitError: false
  mpsRoot: /run/nvidia/mps
  nvidiaDriverRoot: /run/nvidia/driver
  nvidiaDevRoot: /
  gdrcopyEnabled: true
  gdsEnabled: yes
  mofedEnabled: false
  useNodeFeatureAPI: true
  deviceDiscoveryStrategy: nvml
  plugin:
    passDeviceSpecs: true
    deviceListStrategy: [volume-mounts, envvar, volume-mounts]
    deviceIDStrategy: index
    cdiAnnotationPrefix: cdi.example.com/
    nvidiaCTKPath: /usr/local/bin/nvidia-ctk
    containerDriverRoot: /host-driver
    sharedDevicesAllocationPolicy: packed
  gfd:
    oneshot: true
    noTimestamp: false
    sleepInterval: 60s
    outputFile: /tmp/x
    machineTypeFile: /sys/class/dmi/id/product_name
resources:
  gpus:
  - {pattern: "*", name: gpu}
  mig:
  - {pattern: "1g.10gb", name: mig-1g.10gb}
sharing:
  mps:
    resources:
    - name: gpu
      rename: gpu.mps
      devices: [0, "1", "0:1", GPU-abc, MIG-def, MIG-GPU-abc/1/0]
      replicas: 4
imex:
  channelIDs: []
  required: true
"#);
    let f = &c.flags;
    assert_eq!(f.mig_strategy, MigStrategy::Single);
    assert!(!f.fail_on_init_error);
    assert_eq!(f.mps_root, "/run/nvidia/mps");
    assert_eq!(f.nvidia_driver_root, "/run/nvidia/driver");
    assert_eq!(f.dev_root(), "/");
    assert!(f.gdrcopy_enabled && f.gds_enabled && !f.mofed_enabled);
    assert_eq!(f.device_discovery_strategy, "nvml");
    assert_eq!(
        f.plugin,
        PluginFlags {
            pass_device_specs: true,
            device_list_strategy: vec![
                DeviceListStrategy::VolumeMounts,
                DeviceListStrategy::Envvar
            ],
            device_id_strategy: DeviceIdStrategy::Index,
            cdi_annotation_prefix: "cdi.example.com/".into(),
            nvidia_ctk_path: "/usr/local/bin/nvidia-ctk".into(),
            container_driver_root: "/host-driver".into(),
            shared_devices_allocation_policy: AllocationPolicy::Packed,
        }
    );
    let r = c.resources.as_ref().unwrap();
    assert_eq!(r.gpus[0].name.as_str(), "nvidia.com/gpu");
    assert_eq!(r.mig[0].pattern, "1g.10gb");
    let mps = c.sharing.mps.as_ref().unwrap();
    assert!(mps.fail_requests_greater_than_one, "MPS defaults to true");
    assert_eq!(
        mps.resources[0].rename,
        Some(ResourceName::new_unchecked("nvidia.com/gpu.mps"))
    );
    assert_eq!(
        mps.resources[0].devices,
        DeviceSelection::List(vec![
            DeviceRef::Index(0),
            DeviceRef::Index(1),
            DeviceRef::MigIndex(0, 1),
            DeviceRef::Uuid("GPU-abc".into()),
            DeviceRef::Uuid("MIG-def".into()),
            DeviceRef::Uuid("MIG-GPU-abc/1/0".into()),
        ])
    );
    assert_eq!(c.sharing.strategy(), SharingStrategy::Mps);
    assert!(validate_cross(&c).is_ok());
}

#[test]
fn json_input() {
    let c = ok(r#"{
	"version": "v1",
	"flags": {"migStrategy": "mixed", "plugin": {"deviceListStrategy": "cdi-cri"}},
	"sharing": {"timeSlicing": {"failRequestsGreaterThanOne": true,
	  "resources": [{"name": "nvidia.com/gpu", "replicas": 3, "devices": 2}]}}
}"#);
    assert_eq!(c.flags.mig_strategy, MigStrategy::Mixed);
    assert_eq!(
        c.flags.plugin.device_list_strategy,
        vec![DeviceListStrategy::CdiCri]
    );
    assert!(c.sharing.time_slicing.fail_requests_greater_than_one);
    assert_eq!(
        c.sharing.time_slicing.resources[0].devices,
        DeviceSelection::Count(2)
    );
    assert_eq!(
        err(r#"{"flags": {"migstrategy": "mixed"}}"#),
        format!(
            "config.yaml: unknown key 'flags.migstrategy': did you mean 'migStrategy'? \
                 valid keys under flags: {FLAGS_KEYS}"
        )
    );
}

#[test]
fn devices_forms() {
    let devices = |d: &str| {
        ok(&ts(&format!("{{name: gpu, replicas: 2, devices: {d}}}")))
            .sharing
            .time_slicing
            .resources[0]
            .devices
            .clone()
    };
    assert_eq!(devices("all"), DeviceSelection::All);
    assert_eq!(devices("3"), DeviceSelection::Count(3));
    assert_eq!(
        devices("[0, \"1\", \"0:1\", \"GPU-abc\"]"),
        DeviceSelection::List(vec![
            DeviceRef::Index(0),
            DeviceRef::Index(1),
            DeviceRef::MigIndex(0, 1),
            DeviceRef::Uuid("GPU-abc".into()),
        ])
    );
    let c = ok(&ts("{name: gpu, replicas: 2}"));
    assert_eq!(
        c.sharing.time_slicing.resources[0].devices,
        DeviceSelection::All
    );
}

#[test]
fn device_list_strategy_string_or_list() {
    let dls = |v: &str| {
        ok(&format!("flags: {{plugin: {{deviceListStrategy: {v}}}}}"))
            .flags
            .plugin
            .device_list_strategy
    };
    assert_eq!(dls("volume-mounts"), vec![DeviceListStrategy::VolumeMounts]);
    assert_eq!(
        dls("[envvar, cdi-annotations]"),
        vec![
            DeviceListStrategy::Envvar,
            DeviceListStrategy::CdiAnnotations
        ]
    );
    assert_eq!(dls("[]"), vec![DeviceListStrategy::Envvar]);
}

#[test]
fn cross_checks() {
    let mps = "sharing: {mps: {resources: [{name: gpu, replicas: 2}]}}\n";
    let c = ok(&format!(
        "flags: {{migStrategy: mixed, mpsRoot: /mps}}\n{mps}"
    ));
    assert_eq!(
        validate_cross(&c).unwrap_err().to_string(),
        "unable to validate flags: using --mig-strategy=mixed is not supported with MPS"
    );
    let c = ok(mps);
    assert_eq!(
        validate_cross(&c).unwrap_err().to_string(),
        "unable to validate flags: using MPS requires --mps-root to be specified"
    );
    let c = ok(&format!("flags: {{mpsRoot: /mps}}\n{mps}"));
    assert!(validate_cross(&c).is_ok());
    let both = "flags: {mpsRoot: /mps}\nsharing:\n  timeSlicing: {resources: [{name: other, replicas: 2}, {name: gpu, replicas: 4}]}\n  mps: {resources: [{name: gpu, replicas: 2}]}\n";
    assert_eq!(
        validate_cross(&ok(both)).unwrap_err().to_string(),
        "unable to validate flags: sharing.timeSlicing.resources[1] and sharing.mps.resources[0] both \
             share nvidia.com/gpu: a resource is shared one way; remove one of the entries"
    );
}

/// A file that sets every key of the schema, each to a valid value.
/// A new key needs its line here (the test below says so).
const EVERY_KEY: &str = r#"
version: v1
flags:
  migStrategy: single
  failOnInitError: false
  mpsRoot: /run/nvidia/mps
  nvidiaDriverRoot: /run/nvidia/driver
  nvidiaDevRoot: /
  gdrcopyEnabled: true
  gdsEnabled: true
  mofedEnabled: false
  deviceDiscoveryStrategy: nvml
  useNodeFeatureAPI: true
  plugin:
    passDeviceSpecs: true
    deviceListStrategy: [envvar, cdi-cri]
    deviceIDStrategy: index
    cdiAnnotationPrefix: cdi.example.com/
    nvidiaCTKPath: /usr/local/bin/nvidia-ctk
    containerDriverRoot: /host-driver
    sharedDevicesAllocationPolicy: packed
  gfd:
    oneshot: true
    noTimestamp: false
    sleepInterval: 60s
    outputFile: /tmp/x
    machineTypeFile: /sys/class/dmi/id/product_name
resources:
  gpus:
  - {pattern: "*", name: gpu}
  mig:
  - {pattern: "1g.10gb", name: mig-1g.10gb}
sharing:
  timeSlicing:
    renameByDefault: false
    failRequestsGreaterThanOne: false
    resources:
    - {name: gpu, rename: gpu.shared, devices: all, replicas: 2}
  mps:
    renameByDefault: true
    failRequestsGreaterThanOne: false
    resources:
    - name: mig-1g.10gb
      rename: mig-1g.10gb.mps
      devices: [0]
      replicas: 4
      memoryPerReplica: 2Gi
      activeThreadPercentage: 25
      maxReplicasPerContainer: 2
imex:
  channelIDs: []
  required: false
health:
  recoverAfter: 5m
  xids: {"79": reset}
"#;

/// The one table ([`ROOT`]) is both what the loader accepts (unknown-key
/// check, hints) and which reader reads each key. This holds them
/// together: [`EVERY_KEY`] loads; its keys are exactly the table's
/// leaves (a key the loader accepts is declared, and a declared key is
/// in the file); and a wrong type at each leaf is refused at that leaf's
/// own path (its reader reads it, not a neighbour's), except GPU Feature
/// Discovery's keys, which are accepted and discarded.
#[test]
fn each_declared_key_is_read_at_its_own_path() {
    const DISCARDED: &[&str] = &[
        "flags.gfd.oneshot",
        "flags.gfd.noTimestamp",
        "flags.gfd.sleepInterval",
        "flags.gfd.outputFile",
        "flags.gfd.machineTypeFile",
    ];
    fn declared(fields: &[Field], parent: &str, out: &mut Vec<String>) {
        for f in fields {
            let here = join(parent, f.key);
            match f.kind {
                Kind::Leaf => out.push(here),
                Kind::Map(sub) => declared(sub, &here, out),
                Kind::List(sub) => declared(sub, &format!("{here}[0]"), out),
            }
        }
    }
    /// The document's keys, read down the table; an undeclared key is
    /// listed as such.
    fn in_document(
        doc: &Map<String, Value>,
        fields: &[Field],
        parent: &str,
        out: &mut Vec<String>,
    ) {
        for (key, value) in doc {
            let here = join(parent, key);
            match fields.iter().find(|f| f.key == key).map(|f| f.kind) {
                None => out.push(format!("undeclared {here}")),
                Some(Kind::Leaf) => out.push(here),
                Some(Kind::Map(sub)) => {
                    in_document(value.as_object().expect("a mapping"), sub, &here, out);
                }
                Some(Kind::List(sub)) => {
                    let first = value[0].as_object().expect("a list of mappings");
                    in_document(first, sub, &format!("{here}[0]"), out);
                }
            }
        }
    }
    fn at<'v>(doc: &'v mut Value, path: &str) -> &'v mut Value {
        path.split('.')
            .fold(doc, |v, part| match part.strip_suffix("[0]") {
                Some(key) => &mut v[key][0],
                None => &mut v[part],
            })
    }
    ok(EVERY_KEY);
    let document: Value = serde_saphyr::from_str(EVERY_KEY).expect("YAML");
    let mut want = Vec::new();
    declared(ROOT, "", &mut want);
    let mut have = Vec::new();
    in_document(
        document.as_object().expect("a mapping"),
        ROOT,
        "",
        &mut have,
    );
    want.sort();
    have.sort();
    assert_eq!(have, want, "EVERY_KEY's keys and the declared keys differ");
    for path in want {
        let mut wrong = document.clone();
        *at(&mut wrong, &path) = serde_json::json!({"wrongType": {}});
        let result = parse(&wrong.to_string(), SRC);
        if DISCARDED.contains(&path.as_str()) {
            assert!(result.is_ok(), "{path}: {result:?}");
            continue;
        }
        let error = match result {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{path} is declared but a wrong type passed"),
        };
        let rest = error
            .strip_prefix(&format!("{SRC}: {path}"))
            .unwrap_or_else(|| panic!("{path}: refused elsewhere: {error}"));
        assert!(
            rest.starts_with([':', '.', '[']),
            "{path}: refused elsewhere: {error}"
        );
    }
}

#[test]
fn generic_paths_drop_indices() {
    assert_eq!(generic_path("a.b[12].c[3]"), "a.b[].c[]");
}
