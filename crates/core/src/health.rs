//! Device health: which XID events make which advertised devices unhealthy,
//! and when they recover. Pure: events and time in, health out.
//!
//! NVIDIA's plugin marks a device unhealthy on any critical XID outside a
//! small ignore list, marks only one device per physical GPU
//! (NVIDIA/k8s-device-plugin#1929), and never lets a device recover. Here an
//! event reaches every advertised device it affects (all replicas of the
//! GPU; for a MIG event, only the MIG device whose GPU/compute instance ids
//! match), and each XID has a documented action:
//!
//! | action | meaning | default XIDs |
//! |---|---|---|
//! | `ignore` | no health change | 13, 31, 43, 45, 68, 109 (NVIDIA's defaults: application faults) |
//! | `reset` | unhealthy until the GPU is reset (the daemon restarts or re-discovers) | 48, 62, 63, 64, 74, 79, 92, 95, 119, 120, 140 |
//! | `recover` | unhealthy, healthy again after `recoverAfter` without another event | every other XID |
//!
//! The configuration overrides any XID (`health.xids`, `health.recoverAfter`);
//! NVIDIA's `DP_DISABLE_HEALTHCHECKS` / `DP_ENABLE_HEALTHCHECKS` keep working.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::config::InvalidValue;
use crate::plan::Resource;

/// What an XID does to the devices it affects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XidAction {
    Ignore,
    Recover,
    Reset,
}

impl XidAction {
    pub fn parse(value: &str) -> Result<XidAction, InvalidValue> {
        match value {
            "ignore" => Ok(XidAction::Ignore),
            "recover" => Ok(XidAction::Recover),
            "reset" => Ok(XidAction::Reset),
            other => Err(InvalidValue(format!(
                "unknown XID action '{other}': use ignore, recover or reset"
            ))),
        }
    }
}

/// NVIDIA's default-ignored XIDs.
pub const DEFAULT_IGNORED: &[u64] = &[13, 31, 43, 45, 68, 109];

/// XIDs after which NVIDIA's XID catalog asks for a GPU reset or reboot.
pub const DEFAULT_RESET: &[u64] = &[48, 62, 63, 64, 74, 79, 92, 95, 119, 120, 140];

/// The `health` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HealthConfig {
    pub recover_after: Option<Duration>,
    pub xids: BTreeMap<u64, XidAction>,
}

/// The effective policy: defaults, then the configuration, then NVIDIA's
/// environment variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthPolicy {
    pub enabled: bool,
    pub recover_after: Duration,
    actions: BTreeMap<u64, XidAction>,
    /// Entries of the environment variables that are not XIDs, as messages
    /// for the daemon to log (the core does not log).
    pub malformed: Vec<String>,
}

pub const DEFAULT_RECOVER_AFTER: Duration = Duration::from_secs(300);

impl HealthPolicy {
    /// `disable` and `enable` are the raw values of `DP_DISABLE_HEALTHCHECKS`
    /// and `DP_ENABLE_HEALTHCHECKS`. Unlike NVIDIA's plugin, `enable=all`
    /// turns checks back on even after `disable=all`, as its docs say.
    pub fn new(config: &HealthConfig, disable: Option<&str>, enable: Option<&str>) -> Self {
        let mut actions: BTreeMap<u64, XidAction> = BTreeMap::new();
        for &x in DEFAULT_IGNORED {
            actions.insert(x, XidAction::Ignore);
        }
        for &x in DEFAULT_RESET {
            actions.insert(x, XidAction::Reset);
        }
        actions.extend(config.xids.iter().map(|(k, v)| (*k, *v)));
        let mut enabled = true;
        let mut malformed = Vec::new();
        let list = |raw: Option<&str>| -> Vec<String> {
            raw.unwrap_or("")
                .to_lowercase()
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        for item in list(disable) {
            if item == "all" || item == "xids" {
                enabled = false;
            } else if let Ok(xid) = item.parse::<u64>() {
                actions.insert(xid, XidAction::Ignore);
            } else {
                malformed.push(format!(
                    "Ignoring malformed Xid value {item} in DP_DISABLE_HEALTHCHECKS"
                ));
            }
        }
        for item in list(enable) {
            if item == "all" {
                enabled = true;
                for action in actions.values_mut() {
                    if *action == XidAction::Ignore {
                        *action = XidAction::Recover;
                    }
                }
            } else if let Ok(xid) = item.parse::<u64>() {
                if actions.get(&xid).is_none_or(|a| *a == XidAction::Ignore) {
                    actions.insert(xid, XidAction::Recover);
                }
            } else {
                malformed.push(format!(
                    "Ignoring malformed Xid value {item} in DP_ENABLE_HEALTHCHECKS"
                ));
            }
        }
        HealthPolicy {
            enabled,
            recover_after: config.recover_after.unwrap_or(DEFAULT_RECOVER_AFTER),
            actions,
            malformed,
        }
    }

    pub fn action(&self, xid: u64) -> XidAction {
        if !self.enabled {
            return XidAction::Ignore;
        }
        self.actions
            .get(&xid)
            .copied()
            .unwrap_or(XidAction::Recover)
    }
}

/// An XID event as NVML reports it. `gpu_instance`/`compute_instance` are
/// `None` for an event on the whole GPU (NVML's 0xFFFFFFFF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XidEvent {
    pub gpu_uuid: String,
    pub xid: u64,
    pub gpu_instance: Option<u32>,
    pub compute_instance: Option<u32>,
}

/// Physical devices (GPU or MIG UUIDs) that an event affects, among those a
/// resource advertises.
pub fn affected<'r>(event: &XidEvent, resource: &'r Resource) -> Vec<&'r str> {
    let mut out: Vec<&str> = Vec::new();
    for device in &resource.devices {
        let p = &device.physical;
        if p.gpu_uuid != event.gpu_uuid {
            continue;
        }
        let hit = match (p.mig, event.gpu_instance) {
            (Some(ids), Some(gi)) => {
                ids.gpu_instance == gi
                    && event
                        .compute_instance
                        .is_none_or(|ci| ci == ids.compute_instance)
            }
            // A whole-GPU event affects everything on that GPU; a MIG event
            // on a GPU advertised whole affects the whole GPU.
            _ => true,
        };
        if hit && out.last() != Some(&p.uuid.as_str()) && !out.contains(&p.uuid.as_str()) {
            out.push(p.uuid.as_str());
        }
    }
    out
}

/// Why a physical device is unhealthy, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unhealthy {
    pub xid: u64,
    /// `None`: until reset.
    pub until: Option<Instant>,
}

/// Why a GPU is unhealthy besides XIDs; each cause is set and cleared on
/// its own, and a GPU is healthy only when none holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Condition {
    /// Its NVML calls fail, or its health cannot be watched; clears when
    /// it answers again.
    Unreachable,
    /// Its MPS control daemon is not ready (MPS resources).
    MpsNotReady,
    /// MIG Manager is repartitioning it (`nvidia.com/mig.config.state`).
    Repartitioning,
}

/// Health of physical devices (by UUID); absent = healthy.
///
/// Two kinds of cause: XID events ([`HealthState::record`]), which recover
/// by time or not at all, and [`Condition`]s of a whole GPU
/// ([`HealthState::set_condition`]), which clear when their cause does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthState {
    unhealthy: HashMap<String, Unhealthy>,
    /// GPU UUID → its conditions and why.
    conditions: BTreeMap<String, BTreeMap<Condition, String>>,
}

impl HealthState {
    /// Records an event on `devices`; returns true if any health changed.
    pub fn record(
        &mut self,
        devices: &[&str],
        xid: u64,
        action: XidAction,
        now: Instant,
        policy: &HealthPolicy,
    ) -> bool {
        let until = match action {
            XidAction::Ignore => return false,
            XidAction::Recover => Some(now + policy.recover_after),
            XidAction::Reset => None,
        };
        let mut changed = false;
        for device in devices {
            let entry = self.unhealthy.entry((*device).to_owned());
            match entry {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(Unhealthy { xid, until });
                    changed = true;
                }
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    // A reset-class event wins over a timed one; a new timed
                    // event restarts the quiet period.
                    let current = o.get_mut();
                    if current.until.is_some() {
                        current.until = until;
                        current.xid = xid;
                    }
                }
            }
        }
        changed
    }

    /// Devices whose quiet period is over become healthy; returns them.
    pub fn recover(&mut self, now: Instant) -> Vec<String> {
        let due: Vec<String> = self
            .unhealthy
            .iter()
            .filter(|(_, u)| u.until.is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &due {
            self.unhealthy.remove(key);
        }
        due
    }

    pub fn next_recovery(&self) -> Option<Instant> {
        self.unhealthy.values().filter_map(|u| u.until).min()
    }

    pub fn is_healthy(&self, physical_uuid: &str) -> bool {
        !self.unhealthy.contains_key(physical_uuid) && !self.conditions.contains_key(physical_uuid)
    }

    /// Sets (`Some(reason)`) or clears (`None`) one condition of a GPU;
    /// returns true if it changed. The others stay as they are.
    pub fn set_condition(
        &mut self,
        gpu_uuid: &str,
        condition: Condition,
        reason: Option<&str>,
    ) -> bool {
        match reason {
            Some(reason) => self
                .conditions
                .entry(gpu_uuid.to_owned())
                .or_default()
                .insert(condition, reason.to_owned())
                .is_none(),
            None => {
                let Some(held) = self.conditions.get_mut(gpu_uuid) else {
                    return false;
                };
                let removed = held.remove(&condition).is_some();
                if held.is_empty() {
                    self.conditions.remove(gpu_uuid);
                }
                removed
            }
        }
    }

    /// How many GPUs hold `condition`.
    pub fn count(&self, condition: Condition) -> usize {
        self.conditions
            .values()
            .filter(|held| held.contains_key(&condition))
            .count()
    }

    pub fn get(&self, physical_uuid: &str) -> Option<&Unhealthy> {
        self.unhealthy.get(physical_uuid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, MigStrategy, ReplicatedResource};
    use crate::gpu::simulated;
    use crate::plan::plan;

    fn policy(disable: Option<&str>, enable: Option<&str>) -> HealthPolicy {
        HealthPolicy::new(&HealthConfig::default(), disable, enable)
    }

    #[test]
    fn conditions_hold_until_cleared_each_on_its_own_and_xids_stay_apart() {
        let mut state = HealthState::default();
        let now = Instant::now();
        let lost = Some("GPU is lost");
        assert!(state.set_condition("GPU-a", Condition::Unreachable, lost));
        assert!(
            !state.set_condition("GPU-a", Condition::Unreachable, lost),
            "no change"
        );
        assert!(!state.is_healthy("GPU-a"));
        assert!(state.is_healthy("GPU-b"));
        assert_eq!(state.count(Condition::Unreachable), 1);
        // A second cause on the same GPU outlives the first.
        assert!(state.set_condition("GPU-a", Condition::Repartitioning, Some("pending")));
        assert!(state.set_condition("GPU-a", Condition::Unreachable, None));
        assert!(!state.is_healthy("GPU-a"), "still repartitioning");
        assert_eq!(state.count(Condition::Unreachable), 0);
        // An XID during the outage outlives it.
        let policy = policy(None, None);
        assert!(state.record(&["GPU-a"], 79, XidAction::Reset, now, &policy));
        assert!(state.set_condition("GPU-a", Condition::Repartitioning, None));
        assert!(
            !state.set_condition("GPU-a", Condition::Repartitioning, None),
            "no change"
        );
        assert!(!state.is_healthy("GPU-a"), "the XID still holds");
        assert!(state.set_condition("GPU-b", Condition::MpsNotReady, Some("x")));
        assert!(state.set_condition("GPU-b", Condition::MpsNotReady, None));
        assert!(state.is_healthy("GPU-b"));
    }

    #[test]
    fn default_actions_and_environment_overrides() {
        let cases: Vec<(Option<&str>, Option<&str>, u64, XidAction)> = vec![
            (None, None, 13, XidAction::Ignore),
            (None, None, 79, XidAction::Reset),
            (None, None, 94, XidAction::Recover),
            (Some("94"), None, 94, XidAction::Ignore),
            (Some("all"), None, 79, XidAction::Ignore),
            (Some("xids"), None, 48, XidAction::Ignore),
            (None, Some("13"), 13, XidAction::Recover),
            (Some("all"), Some("all"), 31, XidAction::Recover),
            (Some("all"), Some("all"), 79, XidAction::Reset),
            (Some("13,junk"), Some("31"), 31, XidAction::Recover),
        ];
        for (disable, enable, xid, want) in cases {
            assert_eq!(
                policy(disable, enable).action(xid),
                want,
                "{disable:?} {enable:?} xid {xid}"
            );
        }
    }

    #[test]
    fn config_overrides_defaults() {
        let mut config = HealthConfig::default();
        config.xids.insert(79, XidAction::Recover);
        config.xids.insert(94, XidAction::Ignore);
        config.recover_after = Some(Duration::from_secs(10));
        let policy = HealthPolicy::new(&config, None, None);
        assert_eq!(policy.action(79), XidAction::Recover);
        assert_eq!(policy.action(94), XidAction::Ignore);
        assert_eq!(policy.recover_after, Duration::from_secs(10));
    }

    #[test]
    fn gpu_events_reach_every_replica_and_mig_events_only_their_instance() {
        let inventory =
            simulated::from_instance("p4d.24xlarge", Some("all-balanced")).expect("sim");
        let mut config = Config::default();
        config.flags.mig_strategy = MigStrategy::Mixed;
        let planned = plan(&inventory, &config);
        let gpu = &inventory.gpus[2];
        let target = gpu
            .mig_devices
            .iter()
            .find(|m| m.profile == "1g.5gb")
            .expect("a 1g.5gb device");
        let one_g = planned.resource("nvidia.com/mig-1g.5gb").expect("1g");
        let event = XidEvent {
            gpu_uuid: gpu.uuid.clone(),
            xid: 94,
            gpu_instance: Some(target.gpu_instance_id),
            compute_instance: Some(target.compute_instance_id),
        };
        let hit = affected(&event, one_g);
        assert_eq!(
            hit,
            vec![target.uuid.as_str()],
            "exactly the MIG device with those ids"
        );
        let whole = XidEvent {
            gpu_instance: None,
            compute_instance: None,
            ..event
        };
        assert_eq!(
            affected(&whole, one_g).len(),
            2,
            "both 1g devices of the GPU"
        );

        let mut config = Config::default();
        config
            .sharing
            .time_slicing
            .resources
            .push(ReplicatedResource::every("nvidia.com/gpu", 4));
        let inventory = simulated::from_instance("g5.12xlarge", None).expect("sim");
        let planned = plan(&inventory, &config);
        let resource = &planned.resources[0];
        let event = XidEvent {
            gpu_uuid: inventory.gpus[1].uuid.clone(),
            xid: 48,
            gpu_instance: None,
            compute_instance: None,
        };
        let hit = affected(&event, resource);
        assert_eq!(hit, vec![inventory.gpus[1].uuid.as_str()]);
        let replicas = resource
            .devices
            .iter()
            .filter(|d| hit.contains(&d.physical.uuid.as_str()))
            .count();
        assert_eq!(replicas, 4, "all four replicas share the physical device");
    }

    #[test]
    fn recoverable_devices_come_back_after_a_quiet_period() {
        let policy = HealthPolicy::new(
            &HealthConfig {
                recover_after: Some(Duration::from_secs(60)),
                xids: BTreeMap::new(),
            },
            None,
            None,
        );
        let mut state = HealthState::default();
        let t0 = Instant::now();
        assert!(state.record(&["GPU-a"], 94, XidAction::Recover, t0, &policy));
        assert!(state.record(&["GPU-b"], 79, XidAction::Reset, t0, &policy));
        // A second event restarts the quiet period.
        assert!(!state.record(
            &["GPU-a"],
            94,
            XidAction::Recover,
            t0 + Duration::from_secs(30),
            &policy
        ));
        assert!(state.recover(t0 + Duration::from_secs(61)).is_empty());
        assert_eq!(
            state.recover(t0 + Duration::from_secs(91)),
            vec!["GPU-a".to_string()]
        );
        assert!(state.is_healthy("GPU-a"));
        assert!(
            !state.is_healthy("GPU-b"),
            "reset-class XIDs do not time out"
        );
        assert_eq!(state.next_recovery(), None);
    }
}
