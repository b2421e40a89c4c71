//! gpu-slicer's commands for people: what a node would advertise (`plan`),
//! the whole path on a simulated node (`demo`), Karpenter NodeOverlays and
//! the NodePool linter (`karpenter`, `lint`), and the cost planner. They
//! reach the same core decisions the daemon makes; `run` hands over to the
//! daemon library.
//!
//! | Module | |
//! |---|---|
//! | [`commands`] | `demo`, `plan`, `karpenter overlays`, `lint` |
//! | [`karpenter`] | NodeOverlays, the NodePool linter, prices and cost ranking |

pub mod commands;
pub mod error;
pub mod karpenter;
