//! Link the daemon binary with packed relative relocations (`DT_RELR`).
//!
//! The daemon is a position-independent executable, so the dynamic loader
//! relocates every pointer in its read-only data at start-up. As 24-byte
//! `RELA` entries those instructions take 250 KiB of the binary (10,650 of
//! them), which the loader reads once and which then stay resident for the
//! process's life; packed as `RELR` bitmaps they take a few KiB
//! (docs/benchmarks.md, "Idle memory above the NVML floor").
//!
//! The dynamic loader must know `DT_RELR`: glibc 2.36 or later (the image's
//! distroless/cc-debian12 has 2.36); the linker then records the version
//! `GLIBC_ABI_DT_RELR`, so an older glibc refuses to start the binary with a
//! message naming it rather than running it unrelocated. GNU ld before 2.38
//! warns about the unknown option and links as before.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if linux_gnu {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
