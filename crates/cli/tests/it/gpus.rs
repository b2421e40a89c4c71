//! `gpu-slicer gpus` against the fake NVML: the profile table with its
//! placements, MIG mode, the MIG devices, in text and JSON.

use std::process::Command;

use crate::BIN;
use crate::common::{aside, fake_nvml, temp_dir};
use gpu_slicer_core::gpu::simulated;

fn run(topology: &std::path::Path, output: &str) -> String {
    let out = Command::new(BIN)
        .args(["gpus", "--output", output, "--nvml-lib"])
        .arg(fake_nvml())
        .env("FAKE_NVML_TOPOLOGY", topology)
        .env_remove("FAKE_NVML_FAIL")
        .output()
        .expect("run gpus");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn the_profile_table_placements_and_mig_devices_are_shown() {
    let dir = temp_dir();
    let mut inventory =
        simulated::from_instance("p4d.24xlarge", Some("all-balanced")).expect("p4d");
    inventory.gpus.truncate(2);
    inventory.gpus[1].mig_enabled = false;
    inventory.gpus[1].mig_devices.clear();
    let topology = aside(dir.path()).join("inventory.json");
    std::fs::write(&topology, serde_json::to_string(&inventory).expect("json")).expect("write");

    let text = run(&topology, "text");
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("GPU 0  NVIDIA A100-SXM4-40GB  GPU-"),
        "{text}"
    );
    assert!(
        lines[0].ends_with("MIG: enabled (pending: enabled)"),
        "{text}"
    );
    let row = |name: &str| {
        lines
            .iter()
            .find(|l| l.split_whitespace().nth(2) == Some(name))
            .unwrap_or_else(|| panic!("no {name} row in:\n{text}"))
            .to_string()
    };
    assert!(
        row("1g.5gb").ends_with("0/1 1/1 2/1 3/1 4/1 5/1 6/1"),
        "{text}"
    );
    assert!(row("2g.10gb").ends_with("0/2 2/2 4/2"), "{text}");
    assert!(row("3g.20gb").ends_with("0/4 4/4"), "{text}");
    assert!(row("7g.40gb").ends_with("0/8"), "{text}");
    assert!(text.contains("  MIG devices:\n    0:0  "), "{text}");
    assert!(
        text.contains("MIG: disabled (pending: disabled)\n"),
        "{text}"
    );

    let json: serde_json::Value = serde_json::from_str(&run(&topology, "json")).expect("json");
    let gpu0 = &json[0];
    assert_eq!(gpu0["mig"]["current"], true);
    let profiles = gpu0["mig"]["profiles"].as_array().expect("profiles");
    let one_g = profiles.iter().find(|p| p["id"] == 19).expect("profile 19");
    assert_eq!(one_g["name"], "1g.5gb");
    assert_eq!(one_g["instances"], 7);
    assert_eq!(one_g["placements"].as_array().map(Vec::len), Some(7));
    assert_eq!(
        gpu0["mig"]["devices"].as_array().map(Vec::len),
        Some(inventory.gpus[0].mig_devices.len())
    );
    assert_eq!(json[1]["mig"]["devices"], serde_json::json!([]));
}

#[test]
fn mig_apply_dry_run_prints_the_operations_and_applying_is_refused() {
    let dir = temp_dir();
    let mut inventory =
        simulated::from_instance("p4d.24xlarge", Some("all-balanced")).expect("p4d");
    inventory.gpus.truncate(1);
    let topology = aside(dir.path()).join("inventory.json");
    std::fs::write(&topology, serde_json::to_string(&inventory).expect("json")).expect("write");
    let dry_run = |layout: &str| {
        let out = Command::new(BIN)
            .args(["mig", "apply", "--dry-run", layout, "--nvml-lib"])
            .arg(fake_nvml())
            .env("FAKE_NVML_TOPOLOGY", &topology)
            .env_remove("FAKE_NVML_FAIL")
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let text = dry_run("all-balanced");
    assert!(text.contains(": already holds 'all-balanced'\n"), "{text}");
    let text = dry_run("all-1g.5gb");
    assert!(
        text.contains("holds other instances; replacing them with 'all-1g.5gb'"),
        "{text}"
    );
    assert_eq!(text.matches("nvmlGpuInstanceDestroy(").count(), 4, "{text}");
    assert_eq!(
        text.matches("nvmlDeviceCreateGpuInstanceWithPlacement(profile 19 (1g.5gb)")
            .count(),
        7,
        "{text}"
    );

    let out = Command::new(BIN)
        .args(["mig", "apply", "all-balanced"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "error: applying MIG layouts is not built yet: `mig apply --dry-run LAYOUT` prints the NVML operations it would take; apply them with NVIDIA's MIG Manager (docs/deploy.md)"
    );
}

#[test]
fn mig_apply_dry_run_reads_a_mig_parted_file() {
    let dir = temp_dir();
    let mut inventory =
        simulated::from_instance("p4d.24xlarge", Some("all-balanced")).expect("p4d");
    inventory.gpus.truncate(2);
    let topology = aside(dir.path()).join("inventory.json");
    std::fs::write(&topology, serde_json::to_string(&inventory).expect("json")).expect("write");
    let config = dir.path().join("config.yaml");
    // As the GPU Operator's default config shapes it: a device-filter per model.
    std::fs::write(
        &config,
        "version: v1\nmig-configs:\n  all-3g:\n    - device-filter: [\"0x233010DE\"]\n      devices: all\n      mig-enabled: true\n      mig-devices: {\"3g.40gb\": 2}\n    - device-filter: \"0x20B010DE\"\n      devices: [1]\n      mig-enabled: true\n      mig-devices: {\"3g.20gb\": 2}\n",
    )
    .expect("write");
    let apply = |layout: &str, file: &std::path::Path| {
        Command::new(BIN)
            .args(["mig", "apply", "--dry-run", layout, "--config-file"])
            .arg(file)
            .arg("--nvml-lib")
            .arg(fake_nvml())
            .env("FAKE_NVML_TOPOLOGY", &topology)
            .env_remove("FAKE_NVML_FAIL")
            .output()
            .expect("run")
    };
    let out = apply("all-3g", &config);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("GPU 0 (NVIDIA A100-SXM4-40GB, ")
            && text.contains("): no entry of 'all-3g' selects this GPU: left as it is\n"),
        "{text}"
    );
    assert_eq!(text.matches("(3g.20gb), start").count(), 2, "{text}");

    let out = apply("all-balanced", &config);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        format!(
            "error: MIG config 'all-balanced' is not in {}; its configs are: all-3g",
            config.display()
        )
    );
    std::fs::write(
        &config,
        "version: v1\nmig-configs:\n  c:\n    - devices: all\n      mig-enabled: true\n",
    )
    .expect("write");
    let out = apply("c", &config);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        format!(
            "error: {}: mig-configs.c[0].mig-devices: required when mig-enabled is true; write 'mig-devices: {{}}' for MIG mode on with no instances",
            config.display()
        )
    );
}
