//! End-to-end tests on the public API live in tests/tests/.
