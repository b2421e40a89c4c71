//! The workspace artifacts an end-to-end test runs that `cargo test` does
//! not build for it: another package's binary (the daemon, for the
//! controller's tests), a cdylib (the fake NVML), a test double's binary
//! (the fake MPS control). Cargo's artifact dependencies would say this in
//! a manifest, but they are unstable; so a test asks cargo to build them,
//! into its own target directory and profile.
//!
//! Two things make that a no-op under the README's `cargo test`, instead of
//! a second build of half the dependency tree beside the first (which once
//! filled CI's disk) that replaces binaries while tests run them:
//! - it builds `--workspace --all-targets`, the feature set `cargo test
//!   --workspace` resolves (dev-dependencies included); `cargo build -p
//!   <package>` resolves other features for the shared dependencies;
//! - it removes what cargo sets in a test's environment for the package
//!   under test (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...): a build script
//!   that reads one (ring's reads `CARGO_MANIFEST_DIR`) sees another value
//!   than under the outer `cargo test` and makes its crate, and all above
//!   it, stale.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Builds the workspace's artifacts into the calling test's target
/// directory and profile (at most once per test process) and returns the
/// path of `artifact` (a file name in the profile directory, e.g.
/// `gpu-slicer-daemon` or `libfake_nvml.so`). Panics, with cargo's output
/// on the terminal, when the build fails or does not produce it: a test
/// that cannot get its artifact cannot run.
pub fn built(artifact: &str) -> PathBuf {
    static BUILT: Mutex<bool> = Mutex::new(false);
    let exe = std::env::current_exe().expect("the test executable's path");
    // <target>/<profile>/deps/<test executable>
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lies in <target>/<profile>/deps");
    let target = profile.parent().expect("the target directory");
    let mut done = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !*done {
        let status = build_command(target, profile)
            .status()
            .unwrap_or_else(|e| panic!("run cargo to build {artifact}: {e}"));
        assert!(
            status.success(),
            "cargo build --workspace --all-targets failed (building {artifact} for this test)"
        );
        *done = true;
    }
    let path = profile.join(artifact);
    assert!(
        path.exists(),
        "{} not found after building the workspace",
        path.display()
    );
    path
}

fn build_command(target: &Path, profile: &Path) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args([
            "build",
            "--quiet",
            "--workspace",
            "--all-targets",
            "--target-dir",
        ])
        .arg(target)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile.file_name() == Some(OsStr::new("release")) {
        build.arg("--release");
    }
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(set_by_cargo_for_the_package) {
            build.env_remove(key);
        }
    }
    build
}

/// What cargo sets in the environment of a package's test (the Cargo
/// book's "Environment variables Cargo sets for crates"), as opposed to
/// what a person set for cargo itself (`CARGO_HOME`, `CARGO_PROFILE_*`,
/// `CARGO_INCREMENTAL`, ...), which the inner build must see as the outer
/// one did.
fn set_by_cargo_for_the_package(key: &str) -> bool {
    key.starts_with("CARGO_PKG_")
        || matches!(
            key,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
                | "OUT_DIR"
        )
}

#[cfg(test)]
mod tests {
    use super::set_by_cargo_for_the_package;

    #[test]
    fn only_what_cargo_sets_for_the_package_is_removed() {
        for key in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_CRATE_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
        ] {
            assert!(set_by_cargo_for_the_package(key), "{key}");
        }
        for key in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_INCREMENTAL",
            "CARGO_PROFILE_DEV_DEBUG",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_JOBS",
            "RUSTFLAGS",
            "PATH",
        ] {
            assert!(!set_by_cargo_for_the_package(key), "{key}");
        }
    }
}
