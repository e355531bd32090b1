//! `rbdctl lock`: list lock holders (exclusive-lock owners and advisory lockers) and break
//! one, named exactly.

use clap::Subcommand;
use rbd_core::rbd::{Features, LockMode};
use rbd_core::{EntityAddr, ErrorKind, Image, OpenOptions};
use serde::Serialize;
use serde_json::json;

use crate::Cli;
use crate::error::{CliError, CliResult, WithContext};
use crate::output::{Table, done, emit};
use crate::spec::Spec;

/// Lock subcommands.
#[derive(Debug, Subcommand)]
pub enum LockCmd {
    /// List the holders of the image's lock: the exclusive-lock owner (managed by librbd)
    /// and advisory lockers (`rbd lock add`).
    #[command(alias = "list")]
    Ls {
        /// [pool/[namespace/]]image
        image: String,
    },
    /// Break one lock holder, named exactly as `lock ls` shows it: `--locker client.N
    /// --cookie ID` for an advisory lock, or `--owner ADDRESS` for the exclusive-lock
    /// owner. Ceph blocklists the holder's address (rbd_blocklist_on_break_lock).
    #[command(alias = "rm")]
    Break {
        /// [pool/[namespace/]]image
        image: String,
        /// The locker entity, e.g. client.4135 (with --cookie).
        #[arg(
            long,
            requires = "cookie",
            conflicts_with = "owner",
            required_unless_present = "owner"
        )]
        locker: Option<String>,
        /// The lock id (cookie), e.g. mycookie or "auto 140234".
        #[arg(long, requires = "locker")]
        cookie: Option<String>,
        /// The exclusive-lock owner's client address, e.g. 127.0.0.1:0/2672348551.
        #[arg(long)]
        owner: Option<EntityAddr>,
    },
}

/// One lock holder, with `rbd lock ls --format json`'s field names (`id`, `locker`,
/// `address`) plus the lock type, its tag, and whether librbd's exclusive-lock feature
/// holds it.
#[derive(Debug, Serialize)]
struct LockerView {
    id: String,
    locker: String,
    address: String,
    #[serde(rename = "type")]
    kind: &'static str,
    tag: String,
    exclusive_lock_owner: bool,
}

/// The exclusive-lock owners' addresses as librbd reports them (`rbd_lock_get_owners`),
/// or none when the image lacks the feature.
///
/// librbd answers only on a read-write handle (a read-only one has no exclusive-lock
/// state), so this opens one by id; opening does not take the lock. Where that is
/// refused (e.g. read-only caps), the owner is read from the lockers instead: librbd's
/// exclusive lock is the locker with tag `internal` and a cookie `auto <handle>`.
pub fn exclusive_owners(img: &Image) -> CliResult<Vec<String>> {
    if !img.features()?.contains(Features::EXCLUSIVE_LOCK) {
        return Ok(Vec::new());
    }
    let rw = img.rados().ioctx(img.pool_name()).and_then(|mut io| {
        if !img.namespace().is_empty() {
            io.set_namespace(img.namespace())?;
        }
        Image::open_by_id(&io, &img.id()?, &OpenOptions::new())
    });
    if let Ok(rw) = rw {
        match rw.lock_get_owners() {
            Ok(o) => return Ok(o.owners),
            Err(e) if e.kind() != ErrorKind::InvalidInput => return Err(e.into()),
            Err(_) => {}
        }
    }
    let l = img.list_lockers()?;
    Ok(l.lockers
        .into_iter()
        .filter(|k| l.tag == "internal" && k.cookie.starts_with("auto "))
        .map(|k| k.addr.to_legacy_string())
        .collect())
}

fn owners(img: &Image) -> CliResult<Vec<EntityAddr>> {
    Ok(exclusive_owners(img)?
        .iter()
        .map(|s| s.parse::<EntityAddr>())
        .collect::<Result<_, _>>()?)
}

fn holders(img: &Image) -> CliResult<Vec<LockerView>> {
    let owners = owners(img)?;
    let l = img.list_lockers()?;
    Ok(l.lockers
        .into_iter()
        .map(|k| LockerView {
            exclusive_lock_owner: owners.iter().any(|o| o.same_instance(&k.addr)),
            id: k.cookie,
            locker: k.client,
            address: k.addr.to_legacy_string(),
            kind: if l.exclusive { "exclusive" } else { "shared" },
            tag: l.tag.clone(),
        })
        .collect())
}

/// Runs a lock subcommand.
pub fn run(cli: &Cli, cmd: &LockCmd) -> CliResult {
    match cmd {
        LockCmd::Ls { image } => {
            let spec = Spec::image_only(image)?;
            let rados = cli.connect()?;
            let io = cli.spec_ioctx(&rados, &spec)?;
            let img = Image::open(&io, &spec.image, &OpenOptions::new().read_only(true))?;
            let list = holders(&img)?;
            emit(cli.format, &list, || {
                if list.is_empty() {
                    return "no locks\n".into();
                }
                let mut t = Table::new(&["LOCKER", "ID", "ADDRESS", "TYPE"]);
                for k in &list {
                    let kind = match (k.exclusive_lock_owner, k.kind) {
                        (true, _) => "exclusive-lock owner".to_owned(),
                        (false, "shared") => format!("shared (tag {})", k.tag),
                        (false, other) => other.to_owned(),
                    };
                    t.row(vec![
                        k.locker.clone(),
                        k.id.clone(),
                        k.address.clone(),
                        kind,
                    ]);
                }
                t.render()
            });
            Ok(())
        }
        LockCmd::Break {
            image,
            locker,
            cookie,
            owner,
        } => {
            let spec = Spec::image_only(image)?;
            let rados = cli.connect()?;
            let io = cli.spec_ioctx(&rados, &spec)?;
            let img = Image::open(&io, &spec.image, &OpenOptions::new())?;
            let blocklists = rados
                .conf_get("rbd_blocklist_on_break_lock")
                .map(|v| v == "true")
                .unwrap_or(true);
            let list = holders(&img)?;
            let current = || {
                if list.is_empty() {
                    "the image has no locks".to_owned()
                } else {
                    let l: Vec<String> = list
                        .iter()
                        .map(|k| format!("{} {:?} at {}", k.locker, k.id, k.address))
                        .collect();
                    format!("current holders: {}", l.join("; "))
                }
            };
            let (what, address) = if let Some(addr) = owner {
                let owners = owners(&img)?;
                let Some(found) = owners.iter().find(|o| o.same_instance(addr)) else {
                    return Err(CliError::NotFound(format!(
                        "{} is not the exclusive-lock owner of {}; {}",
                        addr.to_legacy_string(),
                        spec.display(cli),
                        current()
                    )));
                };
                // librbd compares the owner string exactly: pass it as librbd listed it.
                let listed = img
                    .lock_get_owners()?
                    .owners
                    .into_iter()
                    .find(|s| {
                        s.parse::<EntityAddr>()
                            .is_ok_and(|a| a.same_instance(found))
                    })
                    .unwrap_or_else(|| found.to_string());
                img.lock_break(LockMode::Exclusive, &listed)
                    .context(|| format!("breaking the exclusive lock of {listed}"))?;
                (
                    format!("exclusive lock of {}", found.to_legacy_string()),
                    found.to_legacy_string(),
                )
            } else {
                let (Some(client), Some(cookie)) = (locker, cookie) else {
                    return Err(CliError::Usage(
                        "name the holder: --locker CLIENT --cookie ID, or --owner ADDRESS".into(),
                    ));
                };
                let Some(k) = list.iter().find(|k| &k.locker == client && &k.id == cookie) else {
                    return Err(CliError::NotFound(format!(
                        "{client} holds no lock {cookie:?} on {}; {}",
                        spec.display(cli),
                        current()
                    )));
                };
                img.break_lock(client, cookie)
                    .context(|| format!("breaking lock {cookie:?} of {client}"))?;
                (
                    format!("lock {cookie:?} of {client} at {}", k.address),
                    k.address.clone(),
                )
            };
            done(
                cli.format,
                json!({"image": spec.display(cli), "broken": what, "address": address,
                       "blocklisted": blocklists}),
                || {
                    let mut s = format!("broke {what} on {}", spec.display(cli));
                    if blocklists {
                        s += &format!("; {address} is blocklisted (see rbdctl fence ls)");
                    }
                    s
                },
            );
            Ok(())
        }
    }
}
