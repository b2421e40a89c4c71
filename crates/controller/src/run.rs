//! The controller's shell: the Lease, the watches feeding the stores
//! (Nodes, pending Pods, and Karpenter's NodeClaims where the cluster serves
//! them), the batch window, the passes, and the writes of the targets.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use gpu_slicer_core::mig_demand::BatchWindow;
use gpu_slicer_core::node_labels::MIG_TARGET;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::lease::{Elector, LeaseSettings};
use crate::metrics::{self, Metrics};
use crate::pass::{self, FirstSeen, Written};
use crate::store::{
    self, ClaimEntry, MAX_CLAIMS, MAX_NODES, MAX_PENDING_PODS, NodeEntry, PendingPod, PodRead,
    Store,
};

/// The pods the controller watches: not bound to a node, not finished.
pub const PENDING_PODS_SELECTOR: &str =
    "spec.nodeName=,status.phase!=Succeeded,status.phase!=Failed";
/// The field manager of the controller's patches.
pub const FIELD_MANAGER: &str = "gpu-slicer-controller";
/// How often the batch window is looked at when nothing changes.
const TICK: Duration = Duration::from_secs(1);
/// How long to wait before asking again whether NodeClaims can be listed,
/// after an answer that was neither yes nor "not served".
const CLAIMS_PROBE_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Options {
    pub lease: LeaseSettings,
    pub batch_timeout_s: u64,
    pub batch_idle_s: u64,
    pub min_free_age_s: u64,
    pub metrics_address: SocketAddr,
}

/// Why the controller stopped; each says what to check.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(
        "no Kubernetes client configuration: {0} (in a pod, the service account's token must be mounted; elsewhere set KUBECONFIG)"
    )]
    Client(#[source] kube::Error),
    #[error("cannot serve metrics on {address}: {source} (choose another --metrics-address)")]
    Metrics {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "lost the Lease {namespace}/{name}: not renewed for {seconds} s (the API server was unreachable, or another replica took it); exiting so that a fresh start competes again"
    )]
    LostLease {
        namespace: String,
        name: String,
        seconds: u64,
    },
    #[error("cannot listen for SIGTERM: {0}")]
    Signal(#[source] std::io::Error),
}

/// Lists in pages of 500 from the latest state: with the default "any"
/// semantic (`resourceVersion=0`) the API server may answer from its watch
/// cache in one response whatever the limit, and 10,000 pending pods in one
/// response would be the controller's largest allocation by far.
fn list_config() -> watcher::Config {
    watcher::Config::default()
        .list_semantic(watcher::ListSemantic::MostRecent)
        .page_size(500)
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What the watches fill and the passes read.
struct Shared {
    nodes: Store<NodeEntry>,
    pods: Store<PendingPod>,
    /// The pending pods' placements, one copy each.
    placements: store::Placements,
    /// Karpenter's NodeClaims on their way; empty where none are served.
    claims: Store<ClaimEntry>,
    /// Passes wait for the NodeClaims' first list while this is set: from
    /// the start until the API server says it serves none (or refuses), so
    /// a first pass cannot re-cut for pods Karpenter is launching for.
    claims_awaited: bool,
    /// Pods a written target was for, until they are bound or gone.
    unlocked: HashMap<String, u64>,
}

pub async fn run(options: Options) -> Result<(), ControllerError> {
    let stop = CancellationToken::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ControllerError::Signal)?;
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("stopping: giving up the Lease");
            stop.cancel();
        });
    }
    let client = kube::Client::try_default()
        .await
        .map_err(ControllerError::Client)?;
    let metrics = Metrics::default();
    let bound = metrics::serve(options.metrics_address, &metrics, stop.clone())
        .await
        .map_err(|source| ControllerError::Metrics {
            address: options.metrics_address,
            source,
        })?;
    tracing::info!("metrics on http://{bound}/metrics");

    let mut elector = Elector::new(client.clone(), options.lease.clone());
    let lease = elector.settings().clone();
    // Standby until the Lease is ours (or we are told to stop).
    loop {
        match elector.try_acquire_or_renew().await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::warn!("Lease {}/{}: {e}; retrying", lease.namespace, lease.name),
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(lease.retry) => {}
        }
    }
    metrics.leader.set(1);
    tracing::info!(
        "leading as {} (Lease {}/{})",
        lease.identity,
        lease.namespace,
        lease.name
    );

    let shared = Arc::new(Mutex::new(Shared {
        nodes: Store::new(MAX_NODES),
        pods: Store::new(MAX_PENDING_PODS),
        claims: Store::new(MAX_CLAIMS),
        placements: store::Placements::default(),
        claims_awaited: true,
        unlocked: HashMap::new(),
    }));
    let changed = Arc::new(Notify::new());
    let leading = stop.child_token();
    tokio::spawn(watch_nodes(
        Api::all(client.clone()),
        shared.clone(),
        changed.clone(),
        leading.clone(),
    ));
    tokio::spawn(watch_pods(
        Api::all(client.clone()),
        shared.clone(),
        changed.clone(),
        metrics.clone(),
        leading.clone(),
    ));
    tokio::spawn(watch_claims(
        client.clone(),
        shared.clone(),
        changed.clone(),
        leading.clone(),
    ));
    let reconcile = tokio::spawn(reconcile(
        Api::all(client.clone()),
        shared,
        changed,
        metrics.clone(),
        options.clone(),
        leading.clone(),
    ));

    // Renew while leading; stop leading when renewals fail for too long.
    let mut renewed = tokio::time::Instant::now();
    let outcome = loop {
        tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            _ = tokio::time::sleep(lease.retry) => {}
        }
        match elector.try_acquire_or_renew().await {
            Ok(true) => renewed = tokio::time::Instant::now(),
            Ok(false) => {}
            Err(e) => tracing::warn!("renewing the Lease: {e}"),
        }
        if renewed.elapsed() > lease.renew_deadline {
            break Err(ControllerError::LostLease {
                namespace: lease.namespace.clone(),
                name: lease.name.clone(),
                seconds: lease.renew_deadline.as_secs(),
            });
        }
    };
    leading.cancel();
    let _ = reconcile.await;
    metrics.leader.set(0);
    if outcome.is_ok()
        && let Err(e) = elector.release().await
    {
        tracing::warn!("giving up the Lease: {e} (another replica takes over once it expires)");
    }
    outcome
}

async fn watch_nodes(
    api: Api<Node>,
    shared: Arc<Mutex<Shared>>,
    changed: Arc<Notify>,
    stop: CancellationToken,
) {
    let events = watcher(api, list_config()).default_backoff().boxed();
    let name = |n: &Node| n.metadata.name.clone().unwrap_or_default();
    follow(
        events,
        "Nodes",
        &shared,
        &changed,
        &stop,
        |s, event| match event {
            Event::Init => s.nodes.init(),
            Event::InitApply(n) => s.nodes.init_apply(name(&n), Some(store::read_node(&n))),
            Event::InitDone => s.nodes.init_done(),
            Event::Apply(n) => {
                s.nodes.apply(name(&n), Some(store::read_node(&n)));
            }
            Event::Delete(n) => {
                s.nodes.delete(&name(&n));
            }
        },
    )
    .await;
}

async fn watch_pods(
    api: Api<Pod>,
    shared: Arc<Mutex<Shared>>,
    changed: Arc<Notify>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let config = list_config().fields(PENDING_PODS_SELECTOR);
    let events = watcher(api, config).default_backoff().boxed();
    // A pending pod's entry, its placement shared with its siblings'.
    let pending = |placements: &mut store::Placements, p: &Pod| match store::read_pod(p) {
        PodRead::Pending(mut entry) => {
            entry.placement = placements.intern(entry.placement);
            Some(entry)
        }
        PodRead::NotPending => None,
        PodRead::Invalid(reason) => {
            tracing::warn!("pod {} left out: {reason}", store::pod_key(p));
            None
        }
    };
    follow(
        events,
        "pending Pods",
        &shared,
        &changed,
        &stop,
        |s, event| match event {
            Event::Init => s.pods.init(),
            Event::InitApply(p) => {
                let entry = pending(&mut s.placements, &p);
                s.pods.init_apply(store::pod_key(&p), entry);
            }
            Event::InitDone => s.pods.init_done(),
            Event::Apply(p) => {
                let key = store::pod_key(&p);
                let entry = pending(&mut s.placements, &p);
                let gone = entry.is_none();
                s.pods.apply(key.clone(), entry);
                if gone {
                    left_pending(s, &key, store::pod_bound(&p), &metrics);
                }
            }
            // A pod leaves the watch of unbound pods when it is bound (the
            // object then has its node) or deleted.
            Event::Delete(p) => {
                let key = store::pod_key(&p);
                s.pods.delete(&key);
                left_pending(s, &key, store::pod_bound(&p), &metrics);
            }
        },
    )
    .await;
}

/// Watches Karpenter's NodeClaims (`karpenter.sh/v1`) once the API server
/// answers a list of them: a cluster without Karpenter answers 404, and the
/// controller then runs without them (said once). Any other refusal (403:
/// the RBAC rule is missing) is logged with what to do, and asked again
/// every minute. Passes never wait for this store: a cluster without
/// Karpenter has nothing on its way.
async fn watch_claims(
    client: kube::Client,
    shared: Arc<Mutex<Shared>>,
    changed: Arc<Notify>,
    stop: CancellationToken,
) {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        store::NODECLAIM_GROUP,
        store::NODECLAIM_VERSION,
        store::NODECLAIM_KIND,
    ));
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let awaited = |awaited: bool| {
        if let Ok(mut s) = shared.lock() {
            s.claims_awaited = awaited;
        }
        changed.notify_one();
    };
    loop {
        match api.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => break,
            Err(kube::Error::Api(status)) if status.code == 404 => {
                tracing::info!(
                    "Karpenter's NodeClaims (karpenter.sh/v1) are not served here: what Karpenter launches is not counted"
                );
                awaited(false);
                return;
            }
            Err(e) => {
                tracing::warn!(
                    "cannot list Karpenter's NodeClaims: {e} (the controller's ClusterRole needs list and watch on karpenter.sh nodeclaims); \
                     until then what Karpenter launches is not counted; asking again in {} s",
                    CLAIMS_PROBE_RETRY.as_secs()
                );
                awaited(false);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(CLAIMS_PROBE_RETRY) => {}
        }
    }
    awaited(true);
    tracing::info!("watching Karpenter's NodeClaims: the slices they bring count as on their way");
    let events = watcher(api, list_config()).default_backoff().boxed();
    let name = |c: &DynamicObject| c.metadata.name.clone().unwrap_or_default();
    follow(
        events,
        "NodeClaims",
        &shared,
        &changed,
        &stop,
        |s, event| match event {
            Event::Init => s.claims.init(),
            Event::InitApply(c) => s.claims.init_apply(name(&c), store::read_claim(&c)),
            Event::InitDone => s.claims.init_done(),
            Event::Apply(c) => {
                s.claims.apply(name(&c), store::read_claim(&c));
            }
            Event::Delete(c) => {
                s.claims.delete(&name(&c));
            }
        },
    )
    .await;
}

/// Runs one watch until `stop` or its end: each event is applied to the
/// stores under the lock, then the decision loop is woken. The watcher
/// backs off and relists by itself after an error, so an error is only
/// logged.
async fn follow<K>(
    mut events: impl futures_util::Stream<Item = Result<Event<K>, watcher::Error>> + Unpin,
    what: &str,
    shared: &Mutex<Shared>,
    changed: &Notify,
    stop: &CancellationToken,
    mut apply: impl FnMut(&mut Shared, Event<K>),
) {
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = events.next() => event,
        };
        let event = match event {
            None => return,
            Some(Ok(event)) => event,
            Some(Err(e)) => {
                tracing::warn!("watching {what}: {e}; retrying");
                continue;
            }
        };
        let Ok(mut s) = shared.lock() else { return };
        apply(&mut s, event);
        drop(s);
        changed.notify_one();
    }
}

fn left_pending(shared: &mut Shared, key: &str, bound: bool, metrics: &Metrics) {
    if let Some(created_s) = shared.unlocked.remove(key)
        && bound
    {
        metrics.pods_unblocked.inc();
        metrics
            .pending_to_schedulable
            .observe(now_s().saturating_sub(created_s) as f64);
    }
}

async fn reconcile(
    nodes_api: Api<Node>,
    shared: Arc<Mutex<Shared>>,
    changed: Arc<Notify>,
    metrics: Metrics,
    options: Options,
    stop: CancellationToken,
) {
    let mut window = BatchWindow::new(options.batch_timeout_s, options.batch_idle_s);
    let mut first_seen = FirstSeen::default();
    let mut written: HashMap<String, Written> = HashMap::new();
    let mut known_pending: HashSet<String> = HashSet::new();
    let mut dropped_seen = (0, 0);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = changed.notified() => {}
            _ = tokio::time::sleep(TICK) => {}
        }
        let now = now_s();
        let outcome = {
            let Ok(mut s) = shared.lock() else { return };
            if !s.nodes.synced() || !s.pods.synced() || (s.claims_awaited && !s.claims.synced()) {
                continue;
            }
            // Writes whose echo came back (or that someone else overwrote)
            // are the store's business from now on.
            let Shared { nodes, .. } = &*s;
            written.retain(|name, w| nodes.items().get(name).is_some_and(|n| w.awaiting_echo(n)));
            let dropped = (s.nodes.dropped, s.pods.dropped);
            if dropped != dropped_seen {
                tracing::warn!(
                    "left out for want of room: {} Node(s) beyond {MAX_NODES}, {} pending pod(s) beyond {MAX_PENDING_PODS} so far",
                    dropped.0,
                    dropped.1
                );
                dropped_seen = dropped;
            }
            let pending = s.pods.items();
            let new = pending
                .keys()
                .filter(|k| !known_pending.contains(*k))
                .count();
            known_pending = pending.keys().cloned().collect();
            metrics.pending_pods.set(pending.len() as i64);
            if !window.observe(now, new, pending.len()) {
                continue;
            }
            // Placements no pending pod holds any more are dropped here,
            // once per pass.
            s.placements.prune();
            let outcome = pass::run(
                s.nodes.items(),
                s.pods.items(),
                s.claims.items(),
                &written,
                &mut first_seen,
                now,
                options.min_free_age_s,
            );
            for key in &outcome.unlocked {
                if let Some(p) = s.pods.items().get(key) {
                    let created = p.created_s;
                    s.unlocked.insert(key.clone(), created);
                }
            }
            outcome
        };
        metrics.decisions.inc();
        for (node, why) in &outcome.left_out {
            tracing::warn!("node {node} left out of the decision: {why}");
        }
        metrics
            .stale_targets
            .set(outcome.stale_targets.len() as i64);
        for (node, age_s) in &outcome.stale_targets {
            tracing::warn!(
                "node {node}: its MIG target has not applied for {age_s} s (the node's MigTargetFailed Events say why); \
                 what it would create no longer counts for pending pods, which another node may serve; \
                 the node stays frozen until the target applies or is replaced"
            );
        }
        tracing::debug!(
            "decision: {} pending, {} fit now, {} unlocked, {} node(s) frozen, {} NodeClaim(s) on their way",
            outcome.pending,
            outcome.fit_now,
            outcome.unlocked.len(),
            outcome.frozen.len(),
            outcome.claims_on_the_way
        );
        for target in outcome.targets {
            let previous = shared.lock().ok().and_then(|s| {
                s.nodes
                    .items()
                    .get(&target.node)
                    .and_then(|n| n.mig_target.clone())
            });
            let patch = serde_json::json!({
                "metadata": { "annotations": { MIG_TARGET: target.text } }
            });
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..PatchParams::default()
            };
            match nodes_api
                .patch(&target.node, &params, &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(
                        "node {}: MIG target written ({} GPU(s) change): {}",
                        target.node,
                        target.gpus_changed,
                        target.text
                    );
                    metrics.reconfigurations.inc_by(target.gpus_changed as u64);
                    written.insert(
                        target.node.clone(),
                        Written {
                            text: target.text,
                            previous,
                        },
                    );
                }
                // Level-triggered: the next pass decides again from what the
                // cluster holds then, and writes again if still needed.
                Err(e) => tracing::warn!(
                    "node {}: writing its MIG target failed: {e}; the next pass retries",
                    target.node
                ),
            }
        }
    }
}
