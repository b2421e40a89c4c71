//! `--simulate`: an instance preset, or a topology file read here and built
//! by the core's simulated backend.

use std::path::Path;

use gpu_slicer_core::gpu::Inventory;
use gpu_slicer_core::gpu::simulated::{self, SimulationError};

/// A topology file (when `spec` ends in `.yaml`/`.yml` or is an existing
/// file) or else an instance preset name. `mig_layout` (the command line's
/// MIG config) replaces every layout, explicit device list and `migEnabled`
/// of a topology file.
pub fn load(spec: &str, mig_layout: Option<&str>) -> Result<Inventory, SimulationError> {
    let path = Path::new(spec);
    if !simulated::looks_like_topology_file(spec) && !path.is_file() {
        return simulated::from_instance(spec, mig_layout);
    }
    let text = std::fs::read_to_string(path).map_err(|error| SimulationError::Read {
        path: spec.to_string(),
        error,
    })?;
    simulated::from_topology_str_with_layout(&text, spec, mig_layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_or_a_preset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node");
        std::fs::write(&path, "instance: p5.48xlarge\nmigLayout: all-balanced\n").unwrap();
        let spec = path.to_str().unwrap();
        // An existing file without a YAML suffix is still a file.
        assert_eq!(
            load(spec, None).unwrap(),
            simulated::from_instance("p5.48xlarge", Some("all-balanced")).unwrap()
        );
        assert_eq!(
            load("p4d.24xlarge", None).unwrap(),
            simulated::from_instance("p4d.24xlarge", None).unwrap()
        );
        let missing = dir.path().join("missing.yml");
        let err = load(missing.to_str().unwrap(), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot read topology file {}: no such file or directory",
                missing.display()
            )
        );
        // A directory is a path, not an unknown instance type.
        let err = load(dir.path().to_str().unwrap(), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot read topology file {}: it is a directory, not a file",
                dir.path().display()
            )
        );
    }
}
