//! Configuration: NVIDIA's `version: v1` schema, strict loading, validation,
//! and the command-line/environment overrides.

pub mod schema;

pub use schema::*;
