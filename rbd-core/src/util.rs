//! Small helpers shared by the wrappers: C strings, growing output buffers, NUL lists.

use std::ffi::{CStr, CString, c_char};

use crate::error::{Error, Result};

/// Converts a Rust string to a C string, rejecting interior NUL bytes with a clear error.
pub(crate) fn cstring(what: &'static str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::invalid(what, s, "contains a NUL byte"))
}

/// Converts an optional string to an optional C string.
pub(crate) fn opt_cstring(what: &'static str, s: Option<&str>) -> Result<Option<CString>> {
    s.map(|s| cstring(what, s)).transpose()
}

/// Pointer to an optional C string, NULL when absent.
pub(crate) fn opt_ptr(s: &Option<CString>) -> *const c_char {
    s.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
}

/// Reads a NUL-terminated C string into an owned `String` (lossy on invalid UTF-8).
///
/// # Safety
/// `p` must be NULL or point to a valid NUL-terminated string that lives for the call.
pub(crate) unsafe fn from_cstr(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the caller guarantees `p` is a valid NUL-terminated string.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Reads a string from a byte buffer filled by C: up to the first NUL, or the whole buffer.
pub(crate) fn from_buf(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Splits a C list of NUL-terminated strings (`"a\0b\0\0"`) into owned strings.
pub(crate) fn split_nul_list(buf: &[u8]) -> Vec<String> {
    buf.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Calls `f(buf, &mut len)` with a growing buffer until it stops returning `-ERANGE`.
///
/// `f` follows the librbd/librados convention: on `-ERANGE` it stores the needed size in
/// `len`. Returns the buffer truncated to the final `len` and `f`'s last return value.
pub(crate) fn grow_buffer<F>(initial: usize, mut f: F) -> (Vec<u8>, i32)
where
    F: FnMut(&mut [u8], &mut usize) -> i32,
{
    let mut cap = initial.max(16);
    for _ in 0..16 {
        let mut buf = vec![0u8; cap];
        let mut len = cap;
        let ret = f(&mut buf, &mut len);
        if ret == -libc::ERANGE {
            cap = if len > cap { len } else { cap * 2 };
            continue;
        }
        if ret >= 0 {
            buf.truncate(len.min(cap));
        }
        return (buf, ret);
    }
    (Vec::new(), -libc::ERANGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_lists() {
        assert_eq!(split_nul_list(b"a\0bc\0\0"), vec!["a", "bc"]);
        assert!(split_nul_list(b"\0").is_empty());
        assert_eq!(from_buf(b"abc\0def"), "abc");
    }

    #[test]
    fn cstring_rejects_nul() {
        let e = cstring("image name", "a\0b").unwrap_err();
        assert!(e.to_string().contains("image name"));
    }

    #[test]
    fn grow_buffer_retries() {
        let mut calls = 0;
        let (buf, ret) = grow_buffer(4, |b, len| {
            calls += 1;
            if b.len() < 40 {
                *len = 40;
                return -libc::ERANGE;
            }
            b[..3].copy_from_slice(b"xyz");
            *len = 3;
            0
        });
        assert_eq!(ret, 0);
        assert_eq!(&buf, b"xyz");
        assert_eq!(calls, 2);
    }
}
