//! Following MIG Manager's node labels (`nvidia.com/mig.config`,
//! `nvidia.com/mig.config.state`), whether MIG Manager sets them or
//! `--apply-mig-layouts` does. The rules (withdraw while a change is under
//! way, rediscover by level, retry a failed rediscovery) are the node
//! machine's ([`gpu_slicer_core::node`]); this module only wakes the loop
//! when the labels change, and tells the applier what was done.

use std::sync::Arc;

use tokio::sync::watch;

pub use crate::cluster::node::MigLevels;
use gpu_slicer_core::node_labels::MigScope;
pub use gpu_slicer_core::node_labels::mig_withdrawn;

/// The MIG labels the daemon follows, and whom it tells when it withdrew.
#[derive(Debug, Clone)]
pub struct MigManagerLabels {
    /// The labels' levels: the Node's (following MIG Manager) or the
    /// applier's (`--apply-mig-layouts`).
    pub levels: watch::Receiver<MigLevels>,
    /// Told what is withdrawn now (the scope of the change the levels
    /// asked for) or that nothing is (`None`: advertised again): what
    /// `--apply-mig-layouts` waits for before it changes a GPU, and before
    /// it reports the outcome.
    pub withdrawn: Option<Arc<watch::Sender<Option<MigScope>>>>,
}

impl MigManagerLabels {
    pub(super) fn tell_withdrawn(&self, withdrawn: Option<MigScope>) {
        if let Some(tx) = &self.withdrawn {
            tx.send_replace(withdrawn);
        }
    }
}

/// Returns when the labels changed (marking the change seen on `levels`,
/// the loop's one receiver); never, when they are not followed.
pub(super) async fn mig_changed(levels: &mut Option<watch::Receiver<MigLevels>>) {
    if let Some(rx) = levels
        && rx.changed().await.is_ok()
    {
        return;
    }
    // Not followed, or the sender is gone: no change will come.
    std::future::pending::<()>().await;
}

pub(super) fn shown(value: Option<&str>) -> &str {
    value.unwrap_or("(absent)")
}
