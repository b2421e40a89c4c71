//! Nodes and Pods, as the API server serves them, read into the input of the
//! demand-driven MIG decision ([`crate::mig_demand`]): which GPUs a Node has
//! (its labels), what they hold (its published [`crate::mig_state`]), and
//! how many MIG slices a Pod asks for (its containers' limits, else
//! requests). `gpu-slicer simulate` and `gpu-slicer-controller` both read a
//! cluster through these functions, so what the simulator replays is what
//! the controller decides on. Pure: callers hand in label lookups and the
//! quantities as text.

use crate::config;
use crate::gpu::catalog::{self, CatalogError, GpuModel};
use crate::mig_demand::{Gpu, Instance, InstanceAt, LayoutInvalid, layout_valid};
use crate::mig_state::{self, MIG_STATE};

/// Where a Node's instance type is found (the beta label on older nodes).
pub const INSTANCE_TYPE_LABELS: [&str; 2] = [
    "node.kubernetes.io/instance-type",
    "beta.kubernetes.io/instance-type",
];
/// GPU Feature Discovery's product and count labels, read when the instance
/// type is not one of the catalog's.
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
pub const GPU_COUNT_LABEL: &str = "nvidia.com/gpu.count";
/// Most slices of one profile a pod may ask for (a node has at most 8 GPUs
/// of 7 instances).
pub const MAX_SLICES: u32 = 64;

/// What is wrong with one Node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "label {key}={value}: not an instance type gpu-slicer's catalog knows; \
         label the node with nvidia.com/gpu.product and nvidia.com/gpu.count instead"
    )]
    UnknownInstanceType { key: &'static str, value: String },
    #[error("label nvidia.com/gpu.product={0}: not a GPU model gpu-slicer's catalog knows")]
    UnknownProduct(String),
    #[error("label nvidia.com/gpu.count: not a whole number from 1 to 16")]
    BadGpuCount,
    #[error("annotation {MIG_STATE}: {0}")]
    MigState(#[from] PublishedStateError),
    /// Boxed: the catalog's errors carry several strings.
    #[error(transparent)]
    Layout(#[from] Box<CatalogError>),
}

/// What is wrong with a Node's `gpu-slicer.io/mig-state` annotation, read
/// against the GPUs its labels name.
#[derive(Debug, thiserror::Error)]
pub enum PublishedStateError {
    #[error("{0}")]
    Published(#[from] mig_state::MigStateError),
    #[error(
        "entry {position} is GPU {gpu}: GPU {position} has no entry (the node could not read it); the simulator needs every GPU"
    )]
    MissingGpu { position: usize, gpu: u32 },
    #[error("{entries} GPU entries for a node of {count} GPUs")]
    WrongCount { entries: usize, count: u32 },
    #[error("GPU {gpu}: {product} has no MIG")]
    NoMig { gpu: u32, product: &'static str },
    #[error("GPU {gpu}: {model} has no MIG profile {profile}")]
    UnknownProfile {
        gpu: u32,
        model: &'static str,
        profile: String,
    },
    #[error("GPU {gpu}: {problem}")]
    Layout { gpu: u32, problem: LayoutInvalid },
    #[error("GPU {gpu}: instances listed with MIG off")]
    InstancesWithMigOff { gpu: u32 },
}

/// What is wrong with a Pod's MIG requests.
#[derive(Debug, thiserror::Error)]
pub enum SlicesError {
    #[error(
        "{count} × {}: more than {MAX_SLICES}, which no node holds",
        config::mig_resource(profile)
    )]
    TooManySlices { count: u32, profile: String },
    #[error("{0}: not a whole number of slices")]
    BadSliceCount(String),
}

/// The GPU model and count a Node's labels name (`label` looks one up):
/// the instance type when the catalog knows it, else GPU Feature
/// Discovery's product and count. `None`: a node without GPUs the decision
/// can use (a CPU instance type, or a fractional GPU one).
pub fn node_gpus<'a>(
    label: impl Fn(&str) -> Option<&'a str>,
) -> Result<Option<(&'static GpuModel, u32)>, NodeError> {
    if let Some((key, value)) = INSTANCE_TYPE_LABELS
        .iter()
        .find_map(|k| label(k).map(|v| (*k, v)))
    {
        return match catalog::instance(value) {
            Some(it) if !it.is_fractional() => Ok(it.gpu_model().map(|m| (m, it.gpus))),
            Some(_) => Ok(None),
            None if value.starts_with('p') || value.starts_with('g') => {
                Err(NodeError::UnknownInstanceType {
                    key,
                    value: value.to_owned(),
                })
            }
            // A CPU-only instance type.
            None => Ok(None),
        };
    }
    match label(GPU_PRODUCT_LABEL) {
        Some(product) => {
            // GFD writes the product name with dashes for spaces, and adds
            // `-MIG-<profile>` under the single strategy.
            let bare = product.split("-MIG-").next().unwrap_or(product);
            let model = catalog::models()
                .iter()
                .find(|m| m.product_name.replace(' ', "-").eq_ignore_ascii_case(bare))
                .or_else(|| catalog::model(bare))
                .ok_or_else(|| NodeError::UnknownProduct(product.to_owned()))?;
            let count: u32 = label(GPU_COUNT_LABEL)
                .unwrap_or("1")
                .parse()
                .ok()
                .filter(|c| (1..=16).contains(c))
                .ok_or(NodeError::BadGpuCount)?;
            Ok(Some((model, count)))
        }
        None => Ok(None),
    }
}

/// Who holds an instance, as far as the reader is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldFrom {
    /// The published `held` is not used (the simulator takes it from the
    /// Pods of its input: counting both would hold an instance twice).
    Ignored,
    /// The published `held`; absent (unknown) counts as held, as
    /// [`mig_state::InstanceState::maybe_held`] says a changing reader must.
    Published,
}

/// The GPUs of a Node from its published state (read by the core's one
/// parser, [`mig_state::parse`]), each checked against the model its labels
/// name: every GPU present in index order, profiles of the model, a valid
/// layout. `free_since_s` is what each instance's
/// [`Instance::free_since_s`] starts as (the caller tracks it).
pub fn gpus_from_state(
    model: &'static GpuModel,
    count: u32,
    text: &str,
    held: HeldFrom,
    free_since_s: u64,
) -> Result<Vec<Gpu>, PublishedStateError> {
    let states = mig_state::parse(text)?;
    if states.len() != count as usize {
        return Err(PublishedStateError::WrongCount {
            entries: states.len(),
            count,
        });
    }
    states
        .iter()
        .enumerate()
        .map(|(position, s)| {
            let g = mig_state::gpu_index(&states, position);
            if g as usize != position {
                return Err(PublishedStateError::MissingGpu { position, gpu: g });
            }
            if s.mig && !model.mig_capable() {
                return Err(PublishedStateError::NoMig {
                    gpu: g,
                    product: model.product_name,
                });
            }
            let mut at = Vec::new();
            for i in &s.instances {
                let profile = model.mig_profile(&i.profile).ok_or_else(|| {
                    PublishedStateError::UnknownProfile {
                        gpu: g,
                        model: model.key,
                        profile: i.profile.clone(),
                    }
                })?;
                at.push(InstanceAt {
                    profile,
                    start: i.start,
                });
            }
            if s.mig {
                layout_valid(model, &at)
                    .map_err(|problem| PublishedStateError::Layout { gpu: g, problem })?;
            } else if !at.is_empty() {
                return Err(PublishedStateError::InstancesWithMigOff { gpu: g });
            }
            Ok(Gpu {
                model,
                mig_enabled: s.mig,
                instances: at
                    .into_iter()
                    .zip(&s.instances)
                    .map(|(a, published)| Instance {
                        profile: a.profile,
                        start: a.start,
                        held: held == HeldFrom::Published && published.maybe_held(),
                        free_since_s,
                    })
                    .collect(),
            })
        })
        .collect()
}

/// One container's `nvidia.com/mig-*` asks, as (profile, count): its
/// limits when they name any, else its requests (extended resources must
/// have both equal when both are set). Quantities as the API server prints
/// them (`"2"`).
pub fn container_slices<'a>(
    limits: &[(&'a str, &'a str)],
    requests: &[(&'a str, &'a str)],
) -> Result<Vec<(String, u32)>, SlicesError> {
    let table = if limits
        .iter()
        .any(|(k, _)| config::mig_profile_of(k).is_some())
    {
        limits
    } else {
        requests
    };
    let mut out = Vec::new();
    for (key, value) in table {
        let Some(profile) = config::mig_profile_of(key) else {
            continue;
        };
        let n = value
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| SlicesError::BadSliceCount((*key).to_owned()))?;
        out.push((profile.to_string(), n));
    }
    Ok(out)
}

/// What a whole Pod asks for: its containers' slices summed (they run
/// together), its init containers' the largest (they run one at a time).
/// Empty: the pod asks for no MIG slice.
pub fn pod_slices(
    containers: impl IntoIterator<Item = Vec<(String, u32)>>,
    init_containers: impl IntoIterator<Item = Vec<(String, u32)>>,
) -> Result<Vec<(String, u32)>, SlicesError> {
    let mut slices: Vec<(String, u32)> = Vec::new();
    for c in containers {
        for (r, n) in c {
            add(&mut slices, r, n, u32::saturating_add);
        }
    }
    for c in init_containers {
        for (r, n) in c {
            add(&mut slices, r, n, u32::max);
        }
    }
    slices.retain(|(_, n)| *n > 0);
    if let Some((r, n)) = slices.iter().find(|(_, n)| *n > MAX_SLICES) {
        return Err(SlicesError::TooManySlices {
            count: *n,
            profile: r.clone(),
        });
    }
    Ok(slices)
}

fn add(slices: &mut Vec<(String, u32)>, r: String, n: u32, merge: fn(u32, u32) -> u32) {
    match slices.iter_mut().find(|(have, _)| *have == r) {
        Some((_, have)) => *have = merge(*have, n),
        None => slices.push((r, n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_win_over_requests_and_containers_add_up_while_init_containers_take_the_largest() {
        let first = container_slices(
            &[("nvidia.com/mig-1g.5gb", "2"), ("cpu", "1")],
            &[("nvidia.com/mig-3g.20gb", "1")],
        )
        .unwrap();
        assert_eq!(first, vec![("1g.5gb".to_string(), 2)]);
        let second = container_slices(&[], &[("nvidia.com/mig-1g.5gb", "1")]).unwrap();
        let init = container_slices(&[("nvidia.com/mig-1g.5gb", "2")], &[]).unwrap();
        let init_big = container_slices(&[("nvidia.com/mig-3g.20gb", "1")], &[]).unwrap();
        let pod = pod_slices([first, second], [init, init_big]).unwrap();
        assert_eq!(
            pod,
            vec![("1g.5gb".to_string(), 3), ("3g.20gb".to_string(), 1)]
        );
    }

    #[test]
    fn bad_counts_and_counts_no_node_holds_are_refused() {
        assert!(matches!(
            container_slices(&[("nvidia.com/mig-1g.5gb", "1.5")], &[]),
            Err(SlicesError::BadSliceCount(_))
        ));
        let many = container_slices(&[("nvidia.com/mig-1g.5gb", "65")], &[]).unwrap();
        assert!(matches!(
            pod_slices([many], []),
            Err(SlicesError::TooManySlices { count: 65, .. })
        ));
        assert!(pod_slices([vec![]], []).unwrap().is_empty());
    }

    #[test]
    fn a_p4d_node_reads_its_published_instances_with_unknown_held_as_held() {
        let labels = [("node.kubernetes.io/instance-type", "p4d.24xlarge")];
        let label = |k: &str| labels.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        let (model, count) = node_gpus(label).unwrap().unwrap();
        assert_eq!(count, 8);
        let mut gpus = String::from("[");
        for i in 0..8 {
            if i > 0 {
                gpus.push(',');
            }
            gpus.push_str(
                r#"{"mig": true, "instances": [{"profile": "1g.5gb", "start": 0, "held": false}, {"profile": "1g.5gb", "start": 1}]}"#,
            );
        }
        gpus.push(']');
        let read = gpus_from_state(model, count, &gpus, HeldFrom::Published, 7).unwrap();
        assert!(!read[0].instances[0].held);
        assert!(read[0].instances[1].held, "absent held must count as held");
        assert_eq!(read[3].instances[0].free_since_s, 7);
        let ignored = gpus_from_state(model, count, &gpus, HeldFrom::Ignored, 0).unwrap();
        assert!(ignored.iter().all(|g| g.instances.iter().all(|i| !i.held)));
        assert!(matches!(
            gpus_from_state(model, 4, &gpus, HeldFrom::Published, 0),
            Err(PublishedStateError::WrongCount {
                entries: 8,
                count: 4
            })
        ));
    }

    #[test]
    fn cpu_and_unknown_gpu_instance_types_are_told_apart() {
        let cpu = [("node.kubernetes.io/instance-type", "m5.large")];
        assert!(
            node_gpus(|k| cpu.iter().find(|(x, _)| *x == k).map(|(_, v)| *v))
                .unwrap()
                .is_none()
        );
        let unknown = [("node.kubernetes.io/instance-type", "p9.mega")];
        assert!(matches!(
            node_gpus(|k| unknown.iter().find(|(x, _)| *x == k).map(|(_, v)| *v)),
            Err(NodeError::UnknownInstanceType { .. })
        ));
    }
}
