//! Benchmarks for the workspace: criterion benches of the hot paths (`benches/`) and
//! comparison runners (`src/bin/`) that measure our code against Ceph's own tools in one run
//! on the same cluster, and print ratios for `BENCHMARKS.md`.
