//! The daemon's life cycle: serve every planned resource, register it with
//! the kubelet, re-register when the kubelet restarts, reload on SIGHUP, and
//! remove every socket on the way out.
//!
//! One task owns all state and reacts to events (directory changes, signals,
//! a registration retry timer); there is no polling and no shared mutable
//! global state.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::files::{READABLE_FILE_MODE, write_atomically};
use crate::kubelet::{register, socket_identity};
use crate::metrics::{Metrics, XidLabel};
use crate::plugin::{
    PluginEvent, PluginService, ResourceHandle, ResourceState, RunningServer, serve,
};
use crate::watch::{DirEvent, watch_dir};
use gpu_slicer_core::allocate::NodeDeviceFiles;
use gpu_slicer_core::config::{Config, ResourceName};
use gpu_slicer_core::gpu::Inventory;
use gpu_slicer_core::health::{HealthPolicy, HealthState, XidAction, XidEvent, affected};
use gpu_slicer_core::placement::LinkScores;
use gpu_slicer_core::plan::{Plan, Severity, plan};

/// What the daemon serves: discovered devices plus the effective config.
#[derive(Debug, Clone)]
pub struct Setup {
    pub inventory: Inventory,
    pub config: Config,
    pub files: NodeDeviceFiles,
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
    /// Directory to write a CDI spec into when a CDI strategy is on; `None` = off.
    pub cdi_spec_dir: Option<PathBuf>,
    /// NVIDIA's `DP_DISABLE_HEALTHCHECKS` / `DP_ENABLE_HEALTHCHECKS`.
    pub health_env: HealthEnv,
    /// Life-cycle waits (tests shorten them).
    pub timings: Timings,
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
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            stream_grace: Duration::from_secs(2),
            config_settle: Duration::from_millis(150),
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

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Setup(SetupError),
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

struct Plugin {
    handle: ResourceHandle,
    server: Option<RunningServer>,
    needs_registration: bool,
    /// A Register call for this plugin is in flight.
    in_flight: bool,
    /// Bumped whenever the plugin must register again, so that the answer
    /// to an older, still running Register call is recognised as stale.
    generation: u64,
    /// Open ListAndWatch streams from the kubelet.
    streams: usize,
    /// Set when the last stream closed: if no new one opens by then, the
    /// kubelet lost us (crash, or its re-registration race) and we register again.
    stream_lost_at: Option<Instant>,
}

/// The answer to one Register call.
struct Registered {
    name: ResourceName,
    generation: u64,
    identity: (u64, u64),
    result: Result<(), crate::kubelet::RegisterError>,
}

impl Plugin {
    /// The plugin must register (again); any Register call in flight is stale.
    fn unregister(&mut self) {
        self.needs_registration = true;
        self.in_flight = false;
        self.generation += 1;
    }
}

struct Daemon {
    paths: Paths,
    plugins: BTreeMap<ResourceName, Plugin>,
    /// Identity of the `kubelet.sock` every plugin last registered with.
    registered_with: Option<(u64, u64)>,
    /// Identity of the `kubelet.sock` that in-flight Register calls target.
    registering_with: Option<(u64, u64)>,
    /// Register calls run here, off the event loop: a kubelet may take up to
    /// its 10 s dial timeout to answer, and nothing else should wait on that.
    registrations: JoinSet<Registered>,
    /// Registration retries.
    registration_backoff: Backoff,
    metrics: Metrics,
    events: mpsc::UnboundedSender<PluginEvent>,
    /// When to retry device discovery (`None`: it succeeded).
    discovery: Option<Instant>,
    discovery_backoff: Backoff,
    health: HealthState,
    policy: HealthPolicy,
}

/// Device discovery retries while the driver is not ready: 1 s doubling to 5 min.
const DISCOVERY_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
/// Register retries: 100 ms doubling to 10 s.
const REGISTRATION_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(100), Duration::from_secs(10));

/// Runs until `shutdown` is cancelled (SIGTERM/SIGINT in `main`). `reload`
/// fires a configuration reload (SIGHUP in `main`).
pub async fn run(
    paths: Paths,
    source: SetupSource,
    mut reload: mpsc::Receiver<()>,
    mut xids: mpsc::UnboundedReceiver<XidEvent>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let first = match load(&source).await {
        Ok(loaded) => Some(loaded),
        Err(e @ SetupError::Fatal(_)) => return Err(DaemonError::Setup(e)),
        Err(SetupError::NotReady(e)) => {
            tracing::warn!("{e}");
            tracing::warn!("No devices found. Waiting indefinitely.");
            None
        }
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
    // Watch first, so that no event between start-up and registration is lost.
    let (_watch, mut events) =
        watch_dir(&paths.device_plugin_dir).map_err(|source| DaemonError::Watch {
            dir: paths.device_plugin_dir.clone(),
            source,
        })?;
    let (plugin_tx, mut plugin_events) = mpsc::unbounded_channel();
    let mut daemon = Daemon {
        paths,
        plugins: BTreeMap::new(),
        registered_with: None,
        registering_with: None,
        registrations: JoinSet::new(),
        registration_backoff: REGISTRATION_BACKOFF,
        metrics,
        events: plugin_tx,
        discovery: None,
        discovery_backoff: DISCOVERY_BACKOFF,
        health: HealthState::default(),
        policy: HealthPolicy::new(&Default::default(), None, None),
    };
    match first {
        Some((setup, plan)) => daemon.apply(&setup, plan)?,
        None => daemon.schedule_discovery(),
    }
    daemon.register_pending().await;

    loop {
        let retry = daemon.retry_pending();
        let lost = daemon.next_stream_deadline();
        let rediscover = daemon.discovery;
        let recovery = daemon.health.next_recovery();
        tokio::select! {
            Some(event) = xids.recv() => daemon.on_xid(event),
            _ = sleep_until_if(recovery.map(Instant::from_std)) => daemon.on_recovery_due(),
            _ = shutdown.cancelled() => break,
            Some(event) = events.recv() => daemon.on_dir_event(event).await?,
            Some(event) = plugin_events.recv() => daemon.on_plugin_event(event),
            Some(()) = reload.recv() => {
                tracing::info!("Reloading configuration.");
                match load(&source).await {
                    Ok((setup, plan)) => {
                        daemon.discovery = None;
                        daemon.discovery_backoff.reset();
                        daemon.apply(&setup, plan)?;
                        daemon.metrics.count_reload(true);
                    }
                    Err(e) => {
                        daemon.metrics.count_reload(false);
                        tracing::error!("configuration reload refused, keeping the running configuration: {e}");
                    }
                }
                daemon.register_pending().await;
            }
            _ = sleep_until_if(rediscover) => {
                match load(&source).await {
                    Ok((setup, plan)) => {
                        tracing::info!("device discovery succeeded");
                        daemon.discovery = None;
                        daemon.discovery_backoff.reset();
                        daemon.apply(&setup, plan)?;
                    }
                    Err(e) => {
                        tracing::warn!("device discovery failed again: {e}");
                        daemon.schedule_discovery();
                    }
                }
                daemon.register_pending().await;
            }
            _ = sleep_if(retry) => daemon.register_pending().await,
            Some(joined) = daemon.registrations.join_next(), if !daemon.registrations.is_empty() => {
                if let Ok(done) = joined {
                    daemon.on_registered(done);
                }
            }
            _ = sleep_until_if(lost) => daemon.on_streams_lost().await,
        }
    }
    daemon.stop_all().await;
    Ok(())
}

async fn sleep_if(delay: Option<Duration>) {
    match delay {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_if(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
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
    fn socket_path(&self, name: &ResourceName) -> PathBuf {
        self.paths.device_plugin_dir.join(name.socket_file_name())
    }

    /// Brings the running plugins in line with a new setup: unchanged
    /// resources keep serving, changed ones re-send their list, new ones
    /// start, removed ones send an empty list and stop.
    fn apply(&mut self, setup: &Setup, plan: Plan) -> Result<(), DaemonError> {
        log_plan(&plan);
        if let Some(path) = &self.paths.feature_file {
            let labels = gpu_slicer_core::labels::labels(&setup.inventory, &setup.config, &plan);
            let text = gpu_slicer_core::labels::feature_file_text(&labels);
            if let Err(e) = write_atomically(path, text.as_bytes(), READABLE_FILE_MODE) {
                tracing::warn!("cannot write node labels: {e}");
            }
        }
        let files = Arc::new(setup.files.clone());
        let links = Arc::new(LinkScores::from_inventory(&setup.inventory));
        let mut owners = HashMap::new();
        for resource in &plan.resources {
            for device in &resource.devices {
                owners.insert(device.id.clone(), resource.name.clone());
            }
        }
        let owners = Arc::new(owners);
        self.policy = HealthPolicy::new(
            &setup.config.health,
            self.paths.health_env.disable.as_deref(),
            self.paths.health_env.enable.as_deref(),
        );
        for message in &self.policy.malformed {
            tracing::warn!("{message}");
        }
        let health = Arc::new(self.health.clone());
        if let Some(dir) = &self.paths.cdi_spec_dir
            && setup
                .config
                .flags
                .plugin
                .device_list_strategy
                .iter()
                .any(|s| s.is_cdi())
        {
            let spec = gpu_slicer_core::cdi::spec(
                &setup.inventory,
                &setup.files,
                setup.config.flags.dev_root(),
            );
            let path = dir.join(gpu_slicer_core::cdi::SPEC_FILE);
            match serde_json::to_vec_pretty(&spec) {
                Ok(text) => match write_atomically(&path, &text, READABLE_FILE_MODE) {
                    Ok(()) => tracing::info!("wrote CDI spec {}", path.display()),
                    Err(e) => tracing::error!("cannot write the CDI spec: {e}"),
                },
                Err(e) => tracing::error!("cannot encode the CDI spec: {e}"),
            }
        }
        let mut wanted = BTreeMap::new();
        for resource in plan.resources {
            wanted.insert(resource.name.clone(), resource);
        }
        let removed: Vec<ResourceName> = self
            .plugins
            .keys()
            .filter(|name| !wanted.contains_key(*name))
            .cloned()
            .collect();
        for name in removed {
            if let Some(mut plugin) = self.plugins.remove(&name) {
                tracing::info!("Stopping to serve '{name}': no longer in the plan");
                let label = self.metrics.resource(name.as_str());
                self.metrics.devices.get_or_create(&label).set(0);
                self.metrics.healthy_devices.get_or_create(&label).set(0);
                let state = plugin.handle.state();
                plugin.handle.update(ResourceState {
                    resource: Arc::new(gpu_slicer_core::plan::Resource::new(
                        name.clone(),
                        Vec::new(),
                        None,
                    )),
                    health: state.health.clone(),
                    flags: state.flags.clone(),
                    files: state.files.clone(),
                    links: state.links.clone(),
                    owners: owners.clone(),
                });
                if let Some(server) = plugin.server.take() {
                    // Give the kubelet a moment to read the empty list.
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        server.stop().await;
                    });
                }
            }
        }
        for (name, resource) in wanted {
            let label = self.metrics.resource(name.as_str());
            let count = i64::try_from(resource.devices.len()).unwrap_or(i64::MAX);
            self.metrics.devices.get_or_create(&label).set(count);
            self.metrics
                .healthy_devices
                .get_or_create(&label)
                .set(count);
            let state = ResourceState {
                resource: Arc::new(resource),
                health: health.clone(),
                flags: setup.config.flags.clone(),
                files: files.clone(),
                links: links.clone(),
                owners: owners.clone(),
            };
            if let Some(plugin) = self.plugins.get(&name) {
                plugin.handle.update(state);
                continue;
            }
            let handle = ResourceHandle::new(state);
            let server = self.start_server(&name, &handle)?;
            self.plugins.insert(
                name,
                Plugin {
                    handle,
                    server: Some(server),
                    needs_registration: true,
                    in_flight: false,
                    generation: 0,
                    streams: 0,
                    stream_lost_at: None,
                },
            );
        }
        self.update_health_gauges();
        self.update_readiness();
        Ok(())
    }

    /// An XID event: mark the devices it affects, per the policy.
    fn on_xid(&mut self, event: XidEvent) {
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
        for (name, plugin) in &self.plugins {
            let state = plugin.handle.state();
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
    fn on_recovery_due(&mut self) {
        let recovered = self.health.recover(std::time::Instant::now());
        for device in &recovered {
            tracing::info!("device healthy again after a quiet period: {device}");
        }
        if !recovered.is_empty() {
            self.push_health();
        }
    }

    /// Re-sends every resource's list with the current health.
    fn push_health(&mut self) {
        let health = Arc::new(self.health.clone());
        for plugin in self.plugins.values() {
            let state = plugin.handle.state();
            plugin.handle.update(ResourceState {
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

    fn update_health_gauges(&self) {
        for (name, plugin) in &self.plugins {
            let state = plugin.handle.state();
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
    }

    fn service(&self, name: &ResourceName, handle: &ResourceHandle) -> PluginService {
        PluginService::new(
            name.clone(),
            handle.clone(),
            self.metrics.clone(),
            self.events.clone(),
        )
    }

    fn update_readiness(&self) {
        self.metrics.set_ready(
            self.discovery.is_none() && self.plugins.values().all(|p| !p.needs_registration),
        );
    }

    /// Arms (or backs off) the next discovery attempt.
    fn schedule_discovery(&mut self) {
        let delay = self.discovery_backoff.next_delay();
        tracing::info!("retrying device discovery in {delay:?}");
        self.discovery = Some(Instant::now() + delay);
        self.update_readiness();
    }

    fn on_plugin_event(&mut self, event: PluginEvent) {
        match event {
            PluginEvent::StreamOpened(name) => {
                if let Some(plugin) = self.plugins.get_mut(&name) {
                    plugin.streams += 1;
                    plugin.stream_lost_at = None;
                }
            }
            PluginEvent::StreamClosed(name) => {
                if let Some(plugin) = self.plugins.get_mut(&name) {
                    plugin.streams = plugin.streams.saturating_sub(1);
                    if plugin.streams == 0 && !plugin.needs_registration {
                        plugin.stream_lost_at =
                            Some(Instant::now() + self.paths.timings.stream_grace);
                    }
                }
            }
        }
    }

    fn next_stream_deadline(&self) -> Option<Instant> {
        self.plugins.values().filter_map(|p| p.stream_lost_at).min()
    }

    /// The kubelet dropped a resource's only stream and nothing else told us
    /// why: register that resource again.
    async fn on_streams_lost(&mut self) {
        let now = Instant::now();
        for (name, plugin) in &mut self.plugins {
            if plugin.stream_lost_at.is_some_and(|at| at <= now) {
                plugin.stream_lost_at = None;
                if plugin.streams == 0 {
                    tracing::info!(
                        "the kubelet closed the ListAndWatch stream of '{name}'; registering again"
                    );
                    plugin.needs_registration = true;
                }
            }
        }
        self.registration_backoff.reset();
        self.register_pending().await;
    }

    fn start_server(
        &self,
        name: &ResourceName,
        handle: &ResourceHandle,
    ) -> Result<RunningServer, DaemonError> {
        let socket = self.socket_path(name);
        let server =
            serve(&socket, self.service(name, handle)).map_err(|source| DaemonError::Serve {
                socket: socket.clone(),
                source,
            })?;
        tracing::info!("Starting to serve '{name}' on {}", socket.display());
        Ok(server)
    }

    async fn on_dir_event(&mut self, event: DirEvent) -> Result<(), DaemonError> {
        let Some(kubelet) = self.paths.kubelet_socket.clone() else {
            return Ok(());
        };
        match event {
            DirEvent::Created(path) if path == kubelet => {
                let current = socket_identity(&kubelet);
                if current != self.registered_with && current != self.registering_with {
                    tracing::info!("inotify: {} created, restarting.", kubelet.display());
                    self.metrics.kubelet_restarts.inc();
                    self.mark_all_unregistered();
                }
            }
            DirEvent::Removed(path) if path == kubelet => {
                // The kubelet we registered with is gone; its successor may
                // reuse the inode number, so forget it rather than compare.
                self.registered_with = None;
                self.registering_with = None;
            }
            DirEvent::Removed(path) => {
                let owner = self
                    .plugins
                    .keys()
                    .find(|name| self.socket_path(name) == path)
                    .cloned();
                // Events can be stale: the socket may have been served
                // again already (restarting it then would delete it anew).
                if let Some(name) = owner
                    && !exists(&path)
                {
                    tracing::info!("socket {} removed, serving it again", path.display());
                    self.restart_server(&name).await?;
                }
            }
            DirEvent::Created(_) | DirEvent::Changed(_) => {}
            DirEvent::Error(e) => {
                tracing::warn!("inotify: {e}; re-registering every resource");
                self.mark_all_unregistered();
            }
        }
        self.register_pending().await;
        Ok(())
    }

    fn mark_all_unregistered(&mut self) {
        for plugin in self.plugins.values_mut() {
            plugin.unregister();
            plugin.stream_lost_at = None;
        }
        self.registration_backoff.reset();
        self.update_readiness();
    }

    async fn restart_server(&mut self, name: &ResourceName) -> Result<(), DaemonError> {
        let Some(plugin) = self.plugins.get_mut(name) else {
            return Ok(());
        };
        if let Some(old) = plugin.server.take() {
            old.stop().await;
        }
        let handle = plugin.handle.clone();
        let server = self.start_server(name, &handle)?;
        if let Some(plugin) = self.plugins.get_mut(name) {
            plugin.server = Some(server);
            plugin.unregister();
        }
        self.registration_backoff.reset();
        self.update_readiness();
        Ok(())
    }

    /// Starts a Register call for every plugin that needs one (concurrently,
    /// in the background); [`Self::on_registered`] takes the answers.
    /// Failures are retried on a back-off timer, or at once when
    /// `kubelet.sock` appears.
    async fn register_pending(&mut self) {
        let Some(kubelet) = self.paths.kubelet_socket.clone() else {
            return;
        };
        let pending: Vec<ResourceName> = self
            .plugins
            .iter()
            .filter(|(_, p)| p.needs_registration && !p.in_flight)
            .map(|(name, _)| name.clone())
            .collect();
        if pending.is_empty() {
            return;
        }
        let Some(identity) = socket_identity(&kubelet) else {
            tracing::info!(
                "waiting for the kubelet: {} does not exist yet",
                kubelet.display()
            );
            return;
        };
        self.registering_with = Some(identity);
        for name in pending {
            // A starting kubelet deletes every socket: serve again first, or
            // the kubelet's dial-back would wait for nothing.
            if !exists(&self.socket_path(&name))
                && let Err(e) = self.restart_server(&name).await
            {
                tracing::error!("{e}");
                continue;
            }
            let Some(plugin) = self.plugins.get_mut(&name) else {
                continue;
            };
            plugin.in_flight = true;
            let generation = plugin.generation;
            let kubelet = kubelet.clone();
            self.registrations.spawn(async move {
                let result = register(&kubelet, &name.socket_file_name(), &name).await;
                Registered {
                    name,
                    generation,
                    identity,
                    result,
                }
            });
        }
    }

    fn on_registered(&mut self, done: Registered) {
        let Some(plugin) = self.plugins.get_mut(&done.name) else {
            return;
        };
        if plugin.generation != done.generation {
            return; // superseded: the plugin has been marked for another registration
        }
        plugin.in_flight = false;
        match done.result {
            Ok(()) => {
                plugin.needs_registration = false;
                tracing::info!("Registered device plugin for '{}' with Kubelet", done.name);
                self.metrics.count_registration(done.name.as_str(), true);
                self.registered_with = Some(done.identity);
            }
            Err(e) => {
                self.metrics.count_registration(done.name.as_str(), false);
                tracing::warn!("Could not register device plugin: {e}");
                self.registration_backoff.grow();
            }
        }
        self.update_readiness();
    }

    /// When to retry registration, if anything is pending and the kubelet
    /// socket exists (otherwise its CREATE event wakes us).
    fn retry_pending(&self) -> Option<Duration> {
        let kubelet = self.paths.kubelet_socket.as_deref()?;
        let pending = self
            .plugins
            .values()
            .any(|p| p.needs_registration && !p.in_flight);
        (pending && exists(kubelet)).then_some(self.registration_backoff.current())
    }

    async fn stop_all(&mut self) {
        for (name, mut plugin) in std::mem::take(&mut self.plugins) {
            if let Some(server) = plugin.server.take() {
                tracing::info!("Stopping to serve '{name}' on {}", server.socket.display());
                server.stop().await;
            }
        }
    }
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}
