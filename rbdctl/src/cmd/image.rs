//! Image commands: create, ls, info, rm, status, resize, rename, cp, feature.

use clap::{Args, Subcommand};
use rbd_core::rbd::{self, Features, ImageDetails, ImageOptions, Shrink};
use rbd_core::{Image, IoCtx, OpenOptions};
use serde::Serialize;
use serde_json::json;

use crate::Cli;
use crate::error::{CliError, CliResult, WithContext};
use crate::output::{Format, Table, ctime, done, emit, human_size, unix};
use crate::progress::{Progress, Unit};
use crate::spec::Spec;

/// Layout options shared by create, cp, clone and import.
#[derive(Debug, Args, Default)]
pub struct LayoutArgs {
    /// Object size (power of two, 4K to 32M), e.g. 4M.
    #[arg(long, allow_hyphen_values = true)]
    pub object_size: Option<String>,
    /// Features, comma separated (default: layering,exclusive-lock,object-map,fast-diff,deep-flatten).
    #[arg(long, alias = "image-feature")]
    pub features: Option<String>,
    /// Stripe unit (needs --stripe-count).
    #[arg(long, requires = "stripe_count", allow_hyphen_values = true)]
    pub stripe_unit: Option<String>,
    /// Stripe count (needs --stripe-unit).
    #[arg(long, requires = "stripe_unit")]
    pub stripe_count: Option<u64>,
    /// Separate pool for the data objects (e.g. an erasure-coded pool).
    #[arg(long)]
    pub data_pool: Option<String>,
}

impl LayoutArgs {
    /// Validates every option and builds the librbd options (nothing is sent yet).
    pub fn to_options(&self) -> CliResult<ImageOptions> {
        let mut opts = ImageOptions::new();
        if let Some(f) = &self.features {
            let f: Features = f.parse()?;
            opts = opts.features(f);
        }
        if let Some(os) = &self.object_size {
            opts = opts.object_size(parse_named_size("object size", os)?)?;
        }
        if let (Some(u), Some(c)) = (&self.stripe_unit, self.stripe_count) {
            opts = opts.striping(parse_named_size("stripe unit", u)?, c)?;
        }
        if let Some(dp) = &self.data_pool {
            opts = opts.data_pool(dp)?;
        }
        Ok(opts)
    }
}

/// Parses a size, naming the option in the error (`--object-size "3M": ...`).
pub fn parse_named_size(what: &str, s: &str) -> CliResult<u64> {
    rbd::parse_size(s).map_err(|e| CliError::Usage(format!("bad {what}: {e}")))
}

/// `rbdctl create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// [pool/[namespace/]]image
    pub name: String,
    /// Size: 512M, 2G, 1T, or bytes.
    #[arg(short = 's', long, allow_hyphen_values = true)]
    pub size: String,
    /// Layout and features.
    #[command(flatten)]
    pub layout: LayoutArgs,
}

/// Creates an image after validating every argument (nothing is created on bad input).
pub fn create(cli: &Cli, a: &CreateArgs) -> CliResult {
    let spec = Spec::image_only(&a.name)?;
    let size = rbd::parse_size(&a.size)?;
    let opts = a.layout.to_options()?;
    let rados = cli.connect()?;
    let io = cli.spec_ioctx(&rados, &spec)?;
    rbd::create(&io, &spec.image, size, &opts)?;
    if cli.format == Format::Json {
        let img = open_ro(&io, &spec.image)?;
        emit(cli.format, &InfoView::new(&rados, &img, None)?, String::new);
    } else {
        println!("created {} ({})", spec.display(cli), human_size(size));
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
            e.format = Some(img.format()? as u8);
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

/// A clone's parent as `rbd info --format json` names it.
#[derive(Debug, Serialize)]
struct ParentView {
    pool: String,
    pool_namespace: String,
    image: String,
    id: String,
    snapshot: String,
    trash: bool,
    overlap: u64,
}

/// What `rbdctl info` prints: `rbd info`'s fields under `rbd info --format json`'s names,
/// plus the pool, namespace and Unix timestamps.
#[derive(Debug, Serialize)]
struct InfoView {
    name: String,
    id: String,
    size: u64,
    objects: u64,
    order: u8,
    object_size: u64,
    snapshot_count: usize,
    block_name_prefix: String,
    format: rbd::ImageFormat,
    features: Features,
    op_features: rbd::OpFeatures,
    flags: rbd::ImageFlags,
    create_timestamp: String,
    access_timestamp: String,
    modify_timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<ParentView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_pool: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stripe_unit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stripe_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    protected: Option<bool>,
    pool: String,
    namespace: String,
    create_timestamp_unix: u64,
    access_timestamp_unix: u64,
    modify_timestamp_unix: u64,
}

impl InfoView {
    fn new(rados: &rbd_core::Rados, img: &Image, snap: Option<&str>) -> CliResult<Self> {
        let d: ImageDetails = img.info()?;
        let parent = match &d.parent {
            Some(p) => Some(ParentView {
                pool: p.image.pool_name.clone(),
                pool_namespace: p.image.pool_namespace.clone(),
                image: p.image.image_name.clone(),
                id: p.image.image_id.clone(),
                snapshot: p.snap.name.clone(),
                trash: p.image.trash,
                overlap: img.parent_overlap()?,
            }),
            None => None,
        };
        let data_pool = if d.features.contains(Features::DATA_POOL) {
            Some(
                rados
                    .pool_reverse_lookup(d.data_pool_id)
                    .unwrap_or_else(|_| d.data_pool_id.to_string()),
            )
        } else {
            None
        };
        let striped = d.features.contains(Features::STRIPING);
        Ok(InfoView {
            name: d.name,
            id: d.id,
            size: d.size,
            objects: d.objects,
            order: d.order,
            object_size: d.object_size,
            snapshot_count: d.snapshot_count,
            block_name_prefix: d.block_name_prefix,
            format: d.format,
            features: d.features,
            op_features: d.op_features,
            flags: d.flags,
            create_timestamp: ctime(d.create_timestamp),
            access_timestamp: ctime(d.access_timestamp),
            modify_timestamp: ctime(d.modify_timestamp),
            parent,
            data_pool,
            stripe_unit: striped.then_some(d.stripe_unit),
            stripe_count: striped.then_some(d.stripe_count),
            snapshot: snap.map(str::to_owned),
            protected: match snap {
                Some(s) => Some(img.snap_is_protected(s)?),
                None => None,
            },
            pool: d.pool,
            namespace: d.namespace,
            create_timestamp_unix: unix(d.create_timestamp),
            access_timestamp_unix: unix(d.access_timestamp),
            modify_timestamp_unix: unix(d.modify_timestamp),
        })
    }

    /// The `rbd info` text form.
    fn text(&self) -> String {
        let mut s = format!("rbd image '{}':\n", self.name);
        s += &format!(
            "\tsize {} in {} objects\n",
            human_size(self.size),
            self.objects
        );
        s += &format!(
            "\torder {} ({} objects)\n",
            self.order,
            human_size(self.object_size)
        );
        s += &format!("\tsnapshot_count: {}\n", self.snapshot_count);
        s += &format!("\tid: {}\n", self.id);
        s += &format!("\tblock_name_prefix: {}\n", self.block_name_prefix);
        s += &format!("\tformat: {}\n", self.format as u8);
        s += &format!("\tfeatures: {}\n", self.features.names().join(", "));
        s += &format!("\top_features: {}\n", self.op_features.names().join(", "));
        s += &format!("\tflags: {}\n", self.flags.names().join(", "));
        s += &format!("\tcreate_timestamp: {}\n", self.create_timestamp);
        s += &format!("\taccess_timestamp: {}\n", self.access_timestamp);
        s += &format!("\tmodify_timestamp: {}\n", self.modify_timestamp);
        if let Some(dp) = &self.data_pool {
            s += &format!("\tdata_pool: {dp}\n");
        }
        if let (Some(u), Some(c)) = (self.stripe_unit, self.stripe_count) {
            s += &format!("\tstripe unit: {}\n\tstripe count: {c}\n", human_size(u));
        }
        if let Some(p) = &self.parent {
            let ns = if p.pool_namespace.is_empty() {
                String::new()
            } else {
                format!("{}/", p.pool_namespace)
            };
            s += &format!(
                "\tparent: {}/{ns}{}@{}{}\n",
                p.pool,
                p.image,
                p.snapshot,
                if p.trash { " (trash)" } else { "" }
            );
            s += &format!("\toverlap: {}\n", human_size(p.overlap));
        }
        if let Some(p) = self.protected {
            s += &format!("\tprotected: {}\n", if p { "True" } else { "False" });
        }
        s
    }
}

/// Shows everything `rbd info` shows, for an image or one of its snapshots.
pub fn info(cli: &Cli, name: &str) -> CliResult {
    let spec = Spec::parse(name)?;
    let rados = cli.connect()?;
    let io = cli.spec_ioctx(&rados, &spec)?;
    let mut o = OpenOptions::new().read_only(true);
    if let Some(s) = &spec.snap {
        o = o.snapshot(s.clone());
    }
    let img = Image::open(&io, &spec.image, &o)?;
    let v = InfoView::new(&rados, &img, spec.snap.as_deref())?;
    emit(cli.format, &v, || v.text());
    Ok(())
}

/// The watchers of `img` other than our own handle(s).
pub(crate) fn other_watchers(rados: &rbd_core::Rados, img: &Image) -> CliResult<Vec<rbd::Watcher>> {
    let own = rados.getaddrs()?;
    Ok(img
        .watchers()?
        .into_iter()
        .filter(|w| !own.0.iter().any(|a| a.same_instance(&w.addr)))
        .collect())
}

/// Refuses with [`CliError::Busy`] (naming the clients) when another client has the
/// image open.
pub fn ensure_unused(cli: &Cli, rados: &rbd_core::Rados, img: &Image, spec: &Spec) -> CliResult {
    let users: Vec<String> = other_watchers(rados, img)?
        .into_iter()
        .map(|w| format!("client.{} at {}", w.id, w.addr.to_legacy_string()))
        .collect();
    if !users.is_empty() {
        return Err(CliError::Busy(format!(
            "image {} is in use by {}; unmap it there, or fence that client with `rbdctl fence add`",
            spec.display(cli),
            users.join(", ")
        )));
    }
    Ok(())
}

/// Removes an image, with a clear error when it is in use or has snapshots.
pub fn rm(cli: &Cli, name: &str) -> CliResult {
    let spec = Spec::image_only(name)?;
    let rados = cli.connect()?;
    let io = cli.spec_ioctx(&rados, &spec)?;
    // Say who is using it, rather than librbd's bare EBUSY.
    let img = open_ro(&io, &spec.image)?;
    ensure_unused(cli, &rados, &img, &spec)?;
    let snaps: Vec<String> = img.snap_list()?.into_iter().map(|s| s.name).collect();
    drop(img);
    if !snaps.is_empty() {
        return Err(CliError::Busy(format!(
            "image {} has snapshots ({}); remove them first",
            spec.display(cli),
            snaps.join(", ")
        )));
    }
    let p = Progress::new(cli, "Removing image", Unit::Steps);
    rbd::remove_with_progress(&io, &spec.image, p.callback())?;
    p.finish();
    done(cli.format, json!({"removed": spec.display(cli)}), || {
        format!("removed {}", spec.display(cli))
    });
    Ok(())
}

/// A watcher as `rbd status --format json` names its fields.
#[derive(Debug, Serialize)]
struct WatcherView {
    address: String,
    client: u64,
    cookie: u64,
}

#[derive(Debug, Serialize)]
struct Status {
    image: String,
    id: String,
    watchers: Vec<WatcherView>,
    lock_owners: Vec<String>,
}

/// Shows watchers (with exact client addresses) and exclusive-lock owners.
pub fn status(cli: &Cli, name: &str) -> CliResult {
    let spec = Spec::image_only(name)?;
    let rados = cli.connect()?;
    let io = cli.spec_ioctx(&rados, &spec)?;
    let img = open_ro(&io, &spec.image)?;
    // Our own read-only handle watches the header too: leave it out.
    let watchers = other_watchers(&rados, &img)?
        .into_iter()
        .map(|w| WatcherView {
            address: w.addr.to_legacy_string(),
            client: w.id,
            cookie: w.cookie,
        })
        .collect();
    let lock_owners = crate::cmd::lock::exclusive_owners(&img)?;
    let st = Status {
        image: spec.image.clone(),
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
                    w.address, w.client, w.cookie
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

/// `rbdctl resize`.
#[derive(Debug, Args)]
pub struct ResizeArgs {
    /// [pool/[namespace/]]image
    pub image: String,
    /// The new size: 512M, 2G, 1T, or bytes.
    #[arg(short = 's', long, allow_hyphen_values = true)]
    pub size: String,
    /// Allow making the image smaller (the data beyond the new size is discarded).
    #[arg(long)]
    pub allow_shrink: bool,
}

/// Resizes an image; shrinking needs `--allow-shrink`.
pub fn resize(cli: &Cli, a: &ResizeArgs) -> CliResult {
    let spec = Spec::image_only(&a.image)?;
    let size = rbd::parse_size(&a.size)?;
    let rados = cli.connect()?;
    let io = cli.spec_ioctx(&rados, &spec)?;
    let img = Image::open(&io, &spec.image, &OpenOptions::new())?;
    let old = img.size()?;
    if size < old && !a.allow_shrink {
        return Err(CliError::Usage(format!(
            "refusing to shrink {} from {} to {} ({size} bytes): the data beyond the new size \
             would be lost; pass --allow-shrink",
            spec.display(cli),
            human_size(old),
            human_size(size)
        )));
    }
    let shrink = if a.allow_shrink {
        Shrink::Allow
    } else {
        Shrink::Forbid
    };
    let p = Progress::new(cli, "Resizing image", Unit::Steps);
    img.resize_with_progress(size, shrink, p.callback())?;
    p.finish();
    let new = img.size()?;
    done(
        cli.format,
        json!({"image": spec.display(cli), "old_size": old, "size": new}),
        || {
            format!(
                "resized {} from {} to {}",
                spec.display(cli),
                human_size(old),
                human_size(new)
            )
        },
    );
    Ok(())
}

/// Renames an image within its pool and namespace.
pub fn rename(cli: &Cli, src: &str, dst: &str) -> CliResult {
    let s = Spec::image_only(src)?;
    let d = Spec::image_only(dst)?;
    // The destination may spell out the pool/namespace, but they must be the source's.
    if (d.pool.is_some() && d.pool(cli) != s.pool(cli))
        || ((d.pool.is_some() || d.namespace.is_some()) && d.namespace(cli) != s.namespace(cli))
    {
        return Err(CliError::Usage(format!(
            "cannot rename {} to {}: rename stays within a pool and namespace (use cp to copy \
             elsewhere)",
            s.display(cli),
            d.display(cli)
        )));
    }
    let rados = cli.connect()?;
    let io = cli.spec_ioctx(&rados, &s)?;
    rbd::rename(&io, &s.image, &d.image)?;
    let new = Spec {
        image: d.image.clone(),
        ..s.clone()
    };
    done(
        cli.format,
        json!({"from": s.display(cli), "to": new.display(cli)}),
        || format!("renamed {} to {}", s.display(cli), new.display(cli)),
    );
    Ok(())
}

/// `rbdctl cp`.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Source: [pool/[namespace/]]image[@snapshot]
    pub src: String,
    /// Destination: [pool/[namespace/]]image (must not exist)
    pub dst: String,
    /// Layout and features of the copy (default: the source's).
    #[command(flatten)]
    pub layout: LayoutArgs,
}

/// Copies an image (at a snapshot, or its head) into a new image.
pub fn copy(cli: &Cli, a: &CopyArgs) -> CliResult {
    let s = Spec::parse(&a.src)?;
    let d = Spec::image_only(&a.dst)?;
    let opts = a.layout.to_options()?;
    let rados = cli.connect()?;
    let sio = cli.spec_ioctx(&rados, &s)?;
    let dio = cli.spec_ioctx(&rados, &d)?;
    let mut o = OpenOptions::new().read_only(true);
    if let Some(snap) = &s.snap {
        o = o.snapshot(snap.clone());
    }
    let img = Image::open(&sio, &s.image, &o)?;
    let p = Progress::new(cli, "Image copy", Unit::Bytes);
    img.copy_with_progress(&dio, &d.image, &opts, p.callback())
        .context(|| format!("copying {} to {}", s.display(cli), d.display(cli)))?;
    p.finish();
    let size = img.size()?;
    done(
        cli.format,
        json!({"from": s.display(cli), "to": d.display(cli), "size": size}),
        || {
            format!(
                "copied {} to {} ({})",
                s.display(cli),
                d.display(cli),
                human_size(size)
            )
        },
    );
    Ok(())
}

/// `rbdctl feature enable|disable`.
#[derive(Debug, Subcommand)]
pub enum FeatureCmd {
    /// Enable features (exclusive-lock, object-map, fast-diff, journaling).
    Enable {
        /// [pool/[namespace/]]image
        image: String,
        /// Feature names, separate or comma separated.
        #[arg(required = true)]
        features: Vec<String>,
    },
    /// Disable features (also deep-flatten).
    Disable {
        /// [pool/[namespace/]]image
        image: String,
        /// Feature names, separate or comma separated.
        #[arg(required = true)]
        features: Vec<String>,
    },
}

/// Enables or disables features.
pub fn feature(cli: &Cli, c: &FeatureCmd) -> CliResult {
    let (image, names, enable) = match c {
        FeatureCmd::Enable { image, features } => (image, features, true),
        FeatureCmd::Disable { image, features } => (image, features, false),
    };
    let spec = Spec::image_only(image)?;
    let features: Features = names.join(",").parse()?;
    if features.is_empty() {
        return Err(CliError::Usage("no features named".into()));
    }
    let rados = cli.connect()?;
    let io = cli.spec_ioctx(&rados, &spec)?;
    let img = Image::open(&io, &spec.image, &OpenOptions::new())?;
    img.update_features(features, enable).context(|| {
        format!(
            "{} {features} on {}",
            if enable { "enabling" } else { "disabling" },
            spec.display(cli)
        )
    })?;
    let now = img.features()?;
    done(
        cli.format,
        json!({"image": spec.display(cli), "features": now}),
        || {
            format!(
                "{}: features now {}",
                spec.display(cli),
                now.names().join(", ")
            )
        },
    );
    Ok(())
}

/// Opens an image read-only at its head.
pub fn open_ro(io: &IoCtx, name: &str) -> CliResult<Image> {
    Ok(Image::open(io, name, &OpenOptions::new().read_only(true))?)
}
