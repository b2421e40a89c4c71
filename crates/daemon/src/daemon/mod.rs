//! The daemon: the shell that executes the two machines of the core.
//!
//! [`gpu_slicer_core::lifecycle::Machine`] decides when to serve, stop and
//! register; [`gpu_slicer_core::node::NodeMachine`] decides what is served
//! and in which health: loads applied or refused, discovery retries, MIG
//! withdrawal and rediscovery, XIDs, watcher reports, MPS readiness and
//! readiness. This module gathers what happens (directory changes, streams,
//! Register answers, the NVML watcher's reports, MPS exits, MIG labels,
//! SIGHUP, deadlines, signals), feeds it to the machine it concerns, and
//! executes the actions they return (bind sockets, call Register, load and
//! apply a setup, write files, update the device lists); it decides
//! nothing itself. Before every registration event it reports what the
//! device-plugin directory holds now, so a late or repeated inotify event
//! cannot start a second registration. Beside it: the health push
//! ([`health`]), the notices' words ([`notices`]), MIG Manager's labels
//! ([`mig_manager`]), the CDI specs ([`cdi`]) and the device-plugin
//! directory's watch ([`dir_watch`]).
//!
//! One task owns all state; there is no polling and no shared mutable
//! global state. Stream changes arrive as counts plus a wake-up, XIDs on a
//! bounded channel.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::deadline::sleep_until_if;
use crate::gpus::health::HealthReport;
use crate::host::files::{READABLE_FILE_MODE, write_atomically};
use crate::kubelet::plugin::{ResourceHandle, ResourceState, RunningServer, serve};
use crate::kubelet::{kubelet_identity, register};
use crate::metrics::Metrics;
use gpu_slicer_core::allocate::NodeDeviceFiles;
use gpu_slicer_core::config::{Config, ResourceName};
use gpu_slicer_core::gpu::Inventory;
use gpu_slicer_core::health::{AdvertisedGpu, HealthPolicy};
use gpu_slicer_core::lifecycle::{self, Action, AttemptId, Event, Machine, Notice, ServerId};
use gpu_slicer_core::node::{
    Applied, LoadCause, LoadOutcome, MpsReadiness, NodeAction, NodeEvent, NodeMachine, NodeSettings,
};
use gpu_slicer_core::placement::LinkScores;
use gpu_slicer_core::plan::{Plan, Severity, plan};

mod cdi;
mod dir_watch;
mod health;
mod mig_manager;
mod notices;

use dir_watch::DirectoryWatch;
use health::health_event;
use mig_manager::mig_changed;
pub use mig_manager::{MigLevels, MigManagerLabels, mig_withdrawn};

/// What the daemon serves: discovered devices plus the effective config.
#[derive(Debug, Clone)]
pub struct Setup {
    pub inventory: Inventory,
    pub config: Config,
    pub files: NodeDeviceFiles,
    /// GPUs NVML counts that discovery could not read: not in `inventory`;
    /// discovery is retried on a back-off until they answer.
    pub unreachable: Vec<crate::gpus::nvml::UnreachableGpu>,
}

/// Produces a fresh [`Setup`] (at start and on every reload). It may block
/// (reads files, talks to the driver): it runs off the async runtime.
pub type SetupSource = Arc<dyn Fn() -> Result<Setup, SetupError> + Send + Sync>;

/// Why no [`Setup`] could be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// A bad configuration, or discovery failing with `failOnInitError:
    /// true`: refused at start (exit 1), kept out on reload.
    #[error("{0}")]
    Fatal(String),
    /// Discovery failed with `failOnInitError: false`: stay alive, advertise
    /// nothing, and try again on a back-off, so a driver installed later is
    /// picked up without a restart.
    #[error("{0}")]
    NotReady(String),
}

#[derive(Debug, Clone)]
pub struct Paths {
    /// Where plugin sockets go: the kubelet's device-plugin directory.
    pub device_plugin_dir: PathBuf,
    /// `kubelet.sock`; `None` serves without registering.
    pub kubelet_socket: Option<PathBuf>,
    /// Node Feature Discovery feature file to write node labels to; `None` = off.
    pub feature_file: Option<PathBuf>,
    /// Directory to write the CDI spec into when a CDI strategy is on;
    /// `None`: [`DEFAULT_CDI_SPEC_DIR`].
    pub cdi_spec_dir: Option<PathBuf>,
    /// NVIDIA's `DP_DISABLE_HEALTHCHECKS` / `DP_ENABLE_HEALTHCHECKS`.
    pub health_env: HealthEnv,
    /// The NVML health watcher runs (GPUs read from NVML): a GPU is
    /// Healthy only once it reports the GPU watched (fail closed).
    pub health_watched: bool,
    /// Life-cycle waits (tests shorten them).
    pub timings: Timings,
    /// `--mps-control-bin`: the MPS control program (found under the driver
    /// root when unset).
    pub mps_control_bin: Option<PathBuf>,
    /// `--mps-container-root`: where the host's `--mps-root` is mounted here.
    pub mps_container_root: PathBuf,
    /// This node's MIG Manager labels, when followed (`--follow-mig-manager`).
    pub mig_manager: Option<MigManagerLabels>,
    /// Told every discovery applied and every Allocate granted, when the
    /// node's MIG state is published ([`crate::cluster::mig_state`]).
    pub mig_state: Option<crate::cluster::mig_state::MigStateFeed>,
}

/// The life-cycle waits, injectable so tests need not sit them out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// How long a resource may have no ListAndWatch stream before it is
    /// registered again: long enough for a kubelet restart's own signs
    /// (socket created, sockets deleted) to arrive first.
    pub stream_grace: Duration,
    /// How long watched config files must stay quiet before they are read:
    /// a writer that is not atomic (an editor, `cp`) produces several events
    /// and, in between, a truncated file that must not be applied.
    pub config_settle: Duration,
    /// How often every GPU must answer NVML (see [`crate::gpus::health`]).
    pub health_probe: Duration,
    /// The first retry of a failed MIG layout change
    /// ([`crate::cluster::mig_applier::RETRY_FIRST`]).
    pub mig_apply_retry: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            stream_grace: Duration::from_secs(2),
            config_settle: Duration::from_millis(150),
            health_probe: crate::gpus::health::Timings::default().probe,
            mig_apply_retry: crate::cluster::mig_applier::RETRY_FIRST,
        }
    }
}

/// Raw values of NVIDIA's health-check environment variables.
#[derive(Debug, Clone, Default)]
pub struct HealthEnv {
    pub disable: Option<String>,
    pub enable: Option<String>,
}

impl HealthEnv {
    pub fn from_process() -> Self {
        HealthEnv {
            disable: std::env::var("DP_DISABLE_HEALTHCHECKS").ok(),
            enable: std::env::var("DP_ENABLE_HEALTHCHECKS").ok(),
        }
    }
}

/// Where container runtimes look for CDI specs (NVIDIA's plugin writes
/// there too).
pub const DEFAULT_CDI_SPEC_DIR: &str = "/var/run/cdi";

/// Why a setup could not be applied; nothing of it was.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "a CDI device-list strategy is on, but the CDI spec cannot be written in {dir}: {source}. Container runtimes would not resolve the device names Allocate returns: mount the host's /var/run/cdi into the pod, or point --cdi-spec-dir at a writable directory the runtime reads"
    )]
    CdiSpec {
        dir: PathBuf,
        #[source]
        source: crate::host::files::WriteError,
    },
    #[error("cannot encode the CDI spec: {0}")]
    CdiEncode(String),
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Apply(ApplyError),
    #[error("{0}")]
    Setup(SetupError),
    /// The first load was refused after discovery (a CDI spec that cannot
    /// be written).
    #[error("{0}")]
    Refused(String),
    #[error(
        "cannot watch the device-plugin directory {dir}: {source}; check that it exists and is mounted into the pod"
    )]
    Watch {
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("cannot serve on {socket}: {source}")]
    Serve {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A served resource: its live state, and its live servers: the one at its
/// socket path, plus retired ones still carrying the kubelet's connection
/// (see the life cycle's "A deleted socket").
struct Served {
    handle: ResourceHandle,
    servers: Vec<Bound>,
}

struct Bound {
    id: ServerId,
    server: RunningServer,
    /// Stream counts already fed to the machine.
    seen: (u64, u64),
}

/// The answer to one Register call.
struct Registered {
    attempt: AttemptId,
    result: Result<(), lifecycle::RegisterFailed>,
}

struct Daemon {
    paths: Paths,
    source: SetupSource,
    /// Where and when to serve and register ([`gpu_slicer_core::lifecycle`]).
    machine: Machine,
    /// What to serve, in which health, and when to load
    /// ([`gpu_slicer_core::node`]).
    node: NodeMachine,
    /// What the node machine was last told of registration.
    registered_told: Option<bool>,
    /// The parts of the load being applied that the device lists need
    /// besides the node machine's resources and health; taken by
    /// [`NodeAction::Advertise`].
    pending: Option<PendingLists>,
    served: BTreeMap<ResourceName, Served>,
    /// Register calls run here, off the event loop: a kubelet may take up to
    /// its 10 s dial timeout to answer, and nothing else should wait on that.
    registrations: JoinSet<Registered>,
    in_flight: HashMap<AttemptId, AbortHandle>,
    /// Woken by any server whose stream counts changed.
    streams: Arc<Notify>,
    metrics: Metrics,
    mps: crate::host::mps::Supervisor,
}

/// What every device list of a load shares.
struct PendingLists {
    flags: gpu_slicer_core::config::Flags,
    files: Arc<NodeDeviceFiles>,
    links: Arc<LinkScores>,
    owners: Arc<HashMap<String, ResourceName>>,
}

/// Runs until `shutdown` is cancelled (SIGTERM/SIGINT in `main`). `reload`
/// fires a configuration reload (SIGHUP in `main`).
pub async fn run(
    paths: Paths,
    source: SetupSource,
    mut reload: mpsc::Receiver<()>,
    mut health: mpsc::Receiver<HealthReport>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    // Read before the first load: a MIG label change during it is acted on.
    let mig_at_start = paths
        .mig_manager
        .as_ref()
        .map(|labels| labels.levels.borrow().clone());
    // The first load is read before anything else starts: a bad config
    // ends the daemon before it touches the device-plugin directory.
    let first = match load(&source).await {
        Ok(loaded) => Ok(loaded),
        Err(e @ SetupError::Fatal(_)) => return Err(DaemonError::Setup(e)),
        Err(SetupError::NotReady(e)) => Err(e),
    };
    if !paths.device_plugin_dir.is_dir() {
        // A kubelet always has this directory: its absence means a wrong
        // --device-plugin-path or a missing hostPath mount, and no kubelet
        // will ever register the resources. Said once, loudly; the daemon
        // still creates it and waits, in case the kubelet comes later.
        tracing::warn!(
            "the device-plugin directory {} does not exist, so no kubelet socket is there; created it and \
             waiting for {}. Check --device-plugin-path (the kubelet's <root-dir>/device-plugins) and that \
             it is mounted into the pod",
            paths.device_plugin_dir.display(),
            paths.kubelet_socket.as_deref().map_or_else(
                || "nothing (registration is off)".into(),
                |k| k.display().to_string()
            )
        );
    }
    std::fs::create_dir_all(&paths.device_plugin_dir).map_err(|source| DaemonError::Serve {
        socket: paths.device_plugin_dir.clone(),
        source,
    })?;
    // Watch first, so that no change between start-up and registration is
    // missed. The events only wake the daemon: what changed is read from
    // the directory itself (see `observe`).
    let mut dir_watch =
        DirectoryWatch::start(&paths.device_plugin_dir).map_err(|source| DaemonError::Watch {
            dir: paths.device_plugin_dir.clone(),
            source,
        })?;
    let (mps_exits_tx, mut mps_exits) = mpsc::channel(16);
    let mps = crate::host::mps::Supervisor::new(
        crate::host::mps::MpsOptions {
            control_bin: paths.mps_control_bin.clone(),
            driver_root: PathBuf::from("/"),
            container_root: paths.mps_container_root.clone(),
        },
        metrics.clone(),
        mps_exits_tx,
    );
    let (node, at_start) = NodeMachine::new(
        NodeSettings {
            health_watched: paths.health_watched,
        },
        mig_at_start,
    );
    let mut daemon = Daemon {
        mps,
        node,
        registered_told: None,
        pending: None,
        machine: Machine::new(lifecycle::Timings {
            stream_grace: paths.timings.stream_grace,
        }),
        paths,
        source,
        served: BTreeMap::new(),
        registrations: JoinSet::new(),
        in_flight: HashMap::new(),
        streams: Arc::new(Notify::new()),
        metrics,
    };
    for action in at_start {
        daemon.execute_node(action).await?;
    }
    // Refused at start (exit 1): a CDI strategy whose spec cannot be
    // written would hand out names no runtime resolves.
    let outcome = match first {
        Ok((setup, plan)) => daemon.prepare(&setup, plan).await,
        Err(e) => LoadOutcome::NotReady(e),
    };
    daemon
        .feed_node(NodeEvent::Loaded {
            cause: LoadCause::Start,
            outcome,
        })
        .await?;
    daemon.feed(Event::Tick).await;
    daemon.sync_registration().await?;

    // The loop's one receiver of the MIG labels: a change is marked seen
    // on it, so it wakes the loop once.
    let mut mig_levels = daemon.paths.mig_manager.as_ref().map(|l| l.levels.clone());
    loop {
        let deadline = daemon.machine.next_deadline().map(Instant::from_std);
        let node_deadline = daemon.node.next_deadline().map(Instant::from_std);
        let streams = daemon.streams.clone();
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(event) = dir_watch.events.recv() => {
                dir_watch.saw(&event);
                daemon.feed(Event::Tick).await;
            }
            Some(event) = recv_if(&mut dir_watch.parent_events) => {
                // Only the device-plugin directory itself matters up there.
                if event.path() == Some(daemon.paths.device_plugin_dir.as_path()) {
                    dir_watch.saw(&event);
                    daemon.feed(Event::Tick).await;
                }
            }
            () = streams.notified() => daemon.on_streams().await,
            Some(joined) = daemon.registrations.join_next(), if !daemon.registrations.is_empty() => {
                // A cancelled call ends as a JoinError: nothing to feed.
                if let Ok(done) = joined {
                    daemon.in_flight.remove(&done.attempt);
                    daemon.feed(Event::Registered { attempt: done.attempt, result: done.result }).await;
                }
            }
            _ = sleep_until_if(deadline) => {
                dir_watch.rearm_if_replaced();
                daemon.feed(Event::Tick).await;
            }
            _ = sleep_until_if(node_deadline) => daemon.feed_node(NodeEvent::Tick).await?,
            Some(report) = health.recv() => daemon.feed_node(health_event(report)).await?,
            Some(exit) = mps_exits.recv() => {
                if let Some(resource) = daemon.mps.on_exit(exit) {
                    daemon.feed_node(NodeEvent::MpsExited { resource }).await?;
                }
            }
            () = mig_changed(&mut mig_levels) => {
                let levels = mig_levels.as_ref().map(|l| l.borrow().clone());
                if let Some(levels) = levels {
                    daemon.feed_node(NodeEvent::MigLabels(levels)).await?;
                }
            }
            Some(()) = reload.recv() => {
                tracing::info!("Reloading configuration.");
                daemon.feed_node(NodeEvent::ReloadAsked).await?;
            }
        }
        daemon.sync_registration().await?;
    }
    daemon.feed(Event::Shutdown).await;
    daemon.mps.stop_all().await;
    Ok(())
}

async fn recv_if<T>(rx: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Loads a setup and plans it, refusing one that cannot be applied on this
/// node as written (colliding sharing entries, a device list no kubelet
/// accepts): at start that ends the daemon, on a reload the running setup
/// stays. The plan is handed on, so it is computed once per load.
async fn load(source: &SetupSource) -> Result<(Setup, Plan), SetupError> {
    let source = source.clone();
    let setup = tokio::task::spawn_blocking(move || source())
        .await
        .map_err(|e| SetupError::Fatal(format!("device discovery panicked: {e}")))??;
    let plan = plan(&setup.inventory, &setup.config);
    if let Some(reason) = plan.refusal() {
        return Err(SetupError::Fatal(format!(
            "the configuration cannot be applied on this node: {reason}"
        )));
    }
    Ok((setup, plan))
}

/// Logs the plan the way an operator reads it.
pub fn log_plan(plan: &Plan) {
    for d in &plan.diagnostics {
        match d.severity {
            Severity::Warning => tracing::warn!("{}", d.message),
            Severity::Error | Severity::Refused => tracing::error!("{}", d.message),
        }
    }
    if plan.resources.is_empty() {
        tracing::warn!("No devices found. Waiting indefinitely.");
    }
    for r in &plan.resources {
        tracing::info!(resource = %r.name, devices = r.devices.len(), gpus = r.gpu_count(), "planned");
    }
}

impl Daemon {
    /// Feeds the machine what the directory holds now, then `event`, and
    /// executes every action (and the events they cause) in order.
    async fn feed(&mut self, event: Event) {
        let mut queue = std::collections::VecDeque::from([self.observe(), event]);
        while let Some(event) = queue.pop_front() {
            let actions = self.machine.handle(event, std::time::Instant::now());
            for action in actions {
                if let Some(caused) = self.execute(action).await {
                    queue.push_back(caused);
                }
            }
        }
    }

    /// What the device-plugin directory holds now: `kubelet.sock`'s identity
    /// and which of our servers still own their socket file.
    fn observe(&self) -> Event {
        Event::Observed {
            kubelet: self
                .paths
                .kubelet_socket
                .as_deref()
                .and_then(kubelet_identity),
            sockets: self
                .served
                .values()
                .flat_map(|s| &s.servers)
                .filter(|b| b.server.socket_in_place())
                .map(|b| b.id)
                .collect(),
        }
    }

    async fn execute(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::Serve { resource, server } => {
                let socket = self
                    .paths
                    .device_plugin_dir
                    .join(resource.socket_file_name());
                let Some(served) = self.served.get_mut(&resource) else {
                    // Never expected: said, and retried like a failed bind.
                    return Some(Event::ServeFailed {
                        server,
                        error: format!("no device list is held for '{resource}'"),
                    });
                };
                match serve(
                    &socket,
                    resource.clone(),
                    served.handle.clone(),
                    self.metrics.clone(),
                    self.streams.clone(),
                    self.paths.mig_state.as_ref().map(|f| f.on_allocated()),
                ) {
                    Ok(running) => {
                        tracing::info!("Starting to serve '{resource}' on {}", socket.display());
                        served.servers.push(Bound {
                            id: server,
                            server: running,
                            seen: (0, 0),
                        });
                        None
                    }
                    Err(e) => Some(Event::ServeFailed {
                        server,
                        error: format!("cannot serve on {}: {e}", socket.display()),
                    }),
                }
            }
            Action::Stop { resource, server } => {
                // The resource's state goes only with the resource itself: a
                // resource whose socket cannot be bound right now has no
                // live server but is still served (its retry rebinds).
                let known = self.machine.knows(&resource);
                let served = self.served.get_mut(&resource)?;
                if let Some(i) = served.servers.iter().position(|b| b.id == server) {
                    let bound = served.servers.remove(i);
                    tracing::info!(
                        "Stopping to serve '{resource}' on {}",
                        bound.server.socket.display()
                    );
                    bound.server.stop().await;
                }
                if !known && served.servers.is_empty() {
                    self.served.remove(&resource);
                }
                None
            }
            Action::Drain { resource } => {
                tracing::info!("Stopping to serve '{resource}': no longer in the plan");
                let label = self.metrics.resource(resource.as_str());
                self.metrics.devices.get_or_create(&label).set(0);
                self.metrics.healthy_devices.get_or_create(&label).set(0);
                if let Some(served) = self.served.get(&resource) {
                    let state = served.handle.state();
                    served.handle.update(ResourceState {
                        resource: Arc::new(gpu_slicer_core::plan::Resource::new(
                            resource.clone(),
                            Vec::new(),
                            None,
                        )),
                        health: state.health.clone(),
                        flags: state.flags.clone(),
                        files: state.files.clone(),
                        links: state.links.clone(),
                        owners: state.owners.clone(),
                    });
                }
                None
            }
            Action::Register {
                resource,
                attempt,
                kubelet: meant,
            } => {
                let kubelet = self.paths.kubelet_socket.clone()?;
                let handle = self.registrations.spawn(async move {
                    let result = register(&kubelet, meant, &resource.socket_file_name(), &resource)
                        .await
                        .map_err(|e| lifecycle::RegisterFailed(e.to_string()));
                    Registered { attempt, result }
                });
                self.in_flight.insert(attempt, handle);
                None
            }
            Action::CancelRegister { attempt } => {
                if let Some(call) = self.in_flight.remove(&attempt) {
                    call.abort();
                }
                None
            }
            Action::Notify(notice) => {
                self.report(notice);
                None
            }
        }
    }

    /// Logs a notice and counts it.
    fn report(&self, notice: Notice) {
        match notice {
            Notice::KubeletRestarted => {
                tracing::info!(
                    "a new kubelet.sock appeared: the kubelet restarted; registering again"
                );
                self.metrics.kubelet_restarts.inc();
            }
            Notice::Registered { resource } => {
                tracing::info!("Registered device plugin for '{resource}' with Kubelet");
                self.metrics.count_registration(resource.as_str(), true);
            }
            Notice::RegisterFailed {
                resource,
                error,
                failures,
                retry_in,
            } => {
                tracing::warn!(
                    "Could not register device plugin for '{resource}' (attempt {failures}): {error}; retrying in {retry_in:?}"
                );
                self.metrics.count_registration(resource.as_str(), false);
            }
            Notice::ServeFailed {
                resource,
                error,
                failures,
                retry_in,
            } => {
                tracing::error!(
                    "cannot serve '{resource}' (attempt {failures}): {error}; retrying in {retry_in:?}"
                );
                self.metrics
                    .serve_failures
                    .get_or_create(&self.metrics.resource(resource.as_str()))
                    .inc();
            }
            Notice::SocketReplaced { resource } => {
                tracing::info!(
                    "the socket of '{resource}' was removed while the kubelet runs; serving it again \
                     (the kubelet's connection is kept; nothing is registered)"
                );
            }
            Notice::StreamLost {
                resource,
                in_a_row,
                register_in,
            } => {
                self.metrics
                    .stream_losses
                    .get_or_create(&self.metrics.resource(resource.as_str()))
                    .inc();
                if in_a_row > 1 {
                    tracing::warn!(
                        "the kubelet closed the ListAndWatch stream of '{resource}' {in_a_row} times in a row, \
                         each soon after it opened (does it refuse the device list?); registering again in \
                         {register_in:?} unless a new stream opens"
                    );
                } else {
                    tracing::info!(
                        "the kubelet closed the ListAndWatch stream of '{resource}'; registering again in \
                         {register_in:?} unless a new stream opens or the kubelet restarts"
                    );
                }
            }
            Notice::StreamLossConfirmed { resource } => {
                tracing::info!("no new ListAndWatch stream for '{resource}': registering again");
            }
        }
    }

    /// Feeds the machine every stream opened or closed since the last wake.
    async fn on_streams(&mut self) {
        let mut events = Vec::new();
        for bound in self.served.values_mut().flat_map(|s| &mut s.servers) {
            let (opened, closed) = bound.server.stream_counts();
            let server = bound.id;
            for _ in bound.seen.0..opened {
                events.push(Event::StreamOpened { server });
            }
            for _ in bound.seen.1..closed {
                events.push(Event::StreamClosed { server });
            }
            bound.seen = (opened, closed);
        }
        for event in events {
            self.feed(event).await;
        }
    }

    /// Feeds the node machine `event` and executes every action (and the
    /// events they cause) in order; tells it when registration changed.
    async fn feed_node(&mut self, event: NodeEvent) -> Result<(), DaemonError> {
        let mut queue = std::collections::VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            for action in self.node.handle(event, std::time::Instant::now()) {
                if let Some(caused) = self.execute_node(action).await? {
                    queue.push_back(caused);
                }
            }
            if let Some(registration) = self.registration_changed() {
                queue.push_back(registration);
            }
        }
        Ok(())
    }

    /// Tells the node machine whether every resource is registered, when
    /// that changed since it was last told.
    async fn sync_registration(&mut self) -> Result<(), DaemonError> {
        match self.registration_changed() {
            Some(event) => self.feed_node(event).await,
            None => Ok(()),
        }
    }

    fn registration_changed(&mut self) -> Option<NodeEvent> {
        let all_registered = self.paths.kubelet_socket.is_none() || self.machine.all_registered();
        if self.registered_told == Some(all_registered) {
            return None;
        }
        self.registered_told = Some(all_registered);
        Some(NodeEvent::Registration { all_registered })
    }

    async fn execute_node(&mut self, action: NodeAction) -> Result<Option<NodeEvent>, DaemonError> {
        match action {
            NodeAction::Load(cause) => {
                let outcome = match load(&self.source).await {
                    Ok((setup, plan)) => self.prepare(&setup, plan).await,
                    Err(SetupError::NotReady(e)) => LoadOutcome::NotReady(e),
                    Err(SetupError::Fatal(e)) => LoadOutcome::Refused(e),
                };
                return Ok(Some(NodeEvent::Loaded { cause, outcome }));
            }
            NodeAction::Advertise => self.advertise().await,
            NodeAction::PushHealth => self.push_health(),
            NodeAction::SetReady(ready) => self.metrics.set_ready(ready),
            NodeAction::TellWithdrawn(withdrawn) => {
                if let Some(labels) = &self.paths.mig_manager {
                    labels.tell_withdrawn(withdrawn);
                }
            }
            NodeAction::RestartMps(resource) => {
                let not_ready = self.mps.restart(&resource).await;
                return Ok(Some(NodeEvent::MpsRestarted {
                    resource,
                    not_ready,
                }));
            }
            NodeAction::Exit(reason) => return Err(DaemonError::Refused(reason)),
            NodeAction::Notify(notice) => self.report_node(notice),
        }
        Ok(None)
    }

    /// Applies what a load needs outside the node machine, before the
    /// machine takes it: the CDI spec first (so that a refusal changes
    /// nothing), the node labels, the MPS control daemons (a replica is
    /// advertised Healthy only with a ready daemon behind it). The device
    /// lists follow at [`NodeAction::Advertise`].
    async fn prepare(&mut self, setup: &Setup, plan: Plan) -> LoadOutcome {
        if let Err(e) = self.write_cdi_spec(setup) {
            return LoadOutcome::Refused(e.to_string());
        }
        log_plan(&plan);
        if let Some(feed) = &self.paths.mig_state {
            feed.discovered(&setup.inventory);
        }
        if let Some(path) = &self.paths.feature_file {
            let labels = gpu_slicer_core::labels::labels(&setup.inventory, &setup.config, &plan);
            let text = gpu_slicer_core::labels::feature_file_text(&labels);
            if let Err(e) = write_atomically(path, text.as_bytes(), READABLE_FILE_MODE) {
                tracing::warn!("cannot write node labels: {e}");
            }
        }
        let mut owners = HashMap::new();
        for resource in &plan.resources {
            for device in &resource.devices {
                owners.insert(device.id.clone(), resource.name.clone());
            }
        }
        self.pending = Some(PendingLists {
            flags: setup.config.flags.clone(),
            files: Arc::new(setup.files.clone()),
            links: Arc::new(LinkScores::from_inventory(&setup.inventory)),
            owners: Arc::new(owners),
        });
        self.mps.set_driver_root(PathBuf::from(
            &setup.config.flags.plugin.container_driver_root,
        ));
        let daemons = gpu_slicer_core::mps::control_daemons(&plan);
        let mut mps: BTreeMap<ResourceName, MpsReadiness> = daemons
            .iter()
            .map(|d| {
                (
                    d.resource().clone(),
                    MpsReadiness {
                        gpus: d.gpus.iter().map(|g| g.uuid.clone()).collect(),
                        not_ready: None,
                    },
                )
            })
            .collect();
        for (name, not_ready) in self.mps.apply(daemons).await {
            if let Some(daemon) = mps.get_mut(&name) {
                daemon.not_ready = not_ready;
            }
        }
        LoadOutcome::Applied(Box::new(Applied {
            resources: plan.resources.into_iter().map(Arc::new).collect(),
            gpus: setup.inventory.gpus.iter().map(AdvertisedGpu::of).collect(),
            mig_capable: setup
                .inventory
                .gpus
                .iter()
                .filter(|g| g.mig_capable)
                .map(|g| g.uuid.clone())
                .collect(),
            unreachable: setup
                .unreachable
                .iter()
                .map(|g| (g.index, g.reason.clone()))
                .collect(),
            policy: HealthPolicy::new(
                &setup.config.health,
                self.paths.health_env.disable.as_deref(),
                self.paths.health_env.enable.as_deref(),
            ),
            mps,
        }))
    }

    /// Brings the running plugins in line with the load just applied:
    /// unchanged resources keep serving, changed ones re-send their list,
    /// new ones start, removed ones send an empty list and stop.
    async fn advertise(&mut self) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        let health = Arc::new(self.node.health().clone());
        let mut names = BTreeSet::new();
        for resource in self.node.resources().to_vec() {
            let name = resource.name.clone();
            let label = self.metrics.resource(name.as_str());
            let count = i64::try_from(resource.devices.len()).unwrap_or(i64::MAX);
            self.metrics.devices.get_or_create(&label).set(count);
            let state = ResourceState {
                resource,
                health: health.clone(),
                flags: pending.flags.clone(),
                files: pending.files.clone(),
                links: pending.links.clone(),
                owners: pending.owners.clone(),
            };
            match self.served.get(&name) {
                Some(served) => served.handle.update(state),
                None => {
                    self.served.insert(
                        name.clone(),
                        Served {
                            handle: ResourceHandle::new(state),
                            servers: Vec::new(),
                        },
                    );
                }
            }
            names.insert(name);
        }
        self.feed(Event::Apply(names)).await;
        self.update_health_gauges();
    }
}
