//! The keys of `flags` and `flags.plugin` that a command-line flag (and its
//! environment variable) overrides, each declared once: its YAML key, the
//! field of [`Flags`](super::Flags) / [`PluginFlags`](super::PluginFlags)
//! it sets, how its value is read, the override field of
//! [`ConfigFlags`](super::ConfigFlags) that replaces it, and its flag (the
//! shell's command line declares the flag with its environment variable).
//!
//! From this one table come: the known keys (unknown-key hints) of both
//! sections, the loader's walk of them, the flag/env overlay, and the test
//! that the command line declares each flag with its environment variable.
//! A new key of these sections is one line here (plus its command-line
//! field, which that test checks).
//!
//! Kinds: `bool` (YAML boolean; Go-style on the command line), `string`,
//! `optional` (a string whose absence means "derived", as `nvidiaDevRoot`),
//! `parsed(f)` (a string checked by `f`, whose error is NVIDIA's message),
//! `list(f)` (a string or a list of strings, checked by `f`).

/// Calls `$generate!` with the table. Each line:
/// `"yamlKey" => config_field: kind, override.path, "--flag";`
macro_rules! with_override_keys {
    ($generate:ident) => {
        $generate! {
            flags {
                "migStrategy" => mig_strategy: parsed(str::parse::<MigStrategy>),
                    mig.mig_strategy, "--mig-strategy";
                "failOnInitError" => fail_on_init_error: bool,
                    fail_on_init_error, "--fail-on-init-error";
                "mpsRoot" => mps_root: string,
                    mps.mps_root, "--mps-root";
                "nvidiaDriverRoot" => nvidia_driver_root: string,
                    nvidia_driver_root, "--driver-root";
                "nvidiaDevRoot" => nvidia_dev_root: optional,
                    nvidia_dev_root, "--dev-root";
                "gdrcopyEnabled" => gdrcopy_enabled: bool,
                    gdrcopy_enabled, "--gdrcopy-enabled";
                "gdsEnabled" => gds_enabled: bool,
                    gds_enabled, "--gds-enabled";
                "mofedEnabled" => mofed_enabled: bool,
                    mofed_enabled, "--mofed-enabled";
                "deviceDiscoveryStrategy" => device_discovery_strategy:
                    parsed(parse_device_discovery_strategy),
                    device_discovery_strategy, "--device-discovery-strategy";
            }
            plugin {
                "passDeviceSpecs" => pass_device_specs: bool,
                    pass_device_specs, "--pass-device-specs";
                "deviceListStrategy" => device_list_strategy: list(parse_device_list_strategies),
                    naming.device_list_strategy, "--device-list-strategy";
                "deviceIDStrategy" => device_id_strategy: parsed(str::parse::<DeviceIdStrategy>),
                    naming.device_id_strategy, "--device-id-strategy";
                "cdiAnnotationPrefix" => cdi_annotation_prefix: string,
                    cdi_annotation_prefix, "--cdi-annotation-prefix";
                "nvidiaCTKPath" => nvidia_ctk_path: string,
                    nvidia_cdi_hook_path, "--nvidia-cdi-hook-path";
                "containerDriverRoot" => container_driver_root: string,
                    driver_root_ctr_path, "--driver-root-ctr-path";
                "sharedDevicesAllocationPolicy" => shared_devices_allocation_policy:
                    parsed(str::parse::<AllocationPolicy>),
                    shared_devices_allocation_policy, "--shared-devices-allocation-policy";
            }
        }
    };
}

pub(crate) use with_override_keys;

/// `(YAML path, flag)` of every key in the table.
macro_rules! override_list {
    (
        flags { $( $fkey:literal => $ffield:ident : $fkind:ident $(($fparse:expr))?,
                   $($facc:ident).+, $fflag:literal; )* }
        plugin { $( $pkey:literal => $pfield:ident : $pkind:ident $(($pparse:expr))?,
                    $($pacc:ident).+, $pflag:literal; )* }
    ) => {
        /// `(YAML path, flag)` of every key a flag overrides.
        pub const OVERRIDES: &[(&str, &str)] = &[
            $( (concat!("flags.", $fkey), $fflag), )*
            $( (concat!("flags.plugin.", $pkey), $pflag), )*
        ];
    };
}

with_override_keys!(override_list);
