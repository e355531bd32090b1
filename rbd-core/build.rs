//! Links librados by name: Debian ships no pkg-config file for it. librbd is not linked:
//! it is loaded on first use (src/librbd.rs).
fn main() {
    println!("cargo:rustc-link-lib=dylib=rados");
    println!("cargo:rerun-if-changed=build.rs");
}
