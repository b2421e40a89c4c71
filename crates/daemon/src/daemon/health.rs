//! Device health in the daemon: pushing the node machine's health
//! ([`gpu_slicer_core::node::NodeMachine::health`]) to the kubelet with
//! every resource's device list, and the health gauges.
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
use gpu_slicer_core::health::Condition;
use gpu_slicer_core::node::NodeEvent;

/// What the NVML health watcher reports, as the node machine's event.
pub(super) fn health_event(report: HealthReport) -> NodeEvent {
    match report {
        HealthReport::Xid(event) => NodeEvent::Xid(event),
        HealthReport::Unreachable { gpu_uuid, reason } => NodeEvent::Unwatched { gpu_uuid, reason },
        HealthReport::Watched { gpu_uuid } => NodeEvent::Watched { gpu_uuid },
    }
}

impl Daemon {
    /// Re-sends every resource's list with the current health.
    pub(super) fn push_health(&mut self) {
        let health = Arc::new(self.node.health().clone());
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
        let health = self.node.health();
        for (name, served) in &self.served {
            let state = served.handle.state();
            let healthy = state
                .resource
                .devices
                .iter()
                .filter(|d| {
                    health.is_healthy(&d.physical.uuid) && health.is_healthy(&d.physical.gpu_uuid)
                })
                .count();
            self.metrics
                .healthy_devices
                .get_or_create(&self.metrics.resource(name.as_str()))
                .set(i64::try_from(healthy).unwrap_or(i64::MAX));
        }
        // Each GPU NVML counts is in at most one of: undiscovered (not
        // advertised), unreachable (advertised, not watched).
        let unreachable = health.count_advertised(Condition::Unreachable);
        self.metrics
            .gpus_unreachable
            .set(i64::try_from(unreachable).unwrap_or(i64::MAX));
        self.metrics.set_gpu_health(
            health
                .advertised()
                .iter()
                .map(|gpu| (gpu.index, gpu.uuid.clone(), health.gpu_healthy(gpu))),
        );
    }
}
