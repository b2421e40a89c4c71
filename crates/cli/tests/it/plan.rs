//! `gpu-slicer plan`: the worked examples of the reference, time-slicing
//! counts, and what a user sees for bad input.

use std::process::Command;

use crate::BIN;
use crate::common::{temp_dir, write_config};

/// Runs `gpu-slicer plan` and returns (exit success, stdout, stderr).
fn plan(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("plan")
        .args(args)
        .output()
        .expect("run plan");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `(resource, count)` pairs from `plan` output: name first, count second.
fn plan_counts(stdout: &str) -> Vec<(String, usize)> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?.to_string();
            let count = words.next()?.parse().ok()?;
            Some((name, count))
        })
        .collect()
}

#[test]
fn plan_reproduces_the_worked_examples() {
    let mixed = ["--mig-strategy", "mixed"];
    let cases: Vec<(&str, &str, &[&str], Vec<(&str, usize)>)> = vec![
        (
            "p4d.24xlarge",
            "all-disabled",
            &mixed,
            vec![("nvidia.com/gpu", 8)],
        ),
        (
            "p4d.24xlarge",
            "all-1g.5gb",
            &mixed,
            vec![("nvidia.com/mig-1g.5gb", 56)],
        ),
        (
            "p4d.24xlarge",
            "all-2g.10gb",
            &mixed,
            vec![("nvidia.com/mig-2g.10gb", 24)],
        ),
        (
            "p4d.24xlarge",
            "all-3g.20gb",
            &mixed,
            vec![("nvidia.com/mig-3g.20gb", 16)],
        ),
        (
            "p4d.24xlarge",
            "all-4g.20gb",
            &mixed,
            vec![("nvidia.com/mig-4g.20gb", 8)],
        ),
        (
            "p4d.24xlarge",
            "all-7g.40gb",
            &mixed,
            vec![("nvidia.com/mig-7g.40gb", 8)],
        ),
        (
            "p4d.24xlarge",
            "all-balanced",
            &mixed,
            vec![
                ("nvidia.com/mig-1g.5gb", 16),
                ("nvidia.com/mig-2g.10gb", 8),
                ("nvidia.com/mig-3g.20gb", 8),
            ],
        ),
        (
            "p4d.24xlarge",
            "all-1g.10gb",
            &mixed,
            vec![("nvidia.com/mig-1g.10gb", 32)],
        ),
        (
            "p4d.24xlarge",
            "all-1g.5gb",
            &["--mig-strategy", "single"],
            vec![("nvidia.com/gpu", 56)],
        ),
        (
            "p4de.24xlarge",
            "all-1g.10gb",
            &mixed,
            vec![("nvidia.com/mig-1g.10gb", 56)],
        ),
        (
            "p4de.24xlarge",
            "all-balanced",
            &mixed,
            vec![
                ("nvidia.com/mig-1g.10gb", 16),
                ("nvidia.com/mig-2g.20gb", 8),
                ("nvidia.com/mig-3g.40gb", 8),
            ],
        ),
        (
            "p5.48xlarge",
            "all-1g.10gb",
            &mixed,
            vec![("nvidia.com/mig-1g.10gb", 56)],
        ),
        (
            "p5.48xlarge",
            "all-1g.20gb",
            &mixed,
            vec![("nvidia.com/mig-1g.20gb", 32)],
        ),
        (
            "p5.48xlarge",
            "all-balanced",
            &mixed,
            vec![
                ("nvidia.com/mig-1g.10gb", 16),
                ("nvidia.com/mig-2g.20gb", 8),
                ("nvidia.com/mig-3g.40gb", 8),
            ],
        ),
        (
            "p5e.48xlarge",
            "all-1g.18gb",
            &mixed,
            vec![("nvidia.com/mig-1g.18gb", 56)],
        ),
        (
            "p5en.48xlarge",
            "all-balanced",
            &mixed,
            vec![
                ("nvidia.com/mig-1g.18gb", 16),
                ("nvidia.com/mig-2g.35gb", 8),
                ("nvidia.com/mig-3g.71gb", 8),
            ],
        ),
        (
            "p6-b200.48xlarge",
            "all-1g.23gb",
            &mixed,
            vec![("nvidia.com/mig-1g.23gb", 56)],
        ),
        (
            "p6-b200.48xlarge",
            "all-balanced",
            &mixed,
            vec![
                ("nvidia.com/mig-1g.23gb", 16),
                ("nvidia.com/mig-2g.45gb", 8),
                ("nvidia.com/mig-3g.90gb", 8),
            ],
        ),
    ];
    for (instance, layout, flags, want) in cases {
        let mut args = vec!["--instance", instance, "--mig-config", layout];
        args.extend_from_slice(flags);
        let (ok, stdout, stderr) = plan(&args);
        assert!(ok, "{instance} {layout}: {stderr}");
        let want: Vec<(String, usize)> =
            want.into_iter().map(|(n, c)| (n.to_string(), c)).collect();
        assert_eq!(plan_counts(&stdout), want, "{instance} {layout}\n{stdout}");
    }
}

#[test]
fn plan_time_slicing_examples() {
    let dir = temp_dir();
    let cases = [
        (
            "g5.12xlarge",
            None,
            "replicas: 4",
            false,
            vec![("nvidia.com/gpu", 16)],
        ),
        (
            "g5.12xlarge",
            None,
            "replicas: 4",
            true,
            vec![("nvidia.com/gpu.shared", 16)],
        ),
        (
            "g5.48xlarge",
            None,
            "replicas: 4",
            false,
            vec![("nvidia.com/gpu", 32)],
        ),
        (
            "p4d.24xlarge",
            Some("all-1g.5gb"),
            "replicas: 4",
            false,
            vec![("nvidia.com/mig-1g.5gb", 224)],
        ),
    ];
    for (instance, layout, replicas, rename, want) in cases {
        let name = if layout.is_some() {
            "nvidia.com/mig-1g.5gb"
        } else {
            "nvidia.com/gpu"
        };
        let strategy = if layout.is_some() { "mixed" } else { "none" };
        let config = write_config(
            dir.path(),
            &format!(
                "version: v1\nflags:\n  migStrategy: {strategy}\nsharing:\n  timeSlicing:\n    renameByDefault: {rename}\n    resources:\n    - name: {name}\n      {replicas}\n"
            ),
        );
        let mut args = vec![
            "--instance",
            instance,
            "--config-file",
            config.to_str().expect("utf-8"),
        ];
        if let Some(layout) = layout {
            args.extend(["--mig-config", layout]);
        }
        let (ok, stdout, stderr) = plan(&args);
        assert!(ok, "{instance}: {stderr}");
        let want: Vec<(String, usize)> =
            want.into_iter().map(|(n, c)| (n.to_string(), c)).collect();
        assert_eq!(plan_counts(&stdout), want, "{instance}\n{stdout}");
    }
}

#[test]
fn bad_inputs_are_refused_with_a_clear_message() {
    let dir = temp_dir();
    // (config file content, what the user sees after "error: unable to load config: <file>: ")
    let cases: Vec<(&str, &str)> = vec![
        (
            "version: v1\nflags:\n  renameByDefault: true\n",
            "unknown key 'flags.renameByDefault': renameByDefault belongs under sharing.timeSlicing (or sharing.mps)",
        ),
        (
            "version: v1\nflags:\n  migstrategy: mixed\n",
            "unknown key 'flags.migstrategy': did you mean 'migStrategy'? valid keys under flags: migStrategy, failOnInitError, mpsRoot, nvidiaDriverRoot, nvidiaDevRoot, gdrcopyEnabled, gdsEnabled, mofedEnabled, deviceDiscoveryStrategy, useNodeFeatureAPI, plugin, gfd",
        ),
        (
            "version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 1\n",
            "sharing.timeSlicing.resources[0].replicas: number of replicas must be >= 2",
        ),
        (
            "version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 2\n      devices: none\n",
            "sharing.timeSlicing.resources[0].devices: devices set as 'none' but the only valid string input is 'all'",
        ),
        ("version: v2\n", "version: unknown version: v2"),
        (
            "version: v1\nflags:\n  migStrategy: auto\n",
            "flags.migStrategy: unknown MIG strategy: auto",
        ),
    ];
    for (text, message) in cases {
        let config = write_config(dir.path(), text);
        let path = config.to_str().expect("utf-8");
        let (ok, _, stderr) = plan(&["--instance", "g5.xlarge", "--config-file", path]);
        assert!(!ok, "accepted: {text}");
        assert_eq!(
            stderr.trim_end(),
            format!("error: unable to load config: {path}: {message}"),
            "for {text:?}"
        );
    }

    let (ok, _, stderr) = plan(&["--instance", "g5.xlarge", "--mig-strategy", "bogus"]);
    assert!(!ok);
    assert_eq!(
        stderr.trim_end(),
        "error: invalid value 'bogus' for '--mig-strategy <STRATEGY>'\n  \
         [possible values: none, single, mixed]\n\n\
         For more information, try 'gpu-slicer plan --help'."
    );

    let (ok, _, stderr) = plan(&["--instance", "g5.xlarge", "--mig-config", "all-balanced"]);
    assert!(!ok);
    assert_eq!(
        stderr.trim_end(),
        "error: MIG layout 'all-balanced' needs a MIG-capable GPU, but g5.xlarge has NVIDIA A10G (no MIG support); \
         use time-slicing (sharing.timeSlicing) or an instance with A100/A30/H100/H200/B200/B300/RTX PRO GPUs"
    );

    let (ok, _, stderr) = plan(&["--instance", "p9.huge"]);
    assert!(!ok);
    assert!(
        stderr.starts_with(
            "error: unknown instance type 'p9.huge'; known instance types: p4d.24xlarge, "
        ),
        "{stderr}"
    );
}
