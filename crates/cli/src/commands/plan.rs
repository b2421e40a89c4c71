//! `gpu-slicer plan`: what a node would advertise, without starting anything.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use std::path::PathBuf;

use gpu_slicer_core::config::ConfigFlags;
use gpu_slicer_core::gpu::Inventory;
use gpu_slicer_core::gpu::catalog;
use gpu_slicer_core::gpu::simulated::SimulationError;
use gpu_slicer_core::plan::{Plan, Resource, Severity, plan};
use gpu_slicer_daemon::gpus::simulate;

use super::karpenter::price_table;
use super::node_config::{self, NodeConfig, NodeConfigError};
use crate::error::InputError;
use crate::karpenter::cost::render_costs;

/// `plan --instance`: what to plan and how to print it.
pub struct PlanOptions {
    /// An instance preset or a topology file.
    pub instance: String,
    pub mig_config: Option<String>,
    pub config_file: Option<PathBuf>,
    /// Which config of a ConfigMap manifest with several.
    pub config_name: Option<String>,
    /// A price table replacing the built-in one.
    pub prices: Option<PathBuf>,
    pub json: bool,
    pub flags: ConfigFlags,
}

/// What `plan` prints, and how many of its diagnostics are errors (devices
/// the node would not advertise): any error makes the command fail, so a
/// script never takes a broken plan for a good one.
pub struct PlanReport {
    pub text: String,
    pub errors: usize,
}

/// Why `plan --instance` printed nothing.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// `--prices` cannot be read or used.
    #[error(transparent)]
    Prices(#[from] InputError),
    /// The instance's GPUs are fractions of a GPU, which have no MIG.
    #[error(
        "MIG layout '{layout}' cannot be applied: {note}. Drop --mig-config, or pick an instance with {families} GPUs"
    )]
    FractionalMig {
        layout: String,
        note: String,
        families: String,
    },
    /// The instance or topology cannot be simulated.
    #[error(transparent)]
    Simulate(#[from] SimulationError),
    /// The config file, flags or environment are refused.
    #[error(transparent)]
    Config(#[from] NodeConfigError),
    /// The daemon would refuse the configuration on this node.
    #[error("the configuration cannot be applied on {instance}: {reason}")]
    Refused { instance: String, reason: String },
}

/// The resources (and prices) a node would advertise. Diagnostics of the
/// plan go to stderr as they are found.
pub fn run(options: &PlanOptions) -> Result<PlanReport, PlanError> {
    let layout = options.mig_config.as_deref();
    let table = price_table(options.prices.as_deref())?;
    let preset = catalog::instance(&options.instance);
    let fractional = preset.and_then(crate::karpenter::fractional_note);
    if let Some(note) = &fractional
        && layout.is_some_and(|l| catalog::canonical_layout_name(l) != "all-disabled")
    {
        return Err(PlanError::FractionalMig {
            layout: layout.unwrap_or_default().to_string(),
            note: note.clone(),
            families: catalog::mig_families(),
        });
    }
    let inventory = simulate::load(&options.instance, layout)?;
    let NodeConfig {
        config,
        assumptions,
    } = node_config::resolve(
        options.config_file.as_deref(),
        options.config_name.as_deref(),
        &options.flags,
        &inventory,
    )?;
    let plan = plan(&inventory, &config);
    if let Some(reason) = plan.refusal() {
        return Err(PlanError::Refused {
            instance: options.instance.clone(),
            reason,
        });
    }
    for d in &plan.diagnostics {
        eprintln!("{d}");
    }
    let unusable = node_config::unusable_devices(&inventory, &config);
    if let Some(why) = &unusable {
        eprintln!("error: {why}");
    }
    let errors = plan
        .diagnostics
        .iter()
        .filter(|d| d.severity >= Severity::Error)
        .count()
        + usize::from(unusable.is_some());
    let text = if options.json {
        let mut value = render_json(&options.instance, &plan, &inventory, &table);
        value["assumptions"] = serde_json::json!(assumptions);
        if let Some(why) = &unusable
            && let Some(list) = value["diagnostics"].as_array_mut()
        {
            list.push(serde_json::json!(format!("error: {why}")));
        }
        format!(
            "{}\n",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        )
    } else {
        let mut text =
            render(&plan, &inventory) + &render_costs(&options.instance, &plan, &inventory, &table);
        if let Some(note) = &fractional {
            let _ = writeln!(text, "# note: {note}");
        }
        for assumption in &assumptions {
            let _ = writeln!(text, "# assumed: {assumption}");
        }
        text
    };
    Ok(PlanReport { text, errors })
}

/// One line per resource: name, count, then what stands behind it.
pub fn render(plan: &Plan, inventory: &Inventory) -> String {
    let width = plan
        .resources
        .iter()
        .map(|r| r.name.as_str().len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for resource in &plan.resources {
        let _ = writeln!(
            out,
            "{:<width$}  {:>5}  {}",
            resource.name.as_str(),
            resource.devices.len(),
            describe(resource, inventory)
        );
    }
    if plan.resources.is_empty() {
        out.push_str("(nothing to advertise)\n");
    }
    out
}

/// E.g. `1g.5gb MIG slices, 4864 MiB each, on 8 GPUs (NVIDIA A100-SXM4-40GB)`.
fn describe(resource: &Resource, inventory: &Inventory) -> String {
    let mut kinds = BTreeSet::new();
    let mut models = BTreeSet::new();
    for device in &resource.devices {
        let Some(gpu) = inventory.gpus.get(device.physical.gpu_index as usize) else {
            continue;
        };
        models.insert(gpu.model.as_str());
        let kind = match device.physical.mig {
            Some(_) => gpu
                .mig_devices
                .iter()
                .find(|m| m.uuid == device.physical.uuid)
                .map(|m| format!("{} MIG slices, {} MiB each", m.profile, m.memory_mib))
                .unwrap_or_else(|| "MIG slices".into()),
            None => format!("whole GPUs, {} MiB each", gpu.memory_mib),
        };
        kinds.insert(kind);
    }
    let mut text = kinds.into_iter().collect::<Vec<_>>().join(" + ");
    if let Some(sharing) = resource.sharing {
        let _ = write!(
            text,
            ", {} {} replicas each{}",
            sharing.replicas,
            sharing.strategy.as_str(),
            if sharing.fail_requests_greater_than_one {
                ", at most 1 per container"
            } else {
                ""
            }
        );
    }
    let gpus = resource.gpu_count();
    let _ = write!(
        text,
        ", on {gpus} GPU{} ({})",
        if gpus == 1 { "" } else { "s" },
        models.into_iter().collect::<Vec<_>>().join(", ")
    );
    text
}

/// `plan --output json`: resources, counts, and costs when priced.
fn render_json(
    instance: &str,
    plan: &Plan,
    inventory: &Inventory,
    table: &crate::karpenter::prices::PriceTable,
) -> serde_json::Value {
    let price = table.price(instance);
    let costs =
        price.map(|p| crate::karpenter::cost::resource_costs(plan, inventory, p.usd_per_hour));
    let value = serde_json::json!({
        "instance": instance,
        "resources": plan.resources.iter().map(|r| serde_json::json!({
            "name": r.name.as_str(),
            "count": r.devices.len(),
            "description": describe(r, inventory),
            "usdPerSliceHour": costs.as_ref().and_then(|c| c.iter().find(|c| c.resource == r.name.as_str())).map(|c| c.usd_per_slice_hour),
        })).collect::<Vec<_>>(),
        "diagnostics": plan.diagnostics.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        "price": price,
        "gpuFraction": catalog::instance(instance).and_then(|i| i.gpu_fraction).map(|n| format!("1/{n}")),
        "priceTable": {"origin": table.origin, "date": table.date, "currency": table.currency},
    });
    value
}
