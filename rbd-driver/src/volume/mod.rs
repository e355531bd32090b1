//! The per-node volume lifecycle: create, attach, detach, remove, resize, snapshot, status.

pub mod name;
pub mod state;

pub use name::validate_volume_name;
pub use state::{Phase, State, StateStore, VolumeState};
