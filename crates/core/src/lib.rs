//! gpu-slicer's core: every decision the device plugin makes, as pure
//! functions over plain data. Nothing here reads a file, the environment or
//! a clock, talks to the kubelet or loads NVML; the daemon (the shell) does
//! that and calls in. That is what makes these modules table- and
//! property-testable, and what lets the people's commands (`plan`, `lint`,
//! `karpenter overlays`) give exactly the daemon's answers.
//!
//! | Module | |
//! |---|---|
//! | [`config`] | NVIDIA's `version: v1` schema, strict parsing, validation, flag/env overrides |
//! | [`gpu`] | the inventory model, the catalog (models, MIG profiles, layouts, instance types), the simulated backend |
//! | [`plan`] | inventory + config → resources and device ids |
//! | [`allocate`] | what a container receives |
//! | [`placement`] | which devices to prefer |
//! | [`health`] | XID policy: which devices turn unhealthy, and when they recover |
//! | [`lifecycle`] | the registration life cycle as a sans-IO machine: when to serve, register, re-register (with its simulation) |
//! | [`backoff`] | the one back-off every retry uses |
//! | [`labels`] | node labels (GPU Feature Discovery names) |
//! | [`node_labels`] | the Node labels with a protocol behind them (config selection, MIG Manager's), declared once |
//! | [`cdi`] | the CDI spec for the devices Allocate names |
//! | [`cluster_objects`] | Nodes and Pods as the API server serves them, read into the demand-driven MIG decision's input (shared by `simulate` and the controller) |
//! | [`device_nodes`] | device-node paths: per device, control nodes, host paths |
//! | [`driver_files`] | the driver's libraries, binaries, firmware and sockets a CDI spec mounts |
//! | [`mig_change`] | a MIG layout change as NVML operations, from what the GPUs hold now |
//! | [`mig_demand`] | MIG capacity that follows demand: which free instances to destroy and create for pending pods |
//! | [`mig_state`] | the per-GPU MIG state a node publishes on its Node (annotation `gpu-slicer.io/mig-state`): format, bounds, and how it is made from an inventory |
//! | [`mig_parted`] | mig-parted's config file (`mig-configs:`) and which layout each GPU gets from it |
//! | [`mig_target`] | a node's per-GPU MIG target (`gpu-slicer.io/mig-target`) and the fewest operations that reach it without touching held instances |

pub mod allocate;
pub mod backoff;
pub mod cdi;
pub mod cluster_objects;
pub mod config;
pub mod device_nodes;
pub mod driver_files;
pub mod gpu;
pub mod health;
pub mod labels;
pub mod lifecycle;
pub mod messages;
pub mod mig_change;
pub mod mig_demand;
pub mod mig_parted;
pub mod mig_state;
pub mod mig_target;
pub mod mps;
pub mod node;
pub mod node_labels;
pub mod placement;
pub mod plan;
