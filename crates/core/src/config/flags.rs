//! NVIDIA's command-line flags (and their environment variables) that change
//! the configuration. Precedence: flag > env > config file > default; clap's
//! `env` gives flag > env, and [`ConfigFlags::apply`] lays whatever was given
//! over the file's values.

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

/// `--mig-strategy`: declared once, flattened into [`ConfigFlags`] and into
/// the people's commands that take it (`plan`, `demo`).
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct MigStrategyFlag {
    /// The desired strategy for exposing MIG devices: none, single or mixed.
    #[arg(long, env = "MIG_STRATEGY", value_name = "STRATEGY")]
    pub mig_strategy: Option<String>,
}

/// `--device-list-strategy` and `--device-id-strategy`: how containers
/// receive their devices (the daemon, and `demo`, which shows it).
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct DeviceNamingFlags {
    /// How devices are passed to the runtime: envvar, volume-mounts,
    /// cdi-annotations, cdi-cri (comma-separated or repeated).
    #[arg(
        long,
        env = "DEVICE_LIST_STRATEGY",
        value_delimiter = ',',
        value_name = "STRATEGY"
    )]
    pub device_list_strategy: Option<Vec<String>>,

    /// How devices are identified to the runtime: uuid or index.
    #[arg(long, env = "DEVICE_ID_STRATEGY", value_name = "STRATEGY")]
    pub device_id_strategy: Option<String>,
}

/// `--mps-root` (the daemon, and `plan`: a config with MPS sharing needs it).
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct MpsRootFlag {
    /// The MPS root folder on the host (required when MPS sharing is used).
    #[arg(long, env = "MPS_ROOT", value_name = "PATH")]
    pub mps_root: Option<String>,
}

/// Every NVIDIA flag that changes the config. `None` = not given (neither
/// flag nor env), so the config file's value stands.
///
/// Boolean flags are Go-style: `--flag` (= true), `--flag=false`, or the env
/// var with a `strconv.ParseBool` value.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct ConfigFlags {
    #[command(flatten)]
    pub mig: MigStrategyFlag,

    /// Fail the plugin if an error is encountered during initialization,
    /// otherwise block indefinitely.
    #[arg(long, env = "FAIL_ON_INIT_ERROR", num_args = 0..=1, default_missing_value = "true",
          require_equals = true, value_parser = parse_go_bool, value_name = "BOOL")]
    pub fail_on_init_error: Option<bool>,

    /// The root path for the NVIDIA driver installation on the host.
    #[arg(
        long = "driver-root",
        visible_alias = "nvidia-driver-root",
        env = "NVIDIA_DRIVER_ROOT",
        value_name = "PATH"
    )]
    pub nvidia_driver_root: Option<String>,

    /// The root path for the NVIDIA device nodes on the host (default: the driver root).
    #[arg(
        long = "dev-root",
        visible_alias = "nvidia-dev-root",
        env = "NVIDIA_DEV_ROOT",
        value_name = "PATH"
    )]
    pub nvidia_dev_root: Option<String>,

    /// Pass the list of DeviceSpecs to the kubelet on Allocate().
    #[arg(long, env = "PASS_DEVICE_SPECS", num_args = 0..=1, default_missing_value = "true",
          require_equals = true, value_parser = parse_go_bool, value_name = "BOOL")]
    pub pass_device_specs: Option<bool>,

    #[command(flatten)]
    pub naming: DeviceNamingFlags,

    /// Ensure that containers are started with NVIDIA_GDRCOPY=enabled.
    #[arg(long, env = "GDRCOPY_ENABLED", num_args = 0..=1, default_missing_value = "true",
          require_equals = true, value_parser = parse_go_bool, value_name = "BOOL")]
    pub gdrcopy_enabled: Option<bool>,

    /// Ensure that containers are started with NVIDIA_GDS=enabled.
    #[arg(long, env = "GDS_ENABLED", num_args = 0..=1, default_missing_value = "true",
          require_equals = true, value_parser = parse_go_bool, value_name = "BOOL")]
    pub gds_enabled: Option<bool>,

    /// Ensure that containers are started with NVIDIA_MOFED=enabled.
    #[arg(long, env = "MOFED_ENABLED", num_args = 0..=1, default_missing_value = "true",
          require_equals = true, value_parser = parse_go_bool, value_name = "BOOL")]
    pub mofed_enabled: Option<bool>,

    /// The prefix to use for CDI container annotation keys.
    #[arg(long, env = "CDI_ANNOTATION_PREFIX", value_name = "PREFIX")]
    pub cdi_annotation_prefix: Option<String>,

    /// The path to use for the nvidia CDI hooks in the generated CDI
    /// specification (env NVIDIA_CDI_HOOK_PATH, else NVIDIA_CTK_PATH).
    #[arg(
        long = "nvidia-cdi-hook-path",
        visible_alias = "nvidia-ctk-path",
        env = "NVIDIA_CDI_HOOK_PATH",
        value_name = "PATH"
    )]
    pub nvidia_cdi_hook_path: Option<String>,

    /// The path where the NVIDIA driver root is mounted in the container
    /// (env DRIVER_ROOT_CTR_PATH, else CONTAINER_DRIVER_ROOT).
    #[arg(
        long = "driver-root-ctr-path",
        visible_alias = "container-driver-root",
        env = "DRIVER_ROOT_CTR_PATH",
        value_name = "PATH"
    )]
    pub driver_root_ctr_path: Option<String>,

    #[command(flatten)]
    pub mps: MpsRootFlag,

    /// How shared devices are preferred: distributed or packed.
    #[arg(long, env = "SHARED_DEVICES_ALLOCATION_POLICY", value_name = "POLICY")]
    pub shared_devices_allocation_policy: Option<String>,

    /// How devices are discovered: auto or nvml (both NVML; tegra is refused).
    #[arg(long, env = "DEVICE_DISCOVERY_STRATEGY", value_name = "STRATEGY")]
    pub device_discovery_strategy: Option<String>,

    /// IMEX channel ids. gpu-slicer injects no IMEX channel, so only an
    /// empty list is accepted; `0` (NVIDIA's only valid id) is refused with
    /// a message, and any other id is invalid.
    #[arg(
        long,
        env = "IMEX_CHANNEL_IDS",
        value_delimiter = ',',
        value_name = "IDS"
    )]
    pub imex_channel_ids: Option<Vec<i64>>,

    /// Whether IMEX channels are required; type-checked, and without
    /// effect, since no channel is ever requested.
    #[arg(long, env = "IMEX_REQUIRED", num_args = 0..=1, default_missing_value = "true",
          require_equals = true, value_parser = parse_go_bool, value_name = "BOOL")]
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
                   $($facc:ident).+, $fflag:literal, $fenv:literal; )* }
        plugin { $( $pkey:literal => $pfield:ident : $pkind:ident $(($pparse:expr))?,
                    $($pacc:ident).+, $pflag:literal, $penv:literal; )* }
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
    use crate::config::{
        AllocationPolicy, DeviceIdStrategy, DeviceListStrategy, MigStrategy, parse,
    };
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct T {
        #[command(flatten)]
        f: ConfigFlags,
    }

    fn flags(args: &[&str]) -> ConfigFlags {
        let mut argv = vec!["test"];
        argv.extend_from_slice(args);
        match T::try_parse_from(argv) {
            Ok(t) => t.f,
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    fn clap_err(args: &[&str]) -> String {
        let mut argv = vec!["test"];
        argv.extend_from_slice(args);
        match T::try_parse_from(argv) {
            Ok(t) => panic!("{args:?} parsed as {:?}", t.f),
            Err(e) => e.to_string(),
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn apply(f: &ConfigFlags, file: &str) -> Result<Config, String> {
        let config = parse(file, "config.yaml").map_err(|e| e.to_string())?;
        f.apply_with_env(config, no_env).map_err(|e| e.to_string())
    }

    /// The command line declares every flag of the key table with the
    /// table's environment variable, and no other flag that sets a config
    /// key (the IMEX flags only validate).
    #[test]
    fn the_command_line_declares_each_table_flag_with_its_env() {
        use crate::config::keys::OVERRIDES;
        use clap::CommandFactory;
        let cmd = T::command();
        for (key, flag, env) in OVERRIDES {
            let long = flag.trim_start_matches("--");
            let Some(arg) = cmd.get_arguments().find(|a| a.get_long() == Some(long)) else {
                panic!("{key}: the command line has no {flag}");
            };
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(*env),
                "{key}: {flag}"
            );
        }
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long.starts_with("imex-") || long == "help" {
                continue;
            }
            assert!(
                OVERRIDES
                    .iter()
                    .any(|(_, flag, _)| flag.trim_start_matches("--") == long),
                "--{long} is not in the key table (config/keys.rs)"
            );
        }
        let keys: std::collections::BTreeSet<_> = OVERRIDES.iter().map(|(k, _, _)| k).collect();
        assert_eq!(keys.len(), OVERRIDES.len(), "a key declared twice");
    }

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
        assert_eq!(flags(&[]).fail_on_init_error, None);
        assert_eq!(
            flags(&["--fail-on-init-error"]).fail_on_init_error,
            Some(true)
        );
        assert_eq!(
            flags(&["--fail-on-init-error=false"]).fail_on_init_error,
            Some(false)
        );
        assert_eq!(
            flags(&["--pass-device-specs=T"]).pass_device_specs,
            Some(true)
        );
        assert_eq!(flags(&["--gdrcopy-enabled=0"]).gdrcopy_enabled, Some(false));
        assert_eq!(flags(&["--gds-enabled"]).gds_enabled, Some(true));
        assert_eq!(flags(&["--mofed-enabled=True"]).mofed_enabled, Some(true));
        assert_eq!(flags(&["--imex-required"]).imex_required, Some(true));
        let e = clap_err(&["--fail-on-init-error=yes"]);
        assert!(e.contains("'yes'"), "{e}");
        assert!(e.contains("--fail-on-init-error"), "{e}");
        // Like Go's flag package, a bool flag's value must be attached with '='.
        assert!(clap_err(&["--pass-device-specs", "false"]).contains("false"));
    }

    /// `--help` says what the code does with IMEX ids: only an empty list
    /// passes; `0` is refused with the reason.
    #[test]
    fn imex_help_matches_what_is_refused() {
        use clap::CommandFactory;
        let help = T::command().render_long_help().to_string();
        assert!(help.contains("only an empty list is accepted"), "{help}");
        assert!(!help.contains("then ignored"), "{help}");
        let refused = apply(&flags(&["--imex-channel-ids", "0"]), "version: v1\n")
            .expect_err("IMEX channel 0 is refused");
        assert!(
            refused.contains("IMEX channels are not supported"),
            "{refused}"
        );
        let invalid = apply(&flags(&["--imex-channel-ids", "1"]), "version: v1\n")
            .expect_err("IMEX channel 1 is invalid");
        assert!(
            invalid.contains("channelIDs must be [] or [0]"),
            "{invalid}"
        );
    }

    #[test]
    fn string_and_list_flags_and_aliases() {
        let f = flags(&[
            "--mig-strategy=mixed",
            "--nvidia-driver-root",
            "/run/nvidia/driver",
            "--nvidia-dev-root=/",
            "--device-list-strategy=envvar,cdi-cri",
            "--device-list-strategy",
            "volume-mounts",
            "--device-id-strategy=index",
            "--cdi-annotation-prefix=cdi.example.com/",
            "--nvidia-ctk-path=/ctk",
            "--container-driver-root=/drv",
            "--mps-root=/mps",
            "--shared-devices-allocation-policy=packed",
            "--device-discovery-strategy=nvml",
        ]);
        assert_eq!(
            f,
            ConfigFlags {
                mig: MigStrategyFlag {
                    mig_strategy: Some("mixed".into()),
                },
                nvidia_driver_root: Some("/run/nvidia/driver".into()),
                nvidia_dev_root: Some("/".into()),
                naming: DeviceNamingFlags {
                    device_list_strategy: Some(vec![
                        "envvar".into(),
                        "cdi-cri".into(),
                        "volume-mounts".into()
                    ]),
                    device_id_strategy: Some("index".into()),
                },
                cdi_annotation_prefix: Some("cdi.example.com/".into()),
                nvidia_cdi_hook_path: Some("/ctk".into()),
                driver_root_ctr_path: Some("/drv".into()),
                mps: MpsRootFlag {
                    mps_root: Some("/mps".into()),
                },
                shared_devices_allocation_policy: Some("packed".into()),
                device_discovery_strategy: Some("nvml".into()),
                ..ConfigFlags::default()
            }
        );
        let c = apply(&f, "").unwrap();
        assert_eq!(c.flags.mig_strategy, MigStrategy::Mixed);
        assert_eq!(c.flags.nvidia_driver_root, "/run/nvidia/driver");
        assert_eq!(c.flags.dev_root(), "/");
        assert_eq!(c.flags.mps_root, "/mps");
        assert_eq!(c.flags.device_discovery_strategy, "nvml");
        let p = &c.flags.plugin;
        assert_eq!(
            p.device_list_strategy,
            vec![
                DeviceListStrategy::Envvar,
                DeviceListStrategy::CdiCri,
                DeviceListStrategy::VolumeMounts
            ]
        );
        assert_eq!(p.device_id_strategy, DeviceIdStrategy::Index);
        assert_eq!(p.cdi_annotation_prefix, "cdi.example.com/");
        assert_eq!(p.nvidia_ctk_path, "/ctk");
        assert_eq!(p.container_driver_root, "/drv");
        assert_eq!(p.shared_devices_allocation_policy, AllocationPolicy::Packed);
        let canonical = flags(&[
            "--driver-root=/a",
            "--dev-root=/b",
            "--nvidia-cdi-hook-path=/c",
            "--driver-root-ctr-path=/d",
        ]);
        assert_eq!(canonical.nvidia_driver_root.as_deref(), Some("/a"));
        assert_eq!(canonical.nvidia_dev_root.as_deref(), Some("/b"));
        assert_eq!(canonical.nvidia_cdi_hook_path.as_deref(), Some("/c"));
        assert_eq!(canonical.driver_root_ctr_path.as_deref(), Some("/d"));
    }

    #[test]
    fn precedence_flag_over_file_over_default() {
        let file = "flags: {migStrategy: mixed, failOnInitError: false, plugin: {deviceIDStrategy: index}}";
        let c = apply(&flags(&["--mig-strategy=single"]), file).unwrap();
        assert_eq!(c.flags.mig_strategy, MigStrategy::Single);
        assert!(!c.flags.fail_on_init_error, "file value kept");
        assert_eq!(c.flags.plugin.device_id_strategy, DeviceIdStrategy::Index);
        let c = apply(&flags(&[]), file).unwrap();
        assert_eq!(c.flags.mig_strategy, MigStrategy::Mixed);
        let c = apply(&flags(&["--fail-on-init-error"]), file).unwrap();
        assert!(c.flags.fail_on_init_error);
        let c = apply(&flags(&[]), "").unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn env_fallbacks_only_when_unset() {
        let env = |k: &str| match k {
            "NVIDIA_CTK_PATH" => Some("/env/ctk".to_string()),
            "CONTAINER_DRIVER_ROOT" => Some("/env/root".to_string()),
            _ => None,
        };
        let c = flags(&[]).apply_with_env(Config::default(), env).unwrap();
        assert_eq!(c.flags.plugin.nvidia_ctk_path, "/env/ctk");
        assert_eq!(c.flags.plugin.container_driver_root, "/env/root");
        let c = flags(&["--nvidia-cdi-hook-path=/flag/ctk"])
            .apply_with_env(Config::default(), env)
            .unwrap();
        assert_eq!(c.flags.plugin.nvidia_ctk_path, "/flag/ctk");
        let empty = |_: &str| Some(String::new());
        let c = flags(&[]).apply_with_env(Config::default(), empty).unwrap();
        assert_eq!(c.flags.plugin.nvidia_ctk_path, "/usr/bin/nvidia-ctk");
    }

    #[test]
    fn invalid_override_values() {
        let mps = "sharing: {mps: {resources: [{name: gpu, replicas: 2}]}}";
        for (args, file, expected) in [
            (
                &["--mig-strategy=all"][..],
                "",
                "--mig-strategy: unknown MIG strategy: all",
            ),
            (
                &["--device-list-strategy=envvar,bogus"][..],
                "",
                "--device-list-strategy: invalid --device-list-strategy option: invalid strategy: bogus",
            ),
            (
                &["--device-id-strategy=serial"][..],
                "",
                "--device-id-strategy: invalid --device-id-strategy option: serial",
            ),
            (
                &["--shared-devices-allocation-policy=spread"][..],
                "",
                "--shared-devices-allocation-policy: invalid --shared-devices-allocation-policy option: spread",
            ),
            (
                &["--device-discovery-strategy=cuda"][..],
                "",
                "--device-discovery-strategy: invalid --device-discovery-strategy option cuda",
            ),
            (
                &["--device-discovery-strategy=tegra"][..],
                "",
                "--device-discovery-strategy: device discovery strategy tegra is not supported by gpu-slicer: it \
                 finds GPUs through NVML only, and Tegra's integrated GPUs (Jetson, IGX) are not NVML devices; use \
                 auto or nvml, or keep NVIDIA's plugin on Tegra nodes",
            ),
            (
                &["--imex-channel-ids=0"][..],
                "",
                "--imex-channel-ids: IMEX channels are not supported by gpu-slicer: a container would not get \
                 /dev/nvidia-caps-imex-channels/channel0; remove imex.channelIDs (or set it to []), or keep \
                 NVIDIA's plugin on nodes whose workloads need IMEX",
            ),
            (
                &["--imex-channel-ids=1,2"][..],
                "",
                "--imex-channel-ids: invalid IMEX channel IDs: invalid IMEX config: channelIDs must be [] or [0]; found [1 2]",
            ),
            (
                &["--mig-strategy=mixed", "--mps-root=/mps"][..],
                mps,
                "unable to validate flags: using --mig-strategy=mixed is not supported with MPS",
            ),
            (
                &[][..],
                mps,
                "unable to validate flags: using MPS requires --mps-root to be specified",
            ),
        ] {
            assert_eq!(apply(&flags(args), file).unwrap_err(), expected, "{args:?}");
        }
        // The cross checks see the overridden values.
        assert!(apply(&flags(&["--mps-root=/mps"]), mps).is_ok());
        let mixed_file = format!("flags: {{migStrategy: mixed}}\n{mps}");
        assert!(
            apply(
                &flags(&["--mig-strategy=single", "--mps-root=/m"]),
                &mixed_file
            )
            .is_ok()
        );
    }
}
