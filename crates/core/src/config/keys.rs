//! The config's known keys, each declared once. Two tables:
//!
//! - `with_override_keys!`: the keys of `flags` and `flags.plugin` that a
//!   command-line flag overrides: its YAML key, the field of
//!   [`Flags`](super::Flags) / [`PluginFlags`](super::PluginFlags) it sets,
//!   how its value is read, the override field of
//!   [`ConfigFlags`](super::ConfigFlags) that replaces it, and its flag (the
//!   shell's command line declares the flag with its environment variable).
//!   From it come the known keys of both sections, the loader's walk of them
//!   (`load.rs`), the flag overlay (`flags.rs`), and [`OVERRIDES`], which
//!   the daemon's test checks its command line against (each flag declared,
//!   and no other flag that sets a key).
//! - `with_sections!`: every other key, per section (`NAME(walk): Target`):
//!   its YAML key, what it holds (`leaf`, `map(SECTION)` or
//!   `list(SECTION)`) and the loader's reader that reads it into the
//!   section's target (a method in `load/sections.rs`). From it come the
//!   section's known keys ([`ROOT`] and below: the unknown-key hints) and the
//!   walk, which calls the readers in the table's order (so the first error
//!   of a file is the first in that order).
//!
//! Adding a key: one line in the table of its section, with its reader in
//! `load/sections.rs` (a flag's key instead: its line in the override table
//! and its command-line field, which the daemon's test checks), and its line
//! in the `EVERY_KEY` document of `load/tests.rs`, which the test
//! `each_declared_key_is_read_at_its_own_path` requires (it fails for a
//! declared key missing from the document, a document key missing from the
//! tables, or a key whose reader reads another key), and its words in the
//! README's Configuration section, which `the_readme_documents_every_declared_key`
//! requires.
//!
//! Kinds of the override table: `bool` (YAML boolean; Go-style on the
//! command line), `string`, `optional` (a string whose absence means
//! "derived", as `nvidiaDevRoot`), `parsed(f)` (a string checked by `f`,
//! whose error is NVIDIA's message), `list(f)` (a string or a list of
//! strings, checked by `f`).

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

/// One known key and what it holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field {
    pub key: &'static str,
    pub kind: Kind,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// A scalar (or list of scalars): no keys below.
    Leaf,
    /// A mapping with these keys.
    Map(&'static [Field]),
    /// A list of mappings with these keys.
    List(&'static [Field]),
}

pub(crate) const fn leaf(key: &'static str) -> Field {
    Field {
        key,
        kind: Kind::Leaf,
    }
}

/// `a` then `b`, as one array (`N` is their combined length).
const fn concat<const N: usize>(a: &[Field], b: &[Field]) -> [Field; N] {
    let mut out = [leaf(""); N];
    let mut i = 0;
    while i < a.len() {
        out[i] = a[i];
        i += 1;
    }
    while i < N {
        out[i] = b[i - a.len()];
        i += 1;
    }
    out
}

/// From the override table: the known keys of `flags.plugin`, and those of
/// `flags` a flag overrides (the rest of `flags` is in `with_sections!`).
macro_rules! known_keys {
    (
        flags { $( $fkey:literal => $ffield:ident : $fkind:ident $(($fparse:expr))?,
                   $($facc:ident).+, $fflag:literal; )* }
        plugin { $( $pkey:literal => $pfield:ident : $pkind:ident $(($pparse:expr))?,
                    $($pacc:ident).+, $pflag:literal; )* }
    ) => {
        pub(crate) const PLUGIN: &[Field] = &[ $( leaf($pkey), )* ];

        const OVERRIDDEN_FLAGS: &[Field] = &[ $( leaf($fkey), )* ];
    };
}

with_override_keys!(known_keys);

/// Every key of `flags`: those a flag overrides, then the section's own.
pub(crate) const FLAGS: &[Field] = &{
    const N: usize = OVERRIDDEN_FLAGS.len() + FLAGS_OWN.len();
    concat::<N>(OVERRIDDEN_FLAGS, FLAGS_OWN)
};

/// Calls `$generate!` with the sections. Each section:
/// `NAME(walk): Target { "yamlKey" => kind, reader; ... }`, where `kind` is
/// `leaf`, `map(SECTION)` or `list(SECTION)` and `reader` is the method in
/// `load/sections.rs` that reads the key into `Target`.
macro_rules! with_sections {
    ($generate:ident) => {
        $generate! {
            /// The whole v1 schema: every top-level key.
            ROOT(walk_root): Config {
                "version" => leaf, version_checked_first;
                "flags" => map(FLAGS), flags;
                "resources" => map(RESOURCES), resources;
                "sharing" => map(SHARING), sharing;
                "imex" => map(IMEX), imex;
                "health" => map(HEALTH), health;
            }
            /// The keys of `flags` no flag overrides (GPU Feature
            /// Discovery's are type-checked, then discarded).
            FLAGS_OWN(walk_flags_own): Flags {
                "useNodeFeatureAPI" => leaf, gfd_only_bool;
                "plugin" => map(PLUGIN), plugin;
                "gfd" => map(GFD), gfd;
            }
            /// GPU Feature Discovery keys: accepted and discarded.
            GFD(walk_gfd): () {
                "oneshot" => leaf, discarded;
                "noTimestamp" => leaf, discarded;
                "sleepInterval" => leaf, discarded;
                "outputFile" => leaf, discarded;
                "machineTypeFile" => leaf, discarded;
            }
            RESOURCES(walk_resources): ResourcePatterns {
                "gpus" => list(PATTERN), gpu_patterns;
                "mig" => list(PATTERN), mig_patterns;
            }
            PATTERN(walk_pattern): PatternDraft {
                "pattern" => leaf, pattern;
                "name" => leaf, pattern_name;
            }
            SHARING(walk_sharing): Sharing {
                "timeSlicing" => map(REPLICATED), time_slicing;
                "mps" => map(MPS), mps;
            }
            REPLICATED(walk_replicated): ReplicatedResources {
                "renameByDefault" => leaf, rename_by_default;
                "failRequestsGreaterThanOne" => leaf, fail_requests_greater_than_one;
                "resources" => list(REPLICATED_RESOURCE), replicated_resources;
            }
            REPLICATED_RESOURCE(walk_replicated_resource): ResourceDraft {
                "name" => leaf, resource_name;
                "rename" => leaf, rename;
                "devices" => leaf, devices;
                "replicas" => leaf, replicas;
            }
            MPS(walk_mps): ReplicatedResources {
                "renameByDefault" => leaf, rename_by_default;
                "failRequestsGreaterThanOne" => leaf, fail_requests_greater_than_one;
                "resources" => list(MPS_RESOURCE), mps_resources;
            }
            /// An MPS resource: NVIDIA's keys plus gpu-slicer's per-replica
            /// limits (NVIDIA's non-strict parser ignores them).
            MPS_RESOURCE(walk_mps_resource): ResourceDraft {
                "name" => leaf, resource_name;
                "rename" => leaf, rename;
                "devices" => leaf, devices;
                "replicas" => leaf, mps_replicas;
                "memoryPerReplica" => leaf, memory_per_replica;
                "activeThreadPercentage" => leaf, active_thread_percentage;
                "maxReplicasPerContainer" => leaf, max_replicas_per_container;
            }
            IMEX(walk_imex): () {
                "channelIDs" => leaf, imex_channel_ids;
                "required" => leaf, imex_required;
            }
            /// gpu-slicer's extension (NVIDIA's non-strict parser ignores
            /// it, so a config with it still loads there). `xids` maps XID
            /// numbers to actions.
            HEALTH(walk_health): HealthConfig {
                "recoverAfter" => leaf, recover_after;
                "xids" => leaf, xids;
            }
        }
    };
}

pub(crate) use with_sections;

/// One [`Field`] of a section's line.
macro_rules! field {
    ($key:literal, leaf) => {
        leaf($key)
    };
    ($key:literal, map($sub:ident)) => {
        Field {
            key: $key,
            kind: Kind::Map($sub),
        }
    };
    ($key:literal, list($sub:ident)) => {
        Field {
            key: $key,
            kind: Kind::List($sub),
        }
    };
}

/// From the sections: each section's known keys.
macro_rules! section_fields {
    (
        $( $(#[$doc:meta])* $name:ident($walk:ident): $target:ty {
            $( $key:literal => $kind:ident $(($sub:ident))?, $read:ident; )*
        } )*
    ) => {
        $( $(#[$doc])* pub(crate) const $name: &[Field] = &[ $( field!($key, $kind $(($sub))?), )* ]; )*
    };
}

with_sections!(section_fields);

/// Every schema location (parent path, `""` = top level, `[]` = list item)
/// that has `key`.
pub(crate) fn locations_of(key: &str) -> Vec<String> {
    fn walk(fields: &[Field], parent: &str, key: &str, out: &mut Vec<String>) {
        for field in fields {
            if field.key == key {
                out.push(parent.to_string());
            }
            let child = join(parent, field.key);
            match field.kind {
                Kind::Leaf => {}
                Kind::Map(sub) => walk(sub, &child, key, out),
                Kind::List(sub) => walk(sub, &format!("{child}[]"), key, out),
            }
        }
    }
    let mut out = Vec::new();
    walk(ROOT, "", key, &mut out);
    out
}

/// `a.b[3].c` → `a.b[].c`, for comparing a concrete path with schema paths.
pub(crate) fn generic_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

fn common_prefix_len(a: &str, b: &str) -> usize {
    a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count()
}

/// The hint for an unknown `key` found in the mapping at `parent`.
pub(crate) fn unknown_key_hint(parent: &str, key: &str, fields: &[Field]) -> String {
    let mut places = locations_of(key);
    if !places.is_empty() {
        let here = generic_path(parent);
        places.sort_by_key(|p| std::cmp::Reverse(common_prefix_len(p, &here)));
        let describe = |p: &String| {
            if p.is_empty() {
                "the top level".to_string()
            } else {
                p.clone()
            }
        };
        let first = describe(&places[0]);
        let verb = if places[0].is_empty() {
            "belongs at"
        } else {
            "belongs under"
        };
        let mut hint = format!("{key} {verb} {first}");
        if places.len() > 1 {
            let rest: Vec<String> = places[1..].iter().map(describe).collect();
            hint.push_str(&format!(" (or {})", rest.join(", ")));
        }
        return hint;
    }
    let valid: Vec<&str> = fields.iter().map(|f| f.key).collect();
    let level = if parent.is_empty() {
        "valid top-level keys".to_string()
    } else {
        format!("valid keys under {parent}")
    };
    let closest = fields
        .iter()
        .map(|f| {
            let d = if f.key.eq_ignore_ascii_case(key) {
                0
            } else {
                strsim::levenshtein(&f.key.to_ascii_lowercase(), &key.to_ascii_lowercase()) + 1
            };
            (d, f.key)
        })
        .min_by_key(|(d, _)| *d)
        .filter(|(d, _)| *d <= 3 || *d * 3 <= key.len() + 3);
    match closest {
        Some((_, best)) => format!("did you mean '{best}'? {level}: {}", valid.join(", ")),
        None => format!("{level}: {}", valid.join(", ")),
    }
}

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

/// A key's dotted path under `parent` (the root is "").
pub(super) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::{Field, Kind, OVERRIDES, ROOT};

    /// Every key the loader accepts, as a dotted path (lists as `[]`).
    fn every_path(fields: &[Field], parent: &str, out: &mut Vec<String>) {
        for field in fields {
            let path = super::join(parent, field.key);
            match field.kind {
                Kind::Leaf => out.push(path),
                Kind::Map(below) => every_path(below, &path, out),
                Kind::List(below) => every_path(below, &format!("{path}[]"), out),
            }
        }
    }

    /// The README's Configuration section documents every key the loader
    /// accepts: by its path in backticks, or, in an entry table or the
    /// example, by its own name. A key added to the tables without a word
    /// in the README fails here.
    #[test]
    fn the_readme_documents_every_declared_key() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
        let readme = std::fs::read_to_string(path).expect("README.md");
        let start = readme
            .find("## Configuration")
            .expect("a Configuration section");
        let section = &readme[start..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
        let mut paths = Vec::new();
        every_path(ROOT, "", &mut paths);
        assert!(paths.len() > 30, "the walk found {} keys", paths.len());
        let mut missing = Vec::new();
        for path in &paths {
            let name = path.rsplit('.').next().unwrap_or(path);
            let documented = section.contains(&format!("`{path}`"))
                || section.contains(&format!("`{}`", path.replace("[]", "")))
                || section.lines().any(|l| {
                    (l.starts_with('|') && l.contains(&format!("`{name}`")))
                        || l.trim_start()
                            .trim_start_matches("- ")
                            .starts_with(&format!("{name}:"))
                });
            if !documented {
                missing.push(path.clone());
            }
        }
        assert!(
            missing.is_empty(),
            "README.md's Configuration section does not document: {missing:?}"
        );
    }

    /// The README's key table (`| `flags.x` | `--flag` / `ENV` | ...`)
    /// lists every key a flag overrides, each with the table's flag, and no
    /// `flags.*` key the table lacks (besides the GFD ones, discarded).
    #[test]
    fn the_readme_lists_each_overridable_key_with_its_flag() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
        let readme = std::fs::read_to_string(path).expect("README.md");
        // (keys of the row, its flag cell)
        let rows: Vec<(Vec<String>, String)> = readme
            .lines()
            .filter(|l| l.starts_with("| `flags."))
            .map(|l| {
                let cells: Vec<&str> = l.split(" | ").collect();
                let names: Vec<&str> = cells[0].split('`').skip(1).step_by(2).collect();
                let first = names[0];
                let parent = &first[..first.rfind('.').unwrap_or(0)];
                let keys = names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| match i {
                        0 => n.to_string(),
                        _ => format!("{parent}.{n}"),
                    })
                    .collect();
                (keys, cells.get(1).unwrap_or(&"").to_string())
            })
            .collect();
        for (key, flag) in OVERRIDES {
            let Some((keys, flags)) = rows.iter().find(|(keys, _)| keys.iter().any(|k| k == key))
            else {
                panic!("README.md's key table has no row for {key} ({flag})");
            };
            if keys.len() == 1 {
                assert!(
                    flags.starts_with(&format!("`{flag}`")),
                    "README.md gives {key} the flag {flags}, not {flag}"
                );
            }
        }
        for (keys, _) in &rows {
            for key in keys {
                assert!(
                    OVERRIDES.iter().any(|(k, _)| k == key),
                    "README.md lists {key}, which no flag overrides (config/keys.rs)"
                );
            }
        }
    }
}
