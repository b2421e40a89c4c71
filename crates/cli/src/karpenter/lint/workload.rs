//! Workload rules: what pods request against what the pools advertise.

use super::*;

/// The pod spec of a workload and the path prefix to it.
pub(super) fn pod_spec(v: &Value) -> Option<(String, &Value)> {
    match v["kind"].as_str()? {
        "Pod" => Some(("spec".into(), &v["spec"])),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => {
            Some(("spec.template.spec".into(), &v["spec"]["template"]["spec"]))
        }
        "CronJob" => Some((
            "spec.jobTemplate.spec.template.spec".into(),
            &v["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        )),
        _ => None,
    }
}

pub(super) fn lint_workload(
    doc: &Document,
    prefix: &str,
    spec: &Value,
    pools: &[Pool<'_>],
    configs: &BTreeMap<String, Config>,
    sink: &mut Sink<'_>,
) {
    let selector = &spec["nodeSelector"];
    if let Some(value) = selector[MIG_CONFIG_LABEL].as_str() {
        sink.add(
            doc,
            format!("{prefix}.nodeSelector{}", key_segment(MIG_CONFIG_LABEL)),
            Severity::Warning,
            "selects-mig-config",
            format!(
                "selects the desired MIG config ({MIG_CONFIG_LABEL}={value}), not slices that exist (nvidia.com/mig.config.state may be \
                 pending or failed), and couples the pod to a config name. The resource request already places the pod; to pick a pool \
                 select karpenter.sh/nodepool"
            ),
        );
    }
    // Where the pod can go, and what is advertised there.
    let chosen_pool = selector["karpenter.sh/nodepool"].as_str();
    let mut advertised: BTreeMap<String, (u64, u64, bool)> = BTreeMap::new();
    let mut sources = Vec::new();
    let candidates: Vec<&Pool<'_>> = pools
        .iter()
        .filter(|p| chosen_pool.is_none_or(|c| c == p.name))
        .collect();
    if !candidates.is_empty() {
        for p in &candidates {
            for (k, v) in p.advertised() {
                let e = advertised.entry(k).or_insert((0, u64::MAX, false));
                e.0 = e.0.max(v.0);
                e.2 |= v.2;
            }
            sources.push(format!("NodePool {}", p.name));
        }
    } else if !configs.is_empty() && pools.is_empty() {
        for (name, config) in configs {
            for instance in catalog::instances() {
                let Some(model) = instance.gpu_model() else {
                    continue;
                };
                for layout in catalog::layout_names(model) {
                    let l = (layout != "all-disabled").then_some(layout.as_str());
                    if let Ok(plan) = overlays::plan_instance(instance.name, l, config) {
                        for r in &plan.resources {
                            let e = advertised.entry(r.name.to_string()).or_insert((
                                0,
                                u64::MAX,
                                false,
                            ));
                            e.2 |= r.sharing.is_some_and(|s| s.fail_requests_greater_than_one);
                        }
                    }
                }
            }
            sources.push(format!("config {name}"));
        }
    } else {
        return;
    }
    let containers = ["initContainers", "containers"];
    for list in containers {
        let Some(cs) = spec[list].as_array() else {
            continue;
        };
        for (ci, c) in cs.iter().enumerate() {
            let mut seen = BTreeSet::new();
            for part in ["limits", "requests"] {
                let Some(map) = c["resources"][part].as_object() else {
                    continue;
                };
                for (key, value) in map {
                    if !gpu_slicer_core::config::is_nvidia_resource(key)
                        || !seen.insert(key.clone())
                    {
                        continue;
                    }
                    let path =
                        format!("{prefix}.{list}[{ci}].resources.{part}{}", key_segment(key));
                    match advertised.get(key) {
                        None => {
                            let other = if let Some(base) = key.strip_suffix(".shared") {
                                advertised.contains_key(base).then(|| format!(
                                    "; {base} is advertised instead (renameByDefault is off): request {base}"))
                            } else {
                                let shared = format!("{key}.shared");
                                advertised.contains_key(&shared).then(|| format!(
                                    "; the config advertises {shared} (renameByDefault: true, Bottlerocket's default): request {shared}, \
                                     or turn renameByDefault off"))
                            };
                            let names: Vec<&str> = advertised.keys().map(String::as_str).collect();
                            sink.add(doc, path, Severity::Error, "unadvertised-request", format!(
                                "requests {key}, which the nodes of {} never advertise (they advertise {}){}. The pod stays Pending (Karpenter: \
                                 \"no instance type has enough resources\"; kube-scheduler: \"Insufficient {key}\")",
                                sources.join(", "),
                                if names.is_empty() { "nothing".to_string() } else { names.join(", ") },
                                other.unwrap_or_default()));
                        }
                        Some((_, _, fail_gt_one)) => {
                            if *fail_gt_one && quantity(value).is_some_and(|n| n > 1) {
                                sink.add(doc, path, Severity::Error, "request-greater-than-one", format!(
                                    "requests {} x {key}, but the config sets failRequestsGreaterThanOne: kubelet rejects the pod with \
                                     UnexpectedAdmissionError (\"request for '{key}: {}' too large: maximum request size for shared resources \
                                     is 1\"), and N replicas would not buy N times the compute anyway. Request 1",
                                    quantity(value).unwrap_or_default(), quantity(value).unwrap_or_default()));
                            }
                        }
                    }
                }
            }
        }
    }
}
