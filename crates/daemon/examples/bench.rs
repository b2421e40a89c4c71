//! End-to-end benchmark: the release daemon binary (`gpu-slicer-daemon`,
//! what the DaemonSet runs) against the stand-in kubelet, measured from the
//! outside.
//!
//! ```sh
//! cargo build --release -p gpu-slicer-daemon                   # the binary under test
//! cargo run --release -p gpu-slicer-daemon --example bench     # full run (about two minutes)
//! cargo run --release -p gpu-slicer-daemon --example bench -- --quick --json bench.json
//! ```
//!
//! Options: `--quick` (small iteration counts, 1 s idle window: proves the
//! program works, numbers are indicative only), `--json [FILE]` (without
//! FILE, or with `-`: the JSON on stdout and the table on stderr), `--binary
//! PATH` (default: `gpu-slicer-daemon` next to this example's `examples/` folder),
//! `--simulate SPEC` (instance preset or topology file; default
//! `p4d.24xlarge`) or `--nvml` (the node's real GPUs: MIG scenarios are
//! skipped and device counts are whatever the node advertises).
//!
//! With `--nvml` the daemon's idle resident memory is compared with the NVML
//! floor (the `nvml_floor` example beside this one, held alive after
//! enumeration): both are read from outside, from `/proc/<pid>/status`,
//! `smaps_rollup` and `smaps`, and the JSON's `nvml_idle.rss_above_floor_kib`
//! is the difference of the medians, with the breakdown (anonymous,
//! file-backed, private) and, for one run each, the resident KiB per mapping.
//! The fake NVML of `testing/fake-nvml` stands in for the driver when
//! `LD_LIBRARY_PATH` finds it as `libnvidia-ml.so.1` (docs/benchmarks.md).
//!
//! The exit status is 0 whenever the measurements ran: targets are reported,
//! never enforced (benchmarks are not tests).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use gpu_slicer_core::plan::plan;
use gpu_slicer_daemon::gpus::simulate;
use hyper_util::rt::TokioIo;
use kubelet_sim::api::device_plugin_client::DevicePluginClient;
use kubelet_sim::api::{
    AllocateRequest, ContainerAllocateRequest, ContainerPreferredAllocationRequest,
    PreferredAllocationRequest,
};
use kubelet_sim::{Kubelet, Options, RegistrationRecord};
use serde_json::{Value, json};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Parser)]
#[command(about = "End-to-end benchmark of the gpu-slicer binary against the stand-in kubelet")]
struct Args {
    /// Small iteration counts and a 1 s idle window (for CI: proves it runs).
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file; without FILE (or `-`),
    /// print the JSON on stdout and the table on stderr.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    json: Option<PathBuf>,
    /// The daemon binary (default: target/release/gpu-slicer-daemon next to this example).
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
    /// Simulated node: instance preset or topology file (default p4d.24xlarge).
    #[arg(long, value_name = "SPEC", conflicts_with = "nvml")]
    simulate: Option<String>,
    /// Use the node's real GPUs through NVML instead of the simulated backend.
    #[arg(long)]
    nvml: bool,
}

/// Iteration counts.
struct Sizes {
    startups: usize,
    calls: usize,
    calls_10k: usize,
    soak: usize,
    idle: Duration,
    restarts: usize,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                startups: 2,
                calls: 320,
                calls_10k: 32,
                soak: 1_600,
                idle: Duration::from_secs(1),
                restarts: 3,
            }
        } else {
            Sizes {
                startups: 11,
                calls: 20_000,
                calls_10k: 2_000,
                soak: 100_000,
                idle: Duration::from_secs(10),
                restarts: 20,
            }
        }
    }
}

const WAIT: Duration = Duration::from_secs(30);
/// How long a daemon idles after start-up before its memory is read.
const SETTLE_BEFORE_RSS: Duration = Duration::from_millis(300);
/// With NVML, the last daemon is read once more this long after the first
/// reading: past tokio's 10 s keep-alive, so the blocking-pool thread that
/// ran NVML discovery (and whatever NVML keeps per thread) has gone, and a
/// health probe (every 5 s) has run.
const LATE_IDLE: Duration = Duration::from_secs(12);
/// The lean-daemon targets: binary size, idle RSS of the 56-device node,
/// and RSS with NVML above a bare NVML process.
const BINARY_TARGET_MIB: f64 = 5.0;
const IDLE_56_TARGET_MB: f64 = 6.0;
const NVML_OVER_FLOOR_TARGET_MIB: f64 = 4.0;
const CONCURRENT: usize = 16;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// Scenarios: a node configuration the daemon runs with.

struct Scenario {
    name: &'static str,
    /// `--mig-config` for the simulated backend.
    layout: Option<&'static str>,
    config: String,
}

fn time_slicing(replicas: u32) -> String {
    format!(
        "version: v1\nflags:\n  migStrategy: none\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: {replicas}\n"
    )
}

fn mixed() -> String {
    "version: v1\nflags:\n  migStrategy: mixed\n".to_string()
}

// ---------------------------------------------------------------------------
// The daemon under test.

struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Err` with the end of its log if the process has exited.
    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "gpu-slicer exited ({status}); its log ends with:\n{}",
                log_tail(&self.log)
            )),
            Err(e) => Err(format!("cannot query the gpu-slicer process: {e}")),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A running node: a temporary device-plugin directory, the stand-in
/// kubelet and the daemon, all registered.
struct Node {
    // Field order: the daemon is killed before the directory goes away.
    daemon: Daemon,
    kubelet: Kubelet,
    /// Resource → device count, as listed to the kubelet.
    expected: BTreeMap<String, usize>,
    /// Spawn to the first accepted Register.
    first_registration: Duration,
    /// Spawn to every resource registered and its devices listed.
    all_listed: Duration,
    _dir: tempfile::TempDir,
}

struct Bench {
    binary: PathBuf,
    /// `None`: NVML.
    simulate: Option<String>,
    sizes: Sizes,
}

impl Bench {
    async fn start(&self, scenario: &Scenario) -> Result<Node, String> {
        // Short path: Unix socket paths are limited to 107 bytes.
        let dir = tempfile::Builder::new()
            .prefix("gsb")
            .tempdir_in("/tmp")
            .map_err(|e| format!("cannot create a temporary directory in /tmp: {e}"))?;
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, &scenario.config)
            .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let expected = match &self.simulate {
            Some(spec) => Some(expected_counts(spec, scenario, &config)?),
            None => None,
        };
        let plugins = dir.path().join("dp");
        let kubelet = Kubelet::start(Options::new(&plugins))
            .await
            .map_err(|e| format!("stand-in kubelet failed to start: {e}"))?;
        let log = dir.path().join("gpu-slicer.log");
        let log_file = std::fs::File::create(&log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;

        let mut command = Command::new(&self.binary);
        command
            .arg("run")
            .arg("--device-plugin-path")
            .arg(&plugins)
            .arg("--config-file")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        if let Some(spec) = &self.simulate {
            command.arg("--simulate").arg(spec);
            command
                .arg("--mig-config")
                .arg(scenario.layout.unwrap_or("all-disabled"));
        }
        let spawned = Instant::now();
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        let mut daemon = Daemon { child, log };

        // First accepted registration, from the kubelet's own timestamps.
        let registered = kubelet.wait_for_registrations(|r| r.iter().any(|r| r.accepted), WAIT);
        watch_daemon(registered, &mut daemon, "the first registration").await?;
        let first = kubelet
            .registrations()
            .iter()
            .filter(|r| r.accepted)
            .map(|r| r.answered_at)
            .min()
            .ok_or("no accepted registration recorded")?;
        let first_registration = first.saturating_duration_since(spawned);

        // Every resource listed with all its devices.
        let expected = match expected {
            Some(e) => e,
            None => {
                // NVML: whatever registers within a moment of the first one.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let names: BTreeSet<String> = accepted(&kubelet.registrations(), 0);
                let want = names.clone();
                let listed = kubelet.wait_until(
                    move |s| {
                        want.iter()
                            .all(|n| s.get(n).is_some_and(|c| c.capacity > 0))
                    },
                    WAIT,
                );
                watch_daemon(listed, &mut daemon, "the device lists").await?;
                let status = kubelet.node_status();
                names
                    .into_iter()
                    .map(|n| {
                        let count = status.get(&n).map_or(0, |c| c.capacity);
                        (n, count)
                    })
                    .collect()
            }
        };
        let want = expected.clone();
        let listed = kubelet.wait_until(
            move |s| {
                want.iter()
                    .all(|(n, count)| s.get(n).is_some_and(|c| c.allocatable == *count))
            },
            WAIT,
        );
        watch_daemon(listed, &mut daemon, "every resource listed").await?;
        let all_listed = spawned.elapsed();
        Ok(Node {
            daemon,
            kubelet,
            expected,
            first_registration,
            all_listed,
            _dir: dir,
        })
    }

    /// `startups` fresh start-ups; returns the last node (still running)
    /// and the start-up times of all of them.
    /// Starts `runs` daemons one after the other; each one's idle memory is
    /// read [`SETTLE_BEFORE_RSS`] after its devices are listed, so memory
    /// figures are medians over the runs too.
    async fn start_many(
        &self,
        scenario: &Scenario,
        runs: usize,
    ) -> Result<(Node, Vec<Duration>, Vec<Duration>, Vec<Memory>), String> {
        let mut first = Vec::new();
        let mut all = Vec::new();
        let mut idle = Vec::new();
        let mut node = None;
        for _ in 0..runs.max(1) {
            drop(node.take());
            let n = self.start(scenario).await?;
            first.push(n.first_registration);
            all.push(n.all_listed);
            tokio::time::sleep(SETTLE_BEFORE_RSS).await;
            idle.push(memory(n.daemon.pid())?);
            node = Some(n);
        }
        let node = node.ok_or("no start-up ran")?;
        Ok((node, first, all, idle))
    }
}

/// Resource names accepted in kubelet generation `generation`.
fn accepted(records: &[RegistrationRecord], generation: u64) -> BTreeSet<String> {
    records
        .iter()
        .filter(|r| r.accepted && r.generation == generation)
        .map(|r| r.resource_name.clone())
        .collect()
}

/// Awaits `wait`, failing early (with the daemon's log) if the daemon exits.
async fn watch_daemon<F>(wait: F, daemon: &mut Daemon, what: &str) -> Result<(), String>
where
    F: std::future::Future<Output = Result<(), kubelet_sim::SimError>>,
{
    tokio::pin!(wait);
    loop {
        tokio::select! {
            result = &mut wait => {
                return result.map_err(|e| {
                    let alive = daemon.check_alive().err().unwrap_or_default();
                    format!("timed out waiting for {what}: {e}\n{alive}\nlog:\n{}", log_tail(&daemon.log))
                });
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => daemon.check_alive()?,
        }
    }
}

/// What the daemon will advertise, from the same library code it runs.
fn expected_counts(
    spec: &str,
    scenario: &Scenario,
    config: &Path,
) -> Result<BTreeMap<String, usize>, String> {
    let config = gpu_slicer_daemon::host::config_file::load_file(config)
        .map_err(|e| format!("scenario {}: bad configuration: {e}", scenario.name))?;
    let inventory = simulate::load(spec, Some(scenario.layout.unwrap_or("all-disabled")))
        .map_err(|e| format!("scenario {}: {e}", scenario.name))?;
    let planned = plan(&inventory, &config);
    if planned.resources.is_empty() {
        return Err(format!(
            "scenario {}: {spec} advertises nothing under this configuration",
            scenario.name
        ));
    }
    Ok(planned.counts().into_iter().collect())
}

// ---------------------------------------------------------------------------
// /proc readings.

#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
    threads: u64,
    resident: Resident,
}

fn memory(pid: u32) -> Result<Memory, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let field = |key: &str| proc_field(&text, &path, key);
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
        threads: field("Threads:")?,
        resident: resident(pid)?,
    })
}

/// The number after `key` in a `/proc` file's text (`VmRSS:   1234 kB`).
fn proc_field(text: &str, path: &str, key: &str) -> Result<u64, String> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{path} has no {key} field"))
}

/// Resident memory by kind, KiB, from `/proc/<pid>/smaps_rollup`.
#[derive(Debug, Clone, Copy, Default)]
struct Resident {
    rss: u64,
    /// Pages only this process maps (`Private_Clean + Private_Dirty`).
    private: u64,
    /// Heap, thread stacks, `.bss`, libraries' own allocations.
    anonymous: u64,
}

impl Resident {
    /// Pages of files: the program's and the libraries' code and data.
    fn file_backed(&self) -> u64 {
        self.rss.saturating_sub(self.anonymous)
    }

    fn json(&self) -> Value {
        json!({
            "rss_kib": self.rss,
            "private_kib": self.private,
            "anonymous_kib": self.anonymous,
            "file_backed_kib": self.file_backed(),
        })
    }
}

fn resident(pid: u32) -> Result<Resident, String> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let field = |key: &str| proc_field(&text, &path, key);
    Ok(Resident {
        rss: field("Rss:")?,
        private: field("Private_Clean:")? + field("Private_Dirty:")?,
        anonymous: field("Anonymous:")?,
    })
}

/// Resident KiB per mapping from `/proc/<pid>/smaps`, summed by what is
/// mapped and its permissions: a file's path (the process's own executable
/// as `[program]`, so the daemon's and the floor's compare), `[heap]`,
/// `[stack]`, or `[anon]` (thread stacks, `.bss`, what libraries map for
/// themselves).
fn resident_by_mapping(pid: u32) -> Result<BTreeMap<String, u64>, String> {
    let path = format!("/proc/{pid}/smaps");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let program = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut by_name = BTreeMap::new();
    let mut name = String::new();
    for line in text.lines() {
        if let Some(kib) = line.strip_prefix("Rss:") {
            let kib: u64 = kib
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            *by_name.entry(name.clone()).or_insert(0) += kib;
        } else if line.split_whitespace().next().is_some_and(|range| {
            range.contains('-') && range.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        }) {
            // `start-end perms offset dev inode [name]`: the name may hold
            // spaces. Keyed with the permissions, so code (`r-xp`),
            // read-only data (`r--p`) and relocated or written data (`rw-p`)
            // show apart.
            let fields: Vec<&str> = line.splitn(6, char::is_whitespace).collect();
            let perms = fields.get(1).copied().unwrap_or("");
            let mapped = fields.get(5).copied().unwrap_or("").trim();
            let mapped = if mapped.is_empty() {
                "[anon]"
            } else if mapped == program {
                "[program]"
            } else {
                mapped
            };
            name = format!("{mapped} {perms}");
        }
    }
    by_name.retain(|_, kib| *kib > 0);
    Ok(by_name)
}

/// utime + stime in clock ticks, all threads.
fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    // The command name may hold spaces: fields start after the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| format!("{path}: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let get = |n: usize| -> Result<u64, String> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{path}: no field {n}"))
    };
    Ok(get(14)? + get(15)?)
}

/// Context switches per thread (thread id → count): each one is a wake-up.
fn context_switches(pid: u32) -> Result<BTreeMap<String, u64>, String> {
    let dir = format!("/proc/{pid}/task");
    let mut threads = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| format!("cannot read {dir}: {e}"))? {
        let Ok(entry) = entry else { continue };
        let Ok(text) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let mut total = 0;
        for line in text.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
        threads.insert(entry.file_name().to_string_lossy().into_owned(), total);
    }
    Ok(threads)
}

/// Wake-ups between two readings: threads that exited in between count
/// once (their exit), new threads count fully.
fn wakeups(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> u64 {
    let exited = before.keys().filter(|t| !after.contains_key(*t)).count() as u64;
    let running: u64 = after
        .iter()
        .map(|(t, n)| n.saturating_sub(before.get(t).copied().unwrap_or(0)))
        .sum();
    exited + running
}

fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

// ---------------------------------------------------------------------------
// gRPC load.

async fn connect(socket: &Path) -> Result<DevicePluginClient<Channel>, String> {
    let path = socket.to_path_buf();
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    Ok(DevicePluginClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

#[derive(Clone, Copy, PartialEq)]
enum Rpc {
    Allocate,
    Preferred,
}

/// The ids a kubelet would send.
struct Workload {
    /// Allocate: one device per request, cycling over every id.
    ids: Vec<String>,
    /// GetPreferredAllocation: every id except about one in ten (in use).
    available: Vec<String>,
}

impl Workload {
    fn new(ids: Vec<String>) -> Workload {
        let available = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| (i * 7919) % 10 != 0)
            .map(|(_, id)| id.clone())
            .collect();
        Workload { ids, available }
    }
}

/// `callers` connections, each making `total / callers` calls back to back;
/// returns every call's latency.
async fn load(
    socket: &Path,
    rpc: Rpc,
    callers: usize,
    total: usize,
    work: &Arc<Workload>,
) -> Result<Vec<Duration>, String> {
    let per_caller = (total / callers).max(1);
    let barrier = Arc::new(tokio::sync::Barrier::new(callers));
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..callers {
        let mut client = connect(socket).await?;
        let work = Arc::clone(work);
        let barrier = Arc::clone(&barrier);
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(per_caller);
            barrier.wait().await;
            for i in 0..per_caller {
                let n = caller * per_caller + i;
                let elapsed = match rpc {
                    Rpc::Allocate => {
                        let request = AllocateRequest {
                            container_requests: vec![ContainerAllocateRequest {
                                devices_ids: vec![work.ids[n % work.ids.len()].clone()],
                            }],
                        };
                        let start = Instant::now();
                        client
                            .allocate(request)
                            .await
                            .map_err(|s| format!("Allocate failed: {}", s.message()))?;
                        start.elapsed()
                    }
                    Rpc::Preferred => {
                        let request = PreferredAllocationRequest {
                            container_requests: vec![ContainerPreferredAllocationRequest {
                                available_device_i_ds: work.available.clone(),
                                must_include_device_i_ds: Vec::new(),
                                allocation_size: 1,
                            }],
                        };
                        let start = Instant::now();
                        client
                            .get_preferred_allocation(request)
                            .await
                            .map_err(|s| {
                                format!("GetPreferredAllocation failed: {}", s.message())
                            })?;
                        start.elapsed()
                    }
                };
                latencies.push(elapsed);
            }
            Ok::<_, String>(latencies)
        });
    }
    let mut all = Vec::with_capacity(per_caller * callers);
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.map_err(|e| format!("a caller task failed: {e}"))??);
    }
    Ok(all)
}

#[derive(Debug, Clone, Copy)]
struct Percentiles {
    p50: Duration,
    p99: Duration,
    max: Duration,
    n: usize,
}

fn percentiles(mut v: Vec<Duration>) -> Percentiles {
    v.sort_unstable();
    let at = |q: f64| {
        if v.is_empty() {
            Duration::ZERO
        } else {
            v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
        }
    };
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
        max: v.last().copied().unwrap_or_default(),
        n: v.len(),
    }
}

/// The run with the median resident set.
fn median_memory(v: &[Memory]) -> Memory {
    let mut sorted = v.to_vec();
    sorted.sort_by_key(|m| m.rss_kib);
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// One run of the NVML floor, read from outside while it holds.
struct FloorRun {
    memory: Memory,
    by_mapping: BTreeMap<String, u64>,
}

/// `runs` runs of `nvml_floor --hold`: a bare process that initialises
/// NVML and enumerates the GPUs, the least any NVML-based plugin can hold
/// (the example beside this one). Each is read from `/proc` by this
/// process, as the daemon is, then let go by closing its stdin.
fn nvml_floor(runs: usize) -> Result<Vec<FloorRun>, String> {
    use std::io::BufRead as _;
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate this program: {e}"))?;
    let floor = exe.with_file_name("nvml_floor");
    if !floor.is_file() {
        return Err(format!(
            "{} not found: build it with `cargo build --release -p gpu-slicer-daemon --example nvml_floor`",
            floor.display()
        ));
    }
    let mut out = Vec::new();
    for _ in 0..runs.max(1) {
        let mut child = Command::new(&floor)
            .arg("--hold")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", floor.display()))?;
        let stdout = child.stdout.take().ok_or("nvml_floor: no stdout")?;
        let mut printed = String::new();
        let mut ready = false;
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.map_err(|e| format!("cannot read nvml_floor's output: {e}"))?;
            if line == "ready" {
                ready = true;
                break;
            }
            printed += &line;
            printed.push('\n');
        }
        let pid = child.id();
        let reading = ready.then(|| {
            Ok::<_, String>(FloorRun {
                memory: memory(pid)?,
                by_mapping: resident_by_mapping(pid)?,
            })
        });
        // Closing stdin lets it exit.
        drop(child.stdin.take());
        let finished = child
            .wait_with_output()
            .map_err(|e| format!("cannot wait for nvml_floor: {e}"))?;
        match reading {
            Some(run) => out.push(run?),
            None => {
                return Err(format!(
                    "nvml_floor ended before it was ready ({}): {printed}{}",
                    finished.status,
                    String::from_utf8_lossy(&finished.stderr)
                ));
            }
        }
    }
    Ok(out)
}

fn median(v: &[Duration]) -> Duration {
    percentiles(v.to_vec()).p50
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Decimal megabytes, as the targets are written.
fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

// ---------------------------------------------------------------------------
// Results.

struct Row {
    target: String,
    measured: String,
    met: Option<bool>,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    json: serde_json::Map<String, Value>,
}

impl Report {
    fn row(&mut self, target: impl Into<String>, measured: impl Into<String>, met: Option<bool>) {
        self.rows.push(Row {
            target: target.into(),
            measured: measured.into(),
            met,
        });
    }

    fn record(&mut self, key: &str, value: Value) {
        self.json.insert(key.to_string(), value);
    }

    fn table(&self) -> String {
        let w0 = self.rows.iter().map(|r| r.target.len()).max().unwrap_or(0);
        let w1 = self
            .rows
            .iter()
            .map(|r| r.measured.len())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(out, "{:<w0$}  {:<w1$}  met?", "target", "measured");
        let _ = writeln!(out, "{}", "-".repeat(w0 + w1 + 8));
        for r in &self.rows {
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            };
            let _ = writeln!(out, "{:<w0$}  {:<w1$}  {met}", r.target, r.measured);
        }
        out
    }
}

fn progress(message: &str) {
    eprintln!("bench: {message}");
}

// ---------------------------------------------------------------------------

async fn run(args: Args) -> Result<(), String> {
    let binary = match args.binary {
        Some(b) => b,
        None => default_binary()?,
    };
    if !binary.is_file() {
        return Err(format!(
            "{} not found: build it first with `cargo build --release`, or pass --binary PATH",
            binary.display()
        ));
    }
    let simulate = if args.nvml {
        None
    } else {
        Some(args.simulate.unwrap_or_else(|| "p4d.24xlarge".into()))
    };
    let bench = Bench {
        binary: binary.clone(),
        simulate: simulate.clone(),
        sizes: Sizes::new(args.quick),
    };
    let sizes = &bench.sizes;
    let mut report = Report::default();
    let backend = simulate
        .as_deref()
        .map_or("nvml".to_string(), |s| format!("simulated {s}"));
    report.record(
        "machine",
        json!({
            "cpu": cpu_model(),
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        }),
    );
    report.record("mode", json!(if args.quick { "quick" } else { "full" }));
    report.record("backend", json!(backend));
    report.record("binary", json!(binary.display().to_string()));
    let tck = clock_ticks_per_second();

    // --- The binary every GPU node runs.
    let size = std::fs::metadata(&binary)
        .map_err(|e| format!("cannot stat {}: {e}", binary.display()))?
        .len();
    let size_mib = size as f64 / f64::from(1u32 << 20);
    report.row(
        format!("daemon binary: ≤ {BINARY_TARGET_MIB} MiB"),
        format!("{size_mib:.2} MiB ({size} bytes)"),
        Some(size_mib <= BINARY_TARGET_MIB),
    );
    report.record("binary_bytes", json!(size));

    // --- With NVML: the daemon's idle RSS over a bare NVML process's.
    if simulate.is_none() {
        progress("nvml: the floor (a bare process after nvmlInit and enumeration)");
        let floors = nvml_floor(sizes.startups)?;
        let scenario = Scenario {
            name: "nvml-idle",
            layout: None,
            config: "version: v1\n".into(),
        };
        progress("nvml: daemon start-ups");
        let (node, first, _, idles) = bench.start_many(&scenario, sizes.startups).await?;
        let daemon_mappings = resident_by_mapping(node.daemon.pid())?;
        progress(&format!("nvml: the last daemon, {LATE_IDLE:?} later"));
        tokio::time::sleep(LATE_IDLE).await;
        let late = memory(node.daemon.pid())?;
        let late_mappings = resident_by_mapping(node.daemon.pid())?;
        drop(node);
        let idle = median_memory(&idles);
        let floor_memory: Vec<Memory> = floors.iter().map(|f| f.memory).collect();
        let floor = median_memory(&floor_memory);
        let above_kib = idle.rss_kib as i64 - floor.rss_kib as i64;
        let mib = |kib: i64| kib as f64 / 1024.0;
        let target_kib = (NVML_OVER_FLOOR_TARGET_MIB * 1024.0) as i64;
        let kind = |r: &Resident| {
            format!(
                "{} anonymous + {} file-backed, {} private",
                r.anonymous,
                r.file_backed(),
                r.private
            )
        };
        report.row(
            format!("idle RSS with NVML: ≤ floor + {NVML_OVER_FLOOR_TARGET_MIB} MiB (medians)"),
            format!(
                "{:.1} MiB, floor {:.1} MiB: +{above_kib} KiB (+{:.2} MiB); medians of {} and {} runs; \
                 KiB daemon {}, floor {}; {} threads; start → first registration {:.1} ms",
                mib(idle.rss_kib as i64),
                mib(floor.rss_kib as i64),
                mib(above_kib),
                idles.len(),
                floors.len(),
                kind(&idle.resident),
                kind(&floor.resident),
                idle.threads,
                ms(median(&first)),
            ),
            Some(above_kib <= target_kib),
        );
        let settled = idles.last().copied().unwrap_or_default();
        report.row(
            format!(
                "idle RSS with NVML, {} s later (last run)",
                LATE_IDLE.as_secs()
            ),
            format!(
                "{} KiB, was {} KiB; {} threads, was {}; KiB {}",
                late.rss_kib,
                settled.rss_kib,
                late.threads,
                settled.threads,
                kind(&late.resident),
            ),
            None,
        );
        // Per mapping: the last daemon (at both readings) and the last floor run.
        let floor_mappings = floors
            .last()
            .map(|f| f.by_mapping.clone())
            .unwrap_or_default();
        let names: BTreeSet<&String> = daemon_mappings
            .keys()
            .chain(floor_mappings.keys())
            .chain(late_mappings.keys())
            .collect();
        let per_mapping: Vec<Value> = names
            .into_iter()
            .map(|name| {
                let daemon = daemon_mappings.get(name).copied().unwrap_or(0);
                let floor = floor_mappings.get(name).copied().unwrap_or(0);
                let later = late_mappings.get(name).copied().unwrap_or(0);
                json!({
                    "mapping": name,
                    "daemon_kib": daemon,
                    "floor_kib": floor,
                    "difference_kib": daemon as i64 - floor as i64,
                    "daemon_later_kib": later,
                })
            })
            .collect();
        report.record(
            "nvml_idle",
            json!({
                "rss_above_floor_kib": above_kib,
                "rss_above_floor_mib": mib(above_kib),
                "target_above_floor_kib": target_kib,
                "met": above_kib <= target_kib,
                "daemon_median": {
                    "vmrss_kib": idle.rss_kib,
                    "threads": idle.threads,
                    "smaps_rollup": idle.resident.json(),
                },
                "floor_median": {
                    "vmrss_kib": floor.rss_kib,
                    "threads": floor.threads,
                    "smaps_rollup": floor.resident.json(),
                },
                "floor_vmrss_kib": floor_memory.iter().map(|m| m.rss_kib).collect::<Vec<_>>(),
                "daemon_idle_vmrss_kib": idles.iter().map(|m| m.rss_kib).collect::<Vec<_>>(),
                "daemon_idle_threads": idles.iter().map(|m| m.threads).collect::<Vec<_>>(),
                "resident_by_mapping_last_run": per_mapping,
                "last_run_later": {
                    "seconds_after_first_reading": LATE_IDLE.as_secs(),
                    "vmrss_kib": late.rss_kib,
                    "threads": late.threads,
                    "smaps_rollup": late.resident.json(),
                    "rss_above_floor_kib": late.rss_kib as i64 - floor.rss_kib as i64,
                },
                "start_to_first_registration_ms": first.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            }),
        );
    }

    // --- 56 MIG devices: start-up and idle memory.
    if simulate.is_some() {
        let scenario = Scenario {
            name: "mig-56",
            layout: Some("all-1g.5gb"),
            config: mixed(),
        };
        progress("mig-56: start-ups");
        let (node, first, all, idles) = bench.start_many(&scenario, sizes.startups).await?;
        let devices: usize = node.expected.values().sum();
        let idle = median_memory(&idles);
        let start = median(&first);
        report.row(
            format!("start → first registration, {devices} MIG devices: ≤ 5 ms (median)"),
            format!(
                "{:.2} ms median of {} (min {:.2}, max {:.2}); all listed {:.2} ms",
                ms(start),
                first.len(),
                ms(first.iter().copied().min().unwrap_or_default()),
                ms(first.iter().copied().max().unwrap_or_default()),
                ms(median(&all))
            ),
            Some(start <= Duration::from_millis(5)),
        );
        report.row(
            format!("idle RSS, {devices} MIG devices: ≤ {IDLE_56_TARGET_MB} MB (median)"),
            format!(
                "{:.2} MB median of {} (min {:.2}, max {:.2}; VmHWM {:.2} MB, {} threads)",
                mb(idle.rss_kib),
                idles.len(),
                mb(idles.iter().map(|m| m.rss_kib).min().unwrap_or_default()),
                mb(idles.iter().map(|m| m.rss_kib).max().unwrap_or_default()),
                mb(idle.hwm_kib),
                idle.threads
            ),
            Some(mb(idle.rss_kib) <= IDLE_56_TARGET_MB),
        );
        report.record(
            "mig56",
            json!({
                "devices": devices,
                "start_to_first_registration_ms": first.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
                "start_to_all_listed_ms": all.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
                "idle_vmrss_kib": idles.iter().map(|m| m.rss_kib).collect::<Vec<_>>(),
                "idle_vmhwm_kib": idle.hwm_kib,
                "threads": idle.threads,
            }),
        );
    }

    // --- 8 × 128 replicas: start-up, idle memory and CPU, latency, soak.
    {
        let scenario = Scenario {
            name: "replicas-1024",
            layout: None,
            config: time_slicing(128),
        };
        progress("replicas-1024: start-ups");
        let (node, first, all, idles) = bench.start_many(&scenario, sizes.startups).await?;
        let devices: usize = node.expected.values().sum();
        let pid = node.daemon.pid();
        let idle = median_memory(&idles);
        let start = median(&first);
        report.row(
            format!("start → first registration, {devices} replicas: ≤ 5 ms (median)"),
            format!(
                "{:.2} ms median of {} (min {:.2}, max {:.2}); all listed {:.2} ms",
                ms(start),
                first.len(),
                ms(first.iter().copied().min().unwrap_or_default()),
                ms(first.iter().copied().max().unwrap_or_default()),
                ms(median(&all))
            ),
            Some(start <= Duration::from_millis(5)),
        );
        report.row(
            format!("idle RSS, {devices} replicas: ≤ 12 MB"),
            format!(
                "{:.2} MB (VmHWM {:.2} MB, {} threads)",
                mb(idle.rss_kib),
                mb(idle.hwm_kib),
                idle.threads
            ),
            Some(mb(idle.rss_kib) <= 12.0),
        );

        progress(&format!("replicas-1024: {:?} idle", sizes.idle));
        let (cpu0, cs0) = (cpu_ticks(pid)?, context_switches(pid)?);
        tokio::time::sleep(sizes.idle).await;
        let (cpu1, cs1) = (cpu_ticks(pid)?, context_switches(pid)?);
        let idle_cpu_ms = (cpu1 - cpu0) as f64 * 1000.0 / tck as f64;
        report.row(
            format!("CPU while idle ({} s): 0", sizes.idle.as_secs()),
            format!(
                "{idle_cpu_ms:.0} ms utime+stime ({} ticks), {} wake-ups",
                cpu1 - cpu0,
                wakeups(&cs0, &cs1)
            ),
            Some(cpu1 == cpu0),
        );

        let resource = node
            .expected
            .keys()
            .next()
            .cloned()
            .ok_or("replicas-1024: no resource")?;
        let socket = node
            .kubelet
            .endpoint(&resource)
            .map(|e| e.path)
            .ok_or_else(|| format!("replicas-1024: the kubelet has no endpoint for {resource}"))?;
        let ids: Vec<String> = node
            .kubelet
            .devices(&resource)
            .into_iter()
            .map(|d| d.id)
            .collect();
        let work = Arc::new(Workload::new(ids));
        progress("replicas-1024: latency");
        // Warm-up: connections, allocator, caches.
        load(&socket, Rpc::Allocate, 1, 500.min(sizes.calls), &work).await?;
        load(&socket, Rpc::Preferred, 1, 500.min(sizes.calls), &work).await?;
        let mut latency_json = serde_json::Map::new();
        for (rpc, rpc_name) in [
            (Rpc::Allocate, "Allocate"),
            (Rpc::Preferred, "GetPreferredAllocation"),
        ] {
            for callers in [1, CONCURRENT] {
                let p = percentiles(load(&socket, rpc, callers, sizes.calls, &work).await?);
                report.row(
                    format!("{rpc_name} p99, {devices} devices, {callers} caller(s): < 100 µs"),
                    format!(
                        "p99 {:.0} µs, p50 {:.0} µs, max {:.0} µs ({} calls)",
                        us(p.p99),
                        us(p.p50),
                        us(p.max),
                        p.n
                    ),
                    Some(p.p99 < Duration::from_micros(100)),
                );
                latency_json.insert(
                    format!("{rpc_name}_{callers}"),
                    json!({"p50_us": us(p.p50), "p99_us": us(p.p99), "max_us": us(p.max), "calls": p.n}),
                );
            }
        }

        progress(&format!("replicas-1024: {} Allocate calls", sizes.soak));
        let before = memory(pid)?;
        load(&socket, Rpc::Allocate, CONCURRENT, sizes.soak, &work).await?;
        let after = memory(pid)?;
        let growth = after.rss_kib as i64 - before.rss_kib as i64;
        // A leak of one byte per call would show as about 98 KiB; a page or
        // two is allocator noise.
        report.row(
            format!(
                "RSS after {} Allocate calls: no growth (≤ 64 KiB)",
                (sizes.soak / CONCURRENT) * CONCURRENT
            ),
            format!(
                "{:.2} MB before, {:.2} MB after ({growth:+} KiB); VmHWM {:.2} MB",
                mb(before.rss_kib),
                mb(after.rss_kib),
                mb(after.hwm_kib)
            ),
            Some(growth <= 64),
        );
        report.record(
            "replicas1024",
            json!({
                "devices": devices,
                "start_to_first_registration_ms": first.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
                "start_to_all_listed_ms": all.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
                "idle_vmrss_kib": idle.rss_kib,
                "idle_vmhwm_kib": idle.hwm_kib,
                "threads": idle.threads,
                "idle_seconds": sizes.idle.as_secs_f64(),
                "idle_cpu_ticks": cpu1 - cpu0,
                "idle_cpu_ms": idle_cpu_ms,
                "idle_wakeups": wakeups(&cs0, &cs1),
                "latency": latency_json,
                "soak_calls": (sizes.soak / CONCURRENT) * CONCURRENT,
                "soak_vmrss_before_kib": before.rss_kib,
                "soak_vmrss_after_kib": after.rss_kib,
                "soak_vmhwm_after_kib": after.hwm_kib,
            }),
        );
        if simulate.is_none() {
            restarts(&bench, node, &mut report).await?;
        }
    }

    // --- 8 × 1,250 replicas: GetPreferredAllocation with 10,000 ids.
    {
        let scenario = Scenario {
            name: "replicas-10000",
            layout: None,
            config: time_slicing(1250),
        };
        progress("replicas-10000: start-up and latency");
        let (node, first, _, _) = bench.start_many(&scenario, 1).await?;
        let devices: usize = node.expected.values().sum();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let idle = memory(node.daemon.pid())?;
        let resource = node
            .expected
            .keys()
            .next()
            .cloned()
            .ok_or("replicas-10000: no resource")?;
        let socket = node
            .kubelet
            .endpoint(&resource)
            .map(|e| e.path)
            .ok_or_else(|| format!("replicas-10000: the kubelet has no endpoint for {resource}"))?;
        let ids: Vec<String> = node
            .kubelet
            .devices(&resource)
            .into_iter()
            .map(|d| d.id)
            .collect();
        let work = Arc::new(Workload::new(ids));
        load(&socket, Rpc::Preferred, 1, 100.min(sizes.calls_10k), &work).await?;
        let p = percentiles(load(&socket, Rpc::Preferred, 1, sizes.calls_10k, &work).await?);
        report.row(
            format!("GetPreferredAllocation p99, {devices} replicas, 1 caller: < 300 µs"),
            format!(
                "p99 {:.0} µs, p50 {:.0} µs, max {:.0} µs ({} calls)",
                us(p.p99),
                us(p.p50),
                us(p.max),
                p.n
            ),
            Some(p.p99 < Duration::from_micros(300)),
        );
        let after = memory(node.daemon.pid())?;
        report.record(
            "replicas10000",
            json!({
                "devices": devices,
                "start_to_first_registration_ms": first.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
                "idle_vmrss_kib": idle.rss_kib,
                "after_calls_vmrss_kib": after.rss_kib,
                "after_calls_vmhwm_kib": after.hwm_kib,
                "preferred_1": {"p50_us": us(p.p50), "p99_us": us(p.p99), "max_us": us(p.max), "calls": p.n, "available_ids": work.available.len()},
            }),
        );
    }

    // --- Kubelet restarts, on a node with several resources.
    if simulate.is_some() {
        let scenario = Scenario {
            name: "balanced",
            layout: Some("all-balanced"),
            config: mixed(),
        };
        progress(&format!("balanced: {} kubelet restarts", sizes.restarts));
        let (node, _, _, _) = bench.start_many(&scenario, 1).await?;
        restarts(&bench, node, &mut report).await?;
    }

    let mode = if args.quick {
        "quick mode: indicative only"
    } else {
        "full"
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let table = format!(
        "\ngpu-slicer end-to-end benchmark ({backend}, {mode})\nmachine: {} ({cores} cores)\n\n{}",
        cpu_model(),
        report.table()
    );
    let json_to_stdout = args.json.as_deref() == Some(Path::new("-"));
    if json_to_stdout {
        eprint!("{table}");
    } else {
        print!("{table}");
    }

    if let Some(path) = args.json {
        let rows: Vec<Value> = report
            .rows
            .iter()
            .map(|r| json!({"target": r.target, "measured": r.measured, "met": r.met}))
            .collect();
        report.record("table", Value::Array(rows));
        let text = serde_json::to_string_pretty(&Value::Object(report.json))
            .map_err(|e| format!("cannot encode the results: {e}"))?;
        if json_to_stdout {
            println!("{text}");
        } else {
            std::fs::write(&path, text + "\n")
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            println!("\nresults written to {}", path.display());
        }
    }
    Ok(())
}

/// Restarts the kubelet `sizes.restarts` times; each time measures from
/// `kubelet.sock` being bound to the last resource's Register being answered.
async fn restarts(bench: &Bench, mut node: Node, report: &mut Report) -> Result<(), String> {
    let names: BTreeSet<String> = node.expected.keys().cloned().collect();
    let mut times = Vec::new();
    for generation in 1..=bench.sizes.restarts as u64 {
        node.kubelet
            .restart()
            .await
            .map_err(|e| format!("kubelet restart failed: {e}"))?;
        let bound = node
            .kubelet
            .socket_bound_at()
            .ok_or("the kubelet did not record its socket")?;
        let want = names.clone();
        let registered = node.kubelet.wait_for_registrations(
            move |records| accepted(records, generation).is_superset(&want),
            WAIT,
        );
        watch_daemon(registered, &mut node.daemon, "re-registration").await?;
        let done = node
            .kubelet
            .registrations()
            .iter()
            .filter(|r| r.accepted && r.generation == generation)
            .map(|r| r.answered_at)
            .max()
            .ok_or("no registration after the restart")?;
        times.push(done.saturating_duration_since(bound));
        // Let the device lists arrive before the next restart.
        let want = node.expected.clone();
        let listed = node.kubelet.wait_until(
            move |s| {
                want.iter()
                    .all(|(n, count)| s.get(n).is_some_and(|c| c.allocatable == *count))
            },
            WAIT,
        );
        watch_daemon(listed, &mut node.daemon, "device lists after a restart").await?;
    }
    let p = percentiles(times.clone());
    report.row(
        format!(
            "kubelet restart → {} resources re-registered: ≤ 2 ms (median)",
            names.len()
        ),
        format!(
            "{:.2} ms median, {:.2} ms max ({} restarts)",
            ms(p.p50),
            ms(p.max),
            times.len()
        ),
        Some(p.p50 <= Duration::from_millis(2)),
    );
    report.record(
        "restarts",
        json!({
            "resources": names,
            "reregistration_ms": times.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        }),
    );
    Ok(())
}

fn default_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot locate this program (pass --binary PATH): {e}"))?;
    // target/<profile>/examples/bench → target/<profile>/gpu-slicer-daemon
    exe.parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("gpu-slicer-daemon"))
        .ok_or_else(|| {
            format!(
                "cannot derive the binary's path from {}; pass --binary PATH",
                exe.display()
            )
        })
}
