//! What goes wrong reading what a user gave the people's commands (files,
//! manifests, standard input), each saying where and what to do.

/// A file, manifest or value the user gave cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// A value is wrong: `at` names the file, object and key; `problem`
    /// says what is wrong and what to write instead.
    #[error("{at}: {problem}")]
    Invalid { at: String, problem: String },
    /// A file (or standard input) cannot be read.
    #[error("cannot read {what}: {reason}{}", hint.as_deref().map(|h| format!("; {h}")).unwrap_or_default())]
    Unreadable {
        what: String,
        reason: String,
        hint: Option<String>,
    },
    /// Standard input holds more than the commands read.
    #[error("standard input holds more than {limit_mib} MiB; save it to files and lint those")]
    StdinTooLarge { limit_mib: u64 },
    /// Standard input is not text.
    #[error("standard input is not UTF-8 text")]
    StdinNotText,
    /// A Markdown file's ```yaml block is wrong.
    #[error("{inner} (in the ```yaml block starting on line {line})")]
    InMarkdownBlock {
        line: usize,
        #[source]
        inner: Box<InputError>,
    },
    /// A config file or ConfigMap entry is refused by the core.
    #[error(transparent)]
    Config(#[from] gpu_slicer_core::config::ConfigError),
    /// A ConfigMap given as a config file holds no config.
    #[error(
        "{file} (ConfigMap {name}) holds no gpu-slicer config (no data value with version: v1)"
    )]
    NoConfigInConfigMap { file: String, name: String },
    /// `--config-name` (or a NodePool's label) names no config of the file.
    #[error("{file} has no config named '{wanted}' (it has: {names}); pass one of those names")]
    NoSuchConfig {
        file: String,
        wanted: String,
        names: String,
    },
    /// A ConfigMap holds several configs and nothing chose one.
    #[error(
        "{file} holds several configs ({names}); choose one with --config-name (or the NodePool label {label})"
    )]
    SeveralConfigs {
        file: String,
        names: String,
        label: &'static str,
    },
}

/// `invalid!(at, "problem {x}")`: an [`InputError::Invalid`] at `at` (a
/// file, object and key), the problem formatted as `format!` does.
#[macro_export]
macro_rules! invalid {
    ($at:expr, $($problem:tt)+) => {
        $crate::error::InputError::Invalid {
            at: ($at).to_string(),
            problem: format!($($problem)+),
        }
    };
}
