//! `gpu-slicer karpenter overlays`, `gpu-slicer lint`, and the price /
//! workload parts of `gpu-slicer plan`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::InputError;
use crate::karpenter::cost::CostError;
use crate::karpenter::overlays::{PlanInstanceError, RenderError};
use crate::karpenter::{
    self, CONFIG_LABEL, Document, MIG_CONFIG_LABEL, cost, lint, overlays, prices::PriceTable,
};
use gpu_slicer_core::config::{Config, ConfigError};
use gpu_slicer_core::gpu::catalog::{self, InstanceType};

/// Output format of the Karpenter commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

/// Why `karpenter overlays` printed nothing.
#[derive(Debug, thiserror::Error)]
pub enum OverlaysError {
    /// A file given cannot be read or used.
    #[error(transparent)]
    Input(#[from] InputError),
    /// `--config-file` is neither a config nor a ConfigMap holding one.
    #[error(
        "{0}; --config-file takes a gpu-slicer config (version: v1) or a ConfigMap holding one"
    )]
    NotAConfig(#[source] ConfigError),
    /// `--instance-type` names no preset.
    #[error("unknown instance type '{name}'; known: {known}")]
    UnknownInstance { name: String, known: String },
    /// Neither `--nodepool` nor a NodePool in `--nodepool-file`.
    #[error("name the NodePool(s) the overlays are for: --nodepool NAME (or --nodepool-file FILE)")]
    NoNodePool,
    /// The NodePool itself is invalid: its overlays would be too.
    #[error(
        "NodePool {pool} would be rejected by the API server, so no overlay is generated for it: {reasons}"
    )]
    PoolRejected { pool: String, reasons: String },
    /// `--nodepool` names a pool that `--nodepool-file` lacks.
    #[error("NodePool {pool} is not in {files}; check --nodepool")]
    PoolNotInFiles { pool: String, files: String },
    /// The pool launches types that cannot have the MIG layout.
    #[error(
        "NodePool {pool} can launch {dropped}, whose GPUs have no MIG layout '{layout}' (no MIG, or not those \
         profiles): MIG Manager fails there and no overlay can say what they advertise. Narrow the pool's \
         instance types (`gpu-slicer lint` names the rule), or pass --instance-type for the types to cover"
    )]
    LayoutMissing {
        pool: String,
        layout: String,
        dropped: String,
    },
    /// No preset fits the pool and layout.
    #[error(
        "no instance preset fits NodePool {pool} with MIG layout {layout}; pass --instance-type"
    )]
    NoInstance { pool: String, layout: String },
    /// A preset's plan has an error.
    #[error(transparent)]
    Plan(#[from] PlanInstanceError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("cannot render JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Why `lint` checked nothing.
#[derive(Debug, thiserror::Error)]
pub enum LintError {
    #[error("name the files to lint: gpu-slicer lint FILE...")]
    NoFiles,
    /// A file cannot be read or is not YAML.
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("cannot render JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Why `plan --workload` ranked nothing.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// The workload or price file cannot be read or used.
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Cost(#[from] CostError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("cannot render JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Options of `gpu-slicer karpenter overlays`.
#[derive(Debug, Clone, Default)]
pub struct OverlayOptions {
    /// gpu-slicer config: a `version: v1` file or a ConfigMap manifest.
    pub config_file: Option<PathBuf>,
    /// Which config of a ConfigMap with several.
    pub config_name: Option<String>,
    /// MIG layout; default: the NodePool's `nvidia.com/mig.config` label.
    pub mig_config: Option<String>,
    pub nodepools: Vec<String>,
    /// File(s) holding the NodePool(s).
    pub nodepool_files: Vec<PathBuf>,
    pub instance_types: Vec<String>,
}

/// The configs of a `--config-file`: a ConfigMap (several keys allowed) or
/// a bare `version: v1` file.
pub fn load_configs(path: &Path) -> Result<BTreeMap<String, Config>, OverlaysError> {
    let docs = karpenter::load_documents(path)?;
    for doc in &docs {
        if doc.kind() == "ConfigMap"
            && let Some(configs) = karpenter::configs_of(doc)
        {
            return Ok(configs?);
        }
    }
    let config =
        gpu_slicer_daemon::host::config_file::load_file(path).map_err(OverlaysError::NotAConfig)?;
    Ok(BTreeMap::from([("config.yaml".to_string(), config)]))
}

fn instance_preset(name: &str) -> Result<&'static InstanceType, OverlaysError> {
    catalog::instance(name).ok_or_else(|| OverlaysError::UnknownInstance {
        name: name.to_string(),
        known: catalog::instances()
            .iter()
            .map(|i| i.name)
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Generates the overlays and renders them as YAML (or JSON).
pub fn overlays_command(opts: &OverlayOptions, output: Output) -> Result<String, OverlaysError> {
    let mut pool_docs: Vec<Document> = Vec::new();
    for f in &opts.nodepool_files {
        pool_docs.extend(
            karpenter::load_documents(f)?
                .into_iter()
                .filter(|d| d.kind() == "NodePool"),
        );
    }
    let mut nodepools = opts.nodepools.clone();
    if nodepools.is_empty() {
        nodepools = pool_docs.iter().map(|d| d.name().to_string()).collect();
    }
    if nodepools.is_empty() {
        return Err(OverlaysError::NoNodePool);
    }
    let configs = match &opts.config_file {
        Some(path) => Some((path.display().to_string(), load_configs(path)?)),
        None => None,
    };
    let mut all = Vec::new();
    let mut header = String::new();
    for pool in &nodepools {
        let doc = pool_docs.iter().find(|d| d.name() == pool);
        // Defect: a pool the API server rejects got overlays with invalid
        // names (and the command exited 0).
        let rejections = match doc {
            Some(d) => lint::api::nodepool_rejections(&d.value),
            None => lint::api::nodepool_name_problem(pool)
                .map(|why| vec![("metadata.name".to_string(), why)])
                .unwrap_or_default(),
        };
        if !rejections.is_empty() {
            return Err(OverlaysError::PoolRejected {
                pool: pool.clone(),
                reasons: rejections
                    .iter()
                    .map(|(path, why)| format!("{path}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }
        if doc.is_none() && !opts.nodepool_files.is_empty() {
            return Err(OverlaysError::PoolNotInFiles {
                pool: pool.clone(),
                files: opts
                    .nodepool_files
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let layout = opts.mig_config.clone().or_else(|| {
            doc.and_then(|d| karpenter::nodepool_label(&d.value, MIG_CONFIG_LABEL))
                .map(str::to_string)
        });
        let layout = layout.as_deref().filter(|l| *l != "all-disabled");
        let wanted_name = opts.config_name.clone().or_else(|| {
            doc.and_then(|d| karpenter::nodepool_label(&d.value, CONFIG_LABEL))
                .map(str::to_string)
        });
        let (config_name, config) = match &configs {
            Some((source, map)) => {
                let (n, c) = karpenter::pick_config(map, wanted_name.as_deref(), source)?;
                (Some(n.to_string()), c.clone())
            }
            None => (None, karpenter::default_config(layout)),
        };
        let instances: Vec<&'static InstanceType> = if opts.instance_types.is_empty() {
            let reqs = doc.map(|d| karpenter::nodepool_requirements(&d.value));
            // MIG-capable presets get the layout; the others only when MIG is off.
            let fitting = overlays::default_instances(reqs.as_deref(), layout);
            // Defect: the pool's other types were dropped without a word.
            if let (Some(reqs), Some(layout)) = (&reqs, layout) {
                let dropped: Vec<&str> = karpenter::instances_matching(reqs)
                    .into_iter()
                    .filter(|i| !fitting.iter().any(|f| f.name == i.name))
                    .map(|i| i.name)
                    .collect();
                if !dropped.is_empty() {
                    return Err(OverlaysError::LayoutMissing {
                        pool: pool.clone(),
                        layout: layout.to_string(),
                        dropped: dropped.join(", "),
                    });
                }
            }
            fitting
        } else {
            opts.instance_types
                .iter()
                .map(|t| instance_preset(t))
                .collect::<Result<_, _>>()?
        };
        if instances.is_empty() {
            return Err(OverlaysError::NoInstance {
                pool: pool.clone(),
                layout: layout.unwrap_or("all-disabled").to_string(),
            });
        }
        let request = overlays::Request {
            nodepools: vec![pool.clone()],
            instances,
            layout,
            config: &config,
            config_name: config_name.as_deref(),
        };
        all.extend(overlays::overlays(&request)?);
        if header.is_empty() {
            header = overlays::header(layout, config_name.as_deref());
        }
    }
    match output {
        Output::Json => Ok(serde_json::to_string_pretty(&all)? + "\n"),
        Output::Text => Ok(overlays::to_yaml(&all, &header)?),
    }
}

/// Lints files; returns the rendering and whether any error was found.
pub fn lint_command(files: &[PathBuf], output: Output) -> Result<(String, bool), LintError> {
    if files.is_empty() {
        return Err(LintError::NoFiles);
    }
    let findings = lint::lint_files(files)?;
    let failed = findings.iter().any(|f| f.severity == lint::Severity::Error);
    let text = match output {
        Output::Json => serde_json::to_string_pretty(&findings)? + "\n",
        Output::Text => lint::render(&findings),
    };
    Ok((text, failed))
}

/// The price table: `--prices FILE` or the built-in one.
pub fn price_table(prices: Option<&Path>) -> Result<PriceTable, InputError> {
    match prices {
        Some(p) => PriceTable::load(p),
        None => Ok(karpenter::prices::builtin()),
    }
}

/// `gpu-slicer plan --workload FILE`.
pub fn workload_command(
    workload: &Path,
    prices: Option<&Path>,
    nodepool: &str,
    output: Output,
) -> Result<WorkloadReport, WorkloadError> {
    let table = price_table(prices)?;
    let source = workload.display().to_string();
    let text = std::fs::read_to_string(workload).map_err(|e| InputError::Unreadable {
        what: format!("the workload file {source}"),
        reason: gpu_slicer_core::messages::io_error(&e),
        hint: Some("check --workload".to_string()),
    })?;
    let workload = cost::parse_workload(&text, &source)?;
    let ranking = cost::rank(&workload, &table, nodepool)?;
    let text = match output {
        Output::Json => serde_json::to_string_pretty(&ranking)? + "\n",
        Output::Text => cost::render_ranking(&ranking, 10)?,
    };
    let errors = ranking
        .groups
        .iter()
        .filter_map(|g| {
            cost::unplaced(g).map(|why| {
                format!(
                    "no instance type holds the pods of pool '{}': {why}",
                    g.nodepool
                )
            })
        })
        .collect();
    Ok(WorkloadReport { text, errors })
}

/// What `plan --workload` prints, and the pods it could not place (the
/// command fails when there are any).
pub struct WorkloadReport {
    pub text: String,
    pub errors: Vec<String>,
}
