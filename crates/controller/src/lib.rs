//! `gpu-slicer-controller`: MIG capacity that follows demand, for a whole
//! cluster. One active replica (a coordination.k8s.io Lease) watches the
//! pending pods that ask for `nvidia.com/mig-*` and the Nodes' published MIG
//! state (`gpu-slicer.io/mig-state`), gathers pending pods over a batch
//! window, runs the core's decision ([`gpu_slicer_core::mig_demand`]) and
//! writes each changed node's per-GPU target (`gpu-slicer.io/mig-target`),
//! which the node daemon's `--apply-mig-layouts` applies.
//!
//! | Module | |
//! |---|---|
//! | [`store`] | what is kept of each watched Pod and Node |
//! | [`pass`] | one pass, pure: stores in, targets out, and the rules on which nodes may change |
//! | [`placement`] | which nodes a pending pod may go to (node selector, required affinity, tolerations) |
//! | [`lease`] | the leader election |
//! | [`metrics`] | the counters and their HTTP endpoint |
//! | [`run`] | the shell: Lease, watches, batch window, writes |

pub mod lease;
pub mod metrics;
pub mod pass;
pub mod placement;
pub mod run;
pub mod store;
