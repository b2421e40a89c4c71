//! `gpu-slicer simulate` on the shipped traces: the outcomes docs/demand-mig.md
//! reports, and the messages a bad trace gets.

use serde_json::Value;

use super::run_cli;

const TRACES: &[&str] = &[
    "examples/simulate/shift-to-3g.yaml",
    "examples/simulate/mixed.yaml",
    "examples/simulate/h200-notebooks.yaml",
];

fn simulate_json(trace: &str) -> Value {
    let (code, stdout, stderr) = run_cli(&["simulate", trace, "--output", "json"]);
    assert_eq!(code, 0, "{trace}: {stderr}");
    serde_json::from_str(&stdout).expect("simulate --output json prints JSON")
}

fn summary<'a>(report: &'a Value, policy: &str) -> &'a Value {
    let run = report["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["policy"] == policy)
        .unwrap_or_else(|| panic!("no {policy} in the report"));
    &run["summary"]
}

#[test]
fn shipped_traces_show_per_instance_changes_at_least_as_good_and_never_disruptive() {
    for trace in TRACES {
        let report = simulate_json(trace);
        let per_instance = summary(&report, "per-instance");
        for policy in ["fixed", "whole-gpu", "per-instance"] {
            let s = summary(&report, policy);
            assert_eq!(s["disruptions"], 0, "{trace} {policy}");
            assert!(
                per_instance["pods_scheduled"].as_u64() >= s["pods_scheduled"].as_u64(),
                "{trace}: per-instance scheduled fewer pods than {policy}"
            );
        }
        assert_eq!(summary(&report, "fixed")["reconfigurations"], 0, "{trace}");
        assert!(
            per_instance["reconfigurations"].as_u64() > Some(0),
            "{trace}"
        );
    }
    let mixed = simulate_json("examples/simulate/mixed.yaml");
    let idle = |policy: &str, key: &str| summary(&mixed, policy)[key].as_f64().unwrap();
    for other in ["fixed", "whole-gpu"] {
        for key in ["idle_slice_hours", "idle_slice_hours_while_pending"] {
            assert!(
                idle("per-instance", key) < idle(other, key),
                "mixed: {key} of per-instance not below {other}'s"
            );
        }
    }
}

#[test]
fn text_output_prints_each_decision_and_the_table() {
    let (code, stdout, stderr) = run_cli(&[
        "simulate",
        "examples/simulate/shift-to-3g.yaml",
        "--policy",
        "per-instance",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("destroy [1g.5gb@"), "{stdout}");
    assert!(stdout.contains("create [3g.20gb@"), "{stdout}");
    assert!(stdout.contains("disruptions"), "{stdout}");
    assert!(
        !stdout.contains("\nfixed "),
        "only the policy asked for: {stdout}"
    );
}

#[test]
fn svg_draws_every_policy() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("mixed.svg");
    let (code, _, stderr) = run_cli(&[
        "simulate",
        "examples/simulate/mixed.yaml",
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg"), "{}", &text[..100.min(text.len())]);
    for policy in ["fixed", "whole-gpu", "per-instance"] {
        assert!(text.contains(policy), "no {policy} in the legend");
    }
    assert!(text.contains("Pending pods") && text.contains("Idle compute slices"));
}

fn simulate_text(yaml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("trace.yaml");
    std::fs::write(&file, yaml).unwrap();
    let (code, _, stderr) = run_cli(&["simulate", file.to_str().unwrap()]);
    (code, stderr)
}

const NODE: &str = "apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata:
    name: n1
    labels:
      node.kubernetes.io/instance-type: p4d.24xlarge
      nvidia.com/mig.config: all-3g.20gb
";

#[test]
fn bad_traces_say_what_to_fix() {
    let pod = |extra: &str| {
        format!(
            "{NODE}- apiVersion: v1
  kind: Pod
  metadata:
    name: p
{extra}  spec:
    containers:
    - name: c
      resources:
        limits:
          nvidia.com/mig-1g.5gb: 1
"
        )
    };
    let cases: &[(String, &str)] = &[
        (
            pod("    annotations:\n      gpu-slicer.io/simulate-arrival-seconds: soon\n"),
            "Pod default/p: annotation gpu-slicer.io/simulate-arrival-seconds: not a whole number of seconds",
        ),
        (
            pod("").replace("    containers:", "    nodeName: elsewhere\n    containers:"),
            "Pod default/p: spec.nodeName elsewhere is not a Node of the input",
        ),
        (
            pod("").replace("    containers:", "    nodeName: n1\n    containers:"),
            "Pod default/p runs on n1 but that node has no free instances left for 1 × nvidia.com/mig-1g.5gb",
        ),
        (
            NODE.replace("all-3g.20gb", "all-9g.99gb"),
            "Node n1: unknown MIG layout 'all-9g.99gb'",
        ),
        (
            NODE.replace("p4d.24xlarge", "p9.huge"),
            "Node n1: label node.kubernetes.io/instance-type=p9.huge: not an instance type",
        ),
        (
            NODE.replace(
                "      nvidia.com/mig.config: all-3g.20gb\n",
                "    annotations:\n      gpu-slicer.io/mig-state: '[{\"mig\": true, \"instances\": [{\"profile\": \"3g.20gb\", \"start\": 2}]}]'\n",
            ),
            "annotation gpu-slicer.io/mig-state: 1 GPU entries for a node of 8 GPUs",
        ),
        ("items: [".to_string(), "not valid YAML"),
    ];
    for (yaml, expected) in cases {
        let (code, stderr) = simulate_text(yaml);
        assert_eq!(code, 1, "{expected}: {stderr}");
        assert!(
            stderr.contains(expected),
            "expected '{expected}' in: {stderr}"
        );
        assert!(stderr.contains("trace.yaml"), "names the file: {stderr}");
    }
}

#[test]
fn a_missing_file_is_named() {
    let (code, _, stderr) = run_cli(&["simulate", "no/such/trace.yaml"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no/such/trace.yaml: no such file or directory"),
        "{stderr}"
    );
}

#[test]
fn a_replay_too_long_to_run_is_refused_with_what_to_change() {
    let (code, _, stderr) = run_cli(&[
        "simulate",
        "examples/simulate/mixed.yaml",
        "--step-seconds",
        "1",
        "--horizon-seconds",
        "31000000",
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("at most 1000000") && stderr.contains("raise --step-seconds"),
        "{stderr}"
    );
}

/// The smallest story: one A100 node described by GPU Feature Discovery's
/// labels and the per-GPU state annotation, a 1g held by a running pod, and
/// a 3g pending that only a change can serve.
#[test]
fn a_3g_is_cut_beside_a_running_1g_only_by_per_instance_changes() {
    let yaml = r#"apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata:
    name: gfd-node
    labels:
      nvidia.com/gpu.product: NVIDIA-A100-SXM4-40GB
      nvidia.com/gpu.count: "1"
    annotations:
      gpu-slicer.io/mig-state: '[{"mig": true, "instances": [{"profile": "1g.5gb", "start": 0}, {"profile": "1g.5gb", "start": 1}, {"profile": "1g.5gb", "start": 4}, {"profile": "1g.5gb", "start": 5}, {"profile": "1g.5gb", "start": 6}]}]'
- apiVersion: v1
  kind: Pod
  metadata:
    name: running
    namespace: team
  spec:
    nodeName: gfd-node
    containers:
    - name: c
      resources:
        limits: {nvidia.com/mig-1g.5gb: "1"}
  status: {phase: Running}
- apiVersion: v1
  kind: Pod
  metadata:
    name: wants-3g
    namespace: team
    annotations:
      gpu-slicer.io/simulate-arrival-seconds: "30"
      gpu-slicer.io/simulate-run-seconds: "600"
  spec:
    containers:
    - name: c
      resources:
        requests: {nvidia.com/mig-3g.20gb: "1"}
- apiVersion: v1
  kind: Pod
  metadata: {name: done}
  spec:
    containers:
    - name: c
      resources:
        limits: {nvidia.com/mig-1g.5gb: "1"}
  status: {phase: Succeeded}
"#;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("small.yaml");
    std::fs::write(&file, yaml).unwrap();
    let (code, stdout, stderr) = run_cli(&[
        "simulate",
        file.to_str().unwrap(),
        "--output",
        "json",
        "--min-free-age-seconds",
        "0",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["nodes"], 1);
    assert_eq!(report["pods"], 2, "the finished pod is left out");
    assert_eq!(summary(&report, "fixed")["pods_scheduled"], 0);
    let per_instance = summary(&report, "per-instance");
    assert_eq!(per_instance["pods_scheduled"], 1);
    assert_eq!(per_instance["disruptions"], 0);
    let runs = report["policies"].as_array().unwrap();
    let decisions = &runs.iter().find(|r| r["policy"] == "per-instance").unwrap()["decisions"];
    // The running pod holds the first 1g (slice 0): the 3g goes to slices
    // 4-7, destroying the three free 1g there.
    assert_eq!(
        decisions[0]["changes"][0]["destroy"],
        serde_json::json!(["1g.5gb@4", "1g.5gb@5", "1g.5gb@6"])
    );
    assert_eq!(
        decisions[0]["changes"][0]["create"],
        serde_json::json!(["3g.20gb@4"])
    );
    // Whole-GPU repartitioning leaves a GPU a pod runs on alone.
    assert_eq!(summary(&report, "whole-gpu")["pods_scheduled"], 0);
}
