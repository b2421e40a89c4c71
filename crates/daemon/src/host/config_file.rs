//! Reading the configuration: the file (if any), then NVIDIA's flags and
//! environment variables on top (flag > env > file > default). The core
//! parses and validates; this is the only place that reads the file and the
//! process environment for it.

use std::path::Path;

use gpu_slicer_core::config::{
    Config, ConfigError, ConfigFlags, MigStrategy, is_blank_document, parse,
};

/// Reads and parses a config file; errors are prefixed by its path.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// On a reload: the file must not be blank. At start an empty file means
/// NVIDIA's defaults; once a configuration runs, an empty file is far more
/// likely a half-written ConfigMap or a mistake than a wish to drop every
/// setting (a MIG node would switch to whole GPUs mid-flight), so it is
/// refused and the running configuration stays.
pub fn refuse_blank_on_reload(path: &Path) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if is_blank_document(&text) {
        return Err(ConfigError::Invalid {
            source_name: path.display().to_string(),
            path: String::new(),
            message: "the file is empty; an empty config means the defaults only at start, \
                      so the running configuration stays"
                .into(),
        });
    }
    Ok(())
}

/// Why a mig-parted config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MigConfigFileError {
    #[error(
        "{}: unable to read the MIG config file: {}",
        path.display(),
        gpu_slicer_core::messages::io_error(source)
    )]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Parse(#[from] gpu_slicer_core::mig_parted::MigPartedError),
}

/// The named MIG layouts: a mig-parted file (the GPU Operator's
/// `default-mig-parted-config` content, or a user's) when given, else the
/// built-in ones. Reads at most one byte more than a config may have, so an
/// oversized file is refused without being read whole.
pub fn mig_layouts(
    path: Option<&Path>,
) -> Result<gpu_slicer_core::mig_parted::MigLayouts, MigConfigFileError> {
    use gpu_slicer_core::mig_parted::{MAX_FILE_BYTES, MigLayouts, MigPartedError, parse};
    use std::io::Read as _;
    let Some(path) = path else {
        return Ok(MigLayouts::Builtin);
    };
    let read = |source| MigConfigFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(read)?
        .take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    let source_name = path.display().to_string();
    let text = String::from_utf8(bytes).map_err(|_| MigPartedError::Syntax {
        source_name: source_name.clone(),
        message: "the file is not UTF-8 text".into(),
    })?;
    let config = parse(&text, &source_name)?;
    Ok(MigLayouts::File {
        source_name,
        config,
    })
}

/// The process environment, as the core's overlay reads it.
pub fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// Config file (if any), then flags and environment on top: NVIDIA's
/// precedence, flag > env > file > default.
pub fn effective_config(
    config_file: Option<&Path>,
    flags: &ConfigFlags,
) -> Result<Config, EffectiveConfigError> {
    let base = match config_file {
        Some(path) => load_file(path).map_err(EffectiveConfigError::Load)?,
        None => Config::default(),
    };
    flags
        .apply_with_env(base, process_env)
        .map_err(EffectiveConfigError::Overlay)
}

/// For simulated MIG layouts: when neither a config file nor a flag chose a
/// MIG strategy, `mixed` is what makes the layout visible (NVIDIA's default
/// `none` would advertise the MIG-enabled parents as whole GPUs). A config
/// file is always taken as written.
pub fn config_for_layout(
    config_file: Option<&Path>,
    flags: &ConfigFlags,
    mig_layout: Option<&str>,
) -> Result<Config, EffectiveConfigError> {
    let mut config = effective_config(config_file, flags)?;
    let layout_uses_mig = mig_layout.is_some_and(|l| l != "all-disabled");
    if layout_uses_mig && config_file.is_none() && flags.mig.mig_strategy.is_none() {
        config.flags.mig_strategy = MigStrategy::Mixed;
    }
    Ok(config)
}

/// Why the effective config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EffectiveConfigError {
    #[error("unable to load config: {0}")]
    Load(#[source] ConfigError),
    #[error("{0}")]
    Overlay(#[source] ConfigError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_errors_name_the_file() {
        let e = load_file(Path::new("/nonexistent/gpu-slicer/config.yaml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/gpu-slicer/config.yaml: unable to read config file: "),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "flags: {migStrategy: single}\n").unwrap();
        assert_eq!(
            load_file(&path).unwrap().flags.mig_strategy,
            MigStrategy::Single
        );
        std::fs::write(&path, "version: v3\n").unwrap();
        assert_eq!(
            load_file(&path).unwrap_err().to_string(),
            format!("{}: version: unknown version: v3", path.display())
        );
    }

    #[test]
    fn mig_config_files_are_read_bounded_and_name_the_file() {
        use gpu_slicer_core::mig_parted::{MAX_FILE_BYTES, MigLayouts};
        assert_eq!(mig_layouts(None).unwrap(), MigLayouts::Builtin);
        let e = mig_layouts(Some(Path::new("/nonexistent/mig.yaml"))).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/mig.yaml: unable to read the MIG config file: "),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mig.yaml");
        std::fs::write(&path, vec![b'#'; MAX_FILE_BYTES + 10]).unwrap();
        assert_eq!(
            mig_layouts(Some(&path)).unwrap_err().to_string(),
            format!(
                "{}: the file has more than {MAX_FILE_BYTES} bytes, the most a MIG config may have; is it the right file?",
                path.display()
            )
        );
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert_eq!(
            mig_layouts(Some(&path)).unwrap_err().to_string(),
            format!("{}: the file is not UTF-8 text", path.display())
        );
        std::fs::write(
            &path,
            "version: v1\nmig-configs:\n  all-disabled:\n    - devices: all\n      mig-enabled: false\n",
        )
        .unwrap();
        let MigLayouts::File { config, .. } = mig_layouts(Some(&path)).unwrap() else {
            panic!("a file's layouts");
        };
        assert_eq!(config.configs.len(), 1);
    }
}
