//! The readers `with_sections!` names, one per key of a section, each
//! reading its key into the section's target with NVIDIA's messages; the
//! walk that calls them is generated from the table (`load.rs`).

use std::time::Duration;

use serde_json::{Map, Value};

use super::super::keys::join;
use super::super::schema::{
    Config, DeviceSelection, Flags, MpsLimits, ReplicatedResource, ReplicatedResources,
    ResourceName, ResourcePattern, ResourcePatterns, Sharing,
};
use super::{
    ConfigError, Cx, IMEX_UNSUPPORTED, ListItems, MAX_MPS_REPLICAS, describe, parse_duration,
    parse_mebibytes, validate_imex_channel_ids,
};
use crate::health::{HealthConfig, XidAction};

/// `resources.gpus[]` / `resources.mig[]` while it is read.
#[derive(Default)]
pub(super) struct PatternDraft {
    pattern: String,
    name: Option<ResourceName>,
}

/// A `sharing.*.resources[]` entry while it is read.
pub(super) struct ResourceDraft {
    name: Option<ResourceName>,
    rename: Option<ResourceName>,
    devices: DeviceSelection,
    replicas: u32,
    mps: MpsLimits,
    /// The section's, which `maxReplicasPerContainer` depends on.
    fail_requests_greater_than_one: bool,
}

/// The readers [`with_sections`] names, one per key, in its order.
impl Cx<'_> {
    // --- ROOT

    /// Checked before the keys (the version decides the schema).
    pub(super) fn version_checked_first(
        &self,
        _: &Map<String, Value>,
        _: &str,
        _: &str,
        _: &mut Config,
    ) -> Result<(), ConfigError> {
        Ok(())
    }

    pub(super) fn flags(
        &self,
        m: &Map<String, Value>,
        path: &str,
        config: &mut Config,
    ) -> Result<(), ConfigError> {
        self.overridable_flags(m, &mut config.flags)?;
        self.walk_flags_own(m, path, &mut config.flags)
    }

    pub(super) fn resources(
        &self,
        m: &Map<String, Value>,
        path: &str,
        config: &mut Config,
    ) -> Result<(), ConfigError> {
        let mut patterns = ResourcePatterns::default();
        self.walk_resources(m, path, &mut patterns)?;
        config.resources = Some(patterns);
        Ok(())
    }

    pub(super) fn sharing(
        &self,
        m: &Map<String, Value>,
        path: &str,
        config: &mut Config,
    ) -> Result<(), ConfigError> {
        self.walk_sharing(m, path, &mut config.sharing)
    }

    pub(super) fn imex(
        &self,
        m: &Map<String, Value>,
        path: &str,
        _: &mut Config,
    ) -> Result<(), ConfigError> {
        self.walk_imex(m, path, &mut ())
    }

    pub(super) fn health(
        &self,
        m: &Map<String, Value>,
        path: &str,
        config: &mut Config,
    ) -> Result<(), ConfigError> {
        self.walk_health(m, path, &mut config.health)
    }

    // --- FLAGS_OWN, GFD

    /// GPU Feature Discovery's: type-checked, then discarded.
    pub(super) fn gfd_only_bool(
        &self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        _: &mut Flags,
    ) -> Result<(), ConfigError> {
        self.bool(m, key, path)?;
        Ok(())
    }

    pub(super) fn plugin(
        &self,
        m: &Map<String, Value>,
        _: &str,
        flags: &mut Flags,
    ) -> Result<(), ConfigError> {
        self.overridable_plugin(m, &mut flags.plugin)
    }

    pub(super) fn gfd(
        &self,
        m: &Map<String, Value>,
        path: &str,
        _: &mut Flags,
    ) -> Result<(), ConfigError> {
        self.walk_gfd(m, path, &mut ())
    }

    /// GPU Feature Discovery's: any value is accepted and discarded.
    pub(super) fn discarded(
        &self,
        _: &Map<String, Value>,
        _: &str,
        _: &str,
        _: &mut (),
    ) -> Result<(), ConfigError> {
        Ok(())
    }

    // --- RESOURCES, PATTERN

    pub(super) fn gpu_patterns(
        &self,
        items: Option<ListItems<'_>>,
        _: &str,
        patterns: &mut ResourcePatterns,
    ) -> Result<(), ConfigError> {
        patterns.gpus = self.patterns(items)?;
        Ok(())
    }

    pub(super) fn mig_patterns(
        &self,
        items: Option<ListItems<'_>>,
        _: &str,
        patterns: &mut ResourcePatterns,
    ) -> Result<(), ConfigError> {
        patterns.mig = self.patterns(items)?;
        Ok(())
    }

    pub(super) fn patterns(
        &self,
        items: Option<ListItems<'_>>,
    ) -> Result<Vec<ResourcePattern>, ConfigError> {
        let mut out = Vec::new();
        for (path, item) in items.unwrap_or_default() {
            let mut draft = PatternDraft::default();
            self.walk_pattern(item, &path, &mut draft)?;
            let Some(name) = draft.name else {
                return Err(self.invalid(&path, "resources must have a 'name' field set"));
            };
            out.push(ResourcePattern {
                pattern: draft.pattern,
                name,
            });
        }
        Ok(out)
    }

    pub(super) fn pattern(
        &self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        draft: &mut PatternDraft,
    ) -> Result<(), ConfigError> {
        match self.string(m, key, path)? {
            Some(p) if !p.is_empty() => {
                draft.pattern = p;
                Ok(())
            }
            _ => Err(self.invalid(path, "resources must have a 'pattern' field set")),
        }
    }

    /// A resource name that must be there and not empty; `missing` is
    /// NVIDIA's message when it is not.
    fn required_name(
        &self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        missing: &str,
    ) -> Result<ResourceName, ConfigError> {
        match self.string(m, key, path)? {
            Some(n) if !n.is_empty() => {
                ResourceName::parse(&n).map_err(|e| self.invalid(&join(path, key), e))
            }
            _ => Err(self.invalid(path, missing)),
        }
    }

    pub(super) fn pattern_name(
        &self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        draft: &mut PatternDraft,
    ) -> Result<(), ConfigError> {
        draft.name =
            Some(self.required_name(m, key, path, "resources must have a 'name' field set")?);
        Ok(())
    }

    // --- SHARING, REPLICATED, MPS

    pub(super) fn time_slicing(
        &self,
        m: &Map<String, Value>,
        path: &str,
        sharing: &mut Sharing,
    ) -> Result<(), ConfigError> {
        let mut time_slicing = ReplicatedResources {
            fail_requests_greater_than_one: false,
            ..ReplicatedResources::default()
        };
        self.walk_replicated(m, path, &mut time_slicing)?;
        sharing.time_slicing = time_slicing;
        Ok(())
    }

    pub(super) fn mps(
        &self,
        m: &Map<String, Value>,
        path: &str,
        sharing: &mut Sharing,
    ) -> Result<(), ConfigError> {
        let mut mps = ReplicatedResources {
            // NVIDIA's default under MPS.
            fail_requests_greater_than_one: true,
            ..ReplicatedResources::default()
        };
        self.walk_mps(m, path, &mut mps)?;
        sharing.mps = Some(mps);
        Ok(())
    }

    pub(super) fn rename_by_default(
        &self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        shared: &mut ReplicatedResources,
    ) -> Result<(), ConfigError> {
        if let Some(b) = self.bool(m, key, path)? {
            shared.rename_by_default = b;
        }
        Ok(())
    }

    pub(super) fn fail_requests_greater_than_one(
        &self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        shared: &mut ReplicatedResources,
    ) -> Result<(), ConfigError> {
        if let Some(b) = self.bool(m, key, path)? {
            shared.fail_requests_greater_than_one = b;
        }
        Ok(())
    }

    pub(super) fn replicated_resources(
        &self,
        items: Option<ListItems<'_>>,
        path: &str,
        shared: &mut ReplicatedResources,
    ) -> Result<(), ConfigError> {
        self.resource_list(items, path, shared, Self::walk_replicated_resource)
    }

    pub(super) fn mps_resources(
        &self,
        items: Option<ListItems<'_>>,
        path: &str,
        shared: &mut ReplicatedResources,
    ) -> Result<(), ConfigError> {
        self.resource_list(items, path, shared, Self::walk_mps_resource)
    }

    /// The entries of `resources`, each read by `walk`; at least one.
    pub(super) fn resource_list(
        &self,
        items: Option<ListItems<'_>>,
        path: &str,
        shared: &mut ReplicatedResources,
        walk: fn(&Self, &Map<String, Value>, &str, &mut ResourceDraft) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        let items = items.unwrap_or_default();
        if items.is_empty() {
            return Err(self.invalid(path, "no resources specified"));
        }
        for (item_path, item) in items {
            let mut draft = ResourceDraft {
                name: None,
                rename: None,
                devices: DeviceSelection::All,
                replicas: 0,
                mps: MpsLimits::default(),
                fail_requests_greater_than_one: shared.fail_requests_greater_than_one,
            };
            walk(self, item, &item_path, &mut draft)?;
            let Some(name) = draft.name else {
                return Err(self.invalid(&item_path, "no resource name specified"));
            };
            shared.resources.push(ReplicatedResource {
                name,
                rename: draft.rename,
                devices: draft.devices,
                replicas: draft.replicas,
                mps: draft.mps,
            });
        }
        Ok(())
    }

    // --- REPLICATED_RESOURCE, MPS_RESOURCE

    pub(super) fn resource_name(
        &self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        draft: &mut ResourceDraft,
    ) -> Result<(), ConfigError> {
        draft.name = Some(self.required_name(m, key, path, "no resource name specified")?);
        Ok(())
    }

    pub(super) fn rename(
        &self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        draft: &mut ResourceDraft,
    ) -> Result<(), ConfigError> {
        if let Some(n) = self.string(m, key, path)?.filter(|n| !n.is_empty()) {
            draft.rename =
                Some(ResourceName::parse(&n).map_err(|e| self.invalid(&join(path, key), e))?);
        }
        Ok(())
    }

    pub(super) fn devices(
        &self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        draft: &mut ResourceDraft,
    ) -> Result<(), ConfigError> {
        if let Some(v) = m.get(key) {
            draft.devices = self.device_selection(v, &join(path, key))?;
        }
        Ok(())
    }

    pub(super) fn replicas(
        &self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        draft: &mut ResourceDraft,
    ) -> Result<(), ConfigError> {
        let replicas_path = join(path, key);
        draft.replicas = match m.get(key) {
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
        Ok(())
    }

    /// `replicas`, and NVIDIA's limit on MPS clients.
    pub(super) fn mps_replicas(
        &self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        draft: &mut ResourceDraft,
    ) -> Result<(), ConfigError> {
        self.replicas(m, key, path, draft)?;
        let replicas = draft.replicas;
        if replicas > MAX_MPS_REPLICAS {
            return Err(self.invalid(
                &join(path, key),
                format!(
                    "invalid MPS configuration: invalid device maximum allowed replicas exceeded: {replicas} > {MAX_MPS_REPLICAS} (an MPS server serves at most {MAX_MPS_REPLICAS} clients per GPU)"
                ),
            ));
        }
        Ok(())
    }

    /// Whether the memory fits a GPU is checked by the planner, which knows
    /// the GPUs.
    pub(super) fn memory_per_replica(
        &self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        draft: &mut ResourceDraft,
    ) -> Result<(), ConfigError> {
        let memory_path = join(path, key);
        draft.mps.memory_per_replica_mib = match m.get(key) {
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
        Ok(())
    }

    pub(super) fn active_thread_percentage(
        &self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        draft: &mut ResourceDraft,
    ) -> Result<(), ConfigError> {
        let percent_path = join(path, key);
        draft.mps.active_thread_percentage = match m.get(key) {
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
        Ok(())
    }

    pub(super) fn max_replicas_per_container(
        &self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        draft: &mut ResourceDraft,
    ) -> Result<(), ConfigError> {
        let max_path = join(path, key);
        let replicas = draft.replicas;
        let fail_requests_greater_than_one = draft.fail_requests_greater_than_one;
        draft.mps.max_replicas_per_container = match m.get(key) {
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
        Ok(())
    }

    // --- IMEX

    pub(super) fn imex_channel_ids(
        &self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        _: &mut (),
    ) -> Result<(), ConfigError> {
        let path = &join(path, key);
        match m.get(key) {
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
        Ok(())
    }

    /// Type-checked; nothing to require, as no channel is injected.
    pub(super) fn imex_required(
        &self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        _: &mut (),
    ) -> Result<(), ConfigError> {
        self.bool(m, key, path)?;
        Ok(())
    }

    // --- HEALTH

    pub(super) fn recover_after(
        &self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        health: &mut HealthConfig,
    ) -> Result<(), ConfigError> {
        let at = join(path, key);
        match m.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.as_u64().is_some() => {
                health.recover_after = n.as_u64().map(Duration::from_secs);
            }
            Some(Value::String(s)) => {
                health.recover_after = Some(parse_duration(s).map_err(|e| self.invalid(&at, e))?);
            }
            Some(other) => {
                return Err(self.invalid(
                    &at,
                    format!(
                        "expected a duration such as 300s or 5m, found {}",
                        describe(other)
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn xids(
        &self,
        m: &Map<String, Value>,
        key: &str,
        path: &str,
        health: &mut HealthConfig,
    ) -> Result<(), ConfigError> {
        let at = join(path, key);
        match m.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Object(xids)) => {
                for (xid_key, value) in xids {
                    let path = format!("{at}.{xid_key}");
                    let xid: u64 = xid_key.parse().map_err(|_| {
                        self.invalid(&path, format!("'{xid_key}' is not an XID number"))
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
                    &at,
                    format!(
                        "expected a mapping of XID to action, found {}",
                        describe(other)
                    ),
                ));
            }
        }
        Ok(())
    }
}
