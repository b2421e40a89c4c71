//! Everything that talks to the host: files written atomically, the
//! driver's files for the CDI spec, the config file and environment, the
//! one file-system watcher, signals, MPS control daemons (processes) and
//! the process's own settings (logging, the runtime, limits).

pub mod config_file;
pub mod driver_files;
pub mod files;
pub mod mps;
pub mod process;
pub mod reload;
pub mod watch;
