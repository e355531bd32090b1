//! Links librados and librbd by name: Debian ships no pkg-config files for them.
fn main() {
    println!("cargo:rustc-link-lib=dylib=rados");
    println!("cargo:rustc-link-lib=dylib=rbd");
    println!("cargo:rerun-if-changed=build.rs");
}
