//! `gpu-slicer simulate`: a cluster and a workload, as `kubectl get
//! nodes,pods -o yaml` prints them, replayed through the demand-driven MIG
//! decision ([`gpu_slicer_core::mig_demand`]) and a model of the default
//! scheduler's fit check, under each policy on the same input.
//!
//! What is modelled: the `nvidia.com/mig-*` extended resources (the
//! scheduler's NodeResourcesFit for them, first node that fits in the
//! input's order), pods arriving and finishing at the trace's times, the
//! controller deciding when nos's batch window closes, and a change taking
//! effect before the next step. Not modelled: CPU and memory, node
//! selectors, taints and affinity, scheduler scoring, Karpenter launching
//! nodes, and the seconds a GPU instance takes to create.

mod input;
mod svg;

use std::fmt::Write as _;
use std::path::PathBuf;

use gpu_slicer_core::mig_demand::{
    BatchWindow, Cluster, Demand, GpuChange, Instance, PendingPod, PodOutcome, Policy, Settings,
    apply, decide,
};
use serde::Serialize;

pub use input::{
    ARRIVAL_ANNOTATION, MIG_STATE_ANNOTATION, MigStateError, NodeError, PodError, RUN_ANNOTATION,
    TraceError, Workload,
};
pub use svg::SvgError;

/// Why `simulate` replayed nothing.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error(
        "the replay would take {steps} steps of {step_s} s (at most {MAX_STEPS}); raise --step-seconds or lower --horizon-seconds"
    )]
    TooManySteps { steps: u64, step_s: u64 },
    #[error(
        "{pods} pods over {steps} steps is more than this command replays ({MAX_POD_STEPS} pod-steps); \
         raise --step-seconds, lower --horizon-seconds or split the trace"
    )]
    TooMuchWork { pods: usize, steps: u64 },
    #[error(transparent)]
    Svg(#[from] SvgError),
    #[error("cannot encode the report: {0}")]
    Json(#[from] serde_json::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SimulateOutput {
    Text,
    Json,
}

/// `gpu-slicer simulate`'s options.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Nodes and pods as a v1 List (`kubectl get nodes,pods -o yaml`), with optional trace annotations.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Policies to compare (default: all three).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "POLICY")]
    pub policy: Vec<PolicyArg>,
    /// Seconds between two observations of the cluster (scheduler and controller).
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub step_seconds: u64,
    /// The batch closes this long after its first pending pod (nos's batchWindowTimeoutSeconds).
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub batch_timeout_seconds: u64,
    /// The batch closes when no pod has become pending for this long (nos's batchWindowIdleSeconds).
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub batch_idle_seconds: u64,
    /// A free instance younger than this is never destroyed (hysteresis against flapping layouts).
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub min_free_age_seconds: u64,
    /// End of the replay (default: 10 minutes after the last arrival or finish the trace names).
    #[arg(long, value_name = "SECONDS")]
    pub horizon_seconds: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub output: SimulateOutput,
    /// Also draw pending pods and idle slices over time, per policy, into this SVG file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyArg {
    Fixed,
    WholeGpu,
    PerInstance,
}

impl From<PolicyArg> for Policy {
    fn from(p: PolicyArg) -> Policy {
        match p {
            PolicyArg::Fixed => Policy::Fixed,
            PolicyArg::WholeGpu => Policy::WholeGpu,
            PolicyArg::PerInstance => Policy::PerInstance,
        }
    }
}

/// The longest replay, in steps: a bound on the work a trace can ask for.
const MAX_STEPS: u64 = 1_000_000;
/// The most pods × steps a replay may take (about a minute of work).
const MAX_POD_STEPS: u64 = 2_000_000_000;

/// Runs the command: the report as text or JSON.
pub fn run(args: &SimulateArgs) -> Result<String, SimulateError> {
    let workload = input::load(&args.file)?;
    let policies: Vec<Policy> = if args.policy.is_empty() {
        Policy::ALL.to_vec()
    } else {
        let mut p: Vec<Policy> = Vec::new();
        for &asked in &args.policy {
            if !p.contains(&asked.into()) {
                p.push(asked.into());
            }
        }
        p
    };
    let options = Options {
        step_s: args.step_seconds,
        batch_timeout_s: args.batch_timeout_seconds,
        batch_idle_s: args.batch_idle_seconds,
        min_free_age_s: args.min_free_age_seconds,
        horizon_s: args
            .horizon_seconds
            .unwrap_or_else(|| workload.default_horizon_s()),
    };
    let steps = options.horizon_s / options.step_s;
    if steps > MAX_STEPS {
        return Err(SimulateError::TooManySteps {
            steps,
            step_s: options.step_s,
        });
    }
    // Every step looks at every pod: bound the work as well as the steps.
    let work = steps.saturating_mul(workload.pods.len() as u64);
    if work > MAX_POD_STEPS {
        return Err(SimulateError::TooMuchWork {
            pods: workload.pods.len(),
            steps,
        });
    }
    let runs: Vec<Run> = policies
        .iter()
        .map(|&p| replay(&workload, p, &options))
        .collect();
    if let Some(path) = &args.svg {
        svg::draw(path, &runs, &args.file.display().to_string())?;
    }
    Ok(match args.output {
        SimulateOutput::Json => {
            let report = JsonReport {
                input: args.file.display().to_string(),
                nodes: workload.cluster.nodes.len(),
                gpus: workload.cluster.nodes.iter().map(|n| n.gpus.len()).sum(),
                pods: workload.pods.len(),
                step_seconds: options.step_s,
                horizon_seconds: options.horizon_s,
                policies: &runs,
            };
            let mut text = serde_json::to_string_pretty(&report)?;
            text.push('\n');
            text
        }
        SimulateOutput::Text => render_text(&workload, &runs, &options, &args.file),
    })
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub step_s: u64,
    pub batch_timeout_s: u64,
    pub batch_idle_s: u64,
    pub min_free_age_s: u64,
    pub horizon_s: u64,
}

/// One pod of the trace.
#[derive(Debug, Clone)]
pub struct TracePod {
    pub name: String,
    /// `nvidia.com/mig-<this>` and how many, merged over containers.
    pub slices: Vec<(String, u32)>,
    pub arrival_s: u64,
    /// `None`: runs to the end of the replay.
    pub run_s: Option<u64>,
    /// Running at the start on this node (index into the cluster).
    pub running_on: Option<usize>,
}

/// What one policy did with the trace.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub policy: &'static str,
    pub summary: Summary,
    pub decisions: Vec<Decision>,
    /// Pending pods and idle compute slices at every step.
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Pods of the trace that were pending at some point (not running at the start).
    pub pods_pending_at_some_point: usize,
    pub pods_scheduled: usize,
    pub pods_never_scheduled: usize,
    /// Over every pod that was pending; one never scheduled counts until the horizon.
    pub mean_pending_seconds: f64,
    pub p99_pending_seconds: u64,
    /// Compute slices of MIG GPUs that no running pod used, summed over the replay.
    pub idle_slice_hours: f64,
    /// The same, summed only over the time some pod was pending: capacity
    /// left unused while demand waited.
    pub idle_slice_hours_while_pending: f64,
    /// GPUs changed (one GPU changed in one decision counts once).
    pub reconfigurations: usize,
    pub instances_destroyed: usize,
    pub instances_created: usize,
    /// Running pods whose instance a change destroyed.
    pub disruptions: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub at_seconds: u64,
    pub pending: usize,
    pub unlocked: usize,
    pub changes: Vec<ChangeReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChangeReport {
    pub node: String,
    pub gpu: usize,
    pub whole_gpu: bool,
    pub destroy: Vec<String>,
    pub create: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    pub at_seconds: u64,
    pub pending: usize,
    pub idle_slices: u32,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    input: String,
    nodes: usize,
    gpus: usize,
    pods: usize,
    step_seconds: u64,
    horizon_seconds: u64,
    policies: &'a [Run],
}

/// Where a bound pod's slices are: (node, GPU, start) per slice.
type Binding = Vec<(usize, usize, u32)>;

#[derive(Debug, Clone)]
enum PodState {
    NotYet,
    Pending,
    Running { ends_s: Option<u64>, on: Binding },
    Done,
}

/// Replays the trace under one policy.
pub fn replay(workload: &Workload, policy: Policy, options: &Options) -> Run {
    let mut cluster = workload.cluster.clone();
    let mut states: Vec<PodState> = vec![PodState::NotYet; workload.pods.len()];
    let mut pending_since: Vec<Option<u64>> = vec![None; workload.pods.len()];
    let mut waited: Vec<Option<u64>> = vec![None; workload.pods.len()];
    // Pods running at the start hold their instances before anything else.
    for (k, pod) in workload.pods.iter().enumerate() {
        if let Some(node) = pod.running_on
            && let Some(on) = bind_on(&mut cluster, node, &pod.slices)
        {
            states[k] = PodState::Running {
                ends_s: pod.run_s,
                on,
            };
        }
    }
    let mut window = BatchWindow::new(options.batch_timeout_s, options.batch_idle_s);
    let mut summary = Summary::default();
    let mut decisions = Vec::new();
    let mut samples = Vec::new();
    let mut idle_slice_seconds: u64 = 0;
    let mut idle_while_pending_seconds: u64 = 0;
    let mut t = 0;
    while t <= options.horizon_s {
        // Pods that finish release their instances.
        for state in states.iter_mut() {
            if let PodState::Running {
                ends_s: Some(end),
                on,
            } = state
                && *end <= t
            {
                release(&mut cluster, on, t);
                *state = PodState::Done;
            }
        }
        // Arrivals.
        let mut new_pending = 0;
        for (k, pod) in workload.pods.iter().enumerate() {
            if matches!(states[k], PodState::NotYet) && pod.arrival_s <= t {
                states[k] = PodState::Pending;
                pending_since[k] = Some(pod.arrival_s);
                new_pending += 1;
            }
        }
        // The scheduler: pending pods in arrival order, first node that fits.
        let mut queue: Vec<usize> = (0..workload.pods.len())
            .filter(|&k| matches!(states[k], PodState::Pending))
            .collect();
        queue.sort_by_key(|&k| (workload.pods[k].arrival_s, k));
        for &k in &queue {
            let pod = &workload.pods[k];
            let bound =
                (0..cluster.nodes.len()).find_map(|n| bind_on(&mut cluster, n, &pod.slices));
            if let Some(on) = bound {
                waited[k] = Some(t - pod.arrival_s);
                states[k] = PodState::Running {
                    ends_s: pod.run_s.map(|r| t + r),
                    on,
                };
            }
        }
        let pending: Vec<usize> = queue
            .into_iter()
            .filter(|&k| matches!(states[k], PodState::Pending))
            .collect();
        // The controller, when the batch window closes.
        if window.observe(t, new_pending, pending.len()) && policy != Policy::Fixed {
            let demand = Demand {
                pods: pending
                    .iter()
                    .map(|&k| PendingPod {
                        name: workload.pods[k].name.clone(),
                        slices: workload.pods[k].slices.clone(),
                        eligible: None,
                    })
                    .collect(),
                in_flight: Vec::new(),
            };
            let settings = Settings {
                policy,
                now_s: t,
                min_free_age_s: options.min_free_age_s,
            };
            let plan = decide(&cluster, &demand, &settings);
            if !plan.changes.is_empty() {
                summary.disruptions += disrupted(&cluster, &plan.changes);
                summary.reconfigurations += plan.changes.len();
                for c in &plan.changes {
                    summary.instances_destroyed += c.destroy.len();
                    summary.instances_created += c.create.len();
                }
                decisions.push(Decision {
                    at_seconds: t,
                    pending: pending.len(),
                    unlocked: plan.count(|o| matches!(o, PodOutcome::Unlocked { .. })),
                    changes: plan
                        .changes
                        .iter()
                        .map(|c| report_change(&workload.node_names, c))
                        .collect(),
                });
                cluster = apply(&cluster, &plan, t);
            }
        }
        let idle = idle_slices(&cluster);
        samples.push(Sample {
            at_seconds: t,
            pending: pending.len(),
            idle_slices: idle,
        });
        idle_slice_seconds += u64::from(idle) * options.step_s;
        if !pending.is_empty() {
            idle_while_pending_seconds += u64::from(idle) * options.step_s;
        }
        t += options.step_s;
    }
    // Pending times: scheduled pods as they waited, the others until the end.
    let mut times: Vec<u64> = Vec::new();
    for k in 0..workload.pods.len() {
        let Some(since) = pending_since[k] else {
            continue;
        };
        summary.pods_pending_at_some_point += 1;
        match waited[k] {
            Some(w) => {
                summary.pods_scheduled += 1;
                times.push(w);
            }
            None => {
                summary.pods_never_scheduled += 1;
                times.push(options.horizon_s.saturating_sub(since));
            }
        }
    }
    times.sort_unstable();
    if !times.is_empty() {
        summary.mean_pending_seconds = times.iter().sum::<u64>() as f64 / times.len() as f64;
        // Nearest rank.
        let rank = (times.len() * 99).div_ceil(100).max(1);
        summary.p99_pending_seconds = times[rank - 1];
    }
    summary.idle_slice_hours = idle_slice_seconds as f64 / 3600.0;
    summary.idle_slice_hours_while_pending = idle_while_pending_seconds as f64 / 3600.0;
    Run {
        policy: policy.name(),
        summary,
        decisions,
        samples,
    }
}

/// Binds a pod's slices on one node if its free instances fit them all.
fn bind_on(cluster: &mut Cluster, node: usize, slices: &[(String, u32)]) -> Option<Binding> {
    let gpus = &mut cluster.nodes[node].gpus;
    let mut taken: Vec<(usize, usize)> = Vec::new();
    for (resource, count) in slices {
        for _ in 0..*count {
            let found = gpus
                .iter()
                .enumerate()
                .filter(|(_, gpu)| gpu.mig_enabled)
                .find_map(|(g, gpu)| {
                    gpu.instances
                        .iter()
                        .enumerate()
                        .find(|(i, inst)| {
                            !inst.held
                                && !taken.contains(&(g, *i))
                                && is_resource(inst.profile.name, resource)
                        })
                        .map(|(i, _)| (g, i))
                })?;
            taken.push(found);
        }
    }
    for &(g, i) in &taken {
        gpus[g].instances[i].held = true;
    }
    Some(
        taken
            .iter()
            .map(|&(g, i)| (node, g, gpus[g].instances[i].start))
            .collect(),
    )
}

/// The profile's resource name is `resource` (`1g.5gb+me` is `1g.5gb.me`),
/// compared without allocating: the scheduler model asks it very often.
fn is_resource(profile: &str, resource: &str) -> bool {
    profile.len() == resource.len()
        && profile
            .bytes()
            .zip(resource.bytes())
            .all(|(p, r)| p == r || (p == b'+' && r == b'.'))
}

fn release(cluster: &mut Cluster, on: &Binding, now_s: u64) {
    for &(node, gpu, start) in on {
        if let Some(i) = cluster.nodes[node].gpus[gpu]
            .instances
            .iter_mut()
            .find(|i| i.start == start && i.held)
        {
            i.held = false;
            i.free_since_s = now_s;
        }
    }
}

/// Held instances the changes would destroy: counted, never expected.
fn disrupted(cluster: &Cluster, changes: &[GpuChange]) -> usize {
    changes
        .iter()
        .map(|c| {
            let gpu = &cluster.nodes[c.node].gpus[c.gpu];
            c.destroy
                .iter()
                .filter(|d| {
                    gpu.instances
                        .iter()
                        .any(|i: &Instance| i.held && i.start == d.start && i.profile == d.profile)
                })
                .count()
        })
        .sum()
}

/// Compute slices of MIG GPUs that no running pod uses.
fn idle_slices(cluster: &Cluster) -> u32 {
    cluster
        .nodes
        .iter()
        .flat_map(|n| &n.gpus)
        .filter(|g| g.mig_enabled)
        .filter_map(|g| {
            let total = g.model.mig.as_ref()?.compute_slices;
            let used: u32 = g
                .instances
                .iter()
                .filter(|i| i.held)
                .map(|i| i.profile.compute_slices)
                .sum();
            Some(total.saturating_sub(used))
        })
        .sum()
}

fn report_change(node_names: &[String], c: &GpuChange) -> ChangeReport {
    let at =
        |i: &gpu_slicer_core::mig_demand::InstanceAt| format!("{}@{}", i.profile.name, i.start);
    ChangeReport {
        node: node_names[c.node].clone(),
        gpu: c.gpu,
        whole_gpu: c.whole_gpu,
        destroy: c.destroy.iter().map(at).collect(),
        create: c.create.iter().map(at).collect(),
    }
}

fn render_text(
    workload: &Workload,
    runs: &[Run],
    options: &Options,
    file: &std::path::Path,
) -> String {
    let mut out = String::new();
    let gpus: usize = workload.cluster.nodes.iter().map(|n| n.gpus.len()).sum();
    let _ = writeln!(
        out,
        "{}: {}, {}, {}{}; replayed for {} s in steps of {} s",
        file.display(),
        counted(workload.cluster.nodes.len(), "node"),
        counted(gpus, "GPU"),
        counted(workload.pods.len(), "pod"),
        match workload.ignored_pods {
            0 => String::new(),
            n => format!(
                " ({} finished or asking for no MIG slice left out)",
                counted(n, "pod")
            ),
        },
        options.horizon_s,
        options.step_s
    );
    for run in runs {
        let _ = writeln!(
            out,
            "\n{}: {} that changed something",
            run.policy,
            counted(run.decisions.len(), "decision")
        );
        for d in &run.decisions {
            let _ = writeln!(
                out,
                "  t={}s: {} pending, {} unlocked",
                d.at_seconds, d.pending, d.unlocked
            );
            for c in &d.changes {
                let _ = writeln!(
                    out,
                    "    {} GPU {}{}: destroy [{}] create [{}]",
                    c.node,
                    c.gpu,
                    if c.whole_gpu { " (whole GPU)" } else { "" },
                    c.destroy.join(", "),
                    c.create.join(", ")
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "\n{:<14}{:>11}{:>7}{:>11}{:>10}{:>14}{:>17}{:>11}{:>13}",
        "policy",
        "scheduled",
        "never",
        "mean wait",
        "p99 wait",
        "idle slice-h",
        "idle while wait",
        "reconfigs",
        "disruptions"
    );
    for run in runs {
        let s = &run.summary;
        let _ = writeln!(
            out,
            "{:<14}{:>11}{:>7}{:>10.0}s{:>9}s{:>14.1}{:>17.1}{:>11}{:>13}",
            run.policy,
            format!("{}/{}", s.pods_scheduled, s.pods_pending_at_some_point),
            s.pods_never_scheduled,
            s.mean_pending_seconds,
            s.p99_pending_seconds,
            s.idle_slice_hours,
            s.idle_slice_hours_while_pending,
            s.reconfigurations,
            s.disruptions
        );
    }
    let _ = writeln!(
        out,
        "\nwait: seconds from pending to bound (a pod never bound counts until the end); \
         idle: compute slices of MIG GPUs no pod runs on, in slice-hours"
    );
    out
}

/// `1 node`, `2 nodes`.
fn counted(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}
