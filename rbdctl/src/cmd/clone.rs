//! Clones: clone, flatten, children.

use clap::Args;
use rbd_core::rbd::{self, CloneFormat, LinkedImageSpec};
use rbd_core::{Image, OpenOptions};
use serde::Serialize;
use serde_json::json;

use crate::Cli;
use crate::cmd::image::LayoutArgs;
use crate::error::{CliError, CliResult, WithContext};
use crate::output::{done, emit};
use crate::progress::{Progress, Unit};
use crate::spec::Spec;

/// `rbdctl clone`.
#[derive(Debug, Args)]
pub struct CloneArgs {
    /// Parent snapshot: [pool/[namespace/]]image@snapshot
    pub parent: String,
    /// The clone: [pool/[namespace/]]image (must not exist)
    pub child: String,
    /// Clone format: 1 needs a protected parent snapshot; 2 does not (Mimic+ clients).
    /// Default: the cluster's (`rbd_default_clone_format`).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub clone_format: Option<u8>,
    /// Layout and features of the clone (default: the parent's).
    #[command(flatten)]
    pub layout: LayoutArgs,
}

/// Clones `parent@snap` into a new image.
pub fn clone(cli: &Cli, a: &CloneArgs) -> CliResult {
    let p = Spec::with_snap(&a.parent)?;
    let c = Spec::image_only(&a.child)?;
    let mut opts = a.layout.to_options()?;
    match a.clone_format {
        Some(1) => opts = opts.clone_format(CloneFormat::V1),
        Some(_) => opts = opts.clone_format(CloneFormat::V2),
        None => {}
    }
    let rados = cli.connect()?;
    let pio = cli.spec_ioctx(&rados, &p)?;
    let cio = cli.spec_ioctx(&rados, &c)?;
    // Clear errors for the common mistakes, before librbd's bare EINVAL.
    let parent = Image::open(&pio, &p.image, &OpenOptions::new().read_only(true))?;
    if !parent.snap_exists(p.snap_name())? {
        return Err(CliError::NotFound(format!(
            "snapshot {} does not exist",
            p.display(cli)
        )));
    }
    if !parent.features()?.contains(rbd::Features::LAYERING) {
        return Err(CliError::Usage(format!(
            "image {} lacks the layering feature and cannot be cloned",
            p.without_snap().display(cli)
        )));
    }
    let protected = parent.snap_is_protected(p.snap_name())?;
    if a.clone_format == Some(1) && !protected {
        return Err(CliError::Usage(format!(
            "clone format 1 needs a protected parent snapshot: run `rbdctl snap protect {p}` \
             first, or use --clone-format 2"
        )));
    }
    drop(parent);
    rbd::clone_image(&pio, &p.image, p.snap_name(), &cio, &c.image, &opts).map_err(|e| {
        if e.kind() == rbd_core::ErrorKind::InvalidInput && !protected {
            CliError::Usage(format!(
                "cloning {} to {} failed ({e}); the cluster's default clone format may be 1, \
                 which needs a protected snapshot: protect it or pass --clone-format 2",
                p.display(cli),
                c.display(cli)
            ))
        } else {
            CliError::CephContext {
                context: format!("cloning {} to {}", p.display(cli), c.display(cli)),
                source: e,
            }
        }
    })?;
    done(
        cli.format,
        json!({"parent": p.display(cli), "clone": c.display(cli)}),
        || format!("cloned {} to {}", p.display(cli), c.display(cli)),
    );
    Ok(())
}

/// Flattens a clone.
pub fn flatten(cli: &Cli, image: &str) -> CliResult {
    let spec = Spec::image_only(image)?;
    let rados = cli.connect()?;
    let io = cli.spec_ioctx(&rados, &spec)?;
    let img = Image::open(&io, &spec.image, &OpenOptions::new())?;
    let Some(parent) = img.parent()? else {
        return Err(CliError::Usage(format!(
            "image {} is not a clone (it has no parent); nothing to flatten",
            spec.display(cli)
        )));
    };
    let p = Progress::new(cli, "Image flatten", Unit::Steps);
    img.flatten_with_progress(p.callback())
        .context(|| format!("flattening {}", spec.display(cli)))?;
    p.finish();
    let from = format!(
        "{}/{}@{}",
        parent.image.pool_name, parent.image.image_name, parent.snap.name
    );
    done(
        cli.format,
        json!({"flattened": spec.display(cli), "former_parent": from}),
        || format!("flattened {} (was a clone of {from})", spec.display(cli)),
    );
    Ok(())
}

/// `rbdctl children`.
#[derive(Debug, Args)]
pub struct ChildrenArgs {
    /// [pool/[namespace/]]image[@snapshot]: the clones of one snapshot, or of all of them.
    pub image: String,
    /// Also list children in the trash.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// List every descendant (children of children too).
    #[arg(long)]
    pub descendants: bool,
}

/// A child as `rbd children --format json` names it, plus its id and trash state.
#[derive(Debug, Serialize)]
struct ChildView {
    pool: String,
    pool_namespace: String,
    image: String,
    id: String,
    trash: bool,
}

/// Lists clones.
pub fn children(cli: &Cli, a: &ChildrenArgs) -> CliResult {
    let spec = Spec::parse(&a.image)?;
    let rados = cli.connect()?;
    let io = cli.spec_ioctx(&rados, &spec)?;
    let mut o = OpenOptions::new().read_only(true);
    if let Some(s) = &spec.snap {
        o = o.snapshot(s.clone());
    }
    let img = Image::open(&io, &spec.image, &o)?;
    let list: Vec<LinkedImageSpec> = if a.descendants {
        img.list_descendants()?
    } else {
        img.list_children()?
    };
    let out: Vec<ChildView> = list
        .into_iter()
        .filter(|c| a.all || !c.trash)
        .map(|c| ChildView {
            pool: c.pool_name,
            pool_namespace: c.pool_namespace,
            image: c.image_name,
            id: c.image_id,
            trash: c.trash,
        })
        .collect();
    emit(cli.format, &out, || {
        out.iter()
            .map(|c| {
                let ns = if c.pool_namespace.is_empty() {
                    String::new()
                } else {
                    format!("{}/", c.pool_namespace)
                };
                let trash = if c.trash {
                    format!(" (trash {})", c.id)
                } else {
                    String::new()
                };
                format!("{}/{ns}{}{trash}\n", c.pool, c.image)
            })
            .collect()
    });
    Ok(())
}
