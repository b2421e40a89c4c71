//! NVIDIA mig-parted's config file, and which layout a GPU gets from it.
//!
//! The format (mig-parted's `api/spec/v1`, the GPU Operator's
//! `default-mig-parted-config` ConfigMap):
//!
//! ```yaml
//! version: v1
//! mig-configs:
//!   all-balanced:
//!     - device-filter: ["0x20B010DE", "0x20B110DE"]   # optional
//!       devices: all                                  # or [0, 1, 2]
//!       mig-enabled: true
//!       mig-devices: {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}
//! ```
//!
//! Selection follows mig-parted's walk: every entry of the named config is
//! applied, in file order, to each GPU its `device-filter` (PCI device id)
//! and `devices` (NVML index) select, so the last entry selecting a GPU
//! wins and a GPU no entry selects is left as it is.
//!
//! The built-in layouts ([`MigLayouts::Builtin`]) are the catalog's
//! ([`catalog::layout`]): for each model, `all-disabled`, `all-enabled`,
//! `all-<profile>` at the profile's maximum count and `all-balanced`, which
//! are the names and contents of the GPU Operator's default config for the
//! catalog's models. A user's file replaces them entirely, as it does for
//! MIG Manager.
//!
//! Deliberate differences from mig-parted: input is bounded (size, names,
//! counts); device filters with a subsystem id (`0x...:0x...`) are refused,
//! since the GPU's subsystem id is not part of what is matched here; a
//! profile count above what the GPU supports is an error at resolution
//! instead of at the driver.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use crate::gpu::catalog::{self, CatalogError, GpuModel, MigLayout};

/// Largest config file read (the GPU Operator's default is about 20 KiB).
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// Most named configs in one file.
pub const MAX_CONFIGS: usize = 1024;
/// Most entries in one named config.
pub const MAX_ENTRIES: usize = 64;
/// A config name is the value of the `nvidia.com/mig.config` label.
pub const MAX_NAME_LENGTH: usize = 63;
/// GPU indices an entry may name (`devices: [..]`), and the highest one.
pub const MAX_DEVICE_INDEX: u32 = 63;
/// Most PCI device ids in one `device-filter`.
pub const MAX_FILTERS: usize = 64;
/// Most profiles in one `mig-devices` map, and the highest count.
pub const MAX_PROFILES: usize = 32;
pub const MAX_COUNT: u32 = 64;

/// A parsed, validated mig-parted config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigPartedConfig {
    /// Config name → entries, in file order.
    pub configs: BTreeMap<String, Vec<Entry>>,
}

/// One entry of a named config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// PCI device ids (`0xDDDDVVVV`) the entry applies to; empty: any GPU.
    pub device_filter: Vec<u32>,
    pub devices: Devices,
    pub mig_enabled: bool,
    /// Profile name → count, as written (`1g.5gb+me`).
    pub mig_devices: BTreeMap<String, u32>,
}

/// Which GPUs (NVML indices) an entry applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Devices {
    All,
    Indices(Vec<u32>),
}

impl Entry {
    /// The entry applies to the GPU at `index` with `pci_device_id`.
    pub fn selects(&self, index: u32, pci_device_id: u32) -> bool {
        let filter_ok =
            self.device_filter.is_empty() || self.device_filter.contains(&pci_device_id);
        let index_ok = match &self.devices {
            Devices::All => true,
            Devices::Indices(list) => list.contains(&index),
        };
        filter_ok && index_ok
    }
}

/// Why a mig-parted config file is refused: where (file and key) and what
/// to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigPartedError {
    #[error(
        "{source_name}: the file has more than {max} bytes, the most a MIG config may have; is it the right file?"
    )]
    TooLarge { source_name: String, max: usize },
    #[error("{source_name}: {message}")]
    Syntax {
        source_name: String,
        message: String,
    },
    #[error("{source_name}: {key}: {message}")]
    Invalid {
        source_name: String,
        key: String,
        message: String,
    },
}

/// Why a layout cannot be resolved for a GPU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("MIG config '{name}' is not in {source_name}; its configs are: {valid}")]
    UnknownConfig {
        name: String,
        source_name: String,
        valid: String,
    },
    /// Boxed: the catalog's errors carry several strings, and this one is
    /// returned on every resolution.
    #[error("{0}")]
    Catalog(Box<CatalogError>),
}

impl From<CatalogError> for LayoutError {
    fn from(e: CatalogError) -> Self {
        LayoutError::Catalog(Box::new(e))
    }
}

// ---------------------------------------------------------------------------
// Parsing

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    version: String,
    #[serde(rename = "mig-configs")]
    mig_configs: Option<BTreeMap<String, Vec<RawEntry>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    #[serde(rename = "device-filter", default)]
    device_filter: Option<StringOrList>,
    devices: RawDevices,
    #[serde(rename = "mig-enabled")]
    mig_enabled: bool,
    #[serde(rename = "mig-devices", default)]
    mig_devices: Option<BTreeMap<String, i64>>,
}

/// `device-filter`: one string or a list of strings.
struct StringOrList(Vec<String>);

impl<'de> Deserialize<'de> for StringOrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StringOrList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a PCI device id such as \"0x20B010DE\", or a list of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StringOrList(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    if out.len() == MAX_FILTERS {
                        return Err(de::Error::custom(format_args!(
                            "device-filter lists more than {MAX_FILTERS} PCI device ids"
                        )));
                    }
                    out.push(s);
                }
                Ok(StringOrList(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `devices`: `all` or a list of GPU indices.
enum RawDevices {
    All,
    Indices(Vec<i64>),
}

impl<'de> Deserialize<'de> for RawDevices {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawDevices;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("'all' or a list of GPU indices such as [0, 1]")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if v == "all" {
                    Ok(RawDevices::All)
                } else {
                    Err(E::custom(format_args!(
                        "devices: '{v}' is not 'all'; write 'all' or a list of GPU indices such as [0, 1]"
                    )))
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(i) = seq.next_element::<i64>()? {
                    if out.len() > MAX_DEVICE_INDEX as usize {
                        return Err(de::Error::custom(format_args!(
                            "devices lists more than {} GPU indices",
                            MAX_DEVICE_INDEX + 1
                        )));
                    }
                    out.push(i);
                }
                Ok(RawDevices::Indices(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses and validates a mig-parted config; `source_name` (the file)
/// prefixes every message.
pub fn parse(text: &str, source_name: &str) -> Result<MigPartedConfig, MigPartedError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(MigPartedError::TooLarge {
            source_name: source_name.to_string(),
            max: MAX_FILE_BYTES,
        });
    }
    let raw: RawSpec = serde_saphyr::from_str(text).map_err(|e| MigPartedError::Syntax {
        source_name: source_name.to_string(),
        message: crate::messages::yaml_error(&e),
    })?;
    let invalid = |key: String, message: String| MigPartedError::Invalid {
        source_name: source_name.to_string(),
        key,
        message,
    };
    if raw.version != "v1" {
        return Err(invalid(
            "version".into(),
            format!(
                "unknown version '{}'; mig-parted configs are 'v1'",
                raw.version
            ),
        ));
    }
    let configs = raw.mig_configs.unwrap_or_default();
    if configs.is_empty() {
        return Err(invalid(
            "mig-configs".into(),
            "at least one named config is required (e.g. all-disabled)".into(),
        ));
    }
    if configs.len() > MAX_CONFIGS {
        return Err(invalid(
            "mig-configs".into(),
            format!("{} configs, more than {MAX_CONFIGS}", configs.len()),
        ));
    }
    let mut out = BTreeMap::new();
    for (name, entries) in configs {
        let key = format!("mig-configs.{name}");
        if name.is_empty() || name.len() > MAX_NAME_LENGTH || !valid_label_value(&name) {
            return Err(invalid(
                key,
                format!(
                    "a config name is the value of the nvidia.com/mig.config label: at most {MAX_NAME_LENGTH} characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
                ),
            ));
        }
        if entries.is_empty() {
            return Err(invalid(
                key,
                "at least one entry is required (e.g. '- devices: all' with 'mig-enabled: false')"
                    .into(),
            ));
        }
        if entries.len() > MAX_ENTRIES {
            return Err(invalid(
                key,
                format!("{} entries, more than {MAX_ENTRIES}", entries.len()),
            ));
        }
        let mut checked = Vec::with_capacity(entries.len());
        for (i, entry) in entries.into_iter().enumerate() {
            checked
                .push(check_entry(entry, &format!("{key}[{i}]")).map_err(|(k, m)| invalid(k, m))?);
        }
        out.insert(name, checked);
    }
    Ok(MigPartedConfig { configs: out })
}

fn valid_label_value(s: &str) -> bool {
    let edge = |c: char| c.is_ascii_alphanumeric();
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.chars().next().is_some_and(edge)
        && s.chars().last().is_some_and(edge)
}

fn check_entry(raw: RawEntry, key: &str) -> Result<Entry, (String, String)> {
    let mut device_filter = Vec::new();
    for id in raw.device_filter.map(|f| f.0).unwrap_or_default() {
        device_filter.push(
            parse_pci_device_id(&id)
                .map_err(|e| (format!("{key}.device-filter"), e.to_string()))?,
        );
    }
    let devices = match raw.devices {
        RawDevices::All => Devices::All,
        RawDevices::Indices(list) => {
            let mut out = Vec::with_capacity(list.len());
            for i in list {
                let index = u32::try_from(i)
                    .ok()
                    .filter(|i| *i <= MAX_DEVICE_INDEX)
                    .ok_or_else(|| {
                        (
                            format!("{key}.devices"),
                            format!(
                                "{i} is not a GPU index (0 to {MAX_DEVICE_INDEX}, as nvidia-smi numbers GPUs)"
                            ),
                        )
                    })?;
                out.push(index);
            }
            Devices::Indices(out)
        }
    };
    let mig_devices_key = format!("{key}.mig-devices");
    let mut mig_devices = BTreeMap::new();
    match (raw.mig_enabled, raw.mig_devices) {
        (true, None) => {
            return Err((
                mig_devices_key,
                "required when mig-enabled is true; write 'mig-devices: {}' for MIG mode on with no instances".into(),
            ));
        }
        (false, Some(d)) if !d.is_empty() => {
            return Err((
                mig_devices_key,
                "MIG devices given while mig-enabled is false; remove them or set mig-enabled: true"
                    .into(),
            ));
        }
        (_, Some(d)) => {
            if d.len() > MAX_PROFILES {
                return Err((
                    mig_devices_key,
                    format!("{} profiles, more than {MAX_PROFILES}", d.len()),
                ));
            }
            for (profile, count) in d {
                if !valid_profile_name(&profile) {
                    return Err((
                        format!("{mig_devices_key}.{profile}"),
                        "not a MIG profile name; write '<G>g.<GB>gb' with an optional attribute, e.g. '1g.5gb' or '1g.5gb+me'".into(),
                    ));
                }
                let count = u32::try_from(count)
                    .ok()
                    .filter(|c| *c <= MAX_COUNT)
                    .ok_or_else(|| {
                        (
                            format!("{mig_devices_key}.{profile}"),
                            format!("count {count} is not between 0 and {MAX_COUNT}"),
                        )
                    })?;
                mig_devices.insert(profile, count);
            }
            if !mig_devices.is_empty() && mig_devices.values().all(|c| *c == 0) {
                // As mig-parted: an explicit map of zeros is a mistake, `{}` is not.
                return Err((
                    mig_devices_key,
                    "every count is 0; write 'mig-devices: {}' for MIG mode on with no instances"
                        .into(),
                ));
            }
        }
        (false, None) => {}
    }
    Ok(Entry {
        device_filter,
        devices,
        mig_enabled: raw.mig_enabled,
        mig_devices,
    })
}

/// Why a `device-filter` entry is not a PCI device id gpu-slicer matches.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PciDeviceIdError {
    #[error(
        "'{0}' is not a PCI device id; write device and vendor as 0xDDDDVVVV, e.g. \"0x20B010DE\" for an A100-SXM4-40GB"
    )]
    NotAnId(String),
    #[error(
        "'{0}' has a subsystem id, which gpu-slicer does not match on; write the device and vendor only (the part before ':')"
    )]
    HasSubsystem(String),
}

/// `0xDDDDVVVV` (hex, as mig-parted writes device and vendor).
fn parse_pci_device_id(s: &str) -> Result<u32, PciDeviceIdError> {
    let bad = || PciDeviceIdError::NotAnId(s.to_owned());
    if s.contains(':') {
        return Err(PciDeviceIdError::HasSubsystem(s.to_owned()));
    }
    let hex = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .ok_or_else(bad)?;
    if hex.is_empty() || hex.len() > 8 {
        return Err(bad());
    }
    u32::from_str_radix(hex, 16).map_err(|_| bad())
}

/// mig-parted's profile format: `[<C>c.]<G>g.<GB>gb` then attributes
/// (`+me`, `-me`, `+gfx`, `+me.all`).
fn valid_profile_name(s: &str) -> bool {
    let base_end = s.find(['+', '-']).unwrap_or(s.len());
    let (base, attrs) = s.split_at(base_end);
    let parts: Vec<&str> = base.split('.').collect();
    let number = |p: &str, suffix: &str| {
        p.strip_suffix(suffix)
            .is_some_and(|n| !n.is_empty() && n.len() <= 4 && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let base_ok = match parts.as_slice() {
        [g, gb] => number(g, "g") && number(gb, "gb"),
        [c, g, gb] => number(c, "c") && number(g, "g") && number(gb, "gb"),
        _ => false,
    };
    let attrs_ok = attrs.len() <= 16
        && attrs
            .chars()
            .all(|c| c.is_ascii_lowercase() || matches!(c, '+' | '-' | '.'));
    s.len() <= 32 && base_ok && attrs_ok
}

// ---------------------------------------------------------------------------
// Resolution

/// Where named layouts come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigLayouts {
    /// The catalog's, per model (NVIDIA's default names and contents);
    /// also accepts custom `profile=count` lists.
    Builtin,
    /// A user's mig-parted file, replacing the built-in ones.
    File {
        source_name: String,
        config: MigPartedConfig,
    },
}

/// One GPU, as layouts select it.
#[derive(Debug, Clone, Copy)]
pub struct GpuIdentity<'a> {
    /// NVML index.
    pub index: u32,
    /// PCI device id as `0xDDDDVVVV` (NVML's `pciDeviceId`).
    pub pci_device_id: u32,
    pub model: &'a GpuModel,
}

impl MigLayouts {
    /// The layout `name` gives `gpu`; `None` when the layout has no entry
    /// for it (the GPU is left as it is).
    pub fn resolve(
        &self,
        name: &str,
        gpu: GpuIdentity<'_>,
    ) -> Result<Option<MigLayout>, LayoutError> {
        match self {
            MigLayouts::Builtin => Ok(Some(catalog::layout(gpu.model, name)?)),
            MigLayouts::File {
                source_name,
                config,
            } => {
                let entries =
                    config
                        .configs
                        .get(name.trim())
                        .ok_or_else(|| LayoutError::UnknownConfig {
                            name: name.to_string(),
                            source_name: source_name.clone(),
                            valid: config
                                .configs
                                .keys()
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", "),
                        })?;
                let Some(entry) = entries
                    .iter()
                    .rev()
                    .find(|e| e.selects(gpu.index, gpu.pci_device_id))
                else {
                    return Ok(None);
                };
                if !entry.mig_enabled {
                    return Ok(Some(MigLayout::Disabled));
                }
                let counts: Vec<(&str, u32)> = entry
                    .mig_devices
                    .iter()
                    .map(|(p, c)| (p.as_str(), *c))
                    .collect();
                Ok(Some(catalog::layout_from_counts(gpu.model, name, &counts)?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A100_40: u32 = 0x20B0_10DE;
    const A100_80: u32 = 0x20B2_10DE;

    /// The shape of NVIDIA's default config: a model-specific all-balanced.
    const FILE: &str = r#"
version: v1
mig-configs:
  all-disabled:
    - devices: all
      mig-enabled: false
  all-enabled:
    - devices: all
      mig-enabled: true
      mig-devices: {}
  all-balanced:
    - device-filter: ["0x20B010DE", "0x20B110DE"]
      devices: all
      mig-enabled: true
      mig-devices:
        "1g.5gb": 2
        "2g.10gb": 1
        "3g.20gb": 1
    - device-filter: "0x20B210DE"
      devices: all
      mig-enabled: true
      mig-devices:
        "1g.10gb": 2
        "2g.20gb": 1
        "3g.40gb": 1
  custom-config:
    - devices: [0, 1]
      mig-enabled: false
    - devices: [1]
      mig-enabled: true
      mig-devices:
        "1g.5gb+me": 1
"#;

    fn file() -> MigLayouts {
        MigLayouts::File {
            source_name: "config.yaml".into(),
            config: parse(FILE, "config.yaml").expect("parses"),
        }
    }

    fn gpu(index: u32, pci: u32) -> GpuIdentity<'static> {
        GpuIdentity {
            index,
            pci_device_id: pci,
            model: catalog::model_by_pci_device_id(pci).expect("in catalog"),
        }
    }

    fn counts(layout: Option<MigLayout>) -> Option<Vec<(String, u32)>> {
        layout.map(|l| match l {
            MigLayout::Disabled => vec![("disabled".to_string(), 0)],
            other => other
                .counts()
                .into_iter()
                .map(|(p, c)| (p.to_string(), c))
                .collect(),
        })
    }

    #[test]
    fn resolution_per_gpu() {
        let f = file();
        let cases: &[(&str, u32, u32, Option<&[(&str, u32)]>)] = &[
            ("all-disabled", 0, A100_40, Some(&[("disabled", 0)])),
            ("all-enabled", 3, A100_80, Some(&[])),
            (
                "all-balanced",
                0,
                A100_40,
                Some(&[("1g.5gb", 2), ("2g.10gb", 1), ("3g.20gb", 1)]),
            ),
            (
                "all-balanced",
                5,
                A100_80,
                Some(&[("1g.10gb", 2), ("2g.20gb", 1), ("3g.40gb", 1)]),
            ),
            // No entry's device-filter selects an H100: left alone.
            ("all-balanced", 0, 0x2330_10DE, None),
            // Last selecting entry wins; unnamed indices are left alone.
            ("custom-config", 0, A100_40, Some(&[("disabled", 0)])),
            ("custom-config", 1, A100_40, Some(&[("1g.5gb+me", 1)])),
            ("custom-config", 2, A100_40, None),
        ];
        for (name, index, pci, want) in cases {
            let got = counts(f.resolve(name, gpu(*index, *pci)).expect(name));
            let want = want.map(|w| w.iter().map(|(p, c)| (p.to_string(), *c)).collect());
            assert_eq!(got, want, "{name} on GPU {index} ({pci:#x})");
        }
    }

    #[test]
    fn builtin_layouts_are_the_catalogs() {
        let l = MigLayouts::Builtin
            .resolve("all-balanced", gpu(0, 0x2335_10DE))
            .expect("h200")
            .expect("some");
        assert_eq!(
            l.counts().into_iter().collect::<Vec<_>>(),
            vec![("1g.18gb", 2), ("2g.35gb", 1), ("3g.71gb", 1)]
        );
    }

    #[test]
    fn resolution_errors_name_the_config_and_the_gpu() {
        let f = file();
        let e = f
            .resolve("all-1g.5gb", gpu(0, A100_40))
            .expect_err("absent");
        assert_eq!(
            e.to_string(),
            "MIG config 'all-1g.5gb' is not in config.yaml; its configs are: all-balanced, all-disabled, all-enabled, custom-config"
        );
        // A profile the GPU lacks: the catalog's message.
        let e = f
            .resolve("custom-config", gpu(1, A100_80))
            .expect_err("no 1g.5gb+me");
        assert!(
            e.to_string().starts_with("MIG layout 'custom-config' names profile '1g.5gb+me', which this GPU (NVIDIA A100-SXM4-80GB) does not have"),
            "{e}"
        );
    }

    #[test]
    fn too_many_for_the_gpu() {
        let text = "version: v1\nmig-configs:\n  big:\n    - devices: all\n      mig-enabled: true\n      mig-devices: {\"3g.20gb\": 3}\n";
        let f = MigLayouts::File {
            source_name: "f".into(),
            config: parse(text, "f").expect("parses"),
        };
        let e = f.resolve("big", gpu(0, A100_40)).expect_err("3 × 3g");
        assert_eq!(
            e.to_string(),
            "MIG layout 'big' asks for 3 × 3g.20gb, but this GPU (NVIDIA A100-SXM4-40GB) supports at most 2; lower the count"
        );
    }

    #[test]
    fn bad_files_say_where_and_what_to_write() {
        let entry = |body: &str| format!("version: v1\nmig-configs:\n  c:\n    - {body}\n");
        let cases: Vec<(String, &str)> = vec![
            (
                "version: v2\nmig-configs:\n  c:\n    - devices: all\n      mig-enabled: false\n".into(),
                "f.yaml: version: unknown version 'v2'; mig-parted configs are 'v1'",
            ),
            (
                "version: v1\n".into(),
                "f.yaml: mig-configs: at least one named config is required (e.g. all-disabled)",
            ),
            (
                "version: v1\nmig-configs:\n  c: []\n".into(),
                "f.yaml: mig-configs.c: at least one entry is required (e.g. '- devices: all' with 'mig-enabled: false')",
            ),
            (
                entry("devices: all\n      mig-enabled: true"),
                "f.yaml: mig-configs.c[0].mig-devices: required when mig-enabled is true; write 'mig-devices: {}' for MIG mode on with no instances",
            ),
            (
                entry("devices: all\n      mig-enabled: false\n      mig-devices: {\"1g.5gb\": 1}"),
                "f.yaml: mig-configs.c[0].mig-devices: MIG devices given while mig-enabled is false; remove them or set mig-enabled: true",
            ),
            (
                entry("devices: all\n      mig-enabled: true\n      mig-devices: {\"1g.5gb\": 0}"),
                "f.yaml: mig-configs.c[0].mig-devices: every count is 0; write 'mig-devices: {}' for MIG mode on with no instances",
            ),
            (
                entry("devices: all\n      mig-enabled: true\n      mig-devices: {\"1g.5gb\": 99}"),
                "f.yaml: mig-configs.c[0].mig-devices.1g.5gb: count 99 is not between 0 and 64",
            ),
            (
                entry("devices: all\n      mig-enabled: true\n      mig-devices: {\"big\": 1}"),
                "f.yaml: mig-configs.c[0].mig-devices.big: not a MIG profile name; write '<G>g.<GB>gb' with an optional attribute, e.g. '1g.5gb' or '1g.5gb+me'",
            ),
            (
                entry("devices: [0, 64]\n      mig-enabled: false"),
                "f.yaml: mig-configs.c[0].devices: 64 is not a GPU index (0 to 63, as nvidia-smi numbers GPUs)",
            ),
            (
                entry("device-filter: \"20B010DE\"\n      devices: all\n      mig-enabled: false"),
                "f.yaml: mig-configs.c[0].device-filter: '20B010DE' is not a PCI device id; write device and vendor as 0xDDDDVVVV, e.g. \"0x20B010DE\" for an A100-SXM4-40GB",
            ),
            (
                entry("device-filter: \"0x20B010DE:0x145010DE\"\n      devices: all\n      mig-enabled: false"),
                "f.yaml: mig-configs.c[0].device-filter: '0x20B010DE:0x145010DE' has a subsystem id, which gpu-slicer does not match on; write the device and vendor only (the part before ':')",
            ),
            (
                "version: v1\nmig-configs:\n  Bad_Name-:\n    - devices: all\n      mig-enabled: false\n".into(),
                "f.yaml: mig-configs.Bad_Name-: a config name is the value of the nvidia.com/mig.config label: at most 63 characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
            ),
        ];
        for (text, want) in cases {
            let e = parse(&text, "f.yaml").expect_err(&text);
            assert_eq!(e.to_string(), want, "{text}");
        }
    }

    #[test]
    fn syntax_and_shape_errors_carry_the_location() {
        let cases: &[(&str, &str)] = &[
            // A misspelt key.
            (
                "version: v1\nmig-configs:\n  c:\n    - devices: all\n      mig-enable: false\n",
                "mig-enable",
            ),
            // `devices` neither `all` nor a list.
            (
                "version: v1\nmig-configs:\n  c:\n    - devices: some\n      mig-enabled: false\n",
                "devices: 'some' is not 'all'",
            ),
            // A required key missing.
            (
                "version: v1\nmig-configs:\n  c:\n    - mig-enabled: false\n",
                "devices",
            ),
            ("version: v1\nmig-configs: [\n", "f.yaml"),
        ];
        for (text, needle) in cases {
            let e = parse(text, "f.yaml").expect_err(text);
            let msg = e.to_string();
            assert!(msg.starts_with("f.yaml: "), "{msg}");
            assert!(msg.contains(needle), "{needle} in {msg}");
            assert!(msg.contains("line"), "location in {msg}");
        }
    }

    #[test]
    fn inputs_are_bounded() {
        let big = format!("version: v1\n#{}\n", "x".repeat(MAX_FILE_BYTES));
        assert!(matches!(
            parse(&big, "f"),
            Err(MigPartedError::TooLarge { .. })
        ));
        let many: String = (0..=MAX_DEVICE_INDEX + 1)
            .map(|i| format!("{i},"))
            .collect();
        let text = format!(
            "version: v1\nmig-configs:\n  c:\n    - devices: [{many}]\n      mig-enabled: false\n"
        );
        let e = parse(&text, "f").expect_err("too many indices");
        assert!(e.to_string().contains("more than 64 GPU indices"), "{e}");
    }

    #[test]
    fn profile_names() {
        for ok in [
            "1g.5gb",
            "1g.5gb+me",
            "1c.3g.20gb",
            "1g.24gb-me",
            "1g.24gb+me.all",
            "2g.48gb+gfx",
        ] {
            assert!(valid_profile_name(ok), "{ok}");
        }
        for bad in ["", "1g", "g.5gb", "1g.5", "1g.5gb+ME", "1x.2g.3gb.4"] {
            assert!(!valid_profile_name(bad), "{bad}");
        }
    }
}
