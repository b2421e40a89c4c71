//! NodePool rules: what a pool's nodes advertise, its limits, labels,
//! taints, overlays and config. Each rule is a function of the pool's facts
//! (derived once), registered in [`RULES`].

use super::*;

/// What every NodePool rule reads: the pool, and what is derived from it once.
pub(super) struct PoolFacts<'a> {
    pool: &'a Pool<'a>,
    /// The pool's requirements as written (operators and all).
    raw_reqs: Vec<Value>,
    /// The MIG layout in effect (canonical name); `None`: MIG off.
    layout: Option<&'a str>,
    /// Per resource the pool's instance types advertise: the most and the
    /// fewest per node, and whether it is shared.
    advertised: BTreeMap<String, (u64, u64, bool)>,
    /// The NodeOverlays that apply to this pool.
    overlays: Vec<&'a Document>,
}

impl<'a> PoolFacts<'a> {
    fn new(pool: &'a Pool<'a>, overlays: &[&'a Document]) -> Self {
        PoolFacts {
            pool,
            raw_reqs: pool.doc.value["spec"]["template"]["spec"]["requirements"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            layout: pool
                .layout
                .as_deref()
                .map(catalog::canonical_layout_name)
                .filter(|l| *l != "all-disabled"),
            advertised: pool.advertised(),
            overlays: overlays
                .iter()
                .copied()
                .filter(|o| overlay_pools(o).is_none_or(|p| p.iter().any(|n| n == &pool.name)))
                .collect(),
        }
    }
}

/// A NodePool rule: adds its findings about one pool to the sink.
type Rule = fn(&PoolFacts<'_>, &mut Sink<'_>);

/// Every NodePool rule, in the order its findings are added (`lint` sorts
/// the findings by file, document and path afterwards).
const RULES: &[Rule] = &[
    types_without_preset,
    requirement_keys,
    mig_config_none,
    mig_on_non_mig_family,
    layout_profile_missing,
    mig_config_label,
    limits,
    no_overlay,
    overlay_coverage,
    untainted_gpu_pool,
];

pub(super) fn lint_pool<'a>(pool: &'a Pool<'a>, overlays: &[&'a Document], sink: &mut Sink<'_>) {
    let facts = PoolFacts::new(pool, overlays);
    for rule in RULES {
        rule(&facts, sink);
    }
}

fn label_path(key: &str) -> String {
    format!("spec.template.metadata.labels{}", key_segment(key))
}

/// GPU instance types the pool allows that have no preset: nothing can say
/// what they advertise.
fn types_without_preset(f: &PoolFacts<'_>, sink: &mut Sink<'_>) {
    let pool = f.pool;
    let doc = pool.doc;
    let uncatalogued = crate::karpenter::uncatalogued_gpu_types_matching(&pool.requirements);
    if !uncatalogued.is_empty() {
        // Under MIG an unknown type gets no overlay zeroing nvidia.com/gpu: a
        // whole-GPU pod can launch it and the NodeClaim never registers.
        let severity = if pool.layout.is_some() {
            Severity::Error
        } else {
            Severity::Warning
        };
        sink.add(doc, "spec.template.spec.requirements", severity, "nodepool-type-without-preset", format!(
        "allows GPU instance types gpu-slicer has no preset for ({}): it cannot compute what they advertise, so no overlay covers them{}. \
         Exclude them (e.g. {{key: node.kubernetes.io/instance-type, operator: NotIn, values: [...]}}) or list the instance types the pool may use",
        uncatalogued.join(", "),
        if pool.layout.is_some() {
            " and Karpenter keeps their physical nvidia.com/gpu count: a whole-GPU pod can launch one, MIG Manager partitions it, and the NodeClaim never registers"
        } else {
            ""
        }
    ));
    }
}

/// Requirement keys and values: resource names as keys, dotted sizes.
fn requirement_keys(f: &PoolFacts<'_>, sink: &mut Sink<'_>) {
    let doc = f.pool.doc;
    let raw_reqs = &f.raw_reqs;
    for (i, r) in raw_reqs.iter().enumerate() {
        let key = r["key"].as_str().unwrap_or_default();
        if is_resource_name(key) {
            sink.add(
            doc,
            format!("{}.key", requirement_path(i)),
            Severity::Error,
            "resource-as-requirement-key",
            format!(
                "'{key}' is a resource name, not a node label: as a requirement key it becomes a user-defined label \
                 (with Exists Karpenter labels nodes {key}=<random number>) and does not restrict the pool to GPU instances. \
                 Use karpenter.k8s.aws/instance-gpu-manufacturer In [nvidia] or karpenter.k8s.aws/instance-gpu-count Gt 0, \
                 and request the resource in the pod"
            ),
        );
        }
        if key == "karpenter.k8s.aws/instance-size" {
            let dotted: Vec<String> = strings(&r["values"])
                .into_iter()
                .filter(|s| s.contains('.'))
                .collect();
            if !dotted.is_empty() {
                sink.add(
                doc,
                format!("{}.values", requirement_path(i)),
                Severity::Error,
                "instance-size-with-dot",
                format!(
                    "instance-size values are the part after the dot (xlarge, 2xlarge): {} match no instance type, so the pool \
                     launches nothing (NodePool event NoCompatibleInstanceTypes: \"NodePool requirements filtered out all compatible \
                     available instance types\"). List full names under node.kubernetes.io/instance-type instead",
                    dotted.join(", ")
                ),
            );
            }
        }
    }
}

/// MIG intent. `none` is gpu-slicer's command-line alias for MIG off,
/// not a layout MIG Manager knows: on a node label it fails there.
fn mig_config_none(f: &PoolFacts<'_>, sink: &mut Sink<'_>) {
    let pool = f.pool;
    let doc = pool.doc;
    if pool.layout.as_deref().map(str::trim) == Some(catalog::MIG_OFF_ALIAS) {
        sink.add(
        doc,
        label_path(MIG_CONFIG_LABEL),
        Severity::Error,
        "mig-config-none",
        format!(
            "{MIG_CONFIG_LABEL}=none is not a layout of MIG Manager's config (`none` is only gpu-slicer's command-line \
             alias): MIG Manager would set nvidia.com/mig.config.state=failed and leave the GPUs as they are. Write \
             all-disabled for MIG off, or remove the label"
        ),
    );
    }
}

/// A MIG layout on a pool that can launch GPUs without MIG.
fn mig_on_non_mig_family(f: &PoolFacts<'_>, sink: &mut Sink<'_>) {
    let Some(layout) = f.layout else {
        return;
    };
    let pool = f.pool;
    let doc = pool.doc;
    let raw_reqs = &f.raw_reqs;
    let mut named: Vec<(usize, Vec<String>)> = Vec::new();
    for (i, r) in raw_reqs.iter().enumerate() {
        let key = r["key"].as_str().unwrap_or_default();
        if r["operator"].as_str().unwrap_or("In") != "In" {
            continue;
        }
        let fams: Vec<String> = match key {
            "karpenter.k8s.aws/instance-family" => strings(&r["values"]),
            "node.kubernetes.io/instance-type" => strings(&r["values"])
                .iter()
                .map(|t| family(t).to_string())
                .collect(),
            _ => continue,
        };
        let bad: BTreeSet<String> = fams
            .into_iter()
            .filter(|f| {
                NON_MIG_FAMILIES.contains(&f.as_str())
                    || catalog::instances().iter().any(|i| {
                        family(i.name) == f && !i.gpu_model().is_some_and(|m| m.mig_capable())
                    })
            })
            .collect();
        if !bad.is_empty() {
            named.push((i, bad.into_iter().collect()));
        }
    }
    let restricted = raw_reqs.iter().any(|r| {
        matches!(
            r["key"].as_str(),
            Some("karpenter.k8s.aws/instance-family" | "node.kubernetes.io/instance-type")
        )
    });
    for (i, bad) in &named {
        sink.add(
        doc,
        format!("{}.values", requirement_path(*i)),
        Severity::Error,
        "mig-on-non-mig-family",
        format!(
            "MIG layout '{layout}' on a pool that can launch {} ({}): no MIG on those GPUs, MIG Manager does not run there \
             and no nvidia.com/mig-* resource ever appears.{} Restrict MIG pools to {} and put \
             time-slicing on the others in a separate pool",
            bad.join(", "),
            gpus_of(bad),
            fractional_families_note(bad),
            crate::karpenter::MIG_FAMILIES.join(", ")
        ),
    );
    }
    if !restricted {
        let bad: Vec<&str> = pool
            .instances
            .iter()
            .filter(|i| !i.gpu_model().is_some_and(|m| m.mig_capable()))
            .map(|i| family(i.name))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !bad.is_empty() {
            sink.add(
            doc,
            "spec.template.spec.requirements",
            Severity::Error,
            "mig-on-non-mig-family",
            format!(
                "MIG layout '{layout}' but no instance-family or instance-type requirement: the pool can launch {}, whose GPUs \
                 have no MIG. Add karpenter.k8s.aws/instance-family In [{}]",
                bad.join(", "),
                crate::karpenter::MIG_FAMILIES.join(", ")
            ),
        );
        }
    }
}

/// Profiles of the layout that do not exist on a GPU's memory size.
fn layout_profile_missing(f: &PoolFacts<'_>, sink: &mut Sink<'_>) {
    let Some(layout) = f.layout else {
        return;
    };
    let pool = f.pool;
    let doc = pool.doc;
    let mut by_model: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (instance, plan) in &pool.plans {
        if plan.is_none() {
            by_model
                .entry(instance.model)
                .or_default()
                .push(instance.name);
        }
    }
    for (model, names) in by_model {
        let Some(m) = catalog::model(model) else {
            continue;
        };
        let reason = catalog::layout(m, layout)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        sink.add(
        doc,
        label_path(MIG_CONFIG_LABEL),
        Severity::Error,
        "layout-profile-missing",
        format!(
            "MIG layout '{layout}' does not exist on {} ({}): {reason}. Layouts there: {}. Use a layout of that GPU or \
             narrow the pool's instance types",
            names.join(", "),
            m.product_name,
            catalog::layout_names(m).join(", ")
        ),
    );
    }
}

/// A MIG layout set at launch without a startup taint.
fn mig_config_label(f: &PoolFacts<'_>, sink: &mut Sink<'_>) {
    let Some(layout) = f.layout else {
        return;
    };
    let doc = f.pool.doc;
    let v = &doc.value;
    let startup_tainted = v["spec"]["template"]["spec"]["startupTaints"]
        .as_array()
        .is_some_and(|a| !a.is_empty());
    if !startup_tainted {
        sink.add(
        doc,
        label_path(MIG_CONFIG_LABEL),
        Severity::Warning,
        "mig-config-label",
        format!(
            "{MIG_CONFIG_LABEL}={layout} is read only by the GPU Operator's MIG Manager, and only on MIG-capable nodes. Set at launch, \
             every new node reconfigures (and may reboot) before its slices appear, and pods can land first (NVIDIA/gpu-operator#2670); \
             changing the value later drifts and replaces every node. Add a startup taint that gpu-slicer removes once its slices are \
             registered (spec.template.spec.startupTaints, gpu-slicer run --startup-taint KEY)"
        ),
    );
    }
}

/// Limits on slices and GPUs that do not do what they seem to.
fn limits(f: &PoolFacts<'_>, sink: &mut Sink<'_>) {
    let pool = f.pool;
    let doc = pool.doc;
    let v = &doc.value;
    let layout = f.layout;
    let advertised = &f.advertised;
    let pool_overlays = &f.overlays;
    let overlay_declares = |r: &str| {
        pool_overlays
            .iter()
            .any(|o| o.value["spec"]["capacity"].get(r).is_some())
    };
    let describe_advertised = || {
        let names: Vec<&str> = advertised.keys().map(String::as_str).collect();
        if names.is_empty() {
            "nothing".to_string()
        } else {
            names.join(", ")
        }
    };
    if let Some(limits) = v["spec"]["limits"].as_object() {
        for (key, value) in limits {
            let path = format!("spec.limits{}", key_segment(key));
            let limit = quantity(value);
            if is_slice_resource(key) {
                match advertised.get(key) {
                None => sink.add(
                    doc,
                    &path,
                    Severity::Error,
                    "slice-not-produced",
                    format!(
                        "no instance type this pool can launch advertises {key} under {}: they advertise {}. The slice names depend on \
                         the GPU's memory (all-balanced: 1g.5gb/2g.10gb/3g.20gb on A100-40GB p4d, 1g.10gb/2g.20gb/3g.40gb on 80 GB p4de/p5)",
                        pool.describe(),
                        describe_advertised()
                    ),
                ),
                Some((max, min, _)) => {
                    if let Some(l) = limit.filter(|_| overlay_declares(key)) {
                            if l < *min {
                                sink.add(doc, &path, Severity::Error, "slice-limit-below-node", format!(
                                    "limit {l} is below one node's {min} x {key}: every instance type is excluded \
                                     (\"all available instance types exceed limits for nodepool\"); use a multiple of {max}, or limits.nodes"));
                            } else if l % max != 0 && l % min != 0 {
                                sink.add(doc, &path, Severity::Warning, "slice-limit-below-node", format!(
                                    "limit {l} is not a multiple of one node's {max} x {key}: the last node can only launch while usage \
                                     stays at or below the limit; prefer a multiple, or limits.nodes"));
                            }
                    }
                }
            }
                if !overlay_declares(key) {
                    sink.add(
                    doc,
                    &path,
                    Severity::Error,
                    "slice-limit-without-overlay",
                    format!(
                        "a limit on {key} does not stop a launch: without a NodeOverlay declaring {key} Karpenter's capacity for it is 0, \
                         so no instance type is filtered before launch and only registered slices count. Cap the pool with limits.nodes, \
                         or apply the overlay from `gpu-slicer karpenter overlays --nodepool {}` and give the limit in slice units",
                        pool.name
                    ),
                );
                }
            } else if key == gpu_slicer_core::config::GPU_RESOURCE {
                let max_gpus = pool.instances.iter().map(|i| i.gpus).max().unwrap_or(0);
                if layout.is_some() {
                    sink.add(doc, &path, Severity::Warning, "gpu-limit", format!(
                    "under MIG (layout {}) registered nodes report 0 nvidia.com/gpu, and before launch Karpenter counts what the instance \
                     type's capacity says: gpu-slicer's NodeOverlay sets nvidia.com/gpu to 0 under MIG, so with it the limit counts 0 per node \
                     and never stops a launch (without it, Karpenter's own count of physical GPUs is used{}). Cap the pool with limits.nodes",
                    layout.unwrap_or_default(),
                    limit.filter(|l| u64::from(max_gpus) > *l).map(|l| format!(
                        " and excludes every type with more than {l} GPUs ({})",
                        pool.instances.iter().filter(|i| u64::from(i.gpus) > l).map(|i| i.name).collect::<Vec<_>>().join(", ")
                    )).unwrap_or_default()
                ));
                } else if let Some(l) = limit.filter(|l| u64::from(max_gpus) > *l) {
                    sink.add(doc, &path, Severity::Warning, "gpu-limit", format!(
                    "limit {l} excludes every instance type with more {} than that before launch ({}){}",
                    if advertised.get(key).is_some_and(|a| a.2 || a.0 > u64::from(max_gpus)) { "replicas" } else { "GPUs" },
                    pool.instances.iter().filter(|i| u64::from(i.gpus) > l).map(|i| i.name).collect::<Vec<_>>().join(", "),
                    if l <= 1 { "; once one node exists every GPU type is excluded" } else { "" }
                ));
                }
            }
        }
    }
}

/// Whether the pool's nodes advertise slices or shared replicas.
fn sliced(f: &PoolFacts<'_>) -> bool {
    let pool = f.pool;
    f.advertised.iter().any(|(r, (max, _, _))| {
        is_slice_resource(r)
            || (r == gpu_slicer_core::config::GPU_RESOURCE
                && pool.plans.iter().any(|(i, p)| {
                    p.as_ref().is_some_and(|p| {
                        p.resource(r).is_some_and(|res| {
                            res.sharing.is_some() && res.devices.len() as u64 > u64::from(i.gpus)
                        })
                    })
                })
                && *max > 0)
    })
}

/// Slices without a NodeOverlay: Karpenter never launches for them.
fn no_overlay(f: &PoolFacts<'_>, sink: &mut Sink<'_>) {
    let pool = f.pool;
    let doc = pool.doc;
    let v = &doc.value;
    let layout = f.layout;
    let pool_overlays = &f.overlays;
    let sliced = sliced(f);
    let limits_slices = v["spec"]["limits"]
        .as_object()
        .is_some_and(|l| l.keys().any(|k| is_slice_resource(k)));
    if (sliced || layout.is_some() || limits_slices) && pool_overlays.is_empty() {
        sink.add(
        doc,
        "metadata.name",
        Severity::Warning,
        "no-overlay",
        format!(
            "no NodeOverlay for NodePool {0} in these files: Karpenter knows only nvidia.com/gpu (physical GPUs) per instance type, so a \
             pending pod requesting nvidia.com/mig-* or nvidia.com/gpu.shared never causes a launch (\"no instance type has enough \
             resources\"), and time-sliced nvidia.com/gpu is counted as whole GPUs. Generate overlays with `gpu-slicer karpenter overlays \
             --nodepool {0} --nodepool-file FILE` and enable the NodeOverlay feature gate",
            pool.name
        ),
    );
    }
}

/// Instance types the pool can launch that no overlay covers.
fn overlay_coverage(f: &PoolFacts<'_>, sink: &mut Sink<'_>) {
    let pool = f.pool;
    let doc = pool.doc;
    let layout = f.layout;
    let pool_overlays = &f.overlays;
    let sliced = sliced(f);
    if !pool_overlays.is_empty() && (sliced || layout.is_some()) {
        let uncovered: Vec<&str> = pool
            .plans
            .iter()
            .filter(|(_, p)| p.is_some())
            .map(|(i, _)| i.name)
            .filter(|name| {
                !pool_overlays.iter().any(|o| {
                    let own: Vec<Requirement> = o.value["spec"]["requirements"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(Requirement::from_value)
                                .collect::<Vec<_>>()
                        })
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|r: &Requirement| r.key != "karpenter.sh/nodepool")
                        .collect();
                    instances_matching(&own).iter().any(|i| i.name == *name)
                })
            })
            .collect();
        if !uncovered.is_empty() {
            sink.add(
            doc,
            "spec.template.spec.requirements",
            Severity::Warning,
            "overlay-coverage",
            format!(
                "no NodeOverlay covers {} of NodePool {}: Karpenter cannot launch those for slice requests. Generate the missing \
                 overlays with `gpu-slicer karpenter overlays --nodepool-file FILE`, or narrow the pool's instance types",
                uncovered.join(", "),
                pool.name
            ),
        );
        }
    }
}

/// A GPU pool without taints.
fn untainted_gpu_pool(f: &PoolFacts<'_>, sink: &mut Sink<'_>) {
    let pool = f.pool;
    let doc = pool.doc;
    let v = &doc.value;
    let layout = f.layout;
    let tainted = v["spec"]["template"]["spec"]["taints"]
        .as_array()
        .is_some_and(|a| !a.is_empty());
    let gpu_pool = layout.is_some()
        || pool.requirements.iter().any(|r| {
            r.key.starts_with("karpenter.k8s.aws/instance-gpu")
                || (r.key == "karpenter.k8s.aws/instance-family"
                    && r.values.iter().any(|f| {
                        NON_MIG_FAMILIES.contains(&f.as_str())
                            || crate::karpenter::MIG_FAMILIES.contains(&f.as_str())
                    }))
        });
    if gpu_pool && !tainted {
        sink.add(
        doc,
        "spec.template.spec.taints",
        Severity::Warning,
        "gpu-pool-untainted",
        "GPU pool without taints: any pod can be packed onto these expensive nodes, and pods' nvidia.com/gpu tolerations do nothing. \
         Add taints: [{key: nvidia.com/gpu, effect: NoSchedule}]",
    );
    }
}
