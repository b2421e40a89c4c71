//! Simulated backend: builds an inventory from a catalog instance or a topology file.
