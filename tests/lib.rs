//! Helpers for the integration tests live in `tests/common`; this library is empty on purpose so
//! the root package has a target besides its test binary.
