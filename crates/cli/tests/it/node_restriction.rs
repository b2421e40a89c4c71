//! The ValidatingAdmissionPolicies that keep gpu-slicer's node daemon to its
//! own Node (deploy/static/gpu-slicer-node-restriction.yaml) and the
//! controller to the MIG target annotation
//! (deploy/static/gpu-slicer-controller-restriction.yaml), and the chart's
//! copies: their CEL expressions evaluated, with a CEL interpreter (the `cel`
//! crate), on admission requests shaped as the API server builds them, the
//! way the API server applies a policy: the match conditions first (a
//! request they do not match is admitted untouched), then the variables in
//! order, then every validation, whose failures are the request's refusal.
//!
//! What this proves: the expressions parse, and on these requests they
//! admit and refuse what the policy means to. What it does not: that the
//! API server's CEL (cel-go with Kubernetes' libraries, typed by the Node's
//! OpenAPI schema) gives the same answers in every case, that the API
//! server sends these attributes as modelled here (e.g. a merge patch
//! reaching admission as an UPDATE of the whole Node, the bound token's
//! node-name extra), or that the binding is in force in a cluster. Those
//! need a real API server (docs/deploy.md).

use serde_json::{Value, json};

use cel::{Context, Env};

const DAEMON: &str = "system:serviceaccount:kube-system:gpu-slicer";

struct Validation {
    expression: String,
    message: String,
}

struct Policy {
    match_conditions: Vec<String>,
    variables: Vec<(String, String)>,
    validations: Vec<Validation>,
}

const DAEMONS_POLICY: &str = "deploy/static/gpu-slicer-node-restriction.yaml";
const CONTROLLERS_POLICY: &str = "deploy/static/gpu-slicer-controller-restriction.yaml";

fn static_manifest(path: &str) -> String {
    std::fs::read_to_string(crate::repo_root().join(path)).expect("read the policy")
}

/// The node daemon's policy.
fn policy() -> Policy {
    policy_in(DAEMONS_POLICY)
}

fn policy_in(path: &str) -> Policy {
    let docs: Vec<Value> = serde_saphyr::from_multiple(&static_manifest(path)).expect("YAML");
    let vap = docs
        .iter()
        .find(|d| d["kind"] == "ValidatingAdmissionPolicy")
        .expect("a ValidatingAdmissionPolicy");
    let binding = docs
        .iter()
        .find(|d| d["kind"] == "ValidatingAdmissionPolicyBinding")
        .expect("its binding");
    assert_eq!(binding["spec"]["policyName"], vap["metadata"]["name"]);
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    assert_eq!(vap["spec"]["failurePolicy"], "Fail");
    let spec = &vap["spec"];
    let text = |v: &Value| v.as_str().expect("a string").to_string();
    Policy {
        match_conditions: spec["matchConditions"]
            .as_array()
            .expect("matchConditions")
            .iter()
            .map(|c| text(&c["expression"]))
            .collect(),
        variables: spec["variables"]
            .as_array()
            .expect("variables")
            .iter()
            .map(|v| (text(&v["name"]), text(&v["expression"])))
            .collect(),
        validations: spec["validations"]
            .as_array()
            .expect("validations")
            .iter()
            .map(|v| Validation {
                expression: text(&v["expression"]),
                message: v["message"]
                    .as_str()
                    .or(v["messageExpression"].as_str())
                    .expect("a message")
                    .to_string(),
            })
            .collect(),
    }
}

fn evaluate(context: &Context, expression: &str) -> cel::Value {
    let env = std::sync::Arc::new(Env::stdlib());
    let program = env
        .compile(expression)
        .unwrap_or_else(|e| panic!("{expression}: does not parse: {e:?}"));
    program
        .execute(context)
        .unwrap_or_else(|e| panic!("{expression}: {e:?}"))
}

/// The policy's answer: `Ok` admitted (or not matched), `Err` the messages
/// of the failed validations.
fn admit(policy: &Policy, request: &Value, object: &Value, old: &Value) -> Result<(), Vec<String>> {
    let env = std::sync::Arc::new(Env::stdlib());
    let mut context = Context::with_env(env);
    context.add_variable_from_value("request", cel::to_value(request).expect("request"));
    context.add_variable_from_value("object", cel::to_value(object).expect("object"));
    context.add_variable_from_value("oldObject", cel::to_value(old).expect("oldObject"));
    for condition in &policy.match_conditions {
        if evaluate(&context, condition) != true.into() {
            return Ok(());
        }
    }
    let mut variables = serde_json::Map::new();
    for (name, expression) in &policy.variables {
        context.add_variable_from_value(
            "variables",
            cel::to_value(Value::Object(variables.clone())).expect("variables"),
        );
        let value = evaluate(&context, expression)
            .json()
            .unwrap_or_else(|e| panic!("variable {name}: {e}"));
        variables.insert(name.clone(), value);
    }
    context.add_variable_from_value(
        "variables",
        cel::to_value(Value::Object(variables)).expect("variables"),
    );
    let refused: Vec<String> = policy
        .validations
        .iter()
        .filter(|v| evaluate(&context, &v.expression) != true.into())
        .map(|v| v.message.clone())
        .collect();
    if refused.is_empty() {
        Ok(())
    } else {
        Err(refused)
    }
}

/// A Node as the API server holds it.
fn node(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "nvidia.com/mig.config": "all-balanced",
                "nvidia.com/mig.config.state": "pending",
            },
            "annotations": { "node.alpha.kubernetes.io/ttl": "0" },
        },
        "spec": {
            "providerID": format!("aws:///us-east-1a/{name}"),
            "taints": [
                { "key": "gpu-slicer.io/slicing-pending", "effect": "NoSchedule" },
                { "key": "karpenter.sh/unregistered", "effect": "NoExecute" },
            ],
        },
    })
}

/// An admission request of `user` (on `on_node`, when its token names one).
fn request(operation: &str, name: &str, user: &str, on_node: Option<&str>) -> Value {
    let mut extra = json!({
        "authentication.kubernetes.io/pod-name": ["gpu-slicer-x7k2p"],
    });
    if let Some(n) = on_node {
        extra["authentication.kubernetes.io/node-name"] = json!([n]);
    }
    json!({
        "operation": operation,
        "name": name,
        "subResource": "",
        "resource": { "group": "", "version": "v1", "resource": "nodes" },
        "userInfo": { "username": user, "groups": ["system:serviceaccounts"], "extra": extra },
    })
}

/// What the daemon writes to its own Node: the state label, the annotation,
/// the start-up taint gone.
fn daemons_change(old: &Value) -> Value {
    let mut new = old.clone();
    new["metadata"]["labels"]["nvidia.com/mig.config.state"] = json!("success");
    new["metadata"]["annotations"]["gpu-slicer.io/mig-state"] =
        json!("[{\"index\":0,\"mig\":true}]");
    new["spec"]["taints"] = json!([{ "key": "karpenter.sh/unregistered", "effect": "NoExecute" }]);
    new
}

#[test]
fn the_daemon_may_change_what_it_owns_on_its_own_node() {
    let policy = policy();
    let old = node("n1");
    let new = daemons_change(&old);
    let own = request("UPDATE", "n1", DAEMON, Some("n1"));
    assert_eq!(admit(&policy, &own, &new, &old), Ok(()));
    // Each change alone, and removing the annotation (an unpublishable state).
    let mut only_label = old.clone();
    only_label["metadata"]["labels"]["nvidia.com/mig.config.state"] = json!("failed");
    assert_eq!(admit(&policy, &own, &only_label, &old), Ok(()));
    let mut removed = new.clone();
    removed["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove("gpu-slicer.io/mig-state");
    assert_eq!(admit(&policy, &own, &removed, &new), Ok(()));
    let mut no_labels = old.clone();
    no_labels["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("labels");
    no_labels["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    let mut annotated = no_labels.clone();
    annotated["metadata"]["annotations"] = json!({ "gpu-slicer.io/mig-state": "[]" });
    assert_eq!(admit(&policy, &own, &annotated, &no_labels), Ok(()));
}

#[test]
fn the_daemon_may_not_change_another_node() {
    let policy = policy();
    let old = node("n2");
    let new = daemons_change(&old);
    let other = request("UPDATE", "n2", DAEMON, Some("n1"));
    assert_eq!(
        admit(&policy, &other, &new, &old),
        Err(vec![
            "\"gpu-slicer's node daemon on node \" + variables.requestingNode + \" may not change node \" + request.name"
                .to_string()
        ])
    );
    // The message expression itself, evaluated as the API server would.
    let env = std::sync::Arc::new(Env::stdlib());
    let mut context = Context::with_env(env);
    context.add_variable_from_value("request", cel::to_value(&other).unwrap());
    context.add_variable_from_value(
        "variables",
        cel::to_value(json!({ "requestingNode": "n1" })).unwrap(),
    );
    let message = policy
        .validations
        .iter()
        .find(|v| v.expression.contains("request.name"))
        .unwrap();
    assert_eq!(
        evaluate(&context, &message.message),
        "gpu-slicer's node daemon on node n1 may not change node n2"
            .to_string()
            .into()
    );
    // Without the node in its token (an API server before 1.30, a token not
    // bound to a pod): refused, whatever the node.
    let unbound = request("UPDATE", "n1", DAEMON, None);
    let refused = admit(&policy, &unbound, &daemons_change(&node("n1")), &node("n1")).unwrap_err();
    assert!(
        refused[0].starts_with(
            "gpu-slicer's node daemon must authenticate with its pod's bound service-account token"
        ),
        "{refused:?}"
    );
}

#[test]
fn the_daemon_may_change_nothing_else_on_its_node() {
    let policy = policy();
    let old = node("n1");
    let own = request("UPDATE", "n1", DAEMON, Some("n1"));
    let refused = |change: &dyn Fn(&mut Value)| {
        let mut new = old.clone();
        change(&mut new);
        admit(&policy, &own, &new, &old).expect_err("refused")
    };
    let labels =
        "gpu-slicer's node daemon may change no label of its Node but nvidia.com/mig.config.state";
    let annotations =
        "gpu-slicer's node daemon may change no annotation of its Node but gpu-slicer.io/mig-state";
    let taints =
        "gpu-slicer's node daemon may only remove its start-up taint gpu-slicer.io/slicing-pending";
    let spec = "gpu-slicer's node daemon may not change its Node's spec (but the start-up taint), finalizers or owners";
    let cases: Vec<(&str, Box<dyn Fn(&mut Value)>, &str)> = vec![
        (
            "a label changed",
            Box::new(|n| n["metadata"]["labels"]["nvidia.com/mig.config"] = json!("all-1g.5gb")),
            labels,
        ),
        (
            "a label added",
            Box::new(|n| {
                n["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] = json!("")
            }),
            labels,
        ),
        (
            "a label removed",
            Box::new(|n| {
                n["metadata"]["labels"]
                    .as_object_mut()
                    .unwrap()
                    .remove("kubernetes.io/hostname");
            }),
            labels,
        ),
        (
            "an annotation changed",
            Box::new(|n| {
                n["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"] = json!("30")
            }),
            annotations,
        ),
        (
            "a taint removed",
            Box::new(|n| {
                n["spec"]["taints"] =
                    json!([{ "key": "gpu-slicer.io/slicing-pending", "effect": "NoSchedule" }])
            }),
            taints,
        ),
        (
            "a taint added",
            Box::new(|n| {
                n["spec"]["taints"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({ "key": "x", "effect": "NoSchedule" }))
            }),
            taints,
        ),
        (
            "cordoned",
            Box::new(|n| n["spec"]["unschedulable"] = json!(true)),
            spec,
        ),
        (
            "another provider id",
            Box::new(|n| n["spec"]["providerID"] = json!("aws:///x")),
            spec,
        ),
        (
            "a finalizer",
            Box::new(|n| n["metadata"]["finalizers"] = json!(["example.com/keep"])),
            spec,
        ),
    ];
    for (what, change, message) in cases {
        assert_eq!(refused(&*change), vec![message.to_string()], "{what}");
    }
    // Creating, deleting, or the status: refused outright.
    let create_or_delete =
        "gpu-slicer's node daemon may not create or delete a Node, nor change its status"
            .to_string();
    let created = admit(
        &policy,
        &request("CREATE", "n1", DAEMON, Some("n1")),
        &old,
        &Value::Null,
    );
    assert!(created.unwrap_err().contains(&create_or_delete));
    let deleted = admit(
        &policy,
        &request("DELETE", "n1", DAEMON, Some("n1")),
        &Value::Null,
        &old,
    );
    assert!(deleted.unwrap_err().contains(&create_or_delete));
    let mut status = own.clone();
    status["subResource"] = json!("status");
    assert_eq!(
        admit(&policy, &status, &old, &old),
        Err(vec![create_or_delete])
    );
}

#[test]
fn other_users_are_not_matched() {
    let policy = policy();
    let old = node("n2");
    let mut anything = old.clone();
    anything["spec"]["unschedulable"] = json!(true);
    anything["metadata"]["labels"]["nvidia.com/mig.config"] = json!("all-1g.5gb");
    for user in [
        "system:node:n1",
        "system:serviceaccount:kube-system:gpu-slicer-controller",
        "system:serviceaccount:other:gpu-slicer",
        "alice@example.com",
    ] {
        let request = request("UPDATE", "n2", user, Some("n1"));
        assert_eq!(admit(&policy, &request, &anything, &old), Ok(()), "{user}");
    }
}

#[test]
fn the_charts_policies_hold_the_same_rules() {
    for (template, path) in [
        ("node-restriction.yaml", DAEMONS_POLICY),
        ("controller-restriction.yaml", CONTROLLERS_POLICY),
    ] {
        let chart = std::fs::read_to_string(
            crate::repo_root()
                .join("deploy/helm/gpu-slicer/templates")
                .join(template),
        )
        .expect("the chart's policy");
        let text = static_manifest(path);
        let start = text.find("  validations:").expect("validations");
        let end = text[start..].find("\n---").expect("the binding follows") + start;
        assert!(
            chart.contains(&text[start..end]),
            "the chart's {template} validations differ from {path}'s"
        );
        for (name, _) in policy_in(path).variables {
            assert!(
                chart.contains(&format!("- name: {name}\n")),
                "{template}: variable {name}"
            );
        }
    }
}

const CONTROLLER: &str = "system:serviceaccount:kube-system:gpu-slicer-controller";
const TARGET: &str = "gpu-slicer.io/mig-target";

/// What the controller writes: a per-GPU target on a Node.
fn with_target(old: &Value, target: &str) -> Value {
    let mut new = old.clone();
    new["metadata"]["annotations"][TARGET] = json!(target);
    new
}

#[test]
fn the_controller_may_write_change_and_remove_a_target_on_any_node() {
    let policy = policy_in(CONTROLLERS_POLICY);
    // The controller's token is bound to its own pod, on some other node.
    let update = request("UPDATE", "n7", CONTROLLER, Some("n1"));
    let old = node("n7");
    let first = with_target(&old, r#"{"gpus":[]}"#);
    assert_eq!(admit(&policy, &update, &first, &old), Ok(()));
    let second = with_target(&first, r#"{"gpus":[{"uuid":"GPU-1"}]}"#);
    assert_eq!(admit(&policy, &update, &second, &first), Ok(()));
    assert_eq!(admit(&policy, &update, &old, &second), Ok(()));
    // A Node with no labels or annotations at all.
    let mut bare = old.clone();
    let metadata = bare["metadata"].as_object_mut().unwrap();
    metadata.remove("labels");
    metadata.remove("annotations");
    assert_eq!(
        admit(&policy, &update, &with_target(&bare, "{}"), &bare),
        Ok(())
    );
}

#[test]
fn the_controller_may_change_nothing_else() {
    let policy = policy_in(CONTROLLERS_POLICY);
    let old = with_target(&node("n7"), "{}");
    let update = request("UPDATE", "n7", CONTROLLER, None);
    let labels = "gpu-slicer-controller may change no label of a Node";
    let annotations =
        "gpu-slicer-controller may change no annotation of a Node but gpu-slicer.io/mig-target";
    let spec =
        "gpu-slicer-controller may not change a Node's spec (taints, cordon), finalizers or owners";
    let cases: Vec<(&str, Box<dyn Fn(&mut Value)>, &str)> = vec![
        (
            "the MIG layout label",
            Box::new(|n| n["metadata"]["labels"]["nvidia.com/mig.config"] = json!("all-1g.5gb")),
            labels,
        ),
        (
            "the node daemon's state label",
            Box::new(|n| n["metadata"]["labels"]["nvidia.com/mig.config.state"] = json!("success")),
            labels,
        ),
        (
            "a label removed",
            Box::new(|n| {
                n["metadata"]["labels"]
                    .as_object_mut()
                    .unwrap()
                    .remove("kubernetes.io/hostname");
            }),
            labels,
        ),
        (
            "the published MIG state",
            Box::new(|n| n["metadata"]["annotations"]["gpu-slicer.io/mig-state"] = json!("[]")),
            annotations,
        ),
        (
            "an annotation removed",
            Box::new(|n| {
                n["metadata"]["annotations"]
                    .as_object_mut()
                    .unwrap()
                    .remove("node.alpha.kubernetes.io/ttl");
            }),
            annotations,
        ),
        (
            "cordoned",
            Box::new(|n| n["spec"]["unschedulable"] = json!(true)),
            spec,
        ),
        (
            "the start-up taint removed",
            Box::new(|n| {
                n["spec"]["taints"] =
                    json!([{ "key": "karpenter.sh/unregistered", "effect": "NoExecute" }])
            }),
            spec,
        ),
        (
            "a finalizer",
            Box::new(|n| n["metadata"]["finalizers"] = json!(["example.com/keep"])),
            spec,
        ),
        (
            "an owner",
            Box::new(|n| n["metadata"]["ownerReferences"] = json!([{ "kind": "NodeClaim" }])),
            spec,
        ),
    ];
    for (what, change, message) in cases {
        // The target changes alongside, as the controller's own patch would.
        let mut new = with_target(&old, r#"{"gpus":[]}"#);
        change(&mut new);
        assert_eq!(
            admit(&policy, &update, &new, &old),
            Err(vec![message.to_string()]),
            "{what}"
        );
    }
    let create_or_delete =
        "gpu-slicer-controller may not create or delete a Node, nor change its status".to_string();
    let created = admit(
        &policy,
        &request("CREATE", "n7", CONTROLLER, None),
        &old,
        &Value::Null,
    );
    assert_eq!(created, Err(vec![create_or_delete.clone()]));
    let deleted = admit(
        &policy,
        &request("DELETE", "n7", CONTROLLER, None),
        &Value::Null,
        &old,
    );
    assert_eq!(deleted, Err(vec![create_or_delete.clone()]));
    let mut status = update.clone();
    status["subResource"] = json!("status");
    assert_eq!(
        admit(&policy, &status, &old, &old),
        Err(vec![create_or_delete])
    );
}

#[test]
fn the_controllers_policy_matches_no_one_else() {
    let controllers = policy_in(CONTROLLERS_POLICY);
    let old = node("n2");
    let mut anything = old.clone();
    anything["spec"]["unschedulable"] = json!(true);
    anything["metadata"]["labels"]["nvidia.com/mig.config"] = json!("all-1g.5gb");
    for user in [
        DAEMON,
        "system:node:n2",
        "system:serviceaccount:other:gpu-slicer-controller",
        "alice@example.com",
    ] {
        let request = request("UPDATE", "n2", user, Some("n2"));
        assert_eq!(
            admit(&controllers, &request, &anything, &old),
            Ok(()),
            "{user}"
        );
    }
    // And the node daemon may not write a target: that is the controller's.
    let own = request("UPDATE", "n2", DAEMON, Some("n2"));
    let refused = admit(&policy(), &own, &with_target(&old, "{}"), &old).unwrap_err();
    assert_eq!(
        refused,
        vec![
            "gpu-slicer's node daemon may change no annotation of its Node but gpu-slicer.io/mig-state"
        ]
    );
}
