//! (in progress) The Userspace backend.

mod fusefs;

use super::{Backend, MapRequest, Mapper, MapperConfig, Mapping};
use crate::error::{DriverError, Result};

/// The Userspace backend (being implemented).
#[derive(Debug, Clone)]
pub struct UserspaceMapper {
    #[allow(dead_code)]
    cfg: MapperConfig,
}

impl UserspaceMapper {
    /// A mapper with these host settings.
    pub fn new(cfg: &MapperConfig) -> Self {
        Self { cfg: cfg.clone() }
    }
}

impl Mapper for UserspaceMapper {
    fn backend(&self) -> Backend {
        Backend::Userspace
    }
    fn check_available(&self) -> Result<()> {
        Err(DriverError::BackendUnavailable {
            backend: Backend::Userspace,
            reason: "not implemented yet".into(),
        })
    }
    fn map(&self, _req: &MapRequest) -> Result<Mapping> {
        self.check_available().map(|_| unreachable!())
    }
    fn unmap(&self, _m: &Mapping, _force: bool) -> Result<()> {
        self.check_available()
    }
    fn list(&self) -> Result<Vec<Mapping>> {
        Ok(Vec::new())
    }
}
