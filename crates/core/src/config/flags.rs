//! NVIDIA's command-line flags (and their environment variables) that change
//! the configuration, as the plain overrides the shells map their command
//! lines onto. Precedence: flag > env > config file > default; the shell's
//! command line gives flag > env, and [`ConfigFlags::apply_with_env`] lays
//! whatever was given over the file's values.

use super::keys::with_override_keys;
use super::load::{
    ConfigError, IMEX_UNSUPPORTED, parse_device_discovery_strategy, parse_device_list_strategies,
    validate_cross, validate_imex_channel_ids,
};
use super::schema::{AllocationPolicy, Config, DeviceIdStrategy, InvalidValue, MigStrategy};

/// Go's `strconv.ParseBool`: `1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False`.
pub fn parse_go_bool(s: &str) -> Result<bool, InvalidValue> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(InvalidValue(format!(
            "invalid boolean value '{s}' (expected one of 1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False)"
        ))),
    }
}

/// `--mig-strategy` (the daemon, and the people's commands `plan` and
/// `demo`, whose command lines take it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MigStrategyFlag {
    /// The desired strategy for exposing MIG devices: none, single or mixed.
    pub mig_strategy: Option<String>,
}

/// `--device-list-strategy` and `--device-id-strategy`: how containers
/// receive their devices (the daemon, and `demo`, which shows it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceNamingFlags {
    /// How devices are passed to the runtime: envvar, volume-mounts,
    /// cdi-annotations, cdi-cri (comma-separated or repeated).
    pub device_list_strategy: Option<Vec<String>>,

    /// How devices are identified to the runtime: uuid or index.
    pub device_id_strategy: Option<String>,
}

/// `--mps-root` (the daemon, and `plan`: a config with MPS sharing needs it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MpsRootFlag {
    /// The MPS root folder on the host (required when MPS sharing is used).
    pub mps_root: Option<String>,
}

/// Every NVIDIA flag that changes the config, as plain values: the shells
/// (the daemon's and the people's command lines) declare the flags and
/// their environment variables and map them onto this. `None` = not given
/// (neither flag nor env), so the config file's value stands.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigFlags {
    pub mig: MigStrategyFlag,

    /// Fail the plugin if an error is encountered during initialization,
    /// otherwise block indefinitely.
    pub fail_on_init_error: Option<bool>,

    /// The root path for the NVIDIA driver installation on the host.
    pub nvidia_driver_root: Option<String>,

    /// The root path for the NVIDIA device nodes on the host (default: the driver root).
    pub nvidia_dev_root: Option<String>,

    /// Pass the list of DeviceSpecs to the kubelet on Allocate().
    pub pass_device_specs: Option<bool>,

    pub naming: DeviceNamingFlags,

    /// Ensure that containers are started with NVIDIA_GDRCOPY=enabled.
    pub gdrcopy_enabled: Option<bool>,

    /// Ensure that containers are started with NVIDIA_GDS=enabled.
    pub gds_enabled: Option<bool>,

    /// Ensure that containers are started with NVIDIA_MOFED=enabled.
    pub mofed_enabled: Option<bool>,

    /// The prefix to use for CDI container annotation keys.
    pub cdi_annotation_prefix: Option<String>,

    /// The path to use for the nvidia CDI hooks in the generated CDI
    /// specification (env NVIDIA_CDI_HOOK_PATH, else NVIDIA_CTK_PATH).
    pub nvidia_cdi_hook_path: Option<String>,

    /// The path where the NVIDIA driver root is mounted in the container
    /// (env DRIVER_ROOT_CTR_PATH, else CONTAINER_DRIVER_ROOT).
    pub driver_root_ctr_path: Option<String>,

    pub mps: MpsRootFlag,

    /// How shared devices are preferred: distributed or packed.
    pub shared_devices_allocation_policy: Option<String>,

    /// How devices are discovered: auto or nvml (both NVML; tegra is refused).
    pub device_discovery_strategy: Option<String>,

    /// IMEX channel ids. gpu-slicer injects no IMEX channel, so only an
    /// empty list is accepted; `0` (NVIDIA's only valid id) is refused with
    /// a message, and any other id is invalid.
    pub imex_channel_ids: Option<Vec<i64>>,

    /// Whether IMEX channels are required; type-checked, and without
    /// effect, since no channel is ever requested.
    pub imex_required: Option<bool>,
}

/// Lays one override of [`with_override_keys`]'s table over its field.
macro_rules! overlay_key {
    ($given:expr, $target:expr, $flag:literal, bool) => {
        if let Some(v) = $given {
            $target = v;
        }
    };
    ($given:expr, $target:expr, $flag:literal, string) => {
        if let Some(v) = &$given {
            $target = v.clone();
        }
    };
    ($given:expr, $target:expr, $flag:literal, optional) => {
        if let Some(v) = &$given {
            $target = Some(v.clone());
        }
    };
    ($given:expr, $target:expr, $flag:literal, parsed($parse:expr)) => {
        if let Some(v) = &$given {
            $target = ($parse)(v.as_str()).map_err(|e| invalid($flag, e.to_string()))?;
        }
    };
    ($given:expr, $target:expr, $flag:literal, list($parse:expr)) => {
        if let Some(v) = &$given {
            $target = ($parse)(v.as_slice())
                .map_err(|m| invalid($flag, format!("invalid {} option: {m}", $flag)))?;
        }
    };
}

/// From the table: the overlay of every given override on its key.
macro_rules! overlay {
    (
        flags { $( $fkey:literal => $ffield:ident : $fkind:ident $(($fparse:expr))?,
                   $($facc:ident).+, $fflag:literal; )* }
        plugin { $( $pkey:literal => $pfield:ident : $pkind:ident $(($pparse:expr))?,
                    $($pacc:ident).+, $pflag:literal; )* }
    ) => {
        impl ConfigFlags {
            /// Lays the given overrides of the table's keys over `config`.
            fn overlay_declared(&self, config: &mut Config) -> Result<(), ConfigError> {
                let given = self;
                let flags = &mut config.flags;
                $( overlay_key!(given.$($facc).+, flags.$ffield, $fflag, $fkind $(($fparse))?); )*
                let plugin = &mut flags.plugin;
                $( overlay_key!(given.$($pacc).+, plugin.$pfield, $pflag, $pkind $(($pparse))?); )*
                Ok(())
            }
        }
    };
}

with_override_keys!(overlay);

fn invalid(flag: &str, message: String) -> ConfigError {
    ConfigError::Override {
        flag: flag.to_string(),
        message,
    }
}

/// Value of an environment variable, `None` when unset or empty.
fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

impl ConfigFlags {
    /// Fills the flags whose second env var clap cannot read itself
    /// (`NVIDIA_CTK_PATH`, `CONTAINER_DRIVER_ROOT`) from `env`, where the
    /// flag and its first env var were both absent.
    pub fn with_env_fallbacks(mut self, env: impl Fn(&str) -> Option<String>) -> Self {
        if self.nvidia_cdi_hook_path.is_none() {
            self.nvidia_cdi_hook_path = non_empty(env("NVIDIA_CTK_PATH"));
        }
        if self.driver_root_ctr_path.is_none() {
            self.driver_root_ctr_path = non_empty(env("CONTAINER_DRIVER_ROOT"));
        }
        self
    }

    /// Lays the given flags over `config` (the file's values), after reading
    /// the fallback env vars through `env` (the shell passes the process
    /// environment; the core never reads it), then runs [`validate_cross`].
    pub fn apply_with_env(
        &self,
        config: Config,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        self.clone().with_env_fallbacks(env).apply_given(config)
    }

    /// Lays exactly the given fields over `config`, validates them with
    /// NVIDIA's messages, then runs [`validate_cross`].
    fn apply_given(&self, mut config: Config) -> Result<Config, ConfigError> {
        self.overlay_declared(&mut config)?;
        if let Some(ids) = &self.imex_channel_ids {
            validate_imex_channel_ids(ids).map_err(|m| {
                invalid(
                    "--imex-channel-ids",
                    format!("invalid IMEX channel IDs: {m}"),
                )
            })?;
            if !ids.is_empty() {
                return Err(invalid("--imex-channel-ids", IMEX_UNSUPPORTED.to_string()));
            }
        }
        validate_cross(&config)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_bools() {
        for v in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_go_bool(v), Ok(true), "{v}");
        }
        for v in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_go_bool(v), Ok(false), "{v}");
        }
        for v in ["yes", "tRUE", "", "2", "on"] {
            assert!(parse_go_bool(v).is_err(), "{v}");
        }
    }
}
