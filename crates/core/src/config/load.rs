//! Strict loading of NVIDIA's `version: v1` config file.
//!
//! The text (YAML, or JSON, which is YAML) is first parsed into a generic
//! tree, then walked section by section. Each key is declared once, in
//! `keys.rs`: from its line come both the known keys of its section (`ROOT`
//! and below) and the walk, generated here, which calls the key's reader
//! (`sections.rs`, or the override table's kinds for `flags`). Unknown or
//! misplaced keys are errors (NVIDIA silently ignores them), with a hint
//! saying where a misplaced key belongs or which key was probably meant.
//! Values are checked with NVIDIA's own messages, prefixed by where they are:
//! `<source>: <path>: <message>`.
//!
//! Deliberate differences from NVIDIA's loader:
//! - unknown/misplaced keys and duplicate keys are errors;
//! - `replicas >= 2` is required under both `sharing.timeSlicing` and
//!   `sharing.mps` (as NVIDIA does; `replicas: 1` under MPS is rejected too);
//! - user `resources`, `rename` and `devices` are kept as given (NVIDIA
//!   neutralises them on load); `renameByDefault` is not resolved into
//!   `rename` either: the consumers decide;
//! - both `timeSlicing` and `mps` are kept when present; see
//!   [`super::schema::Sharing::strategy`] for which one is in effect;
//! - boolean keys also accept the YAML 1.1 spellings (`yes`, `on`, …) that
//!   NVIDIA's YAML-to-JSON conversion turns into booleans; `null` anywhere
//!   means "not set";
//! - `devices` list strings must be an index, `i:j`, `GPU-…` or `MIG-…`;
//! - GFD-only keys (`flags.gfd.*`, `flags.useNodeFeatureAPI`) are
//!   type-checked, then discarded; `imex.channelIDs` other than `[]` is
//!   refused (no IMEX channel is injected).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::health::HealthConfig;

use serde_json::{Map, Value};

use super::keys::{
    FLAGS, Field, GFD, HEALTH, IMEX, MPS, MPS_RESOURCE, PATTERN, PLUGIN, REPLICATED,
    REPLICATED_RESOURCE, RESOURCES, ROOT, SHARING, join, unknown_key_hint, with_override_keys,
    with_sections,
};

use super::schema::{
    AllocationPolicy, Config, DeviceIdStrategy, DeviceListStrategy, DeviceRef, DeviceSelection,
    Flags, InvalidValue, MigStrategy, PluginFlags, ReplicatedResources, ResourcePatterns, Sharing,
    SharingStrategy, UnknownValue,
};

/// Everything that can go wrong while loading or overriding the config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("{}: unable to read config file: {}", path.display(), crate::messages::io_error(source))]
    Read { path: PathBuf, source: io::Error },
    /// The text is not YAML/JSON; `message` carries line and column.
    #[error("{source_name}: {message}")]
    Syntax {
        source_name: String,
        message: String,
    },
    /// A key that is not part of the schema at that place.
    #[error("{source_name}: unknown key '{path}': {message}")]
    UnknownKey {
        source_name: String,
        path: String,
        message: String,
    },
    /// A value that fails validation; `message` holds NVIDIA's wording.
    #[error("{source_name}: {}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
    Invalid {
        source_name: String,
        path: String,
        message: String,
    },
    /// A command-line flag / environment variable with an invalid value.
    #[error("{flag}: {message}")]
    Override { flag: String, message: String },
    /// Cross-field validation of the effective config (NVIDIA's `validateFlags`).
    #[error("unable to validate flags: {message}")]
    Cross { message: String },
}

/// Reads one key of [`with_override_keys`]'s table into its field.
macro_rules! read_key {
    ($cx:ident, $m:ident, $path:expr, $key:literal, $target:expr, bool) => {
        if let Some(v) = $cx.bool($m, $key, $path)? {
            $target = v;
        }
    };
    ($cx:ident, $m:ident, $path:expr, $key:literal, $target:expr, string) => {
        if let Some(v) = $cx.string($m, $key, $path)? {
            $target = v;
        }
    };
    ($cx:ident, $m:ident, $path:expr, $key:literal, $target:expr, optional) => {
        if let Some(v) = $cx.string($m, $key, $path)? {
            $target = Some(v);
        }
    };
    ($cx:ident, $m:ident, $path:expr, $key:literal, $target:expr, parsed($parse:expr)) => {
        if let Some(v) = $cx.parsed($m, $key, $path, $parse)? {
            $target = v;
        }
    };
    ($cx:ident, $m:ident, $path:expr, $key:literal, $target:expr, list($parse:expr)) => {
        if let Some(v) = $cx.string_list($m, $key, $path, $parse)? {
            $target = v;
        }
    };
}

/// From the table: the loader's walk of the keys a flag overrides.
macro_rules! walker {
    (
        flags { $( $fkey:literal => $ffield:ident : $fkind:ident $(($fparse:expr))?,
                   $($facc:ident).+, $fflag:literal; )* }
        plugin { $( $pkey:literal => $pfield:ident : $pkind:ident $(($pparse:expr))?,
                    $($pacc:ident).+, $pflag:literal; )* }
    ) => {
        impl Cx<'_> {
            /// The keys of `flags` a flag overrides.
            fn overridable_flags(
                &self,
                m: &Map<String, Value>,
                flags: &mut Flags,
            ) -> Result<(), ConfigError> {
                let cx = self;
                $( read_key!(cx, m, "flags", $fkey, flags.$ffield, $fkind $(($fparse))?); )*
                Ok(())
            }

            /// The keys of `flags.plugin` (a flag overrides each).
            fn overridable_plugin(
                &self,
                m: &Map<String, Value>,
                plugin: &mut PluginFlags,
            ) -> Result<(), ConfigError> {
                let cx = self;
                $( read_key!(cx, m, "flags.plugin", $pkey, plugin.$pfield, $pkind $(($pparse))?); )*
                Ok(())
            }
        }
    };
}

with_override_keys!(walker);

/// Reads one line of a [`with_sections`] section: a leaf's reader gets the
/// mapping, the key and the mapping's path; a map's, the mapping under the
/// key (when present, its keys checked) and its path; a list's, the items
/// (`None`: absent, each item's keys checked) and the list's path.
macro_rules! read_entry {
    ($cx:ident, $m:ident, $path:ident, $target:ident, $key:literal, leaf, $read:ident) => {
        $cx.$read($m, $key, $path, $target)?;
    };
    ($cx:ident, $m:ident, $path:ident, $target:ident, $key:literal, map($sub:ident), $read:ident) => {
        if let Some(sub) = $cx.map($m, $key, $path, $sub)? {
            $cx.$read(sub, &join($path, $key), $target)?;
        }
    };
    ($cx:ident, $m:ident, $path:ident, $target:ident, $key:literal, list($sub:ident), $read:ident) => {
        let items = $cx.list($m, $key, $path, $sub)?;
        $cx.$read(items, &join($path, $key), $target)?;
    };
}

/// From the sections: the loader's walk of each, its readers called in the
/// table's order.
macro_rules! section_walkers {
    (
        $( $(#[$doc:meta])* $name:ident($walk:ident): $target:ty {
            $( $key:literal => $kind:ident $(($sub:ident))?, $read:ident; )*
        } )*
    ) => {
        impl Cx<'_> {
            $(
                fn $walk(
                    &self,
                    m: &Map<String, Value>,
                    path: &str,
                    target: &mut $target,
                ) -> Result<(), ConfigError> {
                    let cx = self;
                    $( read_entry!(cx, m, path, target, $key, $kind $(($sub))?, $read); )*
                    Ok(())
                }
            )*
        }
    };
}

with_sections!(section_walkers);

mod sections;
use sections::{PatternDraft, ResourceDraft};
/// The most MPS clients one GPU serves (Volta and newer), as NVIDIA checks.
pub const MAX_MPS_REPLICAS: u32 = 48;

// ---------------------------------------------------------------------------
// Value parsers shared with the command-line overrides (NVIDIA's messages)

/// A list of device-list strategies, de-duplicated in order; never empty
/// (an empty list means the default, `envvar`).
pub fn parse_device_list_strategies<S: AsRef<str>>(
    values: &[S],
) -> Result<Vec<DeviceListStrategy>, UnknownValue> {
    let mut out = Vec::new();
    for v in values {
        let s: DeviceListStrategy = v.as_ref().parse()?;
        if !out.contains(&s) {
            out.push(s);
        }
    }
    if out.is_empty() {
        out.push(DeviceListStrategy::Envvar);
    }
    Ok(out)
}

/// `auto` | `nvml` (both: NVML, the only discovery gpu-slicer has); `tegra`
/// is refused with what to do rather than accepted and ignored; else
/// `invalid --device-discovery-strategy option <v>`.
pub fn parse_device_discovery_strategy(v: &str) -> Result<String, InvalidValue> {
    match v {
        "auto" | "nvml" => Ok(v.to_string()),
        "tegra" => Err(InvalidValue(TEGRA_UNSUPPORTED.into())),
        _ => Err(InvalidValue(format!(
            "invalid --device-discovery-strategy option {v}"
        ))),
    }
}

/// Why `deviceDiscoveryStrategy: tegra` is refused (file key and flag alike).
pub const TEGRA_UNSUPPORTED: &str = "device discovery strategy tegra is not supported by gpu-slicer: it finds GPUs \
     through NVML only, and Tegra's integrated GPUs (Jetson, IGX) are not NVML devices; use auto or nvml, \
     or keep NVIDIA's plugin on Tegra nodes";

/// Why a non-empty IMEX channel list is refused (file key and flag alike).
pub const IMEX_UNSUPPORTED: &str = "IMEX channels are not supported by gpu-slicer: a container would not get \
     /dev/nvidia-caps-imex-channels/channel0; remove imex.channelIDs (or set it to []), \
     or keep NVIDIA's plugin on nodes whose workloads need IMEX";

/// IMEX channel ids: only `[]` or `[0]`, else
/// `invalid IMEX config: channelIDs must be [] or [0]; found [..]` (Go `%v`).
pub fn validate_imex_channel_ids(ids: &[i64]) -> Result<(), InvalidValue> {
    if ids.is_empty() || ids == [0] {
        return Ok(());
    }
    let shown: Vec<String> = ids.iter().map(i64::to_string).collect();
    Err(InvalidValue(format!(
        "invalid IMEX config: channelIDs must be [] or [0]; found [{}]",
        shown.join(" ")
    )))
}

/// Why a `memoryPerReplica` size is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("'{0}' is not a size: write it as 10Gi or 4096Mi")]
    NotASize(String),
    #[error("'{0}' is no memory: give at least 1Mi")]
    Zero(String),
}

/// `memoryPerReplica`: a size in Mi or Gi (binary, as Kubernetes writes
/// them); the result in MiB.
pub fn parse_mebibytes(text: &str) -> Result<u64, SizeError> {
    let text = text.trim();
    let bad = || SizeError::NotASize(text.to_string());
    let (digits, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |at| text.split_at(at));
    let value: u64 = digits.parse().map_err(|_| bad())?;
    let mib = match unit {
        "Mi" => Some(value),
        "Gi" => value.checked_mul(1024),
        _ => return Err(bad()),
    }
    .ok_or_else(bad)?;
    if mib == 0 {
        return Err(SizeError::Zero(text.to_string()));
    }
    Ok(mib)
}

/// NVIDIA's `validateFlags`, on the effective (overridden) config: with MPS
/// active, `mixed` MIG is rejected and `mpsRoot` is required. A resource
/// named under both `timeSlicing` and `mps` is refused (NVIDIA silently
/// applies MPS alone).
pub fn validate_cross(config: &Config) -> Result<(), ConfigError> {
    if let Some(mps) = &config.sharing.mps {
        for (i, shared) in config.sharing.time_slicing.resources.iter().enumerate() {
            if let Some(j) = mps.resources.iter().position(|r| r.name == shared.name) {
                return Err(ConfigError::Cross {
                    message: format!(
                        "sharing.timeSlicing.resources[{i}] and sharing.mps.resources[{j}] both share {}: a resource is shared one way; remove one of the entries",
                        shared.name
                    ),
                });
            }
        }
    }
    if config.sharing.strategy() == SharingStrategy::Mps {
        if config.flags.mig_strategy == MigStrategy::Mixed {
            return Err(ConfigError::Cross {
                message: "using --mig-strategy=mixed is not supported with MPS".into(),
            });
        }
        if config.flags.mps_root.is_empty() {
            return Err(ConfigError::Cross {
                message: "using MPS requires --mps-root to be specified".into(),
            });
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Loading

/// Parses config text (YAML or JSON). `source` names it in error messages.
///
/// An empty document (or only comments) gives all defaults. Cross-field
/// checks ([`validate_cross`]) are not run here: they apply to the effective
/// config, after command-line/environment overrides.
pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
    let tree = parse_tree(text, source)?;
    let cx = Cx { source };
    match &tree {
        Value::Null => Ok(Config::default()),
        Value::Object(root) => cx.config(root),
        other => Err(cx.invalid(
            "",
            format!(
                "expected a mapping at the top level, found {}",
                describe(other)
            ),
        )),
    }
}

/// A document with nothing in it (only blank lines, comments, `---`):
/// NVIDIA takes it as all defaults.
pub fn is_blank_document(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---" || l == "..."
    })
}

fn parse_tree(text: &str, source: &str) -> Result<Value, ConfigError> {
    if is_blank_document(text) {
        return Ok(Value::Null);
    }
    serde_saphyr::from_str::<Value>(text).or_else(|e| {
        let rendered = crate::messages::yaml_error(&e);
        // JSON is YAML, but pretty-printed JSON may use tabs YAML rejects.
        if text.trim_start().starts_with('{')
            && !rendered.contains("duplicate mapping key")
            && let Ok(v) = serde_json::from_str::<Value>(text)
        {
            return Ok(v);
        }
        let message = match e.location() {
            Some(loc) if !rendered.contains(&format!("line {}", loc.line())) => {
                format!("line {}, column {}: {rendered}", loc.line(), loc.column())
            }
            _ => rendered,
        };
        Err(ConfigError::Syntax {
            source_name: source.to_string(),
            message,
        })
    })
}

/// A value as Go's JSON decoding would name its type in a message.
fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// The mappings of a list, each with its path (`a.b[3]`).
type ListItems<'v> = Vec<(String, &'v Map<String, Value>)>;

struct Cx<'a> {
    source: &'a str,
}

impl Cx<'_> {
    fn invalid(&self, path: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            source_name: self.source.to_string(),
            path: path.to_string(),
            message: message.into(),
        }
    }

    /// Unknown keys in `map` (at `path`) are errors.
    fn check_keys(
        &self,
        map: &Map<String, Value>,
        fields: &[Field],
        path: &str,
    ) -> Result<(), ConfigError> {
        for key in map.keys() {
            if !fields.iter().any(|f| f.key == key) {
                return Err(ConfigError::UnknownKey {
                    source_name: self.source.to_string(),
                    path: join(path, key),
                    message: unknown_key_hint(path, key, fields),
                });
            }
        }
        Ok(())
    }

    /// The mapping under `key` (absent or null → `None`).
    fn map<'v>(
        &self,
        parent: &'v Map<String, Value>,
        key: &str,
        path: &str,
        fields: &[Field],
    ) -> Result<Option<&'v Map<String, Value>>, ConfigError> {
        let path = join(path, key);
        match parent.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => {
                self.check_keys(m, fields, &path)?;
                Ok(Some(m))
            }
            Some(other) => Err(self.invalid(
                &path,
                format!("expected a mapping, found {}", describe(other)),
            )),
        }
    }

    fn bool(
        &self,
        map: &Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Result<Option<bool>, ConfigError> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            // YAML 1.1 spellings, which NVIDIA's YAML-to-JSON conversion accepts.
            Some(Value::String(s)) if yaml11_bool(s).is_some() => Ok(yaml11_bool(s)),
            Some(other) => Err(self.invalid(
                &join(path, key),
                format!("expected a boolean, found {}", describe(other)),
            )),
        }
    }

    fn string(
        &self,
        map: &Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Result<Option<String>, ConfigError> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.invalid(
                &join(path, key),
                format!("expected a string, found {}", describe(other)),
            )),
        }
    }

    /// A string validated by `parse`, whose error is NVIDIA's message.
    fn parsed<T, E: std::fmt::Display>(
        &self,
        map: &Map<String, Value>,
        key: &str,
        path: &str,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Result<Option<T>, ConfigError> {
        match self.string(map, key, path)? {
            None => Ok(None),
            Some(s) => parse(&s)
                .map(Some)
                .map_err(|m| self.invalid(&join(path, key), m.to_string())),
        }
    }

    fn config(&self, root: &Map<String, Value>) -> Result<Config, ConfigError> {
        // The version decides the schema, so it is checked before the keys.
        match root.get("version") {
            None | Some(Value::Null) => {}
            Some(Value::String(v)) if v == "v1" => {}
            Some(Value::String(v)) => {
                return Err(self.invalid("version", format!("unknown version: {v}")));
            }
            Some(other) => {
                return Err(self.invalid("version", format!("unknown version: {other}")));
            }
        }
        self.check_keys(root, ROOT, "")?;
        let mut config = Config::default();
        self.walk_root(root, "", &mut config)?;
        Ok(config)
    }

    /// A string or a list of strings (NVIDIA's `deviceListStrategy`),
    /// checked by `parse`.
    fn string_list<T, E: std::fmt::Display>(
        &self,
        map: &Map<String, Value>,
        key: &str,
        path: &str,
        parse: impl Fn(&[String]) -> Result<T, E>,
    ) -> Result<Option<T>, ConfigError> {
        let at = join(path, key);
        let names: Vec<String> = match map.get(key) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => {
                let mut names = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => names.push(s.clone()),
                        other => {
                            return Err(self.invalid(
                                &format!("{at}[{i}]"),
                                format!("invalid {key}: {other}"),
                            ));
                        }
                    }
                }
                names
            }
            Some(other) => {
                return Err(self.invalid(&at, format!("invalid {key}: {other}")));
            }
        };
        parse(&names)
            .map(Some)
            .map_err(|e| self.invalid(&at, e.to_string()))
    }

    /// The list of mappings under `key`, each checked against `fields`.
    fn list<'v>(
        &self,
        parent: &'v Map<String, Value>,
        key: &str,
        path: &str,
        fields: &[Field],
    ) -> Result<Option<ListItems<'v>>, ConfigError> {
        let path = join(path, key);
        match parent.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{path}[{i}]");
                    match item {
                        Value::Object(m) => {
                            self.check_keys(m, fields, &item_path)?;
                            out.push((item_path, m));
                        }
                        other => {
                            return Err(self.invalid(
                                &item_path,
                                format!("expected a mapping, found {}", describe(other)),
                            ));
                        }
                    }
                }
                Ok(Some(out))
            }
            Some(other) => {
                Err(self.invalid(&path, format!("expected a list, found {}", describe(other))))
            }
        }
    }

    /// A `devices` value: `all`, a count or a list of devices.
    fn device_selection(&self, v: &Value, path: &str) -> Result<DeviceSelection, ConfigError> {
        match v {
            Value::Null => Ok(DeviceSelection::All),
            Value::String(s) if s == "all" => Ok(DeviceSelection::All),
            Value::String(s) => Err(self.invalid(
                path,
                format!("devices set as '{s}' but the only valid string input is 'all'"),
            )),
            Value::Number(n) => match n.as_i64() {
                Some(c) if c <= 0 => Err(self.invalid(
                    path,
                    format!("devices set as '{n}' but a count of devices must be > 0"),
                )),
                Some(c) => u32::try_from(c).map(DeviceSelection::Count).map_err(|_| {
                    self.invalid(
                        path,
                        format!("devices set as '{n}', more devices than any node has"),
                    )
                }),
                None => Err(self.invalid(
                    path,
                    format!("devices set as '{n}' but a count of devices must be a whole number"),
                )),
            },
            Value::Array(items) => {
                let mut refs = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{path}[{i}]");
                    let parsed = match item {
                        Value::String(s) => parse_device_ref(s),
                        Value::Number(n) => match n.as_u64().and_then(|i| u32::try_from(i).ok()) {
                            Some(i) => Ok(DeviceRef::Index(i)),
                            None => Err(unsupported_device_ref(&n.to_string()).into()),
                        },
                        other => Err(InvalidValue(format!(
                            "unsupported device in devices list: {} (expected a GPU index '0', \
                             a MIG device index '0:1', 'GPU-<uuid>' or 'MIG-<uuid>')",
                            describe(other)
                        ))),
                    };
                    refs.push(parsed.map_err(|e| self.invalid(&item_path, e))?);
                }
                Ok(DeviceSelection::List(refs))
            }
            other => Err(self.invalid(
                path,
                format!(
                    "devices is {}; expected 'all', a count of devices or a list of devices",
                    describe(other)
                ),
            )),
        }
    }
}

/// `300`, `300s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, InvalidValue> {
    let s = s.trim();
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |at| s.split_at(at));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{s}' is not a duration such as 300s, 5m or 1h"))?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => {
            return Err(InvalidValue(format!(
                "'{s}' is not a duration such as 300s, 5m or 1h"
            )));
        }
    };
    Ok(Duration::from_secs(seconds))
}

fn yaml11_bool(s: &str) -> Option<bool> {
    match s {
        "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Some(true),
        "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

fn unsupported_device_ref(s: &str) -> String {
    format!(
        "unsupported device reference in devices list: '{s}' \
         (expected a GPU index '0', a MIG device index '0:1', 'GPU-<uuid>' or 'MIG-<uuid>')"
    )
}

fn parse_index(s: &str) -> Option<u32> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// A `devices` list entry given as a string: `0`, `0:1`, `GPU-…`, `MIG-…`.
pub fn parse_device_ref(s: &str) -> Result<DeviceRef, InvalidValue> {
    if let Some(i) = parse_index(s) {
        return Ok(DeviceRef::Index(i));
    }
    if let Some((gpu, mig)) = s.split_once(':')
        && let (Some(g), Some(m)) = (parse_index(gpu), parse_index(mig))
    {
        return Ok(DeviceRef::MigIndex(g, m));
    }
    for prefix in ["GPU-", "MIG-"] {
        if let Some(rest) = s.strip_prefix(prefix)
            && !rest.is_empty()
        {
            return Ok(DeviceRef::Uuid(s.to_string()));
        }
    }
    Err(unsupported_device_ref(s).into())
}

#[cfg(test)]
mod tests;
