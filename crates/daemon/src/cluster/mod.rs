//! Everything that talks to the API server: the client, the one watcher of
//! the daemon's own Node (its labels for everything that follows one, the
//! start-up taint), the MIG applier's state reports and the published MIG
//! state.

pub mod api;
pub mod mig_applier;
pub mod mig_state;
pub mod node;
