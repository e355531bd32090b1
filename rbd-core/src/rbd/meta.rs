//! Image metadata: a small key/value store in the image header (`rbd image-meta`).
//!
//! Keys starting with `conf_` override librbd configuration for this image (e.g.
//! `conf_rbd_cache`); all other keys are free for applications.

use std::ffi::CString;

use crate::error::{Error, Result, check};
use crate::rbd::Image;
use crate::sys;
use crate::util::{cstring, from_buf, grow_buffer};

/// How many pairs [`Image::metadata_list`] fetches per `rbd_metadata_list` call.
const PAGE: u64 = 256;

fn key_cstring(key: &str) -> Result<CString> {
    if key.is_empty() {
        return Err(Error::invalid("metadata key", key, "must not be empty"));
    }
    cstring("metadata key", key)
}

/// Splits `n` NUL-terminated strings off the front of `buf`, keeping empty ones.
fn take_nul_strings(buf: &[u8], n: usize) -> Vec<String> {
    buf.split(|&b| b == 0)
        .take(n)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

impl Image {
    fn meta_ctx(&self, key: &str) -> crate::Context {
        self.ctx().with_object(format!("metadata key {key}"))
    }

    /// The value of a metadata key, `None` when the key is not set
    /// (`rbd_metadata_get`).
    pub fn metadata_get(&self, key: &str) -> Result<Option<String>> {
        let k = key_cstring(key)?;
        let (buf, ret) = grow_buffer(256, |b, len| {
            // SAFETY: open image handle and C string; `b` is writable for `*len` bytes and
            // librbd stores the needed size in `len` on -ERANGE.
            unsafe { sys::rbd_metadata_get(self.ptr, k.as_ptr(), b.as_mut_ptr().cast(), len) }
        });
        if ret == -libc::ENOENT {
            return Ok(None);
        }
        check(ret, "rbd_metadata_get", || self.meta_ctx(key))?;
        Ok(Some(from_buf(&buf)))
    }

    /// Sets a metadata key (`rbd_metadata_set`).
    pub fn metadata_set(&self, key: &str, value: &str) -> Result<()> {
        let k = key_cstring(key)?;
        let v = cstring("metadata value", value)?;
        // SAFETY: open image handle and C strings.
        let ret = unsafe { sys::rbd_metadata_set(self.ptr, k.as_ptr(), v.as_ptr()) };
        check(ret, "rbd_metadata_set", || self.meta_ctx(key))?;
        Ok(())
    }

    /// Removes a metadata key (`rbd_metadata_remove`); [`crate::ErrorKind::NotFound`]
    /// when it is not set.
    pub fn metadata_remove(&self, key: &str) -> Result<()> {
        let k = key_cstring(key)?;
        // SAFETY: open image handle and C string.
        let ret = unsafe { sys::rbd_metadata_remove(self.ptr, k.as_ptr()) };
        check(ret, "rbd_metadata_remove", || self.meta_ctx(key))?;
        Ok(())
    }

    /// Up to `max` pairs (0: no limit) with keys sorting after `start_after` (`""`: from
    /// the first), in key order (`rbd_metadata_list`).
    pub fn metadata_list_page(&self, start_after: &str, max: u64) -> Result<Vec<(String, String)>> {
        let start = cstring("metadata key", start_after)?;
        let (mut key_cap, mut val_cap) = (1024usize, 4096usize);
        for _ in 0..32 {
            let mut keys = vec![0u8; key_cap];
            let mut vals = vec![0u8; val_cap];
            let (mut kl, mut vl) = (key_cap, val_cap);
            // SAFETY: open image handle and C string; `keys`/`vals` are writable for `kl`/
            // `vl` bytes. librbd checks both lengths and returns -ERANGE with the needed
            // sizes if either is too small.
            let ret = unsafe {
                sys::rbd_metadata_list(
                    self.ptr,
                    start.as_ptr(),
                    max,
                    keys.as_mut_ptr().cast(),
                    &mut kl,
                    vals.as_mut_ptr().cast(),
                    &mut vl,
                )
            };
            if ret == -libc::ERANGE {
                key_cap = kl.max(key_cap);
                val_cap = vl.max(val_cap);
                if kl <= keys.len() && vl <= vals.len() {
                    // No progress reported: grow both to be safe.
                    key_cap *= 2;
                    val_cap *= 2;
                }
                continue;
            }
            check(ret, "rbd_metadata_list", || self.ctx())?;
            let keys = &keys[..kl.min(key_cap)];
            let vals = &vals[..vl.min(val_cap)];
            // Every key is non-empty and NUL-terminated, so the NUL count is the pair count.
            let n = keys.iter().filter(|&&b| b == 0).count();
            let ks = take_nul_strings(keys, n);
            let vs = take_nul_strings(vals, n);
            if vs.len() != ks.len() {
                return Err(Error::decode(
                    "rbd_metadata_list",
                    self.ctx(),
                    format!("{} keys but {} values", ks.len(), vs.len()),
                ));
            }
            return Ok(ks.into_iter().zip(vs).collect());
        }
        Err(Error::from_errno(
            "rbd_metadata_list",
            libc::ERANGE,
            self.ctx(),
        ))
    }

    /// All metadata pairs in key order, fetched page by page (`rbd_metadata_list`).
    pub fn metadata_list(&self) -> Result<Vec<(String, String)>> {
        let mut out: Vec<(String, String)> = Vec::new();
        loop {
            let start = out.last().map(|(k, _)| k.clone()).unwrap_or_default();
            let page = self.metadata_list_page(&start, PAGE)?;
            let done = (page.len() as u64) < PAGE;
            out.extend(page);
            if done {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_strings_keep_empties() {
        assert_eq!(take_nul_strings(b"a\0\0c\0", 3), vec!["a", "", "c"]);
        assert_eq!(take_nul_strings(b"a\0b\0", 1), vec!["a"]);
        assert!(take_nul_strings(b"", 0).is_empty());
        assert!(key_cstring("").is_err());
    }
}
