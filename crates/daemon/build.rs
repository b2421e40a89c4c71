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
//! runtime base has 2.36); the linker then records the version
//! `GLIBC_ABI_DT_RELR`, so an older glibc refuses to start the binary with a
//! message naming it rather than running it unrelocated. GNU ld before 2.38
//! warns about the unknown option and links as before.
//!
//! A native build runs where it is built (`cargo test`'s end-to-end tests,
//! `cargo run`), so there the build host's glibc decides: older than 2.36
//! (Ubuntu 22.04, Amazon Linux 2023, Debian 11) links without packing, and
//! says so, rather than producing a binary the same machine cannot start. A
//! cross build cannot ask the target's glibc and packs, as the image's
//! builder does. `GPU_SLICER_PACK_RELOCS=0` or `=1` decides instead.

use std::env;

/// The first glibc whose loader knows `DT_RELR`.
const RELR_GLIBC: (u32, u32) = (2, 36);

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=GPU_SLICER_PACK_RELOCS");
    let linux_gnu = env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if !linux_gnu {
        return;
    }
    let pack = match env::var("GPU_SLICER_PACK_RELOCS").as_deref() {
        Ok("0") => false,
        Ok("1") => true,
        _ => match native_glibc() {
            Some(version) if version < RELR_GLIBC => {
                println!(
                    "cargo:warning=glibc {}.{} here is older than {}.{}: gpu-slicer-daemon is linked without \
                     packed relocations (about 250 KiB more resident memory); the image's build packs them",
                    version.0, version.1, RELR_GLIBC.0, RELR_GLIBC.1
                );
                false
            }
            _ => true,
        },
    };
    if pack {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// The build host's glibc version, when the binary is built for this very
/// host (a native build); `None` for a cross build or an unreadable version.
fn native_glibc() -> Option<(u32, u32)> {
    if env::var("HOST").ok()? != env::var("TARGET").ok()? {
        return None;
    }
    host_glibc()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn host_glibc() -> Option<(u32, u32)> {
    // SAFETY: gnu_get_libc_version returns a pointer to a static,
    // NUL-terminated string owned by glibc.
    let version = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
    let mut parts = version.to_str().ok()?.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn host_glibc() -> Option<(u32, u32)> {
    None
}
