//! The simulator's input: Nodes and Pods as `kubectl get nodes,pods -o
//! yaml` prints them (a `v1` `List`; several documents, or Lists, are read
//! in order), plus the trace annotations.
//!
//! A Node's GPUs come from its `node.kubernetes.io/instance-type` label
//! (the catalog's instance types), else GPU Feature Discovery's
//! `nvidia.com/gpu.product` and `nvidia.com/gpu.count`. Its MIG state comes
//! from the `gpu-slicer.io/mig-state` annotation when present (per GPU: MIG
//! mode and instances with placements), else from the
//! `nvidia.com/mig.config` label, placed as mig-parted creates it; no label:
//! MIG off. A Pod asks for what its containers' `nvidia.com/mig-*` limits
//! (else requests) say; a Pod with `spec.nodeName` runs there from the
//! start; finished Pods and Pods asking for no MIG slice are left out.

use std::path::Path;

use gpu_slicer_core::cluster_objects::{self, HeldFrom, SlicesError};
pub use gpu_slicer_core::cluster_objects::{NodeError, PublishedStateError as MigStateError};
use gpu_slicer_core::config;
use gpu_slicer_core::gpu::catalog::{self, MigLayout};
use gpu_slicer_core::messages::{io_error, yaml_error};
use gpu_slicer_core::mig_demand::{Cluster, Gpu, Instance, Node};
use serde_json::Value;

use super::TracePod;

/// When the pod becomes pending, in seconds from the start of the trace
/// (default 0). Ignored for pods running at the start.
pub const ARRIVAL_ANNOTATION: &str = "gpu-slicer.io/simulate-arrival-seconds";
/// How long the pod runs once bound, in seconds (for a pod running at the
/// start: how long it still runs). Default: to the end of the replay.
pub const RUN_ANNOTATION: &str = "gpu-slicer.io/simulate-run-seconds";
/// A Node's per-GPU MIG state, as the node daemon publishes it (format:
/// [`gpu_slicer_core::mig_state`]).
pub use gpu_slicer_core::node_labels::MIG_STATE as MIG_STATE_ANNOTATION;

const MIG_CONFIG_LABEL: &str = "nvidia.com/mig.config";
/// Largest input file read.
const MAX_FILE_BYTES: u64 = 64 << 20;
/// Most objects read.
const MAX_OBJECTS: usize = 200_000;
/// Longest arrival or run time: a year.
const MAX_SECONDS: u64 = 366 * 24 * 3600;

/// Why a trace cannot be replayed; each names the file and the object.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{file}: {reason}")]
    Unreadable { file: String, reason: String },
    #[error(
        "{file}: {size} bytes, more than the {MAX_FILE_BYTES} this command reads; split the trace"
    )]
    TooLarge { file: String, size: u64 },
    #[error("{file}: not valid YAML: {reason}")]
    NotYaml { file: String, reason: String },
    #[error("{file}: a List's items must be a list")]
    ItemsNotAList { file: String },
    #[error("{file}: more than {MAX_OBJECTS} objects; split the trace")]
    TooManyObjects { file: String },
    #[error("{file}: object {index} ({kind}) has no metadata.name (of at most 253 characters)")]
    NoName {
        file: String,
        index: usize,
        kind: String,
    },
    #[error("{file}: Node {name} appears twice")]
    NodeTwice { file: String, name: String },
    /// Boxed: the catalog's layout errors are large, and this is returned
    /// on every success path too.
    #[error("{file}: Node {name}: {problem}")]
    Node {
        file: String,
        name: String,
        problem: Box<NodeError>,
    },
    #[error("{file}: Pod {name}: {problem}")]
    Pod {
        file: String,
        name: String,
        problem: PodError,
    },
    #[error(
        "{file}: Pod {pod} runs on {node} but that node has no free instances left for {slices}; \
         fix the Node's {MIG_CONFIG_LABEL} label or {MIG_STATE_ANNOTATION} annotation"
    )]
    NoRoomAtStart {
        file: String,
        pod: String,
        node: String,
        slices: String,
    },
}

/// What is wrong with one Pod of the trace.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(transparent)]
    Slices(#[from] SlicesError),
    #[error("spec.nodeName {0} is not a Node of the input")]
    UnknownNode(String),
    #[error("annotation {0}: not a whole number of seconds from 0 to {MAX_SECONDS}")]
    BadSeconds(String),
}

/// The cluster at the start of the trace and the pods that come.
#[derive(Debug, Clone)]
pub struct Workload {
    pub cluster: Cluster,
    pub node_names: Vec<String>,
    pub pods: Vec<TracePod>,
    /// Pods left out (finished, or asking for no MIG slice).
    pub ignored_pods: usize,
}

impl Workload {
    /// Ten minutes past the last arrival or finish the trace names.
    pub fn default_horizon_s(&self) -> u64 {
        let last = self
            .pods
            .iter()
            .map(|p| {
                if p.running_on.is_some() {
                    p.run_s.unwrap_or(0)
                } else {
                    p.arrival_s + p.run_s.unwrap_or(0)
                }
            })
            .max()
            .unwrap_or(0);
        last + 600
    }
}

pub fn load(path: &Path) -> Result<Workload, TraceError> {
    let file = path.display().to_string();
    let unreadable = |e: std::io::Error| TraceError::Unreadable {
        file: file.clone(),
        reason: io_error(&e),
    };
    let size = std::fs::metadata(path).map_err(unreadable)?.len();
    if size > MAX_FILE_BYTES {
        return Err(TraceError::TooLarge { file, size });
    }
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    parse(&text, &file)
}

/// Parses the objects of `text`; `file` names it in messages.
pub fn parse(text: &str, file: &str) -> Result<Workload, TraceError> {
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| TraceError::NotYaml {
            file: file.to_owned(),
            reason: yaml_error(&e),
        })?;
    let mut objects: Vec<Value> = Vec::new();
    for doc in documents.into_iter().filter(|d| !d.is_null()) {
        if doc["kind"] == "List" {
            match doc.get("items") {
                Some(Value::Array(items)) => objects.extend(items.iter().cloned()),
                Some(Value::Null) | None => {}
                Some(_) => {
                    return Err(TraceError::ItemsNotAList {
                        file: file.to_owned(),
                    });
                }
            }
        } else {
            objects.push(doc);
        }
        if objects.len() > MAX_OBJECTS {
            return Err(TraceError::TooManyObjects {
                file: file.to_owned(),
            });
        }
    }
    let mut cluster = Cluster::default();
    let mut node_names = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        if object["kind"] == "Node" {
            let name = object_name(object, file, i)?;
            if node_names.contains(&name) {
                return Err(TraceError::NodeTwice {
                    file: file.to_owned(),
                    name,
                });
            }
            let node = node(object, &name).map_err(|problem| TraceError::Node {
                file: file.to_owned(),
                name: name.clone(),
                problem: Box::new(problem),
            })?;
            cluster.nodes.push(node);
            node_names.push(name);
        }
    }
    let mut pods = Vec::new();
    let mut ignored_pods = 0;
    for (i, object) in objects.iter().enumerate() {
        if object["kind"] == "Pod" {
            let name = object_name(object, file, i)?;
            let namespace = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default");
            let full = format!("{namespace}/{name}");
            let found = pod(object, &full, &node_names).map_err(|problem| TraceError::Pod {
                file: file.to_owned(),
                name: full.clone(),
                problem,
            })?;
            match found {
                Some(p) => pods.push(p),
                None => ignored_pods += 1,
            }
        }
    }
    // Pods running at the start must fit their node's free instances.
    let mut start = cluster.clone();
    for p in &pods {
        if let Some(node) = p.running_on
            && super::bind_on(&mut start, node, &p.slices).is_none()
        {
            return Err(TraceError::NoRoomAtStart {
                file: file.to_owned(),
                pod: p.name.clone(),
                node: node_names[node].clone(),
                slices: render_slices(&p.slices),
            });
        }
    }
    Ok(Workload {
        cluster,
        node_names,
        pods,
        ignored_pods,
    })
}

fn object_name(object: &Value, file: &str, index: usize) -> Result<String, TraceError> {
    match object["metadata"]["name"].as_str() {
        Some(n) if !n.is_empty() && n.len() <= 253 => Ok(n.to_string()),
        _ => Err(TraceError::NoName {
            file: file.to_owned(),
            index,
            kind: object["kind"].as_str().unwrap_or("?").to_owned(),
        }),
    }
}

fn render_slices(slices: &[(String, u32)]) -> String {
    slices
        .iter()
        .map(|(r, n)| format!("{n} × {}", config::mig_resource(r)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn label<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object["metadata"]["labels"][key].as_str()
}

fn node(object: &Value, name: &str) -> Result<Node, NodeError> {
    let Some((model, count)) = cluster_objects::node_gpus(|key| label(object, key))? else {
        return Ok(Node {
            name: name.to_string(),
            frozen: false,
            gpus: Vec::new(),
        });
    };
    let gpus = match object["metadata"]["annotations"][MIG_STATE_ANNOTATION].as_str() {
        // Who holds an instance comes from the Pods of the input (their
        // `spec.nodeName`), not from the state's `held`: a trace replays
        // those pods, and counting both would hold an instance twice.
        Some(state) => cluster_objects::gpus_from_state(model, count, state, HeldFrom::Ignored, 0)
            .map_err(NodeError::MigState)?,
        None => {
            let layout = match label(object, MIG_CONFIG_LABEL) {
                Some(l) => catalog::layout(model, l)
                    .map_err(|e| Box::new(e.in_context("this node's GPUs")))?,
                None => MigLayout::Disabled,
            };
            let instances = match &layout {
                MigLayout::Instances(profiles) => catalog::place(model, profiles)
                    .map_err(Box::new)?
                    .into_iter()
                    .map(|p| Instance {
                        profile: p.profile,
                        start: p.start,
                        held: false,
                        free_since_s: 0,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            (0..count)
                .map(|_| Gpu {
                    model,
                    mig_enabled: layout.mig_enabled() && model.mig_capable(),
                    instances: instances.clone(),
                })
                .collect()
        }
    };
    Ok(Node {
        name: name.to_string(),
        frozen: false,
        gpus,
    })
}

fn pod(object: &Value, name: &str, node_names: &[String]) -> Result<Option<TracePod>, PodError> {
    if matches!(
        object["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    ) {
        return Ok(None);
    }
    let spec = &object["spec"];
    let each = |list: &Value| -> Result<Vec<Vec<(String, u32)>>, PodError> {
        list.as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .map(container_slices)
            .collect()
    };
    let slices =
        cluster_objects::pod_slices(each(&spec["containers"])?, each(&spec["initContainers"])?)?;
    if slices.is_empty() {
        return Ok(None);
    }
    let running_on = match spec["nodeName"].as_str().filter(|n| !n.is_empty()) {
        Some(node) => Some(
            node_names
                .iter()
                .position(|n| n == node)
                .ok_or_else(|| PodError::UnknownNode(node.to_owned()))?,
        ),
        None => None,
    };
    let annotations = &object["metadata"]["annotations"];
    let seconds = |key: &str| -> Result<Option<u64>, PodError> {
        match &annotations[key] {
            Value::Null => Ok(None),
            v => v
                .as_str()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .or_else(|| v.as_u64())
                .filter(|s| *s <= MAX_SECONDS)
                .map(Some)
                .ok_or_else(|| PodError::BadSeconds(key.to_owned())),
        }
    };
    Ok(Some(TracePod {
        name: name.to_string(),
        slices,
        arrival_s: seconds(ARRIVAL_ANNOTATION)?.unwrap_or(0),
        run_s: seconds(RUN_ANNOTATION)?,
        running_on,
    }))
}

/// `nvidia.com/mig-*` of one container ([`cluster_objects::container_slices`]),
/// its quantities as YAML has them: a string or a number.
fn container_slices(container: &Value) -> Result<Vec<(String, u32)>, PodError> {
    let pairs = |table: &Value| -> Vec<(String, String)> {
        table
            .as_object()
            .map(|t| {
                t.iter()
                    .map(|(k, v)| {
                        let text = match v {
                            Value::String(s) => s.clone(),
                            Value::Number(n) => n.to_string(),
                            _ => String::new(),
                        };
                        (k.clone(), text)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let resources = &container["resources"];
    let (limits, requests) = (pairs(&resources["limits"]), pairs(&resources["requests"]));
    Ok(cluster_objects::container_slices(
        &borrowed(&limits),
        &borrowed(&requests),
    )?)
}

fn borrowed(table: &[(String, String)]) -> Vec<(&str, &str)> {
    table
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}
