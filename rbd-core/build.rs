//! Builds rbd-core's C++ shim (`shim/bufferlist.cc`: zero-copy I/O through librbd's C++
//! bufferlist API; it needs g++ and the C++ headers of librbd-dev and libradospp-dev,
//! which `scripts/install-deps.sh` installs) and links librados by name: Debian ships no
//! pkg-config file for it. librbd is not linked: it is loaded on first use
//! (src/librbd.rs), and the shim looks up the two librbd functions it calls with dlsym.
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
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=shim/bufferlist.cc");
}
