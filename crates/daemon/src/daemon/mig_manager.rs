//! Following MIG Manager's node labels (`nvidia.com/mig.config`,
//! `nvidia.com/mig.config.state`), whether MIG Manager sets them or
//! `--apply-mig-layouts` does: while a change is under way the MIG-capable
//! GPUs' devices are withdrawn (Unhealthy), and its end asks for
//! rediscovery.

use super::Daemon;
use gpu_slicer_core::health::Condition;

/// The node labels MIG Manager works with, each followed by a watch.
#[derive(Debug, Clone)]
pub struct MigManagerLabels {
    /// `nvidia.com/mig.config.state`: pending, rebooting, success, failed.
    pub state: tokio::sync::watch::Receiver<Option<String>>,
    /// `nvidia.com/mig.config`: the layout asked for.
    pub config: tokio::sync::watch::Receiver<Option<String>>,
    /// Told whether the MIG-capable GPUs are withdrawn now (`true`) or
    /// advertised again (`false`): what `--apply-mig-layouts` waits for
    /// before it changes a GPU, and before it reports success.
    pub withdrawn: Option<std::sync::Arc<tokio::sync::watch::Sender<bool>>>,
}

impl MigManagerLabels {
    pub(super) fn tell_withdrawn(&self, withdrawn: bool) {
        if let Some(tx) = &self.withdrawn {
            tx.send_replace(withdrawn);
        }
    }

    pub(super) fn now(&self) -> (Option<String>, Option<String>) {
        (self.state.borrow().clone(), self.config.borrow().clone())
    }
}

/// Whether MIG-capable GPUs are withdrawn under these labels: while a change
/// is `pending` or `rebooting`, and while a layout is asked for
/// (`nvidia.com/mig.config`) that MIG Manager has not reported on yet; a
/// node that scales up from zero must not admit pods onto whole GPUs before
/// its layout is applied.
pub fn mig_withdrawn(state: Option<&str>, config: Option<&str>) -> bool {
    match state {
        Some("pending" | "rebooting") => true,
        Some("success" | "failed") => false,
        _ => config.is_some(),
    }
}

/// Why the devices of a GPU MIG Manager is repartitioning are Unhealthy.
pub(super) const REPARTITIONING: &str = "MIG Manager is changing its MIG layout";

/// (state, config) after either MIG Manager label changes; never, when not
/// followed.
pub(super) async fn mig_labels_changed(
    labels: &mut Option<MigManagerLabels>,
) -> Option<(Option<String>, Option<String>)> {
    let Some(labels) = labels else {
        return std::future::pending().await;
    };
    let changed = tokio::select! {
        c = labels.state.changed() => c,
        c = labels.config.changed() => c,
    };
    if changed.is_err() {
        return std::future::pending().await;
    }
    labels.state.borrow_and_update();
    labels.config.borrow_and_update();
    Some(labels.now())
}

impl Daemon {
    /// A MIG Manager label changed. Withdrawing ([`mig_withdrawn`]) turns
    /// the devices of every MIG-capable GPU Unhealthy (none is admitted onto
    /// a GPU being repartitioned); the end of it, or a `failed` report,
    /// asks for rediscovery (returns true).
    pub(super) fn on_mig_manager(&mut self, state: Option<&str>, config: Option<&str>) -> bool {
        let withdraw = mig_withdrawn(state, config);
        self.metrics.mig_repartitioning.set(i64::from(withdraw));
        let shown = state.unwrap_or("(absent)");
        if withdraw {
            if !self.repartitioning {
                self.repartitioning = true;
                tracing::warn!(
                    "MIG Manager is changing the MIG layout (nvidia.com/mig.config={}, nvidia.com/mig.config.state={shown}): \
                     the devices of {} MIG-capable GPU(s) are Unhealthy until it reports success or failure",
                    config.unwrap_or("(absent)"),
                    self.mig_capable.len()
                );
                let mut changed = false;
                for gpu in self.mig_capable.clone() {
                    changed |= self.health.set_condition(
                        &gpu,
                        Condition::Repartitioning,
                        Some(REPARTITIONING),
                    );
                }
                if changed {
                    self.push_health();
                }
                self.update_readiness();
            }
            if let Some(labels) = &self.paths.mig_manager {
                labels.tell_withdrawn(true);
            }
            return false;
        }
        match state {
            Some("failed") => {
                tracing::error!(
                    "MIG Manager reports that the MIG layout change failed (nvidia.com/mig.config.state=failed); \
                     rediscovering and serving what the GPUs hold now; see MIG Manager's log"
                );
                true
            }
            Some("success") if self.repartitioning => {
                tracing::info!("MIG Manager applied the MIG layout; rediscovering the GPUs");
                true
            }
            _ if self.repartitioning => {
                tracing::warn!(
                    "nvidia.com/mig.config.state is now {shown} and no layout is asked for; rediscovering the GPUs"
                );
                true
            }
            _ => false,
        }
    }

    /// After the rediscovery that ends a repartitioning.
    pub(super) fn end_repartitioning(&mut self) {
        self.repartitioning = false;
        self.update_readiness();
        if let Some(labels) = &self.paths.mig_manager {
            labels.tell_withdrawn(false);
        }
        let mut changed = false;
        for gpu in self.mig_capable.clone() {
            changed |= self
                .health
                .set_condition(&gpu, Condition::Repartitioning, None);
        }
        if changed {
            self.push_health();
        }
    }
}
