//! (in progress) The Nbd backend.

use super::{Backend, MapRequest, Mapper, MapperConfig, Mapping};
use crate::error::{DriverError, Result};

/// The Nbd backend (being implemented).
#[derive(Debug, Clone)]
pub struct NbdMapper {
    #[allow(dead_code)]
    cfg: MapperConfig,
}

impl NbdMapper {
    /// A mapper with these host settings.
    pub fn new(cfg: &MapperConfig) -> Self {
        Self { cfg: cfg.clone() }
    }
}

impl Mapper for NbdMapper {
    fn backend(&self) -> Backend {
        Backend::Nbd
    }
    fn check_available(&self) -> Result<()> {
        Err(DriverError::BackendUnavailable {
            backend: Backend::Nbd,
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
