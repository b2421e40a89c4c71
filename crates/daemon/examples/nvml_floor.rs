//! The NVML floor for the benchmark: a bare process that initialises NVML
//! (`nvmlInit_v2`), enumerates the GPUs (count, handle, UUID, memory), and
//! prints its resident set. Any NVML-based device plugin holds at least this;
//! the benchmark reports the daemon's idle RSS above it.
//!
//! ```sh
//! cargo build --release -p gpu-slicer-daemon --example nvml_floor
//! target/release/examples/nvml_floor          # VmRSS_kib=<n>
//! target/release/examples/nvml_floor --hold   # prints `ready`, waits for stdin to close
//! ```
//!
//! `--hold` keeps the process alive after enumeration until its standard
//! input is closed, so that the benchmark reads the floor's `/proc/<pid>`
//! from outside, exactly as it reads the daemon's.

use std::process::ExitCode;

fn main() -> ExitCode {
    let hold = std::env::args().skip(1).any(|a| a == "--hold");
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(nvml) => nvml,
        Err(e) => {
            eprintln!("nvml_floor: nvmlInit_v2 failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let count = match nvml.device_count() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("nvml_floor: nvmlDeviceGetCount failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    for index in 0..count {
        let described = nvml
            .device_by_index(index)
            .and_then(|d| Ok((d.uuid()?, d.memory_info()?.total)));
        if let Err(e) = described {
            eprintln!("nvml_floor: GPU {index}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("0");
    println!("gpus={count}");
    println!("VmRSS_kib={rss}");
    if hold {
        println!("ready");
        // Until the reader closes stdin; what it reads does not matter.
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        return ExitCode::SUCCESS;
    }
    // NVML_FLOOR_SMAPS=1: resident KiB per mapping, to compare with the daemon's.
    if std::env::var_os("NVML_FLOOR_SMAPS").is_some() {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        let mut name = String::new();
        for line in smaps.lines() {
            if let Some(kib) = line.strip_prefix("Rss:") {
                println!("{} {name}", kib.trim());
            } else if line.chars().next().is_some_and(|c| c.is_ascii_hexdigit())
                && line.contains('-')
            {
                name = line
                    .split_whitespace()
                    .nth(5)
                    .unwrap_or("[anon]")
                    .to_string();
            }
        }
    }
    ExitCode::SUCCESS
}
