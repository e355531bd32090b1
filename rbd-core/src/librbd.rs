//! librbd, loaded on first use.
//!
//! rbd-core links librados but not librbd: librbd is opened with `dlopen(3)` the first time
//! anything needs it, by [`load`] or by the first `sys::rbd_*` call. Loading it runs its
//! static constructors, which take about 5 MiB of a process's memory; a process that
//! only talks RADOS (the Docker plugin while idle: List, its node daemon) never pays
//! that. [`Rados::connect`](crate::Rados::connect) loads it right away unless
//! [`ConnectOptions::defer_librbd`](crate::ConnectOptions::defer_librbd) says otherwise,
//! so a missing or too old librbd is an error at connect time, as when it was linked.

use std::ffi::{CStr, c_void};
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::rados::MIN_LIBRBD;

/// The library opened: Ceph's librbd ABI 1 (the bindings are from its 16.2 headers).
pub const SONAME: &CStr = c"librbd.so.1";

/// The `dlopen` handle, as an address (a handle is never dereferenced by us and is valid
/// for the whole process: it is never closed), or why loading failed.
static HANDLE: OnceLock<std::result::Result<usize, Failure>> = OnceLock::new();

/// Why librbd could not be used, kept for every later caller.
#[derive(Debug, Clone)]
enum Failure {
    Load(String),
    TooOld(String),
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Error {
        match f {
            Failure::Load(reason) => Error::LibraryLoad {
                library: "librbd",
                reason,
            },
            Failure::TooOld(found) => Error::UnsupportedVersion {
                library: "librbd",
                found,
                required: format!("{}.{}.{}", MIN_LIBRBD.0, MIN_LIBRBD.1, MIN_LIBRBD.2),
            },
        }
    }
}

/// Loads librbd ([`SONAME`], `dlopen` with `RTLD_NOW | RTLD_GLOBAL`) unless it is loaded already, and
/// checks that it is at least Ceph 16.2's (`rbd_version`). Safe to call from many threads
/// and as often as wanted: the first call decides, later ones return its outcome.
///
/// Errors: [`Error::LibraryLoad`] when the loader cannot open it (the message is
/// `dlerror`'s), [`Error::UnsupportedVersion`] when it is too old.
pub fn load() -> Result<()> {
    handle().map(|_| ())
}

/// Whether librbd has been loaded (successfully) in this process.
pub fn is_loaded() -> bool {
    matches!(HANDLE.get(), Some(Ok(_)))
}

fn handle() -> Result<usize> {
    HANDLE.get_or_init(open).clone().map_err(Error::from)
}

fn open() -> std::result::Result<usize, Failure> {
    // SAFETY: SONAME is a NUL-terminated string. RTLD_NOW resolves every symbol now, so
    // a broken installation fails here rather than in the middle of a call; RTLD_GLOBAL
    // makes its symbols visible to Ceph's own plugins as when it was linked. dlopen runs
    // librbd's static constructors, which only set up its own globals (librados and
    // libceph-common, which it shares, are loaded already).
    let h = unsafe { libc::dlopen(SONAME.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if h.is_null() {
        return Err(Failure::Load(dlerror_message()));
    }
    let h = h as usize;
    let version = lookup(h, c"rbd_version").map_err(|e| Failure::Load(e.to_string()))?;
    type RbdVersion = unsafe extern "C" fn(*mut i32, *mut i32, *mut i32);
    // SAFETY: `rbd_version` has this signature in librbd.h (void rbd_version(int *major,
    // int *minor, int *extra)), and the symbol comes from the library just loaded.
    let rbd_version = unsafe { std::mem::transmute::<*mut c_void, RbdVersion>(version) };
    let (mut a, mut b, mut c) = (0, 0, 0);
    // SAFETY: rbd_version only writes three ints through valid pointers.
    unsafe { rbd_version(&mut a, &mut b, &mut c) };
    if (a, b, c) < MIN_LIBRBD {
        return Err(Failure::TooOld(format!("{a}.{b}.{c}")));
    }
    Ok(h)
}

fn lookup(handle: usize, name: &CStr) -> Result<*mut c_void> {
    // SAFETY: `handle` came from a successful dlopen and is never closed; `name` is
    // NUL-terminated.
    let p = unsafe { libc::dlsym(handle as *mut c_void, name.as_ptr()) };
    if p.is_null() {
        return Err(Error::LibraryLoad {
            library: "librbd",
            reason: format!(
                "{} has no symbol {}: {}",
                SONAME.to_string_lossy(),
                name.to_string_lossy(),
                dlerror_message()
            ),
        });
    }
    Ok(p)
}

fn dlerror_message() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string that stays valid until the
    // next dl* call on this thread; it is copied at once.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown dlopen error".into()
    } else {
        // SAFETY: non-null, NUL-terminated (above).
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

/// The address of librbd's function `name`, for the `sys::rbd_*` wrappers; loads librbd
/// first if needed.
///
/// A wrapper has a C signature and no way to return an error, so when librbd cannot be
/// loaded (or lacks `name`) this prints why and aborts the process. Callers that want an
/// error instead call [`load`] before their first librbd call, as
/// [`Rados::connect`](crate::Rados::connect) does by default.
/// `name` ends in a NUL byte (the wrappers pass `concat!(stringify!(f), "\0")`).
#[doc(hidden)]
pub fn symbol(name: &'static str) -> *mut c_void {
    let name = CStr::from_bytes_with_nul(name.as_bytes()).unwrap_or(c"(bad symbol name)");
    match handle().and_then(|h| lookup(h, name)) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "rbd-core: cannot call {}: {e}; aborting",
                name.to_string_lossy()
            );
            std::process::abort()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn librbd_mapped() -> bool {
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .any(|l| l.contains("/librbd.so"))
    }

    // nextest runs every test in a process of its own, so this one sees the process as
    // it started: librbd not loaded until the first call.
    #[test]
    fn librbd_loads_on_first_use_only() {
        if is_loaded() {
            // Another test in this process (plain `cargo test`) loaded it first.
            assert!(librbd_mapped());
            return;
        }
        assert!(!librbd_mapped(), "librbd mapped before anything used it");
        load().unwrap();
        assert!(is_loaded());
        assert!(librbd_mapped());
        // A wrapper resolves through the same handle.
        let (mut a, mut b, mut c) = (0, 0, 0);
        // SAFETY: rbd_version only writes three ints through valid pointers.
        unsafe { crate::sys::rbd_version(&mut a, &mut b, &mut c) };
        assert!((a, b, c) >= MIN_LIBRBD, "librbd {a}.{b}.{c}");
        load().unwrap();
    }

    #[test]
    fn a_missing_symbol_is_an_error_naming_it() {
        load().unwrap();
        let e = handle()
            .and_then(|h| lookup(h, c"rbd_no_such_function"))
            .unwrap_err();
        assert!(matches!(
            e,
            Error::LibraryLoad {
                library: "librbd",
                ..
            }
        ));
        assert!(e.to_string().contains("rbd_no_such_function"), "{e}");
    }
}
