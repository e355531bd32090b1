//! Workspace-level integration tests. The tests live in `tests/tests/`; this library only
//! re-exports the shared harness so they can `use workspace_tests::testkit`.

pub use testkit;
