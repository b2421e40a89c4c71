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
