//! Publishing the node's MIG state: the Node annotation
//! `gpu-slicer.io/mig-state` ([`gpu_slicer_core::mig_state`] is its format),
//! per GPU its MIG mode and the GPU instances that exist, with their
//! placements, MIG device UUIDs and whether a pod holds them. A cluster
//! controller (or `gpu-slicer simulate` over `kubectl get nodes -o yaml`)
//! reads it with the Node it already watches: one small annotation per node,
//! no custom resource to install.
//!
//! What it is made of, and when it is made again:
//!
//! | Input | Source | Event |
//! |---|---|---|
//! | MIG mode, instances, placements, UUIDs | the daemon's discovery | every discovery the daemon applies (start, reload, rediscovery after a MIG change) |
//! | which devices pods hold | the kubelet's PodResources `List` | each of the events below |
//! | a pod took devices | the device plugin's Allocate | each Allocate granted |
//! | a pod went away | a watch of the Pods bound to this node (`fieldSelector=spec.nodeName=<node>`) | a pod added, changed, ended or deleted |
//!
//! The kubelet has no PodResources watch, and it records an allocation
//! just after Allocate answers and releases a pod's devices after the pod
//! ended, so either can be a moment behind the event that announces it.
//! Two bounded follow-ups cover that gap, instead of polling: devices
//! Allocate granted count as held until PodResources lists them, until a
//! `List` made after a later pod event does not (the kubelet records an
//! allocation during admission, before the pod's status can change), or for
//! at most [`ALLOCATION_GRACE`]; and while PodResources still lists a pod
//! that the API server says has ended, or a granted device is not listed
//! yet, `List` is asked again on a back-off ([`RECHECK`]), for a pod at
//! most [`ENDED_GRACE`].
//!
//! Writing is one task's job, as for the MIG applier's state label: it
//! holds the latest value and merge-patches only this annotation, retrying
//! a refused write on a back-off until the API server has it; a newer value
//! supersedes one still being retried. A state that cannot be rendered
//! (larger than the format's bound) removes the annotation, loudly: a stale
//! value would claim instances that no longer exist.
//!
//! Needs `patch` on nodes (its own) and `list`, `watch` on pods.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::api::{KubeClient, WatchEvent};
use crate::deadline::sleep_until_if;
use crate::kubelet::plugin::OnAllocated;
use crate::kubelet::pod_resources;
use gpu_slicer_core::backoff::Backoff;
use gpu_slicer_core::gpu::Inventory;
use gpu_slicer_core::mig_state::{from_inventory, render};
use gpu_slicer_core::node_labels::MIG_STATE;

/// How long devices Allocate granted count as held without PodResources
/// listing them (the kubelet records them right after Allocate answers).
pub const ALLOCATION_GRACE: Duration = Duration::from_secs(60);
/// How long a pod the API server reports ended is looked for in
/// PodResources (the kubelet stops its containers first, up to the pod's
/// grace period).
pub const ENDED_GRACE: Duration = Duration::from_secs(600);
/// The follow-up `List`s while either is outstanding: 1 s doubling to 30 s.
pub const RECHECK: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
/// Retries of a refused write, and of a failed `List` or pod watch: 1 s
/// doubling to 1 min.
const RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
/// Most granted devices remembered between two publications; more is
/// beyond any node (a node advertises at most a few thousand replicas).
const MAX_ALLOCATED: usize = 4096;
/// Pod events queued for the publisher.
const POD_EVENTS: usize = 256;
/// Pods reported ended and still looked for.
const MAX_ENDED: usize = 1024;
/// A pod watch ending sooner than this after it opened counts as a failure.
const SHORT_WATCH: Duration = Duration::from_secs(5);

/// What the daemon and its plugin servers tell the publisher. Cheap to
/// clone; every call only records and wakes (never blocks on I/O).
#[derive(Clone, Default)]
pub struct MigStateFeed {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MigStateFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MigStateFeed")
    }
}

#[derive(Default)]
struct Shared {
    inputs: Mutex<Inputs>,
    wake: Notify,
}

#[derive(Default)]
struct Inputs {
    /// A discovery not yet taken by the publisher.
    inventory: Option<Inventory>,
    /// Device ids Allocate granted since the publisher last looked, with
    /// when (the publisher may look later than the kubelet lists them).
    allocated: Vec<(String, Instant)>,
}

impl MigStateFeed {
    fn with_inputs(&self, f: impl FnOnce(&mut Inputs)) {
        // A panic elsewhere while holding the lock leaves plain data: go on.
        let mut inputs = self.shared.inputs.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut inputs);
        drop(inputs);
        self.shared.wake.notify_one();
    }

    /// The daemon applied a discovery.
    pub fn discovered(&self, inventory: &Inventory) {
        self.with_inputs(|i| i.inventory = Some(inventory.clone()));
    }

    /// Allocate granted these devices.
    pub fn allocated(&self, device_ids: &[String]) {
        let now = Instant::now();
        self.with_inputs(|i| {
            let room = MAX_ALLOCATED.saturating_sub(i.allocated.len());
            i.allocated
                .extend(device_ids.iter().take(room).map(|id| (id.clone(), now)));
        });
    }

    /// What a plugin server calls after each Allocate.
    pub fn on_allocated(&self) -> OnAllocated {
        let feed = self.clone();
        OnAllocated(Arc::new(move |ids| feed.allocated(ids)))
    }

    fn take(&self) -> (Option<Inventory>, Vec<(String, Instant)>) {
        let mut inputs = self.shared.inputs.lock().unwrap_or_else(|e| e.into_inner());
        (
            inputs.inventory.take(),
            std::mem::take(&mut inputs.allocated),
        )
    }
}

/// What the pod watch reports.
#[derive(Debug)]
enum PodEvent {
    /// A pod of this node was added or changed.
    Changed,
    /// A pod (`namespace/name`) ended or was deleted.
    Ended(String),
    /// The watch broke: anything may have happened meanwhile.
    Gap,
}

/// The publisher: runs until `shutdown`.
pub struct Publisher {
    pub client: Arc<KubeClient>,
    pub node: String,
    pub pod_resources_socket: std::path::PathBuf,
    pub feed: MigStateFeed,
}

/// The publisher's own state between wake-ups.
struct State {
    inventory: Option<Inventory>,
    /// What PodResources listed last: (pod, device id); `None`: it could
    /// not be read, so nothing is known of what pods hold.
    listed: Option<Vec<(String, String)>>,
    /// Granted devices PodResources has not listed yet, with when.
    unconfirmed: Vec<(String, Instant)>,
    /// Pods the API server reports ended, with when.
    ended: Vec<(String, Instant)>,
    /// When the last pod event arrived.
    pod_event_at: Option<Instant>,
    /// The value the API server last accepted (`None` inside: removed).
    written: Option<Option<String>>,
    /// The value it last refused: retried at `retry_at`, unless a newer
    /// value supersedes it.
    refused: Option<Option<String>>,
    recheck: Backoff,
    recheck_at: Option<Instant>,
    retry: Backoff,
    retry_at: Option<Instant>,
    /// Failed Lists in a row (logged on the first and on recovery).
    list_failures: u32,
}

impl State {
    fn saw(&mut self, event: PodEvent) {
        let now = Instant::now();
        self.pod_event_at = Some(now);
        if let PodEvent::Ended(pod) = event
            && self.ended.len() < MAX_ENDED
        {
            self.ended.push((pod, now));
        }
    }
}

impl Publisher {
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(
            "publishing node {}'s MIG state as its annotation {MIG_STATE}",
            self.node
        );
        let (events_tx, mut events) = mpsc::channel(POD_EVENTS);
        tokio::spawn(watch_pods(
            self.client.clone(),
            self.node.clone(),
            events_tx,
            shutdown.clone(),
        ));
        let mut state = State {
            inventory: None,
            listed: None,
            unconfirmed: Vec::new(),
            ended: Vec::new(),
            pod_event_at: None,
            written: None,
            refused: None,
            recheck: RECHECK,
            recheck_at: None,
            retry: RETRY,
            retry_at: None,
            list_failures: 0,
        };
        let mut events_open = true;
        loop {
            // Take whatever arrived, then publish from it.
            let (inventory, allocated) = self.feed.take();
            if let Some(inventory) = inventory {
                state.inventory = Some(inventory);
            }
            state.unconfirmed.extend(allocated);
            self.publish(&mut state).await;
            let wait_until = [state.recheck_at, state.retry_at]
                .into_iter()
                .flatten()
                .min();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = self.feed.shared.wake.notified() => {}
                event = events.recv(), if events_open => match event {
                    Some(event) => state.saw(event),
                    None => events_open = false,
                },
                () = sleep_until_if(wait_until) => {}
            }
            // Several events at once are one List.
            while let Ok(event) = events.try_recv() {
                state.saw(event);
            }
        }
    }

    /// Lists what pods hold, makes the value, writes it if it changed.
    async fn publish(&self, state: &mut State) {
        let Some(inventory) = state.inventory.clone() else {
            return; // nothing discovered yet
        };
        self.list(state).await;
        let held: Option<Vec<String>> = state.listed.as_ref().map(|listed| {
            listed
                .iter()
                .map(|(_, id)| id.clone())
                .chain(state.unconfirmed.iter().map(|(id, _)| id.clone()))
                .collect()
        });
        let value = match from_inventory(&inventory, held.as_deref()).and_then(|s| render(&s)) {
            Ok(text) => Some(text),
            Err(e) => {
                tracing::error!(
                    "node {}: the MIG state cannot be published ({e}); removing the annotation {MIG_STATE} so that \
                     nobody reads a stale one",
                    self.node
                );
                None
            }
        };
        if state.written.as_ref() == Some(&value) {
            state.retry_at = None;
            return;
        }
        if state.refused.as_ref() == Some(&value)
            && state.retry_at.is_some_and(|at| at > Instant::now())
        {
            return; // a refused write waits for its retry
        }
        let patch = serde_json::json!({ "metadata": { "annotations": { MIG_STATE: value } } });
        match self.client.merge_patch_node(&self.node, &patch).await {
            Ok(()) => {
                tracing::debug!("node {}: {MIG_STATE} written", self.node);
                state.written = Some(value);
                state.refused = None;
                state.retry.reset();
                state.retry_at = None;
            }
            Err(e) => {
                let delay = state.retry.next_delay();
                tracing::warn!(
                    "cannot write {MIG_STATE} on node {}: {e}; retrying in {delay:?} (gpu-slicer needs `patch` on \
                     its node)",
                    self.node
                );
                state.retry_at = Some(Instant::now() + delay);
                state.refused = Some(value);
            }
        }
    }

    /// Asks PodResources what pods hold, and whether a follow-up is due.
    async fn list(&self, state: &mut State) {
        let now = Instant::now();
        match pod_resources::list(&self.pod_resources_socket).await {
            Ok(devices) => {
                if state.list_failures > 0 {
                    tracing::info!("the kubelet's PodResources API answers again");
                }
                state.list_failures = 0;
                let listed: Vec<(String, String)> =
                    devices.into_iter().map(|d| (d.pod, d.device_id)).collect();
                // Listed: PodResources governs from now on. Not listed after
                // a later pod event: the pod already ended (or was refused).
                let event_at = state.pod_event_at;
                state.unconfirmed.retain(|(id, at)| {
                    now.duration_since(*at) < ALLOCATION_GRACE
                        && event_at.is_none_or(|e| e < *at)
                        && !listed.iter().any(|(_, listed)| listed == id)
                });
                state.ended.retain(|(pod, at)| {
                    now.duration_since(*at) < ENDED_GRACE
                        && listed.iter().any(|(listed, _)| listed == pod)
                });
                tracing::debug!(
                    listed = listed.len(),
                    unconfirmed = state.unconfirmed.len(),
                    ended = state.ended.len(),
                    "PodResources listed"
                );
                state.listed = Some(listed);
            }
            Err(e) => {
                state.list_failures += 1;
                if state.list_failures == 1 {
                    tracing::warn!(
                        "{e}; the MIG state says of no instance whether a pod holds it until the kubelet answers"
                    );
                }
                state.listed = None;
            }
        }
        let outstanding =
            state.list_failures > 0 || !state.unconfirmed.is_empty() || !state.ended.is_empty();
        if outstanding {
            state.recheck_at = Some(now + state.recheck.next_delay());
        } else {
            state.recheck.reset();
            state.recheck_at = None;
        }
    }
}

/// Watches the pods of `node` and reports what happened to them; re-watches
/// after the server ends a watch, and after errors on a back-off.
async fn watch_pods(
    client: Arc<KubeClient>,
    node: String,
    events: mpsc::Sender<PodEvent>,
    shutdown: CancellationToken,
) {
    let mut backoff = RETRY;
    let mut version: Option<String> = None;
    loop {
        let opened = Instant::now();
        let failed = tokio::select! {
            _ = shutdown.cancelled() => return,
            failed = watch_once(&client, &node, &mut version, &events) => failed,
        };
        if events.is_closed() {
            return;
        }
        let short = opened.elapsed() < SHORT_WATCH;
        if let Some(e) = &failed {
            tracing::warn!("{e}; watching again");
            // What happened meanwhile is unknown: the publisher lists again.
            let _ = events.send(PodEvent::Gap).await;
        }
        if failed.is_some() || short {
            let delay = backoff.next_delay();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        } else {
            backoff.reset();
        }
    }
}

/// One watch, until the server ends it (`None`) or it fails (why).
async fn watch_once(
    client: &KubeClient,
    node: &str,
    version: &mut Option<String>,
    events: &mpsc::Sender<PodEvent>,
) -> Option<String> {
    let mut watch = match client.watch_pods(node, version.as_deref()).await {
        Ok(watch) => watch,
        Err(e) => {
            return Some(format!(
                "{e} (gpu-slicer needs `list` and `watch` on pods to follow them)"
            ));
        }
    };
    while let Some(event) = watch.next().await {
        let event = match event {
            Ok(WatchEvent::Added(pod) | WatchEvent::Modified(pod)) => {
                *version = Some(pod.metadata.resource_version.clone());
                if pod.ended() {
                    PodEvent::Ended(pod.key())
                } else {
                    PodEvent::Changed
                }
            }
            Ok(WatchEvent::Deleted(pod)) => {
                *version = Some(pod.metadata.resource_version.clone());
                PodEvent::Ended(pod.key())
            }
            Ok(WatchEvent::Bookmark(v)) => {
                *version = Some(v);
                continue;
            }
            Ok(WatchEvent::Error { code, message }) => {
                // 410 Gone: the version is too old; start afresh.
                *version = None;
                return Some(format!(
                    "the watch of node {node}'s pods failed: {message} ({code})"
                ));
            }
            Err(e) => {
                *version = None;
                return Some(e.to_string());
            }
        };
        if events.send(event).await.is_err() {
            return None;
        }
    }
    None
}
