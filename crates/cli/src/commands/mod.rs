//! The subcommands behind `main.rs`: each turns parsed options into calls
//! on the core and the daemon.

pub mod demo;
pub mod gpus;
pub mod karpenter;
pub mod node_config;
pub mod plan;
pub mod simulate;
