//! `rbdctl image-meta`: get, set, rm and ls an image's metadata.

use std::collections::BTreeMap;

use clap::Subcommand;
use rbd_core::{Image, OpenOptions};
use serde_json::json;

use crate::Cli;
use crate::error::{CliError, CliResult};
use crate::output::{Format, Table, done, emit};
use crate::spec::Spec;

/// Metadata subcommands.
#[derive(Debug, Subcommand)]
pub enum MetaCmd {
    /// Print a key's value.
    Get {
        /// [pool/[namespace/]]image
        image: String,
        /// The key.
        key: String,
    },
    /// Set a key (keys starting with conf_ override librbd options for this image).
    Set {
        /// [pool/[namespace/]]image
        image: String,
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Remove a key.
    #[command(alias = "remove")]
    Rm {
        /// [pool/[namespace/]]image
        image: String,
        /// The key.
        key: String,
    },
    /// List all keys and values.
    #[command(alias = "list")]
    Ls {
        /// [pool/[namespace/]]image
        image: String,
    },
}

fn open(cli: &Cli, image: &str, ro: bool) -> CliResult<(Spec, Image)> {
    let spec = Spec::image_only(image)?;
    let rados = cli.connect()?;
    let io = cli.spec_ioctx(&rados, &spec)?;
    let img = Image::open(&io, &spec.image, &OpenOptions::new().read_only(ro))?;
    Ok((spec, img))
}

/// Runs an image-meta subcommand.
pub fn run(cli: &Cli, cmd: &MetaCmd) -> CliResult {
    match cmd {
        MetaCmd::Get { image, key } => {
            let (spec, img) = open(cli, image, true)?;
            let Some(v) = img.metadata_get(key)? else {
                return Err(CliError::NotFound(format!(
                    "image {} has no metadata key {key:?}",
                    spec.display(cli)
                )));
            };
            match cli.format {
                Format::Json => emit(cli.format, &json!({"key": key, "value": v}), String::new),
                Format::Table => println!("{v}"),
            }
            Ok(())
        }
        MetaCmd::Set { image, key, value } => {
            let (spec, img) = open(cli, image, false)?;
            img.metadata_set(key, value)?;
            done(
                cli.format,
                json!({"image": spec.display(cli), "key": key, "value": value}),
                || format!("set {key} on {}", spec.display(cli)),
            );
            Ok(())
        }
        MetaCmd::Rm { image, key } => {
            let (spec, img) = open(cli, image, false)?;
            if img.metadata_get(key)?.is_none() {
                return Err(CliError::NotFound(format!(
                    "image {} has no metadata key {key:?}",
                    spec.display(cli)
                )));
            }
            img.metadata_remove(key)?;
            done(
                cli.format,
                json!({"image": spec.display(cli), "removed": key}),
                || format!("removed {key} from {}", spec.display(cli)),
            );
            Ok(())
        }
        MetaCmd::Ls { image } => {
            let (_spec, img) = open(cli, image, true)?;
            let pairs: BTreeMap<String, String> = img.metadata_list()?.into_iter().collect();
            emit(cli.format, &pairs, || {
                let mut t = Table::new(&["KEY", "VALUE"]);
                for (k, v) in &pairs {
                    t.row(vec![k.clone(), v.clone()]);
                }
                t.render()
            });
            Ok(())
        }
    }
}
