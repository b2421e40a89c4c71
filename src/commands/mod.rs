//! The subcommands behind `main.rs`: each turns parsed options into calls
//! on the core and the daemon.

pub mod demo;
pub mod karpenter;
pub mod plan;
pub mod run;

use std::path::Path;

use crate::config::{Config, ConfigFlags, MigStrategy, load_file};

/// Config file (if any), then flags and environment on top: NVIDIA's
/// precedence, flag > env > file > default.
pub fn effective_config(config_file: Option<&Path>, flags: &ConfigFlags) -> Result<Config, String> {
    let base = match config_file {
        Some(path) => load_file(path).map_err(|e| format!("unable to load config: {e}"))?,
        None => Config::default(),
    };
    flags.apply(base).map_err(|e| e.to_string())
}

/// For commands that simulate a MIG layout: when neither a config file nor a
/// flag chose a MIG strategy, `mixed` is what makes the layout visible
/// (NVIDIA's default `none` would advertise the MIG-enabled parents as whole
/// GPUs). A config file is always taken as written.
pub fn config_for_layout(
    config_file: Option<&Path>,
    flags: &ConfigFlags,
    mig_layout: Option<&str>,
) -> Result<Config, String> {
    let mut config = effective_config(config_file, flags)?;
    let layout_uses_mig = mig_layout.is_some_and(|l| l != "all-disabled");
    if layout_uses_mig && config_file.is_none() && flags.mig_strategy.is_none() {
        config.flags.mig_strategy = MigStrategy::Mixed;
    }
    Ok(config)
}
