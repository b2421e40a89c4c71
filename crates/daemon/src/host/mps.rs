//! CUDA MPS control daemons, one per MPS-shared resource, started and
//! watched by gpu-slicer itself (NVIDIA runs a separate DaemonSet for this).
//!
//! Each daemon is `nvidia-cuda-mps-control -f` (foreground, so it is our
//! child and its exit is an event, not something to poll for; its log,
//! which it then writes to standard output rather than `control.log`, goes
//! into ours) with NVIDIA's directory layout ([`gpu_slicer_core::mps`]). A resource's devices are
//! Healthy only while its daemon is *ready*: it answered on its pipe, took
//! every limit, and reports the thread percentage it was given. The shell
//! ([`crate::daemon`]) turns readiness into device health:
//!
//! - start (and reload): a daemon is started and made ready before the
//!   resource is advertised, so no replica is ever offered without one;
//! - it exits: [`MpsExit`] arrives at once and its devices turn Unhealthy;
//!   the node machine decides when it is started again
//!   ([`gpu_slicer_core::node::MPS_RESTART_BACKOFF`]) and the shell then
//!   calls [`Supervisor::restart`]; ready again, they turn Healthy;
//! - the resource goes away, its limits change, or SIGTERM: `quit` on its
//!   pipe, then the child is killed if it has not exited within
//!   [`STOP_GRACE`].
//!
//! The GPUs' compute mode is left as it is: NVIDIA's daemon sets
//! `EXCLUSIVE_PROCESS`, which changes a GPU setting; without it a process
//! that bypasses MPS can still use the GPU beside the MPS server (the
//! README says so).

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::metrics::Metrics;
use gpu_slicer_core::backoff::Backoff;
use gpu_slicer_core::config::ResourceName;
use gpu_slicer_core::mps::{self, ControlDaemon, DaemonKey};

/// The control program's name in the driver's bin directory.
pub const CONTROL_BINARY: &str = "nvidia-cuda-mps-control";
/// Where the driver's binaries are, relative to a driver root: distribution
/// packages, NVIDIA's runfile and container images, the GPU Operator's
/// driver container.
const BIN_DIRS: &[&str] = &[
    "usr/bin",
    "usr/local/nvidia/bin",
    "bin",
    "usr/local/bin",
    "usr/sbin",
];
/// How long a daemon may take to answer on its pipe after it starts.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one control-client call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a daemon may take to exit after `quit` before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// The longest answer read from one control-client call.
const MAX_ANSWER: u64 = 64 * 1024;

/// Where the daemons' files go and which program runs them.
#[derive(Debug, Clone)]
pub struct MpsOptions {
    /// `--mps-control-bin`: the program, found under the driver root if unset.
    pub control_bin: Option<PathBuf>,
    /// The driver root as this process sees it (`--driver-root-ctr-path`).
    pub driver_root: PathBuf,
    /// Where the host's `--mps-root` is mounted in this process's view
    /// (`--mps-container-root`, `/mps` as in NVIDIA's chart).
    pub container_root: PathBuf,
}

/// Why a daemon is not ready; every message names the resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MpsError {
    #[error(
        "cannot find {CONTROL_BINARY}: looked in {tried} and on PATH. It ships with the NVIDIA driver (its bin directory); mount the driver root and pass --driver-root-ctr-path, or name the program with --mps-control-bin"
    )]
    NoBinary { tried: String },
    #[error("the MPS control daemon of '{resource}' {what}")]
    Daemon { resource: String, what: String },
    #[error("the MPS control daemon of '{resource}' {source}")]
    Call {
        resource: String,
        source: ClientError,
    },
}

/// A daemon exited: sent by its watcher task.
#[derive(Debug)]
pub struct MpsExit {
    pub key: DaemonKey,
    /// Which start of it (a late exit of a replaced one is ignored).
    pub generation: u64,
    pub status: String,
}

/// Finds the control program: the explicit path, else the driver's bin
/// directories under the driver root, else `PATH`.
pub fn find_control_binary(options: &MpsOptions) -> Result<PathBuf, MpsError> {
    find_control_binary_with(options, |p| p.is_file(), std::env::var_os("PATH"))
}

fn find_control_binary_with(
    options: &MpsOptions,
    exists: impl Fn(&Path) -> bool,
    path: Option<std::ffi::OsString>,
) -> Result<PathBuf, MpsError> {
    if let Some(explicit) = &options.control_bin {
        return if exists(explicit) {
            Ok(explicit.clone())
        } else {
            Err(MpsError::NoBinary {
                tried: format!("{} (--mps-control-bin)", explicit.display()),
            })
        };
    }
    let mut tried = Vec::new();
    for dir in BIN_DIRS {
        let candidate = options.driver_root.join(dir).join(CONTROL_BINARY);
        if exists(&candidate) {
            return Ok(candidate);
        }
        tried.push(candidate.display().to_string());
    }
    if let Some(path) = path {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(CONTROL_BINARY);
            if exists(&candidate) {
                return Ok(candidate);
            }
        }
    }
    Err(MpsError::NoBinary {
        tried: format!("[{}]", tried.join(", ")),
    })
}

/// One managed daemon.
struct Managed {
    spec: ControlDaemon,
    generation: u64,
    /// The running child, when started.
    child: Option<tokio::sync::oneshot::Sender<()>>,
    pid: Option<u32>,
    ready: bool,
    restarts: u64,
}

/// Every MPS control daemon of this node.
pub struct Supervisor {
    options: MpsOptions,
    metrics: Metrics,
    /// A resource has one daemon per request size (memory by count).
    daemons: BTreeMap<DaemonKey, Managed>,
    exits: mpsc::Sender<MpsExit>,
    next_generation: u64,
}

impl Supervisor {
    pub fn new(options: MpsOptions, metrics: Metrics, exits: mpsc::Sender<MpsExit>) -> Self {
        Supervisor {
            options,
            metrics,
            daemons: BTreeMap::new(),
            exits,
            next_generation: 0,
        }
    }

    /// Makes the running daemons those of `wanted`: stops the ones no longer
    /// wanted or whose limits changed, starts the new ones and waits until
    /// they are ready. Returns, per wanted resource, why it is not ready
    /// (a resource is ready when every one of its daemons is).
    pub async fn apply(
        &mut self,
        wanted: Vec<ControlDaemon>,
    ) -> BTreeMap<ResourceName, Option<String>> {
        let keep: BTreeMap<&DaemonKey, &ControlDaemon> =
            wanted.iter().map(|d| (&d.key, d)).collect();
        let stale: Vec<DaemonKey> = self
            .daemons
            .iter()
            .filter(|(name, m)| keep.get(name).is_none_or(|d| **d != m.spec))
            .map(|(name, _)| name.clone())
            .collect();
        let mut stopped: Vec<ResourceName> = Vec::new();
        for name in stale {
            if let Some(managed) = self.daemons.remove(&name) {
                self.stop(&name, managed).await;
            }
            stopped.push(name.resource);
        }
        let mut resources = Vec::new();
        for spec in wanted {
            let name = spec.key.clone();
            if !resources.contains(&name.resource) {
                resources.push(name.resource.clone());
            }
            if !self.daemons.contains_key(&name) {
                self.daemons.insert(
                    name.clone(),
                    Managed {
                        spec,
                        generation: 0,
                        child: None,
                        pid: None,
                        ready: false,
                        restarts: 0,
                    },
                );
                self.start(&name).await;
            }
        }
        for resource in &stopped {
            self.set_ready_metric(resource);
        }
        let mut out = BTreeMap::new();
        for resource in resources {
            self.set_ready_metric(&resource);
            let why = self.not_ready(&resource);
            out.insert(resource, why);
        }
        out
    }

    /// Why a resource is not ready: its first daemon that is not.
    fn not_ready(&self, resource: &ResourceName) -> Option<String> {
        self.of(resource)
            .find(|(_, m)| !m.ready)
            .map(|(key, managed)| {
                let which = if key.shares > 1 {
                    format!(" for {} shares", key.shares)
                } else {
                    String::new()
                };
                format!(
                    "its MPS control daemon{which} is not ready (restart {})",
                    managed.restarts
                )
            })
    }

    fn of<'a>(
        &'a self,
        resource: &'a ResourceName,
    ) -> impl Iterator<Item = (&'a DaemonKey, &'a Managed)> + 'a {
        self.daemons
            .iter()
            .filter(move |(key, _)| key.resource == *resource)
    }

    /// The driver root of the running configuration, where the control
    /// program is looked for.
    pub fn set_driver_root(&mut self, root: PathBuf) {
        self.options.driver_root = root;
    }

    /// Starts again every daemon of `resource` that is not ready (the
    /// node machine decided it is time); returns why the resource is still
    /// not ready, `None` once all its daemons are.
    pub async fn restart(&mut self, resource: &ResourceName) -> Option<String> {
        let due: Vec<DaemonKey> = self
            .of(resource)
            .filter(|(_, m)| !m.ready)
            .map(|(key, _)| key.clone())
            .collect();
        for name in due {
            if let Some(m) = self.daemons.get_mut(&name) {
                m.restarts += 1;
                self.metrics
                    .mps_restarts
                    .get_or_create(&self.metrics.resource(name.resource.as_str()))
                    .inc();
            }
            self.start(&name).await;
        }
        self.set_ready_metric(resource);
        self.not_ready(resource)
    }

    /// A daemon exited. Returns its resource when the exit concerns the
    /// running daemon (not one already replaced); the node machine
    /// schedules its restart.
    pub fn on_exit(&mut self, exit: MpsExit) -> Option<ResourceName> {
        let managed = self.daemons.get_mut(&exit.key)?;
        if managed.generation != exit.generation {
            return None;
        }
        managed.child = None;
        managed.pid = None;
        managed.ready = false;
        tracing::error!(
            "the MPS control daemon of '{}' exited ({}); its devices are Unhealthy",
            exit.key,
            exit.status
        );
        self.set_ready_metric(&exit.key.resource);
        Some(exit.key.resource)
    }

    /// Stops every daemon (SIGTERM).
    pub async fn stop_all(&mut self) {
        let all = std::mem::take(&mut self.daemons);
        let mut resources: Vec<ResourceName> = Vec::new();
        for (name, managed) in all {
            self.stop(&name, managed).await;
            if !resources.contains(&name.resource) {
                resources.push(name.resource);
            }
        }
        for resource in resources {
            self.set_ready_metric(&resource);
        }
    }

    /// `gpu_slicer_mps_daemon_ready{resource}`: 1 while every daemon of the
    /// resource is ready (none left: 0).
    fn set_ready_metric(&self, resource: &ResourceName) {
        let mut daemons = self.of(resource).peekable();
        let ready = daemons.peek().is_some() && daemons.all(|(_, m)| m.ready);
        self.metrics
            .mps_ready
            .get_or_create(&self.metrics.resource(resource.as_str()))
            .set(i64::from(ready));
    }

    async fn start(&mut self, name: &DaemonKey) {
        self.next_generation += 1;
        let generation = self.next_generation;
        let Some(spec) = self.daemons.get(name).map(|m| m.spec.clone()) else {
            return;
        };
        let result = self.launch(&spec, generation).await;
        let Some(managed) = self.daemons.get_mut(name) else {
            return;
        };
        managed.generation = generation;
        match result {
            Ok((stop, pid)) => {
                managed.child = Some(stop);
                managed.pid = Some(pid);
                managed.ready = true;
                tracing::info!(
                    resource = %name.resource,
                    shares = name.shares,
                    pid,
                    gpus = spec.gpus.len(),
                    active_thread_percentage = spec.active_thread_percentage,
                    "MPS control daemon ready"
                );
            }
            Err(e) => {
                managed.ready = false;
                tracing::error!("{e}; its devices are Unhealthy");
            }
        }
    }

    /// Starts one daemon and makes it ready; on success returns the handle
    /// that stops its watcher task and its pid.
    async fn launch(
        &self,
        spec: &ControlDaemon,
        generation: u64,
    ) -> Result<(tokio::sync::oneshot::Sender<()>, u32), MpsError> {
        let resource = spec.key.to_string();
        let fail = |what: String| MpsError::Daemon {
            resource: resource.clone(),
            what,
        };
        let call_failed = |source: ClientError| MpsError::Call {
            resource: resource.clone(),
            source,
        };
        let binary = find_control_binary(&self.options)?;
        let root = self.options.container_root.to_string_lossy().into_owned();
        let pipe = PathBuf::from(spec.pipe_dir(&root));
        let log = PathBuf::from(spec.log_dir(&root));
        for dir in [&pipe, &log, &PathBuf::from(mps::shm_dir(&root))] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|e| {
                    fail(format!(
                        "cannot be started: cannot create {}: {e}",
                        dir.display()
                    ))
                })?;
        }
        let mut command = Command::new(&binary);
        command
            .arg("-f")
            .env_clear()
            .envs(inherited_env())
            .env("CUDA_MPS_PIPE_DIRECTORY", &pipe)
            .env("CUDA_MPS_LOG_DIRECTORY", &log)
            .env("CUDA_VISIBLE_DEVICES", spec.visible_devices())
            .env("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| fail(format!("cannot be started ({}): {e}", binary.display())))?;
        let pid = child.id().unwrap_or(0);
        forward_output(&mut child, &spec.key);
        let deadline = Instant::now() + READY_TIMEOUT;
        let client = Client {
            binary: binary.clone(),
            pipe: pipe.clone(),
        };
        // Ready when it answers on its pipe; it may take a moment to listen.
        let mut poll = Backoff::new(Duration::from_millis(10), Duration::from_millis(250));
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(fail(format!("exited at start ({status})")));
            }
            if client
                .call(mps::READY_QUERY)
                .await
                .is_ok_and(|a| !a.trim().is_empty())
            {
                break;
            }
            if Instant::now() >= deadline {
                return Err(fail(format!(
                    "did not answer on {} within {READY_TIMEOUT:?}",
                    pipe.display()
                )));
            }
            tokio::time::sleep(poll.next_delay()).await;
        }
        for command in spec.limit_commands() {
            let answer = client.call(&command).await.map_err(&call_failed)?;
            if !mps::answer_accepts(&command, &answer) {
                return Err(fail(format!("refused '{command}': {}", answer.trim())));
            }
        }
        let answer = client.call(mps::READY_QUERY).await.map_err(call_failed)?;
        if !mps::answer_shows_percentage(&answer, spec.active_thread_percentage) {
            return Err(fail(format!(
                "reports an active thread percentage of '{}' after being set to {}",
                answer.trim(),
                spec.active_thread_percentage
            )));
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let exits = self.exits.clone();
        let name = spec.key.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                // Stopped on purpose: quit, then kill if it lingers.
                _ = stop_rx => {
                    let _ = client.call("quit").await;
                    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                        Ok(_) => {}
                        Err(_) => {
                            tracing::warn!("the MPS control daemon of '{name}' did not quit within {STOP_GRACE:?}; killing it");
                            let _ = child.kill().await;
                        }
                    }
                    return;
                }
            };
            let _ = exits
                .send(MpsExit {
                    key: name,
                    generation,
                    status,
                })
                .await;
        });
        Ok((stop_tx, pid))
    }

    async fn stop(&self, name: &DaemonKey, managed: Managed) {
        let Some(stop) = managed.child else { return };
        tracing::info!(resource = %name, "stopping the MPS control daemon");
        let _ = stop.send(());
        // Wait for it to be gone, so a daemon for the same pipe started
        // next does not meet it.
        if let Some(pid) = managed.pid {
            let deadline = Instant::now() + STOP_GRACE + Duration::from_secs(1);
            while process_alive(pid) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Whether a child we started is still there (not yet reaped counts as gone).
fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|rest| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// What the daemon passes on to the control program: where to find the
/// driver's other programs and libraries, nothing else.
fn inherited_env() -> Vec<(String, String)> {
    ["PATH", "LD_LIBRARY_PATH"]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_string(), v)))
        .collect()
}

/// The control program's own output, into our log. In foreground mode
/// the driver's control daemon writes its log (and its servers') to
/// standard output instead of `control.log`.
fn forward_output(child: &mut Child, resource: &DaemonKey) {
    if let Some(out) = child.stdout.take() {
        forward_lines(out, resource.to_string(), false);
    }
    if let Some(err) = child.stderr.take() {
        forward_lines(err, resource.to_string(), true);
    }
}

/// Logs each line of `stream` (target `mps`, at WARN for its standard
/// error) until it ends.
fn forward_lines(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    resource: String,
    is_stderr: bool,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if is_stderr {
                tracing::warn!(target: "mps", %resource, "{line}");
            } else {
                tracing::info!(target: "mps", %resource, "{line}");
            }
        }
    });
}

/// Why one command sent to a control daemon got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("cannot run {binary}: {reason}")]
    Spawn { binary: String, reason: String },
    #[error("'{command}' got no answer within {CALL_TIMEOUT:?}")]
    NoAnswer { command: String },
    #[error("'{command}' failed ({status}): {stderr}")]
    Refused {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("'{command}' failed: {reason}")]
    Wait { command: String, reason: String },
}

/// The control program in client mode, on one daemon's pipe.
#[derive(Debug, Clone)]
struct Client {
    binary: PathBuf,
    pipe: PathBuf,
}

impl Client {
    /// Sends one command; returns what the daemon printed.
    async fn call(&self, command: &str) -> Result<String, ClientError> {
        let mut child = Command::new(&self.binary)
            .env_clear()
            .envs(inherited_env())
            .env("CUDA_MPS_PIPE_DIRECTORY", &self.pipe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ClientError::Spawn {
                binary: self.binary.display().to_string(),
                reason: e.to_string(),
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(format!("{command}\n").as_bytes()).await;
        }
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let work = async {
            let mut out = String::new();
            let mut err = String::new();
            if let Some(s) = stdout.as_mut() {
                let _ = s.take(MAX_ANSWER).read_to_string(&mut out).await;
            }
            if let Some(s) = stderr.as_mut() {
                let _ = s.take(MAX_ANSWER).read_to_string(&mut err).await;
            }
            let status = child.wait().await;
            (out, err, status)
        };
        let (out, err, status) = tokio::time::timeout(CALL_TIMEOUT, work)
            .await
            .map_err(|_| ClientError::NoAnswer {
                command: command.to_owned(),
            })?;
        match status {
            Ok(s) if s.success() => Ok(out),
            Ok(status) => Err(ClientError::Refused {
                command: command.to_owned(),
                status,
                stderr: err.trim().to_owned(),
            }),
            Err(e) => Err(ClientError::Wait {
                command: command.to_owned(),
                reason: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(explicit: Option<&str>) -> MpsOptions {
        MpsOptions {
            control_bin: explicit.map(PathBuf::from),
            driver_root: PathBuf::from("/driver-root"),
            container_root: PathBuf::from("/mps"),
        }
    }

    #[test]
    fn the_control_binary_is_found_under_the_driver_root_then_on_path() {
        let found = find_control_binary_with(
            &options(None),
            |p| p == Path::new("/driver-root/usr/local/nvidia/bin/nvidia-cuda-mps-control"),
            None,
        );
        assert_eq!(
            found,
            Ok(PathBuf::from(
                "/driver-root/usr/local/nvidia/bin/nvidia-cuda-mps-control"
            ))
        );
        let found = find_control_binary_with(
            &options(None),
            |p| p == Path::new("/opt/x/nvidia-cuda-mps-control"),
            Some("/opt/y:/opt/x".into()),
        );
        assert_eq!(found, Ok(PathBuf::from("/opt/x/nvidia-cuda-mps-control")));
        let err = find_control_binary_with(&options(None), |_| false, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot find nvidia-cuda-mps-control: looked in [/driver-root/usr/bin/nvidia-cuda-mps-control, \
             /driver-root/usr/local/nvidia/bin/nvidia-cuda-mps-control, /driver-root/bin/nvidia-cuda-mps-control, \
             /driver-root/usr/local/bin/nvidia-cuda-mps-control, /driver-root/usr/sbin/nvidia-cuda-mps-control] \
             and on PATH. It ships with the NVIDIA driver (its bin directory); mount the driver root and pass \
             --driver-root-ctr-path, or name the program with --mps-control-bin"
        );
        let err = find_control_binary_with(&options(Some("/nope")), |_| false, None).unwrap_err();
        assert!(
            err.to_string()
                .contains("looked in /nope (--mps-control-bin)"),
            "{err}"
        );
    }
}
