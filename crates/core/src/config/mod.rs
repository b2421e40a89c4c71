//! Configuration: NVIDIA's `version: v1` schema, strict loading, validation,
//! and the command-line/environment overrides.

pub mod flags;
pub mod keys;
pub mod load;
pub mod names;
pub mod schema;

pub use flags::*;
pub use load::*;
pub use names::*;
pub use schema::*;
