//! Karpenter: generated overlays agree with the planner and with what the
//! daemon advertises; the linter finds every mistake of the published blog
//! NodePool and passes the shipped examples and docs/karpenter.md; the cost
//! planner ranks by price and prints its table's date.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::BIN;
use crate::common::{Daemon, kubelet, temp_dir, wait_for, write_config};
use gpu_slicer::karpenter::{self, lint, overlays};
use gpu_slicer_core::config::{Config, parse};
use gpu_slicer_core::gpu::{catalog, simulated};
use gpu_slicer_core::plan::plan;

const MIXED: &str = "version: v1\nflags:\n  migStrategy: mixed\n";
const TIME_SLICED_4: &str = "version: v1\nflags:\n  migStrategy: mixed\nsharing:\n  timeSlicing:\n    resources:\n      - name: nvidia.com/gpu\n        replicas: 4\n";

fn root() -> PathBuf {
    crate::repo_root()
}

fn config(text: &str) -> Config {
    parse(text, "test").unwrap()
}

/// Plan counts as overlay capacity, independently of `overlays`.
fn planned(instance: &str, layout: &str, config: &Config) -> BTreeMap<String, String> {
    let l = (layout != "all-disabled").then_some(layout);
    let inventory = simulated::from_instance(instance, l).unwrap();
    let p = plan(&inventory, config);
    assert_eq!(
        p.errors().count(),
        0,
        "{instance} {layout}: {:?}",
        p.diagnostics
    );
    let mut out: BTreeMap<String, String> = p
        .counts()
        .into_iter()
        .map(|(r, n)| (r, n.to_string()))
        .collect();
    out.entry("nvidia.com/gpu".into())
        .or_insert_with(|| "0".into());
    out
}

fn capacity_of(overlay: &serde_json::Value) -> BTreeMap<String, String> {
    overlay["spec"]["capacity"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn overlays_equal_the_plan_for_every_preset_and_layout() {
    let mut checked = 0;
    for text in [MIXED, TIME_SLICED_4] {
        let config = config(text);
        for instance in catalog::instances() {
            let model = instance.gpu_model().unwrap();
            for layout in catalog::layout_names(model) {
                let l = (layout != "all-disabled").then_some(layout.as_str());
                let request = overlays::Request {
                    nodepools: vec!["pool".into()],
                    instances: vec![instance],
                    layout: l,
                    config: &config,
                    config_name: None,
                };
                if layout == "all-enabled" {
                    // MIG on without instances: nothing to declare, and the
                    // generator says why instead of writing an empty overlay.
                    let err = overlays::overlays(&request).unwrap_err().to_string();
                    assert!(err.contains("no MIG devices configured"), "{err}");
                    continue;
                }
                let generated = overlays::overlays(&request).unwrap();
                // Through YAML and back, as kubectl would read it.
                let yaml = overlays::to_yaml(&generated, "header").unwrap();
                let docs = karpenter::parse_documents(&yaml, "generated").unwrap();
                assert_eq!(docs.len(), 1);
                let o = &docs[0].value;
                assert_eq!(o["apiVersion"], "karpenter.sh/v1alpha1");
                let keys: Vec<&str> = o["spec"]["requirements"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["key"].as_str().unwrap())
                    .collect();
                assert_eq!(
                    keys,
                    ["karpenter.sh/nodepool", "node.kubernetes.io/instance-type"]
                );
                assert_eq!(
                    capacity_of(o),
                    planned(instance.name, &layout, &config),
                    "{} {layout}",
                    instance.name
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "{checked}");
}

/// The daemon on the simulated backend registers exactly the overlay's
/// non-zero counts with the stand-in kubelet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_advertises_what_the_overlay_declares() {
    let cases = [
        ("p4d.24xlarge", "all-balanced", MIXED),
        ("p5.48xlarge", "all-1g.10gb", MIXED),
        ("p5e.48xlarge", "all-balanced", MIXED),
        ("p4de.24xlarge", "all-disabled", TIME_SLICED_4),
        ("g5.12xlarge", "all-disabled", TIME_SLICED_4),
    ];
    for (instance, layout, text) in cases {
        let dir = temp_dir();
        let config_path = write_config(dir.path(), text);
        let out = Command::new(BIN)
            .args(["karpenter", "overlays", "--nodepool", "p", "--config-file"])
            .arg(&config_path)
            .args([
                "--mig-config",
                layout,
                "--instance-type",
                instance,
                "--output",
                "json",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let generated: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        let want: BTreeMap<String, usize> = capacity_of(&generated[0])
            .into_iter()
            .map(|(k, v)| (k, v.parse().unwrap()))
            .filter(|(_, v)| *v > 0)
            .collect();
        let kubelet = kubelet(dir.path()).await;
        let mut daemon = Daemon::start(
            dir.path(),
            &[
                "--simulate",
                instance,
                "--mig-config",
                layout,
                "--config-file",
                config_path.to_str().unwrap(),
            ],
        );
        wait_for(&kubelet, &want).await;
        assert!(daemon.terminate().success());
        kubelet.shutdown().await;
    }
}

fn lint_paths(paths: &[PathBuf]) -> Vec<lint::Finding> {
    lint::lint_files(paths).unwrap()
}

fn fixture(name: &str) -> PathBuf {
    root()
        .join("crates/cli/tests/fixtures/karpenter")
        .join(name)
}

#[test]
fn lint_finds_every_mistake_of_the_blog_example() {
    let findings = lint_paths(&[
        fixture("blog-nodepool.yaml"),
        fixture("blog-ec2nodeclass.yaml"),
        fixture("blog-deployment.yaml"),
    ]);
    let has = |file: &str, path: &str, rule: &str| {
        findings
            .iter()
            .any(|f| f.file.ends_with(file) && f.path == path && f.rule == rule)
    };
    let pool = "blog-nodepool.yaml";
    // (mistake number in the reference, file, path, rule)
    let expected = [
        (
            1,
            pool,
            "spec.template.spec.requirements[0].values",
            "mig-on-non-mig-family",
        ),
        (
            2,
            pool,
            "spec.template.spec.requirements[1].values",
            "instance-size-with-dot",
        ),
        (
            3,
            pool,
            "spec.template.spec.requirements[4].key",
            "resource-as-requirement-key",
        ),
        (
            4,
            pool,
            "spec.template.metadata.labels[\"nvidia.com/mig.config\"]",
            "mig-config-label",
        ),
        (
            5,
            pool,
            "spec.limits[\"nvidia.com/mig-1g.10gb\"]",
            "slice-not-produced",
        ),
        (
            5,
            pool,
            "spec.limits[\"nvidia.com/mig-2g.20gb\"]",
            "slice-not-produced",
        ),
        (
            5,
            pool,
            "spec.limits[\"nvidia.com/mig-3g.40gb\"]",
            "slice-not-produced",
        ),
        (6, pool, "metadata.name", "no-overlay"),
        (
            7,
            pool,
            "spec.limits[\"nvidia.com/mig-1g.10gb\"]",
            "slice-limit-without-overlay",
        ),
        (
            7,
            pool,
            "spec.limits[\"nvidia.com/mig-2g.20gb\"]",
            "slice-limit-without-overlay",
        ),
        (
            7,
            pool,
            "spec.limits[\"nvidia.com/mig-3g.40gb\"]",
            "slice-limit-without-overlay",
        ),
        (8, pool, "spec.limits[\"nvidia.com/gpu\"]", "gpu-limit"),
        (9, pool, "spec.template.spec.taints", "gpu-pool-untainted"),
        (
            10,
            "blog-ec2nodeclass.yaml",
            "spec.amiFamily",
            "custom-ami-without-user-data",
        ),
        (
            11,
            "blog-ec2nodeclass.yaml",
            "spec.blockDeviceMappings[0].deviceName",
            "custom-ami-root-device",
        ),
        (
            13,
            "blog-deployment.yaml",
            "spec.template.spec.nodeSelector[\"nvidia.com/mig.config\"]",
            "selects-mig-config",
        ),
        (
            14,
            "blog-deployment.yaml",
            "spec.template.spec.containers[0].resources.limits[\"nvidia.com/mig-1g.10gb\"]",
            "unadvertised-request",
        ),
    ];
    for (n, file, path, rule) in expected {
        assert!(
            has(file, path, rule),
            "mistake {n}: no {rule} at {file} {path}\n{}",
            lint::render(&findings)
        );
    }
    // The messages say what happens and name the instance types.
    let family = findings
        .iter()
        .find(|f| f.rule == "mig-on-non-mig-family")
        .unwrap();
    assert!(
        family.message.contains("g5, p3") && family.message.contains("A10G"),
        "{}",
        family.message
    );
    let gpu = findings.iter().find(|f| f.rule == "gpu-limit").unwrap();
    assert!(gpu.message.contains("p3.8xlarge"), "{}", gpu.message);
    assert_eq!(
        findings.len(),
        expected.len(),
        "{}",
        lint::render(&findings)
    );

    // The NodePool alone (the issue's fixture) finds mistakes 1-9.
    let alone = lint_paths(&[fixture("blog-nodepool.yaml")]);
    assert!(
        alone
            .iter()
            .filter(|f| f.severity == lint::Severity::Error)
            .count()
            >= 6
    );
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn shipped_examples_and_docs_lint_without_errors() {
    let deploy = yaml_files(&root().join("deploy/karpenter"));
    for set in [
        deploy.clone(),
        [
            deploy.clone(),
            vec![root().join("deploy/static/gpu-slicer-config-manager.yaml")],
        ]
        .concat(),
        vec![root().join("docs/karpenter.md")],
    ] {
        let findings = lint_paths(&set);
        let errors: Vec<_> = findings
            .iter()
            .filter(|f| f.severity == lint::Severity::Error)
            .collect();
        assert!(errors.is_empty(), "{set:?}:\n{}", lint::render(&findings));
    }
    // The docs hold every object of a complete example, and the overlay is checked.
    let docs = karpenter::load_documents(&root().join("docs/karpenter.md")).unwrap();
    let kinds: Vec<&str> = docs.iter().map(|d| d.kind()).collect();
    for kind in [
        "NodePool",
        "EC2NodeClass",
        "NodeOverlay",
        "ConfigMap",
        "Pod",
    ] {
        assert!(kinds.contains(&kind), "docs/karpenter.md has no {kind}");
    }
    let classes: Vec<String> = docs
        .iter()
        .filter(|d| d.kind() == "EC2NodeClass")
        .map(|d| {
            d.value["spec"]["amiSelectorTerms"][0]["alias"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(
        classes.iter().any(|a| a.starts_with("al2023")),
        "{classes:?}"
    );
    assert!(
        classes.iter().any(|a| a.starts_with("bottlerocket")),
        "{classes:?}"
    );
    // A wrong count in the docs' overlay would be an error.
    let text = std::fs::read_to_string(root().join("docs/karpenter.md")).unwrap();
    let broken = text.replacen(
        "nvidia.com/mig-1g.10gb: \"16\"",
        "nvidia.com/mig-1g.10gb: \"14\"",
        1,
    );
    assert_ne!(
        broken, text,
        "docs/karpenter.md overlay changed: update this test"
    );
    let dir = temp_dir();
    let path = dir.path().join("broken.md");
    std::fs::write(&path, broken).unwrap();
    let findings = lint_paths(&[path]);
    assert!(
        findings
            .iter()
            .any(|f| f.rule == "overlay-capacity-mismatch" && f.severity == lint::Severity::Error),
        "{}",
        lint::render(&findings)
    );
}

#[test]
fn lint_checks_shared_names_and_requests_above_one() {
    let text = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: gpu-slicer-config}
data:
  config.yaml: |
    version: v1
    sharing:
      timeSlicing:
        renameByDefault: true
        failRequestsGreaterThanOne: true
        resources:
          - name: nvidia.com/gpu
            replicas: 4
---
apiVersion: v1
kind: Pod
metadata: {name: a}
spec:
  containers:
    - name: a
      image: x
      resources: {limits: {nvidia.com/gpu: 1}}
---
apiVersion: v1
kind: Pod
metadata: {name: b}
spec:
  containers:
    - name: b
      image: x
      resources: {limits: {nvidia.com/gpu.shared: 2}}
"#;
    let docs = karpenter::parse_documents(text, "mix.yaml").unwrap();
    let findings = lint::lint(&docs);
    let a = findings.iter().find(|f| f.object == "Pod/a").unwrap();
    assert_eq!(a.rule, "unadvertised-request");
    assert!(a.message.contains("nvidia.com/gpu.shared"), "{}", a.message);
    let b = findings.iter().find(|f| f.object == "Pod/b").unwrap();
    assert_eq!(b.rule, "request-greater-than-one");
    assert_eq!(
        b.path,
        "spec.containers[0].resources.limits[\"nvidia.com/gpu.shared\"]"
    );
    assert!(
        b.message
            .contains("maximum request size for shared resources is 1")
    );
}

use crate::run_cli as run;

#[test]
fn cli_lint_exit_status_and_json() {
    let (code, out, _) = run(&[
        "lint",
        "crates/cli/tests/fixtures/karpenter/blog-nodepool.yaml",
    ]);
    assert_ne!(code, 0);
    assert!(out.contains("error[instance-size-with-dot]"), "{out}");
    let (code, out, _) = run(&[
        "lint",
        "--output",
        "json",
        "crates/cli/tests/fixtures/karpenter/blog-nodepool.yaml",
    ]);
    assert_ne!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"] == "spec.template.spec.requirements[4].key"
                && f["severity"] == "error"
                && f["file"].as_str().unwrap().ends_with("blog-nodepool.yaml"))
    );
    // Warnings alone exit 0.
    let (code, out, _) = run(&["lint", "deploy/karpenter/nodepool-mig.yaml"]);
    assert_eq!(code, 0, "{out}");
    let (code, _, err) = run(&["lint", "no-such-file.yaml"]);
    assert_ne!(code, 0);
    assert!(err.contains("no-such-file.yaml"), "{err}");
}

#[test]
fn cli_overlays_from_a_nodepool_file() {
    let (code, out, err) = run(&[
        "karpenter",
        "overlays",
        "--nodepool-file",
        "deploy/karpenter/nodepool-mig.yaml",
        "--config-file",
        "deploy/static/gpu-slicer-config-manager.yaml",
    ]);
    assert_eq!(code, 0, "{err}");
    let docs = karpenter::parse_documents(&out, "out").unwrap();
    let names: Vec<&str> = docs.iter().map(|d| d.name()).collect();
    // Every MIG preset the pool allows, none of the others.
    assert_eq!(
        names,
        [
            "gpu-mig-balanced-p4d-24xlarge",
            "gpu-mig-balanced-p4de-24xlarge",
            "gpu-mig-balanced-p5-4xlarge",
            "gpu-mig-balanced-p5-48xlarge",
            "gpu-mig-balanced-p5e-48xlarge",
            "gpu-mig-balanced-p5en-48xlarge",
            "gpu-mig-balanced-p6-b200-48xlarge",
        ]
    );
    assert_eq!(
        docs[0].value["metadata"]["annotations"]["gpu-slicer.io/config-name"],
        "mig-mixed"
    );
    // The shipped overlays are what the command generates.
    let shipped = karpenter::load_documents(
        &root().join("deploy/karpenter/nodeoverlays-gpu-mig-balanced.yaml"),
    )
    .unwrap();
    let values = |d: &[karpenter::Document]| d.iter().map(|d| d.value.clone()).collect::<Vec<_>>();
    assert_eq!(values(&shipped), values(&docs));
    assert_eq!(capacity_of(&shipped[0].value), capacity_of(&docs[0].value));
    // Generated overlays lint clean next to their pool, and silence no-overlay.
    let dir = temp_dir();
    let path = dir.path().join("overlays.yaml");
    std::fs::write(&path, &out).unwrap();
    let findings = lint_paths(&[root().join("deploy/karpenter/nodepool-mig.yaml"), path]);
    assert!(
        findings
            .iter()
            .all(|f| f.severity != lint::Severity::Error && f.rule != "no-overlay"),
        "{}",
        lint::render(&findings)
    );

    let (code, _, err) = run(&[
        "karpenter",
        "overlays",
        "--nodepool",
        "x",
        "--instance-type",
        "p9.huge",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown instance type 'p9.huge'"), "{err}");
    let (code, _, err) = run(&[
        "karpenter",
        "overlays",
        "--nodepool",
        "x",
        "--mig-config",
        "all-1g.5gb",
        "--instance-type",
        "p5.48xlarge",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("all-1g.5gb"), "{err}");
}

#[test]
fn cli_plan_prices_and_workload() {
    let (code, out, err) = run(&[
        "plan",
        "--instance",
        "p4d.24xlarge",
        "--mig-config",
        "all-balanced",
    ]);
    assert_eq!(code, 0, "{err}");
    // Resource lines keep `<resource> <count> ...`; cost lines start with '#'.
    let counted: Vec<(String, usize)> = out
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect();
    assert_eq!(counted.len(), 3, "{out}");
    assert!(
        out.contains("# cost:  nvidia.com/mig-1g.5gb   $0.392 per slice-hour"),
        "{out}"
    );
    assert!(out.contains("price table dated 2026-07-20"), "{out}");

    let dir = temp_dir();
    let prices = dir.path().join("prices.yaml");
    std::fs::write(&prices, "date: 2026-09-02\nprices:\n  - {instance: p4d.24xlarge, usdPerHour: 7, source: test, date: 2026-09-02}\n").unwrap();
    let (code, out, _) = run(&[
        "plan",
        "--instance",
        "p4d.24xlarge",
        "--mig-config",
        "all-1g.5gb",
        "--prices",
        prices.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("$0.125 per slice-hour") && out.contains("dated 2026-09-02"),
        "{out}"
    );

    let workload = dir.path().join("w.yaml");
    std::fs::write(&workload, "- {name: asr, count: 40, slice: 1g.10gb}\n- {name: tts, count: 8, slice: 3g.40gb}\n- {name: notebooks, count: 6, sharedGpu: 1, memoryGiB: 8}\n").unwrap();
    let (code, out, err) = run(&["plan", "--workload", workload.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("dated 2026-07-20"), "{out}");
    assert!(out.contains("kind: NodeOverlay"), "{out}");
    let (code, out, _) = run(&[
        "plan",
        "--workload",
        workload.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["priceTableDate"], "2026-07-20");
    let mig = &v["groups"][0];
    let best = &mig["choices"][0];
    // 40 x 1g.10gb + 8 x 3g.40gb: one 80 GB node with all-balanced gives 16 + 8;
    // the cheapest is whatever costs least, and it covers the demand.
    let nodes = best["nodes"].as_u64().unwrap();
    for (r, n) in mig["demand"].as_object().unwrap() {
        assert!(best["perNode"][r].as_u64().unwrap() * nodes >= n.as_u64().unwrap());
        assert_eq!(
            best["limits"][r].as_str().unwrap().parse::<u64>().unwrap(),
            best["perNode"][r].as_u64().unwrap() * nodes
        );
    }
    let costs: Vec<f64> = mig["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["usdPerHour"].as_f64().unwrap())
        .collect();
    assert!(costs.windows(2).all(|w| w[0] <= w[1]), "{costs:?}");
}

/// Missing presets: every GPU family of Karpenter's AWS provider data that
/// had none (g5g, g6f, gr6f, g7, g7e, p6-b300) plans, is priced, and gets an
/// overlay with what gpu-slicer advertises. One row per family:
/// (instance, MIG layout, plan lines, overlay capacity).
#[test]
fn new_families_plan_and_get_overlays() {
    type Case = (
        &'static str,
        Option<&'static str>,
        &'static [&'static str],
        &'static [(&'static str, &'static str)],
    );
    let cases: &[Case] = &[
        (
            "g5g.16xlarge",
            None,
            &["nvidia.com/gpu      2  whole GPUs, 16384 MiB each, on 2 GPUs (NVIDIA T4G)"],
            &[("nvidia.com/gpu", "2")],
        ),
        (
            "g6f.large",
            None,
            &[
                "nvidia.com/gpu      1  whole GPUs, 2861 MiB each, on 1 GPU (NVIDIA L4)",
                "# note: g6f.large has a fractional GPU: 1/8 of an NVIDIA L4 as one vGPU, 2861 MiB (EC2's figure).",
            ],
            // Karpenter's docs' g6f overlay also sets nvidia.com/gpu: 1.
            &[("nvidia.com/gpu", "1")],
        ),
        (
            "gr6f.4xlarge",
            None,
            &["nvidia.com/gpu      1  whole GPUs, 11444 MiB each, on 1 GPU (NVIDIA L4)"],
            &[("nvidia.com/gpu", "1")],
        ),
        (
            "g7.24xlarge",
            Some("all-1g.16gb"),
            &[
                "nvidia.com/mig-1g.16gb      8  1g.16gb MIG slices, 16384 MiB each, on 4 GPUs (NVIDIA RTX PRO 4500 Blackwell Server Edition)",
            ],
            &[("nvidia.com/gpu", "0"), ("nvidia.com/mig-1g.16gb", "8")],
        ),
        (
            "g7e.2xlarge",
            Some("all-balanced"),
            &[
                "nvidia.com/mig-1g.24gb      2  1g.24gb MIG slices, 24576 MiB each, on 1 GPU (NVIDIA RTX PRO 6000 Blackwell Server Edition)",
                "nvidia.com/mig-2g.48gb      1  2g.48gb MIG slices, 49152 MiB each, on 1 GPU (NVIDIA RTX PRO 6000 Blackwell Server Edition)",
            ],
            &[
                ("nvidia.com/gpu", "0"),
                ("nvidia.com/mig-1g.24gb", "2"),
                ("nvidia.com/mig-2g.48gb", "1"),
            ],
        ),
        (
            "p6-b300.48xlarge",
            Some("all-balanced"),
            &[
                "nvidia.com/mig-1g.34gb      16  1g.34gb MIG slices, 33024 MiB each, on 8 GPUs (NVIDIA B300)",
                "nvidia.com/mig-3g.135gb      8  3g.135gb MIG slices, 133632 MiB each, on 8 GPUs (NVIDIA B300)",
            ],
            &[
                ("nvidia.com/gpu", "0"),
                ("nvidia.com/mig-1g.34gb", "16"),
                ("nvidia.com/mig-2g.67gb", "8"),
                ("nvidia.com/mig-3g.135gb", "8"),
            ],
        ),
    ];
    for &(instance, layout, lines, capacity) in cases {
        let mut args = vec!["plan", "--instance", instance];
        args.extend(layout.iter().flat_map(|l| ["--mig-config", l]));
        let (code, out, err) = run(&args);
        assert_eq!(code, 0, "{instance}: {err}");
        for line in lines {
            assert!(
                out.lines().any(|l| l.starts_with(line)),
                "{instance}: no line {line:?} in\n{out}"
            );
        }
        assert!(
            out.contains(&format!("# price: {instance} $"))
                && out.contains("Karpenter's AWS provider generated price table, 2026-07-20"),
            "{instance}: {out}"
        );
        let mut args = vec![
            "karpenter",
            "overlays",
            "--nodepool",
            "p",
            "--instance-type",
            instance,
        ];
        args.extend(layout.iter().flat_map(|l| ["--mig-config", l]));
        let (code, out, err) = run(&args);
        assert_eq!(code, 0, "{instance}: {err}");
        let docs = karpenter::parse_documents(&out, "out").unwrap();
        assert_eq!(docs.len(), 1, "{instance}");
        let want: BTreeMap<String, String> = capacity
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(capacity_of(&docs[0].value), want, "{instance}");
    }
    // No MIG on a fractional GPU or a T4G: plan says so and fails.
    let (code, _, err) = run(&[
        "plan",
        "--instance",
        "g6f.xlarge",
        "--mig-config",
        "all-balanced",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("g6f.xlarge has a fractional GPU: 1/8 of an NVIDIA L4 as one vGPU")
            && err.contains("It cannot be sliced with MIG"),
        "{err}"
    );
    let (code, _, err) = run(&[
        "plan",
        "--instance",
        "g5g.xlarge",
        "--mig-config",
        "all-balanced",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("g5g.xlarge has NVIDIA T4G (no MIG support)"),
        "{err}"
    );
    // RTX PRO 4500 has no all-balanced in mig-parted's config.
    let (code, _, err) = run(&[
        "plan",
        "--instance",
        "g7.2xlarge",
        "--mig-config",
        "all-balanced",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("valid layouts: all-disabled, all-enabled, all-1g.16gb, all-2g.32gb"),
        "{err}"
    );
}
