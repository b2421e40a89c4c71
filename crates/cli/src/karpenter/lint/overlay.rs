//! NodeOverlay rules: scope, keys Karpenter and the API server accept,
//! capacity against what gpu-slicer advertises, and conflicts between
//! overlays as Karpenter resolves them.

use super::*;

/// The NodePools an overlay is scoped to (`None`: unscoped).
pub(super) fn overlay_pools(doc: &Document) -> Option<Vec<String>> {
    let reqs = doc.value["spec"]["requirements"].as_array()?;
    let pools: Vec<String> = reqs
        .iter()
        .filter(|r| {
            r["key"] == "karpenter.sh/nodepool" && r["operator"].as_str().unwrap_or("In") == "In"
        })
        .flat_map(|r| strings(&r["values"]))
        .collect();
    (!pools.is_empty()).then_some(pools)
}

/// Karpenter's NodeOverlay conflict rule (kubernetes-sigs/karpenter,
/// `pkg/controllers/nodeoverlay`): overlays are taken by weight, highest
/// first, equal weights by name, later in the alphabet first. For each pool
/// and instance type an overlay matches, it conflicts when the overlay last
/// applied there has the same weight and sets one of the same capacity keys
/// (or both set a price). A conflicting overlay gets condition
/// `ValidationSucceeded=False` reason `Conflict` and is applied nowhere, in no
/// pool. Prices are compared per instance type here (Karpenter compares per
/// offering, which lint cannot see).
pub(super) fn lint_overlay_conflicts(
    overlays: &[&Document],
    pools: &[Pool<'_>],
    sink: &mut Sink<'_>,
) {
    struct Applied {
        weight: i64,
        name: String,
        capacity: Vec<String>,
    }
    let weight = |d: &Document| d.value["spec"]["weight"].as_i64().unwrap_or(0);
    // Defect: an overlay regenerated as the shipped file says, linted with
    // the shipped one of the same name, was an `overlay-conflict`. Two
    // documents of one name are one object: applying both keeps the last.
    let mut by_name: BTreeMap<&str, &Document> = BTreeMap::new();
    for doc in overlays {
        if let Some(earlier) = by_name.insert(doc.name(), doc)
            && earlier.value["spec"] != doc.value["spec"]
        {
            sink.add(
                doc,
                "metadata.name",
                Severity::Warning,
                "overlay-same-name",
                format!(
                    "NodeOverlay {} is also defined in {} (document {}) with another spec: they are one object, so applying \
                     both files keeps only the one applied last. Keep one of them",
                    doc.name(),
                    earlier.file,
                    earlier.index + 1
                ),
            );
        }
    }
    let mut ordered: Vec<&Document> = by_name.into_values().collect();
    ordered.sort_by(|a, b| {
        weight(b)
            .cmp(&weight(a))
            .then_with(|| b.name().cmp(a.name()))
    });
    // (pool, instance type) → the last overlay applied there (capacity; price).
    let mut capacity_applied: BTreeMap<(String, &str), Applied> = BTreeMap::new();
    let mut price_applied: BTreeMap<(String, &str), Applied> = BTreeMap::new();
    for doc in ordered {
        let spec = &doc.value["spec"];
        let w = weight(doc);
        let capacity: Vec<String> = spec["capacity"]
            .as_object()
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default();
        let priced = spec.get("price").is_some() || spec.get("priceAdjustment").is_some();
        let reqs: Vec<Requirement> = spec["requirements"]
            .as_array()
            .map(|a| a.iter().filter_map(Requirement::from_value).collect())
            .unwrap_or_default();
        let matched = overlay_instances(&reqs);
        let scoped = overlay_pools(doc);
        let mut targets: Vec<(String, &'static str)> = Vec::new();
        for pool in pools {
            if scoped
                .as_ref()
                .is_some_and(|names| !names.contains(&pool.name))
            {
                continue;
            }
            for instance in &pool.instances {
                if matched.iter().any(|m| m.name == instance.name) {
                    targets.push((pool.name.clone(), instance.name));
                }
            }
        }
        let conflict = targets.iter().find_map(|target| {
            let on_capacity = capacity_applied.get(target).and_then(|a| {
                let shared: Vec<&String> =
                    capacity.iter().filter(|k| a.capacity.contains(k)).collect();
                (a.weight == w && !shared.is_empty()).then(|| {
                    format!(
                        "sets {} like NodeOverlay {} with the same weight {w}",
                        shared
                            .iter()
                            .map(|k| k.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        a.name
                    )
                })
            });
            let on_price = price_applied
                .get(target)
                .filter(|a| priced && a.weight == w)
                .map(|a| {
                    format!(
                        "sets a price like NodeOverlay {} with the same weight {w}",
                        a.name
                    )
                });
            on_capacity
                .or(on_price)
                .map(|why| format!("{why} for NodePool {} and {}", target.0, target.1))
        });
        if let Some(why) = conflict {
            sink.add(doc, "spec.weight", Severity::Error, "overlay-conflict", format!(
                "{why}: Karpenter marks this overlay Conflict (ValidationSucceeded=False) and applies it nowhere, in every NodePool. \
                 Give one of them a different spec.weight (the higher wins), or merge them"));
            continue;
        }
        for target in targets {
            if !capacity.is_empty() {
                capacity_applied.insert(
                    target.clone(),
                    Applied {
                        weight: w,
                        name: doc.name().to_string(),
                        capacity: capacity.clone(),
                    },
                );
            }
            if priced {
                price_applied.insert(
                    target,
                    Applied {
                        weight: w,
                        name: doc.name().to_string(),
                        capacity: Vec::new(),
                    },
                );
            }
        }
    }
}

/// Label keys the NodeOverlay CRD's validation rules reject in
/// `spec.requirements` (Karpenter's `karpenter.sh_nodeoverlays.yaml` as the
/// AWS provider ships it), with the rule broken; `None` when allowed.
pub(super) fn restricted_overlay_key(key: &str) -> Option<&'static str> {
    const KARPENTER_SH_ALLOWED: &[&str] = &["karpenter.sh/capacity-type", "karpenter.sh/nodepool"];
    const AWS_ALLOWED: &[&str] = &[
        "karpenter.k8s.aws/ec2nodeclass",
        "karpenter.k8s.aws/instance-encryption-in-transit-supported",
        "karpenter.k8s.aws/nitro-sandbox",
        "karpenter.k8s.aws/instance-category",
        "karpenter.k8s.aws/instance-hypervisor",
        "karpenter.k8s.aws/instance-family",
        "karpenter.k8s.aws/instance-generation",
        "karpenter.k8s.aws/instance-local-nvme",
        "karpenter.k8s.aws/instance-size",
        "karpenter.k8s.aws/instance-cpu",
        "karpenter.k8s.aws/instance-cpu-manufacturer",
        "karpenter.k8s.aws/instance-cpu-sustained-clock-speed-mhz",
        "karpenter.k8s.aws/instance-memory",
        "karpenter.k8s.aws/instance-ebs-bandwidth",
        "karpenter.k8s.aws/instance-network-bandwidth",
        "karpenter.k8s.aws/instance-gpu-name",
        "karpenter.k8s.aws/instance-gpu-manufacturer",
        "karpenter.k8s.aws/instance-gpu-count",
        "karpenter.k8s.aws/instance-gpu-memory",
        "karpenter.k8s.aws/instance-accelerator-name",
        "karpenter.k8s.aws/instance-accelerator-manufacturer",
        "karpenter.k8s.aws/instance-accelerator-count",
        "karpenter.k8s.aws/instance-capability-flex",
    ];
    let domain = key.split('/').next().unwrap_or(key);
    if key == "kubernetes.io/hostname" {
        Some("label kubernetes.io/hostname is restricted")
    } else if domain.ends_with("karpenter.sh") && !KARPENTER_SH_ALLOWED.contains(&key) {
        Some(
            "label domain karpenter.sh is restricted but for karpenter.sh/capacity-type and karpenter.sh/nodepool",
        )
    } else if domain.ends_with("karpenter.k8s.aws") && !AWS_ALLOWED.contains(&key) {
        Some(
            "label domain karpenter.k8s.aws is restricted but for the instance-type labels the AWS provider defines",
        )
    } else {
        None
    }
}

pub(super) fn lint_overlay(doc: &Document, pools: &[Pool<'_>], sink: &mut Sink<'_>) {
    let spec = &doc.value["spec"];
    if spec.get("price").is_some() && spec.get("priceAdjustment").is_some() {
        sink.add(
            doc,
            "spec.price",
            Severity::Error,
            "overlay-price-and-adjustment",
            "cannot set both 'price' and 'priceAdjustment' (the CRD rejects it): keep one",
        );
    }
    let reqs: Vec<Requirement> = spec["requirements"]
        .as_array()
        .map(|a| a.iter().filter_map(Requirement::from_value).collect())
        .unwrap_or_default();
    let Some(pool_names) = overlay_pools(doc) else {
        sink.add(
            doc,
            "spec.requirements",
            Severity::Warning,
            "overlay-unscoped",
            "no karpenter.sh/nodepool requirement: the overlay changes Karpenter's view of the matching instance types in every NodePool, \
             including pools whose nodes are not sliced. Add {key: karpenter.sh/nodepool, operator: In, values: [<pool>]}",
        );
        return;
    };
    let Some(capacity) = spec["capacity"].as_object() else {
        return;
    };
    for name in pool_names {
        let Some(pool) = pools.iter().find(|p| p.name == name) else {
            sink.add(doc, "spec.requirements", Severity::Warning, "overlay-unknown-nodepool", format!(
                "NodePool {name} is not among the linted files: its capacity cannot be checked; lint the overlay with its NodePool"));
            continue;
        };
        let template_labels = pool.doc.value["spec"]["template"]["metadata"]["labels"].as_object();
        for (i, r) in reqs.iter().enumerate() {
            let path = format!("spec.requirements[{i}].key");
            if let Some(rule) = restricted_overlay_key(&r.key) {
                sink.add(doc, &path, Severity::Error, "overlay-restricted-key", format!(
                    "'{}' is restricted in NodeOverlay requirements ({rule}): the API server rejects the overlay. \
                     Use node.kubernetes.io/instance-type or an allowed karpenter.k8s.aws/instance-* key", r.key));
                continue;
            }
            let known = r.key.starts_with("karpenter.sh/")
                || r.key.starts_with("karpenter.k8s.aws/")
                || r.key.starts_with("node.kubernetes.io/")
                || r.key.starts_with("topology.kubernetes.io/")
                || r.key.starts_with("kubernetes.io/")
                || template_labels.is_some_and(|l| l.contains_key(&r.key));
            if known {
                continue;
            }
            // An undefined label matches NotIn and DoesNotExist (the overlay
            // then applies to every instance type of the pool) and nothing else.
            match r.operator.as_str() {
                "NotIn" | "DoesNotExist" => sink.add(doc, &path, Severity::Error, "overlay-custom-key", format!(
                    "'{}' is neither a well-known label nor a template label of NodePool {name}: Karpenter treats it as undefined, so \
                     {} matches every instance type of the pool and the overlay applies to all of them. Use node.kubernetes.io/instance-type \
                     or karpenter.k8s.aws/instance-gpu-*", r.key, r.operator)),
                _ => sink.add(doc, &path, Severity::Warning, "overlay-custom-key", format!(
                    "'{}' is neither a well-known label nor a template label of NodePool {name}: Karpenter treats it as undefined, so \
                     {} never matches and the overlay silently applies to nothing. Use node.kubernetes.io/instance-type or \
                     karpenter.k8s.aws/instance-gpu-*", r.key, r.operator)),
            }
        }
        let matched = overlay_instances(&reqs);
        for (instance, plan) in &pool.plans {
            if !matched.iter().any(|m| m.name == instance.name) {
                continue;
            }
            let Some(plan) = plan else { continue };
            let expected = overlays::capacity_of(plan).counts;
            let context = format!("{} on {}", pool.describe(), instance.name);
            for (key, want) in &expected {
                let path = format!("spec.capacity{}", key_segment(key));
                match capacity.get(key).and_then(quantity) {
                    Some(got) if got == *want => {}
                    Some(got) => sink.add(doc, path, Severity::Error, "overlay-capacity-mismatch", format!(
                        "declares {got} x {key}, but gpu-slicer advertises {want} under {context}: Karpenter would plan with the wrong count. \
                         Regenerate with `gpu-slicer karpenter overlays --nodepool {name} --instance-type {}`", instance.name)),
                    None if *want == 0 => sink.add(doc, "spec.capacity", Severity::Warning, "overlay-capacity-mismatch", format!(
                        "no {key}: \"0\": gpu-slicer advertises none under {context}, but Karpenter keeps its own count of physical GPUs \
                         (overlay keys replace, they do not add), so pods asking for {key} can be sent to a node that never registers it")),
                    None => sink.add(doc, "spec.capacity", Severity::Error, "overlay-capacity-mismatch", format!(
                        "missing {key}: \"{want}\" (gpu-slicer advertises it under {context}): pods requesting it cannot make Karpenter launch")),
                }
            }
            for (key, got) in capacity {
                if !expected.contains_key(key) && quantity(got) != Some(0) {
                    sink.add(doc, format!("spec.capacity{}", key_segment(key)), Severity::Error, "overlay-capacity-mismatch", format!(
                        "declares {key}, which gpu-slicer does not advertise under {context}: the NodeClaim would wait forever with \
                         \"Resource \\\"{key}\\\" was requested but not registered\""));
                }
            }
        }
    }
}

/// The presets an overlay's requirements match, its `karpenter.sh/nodepool`
/// scope aside (the pool is matched on its own).
fn overlay_instances(reqs: &[Requirement]) -> Vec<&'static InstanceType> {
    let own: Vec<Requirement> = reqs
        .iter()
        .filter(|r| r.key != "karpenter.sh/nodepool")
        .cloned()
        .collect();
    instances_matching(&own)
}
