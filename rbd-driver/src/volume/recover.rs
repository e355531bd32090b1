//! Recovery: reconcile the state file with `/proc/self/mountinfo` and the local mapping
//! list after a crash.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Serialize;

use crate::error::{DriverError, Result};
use crate::mapper::{self, Mapping};
use crate::volume::driver::Driver;
use crate::volume::index::EntryState;
use crate::volume::lock::try_lock_volume;
use crate::volume::name::validate_volume_name;
use crate::volume::remove::thaw;
use crate::volume::state::{PendingOp, Phase};

/// One thing recovery did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecoveryAction {
    /// The volume concerned.
    pub volume: String,
    /// What was found and done.
    pub action: String,
}

/// What [`Driver::recover`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryReport {
    /// Cleanups done (orphan mounts, mappings and references removed, creates rolled
    /// back, removes finished).
    pub actions: Vec<RecoveryAction>,
    /// Healthy attachments left as they are.
    pub kept: Vec<String>,
    /// Volumes skipped because a live operation holds their lock.
    pub busy: Vec<String>,
    /// What could not be cleaned up (retried by the next recovery).
    pub errors: Vec<String>,
}

impl RecoveryReport {
    fn act(&mut self, volume: &str, action: impl Into<String>) {
        self.actions.push(RecoveryAction {
            volume: volume.into(),
            action: action.into(),
        });
    }
}

impl Driver {
    /// Reconciles the state file with the mount table and the local mappings (found by
    /// image id), volume by volume, skipping volumes whose lock is held by a live
    /// operation:
    ///
    /// - a healthy attachment (mounted, mapped, with mount IDs) is kept;
    /// - a half-done attach is rolled back (unmount if mounted, unmap, drop the entry);
    /// - a half-done detach is finished the same way;
    /// - an attachment whose mount or mapping vanished is torn down and its references
    ///   dropped;
    /// - a crashed create is rolled back (image, protected parent snapshot, index entry),
    ///   unless it had already published its index entry, in which case it is complete;
    /// - a crashed remove is finished;
    /// - a mount under the mount root that no state entry owns is unmounted when its
    ///   device is one of this node's mappings (an attach that crashed after mounting),
    ///   and that device unmapped when no entry owns its image; a mount of anything else
    ///   is left alone and reported in [`RecoveryReport::errors`]. (The mount root
    ///   belongs to this driver's state dir alone: [`Driver::new`] checks that.)
    ///
    /// [`Driver::new`] runs it; run it again any time (it is idempotent).
    pub fn recover(&self) -> Result<RecoveryReport> {
        self.recover_listed(None)
    }

    /// [`Self::recover`], with this node's mappings already listed for the pass (healthy
    /// attachments are recognised without listing again).
    pub(super) fn recover_listed(&self, listed: Option<&[Mapping]>) -> Result<RecoveryReport> {
        let mut report = RecoveryReport::default();
        let st = self.load_state()?;
        let names: BTreeSet<String> = st
            .volumes
            .keys()
            .chain(st.pending.keys())
            .cloned()
            .collect();
        for name in names {
            match try_lock_volume(self.store.dir(), &name)? {
                None => report.busy.push(name),
                Some(_l) => {
                    if let Err(e) = self.recover_name_listed(&name, &mut report, listed) {
                        report.errors.push(format!("{name}: {e}"));
                    }
                }
            }
        }
        if let Err(e) = self.recover_orphan_mounts(&mut report) {
            report.errors.push(format!("orphan mounts: {e}"));
        }
        if let Ok(mut g) = self.last_recovery.lock() {
            *g = Some(report.clone());
        }
        Ok(report)
    }

    /// Recovers one volume; the caller holds its lock.
    pub(super) fn recover_name(&self, name: &str, report: &mut RecoveryReport) -> Result<()> {
        self.recover_name_listed(name, report, None)
    }

    fn recover_name_listed(
        &self,
        name: &str,
        report: &mut RecoveryReport,
        listed: Option<&[Mapping]>,
    ) -> Result<()> {
        let st = self.load_state()?;
        if let Some(v) = st.volumes.get(name).cloned() {
            if v.phase == Phase::Mounted
                && !v.mount_ids.is_empty()
                && self.healthy_in(&v, listed)?
            {
                // A snapshot that died between freeze and thaw leaves the fs frozen.
                if thaw(&v.mountpoint) {
                    report.act(
                        name,
                        format!("thawed the frozen filesystem at {}", v.mountpoint.display()),
                    );
                }
                report.kept.push(name.into());
            } else {
                let why = match v.phase {
                    Phase::Mounted if v.mount_ids.is_empty() => {
                        "mounted with no mount IDs left".to_string()
                    }
                    Phase::Mounted => format!(
                        "its mount or mapping is gone; dropped mount IDs {}",
                        super::attach::join(&v.mount_ids)
                    ),
                    Phase::Mapping | Phase::Formatting | Phase::Mounting => {
                        format!(
                            "attach interrupted while {}; rolled back",
                            phase_word(v.phase)
                        )
                    }
                    Phase::Unmounting | Phase::Unmapping => {
                        format!("detach interrupted while {}; finished", phase_word(v.phase))
                    }
                };
                let mut did = self.teardown(name, &v)?;
                self.remove_volume_entry(name)?;
                did.extend(self.forget(&Self::image_ref_of_state(&v), "recovered"));
                report.act(
                    name,
                    if did.is_empty() {
                        why
                    } else {
                        format!("{why}: {}", did.join(", "))
                    },
                );
            }
        }
        match st.pending.get(name) {
            Some(PendingOp::Create(p)) => {
                let done = self.index.get(name)?.is_some_and(|e| {
                    e.entry.token == p.token && e.entry.state == EntryState::Ready
                });
                if done {
                    self.drop_pending(name)?;
                    report.act(name, "create had completed (index entry ready); kept");
                } else {
                    let did = self.rollback_create(name, p)?;
                    report.act(
                        name,
                        format!(
                            "create interrupted while {:?}; rolled back{}",
                            p.phase,
                            if did.is_empty() {
                                String::new()
                            } else {
                                format!(": {}", did.join(", "))
                            }
                        ),
                    );
                }
            }
            Some(PendingOp::Remove(p)) => {
                let did = self.finish_remove(name, p)?;
                report.act(
                    name,
                    format!(
                        "remove interrupted while {:?}; finished{}",
                        p.phase,
                        if did.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", did.join(", "))
                        }
                    ),
                );
            }
            None => {}
        }
        Ok(())
    }

    /// Unmounts mounts directly under the mount root that no state entry owns, when their
    /// device is a mapping of this node.
    /// The mappings are listed only when an orphan is found (a fresh listing: it decides
    /// what is unmounted and unmapped).
    fn recover_orphan_mounts(&self, report: &mut RecoveryReport) -> Result<()> {
        let root = &self.cfg.mount_root;
        let root_canon = std::fs::canonicalize(root).unwrap_or_else(|_| root.clone());
        let mounts = fs_format::read_mountinfo()
            .map_err(|e| DriverError::fs("reading /proc/self/mountinfo", e))?;
        let candidates: Vec<(String, PathBuf, PathBuf)> = mounts
            .iter()
            .filter(|m| m.mount_point.parent() == Some(root_canon.as_path()))
            .filter_map(|m| {
                let name = m.mount_point.file_name()?.to_str()?.to_owned();
                validate_volume_name(&name).ok()?;
                Some((name, m.mount_point.clone(), PathBuf::from(&m.source)))
            })
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let mut listing: Option<Vec<Mapping>> = None;
        for (name, mp, source) in candidates {
            let Some(_l) = try_lock_volume(self.store.dir(), &name)? else {
                continue;
            };
            let st = self.load_state()?;
            if st.volumes.get(&name).is_some_and(|v| {
                std::fs::canonicalize(&v.mountpoint).unwrap_or_else(|_| v.mountpoint.clone()) == mp
            }) {
                continue;
            }
            // Only what provably came from an attach here: a mapped image's device.
            let source_canon = std::fs::canonicalize(&source).unwrap_or_else(|_| source.clone());
            if listing.is_none() {
                listing = Some(mapper::list_all(&self.cfg.mapper)?);
            }
            let mappings = listing.as_deref().unwrap_or_default();
            if !mappings
                .iter()
                .any(|m| m.device == source || m.device == source_canon)
            {
                report.errors.push(format!(
                    "{name}: {} is mounted from {}, which is not a mapping of this node; \
                     left alone",
                    mp.display(),
                    source.display()
                ));
                continue;
            }
            let um = fs_format::unmount(&mp).map_err(|e| {
                DriverError::fs(format!("unmounting orphan mount {}", mp.display()), e)
            })?;
            let mut what = format!("orphan mount {} ({:?})", mp.display(), um.outcome);
            // Its device, when it is a mapping that no state entry owns.
            let owned: BTreeSet<&str> = st.volumes.values().map(|v| v.image_id.as_str()).collect();
            for m in mappings {
                if (m.device == source || m.device == source_canon)
                    && !owned.contains(m.image_id.as_str())
                {
                    let still_mounted = fs_format::mounts_of_device(&m.device)
                        .map(|v| !v.is_empty())
                        .unwrap_or(true);
                    if !still_mounted {
                        mapper::mapper_for(m.backend, &self.cfg.mapper).unmap(m, true)?;
                        what.push_str(&format!(", unmapped {}", m.device.display()));
                    }
                }
            }
            let _ = std::fs::remove_dir(&mp);
            report.act(&name, what);
        }
        Ok(())
    }
}

fn phase_word(p: Phase) -> &'static str {
    match p {
        Phase::Mapping => "mapping",
        Phase::Formatting => "formatting",
        Phase::Mounting => "mounting",
        Phase::Mounted => "mounted",
        Phase::Unmounting => "unmounting",
        Phase::Unmapping => "unmapping",
    }
}
