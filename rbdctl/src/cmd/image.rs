//! Image commands: create, ls, info, rm, status.

use clap::Args;
use rbd_core::rbd::{self, Features, ImageOptions};
use rbd_core::{Image, OpenOptions};
use serde::Serialize;

use crate::Cli;
use crate::error::{CliError, CliResult};
use crate::output::{Format, Table, emit, human_size};

/// `rbdctl create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Image name.
    pub name: String,
    /// Size: 512M, 2G, 1T, or bytes.
    #[arg(short = 's', long, allow_hyphen_values = true)]
    pub size: String,
    /// Object size (power of two, 4K to 32M), e.g. 4M.
    #[arg(long)]
    pub object_size: Option<String>,
    /// Features, comma separated (default: layering,exclusive-lock,object-map,fast-diff,deep-flatten).
    #[arg(long)]
    pub features: Option<String>,
    /// Stripe unit (needs --stripe-count).
    #[arg(long, requires = "stripe_count")]
    pub stripe_unit: Option<String>,
    /// Stripe count (needs --stripe-unit).
    #[arg(long, requires = "stripe_unit")]
    pub stripe_count: Option<u64>,
    /// Separate pool for the data objects (e.g. an erasure-coded pool).
    #[arg(long)]
    pub data_pool: Option<String>,
}

/// Creates an image after validating every argument (nothing is created on bad input).
pub fn create(cli: &Cli, a: &CreateArgs) -> CliResult {
    rbd::validate_image_name("image name", &a.name)?;
    let size = rbd::parse_size(&a.size)?;
    let mut opts = ImageOptions::new();
    if let Some(f) = &a.features {
        let f: Features = f.parse()?;
        opts = opts.features(f);
    }
    if let Some(os) = &a.object_size {
        opts = opts.object_size(rbd::parse_size(os)?)?;
    }
    if let (Some(u), Some(c)) = (&a.stripe_unit, a.stripe_count) {
        opts = opts.striping(rbd::parse_size(u)?, c)?;
    }
    if let Some(dp) = &a.data_pool {
        opts = opts.data_pool(dp)?;
    }
    let (_rados, io) = cli.ioctx()?;
    rbd::create(&io, &a.name, size, &opts)?;
    if cli.format == Format::Json {
        let img = Image::open(&io, &a.name, &OpenOptions::new().read_only(true))?;
        emit(cli.format, &img.info()?, String::new);
    } else {
        println!("created {}/{} ({})", cli.pool, a.name, human_size(size));
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct LsEntry {
    name: String,
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    watchers: Option<usize>,
}

/// Lists images; `long` adds size, parent, format and watcher count.
pub fn ls(cli: &Cli, long: bool) -> CliResult {
    let (_rados, io) = cli.ioctx()?;
    let mut specs = rbd::list(&io)?;
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut entries = Vec::with_capacity(specs.len());
    for s in specs {
        let mut e = LsEntry {
            name: s.name.clone(),
            id: s.id.clone(),
            size: None,
            parent: None,
            format: None,
            watchers: None,
        };
        if long {
            // An image removed between list and open is skipped, not an error.
            let img = match Image::open_by_id(&io, &s.id, &OpenOptions::new().read_only(true)) {
                Ok(i) => i,
                Err(err) if err.kind() == rbd_core::ErrorKind::NotFound => continue,
                Err(err) => return Err(err.into()),
            };
            e.size = Some(img.size()?);
            e.parent = img.parent()?.map(|p| {
                format!(
                    "{}/{}@{}",
                    p.image.pool_name, p.image.image_name, p.snap.name
                )
            });
            e.format = Some(2);
            // Our own read-only handle is a watcher too: don't count it.
            e.watchers = Some(img.watchers()?.len().saturating_sub(1));
        }
        entries.push(e);
    }
    emit(cli.format, &entries, || {
        if !long {
            return entries.iter().map(|e| format!("{}\n", e.name)).collect();
        }
        let mut t = Table::new(&["NAME", "SIZE", "PARENT", "FMT", "WATCHERS", "ID"]);
        for e in &entries {
            t.row(vec![
                e.name.clone(),
                e.size.map(human_size).unwrap_or_default(),
                e.parent.clone().unwrap_or_default(),
                e.format.map(|f| f.to_string()).unwrap_or_default(),
                e.watchers.map(|w| w.to_string()).unwrap_or_default(),
                e.id.clone(),
            ]);
        }
        t.render()
    });
    Ok(())
}

/// Shows everything `rbd info` shows.
pub fn info(cli: &Cli, name: &str) -> CliResult {
    let (_rados, io) = cli.ioctx()?;
    let img = open_ro(&io, name)?;
    let d = img.info()?;
    emit(cli.format, &d, || {
        let ts = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs().to_string())
                .unwrap_or_default()
        };
        let mut s = format!("rbd image '{}':\n", d.name);
        s += &format!("\tsize {} in {} objects\n", human_size(d.size), d.objects);
        s += &format!(
            "\torder {} ({} objects)\n",
            d.order,
            human_size(d.object_size)
        );
        s += &format!("\tsnapshot_count: {}\n", d.snapshot_count);
        s += &format!("\tid: {}\n", d.id);
        s += &format!("\tblock_name_prefix: {}\n", d.block_name_prefix);
        s += &format!("\tformat: {}\n", 2);
        s += &format!("\tfeatures: {}\n", d.features.names().join(", "));
        s += &format!("\top_features: {}\n", d.op_features.names().join(", "));
        s += &format!("\tflags: {}\n", d.flags.names().join(", "));
        if d.stripe_count > 1 {
            s += &format!(
                "\tstripe unit: {}\n\tstripe count: {}\n",
                human_size(d.stripe_unit),
                d.stripe_count
            );
        }
        if let Some(p) = &d.parent {
            s += &format!(
                "\tparent: {}/{}@{}\n",
                p.image.pool_name, p.image.image_name, p.snap.name
            );
        }
        s += &format!("\tcreate_timestamp: {}\n", ts(d.create_timestamp));
        s += &format!("\taccess_timestamp: {}\n", ts(d.access_timestamp));
        s += &format!("\tmodify_timestamp: {}\n", ts(d.modify_timestamp));
        s
    });
    Ok(())
}

/// Removes an image, with a clear error when it is in use or has snapshots.
pub fn rm(cli: &Cli, name: &str) -> CliResult {
    rbd::validate_image_name("image name", name)?;
    let (rados, io) = cli.ioctx()?;
    // Say who is using it, rather than librbd's bare EBUSY.
    let img = open_ro(&io, name)?;
    let own = rados.getaddrs()?;
    let users: Vec<String> = img
        .watchers()?
        .into_iter()
        .filter(|w| !own.0.iter().any(|a| a.same_instance(&w.addr)))
        .map(|w| format!("client.{} at {}", w.id, w.addr.to_legacy_string()))
        .collect();
    let snaps: Vec<String> = img.snap_list()?.into_iter().map(|s| s.name).collect();
    drop(img);
    if !users.is_empty() {
        return Err(CliError::Busy(format!(
            "image {}/{name} is in use by {}; unmap it there, or fence that client with `rbdctl fence add`",
            cli.pool,
            users.join(", ")
        )));
    }
    if !snaps.is_empty() {
        return Err(CliError::Busy(format!(
            "image {}/{name} has snapshots ({}); remove them first",
            cli.pool,
            snaps.join(", ")
        )));
    }
    rbd::remove(&io, name)?;
    println!("removed {}/{name}", cli.pool);
    Ok(())
}

#[derive(Debug, Serialize)]
struct Status {
    image: String,
    id: String,
    watchers: Vec<rbd_core::rbd::Watcher>,
    lock_owners: Vec<String>,
}

/// Shows watchers (with exact client addresses) and exclusive-lock owners.
pub fn status(cli: &Cli, name: &str) -> CliResult {
    let (rados, io) = cli.ioctx()?;
    let img = open_ro(&io, name)?;
    let own = rados.getaddrs()?;
    // Our own read-only handle watches the header too: leave it out.
    let watchers: Vec<_> = img
        .watchers()?
        .into_iter()
        .filter(|w| !own.0.iter().any(|a| a.same_instance(&w.addr)))
        .collect();
    let lock_owners = img.lock_get_owners().map(|o| o.owners).unwrap_or_default();
    let st = Status {
        image: name.to_owned(),
        id: img.id()?,
        watchers,
        lock_owners,
    };
    emit(cli.format, &st, || {
        let mut s = String::new();
        if st.watchers.is_empty() {
            s += "Watchers: none\n";
        } else {
            s += "Watchers:\n";
            for w in &st.watchers {
                s += &format!(
                    "\twatcher={} client.{} cookie={}\n",
                    w.addr.to_legacy_string(),
                    w.id,
                    w.cookie
                );
            }
        }
        if !st.lock_owners.is_empty() {
            s += &format!("Exclusive lock owners: {}\n", st.lock_owners.join(", "));
        }
        s
    });
    Ok(())
}

fn open_ro(io: &rbd_core::IoCtx, name: &str) -> CliResult<Image> {
    Ok(Image::open(io, name, &OpenOptions::new().read_only(true))?)
}
