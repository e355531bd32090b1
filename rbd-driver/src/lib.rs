//! The volume driver: map an RBD image to a block device, format and mount it, and keep
//! mappings consistent across nodes.
//!
//! This crate owns the mappers (kernel krbd, rbd-nbd, and a userspace FUSE+loop mapper), the
//! per-node volume lifecycle (create, attach, detach, remove with a crash-safe refcount per
//! mount ID), and the cluster-wide mapping registry that fixes the stale-mapping bug by
//! identifying mappings by image id rather than by pool/name.
