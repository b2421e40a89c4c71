//! Built-in catalog: GPU models, MIG geometry, named layouts, cloud instances.
