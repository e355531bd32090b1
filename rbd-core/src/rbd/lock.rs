//! Image locks.
//!
//! Two unrelated kinds:
//!
//! * the **exclusive lock** (the `exclusive-lock` feature): librbd takes it automatically
//!   before the first write and hands it over cooperatively when another client asks.
//!   [`Image::lock_acquire`] takes it explicitly and keeps it (other clients' requests are
//!   refused until [`Image::lock_release`]); [`Image::lock_break`] takes it away from a
//!   dead owner (and by default blocklists that owner, `rbd_blocklist_on_break_lock`).
//! * **advisory locks** (`rbd lock add/ls/rm`): named by a cookie, exclusive or shared with
//!   a tag, enforced by nobody. They use the same RADOS lock as the exclusive-lock
//!   feature, so do not mix them on one image.

use serde::Serialize;

use crate::addr::EntityAddr;
use crate::error::{Error, Result, check, check64};
use crate::rbd::Image;
use crate::sys;
use crate::util::{cstring, from_buf, from_cstr, split_nul_list};

/// Lock mode of the exclusive-lock feature (`rbd_lock_mode_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// One owner (`RBD_LOCK_MODE_EXCLUSIVE`); the only mode librbd supports for
    /// [`Image::lock_acquire`].
    Exclusive,
    /// Shared (`RBD_LOCK_MODE_SHARED`).
    Shared,
}

impl LockMode {
    fn raw(self) -> sys::rbd_lock_mode_t {
        match self {
            LockMode::Exclusive => sys::RBD_LOCK_MODE_EXCLUSIVE,
            LockMode::Shared => sys::RBD_LOCK_MODE_SHARED,
        }
    }

    fn from_raw(v: sys::rbd_lock_mode_t) -> Self {
        if v == sys::RBD_LOCK_MODE_SHARED {
            LockMode::Shared
        } else {
            LockMode::Exclusive
        }
    }
}

/// Who holds the exclusive lock ([`Image::lock_get_owners`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockOwners {
    /// The lock mode.
    pub mode: LockMode,
    /// The owners' client addresses (`127.0.0.1:0/3710147553`), as
    /// [`Image::lock_break`] takes them. Empty when nobody holds the lock.
    pub owners: Vec<String>,
}

impl LockOwners {
    /// The owners' addresses, parsed.
    pub fn addrs(&self) -> Result<Vec<EntityAddr>> {
        self.owners.iter().map(|o| o.parse()).collect()
    }
}

/// One holder of an advisory lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Locker {
    /// The client entity, e.g. `client.4123`.
    pub client: String,
    /// The lock cookie the holder chose.
    pub cookie: String,
    /// The holder's address.
    pub addr: EntityAddr,
}

/// The advisory lock on an image ([`Image::list_lockers`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lockers {
    /// True for an exclusive lock, false for a shared one (meaningless with no lockers).
    pub exclusive: bool,
    /// The tag of a shared lock (`""` otherwise).
    pub tag: String,
    /// The holders.
    pub lockers: Vec<Locker>,
}

fn cookie_cstring(what: &'static str, s: &str) -> Result<std::ffi::CString> {
    if s.is_empty() {
        return Err(Error::invalid(what, s, "must not be empty"));
    }
    cstring(what, s)
}

impl Image {
    /// Whether this handle holds the exclusive lock (`rbd_is_exclusive_lock_owner`).
    pub fn is_exclusive_lock_owner(&self) -> Result<bool> {
        let mut owner = 0;
        // SAFETY: open image handle and a valid out-pointer.
        let ret = unsafe { sys::rbd_is_exclusive_lock_owner(self.ptr, &mut owner) };
        check(ret, "rbd_is_exclusive_lock_owner", || self.ctx())?;
        Ok(owner != 0)
    }

    /// Takes the exclusive lock and keeps it until [`Image::lock_release`] or close;
    /// requests from other clients are refused meanwhile (`rbd_lock_acquire`).
    ///
    /// Needs the `exclusive-lock` feature and a read-write handle. librbd supports only
    /// [`LockMode::Exclusive`].
    pub fn lock_acquire(&self, mode: LockMode) -> Result<()> {
        // SAFETY: open image handle.
        let ret = unsafe { sys::rbd_lock_acquire(self.ptr, mode.raw()) };
        check(ret, "rbd_lock_acquire", || self.ctx())?;
        Ok(())
    }

    /// Releases a lock taken with [`Image::lock_acquire`] (`rbd_lock_release`).
    pub fn lock_release(&self) -> Result<()> {
        // SAFETY: open image handle.
        let ret = unsafe { sys::rbd_lock_release(self.ptr) };
        check(ret, "rbd_lock_release", || self.ctx())?;
        Ok(())
    }

    /// Who holds the exclusive lock, by client address (`rbd_lock_get_owners`,
    /// `rbd_lock_get_owners_cleanup`). Nobody holding it gives an empty list.
    pub fn lock_get_owners(&self) -> Result<LockOwners> {
        let mut cap = 4usize;
        for _ in 0..16 {
            let mut mode: sys::rbd_lock_mode_t = sys::RBD_LOCK_MODE_EXCLUSIVE;
            let mut owners: Vec<*mut std::ffi::c_char> = vec![std::ptr::null_mut(); cap];
            let mut n = cap;
            // SAFETY: open image handle; `owners` has room for `n` pointers, librbd fills
            // at most that many with strdup'd strings or returns -ERANGE with the count.
            let ret = unsafe {
                sys::rbd_lock_get_owners(self.ptr, &mut mode, owners.as_mut_ptr(), &mut n)
            };
            if ret == -libc::ERANGE {
                cap = n.max(cap * 2);
                continue;
            }
            if ret == -libc::ENOENT {
                return Ok(LockOwners {
                    mode: LockMode::Exclusive,
                    owners: Vec::new(),
                });
            }
            check(ret, "rbd_lock_get_owners", || self.ctx())?;
            let n = n.min(cap);
            let out = owners[..n]
                .iter()
                // SAFETY: the first `n` entries are strdup'd strings.
                .map(|&p| unsafe { from_cstr(p) })
                .collect();
            // SAFETY: the first `n` entries were filled by librbd and are freed once here.
            unsafe { sys::rbd_lock_get_owners_cleanup(owners.as_mut_ptr(), n) };
            return Ok(LockOwners {
                mode: LockMode::from_raw(mode),
                owners: out,
            });
        }
        Err(Error::from_errno(
            "rbd_lock_get_owners",
            libc::ERANGE,
            self.ctx(),
        ))
    }

    /// Breaks the exclusive lock held by `owner` (an address from
    /// [`Image::lock_get_owners`]) (`rbd_lock_break`). Unless
    /// `rbd_blocklist_on_break_lock` is off, the owner is blocklisted so it cannot
    /// write again. Fails with [`crate::ErrorKind::Busy`] if `owner` is no longer the
    /// owner.
    pub fn lock_break(&self, mode: LockMode, owner: &str) -> Result<()> {
        let o = cookie_cstring("lock owner", owner)?;
        // SAFETY: open image handle and C string.
        let ret = unsafe { sys::rbd_lock_break(self.ptr, mode.raw(), o.as_ptr()) };
        check(ret, "rbd_lock_break", || {
            self.ctx().with_object(format!("lock owner {owner}"))
        })?;
        Ok(())
    }

    /// Lists the holders of the advisory lock (`rbd_list_lockers`).
    pub fn list_lockers(&self) -> Result<Lockers> {
        let (mut tag_cap, mut cl_cap, mut co_cap, mut ad_cap) = (64usize, 256, 256, 256);
        for _ in 0..16 {
            let mut exclusive = 0;
            let mut tag = vec![0u8; tag_cap];
            let mut clients = vec![0u8; cl_cap];
            let mut cookies = vec![0u8; co_cap];
            let mut addrs = vec![0u8; ad_cap];
            let (mut tl, mut cl, mut kl, mut al) = (tag_cap, cl_cap, co_cap, ad_cap);
            // SAFETY: open image handle; each buffer is writable for the length passed
            // with it. On -ERANGE librbd writes nothing but the needed lengths.
            let ret = unsafe {
                sys::rbd_list_lockers(
                    self.ptr,
                    &mut exclusive,
                    tag.as_mut_ptr().cast(),
                    &mut tl,
                    clients.as_mut_ptr().cast(),
                    &mut cl,
                    cookies.as_mut_ptr().cast(),
                    &mut kl,
                    addrs.as_mut_ptr().cast(),
                    &mut al,
                )
            };
            if ret == -(libc::ERANGE as isize) {
                tag_cap = tl.max(tag_cap);
                cl_cap = cl.max(cl_cap);
                co_cap = kl.max(co_cap);
                ad_cap = al.max(ad_cap);
                continue;
            }
            let n = check64(ret as i64, "rbd_list_lockers", || self.ctx())? as usize;
            let clients = split_nul_list(&clients[..cl.min(cl_cap)]);
            let cookies = split_nul_list(&cookies[..kl.min(co_cap)]);
            let addrs = split_nul_list(&addrs[..al.min(ad_cap)]);
            if clients.len() != n || cookies.len() != n || addrs.len() != n {
                return Err(Error::decode(
                    "rbd_list_lockers",
                    self.ctx(),
                    format!(
                        "{n} lockers but {} clients, {} cookies, {} addresses",
                        clients.len(),
                        cookies.len(),
                        addrs.len()
                    ),
                ));
            }
            let mut lockers = Vec::with_capacity(n);
            for ((client, cookie), addr) in clients.into_iter().zip(cookies).zip(addrs) {
                let addr = addr
                    .parse::<EntityAddr>()
                    .map_err(|e| Error::decode("rbd_list_lockers", self.ctx(), e))?;
                lockers.push(Locker {
                    client,
                    cookie,
                    addr,
                });
            }
            return Ok(Lockers {
                exclusive: exclusive != 0,
                tag: from_buf(&tag[..tl.min(tag_cap)]),
                lockers,
            });
        }
        Err(Error::from_errno(
            "rbd_list_lockers",
            libc::ERANGE,
            self.ctx(),
        ))
    }

    /// Takes an exclusive advisory lock named `cookie` (`rbd_lock_exclusive`).
    /// Fails with [`crate::ErrorKind::Busy`] if someone else holds the lock and
    /// [`crate::ErrorKind::Exists`] if we already do.
    pub fn lock_exclusive(&self, cookie: &str) -> Result<()> {
        let c = cookie_cstring("lock cookie", cookie)?;
        // SAFETY: open image handle and C string.
        let ret = unsafe { sys::rbd_lock_exclusive(self.ptr, c.as_ptr()) };
        check(ret, "rbd_lock_exclusive", || {
            self.ctx().with_object(format!("lock cookie {cookie}"))
        })?;
        Ok(())
    }

    /// Takes a shared advisory lock named `cookie`; all holders must use the same `tag`
    /// (`rbd_lock_shared`).
    pub fn lock_shared(&self, cookie: &str, tag: &str) -> Result<()> {
        let c = cookie_cstring("lock cookie", cookie)?;
        let t = cstring("lock tag", tag)?;
        // SAFETY: open image handle and C strings.
        let ret = unsafe { sys::rbd_lock_shared(self.ptr, c.as_ptr(), t.as_ptr()) };
        check(ret, "rbd_lock_shared", || {
            self.ctx().with_object(format!("lock cookie {cookie}"))
        })?;
        Ok(())
    }

    /// Releases our advisory lock named `cookie` (`rbd_unlock`).
    pub fn unlock(&self, cookie: &str) -> Result<()> {
        let c = cookie_cstring("lock cookie", cookie)?;
        // SAFETY: open image handle and C string.
        let ret = unsafe { sys::rbd_unlock(self.ptr, c.as_ptr()) };
        check(ret, "rbd_unlock", || {
            self.ctx().with_object(format!("lock cookie {cookie}"))
        })?;
        Ok(())
    }

    /// Releases another client's advisory lock (`rbd_break_lock`): `client` and `cookie`
    /// as [`Image::list_lockers`] reports them.
    pub fn break_lock(&self, client: &str, cookie: &str) -> Result<()> {
        let cl = cookie_cstring("lock client", client)?;
        let c = cookie_cstring("lock cookie", cookie)?;
        // SAFETY: open image handle and C strings.
        let ret = unsafe { sys::rbd_break_lock(self.ptr, cl.as_ptr(), c.as_ptr()) };
        check(ret, "rbd_break_lock", || {
            self.ctx()
                .with_object(format!("lock cookie {cookie} of {client}"))
        })?;
        Ok(())
    }
}
