//! Builds rbd-core's C++ shim (`shim/bufferlist.cc`: zero-copy I/O through librbd's C++
//! bufferlist API) and links librados and librbd by name: Debian ships no pkg-config
//! files for them. The shim needs g++ and the C++ headers of librbd-dev and
//! libradospp-dev (`scripts/install-deps.sh` installs them).
fn main() {
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("shim/bufferlist.cc")
        .flag_if_supported("-fno-semantic-interposition")
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .compile("rbdcore_shim");
    println!("cargo:rustc-link-lib=dylib=rados");
    println!("cargo:rustc-link-lib=dylib=rbd");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=shim/bufferlist.cc");
}
