//! Who has an image open: the watchers of its header object (`rbd status`).

use serde::Serialize;

use crate::addr::EntityAddr;
use crate::error::{Error, Result, check};
use crate::rbd::Image;
use crate::sys;
use crate::util::from_cstr;

/// A client watching the image header, i.e. a client that has the image open (or
/// mapped, for krbd).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Watcher {
    /// The client's address; unique per client instance thanks to its nonce.
    pub addr: EntityAddr,
    /// The client's global id, as in `client.4123`.
    pub id: u64,
    /// The watch cookie (one per open handle).
    pub cookie: u64,
}

impl Image {
    /// Lists the image's watchers, including this handle itself
    /// (`rbd_watchers_list`, `rbd_watchers_list_cleanup`).
    pub fn watchers(&self) -> Result<Vec<Watcher>> {
        let empty = sys::rbd_image_watcher_t {
            addr: std::ptr::null_mut(),
            id: 0,
            cookie: 0,
        };
        let mut cap = 8usize;
        for _ in 0..16 {
            let mut ws = vec![empty; cap];
            let mut n = cap;
            // SAFETY: open image handle; `ws` has room for `n` entries; librbd fills at
            // most that many or returns -ERANGE with the needed count in `n`.
            let ret = unsafe { sys::rbd_watchers_list(self.ptr, ws.as_mut_ptr(), &mut n) };
            if ret == -libc::ERANGE {
                cap = n.max(cap * 2);
                continue;
            }
            check(ret, "rbd_watchers_list", || self.ctx())?;
            let n = n.min(cap);
            let parsed: Vec<(String, i64, u64)> = ws[..n]
                .iter()
                // SAFETY: librbd filled `addr` with a strdup'd string.
                .map(|w| (unsafe { from_cstr(w.addr) }, w.id, w.cookie))
                .collect();
            // SAFETY: the first `n` entries were filled by librbd and are freed once here.
            unsafe { sys::rbd_watchers_list_cleanup(ws.as_mut_ptr(), n) };
            return parsed
                .into_iter()
                .map(|(addr, id, cookie)| {
                    Ok(Watcher {
                        addr: addr
                            .parse()
                            .map_err(|e| Error::decode("rbd_watchers_list", self.ctx(), e))?,
                        id: u64::try_from(id).map_err(|_| {
                            Error::decode(
                                "rbd_watchers_list",
                                self.ctx(),
                                format!("negative client id {id}"),
                            )
                        })?,
                        cookie,
                    })
                })
                .collect();
        }
        Err(Error::from_errno(
            "rbd_watchers_list",
            libc::ERANGE,
            self.ctx(),
        ))
    }
}
