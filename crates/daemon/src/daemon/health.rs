//! Device health in the daemon: what the NVML health watcher reports (XID
//! events, GPUs watched or not), MPS control daemons that exit or come
//! back, and the quiet periods after which devices recover; every change is
//! pushed to the kubelet with the resource's device list.
//!
//! Fail closed: with GPUs read from NVML and health checks on, an
//! advertised GPU is Healthy only after the watcher has reported it
//! watched, and Unhealthy again whenever it reports it is not (the rule is
//! the core's, [`gpu_slicer_core::health::HealthState::advertise`]; the
//! watcher's side is in [`crate::gpus::health`]).

use std::sync::Arc;

use super::Daemon;
use crate::gpus::health::HealthReport;
use crate::kubelet::plugin::ResourceState;
use crate::metrics::XidLabel;
use gpu_slicer_core::config::ResourceName;
use gpu_slicer_core::health::{
    AdvertisedGpu, Condition, NOT_WATCHED_YET, XidAction, XidEvent, affected,
};

impl Daemon {
    pub(super) fn set_mps_health(
        &mut self,
        resource: &ResourceName,
        not_ready: Option<&str>,
    ) -> bool {
        let mut changed = false;
        for gpu in self.mps_gpus.get(resource).cloned().unwrap_or_default() {
            changed |= self
                .health
                .set_condition(&gpu, Condition::MpsNotReady, not_ready);
        }
        changed
    }

    /// An MPS control daemon exited: its devices turn Unhealthy at once.
    pub(super) fn on_mps_exit(&mut self, exit: crate::host::mps::MpsExit) {
        if let Some(name) = self.mps.on_exit(exit)
            && self.set_mps_health(&name, Some("its MPS control daemon exited"))
        {
            self.push_health();
        }
    }

    /// Daemons whose restart is due; the ready ones' devices turn Healthy.
    pub(super) async fn on_mps_restart_due(&mut self) {
        let mut changed = false;
        for name in self.mps.restart_due().await {
            tracing::info!(
                "the MPS control daemon of '{name}' is ready again; its devices are Healthy"
            );
            changed |= self.set_mps_health(&name, None);
        }
        if changed {
            self.push_health();
        }
    }

    /// What the NVML health watcher reports. A GPU is Healthy only while
    /// the watcher says its XID events are watched (see
    /// [`crate::gpus::health`]); [`gpu_slicer_core::health::HealthState::watch_report`] keeps that
    /// rule, and keeps the watcher's word while health checks are off.
    pub(super) fn on_health(&mut self, report: HealthReport) {
        match report {
            HealthReport::Xid(event) => self.on_xid(event),
            HealthReport::Unreachable { gpu_uuid, reason } => {
                if !self.policy.enabled {
                    tracing::info!(gpu = %gpu_uuid, "health checks are off: not marking a GPU that is not watched ({reason})");
                }
                if self.health.watch_report(&gpu_uuid, Some(&reason)) {
                    for device in self.devices_of(&gpu_uuid) {
                        tracing::warn!(
                            "'{}' device marked unhealthy: {} (GPU {gpu_uuid} {reason})",
                            device.0,
                            device.1
                        );
                    }
                    self.push_health();
                }
            }
            HealthReport::Watched { gpu_uuid } => {
                let first = matches!(
                    self.health.condition(&gpu_uuid, Condition::Unreachable),
                    None | Some(NOT_WATCHED_YET)
                );
                if self.health.watch_report(&gpu_uuid, None) {
                    if self.health.is_healthy(&gpu_uuid) && !first {
                        tracing::info!(
                            "GPU {gpu_uuid} is watched again; its devices are healthy unless an XID holds them"
                        );
                    }
                    self.push_health();
                }
            }
        }
    }

    /// The GPUs a setup advertises: each one is Healthy only once the NVML
    /// watcher reports it watched, when there is a watcher (GPUs read from
    /// NVML) and health checks are on.
    pub(super) fn advertise_gpus(&mut self, inventory: &gpu_slicer_core::gpu::Inventory) {
        let gpus = inventory.gpus.iter().map(AdvertisedGpu::of).collect();
        let required = self.paths.health_watched && self.policy.enabled;
        let before: Vec<String> = self
            .health
            .advertised()
            .iter()
            .map(|g| g.uuid.clone())
            .collect();
        self.health.advertise(gpus, required);
        let waiting: Vec<String> = self
            .health
            .advertised()
            .iter()
            .filter(|g| {
                !before.contains(&g.uuid)
                    && self.health.condition(&g.uuid, Condition::Unreachable)
                        == Some(NOT_WATCHED_YET)
            })
            .map(|g| format!("{} {}", g.index, g.uuid))
            .collect();
        if !waiting.is_empty() {
            tracing::info!(
                "advertised Unhealthy until the health watcher has registered and checked them ({NOT_WATCHED_YET}): GPUs {}",
                waiting.join(", ")
            );
        }
    }

    /// (resource, device id) of every advertised device on a GPU.
    pub(super) fn devices_of(&self, gpu_uuid: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, served) in &self.served {
            let state = served.handle.state();
            for d in &state.resource.devices {
                if d.physical.gpu_uuid == gpu_uuid {
                    out.push((name.to_string(), d.id.clone()));
                }
            }
        }
        out
    }

    /// An XID event: mark the devices it affects, per the policy.
    pub(super) fn on_xid(&mut self, event: XidEvent) {
        self.metrics
            .health_events
            .get_or_create(&XidLabel {
                xid: event.xid.to_string(),
            })
            .inc();
        let action = self.policy.action(event.xid);
        if action == XidAction::Ignore {
            tracing::info!(xid = event.xid, gpu = %event.gpu_uuid, "Skipping event: XID ignored by the health policy");
            return;
        }
        let now = std::time::Instant::now();
        let mut changed = false;
        for (name, served) in &self.served {
            let state = served.handle.state();
            let hit = affected(&event, &state.resource);
            for device in &hit {
                tracing::warn!(
                    "XidCriticalError: Xid={} on Device={device}; marking device as unhealthy ({action:?}).",
                    event.xid
                );
                tracing::warn!("'{name}' device marked unhealthy: {device}");
            }
            changed |= self
                .health
                .record(&hit, event.xid, action, now, &self.policy);
        }
        if changed {
            self.push_health();
        }
    }

    /// Devices whose quiet period is over turn healthy again.
    pub(super) fn on_recovery_due(&mut self) {
        let recovered = self.health.recover(std::time::Instant::now());
        for device in &recovered {
            tracing::info!("device healthy again after a quiet period: {device}");
        }
        if !recovered.is_empty() {
            self.push_health();
        }
    }

    /// Re-sends every resource's list with the current health.
    pub(super) fn push_health(&mut self) {
        let health = Arc::new(self.health.clone());
        for served in self.served.values() {
            let state = served.handle.state();
            served.handle.update(ResourceState {
                resource: state.resource.clone(),
                health: health.clone(),
                flags: state.flags.clone(),
                files: state.files.clone(),
                links: state.links.clone(),
                owners: state.owners.clone(),
            });
        }
        self.update_health_gauges();
    }

    pub(super) fn update_health_gauges(&self) {
        for (name, served) in &self.served {
            let state = served.handle.state();
            let healthy = state
                .resource
                .devices
                .iter()
                .filter(|d| {
                    self.health.is_healthy(&d.physical.uuid)
                        && self.health.is_healthy(&d.physical.gpu_uuid)
                })
                .count();
            self.metrics
                .healthy_devices
                .get_or_create(&self.metrics.resource(name.as_str()))
                .set(i64::try_from(healthy).unwrap_or(i64::MAX));
        }
        // Each GPU NVML counts is in at most one of: undiscovered (not
        // advertised), unreachable (advertised, not watched).
        let unreachable = self.health.count_advertised(Condition::Unreachable);
        self.metrics
            .gpus_unreachable
            .set(i64::try_from(unreachable).unwrap_or(i64::MAX));
        self.metrics.set_gpu_health(
            self.health
                .advertised()
                .iter()
                .map(|gpu| (gpu.index, gpu.uuid.clone(), self.health.gpu_healthy(gpu))),
        );
    }
}
