//! The catalog's MIG profile tables against what real GPUs report.
//!
//! `hardware/*.json` is `gpu-slicer gpus --output json` as run on the lent
//! machines (docs/real-gpu.md), MIG disabled: NVML answers the profile table
//! and placements anyway. Every field the catalog holds must match.

use gpu_slicer_core::gpu::catalog;
use serde_json::Value;

fn check(report: &str) {
    let gpus: Value = serde_json::from_str(report).expect("report JSON");
    for gpu in gpus.as_array().expect("a list of GPUs") {
        let product = gpu["model"].as_str().expect("model");
        let model =
            catalog::model(product).unwrap_or_else(|| panic!("{product} is not in the catalog"));
        assert_eq!(
            model.memory_mib,
            gpu["memory_mib"].as_u64().expect("memory"),
            "{product} memory"
        );
        // Reports from before `gpus` printed the PCI id have none.
        if let Some(pci_device_id) = gpu["pci_device_id"].as_u64() {
            assert_eq!(
                u64::from(model.pci_device_id),
                pci_device_id,
                "{product} PCI device id"
            );
        }
        let geometry = model.mig.as_ref().expect("a MIG-capable model");
        let reported = gpu["mig"]["profiles"].as_array().expect("profiles");
        assert_eq!(
            geometry.profiles.len(),
            reported.len(),
            "{product}: profile count"
        );
        for row in reported {
            let name = row["name"].as_str().expect("name");
            let p = geometry
                .profiles
                .iter()
                .find(|p| p.name == name)
                .unwrap_or_else(|| panic!("{product}: profile {name} is not in the catalog"));
            let (starts, sizes): (Vec<u64>, Vec<u64>) = row["placements"]
                .as_array()
                .expect("placements")
                .iter()
                .map(|pl| {
                    (
                        pl[0].as_u64().expect("start"),
                        pl[1].as_u64().expect("size"),
                    )
                })
                .unzip();
            let want = (
                u64::from(p.id),
                u64::from(p.max_count),
                p.memory_mib,
                u64::from(p.compute_slices),
                u64::from(p.multiprocessors),
            );
            let got = (
                row["id"].as_u64().expect("id"),
                row["instances"].as_u64().expect("instances"),
                row["memory_mib"].as_u64().expect("memory"),
                row["slices"].as_u64().expect("slices"),
                row["multiprocessors"].as_u64().expect("SMs"),
            );
            assert_eq!(
                want, got,
                "{product} {name}: (id, instances, MiB, slices, SMs)"
            );
            let catalog_starts: Vec<u64> =
                p.placement_starts.iter().map(|&s| u64::from(s)).collect();
            assert_eq!(catalog_starts, starts, "{product} {name}: placement starts");
            assert!(
                sizes.iter().all(|&s| s == u64::from(p.placement_size)),
                "{product} {name}: placement size"
            );
            // The engines the MIG-profile labels carry, where the catalog
            // has them (None: left out of the labels, never guessed).
            if let Some(engines) = catalog::mig_engines(model.key, name) {
                let reported = ["copy_engines", "decoders", "encoders", "jpegs", "ofas"]
                    .map(|k| row[k].as_u64().expect("engine count"));
                assert_eq!(
                    engines.map(u64::from),
                    reported,
                    "{product} {name}: engines (copy, decoder, encoder, JPEG, OFA)"
                );
            }
        }
    }
}

#[test]
fn the_h200_profiles_are_what_an_h200_reports() {
    check(include_str!("hardware/h200-gpus.json"));
}

#[test]
fn the_h100_profiles_are_what_an_h100_reports() {
    check(include_str!("hardware/h100-80gb-hbm3-gpus.json"));
}
