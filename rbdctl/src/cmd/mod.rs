//! One module per command group.

pub mod bench;
pub mod clone;
pub mod cluster;
pub mod daemon;
pub mod device;
pub mod fence;
pub mod image;
pub mod lock;
pub mod meta;
pub mod mount;
pub mod snap;
pub mod transfer;
pub mod trash;
pub mod volume;

use crate::Cli;
use crate::error::CliResult;
use crate::output::emit;

/// `rbdctl version`: library versions, and the cluster's fsid when reachable.
pub fn version(cli: &Cli) -> CliResult {
    let v = rbd_core::lib_versions();
    let fsid = cli.connect().and_then(|r| Ok(r.fsid()?)).ok();
    let value = serde_json::json!({
        "rbdctl": env!("CARGO_PKG_VERSION"),
        "librados": format!("{}.{}.{}", v.librados.0, v.librados.1, v.librados.2),
        "librbd": format!("{}.{}.{}", v.librbd.0, v.librbd.1, v.librbd.2),
        "cluster_fsid": fsid,
    });
    emit(cli.format, &value, || {
        format!(
            "rbdctl {}\nlibrados {}\nlibrbd {}\ncluster {}\n",
            value["rbdctl"].as_str().unwrap_or(""),
            value["librados"].as_str().unwrap_or(""),
            value["librbd"].as_str().unwrap_or(""),
            fsid.as_deref().unwrap_or("(unreachable)")
        )
    });
    Ok(())
}
