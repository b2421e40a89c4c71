//! What the node machine's notices say in the log and count in the
//! metrics: the words an operator reads, kept out of the machine (the core
//! does not log).

use super::Daemon;
use super::mig_manager::shown;
use crate::metrics::XidLabel;
use gpu_slicer_core::node::NodeNotice;
use gpu_slicer_core::node_labels::{
    MIG_CONFIG, MIG_CONFIG_STATE, MIG_TARGET, MigConfigState, MigScope,
};

impl Daemon {
    pub(super) fn report_node(&self, notice: NodeNotice) {
        match notice {
            NodeNotice::NoDevicesYet { error } => {
                tracing::warn!("{error}");
                tracing::warn!("No devices found. Waiting indefinitely.");
            }
            NodeNotice::DiscoveryRetryIn(delay) => {
                tracing::info!("retrying device discovery in {delay:?}");
            }
            NodeNotice::DiscoveryFailedAgain { error } => {
                tracing::warn!("device discovery failed again: {error}");
            }
            NodeNotice::DiscoverySucceeded => tracing::info!("device discovery succeeded"),
            NodeNotice::DiscoveryNotApplied { error } => {
                tracing::error!("{error}; retrying");
            }
            NodeNotice::GpuUnreadable { index, reason } => {
                tracing::error!(
                    "GPU {index} cannot be read and is not advertised: {reason}. The other GPUs are served; check \
                     the GPU with `nvidia-smi -i {index}` and the kernel log (XID messages)"
                );
            }
            NodeNotice::GpuAnswersAgain { index } => {
                tracing::info!("GPU {index} answers again; its devices are advertised");
            }
            NodeNotice::Undiscovered(count) => {
                self.metrics
                    .gpus_undiscovered
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
            NodeNotice::ReloadApplied => self.metrics.count_reload(true),
            NodeNotice::ReloadRefused { error } => {
                self.metrics.count_reload(false);
                tracing::error!(
                    "configuration reload refused, keeping the running configuration: {error}"
                );
            }
            NodeNotice::HealthPolicyMalformed(message) => tracing::warn!("{message}"),
            NodeNotice::WaitingForWatcher { gpus } => tracing::info!(
                "advertised Unhealthy until the health watcher has registered and checked them ({}): GPUs {}",
                gpu_slicer_core::health::NOT_WATCHED_YET,
                gpus.join(", ")
            ),
            NodeNotice::MigWithdrawn {
                levels,
                gpus,
                devices,
                at_start,
            } => {
                if let MigScope::Gpus(_) = levels.scope {
                    tracing::info!(
                        "a MIG target ({MIG_TARGET}) is changing {gpus} GPU(s): the {devices} device(s) of the \
                         GPU instances it destroys are Unhealthy until the new layout is rediscovered; \
                         every other device, the kept instances' included, keeps serving"
                    );
                } else if at_start {
                    tracing::warn!(
                        "MIG Manager has not applied the MIG layout yet ({MIG_CONFIG}={}, {MIG_CONFIG_STATE}={}): \
                         the devices of MIG-capable GPUs are Unhealthy until it reports success or failure",
                        shown(levels.config.as_deref()),
                        shown(levels.state.as_deref())
                    );
                } else {
                    tracing::warn!(
                        "MIG Manager is changing the MIG layout ({MIG_CONFIG}={}, {MIG_CONFIG_STATE}={}): \
                         the devices of {gpus} MIG-capable GPU(s) are Unhealthy until it reports success or failure",
                        shown(levels.config.as_deref()),
                        shown(levels.state.as_deref()),
                    );
                }
            }
            NodeNotice::MigRepartitioning(under_way) => {
                self.metrics.mig_repartitioning.set(i64::from(under_way));
            }
            NodeNotice::MigRediscovering { levels, withdrawn } => {
                let state = levels.state.as_deref();
                match state.and_then(MigConfigState::parse) {
                    Some(MigConfigState::Failed) => tracing::error!(
                        "MIG Manager reports that the MIG layout change failed ({MIG_CONFIG_STATE}=failed); \
                         rediscovering and serving what the GPUs hold now; see MIG Manager's log"
                    ),
                    Some(MigConfigState::Success) if withdrawn => {
                        tracing::info!(
                            "MIG Manager applied the MIG layout; rediscovering the GPUs"
                        );
                    }
                    _ if withdrawn => tracing::warn!(
                        "{MIG_CONFIG_STATE} is now {} and no layout is asked for; rediscovering the GPUs",
                        shown(state)
                    ),
                    _ => tracing::info!(
                        "MIG Manager's labels changed, or were not watched for a while ({MIG_CONFIG}={}, {MIG_CONFIG_STATE}={}): \
                         the MIG layout may have changed; rediscovering the GPUs",
                        shown(levels.config.as_deref()),
                        shown(state)
                    ),
                }
            }
            NodeNotice::MigRediscoveryFailed {
                error,
                retry_in,
                withdrawn,
            } => tracing::error!(
                "rediscovery after MIG Manager's change failed: {error}; the GPUs stay {}; retrying in {retry_in:?}",
                if withdrawn {
                    "withdrawn"
                } else {
                    "as last discovered"
                }
            ),
            NodeNotice::XidCounted { xid } => {
                self.metrics
                    .health_events
                    .get_or_create(&XidLabel {
                        xid: xid.to_string(),
                    })
                    .inc();
            }
            NodeNotice::XidIgnored { xid, gpu_uuid } => tracing::info!(
                xid,
                gpu = %gpu_uuid,
                "Skipping event: XID ignored by the health policy"
            ),
            NodeNotice::XidUnhealthy {
                xid,
                action,
                devices,
            } => {
                for (name, device) in devices {
                    tracing::warn!(
                        "XidCriticalError: Xid={xid} on Device={device}; marking device as unhealthy ({action:?})."
                    );
                    tracing::warn!("'{name}' device marked unhealthy: {device}");
                }
            }
            NodeNotice::Recovered { devices } => {
                for device in devices {
                    tracing::info!("device healthy again after a quiet period: {device}");
                }
            }
            NodeNotice::UnwatchedChecksOff { gpu_uuid, reason } => tracing::info!(
                gpu = %gpu_uuid,
                "health checks are off: not marking a GPU that is not watched ({reason})"
            ),
            NodeNotice::UnwatchedUnhealthy {
                gpu_uuid,
                reason,
                devices,
            } => {
                for (name, device) in devices {
                    tracing::warn!(
                        "'{name}' device marked unhealthy: {device} (GPU {gpu_uuid} {reason})"
                    );
                }
            }
            NodeNotice::WatchedAgain { gpu_uuid } => tracing::info!(
                "GPU {gpu_uuid} is watched again; its devices are healthy unless an XID holds them"
            ),
            NodeNotice::MpsRestartIn { resource, delay } => tracing::warn!(
                "the MPS control daemon of '{resource}' is not ready; starting it again in {delay:?}"
            ),
            NodeNotice::MpsReadyAgain { resource } => tracing::info!(
                "the MPS control daemon of '{resource}' is ready again; its devices are Healthy"
            ),
        }
    }
}
