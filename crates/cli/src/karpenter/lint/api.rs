//! What the API server refuses in a `karpenter.sh/v1` NodePool (Kubernetes'
//! object-name rule and the NodePool CRD's schema), checked before anything
//! is computed from the pool: `kubectl apply` would fail, so nothing else
//! about the pool matters yet. `karpenter overlays` refuses such a pool too.

use serde_json::Value;

/// `(YAML path, message)` for each value the API server rejects.
pub fn nodepool_rejections(pool: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let name = pool["metadata"]["name"].as_str().unwrap_or_default();
    if let Some(why) = nodepool_name_problem(name) {
        out.push(("metadata.name".to_string(), why));
    }
    if pool["apiVersion"] != "karpenter.sh/v1" {
        return out;
    }
    let spec = &pool["spec"];
    if let Some(disruption) = spec.get("disruption").filter(|d| !d.is_null()) {
        match disruption.get("consolidateAfter") {
            None | Some(Value::Null) => out.push((
                "spec.disruption.consolidateAfter".into(),
                "karpenter.sh/v1 requires consolidateAfter once disruption is given (the API server answers \
                 \"spec.disruption.consolidateAfter: Required value\"): add consolidateAfter: 0s, a duration \
                 such as 10m, or Never"
                    .into(),
            )),
            Some(v) => {
                if let Some(why) = duration_problem(v) {
                    out.push(("spec.disruption.consolidateAfter".into(), why));
                }
            }
        }
        if let Some(policy) = disruption
            .get("consolidationPolicy")
            .filter(|p| !p.is_null())
        {
            let valid = ["WhenEmpty", "WhenEmptyOrUnderutilized"];
            if !policy.as_str().is_some_and(|p| valid.contains(&p)) {
                out.push((
                    "spec.disruption.consolidationPolicy".into(),
                    format!(
                        "consolidationPolicy {} is not one of WhenEmpty, WhenEmptyOrUnderutilized (karpenter.sh/v1; \
                         v1beta1's WhenUnderutilized is now WhenEmptyOrUnderutilized): the API server rejects the NodePool",
                        show(policy)
                    ),
                ));
            }
        }
        if disruption.get("expireAfter").is_some() {
            out.push((
                "spec.disruption.expireAfter".into(),
                "karpenter.sh/v1 has no disruption.expireAfter (it was v1beta1's): move it to \
                 spec.template.spec.expireAfter"
                    .into(),
            ));
        }
    }
    if let Some(v) = spec["template"]["spec"].get("expireAfter")
        && let Some(why) = duration_problem(v)
    {
        out.push(("spec.template.spec.expireAfter".into(), why));
    }
    let class = &spec["template"]["spec"]["nodeClassRef"];
    if class.is_null() {
        out.push((
            "spec.template.spec.nodeClassRef".into(),
            "karpenter.sh/v1 requires nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: <class>}".into(),
        ));
    } else {
        for key in ["group", "kind", "name"] {
            if class[key].as_str().is_none_or(str::is_empty) {
                out.push((
                    format!("spec.template.spec.nodeClassRef.{key}"),
                    format!(
                        "karpenter.sh/v1 requires nodeClassRef.{key} (group: karpenter.k8s.aws, kind: EC2NodeClass, \
                         name: <class>)"
                    ),
                ));
            }
        }
    }
    out
}

/// Why `name` cannot name a NodePool: Kubernetes' object names (a DNS
/// subdomain: lowercase letters, digits, '-' and '.', starting and ending
/// with a letter or digit), and at most 63 characters because Karpenter
/// writes it into every node's `karpenter.sh/nodepool` label.
pub fn nodepool_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("the NodePool has no metadata.name".into());
    }
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !valid_chars || !ends_ok(name.chars().next()) || !ends_ok(name.chars().last()) {
        return Some(format!(
            "'{name}' is not a valid object name (the API server rejects it): lowercase letters, digits, '-' and '.', \
             starting and ending with a letter or digit, e.g. '{}'",
            suggested_name(name)
        ));
    }
    if name.len() > 63 {
        return Some(format!(
            "'{name}' is {} characters; Karpenter writes the NodePool's name into each node's karpenter.sh/nodepool \
             label, whose values hold at most 63",
            name.len()
        ));
    }
    None
}

/// `Broken_Pool` → `broken-pool`.
fn suggested_name(name: &str) -> String {
    let lowered: String = name
        .chars()
        .map(|c| match c {
            'A'..='Z' => c.to_ascii_lowercase(),
            'a'..='z' | '0'..='9' | '-' | '.' => c,
            _ => '-',
        })
        .collect();
    lowered
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// Karpenter's duration pattern `^(([0-9]+(s|m|h))+|Never)$`.
fn duration_problem(value: &Value) -> Option<String> {
    let ok = value.as_str().is_some_and(|s| {
        if s == "Never" {
            return true;
        }
        let mut digits = 0;
        let mut parts = 0;
        for c in s.chars() {
            match c {
                '0'..='9' => digits += 1,
                's' | 'm' | 'h' if digits > 0 => {
                    digits = 0;
                    parts += 1;
                }
                _ => return false,
            }
        }
        digits == 0 && parts > 0
    });
    (!ok).then(|| {
        format!(
            "{} is not a Karpenter duration (the API server rejects it): whole numbers with s, m or h, such as \
             720h or 1h30m, or Never (no days: 30 days is 720h)",
            show(value)
        )
    })
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("'{s}'"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_the_api_server_rejects() {
        let pool = |name: &str, disruption: Value, expire: Value| {
            json!({"apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": name},
                   "spec": {"disruption": disruption, "template": {"spec": {"expireAfter": expire,
                     "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "c"}}}}})
        };
        let good = pool(
            "gpu-a",
            json!({"consolidationPolicy": "WhenEmpty", "consolidateAfter": "1h30m"}),
            json!("720h"),
        );
        assert_eq!(nodepool_rejections(&good), vec![]);
        let never = pool(
            "gpu-a",
            json!({"consolidateAfter": "Never"}),
            json!("Never"),
        );
        assert_eq!(nodepool_rejections(&never), vec![]);
        let bad = pool(
            "Broken_Pool",
            json!({"consolidationPolicy": "WhenIdle"}),
            json!("30days"),
        );
        let paths: Vec<String> = nodepool_rejections(&bad)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(
            paths,
            [
                "metadata.name",
                "spec.disruption.consolidateAfter",
                "spec.disruption.consolidationPolicy",
                "spec.template.spec.expireAfter"
            ]
        );
        assert!(
            nodepool_name_problem("Broken_Pool")
                .unwrap()
                .contains("e.g. 'broken-pool'")
        );
        assert!(
            nodepool_name_problem(&"a".repeat(64))
                .unwrap()
                .contains("at most 63")
        );
        for bad in ["", "h", "10", "5d", "1h30", "m5"] {
            assert!(duration_problem(&json!(bad)).is_some(), "{bad}");
        }
    }
}
