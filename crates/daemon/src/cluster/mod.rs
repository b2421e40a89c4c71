//! Everything that talks to the API server: the client, the one watcher of
//! the daemon's own Node (its labels for everything that follows one, the
//! start-up taint) and the MIG applier's state reports.

pub mod api;
pub mod mig_applier;
pub mod node;
