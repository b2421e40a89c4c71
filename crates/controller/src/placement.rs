//! Where a pending pod may go, as the scheduler's node filters decide it
//! for a node: its `nodeSelector`, its required node affinity
//! (`requiredDuringSchedulingIgnoredDuringExecution`), and its tolerations
//! against the node's `NoSchedule` and `NoExecute` taints (the Kubernetes
//! docs, "Assigning Pods to Nodes" and "Taints and Tolerations"). Pure: a
//! [`Placement`] read from a Pod and a node's labels and taints in, yes or
//! no out. Preferred affinity, pod (anti-)affinity, topology spread and
//! resources other than MIG slices are not read.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, Pod, Taint};

/// A node's labels and schedule-blocking taints, as kept in the node store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// Sorted by key, boxed: a node carries dozens of labels, and 15,000
    /// nodes' worth are kept.
    labels: Box<[(Box<str>, Box<str>)]>,
    /// Taints with effect `NoSchedule` or `NoExecute`: (key, value, effect).
    pub taints: Vec<(String, String, String)>,
}

impl NodeFacts {
    pub fn new<'a>(
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
        taints: Vec<(String, String, String)>,
    ) -> NodeFacts {
        let mut labels: Vec<(Box<str>, Box<str>)> = labels
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        labels.sort();
        labels.dedup_by(|a, b| a.0 == b.0);
        NodeFacts {
            labels: labels.into(),
            taints,
        }
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|at| &*self.labels[at].1)
    }
}

/// A pod's node-level constraints. Pods of one placement share one
/// eligibility vector in a pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Placement {
    pub node_selector: BTreeMap<String, String>,
    /// `nodeSelectorTerms`: any one term must hold; `None`: no required
    /// affinity.
    pub terms: Option<Vec<Vec<Requirement>>>,
    pub tolerations: Vec<Toleration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Requirement {
    /// A label key, or `metadata.name` for a `matchFields` requirement.
    pub key: String,
    pub operator: String,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Toleration {
    pub key: String,
    /// `Exists` or `Equal` (the default).
    pub operator: String,
    pub value: String,
    /// Empty: every effect.
    pub effect: String,
}

/// The taints the scheduler's filter honours (`PreferNoSchedule` is a
/// preference only).
pub fn blocking_taints(taints: &[Taint]) -> Vec<(String, String, String)> {
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .map(|t| {
            (
                t.key.clone(),
                t.value.clone().unwrap_or_default(),
                t.effect.clone(),
            )
        })
        .collect()
}

impl Placement {
    pub fn of(pod: &Pod) -> Placement {
        let Some(spec) = &pod.spec else {
            return Placement::default();
        };
        let requirement = |r: &NodeSelectorRequirement, field: bool| Requirement {
            key: if field {
                format!("field:{}", r.key)
            } else {
                r.key.clone()
            },
            operator: r.operator.clone(),
            values: r.values.clone().unwrap_or_default(),
        };
        let terms = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|selector| {
                selector
                    .node_selector_terms
                    .iter()
                    .map(|term| {
                        let expressions = term.match_expressions.iter().flatten();
                        let fields = term.match_fields.iter().flatten();
                        expressions
                            .map(|r| requirement(r, false))
                            .chain(fields.map(|r| requirement(r, true)))
                            .collect()
                    })
                    .collect()
            });
        Placement {
            node_selector: spec.node_selector.clone().unwrap_or_default(),
            terms,
            tolerations: spec
                .tolerations
                .iter()
                .flatten()
                .map(|t| Toleration {
                    key: t.key.clone().unwrap_or_default(),
                    operator: t.operator.clone().unwrap_or_else(|| "Equal".into()),
                    value: t.value.clone().unwrap_or_default(),
                    effect: t.effect.clone().unwrap_or_default(),
                })
                .collect(),
        }
    }

    /// Whether the scheduler's node filters let the pod onto node `name`.
    pub fn admits(&self, name: &str, node: &NodeFacts) -> bool {
        let selector = self
            .node_selector
            .iter()
            .all(|(k, v)| node.label(k) == Some(v.as_str()));
        // An empty list of terms matches no node, as the API says.
        let affinity = self.terms.as_ref().is_none_or(|terms| {
            terms
                .iter()
                .any(|term| !term.is_empty() && term.iter().all(|r| r.holds(name, node)))
        });
        let tolerated = node.taints.iter().all(|(key, value, effect)| {
            self.tolerations
                .iter()
                .any(|t| t.tolerates(key, value, effect))
        });
        selector && affinity && tolerated
    }
}

impl Requirement {
    fn holds(&self, name: &str, node: &NodeFacts) -> bool {
        let value = match self.key.strip_prefix("field:") {
            // matchFields supports metadata.name only.
            Some("metadata.name") => Some(name),
            Some(_) => None,
            None => node.label(&self.key),
        };
        let number = |s: &str| s.parse::<i64>().ok();
        match self.operator.as_str() {
            "In" => value.is_some_and(|v| self.values.iter().any(|w| w == v)),
            "NotIn" => value.is_none_or(|v| self.values.iter().all(|w| w != v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            "Gt" | "Lt" => {
                let (Some(have), [want]) = (value.and_then(number), self.values.as_slice()) else {
                    return false;
                };
                let Some(want) = number(want) else {
                    return false;
                };
                if self.operator == "Gt" {
                    have > want
                } else {
                    have < want
                }
            }
            // An operator the API does not know: the API server refuses
            // such a pod, so none reaches here; match nothing.
            _ => false,
        }
    }
}

impl Toleration {
    fn tolerates(&self, key: &str, value: &str, effect: &str) -> bool {
        let effect_ok = self.effect.is_empty() || self.effect == effect;
        let key_ok = if self.key.is_empty() {
            // An empty key with Exists tolerates everything.
            self.operator == "Exists"
        } else {
            self.key == key
        };
        let value_ok = self.operator == "Exists" || self.value == value;
        effect_ok && key_ok && value_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).expect("a Pod")
    }

    fn node(labels: &[(&str, &str)], taints: &[(&str, &str, &str)]) -> NodeFacts {
        NodeFacts::new(
            labels.iter().copied(),
            taints
                .iter()
                .map(|(k, v, e)| (k.to_string(), v.to_string(), e.to_string()))
                .collect(),
        )
    }

    #[test]
    fn node_selector_affinity_and_tolerations_decide_as_the_scheduler_does() {
        let pool_a = node(&[("karpenter.sh/nodepool", "a"), ("zone", "1")], &[]);
        let pool_b = node(&[("karpenter.sh/nodepool", "b"), ("zone", "2")], &[]);
        let gpu_tainted = node(
            &[("karpenter.sh/nodepool", "a")],
            &[("nvidia.com/gpu", "", "NoSchedule")],
        );
        let cases: Vec<(&str, serde_json::Value, [bool; 3])> = vec![
            (
                "no constraint",
                json!({"containers": []}),
                [true, true, false],
            ),
            (
                "node selector",
                json!({"containers": [], "nodeSelector": {"karpenter.sh/nodepool": "a"}}),
                [true, false, false],
            ),
            (
                "affinity In, either term",
                json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["2"]}]},
                        {"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]}]}}}}),
                [false, true, false],
            ),
            (
                "affinity NotIn and Gt",
                json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "karpenter.sh/nodepool", "operator": "NotIn", "values": ["b"]},
                        {"key": "zone", "operator": "Gt", "values": ["0"]}]}]}}}}),
                [true, false, false],
            ),
            (
                "matchFields metadata.name",
                json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchFields": [
                        {"key": "metadata.name", "operator": "In", "values": ["n2"]}]}]}}}}),
                [false, true, false],
            ),
            (
                "an empty list of terms",
                json!({"containers": [], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": []}}}}),
                [false, false, false],
            ),
            (
                "toleration by key",
                json!({"containers": [], "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}),
                [true, true, true],
            ),
            (
                "toleration of another effect",
                json!({"containers": [], "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}]}),
                [true, true, false],
            ),
            (
                "toleration Equal with another value",
                json!({"containers": [], "tolerations": [{"key": "nvidia.com/gpu", "value": "x"}]}),
                [true, true, false],
            ),
            (
                "tolerate everything",
                json!({"containers": [], "tolerations": [{"operator": "Exists"}]}),
                [true, true, true],
            ),
        ];
        for (what, spec, want) in cases {
            let placement = Placement::of(&pod(spec));
            let got = [
                placement.admits("n1", &pool_a),
                placement.admits("n2", &pool_b),
                placement.admits("n3", &gpu_tainted),
            ];
            assert_eq!(got, want, "{what}");
        }
        assert_eq!(
            Placement::of(&pod(json!({"containers": []}))),
            Placement::default()
        );
    }

    #[test]
    fn only_no_schedule_and_no_execute_taints_block() {
        let taints: Vec<Taint> = serde_json::from_value(json!([
            {"key": "a", "effect": "NoSchedule"},
            {"key": "b", "value": "1", "effect": "NoExecute"},
            {"key": "c", "effect": "PreferNoSchedule"},
        ]))
        .unwrap();
        assert_eq!(
            blocking_taints(&taints),
            vec![
                ("a".to_string(), String::new(), "NoSchedule".to_string()),
                ("b".to_string(), "1".to_string(), "NoExecute".to_string()),
            ]
        );
    }
}
