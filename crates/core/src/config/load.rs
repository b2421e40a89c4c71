//! Strict loading of NVIDIA's `version: v1` config file.
//!
//! The text (YAML, or JSON, which is YAML) is first parsed into a generic
//! tree, then walked against `ROOT`, a table of the known keys per path:
//! unknown or misplaced keys are errors (NVIDIA silently ignores them), with a
//! hint saying where a misplaced key belongs or which key was probably meant.
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

use std::time::Duration;

use crate::health::{HealthConfig, XidAction};
use std::io;
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::keys::{
    FLAGS, Field, GFD, HEALTH, IMEX, MPS, MPS_RESOURCE, PATTERN, PLUGIN, REPLICATED,
    REPLICATED_RESOURCE, RESOURCES, ROOT, SHARING, join, unknown_key_hint, with_override_keys,
};

use super::schema::{
    AllocationPolicy, Config, DeviceIdStrategy, DeviceListStrategy, DeviceRef, DeviceSelection,
    Flags, InvalidValue, MigStrategy, MpsLimits, PluginFlags, ReplicatedResource,
    ReplicatedResources, ResourceName, ResourcePattern, ResourcePatterns, Sharing, SharingStrategy,
    UnknownValue,
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
        if let Some(flags) = self.map(root, "flags", "", FLAGS)? {
            config.flags = self.flags(flags)?;
        }
        if let Some(resources) = self.map(root, "resources", "", RESOURCES)? {
            config.resources = Some(ResourcePatterns {
                gpus: self.patterns(resources, "gpus")?,
                mig: self.patterns(resources, "mig")?,
            });
        }
        if let Some(sharing) = self.map(root, "sharing", "", SHARING)? {
            config.sharing = self.sharing(sharing)?;
        }
        if let Some(imex) = self.map(root, "imex", "", IMEX)? {
            self.imex(imex)?;
        }
        if let Some(health) = self.map(root, "health", "", HEALTH)? {
            config.health = self.health(health)?;
        }
        Ok(config)
    }

    fn health(&self, m: &Map<String, Value>) -> Result<HealthConfig, ConfigError> {
        let mut health = HealthConfig::default();
        match m.get("recoverAfter") {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.as_u64().is_some() => {
                health.recover_after = n.as_u64().map(Duration::from_secs);
            }
            Some(Value::String(s)) => {
                health.recover_after =
                    Some(parse_duration(s).map_err(|e| self.invalid("health.recoverAfter", e))?);
            }
            Some(other) => {
                return Err(self.invalid(
                    "health.recoverAfter",
                    format!(
                        "expected a duration such as 300s or 5m, found {}",
                        describe(other)
                    ),
                ));
            }
        }
        match m.get("xids") {
            None | Some(Value::Null) => {}
            Some(Value::Object(xids)) => {
                for (key, value) in xids {
                    let path = format!("health.xids.{key}");
                    let xid: u64 = key.parse().map_err(|_| {
                        self.invalid(&path, format!("'{key}' is not an XID number"))
                    })?;
                    let action = match value {
                        Value::String(s) => {
                            XidAction::parse(s).map_err(|e| self.invalid(&path, e))?
                        }
                        other => {
                            return Err(self.invalid(
                                &path,
                                format!(
                                    "expected ignore, recover or reset, found {}",
                                    describe(other)
                                ),
                            ));
                        }
                    };
                    health.xids.insert(xid, action);
                }
            }
            Some(other) => {
                return Err(self.invalid(
                    "health.xids",
                    format!(
                        "expected a mapping of XID to action, found {}",
                        describe(other)
                    ),
                ));
            }
        }
        Ok(health)
    }

    fn flags(&self, m: &Map<String, Value>) -> Result<Flags, ConfigError> {
        let p = "flags";
        let mut flags = Flags::default();
        self.overridable_flags(m, &mut flags)?;
        // GFD only: type-checked, then discarded.
        self.bool(m, "useNodeFeatureAPI", p)?;
        self.map(m, "gfd", p, GFD)?;
        if let Some(plugin) = self.map(m, "plugin", p, PLUGIN)? {
            self.overridable_plugin(plugin, &mut flags.plugin)?;
        }
        Ok(flags)
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

    fn patterns(
        &self,
        m: &Map<String, Value>,
        key: &str,
    ) -> Result<Vec<ResourcePattern>, ConfigError> {
        let mut out = Vec::new();
        for (path, item) in self.list(m, key, "resources", PATTERN)?.unwrap_or_default() {
            let pattern = match self.string(item, "pattern", &path)? {
                Some(p) if !p.is_empty() => p,
                _ => return Err(self.invalid(&path, "resources must have a 'pattern' field set")),
            };
            let name = match self.string(item, "name", &path)? {
                Some(n) if !n.is_empty() => {
                    ResourceName::parse(&n).map_err(|e| self.invalid(&join(&path, "name"), e))?
                }
                _ => return Err(self.invalid(&path, "resources must have a 'name' field set")),
            };
            out.push(ResourcePattern { pattern, name });
        }
        Ok(out)
    }

    fn sharing(&self, m: &Map<String, Value>) -> Result<Sharing, ConfigError> {
        let mut sharing = Sharing::default();
        if let Some(ts) = self.map(m, "timeSlicing", "sharing", REPLICATED)? {
            sharing.time_slicing = self.replicated(ts, "sharing.timeSlicing", false)?;
        }
        if let Some(mps) = self.map(m, "mps", "sharing", MPS)? {
            sharing.mps = Some(self.replicated(mps, "sharing.mps", true)?);
        }
        Ok(sharing)
    }

    fn replicated(
        &self,
        m: &Map<String, Value>,
        path: &str,
        fail_default: bool,
    ) -> Result<ReplicatedResources, ConfigError> {
        let rename_by_default = self.bool(m, "renameByDefault", path)?.unwrap_or(false);
        let fail_requests_greater_than_one = self
            .bool(m, "failRequestsGreaterThanOne", path)?
            .unwrap_or(fail_default);
        let is_mps = path == "sharing.mps";
        let fields = if is_mps {
            MPS_RESOURCE
        } else {
            REPLICATED_RESOURCE
        };
        let items = self.list(m, "resources", path, fields)?.unwrap_or_default();
        if items.is_empty() {
            return Err(self.invalid(&join(path, "resources"), "no resources specified"));
        }
        let mut resources = Vec::with_capacity(items.len());
        for (item_path, item) in items {
            let mut resource = self.replicated_resource(item, &item_path)?;
            if is_mps {
                resource.mps = self.mps_limits(
                    item,
                    &item_path,
                    resource.replicas,
                    fail_requests_greater_than_one,
                )?;
            }
            resources.push(resource);
        }
        Ok(ReplicatedResources {
            rename_by_default,
            fail_requests_greater_than_one,
            resources,
        })
    }

    fn replicated_resource(
        &self,
        m: &Map<String, Value>,
        path: &str,
    ) -> Result<ReplicatedResource, ConfigError> {
        let name = match self.string(m, "name", path)? {
            Some(n) if !n.is_empty() => {
                ResourceName::parse(&n).map_err(|e| self.invalid(&join(path, "name"), e))?
            }
            _ => return Err(self.invalid(path, "no resource name specified")),
        };
        let rename = match self.string(m, "rename", path)? {
            Some(n) if !n.is_empty() => {
                Some(ResourceName::parse(&n).map_err(|e| self.invalid(&join(path, "rename"), e))?)
            }
            _ => None,
        };
        let devices = match m.get("devices") {
            None => DeviceSelection::All,
            Some(v) => self.devices(v, &join(path, "devices"))?,
        };
        let replicas_path = join(path, "replicas");
        let replicas = match m.get("replicas") {
            None | Some(Value::Null) => {
                return Err(self.invalid(path, "no replicas specified"));
            }
            Some(Value::Number(n)) => match n.as_i64() {
                Some(r) if r < 2 => {
                    return Err(self.invalid(&replicas_path, "number of replicas must be >= 2"));
                }
                Some(r) => u32::try_from(r).map_err(|_| {
                    self.invalid(
                        &replicas_path,
                        format!("number of replicas must be {} or less", u32::MAX),
                    )
                })?,
                None => {
                    return Err(self.invalid(
                        &replicas_path,
                        format!("expected an integer, found number {n}"),
                    ));
                }
            },
            Some(other) => {
                return Err(self.invalid(
                    &replicas_path,
                    format!("expected an integer, found {}", describe(other)),
                ));
            }
        };
        Ok(ReplicatedResource {
            name,
            rename,
            devices,
            replicas,
            mps: Default::default(),
        })
    }

    /// `memoryPerReplica`, `activeThreadPercentage` and
    /// `maxReplicasPerContainer` of an MPS resource, and NVIDIA's replica
    /// limit. Whether the memory fits a GPU is checked by the planner, which
    /// knows the GPUs.
    fn mps_limits(
        &self,
        m: &Map<String, Value>,
        path: &str,
        replicas: u32,
        fail_requests_greater_than_one: bool,
    ) -> Result<MpsLimits, ConfigError> {
        if replicas > MAX_MPS_REPLICAS {
            return Err(self.invalid(
                &join(path, "replicas"),
                format!(
                    "invalid MPS configuration: invalid device maximum allowed replicas exceeded: {replicas} > {MAX_MPS_REPLICAS} (an MPS server serves at most {MAX_MPS_REPLICAS} clients per GPU)"
                ),
            ));
        }
        let memory_path = join(path, "memoryPerReplica");
        let memory_per_replica_mib = match m.get("memoryPerReplica") {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) => {
                Some(parse_mebibytes(text).map_err(|e| self.invalid(&memory_path, e.to_string()))?)
            }
            Some(other) => {
                return Err(self.invalid(
                    &memory_path,
                    format!(
                        "expected a size such as 10Gi or 4096Mi, found {}",
                        describe(other)
                    ),
                ));
            }
        };
        let percent_path = join(path, "activeThreadPercentage");
        let active_thread_percentage = match m.get("activeThreadPercentage") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(p @ 1..=100) => Some(p as u32),
                _ => {
                    return Err(self.invalid(
                        &percent_path,
                        format!("must be a whole percentage from 1 to 100, found {n}"),
                    ));
                }
            },
            Some(other) => {
                return Err(self.invalid(
                    &percent_path,
                    format!(
                        "must be a whole percentage from 1 to 100, found {}",
                        describe(other)
                    ),
                ));
            }
        };
        let max_path = join(path, "maxReplicasPerContainer");
        let max_replicas_per_container = match m.get("maxReplicasPerContainer") {
            None | Some(Value::Null) if fail_requests_greater_than_one => 1,
            // Memory by count: up to every replica of one GPU.
            None | Some(Value::Null) => replicas,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(1) => 1,
                Some(k) if k > 1 && fail_requests_greater_than_one => {
                    return Err(self.invalid(
                        &max_path,
                        format!(
                            "{k} replicas per container needs 'failRequestsGreaterThanOne: false' in sharing.mps (it defaults to true under MPS, which refuses containers asking for more than one replica)"
                        ),
                    ));
                }
                Some(k) if (2..=u64::from(replicas)).contains(&k) => k as u32,
                _ => {
                    return Err(self.invalid(
                        &max_path,
                        format!(
                            "must be a whole number from 1 to replicas ({replicas}): a container's replicas are all on one GPU, found {n}"
                        ),
                    ));
                }
            },
            Some(other) => {
                return Err(self.invalid(
                    &max_path,
                    format!(
                        "must be a whole number from 1 to replicas ({replicas}), found {}",
                        describe(other)
                    ),
                ));
            }
        };
        Ok(MpsLimits {
            memory_per_replica_mib,
            active_thread_percentage,
            max_replicas_per_container,
        })
    }

    fn devices(&self, v: &Value, path: &str) -> Result<DeviceSelection, ConfigError> {
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

    fn imex(&self, m: &Map<String, Value>) -> Result<(), ConfigError> {
        let path = "imex.channelIDs";
        match m.get("channelIDs") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                let mut ids = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item.as_i64() {
                        Some(id) => ids.push(id),
                        None => {
                            return Err(self.invalid(
                                &format!("{path}[{i}]"),
                                format!("expected an integer, found {}", describe(item)),
                            ));
                        }
                    }
                }
                validate_imex_channel_ids(&ids).map_err(|e| self.invalid(path, e))?;
                // Accepted by NVIDIA's schema, but gpu-slicer injects no
                // IMEX channel: refused rather than silently ignored.
                if !ids.is_empty() {
                    return Err(self.invalid(path, IMEX_UNSUPPORTED));
                }
            }
            Some(other) => {
                return Err(
                    self.invalid(path, format!("expected a list, found {}", describe(other)))
                );
            }
        }
        self.bool(m, "required", "imex")?;
        Ok(())
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
mod tests {
    use super::*;
    use crate::config::keys::{Kind, generic_path};

    const SRC: &str = "config.yaml";

    fn err(text: &str) -> String {
        match parse(text, SRC) {
            Ok(c) => panic!("expected an error for {text:?}, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn ok(text: &str) -> Config {
        match parse(text, SRC) {
            Ok(c) => c,
            Err(e) => panic!("unexpected error for {text:?}: {e}"),
        }
    }

    fn ts(resource: &str) -> String {
        format!("sharing:\n  timeSlicing:\n    resources:\n    - {resource}\n")
    }

    const FLAGS_KEYS: &str = "migStrategy, failOnInitError, mpsRoot, nvidiaDriverRoot, \
        nvidiaDevRoot, gdrcopyEnabled, gdsEnabled, mofedEnabled, deviceDiscoveryStrategy, \
        useNodeFeatureAPI, plugin, gfd";

    #[test]
    fn unknown_and_misplaced_keys() {
        let cases: Vec<(String, String)> = vec![
            (
                "flags: {renameByDefault: true}".into(),
                "config.yaml: unknown key 'flags.renameByDefault': renameByDefault belongs under \
                 sharing.timeSlicing (or sharing.mps)"
                    .into(),
            ),
            (
                "sharing: {timeSlicing: {replicas: 2}}".into(),
                "config.yaml: unknown key 'sharing.timeSlicing.replicas': replicas belongs under \
                 sharing.timeSlicing.resources[] (or sharing.mps.resources[])"
                    .into(),
            ),
            (
                "sharing: {mps: {replicas: 2}}".into(),
                "config.yaml: unknown key 'sharing.mps.replicas': replicas belongs under \
                 sharing.mps.resources[] (or sharing.timeSlicing.resources[])"
                    .into(),
            ),
            (
                "flags: {plugin: {migStrategy: mixed}}".into(),
                "config.yaml: unknown key 'flags.plugin.migStrategy': migStrategy belongs under flags"
                    .into(),
            ),
            (
                "migStrategy: mixed".into(),
                "config.yaml: unknown key 'migStrategy': migStrategy belongs under flags".into(),
            ),
            (
                "flags: {version: v1}".into(),
                "config.yaml: unknown key 'flags.version': version belongs at the top level".into(),
            ),
            (
                "flags: {migstrategy: mixed}".into(),
                format!(
                    "config.yaml: unknown key 'flags.migstrategy': did you mean 'migStrategy'? \
                     valid keys under flags: {FLAGS_KEYS}"
                ),
            ),
            (
                "flags: {bogus: 1}".into(),
                format!("config.yaml: unknown key 'flags.bogus': valid keys under flags: {FLAGS_KEYS}"),
            ),
            (
                "flag: {}".into(),
                "config.yaml: unknown key 'flag': did you mean 'flags'? valid top-level keys: \
                 version, flags, resources, sharing, imex, health"
                    .into(),
            ),
            (
                ts("{name: gpu, replica: 2}"),
                "config.yaml: unknown key 'sharing.timeSlicing.resources[0].replica': did you mean \
                 'replicas'? valid keys under sharing.timeSlicing.resources[0]: name, rename, \
                 devices, replicas"
                    .into(),
            ),
            (
                "flags: {gfd: {oneshot: true, sleep: 1}}".into(),
                "config.yaml: unknown key 'flags.gfd.sleep': valid keys under flags.gfd: oneshot, \
                 noTimestamp, sleepInterval, outputFile, machineTypeFile"
                    .into(),
            ),
            (
                "resources: {gpus: [{pattern: '*', name: gpu, replicas: 2}]}".into(),
                "config.yaml: unknown key 'resources.gpus[0].replicas': replicas belongs under \
                 sharing.timeSlicing.resources[] (or sharing.mps.resources[])"
                    .into(),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(err(&text), expected, "{text}");
        }
    }

    #[test]
    fn invalid_values() {
        let cases: Vec<(String, &str)> = vec![
            (
                "version: v2".into(),
                "config.yaml: version: unknown version: v2",
            ),
            (
                "version: 1".into(),
                "config.yaml: version: unknown version: 1",
            ),
            (
                "- a\n- b\n".into(),
                "config.yaml: expected a mapping at the top level, found a list",
            ),
            (
                "flags: 3".into(),
                "config.yaml: flags: expected a mapping, found number 3",
            ),
            (
                "flags: {migStrategy: bogus}".into(),
                "config.yaml: flags.migStrategy: unknown MIG strategy: bogus",
            ),
            (
                "flags: {failOnInitError: maybe}".into(),
                "config.yaml: flags.failOnInitError: expected a boolean, found string \"maybe\"",
            ),
            (
                "flags: {mpsRoot: 3}".into(),
                "config.yaml: flags.mpsRoot: expected a string, found number 3",
            ),
            (
                "flags: {deviceDiscoveryStrategy: cuda}".into(),
                "config.yaml: flags.deviceDiscoveryStrategy: invalid --device-discovery-strategy option cuda",
            ),
            (
                "flags: {deviceDiscoveryStrategy: tegra}".into(),
                "config.yaml: flags.deviceDiscoveryStrategy: device discovery strategy tegra is not supported by gpu-slicer: it finds GPUs through NVML only, and Tegra's integrated GPUs (Jetson, IGX) are not NVML devices; use auto or nvml, or keep NVIDIA's plugin on Tegra nodes",
            ),
            (
                "flags: {plugin: {deviceListStrategy: bogus}}".into(),
                "config.yaml: flags.plugin.deviceListStrategy: invalid strategy: bogus",
            ),
            (
                "flags: {plugin: {deviceListStrategy: [envvar, bogus]}}".into(),
                "config.yaml: flags.plugin.deviceListStrategy: invalid strategy: bogus",
            ),
            (
                "flags: {plugin: {deviceListStrategy: 3}}".into(),
                "config.yaml: flags.plugin.deviceListStrategy: invalid deviceListStrategy: 3",
            ),
            (
                "flags: {plugin: {deviceListStrategy: [envvar, 3]}}".into(),
                "config.yaml: flags.plugin.deviceListStrategy[1]: invalid deviceListStrategy: 3",
            ),
            (
                "flags: {plugin: {deviceIDStrategy: serial}}".into(),
                "config.yaml: flags.plugin.deviceIDStrategy: invalid --device-id-strategy option: serial",
            ),
            (
                "flags: {plugin: {sharedDevicesAllocationPolicy: spread}}".into(),
                "config.yaml: flags.plugin.sharedDevicesAllocationPolicy: invalid \
                 --shared-devices-allocation-policy option: spread",
            ),
            (
                "resources: {gpus: [{name: gpu}]}".into(),
                "config.yaml: resources.gpus[0]: resources must have a 'pattern' field set",
            ),
            (
                "resources: {mig: [{pattern: 1g.10gb}]}".into(),
                "config.yaml: resources.mig[0]: resources must have a 'name' field set",
            ),
            (
                "resources: {gpus: {pattern: '*'}}".into(),
                "config.yaml: resources.gpus: expected a list, found a mapping",
            ),
            (
                "sharing: {timeSlicing: {}}".into(),
                "config.yaml: sharing.timeSlicing.resources: no resources specified",
            ),
            (
                "sharing: {mps: {resources: []}}".into(),
                "config.yaml: sharing.mps.resources: no resources specified",
            ),
            (
                ts("{replicas: 2}"),
                "config.yaml: sharing.timeSlicing.resources[0]: no resource name specified",
            ),
            (
                ts("{name: gpu}"),
                "config.yaml: sharing.timeSlicing.resources[0]: no replicas specified",
            ),
            (
                ts("{name: gpu, replicas: 1}"),
                "config.yaml: sharing.timeSlicing.resources[0].replicas: number of replicas must be >= 2",
            ),
            (
                "sharing: {mps: {resources: [{name: gpu, replicas: 1}]}}".into(),
                "config.yaml: sharing.mps.resources[0].replicas: number of replicas must be >= 2",
            ),
            (
                "sharing: {mps: {resources: [{name: gpu, replicas: 49}]}}".into(),
                "config.yaml: sharing.mps.resources[0].replicas: invalid MPS configuration: invalid device \
                 maximum allowed replicas exceeded: 49 > 48 (an MPS server serves at most 48 clients per GPU)",
            ),
            (
                "sharing: {mps: {resources: [{name: gpu, replicas: 4, memoryPerReplica: 10G}]}}".into(),
                "config.yaml: sharing.mps.resources[0].memoryPerReplica: '10G' is not a size: write it as 10Gi or 4096Mi",
            ),
            (
                "sharing: {mps: {resources: [{name: gpu, replicas: 4, memoryPerReplica: 0Mi}]}}".into(),
                "config.yaml: sharing.mps.resources[0].memoryPerReplica: '0Mi' is no memory: give at least 1Mi",
            ),
            (
                "sharing: {mps: {resources: [{name: gpu, replicas: 4, memoryPerReplica: 4096}]}}".into(),
                "config.yaml: sharing.mps.resources[0].memoryPerReplica: expected a size such as 10Gi or 4096Mi, found number 4096",
            ),
            (
                "sharing: {mps: {resources: [{name: gpu, replicas: 4, activeThreadPercentage: 0}]}}".into(),
                "config.yaml: sharing.mps.resources[0].activeThreadPercentage: must be a whole percentage from 1 to 100, found 0",
            ),
            (
                "sharing: {mps: {resources: [{name: gpu, replicas: 4, activeThreadPercentage: 150}]}}".into(),
                "config.yaml: sharing.mps.resources[0].activeThreadPercentage: must be a whole percentage from 1 to 100, found 150",
            ),
            (
                "sharing: {mps: {resources: [{name: gpu, replicas: 4, maxReplicasPerContainer: 2}]}}".into(),
                "config.yaml: sharing.mps.resources[0].maxReplicasPerContainer: 2 replicas per container needs \
                 'failRequestsGreaterThanOne: false' in sharing.mps (it defaults to true under MPS, which refuses \
                 containers asking for more than one replica)",
            ),
            (
                "sharing: {mps: {failRequestsGreaterThanOne: false, resources: [{name: gpu, replicas: 4, maxReplicasPerContainer: 5}]}}".into(),
                "config.yaml: sharing.mps.resources[0].maxReplicasPerContainer: must be a whole number from 1 to \
                 replicas (4): a container's replicas are all on one GPU, found 5",
            ),
            (
                "sharing: {mps: {failRequestsGreaterThanOne: false, resources: [{name: gpu, replicas: 4, maxReplicasPerContainer: 0}]}}".into(),
                "config.yaml: sharing.mps.resources[0].maxReplicasPerContainer: must be a whole number from 1 to \
                 replicas (4): a container's replicas are all on one GPU, found 0",
            ),
            (
                "sharing: {mps: {failRequestsGreaterThanOne: false, resources: [{name: gpu, replicas: 4, maxReplicasPerContainer: two}]}}".into(),
                "config.yaml: sharing.mps.resources[0].maxReplicasPerContainer: must be a whole number from 1 to \
                 replicas (4), found string \"two\"",
            ),
            (
                ts("{name: gpu, replicas: -3}"),
                "config.yaml: sharing.timeSlicing.resources[0].replicas: number of replicas must be >= 2",
            ),
            (
                ts("{name: gpu, replicas: '4'}"),
                "config.yaml: sharing.timeSlicing.resources[0].replicas: expected an integer, found string \"4\"",
            ),
            (
                ts("{name: gpu, replicas: 2, devices: some}"),
                "config.yaml: sharing.timeSlicing.resources[0].devices: devices set as 'some' but \
                 the only valid string input is 'all'",
            ),
            (
                ts("{name: gpu, replicas: 2, devices: 0}"),
                "config.yaml: sharing.timeSlicing.resources[0].devices: devices set as '0' but a \
                 count of devices must be > 0",
            ),
            (
                ts("{name: gpu, replicas: 2, devices: -1}"),
                "config.yaml: sharing.timeSlicing.resources[0].devices: devices set as '-1' but a \
                 count of devices must be > 0",
            ),
            (
                ts("{name: gpu, replicas: 2, devices: 1.5}"),
                "config.yaml: sharing.timeSlicing.resources[0].devices: devices set as '1.5' but a \
                 count of devices must be a whole number",
            ),
            (
                ts("{name: gpu, replicas: 2, devices: 99999999999}"),
                "config.yaml: sharing.timeSlicing.resources[0].devices: devices set as \
                 '99999999999', more devices than any node has",
            ),
            (
                ts("{name: gpu, replicas: 2, devices: [0, [1]]}"),
                "config.yaml: sharing.timeSlicing.resources[0].devices[1]: unsupported device \
                 in devices list: a list (expected a GPU index '0', a MIG device index \
                 '0:1', 'GPU-<uuid>' or 'MIG-<uuid>')",
            ),
            (
                ts("{name: gpu, replicas: 2, devices: [0, true]}"),
                "config.yaml: sharing.timeSlicing.resources[0].devices[1]: unsupported device \
                 in devices list: boolean true (expected a GPU index '0', a MIG device index \
                 '0:1', 'GPU-<uuid>' or 'MIG-<uuid>')",
            ),
            (
                ts("{name: gpu, replicas: 2, devices: [nvme0]}"),
                "config.yaml: sharing.timeSlicing.resources[0].devices[0]: unsupported device \
                 reference in devices list: 'nvme0' (expected a GPU index '0', a MIG device index \
                 '0:1', 'GPU-<uuid>' or 'MIG-<uuid>')",
            ),
            (
                ts("{name: gpu, replicas: 2, devices: {a: 1}}"),
                "config.yaml: sharing.timeSlicing.resources[0].devices: devices is a mapping; \
                 expected 'all', a count of devices or a list of devices",
            ),
            (
                ts(&format!("{{name: {}, replicas: 2}}", "a".repeat(53))),
                "config.yaml: sharing.timeSlicing.resources[0].name: fully-qualified resource name \
                 must be 63 characters or less: nvidia.com/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            ),
            (
                ts("{name: 'gpu shared', replicas: 2}"),
                "config.yaml: sharing.timeSlicing.resources[0].name: incorrect format for resource \
                 name 'nvidia.com/gpu shared': [name part must consist of alphanumeric characters, \
                 '-', '_' or '.', and must start and end with an alphanumeric character (e.g. \
                 'MyName', or 'my.name', or '123-abc', regex used for validation is \
                 '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')]",
            ),
            (
                ts("{name: gpu, rename: kubernetes.io/gpu, replicas: 2}"),
                "config.yaml: sharing.timeSlicing.resources[0].rename: incorrect format for \
                 resource name 'kubernetes.io/gpu': [the kubernetes.io/ prefix is reserved for \
                 native resources, not extended resources]",
            ),
            (
                "imex: {channelIDs: [0]}".into(),
                "config.yaml: imex.channelIDs: IMEX channels are not supported by gpu-slicer: a container \
                 would not get /dev/nvidia-caps-imex-channels/channel0; remove imex.channelIDs (or set it \
                 to []), or keep NVIDIA's plugin on nodes whose workloads need IMEX",
            ),
            (
                "imex: {channelIDs: [1, 2]}".into(),
                "config.yaml: imex.channelIDs: invalid IMEX config: channelIDs must be [] or [0]; found [1 2]",
            ),
            (
                "imex: {channelIDs: [0, 0]}".into(),
                "config.yaml: imex.channelIDs: invalid IMEX config: channelIDs must be [] or [0]; found [0 0]",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(err(&text), expected, "{text}");
        }
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let e = err("flags:\n  migStrategy: [mixed\n");
        assert!(e.starts_with("config.yaml: "), "{e}");
        assert!(e.contains("line "), "{e}");
        assert!(e.contains("column "), "{e}");
        let e = err("{\"flags\": {\"migStrategy\": \"mixed\"}");
        assert!(e.starts_with("config.yaml: "), "{e}");
        assert!(e.contains("line 1"), "{e}");
        let e = err("flags:\n  migStrategy: mixed\n migStrategy: none\n");
        assert!(e.contains("line 3"), "{e}");
        assert_eq!(
            err("flags:\n  migStrategy: mixed\n  migStrategy: none\n"),
            "config.yaml: duplicate mapping key: migStrategy at line 3, column 3"
        );
        assert_eq!(
            err("{\"flags\": {}, \"flags\": {}}"),
            "config.yaml: duplicate mapping key: flags at line 1, column 15"
        );
    }

    #[test]
    fn empty_and_comment_only_files_are_defaults() {
        for text in [
            "",
            "\n\n",
            "# nothing here\n  # indented\n",
            "---\n",
            "{}",
            "version: v1",
        ] {
            assert_eq!(ok(text), Config::default(), "{text:?}");
        }
    }

    #[test]
    fn nvidia_examples_load_unchanged() {
        let c = ok(
            "version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 10\n",
        );
        assert_eq!(
            c.sharing.time_slicing,
            ReplicatedResources {
                rename_by_default: false,
                fail_requests_greater_than_one: false,
                resources: vec![ReplicatedResource {
                    name: ResourceName::new_unchecked("nvidia.com/gpu"),
                    rename: None,
                    devices: DeviceSelection::All,
                    replicas: 10,
                    mps: Default::default(),
                }],
            }
        );
        assert_eq!(c.sharing.strategy(), SharingStrategy::TimeSlicing);

        let c = ok(
            "version: v1\nflags: {migStrategy: mixed}\nsharing:\n  timeSlicing:\n    renameByDefault: true\n    resources:\n    - {name: nvidia.com/mig-1g.10gb, replicas: 2}\n",
        );
        assert_eq!(c.flags.mig_strategy, MigStrategy::Mixed);
        assert!(c.sharing.time_slicing.rename_by_default);
        assert_eq!(
            c.sharing.time_slicing.resources[0].name.as_str(),
            "nvidia.com/mig-1g.10gb"
        );
        assert!(validate_cross(&c).is_ok());
    }

    #[test]
    fn full_file_with_every_key() {
        let c = ok(r#"
version: v1
flags:
  migStrategy: single
  failOnInitError: false
  mpsRoot: /run/nvidia/mps
  nvidiaDriverRoot: /run/nvidia/driver
  nvidiaDevRoot: /
  gdrcopyEnabled: true
  gdsEnabled: yes
  mofedEnabled: false
  useNodeFeatureAPI: true
  deviceDiscoveryStrategy: nvml
  plugin:
    passDeviceSpecs: true
    deviceListStrategy: [volume-mounts, envvar, volume-mounts]
    deviceIDStrategy: index
    cdiAnnotationPrefix: cdi.example.com/
    nvidiaCTKPath: /usr/local/bin/nvidia-ctk
    containerDriverRoot: /host-driver
    sharedDevicesAllocationPolicy: packed
  gfd:
    oneshot: true
    noTimestamp: false
    sleepInterval: 60s
    outputFile: /tmp/x
    machineTypeFile: /sys/class/dmi/id/product_name
resources:
  gpus:
  - {pattern: "*", name: gpu}
  mig:
  - {pattern: "1g.10gb", name: mig-1g.10gb}
sharing:
  mps:
    resources:
    - name: gpu
      rename: gpu.mps
      devices: [0, "1", "0:1", GPU-abc, MIG-def, MIG-GPU-abc/1/0]
      replicas: 4
imex:
  channelIDs: []
  required: true
"#);
        let f = &c.flags;
        assert_eq!(f.mig_strategy, MigStrategy::Single);
        assert!(!f.fail_on_init_error);
        assert_eq!(f.mps_root, "/run/nvidia/mps");
        assert_eq!(f.nvidia_driver_root, "/run/nvidia/driver");
        assert_eq!(f.dev_root(), "/");
        assert!(f.gdrcopy_enabled && f.gds_enabled && !f.mofed_enabled);
        assert_eq!(f.device_discovery_strategy, "nvml");
        assert_eq!(
            f.plugin,
            PluginFlags {
                pass_device_specs: true,
                device_list_strategy: vec![
                    DeviceListStrategy::VolumeMounts,
                    DeviceListStrategy::Envvar
                ],
                device_id_strategy: DeviceIdStrategy::Index,
                cdi_annotation_prefix: "cdi.example.com/".into(),
                nvidia_ctk_path: "/usr/local/bin/nvidia-ctk".into(),
                container_driver_root: "/host-driver".into(),
                shared_devices_allocation_policy: AllocationPolicy::Packed,
            }
        );
        let r = c.resources.as_ref().unwrap();
        assert_eq!(r.gpus[0].name.as_str(), "nvidia.com/gpu");
        assert_eq!(r.mig[0].pattern, "1g.10gb");
        let mps = c.sharing.mps.as_ref().unwrap();
        assert!(mps.fail_requests_greater_than_one, "MPS defaults to true");
        assert_eq!(
            mps.resources[0].rename,
            Some(ResourceName::new_unchecked("nvidia.com/gpu.mps"))
        );
        assert_eq!(
            mps.resources[0].devices,
            DeviceSelection::List(vec![
                DeviceRef::Index(0),
                DeviceRef::Index(1),
                DeviceRef::MigIndex(0, 1),
                DeviceRef::Uuid("GPU-abc".into()),
                DeviceRef::Uuid("MIG-def".into()),
                DeviceRef::Uuid("MIG-GPU-abc/1/0".into()),
            ])
        );
        assert_eq!(c.sharing.strategy(), SharingStrategy::Mps);
        assert!(validate_cross(&c).is_ok());
    }

    #[test]
    fn json_input() {
        let c = ok(r#"{
	"version": "v1",
	"flags": {"migStrategy": "mixed", "plugin": {"deviceListStrategy": "cdi-cri"}},
	"sharing": {"timeSlicing": {"failRequestsGreaterThanOne": true,
	  "resources": [{"name": "nvidia.com/gpu", "replicas": 3, "devices": 2}]}}
}"#);
        assert_eq!(c.flags.mig_strategy, MigStrategy::Mixed);
        assert_eq!(
            c.flags.plugin.device_list_strategy,
            vec![DeviceListStrategy::CdiCri]
        );
        assert!(c.sharing.time_slicing.fail_requests_greater_than_one);
        assert_eq!(
            c.sharing.time_slicing.resources[0].devices,
            DeviceSelection::Count(2)
        );
        assert_eq!(
            err(r#"{"flags": {"migstrategy": "mixed"}}"#),
            format!(
                "config.yaml: unknown key 'flags.migstrategy': did you mean 'migStrategy'? \
                 valid keys under flags: {FLAGS_KEYS}"
            )
        );
    }

    #[test]
    fn devices_forms() {
        let devices = |d: &str| {
            ok(&ts(&format!("{{name: gpu, replicas: 2, devices: {d}}}")))
                .sharing
                .time_slicing
                .resources[0]
                .devices
                .clone()
        };
        assert_eq!(devices("all"), DeviceSelection::All);
        assert_eq!(devices("3"), DeviceSelection::Count(3));
        assert_eq!(
            devices("[0, \"1\", \"0:1\", \"GPU-abc\"]"),
            DeviceSelection::List(vec![
                DeviceRef::Index(0),
                DeviceRef::Index(1),
                DeviceRef::MigIndex(0, 1),
                DeviceRef::Uuid("GPU-abc".into()),
            ])
        );
        let c = ok(&ts("{name: gpu, replicas: 2}"));
        assert_eq!(
            c.sharing.time_slicing.resources[0].devices,
            DeviceSelection::All
        );
    }

    #[test]
    fn device_list_strategy_string_or_list() {
        let dls = |v: &str| {
            ok(&format!("flags: {{plugin: {{deviceListStrategy: {v}}}}}"))
                .flags
                .plugin
                .device_list_strategy
        };
        assert_eq!(dls("volume-mounts"), vec![DeviceListStrategy::VolumeMounts]);
        assert_eq!(
            dls("[envvar, cdi-annotations]"),
            vec![
                DeviceListStrategy::Envvar,
                DeviceListStrategy::CdiAnnotations
            ]
        );
        assert_eq!(dls("[]"), vec![DeviceListStrategy::Envvar]);
    }

    #[test]
    fn cross_checks() {
        let mps = "sharing: {mps: {resources: [{name: gpu, replicas: 2}]}}\n";
        let c = ok(&format!(
            "flags: {{migStrategy: mixed, mpsRoot: /mps}}\n{mps}"
        ));
        assert_eq!(
            validate_cross(&c).unwrap_err().to_string(),
            "unable to validate flags: using --mig-strategy=mixed is not supported with MPS"
        );
        let c = ok(mps);
        assert_eq!(
            validate_cross(&c).unwrap_err().to_string(),
            "unable to validate flags: using MPS requires --mps-root to be specified"
        );
        let c = ok(&format!("flags: {{mpsRoot: /mps}}\n{mps}"));
        assert!(validate_cross(&c).is_ok());
        let both = "flags: {mpsRoot: /mps}\nsharing:\n  timeSlicing: {resources: [{name: other, replicas: 2}, {name: gpu, replicas: 4}]}\n  mps: {resources: [{name: gpu, replicas: 2}]}\n";
        assert_eq!(
            validate_cross(&ok(both)).unwrap_err().to_string(),
            "unable to validate flags: sharing.timeSlicing.resources[1] and sharing.mps.resources[0] both \
             share nvidia.com/gpu: a resource is shared one way; remove one of the entries"
        );
    }

    /// The key table ([`ROOT`]) is what the "unknown key" hints come from;
    /// this checks it against the reader: every leaf the table declares is
    /// really read and type-checked (a wrong type is refused at that key),
    /// except the keys NVIDIA's plugin accepts and ignores, which must parse.
    #[test]
    fn every_declared_key_is_read_by_the_loader() {
        const IGNORED: &[&str] = &[
            "flags.gfd.oneshot",
            "flags.gfd.noTimestamp",
            "flags.gfd.sleepInterval",
            "flags.gfd.outputFile",
            "flags.gfd.machineTypeFile",
        ];
        /// YAML placing `value` at `path` (`a.b[].c`: lists get one item).
        fn yaml_at(path: &[&str], value: &str) -> String {
            let mut text = String::new();
            for (depth, part) in path.iter().enumerate() {
                let indent = "  ".repeat(depth);
                let (key, list) = match part.strip_suffix("[]") {
                    Some(key) => (key, true),
                    None => (*part, false),
                };
                let last = depth + 1 == path.len();
                let _ = std::fmt::Write::write_fmt(
                    &mut text,
                    format_args!(
                        "{indent}{key}:{}{}\n",
                        if last {
                            format!(" {value}")
                        } else {
                            String::new()
                        },
                        if list {
                            "\n".to_string() + &"  ".repeat(depth + 1) + "-"
                        } else {
                            String::new()
                        }
                    ),
                );
            }
            text
        }
        fn leaves(fields: &[Field], parent: &[String], out: &mut Vec<Vec<String>>) {
            for f in fields {
                let mut here = parent.to_vec();
                match f.kind {
                    Kind::Leaf => {
                        here.push(f.key.to_string());
                        out.push(here);
                    }
                    Kind::Map(children) => {
                        here.push(f.key.to_string());
                        leaves(children, &here, out);
                    }
                    Kind::List(children) => {
                        here.push(format!("{}[]", f.key));
                        leaves(children, &here, out);
                    }
                }
            }
        }
        let mut all = Vec::new();
        leaves(ROOT, &[], &mut all);
        assert!(all.len() > 30, "{all:?}");
        for path in all {
            let parts: Vec<&str> = path.iter().map(String::as_str).collect();
            let dotted = parts.join(".").replace("[]", "");
            // A mapping is the wrong type for every leaf.
            let text = yaml_at(&parts, "{wrongType: {}}");
            let result = parse(&text, "t.yaml");
            if IGNORED.contains(&dotted.as_str()) {
                assert!(result.is_ok(), "{dotted}: {result:?}\n{text}");
                continue;
            }
            let error = match result {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{dotted} is declared but a wrong type passed:\n{text}"),
            };
            assert!(
                !error.contains("unknown key"),
                "{dotted} is declared but refused as unknown: {error}"
            );
        }
    }

    #[test]
    fn generic_paths_drop_indices() {
        assert_eq!(generic_path("a.b[12].c[3]"), "a.b[].c[]");
    }
}
