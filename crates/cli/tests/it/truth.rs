//! A command that reports an error exits non-zero, and says so: what a new
//! user sees for `plan` with errors, `lint` of a file with nothing to check,
//! the `none` layout, and `lint` of the project's own deploy files.

use crate::{repo_root, run_cli as run};

/// Defect: `plan --mig-config all-enabled` printed `error:` lines and exited 0.
#[test]
fn plan_with_errors_exits_non_zero() {
    let (code, out, err) = run(&[
        "plan",
        "--instance",
        "p4d.24xlarge",
        "--mig-config",
        "all-enabled",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.starts_with("(nothing to advertise)\n"), "{out}");
    assert!(
        err.starts_with("error: device 0 has no MIG devices configured"),
        "{err}"
    );
    assert!(
        err.trim_end().ends_with(
            "error: 8 errors above: this node would not advertise what the configuration asks for"
        ),
        "{err}"
    );
    // migStrategy single on a layout of several profiles: error lines, exit 1.
    let (code, _, err) = run(&[
        "plan",
        "--instance",
        "p4d.24xlarge",
        "--mig-config",
        "all-balanced",
        "--mig-strategy",
        "single",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with(
            "error: migStrategy single needs every GPU to have the same MIG configuration"
        ),
        "{err}"
    );
    assert!(
        err.contains("error above: this node would not advertise"),
        "{err}"
    );
    // A plan with no errors still exits 0.
    let (code, _, err) = run(&["plan", "--instance", "g5.xlarge"]);
    assert_eq!(code, 0, "{err}");
}

/// Defect: `--mig-config none` was documented as "MIG off" but rejected.
#[test]
fn none_means_mig_off_in_every_command() {
    let (code, out, err) = run(&["plan", "--instance", "p4d.24xlarge", "--mig-config", "none"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("nvidia.com/gpu      8  whole GPUs, 40960 MiB each"),
        "{out}"
    );
    let (code, out, err) = run(&[
        "karpenter",
        "overlays",
        "--nodepool",
        "gpu",
        "--instance-type",
        "p4d.24xlarge",
        "--mig-config",
        "none",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("kind: NodeOverlay"), "{out}");
    assert!(!out.contains("nvidia.com/mig-"), "{out}");
    // MIG off is a valid layout on a GPU without MIG, as all-disabled is.
    let (code, _, err) = run(&["plan", "--instance", "g5.xlarge", "--mig-config", "none"]);
    assert_eq!(code, 0, "{err}");
}

/// Defect: `lint /etc/passwd` said "0 errors, 0 warnings" and exited 0.
#[test]
fn lint_of_a_file_without_kubernetes_objects_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases: &[(&str, &str)] = &[
        ("passwd", "root:x:0:0:root:/root:/bin/bash\n"),
        ("empty.yaml", ""),
        ("list.yaml", "- a\n- b\n"),
    ];
    for (name, text) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        let path = path.to_str().expect("utf-8");
        let (code, out, err) = run(&["lint", path]);
        assert_eq!(code, 1, "{name}: {out}{err}");
        assert_eq!(
            out,
            format!(
                "{path}\n  error[no-kubernetes-object]: holds no Kubernetes object (a mapping with apiVersion and kind) \
                 and no gpu-slicer config (version: v1), so nothing was checked; pass Kubernetes manifests or gpu-slicer configs\n\
                 1 error, 0 warnings\n"
            ),
            "{name}"
        );
    }
}

/// The project's own deploy files pass its own lint: the Karpenter pools
/// with the config manager's ConfigMap (the ConfigMap their
/// `nvidia.com/device-plugin.config` labels select from), and each static
/// config on its own.
#[test]
fn the_projects_deploy_files_lint_clean() {
    let root = repo_root();
    let mut pools: Vec<String> = std::fs::read_dir(root.join("deploy/karpenter"))
        .expect("deploy/karpenter")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.to_str().expect("utf-8").to_string())
        .collect();
    pools.sort();
    assert!(pools.len() >= 4, "{pools:?}");
    let mut args = vec!["lint".to_string()];
    args.extend(pools.iter().cloned());
    args.push("deploy/static/gpu-slicer-config-manager.yaml".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("\n0 errors, ") || out.starts_with("0 errors, "),
        "{out}"
    );

    // The MIG Manager DaemonSet with the ConfigMap its comment names.
    let (code, out, err) = run(&[
        "lint",
        "deploy/static/gpu-slicer-mig-manager.yaml",
        "deploy/static/configs/mig-mixed.yaml",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with("0 errors, 0 warnings\n"), "{out}");

    for entry in std::fs::read_dir(root.join("deploy/static/configs")).expect("configs") {
        let path = entry.expect("entry").path();
        let path = path.to_str().expect("utf-8");
        let (code, out, err) = run(&["lint", path]);
        assert_eq!(code, 0, "{path}: {out}{err}");
        assert!(out.ends_with("0 errors, 0 warnings\n"), "{path}: {out}");
    }

    // The pools with a single-config ConfigMap say which ConfigMap they need.
    let (code, out, _) = run(&[
        "lint",
        "deploy/karpenter/nodepool-mig.yaml",
        "deploy/static/configs/mig-mixed.yaml",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("lint the pool with that ConfigMap")
            && out.contains("gpu-slicer-config-manager.yaml"),
        "{out}"
    );
}

/// `none` is MIG off on gpu-slicer's command line only: as a NodePool's
/// `nvidia.com/mig.config` label MIG Manager has no such layout and fails.
#[test]
fn a_pool_labelled_mig_config_none_is_an_error() {
    let root = repo_root();
    let pool = std::fs::read_to_string(root.join("deploy/karpenter/nodepool-mig.yaml"))
        .expect("nodepool-mig.yaml");
    assert!(
        pool.contains("nvidia.com/mig.config: all-balanced"),
        "{pool}"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("pool.yaml");
    std::fs::write(
        &path,
        pool.replace(
            "nvidia.com/mig.config: all-balanced",
            "nvidia.com/mig.config: none",
        ),
    )
    .expect("write");
    let (code, out, err) = run(&[
        "lint",
        path.to_str().expect("utf-8"),
        "deploy/static/gpu-slicer-config-manager.yaml",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(
            "error[mig-config-none]: nvidia.com/mig.config=none is not a layout of MIG Manager's config (`none` is only \
             gpu-slicer's command-line alias): MIG Manager would set nvidia.com/mig.config.state=failed and leave the GPUs \
             as they are. Write all-disabled for MIG off, or remove the label"
        ),
        "{out}"
    );
    assert!(out.contains("\n1 error, "), "only that error: {out}");
}

/// Defect: a file too large or with two documents where one is expected
/// printed the YAML parser's internals (`budget breached: Nodes { nodes:
/// 250001 }`, `use from_str_multiple`) with a source snippet of `<input>`.
#[test]
fn yaml_limits_and_extra_documents_are_said_in_words() {
    let dir = tempfile::tempdir().expect("temp dir");
    let huge = dir.path().join("huge.yaml");
    let mut text = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata:\n");
    for i in 0..130_000 {
        text.push_str(&format!("  k{i}: v\n"));
    }
    std::fs::write(&huge, text).expect("write");
    let huge = huge.to_str().expect("utf-8");
    let (code, out, err) = run(&["lint", huge]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        err,
        format!(
            "error: {huge}: not valid YAML: the file holds more than 250000 YAML values (scalars, \
             lists and mappings), the most gpu-slicer reads from one file: split it into smaller \
             files; fix the YAML (or pass only Kubernetes manifests)\n"
        )
    );

    let two = dir.path().join("two.yaml");
    std::fs::write(
        &two,
        "gpus:\n  - model: A100-40GB\n---\ngpus:\n  - model: T4\n",
    )
    .expect("write");
    let two = two.to_str().expect("utf-8");
    let second = "a second YAML document starts at line 4 (after `---`), but this file holds \
                  one: remove the separator or put each document in its own file";
    for (args, want) in [
        (
            vec!["plan", "--instance", two],
            format!("error: {two}: invalid topology file: {second}\n"),
        ),
        (
            vec!["plan", "--instance", "g5.xlarge", "--config-file", two],
            format!("error: unable to load config: {two}: {second}\n"),
        ),
        (
            vec!["plan", "--workload", two],
            format!(
                "error: {two}: {second}; expected a list of {{name, count, slice: \"1g.10gb\"}} \
                 or {{name, count, sharedGpu: 1, memoryGiB: 8}}\n"
            ),
        ),
    ] {
        let (code, out, err) = run(&args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert_eq!(err, want, "{args:?}");
    }

    // A syntax error is one line: no snippet.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "date: 2026-01-01\nprices: [\n").expect("write");
    let bad = bad.to_str().expect("utf-8");
    let (code, _, err) = run(&["plan", "--instance", "g5.xlarge", "--prices", bad]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err,
        format!(
            "error: {bad}: not a price table: unclosed bracket '[' at line 2, column 9; expected \
             `date:` and `prices:` with `instance`, `usdPerHour`, `source` and `date` per entry\n"
        )
    );
}

/// Defect: `lint DIR` said `Is a directory (os error 21)`, and `plan
/// --instance DIR` called a directory an unknown instance type.
#[test]
fn a_directory_where_a_file_is_expected_is_named_as_such() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().to_str().expect("utf-8");
    let cases: [(Vec<&str>, String); 4] = [
        (
            vec!["lint", d],
            format!(
                "error: cannot read {d}: it is a directory, not a file; give the files in it (e.g. {d}/*.yaml)\n"
            ),
        ),
        (
            vec!["plan", "--instance", d],
            format!("error: cannot read topology file {d}: it is a directory, not a file\n"),
        ),
        (
            vec!["plan", "--instance", "g5.xlarge", "--config-file", d],
            format!(
                "error: unable to load config: {d}: unable to read config file: it is a directory, not a file\n"
            ),
        ),
        (
            vec!["plan", "--instance", "g5.xlarge", "--prices", d],
            format!(
                "error: cannot read the price file {d}: it is a directory, not a file; check --prices\n"
            ),
        ),
    ];
    for (args, want) in cases {
        let (code, out, err) = run(&args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert_eq!(err, want, "{args:?}");
    }
    let missing = format!("{d}/missing.yaml");
    let (code, _, err) = run(&["lint", &missing]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err,
        format!(
            "error: cannot read {missing}: no such file or directory; check the path and permissions\n"
        )
    );
}

/// Defect: `demo` said "all 1 resources registered".
#[test]
fn demo_counts_resources_in_english() {
    let (code, out, err) = run(&["demo"]);
    assert_eq!(code, 0, "{out}{err}");
    let counts: Vec<&str> = out
        .lines()
        .filter_map(|l| {
            l.split(" registered and listed in ")
                .next()
                .filter(|_| l.contains(" registered and listed in "))
        })
        .collect();
    // p4d.24xlarge all-balanced: 1g, 2g and 3g slices; then time-slicing: nvidia.com/gpu.
    assert_eq!(counts, ["all 3 resources", "the 1 resource"], "{out}");
}

/// `demo` and `plan` take the daemon's flags that change what they show,
/// and refuse the rest rather than accept and ignore them.
#[test]
fn plan_and_demo_take_only_the_flags_they_use() {
    for (args, flag) in [
        (
            vec!["plan", "--instance", "g5.xlarge", "--kubelet-socket", "x"],
            "--kubelet-socket",
        ),
        (
            vec!["plan", "--instance", "g5.xlarge", "--driver-root", "/"],
            "--driver-root",
        ),
        (
            vec![
                "plan",
                "--instance",
                "g5.xlarge",
                "--device-list-strategy",
                "cdi-cri",
            ],
            "--device-list-strategy",
        ),
        (
            vec!["demo", "--metrics-address", "127.0.0.1:9401"],
            "--metrics-address",
        ),
        (vec!["demo", "--fail-on-init-error"], "--fail-on-init-error"),
        (vec!["demo", "--mps-root", "/run/nvidia/mps"], "--mps-root"),
        (
            vec!["lint", "--mig-strategy", "mixed", "x.yaml"],
            "--mig-strategy",
        ),
    ] {
        let (code, out, err) = run(&args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(
            err.starts_with(&format!("error: unexpected argument '{flag}' found")),
            "{args:?}: {err}"
        );
    }
    // What plan --instance uses and --workload does not, and the reverse.
    let (code, _, err) = run(&[
        "plan",
        "--workload",
        "w.yaml",
        "--mig-config",
        "all-balanced",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with(
            "error: the argument '--workload <FILE>' cannot be used with '--mig-config <NAME>'"
        ),
        "{err}"
    );
    for flag in ["--config-file", "--mig-strategy", "--mps-root"] {
        let (code, _, err) = run(&["plan", "--workload", "w.yaml", flag, "x"]);
        assert_eq!(code, 2, "{flag}: {err}");
        assert_eq!(
            err,
            format!(
                "error: the argument '--workload <FILE>' cannot be used with '{flag}' (it is for --instance)\n"
            )
        );
    }
    let (code, _, err) = run(&["plan", "--instance", "g5.xlarge", "--nodepool", "gpu"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with("error: the argument '--instance <INSTANCE|TOPOLOGY.yaml>' cannot be used with '--nodepool <NAME>'"),
        "{err}"
    );
    // Without --instance or --workload, plan names both.
    let (code, _, err) = run(&["plan"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with(
            "error: the following required arguments were not provided:\n  <--instance <INSTANCE|TOPOLOGY.yaml>|--workload <FILE>>"
        ),
        "{err}"
    );

    // demo shows what the device-list and device-id strategies give a container.
    let (code, out, err) = run(&[
        "demo",
        "--instance",
        "g5.xlarge",
        "--device-list-strategy",
        "cdi-annotations",
        "--device-id-strategy",
        "index",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("    annotation cdi.k8s.io/")
            && out.contains("=k8s.device-plugin.nvidia.com/gpu=0\n"),
        "{out}"
    );
    assert!(!out.contains("env NVIDIA_VISIBLE_DEVICES"), "{out}");
}

/// Defect: `demo --config-file` with MPS sharing waited 20 s, then printed
/// the stand-in kubelet's Rust structures (`Capacity { capacity: 2, .. }`).
#[test]
fn demo_refuses_mps_sharing_up_front() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("mps.yaml");
    std::fs::write(
        &path,
        "version: v1\nflags: {mpsRoot: /run/nvidia/mps}\nsharing:\n  mps:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 2\n",
    )
    .expect("write");
    let path = path.to_str().expect("utf-8");
    let started = std::time::Instant::now();
    let (code, out, err) = run(&["demo", "--instance", "g5.xlarge", "--config-file", path]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(
        err,
        format!(
            "error: {path}: the demo cannot show MPS sharing: its replicas need NVIDIA's MPS control daemon \
             (nvidia-cuda-mps-control) on a GPU node. `gpu-slicer plan --instance g5.xlarge --config-file {path} \
             --mps-root DIR` prints what the node would advertise\n"
        )
    );
    // plan takes the config, with --mps-root as the daemon would.
    let (code, out, err) = run(&["plan", "--instance", "g5.xlarge", "--config-file", path]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("nvidia.com/gpu      2  whole GPUs"),
        "{out}"
    );
}

/// Defect: `gpu-slicer demo | head -2` panicked ("failed printing to
/// stdout: Broken pipe") once the reader was gone.
#[test]
fn demo_into_a_closed_pipe_finishes_quietly() {
    let mut child = std::process::Command::new(crate::BIN)
        .args(["demo", "--instance", "g5.xlarge"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run gpu-slicer demo");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

/// Defects: a workload file's type errors named Rust types (`expected u32`,
/// `expected struct WorkloadItem`); a slice no GPU has, or pods no
/// instance type holds, printed "no priced instance type provides this" and
/// exited 0.
#[test]
fn plan_workload_says_what_is_wrong_and_fails_when_pods_cannot_be_placed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let hint = "expected a list of {name, count, slice: \"1g.10gb\"} or {name, count, sharedGpu: 1, memoryGiB: 8}";
    let cases: [(&str, &str, String); 4] = [
        (
            "count.yaml",
            "- {name: a, count: many, slice: 1g.10gb}\n",
            format!(
                "pods[0]: invalid type: string \"many\", expected a whole number (0 or more); {hint}"
            ),
        ),
        (
            "negative.yaml",
            "- {name: a, count: -2, slice: 1g.10gb}\n",
            format!(
                "pods[0]: invalid value: integer `-2`, expected a whole number (0 or more); {hint}"
            ),
        ),
        (
            "string.yaml",
            "- a\n",
            format!("pods[0] is the string \"a\", not a pod; {hint}"),
        ),
        (
            "number.yaml",
            "pods: 3\n",
            format!("the number 3 is not a list; {hint}"),
        ),
    ];
    for (name, text, why) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        let path = path.to_str().expect("utf-8");
        let (code, out, err) = run(&["plan", "--workload", path]);
        assert_eq!(code, 1, "{name}: {out}{err}");
        assert_eq!(err, format!("error: {path}: {why}\n"), "{name}");
    }

    let path = dir.path().join("unknown.yaml");
    std::fs::write(&path, "- {name: a, count: 2, slice: 1g.11gb}\n").expect("write");
    let path = path.to_str().expect("utf-8");
    let (code, _, err) = run(&["plan", "--workload", path]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "error: {path}: pod 'a' asks for slice '1g.11gb', which is no MIG profile of any GPU; MIG profiles: 1g.5gb, 1g.5gb.me, 1g.10gb, "
        )),
        "{err}"
    );

    // A's 1g.5gb and 7g.40gb are in no one named layout: printed, then an error.
    let path = dir.path().join("apart.yaml");
    std::fs::write(
        &path,
        "- {name: a, count: 2, slice: 1g.5gb}\n- {name: b, count: 1, slice: 7g.40gb}\n",
    )
    .expect("write");
    let path = path.to_str().expect("utf-8");
    let why = "no instance type of the pods' arch has a named MIG layout (all-<profile>, all-balanced) \
               with every slice they ask for, and a NodePool has one layout: rank such slices in separate files";
    let (code, out, err) = run(&["plan", "--workload", path]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(&format!("   no instance type provides this: {why}\n")),
        "{out}"
    );
    assert_eq!(
        err,
        format!("error: no instance type holds the pods of pool 'gpu-slices-mig': {why}\n")
    );
    let (code, out, _) = run(&["plan", "--workload", path, "--output", "json"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("\"choices\": []"), "{out}");
}

/// Writes `text` to `name` in a fresh temporary directory (kept alive by
/// the returned guard) and gives the path.
fn file(name: &str, text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write");
    let path = path.to_str().expect("utf-8").to_string();
    (dir, path)
}

const TIME_SLICING_4: &str = "version: v1\nsharing:\n  timeSlicing:\n    resources:\n      \
     - name: nvidia.com/gpu\n        replicas: 4\n";

/// Defect (issue 25): a time-slicing config without migStrategy on a MIG
/// layout printed 32 × nvidia.com/gpu with a price, 8 warnings, exit 0, and
/// `demo` admitted a pod onto it: devices no workload can use.
#[test]
fn a_plan_whose_devices_cannot_be_used_is_an_error() {
    let (_dir, ts4) = file("ts4.yaml", TIME_SLICING_4);
    let (code, out, err) = run(&[
        "plan",
        "--instance",
        "p4d.24xlarge",
        "--mig-config",
        "all-balanced",
        "--config-file",
        &ts4,
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(
            "error: GPUs 0, 1, 2, 3, 4, 5, 6, 7 have MIG enabled but the config's migStrategy is none: \
             they would be advertised whole, and no workload can run on a MIG-enabled GPU without its MIG devices. \
             Set flags.migStrategy: mixed (or single) in the config, or pass --mig-strategy mixed"
        ),
        "{err}"
    );
    assert!(
        err.trim_end().ends_with(
            "error: 1 error above: this node would not advertise what the configuration asks for"
        ),
        "{err}"
    );
    let (code, out, err) = run(&["demo", "--instance", "p4d.24xlarge", "--config-file", &ts4]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(!out.contains("Pods admitted"), "{out}");
    assert!(
        err.starts_with(
            "error: the demo would admit pods onto devices they cannot use: GPUs 0, 1,"
        ),
        "{err}"
    );
    // The same config with MIG off is a good plan.
    let (code, out, err) = run(&["plan", "--instance", "g5.48xlarge", "--config-file", &ts4]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("nvidia.com/gpu     32  whole GPUs"),
        "{out}"
    );
}

/// Defect (issue 25): without --config-file, plan silently assumed
/// `mixed`, and its help did not say so. Every assumption is printed.
#[test]
fn plan_prints_what_it_assumes() {
    let (code, out, err) = run(&[
        "plan",
        "--instance",
        "p4d.24xlarge",
        "--mig-config",
        "all-balanced",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(
            "\n# assumed: migStrategy mixed: MIG is enabled and neither --config-file nor --mig-strategy \
             (MIG_STRATEGY) chose a strategy"
        ),
        "{out}"
    );
    let (_, json, _) = run(&[
        "plan",
        "--instance",
        "p4d.24xlarge",
        "--mig-config",
        "all-balanced",
        "--output",
        "json",
    ]);
    let value: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert!(
        value["assumptions"][0]
            .as_str()
            .is_some_and(|a| a.starts_with("migStrategy mixed")),
        "{json}"
    );
    // A chosen strategy is not an assumption.
    let (_, out, _) = run(&[
        "plan",
        "--instance",
        "p4d.24xlarge",
        "--mig-config",
        "all-balanced",
        "--mig-strategy",
        "mixed",
    ]);
    assert!(!out.contains("# assumed"), "{out}");
    for command in ["plan", "demo"] {
        let (_, help, _) = run(&[command, "--help"]);
        assert!(
            help.contains("migStrategy mixed (NVIDIA's default, none, would advertise the MIG-enabled GPUs whole"),
            "{command}: {help}"
        );
    }
}

/// Defect (issue 25): `plan`/`demo --config-file` of the project's own
/// ConfigMaps failed with "unknown key 'apiVersion'", while `lint` and
/// `karpenter overlays` took them.
#[test]
fn plan_and_demo_take_configmaps() {
    let (code, out, err) = run(&[
        "plan",
        "--instance",
        "g5.48xlarge",
        "--config-file",
        "deploy/static/configs/time-slicing.yaml",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("nvidia.com/gpu     32  whole GPUs, 23028 MiB each, 4 time-slicing"),
        "{out}"
    );
    // Several configs: the one NVIDIA's config-manager picks, said; or the named one.
    let (code, out, err) = run(&[
        "plan",
        "--instance",
        "p4d.24xlarge",
        "--mig-config",
        "all-disabled",
        "--config-file",
        "deploy/static/gpu-slicer-config-manager.yaml",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(
            "# assumed: config 'default' of deploy/static/gpu-slicer-config-manager.yaml (it holds "
        ),
        "{out}"
    );
    let (code, out, err) = run(&[
        "plan",
        "--instance",
        "g5.48xlarge",
        "--config-file",
        "deploy/static/gpu-slicer-config-manager.yaml",
        "--config-name",
        "time-slicing-4",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("nvidia.com/gpu     32"), "{out}");
    assert!(!out.contains("# assumed"), "{out}");
    let (code, _, err) = run(&[
        "plan",
        "--instance",
        "g5.48xlarge",
        "--config-file",
        "deploy/static/gpu-slicer-config-manager.yaml",
        "--config-name",
        "nope",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("has no config named 'nope' (it has: "),
        "{err}"
    );
    let (code, out, err) = run(&[
        "demo",
        "--instance",
        "g5.xlarge",
        "--config-file",
        "deploy/static/configs/time-slicing.yaml",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("nvidia.com/gpu: 4"), "{out}");
}

const POOL: &str = "apiVersion: karpenter.sh/v1
kind: NodePool
metadata:
  name: NAME
spec:
  template:
    metadata:
      labels: {nvidia.com/device-plugin.config: CONFIG}
    spec:
      nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: CLASS}
      requirements:
        - {key: karpenter.k8s.aws/instance-family, operator: In, values: [FAMILIES]}
      taints: [{key: nvidia.com/gpu, effect: NoSchedule}]
";

fn pool(name: &str, config: &str, class: &str, families: &str) -> String {
    POOL.replace("NAME", name)
        .replace("CONFIG", config)
        .replace("CLASS", class)
        .replace("FAMILIES", families)
}

fn configmap(key: &str, config: &str) -> String {
    let indented: String = config.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: gpu-slicer-configs}}\ndata:\n  {key}: |\n{indented}"
    )
}

/// Defect (issue 25): lint dropped plan errors (`.ok()`): a config the
/// daemon refuses on every node linted with 0 errors.
#[test]
fn lint_reports_configs_the_daemon_refuses() {
    let huge = TIME_SLICING_4.replace("replicas: 4", "replicas: 1000000000");
    let twice = format!("{TIME_SLICING_4}      - name: nvidia.com/gpu\n        replicas: 2\n");
    for (case, config) in [("huge", huge), ("twice", twice)] {
        let text = format!(
            "{}---\n{}",
            pool("gpu-ts", case, "gpu-al2023", "g5"),
            configmap(case, &config)
        );
        let (_dir, path) = file("pool.yaml", &text);
        let (code, out, err) = run(&["lint", &path]);
        assert_eq!(code, 1, "{case}: {out}{err}");
        assert!(
            out.contains("error[config-refused]: on g5.xlarge")
                || out.contains("error[config-invalid]"),
            "{case}: {out}"
        );
    }
    let huge = TIME_SLICING_4.replace("replicas: 4", "replicas: 1000000000");
    let text = format!(
        "{}---\n{}",
        pool("gpu-ts", "huge", "c", "g5"),
        configmap("huge", &huge)
    );
    let (_dir, path) = file("pool.yaml", &text);
    let (_, out, _) = run(&["lint", &path]);
    assert!(
        out.contains("more than the 4194304 bytes a kubelet accepts in one ListAndWatch message"),
        "{out}"
    );
}

/// Defect (issue 25): lint missed what the API server rejects and a
/// nodeClassRef to a missing class; `karpenter overlays` on such a pool
/// exited 0 with invalid object names, and dropped a MIG pool's types.
#[test]
fn lint_and_overlays_refuse_what_the_api_server_rejects() {
    let broken = pool("Broken_Pool", "default", "missing-class", "g5")
        .replace("      taints:", "      expireAfter: 30days\n      taints:")
        + "  disruption:\n    consolidationPolicy: WhenIdle\n";
    let (_dir, path) = file("broken.yaml", &broken);
    let (code, out, err) = run(&["lint", &path, "deploy/karpenter/ec2nodeclass-al2023.yaml"]);
    assert_eq!(code, 1, "{out}{err}");
    for needle in [
        "NodePool/Broken_Pool at metadata.name\n  error[api-server-rejects]: 'Broken_Pool' is not a valid object name",
        "e.g. 'broken-pool'",
        "at spec.disruption.consolidateAfter\n  error[api-server-rejects]: karpenter.sh/v1 requires consolidateAfter",
        "at spec.disruption.consolidationPolicy\n  error[api-server-rejects]: consolidationPolicy 'WhenIdle' is not one of WhenEmpty, WhenEmptyOrUnderutilized",
        "at spec.template.spec.expireAfter\n  error[api-server-rejects]: '30days' is not a Karpenter duration",
        "error[nodeclass-missing]: EC2NodeClass 'missing-class' is not in these files (they define gpu-al2023)",
    ] {
        assert!(out.contains(needle), "{needle}\n{out}");
    }
    let (code, out, err) = run(&["karpenter", "overlays", "--nodepool-file", &path]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.starts_with("error: NodePool Broken_Pool would be rejected by the API server, so no overlay is generated for it: metadata.name: 'Broken_Pool' is not a valid object name"),
        "{err}"
    );
    let (code, _, err) = run(&[
        "karpenter",
        "overlays",
        "--nodepool",
        "Broken_Pool",
        "--instance-type",
        "g5.xlarge",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("'Broken_Pool' is not a valid object name"),
        "{err}"
    );

    // A MIG pool whose types do not all have the layout: refused, named.
    let mixed = pool("gpu-mig", "default", "gpu-al2023", "p4d, p5");
    let (_dir, path) = file("mixed.yaml", &mixed);
    let (code, out, err) = run(&[
        "karpenter",
        "overlays",
        "--nodepool-file",
        &path,
        "--mig-config",
        "all-1g.5gb",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("NodePool gpu-mig can launch p5.4xlarge, p5.48xlarge, whose GPUs have no MIG layout 'all-1g.5gb'"),
        "{err}"
    );
}

/// Defect (issue 25): regenerating the overlays as the shipped overlay's
/// comment says, then linting them with the shipped file, reported an
/// overlay-conflict between two documents of one object.
#[test]
fn regenerated_overlays_do_not_conflict_with_the_shipped_one() {
    let (code, generated, err) = run(&[
        "karpenter",
        "overlays",
        "--nodepool-file",
        "deploy/karpenter/nodepool-mig.yaml",
        "--config-file",
        "deploy/static/gpu-slicer-config-manager.yaml",
    ]);
    assert_eq!(code, 0, "{err}");
    let (_dir, path) = file("overlays.yaml", &generated);
    let (code, out, err) = run(&[
        "lint",
        "deploy/karpenter/nodepool-mig.yaml",
        "deploy/karpenter/nodeoverlays-gpu-mig-balanced.yaml",
        &path,
        "deploy/karpenter/ec2nodeclass-al2023.yaml",
        "deploy/static/gpu-slicer-config-manager.yaml",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    for rule in [
        "overlay-conflict",
        "overlay-same-name",
        "overlay-coverage",
        "no-overlay",
    ] {
        assert!(!out.contains(rule), "{rule}: {out}");
    }
    // Overlays of one name with other specs are one object: said, once.
    let edited = generated.replacen(
        "nvidia.com/mig-1g.5gb: \"16\"",
        "nvidia.com/mig-1g.5gb: \"15\"",
        1,
    );
    let (_dir2, edited) = file("edited.yaml", &edited);
    let (_, out, _) = run(&[
        "lint",
        "deploy/karpenter/nodepool-mig.yaml",
        "deploy/karpenter/nodeoverlays-gpu-mig-balanced.yaml",
        &edited,
        "deploy/static/gpu-slicer-config-manager.yaml",
    ]);
    assert!(!out.contains("overlay-conflict"), "{out}");
    assert_eq!(out.matches("warning[overlay-same-name]: NodeOverlay gpu-mig-balanced-p4d-24xlarge is also defined in deploy/karpenter/nodeoverlays-gpu-mig-balanced.yaml").count(), 1, "{out}");
}

/// Defects (issue 25): `--mig-strategy mixd` did not list the valid values;
/// `plan --replicas` got "a similar argument exists: '--prices'".
#[test]
fn flag_mistakes_get_useful_answers() {
    let (code, _, err) = run(&[
        "plan",
        "--instance",
        "p4d.24xlarge",
        "--mig-strategy",
        "mixd",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with("error: invalid value 'mixd' for '--mig-strategy <STRATEGY>'\n  [possible values: none, single, mixed]"),
        "{err}"
    );
    let (code, _, err) = run(&["demo", "--mig-strategy", "singel"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("[possible values: none, single, mixed]"),
        "{err}"
    );
    let (code, _, err) = run(&["plan", "--instance", "p4d.24xlarge", "--replicas", "3"]);
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("--prices"), "{err}");
    assert!(
        err.contains("tip: --replicas is not a flag: it is the config file's sharing.timeSlicing.resources[].replicas"),
        "{err}"
    );
    assert!(
        err.contains("tip: 'gpu-slicer plan --help' lists the arguments"),
        "{err}"
    );
    assert!(err.contains("Usage: gpu-slicer plan [OPTIONS]"), "{err}");
    // A likely typo keeps clap's suggestion.
    let (code, _, err) = run(&[
        "plan",
        "--instance",
        "p4d.24xlarge",
        "--mig-stratgy",
        "mixed",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("tip: a similar argument exists: '--mig-strategy'"),
        "{err}"
    );
}

/// Defect (issue 25): `lint -` could not read standard input.
#[test]
fn lint_reads_standard_input() {
    use std::io::Write as _;
    let mut child = std::process::Command::new(crate::BIN)
        .args(["lint", "-"])
        .current_dir(repo_root())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let text = pool("Broken_Pool", "default", "c", "g5");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.starts_with("(standard input) (document 1) NodePool/Broken_Pool at metadata.name"),
        "{stdout}"
    );
    // Nothing to check on standard input is said as for a file.
    let out = std::process::Command::new(crate::BIN)
        .args(["lint", "-"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(
            "(standard input)\n  error[no-kubernetes-object]: holds no Kubernetes object"
        ),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Defect (issue 25): a YAML alias bomb printed the parser's internals
/// (`budget breached: Nodes { nodes: 250001 }`).
#[test]
fn an_alias_bomb_gets_a_plain_message() {
    let mut bomb = String::from(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
    );
    for i in 1..7 {
        let uses = vec![format!("*a{}", i - 1); 10].join(", ");
        bomb.push_str(&format!("a{i}: &a{i} [{uses}]\n"));
    }
    let (_dir, path) = file("bomb.yaml", &bomb);
    for args in [
        vec!["lint", path.as_str()],
        vec![
            "plan",
            "--instance",
            "g5.xlarge",
            "--config-file",
            path.as_str(),
        ],
        vec![
            "karpenter",
            "overlays",
            "--nodepool",
            "x",
            "--config-file",
            path.as_str(),
        ],
    ] {
        let (code, _, err) = run(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains("the file's YAML aliases (*name) expand to more than 250000 values"),
            "{args:?}: {err}"
        );
        assert!(
            !err.contains("budget breached") && !err.contains("Nodes {"),
            "{args:?}: {err}"
        );
    }
}

/// Defects (issue 25): `mig apply --help` described only the dry run; a
/// typo'd layout reported NVML's error; the no-GPU advice of `gpus` and
/// `mig apply` was written for a pod.
#[test]
fn mig_apply_and_gpus_speak_to_a_person_at_a_node() {
    let (_, help, _) = run(&["mig", "apply", "--help"]);
    assert!(
        help.starts_with("Give this node's GPUs a MIG layout through NVML"),
        "{help}"
    );
    assert!(
        help.contains("With --dry-run, prints the NVML operations and why, and changes nothing"),
        "{help}"
    );
    let missing = "/nonexistent/gpu-slicer-test/libnvidia-ml.so.1";
    let (code, _, err) = run(&[
        "mig",
        "apply",
        "all-balnced",
        "--dry-run",
        "--nvml-lib",
        missing,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with(
            "error: MIG layout 'all-balnced' exists on no MIG-capable GPU gpu-slicer knows"
        ),
        "{err}"
    );
    assert!(err.contains("all-balanced"), "{err}");
    for args in [
        vec!["gpus", "--nvml-lib", missing],
        vec![
            "mig",
            "apply",
            "all-balanced",
            "--dry-run",
            "--nvml-lib",
            missing,
        ],
        vec!["mig", "apply", "all-balanced", "--nvml-lib", missing],
    ] {
        let (code, _, err) = run(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains(
                "This command reads the GPUs of the machine it runs on: run it on a GPU node"
            ),
            "{args:?}: {err}"
        );
        assert!(
            !err.contains("runtimeClassName") && !err.contains("nodeSelector"),
            "{args:?}: {err}"
        );
    }
}
