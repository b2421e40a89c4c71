//! Everything that talks to the GPUs: discovery through NVML (or the
//! simulated backend), the health thread (XID events, GPUs that stop
//! answering), the read-only report of `gpus`, and MIG layout changes.

pub mod health;
pub mod mig_apply;
pub mod nvml;
pub mod report;
pub mod simulate;
