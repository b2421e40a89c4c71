//! The config `plan` and `demo` simulate a node with: a config file or a
//! ConfigMap manifest (as `lint` and `karpenter overlays` take them), then
//! NVIDIA's flags and environment on top, and what was assumed where
//! nothing chose. Also the check that the devices of a plan can be used.

use std::collections::BTreeMap;
use std::path::Path;

use gpu_slicer_core::config::{Config, ConfigError, ConfigFlags, MigStrategy};
use gpu_slicer_core::gpu::Inventory;
use gpu_slicer_daemon::host::config_file::{load_file, process_env};

use crate::error::InputError;
use crate::karpenter::{Document, configs_of, parse_documents, pick_config};

/// The config a simulated node runs, and every choice made for the user.
pub struct NodeConfig {
    pub config: Config,
    /// One sentence each: what was assumed, why, and how to choose.
    pub assumptions: Vec<String>,
}

/// Why no config could be made.
#[derive(Debug, thiserror::Error)]
pub enum NodeConfigError {
    /// The file cannot be read or holds no valid config, or a ConfigMap
    /// holds several and none was chosen.
    #[error("unable to load config: {0}")]
    Load(#[from] InputError),
    /// A flag or environment variable has a value the config refuses.
    #[error("{0}")]
    Flags(#[source] ConfigError),
}

/// Reads `config_file` (a `version: v1` file, or a ConfigMap manifest whose
/// data holds such configs: `config_name`, else the only one, else
/// `config.yaml`, else `default`), lays the flags and environment over it,
/// and, where MIG is enabled on `inventory` and nothing chose a MIG
/// strategy, assumes `mixed` and says so.
pub fn resolve(
    config_file: Option<&Path>,
    config_name: Option<&str>,
    flags: &ConfigFlags,
    inventory: &Inventory,
) -> Result<NodeConfig, NodeConfigError> {
    let mut assumptions = Vec::new();
    let base = file_config(config_file, config_name, &mut assumptions)?;
    let mut config = flags
        .apply_with_env(base, process_env)
        .map_err(NodeConfigError::Flags)?;
    let mig_enabled = inventory.gpus.iter().any(|g| g.mig_enabled);
    if mig_enabled && config_file.is_none() && flags.mig.mig_strategy.is_none() {
        config.flags.mig_strategy = MigStrategy::Mixed;
        assumptions.push(ASSUMED_MIXED.to_string());
    }
    Ok(NodeConfig {
        config,
        assumptions,
    })
}

/// What `plan` and `demo` say when they choose the MIG strategy.
pub const ASSUMED_MIXED: &str = "migStrategy mixed: MIG is enabled and neither --config-file nor \
     --mig-strategy (MIG_STRATEGY) chose a strategy (NVIDIA's default, none, would advertise the \
     MIG-enabled GPUs whole, and no workload can run on them); pass --mig-strategy to choose";

/// The config as the file holds it, before flags and environment (the
/// defaults without a file). Of a ConfigMap: `config_name`, else the only
/// config, else `config.yaml`, else `default` (NVIDIA config-manager's
/// rule, as `karpenter overlays` picks); with several, which one was taken
/// is added to `assumptions`.
pub fn file_config(
    config_file: Option<&Path>,
    config_name: Option<&str>,
    assumptions: &mut Vec<String>,
) -> Result<Config, NodeConfigError> {
    let Some(path) = config_file else {
        return Ok(Config::default());
    };
    let configs = match configmap(path) {
        Some(doc) => configs_of(&doc).unwrap_or_else(|| {
            Err(InputError::NoConfigInConfigMap {
                file: doc.file.clone(),
                name: doc.name().to_string(),
            })
        })?,
        // Not a ConfigMap: read as the daemon reads its config file.
        None => BTreeMap::from([(
            "config.yaml".to_string(),
            load_file(path).map_err(InputError::from)?,
        )]),
    };
    let source = path.display().to_string();
    let (key, config) = pick_config(&configs, config_name, &source)?;
    if config_name.is_none() && configs.len() > 1 {
        assumptions.push(format!(
            "config '{key}' of {source} (it holds {}); choose another with --config-name",
            configs.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(config.clone())
}

/// The file's first ConfigMap, if it is a manifest holding one.
fn configmap(path: &Path) -> Option<Document> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_documents(&text, &path.display().to_string())
        .ok()?
        .into_iter()
        .find(|d| d.kind() == "ConfigMap")
}

/// Devices a node would advertise that no workload can use: whole GPUs
/// with MIG enabled under migStrategy none (CUDA sees no device on a
/// MIG-enabled GPU without its MIG devices). `None` when every device is
/// usable.
pub fn unusable_devices(inventory: &Inventory, config: &Config) -> Option<String> {
    if config.flags.mig_strategy != MigStrategy::None {
        return None;
    }
    let gpus: Vec<String> = inventory
        .gpus
        .iter()
        .filter(|g| g.mig_enabled)
        .map(|g| g.index.to_string())
        .collect();
    if gpus.is_empty() {
        return None;
    }
    Some(format!(
        "GPU{} {} {} MIG enabled but the config's migStrategy is none: {} advertised whole, \
         and no workload can run on a MIG-enabled GPU without its MIG devices. Set \
         flags.migStrategy: mixed (or single) in the config, or pass --mig-strategy mixed; \
         or plan the GPUs with MIG off (--mig-config all-disabled)",
        if gpus.len() == 1 { "" } else { "s" },
        gpus.join(", "),
        if gpus.len() == 1 { "has" } else { "have" },
        if gpus.len() == 1 {
            "it would be"
        } else {
            "they would be"
        },
    ))
}
