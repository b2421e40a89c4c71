//! `gpu-slicer gpus`: what this node's GPUs are, from NVML (read-only): the
//! GPUs, their MIG mode, the MIG profile table with possible placements,
//! and the existing MIG devices.

use std::fmt::Write as _;
use std::path::PathBuf;

use gpu_slicer_core::mig_parted::LayoutError;
use gpu_slicer_daemon::gpus::mig_apply::{self, ApplyRequest};
use gpu_slicer_daemon::gpus::nvml::NvmlError;
use gpu_slicer_daemon::gpus::nvml::NvmlOptions;
use gpu_slicer_daemon::gpus::report::{GpuReport, report};
use gpu_slicer_daemon::host::config_file::MigConfigFileError;
use gpu_slicer_daemon::kubelet::pod_resources::{self, PodResourcesError};

pub struct GpusOptions {
    pub nvml_lib: Option<PathBuf>,
    pub driver_root: PathBuf,
    pub json: bool,
}

impl GpusOptions {
    fn nvml(&self) -> NvmlOptions {
        NvmlOptions {
            lib_path: self.nvml_lib.clone(),
            driver_root: self.driver_root.clone(),
            ..NvmlOptions::default()
        }
    }

    fn report(&self) -> Result<Vec<GpuReport>, GpusError> {
        report(&self.nvml()).map_err(|e| for_a_person(e.into()))
    }
}

/// The NVML errors a person at a node meets, with advice for them (the
/// daemon's own messages advise about its pod: runtime class, node
/// selector).
fn for_a_person(error: mig_apply::ApplyError) -> GpusError {
    use gpu_slicer_daemon::gpus::report::ReportError;
    let nvml = match error {
        mig_apply::ApplyError::Nvml(e) | mig_apply::ApplyError::Report(ReportError::Nvml(e)) => e,
        other => return GpusError::Apply(other),
    };
    match nvml {
        NvmlError::LibraryNotFound {
            library,
            driver_root,
            tried,
            detail,
        } => GpusError::NoNvml {
            library,
            driver_root,
            tried,
            detail,
        },
        NvmlError::NoPermission { call, context } => GpusError::NoPermission { call, context },
        other => GpusError::Nvml(other),
    }
}

/// Why `gpus` or `mig apply` failed, with advice for a person at the node
/// (the daemon's own messages advise about its pod: runtime class, node
/// selector).
#[derive(Debug, thiserror::Error)]
pub enum GpusError {
    /// No NVML library: not a GPU node, or the driver is elsewhere.
    #[error(
        "cannot load the NVML library {library}: {detail}. Looked under the driver root {driver_root} in \
         [{tried}], then asked the dynamic loader. This command reads the GPUs of the machine it runs on: \
         run it on a GPU node whose NVIDIA driver works (nvidia-smi lists the GPUs), or point --nvml-lib at \
         that driver's libnvidia-ml.so.1 (--driver-root-ctr-path where its root is mounted). Without a GPU, \
         `gpu-slicer plan --instance TYPE --mig-config LAYOUT` shows what a node would advertise"
    )]
    NoNvml {
        library: String,
        driver_root: String,
        tried: String,
        detail: String,
    },
    /// The device files are not open to this user.
    #[error(
        "NVML {call}{context} failed: no permission to the GPUs' device files (/dev/nvidiactl, /dev/nvidia*): \
         run the command as root on the node"
    )]
    NoPermission { call: String, context: String },
    #[error(transparent)]
    Nvml(NvmlError),
    #[error(transparent)]
    Apply(mig_apply::ApplyError),
    /// `--config-file` (mig-parted) cannot be read or used.
    #[error(transparent)]
    MigConfigFile(#[from] MigConfigFileError),
    /// The layout is not in the mig-parted file.
    #[error(transparent)]
    UnknownLayout(LayoutError),
    /// The layout exists on no MIG-capable GPU.
    #[error(
        "MIG layout '{layout}' exists on no MIG-capable GPU gpu-slicer knows (checked before reading this \
         node's GPUs): the named layouts are {names}; or give a custom list of profile=count such as \
         '1g.5gb=2,3g.20gb=1'"
    )]
    UnknownBuiltinLayout { layout: String, names: String },
    /// The kubelet's PodResources socket exists but does not answer.
    #[error(transparent)]
    PodResources(#[from] PodResourcesError),
    #[error(transparent)]
    Runtime(#[from] gpu_slicer_daemon::host::process::RuntimeError),
    #[error("cannot encode the report: {0}")]
    Json(#[from] serde_json::Error),
    /// Some GPU does not hold the layout: the report says which and why.
    #[error("{report}")]
    NotApplied { report: String },
}

/// Checks the layout name before any GPU is read, so that a typo is
/// reported as one (with the valid names) on any machine, not as whatever
/// NVML says first.
fn check_layout_name(
    layouts: &gpu_slicer_core::mig_parted::MigLayouts,
    layout: &str,
) -> Result<(), GpusError> {
    use gpu_slicer_core::gpu::catalog;
    use gpu_slicer_core::mig_parted::{GpuIdentity, MigLayouts};
    let mig_models = catalog::models().iter().filter(|m| m.mig_capable());
    match layouts {
        MigLayouts::File { .. } => {
            // An unknown name is refused before the GPU is looked at, so
            // any MIG-capable model serves to ask.
            let Some(model) = mig_models.into_iter().next() else {
                return Ok(());
            };
            let gpu = GpuIdentity {
                index: 0,
                pci_device_id: 0,
                model,
            };
            match layouts.resolve(layout, gpu) {
                Err(e @ LayoutError::UnknownConfig { .. }) => Err(GpusError::UnknownLayout(e)),
                _ => Ok(()),
            }
        }
        MigLayouts::Builtin => {
            let models: Vec<_> = mig_models.collect();
            if models.iter().any(|m| catalog::layout(m, layout).is_ok()) {
                return Ok(());
            }
            let mut names: Vec<String> = models
                .iter()
                .flat_map(|m| catalog::layout_names(m))
                .collect();
            names.sort();
            names.dedup();
            Err(GpusError::UnknownBuiltinLayout {
                layout: layout.to_string(),
                names: names.join(", "),
            })
        }
    }
}

pub fn run(options: &GpusOptions) -> Result<String, GpusError> {
    let gpus = options.report()?;
    if options.json {
        return Ok(serde_json::to_string_pretty(&gpus)? + "\n");
    }
    Ok(text(&gpus))
}

fn on_off(b: bool) -> &'static str {
    if b { "enabled" } else { "disabled" }
}

/// The report as a person reads it.
pub fn text(gpus: &[GpuReport]) -> String {
    let mut out = String::new();
    if gpus.is_empty() {
        out.push_str("no GPUs\n");
    }
    for gpu in gpus {
        let _ = write!(
            out,
            "GPU {}  {}  {}  {} MiB",
            gpu.index, gpu.model, gpu.uuid, gpu.memory_mib
        );
        let Some(mig) = &gpu.mig else {
            out.push_str("  MIG: not supported\n\n");
            continue;
        };
        let _ = writeln!(
            out,
            "  MIG: {} (pending: {})",
            on_off(mig.current),
            on_off(mig.pending)
        );
        let _ = writeln!(
            out,
            "  {:<8} {:>3}  {:<12} {:>9} {:>6} {:>10} {:>4} {:>3} {:>4} {:>4} {:>4} {:>4}  placements (start/size)",
            "profile",
            "id",
            "name",
            "instances",
            "slices",
            "memory MiB",
            "SMs",
            "CE",
            "DEC",
            "ENC",
            "JPG",
            "OFA"
        );
        for p in &mig.profiles {
            let placements: Vec<String> = p
                .placements
                .iter()
                .map(|(start, size)| format!("{start}/{size}"))
                .collect();
            let _ = writeln!(
                out,
                "  {:<8} {:>3}  {:<12} {:>9} {:>6} {:>10} {:>4} {:>3} {:>4} {:>4} {:>4} {:>4}  {}",
                p.profile,
                p.id,
                p.name,
                p.instances,
                p.slices,
                p.memory_mib,
                p.multiprocessors,
                p.copy_engines,
                p.decoders,
                p.encoders,
                p.jpegs,
                p.ofas,
                if placements.is_empty() {
                    "-".to_string()
                } else {
                    placements.join(" ")
                }
            );
        }
        if mig.devices.is_empty() {
            out.push_str("  MIG devices: none\n");
        } else {
            out.push_str("  MIG devices:\n");
            for d in &mig.devices {
                let _ = writeln!(
                    out,
                    "    {}:{}  {}  {}  GI {} CI {}  {} MiB",
                    gpu.index,
                    d.index,
                    d.profile,
                    d.uuid,
                    d.gpu_instance_id,
                    d.compute_instance_id,
                    d.memory_mib
                );
            }
        }
        out.push('\n');
    }
    out
}

/// `gpu-slicer mig apply --dry-run LAYOUT`: the NVML operations that would
/// give this node's GPUs `layout`, and why; nothing is changed.
pub fn mig_apply_dry_run(
    options: &GpusOptions,
    config_file: Option<&std::path::Path>,
    layout: &str,
) -> Result<String, GpusError> {
    let layouts = gpu_slicer_daemon::host::config_file::mig_layouts(config_file)?;
    check_layout_name(&layouts, layout)?;
    let request = ApplyRequest {
        layouts: &layouts,
        layout,
        force: false,
        pod_devices: Vec::new(),
    };
    let changes = mig_apply::plan(&options.nvml(), &request).map_err(for_a_person)?;
    Ok(gpu_slicer_core::mig_change::render(&changes, layout))
}

/// `gpu-slicer mig apply LAYOUT`: applies the layout through NVML on this
/// node. `Ok` with what each GPU got when every GPU holds the layout, `Err`
/// with the same report and why when one does not.
pub fn mig_apply(
    options: &GpusOptions,
    config_file: Option<&std::path::Path>,
    layout: &str,
    force: bool,
    pod_resources_socket: &std::path::Path,
) -> Result<String, GpusError> {
    use gpu_slicer_core::mig_change::{ConfigState, Outcome, summarize};
    let layouts = gpu_slicer_daemon::host::config_file::mig_layouts(config_file)?;
    check_layout_name(&layouts, layout)?;
    let mut out = String::new();
    // On a Kubernetes node the kubelet says which pods hold devices; a host
    // without a kubelet has no socket, and only processes are checked.
    let mut pod_devices = Vec::new();
    if !force {
        if pod_resources_socket.exists() {
            gpu_slicer_daemon::host::process::block_on(async {
                pod_devices = pod_resources::list(pod_resources_socket).await?;
                Ok::<(), GpusError>(())
            })?;
        } else {
            let _ = writeln!(
                out,
                "note: no kubelet PodResources socket at {}: pods holding devices are not checked, only processes",
                pod_resources_socket.display()
            );
        }
    }
    let request = ApplyRequest {
        layouts: &layouts,
        layout,
        force,
        pod_devices,
    };
    let outcomes = mig_apply::apply(&options.nvml(), &request).map_err(for_a_person)?;
    for g in &outcomes {
        let what = match &g.outcome {
            Outcome::Unchanged => "unchanged",
            Outcome::Applied => "applied",
            Outcome::Busy { .. } => "refused: in use",
            Outcome::Blocked { .. } => "refused: the target does not keep a held instance",
            Outcome::ResetRequired { .. } => "MIG mode pending: needs a GPU reset",
            Outcome::Failed { .. } => "failed",
        };
        let _ = writeln!(out, "GPU {} ({}): {what}", g.index, g.uuid);
    }
    let (state, message) = summarize(&outcomes, layout);
    let _ = writeln!(out, "{message}");
    match state {
        ConfigState::Success => Ok(out),
        _ => Err(GpusError::NotApplied {
            report: out.trim_end().to_string(),
        }),
    }
}
