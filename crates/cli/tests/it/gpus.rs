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
fn mig_apply_dry_run_prints_the_operations() {
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
}

/// Runs `gpu-slicer mig apply ARGS` on the fake NVML's node `topology`.
fn mig_apply(topology: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["mig", "apply"])
        .args(args)
        .arg("--nvml-lib")
        .arg(fake_nvml())
        .env("FAKE_NVML_TOPOLOGY", topology)
        .env_remove("FAKE_NVML_FAIL")
        .output()
        .expect("run mig apply")
}

fn devices(topology: &std::path::Path, gpu: usize) -> Vec<(String, String)> {
    let json: serde_json::Value = serde_json::from_str(&run(topology, "json")).expect("json");
    json[gpu]["mig"]["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| {
            (
                d["profile"].as_str().unwrap_or_default().to_string(),
                d["uuid"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn text_of(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Edits the fake driver's state file (what a GPU reset or a process
/// starting changes on a real node).
fn edit_driver(topology: &std::path::Path, change: impl FnOnce(&mut serde_json::Value)) {
    let mut node: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(topology).expect("read")).expect("json");
    change(&mut node);
    std::fs::write(topology, node.to_string()).expect("write");
}

#[test]
fn mig_apply_on_a_hopper_gpu_turns_mig_on_creates_the_instances_and_is_idempotent() {
    let dir = temp_dir();
    let mut inventory = simulated::from_instance("p5e.48xlarge", None).expect("p5e");
    inventory.gpus.truncate(1);
    assert!(!inventory.gpus[0].mig_enabled);
    let topology = aside(dir.path()).join("inventory.json");
    std::fs::write(&topology, serde_json::to_string(&inventory).expect("json")).expect("write");

    let out = mig_apply(&topology, &["all-balanced"]);
    let text = text_of(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("GPU 0 (GPU-"), "{text}");
    assert!(text.contains("): applied\n"), "{text}");
    assert!(
        text.ends_with("MIG layout 'all-balanced' applied (1 GPU(s) changed)\n"),
        "{text}"
    );
    let first = devices(&topology, 0);
    let mut profiles: Vec<&str> = first.iter().map(|(p, _)| p.as_str()).collect();
    profiles.sort_unstable();
    assert_eq!(profiles, ["1g.18gb", "1g.18gb", "2g.35gb", "3g.71gb"]);

    // Again: nothing to do, the same instances.
    let out = mig_apply(&topology, &["all-balanced"]);
    assert!(out.status.success(), "{}", text_of(&out));
    assert!(
        text_of(&out).contains("): unchanged\n"),
        "{}",
        text_of(&out)
    );
    assert_eq!(devices(&topology, 0), first);

    // Another layout: every instance is new.
    let out = mig_apply(&topology, &["all-1g.18gb"]);
    assert!(out.status.success(), "{}", text_of(&out));
    let now = devices(&topology, 0);
    assert_eq!(now.len(), 7);
    assert!(now.iter().all(|(p, _)| p == "1g.18gb"), "{now:?}");
    assert!(
        now.iter()
            .all(|(_, u)| first.iter().all(|(_, old)| old != u)),
        "new UUIDs: {now:?} vs {first:?}"
    );

    // Off again: instances destroyed, then the mode.
    let out = mig_apply(&topology, &["none"]);
    assert!(out.status.success(), "{}", text_of(&out));
    let text = run(&topology, "text");
    assert!(text.contains("MIG: disabled (pending: disabled)"), "{text}");
}

#[test]
fn mig_apply_reports_a_mode_change_that_needs_a_reset_and_finishes_after_it() {
    let dir = temp_dir();
    let mut inventory = simulated::from_instance("p4d.24xlarge", None).expect("p4d");
    inventory.gpus.truncate(2);
    let topology = aside(dir.path()).join("inventory.json");
    std::fs::write(&topology, serde_json::to_string(&inventory).expect("json")).expect("write");

    let out = mig_apply(&topology, &["all-balanced"]);
    assert_eq!(out.status.code(), Some(1), "{}", text_of(&out));
    let text = text_of(&out);
    assert!(
        text.contains("): MIG mode pending: needs a GPU reset\n"),
        "{text}"
    );
    assert!(
        text.contains("has MIG mode on pending: it takes effect after a GPU reset (`nvidia-smi -r -i 1`, with nothing running on it) or a reboot, which gpu-slicer never does itself"),
        "{text}"
    );
    assert!(
        run(&topology, "text").contains("MIG: disabled (pending: enabled)"),
        "{}",
        run(&topology, "text")
    );

    // The node is rebooted: the pending mode is now current.
    edit_driver(&topology, |node| {
        for gpu in node["gpus"].as_array_mut().expect("gpus") {
            gpu["mig_enabled"] = serde_json::json!(true);
            gpu.as_object_mut().expect("gpu").remove("mig_pending");
        }
    });
    let out = mig_apply(&topology, &["all-balanced"]);
    assert!(out.status.success(), "{}", text_of(&out));
    assert_eq!(devices(&topology, 1).len(), 4);
}

/// gpu-operator #2833: an apply that fails half-way must not leave the GPU
/// half-configured. The driver refuses compute instances: the GPU instance
/// this attempt created is destroyed again, the GPU is left with MIG on and
/// nothing on it, and the next attempt starts from there and completes.
#[test]
fn mig_apply_that_fails_half_way_undoes_what_it_created_and_a_retry_completes() {
    let dir = temp_dir();
    let mut inventory =
        simulated::from_instance("p5e.48xlarge", Some("all-balanced")).expect("p5e");
    inventory.gpus.truncate(1);
    let topology = aside(dir.path()).join("inventory.json");
    std::fs::write(&topology, serde_json::to_string(&inventory).expect("json")).expect("write");
    let before = devices(&topology, 0);
    assert_eq!(before.len(), 4);

    let out = Command::new(BIN)
        .args(["mig", "apply", "all-1g.18gb", "--nvml-lib"])
        .arg(fake_nvml())
        .env("FAKE_NVML_TOPOLOGY", &topology)
        .env(
            "FAKE_NVML_FAIL",
            "nvmlGpuInstanceCreateComputeInstance:INSUFFICIENT_RESOURCES",
        )
        .output()
        .expect("run mig apply");
    let text = text_of(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("): failed\n"), "{text}");
    assert!(
        text.contains(
            "nvmlGpuInstanceCreateComputeInstance(GPU instance 7, 1-slice profile: the whole instance) failed: "
        ),
        "{text}"
    );
    // Nothing half-built: no MIG device, and no GPU instance without its
    // compute instance left in the driver.
    assert!(devices(&topology, 0).is_empty());
    let driver: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&topology).expect("read")).expect("json");
    assert!(
        driver["gpus"][0]["gpu_instances"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{}",
        driver["gpus"][0]
    );
    assert!(run(&topology, "text").contains("MIG: enabled (pending: enabled)"));

    // The driver answers again: the retry creates the whole layout.
    let out = mig_apply(&topology, &["all-1g.18gb"]);
    assert!(out.status.success(), "{}", text_of(&out));
    let now = devices(&topology, 0);
    assert_eq!(now.len(), 7, "{now:?}");
    assert!(now.iter().all(|(p, _)| p == "1g.18gb"), "{now:?}");
}

#[test]
fn mig_apply_refuses_a_gpu_in_use_unless_forced_and_layouts_that_do_not_fit() {
    let dir = temp_dir();
    let mut inventory =
        simulated::from_instance("p4d.24xlarge", Some("all-balanced")).expect("p4d");
    inventory.gpus.truncate(1);
    let topology = aside(dir.path()).join("inventory.json");
    std::fs::write(&topology, serde_json::to_string(&inventory).expect("json")).expect("write");
    let before = devices(&topology, 0);
    let gi = inventory.gpus[0].mig_devices[0].gpu_instance_id;
    edit_driver(&topology, |node| {
        node["gpus"][0]["processes"] = serde_json::json!([{"pid": 4242, "used_memory_mib": 512, "gpu_instance_id": gi, "compute_instance_id": 0}]);
    });

    let out = mig_apply(&topology, &["all-1g.5gb"]);
    assert_eq!(out.status.code(), Some(1), "{}", text_of(&out));
    let text = text_of(&out);
    assert!(text.contains("): refused: in use\n"), "{text}");
    assert!(
        text.contains("is in use (process 4242); stop that work, or apply with force"),
        "{text}"
    );
    assert_eq!(devices(&topology, 0), before, "nothing was changed");

    // Forced: NVML itself refuses to destroy the busy instance.
    let out = mig_apply(&topology, &["all-1g.5gb", "--force"]);
    assert_eq!(out.status.code(), Some(1), "{}", text_of(&out));
    assert!(
        text_of(&out).contains(&format!(
            "nvmlComputeInstanceDestroy(GPU instance {gi}, compute instance 0) failed: "
        )),
        "{}",
        text_of(&out)
    );
    // The process ends: the next apply starts from what the GPU holds.
    edit_driver(&topology, |node| {
        node["gpus"][0]
            .as_object_mut()
            .expect("gpu")
            .remove("processes");
    });
    let out = mig_apply(&topology, &["all-1g.5gb"]);
    assert!(out.status.success(), "{}", text_of(&out));
    assert_eq!(devices(&topology, 0).len(), 7);

    let out = mig_apply(&topology, &["1g.5gb=8"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text_of(&out).contains("1g.5gb"), "{}", text_of(&out));
    assert_eq!(devices(&topology, 0).len(), 7, "nothing was changed");
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
