//! Prints what the NVML backend discovers on this machine, as JSON.
//!
//! `cargo run --example nvml_discover [-- <libnvidia-ml.so.1 path> [driver root]]`

use gpu_slicer_daemon::gpus::nvml::{NvmlOptions, discover};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut opts = NvmlOptions {
        lib_path: args.next().filter(|a| !a.is_empty()).map(Into::into),
        ..NvmlOptions::default()
    };
    if let Some(root) = args.next() {
        opts.driver_root = root.into();
    }
    match discover(&opts) {
        Ok(d) => {
            let mut caps: Vec<_> = d.files.mig_caps.iter().collect();
            caps.sort();
            let out = serde_json::json!({
                "library": d.library,
                "driver_version": d.driver_version,
                "control": d.files.control,
                "mig_caps": caps.len(),
                "inventory": d.inventory,
            });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        }
        Err(e) => {
            eprintln!("discovery failed: {e}");
            std::process::exit(1);
        }
    }
}
