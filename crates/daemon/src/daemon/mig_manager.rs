//! Following MIG Manager's node labels (`nvidia.com/mig.config`,
//! `nvidia.com/mig.config.state`), whether MIG Manager sets them or
//! `--apply-mig-layouts` does: while a change is under way the MIG-capable
//! GPUs' devices are withdrawn (Unhealthy), and its end asks for
//! rediscovery.
//!
//! The rule is level-triggered, as Kubernetes controllers are: on every
//! wake-up (a label change, a gap in watching the Node, a retry coming due)
//! the daemon compares what the labels ask now with what it did last, and
//! acts on the difference; it never depends on having seen a transition.
//!
//! - Withdrawn or not is a function of the labels' values alone
//!   ([`mig_withdrawn`]): withdrawing is idempotent.
//! - Not withdrawn, the GPUs are rediscovered (and the result applied)
//!   whenever the labels may have changed since the last rediscovery: their
//!   [`MigLevels::revision`] differs from the one that rediscovery was made
//!   at, or the GPUs are still withdrawn. The revision grows with every
//!   change the Node watcher sees (so `pending` and `success` arriving
//!   together, seen as one value, still count) and with every gap in
//!   watching (a relist: what happened in it is unknown, so the layout may
//!   have changed). A `pending` that was never seen therefore cannot leave
//!   vanished MIG devices advertised.
//! - A failed rediscovery is retried on a back-off, not left until the next
//!   label change.
//! - Nothing else happens on a wake-up whose levels were already acted on:
//!   after any sequence of labels the daemon is idle.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{Daemon, SetupSource};
pub use crate::cluster::node::MigLevels;
use crate::deadline::sleep_until_if;
use gpu_slicer_core::backoff::Backoff;
use gpu_slicer_core::health::Condition;
pub use gpu_slicer_core::node_labels::mig_withdrawn;
use gpu_slicer_core::node_labels::{MIG_CONFIG, MIG_CONFIG_STATE, MigConfigState};

/// The MIG labels the daemon follows, and whom it tells when it withdrew.
#[derive(Debug, Clone)]
pub struct MigManagerLabels {
    /// The labels' levels: the Node's (following MIG Manager) or the
    /// applier's (`--apply-mig-layouts`).
    pub levels: watch::Receiver<MigLevels>,
    /// Told whether the MIG-capable GPUs are withdrawn now (`true`) or
    /// advertised again (`false`): what `--apply-mig-layouts` waits for
    /// before it changes a GPU, and before it reports success.
    pub withdrawn: Option<Arc<watch::Sender<bool>>>,
}

impl MigManagerLabels {
    pub(super) fn tell_withdrawn(&self, withdrawn: bool) {
        if let Some(tx) = &self.withdrawn {
            tx.send_replace(withdrawn);
        }
    }
}

/// The daemon's side of following the labels: what it last acted on.
#[derive(Debug)]
pub(super) struct MigFollow {
    /// The revision of the labels the last rediscovery (or the first
    /// setup) reflects; `None`: none yet.
    discovered: Option<u64>,
    /// When to retry a rediscovery that failed.
    retry: Option<Instant>,
    backoff: Backoff,
}

/// Rediscovery retries after a failure: 1 s doubling to 1 min.
const RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

impl MigFollow {
    /// `at_start`: the labels' revision read before the first setup was
    /// loaded (so a change during that load is acted on).
    pub(super) fn new(at_start: Option<u64>) -> MigFollow {
        MigFollow {
            discovered: at_start,
            retry: None,
            backoff: RETRY,
        }
    }

    pub(super) fn next_retry(&self) -> Option<Instant> {
        self.retry
    }
}

/// Why the devices of a GPU MIG Manager is repartitioning are Unhealthy.
pub(super) const REPARTITIONING: &str = "MIG Manager is changing its MIG layout";

/// Returns when the labels changed (marking the change seen on `levels`,
/// the loop's one receiver) or a retry is due; never, when neither can
/// happen.
pub(super) async fn mig_wake(
    levels: &mut Option<watch::Receiver<MigLevels>>,
    retry: Option<Instant>,
) {
    let changed = async {
        if let Some(rx) = levels
            && rx.changed().await.is_ok()
        {
            return;
        }
        // Not followed, or the sender is gone: no change will come.
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = changed => {}
        () = sleep_until_if(retry) => {}
    }
}

fn shown(value: Option<&str>) -> &str {
    value.unwrap_or("(absent)")
}

impl Daemon {
    /// At start, before the first advertisement: a node whose labels say
    /// withdrawn never offers its MIG-capable GPUs Healthy (applied by
    /// `apply`).
    pub(super) fn start_following_mig(&mut self) {
        let Some(labels) = &self.paths.mig_manager else {
            return;
        };
        let levels = labels.levels.borrow().clone();
        if levels.withdrawn() {
            self.repartitioning = true;
            labels.tell_withdrawn(true);
            self.metrics.mig_repartitioning.set(1);
            tracing::warn!(
                "MIG Manager has not applied the MIG layout yet ({MIG_CONFIG}={}, {MIG_CONFIG_STATE}={}): \
                 the devices of MIG-capable GPUs are Unhealthy until it reports success or failure",
                shown(levels.config.as_deref()),
                shown(levels.state.as_deref())
            );
        }
    }

    /// Brings the served devices in line with what the MIG labels ask now
    /// (see the module docs): withdraws, rediscovers, or does nothing when
    /// these levels were acted on already.
    pub(super) async fn reconcile_mig(&mut self, source: &SetupSource) {
        let Some(labels) = &self.paths.mig_manager else {
            return;
        };
        let levels = labels.levels.borrow().clone();
        let withdraw = levels.withdrawn();
        self.metrics.mig_repartitioning.set(i64::from(withdraw));
        if withdraw {
            self.mig.retry = None;
            self.withdraw_mig(&levels);
            return;
        }
        if !self.repartitioning && self.mig.discovered == Some(levels.revision) {
            // Acted on already: nothing to do, nothing to retry.
            self.mig.retry = None;
            return;
        }
        let state = levels.state.as_deref();
        match state.and_then(MigConfigState::parse) {
            Some(MigConfigState::Failed) => tracing::error!(
                "MIG Manager reports that the MIG layout change failed ({MIG_CONFIG_STATE}=failed); \
                 rediscovering and serving what the GPUs hold now; see MIG Manager's log"
            ),
            Some(MigConfigState::Success) if self.repartitioning => {
                tracing::info!("MIG Manager applied the MIG layout; rediscovering the GPUs");
            }
            _ if self.repartitioning => tracing::warn!(
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
        let outcome = self
            .load_and_apply(source)
            .await
            .map_err(|e| format!("rediscovery after MIG Manager's change failed: {e}"));
        match outcome {
            Ok(_) => {
                self.mig.discovered = Some(levels.revision);
                self.mig.retry = None;
                self.mig.backoff.reset();
                self.end_repartitioning();
            }
            Err(e) => {
                let delay = self.mig.backoff.next_delay();
                tracing::error!(
                    "{e}; the GPUs stay {}; retrying in {delay:?}",
                    if self.repartitioning {
                        "withdrawn"
                    } else {
                        "as last discovered"
                    }
                );
                self.mig.retry = Some(Instant::now() + delay);
            }
        }
    }

    /// The devices of every MIG-capable GPU turn Unhealthy (none is
    /// admitted onto a GPU being repartitioned); idempotent.
    fn withdraw_mig(&mut self, levels: &MigLevels) {
        if !self.repartitioning {
            self.repartitioning = true;
            tracing::warn!(
                "MIG Manager is changing the MIG layout ({MIG_CONFIG}={}, {MIG_CONFIG_STATE}={}): \
                 the devices of {} MIG-capable GPU(s) are Unhealthy until it reports success or failure",
                shown(levels.config.as_deref()),
                shown(levels.state.as_deref()),
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
    }

    /// After the rediscovery that ends a repartitioning (or follows a label
    /// change): the GPUs are advertised as discovered.
    fn end_repartitioning(&mut self) {
        let was = std::mem::replace(&mut self.repartitioning, false);
        if let Some(labels) = &self.paths.mig_manager {
            labels.tell_withdrawn(false);
        }
        if !was {
            return;
        }
        self.update_readiness();
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
