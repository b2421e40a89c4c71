//! The deployment files under `deploy/`: structural checks of the Karpenter
//! custom resources (their CRDs are not in the core schemas), the hardening
//! of every DaemonSet, the configs in every ConfigMap (loaded and planned by
//! gpu-slicer itself), and the Helm chart's values. Schema validation against
//! the Kubernetes API is a CI step (`.ci/validate-manifests`): it installs a
//! validator, which a test must not do.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use gpu_slicer_core::gpu::{catalog, simulated};
use serde_json::Value;

/// Instance families whose GPUs have MIG (A100, H100, H200, B200).
const MIG_FAMILIES: [&str; 6] = ["p4d", "p4de", "p5", "p5e", "p5en", "p6-b200"];

fn root() -> PathBuf {
    crate::repo_root()
}

fn yaml_files(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if recursive {
                yaml_files(&path, true, out);
            }
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

/// Every static manifest: deploy/*.yaml, deploy/static/**, deploy/karpenter/**.
fn manifest_files() -> Vec<PathBuf> {
    let deploy = root().join("deploy");
    let mut files = Vec::new();
    yaml_files(&deploy, false, &mut files);
    yaml_files(&deploy.join("static"), true, &mut files);
    yaml_files(&deploy.join("karpenter"), true, &mut files);
    assert!(files.len() >= 10, "too few manifests found: {files:?}");
    files
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// (file, document) for every object of every manifest.
fn objects() -> Vec<(PathBuf, Value)> {
    manifest_files()
        .into_iter()
        .flat_map(|f| documents(&f).into_iter().map(move |d| (f.clone(), d)))
        .collect()
}

fn of_kind(kind: &str) -> Vec<(PathBuf, Value)> {
    objects()
        .into_iter()
        .filter(|(_, d)| d["kind"] == kind)
        .collect()
}

fn mounts_pod_resources(container: &Value) -> bool {
    container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|m| m["mountPath"] == "/var/lib/kubelet/pod-resources")
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or("?")
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// DaemonSets: hardening

#[test]
fn every_daemonset_is_hardened() {
    let daemonsets = of_kind("DaemonSet");
    assert!(daemonsets.len() >= 2);
    for (file, ds) in &daemonsets {
        let at = format!("{} ({})", file.display(), name(ds));
        let pod = &ds["spec"]["template"]["spec"];
        assert_eq!(ds["metadata"]["namespace"], "kube-system", "{at}");
        assert_eq!(pod["priorityClassName"], "system-node-critical", "{at}");
        assert_ne!(pod["hostNetwork"], true, "{at}");
        assert_ne!(pod["hostPID"], true, "{at}");
        let tolerated = pod["tolerations"].as_array().unwrap().iter().any(|t| {
            t["key"] == "nvidia.com/gpu" && t["operator"] == "Exists" && t["effect"] == "NoSchedule"
        });
        assert!(
            tolerated,
            "{at}: no toleration nvidia.com/gpu Exists NoSchedule"
        );

        let containers: Vec<&Value> = ["initContainers", "containers"]
            .iter()
            .flat_map(|k| pod[*k].as_array().into_iter().flatten())
            .collect();
        for c in &containers {
            let cat = format!("{at} container {}", c["name"]);
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{cat}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{cat}");
            assert_ne!(sc["privileged"], true, "{cat}");
            assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"], "{cat}");
            assert!(
                sc["capabilities"]["add"].is_null(),
                "{cat}: adds capabilities"
            );
            let res = &c["resources"];
            assert!(res["requests"]["cpu"].is_string(), "{cat}: no cpu request");
            assert!(res["requests"]["memory"].is_string(), "{cat}");
            assert!(
                res["limits"]["memory"].is_string(),
                "{cat}: no memory limit"
            );
        }

        // The plugin container: `run` with one config file, or the
        // directory of named configs the node label picks from (then it
        // reads its Node: NODE_NAME and a token); the HTTP endpoint on the
        // pod's IP, probed.
        let plugin = containers
            .iter()
            .find(|c| c["name"] == "gpu-slicer")
            .unwrap_or_else(|| panic!("{at}: no gpu-slicer container"));
        assert_eq!(containers.len(), 1, "{at}: gpu-slicer needs no sidecar");
        let args = strs(&plugin["args"]);
        let env: BTreeMap<&str, &Value> = plugin["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap(), e))
            .collect();
        let follows_mig_manager =
            env.get("FOLLOW_MIG_MANAGER").map(|e| &e["value"]) == Some(&Value::from("true"));
        let startup_taint = env.get("STARTUP_TAINT").and_then(|e| e["value"].as_str());
        if follows_mig_manager {
            // MIG Manager's pause works through the operator's deploy label
            // (a nodeSelector on `true`, or every affinity term excluding
            // the paused value), and the state is read from the Node.
            let selected = pod["nodeSelector"]["nvidia.com/gpu.deploy.device-plugin"] == "true";
            let terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                ["nodeSelectorTerms"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let excluded = !terms.is_empty()
                && terms.iter().all(|term| {
                    term["matchExpressions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|e| {
                            e["key"] == "nvidia.com/gpu.deploy.device-plugin"
                                && e["operator"] == "NotIn"
                                && strs(&e["values"]).contains(&"paused-for-mig-change")
                        })
                });
            assert!(
                selected || excluded,
                "{at}: follows MIG Manager but stays on a node it paused"
            );
            assert_eq!(pod["automountServiceAccountToken"], true, "{at}");
            assert_eq!(
                env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName",
                "{at}"
            );
        }
        match args[..3] {
            ["run", "--config-file", "/config/config.yaml"] if !follows_mig_manager => {
                assert_eq!(pod["automountServiceAccountToken"], false, "{at}");
                assert!(!env.contains_key("NODE_NAME"), "{at}");
            }
            ["run", "--config-file", "/config/config.yaml"] => {}
            ["run", "--config-dir", "/available-configs"] => {
                assert_eq!(pod["automountServiceAccountToken"], true, "{at}");
                assert_eq!(
                    env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName",
                    "{at}"
                );
                assert_eq!(env["FALLBACK_STRATEGIES"]["value"], "named,single", "{at}");
                assert!(pod["shareProcessNamespace"].is_null(), "{at}");
            }
            _ => panic!("{at}: unexpected args {args:?}"),
        }
        if pod["automountServiceAccountToken"] == true {
            let account = pod["serviceAccountName"].as_str().unwrap_or_default();
            let same_file = |kind: &str| {
                of_kind(kind)
                    .into_iter()
                    .filter(|(f, _)| f == file)
                    .map(|(_, doc)| doc)
                    .collect::<Vec<_>>()
            };
            assert!(
                same_file("ServiceAccount")
                    .iter()
                    .any(|sa| name(sa) == account),
                "{at}: no ServiceAccount '{account}' beside it"
            );
            let bound_roles: Vec<String> = same_file("ClusterRoleBinding")
                .iter()
                .filter(|b| {
                    b["subjects"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|s| s["name"] == account)
                })
                .map(|b| {
                    b["roleRef"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                })
                .collect();
            // Least RBAC, exactly: read the Node; `patch` it only to remove
            // the start-up taint or publish the MIG state (merge patches);
            // list and watch pods only to publish the MIG state; nothing else.
            let mut granted: Vec<(Vec<&str>, Vec<&str>, Vec<&str>)> = Vec::new();
            let roles = same_file("ClusterRole");
            for role in roles
                .iter()
                .filter(|r| bound_roles.iter().any(|b| b == name(r)))
            {
                for rule in role["rules"].as_array().into_iter().flatten() {
                    granted.push((
                        strs(&rule["apiGroups"]),
                        strs(&rule["resources"]),
                        strs(&rule["verbs"]),
                    ));
                }
            }
            let flag = |key: &str| env.get(key).and_then(|e| e["value"].as_str()) == Some("true");
            let publishes = (flag("FOLLOW_MIG_MANAGER") || flag("APPLY_MIG_LAYOUTS"))
                && env
                    .get("PUBLISH_MIG_STATE")
                    .and_then(|e| e["value"].as_str())
                    != Some("false");
            let mut wanted = vec![(vec![""], vec!["nodes"], vec!["get", "list", "watch"])];
            if startup_taint.is_some() || publishes {
                wanted.push((vec![""], vec!["nodes"], vec!["patch"]));
            }
            if publishes {
                wanted.push((vec![""], vec!["pods"], vec!["list", "watch"]));
                assert!(
                    mounts_pod_resources(plugin),
                    "{at}: publishes the MIG state without the kubelet's PodResources"
                );
            }
            assert_eq!(
                granted, wanted,
                "{at}: '{account}' is not granted least RBAC"
            );
        } else {
            assert!(
                startup_taint.is_none(),
                "{at}: a start-up taint without a token"
            );
        }
        if let Some(taint) = startup_taint {
            assert!(
                pod["tolerations"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t["key"] == taint && t["operator"] == "Exists"),
                "{at}: does not tolerate its start-up taint {taint}"
            );
            assert_eq!(
                env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName",
                "{at}"
            );
        }
        assert_eq!(args[3..], ["--metrics-address", "0.0.0.0:9401"], "{at}");
        assert_eq!(
            plugin["livenessProbe"]["httpGet"]["path"], "/healthz",
            "{at}"
        );
        assert_eq!(
            plugin["readinessProbe"]["httpGet"]["path"], "/readyz",
            "{at}"
        );
        assert_eq!(plugin["ports"][0]["containerPort"], 9401, "{at}");
        let mount = plugin["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == "/var/lib/kubelet/device-plugins")
            .unwrap_or_else(|| panic!("{at}: device-plugins directory not mounted"));
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        assert_eq!(
            volume["hostPath"]["path"],
            "/var/lib/kubelet/device-plugins"
        );
        assert_eq!(volume["hostPath"]["type"], "Directory", "{at}");
    }
}

// ---------------------------------------------------------------------------
// ConfigMaps: every config loads and advertises what its comment says

/// Every config text in the static ConfigMaps, by `file:key`.
fn configs() -> BTreeMap<String, gpu_slicer_core::config::Config> {
    let mut out = BTreeMap::new();
    for (file, cm) in of_kind("ConfigMap") {
        for (key, text) in cm["data"].as_object().unwrap() {
            let source = format!("{}:{key}", file.file_name().unwrap().to_string_lossy());
            let config = gpu_slicer_core::config::parse(text.as_str().unwrap(), &source)
                .unwrap_or_else(|e| panic!("{source}: {e}"));
            out.insert(source, config);
        }
    }
    out
}

fn counts(
    instance: &str,
    layout: &str,
    config: &gpu_slicer_core::config::Config,
) -> Vec<(String, usize)> {
    let inventory = simulated::from_instance(instance, Some(layout)).unwrap();
    let plan = gpu_slicer_core::plan::plan(&inventory, config);
    assert_eq!(plan.errors().count(), 0, "{instance} {layout}");
    plan.counts()
}

fn pairs(list: &[(&str, usize)]) -> Vec<(String, usize)> {
    list.iter().map(|(n, c)| (n.to_string(), *c)).collect()
}

#[test]
fn every_config_loads_and_plans_as_documented() {
    let configs = configs();
    assert!(configs.len() >= 10, "{:?}", configs.keys());
    let get = |k: &str| configs.get(k).unwrap_or_else(|| panic!("no config {k}"));

    let balanced_p4d = pairs(&[
        ("nvidia.com/mig-1g.5gb", 16),
        ("nvidia.com/mig-2g.10gb", 8),
        ("nvidia.com/mig-3g.20gb", 8),
    ]);
    for k in [
        "mig-mixed.yaml:config.yaml",
        "gpu-slicer-config-manager.yaml:mig-mixed",
    ] {
        assert_eq!(
            counts("p4d.24xlarge", "all-balanced", get(k)),
            balanced_p4d,
            "{k}"
        );
    }
    for k in [
        "mig-single.yaml:config.yaml",
        "gpu-slicer-config-manager.yaml:mig-single",
    ] {
        assert_eq!(
            counts("p4d.24xlarge", "all-1g.5gb", get(k)),
            pairs(&[("nvidia.com/gpu", 56)]),
            "{k}"
        );
    }
    for k in [
        "time-slicing.yaml:config.yaml",
        "gpu-slicer-config-manager.yaml:time-slicing-4",
    ] {
        assert_eq!(
            counts("g5.48xlarge", "all-disabled", get(k)),
            pairs(&[("nvidia.com/gpu", 32)]),
            "{k}"
        );
    }
    for k in [
        "time-slicing-shared.yaml:config.yaml",
        "gpu-slicer-config-manager.yaml:time-slicing-4-shared",
    ] {
        assert_eq!(
            counts("g5.48xlarge", "all-disabled", get(k)),
            pairs(&[("nvidia.com/gpu.shared", 32)]),
            "{k}"
        );
    }
    for k in [
        "mig-mixed-time-slicing.yaml:config.yaml",
        "gpu-slicer-config-manager.yaml:mig-mixed-1g.10gb-x2",
    ] {
        assert_eq!(
            counts("p5.48xlarge", "all-1g.10gb", get(k)),
            pairs(&[("nvidia.com/mig-1g.10gb", 112)]),
            "{k}"
        );
    }
    // The default of the config-manager variant is harmless without MIG.
    assert_eq!(
        counts(
            "g5.48xlarge",
            "all-disabled",
            get("gpu-slicer-config-manager.yaml:default")
        ),
        pairs(&[("nvidia.com/gpu", 8)])
    );
}

// ---------------------------------------------------------------------------
// Karpenter custom resources (not in the core schemas)

fn nodepool_families(pool: &Value) -> Vec<String> {
    pool["spec"]["template"]["spec"]["requirements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["key"] == "karpenter.k8s.aws/instance-family")
        .inspect(|r| assert_eq!(r["operator"], "In", "{}", name(pool)))
        .flat_map(|r| strs(&r["values"]).into_iter().map(str::to_string))
        .collect()
}

/// Resource names (never valid as requirement keys, which are labels).
fn is_resource_name(key: &str) -> bool {
    key == "nvidia.com/gpu"
        || key.starts_with("nvidia.com/gpu.shared")
        || key.starts_with("nvidia.com/mig-")
        || matches!(
            key,
            "amd.com/gpu" | "aws.amazon.com/neuron" | "vpc.amazonaws.com/efa" | "cpu" | "memory"
        )
}

#[test]
fn karpenter_examples_are_correct() {
    let classes: BTreeMap<String, Value> = of_kind("EC2NodeClass")
        .into_iter()
        .map(|(_, d)| (name(&d).to_string(), d))
        .collect();
    assert_eq!(classes.len(), 2);
    let mut aliases = BTreeSet::new();
    for (n, class) in &classes {
        assert_eq!(class["apiVersion"], "karpenter.k8s.aws/v1", "{n}");
        let spec = &class["spec"];
        assert!(
            spec["role"].is_string() || spec["instanceProfile"].is_string(),
            "{n}"
        );
        for k in [
            "subnetSelectorTerms",
            "securityGroupSelectorTerms",
            "amiSelectorTerms",
        ] {
            assert!(!spec[k].as_array().unwrap().is_empty(), "{n}: {k}");
        }
        assert_ne!(
            spec["amiFamily"], "Custom",
            "{n}: Custom needs its own bootstrap"
        );
        let alias = spec["amiSelectorTerms"][0]["alias"].as_str().unwrap();
        let family = alias.split('@').next().unwrap();
        assert!(matches!(family, "al2023" | "bottlerocket"), "{n}: {alias}");
        aliases.insert(family.to_string());
        if family == "bottlerocket" {
            // Bottlerocket's own NVIDIA plugin must be off (>= 1.63.0).
            let user_data = spec["userData"].as_str().unwrap_or_default();
            let table = user_data
                .split("[settings.kubelet-device-plugins.nvidia]")
                .nth(1)
                .unwrap_or_else(|| panic!("{n}: built-in plugin not disabled"));
            let table = table.split("\n[").next().unwrap();
            assert!(
                table.lines().any(|l| l.replace(' ', "") == "enabled=false"),
                "{n}"
            );
        }
    }
    assert_eq!(aliases.len(), 2, "one AL2023 and one Bottlerocket class");

    let config_names: BTreeSet<String> = of_kind("ConfigMap")
        .into_iter()
        .filter(|(f, _)| f.ends_with("gpu-slicer-config-manager.yaml"))
        .flat_map(|(_, cm)| {
            cm["data"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect();

    let pools = of_kind("NodePool");
    assert_eq!(pools.len(), 2);
    let mut pool_layouts = BTreeMap::new();
    // Per pool: its layout, the config its label names, the instance types
    // it can launch (catalog presets of its families).
    let mut pool_nodes: BTreeMap<String, (String, String, BTreeSet<String>)> = BTreeMap::new();
    for (file, pool) in &pools {
        let n = name(pool);
        assert_eq!(pool["apiVersion"], "karpenter.sh/v1", "{n}");
        let spec = &pool["spec"]["template"]["spec"];
        let class_ref = &spec["nodeClassRef"];
        assert_eq!(class_ref["group"], "karpenter.k8s.aws", "{n}");
        assert_eq!(class_ref["kind"], "EC2NodeClass", "{n}");
        assert!(
            classes.contains_key(class_ref["name"].as_str().unwrap()),
            "{n}"
        );

        for r in spec["requirements"].as_array().unwrap() {
            let key = r["key"].as_str().unwrap();
            assert!(
                !is_resource_name(key),
                "{n}: requirement key {key} is a resource"
            );
            assert!(r["operator"].is_string(), "{n}");
            if key == "karpenter.k8s.aws/instance-size" {
                for v in strs(&r["values"]) {
                    assert!(!v.contains('.'), "{n}: instance-size {v} has a dot");
                }
            }
        }
        let tainted = spec["taints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["key"] == "nvidia.com/gpu" && t["effect"] == "NoSchedule");
        assert!(tainted, "{n}: GPU pool not tainted nvidia.com/gpu");
        if let Some(limits) = pool["spec"]["limits"].as_object() {
            for key in limits.keys() {
                assert!(
                    !key.starts_with("nvidia.com/mig-") && !key.ends_with(".shared"),
                    "{n}: limit on slice resource {key}"
                );
            }
        }

        let labels = &pool["spec"]["template"]["metadata"]["labels"];
        if let Some(config) = labels["nvidia.com/device-plugin.config"].as_str() {
            assert!(config_names.contains(config), "{n}: no config {config}");
        }
        let families = nodepool_families(pool);
        assert!(!families.is_empty(), "{n}: families not restricted");
        // The catalog's instance presets agree with the MIG family list.
        for instance in catalog::instances() {
            let family = instance.name.split('.').next().unwrap();
            if families.iter().any(|f| f == family) {
                let model = instance.gpu_model().unwrap();
                let mig_pool = labels["nvidia.com/mig.config"].is_string();
                assert_eq!(
                    model.mig_capable(),
                    mig_pool,
                    "{n} ({}): {} has {}",
                    file.display(),
                    instance.name,
                    model.product_name
                );
            }
        }
        if let Some(layout) = labels["nvidia.com/mig.config"].as_str() {
            for f in &families {
                assert!(MIG_FAMILIES.contains(&f.as_str()), "{n}: {f} has no MIG");
            }
            // A new node's GPUs are whole until MIG Manager partitions them:
            // a start-up taint keeps pods off until the DaemonSet the pool's
            // nodes run (the config-manager one, whose configs the pool's
            // label names) has followed MIG Manager and removes it.
            let startup: Vec<&str> = spec["startupTaints"]
                .as_array()
                .unwrap_or_else(|| panic!("{n}: MIG pool without startupTaints"))
                .iter()
                .map(|t| t["key"].as_str().unwrap())
                .collect();
            assert_eq!(startup, ["gpu-slicer.io/slicing-pending"], "{n}");
            let (_, ds) = of_kind("DaemonSet")
                .into_iter()
                .find(|(f, _)| f.ends_with("static/gpu-slicer-config-manager.yaml"))
                .unwrap();
            let env: BTreeMap<String, Value> =
                ds["spec"]["template"]["spec"]["containers"][0]["env"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].clone()))
                    .collect();
            assert_eq!(env["FOLLOW_MIG_MANAGER"], "true", "{n}");
            assert_eq!(env["STARTUP_TAINT"], startup[0], "{n}");
            pool_layouts.insert(n.to_string(), layout.to_string());
        } else {
            for f in &families {
                assert!(
                    !MIG_FAMILIES.contains(&f.as_str()),
                    "{n}: time-slicing on {f}"
                );
            }
        }
        let layout = labels["nvidia.com/mig.config"]
            .as_str()
            .unwrap_or("all-disabled");
        let config = labels["nvidia.com/device-plugin.config"]
            .as_str()
            .unwrap_or_else(|| panic!("{n}: no nvidia.com/device-plugin.config label"));
        let types = catalog::instances()
            .iter()
            .filter(|i| {
                families
                    .iter()
                    .any(|f| f == i.name.split('.').next().unwrap())
            })
            .map(|i| i.name.to_string())
            .collect();
        pool_nodes.insert(
            n.to_string(),
            (layout.to_string(), config.to_string(), types),
        );
    }
    assert_eq!(pool_layouts.len(), 1, "one MIG pool");

    // Overlays: one per instance type of every pool (without them Karpenter
    // counts physical GPUs: `no-overlay`), scoped by pool, counts equal to
    // what gpu-slicer plans with the config the pool's label names.
    let configs = configs();
    let overlays = of_kind("NodeOverlay");
    let mut covered: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, overlay) in &overlays {
        let n = name(overlay);
        assert_eq!(overlay["apiVersion"], "karpenter.sh/v1alpha1", "{n}");
        let reqs = overlay["spec"]["requirements"].as_array().unwrap();
        let values = |key: &str| -> Vec<&str> {
            reqs.iter()
                .filter(|r| r["key"] == key && r["operator"] == "In")
                .flat_map(|r| strs(&r["values"]))
                .collect()
        };
        let pools = values("karpenter.sh/nodepool");
        assert_eq!(pools.len(), 1, "{n}: not scoped to one NodePool");
        let (layout, config_name, _) = &pool_nodes[pools[0]];
        let config = &configs[&format!("gpu-slicer-config-manager.yaml:{config_name}")];
        let types = values("node.kubernetes.io/instance-type");
        assert_eq!(types.len(), 1, "{n}");
        assert!(
            covered
                .entry(pools[0].to_string())
                .or_default()
                .insert(types[0].to_string()),
            "{n}: a second overlay for {}",
            types[0]
        );
        let planned: BTreeMap<String, String> = counts(types[0], layout, config)
            .into_iter()
            .map(|(r, c)| (r, c.to_string()))
            .collect();
        let mut declared: BTreeMap<String, String> = overlay["spec"]["capacity"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        // An explicit 0 for a resource the plan does not have is the
        // overwrite of Karpenter's own nvidia.com/gpu count.
        declared.retain(|k, v| planned.contains_key(k) || v != "0");
        assert_eq!(declared, planned, "{n}");
    }
    // The MIG pool cannot launch for a slice without them: every instance
    // type it can launch has its overlay. The time-slicing pool has none
    // shipped (it launches without, counting physical GPUs; lint says
    // `no-overlay`), or all of them.
    for (pool, (_, _, types)) in &pool_nodes {
        assert!(types.len() >= 7, "{pool}: too few instance types {types:?}");
        if pool_layouts.contains_key(pool) || covered.contains_key(pool) {
            assert_eq!(covered.get(pool), Some(types), "{pool}: overlays");
        }
    }
    assert!(covered.contains_key("gpu-mig-balanced"), "{covered:?}");
}

/// The project's own Karpenter files, with the config manager's ConfigMap
/// their labels select from, lint with one finding only: `no-overlay` for
/// the time-slicing pool, whose overlays are not shipped (it launches
/// without them, counting whole GPUs). The MIG pool's start-up taint,
/// removed by the DaemonSet its nodes run, keeps `mig-config-label` away.
#[test]
fn the_projects_karpenter_files_lint_with_one_known_warning() {
    let mut files = Vec::new();
    yaml_files(&root().join("deploy/karpenter"), false, &mut files);
    files.push(root().join("deploy/static/gpu-slicer-config-manager.yaml"));
    let findings = gpu_slicer::karpenter::lint::lint_files(&files).unwrap();
    let found: Vec<(&str, &str)> = findings
        .iter()
        .map(|f| (f.rule, f.object.as_str()))
        .collect();
    assert_eq!(
        found,
        [("no-overlay", "NodePool/gpu-time-slicing")],
        "{}",
        gpu_slicer::karpenter::lint::render(&findings)
    );
}

// ---------------------------------------------------------------------------
// Helm chart: templates use only defined values; defaults match the static
// DaemonSet so the two read side by side.

fn value_at<'a>(values: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(values, |v, key| v.as_object()?.get(key))
}

#[test]
fn helm_chart_uses_only_defined_values_and_matches_static_manifest() {
    let chart = root().join("deploy/helm/gpu-slicer");
    let chart_yaml: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart.join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(chart_yaml["apiVersion"], "v2");
    assert_eq!(chart_yaml["name"], "gpu-slicer");
    let values: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart.join("values.yaml")).unwrap())
            .unwrap();

    // NVIDIA's chart names that this chart shares.
    for key in [
        "migStrategy",
        "failOnInitError",
        "deviceListStrategy",
        "deviceIDStrategy",
        "nvidiaDriverRoot",
        "compatWithCPUManager",
        "config.map",
        "config.name",
        "config.default",
        "config.fallbackStrategies",
        "gdrcopyEnabled",
        "gdsEnabled",
        "mofedEnabled",
        "deviceDiscoveryStrategy",
        "nvidiaDevRoot",
        "runtimeClassName",
        "allowDefaultNamespace",
        "selectorLabelsOverride",
        "cdi.nvidiaHookPath",
        "cdi.featureFlags",
        "mps.root",
        "mps.enableHostPID",
        "devicePlugin.enabled",
        "featureFile.enabled",
        "devicePlugin.enableHostNetwork",
        "nodeSelector",
        "affinity",
        "tolerations",
        "priorityClassName",
        "securityContext",
        "resources",
        "image.repository",
        "image.tag",
        "image.pullPolicy",
        "imagePullSecrets",
        "updateStrategy",
    ] {
        assert!(value_at(&values, key).is_some(), "values.yaml lacks {key}");
    }

    let mut templates = Vec::new();
    for entry in std::fs::read_dir(chart.join("templates")).unwrap() {
        templates.push(entry.unwrap().path());
    }
    templates.sort();
    let names: BTreeSet<_> = templates
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for required in [
        "daemonset.yaml",
        "configmap.yaml",
        "_helpers.tpl",
        "NOTES.txt",
    ] {
        assert!(names.contains(required), "templates/{required} missing");
    }
    let mut used = 0;
    for path in &templates {
        let text = std::fs::read_to_string(path).unwrap();
        for (i, _) in text.match_indices(".Values.") {
            let rest = &text[i + ".Values.".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                .unwrap_or(rest.len());
            let key = rest[..end].trim_end_matches('.');
            // NVIDIA's values read only to refuse them: `namespace` (as
            // NVIDIA's chart does), its GFD and NFD parts.
            assert!(
                value_at(&values, key).is_some() || ["namespace", "gfd", "nfd"].contains(&key),
                "{}: .Values.{key} is not in values.yaml",
                path.display()
            );
            used += 1;
        }
        // Braces balance: a cheap guard against a broken action.
        assert_eq!(
            text.matches("{{").count(),
            text.matches("}}").count(),
            "{}",
            path.display()
        );
    }
    assert!(used > 20, "templates use too few values ({used})");

    // Defaults equal the static DaemonSet's settings.
    let (_, ds) = of_kind("DaemonSet")
        .into_iter()
        .find(|(f, _)| f.ends_with("static/gpu-slicer.yaml"))
        .unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(values["priorityClassName"], pod["priorityClassName"]);
    assert_eq!(values["tolerations"], pod["tolerations"]);
    assert_eq!(values["affinity"], pod["affinity"]);
    assert_eq!(values["podSecurityContext"], pod["securityContext"]);
    assert_eq!(values["securityContext"], container["securityContext"]);
    assert_eq!(values["resources"], container["resources"]);
    assert_eq!(values["updateStrategy"], ds["spec"]["updateStrategy"]);
    let image = format!(
        "{}:{}",
        values["image"]["repository"].as_str().unwrap(),
        chart_yaml["appVersion"].as_str().unwrap()
    );
    assert_eq!(container["image"], image.as_str());
    assert_eq!(values["metrics"]["enabled"], true, "probes need it");
    assert_eq!(values["metrics"]["port"], 9401);
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(values[probe]["enabled"], true, "{probe}");
        for key in ["periodSeconds", "timeoutSeconds", "failureThreshold"] {
            assert_eq!(values[probe][key], container[probe][key], "{probe}.{key}");
        }
    }
}

#[test]
fn dockerfile_installs_the_daemon_under_both_names() {
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    for needle in [
        "cargo build --release --locked -p gpu-slicer-daemon",
        "/usr/bin/gpu-slicer-daemon",
        "/usr/bin/nvidia-device-plugin",
        "ENTRYPOINT [\"/usr/bin/gpu-slicer-daemon\"]",
        "NVIDIA_VISIBLE_DEVICES=all",
        "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
        "ENTRYPOINT",
    ] {
        assert!(text.contains(needle), "Dockerfile lacks {needle}");
    }
}
