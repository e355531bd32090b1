//! The cluster layer's operator view: `rbdctl registry ls` (who maps what, cluster-wide),
//! `rbdctl watchers IMAGE` (an image's clients, matched with the registry, the lock and
//! the blocklist), and the fence log shown and changed by `rbdctl fence`.

use std::time::Duration;

use clap::{Args, Subcommand};
use rbd_core::{EntityAddr, ErrorKind, OpenOptions, Rados};
use rbd_driver::cluster::reconcile::blocklist_match;
use rbd_driver::cluster::registry::now_ms;
use rbd_driver::cluster::{
    Cluster, ClusterConfig, FenceOutcome, FenceRecord, FenceTarget, ImageRef, NAMESPACE, NodeId,
    Registry, RegistryEntry,
};
use serde::Serialize;

use crate::Cli;
use crate::error::{CliError, CliResult};
use crate::output::{Table, emit};
use crate::spec::Spec;

/// `rbdctl registry` subcommands.
#[derive(Debug, Subcommand)]
pub enum RegistryCmd {
    /// List the registry: every mapped image (by id), its mode and holders (node, device,
    /// exact client address, mount IDs), epoch and age.
    Ls(RegistryLsArgs),
}

/// `rbdctl registry ls`.
#[derive(Debug, Args)]
pub struct RegistryLsArgs {
    /// Every pool, not only `-p/--pool`.
    #[arg(long = "all-pools")]
    pub all_pools: bool,
    /// RADOS namespace of the registry.
    #[arg(long = "registry-namespace", default_value = NAMESPACE)]
    pub registry_namespace: String,
}

/// `rbdctl watchers`.
#[derive(Debug, Args)]
pub struct WatchersArgs {
    /// [pool/[namespace/]]image
    pub image: String,
    /// RADOS namespace of the registry.
    #[arg(long = "registry-namespace", default_value = NAMESPACE)]
    pub registry_namespace: String,
}

/// One registry entry as listed.
#[derive(Debug, Serialize)]
struct EntryView {
    #[serde(flatten)]
    entry: RegistryEntry,
    /// Seconds since the entry last changed.
    age_secs: u64,
}

#[derive(Debug, Serialize)]
struct PoolListing {
    pool: String,
    namespace: String,
    entries: Vec<EntryView>,
    corrupt: Vec<(String, String)>,
}

fn age(ms: u64) -> u64 {
    now_ms().saturating_sub(ms) / 1000
}

/// `12s`, `5m`, `3h`, `2d`.
pub fn human_secs(s: u64) -> String {
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// The pools to look at: `-p/--pool`, or every pool.
pub fn pools(cli: &Cli, rados: &Rados, all: bool) -> CliResult<Vec<String>> {
    Ok(if all {
        rados.pool_list()?
    } else {
        vec![cli.pool.clone()]
    })
}

/// `rbdctl registry ls`.
pub fn registry(cli: &Cli, cmd: &RegistryCmd) -> CliResult {
    let RegistryCmd::Ls(a) = cmd;
    let rados = cli.connect()?;
    let mut out = Vec::new();
    for pool in pools(cli, &rados, a.all_pools)? {
        let reg = Registry::open(&rados, &pool, &a.registry_namespace)?;
        let l = reg.list()?;
        out.push(PoolListing {
            pool,
            namespace: a.registry_namespace.clone(),
            entries: l
                .entries
                .into_values()
                .map(|e| EntryView {
                    age_secs: age(e.updated_ms),
                    entry: e,
                })
                .collect(),
            corrupt: l.corrupt,
        });
    }
    emit(cli.format, &out, || {
        let mut t = Table::new(&[
            "POOL",
            "IMAGE",
            "ID",
            "MODE",
            "NODE",
            "HOLD",
            "DEVICE",
            "CLIENT",
            "MOUNT IDS",
            "EPOCH",
            "AGE",
        ]);
        let mut corrupt = String::new();
        for p in &out {
            for v in &p.entries {
                let e = &v.entry;
                let spec = if e.namespace.is_empty() {
                    e.image.clone()
                } else {
                    format!("{}/{}", e.namespace, e.image)
                };
                for h in &e.holders {
                    t.row(vec![
                        p.pool.clone(),
                        spec.clone(),
                        e.image_id.clone(),
                        e.mode.to_string(),
                        h.node.to_string(),
                        h.mode.to_string(),
                        h.device
                            .as_ref()
                            .map(|d| d.display().to_string())
                            .unwrap_or_else(|| "-".into()),
                        h.client_addr
                            .map(|a| a.to_string())
                            .unwrap_or_else(|| "-".into()),
                        if h.mount_ids.is_empty() {
                            "-".into()
                        } else {
                            h.mount_ids.iter().cloned().collect::<Vec<_>>().join(",")
                        },
                        e.epoch.to_string(),
                        human_secs(age(h.since_ms)),
                    ]);
                }
            }
            for (k, why) in &p.corrupt {
                corrupt += &format!("corrupt registry entry {k} in pool {}: {why}\n", p.pool);
            }
        }
        format!("{}{corrupt}", t.render())
    });
    Ok(())
}

/// One client of an image, as `rbdctl watchers` shows it.
#[derive(Debug, Serialize)]
struct ClientRow {
    /// Exact address.
    addr: String,
    /// `client.N` (when it watches the image).
    client: Option<String>,
    /// It watches the image header.
    watching: bool,
    /// It owns the exclusive lock.
    lock_owner: bool,
    /// The registry's holder with this address: its node.
    node: Option<String>,
    /// That holder's mode.
    mode: Option<String>,
    /// That holder's device.
    device: Option<String>,
    /// That holder's mount IDs.
    mount_ids: Vec<String>,
    /// The blocklist entry that fences it, if any.
    fenced: Option<String>,
}

#[derive(Debug, Serialize)]
struct WatchersView {
    image: String,
    image_id: String,
    clients: Vec<ClientRow>,
    registry: Option<RegistryEntry>,
    /// Registry holders with no client address recorded (nothing mapped yet).
    unmapped_holders: Vec<String>,
}

/// `rbdctl watchers IMAGE`.
pub fn watchers(cli: &Cli, a: &WatchersArgs) -> CliResult {
    let spec = Spec::image_only(&a.image)?;
    let rados = cli.connect()?;
    let io = cli.spec_ioctx(&rados, &spec)?;
    let img = crate::cmd::image::open_ro(&io, &spec.image)?;
    let id = img.id()?;
    let w = super::image::other_watchers(&rados, &img)?;
    let owners = crate::cmd::lock::exclusive_owners(&img)?;
    drop(img);
    let image = ImageRef::new(spec.pool(cli), spec.namespace(cli), &spec.image, &id);
    let entry = Registry::open(&rados, &image.pool, &a.registry_namespace)?.get(&image)?;
    let blocklist = rados.blocklist_ls()?;
    let mut addrs: Vec<EntityAddr> = w.iter().map(|w| w.addr).collect();
    for o in &owners {
        if let Ok(x) = o.parse::<EntityAddr>()
            && !addrs.iter().any(|a| a.same_instance(&x))
        {
            addrs.push(x);
        }
    }
    if let Some(e) = &entry {
        for h in &e.holders {
            if let Some(x) = h.client_addr
                && !addrs.iter().any(|a| a.same_instance(&x))
            {
                addrs.push(x);
            }
        }
    }
    let clients: Vec<ClientRow> = addrs
        .iter()
        .map(|x| {
            let watcher = w.iter().find(|w| w.addr.same_instance(x));
            let holder = entry.as_ref().and_then(|e| {
                e.holders
                    .iter()
                    .find(|h| h.client_addr.is_some_and(|a| a.same_instance(x)))
            });
            ClientRow {
                addr: x.to_string(),
                client: watcher.map(|w| format!("client.{}", w.id)),
                watching: watcher.is_some(),
                lock_owner: owners
                    .iter()
                    .any(|o| o.parse::<EntityAddr>().is_ok_and(|a| a.same_instance(x))),
                node: holder.map(|h| h.node.to_string()),
                mode: holder.map(|h| h.mode.to_string()),
                device: holder.and_then(|h| h.device.as_ref().map(|d| d.display().to_string())),
                mount_ids: holder
                    .map(|h| h.mount_ids.iter().cloned().collect())
                    .unwrap_or_default(),
                fenced: blocklist_match(x, &blocklist).map(|b| b.until_raw.clone()),
            }
        })
        .collect();
    let unmapped_holders = entry
        .as_ref()
        .map(|e| {
            e.holders
                .iter()
                .filter(|h| h.client_addr.is_none())
                .map(|h| format!("{} ({})", h.node, h.mode))
                .collect()
        })
        .unwrap_or_default();
    let view = WatchersView {
        image: image.spec(),
        image_id: id,
        clients,
        registry: entry,
        unmapped_holders,
    };
    emit(cli.format, &view, || {
        let mut t = Table::new(&[
            "ADDRESS",
            "CLIENT",
            "WATCHING",
            "LOCK",
            "NODE",
            "MODE",
            "DEVICE",
            "MOUNT IDS",
            "FENCED",
        ]);
        for c in &view.clients {
            let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
            t.row(vec![
                c.addr.clone(),
                dash(&c.client),
                if c.watching { "yes" } else { "no" }.into(),
                if c.lock_owner { "owner" } else { "-" }.into(),
                dash(&c.node),
                dash(&c.mode),
                dash(&c.device),
                if c.mount_ids.is_empty() {
                    "-".into()
                } else {
                    c.mount_ids.join(",")
                },
                c.fenced
                    .as_ref()
                    .map(|u| format!("until {u}"))
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
        let mut s = format!("{}\n", view.image);
        if view.clients.is_empty() {
            s += "no clients\n";
        } else {
            s += &t.render();
        }
        for h in &view.unmapped_holders {
            s += &format!("registered, nothing mapped yet: {h}\n");
        }
        if view.registry.is_none() {
            s += "not in the registry\n";
        }
        s
    });
    Ok(())
}

/// The fence logs of `pools`, oldest first.
pub fn fence_log(
    rados: &Rados,
    pools: &[String],
    namespace: &str,
    include_expired: bool,
) -> CliResult<Vec<FenceRecord>> {
    let mut out = Vec::new();
    for p in pools {
        match Registry::open(rados, p, namespace) {
            Ok(r) => out.extend(r.fences(include_expired)?),
            Err(rbd_driver::DriverError::Ceph { source, .. })
                if source.kind() == ErrorKind::NotFound =>
            {
                continue;
            }
            Err(e) => return Err(e.into()),
        }
    }
    out.sort_by_key(|r| r.at_ms);
    Ok(out)
}

/// The fence-log table.
pub fn render_fence_log(log: &[FenceRecord]) -> String {
    let mut t = Table::new(&[
        "IMAGE",
        "ID",
        "NODE",
        "ADDRESSES",
        "LOCKS",
        "BY",
        "AGE",
        "EXPIRES",
        "REASON",
    ]);
    let now = now_ms();
    for r in log {
        t.row(vec![
            format!(
                "{}/{}{}",
                r.image.pool,
                if r.image.namespace.is_empty() {
                    String::new()
                } else {
                    format!("{}/", r.image.namespace)
                },
                r.image.image
            ),
            r.image.image_id.clone(),
            r.fenced_node
                .as_ref()
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into()),
            r.addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(","),
            r.locks_broken.len().to_string(),
            r.by_node.to_string(),
            human_secs(now.saturating_sub(r.at_ms) / 1000),
            if r.is_expired(now) {
                "expired".into()
            } else {
                format!("in {}", human_secs((r.expires_ms - now) / 1000))
            },
            r.reason.clone(),
        ]);
    }
    t.render()
}

/// Who fences by hand: this host's node id, else `rbdctl`.
pub fn operator_node() -> NodeId {
    NodeId::resolve(None).unwrap_or_else(|_| NodeId::new("rbdctl").expect("a valid node id"))
}

/// `rbdctl fence add ADDR --image IMAGE`: records a fence done by hand in the image's
/// fence log (naming the registry holder with that address, if any).
pub fn record_manual_fence(
    cli: &Cli,
    rados: &Rados,
    image: &str,
    addr: &EntityAddr,
    reason: &str,
    expiry: Duration,
    namespace: &str,
) -> CliResult<FenceRecord> {
    let spec = Spec::image_only(image)?;
    let io = cli.spec_ioctx(rados, &spec)?;
    let id = rbd_core::rbd::image_id_by_name(&io, &spec.image)?;
    let image = ImageRef::new(spec.pool(cli), spec.namespace(cli), &spec.image, &id);
    let reg = Registry::open(rados, &image.pool, namespace)?;
    let node = reg.get(&image)?.and_then(|e| {
        e.holders
            .into_iter()
            .find(|h| h.client_addr.is_some_and(|a| a.same_instance(addr)))
            .map(|h| h.node)
    });
    let mut rec = FenceRecord::new(image, node, operator_node(), reason, expiry);
    rec.addrs.push(*addr);
    reg.record_fence(&rec)?;
    Ok(rec)
}

/// After `fence rm ADDR`: removes the fence-log records of `pools` whose addresses are
/// all off the blocklist now. Returns how many.
pub fn forget_lifted_fences(rados: &Rados, pools: &[String], namespace: &str) -> CliResult<usize> {
    let blocklist = rados.blocklist_ls()?;
    let mut n = 0;
    for p in pools {
        let reg = Registry::open(rados, p, namespace)?;
        let ids: Vec<String> = reg
            .fences(true)?
            .into_iter()
            .filter(|r| {
                r.addrs
                    .iter()
                    .all(|a| !blocklist.iter().any(|b| b.addr.same_instance(a)))
            })
            .map(|r| r.id)
            .collect();
        n += reg.remove_fences(&ids)?;
    }
    Ok(n)
}

/// `rbdctl fence image`.
#[derive(Debug, Args)]
pub struct FenceImageArgs {
    /// [pool/[namespace/]]image
    pub image: String,
    /// Fence only this node's hold (default: every client of the image but rbdctl's own).
    #[arg(long)]
    pub node: Option<String>,
    /// Why (recorded in the fence log).
    #[arg(long, default_value = "fenced by hand with rbdctl")]
    pub reason: String,
    /// Blocklist expiry in seconds.
    #[arg(long, default_value_t = 3600)]
    pub expire: u64,
    /// RADOS namespace of the registry and fence log.
    #[arg(long = "registry-namespace", default_value = NAMESPACE)]
    pub registry_namespace: String,
}

#[derive(Debug, Serialize)]
struct FenceImageResult {
    outcome: FenceOutcome,
    /// Registry holders whose records were removed (they lost the image).
    removed_holders: Vec<String>,
}

/// `rbdctl fence image IMAGE`: the cluster layer's fencing by hand — blocklist the
/// image's clients (exact addresses; with `--node`, only that node's registered mapping),
/// break its locks, check no watcher remains, record the fence, and drop the fenced
/// holders from the registry.
pub fn fence_image(cli: &Cli, a: &FenceImageArgs) -> CliResult {
    if a.expire == 0 {
        return Err(CliError::Usage("--expire must be at least 1 second".into()));
    }
    let spec = Spec::image_only(&a.image)?;
    let rados = cli.connect()?;
    let io = cli.spec_ioctx(&rados, &spec)?;
    let img = rbd_core::Image::open(&io, &spec.image, &OpenOptions::new().read_only(true))?;
    let id = img.id()?;
    drop(img);
    let image = ImageRef::new(spec.pool(cli), spec.namespace(cli), &spec.image, &id);
    let mut cfg = ClusterConfig::new(operator_node());
    cfg.namespace = a.registry_namespace.clone();
    cfg.fence.expiry = Duration::from_secs(a.expire);
    let cluster = Cluster::new(rados.clone(), cfg);
    let reg = cluster.registry(&image.pool)?;
    let entry = reg.get(&image)?;
    let only: Option<NodeId> = a.node.as_deref().map(NodeId::new).transpose()?;
    let holders: Vec<_> = entry
        .map(|e| e.holders)
        .unwrap_or_default()
        .into_iter()
        .filter(|h| only.as_ref().is_none_or(|n| &h.node == n))
        .collect();
    if let Some(n) = &only
        && holders.is_empty()
    {
        return Err(CliError::NotFound(format!(
            "node {n} holds no registration of {}",
            image.spec()
        )));
    }
    if let Some(n) = &only
        && holders.iter().all(|h| h.client_addr.is_none())
    {
        return Err(CliError::Usage(format!(
            "node {n}'s registration of {} records no client address, so its hold cannot \
             be told from other clients; fence the image without --node",
            image.spec()
        )));
    }
    let target = FenceTarget {
        image: image.clone(),
        node: if holders.len() == 1 {
            Some(holders[0].node.clone())
        } else {
            only.clone()
        },
        addrs: holders.iter().filter_map(|h| h.client_addr).collect(),
        reason: a.reason.clone(),
    };
    // With --node, only that node's registered mapping addresses are fenced: every other
    // client (other nodes' mappings, unregistered watchers) is spared.
    let outcome = match &only {
        Some(n) => cluster.fence_node_hold(&target, n)?,
        None => cluster.fence(&target, &[])?,
    };
    let mut removed = Vec::new();
    for h in &holders {
        if reg.remove_fenced_holder(&image, h)? {
            removed.push(h.node.to_string());
        }
    }
    let res = FenceImageResult {
        outcome,
        removed_holders: removed,
    };
    emit(cli.format, &res, || {
        let r = &res.outcome.record;
        let mut s = format!(
            "fenced {}: blocklisted {} until expiry in {}\n",
            image.spec(),
            if r.addrs.is_empty() {
                "nothing".to_string()
            } else {
                r.addrs
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            human_secs((r.expires_ms.saturating_sub(r.at_ms)) / 1000)
        );
        for l in &r.locks_broken {
            s += &format!("broke lock: {l}\n");
        }
        for (a, why) in &res.outcome.spared {
            s += &format!("spared {a}: {why}\n");
        }
        for n in &res.removed_holders {
            s += &format!("removed the registry record of node {n}\n");
        }
        s
    });
    Ok(())
}
